//! NvmlProvider over the real dlopen/FFI path, against `cocoon-fake-nvml`, a
//! TEST DOUBLE of libnvidia-ml.so.1 that replays the recorded 8×H100
//! evidence (shared vectors, nvidia/hgx-8xh100-ppcie-nvtrust).
//!
//! The double is a dev-dependency of this crate, so cargo builds its cdylib
//! (`libcocoon_fake_nvml.so`, in the target's `deps/` directory, beside this
//! test binary) before these tests run. The double reads its configuration
//! from environment variables at `nvmlInit_v2`, and its state is global to
//! the process, so the tests take turns (ENV lock).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use cocoon_gpu_evidence::{
    CcEnvironment, DeviceArch, GpuEvidenceError, GpuEvidenceProvider, NvmlProvider,
    RecordedProvider,
};

const NONCE_HEX: &str = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e";

static ENV: Mutex<()> = Mutex::new(());

fn nonce() -> [u8; 32] {
    hex::decode(NONCE_HEX).unwrap().try_into().unwrap()
}

fn evidence_file() -> PathBuf {
    cocoon_tests::vectors_dir().join("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json")
}

/// The double's cdylib: beside the test binary (deps/) or one level up.
fn fake_library() -> PathBuf {
    cocoon_tests::fake_nvml_library()
}

/// Configure the double (under the ENV lock, held by the caller until the
/// collection is over) and open it.
fn fake(mode: Option<&str>) -> (MutexGuard<'static, ()>, NvmlProvider) {
    let guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("COCOON_FAKE_NVML_EVIDENCE", evidence_file());
    match mode {
        Some(m) => std::env::set_var("COCOON_FAKE_NVML_MODE", m),
        None => std::env::remove_var("COCOON_FAKE_NVML_MODE"),
    }
    let provider = NvmlProvider::open_path(&fake_library()).expect("open the fake NVML");
    (guard, provider)
}

/// The recorded items, decoded.
fn recorded() -> Vec<(Vec<u8>, Vec<u8>)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evidence_file()).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    json.as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                b64.decode(item["evidence"].as_str().unwrap()).unwrap(),
                b64.decode(item["certificate"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn provider_is_a_shareable_trait_object() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NvmlProvider>();
    assert_send_sync::<RecordedProvider>();
    let _: Option<Box<dyn GpuEvidenceProvider>> = None;
}

#[test]
fn collects_the_eight_recorded_h100s_through_dlopen() {
    let (_env, provider) = fake(None);
    assert!(provider.name().contains("NVML live evidence"));
    assert!(provider.name().contains("cocoon_fake_nvml"));
    let ev = provider.collect(nonce()).expect("collect");
    assert_eq!(ev.nonce, nonce());
    assert!(ev.cc_enabled);
    assert!(!ev.dev_tools_mode);
    assert_eq!(ev.environment, CcEnvironment::Production);
    assert!(ev.claims_production_cc());

    let recorded = recorded();
    assert_eq!(ev.devices.len(), 8);
    assert_eq!(recorded.len(), 8);
    for (i, (dev, (report, cert))) in ev.devices.iter().zip(&recorded).enumerate() {
        assert_eq!(dev.index, i as u32);
        assert_eq!(dev.arch, DeviceArch::Hopper);
        assert_eq!(&dev.report, report, "device {i}: report bytes");
        assert_eq!(&dev.cert_chain, cert, "device {i}: certificate chain");
        assert!(dev.cert_chain.starts_with(b"-----BEGIN CERTIFICATE-----"));
        // SPDM 1.1 GET_MEASUREMENTS request: version, 0xE0, param1, param2,
        // nonce[32], slot id.
        assert_eq!(dev.report[1], 0xE0, "device {i}: GET_MEASUREMENTS");
        assert_eq!(&dev.report[4..36], &nonce(), "device {i}: request nonce");
        assert_eq!(dev.request_nonce(), Some(nonce()));
        assert_eq!(dev.driver_version, "590.12");
        assert_eq!(dev.vbios_version, "96.00.A5.00.01");
    }

    // The same bytes as the recording served without the driver interface.
    let direct = RecordedProvider::from_file(&evidence_file())
        .unwrap()
        .collect(nonce())
        .unwrap();
    assert_eq!(direct.devices, ev.devices);

    // Twice in a row: init/shutdown pair up.
    assert_eq!(provider.collect(nonce()).unwrap(), ev);
}

#[test]
fn a_nonce_without_a_recording_gets_the_drivers_refusal() {
    let (_env, provider) = fake(None);
    let mut other = nonce();
    other[0] ^= 1;
    let err = provider.collect(other).unwrap_err();
    match &err {
        GpuEvidenceError::Nvml { function, code, .. } => {
            assert_eq!(*function, "nvmlDeviceGetConfComputeGpuAttestationReport");
            assert_eq!(*code, 2, "NVML_ERROR_INVALID_ARGUMENT");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("nvmlDeviceGetConfComputeGpuAttestationReport"),
        "{text}"
    );
    assert!(text.contains("Invalid Argument"), "{text}");
}

#[test]
fn a_driver_that_ignores_the_nonce_is_caught() {
    let (_env, provider) = fake(Some("ignore-nonce"));
    let mut other = nonce();
    other[31] ^= 0x80;
    let err = provider.collect(other).unwrap_err();
    assert!(
        matches!(&err, GpuEvidenceError::ReportNonceMismatch { index: 0, found } if found == NONCE_HEX),
        "{err:?}"
    );
}

#[test]
fn a_missing_library_is_named() {
    let path = Path::new("/nonexistent/cocoon/libnvidia-ml.so.1");
    let err = NvmlProvider::open_path(path).unwrap_err();
    assert!(
        matches!(err, GpuEvidenceError::LibraryLoad { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/cocoon/libnvidia-ml.so.1"),
        "{text}"
    );
    assert!(text.starts_with("cannot load the NVML library"), "{text}");
}

#[test]
fn a_library_that_is_not_nvml_is_refused_at_open() {
    // The C library is loaded in every test process; it has no NVML.
    let err = NvmlProvider::open_path(Path::new("libc.so.6")).unwrap_err();
    match &err {
        GpuEvidenceError::MissingSymbol { symbol, path, .. } => {
            assert_eq!(*symbol, "nvmlInit_v2");
            assert_eq!(path, "libc.so.6");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn oversize_report_from_the_driver_is_refused() {
    let (_env, provider) = fake(Some("oversize-report"));
    let err = provider.collect(nonce()).unwrap_err();
    match &err {
        GpuEvidenceError::SizeOutOfRange {
            function,
            field,
            size,
            capacity,
        } => {
            assert_eq!(*function, "nvmlDeviceGetConfComputeGpuAttestationReport");
            assert_eq!(*field, "attestationReportSize");
            assert_eq!(*size, 0x2001);
            assert_eq!(*capacity, 0x2000);
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn oversize_certificate_chain_from_the_driver_is_refused() {
    let (_env, provider) = fake(Some("oversize-cert"));
    let err = provider.collect(nonce()).unwrap_err();
    match &err {
        GpuEvidenceError::SizeOutOfRange {
            function,
            field,
            size,
            capacity,
        } => {
            assert_eq!(*function, "nvmlDeviceGetConfComputeGpuCertificate");
            assert_eq!(*field, "attestationCertChainSize");
            assert_eq!(*size, 0x1401);
            assert_eq!(*capacity, 0x1400);
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn cc_off_is_reported_not_hidden() {
    let (_env, provider) = fake(Some("cc-off"));
    let err = provider.collect(nonce()).unwrap_err();
    let text = err.to_string();
    match &err {
        GpuEvidenceError::CcOff {
            cc_feature, source, ..
        } => {
            assert_eq!(*cc_feature, 0);
            assert!(
                matches!(**source, GpuEvidenceError::Nvml { code: 3, .. }),
                "{source:?}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(text.contains("confidential computing is off"), "{text}");
    assert!(
        text.contains("CC attestation not supported by this driver/GPU"),
        "{text}"
    );
}

#[test]
fn dev_tools_mode_is_reported() {
    let (_env, provider) = fake(Some("devtools"));
    let ev = provider.collect(nonce()).unwrap();
    assert!(ev.cc_enabled);
    assert!(ev.dev_tools_mode);
    assert!(!ev.claims_production_cc());
    assert_eq!(ev.devices.len(), 8);
}

#[test]
fn cc_not_supported_names_the_function() {
    let (_env, provider) = fake(Some("not-supported"));
    let text = provider.collect(nonce()).unwrap_err().to_string();
    assert!(
        text.starts_with("nvmlSystemGetConfComputeState failed"),
        "{text}"
    );
    assert!(
        text.contains("CC attestation not supported by this driver/GPU"),
        "{text}"
    );
}

#[test]
fn no_driver_fails_at_init() {
    let (_env, provider) = fake(None);
    std::env::remove_var("COCOON_FAKE_NVML_EVIDENCE");
    let err = provider.collect(nonce()).unwrap_err();
    assert!(
        matches!(
            err,
            GpuEvidenceError::Nvml {
                function: "nvmlInit_v2",
                code: 9,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("kernel driver is not loaded"));
}
