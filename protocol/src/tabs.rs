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

use crate::settlement::{SignedTab, SIGNED_TAB_LEN};
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
