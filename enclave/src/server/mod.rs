//! The enclave runtime: boot-time keys, claims and evidence, and the frame
//! protocol served on every host connection.
//!
//! Three parts: this module boots ([`Enclave::new`]) and serves
//! ([`Enclave::serve`]: accept, refresh evidence, drain); `connection` is
//! the thin adapter between a host socket and the connection state machine
//! [`cocoon_protocol::mux::EnclaveConn`], which owns the frame rules below
//! (stream ids and limits, stream 0, cancellation, the receipt before the
//! final chunk, acknowledgements and tabs); `request` is the life of one
//! request (authorize, open, admit, run the backend, sign the receipt).
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

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_attestation::bundle::{Claims, EvidenceBundle, ModelDigest};
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice};
use cocoon_protocol::seal::{EvidenceDigest, HpkeSecretKey, MAX_MODEL_NAME};
use cocoon_protocol::tabs::TabBook;
use rand_core::{CryptoRng, RngCore};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::attest::{AttestError, AttestationProvider};
use crate::backend::InferenceBackend;
use crate::config::{ConfigError, EnclaveConfig};
use crate::evidence::{EvidenceState, Published};
use crate::replay::{EnclaveClock, ReplayMemory};
use crate::transport::Listener;

mod chat;
mod connection;
mod request;

/// How long [`Enclave::serve`] waits for in-flight requests after the
/// shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
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
    /// The evidence published now and every claims digest issued.
    evidence: EvidenceState,
    /// One report for a client's nonce at a time.
    nonce_reports: Arc<Semaphore>,
    /// Served models (from the claims), their base prices and the
    /// multiplier bounds.
    prices: PriceTable,
    /// `prices` as the `PriceTable` frame's payload.
    prices_cbor: Arc<[u8]>,
    /// The next receipt's `enclave_seq`.
    next_seq: AtomicU64,
    /// Pending receipts and the accounts' tabs, with the receipt key.
    tabs: Arc<TabBook>,
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
        let prices_cbor: Arc<[u8]> = prices.to_cbor().into();
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
            evidence,
            nonce_reports: Arc::new(Semaphore::new(1)),
            prices,
            prices_cbor,
            tabs: Arc::new(TabBook::new(receipt_signer)),
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
}
