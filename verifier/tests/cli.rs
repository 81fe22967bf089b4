//! The `cocoon-verify` binary as a user runs it: exit codes, text and JSON
//! output, policy files, and usage errors, on real vectors.

use std::process::{Command, Output};

use cocoon_tests::vectors_dir;
use serde_json::Value;

const GENOA_MEASUREMENT: &str = "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc";
const AT: &str = "2025-10-01T08:00:00Z";

fn v(rel: &str) -> String {
    vectors_dir().join(rel).to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-verify"))
        .args(args)
        .output()
        .expect("run cocoon-verify")
}

fn genoa_args() -> Vec<String> {
    [
        "snp",
        "--report",
        &v("snp/genoa-v5-oak/report.bin"),
        "--cert",
        &v("snp/genoa-v5-oak/vcek.der"),
        "--at",
        AT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_owned(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn accepted_report_exits_zero_with_json_fields() {
    let mut args = genoa_args();
    args.extend([
        "--measurement".into(),
        GENOA_MEASUREMENT.into(),
        "--json".into(),
    ]);
    let out = run_owned(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_of(&out);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["reasons"].as_array().unwrap().len(), 0);
    let f = &j["fields"];
    assert_eq!(f["version"], 5);
    assert_eq!(f["measurement"], GENOA_MEASUREMENT);
    assert_eq!(f["vmpl"], 0);
    assert_eq!(f["policy"], "0x0000000000030000");
    assert_eq!(f["reported_tcb"]["snp"], 25);
    assert_eq!(f["reported_tcb"]["microcode"], 84);
    assert!(f["chip_id"].as_str().unwrap().starts_with("d2421d97"));
    assert!(f["report_data"].as_str().unwrap().starts_with("8100555a"));
    assert_eq!(j["product"], "Genoa");
}

#[test]
fn rejected_report_exits_one_with_reasons() {
    let mut args = genoa_args();
    args.extend(["--measurement".into(), "ab".repeat(48), "--json".into()]);
    let out = run_owned(&args);
    assert_eq!(out.status.code(), Some(1));
    let j = json_of(&out);
    assert_eq!(j["verdict"], "rejected");
    let reasons = j["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("measurement not in policy")),
        "{reasons:?}"
    );
    // Text mode says the same.
    let mut args = genoa_args();
    args.extend(["--measurement".into(), "ab".repeat(48)]);
    let out = run_owned(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REJECTED"));
}

#[test]
fn malformed_report_is_a_rejection_not_a_crash() {
    let dir = tempdir();
    let short = dir.join("short.bin");
    std::fs::write(&short, [0u8; 100]).unwrap();
    let out = run(&[
        "snp",
        "--report",
        short.to_str().unwrap(),
        "--cert",
        &v("snp/genoa-v5-oak/vcek.der"),
        "--measurement",
        GENOA_MEASUREMENT,
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let j = json_of(&out);
    assert!(
        j["reasons"][0]
            .as_str()
            .unwrap()
            .contains("exactly 1184 bytes"),
        "{j}"
    );
    assert!(j["fields"].is_null());
    let garbage = dir.join("garbage.der");
    std::fs::write(&garbage, b"not a certificate").unwrap();
    let out = run(&[
        "snp",
        "--report",
        &v("snp/genoa-v5-oak/report.bin"),
        "--cert",
        garbage.to_str().unwrap(),
        "--measurement",
        GENOA_MEASUREMENT,
        "--at",
        AT,
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn policy_file_is_read_and_its_errors_are_usage_errors() {
    let dir = tempdir();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "release = \"cocoon-test-1\"\nmax_evidence_age = \"skip\"\n[snp]\nmeasurements = [\"{GENOA_MEASUREMENT}\"]\nmin_tcb = {{ fmc = \"skip\", bootloader = 10, tee = 0, snp = 25, microcode = 84 }}\nvmpl = 0\nreport_data = \"skip\"\nhost_data = \"skip\"\nid_key_digests = \"skip\"\nauthor_key_digests = \"skip\"\nsmt = \"allowed\"\nrevocation = \"skip\"\n"
        ),
    )
    .unwrap();
    let mut args = genoa_args();
    args.extend(["--policy".into(), policy.to_string_lossy().into_owned()]);
    assert_eq!(run_owned(&args).status.code(), Some(0));

    std::fs::write(
        &policy,
        "release = \"cocoon-test-1\"\nmax_evidence_age = \"skip\"\n[snp]\nmeasurements = \"skip\"\n",
    )
    .unwrap();
    let out = run_owned(&args);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_64() {
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec!["snp".into()],
        vec!["frobnicate".into()],
        genoa_args(), // no measurement, no policy
        {
            let mut a = genoa_args();
            a.extend(["--measurement".into(), "zz".into()]);
            a
        },
        {
            let mut a = genoa_args();
            a.extend([
                "--measurement".into(),
                GENOA_MEASUREMENT.into(),
                "--at".into(),
                "yesterday".into(),
            ]);
            a
        },
        vec![
            "snp".into(),
            "--report".into(),
            "/nonexistent/report.bin".into(),
            "--cert".into(),
            "/nonexistent".into(),
            "--measurement".into(),
            GENOA_MEASUREMENT.into(),
        ],
        {
            let mut a = genoa_args();
            a.extend([
                "--measurement".into(),
                GENOA_MEASUREMENT.into(),
                "--policy".into(),
                "/nonexistent".into(),
            ]);
            a
        },
    ];
    for args in cases {
        let out = run_owned(&args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "args {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "args {args:?} printed no error");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

#[test]
fn explain_prints_fields_for_a_person() {
    let out = run(&["explain", &v("snp/milan-v3-dstack/report.bin")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version 3"), "{text}");
    assert!(text.contains("7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"));
    assert!(
        text.contains("bootloader=4 tee=0 snp=23 microcode=213"),
        "{text}"
    );
    assert!(text.contains("UNVERIFIED"));
    assert!(text.contains("(Milan)"));
    let out = run(&["explain", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(64));
}

fn tempdir() -> cocoon_test_kit::TempDir {
    cocoon_test_kit::TempDir::new("verify-cli")
}

const TDX_AT: &str = "2025-07-19T10:00:34Z";

fn tdx_mrtd() -> String {
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "tdx/dcap-qvl/tdx_quote")
        .unwrap();
    e["expected"]["fields"]["body"]["mrtd"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn tdx_quote_with_json_collateral_is_accepted_with_fields() {
    let out = run(&[
        "tdx",
        "--quote",
        &v("tdx/dcap-qvl/tdx_quote"),
        "--collateral",
        &v("tdx/dcap-qvl/tdx_quote_collateral.json"),
        "--mrtd",
        &tdx_mrtd(),
        "--at",
        TDX_AT,
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j = json_of(&out);
    assert_eq!(j["verdict"], "accepted");
    let f = &j["fields"];
    assert_eq!(f["version"], 4);
    assert_eq!(f["mrtd"], tdx_mrtd());
    assert_eq!(f["tcb_status"], "UpToDate");
    for k in [
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "report_data",
        "td_attributes",
    ] {
        assert!(f[k].is_string(), "{k} missing: {f}");
    }
    assert_eq!(f["td_attributes"], "0000001000000000");
}

#[test]
fn tdx_rejections_and_usage_errors() {
    // No matching TCB level: rejected with that reason.
    let out = run(&[
        "tdx",
        "--quote",
        &v("tdx/dcap-qvl/tdx_quote_outdated"),
        "--collateral",
        &v("tdx/dcap-qvl/tdx_quote_outdated_collateral.json"),
        "--mrtd",
        &"00".repeat(48),
        "--at",
        "2026-03-20T10:41:14Z",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let j = json_of(&out);
    assert!(
        j["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("no matching TCB level")),
        "{j}"
    );
    // Garbage collateral is a rejection; a missing file is a usage error.
    let dir = tempdir();
    let junk = dir.join("junk.cbor");
    std::fs::write(&junk, [0xff, 0x00, 0x13]).unwrap();
    let args = [
        "tdx",
        "--quote",
        &v("tdx/dcap-qvl/tdx_quote"),
        "--collateral",
        junk.to_str().unwrap(),
        "--mrtd",
        &tdx_mrtd(),
        "--at",
        TDX_AT,
    ];
    assert_eq!(run(&args).status.code(), Some(1));
    let args = [
        "tdx",
        "--quote",
        "/nonexistent",
        "--collateral",
        junk.to_str().unwrap(),
        "--mrtd",
        &tdx_mrtd(),
    ];
    assert_eq!(run(&args).status.code(), Some(64));
    let args = [
        "tdx",
        "--quote",
        &v("tdx/dcap-qvl/tdx_quote"),
        "--collateral",
        junk.to_str().unwrap(),
    ];
    assert_eq!(
        run(&args).status.code(),
        Some(64),
        "no policy is a usage error"
    );
}

#[test]
fn policy_init_pins_real_evidence_and_the_policy_verifies_it() {
    let dir = tempdir();
    // TDX quote.
    let policy = dir.join("tdx-policy.toml");
    let out = run(&[
        "policy",
        "init",
        "--from",
        &v("tdx/dcap-qvl/tdx_quote"),
        "--release",
        "cocoon-test-1",
        "--out",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains("release = \"cocoon-test-1\"") && text.contains(&tdx_mrtd()),
        "{text}"
    );
    let out = run(&[
        "tdx",
        "--quote",
        &v("tdx/dcap-qvl/tdx_quote"),
        "--collateral",
        &v("tdx/dcap-qvl/tdx_quote_collateral.json"),
        "--policy",
        policy.to_str().unwrap(),
        "--at",
        TDX_AT,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // SNP report.
    let policy = dir.join("snp-policy.toml");
    let out = run(&[
        "policy",
        "init",
        "--from",
        &v("snp/genoa-v5-oak/report.bin"),
        "--release",
        "cocoon-test-1",
        "--out",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&policy).unwrap();
    // Revocation is required by default, and Milan/Genoa's missing FMC is
    // skipped by name.
    assert!(text.contains("revocation = \"required\""), "{text}");
    assert!(text.contains("fmc = \"skip\""), "{text}");
    let mut args = genoa_args();
    args.extend(["--policy".into(), policy.to_string_lossy().into_owned()]);
    // The vectors carry no AMD CRL: refused, naming it.
    let out = run_owned(&args);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("AMD's CRL for Genoa is missing"),
        "{stdout}"
    );
    // Skipped by name, it verifies and says revocation was NOT CHECKED.
    std::fs::write(
        &policy,
        text.replace("revocation = \"required\"", "revocation = \"skip\""),
    )
    .unwrap();
    let out = run_owned(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("NOT CHECKED: revocation"), "{stdout}");
}

#[test]
fn bundle_with_unbound_claims_is_rejected() {
    use cocoon_attestation::bundle::{Claims, EvidenceBundle, PlatformEvidence};
    let dir = tempdir();
    let claims = Claims {
        hpke_public_key: vec![1; 32],
        receipt_public_key: vec![2; 65],
        image_id: "cocoon-test-1".into(),
        model_digests: vec![],
        config_digest: [0; 32],
        gpu_evidence_digest: None,
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
        gpu: None,
        claims_cbor: claims.to_cbor(),
    };
    let file = dir.join("bundle.cbor");
    std::fs::write(&file, bundle.to_cbor()).unwrap();
    let policy = dir.join("policy.toml");
    let out = run(&[
        "policy",
        "init",
        "--from",
        file.to_str().unwrap(),
        "--release",
        "cocoon-test-1",
        "--out",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    // The vectors carry no AMD CRL: skip revocation so the claims binding
    // is the one shortfall.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("revocation = \"required\"", "revocation = \"skip\""),
    )
    .unwrap();
    let out = run(&[
        "bundle",
        file.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let j = json_of(&out);
    let reasons = j["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("claims are not bound"),
        "{reasons:?}"
    );
    std::fs::write(&file, b"\xa1").unwrap();
    assert_eq!(
        run(&[
            "bundle",
            file.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap()
        ])
        .status
        .code(),
        Some(1)
    );
}

/// `--cert` takes the VCEK together with its ASK and ARK in one PEM file
/// (cloud providers' shape), in any order; the CAs in it are held to the
/// same rules as `--chain`.
#[test]
fn a_pem_bundle_of_vcek_ask_and_ark_is_accepted_as_cert() {
    use cocoon_tests::pem::{certificates, to_pem};
    let dir = tempdir();
    let vcek = std::fs::read(v("snp/genoa-v5-oak/vcek.der")).unwrap();
    let genoa =
        certificates(&std::fs::read_to_string(v("snp/amd-roots/ask_ark_genoa.pem")).unwrap());
    let milan =
        certificates(&std::fs::read_to_string(v("snp/amd-roots/ask_ark_milan.pem")).unwrap());
    let with = |name: &str, ders: Vec<Vec<u8>>, extra: &[&str]| {
        let file = dir.join(name);
        std::fs::write(&file, to_pem(&ders)).unwrap();
        let mut args = vec![
            "snp".to_string(),
            "--report".into(),
            v("snp/genoa-v5-oak/report.bin"),
            "--cert".into(),
            file.to_string_lossy().into_owned(),
            "--measurement".into(),
            GENOA_MEASUREMENT.into(),
            "--at".into(),
            AT.into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_owned(&args)
    };
    // VCEK first (Azure's order), and VCEK last.
    let first = vec![vcek.clone(), genoa[0].clone(), genoa[1].clone()];
    let out = with("first.pem", first, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", json_of(&out));
    let last = vec![genoa[1].clone(), genoa[0].clone(), vcek.clone()];
    let out = with("last.pem", last, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", json_of(&out));
    assert_eq!(json_of(&out)["product"], "Genoa");
    // Another product's ASK in the bundle is used as given, and fails.
    let wrong = vec![vcek.clone(), milan[0].clone(), milan[1].clone()];
    let out = with("wrong.pem", wrong, &[]);
    assert_eq!(out.status.code(), Some(1));
    let j = json_of(&out);
    assert!(j["reasons"][0].as_str().unwrap().contains("AMD"), "{j}");
    // Two VEKs, or none: refused by name.
    for (name, ders) in [
        (
            "two.pem",
            vec![vcek.clone(), vcek.clone(), genoa[0].clone()],
        ),
        ("none.pem", genoa.clone()),
    ] {
        let out = with(name, ders, &[]);
        assert_eq!(out.status.code(), Some(1));
        let j = json_of(&out);
        assert!(
            j["reasons"][0]
                .as_str()
                .unwrap()
                .contains("expected exactly one VCEK/VLEK certificate"),
            "{name}: {j}"
        );
    }
    // A bundle and --chain together: both are supplied chain certificates.
    let chain = v("snp/amd-roots/ask_ark_genoa.pem");
    let out = with(
        "first.pem",
        vec![vcek.clone(), genoa[1].clone()],
        &["--chain", &chain],
    );
    assert_eq!(out.status.code(), Some(0), "{}", json_of(&out));
}

/// `--report` detects hex text (as several SDKs store reports).
#[test]
fn a_report_as_hex_text_is_read() {
    let dir = tempdir();
    let raw = std::fs::read(v("snp/genoa-v5-oak/report.bin")).unwrap();
    let text: String = hex::encode(&raw)
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let file = dir.join("report.hex");
    std::fs::write(&file, text).unwrap();
    let args = |report: &str| {
        run(&[
            "snp",
            "--report",
            report,
            "--cert",
            &v("snp/genoa-v5-oak/vcek.der"),
            "--measurement",
            GENOA_MEASUREMENT,
            "--at",
            AT,
            "--json",
        ])
    };
    let out = args(file.to_str().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", json_of(&out));
    assert_eq!(json_of(&out)["fields"]["measurement"], GENOA_MEASUREMENT);
    // Hex text one byte short is a usage error naming the problem.
    std::fs::write(&file, hex::encode(&raw[1..])).unwrap();
    let out = args(file.to_str().unwrap());
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hex text of an SNP report"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One flipped digit still parses, and the signature refuses it.
    let mut flipped = hex::encode(&raw);
    flipped.replace_range(200..201, if &flipped[200..201] == "0" { "1" } else { "0" });
    std::fs::write(&file, flipped).unwrap();
    assert_eq!(args(file.to_str().unwrap()).status.code(), Some(1));
    // explain reads it too.
    std::fs::write(&file, hex::encode(&raw)).unwrap();
    assert_eq!(
        run(&["explain", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
}
