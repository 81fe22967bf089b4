//! The configfs-tsm provider against a TEST DOUBLE of the kernel's
//! `/sys/kernel/config/tsm/report`, serving REAL reports and quotes from the
//! shared vectors (`../shared/vectors`, or `COCOON_VECTORS`).
//!
//! # The fake kernel
//!
//! A plain directory cannot act like configfs: the kernel creates an
//! entry's attributes inside `mkdir`, counts writes in `generation`, and
//! makes the report when `outblob` is read. [`FakeTsm`] plays the kernel
//! from a thread:
//!
//! * it polls the root; for each new entry it creates `provider`, `inblob`,
//!   `privlevel` (SNP), `privlevel_floor` (SNP), `outblob` and `auxblob`,
//!   and `generation` last (by rename, so it is never seen half-written);
//!   the provider waits, boundedly, for them (a real kernel has them at
//!   once);
//! * `outblob` and `auxblob` are FIFOs: the provider's read blocks until
//!   the fake has seen the 64 bytes in `inblob`, set `generation` to the
//!   number of writes, and opened the FIFO to answer, as the kernel makes
//!   the report inside the read;
//! * a script says what to serve (a vector's report, a truncated one, a bad
//!   certificate table) and whether to bump `generation` while answering,
//!   as another writer racing the provider would.
//!
//! A real report cannot be re-signed over other report data, so the
//! successful cases ask for the vector's own report data; asking for
//! anything else must be refused, and is. What the double cannot imitate is
//! configfs's `rmdir` of a populated entry (a plain directory with files
//! refuses it), so `rmdir` is checked where the entry is empty: when no
//! attributes ever appear.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_attestation::bundle::PlatformEvidence;
use cocoon_attestation::snp::SnpReport;
use cocoon_attestation::snp_certs::{encode, Guid};
use cocoon_attestation::tdx::Quote;
use cocoon_enclave::attest::{ConfigfsTsmProvider, TdxCollateralSource};
use cocoon_enclave::AttestationProvider;
use cocoon_verifier::policy::{Check, TdxPolicy};
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::tdx::verify_tdx;
use cocoon_verifier::{SnpPolicy, SnpVerifier, UnixTime};

/// How long the fake waits for the provider before giving up on an entry.
const FAKE_PATIENCE: Duration = Duration::from_secs(20);

/// What the fake kernel serves for every entry.
#[derive(Clone)]
struct Script {
    provider: &'static str,
    outblob: Vec<u8>,
    /// `None` for TDX (its auxblob is empty and never read).
    auxblob: Option<Vec<u8>>,
    /// Bump `generation` while answering `outblob` (another writer).
    race_on_outblob: bool,
    /// Bump `generation` while answering `auxblob`.
    race_on_auxblob: bool,
}

impl Script {
    fn snp(outblob: Vec<u8>, auxblob: Vec<u8>) -> Script {
        Script {
            provider: "sev_guest",
            outblob,
            auxblob: Some(auxblob),
            race_on_outblob: false,
            race_on_auxblob: false,
        }
    }
    fn tdx(outblob: Vec<u8>) -> Script {
        Script {
            provider: "tdx_guest",
            outblob,
            auxblob: None,
            race_on_outblob: false,
            race_on_auxblob: false,
        }
    }
}

/// What the fake saw of one entry.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    inblob: Vec<u8>,
    privlevel: Vec<u8>,
}

/// The test double of the kernel's report root.
struct FakeTsm {
    root: PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeTsm {
    fn start(script: Script) -> FakeTsm {
        let root = scratch_dir("tsm");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r, s, log) = (root.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut known = BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(dir) = std::fs::read_dir(&r) {
                    for e in dir.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if e.path().is_dir() && known.insert(name) {
                            let (entry, script, log) = (e.path(), script.clone(), log.clone());
                            std::thread::spawn(move || serve_entry(&entry, &script, &log));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        FakeTsm { root, stop, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeTsm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn scratch_dir(what: &str) -> PathBuf {
    cocoon_test_kit::TempDir::new(what).keep()
}

fn set_generation(entry: &Path, value: u64) {
    let tmp = entry.join(".generation.tmp");
    std::fs::write(&tmp, format!("{value}\n")).unwrap();
    std::fs::rename(&tmp, entry.join("generation")).unwrap();
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Answer one read of the FIFO at `path` with `bytes`; `before_close` runs
/// after the bytes are written and before the reader sees end-of-file.
fn answer(path: &Path, bytes: &[u8], before_close: impl FnOnce()) -> bool {
    let start = Instant::now();
    let mut f = loop {
        // O_NONBLOCK: opening the write end fails (ENXIO) until a reader
        // has it open, so the fake never hangs on a provider that gave up.
        match OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(f) => break f,
            Err(_) if start.elapsed() < FAKE_PATIENCE => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return false,
        }
    };
    f.write_all(bytes).unwrap();
    before_close();
    true
}

/// Play the kernel for one entry.
fn serve_entry(entry: &Path, script: &Script, log: &Mutex<Vec<Seen>>) {
    let snp = script.auxblob.is_some();
    std::fs::write(entry.join("provider"), format!("{}\n", script.provider)).unwrap();
    std::fs::write(entry.join("inblob"), b"").unwrap();
    if snp {
        std::fs::write(entry.join("privlevel"), b"").unwrap();
        std::fs::write(entry.join("privlevel_floor"), b"0\n").unwrap();
        mkfifo(&entry.join("auxblob"));
    } else {
        std::fs::write(entry.join("auxblob"), b"").unwrap();
    }
    mkfifo(&entry.join("outblob"));
    set_generation(entry, 0);

    // Wait for the report data.
    let start = Instant::now();
    let inblob = loop {
        let b = std::fs::read(entry.join("inblob")).unwrap_or_default();
        if b.len() == 64 {
            break b;
        }
        if start.elapsed() > FAKE_PATIENCE {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let privlevel = std::fs::read(entry.join("privlevel")).unwrap_or_default();
    let writes = 1 + u64::from(!privlevel.is_empty());
    log.lock().unwrap().push(Seen {
        name: entry.file_name().unwrap().to_string_lossy().into_owned(),
        inblob,
        privlevel,
    });
    set_generation(entry, writes);
    let served = answer(&entry.join("outblob"), &script.outblob, || {
        if script.race_on_outblob {
            set_generation(entry, writes + 1);
        }
    });
    if let (true, Some(aux)) = (served, &script.auxblob) {
        let bump = if script.race_on_outblob { 1 } else { 0 };
        answer(&entry.join("auxblob"), aux, || {
            if script.race_on_auxblob {
                set_generation(entry, writes + bump + 1);
            }
        });
    }
}

// ---- vectors -------------------------------------------------------------

fn vector(rel: &str) -> Vec<u8> {
    cocoon_tests::read_vector(rel)
}

fn verification_time(path: &str) -> UnixTime {
    let m = cocoon_tests::manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the manifest"));
    UnixTime(e["expected"]["verification_time"]["unix"].as_u64().unwrap())
}

/// The DER certificates of a PEM file, in order.
fn pem_certs(rel: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8(vector(rel)).unwrap();
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| {
            let block = &b[b.find("-----BEGIN").unwrap()..];
            pem_rfc7468::decode_vec(block.as_bytes()).unwrap().1
        })
        .collect()
}

/// An SNP vector: report, VEK (DER), ASK and ARK (DER).
struct SnpCase {
    path: &'static str,
    report: Vec<u8>,
    vek: Vec<u8>,
    ask: Vec<u8>,
    ark: Vec<u8>,
}

fn snp_case(path: &'static str, vek: &str, chain: &str) -> SnpCase {
    let certs = pem_certs(chain);
    assert_eq!(certs.len(), 2, "{chain}: expected ASK and ARK");
    SnpCase {
        path,
        report: vector(path),
        vek: vector(vek),
        ask: certs[0].clone(),
        ark: certs[1].clone(),
    }
}

fn milan_vcek() -> SnpCase {
    snp_case(
        "snp/milan-v2-gsg/attestation.bin",
        "snp/milan-v2-gsg/vcek.der",
        "snp/amd-roots/ask_ark_milan.pem",
    )
}

fn report_data(report: &[u8]) -> [u8; 64] {
    *SnpReport::parse(report).unwrap().report_data()
}

fn provider(root: &Path) -> ConfigfsTsmProvider {
    ConfigfsTsmProvider::new(root, TdxCollateralSource::none()).unwrap()
}

/// Verify SNP evidence with the verifier, pinned to the report's own
/// measurement, VMPL and debug setting, and to `rd`.
fn verify_snp(case: &SnpCase, evidence: &PlatformEvidence, rd: [u8; 64]) {
    let PlatformEvidence::Snp {
        report, vek, chain, ..
    } = evidence
    else {
        panic!("not SNP evidence: {evidence:?}");
    };
    let parsed = SnpReport::parse(report).unwrap();
    let mut policy = SnpPolicy::pinned_to_measurements(vec![*parsed.measurement()]);
    policy.vmpl = Check::Require(parsed.vmpl());
    policy.allow_debug = parsed.policy().debug_allowed();
    policy.report_data = Check::Require(rd);
    SnpVerifier::new()
        .verify(
            report,
            SnpCertificates {
                vek,
                chain,
                crl: None,
            },
            &policy,
            verification_time(case.path),
        )
        .unwrap_or_else(|r| panic!("{}: {r}", case.path));
}

fn expect_refusal(p: &ConfigfsTsmProvider, rd: &[u8; 64], needle: &str) -> String {
    let e = p.evidence(rd).expect_err("must be refused").to_string();
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(e.starts_with("attestation provider configfs-tsm: "), "{e}");
    e
}

// ---- SNP -----------------------------------------------------------------

#[test]
fn snp_report_through_configfs_verifies_with_the_real_vector() {
    let c = milan_vcek();
    let aux = encode(&[
        (Guid::VCEK, &c.vek[..]),
        (Guid::ASK, &c.ask[..]),
        (Guid::ARK, &c.ark[..]),
    ])
    .unwrap();
    let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
    let p = provider(&fake.root);
    assert_eq!(p.kind(), "configfs-tsm");
    let rd = report_data(&c.report);
    let ev = p.evidence(&rd).unwrap();
    let PlatformEvidence::Snp {
        report, vek, chain, ..
    } = &ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(report, &c.report);
    assert_eq!(vek, &c.vek);
    // The chain is the host's ASK then ARK, as PEM: byte for byte the AMD file.
    assert_eq!(
        String::from_utf8(chain.clone())
            .unwrap()
            .replace("\r\n", "\n"),
        String::from_utf8(vector("snp/amd-roots/ask_ark_milan.pem"))
            .unwrap()
            .replace("\r\n", "\n")
            .trim_start(),
    );
    verify_snp(&c, &ev, rd);

    // What the fake kernel saw: exactly our report data, no privlevel
    // write, one fresh entry per call.
    p.evidence(&rd).unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.inblob == rd && s.privlevel.is_empty()));
    assert_ne!(seen[0].name, seen[1].name);
    assert!(seen.iter().all(|s| s.name.starts_with("cocoon-")));
}

#[test]
fn snp_vlek_report_and_vek_only_table_verify() {
    // A VLEK-signed report: the provider picks the VLEK entry.
    let c = snp_case(
        "snp/milan-v3-vlek-trustee/report.bin",
        "snp/milan-v3-vlek-trustee/vlek.der",
        "snp/amd-roots/ask_ark_milan_vlek.pem",
    );
    let aux = encode(&[
        (Guid::ASK, &c.ask[..]),
        (Guid::VLEK, &c.vek[..]),
        (Guid::ARK, &c.ark[..]),
    ])
    .unwrap();
    let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
    let rd = report_data(&c.report);
    let ev = provider(&fake.root).evidence(&rd).unwrap();
    verify_snp(&c, &ev, rd);

    // A host that supplies only the VCEK: the chain is empty and the
    // verifier uses the AMD certificates it pins.
    let c = milan_vcek();
    let mut padded = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    padded.resize(16384, 0); // drivers hand out whole pages
    let fake = FakeTsm::start(Script::snp(c.report.clone(), padded));
    let rd = report_data(&c.report);
    let ev = provider(&fake.root).evidence(&rd).unwrap();
    let PlatformEvidence::Snp { chain, .. } = &ev else {
        panic!()
    };
    assert!(chain.is_empty());
    verify_snp(&c, &ev, rd);
}

#[test]
fn privlevel_is_written_when_configured_and_counted_in_generation() {
    let c = milan_vcek();
    let aux = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
    let p = provider(&fake.root).with_privlevel(0);
    p.evidence(&report_data(&c.report)).unwrap();
    assert_eq!(fake.seen()[0].privlevel, b"0\n");
}

#[test]
fn report_for_other_report_data_is_refused() {
    let c = milan_vcek();
    let aux = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
    let mut rd = report_data(&c.report);
    rd[63] ^= 1;
    let e = expect_refusal(
        &provider(&fake.root),
        &rd,
        "refusing a report made for someone else",
    );
    assert!(e.contains(&hex::encode(rd)), "{e}");
    assert_eq!(fake.seen()[0].inblob, rd);
}

#[test]
fn a_generation_that_moved_is_refused() {
    let c = milan_vcek();
    let aux = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    let rd = report_data(&c.report);
    let mut s = Script::snp(c.report.clone(), aux.clone());
    s.race_on_outblob = true;
    let fake = FakeTsm::start(s);
    expect_refusal(&provider(&fake.root), &rd, "generation went from 0 to 2");

    let mut s = Script::snp(c.report.clone(), aux);
    s.race_on_auxblob = true;
    let fake = FakeTsm::start(s);
    expect_refusal(&provider(&fake.root), &rd, "generation changed from 1 to 2");
}

#[test]
fn truncated_outblob_is_refused() {
    let c = milan_vcek();
    let aux = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    let fake = FakeTsm::start(Script::snp(c.report[..1000].to_vec(), aux));
    expect_refusal(
        &provider(&fake.root),
        &report_data(&c.report),
        "SEV-SNP report from the guest driver is malformed (1000 bytes)",
    );
}

#[test]
fn malformed_auxblob_is_refused() {
    let c = milan_vcek();
    let rd = report_data(&c.report);
    let good = encode(&[(Guid::VCEK, &c.vek[..]), (Guid::ASK, &c.ask[..])]).unwrap();
    // Second entry's length one past the end; then an offset far outside;
    // then no terminator at all.
    let mut long = good.clone();
    long[24 + 20..24 + 24].copy_from_slice(&(c.ask.len() as u32 + 1).to_le_bytes());
    let mut far = good.clone();
    far[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let unterminated = good[..40].to_vec();
    for (aux, needle) in [
        (long, "entry 1 (4ab7b379-bbac-4fe4-a02f-05aef327c782)"),
        (far, "entry 0 (63da758d-e664-4564-adc5-f4b93be8accd)"),
        (unterminated, "no all-zero terminator"),
    ] {
        let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
        let e = expect_refusal(&provider(&fake.root), &rd, needle);
        assert!(
            e.contains("certificate table (auxblob) is malformed"),
            "{e}"
        );
    }
}

#[test]
fn a_missing_vcek_is_left_for_the_host_to_attach() {
    let c = milan_vcek();
    let rd = report_data(&c.report);
    // The report is VCEK-signed; a VLEK in the table does not stand in for
    // it. The evidence goes out with no VEK (the host agent fetches the
    // VCEK from AMD's key distribution service) and the table's ASK/ARK.
    let aux = encode(&[
        (Guid::VLEK, &c.vek[..]),
        (Guid::ASK, &c.ask[..]),
        (Guid::ARK, &c.ark[..]),
    ])
    .unwrap();
    for aux in [aux, Vec::new()] {
        let with_chain = !aux.is_empty();
        let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
        match provider(&fake.root).evidence(&rd) {
            Ok(PlatformEvidence::Snp { vek, chain, .. }) => {
                assert!(vek.is_empty(), "no VCEK was supplied, none is invented");
                assert_eq!(!chain.is_empty(), with_chain);
            }
            other => panic!("expected SNP evidence without a VEK, got {other:?}"),
        }
    }
}

#[test]
fn a_root_where_no_attributes_appear_is_refused_and_the_entry_removed() {
    // No fake kernel: mkdir works but nothing fills the entry. The
    // provider gives up after its bounded wait and removes the (empty)
    // entry it made.
    let root = scratch_dir("not-tsm");
    let p = provider(&root);
    let e = expect_refusal(&p, &[0; 64], "is not a configfs-tsm report root");
    assert!(e.contains("provider, inblob, outblob, generation"), "{e}");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "entry left behind"
    );
    std::fs::remove_dir_all(&root).unwrap();
    // And a root that does not exist is refused when the provider is made.
    let e = ConfigfsTsmProvider::new(root.join("absent"), TdxCollateralSource::none())
        .unwrap_err()
        .to_string();
    assert!(e.contains("configfs-tsm needs Linux 6.7"), "{e}");
}

// ---- TDX -----------------------------------------------------------------

const TDX_QUOTE: &str = "tdx/dcap-qvl/tdx_quote";
const TDX_COLLATERAL: &str = "tdx/dcap-qvl/tdx_quote_collateral.json";

#[test]
fn tdx_quote_through_configfs_with_collateral_verifies() {
    let quote = vector(TDX_QUOTE);
    let (parsed, _) = Quote::parse_prefix(&quote).unwrap();
    let td = parsed.td_report().unwrap();
    let rd = *td.report_data();
    let mrtd = *td.mrtd();
    let fake = FakeTsm::start(Script::tdx(quote.clone()));
    let collateral = cocoon_tests::vectors_dir().join(TDX_COLLATERAL);
    let p = ConfigfsTsmProvider::new(&fake.root, TdxCollateralSource::file(&collateral)).unwrap();
    let ev = p.evidence(&rd).unwrap();
    let PlatformEvidence::Tdx {
        quote: got,
        collateral: coll,
    } = &ev
    else {
        panic!("{ev:?}")
    };
    assert!(
        quote.starts_with(got),
        "the quote, cut after its signature data at most"
    );
    let mut policy = TdxPolicy::pinned_to_mrtd(vec![mrtd]);
    policy.report_data = Check::Require(rd);
    verify_tdx(got, coll, &policy, verification_time(TDX_QUOTE))
        .unwrap_or_else(|(r, _)| panic!("{r}"));
    assert_eq!(fake.seen()[0].inblob, rd);
}

#[test]
fn tdx_without_collateral_or_with_other_report_data_is_refused() {
    let quote = vector(TDX_QUOTE);
    let rd = *Quote::parse_prefix(&quote).unwrap().0.report_data();
    let fake = FakeTsm::start(Script::tdx(quote.clone()));
    expect_refusal(&provider(&fake.root), &rd, "[tdx] collateral = ");

    let fake = FakeTsm::start(Script::tdx(quote.clone()));
    let collateral = cocoon_tests::vectors_dir().join(TDX_COLLATERAL);
    let p = ConfigfsTsmProvider::new(&fake.root, TdxCollateralSource::file(&collateral)).unwrap();
    let mut other = rd;
    other[0] ^= 0x80;
    expect_refusal(&p, &other, "refusing a quote made for someone else");

    // A missing collateral file names the file.
    let fake = FakeTsm::start(Script::tdx(quote));
    let p = ConfigfsTsmProvider::new(
        &fake.root,
        TdxCollateralSource::file("/nonexistent/collateral.json"),
    )
    .unwrap();
    expect_refusal(&p, &rd, "/nonexistent/collateral.json");
}

// ---- the binary ----------------------------------------------------------

#[test]
fn the_binary_uses_the_tsm_root_test_hook_and_checks_report_data() {
    // The enclave asks for a report over its own claims; the fake kernel
    // can only serve the vector's report (other report data), so boot must
    // fail with the report data refusal: proof that --tee configfs-tsm went
    // through the hook to the provider, and that nothing fell back to the
    // simulator. Once through the flag, once through COCOON_TSM_ROOT.
    let bin = env!("CARGO_BIN_EXE_cocoon-enclave");
    let c = milan_vcek();
    let aux = encode(&[(Guid::VCEK, &c.vek[..])]).unwrap();
    let fake = FakeTsm::start(Script::snp(c.report.clone(), aux));
    let sock = scratch_dir("sock").join("e.sock");
    let listen = format!("unix:{}", sock.display());
    for via_env in [false, true] {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--tee", "configfs-tsm", "--listen", &listen]);
        if via_env {
            cmd.env("COCOON_TSM_ROOT", &fake.root);
        } else {
            cmd.arg("--tsm-root")
                .arg(&fake.root)
                .env_remove("COCOON_TSM_ROOT");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{err}");
        assert!(
            err.contains("refusing a report made for someone else"),
            "{err}"
        );
        assert!(
            err.contains("provider=\"configfs-tsm\"") || err.contains("provider=configfs-tsm"),
            "{err}"
        );
        assert!(!err.contains("SIMULATED"), "{err}");
    }
    assert_eq!(fake.seen().len(), 2, "one report request per boot");
}
