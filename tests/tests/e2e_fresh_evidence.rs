//! Fresh evidence, end to end with real processes: `cocoon-enclave`
//! (simulated TEE) re-attests on a timer with the same keys, `cocoon-host`
//! fetches and serves the newest bundle while requests sealed to the
//! earlier ones still reach the enclave, and a client asks for evidence
//! bound to its own nonce, within the host's per-account limit.

mod common;

use std::time::Duration;

use cocoon_client::{Client, ClientError, ClientOptions};
use cocoon_protocol::api::{
    ChunkRecordDecoder, ACCOUNT_KEY_HEADER, ACCOUNT_SIGNATURE_HEADER, CBOR_CONTENT_TYPE,
    EVIDENCE_DIGEST_HEADER, REQUESTS_PATH,
};
use cocoon_protocol::message::{InferenceRequest, ResponseEvent};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::verify_receipt;
use cocoon_protocol::seal::{seal_request, BillingMeta};
use cocoon_test_kit::procs::TempDir;
use cocoon_verifier::policy::Check;
use common::*;

const MODEL: &str = "cocoon-deterministic-test";

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn evidence_is_refreshed_with_the_same_keys_and_a_client_can_bind_its_nonce() {
    let dir = TempDir::new("e2e-fresh");
    let enclave = start_enclave_with(
        &dir,
        "enclave",
        "image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = 8\nevidence_refresh_secs = 1\n",
    );
    let host_config = dir.path().join("host.toml");
    std::fs::write(
        &host_config,
        "[limits]\nevidence_refresh_secs = 0.5\nnonce_evidence_per_minute = 1.0\nnonce_evidence_burst = 2\n",
    )
    .unwrap();
    let host = start_host(
        &dir,
        &[&enclave.socket],
        &["--config", host_config.to_str().unwrap()],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Keeps its first verified copy for a minute: its requests are sealed
    // to the boot report's digest long after the host serves newer ones.
    let mut o = ClientOptions::default();
    o.evidence_refresh = Duration::from_secs(60);
    let old_copy = Client::with_options(&host.url, simulated_policy(), account(), o);
    let fresh = Client::new(&host.url, simulated_policy(), account());
    rt.block_on(async {
        let first = old_copy.verify().await.expect("verified");
        let boot = first.enclaves()[0].clone();
        assert_eq!(boot.claims().refresh, 0);

        // The enclave re-attests every second; the host picks it up.
        let mut newer = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let p = fresh.verify().await.expect("verified");
            let e = p.enclaves()[0].clone();
            if e.claims().refresh >= 2 {
                newer = Some(e);
                break;
            }
        }
        let newer = newer.expect("the host serves refreshed evidence within 10 s");
        assert_ne!(newer.evidence_digest(), boot.evidence_digest());
        assert_eq!(
            newer.claims().hpke_public_key,
            boot.claims().hpke_public_key
        );
        assert_eq!(
            newer.claims().receipt_public_key,
            boot.claims().receipt_public_key
        );
        assert_eq!(newer.claims().epoch, boot.claims().epoch);
        assert!(newer.claims().issued_at > boot.claims().issued_at);

        // A request sealed to the boot report's digest (a client that
        // verified before the refresh): the host still routes it to the
        // enclave, which opens it (same keys).
        let key = account();
        let sheet = fresh.price_sheet(true).await.unwrap();
        let (unit_price, multiplier_milli) = sheet
            .entry(newer.evidence_digest().as_bytes())
            .expect("the sheet prices the enclave")
            .offer(MODEL)
            .unwrap();
        let meta = BillingMeta {
            model: MODEL.into(),
            max_tokens: 8,
            price_quote_id: sheet.quote_id.clone(),
            unit_price,
            multiplier_milli,
            client_account: key.id().0,
            expires_at: unix_secs() + 300,
        };
        let body = InferenceRequest::Chat {
            messages: ask("sealed to the boot evidence"),
            sampling: Default::default(),
        }
        .to_cbor();
        let (sealed, session) = seal_request(
            boot.hpke_public_key(),
            &boot.evidence_digest(),
            &meta,
            &body,
            &mut OsRng,
        )
        .unwrap();
        let resp = reqwest::Client::new()
            .post(format!("{}{REQUESTS_PATH}", host.url))
            .header("content-type", CBOR_CONTENT_TYPE)
            .header(
                EVIDENCE_DIGEST_HEADER,
                hex::encode(boot.evidence_digest().as_bytes()),
            )
            .header(ACCOUNT_KEY_HEADER, hex::encode(key.public_key_sec1()))
            .header(
                ACCOUNT_SIGNATURE_HEADER,
                hex::encode(key.sign_request(&sealed.request_id())),
            )
            .body(sealed.to_cbor())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "host log:\n{}", host.proc.output());
        let mut records = ChunkRecordDecoder::new();
        records.push(&resp.bytes().await.unwrap());
        let mut opener = session.response_opener();
        let mut receipt = None;
        while let Some(r) = records.next_record().unwrap() {
            let chunk = opener.open_chunk(&r).expect("authentic chunk");
            if let ResponseEvent::End { receipt: r, .. } =
                ResponseEvent::decode(&chunk.data, chunk.last).unwrap()
            {
                receipt = Some(r);
            }
        }
        opener.finish().expect("the whole stream");
        let receipt = verify_receipt(&receipt.expect("an end"), &boot.claims().receipt_public_key)
            .expect("signed by the enclave's receipt key");
        assert_eq!(receipt.request_id, sealed.request_id());

        // The SDK with its old copy: the sheet prices only the newest
        // evidence, so it verifies again and is served.
        let (_, done) = old_copy
            .chat(MODEL, ask("an old copy"), 8)
            .await
            .expect("served after re-verifying")
            .collect_text()
            .await
            .expect("verified answer");
        assert_eq!(
            verify_receipt(&done.receipt_bytes, &boot.claims().receipt_public_key)
                .unwrap()
                .request_id,
            done.request_id
        );

        // A client whose policy allows evidence 2 s old verifies again
        // before it sends, however long its refresh interval.
        let mut strict_policy = simulated_policy();
        strict_policy.max_evidence_age = Check::Require(2);
        let mut o = ClientOptions::default();
        o.evidence_refresh = Duration::from_secs(600);
        let strict = Client::with_options(&host.url, strict_policy, account(), o);
        let first = strict.verify().await.unwrap().enclaves()[0]
            .claims()
            .clone();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        strict
            .chat(MODEL, ask("fresh enough?"), 8)
            .await
            .expect("accepted")
            .collect_text()
            .await
            .expect("verified answer");
        let now_seen = strict.verified().await.unwrap().enclaves()[0]
            .claims()
            .clone();
        assert!(
            now_seen.issued_at > first.issued_at && now_seen.refresh > first.refresh,
            "re-verified: {first:?} then {now_seen:?}"
        );

        // Evidence bound to this client's own nonce, twice (the burst),
        // then the per-account limit.
        for _ in 0..2 {
            let mine = fresh
                .attest_with_nonce(&newer)
                .await
                .expect("nonce evidence");
            assert_eq!(mine.claims().client_nonce.as_ref().map(Vec::len), Some(32));
            assert_eq!(mine.claims().hpke_public_key, boot.claims().hpke_public_key);
            assert!(mine.claims().issued_at >= newer.claims().issued_at);
        }
        match fresh.attest_with_nonce(&newer).await {
            Err(ClientError::RateLimited { retry_after, .. }) => {
                assert!(
                    retry_after.is_some_and(|d| d.as_secs() >= 1),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another account has its own allowance.
        let other = Client::new(&host.url, simulated_policy(), account());
        other.verify().await.unwrap();
        other
            .attest_with_nonce(&newer)
            .await
            .expect("another account");
    });
    let log = enclave.proc.output();
    assert!(log.contains("evidence refreshed"), "{log}");
    assert!(log.contains("evidence made for a client nonce"), "{log}");
}
