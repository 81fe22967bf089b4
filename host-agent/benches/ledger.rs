//! Ledger appends per second: group commit (one fsync per batch of
//! everything queued, up to 1024) against one fsync per append, side by
//! side in one run, with the same concurrent load (appends submitted by
//! many tasks at once), each append awaited until durably committed; and
//! against SQLite's own floor: the same rows inserted by one thread with
//! one prepared statement, in transactions of 1024, into the same schema
//! and indexes with the same durability (WAL, `synchronous=FULL`). The
//! two are interleaved over several rounds and the best round of each is
//! compared.
//!
//! `cargo bench -p cocoon-host --bench ledger` (the files go under the
//! target directory: a real disk, not tmpfs, or fsync costs nothing).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cocoon_host::ledger::{Ledger, LedgerEntry, LedgerOptions};
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::RequestId;
use sha2::{Digest, Sha256};

mod common;

/// Appends measured with group commit.
const BATCHED: u64 = 60_000;
/// Appends measured with one fsync each (enough for a stable rate).
const SINGLE: u64 = 400;
/// Concurrent submitters.
const TASKS: u64 = 2_000;
/// Rounds of the ledger-against-raw-SQLite comparison.
const ROUNDS: u8 = 3;
/// Rows per transaction in the raw SQLite baseline (the ledger's
/// `max_batch`).
const RAW_BATCH: usize = 1024;

fn entry(run: u8, i: u64) -> LedgerEntry {
    // Request ids are SHA-256 digests: random keys, as in production.
    let id: [u8; 32] = Sha256::new()
        .chain_update([run])
        .chain_update(i.to_be_bytes())
        .finalize()
        .into();
    LedgerEntry {
        request_id: RequestId(id),
        account: [(i % 97) as u8; 32],
        model: "all-minilm-l6-v2".into(),
        prompt_tokens: 120,
        completion_tokens: 300,
        total_tokens: 420,
        cached_tokens: 0,
        unit_price: UnitPrice {
            prompt: 100,
            cached: 100,
            completion: 300,
        },
        multiplier_milli: 1000,
        charge: 120 * 100 + 300 * 300,
        enclave_seq: i,
        time: 1_800_000_000 + i,
        // A realistic receipt size (COSE_Sign1 of a UsageReceipt).
        receipt: vec![0xd2; 330],
        receipt_public_key: vec![run; 65],
    }
}

fn dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let d = base.join(format!("ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

async fn measure(ledger: std::sync::Arc<Ledger>, run: u8, n: u64) -> Duration {
    // The rows are built before the clock starts, as for the raw baseline:
    // what is timed is the ledger, not the bench's SHA-256 and copies.
    // Submitter t appends rows t, t + TASKS, t + 2 TASKS, ...: the appends
    // in flight at any moment carry nearby enclave sequence numbers, as
    // concurrent requests finishing on one enclave do (contiguous ranges
    // per submitter would insert at TASKS places of the sequence index at
    // once, which no enclave does).
    let work: Vec<Vec<LedgerEntry>> = (0..TASKS)
        .map(|t| {
            (t..n)
                .step_by(TASKS as usize)
                .map(|i| entry(run, i))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for entries in work {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for e in entries {
                ledger.append(e).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

/// The raw SQLite floor: `n` rows of round `run` into `path` (a ledger
/// file, so the schema and indexes are the ledger's own), one prepared
/// statement, transactions of [`RAW_BATCH`], WAL and `synchronous=FULL`,
/// no checkpoint during the run.
fn raw_sqlite(path: &std::path::Path, run: u8, n: u64) -> Duration {
    let mut conn = rusqlite::Connection::open(path).expect("raw open");
    conn.execute_batch(
        // The ledger's own settings; with no checkpoint at all during the
        // run, the floor is as low as SQLite can go (the ledger folds its
        // WAL on a thread of its own, concurrently).
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; \
         PRAGMA cache_size=-65536;",
    )
    .expect("raw pragmas");
    let entries: Vec<LedgerEntry> = (0..n).map(|i| entry(run, i)).collect();
    let start = Instant::now();
    for batch in entries.chunks(RAW_BATCH) {
        let txn = conn.transaction().expect("raw txn");
        {
            let mut st = txn
                .prepare_cached(
                    "INSERT OR IGNORE INTO receipts (request_id, account, model, prompt_tokens, \
                     completion_tokens, total_tokens, prompt_price, completion_price, enclave_seq, \
                     time, receipt, receipt_public_key, cached_tokens, cached_price, multiplier_milli, \
                     charge) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .expect("raw prepare");
            for e in batch {
                st.execute(rusqlite::params![
                    &e.request_id.0[..],
                    &e.account[..],
                    &e.model,
                    e.prompt_tokens as i64,
                    e.completion_tokens as i64,
                    e.total_tokens as i64,
                    e.unit_price.prompt as i64,
                    e.unit_price.completion as i64,
                    e.enclave_seq as i64,
                    e.time as i64,
                    &e.receipt,
                    &e.receipt_public_key,
                    e.cached_tokens as i64,
                    e.unit_price.cached as i64,
                    i64::from(e.multiplier_milli),
                    e.charge as i64,
                ])
                .expect("raw insert");
            }
        }
        txn.commit().expect("raw commit");
    }
    start.elapsed()
}

fn main() {
    // A smoke test under `cargo test --benches`: fewer appends, one round.
    let batched_n = common::scaled(BATCHED, 3_000);
    let single_n = common::scaled(SINGLE, 20);
    let rounds = common::scaled(ROUNDS, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let d = dir();
    let batched = std::sync::Arc::new(
        Ledger::open(&d.join("batched.sqlite"), LedgerOptions { max_batch: 1024 }).expect("open"),
    );
    let single = std::sync::Arc::new(
        Ledger::open(&d.join("single.sqlite"), LedgerOptions { max_batch: 1 }).expect("open"),
    );
    // Warm up both files (page cache, statement cache).
    rt.block_on(measure(batched.clone(), 9, 200));
    rt.block_on(measure(single.clone(), 9, 20));

    let tb = rt.block_on(measure(batched.clone(), 1, batched_n));
    let ts = rt.block_on(measure(single.clone(), 1, single_n));
    let rate_b = batched_n as f64 / tb.as_secs_f64();
    let rate_s = single_n as f64 / ts.as_secs_f64();
    let batches = batched
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "ledger appends, each awaited until durably committed ({TASKS} concurrent submitters):"
    );
    println!(
        "  group commit (max_batch 1024): {batched_n} appends in {:.3} s = {rate_b:.0} appends/s ({} transactions, {:.0} appends per fsync)",
        tb.as_secs_f64(),
        batches,
        (batched_n + 200) as f64 / batches.max(1) as f64
    );
    println!(
        "  one fsync per append         : {single_n} appends in {:.3} s = {rate_s:.0} appends/s",
        ts.as_secs_f64()
    );
    println!("  ratio group/single: {:.1}x", rate_b / rate_s);
    println!(
        "  goal >= 50000 appends/s batched: {}",
        if rate_b >= 50_000.0 { "met" } else { "NOT met" }
    );
    batched.close();
    single.close();

    // Ours against SQLite's floor, interleaved, fresh files each round.
    let (mut best_ours, mut best_raw) = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let ours_path = d.join(format!("ours-{round}.sqlite"));
        let raw_path = d.join(format!("raw-{round}.sqlite"));
        let ours = std::sync::Arc::new(
            Ledger::open(&ours_path, LedgerOptions { max_batch: 1024 }).expect("open"),
        );
        // The raw file gets the ledger's schema and indexes, then the
        // ledger lets go of it.
        Ledger::open(&raw_path, LedgerOptions::default())
            .expect("open")
            .close();
        rt.block_on(measure(ours.clone(), 9, 200));
        best_ours = best_ours.min(rt.block_on(measure(ours.clone(), 2, batched_n)));
        ours.close();
        let _ = raw_sqlite(&raw_path, 9, 200);
        best_raw = best_raw.min(raw_sqlite(&raw_path, 2, batched_n));
    }
    let rate_ours = batched_n as f64 / best_ours.as_secs_f64();
    let rate_raw = batched_n as f64 / best_raw.as_secs_f64();
    println!("against SQLite's own batched insert (best of {rounds} interleaved rounds, {batched_n} rows each):");
    println!(
        "  ours (ledger, {TASKS} concurrent submitters, each awaited): {rate_ours:.0} appends/s"
    );
    println!("  raw SQLite (one thread, one statement, {RAW_BATCH} rows per transaction): {rate_raw:.0} rows/s");
    println!(
        "  ratio ours/raw: {:.2}x (goal >= 0.8x: {})",
        rate_ours / rate_raw,
        if rate_ours >= 0.8 * rate_raw {
            "met"
        } else {
            "NOT met"
        }
    );
    let _ = std::fs::remove_dir_all(&d);
}
