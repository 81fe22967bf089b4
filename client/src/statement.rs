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
use cocoon_protocol::settlement::{compress_p256, SignedAuthorization, SignedTab};
use cocoon_protocol::ton::claim_body;

use crate::client::VerifiedReceipt;

/// One claim of the manifest, as the statement reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestClaim {
    /// Account (hex in the manifest).
    pub account: [u8; 32],
    /// Enclave receipt key, compressed.
    pub enclave_key: [u8; 33],
    /// Receipts the tab counts.
    pub count: u64,
    /// The tab's total.
    pub total: u64,
    /// Claimed before.
    pub already_claimed: u64,
    /// This claim's amount.
    pub amount: u64,
    /// The body's query id.
    pub query_id: u64,
    /// The signed authorization.
    pub authorization: SignedAuthorization,
    /// The signed tab.
    pub tab: SignedTab,
    /// The message body (BOC).
    pub body_boc: Vec<u8>,
}

/// Parse a `claims.json` manifest strictly.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestClaim>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("claims manifest is not JSON: {e}"))?;
    if v.get("version").and_then(|x| x.as_u64()) != Some(1) {
        return Err("claims manifest: version must be 1".into());
    }
    let claims = v
        .get("claims")
        .and_then(|c| c.as_array())
        .ok_or("claims manifest: no claims array")?;
    claims
        .iter()
        .enumerate()
        .map(|(i, c)| parse_claim(c).map_err(|e| format!("claims manifest, claim {i}: {e}")))
        .collect()
}

fn parse_claim(c: &serde_json::Value) -> Result<ManifestClaim, String> {
    let s = |k: &str| -> Result<&str, String> {
        c.get(k)
            .and_then(|x| x.as_str())
            .ok_or_else(|| format!("missing {k}"))
    };
    let bytes = |k: &str| -> Result<Vec<u8>, String> {
        hex::decode(s(k)?).map_err(|_| format!("{k} is not hex"))
    };
    let num = |k: &str| -> Result<u64, String> {
        s(k)?
            .parse::<u64>()
            .map_err(|_| format!("{k} is not a decimal u64"))
    };
    let account: [u8; 32] = bytes("account")?
        .try_into()
        .map_err(|_| "account is not 32 bytes".to_string())?;
    let enclave_key: [u8; 33] = bytes("enclave_key")?
        .try_into()
        .map_err(|_| "enclave_key is not 33 bytes".to_string())?;
    let body_boc = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(s("body_boc")?)
            .map_err(|_| "body_boc is not base64".to_string())?
    };
    Ok(ManifestClaim {
        account,
        enclave_key,
        count: c
            .get("count")
            .and_then(|x| x.as_u64())
            .ok_or("missing count")?,
        total: num("total")?,
        already_claimed: num("already_claimed")?,
        amount: num("amount")?,
        query_id: c
            .get("query_id")
            .and_then(|x| x.as_u64())
            .ok_or("missing query_id")?,
        authorization: SignedAuthorization::from_bytes(&bytes("authorization")?)
            .map_err(|e| format!("authorization: {e}"))?,
        tab: SignedTab::from_bytes(&bytes("tab")?).map_err(|e| format!("tab: {e}"))?,
        body_boc,
    })
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
