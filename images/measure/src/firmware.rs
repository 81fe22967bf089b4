//! The GUIDed footer table at the end of OVMF / TDVF images.
//!
//! Owns the table walk and the GUID type; knows nothing of what the entries
//! mean (that is [`crate::ovmf`] for SEV and [`crate::tdvf`] for TDX).
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`, the
//! "GUIDed structure" table): the image ends with 32 bytes of reset-vector
//! code. Just before them sits the footer entry: a little-endian `u16` total
//! table length followed by the table GUID `96b582de-1fb2-45f7-baea-a366c55a082d`.
//! The table occupies the `length` bytes that end at the footer GUID (the
//! footer entry included). Every entry is `data ‖ u16 length ‖ GUID`, where
//! `length` counts the data and the 18-byte trailer; entries are read from
//! the end toward the start.

use core::fmt;

/// A GUID as it is stored in edk2 images: `u32`, `u16`, `u16` little-endian,
/// then 8 bytes in order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Build from the textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{}-{}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            hex::encode(&b[8..10]),
            hex::encode(&b[10..16])
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// `96b582de-1fb2-45f7-baea-a366c55a082d`: the footer of the GUIDed table.
pub const TABLE_FOOTER_GUID: Guid = Guid::new(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);

/// Bytes of reset-vector code after the table footer.
const BYTES_AFTER_FOOTER: usize = 32;
/// `u16` length + GUID.
const ENTRY_TRAILER: usize = 18;

/// Why a firmware image's footer table cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// Too short to hold the footer.
    #[error("firmware image is {len} bytes: too short to hold the GUIDed footer table")]
    TooShort {
        /// Image length.
        len: usize,
    },
    /// No footer GUID 32 bytes before the end.
    #[error("no GUIDed footer table: the GUID {TABLE_FOOTER_GUID} is not at {BYTES_AFTER_FOOTER} bytes before the end of the image (found {found}); is this an OVMF/TDVF image?")]
    NoFooter {
        /// The 16 bytes found where the footer GUID belongs, as a GUID.
        found: Guid,
    },
    /// The footer's table length does not fit.
    #[error("footer table length {len} is invalid (must be at least 18 and at most {max})")]
    BadTableLength {
        /// Declared length.
        len: usize,
        /// Largest length that fits in the image.
        max: usize,
    },
    /// An entry's length does not fit in the remaining table.
    #[error(
        "footer table entry {guid}: length {len} is invalid ({remaining} bytes of table left)"
    )]
    BadEntryLength {
        /// Entry GUID.
        guid: Guid,
        /// Declared length.
        len: usize,
        /// Bytes of table before and including this entry.
        remaining: usize,
    },
    /// Bytes at the start of the table too few to be an entry.
    #[error("footer table starts with {bytes} bytes that do not form an entry (an entry needs at least 18)")]
    Leftover {
        /// How many.
        bytes: usize,
    },
    /// The same GUID twice.
    #[error("footer table has entry {0} twice")]
    DuplicateEntry(Guid),
    /// A known entry with less data than its format needs.
    #[error("footer table entry {what} ({guid}) has {got} bytes of data, needs {need}")]
    EntryTooShort {
        /// What the entry is.
        what: &'static str,
        /// Its GUID.
        guid: Guid,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
}

/// The entries of a firmware image's GUIDed footer table, in the order they
/// are stored (first = lowest address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FooterTable {
    entries: Vec<(Guid, Vec<u8>)>,
}

impl FooterTable {
    /// Walk the table at the end of `image`.
    pub fn parse(image: &[u8]) -> Result<FooterTable, FirmwareError> {
        let len = image.len();
        let footer_end = len
            .checked_sub(BYTES_AFTER_FOOTER)
            .filter(|e| *e >= ENTRY_TRAILER)
            .ok_or(FirmwareError::TooShort { len })?;
        let footer_start = footer_end - ENTRY_TRAILER;
        let mut g = [0u8; 16];
        g.copy_from_slice(&image[footer_end - 16..footer_end]);
        let found = Guid(g);
        if found != TABLE_FOOTER_GUID {
            return Err(FirmwareError::NoFooter { found });
        }
        let table_len = usize::from(u16::from_le_bytes([
            image[footer_start],
            image[footer_start + 1],
        ]));
        if !(ENTRY_TRAILER..=footer_end).contains(&table_len) {
            return Err(FirmwareError::BadTableLength {
                len: table_len,
                max: footer_end,
            });
        }
        // The entries proper: the table without the footer entry.
        let mut rest = &image[footer_end - table_len..footer_start];
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let n = rest.len();
            if n < ENTRY_TRAILER {
                return Err(FirmwareError::Leftover { bytes: n });
            }
            let mut g = [0u8; 16];
            g.copy_from_slice(&rest[n - 16..]);
            let guid = Guid(g);
            let entry_len = usize::from(u16::from_le_bytes([rest[n - 18], rest[n - 17]]));
            if !(ENTRY_TRAILER..=n).contains(&entry_len) {
                return Err(FirmwareError::BadEntryLength {
                    guid,
                    len: entry_len,
                    remaining: n,
                });
            }
            if entries.iter().any(|(e, _)| *e == guid) {
                return Err(FirmwareError::DuplicateEntry(guid));
            }
            entries.push((guid, rest[n - entry_len..n - ENTRY_TRAILER].to_vec()));
            rest = &rest[..n - entry_len];
        }
        entries.reverse();
        Ok(FooterTable { entries })
    }

    /// The data of the entry with this GUID.
    pub fn get(&self, guid: &Guid) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(g, _)| g == guid)
            .map(|(_, d)| d.as_slice())
    }

    /// All entries, lowest address first.
    pub fn entries(&self) -> impl Iterator<Item = (&Guid, &[u8])> {
        self.entries.iter().map(|(g, d)| (g, d.as_slice()))
    }

    /// The first `u32` of a known entry, or `None` when the entry is absent.
    pub(crate) fn u32_of(
        &self,
        guid: &Guid,
        what: &'static str,
    ) -> Result<Option<u32>, FirmwareError> {
        match self.get(guid) {
            None => Ok(None),
            Some(d) => crate::le::u32_at(d, 0)
                .map(Some)
                .ok_or(FirmwareError::EntryTooShort {
                    what,
                    guid: *guid,
                    need: 4,
                    got: d.len(),
                }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn guid_text_form() {
        assert_eq!(
            TABLE_FOOTER_GUID.to_string(),
            "96b582de-1fb2-45f7-baea-a366c55a082d"
        );
        assert_eq!(
            hex::encode(TABLE_FOOTER_GUID.0),
            "de82b596b21ff745baeaa366c55a082d"
        );
    }

    /// Build an image with the given entries (data, guid), lowest first.
    pub(crate) fn image_with(entries: &[(&[u8], Guid)], pad_before: usize) -> Vec<u8> {
        let mut table = Vec::new();
        for (data, guid) in entries {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(&guid.0);
        }
        let total = table.len() + 18;
        let mut img = vec![0u8; pad_before];
        img.extend_from_slice(&table);
        img.extend_from_slice(&(total as u16).to_le_bytes());
        img.extend_from_slice(&TABLE_FOOTER_GUID.0);
        img.extend_from_slice(&[0xf4; 32]);
        img
    }

    #[test]
    fn walks_entries_in_order() {
        let a = Guid::new(1, 2, 3, [4; 8]);
        let b = Guid::new(5, 6, 7, [8; 8]);
        let img = image_with(&[(b"first", a), (b"second!", b)], 10);
        let t = FooterTable::parse(&img).unwrap();
        let got: Vec<_> = t.entries().map(|(g, d)| (*g, d.to_vec())).collect();
        assert_eq!(got, vec![(a, b"first".to_vec()), (b, b"second!".to_vec())]);
    }

    #[test]
    fn malformed_tables_are_errors() {
        let a = Guid::new(1, 2, 3, [4; 8]);
        assert!(matches!(
            FooterTable::parse(&[0u8; 40]),
            Err(FirmwareError::TooShort { .. })
        ));
        assert!(matches!(
            FooterTable::parse(&[0u8; 4096]),
            Err(FirmwareError::NoFooter { .. })
        ));
        // Table length larger than the image.
        let mut img = image_with(&[(b"x", a)], 0);
        let at = img.len() - 32 - 18;
        img[at..at + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(matches!(
            FooterTable::parse(&img),
            Err(FirmwareError::BadTableLength { .. })
        ));
        // Entry length zero.
        let mut img = image_with(&[(b"abc", a)], 8);
        let at = img.len() - 32 - 18 - 18;
        img[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            FooterTable::parse(&img),
            Err(FirmwareError::BadEntryLength { .. })
        ));
        // Duplicate GUIDs.
        let img = image_with(&[(b"abc", a), (b"def", a)], 0);
        assert_eq!(
            FooterTable::parse(&img),
            Err(FirmwareError::DuplicateEntry(a))
        );
    }
}
