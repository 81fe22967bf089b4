//! Who may call the operator API, in-process on real sockets: on loopback
//! without a token only requests for a loopback host; with a token only
//! requests that carry it, on every path; a non-loopback operator listener
//! only with a token. The binary's flags for it are in `binary.rs`.

mod support;

use cocoon_host::{HostConfig, HostError, Listeners};
use cocoon_protocol::local_auth::BearerToken;
use support::*;

const ADMIN_PATHS: [(&str, &str); 5] = [
    ("GET", "/admin/ledger/export?after=0"),
    ("GET", "/admin/ledger/check"),
    ("GET", "/metrics"),
    ("GET", "/live"),
    ("GET", "/no/such/path"),
];

async fn start(
    dir: &TempDir,
    enclave: &TestEnclave,
    admin_bind: &str,
    admin_token: Option<BearerToken>,
) -> Result<TestHost, HostError> {
    let listeners = Listeners {
        public: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind(admin_bind).await.unwrap(),
    };
    TestHost::start_config(
        listeners,
        HostConfig {
            enclaves: vec![enclave.addr()],
            policy: simulated_policy(),
            ledger_path: dir.path().join("ledger.sqlite"),
            limits: test_limits(),
            settlement: None,
            deposits: None,
            // Never reached: the tests' enclaves are simulated.
            amd_kds_url: "http://127.0.0.1:9".into(),
            intel_pcs_url: "http://127.0.0.1:9".into(),
            admin_token,
            clock: cocoon_host::Clock::system(),
            release_manifest: None,
        },
    )
    .await
}

fn bearer(t: &str) -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {t}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_a_token_only_local_host_names_are_served() {
    let dir = TempDir::new("admin-host");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = start(&dir, &enclave, "127.0.0.1:0", None).await.unwrap();
    host.wait_ready().await;
    let port = host.admin.port();
    for name in [
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let h = vec![("Host".to_string(), name.clone())];
        let r = http(host.admin, "GET", "/admin/ledger/check", &h, b"").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    // DNS rebinding: another site's name resolved to 127.0.0.1.
    for name in [
        format!("rebound.example:{port}"),
        "localhost.evil.example".into(),
        String::new(),
    ] {
        let h = vec![("Host".to_string(), name.clone())];
        for (method, path) in ADMIN_PATHS {
            let r = http(host.admin, method, path, &h, b"").await;
            assert_eq!(r.status, 421, "{name} {path}: {}", r.text());
        }
        let r = http(host.admin, "POST", "/admin/drain", &h, b"").await;
        assert_eq!(r.status, 421);
    }
    assert!(!host.running.as_ref().unwrap().is_draining());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_operator_path_needs_it() {
    let dir = TempDir::new("admin-token");
    let enclave = TestEnclave::start(dir.path(), "e");
    let token = BearerToken::generate("cocoon-admin-", &mut rand_core::OsRng);
    let secret = token.reveal().to_string();
    let host = start(&dir, &enclave, "127.0.0.1:0", Some(token))
        .await
        .unwrap();
    host.wait_ready().await;
    let wrong = BearerToken::generate("cocoon-admin-", &mut rand_core::OsRng);
    for headers in [
        vec![],
        bearer(wrong.reveal()),
        bearer(&format!("{secret}x")),
        bearer(&secret[..secret.len() - 1]),
        vec![("Authorization".into(), format!("Basic {secret}"))],
        vec![("Authorization".into(), secret.clone())],
    ] {
        for (method, path) in ADMIN_PATHS {
            let r = http(host.admin, method, path, &headers, b"").await;
            assert_eq!(r.status, 401, "{path} {headers:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(!r.text().contains(&secret));
        }
        let r = http(host.admin, "POST", "/admin/drain", &headers, b"").await;
        assert_eq!(r.status, 401);
    }
    assert!(!host.running.as_ref().unwrap().is_draining());
    // The right token works, whatever the Host.
    let mut ok = bearer(&secret);
    ok.push(("Host".into(), "ops.example".into()));
    let r = http(host.admin, "GET", "/admin/ledger/export?after=0", &ok, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(host.admin, "GET", "/metrics", &ok, b"").await;
    assert_eq!(r.status, 200);
    let r = http(host.admin, "POST", "/admin/drain", &ok, b"").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(host.running.as_ref().unwrap().is_draining());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_operator_listener_needs_a_token() {
    let dir = TempDir::new("admin-remote");
    let enclave = TestEnclave::start(dir.path(), "e");
    let Err(e) = start(&dir, &enclave, "0.0.0.0:0", None).await else {
        panic!("an unguarded non-loopback operator API must not start");
    };
    assert!(matches!(e, HostError::Config(_)), "{e}");
    assert!(e.to_string().contains("--admin-token-file"), "{e}");

    let token = BearerToken::generate("cocoon-admin-", &mut rand_core::OsRng);
    let secret = token.reveal().to_string();
    let host = start(&dir, &enclave, "0.0.0.0:0", Some(token))
        .await
        .unwrap();
    host.wait_ready().await;
    assert!(host.admin.ip().is_unspecified());
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], host.admin.port()));
    let r = http(admin, "GET", "/admin/ledger/export?after=0", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = http(
        admin,
        "GET",
        "/admin/ledger/export?after=0",
        &bearer(&secret),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    host.stop().await;
}
