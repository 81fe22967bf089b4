//! What an OVMF image tells the SEV launch: its SEV metadata sections, the
//! SEV-ES AP reset address and where the SEV hashes table lives.
//!
//! Owns reading these from an image (through [`crate::firmware`]'s footer
//! table) or from a JSON layout file, and validating them; the measurement
//! arithmetic is [`crate::snp`]'s.
//!
//! Sources (edk2, `OvmfPkg/ResetVector`):
//! * `OvmfSevMetadata.asm`: the footer entry `dc886566-984a-4798-a75e-5585a7bf67cc`
//!   holds a `u32` offset, counted back from the end of the image, of the
//!   metadata header: `"ASEV"`, `u32` length (header and descriptors),
//!   `u32` version (1), `u32` number of descriptors; then per descriptor
//!   `u32` GPA, `u32` size, `u32` type (1 `SNP_SEC_MEMORY`, 2 `SNP_SECRETS`,
//!   3 `CPUID`, 4 `SVSM_CAA`, 0x10 `SNP_KERNEL_HASHES`).
//! * `Ia16/ResetVectorVtf0.asm`: the SEV-ES reset block
//!   `00f771de-1a7e-4fcb-890e-68c77e2fb44e` (`u32` AP reset address) and the
//!   SEV hash table entry `7255371f-3a3b-4b04-927b-1da6efa8d454` (`u32` GPA,
//!   `u32` size) that QEMU fills for direct kernel boot.

use serde::{Deserialize, Serialize};

use crate::firmware::{FirmwareError, FooterTable, Guid};
use crate::{Measurement, PAGE_SIZE};

/// Footer entry holding the offset of the SEV metadata.
pub const SEV_METADATA_GUID: Guid = Guid::new(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// Footer entry holding the SEV-ES AP reset address.
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::new(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// Footer entry holding the GPA and size of the SEV hashes table.
pub const SEV_HASH_TABLE_RV_GUID: Guid = Guid::new(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);

/// Most metadata sections accepted (OVMF builds have fewer than ten).
pub const MAX_SECTIONS: usize = 256;
/// Sections must lie below 4 GiB (the OVMF format stores `u32` addresses).
const FOUR_GIB: u64 = 1 << 32;

/// Kind of an OVMF SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SevSectionKind {
    /// Pre-validated memory the SEC phase uses (measured as zero pages).
    SnpSecMemory,
    /// The SNP secrets page.
    SnpSecrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling-area page (measured as a zero page).
    SvsmCaa,
    /// The page QEMU fills with the SEV hashes table for direct kernel boot.
    SnpKernelHashes,
}

impl SevSectionKind {
    /// The type number in the metadata.
    pub fn code(self) -> u32 {
        match self {
            SevSectionKind::SnpSecMemory => 1,
            SevSectionKind::SnpSecrets => 2,
            SevSectionKind::Cpuid => 3,
            SevSectionKind::SvsmCaa => 4,
            SevSectionKind::SnpKernelHashes => 0x10,
        }
    }

    /// The kind for a type number.
    pub fn from_code(code: u32) -> Option<SevSectionKind> {
        [
            SevSectionKind::SnpSecMemory,
            SevSectionKind::SnpSecrets,
            SevSectionKind::Cpuid,
            SevSectionKind::SvsmCaa,
            SevSectionKind::SnpKernelHashes,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }

    /// The edk2 name.
    pub fn name(self) -> &'static str {
        match self {
            SevSectionKind::SnpSecMemory => "SNP_SEC_MEMORY",
            SevSectionKind::SnpSecrets => "SNP_SECRETS",
            SevSectionKind::Cpuid => "CPUID",
            SevSectionKind::SvsmCaa => "SVSM_CAA",
            SevSectionKind::SnpKernelHashes => "SNP_KERNEL_HASHES",
        }
    }
}

/// One SEV metadata section: a page-aligned guest-physical range below 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Start GPA (page aligned).
    pub gpa: u64,
    /// Size in bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// What the range is.
    pub kind: SevSectionKind,
}

/// Everything the SEV launch needs from OVMF besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfLayout {
    /// SEV metadata sections, in the order the image lists them (the order
    /// they are measured in).
    pub sections: Vec<SevSection>,
    /// SEV-ES AP reset address (the reset EIP of every AP), if the image has
    /// a SEV-ES reset block.
    pub sev_es_reset_eip: Option<u32>,
    /// GPA of the SEV hashes table, if the image has one (a zero GPA counts
    /// as absent, as OVMF builds without direct-boot hashing write zero).
    pub sev_hashes_table_gpa: Option<u64>,
}

/// Why an OVMF image or layout file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OvmfError {
    /// The footer table is unreadable.
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// The metadata offset points outside the image.
    #[error("SEV metadata offset {offset_from_end:#x} (from the end) lies outside the {image_len}-byte image")]
    MetadataOutOfRange {
        /// Offset counted back from the end of the image.
        offset_from_end: u32,
        /// Image length.
        image_len: usize,
    },
    /// The metadata does not start with "ASEV".
    #[error("SEV metadata signature is {found:?}, expected \"ASEV\"")]
    BadSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A metadata version this tool does not know.
    #[error("SEV metadata version {0} is not supported (only 1)")]
    BadVersion(u32),
    /// Declared length and descriptor count disagree, or exceed the image.
    #[error("SEV metadata declares {declared} bytes for {count} descriptors (must be exactly {needed}; {available} bytes available)")]
    BadMetadataLength {
        /// Declared length.
        declared: u32,
        /// Declared descriptor count.
        count: u32,
        /// Bytes the descriptors need.
        needed: u64,
        /// Bytes left in the image from the header on.
        available: usize,
    },
    /// More sections than [`MAX_SECTIONS`].
    #[error("{0} SEV metadata sections: more than the {MAX_SECTIONS} accepted")]
    TooManySections(u64),
    /// A section type this tool does not know.
    #[error("SEV metadata section {index} has unknown type {code:#x} (known: 1 SNP_SEC_MEMORY, 2 SNP_SECRETS, 3 CPUID, 4 SVSM_CAA, 0x10 SNP_KERNEL_HASHES)")]
    UnknownSectionType {
        /// Position in the list.
        index: usize,
        /// The type number.
        code: u32,
    },
    /// A section that is empty, not page aligned, or not below 4 GiB.
    #[error("SEV metadata section {index} ({kind}) at {gpa:#x} size {size:#x} must be a non-empty, 4 KiB aligned range below 4 GiB")]
    BadSection {
        /// Position in the list.
        index: usize,
        /// Its kind name.
        kind: &'static str,
        /// Start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// A secrets or CPUID section that is not exactly one page.
    #[error("SEV metadata section {index} ({kind}) is {size:#x} bytes; it must be one 4 KiB page")]
    SinglePageSection {
        /// Position in the list.
        index: usize,
        /// Its kind name.
        kind: &'static str,
        /// Size.
        size: u64,
    },
    /// A footer entry with too little data.
    #[error("footer entry {what} is {got} bytes, needs {need}")]
    ShortEntry {
        /// Which entry.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// A layout file that is not the expected JSON.
    #[error("OVMF layout JSON: {0}")]
    Json(String),
}

impl OvmfLayout {
    /// Read the layout from an OVMF image (the whole image, or at least its
    /// last pages where the footer table and metadata live). An image without
    /// SEV metadata gives no sections (enough for SEV and SEV-ES, refused by
    /// the SEV-SNP calculation).
    pub fn from_image(image: &[u8]) -> Result<OvmfLayout, OvmfError> {
        let table = FooterTable::parse(image)?;
        let sev_es_reset_eip = table.u32_of(&SEV_ES_RESET_BLOCK_GUID, "SEV-ES reset block")?;
        let sev_hashes_table_gpa = table
            .u32_of(&SEV_HASH_TABLE_RV_GUID, "SEV hash table")?
            .filter(|gpa| *gpa != 0)
            .map(u64::from);
        let Some(meta) = table.get(&SEV_METADATA_GUID) else {
            return Ok(OvmfLayout {
                sections: Vec::new(),
                sev_es_reset_eip,
                sev_hashes_table_gpa,
            });
        };
        let offset_from_end = crate::le::u32_at(meta, 0).ok_or(OvmfError::ShortEntry {
            what: "SEV metadata offset",
            need: 4,
            got: meta.len(),
        })?;
        let start = usize::try_from(offset_from_end)
            .ok()
            .and_then(|o| image.len().checked_sub(o))
            .ok_or(OvmfError::MetadataOutOfRange {
                offset_from_end,
                image_len: image.len(),
            })?;
        let hdr = &image[start..];
        let too_short = || OvmfError::MetadataOutOfRange {
            offset_from_end,
            image_len: image.len(),
        };
        let sig: [u8; 4] = hdr
            .get(0..4)
            .ok_or_else(too_short)?
            .try_into()
            .map_err(|_| too_short())?;
        if &sig != b"ASEV" {
            return Err(OvmfError::BadSignature { found: sig });
        }
        let declared = crate::le::u32_at(hdr, 4).ok_or_else(too_short)?;
        let version = crate::le::u32_at(hdr, 8).ok_or_else(too_short)?;
        let count = crate::le::u32_at(hdr, 12).ok_or_else(too_short)?;
        if version != 1 {
            return Err(OvmfError::BadVersion(version));
        }
        if u64::from(count) > MAX_SECTIONS as u64 {
            return Err(OvmfError::TooManySections(u64::from(count)));
        }
        let needed = 16 + 12 * u64::from(count);
        // edk2 writes the exact length; anything else is a damaged header.
        if u64::from(declared) != needed || needed > hdr.len() as u64 {
            return Err(OvmfError::BadMetadataLength {
                declared,
                count,
                needed,
                available: hdr.len(),
            });
        }
        let mut raw = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = 16 + 12 * i;
            // In range: checked against `needed` above.
            let field = |k: usize| crate::le::u32_at(hdr, at + 4 * k).unwrap_or_default();
            raw.push((u64::from(field(0)), u64::from(field(1)), field(2)));
        }
        Ok(OvmfLayout {
            sections: validate_sections(&raw)?,
            sev_es_reset_eip,
            sev_hashes_table_gpa,
        })
    }

    /// Read a layout from JSON: an object with `ovmf_sections` (a list of
    /// `{gpa, size, section_type}`), and optionally `sev_es_reset_eip` and
    /// `sev_hashes_table_gpa` (0 or absent = none). Other keys are ignored,
    /// so dstack's SEV measurement documents can be read as they are.
    pub fn from_json(text: &str) -> Result<OvmfLayout, OvmfError> {
        let doc: LayoutDoc =
            serde_json::from_str(text).map_err(|e| OvmfError::Json(e.to_string()))?;
        if doc.ovmf_sections.len() > MAX_SECTIONS {
            return Err(OvmfError::TooManySections(doc.ovmf_sections.len() as u64));
        }
        let raw: Vec<_> = doc
            .ovmf_sections
            .iter()
            .map(|s| (s.gpa, s.size, s.section_type))
            .collect();
        let sev_es_reset_eip = match doc.sev_es_reset_eip {
            None | Some(0) => None,
            Some(e) => Some(u32::try_from(e).map_err(|_| {
                OvmfError::Json(format!("sev_es_reset_eip {e:#x} does not fit 32 bits"))
            })?),
        };
        Ok(OvmfLayout {
            sections: validate_sections(&raw)?,
            sev_es_reset_eip,
            sev_hashes_table_gpa: doc.sev_hashes_table_gpa.filter(|g| *g != 0),
        })
    }

    /// The layout as JSON (the form [`OvmfLayout::from_json`] reads), with
    /// the OVMF pages' digest when given.
    pub fn to_json(&self, ovmf_hash: Option<&Measurement>) -> String {
        let doc = LayoutOut {
            ovmf_hash: ovmf_hash.map(|h| h.to_string()),
            sev_hashes_table_gpa: self.sev_hashes_table_gpa.unwrap_or(0),
            sev_es_reset_eip: self.sev_es_reset_eip.unwrap_or(0),
            ovmf_sections: self
                .sections
                .iter()
                .map(|s| SectionDoc {
                    gpa: s.gpa,
                    size: s.size,
                    section_type: s.kind.code(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Whether a section of this kind is listed.
    pub fn has(&self, kind: SevSectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }
}

fn validate_sections(raw: &[(u64, u64, u32)]) -> Result<Vec<SevSection>, OvmfError> {
    let page = PAGE_SIZE as u64;
    raw.iter()
        .enumerate()
        .map(|(index, &(gpa, size, code))| {
            let kind = SevSectionKind::from_code(code)
                .ok_or(OvmfError::UnknownSectionType { index, code })?;
            let fits = gpa.checked_add(size).is_some_and(|end| end <= FOUR_GIB);
            if size == 0 || gpa % page != 0 || size % page != 0 || !fits {
                return Err(OvmfError::BadSection {
                    index,
                    kind: kind.name(),
                    gpa,
                    size,
                });
            }
            // One SNP_LAUNCH_UPDATE page each: a larger size is not measured
            // as written, so it is refused rather than silently ignored.
            if matches!(kind, SevSectionKind::SnpSecrets | SevSectionKind::Cpuid) && size != page {
                return Err(OvmfError::SinglePageSection {
                    index,
                    kind: kind.name(),
                    size,
                });
            }
            Ok(SevSection { gpa, size, kind })
        })
        .collect()
}

#[derive(Deserialize)]
struct LayoutDoc {
    ovmf_sections: Vec<SectionDoc>,
    #[serde(default)]
    sev_es_reset_eip: Option<u64>,
    #[serde(default)]
    sev_hashes_table_gpa: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionDoc {
    gpa: u64,
    size: u64,
    section_type: u32,
}

#[derive(Serialize)]
struct LayoutOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    ovmf_hash: Option<String>,
    sev_hashes_table_gpa: u64,
    sev_es_reset_eip: u32,
    ovmf_sections: Vec<SectionDoc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::image_with;

    fn meta(count: u32, items: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut m = b"ASEV".to_vec();
        m.extend_from_slice(&(16 + 12 * items.len() as u32).to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&count.to_le_bytes());
        for (g, s, t) in items {
            for v in [g, s, t] {
                m.extend_from_slice(&v.to_le_bytes());
            }
        }
        m
    }

    fn image(items: &[(u32, u32, u32)], count: u32) -> Vec<u8> {
        // Metadata at the very start of the image; its offset from the end
        // is the image length, known once the table is built.
        let m = meta(count, items);
        let probe = image_with(
            &[
                (&0x80b004u32.to_le_bytes(), SEV_ES_RESET_BLOCK_GUID),
                (&0u32.to_le_bytes(), SEV_METADATA_GUID),
            ],
            0,
        );
        let total = (m.len() + probe.len()) as u32;
        let mut img = m;
        img.extend_from_slice(&image_with(
            &[
                (&0x80b004u32.to_le_bytes(), SEV_ES_RESET_BLOCK_GUID),
                (&total.to_le_bytes(), SEV_METADATA_GUID),
            ],
            0,
        ));
        img
    }

    #[test]
    fn reads_sections_from_a_synthetic_image() {
        let img = image(&[(0x800000, 0x9000, 1), (0x810000, 0x1000, 0x10)], 2);
        let l = OvmfLayout::from_image(&img).unwrap();
        assert_eq!(l.sev_es_reset_eip, Some(0x80b004));
        assert_eq!(l.sev_hashes_table_gpa, None);
        assert_eq!(l.sections.len(), 2);
        assert_eq!(l.sections[1].kind, SevSectionKind::SnpKernelHashes);
        let back = OvmfLayout::from_json(&l.to_json(None)).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn bad_metadata_is_refused() {
        assert!(matches!(
            OvmfLayout::from_image(&image(&[(0x800000, 0x9000, 7)], 1)),
            Err(OvmfError::UnknownSectionType { index: 0, code: 7 })
        ));
        assert!(matches!(
            OvmfLayout::from_image(&image(&[(0x800001, 0x9000, 1)], 1)),
            Err(OvmfError::BadSection { .. })
        ));
        assert!(matches!(
            OvmfLayout::from_image(&image(&[(0x800000, 0x9000, 1)], 9)),
            Err(OvmfError::BadMetadataLength { .. })
        ));
        let mut img = image(&[(0x800000, 0x9000, 1)], 1);
        img[0] = b'X';
        assert!(matches!(
            OvmfLayout::from_image(&img),
            Err(OvmfError::BadSignature { .. })
        ));
        let no_meta = image_with(&[(&[1, 2, 3, 4], SEV_ES_RESET_BLOCK_GUID)], 0);
        assert!(OvmfLayout::from_image(&no_meta)
            .unwrap()
            .sections
            .is_empty());
        assert!(OvmfLayout::from_json(
            "{\"ovmf_sections\": [{\"gpa\": 4096, \"size\": 1, \"section_type\": 1}]}"
        )
        .is_err());
        assert!(OvmfLayout::from_json(
            "{\"ovmf_sections\": [{\"gpa\": 4294963200, \"size\": 8192, \"section_type\": 1}]}"
        )
        .is_err());
        assert!(OvmfLayout::from_json("[]").is_err());
    }
}
