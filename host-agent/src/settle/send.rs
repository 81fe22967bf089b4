//! `cocoon-host settle --send`: the claims [`super::build`] makes, sent from
//! the provider's wallet (v4r2) to the payment contract, confirmed on
//! chain, and recorded in the ledger so that a run that dies half-way is
//! resumed by the next one without paying twice.
//!
//! One run:
//!
//! 1. **Resume.** Every claim the ledger records as sent but not seen paid
//!    (`chain_claims.sent_total > paid`) is checked on chain first: the
//!    contract's `get_paid` for the pair, and, while it is short, the
//!    wallet's seqno. A claim whose message may still land (the wallet has
//!    not moved past its seqno and the message is still valid) is waited
//!    for, up to the run's wait; one that is still undecided then is left
//!    alone this run (reported), never sent a second time.
//! 2. **Build.** As `settle` does, with "already claimed" taken from what
//!    the chain has paid (the ledger's last `get_paid` reading), not from
//!    what earlier runs wrote out.
//! 3. **Check.** Before each claim, `get_paid(account, enclave key)`: a
//!    pair already paid up to the tab's total is skipped. (The contract
//!    itself pays `tab total − paid` and refuses a claim with nothing new,
//!    so even a claim sent twice pays once; the check saves the gas.)
//! 4. **Send.** Up to four claims per external message, each an internal
//!    message to the contract carrying [`SendOptions::claim_value`] for gas
//!    (bounceable; what gas leaves stays in the contract). The message is
//!    recorded as sent (seqno and hash) before the run waits for it.
//! 5. **Confirm.** Wait until the wallet's seqno moves past the one used,
//!    then read `get_paid` again: landed when it reached the tab's total
//!    (recorded: the pair's paid figure, and the claim in the `claims`
//!    table so `settle --out` does not write it again); otherwise the
//!    contract refused it (its transaction says why: e.g. 111, the deposit
//!    does not cover the claim) and the run reports it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_chain::wait::wallet_seqno;
use cocoon_chain::wallet::{InternalMessage, WalletV4, MAX_MESSAGES};
use cocoon_chain::{ChainClient, ChainError};
use cocoon_protocol::settlement::{compress_p256, ContractAddress};
use cocoon_protocol::ton::claim_body;
use ed25519_dalek::SigningKey;

use super::Claim;
use crate::ledger::{ClaimRecord, Ledger, SentClaim};
use crate::payment::read_paid;

/// Set (to anything) in the environment, `settle --send` exits with
/// [`TEST_ONLY_EXIT_CODE`] right after it recorded its first message as
/// sent, before it waits for it: the tests' stand-in for a crash between
/// send and confirm. Never set it in production.
pub const TEST_ONLY_EXIT_AFTER_SEND: &str = "COCOON_HOST_TEST_ONLY_EXIT_AFTER_SEND";
/// The exit status of that simulated crash.
pub const TEST_ONLY_EXIT_CODE: i32 = 86;

/// Default value attached to each claim message, nanoton (a claim costs
/// about 0.007 TON of gas; `contracts/README.md`).
pub const DEFAULT_CLAIM_VALUE: u128 = 50_000_000;

/// How a run sends.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The payment contract.
    pub contract: ContractAddress,
    /// query_id of the first claim.
    pub query_id: u64,
    /// Nanoton attached to each claim message.
    pub claim_value: u128,
    /// How long to wait for one external message to be processed (also
    /// its validity: after that the chain refuses it for good).
    pub wait: Duration,
}

/// One claim's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// The account.
    pub account: [u8; 32],
    /// The enclave key (compressed).
    pub enclave_key: [u8; 33],
    /// The tab's total.
    pub total: u64,
    /// What the contract had paid for the pair before.
    pub paid_before: u64,
    /// What it has paid now (as last read).
    pub paid_after: u64,
    /// Why it failed, when it did.
    pub failure: Option<String>,
}

impl ClaimOutcome {
    /// What this claim added on chain.
    pub fn amount(&self) -> u64 {
        self.paid_after.saturating_sub(self.paid_before)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Claims sent this run (landed or not).
    pub sent: Vec<ClaimOutcome>,
    /// External messages sent.
    pub messages: usize,
    /// Claims skipped: the contract had already paid the tab's total.
    pub already_paid: Vec<ClaimOutcome>,
    /// Claims an earlier run sent that were found paid (resumed).
    pub resumed_landed: Vec<ClaimOutcome>,
    /// Claims an earlier run sent whose fate is still open: not sent
    /// again this run.
    pub resumed_pending: Vec<ClaimOutcome>,
    /// Pairs the ledger holds that could not be claimed (as `settle`
    /// reports them).
    pub unclaimed: Vec<super::Unclaimed>,
}

impl SendReport {
    /// Claims of this run that landed.
    pub fn landed(&self) -> impl Iterator<Item = &ClaimOutcome> {
        self.sent.iter().filter(|c| c.failure.is_none())
    }

    /// Claims of this run that did not.
    pub fn failed(&self) -> impl Iterator<Item = &ClaimOutcome> {
        self.sent.iter().filter(|c| c.failure.is_some())
    }

    /// Nanoton the contract paid for this run's claims and the resumed
    /// ones found landed.
    pub fn amount_landed(&self) -> u128 {
        self.landed()
            .chain(&self.resumed_landed)
            .map(|c| u128::from(c.amount()))
            .sum()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The contract's paid figure for a pair, clamped to the u64 tabs use.
async fn paid(
    chain: &dyn ChainClient,
    contract: &ContractAddress,
    account: [u8; 32],
    key: &[u8; 33],
) -> Result<u64, String> {
    read_paid(chain, contract, account, key)
        .await
        .map(|p| u64::try_from(p).unwrap_or(u64::MAX))
        .map_err(|e| format!("get_paid: {e}"))
}

/// Poll the wallet until its seqno passes `seqno`, for at most `wait`.
/// `Ok(true)` when it did.
async fn seqno_passed(
    chain: &dyn ChainClient,
    wallet: &WalletV4,
    seqno: u32,
    wait: Duration,
) -> Result<bool, ChainError> {
    let started = tokio::time::Instant::now();
    let poll = (wait / 20).clamp(Duration::from_millis(100), Duration::from_secs(3));
    loop {
        match wallet_seqno(chain, wallet).await {
            Ok((s, _)) if s > seqno => return Ok(true),
            Ok(_) => {}
            Err(e) if started.elapsed() >= wait => return Err(e),
            Err(_) => {}
        }
        if started.elapsed() >= wait {
            return Ok(false);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Run `settle --send` (module docs).
pub async fn run(
    ledger: &Ledger,
    chain: &dyn ChainClient,
    wallet: &WalletV4,
    key: &SigningKey,
    opts: &SendOptions,
) -> Result<SendReport, String> {
    let contract = opts.contract;
    let mut report = SendReport::default();
    let ledger_err = |e: crate::ledger::LedgerError| e.to_string();

    // 1. Resume what an earlier run left sent but unconfirmed.
    let mut pending_pairs = Vec::new();
    for row in ledger.chain_claims().await.map_err(ledger_err)? {
        let Some(sent) = row.unconfirmed().cloned() else {
            continue;
        };
        let Ok(enclave_key) = compress_p256(&row.receipt_public_key) else {
            continue;
        };
        let mut now_paid = paid(chain, &contract, row.account, &enclave_key).await?;
        if now_paid < sent.total {
            // Still short: may its message land yet? Wait for the wallet to
            // pass its seqno, within the message's validity and this run's
            // wait, then read again.
            let valid_for = sent.valid_until.saturating_sub(unix_now());
            let wait = opts.wait.min(Duration::from_secs(valid_for));
            let passed = seqno_passed(chain, wallet, sent.seqno, wait)
                .await
                .map_err(|e| format!("wallet seqno: {e}"))?;
            now_paid = paid(chain, &contract, row.account, &enclave_key).await?;
            if now_paid < sent.total && !passed && unix_now() <= sent.valid_until {
                pending_pairs.push((row.receipt_public_key.clone(), row.account));
                report.resumed_pending.push(ClaimOutcome {
                    account: row.account,
                    enclave_key,
                    total: sent.total,
                    paid_before: row.paid,
                    paid_after: now_paid,
                    failure: Some(format!(
                        "sent with wallet seqno {} (message {}) and not processed yet; re-checked by the next run, not sent again now",
                        sent.seqno,
                        hex::encode(sent.message_hash)
                    )),
                });
            }
        }
        ledger
            .record_paid(
                vec![(row.receipt_public_key.clone(), row.account, now_paid)],
                unix_now(),
            )
            .await
            .map_err(ledger_err)?;
        if now_paid >= sent.total {
            report.resumed_landed.push(ClaimOutcome {
                account: row.account,
                enclave_key,
                total: sent.total,
                paid_before: row.paid,
                paid_after: now_paid,
                failure: None,
            });
        }
    }

    // 2. Build, with "already claimed" what the chain has paid.
    let chain_rows = ledger.chain_claims().await.map_err(ledger_err)?;
    let mut rows = ledger.settlement_view().await.map_err(ledger_err)?;
    rows.retain(|r| !pending_pairs.contains(&(r.receipt_public_key.clone(), r.account)));
    for r in &mut rows {
        r.claimed_total = chain_rows
            .iter()
            .find(|c| c.receipt_public_key == r.receipt_public_key && c.account == r.account)
            .map_or(0, |c| c.paid);
        // Paid on chain up to the tab already (a reading of the contract,
        // whose paid figure never goes back): nothing to send.
        if let (Some(tab), Ok(enclave_key)) = (&r.tab, compress_p256(&r.receipt_public_key)) {
            if r.claimed_total > 0 && tab.total <= r.claimed_total {
                report.already_paid.push(ClaimOutcome {
                    account: r.account,
                    enclave_key,
                    total: tab.total,
                    paid_before: r.claimed_total,
                    paid_after: r.claimed_total,
                    failure: None,
                });
            }
        }
    }
    let built = super::build(&rows, contract, opts.query_id);
    report.unclaimed = built.unclaimed.clone();

    // 3. Check each claim on chain.
    let mut to_send: Vec<(Claim, u64)> = Vec::new();
    for c in built.claims {
        let p = paid(chain, &contract, c.account, &c.enclave_key).await?;
        if p >= c.total {
            ledger
                .record_paid(
                    vec![(c.receipt_public_key.clone(), c.account, p)],
                    unix_now(),
                )
                .await
                .map_err(ledger_err)?;
            report.already_paid.push(ClaimOutcome {
                account: c.account,
                enclave_key: c.enclave_key,
                total: c.total,
                paid_before: p,
                paid_after: p,
                failure: None,
            });
        } else {
            to_send.push((c, p));
        }
    }
    if to_send.is_empty() {
        return Ok(report);
    }
    let state = chain
        .account_state(&wallet.address())
        .await
        .map_err(|e| format!("wallet {}: {e}", wallet.address()))?;
    let needed = opts.claim_value * to_send.len() as u128;
    if state.balance < needed {
        return Err(format!(
            "wallet {} holds {} nanoton; {} claim(s) need {} attached (plus the wallet's own fees): fund it",
            wallet.address(),
            state.balance,
            to_send.len(),
            needed
        ));
    }

    // 4 and 5. Send in messages of up to four claims; confirm each.
    for batch in to_send.chunks(MAX_MESSAGES) {
        let outcomes = send_batch(ledger, chain, wallet, key, opts, batch).await?;
        report.messages += 1;
        report.sent.extend(outcomes);
    }
    Ok(report)
}

/// Send one external message of up to four claims and confirm it.
async fn send_batch(
    ledger: &Ledger,
    chain: &dyn ChainClient,
    wallet: &WalletV4,
    key: &SigningKey,
    opts: &SendOptions,
    batch: &[(Claim, u64)],
) -> Result<Vec<ClaimOutcome>, String> {
    let contract = opts.contract;
    let mut messages = Vec::with_capacity(batch.len());
    for (c, _) in batch {
        let body = claim_body(c.query_id, &c.authorization, &c.tab)
            .map_err(|e| format!("claim body: {e}"))?;
        let mut m = InternalMessage::transfer(contract, opts.claim_value, true);
        m.body = Some(body);
        messages.push(m);
    }
    let (seqno, active) = wallet_seqno(chain, wallet)
        .await
        .map_err(|e| format!("wallet seqno: {e}"))?;
    let sent_at = unix_now();
    let valid_until = u32::try_from(sent_at + opts.wait.as_secs().max(1)).unwrap_or(u32::MAX);
    let boc = wallet
        .external_message(key, seqno, valid_until, &messages, !active)
        .map_err(|e| format!("wallet message: {e}"))?;
    let message_hash = chain
        .send_message(&boc)
        .await
        .map_err(|e| format!("sending the claims (wallet seqno {seqno}): {e}"))?;
    ledger
        .record_claims_sent(
            batch
                .iter()
                .map(|(c, _)| SentClaim {
                    receipt_public_key: c.receipt_public_key.clone(),
                    account: c.account,
                    total: c.total,
                    seqno,
                    message_hash,
                    sent_at,
                    valid_until: u64::from(valid_until),
                })
                .collect(),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(seqno, message = %hex::encode(message_hash), claims = batch.len(), "claims sent");
    if std::env::var_os(TEST_ONLY_EXIT_AFTER_SEND).is_some() {
        eprintln!("cocoon-host: {TEST_ONLY_EXIT_AFTER_SEND} is set: exiting after the send, before confirming it (a TEST-ONLY simulated crash)");
        std::process::exit(TEST_ONLY_EXIT_CODE);
    }
    let passed = seqno_passed(chain, wallet, seqno, opts.wait).await;
    let mut out = Vec::with_capacity(batch.len());
    let mut landed = Vec::new();
    for (c, before) in batch {
        let after = paid(chain, &contract, c.account, &c.enclave_key).await;
        let (paid_after, failure) = match (&passed, after) {
            (_, Ok(p)) if p >= c.total => (p, None),
            (Ok(true), Ok(p)) => (
                p,
                Some(format!(
                    "the wallet sent it (seqno {seqno}) but the contract did not pay it (paid {p} of {}): it refused the claim; its transaction says why (e.g. exit 111: the deposit does not cover it)",
                    c.total
                )),
            ),
            (Ok(false), Ok(p)) => (
                p,
                Some(format!(
                    "not processed within {:?} (wallet seqno {seqno}, message {}); the next run checks it on chain before sending anything again",
                    opts.wait,
                    hex::encode(message_hash)
                )),
            ),
            (Err(e), Ok(p)) => (p, Some(format!("wallet seqno: {e}"))),
            (_, Err(e)) => (*before, Some(e)),
        };
        if failure.is_none() {
            landed.push(c);
        }
        out.push(ClaimOutcome {
            account: c.account,
            enclave_key: c.enclave_key,
            total: c.total,
            paid_before: *before,
            paid_after,
            failure,
        });
    }
    let now = unix_now();
    ledger
        .record_paid(
            batch
                .iter()
                .zip(&out)
                .map(|((c, _), o)| (c.receipt_public_key.clone(), c.account, o.paid_after))
                .collect(),
            now,
        )
        .await
        .map_err(|e| e.to_string())?;
    ledger
        .record_claims(
            landed
                .iter()
                .map(|c| ClaimRecord {
                    receipt_public_key: c.receipt_public_key.clone(),
                    account: c.account,
                    count: c.count,
                    total: c.total,
                })
                .collect(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}
