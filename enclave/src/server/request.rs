//! The life of one request on its stream: the billed account's signature,
//! expiry, opening under the digest it names, admission (model, prices,
//! body), the replay memory, the backend, the receipt; every outcome ends
//! the stream through the connection machine ([`StreamCtx`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Instant;

use cocoon_protocol::message::{
    bounded_reason, ChatMessage, FinishReason, InferenceRequest, RefusalCode, ResponseEvent,
    MAX_EMBEDDING_DIM,
};
use cocoon_protocol::mux::Finished;
use cocoon_protocol::receipt::UsageReceipt;
use cocoon_protocol::request::{RequestAuthError, SignedRequest};
use cocoon_protocol::sampling::Sampling;
use cocoon_protocol::seal::{open_request, BillingMeta, LifetimeError};
use cocoon_protocol::stream::ResponseSealer;
use cocoon_protocol::tabs::MAX_PENDING;
use rand_core::OsRng;
use tracing::{debug, error, info, warn};

use super::chat::ChatSink;
use super::connection::StreamCtx;
use super::{lock, unix_now, Enclave};
use crate::backend::Finish;
use crate::replay::Refused;

/// Longest text in one chunk; a longer token text is split.
pub(super) const MAX_TEXT_PIECE: usize = 64 << 10;

impl Enclave {
    pub(super) fn serve_request(&self, s: &StreamCtx, payload: Vec<u8>) {
        if s.is_cancelled() {
            s.close();
            return;
        }
        let size = payload.len();
        // The billed account signed exactly this request: checked before
        // anything is opened, run or signed, so whoever else holds the
        // enclave's public key (the host above all) cannot bill an account.
        let authorized = match SignedRequest::authorize(&payload) {
            Ok(a) => a,
            Err(e) => {
                let error_kind = match e {
                    RequestAuthError::Malformed(_) => "malformed_sealed_request",
                    _ => "account_auth",
                };
                warn!(conn = s.conn_id(), stream = s.id, size, error_kind, error = %e, "request refused");
                return s.fail(&e.to_string());
            }
        };
        drop(payload);
        let request_id = authorized.request_id();
        let now = self.clock.now();
        if let Err(e) = authorized
            .meta()
            .check_lifetime(now, self.config.max_request_lifetime_secs)
        {
            let error_kind = match e {
                LifetimeError::Expired { .. } => "expired",
                _ => "expiry_too_far",
            };
            warn!(conn = s.conn_id(), stream = s.id, %request_id, error_kind, error = %e, "request refused");
            return s.fail(&e.to_string());
        }
        let sealed_to = authorized.evidence();
        if !self.evidence.knows(&sealed_to) {
            warn!(conn = s.conn_id(), stream = s.id, %request_id, error_kind = "unknown_evidence", "request refused");
            return s.fail(&format!(
                "request names evidence {} that this enclave did not issue (or issued too long ago); its current evidence is {}",
                hex::encode(sealed_to.0),
                hex::encode(self.evidence.current().digest.0)
            ));
        }
        let (meta, body, session) = match open_request(
            &self.hpke_sk,
            &sealed_to,
            authorized.sealed(),
        ) {
            Ok(opened) => opened,
            Err(_) => {
                warn!(conn = s.conn_id(), stream = s.id, %request_id, size, error_kind = "open_failed", "request refused");
                return s.fail(&format!(
                    "request was not sealed to this enclave's key under evidence {}",
                    hex::encode(sealed_to.0)
                ));
            }
        };
        drop(authorized);
        let request = match self.admit(&meta, &body) {
            Ok(request) => request,
            Err((error_kind, reason)) => {
                warn!(conn = s.conn_id(), stream = s.id, %request_id, model = %meta.model, error_kind, "request refused");
                return s.fail(&reason);
            }
        };
        drop(body);
        // Only a request that passed every check and will be served enters
        // the memory, and it stays there until it expires: a request is
        // served at most once per boot, and a full memory refuses new work
        // instead of forgetting.
        if let Err(refused) = lock(&self.replay).insert(request_id, meta.expires_at, now) {
            let (error_kind, reason) = match refused {
                Refused::Replayed => (
                    "replay",
                    format!("replayed request {request_id}: this enclave has already served it"),
                ),
                Refused::Full { capacity } => (
                    "replay_memory_full",
                    format!(
                        "this enclave remembers {capacity} unexpired requests, its limit; \
                         it takes new ones as those expire (retry later)"
                    ),
                ),
            };
            warn!(conn = s.conn_id(), stream = s.id, %request_id, error_kind, "request refused");
            return s.fail(&reason);
        }
        let mut sealer = match session.response_sealer(&mut OsRng) {
            Ok(sealer) => sealer,
            Err(_) => {
                error!(conn = s.conn_id(), stream = s.id, %request_id, "response key derivation failed");
                return s.fail("internal error: response key derivation failed");
            }
        };
        let started = Instant::now();
        let usage = match self.infer(s, &meta, request, &mut sealer) {
            Ok(usage) => usage,
            Err(Abort::Cancelled) => {
                info!(conn = s.conn_id(), stream = s.id, %request_id, model = %meta.model, "request cancelled; nothing more sent");
                return s.close();
            }
            Err(Abort::Sealing) => {
                error!(conn = s.conn_id(), stream = s.id, %request_id, "sealing a response chunk failed");
                return s.fail("internal error: sealing the response failed");
            }
        };
        if s.is_cancelled() {
            return s.close();
        }
        let receipt = UsageReceipt {
            request_id,
            model: meta.model.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            // Prompt tokens whose key/value cache came from this account's
            // earlier requests, charged at the cached price.
            cached_tokens: usage.cached_tokens,
            unit_price: meta.unit_price,
            multiplier_milli: meta.multiplier_milli,
            time: unix_now(),
            enclave_seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            client_account: meta.client_account,
        };
        let signed = match self.tabs.signer().sign(&receipt) {
            Ok(signed) => signed,
            Err(e) => {
                error!(conn = s.conn_id(), stream = s.id, %request_id, error = %e, "signing the receipt failed");
                return s.fail("internal error: signing the usage receipt failed");
            }
        };
        let finish_kind = usage.finish.as_str();
        let end = ResponseEvent::End {
            finish: usage.finish,
            receipt: signed.clone(),
        };
        let Ok(last) = sealer.seal_chunk(&end.to_cbor(), true) else {
            error!(conn = s.conn_id(), stream = s.id, %request_id, "sealing the final chunk failed");
            return s.fail("internal error: sealing the response failed");
        };
        // Pending until the host acknowledges it as committed; the receipt
        // goes before the final chunk, and the stream id is free once both
        // are queued (the connection machine does all three at once).
        match s.finish(&receipt, &signed, &last) {
            Ok(Finished::Sent) => {}
            Ok(Finished::SentDroppedOldest) => warn!(
                pending = MAX_PENDING,
                "too many receipts wait for the host's acknowledgement; the oldest will never be charged"
            ),
            Ok(Finished::Cancelled) | Err(_) => {
                debug!(conn = s.conn_id(), stream = s.id, %request_id, "the host connection went away before the end of the response");
                return;
            }
        }
        info!(
            conn = s.conn_id(),
            stream = s.id,
            %request_id,
            model = %receipt.model,
            prompt_tokens = receipt.prompt_tokens,
            completion_tokens = receipt.completion_tokens,
            finish = finish_kind,
            enclave_seq = receipt.enclave_seq,
            chunks = sealer.sealed(),
            ms = started.elapsed().as_millis() as u64,
            "request served"
        );
    }

    /// Every check a request passes before it is served: a model this
    /// enclave serves, exactly its prices, and a body that decodes as a
    /// request it can run. A refusal is `(error kind, reason)`.
    fn admit(
        &self,
        meta: &BillingMeta,
        body: &[u8],
    ) -> Result<InferenceRequest, (&'static str, String)> {
        if !self.prices.models.contains_key(&meta.model) {
            let mut served: Vec<&str> = self.prices.models.keys().map(String::as_str).collect();
            served.sort_unstable();
            return Err((
                "unknown_model",
                format!(
                    "model {:?} is not served by this enclave (it serves {})",
                    meta.model,
                    served.join(", ")
                ),
            ));
        }
        if let Err(e) = self.prices.accept(meta) {
            return Err((
                "price",
                format!("the request's prices are refused by this enclave: {e}"),
            ));
        }
        match InferenceRequest::from_cbor(body) {
            Ok(r @ (InferenceRequest::Chat { .. } | InferenceRequest::Embeddings { .. })) => Ok(r),
            Ok(_) => Err((
                "unsupported_request",
                "this enclave does not support that kind of request".into(),
            )),
            Err(e) => Err((
                "bad_body",
                format!("the request body is not a valid chat or embeddings request: {e}"),
            )),
        }
    }

    /// Run the backend on an admitted request, streaming sealed chunks.
    fn infer(
        &self,
        s: &StreamCtx,
        meta: &BillingMeta,
        request: InferenceRequest,
        sealer: &mut ResponseSealer,
    ) -> Result<Usage, Abort> {
        match request {
            // Refused before the model runs: a limit of zero tokens would
            // process (and charge) the prompt for no answer.
            InferenceRequest::Chat { .. } if meta.max_tokens == 0 => Ok(Usage::refused(
                RefusalCode::InvalidMaxTokens,
                "max_tokens must be at least 1".into(),
            )),
            InferenceRequest::Chat { messages, sampling } => {
                self.chat(s, meta, &messages, &sampling, sealer)
            }
            InferenceRequest::Embeddings { inputs } => self.embed(s, meta, &inputs, sealer),
            _ => Ok(Usage::refused(
                RefusalCode::InvalidRequest,
                "this enclave does not support that kind of request".into(),
            )),
        }
    }

    fn chat(
        &self,
        s: &StreamCtx,
        meta: &BillingMeta,
        messages: &[ChatMessage],
        sampling: &Sampling,
        sealer: &mut ResponseSealer,
    ) -> Result<Usage, Abort> {
        let max = u64::from(meta.max_tokens);
        let mut sink = ChatSink::new(s, sealer, max, &sampling.stop);
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.backend.chat_scoped(
                &meta.client_account,
                &meta.model,
                messages,
                meta.max_tokens,
                sampling,
                &mut |g| sink.token(g),
            )
        }));
        if let Some(a) = sink.abort.take() {
            return Err(a);
        }
        sink.finish()?;
        let (delivered, cut, stopped) = (sink.delivered, sink.cut, sink.stopped);
        let finish = match result {
            Ok(Ok(o)) => {
                let completion = o.completion_tokens.max(delivered);
                let finish = if stopped {
                    FinishReason::Stop
                } else if cut || completion > max || o.finish == Finish::Length {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                return Ok(Usage {
                    prompt_tokens: o.prompt_tokens,
                    cached_tokens: o.cached_tokens.min(o.prompt_tokens),
                    completion_tokens: completion.min(max),
                    finish,
                });
            }
            Ok(Err(e)) => {
                warn!(conn = s.conn_id(), stream = s.id, model = %meta.model, error_kind = e.kind(), delivered, "chat failed");
                e.finish(delivered)
            }
            Err(_) => {
                error!(conn = s.conn_id(), stream = s.id, model = %meta.model, delivered, "the backend panicked");
                FinishReason::Failed("inference failed: internal error in the backend".to_owned())
            }
        };
        // Whatever came out before the failure is not charged: the answer
        // is incomplete, and the client's retry must not pay twice.
        Ok(Usage::unpaid(finish))
    }

    fn embed(
        &self,
        s: &StreamCtx,
        meta: &BillingMeta,
        inputs: &[String],
        sealer: &mut ResponseSealer,
    ) -> Result<Usage, Abort> {
        let result = catch_unwind(AssertUnwindSafe(|| self.backend.embed(&meta.model, inputs)));
        let (vectors, prompt_tokens) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(conn = s.conn_id(), stream = s.id, model = %meta.model, error_kind = e.kind(), "embeddings failed");
                return Ok(Usage::unpaid(e.finish(0)));
            }
            Err(_) => {
                error!(conn = s.conn_id(), stream = s.id, model = %meta.model, "the backend panicked");
                return Ok(Usage::failed(
                    "inference failed: internal error in the backend".into(),
                ));
            }
        };
        if vectors.len() != inputs.len() || vectors.iter().any(|v| v.len() > MAX_EMBEDDING_DIM) {
            error!(conn = s.conn_id(), stream = s.id, model = %meta.model, "the backend returned malformed embeddings");
            return Ok(Usage::failed(
                "inference failed: the backend returned malformed embeddings".into(),
            ));
        }
        for (index, vector) in vectors.into_iter().enumerate() {
            if s.is_cancelled() {
                return Err(Abort::Cancelled);
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            s.send_event(sealer, &ResponseEvent::Embedding { index, vector })?;
        }
        Ok(Usage {
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
            finish: FinishReason::Stop,
        })
    }
}

/// Pieces of at most `max` bytes (≥ 4), cut at character boundaries.
pub(super) fn split_text(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

/// What a served request consumed and how it ended.
struct Usage {
    prompt_tokens: u64,
    /// Of the prompt tokens, those served from the account's prefix cache.
    cached_tokens: u64,
    completion_tokens: u64,
    finish: FinishReason,
}

impl Usage {
    /// A refused or failed request: charged nothing, whatever was sent. Its
    /// receipt still goes through the same receipt, commit, final chunk
    /// order as an answer's, so the host cannot tell them apart by shape,
    /// and a client that retries after an error pays for one answer only.
    fn unpaid(finish: FinishReason) -> Usage {
        Usage {
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            finish,
        }
    }

    /// Refused before the model ran.
    fn refused(code: RefusalCode, reason: String) -> Usage {
        Usage::unpaid(FinishReason::Refused {
            code,
            message: bounded_reason(&reason).to_owned(),
        })
    }

    /// Failed while running.
    fn failed(reason: String) -> Usage {
        Usage::unpaid(FinishReason::Failed(bounded_reason(&reason).to_owned()))
    }
}

/// Why a request stopped without an `End`.
pub(super) enum Abort {
    /// The host cancelled the stream or went away.
    Cancelled,
    /// A chunk could not be sealed (never expected).
    Sealing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_split_at_char_boundaries() {
        assert_eq!(split_text("", 4), Vec::<&str>::new());
        assert_eq!(split_text("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        let s = "ééééé"; // 2 bytes each
        let parts = split_text(s, 5);
        assert_eq!(parts, vec!["éé", "éé", "é"]);
        assert_eq!(parts.concat(), s);
    }
}
