//! TDX (and SGX) quote parsing over every real quote in the shared vectors:
//! header, body, QE report and signed length against the manifest, the PCK
//! leaf's SGX extensions against the manifest, every truncation and any
//! appended bytes refused, the manifest's negative mutations landing on the
//! fields they name, and a flip in every field either refused (lengths,
//! types, versions) or read back from the right place. No signatures are
//! checked here: that is the verifier's job.

use cocoon_attestation::tdx::{
    ParseError, PckExtensions, Quote, QuoteBody, QuoteField, TdReport, TeeType,
    CERT_DATA_PCK_CERT_CHAIN, CERT_DATA_QE_REPORT, ENCLAVE_REPORT_SIZE, SGX_EXTENSIONS_OID,
};
use cocoon_tests::{entries_of_kind, read_vector, unhex};
use serde_json::Value;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::Certificate;

/// One quote vector.
struct Case {
    path: String,
    /// The file as it is, possibly padded after the quote.
    file: Vec<u8>,
    expected: Value,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = entries_of_kind("tdx-quote")
        .into_iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap().to_string();
            Case {
                file: read_vector(&path),
                expected: e["expected"].clone(),
                path,
            }
        })
        .collect();
    assert!(
        cases.len() >= 7,
        "expected the seven quote vectors, found {}",
        cases.len()
    );
    assert!(
        cases
            .iter()
            .any(|c| c.path == "measure/tdx/gtg-ccel/cos-113-tdx-quote.dat"),
        "the CCEL quote must be among the tdx-quote entries"
    );
    cases
}

/// The quote at the start of the file, and how many bytes follow it.
fn quote_of(c: &Case) -> (Quote, usize) {
    let (q, rest) =
        Quote::parse_prefix(&c.file).unwrap_or_else(|e| panic!("{}: does not parse: {e}", c.path));
    (q, rest.len())
}

fn num(v: &Value) -> u64 {
    v.as_u64().expect("a number")
}

/// A parsed quote's bytes for a named field, looked up in `field_ranges`.
fn field_bytes<'q>(q: &'q Quote, section: &str, name: &str) -> &'q [u8] {
    let f = find_field(q, section, name);
    &q.as_bytes()[f.range()]
}

fn find_field(q: &Quote, section: &str, name: &str) -> QuoteField {
    q.field_ranges()
        .into_iter()
        .find(|f| f.section == section && f.name == name)
        .unwrap_or_else(|| panic!("no field {section}.{name}"))
}

/// The TD report field the manifest names, through the typed accessors.
fn td_field(td: &TdReport, name: &str) -> Vec<u8> {
    let b = td.td10();
    match name {
        "tee_tcb_svn" => td.tee_tcb_svn().components().to_vec(),
        "mrseam" => td.mrseam().to_vec(),
        "mrsignerseam" => td.mrsignerseam().to_vec(),
        "seam_attributes" => td.seam_attributes().to_vec(),
        "td_attributes" => td.td_attributes().0.to_le_bytes().to_vec(),
        "xfam" => td.xfam().to_le_bytes().to_vec(),
        "mrtd" => td.mrtd().to_vec(),
        "mrconfigid" => td.mrconfigid().to_vec(),
        "mrowner" => td.mrowner().to_vec(),
        "mrownerconfig" => td.mrownerconfig().to_vec(),
        "rtmr0" => td.rtmrs()[0].to_vec(),
        "rtmr1" => td.rtmrs()[1].to_vec(),
        "rtmr2" => td.rtmrs()[2].to_vec(),
        "rtmr3" => b.rtmr3.to_vec(),
        "report_data" => td.report_data().to_vec(),
        "tee_tcb_svn_2" => td.tee_tcb_svn_2().expect("TD 1.5").0.to_vec(),
        "mrservicetd" => td.mrservicetd().expect("TD 1.5").to_vec(),
        other => panic!("manifest names TD body field {other} this test does not know"),
    }
}

#[test]
fn every_quote_parses_and_its_fields_match_the_manifest() {
    for c in cases() {
        let p = &c.path;
        let f = &c.expected["fields"];
        let (q, trailing) = quote_of(&c);

        // Strict parsing: the quote alone parses to the same thing; the file
        // parses only if nothing follows the quote.
        assert_eq!(Quote::parse(q.as_bytes()).as_ref(), Ok(&q), "{p}");
        if trailing == 0 {
            assert_eq!(Quote::parse(&c.file).as_ref(), Ok(&q), "{p}");
        } else {
            assert_eq!(
                Quote::parse(&c.file),
                Err(ParseError::TrailingBytes {
                    quote_len: q.as_bytes().len(),
                    trailing
                }),
                "{p}"
            );
        }

        // Header.
        let h = q.header();
        assert_eq!(u64::from(q.version()), num(&f["version"]), "{p}");
        assert_eq!(u64::from(h.att_key_type()), num(&f["att_key_type"]), "{p}");
        let tee_hex = f["tee_type_hex"].as_str().unwrap();
        assert_eq!(format!("{:#x}", h.tee_type_raw()), tee_hex, "{p}");
        let tee = if tee_hex == "0x81" {
            TeeType::Tdx
        } else {
            TeeType::Sgx
        };
        assert_eq!(q.tee_type(), tee, "{p}");
        assert_eq!(u64::from(h.qe_svn()), num(&f["qe_svn"]), "{p}");
        assert_eq!(u64::from(h.pce_svn()), num(&f["pce_svn"]), "{p}");
        assert_eq!(
            h.qe_vendor_id().as_slice(),
            unhex(&f["qe_vendor_id"]),
            "{p}"
        );

        // Body descriptor (version 5).
        match q.body_descriptor() {
            Some(d) => {
                assert_eq!(u64::from(d.body_type), num(&f["body_type"]), "{p}");
                assert_eq!(u64::from(d.body_size), num(&f["body_size"]), "{p}");
            }
            None => {
                assert_ne!(q.version(), 5, "{p}");
                assert!(f.get("body_type").is_none(), "{p}");
            }
        }

        // Body: every field the manifest lists, through the typed accessor
        // and through `field_ranges` (which pins the offsets).
        let body = f["body"].as_object().unwrap();
        match q.body() {
            QuoteBody::Td(td) => {
                assert_eq!(tee, TeeType::Tdx, "{p}");
                for (name, want) in body {
                    if name == "td_attributes_debug" {
                        assert_eq!(td.td_attributes().debug(), want.as_bool().unwrap(), "{p}");
                        continue;
                    }
                    let want = unhex(want);
                    assert_eq!(td_field(td, name), want, "{p}: body.{name}");
                    assert_eq!(field_bytes(&q, "body", name), want, "{p}: body.{name}");
                }
                assert_eq!(q.report_data(), td.report_data(), "{p}");
                // The real quotes are production TDs.
                assert!(!td.td_attributes().debug(), "{p}");
                assert_eq!(td.td_attributes().tud(), 0, "{p}");
            }
            QuoteBody::Sgx(e) => {
                assert_eq!(tee, TeeType::Sgx, "{p}");
                for (name, want) in body {
                    let got: Vec<u8> = match name.as_str() {
                        "cpusvn" => e.cpusvn().to_vec(),
                        "attributes" => e.attributes().to_vec(),
                        "mrenclave" => e.mrenclave().to_vec(),
                        "mrsigner" => e.mrsigner().to_vec(),
                        "report_data" => e.report_data().to_vec(),
                        "miscselect" => {
                            assert_eq!(u64::from(e.miscselect()), num(want), "{p}");
                            continue;
                        }
                        "isvprodid" => {
                            assert_eq!(u64::from(e.isvprodid()), num(want), "{p}");
                            continue;
                        }
                        "isvsvn" => {
                            assert_eq!(u64::from(e.isvsvn()), num(want), "{p}");
                            continue;
                        }
                        other => panic!("manifest names SGX body field {other}"),
                    };
                    assert_eq!(got, unhex(want), "{p}: body.{name}");
                    assert_eq!(
                        field_bytes(&q, "body", name),
                        unhex(want),
                        "{p}: body.{name}"
                    );
                }
                assert!(e.report_data().starts_with(b"Hello, world!"), "{p}");
            }
        }

        // QE report.
        let qe = &f["qe_report"];
        let r = q.qe_report();
        assert_eq!(r.mrenclave().as_slice(), unhex(&qe["mrenclave"]), "{p}");
        assert_eq!(r.mrsigner().as_slice(), unhex(&qe["mrsigner"]), "{p}");
        assert_eq!(u64::from(r.isvprodid()), num(&qe["isvprodid"]), "{p}");
        assert_eq!(u64::from(r.isvsvn()), num(&qe["isvsvn"]), "{p}");
        assert_eq!(q.qe_report_bytes(), r.as_bytes().as_slice(), "{p}");
        assert_eq!(q.qe_report_bytes().len(), ENCLAVE_REPORT_SIZE, "{p}");
        assert_eq!(
            field_bytes(&q, "qe_report", "mrenclave"),
            unhex(&qe["mrenclave"]),
            "{p}"
        );

        // Signature data.
        assert_eq!(q.signed_bytes().len() as u64, num(&f["signed_len"]), "{p}");
        assert_eq!(q.signed_bytes(), &q.as_bytes()[..q.signed_bytes().len()]);
        assert_eq!(
            q.signature_data_len() as usize,
            q.as_bytes().len() - q.signed_bytes().len() - 4,
            "{p}"
        );
        let want_type = if q.version() == 3 {
            CERT_DATA_PCK_CERT_CHAIN
        } else {
            CERT_DATA_QE_REPORT
        };
        assert_eq!(q.certification_data_type(), want_type, "{p}");
        assert_eq!(q.qe_auth_data().len(), 32, "{p}");
        assert!(
            q.pck_cert_chain_pem()
                .starts_with(b"-----BEGIN CERTIFICATE-----"),
            "{p}"
        );
        assert_eq!(
            field_bytes(&q, "signature_data", "quote_signature"),
            q.signature()
        );
        assert_eq!(
            field_bytes(&q, "signature_data", "attestation_key"),
            q.attestation_key()
        );

        // The field table tiles the quote.
        let mut next = 0;
        for fr in q.field_ranges() {
            assert_eq!(fr.offset, next, "{p}: {fr} does not follow its predecessor");
            next = fr.offset + fr.len;
        }
        assert_eq!(next, q.as_bytes().len(), "{p}");
    }
}

/// The SGX extensions value of the PCK leaf certificate in a quote, and
/// whether the leaf was issued by the PCK Platform CA (rather than the
/// Processor CA).
fn pck_extension_value(q: &Quote) -> (Vec<u8>, bool) {
    let mut pem = q.pck_cert_chain_pem();
    while let [head @ .., 0] = pem {
        pem = head;
    }
    let chain = Certificate::load_pem_chain(pem).expect("PEM chain");
    assert_eq!(chain.len(), 3, "PCK, PCK CA and root");
    let oid = ObjectIdentifier::new_unwrap(SGX_EXTENSIONS_OID);
    let issuer = chain[0].tbs_certificate.issuer.to_string();
    assert!(issuer.contains("Intel SGX PCK"), "{issuer}");
    let value = chain[0]
        .tbs_certificate
        .extensions
        .as_ref()
        .expect("extensions")
        .iter()
        .find(|e| e.extn_id == oid)
        .expect("the SGX extensions")
        .extn_value
        .as_bytes()
        .to_vec();
    (value, issuer.contains("Platform CA"))
}

#[test]
fn pck_extensions_match_the_manifest() {
    for c in cases() {
        let p = &c.path;
        let want = &c.expected["pck_extensions"];
        let (q, _) = quote_of(&c);
        let (value, platform_ca) = pck_extension_value(&q);
        let ext = PckExtensions::from_der(&value).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(ext.fmspc.as_slice(), unhex(&want["fmspc"]), "{p}");
        assert_eq!(ext.pceid.as_slice(), unhex(&want["pceid"]), "{p}");
        assert_eq!(u64::from(ext.pcesvn), num(&want["pcesvn"]), "{p}");
        assert_eq!(ext.cpusvn.as_slice(), unhex(&want["cpusvn"]), "{p}");
        let comps: Vec<u64> = want["sgx_tcb_comp_svn"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        let got: Vec<u64> = ext.sgx_tcb_comp_svn.iter().map(|b| u64::from(*b)).collect();
        assert_eq!(got, comps, "{p}");
        // Only Platform CA certificates carry a platform instance ID.
        assert_eq!(ext.platform_instance_id.is_some(), platform_ca, "{p}");
    }
}

#[test]
fn mangled_pck_extensions_are_refused_without_panicking() {
    let c = cases().into_iter().next().unwrap();
    let (q, _) = quote_of(&c);
    let (ext, _) = pck_extension_value(&q);
    for n in 0..ext.len() {
        assert!(PckExtensions::from_der(&ext[..n]).is_err(), "length {n}");
    }
    let mut longer = ext.clone();
    longer.push(0);
    assert!(PckExtensions::from_der(&longer).is_err());
    // Bit flips anywhere: an error or a value, never a panic.
    for i in 0..ext.len() {
        for bit in [0x01, 0x80] {
            let mut m = ext.clone();
            m[i] ^= bit;
            let _ = PckExtensions::from_der(&m);
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    for c in cases() {
        let (q, _) = quote_of(&c);
        let exact = q.as_bytes();
        for n in 0..exact.len() {
            assert!(Quote::parse(&exact[..n]).is_err(), "{}: {n}", c.path);
            assert!(Quote::parse_prefix(&exact[..n]).is_err(), "{}: {n}", c.path);
        }
        // The file as it is: every shorter prefix fails strict parsing too
        // (inside the quote: lengths; inside the padding: trailing bytes).
        for n in (0..c.file.len()).filter(|n| *n != exact.len()) {
            assert!(Quote::parse(&c.file[..n]).is_err(), "{}: {n}", c.path);
        }
    }
}

#[test]
fn appended_bytes_are_refused() {
    for c in cases() {
        let (q, _) = quote_of(&c);
        let exact = q.as_bytes().to_vec();
        for extra in [vec![0u8], vec![0xFF; 16], exact.clone()] {
            let mut b = exact.clone();
            b.extend_from_slice(&extra);
            assert_eq!(
                Quote::parse(&b),
                Err(ParseError::TrailingBytes {
                    quote_len: exact.len(),
                    trailing: extra.len()
                }),
                "{}",
                c.path
            );
            let (again, rest) = Quote::parse_prefix(&b).unwrap();
            assert_eq!(again, q);
            assert_eq!(rest, extra.as_slice());
        }
    }
}

/// The field a manifest mutation description names: (text in the
/// description, section, field).
const MUTATED_FIELDS: &[(&str, &str, &str)] = &[
    ("(mrtd[0])", "body", "mrtd"),
    ("(rtmr0[0])", "body", "rtmr0"),
    ("(report_data[0])", "body", "report_data"),
    ("(mrenclave[0])", "body", "mrenclave"),
    ("(td_attributes DEBUG)", "body", "td_attributes"),
    (
        "(ECDSA quote signature r[0])",
        "signature_data",
        "quote_signature",
    ),
    (
        "(attestation public key[0])",
        "signature_data",
        "attestation_key",
    ),
    ("(QE report report_data[0])", "qe_report", "report_data"),
];

#[test]
fn manifest_negative_mutations_land_on_the_fields_they_name() {
    let mut applied = 0;
    for c in cases() {
        let (q, _) = quote_of(&c);
        let exact = q.as_bytes();
        let mutations = c.expected["negative_mutations"].as_array().unwrap();
        for m in mutations {
            let change = m["change"].as_str().unwrap();
            let ctx = format!("{}: {change}", c.path);
            if m["offset"] == "end" {
                assert!(Quote::parse(&exact[..exact.len() - 1]).is_err(), "{ctx}");
                assert!(Quote::parse(&c.file[..c.file.len() - 1]).is_err(), "{ctx}");
                applied += 1;
                continue;
            }
            let offset = num(&m["offset"]) as usize;
            let mut b = exact.to_vec();
            if change.starts_with("write u16 LE 99") {
                b[offset..offset + 2].copy_from_slice(&99u16.to_le_bytes());
                assert_eq!(
                    Quote::parse(&b),
                    Err(ParseError::UnsupportedVersion(99)),
                    "{ctx}"
                );
                applied += 1;
                continue;
            }
            let &(_, section, name) = MUTATED_FIELDS
                .iter()
                .find(|(text, _, _)| change.contains(text))
                .unwrap_or_else(|| panic!("{ctx}: a mutation this test does not know"));
            let field = find_field(&q, section, name);
            assert_eq!(field.offset, offset, "{ctx}: lands at {field}");
            if change.starts_with("set bit 0 of byte") {
                b[offset] |= 1;
            } else {
                let mask = change.rsplit("0x").next().unwrap();
                b[offset] ^= u8::from_str_radix(mask, 16).unwrap();
            }
            // Still a well-formed quote (the verifier refuses it on its
            // signature); the change is visible where the name says.
            let m = Quote::parse(&b).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_ne!(
                field_bytes(&m, section, name),
                field_bytes(&q, section, name),
                "{ctx}"
            );
            if name == "td_attributes" {
                assert!(m.td_report().unwrap().td_attributes().debug(), "{ctx}");
            }
            applied += 1;
        }
    }
    assert!(applied >= 50, "only {applied} manifest mutations applied");
}

/// Fields whose value decides the layout or the format: a flip in any of
/// them must make the quote unparseable.
const STRUCTURAL: &[&str] = &[
    "version",
    "att_key_type",
    "tee_type",
    "body_type",
    "body_size",
    "signature_data_len",
    "cert_data_type",
    "cert_data_size",
    "qe_auth_data_size",
    "pck_cert_data_type",
    "pck_cert_data_size",
];

#[test]
fn a_flip_in_any_field_is_refused_or_read_back_from_its_place() {
    for c in cases() {
        let (q, _) = quote_of(&c);
        let exact = q.as_bytes();
        for f in q.field_ranges() {
            if f.len == 0 {
                continue;
            }
            let ctx = format!("{}: {f}", c.path);
            let mut b = exact.to_vec();
            b[f.offset] ^= 0x01;
            let parsed = Quote::parse(&b);
            if STRUCTURAL.contains(&f.name) {
                assert!(parsed.is_err(), "{ctx}: a flip must be refused");
                continue;
            }
            let m = parsed.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(m.field_ranges(), q.field_ranges(), "{ctx}");
            // The accessor that owns the field sees the change.
            let changed = match f.section {
                "header" | "body_descriptor" | "body" => m.signed_bytes() != q.signed_bytes(),
                "signature_data" if f.name == "quote_signature" => m.signature() != q.signature(),
                "signature_data" if f.name == "attestation_key" => {
                    m.attestation_key() != q.attestation_key()
                }
                "qe_report" => {
                    m.qe_report() != q.qe_report() && m.qe_report_bytes() != q.qe_report_bytes()
                }
                "qe_report_certification_data" if f.name == "qe_report_signature" => {
                    m.qe_report_signature() != q.qe_report_signature()
                }
                "qe_report_certification_data" if f.name == "qe_auth_data" => {
                    m.qe_auth_data() != q.qe_auth_data()
                }
                "pck_certification_data" if f.name == "pck_cert_chain" => {
                    m.pck_cert_chain_pem() != q.pck_cert_chain_pem()
                }
                _ => panic!("{ctx}: a field this test does not classify"),
            };
            assert!(
                changed,
                "{ctx}: the flip is not visible through its accessor"
            );
            if f.section == "body" {
                assert_ne!(m.body(), q.body(), "{ctx}");
            }
        }
    }
}
