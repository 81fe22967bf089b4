//! The upstream backend: forwards opened requests to an OpenAI-compatible
//! server running inside the same guest (vLLM, SGLang, llama.cpp's server,
//! ...), the way Telegram's Cocoon runs vLLM, and streams its answer back
//! token by token.
//!
//! The server is part of the measured image and listens on the guest's
//! loopback, so this is plain HTTP/1.1 (`hyper`, client side only; the
//! enclave still serves no HTTP). What the upstream says about usage is not
//! used: the enclave counts prompt and completion tokens itself with the
//! model's tokenizer (checked against its digest at boot), and that count
//! goes into the receipt. The upstream's error bodies are not relayed (they
//! may quote the prompt into a log); only the status is.
//!
//! Requests: `POST {url}/v1/chat/completions` with `stream: true` (answer:
//! server-sent events, `data: {json}` lines with `choices[0].delta.content`
//! and `choices[0].finish_reason`, ended by `data: [DONE]`), and
//! `POST {url}/v1/embeddings` (answer: `data[i].embedding`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;
use cocoon_attestation::bundle::ModelDigest;
use cocoon_protocol::message::ChatMessage;
use cocoon_protocol::sampling::{
    Logprob, Sampling, TokenLogprob, TopLogprob, MAX_TOKEN_BYTES, MAX_TOP_LOGPROBS,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::backend::{BackendError, ChatOutcome, Finish, Generated, InferenceBackend};
use crate::config::EnclaveConfig;
use crate::files::{hash_checked, CheckedTokenizer, LoadError};

/// Longest SSE line accepted from the upstream.
const MAX_LINE: usize = 1 << 20;
/// Largest embeddings answer accepted from the upstream.
const MAX_EMBEDDINGS_BODY: usize = 64 << 20;

/// An `http://HOST:PORT[/PATH]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    host: String,
    port: u16,
    base: String,
}

impl UpstreamUrl {
    /// Parse; only plain `http` with an explicit host (the server is in the
    /// guest: no TLS, no proxies, no credentials).
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} must start with http:// (the upstream runs inside the guest)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(format!(
                "{url:?}: no credentials, query or fragment allowed"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?}: no host"));
        }
        Ok(UpstreamUrl {
            host: host.into(),
            port,
            base: path.trim_end_matches('/').into(),
        })
    }
}

struct UpModel {
    served_name: String,
    digest: [u8; 32],
    tokenizer: CheckedTokenizer,
    max_input_tokens: u32,
}

/// An OpenAI-compatible server behind [`InferenceBackend`].
pub struct UpstreamBackend {
    url: UpstreamUrl,
    timeout: Duration,
    models: BTreeMap<String, UpModel>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for UpstreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBackend")
            .field("url", &self.url)
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl UpstreamBackend {
    /// Check the tokenizers (and weights, where named) of `config.upstream`.
    /// Requests run on `runtime`.
    pub fn load(
        config: &EnclaveConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<UpstreamBackend, LoadError> {
        let Some(u) = &config.upstream else {
            return Err(LoadError::Device(
                "no [upstream] table in the configuration".into(),
            ));
        };
        let url = UpstreamUrl::parse(&u.url).map_err(LoadError::Device)?;
        let mut models = BTreeMap::new();
        for (name, m) in &u.models {
            if let Some(w) = &m.weights {
                hash_checked("weights", w, &m.sha256)?;
            }
            let tokenizer = CheckedTokenizer::load(&m.tokenizer, &m.tokenizer_sha256)?;
            info!(model = %name, upstream = %u.url, weights_checked = m.weights.is_some(), "upstream model configured");
            models.insert(
                name.clone(),
                UpModel {
                    served_name: m.served_name.clone().unwrap_or_else(|| name.clone()),
                    digest: m.sha256.0,
                    tokenizer,
                    max_input_tokens: m.max_input_tokens,
                },
            );
        }
        Ok(UpstreamBackend {
            url,
            timeout: Duration::from_secs(u.timeout_secs),
            models,
            runtime,
        })
    }

    fn model(&self, model: &str) -> Result<&UpModel, BackendError> {
        self.models
            .get(model)
            .ok_or_else(|| BackendError::UnknownModel(model.into()))
    }
}

/// What the streaming task tells the blocking caller.
enum Event {
    Piece(String, Vec<TokenLogprob>),
    Done(Option<String>),
    Failed(String),
}

async fn post(url: &UpstreamUrl, path: &str, body: Value) -> Result<Response<Incoming>, String> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot reach the upstream server: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "HTTP handshake with the upstream server failed".to_owned())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = Request::post(format!("{}{path}", url.base))
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| "cannot build the upstream request".to_owned())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|_| "the upstream server closed the connection".to_owned())?;
    if resp.status() != StatusCode::OK {
        return Err(format!(
            "the upstream server answered HTTP {}",
            resp.status().as_u16()
        ));
    }
    Ok(resp)
}

/// Read the SSE stream, sending each content piece; returns the finish
/// reason the upstream gave.
async fn stream_chat(
    url: &UpstreamUrl,
    body: Value,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Result<Option<String>, String> {
    let mut resp = post(url, "/v1/chat/completions", body).await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut finish = None;
    loop {
        let frame = match resp.body_mut().frame().await {
            None => return Err("the upstream stream ended without [DONE]".into()),
            Some(Err(_)) => return Err("the upstream stream broke off".into()),
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = std::str::from_utf8(&line)
                .map_err(|_| "the upstream sent a line that is not UTF-8".to_owned())?
                .trim_end_matches(['\n', '\r']);
            let Some(payload) = line.strip_prefix("data:") else {
                continue; // blank separators, comments, event:/id: fields
            };
            let payload = payload.trim_start();
            if payload == "[DONE]" {
                return Ok(finish);
            }
            let v: Value = serde_json::from_str(payload)
                .map_err(|_| "the upstream sent an event that is not JSON".to_owned())?;
            let choice = &v["choices"][0];
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
            let logprobs = upstream_logprobs(&choice["logprobs"]["content"]);
            let piece = choice["delta"]["content"].as_str().unwrap_or_default();
            if (!piece.is_empty() || !logprobs.is_empty())
                && tx
                    .send(Event::Piece(piece.to_owned(), logprobs))
                    .await
                    .is_err()
            {
                // The caller stopped listening (cancelled or cut).
                return Ok(finish);
            }
        }
        if buf.len() > MAX_LINE {
            return Err("the upstream sent an over-long event line".into());
        }
    }
}

/// The request body's sampling fields, in OpenAI's units. The upstream
/// applies the stop strings too; the server cuts at them regardless.
fn sampling_json(s: &Sampling) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("temperature".into(), json!(s.temperature()));
    m.insert("top_p".into(), json!(s.top_p()));
    if let Some(seed) = s.seed {
        m.insert("seed".into(), json!(seed));
    }
    if !s.stop.is_empty() {
        m.insert("stop".into(), json!(s.stop));
    }
    if s.presence_penalty_milli != 0 {
        m.insert("presence_penalty".into(), json!(s.presence_penalty()));
    }
    if s.frequency_penalty_milli != 0 {
        m.insert("frequency_penalty".into(), json!(s.frequency_penalty()));
    }
    if !s.logit_bias.is_empty() {
        let bias: serde_json::Map<String, Value> = s
            .logit_bias_f32()
            .map(|(id, b)| (id.to_string(), json!(b)))
            .collect();
        m.insert("logit_bias".into(), Value::Object(bias));
    }
    if s.logprobs {
        m.insert("logprobs".into(), json!(true));
        m.insert("top_logprobs".into(), json!(s.top_logprobs));
    }
    m
}

/// OpenAI's `logprobs.content` entries as [`TokenLogprob`]s; entries that
/// do not have the shape are skipped, long ones cut to the wire's limits.
fn upstream_logprobs(content: &Value) -> Vec<TokenLogprob> {
    fn one(v: &Value) -> Option<TopLogprob> {
        let mut token: Vec<u8> = match v["bytes"].as_array() {
            Some(b) => b
                .iter()
                .map(|x| x.as_u64().and_then(|x| u8::try_from(x).ok()))
                .collect::<Option<_>>()?,
            None => v["token"].as_str()?.as_bytes().to_vec(),
        };
        token.truncate(MAX_TOKEN_BYTES);
        let logprob = Logprob::from_f32(v["logprob"].as_f64()? as f32);
        Some(TopLogprob { token, logprob })
    }
    let Some(entries) = content.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let chosen = one(e)?;
            let top = e["top_logprobs"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(one)
                        .take(usize::from(MAX_TOP_LOGPROBS))
                        .collect()
                })
                .unwrap_or_default();
            Some(TokenLogprob { chosen, top })
        })
        .collect()
}

impl InferenceBackend for UpstreamBackend {
    fn models(&self) -> Vec<ModelDigest> {
        self.models
            .iter()
            .map(|(name, m)| ModelDigest {
                name: name.clone(),
                sha256: m.digest,
                version: None,
                tokenizer_sha256: None,
            })
            .collect()
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<u64, BackendError> {
        self.model(model)?
            .tokenizer
            .count(text)
            .map_err(BackendError::Failed)
    }

    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        let m = self.model(model)?;
        let mut prompt_tokens = 0u64;
        for msg in messages {
            prompt_tokens += m
                .tokenizer
                .count(&msg.content)
                .map_err(BackendError::Failed)?;
        }
        if prompt_tokens > u64::from(m.max_input_tokens) {
            return Err(BackendError::TooLong {
                tokens: prompt_tokens,
                limit: u64::from(m.max_input_tokens),
            });
        }
        let mut body = json!({
            "model": m.served_name,
            "messages": messages.iter().map(|msg| json!({"role": msg.role.as_str(), "content": msg.content})).collect::<Vec<_>>(),
            "max_tokens": max_tokens,
            "stream": true,
        });
        if let Some(b) = body.as_object_mut() {
            b.extend(sampling_json(sampling));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let url = self.url.clone();
        let timeout = self.timeout;
        self.runtime.spawn(async move {
            let end = match tokio::time::timeout(timeout, stream_chat(&url, body, &tx)).await {
                Err(_) => Event::Failed(format!(
                    "the upstream server took longer than {} s",
                    timeout.as_secs()
                )),
                Ok(Err(e)) => Event::Failed(e),
                Ok(Ok(finish)) => Event::Done(finish),
            };
            let _ = tx.send(end).await;
        });
        let mut completion = String::new();
        let mut finish = Finish::Stop;
        loop {
            match rx.blocking_recv() {
                Some(Event::Piece(p, logprobs)) => {
                    // One emit per reported token (the text goes with the
                    // first), or one for the piece when none are reported.
                    let mut logprobs = logprobs.into_iter();
                    let first = Generated {
                        text: &p,
                        logprob: logprobs.next(),
                    };
                    if emit(first).is_break()
                        || logprobs.any(|lp| {
                            emit(Generated {
                                text: "",
                                logprob: Some(lp),
                            })
                            .is_break()
                        })
                    {
                        break;
                    }
                    completion.push_str(&p);
                }
                Some(Event::Done(reason)) => {
                    if reason.as_deref() == Some("length") {
                        finish = Finish::Length;
                    }
                    break;
                }
                Some(Event::Failed(e)) => {
                    warn!(
                        model,
                        delivered_bytes = completion.len(),
                        "upstream request failed"
                    );
                    return Err(BackendError::Failed(e));
                }
                None => return Err(BackendError::Failed("the upstream task stopped".into())),
            }
        }
        // Dropping `rx` stops the task, which drops the connection: the
        // upstream sees the cancel.
        drop(rx);
        let completion_tokens = m
            .tokenizer
            .count(&completion)
            .map_err(BackendError::Failed)?;
        Ok(ChatOutcome {
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens,
            finish,
        })
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        let m = self.model(model)?;
        let mut tokens = 0u64;
        for input in inputs {
            let n = m
                .tokenizer
                .model_ids(input)
                .map_err(BackendError::Failed)?
                .len() as u64;
            if n > u64::from(m.max_input_tokens) {
                return Err(BackendError::TooLong {
                    tokens: n,
                    limit: u64::from(m.max_input_tokens),
                });
            }
            tokens += n;
        }
        if inputs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let body = json!({"model": m.served_name, "input": inputs});
        let url = self.url.clone();
        let timeout = self.timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let call = async {
                let resp = post(&url, "/v1/embeddings", body).await?;
                let bytes = Limited::new(resp.into_body(), MAX_EMBEDDINGS_BODY)
                    .collect()
                    .await
                    .map_err(|_| {
                        "the upstream embeddings answer is too large or broke off".to_owned()
                    })?
                    .to_bytes();
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|_| "the upstream embeddings answer is not JSON".to_owned())
            };
            let r = match tokio::time::timeout(timeout, call).await {
                Err(_) => Err(format!(
                    "the upstream server took longer than {} s",
                    timeout.as_secs()
                )),
                Ok(r) => r,
            };
            let _ = tx.send(r);
        });
        let v = rx
            .recv()
            .map_err(|_| BackendError::Failed("the upstream task stopped".into()))?
            .map_err(BackendError::Failed)?;
        let data = v["data"]
            .as_array()
            .filter(|d| d.len() == inputs.len())
            .ok_or_else(|| {
                BackendError::Failed(
                    "the upstream embeddings answer has the wrong number of vectors".into(),
                )
            })?;
        let mut out = vec![Vec::new(); inputs.len()];
        for (pos, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(pos, |i| i as usize);
            let vector = item["embedding"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_f64().map(|f| f as f32))
                        .collect::<Option<Vec<f32>>>()
                })
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    BackendError::Failed(
                        "the upstream sent an embedding that is not a list of numbers".into(),
                    )
                })?;
            match out.get_mut(index) {
                Some(slot) if slot.is_empty() => *slot = vector,
                _ => {
                    return Err(BackendError::Failed(
                        "the upstream embeddings answer has bad indexes".into(),
                    ))
                }
            }
        }
        Ok((out, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("127.0.0.1", 8000, "")
        );
        let u = UpstreamUrl::parse("http://localhost/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("localhost", 80, "/api")
        );
        let u = UpstreamUrl::parse("http://[::1]:9").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in [
            "https://x",
            "x:1",
            "http://",
            "http://:8",
            "http://a:b",
            "http://u@h",
            "http://h/?q",
            "http://h:70000",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
