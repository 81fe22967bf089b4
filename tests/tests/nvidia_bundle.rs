//! GPU evidence inside an evidence bundle: bound to the claims by digest and
//! to the enclave's session by nonce, checked under the policy's `[gpu]`
//! table. The platform is the simulated TEE (opted in by name); the GPU
//! reports are the real recorded H100 ones from the vectors.
//!
//! A real report can never answer a fresh session nonce (that needs the
//! GPU), so every bundle here that carries GPU evidence must be rejected:
//! each test shows one binding rule doing its job. Evidence that answers the
//! right nonce verifies in `nvidia_vectors.rs` (same code, `verify_gpus`).

use cocoon_attestation::bundle::{
    Claims, EvidenceBundle, GpuBundle, ModelDigest, PlatformEvidence,
};
use cocoon_attestation::nvidia::{session_nonce, DeviceEvidence, GpuCollateral, GpuEvidence};
use cocoon_test_kit::simulated;
use cocoon_tests::read_vector;
use cocoon_verifier::{verify, Policy, ReasonKind, UnixTime};

const NOW: UnixTime = UnixTime(1_790_000_000);

fn claims(gpu: Option<[u8; 32]>) -> Claims {
    Claims {
        hpke_public_key: vec![7; 32],
        receipt_public_key: vec![4; 65],
        image_id: "cocoon-dev".into(),
        model_digests: vec![ModelDigest {
            name: "m".into(),
            sha256: [9; 32],
            version: None,
            tokenizer_sha256: None,
        }],
        config_digest: [3; 32],
        gpu_evidence_digest: gpu,
        epoch: 42,
        issued_at: 42,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    }
}

fn bundle(claims: &Claims, gpu: Option<GpuBundle>) -> Vec<u8> {
    let claims_cbor = claims.to_cbor();
    let key = simulated::key();
    let (report, signature) = simulated::sign(
        &simulated::report(&claims_cbor, &key, simulated::MEASUREMENT),
        &key,
    );
    EvidenceBundle {
        platform: PlatformEvidence::Simulated { report, signature },
        claims_cbor,
        gpu,
    }
    .to_cbor()
}

fn policy(gpu_table: &str) -> Policy {
    Policy::from_toml(&format!(
        "{}{gpu_table}",
        cocoon_test_kit::simulated::policy_toml(None)
    ))
    .unwrap()
}

const STRICT_GPU: &str = "[gpu]\ngpus = 1\nswitches = 0\nmodels = [\"GH100\"]\nmin_driver = \"skip\"\nmin_vbios = \"skip\"\ncc_mode = \"on\"\nrims = \"skip\"\nrevocation = \"skip\"\n";
const NO_GPU: &str = "[gpu]\ngpus = 0\nswitches = \"skip\"\nmodels = \"skip\"\nmin_driver = \"skip\"\nmin_vbios = \"skip\"\ncc_mode = \"skip\"\nrims = \"skip\"\nrevocation = \"skip\"\n";

/// A real H100 report and chain, in an evidence set claiming `nonce`.
fn h100_set(nonce: [u8; 32]) -> GpuEvidence {
    let report = hex::decode(
        String::from_utf8(read_vector(
            "nvidia/h100-nvtrust-sample/hopperAttestationReport.txt",
        ))
        .unwrap()
        .trim(),
    )
    .unwrap();
    GpuEvidence {
        nonce,
        cc_enabled: true,
        devtools: false,
        devices: vec![DeviceEvidence {
            report,
            cert_chain: read_vector("nvidia/h100-nvtrust-sample/hopperCertChain.txt"),
        }],
    }
}

fn carried(set: &GpuEvidence) -> GpuBundle {
    GpuBundle {
        evidence_cbor: set.to_cbor(),
        collateral: GpuCollateral::default(),
    }
}

#[test]
fn an_enclave_without_gpus_passes_only_a_policy_that_says_gpus_0() {
    let b = bundle(&claims(None), None);
    assert!(verify(&b, &policy(""), NOW).unwrap().gpus().is_none());
    assert!(verify(&b, &policy(NO_GPU), NOW).is_ok());
    let r = verify(&b, &policy(STRICT_GPU), NOW).unwrap_err();
    assert!(r.has(ReasonKind::Policy), "{r}");
}

#[test]
fn gpu_evidence_the_claims_do_not_name_is_refused() {
    let c = claims(None);
    let set = h100_set(session_nonce(&c.hpke_public_key, c.epoch));
    let r = verify(&bundle(&c, Some(carried(&set))), &policy(""), NOW).unwrap_err();
    assert!(r.has(ReasonKind::Claims), "{r}");
}

#[test]
fn claims_naming_gpu_evidence_the_bundle_lacks_are_refused() {
    let r = verify(&bundle(&claims(Some([1; 32])), None), &policy(""), NOW).unwrap_err();
    assert!(r.has(ReasonKind::Claims), "{r}");
}

#[test]
fn gpu_evidence_other_than_the_bound_one_is_refused() {
    let base = claims(None);
    let set = h100_set(session_nonce(&base.hpke_public_key, base.epoch));
    let c = claims(Some(set.digest()));
    // Swap in other evidence (one flipped byte in the report) after binding.
    let mut other = set.clone();
    other.devices[0].report[100] ^= 1;
    let r = verify(&bundle(&c, Some(carried(&other))), &policy(""), NOW).unwrap_err();
    assert!(r.has(ReasonKind::Claims), "{r}");
    assert!(
        r.to_string().contains("not the one bound into the claims"),
        "{r}"
    );
}

#[test]
fn evidence_taken_for_another_nonce_is_refused() {
    // The recorded evidence set, honestly labelled with the nonce it answers:
    // not this enclave's session nonce, so it is a replay.
    let recorded_nonce: [u8; 32] =
        hex::decode("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
            .unwrap()
            .try_into()
            .unwrap();
    let set = h100_set(recorded_nonce);
    let c = claims(Some(set.digest()));
    let r = verify(&bundle(&c, Some(carried(&set))), &policy(STRICT_GPU), NOW).unwrap_err();
    assert!(r.has(ReasonKind::Claims), "{r}");
    assert!(r.to_string().contains("session nonce"), "{r}");
}

#[test]
fn reports_that_do_not_answer_the_session_nonce_are_refused() {
    // The set claims the session nonce, but the GPU signed another one.
    let base = claims(None);
    let set = h100_set(session_nonce(&base.hpke_public_key, base.epoch));
    let c = claims(Some(set.digest()));
    let r = verify(&bundle(&c, Some(carried(&set))), &policy(STRICT_GPU), NOW).unwrap_err();
    assert!(r.to_string().contains("nonce mismatch"), "{r}");
    // Whatever the policy, the nonce is checked.
    let r = verify(&bundle(&c, Some(carried(&set))), &policy(""), NOW).unwrap_err();
    assert!(r.to_string().contains("nonce mismatch"), "{r}");
}

#[test]
fn gpu_evidence_under_a_policy_without_a_gpu_table_is_refused_by_name() {
    let base = claims(None);
    let set = h100_set(session_nonce(&base.hpke_public_key, base.epoch));
    let c = claims(Some(set.digest()));
    let b = bundle(&c, Some(carried(&set)));
    // No [gpu] table: refused, naming the table, before anything else.
    let r = verify(&b, &policy(""), NOW).unwrap_err();
    let first = &r.reasons()[0];
    assert_eq!(first.kind, ReasonKind::Policy, "{r}");
    assert!(
        first.message.contains("the policy has no [gpu] table"),
        "{r}"
    );
    // The evidence is still checked, so its own shortfalls are listed too.
    assert!(r.to_string().contains("nonce mismatch"), "{r}");
    // With a table the complaint is gone (the nonce shortfall remains: a
    // recorded report cannot answer this enclave's session nonce).
    for table in [STRICT_GPU, NO_GPU] {
        let r = verify(&b, &policy(table), NOW).unwrap_err();
        assert!(!r.to_string().contains("[gpu] table"), "{r}");
    }
}
