//! Load on loopback with the real binaries: 1,000 concurrent streaming
//! requests with no error; then the host agent is killed with SIGKILL 20
//! times under load and restarted, and the ledger must hold every receipt a
//! client received (the host forwards a stream's final chunk only after the
//! receipt is durably committed) exactly once.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_client::Client;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_test_kit::procs::{Proc, TempDir};
use common::*;

const MODEL: &str = "cocoon-deterministic-test";

fn msg(i: usize) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: format!("load request {i}"),
    }]
}

const LIMITS: &[&str] = &[
    "--max-streams-per-enclave",
    "2048",
    "--account-rps",
    "100000",
    "--account-burst",
    "100000",
    "--account-max-streams",
    "4096",
];

#[test]
fn a_thousand_concurrent_streams_then_twenty_sigkills() {
    let dir = TempDir::new("e2e-load");
    let enclave = start_enclave(&dir, "enclave", 16);
    // A fixed port, so clients find the restarted host where they left it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let host = start_host_on(&dir, &[&enclave.socket], &listen, LIMITS);
    let url = host.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Phase 1: 1,000 at once, none may fail.
    let accounts: Vec<_> = (0..10).map(|_| account()).collect();
    let clients: Vec<Client> = accounts
        .iter()
        .map(|a| Client::new(&url, simulated_policy(), a.clone()))
        .collect();
    let started = Instant::now();
    let received: Vec<String> = rt.block_on(async {
        for c in &clients {
            c.verify().await.expect("verified");
        }
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let c = clients[i % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let (text, done) = c.chat(MODEL, msg(i), 64).await?.collect_text().await?;
                assert!(!text.is_empty());
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(done.request_id.to_string())
            }));
        }
        let mut ids = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(id) => ids.push(id),
                Err(e) => panic!("request {i} of 1000 failed: {e}"),
            }
        }
        ids
    });
    eprintln!(
        "1000 concurrent streaming requests in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(received.len(), 1000);
    let ledger: HashSet<String> = ledger_request_ids(&host.admin).into_iter().collect();
    assert_eq!(ledger.len(), 1000);
    assert!(received.iter().all(|id| ledger.contains(id)));
    drop(host);

    // Phase 2: load while the host is SIGKILLed and restarted 20 times.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let acknowledged = acknowledged.clone();
        let failures = failures.clone();
        let stop = stop.clone();
        let clients = clients.clone();
        std::thread::spawn(move || {
            rt.block_on(async {
                let mut workers = Vec::new();
                for w in 0..64 {
                    let c = clients[w % clients.len()].clone();
                    let acknowledged = acknowledged.clone();
                    let failures = failures.clone();
                    let stop = stop.clone();
                    workers.push(tokio::spawn(async move {
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            i += 1;
                            let r = async {
                                let (_, done) = c
                                    .chat(MODEL, msg(w * 100_000 + i), 64)
                                    .await?
                                    .collect_text()
                                    .await?;
                                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(done)
                            }
                            .await;
                            match r {
                                Ok(done) => acknowledged
                                    .lock()
                                    .unwrap()
                                    .push(done.request_id.to_string()),
                                Err(_) => {
                                    *failures.lock().unwrap() += 1;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                    }));
                }
                for w in workers {
                    let _ = w.await;
                }
            })
        })
    };
    let mut kills = 0;
    let mut last_admin = String::new();
    let mut acked_before_kill = Vec::new();
    for round in 0..20 {
        let mut h: Proc = start_host_on(&dir, &[&enclave.socket], &listen, LIMITS).proc;
        let before = acknowledged.lock().unwrap().len();
        // Let it serve until some new receipts were acknowledged (or 3 s).
        let deadline = Instant::now() + Duration::from_secs(3);
        while acknowledged.lock().unwrap().len() < before + 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50 + (round * 37 % 200) as u64));
        h.kill();
        kills += 1;
        acked_before_kill.push(acknowledged.lock().unwrap().len());
    }
    // A final host to read the ledger.
    let host = start_host_on(&dir, &[&enclave.socket], &listen, LIMITS);
    last_admin.push_str(&host.admin);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let acked = acknowledged.lock().unwrap().clone();
    let ids = ledger_request_ids(&last_admin);
    let unique: HashSet<&String> = ids.iter().collect();
    eprintln!(
        "{kills} SIGKILLs: {} receipts acknowledged to clients, {} failed attempts, ledger holds {} (phase 1 included)",
        acked.len(),
        failures.lock().unwrap(),
        ids.len()
    );
    assert_eq!(kills, 20);
    assert_eq!(
        unique.len(),
        ids.len(),
        "a receipt is counted twice in the ledger"
    );
    let missing: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged receipts lost after SIGKILL, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(
        acked.len() > acked_before_kill[0],
        "load kept going across restarts"
    );
    assert!(received.iter().all(|id| unique.contains(id)));

    // Every committed receipt is counted, once, by the enclave's tabs: the
    // restarted hosts acknowledged again what their stored tabs missed.
    let out = dir.path().join("settle");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = std::process::Command::new(cocoon_test_kit::procs::bin("cocoon-host"))
            .arg("--ledger")
            .arg(&host.ledger)
            .args([
                "--settlement-contract",
                "0:0000000000000000000000000000000000000000000000000000000000000001",
                "settle",
                "--dry-run",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("claims.json")).unwrap())
                .unwrap();
        let l = &m["ledger"];
        if l["counted_receipts"] == l["receipts"] && l["counted_nanoton"] == l["nanoton"] {
            assert_eq!(l["receipts"].as_u64(), Some(ids.len() as u64));
            eprintln!("tabs count every receipt once after {kills} SIGKILLs: {l}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the enclave's tabs do not count the ledger's receipts: {l}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
