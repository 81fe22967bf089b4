//! The enclave's GPU evidence at boot, over the real binary and a real
//! shared library loaded with dlopen: `cocoon-fake-nvml`, a TEST DOUBLE for
//! NVIDIA's `libnvidia-ml.so.1` that replays the recorded HGX evidence.
//!
//! A recording can only answer the nonce it was taken for, and the enclave
//! asks for its own session nonce (from the HPKE key it just made), so the
//! double refuses like a driver refusing a request it cannot serve, and the
//! enclave must refuse to boot rather than claim a GPU it could not attest.
//! Evidence that answers the right nonce needs an H100 (not lent here).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cocoon_test_kit::procs::{Proc, TempDir};

fn fake_library() -> PathBuf {
    cocoon_tests::fake_nvml_library()
}

fn boot(dir: &TempDir, name: &str, gpu_table: &str) -> (Option<i32>, String) {
    let config = format!("image_id = \"cocoon-gpu-test\"\n\n{gpu_table}");
    let (mut cmd, _socket) = common::enclave_command(dir, name, &config);
    cmd.env(
        "COCOON_FAKE_NVML_EVIDENCE",
        cocoon_tests::vectors_dir().join("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json"),
    );
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(Duration::from_secs(60));
    // Let the reader threads drain the closed pipes.
    std::thread::sleep(Duration::from_millis(300));
    (status.and_then(|s| s.code()), p.output())
}

#[test]
fn the_enclave_refuses_to_boot_when_its_gpus_cannot_answer_its_nonce() {
    let dir = TempDir::new("e2e-gpu");
    let lib = fake_library();
    let (code, out) = boot(
        &dir,
        "nonce",
        &format!(
            "[gpu]\nevidence = \"nvml\"\nlibrary = {:?}\n",
            lib.display().to_string()
        ),
    );
    assert_eq!(code, Some(70), "{out}");
    assert!(out.contains("boot failed"), "{out}");
    assert!(
        out.contains("nvmlDeviceGetConfComputeGpuAttestationReport"),
        "{out}"
    );
    assert!(!out.contains("ready listen="), "{out}");
}

#[test]
fn a_missing_driver_library_or_collateral_file_is_a_config_error() {
    let dir = TempDir::new("e2e-gpu-config");
    let (code, out) = boot(
        &dir,
        "nolib",
        "[gpu]\nevidence = \"nvml\"\nlibrary = \"/nonexistent/libnvidia-ml.so.1\"\n",
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("/nonexistent/libnvidia-ml.so.1"), "{out}");
    let lib = fake_library();
    let (code, out) = boot(
        &dir,
        "norim",
        &format!(
            "[gpu]\nevidence = \"nvml\"\nlibrary = {:?}\nrims = [\"/nonexistent/rim.xml\"]\n",
            lib.display().to_string()
        ),
    );
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("/nonexistent/rim.xml"), "{out}");
    let (code, out) = boot(&dir, "typo", "[gpu]\nevidence = \"nvml\"\nlibary = \"x\"\n");
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("libary"), "{out}");
}
