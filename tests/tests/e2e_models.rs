//! Real inference through the sealed path, with real processes on loopback:
//!
//! * the tch backend serving all-minilm-l6-v2 (TorchScript exported by
//!   `scripts/torch-env.sh`): embeddings equal the Python reference within
//!   1e-4, usage is the tokenizer's count, a tampered model or tokenizer
//!   stops the boot;
//! * the upstream backend forwarding to a small OpenAI-compatible server
//!   that the test starts: streamed answers, the enclave's own token count
//!   in the receipt, max_tokens cut enforced by the enclave (and the
//!   upstream connection dropped), upstream errors reported, not relayed.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cocoon_client::{Client, ClientError, ResponsePart};
use cocoon_protocol::message::{FinishReason, RefusalCode};
use cocoon_test_kit::procs::TempDir;
use cocoon_tests::models::{
    chat_model_toml, chat_reference, max_abs_diff, model_dir, model_toml, reference,
};
use common::*;
use sha2::Digest;

const MINILM: &str = "all-minilm-l6-v2";

fn tch_config(models: &str) -> String {
    format!("backend = \"tch\"\ndevice = \"cpu\"\n\n[prices.{MINILM}]\nprompt = 3\ncompletion = 0\n\n{models}")
}

#[test]
fn embeddings_over_the_sealed_path_equal_the_python_reference() {
    let reference = reference();
    let dir = TempDir::new("e2e-tch");
    let enclave = start_enclave_with(&dir, "enclave", &tch_config(&model_toml()));
    // 24 requests in a burst: above the default per-account rate limit.
    let host = start_host(
        &dir,
        &[&enclave.socket],
        &[
            "--account-max-streams",
            "64",
            "--account-rps",
            "1000",
            "--account-burst",
            "1000",
        ],
    );
    let client = Client::new(&host.url, simulated_policy(), account());
    rt().block_on(async {
        let provider = client.verify().await.expect("verified");
        // The model digest in the verified claims is the file's SHA-256.
        let file = std::fs::read(model_dir().join("model.pt")).unwrap();
        let claims = provider.enclaves()[0].claims();
        let d = claims
            .model_digests
            .iter()
            .find(|d| d.name == MINILM)
            .expect("model in claims");
        assert_eq!(d.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&file)));

        // One request per input (no padding), then all in one request
        // (one padded batch in the enclave): both match Python.
        let mut worst = 0f32;
        for (i, input) in reference.inputs.iter().enumerate() {
            let r = client
                .embeddings(MINILM, vec![input.clone()])
                .await
                .expect("embeddings");
            let diff = max_abs_diff(&r.embeddings[0], &reference.embeddings[i]);
            worst = worst.max(diff);
            assert!(diff <= 1e-4, "input {i}: max abs diff {diff}");
            assert_eq!(r.completed.usage.prompt_tokens, reference.token_counts[i]);
            assert_eq!(r.completed.receipt.unit_price.prompt, 3);
        }
        let all = client
            .embeddings(MINILM, reference.inputs.clone())
            .await
            .expect("batched embeddings");
        for (i, v) in all.embeddings.iter().enumerate() {
            let diff = max_abs_diff(v, &reference.embeddings[i]);
            worst = worst.max(diff);
            assert!(diff <= 1e-4, "batched input {i}: max abs diff {diff}");
        }
        assert_eq!(
            all.completed.usage.prompt_tokens,
            reference.token_counts.iter().sum::<u64>()
        );
        eprintln!("max abs difference from the Python reference: {worst:e}");

        // Concurrent requests are batched by the model thread and still
        // answer each caller with its own vectors.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let c = client.clone();
            let input = reference.inputs[i % reference.inputs.len()].clone();
            tasks.push(tokio::spawn(async move {
                (i, c.embeddings(MINILM, vec![input]).await)
            }));
        }
        for t in tasks {
            let (i, r) = t.await.unwrap();
            let r = r.expect("concurrent embeddings");
            let diff = max_abs_diff(
                &r.embeddings[0],
                &reference.embeddings[i % reference.inputs.len()],
            );
            assert!(diff <= 1e-4, "concurrent {i}: {diff}");
        }

        // An embedding model does not chat; an over-long input is refused;
        // both come back as errors with a receipt, not as a dead stream.
        let done = client
            .chat(MINILM, ask("hello"), 8)
            .await
            .expect("accepted")
            .collect_text()
            .await
            .expect("authentic");
        assert!(
            matches!(&done.1.finish, FinishReason::Refused { code: RefusalCode::ModelKindMismatch, message } if message.contains("does not support chat")),
            "{:?}",
            done.1.finish
        );
        let long = "word ".repeat(600);
        match client.embeddings(MINILM, vec![long]).await {
            Err(ClientError::EnclaveFailed { message, completed }) => {
                assert!(message.contains("limit of 512"), "{message}");
                assert_eq!(
                    completed.usage.prompt_tokens, 0,
                    "a refused input is not billed"
                );
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_real_chat_model_answers_over_the_sealed_path_as_in_python() {
    let want = chat_reference();
    let dir = TempDir::new("e2e-chat");
    let config = format!(
        "{}\n[prices.smollm2-135m-instruct]\nprompt = 1\ncompletion = 4\n\n{}",
        tch_config(&model_toml()),
        chat_model_toml()
    );
    let enclave = start_enclave_with(&dir, "enclave", &config);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let client = Client::new(&host.url, simulated_policy(), account());
    rt().block_on(async {
        let provider = client.verify().await.expect("verified");
        let mut models = provider.models();
        models.sort();
        assert_eq!(models, ["all-minilm-l6-v2", "smollm2-135m-instruct"]);
        let started = Instant::now();
        let mut stream = client
            .chat("smollm2-135m-instruct", ask(&want.prompt), want.max_tokens)
            .await
            .expect("accepted");
        let mut pieces = Vec::new();
        let done = loop {
            match stream.next().await.expect("authentic") {
                Some(ResponsePart::Text(t)) => pieces.push(t),
                Some(ResponsePart::Completed(d)) => break *d,
                Some(other) => panic!("unexpected part {other:?}"),
                None => panic!("stream ended without its receipt"),
            }
        };
        let text = pieces.concat();
        eprintln!(
            "answer {text:?} in {:?}, {} pieces",
            started.elapsed(),
            pieces.len()
        );
        // Greedy decoding: the same answer, token for token, as Python.
        assert_eq!(text, want.answer);
        assert!(pieces.len() > 1, "streamed token by token: {pieces:?}");
        assert_eq!(done.usage.prompt_tokens, want.prompt_tokens);
        assert_eq!(done.usage.completion_tokens, want.answer_tokens);
        let finish = if want.stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(done.finish, finish);
        assert_eq!(done.receipt.unit_price.completion, 4);

        // max_tokens cuts the answer, and the receipt says so.
        let (short, d) = client
            .chat("smollm2-135m-instruct", ask(&want.prompt), 3)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        assert!(want.answer.starts_with(&short), "{short:?}");
        assert_eq!(d.finish, FinishReason::Length);
        assert_eq!(d.usage.completion_tokens, 3);
        // The chat model does not embed.
        match client
            .embeddings("smollm2-135m-instruct", vec!["x".into()])
            .await
        {
            Err(ClientError::EnclaveFailed { message, .. }) => {
                assert!(message.contains("does not support embeddings"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    });

    // `cocoon-client chat` without --model: the embedding model is listed
    // first; it refuses a chat (charged nothing) and the chat model answers.
    let policy = dir.path().join("client-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let out = std::process::Command::new(cocoon_test_kit::procs::bin("cocoon-client"))
        .args(["chat", "--provider", &host.url])
        .arg("--policy")
        .arg(&policy)
        .arg("--account-key")
        .arg(dir.path().join("cli-account.key"))
        .args(["--max-tokens", "3", &want.prompt])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("all-minilm-l6-v2 does not chat"),
        "{stderr}"
    );
    assert!(
        stderr.contains("smollm2-135m-instruct (the first listed that chats"),
        "{stderr}"
    );
    assert!(want.answer.starts_with(stdout.trim_end()), "{stdout:?}");
}

/// Run an enclave that must refuse to boot; its exit code and output.
fn boot_must_fail(dir: &TempDir, name: &str, config: &str) -> (Option<i32>, String) {
    let (mut cmd, _) = enclave_command(dir, name, config);
    let out = dir.path().join(format!("{name}.out"));
    let file = std::fs::File::create(&out).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = cmd.spawn().expect("spawn enclave");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the enclave kept running with a bad model file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&out).unwrap())
}

#[test]
fn a_tampered_model_or_tokenizer_is_refused_before_loading() {
    let dir = TempDir::new("e2e-tamper");
    let src = model_dir();
    let model = dir.path().join("model.pt");
    let tokenizer = dir.path().join("tokenizer.json");
    let mut bytes = std::fs::read(src.join("model.pt")).unwrap();
    // One bit, in the middle of the weights.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&model, &bytes).unwrap();
    std::fs::copy(src.join("tokenizer.json"), &tokenizer).unwrap();
    let original = model_toml();
    let path_line = |key: &str| {
        original
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap()
            .to_owned()
    };
    let tampered_model = original.replace(
        &path_line("path"),
        &format!("path = \"{}\"", model.display()),
    );
    let (code, out) = boot_must_fail(&dir, "bad-model", &tch_config(&tampered_model));
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("refusing to load"), "{out}");
    assert!(out.contains(&model.display().to_string()), "{out}");
    assert!(!out.contains("ready "), "{out}");

    // The tokenizer: one character changed.
    let mut text = std::fs::read_to_string(src.join("tokenizer.json")).unwrap();
    text = text.replacen("[UNK]", "[UNX]", 1);
    std::fs::write(&tokenizer, text).unwrap();
    let tampered_tok = original.replace(
        &path_line("tokenizer"),
        &format!("tokenizer = \"{}\"", tokenizer.display()),
    );
    let (code, out) = boot_must_fail(&dir, "bad-tokenizer", &tch_config(&tampered_tok));
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("tokenizer") && out.contains("refusing to load"),
        "{out}"
    );

    // A missing file is a clear error too.
    let missing = original.replace(&path_line("path"), "path = \"/nonexistent/model.pt\"");
    let (code, out) = boot_must_fail(&dir, "missing", &tch_config(&missing));
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("/nonexistent/model.pt"), "{out}");
}

// ---------------------------------------------------------------------------
// The upstream backend against a small OpenAI-compatible server.

const ANSWER: &[&str] = &[
    "Paris",
    " is",
    " the",
    " capital",
    " of",
    " France",
    ",",
    " said",
    " the",
    " upstream",
    ".",
];

#[derive(Default)]
struct Upstream {
    chats: Mutex<Vec<serde_json::Value>>,
    /// Streams that ended because the reader went away.
    dropped: AtomicUsize,
    /// Streams that were sent to the end.
    finished: AtomicUsize,
}

struct StreamGuard {
    state: Arc<Upstream>,
    done: bool,
}

impl StreamGuard {
    /// The stream was sent to its end (counted when the guard drops).
    fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.done {
            self.state.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn event(v: serde_json::Value) -> String {
    format!("data: {v}\n\n")
}

async fn chat_completions(
    State(state): State<Arc<Upstream>>,
    Json(req): Json<serde_json::Value>,
) -> Response {
    state.chats.lock().unwrap().push(req.clone());
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    if model == "upstream-broken" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "error echoing the prompt: secret",
        )
            .into_response();
    }
    // "slow" ignores max_tokens and streams 200 pieces, 5 ms apart.
    let slow = model == "upstream-slow";
    let max = req["max_tokens"].as_u64().unwrap_or(u64::MAX) as usize;
    let pieces: Vec<String> = if slow {
        (0..200).map(|i| format!(" w{i}")).collect()
    } else {
        ANSWER.iter().take(max).map(|s| s.to_string()).collect()
    };
    let finish = if !slow && max < ANSWER.len() {
        "length"
    } else {
        "stop"
    };
    let mut text = String::new();
    text.push_str(": a comment line the client must skip\n\n");
    let head = serde_json::json!({"choices":[{"index":0,"delta":{"role":"assistant"}}]});
    text.push_str(&event(head));
    let mut events: Vec<String> = pieces
        .iter()
        .map(|p| event(serde_json::json!({"choices":[{"index":0,"delta":{"content":p},"finish_reason":null}]})))
        .collect();
    events.push(event(
        serde_json::json!({"choices":[{"index":0,"delta":{},"finish_reason":finish}]}),
    ));
    events.push("data: [DONE]\n\n".into());
    let guard = StreamGuard {
        state: state.clone(),
        done: false,
    };
    // Split the bytes at odd places (mid-line, mid-UTF-8 is avoided by
    // ASCII content) so the enclave's parser must reassemble lines.
    let stream = futures_util::stream::unfold(
        (guard, text.into_bytes(), events.into_iter(), 0usize),
        move |(mut guard, mut pending, mut rest, n)| async move {
            if pending.is_empty() {
                match rest.next() {
                    Some(e) => pending = e.into_bytes(),
                    None => {
                        guard.finish();
                        return None;
                    }
                }
            }
            if slow {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let cut = (7 + n % 13).min(pending.len());
            let chunk: Vec<u8> = pending.drain(..cut).collect();
            Some((
                Ok::<_, Infallible>(Bytes::from(chunk)),
                (guard, pending, rest, n + 1),
            ))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn embeddings(Json(req): Json<serde_json::Value>) -> Response {
    let inputs = req["input"].as_array().cloned().unwrap_or_default();
    // Answer in reverse order with explicit indexes.
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| {
            let len = s.as_str().unwrap_or_default().len() as f32;
            serde_json::json!({"object":"embedding","index":i,"embedding":[len, 1.0, -0.5]})
        })
        .collect();
    Json(serde_json::json!({"object":"list","data":data})).into_response()
}

fn upstream_config(url: &str) -> String {
    let dir = model_dir();
    let tok = dir.join("tokenizer.json");
    let tok_sha = hex::encode(sha2::Sha256::digest(std::fs::read(&tok).unwrap()));
    let model = |name: &str| {
        format!(
            "[upstream.models.{name}]\nserved_name = \"served/{name}\"\nsha256 = \"{}\"\ntokenizer = \"{}\"\ntokenizer_sha256 = \"{tok_sha}\"\nmax_input_tokens = 64\n\n",
            hex::encode(sha2::Sha256::digest(name.as_bytes())),
            tok.display()
        )
    };
    format!(
        "backend = \"upstream\"\n\n[upstream]\nurl = \"{url}\"\ntimeout_secs = 30\n\n{}{}{}",
        model("upstream-chat"),
        model("upstream-slow"),
        model("upstream-broken")
    )
    .replace("served/upstream-broken", "upstream-broken")
    .replace("served/upstream-slow", "upstream-slow")
}

fn count(text: &str) -> u64 {
    let mut tok = tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
    // tokenizer.json pads to 128; counting must not.
    tok.with_padding(None);
    tok.encode(text, false).unwrap().get_ids().len() as u64
}

#[test]
fn upstream_backend_streams_through_the_sealed_path_and_counts_with_its_own_tokenizer() {
    let runtime = rt();
    let state = Arc::new(Upstream::default());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .with_state(state.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });

    let dir = TempDir::new("e2e-upstream");
    let enclave = start_enclave_with(&dir, "enclave", &upstream_config(&url));
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let client = Client::new(&host.url, simulated_policy(), account());
    runtime.block_on(async {
        let question = "What is the capital of France?";
        let mut stream = client
            .chat("upstream-chat", ask(question), 100)
            .await
            .expect("accepted");
        let mut pieces = Vec::new();
        let done = loop {
            match stream.next().await.expect("authentic") {
                Some(ResponsePart::Text(t)) => pieces.push(t),
                Some(ResponsePart::Completed(d)) => break *d,
                Some(other) => panic!("unexpected part {other:?}"),
                None => panic!("stream ended without its receipt"),
            }
        };
        assert_eq!(pieces, ANSWER, "streamed piece by piece");
        assert_eq!(done.finish, FinishReason::Stop);
        let answer = ANSWER.concat();
        assert_eq!(done.usage.prompt_tokens, count(question));
        assert_eq!(done.usage.completion_tokens, count(&answer));
        let sent = state.chats.lock().unwrap()[0].clone();
        assert_eq!(sent["model"], "served/upstream-chat");
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["max_tokens"], 100);
        assert_eq!(sent["messages"][0]["content"], question);

        // The upstream honours max_tokens: finish "length".
        let (text, d) = client
            .chat("upstream-chat", ask(question), 4)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        assert_eq!(text, ANSWER[..4].concat());
        assert_eq!(d.finish, FinishReason::Length);

        // An upstream that ignores max_tokens is cut by the enclave, which
        // then drops the connection (the upstream sees the cancel).
        let before = state.dropped.load(Ordering::SeqCst);
        let (text, d) = client
            .chat("upstream-slow", ask(question), 3)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        assert_eq!(text, " w0 w1 w2");
        assert_eq!(d.finish, FinishReason::Length);
        assert!(d.usage.completion_tokens <= 3, "{:?}", d.usage);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.dropped.load(Ordering::SeqCst) == before {
            assert!(
                Instant::now() < deadline,
                "the upstream stream was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Upstream errors: the status is reported, the body is not relayed.
        let (_, d) = client
            .chat("upstream-broken", ask(question), 8)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        match &d.finish {
            FinishReason::Failed(m) => {
                assert!(m.contains("HTTP 500"), "{m}");
                assert!(!m.contains("secret"), "{m}");
            }
            other => panic!("{other:?}"),
        }

        // Too long a prompt never reaches the upstream.
        let n = state.chats.lock().unwrap().len();
        let (_, d) = client
            .chat("upstream-chat", ask(&"word ".repeat(100)), 8)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        assert!(
            matches!(&d.finish, FinishReason::Refused { code: RefusalCode::ContextLengthExceeded, message } if message.contains("limit of 64")),
            "{:?}",
            d.finish
        );
        assert_eq!(state.chats.lock().unwrap().len(), n);

        // Embeddings, answered out of order with indexes.
        let r = client
            .embeddings("upstream-chat", vec!["a".into(), "bbb".into()])
            .await
            .expect("embeddings");
        assert_eq!(
            r.embeddings,
            vec![vec![1.0, 1.0, -0.5], vec![3.0, 1.0, -0.5]]
        );
    });
    // The host never saw the prompt or the answer.
    let host_log = host.proc.output();
    assert!(!host_log.contains("capital of France"), "{host_log}");
    drop(enclave);
}
