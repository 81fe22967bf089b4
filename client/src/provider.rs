//! What the client knows about a provider after checking its evidence: the
//! enclaves that verified under the policy ([`AttestedEnclave`]), and why
//! the others did not.
//!
//! Owns the step from the bytes of `GET /v1/evidence` to a
//! [`VerifiedProvider`], sans IO: [`verify_evidence_list`] takes the bytes,
//! the policy and the time, and calls `cocoon_verifier::verify` on every
//! bundle. It never reads a socket or a clock; [`crate::Client`] does both.
//!
//! An [`AttestedEnclave`] can only be made here, from a
//! `cocoon_verifier::VerifiedEnclave` (which only the verifier can make), and
//! it is the only thing the client seals a request to: there is no way to
//! seal to a key that did not come out of verified claims.

use std::fmt;

use cocoon_attestation::bundle::Claims;
use cocoon_protocol::api::{ApiError, EvidenceList};
use cocoon_protocol::receipt::ReceiptVerifier;
use cocoon_protocol::seal::{EvidenceDigest, HpkePublicKey};
use cocoon_protocol::settings::ProviderSettings;
use cocoon_verifier::enclave::VerifiedPlatform;
use cocoon_verifier::{Policy, ReasonKind, Rejection, UnixTime, VerifiedEnclave};

/// Which platform vouched for an enclave, in the words the CLI and the
/// OpenAI extension use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlatformKind {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
    /// The simulated TEE: NOT confidential, the provider can read
    /// everything. Only a policy with the dangerous opt-in accepts it.
    Simulated,
    /// A platform this build of the client has no name for (the verifier
    /// accepted it under the policy).
    Unknown,
}

impl PlatformKind {
    /// `"sev-snp"`, `"tdx"`, `"simulated"` or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformKind::SevSnp => "sev-snp",
            PlatformKind::Tdx => "tdx",
            PlatformKind::Simulated => "simulated",
            PlatformKind::Unknown => "unknown",
        }
    }

    /// Whether hardware keeps the provider out (false for the simulated
    /// TEE).
    pub fn is_confidential(self) -> bool {
        !matches!(self, PlatformKind::Simulated)
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enclave whose evidence verified under the policy, with what the
/// client needs to seal to it: the HPKE key and the evidence digest from
/// its verified claims, and the receipt key its receipts must verify with.
#[derive(Debug, Clone)]
pub struct AttestedEnclave {
    enclave: VerifiedEnclave,
    digest: EvidenceDigest,
    hpke_public_key: HpkePublicKey,
    platform: PlatformKind,
    bundle_index: usize,
    settings: Option<ProviderSettings>,
}

impl AttestedEnclave {
    /// Accept a verified enclave whose claimed keys parse. The keys are
    /// checked here so that a claim the client could never use is reported
    /// with the other rejections instead of failing a request later.
    fn new(enclave: VerifiedEnclave, bundle_index: usize) -> Result<AttestedEnclave, Rejection> {
        let claims = enclave.claims();
        let mut problems = Vec::new();
        let hpke = HpkePublicKey::from_bytes(&claims.hpke_public_key);
        if hpke.is_err() {
            problems.push(format!(
                "the claims' hpke_public_key ({} bytes) is not an X25519 public key",
                claims.hpke_public_key.len()
            ));
        }
        if ReceiptVerifier::new(&claims.receipt_public_key).is_err() {
            problems.push(format!(
                "the claims' receipt_public_key ({} bytes) is not a P-256 SEC1 public key",
                claims.receipt_public_key.len()
            ));
        }
        let settings = match claims
            .provider_settings
            .as_deref()
            .map(ProviderSettings::from_cbor)
        {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                problems.push(format!("the claims' provider_settings: {e}"));
                None
            }
        };
        let hpke_public_key = match hpke {
            Ok(k) if problems.is_empty() => k,
            _ => return Err(Rejection::single(ReasonKind::Claims, problems.join("; "))),
        };
        let platform = match enclave.platform() {
            VerifiedPlatform::Snp(_) => PlatformKind::SevSnp,
            VerifiedPlatform::Tdx(_) => PlatformKind::Tdx,
            VerifiedPlatform::Simulated(_) => PlatformKind::Simulated,
            _ => PlatformKind::Unknown,
        };
        Ok(AttestedEnclave {
            digest: EvidenceDigest::of_claims(enclave.claims_cbor()),
            enclave,
            hpke_public_key,
            platform,
            bundle_index,
            settings,
        })
    }

    /// The provider's settings bound in the verified claims (base prices,
    /// payment contract), when the enclave's release takes them from the
    /// provider; decoded once, here.
    pub fn provider_settings(&self) -> Option<&ProviderSettings> {
        self.settings.as_ref()
    }

    /// The verifier's proof.
    pub fn verified(&self) -> &VerifiedEnclave {
        &self.enclave
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        self.enclave.claims()
    }

    /// SHA-256 of the verified claims: what a request sealed to this
    /// enclave binds, and what the host routes by.
    pub fn evidence_digest(&self) -> EvidenceDigest {
        self.digest
    }

    /// The HPKE key requests are sealed to (from the verified claims).
    pub fn hpke_public_key(&self) -> &HpkePublicKey {
        &self.hpke_public_key
    }

    /// The key the enclave's receipts must verify with (SEC1, from the
    /// verified claims).
    pub fn receipt_public_key(&self) -> &[u8] {
        &self.enclave.claims().receipt_public_key
    }

    /// The platform that vouched for it.
    pub fn platform(&self) -> PlatformKind {
        self.platform
    }

    /// Position of its bundle in the provider's evidence list.
    pub fn bundle_index(&self) -> usize {
        self.bundle_index
    }

    /// The model names its claims list.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.claims().model_digests.iter().map(|m| m.name.as_str())
    }

    /// Whether its claims list `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models().any(|m| m == model)
    }
}

/// Why one bundle of the evidence list was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRejection {
    /// Position of the bundle in the evidence list.
    pub index: usize,
    /// Every shortfall the verifier found.
    pub rejection: Rejection,
}

impl fmt::Display for BundleRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "enclave evidence #{} rejected:", self.index)?;
        for r in self.rejection.reasons() {
            write!(f, "\n  - {r}")?;
        }
        Ok(())
    }
}

/// A provider's enclaves as checked at one time under one policy.
#[derive(Debug, Clone)]
pub struct VerifiedProvider {
    enclaves: Vec<AttestedEnclave>,
    rejected: Vec<BundleRejection>,
    release: String,
    verified_at: UnixTime,
}

impl VerifiedProvider {
    /// The enclaves that verified (never empty).
    pub fn enclaves(&self) -> &[AttestedEnclave] {
        &self.enclaves
    }

    /// The bundles that did not verify, with every reason. Nothing is ever
    /// sent to them.
    pub fn rejected(&self) -> &[BundleRejection] {
        &self.rejected
    }

    /// The image release named by the policy they verified under.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The time the evidence was checked at.
    pub fn verified_at(&self) -> UnixTime {
        self.verified_at
    }

    /// Every model some verified enclave serves, each once, in evidence
    /// order.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.enclaves.iter().flat_map(|e| e.models()) {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
        out
    }

    /// Keep only the enclaves `check` accepts; the others join the
    /// rejected with its reason (as a policy shortfall). Fails when none
    /// is left.
    pub(crate) fn retain(
        mut self,
        check: &(dyn Fn(&AttestedEnclave) -> Result<(), String> + Send + Sync),
    ) -> Result<VerifiedProvider, VerificationError> {
        let mut kept = Vec::with_capacity(self.enclaves.len());
        for e in std::mem::take(&mut self.enclaves) {
            match check(&e) {
                Ok(()) => kept.push(e),
                Err(m) => self.rejected.push(BundleRejection {
                    index: e.bundle_index,
                    rejection: Rejection::single(ReasonKind::Policy, m),
                }),
            }
        }
        self.rejected.sort_by_key(|r| r.index);
        if kept.is_empty() {
            return Err(VerificationError::NoneVerified(self.rejected));
        }
        self.enclaves = kept;
        Ok(self)
    }

    /// The verified enclaves that serve `model`.
    pub fn serving(&self, model: &str) -> impl Iterator<Item = &AttestedEnclave> {
        let model = model.to_string();
        self.enclaves.iter().filter(move |e| e.serves(&model))
    }
}

/// Why a provider's evidence gave no enclave to talk to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerificationError {
    /// The body of `GET /v1/evidence` is not an evidence list.
    #[error("the provider's evidence list is malformed: {0}")]
    MalformedList(#[from] ApiError),
    /// The list is empty: no enclave is ready.
    #[error("the provider lists no enclave evidence (no enclave is ready); nothing was sent")]
    NoEvidence,
    /// Evidence was listed, but no bundle verified under the policy.
    #[error("{}", describe_rejections(.0))]
    NoneVerified(Vec<BundleRejection>),
}

impl VerificationError {
    /// Every rejection, bundle by bundle (empty unless
    /// [`VerificationError::NoneVerified`]).
    pub fn rejections(&self) -> &[BundleRejection] {
        match self {
            VerificationError::NoneVerified(r) => r,
            _ => &[],
        }
    }
}

fn describe_rejections(r: &[BundleRejection]) -> String {
    let mut s = format!(
        "none of the provider's {} enclave evidence bundle(s) verified under the policy; nothing was sent",
        r.len()
    );
    for b in r {
        s.push('\n');
        s.push_str(&b.to_string());
    }
    s
}

/// Verify one enclave's evidence bound to a client's `nonce` (the body of
/// `GET /v1/evidence/nonce`) under `policy` at `now`: it must verify, its
/// claims must carry exactly `nonce`, and it must name the same HPKE and
/// receipt keys as `known` (the same enclave, attested again).
pub fn verify_nonce_evidence(
    bundle: &[u8],
    nonce: &[u8],
    known: &AttestedEnclave,
    policy: &Policy,
    now: UnixTime,
) -> Result<AttestedEnclave, Rejection> {
    let fresh = cocoon_verifier::verify(bundle, policy, now)
        .and_then(|v| AttestedEnclave::new(v, known.bundle_index))?;
    let (c, k) = (fresh.claims(), known.claims());
    let mut problems = Vec::new();
    if c.client_nonce.as_deref() != Some(nonce) {
        problems.push("the evidence does not carry the nonce this client asked for".to_string());
    }
    if c.hpke_public_key != k.hpke_public_key || c.receipt_public_key != k.receipt_public_key {
        problems.push("the evidence names other keys than the enclave it was asked of".to_string());
    }
    if problems.is_empty() {
        Ok(fresh)
    } else {
        Err(Rejection::single(ReasonKind::Claims, problems.join("; ")))
    }
}

/// Verify every bundle of an encoded evidence list (the body of
/// `GET /v1/evidence`) under `policy` at `now`. Succeeds when at least one
/// bundle verifies; the others are kept with their reasons.
pub fn verify_evidence_list(
    list_cbor: &[u8],
    policy: &Policy,
    now: UnixTime,
) -> Result<VerifiedProvider, VerificationError> {
    let list = EvidenceList::from_cbor(list_cbor)?;
    if list.0.is_empty() {
        return Err(VerificationError::NoEvidence);
    }
    let mut enclaves = Vec::new();
    let mut rejected = Vec::new();
    for (index, bundle) in list.0.iter().enumerate() {
        match cocoon_verifier::verify(bundle, policy, now)
            .and_then(|v| AttestedEnclave::new(v, index))
        {
            Ok(e) => enclaves.push(e),
            Err(rejection) => rejected.push(BundleRejection { index, rejection }),
        }
    }
    if enclaves.is_empty() {
        return Err(VerificationError::NoneVerified(rejected));
    }
    Ok(VerifiedProvider {
        enclaves,
        rejected,
        release: policy.release.clone(),
        verified_at: now,
    })
}
