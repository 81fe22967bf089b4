//! A local OpenAI-compatible endpoint over a [`Client`]: programs that
//! speak the OpenAI API talk to `127.0.0.1`, and every request goes sealed
//! to a verified enclave, with its answer and receipt checked.
//!
//! Owns the translation between OpenAI's JSON (chat completions, streamed
//! as server-sent events, embeddings, models) and the SDK, and the mapping
//! of SDK errors to OpenAI-style errors
//! (`{"error": {"message", "type", "param", "code"}}`): `400` bad request, `404`
//! unknown model, `429` rate limited by the provider, `502` the provider
//! or the response failed, `503` the provider's evidence does not verify
//! (the message lists every rejection). Verification and re-verification
//! are the [`Client`]'s: each request first calls
//! [`Client::ensure_verified`].
//!
//! Only its owner may use it. Before anything else, and before a body is
//! read, sealed or sent, every request (every path and method) must
//!
//! 1. name this machine in its `Host` header: a loopback address,
//!    `localhost`, or a name in [`ServeOptions::allowed_hosts`]; else
//!    `421` (`misdirected_request`). This stops DNS rebinding: a page on
//!    another site that resolves its name to `127.0.0.1` still sends its
//!    own name;
//! 2. carry the API key as `Authorization: Bearer <key>` (what the
//!    official OpenAI clients send as their `api_key`), compared in
//!    constant time; else `401` (`missing_api_key`, `invalid_api_key`),
//!    with `WWW-Authenticate: Bearer`. A browser sends no such header on
//!    its own, and a CORS preflight (`OPTIONS`) never carries it;
//! 3. if it is a `POST`, say `Content-Type: application/json`; else `415`
//!    (`unsupported_media_type`). A cross-site form or `text/plain` fetch
//!    (a "simple" request, which a browser sends without a preflight)
//!    cannot say so.
//!
//! The endpoint never sends `Access-Control-*` headers: no browser page of
//! another origin is ever allowed to read an answer.
//!
//! Chat requests honour OpenAI's sampling fields (`temperature`, `top_p`,
//! `seed`, `stop`, `presence_penalty`, `frequency_penalty`, `logit_bias`,
//! `logprobs`, `top_logprobs`; see `openai_sampling.rs`) with OpenAI's
//! defaults when absent (temperature 1, so answers vary unless the request
//! says `temperature: 0` or gives a `seed`); they travel sealed to the
//! enclave. A bad value is `400` with `param` naming the field.
//!
//! Every answer carries a `"cocoon"` object: the signed receipt (base64),
//! the request id and evidence digest (hex) and the platform. Token counts
//! in `usage` come from the verified receipt.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use cocoon_protocol::local_auth::{AllowedHosts, BearerToken};
use cocoon_protocol::message::{ChatMessage, FinishReason, Role};
use cocoon_protocol::sampling::{Sampling, SamplingError, TokenLogprob};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{unix_now, Client, ClientError};
use crate::network::{NetworkClient, NetworkError};
use crate::openai_sampling::{logprobs_json, SamplingFields};
use crate::provider::AttestedEnclave;
use crate::response::{Completed, ResponsePart, ResponseStream};

/// Settings of the endpoint; start from [`ServeOptions::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Completion-token limit when a request names none (default 256).
    pub default_max_tokens: u32,
    /// The key every request must carry as `Authorization: Bearer <key>`.
    pub api_key: BearerToken,
    /// The `Host` header values served (default: loopback addresses and
    /// `localhost`); any other is refused with `421`.
    pub allowed_hosts: AllowedHosts,
}

impl ServeOptions {
    /// Defaults, with this API key.
    pub fn new(api_key: BearerToken) -> ServeOptions {
        ServeOptions {
            default_max_tokens: 256,
            api_key,
            allowed_hosts: AllowedHosts::loopback(),
        }
    }
}

/// What the endpoint sends requests through: one provider, or the
/// network (routed, with failover).
#[derive(Debug, Clone)]
pub enum Backend {
    /// One provider.
    Provider(Client),
    /// Every verified provider of the network.
    Network(NetworkClient),
}

impl From<Client> for Backend {
    fn from(c: Client) -> Backend {
        Backend::Provider(c)
    }
}

impl From<NetworkClient> for Backend {
    fn from(c: NetworkClient) -> Backend {
        Backend::Network(c)
    }
}

impl Backend {
    /// The verified enclaves to list in `/v1/models`.
    async fn enclaves(&self) -> Result<Vec<AttestedEnclave>, ApiErr> {
        match self {
            Backend::Provider(c) => Ok(c.ensure_verified().await?.enclaves().to_vec()),
            Backend::Network(n) => Ok(n
                .providers()
                .providers
                .iter()
                .flat_map(|p| p.verified.enclaves().iter().cloned())
                .collect()),
        }
    }

    async fn chat(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
        sampling: Sampling,
    ) -> Result<ResponseStream, ApiErr> {
        match self {
            Backend::Provider(c) => Ok(c.chat_with(model, messages, max_tokens, sampling).await?),
            Backend::Network(n) => Ok(n
                .chat_with(model, messages, max_tokens, sampling)
                .await?
                .value),
        }
    }

    async fn embeddings(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<crate::EmbeddingsResult, ApiErr> {
        match self {
            Backend::Provider(c) => Ok(c.embeddings(model, inputs).await?),
            Backend::Network(n) => Ok(n.embeddings(model, inputs).await?.value),
        }
    }
}

struct AppState {
    backend: Backend,
    options: ServeOptions,
}

/// The endpoint's routes: `GET /v1/models`, `POST /v1/chat/completions`,
/// `POST /v1/embeddings`, every one (and the fallback) behind the checks in
/// the module documentation.
pub fn router(backend: impl Into<Backend>, options: ServeOptions) -> Router {
    let state = Arc::new(AppState {
        backend: backend.into(),
        options,
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            owner_only,
        ))
        .with_state(state)
}

/// The checks every request passes before a handler (and so before its
/// body is read): `Host`, then the API key, then the content type.
async fn owner_only(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match refusal(&app.options, req.method(), req.headers()) {
        Some(e) => {
            tracing::warn!(
                method = %req.method(),
                path = req.uri().path(),
                status = e.status.as_u16(),
                "refused: {}",
                e.code
            );
            e.into_response()
        }
        None => next.run(req).await,
    }
}

fn refusal(options: &ServeOptions, method: &Method, headers: &HeaderMap) -> Option<ApiErr> {
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if !options.allowed_hosts.permits(host) {
        return Some(ApiErr {
            status: StatusCode::MISDIRECTED_REQUEST,
            kind: "invalid_request_error",
            code: "misdirected_request",
            message: "the Host header does not name this endpoint: use http://127.0.0.1:<port>, http://localhost:<port> or http://[::1]:<port> (other names: cocoon-client serve --allow-host NAME)".into(),
            retry_after: None,
        });
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !options.api_key.authorizes(authorization) {
        let (code, what) = match authorization {
            None => ("missing_api_key", "no API key was sent"),
            Some(_) => ("invalid_api_key", "the API key is not this endpoint's"),
        };
        return Some(ApiErr {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code,
            message: format!("{what}: send the key `cocoon-client serve` keeps in its API key file (it prints where at start) as `Authorization: Bearer <key>`, the api_key of an OpenAI client"),
            retry_after: None,
        });
    }
    if method == Method::POST && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Some(ApiErr {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: "invalid_request_error",
            code: "unsupported_media_type",
            message: "a POST body must be sent with Content-Type: application/json".into(),
            retry_after: None,
        });
    }
    None
}

/// `application/json`, any case, parameters (`; charset=utf-8`) allowed.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Serve on `listener` until `shutdown` completes, then let requests in
/// flight finish. The caller verifies the provider first (the CLI prints
/// `ready` only after that).
pub async fn run(
    listener: tokio::net::TcpListener,
    client: impl Into<Backend>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Server-sent events are small writes: send them at once (no Nagle).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(client, options))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An OpenAI-style error.
struct ApiErr {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiErr {
    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiErr {
        ApiErr {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

impl From<ClientError> for ApiErr {
    fn from(e: ClientError) -> ApiErr {
        let message = e.to_string();
        let (status, kind, code) = match &e {
            ClientError::Verification(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "attestation_failed",
            ),
            ClientError::EvidenceUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_not_verified",
                "evidence_unavailable",
            ),
            ClientError::ModelNotServed { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            ClientError::InvalidRequest(_) | ClientError::Seal(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            ClientError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limited",
            ),
            ClientError::Unreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "provider_unreachable",
            ),
            ClientError::Response(_) => (
                StatusCode::BAD_GATEWAY,
                "provider_error",
                "response_verification_failed",
            ),
            ClientError::EnclaveFailed { .. } => {
                (StatusCode::BAD_GATEWAY, "provider_error", "enclave_error")
            }
            _ => (StatusCode::BAD_GATEWAY, "provider_error", "provider_error"),
        };
        let retry_after = match &e {
            ClientError::RateLimited { retry_after, .. } => retry_after.map(|d| d.as_secs()),
            _ => None,
        };
        ApiErr {
            status,
            kind,
            code,
            message,
            retry_after,
        }
    }
}

impl From<NetworkError> for ApiErr {
    fn from(e: NetworkError) -> ApiErr {
        let message = e.to_string();
        match e {
            NetworkError::Refused { source, .. } | NetworkError::AnswerFailed { source, .. } => {
                let mut a = ApiErr::from(source);
                a.message = message;
                a
            }
            NetworkError::NoProvider { .. } => ApiErr {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "provider_not_verified",
                code: "no_provider",
                message,
                retry_after: None,
            },
            NetworkError::AllFailed { .. } => ApiErr {
                status: StatusCode::BAD_GATEWAY,
                kind: "provider_error",
                code: "all_providers_failed",
                message,
                retry_after: None,
            },
            NetworkError::Directory(_) => ApiErr {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "provider_not_verified",
                code: "directory_unavailable",
                message,
                retry_after: None,
            },
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn not_found() -> ApiErr {
    ApiErr {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: "unknown_url",
        message: "unknown path; this endpoint serves GET /v1/models, POST /v1/chat/completions and POST /v1/embeddings".into(),
        retry_after: None,
    }
}

async fn models(State(app): State<Arc<AppState>>) -> Result<Response, ApiErr> {
    let enclaves = app.backend.enclaves().await?;
    let mut data: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for e in &enclaves {
        for m in &e.claims().model_digests {
            if seen.contains(&m.name.as_str()) {
                continue;
            }
            seen.push(&m.name);
            data.push(json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "cocoon",
                "cocoon": {
                    "sha256": hex::encode(m.sha256),
                    "platform": e.platform().as_str(),
                    "evidence_digest": hex::encode(e.evidence_digest().as_bytes()),
                    "image_id": e.claims().image_id,
                },
            }));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<u32>,
    // Sampling: read by `openai_sampling`, which names a bad field.
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    seed: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    presence_penalty: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<Value>,
    #[serde(default)]
    logit_bias: Option<Value>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
}

impl ChatRequest {
    /// The sampling fields, moved out.
    fn sampling_fields(&mut self) -> SamplingFields {
        SamplingFields {
            temperature: self.temperature.take(),
            top_p: self.top_p.take(),
            seed: self.seed.take(),
            stop: self.stop.take(),
            presence_penalty: self.presence_penalty.take(),
            frequency_penalty: self.frequency_penalty.take(),
            logit_bias: self.logit_bias.take(),
            logprobs: self.logprobs.take(),
            top_logprobs: self.top_logprobs.take(),
        }
    }
}

/// `400 invalid_request_error` for an out-of-range or mistyped sampling
/// field, with `param` naming it.
fn invalid_sampling(e: SamplingError) -> Response {
    let mut body = ApiErr::bad_request("invalid_value", e.to_string()).body();
    body["error"]["param"] = Value::String(e.param.into());
    json_response(StatusCode::BAD_REQUEST, &body)
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiErr> {
    serde_json::from_slice(body)
        .map_err(|e| ApiErr::bad_request("invalid_json", format!("invalid request body: {e}")))
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiErr> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                // OpenAI's newer name for system instructions.
                "developer" => Role::System,
                r => Role::from_name(r).ok_or_else(|| {
                    ApiErr::bad_request(
                        "invalid_role",
                        format!(
                            "messages[{i}].role {r:?} is not supported (system, developer, user, assistant)"
                        ),
                    )
                })?,
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => s.push_str(&t),
                            (k, _) => {
                                return Err(ApiErr::bad_request(
                                    "unsupported_content",
                                    format!("messages[{i}]: content of type {k:?} is not supported (text only)"),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn finish_name(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Error(_) => "error",
    }
}

fn usage_json(c: &Completed) -> Value {
    json!({
        "prompt_tokens": c.usage.prompt_tokens,
        "completion_tokens": c.usage.completion_tokens,
        "total_tokens": c.usage.total_tokens,
    })
}

/// The `"cocoon"` extension object.
fn cocoon_json(c: &Completed) -> Value {
    json!({
        "receipt": base64::engine::general_purpose::STANDARD.encode(&c.receipt_bytes),
        "request_id": c.request_id.to_string(),
        "evidence_digest": hex::encode(c.evidence_digest.as_bytes()),
        "platform": c.platform.as_str(),
        "confidential": c.platform.is_confidential(),
        "receipt_verified": true,
        "enclave_seq": c.receipt.enclave_seq,
        "charge_nanoton": c.receipt.charge_nanoton().map(|n| n.to_string()),
    })
}

fn enclave_failed(c: &Completed) -> Option<ApiErr> {
    match &c.finish {
        FinishReason::Error(m) => Some(ApiErr {
            status: StatusCode::BAD_GATEWAY,
            kind: "provider_error",
            code: "enclave_error",
            message: format!("the enclave could not serve the request: {m}"),
            retry_after: None,
        }),
        _ => None,
    }
}

async fn chat_completions(
    State(app): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiErr> {
    let mut req: ChatRequest = parse_json(&body)?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiErr::bad_request(
            "unsupported_parameter",
            "only n = 1 is supported",
        ));
    }
    let sampling = match req.sampling_fields().parse() {
        Ok(s) => s,
        Err(e) => return Ok(invalid_sampling(e)),
    };
    let want_logprobs = sampling.logprobs;
    let messages = to_messages(req.messages)?;
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(app.options.default_max_tokens);
    let stream = app
        .backend
        .chat(&req.model, messages, max_tokens, sampling)
        .await?;
    let id = format!("chatcmpl-{}", stream.request_id());
    let created = unix_now().0;
    if req.stream.unwrap_or(false) {
        return Ok(sse_response(stream, id, created, req.model, want_logprobs));
    }
    let (text, logprobs, completed) = stream
        .collect_with_logprobs()
        .await
        .map_err(ClientError::from)?;
    if let Some(e) = enclave_failed(&completed) {
        return Err(e);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": want_logprobs.then(|| logprobs_json(&logprobs)),
                "finish_reason": finish_name(&completed.finish),
            }],
            "usage": usage_json(&completed),
            "cocoon": cocoon_json(&completed),
        }),
    ))
}

enum SsePhase {
    Start,
    Reading,
    Done,
    Finished,
}

struct SseState {
    stream: ResponseStream,
    phase: SsePhase,
    id: String,
    created: u64,
    model: String,
    /// The request asked for logprobs: each chunk carries those received
    /// since the last one.
    want_logprobs: bool,
    logprobs: Vec<TokenLogprob>,
}

impl SseState {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    /// `chunk` plus the logprobs received since the last chunk.
    fn chunk_with_logprobs(&mut self, delta: Value, finish: Option<&str>) -> Value {
        let mut v = self.chunk(delta, finish);
        if self.want_logprobs {
            v["choices"][0]["logprobs"] = logprobs_json(&std::mem::take(&mut self.logprobs));
        }
        v
    }

    fn error_event(&mut self, e: ApiErr) -> Event {
        self.phase = SsePhase::Finished;
        Event::default().event("error").data(e.body().to_string())
    }

    async fn next_event(&mut self) -> Option<Event> {
        match self.phase {
            SsePhase::Start => {
                self.phase = SsePhase::Reading;
                let c = self.chunk(json!({"role": "assistant", "content": ""}), None);
                Some(Event::default().data(c.to_string()))
            }
            SsePhase::Reading => loop {
                match self.stream.next().await {
                    Ok(Some(ResponsePart::Text(t))) => {
                        if t.is_empty() {
                            continue;
                        }
                        let c = self.chunk_with_logprobs(json!({"content": t}), None);
                        return Some(Event::default().data(c.to_string()));
                    }
                    Ok(Some(ResponsePart::Logprobs(l))) => {
                        self.logprobs.push(l);
                        continue;
                    }
                    Ok(Some(ResponsePart::Completed(c))) => {
                        if let Some(e) = enclave_failed(&c) {
                            return Some(self.error_event(e));
                        }
                        self.phase = SsePhase::Done;
                        let mut v =
                            self.chunk_with_logprobs(json!({}), Some(finish_name(&c.finish)));
                        v["usage"] = usage_json(&c);
                        v["cocoon"] = cocoon_json(&c);
                        return Some(Event::default().data(v.to_string()));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        let e =
                            ApiErr::from(ClientError::from(crate::response::ResponseError::Ended));
                        return Some(self.error_event(e));
                    }
                    Err(e) => {
                        tracing::warn!(request = %self.id, "response refused mid-stream: {e}");
                        return Some(self.error_event(ApiErr::from(ClientError::from(e))));
                    }
                }
            },
            SsePhase::Done => {
                self.phase = SsePhase::Finished;
                Some(Event::default().data("[DONE]"))
            }
            SsePhase::Finished => None,
        }
    }
}

fn sse_response(
    stream: ResponseStream,
    id: String,
    created: u64,
    model: String,
    want_logprobs: bool,
) -> Response {
    let state = SseState {
        stream,
        phase: SsePhase::Start,
        id,
        created,
        model,
        want_logprobs,
        logprobs: Vec::new(),
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        s.next_event()
            .await
            .map(|e| (Ok::<Event, std::convert::Infallible>(e), s))
    });
    Sse::new(events).into_response()
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn embeddings(State(app): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiErr> {
    let req: EmbeddingsRequest = parse_json(&body)?;
    let inputs = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, ()>>()
            .map_err(|()| {
                ApiErr::bad_request(
                    "invalid_input",
                    "input must be a string or an array of strings (token arrays are not supported)",
                )
            })?,
        _ => {
            return Err(ApiErr::bad_request(
                "invalid_input",
                "input must be a string or an array of strings",
            ))
        }
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiErr::bad_request(
                "invalid_encoding_format",
                format!("encoding_format {other:?} is not supported (float, base64)"),
            ))
        }
    };
    let result = app.backend.embeddings(&req.model, inputs).await?;
    let data: Vec<Value> = result
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let c = &result.completed;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": c.usage.prompt_tokens, "total_tokens": c.usage.total_tokens},
            "cocoon": cocoon_json(c),
        }),
    ))
}
