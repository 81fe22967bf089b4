//! Measurement digests: one 32-byte name for "this launch measurement on
//! this platform", and the reference values of one image release.
//!
//! Owns the digest formula that the release manifest
//! (`cocoon_protocol::release`), the registry contract (which stores the
//! digests of every active release) and the verifier (which computes the
//! digest of verified evidence) must agree on, so it exists once, here:
//!
//! ```text
//! digest = SHA-256(platform ‖ values)
//!   platform 0x01  SEV-SNP    values = the 48-byte launch measurement
//!   platform 0x02  TDX        values = MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 (4 × 48 bytes)
//!   platform 0xff  simulated  values = the 48-byte simulated measurement
//!                             (tests only: NOT CONFIDENTIAL)
//! ```
//!
//! RTMR3 is not part of a TDX digest: the guest extends it at run time, it
//! is not an image value. Only hashing here; deciding whether a digest is
//! acceptable is the verifier's business (`cocoon_verifier::policy::derive`).

use sha2::{Digest, Sha256};

use crate::snp::TcbParts;

/// The platform byte of a measurement digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MeasuredPlatform {
    /// AMD SEV-SNP (byte 1).
    Snp,
    /// Intel TDX (byte 2).
    Tdx,
    /// The simulated TEE (byte 0xff): NOT confidential, tests only.
    Simulated,
}

impl MeasuredPlatform {
    /// Every platform, in byte order.
    pub const ALL: [MeasuredPlatform; 3] = [
        MeasuredPlatform::Snp,
        MeasuredPlatform::Tdx,
        MeasuredPlatform::Simulated,
    ];

    /// The byte that starts the digest's preimage (and keys the registry).
    pub fn byte(self) -> u8 {
        match self {
            MeasuredPlatform::Snp => 1,
            MeasuredPlatform::Tdx => 2,
            MeasuredPlatform::Simulated => 0xff,
        }
    }

    /// The platform of a byte, if it names one.
    pub fn from_byte(b: u8) -> Option<MeasuredPlatform> {
        MeasuredPlatform::ALL.into_iter().find(|p| p.byte() == b)
    }

    /// `"snp"`, `"tdx"` or `"simulated"`: the release manifest's words.
    pub fn name(self) -> &'static str {
        match self {
            MeasuredPlatform::Snp => "snp",
            MeasuredPlatform::Tdx => "tdx",
            MeasuredPlatform::Simulated => "simulated",
        }
    }
}

impl core::fmt::Display for MeasuredPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A measurement digest: the platform and SHA-256(platform ‖ values).
pub type MeasurementDigest = (MeasuredPlatform, [u8; 32]);

fn digest(platform: MeasuredPlatform, parts: &[&[u8; 48]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([platform.byte()]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The digest of an SEV-SNP launch measurement.
pub fn snp_digest(launch_measurement: &[u8; 48]) -> [u8; 32] {
    digest(MeasuredPlatform::Snp, &[launch_measurement])
}

/// The digest of a TDX launch: MRTD and RTMR0..2 (not RTMR3).
pub fn tdx_digest(registers: &TdxRegisters) -> [u8; 32] {
    let [r0, r1, r2] = &registers.rtmr;
    digest(MeasuredPlatform::Tdx, &[&registers.mrtd, r0, r1, r2])
}

/// The digest of a simulated TEE's measurement (tests only).
pub fn simulated_digest(measurement: &[u8; 48]) -> [u8; 32] {
    digest(MeasuredPlatform::Simulated, &[measurement])
}

/// The TDX registers a release pins: MRTD and RTMR0..2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TdxRegisters {
    /// MRTD: the TD's initial contents (TDVF).
    pub mrtd: [u8; 48],
    /// RTMR0 (firmware configuration), RTMR1 (kernel), RTMR2 (command line
    /// and initrd).
    pub rtmr: [[u8; 48]; 3],
}

/// The least TCB a release asks of each platform. `None`: the release
/// names none for that platform (a client may still require one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReleaseMinTcb {
    /// Minimum SEV-SNP reported TCB, part by part; `fmc` (Turin) `None`
    /// when the release does not ask for one.
    pub snp: Option<TcbParts<Option<u8>>>,
    /// Minimum TDX TEE TCB SVN, component by component.
    pub tdx_tee_tcb_svn: Option<[u8; 16]>,
}

/// The reference values of one image release, as a verifier needs them: the
/// launch measurements per platform and the release's minimum TCB. Made from
/// a release manifest (`cocoon_protocol::release::ReleaseManifest::reference`);
/// plain data, no judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseReference {
    /// The release's name.
    pub release: String,
    /// SHA-256 of the release manifest's canonical bytes: the release's key
    /// in the registry.
    pub manifest_hash: [u8; 32],
    /// SEV-SNP launch measurements (one per VM shape).
    pub snp: Vec<[u8; 48]>,
    /// TDX registers (one set per VM shape).
    pub tdx: Vec<TdxRegisters>,
    /// Simulated TEE measurements (tests only).
    pub simulated: Vec<[u8; 48]>,
    /// The release's minimum TCB.
    pub min_tcb: ReleaseMinTcb,
}

impl ReleaseReference {
    /// Every measurement digest of the release, SNP first, then TDX, then
    /// simulated, each in the order listed.
    pub fn digests(&self) -> Vec<MeasurementDigest> {
        let snp = self
            .snp
            .iter()
            .map(|m| (MeasuredPlatform::Snp, snp_digest(m)));
        let tdx = self
            .tdx
            .iter()
            .map(|r| (MeasuredPlatform::Tdx, tdx_digest(r)));
        let sim = self
            .simulated
            .iter()
            .map(|m| (MeasuredPlatform::Simulated, simulated_digest(m)));
        snp.chain(tdx).chain(sim).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_hash_the_platform_byte_then_the_values() {
        let m = [0xab; 48];
        let mut pre = vec![1u8];
        pre.extend_from_slice(&m);
        assert_eq!(snp_digest(&m), <[u8; 32]>::from(Sha256::digest(&pre)));
        pre[0] = 0xff;
        assert_eq!(simulated_digest(&m), <[u8; 32]>::from(Sha256::digest(&pre)));
        let r = TdxRegisters {
            mrtd: [1; 48],
            rtmr: [[2; 48], [3; 48], [4; 48]],
        };
        let mut pre = vec![2u8];
        for v in [[1u8; 48], [2; 48], [3; 48], [4; 48]] {
            pre.extend_from_slice(&v);
        }
        assert_eq!(pre.len(), 1 + 192);
        assert_eq!(tdx_digest(&r), <[u8; 32]>::from(Sha256::digest(&pre)));
        // Same values, other platform: another digest.
        assert_ne!(snp_digest(&m), simulated_digest(&m));
        // A known answer, so a change of the formula cannot go unnoticed
        // (SHA-256 of 0x01 followed by 48 zero bytes).
        assert_eq!(
            hex::encode(snp_digest(&[0; 48])),
            "ae2fc6808ad6cbb7542ba578c8dbedc5bb8e93871b45f6880260a27c6391bb40"
        );
    }

    #[test]
    fn platform_bytes_round_trip() {
        for p in MeasuredPlatform::ALL {
            assert_eq!(MeasuredPlatform::from_byte(p.byte()), Some(p));
        }
        assert_eq!(MeasuredPlatform::from_byte(0), None);
        assert_eq!(MeasuredPlatform::from_byte(3), None);
    }
}
