//! Ledger appends per second: group commit (one fsync per batch of
//! everything queued, up to 1024) against one fsync per append, side by
//! side in one run, with the same concurrent load (appends submitted by
//! many tasks at once), each append awaited until durably committed.
//!
//! `cargo bench -p cocoon-host --bench ledger` (the files go under the
//! target directory: a real disk, not tmpfs, or fsync costs nothing).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cocoon_host::ledger::{Ledger, LedgerEntry, LedgerOptions};
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::RequestId;
use sha2::{Digest, Sha256};

/// Appends measured with group commit.
const BATCHED: u64 = 60_000;
/// Appends measured with one fsync each (enough for a stable rate).
const SINGLE: u64 = 400;
/// Concurrent submitters.
const TASKS: u64 = 2_000;

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
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = n.div_ceil(TASKS);
    for t in 0..TASKS {
        let ledger = ledger.clone();
        let lo = t * per;
        let hi = ((t + 1) * per).min(n);
        tasks.push(tokio::spawn(async move {
            for i in lo..hi {
                ledger.append(entry(run, i)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn main() {
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

    let tb = rt.block_on(measure(batched.clone(), 1, BATCHED));
    let ts = rt.block_on(measure(single.clone(), 1, SINGLE));
    let rate_b = BATCHED as f64 / tb.as_secs_f64();
    let rate_s = SINGLE as f64 / ts.as_secs_f64();
    let batches = batched
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "ledger appends, each awaited until durably committed ({TASKS} concurrent submitters):"
    );
    println!(
        "  group commit (max_batch 1024): {BATCHED} appends in {:.3} s = {rate_b:.0} appends/s ({} transactions, {:.0} appends per fsync)",
        tb.as_secs_f64(),
        batches,
        (BATCHED + 200) as f64 / batches.max(1) as f64
    );
    println!(
        "  one fsync per append         : {SINGLE} appends in {:.3} s = {rate_s:.0} appends/s",
        ts.as_secs_f64()
    );
    println!("  ratio group/single: {:.1}x", rate_b / rate_s);
    println!(
        "  goal >= 50000 appends/s batched: {}",
        if rate_b >= 50_000.0 { "met" } else { "NOT met" }
    );
    batched.close();
    single.close();
    let _ = std::fs::remove_dir_all(&d);
}
