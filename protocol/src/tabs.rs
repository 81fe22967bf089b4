//! Receipt acknowledgements and tab updates: how the enclave's running
//! totals per account (the tabs settlement pays against,
//! [`crate::settlement::Tab`]) follow the host's ledger exactly.
//!
//! 1. The enclave signs a receipt and sends the host its copy; the receipt
//!    is *pending*: not yet in any tab.
//! 2. The host verifies it, commits it to its ledger (fsync) and only then
//!    acknowledges it with a [`ReceiptAck`] (batched, stream 0).
//! 3. The enclave counts each acknowledged pending receipt into its
//!    account's tab, once, and answers with a [`TabUpdate`]: the newly
//!    signed cumulative tab of every account the acknowledgement named,
//!    whether or not it moved.
//! 4. The host stores the signed tabs. After a crash it acknowledges again
//!    the committed receipts its stored tab does not count yet; an id that
//!    is not pending (already counted, or unknown) counts nothing, and the
//!    answer still carries the account's current tab.
//!
//! So a tab counts only receipts that are in the host's ledger, each once;
//! a receipt the host never committed is never charged. Receipts still
//! pending when their enclave stops are never charged either.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::receipt::ReceiptSigner;
use crate::settlement::{SignedTab, Tab, SIGNED_TAB_LEN};
use crate::RequestId;

/// Most request ids in one acknowledgement (or one tab update entry).
pub const MAX_ACK_IDS: usize = 4096;
/// Most accounts in one tab update.
pub const MAX_TAB_ENTRIES: usize = MAX_ACK_IDS;

/// Why an acknowledgement or a tab update does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TabsError {
    /// Wrong length, count or content.
    #[error("{0}")]
    Invalid(String),
}

/// Host → enclave: receipts the host has durably committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptAck {
    /// Their request ids with the account each bills (1 ..=
    /// [`MAX_ACK_IDS`]). The enclave counts a pending receipt under the
    /// account it recorded when it signed it; the account named here only
    /// says whose current tab to send back.
    pub receipts: Vec<(RequestId, [u8; 32])>,
}

impl ReceiptAck {
    /// Wire form: `request_id ‖ account` (64 bytes) per receipt.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.receipts.len() * 64);
        for (id, account) in &self.receipts {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(account);
        }
        out
    }

    /// Parse: a non-empty multiple of 64 bytes, at most [`MAX_ACK_IDS`]
    /// entries.
    pub fn from_bytes(bytes: &[u8]) -> Result<ReceiptAck, TabsError> {
        if bytes.is_empty() || bytes.len() % 64 != 0 || bytes.len() / 64 > MAX_ACK_IDS {
            return Err(TabsError::Invalid(format!(
                "receipt acknowledgement of {} bytes: must be 1 to {MAX_ACK_IDS} entries of 64 bytes",
                bytes.len()
            )));
        }
        let receipts = bytes
            .chunks_exact(64)
            .map(|c| {
                let mut id = [0u8; 32];
                let mut account = [0u8; 32];
                id.copy_from_slice(&c[..32]);
                account.copy_from_slice(&c[32..]);
                (RequestId(id), account)
            })
            .collect();
        Ok(ReceiptAck { receipts })
    }
}

/// Enclave → host: the current signed tab of every account an
/// acknowledgement named (and the enclave has a tab for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TabUpdate {
    /// One signed tab per account.
    pub tabs: Vec<SignedTab>,
}

impl TabUpdate {
    /// Wire form: the signed tabs ([`SIGNED_TAB_LEN`] bytes each) one after
    /// another.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.tabs.iter().flat_map(|t| t.to_bytes()).collect()
    }

    /// Parse: a multiple of [`SIGNED_TAB_LEN`] bytes, at most
    /// [`MAX_TAB_ENTRIES`] tabs, each well-formed. Signatures are not
    /// checked here: the host checks each with the attested receipt key.
    pub fn from_bytes(bytes: &[u8]) -> Result<TabUpdate, TabsError> {
        if bytes.len() % SIGNED_TAB_LEN != 0 || bytes.len() / SIGNED_TAB_LEN > MAX_TAB_ENTRIES {
            return Err(TabsError::Invalid(format!(
                "tab update of {} bytes: must be 0 to {MAX_TAB_ENTRIES} tabs of {SIGNED_TAB_LEN} bytes",
                bytes.len()
            )));
        }
        let tabs = bytes
            .chunks_exact(SIGNED_TAB_LEN)
            .map(|c| {
                SignedTab::from_bytes(c).map_err(|e| TabsError::Invalid(format!("tab update: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TabUpdate { tabs })
    }
}

/// Most receipts waiting for an acknowledgement; beyond it the oldest is
/// dropped (and so never charged), with a log line.
pub const MAX_PENDING: usize = 1 << 20;

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<RequestId, ([u8; 32], u64)>,
    order: VecDeque<RequestId>,
    tabs: HashMap<[u8; 32], (u64, u64)>,
}

/// The enclave's pending receipts and tabs for one boot, behind one lock,
/// with the receipt key that signs the tabs. Every host connection of the
/// boot shares it (a receipt may be acknowledged on another connection
/// than the one that carried it).
///
/// A receipt is counted at most once: acknowledging it removes it from the
/// pending set, and an id that is not pending counts nothing. Everything
/// lives in memory and dies with the boot, as the receipt key does.
pub struct TabBook {
    inner: std::sync::Mutex<Inner>,
    signer: ReceiptSigner,
}

impl std::fmt::Debug for TabBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TabBook")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
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
    /// A book with no tabs, signing with `signer` (the boot's receipt key).
    pub fn new(signer: ReceiptSigner) -> TabBook {
        TabBook {
            inner: std::sync::Mutex::default(),
            signer,
        }
    }

    /// The receipt key the tabs (and the receipts) are signed with.
    pub fn signer(&self) -> &ReceiptSigner {
        &self.signer
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
    pub fn acknowledge(&self, ack: &ReceiptAck) -> (TabUpdate, usize) {
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
                    self.signer.sign_tab(&Tab {
                        account: *account,
                        count,
                        total,
                    })
                })
            })
            .collect::<Vec<SignedTab>>();
        (TabUpdate { tabs }, counted)
    }

    /// The account's tab now: (receipts counted, nanoton total).
    pub fn tab(&self, account: &[u8; 32]) -> Option<(u64, u64)> {
        self.lock().tabs.get(account).copied()
    }

    /// Receipts waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod book_tests {
    use super::*;
    use rand_core::OsRng;

    fn id(n: u8) -> RequestId {
        RequestId([n; 32])
    }

    #[test]
    fn counts_each_acknowledged_receipt_once() {
        let signer = ReceiptSigner::generate(&mut OsRng);
        let key = signer.public_key_sec1();
        let book = TabBook::new(signer.clone());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        book.add_pending(id(1), a, 10);
        book.add_pending(id(2), a, 5);
        book.add_pending(id(3), b, 7);
        // Unknown and not-yet-pending ids count nothing; the named account
        // without a tab gets none.
        let (u, n) = book.acknowledge(&ReceiptAck {
            receipts: vec![(id(9), a)],
        });
        assert_eq!((u.tabs.len(), n), (0, 0));
        let (u, n) = book.acknowledge(&ReceiptAck {
            receipts: vec![(id(1), a), (id(3), b), (id(1), a)],
        });
        assert_eq!(n, 2);
        assert_eq!(u.tabs.len(), 2);
        for t in &u.tabs {
            t.tab.verify(&t.signature, &key).unwrap();
        }
        let ta = u.tabs.iter().find(|t| t.tab.account == a).unwrap();
        assert_eq!((ta.tab.count, ta.tab.total), (1, 10));
        // Again: nothing new, the same tab comes back.
        let (u, n) = book.acknowledge(&ReceiptAck {
            receipts: vec![(id(1), a)],
        });
        assert_eq!(n, 0);
        assert_eq!((u.tabs[0].tab.count, u.tabs[0].tab.total), (1, 10));
        let (u, n) = book.acknowledge(&ReceiptAck {
            receipts: vec![(id(2), b)],
        });
        // Counted under the account recorded at signing (a), and both the
        // named (b) and the real (a) account's tabs come back.
        assert_eq!(n, 1);
        let ta = u.tabs.iter().find(|t| t.tab.account == a).unwrap();
        assert_eq!((ta.tab.count, ta.tab.total), (2, 15));
        assert_eq!(book.pending(), 0);
    }
}
