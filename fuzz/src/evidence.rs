//! The `tdx_collateral` and `bundle` targets: the wire formats an enclave's
//! evidence travels in (Intel collateral as `dcap-qvl` JSON, as our CBOR and
//! as Intel PCS response bodies; the evidence bundle and the claims, CBOR).
//! Whatever decodes must encode and decode again to the same value.

use std::hint::black_box;

use cocoon_attestation::bundle::{claims_report_data, Claims, EvidenceBundle, PlatformEvidence};
use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::snp_certs::{encode, CertTable, Guid};

use crate::hex_string;

/// `tdx_collateral`: the input as collateral ([`TdxCollateral::from_bytes`]:
/// `dcap-qvl` JSON when it starts with `{`, our CBOR otherwise), and split
/// in two at its first NUL byte (in the middle when it has none) as the TCB
/// info and QE identity responses of Intel's PCS
/// ([`TdxCollateral::from_pcs_responses`]). Seeds: the vectors' collateral
/// JSON, PCS response pairs joined by a NUL, and one CBOR collateral.
pub fn tdx_collateral(data: &[u8]) {
    match TdxCollateral::from_bytes(data) {
        Ok(c) => round_trip(&c),
        Err(e) => {
            black_box(e.to_string());
        }
    }

    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len() / 2);
    let (tcb_info, rest) = data.split_at(split);
    let qe_identity = rest.strip_prefix(b"\0").unwrap_or(rest);
    match TdxCollateral::from_pcs_responses(
        tcb_info,
        "tcb chain",
        qe_identity,
        "qe chain",
        Some(vec![1]),
        "crl chain",
        None,
    ) {
        Ok(c) => {
            // The signed members are cut out byte for byte: put back into
            // minimal responses, they are cut out again unchanged.
            let again = TdxCollateral::from_pcs_responses(
                format!(
                    r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                    c.tcb_info,
                    hex_string(&c.tcb_info_signature)
                )
                .as_bytes(),
                "tcb chain",
                format!(
                    r#"{{"signature":"{}","enclaveIdentity":{}}}"#,
                    hex_string(&c.qe_identity_signature),
                    c.qe_identity
                )
                .as_bytes(),
                "qe chain",
                Some(vec![1]),
                "crl chain",
                None,
            );
            assert_eq!(again.as_ref(), Ok(&c), "PCS members cut again differ");
            assert_eq!(c.tcb_info_issuer_chain, "tcb chain");
            assert_eq!(c.qe_identity_issuer_chain, "qe chain");
            assert_eq!(c.pck_crl.as_deref(), Some(&[1u8][..]));
            assert_eq!(c.root_ca_crl, None);
            round_trip(&c);
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

/// Collateral survives both of its own encodings.
fn round_trip(c: &TdxCollateral) {
    let cbor = c.to_cbor();
    assert_eq!(
        TdxCollateral::from_cbor(&cbor).as_ref(),
        Ok(c),
        "collateral CBOR round trip"
    );
    assert_eq!(
        TdxCollateral::from_bytes(&cbor).as_ref(),
        Ok(c),
        "collateral CBOR round trip (from_bytes)"
    );
    let json = c.to_dcap_qvl_json();
    assert_eq!(
        TdxCollateral::from_dcap_qvl_json(json.as_bytes()).as_ref(),
        Ok(c),
        "collateral JSON round trip"
    );
}

/// `bundle`: the input as an [`EvidenceBundle`] and as [`Claims`] (CBOR,
/// strict). Whatever decodes is encoded and decoded again and must be equal;
/// a bundle's claims bytes are decoded too. Seeds: CBOR bundles (SNP and TDX
/// with real evidence) and claims built by `fuzz/seed.sh`.
pub fn bundle(data: &[u8]) {
    match EvidenceBundle::from_cbor(data) {
        Ok(b) => {
            let again = EvidenceBundle::from_cbor(&b.to_cbor());
            assert_eq!(again.as_ref(), Ok(&b), "bundle CBOR round trip");
            match &b.platform {
                PlatformEvidence::Snp {
                    report,
                    vek,
                    chain,
                    crl,
                } => {
                    black_box((report.len(), vek.len(), chain.len()));
                    if let Some(crl) = crl {
                        crate::exercise_crl(crl);
                    }
                }
                PlatformEvidence::Tdx { quote, collateral } => {
                    black_box(quote.len());
                    round_trip(collateral);
                }
                other => {
                    black_box(format!("{other:?}"));
                }
            }
            black_box(claims_report_data(&b.claims_cbor));
            claims(&b.claims_cbor);
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
    claims(data);
}

fn claims(data: &[u8]) {
    match Claims::from_cbor(data) {
        Ok(c) => {
            let bytes = c.to_cbor();
            assert_eq!(
                Claims::from_cbor(&bytes).as_ref(),
                Ok(&c),
                "claims CBOR round trip"
            );
            // The encoding is canonical: equal claims, equal bytes.
            assert_eq!(
                Claims::from_cbor(&bytes).map(|c| c.to_cbor()),
                Ok(bytes),
                "claims encoding is not deterministic"
            );
            black_box(claims_report_data(data));
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

/// `snp_cert_table`: the input as the SEV-SNP certificate table a host
/// hands its guest (configfs-tsm `auxblob`, the `SNP_GET_EXT_REPORT`
/// certificate buffer). Every offset and length must stay inside the input;
/// a table that parses must encode to bytes that parse to the same entries,
/// and every certificate it names must lie within the input. Seeds: tables
/// around the vectors' VCEK/VLEK, ASK and ARK (page-padded, and VEK only).
pub fn snp_cert_table(data: &[u8]) {
    let table = match CertTable::parse(data) {
        Ok(t) => t,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    let base = data.as_ptr() as usize;
    for (guid, cert) in table.entries() {
        let at = cert.as_ptr() as usize;
        assert!(at >= base && at + cert.len() <= base + data.len());
        assert_eq!(table.get(*guid), Some(*cert));
        black_box((guid.to_string(), guid.name()));
    }
    black_box(table.get(Guid::VCEK));
    black_box(table.describe());
    let again = encode(table.entries()).expect("a parsed table encodes");
    let reparsed = CertTable::parse(&again).expect("an encoded table parses");
    assert_eq!(reparsed.entries(), table.entries());
}
