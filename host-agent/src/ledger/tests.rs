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
    let check = l.check().await.unwrap();
    assert_eq!(check.entries, 2);
    assert!(check.is_ok(), "{check:?}");
    let rows = l.export(0, 10).await.unwrap();
    assert_eq!(rows[0].entry, entry(1));
    assert!(rows[0].to_json_line().contains("\"enclave_seq\":1"));
    l.close();
    assert_eq!(l.append(entry(5)).await, Err(AppendError::Closed));
}
