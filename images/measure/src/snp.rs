//! SEV-SNP launch digest (and the SEV / SEV-ES launch digests).
//!
//! Owns the guest-context digest chain and the order in which a launch
//! measures pages. Firmware parsing is [`crate::ovmf`]'s, the VMSA layout
//! [`crate::vmsa`]'s, the hashes table [`crate::sev_hashes`]'s.
//!
//! # SEV-SNP
//!
//! Every `SNP_LAUNCH_UPDATE` folds one page into the launch digest held in
//! the guest context (AMD SEV-SNP ABI specification #56860, §8.17
//! "SNP_LAUNCH_UPDATE", §8.17.2 Table "PAGE_INFO"):
//! `LD' = SHA-384(PAGE_INFO)` where the 0x70-byte `PAGE_INFO` is
//!
//! | offset | field |
//! |---|---|
//! | 0x00 | DIGEST_CUR: the current launch digest (48 bytes) |
//! | 0x30 | CONTENTS: SHA-384 of the page (normal and VMSA pages), zero otherwise |
//! | 0x60 | LENGTH: `u16` 0x70 |
//! | 0x62 | PAGE_TYPE: `u8` ([`PageType`]) |
//! | 0x63 | IMI_PAGE: bit 0 (0 here) |
//! | 0x64 | VMPL3_PERMS, 0x65 VMPL2_PERMS, 0x66 VMPL1_PERMS (0 here), 0x67 reserved |
//! | 0x68 | GPA: `u64` |
//!
//! A QEMU launch with OVMF measures, in order: the OVMF image as normal
//! pages ending at 4 GiB (or start from a precomputed digest of exactly
//! that: [`FirmwareStart::Precomputed`]); each SEV metadata section in the
//! order OVMF lists it (`SNP_SEC_MEMORY` and `SVSM_CAA` as zero pages,
//! `SNP_SECRETS` and `CPUID` as their special page types, `SNP_KERNEL_HASHES`
//! as the hashes-table page when a kernel is given and as a zero page
//! otherwise); then one VMSA page per vCPU, at the GPA KVM uses for VMSAs
//! (`0xFFFF_FFFF_F000`). EC2 measures the CPUID page after all other
//! sections; GCE measures `SNP_SEC_MEMORY` as unmeasured pages.
//!
//! # SEV and SEV-ES
//!
//! `LAUNCH_MEASURE` of SEV and SEV-ES covers a SHA-256 over the launched
//! bytes: the OVMF image, the padded hashes table when a kernel is given,
//! and (SEV-ES) the VMSA pages with no SEV features.

use crate::ovmf::{OvmfError, OvmfLayout, SevSectionKind};
use crate::sev_hashes::KernelHashes;
use crate::vmsa::{vmsa_page, VmmType, BSP_RESET_EIP};
use crate::{sha384, Measurement, PAGE_SIZE};

/// Page types of `SNP_LAUNCH_UPDATE` (SNP ABI spec, §8.17 Table "Page Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Normal page with contents.
    Normal = 1,
    /// A VMSA page.
    Vmsa = 2,
    /// A zero page.
    Zero = 3,
    /// Unmeasured page.
    Unmeasured = 4,
    /// The secrets page.
    Secrets = 5,
    /// The CPUID page.
    Cpuid = 6,
}

/// Offsets in `PAGE_INFO` (SNP ABI spec §8.17.2).
mod page_info {
    pub const DIGEST_CUR: usize = 0x00;
    pub const CONTENTS: usize = 0x30;
    pub const LENGTH: usize = 0x60;
    pub const PAGE_TYPE: usize = 0x62;
    pub const GPA: usize = 0x68;
    pub const SIZE: usize = 0x70;
}
const _: () = assert!(page_info::GPA + 8 == page_info::SIZE);
const _: () = assert!(page_info::CONTENTS + 48 == page_info::LENGTH);

/// GPA recorded for VMSA pages (KVM's choice: the page-aligned all-ones
/// address with the bits above 51 clear).
pub const VMSA_GPA: u64 = 0x0000_FFFF_FFFF_F000;
/// The OVMF image ends at 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// Most vCPUs accepted (KVM's x86 limit).
pub const MAX_VCPUS: u32 = 4096;

/// The SNP guest context's launch digest, folded page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestContext {
    digest: [u8; 48],
}

impl Default for GuestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestContext {
    /// A fresh context (digest all zeros).
    pub fn new() -> GuestContext {
        GuestContext { digest: [0; 48] }
    }

    /// Continue from a digest computed earlier (e.g. after the OVMF pages).
    pub fn resume(digest: Measurement) -> GuestContext {
        GuestContext { digest: digest.0 }
    }

    /// The launch digest so far.
    pub fn digest(&self) -> Measurement {
        Measurement(self.digest)
    }

    /// The `PAGE_INFO` record for one page, given the current digest.
    pub fn page_info(
        &self,
        page_type: PageType,
        gpa: u64,
        contents: &[u8; 48],
    ) -> [u8; page_info::SIZE] {
        let mut pi = [0u8; page_info::SIZE];
        pi[page_info::DIGEST_CUR..page_info::DIGEST_CUR + 48].copy_from_slice(&self.digest);
        pi[page_info::CONTENTS..page_info::CONTENTS + 48].copy_from_slice(contents);
        pi[page_info::LENGTH..page_info::LENGTH + 2]
            .copy_from_slice(&(page_info::SIZE as u16).to_le_bytes());
        pi[page_info::PAGE_TYPE] = page_type as u8;
        pi[page_info::GPA..page_info::GPA + 8].copy_from_slice(&gpa.to_le_bytes());
        pi
    }

    /// Fold one page record into the digest.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        self.digest = sha384(&self.page_info(page_type, gpa, contents));
    }

    /// Measure `data` as consecutive normal pages starting at `gpa` (a short
    /// last page is hashed as it is; callers pass whole pages).
    pub fn update_normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE_SIZE).enumerate() {
            self.update(
                PageType::Normal,
                gpa + (i * PAGE_SIZE) as u64,
                &sha384(page),
            );
        }
    }

    /// Measure `size` bytes from `gpa` as pages without contents (zero,
    /// unmeasured, secrets, CPUID).
    pub fn update_empty_pages(&mut self, page_type: PageType, gpa: u64, size: u64) {
        let mut at = 0;
        while at < size {
            self.update(page_type, gpa + at, &[0; 48]);
            at += PAGE_SIZE as u64;
        }
    }
}

/// Where the launch digest starts.
#[derive(Debug, Clone, Copy)]
pub enum FirmwareStart<'a> {
    /// Measure this OVMF image as normal pages ending at 4 GiB.
    Image(&'a [u8]),
    /// Start from the digest of the OVMF pages computed earlier
    /// ([`ovmf_pages_digest`]); the image bytes are not needed.
    Precomputed(Measurement),
}

/// The launch parameters besides the firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpLaunch {
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// CPUID signature in RDX ([`crate::cpu::vcpu_signature`]).
    pub vcpu_signature: u32,
    /// Guest features (VMSA SEV_FEATURES); bit 0 (SNPActive) must be set.
    pub guest_features: u64,
    /// Hypervisor.
    pub vmm: VmmType,
    /// Direct kernel boot hashes, if a kernel is given.
    pub kernel: Option<KernelHashes>,
}

/// Why a launch digest cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnpError {
    /// The OVMF image or layout is unusable.
    #[error(transparent)]
    Ovmf(#[from] OvmfError),
    /// The image size is not a whole number of pages up to 4 GiB.
    #[error(
        "OVMF image is {len} bytes: it must be a non-empty multiple of 4096 bytes, at most 4 GiB"
    )]
    ImageSize {
        /// Image length.
        len: usize,
    },
    /// No SEV metadata: not an SNP-capable OVMF build.
    #[error("the OVMF image has no SEV metadata sections: it is not an SEV-SNP capable build")]
    NoSevMetadata,
    /// A kernel was given but OVMF has no place for its hashes.
    #[error("kernel specified but the OVMF metadata has no SNP_KERNEL_HASHES section: this OVMF build cannot measure a direct kernel boot (use OvmfPkg/AmdSev)")]
    KernelWithoutHashesSection,
    /// A kernel was given but OVMF does not say where the hashes table goes.
    #[error("kernel specified but the OVMF image has no SEV hash table address (footer entry 7255371f-3a3b-4b04-927b-1da6efa8d454 absent or zero): it does not support kernel/initrd/cmdline measurement")]
    NoHashesTable,
    /// The hashes table GPA is not in the SNP_KERNEL_HASHES section.
    #[error("the SEV hash table GPA {gpa:#x} is not inside the SNP_KERNEL_HASHES section, where QEMU writes the table: the OVMF footer or metadata is inconsistent")]
    HashesTableOutsideSection {
        /// Table GPA.
        gpa: u64,
    },
    /// The hashes section is not exactly one page.
    #[error(
        "SNP_KERNEL_HASHES section is {size:#x} bytes; with a kernel it must be one 4 KiB page"
    )]
    HashesSectionSize {
        /// Section size.
        size: u64,
    },
    /// The hashes table does not fit in its page.
    #[error("SEV hash table at {gpa:#x} does not fit in its 4 KiB page")]
    HashesTableOffset {
        /// Table GPA.
        gpa: u64,
    },
    /// APs need a reset address.
    #[error("{vcpus} vCPUs need the SEV-ES AP reset address, but the OVMF image has no SEV-ES reset block (footer entry 00f771de-1a7e-4fcb-890e-68c77e2fb44e)")]
    NoApResetAddress {
        /// vCPUs requested.
        vcpus: u32,
    },
    /// vCPU count out of range.
    #[error("{vcpus} vCPUs: must be 1..={MAX_VCPUS}")]
    VcpuCount {
        /// vCPUs requested.
        vcpus: u32,
    },
    /// SEV_FEATURES without SNPActive.
    #[error("guest features {features:#x} lack bit 0 (SNPActive), which every SEV-SNP VMSA has")]
    GuestFeatures {
        /// The features given.
        features: u64,
    },
}

fn check_image(image: &[u8]) -> Result<u64, SnpError> {
    let len = image.len();
    if len == 0 || len % PAGE_SIZE != 0 || len as u64 > FOUR_GIB {
        return Err(SnpError::ImageSize { len });
    }
    Ok(FOUR_GIB - len as u64)
}

/// The launch digest after measuring only the OVMF pages: what
/// [`FirmwareStart::Precomputed`] takes (sev-snp-measure's `--snp-ovmf-hash`).
pub fn ovmf_pages_digest(image: &[u8]) -> Result<Measurement, SnpError> {
    let gpa = check_image(image)?;
    let mut gctx = GuestContext::new();
    gctx.update_normal_pages(gpa, image);
    Ok(gctx.digest())
}

fn check_vcpus(vcpus: u32, layout: &OvmfLayout) -> Result<(), SnpError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(SnpError::VcpuCount { vcpus });
    }
    if vcpus > 1 && layout.sev_es_reset_eip.is_none() {
        return Err(SnpError::NoApResetAddress { vcpus });
    }
    Ok(())
}

/// SHA-384 digests of the BSP and AP VMSA pages.
fn vmsa_digests(
    layout: &OvmfLayout,
    features: u64,
    sig: u32,
    vmm: VmmType,
) -> ([u8; 48], [u8; 48]) {
    let bsp = sha384(&vmsa_page(BSP_RESET_EIP, features, sig, vmm)[..]);
    let ap = layout
        .sev_es_reset_eip
        .map(|eip| sha384(&vmsa_page(eip, features, sig, vmm)[..]))
        .unwrap_or(bsp);
    (bsp, ap)
}

/// The SEV-SNP launch digest.
pub fn launch_digest(
    start: FirmwareStart<'_>,
    layout: &OvmfLayout,
    launch: &SnpLaunch,
) -> Result<Measurement, SnpError> {
    check_vcpus(launch.vcpus, layout)?;
    if launch.guest_features & 1 == 0 {
        return Err(SnpError::GuestFeatures {
            features: launch.guest_features,
        });
    }
    if layout.sections.is_empty() {
        return Err(SnpError::NoSevMetadata);
    }
    let hashes_page = match &launch.kernel {
        None => None,
        Some(k) => {
            if !layout.has(SevSectionKind::SnpKernelHashes) {
                return Err(SnpError::KernelWithoutHashesSection);
            }
            let gpa = layout.sev_hashes_table_gpa.ok_or(SnpError::NoHashesTable)?;
            // QEMU writes the table into the SNP_KERNEL_HASHES page and OVMF
            // reads it at this GPA: they must be the same page.
            if !layout.sections.iter().any(|s| {
                s.kind == SevSectionKind::SnpKernelHashes && (s.gpa..s.gpa + s.size).contains(&gpa)
            }) {
                return Err(SnpError::HashesTableOutsideSection { gpa });
            }
            let offset = (gpa % PAGE_SIZE as u64) as usize;
            Some(k.page(offset).ok_or(SnpError::HashesTableOffset { gpa })?)
        }
    };

    let mut gctx = match start {
        FirmwareStart::Image(image) => {
            let gpa = check_image(image)?;
            let mut g = GuestContext::new();
            g.update_normal_pages(gpa, image);
            g
        }
        FirmwareStart::Precomputed(d) => GuestContext::resume(d),
    };

    for s in &layout.sections {
        match s.kind {
            SevSectionKind::SnpSecMemory if launch.vmm == VmmType::Gce => {
                gctx.update_empty_pages(PageType::Unmeasured, s.gpa, s.size)
            }
            SevSectionKind::SnpSecMemory | SevSectionKind::SvsmCaa => {
                gctx.update_empty_pages(PageType::Zero, s.gpa, s.size)
            }
            SevSectionKind::SnpSecrets => gctx.update(PageType::Secrets, s.gpa, &[0; 48]),
            SevSectionKind::Cpuid if launch.vmm == VmmType::Ec2 => {} // measured last, below
            SevSectionKind::Cpuid => gctx.update(PageType::Cpuid, s.gpa, &[0; 48]),
            SevSectionKind::SnpKernelHashes => match &hashes_page {
                Some(page) => {
                    if s.size != PAGE_SIZE as u64 {
                        return Err(SnpError::HashesSectionSize { size: s.size });
                    }
                    gctx.update_normal_pages(s.gpa, &page[..]);
                }
                None => gctx.update_empty_pages(PageType::Zero, s.gpa, s.size),
            },
        }
    }
    if launch.vmm == VmmType::Ec2 {
        for s in layout
            .sections
            .iter()
            .filter(|s| s.kind == SevSectionKind::Cpuid)
        {
            gctx.update(PageType::Cpuid, s.gpa, &[0; 48]);
        }
    }

    let (bsp, ap) = vmsa_digests(
        layout,
        launch.guest_features,
        launch.vcpu_signature,
        launch.vmm,
    );
    for i in 0..launch.vcpus {
        gctx.update(PageType::Vmsa, VMSA_GPA, if i == 0 { &bsp } else { &ap });
    }
    Ok(gctx.digest())
}

/// Which pre-SNP launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevMode {
    /// SEV: memory only.
    Sev,
    /// SEV-ES: memory and VMSAs.
    SevEs,
}

/// The SEV-ES launch parameters (ignored for plain SEV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevEsVcpus {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID signature in RDX.
    pub vcpu_signature: u32,
    /// Hypervisor.
    pub vmm: VmmType,
}

/// The SEV or SEV-ES launch digest (SHA-256).
pub fn sev_launch_digest(
    mode: SevMode,
    image: &[u8],
    layout: &OvmfLayout,
    kernel: Option<&KernelHashes>,
    vcpus: SevEsVcpus,
) -> Result<[u8; 32], SnpError> {
    use sha2::Digest as _;
    check_image(image)?;
    let mut h = sha2::Sha256::new();
    h.update(image);
    if let Some(k) = kernel {
        if layout.sev_hashes_table_gpa.is_none() {
            return Err(SnpError::NoHashesTable);
        }
        h.update(k.table());
    }
    if mode == SevMode::SevEs {
        check_vcpus(vcpus.vcpus, layout)?;
        let bsp = vmsa_page(BSP_RESET_EIP, 0, vcpus.vcpu_signature, vcpus.vmm);
        let ap = layout
            .sev_es_reset_eip
            .map(|eip| vmsa_page(eip, 0, vcpus.vcpu_signature, vcpus.vmm));
        for i in 0..vcpus.vcpus {
            match (&ap, i) {
                (Some(ap), 1..) => h.update(&ap[..]),
                _ => h.update(&bsp[..]),
            }
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_info_layout() {
        let g = GuestContext::resume(Measurement([0xaa; 48]));
        let pi = g.page_info(PageType::Cpuid, 0x80e000, &[0xbb; 48]);
        assert_eq!(&pi[..48], &[0xaa; 48]);
        assert_eq!(&pi[48..96], &[0xbb; 48]);
        assert_eq!(&pi[96..98], &[0x70, 0]);
        assert_eq!(pi[98], 6);
        assert_eq!(&pi[99..104], &[0; 5]);
        assert_eq!(&pi[104..], &0x80e000u64.to_le_bytes());
    }

    #[test]
    fn refuses_bad_launch_parameters() {
        let layout = OvmfLayout {
            sections: vec![crate::ovmf::SevSection {
                gpa: 0x800000,
                size: 0x1000,
                kind: SevSectionKind::SnpSecMemory,
            }],
            sev_es_reset_eip: None,
            sev_hashes_table_gpa: None,
        };
        let mut l = SnpLaunch {
            vcpus: 2,
            vcpu_signature: 0x800f12,
            guest_features: 1,
            vmm: VmmType::Qemu,
            kernel: None,
        };
        let start = FirmwareStart::Precomputed(Measurement::ZERO);
        assert_eq!(
            launch_digest(start, &layout, &l),
            Err(SnpError::NoApResetAddress { vcpus: 2 })
        );
        l.vcpus = 0;
        assert_eq!(
            launch_digest(start, &layout, &l),
            Err(SnpError::VcpuCount { vcpus: 0 })
        );
        l.vcpus = 1;
        l.guest_features = 0x20;
        assert!(matches!(
            launch_digest(start, &layout, &l),
            Err(SnpError::GuestFeatures { .. })
        ));
        l.guest_features = 1;
        assert!(launch_digest(start, &layout, &l).is_ok());
        assert_eq!(
            launch_digest(FirmwareStart::Image(&[0; 100]), &layout, &l),
            Err(SnpError::ImageSize { len: 100 })
        );
        l.kernel = Some(KernelHashes::from_contents(b"k", None, None));
        assert_eq!(
            launch_digest(start, &layout, &l),
            Err(SnpError::KernelWithoutHashesSection)
        );
    }
}
