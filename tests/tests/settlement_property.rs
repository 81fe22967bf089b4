//! Property test of the way from receipts to payment claims: for random
//! request streams with host crashes (before a commit, between a commit and
//! its acknowledgement, between an acknowledgement and storing the tab),
//! graceful enclave restarts and enclave crashes, the claims settlement
//! writes charge exactly the receipts the enclaves counted, each once; the
//! ledger's receipts equal the charged total plus the receipts reported as
//! never chargeable (only those of an enclave that crashed with them
//! unacknowledged); and a second settlement run claims nothing.
//!
//! Real parts: the enclave's `TabBook` and receipt key (signatures), the
//! host's SQLite ledger (reopened after every "crash"), the protocol's
//! acknowledgement and tab-update encodings, the tab signature checks, and
//! `cocoon_host::settle::build`. What is simulated is only the transport
//! between them, so that a crash can fall between any two steps.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cocoon_host::ledger::{Ledger, LedgerEntry, LedgerOptions, StoredAuthorization, StoredTab};
use cocoon_host::settle;
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::settlement::{compress_p256, Authorization, ContractAddress};
use cocoon_protocol::tabs::TabBook;
use cocoon_protocol::tabs::{ReceiptAck, TabUpdate};
use cocoon_protocol::RequestId;
use cocoon_test_kit::procs::TempDir;
use cocoon_tests::Rng;
use rand_core::OsRng;

struct Boot {
    signer: ReceiptSigner,
    key: Vec<u8>,
    tabs: TabBook,
    seq: u64,
}

impl Boot {
    fn new() -> Boot {
        let signer = ReceiptSigner::generate(&mut OsRng);
        Boot {
            key: signer.public_key_sec1(),
            tabs: TabBook::new(signer.clone()),
            signer,
            seq: 0,
        }
    }
}

struct World {
    dir: TempDir,
    ledger: Ledger,
    boot: Boot,
    /// Acknowledgements the host has queued but not sent (lost in a crash).
    queued: Vec<(RequestId, [u8; 32])>,
    /// Per receipt committed to the ledger: (key, account, charge).
    committed: HashMap<RequestId, (Vec<u8>, [u8; 32], u64)>,
    /// Receipts the enclave counted (the model's view), per key.
    counted: BTreeMap<Vec<u8>, BTreeSet<RequestId>>,
    /// Keys of boots that crashed.
    crashed: BTreeSet<Vec<u8>>,
    accounts: Vec<AccountKey>,
    next_request: u64,
    host_crashes: u64,
    restarts: u64,
}

impl World {
    fn open(dir: &TempDir) -> Ledger {
        Ledger::open(&dir.path().join("ledger.sqlite"), LedgerOptions::default()).unwrap()
    }

    /// Send the queued acknowledgements; with `lose_update`, the host
    /// crashes before it stores the tabs the enclave sent back.
    async fn flush(&mut self, lose_update: bool) {
        for chunk in std::mem::take(&mut self.queued).chunks(4096) {
            self.acknowledge(chunk.to_vec(), lose_update).await;
        }
    }

    async fn acknowledge(&mut self, receipts: Vec<(RequestId, [u8; 32])>, lose_update: bool) {
        let ack = ReceiptAck { receipts };
        let wire = ReceiptAck::from_bytes(&ack.to_bytes()).unwrap();
        let pending_before: Vec<RequestId> = wire
            .receipts
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !self.is_counted(id))
            .collect();
        let (update, n) = self.boot.tabs.acknowledge(&wire);
        // The model: every acknowledged receipt of this boot not counted
        // before is counted now, once.
        let set = self.counted.entry(self.boot.key.clone()).or_default();
        let mut newly = 0;
        for id in pending_before {
            if self
                .committed
                .get(&id)
                .is_some_and(|(k, _, _)| *k == self.boot.key)
                && set.insert(id)
            {
                newly += 1;
            }
        }
        assert_eq!(n, newly, "the enclave counted what the model expects");
        if lose_update {
            return;
        }
        let update = TabUpdate::from_bytes(&update.to_bytes()).unwrap();
        let mut stored = Vec::new();
        for t in update.tabs {
            t.tab.verify(&t.signature, &self.boot.key).unwrap();
            stored.push(StoredTab {
                account: t.tab.account,
                count: t.tab.count,
                total: t.tab.total,
                signed: t.to_bytes().to_vec(),
            });
        }
        self.ledger
            .store_tabs(self.boot.key.clone(), stored)
            .await
            .unwrap();
    }

    fn is_counted(&self, id: &RequestId) -> bool {
        self.counted.values().any(|s| s.contains(id))
    }

    /// A host crash: queued acknowledgements are lost, the ledger is closed
    /// and opened again, and the reconnect acknowledges what no stored tab
    /// counts yet.
    async fn host_crash(&mut self) {
        self.host_crashes += 1;
        self.queued.clear();
        self.ledger.close();
        self.ledger = World::open(&self.dir);
        self.reconnect().await;
    }

    async fn reconnect(&mut self) {
        let uncounted = self.ledger.uncounted(self.boot.key.clone()).await.unwrap();
        for chunk in uncounted.chunks(4096) {
            self.acknowledge(chunk.to_vec(), false).await;
        }
    }

    async fn request(&mut self, rng: &mut Rng) {
        let account = self.accounts[rng.below(self.accounts.len())].id().0;
        self.next_request += 1;
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&self.next_request.to_be_bytes());
        id[8] = 0xcc;
        self.boot.seq += 1;
        let prompt = 1 + rng.below(500) as u64;
        let cached = rng.below(prompt as usize + 1) as u64;
        let completion = rng.below(300) as u64;
        let price = UnitPrice {
            prompt: 1 + rng.below(2_000) as u64,
            cached: rng.below(500) as u64,
            completion: 1 + rng.below(6_000) as u64,
        };
        let receipt = UsageReceipt {
            request_id: RequestId(id),
            model: "m".into(),
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            unit_price: price,
            multiplier_milli: 1000,
            time: 1_795_000_000,
            enclave_seq: self.boot.seq,
            client_account: account,
        };
        let signed = self.boot.signer.sign(&receipt).unwrap();
        let charge = u64::try_from(receipt.charge_nanoton().unwrap()).unwrap();
        self.boot
            .tabs
            .add_pending(receipt.request_id, account, charge);
        if rng.chance(8) {
            // The host dies before committing: no receipt, no answer.
            self.host_crash().await;
            return;
        }
        self.ledger
            .append(LedgerEntry::from_verified(
                &receipt,
                signed,
                self.boot.key.clone(),
            ))
            .await
            .unwrap();
        self.committed
            .insert(receipt.request_id, (self.boot.key.clone(), account, charge));
        self.queued.push((receipt.request_id, account));
        match rng.below(100) {
            0..=5 => self.host_crash().await,
            6..=10 => {
                self.flush(true).await;
                self.host_crash().await;
            }
            11..=40 => self.flush(false).await,
            _ => {}
        }
    }
}

/// What one run saw: receipts committed, claimed, left unclaimable, host
/// crashes, graceful enclave restarts, enclave crashes.
type Seen = [u128; 6];

async fn run(seed: u64, steps: usize) -> Seen {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let dir = TempDir::new("settle-prop");
    let mut w = World {
        ledger: World::open(&dir),
        dir,
        boot: Boot::new(),
        queued: vec![],
        committed: HashMap::new(),
        counted: BTreeMap::new(),
        crashed: BTreeSet::new(),
        accounts: (0..1 + rng.below(4))
            .map(|_| AccountKey::generate(&mut OsRng))
            .collect(),
        next_request: 0,
        host_crashes: 0,
        restarts: 0,
    };
    for _ in 0..steps {
        match rng.below(100) {
            0..=2 => {
                // Graceful enclave restart: the drain waits for the
                // acknowledgements, then a new boot (new key, new tabs).
                w.flush(false).await;
                w.restarts += 1;
                w.boot = Boot::new();
                w.reconnect().await;
            }
            3..=4 => {
                // The enclave is killed: what it has not counted yet is never
                // charged.
                w.crashed.insert(w.boot.key.clone());
                w.queued.clear();
                w.boot = Boot::new();
                w.reconnect().await;
            }
            5..=8 => w.host_crash().await,
            _ => w.request(&mut rng).await,
        }
    }
    w.flush(false).await;
    w.reconnect().await;

    // Authorize every pair (the clients' side) and settle.
    let contract = ContractAddress {
        workchain: 0,
        hash: [0x5e; 32],
    };
    let rows = w.ledger.settlement_view().await.unwrap();
    for row in &rows {
        let key = w.accounts.iter().find(|k| k.id().0 == row.account).unwrap();
        let auth = key.sign_authorization(&Authorization {
            contract,
            account: row.account,
            enclave_key: compress_p256(&row.receipt_public_key).unwrap(),
            cap: u64::MAX / 2,
        });
        w.ledger
            .store_authorization(
                row.receipt_public_key.clone(),
                StoredAuthorization {
                    account: row.account,
                    cap: auth.auth.cap,
                    signed: auth.to_bytes().to_vec(),
                    client_public_key: key.public_key_sec1(),
                },
            )
            .await
            .unwrap();
    }
    let rows = w.ledger.settlement_view().await.unwrap();
    let s = settle::build(&rows, contract, 1);

    // What the model says was counted, per (key, account).
    let mut expected: BTreeMap<(Vec<u8>, [u8; 32]), (u64, u64)> = BTreeMap::new();
    for (key, ids) in &w.counted {
        for id in ids {
            let (_, account, charge) = &w.committed[id];
            let e = expected.entry((key.clone(), *account)).or_insert((0, 0));
            e.0 += 1;
            e.1 += charge;
        }
    }
    let ledger_total: u128 = w.committed.values().map(|(_, _, c)| u128::from(*c)).sum();
    assert_eq!(s.ledger_nanoton, ledger_total, "seed {seed}");
    assert_eq!(s.ledger_receipts, w.committed.len() as u64, "seed {seed}");
    // Every claim is exactly the model's count and total: nothing counted
    // twice, nothing invented.
    let mut claimed = 0u128;
    for c in &s.claims {
        let key = c.receipt_public_key.clone();
        assert_eq!(compress_p256(&key).unwrap(), c.enclave_key);
        assert_eq!(
            expected.get(&(key, c.account)),
            Some(&(c.count, c.total)),
            "seed {seed}: claim differs from the receipts counted"
        );
        claimed += u128::from(c.amount);
    }
    let expected_total: u128 = expected.values().map(|(_, t)| u128::from(*t)).sum();
    assert_eq!(claimed, expected_total, "seed {seed}: charged total");
    let unclaimed: u128 = s.unclaimed.iter().map(|u| u.nanoton).sum();
    assert_eq!(
        claimed + unclaimed,
        ledger_total,
        "seed {seed}: the ledger is the charged total plus what is reported unclaimable"
    );
    // Only receipts of crashed boots can be left over.
    for u in &s.unclaimed {
        assert!(
            w.crashed.contains(&u.receipt_public_key),
            "seed {seed}: receipts of a live or drained enclave left uncounted: {}",
            u.reason
        );
    }
    if w.crashed.is_empty() {
        assert_eq!(
            claimed, ledger_total,
            "seed {seed}: without enclave crashes every receipt is charged"
        );
    }
    // Settle, record, settle again: nothing is claimed twice.
    w.ledger.record_claims(s.records()).await.unwrap();
    let again = settle::build(&w.ledger.settlement_view().await.unwrap(), contract, 100);
    assert!(
        again.claims.is_empty(),
        "seed {seed}: a second run claims again"
    );
    w.ledger.close();
    [
        w.committed.len() as u128,
        claimed,
        unclaimed,
        u128::from(w.host_crashes),
        u128::from(w.restarts),
        w.crashed.len() as u128,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_to_claims_survive_crashes_and_restarts() {
    let runs: u64 = std::env::var("COCOON_PROPTEST_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut seen: Seen = [0; 6];
    for seed in 1..=runs {
        let s = run(seed, 120).await;
        for (a, b) in seen.iter_mut().zip(s) {
            *a += b;
        }
    }
    eprintln!(
        "{runs} runs: {} receipts committed, {} nanoton claimed, {} nanoton reported unclaimable (crashed enclaves), {} host crashes, {} graceful enclave restarts, {} enclave crashes",
        seen[0], seen[1], seen[2], seen[3], seen[4], seen[5]
    );
}
