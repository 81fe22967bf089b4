//! The client's statement: check a provider's settlement claims against the
//! receipts this account holds, before (or after) the payment contract pays
//! them.
//!
//! Sans IO: the caller passes the claims manifest (`claims.json` from
//! `cocoon-host settle`) and this account's verified receipts (from the
//! host's ledger, each verified under the key its entry names). For every
//! claim on this account it checks:
//!
//! * the authorization is this account's, signed by its key, and the claim
//!   stays within its cap;
//! * the tab is signed by the enclave key the authorization names;
//! * the message body the contract will see is exactly the claim built from
//!   those two signed messages (rebuilt here, byte for byte);
//! * the tab against the receipts: it may not count more receipts, or more
//!   nanoton, than this account's receipts under that key; when it counts
//!   all of them the totals must be equal to the nanoton.
//!
//! A claim that fails any of these is a discrepancy; receipts the tab does
//! not count yet are reported, not charged.

use cocoon_protocol::account::AccountId;
use cocoon_protocol::settlement::{compress_p256, ClaimsManifest};
use cocoon_protocol::ton::claim_body;

use crate::client::VerifiedReceipt;

pub use cocoon_protocol::settlement::ManifestClaim;

/// Parse a `claims.json` manifest strictly
/// ([`ClaimsManifest::from_json`]: unknown fields refused, every field
/// checked); its claims.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestClaim>, String> {
    ClaimsManifest::from_json(text)
        .map(|m| m.claims)
        .map_err(|e| e.to_string())
}

/// The verdict on one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCheck {
    /// The claim.
    pub claim: ManifestClaim,
    /// This account's receipts under the claim's enclave key.
    pub receipts: u64,
    /// Their charges.
    pub nanoton: u128,
    /// What is wrong (empty: the claim is sound).
    pub problems: Vec<String>,
}

impl ClaimCheck {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Receipts the tab does not count yet.
    pub fn uncounted(&self) -> u64 {
        self.receipts.saturating_sub(self.claim.tab.tab.count)
    }
}

/// Check every claim on `account` (whose public key is `public_key_sec1`)
/// against `receipts` (this account's, verified).
pub fn check(
    claims: &[ManifestClaim],
    account: &AccountId,
    public_key_sec1: &[u8],
    receipts: &[VerifiedReceipt],
) -> Vec<ClaimCheck> {
    claims
        .iter()
        .filter(|c| c.account == account.0)
        .map(|c| {
            let mut problems = Vec::new();
            let mine: Vec<&VerifiedReceipt> = receipts
                .iter()
                .filter(|r| compress_p256(&r.receipt_public_key).ok() == Some(c.enclave_key))
                .collect();
            let n = mine.len() as u64;
            let sum: u128 = mine
                .iter()
                .map(|r| r.receipt.charge_nanoton().unwrap_or(u128::MAX))
                .sum();
            let a = &c.authorization;
            if a.verify(public_key_sec1).is_err() {
                problems.push("the authorization is not signed by this account's key".into());
            }
            if a.auth.account != account.0 || a.auth.enclave_key != c.enclave_key {
                problems.push("the authorization names another account or enclave key".into());
            }
            let t = &c.tab;
            if t.tab.account != account.0 {
                problems.push("the tab is for another account".into());
            }
            if t.tab.verify(&t.signature, &c.enclave_key).is_err() {
                problems.push("the tab is not signed by the enclave key (forged)".into());
            }
            if (t.tab.count, t.tab.total) != (c.count, c.total) {
                problems.push("the manifest's count/total differ from the signed tab".into());
            }
            if t.tab.total > a.auth.cap {
                problems.push(format!(
                    "the tab's total {} is over the authorized cap {}",
                    t.tab.total, a.auth.cap
                ));
            }
            if c.total.checked_sub(c.already_claimed) != Some(c.amount) {
                problems.push("amount is not total minus what was claimed before".into());
            }
            match claim_body(c.query_id, a, t) {
                Ok(cell) if cell.to_boc() == c.body_boc => {}
                _ => problems.push(
                    "the message body is not the claim of this authorization and tab".into(),
                ),
            }
            if t.tab.count > n || u128::from(t.tab.total) > sum {
                problems.push(format!(
                    "the tab counts {} receipts / {} nanoton, but the ledger shows this account only {n} / {sum} under that key",
                    t.tab.count, t.tab.total
                ));
            } else if t.tab.count == n && u128::from(t.tab.total) != sum {
                problems.push(format!(
                    "the tab counts all {n} receipts but charges {} nanoton, not their {sum}",
                    t.tab.total
                ));
            }
            ClaimCheck {
                claim: c.clone(),
                receipts: n,
                nanoton: sum,
                problems,
            }
        })
        .collect()
}
