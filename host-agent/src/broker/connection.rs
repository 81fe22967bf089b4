//! One connection to an enclave: the adapter between the socket and the
//! connection state machine [`HostConn`], which allocates stream ids,
//! decides what each frame from the enclave means, holds a final chunk
//! until its receipt is committed, and batches acknowledgements. This file
//! moves bytes and events: a reader that feeds frames in and routes the
//! machine's events (to a stream's bounded channel, to the stream-0 caller,
//! to the tab task), and a writer that drains the machine's frames
//! (control before requests) and wakes for its acknowledgement timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cocoon_protocol::frame::FrameDecoder;
use cocoon_protocol::mux::{Broken, Call, HostConn, HostEvent, StreamEvent};
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::RequestId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, info, warn};

use super::{sanitize_reason, until_true, BrokerError};
use crate::config::{EnclaveAddr, Limits};
use crate::metrics::Metrics;

/// Bytes the writer coalesces into one write.
const WRITE_COALESCE: usize = 256 << 10;

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

/// The machine and where its events go, behind one lock.
struct Inner {
    machine: HostConn,
    /// Each live stream's channel.
    routes: HashMap<u32, mpsc::Sender<StreamEvent>>,
    /// Who waits for the stream-0 call's answer.
    call: Option<oneshot::Sender<HostEvent>>,
    closed: bool,
}

struct Shared {
    label: Arc<str>,
    inner: Mutex<Inner>,
    /// Wakes the writer: frames to write.
    wake: Notify,
    /// `Tab` payloads from the enclave.
    tabs: mpsc::UnboundedSender<Vec<u8>>,
    closed: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shutdown(&self, reason: &str) {
        let was_closed = self.closed.send_replace(true);
        let dropped = {
            let mut g = self.lock();
            g.closed = true;
            g.call = None;
            g.routes.clear();
            g.machine.on_close().len()
        };
        self.wake.notify_one();
        if !was_closed {
            info!(enclave = %self.label, reason, open_streams = dropped, "enclave connection closed");
        }
    }

    /// Drop stream `id` (its consumer stalled, or its owner went away
    /// before it ended): `Cancel` goes to the enclave if the stream was live
    /// and not cancelled yet, and nothing more is taken for it.
    fn cancel(&self, id: u32) {
        let sent = {
            let mut g = self.lock();
            g.routes.remove(&id);
            let sent = !g.closed && g.machine.cancel(id);
            g.machine.forget(id);
            sent
        };
        if sent {
            self.metrics.cancel_sent();
            self.wake.notify_one();
        }
    }
}

/// One connection to an enclave: a reader and a writer task around the
/// connection machine.
pub struct EnclaveConnection {
    shared: Arc<Shared>,
    evidence_lock: tokio::sync::Mutex<()>,
    stream_buffer: usize,
    pub(super) tab_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<u8>>>>,
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
    pub(super) fn start(
        io: BoxIo,
        label: Arc<str>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (rd, wr) = tokio::io::split(io);
        let (closed, _) = watch::channel(false);
        let (tabs_tx, tabs_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            label,
            inner: Mutex::new(Inner {
                machine: HostConn::new(),
                routes: HashMap::new(),
                call: None,
                closed: false,
            }),
            wake: Notify::new(),
            tabs: tabs_tx,
            closed,
            metrics,
        });
        tokio::spawn(read_loop(rd, shared.clone(), limits.stream_stall_timeout));
        tokio::spawn(write_loop(wr, shared.clone(), limits.idle_timeout));
        Arc::new(EnclaveConnection {
            shared,
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
        self.open(payload, HostConn::open_request)
    }

    fn open(
        &self,
        payload: &[u8],
        how: fn(&mut HostConn, &[u8]) -> Result<u32, cocoon_protocol::mux::Misuse>,
    ) -> Result<EnclaveStream, BrokerError> {
        let (tx, rx) = mpsc::channel(self.stream_buffer);
        let id = {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(BrokerError::ConnectionLost);
            }
            let id =
                how(&mut g.machine, payload).map_err(|e| BrokerError::Protocol(e.to_string()))?;
            g.routes.insert(id, tx);
            id
        };
        self.shared.wake.notify_one();
        Ok(EnclaveStream {
            id,
            rx,
            shared: self.shared.clone(),
            released: None,
            done: false,
            cancelled: false,
        })
    }

    /// Ask for a report bound to a client's `nonce`, on a stream of its own
    /// (several may be in flight; the enclave makes one at a time).
    pub async fn fetch_nonce_evidence(
        &self,
        nonce: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        let mut stream = self.open(nonce, HostConn::open_nonce_evidence)?;
        let ev = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| BrokerError::Timeout("evidence for a client nonce"))?
            .map_err(|_| BrokerError::ConnectionLost)?;
        match ev {
            StreamEvent::Evidence(bundle) => Ok(bundle),
            StreamEvent::Error(reason) => Err(BrokerError::Enclave(sanitize_reason(&reason))),
            StreamEvent::Broken(Broken::Unexpected(other)) => Err(BrokerError::Protocol(format!(
                "{other:?} frame in answer to a request for evidence"
            ))),
            other => Err(BrokerError::Protocol(format!(
                "{other:?} in answer to a request for evidence"
            ))),
        }
    }

    /// Ask for the evidence bundle on stream 0 (one request at a time).
    pub async fn fetch_evidence(&self, timeout: Duration) -> Result<Vec<u8>, BrokerError> {
        self.call(Call::Evidence, "evidence", timeout).await
    }

    /// Ask for the enclave's measured price table on stream 0.
    pub async fn fetch_prices(&self, timeout: Duration) -> Result<PriceTable, BrokerError> {
        let bytes = self.call(Call::Prices, "price table", timeout).await?;
        PriceTable::from_cbor(&bytes).map_err(|e| BrokerError::Protocol(e.to_string()))
    }

    /// Acknowledge receipts committed on an earlier connection that no
    /// stored tab counts yet.
    pub(super) fn acknowledge_again(&self, receipts: &[(RequestId, [u8; 32])]) {
        self.shared.lock().machine.acknowledge_again(receipts);
        self.shared.wake.notify_one();
    }

    /// One request/response on stream 0 (one at a time).
    async fn call(
        &self,
        call: Call,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        let _one_at_a_time = self.evidence_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(BrokerError::ConnectionLost);
            }
            g.call = Some(tx);
            g.machine.call(call);
        }
        self.shared.wake.notify_one();
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(BrokerError::ConnectionLost),
            Err(_) => {
                let mut g = self.shared.lock();
                g.call = None;
                g.machine.abandon_call();
                return Err(BrokerError::Timeout(what));
            }
        };
        match answer {
            HostEvent::Answer { payload, .. } => Ok(payload),
            HostEvent::CallFailed {
                reason: Some(reason),
                ..
            } => Err(BrokerError::Enclave(sanitize_reason(&reason))),
            HostEvent::CallFailed { got, .. } => Err(BrokerError::Protocol(format!(
                "{got:?} frame on stream 0 in answer to a {what} request"
            ))),
            other => Err(BrokerError::Protocol(format!(
                "{other:?} in answer to a {what} request"
            ))),
        }
    }
}

/// One request's stream on an enclave connection. Dropping it before the
/// enclave ended the stream sends `Cancel`.
pub struct EnclaveStream {
    id: u32,
    rx: mpsc::Receiver<StreamEvent>,
    shared: Arc<Shared>,
    /// The final chunk, released by [`EnclaveStream::commit`].
    released: Option<StreamEvent>,
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

impl EnclaveStream {
    /// The stream id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// What the enclave sent next on this stream (a final chunk only once
    /// the receipt is committed).
    pub async fn next(&mut self) -> Result<StreamEvent, StreamEnd> {
        if let Some(ev) = self.released.take() {
            self.done = true;
            return Ok(ev);
        }
        let ev = self.rx.recv().await;
        self.received(ev)
    }

    /// [`EnclaveStream::next`] if it is already there (`None`: nothing yet).
    pub fn try_next(&mut self) -> Option<Result<StreamEvent, StreamEnd>> {
        if let Some(ev) = self.released.take() {
            self.done = true;
            return Some(Ok(ev));
        }
        match self.rx.try_recv() {
            Ok(ev) => Some(self.received(Some(ev))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(self.received(None)),
        }
    }

    fn received(&mut self, ev: Option<StreamEvent>) -> Result<StreamEvent, StreamEnd> {
        match ev {
            Some(ev) => {
                if !matches!(ev, StreamEvent::Chunk(_) | StreamEvent::Receipt(_)) {
                    self.done = true;
                }
                Ok(ev)
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

    /// The receipt is durably committed: acknowledge it to the enclave
    /// (batched), so its tab counts it, and let the final chunk through.
    pub fn commit(&mut self, request_id: RequestId, account: [u8; 32]) {
        let released = {
            let mut g = self.shared.lock();
            let r = g
                .machine
                .commit(self.id, request_id, account, std::time::Instant::now());
            if matches!(r, Ok(Some(_))) {
                g.routes.remove(&self.id);
            }
            r
        };
        match released {
            Ok(held) => {
                self.released = held.map(StreamEvent::Final);
                self.shared.wake.notify_one();
            }
            Err(e) => {
                debug!(enclave = %self.shared.label, stream = self.id, error = %e, "commit on a stream that is gone")
            }
        }
    }

    /// The receipt was refused: the final chunk is never released.
    pub fn refuse(&mut self) {
        self.shared.lock().machine.refuse(self.id);
    }

    /// Tell the enclave to stop (the client went away); frames already on
    /// their way can still be read.
    pub fn cancel(&mut self) {
        if !self.done && !self.cancelled {
            self.cancelled = true;
            let sent = {
                let mut g = self.shared.lock();
                !g.closed && g.machine.cancel(self.id)
            };
            if sent {
                self.shared.metrics.cancel_sent();
                self.shared.wake.notify_one();
            }
        }
    }
}

impl Drop for EnclaveStream {
    fn drop(&mut self) {
        if self.done {
            // Ended: the machine forgot it then.
            self.shared.lock().routes.remove(&self.id);
        } else {
            // Cancel unless it was; forget it either way.
            self.shared.cancel(self.id);
        }
    }
}

async fn read_loop(mut rd: tokio::io::ReadHalf<BoxIo>, shared: Arc<Shared>, stall: Duration) {
    let mut closed = shared.closed.subscribe();
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut events = Vec::new();
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
        // Every frame this read completed goes through the machine under
        // one lock; then their events are delivered, in order.
        let failed = {
            let mut g = shared.lock();
            loop {
                let f = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break None,
                    Err(e) => break Some(format!("framing error: {e}")),
                };
                if let Err(v) = g.machine.on_frame(f) {
                    break Some(format!("protocol violation: {v}"));
                }
                while let Some(ev) = g.machine.poll_event() {
                    let route = match &ev {
                        HostEvent::Stream { stream, .. } => g.routes.get(stream).cloned(),
                        _ => None,
                    };
                    events.push((ev, route));
                }
            }
        };
        for (ev, route) in events.drain(..) {
            if deliver(&shared, ev, route, stall, &mut closed)
                .await
                .is_err()
            {
                break 'outer "closed by the host".to_string();
            }
        }
        if let Some(reason) = failed {
            break reason;
        }
    };
    shared.shutdown(&reason);
}

/// Hand one event to whoever waits for it. `Err`: the host closed the
/// connection meanwhile.
async fn deliver(
    shared: &Shared,
    ev: HostEvent,
    route: Option<mpsc::Sender<StreamEvent>>,
    stall: Duration,
    closed: &mut watch::Receiver<bool>,
) -> Result<(), ()> {
    match ev {
        HostEvent::Stream { stream, event } => {
            let Some(tx) = route else {
                debug!(enclave = %shared.label, stream, "event for a stream that is gone; dropped");
                return Ok(());
            };
            let ends = !matches!(event, StreamEvent::Chunk(_) | StreamEvent::Receipt(_));
            // Room in the stream's channel: no timer, no wait.
            let event = match tx.try_send(event) {
                Ok(()) => {
                    if ends {
                        shared.lock().routes.remove(&stream);
                    }
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    shared.lock().routes.remove(&stream);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(event)) => event,
            };
            tokio::select! {
                r = tokio::time::timeout(stall, tx.send(event)) => match r {
                    Ok(Ok(())) => {
                        if ends {
                            shared.lock().routes.remove(&stream);
                        }
                    }
                    Ok(Err(_)) => {
                        shared.lock().routes.remove(&stream);
                    }
                    Err(_) => {
                        warn!(enclave = %shared.label, stream, "stream consumer stalled; stream dropped and cancelled");
                        shared.cancel(stream);
                    }
                },
                _ = until_true(closed) => return Err(()),
            }
        }
        HostEvent::Answer { .. } | HostEvent::CallFailed { .. } => {
            if let Some(tx) = shared.lock().call.take() {
                let _ = tx.send(ev);
            }
        }
        HostEvent::Tab(bytes) => {
            let _ = shared.tabs.send(bytes);
        }
        HostEvent::Dropped { stream, kind } => {
            debug!(enclave = %shared.label, stream, ?kind, "frame for a stream that is gone; dropped");
        }
        other => debug!(enclave = %shared.label, event = ?other, "connection event"),
    }
    Ok(())
}

async fn write_loop(
    mut wr: tokio::io::WriteHalf<BoxIo>,
    shared: Arc<Shared>,
    write_timeout: Duration,
) {
    let mut closed = shared.closed.subscribe();
    let mut out = Vec::new();
    loop {
        let due = {
            let mut g = shared.lock();
            if g.closed {
                break;
            }
            g.machine.handle_timeout(std::time::Instant::now());
            while out.len() < WRITE_COALESCE {
                match g.machine.poll_transmit() {
                    Some(bytes) => out.extend_from_slice(&bytes),
                    None => break,
                }
            }
            g.machine.poll_timeout()
        };
        if out.is_empty() {
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = until_true(&mut closed) => break,
                _ = shared.wake.notified() => {}
                _ = sleep => {}
            }
            continue;
        }
        let write = async {
            wr.write_all(&out).await?;
            wr.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => out.clear(),
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
