//! Reading a response: the host's streamed body of chunk records, opened
//! chunk by chunk with the request's session keys, decoded into events,
//! and closed by a receipt that must verify with the attested key and
//! match the request.
//!
//! Owns [`ResponseStream`] (the thin I/O shell: it pulls body bytes) and the
//! sans-IO `ResponseReader` under it that turns bytes into checked
//! [`ResponsePart`]s. A response is accepted whole or not at all: a body
//! that ends early, a chunk that does not authenticate, one dropped,
//! reordered or replayed, or a bad receipt is an error, and after an error
//! the stream yields nothing more.

use std::pin::Pin;

use bytes::Bytes;
use cocoon_protocol::api::ChunkRecordDecoder;
use cocoon_protocol::message::{FinishReason, ResponseEvent};
use cocoon_protocol::receipt::UsageReceipt;
use cocoon_protocol::sampling::TokenLogprob;
use cocoon_protocol::seal::EvidenceDigest;
use cocoon_protocol::stream::{ResponseOpener, StreamError};
use cocoon_protocol::RequestId;
use futures_util::{Stream, StreamExt};

use crate::provider::{AttestedEnclave, PlatformKind};
use crate::receipts::{check_receipt, ReceiptExpectation, ReceiptProblem};

/// Why a response was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The body ended before the stream's last chunk.
    #[error("response truncated by the host: the body ended after {received} chunk(s), before the last chunk and its receipt")]
    Truncated {
        /// Chunks accepted before the end.
        received: u64,
    },
    /// The connection failed while the body was being read.
    #[error(
        "response truncated by the host: the connection failed after {received} chunk(s): {source}"
    )]
    Interrupted {
        /// Chunks accepted before the failure.
        received: u64,
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// A chunk does not authenticate under this request's keys.
    #[error("response chunk {seq} does not authenticate: altered by the host, or not the response to this request")]
    Tampered {
        /// Its sequence number.
        seq: u64,
    },
    /// A chunk already accepted came again.
    #[error("response chunk {got} was replayed by the host (expected chunk {expected})")]
    Replayed {
        /// The number expected next.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// Chunks are missing: dropped or reordered.
    #[error("response chunks {expected}..{got} are missing: dropped or reordered by the host")]
    Dropped {
        /// The number expected next.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// Data after the last chunk.
    #[error("the host sent data after the response's last chunk")]
    AfterLast,
    /// Bytes that are not chunk records or chunks.
    #[error("malformed response from the host: {0}")]
    Malformed(String),
    /// A chunk opened, but its content is not a valid event.
    #[error("the enclave's response is malformed: {0}")]
    Event(String),
    /// The receipt is not acceptable.
    #[error("{0}")]
    Receipt(#[from] ReceiptProblem),
    /// The stream failed earlier, or already completed.
    #[error("the response stream has already ended (completed or failed)")]
    Ended,
}

impl From<StreamError> for ResponseError {
    fn from(e: StreamError) -> ResponseError {
        match e {
            StreamError::Authentication { seq } => ResponseError::Tampered { seq },
            StreamError::Replayed { expected, got } => ResponseError::Replayed { expected, got },
            StreamError::Gap { expected, got } => ResponseError::Dropped { expected, got },
            StreamError::AfterLast => ResponseError::AfterLast,
            StreamError::Truncated { received } => ResponseError::Truncated { received },
            StreamError::Failed(inner) => ResponseError::from(*inner),
            other => ResponseError::Malformed(other.to_string()),
        }
    }
}

/// Token counts, as the verified receipt states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Of the prompt tokens, those the enclave served from this account's
    /// prompt prefix cache (charged at the cached price).
    pub cached_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// The end of a response whose every chunk authenticated and whose receipt
/// verified with the attested receipt key and matched the request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Completed {
    /// Why the enclave stopped (an error from the enclave is reported
    /// here, with its receipt, not as a transport failure).
    pub finish: FinishReason,
    /// The receipt's content.
    pub receipt: UsageReceipt,
    /// The signed receipt (COSE_Sign1) as the enclave produced it.
    pub receipt_bytes: Vec<u8>,
    /// The receipt's token counts.
    pub usage: Usage,
    /// The request (SHA-256 of the sealed request).
    pub request_id: RequestId,
    /// The verified claims the request was sealed to.
    pub evidence_digest: EvidenceDigest,
    /// The platform that vouched for the enclave.
    pub platform: PlatformKind,
}

/// One piece of a response.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResponsePart {
    /// A piece of completion text.
    Text(String),
    /// The log-probability of a generated token (when the request asked
    /// for logprobs); it comes before the text that holds the token.
    Logprobs(TokenLogprob),
    /// The embedding of input `index`.
    Embedding {
        /// Which input (0-based).
        index: u32,
        /// The vector.
        vector: Vec<f32>,
    },
    /// The end, with the checked receipt. Nothing follows it.
    Completed(Box<Completed>),
}

/// What kind of request a response answers, for the checks that depend on
/// it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expecting {
    Chat,
    Embeddings { inputs: usize },
}

/// The sans-IO core of a response: bytes in, checked parts out.
#[derive(Debug)]
pub(crate) struct ResponseReader {
    records: ChunkRecordDecoder,
    opener: ResponseOpener,
    expect: ReceiptExpectation,
    expecting: Expecting,
    seen: Vec<bool>,
    evidence_digest: EvidenceDigest,
    platform: PlatformKind,
    state: ReaderState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Reading,
    Completed,
    Failed,
}

impl ResponseReader {
    pub(crate) fn new(
        opener: ResponseOpener,
        expect: ReceiptExpectation,
        expecting: Expecting,
        enclave: &AttestedEnclave,
    ) -> ResponseReader {
        let seen = match expecting {
            Expecting::Chat => Vec::new(),
            Expecting::Embeddings { inputs } => vec![false; inputs],
        };
        ResponseReader {
            records: ChunkRecordDecoder::new(),
            opener,
            expect,
            expecting,
            seen,
            evidence_digest: enclave.evidence_digest(),
            platform: enclave.platform(),
            state: ReaderState::Reading,
        }
    }

    /// Feed body bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.records.push(bytes);
    }

    /// The next part if a whole chunk is buffered. After the last chunk,
    /// any buffered byte is an error.
    pub(crate) fn next_part(&mut self) -> Result<Option<ResponsePart>, ResponseError> {
        match self.state {
            ReaderState::Reading => {}
            ReaderState::Failed => return Err(ResponseError::Ended),
            ReaderState::Completed => {
                // Only trailing garbage can arrive here.
                return match self.records.finish() {
                    Ok(()) => Ok(None),
                    Err(_) => self.fail(ResponseError::AfterLast),
                };
            }
        }
        let step = self.step();
        match step {
            Err(e) => self.fail(e),
            Ok(part) => Ok(part),
        }
    }

    fn fail<T>(&mut self, e: ResponseError) -> Result<T, ResponseError> {
        self.state = ReaderState::Failed;
        Err(e)
    }

    fn step(&mut self) -> Result<Option<ResponsePart>, ResponseError> {
        let record = match self.records.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(ResponseError::Malformed(e.to_string())),
        };
        let chunk = self.opener.open_chunk(&record)?;
        let event = ResponseEvent::decode(&chunk.data, chunk.last)
            .map_err(|e| ResponseError::Event(e.to_string()))?;
        match event {
            ResponseEvent::Text(t) => match self.expecting {
                Expecting::Chat => Ok(Some(ResponsePart::Text(t))),
                Expecting::Embeddings { .. } => Err(ResponseError::Event(
                    "completion text in the response to an embeddings request".into(),
                )),
            },
            ResponseEvent::Logprobs(l) => match self.expecting {
                Expecting::Chat => Ok(Some(ResponsePart::Logprobs(l))),
                Expecting::Embeddings { .. } => Err(ResponseError::Event(
                    "logprobs in the response to an embeddings request".into(),
                )),
            },
            ResponseEvent::Embedding { index, vector } => {
                let Some(seen) = self.seen.get_mut(index as usize) else {
                    return Err(ResponseError::Event(format!(
                        "embedding index {index} out of range for {} input(s)",
                        self.seen.len()
                    )));
                };
                if std::mem::replace(seen, true) {
                    return Err(ResponseError::Event(format!(
                        "embedding {index} sent twice"
                    )));
                }
                Ok(Some(ResponsePart::Embedding { index, vector }))
            }
            ResponseEvent::End { finish, receipt } => {
                let checked = check_receipt(&receipt, &self.expect)?;
                // A refused or failed request is charged nothing (the
                // enclave's rule); a receipt that says otherwise is not
                // accepted.
                if finish.is_error() && checked.charge_nanoton() != Some(0) {
                    return Err(ResponseError::Event(format!(
                        "the response ended {} but its receipt charges {} nanoton",
                        finish.as_str(),
                        checked.charge_nanoton().unwrap_or(u128::MAX)
                    )));
                }
                if finish == FinishReason::Stop {
                    if let Some(missing) = self.seen.iter().position(|s| !s) {
                        return Err(ResponseError::Event(format!(
                            "the response ended without the embedding of input {missing}"
                        )));
                    }
                }
                self.state = ReaderState::Completed;
                let usage = Usage {
                    prompt_tokens: checked.prompt_tokens,
                    cached_tokens: checked.cached_tokens,
                    completion_tokens: checked.completion_tokens,
                    total_tokens: checked.total_tokens,
                };
                Ok(Some(ResponsePart::Completed(Box::new(Completed {
                    finish,
                    request_id: checked.request_id,
                    receipt: checked,
                    receipt_bytes: receipt,
                    usage,
                    evidence_digest: self.evidence_digest,
                    platform: self.platform,
                }))))
            }
            _ => Err(ResponseError::Event(
                "a response event this client does not know".into(),
            )),
        }
    }

    /// The body ended: an error unless the last chunk was accepted and
    /// nothing is left over.
    pub(crate) fn end_of_body(&mut self) -> Result<(), ResponseError> {
        match self.state {
            ReaderState::Failed => Err(ResponseError::Ended),
            ReaderState::Completed => match self.records.finish() {
                Ok(()) => Ok(()),
                Err(_) => self.fail(ResponseError::AfterLast),
            },
            ReaderState::Reading => {
                let received = self.opener.received();
                self.fail(ResponseError::Truncated { received })
            }
        }
    }

    fn received(&self) -> u64 {
        self.opener.received()
    }

    fn request_id(&self) -> RequestId {
        self.opener.request_id()
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The response to one sealed request, read as it arrives.
///
/// Call [`next`](ResponseStream::next) until it returns
/// [`ResponsePart::Completed`]; every part returned before that came from
/// a chunk that authenticated, in order. The completed part is returned
/// only once the receipt has verified and the host has closed the body
/// with nothing after the last chunk.
pub struct ResponseStream {
    body: Body,
    reader: ResponseReader,
    enclave: AttestedEnclave,
    model: String,
    max_tokens: u32,
    state: StreamState,
    observer: Option<Box<dyn StreamObserver>>,
}

/// Told how a response goes: the network client records each provider's
/// latency and outcome through it.
pub(crate) trait StreamObserver: Send {
    /// A checked part arrived (called for every part; the observer keeps
    /// the first).
    fn first_part(&mut self);
    /// The stream ended: `ok` when the receipt verified and the enclave
    /// reported no error, false on any error.
    fn finished(&mut self, ok: bool);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Reading,
    Completed,
    Failed,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("request_id", &self.reader.request_id())
            .field("model", &self.model)
            .field("received", &self.reader.received())
            .finish_non_exhaustive()
    }
}

impl ResponseStream {
    pub(crate) fn new(
        body: Body,
        reader: ResponseReader,
        enclave: AttestedEnclave,
        model: String,
        max_tokens: u32,
    ) -> ResponseStream {
        ResponseStream {
            body,
            reader,
            enclave,
            model,
            max_tokens,
            state: StreamState::Reading,
            observer: None,
        }
    }

    pub(crate) fn observe(&mut self, observer: Box<dyn StreamObserver>) {
        self.observer = Some(observer);
    }

    /// The request this responds to.
    pub fn request_id(&self) -> RequestId {
        self.reader.request_id()
    }

    /// The verified enclave the request was sealed to.
    pub fn enclave(&self) -> &AttestedEnclave {
        &self.enclave
    }

    /// The model requested.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The completion-token limit requested (and billed at most).
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// The next checked part; `Ok(None)` after [`ResponsePart::Completed`]
    /// has been returned. Any error ends the stream: every later call
    /// returns [`ResponseError::Ended`].
    pub async fn next(&mut self) -> Result<Option<ResponsePart>, ResponseError> {
        match self.state {
            StreamState::Reading => {}
            StreamState::Completed => return Ok(None),
            StreamState::Failed => return Err(ResponseError::Ended),
        }
        let r = self.read().await;
        if let Some(o) = self.observer.as_mut() {
            if matches!(r, Ok(Some(_))) {
                o.first_part();
            }
        }
        match &r {
            Ok(Some(ResponsePart::Completed(c))) => {
                self.state = StreamState::Completed;
                let ok = !c.finish.is_error();
                if let Some(mut o) = self.observer.take() {
                    o.finished(ok);
                }
            }
            Err(_) => {
                self.state = StreamState::Failed;
                if let Some(mut o) = self.observer.take() {
                    o.finished(false);
                }
            }
            _ => {}
        }
        r
    }

    async fn read(&mut self) -> Result<Option<ResponsePart>, ResponseError> {
        loop {
            match self.reader.next_part()? {
                Some(ResponsePart::Completed(c)) => {
                    // Hold the receipt back until the body has ended clean.
                    self.drain().await?;
                    return Ok(Some(ResponsePart::Completed(c)));
                }
                Some(part) => return Ok(Some(part)),
                None => {}
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.reader.push(&bytes),
                Some(Err(source)) => {
                    return Err(ResponseError::Interrupted {
                        received: self.reader.received(),
                        source,
                    })
                }
                None => {
                    self.reader.end_of_body()?;
                    // end_of_body succeeds only once the last chunk was
                    // accepted, which returned above.
                    return Err(ResponseError::Ended);
                }
            }
        }
    }

    async fn drain(&mut self) -> Result<(), ResponseError> {
        loop {
            match self.body.next().await {
                Some(Ok(bytes)) if bytes.is_empty() => {}
                Some(Ok(_)) => return Err(ResponseError::AfterLast),
                Some(Err(source)) => {
                    return Err(ResponseError::Interrupted {
                        received: self.reader.received(),
                        source,
                    })
                }
                None => return self.reader.end_of_body(),
            }
        }
    }

    /// Read the whole response: the completion text and the end.
    pub async fn collect_text(mut self) -> Result<(String, Completed), ResponseError> {
        let mut text = String::new();
        loop {
            match self.next().await? {
                Some(ResponsePart::Text(t)) => text.push_str(&t),
                Some(ResponsePart::Completed(c)) => return Ok((text, *c)),
                Some(_) => {}
                None => return Err(ResponseError::Ended),
            }
        }
    }

    /// Read the whole response: the completion text, the log-probability
    /// of each generated token (empty unless the request asked) and the end.
    pub async fn collect_with_logprobs(
        mut self,
    ) -> Result<(String, Vec<TokenLogprob>, Completed), ResponseError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        loop {
            match self.next().await? {
                Some(ResponsePart::Text(t)) => text.push_str(&t),
                Some(ResponsePart::Logprobs(l)) => logprobs.push(l),
                Some(ResponsePart::Completed(c)) => return Ok((text, logprobs, *c)),
                Some(_) => {}
                None => return Err(ResponseError::Ended),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::account::AccountId;
    use cocoon_protocol::api::encode_chunk_record;
    use cocoon_protocol::rand_core::OsRng;
    use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice};
    use cocoon_protocol::seal::{open_request, seal_request, BillingMeta, HpkeSecretKey};
    use cocoon_protocol::stream::ResponseSealer;

    struct Fixture {
        sealer: ResponseSealer,
        reader: ResponseReader,
        signer: ReceiptSigner,
        request_id: RequestId,
    }

    fn fixture() -> Fixture {
        let sk = HpkeSecretKey::generate(&mut OsRng);
        let d = EvidenceDigest::of_claims(b"claims");
        let meta = BillingMeta {
            model: "m".into(),
            max_tokens: 10,
            price_quote_id: "list".into(),
            unit_price: UnitPrice::default(),
            multiplier_milli: 1000,
            client_account: [7; 32],
            expires_at: 1_800_000_000,
        };
        let (req, client) = seal_request(sk.public_key(), &d, &meta, b"q", &mut OsRng).unwrap();
        let (_, _, enclave) = open_request(&sk, &d, &req).unwrap();
        let signer = ReceiptSigner::generate(&mut OsRng);
        let expect = ReceiptExpectation {
            request_id: req.request_id(),
            account: AccountId([7; 32]),
            model: "m".into(),
            max_tokens: 10,
            unit_price: UnitPrice::default(),
            multiplier_milli: 1000,
            receipt_public_key: signer.public_key_sec1(),
        };
        let opener = client.response_opener();
        let reader = ResponseReader {
            records: ChunkRecordDecoder::new(),
            opener,
            expect,
            expecting: Expecting::Chat,
            seen: vec![],
            evidence_digest: d,
            platform: PlatformKind::Simulated,
            state: ReaderState::Reading,
        };
        Fixture {
            sealer: enclave.response_sealer(&mut OsRng).unwrap(),
            reader,
            signer,
            request_id: req.request_id(),
        }
    }

    fn body(f: &mut Fixture) -> Vec<u8> {
        let receipt = f
            .signer
            .sign(&UsageReceipt {
                request_id: f.request_id,
                model: "m".into(),
                prompt_tokens: 1,
                cached_tokens: 0,
                completion_tokens: 2,
                total_tokens: 3,
                unit_price: UnitPrice::default(),
                multiplier_milli: 1000,
                time: 0,
                enclave_seq: 0,
                client_account: [7; 32],
            })
            .unwrap();
        let mut out = vec![];
        for (ev, last) in [
            (ResponseEvent::Text("a".into()), false),
            (ResponseEvent::Text("b".into()), false),
            (
                ResponseEvent::End {
                    finish: FinishReason::Stop,
                    receipt,
                },
                true,
            ),
        ] {
            let c = f.sealer.seal_chunk(&ev.to_cbor(), last).unwrap();
            encode_chunk_record(&c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn byte_by_byte_and_trailing_garbage() {
        let mut f = fixture();
        let b = body(&mut f);
        let mut text = String::new();
        let mut done = false;
        for byte in &b {
            f.reader.push(&[*byte]);
            while let Some(p) = f.reader.next_part().unwrap() {
                match p {
                    ResponsePart::Text(t) => text.push_str(&t),
                    ResponsePart::Completed(c) => {
                        assert_eq!(c.usage.total_tokens, 3);
                        done = true;
                    }
                    _ => panic!(),
                }
            }
        }
        assert!(done);
        assert_eq!(text, "ab");
        f.reader.end_of_body().unwrap();
        f.reader.push(&[0]);
        assert!(matches!(
            f.reader.end_of_body(),
            Err(ResponseError::AfterLast)
        ));
    }

    #[test]
    fn cut_bodies_are_truncated() {
        let mut f = fixture();
        let b = body(&mut f);
        for cut in [0, 3, b.len() / 2, b.len() - 1] {
            let mut g = fixture();
            let gb = body(&mut g);
            g.reader.push(&gb[..cut.min(gb.len())]);
            while let Ok(Some(_)) = g.reader.next_part() {}
            assert!(
                matches!(g.reader.end_of_body(), Err(ResponseError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }
}
