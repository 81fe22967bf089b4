//! The local OpenAI-compatible endpoint end to end over real HTTP: an
//! OpenAI-style client (reqwest + JSON, with the endpoint's API key) →
//! `cocoon_client::serve` → the SDK → the in-test provider; and the
//! requests it refuses before anything reaches the provider.

mod support;

use std::time::Duration;

use base64::Engine as _;
use cocoon_client::serve::{run, ServeOptions};
use cocoon_client::{Client, ClientOptions};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::local_auth::BearerToken;
use cocoon_protocol::rand_core::OsRng;
use cocoon_verifier::Policy;
use serde_json::{json, Value};
use support::{default_policy, sim_policy, Misbehavior, TestProvider, EMBED_MODEL, MODEL};

struct Endpoint {
    base: String,
    addr: std::net::SocketAddr,
    key: String,
    client: Client,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn endpoint(p: &TestProvider, policy: Policy) -> Endpoint {
    let mut o = ClientOptions::default();
    o.evidence_refresh = Duration::from_secs(3600);
    let client = Client::with_options(&p.url, policy, AccountKey::generate(&mut OsRng), o);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = client.clone();
    let key = BearerToken::generate(cocoon_client::API_KEY_PREFIX, &mut OsRng);
    let secret = key.reveal().to_string();
    tokio::spawn(async move {
        run(listener, c, ServeOptions::new(key), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Endpoint {
        base,
        addr,
        key: secret,
        client,
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

impl Endpoint {
    async fn post(&self, path: &str, body: String) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    }

    async fn get_models(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/models", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
    }

    async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, t) = self.post(path, body.to_string()).await;
        (
            s,
            serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON: {t}")),
        )
    }
}

/// Server-sent events as (event name, data) pairs.
fn parse_sse(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = vec![];
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                } else if !line.starts_with(':') {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

fn error_of(v: &Value) -> (&str, &str, &str) {
    let e = &v["error"];
    (
        e["message"].as_str().unwrap(),
        e["type"].as_str().unwrap(),
        e["code"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn models_are_the_verified_claims() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let r = ep.get_models().await;
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, EMBED_MODEL]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["cocoon"]["platform"], "simulated");
    assert_eq!(v["data"][0]["cocoon"]["sha256"], hex::encode([0x11; 32]));
}

#[tokio::test]
async fn chat_completion_with_usage_from_the_verified_receipt() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let (s, v) = ep
        .post_json(
            "/v1/chat/completions",
            json!({
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "what is six times seven"}]}
                ],
                "max_tokens": 64,
                "temperature": 0.2
            }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The answer is 42. (you asked: what is six times seven)"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": 7,
            "completion_tokens": 4,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0}
        })
    );
    let ext = &v["cocoon"];
    assert_eq!(ext["platform"], "simulated");
    assert_eq!(ext["evidence_digest"], hex::encode(p.digest().as_bytes()));
    let receipt = base64::engine::general_purpose::STANDARD
        .decode(ext["receipt"].as_str().unwrap())
        .unwrap();
    let r = cocoon_protocol::receipt::verify_receipt(
        &receipt,
        &p.state().enclave.receipts.public_key_sec1(),
    )
    .unwrap();
    assert_eq!(ext["request_id"], r.request_id.to_string());
    assert_eq!(v["id"], format!("chatcmpl-{}", r.request_id));
    assert_eq!(r.client_account, ep.client.account_id().0);
    assert_eq!(r.total_tokens, 11);
}

#[tokio::test]
async fn max_completion_tokens_wins_and_length_is_reported() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let (s, v) = ep
        .post_json(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "q"}],
                   "max_tokens": 50, "max_completion_tokens": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "The answer ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 1);
}

#[tokio::test]
async fn streamed_chat_is_server_sent_events_ending_in_done() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let (s, h, body) = ep
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "stream": true,
                   "messages": [{"role": "user", "content": "what is six times seven"}]})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&body);
    assert_eq!(events.last().unwrap(), &(None, "[DONE]".to_string()));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(name, d)| {
            assert!(name.is_none(), "{name:?}");
            serde_json::from_str(d).unwrap()
        })
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        "The answer is 42. (you asked: what is six times seven)"
    );
    // One event per text piece, then the final one.
    assert_eq!(chunks.len(), 1 + 4 + 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    // Usage only in a chunk of its own, and only when asked for
    // (`stream_options.include_usage`, as OpenAI does).
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{chunks:?}");
    assert_eq!(last["cocoon"]["platform"], "simulated");
    assert_eq!(last["cocoon"]["request_id"], &id["chatcmpl-".len()..]);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[tokio::test]
async fn a_stream_that_fails_verification_midway_ends_with_an_error_event() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    for (m, needle) in [
        (Misbehavior::FlipCiphertextBit(2), "does not authenticate"),
        (Misbehavior::DropLastChunk, "response truncated by the host"),
        (
            Misbehavior::ForgeReceipt,
            "receipt signature does not verify with the attested key",
        ),
    ] {
        p.set(m.clone());
        let (s, _, body) = ep
            .post(
                "/v1/chat/completions",
                json!({"model": MODEL, "stream": true,
                       "messages": [{"role": "user", "content": "q"}]})
                .to_string(),
            )
            .await;
        assert_eq!(s, 200);
        let events = parse_sse(&body);
        assert!(
            !events.iter().any(|(_, d)| d == "[DONE]"),
            "{m:?}: no [DONE] after a failure: {body}"
        );
        let (name, data) = events.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"), "{m:?}: {body}");
        let v: Value = serde_json::from_str(data).unwrap();
        let (msg, kind, code) = error_of(&v);
        assert!(msg.contains(needle), "{m:?}: {msg}");
        assert_eq!(
            (kind, code),
            ("provider_error", "response_verification_failed")
        );
        // Text that authenticated before the failure was delivered.
        if m == Misbehavior::FlipCiphertextBit(2) {
            let text: String = events[..events.len() - 1]
                .iter()
                .filter_map(|(_, d)| {
                    serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert_eq!(text, "The answer is ");
        }
    }
    // The same failures without streaming are a 502.
    p.set(Misbehavior::ForgeReceipt);
    let (s, v) = ep
        .post_json(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "q"}]}),
        )
        .await;
    assert_eq!(s, 502);
    assert_eq!(error_of(&v).2, "response_verification_failed");
}

#[tokio::test]
async fn embeddings_in_float_and_base64() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let (s, v) = ep
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED_MODEL, "input": ["a b", "ccc"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    assert_eq!(v["data"][0]["embedding"], json!([3.0, 0.0, 0.5]));
    assert_eq!(v["data"][1]["embedding"], json!([3.0, 1.0, 0.5]));
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    assert_eq!(v["cocoon"]["platform"], "simulated");

    let (s, v) = ep
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED_MODEL, "input": "hello", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [5.0, 0.0, 0.5]);
}

#[tokio::test]
async fn bad_requests_are_openai_style_errors() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let (s, _, t) = ep.post("/v1/chat/completions", "{not json".into()).await;
    assert_eq!(s, 400);
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(error_of(&v).1, "invalid_request_error");
    assert_eq!(error_of(&v).2, "invalid_json");

    let (s, v) = ep
        .post_json(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(error_of(&v).2, "invalid_role");

    let (s, v) = ep
        .post_json(
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(error_of(&v).2, "model_not_found");
    assert!(error_of(&v).0.contains(MODEL));

    let (s, v) = ep
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED_MODEL, "input": [[1, 2]]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(error_of(&v).2, "invalid_input");
    assert_eq!(p.posts(), 0, "nothing reached the provider");

    p.set(Misbehavior::RateLimit);
    let (s, h, t) = ep
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).to_string(),
        )
        .await;
    assert_eq!(s, 429, "{t}");
    assert_eq!(h["retry-after"], "7");
}

#[tokio::test]
async fn an_unverified_provider_is_503_with_the_reasons() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, default_policy()).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": EMBED_MODEL, "input": "x"}),
        ),
    ] {
        let (s, v) = ep.post_json(path, body).await;
        assert_eq!(s, 503, "{v}");
        let (msg, kind, code) = error_of(&v);
        assert_eq!(
            (kind, code),
            ("provider_not_verified", "attestation_failed")
        );
        assert!(msg.contains("enclave evidence #0 rejected"), "{msg}");
        assert!(msg.contains("NOT confidential"), "{msg}");
    }
    let r = ep.get_models().await;
    assert_eq!(r.status(), 503);
    assert_eq!(p.posts(), 0);
}

#[tokio::test]
async fn a_restart_is_followed_transparently() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "q"}]});
    let (s, v1) = ep.post_json("/v1/chat/completions", body.clone()).await;
    assert_eq!(s, 200, "{v1}");
    p.set(Misbehavior::RestartOnNextRequest);
    let (s, v2) = ep.post_json("/v1/chat/completions", body).await;
    assert_eq!(s, 200, "{v2}");
    assert_ne!(
        v1["cocoon"]["evidence_digest"],
        v2["cocoon"]["evidence_digest"]
    );
    assert_eq!(
        v2["cocoon"]["evidence_digest"],
        hex::encode(p.digest().as_bytes())
    );
    assert_eq!(p.posts(), 3);
}

/// What a refused request got: status, headers, and the OpenAI-shaped
/// error (`param` is present and null).
async fn refused(r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String, String) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert!(v["error"]["param"].is_null(), "{v}");
    assert!(v["error"].get("param").is_some(), "{v}");
    let (msg, kind, code) = error_of(&v);
    assert_eq!(kind, "invalid_request_error", "{v}");
    (status, headers, code.to_string(), msg.to_string())
}

fn no_cors(h: &reqwest::header::HeaderMap) {
    for name in h.keys() {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "CORS header {name} sent"
        );
    }
}

#[tokio::test]
async fn refused_before_anything_is_sealed_or_sent() {
    let p = TestProvider::start().await;
    let ep = endpoint(&p, sim_policy()).await;
    let chat = format!("{}/v1/chat/completions", ep.base);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "spend my money"}]})
        .to_string();
    let wrong = BearerToken::generate(cocoon_client::API_KEY_PREFIX, &mut OsRng);

    // No key, a wrong key, the key under another scheme, the key bare.
    for (auth, code) in [
        (None, "missing_api_key"),
        (
            Some(format!("Bearer {}", wrong.reveal())),
            "invalid_api_key",
        ),
        (Some(format!("Bearer {}x", ep.key)), "invalid_api_key"),
        (Some(format!("Basic {}", ep.key)), "invalid_api_key"),
        (Some(ep.key.clone()), "invalid_api_key"),
    ] {
        for req in [
            ep.http
                .post(&chat)
                .header("content-type", "application/json")
                .body(body.clone()),
            ep.http.get(format!("{}/v1/models", ep.base)),
            ep.http
                .post(format!("{}/v1/embeddings", ep.base))
                .header("content-type", "application/json")
                .body(json!({"model": EMBED_MODEL, "input": "x"}).to_string()),
            ep.http.get(format!("{}/no/such/path", ep.base)),
        ] {
            let req = match &auth {
                Some(a) => req.header("authorization", a),
                None => req,
            };
            let (s, h, c, msg) = refused(req).await;
            assert_eq!((s, c.as_str()), (401, code), "{auth:?}: {msg}");
            assert_eq!(h["www-authenticate"], "Bearer");
            assert!(msg.contains("Authorization: Bearer"), "{msg}");
            assert!(!msg.contains(&ep.key), "the key is never echoed");
            no_cors(&h);
        }
    }

    // The cross-site "simple" request: text/plain (or a form, or no
    // content type), even with the right key; the key is checked first.
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let mut req = ep.http.post(&chat).bearer_auth(&ep.key).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (s, h, c, _) = refused(req).await;
        assert_eq!((s, c.as_str()), (415, "unsupported_media_type"), "{ct:?}");
        no_cors(&h);
        let mut req = ep.http.post(&chat).body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (s, _, c, _) = refused(req).await;
        assert_eq!((s, c.as_str()), (401, "missing_api_key"), "{ct:?}");
    }

    // DNS rebinding: a name that resolves to 127.0.0.1 but is not this
    // endpoint's, with the right key and content type; the Host header is
    // checked before the key.
    let rebound = reqwest::Client::builder()
        .resolve("rebound.example", ep.addr)
        .build()
        .unwrap();
    let foreign = format!(
        "http://rebound.example:{}/v1/chat/completions",
        ep.addr.port()
    );
    let (s, h, c, msg) = refused(
        rebound
            .post(&foreign)
            .bearer_auth(&ep.key)
            .header("content-type", "application/json")
            .body(body.clone()),
    )
    .await;
    assert_eq!((s, c.as_str()), (421, "misdirected_request"), "{msg}");
    no_cors(&h);
    let (s, _, c, _) = refused(
        rebound
            .post(&foreign)
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!((s, c.as_str()), (421, "misdirected_request"));
    for host in ["evil.example", "127.0.0.1.evil.example", "0.0.0.0"] {
        let (s, _, c, _) = refused(
            ep.http
                .get(format!("{}/v1/models", ep.base))
                .bearer_auth(&ep.key)
                .header("host", host),
        )
        .await;
        assert_eq!((s, c.as_str()), (421, "misdirected_request"), "{host}");
    }

    // A CORS preflight is not approved: no Access-Control-* headers.
    let r = ep
        .http
        .request(reqwest::Method::OPTIONS, &chat)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    no_cors(r.headers());

    assert_eq!(
        p.evidence_gets(),
        0,
        "the provider was not even asked for evidence"
    );
    assert_eq!(p.posts(), 0, "nothing was sent to the provider");
    assert_eq!(p.opened(), 0, "nothing was sealed to the enclave");

    // The owner, by every local name, gets through; still no CORS headers,
    // whatever the Origin.
    let local = reqwest::Client::builder()
        .resolve("localhost", ep.addr)
        .build()
        .unwrap();
    for base in [
        ep.base.clone(),
        format!("http://localhost:{}", ep.addr.port()),
    ] {
        let r = local
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&ep.key)
            .header("content-type", "application/json; charset=utf-8")
            .header("origin", "https://evil.example")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base}");
        no_cors(r.headers());
    }
    let r = ep
        .http
        .get(format!("{}/v1/models", ep.base))
        .bearer_auth(&ep.key)
        .header("host", format!("[::1]:{}", ep.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.posts(), 2);
}
