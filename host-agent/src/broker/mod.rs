//! The enclave side: connections to the enclaves, stream multiplexing, and
//! which enclave (by verified evidence) serves which requests.
//!
//! Three parts besides the routing table here: `connection` (the adapter
//! between a socket and [`cocoon_protocol::mux::HostConn`], the connection
//! state machine that owns stream ids, stream 0, the billing order and the
//! acknowledgement batching), `supervisor` (connect, verify, publish,
//! refresh, reconnect) and `tabs` (the signed tabs the enclave sends back,
//! checked and stored).
//!
//! Owns, per connection, one reader task that cuts the byte stream into
//! frames ([`cocoon_protocol::frame::FrameDecoder`]), feeds them to the
//! connection machine and dispatches its events by stream id to bounded
//! per-stream channels, and one writer task; per
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
//! the machine's data queue; `Cancel`, acknowledgements and evidence
//! requests through its control queue, which the writer serves first. A
//! semaphore per
//! enclave bounds concurrent streams (`max_streams_per_enclave`).
//!
//! # Prices and tabs
//!
//! After verifying an enclave the supervisor asks it for its measured price
//! table (stream 0) and publishes it with the enclave. The relay commits
//! every receipt before it asks for the final chunk
//! ([`EnclaveStream::commit`]); the connection machine batches the
//! acknowledgements into `ReceiptAck` frames, and a per-connection task
//! checks every signed tab the enclave sends back under the
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
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cocoon_protocol::api::EvidenceList;
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::receipt::ReceiptVerifier;
use cocoon_protocol::seal::EvidenceDigest;
use cocoon_verifier::Policy;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::collateral::Collateral;
use crate::config::{EnclaveAddr, Limits};
use crate::ledger::Ledger;
use crate::metrics::Metrics;

mod connection;
mod supervisor;
mod tabs;

pub(crate) use connection::connect;
pub use connection::{hybrid_vsock_connect, EnclaveConnection, EnclaveStream, StreamEnd};

/// The least time between two evidence re-checks of one connection
/// triggered by enclave errors.
const RECHECK_MIN_INTERVAL: Duration = Duration::from_secs(2);
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
    /// The host's time: evidence and collateral validity, re-check spacing.
    clock: Clock,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("enclaves", &self.slots.len())
            .field("ready", &self.ready_count())
            .finish()
    }
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
        clock: Clock,
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
            clock,
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
        let bundle = self
            .collateral
            .attach(bundle, self.clock.unix_time().0)
            .await;
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
        cocoon_verifier::verify(bundle, &self.policy, self.clock.unix_time()).map_err(|r| {
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
        }))
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
}
