//! The enclave's tabs: per account, the running count and total of the
//! receipts the host has acknowledged as committed, signed with the receipt
//! key for settlement ([`cocoon_protocol::tabs`] has the protocol).
//!
//! Owns the pending receipts (signed, not yet acknowledged) and the tabs.
//! A receipt is counted at most once: acknowledging it removes it from the
//! pending set, and an id that is not pending counts nothing. Everything
//! lives in memory and dies with the boot, as the receipt key does: a new
//! boot has a new key and so new tabs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use cocoon_protocol::receipt::ReceiptSigner;
use cocoon_protocol::settlement::{SignedTab, Tab};
use cocoon_protocol::tabs::{ReceiptAck, TabUpdate};
use cocoon_protocol::RequestId;

/// Most receipts waiting for an acknowledgement; beyond it the oldest is
/// dropped (and so never charged), with a log line.
pub const MAX_PENDING: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    pending: HashMap<RequestId, ([u8; 32], u64)>,
    order: VecDeque<RequestId>,
    tabs: HashMap<[u8; 32], (u64, u64)>,
}

/// Pending receipts and tabs, behind one lock.
#[derive(Default)]
pub struct TabBook {
    inner: std::sync::Mutex<Inner>,
}

/// What [`TabBook::add_pending`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Recorded.
    Added,
    /// Recorded; the oldest pending receipt was dropped to make room.
    DroppedOldest,
}

impl TabBook {
    /// A book with no tabs.
    pub fn new() -> TabBook {
        TabBook::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a signed receipt before its host copy is sent.
    pub fn add_pending(&self, id: RequestId, account: [u8; 32], charge: u64) -> Pending {
        let mut g = self.lock();
        let mut result = Pending::Added;
        if g.pending.len() >= MAX_PENDING {
            while let Some(old) = g.order.pop_front() {
                if g.pending.remove(&old).is_some() {
                    result = Pending::DroppedOldest;
                    break;
                }
            }
        }
        if g.pending.insert(id, (account, charge)).is_none() {
            g.order.push_back(id);
        }
        // Keep the order queue from growing with acknowledged ids.
        if g.order.len() > 2 * g.pending.len() + 1024 {
            let Inner { pending, order, .. } = &mut *g;
            order.retain(|id| pending.contains_key(id));
        }
        result
    }

    /// Count the acknowledged pending receipts and sign the current tab of
    /// every account the acknowledgement names. Returns the update and how
    /// many receipts it newly counted. A tab that would overflow 64 bits of
    /// nanoton stops counting (the receipt stays pending) and is logged by
    /// the caller through the returned count.
    pub fn acknowledge(&self, ack: &ReceiptAck, signer: &ReceiptSigner) -> (TabUpdate, usize) {
        let mut g = self.lock();
        let mut counted = 0;
        let mut named: BTreeMap<[u8; 32], ()> = BTreeMap::new();
        for (id, named_account) in &ack.receipts {
            named.insert(*named_account, ());
            let Some(&(account, charge)) = g.pending.get(id) else {
                continue;
            };
            let tab = g.tabs.entry(account).or_insert((0, 0));
            let (Some(count), Some(total)) = (tab.0.checked_add(1), tab.1.checked_add(charge))
            else {
                continue;
            };
            *tab = (count, total);
            g.pending.remove(id);
            named.insert(account, ());
            counted += 1;
        }
        let tabs = named
            .keys()
            .filter_map(|account| {
                g.tabs.get(account).map(|&(count, total)| {
                    signer.sign_tab(&Tab {
                        account: *account,
                        count,
                        total,
                    })
                })
            })
            .collect::<Vec<SignedTab>>();
        (TabUpdate { tabs }, counted)
    }

    /// Receipts waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn id(n: u8) -> RequestId {
        RequestId([n; 32])
    }

    #[test]
    fn counts_each_acknowledged_receipt_once() {
        let signer = ReceiptSigner::generate(&mut OsRng);
        let key = signer.public_key_sec1();
        let book = TabBook::new();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        book.add_pending(id(1), a, 10);
        book.add_pending(id(2), a, 5);
        book.add_pending(id(3), b, 7);
        // Unknown and not-yet-pending ids count nothing; the named account
        // without a tab gets none.
        let (u, n) = book.acknowledge(
            &ReceiptAck {
                receipts: vec![(id(9), a)],
            },
            &signer,
        );
        assert_eq!((u.tabs.len(), n), (0, 0));
        let (u, n) = book.acknowledge(
            &ReceiptAck {
                receipts: vec![(id(1), a), (id(3), b), (id(1), a)],
            },
            &signer,
        );
        assert_eq!(n, 2);
        assert_eq!(u.tabs.len(), 2);
        for t in &u.tabs {
            t.tab.verify(&t.signature, &key).unwrap();
        }
        let ta = u.tabs.iter().find(|t| t.tab.account == a).unwrap();
        assert_eq!((ta.tab.count, ta.tab.total), (1, 10));
        // Again: nothing new, the same tab comes back.
        let (u, n) = book.acknowledge(
            &ReceiptAck {
                receipts: vec![(id(1), a)],
            },
            &signer,
        );
        assert_eq!(n, 0);
        assert_eq!((u.tabs[0].tab.count, u.tabs[0].tab.total), (1, 10));
        let (u, n) = book.acknowledge(
            &ReceiptAck {
                receipts: vec![(id(2), b)],
            },
            &signer,
        );
        // Counted under the account recorded at signing (a), and both the
        // named (b) and the real (a) account's tabs come back.
        assert_eq!(n, 1);
        let ta = u.tabs.iter().find(|t| t.tab.account == a).unwrap();
        assert_eq!((ta.tab.count, ta.tab.total), (2, 15));
        assert_eq!(book.pending(), 0);
    }
}
