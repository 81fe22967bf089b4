//! Offline verification of confidential-VM evidence for Cocoon.
//!
//! A client runs this crate before any key material leaves its machine. It
//! owns certificate chains, signatures, TCB checks and the comparison of
//! evidence against a [`policy`]; it must not touch the network, the file
//! system or the clock. Time is always an argument ([`UnixTime`]), collateral
//! is always passed in, and every failure is a [`Rejection`] that lists each
//! shortfall in words a person can act on. Nothing fails open: missing
//! collateral, an unknown field value or unparsable input is a rejection.
//!
//! Results that prove something are types only this crate can build:
//! [`snp::VerifiedSnp`], [`tdx::VerifiedTdx`],
//! [`nvidia::device::VerifiedDevice`], [`nvidia::gpus::VerifiedGpus`] and,
//! for a whole bundle, [`VerifiedEnclave`], which is what the rest of the
//! product requires before it trusts an enclave's keys.
//!
//! * [`snp`] — AMD SEV-SNP: pinned ARKs (Milan, Genoa, Turin) with their
//!   ASKs and ASVKs, ARK → ASK/ASVK → VCEK/VLEK chains (RSA-PSS SHA-384),
//!   the report signature (ECDSA P-384), the VCEK/VLEK extension binding
//!   (product, TCB, hwID = chip_id), a VEK handed in as a PEM bundle with
//!   its ASK/ARK, and the SNP policy; [`snp_crl`] judges AMD's CRLs
//!   (collateral, `revocation` in `[snp]`) for those chains.
//! * [`tdx`] — Intel TDX quotes with bundled collateral; [`tdx_core`] is
//!   our own DCAP core ([`TdxVerifier`], with collateral set, PCK chain and
//!   per-item caches), pinned to our Intel root, and [`tdx_tcb`] its TCB-level
//!   evaluation. `dcap-qvl` is the tests' differential oracle.
//! * [`nvidia`] — H100 GPUs and NVSwitches: the pinned NVIDIA roots, one
//!   device's SPDM evidence, RIMs (strict XML, Canonical XML 1.1, XML-DSig),
//!   OCSP responses as revocation collateral, and a whole set under `[gpu]`.
//! * [`enclave`] — the evidence bundle: platform evidence plus claims bound
//!   into its report data, and the GPU binding (the set's digest in the
//!   claims, the session nonce in every report); [`verify`]`(bundle,
//!   &policy, now)` returns a [`VerifiedEnclave`].
//! * [`policy`] — reference values, each required or explicitly skipped
//!   ([`Check::Require`], [`Check::Skip`]), and their TOML form: the unified
//!   [`Policy`] is `release` plus `[snp]`, `[tdx]` and `[gpu]`.
//! * `roots` — the one pinned-certificate type (every bundled root and
//!   intermediate, pinned by the SHA-256 of its DER).
//!
//! Two signature backends: aws-lc-rs (feature `aws-lc`, the default) and
//! pure-Rust RustCrypto (`--no-default-features`, which builds for wasm32).
//! The feature `test-roots` (tests only, never in a release) lets tests
//! that sign their own chains add trust roots. The `cocoon-verify` binary
//! (feature `cli`: `snp`, `tdx`, `gpu`, `bundle`, `policy init`, `explain`)
//! is the only part that reads files or the clock. The library must not
//! pull tokio, tch, openssl, reqwest or any other I/O crate
//! (`.ci/check-deps.sh` checks its normal dependency tree).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod crypto;
/// The signature backend this build verifies with: `"aws-lc"` (feature
/// `aws-lc`) or `"rustcrypto"` (pure Rust, as wasm32 builds). Lets a test
/// suite prove which one it ran, since cargo unifies features across a
/// build's packages.
pub const SIGNATURE_BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc"
} else {
    "rustcrypto"
};

pub mod enclave;
pub mod nvidia;
pub mod policy;
mod roots;
pub mod snp;
pub mod snp_crl;
pub mod tdx;
pub mod tdx_core;
mod tdx_json;
pub mod tdx_tcb;
mod verified_cache;
mod x509;

use core::fmt;

pub use enclave::{verify, VerifiedEnclave};
pub use policy::{Check, Policy, SnpPolicy, TdxPolicy};
pub use snp::{verify_snp, SnpVerifier, VerifiedSnp};
pub use tdx_core::{TdxCachedItems, TdxVerifier};
pub use x509::CertError;

/// Seconds since the Unix epoch, UTC. The verifier never reads a clock:
/// callers pass the time at which evidence must be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

/// What kind of shortfall a [`Reason`] is, for programs that react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonKind {
    /// The evidence could not be parsed.
    Malformed,
    /// A certificate could not be parsed or is not of the expected kind.
    Certificate,
    /// The certificate chain does not lead to a pinned root.
    Chain,
    /// A certificate is not valid at the given time.
    Expired,
    /// The evidence signature does not verify.
    Signature,
    /// The signing key's certificate does not match the evidence (TCB, chip ID, product).
    KeyBinding,
    /// A field holds a value the specification does not define.
    UnknownValue,
    /// The evidence does not meet the policy.
    Policy,
    /// Collateral (CRLs, TCB info, QE identity) is missing or unusable.
    Collateral,
    /// The platform's TCB level is not acceptable (no matching level, or a
    /// status the policy does not allow).
    Tcb,
    /// The claims are not bound to the hardware report, or are malformed.
    Claims,
    /// A certificate is revoked (or its status is unknown to its issuer).
    Revoked,
}

/// One shortfall of the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// What kind of shortfall this is.
    pub kind: ReasonKind,
    /// A sentence a person can act on.
    pub message: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Evidence was not accepted. Lists every shortfall found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    reasons: Vec<Reason>,
}

impl Rejection {
    /// A rejection with one reason.
    pub fn single(kind: ReasonKind, message: impl Into<String>) -> Self {
        Rejection {
            reasons: vec![Reason {
                kind,
                message: message.into(),
            }],
        }
    }
    /// Every shortfall, in the order found.
    pub fn reasons(&self) -> &[Reason] {
        &self.reasons
    }
    /// Whether any reason is of this kind.
    pub fn has(&self, kind: ReasonKind) -> bool {
        self.reasons.iter().any(|r| r.kind == kind)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "evidence rejected:")?;
        for r in &self.reasons {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Collects shortfalls while a verification runs to the end.
#[derive(Default)]
pub(crate) struct Findings {
    reasons: Vec<Reason>,
}

impl Findings {
    pub(crate) fn add(&mut self, kind: ReasonKind, message: impl Into<String>) {
        self.reasons.push(Reason {
            kind,
            message: message.into(),
        });
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }
    pub(crate) fn len(&self) -> usize {
        self.reasons.len()
    }
    pub(crate) fn into_rejection(self) -> Rejection {
        Rejection {
            reasons: self.reasons,
        }
    }
}
