//! `/dev/tdx_guest`: the TDREPORT of an Intel TDX guest.
//!
//! Structure and request number: Linux `include/uapi/linux/tdx-guest.h`
//! (`struct tdx_report_req`: 64 bytes of report data in, the 1024-byte
//! TDREPORT out; `TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct
//! tdx_report_req)`). The TDREPORT layout is the TDX module's
//! `TDREPORT_STRUCT`: *Intel TDX Module ABI Specification* (#348551),
//! "REPORTMACSTRUCT" (256 bytes), "TEE_TCB_INFO" (239 bytes, padded to 256)
//! and "TDINFO_STRUCT" (512 bytes); the same structure is the
//! `TDG.MR.REPORT` output in the *Intel TDX Module Base Architecture
//! Specification*.
//!
//! A TDREPORT is MAC'd with a key only the local CPU holds: nobody off the
//! machine can check it. A remotely verifiable quote comes from the TD
//! quoting enclave, which upstream Linux reaches only through configfs-tsm
//! (`/sys/kernel/config/tsm/report`, Linux 6.7 and later). Upstream has no
//! ioctl that returns a quote, so this module offers the TDREPORT for
//! diagnostics and nothing more.

use std::fs::{File, OpenOptions};
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The device node.
pub const DEVICE: &str = "/dev/tdx_guest";
/// `TDX_REPORTDATA_LEN`.
pub const REPORT_DATA_SIZE: usize = 64;
/// `TDX_REPORT_LEN`.
pub const TDREPORT_SIZE: usize = 1024;

/// `struct tdx_report_req`.
#[repr(C)]
struct ReportReq {
    reportdata: [u8; REPORT_DATA_SIZE],
    tdreport: [u8; TDREPORT_SIZE],
}

/// `TDREPORT_STRUCT`, field for field (byte arrays only: alignment 1, no
/// padding; offsets checked below).
#[repr(C)]
#[derive(Clone, PartialEq, Eq)]
pub struct RawTdReport {
    /// REPORTMACSTRUCT 0: REPORTTYPE (TEE type 0x81 = TDX, subtype,
    /// version, reserved).
    pub report_type: [u8; 4],
    /// REPORTMACSTRUCT 4: reserved.
    pub reserved1: [u8; 12],
    /// REPORTMACSTRUCT 16: CPU security version.
    pub cpusvn: [u8; 16],
    /// REPORTMACSTRUCT 32: SHA-384 of TEE_TCB_INFO.
    pub tee_tcb_info_hash: [u8; 48],
    /// REPORTMACSTRUCT 80: SHA-384 of TDINFO.
    pub tee_info_hash: [u8; 48],
    /// REPORTMACSTRUCT 128: the guest's report data.
    pub report_data: [u8; 64],
    /// REPORTMACSTRUCT 192: reserved.
    pub reserved2: [u8; 32],
    /// REPORTMACSTRUCT 224: MAC over the structure (local CPU key).
    pub mac: [u8; 32],
    /// 256: TEE_TCB_INFO (TDX module identity and SVNs).
    pub tee_tcb_info: [u8; 239],
    /// 495: reserved.
    pub reserved3: [u8; 17],
    /// TDINFO 512: TD attributes.
    pub attributes: [u8; 8],
    /// TDINFO 520: XFAM.
    pub xfam: [u8; 8],
    /// TDINFO 528: MRTD, the measurement of the TD's initial contents.
    pub mrtd: [u8; 48],
    /// TDINFO 576: MRCONFIGID.
    pub mrconfigid: [u8; 48],
    /// TDINFO 624: MROWNER.
    pub mrowner: [u8; 48],
    /// TDINFO 672: MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
    /// TDINFO 720: RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// TDINFO 912: SERVTD_HASH.
    pub servtd_hash: [u8; 48],
    /// TDINFO 960: reserved.
    pub reserved4: [u8; 64],
}

const _: () = {
    assert!(size_of::<ReportReq>() == REPORT_DATA_SIZE + TDREPORT_SIZE);
    assert!(offset_of!(ReportReq, tdreport) == 64);
    assert!(size_of::<RawTdReport>() == TDREPORT_SIZE);
    assert!(offset_of!(RawTdReport, report_data) == 128);
    assert!(offset_of!(RawTdReport, mac) == 224);
    assert!(offset_of!(RawTdReport, tee_tcb_info) == 256);
    assert!(offset_of!(RawTdReport, attributes) == 512);
    assert!(offset_of!(RawTdReport, mrtd) == 528);
    assert!(offset_of!(RawTdReport, rtmr) == 720);
    assert!(offset_of!(RawTdReport, servtd_hash) == 912);
};

/// `TDX_CMD_GET_REPORT0`: `_IOWR('T', 1, struct tdx_report_req)`.
pub const TDX_CMD_GET_REPORT0: u32 = crate::iowr::<ReportReq>(b'T', 1);

/// Why the device gave no TDREPORT.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TdxGuestError {
    /// The device could not be opened.
    #[error(
        "cannot open {path}: {source} (is this a TDX guest with the tdx-guest driver loaded?)"
    )]
    Open {
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The ioctl failed.
    #[error("TDX_CMD_GET_REPORT0 on {path} failed: {source}")]
    Ioctl {
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A TDREPORT: readable, but verifiable only on the machine that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct TdReport {
    raw: Box<RawTdReport>,
}

impl std::fmt::Debug for TdReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdReport")
            .field("report_type", &self.raw.report_type)
            .field("mrtd", &hex(&self.raw.mrtd))
            .field("report_data", &hex(&self.raw.report_data))
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn take<const N: usize>(b: &[u8; TDREPORT_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl TdReport {
    /// Read the fields of a 1024-byte TDREPORT.
    pub fn from_bytes(b: &[u8; TDREPORT_SIZE]) -> TdReport {
        let rtmr = [take(b, 720), take(b, 768), take(b, 816), take(b, 864)];
        TdReport {
            raw: Box::new(RawTdReport {
                report_type: take(b, 0),
                reserved1: take(b, 4),
                cpusvn: take(b, 16),
                tee_tcb_info_hash: take(b, 32),
                tee_info_hash: take(b, 80),
                report_data: take(b, 128),
                reserved2: take(b, 192),
                mac: take(b, 224),
                tee_tcb_info: take(b, 256),
                reserved3: take(b, 495),
                attributes: take(b, 512),
                xfam: take(b, 520),
                mrtd: take(b, 528),
                mrconfigid: take(b, 576),
                mrowner: take(b, 624),
                mrownerconfig: take(b, 672),
                rtmr,
                servtd_hash: take(b, 912),
                reserved4: take(b, 960),
            }),
        }
    }

    /// Every field.
    pub fn raw(&self) -> &RawTdReport {
        &self.raw
    }
    /// The report data the guest asked for.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.raw.report_data
    }
    /// MRTD.
    pub fn mrtd(&self) -> &[u8; 48] {
        &self.raw.mrtd
    }
    /// RTMR0..RTMR3.
    pub fn rtmr(&self) -> &[[u8; 48]; 4] {
        &self.raw.rtmr
    }
}

/// An open `/dev/tdx_guest`.
#[derive(Debug)]
pub struct TdxGuest {
    file: File,
    path: String,
}

impl TdxGuest {
    /// Open [`DEVICE`].
    pub fn open() -> Result<TdxGuest, TdxGuestError> {
        TdxGuest::open_path(Path::new(DEVICE))
    }

    /// Open a device node at `path`.
    pub fn open_path(path: &Path) -> Result<TdxGuest, TdxGuestError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| TdxGuestError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(TdxGuest {
            file,
            path: path.display().to_string(),
        })
    }

    /// `TDX_CMD_GET_REPORT0`: the TDREPORT over `report_data`.
    pub fn get_report0(
        &self,
        report_data: &[u8; REPORT_DATA_SIZE],
    ) -> Result<TdReport, TdxGuestError> {
        let mut req = Box::new(ReportReq {
            reportdata: *report_data,
            tdreport: [0; TDREPORT_SIZE],
        });
        // SAFETY: `req` is a `struct tdx_report_req` laid out as in
        // tdx-guest.h (size and offsets checked above), boxed, live and not
        // otherwise borrowed until the call returns. The driver reads
        // `reportdata` and writes the TDREPORT_SIZE bytes of `tdreport`;
        // nothing else is touched.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                crate::request(TDX_CMD_GET_REPORT0),
                std::ptr::from_mut(req.as_mut()),
            )
        };
        if rc < 0 {
            return Err(TdxGuestError::Ioctl {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(TdReport::from_bytes(&req.tdreport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_number_matches_the_uapi_header() {
        // _IOWR('T', 1, 1088-byte struct): 0xC0 | 0x440 << 16 | 'T' << 8 | 1.
        assert_eq!(TDX_CMD_GET_REPORT0, 0xC440_5401);
    }

    #[test]
    fn fields_come_from_their_offsets() {
        let mut b = [0u8; TDREPORT_SIZE];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        let r = TdReport::from_bytes(&b);
        assert_eq!(r.report_data()[..], b[128..192]);
        assert_eq!(r.mrtd()[..], b[528..576]);
        assert_eq!(r.rtmr()[3][..], b[864..912]);
        assert_eq!(r.raw().servtd_hash[..], b[912..960]);
        assert_eq!(r.raw().report_type[..], b[0..4]);
    }

    #[test]
    fn a_device_that_is_not_tdx_guest_is_reported() {
        let dev = TdxGuest::open_path(Path::new("/dev/null")).unwrap();
        let e = dev.get_report0(&[1; 64]).unwrap_err();
        assert!(
            matches!(&e, TdxGuestError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::ENOTTY)),
            "{e}"
        );
        assert!(e.to_string().contains("TDX_CMD_GET_REPORT0 on /dev/null"));
    }
}
