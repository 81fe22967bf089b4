//! The enclave side: connections to the enclaves, stream multiplexing, and
//! which enclave (by verified evidence) serves which requests.
//!
//! Owns, per connection, one reader task that cuts the byte stream into
//! frames ([`cocoon_protocol::frame::FrameDecoder`]) and dispatches them by
//! stream id to bounded per-stream channels, and one writer task; per
//! enclave address, a supervisor that connects (the enclave listens; the
//! host dials `unix:` or `vsock:`), fetches the evidence on stream 0,
//! verifies it under the host's own policy, publishes the enclave under its
//! evidence digest, refreshes the evidence now and then, and reconnects
//! with backoff when the connection drops. It never looks inside a sealed
//! request or a response chunk, and does not decide what a stream's frames
//! mean (that is `relay`).
//!
//! # Backpressure and limits
//!
//! Every per-stream channel is bounded (`stream_buffer_frames`): a client
//! that reads slowly slows its enclave stream down. The frame protocol has
//! no per-stream flow-control window, so while the reader waits for room in
//! one stream's channel, every stream on that connection waits; the wait
//! is bounded by `stream_stall_timeout`, after which that one stream is
//! dropped and cancelled (its client sees a truncated body), so one stalled
//! client cannot hold up the others for long. Requests go through a
//! bounded writer queue; `Cancel` and evidence requests through an
//! unbounded control queue that the writer serves first. A semaphore per
//! enclave bounds concurrent streams (`max_streams_per_enclave`).
//!
//! # Prices and tabs
//!
//! After verifying an enclave the supervisor asks it for its measured price
//! table (stream 0) and publishes it with the enclave. The relay
//! acknowledges every receipt it committed ([`ReadyEnclave::acknowledge`]);
//! a per-connection task batches the acknowledgements into `ReceiptAck`
//! frames, checks every signed tab the enclave sends back under the
//! attested receipt key and stores it in the ledger. On every (re)connect
//! it acknowledges again the committed receipts no stored tab counts yet
//! (`cocoon_protocol::tabs` has the protocol).
//!
//! # Failure
//!
//! When the connection ends (EOF, I/O or framing error, a write that does
//! not complete in `idle_timeout`), every open stream sees
//! [`StreamEnd::ConnectionLost`], the enclave is unpublished at once (so
//! requests sealed to its evidence get `409` and clients fetch fresh
//! evidence: an enclave that restarts has new keys), and the supervisor
//! reconnects with exponential backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_protocol::api::EvidenceList;
use cocoon_protocol::frame::{self, Frame, FrameDecoder, FrameType, CONNECTION_STREAM};
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::receipt::ReceiptVerifier;
use cocoon_protocol::seal::EvidenceDigest;
use cocoon_protocol::settlement::SignedTab;
use cocoon_protocol::tabs::{ReceiptAck, TabUpdate, MAX_ACK_IDS};
use cocoon_protocol::RequestId;
use cocoon_verifier::{Policy, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::collateral::Collateral;
use crate::config::{EnclaveAddr, Limits};
use crate::ledger::{Ledger, StoredTab};
use crate::metrics::Metrics;

/// How long acknowledgements gather before they are sent.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// The least time between two evidence re-checks of one connection
/// triggered by enclave errors.
const RECHECK_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes the writer coalesces into one write.
const WRITE_COALESCE: usize = 256 << 10;
/// Most characters of an enclave-supplied reason kept for logs and answers.
const MAX_REASON: usize = 200;

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The connection is closed (or closed while waiting).
    #[error("enclave connection lost")]
    ConnectionLost,
    /// Connecting failed.
    #[error("could not connect to enclave {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The enclave answered with an `Error` frame.
    #[error("enclave error: {0}")]
    Enclave(String),
    /// The enclave sent something the protocol does not allow.
    #[error("enclave protocol violation: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out waiting for the enclave's {0}")]
    Timeout(&'static str),
    /// The evidence does not meet the host's policy.
    #[error("evidence rejected: {0}")]
    Rejected(String),
}

/// Make an enclave-supplied UTF-8 reason safe for a log line or an HTTP
/// reason: lossy UTF-8, control characters replaced, length bounded.
pub fn sanitize_reason(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    if s.chars().count() > MAX_REASON {
        out.push('…');
    }
    if out.trim().is_empty() {
        out = "(no reason given)".into();
    }
    out
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

pub(crate) async fn connect(addr: &EnclaveAddr) -> std::io::Result<BoxIo> {
    match addr {
        EnclaveAddr::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        EnclaveAddr::Vsock { cid, port } => Ok(Box::new(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
        )),
        EnclaveAddr::HybridVsock { path, port } => {
            Ok(Box::new(hybrid_vsock_connect(path, *port).await?))
        }
    }
}

/// The longest reply line a hybrid-vsock device may send (`OK 4294967295`).
const HYBRID_REPLY_MAX: usize = 32;

/// Connects to guest port `port` through a hybrid-vsock Unix socket: writes
/// `CONNECT <port>\n`, then reads the reply one byte at a time (so that no
/// byte of the guest's stream is consumed) up to the newline; anything but
/// `OK <number>` is an error naming what came back.
pub async fn hybrid_vsock_connect(
    path: &std::path::Path,
    port: u32,
) -> std::io::Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::with_capacity(HYBRID_REPLY_MAX);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "hybrid vsock {}: closed before answering CONNECT {port} (nothing listens on that guest port yet?)",
                    path.display()
                ),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() == HYBRID_REPLY_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("hybrid vsock {}: reply line too long", path.display()),
            ));
        }
        line.push(b[0]);
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|n| n.parse::<u32>().is_ok());
    if !ok {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "hybrid vsock {}: CONNECT {port} answered {:?}, not \"OK <port>\"",
                path.display(),
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    Ok(s)
}

/// Why a stream ended without a final frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The enclave connection closed.
    ConnectionLost,
    /// The host dropped the stream because its consumer stalled.
    Stalled,
}

struct StreamTable {
    next_id: u32,
    streams: HashMap<u32, mpsc::Sender<Frame>>,
    closed: bool,
}

impl StreamTable {
    fn allocate(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != CONNECTION_STREAM && !self.streams.contains_key(&id) {
                return id;
            }
        }
    }
}

struct Shared {
    label: Arc<str>,
    table: Mutex<StreamTable>,
    control: mpsc::UnboundedSender<Vec<u8>>,
    /// `Tab` frames from the enclave (stream 0), whatever else waits there.
    tabs: mpsc::UnboundedSender<Vec<u8>>,
    closed: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn shutdown(&self, reason: &str) {
        let was_closed = self.closed.send_replace(true);
        let dropped = match self.table.lock() {
            Ok(mut t) => {
                t.closed = true;
                let n = t.streams.len();
                t.streams.clear();
                n
            }
            Err(_) => 0,
        };
        if !was_closed {
            info!(enclave = %self.label, reason, open_streams = dropped, "enclave connection closed");
        }
    }

    fn remove(&self, id: u32) {
        if let Ok(mut t) = self.table.lock() {
            t.streams.remove(&id);
        }
    }

    fn send_cancel(&self, id: u32) {
        if let Ok(bytes) = frame::encode(id, FrameType::Cancel, &[]) {
            if self.control.send(bytes).is_ok() {
                self.metrics.cancel_sent();
            }
        }
    }
}

/// One connection to an enclave: a reader and a writer task, and the table
/// of open streams.
pub struct EnclaveConnection {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Vec<u8>>,
    evidence_lock: tokio::sync::Mutex<()>,
    stream_buffer: usize,
    tab_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<u8>>>>,
}

impl std::fmt::Debug for EnclaveConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveConnection")
            .field("enclave", &self.shared.label)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl EnclaveConnection {
    fn start(io: BoxIo, label: Arc<str>, limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let (rd, wr) = tokio::io::split(io);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (req_tx, req_rx) = mpsc::channel(limits.max_streams_per_enclave.max(1));
        let (closed, _) = watch::channel(false);
        let (tabs_tx, tabs_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            label,
            table: Mutex::new(StreamTable {
                next_id: 1,
                streams: HashMap::new(),
                closed: false,
            }),
            control: control_tx,
            tabs: tabs_tx,
            closed,
            metrics,
        });
        tokio::spawn(read_loop(rd, shared.clone(), limits.stream_stall_timeout));
        tokio::spawn(write_loop(
            wr,
            req_rx,
            control_rx,
            shared.clone(),
            limits.idle_timeout,
        ));
        Arc::new(EnclaveConnection {
            shared,
            requests: req_tx,
            evidence_lock: tokio::sync::Mutex::new(()),
            stream_buffer: limits.stream_buffer_frames.max(1),
            tab_rx: Mutex::new(Some(tabs_rx)),
        })
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// End the connection; open streams see [`StreamEnd::ConnectionLost`].
    pub fn close(&self, reason: &str) {
        self.shared.shutdown(reason);
    }

    /// Open a stream on a fresh id and send `payload` as its `Request`
    /// frame.
    pub async fn open_stream(&self, payload: &[u8]) -> Result<EnclaveStream, BrokerError> {
        self.open_stream_with(FrameType::Request, payload).await
    }

    /// Ask for a report bound to a client's `nonce`, on a stream of its own
    /// (several may be in flight; the enclave makes one at a time).
    pub async fn fetch_nonce_evidence(
        &self,
        nonce: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        let mut stream = self
            .open_stream_with(FrameType::EvidenceRequest, nonce)
            .await?;
        let f = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| BrokerError::Timeout("evidence for a client nonce"))?
            .map_err(|_| BrokerError::ConnectionLost)?;
        match f.kind {
            FrameType::EvidenceResponse => {
                stream.done = true;
                Ok(f.payload)
            }
            FrameType::Error => Err(BrokerError::Enclave(sanitize_reason(&f.payload))),
            other => Err(BrokerError::Protocol(format!(
                "{other:?} frame in answer to a request for evidence"
            ))),
        }
    }

    async fn open_stream_with(
        &self,
        kind: FrameType,
        payload: &[u8],
    ) -> Result<EnclaveStream, BrokerError> {
        let (tx, rx) = mpsc::channel(self.stream_buffer);
        let id = {
            let mut t = self
                .shared
                .table
                .lock()
                .map_err(|_| BrokerError::ConnectionLost)?;
            if t.closed {
                return Err(BrokerError::ConnectionLost);
            }
            let id = t.allocate();
            t.streams.insert(id, tx);
            id
        };
        let mut stream = EnclaveStream {
            id,
            rx,
            shared: self.shared.clone(),
            done: false,
            cancelled: false,
        };
        let bytes = match frame::encode(id, kind, payload) {
            Ok(b) => b,
            Err(e) => {
                // Never sent: nothing to cancel.
                stream.done = true;
                return Err(BrokerError::Protocol(e.to_string()));
            }
        };
        self.requests
            .send(bytes)
            .await
            .map_err(|_| BrokerError::ConnectionLost)?;
        Ok(stream)
    }

    /// Ask for the evidence bundle on stream 0 (one request at a time).
    pub async fn fetch_evidence(&self, timeout: Duration) -> Result<Vec<u8>, BrokerError> {
        self.call(
            FrameType::EvidenceRequest,
            FrameType::EvidenceResponse,
            "evidence",
            timeout,
        )
        .await
    }

    /// Ask for the enclave's measured price table on stream 0.
    pub async fn fetch_prices(&self, timeout: Duration) -> Result<PriceTable, BrokerError> {
        let bytes = self
            .call(
                FrameType::PriceTableRequest,
                FrameType::PriceTable,
                "price table",
                timeout,
            )
            .await?;
        PriceTable::from_cbor(&bytes).map_err(|e| BrokerError::Protocol(e.to_string()))
    }

    /// Queue a `ReceiptAck` frame (stream 0).
    fn send_ack(&self, ack: &ReceiptAck) -> Result<(), BrokerError> {
        let bytes = frame::encode(CONNECTION_STREAM, FrameType::ReceiptAck, &ack.to_bytes())
            .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        self.shared
            .control
            .send(bytes)
            .map_err(|_| BrokerError::ConnectionLost)
    }

    /// One request/response on stream 0 (one at a time).
    async fn call(
        &self,
        ask: FrameType,
        answer: FrameType,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        let _one_at_a_time = self.evidence_lock.lock().await;
        let (tx, mut rx) = mpsc::channel(2);
        {
            let mut t = self
                .shared
                .table
                .lock()
                .map_err(|_| BrokerError::ConnectionLost)?;
            if t.closed {
                return Err(BrokerError::ConnectionLost);
            }
            t.streams.insert(CONNECTION_STREAM, tx);
        }
        struct Unregister<'a>(&'a Shared);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0.remove(CONNECTION_STREAM);
            }
        }
        let _unregister = Unregister(&self.shared);
        let req = frame::encode(CONNECTION_STREAM, ask, &[])
            .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        self.shared
            .control
            .send(req)
            .map_err(|_| BrokerError::ConnectionLost)?;
        let f = tokio::time::timeout(timeout, rx.recv())
            .await
            .map_err(|_| BrokerError::Timeout(what))?
            .ok_or(BrokerError::ConnectionLost)?;
        match f.kind {
            k if k == answer => Ok(f.payload),
            FrameType::Error => Err(BrokerError::Enclave(sanitize_reason(&f.payload))),
            other => Err(BrokerError::Protocol(format!(
                "{other:?} frame on stream 0 in answer to a {what} request"
            ))),
        }
    }
}

/// One request's stream on an enclave connection. Dropping it before the
/// enclave ended the stream sends `Cancel`.
pub struct EnclaveStream {
    id: u32,
    rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
    done: bool,
    cancelled: bool,
}

impl std::fmt::Debug for EnclaveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveStream")
            .field("id", &self.id)
            .field("enclave", &self.shared.label)
            .field("done", &self.done)
            .finish()
    }
}

/// Whether a `ResponseChunk` payload carries the last flag (flags byte at
/// offset 8 of the chunk, in clear). `None` if it is shorter than the
/// chunk header.
pub fn chunk_is_last(payload: &[u8]) -> Option<bool> {
    payload
        .get(cocoon_protocol::stream::CHUNK_HEADER_LEN - 1)
        .map(|flags| flags & 1 == 1)
}

impl EnclaveStream {
    /// The stream id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next frame the enclave sent on this stream.
    pub async fn next(&mut self) -> Result<Frame, StreamEnd> {
        match self.rx.recv().await {
            Some(f) => {
                let ends = match f.kind {
                    FrameType::Error => true,
                    FrameType::ResponseChunk => chunk_is_last(&f.payload).unwrap_or(false),
                    _ => false,
                };
                if ends {
                    self.done = true;
                }
                Ok(f)
            }
            None => {
                self.done = true;
                if *self.shared.closed.borrow() {
                    Err(StreamEnd::ConnectionLost)
                } else {
                    // The reader dropped us for stalling and sent Cancel.
                    self.cancelled = true;
                    Err(StreamEnd::Stalled)
                }
            }
        }
    }

    /// Tell the enclave to stop (the client went away); frames already on
    /// their way can still be read.
    pub fn cancel(&mut self) {
        if !self.done && !self.cancelled {
            self.cancelled = true;
            self.shared.send_cancel(self.id);
        }
    }
}

impl Drop for EnclaveStream {
    fn drop(&mut self) {
        self.shared.remove(self.id);
        if !self.done && !self.cancelled && !*self.shared.closed.borrow() {
            self.shared.send_cancel(self.id);
        }
    }
}

async fn read_loop(mut rd: tokio::io::ReadHalf<BoxIo>, shared: Arc<Shared>, stall: Duration) {
    let mut closed = shared.closed.subscribe();
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let reason = 'outer: loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = until_true(&mut closed) => break "closed by the host".to_string(),
        };
        let n = match n {
            Ok(0) => {
                break match dec.finish() {
                    Ok(()) => "the enclave closed the connection".to_string(),
                    Err(e) => format!("the enclave closed the connection: {e}"),
                }
            }
            Ok(n) => n,
            Err(e) => break format!("read failed: {e}"),
        };
        if let Err(e) = dec.push(&buf[..n]) {
            break format!("framing error: {e}");
        }
        loop {
            let f = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'outer format!("framing error: {e}"),
            };
            let id = f.stream_id;
            if id == CONNECTION_STREAM && f.kind == FrameType::Tab {
                let _ = shared.tabs.send(f.payload);
                continue;
            }
            let tx = shared
                .table
                .lock()
                .ok()
                .and_then(|t| t.streams.get(&id).cloned());
            let Some(tx) = tx else {
                debug!(enclave = %shared.label, stream = id, kind = ?f.kind, "frame for a stream that is gone; dropped");
                continue;
            };
            tokio::select! {
                r = tokio::time::timeout(stall, tx.send(f)) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => shared.remove(id),
                    Err(_) => {
                        warn!(enclave = %shared.label, stream = id, "stream consumer stalled; stream dropped and cancelled");
                        shared.remove(id);
                        shared.send_cancel(id);
                    }
                },
                _ = until_true(&mut closed) => break 'outer "closed by the host".to_string(),
            }
        }
    };
    shared.shutdown(&reason);
}

async fn write_loop(
    mut wr: tokio::io::WriteHalf<BoxIo>,
    mut requests: mpsc::Receiver<Vec<u8>>,
    mut control: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
    write_timeout: Duration,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        let mut out = tokio::select! {
            biased;
            _ = until_true(&mut closed) => break,
            Some(b) = control.recv() => b,
            Some(b) = requests.recv() => b,
            else => break,
        };
        while out.len() < WRITE_COALESCE {
            if let Ok(b) = control.try_recv() {
                out.extend_from_slice(&b);
            } else if let Ok(b) = requests.try_recv() {
                out.extend_from_slice(&b);
            } else {
                break;
            }
        }
        let write = async {
            wr.write_all(&out).await?;
            wr.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.shutdown(&format!("write failed: {e}"));
                break;
            }
            Err(_) => {
                shared.shutdown("write timed out (the enclave is not reading)");
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// An enclave whose evidence the host verified under its policy, as
/// requests are routed to it.
pub struct ReadyEnclave {
    slot: usize,
    label: Arc<str>,
    conn: Arc<EnclaveConnection>,
    digest: EvidenceDigest,
    bundle: Vec<u8>,
    hpke_public_key: Vec<u8>,
    receipt_public_key: Vec<u8>,
    receipt_verifier: ReceiptVerifier,
    permits: Arc<Semaphore>,
    prices: PriceTable,
    acks: mpsc::UnboundedSender<(RequestId, [u8; 32])>,
}

impl std::fmt::Debug for ReadyEnclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyEnclave")
            .field("enclave", &self.label)
            .field("digest", &hex::encode(self.digest.0))
            .finish_non_exhaustive()
    }
}

impl ReadyEnclave {
    /// The configured address, for logs and metrics.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// SHA-256 of the verified claims: what clients seal to.
    pub fn digest(&self) -> EvidenceDigest {
        self.digest
    }
    /// The evidence bundle bytes, as the enclave sent them.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }
    /// The attested receipt key (SEC1).
    pub fn receipt_public_key(&self) -> &[u8] {
        &self.receipt_public_key
    }
    /// Verifier for receipts under the attested key.
    pub fn receipt_verifier(&self) -> &ReceiptVerifier {
        &self.receipt_verifier
    }
    /// The connection.
    pub fn connection(&self) -> &Arc<EnclaveConnection> {
        &self.conn
    }
    /// The semaphore bounding concurrent streams on this enclave.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }
    /// Its measured price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }
    /// The receipt of `request_id` (billing `account`) is durably in the
    /// ledger: acknowledge it to the enclave (batched), so its tab counts
    /// it.
    pub fn acknowledge(&self, request_id: RequestId, account: [u8; 32]) {
        let _ = self.acks.send((request_id, account));
    }
}

#[derive(Default)]
struct Routes {
    by_digest: HashMap<EvidenceDigest, Arc<ReadyEnclave>>,
    by_slot: Vec<Option<Arc<ReadyEnclave>>>,
    /// Per slot, the other digests its enclave issued on the current
    /// connection (earlier refreshes, reports for client nonces), oldest
    /// first: requests sealed to them still route there (the keys are the
    /// same, and the enclave opens them).
    aliases: Vec<VecDeque<EvidenceDigest>>,
}

/// Most earlier digests routed to one enclave.
const MAX_ALIASES: usize = 256;

impl Routes {
    fn unroute(&mut self, digest: &EvidenceDigest, of: &Arc<ReadyEnclave>) {
        if self
            .by_digest
            .get(digest)
            .is_some_and(|e| Arc::ptr_eq(e, of))
        {
            self.by_digest.remove(digest);
        }
    }

    /// Route `digest` to `ready` (slot `slot`) as well, forgetting the
    /// oldest alias beyond [`MAX_ALIASES`].
    fn alias(&mut self, slot: usize, digest: EvidenceDigest, ready: &Arc<ReadyEnclave>) {
        let Some(list) = self.aliases.get_mut(slot) else {
            return;
        };
        if digest == ready.digest || list.contains(&digest) {
            return;
        }
        list.push_back(digest);
        let dropped = if list.len() > MAX_ALIASES {
            list.pop_front()
        } else {
            None
        };
        if let Some(d) = dropped {
            self.unroute(&d, ready);
        }
        self.by_digest.insert(digest, ready.clone());
    }
}

struct Slot {
    index: usize,
    addr: EnclaveAddr,
    label: Arc<str>,
    permits: Arc<Semaphore>,
    /// Last re-check: when, on which connection, and the digest it found.
    recheck: tokio::sync::Mutex<Option<(Instant, usize, Option<EvidenceDigest>)>>,
}

/// All enclaves: supervisors, and the routing table by evidence digest.
pub struct Broker {
    slots: Vec<Arc<Slot>>,
    routes: RwLock<Routes>,
    ready: watch::Sender<usize>,
    policy: Policy,
    limits: Limits,
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    collateral: Collateral,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("enclaves", &self.slots.len())
            .field("ready", &self.ready_count())
            .finish()
    }
}

fn now_unix() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Resolves once the watched flag is true (the guard `wait_for` returns is
/// dropped here, so callers' futures stay `Send`).
pub(crate) async fn until_true(w: &mut watch::Receiver<bool>) {
    let _ = w.wait_for(|v| *v).await;
}

fn conn_key(conn: &Arc<EnclaveConnection>) -> usize {
    Arc::as_ptr(conn) as usize
}

impl Broker {
    /// A broker for these enclave addresses (nothing is connected until
    /// [`Broker::spawn`]).
    pub fn new(
        addrs: &[EnclaveAddr],
        policy: Policy,
        limits: Limits,
        metrics: Arc<Metrics>,
        ledger: Arc<Ledger>,
        collateral: Collateral,
    ) -> Arc<Broker> {
        let slots = addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                Arc::new(Slot {
                    index,
                    addr: addr.clone(),
                    label: addr.to_string().into(),
                    permits: Arc::new(Semaphore::new(limits.max_streams_per_enclave.max(1))),
                    recheck: tokio::sync::Mutex::new(None),
                })
            })
            .collect::<Vec<_>>();
        let routes = Routes {
            by_digest: HashMap::new(),
            by_slot: vec![None; slots.len()],
            aliases: vec![VecDeque::new(); slots.len()],
        };
        Arc::new(Broker {
            slots,
            routes: RwLock::new(routes),
            ready: watch::channel(0).0,
            policy,
            limits,
            metrics,
            ledger,
            collateral,
        })
    }

    /// Start one supervisor per enclave address; they stop when `stop`
    /// turns true, closing their connections.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.slots
            .iter()
            .map(|slot| tokio::spawn(self.clone().supervise(slot.clone(), stop.clone())))
            .collect()
    }

    /// The ready enclave serving evidence `digest`.
    pub fn route(&self, digest: &EvidenceDigest) -> Option<Arc<ReadyEnclave>> {
        self.routes
            .read()
            .ok()
            .and_then(|r| r.by_digest.get(digest).cloned())
    }

    /// Ready enclaves now.
    pub fn ready_count(&self) -> usize {
        *self.ready.borrow()
    }

    /// Watch the number of ready enclaves.
    pub fn ready_watch(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// The ready enclaves, in configuration order.
    pub fn ready_enclaves(&self) -> Vec<Arc<ReadyEnclave>> {
        self.routes
            .read()
            .map(|r| r.by_slot.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// The bundles of the ready enclaves, in configuration order.
    pub fn evidence_list(&self) -> EvidenceList {
        let r = match self.routes.read() {
            Ok(r) => r,
            Err(_) => return EvidenceList::default(),
        };
        EvidenceList(
            r.by_slot
                .iter()
                .flatten()
                .map(|e| e.bundle.clone())
                .collect(),
        )
    }

    fn publish(&self, slot: &Slot, ready: Option<Arc<ReadyEnclave>>) {
        let Ok(mut r) = self.routes.write() else {
            return;
        };
        let old = r.by_slot.get_mut(slot.index).and_then(Option::take);
        let old_aliases = r
            .aliases
            .get_mut(slot.index)
            .map(std::mem::take)
            .unwrap_or_default();
        if let Some(old) = &old {
            r.unroute(&old.digest, old);
            for d in &old_aliases {
                r.unroute(d, old);
            }
        }
        let verified = ready.is_some();
        if let Some(new) = ready {
            r.by_digest.insert(new.digest, new.clone());
            if let Some(s) = r.by_slot.get_mut(slot.index) {
                *s = Some(new.clone());
            }
            // The same enclave re-attested on the same connection: what it
            // issued before still routes to it.
            if let Some(old) = old.filter(|o| Arc::ptr_eq(&o.conn, &new.conn)) {
                for d in old_aliases.into_iter().chain([old.digest]) {
                    r.alias(slot.index, d, &new);
                }
            }
        }
        let n = r.by_slot.iter().flatten().count();
        drop(r);
        self.ready.send_replace(n);
        self.metrics.enclave_verified(&slot.label, verified);
    }

    /// Evidence of `ready`'s enclave bound to a client's `nonce`: asked for
    /// on its connection, verified under the host's policy, checked to name
    /// the same keys and the nonce, and routed (requests sealed to it go to
    /// this enclave). Returns the bundle as the enclave sent it.
    pub async fn nonce_evidence(
        &self,
        ready: &Arc<ReadyEnclave>,
        nonce: &[u8],
    ) -> Result<Vec<u8>, BrokerError> {
        let bundle = ready
            .conn
            .fetch_nonce_evidence(nonce, self.limits.evidence_timeout)
            .await?;
        let bundle = self.collateral.attach(bundle, now_unix().0).await;
        let v = self.verify_bundle(&bundle)?;
        let c = v.claims();
        if c.hpke_public_key != ready.hpke_public_key
            || c.receipt_public_key != ready.receipt_public_key
            || c.client_nonce.as_deref() != Some(nonce)
        {
            return Err(BrokerError::Protocol(
                "the evidence for a client nonce names other keys or another nonce".into(),
            ));
        }
        let digest = EvidenceDigest::of_claims(v.claims_cbor());
        if let Ok(mut r) = self.routes.write() {
            let current = r.by_slot.get(ready.slot).cloned().flatten();
            if let Some(cur) = current.filter(|c| Arc::ptr_eq(&c.conn, &ready.conn)) {
                r.alias(ready.slot, digest, &cur);
            }
        }
        Ok(bundle)
    }

    /// Verify a bundle under the host's policy, now.
    fn verify_bundle(
        &self,
        bundle: &[u8],
    ) -> Result<cocoon_verifier::VerifiedEnclave, BrokerError> {
        cocoon_verifier::verify(bundle, &self.policy, now_unix()).map_err(|r| {
            BrokerError::Rejected(
                r.reasons()
                    .iter()
                    .map(|r| r.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    fn verify_evidence(
        &self,
        slot: &Slot,
        conn: &Arc<EnclaveConnection>,
        bundle: Vec<u8>,
        prices: PriceTable,
        acks: mpsc::UnboundedSender<(RequestId, [u8; 32])>,
    ) -> Result<Arc<ReadyEnclave>, BrokerError> {
        let v = self.verify_bundle(&bundle)?;
        let receipt_public_key = v.claims().receipt_public_key.clone();
        let receipt_verifier = ReceiptVerifier::new(&receipt_public_key)
            .map_err(|e| BrokerError::Rejected(format!("claims.receipt_public_key: {e}")))?;
        Ok(Arc::new(ReadyEnclave {
            slot: slot.index,
            label: slot.label.clone(),
            conn: conn.clone(),
            digest: EvidenceDigest::of_claims(v.claims_cbor()),
            bundle,
            hpke_public_key: v.claims().hpke_public_key.clone(),
            receipt_public_key,
            receipt_verifier,
            permits: slot.permits.clone(),
            prices,
            acks,
        }))
    }

    /// Fetch and verify the evidence on `conn` and publish the result. A
    /// rejection unpublishes the enclave and closes the connection.
    async fn refresh(&self, slot: &Slot, conn: &Arc<EnclaveConnection>) -> Option<EvidenceDigest> {
        let bundle = match conn.fetch_evidence(self.limits.evidence_timeout).await {
            Ok(b) => b,
            Err(e) => {
                warn!(enclave = %slot.label, error = %e, "evidence refresh failed; reconnecting");
                conn.close("evidence refresh failed");
                return None;
            }
        };
        let bundle = self.collateral.attach(bundle, now_unix().0).await;
        let current = self
            .routes
            .read()
            .ok()
            .and_then(|r| r.by_slot.get(slot.index).cloned().flatten());
        let Some(same) = current.clone().filter(|c| Arc::ptr_eq(&c.conn, conn)) else {
            conn.close("evidence refresh on a connection that is not served");
            return None;
        };
        match self.verify_evidence(slot, conn, bundle, same.prices.clone(), same.acks.clone()) {
            Ok(ready) if ready.receipt_public_key != same.receipt_public_key => {
                // Tabs are per receipt key and connection: set everything up
                // again on a fresh connection.
                warn!(enclave = %slot.label, "the enclave's receipt key changed on a live connection; reconnecting");
                self.publish(slot, None);
                conn.close("receipt key changed");
                None
            }
            Ok(ready) => {
                let digest = ready.digest;
                let changed = current.as_ref().map(|c| c.digest) != Some(digest)
                    || current.is_some_and(|c| !Arc::ptr_eq(&c.conn, conn));
                if changed {
                    info!(enclave = %slot.label, evidence = %hex::encode(digest.0), "enclave evidence changed; now serving the new evidence");
                    self.publish(slot, Some(ready));
                }
                Some(digest)
            }
            Err(e) => {
                warn!(enclave = %slot.label, error = %e, "enclave evidence no longer meets the policy; not served");
                self.publish(slot, None);
                conn.close("evidence rejected");
                None
            }
        }
    }

    /// After the enclave refused a request sealed to `ready`'s evidence:
    /// is that evidence still what the enclave holds? Fetches the evidence
    /// again (at most every couple of seconds per connection); if it
    /// changed, the new evidence is verified and served instead, and the
    /// answer is `false` (the client must fetch evidence again).
    pub async fn evidence_still_current(&self, ready: &Arc<ReadyEnclave>) -> bool {
        let Some(slot) = self.slots.get(ready.slot) else {
            return false;
        };
        let mut last = slot.recheck.lock().await;
        let key = conn_key(&ready.conn);
        if let Some((at, k, digest)) = *last {
            if k == key && at.elapsed() < RECHECK_MIN_INTERVAL {
                return digest == Some(ready.digest);
            }
        }
        if ready.conn.is_closed() {
            return false;
        }
        let digest = self.refresh(slot, &ready.conn).await;
        *last = Some((Instant::now(), key, digest));
        digest == Some(ready.digest)
    }

    async fn supervise(self: Arc<Self>, slot: Arc<Slot>, mut stop: watch::Receiver<bool>) {
        let limits = &self.limits;
        let mut backoff = limits.reconnect_backoff_min;
        loop {
            if *stop.borrow() {
                break;
            }
            let attempt = tokio::time::timeout(limits.connect_timeout, connect(&slot.addr)).await;
            let io = match attempt {
                Ok(Ok(io)) => Some(io),
                Ok(Err(e)) => {
                    debug!(enclave = %slot.label, error = %e, "connect failed");
                    None
                }
                Err(_) => {
                    debug!(enclave = %slot.label, "connect timed out");
                    None
                }
            };
            if let Some(io) = io {
                let conn =
                    EnclaveConnection::start(io, slot.label.clone(), limits, self.metrics.clone());
                self.metrics.enclave_connected(&slot.label, true);
                let established = self.establish(&slot, &conn).await;
                match established {
                    Ok(ready) => {
                        info!(enclave = %slot.label, evidence = %hex::encode(ready.digest.0), "enclave verified; serving");
                        self.publish(&slot, Some(ready));
                        backoff = limits.reconnect_backoff_min;
                        self.serve(&slot, &conn, &mut stop).await;
                        self.publish(&slot, None);
                    }
                    Err(e) => {
                        warn!(enclave = %slot.label, error = %e, "enclave not served");
                    }
                }
                conn.close(if *stop.borrow() {
                    "host shutting down"
                } else {
                    "reconnecting"
                });
                self.metrics.enclave_connected(&slot.label, false);
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = until_true(&mut stop) => break,
            }
            backoff = (backoff * 2).min(limits.reconnect_backoff_max);
        }
        self.publish(&slot, None);
    }

    /// Evidence, then prices, then the acknowledgement/tab task.
    async fn establish(
        &self,
        slot: &Slot,
        conn: &Arc<EnclaveConnection>,
    ) -> Result<Arc<ReadyEnclave>, BrokerError> {
        let limits = &self.limits;
        let bundle = conn.fetch_evidence(limits.evidence_timeout).await?;
        let bundle = self.collateral.attach(bundle, now_unix().0).await;
        let prices = conn.fetch_prices(limits.evidence_timeout).await?;
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let ready = self.verify_evidence(slot, conn, bundle, prices, acks_tx)?;
        let tab_rx = conn
            .tab_rx
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .ok_or(BrokerError::ConnectionLost)?;
        tokio::spawn(tab_task(
            conn.clone(),
            slot.label.clone(),
            ready.receipt_public_key.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
            acks_rx,
            tab_rx,
        ));
        Ok(ready)
    }

    /// While the connection lives: refresh the evidence periodically.
    async fn serve(
        &self,
        slot: &Slot,
        conn: &Arc<EnclaveConnection>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut refresh = tokio::time::interval(self.limits.evidence_refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                _ = until_true(stop) => return,
                _ = refresh.tick() => {
                    let mut last = slot.recheck.lock().await;
                    let digest = self.refresh(slot, conn).await;
                    *last = Some((Instant::now(), conn_key(conn), digest));
                    if digest.is_none() {
                        return;
                    }
                }
            }
        }
    }
}

/// Per connection: re-acknowledge what the ledger holds uncounted, then
/// batch acknowledgements into `ReceiptAck` frames, and store every tab the
/// enclave signs (after checking it under the attested key).
async fn tab_task(
    conn: Arc<EnclaveConnection>,
    label: Arc<str>,
    key: Vec<u8>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    mut acks: mpsc::UnboundedReceiver<(RequestId, [u8; 32])>,
    mut tabs: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    match ledger.uncounted(key.clone()).await {
        Ok(list) if !list.is_empty() => {
            info!(enclave = %label, receipts = list.len(), "acknowledging committed receipts no stored tab counts yet");
            for chunk in list.chunks(MAX_ACK_IDS) {
                let ack = ReceiptAck {
                    receipts: chunk.to_vec(),
                };
                if conn.send_ack(&ack).is_err() {
                    return;
                }
            }
        }
        Ok(_) => {}
        Err(e) => warn!(enclave = %label, error = %e, "could not read uncounted receipts"),
    }
    let mut batch: Vec<(RequestId, [u8; 32])> = Vec::new();
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            a = acks.recv() => {
                let Some(a) = a else { return };
                batch.push(a);
                let deadline = tokio::time::Instant::now() + ACK_DELAY;
                while batch.len() < MAX_ACK_IDS {
                    match tokio::time::timeout_at(deadline, acks.recv()).await {
                        Ok(Some(a)) => batch.push(a),
                        Ok(None) | Err(_) => break,
                    }
                }
                let ack = ReceiptAck { receipts: std::mem::take(&mut batch) };
                if conn.send_ack(&ack).is_err() {
                    return;
                }
            }
            t = tabs.recv() => {
                let Some(bytes) = t else { return };
                let update = match TabUpdate::from_bytes(&bytes) {
                    Ok(u) => u,
                    Err(e) => {
                        metrics.tabs(1, false);
                        warn!(enclave = %label, error = %e, "malformed tab update; closing the connection");
                        conn.close("malformed tab update");
                        return;
                    }
                };
                let mut good = Vec::with_capacity(update.tabs.len());
                for t in update.tabs {
                    if t.tab.verify(&t.signature, &key).is_err() {
                        metrics.tabs(1, false);
                        warn!(enclave = %label, "a tab does not verify under the attested receipt key; closing the connection");
                        conn.close("forged tab");
                        return;
                    }
                    good.push(stored_tab(&t));
                }
                let n = good.len();
                match ledger.store_tabs(key.clone(), good).await {
                    Ok(_) => metrics.tabs(n, true),
                    Err(e) => {
                        warn!(enclave = %label, error = %e, "could not store tabs; they are acknowledged again on the next connection");
                    }
                }
            }
        }
    }
}

fn stored_tab(t: &SignedTab) -> StoredTab {
    StoredTab {
        account: t.tab.account,
        count: t.tab.count,
        total: t.tab.total,
        signed: t.to_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclave_reasons_are_made_safe() {
        assert_eq!(sanitize_reason(b"bad key\r\nnext"), "bad key  next");
        assert_eq!(sanitize_reason(b""), "(no reason given)");
        assert_eq!(sanitize_reason(&[0xff, b'x']), "\u{fffd}x");
        let long = sanitize_reason(&[b'a'; 1000]);
        assert_eq!(long.chars().count(), MAX_REASON + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn last_flag_is_read_from_the_clear_header() {
        let mut c = vec![0u8; 9];
        assert_eq!(chunk_is_last(&c), Some(false));
        c[8] = 1;
        assert_eq!(chunk_is_last(&c), Some(true));
        assert_eq!(chunk_is_last(&c[..8]), None);
    }

    #[test]
    fn stream_ids_skip_zero_and_ids_in_use() {
        let mut t = StreamTable {
            next_id: u32::MAX,
            streams: HashMap::new(),
            closed: false,
        };
        let (tx, _rx) = mpsc::channel(1);
        t.streams.insert(1, tx);
        assert_eq!(t.allocate(), u32::MAX);
        assert_eq!(t.allocate(), 2, "0 is the connection, 1 is in use");
    }
}
