//! The SEV-SNP certificate table a host hands its guest beside a report.
//!
//! Owns the wire form of the table of certificates that comes with an
//! *extended* guest request: what the Linux guest driver returns in the
//! certificate buffer of `SNP_GET_EXT_REPORT` (`/dev/sev-guest`) and in the
//! `auxblob` attribute of a configfs-tsm report. It parses and writes the
//! table; it never decides whether a certificate is genuine (that is
//! `cocoon-verifier`'s job).
//!
//! Layout source: *SEV-ES Guest-Hypervisor Communication Block
//! Standardization* (AMD publication #56421), "SNP Extended Guest Request"
//! (NAE event `0x8000_0012`), and the Linux kernel's
//! `Documentation/virt/coco/sev-guest.rst`. The buffer starts with a table
//! of 24-byte entries:
//!
//! ```text
//! offset  size  field
//! 0x00    16    GUID naming the certificate
//! 0x10     4    offset of the certificate from the start of the buffer (LE)
//! 0x14     4    length of the certificate in bytes (LE)
//! ```
//!
//! ending with an entry of 24 zero bytes; the certificates (DER) follow.
//! GUIDs are stored in RFC 4122 byte order, the order of their text form
//! (what libuuid's `uuid_parse` and Python's `uuid.UUID(...).bytes` give);
//! AMD's own `sev-guest` tools build the table that way.
//!
//! Parsing bounds every offset and length by the buffer, requires the
//! terminator, refuses duplicate GUIDs, and never panics.

use std::fmt;

use crate::bytes::Reader;

/// A 16-byte GUID in RFC 4122 byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The VCEK (Versioned Chip Endorsement Key) certificate:
    /// `63da758d-e664-4564-adc5-f4b93be8accd`.
    pub const VCEK: Guid = Guid([
        0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ]);
    /// The VLEK (Versioned Loaded Endorsement Key) certificate:
    /// `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
    pub const VLEK: Guid = Guid([
        0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8,
        0xa1,
    ]);
    /// The ASK (AMD SEV Key; the ASVK for a VLEK) certificate:
    /// `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
    pub const ASK: Guid = Guid([
        0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7,
        0x82,
    ]);
    /// The ARK (AMD Root Key) certificate:
    /// `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
    pub const ARK: Guid = Guid([
        0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0,
        0xae,
    ]);

    /// The name of a GUID this module knows, for messages.
    pub fn name(&self) -> Option<&'static str> {
        match *self {
            Guid::VCEK => Some("VCEK"),
            Guid::VLEK => Some("VLEK"),
            Guid::ASK => Some("ASK"),
            Guid::ARK => Some("ARK"),
            _ => None,
        }
    }
}

impl fmt::Display for Guid {
    /// The 8-4-4-4-12 lowercase text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Guid({self} {n})"),
            None => write!(f, "Guid({self})"),
        }
    }
}

/// Size of one table entry.
pub const ENTRY_SIZE: usize = 24;
/// Most entries (terminator excluded) accepted: the GHCB names four kinds
/// of certificate; a host listing more than this is broken or hostile.
pub const MAX_ENTRIES: usize = 64;
/// Largest buffer accepted (the Linux driver caps it at 16 KiB today).
pub const MAX_TABLE_BYTES: usize = 1 << 20;

/// Why bytes are not a certificate table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The buffer is larger than [`MAX_TABLE_BYTES`].
    #[error("SNP certificate table: {0} bytes is more than the {MAX_TABLE_BYTES} accepted")]
    TooLarge(usize),
    /// The buffer ends before the all-zero terminator entry.
    #[error("SNP certificate table: no all-zero terminator entry within the {0} bytes")]
    Unterminated(usize),
    /// More than [`MAX_ENTRIES`] entries.
    #[error("SNP certificate table: more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry's certificate lies (partly) outside the buffer, or inside
    /// the table itself.
    #[error("SNP certificate table: entry {index} ({guid}) points at bytes {offset}..{offset}+{length}, outside the certificate area {table_end}..{buffer_len}")]
    OutOfRange {
        /// Entry number, from 0.
        index: usize,
        /// Its GUID.
        guid: Guid,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// Where the table (with its terminator) ends.
        table_end: usize,
        /// The buffer's length.
        buffer_len: usize,
    },
    /// An entry with length zero.
    #[error("SNP certificate table: entry {index} ({guid}) is empty")]
    Empty {
        /// Entry number, from 0.
        index: usize,
        /// Its GUID.
        guid: Guid,
    },
    /// Two entries with the same GUID.
    #[error("SNP certificate table: {0} appears more than once")]
    Duplicate(Guid),
}

/// A parsed certificate table: GUIDs and the certificate bytes they name,
/// in table order, borrowed from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTable<'a> {
    entries: Vec<(Guid, &'a [u8])>,
}

impl<'a> CertTable<'a> {
    /// Parse a buffer holding a table and its certificates. Bytes after the
    /// certificates (drivers hand out page-sized buffers) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<CertTable<'a>, CertTableError> {
        if buf.len() > MAX_TABLE_BYTES {
            return Err(CertTableError::TooLarge(buf.len()));
        }
        let mut raw = Vec::new();
        let mut r = Reader::new(buf);
        let unterminated = |_| CertTableError::Unterminated(buf.len());
        loop {
            let mut entry = r.sub(ENTRY_SIZE, "entry").map_err(unterminated)?;
            if entry.rest().iter().all(|b| *b == 0) {
                break;
            }
            if raw.len() == MAX_ENTRIES {
                return Err(CertTableError::TooManyEntries);
            }
            let guid = entry.array("GUID").map_err(unterminated)?;
            let offset = entry.u32_le("offset").map_err(unterminated)?;
            let length = entry.u32_le("length").map_err(unterminated)?;
            raw.push((Guid(guid), offset, length));
        }
        let table_end = r.offset();
        let mut entries: Vec<(Guid, &'a [u8])> = Vec::with_capacity(raw.len());
        for (index, (guid, offset, length)) in raw.into_iter().enumerate() {
            if length == 0 {
                return Err(CertTableError::Empty { index, guid });
            }
            let start = offset as usize;
            let data = start
                .checked_add(length as usize)
                .filter(|_| start >= table_end)
                .and_then(|end| buf.get(start..end))
                .ok_or(CertTableError::OutOfRange {
                    index,
                    guid,
                    offset,
                    length,
                    table_end,
                    buffer_len: buf.len(),
                })?;
            if entries.iter().any(|(g, _)| *g == guid) {
                return Err(CertTableError::Duplicate(guid));
            }
            entries.push((guid, data));
        }
        Ok(CertTable { entries })
    }

    /// The certificate named `guid`, if the table has one.
    pub fn get(&self, guid: Guid) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .find(|(g, _)| *g == guid)
            .map(|(_, d)| *d)
    }

    /// Every entry, in table order.
    pub fn entries(&self) -> &[(Guid, &'a [u8])] {
        &self.entries
    }

    /// Whether the table lists no certificate.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The GUIDs present, as names where known (for messages).
    pub fn describe(&self) -> String {
        if self.entries.is_empty() {
            return "no entries".into();
        }
        self.entries
            .iter()
            .map(|(g, d)| match g.name() {
                Some(n) => format!("{n} ({} bytes)", d.len()),
                None => format!("{g} ({} bytes)", d.len()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Write a table: the entries, the terminator, then each certificate in
/// order (what a host puts in the guest's certificate buffer).
///
/// Fails with [`CertTableError::TooManyEntries`],
/// [`CertTableError::Duplicate`], [`CertTableError::Empty`] or
/// [`CertTableError::TooLarge`] where [`CertTable::parse`] would refuse the
/// result.
pub fn encode(entries: &[(Guid, &[u8])]) -> Result<Vec<u8>, CertTableError> {
    if entries.len() > MAX_ENTRIES {
        return Err(CertTableError::TooManyEntries);
    }
    for (index, (guid, data)) in entries.iter().enumerate() {
        if data.is_empty() {
            return Err(CertTableError::Empty { index, guid: *guid });
        }
        if entries[..index].iter().any(|(g, _)| g == guid) {
            return Err(CertTableError::Duplicate(*guid));
        }
    }
    let table_len = (entries.len() + 1) * ENTRY_SIZE;
    let total = entries
        .iter()
        .fold(table_len, |n, (_, d)| n.saturating_add(d.len()));
    if total > MAX_TABLE_BYTES {
        return Err(CertTableError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    let mut offset = table_len;
    for (guid, data) in entries {
        out.extend_from_slice(&guid.0);
        // Both fit in u32: total <= MAX_TABLE_BYTES.
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        offset += data.len();
    }
    out.extend_from_slice(&[0u8; ENTRY_SIZE]);
    for (_, data) in entries {
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_match_their_text_form() {
        assert_eq!(
            Guid::VCEK.to_string(),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
        assert_eq!(
            Guid::VLEK.to_string(),
            "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
        );
        assert_eq!(
            Guid::ASK.to_string(),
            "4ab7b379-bbac-4fe4-a02f-05aef327c782"
        );
        assert_eq!(
            Guid::ARK.to_string(),
            "c0b406a4-a803-4952-9743-3fb6014cd0ae"
        );
    }

    #[test]
    fn round_trip_and_padding() {
        let t = encode(&[(Guid::VCEK, b"vcek-der"), (Guid::ASK, b"ask")]).unwrap();
        assert_eq!(t.len(), 3 * ENTRY_SIZE + 11);
        let mut padded = t.clone();
        padded.resize(4096, 0);
        for buf in [&t, &padded] {
            let p = CertTable::parse(buf).unwrap();
            assert_eq!(p.get(Guid::VCEK), Some(&b"vcek-der"[..]));
            assert_eq!(p.get(Guid::ASK), Some(&b"ask"[..]));
            assert_eq!(p.get(Guid::ARK), None);
            assert_eq!(p.describe(), "VCEK (8 bytes), ASK (3 bytes)");
        }
        // Hand-checked bytes of the first entry: GUID, offset 72, length 8.
        assert_eq!(&t[..16], &Guid::VCEK.0);
        assert_eq!(&t[16..24], &[72, 0, 0, 0, 8, 0, 0, 0]);
        let empty = CertTable::parse(&[0u8; ENTRY_SIZE]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.describe(), "no entries");
    }

    #[test]
    fn malformed_tables_are_refused() {
        let good = encode(&[(Guid::VCEK, b"vcek-der")]).unwrap();
        // Missing terminator.
        assert!(matches!(
            CertTable::parse(&good[..ENTRY_SIZE + 10]),
            Err(CertTableError::Unterminated(_))
        ));
        assert!(matches!(
            CertTable::parse(&[]),
            Err(CertTableError::Unterminated(0))
        ));
        // Length past the end, offset past the end, offset + length overflow,
        // offset inside the table.
        for (offset, length) in [
            (48u32, 9u32),
            (1000, 1),
            (u32::MAX, 2),
            (48, u32::MAX),
            (0, 8),
            (47, 8),
        ] {
            let mut bad = good.clone();
            bad[16..20].copy_from_slice(&offset.to_le_bytes());
            bad[20..24].copy_from_slice(&length.to_le_bytes());
            let e = CertTable::parse(&bad).unwrap_err();
            assert!(
                matches!(e, CertTableError::OutOfRange { index: 0, .. }),
                "{offset} {length}: {e}"
            );
            assert!(e.to_string().contains("VCEK") || e.to_string().contains("63da758d"));
        }
        let mut zero_len = good.clone();
        zero_len[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            CertTable::parse(&zero_len),
            Err(CertTableError::Empty { .. })
        ));
        // Duplicates.
        assert!(matches!(
            encode(&[(Guid::VCEK, b"a"), (Guid::VCEK, b"b")]),
            Err(CertTableError::Duplicate(Guid::VCEK))
        ));
        let mut dup = encode(&[(Guid::VCEK, b"a"), (Guid::ASK, b"b")]).unwrap();
        dup.copy_within(0..16, ENTRY_SIZE);
        assert!(matches!(
            CertTable::parse(&dup),
            Err(CertTableError::Duplicate(Guid::VCEK))
        ));
        // Too many entries: MAX_ENTRIES + 1 distinct GUIDs, never terminated
        // within the limit.
        let mut many = Vec::new();
        for i in 0..=MAX_ENTRIES {
            let mut g = [0u8; 16];
            g[0] = 1;
            g[1] = i as u8;
            many.extend_from_slice(&g);
            many.extend_from_slice(&[0; 8]);
        }
        many.extend_from_slice(&[0; ENTRY_SIZE]);
        assert_eq!(CertTable::parse(&many), Err(CertTableError::TooManyEntries));
        assert!(matches!(
            CertTable::parse(&vec![0u8; MAX_TABLE_BYTES + 1]),
            Err(CertTableError::TooLarge(_))
        ));
    }
}
