//! The simulated TEE as tests use it: the policy that accepts it by its
//! dangerous name, and evidence made the way the simulated attestation
//! provider makes it at boot (a fresh P-256 key signs a report whose
//! `report_data` binds the claims). NOT confidential: tests only.

use cocoon_attestation::bundle::{claims_report_data, EvidenceBundle, PlatformEvidence};
use cocoon_attestation::simulated::{SimulatedReport, SIMULATED_LABEL};
use cocoon_verifier::Policy;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

/// The release the test policies name.
pub const RELEASE: &str = "cocoon-dev";

/// The launch measurement the in-test enclaves report.
pub const MEASUREMENT: [u8; 48] = [0x5a; 48];

/// A policy file that accepts the simulated TEE (and no other platform),
/// with `measurement` pinned or, for `None`, skipped; evidence of any age.
pub fn policy_toml(measurement: Option<&[u8; 48]>) -> String {
    let measurements = match measurement {
        Some(m) => format!("[\"{}\"]", hex::encode(m)),
        None => "\"skip\"".into(),
    };
    format!(
        "release = \"{RELEASE}\"\nmax_evidence_age = \"skip\"\n[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = {measurements}\n"
    )
}

/// [`policy_toml`], read by the verifier.
pub fn policy(measurement: Option<&[u8; 48]>) -> Policy {
    Policy::from_toml(&policy_toml(measurement)).expect("the simulated policy reads")
}

/// A fresh report-signing key.
pub fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

/// The simulated report for `claims_cbor` under `key`'s public key.
pub fn report(claims_cbor: &[u8], key: &SigningKey, measurement: [u8; 48]) -> SimulatedReport {
    SimulatedReport {
        label: SIMULATED_LABEL.into(),
        measurement,
        report_data: claims_report_data(claims_cbor),
        public_key: key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    }
}

/// `report` as CBOR, and `key`'s signature over those bytes.
pub fn sign(report: &SimulatedReport, key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    let bytes = report.to_cbor();
    let sig: Signature = key.sign(&bytes);
    (bytes, sig.to_bytes().to_vec())
}

/// A bundle of a simulated report, its signature and claims, without GPU
/// evidence.
pub fn bundle(report: Vec<u8>, signature: Vec<u8>, claims_cbor: Vec<u8>) -> Vec<u8> {
    EvidenceBundle {
        platform: PlatformEvidence::Simulated { report, signature },
        claims_cbor,
        gpu: None,
    }
    .to_cbor()
}

/// Evidence for `claims_cbor` as a simulated enclave gives it: `key`
/// signs the report for [`MEASUREMENT`] that binds the claims.
pub fn signed_bundle(claims_cbor: &[u8], key: &SigningKey) -> Vec<u8> {
    let (report, signature) = sign(&report(claims_cbor, key, MEASUREMENT), key);
    bundle(report, signature, claims_cbor.to_vec())
}

/// A release manifest of the simulated TEE whose only measurement is
/// `measurement` (1 vCPU), serving `model`; the image digests are fixed
/// placeholders (no image is built for the simulated TEE).
pub fn release_manifest(
    name: &str,
    model: &str,
    measurement: [u8; 48],
) -> cocoon_protocol::release::ReleaseManifest {
    use cocoon_protocol::release::*;
    ReleaseManifest {
        version: MANIFEST_VERSION,
        release: name.into(),
        kernel_sha256: Hex([1; 32]),
        initrd_sha256: Hex([2; 32]),
        cmdline: "console=ttyS0".into(),
        disk_verity_root: Hex([3; 32]),
        models: vec![ReleaseModel {
            name: model.into(),
            version: "1".into(),
            sha256: Hex([4; 32]),
            tokenizer_sha256: Hex([5; 32]),
        }],
        prices_from: PricesFrom::Release,
        price_bounds: Default::default(),
        max_request_lifetime_secs: 600,
        min_tcb: MinTcb::default(),
        measurements: vec![LaunchMeasurement::Simulated {
            vcpus: 1,
            values: SimulatedValues {
                measurement: Hex(measurement),
            },
        }],
    }
}
