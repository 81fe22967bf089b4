//! The initial VMSA (SEV-ES save area) page of each vCPU, as the hypervisor
//! creates it before the launch measurement.
//!
//! Owns the page layout and the reset state; which page goes to which vCPU
//! and how it is measured is [`crate::snp`]'s.
//!
//! Layout: AMD64 Architecture Programmer's Manual Vol. 2, Appendix B,
//! Table B-4 "VMSA Layout, State Save Area for SEV-ES" (the same offsets as
//! Linux's `struct sev_es_save_area`). Segment registers are 16 bytes:
//! `u16` selector, `u16` attributes, `u32` limit, `u64` base. Only the fields
//! a freshly reset vCPU has non-zero are written; the rest of the 4 KiB page
//! is zero.
//!
//! Reset state: the x86 reset state (APM Vol. 2 §14.1.3 "Processor
//! Initialization State": CS selector 0xF000, limits 0xFFFF, CR0 0x10, DR6
//! 0xFFFF0FF0, DR7 0x400, RFLAGS 2, PAT 0x0007040600070406, XCR0 1, MXCSR
//! 0x1F80, FCW 0x37F) with what KVM adds (EFER.SVME, CR4.MCE, the CPUID
//! signature in RDX) and what differs on other hypervisors ([`VmmType`]).
//! The BSP starts at `0xFFFFFFF0`; APs at the SEV-ES reset address from
//! OVMF, split into CS base (high 16 bits) and RIP (low 16 bits).

use crate::PAGE_SIZE;

/// The hypervisor that builds the VMSAs; each sets a few registers its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmmType {
    /// QEMU/KVM.
    Qemu,
    /// Amazon EC2 (current VMSA definition: RDX 0x600, no MXCSR/FCW, some
    /// segment attributes differ, CPUID page measured last).
    Ec2,
    /// Google Compute Engine (RDX 0x600, different PAT, no MXCSR/FCW,
    /// SNP_SEC_MEMORY measured as unmeasured pages).
    Gce,
}

impl VmmType {
    /// Parse `qemu`, `ec2` or `gce` (any case).
    pub fn from_name(name: &str) -> Option<VmmType> {
        match name.to_ascii_lowercase().as_str() {
            "qemu" => Some(VmmType::Qemu),
            "ec2" => Some(VmmType::Ec2),
            "gce" => Some(VmmType::Gce),
            _ => None,
        }
    }
}

/// Reset EIP of the bootstrap processor.
pub const BSP_RESET_EIP: u32 = 0xffff_fff0;

/// Byte offsets in the save area (APM Vol. 2 Table B-4).
mod off {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0d0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

// The save area lies well inside the page; a wrong offset beyond it would
// fail to compile here rather than panic at run time.
const _: () = assert!(off::X87_FCW + 2 <= PAGE_SIZE);
const _: () = assert!(off::TR + 16 == 0xa0 && off::EFER + 8 <= off::CR4);
const _: () = assert!(off::RDX + 8 <= off::SEV_FEATURES && off::XCR0 + 8 <= off::MXCSR);

/// One 4 KiB VMSA page.
pub type VmsaPage = [u8; PAGE_SIZE];

fn put16(p: &mut VmsaPage, at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(p: &mut VmsaPage, at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(p: &mut VmsaPage, at: usize, v: u64) {
    p[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn segment(p: &mut VmsaPage, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put16(p, at, selector);
    put16(p, at + 2, attrib);
    put32(p, at + 4, limit);
    put64(p, at + 8, base);
}

/// The VMSA page of a vCPU that starts at `eip`.
///
/// `sev_features` is the guest-features word (SEV_FEATURES; 0 for SEV-ES),
/// `vcpu_signature` the CPUID signature KVM puts in RDX.
pub fn vmsa_page(eip: u32, sev_features: u64, vcpu_signature: u32, vmm: VmmType) -> Box<VmsaPage> {
    let mut p: Box<VmsaPage> = Box::new([0; PAGE_SIZE]);
    let (cs_attr, ss_attr, tr_attr, rdx, mxcsr, fcw, g_pat) = match vmm {
        VmmType::Qemu => (
            0x9b,
            0x93,
            0x8b,
            u64::from(vcpu_signature),
            0x1f80,
            0x37f,
            0x0007_0406_0007_0406,
        ),
        // EC2 marks the BSP's code segment not-accessed; RDX holds 0x600
        // (sev-snp-measure commit 4a02bf0 updated this from 0).
        VmmType::Ec2 => (
            if eip == BSP_RESET_EIP { 0x9a } else { 0x9b },
            0x92,
            0x83,
            0x600,
            0,
            0,
            0x0007_0406_0007_0406,
        ),
        VmmType::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, 0x0007_0106),
    };
    let data = 0x93;
    segment(&mut p, off::ES, 0, data, 0xffff, 0);
    segment(
        &mut p,
        off::CS,
        0xf000,
        cs_attr,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    segment(&mut p, off::SS, 0, ss_attr, 0xffff, 0);
    segment(&mut p, off::DS, 0, data, 0xffff, 0);
    segment(&mut p, off::FS, 0, data, 0xffff, 0);
    segment(&mut p, off::GS, 0, data, 0xffff, 0);
    segment(&mut p, off::GDTR, 0, 0, 0xffff, 0);
    segment(&mut p, off::LDTR, 0, 0x82, 0xffff, 0);
    segment(&mut p, off::IDTR, 0, 0, 0xffff, 0);
    segment(&mut p, off::TR, 0, tr_attr, 0xffff, 0);
    put64(&mut p, off::EFER, 0x1000); // EFER.SVME, set by KVM
    put64(&mut p, off::CR4, 0x40); // CR4.MCE, set by KVM
    put64(&mut p, off::CR0, 0x10);
    put64(&mut p, off::DR7, 0x400);
    put64(&mut p, off::DR6, 0xffff_0ff0);
    put64(&mut p, off::RFLAGS, 0x2);
    put64(&mut p, off::RIP, u64::from(eip & 0xffff));
    put64(&mut p, off::G_PAT, g_pat);
    put64(&mut p, off::RDX, rdx);
    put64(&mut p, off::SEV_FEATURES, sev_features);
    put64(&mut p, off::XCR0, 0x1);
    put32(&mut p, off::MXCSR, mxcsr);
    put16(&mut p, off::X87_FCW, fcw);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsp_and_ap_differ_only_in_cs_base_and_rip() {
        let bsp = vmsa_page(BSP_RESET_EIP, 1, 0x800f12, VmmType::Qemu);
        let ap = vmsa_page(0x0080_b004, 1, 0x800f12, VmmType::Qemu);
        let diff: Vec<usize> = (0..PAGE_SIZE).filter(|i| bsp[*i] != ap[*i]).collect();
        assert!(diff.iter().all(
            |i| (off::CS + 8..off::CS + 16).contains(i) || (off::RIP..off::RIP + 8).contains(i)
        ));
        assert_eq!(&ap[off::RIP..off::RIP + 2], &0xb004u16.to_le_bytes());
        assert_eq!(
            &ap[off::CS + 8..off::CS + 12],
            &0x0080_0000u32.to_le_bytes()
        );
        assert_eq!(
            &bsp[off::SEV_FEATURES..off::SEV_FEATURES + 8],
            &1u64.to_le_bytes()
        );
    }
}
