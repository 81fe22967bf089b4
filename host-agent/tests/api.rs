//! The host in-process, on real sockets, against the test enclave: the
//! public API, receipts and the ledger, refusals, misbehaving enclaves,
//! reconnects, admin endpoints and drain.

mod support;

use std::time::Duration;

use cocoon_protocol::api::{ReceiptList, ACCOUNT_SIGNATURE_HEADER, CHUNKS_CONTENT_TYPE};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_and_probes() {
    let dir = TempDir::new("probes");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    assert_eq!(
        http(host.public, "GET", "/live", &[], b"").await.status,
        200
    );
    host.wait_ready().await;
    let ready = http(host.public, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let ev = http(host.public, "GET", "/v1/evidence", &[], b"").await;
    assert_eq!(
        cocoon_protocol::api::EvidenceList::from_cbor(&ev.body)
            .unwrap()
            .0,
        vec![enclave.bundle()]
    );
    let targets = fetch_targets(host.public).await;
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].digest, enclave.digest());
    let m = host.metrics().await;
    assert!(
        m.contains("cocoon_host_enclave_verified{enclave=\"unix:"),
        "{m}"
    );
    assert!(m.contains("} 1\n"), "{m}");
    let nf = http(host.public, "GET", "/nope", &[], b"").await;
    assert_eq!(nf.status, 404);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_request_is_streamed_billed_once_and_readable_by_its_account() {
    let dir = TempDir::new("full");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, session) = seal(t, &account, 16, b"what is the capital of France?");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(CHUNKS_CONTENT_TYPE));
    assert!(r.complete);
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert_eq!(opened.finished, Ok(()));
    assert_eq!(opened.texts, ["tok0 ", "tok1 ", "tok2 "]);
    let receipt = opened.receipt.expect("receipt in the final chunk");
    assert_eq!(receipt.request_id, sealed.request_id());
    assert_eq!(receipt.client_account, account.id().0);
    assert_eq!(receipt.completion_tokens, 3);

    // The ledger holds it exactly once, with its metadata.
    let rows = host.export().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], sealed.request_id().to_string());
    assert_eq!(rows[0]["account"], hex::encode(account.id().0));
    assert_eq!(rows[0]["model"], MODEL);
    assert_eq!(rows[0]["completion_tokens"], 3);
    assert_eq!(rows[0]["completion_price"], 300);
    assert_eq!(
        rows[0]["receipt_public_key"],
        hex::encode(&t.receipt_public_key)
    );
    let check = http(host.admin, "GET", "/admin/ledger/check", &[], b"").await;
    assert_eq!(check.status, 200, "{}", check.text());
    assert!(check.text().contains("\"entries\":1"), "{}", check.text());

    // The account reads its receipt back.
    let q = http(
        host.public,
        "GET",
        "/v1/receipts?after=0&limit=10",
        &receipts_headers(&account, now()),
        b"",
    )
    .await;
    assert_eq!(q.status, 200, "{}", q.text());
    let list = ReceiptList::from_cbor(&q.body).unwrap();
    assert_eq!(list.0.len(), 1);
    assert_eq!(
        cocoon_protocol::receipt::verify_receipt(&list.0[0].receipt, &t.receipt_public_key)
            .unwrap(),
        receipt
    );
    // Paging past it gives nothing.
    let after = format!("/v1/receipts?after={}", list.0[0].ledger_seq);
    let q = http(
        host.public,
        "GET",
        &after,
        &receipts_headers(&account, now()),
        b"",
    )
    .await;
    assert!(ReceiptList::from_cbor(&q.body).unwrap().0.is_empty());

    // Metrics count it and never carry request bytes.
    let m = host.metrics().await;
    assert!(
        m.contains("cocoon_host_requests_total{outcome=\"ok\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains("cocoon_host_receipts_appended_total 1"), "{m}");
    assert!(
        m.contains("cocoon_host_ledger_commit_seconds_count 1"),
        "{m}"
    );
    let ct = hex::encode(&sealed.ciphertext[..16]);
    assert!(!m.contains(&ct));
    assert!(!m.contains(&sealed.request_id().to_string()));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_refused_and_billed_once() {
    let dir = TempDir::new("replay");
    let enclave = TestEnclave::start(dir.path(), "e");
    enclave.set_chunks(3, Duration::from_millis(150));
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, _) = seal(t, &account, 16, b"hello");
    // Two at once: one is in flight when the other arrives.
    let (a, b) = tokio::join!(
        post(host.public, t, &account, &sealed),
        post(host.public, t, &account, &sealed)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text(), b.text());
    // After it is billed.
    let c = post(host.public, t, &account, &sealed).await;
    assert_eq!(c.status, 409);
    assert_eq!(c.text(), "replayed request\n");
    assert_eq!(enclave.requests(), 1, "replays must not reach the enclave");
    assert_eq!(host.export().await.len(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_signatures_are_required() {
    let dir = TempDir::new("auth");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let mallory = new_account();
    let (sealed, _) = seal(t, &account, 16, b"hello");
    let body = sealed.to_cbor();

    // Signed by another key (presented as the paying account's request).
    let mut h = request_headers(&t.digest, &account, &sealed);
    h[2].1 = hex::encode(mallory.sign_request(&sealed.request_id()));
    let r = http(host.public, "POST", "/v1/requests", &h, &body).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());

    // Mallory's own valid signature, but the request bills `account`.
    let h = request_headers(&t.digest, &mallory, &sealed);
    let r = http(host.public, "POST", "/v1/requests", &h, &body).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("does not belong"), "{}", r.text());

    // The signature of another request.
    let (other, _) = seal(t, &account, 16, b"other");
    let mut h = request_headers(&t.digest, &account, &sealed);
    h[2].1 = hex::encode(account.sign_request(&other.request_id()));
    assert_eq!(
        http(host.public, "POST", "/v1/requests", &h, &body)
            .await
            .status,
        401
    );

    // No signature at all.
    let h: Vec<_> = request_headers(&t.digest, &account, &sealed)
        .into_iter()
        .filter(|(k, _)| k != ACCOUNT_SIGNATURE_HEADER)
        .collect();
    let r = http(host.public, "POST", "/v1/requests", &h, &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.text(),
        format!("missing {ACCOUNT_SIGNATURE_HEADER} header\n")
    );

    // Properly signed, but expired by the host's clock: refused at the
    // edge (the enclave would refuse it too).
    let (sealed, _) = seal(t, &account, 16, b"late");
    let mut meta = sealed.billing_meta().unwrap();
    meta.expires_at = 1_000;
    let (late, _) = seal_meta(t, &meta, b"late");
    let h = request_headers(&t.digest, &account, &late);
    let r = http(host.public, "POST", "/v1/requests", &h, &late.to_cbor()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("expired"), "{}", r.text());

    assert_eq!(enclave.requests(), 0);
    assert!(host.export().await.is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_private_to_their_account() {
    let dir = TempDir::new("privacy");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let alice = new_account();
    let bob = new_account();
    let (sealed, _) = seal(t, &alice, 16, b"alice's question");
    assert_eq!(post(host.public, t, &alice, &sealed).await.status, 200);

    let get = |h: Vec<(String, String)>| async move {
        http(host.public, "GET", "/v1/receipts", &h, b"").await
    };
    let r = get(receipts_headers(&bob, now())).await;
    assert_eq!(r.status, 200);
    assert!(ReceiptList::from_cbor(&r.body).unwrap().0.is_empty());
    // Bob presenting Alice's key with his own signature.
    let mut h = receipts_headers(&bob, now());
    h[0].1 = hex::encode(alice.public_key_sec1());
    assert_eq!(get(h).await.status, 401);
    // A stale (replayed) query.
    let r = get(receipts_headers(&alice, now() - 3600)).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("more than 300 s"), "{}", r.text());
    // Missing headers.
    assert_eq!(get(vec![]).await.status, 401);
    // Alice sees hers.
    let r = get(receipts_headers(&alice, now())).await;
    assert_eq!(ReceiptList::from_cbor(&r.body).unwrap().0.len(), 1);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_rate_limited() {
    let dir = TempDir::new("rate");
    let enclave = TestEnclave::start(dir.path(), "e");
    let mut limits = test_limits();
    limits.account_requests_per_second = 0.2;
    limits.account_burst = 2;
    let host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let a = new_account();
    let mut first = None;
    for _ in 0..2 {
        let (s, _) = seal(t, &a, 16, b"q");
        assert_eq!(post(host.public, t, &a, &s).await.status, 200);
        first.get_or_insert(s);
    }
    let (s, _) = seal(t, &a, 16, b"q");
    let r = post(host.public, t, &a, &s).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "retry-after {retry}");
    // A replay is refused as such before the limiter, spending nothing.
    let r = post(host.public, t, &a, &first.unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.text());
    // Another account is unaffected.
    let b = new_account();
    let (s, _) = seal(t, &b, 16, b"q");
    assert_eq!(post(host.public, t, &b, &s).await.status, 200);
    assert!(host
        .metrics()
        .await
        .contains("cocoon_host_rate_limited_total 1"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_account_are_capped() {
    let dir = TempDir::new("streams");
    let enclave = TestEnclave::start(dir.path(), "e");
    enclave.set_chunks(4, Duration::from_millis(200));
    let mut limits = test_limits();
    limits.account_max_streams = 1;
    let host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = fetch_targets(host.public).await[0].clone();
    let a = new_account();
    let (s1, _) = seal(&t, &a, 16, b"one");
    let (s2, _) = seal(&t, &a, 16, b"two");
    let public = host.public;
    let t1 = t.clone();
    let a1 = a.clone();
    let first = tokio::spawn(async move { post(public, &t1, &a1, &s1).await });
    eventually(5, "first request at the enclave", || {
        enclave.requests() == 1
    })
    .await;
    let r = post(host.public, &t, &a, &s2).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("streams open"), "{}", r.text());
    assert_eq!(first.await.unwrap().status, 200);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_and_misrouted_requests() {
    let dir = TempDir::new("bad");
    let enclave = TestEnclave::start(dir.path(), "e");
    let mut limits = test_limits();
    limits.max_request_bytes = 4096;
    let host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, _) = seal(t, &account, 16, b"hello");
    let headers = request_headers(&t.digest, &account, &sealed);

    let big = vec![0u8; 5000];
    let r = http(host.public, "POST", "/v1/requests", &headers, &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("4096-byte limit"), "{}", r.text());

    let r = http(host.public, "POST", "/v1/requests", &headers, b"garbage").await;
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("sealed request:"), "{}", r.text());
    assert_eq!(r.text().lines().count(), 1);

    // Sealed to evidence this host does not serve.
    let mut h = headers.clone();
    h[0].1 = "ab".repeat(32);
    let r = http(host.public, "POST", "/v1/requests", &h, &sealed.to_cbor()).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.text(),
        format!(
            "evidence {} is not served here; fetch /v1/evidence again\n",
            "ab".repeat(32)
        )
    );
    let mut h = headers.clone();
    h[0].1 = "zz".into();
    assert_eq!(
        http(host.public, "POST", "/v1/requests", &h, &sealed.to_cbor())
            .await
            .status,
        400
    );
    assert_eq!(enclave.requests(), 0);
    let m = host.metrics().await;
    assert!(m.contains("outcome=\"too_large\",status=\"413\"} 1"), "{m}");
    assert!(
        m.contains("outcome=\"bad_request\",status=\"400\"} 2"),
        "{m}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_body_limit_is_the_sealed_request_maximum() {
    let l = cocoon_host::Limits::default();
    assert_eq!(
        l.max_request_bytes,
        cocoon_protocol::seal::MAX_SEALED_REQUEST + cocoon_host::config::REQUEST_BODY_SLACK
    );
    let mut too_big = l.clone();
    too_big.max_request_bytes += 1;
    assert!(too_big.validate().is_err());
}

/// Each misbehaviour: the stream's chunks arrive, the final chunk does not,
/// nothing is billed, and the refusal is counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_receipts_withhold_the_final_chunk() {
    let dir = TempDir::new("receipts");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let cases = [
        (Behavior::ForgeReceipt, "bad_signature"),
        (Behavior::InflateTokens, "tokens_over_limit"),
        (Behavior::WrongRequestId, "wrong_request"),
        (Behavior::WrongAccount, "wrong_account"),
        (Behavior::WrongModel, "wrong_model"),
        (Behavior::SkipReceipt, "missing"),
    ];
    for (behavior, reason) in cases {
        enclave.set_behavior(behavior.clone());
        let (sealed, session) = seal(t, &account, 16, b"question");
        let r = post(host.public, t, &account, &sealed).await;
        assert_eq!(r.status, 200, "{behavior:?}: {}", r.text());
        let opened = open_body(&r.body, session, &t.receipt_public_key);
        assert_eq!(opened.chunks, 3, "{behavior:?}: the non-final chunks");
        assert!(opened.receipt.is_none(), "{behavior:?}");
        assert!(
            opened.finished.as_ref().unwrap_err().contains("truncated"),
            "{behavior:?}: {:?}",
            opened.finished
        );
        let m = host.metrics().await;
        assert!(
            m.contains(&format!(
                "cocoon_host_receipts_refused_total{{reason=\"{reason}\"}} 1"
            )),
            "{behavior:?}: {m}"
        );
    }
    assert!(host.export().await.is_empty(), "nothing billed");
    assert!(host
        .metrics()
        .await
        .contains("outcome=\"truncated\",status=\"200\"} 6"));
    // The honest enclave again: billed.
    enclave.set_behavior(Behavior::Honest);
    let (sealed, session) = seal(t, &account, 16, b"question");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(
        open_body(&r.body, session, &t.receipt_public_key).finished,
        Ok(())
    );
    assert_eq!(host.export().await.len(), 1);
    host.stop().await;
}

/// The ledger refuses the receipt (the enclave reused a sequence number):
/// the final chunk is withheld as for an invalid receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_the_ledger_refuses_withholds_the_final_chunk() {
    let dir = TempDir::new("ledger-refuses");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, session) = seal(t, &account, 16, b"first");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(
        open_body(&r.body, session, &t.receipt_public_key).finished,
        Ok(())
    );
    let seq = host.export().await[0]["enclave_seq"].as_u64().unwrap();
    enclave.set_behavior(Behavior::ReuseEnclaveSeq(seq));
    let (sealed, session) = seal(t, &account, 16, b"second");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 200);
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert_eq!(opened.chunks, 3);
    assert!(opened.finished.is_err());
    assert_eq!(host.export().await.len(), 1);
    assert!(host
        .metrics()
        .await
        .contains("cocoon_host_receipts_refused_total{reason=\"duplicate\"} 1"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_errors_and_timeouts_become_statuses() {
    let dir = TempDir::new("errors");
    let enclave = TestEnclave::start(dir.path(), "e");
    let mut limits = test_limits();
    limits.first_frame_timeout = Duration::from_millis(500);
    let host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();

    enclave.set_behavior(Behavior::ErrorFrame("model not loaded\nsecond line".into()));
    let (sealed, _) = seal(t, &account, 16, b"q");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.text(),
        "the enclave refused the request: model not loaded second line\n"
    );

    enclave.set_behavior(Behavior::Hang);
    let (sealed, _) = seal(t, &account, 16, b"q");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 504, "{}", r.text());
    // The host cancelled the stream it gave up on.
    eventually(5, "cancel at the enclave", || enclave.cancels() == 1).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_enclave_is_reported_as_stale_evidence() {
    let dir = TempDir::new("restart");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let old = fetch_targets(host.public).await[0].clone();
    let account = new_account();

    // Restart: connections drop, keys change. The host reconnects and
    // serves the new evidence; the old digest is gone.
    enclave.restart();
    eventually(10, "reconnect", || enclave.connections() >= 2).await;
    let mut fresh = None;
    for _ in 0..200 {
        let ts = fetch_targets(host.public).await;
        if ts.len() == 1 && ts[0].digest != old.digest {
            fresh = Some(ts[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = fresh.expect("new evidence served");
    let (sealed, _) = seal(&old, &account, 16, b"q");
    let r = post(host.public, &old, &account, &sealed).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("fetch /v1/evidence again"));
    let (sealed, session) = seal(&fresh, &account, 16, b"q");
    let r = post(host.public, &fresh, &account, &sealed).await;
    assert_eq!(
        open_body(&r.body, session, &fresh.receipt_public_key).finished,
        Ok(())
    );

    // Keys rotated without the connection dropping: the enclave refuses the
    // request, the host re-checks the evidence and answers 409.
    enclave.rotate_keys();
    let (sealed, _) = seal(&fresh, &account, 16, b"q");
    let r = post(host.public, &fresh, &account, &sealed).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("no longer current"), "{}", r.text());
    // A new receipt key means new tabs: the host sets the connection up
    // again (evidence, prices, acknowledgements) before serving it.
    let mut newest = None;
    for _ in 0..250 {
        let ts = fetch_targets(host.public).await;
        if ts.first().is_some_and(|t| t.digest == enclave.digest()) {
            newest = Some(ts[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newest = &newest.expect("the new evidence is served");
    let (sealed, session) = seal(newest, &account, 16, b"q");
    let r = post(host.public, newest, &account, &sealed).await;
    assert_eq!(
        open_body(&r.body, session, &newest.receipt_public_key).finished,
        Ok(())
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enclave_that_goes_away_is_no_longer_served() {
    let dir = TempDir::new("vanish");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = fetch_targets(host.public).await[0].clone();
    let label = format!("enclave=\"unix:{}\"", enclave.path.display());
    drop(enclave);
    let mut ready = 200;
    for _ in 0..200 {
        ready = http(host.public, "GET", "/ready", &[], b"").await.status;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "unpublished as soon as the connection ended");
    assert!(fetch_targets(host.public).await.is_empty());
    let account = new_account();
    let (sealed, _) = seal(&t, &account, 16, b"q");
    assert_eq!(post(host.public, &t, &account, &sealed).await.status, 503);
    let m = host.metrics().await;
    assert!(
        m.contains(&format!("cocoon_host_enclave_connected{{{label}}} 0")),
        "{m}"
    );
    assert!(
        m.contains(&format!("cocoon_host_enclave_verified{{{label}}} 0")),
        "{m}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_truncates_the_stream_and_reconnects() {
    let dir = TempDir::new("drop");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    enclave.set_behavior(Behavior::DropConnectionMidStream);
    let (sealed, session) = seal(t, &account, 16, b"q");
    let r = post(host.public, t, &account, &sealed).await;
    assert_eq!(r.status, 200);
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert_eq!(opened.chunks, 1);
    assert!(opened.finished.is_err());
    enclave.set_behavior(Behavior::Honest);
    eventually(10, "reconnect", || enclave.connections() >= 2).await;
    host.wait_ready().await;
    // Same keys (the enclave did not restart): same evidence, served again.
    let mut ok = false;
    for _ in 0..100 {
        let (sealed, session) = seal(t, &account, 16, b"q2");
        let r = post(host.public, t, &account, &sealed).await;
        if r.status == 200 {
            assert_eq!(
                open_body(&r.body, session, &t.receipt_public_key).finished,
                Ok(())
            );
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(ok, "served again after reconnecting");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_and_is_still_billed() {
    let dir = TempDir::new("cancel");
    let enclave = TestEnclave::start(dir.path(), "e");
    enclave.set_chunks(20, Duration::from_millis(100));
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (sealed, _) = seal(t, &account, 64, b"long answer please");
    let (conn, head) = http_start(
        host.public,
        "POST",
        "/v1/requests",
        &request_headers(&t.digest, &account, &sealed),
        &sealed.to_cbor(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(conn);
    eventually(10, "cancel at the enclave", || enclave.cancels() == 1).await;
    // The enclave signs a receipt for the tokens it produced; the host
    // records it although the client is gone.
    let mut rows = vec![];
    for _ in 0..100 {
        rows = host.export().await;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(rows.len(), 1);
    let billed = rows[0]["completion_tokens"].as_u64().unwrap();
    assert!(billed < 20, "billed {billed} of 20 tokens");
    let mut m = String::new();
    for _ in 0..100 {
        m = host.metrics().await;
        if m.contains("outcome=\"client_gone\",status=\"200\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        m.contains("outcome=\"client_gone\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(m.contains("cocoon_host_cancels_sent_total 1"), "{m}");
    host.stop().await;
}

/// A client that stops reading fills its stream's buffers; the reader
/// drops that one stream after `stream_stall_timeout` instead of holding up
/// the other streams on the same enclave connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_up_other_streams() {
    let dir = TempDir::new("stall");
    let enclave = TestEnclave::start(dir.path(), "e");
    // 60 chunks of 512 KiB: far more than the buffers between the enclave
    // and a client that does not read (stream channel, body channel, TCP).
    enclave.set_chunks(60, Duration::ZERO);
    enclave.set_chunk_padding(512 << 10);
    let mut limits = test_limits();
    limits.stream_stall_timeout = Duration::from_millis(300);
    // Long enough that only the stall timeout can free the connection in
    // time (the stalled pump would give up on its client after this).
    limits.idle_timeout = Duration::from_secs(30);
    limits.total_timeout = Duration::from_secs(60);
    let host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = &fetch_targets(host.public).await[0];
    let account = new_account();
    let (stalled, _) = seal(t, &account, 100, b"stalled");
    let (conn, head) = http_start(
        host.public,
        "POST",
        "/v1/requests",
        &request_headers(&t.digest, &account, &stalled),
        &stalled.to_cbor(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The stalled client keeps its connection open and reads nothing.
    let started = std::time::Instant::now();
    let (other, session) = seal(t, &account, 100, b"other");
    let r = post(host.public, t, &account, &other).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        open_body(&r.body, session, &t.receipt_public_key).finished,
        Ok(())
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    eventually(10, "stalled stream cancelled", || enclave.cancels() >= 1).await;
    drop(conn);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_only_on_the_admin_listener() {
    let dir = TempDir::new("admin");
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    assert_ne!(host.public.port(), host.admin.port());
    for (m, p) in [
        ("GET", "/admin/ledger/export"),
        ("GET", "/admin/ledger/check"),
        ("POST", "/admin/drain"),
    ] {
        assert_eq!(http(host.public, m, p, &[], b"").await.status, 404, "{p}");
    }
    assert_eq!(host.admin.ip().to_string(), "127.0.0.1");
    let r = http(host.admin, "GET", "/admin/ledger/export?after=0", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(
        http(host.admin, "GET", "/admin/ledger/export?after=x", &[], b"")
            .await
            .status,
        400
    );
    // The public API is not on the admin listener either.
    assert_eq!(
        http(host.admin, "GET", "/v1/evidence", &[], b"")
            .await
            .status,
        404
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_streams_and_refuses_new_ones() {
    let dir = TempDir::new("drain");
    let enclave = TestEnclave::start(dir.path(), "e");
    enclave.set_chunks(5, Duration::from_millis(300));
    let mut host = TestHost::start(&dir, &[&enclave], test_limits()).await;
    host.wait_ready().await;
    let t = fetch_targets(host.public).await[0].clone();
    let account = new_account();
    let (sealed, session) = seal(&t, &account, 16, b"q");
    let public = host.public;
    let (t1, a1, s1) = (t.clone(), account.clone(), sealed.clone());
    let in_flight = tokio::spawn(async move { post(public, &t1, &a1, &s1).await });
    eventually(5, "request at the enclave", || enclave.requests() == 1).await;

    let r = http(host.admin, "POST", "/admin/drain", &[], b"").await;
    assert_eq!(r.status, 202);
    let ready = http(host.public, "GET", "/ready", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.text(), "draining\n");
    let (s2, _) = seal(&t, &account, 16, b"late");
    let late = post(host.public, &t, &account, &s2).await;
    assert_eq!(late.status, 503);
    assert_eq!(late.text(), "draining\n");

    // The in-flight stream runs to completion, receipt and all.
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert_eq!(opened.finished, Ok(()));
    assert_eq!(opened.chunks, 6);
    // The service ends by itself after the drain.
    let running = host.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), running.join())
        .await
        .unwrap()
        .unwrap();
    // Ledger flushed and closed: readable, one entry.
    let conn = rusqlite::Connection::open(&host.ledger).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM receipts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_streams_that_run_too_long() {
    let dir = TempDir::new("drain-timeout");
    let enclave = TestEnclave::start(dir.path(), "e");
    enclave.set_chunks(50, Duration::from_millis(200));
    let mut limits = test_limits();
    limits.drain_timeout = Duration::from_millis(500);
    let mut host = TestHost::start(&dir, &[&enclave], limits).await;
    host.wait_ready().await;
    let t = fetch_targets(host.public).await[0].clone();
    let account = new_account();
    let (sealed, session) = seal(&t, &account, 64, b"q");
    let public = host.public;
    let (t1, a1, s1) = (t.clone(), account.clone(), sealed.clone());
    let in_flight = tokio::spawn(async move { post(public, &t1, &a1, &s1).await });
    eventually(5, "request at the enclave", || enclave.requests() == 1).await;
    let running = host.running.take().unwrap();
    running.drain();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), running.join())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    let r = in_flight.await.unwrap();
    let opened = open_body(&r.body, session, &t.receipt_public_key);
    assert!(opened.finished.is_err(), "cut short");
    assert!(opened.chunks < 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_the_policy_refuses_is_never_served() {
    let dir = TempDir::new("policy");
    let enclave = TestEnclave::start(dir.path(), "e");
    // Pinned to another measurement.
    let policy = simulated::policy(Some(&[0; 48]));
    let host = TestHost::start_with_policy(&dir, &[&enclave], test_limits(), policy).await;
    eventually(10, "evidence fetched twice", || enclave.connections() >= 2).await;
    assert_eq!(
        http(host.public, "GET", "/ready", &[], b"").await.status,
        503
    );
    let ev = http(host.public, "GET", "/v1/evidence", &[], b"").await;
    assert!(cocoon_protocol::api::EvidenceList::from_cbor(&ev.body)
        .unwrap()
        .0
        .is_empty());
    // A request sealed to the (unverified) enclave is not forwarded.
    let digest = enclave.digest();
    let account = new_account();
    let target = Target {
        hpke: {
            let b = enclave.bundle();
            let bundle = cocoon_attestation::bundle::EvidenceBundle::from_cbor(&b).unwrap();
            let claims =
                cocoon_attestation::bundle::Claims::from_cbor(&bundle.claims_cbor).unwrap();
            cocoon_protocol::seal::HpkePublicKey::from_bytes(&claims.hpke_public_key).unwrap()
        },
        digest,
        receipt_public_key: enclave.receipt_public_key(),
    };
    let (sealed, _) = seal(&target, &account, 16, b"q");
    let r = post(host.public, &target, &account, &sealed).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(enclave.requests(), 0);
    let m = host.metrics().await;
    let series = format!(
        "cocoon_host_enclave_verified{{enclave=\"unix:{}\"}} 0",
        enclave.path.display()
    );
    assert!(m.contains(&series), "{m}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_evidence_digest() {
    let dir = TempDir::new("route");
    let e1 = TestEnclave::start(dir.path(), "e1");
    let e2 = TestEnclave::start(dir.path(), "e2");
    let host = TestHost::start(&dir, &[&e1, &e2], test_limits()).await;
    host.wait_ready().await;
    let mut targets = vec![];
    for _ in 0..200 {
        targets = fetch_targets(host.public).await;
        if targets.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0].digest, e1.digest(), "configuration order");
    assert_eq!(targets[1].digest, e2.digest());
    let account = new_account();
    for (i, t) in [&targets[1], &targets[1], &targets[0]]
        .into_iter()
        .enumerate()
    {
        let (sealed, session) = seal(t, &account, 16, format!("q{i}").as_bytes());
        let r = post(host.public, t, &account, &sealed).await;
        assert_eq!(
            open_body(&r.body, session, &t.receipt_public_key).finished,
            Ok(())
        );
    }
    assert_eq!((e1.requests(), e2.requests()), (1, 2));
    let rows = host.export().await;
    assert_eq!(rows.len(), 3);
    let keys: Vec<_> = rows
        .iter()
        .map(|r| r["receipt_public_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys[0], hex::encode(e2.receipt_public_key()));
    assert_eq!(keys[2], hex::encode(e1.receipt_public_key()));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_checked_and_the_authorization_cap_is_enforced() {
    use cocoon_protocol::api::AUTHORIZATION_HEADER;
    use cocoon_protocol::pricing::PriceSheet;
    use cocoon_protocol::seal::BillingMeta;
    use cocoon_protocol::settlement::{compress_p256, Authorization, ContractAddress};

    let dir = TempDir::new("prices");
    let enclave = TestEnclave::start(dir.path(), "e");
    let contract = ContractAddress {
        workchain: 0,
        hash: [0x42; 32],
    };
    let host = TestHost::start_with(
        &dir,
        &[&enclave],
        test_limits(),
        simulated_policy(),
        Some(contract),
    )
    .await;
    host.wait_ready().await;
    let target = &fetch_targets(host.public).await[0];

    // The sheet: the enclave's measured table, multiplier 1 at no load, the
    // contract.
    let r = http(host.public, "GET", "/v1/prices", &[], b"").await;
    assert_eq!(r.status, 200);
    let sheet = PriceSheet::from_cbor(&r.body).unwrap();
    let entry = sheet.entry(&target.digest.0).unwrap();
    assert_eq!(entry.table, price_table());
    assert_eq!(entry.offer(MODEL).unwrap(), (PRICE, 1000));
    assert_eq!(sheet.settlement.unwrap().contract, contract.to_string());

    let account = new_account();
    let meta = |price: cocoon_protocol::receipt::UnitPrice, m: u32| BillingMeta {
        model: MODEL.into(),
        max_tokens: 4,
        price_quote_id: sheet.quote_id.clone(),
        unit_price: price,
        multiplier_milli: m,
        client_account: account.id().0,
        expires_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300,
    };
    let auth = |cap: u64| {
        let a = account.sign_authorization(&Authorization {
            contract,
            account: account.id().0,
            enclave_key: compress_p256(&target.receipt_public_key).unwrap(),
            cap,
        });
        (AUTHORIZATION_HEADER.to_string(), hex::encode(a.to_bytes()))
    };
    let send = |m: BillingMeta, extra: Vec<(String, String)>| {
        let (sealed, _) = seal_meta(target, &m, b"a short question");
        let mut h = request_headers(&target.digest, &account, &sealed);
        h.extend(extra);
        let public = host.public;
        async move { http(public, "POST", "/v1/requests", &h, &sealed.to_cbor()).await }
    };
    // Prices other than the table's: 412, nothing forwarded.
    let cheap = cocoon_protocol::receipt::UnitPrice {
        completion: PRICE.completion - 1,
        ..PRICE
    };
    let r = send(meta(cheap, 1000), vec![auth(1_000_000_000)]).await;
    assert_eq!(r.status, 412, "{}", r.text());
    // A multiplier below the table's bounds: 412.
    let r = send(
        meta(PRICE.scaled(900).unwrap(), 900),
        vec![auth(1_000_000_000)],
    )
    .await;
    assert_eq!(r.status, 412, "{}", r.text());
    // No authorization: 402.
    let r = send(meta(PRICE, 1000), vec![]).await;
    assert_eq!(r.status, 402, "{}", r.text());
    // An authorization for another contract: 402.
    let other = account.sign_authorization(&Authorization {
        contract: ContractAddress {
            workchain: 0,
            hash: [0x43; 32],
        },
        account: account.id().0,
        enclave_key: compress_p256(&target.receipt_public_key).unwrap(),
        cap: 1_000_000_000,
    });
    let r = send(
        meta(PRICE, 1000),
        vec![(AUTHORIZATION_HEADER.into(), hex::encode(other.to_bytes()))],
    )
    .await;
    assert_eq!(r.status, 402, "{}", r.text());
    // A cap below the worst case: 402 naming the cap.
    let r = send(meta(PRICE, 1000), vec![auth(1_000)]).await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert!(r.text().contains("cap"), "{}", r.text());
    // A higher multiplier than the sheet's is fine (the client pays more),
    // and a sufficient cap lets the request through; the receipt charges
    // the accepted prices.
    let r = send(
        meta(PRICE.scaled(1500).unwrap(), 1500),
        vec![auth(10_000_000)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = host.export().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["multiplier_milli"], 1500);
    assert_eq!(rows[0]["prompt_price"], 150);
    // The enclave's signed tab for it arrives after the acknowledgement.
    let mut text = String::new();
    for _ in 0..100 {
        text = http(host.public, "GET", "/metrics", &[], b"").await.text();
        if text.contains("cocoon_host_tabs_total{result=\"stored\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text.contains("cocoon_host_tabs_total{result=\"stored\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cocoon_host_tabs_total{result=\"rejected\"} 0"),
        "{text}"
    );
    assert!(text.contains("cocoon_host_utilisation_milli "), "{text}");
    assert!(
        text.contains("outcome=\"price_refused\",status=\"412\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("outcome=\"payment_required\",status=\"402\"} 3"),
        "{text}"
    );
    host.stop().await;
}

/// The host's time rules read the injected clock: pinned, it decides the
/// price sheet's validity, a request's expiry (refused before the enclave
/// sees it) and a signed query's skew, whatever the system clock says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_clock_decides_the_time_rules() {
    use cocoon_host::clock::PinnedClock;
    use cocoon_host::pricing::QUOTE_TTL;
    use cocoon_protocol::pricing::PriceSheet;

    let dir = TempDir::new("clock");
    let enclave = TestEnclave::start(dir.path(), "e");
    let t0 = now();
    let pinned = PinnedClock::at(t0);
    let host = TestHost::start_clocked(
        &dir,
        &[&enclave],
        test_limits(),
        simulated_policy(),
        None,
        pinned.clock(),
    )
    .await;
    host.wait_ready().await;
    let target = &fetch_targets(host.public).await[0];
    let account = new_account();
    let sheet = || async {
        let r = http(host.public, "GET", "/v1/prices", &[], b"").await;
        assert_eq!(r.status, 200);
        PriceSheet::from_cbor(&r.body).unwrap()
    };
    let receipts = |time: u64| {
        let h = receipts_headers(&account, time);
        async move { http(host.public, "GET", "/v1/receipts", &h, b"").await }
    };

    // At t0: the sheet is issued at t0, a request that expires at about
    // t0 + 300 is served, a query signed at t0 is answered.
    let s = sheet().await;
    assert_eq!((s.issued_at, s.valid_until), (t0, t0 + QUOTE_TTL.as_secs()));
    let (sealed, _) = seal(target, &account, 4, b"before");
    let r = post(host.public, target, &account, &sealed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(receipts(t0).await.status, 200);

    // Ten minutes later by the pinned clock (seconds by the system's): the
    // same kind of request has lapsed and never reaches the enclave, the
    // sheet is issued at the new time, the query signed at t0 is stale.
    pinned.advance(Duration::from_secs(600));
    let served = enclave.requests();
    let (sealed, _) = seal(target, &account, 4, b"after");
    let r = post(host.public, target, &account, &sealed).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("expired at"), "{}", r.text());
    assert_eq!(enclave.requests(), served);
    let s = sheet().await;
    assert_eq!(
        (s.issued_at, s.valid_until),
        (t0 + 600, t0 + 600 + QUOTE_TTL.as_secs())
    );
    let r = receipts(t0).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("more than 300 s"), "{}", r.text());
    assert_eq!(receipts(t0 + 600).await.status, 200);
    host.stop().await;
}
