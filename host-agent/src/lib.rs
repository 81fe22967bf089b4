//! `cocoon-host`: the provider's daemon. Untrusted by design.
//!
//! It carries sealed requests from clients to the enclaves behind it and
//! their sealed response chunks back, and keeps the billing ledger. It
//! only ever holds what it may see: the readable billing metadata of a
//! [`cocoon_protocol::seal::SealedRequest`], opaque ciphertext, sealed
//! chunks (forwarded unchanged) and signed usage receipts. It never holds a
//! key that opens anything, and it logs request ids, sizes, accounts and
//! models, never ciphertext.
//!
//! * [`config`] — addresses, limits and timeouts, the config file.
//! * [`clock`] — the one clock every time-dependent rule reads (injected
//!   through [`HostConfig::clock`]: the system's, or pinned in tests); the
//!   host reads no clock directly.
//! * [`broker`] — connections to the enclaves (Unix socket or vsock),
//!   frame multiplexing with backpressure, evidence verification under the
//!   host's policy, routing by evidence digest (the earlier digests of a
//!   re-attested enclave stay routable on the same connection), timeouts,
//!   reconnects: `broker/mod.rs` (routes, `ReadyEnclave`),
//!   `broker/connection.rs` (the adapter to
//!   [`cocoon_protocol::mux::HostConn`]), `broker/supervisor.rs` (connect,
//!   verify, fetch the price table, refresh, reconnect) and
//!   `broker/tabs.rs` (the acknowledgement/tab task per connection).
//! * [`relay`] — one request through an enclave: receipt checks (the
//!   attested key, the billing metadata, prices included), and the rule
//!   that the final chunk goes out only after the receipt is durably in
//!   the ledger and acknowledged to the enclave.
//! * [`ledger`] — SQLite (WAL, `synchronous=FULL`) with group commit and a
//!   UNIQUE request id; tabs, authorizations and claims per enclave key and
//!   account: `ledger/schema.rs`, `ledger/writer.rs`, `ledger/queries.rs`.
//! * [`pricing`] — the smoothed load, the price sheet (`GET /v1/prices`),
//!   the price check (`412`), and spend reserved against the client's
//!   authorization cap (`402`).
//! * [`settle`] — `cocoon-host settle`: claims for the TON payment
//!   contract, reconciled with the ledger, and the manifest `claims.json`
//!   ([`cocoon_protocol::settlement::ClaimsManifest`]).
//! * [`deposits`] — the deposit check before a settling host serves a
//!   request (`402` when the client's deposit in the payment contract does
//!   not cover it, `503` when the chain cannot be read), and [`payment`],
//!   the payment contract's get-methods read through a
//!   [`cocoon_chain::ChainClient`].
//! * [`register`] — `cocoon-host register`: the provider's entry in the
//!   registry contract (register with the stake, update, deregister),
//!   checked against the chain before and after.
//! * [`ratelimit`] — per-account token bucket and stream cap.
//! * [`metrics`] — Prometheus text exposition, hand-written
//!   (`benches/metrics.rs` compares it with `prometheus-client`).
//! * [`timings`] — where a request's time goes in the host, stage by
//!   stage (`GET /admin/timings`, and sums per stage in the metrics).
//! * [`collateral`] — what the evidence lacks and AMD or Intel sign,
//!   attached before it is verified and served: VCEKs ([`snp_vcek`]),
//!   AMD's CRLs ([`snp_crl`]), Intel's TDX collateral from Intel's PCS or a
//!   PCCS (`--intel-pcs-url`, [`intel_pcs`]), each fetched with `reqwest`
//!   under [`fetch`]'s bounds and back-off.
//! * [`vm`] — `cocoon-host launch`: the QEMU command line for SNP, TDX and
//!   no-TEE guests (the image's root disk read-only as virtio-blk, optional
//!   VFIO GPUs, the provider's settings from `--provider-settings` handed to
//!   every boot on the image's settings port), the vsock device, and a
//!   supervisor that restarts the VM with back-off and stops when the
//!   enclave refuses the settings.
//! * `http` and `admin` — the public API (`/v1/evidence`,
//!   `/v1/evidence/nonce` (signed by the account, rate-limited per
//!   account), `/v1/requests` (forwarded as a
//!   [`SignedRequest`](cocoon_protocol::request::SignedRequest)),
//!   `/v1/prices`, `/v1/receipts`, `/live`, `/ready`, `/metrics`) and the
//!   operator endpoints (ledger export and check, drain) on a separate
//!   listener: loopback by default, anything else only with a token, and
//!   [`start`] refuses a non-loopback operator listener without one.
//!
//! The service is started with [`start`] (or [`run`]), which takes its
//! listening sockets and a [`HostConfig`], so tests bind port 0. A drain
//! (SIGTERM in the binary, [`Running::drain`], or `POST /admin/drain`)
//! turns `/ready` and new requests to `503`, lets in-flight streams finish
//! within `drain_timeout`, closes the enclave connections and the ledger,
//! and ends the service.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod broker;
pub mod clock;
pub mod collateral;
pub mod config;
pub mod deposits;
pub mod fetch;
pub(crate) mod http;
pub mod intel_pcs;
pub mod ledger;
pub mod metrics;
pub mod payment;
pub mod pricing;
pub mod ratelimit;
pub mod register;
pub mod relay;
pub mod settle;
pub mod snp_crl;
pub mod snp_vcek;
pub mod timings;
pub mod vm;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_protocol::RequestId;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use clock::Clock;
pub use config::{EnclaveAddr, HostConfig, Limits};
pub use http::Refusal;

use broker::Broker;
use ledger::{Ledger, LedgerError, LedgerOptions};
use metrics::Metrics;
use ratelimit::{AccountLimiter, AccountPermit};

/// How long the HTTP servers get to close their connections once the
/// in-flight streams are done (or cut).
const SERVER_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why the service could not start or did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A socket or task failed.
    #[error("{0}")]
    Io(String),
}

/// The sockets the service answers on.
#[derive(Debug)]
pub struct Listeners {
    /// The public API.
    pub public: TcpListener,
    /// The operator endpoints: a loopback address, or any other only with
    /// [`HostConfig::admin_token`] set.
    pub admin: TcpListener,
}

/// State shared by the handlers and the pumps.
pub(crate) struct App {
    pub(crate) limits: Limits,
    /// Where every decision in the service reads the time.
    pub(crate) clock: Clock,
    pub(crate) broker: Arc<Broker>,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) limiter: Arc<AccountLimiter>,
    /// Per-account limit on evidence for a client nonce.
    pub(crate) nonce_limiter: Arc<AccountLimiter>,
    pub(crate) metrics: Arc<Metrics>,
    /// Recent completed requests' time per stage (`GET /admin/timings`).
    pub(crate) timings: timings::Timings,
    pub(crate) pricing: pricing::LoadPricing,
    pub(crate) spend: pricing::Spend,
    pub(crate) settlement: Option<cocoon_protocol::settlement::ContractAddress>,
    /// The deposit check, on a settling host that has one.
    pub(crate) deposits: Option<deposits::Deposits>,
    /// What the operator API asks of a request (see `admin`).
    pub(crate) admin_access: admin::Access,
    /// The canonical bytes of the release manifest, for `GET /v1/release`.
    pub(crate) release_manifest: Option<axum::body::Bytes>,
    draining: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
    /// Cuts every in-flight stream (drain deadline passed).
    pub(crate) hard_stop: watch::Sender<bool>,
    in_flight_ids: Mutex<HashSet<RequestId>>,
}

impl App {
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub(crate) fn begin_drain(&self) {
        if !self.draining.send_replace(true) {
            info!(
                in_flight = *self.in_flight.borrow(),
                "drain started: refusing new requests"
            );
        }
    }

    /// Mark a request id as in flight; `None` if it already is.
    pub(crate) fn mark_in_flight(self: &Arc<Self>, id: RequestId) -> Option<ReplayGuard> {
        let mut ids = self.in_flight_ids.lock().ok()?;
        if !ids.insert(id) {
            return None;
        }
        Some(ReplayGuard {
            app: self.clone(),
            id,
        })
    }

    pub(crate) fn in_flight_guard(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.send_modify(|n| *n += 1);
        self.metrics.set_in_flight(*self.in_flight.borrow());
        InFlightGuard { app: self.clone() }
    }
}

/// Removes a request id from the in-flight set when the request ends
/// (after its receipt, if any, is committed).
pub(crate) struct ReplayGuard {
    app: Arc<App>,
    id: RequestId,
}

impl Drop for ReplayGuard {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.app.in_flight_ids.lock() {
            ids.remove(&self.id);
        }
    }
}

/// Counts a forwarded request until it ends.
pub(crate) struct InFlightGuard {
    app: Arc<App>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.app.in_flight.send_modify(|n| *n = n.saturating_sub(1));
        self.app.metrics.set_in_flight(*self.app.in_flight.borrow());
    }
}

/// A request's worst-case cost reserved against its account's
/// authorization cap; on drop replaced by what it charged.
pub(crate) struct Reservation {
    pub(crate) app: Arc<App>,
    pub(crate) key: Vec<u8>,
    pub(crate) account: [u8; 32],
    pub(crate) reserved: u128,
    /// Set by the relay once the receipt is committed.
    pub(crate) charged: std::sync::atomic::AtomicU64,
    /// The same worst case reserved against the client's deposit.
    pub(crate) deposit: Option<deposits::Hold>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let charged = self.charged.load(std::sync::atomic::Ordering::SeqCst);
        self.app
            .spend
            .settle(&self.key, &self.account, self.reserved, u128::from(charged));
        if let Some(hold) = self.deposit.take() {
            hold.release(u128::from(charged));
        }
    }
}

/// What a forwarded request holds until it ends.
pub(crate) struct RequestGuards {
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) _account: AccountPermit,
    pub(crate) _in_flight: InFlightGuard,
    pub(crate) _replay: ReplayGuard,
    pub(crate) reservation: Option<Reservation>,
}

/// A started service.
pub struct Running {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    app: Arc<App>,
    task: JoinHandle<Result<(), HostError>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("public_addr", &self.public_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The public API's address (the real port when bound to port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The operator endpoints' address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Whether at least one enclave is verified and the host is not
    /// draining.
    pub fn is_ready(&self) -> bool {
        !self.app.is_draining() && self.app.broker.ready_count() > 0
    }

    /// Resolves once at least one enclave's evidence is verified.
    pub async fn wait_ready(&self) {
        let mut w = self.app.broker.ready_watch();
        let _ = w.wait_for(|n| *n > 0).await;
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.app.is_draining()
    }

    /// Resolves once a drain has started (by [`Running::drain`], the admin
    /// endpoint, or a server failure).
    pub async fn draining(&self) {
        let mut w = self.app.draining.subscribe();
        let _ = w.wait_for(|d| *d).await;
    }

    /// Start the drain (idempotent); the service ends when it is done.
    pub fn drain(&self) {
        self.app.begin_drain();
    }

    /// Wait for the service to end (after a drain).
    pub async fn join(self) -> Result<(), HostError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(HostError::Io(format!("service task failed: {e}"))),
        }
    }
}

/// Start the service on `listeners`: open the ledger, start the enclave
/// supervisors and both HTTP servers. Returns once everything is running;
/// enclaves become ready in the background ([`Running::wait_ready`]).
pub async fn start(listeners: Listeners, config: HostConfig) -> Result<Running, HostError> {
    config.limits.validate()?;
    let io = |e: std::io::Error| HostError::Io(e.to_string());
    let public_addr = listeners.public.local_addr().map_err(io)?;
    let admin_addr = listeners.admin.local_addr().map_err(io)?;
    // A non-loopback operator listener was asked for (the binary checks
    // that it was asked explicitly); it must be guarded by a token.
    config::check_admin_exposure(
        admin_addr,
        !admin_addr.ip().is_loopback(),
        config.admin_token.is_some(),
    )?;
    let deposits = match (config.deposits.clone(), config.settlement) {
        (Some(d), Some(contract)) => Some(deposits::Deposits::new(d, contract)),
        (Some(_), None) => {
            return Err(config::ConfigError::Invalid {
                field: "chain_api",
                reason:
                    "the deposit check reads the payment contract: set the settlement contract too"
                        .into(),
            }
            .into())
        }
        (None, Some(contract)) => {
            warn!(%contract, "deposits are NOT checked: requests are served whatever the client's deposit in the payment contract holds (claims beyond it will fail)");
            None
        }
        (None, None) => None,
    };
    let path = config.ledger_path.clone();
    let options = LedgerOptions {
        max_batch: config.limits.ledger_max_batch,
    };
    let ledger = tokio::task::spawn_blocking(move || Ledger::open(&path, options))
        .await
        .map_err(|e| HostError::Io(format!("ledger open task failed: {e}")))??;
    let metrics = Arc::new(Metrics::new(config.enclaves.iter().map(|a| a.to_string())));
    let ledger = Arc::new(ledger);
    let broker = Broker::new(
        &config.enclaves,
        config.policy.clone(),
        config.limits.clone(),
        metrics.clone(),
        ledger.clone(),
        crate::collateral::Collateral::new(&config.amd_kds_url, &config.intel_pcs_url),
        config.clock.clone(),
    );
    let release_manifest = config
        .release_manifest
        .as_ref()
        .map(|m| m.to_canonical().map(axum::body::Bytes::from))
        .transpose()
        .map_err(|e| config::ConfigError::Invalid {
            field: "release_manifest",
            reason: e.to_string(),
        })?;
    let limits = config.limits;
    let app = Arc::new(App {
        release_manifest,
        limiter: Arc::new(AccountLimiter::new(
            limits.account_requests_per_second,
            limits.account_burst,
            limits.account_max_streams,
            limits.max_tracked_accounts,
        )),
        nonce_limiter: Arc::new(AccountLimiter::new(
            limits.nonce_evidence_per_minute / 60.0,
            limits.nonce_evidence_burst,
            1,
            limits.max_tracked_accounts,
        )),
        limits,
        clock: config.clock,
        broker: broker.clone(),
        ledger,
        metrics,
        timings: timings::Timings::default(),
        pricing: pricing::LoadPricing::new(),
        spend: pricing::Spend::new(),
        settlement: config.settlement,
        deposits,
        admin_access: admin::Access::new(config.admin_token, admin_addr),
        draining: watch::channel(false).0,
        in_flight: watch::channel(0).0,
        hard_stop: watch::channel(false).0,
        in_flight_ids: Mutex::new(HashSet::new()),
    });
    {
        // The load the price multiplier follows (see `pricing`).
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = app.clock.instant();
            loop {
                tick.tick().await;
                if *app.hard_stop.borrow() {
                    return;
                }
                let now = app.clock.instant();
                let capacity = app.broker.ready_count() * app.limits.max_streams_per_enclave;
                app.pricing.sample(
                    *app.in_flight.borrow(),
                    capacity,
                    now.saturating_duration_since(last),
                );
                app.metrics.set_utilisation(app.pricing.utilisation());
                last = now;
            }
        });
    }
    let (server_stop, server_stop_rx) = watch::channel(false);
    let public = tokio::spawn(serve(
        listeners.public,
        http::router(app.clone()),
        server_stop_rx.clone(),
    ));
    let admin = tokio::spawn(serve(
        listeners.admin,
        admin::router(app.clone()),
        server_stop_rx,
    ));
    let (broker_stop, broker_stop_rx) = watch::channel(false);
    let supervisors = broker.spawn(broker_stop_rx);
    info!(%public_addr, %admin_addr, enclaves = config.enclaves.len(), "cocoon-host started");
    let task = tokio::spawn(lifecycle(
        app.clone(),
        public,
        admin,
        server_stop,
        broker_stop,
        supervisors,
    ));
    Ok(Running {
        public_addr,
        admin_addr,
        app,
        task,
    })
}

/// Start the service and run it until `shutdown` resolves (then drain) or
/// a drain started otherwise completes.
pub async fn run(
    listeners: Listeners,
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HostError> {
    let running = start(listeners, config).await?;
    let Running { app, mut task, .. } = running;
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => app.begin_drain(),
        r = &mut task => return r.map_err(|e| HostError::Io(e.to_string()))?,
    }
    task.await.map_err(|e| HostError::Io(e.to_string()))?
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Small writes (chunk records) must leave at once: without TCP_NODELAY,
    // Nagle's algorithm and the peer's delayed ACK add ~40 ms per response.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn all_done(in_flight: &mut watch::Receiver<usize>) {
    let _ = in_flight.wait_for(|n| *n == 0).await;
}

async fn lifecycle(
    app: Arc<App>,
    mut public: JoinHandle<std::io::Result<()>>,
    mut admin: JoinHandle<std::io::Result<()>>,
    server_stop: watch::Sender<bool>,
    broker_stop: watch::Sender<bool>,
    supervisors: Vec<JoinHandle<()>>,
) -> Result<(), HostError> {
    let mut draining = app.draining.subscribe();
    let mut failure = None;
    tokio::select! {
        _ = broker::until_true(&mut draining) => {}
        r = &mut public => failure = Some(format!("public server ended: {r:?}")),
        r = &mut admin => failure = Some(format!("admin server ended: {r:?}")),
    }
    if let Some(f) = &failure {
        error!(reason = %f, "server failed; shutting down");
        app.begin_drain();
    }

    // In-flight streams run to completion, up to the drain timeout.
    let mut in_flight = app.in_flight.subscribe();
    let waited = tokio::time::timeout(app.limits.drain_timeout, all_done(&mut in_flight))
        .await
        .is_ok();
    if !waited {
        warn!(
            in_flight = *app.in_flight.borrow(),
            "drain timeout passed; cutting the remaining streams"
        );
        app.hard_stop.send_replace(true);
        let _ = tokio::time::timeout(SERVER_CLOSE_GRACE, all_done(&mut in_flight)).await;
    }

    // Stop the HTTP servers (they close idle connections and finish open
    // responses, which have all ended by now).
    server_stop.send_replace(true);
    let servers = async {
        if !public.is_finished() {
            let _ = (&mut public).await;
        }
        if !admin.is_finished() {
            let _ = (&mut admin).await;
        }
    };
    if tokio::time::timeout(SERVER_CLOSE_GRACE, servers)
        .await
        .is_err()
    {
        warn!("HTTP connections did not close in time; aborting them");
        public.abort();
        admin.abort();
    }

    // Enclave connections, then the ledger.
    broker_stop.send_replace(true);
    for s in supervisors {
        let _ = tokio::time::timeout(SERVER_CLOSE_GRACE, s).await;
    }
    let ledger = app.ledger.clone();
    let _ = tokio::task::spawn_blocking(move || ledger.close()).await;
    info!("drained; ledger closed");
    match failure {
        Some(f) => Err(HostError::Io(f)),
        None => Ok(()),
    }
}
