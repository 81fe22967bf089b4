//! One host connection: the adapter between the socket, the request tasks
//! and the connection state machine ([`EnclaveConn`]), which decides what
//! every frame means and which frames leave. This file only moves bytes:
//! a reader that feeds frames in and acts on the machine's events, request
//! tasks that call the machine through [`StreamCtx`], and a writer that
//! drains what the machine made, in order, through a bounded queue.
//!
//! Every call into the machine drains what it made in the same critical
//! section, so frames leave a stream in the order its one producer made
//! them; the bounded queue makes the producers (and the reader) wait while
//! the host does not read.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::request::Abort;
use cocoon_protocol::frame;
use cocoon_protocol::frame::FrameDecoder;
use cocoon_protocol::message::ResponseEvent;
use cocoon_protocol::mux::{CancelToken, EnclaveConn, EnclaveEvent, Finished, Misuse, Transmit};
use cocoon_protocol::receipt::UsageReceipt;
use cocoon_protocol::stream::{ResponseSealer, CHUNK_TAG_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{lock, Enclave};
use crate::transport::Connection;

/// Frames queued for one connection's writer before producers wait.
const WRITE_QUEUE_FRAMES: usize = 256;
/// Frames written before the writer flushes, when more keep coming.
const WRITE_BATCH_FRAMES: usize = 64;
/// Bytes read from a connection at a time.
const READ_BUFFER: usize = 64 << 10;

/// Why a connection's reader stopped.
enum ConnEnd {
    /// The host closed it (or reading failed).
    Closed,
    /// The enclave is shutting down.
    Shutdown,
    /// The host broke the protocol; close without flushing.
    Violation(&'static str),
}

/// The machine of one connection and its writer's queue.
pub(super) struct Conn {
    pub(super) id: u64,
    machine: Mutex<EnclaveConn>,
    tx: mpsc::Sender<Transmit>,
}

/// The connection went away (or the stream was cancelled).
pub(super) struct Gone;

/// The frames one call into the machine made: most calls make one (a
/// chunk), kept inline; only more allocate.
pub(super) type Out =
    std::iter::Chain<std::option::IntoIter<Transmit>, std::vec::IntoIter<Transmit>>;

impl Conn {
    /// Call the machine and take the frames the call made.
    fn with<R>(&self, f: impl FnOnce(&mut EnclaveConn) -> R) -> (R, Out) {
        let mut m = lock(&self.machine);
        let r = f(&mut m);
        let first = m.poll_transmit();
        let rest: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
        (r, first.into_iter().chain(rest))
    }

    /// Queue frames from async context (waits while the queue is full).
    async fn send(&self, out: Out) -> Result<(), Gone> {
        for t in out {
            self.tx.send(t).await.map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Queue frames from a blocking thread.
    fn send_blocking(&self, out: Out) -> Result<(), Gone> {
        for t in out {
            self.tx.blocking_send(t).map_err(|_| Gone)?;
        }
        Ok(())
    }
}

/// One accepted stream, as its request (or nonce report) sees it.
#[derive(Clone)]
pub(super) struct StreamCtx {
    pub(super) conn: Arc<Conn>,
    pub(super) id: u32,
    token: CancelToken,
}

impl StreamCtx {
    pub(super) fn conn_id(&self) -> u64 {
        self.conn.id
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    fn misuse(&self, e: &Misuse) -> Gone {
        error!(conn = self.conn.id, stream = self.id, error = %e, "internal error: a frame the connection machine refuses");
        Gone
    }

    /// Seal `event` as the next (not final) response chunk and queue it.
    /// The event is encoded straight behind the room for the frame and
    /// chunk headers, sealed where it lies and queued as that buffer: one
    /// allocation, no copy. Blocking: only on a blocking thread. `Err`: stop,
    /// the stream is cancelled or gone (or, never expected, sealing failed).
    pub(super) fn send_event(
        &self,
        sealer: &mut ResponseSealer,
        event: &ResponseEvent,
    ) -> Result<(), Abort> {
        let room = frame::HEADER_LEN + sealer.headroom();
        let body = match event {
            ResponseEvent::Embedding { vector, .. } => vector.len() * 4 + 32,
            ResponseEvent::Text(t) => t.len() + 16,
            _ => 256,
        };
        let mut buf = Vec::with_capacity(room + body + CHUNK_TAG_LEN);
        buf.resize(room, 0);
        event.encode_into(&mut buf);
        sealer
            .seal_in_place_at(&mut buf, frame::HEADER_LEN, false)
            .map_err(|_| Abort::Sealing)?;
        self.chunk_framed(buf).map_err(|Gone| Abort::Cancelled)
    }

    /// Queue one response chunk built where its frame lies (frame header
    /// room, then the sealed chunk; see
    /// [`EnclaveConn::chunk_framed`](cocoon_protocol::mux::EnclaveConn::chunk_framed)),
    /// with no copy. Blocking.
    fn chunk_framed(&self, framed: Vec<u8>) -> Result<(), Gone> {
        match self
            .conn
            .with(|m| m.chunk_framed(self.id, &self.token, framed))
        {
            (Ok(true), out) => self.conn.send_blocking(out),
            (Ok(false), _) => Err(Gone),
            (Err(e), _) => Err(self.misuse(&e)),
        }
    }

    /// Record the receipt as pending and queue it and the final chunk;
    /// frees the stream id. Blocking.
    pub(super) fn finish(
        &self,
        receipt: &UsageReceipt,
        signed: &[u8],
        last: &[u8],
    ) -> Result<Finished, Gone> {
        match self
            .conn
            .with(|m| m.finish(self.id, &self.token, receipt, signed, last))
        {
            (Ok(f), out) => self.conn.send_blocking(out).map(|()| f),
            (Err(e), _) => Err(self.misuse(&e)),
        }
    }

    /// Free the stream id without sending anything.
    pub(super) fn close(&self) {
        let ((), _nothing_sent) = self.conn.with(|m| m.close(self.id, &self.token));
    }

    /// Free the stream id and send one `Error` frame. Blocking.
    pub(super) fn fail(&self, reason: &str) {
        let ((), out) = self.conn.with(|m| m.fail(self.id, &self.token, reason));
        let _ = self.conn.send_blocking(out);
    }

    /// As [`StreamCtx::fail`], from async context.
    async fn fail_async(&self, reason: &str) {
        let ((), out) = self.conn.with(|m| m.fail(self.id, &self.token, reason));
        let _ = self.conn.send(out).await;
    }
}

impl Enclave {
    pub(super) async fn connection(
        self: Arc<Self>,
        conn: Connection,
        id: u64,
        stop: watch::Receiver<bool>,
    ) {
        let (rd, wr) = tokio::io::split(conn);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let writer = tokio::spawn(write_frames(wr, rx, id));
        let conn = Arc::new(Conn {
            id,
            machine: Mutex::new(EnclaveConn::new(
                self.config.max_streams_per_connection,
                self.prices_cbor.clone(),
                self.tabs.clone(),
            )),
            tx,
        });
        let end = self.read_frames(rd, &conn, stop).await;
        let ((), _nothing_sent) = conn.with(EnclaveConn::on_close);
        // The writer ends when the last request task lets go of the queue.
        drop(conn);
        match end {
            ConnEnd::Violation(why) => {
                warn!(conn = id, reason = why, "closing the host connection");
                writer.abort();
            }
            ConnEnd::Closed | ConnEnd::Shutdown => {
                let _ = writer.await;
                info!(conn = id, "host connection closed");
            }
        }
    }

    async fn read_frames(
        self: &Arc<Self>,
        mut rd: ReadHalf<Connection>,
        conn: &Arc<Conn>,
        mut stop: watch::Receiver<bool>,
    ) -> ConnEnd {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let read = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = stop.changed() => return ConnEnd::Shutdown,
            };
            let n = match read {
                Ok(0) => {
                    if decoder.finish().is_err() {
                        debug!(
                            conn = conn.id,
                            "the host closed the connection inside a frame"
                        );
                    }
                    return ConnEnd::Closed;
                }
                Ok(n) => n,
                Err(e) => {
                    debug!(conn = conn.id, error = %e, "reading from the host failed");
                    return ConnEnd::Closed;
                }
            };
            // Frames before a bad header are still served; the decoder
            // reports the error once they are pulled.
            let _ = decoder.push(buf.get(..n).unwrap_or_default());
            loop {
                let f = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(conn = conn.id, error = %e, "bytes from the host are not frames");
                        return ConnEnd::Violation("undecodable frame");
                    }
                };
                let draining = self.draining.load(Ordering::SeqCst);
                let (r, out) = conn.with(|m| {
                    m.set_draining(draining);
                    m.on_frame(f)
                });
                if let Err(v) = r {
                    warn!(conn = conn.id, error = %v, "the host broke the frame protocol");
                    return ConnEnd::Violation("protocol violation");
                }
                if conn.send(out).await.is_err() {
                    return ConnEnd::Closed;
                }
                if self.on_events(conn).await.is_err() {
                    return ConnEnd::Closed;
                }
            }
        }
    }

    /// Act on what the machine asks for.
    async fn on_events(self: &Arc<Self>, conn: &Arc<Conn>) -> Result<(), Gone> {
        loop {
            let (event, _) = conn.with(EnclaveConn::poll_event);
            let Some(event) = event else { return Ok(()) };
            match event {
                EnclaveEvent::EvidenceWanted => {
                    let published = self.evidence.current();
                    debug!(
                        conn = conn.id,
                        size = published.bundle_cbor.len(),
                        refresh = published.claims.refresh,
                        "evidence sent"
                    );
                    let (r, out) = conn.with(|m| m.evidence(&published.bundle_cbor));
                    if let Err(e) = r {
                        error!(conn = conn.id, error = %e, "the evidence does not fit in a frame");
                    }
                    conn.send(out).await?;
                }
                EnclaveEvent::Request {
                    stream,
                    token,
                    payload,
                } => {
                    let s = StreamCtx {
                        conn: conn.clone(),
                        id: stream,
                        token,
                    };
                    // A free permit is taken here, so requests start in the
                    // order they came; the rest wait in the semaphore's
                    // queue.
                    let permit = self.permits.clone().try_acquire_owned().ok();
                    tokio::spawn(self.clone().request_task(s, payload, permit));
                }
                EnclaveEvent::NonceEvidence {
                    stream,
                    token,
                    nonce,
                } => {
                    let s = StreamCtx {
                        conn: conn.clone(),
                        id: stream,
                        token,
                    };
                    tokio::spawn(self.clone().nonce_evidence_task(s, nonce));
                }
                EnclaveEvent::Cancelled { stream, by_error } => {
                    let kind = if by_error { "Error" } else { "Cancel" };
                    info!(conn = conn.id, stream, kind, "stream cancelled by the host");
                }
                EnclaveEvent::Refused { stream, reason } => {
                    debug!(conn = conn.id, stream, reason, "error frame");
                }
                EnclaveEvent::Acknowledged {
                    receipts,
                    counted,
                    tabs,
                } => {
                    debug!(
                        conn = conn.id,
                        acknowledged = receipts,
                        counted,
                        tabs,
                        pending = self.tabs.pending(),
                        "receipts acknowledged"
                    );
                }
                other => debug!(conn = conn.id, event = ?other, "connection event"),
            }
        }
    }

    /// Make a report bound to a client's nonce (one at a time, on a blocking
    /// thread) and answer it on the stream it was asked on.
    async fn nonce_evidence_task(self: Arc<Self>, stream: StreamCtx, nonce: Vec<u8>) {
        let Ok(_permit) = self.nonce_reports.clone().acquire_owned().await else {
            return;
        };
        if stream.is_cancelled() {
            return stream.close();
        }
        let this = self.clone();
        let now = self.clock.now();
        let made = tokio::task::spawn_blocking(move || this.evidence.for_nonce(&nonce, now)).await;
        let failure;
        let answer = match &made {
            Ok(Ok(p)) => {
                info!(conn = stream.conn_id(), stream = stream.id, evidence_digest = %hex::encode(p.digest.0), "evidence made for a client nonce");
                Ok(p.bundle_cbor.as_slice())
            }
            Ok(Err(e)) => {
                warn!(conn = stream.conn_id(), stream = stream.id, error = %e, "evidence for a client nonce failed");
                failure = e.to_string();
                Err(failure.as_str())
            }
            Err(_) => Err("internal error in the enclave"),
        };
        let (r, out) = stream
            .conn
            .with(|m| m.answer_nonce(stream.id, &stream.token, answer));
        let sent = match r {
            Ok(()) => stream.conn.send(out).await,
            Err(e) => Err(stream.misuse(&e)),
        };
        if sent.is_err() {
            debug!(
                conn = stream.conn_id(),
                stream = stream.id,
                "the host connection went away before the evidence was sent"
            );
        }
    }

    /// Wait for a permit, then run the request on a blocking thread.
    async fn request_task(
        self: Arc<Self>,
        stream: StreamCtx,
        payload: Vec<u8>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let permit = match permit {
            Some(p) => p,
            None => match self.permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let this = self.clone();
        let s = stream.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.serve_request(&s, payload);
        })
        .await;
        if done.is_err() {
            error!(
                conn = stream.conn_id(),
                stream = stream.id,
                "request task failed"
            );
            // Not `fail`: that blocks, and this is async context.
            stream.fail_async("internal error in the enclave").await;
        }
    }
}

/// The connection's writer: frames from the queue to the socket, flushed
/// when the queue runs dry or every [`WRITE_BATCH_FRAMES`]. Frames of a
/// stream cancelled since they were queued are dropped.
async fn write_frames(wr: WriteHalf<Connection>, mut rx: mpsc::Receiver<Transmit>, conn: u64) {
    let mut w = BufWriter::with_capacity(READ_BUFFER, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(out) = next.take() {
            if !out.is_dropped() {
                if let Err(e) = w.write_all(&out.bytes).await {
                    debug!(conn, error = %e, "writing to the host failed");
                    return;
                }
            }
            batch += 1;
            if batch < WRITE_BATCH_FRAMES {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = w.flush().await {
            debug!(conn, error = %e, "writing to the host failed");
            return;
        }
    }
    let _ = w.shutdown().await;
}
