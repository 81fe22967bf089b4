//! The ledger on a real file: group commit under concurrent appends, every
//! acknowledged append present once after reopening, duplicates refused
//! across batches and restarts, and the schema an operator queries.

mod support;

use std::sync::Arc;

use cocoon_host::ledger::{AppendError, Ledger, LedgerEntry, LedgerOptions};
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::RequestId;
use support::TempDir;

fn entry(i: u64) -> LedgerEntry {
    let mut id = [0x42; 32];
    id[..8].copy_from_slice(&i.to_be_bytes());
    LedgerEntry {
        request_id: RequestId(id),
        account: [(i % 5) as u8; 32],
        model: format!("model-{}", i % 3),
        prompt_tokens: i,
        completion_tokens: 2 * i,
        total_tokens: 3 * i,
        cached_tokens: 0,
        unit_price: UnitPrice {
            prompt: 100,
            cached: 100,
            completion: 300,
        },
        multiplier_milli: 1000,
        charge: i * 100 + 2 * i * 300,
        enclave_seq: i,
        time: 1_800_000_000 + i,
        receipt: vec![(i % 251) as u8; 150],
        receipt_public_key: vec![4; 65],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_survives_reopen() {
    let dir = TempDir::new("ledger-reopen");
    let path = dir.path().join("ledger.sqlite");
    const N: u64 = 3000;
    let seqs = {
        let ledger = Arc::new(Ledger::open(&path, LedgerOptions::default()).unwrap());
        let mut tasks = vec![];
        for i in 0..N {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move { l.append(entry(i)).await }));
        }
        let mut seqs = vec![];
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        let batches = ledger
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            batches < N / 4,
            "{batches} transactions for {N} concurrent appends: not grouped"
        );
        // Dropped without an explicit close: Drop closes it.
        seqs
    };
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len() as u64,
        N,
        "every append got its own ledger_seq"
    );

    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let check = ledger.check().await.unwrap();
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(check.entries, N);
    assert_eq!(check.accounts, 5);
    assert_eq!(check.max_ledger_seq, *sorted.last().unwrap());
    // A duplicate is refused after the restart too, by request id or by
    // (receipt key, enclave seq).
    assert_eq!(
        ledger.append(entry(7)).await,
        Err(AppendError::DuplicateRequest(entry(7).request_id))
    );
    let mut same_seq = entry(N + 1);
    same_seq.enclave_seq = 7;
    assert_eq!(
        ledger.append(same_seq).await,
        Err(AppendError::DuplicateEnclaveSeq(7))
    );
    let fresh = ledger.append(entry(N + 2)).await.unwrap();
    assert!(fresh > *sorted.last().unwrap());

    // Each account's receipts, in order, paged.
    let acct = [1u8; 32]; // entry(N + 2) went to account 2
    let page1 = ledger.receipts_for(acct, 0, 100).await.unwrap();
    assert_eq!(page1.len(), 100);
    assert!(page1.windows(2).all(|w| w[0].ledger_seq < w[1].ledger_seq));
    let page2 = ledger
        .receipts_for(acct, page1.last().unwrap().ledger_seq, 10_000)
        .await
        .unwrap();
    assert_eq!(page1.len() + page2.len(), (N / 5) as usize);

    // The export round-trips every field.
    let all = ledger.export(0, 10_000).await.unwrap();
    assert_eq!(all.len() as u64, N + 1);
    let by_id: std::collections::HashMap<_, _> = all
        .iter()
        .map(|s| (s.entry.request_id, s.entry.clone()))
        .collect();
    for i in [0, 1, N / 2, N - 1] {
        assert_eq!(by_id[&entry(i).request_id], entry(i));
    }
    ledger.close();

    // What an operator sees with SQL.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sum: i64 = conn
        .query_row(
            "SELECT sum(completion_tokens * completion_price) FROM receipts WHERE account = ?1",
            [&[1u8; 32][..]],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sum > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fsync_per_append_mode_gives_the_same_result() {
    let dir = TempDir::new("ledger-single");
    let path = dir.path().join("ledger.sqlite");
    let ledger = Arc::new(Ledger::open(&path, LedgerOptions { max_batch: 1 }).unwrap());
    let mut tasks = vec![];
    for i in 0..50 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move { l.append(entry(i % 25)).await }));
    }
    let mut ok = 0;
    let mut dup = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(AppendError::DuplicateRequest(_)) => dup += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, dup), (25, 25));
    assert_eq!(
        ledger
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    assert_eq!(ledger.check().await.unwrap().entries, 25);
}
