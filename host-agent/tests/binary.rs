//! The real `cocoon-host` binary against the test enclave: the ready line,
//! a request end to end, drain on SIGTERM with exit 0, exit codes for
//! usage errors, and a SIGKILL that loses no acknowledged receipt.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cocoon-host");

struct Host {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_host(dir: &Path, enclave: &TestEnclave, extra: &[&str]) -> Host {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, simulated_policy_toml()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0"]);
    if !extra.contains(&"--admin-listen") {
        cmd.args(["--admin-listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .arg("--enclave")
        .arg(format!("unix:{}", enclave.path.display()))
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.join("ledger.sqlite"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned by `Host` from here, so a panic below still kills it.
    let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut host = Host {
        child,
        public: unset,
        admin: unset,
        stderr: rx,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = vec![];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = host
            .stderr
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no ready line; stderr so far: {seen:#?}"));
        if let Some(rest) = line.strip_prefix("ready ") {
            for kv in rest.split(' ') {
                match kv.split_once('=') {
                    Some(("listen", v)) => host.public = v.parse().unwrap(),
                    Some(("admin", v)) => host.admin = v.parse().unwrap(),
                    _ => {}
                }
            }
            assert_ne!(host.public, unset, "{line}");
            assert_ne!(host.admin, unset, "{line}");
            return host;
        }
        seen.push(line);
    }
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(std::time::Instant::now() < end, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_drains_on_sigterm() {
    let dir = TempDir::new("bin");
    let enclave = TestEnclave::start(dir.path(), "e");
    let mut host = spawn_host(dir.path(), &enclave, &[]);
    assert_ne!(host.public.port(), 0, "the real port is printed");
    assert_ne!(host.admin.port(), 0);
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, session) = seal(t, &account, 16, b"hello from the binary test");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert_eq!(opened.finished, Ok(()));
    let export = http(host.admin, "GET", "/admin/ledger/export", &[], b"").await;
    assert_eq!(export.text().lines().count(), 1);

    signal(&host.child, "TERM");
    let st = wait_exit(&mut host.child, 20);
    assert_eq!(st.code(), Some(0), "exit status {st:?}");
    let mut logs = vec![];
    while let Ok(l) = host.stderr.recv_timeout(Duration::from_secs(5)) {
        logs.push(l);
    }
    let joined = logs.join("\n");
    assert!(joined.contains("drained"), "{joined}");
    // Logs name the request; they never carry its ciphertext.
    assert!(
        joined.contains(&sealed.request_id().to_string()),
        "{joined}"
    );
    assert!(!joined.contains(&hex::encode(&sealed.ciphertext[..16])));

    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM receipts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_receipt() {
    let dir = TempDir::new("bin-kill");
    let enclave = TestEnclave::start(dir.path(), "e");
    let mut host = spawn_host(dir.path(), &enclave, &[]);
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let mut acknowledged = vec![];
    for i in 0..8 {
        let (sealed, session) = seal(t, &account, 16, format!("q{i}").as_bytes());
        let r = post(host.public, t, &account, &sealed).await;
        // The final chunk (with the receipt) arrived: the host had
        // committed the receipt before sending it.
        assert_eq!(
            open_body(&r.body, session, &t.receipt_public_key).finished,
            Ok(())
        );
        acknowledged.push(sealed.request_id());
    }
    signal(&host.child, "KILL");
    let st = wait_exit(&mut host.child, 10);
    assert_eq!(st.code(), None, "killed by a signal");

    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
    for id in &acknowledged {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM receipts WHERE request_id = ?1",
                [&id.0[..]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "request {id}");
    }
    let total: i64 = conn
        .query_row("SELECT count(*) FROM receipts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, acknowledged.len() as i64);
}

#[test]
fn usage_errors_exit_with_sysexits_codes() {
    let dir = TempDir::new("bin-usage");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    // No enclave, no policy, no ledger.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--enclave"));
    // A malformed flag value.
    let o = run(&["--enclave", "tcp:1.2.3.4:1"]);
    assert_eq!(o.status.code(), Some(64));
    let o = run(&["--listen", "not-an-address"]);
    assert_eq!(o.status.code(), Some(64));
    let o = run(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(64));
    // A policy file that is missing, then one that is invalid.
    let ledger = dir.path().join("l.sqlite");
    let ledger = ledger.to_str().unwrap();
    let missing = dir.path().join("missing.toml");
    let o = run(&[
        "--enclave",
        "unix:/nonexistent",
        "--ledger",
        ledger,
        "--policy",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(66));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "release = \"x\"\nmax_evidence_age = \"skip\"\n").unwrap();
    let o = run(&[
        "--enclave",
        "unix:/nonexistent",
        "--ledger",
        ledger,
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(78));
    // A limit over the maximum.
    std::fs::write(&bad, simulated_policy_toml()).unwrap();
    let o = run(&[
        "--enclave",
        "unix:/nonexistent",
        "--ledger",
        ledger,
        "--policy",
        bad.to_str().unwrap(),
        "--max-request-bytes",
        "99999999",
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("max_request_bytes"));
    // --help is not an error.
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

/// A settling host checks deposits on chain (--chain-api), or is told not
/// to (--no-deposit-check, warned); anything else is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settling_host_checks_deposits_or_is_told_not_to() {
    let dir = TempDir::new("bin-deposits");
    let enclave = TestEnclave::start(dir.path(), "e");
    let policy = dir.write("policy.toml", simulated_policy_toml());
    let socket = enclave.path.clone();
    // The processes are waited for off the runtime the enclave runs on.
    tokio::task::spawn_blocking(move || deposit_flags(&dir, &socket, &policy))
        .await
        .unwrap();
}

fn deposit_flags(dir: &TempDir, socket: &Path, policy: &Path) {
    const CONTRACT: &str = "0:0000000000000000000000000000000000000000000000000000000000000001";
    let base = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--enclave")
            .arg(format!("unix:{}", socket.display()))
            .arg("--policy")
            .arg(policy)
            .arg("--ledger")
            .arg(dir.path().join("ledger.sqlite"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let refused = |extra: &[&str], says: &str| {
        let o = base(extra).output().unwrap();
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(64), "{extra:?}: {text}");
        assert!(text.contains(says), "{extra:?}: {text}");
    };
    refused(&["--settlement-contract", CONTRACT], "--no-deposit-check");
    refused(
        &["--chain-api", "http://127.0.0.1:9/api/v2"],
        "--settlement-contract",
    );
    refused(
        &[
            "--settlement-contract",
            CONTRACT,
            "--chain-api",
            "http://127.0.0.1:9/api/v2",
            "--deposit-ttl-secs",
            "0",
        ],
        "--deposit-ttl-secs",
    );
    refused(
        &[
            "--settlement-contract",
            CONTRACT,
            "--chain-api",
            "http://127.0.0.1:9/api/v2",
            "--no-deposit-check",
        ],
        "--no-deposit-check",
    );
    // Told not to check: it serves, and says so loudly.
    let mut child = base(&["--settlement-contract", CONTRACT, "--no-deposit-check"])
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines().map_while(Result::ok);
    let seen: Vec<String> = lines
        .by_ref()
        .take_while(|l| !l.starts_with("ready "))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("WARNING: --no-deposit-check")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("deposits are NOT checked")),
        "{seen:#?}"
    );
    // (The ledger exists now.) settle needs --out or --send; --send needs the chain and the key.
    refused(&["--settlement-contract", CONTRACT, "settle"], "--out");
    refused(
        &["--settlement-contract", CONTRACT, "settle", "--send"],
        "--chain-api",
    );
}

#[test]
fn a_remote_operator_api_needs_the_flag_and_a_private_token_file() {
    let dir = TempDir::new("bin-admin-flags");
    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let help = run(&["--help"]).1;
    for needle in ["--admin-allow-remote", "--admin-token-file", "loopback"] {
        assert!(help.contains(needle), "--help must say {needle}: {help}");
    }
    // Not loopback, no flag: refused, saying what to do.
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8081"] {
        let (code, text) = run(&["--admin-listen", addr]);
        assert_eq!(code, Some(64), "{text}");
        assert!(text.contains("not a loopback address"), "{text}");
        assert!(text.contains("--admin-allow-remote"), "{text}");
    }
    // The flag without a token file.
    let (code, text) = run(&["--admin-listen", "0.0.0.0:0", "--admin-allow-remote"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("--admin-token-file"), "{text}");
    // A token file that is missing, open to others, or too short.
    let token = dir.path().join("admin.token");
    let token_s = token.to_str().unwrap();
    let remote = [
        "--admin-listen",
        "0.0.0.0:0",
        "--admin-allow-remote",
        "--admin-token-file",
        token_s,
    ];
    let (code, text) = run(&remote);
    assert_eq!(code, Some(66), "{text}");
    assert!(text.contains("openssl rand -hex 32"), "{text}");
    std::fs::write(&token, format!("{}\n", "a".repeat(64))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, text) = run(&remote);
        assert_eq!(code, Some(78), "{text}");
        assert!(text.contains(&format!("chmod 600 {token_s}")), "{text}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(&token, "short\n").unwrap();
    let (code, text) = run(&remote);
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("at least 32"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_guards_a_remote_operator_api_with_its_token() {
    let dir = TempDir::new("bin-admin-remote");
    let enclave = TestEnclave::start(dir.path(), "e");
    let token = dir.path().join("admin.token");
    let secret = "b".repeat(48);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token)
            .unwrap();
        writeln!(f, "{secret}").unwrap();
    }
    let host = spawn_host(
        dir.path(),
        &enclave,
        &[
            "--admin-listen",
            "0.0.0.0:0",
            "--admin-allow-remote",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(host.admin.ip().is_unspecified(), "{}", host.admin);
    let admin = SocketAddr::from(([127, 0, 0, 1], host.admin.port()));
    let path = "/admin/ledger/export?after=0";
    for h in [
        vec![],
        vec![(
            "Authorization".to_string(),
            format!("Bearer {}", "c".repeat(48)),
        )],
        vec![("Authorization".to_string(), format!("Bearer {secret}b"))],
    ] {
        let r = http(admin, "GET", path, &h, b"").await;
        assert_eq!(r.status, 401, "{h:?}: {}", r.text());
        let r = http(admin, "POST", "/admin/drain", &h, b"").await;
        assert_eq!(r.status, 401);
    }
    let ok = vec![("Authorization".to_string(), format!("Bearer {secret}"))];
    let r = http(admin, "GET", path, &ok, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(admin, "GET", "/admin/ledger/check", &ok, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The public API is unchanged: no token there.
    let r = http(host.public, "GET", "/live", &[], b"").await;
    assert_eq!(r.status, 200);
}

/// A release manifest for the test enclave (its simulated measurement).
fn test_manifest() -> cocoon_protocol::release::ReleaseManifest {
    simulated::release_manifest(simulated::RELEASE, "m", MEASUREMENT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_release_manifest_byte_for_byte() {
    let dir = TempDir::new("bin-release");
    let enclave = TestEnclave::start(dir.path(), "e");
    let manifest = test_manifest();
    let bytes = manifest.to_canonical().unwrap();
    let file = dir.path().join("release-manifest.json");
    std::fs::write(&file, &bytes).unwrap();
    let host = spawn_host(
        dir.path(),
        &enclave,
        &["--release-manifest", file.to_str().unwrap()],
    );
    let r = http(host.public, "GET", "/v1/release", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, bytes, "the stored bytes, exactly");
    let back = cocoon_protocol::release::ReleaseManifest::from_canonical(&r.body).unwrap();
    assert_eq!(back, manifest);
    drop(host);

    // Without the flag: 404, saying why.
    let host = spawn_host(dir.path(), &enclave, &[]);
    let r = http(host.public, "GET", "/v1/release", &[], b"").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--release-manifest"), "{}", r.text());
}

#[test]
fn a_bad_release_manifest_stops_the_start() {
    let dir = TempDir::new("bin-release-bad");
    std::fs::write(dir.path().join("policy.toml"), simulated_policy_toml()).unwrap();
    let run = |manifest: &Path| {
        let o = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--enclave", "unix:/nonexistent", "--policy"])
            .arg(dir.path().join("policy.toml"))
            .arg("--ledger")
            .arg(dir.path().join("l.sqlite"))
            .arg("--release-manifest")
            .arg(manifest)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mut pretty = test_manifest().to_canonical().unwrap();
    pretty.push(b'\n');
    let file = dir.path().join("m.json");
    std::fs::write(&file, &pretty).unwrap();
    let (code, err) = run(&file);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("m.json: release manifest is not in canonical form"),
        "{err}"
    );
    let (code, err) = run(&dir.path().join("missing.json"));
    assert_eq!(code, Some(66), "{err}");
    assert!(err.contains("cannot read release manifest"), "{err}");
}
