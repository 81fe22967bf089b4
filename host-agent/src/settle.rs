//! Settlement: the ledger's receipts, aggregated per (enclave receipt key,
//! account), become claim messages for the TON payment contract
//! (`contracts/`; `cocoon-host settle`).
//!
//! A claim carries two signed messages and nothing else the contract has to
//! trust: the client's authorization of the enclave's attested receipt key
//! up to a cap, and the enclave's cumulative tab for that account (count
//! and total of the receipts the host acknowledged as committed). The
//! contract pays `tab.total − already paid`, at most the cap and the
//! client's deposit, once.
//!
//! Before writing a claim this module checks, per pair:
//!
//! * both signatures again (the ledger is the host's own file, but a claim
//!   the contract refuses costs gas);
//! * the tab against the ledger: a tab counting more receipts, or the same
//!   number with another total, than the ledger holds means the ledger lost
//!   receipts; that pair is not claimed and the run says why;
//! * receipts the tab does not count yet are reported as pending (their
//!   enclave has not acknowledged them; they are claimed by a later run, or
//!   never if the enclave is gone).
//!
//! `settle --send` ([`send`]) sends the claims from the provider's wallet
//! and confirms them on chain instead of writing them out.
//!
//! The output directory gets `claims.json` (the manifest: every claim with
//! its amounts and the base64 BOC of its message body) and one
//! `claim-NNNN.boc` per claim, to be sent from the provider's wallet to the
//! contract with enough TON attached for gas.

use std::path::Path;

use cocoon_protocol::settlement::manifest::{LedgerTotals, ManifestUnclaimed};
use cocoon_protocol::settlement::{
    compress_p256, ClaimsManifest, ContractAddress, ManifestClaim, SignedAuthorization, SignedTab,
};
use cocoon_protocol::ton::claim_body;

use crate::ledger::{ClaimRecord, Ledger, SettlementRow};

pub mod send;

/// One claim message: the manifest's claim (one type, written and read
/// by [`ClaimsManifest`]) and the attested key as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// What the manifest states (its fields read through `Deref`).
    pub claim: ManifestClaim,
    /// The attested key as stored (SEC1).
    pub receipt_public_key: Vec<u8>,
}

impl std::ops::Deref for Claim {
    type Target = ManifestClaim;
    fn deref(&self) -> &ManifestClaim {
        &self.claim
    }
}

/// A pair that cannot be claimed (now), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclaimed {
    /// The account.
    pub account: [u8; 32],
    /// The attested key as stored (SEC1).
    pub receipt_public_key: Vec<u8>,
    /// Receipts in the ledger not counted by a claimable tab.
    pub receipts: u64,
    /// Their charges.
    pub nanoton: u128,
    /// Why.
    pub reason: String,
}

/// What a settlement run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Claims to send.
    pub claims: Vec<Claim>,
    /// Receipts not claimable now.
    pub unclaimed: Vec<Unclaimed>,
    /// Receipts in the ledger.
    pub ledger_receipts: u64,
    /// Their charges.
    pub ledger_nanoton: u128,
    /// Receipts counted by the claimed tabs (this and earlier runs).
    pub counted_receipts: u64,
    /// Their charges (the tabs' totals).
    pub counted_nanoton: u128,
}

impl Settlement {
    /// Sum of this run's claim amounts.
    pub fn total_amount(&self) -> u128 {
        self.claims.iter().map(|c| u128::from(c.amount)).sum()
    }

    /// What recording these claims in the ledger stores.
    pub fn records(&self) -> Vec<ClaimRecord> {
        self.claims
            .iter()
            .map(|c| ClaimRecord {
                receipt_public_key: c.receipt_public_key.clone(),
                account: c.account,
                count: c.count,
                total: c.total,
            })
            .collect()
    }
}

/// Build the claims for `contract` from the ledger's settlement view.
/// `query_id` numbers the first claim; the rest follow.
pub fn build(rows: &[SettlementRow], contract: ContractAddress, query_id: u64) -> Settlement {
    let mut out = Settlement::default();
    let checked = check_signatures(rows);
    for (row, checked) in rows.iter().zip(checked) {
        out.ledger_receipts += row.receipts;
        out.ledger_nanoton += row.charged;
        let unclaimed = |receipts: u64, nanoton: u128, reason: String| Unclaimed {
            account: row.account,
            receipt_public_key: row.receipt_public_key.clone(),
            receipts,
            nanoton,
            reason,
        };
        let Some(tab) = &row.tab else {
            out.unclaimed.push(unclaimed(
                row.receipts,
                row.charged,
                "no tab: the enclave has not acknowledged these receipts yet".into(),
            ));
            continue;
        };
        let signed = match checked.tab {
            Some(t) => t,
            None => {
                out.unclaimed.push(unclaimed(
                    row.receipts,
                    row.charged,
                    "the stored tab does not verify under the attested receipt key".into(),
                ));
                continue;
            }
        };
        if tab.count > row.receipts
            || (tab.count == row.receipts && u128::from(tab.total) != row.charged)
            || u128::from(tab.total) > row.charged
        {
            out.unclaimed.push(unclaimed(
                row.receipts,
                row.charged,
                format!(
                    "the tab counts {} receipts / {} nanoton but the ledger holds {} / {}: receipts are missing from the ledger; not claimed",
                    tab.count, tab.total, row.receipts, row.charged
                ),
            ));
            continue;
        }
        if tab.count < row.receipts {
            out.unclaimed.push(unclaimed(
                row.receipts - tab.count,
                row.charged - u128::from(tab.total),
                "not counted by the enclave's tab yet (pending acknowledgement; lost if the enclave is gone)".into(),
            ));
        }
        out.counted_receipts += tab.count;
        out.counted_nanoton += u128::from(tab.total);
        if tab.total <= row.claimed_total {
            continue;
        }
        if row.authorization.is_none() {
            out.unclaimed.push(unclaimed(
                tab.count,
                u128::from(tab.total - row.claimed_total),
                "no client authorization for this enclave key: not claimable".into(),
            ));
            continue;
        }
        let auth = match checked.authorization {
            Some(a) => a,
            None => {
                out.unclaimed.push(unclaimed(
                    tab.count,
                    u128::from(tab.total - row.claimed_total),
                    "the stored authorization does not verify".into(),
                ));
                continue;
            }
        };
        let Ok(enclave_key) = compress_p256(&row.receipt_public_key) else {
            continue;
        };
        if auth.auth.contract != contract || auth.auth.enclave_key != enclave_key {
            out.unclaimed.push(unclaimed(
                tab.count,
                u128::from(tab.total - row.claimed_total),
                format!(
                    "the authorization is for contract {} and another key, not {contract}",
                    auth.auth.contract
                ),
            ));
            continue;
        }
        if tab.total > auth.auth.cap {
            out.unclaimed.push(unclaimed(
                tab.count,
                u128::from(tab.total - row.claimed_total),
                format!(
                    "the tab's total {} is over the client's cap {}: the contract would refuse it",
                    tab.total, auth.auth.cap
                ),
            ));
            continue;
        }
        let claim_query_id = query_id + out.claims.len() as u64;
        let body = claim_body(claim_query_id, &auth, &signed);
        let Ok(body_boc) = body.map(|c| c.to_boc()) else {
            continue;
        };
        out.claims.push(Claim {
            claim: ManifestClaim {
                account: row.account,
                enclave_key,
                count: tab.count,
                total: tab.total,
                already_claimed: row.claimed_total,
                amount: tab.total - row.claimed_total,
                query_id: claim_query_id,
                authorization: auth,
                tab: signed,
                body_boc,
            },
            receipt_public_key: row.receipt_public_key.clone(),
        });
    }
    out
}

/// A row's stored tab and authorization, each `Some` when it parses and
/// its signature verifies.
struct Checked {
    tab: Option<SignedTab>,
    authorization: Option<SignedAuthorization>,
}

/// Verify every row's tab (under the attested receipt key) and
/// authorization (under the client's key), spread over the machine's
/// cores: the signatures are most of a settlement's CPU time, and each is
/// independent of the others.
fn check_signatures(rows: &[SettlementRow]) -> Vec<Checked> {
    let check = |row: &SettlementRow| Checked {
        tab: row.tab.as_ref().and_then(|tab| {
            SignedTab::from_bytes(&tab.signed)
                .ok()
                .filter(|t| t.tab.verify(&t.signature, &row.receipt_public_key).is_ok())
        }),
        authorization: row.authorization.as_ref().and_then(|auth| {
            SignedAuthorization::from_bytes(&auth.signed)
                .ok()
                .filter(|a| a.verify(&auth.client_public_key).is_ok())
        }),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || rows.len() < 64 {
        return rows.iter().map(check).collect();
    }
    let chunk = rows.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                (
                    part.len(),
                    scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()),
                )
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(len, p)| {
                // A verifier that panicked (it does not on any input) counts
                // its rows as unverified: nothing is claimed for them, and
                // the rows after them keep their own results.
                p.join().unwrap_or_else(|_| {
                    (0..len)
                        .map(|_| Checked {
                            tab: None,
                            authorization: None,
                        })
                        .collect()
                })
            })
            .collect()
    })
}

/// The manifest `claims.json` (format in `contracts/README.md`; the type
/// is [`ClaimsManifest`], which the client's statement reads).
pub fn manifest(s: &Settlement, contract: ContractAddress) -> String {
    to_manifest(s, contract).to_json()
}

/// What a run found, as the manifest states it.
pub fn to_manifest(s: &Settlement, contract: ContractAddress) -> ClaimsManifest {
    ClaimsManifest {
        contract,
        claims: s.claims.iter().map(|c| c.claim.clone()).collect(),
        total_amount: s.total_amount(),
        unclaimed: s
            .unclaimed
            .iter()
            .map(|u| ManifestUnclaimed {
                account: u.account,
                enclave_key: compress_p256(&u.receipt_public_key).ok(),
                receipts: u.receipts,
                nanoton: u.nanoton,
                reason: u.reason.clone(),
            })
            .collect(),
        ledger: LedgerTotals {
            receipts: s.ledger_receipts,
            nanoton: s.ledger_nanoton,
            counted_receipts: s.counted_receipts,
            counted_nanoton: s.counted_nanoton,
        },
    }
}

/// Run settlement: read the ledger, write `claims.json` and the BOCs into
/// `out`, and (unless `dry_run`) record the claims in the ledger so the
/// next run claims only what is new.
pub async fn run(
    ledger: &Ledger,
    contract: ContractAddress,
    out: &Path,
    query_id: u64,
    dry_run: bool,
) -> Result<Settlement, String> {
    let rows = ledger.settlement_view().await.map_err(|e| e.to_string())?;
    let s = build(&rows, contract, query_id);
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for (i, c) in s.claims.iter().enumerate() {
        let p = out.join(format!("claim-{:04}.boc", i + 1));
        std::fs::write(&p, &c.body_boc)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let p = out.join("claims.json");
    std::fs::write(&p, manifest(&s, contract))
        .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    if !dry_run {
        ledger
            .record_claims(s.records())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{StoredAuthorization, StoredTab};
    use cocoon_protocol::account::AccountKey;
    use cocoon_protocol::rand_core::OsRng;
    use cocoon_protocol::receipt::ReceiptSigner;
    use cocoon_protocol::settlement::{Authorization, Tab};

    const CONTRACT: ContractAddress = ContractAddress {
        workchain: 0,
        hash: [7; 32],
    };

    fn row(
        receipts: u64,
        charged: u128,
        tab: (u64, u64),
        cap: u64,
    ) -> (SettlementRow, ReceiptSigner) {
        let enclave = ReceiptSigner::generate(&mut OsRng);
        let client = AccountKey::generate(&mut OsRng);
        let key = enclave.public_key_sec1();
        let account = client.id().0;
        let t = enclave.sign_tab(&Tab {
            account,
            count: tab.0,
            total: tab.1,
        });
        let a = client.sign_authorization(&Authorization {
            contract: CONTRACT,
            account,
            enclave_key: compress_p256(&key).unwrap(),
            cap,
        });
        (
            SettlementRow {
                receipt_public_key: key,
                account,
                receipts,
                charged,
                tab: Some(StoredTab {
                    account,
                    count: tab.0,
                    total: tab.1,
                    signed: t.to_bytes().to_vec(),
                }),
                authorization: Some(StoredAuthorization {
                    account,
                    cap,
                    signed: a.to_bytes().to_vec(),
                    client_public_key: client.public_key_sec1(),
                }),
                claimed_count: 0,
                claimed_total: 0,
            },
            enclave,
        )
    }

    #[test]
    fn claims_only_what_both_signatures_and_the_ledger_support() {
        let (good, _) = row(3, 600, (3, 600), 1_000);
        let s = build(std::slice::from_ref(&good), CONTRACT, 5);
        assert_eq!(s.claims.len(), 1);
        assert_eq!((s.claims[0].amount, s.claims[0].query_id), (600, 5));
        // Already claimed up to 400: only the difference.
        let mut part = good.clone();
        part.claimed_total = 400;
        assert_eq!(build(&[part], CONTRACT, 1).claims[0].amount, 200);
        // Pending receipts are reported, the tab is still claimed.
        let (pending, _) = row(4, 700, (3, 600), 1_000);
        let s = build(&[pending], CONTRACT, 1);
        assert_eq!(s.claims.len(), 1);
        assert_eq!((s.unclaimed[0].receipts, s.unclaimed[0].nanoton), (1, 100));

        type Case = (SettlementRow, &'static str);
        let mut forged = good.clone();
        forged.tab.as_mut().unwrap().signed[50] ^= 1;
        let mut foreign_auth = good.clone();
        foreign_auth
            .authorization
            .as_mut()
            .unwrap()
            .client_public_key = AccountKey::generate(&mut OsRng).public_key_sec1();
        let mut no_auth = good.clone();
        no_auth.authorization = None;
        let cases: Vec<Case> = vec![
            (forged, "does not verify under the attested receipt key"),
            (foreign_auth, "authorization does not verify"),
            (no_auth, "no client authorization"),
            (row(3, 600, (3, 600), 599).0, "over the client's cap"),
            (row(2, 600, (3, 600), 1_000).0, "missing from the ledger"),
            (row(3, 601, (3, 600), 1_000).0, "missing from the ledger"),
        ];
        for (r, why) in cases {
            let s = build(&[r], CONTRACT, 1);
            assert!(s.claims.is_empty(), "{why}");
            assert!(
                s.unclaimed.iter().any(|u| u.reason.contains(why)),
                "{why}: {:?}",
                s.unclaimed
            );
        }
        // Another contract's authorization is not claimed here.
        let s = build(
            std::slice::from_ref(&good),
            ContractAddress {
                workchain: 0,
                hash: [8; 32],
            },
            1,
        );
        assert!(s.claims.is_empty());
    }

    /// The manifest as `settle` wrote it before [`ClaimsManifest`]
    /// existed (`serde_json::json!`, in insertion order): the reference
    /// for "the bytes written stay the same".
    fn manifest_as_before(s: &Settlement, contract: ContractAddress) -> String {
        use base64ct::{Base64, Encoding as _};
        let claims: Vec<serde_json::Value> = s
            .claims
            .iter()
            .map(|c| {
                serde_json::json!({
                    "account": hex::encode(c.account),
                    "enclave_key": hex::encode(c.enclave_key),
                    "count": c.count,
                    "total": c.total.to_string(),
                    "already_claimed": c.already_claimed.to_string(),
                    "amount": c.amount.to_string(),
                    "query_id": c.query_id,
                    "authorization": hex::encode(c.authorization.to_bytes()),
                    "tab": hex::encode(c.tab.to_bytes()),
                    "body_boc": Base64::encode_string(&c.body_boc),
                })
            })
            .collect();
        let unclaimed: Vec<serde_json::Value> = s
            .unclaimed
            .iter()
            .map(|u| {
                serde_json::json!({
                    "account": hex::encode(u.account),
                    "enclave_key": compress_p256(&u.receipt_public_key).map(hex::encode).unwrap_or_default(),
                    "receipts": u.receipts,
                    "nanoton": u.nanoton.to_string(),
                    "reason": u.reason,
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "version": 1,
            "contract": contract.to_string(),
            "claims": claims,
            "total_amount": s.total_amount().to_string(),
            "unclaimed": unclaimed,
            "ledger": {
                "receipts": s.ledger_receipts,
                "nanoton": s.ledger_nanoton.to_string(),
                "counted_receipts": s.counted_receipts,
                "counted_nanoton": s.counted_nanoton.to_string(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_manifest_bytes_are_unchanged_and_read_back() {
        let (good, _) = row(3, 600, (3, 600), 1_000);
        let (pending, _) = row(4, 700, (3, 600), 1_000);
        let mut bad_key = row(1, 5, (1, 5), 10).0;
        bad_key.receipt_public_key = vec![4; 65];
        bad_key.tab = None;
        let s = build(&[good, pending, bad_key], CONTRACT, 5);
        assert_eq!((s.claims.len(), s.unclaimed.len()), (2, 2));
        let text = manifest(&s, CONTRACT);
        assert_eq!(text, manifest_as_before(&s, CONTRACT));
        assert!(text.contains("\"enclave_key\": \"\","), "{text}");
        let empty = Settlement::default();
        assert_eq!(
            manifest(&empty, CONTRACT),
            manifest_as_before(&empty, CONTRACT)
        );
        // The client's decoder reads what the host writes.
        assert_eq!(
            ClaimsManifest::from_json(&text).unwrap(),
            to_manifest(&s, CONTRACT)
        );
    }
}
