//! Cache poisoning and expiry on a warm [`TdxVerifier`]: the verifier
//! caches verified collateral sets and PCK chains by the SHA-256 of their
//! exact bytes, so an altered copy of anything it has cached must be a miss
//! and be refused, a refused input must never be cached, and what depends on
//! the time (certificate validity, CRL nextUpdate, TCB info and QE identity
//! issueDate/nextUpdate) must be judged at every call against `now`, cache
//! hit or not. Vector: `tdx/dcap-qvl/tdx_quote` with its collateral
//! (UpToDate at the manifest's verification time).

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::pcs::valid_until;
use cocoon_attestation::tdx::Quote;
use cocoon_tests::{manifest, read_vector, unhex};
use cocoon_verifier::{ReasonKind, Rejection, TdxPolicy, TdxVerifier, UnixTime};
use serde_json::Value;

const PATH: &str = "tdx/dcap-qvl/tdx_quote";

struct Case {
    quote: Vec<u8>,
    collateral: TdxCollateral,
    policy: TdxPolicy,
    now: UnixTime,
}

fn case() -> Case {
    let m = manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == PATH)
        .unwrap();
    let mrtd: [u8; 48] = unhex(&e["expected"]["fields"]["body"]["mrtd"])
        .try_into()
        .unwrap();
    Case {
        quote: read_vector(PATH),
        collateral: TdxCollateral::from_bytes(&read_vector(
            "tdx/dcap-qvl/tdx_quote_collateral.json",
        ))
        .unwrap(),
        policy: TdxPolicy::pinned_to_mrtd(vec![mrtd]),
        now: UnixTime(e["expected"]["verification_time"]["unix"].as_u64().unwrap()),
    }
}

impl Case {
    fn accept(&self, v: &TdxVerifier, what: &str) {
        v.verify(&self.quote, &self.collateral, &self.policy, self.now)
            .unwrap_or_else(|(r, _)| panic!("{what}: the genuine input is refused: {r}"));
    }
    fn refuse(
        &self,
        v: &TdxVerifier,
        quote: &[u8],
        coll: &TdxCollateral,
        now: UnixTime,
        what: &str,
    ) -> Rejection {
        match v.verify(quote, coll, &self.policy, now) {
            Ok(_) => panic!("{what}: accepted by a warm verifier"),
            Err((r, _)) => r,
        }
    }
}

fn date(json: &str, key: &str) -> u64 {
    let v: Value = serde_json::from_str(json).unwrap();
    cocoon_attestation::pcs::rfc3339_to_unix(v[key].as_str().unwrap()).unwrap()
}

/// Altered copies of every collateral item: one byte of each changed.
fn altered_collateral(c: &TdxCollateral) -> Vec<(&'static str, TdxCollateral)> {
    let mut out = Vec::new();
    let flip_last = |b: &mut Vec<u8>| {
        let n = b.len() - 1;
        b[n] ^= 0x01;
    };
    let mut x = c.clone();
    x.tcb_info = x.tcb_info.replacen("\"pcesvn\":11", "\"pcesvn\":10", 1);
    assert_ne!(x.tcb_info, c.tcb_info, "the TCB info has a pcesvn of 11");
    out.push(("TCB info with a lower pcesvn", x));
    let mut x = c.clone();
    flip_last(&mut x.tcb_info_signature);
    out.push(("TCB info signature", x));
    let mut x = c.clone();
    x.qe_identity = x
        .qe_identity
        .replacen("\"isvprodid\":2", "\"isvprodid\":3", 1);
    assert_ne!(
        x.qe_identity, c.qe_identity,
        "the QE identity has isvprodid 2"
    );
    out.push(("QE identity with another isvprodid", x));
    let mut x = c.clone();
    flip_last(&mut x.qe_identity_signature);
    out.push(("QE identity signature", x));
    let mut x = c.clone();
    flip_last(x.root_ca_crl.as_mut().unwrap());
    out.push(("root CA CRL signature", x));
    let mut x = c.clone();
    flip_last(x.pck_crl.as_mut().unwrap());
    out.push(("PCK CRL signature", x));
    let mut x = c.clone();
    x.tcb_info_issuer_chain = x.tcb_info_issuer_chain.replacen("MII", "MIJ", 1);
    out.push(("TCB info issuer chain", x));
    let mut x = c.clone();
    // Another genuine Intel PCK CRL: the Processor CA's, not the PCK's issuer's.
    x.pck_crl = TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/sgx_quote_collateral.json"))
        .unwrap()
        .pck_crl;
    assert_ne!(x.pck_crl, c.pck_crl);
    out.push(("the PCK CRL of another CA", x));
    out
}

/// Altered copies of the quote's PCK chain: the leaf's signature, the CA's
/// signature (one base64 character each, inside the signature value's
/// last line), and the CA left out.
fn altered_chains(quote: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let (q, _) = Quote::parse_prefix(quote).unwrap();
    let chain = q.pck_cert_chain_pem();
    let at = quote.windows(chain.len()).position(|w| w == chain).unwrap();
    let ends: Vec<usize> = chain
        .windows(25)
        .enumerate()
        .filter(|(_, w)| *w == b"-----END CERTIFICATE-----")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ends.len(), 3, "leaf, CA, root");
    let mut out = Vec::new();
    for (what, end) in [
        ("PCK leaf signature", ends[0]),
        ("PCK CA signature", ends[1]),
    ] {
        // The character 8 before the end line: inside the signature's
        // base64, not the padding.
        let mut b = quote.to_vec();
        let i = at + end - 8;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        out.push((what, b));
    }
    // The CA block replaced by a copy of the root block, lengths kept.
    let ca_start = ends[0] + 26;
    let ca_len = ends[1] + 26 - ca_start;
    let root_block = &chain[ends[1] + 26..ends[2] + 26];
    if root_block.len() <= ca_len {
        let mut b = quote.to_vec();
        let mut new = root_block.to_vec();
        new.resize(ca_len, b'\n');
        b[at + ca_start..at + ca_start + ca_len].copy_from_slice(&new);
        out.push(("PCK CA replaced by the root", b));
    }
    out
}

#[test]
fn altered_collateral_is_refused_by_a_warm_verifier() {
    let c = case();
    let v = TdxVerifier::new();
    c.accept(&v, "cold");
    assert_eq!(v.cached(), (1, 1));
    for (what, coll) in altered_collateral(&c.collateral) {
        let rej = c.refuse(&v, &c.quote, &coll, c.now, what);
        // A second time (nothing of it may have been cached).
        let again = c.refuse(&v, &c.quote, &coll, c.now, what);
        assert_eq!(rej.to_string(), again.to_string(), "{what}");
        c.accept(&v, what);
    }
    assert_eq!(v.cached(), (1, 1), "only the genuine set is cached");
}

#[test]
fn altered_pck_chains_are_refused_by_a_warm_verifier() {
    let c = case();
    let v = TdxVerifier::new();
    c.accept(&v, "cold");
    let chains = altered_chains(&c.quote);
    assert_eq!(chains.len(), 3);
    for (what, quote) in &chains {
        let rej = c.refuse(&v, quote, &c.collateral, c.now, what);
        assert!(
            rej.has(ReasonKind::Signature) || rej.has(ReasonKind::Chain),
            "{what}: {rej}"
        );
        c.refuse(&v, quote, &c.collateral, c.now, what);
        c.accept(&v, what);
    }
    assert_eq!(v.cached(), (1, 1), "only the genuine chain is cached");
    // Refused first, on a fresh verifier, then the genuine input.
    let v = TdxVerifier::new();
    for (what, quote) in &chains {
        c.refuse(&v, quote, &c.collateral, c.now, what);
    }
    c.accept(&v, "after the altered chains");
}

#[test]
fn dates_are_judged_at_every_call_on_a_cache_hit() {
    let c = case();
    let v = TdxVerifier::new();
    c.accept(&v, "cold");
    // The PCK CRL's nextUpdate is one second after the verification time.
    let crl_next = valid_until(&c.collateral).unwrap();
    assert_eq!(crl_next, c.now.0 + 1);
    let tcb_issue = date(&c.collateral.tcb_info, "issueDate");
    let tcb_next = date(&c.collateral.tcb_info, "nextUpdate");
    let qe_next = date(&c.collateral.qe_identity, "nextUpdate");
    for (what, t) in [
        ("at the PCK CRL's nextUpdate", crl_next),
        ("a day after the PCK CRL's nextUpdate", crl_next + 86_400),
        ("after the TCB info's nextUpdate", tcb_next + 1),
        ("after the QE identity's nextUpdate", qe_next + 1),
        ("before the TCB info's issueDate", tcb_issue - 1),
        ("in 2060, after every certificate", 2_840_140_800),
    ] {
        let rej = c.refuse(&v, &c.quote, &c.collateral, UnixTime(t), what);
        assert!(rej.has(ReasonKind::Expired), "{what}: {rej}");
        // Still a hit for the valid time.
        c.accept(&v, what);
    }
    assert_eq!(v.cached(), (1, 1));
}

#[test]
fn a_cold_and_a_warm_verifier_agree() {
    let c = case();
    let warm = TdxVerifier::new();
    c.accept(&warm, "first");
    for (what, coll) in altered_collateral(&c.collateral) {
        let cold = cocoon_verifier::tdx::verify_tdx(&c.quote, &coll, &c.policy, c.now)
            .map_err(|(r, _)| r.to_string());
        let hot = warm
            .verify(&c.quote, &coll, &c.policy, c.now)
            .map_err(|(r, _)| r.to_string());
        assert!(cold.is_err() && hot.is_err(), "{what}");
        assert_eq!(cold.unwrap_err(), hot.unwrap_err(), "{what}");
    }
}

/// `tdx/dcap-qvl/tdx_quote_outdated` with its collateral and verification
/// time: another platform, and another Intel collateral set that shares
/// with this one what Intel rarely re-issues (the root CA CRL, the TCB
/// signing certificate's chain, the PCK Platform CA) but not its TCB info,
/// QE identity or PCK CRL.
fn other() -> (Vec<u8>, TdxCollateral, UnixTime) {
    let path = "tdx/dcap-qvl/tdx_quote_outdated";
    let m = manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap();
    (
        read_vector(path),
        TdxCollateral::from_bytes(&read_vector(&format!("{path}_collateral.json"))).unwrap(),
        UnixTime(e["expected"]["verification_time"]["unix"].as_u64().unwrap()),
    )
}

/// A verifier whose per-item caches hold the other set's items: it has
/// verified the other quote (refused by this policy after every signature
/// verified: another MRTD, and a TCB below every level).
fn primed(c: &Case) -> TdxVerifier {
    let (quote, coll, now) = other();
    let v = TdxVerifier::new();
    let rej = c.refuse(&v, &quote, &coll, now, "the other platform");
    assert!(!rej.has(ReasonKind::Signature) && !rej.has(ReasonKind::Chain));
    assert_eq!(v.cached(), (1, 1), "the other set and chain verified");
    v
}

/// The root CA CRL's nextUpdate, read with `x509-cert` (not the verifier's reader).
fn root_crl_next_update(c: &TdxCollateral) -> u64 {
    use x509_cert::der::Decode;
    x509_cert::crl::CertificateList::from_der(c.root_ca_crl.as_ref().unwrap())
        .unwrap()
        .tbs_cert_list
        .next_update
        .unwrap()
        .to_unix_duration()
        .as_secs()
}

#[test]
fn a_new_set_recalls_only_the_items_it_shares_with_one_seen_before() {
    let c = case();
    let v = primed(&c);
    let before = v.cached_items();
    c.accept(&v, "new collateral on a primed verifier");
    let after = v.cached_items();
    // The signing chain, the root CA CRL's and the PCK CA's signatures were
    // recalled; the TCB info, QE identity, PCK CRL and PCK leaf signatures
    // are new.
    assert_eq!(after.signers, before.signers);
    assert_eq!(
        after.signatures,
        before.signatures + 4,
        "{before:?} -> {after:?}"
    );
    assert_eq!(v.cached(), (2, 2));
}

#[test]
fn altered_copies_of_shared_items_are_refused_by_a_primed_verifier() {
    // Each altered set is new to the verifier, whose per-item caches hold
    // the genuine root CA CRL, signing chain and PCK CA: every altered item
    // is a miss, verified and refused, exactly as a cold verifier refuses
    // it, and nothing refused is remembered.
    let c = case();
    for (what, coll) in altered_collateral(&c.collateral) {
        let v = primed(&c);
        let rej = c.refuse(&v, &c.quote, &coll, c.now, what);
        let cold = cocoon_verifier::tdx::verify_tdx(&c.quote, &coll, &c.policy, c.now)
            .map(|_| ())
            .unwrap_err()
            .0;
        assert_eq!(rej.to_string(), cold.to_string(), "{what}");
        let items = v.cached_items();
        let again = c.refuse(&v, &c.quote, &coll, c.now, what);
        assert_eq!(rej.to_string(), again.to_string(), "{what}");
        let after = v.cached_items();
        assert_eq!(
            (after.signers, after.signatures),
            (items.signers, items.signatures),
            "{what}: a refused input added a verified item"
        );
        c.accept(&v, what);
    }
    for (what, quote) in altered_chains(&c.quote) {
        let v = primed(&c);
        let rej = c.refuse(&v, &quote, &c.collateral, c.now, what);
        assert!(
            rej.has(ReasonKind::Signature) || rej.has(ReasonKind::Chain),
            "{what}: {rej}"
        );
        let items = v.cached_items();
        c.refuse(&v, &quote, &c.collateral, c.now, what);
        assert_eq!(v.cached_items().signatures, items.signatures, "{what}");
        c.accept(&v, what);
    }
}

#[test]
fn dates_are_judged_at_every_call_on_an_item_hit() {
    let c = case();
    let root_next = root_crl_next_update(&c.collateral);
    let (_, other_coll, other_now) = other();
    assert_eq!(other_coll.root_ca_crl, c.collateral.root_ca_crl);
    assert!(
        other_now.0 < root_next,
        "the other set verified before the root CA CRL expired"
    );
    let v = primed(&c);
    // The root CA CRL is recalled (parsed and its signature verified for the
    // other set), and its nextUpdate is still judged at `now`.
    for (what, t) in [
        ("at the root CA CRL's nextUpdate", root_next),
        (
            "a year after the root CA CRL's nextUpdate",
            root_next + 365 * 86_400,
        ),
        ("in 2060, after every certificate", 2_840_140_800),
        ("in 2000, before every certificate", 946_684_800),
    ] {
        let rej = c.refuse(&v, &c.quote, &c.collateral, UnixTime(t), what);
        assert!(rej.has(ReasonKind::Expired), "{what}: {rej}");
        if t >= root_next {
            assert!(rej.to_string().contains("Root CA CRL"), "{what}: {rej}");
        }
        assert_eq!(v.cached().0, 1, "{what}: the set refused is not remembered");
    }
    c.accept(&v, "at the verification time");
    // The other set, a hit now, is judged at `now` too.
    let (oq, _, _) = other();
    let rej = c.refuse(
        &v,
        &oq,
        &other_coll,
        UnixTime(root_next),
        "the other set, expired",
    );
    assert!(rej.has(ReasonKind::Expired), "{rej}");
}
