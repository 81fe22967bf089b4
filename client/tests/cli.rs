//! The `cocoon-client` binary as a user runs it, against the in-test
//! provider: what it prints, what it exits with, and `serve`'s ready line.

mod support;

use std::io::BufRead as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{default_policy_toml, sim_policy_toml, TestProvider, MODEL};

const BIN: &str = env!("CARGO_BIN_EXE_cocoon-client");

struct Scratch(cocoon_test_kit::TempDir);

impl Scratch {
    fn new(name: &str) -> Scratch {
        Scratch(cocoon_test_kit::TempDir::new(&format!("client-cli-{name}")))
    }

    fn file(&self, name: &str, content: &str) -> String {
        self.0.write(name, content).to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("HOME", "")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_verifies_streams_and_prints_the_receipt() {
    let p = TestProvider::start().await;
    let dir = Scratch::new("chat");
    let policy = dir.file("policy.toml", &sim_policy_toml());
    let key = dir.path("keys/account.key");
    let out = run(strings(&[
        "chat",
        "--provider",
        &p.url,
        "--policy",
        &policy,
        "--account-key",
        &key,
        "--max-tokens",
        "64",
        "what is six times seven",
    ]))
    .await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "The answer is 42. (you asked: what is six times seven)\n"
    );
    let digest = hex::encode(p.digest().as_bytes());
    let receipt_key = hex::encode(p.state().enclave.receipts.public_key_sec1());
    for needle in [
        "SIMULATED TEE — NOT CONFIDENTIAL: the provider can read everything",
        "platform        simulated",
        "image_id        cocoon-test-image",
        &format!(
            "model           {MODEL} (sha256 {})",
            hex::encode([0x11; 32])
        ),
        &format!("evidence digest {digest}"),
        &format!("receipt key     {receipt_key}"),
        "verified        1 of 1 enclave(s)",
        &format!("model           {MODEL} (the first listed that chats"),
        "tokens          prompt 5, completion 4, total 9",
        "prices          prompt 100 / cached 100 / completion 300 nanoton per token (load multiplier 1.000x)",
        "charge          1700 nanoton",
        "enclave_seq     1",
        "finish          stop",
        "signature verified with the attested receipt key",
        "created a new account key",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    // The key file was created owner-only, and is reused next time.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let account = cocoon_client::load_account_key(key.as_ref()).unwrap().id();
    assert!(stderr.contains(&format!("account {account}")), "{stderr}");
    assert_eq!(p.posts(), 1);

    let out = run(strings(&[
        "chat",
        "--provider",
        &p.url,
        "--policy",
        &policy,
        "--account-key",
        &key,
        "--model",
        MODEL,
        "--json",
        "hello there",
    ]))
    .await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("NOT CONFIDENTIAL"), "{stderr}");
    assert!(!stderr.contains("created a new account key"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"], "The answer is 42. (you asked: hello there)");
    assert_eq!(v["finish"], "stop");
    assert_eq!(v["enclave"]["platform"], "simulated");
    assert_eq!(v["enclave"]["confidential"], false);
    assert_eq!(v["evidence_digest"], digest);
    assert_eq!(v["receipt"]["total_tokens"], 6);
    assert_eq!(v["receipt"]["charge_nanoton"], "1400");
    assert_eq!(v["receipt"]["client_account"], account.to_string());
    assert_eq!(v["receipt"]["signature_verified_with_attested_key"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let p = TestProvider::start().await;
    let dir = Scratch::new("codes");
    let key = dir.path("account.key");

    // The default policy refuses the simulated TEE: exit 1, reasons, nothing sent.
    let strict = dir.file("strict.toml", &default_policy_toml());
    let out = run(strings(&[
        "chat",
        "--provider",
        &p.url,
        "--policy",
        &strict,
        "--account-key",
        &key,
        "q",
    ]))
    .await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enclave evidence #0 rejected"), "{stderr}");
    assert!(stderr.contains("NOT confidential"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(p.posts(), 0);

    // Same in JSON mode: the error is the JSON object.
    let out = run(strings(&[
        "chat",
        "--provider",
        &p.url,
        "--policy",
        &strict,
        "--account-key",
        &key,
        "--json",
        "q",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "verification");

    // Unreachable provider: 69.
    let sim = dir.file("sim.toml", &sim_policy_toml());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = run(strings(&[
        "chat",
        "--provider",
        &closed,
        "--policy",
        &sim,
        "--account-key",
        &key,
        "q",
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Usage errors: 64.
    for args in [
        strings(&["chat", "--provider", &p.url, "q"]),
        strings(&["frobnicate"]),
        strings(&[
            "chat",
            "--provider",
            &p.url,
            "--policy",
            &dir.path("missing.toml"),
            "--account-key",
            &key,
            "q",
        ]),
        strings(&[
            "chat",
            "--provider",
            "not a url",
            "--policy",
            &sim,
            "--account-key",
            &key,
            "q",
        ]),
        strings(&[
            "chat",
            "--provider",
            &p.url,
            "--policy",
            &dir.file("bad.toml", "release = 3\n"),
            "--account-key",
            &key,
            "q",
        ]),
        // No --account-key and no usable HOME.
        strings(&["chat", "--provider", &p.url, "--policy", &sim, "q"]),
    ] {
        let out = run(args.clone()).await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(run(strings(&["--help"])).await.status.code(), Some(0));
    assert_eq!(p.posts(), 0);
}

/// Start `cocoon-client serve` on port 0, with `env` set (and
/// COCOON_API_KEY unset unless `env` sets it): the address from its ready
/// line and what it printed before, or everything it printed.
fn spawn_serve_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, Result<(String, String), String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("COCOON_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("ready listen=") {
                let _ = tx.send(Ok((addr.to_string(), std::mem::take(&mut seen))));
                // Keep draining so the child never blocks on stderr.
                continue;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| Err("no ready line within 60 s".into()));
    (child, addr)
}

fn spawn_serve(args: &[&str]) -> (std::process::Child, Result<String, String>) {
    let (child, r) = spawn_serve_env(args, &[]);
    (child, r.map(|(addr, _)| addr))
}

async fn chat_status(addr: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        );
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_ready_with_the_real_port_and_answers() {
    let p = TestProvider::start().await;
    let dir = Scratch::new("serve");
    let policy = dir.file("policy.toml", &sim_policy_toml());
    let key = dir.path("account.key");
    let url = p.url.clone();
    let (mut child, ready) = tokio::task::spawn_blocking(move || {
        spawn_serve_env(
            &[
                "--provider",
                &url,
                "--policy",
                &policy,
                "--account-key",
                &key,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let (addr, before) = match ready {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            panic!("serve did not become ready: {e}");
        }
    };
    // The key was made beside the account key, owner-only; serve says
    // where, never what.
    let key_file = dir.0.join("api.key");
    let api_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        api_key.starts_with(cocoon_client::API_KEY_PREFIX),
        "{api_key}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(
        before.contains(&format!("created a new API key in {}", key_file.display())),
        "{before}"
    );
    assert!(!before.contains(&api_key), "the key is never printed");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let http = reqwest::Client::new();
    let models: Value = serde_json::from_str(
        &http
            .get(format!("http://{addr}/v1/models"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    let (s, v) = chat_status(&addr, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "missing_api_key");
    let (s, v) = chat_status(&addr, Some(&api_key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The answer is 42. (you asked: hi)"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(p.posts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_key_from_a_file_or_the_environment_and_refuses_an_open_file() {
    let p = TestProvider::start().await;
    let dir = Scratch::new("serve-keys");
    let policy = dir.file("policy.toml", &sim_policy_toml());
    let account = dir.path("account.key");
    let url = p.url.clone();
    let common = move || {
        vec![
            "--provider".to_string(),
            url.clone(),
            "--policy".into(),
            policy.clone(),
            "--account-key".into(),
            account.clone(),
        ]
    };
    let start = |extra: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut args = common();
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            spawn_serve_env(&args, &env)
        })
    };

    // An existing --api-key-file is used as it is, before the variable.
    let mine = "my-own-key-0123456789abcdef0123456789abcdef";
    let file = dir.file("mine.key", &format!("{mine}\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env_key = "env-key-0123456789abcdef0123456789abcdef";
    let (mut child, ready) = start(
        vec!["--api-key-file".into(), file.clone()],
        vec![("COCOON_API_KEY", env_key.into())],
    )
    .await
    .unwrap();
    let (addr, before) = ready.unwrap_or_else(|e| panic!("not ready: {e}"));
    assert!(before.contains(&format!("API key in {file}")), "{before}");
    assert_eq!(chat_status(&addr, Some(mine)).await.0, 200);
    assert_eq!(chat_status(&addr, Some(env_key)).await.0, 401);
    let _ = child.kill();
    let _ = child.wait();

    // COCOON_API_KEY without the flag.
    let (mut child, ready) = start(vec![], vec![("COCOON_API_KEY", env_key.into())])
        .await
        .unwrap();
    let (addr, before) = ready.unwrap_or_else(|e| panic!("not ready: {e}"));
    assert!(before.contains("COCOON_API_KEY"), "{before}");
    assert!(!before.contains(env_key));
    assert_eq!(chat_status(&addr, Some(env_key)).await.0, 200);
    assert_eq!(chat_status(&addr, Some(mine)).await.0, 401);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(p.posts(), 2);

    // A key file others may read, a short key: refused at start (64).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (mut child, ready) = start(vec!["--api-key-file".into(), file.clone()], vec![])
            .await
            .unwrap();
        let seen = ready.expect_err("must not start");
        assert_eq!(child.wait().unwrap().code(), Some(64), "{seen}");
        assert!(seen.contains(&format!("chmod 600 {file}")), "{seen}");
    }
    let (mut child, ready) = start(vec![], vec![("COCOON_API_KEY", "short".into())])
        .await
        .unwrap();
    let seen = ready.expect_err("must not start");
    assert_eq!(child.wait().unwrap().code(), Some(64), "{seen}");
    assert!(seen.contains("COCOON_API_KEY"), "{seen}");
    assert_eq!(p.posts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_for_an_unverified_provider() {
    let p = TestProvider::start().await;
    let dir = Scratch::new("serve-strict");
    let policy = dir.file("strict.toml", &default_policy_toml());
    let key = dir.path("account.key");
    let url = p.url.clone();
    let (mut child, addr) = tokio::task::spawn_blocking(move || {
        spawn_serve(&[
            "--provider",
            &url,
            "--policy",
            &policy,
            "--account-key",
            &key,
        ])
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let seen = addr.expect_err("must not print ready");
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("enclave evidence #0 rejected"), "{seen}");
    assert_eq!(p.posts(), 0);
}

/// `chat` with several `--provider`s: verified together, routed, failed
/// over (one is down), and the provider that answered is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_routes_between_several_providers() {
    let s = Scratch::new("network");
    let policy = s.file("policy.toml", &sim_policy_toml());
    let key = s.path("account.key");
    let a = TestProvider::start().await;
    let b = TestProvider::start().await;
    b.set(support::Misbehavior::Status(503));
    let out = run(strings(&[
        "chat",
        "--provider",
        &a.url,
        "--provider",
        &b.url,
        "--provider",
        "http://127.0.0.1:9",
        "--policy",
        &policy,
        "--account-key",
        &key,
        "--json",
        "hello",
    ]))
    .await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 verified, 1 left out"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["provider"], a.url);
    assert_eq!(v["finish"], "stop");
    assert_eq!(a.posts(), 1);

    // --registry and --provider together are a usage error.
    let out = run(strings(&[
        "chat",
        "--provider",
        &a.url,
        "--registry",
        "0:0000000000000000000000000000000000000000000000000000000000000000",
        "--chain-api",
        "http://127.0.0.1:9",
        "hello",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(64));
}
