//! Authenticode image hash of a PE/COFF file (SHA-384), as UEFI firmware
//! measures an EFI application before starting it.
//!
//! Owns the PE header walk and the hash; nothing else. The procedure is the
//! one in Microsoft's "Windows Authenticode Portable Executable Signature
//! Format", section "Calculating the PE Image Hash", which edk2 follows when
//! it measures an image (`DxeTpm2MeasureBootLib`, `Tcg2MeasurePeImage`):
//!
//! 1. hash the headers up to the optional header's CheckSum, skip it;
//! 2. hash on to the Certificate Table data-directory entry (index 4), skip
//!    its 8 bytes (when the image has that many directories);
//! 3. hash the rest of the headers up to SizeOfHeaders;
//! 4. hash each section's raw data, sections sorted by PointerToRawData,
//!    skipping empty ones;
//! 5. hash what follows the last section up to the end of the file, less
//!    the certificate table's size.
//!
//! No padding is added (edk2 adds none); signing tools that pad unsigned
//! files to 8 bytes get a different value for files whose size is not a
//! multiple of 8.

use sha2::Digest as _;

/// Why a PE image hash cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeError {
    /// Not an MZ/PE file.
    #[error("not a PE/COFF image: {0}")]
    NotPe(String),
    /// A header field points outside the file.
    #[error("PE image is malformed: {0}")]
    Malformed(String),
}

/// The Authenticode SHA-384 hash of a PE/COFF image.
pub fn authenticode_sha384(image: &[u8]) -> Result<[u8; 48], PeError> {
    let malformed = |s: &str| PeError::Malformed(s.to_string());
    if image.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ signature".into()));
    }
    let pe = crate::le::u32_at(image, 0x3c).ok_or_else(|| malformed("no e_lfanew"))? as usize;
    if image.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(PeError::NotPe(format!(
            "no PE signature at e_lfanew {pe:#x}"
        )));
    }
    let coff = pe + 4;
    let sections = usize::from(
        crate::le::u16_at(image, coff + 2).ok_or_else(|| malformed("COFF header cut short"))?,
    );
    let opt_size = usize::from(
        crate::le::u16_at(image, coff + 16).ok_or_else(|| malformed("COFF header cut short"))?,
    );
    let opt = coff + 20;
    let magic =
        crate::le::u16_at(image, opt).ok_or_else(|| malformed("optional header cut short"))?;
    let (n_dirs_at, dirs_at) = match magic {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        m => return Err(PeError::NotPe(format!("optional header magic {m:#x}"))),
    };
    let checksum_at = opt + 64;
    let headers_end =
        crate::le::u32_at(image, opt + 60).ok_or_else(|| malformed("no SizeOfHeaders"))? as usize;
    let n_dirs =
        crate::le::u32_at(image, n_dirs_at).ok_or_else(|| malformed("no NumberOfRvaAndSizes"))?;
    if headers_end > image.len() || headers_end < dirs_at {
        return Err(malformed("SizeOfHeaders does not fit the file"));
    }

    let mut h = sha2::Sha384::new();
    h.update(&image[..checksum_at]);
    let cert_size = if n_dirs > 4 {
        let cert_dir = dirs_at + 4 * 8;
        if cert_dir + 8 > headers_end {
            return Err(malformed("certificate directory beyond the headers"));
        }
        h.update(&image[checksum_at + 4..cert_dir]);
        h.update(&image[cert_dir + 8..headers_end]);
        crate::le::u32_at(image, cert_dir + 4).unwrap_or_default() as usize
    } else {
        h.update(&image[checksum_at + 4..headers_end]);
        0
    };

    let table = opt + opt_size;
    let mut raw = Vec::with_capacity(sections);
    for i in 0..sections {
        let s = table + 40 * i;
        let size = crate::le::u32_at(image, s + 16)
            .ok_or_else(|| malformed("section table cut short"))? as usize;
        let ptr = crate::le::u32_at(image, s + 20)
            .ok_or_else(|| malformed("section table cut short"))? as usize;
        if size > 0 {
            raw.push((ptr, size));
        }
    }
    raw.sort_unstable();
    let mut hashed = headers_end;
    for (ptr, size) in raw {
        let data = ptr
            .checked_add(size)
            .and_then(|end| image.get(ptr..end))
            .ok_or_else(|| {
                malformed(&format!(
                    "section data {ptr:#x}+{size:#x} beyond the end of the file"
                ))
            })?;
        h.update(data);
        hashed += size;
    }
    if image.len() > hashed {
        let extra = image.len() - hashed;
        if extra > cert_size {
            h.update(&image[hashed..hashed + (extra - cert_size)]);
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small PE32+ image: headers (0x200), two sections (0x200 each, given
    /// out of order in the table) and 8 trailing bytes.
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut f = vec![0u8; 0x600 + 8];
        f[0..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        f[coff + 18..coff + 20].copy_from_slice(&0x22u16.to_le_bytes());
        let opt = coff + 20;
        f[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        f[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // SectionAlignment
        f[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // FileAlignment
        f[opt + 56..opt + 60].copy_from_slice(&0x3000u32.to_le_bytes()); // SizeOfImage
        f[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes()); // SizeOfHeaders
        f[opt + 64..opt + 68].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // CheckSum
        f[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
        f[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + 240;
        for (i, (name, rva, ptr)) in [
            (b".data\0\0\0", 0x2000u32, 0x400u32),
            (b".text\0\0\0", 0x1000, 0x200),
        ]
        .into_iter()
        .enumerate()
        {
            let s = table + 40 * i;
            f[s..s + 8].copy_from_slice(name);
            f[s + 8..s + 12].copy_from_slice(&0x200u32.to_le_bytes());
            f[s + 12..s + 16].copy_from_slice(&rva.to_le_bytes());
            f[s + 16..s + 20].copy_from_slice(&0x200u32.to_le_bytes());
            f[s + 20..s + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        for (i, b) in f[0x200..].iter_mut().enumerate() {
            *b = (i * 7 % 256) as u8;
        }
        f
    }

    /// An independent implementation agrees: osslsigncode (`sign -h sha384`
    /// on these exact bytes, then `verify`, "Calculated message digest")
    /// printed this value. The file size is a multiple of 8, so its padding
    /// convention does not matter here.
    #[test]
    fn tiny_pe_hash_matches_osslsigncode() {
        assert_eq!(
            hex::encode(authenticode_sha384(&tiny_pe()).unwrap()),
            "9c022902161476cb3f3453ef0ff1727cbee9cd11617e748abede16a0e26a18c17dcbd4de83cbc9b83affb6dceb2811ab"
        );
    }

    #[test]
    fn hash_skips_checksum_and_cert_entry() {
        let f = tiny_pe();
        let a = authenticode_sha384(&f).unwrap();
        let mut g = f.clone();
        g[0x84 + 20 + 64] ^= 0xff; // CheckSum is not hashed
        assert_eq!(authenticode_sha384(&g).unwrap(), a);
        let mut g = f.clone();
        g[0x300] ^= 1; // section data is
        assert_ne!(authenticode_sha384(&g).unwrap(), a);
        assert!(authenticode_sha384(&f[..0x500]).is_err());
        assert!(authenticode_sha384(b"MZ").is_err());
        assert!(authenticode_sha384(b"\x7fELF").is_err());
    }
}
