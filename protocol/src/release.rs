//! The release manifest: what one image release is made of and the launch
//! measurements it may run under, as exact bytes whose SHA-256 names the
//! release in the registry contract.
//!
//! Owns [`ReleaseManifest`], its canonical JSON form, its hash
//! ([`ReleaseManifest::manifest_hash`]) and its measurement digests
//! ([`ReleaseManifest::measurement_digests`], the formula is
//! [`cocoon_attestation::measurement`]'s). `cocoon-measure manifest` writes
//! it beside the image (`release-manifest.json`), a host serves it at
//! [`crate::api::RELEASE_PATH`], the registry lists its hash and digests,
//! and a client derives its verifier policy from the manifests of active
//! releases (`cocoon_verifier::policy::derive`). Nothing here judges
//! evidence.
//!
//! # Canonical bytes
//!
//! One JSON object, UTF-8, with no whitespace between tokens and no
//! trailing newline. Keys are always all present, in exactly this order
//! (`null` where a value is absent):
//!
//! ```text
//! {"version":1,
//!  "release":"cocoon-guest-0.2.0",
//!  "kernel_sha256":HEX32,"initrd_sha256":HEX32,"cmdline":"…","disk_verity_root":HEX32,
//!  "models":[{"name":"…","version":"…","sha256":HEX32,"tokenizer_sha256":HEX32},…],
//!  "prices_from":"release"|"provider",
//!  "price_bounds":{"MODEL":{"prompt":[LO,HI],"completion":[LO,HI]},…},
//!  "max_request_lifetime_secs":N,
//!  "min_tcb":{"snp":null|{"fmc":null|N,"bootloader":N,"tee":N,"snp":N,"microcode":N},
//!             "tdx":null|{"tee_tcb_svn":HEX16}},
//!  "measurements":[
//!    {"platform":"snp","vcpus":N,"values":{"launch_measurement":HEX48}},
//!    {"platform":"tdx","vcpus":N,"memory_mib":N,"values":{"mrtd":HEX48,"rtmr0":HEX48,"rtmr1":HEX48,"rtmr2":HEX48}},
//!    {"platform":"simulated","vcpus":N,"values":{"measurement":HEX48}}]}
//! ```
//!
//! (shown on several lines here; the bytes have none). The rules:
//!
//! * `HEXn` is a string of exactly 2n **lowercase** hex digits.
//! * Integers are JSON numbers in shortest decimal form (no sign, no
//!   leading zeros, no fraction or exponent) and must not exceed
//!   2^53 − 1 ([`MAX_JSON_INT`]), so every JSON reader (JavaScript's
//!   included) reads them exactly. Larger values are refused rather than
//!   written as strings: no field needs them (prices are nanoton per
//!   token).
//! * Strings are written as `serde_json` writes them: `"` and `\` escaped,
//!   control characters as `\b \f \n \r \t` or `\u00xx` (lowercase hex),
//!   everything else (`/` and non-ASCII included) as plain UTF-8. Names and
//!   the command line may not contain control characters at all.
//! * `models` are sorted by name (byte order), names unique;
//!   `price_bounds` keys are sorted (byte order) and each names a listed
//!   model; `measurements` are sorted by platform byte (1 SNP, 2 TDX, 0xff
//!   simulated), then `vcpus`, then `memory_mib`, with no VM shape twice.
//! * A TDX entry carries `memory_mib`: QEMU places the initrd at an address
//!   that depends on guest memory, and the kernel header it patches is in
//!   RTMR1. SNP and simulated entries have no such key.
//!
//! [`ReleaseManifest::from_canonical`] refuses bytes that are not exactly
//! [`ReleaseManifest::to_canonical`] of what they decode to, saying at
//! which byte they differ, so a manifest has one hash.

use std::collections::BTreeMap;

use cocoon_attestation::measurement::{
    self, MeasuredPlatform, ReleaseMinTcb, ReleaseReference, TdxRegisters,
};
use cocoon_attestation::snp::TcbParts;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The manifest format this build reads and writes.
pub const MANIFEST_VERSION: u32 = 1;
/// Most bytes of a manifest.
pub const MAX_MANIFEST: usize = 64 * 1024;
/// Most models in one release.
pub const MAX_MODELS: usize = 64;
/// Most measurement entries (VM shapes × platforms).
pub const MAX_MEASUREMENTS: usize = 256;
/// Longest release or model name, model version (bytes).
pub const MAX_NAME: usize = 128;
/// Longest kernel command line (bytes).
pub const MAX_CMDLINE: usize = 4096;
/// The largest integer in a manifest: 2^53 − 1, the largest every JSON
/// reader holds exactly.
pub const MAX_JSON_INT: u64 = (1 << 53) - 1;

/// Why manifest bytes or values were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// More than [`MAX_MANIFEST`] bytes.
    #[error("release manifest: {0} bytes, more than the {MAX_MANIFEST} allowed")]
    TooLarge(usize),
    /// Not JSON of the manifest's shape (unknown or missing key, wrong type).
    #[error("release manifest: {0}")]
    Json(String),
    /// Well-formed but not acceptable.
    #[error("release manifest: {0}")]
    Invalid(String),
    /// Decodes, but is not the canonical encoding of what it decodes to.
    #[error("release manifest is not in canonical form: first difference at byte {offset}: the input has {got:?}, the canonical encoding {want:?} (re-encode it with `cocoon-measure manifest`)")]
    NotCanonical {
        /// Offset of the first byte that differs (or where one side ends).
        offset: usize,
        /// Up to 24 bytes of the input from there (lossy UTF-8).
        got: String,
        /// Up to 24 bytes of the canonical encoding from there.
        want: String,
    },
}

/// `n` bytes written as 2n lowercase hex digits; read only in that form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> core::fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let lower = s.len() == 2 * N && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut out = [0u8; N];
        if !lower || hex::decode_to_slice(s.as_bytes(), &mut out).is_err() {
            return Err(serde::de::Error::custom(format!(
                "expected {} lowercase hex digits, got {:?}",
                2 * N,
                s.chars().take(2 * N + 8).collect::<String>()
            )));
        }
        Ok(Hex(out))
    }
}

/// One model of the release, as the enclave's claims name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseModel {
    /// The name clients ask for.
    pub name: String,
    /// The model's version.
    pub version: String,
    /// SHA-256 of the model file.
    pub sha256: Hex<32>,
    /// SHA-256 of its tokenizer file.
    pub tokenizer_sha256: Hex<32>,
}

/// Where the enclave's prices come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PricesFrom {
    /// The release's own measured prices.
    Release,
    /// The provider's settings at boot, within [`ReleaseManifest::price_bounds`].
    Provider,
}

/// A model's price bounds: inclusive ranges, nanoton per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBounds {
    /// Lowest and highest prompt price.
    pub prompt: [u64; 2],
    /// Lowest and highest completion price.
    pub completion: [u64; 2],
}

/// The least SEV-SNP reported TCB a release asks for, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpMinTcb {
    /// FMC SPL (Turin), or `null`: not asked.
    pub fmc: Option<u8>,
    /// Bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
}

/// The least TDX TCB a release asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxMinTcb {
    /// Minimum TEE TCB SVN, component by component (16 bytes).
    pub tee_tcb_svn: Hex<16>,
}

/// The least TCB per platform (`null`: the release names none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// SEV-SNP.
    pub snp: Option<SnpMinTcb>,
    /// TDX.
    pub tdx: Option<TdxMinTcb>,
}

/// An SEV-SNP launch's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpValues {
    /// The 48-byte launch measurement (digest).
    pub launch_measurement: Hex<48>,
}

/// A TDX launch's values (RTMR3 is extended at run time: not an image value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxValues {
    /// MRTD.
    pub mrtd: Hex<48>,
    /// RTMR0.
    pub rtmr0: Hex<48>,
    /// RTMR1.
    pub rtmr1: Hex<48>,
    /// RTMR2.
    pub rtmr2: Hex<48>,
}

/// A simulated TEE's value (tests only: NOT CONFIDENTIAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedValues {
    /// The 48-byte simulated measurement.
    pub measurement: Hex<48>,
}

/// The launch measurement of one VM shape on one platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "lowercase", deny_unknown_fields)]
pub enum LaunchMeasurement {
    /// AMD SEV-SNP.
    Snp {
        /// vCPUs (each has a VMSA in the launch digest).
        vcpus: u32,
        /// The launch digest.
        values: SnpValues,
    },
    /// Intel TDX.
    Tdx {
        /// vCPUs (in RTMR0 through the ACPI tables).
        vcpus: u32,
        /// Guest memory in MiB (in RTMR1 through the kernel header).
        memory_mib: u32,
        /// MRTD and RTMR0..2.
        values: TdxValues,
    },
    /// The simulated TEE: NOT CONFIDENTIAL, for tests. A client counts it
    /// only with `allow_simulated`.
    Simulated {
        /// vCPUs (informative).
        vcpus: u32,
        /// The simulated measurement.
        values: SimulatedValues,
    },
}

impl LaunchMeasurement {
    /// The platform.
    pub fn platform(&self) -> MeasuredPlatform {
        match self {
            LaunchMeasurement::Snp { .. } => MeasuredPlatform::Snp,
            LaunchMeasurement::Tdx { .. } => MeasuredPlatform::Tdx,
            LaunchMeasurement::Simulated { .. } => MeasuredPlatform::Simulated,
        }
    }

    /// The VM shape: (platform byte, vCPUs, memory in MiB or 0), the sort key.
    fn shape(&self) -> (u8, u32, u32) {
        let (vcpus, mem) = match self {
            LaunchMeasurement::Snp { vcpus, .. } | LaunchMeasurement::Simulated { vcpus, .. } => {
                (*vcpus, 0)
            }
            LaunchMeasurement::Tdx {
                vcpus, memory_mib, ..
            } => (*vcpus, *memory_mib),
        };
        (self.platform().byte(), vcpus, mem)
    }

    /// SHA-256(platform ‖ values) ([`cocoon_attestation::measurement`]).
    pub fn digest(&self) -> [u8; 32] {
        match self {
            LaunchMeasurement::Snp { values, .. } => {
                measurement::snp_digest(&values.launch_measurement.0)
            }
            LaunchMeasurement::Tdx { values, .. } => measurement::tdx_digest(&values.registers()),
            LaunchMeasurement::Simulated { values, .. } => {
                measurement::simulated_digest(&values.measurement.0)
            }
        }
    }
}

impl TdxValues {
    /// As the verifier's register set.
    pub fn registers(&self) -> TdxRegisters {
        TdxRegisters {
            mrtd: self.mrtd.0,
            rtmr: [self.rtmr0.0, self.rtmr1.0, self.rtmr2.0],
        }
    }
}

/// One image release: its parts, prices, minimum TCB and launch
/// measurements. Fields in canonical key order (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    /// The release's name (`IMAGE_RELEASE`, the claims' `image_id`).
    pub release: String,
    /// SHA-256 of the kernel (bzImage).
    pub kernel_sha256: Hex<32>,
    /// SHA-256 of the initramfs.
    pub initrd_sha256: Hex<32>,
    /// The measured kernel command line.
    pub cmdline: String,
    /// The dm-verity root hash of the root disk (enclave, libtorch, models).
    pub disk_verity_root: Hex<32>,
    /// The models on the disk, sorted by name.
    pub models: Vec<ReleaseModel>,
    /// Where prices come from.
    pub prices_from: PricesFrom,
    /// Price bounds per model (provider prices must lie within them).
    pub price_bounds: BTreeMap<String, PriceBounds>,
    /// Longest lifetime of a request the enclave accepts, in seconds.
    pub max_request_lifetime_secs: u64,
    /// The least TCB per platform.
    pub min_tcb: MinTcb,
    /// Launch measurements, one per platform and VM shape.
    pub measurements: Vec<LaunchMeasurement>,
}

fn printable(what: &str, s: &str, max: usize) -> Result<(), ReleaseError> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(ReleaseError::Invalid(format!(
            "{what} {:?} must be 1 to {max} bytes without control characters",
            s.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

fn json_int(what: &str, v: u64) -> Result<(), ReleaseError> {
    if v > MAX_JSON_INT {
        return Err(ReleaseError::Invalid(format!(
            "{what} is {v}, above 2^53 - 1 (JSON integers must be exact in every reader)"
        )));
    }
    Ok(())
}

fn snippet(b: &[u8], at: usize) -> String {
    let end = (at + 24).min(b.len());
    String::from_utf8_lossy(b.get(at..end).unwrap_or_default()).into_owned()
}

impl ReleaseManifest {
    /// Checks everything the types do not: the version, names, sort order
    /// and uniqueness, price bounds, integer range, at least one
    /// measurement.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let bad = |m: String| Err(ReleaseError::Invalid(m));
        if self.version != MANIFEST_VERSION {
            return bad(format!(
                "version {} is not known (this build reads version {MANIFEST_VERSION})",
                self.version
            ));
        }
        printable("release", &self.release, MAX_NAME)?;
        printable("cmdline", &self.cmdline, MAX_CMDLINE)?;
        if self.models.is_empty() || self.models.len() > MAX_MODELS {
            return bad(format!("1 to {MAX_MODELS} models needed"));
        }
        for m in &self.models {
            printable("model name", &m.name, MAX_NAME)?;
            printable(&format!("model {} version", m.name), &m.version, MAX_NAME)?;
        }
        for w in self.models.windows(2) {
            if w[0].name >= w[1].name {
                return bad(format!(
                    "models must be sorted by name, each once: {:?} comes before {:?}",
                    w[0].name, w[1].name
                ));
            }
        }
        for (name, b) in &self.price_bounds {
            if !self.models.iter().any(|m| &m.name == name) {
                return bad(format!(
                    "price_bounds names {name:?}, which is not a model of the release"
                ));
            }
            for (part, [lo, hi]) in [("prompt", b.prompt), ("completion", b.completion)] {
                json_int(&format!("price_bounds.{name}.{part}"), hi)?;
                if lo > hi {
                    return bad(format!(
                        "price_bounds.{name}.{part}: low {lo} is above high {hi}"
                    ));
                }
            }
        }
        match self.prices_from {
            PricesFrom::Release if !self.price_bounds.is_empty() => {
                return bad("prices_from = \"release\" takes no price_bounds".into())
            }
            PricesFrom::Provider => {
                if let Some(m) = self
                    .models
                    .iter()
                    .find(|m| !self.price_bounds.contains_key(&m.name))
                {
                    return bad(format!(
                        "prices_from = \"provider\" needs price_bounds for every model; {:?} has none",
                        m.name
                    ));
                }
            }
            PricesFrom::Release => {}
        }
        if self.max_request_lifetime_secs == 0 {
            return bad("max_request_lifetime_secs must be at least 1".into());
        }
        json_int("max_request_lifetime_secs", self.max_request_lifetime_secs)?;
        if self.measurements.is_empty() || self.measurements.len() > MAX_MEASUREMENTS {
            return bad(format!(
                "1 to {MAX_MEASUREMENTS} measurements needed (a release without one cannot be listed: its digests are what the registry keeps)"
            ));
        }
        for m in &self.measurements {
            if m.shape().1 == 0 {
                return bad(format!("a {} measurement with vcpus = 0", m.platform()));
            }
            if let LaunchMeasurement::Tdx { memory_mib: 0, .. } = m {
                return bad("a tdx measurement with memory_mib = 0".into());
            }
        }
        for w in self.measurements.windows(2) {
            if w[0].shape() >= w[1].shape() {
                return bad(format!(
                    "measurements must be sorted by platform (snp, tdx, simulated), vcpus and memory_mib, each shape once: {} with {} vCPUs comes after {} with {} vCPUs",
                    w[1].platform(),
                    w[1].shape().1,
                    w[0].platform(),
                    w[0].shape().1
                ));
            }
        }
        let mut digests: Vec<[u8; 32]> = self.measurements.iter().map(|m| m.digest()).collect();
        digests.sort_unstable();
        if digests.windows(2).any(|w| w[0] == w[1]) {
            return bad("two measurement entries have the same values".into());
        }
        Ok(())
    }

    /// Put the lists in canonical order (models by name, measurements by
    /// platform, vCPUs, memory). For writers; [`Self::validate`] still
    /// refuses duplicates.
    pub fn sort(&mut self) {
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
        self.measurements.sort_by_key(|m| m.shape());
    }

    /// The canonical bytes (see the module doc), for a manifest that
    /// [`validates`](Self::validate).
    pub fn to_canonical(&self) -> Result<Vec<u8>, ReleaseError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(|e| ReleaseError::Json(e.to_string()))
    }

    /// Decode canonical bytes strictly: at most [`MAX_MANIFEST`] bytes, the
    /// exact shape (unknown keys refused), valid values, and bytes equal to
    /// [`Self::to_canonical`] of the result (otherwise
    /// [`ReleaseError::NotCanonical`] says where they differ).
    pub fn from_canonical(bytes: &[u8]) -> Result<ReleaseManifest, ReleaseError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(ReleaseError::TooLarge(bytes.len()));
        }
        let m: ReleaseManifest =
            serde_json::from_slice(bytes).map_err(|e| ReleaseError::Json(e.to_string()))?;
        let canonical = m.to_canonical()?;
        if canonical != bytes {
            let offset = canonical
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(canonical.len().min(bytes.len()));
            return Err(ReleaseError::NotCanonical {
                offset,
                got: snippet(bytes, offset),
                want: snippet(&canonical, offset),
            });
        }
        Ok(m)
    }

    /// SHA-256 of the canonical bytes: the release's key in the registry.
    pub fn manifest_hash(&self) -> Result<[u8; 32], ReleaseError> {
        Ok(Sha256::digest(self.to_canonical()?).into())
    }

    /// Every measurement digest, `(platform byte, SHA-256(platform ‖
    /// values))`, in manifest order: what the registry stores for the
    /// release (platform 1 SNP, 2 TDX, 0xff simulated).
    pub fn measurement_digests(&self) -> Vec<(u8, [u8; 32])> {
        self.measurements
            .iter()
            .map(|m| (m.platform().byte(), m.digest()))
            .collect()
    }

    /// The reference values a verifier derives its policy from
    /// (`cocoon_verifier::policy::derive::from_releases`).
    pub fn reference(&self) -> Result<ReleaseReference, ReleaseError> {
        let mut r = ReleaseReference {
            release: self.release.clone(),
            manifest_hash: self.manifest_hash()?,
            snp: Vec::new(),
            tdx: Vec::new(),
            simulated: Vec::new(),
            min_tcb: ReleaseMinTcb {
                snp: self.min_tcb.snp.map(|t| TcbParts {
                    fmc: t.fmc,
                    bootloader: t.bootloader,
                    tee: t.tee,
                    snp: t.snp,
                    microcode: t.microcode,
                }),
                tdx_tee_tcb_svn: self.min_tcb.tdx.map(|t| t.tee_tcb_svn.0),
            },
        };
        for m in &self.measurements {
            match m {
                LaunchMeasurement::Snp { values, .. } => r.snp.push(values.launch_measurement.0),
                LaunchMeasurement::Tdx { values, .. } => r.tdx.push(values.registers()),
                LaunchMeasurement::Simulated { values, .. } => {
                    r.simulated.push(values.measurement.0)
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid manifest with one measurement per platform.
    pub(crate) fn sample() -> ReleaseManifest {
        ReleaseManifest {
            version: 1,
            release: "cocoon-guest-0.2.0".into(),
            kernel_sha256: Hex([0xb3; 32]),
            initrd_sha256: Hex([0xc7; 32]),
            cmdline: "console=ttyS0 -- --verity-root 40/\"x\"".into(),
            disk_verity_root: Hex([0x40; 32]),
            models: vec![
                ReleaseModel {
                    name: "all-minilm-l6-v2".into(),
                    version: "0.1.0".into(),
                    sha256: Hex([1; 32]),
                    tokenizer_sha256: Hex([2; 32]),
                },
                ReleaseModel {
                    name: "smollm2-135m-instruct".into(),
                    version: "0.1.2".into(),
                    sha256: Hex([3; 32]),
                    tokenizer_sha256: Hex([4; 32]),
                },
            ],
            prices_from: PricesFrom::Provider,
            price_bounds: [
                (
                    "all-minilm-l6-v2".to_string(),
                    PriceBounds {
                        prompt: [1, 10_000],
                        completion: [0, 0],
                    },
                ),
                (
                    "smollm2-135m-instruct".to_string(),
                    PriceBounds {
                        prompt: [1, 100_000],
                        completion: [1, 300_000],
                    },
                ),
            ]
            .into(),
            max_request_lifetime_secs: 600,
            min_tcb: MinTcb {
                snp: Some(SnpMinTcb {
                    fmc: None,
                    bootloader: 10,
                    tee: 0,
                    snp: 23,
                    microcode: 213,
                }),
                tdx: None,
            },
            measurements: vec![
                LaunchMeasurement::Snp {
                    vcpus: 2,
                    values: SnpValues {
                        launch_measurement: Hex([0x5a; 48]),
                    },
                },
                LaunchMeasurement::Tdx {
                    vcpus: 2,
                    memory_mib: 2048,
                    values: TdxValues {
                        mrtd: Hex([0x11; 48]),
                        rtmr0: Hex([0x22; 48]),
                        rtmr1: Hex([0x33; 48]),
                        rtmr2: Hex([0x44; 48]),
                    },
                },
                LaunchMeasurement::Simulated {
                    vcpus: 1,
                    values: SimulatedValues {
                        measurement: Hex([0xee; 48]),
                    },
                },
            ],
        }
    }

    #[test]
    fn canonical_bytes_have_the_documented_layout() {
        let b = sample().to_canonical().unwrap();
        let text = std::str::from_utf8(&b).unwrap();
        assert!(
            text.starts_with(
                "{\"version\":1,\"release\":\"cocoon-guest-0.2.0\",\"kernel_sha256\":\"b3b3"
            ),
            "{text}"
        );
        assert!(!text.contains(char::is_whitespace) || text.contains("console=ttyS0 --"));
        assert!(
            text.contains("\"cmdline\":\"console=ttyS0 -- --verity-root 40/\\\"x\\\"\""),
            "{text}"
        );
        assert!(text.contains("\"prices_from\":\"provider\",\"price_bounds\":{\"all-minilm-l6-v2\":{\"prompt\":[1,10000],\"completion\":[0,0]},"), "{text}");
        assert!(text.contains("\"min_tcb\":{\"snp\":{\"fmc\":null,\"bootloader\":10,\"tee\":0,\"snp\":23,\"microcode\":213},\"tdx\":null}"), "{text}");
        assert!(
            text.contains(
                "{\"platform\":\"snp\",\"vcpus\":2,\"values\":{\"launch_measurement\":\"5a5a"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "{\"platform\":\"tdx\",\"vcpus\":2,\"memory_mib\":2048,\"values\":{\"mrtd\":\"1111"
            ),
            "{text}"
        );
        assert!(text.ends_with("{\"platform\":\"simulated\",\"vcpus\":1,\"values\":{\"measurement\":\"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"}}]}"), "{text}");
        let back = ReleaseManifest::from_canonical(&b).unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            back.manifest_hash().unwrap(),
            <[u8; 32]>::from(Sha256::digest(&b))
        );
    }

    #[test]
    fn digests_follow_the_shared_formula() {
        let d = sample().measurement_digests();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], (1, measurement::snp_digest(&[0x5a; 48])));
        let mut pre = vec![2u8];
        for v in [0x11u8, 0x22, 0x33, 0x44] {
            pre.extend_from_slice(&[v; 48]);
        }
        assert_eq!(d[1], (2, <[u8; 32]>::from(Sha256::digest(&pre))));
        assert_eq!(d[2], (0xff, measurement::simulated_digest(&[0xee; 48])));
        let r = sample().reference().unwrap();
        let from_ref: Vec<(u8, [u8; 32])> = r
            .digests()
            .into_iter()
            .map(|(p, d)| (p.byte(), d))
            .collect();
        assert_eq!(from_ref, d);
        assert_eq!(r.min_tcb.snp.unwrap().snp, 23);
    }

    #[test]
    fn non_canonical_input_is_refused_with_the_place() {
        let b = sample().to_canonical().unwrap();
        let text = String::from_utf8(b.clone()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (
                text.replacen(",\"release\"", ", \"release\"", 1),
                "first difference at byte 13",
            ),
            (format!("{text}\n"), "first difference at byte"),
            (text.replacen("b3b3", "B3B3", 1), "lowercase hex"),
            (
                text.replacen("\"version\":1", "\"version\":2", 1),
                "version 2 is not known",
            ),
            (
                text.replacen("\"version\":1", "\"version\":1.0", 1),
                "invalid type",
            ),
            (
                text.replacen("\"release\":", "\"extra\":1,\"release\":", 1),
                "unknown field `extra`",
            ),
            (
                text.replacen("\"max_request_lifetime_secs\":600,", "", 1),
                "missing field `max_request_lifetime_secs`",
            ),
            (
                text.replacen(
                    "\"max_request_lifetime_secs\":600",
                    "\"max_request_lifetime_secs\":9007199254740992",
                    1,
                ),
                "above 2^53 - 1",
            ),
            (
                text.replacen(
                    "{\"platform\":\"simulated\",\"vcpus\":1,\"values\":{\"measurement\"",
                    "{\"platform\":\"snp\",\"vcpus\":1,\"values\":{\"launch_measurement\"",
                    1,
                ),
                "sorted by platform",
            ),
            (
                text.replacen(
                    "{\"snp\":{\"fmc\":null",
                    "{\"tdx\":null,\"snp\":{\"fmc\":null",
                    1,
                )
                .replacen(",\"tdx\":null}", "}", 1),
                "first difference",
            ),
            (
                text.replacen(
                    "\"vcpus\":2,\"values\"",
                    "\"vcpus\":2,\"x\":1,\"values\"",
                    1,
                ),
                "unknown field `x`",
            ),
            (
                text.replacen("\"platform\":\"snp\"", "\"platform\":\"sev\"", 1),
                "unknown variant `sev`",
            ),
        ];
        for (input, want) in cases {
            match ReleaseManifest::from_canonical(input.as_bytes()) {
                Ok(_) if input == text => {}
                Ok(_) => panic!("accepted: {input}"),
                Err(e) => assert!(e.to_string().contains(want), "{e}\nwanted {want:?}"),
            }
        }
        // Key order is part of the form.
        let reordered = text.replacen(
            "{\"version\":1,\"release\":\"cocoon-guest-0.2.0\",",
            "{\"release\":\"cocoon-guest-0.2.0\",\"version\":1,",
            1,
        );
        assert!(matches!(
            ReleaseManifest::from_canonical(reordered.as_bytes()),
            Err(ReleaseError::NotCanonical { offset: 2, .. })
        ));
        assert!(matches!(
            ReleaseManifest::from_canonical(&vec![b' '; MAX_MANIFEST + 1]),
            Err(ReleaseError::TooLarge(_))
        ));
    }

    #[test]
    fn invalid_values_are_named() {
        let check = |f: &dyn Fn(&mut ReleaseManifest), want: &str| {
            let mut m = sample();
            f(&mut m);
            let e = m.to_canonical().unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwanted {want:?}");
        };
        check(&|m| m.measurements.clear(), "1 to 256 measurements");
        check(&|m| m.models.swap(0, 1), "sorted by name");
        check(&|m| m.release = "a\nb".into(), "without control characters");
        check(
            &|m| m.price_bounds.get_mut("all-minilm-l6-v2").unwrap().prompt = [5, 4],
            "low 5 is above high 4",
        );
        check(
            &|m| {
                m.price_bounds.remove("all-minilm-l6-v2");
            },
            "needs price_bounds for every model",
        );
        check(
            &|m| m.prices_from = PricesFrom::Release,
            "takes no price_bounds",
        );
        check(
            &|m| {
                m.price_bounds.insert(
                    "x".into(),
                    PriceBounds {
                        prompt: [0, 0],
                        completion: [0, 0],
                    },
                );
            },
            "not a model",
        );
        check(
            &|m| {
                let d = m.measurements[0];
                m.measurements.insert(0, d);
            },
            "each shape once",
        );
        check(
            &|m| {
                if let LaunchMeasurement::Snp { vcpus, .. } = &mut m.measurements[0] {
                    *vcpus = 0
                }
            },
            "vcpus = 0",
        );
        // sort() fixes order, not duplicates.
        let mut m = sample();
        m.measurements.reverse();
        m.models.reverse();
        m.sort();
        assert_eq!(m, sample());
    }
}
