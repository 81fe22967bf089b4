//! The enclave's end of a host connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{chunk_is_last, Misuse, Violation};
use crate::frame::{self, Frame, FrameType, CONNECTION_STREAM};
use crate::message::bounded_reason as bounded;
use crate::receipt::UsageReceipt;
use crate::tabs::{Pending, ReceiptAck, TabBook};

/// Whether one enclave stream was cancelled (by the host, or because the
/// connection ended). Readable without the machine, so the code producing a
/// stream's response can stop early; and checked by the writer, which drops
/// a cancelled stream's frames still queued.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Whether the stream was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }

    fn same(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One frame to write, from [`EnclaveConn::poll_transmit`].
#[derive(Debug)]
pub struct Transmit {
    /// Its wire bytes.
    pub bytes: Vec<u8>,
    token: Option<CancelToken>,
}

impl Transmit {
    /// Whether the frame belongs to a stream cancelled since it was made:
    /// the writer drops it instead of writing it ("nothing more is written
    /// for a cancelled stream").
    pub fn is_dropped(&self) -> bool {
        self.token.as_ref().is_some_and(CancelToken::is_cancelled)
    }
}

/// What the enclave must act on, from [`EnclaveConn::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum EnclaveEvent {
    /// The host asks for the current evidence on stream 0: answer with
    /// [`EnclaveConn::evidence`].
    EvidenceWanted,
    /// A request stream was opened: check and run the signed request, then
    /// end the stream with [`EnclaveConn::finish`] or
    /// [`EnclaveConn::fail`] (or [`EnclaveConn::close`] once cancelled).
    Request {
        /// The stream.
        stream: u32,
        /// Its cancellation.
        token: CancelToken,
        /// The `Request` frame's payload.
        payload: Vec<u8>,
    },
    /// A report bound to a client's nonce is asked for on its own stream:
    /// answer with [`EnclaveConn::answer_nonce`].
    NonceEvidence {
        /// The stream.
        stream: u32,
        /// Its cancellation.
        token: CancelToken,
        /// The client's nonce.
        nonce: Vec<u8>,
    },
    /// The host cancelled an open stream.
    Cancelled {
        /// The stream.
        stream: u32,
        /// Whether it came as `Error` rather than `Cancel`.
        by_error: bool,
    },
    /// The machine answered a frame with one `Error` frame (nothing else
    /// happened); for the log.
    Refused {
        /// The stream.
        stream: u32,
        /// The reason sent.
        reason: String,
    },
    /// Receipts were acknowledged and the tabs sent back.
    Acknowledged {
        /// Ids in the acknowledgement.
        receipts: usize,
        /// Pending receipts newly counted.
        counted: usize,
        /// Tabs signed.
        tabs: usize,
    },
}

/// How [`EnclaveConn::finish`] ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Finished {
    /// The receipt is pending and the receipt and the final chunk are
    /// queued, in that order.
    Sent,
    /// As `Sent`; the book was full and its oldest pending receipt was
    /// dropped (it will never be charged).
    SentDroppedOldest,
    /// The stream had been cancelled: nothing is pending, nothing sent.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Nonce,
}

#[derive(Debug)]
struct Slot {
    kind: Kind,
    token: CancelToken,
}

/// The enclave's state of one host connection: open streams and their
/// cancellation, stream 0, the limits, and the order in which a request's
/// receipt and final chunk leave (see the [module docs](super)).
///
/// The receipts' book ([`TabBook`]) is the boot's, shared by every
/// connection: the host may acknowledge a receipt on another connection
/// than the one that carried it.
#[derive(Debug)]
pub struct EnclaveConn {
    streams: HashMap<u32, Slot>,
    max_streams: usize,
    draining: bool,
    book: Arc<TabBook>,
    prices: Arc<[u8]>,
    out: VecDeque<Transmit>,
    events: VecDeque<EnclaveEvent>,
}

impl EnclaveConn {
    /// A connection that allows `max_streams` open streams, answers price
    /// table requests with `prices` (the `PriceTable` payload) and counts
    /// acknowledged receipts in `book`.
    pub fn new(max_streams: usize, prices: Arc<[u8]>, book: Arc<TabBook>) -> EnclaveConn {
        EnclaveConn {
            streams: HashMap::new(),
            max_streams,
            draining: false,
            book,
            prices,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// From now on refuse new requests (the enclave is shutting down).
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<EnclaveEvent> {
        self.events.pop_front()
    }

    fn push(
        &mut self,
        stream: u32,
        kind: FrameType,
        payload: &[u8],
        token: Option<CancelToken>,
    ) -> Result<(), Misuse> {
        let bytes = frame::encode(stream, kind, payload)
            .map_err(|_| Misuse::TooLarge { len: payload.len() })?;
        self.out.push_back(Transmit { bytes, token });
        Ok(())
    }

    fn refuse(&mut self, stream: u32, reason: &str) {
        let reason = bounded(reason);
        // Bounded above, so it always fits in a frame.
        let _ = self.push(stream, FrameType::Error, reason.as_bytes(), None);
        self.events.push_back(EnclaveEvent::Refused {
            stream,
            reason: reason.to_owned(),
        });
    }

    /// Open `stream` for `kind`, or refuse it with an `Error` frame.
    fn open(&mut self, stream: u32, kind: Kind) -> Option<CancelToken> {
        let reason = if self.streams.contains_key(&stream) {
            format!("stream id {stream} is already in use on this connection")
        } else if self.streams.len() >= self.max_streams {
            format!(
                "too many open streams on this connection (limit {})",
                self.max_streams
            )
        } else {
            let token = CancelToken::default();
            self.streams.insert(
                stream,
                Slot {
                    kind,
                    token: token.clone(),
                },
            );
            return Some(token);
        };
        self.refuse(stream, &reason);
        None
    }

    /// One frame from the host. `Err` means close the connection at once
    /// (without flushing what is queued).
    pub fn on_frame(&mut self, f: Frame) -> Result<(), Violation> {
        let sid = f.stream_id;
        match f.kind {
            FrameType::EvidenceRequest if sid == CONNECTION_STREAM => {
                if f.payload.is_empty() {
                    self.events.push_back(EnclaveEvent::EvidenceWanted);
                } else {
                    self.refuse(
                        sid,
                        "evidence for a client nonce is asked for on a stream of its own, not stream 0",
                    );
                }
            }
            FrameType::EvidenceRequest => {
                if let Some(token) = self.open(sid, Kind::Nonce) {
                    self.events.push_back(EnclaveEvent::NonceEvidence {
                        stream: sid,
                        token,
                        nonce: f.payload,
                    });
                }
            }
            FrameType::Request => {
                if sid == CONNECTION_STREAM {
                    self.refuse(sid, "requests need a stream id other than 0");
                } else if self.draining {
                    self.refuse(
                        sid,
                        "the enclave is shutting down and takes no new requests",
                    );
                } else if let Some(token) = self.open(sid, Kind::Request) {
                    self.events.push_back(EnclaveEvent::Request {
                        stream: sid,
                        token,
                        payload: f.payload,
                    });
                }
            }
            FrameType::Cancel | FrameType::Error => {
                if let Some(slot) = self.streams.get(&sid) {
                    slot.token.cancel();
                    self.events.push_back(EnclaveEvent::Cancelled {
                        stream: sid,
                        by_error: f.kind == FrameType::Error,
                    });
                }
            }
            FrameType::ReceiptAck => {
                if sid != CONNECTION_STREAM {
                    self.refuse(sid, "receipt acknowledgements belong on stream 0");
                    return Ok(());
                }
                let ack = match ReceiptAck::from_bytes(&f.payload) {
                    Ok(ack) => ack,
                    Err(e) => {
                        self.refuse(sid, &format!("malformed receipt acknowledgement: {e}"));
                        return Ok(());
                    }
                };
                let (update, counted) = self.book.acknowledge(&ack);
                let tabs = update.tabs.len();
                // At most MAX_TAB_ENTRIES tabs: always one frame.
                let _ = self.push(sid, FrameType::Tab, &update.to_bytes(), None);
                self.events.push_back(EnclaveEvent::Acknowledged {
                    receipts: ack.receipts.len(),
                    counted,
                    tabs,
                });
            }
            FrameType::PriceTableRequest => {
                if sid != CONNECTION_STREAM {
                    self.refuse(sid, "price table requests belong on stream 0");
                } else {
                    let prices = self.prices.clone();
                    let _ = self.push(sid, FrameType::PriceTable, &prices, None);
                }
            }
            kind => return Err(Violation::WrongSender { kind, stream: sid }),
        }
        Ok(())
    }

    /// The current evidence bundle, in answer to
    /// [`EnclaveEvent::EvidenceWanted`].
    pub fn evidence(&mut self, bundle: &[u8]) -> Result<(), Misuse> {
        self.push(CONNECTION_STREAM, FrameType::EvidenceResponse, bundle, None)
    }

    fn slot(&self, stream: u32, token: &CancelToken, kind: Kind) -> Result<&Slot, Misuse> {
        match self.streams.get(&stream) {
            Some(s) if s.token.same(token) && s.kind == kind => Ok(s),
            Some(s) if s.token.same(token) => Err(Misuse::WrongKind(stream)),
            _ => Err(Misuse::NotOpen(stream)),
        }
    }

    /// Free `stream` if `token` is still its own.
    fn free(&mut self, stream: u32, token: &CancelToken) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.token.same(token))
        {
            self.streams.remove(&stream);
        }
    }

    /// One response chunk (not the final one). `Ok(false)`: the stream was
    /// cancelled and nothing was queued; stop working on it.
    pub fn chunk(
        &mut self,
        stream: u32,
        token: &CancelToken,
        chunk: &[u8],
    ) -> Result<bool, Misuse> {
        self.slot(stream, token, Kind::Request)?;
        if chunk_is_last(chunk) != Some(false) {
            return Err(Misuse::LastFlag { stream });
        }
        if token.is_cancelled() {
            return Ok(false);
        }
        self.push(stream, FrameType::ResponseChunk, chunk, Some(token.clone()))?;
        Ok(true)
    }

    /// Like [`chunk`](EnclaveConn::chunk) for a chunk built where its frame
    /// will lie: `framed[..frame::HEADER_LEN]` is room for the frame header
    /// and the sealed chunk follows (as
    /// [`ResponseSealer::seal_in_place_at`](crate::stream::ResponseSealer::seal_in_place_at)
    /// leaves it). The header is written into the room and the buffer
    /// queued as it is: no copy.
    pub fn chunk_framed(
        &mut self,
        stream: u32,
        token: &CancelToken,
        mut framed: Vec<u8>,
    ) -> Result<bool, Misuse> {
        self.slot(stream, token, Kind::Request)?;
        let chunk = framed.get(frame::HEADER_LEN..).unwrap_or_default();
        if chunk_is_last(chunk) != Some(false) {
            return Err(Misuse::LastFlag { stream });
        }
        if token.is_cancelled() {
            return Ok(false);
        }
        let len = chunk.len();
        frame::frame_in_place(stream, FrameType::ResponseChunk, &mut framed)
            .map_err(|_| Misuse::TooLarge { len })?;
        self.out.push_back(Transmit {
            bytes: framed,
            token: Some(token.clone()),
        });
        Ok(true)
    }

    /// End a served request: record `receipt` (signed as `signed`) as
    /// pending in the book, then queue the `Receipt` frame and the final
    /// chunk `last`, in that order; the stream id is free again. A cancelled
    /// stream records and sends nothing.
    pub fn finish(
        &mut self,
        stream: u32,
        token: &CancelToken,
        receipt: &UsageReceipt,
        signed: &[u8],
        last: &[u8],
    ) -> Result<Finished, Misuse> {
        self.slot(stream, token, Kind::Request)?;
        if chunk_is_last(last) != Some(true) {
            return Err(Misuse::LastFlag { stream });
        }
        for p in [signed, last] {
            if p.len() > frame::MAX_PAYLOAD {
                return Err(Misuse::TooLarge { len: p.len() });
            }
        }
        let charge = receipt
            .charge_nanoton()
            .and_then(|c| u64::try_from(c).ok())
            .ok_or(Misuse::Charge(stream))?;
        self.free(stream, token);
        if token.is_cancelled() {
            return Ok(Finished::Cancelled);
        }
        let added = self
            .book
            .add_pending(receipt.request_id, receipt.client_account, charge);
        // Both fit (checked above).
        let _ = self.push(stream, FrameType::Receipt, signed, Some(token.clone()));
        let _ = self.push(stream, FrameType::ResponseChunk, last, Some(token.clone()));
        Ok(match added {
            Pending::Added => Finished::Sent,
            Pending::DroppedOldest => Finished::SentDroppedOldest,
        })
    }

    /// End a stream with one `Error` frame (nothing billed); the id is free
    /// again. A cancelled stream sends nothing.
    pub fn fail(&mut self, stream: u32, token: &CancelToken, reason: &str) {
        if self
            .streams
            .get(&stream)
            .is_none_or(|s| !s.token.same(token))
        {
            return;
        }
        self.free(stream, token);
        if !token.is_cancelled() {
            let reason = bounded(reason);
            let _ = self.push(
                stream,
                FrameType::Error,
                reason.as_bytes(),
                Some(token.clone()),
            );
        }
    }

    /// Free a stream without sending anything (it was cancelled).
    pub fn close(&mut self, stream: u32, token: &CancelToken) {
        self.free(stream, token);
    }

    /// Answer a nonce report stream: the bundle, or why not; the id is free
    /// again.
    pub fn answer_nonce(
        &mut self,
        stream: u32,
        token: &CancelToken,
        answer: Result<&[u8], &str>,
    ) -> Result<(), Misuse> {
        self.slot(stream, token, Kind::Nonce)?;
        self.free(stream, token);
        if token.is_cancelled() {
            return Ok(());
        }
        match answer {
            Ok(bundle) => self.push(
                stream,
                FrameType::EvidenceResponse,
                bundle,
                Some(token.clone()),
            ),
            Err(reason) => {
                let reason = bounded(reason);
                self.push(
                    stream,
                    FrameType::Error,
                    reason.as_bytes(),
                    Some(token.clone()),
                )
            }
        }
    }

    /// The connection ended: every open stream is cancelled and freed.
    pub fn on_close(&mut self) {
        for (_, slot) in self.streams.drain() {
            slot.token.cancel();
        }
    }
}
