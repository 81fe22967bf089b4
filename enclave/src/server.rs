//! The enclave runtime: boot-time keys, claims and evidence, and the frame
//! protocol served on every host connection.
//!
//! Owns [`Enclave`] — the HPKE key requests are sealed to, the receipt
//! signing key, the claims that name both, the evidence bundle that binds
//! them, the receipt counter and the replay window — and [`Enclave::serve`],
//! which accepts host connections and answers their frames. Wire formats
//! come from `cocoon-protocol` (frames, sealed requests, response chunks,
//! receipts, request bodies, response events); evidence from an
//! [`AttestationProvider`]; answers from an [`InferenceBackend`]. Plaintext
//! (request bodies, generated text, embeddings) exists only inside
//! [`Enclave`]'s request path and the backend, and is never logged: logs
//! carry connection and stream numbers, request ids, sizes, model names,
//! token counts and error kinds.
//!
//! # Frames, as the enclave answers them
//!
//! The host connects (as many connections as it likes) and multiplexes
//! requests on each by stream id. The host must read and write concurrently:
//! the enclave stops reading a connection while that connection's bounded
//! write queue is full.
//!
//! * `EvidenceRequest` on stream 0, empty payload → `EvidenceResponse` on
//!   stream 0 with the current bundle ([`Enclave::bundle_cbor`]: the boot
//!   report, or the newest refresh; the enclave re-attests every
//!   `evidence_refresh_secs` with the same keys). A non-empty payload on
//!   stream 0 → `Error`.
//! * `EvidenceRequest` on stream N ≠ 0 with a client nonce (1 to 64 bytes)
//!   → `EvidenceResponse` on N with a report whose claims carry that nonce
//!   (one such report is made at a time), or `Error` on N; N is free again
//!   after the answer. Requests sealed to that report's digest open too.
//! * `Request` on stream N ≠ 0 with a `SignedRequest` (the sealed request,
//!   the paying account's key and its signature over the request id;
//!   `cocoon_protocol::request`):
//!   - refused with one `Error` frame on N, and nothing else (no receipt,
//!     nothing billed), when: N is 0; N is already open on this connection;
//!     the connection has `max_streams_per_connection` open streams; the
//!     enclave is shutting down; the payload is not a signed request; the
//!     account the billing metadata names did not sign this request id; the
//!     request has expired or its expiry lies more than
//!     `max_request_lifetime_secs` ahead (`replay`); it does not open under
//!     this enclave's key and evidence digest; it names a model this enclave
//!     does not serve, or prices other than its measured ones; its body is
//!     not a chat or embeddings request; its id was served since boot and
//!     has not expired; the replay memory is full.
//!   - otherwise answered with `ResponseChunk` frames on N (one per token
//!     or embedding, sealed for the client), then exactly one `Receipt`
//!     frame (the host's copy of the signed receipt), then the final
//!     `ResponseChunk` (last flag set) whose `End` event carries the same
//!     receipt bytes. The receipt always comes before the final chunk.
//!     A failing backend still ends this way, with `finish = error` and the
//!     usage actually consumed. Completion tokens never exceed the request's `max_tokens`.
//!   - Once the final chunk or the `Error` frame is queued, N is free again.
//! * `Cancel` (or `Error`) on an open stream N: work on N stops and nothing
//!   more is written for N (frames already on the wire may still arrive); N
//!   stays in use until the work has stopped, so use a fresh id.
//! * `ResponseChunk`, `Receipt` or `EvidenceResponse` from the host, or bytes
//!   that do not decode as frames: the connection is closed at once.
//!   Closing a connection (either side) cancels its open streams.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_attestation::bundle::{Claims, EvidenceBundle, ModelDigest};
use cocoon_protocol::frame::{self, Frame, FrameDecoder, FrameType, CONNECTION_STREAM};
use cocoon_protocol::message::{
    ChatMessage, FinishReason, InferenceRequest, ResponseEvent, MAX_EMBEDDING_DIM, MAX_ERROR_TEXT,
};
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::request::{RequestAuthError, SignedRequest};
use cocoon_protocol::seal::{
    open_request, BillingMeta, EvidenceDigest, HpkeSecretKey, LifetimeError, MAX_MODEL_NAME,
};
use cocoon_protocol::stream::ResponseSealer;
use cocoon_protocol::tabs::ReceiptAck;
use rand_core::{CryptoRng, OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::attest::{AttestError, AttestationProvider};
use crate::backend::{Finish, InferenceBackend};
use crate::config::{ConfigError, EnclaveConfig};
use crate::evidence::{EvidenceState, Published};
use crate::replay::{EnclaveClock, Refused, ReplayMemory};
use crate::tabs::{Pending, TabBook, MAX_PENDING};
use crate::transport::{Connection, Listener};

/// How long [`Enclave::serve`] waits for in-flight requests after the
/// shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Frames queued for one connection's writer before producers wait.
const WRITE_QUEUE_FRAMES: usize = 256;
/// Frames written before the writer flushes, when more keep coming.
const WRITE_BATCH_FRAMES: usize = 64;
/// Bytes read from a connection at a time.
const READ_BUFFER: usize = 64 << 10;
/// Longest text in one chunk; a longer token text is split.
const MAX_TEXT_PIECE: usize = 64 << 10;
/// How long shutdown waits for the host to acknowledge the last receipts.
const ACK_DEADLINE: Duration = Duration::from_secs(2);
/// How long shutdown waits for writers to flush after the drain.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Why an enclave cannot boot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The attestation provider failed.
    #[error("cannot obtain evidence at boot: {0}")]
    Attest(#[from] AttestError),
    /// The backend's model list cannot go into the claims.
    #[error("backend models: {0}")]
    Models(String),
    /// GPU evidence could not be taken.
    #[error("{0}")]
    Gpu(String),
    /// A client nonce is out of bounds.
    #[error("{0}")]
    Nonce(String),
    /// The claims or the bundle are too large for the wire.
    #[error("{what} is {len} bytes, more than the {max}-byte limit; serve fewer models or shorter names")]
    TooLarge {
        /// Which.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A booted enclave: keys, claims and evidence, ready to serve.
pub struct Enclave {
    config: EnclaveConfig,
    provider: Arc<dyn AttestationProvider>,
    backend: Arc<dyn InferenceBackend>,
    hpke_sk: HpkeSecretKey,
    receipt_signer: ReceiptSigner,
    /// The evidence published now and every claims digest issued.
    evidence: EvidenceState,
    /// One report for a client's nonce at a time.
    nonce_reports: Arc<Semaphore>,
    /// Served models (from the claims), their base prices and the
    /// multiplier bounds.
    prices: PriceTable,
    /// `prices` as the `PriceTable` frame's payload.
    prices_cbor: Vec<u8>,
    /// The next receipt's `enclave_seq`.
    next_seq: AtomicU64,
    /// Pending receipts and the accounts' tabs.
    tabs: TabBook,
    /// Served request ids, each until its expiry.
    replay: Mutex<ReplayMemory>,
    /// The enclave's non-decreasing time, for request expiry.
    clock: EnclaveClock,
    permits: Arc<Semaphore>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = self.evidence.current();
        f.debug_struct("Enclave")
            .field("provider", &self.provider.kind())
            .field("evidence_digest", &hex::encode(now.digest.0))
            .field("image_id", &now.claims.image_id)
            .field("epoch", &now.claims.epoch)
            .field("refresh", &now.claims.refresh)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most [`MAX_ERROR_TEXT`] bytes, cut at a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

impl Enclave {
    /// Boot: make the HPKE and receipt keys with `rng`, build the claims
    /// (image id, the backend's models, the config digest, epoch = now),
    /// and obtain evidence binding them. Response nonces later come from the
    /// OS generator.
    pub fn new(
        config: EnclaveConfig,
        provider: Arc<dyn AttestationProvider>,
        backend: Arc<dyn InferenceBackend>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Enclave, EnclaveError> {
        Self::with_gpu(config, provider, backend, None, rng)
    }

    /// As [`Enclave::new`], and with `gpu` take GPU evidence for this
    /// boot's session nonce and bind it into the claims.
    pub fn with_gpu(
        config: EnclaveConfig,
        provider: Arc<dyn AttestationProvider>,
        backend: Arc<dyn InferenceBackend>,
        gpu: Option<&crate::gpu::GpuSetup>,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Enclave, EnclaveError> {
        config.validate()?;
        let models: Vec<ModelDigest> = backend.models();
        if models.is_empty() {
            return Err(EnclaveError::Models(
                "the backend serves no model; an enclave needs at least one".into(),
            ));
        }
        let mut prices = BTreeMap::new();
        for m in &models {
            if m.name.is_empty() || m.name.len() > MAX_MODEL_NAME {
                return Err(EnclaveError::Models(format!(
                    "model name {:?} must be 1 to {MAX_MODEL_NAME} bytes",
                    m.name
                )));
            }
            let price = config.price(&m.name).unwrap_or_else(|| {
                warn!(model = %m.name, "no price configured for this model; its receipts charge 0");
                UnitPrice::default()
            });
            if prices.insert(m.name.clone(), price).is_some() {
                return Err(EnclaveError::Models(format!(
                    "model {:?} is listed twice",
                    m.name
                )));
            }
        }
        for model in config.prices.keys() {
            if !prices.contains_key(model) {
                warn!(model = %model, "a price is configured for a model the backend does not serve");
            }
        }
        let prices = PriceTable {
            models: prices,
            min_multiplier_milli: config.pricing.min_multiplier_milli,
            max_multiplier_milli: config.pricing.max_multiplier_milli,
        };
        prices
            .validate()
            .map_err(|e| EnclaveError::Models(format!("price table: {e}")))?;
        let prices_cbor = prices.to_cbor();
        let hpke_sk = HpkeSecretKey::generate(rng);
        let receipt_signer = ReceiptSigner::generate(rng);
        let hpke_public_key = hpke_sk.public_key().to_bytes().to_vec();
        let epoch = unix_now();
        let gpu_bundle = match gpu {
            Some(g) => {
                let (b, digest) = g
                    .take(&hpke_public_key, epoch)
                    .map_err(|e| EnclaveError::Gpu(e.to_string()))?;
                info!(provider = g.provider_name(), evidence_digest = %hex::encode(digest), "GPU evidence taken for this boot's nonce");
                Some((b, digest))
            }
            None => None,
        };
        let template = Claims {
            hpke_public_key,
            receipt_public_key: receipt_signer.public_key_sec1(),
            image_id: config.image_id.clone(),
            model_digests: models,
            config_digest: config.digest(),
            gpu_evidence_digest: gpu_bundle.as_ref().map(|(_, d)| *d),
            epoch,
            issued_at: epoch,
            refresh: 0,
            client_nonce: None,
            disk_verity_root: config.disk_verity_root,
            provider_settings: config.applied.as_ref().map(|a| a.cbor.clone()),
        };
        if config.prices_from == crate::config::PricesFrom::Provider && config.applied.is_none() {
            return Err(EnclaveError::Models(
                "this release takes its prices from the provider's settings, and none were given"
                    .into(),
            ));
        }
        let evidence = EvidenceState::boot(template, gpu_bundle.map(|(b, _)| b), provider.clone())?;
        let published = evidence.current();
        info!(
            provider = provider.kind(),
            evidence_digest = %hex::encode(published.digest.0),
            image_id = %published.claims.image_id,
            models = published.claims.model_digests.len(),
            epoch = published.claims.epoch,
            "keys made and evidence obtained"
        );
        Ok(Enclave {
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            replay: Mutex::new(ReplayMemory::new(config.replay_window)),
            clock: EnclaveClock::default(),
            config,
            provider,
            backend,
            hpke_sk,
            receipt_signer,
            evidence,
            nonce_reports: Arc::new(Semaphore::new(1)),
            prices,
            prices_cbor,
            tabs: TabBook::new(),
            next_seq: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        })
    }

    /// SHA-256 of the current claims: what requests are sealed under
    /// (requests sealed to an earlier report of this boot still open).
    pub fn evidence_digest(&self) -> EvidenceDigest {
        self.evidence.current().digest
    }

    /// The evidence published now: the boot report, or the newest refresh.
    pub fn published(&self) -> Arc<Published> {
        self.evidence.current()
    }

    /// The current evidence bundle.
    pub fn bundle(&self) -> EvidenceBundle {
        self.evidence.current().bundle.clone()
    }

    /// The current bundle's wire bytes (the `EvidenceResponse` payload).
    pub fn bundle_cbor(&self) -> Vec<u8> {
        self.evidence.current().bundle_cbor.clone()
    }

    /// The current claims (decoded).
    pub fn claims(&self) -> Claims {
        self.evidence.current().claims.clone()
    }

    /// Re-attest now (blocking): a new report with the same keys, published
    /// in place of the current one. The server does this every
    /// `evidence_refresh_secs`.
    pub fn refresh_evidence(&self) -> Result<Arc<Published>, EnclaveError> {
        self.evidence.refresh(self.clock.now())
    }

    /// The configuration it runs.
    pub fn config(&self) -> &EnclaveConfig {
        &self.config
    }

    /// The attestation provider's kind (`"simulated"`, ...).
    pub fn provider_kind(&self) -> &'static str {
        self.provider.kind()
    }

    /// Accept host connections on `listener` until `shutdown` completes;
    /// then stop accepting (the listener is dropped), refuse new requests,
    /// wait up to [`DRAIN_DEADLINE`] for the ones in flight, let the
    /// connections flush, and return.
    pub async fn serve(self: Arc<Self>, listener: Listener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let refresher = tokio::spawn(self.clone().refresh_evidence_every(
            Duration::from_secs(self.config.evidence_refresh_secs),
            stop_rx.clone(),
        ));
        let mut connections = JoinSet::new();
        let mut next_conn = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((conn, peer)) => {
                        next_conn += 1;
                        info!(conn = next_conn, peer = %peer, "host connected");
                        connections.spawn(self.clone().connection(conn, next_conn, stop_rx.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a host connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        refresher.abort();
        self.draining.store(true, Ordering::SeqCst);
        info!(
            deadline_s = DRAIN_DEADLINE.as_secs(),
            "shutting down: not accepting connections or requests; waiting for in-flight requests"
        );
        let all = u32::try_from(self.config.max_concurrent).unwrap_or(u32::MAX);
        match tokio::time::timeout(DRAIN_DEADLINE, self.permits.acquire_many(all)).await {
            Ok(_) => info!("in-flight requests finished"),
            Err(_) => warn!("drain deadline passed; abandoning requests still running"),
        }
        // Receipts the host has not acknowledged yet are never charged once
        // this boot ends (its key dies with it): give the host's
        // acknowledgements a moment to arrive.
        let waiting = if connections.is_empty() {
            Duration::ZERO
        } else {
            ACK_DEADLINE
        };
        let acked = tokio::time::timeout(waiting, async {
            while self.tabs.pending() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if acked.is_err() {
            warn!(
                pending = self.tabs.pending(),
                "receipts still unacknowledged at shutdown; they will never be charged"
            );
        }
        let _ = stop_tx.send(true);
        let flushed = tokio::time::timeout(FLUSH_DEADLINE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if flushed.is_err() {
            warn!("connections did not close in time; dropping them");
        }
        connections.abort_all();
    }

    /// Re-attest every `period` (same keys, a new report), until `stop`.
    /// A failed refresh keeps the current evidence and is logged; the
    /// clients' `max_evidence_age` decides how long that stays acceptable.
    async fn refresh_evidence_every(
        self: Arc<Self>,
        period: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.refresh_evidence()).await {
                Ok(Ok(p)) => info!(
                    evidence_digest = %hex::encode(p.digest.0),
                    refresh = p.claims.refresh,
                    issued_at = p.claims.issued_at,
                    "evidence refreshed"
                ),
                Ok(Err(e)) => {
                    error!(error = %e, "evidence refresh failed; the previous evidence stays published")
                }
                Err(_) => error!("evidence refresh failed (internal error)"),
            }
        }
    }

    async fn connection(self: Arc<Self>, conn: Connection, id: u64, stop: watch::Receiver<bool>) {
        let (rd, wr) = tokio::io::split(conn);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let writer = tokio::spawn(write_frames(wr, rx, id));
        let streams = Arc::new(StreamTable::default());
        let end = self.read_frames(rd, &tx, &streams, stop, id).await;
        streams.cancel_all();
        drop(tx);
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
        tx: &mpsc::Sender<Outgoing>,
        streams: &Arc<StreamTable>,
        mut stop: watch::Receiver<bool>,
        conn: u64,
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
                        debug!(conn, "the host closed the connection inside a frame");
                    }
                    return ConnEnd::Closed;
                }
                Ok(n) => n,
                Err(e) => {
                    debug!(conn, error = %e, "reading from the host failed");
                    return ConnEnd::Closed;
                }
            };
            // Frames before a bad header are still served; the decoder
            // reports the error once they are pulled.
            let _ = decoder.push(buf.get(..n).unwrap_or_default());
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => {
                        if let Err(end) = self.on_frame(f, tx, streams, conn).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(conn, error = %e, "bytes from the host are not frames");
                        return ConnEnd::Violation("undecodable frame");
                    }
                }
            }
        }
    }

    async fn on_frame(
        self: &Arc<Self>,
        f: Frame,
        tx: &mpsc::Sender<Outgoing>,
        streams: &Arc<StreamTable>,
        conn: u64,
    ) -> Result<(), ConnEnd> {
        let sid = f.stream_id;
        match f.kind {
            FrameType::EvidenceRequest if sid == CONNECTION_STREAM => {
                if f.payload.is_empty() {
                    let published = self.evidence.current();
                    debug!(
                        conn,
                        size = published.bundle_cbor.len(),
                        refresh = published.claims.refresh,
                        "evidence sent"
                    );
                    send_now(tx, sid, FrameType::EvidenceResponse, &published.bundle_cbor).await
                } else {
                    send_error(
                        tx,
                        sid,
                        "evidence for a client nonce is asked for on a stream of its own, not stream 0",
                    )
                    .await
                }
            }
            FrameType::EvidenceRequest => {
                // A report bound to a client's nonce: its own stream, so
                // several can be in flight; one is made at a time.
                let Some(stream) = self.open_stream(tx, streams, conn, sid).await? else {
                    return Ok(());
                };
                tokio::spawn(self.clone().nonce_evidence_task(stream, f.payload));
                Ok(())
            }
            FrameType::Request => {
                if sid == CONNECTION_STREAM {
                    return send_error(tx, sid, "requests need a stream id other than 0").await;
                }
                if self.draining.load(Ordering::SeqCst) {
                    return send_error(
                        tx,
                        sid,
                        "the enclave is shutting down and takes no new requests",
                    )
                    .await;
                }
                let Some(stream) = self.open_stream(tx, streams, conn, sid).await? else {
                    return Ok(());
                };
                tokio::spawn(self.clone().request_task(stream, f.payload));
                Ok(())
            }
            FrameType::Cancel | FrameType::Error => {
                if streams.cancel(sid) {
                    info!(conn, stream = sid, kind = ?f.kind, "stream cancelled by the host");
                }
                Ok(())
            }
            FrameType::ReceiptAck => {
                if sid != CONNECTION_STREAM {
                    return send_error(tx, sid, "receipt acknowledgements belong on stream 0")
                        .await;
                }
                let ack = match ReceiptAck::from_bytes(&f.payload) {
                    Ok(ack) => ack,
                    Err(e) => {
                        warn!(conn, error = %e, "malformed receipt acknowledgement");
                        return send_error(
                            tx,
                            sid,
                            &format!("malformed receipt acknowledgement: {e}"),
                        )
                        .await;
                    }
                };
                let (update, counted) = self.tabs.acknowledge(&ack, &self.receipt_signer);
                debug!(
                    conn,
                    acknowledged = ack.receipts.len(),
                    counted,
                    tabs = update.tabs.len(),
                    pending = self.tabs.pending(),
                    "receipts acknowledged"
                );
                send_now(tx, sid, FrameType::Tab, &update.to_bytes()).await
            }
            FrameType::PriceTableRequest => {
                if sid != CONNECTION_STREAM {
                    send_error(tx, sid, "price table requests belong on stream 0").await
                } else {
                    send_now(tx, sid, FrameType::PriceTable, &self.prices_cbor).await
                }
            }
            FrameType::ResponseChunk
            | FrameType::Receipt
            | FrameType::EvidenceResponse
            | FrameType::PriceTable
            | FrameType::Tab => {
                warn!(conn, stream = sid, kind = ?f.kind, "the host sent a frame only the enclave may send");
                Err(ConnEnd::Violation("protocol violation"))
            }
            _ => Err(ConnEnd::Violation("unexpected frame type")),
        }
    }

    /// Open stream `sid` for a request or a nonce report, or answer why not
    /// with an `Error` frame (then `None`).
    async fn open_stream(
        &self,
        tx: &mpsc::Sender<Outgoing>,
        streams: &Arc<StreamTable>,
        conn: u64,
        sid: u32,
    ) -> Result<Option<StreamCtx>, ConnEnd> {
        let limit = self.config.max_streams_per_connection;
        let reason = match streams.open(sid, limit) {
            Ok(cancelled) => {
                return Ok(Some(StreamCtx {
                    conn,
                    id: sid,
                    cancelled,
                    tx: tx.clone(),
                    table: streams.clone(),
                }))
            }
            Err(OpenRefused::InUse) => {
                format!("stream id {sid} is already in use on this connection")
            }
            Err(OpenRefused::TooMany) => {
                format!("too many open streams on this connection (limit {limit})")
            }
        };
        send_error(tx, sid, &reason).await.map(|()| None)
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
        stream.close();
        let sent = match made {
            Ok(Ok(p)) => {
                info!(conn = stream.conn, stream = stream.id, evidence_digest = %hex::encode(p.digest.0), "evidence made for a client nonce");
                stream
                    .send_async(FrameType::EvidenceResponse, &p.bundle_cbor)
                    .await
            }
            Ok(Err(e)) => {
                warn!(conn = stream.conn, stream = stream.id, error = %e, "evidence for a client nonce failed");
                stream
                    .send_async(FrameType::Error, e.to_string().as_bytes())
                    .await
            }
            Err(_) => {
                stream
                    .send_async(FrameType::Error, b"internal error in the enclave")
                    .await
            }
        };
        if sent.is_err() {
            debug!(
                conn = stream.conn,
                stream = stream.id,
                "the host connection went away before the evidence was sent"
            );
        }
    }

    /// Wait for a permit, then run the request on a blocking thread.
    async fn request_task(self: Arc<Self>, stream: StreamCtx, payload: Vec<u8>) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
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
                conn = stream.conn,
                stream = stream.id,
                "request task failed"
            );
            // Not `fail`: that blocks, and this is async context.
            stream.close();
            let _ = stream
                .send_async(FrameType::Error, b"internal error in the enclave")
                .await;
        }
    }

    /// The whole life of one request after its stream was accepted. Runs on
    /// a blocking thread.
    fn serve_request(&self, s: &StreamCtx, payload: Vec<u8>) {
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
                warn!(conn = s.conn, stream = s.id, size, error_kind, error = %e, "request refused");
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
            warn!(conn = s.conn, stream = s.id, %request_id, error_kind, error = %e, "request refused");
            return s.fail(&e.to_string());
        }
        let sealed_to = authorized.evidence();
        if !self.evidence.knows(&sealed_to) {
            warn!(conn = s.conn, stream = s.id, %request_id, error_kind = "unknown_evidence", "request refused");
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
                warn!(conn = s.conn, stream = s.id, %request_id, size, error_kind = "open_failed", "request refused");
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
                warn!(conn = s.conn, stream = s.id, %request_id, model = %meta.model, error_kind, "request refused");
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
            warn!(conn = s.conn, stream = s.id, %request_id, error_kind, "request refused");
            return s.fail(&reason);
        }
        let mut sealer = match session.response_sealer(&mut OsRng) {
            Ok(sealer) => sealer,
            Err(_) => {
                error!(conn = s.conn, stream = s.id, %request_id, "response key derivation failed");
                return s.fail("internal error: response key derivation failed");
            }
        };
        let started = Instant::now();
        let usage = match self.infer(s, &meta, request, &mut sealer) {
            Ok(usage) => usage,
            Err(Abort::Cancelled) => {
                info!(conn = s.conn, stream = s.id, %request_id, model = %meta.model, "request cancelled; nothing more sent");
                return s.close();
            }
            Err(Abort::Sealing) => {
                error!(conn = s.conn, stream = s.id, %request_id, "sealing a response chunk failed");
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
            // No backend reuses a computed prompt prefix across requests
            // yet, so no prompt token is served from a cache.
            cached_tokens: 0,
            unit_price: meta.unit_price,
            multiplier_milli: meta.multiplier_milli,
            time: unix_now(),
            enclave_seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            client_account: meta.client_account,
        };
        let signed = match self.receipt_signer.sign(&receipt) {
            Ok(signed) => signed,
            Err(e) => {
                error!(conn = s.conn, stream = s.id, %request_id, error = %e, "signing the receipt failed");
                return s.fail("internal error: signing the usage receipt failed");
            }
        };
        let finish_kind = match &usage.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Error(_) => "error",
        };
        let end = ResponseEvent::End {
            finish: usage.finish,
            receipt: signed.clone(),
        };
        let Ok(last) = sealer.seal_chunk(&end.to_cbor(), true) else {
            error!(conn = s.conn, stream = s.id, %request_id, "sealing the final chunk failed");
            return s.fail("internal error: sealing the response failed");
        };
        // Pending until the host acknowledges it as committed; the check in
        // `UsageReceipt::check` (run by `sign`) bounds the charge to 64 bits.
        let charge = receipt
            .charge_nanoton()
            .and_then(|c| u64::try_from(c).ok())
            .unwrap_or(u64::MAX);
        if self
            .tabs
            .add_pending(request_id, receipt.client_account, charge)
            == Pending::DroppedOldest
        {
            warn!(
                pending = MAX_PENDING,
                "too many receipts wait for the host's acknowledgement; the oldest will never be charged"
            );
        }
        // The stream id is free once its last frames are queued; the host
        // commits the receipt before it sees the final chunk.
        s.close();
        if s.send(FrameType::Receipt, &signed).is_err()
            || s.send(FrameType::ResponseChunk, &last).is_err()
        {
            debug!(conn = s.conn, stream = s.id, %request_id, "the host connection went away before the end of the response");
            return;
        }
        info!(
            conn = s.conn,
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
            InferenceRequest::Chat { messages } => self.chat(s, meta, &messages, sealer),
            InferenceRequest::Embeddings { inputs } => self.embed(s, meta, &inputs, sealer),
            _ => Ok(Usage::failed(
                "this enclave does not support that kind of request".into(),
            )),
        }
    }

    fn chat(
        &self,
        s: &StreamCtx,
        meta: &BillingMeta,
        messages: &[ChatMessage],
        sealer: &mut ResponseSealer,
    ) -> Result<Usage, Abort> {
        let max = u64::from(meta.max_tokens);
        let mut delivered = 0u64;
        let mut cut = false;
        let mut abort = None;
        let mut emit = |piece: &str| -> ControlFlow<()> {
            if s.is_cancelled() {
                abort = Some(Abort::Cancelled);
                return ControlFlow::Break(());
            }
            if delivered >= max {
                cut = true;
                return ControlFlow::Break(());
            }
            for part in split_text(piece, MAX_TEXT_PIECE) {
                let data = ResponseEvent::Text(part.to_owned()).to_cbor();
                let Ok(chunk) = sealer.seal_chunk(&data, false) else {
                    abort = Some(Abort::Sealing);
                    return ControlFlow::Break(());
                };
                if s.send(FrameType::ResponseChunk, &chunk).is_err() {
                    abort = Some(Abort::Cancelled);
                    return ControlFlow::Break(());
                }
            }
            delivered += 1;
            ControlFlow::Continue(())
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.backend
                .chat(&meta.model, messages, meta.max_tokens, &mut emit)
        }));
        if let Some(a) = abort {
            return Err(a);
        }
        let failure = match result {
            Ok(Ok(o)) => {
                let completion = o.completion_tokens.max(delivered);
                let finish = if cut || completion > max || o.finish == Finish::Length {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                return Ok(Usage {
                    prompt_tokens: o.prompt_tokens,
                    completion_tokens: completion.min(max),
                    finish,
                });
            }
            Ok(Err(e)) => {
                warn!(conn = s.conn, stream = s.id, model = %meta.model, error_kind = e.kind(), delivered, "chat failed");
                e.to_string()
            }
            Err(_) => {
                error!(conn = s.conn, stream = s.id, model = %meta.model, delivered, "the backend panicked");
                "inference failed: internal error in the backend".to_owned()
            }
        };
        // The prompt was processed if any token came out.
        let prompt_tokens = if delivered > 0 {
            messages
                .iter()
                .map(|m| {
                    self.backend
                        .count_tokens(&meta.model, &m.content)
                        .unwrap_or(0)
                })
                .fold(0u64, u64::saturating_add)
        } else {
            0
        };
        Ok(Usage {
            prompt_tokens,
            completion_tokens: delivered.min(max),
            finish: FinishReason::Error(bounded(failure)),
        })
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
                warn!(conn = s.conn, stream = s.id, model = %meta.model, error_kind = e.kind(), "embeddings failed");
                return Ok(Usage::failed(e.to_string()));
            }
            Err(_) => {
                error!(conn = s.conn, stream = s.id, model = %meta.model, "the backend panicked");
                return Ok(Usage::failed(
                    "inference failed: internal error in the backend".into(),
                ));
            }
        };
        if vectors.len() != inputs.len() || vectors.iter().any(|v| v.len() > MAX_EMBEDDING_DIM) {
            error!(conn = s.conn, stream = s.id, model = %meta.model, "the backend returned malformed embeddings");
            return Ok(Usage::failed(
                "inference failed: the backend returned malformed embeddings".into(),
            ));
        }
        for (index, vector) in vectors.into_iter().enumerate() {
            if s.is_cancelled() {
                return Err(Abort::Cancelled);
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let data = ResponseEvent::Embedding { index, vector }.to_cbor();
            let chunk = sealer
                .seal_chunk(&data, false)
                .map_err(|_| Abort::Sealing)?;
            s.send(FrameType::ResponseChunk, &chunk)
                .map_err(|_| Abort::Cancelled)?;
        }
        Ok(Usage {
            prompt_tokens,
            completion_tokens: 0,
            finish: FinishReason::Stop,
        })
    }
}

/// Pieces of at most `max` bytes (≥ 4), cut at character boundaries.
fn split_text(text: &str, max: usize) -> Vec<&str> {
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
    completion_tokens: u64,
    finish: FinishReason,
}

impl Usage {
    /// Nothing ran.
    fn failed(reason: String) -> Usage {
        Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            finish: FinishReason::Error(bounded(reason)),
        }
    }
}

/// Why a request stopped without an `End`.
enum Abort {
    /// The host cancelled the stream or went away.
    Cancelled,
    /// A chunk could not be sealed (never expected).
    Sealing,
}

/// Why a connection's reader stopped.
enum ConnEnd {
    /// The host closed it (or reading failed).
    Closed,
    /// The enclave is shutting down.
    Shutdown,
    /// The host broke the protocol; close without flushing.
    Violation(&'static str),
}

/// One frame for the writer. Frames of a stream the host has cancelled are
/// dropped instead of written.
struct Outgoing {
    bytes: Vec<u8>,
    cancelled: Option<Arc<AtomicBool>>,
}

impl Outgoing {
    fn dropped(&self) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// Queue a frame from the reader (waits while the queue is full).
async fn send_now(
    tx: &mpsc::Sender<Outgoing>,
    stream_id: u32,
    kind: FrameType,
    payload: &[u8],
) -> Result<(), ConnEnd> {
    let Ok(bytes) = frame::encode(stream_id, kind, payload) else {
        error!(
            stream = stream_id,
            size = payload.len(),
            "frame too large to send"
        );
        return Ok(());
    };
    tx.send(Outgoing {
        bytes,
        cancelled: None,
    })
    .await
    .map_err(|_| ConnEnd::Closed)
}

async fn send_error(
    tx: &mpsc::Sender<Outgoing>,
    stream_id: u32,
    reason: &str,
) -> Result<(), ConnEnd> {
    debug!(stream = stream_id, reason, "error frame");
    send_now(
        tx,
        stream_id,
        FrameType::Error,
        bounded(reason.to_owned()).as_bytes(),
    )
    .await
}

/// The connection's writer: frames from the queue to the socket, flushed
/// when the queue runs dry or every [`WRITE_BATCH_FRAMES`].
async fn write_frames(wr: WriteHalf<Connection>, mut rx: mpsc::Receiver<Outgoing>, conn: u64) {
    let mut w = BufWriter::with_capacity(READ_BUFFER, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(out) = next.take() {
            if !out.dropped() {
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

/// Streams open on one connection, each with its cancel flag.
#[derive(Default)]
struct StreamTable {
    open: Mutex<HashMap<u32, Arc<AtomicBool>>>,
}

enum OpenRefused {
    InUse,
    TooMany,
}

impl StreamTable {
    fn open(&self, id: u32, limit: usize) -> Result<Arc<AtomicBool>, OpenRefused> {
        let mut open = lock(&self.open);
        if open.contains_key(&id) {
            return Err(OpenRefused::InUse);
        }
        if open.len() >= limit {
            return Err(OpenRefused::TooMany);
        }
        let flag = Arc::new(AtomicBool::new(false));
        open.insert(id, flag.clone());
        Ok(flag)
    }

    /// Mark `id` cancelled; `false` if it is not open.
    fn cancel(&self, id: u32) -> bool {
        match lock(&self.open).get(&id) {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Free `id` if `flag` is still its entry.
    fn close(&self, id: u32, flag: &Arc<AtomicBool>) {
        let mut open = lock(&self.open);
        if open.get(&id).is_some_and(|f| Arc::ptr_eq(f, flag)) {
            open.remove(&id);
        }
    }

    fn cancel_all(&self) {
        for flag in lock(&self.open).values() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// One accepted stream, as its request sees it.
#[derive(Clone)]
struct StreamCtx {
    conn: u64,
    id: u32,
    cancelled: Arc<AtomicBool>,
    tx: mpsc::Sender<Outgoing>,
    table: Arc<StreamTable>,
}

/// The connection is gone (or the stream cancelled).
struct Gone;

impl StreamCtx {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Queue a frame for this stream, waiting while the queue is full.
    /// Blocking: only on a blocking thread.
    fn send(&self, kind: FrameType, payload: &[u8]) -> Result<(), Gone> {
        if self.is_cancelled() {
            return Err(Gone);
        }
        let Ok(bytes) = frame::encode(self.id, kind, payload) else {
            error!(
                conn = self.conn,
                stream = self.id,
                size = payload.len(),
                "frame too large to send"
            );
            return Err(Gone);
        };
        self.tx
            .blocking_send(Outgoing {
                bytes,
                cancelled: Some(self.cancelled.clone()),
            })
            .map_err(|_| {
                self.cancelled.store(true, Ordering::SeqCst);
                Gone
            })
    }

    /// Queue a frame for this stream from async context.
    async fn send_async(&self, kind: FrameType, payload: &[u8]) -> Result<(), Gone> {
        if self.is_cancelled() {
            return Err(Gone);
        }
        let bytes = frame::encode(self.id, kind, payload).map_err(|_| Gone)?;
        self.tx
            .send(Outgoing {
                bytes,
                cancelled: Some(self.cancelled.clone()),
            })
            .await
            .map_err(|_| Gone)
    }

    /// Free the stream id.
    fn close(&self) {
        self.table.close(self.id, &self.cancelled);
    }

    /// Free the stream id and send one `Error` frame.
    fn fail(&self, reason: &str) {
        self.close();
        let _ = self.send(FrameType::Error, bounded(reason.to_owned()).as_bytes());
    }
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

    #[test]
    fn error_texts_are_bounded() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let b = bounded(long);
        assert!(b.len() <= MAX_ERROR_TEXT);
        assert_eq!(b.len(), MAX_ERROR_TEXT);
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn stream_table_limits_and_reuse() {
        let t = StreamTable::default();
        let a = t.open(1, 2).ok().unwrap();
        assert!(matches!(t.open(1, 2), Err(OpenRefused::InUse)));
        let _b = t.open(2, 2).ok().unwrap();
        assert!(matches!(t.open(3, 2), Err(OpenRefused::TooMany)));
        assert!(t.cancel(1));
        assert!(a.load(Ordering::SeqCst));
        assert!(!t.cancel(9));
        t.close(1, &a);
        let a2 = t.open(1, 2).ok().unwrap();
        // A stale close does not free the new entry.
        t.close(1, &a);
        assert!(matches!(t.open(1, 2), Err(OpenRefused::InUse)));
        t.cancel_all();
        assert!(a2.load(Ordering::SeqCst));
    }
}
