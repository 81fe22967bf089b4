//! A policy derived from active releases against real (simulated) evidence:
//! an enclave whose measurement digest is an active release's verifies; one
//! whose release is not given (revoked) does not, and neither does any
//! simulated enclave without the dangerous opt-in.

use cocoon_attestation::bundle::Claims;
use cocoon_attestation::measurement::{
    simulated_digest, MeasuredPlatform, ReleaseMinTcb, ReleaseReference,
};
use cocoon_test_kit::simulated;
use cocoon_verifier::policy::derive::{evidence_digest, from_releases, LocalRules};
use cocoon_verifier::policy::Check;
use cocoon_verifier::UnixTime;

fn claims() -> Vec<u8> {
    Claims {
        hpke_public_key: vec![1; 32],
        receipt_public_key: vec![2; 65],
        image_id: "r".into(),
        model_digests: vec![],
        config_digest: [0; 32],
        gpu_evidence_digest: None,
        epoch: 1,
        issued_at: 1_000,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    }
    .to_cbor()
}

fn bundle(measurement: [u8; 48]) -> Vec<u8> {
    let key = simulated::key();
    let c = claims();
    let (report, sig) = simulated::sign(&simulated::report(&c, &key, measurement), &key);
    simulated::bundle(report, sig, c)
}

fn release(name: &str, measurement: [u8; 48]) -> ReleaseReference {
    ReleaseReference {
        release: name.into(),
        manifest_hash: [measurement[0]; 32],
        snp: vec![],
        tdx: vec![],
        simulated: vec![measurement],
        min_tcb: ReleaseMinTcb::default(),
    }
}

fn rules() -> LocalRules {
    LocalRules {
        allow_simulated: true,
        max_evidence_age: Check::Skip,
        ..LocalRules::default()
    }
}

#[test]
fn an_active_releases_enclave_verifies_and_a_revoked_ones_does_not() {
    let now = UnixTime(2_000);
    let active = release("active", [0xa1; 48]);
    let d = from_releases(std::slice::from_ref(&active), &rules()).unwrap();
    let (v, accepted) = d.verify(&bundle([0xa1; 48]), now).unwrap();
    assert_eq!(accepted.release, "active");
    assert_eq!(
        evidence_digest(&v),
        (MeasuredPlatform::Simulated, simulated_digest(&[0xa1; 48]))
    );
    assert_eq!(d.check(&v).unwrap().manifest_hash, [0xa1; 32]);

    // The revoked release is simply not given: its enclave is refused by
    // the policy itself.
    let revoked_enclave = bundle([0xb2; 48]);
    let e = d.verify(&revoked_enclave, now).unwrap_err();
    assert!(
        e.to_string()
            .contains("simulated measurement not in policy"),
        "{e}"
    );
    // Verified under a looser policy (both releases), the digest check
    // still tells a release that is no longer given apart.
    let both = from_releases(&[active, release("revoked", [0xb2; 48])], &rules()).unwrap();
    let (v, _) = both.verify(&revoked_enclave, now).unwrap();
    let e = d.check(&v).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "simulated measurement digest {} is not one of an active release's",
            hex::encode(simulated_digest(&[0xb2; 48]))
        )),
        "{e}"
    );
}

#[test]
fn simulated_evidence_is_refused_without_the_opt_in() {
    let d = from_releases(
        &[ReleaseReference {
            snp: vec![[9; 48]],
            ..release("r", [0xa1; 48])
        }],
        &LocalRules {
            max_evidence_age: Check::Skip,
            ..LocalRules::default()
        },
    )
    .unwrap();
    let e = d.verify(&bundle([0xa1; 48]), UnixTime(2_000)).unwrap_err();
    assert!(e.to_string().contains("NOT confidential"), "{e}");
}
