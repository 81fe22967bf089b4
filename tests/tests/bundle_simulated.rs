//! The evidence bundle end to end on the simulated TEE: the claims binding
//! (report_data = SHA-512("cocoon-claims-v1" || claims)) accepts only the
//! claims that were bound, and simulated evidence is refused unless the
//! policy opts in by name.

use cocoon_attestation::bundle::{Claims, ModelDigest};
use cocoon_test_kit::simulated;
use cocoon_verifier::enclave::VerifiedPlatform;
use cocoon_verifier::{verify, Policy, ReasonKind, UnixTime};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

const NOW: UnixTime = UnixTime(1_790_000_000);
use simulated::MEASUREMENT;

fn claims(epoch: u64) -> Claims {
    Claims {
        hpke_public_key: vec![7; 32],
        receipt_public_key: vec![4; 65],
        image_id: "cocoon-dev".into(),
        model_digests: vec![ModelDigest {
            name: "all-minilm-l6-v2".into(),
            sha256: [9; 32],
            version: None,
            tokenizer_sha256: None,
        }],
        config_digest: [3; 32],
        gpu_evidence_digest: None,
        epoch,
        issued_at: epoch,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    }
}

/// What the simulated attestation provider does at boot: a fresh key signs a
/// report whose report_data binds the claims.
fn simulated_bundle(claims_cbor: &[u8], key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    simulated::sign(&simulated::report(claims_cbor, key, MEASUREMENT), key)
}

use simulated::bundle;

fn opted_in(measurement: &str) -> Policy {
    Policy::from_toml(&format!(
        "release = \"cocoon-dev\"\nmax_evidence_age = \"skip\"\n[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = {measurement}\n"
    ))
    .unwrap()
}

fn key() -> SigningKey {
    simulated::key()
}

#[test]
fn simulated_evidence_is_refused_without_the_named_opt_in() {
    let key = key();
    let c = claims(1).to_cbor();
    let (r, s) = simulated_bundle(&c, &key);
    let b = bundle(r, s, c);
    let snp_only = Policy::from_toml(
        "release = \"x\"\nmax_evidence_age = \"skip\"\n[snp]\nmeasurements = \"skip\"\nmin_tcb = \"skip\"\nvmpl = 0\nreport_data = \"skip\"\nhost_data = \"skip\"\nid_key_digests = \"skip\"\nauthor_key_digests = \"skip\"\nsmt = \"allowed\"\nrevocation = \"skip\"\n",
    )
    .unwrap();
    let rej = verify(&b, &snp_only, NOW).unwrap_err();
    assert!(rej.to_string().contains("NOT confidential"), "{rej}");
    assert!(Policy::from_toml("release = \"x\"\nmax_evidence_age = \"skip\"\n[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = false\nmeasurements = \"skip\"\n").is_err());
}

#[test]
fn bound_claims_are_accepted_with_the_opt_in() {
    let key = key();
    let c = claims(1).to_cbor();
    let (r, s) = simulated_bundle(&c, &key);
    let v = verify(
        &bundle(r, s, c.clone()),
        &opted_in(&format!("[\"{}\"]", hex::encode(MEASUREMENT))),
        NOW,
    )
    .unwrap();
    assert_eq!(v.claims(), &claims(1));
    assert_eq!(v.claims_cbor(), c.as_slice());
    assert_eq!(v.release(), "cocoon-dev");
    assert!(matches!(v.platform(), VerifiedPlatform::Simulated(_)));
}

#[test]
fn swapped_tampered_or_unpinned_evidence_is_rejected() {
    let key = key();
    let c1 = claims(1).to_cbor();
    let (r, s) = simulated_bundle(&c1, &key);
    let policy = opted_in("\"skip\"");
    // Claims from another epoch (e.g. a host replaying old keys) are not bound.
    let rej = verify(
        &bundle(r.clone(), s.clone(), claims(2).to_cbor()),
        &policy,
        NOW,
    )
    .unwrap_err();
    assert!(rej.has(ReasonKind::Claims), "{rej}");
    // A flipped report byte breaks the signature (or the report's structure).
    for at in 0..r.len() {
        let mut t = r.clone();
        t[at] ^= 1;
        assert!(
            verify(&bundle(t, s.clone(), c1.clone()), &policy, NOW).is_err(),
            "flip at {at} accepted"
        );
    }
    // Another key's signature.
    let other = key_sig_by_other(&r);
    assert!(verify(&bundle(r.clone(), other, c1.clone()), &policy, NOW)
        .unwrap_err()
        .has(ReasonKind::Signature));
    // A measurement the policy does not list.
    let pinned = opted_in(&format!("[\"{}\"]", "00".repeat(48)));
    assert!(verify(&bundle(r, s, c1), &pinned, NOW)
        .unwrap_err()
        .has(ReasonKind::Policy));
}

fn key_sig_by_other(report: &[u8]) -> Vec<u8> {
    let sig: Signature = key().sign(report);
    sig.to_bytes().to_vec()
}

#[test]
fn max_evidence_age_bounds_how_old_a_report_may_be() {
    let key = key();
    let issued = NOW.0 - 1_000;
    let mut c = claims(issued);
    c.issued_at = issued;
    c.refresh = 3;
    let cbor = c.to_cbor();
    let (r, s) = simulated_bundle(&cbor, &key);
    let b = bundle(r, s, cbor);
    let with_age = |age: &str| {
        Policy::from_toml(&format!(
            "release = \"cocoon-dev\"\nmax_evidence_age = {age}\n[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = \"skip\"\n"
        ))
        .unwrap()
    };
    // Young enough, exactly at the limit, and skipped.
    assert!(verify(&b, &with_age("3600"), NOW).is_ok());
    assert!(verify(&b, &with_age("1000"), NOW).is_ok());
    assert!(verify(&b, &with_age("\"skip\""), UnixTime(NOW.0 + 10_000_000)).is_ok());
    // Too old: a rejection that says how old and what the policy allows.
    let rej = verify(&b, &with_age("999"), NOW).unwrap_err();
    assert!(rej.has(ReasonKind::Policy), "{rej}");
    let text = rej.to_string();
    assert!(
        text.contains("1000 s old")
            && text.contains("max_evidence_age is 999 s")
            && text.contains("refresh 3"),
        "{text}"
    );
    // Issued further in the future than clock skew explains.
    let rej = verify(&b, &with_age("3600"), UnixTime(issued - 301)).unwrap_err();
    assert!(
        rej.to_string().contains("after the verification time"),
        "{rej}"
    );
    assert!(verify(&b, &with_age("3600"), UnixTime(issued - 300)).is_ok());
    // The key is required, and must be a positive number or "skip".
    for bad in [
        "",
        "max_evidence_age = 0\n",
        "max_evidence_age = \"1h\"\n",
        "max_evidence_age = -5\n",
    ] {
        let text = format!(
            "release = \"x\"\n{bad}[dangerous_simulated_tee]\ni_understand_this_is_not_confidential = true\nmeasurements = \"skip\"\n"
        );
        let e = Policy::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("max_evidence_age"), "{bad:?}: {e}");
    }
}
