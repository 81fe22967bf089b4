//! The kernel's device-mapper control interface (`/dev/mapper/control`),
//! just enough to map one read-only dm-verity target.
//!
//! Layouts from `include/uapi/linux/dm-ioctl.h` (interface version 4):
//! `struct dm_ioctl` (312 bytes: version, data_size, data_start,
//! target_count, open_count, flags, event_nr, padding, dev, name\[128\],
//! uuid\[129\], data\[7\]) followed, for `DM_TABLE_LOAD`, by one
//! `struct dm_target_spec` (40 bytes: sector_start, length, status, next,
//! target_type\[16\]) and its NUL-terminated parameter string. The target
//! table format is the kernel's `Documentation/admin-guide/device-mapper/
//! verity.rst`.
//!
//! Why not a crate: the maintained `devicemapper` crate generates its
//! bindings with bindgen (libclang at build time) and brings a dozen
//! dependencies into the static PID 1; three ioctls are all PID 1 needs.

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;

use crate::iowr;

/// `DM_IOCTL`, the ioctl type byte of device-mapper.
const DM_IOCTL: u8 = 0xfd;
/// `DM_DEV_CREATE_CMD`.
const DM_DEV_CREATE_CMD: u8 = 3;
/// `DM_DEV_SUSPEND_CMD` (also resumes, without `DM_SUSPEND_FLAG`).
const DM_DEV_SUSPEND_CMD: u8 = 6;
/// `DM_TABLE_LOAD_CMD`.
const DM_TABLE_LOAD_CMD: u8 = 9;
/// `DM_READONLY_FLAG`: the table is loaded read-only.
const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_NAME_LEN`.
const DM_NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
const DM_UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`.
const DM_MAX_TYPE_NAME: usize = 16;
/// The interface version this code speaks (`DM_VERSION_MAJOR` 4; minor 0
/// asks for nothing newer than 4.0).
const DM_VERSION: [u32; 3] = [4, 0, 0];
/// The control device.
pub const CONTROL: &str = "/dev/mapper/control";

/// `struct dm_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

// Sizes and offsets of dm-ioctl.h on x86-64.
const _: () = {
    assert!(size_of::<DmIoctl>() == 312);
    assert!(offset_of!(DmIoctl, data_size) == 12);
    assert!(offset_of!(DmIoctl, flags) == 28);
    assert!(offset_of!(DmIoctl, dev) == 40);
    assert!(offset_of!(DmIoctl, name) == 48);
    assert!(offset_of!(DmIoctl, uuid) == 176);
    assert!(offset_of!(DmIoctl, data) == 305);
    assert!(size_of::<DmTargetSpec>() == 40);
    assert!(offset_of!(DmTargetSpec, next) == 20);
    assert!(offset_of!(DmTargetSpec, target_type) == 24);
};

/// The request buffer: the header, one target spec and its parameters, in
/// one 8-byte aligned allocation (the kernel copies `data_size` bytes).
#[repr(C, align(8))]
struct Request {
    header: DmIoctl,
    body: [u8; BODY_LEN],
}

/// Room for one target spec and its parameter string.
const BODY_LEN: usize = 4096;
/// Longest parameter string accepted (with its NUL, after the spec).
pub const MAX_PARAMS: usize = BODY_LEN - size_of::<DmTargetSpec>() - 1;

/// Why the mapping failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DmError {
    /// A name, UUID, target type or parameter string does not fit its field
    /// or contains a NUL byte.
    #[error("device-mapper: {0}")]
    Invalid(&'static str),
    /// The control device could not be opened.
    #[error("cannot open {CONTROL}: {0}")]
    Control(std::io::Error),
    /// An ioctl failed.
    #[error("device-mapper {op} failed: {source}")]
    Ioctl {
        /// Which command.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One linear range of a table: `length` 512-byte sectors from 0, served by
/// `target_type` with `params`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// The target type (`verity`).
    pub target_type: String,
    /// The parameter string.
    pub params: String,
}

/// A created and resumed mapping: its device number (major, minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Block device major number.
    pub major: u32,
    /// Block device minor number.
    pub minor: u32,
}

fn fill(dst: &mut [u8], src: &str, what: &'static str) -> Result<(), DmError> {
    let b = src.as_bytes();
    // Leave room for the terminating NUL.
    if b.len() >= dst.len() || b.contains(&0) {
        return Err(DmError::Invalid(what));
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

fn header(name: &str, uuid: &str, flags: u32) -> Result<Box<Request>, DmError> {
    let mut req = Box::new(Request {
        header: DmIoctl {
            version: DM_VERSION,
            data_size: size_of::<Request>() as u32,
            data_start: size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        },
        body: [0; BODY_LEN],
    });
    fill(&mut req.header.name, name, "device name too long")?;
    fill(&mut req.header.uuid, uuid, "device UUID too long")?;
    Ok(req)
}

fn call(control: &File, nr: u8, op: &'static str, req: &mut Request) -> Result<(), DmError> {
    let number = crate::request(iowr::<DmIoctl>(DM_IOCTL, nr));
    // SAFETY: `req` is a live, exclusively borrowed `Request`: a
    // `struct dm_ioctl` (layout asserted above) followed by BODY_LEN bytes,
    // and `data_size` says exactly that many bytes, so the kernel reads and
    // writes only inside this allocation. The fd is open for the duration.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), number, req as *mut Request) };
    if rc < 0 {
        return Err(DmError::Ioctl {
            op,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The kernel's `huge_encode_dev` form of `dev` as (major, minor).
fn decode_dev(dev: u64) -> Mapped {
    let dev = dev as u32;
    Mapped {
        major: (dev & 0xfff00) >> 8,
        minor: (dev & 0xff) | ((dev >> 12) & 0xfff00),
    }
}

/// Creates device `name` (with `uuid`), loads `target` read-only as its
/// only table entry and resumes it: the device is live when this returns.
pub fn create_readonly(name: &str, uuid: &str, target: &Target) -> Result<Mapped, DmError> {
    if target.params.len() > MAX_PARAMS || target.params.as_bytes().contains(&0) {
        return Err(DmError::Invalid("target parameters too long"));
    }
    let control = File::options()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(DmError::Control)?;

    let mut req = header(name, uuid, 0)?;
    call(&control, DM_DEV_CREATE_CMD, "DM_DEV_CREATE", &mut req)?;

    let mut req = header(name, "", DM_READONLY_FLAG)?;
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: target.sectors,
        status: 0,
        next: 0,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    fill(
        &mut spec.target_type,
        &target.target_type,
        "target type too long",
    )?;
    let spec_len = size_of::<DmTargetSpec>();
    write_spec(&spec, &mut req.body[..spec_len]);
    let params = target.params.as_bytes();
    req.body[spec_len..spec_len + params.len()].copy_from_slice(params);
    req.header.target_count = 1;
    call(&control, DM_TABLE_LOAD_CMD, "DM_TABLE_LOAD", &mut req)?;

    // Without DM_SUSPEND_FLAG, DM_DEV_SUSPEND resumes: the loaded table
    // becomes live.
    let mut req = header(name, "", 0)?;
    call(
        &control,
        DM_DEV_SUSPEND_CMD,
        "DM_DEV_SUSPEND (resume)",
        &mut req,
    )?;
    Ok(decode_dev(req.header.dev))
}

/// Writes `spec` into `out` in its C layout: the fields in order,
/// little-endian (x86-64), no padding (8 + 8 + 4 + 4 + 16 = 40 bytes, as
/// asserted above).
fn write_spec(spec: &DmTargetSpec, out: &mut [u8]) {
    out[0..8].copy_from_slice(&spec.sector_start.to_le_bytes());
    out[8..16].copy_from_slice(&spec.length.to_le_bytes());
    out[16..20].copy_from_slice(&spec.status.to_le_bytes());
    out[20..24].copy_from_slice(&spec.next.to_le_bytes());
    out[24..40].copy_from_slice(&spec.target_type);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_header() {
        // _IOWR(0xfd, 3, struct dm_ioctl) with sizeof = 312 (0x138).
        assert_eq!(iowr::<DmIoctl>(DM_IOCTL, DM_DEV_CREATE_CMD), 0xc138_fd03);
        assert_eq!(iowr::<DmIoctl>(DM_IOCTL, DM_TABLE_LOAD_CMD), 0xc138_fd09);
        assert_eq!(iowr::<DmIoctl>(DM_IOCTL, DM_DEV_SUSPEND_CMD), 0xc138_fd06);
    }

    #[test]
    fn device_numbers_decode() {
        // major 254, minor 0 and a minor above 255.
        assert_eq!(
            decode_dev(254 << 8),
            Mapped {
                major: 254,
                minor: 0
            }
        );
        let enc = (300u64 & 0xff) | (253 << 8) | ((300u64 & !0xff) << 12);
        assert_eq!(
            decode_dev(enc),
            Mapped {
                major: 253,
                minor: 300
            }
        );
    }

    #[test]
    fn names_must_fit() {
        assert!(header(&"x".repeat(128), "", 0).is_err());
        assert!(header("ok", "a\0b", 0).is_err());
        assert!(header(&"x".repeat(127), &"u".repeat(128), 0).is_ok());
    }
}
