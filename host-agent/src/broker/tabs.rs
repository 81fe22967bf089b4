//! The signed tabs an enclave sends back after each acknowledgement:
//! checked under the attested receipt key and stored in the ledger; on
//! every (re)connect the committed receipts no stored tab counts yet are
//! acknowledged again.

use std::sync::Arc;

use cocoon_protocol::settlement::SignedTab;
use cocoon_protocol::tabs::TabUpdate;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::connection::EnclaveConnection;
use crate::ledger::{Ledger, StoredTab};
use crate::metrics::Metrics;

/// Per connection: re-acknowledge what the ledger holds uncounted, then
/// store every tab the enclave signs (after checking it under the attested
/// key). The acknowledgements themselves are batched by the connection
/// machine as the relay commits receipts.
pub(super) async fn tab_task(
    conn: Arc<EnclaveConnection>,
    label: Arc<str>,
    key: Vec<u8>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    mut tabs: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    match ledger.uncounted(key.clone()).await {
        Ok(list) if !list.is_empty() => {
            info!(enclave = %label, receipts = list.len(), "acknowledging committed receipts no stored tab counts yet");
            conn.acknowledge_again(&list);
        }
        Ok(_) => {}
        Err(e) => warn!(enclave = %label, error = %e, "could not read uncounted receipts"),
    }
    loop {
        tokio::select! {
            _ = conn.closed() => return,
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
