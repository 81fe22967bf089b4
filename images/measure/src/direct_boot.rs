//! RTMR1 and RTMR2 of a TDX guest booted by QEMU with `-kernel/-initrd/-append`
//! through TDVF, computed from the files.
//!
//! **Unverified**: no public vector pairs a kernel, initrd and command line
//! with the RTMRs of a real direct-boot launch, so the values from
//! [`rtmrs`] are labelled unverified wherever they are shown. What *is*
//! checked against a real log (the dstack quote-report vector) is the event
//! structure: [`rtmr1_from_kernel_digest`] and [`rtmr2_from_digests`] given
//! the logged image and load-option digests reproduce the quote's RTMR1/2,
//! and the fixed EV_EFI_ACTION/separator digests equal the logged ones.
//!
//! Owns: the event sequence and the inputs to each event. Not owned: the PE
//! hash ([`crate::pe`]), the replay ([`crate::eventlog`]).
//!
//! RTMR1 (TDVF measuring the boot, UEFI PCRs 2..6 → CC MR 2):
//! 1. EV_EFI_BOOT_SERVICES_APPLICATION: Authenticode SHA-384 of the kernel
//!    as OVMF loads it, which is the bzImage with the setup header QEMU
//!    patches (Linux boot protocol, `Documentation/arch/x86/boot.rst`;
//!    QEMU `x86_load_linux`: `type_of_loader` 0xB0, `CAN_USE_HEAP`,
//!    `heap_end_ptr`, `cmd_line_ptr` 0x20000, and with an initrd
//!    `ramdisk_image`/`ramdisk_size`, the image placed below the highest
//!    allowed address under low memory less QEMU's ACPI area);
//! 2. EV_EFI_ACTION "Calling EFI Application from Boot Option";
//! 3. EV_SEPARATOR (4 zero bytes);
//! 4. EV_EFI_ACTION "Exit Boot Services Invocation";
//! 5. EV_EFI_ACTION "Exit Boot Services Returned with Success".
//!
//! RTMR2 (the Linux EFI stub, PCR 9 → CC MR 3; Linux 6.1 and later):
//! 1. EV_EVENT_TAG "LOADED_IMAGE::LoadOptions": SHA-384 of the load options
//!    OVMF passes, the command line in UTF-16LE with `" initrd=initrd"`
//!    appended when an initrd is given, and a UTF-16 NUL;
//! 2. EV_EVENT_TAG "Linux initrd": SHA-384 of the initrd (only with one).

use crate::pe::{authenticode_sha384, PeError};
use crate::{sha384, Measurement};

/// QEMU's ACPI data area below the top of low memory (`acpi_data_size`,
/// 0x20000 + 0x8000 on the q35 machine).
pub const QEMU_ACPI_DATA_SIZE: u32 = 0x28000;

/// The fixed EV_EFI_ACTION strings TDVF logs.
pub const CALLING_EFI_APPLICATION: &[u8] = b"Calling EFI Application from Boot Option";
/// Logged when the OS calls ExitBootServices.
pub const EXIT_BOOT_SERVICES_INVOCATION: &[u8] = b"Exit Boot Services Invocation";
/// Logged when ExitBootServices returns.
pub const EXIT_BOOT_SERVICES_SUCCESS: &[u8] = b"Exit Boot Services Returned with Success";

/// A QEMU direct kernel boot.
#[derive(Debug, Clone, Copy)]
pub struct QemuDirectBoot<'a> {
    /// The bzImage as given to `-kernel`.
    pub kernel: &'a [u8],
    /// The initrd as given to `-initrd`.
    pub initrd: Option<&'a [u8]>,
    /// The `-append` string.
    pub cmdline: &'a str,
    /// Guest memory in bytes (`-m`): decides where QEMU puts the initrd.
    pub memory_bytes: u64,
    /// QEMU's ACPI area size ([`QEMU_ACPI_DATA_SIZE`] for q35).
    pub acpi_data_size: u32,
}

/// Why the direct-boot RTMRs cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectBootError {
    /// Not a bzImage QEMU would boot this way.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The kernel is not a PE image (no EFI stub).
    #[error("kernel has no EFI stub: {0}")]
    Pe(#[from] PeError),
    /// A command line whose effect on the header is not modelled.
    #[error("command line contains \"vga=\": QEMU then patches the kernel's video mode, which this tool does not model; refusing rather than guessing")]
    VgaOption,
    /// The initrd does not fit where QEMU places it.
    #[error("initrd of {size} bytes does not fit below {max:#x} (QEMU refuses it too)")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest address QEMU allows.
        max: u64,
    },
}

fn hdr_u16(k: &[u8], at: usize) -> u16 {
    crate::le::u16_at(k, at).unwrap_or_default()
}
fn hdr_u32(k: &[u8], at: usize) -> u32 {
    crate::le::u32_at(k, at).unwrap_or_default()
}

/// Low memory below 4 GiB of a q35 machine with `memory_bytes` of RAM.
fn below_4g(memory_bytes: u64) -> u64 {
    let lowmem = if memory_bytes >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    memory_bytes.min(lowmem)
}

/// The kernel bytes with the setup-header fields QEMU writes.
pub fn patched_kernel(boot: &QemuDirectBoot<'_>) -> Result<Vec<u8>, DirectBootError> {
    let k = boot.kernel;
    if k.len() < 0x1000 || k.get(0x202..0x206) != Some(b"HdrS") {
        return Err(DirectBootError::Kernel(
            "not a Linux bzImage (no \"HdrS\" setup header at 0x202)".into(),
        ));
    }
    let protocol = hdr_u16(k, 0x206);
    let loadflags = k[0x211];
    if protocol < 0x202 || loadflags & 0x01 == 0 {
        return Err(DirectBootError::Kernel(format!(
            "boot protocol {}.{:02} without LOADED_HIGH is not supported (needs 2.02+ bzImage)",
            protocol >> 8,
            protocol & 0xff
        )));
    }
    if boot.cmdline.contains("vga=") {
        return Err(DirectBootError::VgaOption);
    }
    let mut out = k.to_vec();
    let (real_addr, cmdline_addr) = (0x1_0000u32, 0x2_0000u32);
    out[0x228..0x22c].copy_from_slice(&cmdline_addr.to_le_bytes());
    out[0x210] = 0xb0; // type_of_loader: QEMU
    out[0x211] |= 0x80; // CAN_USE_HEAP
    out[0x224..0x226].copy_from_slice(&((cmdline_addr - real_addr - 0x200) as u16).to_le_bytes());
    if let Some(initrd) = boot.initrd {
        let mut initrd_max: u64 = if protocol >= 0x20c && hdr_u16(k, 0x236) & 0x40 != 0 {
            u64::from(u32::MAX)
        } else if protocol >= 0x203 {
            u64::from(hdr_u32(k, 0x22c))
        } else {
            0x37ff_ffff
        };
        let avail = below_4g(boot.memory_bytes).saturating_sub(u64::from(boot.acpi_data_size));
        if initrd_max >= avail {
            initrd_max = avail.saturating_sub(1);
        }
        let size = initrd.len() as u64;
        if size >= initrd_max {
            return Err(DirectBootError::InitrdTooLarge {
                size,
                max: initrd_max,
            });
        }
        let addr = (initrd_max - size) & !0xfff;
        out[0x218..0x21c].copy_from_slice(&(addr as u32).to_le_bytes());
        out[0x21c..0x220].copy_from_slice(&(size as u32).to_le_bytes());
    }
    Ok(out)
}

/// SHA-384 of the load options OVMF hands the kernel.
pub fn load_options_digest(cmdline: &str, with_initrd: bool) -> [u8; 48] {
    let mut s = cmdline.to_string();
    if with_initrd {
        s.push_str(" initrd=initrd");
    }
    let mut b: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    b.extend_from_slice(&[0, 0]);
    sha384(&b)
}

fn extend_all(events: &[[u8; 48]]) -> Measurement {
    let mut r = [0u8; 48];
    for e in events {
        r = sha384(&[r.as_slice(), e.as_slice()].concat());
    }
    Measurement(r)
}

/// RTMR1 events given the kernel's Authenticode digest.
pub fn rtmr1_events(kernel_digest: [u8; 48]) -> Vec<[u8; 48]> {
    vec![
        kernel_digest,
        sha384(CALLING_EFI_APPLICATION),
        sha384(&[0; 4]),
        sha384(EXIT_BOOT_SERVICES_INVOCATION),
        sha384(EXIT_BOOT_SERVICES_SUCCESS),
    ]
}

/// RTMR1 given the kernel's Authenticode digest.
pub fn rtmr1_from_kernel_digest(kernel_digest: [u8; 48]) -> Measurement {
    extend_all(&rtmr1_events(kernel_digest))
}

/// RTMR2 given the load-options digest and the initrd digest (if any).
pub fn rtmr2_from_digests(load_options: [u8; 48], initrd: Option<[u8; 48]>) -> Measurement {
    let mut ev = vec![load_options];
    ev.extend(initrd);
    extend_all(&ev)
}

/// The computed direct-boot registers, with the digests they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBootRtmrs {
    /// Authenticode SHA-384 of the QEMU-patched kernel.
    pub kernel_digest: [u8; 48],
    /// RTMR1 (unverified).
    pub rtmr1: Measurement,
    /// RTMR2 (unverified).
    pub rtmr2: Measurement,
}

/// RTMR1 and RTMR2 of the boot. **Unverified** (see the module documentation).
pub fn rtmrs(boot: &QemuDirectBoot<'_>) -> Result<DirectBootRtmrs, DirectBootError> {
    let kernel_digest = authenticode_sha384(&patched_kernel(boot)?)?;
    let load = load_options_digest(boot.cmdline, boot.initrd.is_some());
    Ok(DirectBootRtmrs {
        kernel_digest,
        rtmr1: rtmr1_from_kernel_digest(kernel_digest),
        rtmr2: rtmr2_from_digests(load, boot.initrd.map(sha384)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage() -> Vec<u8> {
        let mut k = crate::pe::tests::tiny_pe();
        k.resize(0x1000, 0);
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        k[0x211] = 0x01;
        k[0x236..0x238].copy_from_slice(&0x40u16.to_le_bytes());
        k
    }

    #[test]
    fn patches_the_header_like_qemu() {
        let k = bzimage();
        let boot = QemuDirectBoot {
            kernel: &k,
            initrd: Some(&[7; 0x1234]),
            cmdline: "console=ttyS0",
            memory_bytes: 2 << 30,
            acpi_data_size: QEMU_ACPI_DATA_SIZE,
        };
        let p = patched_kernel(&boot).unwrap();
        assert_eq!(p[0x210], 0xb0);
        assert_eq!(p[0x211], 0x81);
        assert_eq!(hdr_u16(&p, 0x224), 0xfe00);
        assert_eq!(hdr_u32(&p, 0x228), 0x20000);
        // 2 GiB of RAM: below 4G = 2 GiB; minus ACPI, minus one, minus the size, page aligned.
        assert_eq!(
            hdr_u32(&p, 0x218),
            ((0x8000_0000u64 - 0x28000 - 1 - 0x1234) & !0xfff) as u32
        );
        assert_eq!(hdr_u32(&p, 0x21c), 0x1234);
        assert!(rtmrs(&boot).is_ok());
        let vga = QemuDirectBoot {
            cmdline: "vga=791",
            ..boot
        };
        assert_eq!(patched_kernel(&vga), Err(DirectBootError::VgaOption));
        let not_kernel = QemuDirectBoot {
            kernel: &[0; 0x2000],
            ..boot
        };
        assert!(matches!(
            patched_kernel(&not_kernel),
            Err(DirectBootError::Kernel(_))
        ));
    }

    #[test]
    fn load_options_are_utf16_with_nul() {
        let mut want: Vec<u8> = "a initrd=initrd"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        want.extend_from_slice(&[0, 0]);
        assert_eq!(load_options_digest("a", true), sha384(&want));
    }
}
