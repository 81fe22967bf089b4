//! The deposit check: a settling host serves a request only while the
//! client's deposit in the payment contract covers the request's worst
//! case on top of everything the host has already served that account and
//! not yet been paid for.
//!
//! Per account, the host keeps a view read at most `ttl` ago:
//!
//! ```text
//! available = balance − pending withdrawal          (get_client, on chain)
//!           − owed: the account's receipts in the ledger not yet paid on
//!             chain (per enclave key: charges − get_paid as `settle
//!             --send` last recorded it)
//!           − reserved: the worst cases of this account's requests in
//!             flight here
//!           − charged: what requests that ended since the view was read
//!             charged
//! ```
//!
//! A request is admitted when its worst case ([`crate::pricing::max_cost`])
//! fits, and its worst case is reserved at once, so a burst between two
//! reads cannot spend more than the view allows. When the request ends its
//! reservation is replaced by what it charged until the next read (whose
//! ledger figure includes it). The ledger is read before the chain: a claim
//! the ledger records as paid has already left the balance read after it,
//! so the two can only count a payment twice (refusing a little early),
//! never not at all.
//!
//! Refusals: an account the contract does not know → `402` "no deposit";
//! not enough available → `402` naming the deposit, what is available and
//! what is needed; the chain cannot be read (unreachable, an error, an
//! answer that does not parse, or slower than the read timeout) → `503`:
//! the host never serves unpaid. A view that refused is read again after at
//! most [`REREAD_AFTER_REFUSAL`], so a client that just deposited is served
//! without waiting for the whole TTL, and one that did not cannot make the
//! host read the chain for every request.
//!
//! The check is per host: several hosts of one provider behind a load
//! balancer each reserve against the same deposit, so together they can
//! overcommit it by at most the worst cases each other host has in flight
//! (README, "Several host agents").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cocoon_chain::ChainClient;
use cocoon_protocol::account::AccountId;
use cocoon_protocol::settlement::ContractAddress;

use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::payment::{read_client, ClientDeposit};

/// Default time a deposit read is trusted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Default bound on one deposit read (the chain client's retries included).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A view that refused a request is read again after this long (or the
/// TTL, if shorter).
pub const REREAD_AFTER_REFUSAL: Duration = Duration::from_secs(1);
/// Accounts whose views are kept before idle ones are dropped.
const MAX_TRACKED: usize = 100_000;

/// How the deposit check reads the chain.
#[derive(Clone)]
pub struct DepositConfig {
    /// The chain API (the production client, or any other implementation).
    pub chain: Arc<dyn ChainClient>,
    /// How long one read of an account's deposit is trusted.
    pub ttl: Duration,
    /// The longest one read may take before the request is refused `503`.
    pub read_timeout: Duration,
}

impl std::fmt::Debug for DepositConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepositConfig")
            .field("ttl", &self.ttl)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a request was not admitted by the deposit check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositRefusal {
    /// The contract has no account with this id (`402`).
    #[error("no deposit: account {account} has no deposit in the payment contract {contract}; deposit first (cocoon-client deposit)")]
    NoDeposit {
        /// The account.
        account: AccountId,
        /// The payment contract.
        contract: ContractAddress,
    },
    /// The deposit does not cover the request (`402`).
    #[error("the deposit does not cover this request: deposit {balance} nanoton, {pending} pending withdrawal, {owed} owed for requests served and not yet paid on chain, {in_flight} reserved for requests in flight: available {available}, needed up to {needed}; deposit more")]
    Insufficient {
        /// Balance on chain.
        balance: u128,
        /// Pending withdrawal on chain.
        pending: u128,
        /// Served here and not yet paid on chain (plus what ended since
        /// the read).
        owed: u128,
        /// Worst cases of requests in flight here.
        in_flight: u128,
        /// What is left.
        available: u128,
        /// This request's worst case.
        needed: u128,
    },
    /// The deposit cannot be read (`503`).
    #[error("the deposit cannot be checked: {0}; not serving unpaid, retry later")]
    ChainUnavailable(String),
    /// The ledger cannot be read (`500`).
    #[error("the ledger cannot be read: {0}")]
    Ledger(LedgerError),
}

/// One read of an account's deposit.
#[derive(Debug, Clone, Copy)]
struct View {
    at: Instant,
    deposit: ClientDeposit,
    /// The ledger's unpaid charges when read.
    owed: u128,
    /// `Slot::charged` when the ledger was read.
    charged_at_read: u128,
}

#[derive(Debug, Default)]
struct State {
    view: Option<View>,
    /// Worst cases of admitted requests still running.
    reserved: u128,
    /// Charges of ended requests, a running total.
    charged: u128,
    /// Whether the last decision on `view` was a refusal.
    refused: bool,
}

/// One account: its state, and a lock that makes one request read the
/// chain while the others wait for that read.
#[derive(Debug, Default)]
struct Slot {
    reading: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The deposit check of a settling host.
#[derive(Debug)]
pub struct Deposits {
    config: DepositConfig,
    contract: ContractAddress,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
}

/// A request's worst case, reserved against its account's deposit until
/// [`Hold::release`] (or drop, which releases with nothing charged).
#[derive(Debug)]
pub struct Hold {
    slot: Option<Arc<Slot>>,
    reserved: u128,
}

impl Hold {
    /// The request ended having charged `charged` nanoton.
    pub fn release(mut self, charged: u128) {
        self.finish(charged);
    }

    fn finish(&mut self, charged: u128) {
        if let Some(slot) = self.slot.take() {
            let mut st = slot.lock();
            st.reserved = st.reserved.saturating_sub(self.reserved);
            st.charged = st.charged.saturating_add(charged);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.finish(0);
    }
}

/// Whether the view admits `cost`; reserves it when it does.
fn decide(
    st: &mut State,
    view: View,
    cost: u128,
    account: AccountId,
    contract: ContractAddress,
) -> Result<(), DepositRefusal> {
    if !view.deposit.exists {
        st.refused = true;
        return Err(DepositRefusal::NoDeposit { account, contract });
    }
    let ended = st.charged.saturating_sub(view.charged_at_read);
    let owed = view.owed.saturating_add(ended);
    let available = view
        .deposit
        .spendable()
        .saturating_sub(owed)
        .saturating_sub(st.reserved);
    if cost > available {
        st.refused = true;
        return Err(DepositRefusal::Insufficient {
            balance: view.deposit.balance,
            pending: view.deposit.pending,
            owed,
            in_flight: st.reserved,
            available,
            needed: cost,
        });
    }
    st.refused = false;
    st.reserved = st.reserved.saturating_add(cost);
    Ok(())
}

impl Deposits {
    /// The check for `contract`, reading through `config.chain`.
    pub fn new(config: DepositConfig, contract: ContractAddress) -> Deposits {
        Deposits {
            config,
            contract,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, account: [u8; 32], now: Instant) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_TRACKED && !slots.contains_key(&account) {
            // Drop idle accounts: nothing in flight and no view still fresh.
            let ttl = self.config.ttl;
            slots.retain(|_, s| {
                let st = s.lock();
                st.reserved > 0 || st.view.is_some_and(|v| now.duration_since(v.at) < ttl)
            });
        }
        slots.entry(account).or_default().clone()
    }

    /// Whether `view` may still decide at `now`.
    fn usable(&self, st: &State, now: Instant) -> Option<View> {
        let v = st.view?;
        let age = now.saturating_duration_since(v.at);
        let limit = if st.refused {
            self.config.ttl.min(REREAD_AFTER_REFUSAL)
        } else {
            self.config.ttl
        };
        (age < limit).then_some(v)
    }

    /// Admit a request of `account` whose worst case is `cost`: reserve it
    /// against the deposit, reading the chain (and the ledger) when the
    /// account's view is older than the TTL. `clock` gives the instants.
    pub async fn reserve(
        &self,
        ledger: &Ledger,
        metrics: &Metrics,
        clock: &crate::Clock,
        account: [u8; 32],
        cost: u128,
    ) -> Result<Hold, DepositRefusal> {
        let id = AccountId(account);
        let slot = self.slot(account, clock.instant());
        let hold = |slot: Arc<Slot>| Hold {
            slot: Some(slot),
            reserved: cost,
        };
        let decided = |st: &mut State, view: View| {
            decide(st, view, cost, id, self.contract).inspect_err(|r| metrics.deposit_refused(r))
        };
        {
            let mut st = slot.lock();
            if let Some(view) = self.usable(&st, clock.instant()) {
                decided(&mut st, view)?;
                drop(st);
                return Ok(hold(slot));
            }
        }
        let _reading = slot.reading.lock().await;
        {
            // Another request may have read while this one waited.
            let mut st = slot.lock();
            if let Some(view) = self.usable(&st, clock.instant()) {
                decided(&mut st, view)?;
                drop(st);
                return Ok(hold(slot.clone()));
            }
        }
        let charged_at_read = slot.lock().charged;
        let owed = ledger
            .unclaimed_for(account)
            .await
            .map_err(DepositRefusal::Ledger)?;
        let read = tokio::time::timeout(
            self.config.read_timeout,
            read_client(self.config.chain.as_ref(), &self.contract, account),
        )
        .await;
        let deposit = match read {
            Ok(Ok(d)) => {
                metrics.deposit_read(if d.exists { "ok" } else { "no_deposit" });
                d
            }
            Ok(Err(e)) => {
                metrics.deposit_read("failed");
                let r = DepositRefusal::ChainUnavailable(e.to_string());
                metrics.deposit_refused(&r);
                return Err(r);
            }
            Err(_) => {
                metrics.deposit_read("failed");
                let r = DepositRefusal::ChainUnavailable(format!(
                    "get_client on {} took longer than {:?}",
                    self.contract, self.config.read_timeout
                ));
                metrics.deposit_refused(&r);
                return Err(r);
            }
        };
        let view = View {
            at: clock.instant(),
            deposit,
            owed,
            charged_at_read,
        };
        let mut st = slot.lock();
        st.view = Some(view);
        decided(&mut st, view)?;
        drop(st);
        Ok(hold(slot.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_chain::{AccountState, ChainError, StackValue, Transaction, TransactionId, TvmInt};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A stand-in chain for these unit tests of the cache and the
    /// arithmetic: `get_client` answers from a table; nothing else is
    /// implemented. (The host's integration tests read the sandbox chain
    /// through the real HTTP client.)
    #[derive(Default)]
    struct TableChain {
        clients: Mutex<HashMap<[u8; 32], (u128, u128)>>,
        reads: AtomicUsize,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl ChainClient for TableChain {
        async fn account_state(&self, _: &ContractAddress) -> Result<AccountState, ChainError> {
            Err(ChainError::InvalidRequest(
                "TableChain answers get_client only".into(),
            ))
        }
        async fn run_get_method(
            &self,
            _: &ContractAddress,
            method: &str,
            args: &[StackValue],
        ) -> Result<Vec<StackValue>, ChainError> {
            assert_eq!(method, "get_client");
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(ChainError::Unreachable {
                    endpoint: "table".into(),
                    reason: "down".into(),
                });
            }
            let [StackValue::Int(id)] = args else {
                panic!("{args:?}")
            };
            let row = self.clients.lock().unwrap().get(&id.magnitude).copied();
            let int = |v: u128| StackValue::Int(TvmInt::from_u128(v));
            Ok(match row {
                None => vec![int(0), int(0), int(0), int(0)],
                Some((balance, pending)) => {
                    let mut m = [0u8; 32];
                    m[31] = 1;
                    vec![
                        StackValue::Int(TvmInt {
                            negative: true,
                            magnitude: m,
                        }),
                        int(balance),
                        int(pending),
                        int(0),
                    ]
                }
            })
        }
        async fn send_message(&self, _: &[u8]) -> Result<[u8; 32], ChainError> {
            Err(ChainError::InvalidRequest(
                "TableChain answers get_client only".into(),
            ))
        }
        async fn transactions(
            &self,
            _: &ContractAddress,
            _: u32,
            _: Option<TransactionId>,
        ) -> Result<Vec<Transaction>, ChainError> {
            Err(ChainError::InvalidRequest(
                "TableChain answers get_client only".into(),
            ))
        }
    }

    fn setup(name: &str) -> (Arc<TableChain>, Deposits, Ledger, crate::clock::PinnedClock) {
        let chain = Arc::new(TableChain::default());
        let deposits = Deposits::new(
            DepositConfig {
                chain: chain.clone(),
                ttl: Duration::from_secs(5),
                read_timeout: Duration::from_secs(1),
            },
            ContractAddress {
                workchain: 0,
                hash: [3; 32],
            },
        );
        let dir = std::env::temp_dir().join(format!(
            "cocoon-deposits-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = Ledger::open(&dir.join("l.sqlite"), Default::default()).unwrap();
        (
            chain,
            deposits,
            ledger,
            crate::clock::PinnedClock::at(1_800_000_000),
        )
    }

    #[tokio::test]
    async fn reserves_within_the_deposit_and_reads_once_per_ttl() {
        let (chain, d, ledger, pinned) = setup("reserve");
        let clock = pinned.clock();
        let m = Metrics::default();
        let a = [1u8; 32];
        // Unknown account: no deposit.
        let e = d.reserve(&ledger, &m, &clock, a, 10).await.unwrap_err();
        assert!(matches!(e, DepositRefusal::NoDeposit { .. }), "{e}");
        assert!(e.to_string().starts_with("no deposit"), "{e}");
        // Deposited meanwhile: the refusal is re-read after a second, not
        // after the whole TTL.
        chain.clients.lock().unwrap().insert(a, (1_000, 100));
        assert!(d.reserve(&ledger, &m, &clock, a, 10).await.is_err());
        pinned.advance(REREAD_AFTER_REFUSAL);
        let h1 = d.reserve(&ledger, &m, &clock, a, 600).await.unwrap();
        assert_eq!(chain.reads.load(Ordering::SeqCst), 2);
        // 900 spendable, 600 reserved: 301 does not fit, 300 does.
        let e = d.reserve(&ledger, &m, &clock, a, 301).await.unwrap_err();
        assert_eq!(
            e,
            DepositRefusal::Insufficient {
                balance: 1_000,
                pending: 100,
                owed: 0,
                in_flight: 600,
                available: 300,
                needed: 301
            }
        );
        assert!(e.to_string().contains("available 300"), "{e}");
        let h2 = d.reserve(&ledger, &m, &clock, a, 300).await.unwrap();
        // The first ends having charged 250: 350 back.
        h1.release(250);
        drop(h2);
        let h3 = d.reserve(&ledger, &m, &clock, a, 650).await.unwrap();
        assert!(d.reserve(&ledger, &m, &clock, a, 1).await.is_err());
        drop(h3);
        // All from one read (the refusal above is within the second).
        assert_eq!(chain.reads.load(Ordering::SeqCst), 2);
        // After the TTL the chain is read again; down: 503, never admitted.
        pinned.advance(Duration::from_secs(5));
        chain.down.store(true, Ordering::SeqCst);
        let e = d.reserve(&ledger, &m, &clock, a, 1).await.unwrap_err();
        assert!(matches!(e, DepositRefusal::ChainUnavailable(_)), "{e}");
        let t = m.render(&Default::default());
        assert!(
            t.contains("cocoon_host_deposit_reads_total{result=\"ok\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("cocoon_host_deposit_reads_total{result=\"no_deposit\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("cocoon_host_deposit_reads_total{result=\"failed\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("cocoon_host_deposit_refusals_total{reason=\"no_deposit\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("cocoon_host_deposit_refusals_total{reason=\"insufficient\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("cocoon_host_deposit_refusals_total{reason=\"chain_unavailable\"} 1"),
            "{t}"
        );
        ledger.close();
    }

    /// A burst of concurrent requests on a cold cache reads the chain
    /// once and admits exactly what the deposit covers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_reads_once_and_cannot_overspend() {
        let (chain, d, ledger, pinned) = setup("burst");
        let clock = pinned.clock();
        let m = Metrics::default();
        let a = [5u8; 32];
        chain.clients.lock().unwrap().insert(a, (1_000, 0));
        let (d, ledger, m) = (Arc::new(d), Arc::new(ledger), Arc::new(m));
        let tasks: Vec<_> = (0..25)
            .map(|_| {
                let (d, ledger, m, clock) = (d.clone(), ledger.clone(), m.clone(), clock.clone());
                tokio::spawn(async move { d.reserve(&ledger, &m, &clock, a, 100).await })
            })
            .collect();
        let mut holds = Vec::new();
        for t in tasks {
            if let Ok(h) = t.await.unwrap() {
                holds.push(h);
            }
        }
        assert_eq!(holds.len(), 10);
        assert_eq!(chain.reads.load(Ordering::SeqCst), 1);
        ledger.close();
    }

    #[tokio::test]
    async fn the_ledger_s_unpaid_receipts_count_against_the_deposit() {
        let (chain, d, ledger, pinned) = setup("owed");
        let clock = pinned.clock();
        let m = Metrics::default();
        let mut e = crate::ledger::tests::entry(3);
        e.account = [2; 32];
        e.charge = 700;
        ledger.append(e).await.unwrap();
        chain.clients.lock().unwrap().insert([2; 32], (1_000, 0));
        let r = d
            .reserve(&ledger, &m, &clock, [2; 32], 301)
            .await
            .unwrap_err();
        assert!(
            matches!(
                r,
                DepositRefusal::Insufficient {
                    owed: 700,
                    available: 300,
                    ..
                }
            ),
            "{r}"
        );
        // Paid on chain (the balance went down by 700, the ledger records
        // it): 300 available still.
        chain.clients.lock().unwrap().insert([2; 32], (300, 0));
        ledger
            .record_paid(vec![(vec![4; 65], [2; 32], 700)], 1)
            .await
            .unwrap();
        pinned.advance(Duration::from_secs(5));
        assert!(d.reserve(&ledger, &m, &clock, [2; 32], 301).await.is_err());
        pinned.advance(Duration::from_secs(5));
        d.reserve(&ledger, &m, &clock, [2; 32], 300).await.unwrap();
        ledger.close();
    }
}
