//! Launch measurements computed offline from build outputs.
//!
//! Auditors and providers use this crate (and the `cocoon-measure` binary)
//! to turn firmware, kernel, initrd and command line into the reference
//! values a Cocoon verifier policy pins:
//!
//! * [`snp`]: the AMD SEV-SNP launch digest (SHA-384 chain over the
//!   `SNP_LAUNCH_UPDATE` page records, with the OVMF metadata sections, the
//!   SEV hashes table for direct kernel boot and one VMSA page per vCPU), and
//!   the older SEV / SEV-ES launch digests (SHA-256).
//! * [`tdvf`]: the Intel TDX MRTD of a TDVF image (`TDH.MEM.PAGE.ADD` and
//!   `TDH.MR.EXTEND` records).
//! * [`eventlog`]: TCG crypto-agile (CCEL) and dstack JSON event logs, and
//!   their replay into RTMR0..3.
//! * [`direct_boot`]: the RTMR1/RTMR2 events of a QEMU direct kernel boot
//!   under TDVF (computed, but with no public reference vector: every value
//!   from it is labelled unverified).
//! * [`policy`]: the TOML tables the verifier's policy reads.
//!
//! What this crate owns: parsing build outputs (firmware images, event logs)
//! from untrusted bytes without panics, and the measurement arithmetic. What
//! it must not touch: verification of evidence (that is `cocoon-verifier`),
//! the network, the clock. Layouts come from public specifications, cited
//! where they are used; no code from other measurement tools is copied.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod direct_boot;
pub mod eventlog;
pub mod firmware;
pub mod ovmf;
pub mod pe;
pub mod policy;
pub mod sev_hashes;
pub mod snp;
pub mod tdvf;
pub mod vmsa;

use core::fmt;

/// A 48-byte SHA-384 measurement: the SEV-SNP launch digest, or the value
/// of a TDX measurement register (MRTD, RTMR). Displays as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measurement(pub [u8; 48]);

impl Measurement {
    /// All zeros: the initial value of an SNP guest context and of an RTMR.
    pub const ZERO: Measurement = Measurement([0; 48]);

    /// Parse 96 hex digits (an optional `0x` prefix is accepted).
    pub fn from_hex(s: &str) -> Result<Measurement, HexError> {
        parse_hex::<48>(s).map(Measurement)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 48] {
        &self.0
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", hex::encode(self.0))
    }
}

/// A hex string that is not the expected number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex digits, got {got:?}")]
pub struct HexError {
    /// Number of hex digits expected.
    pub expected: usize,
    /// What was given (trimmed).
    pub got: String,
}

/// Decode exactly `N` bytes of hex; surrounding spaces and a `0x` prefix are
/// accepted, upper and lower case alike.
pub fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let mut out = [0u8; N];
    hex::decode_to_slice(t, &mut out).map_err(|_| HexError {
        expected: 2 * N,
        got: t.chars().take(2 * N + 8).collect(),
    })?;
    Ok(out)
}

/// Size of a guest page everywhere in this crate (4 KiB).
pub const PAGE_SIZE: usize = 4096;

pub(crate) fn sha384(data: &[u8]) -> [u8; 48] {
    use sha2::Digest as _;
    sha2::Sha384::digest(data).into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Little-endian readers over untrusted bytes: `None` when out of range.
pub(crate) mod le {
    pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_le_bytes(
            b.get(off..off.checked_add(2)?)?.try_into().ok()?,
        ))
    }
    pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            b.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    }
    pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(off..off.checked_add(8)?)?.try_into().ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let v = Measurement::from_hex(&format!("0x{}", "AB".repeat(48))).unwrap();
        assert_eq!(v.to_string(), "ab".repeat(48));
        assert!(Measurement::from_hex("abcd").is_err());
        assert!(Measurement::from_hex(&"zz".repeat(48)).is_err());
    }

    #[test]
    fn le_readers_refuse_out_of_range() {
        let b = [1u8, 2, 3, 4];
        assert_eq!(le::u16_at(&b, 2), Some(0x0403));
        assert_eq!(le::u32_at(&b, 1), None);
        assert_eq!(le::u64_at(&b, usize::MAX), None);
    }
}
