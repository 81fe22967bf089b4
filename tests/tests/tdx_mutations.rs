//! TDX mutation suite over the one quote vector that verifies with complete
//! collateral (`tdx/dcap-qvl/tdx_quote`, UpToDate), under a policy pinned to
//! everything the manifest says about it: the manifest's negative mutations,
//! a bit flip in every field of the quote, flips inside the PEM of the PCK
//! leaf and its issuing CA, the collateral's signatures and signed JSON text,
//! swapped CRLs, and time outside the collateral's validity. Each must be
//! rejected, for the reason named wherever the reason is knowable.

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::tdx::Quote;
use cocoon_tests::{manifest, read_vector, unhex};
use cocoon_verifier::policy::{Check, TcbStatus, TdxPolicy};
use cocoon_verifier::tdx::verify_tdx;
use cocoon_verifier::{ReasonKind, Rejection, UnixTime};
use serde_json::Value;

const PATH: &str = "tdx/dcap-qvl/tdx_quote";

/// The vector, its collateral, its manifest entry and its time.
struct Case {
    quote: Vec<u8>,
    /// Length of the quote without the zero padding after it.
    quote_len: usize,
    collateral: TdxCollateral,
    expected: Value,
    now: UnixTime,
}

fn case() -> Case {
    let quote = read_vector(PATH);
    let collateral =
        TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let m = manifest();
    let expected = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == PATH)
        .unwrap()["expected"]
        .clone();
    let now = UnixTime(expected["verification_time"]["unix"].as_u64().unwrap());
    let quote_len = Quote::parse_prefix(&quote).unwrap().0.as_bytes().len();
    assert!(quote_len < quote.len(), "the vector is zero-padded");
    Case {
        quote,
        quote_len,
        collateral,
        expected,
        now,
    }
}

fn h48(v: &Value) -> [u8; 48] {
    unhex(v).try_into().unwrap()
}

/// A policy pinned to every value the manifest gives.
fn pinned_policy(c: &Case) -> TdxPolicy {
    let b = &c.expected["fields"]["body"];
    TdxPolicy {
        mrtd: Check::Require(vec![h48(&b["mrtd"])]),
        rtmr: [
            Check::Require(h48(&b["rtmr0"])),
            Check::Require(h48(&b["rtmr1"])),
            Check::Require(h48(&b["rtmr2"])),
            Check::Require(h48(&b["rtmr3"])),
        ],
        mrconfigid: Check::Require(h48(&b["mrconfigid"])),
        mrowner: Check::Require(h48(&b["mrowner"])),
        mrownerconfig: Check::Require(h48(&b["mrownerconfig"])),
        td_attributes: Check::Require(unhex(&b["td_attributes"]).try_into().unwrap()),
        xfam: Check::Require(unhex(&b["xfam"]).try_into().unwrap()),
        min_tee_tcb_svn: Check::Require(unhex(&b["tee_tcb_svn"]).try_into().unwrap()),
        report_data: Check::Require(unhex(&b["report_data"]).try_into().unwrap()),
        allowed_tcb_statuses: vec![TcbStatus::UpToDate],
        max_collateral_age_secs: Check::Require(30 * 86_400),
        allow_debug: false,
    }
}

fn verify(c: &Case, quote: &[u8], coll: &TdxCollateral, now: UnixTime) -> Result<(), Rejection> {
    verify_tdx(quote, coll, &pinned_policy(c), now)
        .map(|v| assert_eq!(v.tcb_status(), TcbStatus::UpToDate))
        .map_err(|(r, _)| r)
}

/// The rejection, or a panic naming what was accepted.
fn reject(c: &Case, quote: &[u8], coll: &TdxCollateral, now: UnixTime, what: &str) -> Rejection {
    match verify(c, quote, coll, now) {
        Ok(()) => panic!("{what} was accepted"),
        Err(r) => r,
    }
}

fn reject_quote(c: &Case, quote: &[u8], what: &str) -> Rejection {
    reject(c, quote, &c.collateral, c.now, what)
}

/// The reason our verifier must give for a quote whose bytes changed: a
/// quote our parser refuses is Malformed and nothing else (it stops there);
/// a QE vendor ID other than Intel's is an unknown value (checked before any
/// signature); anything else that parses breaks a signature: the quote's
/// (header and body), the QE report's (by the PCK), or the QE report data's
/// binding of the attestation key and QE authentication data.
fn expected_kind(mutated: &[u8], field: Option<&str>) -> ReasonKind {
    if Quote::parse_prefix(mutated).is_err() {
        ReasonKind::Malformed
    } else if field == Some("header.qe_vendor_id") {
        ReasonKind::UnknownValue
    } else {
        ReasonKind::Signature
    }
}

fn assert_kind(rej: &Rejection, kind: ReasonKind, what: &str) {
    assert!(
        rej.has(kind),
        "{what}: expected a {kind:?} reason, got {rej}"
    );
    if kind == ReasonKind::Malformed {
        assert_eq!(rej.reasons().len(), 1, "{what}: {rej}");
    }
}

#[test]
fn the_vector_is_accepted_under_the_pinned_policy() {
    let c = case();
    verify(&c, &c.quote, &c.collateral, c.now).unwrap_or_else(|r| panic!("{r}"));
    // The quote without its zero padding too.
    verify(&c, &c.quote[..c.quote_len], &c.collateral, c.now).unwrap_or_else(|r| panic!("{r}"));
}

#[test]
fn manifest_negative_mutations_are_rejected() {
    let c = case();
    let muts = c.expected["negative_mutations"].as_array().unwrap();
    let num = |s: &str| -> usize {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(h) => usize::from_str_radix(h, 16).unwrap(),
            None => s.parse().unwrap(),
        }
    };
    let mut applied = 0;
    for m in muts {
        let change = m["change"].as_str().unwrap();
        let words: Vec<&str> = change.split_whitespace().collect();
        let mut b = c.quote.clone();
        match words.as_slice() {
            ["xor", "byte", at, .., "with", v] => b[num(at)] ^= num(v) as u8,
            ["set", "bit", bit, "of", "byte", at, ..] => b[num(at)] |= 1 << num(bit),
            ["write", "u16", "LE", v, "at", "offset", at, ..] => {
                let at = num(at);
                b[at..at + 2].copy_from_slice(&(num(v) as u16).to_le_bytes());
            }
            // The quote, not the file: the padding after it is not part of it.
            ["truncate", "the", "quote", "by", "1", "byte"] => {
                b = c.quote[..c.quote_len - 1].to_vec()
            }
            _ => panic!("mutation {change:?} is not understood by this test; teach it"),
        }
        assert_ne!(b, c.quote, "{change}");
        let rej = reject_quote(&c, &b, change);
        assert_kind(&rej, expected_kind(&b, None), change);
        applied += 1;
    }
    assert!(applied >= 9, "only {applied} manifest mutations applied");
}

#[test]
fn a_bit_flip_in_any_field_is_rejected_for_the_right_reason() {
    let c = case();
    let q = Quote::parse_prefix(&c.quote).unwrap().0;
    let fields = q.field_ranges();
    let mut flips = 0;
    for f in &fields {
        // The PEM chain is text around the certificates; see the PEM tests.
        if f.len == 0 || f.name == "pck_cert_chain" {
            continue;
        }
        let name = format!("{}.{}", f.section, f.name);
        let r = f.range();
        for (at, mask) in [(r.start, 0x01u8), (r.end - 1, 0x80)] {
            let mut b = c.quote.clone();
            b[at] ^= mask;
            let what = format!("{f}: byte {at} ^= {mask:#04x}");
            let rej = reject_quote(&c, &b, &what);
            assert_kind(&rej, expected_kind(&b, Some(&name)), &what);
            flips += 1;
        }
    }
    // Header, body, signature data, certification data, QE report,
    // QE report certification data, PCK certification data.
    let sections: std::collections::BTreeSet<&str> = fields.iter().map(|f| f.section).collect();
    assert_eq!(sections.len(), 7, "{sections:?}");
    assert!(flips >= 90, "only {flips} flips");
}

/// A DER TLV header at `at`: (header length, content length).
fn der_tlv(der: &[u8], at: usize) -> (usize, usize) {
    let first = der[at + 1];
    if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7F);
        let len = der[at + 2..at + 2 + n]
            .iter()
            .fold(0usize, |l, b| l << 8 | usize::from(*b));
        (2 + n, len)
    }
}

/// The byte range of a certificate's signature bits: the contents of its
/// signatureValue BIT STRING after the unused-bits byte (Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }).
fn signature_value_range(der: &[u8]) -> std::ops::Range<usize> {
    let (outer, _) = der_tlv(der, 0);
    let mut at = outer;
    for _ in 0..2 {
        let (h, l) = der_tlv(der, at);
        at += h + l;
    }
    let (h, l) = der_tlv(der, at);
    at + h + 1..at + h + l
}

use cocoon_tests::pem::{decode_base64, B64};

/// One PEM block of the quote's chain: where its base64 characters are in
/// the quote, and the DER byte each covers.
struct PemBlock {
    /// (offset in the quote, index among the base64 characters).
    chars: Vec<(usize, usize)>,
    der: Vec<u8>,
}

fn pem_blocks(c: &Case) -> Vec<PemBlock> {
    let q = Quote::parse_prefix(&c.quote).unwrap().0;
    let f = q
        .field_ranges()
        .into_iter()
        .find(|f| f.name == "pck_cert_chain")
        .unwrap();
    let chain = &c.quote[f.range()];
    let text = std::str::from_utf8(chain.strip_suffix(b"\0").unwrap()).unwrap();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(begin) = text[from..].find("-----BEGIN CERTIFICATE-----\n") {
        let body_at = from + begin + "-----BEGIN CERTIFICATE-----\n".len();
        let end = body_at + text[body_at..].find("-----END CERTIFICATE-----").unwrap();
        let mut chars = Vec::new();
        let mut b64 = String::new();
        for (i, ch) in text[body_at..end].char_indices() {
            if B64.contains(&(ch as u8)) || ch == '=' {
                if ch != '=' {
                    chars.push((f.offset + body_at + i, chars.len()));
                }
                b64.push(ch);
            }
        }
        let der = decode_base64(&b64);
        out.push(PemBlock { chars, der });
        from = end;
    }
    out
}

#[test]
fn a_flip_in_the_pem_of_the_pck_leaf_or_its_ca_is_rejected() {
    let c = case();
    let blocks = pem_blocks(&c);
    assert_eq!(blocks.len(), 3, "leaf, PCK CA, root");
    for (name, block) in [("PCK leaf", &blocks[0]), ("PCK platform CA", &blocks[1])] {
        let sig = signature_value_range(&block.der);
        let mut in_signature = 0;
        for &(at, index) in block.chars.iter() {
            // Another base64 character: the PEM stays well-formed and the
            // DER changes in one to six bits.
            let mut b = c.quote.clone();
            let v = B64.iter().position(|x| *x == b[at]).unwrap();
            b[at] = B64[v ^ 1 << (index % 6)];
            let what = format!("{name}: base64 character {index} at {at}");
            let rej = reject_quote(&c, &b, &what);
            // DER bytes this character covers.
            let (first, last) = (index * 6 / 8, (index * 6 + 5) / 8);
            if sig.contains(&first) && sig.contains(&last) {
                // Inside signatureValue: the certificate parses and its
                // contents are unchanged; only its signature can fail.
                assert_kind(&rej, ReasonKind::Signature, &what);
                in_signature += 1;
            } else {
                // In the signed part: the DER, a name, a date or the
                // signature may be what fails first, but it must be one of
                // those.
                assert!(
                    [
                        ReasonKind::Signature,
                        ReasonKind::Chain,
                        ReasonKind::Malformed,
                        ReasonKind::Expired,
                    ]
                    .iter()
                    .any(|k| rej.has(*k)),
                    "{what}: {rej}"
                );
            }
            // A raw bit flip of the character. When that is not a base64
            // character any more, the PEM does not decode: dcap-qvl cannot
            // read the chain (Malformed), whatever our own parse says.
            let mut b = c.quote.clone();
            b[at] ^= 0x01;
            let what = format!("{name}: bit 0 of byte {at}");
            let rej = reject_quote(&c, &b, &what);
            if !B64.contains(&b[at]) {
                assert!(rej.has(ReasonKind::Malformed), "{what}: {rej}");
            }
        }
        assert!(
            in_signature > 80,
            "{name}: {in_signature} flips in the signature"
        );
    }
}

#[test]
fn text_outside_the_leaf_and_its_ca_is_not_evidence() {
    // The root certificate the quote carries and the NUL after the chain are
    // not read: the root is pinned (dcap-qvl's path builder leaves unused
    // certificates out, and our TCB evaluation reads only the leaf). Changing
    // them changes nothing.
    let c = case();
    let blocks = pem_blocks(&c);
    let root = &blocks[2];
    for &(at, _) in root.chars.iter().step_by(97) {
        let mut b = c.quote.clone();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        verify(&c, &b, &c.collateral, c.now)
            .unwrap_or_else(|r| panic!("root copy changed at {at}: {r}"));
    }
    let mut b = c.quote.clone();
    b[c.quote_len - 1] ^= 0x80;
    assert_eq!(c.quote[c.quote_len - 1], 0, "the chain ends with a NUL");
    verify(&c, &b, &c.collateral, c.now).unwrap_or_else(|r| panic!("NUL changed: {r}"));
}

/// Flip one bit in each of r and s (first and last byte) of a signature.
fn signature_flips(sig: &[u8]) -> Vec<(usize, Vec<u8>)> {
    assert_eq!(sig.len(), 64);
    [0usize, 31, 32, 63]
        .into_iter()
        .map(|at| {
            let mut s = sig.to_vec();
            s[at] ^= 0x01;
            (at, s)
        })
        .collect()
}

#[test]
fn a_flip_in_a_collateral_signature_is_rejected() {
    let c = case();
    for (at, sig) in signature_flips(&c.collateral.tcb_info_signature) {
        let mut coll = c.collateral.clone();
        coll.tcb_info_signature = sig;
        let what = format!("tcb_info_signature byte {at}");
        let rej = reject(&c, &c.quote, &coll, c.now, &what);
        assert_kind(&rej, ReasonKind::Signature, &what);
        assert!(rej.to_string().contains("tcb_info"), "{what}: {rej}");
    }
    for (at, sig) in signature_flips(&c.collateral.qe_identity_signature) {
        let mut coll = c.collateral.clone();
        coll.qe_identity_signature = sig;
        let what = format!("qe_identity_signature byte {at}");
        let rej = reject(&c, &c.quote, &coll, c.now, &what);
        assert_kind(&rej, ReasonKind::Signature, &what);
        assert!(rej.to_string().contains("qe_identity"), "{what}: {rej}");
    }
    // Too short a signature.
    let mut coll = c.collateral.clone();
    coll.tcb_info_signature.pop();
    reject(&c, &c.quote, &coll, c.now, "63-byte tcb_info_signature");
}

/// Byte ranges of the values of `issueDate` and `nextUpdate` in signed JSON.
fn validity_dates(json: &str) -> Vec<std::ops::Range<usize>> {
    ["\"issueDate\":\"", "\"nextUpdate\":\""]
        .iter()
        .map(|k| {
            let at = json.find(k).unwrap() + k.len();
            at..at + "2025-06-19T10:16:03Z".len()
        })
        .collect()
}

/// Every digit of the signed JSON replaced by another one, except inside
/// its own validity dates (which are read before the signature is checked;
/// see the time tests).
fn digit_changes(json: &str) -> Vec<(usize, String)> {
    let skip = validity_dates(json);
    json.bytes()
        .enumerate()
        .filter(|(i, b)| b.is_ascii_digit() && !skip.iter().any(|r| r.contains(i)))
        .map(|(i, b)| {
            let mut s = json.as_bytes().to_vec();
            s[i] = if b == b'9' { b'0' } else { b + 1 };
            (i, String::from_utf8(s).unwrap())
        })
        .collect()
}

#[test]
fn one_changed_digit_in_the_signed_collateral_is_rejected() {
    let c = case();
    let changes = digit_changes(&c.collateral.tcb_info);
    assert!(changes.len() > 500, "{}", changes.len());
    for (i, text) in changes {
        let mut coll = c.collateral.clone();
        coll.tcb_info = text;
        let what = format!("tcb_info digit at {i}");
        assert_kind(
            &reject(&c, &c.quote, &coll, c.now, &what),
            ReasonKind::Signature,
            &what,
        );
    }
    let changes = digit_changes(&c.collateral.qe_identity);
    assert!(changes.len() > 100, "{}", changes.len());
    for (i, text) in changes {
        let mut coll = c.collateral.clone();
        coll.qe_identity = text;
        let what = format!("qe_identity digit at {i}");
        assert_kind(
            &reject(&c, &c.quote, &coll, c.now, &what),
            ReasonKind::Signature,
            &what,
        );
    }
    // A date digit that keeps `now` inside the window (the seconds of
    // issueDate), and whitespace: the signature covers the exact text.
    let mut coll = c.collateral.clone();
    let secs = validity_dates(&coll.tcb_info)[0].end - 2;
    coll.tcb_info.replace_range(secs..secs + 1, "9");
    assert_ne!(coll.tcb_info, c.collateral.tcb_info);
    assert_kind(
        &reject(&c, &c.quote, &coll, c.now, "tcb_info issueDate seconds"),
        ReasonKind::Signature,
        "tcb_info issueDate seconds",
    );
    let mut coll = c.collateral.clone();
    coll.qe_identity = coll.qe_identity.replacen('{', "{ ", 1);
    assert_kind(
        &reject(&c, &c.quote, &coll, c.now, "qe_identity whitespace"),
        ReasonKind::Signature,
        "qe_identity whitespace",
    );
}

#[test]
fn swapped_or_foreign_crls_are_rejected() {
    let c = case();
    let mut swapped = c.collateral.clone();
    std::mem::swap(&mut swapped.root_ca_crl, &mut swapped.pck_crl);
    let rej = reject(&c, &c.quote, &swapped, c.now, "swapped CRLs");
    assert_kind(&rej, ReasonKind::Collateral, "swapped CRLs");

    // Both slots holding the same CRL.
    for crl in [&c.collateral.root_ca_crl, &c.collateral.pck_crl] {
        let mut same = c.collateral.clone();
        same.root_ca_crl = crl.clone();
        same.pck_crl = crl.clone();
        let rej = reject(&c, &c.quote, &same, c.now, "one CRL twice");
        assert_kind(&rej, ReasonKind::Collateral, "one CRL twice");
    }

    // The PCK CRL of another CA (the Processor CA's, from the SGX sample):
    // the leaf's issuer has no CRL, so its revocation status is unknown.
    let sgx =
        TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/sgx_quote_collateral.json")).unwrap();
    let mut foreign = c.collateral.clone();
    foreign.pck_crl = sgx.pck_crl.clone();
    let rej = reject(&c, &c.quote, &foreign, c.now, "Processor CA CRL");
    assert_kind(&rej, ReasonKind::Collateral, "Processor CA CRL");

    // A CRL that is missing is refused by name.
    let mut missing = c.collateral.clone();
    missing.pck_crl = None;
    let rej = reject(&c, &c.quote, &missing, c.now, "no PCK CRL");
    assert_kind(&rej, ReasonKind::Collateral, "no PCK CRL");
    assert!(rej.to_string().contains("no PCK CRL"), "{rej}");
}

fn date(json: &str, key: &str) -> u64 {
    let v: Value = serde_json::from_str(json).unwrap();
    let s = v[key].as_str().unwrap();
    // YYYY-MM-DDTHH:MM:SSZ to Unix seconds (days from civil).
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

#[test]
fn collateral_is_only_valid_inside_its_window() {
    let c = case();
    let window = &c.expected["verification_time"]["valid_window"];
    let not_before = window["not_before"]["unix"].as_u64().unwrap();
    let not_after = window["not_after"]["unix"].as_u64().unwrap();
    // The window is [not_before, not_after): at not_after the PCK CRL's
    // nextUpdate has come, and webpki counts that instant as expired.
    for t in [not_before, not_after - 1] {
        verify(&c, &c.quote, &c.collateral, UnixTime(t)).unwrap_or_else(|r| panic!("at {t}: {r}"));
    }
    let tcb_issue = date(&c.collateral.tcb_info, "issueDate");
    let tcb_next = date(&c.collateral.tcb_info, "nextUpdate");
    let qe_issue = date(&c.collateral.qe_identity, "issueDate");
    let qe_next = date(&c.collateral.qe_identity, "nextUpdate");
    assert!(tcb_issue <= not_before && qe_issue <= not_before);
    assert!(not_after <= tcb_next && not_after <= qe_next);
    for (what, t) in [
        ("one second before the window", not_before - 1),
        ("at the PCK CRL's nextUpdate", not_after),
        ("before the TCB info's issueDate", tcb_issue - 1),
        ("after the TCB info's nextUpdate", tcb_next + 1),
        ("before the QE identity's issueDate", qe_issue - 1),
        ("after the QE identity's nextUpdate", qe_next + 1),
        ("at the Unix epoch", 0),
    ] {
        let rej = reject(&c, &c.quote, &c.collateral, UnixTime(t), what);
        assert_kind(&rej, ReasonKind::Expired, what);
    }
}
