//! Verifying an enclave's evidence bundle: platform evidence under the
//! policy's section for that platform, and the claims bound into it.
//!
//! Owns [`VerifiedEnclave`], the only value the rest of the product accepts
//! as proof that an enclave's keys may be trusted, and [`verify`]. The
//! claims binding is always enforced, whatever the policy says:
//! `report_data == SHA-512("cocoon-claims-v1" || claims_cbor)`.

use cocoon_attestation::bundle::{claims_report_data, Claims, EvidenceBundle, PlatformEvidence};

use cocoon_attestation::simulated::{SimulatedReport, SIMULATED_LABEL};

use cocoon_attestation::nvidia::{session_nonce, GpuEvidence};

use crate::nvidia::gpus::{verify_gpus, CcState, DeviceInput, VerifiedGpus};
use crate::policy::{Check, GpuPolicy, Policy, SimulatedTeePolicy};
use crate::snp::{SnpCertificates, SnpVerifier, VerifiedSnp};
use crate::tdx::{verify_tdx, VerifiedTdx};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// Which platform vouched for the enclave.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VerifiedPlatform {
    /// AMD SEV-SNP.
    Snp(Box<VerifiedSnp>),
    /// Intel TDX.
    Tdx(Box<VerifiedTdx>),
    /// The simulated TEE, accepted only because the policy opted in by name.
    /// NOT confidential.
    Simulated(VerifiedSimulated),
}

/// A simulated report whose self-signature verified, accepted under a policy
/// with the dangerous opt-in. It proves integrity in transit, nothing more.
#[derive(Debug, Clone)]
pub struct VerifiedSimulated {
    report: SimulatedReport,
}

impl VerifiedSimulated {
    /// The simulated report.
    pub fn report(&self) -> &SimulatedReport {
        &self.report
    }
}

fn verify_simulated(
    report: &[u8],
    signature: &[u8],
    p: &SimulatedTeePolicy,
) -> Result<VerifiedSimulated, Rejection> {
    use p256::ecdsa::signature::Verifier;
    let r = SimulatedReport::from_cbor(report)
        .map_err(|e| Rejection::single(ReasonKind::Malformed, format!("simulated report: {e}")))?;
    let mut f = Findings::default();
    if r.label != SIMULATED_LABEL {
        f.add(
            ReasonKind::UnknownValue,
            format!(
                "simulated report label {:?} is not {SIMULATED_LABEL:?}",
                r.label
            ),
        );
    }
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&r.public_key);
    let sig = p256::ecdsa::Signature::from_slice(signature);
    match (key, sig) {
        (Ok(k), Ok(s)) if k.verify(report, &s).is_ok() => {}
        _ => f.add(
            ReasonKind::Signature,
            "simulated report signature does not verify with the key inside it",
        ),
    }
    if let Check::Require(list) = &p.measurements {
        if !list.contains(&r.measurement) {
            f.add(
                ReasonKind::Policy,
                format!(
                    "simulated measurement not in policy: {}",
                    hex::encode(r.measurement)
                ),
            );
        }
    }
    if f.is_empty() {
        Ok(VerifiedSimulated { report: r })
    } else {
        Err(f.into_rejection())
    }
}

/// An enclave whose platform evidence met the policy and whose claims are
/// bound into that evidence. Only this crate builds it.
#[derive(Debug, Clone)]
pub struct VerifiedEnclave {
    platform: VerifiedPlatform,
    claims: Claims,
    claims_cbor: Vec<u8>,
    release: String,
    gpus: Option<VerifiedGpus>,
}

impl VerifiedEnclave {
    /// The verified platform evidence.
    pub fn platform(&self) -> &VerifiedPlatform {
        &self.platform
    }
    /// The enclave's claims (keys, image, models, epoch).
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
    /// The exact claims bytes that were bound.
    pub fn claims_cbor(&self) -> &[u8] {
        &self.claims_cbor
    }
    /// The image release the policy's reference values belong to.
    pub fn release(&self) -> &str {
        &self.release
    }
    /// The enclave's GPUs, when it carries GPU evidence (verified and
    /// bound to these claims).
    pub fn gpus(&self) -> Option<&VerifiedGpus> {
        self.gpus.as_ref()
    }
}

/// Check the bundle's GPU evidence against the claims and the policy.
///
/// The evidence must be the exact bytes whose SHA-256 the claims carry,
/// every report must answer the session nonce derived from the claims'
/// HPKE key and epoch, and the set must meet `[gpu]`. A policy must say
/// what it wants of GPUs whenever the evidence has them: GPU evidence under
/// a policy without a `[gpu]` table is a rejection that names the table
/// (after the evidence is still checked for signatures, chains and binding,
/// so every shortfall is listed). With a table, an enclave without GPU
/// evidence passes only when the table says `gpus = 0`.
fn verify_gpu_binding(
    bundle: &EvidenceBundle,
    claims: &Claims,
    policy: Option<&GpuPolicy>,
    now: UnixTime,
) -> Result<Option<VerifiedGpus>, Rejection> {
    let (digest, carried) = match (&claims.gpu_evidence_digest, &bundle.gpu) {
        (None, None) => {
            return match policy {
                Some(p) if p.gpus != Check::Require(0) => Err(Rejection::single(
                    ReasonKind::Policy,
                    "the enclave carries no GPU evidence, and the policy's [gpu] table does not say gpus = 0",
                )),
                _ => Ok(None),
            }
        }
        (None, Some(_)) => {
            return Err(Rejection::single(
                ReasonKind::Claims,
                "the bundle carries GPU evidence the claims do not name: it is not bound to this enclave",
            ))
        }
        (Some(_), None) => {
            return Err(Rejection::single(
                ReasonKind::Claims,
                "the claims name GPU evidence, but the bundle does not carry it",
            ))
        }
        (Some(d), Some(g)) => (d, g),
    };
    let have = crate::crypto::sha256(&carried.evidence_cbor);
    if &have != digest {
        return Err(Rejection::single(
            ReasonKind::Claims,
            format!(
                "the GPU evidence is not the one bound into the claims: its SHA-256 is {}, the claims say {}",
                hex::encode(have),
                hex::encode(digest)
            ),
        ));
    }
    let set = GpuEvidence::from_cbor(&carried.evidence_cbor)
        .map_err(|e| Rejection::single(ReasonKind::Malformed, format!("GPU evidence: {e}")))?;
    let nonce = session_nonce(&claims.hpke_public_key, claims.epoch);
    if set.nonce != nonce {
        return Err(Rejection::single(
            ReasonKind::Claims,
            format!(
                "the GPU evidence was taken for nonce {}, not this enclave's session nonce {}",
                hex::encode(set.nonce),
                hex::encode(nonce)
            ),
        ));
    }
    // No silent skip: evidence with GPUs needs a policy that says what it
    // wants of them (CC mode, RIMs, revocation, counts), even if "skip".
    let no_table = policy.is_none().then(|| crate::Reason {
        kind: ReasonKind::Policy,
        message: "the enclave carries GPU evidence but the policy has no [gpu] table: add one to say what GPUs must meet (cc_mode = \"on\" enforces confidential-computing mode; every key may be \"skip\")".into(),
    });
    let integrity_only = GpuPolicy::integrity_only();
    let inputs: Vec<DeviceInput<'_>> = set
        .devices
        .iter()
        .map(|d| DeviceInput {
            report: &d.report,
            cert_chain: &d.cert_chain,
        })
        .collect();
    let cc = CcState {
        cc_enabled: set.cc_enabled,
        devtools: set.devtools,
    };
    let checked = verify_gpus(
        &inputs,
        &carried.collateral,
        policy.unwrap_or(&integrity_only),
        Some(&nonce),
        Some(cc),
        now,
    );
    match (checked, no_table) {
        (Ok(v), None) => Ok(Some(v)),
        (Err(r), None) => Err(r),
        (Ok(_), Some(reason)) => Err(Rejection {
            reasons: vec![reason],
        }),
        (Err(mut r), Some(reason)) => {
            r.reasons.insert(0, reason);
            Err(r)
        }
    }
}

/// How far ahead of the verifier's clock a report's `issued_at` may lie
/// (clock skew between the enclave and the client), in seconds.
pub const MAX_ISSUED_AHEAD_SECS: u64 = 300;

/// The policy's `max_evidence_age`: the report (its claims' `issued_at`,
/// bound into the hardware report) must be at most that many seconds old at
/// `now`, and not more than [`MAX_ISSUED_AHEAD_SECS`] in the future.
/// `Skip` checks neither.
fn check_evidence_age(
    claims: &Claims,
    max_age: Check<u64>,
    now: UnixTime,
) -> Result<(), Rejection> {
    let Check::Require(max) = max_age else {
        return Ok(());
    };
    let issued = claims.issued_at;
    if issued > now.0.saturating_add(MAX_ISSUED_AHEAD_SECS) {
        return Err(Rejection::single(
            ReasonKind::Claims,
            format!(
                "the evidence says it was issued at {issued} (Unix seconds), more than {MAX_ISSUED_AHEAD_SECS} s after the verification time {}",
                now.0
            ),
        ));
    }
    let age = now.0.saturating_sub(issued);
    if age > max {
        return Err(Rejection::single(
            ReasonKind::Policy,
            format!(
                "the evidence is {age} s old (issued at {issued}, refresh {}); the policy's max_evidence_age is {max} s: fetch fresh evidence",
                claims.refresh
            ),
        ));
    }
    Ok(())
}

/// Verify an encoded evidence bundle under `policy` at time `now`.
pub fn verify(bundle: &[u8], policy: &Policy, now: UnixTime) -> Result<VerifiedEnclave, Rejection> {
    let bundle = EvidenceBundle::from_cbor(bundle)
        .map_err(|e| Rejection::single(ReasonKind::Malformed, e.to_string()))?;
    verify_bundle(&bundle, policy, now)
}

/// Verify a decoded evidence bundle under `policy` at time `now`.
pub fn verify_bundle(
    bundle: &EvidenceBundle,
    policy: &Policy,
    now: UnixTime,
) -> Result<VerifiedEnclave, Rejection> {
    let expected = claims_report_data(&bundle.claims_cbor);
    let (platform, report_data) = match &bundle.platform {
        PlatformEvidence::Snp {
            report,
            vek,
            chain,
            crl,
        } => {
            let Some(p) = &policy.snp else {
                return Err(Rejection::single(
                    ReasonKind::Policy,
                    "the policy has no [snp] section, so SEV-SNP evidence is not accepted",
                ));
            };
            let certs = SnpCertificates {
                vek,
                chain,
                crl: crl.as_deref(),
            };
            let v = SnpVerifier::new().verify(report, certs, p, now)?;
            let rd = *v.report().report_data();
            (VerifiedPlatform::Snp(Box::new(v)), rd)
        }
        PlatformEvidence::Tdx { quote, collateral } => {
            let Some(p) = &policy.tdx else {
                return Err(Rejection::single(
                    ReasonKind::Policy,
                    "the policy has no [tdx] section, so TDX evidence is not accepted",
                ));
            };
            let v = verify_tdx(quote, collateral, p, now).map_err(|(r, _)| r)?;
            let rd = *v.td_report().report_data();
            (VerifiedPlatform::Tdx(Box::new(v)), rd)
        }
        PlatformEvidence::Simulated { report, signature } => {
            let Some(p) = &policy.simulated else {
                return Err(Rejection::single(
                    ReasonKind::Policy,
                    format!(
                        "simulated TEE evidence is NOT confidential (no hardware isolation; the host can read everything); it is accepted only by a policy with a [{}] table that sets {} = true",
                        SimulatedTeePolicy::TABLE,
                        SimulatedTeePolicy::OPT_IN
                    ),
                ));
            };
            let v = verify_simulated(report, signature, p)?;
            let rd = v.report.report_data;
            (VerifiedPlatform::Simulated(v), rd)
        }
        _ => {
            return Err(Rejection::single(
                ReasonKind::UnknownValue,
                "platform evidence of a kind this verifier does not know",
            ))
        }
    };
    if report_data != expected {
        return Err(Rejection::single(
            ReasonKind::Claims,
            format!(
                "the claims are not bound to the hardware report: report_data is {}, SHA-512(\"cocoon-claims-v1\" || claims) is {}",
                hex::encode(report_data),
                hex::encode(expected)
            ),
        ));
    }
    let claims = Claims::from_cbor(&bundle.claims_cbor)
        .map_err(|e| Rejection::single(ReasonKind::Claims, format!("claims: {e}")))?;
    check_evidence_age(&claims, policy.max_evidence_age, now)?;
    let gpus = verify_gpu_binding(bundle, &claims, policy.gpu.as_ref(), now)?;
    Ok(VerifiedEnclave {
        platform,
        claims,
        claims_cbor: bundle.claims_cbor.clone(),
        release: policy.release.clone(),
        gpus,
    })
}
