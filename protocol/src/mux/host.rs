//! The host's end of an enclave connection.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{chunk_is_last, Misuse, Violation};
use crate::frame::{self, Frame, FrameType, CONNECTION_STREAM};
use crate::tabs::{ReceiptAck, MAX_ACK_IDS};
use crate::RequestId;

/// How long committed receipts gather before their acknowledgement is sent
/// (or until [`MAX_ACK_IDS`] have gathered).
pub const ACK_DELAY: Duration = Duration::from_millis(2);

/// A request/answer on stream 0 (one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `EvidenceRequest` → `EvidenceResponse`.
    Evidence,
    /// `PriceTableRequest` → `PriceTable`.
    Prices,
}

impl Call {
    fn frames(self) -> (FrameType, FrameType) {
        match self {
            Call::Evidence => (FrameType::EvidenceRequest, FrameType::EvidenceResponse),
            Call::Prices => (FrameType::PriceTableRequest, FrameType::PriceTable),
        }
    }
}

/// What one stream's owner must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// A response chunk that is not the last: forward it.
    Chunk(Vec<u8>),
    /// The host's copy of the usage receipt: verify and commit it, then
    /// [`HostConn::commit`] (which releases the final chunk) or
    /// [`HostConn::refuse`].
    Receipt(Vec<u8>),
    /// The final chunk, released after the receipt was committed: forward
    /// it; the stream has ended.
    Final(Vec<u8>),
    /// The report bound to the client's nonce; the stream has ended.
    Evidence(Vec<u8>),
    /// The enclave ended the stream with an `Error` frame (its UTF-8
    /// reason, unchecked).
    Error(Vec<u8>),
    /// The enclave broke the stream's protocol; the stream has ended (the
    /// connection stays up).
    Broken(Broken),
}

/// How the enclave broke a stream's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Broken {
    /// A final chunk with no receipt before it.
    FinalWithoutReceipt,
    /// A second `Receipt` frame.
    SecondReceipt,
    /// A response chunk after the receipt that is not the final one.
    ChunkAfterReceipt,
    /// A response chunk shorter than its header.
    ShortChunk,
    /// A frame type that has no place on this stream.
    Unexpected(FrameType),
}

/// What the host must act on, from [`HostConn::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostEvent {
    /// The answer to the stream-0 call in progress.
    Answer {
        /// The call.
        call: Call,
        /// The answer's payload.
        payload: Vec<u8>,
    },
    /// The stream-0 call in progress failed: an `Error` frame (`Some`
    /// reason) or a frame that does not answer it (`None`, with its type).
    CallFailed {
        /// The call.
        call: Call,
        /// The enclave's reason, if it sent an `Error`.
        reason: Option<Vec<u8>>,
        /// The frame type that came instead.
        got: FrameType,
    },
    /// Something for one stream.
    Stream {
        /// The stream.
        stream: u32,
        /// What.
        event: StreamEvent,
    },
    /// Signed tabs in answer to an acknowledgement: check each under the
    /// attested receipt key and store them.
    Tab(Vec<u8>),
    /// A frame for a stream that is not live (ended or cancelled here);
    /// dropped, for the log.
    Dropped {
        /// Its stream.
        stream: u32,
        /// Its type.
        kind: FrameType,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Nonce,
}

#[derive(Debug)]
enum State {
    /// Chunks may come; no receipt yet.
    Open,
    /// The receipt was handed out; waiting for the host's verdict.
    Receipt,
    /// As `Receipt`, and the final chunk is here, held.
    Held(Vec<u8>),
    /// The receipt is committed: the final chunk passes.
    Committed,
    /// The receipt was refused: whatever comes is dropped.
    Refused,
}

#[derive(Debug)]
struct Stream {
    kind: Kind,
    state: State,
    /// `Cancel` was sent; what the enclave had already sent still counts.
    cancelled: bool,
}

/// The host's state of one enclave connection: stream ids, the stream-0
/// call in progress, each request stream's billing state (see the
/// [module docs](super)), the acknowledgements waiting to go, and the
/// frames to write.
#[derive(Debug)]
pub struct HostConn {
    pub(super) next_id: u32,
    streams: HashMap<u32, Stream>,
    call: Option<Call>,
    acks: Vec<(RequestId, [u8; 32])>,
    acks_since: Option<Instant>,
    control: VecDeque<Vec<u8>>,
    data: VecDeque<Vec<u8>>,
    events: VecDeque<HostEvent>,
    closed: bool,
}

impl Default for HostConn {
    fn default() -> Self {
        HostConn::new()
    }
}

impl HostConn {
    /// A fresh connection: ids from 1.
    pub fn new() -> HostConn {
        HostConn {
            next_id: 1,
            streams: HashMap::new(),
            call: None,
            acks: Vec::new(),
            acks_since: None,
            control: VecDeque::new(),
            data: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
        }
    }

    /// Whether `stream` is live (opened here, not ended, not cancelled).
    pub fn is_live(&self, stream: u32) -> bool {
        self.streams.contains_key(&stream)
    }

    /// The next frame's bytes to write: control frames (cancels,
    /// acknowledgements, stream-0 calls) before requests.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.control.pop_front().or_else(|| self.data.pop_front())
    }

    /// The next thing to act on.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    fn allocate(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != CONNECTION_STREAM && !self.streams.contains_key(&id) {
                return id;
            }
        }
    }

    fn open(&mut self, kind: Kind, frame: FrameType, payload: &[u8]) -> Result<u32, Misuse> {
        if self.closed {
            return Err(Misuse::NotOpen(CONNECTION_STREAM));
        }
        let id = self.allocate();
        let bytes = frame::encode(id, frame, payload)
            .map_err(|_| Misuse::TooLarge { len: payload.len() })?;
        self.streams.insert(
            id,
            Stream {
                kind,
                state: State::Open,
                cancelled: false,
            },
        );
        self.data.push_back(bytes);
        Ok(id)
    }

    /// Open a request stream on a fresh id with `payload` (a
    /// `SignedRequest`) as its `Request` frame.
    pub fn open_request(&mut self, payload: &[u8]) -> Result<u32, Misuse> {
        self.open(Kind::Request, FrameType::Request, payload)
    }

    /// Ask for a report bound to a client's nonce on a fresh stream.
    pub fn open_nonce_evidence(&mut self, nonce: &[u8]) -> Result<u32, Misuse> {
        self.open(Kind::Nonce, FrameType::EvidenceRequest, nonce)
    }

    /// Start a stream-0 call. One at a time: a call in progress is
    /// replaced (its answer, should it still come, answers this one only if
    /// it has the right type).
    pub fn call(&mut self, call: Call) {
        let (ask, _) = call.frames();
        self.call = Some(call);
        if let Ok(bytes) = frame::encode(CONNECTION_STREAM, ask, &[]) {
            self.control.push_back(bytes);
        }
    }

    /// Stop waiting for the stream-0 call in progress.
    pub fn abandon_call(&mut self) {
        self.call = None;
    }

    /// The stream's owner gave up on it (the client went away): send
    /// `Cancel`. The stream stays live: what the enclave sent before it saw
    /// the cancel (a receipt for the work done, the final chunk) is still
    /// handled, until the owner [forgets](HostConn::forget) it. `false` if
    /// it was not live or is cancelled already.
    pub fn cancel(&mut self, stream: u32) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if s.cancelled {
            return false;
        }
        s.cancelled = true;
        if !self.closed {
            if let Ok(bytes) = frame::encode(stream, FrameType::Cancel, &[]) {
                self.control.push_back(bytes);
            }
        }
        true
    }

    /// The stream's owner is gone: whatever comes for it from now on is
    /// dropped, and its id may be handed out again (after every other id).
    pub fn forget(&mut self, stream: u32) {
        self.streams.remove(&stream);
    }

    /// The receipt of `stream` is durably committed: queue its
    /// acknowledgement and release the final chunk if it is already here
    /// (else it passes when it comes). `None` if nothing is held.
    pub fn commit(
        &mut self,
        stream: u32,
        request_id: RequestId,
        account: [u8; 32],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, Misuse> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(Misuse::NotOpen(stream))?;
        let held = match std::mem::replace(&mut s.state, State::Committed) {
            State::Receipt => None,
            State::Held(last) => Some(last),
            other => {
                s.state = other;
                return Err(Misuse::WrongKind(stream));
            }
        };
        if held.is_some() {
            self.streams.remove(&stream);
        }
        self.acks.push((request_id, account));
        self.acks_since.get_or_insert(now);
        if self.acks.len() >= MAX_ACK_IDS {
            self.flush_acks();
        }
        Ok(held)
    }

    /// The receipt of `stream` was refused: its final chunk is never
    /// released. The stream ends here.
    pub fn refuse(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            match s.state {
                // The final chunk came already: the enclave is done.
                State::Held(_) => {
                    self.streams.remove(&stream);
                }
                _ => s.state = State::Refused,
            }
        }
    }

    /// Acknowledge receipts committed earlier (on another connection) that
    /// no stored tab counts yet; sent at once, in frames of at most
    /// [`MAX_ACK_IDS`].
    pub fn acknowledge_again(&mut self, receipts: &[(RequestId, [u8; 32])]) {
        for chunk in receipts.chunks(MAX_ACK_IDS) {
            self.send_ack(chunk.to_vec());
        }
    }

    fn send_ack(&mut self, receipts: Vec<(RequestId, [u8; 32])>) {
        if receipts.is_empty() || self.closed {
            return;
        }
        let ack = ReceiptAck { receipts };
        // At most MAX_ACK_IDS × 64 bytes: always one frame.
        if let Ok(bytes) = frame::encode(CONNECTION_STREAM, FrameType::ReceiptAck, &ack.to_bytes())
        {
            self.control.push_back(bytes);
        }
    }

    fn flush_acks(&mut self) {
        let acks = std::mem::take(&mut self.acks);
        self.acks_since = None;
        self.send_ack(acks);
    }

    /// When [`HostConn::handle_timeout`] has something to do: the gathered
    /// acknowledgements are due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.acks_since.map(|t| t + ACK_DELAY)
    }

    /// Time passed: send the acknowledgements that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|due| now >= due) {
            self.flush_acks();
        }
    }

    fn stream_event(&mut self, stream: u32, event: StreamEvent) {
        self.events.push_back(HostEvent::Stream { stream, event });
    }

    /// End `stream` with `event`.
    fn end(&mut self, stream: u32, event: StreamEvent) {
        self.streams.remove(&stream);
        self.stream_event(stream, event);
    }

    /// One frame from the enclave. `Err` means close the connection.
    pub fn on_frame(&mut self, f: Frame) -> Result<(), Violation> {
        let sid = f.stream_id;
        match f.kind {
            FrameType::Request
            | FrameType::Cancel
            | FrameType::EvidenceRequest
            | FrameType::PriceTableRequest
            | FrameType::ReceiptAck => {
                return Err(Violation::WrongSender {
                    kind: f.kind,
                    stream: sid,
                })
            }
            _ => {}
        }
        if sid == CONNECTION_STREAM {
            return self.on_connection_frame(f);
        }
        let Some(s) = self.streams.get_mut(&sid) else {
            self.events.push_back(HostEvent::Dropped {
                stream: sid,
                kind: f.kind,
            });
            return Ok(());
        };
        if matches!(s.state, State::Refused) {
            // Whatever follows a refused receipt is withheld; the stream
            // ends with its final chunk (or an error).
            let ends = f.kind == FrameType::Error
                || (f.kind == FrameType::ResponseChunk && chunk_is_last(&f.payload) == Some(true));
            if ends {
                self.streams.remove(&sid);
            }
            return Ok(());
        }
        match (s.kind, f.kind) {
            (_, FrameType::Error) => self.end(sid, StreamEvent::Error(f.payload)),
            (Kind::Nonce, FrameType::EvidenceResponse) => {
                self.end(sid, StreamEvent::Evidence(f.payload))
            }
            (Kind::Request, FrameType::ResponseChunk) => {
                let Some(last) = chunk_is_last(&f.payload) else {
                    self.end(sid, StreamEvent::Broken(Broken::ShortChunk));
                    return Ok(());
                };
                match (&s.state, last) {
                    (State::Open, false) => self.stream_event(sid, StreamEvent::Chunk(f.payload)),
                    (State::Open, true) => {
                        self.end(sid, StreamEvent::Broken(Broken::FinalWithoutReceipt))
                    }
                    (State::Receipt, true) => s.state = State::Held(f.payload),
                    (State::Committed, true) => self.end(sid, StreamEvent::Final(f.payload)),
                    _ => self.end(sid, StreamEvent::Broken(Broken::ChunkAfterReceipt)),
                }
            }
            (Kind::Request, FrameType::Receipt) => match s.state {
                State::Open => {
                    s.state = State::Receipt;
                    self.stream_event(sid, StreamEvent::Receipt(f.payload));
                }
                _ => self.end(sid, StreamEvent::Broken(Broken::SecondReceipt)),
            },
            (_, kind) => self.end(sid, StreamEvent::Broken(Broken::Unexpected(kind))),
        }
        Ok(())
    }

    fn on_connection_frame(&mut self, f: Frame) -> Result<(), Violation> {
        if f.kind == FrameType::Tab {
            // Tabs are signed by the enclave and checked by the host, so a
            // tab that answers no acknowledgement of this host's (one the
            // operator sent behind its back, say) is still stored.
            self.events.push_back(HostEvent::Tab(f.payload));
            return Ok(());
        }
        let Some(call) = self.call else {
            // An answer to a call given up on (timed out).
            self.events.push_back(HostEvent::Dropped {
                stream: CONNECTION_STREAM,
                kind: f.kind,
            });
            return Ok(());
        };
        self.call = None;
        let (_, answer) = call.frames();
        self.events.push_back(if f.kind == answer {
            HostEvent::Answer {
                call,
                payload: f.payload,
            }
        } else {
            HostEvent::CallFailed {
                call,
                reason: (f.kind == FrameType::Error).then_some(f.payload),
                got: f.kind,
            }
        });
        Ok(())
    }

    /// The connection ended: every stream is gone, nothing more is sent.
    pub fn on_close(&mut self) -> Vec<u32> {
        self.closed = true;
        self.call = None;
        self.acks.clear();
        self.acks_since = None;
        self.control.clear();
        self.data.clear();
        self.streams.drain().map(|(id, _)| id).collect()
    }
}
