//! The `spdm_report` and `gpu_evidence` targets: NVIDIA GPU / NVSwitch
//! attestation reports (SPDM 1.1 GET_MEASUREMENTS transcripts) with their
//! certificate chains, and the CBOR evidence set an enclave publishes.

use std::hint::black_box;

use cocoon_attestation::nvidia::{GpuEvidence, SpdmReport};
use cocoon_verifier::nvidia::{verify_device, DeviceExpectations, Golden};

use crate::NOW;

const PEM_START: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// `spdm_report`: the input up to the first PEM armour line is a report
/// (binary; as hex text too when it is ASCII hex), the rest a PEM chain.
/// Whatever parses has every accessor called; then the whole is verified
/// with a golden value for every block (so the comparison runs).
/// Seeds: the vectors' reports followed by their chains.
pub fn spdm_report(data: &[u8]) {
    let split = data
        .windows(PEM_START.len())
        .position(|w| w == PEM_START)
        .unwrap_or(data.len());
    let (report, chain) = data.split_at(split);
    if let Ok(r) = SpdmReport::parse_hex(report) {
        black_box(r.blocks().len());
    }
    let parsed = match SpdmReport::parse(report) {
        Ok(r) => r,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    for b in parsed.blocks() {
        black_box(parsed.value(b));
    }
    for f in parsed.opaque_fields() {
        black_box((f.name(), parsed.opaque_value(f.kind)));
    }
    black_box((
        parsed.driver_version(),
        parsed.vbios_version(),
        parsed.fwid(),
        parsed.feature_mode(),
        parsed.switch_pdis(),
        parsed.chip_info(),
        parsed.project(),
        parsed.responder_nonce(),
        parsed.response_params(),
        parsed.signature().len(),
    ));
    let end = parsed.signed_bytes().len() + parsed.signature().len();
    assert_eq!(end + parsed.padding_len(), report.len());
    assert_eq!(parsed.bytes(), &report[..end], "the transcript is a prefix");
    assert!(
        report[end..].iter().all(|b| *b == 0),
        "only zero padding may follow the signature"
    );
    let golden: Vec<Golden> = parsed
        .blocks()
        .iter()
        .map(|b| Golden {
            index: u32::from(b.index).saturating_sub(1),
            alternatives: vec![parsed.value(b).to_vec()],
            source: "fuzz".into(),
        })
        .collect();
    let nonce = [0u8; 32];
    let expect = DeviceExpectations {
        nonce: Some(&nonce),
        golden: Some(&golden),
    };
    match verify_device(report, chain, &expect, NOW) {
        Ok(v) => {
            black_box((v.model(), v.device_id(), v.chain_der().len()));
        }
        Err(r) => {
            black_box(r.to_string());
        }
    }
}

/// `gpu_evidence`: the input as a CBOR GPU evidence set; what decodes must
/// encode and decode to the same value.
pub fn gpu_evidence(data: &[u8]) {
    match GpuEvidence::from_cbor(data) {
        Ok(e) => {
            let again = GpuEvidence::from_cbor(&e.to_cbor()).expect("re-encoded evidence decodes");
            assert_eq!(again, e);
            black_box(e.digest());
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

/// `rim`: the input as a reference integrity manifest (SWID XML with an
/// enveloped XML signature), parsed without and then with verification at
/// [`NOW`]. A RIM that verifies must say what the unverified parse says.
/// Seeds: the vectors' RIMs (valid, edited and with a foreign chain).
pub fn rim(data: &[u8]) {
    use cocoon_verifier::nvidia::rim::{parse_rim_unverified, verify_rim};
    let info = parse_rim_unverified(data);
    match verify_rim(data, NOW) {
        Ok(v) => {
            let info = info.expect("a RIM that verifies also parses");
            assert_eq!(v.measurements(), info.measurements.as_slice());
            black_box((v.tag_id(), v.version(), v.signer_chain_der().len()));
        }
        Err(r) => {
            black_box(r.to_string());
        }
    }
}
