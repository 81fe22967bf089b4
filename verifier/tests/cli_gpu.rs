//! `cocoon-verify gpu` as a user runs it on the NVIDIA vectors: exit codes
//! (0 accepted, 1 rejected, 64 usage), text and JSON, every input format.

use std::process::{Command, Output};

use cocoon_tests::vectors_dir;
use serde_json::Value;

const AT: &str = "2024-06-01T00:00:00Z";
const NONCE_535: &str = "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66";
const NONCE_HGX: &str = "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e";

fn v(rel: &str) -> String {
    vectors_dir().join(rel).to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-verify"))
        .arg("gpu")
        .args(args)
        .output()
        .expect("run cocoon-verify")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_hex_report_with_its_chain_and_vbios_rim() {
    let report = v("nvidia/h100-535-vbios-rim/hopperAttestationReport.txt");
    let chain = v("nvidia/h100-535-vbios-rim/hopperCertChain.txt");
    let out = run(&[
        "--evidence",
        &report,
        "--cert-chain",
        &chain,
        "--nonce",
        NONCE_535,
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j = json(&out);
    assert_eq!(j["verdict"], "accepted");
    let d = &j["fields"]["devices"][0];
    assert_eq!(d["kind"], "gpu");
    assert_eq!(d["model"], "GH100");
    assert_eq!(d["driver_version"], "535.86.09");
    assert_eq!(d["vbios_version"], "96.00.5E.00.01");
    assert_eq!(d["measurement_blocks"], 64);
    assert!(j["fields"]["not_checked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("measurements")));
    // A RIM makes the comparison required: the VBIOS RIM matches, but a GPU
    // also needs its driver's RIM, which the vectors do not have.
    let rim = v("nvidia/h100-535-vbios-rim/1010_0200_882_96005E0001_PROD.swidtag");
    let out = run(&[
        "--evidence",
        &report,
        "--cert-chain",
        &chain,
        "--vbios-rim",
        &rim,
        "--nonce",
        NONCE_535,
        "--at",
        AT,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no verified driver RIM for GH100 535.86.09"),
        "{text}"
    );
    // A wrong nonce is a rejection with exit 1.
    let out = run(&[
        "--evidence",
        &report,
        "--cert-chain",
        &chain,
        "--nonce",
        &"00".repeat(32),
        "--at",
        AT,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nonce mismatch"));
}

#[test]
fn the_switch_with_its_rim_is_accepted() {
    let out = run(&[
        "--evidence",
        &v("nvidia/nvswitch-ls10/switchAttestationReport.txt"),
        "--cert-chain",
        &v("nvidia/nvswitch-ls10/switchCertChain.txt"),
        "--vbios-rim",
        &v("nvidia/nvswitch-ls10/switchVBIOSRim_NV_SWITCH_BIOS_5612_0002_890_9610550001.xml"),
        "--at",
        "2026-06-01T00:00:00Z",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ACCEPTED"), "{text}");
    assert!(text.contains("RIM LS10 96.10.55.00.01"), "{text}");
    assert!(text.contains("NOT CHECKED: nonce"), "{text}");
}

#[test]
fn the_hgx_json_sets_are_accepted_under_a_policy() {
    let dir = cocoon_test_kit::TempDir::new("cli-gpu");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("{}[gpu]", cocoon_test_kit::simulated::policy_toml(None)) + "\ngpus = 8\nswitches = 0\nmodels = [\"GH100\"]\nmin_driver = \"590.0\"\nmin_vbios = \"96.00.A0.00.00\"\ncc_mode = \"skip\"\nrims = \"skip\"\nrevocation = \"skip\"\n",
    )
    .unwrap();
    let gpus = v("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json");
    let p = policy.to_string_lossy().into_owned();
    let out = run(&[
        "--evidence",
        &gpus,
        "--nonce",
        NONCE_HGX,
        "--policy",
        &p,
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j = json(&out);
    assert_eq!(j["fields"]["devices"].as_array().unwrap().len(), 8);
    assert_eq!(j["fields"]["devices"][7]["feature_mode"], "ProtectedPcie");
    // The switches under the same policy: not GPUs, so the count fails.
    let switches = v("nvidia/hgx-8xh100-ppcie-nvtrust/switch_evidence.json");
    let out = run(&[
        "--evidence",
        &switches,
        "--nonce",
        NONCE_HGX,
        "--policy",
        &p,
        "--at",
        AT,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 GPUs attested, the policy requires 8"));
    // A policy asking for CC mode cannot be met by bare evidence files.
    let strict = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("cc_mode = \"skip\"", "cc_mode = \"on\"");
    std::fs::write(&policy, strict).unwrap();
    let out = run(&[
        "--evidence",
        &gpus,
        "--nonce",
        NONCE_HGX,
        "--policy",
        &p,
        "--at",
        AT,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not say whether CC mode is on"));
}

#[test]
fn the_invalid_signature_vector_exits_one() {
    let out = run(&[
        "--evidence",
        &v("nvidia/negative/hopperAttestationReportInvalidSignature.txt"),
        "--cert-chain",
        &v("nvidia/negative/hopperCertChainExpired.txt"),
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let j = json(&out);
    assert_eq!(j["verdict"], "rejected");
    assert!(j["reasons"][0]
        .as_str()
        .unwrap()
        .contains("SPDM signature does not verify"));
}

#[test]
fn usage_errors_exit_64() {
    let report = v("nvidia/h100-nvtrust-sample/hopperAttestationReport.txt");
    // Hex evidence without a chain.
    let out = run(&["--evidence", &report, "--at", AT]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert-chain"));
    // A missing file, a bad nonce, garbage evidence.
    assert_eq!(
        run(&["--evidence", "/nonexistent/file"]).status.code(),
        Some(64)
    );
    let chain = v("nvidia/h100-nvtrust-sample/hopperCertChain.txt");
    assert_eq!(
        run(&[
            "--evidence",
            &report,
            "--cert-chain",
            &chain,
            "--nonce",
            "xyz"
        ])
        .status
        .code(),
        Some(64)
    );
    assert_eq!(run(&["--evidence", &chain]).status.code(), Some(64));
}

#[test]
fn policy_init_pins_the_gpus_of_a_bundle() {
    use cocoon_attestation::bundle::{Claims, EvidenceBundle, GpuBundle, PlatformEvidence};
    use cocoon_attestation::nvidia::{DeviceEvidence, GpuCollateral, GpuEvidence};
    let dir = cocoon_test_kit::TempDir::new("cli-gpu-init");
    let items: Vec<Value> = serde_json::from_slice(
        &std::fs::read(v("nvidia/hgx-8xh100-ppcie-nvtrust/gpu_evidence.json")).unwrap(),
    )
    .unwrap();
    let devices = items
        .iter()
        .map(|i| DeviceEvidence {
            report: cocoon_tests::pem::decode_base64(i["evidence"].as_str().unwrap()),
            cert_chain: cocoon_tests::pem::decode_base64(i["certificate"].as_str().unwrap()),
        })
        .collect();
    let set = GpuEvidence {
        nonce: [0; 32],
        cc_enabled: true,
        devtools: false,
        devices,
    };
    let claims = Claims {
        hpke_public_key: vec![1; 32],
        receipt_public_key: vec![2; 65],
        image_id: "cocoon-test-1".into(),
        model_digests: vec![],
        config_digest: [0; 32],
        gpu_evidence_digest: Some(set.digest()),
        epoch: 1,
        issued_at: 1,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    };
    let bundle = EvidenceBundle {
        platform: PlatformEvidence::Snp {
            report: std::fs::read(v("snp/genoa-v5-oak/report.bin")).unwrap(),
            vek: std::fs::read(v("snp/genoa-v5-oak/vcek.der")).unwrap(),
            chain: vec![],
            crl: None,
        },
        claims_cbor: claims.to_cbor(),
        gpu: Some(GpuBundle {
            evidence_cbor: set.to_cbor(),
            collateral: GpuCollateral::default(),
        }),
    };
    let file = dir.join("bundle.cbor");
    std::fs::write(&file, bundle.to_cbor()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-verify"))
        .args([
            "policy",
            "init",
            "--from",
            file.to_str().unwrap(),
            "--release",
            "r1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let policy =
        cocoon_verifier::Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let g = policy.gpu.expect("a [gpu] table");
    use cocoon_verifier::policy::Check;
    assert_eq!(g.gpus, Check::Require(8));
    assert_eq!(g.switches, Check::Require(0));
    assert_eq!(g.models, Check::Require(vec!["GH100".to_string()]));
    assert_eq!(g.min_driver.required().map(|v| v.as_str()), Some("590.12"));
    assert_eq!(
        g.min_vbios.required().map(|v| v.as_str()),
        Some("96.00.A5.00.01")
    );
    assert_eq!(g.rims, Check::Require(()));
    // A device whose signature fails is never pinned.
    let mut bad = set.clone();
    bad.devices[3].report[200] ^= 1;
    let bundle = EvidenceBundle {
        gpu: Some(GpuBundle {
            evidence_cbor: bad.to_cbor(),
            collateral: GpuCollateral::default(),
        }),
        ..bundle
    };
    std::fs::write(&file, bundle.to_cbor()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-verify"))
        .args([
            "policy",
            "init",
            "--from",
            file.to_str().unwrap(),
            "--release",
            "r1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GPU device 3 does not verify"));
}

/// The driver's report buffer is zero-filled after the SPDM signature: the
/// padding is outside the signed transcript, so it is accepted, counted in
/// `fields`, and any non-zero byte there is a rejection.
#[test]
fn zero_padding_after_the_signature_is_ignored_and_counted() {
    let dir = cocoon_test_kit::TempDir::new("cli-gpu-pad");
    let text = std::fs::read_to_string(v("nvidia/h100-535-vbios-rim/hopperAttestationReport.txt"))
        .unwrap();
    let report = hex::decode(text.trim()).unwrap();
    let padding = cocoon_attestation::nvidia::MAX_REPORT - report.len();
    let mut buffer = report.clone();
    buffer.resize(cocoon_attestation::nvidia::MAX_REPORT, 0);
    let padded = dir.join("padded.txt");
    std::fs::write(&padded, hex::encode(&buffer)).unwrap();
    let chain = v("nvidia/h100-535-vbios-rim/hopperCertChain.txt");
    let args = |evidence: &str| {
        run(&[
            "--evidence",
            evidence,
            "--cert-chain",
            &chain,
            "--nonce",
            NONCE_535,
            "--at",
            AT,
            "--json",
        ])
    };
    let out = args(&padded.to_string_lossy());
    let j = json(&out);
    assert_eq!(out.status.code(), Some(0), "{j}");
    assert_eq!(j["fields"]["padding_bytes_ignored"], padding);
    assert_eq!(j["fields"]["devices"][0]["padding_bytes_ignored"], padding);
    // The exact report says 0.
    let out = args(&v("nvidia/h100-535-vbios-rim/hopperAttestationReport.txt"));
    assert_eq!(json(&out)["fields"]["padding_bytes_ignored"], 0);
    // One non-zero byte anywhere in the padding is refused.
    let mut dirty = buffer.clone();
    dirty[report.len() + padding / 2] = 1;
    let bad = dir.join("dirty.txt");
    std::fs::write(&bad, hex::encode(&dirty)).unwrap();
    let out = args(&bad.to_string_lossy());
    let j = json(&out);
    assert_eq!(out.status.code(), Some(1), "{j}");
    assert!(
        j["reasons"][0]
            .as_str()
            .unwrap()
            .contains("only zero padding may follow the signed transcript"),
        "{j}"
    );
    // Past the driver's 8 KiB buffer, even zeros are refused.
    let mut long = buffer;
    long.push(0);
    std::fs::write(&bad, hex::encode(&long)).unwrap();
    assert_eq!(args(&bad.to_string_lossy()).status.code(), Some(1));
}
