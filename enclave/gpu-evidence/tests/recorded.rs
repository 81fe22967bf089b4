//! RecordedProvider over the recorded nvtrust evidence (shared vectors).

use std::path::PathBuf;

use cocoon_gpu_evidence::{
    CcEnvironment, DeviceArch, GpuEvidenceError, GpuEvidenceProvider, RecordedProvider,
};

const NONCE_HEX: &str = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e";

fn nonce() -> [u8; 32] {
    hex::decode(NONCE_HEX).unwrap().try_into().unwrap()
}

fn vector(name: &str) -> PathBuf {
    cocoon_tests::vectors_dir()
        .join("nvidia/hgx-8xh100-ppcie-nvtrust")
        .join(name)
}

#[test]
fn serves_the_recording_and_says_it_is_not_live() {
    let provider = RecordedProvider::from_file(&vector("gpu_evidence.json")).unwrap();
    assert!(provider.name().starts_with("recorded evidence (NOT LIVE)"));
    assert_eq!(provider.recorded_nonce(), nonce());
    let ev = provider.collect(nonce()).unwrap();
    assert_eq!(ev.devices.len(), 8);
    assert!(ev.cc_enabled);
    assert_eq!(ev.environment, CcEnvironment::NotRecorded);
    for (i, d) in ev.devices.iter().enumerate() {
        assert_eq!(d.index, i as u32);
        assert_eq!(d.arch, DeviceArch::Hopper);
        assert_eq!(d.request_nonce(), Some(nonce()));
        assert_eq!(d.report.len(), 4274);
        assert!(d.cert_chain.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(d.driver_version, "590.12");
        assert_eq!(d.vbios_version, "96.00.A5.00.01");
    }
}

#[test]
fn refuses_a_nonce_it_has_no_recording_for() {
    let provider = RecordedProvider::from_file(&vector("gpu_evidence.json")).unwrap();
    let mut other = nonce();
    other[5] ^= 0xff;
    let err = provider.collect(other).unwrap_err();
    assert!(
        matches!(err, GpuEvidenceError::RecordedNonceMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("NOT LIVE"), "{text}");
    assert!(text.contains(NONCE_HEX), "{text}");
}

#[test]
fn carries_recorded_switch_evidence() {
    let provider = RecordedProvider::from_file(&vector("switch_evidence.json")).unwrap();
    let ev = provider.collect(nonce()).unwrap();
    assert_eq!(ev.devices.len(), 4);
    for d in &ev.devices {
        assert_eq!(d.arch, DeviceArch::Ls10);
        assert_eq!(d.request_nonce(), Some(nonce()));
        assert!(d.driver_version.is_empty());
    }
}

#[test]
fn record_then_replay_round_trips() {
    let provider = RecordedProvider::from_file(&vector("gpu_evidence.json")).unwrap();
    let ev = provider.collect(nonce()).unwrap();
    let json = RecordedProvider::record(&ev);
    let again = RecordedProvider::from_json(json.as_bytes())
        .unwrap()
        .collect(nonce())
        .unwrap();
    assert_eq!(again, ev);
}

#[test]
fn cc_state_can_be_stated() {
    let provider = RecordedProvider::from_file(&vector("gpu_evidence.json"))
        .unwrap()
        .with_cc_state(true, true, CcEnvironment::Production);
    let ev = provider.collect(nonce()).unwrap();
    assert!(ev.dev_tools_mode);
    assert!(!ev.claims_production_cc());
}

#[test]
fn malformed_recordings_are_refused() {
    for (json, why) in [
        (&b"{}"[..], "not a JSON array"),
        (b"[]", "no devices"),
        (b"[{\"nonce\": \"00\"}]", "nonce is not 32 bytes"),
        (
            br#"[{"nonce": "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e", "evidence": "!!", "certificate": "", "arch": "HOPPER"}]"#,
            "evidence is not base64",
        ),
    ] {
        let err = RecordedProvider::from_json(json).unwrap_err();
        assert!(err.to_string().contains(why), "{err} / {why}");
    }
    let err = RecordedProvider::from_file(&vector("missing.json")).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
}
