//! What travels *inside* the encryption: the request body a client seals
//! and the events the enclave streams back.
//!
//! Owns the plaintext formats only. Sealing is [`crate::seal`], chunking and
//! the response AEAD are [`crate::stream`]; the host never sees these bytes.
//! The model name, the completion-token limit and the paying account are
//! not repeated here: they are in the billing metadata
//! ([`crate::seal::BillingMeta`]), which the AEAD authenticates, so the
//! enclave takes them from there and there is one place they live.
//!
//! # Request body (canonical CBOR)
//!
//! ```text
//! {"kind": "chat", "messages": [{"role": "system"|"user"|"assistant", "content": text}, ...],
//!  "sampling": {...}}     only when not greedy: crate::sampling::Sampling
//! {"kind": "embeddings", "inputs": [text, ...]}
//! ```
//!
//! # Response events
//!
//! Every response chunk's data is exactly one [`ResponseEvent`] in
//! canonical CBOR, a map with one key:
//!
//! ```text
//! {"text": text}                                   a piece of the completion
//! {"logprobs": {"token": bytes, "logprob": int,    one generated token's log-probability
//!               "top": [{"token", "logprob"}, ...]}} (millionths), when the request asked;
//!                                                  sent before the text that holds the token
//! {"embedding": {"index": uint, "vector": bytes}}  one embedding, f32 little-endian
//! {"end": {"finish": "stop"|"length"|"refused"|"failed",
//!          "code": text (only with "refused"),
//!          "error": text (only with "refused" or "failed"),
//!          "receipt": bytes}}                      the signed usage receipt
//! ```
//!
//! `refused` means the enclave declined the request *before running the
//! model*, for a reason the client can fix; its `code` is one of the
//! [`RefusalCode`] names (an unknown code is a decode error, never a guess).
//! `failed` means the provider failed while running it. Both end with a
//! receipt that charges nothing (zero tokens): the receipt, its commit by
//! the host and the final chunk come in the same order for every request,
//! so the host cannot tell a refusal or failure from an answer by the
//! stream's shape, and a client that retries after an error is never
//! billed twice for the same question.
//!
//! `end` is in the stream's final chunk and nowhere else, and the final
//! chunk carries nothing but `end`: [`ResponseEvent::decode`] takes the
//! chunk's `last` flag and refuses either kind of mismatch, so a client
//! that reaches the end of a stream always holds the enclave's receipt.

use ciborium::Value;
use cocoon_attestation::cbor::{self, CborError, MapReader};

use crate::receipt::MAX_RECEIPT;
use crate::sampling::{Sampling, TokenLogprob};
use crate::seal::MAX_REQUEST_PLAINTEXT;
use crate::stream::MAX_CHUNK_DATA;

/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 256;
/// Most inputs in one embeddings request.
pub const MAX_EMBEDDING_INPUTS: usize = 256;
/// Most dimensions of one embedding vector.
pub const MAX_EMBEDDING_DIM: usize = 16_384;
/// Most bytes of an error message in an `end` event.
pub const MAX_ERROR_TEXT: usize = 1024;

/// `text` cut to at most [`MAX_ERROR_TEXT`] bytes at a character boundary:
/// the bound on every reason in an `Error` frame or an error finish.
pub fn bounded_reason(text: &str) -> &str {
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let mut cut = MAX_ERROR_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).unwrap_or_default()
}

/// Why bytes are not a valid request body or response event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not the CBOR structure this module defines.
    #[error("message: {0}")]
    Cbor(#[from] CborError),
    /// Well-formed, but breaks a rule of the format.
    #[error("message: {0}")]
    Invalid(String),
    /// Not in canonical encoding.
    #[error("message: {0} is not in canonical encoding")]
    NotCanonical(&'static str),
}

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// The wire name (as in OpenAI's API).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// The role with this wire name.
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::System, Role::User, Role::Assistant]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// The sealed body of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InferenceRequest {
    /// A chat completion.
    Chat {
        /// The conversation so far.
        messages: Vec<ChatMessage>,
        /// How tokens are picked ([`Sampling::greedy`] for argmax).
        sampling: Sampling,
    },
    /// Embeddings of each input.
    Embeddings {
        /// The texts to embed.
        inputs: Vec<String>,
    },
}

impl InferenceRequest {
    /// Canonical CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&self.to_value())
    }

    fn to_value(&self) -> Value {
        match self {
            InferenceRequest::Chat { messages, sampling } => {
                let mut m = vec![
                    ("kind", Value::Text("chat".into())),
                    (
                        "messages",
                        Value::Array(
                            messages
                                .iter()
                                .map(|m| {
                                    cbor::map(vec![
                                        ("role", Value::Text(m.role.as_str().into())),
                                        ("content", Value::Text(m.content.clone())),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ];
                if *sampling != Sampling::greedy() {
                    m.push(("sampling", sampling.to_value()));
                }
                cbor::map(m)
            }
            InferenceRequest::Embeddings { inputs } => cbor::map(vec![
                ("kind", Value::Text("embeddings".into())),
                (
                    "inputs",
                    Value::Array(inputs.iter().cloned().map(Value::Text).collect()),
                ),
            ]),
        }
    }

    /// Decode strictly: unknown kinds or keys, empty or oversized lists and
    /// non-canonical encodings are errors.
    pub fn from_cbor(bytes: &[u8]) -> Result<InferenceRequest, MessageError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_REQUEST_PLAINTEXT)?, "request")?;
        let kind = m.text("kind")?;
        let req = match kind.as_str() {
            "chat" => {
                let items = array(m.take("messages")?, "request.messages", MAX_MESSAGES)?;
                let mut messages = Vec::with_capacity(items.len());
                for item in items {
                    let mut mm = MapReader::new(item, "request.messages[]")?;
                    let role = mm.text("role")?;
                    let role = Role::from_name(&role).ok_or_else(|| {
                        MessageError::Invalid(format!("unknown chat role {role:?}"))
                    })?;
                    let content = mm.text("content")?;
                    mm.finish()?;
                    messages.push(ChatMessage { role, content });
                }
                let sampling = match m.take_opt("sampling") {
                    Some(v) => Sampling::from_value(v)?,
                    None => Sampling::greedy(),
                };
                InferenceRequest::Chat { messages, sampling }
            }
            "embeddings" => {
                let items = array(m.take("inputs")?, "request.inputs", MAX_EMBEDDING_INPUTS)?;
                let inputs = items
                    .into_iter()
                    .map(|v| match v {
                        Value::Text(t) => Ok(t),
                        _ => Err(MessageError::Invalid(
                            "request.inputs: every input must be text".into(),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                InferenceRequest::Embeddings { inputs }
            }
            other => {
                return Err(MessageError::Invalid(format!(
                    "unknown request kind {other:?} (expected \"chat\" or \"embeddings\")"
                )))
            }
        };
        m.finish()?;
        if req.to_cbor() != bytes {
            return Err(MessageError::NotCanonical("request"));
        }
        Ok(req)
    }
}

/// The bounded `error` text of a refused or failed `end`.
fn error_text(e: &mut MapReader) -> Result<String, MessageError> {
    let text = e.text("error")?;
    if text.len() > MAX_ERROR_TEXT {
        return Err(MessageError::Invalid(format!(
            "event.end.error: {} bytes, more than {MAX_ERROR_TEXT}",
            text.len()
        )));
    }
    Ok(text)
}

fn array(v: Value, what: &str, max: usize) -> Result<Vec<Value>, MessageError> {
    let Value::Array(items) = v else {
        return Err(MessageError::Invalid(format!("{what}: expected an array")));
    };
    if items.is_empty() {
        return Err(MessageError::Invalid(format!("{what}: must not be empty")));
    }
    if items.len() > max {
        return Err(MessageError::Invalid(format!(
            "{what}: {} entries, more than the limit of {max}",
            items.len()
        )));
    }
    Ok(items)
}

/// Why the enclave refused a request before running the model: a problem
/// with the request that the client can fix (OpenAI answers these with a
/// 4xx status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The input is over the model's context (or input) limit.
    ContextLengthExceeded,
    /// The model is not served by this enclave.
    ModelNotFound,
    /// The model cannot do this operation (a chat model asked for
    /// embeddings, or the reverse).
    ModelKindMismatch,
    /// The completion-token limit is not usable (zero).
    InvalidMaxTokens,
    /// The request is otherwise not one this enclave can run.
    InvalidRequest,
}

impl RefusalCode {
    /// Every code, for tables and tests.
    pub const ALL: [RefusalCode; 5] = [
        RefusalCode::ContextLengthExceeded,
        RefusalCode::ModelNotFound,
        RefusalCode::ModelKindMismatch,
        RefusalCode::InvalidMaxTokens,
        RefusalCode::InvalidRequest,
    ];

    /// The wire name (also the OpenAI-style error code).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::ContextLengthExceeded => "context_length_exceeded",
            RefusalCode::ModelNotFound => "model_not_found",
            RefusalCode::ModelKindMismatch => "model_kind_mismatch",
            RefusalCode::InvalidMaxTokens => "invalid_max_tokens",
            RefusalCode::InvalidRequest => "invalid_request",
        }
    }

    /// The code with this wire name.
    pub fn from_name(name: &str) -> Option<RefusalCode> {
        RefusalCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a response ended.
///
/// A [`Refused`](FinishReason::Refused) or [`Failed`](FinishReason::Failed)
/// response carries a receipt that charges nothing; see the module
/// documentation for why it still carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// The model finished on its own.
    Stop,
    /// The completion reached the `max_tokens` the client paid for.
    Length,
    /// The enclave refused the request before running the model; the text
    /// says why and never quotes the request.
    Refused {
        /// What is wrong with the request.
        code: RefusalCode,
        /// A sentence a user can act on.
        message: String,
    },
    /// The provider failed while serving the request (backend error,
    /// device lost); any text sent before it is incomplete. The text never
    /// quotes the request.
    Failed(String),
}

impl FinishReason {
    /// Whether the response ended without an answer (refused or failed).
    pub fn is_error(&self) -> bool {
        matches!(self, FinishReason::Refused { .. } | FinishReason::Failed(_))
    }

    /// The error text of a refused or failed response.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            FinishReason::Refused { message, .. } | FinishReason::Failed(message) => Some(message),
            _ => None,
        }
    }

    /// A short fixed name: `stop`, `length`, `refused` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Refused { .. } => "refused",
            FinishReason::Failed(_) => "failed",
        }
    }
}

/// One event of a response stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResponseEvent {
    /// A piece of the completion text.
    Text(String),
    /// The log-probability of the next generated token (only when the
    /// request asked for logprobs), sent before the text that holds it.
    Logprobs(TokenLogprob),
    /// The embedding of input number `index`.
    Embedding {
        /// Which input (0-based).
        index: u32,
        /// The vector.
        vector: Vec<f32>,
    },
    /// The end of the response, with the enclave's signed usage receipt
    /// (COSE_Sign1, [`crate::receipt`]).
    End {
        /// Why the response ended.
        finish: FinishReason,
        /// The signed receipt.
        receipt: Vec<u8>,
    },
}

impl ResponseEvent {
    /// Canonical CBOR (one chunk's data).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`to_cbor`](ResponseEvent::to_cbor) appended to what `out` holds (a
    /// frame's and a chunk's header room, for sealing where it lies).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let v = match self {
            ResponseEvent::Text(t) => cbor::map(vec![("text", Value::Text(t.clone()))]),
            ResponseEvent::Logprobs(l) => cbor::map(vec![("logprobs", l.to_value())]),
            ResponseEvent::Embedding { index, vector } => {
                let mut bytes = Vec::with_capacity(vector.len() * 4);
                for x in vector {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                cbor::map(vec![(
                    "embedding",
                    cbor::map(vec![
                        ("index", Value::Integer((*index).into())),
                        ("vector", Value::Bytes(bytes)),
                    ]),
                )])
            }
            ResponseEvent::End { finish, receipt } => {
                let mut end = vec![];
                end.push(("finish", Value::Text(finish.as_str().into())));
                match finish {
                    FinishReason::Stop | FinishReason::Length => {}
                    FinishReason::Refused { code, message } => {
                        end.push(("code", Value::Text(code.as_str().into())));
                        end.push(("error", Value::Text(message.clone())));
                    }
                    FinishReason::Failed(e) => end.push(("error", Value::Text(e.clone()))),
                }
                end.push(("receipt", Value::Bytes(receipt.clone())));
                cbor::map(vec![("end", cbor::map(end))])
            }
        };
        cbor::encode_into(&v, out);
    }

    /// Whether this event may only appear in a stream's final chunk.
    pub fn is_end(&self) -> bool {
        matches!(self, ResponseEvent::End { .. })
    }

    /// Decode one chunk's data. `last` is the chunk's final flag: `end` must
    /// be in the final chunk and only there.
    pub fn decode(data: &[u8], last: bool) -> Result<ResponseEvent, MessageError> {
        let mut m = MapReader::new(cbor::decode(data, MAX_CHUNK_DATA)?, "event")?;
        let ev = if let Some(v) = m.take_opt("text") {
            let Value::Text(t) = v else {
                return Err(MessageError::Invalid("event.text: expected text".into()));
            };
            ResponseEvent::Text(t)
        } else if let Some(v) = m.take_opt("logprobs") {
            ResponseEvent::Logprobs(TokenLogprob::from_value(v)?)
        } else if let Some(v) = m.take_opt("embedding") {
            let mut e = MapReader::new(v, "event.embedding")?;
            let index = u32::try_from(e.u64("index")?).map_err(|_| {
                MessageError::Invalid("event.embedding.index: does not fit in 32 bits".into())
            })?;
            let bytes = e.bytes("vector")?;
            e.finish()?;
            if bytes.len() % 4 != 0 || bytes.len() / 4 > MAX_EMBEDDING_DIM {
                return Err(MessageError::Invalid(format!(
                    "event.embedding.vector: {} bytes is not a whole number of f32 values up to {MAX_EMBEDDING_DIM}",
                    bytes.len()
                )));
            }
            let vector = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            ResponseEvent::Embedding { index, vector }
        } else if let Some(v) = m.take_opt("end") {
            let mut e = MapReader::new(v, "event.end")?;
            let finish = match e.text("finish")?.as_str() {
                "stop" => FinishReason::Stop,
                "length" => FinishReason::Length,
                "refused" => {
                    let code = e.text("code")?;
                    let code = RefusalCode::from_name(&code).ok_or_else(|| {
                        MessageError::Invalid(format!(
                            "event.end.code: unknown refusal code {:?}",
                            bounded_reason(&code)
                        ))
                    })?;
                    let message = error_text(&mut e)?;
                    FinishReason::Refused { code, message }
                }
                "failed" => FinishReason::Failed(error_text(&mut e)?),
                other => {
                    return Err(MessageError::Invalid(format!(
                        "event.end.finish: unknown reason {other:?}"
                    )))
                }
            };
            let receipt = e.bytes("receipt")?;
            e.finish()?;
            if receipt.len() > MAX_RECEIPT {
                return Err(MessageError::Invalid(format!(
                    "event.end.receipt: {} bytes, more than {MAX_RECEIPT}",
                    receipt.len()
                )));
            }
            ResponseEvent::End { finish, receipt }
        } else {
            return Err(MessageError::Invalid(
                "event: expected one of \"text\", \"logprobs\", \"embedding\", \"end\"".into(),
            ));
        };
        m.finish()?;
        if ev.to_cbor() != data {
            return Err(MessageError::NotCanonical("event"));
        }
        match (ev.is_end(), last) {
            (true, false) => Err(MessageError::Invalid(
                "an end event in a chunk that is not the stream's last".into(),
            )),
            (false, true) => Err(MessageError::Invalid(
                "the stream's last chunk does not carry the end event and receipt".into(),
            )),
            _ => Ok(ev),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_are_bounded() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let b = bounded_reason(&long);
        assert!(b.len() <= MAX_ERROR_TEXT);
        assert_eq!(b.len(), MAX_ERROR_TEXT);
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn requests_round_trip_and_refuse_cuts() {
        for req in [
            InferenceRequest::Chat {
                messages: vec![
                    ChatMessage {
                        role: Role::System,
                        content: "be brief".into(),
                    },
                    ChatMessage {
                        role: Role::User,
                        content: "hello".into(),
                    },
                ],
                sampling: Sampling::greedy(),
            },
            InferenceRequest::Chat {
                messages: vec![ChatMessage {
                    role: Role::User,
                    content: "hello".into(),
                }],
                sampling: Sampling {
                    temperature_milli: 700,
                    top_p_milli: 900,
                    seed: Some(7),
                    stop: vec!["END".into()],
                    presence_penalty_milli: -1,
                    frequency_penalty_milli: 2000,
                    logit_bias: [(0, -100_000), (9, 1)].into_iter().collect(),
                    logprobs: true,
                    top_logprobs: 20,
                },
            },
            InferenceRequest::Embeddings {
                inputs: vec!["a".into(), "b c".into()],
            },
        ] {
            let b = req.to_cbor();
            assert_eq!(InferenceRequest::from_cbor(&b).unwrap(), req);
            for cut in 0..b.len() {
                assert!(InferenceRequest::from_cbor(&b[..cut]).is_err());
            }
        }
        let empty = InferenceRequest::Chat {
            messages: vec![],
            sampling: Sampling::greedy(),
        }
        .to_cbor();
        assert!(InferenceRequest::from_cbor(&empty).is_err());
    }

    /// The entries of a CBOR map.
    type Entries = Vec<(Value, Value)>;

    /// A chat request with `sampling` replaced by `f(sampling map)`.
    fn chat_with_sampling(f: impl FnOnce(&mut Entries)) -> Vec<u8> {
        let req = InferenceRequest::Chat {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "x".into(),
            }],
            sampling: Sampling {
                seed: Some(1),
                logit_bias: [(5, 10)].into_iter().collect(),
                ..Sampling::openai_default()
            },
        };
        let Value::Map(mut m) = req.to_value() else {
            unreachable!()
        };
        let Some((_, Value::Map(s))) = m
            .iter_mut()
            .find(|(k, _)| *k == Value::Text("sampling".into()))
        else {
            unreachable!()
        };
        f(s);
        cbor::encode(&Value::Map(m))
    }

    fn set(s: &mut [(Value, Value)], key: &str, v: Value) {
        if let Some(e) = s.iter_mut().find(|(k, _)| *k == Value::Text(key.into())) {
            e.1 = v;
        }
    }

    #[test]
    fn sampling_is_decoded_strictly() {
        assert!(InferenceRequest::from_cbor(&chat_with_sampling(|_| {})).is_ok());
        let refused = |f: &dyn Fn(&mut Entries), want: &str| {
            let e = InferenceRequest::from_cbor(&chat_with_sampling(f))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        };
        refused(
            &|s| set(s, "temperature", Value::Integer(2001.into())),
            "temperature",
        );
        refused(&|s| set(s, "temperature", Value::Float(1.0)), "temperature");
        refused(&|s| set(s, "top_p", Value::Integer(1001.into())), "top_p");
        refused(
            &|s| set(s, "presence_penalty", Value::Integer((-2001).into())),
            "presence_penalty",
        );
        refused(
            &|s| set(s, "frequency_penalty", Value::Integer(40000.into())),
            "frequency_penalty",
        );
        refused(
            &|s| set(s, "top_logprobs", Value::Integer(3.into())),
            "top_logprobs",
        );
        refused(
            &|s| set(s, "stop", Value::Array(vec![Value::Text(String::new())])),
            "stop",
        );
        refused(
            &|s| set(s, "stop", Value::Array(vec![Value::Text("a".into()); 5])),
            "stop",
        );
        let pair = |id: u32, b: i32| {
            Value::Array(vec![Value::Integer(id.into()), Value::Integer(b.into())])
        };
        refused(
            &|s| set(s, "logit_bias", Value::Array(vec![pair(5, 100_001)])),
            "logit_bias",
        );
        refused(
            &|s| set(s, "logit_bias", Value::Array(vec![pair(5, 1), pair(5, 2)])),
            "ascending",
        );
        refused(
            &|s| set(s, "logit_bias", Value::Array(vec![pair(6, 1), pair(5, 2)])),
            "ascending",
        );
        refused(
            &|s| s.push((Value::Text("n".into()), Value::Integer(1.into()))),
            "unknown key",
        );
        refused(
            &|s| s.retain(|(k, _)| *k != Value::Text("logprobs".into())),
            "missing",
        );
        // Greedy sampling has one encoding: no "sampling" key.
        let greedy_spelled_out = chat_with_sampling(|s| {
            *s = match Sampling::greedy().to_value() {
                Value::Map(m) => m,
                _ => unreachable!(),
            }
        });
        assert_eq!(
            InferenceRequest::from_cbor(&greedy_spelled_out),
            Err(MessageError::NotCanonical("request"))
        );
    }

    #[test]
    fn end_only_in_last_chunk() {
        let end = ResponseEvent::End {
            finish: FinishReason::Refused {
                code: RefusalCode::ModelNotFound,
                message: "unknown model".into(),
            },
            receipt: vec![1, 2, 3],
        };
        let text = ResponseEvent::Text("hi".into());
        let lp = ResponseEvent::Logprobs(TokenLogprob {
            chosen: crate::sampling::TopLogprob {
                token: b"hi".to_vec(),
                logprob: crate::sampling::Logprob::from_f32(-0.25),
            },
            top: vec![crate::sampling::TopLogprob {
                token: vec![0xe2, 0x82],
                logprob: crate::sampling::Logprob::from_f32(-3.5),
            }],
        });
        assert_eq!(ResponseEvent::decode(&lp.to_cbor(), false).unwrap(), lp);
        assert!(ResponseEvent::decode(&lp.to_cbor(), true).is_err());
        let emb = ResponseEvent::Embedding {
            index: 3,
            vector: vec![0.5, -1.25],
        };
        assert_eq!(ResponseEvent::decode(&end.to_cbor(), true).unwrap(), end);
        assert!(ResponseEvent::decode(&end.to_cbor(), false).is_err());
        assert_eq!(ResponseEvent::decode(&text.to_cbor(), false).unwrap(), text);
        assert!(ResponseEvent::decode(&text.to_cbor(), true).is_err());
        assert_eq!(ResponseEvent::decode(&emb.to_cbor(), false).unwrap(), emb);
        for ev in [end, text, emb, lp] {
            let b = ev.to_cbor();
            for cut in 0..b.len() {
                assert!(ResponseEvent::decode(&b[..cut], ev.is_end()).is_err());
            }
        }
    }

    #[test]
    fn every_finish_round_trips_and_unknown_codes_are_refused() {
        let mut finishes = vec![
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::Failed("device lost".into()),
        ];
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::from_name(code.as_str()), Some(code));
            finishes.push(FinishReason::Refused {
                code,
                message: "why".into(),
            });
        }
        for finish in finishes {
            let ev = ResponseEvent::End {
                finish,
                receipt: vec![9],
            };
            assert_eq!(ResponseEvent::decode(&ev.to_cbor(), true).unwrap(), ev);
        }
        let unknown = cbor::encode(&cbor::map(vec![(
            "end",
            cbor::map(vec![
                ("code", Value::Text("too_polite".into())),
                ("error", Value::Text("x".into())),
                ("finish", Value::Text("refused".into())),
                ("receipt", Value::Bytes(vec![9])),
            ]),
        )]));
        let err = ResponseEvent::decode(&unknown, true).unwrap_err();
        assert!(err.to_string().contains("unknown refusal code"), "{err}");
        // The old single "error" reason is gone; a code on a failure or a
        // missing code on a refusal is refused.
        for end in [
            vec![
                ("error", Value::Text("x".into())),
                ("finish", Value::Text("error".into())),
                ("receipt", Value::Bytes(vec![9])),
            ],
            vec![
                ("code", Value::Text("model_not_found".into())),
                ("error", Value::Text("x".into())),
                ("finish", Value::Text("failed".into())),
                ("receipt", Value::Bytes(vec![9])),
            ],
            vec![
                ("error", Value::Text("x".into())),
                ("finish", Value::Text("refused".into())),
                ("receipt", Value::Bytes(vec![9])),
            ],
        ] {
            let b = cbor::encode(&cbor::map(vec![("end", cbor::map(end))]));
            assert!(ResponseEvent::decode(&b, true).is_err());
        }
    }
}
