use super::*;

pub(crate) fn entry(i: u64) -> LedgerEntry {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&i.to_be_bytes());
    LedgerEntry {
        request_id: RequestId(id),
        account: [(i % 3) as u8; 32],
        model: "m".into(),
        prompt_tokens: 1,
        cached_tokens: 0,
        completion_tokens: 2,
        total_tokens: 3,
        unit_price: UnitPrice {
            prompt: 10,
            cached: 10,
            completion: 20,
        },
        multiplier_milli: 1000,
        charge: 50,
        enclave_seq: i,
        time: 1_800_000_000,
        receipt: vec![0xd2; 100],
        receipt_public_key: vec![4; 65],
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cocoon-ledger-unit-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d.join("ledger.sqlite")
}

#[tokio::test]
async fn duplicates_and_out_of_range_are_refused_alone() {
    let path = temp("dup");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let mut same_seq = entry(2);
    same_seq.request_id = RequestId([0xee; 32]);
    let mut huge = entry(3);
    huge.prompt_tokens = u64::MAX;
    let (a, b, c, d) = tokio::join!(
        l.append(entry(1)),
        l.append(entry(1)),
        l.append(entry(2)),
        l.append(huge)
    );
    let seq1 = a.unwrap();
    assert_eq!(b, Err(AppendError::DuplicateRequest(entry(1).request_id)));
    let seq2 = c.unwrap();
    assert!(seq2 > seq1);
    assert_eq!(d, Err(AppendError::OutOfRange("prompt_tokens")));
    assert_eq!(
        l.append(same_seq).await,
        Err(AppendError::DuplicateEnclaveSeq(2))
    );
    assert!(l.contains(entry(1).request_id).await.unwrap());
    assert!(!l.contains(entry(9).request_id).await.unwrap());
    assert!(l.contains_now(entry(1).request_id).unwrap());
    assert!(!l.contains_now(entry(9).request_id).unwrap());
    let check = l.check().await.unwrap();
    assert_eq!(check.entries, 2);
    assert!(check.is_ok(), "{check:?}");
    let rows = l.export(0, 10).await.unwrap();
    assert_eq!(rows[0].entry, entry(1));
    assert!(rows[0].to_json_line().contains("\"enclave_seq\":1"));
    l.close();
    assert_eq!(l.append(entry(5)).await, Err(AppendError::Closed));
}

#[tokio::test]
async fn what_an_account_owes_less_what_the_chain_paid() {
    let path = temp("owed");
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    // Account [0; 32] gets entries 3, 6, 9 (50 each) under key [4; 65];
    // one more under another key.
    for i in [3, 6, 9] {
        l.append(entry(i)).await.unwrap();
    }
    let mut other = entry(12);
    other.receipt_public_key = vec![5; 65];
    other.charge = 7;
    l.append(other).await.unwrap();
    let acct = [0u8; 32];
    assert_eq!(l.unclaimed_for(acct).await.unwrap(), 157);
    assert_eq!(l.unclaimed_for([9; 32]).await.unwrap(), 0);
    // A claim sent is still owed until the chain shows it paid.
    let sent = SentClaim {
        receipt_public_key: vec![4; 65],
        account: acct,
        total: 100,
        seqno: 3,
        message_hash: [1; 32],
        sent_at: 1_800_000_000,
        valid_until: 1_800_000_060,
    };
    l.record_claims_sent(vec![sent.clone()]).await.unwrap();
    assert_eq!(l.unclaimed_for(acct).await.unwrap(), 157);
    let rows = l.chain_claims().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].unconfirmed(), Some(&sent));
    // Paid 100: owed 50 + 7; paid never moves back; paid past the ledger
    // (another host's receipts under this key cannot exist) counts as 0.
    l.record_paid(vec![(vec![4; 65], acct, 100)], 5)
        .await
        .unwrap();
    l.record_paid(vec![(vec![4; 65], acct, 60)], 6)
        .await
        .unwrap();
    assert_eq!(l.unclaimed_for(acct).await.unwrap(), 57);
    let rows = l.chain_claims().await.unwrap();
    assert_eq!((rows[0].paid, rows[0].paid_checked_at), (100, 6));
    assert_eq!(rows[0].unconfirmed(), None);
    l.record_paid(vec![(vec![5; 65], acct, 1_000)], 7)
        .await
        .unwrap();
    assert_eq!(l.unclaimed_for(acct).await.unwrap(), 50);
    l.close();
    // The table survives a reopen (and an existing version-2 ledger gets it).
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    assert_eq!(l.chain_claims().await.unwrap().len(), 2);
    l.close();
}

#[tokio::test]
async fn a_version_2_ledger_is_upgraded_in_place_and_loses_nothing() {
    let path = temp("v2");
    {
        let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
        for i in 1..=5 {
            l.append(entry(i)).await.unwrap();
        }
        l.close();
    }
    // Make it what a version-2 host left: the extra index, version 2.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE INDEX receipts_by_key ON receipts (receipt_public_key, account); \
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
    l.append(entry(6)).await.unwrap();
    assert_eq!(l.check().await.unwrap().entries, 6);
    l.close();
    let c = rusqlite::Connection::open(&path).unwrap();
    let indexes: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'receipts_by_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0);
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // A version this host does not know is still refused.
    c.execute_batch("PRAGMA user_version = 1;").unwrap();
    drop(c);
    let err = Ledger::open(&path, LedgerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("schema version 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_join_the_append_batches_and_fail_alone() {
    let path = temp("jobs");
    let l = std::sync::Arc::new(Ledger::open(&path, LedgerOptions::default()).unwrap());
    let mut appends = vec![];
    for i in 1..=40 {
        let l = l.clone();
        appends.push(tokio::spawn(async move { l.append(entry(i)).await }));
    }
    // A write that fails (its savepoint is undone), one that succeeds in
    // the same stream of batches, and tabs stored among the appends.
    let bad = l.write(|c| {
        c.execute("INSERT INTO tabs VALUES (x'05', x'01', 1, 1, x'00')", [])?;
        c.execute("INSERT INTO no_such_table VALUES (1)", [])
    });
    let tabs = l.store_tabs(
        vec![4; 65],
        vec![StoredTab {
            account: [1; 32],
            count: 3,
            total: 150,
            signed: vec![7; 10],
        }],
    );
    let (bad, tabs) = tokio::join!(bad, tabs);
    assert!(matches!(bad, Err(LedgerError::Sqlite { .. })), "{bad:?}");
    assert_eq!(tabs, Ok(1));
    for a in appends {
        a.await.unwrap().unwrap();
    }
    let stats = l.stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(batches <= 42, "{batches}");
    assert_eq!(l.check().await.unwrap().entries, 40);
    // The failed write's first insert was undone with it.
    let rows: i64 = l
        .write(|c| c.query_row("SELECT count(*) FROM tabs", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(rows, 1);
    l.close();
}
