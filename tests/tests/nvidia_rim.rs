//! NVIDIA reference integrity manifests from `../shared/vectors/nvidia`:
//! signed SWID tags checked against the manifest's verdicts and fields, and
//! mutations of a valid one that must each be refused.

use cocoon_tests::{entries_of_kind, read_vector};
use cocoon_verifier::nvidia::rim::{parse_rim_unverified, verify_rim, VerifiedRim};
use cocoon_verifier::{ReasonKind, Rejection, UnixTime};

/// 2024-06-01T00:00:00Z.
const JUNE_2024: UnixTime = UnixTime(1_717_200_000);
/// 2025-06-01T00:00:00Z.
const JUNE_2025: UnixTime = UnixTime(1_748_736_000);
/// 2025-07-01T00:00:00Z.
const JULY_2025: UnixTime = UnixTime(1_751_328_000);
/// 2026-06-01T00:00:00Z.
const JUNE_2026: UnixTime = UnixTime(1_780_272_000);

const DRIVER: &str = "nvidia/rim/NV_GPU_DRIVER_GH100_550.144.03.xml";
const VBIOS: &str = "nvidia/h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag";
const SWITCH: &str =
    "nvidia/nvswitch-ls10/switchVBIOSRim_NV_SWITCH_BIOS_5612_0002_890_9610550001.xml";
const BAD_SIGNATURE: &str = "nvidia/negative/incorrect_signature_driver_rim.xml";
const BAD_CHAIN: &str = "nvidia/negative/incorrect_cert_chain_driver_rim.xml";
const MISMATCH: &str =
    "nvidia/h100-535-vbios-rim/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml";

/// Each valid RIM with a time inside every embedded certificate's window:
/// driver signer 2024-12-30..2026-12-30, VBIOS signer 2023-06-23..2025-06-22,
/// LS10 signer 2026-05-20..2028-05-19.
const VALID: [(&str, UnixTime); 3] = [(DRIVER, JUNE_2025), (VBIOS, JUNE_2024), (SWITCH, JUNE_2026)];

fn verify(path: &str, at: UnixTime) -> Result<VerifiedRim, Rejection> {
    verify_rim(&read_vector(path), at)
}

fn manifest_fields(path: &str) -> serde_json::Value {
    entries_of_kind("nvidia-rim")
        .into_iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not an nvidia-rim manifest entry"))["expected"]
        ["fields"]
        .clone()
}

/// The manifest's `measurement_resource_count` counts the resources named
/// `Measurement_N` (its extract_fields.py); the RIMs also hold resources
/// named `HashedMeasurement_N_...`. Every `Resource` is a measurement, so
/// the verifier returns all of them: 64 in each of these RIMs.
fn check_counts(path: &str, parsed: usize, fields: &serde_json::Value) {
    let text = String::from_utf8(read_vector(path)).unwrap();
    assert_eq!(
        parsed,
        text.matches("<ns0:Resource type=\"Measurement\"").count(),
        "{path}"
    );
    assert_eq!(parsed, 64, "{path}");
    let named = text
        .match_indices("name=\"Measurement_")
        .filter(|(i, m)| {
            let rest = &text[i + m.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest.as_bytes()[digits] == b'"'
        })
        .count();
    assert_eq!(
        named as u64,
        fields["measurement_resource_count"].as_u64().unwrap(),
        "{path}"
    );
}

#[test]
fn every_valid_rim_verifies_and_gives_the_manifest_fields() {
    for (path, at) in VALID {
        let rim = verify(path, at).unwrap_or_else(|r| panic!("{path}: {r}"));
        let f = manifest_fields(path);
        assert_eq!(rim.tag_id(), f["tagId"], "{path}");
        assert_eq!(rim.name(), f["name"], "{path}");
        assert_eq!(rim.product(), f["product"], "{path}");
        assert_eq!(rim.version(), f["colloquialVersion"], "{path}");
        check_counts(path, rim.measurements().len(), &f);
        assert_eq!(rim.signer_chain_der().len(), 4, "{path}");
    }
}

#[test]
fn the_vbios_rim_gives_its_measurements() {
    let rim = verify(VBIOS, JUNE_2024).unwrap();
    assert_eq!(rim.edition(), "GPU");
    let m1 = rim.measurement(1).unwrap();
    assert!(m1.active);
    assert_eq!(
        hex::encode(m1.alternatives[0]),
        "c3f65ef79a19c029868cd7ce54b10e44f192444edb3506dde29cef2aac4e916c90a4f438e55aa7581a9e384c74d82db6"
    );
    assert!(rim.measurements().iter().any(|m| m.alternatives.len() == 4));
    let switch = verify(SWITCH, JUNE_2026).unwrap();
    assert_eq!(switch.edition(), "SWITCH");
}

#[test]
fn every_rim_entry_parses_to_its_manifest_fields() {
    let entries = entries_of_kind("nvidia-rim");
    assert_eq!(entries.len(), 6);
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let info =
            parse_rim_unverified(&read_vector(path)).unwrap_or_else(|r| panic!("{path}: {r}"));
        let f = &e["expected"]["fields"];
        assert_eq!(info.tag_id, f["tagId"], "{path}");
        assert_eq!(info.name, f["name"], "{path}");
        assert_eq!(info.product, f["product"], "{path}");
        assert_eq!(info.version, f["colloquialVersion"], "{path}");
        check_counts(path, info.measurements.len(), f);
    }
}

#[test]
fn incorrect_signature_rim_fails_on_signature_only() {
    let r = verify(BAD_SIGNATURE, JUNE_2025).unwrap_err();
    assert!(r.has(ReasonKind::Signature), "{r}");
    assert!(
        r.reasons().iter().all(|x| x.kind == ReasonKind::Signature),
        "the chain is valid: {r}"
    );
}

#[test]
fn incorrect_chain_rim_fails_on_chain() {
    let r = verify(BAD_CHAIN, JUNE_2025).unwrap_err();
    assert!(r.has(ReasonKind::Chain), "{r}");
}

#[test]
fn measurement_mismatch_rim_is_validly_signed_and_differs_at_index_9() {
    // The manifest infers that upstream edited this RIM's body without
    // re-signing it. It was re-signed: a different L4 signer (issued by
    // "NVIDIA Reference Value L3 GH100 002", valid 2023-12-13..2025-12-12)
    // whose chain reaches the CoRIM root, a matching DigestValue and a valid
    // signature. It must be caught by comparing measurements with the
    // evidence, not by its signature.
    let mismatch = verify(MISMATCH, JUNE_2025).unwrap_or_else(|r| panic!("{r}"));
    let prod = verify(VBIOS, JUNE_2024).unwrap();
    assert_eq!(mismatch.tag_id(), prod.tag_id());
    assert_eq!(mismatch.version(), prod.version());
    let differing: Vec<u32> = prod
        .measurements()
        .iter()
        .zip(mismatch.measurements())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.index)
        .collect();
    assert_eq!(differing, [9]);
    assert_ne!(mismatch.signer_chain_der()[0], prod.signer_chain_der()[0]);
}

#[test]
fn outside_the_signer_window_is_expired() {
    // The VBIOS signer expired on 2025-06-22.
    let r = verify(VBIOS, JULY_2025).unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
    assert!(!r.has(ReasonKind::Signature), "{r}");
    // The driver signer is not valid before 2024-12-30.
    let r = verify(DRIVER, JUNE_2024).unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
    // The LS10 signer is not valid before 2026-05-20.
    let r = verify(SWITCH, JUNE_2025).unwrap_err();
    assert!(r.has(ReasonKind::Expired), "{r}");
}

/// The driver RIM as text, with one replacement that must apply exactly
/// where asked.
fn driver_with(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(read_vector(DRIVER)).unwrap();
    assert!(text.contains(from), "{from:?} not in the driver RIM");
    text.replacen(from, to, 1).into_bytes()
}

/// Replace the character at byte `at` of `text` by another hex or base64
/// character.
fn alter_at(text: &str, at: usize) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes
}

fn assert_signature_rejected(what: &str, xml: &[u8]) {
    let r = verify_rim(xml, JUNE_2025).expect_err(what);
    assert!(r.has(ReasonKind::Signature), "{what}: {r}");
    assert!(
        r.reasons().iter().all(|x| x.kind == ReasonKind::Signature),
        "{what}: {r}"
    );
}

#[test]
fn one_changed_character_in_signed_content_is_refused() {
    let text = String::from_utf8(read_vector(DRIVER)).unwrap();
    // A hash attribute: the first non-zero Hash0, one hex digit changed.
    let hash_at = text
        .match_indices("ns2:Hash0=\"")
        .map(|(i, m)| i + m.len())
        .find(|&i| text[i..i + 96] != "0".repeat(96))
        .unwrap();
    assert_signature_rejected("hash attribute", &alter_at(&text, hash_at + 5));
    // Text content between elements.
    assert_signature_rejected(
        "text content",
        &driver_with("\n    </ns0:Payload>", "\n   x</ns0:Payload>"),
    );
    // An attribute of Meta.
    assert_signature_rejected(
        "Meta attribute",
        &driver_with(
            "colloquialVersion=\"550.144.03\"",
            "colloquialVersion=\"550.144.04\"",
        ),
    );
    assert_signature_rejected(
        "Meta attribute added",
        &driver_with("edition=\"GPU\"", "edition=\"GPU\" extra=\"\""),
    );
    // The root's attribute.
    assert_signature_rejected("tagId", &driver_with("tagId=\"8aa5", "tagId=\"8aa6"));
    // SignatureValue and DigestValue, one base64 character each.
    for (what, open) in [
        ("SignatureValue", "<ds:SignatureValue>"),
        ("DigestValue", "<ds:DigestValue>"),
    ] {
        let at = text.find(open).unwrap() + open.len() + 10;
        assert_signature_rejected(what, &alter_at(&text, at));
    }
    // A signed algorithm-free part of SignedInfo: the Reference's URI
    // cannot change (only "" is accepted), but its whitespace can.
    assert_signature_rejected(
        "whitespace in SignedInfo",
        &driver_with("<ds:SignedInfo><ds:Canon", "<ds:SignedInfo>\n<ds:Canon"),
    );
}

#[test]
fn whitespace_only_changes_in_signed_content_are_refused() {
    for (what, from, to) in [
        ("indentation", "\n    <ns0:Meta", "\n     <ns0:Meta"),
        ("newline to space", ">\n    <ns0:Entity", "> <ns0:Entity"),
        (
            "space before the signature",
            "</ns0:Payload>\n<ds:Sig",
            "</ns0:Payload>\n <ds:Sig",
        ),
        (
            "space inside an attribute value",
            "product=\"GH100\"",
            "product=\"GH100 \"",
        ),
    ] {
        assert_signature_rejected(what, &driver_with(from, to));
    }
}

#[test]
fn changes_that_canonicalization_removes_still_verify() {
    let text = String::from_utf8(read_vector(DRIVER)).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CRLF line ends", text.replace('\n', "\r\n").into_bytes()),
        (
            "XML declaration",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{text}").into_bytes(),
        ),
        (
            "attribute order and quotes",
            driver_with(
                "edition=\"GPU\" product=\"GH100\"",
                "product='GH100'   edition=\"GPU\"",
            ),
        ),
        (
            "character reference",
            driver_with("active=\"False\"", "active=\"&#70;alse\""),
        ),
        (
            "empty element as a start-end pair",
            driver_with(
                "role=\"softwareCreator tagCreator\"/>",
                "role=\"softwareCreator tagCreator\" ></ns0:Entity >",
            ),
        ),
        (
            "redundant namespace declaration",
            driver_with(
                "<ns0:Payload ",
                "<ns0:Payload xmlns:ns2=\"http://www.w3.org/2001/04/xmlenc#sha384\" ",
            ),
        ),
        (
            "whitespace inside a certificate (not signed)",
            driver_with("<ds:X509Certificate>MII", "<ds:X509Certificate>\n  MII"),
        ),
    ];
    for (what, xml) in cases {
        verify_rim(&xml, JUNE_2025).unwrap_or_else(|r| panic!("{what}: {r}"));
    }
}

#[test]
fn a_doctype_is_refused_as_malformed() {
    let text = String::from_utf8(read_vector(DRIVER)).unwrap();
    let xml = format!("<!DOCTYPE SoftwareIdentity [<!ENTITY v \"550.144.03\">]>\n{text}");
    let r = verify_rim(xml.as_bytes(), JUNE_2025).unwrap_err();
    assert!(r.has(ReasonKind::Malformed), "{r}");
    assert!(r.to_string().contains("DOCTYPE"), "{r}");
    // A comment inside the signed content is outside the subset too.
    let r = verify_rim(
        &driver_with("<ns0:Payload", "<!-- x --><ns0:Payload"),
        JUNE_2025,
    )
    .unwrap_err();
    assert!(r.has(ReasonKind::Malformed), "{r}");
}

#[test]
fn a_certificate_chain_from_another_rim_is_refused() {
    // The VBIOS RIM's certificates in the driver RIM: the chain still
    // reaches the root, but the signature is not by that signer's key.
    let driver = String::from_utf8(read_vector(DRIVER)).unwrap();
    let vbios = String::from_utf8(read_vector(VBIOS)).unwrap();
    let key_info = |t: &str| {
        let a = t.find("<ds:KeyInfo>").unwrap();
        let b = t.find("</ds:KeyInfo>").unwrap();
        t[a..b].to_owned()
    };
    let swapped = driver.replace(&key_info(&driver), &key_info(&vbios));
    let r = verify_rim(swapped.as_bytes(), JUNE_2024).unwrap_err();
    assert!(r.has(ReasonKind::Signature), "{r}");
    assert!(
        r.reasons().iter().all(|x| x.kind == ReasonKind::Signature),
        "the VBIOS chain is valid in June 2024: {r}"
    );
}

#[test]
fn truncated_and_mutated_rims_never_panic() {
    let bytes = read_vector(DRIVER);
    for cut in (0..bytes.len()).step_by(97) {
        assert!(verify_rim(&bytes[..cut], JUNE_2025).is_err());
    }
    for at in (0..bytes.len()).step_by(211) {
        let mut m = bytes.clone();
        m[at] ^= 0x20;
        let _ = verify_rim(&m, JUNE_2025);
    }
}
