//! Inference backends: what actually answers a request once the enclave has
//! opened it.
//!
//! Owns the [`InferenceBackend`] trait and the [`DeterministicTestBackend`],
//! which is **not a model**: it answers with a fixed sentence saying so,
//! followed by words picked by SHA-256 of the prompt. The real backends
//! (`torch`: weights loaded from files whose SHA-256 goes into the claims;
//! [`crate::upstream`]) implement the same trait.
//!
//! A backend sees plaintext, so it must never log it; it knows nothing of
//! sealing, frames or receipts (the server does all of that around it).
//! Backends are called from blocking threads (`spawn_blocking`), several at
//! once: a batching backend may queue calls internally and block each caller
//! until its tokens are ready.

use std::ops::ControlFlow;

use cocoon_attestation::bundle::ModelDigest;
use cocoon_protocol::message::{bounded_reason, ChatMessage, FinishReason, RefusalCode};
use cocoon_protocol::sampling::{Sampling, TokenLogprob};
use sha2::{Digest, Sha256};

/// Why a backend could not serve a call. The message ends up (sealed) in the
/// client's response, and the [`kind`](BackendError::kind) in the enclave's
/// logs; neither may quote the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend does not serve this model.
    #[error("model {0:?} is not served by this enclave")]
    UnknownModel(String),
    /// The model exists but cannot do this kind of request.
    #[error("model {model:?} does not support {operation}")]
    Unsupported {
        /// The model asked for.
        model: String,
        /// `"chat"` or `"embeddings"`.
        operation: &'static str,
    },
    /// The input is over the model's limit.
    #[error("input of {tokens} tokens is over the model's limit of {limit} tokens")]
    TooLong {
        /// Tokens in the input.
        tokens: u64,
        /// The model's limit.
        limit: u64,
    },
    /// Inference failed (device error, out of memory, ...). The text must
    /// not contain any of the request or response.
    #[error("inference failed: {0}")]
    Failed(String),
}

impl BackendError {
    /// A short, fixed name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::UnknownModel(_) => "unknown_model",
            BackendError::Unsupported { .. } => "unsupported",
            BackendError::TooLong { .. } => "too_long",
            BackendError::Failed(_) => "failed",
        }
    }
}

impl BackendError {
    /// The response's end for this error: a problem with the request the
    /// client can fix, found before the model ran, is a
    /// [`FinishReason::Refused`] with its code; anything else (or any error
    /// after tokens went out) is a [`FinishReason::Failed`]. Both are
    /// charged nothing.
    pub fn finish(&self, tokens_sent: u64) -> FinishReason {
        let message = bounded_reason(&self.to_string()).to_owned();
        let code = match self {
            _ if tokens_sent > 0 => None,
            BackendError::UnknownModel(_) => Some(RefusalCode::ModelNotFound),
            BackendError::Unsupported { .. } => Some(RefusalCode::ModelKindMismatch),
            BackendError::TooLong { .. } => Some(RefusalCode::ContextLengthExceeded),
            BackendError::Failed(_) => None,
        };
        match code {
            Some(code) => FinishReason::Refused { code, message },
            None => FinishReason::Failed(message),
        }
    }
}

/// Why a chat completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model finished on its own (or generation was stopped by `emit`).
    Stop,
    /// The completion reached `max_tokens`.
    Length,
}

/// What a chat completion consumed and why it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatOutcome {
    /// Tokens of the prompt the model processed.
    pub prompt_tokens: u64,
    /// Of those, the tokens whose key/value cache came from an earlier
    /// request of the same account ([`crate::prefix_cache`]), charged at
    /// the cached price.
    pub cached_tokens: u64,
    /// Completion tokens delivered through `emit` (Continue answers only).
    pub completion_tokens: u64,
    /// Why it ended.
    pub finish: Finish,
}

/// One generated token, as a backend hands it to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated<'a> {
    /// The text this token adds to the answer. It may be empty: a token
    /// that ends inside a UTF-8 character adds its text with a later one.
    pub text: &'a str,
    /// Its log-probability, when the request asked for logprobs and the
    /// backend can tell.
    pub logprob: Option<TokenLogprob>,
}

impl<'a> Generated<'a> {
    /// A token with text only.
    pub fn text(text: &'a str) -> Generated<'a> {
        Generated {
            text,
            logprob: None,
        }
    }
}

/// A model server inside the enclave.
pub trait InferenceBackend: Send + Sync {
    /// The models served, each with the SHA-256 of its weights. They go into
    /// the claims at boot; a request for any other model is refused.
    fn models(&self) -> Vec<ModelDigest>;

    /// Tokens in `text` under `model`'s tokenizer.
    fn count_tokens(&self, model: &str, text: &str) -> Result<u64, BackendError>;

    /// Generate a reply to `messages`, at most `max_tokens` tokens, picking
    /// tokens as `sampling` says (the server applies its stop strings; a
    /// backend may also pass them on).
    ///
    /// `emit` is called once per generated token, in order.
    /// [`ControlFlow::Continue`] means the token was delivered;
    /// [`ControlFlow::Break`] means it was *not* and generation must stop
    /// now (the stream was cancelled or reached its limit). The outcome's
    /// `completion_tokens` counts the delivered tokens.
    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError>;

    /// [`chat`](InferenceBackend::chat) for a request of the account
    /// `scope`: a backend with a prompt prefix cache reuses only that
    /// account's prefixes ([`crate::prefix_cache`]). Backends without one
    /// run the whole prompt.
    fn chat_scoped(
        &self,
        scope: &crate::prefix_cache::Scope,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        let _ = scope;
        self.chat(model, messages, max_tokens, sampling, emit)
    }

    /// One embedding per input, in order, and the prompt tokens processed.
    fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError>;
}

/// A backend for tests, demos and load tests. **NOT A MODEL.**
///
/// * model name [`DeterministicTestBackend::MODEL`], digest SHA-256 of
///   [`DeterministicTestBackend::DESCRIPTOR`];
/// * tokens are whitespace-separated words;
/// * it ignores sampling parameters (the server still applies stop
///   strings);
/// * chat answers [`DeterministicTestBackend::PREAMBLE`] followed by words
///   from a small vocabulary picked by SHA-256 of the prompt, up to the
///   configured reply length, one word per token (every word after the first
///   with a leading space, so the pieces concatenate to the reply);
/// * embeddings are unit vectors of dimension
///   [`DeterministicTestBackend::EMBEDDING_DIM`] made from SHA-256 of each
///   input.
#[derive(Debug, Clone)]
pub struct DeterministicTestBackend {
    reply_tokens: u32,
}

const VOCABULARY: [&str; 32] = [
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "indigo",
    "juniper", "kelp", "lagoon", "meadow", "nimbus", "orchid", "pebble", "quartz", "river",
    "saffron", "tundra", "umber", "valley", "willow", "xenon", "yarrow", "zephyr", "aurora",
    "breeze", "canyon", "dune", "estuary", "forest",
];

impl DeterministicTestBackend {
    /// The one model it serves.
    pub const MODEL: &'static str = "cocoon-deterministic-test";
    /// What the model digest is the SHA-256 of.
    pub const DESCRIPTOR: &'static str = "cocoon-deterministic-test-backend-v1: NOT A MODEL. Replies are a fixed sentence and words picked by SHA-256 of the prompt; embeddings are SHA-256 of the input.";
    /// The sentence every reply starts with.
    pub const PREAMBLE: &'static str =
        "This is the Cocoon deterministic test backend, not a model.";
    /// Dimension of its embeddings.
    pub const EMBEDDING_DIM: usize = 16;

    /// A backend whose chat replies are `reply_tokens` words long (before
    /// `max_tokens` cuts them).
    pub fn new(reply_tokens: u32) -> DeterministicTestBackend {
        DeterministicTestBackend { reply_tokens }
    }

    /// The model digest it publishes.
    pub fn model_digest() -> ModelDigest {
        ModelDigest {
            name: Self::MODEL.into(),
            sha256: Sha256::digest(Self::DESCRIPTOR.as_bytes()).into(),
            version: None,
            tokenizer_sha256: None,
        }
    }

    /// The full reply to `messages` (before `max_tokens`), as the pieces
    /// `chat` emits. Tests compare against it.
    pub fn reply(&self, messages: &[ChatMessage]) -> Vec<String> {
        let mut out = Vec::new();
        self.generate(messages, self.reply_tokens, |w| {
            out.push(w.to_owned());
            ControlFlow::Continue(())
        });
        out
    }

    /// The embedding of one input.
    pub fn embedding(input: &str) -> Vec<f32> {
        let mut h = Sha256::new();
        h.update(b"cocoon-deterministic-test-embedding-v1");
        h.update(input.as_bytes());
        let d: [u8; 32] = h.finalize().into();
        let mut v: Vec<f32> = d
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_be_bytes([c[0], c[1]])))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        } else if let Some(first) = v.first_mut() {
            *first = 1.0;
        }
        v
    }

    fn check_model(model: &str) -> Result<(), BackendError> {
        if model == Self::MODEL {
            Ok(())
        } else {
            Err(BackendError::UnknownModel(model.into()))
        }
    }

    fn words(text: &str) -> u64 {
        text.split_whitespace().count() as u64
    }

    /// Emit up to `limit` words; returns how many were delivered.
    fn generate(
        &self,
        messages: &[ChatMessage],
        limit: u32,
        mut emit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> u64 {
        let mut seed = Sha256::new();
        seed.update(b"cocoon-deterministic-test-prompt-v1");
        for m in messages {
            seed.update(m.role.as_str().as_bytes());
            seed.update([0]);
            seed.update((m.content.len() as u64).to_be_bytes());
            seed.update(m.content.as_bytes());
        }
        let seed: [u8; 32] = seed.finalize().into();
        let mut preamble = Self::PREAMBLE.split_whitespace();
        let mut block = [0u8; 32];
        let mut block_index = None;
        let mut piece = String::new();
        let mut delivered = 0u64;
        for i in 0..u64::from(limit) {
            let word = match preamble.next() {
                Some(w) => w,
                None => {
                    // Word i takes byte i % 32 of SHA-256(seed ‖ i / 32).
                    if block_index != Some(i / 32) {
                        let mut h = Sha256::new();
                        h.update(seed);
                        h.update((i / 32).to_be_bytes());
                        block = h.finalize().into();
                        block_index = Some(i / 32);
                    }
                    let at = usize::from(block[(i % 32) as usize]);
                    VOCABULARY[at % VOCABULARY.len()]
                }
            };
            piece.clear();
            if i > 0 {
                piece.push(' ');
            }
            piece.push_str(word);
            if emit(&piece).is_break() {
                break;
            }
            delivered += 1;
        }
        delivered
    }
}

impl InferenceBackend for DeterministicTestBackend {
    fn models(&self) -> Vec<ModelDigest> {
        vec![Self::model_digest()]
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<u64, BackendError> {
        Self::check_model(model)?;
        Ok(Self::words(text))
    }

    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        _sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        Self::check_model(model)?;
        let prompt_tokens = messages.iter().map(|m| Self::words(&m.content)).sum();
        let limit = self.reply_tokens.min(max_tokens);
        let completion_tokens = self.generate(messages, limit, |w| emit(Generated::text(w)));
        let finish = if completion_tokens == u64::from(limit) && limit < self.reply_tokens {
            Finish::Length
        } else {
            Finish::Stop
        };
        Ok(ChatOutcome {
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens,
            finish,
        })
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        Self::check_model(model)?;
        let tokens = inputs.iter().map(|i| Self::words(i)).sum();
        Ok((inputs.iter().map(|i| Self::embedding(i)).collect(), tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::message::Role;

    fn msgs(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: Role::User,
            content: text.into(),
        }]
    }

    fn run(b: &DeterministicTestBackend, m: &[ChatMessage], max: u32) -> (String, ChatOutcome) {
        let mut s = String::new();
        let o = b
            .chat(
                DeterministicTestBackend::MODEL,
                m,
                max,
                &Sampling::greedy(),
                &mut |p| {
                    s.push_str(p.text);
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        (s, o)
    }

    #[test]
    fn chat_is_deterministic_labelled_and_counted_in_words() {
        let b = DeterministicTestBackend::new(48);
        let (a, oa) = run(&b, &msgs("hello there world"), 1000);
        let (a2, _) = run(&b, &msgs("hello there world"), 1000);
        let (c, _) = run(&b, &msgs("something else"), 1000);
        assert_eq!(a, a2);
        assert_ne!(a, c, "different prompts give different replies");
        assert!(a.starts_with(DeterministicTestBackend::PREAMBLE), "{a}");
        assert_eq!(a.split_whitespace().count(), 48);
        assert_eq!(a, b.reply(&msgs("hello there world")).concat());
        assert_eq!(
            oa,
            ChatOutcome {
                prompt_tokens: 3,
                cached_tokens: 0,
                completion_tokens: 48,
                finish: Finish::Stop
            }
        );
        // The picked words vary (not one word repeated).
        let tail: std::collections::HashSet<&str> = a.split_whitespace().skip(10).collect();
        assert!(tail.len() > 5, "{tail:?}");
    }

    #[test]
    fn max_tokens_cuts_with_length_and_break_stops() {
        let b = DeterministicTestBackend::new(48);
        let (s, o) = run(&b, &msgs("x"), 5);
        assert_eq!(s, "This is the Cocoon deterministic");
        assert_eq!((o.completion_tokens, o.finish), (5, Finish::Length));
        let (_, o) = run(&b, &msgs("x"), 48);
        assert_eq!((o.completion_tokens, o.finish), (48, Finish::Stop));
        let (s, o) = run(&b, &msgs("x"), 0);
        assert_eq!(
            (s.as_str(), o.completion_tokens, o.finish),
            ("", 0, Finish::Length)
        );
        let mut n = 0;
        let o = b
            .chat(
                DeterministicTestBackend::MODEL,
                &msgs("x"),
                100,
                &Sampling::greedy(),
                &mut |_| {
                    n += 1;
                    if n > 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
            .unwrap();
        assert_eq!((n, o.completion_tokens), (4, 3));
        // Long replies are deterministic too, across block boundaries.
        let long = DeterministicTestBackend::new(1000);
        assert_eq!(long.reply(&msgs("y")).len(), 1000);
        assert_eq!(long.reply(&msgs("y"))[..48], b.reply(&msgs("y"))[..]);
    }

    #[test]
    fn embeddings_are_unit_vectors_and_unknown_models_refused() {
        let b = DeterministicTestBackend::new(48);
        let (v, t) = b
            .embed(DeterministicTestBackend::MODEL, &["a b".into(), "c".into()])
            .unwrap();
        assert_eq!(t, 3);
        assert_eq!(v.len(), 2);
        for e in &v {
            assert_eq!(e.len(), DeterministicTestBackend::EMBEDDING_DIM);
            let n: f32 = e.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
        assert_ne!(v[0], v[1]);
        assert_eq!(v[0], DeterministicTestBackend::embedding("a b"));
        assert!(matches!(
            b.embed("gpt", &["a".into()]),
            Err(BackendError::UnknownModel(_))
        ));
        assert!(b.count_tokens("gpt", "a").is_err());
        assert!(b
            .chat("gpt", &msgs("a"), 3, &Sampling::greedy(), &mut |_| {
                ControlFlow::Continue(())
            })
            .is_err());
        assert_eq!(
            b.models(),
            vec![ModelDigest {
                name: DeterministicTestBackend::MODEL.into(),
                sha256: Sha256::digest(DeterministicTestBackend::DESCRIPTOR).into(),
                version: None,
                tokenizer_sha256: None,
            }]
        );
    }
}
