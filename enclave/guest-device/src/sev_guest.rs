//! `/dev/sev-guest`: SEV-SNP attestation reports through the guest driver.
//!
//! Structures and request numbers: Linux `include/uapi/linux/sev-guest.h`
//! (`struct snp_report_req`, `struct snp_report_resp`,
//! `struct snp_guest_request_ioctl`, `struct snp_ext_report_req`,
//! `SNP_GET_REPORT`, `SNP_GET_EXT_REPORT`, `SNP_GUEST_VMM_ERR_INVALID_LEN`)
//! and `Documentation/virt/coco/sev-guest.rst`. The request and response
//! bodies are the firmware's messages: *SEV Secure Nested Paging Firmware
//! ABI Specification* (AMD #56860), §7.3 "Attestation", tables
//! "MSG_REPORT_REQ Message Structure" (REPORT_DATA 0x00–0x3F, VMPL
//! 0x40–0x43, reserved to 0x5F) and "MSG_REPORT_RSP Message Structure"
//! (STATUS 0x00–0x03, REPORT_SIZE 0x04–0x07, reserved 0x08–0x1F, REPORT from
//! 0x20). Table numbers differ between revisions of the specification, so
//! they are named, not numbered.
//!
//! The certificate buffer of `SNP_GET_EXT_REPORT` holds the host's
//! certificate table (GHCB specification, "SNP Extended Guest Request");
//! this module returns it as bytes and leaves parsing to
//! `cocoon_attestation::snp_certs`.

use std::fs::{File, OpenOptions};
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The device node.
pub const DEVICE: &str = "/dev/sev-guest";

/// Size of the report data the guest binds (`SNP_REPORT_USER_DATA_SIZE`).
pub const REPORT_DATA_SIZE: usize = 64;
/// Size of the driver's response buffer (`struct snp_report_resp`).
pub const RESPONSE_SIZE: usize = 4000;
/// Offset of the report inside MSG_REPORT_RSP.
pub const RESPONSE_REPORT_OFFSET: usize = 0x20;
/// The certificate buffer the first `SNP_GET_EXT_REPORT` offers: 16 KiB,
/// the driver's own maximum (`SEV_FW_BLOB_MAX_SIZE`) at the time of writing.
pub const INITIAL_CERTS_LEN: usize = 4 * PAGE_SIZE;
/// Largest certificate buffer offered when the host asks for more.
pub const MAX_CERTS_LEN: usize = 1 << 20;
/// Attempts at `SNP_GET_EXT_REPORT` (the first plus retries with the size
/// the host asked for).
pub const MAX_ATTEMPTS: usize = 3;
/// The driver wants the certificate buffer in whole pages.
const PAGE_SIZE: usize = 4096;
/// `SNP_GUEST_VMM_ERR_INVALID_LEN`: the certificate buffer is too small;
/// the driver wrote the needed length into `certs_len`.
const VMM_ERR_INVALID_LEN: u32 = 1;
/// Message version the driver passes to the firmware (must be non-zero).
const MSG_VERSION: u8 = 1;

/// `struct snp_report_req` (MSG_REPORT_REQ).
#[repr(C)]
#[derive(Clone, Copy)]
struct ReportReq {
    user_data: [u8; REPORT_DATA_SIZE],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_report_resp`: MSG_REPORT_RSP inside a fixed buffer.
#[repr(C)]
struct ReportResp {
    data: [u8; RESPONSE_SIZE],
}

/// `struct snp_ext_report_req`.
#[repr(C)]
struct ExtReportReq {
    data: ReportReq,
    certs_address: u64,
    certs_len: u32,
}

/// `struct snp_guest_request_ioctl`. `exitinfo2` is the union of the
/// header: bits 31:0 the firmware error, bits 63:32 the VMM (host) error.
#[repr(C)]
struct GuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

// The layouts the kernel expects on x86-64 (natural alignment, as in C).
const _: () = {
    assert!(size_of::<ReportReq>() == 96);
    assert!(offset_of!(ReportReq, vmpl) == 0x40);
    assert!(size_of::<ReportResp>() == RESPONSE_SIZE);
    assert!(size_of::<ExtReportReq>() == 112);
    assert!(offset_of!(ExtReportReq, certs_address) == 96);
    assert!(offset_of!(ExtReportReq, certs_len) == 104);
    assert!(size_of::<GuestRequestIoctl>() == 32);
    assert!(offset_of!(GuestRequestIoctl, req_data) == 8);
    assert!(offset_of!(GuestRequestIoctl, resp_data) == 16);
    assert!(offset_of!(GuestRequestIoctl, exitinfo2) == 24);
};

/// `SNP_GET_REPORT`: `_IOWR('S', 0x0, struct snp_guest_request_ioctl)`.
pub const SNP_GET_REPORT: u32 = crate::iowr::<GuestRequestIoctl>(b'S', 0x0);
/// `SNP_GET_EXT_REPORT`: `_IOWR('S', 0x2, struct snp_guest_request_ioctl)`.
pub const SNP_GET_EXT_REPORT: u32 = crate::iowr::<GuestRequestIoctl>(b'S', 0x2);

/// Why the device gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SevGuestError {
    /// The device could not be opened.
    #[error("cannot open {path}: {source} (is this an SEV-SNP guest with the sev-guest driver loaded? `modprobe sev-guest`)")]
    Open {
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The ioctl failed.
    #[error("{request} on {path} failed: {source}{}", describe_exitinfo2(*.exitinfo2))]
    Ioctl {
        /// `SNP_GET_REPORT` or `SNP_GET_EXT_REPORT`.
        request: &'static str,
        /// The device path.
        path: String,
        /// The OS error.
        source: std::io::Error,
        /// Firmware (bits 31:0) and host (bits 63:32) error codes.
        exitinfo2: u64,
    },
    /// The host kept asking for a larger certificate buffer.
    #[error("SNP_GET_EXT_REPORT on {path}: the host asked for a {wanted}-byte certificate buffer {attempts} times (at most {MAX_CERTS_LEN} bytes and {MAX_ATTEMPTS} attempts are allowed)")]
    CertsBuffer {
        /// The device path.
        path: String,
        /// The size last asked for.
        wanted: u64,
        /// Attempts made.
        attempts: usize,
    },
    /// The firmware answered with a non-zero status or a malformed response.
    #[error("MSG_REPORT_RSP: {0}")]
    Response(String),
}

fn describe_exitinfo2(e: u64) -> String {
    if e == 0 {
        return String::new();
    }
    let fw = e as u32;
    let vmm = (e >> 32) as u32;
    format!(" (firmware error {fw:#x}, host error {vmm:#x})")
}

/// What `SNP_GET_EXT_REPORT` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtReport {
    /// The attestation report (REPORT_SIZE bytes of MSG_REPORT_RSP).
    pub report: Vec<u8>,
    /// The certificate buffer: the host's certificate table and the
    /// certificates, zero-padded to whole pages; all zero when the host
    /// supplied none.
    pub certs: Vec<u8>,
}

/// An open `/dev/sev-guest`.
#[derive(Debug)]
pub struct SevGuest {
    file: File,
    path: String,
}

impl SevGuest {
    /// Open [`DEVICE`].
    pub fn open() -> Result<SevGuest, SevGuestError> {
        SevGuest::open_path(Path::new(DEVICE))
    }

    /// Open a device node at `path`.
    pub fn open_path(path: &Path) -> Result<SevGuest, SevGuestError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| SevGuestError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SevGuest {
            file,
            path: path.display().to_string(),
        })
    }

    /// `SNP_GET_REPORT`: a report over `report_data` at privilege level
    /// `vmpl`, without certificates.
    pub fn get_report(
        &self,
        report_data: &[u8; REPORT_DATA_SIZE],
        vmpl: u32,
    ) -> Result<Vec<u8>, SevGuestError> {
        let mut req = ReportReq {
            user_data: *report_data,
            vmpl,
            rsvd: [0; 28],
        };
        let mut resp = Box::new(ReportResp {
            data: [0; RESPONSE_SIZE],
        });
        let mut arg = GuestRequestIoctl {
            msg_version: MSG_VERSION,
            req_data: std::ptr::from_mut(&mut req) as u64,
            resp_data: std::ptr::from_mut(resp.as_mut()) as u64,
            exitinfo2: 0,
        };
        // SAFETY: `arg` is a `struct snp_guest_request_ioctl` laid out as in
        // sev-guest.h (checked above); its `req_data` and `resp_data` point at
        // `req` (a `struct snp_report_req`) and `resp` (a
        // `struct snp_report_resp`, RESPONSE_SIZE bytes), which live, are not
        // otherwise borrowed, and do not move until the call returns. The
        // driver reads `req`, writes at most size_of::<ReportResp>() bytes of
        // `resp` and writes `arg.exitinfo2`; nothing else is touched.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                crate::request(SNP_GET_REPORT),
                std::ptr::from_mut(&mut arg),
            )
        };
        if rc < 0 {
            return Err(SevGuestError::Ioctl {
                request: "SNP_GET_REPORT",
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
                exitinfo2: arg.exitinfo2,
            });
        }
        parse_report_response(&resp.data)
    }

    /// `SNP_GET_EXT_REPORT`: a report over `report_data` at privilege level
    /// `vmpl`, with the host's certificate buffer. When the host says the
    /// buffer is too small (`SNP_GUEST_VMM_ERR_INVALID_LEN`, or `ENOSPC`),
    /// asks again with the size it named, up to [`MAX_CERTS_LEN`] bytes and
    /// [`MAX_ATTEMPTS`] attempts.
    pub fn get_ext_report(
        &self,
        report_data: &[u8; REPORT_DATA_SIZE],
        vmpl: u32,
    ) -> Result<ExtReport, SevGuestError> {
        let mut certs_len = INITIAL_CERTS_LEN;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut certs = vec![0u8; certs_len];
            let mut req = ExtReportReq {
                data: ReportReq {
                    user_data: *report_data,
                    vmpl,
                    rsvd: [0; 28],
                },
                certs_address: certs.as_mut_ptr() as u64,
                // certs_len <= MAX_CERTS_LEN, which fits in u32.
                certs_len: certs_len as u32,
            };
            let mut resp = Box::new(ReportResp {
                data: [0; RESPONSE_SIZE],
            });
            let mut arg = GuestRequestIoctl {
                msg_version: MSG_VERSION,
                req_data: std::ptr::from_mut(&mut req) as u64,
                resp_data: std::ptr::from_mut(resp.as_mut()) as u64,
                exitinfo2: 0,
            };
            // SAFETY: `arg` is a `struct snp_guest_request_ioctl` laid out as
            // in sev-guest.h (checked above). `req_data` points at `req`, a
            // `struct snp_ext_report_req` whose `certs_address` points at
            // `certs`, a live buffer of exactly `req.certs_len` bytes;
            // `resp_data` points at `resp`, RESPONSE_SIZE bytes. All of them
            // live, are not otherwise borrowed and do not move until the call
            // returns. The driver reads `req`, may write `req.certs_len`, at
            // most `req.certs_len` bytes of `certs`, at most RESPONSE_SIZE
            // bytes of `resp`, and `arg.exitinfo2`.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    crate::request(SNP_GET_EXT_REPORT),
                    std::ptr::from_mut(&mut arg),
                )
            };
            if rc >= 0 {
                let report = parse_report_response(&resp.data)?;
                return Ok(ExtReport { report, certs });
            }
            let source = std::io::Error::last_os_error();
            let vmm = (arg.exitinfo2 >> 32) as u32;
            let too_small =
                vmm == VMM_ERR_INVALID_LEN || source.raw_os_error() == Some(libc::ENOSPC);
            if !too_small {
                return Err(SevGuestError::Ioctl {
                    request: "SNP_GET_EXT_REPORT",
                    path: self.path.clone(),
                    source,
                    exitinfo2: arg.exitinfo2,
                });
            }
            let wanted = u64::from(req.certs_len);
            match next_certs_len(certs_len, wanted) {
                Some(n) if attempt < MAX_ATTEMPTS => certs_len = n,
                _ => {
                    return Err(SevGuestError::CertsBuffer {
                        path: self.path.clone(),
                        wanted,
                        attempts: attempt,
                    })
                }
            }
        }
        Err(SevGuestError::CertsBuffer {
            path: self.path.clone(),
            wanted: certs_len as u64,
            attempts: MAX_ATTEMPTS,
        })
    }
}

/// The certificate buffer size to try after the host asked for `wanted`
/// bytes while `current` were offered: `wanted` rounded up to whole pages,
/// when it is larger than `current` and at most [`MAX_CERTS_LEN`].
fn next_certs_len(current: usize, wanted: u64) -> Option<usize> {
    let wanted = usize::try_from(wanted).ok()?;
    let pages = wanted.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE;
    let n = pages.checked_mul(PAGE_SIZE)?;
    (n > current && n <= MAX_CERTS_LEN).then_some(n)
}

/// The report inside a MSG_REPORT_RSP buffer: STATUS must be zero and
/// REPORT_SIZE must fit in the buffer after the 0x20-byte header.
pub fn parse_report_response(resp: &[u8]) -> Result<Vec<u8>, SevGuestError> {
    let (Some(status), Some(size)) = (resp.get(0..4), resp.get(4..8)) else {
        return Err(SevGuestError::Response(format!(
            "{} bytes is shorter than the header",
            resp.len()
        )));
    };
    let status = u32::from_le_bytes([status[0], status[1], status[2], status[3]]);
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if status != 0 {
        return Err(SevGuestError::Response(format!(
            "the firmware refused the report request with status {status:#x} (0x16 is INVALID_PARAM: e.g. a VMPL below the guest's own)"
        )));
    }
    RESPONSE_REPORT_OFFSET
        .checked_add(size)
        .and_then(|end| resp.get(RESPONSE_REPORT_OFFSET..end))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            SevGuestError::Response(format!(
                "REPORT_SIZE {size} does not fit in the {}-byte response",
                resp.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_uapi_header() {
        // _IOWR('S', n, 32-byte struct): 0xC0 | 0x20 << 16 | 'S' << 8 | n.
        assert_eq!(SNP_GET_REPORT, 0xC020_5300);
        assert_eq!(SNP_GET_EXT_REPORT, 0xC020_5302);
    }

    #[test]
    fn report_response_is_bounded_and_status_checked() {
        let mut resp = vec![0u8; RESPONSE_SIZE];
        resp[4..8].copy_from_slice(&0x4A0u32.to_le_bytes());
        resp[0x20] = 0xAB;
        let r = parse_report_response(&resp).unwrap();
        assert_eq!(r.len(), 0x4A0);
        assert_eq!(r[0], 0xAB);

        let mut bad = resp.clone();
        bad[0] = 0x16;
        let e = parse_report_response(&bad).unwrap_err().to_string();
        assert!(e.contains("status 0x16"), "{e}");

        let mut big = resp.clone();
        big[4..8].copy_from_slice(&(RESPONSE_SIZE as u32 - 0x1F).to_le_bytes());
        assert!(parse_report_response(&big).is_err());
        big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_report_response(&big).is_err());
        assert!(parse_report_response(&resp[..7]).is_err());
    }

    #[test]
    fn certificate_buffer_growth_is_bounded() {
        assert_eq!(next_certs_len(16384, 20000), Some(20480));
        assert_eq!(next_certs_len(16384, 16384), None);
        assert_eq!(next_certs_len(16384, 100), None);
        assert_eq!(
            next_certs_len(16384, MAX_CERTS_LEN as u64),
            Some(MAX_CERTS_LEN)
        );
        assert_eq!(next_certs_len(16384, MAX_CERTS_LEN as u64 + 1), None);
        assert_eq!(next_certs_len(16384, u64::MAX), None);
    }

    #[test]
    fn a_device_that_is_not_sev_guest_is_reported_not_trusted() {
        // /dev/null answers every ioctl with ENOTTY: the real ioctl path
        // runs and its error names the request and the device.
        let dev = SevGuest::open_path(Path::new("/dev/null")).unwrap();
        let e = dev.get_ext_report(&[7; 64], 0).unwrap_err();
        assert!(
            matches!(&e, SevGuestError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::ENOTTY)),
            "{e}"
        );
        assert!(
            e.to_string().contains("SNP_GET_EXT_REPORT on /dev/null"),
            "{e}"
        );
        let e = dev.get_report(&[7; 64], 0).unwrap_err();
        assert!(e.to_string().contains("SNP_GET_REPORT on /dev/null"), "{e}");
        let e = SevGuest::open_path(Path::new("/nonexistent/sev-guest")).unwrap_err();
        assert!(e.to_string().contains("modprobe sev-guest"), "{e}");
    }
}
