//! The sealed request path end to end with real processes on loopback:
//! `cocoon-enclave` (simulated TEE) ← Unix socket → `cocoon-host` ← HTTP →
//! the client SDK and `cocoon-client serve`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_client::{Client, ClientError, ResponsePart};
use cocoon_protocol::message::FinishReason;
use cocoon_protocol::receipt::verify_receipt;
use cocoon_test_kit::procs::{bin, TempDir};
use common::*;

const MODEL: &str = "cocoon-deterministic-test";

#[test]
fn sealed_request_streams_and_both_sides_hold_the_receipt() {
    let dir = TempDir::new("e2e-basic");
    let enclave = start_enclave(&dir, "enclave", 24);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let account = account();
    let client = Client::new(&host.url, simulated_policy(), account.clone());
    rt().block_on(async {
        let provider = client.verify().await.expect("verified");
        assert_eq!(provider.enclaves().len(), 1);
        let e = &provider.enclaves()[0];
        assert_eq!(
            hex::encode(e.evidence_digest().as_bytes()),
            enclave.evidence_digest
        );
        assert!(!e.platform().is_confidential());

        let mut stream = client
            .chat(MODEL, ask("What is a confidential VM?"), 16)
            .await
            .expect("request accepted");
        let mut text = String::new();
        let mut pieces = 0;
        let done = loop {
            match stream.next().await.expect("authentic chunk") {
                Some(ResponsePart::Text(t)) => {
                    pieces += 1;
                    text.push_str(&t)
                }
                Some(ResponsePart::Completed(c)) => break c,
                Some(other) => panic!("unexpected part {other:?}"),
                None => panic!("stream ended without its receipt"),
            }
        };
        assert!(
            pieces > 1,
            "the answer arrives as a stream, got {pieces} piece(s)"
        );
        assert!(!text.is_empty());
        // 16 < 24 reply tokens: cut at max_tokens.
        assert_eq!(done.finish, FinishReason::Length);
        assert_eq!(done.usage.completion_tokens, 16);
        assert_eq!(done.receipt.client_account, account.id().0);
        // The receipt verifies with the attested key, independently of the SDK.
        let r = verify_receipt(&done.receipt_bytes, e.receipt_public_key()).unwrap();
        assert_eq!(r.request_id, done.request_id);

        // The host's ledger holds it once, and the account can read it back.
        let ids = ledger_request_ids(&host.admin);
        assert_eq!(ids, vec![done.request_id.to_string()]);
        let mine = client.receipts(0, 100).await.expect("receipts");
        assert_eq!(mine.len(), 1);
        // Another account sees nothing of it.
        let other = Client::new(&host.url, simulated_policy(), common::account());
        assert!(other.receipts(0, 100).await.expect("receipts").is_empty());

        // Embeddings over the same path.
        let emb = client
            .embeddings(MODEL, vec!["alpha".into(), "beta gamma".into()])
            .await
            .expect("embeddings");
        assert_eq!(emb.embeddings.len(), 2);
        assert_ne!(emb.embeddings[0], emb.embeddings[1]);
    });
    assert_eq!(ledger_request_ids(&host.admin).len(), 2);
}

#[test]
fn a_restarted_enclave_has_new_keys_and_the_client_verifies_again() {
    let dir = TempDir::new("e2e-restart");
    let mut enclave = start_enclave(&dir, "enclave", 8);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let client = Client::new(&host.url, simulated_policy(), account());
    let rt = rt();
    let first = rt.block_on(async {
        let old_key = client.verify().await.unwrap().enclaves()[0]
            .receipt_public_key()
            .to_vec();
        let (_, done) = client
            .chat(MODEL, ask("first"), 64)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        (done, old_key)
    });
    let (first, old_key) = first;
    enclave.proc.kill();
    let restarted = start_enclave(&dir, "enclave", 8);
    assert_ne!(restarted.evidence_digest, enclave.evidence_digest);
    // The host reconnects on its own; the client still holds the old
    // evidence and must notice (409), verify the new evidence and re-seal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let r = rt.block_on(async {
            match client.chat(MODEL, ask("second"), 64).await {
                Ok(s) => s
                    .collect_text()
                    .await
                    .map(|(_, d)| d)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        match r {
            Ok(d) => break d,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying while the host reconnects: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no answer from the restarted enclave: {e}"),
        }
    };
    assert_eq!(
        hex::encode(second.evidence_digest.as_bytes()),
        restarted.evidence_digest
    );
    assert_ne!(first.evidence_digest, second.evidence_digest);
    assert_eq!(
        second.receipt.enclave_seq, 1,
        "a new enclave counts receipts from 1"
    );
    let provider = rt.block_on(client.verified()).expect("verified again");
    assert_ne!(
        provider.enclaves()[0].receipt_public_key(),
        &old_key[..],
        "the restarted enclave made a new receipt key"
    );
}

#[test]
fn the_default_policy_refuses_the_simulated_tee_and_sends_nothing() {
    let dir = TempDir::new("e2e-default-policy");
    let enclave = start_enclave(&dir, "enclave", 8);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let client = Client::new(&host.url, default_policy(), account());
    rt().block_on(async {
        let err = client
            .verify()
            .await
            .expect_err("simulated evidence must be refused");
        assert!(err.is_verification_failure(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("dangerous_simulated_tee"), "{msg}");
        let err = client
            .chat(MODEL, ask("secret prompt"), 8)
            .await
            .expect_err("nothing is sealed to an unverified enclave");
        assert!(matches!(err, ClientError::Verification(_)), "{err}");
    });
    assert!(ledger_request_ids(&host.admin).is_empty());
    let (_, metrics) = get(&format!("{}/metrics", host.url));
    assert!(!metrics.is_empty());
}

#[test]
fn the_cli_and_the_openai_endpoint_work_against_real_processes() {
    let dir = TempDir::new("e2e-cli");
    let enclave = start_enclave(&dir, "enclave", 12);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let policy = dir.path().join("client-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let key = dir.path().join("account.key");

    // cocoon-client chat: the answer, the claims and the receipt.
    let out = Command::new(bin("cocoon-client"))
        .args(["chat", "--provider", &host.url])
        .arg("--policy")
        .arg(&policy)
        .arg("--account-key")
        .arg(&key)
        .args(["--model", MODEL, "--max-tokens", "32", "Hello there"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("NOT CONFIDENTIAL"), "{all}");
    assert!(all.to_lowercase().contains("receipt"), "{all}");

    // cocoon-client serve: OpenAI-compatible, streaming, owner only.
    let api_key_file = dir.path().join("api.key");
    let (_serve, addr) = start_serve(&host.url, &policy, &key, &api_key_file);
    let base = format!("http://{addr}");
    let api_key = std::fs::read_to_string(&api_key_file)
        .unwrap()
        .trim()
        .to_string();
    rt().block_on(async {
        let http = reqwest::Client::new();
        let models: serde_json::Value = http
            .get(format!("{base}/v1/models"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(models["data"][0]["id"], MODEL, "{models}");
        let resp = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({
                "model": MODEL,
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Stream to me"}]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        let events: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
        let mut text = String::new();
        let mut usage = None;
        for e in &events[..events.len() - 1] {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if !v["usage"].is_null() {
                assert_eq!(v["choices"], serde_json::json!([]), "{e}");
                usage = Some(v["usage"].clone());
            }
        }
        assert!(!text.is_empty(), "{body}");
        assert_eq!(
            usage.expect("usage in the last chunk")["completion_tokens"],
            8
        );
    });
    assert_eq!(ledger_request_ids(&host.admin).len(), 2);

    let requests_seen = || -> Vec<String> {
        let (_, metrics) = get(&format!("{}/metrics", host.url));
        metrics
            .lines()
            .filter(|l| l.starts_with("cocoon_host_request"))
            .map(str::to_string)
            .collect()
    };
    let before = requests_seen();
    assert!(!before.is_empty());

    // What a web page or another local user can send is refused before
    // anything is sealed or reaches the host: no key, a wrong key, a
    // text/plain body (a cross-site "simple" request), a foreign Host
    // (DNS rebinding).
    rt().block_on(async {
        let chat = format!("{base}/v1/chat/completions");
        let body =
            serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "pay for me"}]})
                .to_string();
        let http = reqwest::Client::new();
        let rebound = reqwest::Client::builder()
            .resolve("rebound.example", addr.parse().unwrap())
            .build()
            .unwrap();
        let port = addr.rsplit(':').next().unwrap();
        for (req, status, code) in [
            (
                http.post(&chat).header("content-type", "application/json"),
                401,
                "missing_api_key",
            ),
            (
                http.post(&chat)
                    .header("content-type", "application/json")
                    .bearer_auth(format!("{api_key}0")),
                401,
                "invalid_api_key",
            ),
            (
                http.post(&chat)
                    .header("content-type", "text/plain")
                    .bearer_auth(&api_key),
                415,
                "unsupported_media_type",
            ),
            (
                rebound
                    .post(format!("http://rebound.example:{port}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .bearer_auth(&api_key),
                421,
                "misdirected_request",
            ),
        ] {
            let r = req.body(body.clone()).send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{code}");
            assert!(
                !r.headers()
                    .keys()
                    .any(|k| k.as_str().starts_with("access-control-")),
                "{code}: CORS headers"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{v}");
            assert!(v["error"]["param"].is_null(), "{v}");
        }
        // The framework's own refusals are OpenAI-shaped JSON too. A body
        // over the 2 MiB limit: sent by hand while the answer is read, as
        // the server answers before the client has sent it all.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut rd, mut wr) = tcp.into_split();
            let size = 3usize << 20;
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            );
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(head.as_bytes()).await;
                let _ = wr.write_all(&vec![b' '; size]).await;
                wr
            });
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !String::from_utf8_lossy(&answer).contains("request_too_large") {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            writer.abort();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            assert!(
                answer
                    .to_lowercase()
                    .contains("content-type: application/json"),
                "{answer}"
            );
            assert!(answer.contains("\"request_too_large\""), "{answer}");
        }
        for (req, status, code) in [
            (http.get(&chat), 405, "method_not_allowed"),
            (
                http.get(format!("{base}/v1/models/no-such-model")),
                404,
                "model_not_found",
            ),
        ] {
            let r = req.bearer_auth(&api_key).send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{code}");
            assert_eq!(
                r.headers()["content-type"], "application/json",
                "{code}"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
        }
    });
    assert_eq!(
        ledger_request_ids(&host.admin).len(),
        2,
        "a refused request reached the provider"
    );
    assert_eq!(requests_seen(), before, "the host saw a refused request");

    // The official OpenAI Python client, the key as its api_key: chat,
    // streamed chat and embeddings (tests/python/openai_client.py).
    let base = format!("{base}/v1");
    let v = run_openai_script(
        "openai_client.py",
        &[base.as_ref(), api_key_file.as_ref(), MODEL.as_ref()],
    );
    assert_eq!(v["models"], serde_json::json!([MODEL]), "{v}");
    let chat = &v["chat"];
    assert!(!chat["content"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(chat["finish_reason"], "length", "{v}");
    assert_eq!(chat["usage"]["completion_tokens"], 8, "{v}");
    let stream = &v["stream"];
    assert!(stream["pieces"].as_array().unwrap().len() > 1, "{v}");
    assert_eq!(stream["finish_reason"], "length", "{v}");
    assert_eq!(stream["usage"]["completion_tokens"], 8, "{v}");
    assert_eq!(
        stream["ids"].as_array().unwrap().len(),
        1,
        "one id per stream: {v}"
    );
    let emb = &v["embeddings"];
    assert_eq!(emb["indices"], serde_json::json!([0, 1]), "{v}");
    for (i, input) in ["first input", "second input"].into_iter().enumerate() {
        let want = cocoon_enclave::backend::DeterministicTestBackend::embedding(input);
        let got: Vec<f32> = emb["vectors"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want, "embedding of {input:?}");
    }
    assert_eq!(
        v["wrong_key"],
        serde_json::json!({"status": 401, "code": "invalid_api_key"}),
        "{v}"
    );
    // Chat, stream and embeddings each made one receipt; the wrong key none.
    assert_eq!(ledger_request_ids(&host.admin).len(), 5);
}
