//! The Linux guest attestation devices, for the Cocoon enclave.
//!
//! Owns the `ioctl` interface of two guest drivers and nothing else:
//!
//! * [`sev_guest`] — `/dev/sev-guest` (AMD SEV-SNP): `SNP_GET_EXT_REPORT`
//!   (report plus the host's certificate table) and `SNP_GET_REPORT`.
//! * [`dm`] — `/dev/mapper/control`: one read-only device-mapper table
//!   (the dm-verity root of the guest image), for PID 1.
//! * [`tdx_guest`] — `/dev/tdx_guest` (Intel TDX): `TDX_CMD_GET_REPORT0`,
//!   which yields a TDREPORT. A TDREPORT is MAC'd for the local platform
//!   only; turning it into a remotely verifiable quote needs the quoting
//!   enclave, which upstream Linux reaches only through configfs-tsm.
//!
//! This is the only crate on the attestation path with `unsafe` code: the
//! `ioctl` calls themselves, each with a `// SAFETY:` comment. The request
//! and response structures mirror the kernel's UAPI headers with
//! compile-time size and offset checks. The crate does not judge what comes
//! back (report data, signatures, certificates): the enclave's providers
//! check report data, and `cocoon-verifier` everything else.
//!
//! The preferred interface on Linux 6.7 and later is configfs-tsm
//! (`/sys/kernel/config/tsm/report`), which the enclave drives with plain
//! file I/O; these devices are its fallbacks.

pub mod dm;
pub mod sev_guest;
pub mod tdx_guest;

use std::mem::size_of;

/// `_IOC_WRITE | _IOC_READ` in the direction bits of an ioctl number.
const IOC_READ_WRITE: u32 = 3;

/// The `_IOWR(type, nr, T)` request number of `include/uapi/asm-generic/ioctl.h`
/// (the layout x86-64 uses): direction in bits 31:30, size in 29:16, type in
/// 15:8, number in 7:0.
const fn iowr<T>(kind: u8, nr: u8) -> u32 {
    let size = size_of::<T>();
    assert!(size < 1 << 14, "ioctl argument too large for _IOC_SIZE");
    (IOC_READ_WRITE << 30) | ((size as u32) << 16) | ((kind as u32) << 8) | nr as u32
}

/// The request number as `libc::ioctl` takes it on this C library.
fn request(nr: u32) -> libc::Ioctl {
    // glibc takes an unsigned long, musl an int: the same 32 bits.
    nr as libc::Ioctl
}
