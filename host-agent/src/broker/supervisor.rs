//! One supervisor per enclave address: connect, fetch and verify the
//! evidence and the price table, publish, refresh the evidence now and
//! then, and reconnect with back-off when the connection ends.

use std::sync::Arc;

use cocoon_protocol::seal::EvidenceDigest;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::connection::{connect, EnclaveConnection};
use super::tabs::tab_task;
use super::{conn_key, until_true, Broker, BrokerError, ReadyEnclave, Slot, RECHECK_MIN_INTERVAL};

impl Broker {
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
        let bundle = self.collateral.attach(bundle, self.clock.unix_secs()).await;
        let current = self
            .routes
            .read()
            .ok()
            .and_then(|r| r.by_slot.get(slot.index).cloned().flatten());
        let Some(same) = current.clone().filter(|c| Arc::ptr_eq(&c.conn, conn)) else {
            conn.close("evidence refresh on a connection that is not served");
            return None;
        };
        match self.verify_evidence(slot, conn, bundle, same.prices.clone()) {
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
            if k == key && self.clock.instant().saturating_duration_since(at) < RECHECK_MIN_INTERVAL
            {
                return digest == Some(ready.digest);
            }
        }
        if ready.conn.is_closed() {
            return false;
        }
        let digest = self.refresh(slot, &ready.conn).await;
        *last = Some((self.clock.instant(), key, digest));
        digest == Some(ready.digest)
    }

    pub(super) async fn supervise(
        self: Arc<Self>,
        slot: Arc<Slot>,
        mut stop: watch::Receiver<bool>,
    ) {
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
        let bundle = self.collateral.attach(bundle, self.clock.unix_secs()).await;
        let prices = conn.fetch_prices(limits.evidence_timeout).await?;
        let ready = self.verify_evidence(slot, conn, bundle, prices)?;
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
                    *last = Some((self.clock.instant(), conn_key(conn), digest));
                    if digest.is_none() {
                        return;
                    }
                }
            }
        }
    }
}
