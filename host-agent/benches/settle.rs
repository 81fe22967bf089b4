//! Receipts aggregated into payment claims per second: `cocoon-host
//! settle`'s whole path (read every receipt of the ledger, aggregate per
//! enclave key and account, check each stored tab and authorization
//! signature, reconcile the tab with the ledger, build the claim bodies)
//! against the raw primitive, SQLite's own `GROUP BY` sum over the same
//! table, side by side in one run.
//!
//! `cargo bench -p cocoon-host --bench settle`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use cocoon_host::ledger::{Ledger, LedgerEntry, LedgerOptions, StoredAuthorization, StoredTab};
use cocoon_host::settle;
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice};
use cocoon_protocol::settlement::{compress_p256, Authorization, ContractAddress, Tab};
use cocoon_protocol::RequestId;

/// Receipts in the ledger.
const RECEIPTS: u64 = 200_000;
/// Paying accounts.
const ACCOUNTS: usize = 500;
/// Enclave boots (receipt keys).
const KEYS: usize = 4;

fn dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let d = base.join(format!("settle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

fn main() {
    // A smoke test under `cargo test --benches`: fewer receipts.
    let receipts = common::scaled(RECEIPTS, 8_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let d = dir();
    let path = d.join("ledger.sqlite");
    let ledger = std::sync::Arc::new(Ledger::open(&path, LedgerOptions::default()).expect("open"));
    let signers: Vec<ReceiptSigner> = (0..KEYS)
        .map(|_| ReceiptSigner::generate(&mut OsRng))
        .collect();
    let accounts: Vec<AccountKey> = (0..ACCOUNTS)
        .map(|_| AccountKey::generate(&mut OsRng))
        .collect();
    let contract = ContractAddress {
        workchain: 0,
        hash: [0x5e; 32],
    };
    let price = UnitPrice {
        prompt: 1_000,
        cached: 250,
        completion: 3_000,
    };
    // Fill the ledger (not timed), with the tabs and authorizations the
    // enclaves and clients would have signed.
    let mut totals = vec![vec![(0u64, 0u64); ACCOUNTS]; KEYS];
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..receipts {
            let (k, a) = ((i as usize) % KEYS, (i as usize / KEYS) % ACCOUNTS);
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let prompt = 50 + i % 400;
            let completion = i % 256;
            let charge = prompt * price.prompt + completion * price.completion;
            totals[k][a].0 += 1;
            totals[k][a].1 += charge;
            let entry = LedgerEntry {
                request_id: RequestId(id),
                account: accounts[a].id().0,
                model: "m".into(),
                prompt_tokens: prompt,
                cached_tokens: 0,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                unit_price: price,
                multiplier_milli: 1000,
                charge,
                enclave_seq: i,
                time: 1_795_000_000,
                receipt: vec![0xd2; 330],
                receipt_public_key: signers[k].public_key_sec1(),
            };
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move {
                l.append(entry).await.expect("append")
            }));
            if tasks.len() >= 4096 {
                for t in tasks.drain(..) {
                    t.await.expect("task");
                }
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        for (k, signer) in signers.iter().enumerate() {
            let key = signer.public_key_sec1();
            let mut tabs = Vec::new();
            for (a, acct) in accounts.iter().enumerate() {
                let (count, total) = totals[k][a];
                let t = signer.sign_tab(&Tab {
                    account: acct.id().0,
                    count,
                    total,
                });
                tabs.push(StoredTab {
                    account: acct.id().0,
                    count,
                    total,
                    signed: t.to_bytes().to_vec(),
                });
                let auth = acct.sign_authorization(&Authorization {
                    contract,
                    account: acct.id().0,
                    enclave_key: compress_p256(&key).expect("key"),
                    cap: u64::MAX / 2,
                });
                ledger
                    .store_authorization(
                        key.clone(),
                        StoredAuthorization {
                            account: acct.id().0,
                            cap: auth.auth.cap,
                            signed: auth.to_bytes().to_vec(),
                            client_public_key: acct.public_key_sec1(),
                        },
                    )
                    .await
                    .expect("authorization");
            }
            ledger.store_tabs(key, tabs).await.expect("tabs");
        }
    });

    // Ours: the whole settle path, three rounds, best kept.
    let mut ours = f64::MAX;
    let mut claims = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let rows = rt.block_on(ledger.settlement_view()).expect("view");
        let s = settle::build(&rows, contract, 1);
        ours = ours.min(t.elapsed().as_secs_f64());
        claims = s.claims.len();
        assert_eq!(s.counted_receipts, receipts, "every receipt counted once");
        assert!(s.unclaimed.is_empty());
    }
    // The raw primitive: SQLite sums the same table.
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mut raw = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut st = conn
            .prepare(
                "SELECT receipt_public_key, account, count(*), sum(charge) FROM receipts GROUP BY receipt_public_key, account",
            )
            .expect("prepare");
        let n = st
            .query_map([], |r| r.get::<_, i64>(2))
            .expect("query")
            .map(|r| r.expect("row"))
            .sum::<i64>();
        raw = raw.min(t.elapsed().as_secs_f64());
        assert_eq!(n as u64, receipts);
    }
    let rate_ours = receipts as f64 / ours;
    let rate_raw = receipts as f64 / raw;
    println!(
        "receipts aggregated into claims ({receipts} receipts, {ACCOUNTS} accounts x {KEYS} enclave keys = {claims} claims):"
    );
    println!(
        "  cocoon-host settle path (read, aggregate, verify {} tab + {} authorization signatures, reconcile, build bodies): {ours:.3} s = {rate_ours:.0} receipts/s",
        claims, claims
    );
    println!("  SQLite GROUP BY sum over the same table (raw primitive): {raw:.3} s = {rate_raw:.0} receipts/s");
    println!("  ratio settle/raw: {:.2}x", rate_ours / rate_raw);
    ledger.close();
    let _ = std::fs::remove_dir_all(&d);
}
