//! The `cocoon-measure` binary: outputs, exit codes (0 ok, 1 refused, 64
//! usage), and policy fragments read back with the verifier's own parser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cocoon_verifier::policy::{Check, Policy};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
}

fn snp(name: &str) -> PathBuf {
    cocoon_tests::vectors_dir().join("measure/snp").join(name)
}

fn tdx(name: &str) -> PathBuf {
    cocoon_tests::vectors_dir().join("measure/tdx").join(name)
}

/// A scratch file unique to this test process.
fn scratch(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-measure-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn snp_args(cmd: &mut Command, ovmf: &Path, empty: &Path) {
    cmd.arg("snp")
        .arg("--ovmf")
        .arg(ovmf)
        .args([
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--guest-features",
            "0x21",
        ])
        .args(["--vmm-type", "qemu", "--kernel"])
        .arg(empty)
        .arg("--initrd")
        .arg(empty)
        .args(["--append", "console=ttyS0 loglevel=7"]);
}

/// Case snp_default_cmdline of sev_snp_measure_cases.json.
#[test]
fn snp_case_prints_the_digest() {
    let empty = scratch("empty", b"");
    let mut cmd = bin();
    snp_args(&mut cmd, &snp("ovmf_AmdSev_suffix.bin"), &empty);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977\n"
    );
}

/// Case snp_ovmfx64_with_kernel_must_fail: refused, exit 1.
#[test]
fn must_fail_case_exits_1_with_the_reason() {
    let empty = scratch("empty", b"");
    let mut cmd = bin();
    snp_args(&mut cmd, &snp("ovmf_OvmfX64_suffix.bin"), &empty);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("SNP_KERNEL_HASHES"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_64() {
    let o = run(bin().args(["snp", "--vcpus", "1"]));
    assert_eq!(o.status.code(), Some(64), "missing arguments");
    let o = run(bin()
        .arg("snp")
        .arg("--ovmf")
        .arg(snp("ovmf_AmdSev_suffix.bin"))
        .args([
            "--vcpus",
            "1",
            "--vcpu-type",
            "Pentium-Pro",
            "--guest-features",
            "1",
        ]));
    assert_eq!(o.status.code(), Some(64), "unknown vCPU type");
    assert!(
        stderr(&o).contains("EPYC-Milan"),
        "lists the known types: {}",
        stderr(&o)
    );
    let o = run(bin().args([
        "snp",
        "--ovmf",
        "/nonexistent/ovmf.fd",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC",
        "--guest-features",
        "1",
    ]));
    assert_eq!(o.status.code(), Some(64), "unreadable file");
    let o = run(bin()
        .arg("snp")
        .arg("--ovmf")
        .arg(snp("ovmf_AmdSev_suffix.bin"))
        .args([
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
            "--guest-features",
            "1",
            "--policy-fragment",
        ]));
    assert_eq!(
        o.status.code(),
        Some(64),
        "--policy-fragment without --release"
    );
    let o = run(bin().arg("--help"));
    assert_eq!(o.status.code(), Some(0));
}

/// `snp-ovmf` prints the OVMF digest and layout; fed back with
/// `--ovmf-layout --ovmf-hash` it gives the digest of the full calculation.
#[test]
fn snp_ovmf_layout_round_trip() {
    let o = run(bin()
        .arg("snp-ovmf")
        .arg("--ovmf")
        .arg(snp("ovmf_AmdSev_suffix.bin")));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let hash = doc["ovmf_hash"].as_str().unwrap().to_string();
    assert_eq!(
        hash,
        "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
    );
    let layout = scratch("layout.json", &o.stdout);
    let empty = scratch("empty", b"");
    let o = run(bin()
        .arg("snp")
        .arg("--ovmf-layout")
        .arg(&layout)
        .args(["--ovmf-hash", &hash])
        .args([
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-v4",
            "--guest-features",
            "0x1",
            "--kernel",
        ])
        .arg(&empty)
        .arg("--initrd")
        .arg(&empty));
    assert!(o.status.success(), "{}", stderr(&o));
    // Case snp_4vcpus_feature_snp_only.
    assert_eq!(
        stdout(&o).trim(),
        "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"
    );
}

/// The dstack document used directly as a layout, with the digests it lists.
#[test]
fn dstack_document_through_the_cli() {
    let path = snp("dstack_milan_measurement_input.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let s = |k: &str| doc[k].as_str().unwrap().to_string();
    let o = run(bin()
        .arg("snp")
        .arg("--ovmf-layout")
        .arg(&path)
        .args(["--ovmf-hash", &s("ovmf_hash")])
        .args([
            "--kernel-sha256",
            &s("kernel_hash"),
            "--initrd-sha256",
            &s("initrd_hash"),
        ])
        .args(["--append", s("base_cmdline").trim()])
        .args([
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-v4",
            "--guest-features",
            "1",
        ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"
    );
}

#[test]
fn tdx_replay_matches_the_quote_or_exits_1() {
    let o = run(bin()
        .arg("tdx-replay")
        .arg("--ccel-table")
        .arg(tdx("gtg-ccel/ccel_table.dat"))
        .arg("--ccel-data")
        .arg(tdx("gtg-ccel/ccel_data.dat"))
        .arg("--quote")
        .arg(tdx("gtg-ccel/cos-113-tdx-quote.dat")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(
        "rtmr0 3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6\n"
    ));
    assert!(stderr(&o).contains("match the replay"));

    // The dstack report: its log and its own quote.
    let o = run(bin()
        .arg("tdx-replay")
        .arg("--dstack-quote-report")
        .arg(tdx("dstack-quote-report/quote-report.json")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(
        "rtmr3 0f787c3877f3e95095d5a4d13dd0fe0233803b30120d8469866719dc28f519ce021fe1e53459121e7a5a4443147185a8"
    ));

    // The CCEL log against the dstack quote: a mismatch, refused.
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tdx("dstack-quote-report/quote-report.json")).unwrap(),
    )
    .unwrap();
    let other_quote = scratch(
        "dstack-quote.hex",
        doc["quote"].as_str().unwrap().as_bytes(),
    );
    let o = run(bin()
        .arg("tdx-replay")
        .arg("--ccel-table")
        .arg(tdx("gtg-ccel/ccel_table.dat"))
        .arg("--ccel-data")
        .arg(tdx("gtg-ccel/ccel_data.dat"))
        .arg("--quote")
        .arg(&other_quote));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // The dstack log alone, as a file.
    let log = scratch(
        "dstack-log.json",
        doc["event_log"].as_str().unwrap().as_bytes(),
    );
    let o = run(bin()
        .arg("tdx-replay")
        .arg("--event-log")
        .arg(&log)
        .arg("--events"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("DSTACK_RUNTIME_EVENT"));
}

#[test]
fn tdx_refuses_a_partial_firmware_and_says_unverified() {
    let o = run(bin()
        .arg("tdx")
        .arg("--firmware")
        .arg(snp("ovmf_AmdSev_suffix.bin")));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("outside"), "{}", stderr(&o));

    // Padded to the 4 MiB the metadata describes, the MRTD is computed and
    // labelled unverified on stdout and stderr.
    let mut full = vec![0u8; 0x400000 - 4096];
    full.extend_from_slice(&std::fs::read(snp("ovmf_AmdSev_suffix.bin")).unwrap());
    let fw = scratch("tdvf.fd", &full);
    let o = run(bin().arg("tdx").arg("--firmware").arg(&fw));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("mrtd  ") && out.contains("unverified: no reference vector"),
        "{out}"
    );
    assert!(stderr(&o).contains("unverified: no reference vector"));
}

fn wrap(release: &str, tables: &[&str]) -> Policy {
    let text = format!(
        "release = \"{release}\"\nmax_evidence_age = \"skip\"\n\n{}",
        tables.join("\n")
    );
    Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn policy_fragments_parse_with_the_verifier() {
    let empty = scratch("empty", b"");
    let mut cmd = bin();
    snp_args(&mut cmd, &snp("ovmf_AmdSev_suffix.bin"), &empty);
    let o = run(cmd.args([
        "--policy-fragment",
        "--release",
        "cocoon-test \"1\"\nrelease = 2",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let snp_table = stdout(&o);

    let o = run(bin()
        .arg("tdx-replay")
        .arg("--ccel-table")
        .arg(tdx("gtg-ccel/ccel_table.dat"))
        .arg("--ccel-data")
        .arg(tdx("gtg-ccel/ccel_data.dat"))
        .arg("--quote")
        .arg(tdx("gtg-ccel/cos-113-tdx-quote.dat"))
        .args(["--policy-fragment", "--release", "cocoon-test"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let tdx_table = stdout(&o);

    let p = wrap("cocoon-test", &[&snp_table, &tdx_table]);
    let snp_policy = p.snp.unwrap();
    let want: [u8; 48] = hex::decode(
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977",
    )
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(snp_policy.measurements, Check::Require(vec![want]));
    assert_eq!(snp_policy.vmpl, Check::Require(0));
    assert!(!snp_policy.allow_debug && !snp_policy.allow_migration_agent);

    let tdx = p.tdx.unwrap();
    let rtmr0: [u8; 48] = hex::decode(
        "3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6",
    )
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(tdx.rtmr[0], Check::Require(rtmr0));
    assert_eq!(tdx.rtmr[3], Check::Skip);
    let mrtd: [u8; 48] = hex::decode(
        "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a",
    )
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(
        tdx.mrtd,
        Check::Require(vec![mrtd]),
        "MRTD read from the quote"
    );
    assert!(!tdx.allow_debug);

    // The `tdx` fragment (MRTD computed, RTMR0 skipped) parses too.
    let mut full = vec![0u8; 0x400000 - 4096];
    full.extend_from_slice(&std::fs::read(snp("ovmf_AmdSev_suffix.bin")).unwrap());
    let fw = scratch("tdvf-policy.fd", &full);
    let o = run(bin().arg("tdx").arg("--firmware").arg(&fw).args([
        "--policy-fragment",
        "--release",
        "r",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("UNVERIFIED"));
    let p = wrap("r", &[&stdout(&o)]);
    let tdx = p.tdx.unwrap();
    assert!(matches!(tdx.mrtd, Check::Require(_)));
    assert_eq!(tdx.rtmr[0], Check::Skip);
}

/// The release's command line carries the root disk's dm-verity root hash
/// (images/image.lock): another root on the command line is another
/// launch digest, at every vCPU count a release publishes, so a disk with
/// other bytes cannot boot under the published measurement.
#[test]
fn a_different_verity_root_on_the_command_line_changes_the_snp_digest() {
    let empty = scratch("empty-verity", b"");
    let line = |root: &str| {
        format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init -- --disk /dev/vda --verity-root {root} \
             --verity-salt 00 --data-blocks 1000 --exec /usr/bin/cocoon-enclave --tee configfs-tsm"
        )
    };
    let digest = |root: &str, vcpus: &str| {
        let o = run(bin()
            .arg("snp")
            .arg("--ovmf")
            .arg(snp("ovmf_AmdSev_suffix.bin"))
            .args([
                "--vcpus",
                vcpus,
                "--vcpu-type",
                "EPYC-v4",
                "--guest-features",
                "0x1",
            ])
            .args(["--vmm-type", "qemu", "--kernel"])
            .arg(&empty)
            .arg("--initrd")
            .arg(&empty)
            .arg("--append")
            .arg(line(root)));
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = "11".repeat(32);
    let b = format!("10{}", "11".repeat(31));
    for vcpus in ["1", "2", "4", "8"] {
        let (da, db) = (digest(&a, vcpus), digest(&b, vcpus));
        assert_eq!(da.trim().len(), 96, "{da}");
        assert_ne!(
            da, db,
            "{vcpus} vCPUs: one bit of the verity root must change the digest"
        );
        assert_eq!(da, digest(&a, vcpus), "deterministic");
    }
}

/// A small image directory: empty kernel and initrd, the command line of
/// case snp_default_cmdline, and the release.json `images/release.py`
/// writes for them.
fn image_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cocoon-measure-manifest-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    std::fs::write(dir.join("vmlinuz"), b"").unwrap();
    std::fs::write(dir.join("initrd.cpio"), b"").unwrap();
    std::fs::write(dir.join("cmdline.txt"), "console=ttyS0 loglevel=7").unwrap();
    std::fs::write(
        dir.join("image.env"),
        "IMAGE_RELEASE=r\nSNP_VCPU_TYPE=EPYC-v4\n",
    )
    .unwrap();
    let release = serde_json::json!({
        "release": "cocoon-test-1",
        "kernel_sha256": empty_sha,
        "initrd_sha256": empty_sha,
        "cmdline": "console=ttyS0 loglevel=7",
        "disk_verity_root": "40".repeat(32),
        "models": [{"name": "m", "version": "1", "sha256": "01".repeat(32), "tokenizer_sha256": "02".repeat(32)}],
        "prices_from": "provider",
        "price_bounds": {"m": {"prompt": [1, 10], "completion": [1, 20]}},
        "max_request_lifetime_secs": 600
    });
    std::fs::write(
        dir.join("release.json"),
        serde_json::to_string_pretty(&release).unwrap(),
    )
    .unwrap();
    dir
}

/// `manifest` computes the SNP launch digest of the image (the same value
/// as case snp_default_cmdline), adds the given TDX and simulated values,
/// and writes canonical bytes that decode strictly, hash to the printed
/// value and carry the shared digests.
#[test]
fn manifest_writes_the_canonical_release_manifest() {
    use cocoon_protocol::release::{LaunchMeasurement, ReleaseManifest};
    let dir = image_dir("ok");
    let tdx = format!(
        "2:2048:{}:{}:{}:{}",
        "11".repeat(48),
        "22".repeat(48),
        "33".repeat(48),
        "44".repeat(48)
    );
    let o = run(bin()
        .args(["manifest", "--image"])
        .arg(&dir)
        .arg("--snp-ovmf")
        .arg(snp("ovmf_AmdSev_suffix.bin"))
        .args(["--vcpus", "1,2", "--guest-features", "0x21"])
        .args(["--tdx", &tdx])
        .args(["--simulated-measurement", &"5a".repeat(48)])
        .args(["--snp-min-tcb", "bootloader=10,tee=0,snp=23,microcode=213"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("SIMULATED TEE measurement: NOT CONFIDENTIAL"));
    let bytes = std::fs::read(dir.join("release-manifest.json")).unwrap();
    let m = ReleaseManifest::from_canonical(&bytes).unwrap();
    let hash = m.manifest_hash().unwrap();
    assert!(
        stdout(&o).starts_with(&format!("manifest_hash {}", hex::encode(hash))),
        "{}",
        stdout(&o)
    );
    match &m.measurements[0] {
        LaunchMeasurement::Snp { vcpus: 1, values } => assert_eq!(
            hex::encode(values.launch_measurement.0),
            "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.measurements.len(), 4, "snp x2, tdx, simulated");
    for (p, d) in m.measurement_digests() {
        assert!(
            stdout(&o).contains(&format!("digest {p:#04x} {}", hex::encode(d))),
            "{}",
            stdout(&o)
        );
    }
    assert_eq!(m.min_tcb.snp.unwrap().snp, 23);

    // The same inputs give the same bytes.
    let again = dir.join("again.json");
    let o = run(bin()
        .args(["manifest", "--image"])
        .arg(&dir)
        .arg("--out")
        .arg(&again)
        .args(["--simulated-measurement", &"5a".repeat(48)])
        .args(["--tdx", &tdx])
        .arg("--snp-ovmf")
        .arg(snp("ovmf_AmdSev_suffix.bin"))
        .args(["--vcpus", "2,1", "--guest-features", "0x21"])
        .args(["--snp-min-tcb", "microcode=213,snp=23,tee=0,bootloader=10"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

#[test]
fn manifest_refuses_an_image_release_json_does_not_describe() {
    let dir = image_dir("bad");
    std::fs::write(dir.join("vmlinuz"), b"another kernel").unwrap();
    let sim = "5a".repeat(48);
    let o = run(bin()
        .args(["manifest", "--image"])
        .arg(&dir)
        .args(["--simulated-measurement", &sim]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("vmlinuz has SHA-256"), "{}", stderr(&o));
    let dir = image_dir("none");
    let o = run(bin().args(["manifest", "--image"]).arg(&dir));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("no measurement"), "{}", stderr(&o));
    let o = run(bin()
        .args(["manifest", "--image"])
        .arg(&dir)
        .args(["--tdx", "1:2:3"]));
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(!dir.join("release-manifest.json").exists());
}
