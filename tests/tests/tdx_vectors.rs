//! Intel TDX verification over every real quote in the shared vectors, with
//! the collateral each comes with: verdicts and TCB statuses as the manifest
//! gives them, policy handling of OutOfDate, and time.

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_tests::{read_vector, unhex};
use cocoon_verifier::policy::{Check, TcbStatus, TdxPolicy};
use cocoon_verifier::tdx::{verify_tdx, TcbFinding, VerifiedTdx};
use cocoon_verifier::{ReasonKind, Rejection, UnixTime};

fn text(rel: &str) -> String {
    String::from_utf8(read_vector(rel)).unwrap()
}

fn dcap_case(name: &str) -> (Vec<u8>, TdxCollateral) {
    let quote = read_vector(&format!("tdx/dcap-qvl/{name}"));
    let coll = TdxCollateral::from_bytes(&read_vector(&format!(
        "tdx/dcap-qvl/{name}_collateral.json"
    )))
    .unwrap();
    (quote, coll)
}

fn gtg_collateral(tcb_info: &str, with_crls: bool) -> TdxCollateral {
    let chain = text("tdx/go-tdx-guest/tcb_info_issuer_chain.pem");
    TdxCollateral::from_pcs_responses(
        &read_vector(tcb_info),
        &chain,
        &read_vector("tdx/go-tdx-guest/sample_qeIdentity_response"),
        &chain,
        with_crls.then(|| read_vector("tdx/go-tdx-guest/pckcrl")),
        &text("tdx/go-tdx-guest/pck_crl_issuer_chain.pem"),
        with_crls.then(|| read_vector("tdx/go-tdx-guest/rootcrl.der")),
    )
    .unwrap()
}

fn trustee_collateral() -> TdxCollateral {
    let chain = text("tdx/go-tdx-guest/tcb_info_issuer_chain.pem");
    TdxCollateral::from_pcs_responses(
        &read_vector("tdx/trustee-gnr/tcbInfo.json"),
        &chain,
        &read_vector("tdx/trustee-gnr/enclaveIdentity.json"),
        &chain,
        None,
        "",
        None,
    )
    .unwrap()
}

fn manifest_time(path: &str) -> UnixTime {
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap();
    UnixTime(e["expected"]["verification_time"]["unix"].as_u64().unwrap())
}

fn mrtd_of(path: &str) -> [u8; 48] {
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap();
    unhex(&e["expected"]["fields"]["body"]["mrtd"])
        .try_into()
        .unwrap()
}

fn run(
    path: &str,
    quote: &[u8],
    coll: &TdxCollateral,
    policy: &TdxPolicy,
) -> Result<VerifiedTdx, (Rejection, Option<TcbFinding>)> {
    verify_tdx(quote, coll, policy, manifest_time(path))
}

#[test]
fn dcap_qvl_tdx_quote_is_up_to_date_and_accepted() {
    let path = "tdx/dcap-qvl/tdx_quote";
    let (q, c) = dcap_case("tdx_quote");
    let v = run(
        path,
        &q,
        &c,
        &TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)]),
    )
    .unwrap_or_else(|(r, _)| panic!("{r}"));
    assert_eq!(v.tcb_status(), TcbStatus::UpToDate);
    assert!(v.advisory_ids().is_empty());
    assert_eq!(v.td_report().mrtd(), &mrtd_of(path));
    // CBOR collateral gives the same verdict as the JSON it came from.
    let c2 = TdxCollateral::from_bytes(&c.to_cbor()).unwrap();
    assert!(run(
        path,
        &q,
        &c2,
        &TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)])
    )
    .is_ok());
    // Another MRTD is a policy rejection, listing the measured one.
    let (rej, finding) = run(path, &q, &c, &TdxPolicy::pinned_to_mrtd(vec![[0; 48]])).unwrap_err();
    assert!(
        rej.has(ReasonKind::Policy) && rej.reasons().len() == 1,
        "{rej}"
    );
    assert_eq!(finding.unwrap().status, TcbStatus::UpToDate);
}

#[test]
fn sgx_quote_is_not_a_tdx_quote() {
    let (q, c) = dcap_case("sgx_quote");
    let (rej, _) = run(
        "tdx/dcap-qvl/sgx_quote",
        &q,
        &c,
        &TdxPolicy::pinned_to_mrtd(vec![[0; 48]]),
    )
    .unwrap_err();
    assert!(
        rej.to_string().contains("SGX quote, not a TDX quote"),
        "{rej}"
    );
}

#[test]
fn no_matching_tcb_level_is_always_rejected() {
    let path = "tdx/dcap-qvl/tdx_quote_outdated";
    let (q, c) = dcap_case("tdx_quote_outdated");
    let mut permissive = TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)]);
    permissive.allowed_tcb_statuses = TcbStatus::ALL
        .into_iter()
        .filter(|s| *s != TcbStatus::Revoked)
        .collect();
    let (rej, finding) = run(path, &q, &c, &permissive).unwrap_err();
    assert!(rej.has(ReasonKind::Tcb), "{rej}");
    assert!(rej.to_string().contains("no matching TCB level"), "{rej}");
    assert_eq!(
        rej.reasons().len(),
        1,
        "signatures and chain are valid: {rej}"
    );
    assert!(finding.is_none());

    let path = "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat";
    let q = read_vector(path);
    let (rej, _) = run(
        path,
        &q,
        &gtg_collateral("tdx/go-tdx-guest/sample_tcbInfo_response", true),
        &permissive,
    )
    .unwrap_err();
    assert!(rej.to_string().contains("no matching TCB level"), "{rej}");
}

#[test]
fn v5_sample_is_up_to_date_but_incomplete_collateral_is_rejected() {
    let path = "tdx/go-tdx-guest/quote_v5_sample.dat";
    let q = read_vector(path);
    let c = gtg_collateral("tdx/go-tdx-guest/sample_tcbinfo_response_v5", false);
    let (rej, finding) = run(
        path,
        &q,
        &c,
        &TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)]),
    )
    .unwrap_err();
    assert_eq!(finding.unwrap().status, TcbStatus::UpToDate);
    assert!(
        rej.reasons()
            .iter()
            .all(|r| r.kind == ReasonKind::Collateral),
        "{rej}"
    );
    assert!(rej.to_string().contains("no PCK CRL"), "{rej}");
}

#[test]
fn out_of_date_is_rejected_by_default_and_allowed_by_name() {
    let path = "tdx/trustee-gnr/tdx_quote_6.dat";
    let q = read_vector(path);
    let c = trustee_collateral();
    let strict = TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)]);
    let (rej, finding) = run(path, &q, &c, &strict).unwrap_err();
    let finding = finding.unwrap_or_else(|| panic!("no TCB finding: {rej}"));
    assert_eq!(finding.status, TcbStatus::OutOfDate);
    assert!(
        rej.to_string()
            .contains("TCB status OutOfDate is not allowed"),
        "{rej}"
    );
    let mut lenient = strict.clone();
    lenient.allowed_tcb_statuses.push(TcbStatus::OutOfDate);
    let (rej2, _) = run(path, &q, &c, &lenient).unwrap_err();
    assert!(!rej2.has(ReasonKind::Tcb), "{rej2}");
    // What remains is the collateral this vector lacks (no CRLs), never a pass.
    assert!(
        rej2.reasons()
            .iter()
            .all(|r| r.kind == ReasonKind::Collateral),
        "{rej2}"
    );
}

#[test]
fn expired_collateral_is_rejected_by_moving_now() {
    let path = "tdx/dcap-qvl/tdx_quote";
    let (q, c) = dcap_case("tdx_quote");
    let p = TdxPolicy::pinned_to_mrtd(vec![mrtd_of(path)]);
    let now = manifest_time(path);
    let (rej, _) = verify_tdx(&q, &c, &p, UnixTime(now.0 + 2 * 86_400)).unwrap_err();
    assert!(rej.has(ReasonKind::Expired), "{rej}");
    let (rej, _) = verify_tdx(&q, &c, &p, UnixTime(now.0 - 60 * 86_400)).unwrap_err();
    assert!(rej.has(ReasonKind::Expired), "{rej}");
    let mut aged = p.clone();
    aged.max_collateral_age_secs = Check::Require(86_400);
    let (rej, _) = verify_tdx(&q, &c, &aged, now).unwrap_err();
    assert!(
        rej.has(ReasonKind::Collateral) && rej.to_string().contains("days before"),
        "{rej}"
    );
}
