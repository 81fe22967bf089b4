//! TDVF metadata and the TDX MRTD of a TD launched with it.
//!
//! Owns reading the TDVF metadata from an image and the MRTD arithmetic.
//! **Unverified**: there is no public vector pairing a TDVF image with the
//! MRTD of a real launch in this project's vector set, so [`mrtd`] follows
//! the specifications below and is labelled unverified wherever it is shown.
//!
//! Metadata (Intel TDX Virtual Firmware Design Guide, "TDVF Metadata"): the
//! footer table ([`crate::firmware`]) entry `e47a6535-984a-4798-865e-4685a7bf8ec2`
//! holds a `u32` offset, counted back from the end of the image, of the
//! descriptor `"TDVF"`, `u32` length, `u32` version (1), `u32` number of
//! sections; then 32-byte sections: `u32` DataOffset, `u32` RawDataSize,
//! `u64` MemoryAddress, `u64` MemoryDataSize, `u32` Type, `u32` Attributes
//! (bit 0 MR.EXTEND, bit 1 PAGE.AUG).
//!
//! MRTD (Intel TDX Module ABI/base specification, `TDH.MEM.PAGE.ADD` and
//! `TDH.MR.EXTEND`): MRTD is one SHA-384 over a sequence of 128-byte records,
//! finalized by `TDH.MR.FINALIZE`. Adding a page appends
//! `"MEM.PAGE.ADD"` zero-padded to 16 bytes ‖ `u64` GPA ‖ zeros (128 bytes);
//! extending 256 bytes appends `"MR.EXTEND"` zero-padded to 16 bytes ‖ `u64`
//! GPA ‖ zeros (128 bytes), then the 256 bytes of memory (two more
//! 128-byte blocks). The VMM adds every page of every section not marked
//! PAGE.AUG, section by section, and extends each page of the sections
//! marked MR.EXTEND in 256-byte chunks. Current KVM (`KVM_TDX_INIT_MEM_REGION`)
//! extends each page right after adding it ([`PageAddOrder::SinglePass`]);
//! earlier QEMU/KVM TDX trees added a section's pages first and extended them
//! afterwards ([`PageAddOrder::TwoPass`]). Memory beyond a section's raw data
//! is zero.

use sha2::Digest as _;

use crate::firmware::{FirmwareError, FooterTable, Guid};
use crate::{Measurement, PAGE_SIZE};

/// Footer entry holding the offset of the TDVF metadata.
pub const TDX_METADATA_GUID: Guid = Guid::new(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// Section attribute: the VMM measures the section with `TDH.MR.EXTEND`.
pub const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute: the guest accepts the pages itself (no `PAGE.ADD`).
pub const ATTR_PAGE_AUG: u32 = 1 << 1;
/// Most sections accepted.
pub const MAX_SECTIONS: u32 = 64;
/// Most memory, over all sections, that may be measured (4 GiB).
pub const MAX_MEASURED_BYTES: u64 = 1 << 32;
const MR_EXTEND_CHUNK: usize = 256;

/// Type of a TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TdvfSectionType {
    /// Boot firmware volume (code).
    Bfv,
    /// Configuration firmware volume (UEFI variables).
    Cfv,
    /// The TD HOB the VMM fills.
    TdHob,
    /// Temporary memory.
    TempMem,
    /// Permanent memory.
    PermMem,
    /// A payload image.
    Payload,
    /// Payload parameters.
    PayloadParam,
}

impl TdvfSectionType {
    /// From the metadata's type number.
    pub fn from_code(code: u32) -> Option<TdvfSectionType> {
        Some(match code {
            0 => TdvfSectionType::Bfv,
            1 => TdvfSectionType::Cfv,
            2 => TdvfSectionType::TdHob,
            3 => TdvfSectionType::TempMem,
            4 => TdvfSectionType::PermMem,
            5 => TdvfSectionType::Payload,
            6 => TdvfSectionType::PayloadParam,
            _ => return None,
        })
    }

    /// The design guide's name.
    pub fn name(self) -> &'static str {
        match self {
            TdvfSectionType::Bfv => "BFV",
            TdvfSectionType::Cfv => "CFV",
            TdvfSectionType::TdHob => "TD_HOB",
            TdvfSectionType::TempMem => "TempMem",
            TdvfSectionType::PermMem => "PermMem",
            TdvfSectionType::Payload => "Payload",
            TdvfSectionType::PayloadParam => "PayloadParam",
        }
    }
}

/// One TDVF metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the raw data in the image.
    pub data_offset: u32,
    /// Bytes of raw data in the image.
    pub raw_data_size: u32,
    /// Guest-physical start (page aligned).
    pub memory_address: u64,
    /// Bytes of guest memory (a multiple of 4 KiB, at least the raw size).
    pub memory_data_size: u64,
    /// Section type.
    pub kind: TdvfSectionType,
    /// Attribute bits ([`ATTR_MR_EXTEND`], [`ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether the VMM extends MRTD with the section's contents.
    pub fn extended(&self) -> bool {
        self.attributes & ATTR_MR_EXTEND != 0
    }
    /// Whether the VMM adds the section's pages (those not PAGE.AUG).
    pub fn added(&self) -> bool {
        self.attributes & ATTR_PAGE_AUG == 0
    }
}

/// Why TDVF metadata or the MRTD cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TdvfError {
    /// The footer table is unreadable.
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// No TDX metadata entry.
    #[error("the firmware has no TDX metadata (footer entry {TDX_METADATA_GUID}): it is not a TDVF (OVMF IntelTdx/OvmfPkgX64 with TDX) build")]
    NoMetadata,
    /// The descriptor lies outside the image or is cut short.
    #[error("TDVF metadata at offset {offset_from_end:#x} from the end does not fit in the {image_len}-byte image")]
    OutOfRange {
        /// Offset counted back from the end.
        offset_from_end: u32,
        /// Image length.
        image_len: usize,
    },
    /// Wrong signature.
    #[error("TDVF metadata signature is {found:?}, expected \"TDVF\"")]
    BadSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// Unknown version.
    #[error("TDVF metadata version {0} is not supported (only 1)")]
    BadVersion(u32),
    /// Length field disagrees with the section count.
    #[error("TDVF metadata length {declared} is too small for {count} sections")]
    BadLength {
        /// Declared length.
        declared: u32,
        /// Section count.
        count: u32,
    },
    /// Too many sections.
    #[error("TDVF metadata lists {0} sections, more than {MAX_SECTIONS}")]
    TooManySections(u32),
    /// A section that breaks the design guide's rules.
    #[error("TDVF section {index}: {reason}")]
    BadSection {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// More memory than this tool measures.
    #[error("TDVF sections add more than {MAX_MEASURED_BYTES} bytes of memory")]
    TooMuchMemory,
}

/// The sections of a TDVF image, in metadata order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdvfMetadata {
    /// Sections in the order the VMM processes them.
    pub sections: Vec<TdvfSection>,
}

impl TdvfMetadata {
    /// Read and validate the metadata of `image`. Raw data ranges are checked
    /// against the image length, so pass the whole image.
    pub fn from_image(image: &[u8]) -> Result<TdvfMetadata, TdvfError> {
        let table = FooterTable::parse(image)?;
        let offset_from_end = table
            .u32_of(&TDX_METADATA_GUID, "TDX metadata offset")?
            .ok_or(TdvfError::NoMetadata)?;
        let out_of_range = TdvfError::OutOfRange {
            offset_from_end,
            image_len: image.len(),
        };
        let start = usize::try_from(offset_from_end)
            .ok()
            .and_then(|o| image.len().checked_sub(o))
            .ok_or_else(|| out_of_range.clone())?;
        let d = &image[start..];
        let sig: [u8; 4] = d
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| out_of_range.clone())?;
        if &sig != b"TDVF" {
            return Err(TdvfError::BadSignature { found: sig });
        }
        let field = |at| crate::le::u32_at(d, at).ok_or_else(|| out_of_range.clone());
        let (declared, version, count) = (field(4)?, field(8)?, field(12)?);
        if version != 1 {
            return Err(TdvfError::BadVersion(version));
        }
        if count > MAX_SECTIONS {
            return Err(TdvfError::TooManySections(count));
        }
        if u64::from(declared) < 16 + 32 * u64::from(count) {
            return Err(TdvfError::BadLength { declared, count });
        }
        let mut sections = Vec::with_capacity(count as usize);
        let mut measured: u64 = 0;
        for index in 0..count as usize {
            let at = 16 + 32 * index;
            let s32 = |k| crate::le::u32_at(d, at + k).ok_or_else(|| out_of_range.clone());
            let s64 = |k| crate::le::u64_at(d, at + k).ok_or_else(|| out_of_range.clone());
            let (data_offset, raw_data_size) = (s32(0)?, s32(4)?);
            let (memory_address, memory_data_size) = (s64(8)?, s64(16)?);
            let (code, attributes) = (s32(24)?, s32(28)?);
            let bad = |reason: String| TdvfError::BadSection { index, reason };
            let kind = TdvfSectionType::from_code(code)
                .ok_or_else(|| bad(format!("unknown section type {code}")))?;
            if attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
                return Err(bad(format!("unknown attribute bits {attributes:#x}")));
            }
            let page = PAGE_SIZE as u64;
            if memory_address % page != 0 || memory_data_size % page != 0 {
                return Err(bad(format!(
                    "{} memory {memory_address:#x}+{memory_data_size:#x} is not 4 KiB aligned",
                    kind.name()
                )));
            }
            if memory_address
                .checked_add(memory_data_size)
                .is_none_or(|e| e > 1 << 52)
            {
                return Err(bad(format!("{} memory range overflows", kind.name())));
            }
            if u64::from(raw_data_size) > memory_data_size {
                return Err(bad(format!(
                    "{} raw data ({raw_data_size:#x} bytes) is larger than its memory ({memory_data_size:#x})",
                    kind.name()
                )));
            }
            let raw_end = u64::from(data_offset) + u64::from(raw_data_size);
            if raw_end > image.len() as u64 {
                return Err(bad(format!(
                    "{} raw data {data_offset:#x}+{raw_data_size:#x} lies outside the {}-byte image (pass the whole firmware image, not a part of it)",
                    kind.name(),
                    image.len()
                )));
            }
            let s = TdvfSection {
                data_offset,
                raw_data_size,
                memory_address,
                memory_data_size,
                kind,
                attributes,
            };
            if s.added() {
                measured = measured.saturating_add(memory_data_size);
                if measured > MAX_MEASURED_BYTES {
                    return Err(TdvfError::TooMuchMemory);
                }
            }
            sections.push(s);
        }
        Ok(TdvfMetadata { sections })
    }
}

/// Order of `PAGE.ADD` and `MR.EXTEND` within a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAddOrder {
    /// Add a page, extend it, then the next page (current KVM).
    SinglePass,
    /// Add all of a section's pages, then extend them (older TDX trees).
    TwoPass,
}

fn page_add_record(gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..12].copy_from_slice(b"MEM.PAGE.ADD");
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

fn mr_extend_record(gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..9].copy_from_slice(b"MR.EXTEND");
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// The memory contents of a section's page `page` (raw data, then zeros).
fn section_page(image: &[u8], s: &TdvfSection, page: u64) -> [u8; PAGE_SIZE] {
    let mut out = [0u8; PAGE_SIZE];
    let raw_start = u64::from(s.data_offset);
    let raw_end = raw_start + u64::from(s.raw_data_size);
    let from = raw_start + page * PAGE_SIZE as u64;
    if from < raw_end {
        let to = raw_end.min(from + PAGE_SIZE as u64);
        // In range: raw data was checked against the image length.
        if let Some(src) = image.get(from as usize..to as usize) {
            out[..src.len()].copy_from_slice(src);
        }
    }
    out
}

/// MRTD of a TD launched with this TDVF image. **Unverified** (see the
/// module documentation).
pub fn mrtd(image: &[u8], meta: &TdvfMetadata, order: PageAddOrder) -> Measurement {
    let mut h = sha2::Sha384::new();
    let extend_page = |h: &mut sha2::Sha384, s: &TdvfSection, page: u64| {
        let gpa = s.memory_address + page * PAGE_SIZE as u64;
        let data = section_page(image, s, page);
        for (i, chunk) in data.chunks(MR_EXTEND_CHUNK).enumerate() {
            h.update(mr_extend_record(gpa + (i * MR_EXTEND_CHUNK) as u64));
            h.update(chunk);
        }
    };
    for s in &meta.sections {
        let pages = s.memory_data_size / PAGE_SIZE as u64;
        match order {
            PageAddOrder::SinglePass => {
                for p in 0..pages {
                    if s.added() {
                        h.update(page_add_record(s.memory_address + p * PAGE_SIZE as u64));
                    }
                    if s.extended() {
                        extend_page(&mut h, s, p);
                    }
                }
            }
            PageAddOrder::TwoPass => {
                if s.added() {
                    for p in 0..pages {
                        h.update(page_add_record(s.memory_address + p * PAGE_SIZE as u64));
                    }
                }
                if s.extended() {
                    for p in 0..pages {
                        extend_page(&mut h, s, p);
                    }
                }
            }
        }
    }
    Measurement(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::image_with;

    /// A 3-page image: BFV (one page, extended) at offset 0, a TD_HOB and a
    /// PAGE.AUG section; metadata in the second page.
    fn synthetic() -> Vec<u8> {
        let mut img = vec![0u8; 2 * PAGE_SIZE];
        for (i, b) in img[..PAGE_SIZE].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut md = b"TDVF".to_vec();
        md.extend_from_slice(&(16u32 + 3 * 32).to_le_bytes());
        md.extend_from_slice(&1u32.to_le_bytes());
        md.extend_from_slice(&3u32.to_le_bytes());
        for (off, raw, addr, size, ty, attr) in [
            (0u32, 0x1000u32, 0xffff_f000u64, 0x1000u64, 0u32, 1u32),
            (0, 0, 0x80_9000, 0x2000, 2, 0),
            (0, 0, 0x100_0000, 0x1000, 4, 2),
        ] {
            md.extend_from_slice(&off.to_le_bytes());
            md.extend_from_slice(&raw.to_le_bytes());
            md.extend_from_slice(&addr.to_le_bytes());
            md.extend_from_slice(&size.to_le_bytes());
            md.extend_from_slice(&ty.to_le_bytes());
            md.extend_from_slice(&attr.to_le_bytes());
        }
        let md_at = PAGE_SIZE + 64;
        img[md_at..md_at + md.len()].copy_from_slice(&md);
        let tail = image_with(&[(&[0u8; 4], TDX_METADATA_GUID)], 0);
        let total = img.len() + tail.len();
        let tail = image_with(
            &[(&((total - md_at) as u32).to_le_bytes(), TDX_METADATA_GUID)],
            0,
        );
        img.extend_from_slice(&tail);
        img
    }

    #[test]
    fn metadata_and_mrtd_of_a_synthetic_image() {
        let img = synthetic();
        let meta = TdvfMetadata::from_image(&img).unwrap();
        assert_eq!(meta.sections.len(), 3);
        assert_eq!(meta.sections[1].kind, TdvfSectionType::TdHob);
        // The MRTD written out by hand from the record definitions.
        let mut h = sha2::Sha384::new();
        let rec = |tag: &[u8], gpa: u64| {
            let mut r = [0u8; 128];
            r[..tag.len()].copy_from_slice(tag);
            r[16..24].copy_from_slice(&gpa.to_le_bytes());
            r
        };
        h.update(rec(b"MEM.PAGE.ADD", 0xffff_f000));
        for i in 0..16u64 {
            h.update(rec(b"MR.EXTEND", 0xffff_f000 + i * 256));
            h.update(&img[(i * 256) as usize..(i * 256 + 256) as usize]);
        }
        h.update(rec(b"MEM.PAGE.ADD", 0x80_9000));
        h.update(rec(b"MEM.PAGE.ADD", 0x80_a000));
        let want = Measurement(h.finalize().into());
        assert_eq!(mrtd(&img, &meta, PageAddOrder::SinglePass), want);
        // One page per extended section: both orders agree here.
        assert_eq!(mrtd(&img, &meta, PageAddOrder::TwoPass), want);
    }

    #[test]
    fn broken_metadata_is_refused() {
        let img = synthetic();
        let md_at = PAGE_SIZE + 64;
        let mut bad = img.clone();
        bad[md_at] = b'X';
        assert!(matches!(
            TdvfMetadata::from_image(&bad),
            Err(TdvfError::BadSignature { .. })
        ));
        let mut bad = img.clone();
        bad[md_at + 16 + 24] = 9; // first section type
        assert!(matches!(
            TdvfMetadata::from_image(&bad),
            Err(TdvfError::BadSection { index: 0, .. })
        ));
        let mut bad = img.clone();
        bad[md_at + 16 + 4..md_at + 16 + 8].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(matches!(
            TdvfMetadata::from_image(&bad),
            Err(TdvfError::BadSection { index: 0, .. })
        ));
    }
}
