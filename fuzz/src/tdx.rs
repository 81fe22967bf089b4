//! The `tdx_quote` target: Intel TDX/SGX quote parsing and the PCK
//! certificate's SGX extensions decoder.

use std::hint::black_box;

use cocoon_attestation::tdx::{PckExtensions, Quote, QuoteBody, TdReport, ENCLAVE_REPORT_SIZE};

/// `tdx_quote`: the input as a quote, strictly ([`Quote::parse`]) and as a
/// prefix ([`Quote::parse_prefix`]); on success, every accessor and the
/// invariants that tie them to [`Quote::field_ranges`]. The input is also
/// fed to [`PckExtensions::from_der`] (cheap, and it shares nothing with the
/// quote parser, so a separate target would only split the corpus).
pub fn tdx_quote(data: &[u8]) {
    match PckExtensions::from_der(data) {
        Ok(ext) => {
            black_box(format!("{ext:?}"));
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }

    let strict = Quote::parse(data);
    let (quote, rest) = match Quote::parse_prefix(data) {
        Ok(ok) => ok,
        Err(e) => {
            assert_eq!(
                strict.as_ref().err(),
                Some(&e),
                "parse and parse_prefix disagree"
            );
            black_box(e.to_string());
            return;
        }
    };
    let len = quote.as_bytes().len();
    assert_eq!(
        quote.as_bytes(),
        &data[..len],
        "as_bytes is not the input's prefix"
    );
    assert_eq!(rest, &data[len..], "parse_prefix rest");
    match strict {
        Ok(q) => {
            assert!(rest.is_empty(), "strict parse accepted trailing bytes");
            assert!(q == quote, "parse and parse_prefix disagree");
        }
        Err(e) => {
            assert!(!rest.is_empty(), "strict parse refused a whole quote: {e}");
            black_box(e.to_string());
        }
    }
    exercise_quote(&quote);
}

fn exercise_quote(q: &Quote) {
    let bytes = q.as_bytes();
    // The field table tiles the quote, and the accessors read from it.
    let fields = q.field_ranges();
    let mut next = 0;
    for f in &fields {
        assert_eq!(
            f.offset, next,
            "field_ranges: {f} does not follow its predecessor"
        );
        next = f.offset + f.len;
        black_box(f.to_string());
    }
    assert_eq!(next, bytes.len(), "field_ranges do not cover the quote");
    let field = |section: &str, name: &str| -> &[u8] {
        let f = fields
            .iter()
            .find(|f| f.section == section && f.name == name)
            .unwrap_or_else(|| panic!("field_ranges has no {section}.{name}"));
        &bytes[f.range()]
    };
    assert_eq!(
        q.signed_bytes(),
        &bytes[..q.signed_bytes().len()],
        "signed_bytes"
    );
    assert_eq!(field("signature_data", "quote_signature"), q.signature());
    assert_eq!(
        field("signature_data", "attestation_key"),
        q.attestation_key()
    );
    assert_eq!(
        field("qe_report_certification_data", "qe_report_signature"),
        q.qe_report_signature()
    );
    assert_eq!(
        field("qe_report_certification_data", "qe_auth_data"),
        q.qe_auth_data()
    );
    assert_eq!(
        field("pck_certification_data", "pck_cert_chain"),
        q.pck_cert_chain_pem()
    );
    assert_eq!(q.qe_report_bytes().len(), ENCLAVE_REPORT_SIZE);
    assert_eq!(q.qe_report_bytes(), q.qe_report().as_bytes().as_slice());
    assert_eq!(field("body", "report_data"), q.report_data());
    assert!(
        Quote::parse(bytes).as_ref() == Ok(q),
        "the quote's own bytes do not parse to the same quote"
    );

    // Every accessor.
    let h = q.header();
    black_box((
        h.version(),
        h.att_key_type(),
        h.tee_type_raw(),
        h.tee_type().to_string(),
        h.qe_svn(),
        h.pce_svn(),
        h.qe_vendor_id(),
        h.user_data(),
        h.raw().clone(),
    ));
    black_box((q.body_descriptor(), q.signature_data_len()));
    black_box(q.certification_data_type());
    let qe = q.qe_report();
    black_box((qe.isvprodid(), qe.isvsvn(), qe.debug(), qe.miscselect()));
    match q.body() {
        QuoteBody::Td(td) => {
            assert!(q.td_report().is_some() && q.enclave_report().is_none());
            let a = td.td_attributes();
            black_box((
                a.debug(),
                a.tud(),
                a.sept_ve_disable(),
                a.migratable(),
                a.pks(),
                a.kl(),
                a.perfmon(),
                a.unknown_bits(),
            ));
            let svn = td.tee_tcb_svn();
            black_box((
                svn.components(),
                svn.tdx_module_minor_svn(),
                svn.tdx_module_major_svn(),
            ));
            black_box((td.xfam(), td.rtmrs(), td.mrtd(), td.mrseam()));
            let td15 = matches!(td, TdReport::Td15(_));
            assert_eq!(td.tee_tcb_svn_2().is_some(), td15);
            assert_eq!(td.mrservicetd().is_some(), td15);
        }
        QuoteBody::Sgx(e) => {
            assert!(q.enclave_report().is_some() && q.td_report().is_none());
            black_box((
                e.mrenclave(),
                e.mrsigner(),
                e.attribute_flags(),
                e.configsvn(),
            ));
        }
    }
    black_box(format!("{q:?}"));
}
