//! A whole provider on loopback, from the real binaries: `cocoon-enclave`
//! (simulated TEE, Unix socket) and `cocoon-host` (HTTP on 127.0.0.1:0, SQLite
//! ledger), plus a client SDK configured with a policy that opts into the
//! simulated TEE by its dangerous name.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_protocol::account::AccountKey;
use cocoon_protocol::rand_core::OsRng;
use cocoon_test_kit::procs::{bin, field, Proc, TempDir};
use cocoon_verifier::policy::{Check, Policy};

pub const READY: Duration = Duration::from_secs(60);

/// The policy a demo client uses: accepts the simulated TEE (NOT
/// confidential), any self-reported measurement.
pub fn simulated_policy() -> Policy {
    Policy {
        max_evidence_age: Check::Require(3600),
        ..cocoon_test_kit::simulated::policy(None)
    }
}

/// The policy a client gets by default: real TEEs only (here: none
/// configured, so nothing is accepted).
pub fn default_policy() -> Policy {
    Policy {
        release: "cocoon-dev-unmeasured".into(),
        snp: None,
        tdx: None,
        simulated: None,
        gpu: None,
        max_evidence_age: Check::Require(3600),
    }
}

pub struct Enclave {
    pub proc: Proc,
    pub socket: PathBuf,
    pub evidence_digest: String,
}

pub fn start_enclave(dir: &TempDir, name: &str, reply_tokens: u32) -> Enclave {
    start_enclave_with(
        dir,
        name,
        &format!("image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = {reply_tokens}\nmax_concurrent = 256\n"),
    )
}

/// The enclave command for a config file's text (written into `dir`).
pub fn enclave_command(dir: &TempDir, name: &str, config_text: &str) -> (Command, PathBuf) {
    let socket = dir.path().join(format!("{name}.sock"));
    let config = dir.path().join(format!("{name}.toml"));
    std::fs::write(&config, config_text).unwrap();
    let mut cmd = Command::new(bin("cocoon-enclave"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--config")
        .arg(&config)
        .args(["--tee", "simulated"]);
    (cmd, socket)
}

/// Start an enclave with this config file text and wait until it listens.
pub fn start_enclave_with(dir: &TempDir, name: &str, config_text: &str) -> Enclave {
    let (cmd, socket) = enclave_command(dir, name, config_text);
    let mut proc = Proc::spawn(name, cmd);
    let line = proc.wait_for("ready listen=", READY);
    let evidence_digest = field(&line, "evidence_digest")
        .expect("evidence_digest in the ready line")
        .to_string();
    Enclave {
        proc,
        socket,
        evidence_digest,
    }
}

pub struct Host {
    pub proc: Proc,
    pub url: String,
    pub admin: String,
    pub ledger: PathBuf,
}

pub fn host_command(dir: &TempDir, enclaves: &[&PathBuf], listen: &str, extra: &[&str]) -> Command {
    let policy = dir.path().join("host-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let mut cmd = Command::new(bin("cocoon-host"));
    cmd.args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"));
    for e in enclaves {
        cmd.arg("--enclave").arg(format!("unix:{}", e.display()));
    }
    cmd.args(extra);
    cmd
}

pub fn start_host(dir: &TempDir, enclaves: &[&PathBuf], extra: &[&str]) -> Host {
    start_host_on(dir, enclaves, "127.0.0.1:0", extra)
}

pub fn start_host_on(dir: &TempDir, enclaves: &[&PathBuf], listen: &str, extra: &[&str]) -> Host {
    let mut proc = Proc::spawn("cocoon-host", host_command(dir, enclaves, listen, extra));
    let line = proc.wait_for("ready ", READY);
    let url = format!("http://{}", field(&line, "listen").expect("listen="));
    let admin = format!("http://{}", field(&line, "admin").expect("admin="));
    Host {
        proc,
        url,
        admin,
        ledger: dir.path().join("ledger.db"),
    }
}

pub fn account() -> AccountKey {
    AccountKey::generate(&mut OsRng)
}

/// A blocking GET on loopback, for admin endpoints and metrics. It runs on
/// its own thread and runtime, so it may be called from inside async tests.
pub fn get(url: &str) -> (u16, String) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::get(&url).await.expect("GET");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        })
    })
    .join()
    .expect("GET thread")
}

/// The request ids in the host's ledger export (NDJSON).
pub fn ledger_request_ids(admin: &str) -> Vec<String> {
    let (status, body) = get(&format!("{admin}/admin/ledger/export?after=0"));
    assert_eq!(status, 200, "ledger export: {body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON line");
            v["request_id"].as_str().expect("request_id").to_string()
        })
        .collect()
}

/// The payment contract a settling host names in tests.
pub const CONTRACT: &str = "0:5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f5e7f";

/// Run a command; its exit code, stdout and stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cocoon-host settle` on the host's ledger into `out`; the manifest.
pub fn settle(host: &Host, out: &Path, extra: &[&str]) -> serde_json::Value {
    let (code, stdout, stderr) = run(Command::new(bin("cocoon-host"))
        .arg("--ledger")
        .arg(&host.ledger)
        .args(["--settlement-contract", CONTRACT, "settle", "--out"])
        .arg(out)
        .args(extra));
    assert_eq!(code, 0, "settle failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(out.join("claims.json")).unwrap()).unwrap()
}

/// `cocoon-client statement` for the account in `key_file` against the
/// claims manifest in `claims`: exit code and stdout.
pub fn statement(host: &Host, dir: &TempDir, key_file: &Path, claims: &Path) -> (i32, String) {
    let policy = dir.path().join("client-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let (code, stdout, stderr) = run(Command::new(bin("cocoon-client"))
        .args(["statement", "--provider", &host.url])
        .arg("--policy")
        .arg(&policy)
        .arg("--account-key")
        .arg(key_file)
        .arg("--claims")
        .arg(claims));
    (code, format!("{stdout}{stderr}"))
}

/// A decimal string of the manifest as a number.
pub fn dec(v: &serde_json::Value) -> u128 {
    v.as_str()
        .expect("decimal string")
        .parse()
        .expect("decimal")
}

/// Run `tests/python/<script>` with the test venv's Python (the official
/// `openai` client, pinned by scripts/torch-env.sh) and `args`, with no
/// proxy or OpenAI environment leaking in; its stdout as JSON, after
/// checking that it ran the pinned client.
pub fn run_openai_script(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(|v| std::path::PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (source scripts/torch-env.sh first)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed (the OpenAI client's venv comes from scripts/torch-env.sh, which pins openai):\n{stdout}\n{stderr}",
        script.display()
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    assert_eq!(v["openai_version"], "3.51.0", "{v}");
    v
}

/// A two-thread runtime for a test's async part.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One user message.
pub fn ask(text: &str) -> Vec<cocoon_protocol::message::ChatMessage> {
    vec![cocoon_protocol::message::ChatMessage {
        role: cocoon_protocol::message::Role::User,
        content: text.into(),
    }]
}

/// `cocoon-client serve` against `provider` with `policy` and `account_key`,
/// on a free loopback port, its API key in `api_key_file`: the process
/// and the `host:port` it listens on.
pub fn start_serve(
    provider: &str,
    policy: &std::path::Path,
    account_key: &std::path::Path,
    api_key_file: &std::path::Path,
) -> (cocoon_test_kit::procs::Proc, String) {
    let mut serve = std::process::Command::new(cocoon_test_kit::procs::bin("cocoon-client"));
    serve
        .args(["serve", "--provider", provider, "--listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(policy)
        .arg("--account-key")
        .arg(account_key)
        .arg("--api-key-file")
        .arg(api_key_file)
        .env_remove("COCOON_API_KEY");
    let mut serve = cocoon_test_kit::procs::Proc::spawn("cocoon-client serve", serve);
    let line = serve.wait_for("ready ", READY);
    let addr = cocoon_test_kit::procs::field(&line, "listen")
        .expect("serve's ready line names its address")
        .to_string();
    (serve, addr)
}
