//! One request's way through an enclave and back: the frames of its stream,
//! the usage receipt, and what the client is sent.
//!
//! Owns the receipt checks ([`check_receipt`]: signature under the
//! enclave's attested key, then request id, account, model and token limit
//! against the request's billing metadata) and the pump task that moves a
//! stream's chunks to the client as chunk records. The rule it enforces:
//! **the final chunk goes out only after the enclave's receipt for this
//! request verified and was durably committed to the ledger.** A final
//! chunk without a committed receipt is withheld and the body ends there
//! (the client's `ResponseOpener` reports a truncated stream), which is
//! logged and counted. Chunk bytes are forwarded unchanged and never
//! inspected beyond the clear flags byte.
//!
//! The pump takes what the enclave connection's reader already delivered
//! without waiting (no timer per frame) and hands the chunk records it
//! gathered to the HTTP body as one piece before it waits again; the final
//! chunk's record ends the body, so the last chunk and the end of the
//! chunked body leave in one write. Each request's stages are timed
//! ([`crate::timings`]).
//!
//! Before anything was forwarded, a failure becomes an HTTP status instead
//! (`502`, `504`, or `409` when the enclave's evidence changed under the
//! request, see [`crate::broker::Broker::evidence_still_current`]). When
//! the client goes away the enclave is sent `Cancel`, and the pump waits
//! `cancel_grace` for a receipt of the work already done, which is still
//! billed.

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use cocoon_protocol::account::AccountId;
use cocoon_protocol::api::encode_chunk_record;
use cocoon_protocol::mux::{Broken, StreamEvent};
use cocoon_protocol::receipt::{ReceiptError, ReceiptMismatch, ReceiptVerifier, UsageReceipt};
use cocoon_protocol::RequestId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::broker::{sanitize_reason, until_true, EnclaveStream, ReadyEnclave, StreamEnd};
use crate::http::Refusal;
use crate::ledger::{AppendError, LedgerEntry};
use crate::metrics::Outcome;
use crate::timings::{Stage, Timeline};
use crate::{App, RequestGuards};

/// Pieces of the body (each one or more chunk records) buffered between
/// the pump and the HTTP body.
const BODY_BUFFER: usize = 4;
/// Bytes of chunk records gathered at most before they go to the body.
const FLUSH_BYTES: usize = 64 << 10;

/// What the request's billing metadata lets its receipt say (the one
/// definition lives in `cocoon_protocol::receipt`).
pub type Expected = cocoon_protocol::receipt::BillingExpectation;

/// Why a receipt was not accepted (and the final chunk withheld).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptRefusal {
    /// Not a well-formed receipt.
    #[error("receipt malformed: {0}")]
    Malformed(ReceiptError),
    /// The signature does not verify under the enclave's attested key.
    #[error("receipt signature does not verify under the enclave's attested receipt key")]
    BadSignature,
    /// It names another request.
    #[error("receipt names request {got}, not {expected}")]
    WrongRequest {
        /// This request.
        expected: RequestId,
        /// The receipt's.
        got: RequestId,
    },
    /// It bills another account.
    #[error("receipt bills account {got}, not the request's account {expected}")]
    WrongAccount {
        /// The request's account.
        expected: AccountId,
        /// The receipt's.
        got: AccountId,
    },
    /// It names another model.
    #[error("receipt names model {got:?}, the request asked for {expected:?}")]
    WrongModel {
        /// The request's model.
        expected: String,
        /// The receipt's.
        got: String,
    },
    /// More completion tokens than the client allowed.
    #[error(
        "receipt bills {completion} completion tokens, more than the request's max_tokens {max}"
    )]
    TokensOverLimit {
        /// Billed.
        completion: u64,
        /// Allowed.
        max: u32,
    },
    /// Other prices than the request accepted.
    #[error("{0}")]
    WrongPrice(String),
    /// The ledger refused it (duplicate) or could not commit it.
    #[error("ledger: {0}")]
    Ledger(AppendError),
    /// The final chunk came without a receipt before it.
    #[error("the enclave sent the final chunk without a usage receipt")]
    Missing,
    /// A second receipt on one stream.
    #[error("the enclave sent a second receipt on one stream")]
    Second,
}

impl ReceiptRefusal {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            ReceiptRefusal::Malformed(_) => "malformed",
            ReceiptRefusal::BadSignature => "bad_signature",
            ReceiptRefusal::WrongRequest { .. } => "wrong_request",
            ReceiptRefusal::WrongAccount { .. } => "wrong_account",
            ReceiptRefusal::WrongModel { .. } => "wrong_model",
            ReceiptRefusal::TokensOverLimit { .. } => "tokens_over_limit",
            ReceiptRefusal::WrongPrice(_) => "wrong_price",
            ReceiptRefusal::Ledger(AppendError::DuplicateRequest(_))
            | ReceiptRefusal::Ledger(AppendError::DuplicateEnclaveSeq(_)) => "duplicate",
            ReceiptRefusal::Ledger(_) => "ledger_error",
            ReceiptRefusal::Missing => "missing",
            ReceiptRefusal::Second => "second_receipt",
        }
    }
}

/// Verify a receipt under the enclave's attested key and check it against
/// what the request's billing metadata allows.
pub fn check_receipt(
    verifier: &ReceiptVerifier,
    bytes: &[u8],
    expected: &Expected,
) -> Result<UsageReceipt, ReceiptRefusal> {
    let r = verifier.verify(bytes).map_err(|e| match e {
        ReceiptError::BadSignature => ReceiptRefusal::BadSignature,
        other => ReceiptRefusal::Malformed(other),
    })?;
    r.matches(expected).map_err(|m| match m.clone() {
        ReceiptMismatch::WrongRequest { expected, got } => {
            ReceiptRefusal::WrongRequest { expected, got }
        }
        ReceiptMismatch::WrongAccount { expected, got } => ReceiptRefusal::WrongAccount {
            expected: AccountId(expected),
            got: AccountId(got),
        },
        ReceiptMismatch::WrongModel { expected, got } => {
            ReceiptRefusal::WrongModel { expected, got }
        }
        ReceiptMismatch::TooManyTokens { max, got } => ReceiptRefusal::TokensOverLimit {
            completion: got,
            max,
        },
        ReceiptMismatch::WrongPrice { .. } => ReceiptRefusal::WrongPrice(m.to_string()),
        other => ReceiptRefusal::Malformed(ReceiptError::Inconsistent(other.to_string())),
    })?;
    Ok(r)
}

/// One chunk record for the HTTP body.
#[derive(Debug)]
pub(crate) struct Record {
    /// The record's bytes.
    pub bytes: Bytes,
    /// The final chunk's: the body ends with it (in the same write as the
    /// record, without waiting for the pump to let go of the channel).
    pub last: bool,
}

/// What the HTTP handler answers.
#[derive(Debug)]
pub(crate) enum Head {
    /// `200`, with this body of chunk records.
    Stream(mpsc::Receiver<Record>),
    /// An error status.
    Fail(Refusal),
}

/// Everything one forwarded request holds until it ends.
pub(crate) struct Exchange {
    pub app: Arc<App>,
    pub ready: Arc<ReadyEnclave>,
    pub stream: EnclaveStream,
    pub expected: Expected,
    pub sent_at: Instant,
    /// The request's stages so far (admission, routing).
    pub timeline: Timeline,
    /// Released just before the final chunk goes (or when the exchange
    /// ends without it).
    pub guards: Option<RequestGuards>,
}

#[derive(Debug)]
enum End {
    Complete,
    Refused(ReceiptRefusal),
    EnclaveError(String),
    Violation(String),
    Timeout(&'static str),
    Lost,
    Stalled,
    ClientGone,
    Shutdown,
}

struct Pump {
    ex: Exchange,
    head: Option<oneshot::Sender<Head>>,
    body: Option<mpsc::Sender<Record>>,
    /// Chunk records not yet handed to the body.
    gathered: Vec<u8>,
    /// Counted as complete, just before its final chunk went.
    counted: bool,
    receipt_seq: Option<u64>,
    gone_at: Option<Instant>,
    frames: u64,
    chunks: u64,
    bytes_out: usize,
    hard_stop: watch::Receiver<bool>,
    timeline: Timeline,
}

async fn client_closed(
    head: &mut Option<oneshot::Sender<Head>>,
    body: &Option<mpsc::Sender<Record>>,
) {
    if let Some(h) = head.as_mut() {
        h.closed().await
    } else if let Some(b) = body {
        b.closed().await
    } else {
        std::future::pending().await
    }
}

/// Run one exchange to its end; the HTTP handler waits on `head`.
pub(crate) async fn pump(ex: Exchange, head: oneshot::Sender<Head>) {
    let hard_stop = ex.app.hard_stop.subscribe();
    let mut p = Pump {
        timeline: ex.timeline,
        ex,
        head: Some(head),
        body: None,
        gathered: Vec::new(),
        counted: false,
        receipt_seq: None,
        gone_at: None,
        frames: 0,
        chunks: 0,
        bytes_out: 0,
        hard_stop,
    };
    let end = p.run().await;
    p.finish(end).await;
}

impl Pump {
    fn client_gone(&mut self, why: &str) {
        if self.gone_at.is_none() {
            info!(request_id = %self.ex.expected.request_id, why, "client went away; cancelling the enclave stream");
            self.gone_at = Some(Instant::now());
            self.body = None;
            self.ex.stream.cancel();
        }
    }

    async fn run(&mut self) -> End {
        let app = self.ex.app.clone();
        let limits = &app.limits;
        let deadline = self.ex.sent_at + limits.total_timeout;
        let first_deadline = self.ex.sent_at + limits.first_frame_timeout;
        loop {
            // What the reader already delivered is taken without a timer
            // or a wait; the records gathered so far go to the client
            // before the pump waits.
            let ready = if *self.hard_stop.borrow() || Instant::now() >= deadline {
                None
            } else {
                self.ex.stream.try_next()
            };
            let next = match ready {
                Some(r) => Ok(r),
                None => {
                    if let Some(end) = self.flush(false).await {
                        return end;
                    }
                    self.timeline.lap(Stage::Relay);
                    let until = match self.gone_at {
                        Some(at) => at + limits.cancel_grace,
                        None if self.frames == 0 => first_deadline,
                        None => Instant::now() + limits.idle_timeout,
                    }
                    .min(deadline);
                    tokio::select! {
                        biased;
                        _ = until_true(&mut self.hard_stop) => return End::Shutdown,
                        _ = client_closed(&mut self.head, &self.body), if self.gone_at.is_none() => {
                            self.client_gone("connection closed");
                            continue;
                        }
                        r = tokio::time::timeout_at(until, self.ex.stream.next()) => r,
                    }
                }
            };
            self.timeline.lap(Stage::Enclave);
            let event = match next {
                Err(_) if self.gone_at.is_some() => return End::ClientGone,
                Err(_) if self.frames == 0 => return End::Timeout("first frame"),
                Err(_) if Instant::now() >= deadline => return End::Timeout("end of the response"),
                Err(_) => return End::Timeout("next frame"),
                Ok(Err(StreamEnd::ConnectionLost)) => return End::Lost,
                Ok(Err(StreamEnd::Stalled)) => return End::Stalled,
                Ok(Ok(ev)) => ev,
            };
            self.frames += 1;
            // The connection machine holds the final chunk until the
            // receipt before it is committed (`EnclaveStream::commit`), and
            // turns a final chunk without one into `FinalWithoutReceipt`.
            if let StreamEvent::Chunk(chunk) = &event {
                if let Some(end) = self.gather(chunk).await {
                    return end;
                }
                self.timeline.lap(Stage::Relay);
                continue;
            }
            // Anything else comes after the chunks gathered before it.
            if let Some(end) = self.flush(false).await {
                return end;
            }
            match event {
                StreamEvent::Chunk(_) => {}
                StreamEvent::Final(chunk) => {
                    if let Some(end) = self.gather(&chunk).await {
                        return end;
                    }
                    if let Some(end) = self.flush(true).await {
                        return end;
                    }
                    return if self.gone_at.is_some() {
                        End::ClientGone
                    } else {
                        End::Complete
                    };
                }
                StreamEvent::Receipt(bytes) => match self.accept_receipt(bytes).await {
                    Ok(seq) => self.receipt_seq = Some(seq),
                    Err(r) => {
                        self.ex.stream.refuse();
                        return End::Refused(r);
                    }
                },
                StreamEvent::Error(reason) => return End::EnclaveError(sanitize_reason(&reason)),
                StreamEvent::Broken(Broken::FinalWithoutReceipt) => {
                    return End::Refused(ReceiptRefusal::Missing)
                }
                StreamEvent::Broken(Broken::SecondReceipt) => {
                    return End::Refused(ReceiptRefusal::Second)
                }
                StreamEvent::Broken(Broken::ShortChunk) => {
                    return End::Violation("a response chunk shorter than its 9-byte header".into())
                }
                StreamEvent::Broken(Broken::ChunkAfterReceipt) => {
                    return End::Violation(
                        "a response chunk after the receipt that is not the final one".into(),
                    )
                }
                StreamEvent::Broken(Broken::Unexpected(other)) => {
                    return End::Violation(format!(
                        "unexpected {other:?} frame on a request stream"
                    ))
                }
                other => {
                    return End::Violation(format!("unexpected {other:?} on a request stream"))
                }
            }
        }
    }

    /// Add one chunk's record to those gathered for the client (unless it
    /// is gone); they go out together ([`Pump::flush`]). `Some` ends the
    /// exchange.
    async fn gather(&mut self, chunk: &[u8]) -> Option<End> {
        if self.gone_at.is_some() {
            return None;
        }
        if let Err(e) = encode_chunk_record(chunk, &mut self.gathered) {
            return Some(End::Violation(e.to_string()));
        }
        self.chunks += 1;
        if self.gathered.len() >= FLUSH_BYTES {
            return self.flush(false).await;
        }
        None
    }

    /// Send the gathered chunk records to the client as one piece of the
    /// body (unless it is gone). `Some` ends the exchange. With `last`
    /// (they end with the final chunk) the body ends with them; just before
    /// they go, the request is counted and its guards (stream permit,
    /// account slot, in-flight count, replay marker, payment reservation)
    /// are released, so they are free before the client sees the end.
    async fn flush(&mut self, last: bool) -> Option<End> {
        if self.gone_at.is_some() {
            self.gathered.clear();
            return None;
        }
        if self.gathered.is_empty() {
            return None;
        }
        if let Some(head) = self.head.take() {
            let (tx, rx) = mpsc::channel(BODY_BUFFER);
            if head.send(Head::Stream(rx)).is_err() {
                self.client_gone("gone before the response started");
                self.gathered.clear();
                return None;
            }
            self.body = Some(tx);
        }
        let body = self.body.clone()?;
        // Room in the body's buffer: no timer. Else wait for the client to
        // read, at most `idle_timeout`.
        let permit = match body.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Closed(())) => {
                self.client_gone("connection closed");
                self.gathered.clear();
                return None;
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                let limit = Instant::now() + self.ex.app.limits.idle_timeout;
                let reserved = tokio::select! {
                    r = tokio::time::timeout_at(limit, body.reserve()) => r,
                    _ = until_true(&mut self.hard_stop) => return Some(End::Shutdown),
                };
                match reserved {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => {
                        self.client_gone("connection closed");
                        self.gathered.clear();
                        return None;
                    }
                    Err(_) => {
                        self.client_gone("stopped reading");
                        self.gathered.clear();
                        return None;
                    }
                }
            }
        };
        let bytes = Bytes::from(std::mem::take(&mut self.gathered));
        self.bytes_out += bytes.len();
        self.ex.app.metrics.add_bytes_out(bytes.len());
        if last {
            self.ex.app.metrics.request(Outcome::Ok, 200);
            self.counted = true;
            drop(self.ex.guards.take());
        }
        permit.send(Record { bytes, last });
        if last {
            self.timeline.lap(Stage::Release);
        }
        None
    }

    async fn accept_receipt(&mut self, bytes: Vec<u8>) -> Result<u64, ReceiptRefusal> {
        let r = check_receipt(self.ex.ready.receipt_verifier(), &bytes, &self.ex.expected)?;
        self.timeline.lap(Stage::Receipt);
        let entry =
            LedgerEntry::from_verified(&r, bytes, self.ex.ready.receipt_public_key().to_vec());
        let t = std::time::Instant::now();
        let (seq, times) = self
            .ex
            .app
            .ledger
            .append_timed(entry)
            .await
            .map_err(ReceiptRefusal::Ledger)?;
        self.timeline.lap_split(
            Stage::Commit,
            &[(Stage::Queue, times.waited), (Stage::Fsync, times.commit)],
        );
        self.ex.app.metrics.receipt_appended(t.elapsed());
        // Durable: the enclave may count it into the account's tab now,
        // and the final chunk may pass.
        self.ex.stream.commit(r.request_id, r.client_account);
        if let Some(res) = self.ex.guards.as_ref().and_then(|g| g.reservation.as_ref()) {
            let charge = r
                .charge_nanoton()
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(u64::MAX);
            res.charged
                .store(charge, std::sync::atomic::Ordering::SeqCst);
        }
        info!(
            request_id = %r.request_id,
            account = %AccountId(r.client_account),
            model = %r.model,
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            enclave_seq = r.enclave_seq,
            ledger_seq = seq,
            "receipt committed"
        );
        self.timeline.lap(Stage::Ack);
        Ok(seq)
    }

    async fn finish(mut self, end: End) {
        let app = self.ex.app.clone();
        let rid = self.ex.expected.request_id;
        let enclave = self.ex.ready.label().to_string();
        if let End::Refused(r) = &end {
            app.metrics.receipt_refused(r.label());
            warn!(request_id = %rid, account = %AccountId(self.ex.expected.account), enclave, reason = %r, "receipt refused; final chunk withheld");
        }
        if self.gone_at.is_some() {
            // Whatever the enclave did after the client left, the client
            // got nothing more; 499 (client closed request) when no status
            // was ever sent.
            let status = if self.head.is_some() { 499 } else { 200 };
            app.metrics.request(Outcome::ClientGone, status);
            info!(request_id = %rid, enclave, chunks = self.chunks, ledger_seq = ?self.receipt_seq, "request ended after the client went away");
            return;
        }
        if let Some(head) = self.head.take() {
            // Nothing was forwarded: answer with a status.
            let refusal = match end {
                End::EnclaveError(reason) => {
                    if app.broker.evidence_still_current(&self.ex.ready).await {
                        Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            Outcome::EnclaveError,
                            format!("the enclave refused the request: {reason}"),
                        )
                    } else {
                        Refusal::new(
                            StatusCode::CONFLICT,
                            Outcome::UnknownEvidence,
                            format!(
                                "evidence {} is no longer current at this host (the enclave restarted or rotated its keys); fetch /v1/evidence again",
                                hex::encode(self.ex.ready.digest().0)
                            ),
                        )
                    }
                }
                End::Refused(r) => Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Outcome::EnclaveError,
                    format!(
                        "the enclave's usage receipt was refused ({r}); no response is forwarded"
                    ),
                ),
                End::Violation(v) => Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Outcome::EnclaveError,
                    format!("enclave protocol violation: {v}"),
                ),
                End::Timeout(what) => Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Outcome::Timeout,
                    format!("timed out waiting for the enclave's {what}"),
                ),
                End::Lost | End::Stalled => Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Outcome::EnclaveError,
                    "the enclave connection was lost before it answered".to_string(),
                ),
                End::Shutdown => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Outcome::Unavailable,
                    "the host is shutting down".to_string(),
                ),
                End::ClientGone | End::Complete => Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Outcome::ClientGone,
                    "the client went away".to_string(),
                ),
            };
            if head.send(Head::Fail(refusal)).is_err() {
                app.metrics.request(Outcome::ClientGone, 499);
            }
            return;
        }
        // The response had started (status 200): count how it ended.
        let (outcome, detail) = match &end {
            End::Complete => (Outcome::Ok, String::new()),
            End::ClientGone => (Outcome::ClientGone, String::new()),
            End::Refused(r) => (Outcome::Truncated, r.to_string()),
            End::EnclaveError(e) => (Outcome::Truncated, format!("enclave error: {e}")),
            End::Violation(v) => (Outcome::Truncated, format!("protocol violation: {v}")),
            End::Timeout(w) => (Outcome::Truncated, format!("timed out waiting for {w}")),
            End::Lost => (Outcome::Truncated, "enclave connection lost".into()),
            End::Stalled => (Outcome::Truncated, "client stalled".into()),
            End::Shutdown => (Outcome::Truncated, "host shut down".into()),
        };
        if !self.counted {
            app.metrics.request(outcome, 200);
        }
        if outcome == Outcome::Ok {
            app.timings.record(&self.timeline);
            info!(request_id = %rid, enclave, chunks = self.chunks, bytes = self.bytes_out, ledger_seq = ?self.receipt_seq, "response complete");
        } else {
            warn!(request_id = %rid, enclave, chunks = self.chunks, outcome = outcome.as_str(), detail, "response ended early");
        }
        // Guards still held (stream permit, account slot, in-flight count,
        // replay marker) are released, then the body ends.
        let Pump { ex, body, .. } = self;
        drop(ex);
        drop(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice};

    const PRICE: UnitPrice = UnitPrice {
        prompt: 1,
        cached: 1,
        completion: 2,
    };

    fn receipt() -> UsageReceipt {
        UsageReceipt {
            request_id: RequestId([1; 32]),
            model: "m".into(),
            prompt_tokens: 3,
            cached_tokens: 0,
            completion_tokens: 10,
            total_tokens: 13,
            unit_price: PRICE,
            multiplier_milli: 1000,
            time: 1,
            enclave_seq: 1,
            client_account: [7; 32],
        }
    }

    #[test]
    fn receipt_checks() {
        let signer = ReceiptSigner::from_scalar(&[5; 32]).unwrap();
        let other = ReceiptSigner::from_scalar(&[6; 32]).unwrap();
        let v = ReceiptVerifier::new(&signer.public_key_sec1()).unwrap();
        let exp = Expected {
            request_id: RequestId([1; 32]),
            account: [7; 32],
            model: "m".into(),
            max_tokens: 10,
            unit_price: PRICE,
            multiplier_milli: 1000,
        };
        let ok = signer.sign(&receipt()).unwrap();
        assert_eq!(check_receipt(&v, &ok, &exp).unwrap(), receipt());
        let forged = other.sign(&receipt()).unwrap();
        assert_eq!(
            check_receipt(&v, &forged, &exp).unwrap_err().label(),
            "bad_signature"
        );
        let mut r = receipt();
        r.request_id = RequestId([2; 32]);
        assert_eq!(
            check_receipt(&v, &signer.sign(&r).unwrap(), &exp)
                .unwrap_err()
                .label(),
            "wrong_request"
        );
        let mut r = receipt();
        r.client_account = [8; 32];
        assert_eq!(
            check_receipt(&v, &signer.sign(&r).unwrap(), &exp)
                .unwrap_err()
                .label(),
            "wrong_account"
        );
        let mut r = receipt();
        r.model = "other".into();
        assert_eq!(
            check_receipt(&v, &signer.sign(&r).unwrap(), &exp)
                .unwrap_err()
                .label(),
            "wrong_model"
        );
        let mut r = receipt();
        r.completion_tokens = 11;
        r.total_tokens = 14;
        assert_eq!(
            check_receipt(&v, &signer.sign(&r).unwrap(), &exp)
                .unwrap_err()
                .label(),
            "tokens_over_limit"
        );
        assert_eq!(
            check_receipt(&v, b"garbage", &exp).unwrap_err().label(),
            "malformed"
        );
    }
}
