//! The SDK against an in-test provider over real sockets: the honest path,
//! and every misbehaviour of the host (and of a buggy enclave) that the
//! client must catch, each with the error it must report.

mod support;

use std::time::Duration;

use cocoon_client::{
    Client, ClientError, ClientOptions, PlatformKind, ReceiptProblem, ResponseError, ResponsePart,
    VerificationError,
};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, FinishReason, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_verifier::{Policy, ReasonKind};
use support::{default_policy, sim_policy, Misbehavior, TestProvider, EMBED_MODEL, MODEL, PRICE};

fn ask(q: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: q.into(),
    }]
}

fn client_with(p: &TestProvider, policy: Policy, refresh: Duration) -> Client {
    let mut o = ClientOptions::default();
    o.evidence_refresh = refresh;
    o.read_timeout = Duration::from_secs(20);
    Client::with_options(&p.url, policy, AccountKey::generate(&mut OsRng), o)
}

fn client(p: &TestProvider) -> Client {
    client_with(p, sim_policy(), Duration::from_secs(3600))
}

/// Run one chat to its end; the text and the outcome.
async fn chat(
    c: &Client,
    max_tokens: u32,
) -> Result<(String, cocoon_client::Completed), ClientError> {
    let stream = c
        .chat(MODEL, ask("what is six times seven"), max_tokens)
        .await?;
    Ok(stream.collect_text().await?)
}

#[tokio::test]
async fn honest_chat_streams_and_the_receipt_checks_out() {
    let p = TestProvider::start().await;
    let c = client(&p);
    let v = c.verify().await.unwrap();
    assert_eq!(v.enclaves().len(), 1);
    let e = &v.enclaves()[0];
    assert_eq!(e.platform(), PlatformKind::Simulated);
    assert!(!e.platform().is_confidential());
    assert_eq!(e.evidence_digest(), p.digest());
    assert_eq!(v.models(), vec![MODEL.to_string(), EMBED_MODEL.to_string()]);

    let mut s = c
        .chat(MODEL, ask("what is six times seven"), 64)
        .await
        .unwrap();
    let rid = s.request_id();
    let mut pieces = vec![];
    let completed = loop {
        match s.next().await.unwrap().unwrap() {
            ResponsePart::Text(t) => pieces.push(t),
            ResponsePart::Completed(c) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(s.next().await.unwrap().is_none(), "nothing after the end");
    assert_eq!(
        pieces,
        [
            "The answer ",
            "is ",
            "42.",
            " (you asked: what is six times seven)"
        ]
    );
    assert_eq!(completed.finish, FinishReason::Stop);
    assert_eq!(completed.request_id, rid);
    assert_eq!(completed.receipt.request_id, rid);
    assert_eq!(completed.receipt.client_account, c.account_id().0);
    assert_eq!(completed.receipt.model, MODEL);
    assert_eq!(completed.receipt.unit_price, PRICE);
    assert_eq!(completed.usage.prompt_tokens, 5);
    assert_eq!(completed.usage.completion_tokens, 4);
    assert_eq!(completed.usage.total_tokens, 9);
    assert_eq!(completed.evidence_digest, p.digest());
    assert_eq!(completed.platform, PlatformKind::Simulated);
    assert_eq!(
        cocoon_protocol::receipt::verify_receipt(
            &completed.receipt_bytes,
            &p.state().enclave.receipts.public_key_sec1()
        )
        .unwrap(),
        completed.receipt
    );
    assert_eq!((p.posts(), p.opened(), p.evidence_gets()), (1, 1, 1));
}

#[tokio::test]
async fn max_tokens_is_in_the_sealed_metadata_and_the_receipt() {
    let p = TestProvider::start().await;
    let c = client(&p);
    let (text, done) = chat(&c, 2).await.unwrap();
    assert_eq!(text, "The answer is ");
    assert_eq!(done.finish, FinishReason::Length);
    assert_eq!(done.usage.completion_tokens, 2);
}

#[tokio::test]
async fn embeddings_come_back_in_order_with_a_receipt() {
    let p = TestProvider::start().await;
    let c = client(&p);
    let r = c
        .embeddings(EMBED_MODEL, vec!["a b".into(), "ccc".into(), "d".into()])
        .await
        .unwrap();
    assert_eq!(
        r.embeddings,
        vec![
            vec![3.0, 0.0, 0.5],
            vec![3.0, 1.0, 0.5],
            vec![1.0, 2.0, 0.5]
        ]
    );
    assert_eq!(r.completed.usage.prompt_tokens, 4);
    assert_eq!(r.completed.usage.completion_tokens, 0);
    assert_eq!(r.completed.receipt.model, EMBED_MODEL);
}

#[tokio::test]
async fn default_policy_rejects_simulated_evidence_and_nothing_is_posted() {
    let p = TestProvider::start().await;
    let c = client_with(&p, default_policy(), Duration::from_secs(3600));
    let err = c.verify().await.unwrap_err();
    let ClientError::Verification(VerificationError::NoneVerified(r)) = &err else {
        panic!("{err}");
    };
    assert_eq!(r.len(), 1);
    assert!(r[0].rejection.has(ReasonKind::Policy));
    let msg = err.to_string();
    assert!(msg.contains("NOT confidential"), "{msg}");
    assert!(msg.contains("nothing was sent"), "{msg}");
    // A request verifies first, fails the same way, and sends nothing.
    let err = chat(&c, 16).await.unwrap_err();
    assert!(err.is_verification_failure(), "{err}");
    assert!(c.verified().await.is_none());
    assert_eq!(p.posts(), 0);
}

#[tokio::test]
async fn only_verified_bundles_are_used_and_rejections_are_listed() {
    let p = TestProvider::start().await;
    {
        let mut st = p.state();
        let bad = st.other.badly_signed_bundle();
        st.extra_evidence.push(bad);
    }
    let c = client(&p);
    let v = c.verify().await.unwrap();
    assert_eq!(v.enclaves().len(), 1);
    assert_eq!(v.enclaves()[0].bundle_index(), 0);
    assert_eq!(v.rejected().len(), 1);
    assert_eq!(v.rejected()[0].index, 1);
    assert!(v.rejected()[0].rejection.has(ReasonKind::Signature));
    for _ in 0..3 {
        chat(&c, 16).await.unwrap();
    }
    let ok = hex::encode(p.digest().as_bytes());
    assert!(p.state().digests_seen.iter().all(|d| *d == ok));

    // With only bad bundles, every bundle's reasons are listed.
    {
        let mut st = p.state();
        let bad = st.enclave.badly_signed_bundle();
        let spliced = st.enclave.spliced_bundle(&st.other.claims_cbor);
        st.extra_evidence = vec![bad, spliced];
        st.misbehavior = Misbehavior::SpliceClaims;
    }
    let err = c.verify().await.unwrap_err();
    let rej = match &err {
        ClientError::Verification(v) => v.rejections().to_vec(),
        other => panic!("{other}"),
    };
    assert_eq!(rej.len(), 3);
    assert!(rej[0].rejection.has(ReasonKind::Claims));
    assert!(rej[1].rejection.has(ReasonKind::Signature));
    assert!(rej[2].rejection.has(ReasonKind::Claims));
    let msg = err.to_string();
    for i in 0..3 {
        assert!(
            msg.contains(&format!("enclave evidence #{i} rejected")),
            "{msg}"
        );
    }
    assert!(msg.contains("not bound to the hardware report"), "{msg}");
}

#[tokio::test]
async fn spliced_claims_do_not_verify_and_nothing_is_posted() {
    let p = TestProvider::start().await;
    p.set(Misbehavior::SpliceClaims);
    let c = client(&p);
    let err = chat(&c, 16).await.unwrap_err();
    let ClientError::Verification(v) = &err else {
        panic!("{err}")
    };
    assert!(v.rejections()[0].rejection.has(ReasonKind::Claims), "{err}");
    assert_eq!(p.posts(), 0);
}

/// The host lists another genuine enclave's evidence but forwards the
/// request to its own: the evidence verifies (it is genuine), the client
/// seals to the listed enclave's key and claims, and the enclave that gets
/// the request cannot open it. The request fails at the enclave side; no
/// plaintext exists outside the listed enclave.
#[tokio::test]
async fn evidence_from_another_enclave_fails_at_the_enclave() {
    let p = TestProvider::start().await;
    p.set(Misbehavior::SwapEvidence);
    let c = client(&p);
    let v = c.verify().await.unwrap();
    let other = p.state().other.digest();
    assert_eq!(v.enclaves()[0].evidence_digest(), other);
    let err = chat(&c, 16).await.unwrap_err();
    match &err {
        ClientError::Status {
            status: 502,
            reason,
        } => {
            assert!(reason.contains("does not open"), "{reason}")
        }
        other => panic!("{other}"),
    }
    let st = p.state();
    assert_eq!((st.posts, st.opened, st.open_failures.len()), (1, 0, 1));
    assert_eq!(st.digests_seen, vec![hex::encode(other.as_bytes())]);
}

async fn expect_response_error(m: Misbehavior) -> (ResponseError, TestProvider) {
    let p = TestProvider::start().await;
    let c = client(&p);
    c.verify().await.unwrap();
    if m == Misbehavior::ReplayPreviousResponse {
        chat(&c, 16).await.unwrap();
    }
    p.set(m.clone());
    match chat(&c, 16).await {
        Err(ClientError::Response(e)) => (e, p),
        Err(e) => panic!("{m:?}: not a response error: {e}"),
        Ok((t, _)) => panic!("{m:?}: accepted: {t:?}"),
    }
}

#[tokio::test]
async fn a_flipped_ciphertext_bit_is_tampering() {
    for i in [0, 2, 4] {
        let (e, _) = expect_response_error(Misbehavior::FlipCiphertextBit(i)).await;
        assert!(
            matches!(e, ResponseError::Tampered { seq } if seq == i as u64),
            "{e}"
        );
        assert!(e.to_string().contains("does not authenticate"), "{e}");
    }
}

#[tokio::test]
async fn dropped_reordered_duplicated_chunks_are_caught() {
    let (e, _) = expect_response_error(Misbehavior::DropChunk(1)).await;
    assert!(
        matches!(
            e,
            ResponseError::Dropped {
                expected: 1,
                got: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("dropped or reordered"), "{e}");
    let (e, _) = expect_response_error(Misbehavior::SwapChunks(1, 2)).await;
    assert!(
        matches!(
            e,
            ResponseError::Dropped {
                expected: 1,
                got: 2
            }
        ),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::DuplicateChunk(1)).await;
    assert!(
        matches!(
            e,
            ResponseError::Replayed {
                expected: 2,
                got: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("replayed"), "{e}");
}

#[tokio::test]
async fn truncated_bodies_are_caught() {
    for m in [Misbehavior::DropLastChunk, Misbehavior::CutMidRecord] {
        let (e, _) = expect_response_error(m.clone()).await;
        assert!(
            matches!(e, ResponseError::Truncated { received: 4 }),
            "{m:?}: {e}"
        );
        assert!(
            e.to_string().contains("response truncated by the host"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn data_after_the_last_chunk_is_refused() {
    let (e, _) = expect_response_error(Misbehavior::AppendAfterLast).await;
    assert!(matches!(e, ResponseError::AfterLast), "{e}");
}

#[tokio::test]
async fn a_replayed_earlier_response_does_not_authenticate() {
    let (e, p) = expect_response_error(Misbehavior::ReplayPreviousResponse).await;
    // Chunk 0 of another response: other keys, other request id.
    assert!(matches!(e, ResponseError::Tampered { seq: 0 }), "{e}");
    assert_eq!(p.opened(), 1, "the replay never reached the enclave");
}

#[tokio::test]
async fn bad_receipts_are_caught() {
    let (e, _) = expect_response_error(Misbehavior::ForgeReceipt).await;
    assert!(
        matches!(e, ResponseError::Receipt(ReceiptProblem::BadSignature)),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("receipt signature does not verify with the attested key"),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::InflateSignedReceipt).await;
    assert!(
        matches!(e, ResponseError::Receipt(ReceiptProblem::BadSignature)),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::OverLimitTokens).await;
    assert!(
        matches!(
            e,
            ResponseError::Receipt(ReceiptProblem::TooManyTokens { max: 16, got: 21 })
        ),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::WrongRequestId).await;
    assert!(
        matches!(
            e,
            ResponseError::Receipt(ReceiptProblem::WrongRequest { .. })
        ),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::WrongAccount).await;
    assert!(
        matches!(
            e,
            ResponseError::Receipt(ReceiptProblem::WrongAccount { .. })
        ),
        "{e}"
    );
    let (e, _) = expect_response_error(Misbehavior::WrongModel).await;
    assert!(
        matches!(e, ResponseError::Receipt(ReceiptProblem::WrongModel { .. })),
        "{e}"
    );
    // Genuine signature, but prices the request did not accept.
    let (e, _) = expect_response_error(Misbehavior::Overcharge).await;
    assert!(
        matches!(e, ResponseError::Receipt(ReceiptProblem::WrongPrice(_))),
        "{e}"
    );
}

#[tokio::test]
async fn a_request_dearer_than_the_limit_is_not_sent() {
    let p = TestProvider::start().await;
    let mut o = ClientOptions::default();
    // "q" is a 1-byte prompt inside a small CBOR body; 16 completion tokens
    // at 300 alone are 4800.
    o.max_request_nanoton = Some(4_000);
    let c = Client::with_options(&p.url, sim_policy(), AccountKey::generate(&mut OsRng), o);
    let e = c.chat(MODEL, ask("q"), 16).await.unwrap_err();
    assert!(
        matches!(e, ClientError::OverPrice { limit: 4_000, .. }),
        "{e}"
    );
    assert_eq!(p.posts(), 0, "nothing was sent");
    let sheet = c.price_sheet(false).await.unwrap();
    let (price, m) = sheet.entry(&p.digest().0).unwrap().offer(MODEL).unwrap();
    assert_eq!((price, m), (PRICE, 1000));
}

/// A host that offers a base price other than the one the enclave's
/// verified claims bind (the provider's settings) gets no request: the
/// client would otherwise be charged prices it never saw attested.
#[tokio::test]
async fn a_sheet_price_the_claims_do_not_bind_is_refused() {
    let p = TestProvider::start().await;
    let c = client(&p);
    p.set(Misbehavior::SheetPriceNotClaimed);
    let e = c.chat(MODEL, ask("q"), 16).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Prices(r) if r.contains("verified claims")),
        "{e}"
    );
    assert_eq!(p.posts(), 0, "nothing was sent");
    // The honest sheet (a fresh client: the other holds the dishonest
    // sheet until it expires): served.
    p.set(Misbehavior::None);
    assert!(client(&p).chat(MODEL, ask("q"), 16).await.is_ok());
}

#[tokio::test]
async fn text_before_a_bad_end_is_delivered_then_the_error() {
    let p = TestProvider::start().await;
    let c = client(&p);
    p.set(Misbehavior::DropLastChunk);
    let mut s = c.chat(MODEL, ask("q"), 16).await.unwrap();
    let mut text = String::new();
    let err = loop {
        match s.next().await {
            Ok(Some(ResponsePart::Text(t))) => text.push_str(&t),
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(text, "The answer is 42. (you asked: q)");
    assert!(
        matches!(err, ResponseError::Truncated { received: 4 }),
        "{err}"
    );
    assert!(
        matches!(s.next().await, Err(ResponseError::Ended)),
        "a failed stream stays failed"
    );
}

#[tokio::test]
async fn an_enclave_error_is_reported_with_its_verified_receipt() {
    let p = TestProvider::start().await;
    let c = client(&p);
    p.set(Misbehavior::EnclaveError);
    let (text, done) = chat(&c, 16).await.unwrap();
    assert_eq!(text, "");
    assert_eq!(
        done.finish,
        FinishReason::Failed("the model backend failed".into())
    );
    assert_eq!(done.usage.completion_tokens, 0);
    let err = c
        .embeddings(EMBED_MODEL, vec!["x".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::EnclaveFailed { .. }), "{err}");
}

#[tokio::test]
async fn a_restarted_enclave_is_reverified_and_the_request_resealed_once() {
    let p = TestProvider::start().await;
    let c = client(&p);
    let before = c.verify().await.unwrap().enclaves()[0].evidence_digest();
    p.set(Misbehavior::RestartOnNextRequest);
    let (text, done) = chat(&c, 16).await.unwrap();
    assert!(text.starts_with("The answer is 42."));
    let after = p.digest();
    assert_ne!(before, after);
    assert_eq!(done.evidence_digest, after, "resealed to the new keys");
    assert_eq!(
        done.receipt.request_id, done.request_id,
        "the receipt names the resealed request"
    );
    assert_eq!(p.posts(), 2);
    assert_eq!(p.evidence_gets(), 2);
    assert_eq!(p.opened(), 1);
    let seen = p.state().digests_seen.clone();
    assert_eq!(
        seen,
        vec![
            hex::encode(before.as_bytes()),
            hex::encode(after.as_bytes())
        ]
    );
    assert_eq!(
        c.verified().await.unwrap().enclaves()[0].evidence_digest(),
        after
    );
}

#[tokio::test]
async fn a_conflict_for_evidence_still_published_is_not_resent() {
    // A 409 while the host still publishes the evidence the request was
    // sealed to is not a restart (it may be a replay refusal, or a lie to
    // make the client send and pay twice): re-verify, but do not resend.
    let p = TestProvider::start().await;
    let c = client(&p);
    c.verify().await.unwrap();
    p.set(Misbehavior::AlwaysConflict);
    let err = chat(&c, 16).await.unwrap_err();
    assert!(
        matches!(err, ClientError::EvidenceNotServed { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("evidence digest not served here"),
        "{err}"
    );
    assert_eq!(p.posts(), 1);
    assert_eq!(p.evidence_gets(), 2);
}

#[tokio::test]
async fn a_restart_that_swaps_in_unverifiable_evidence_stops_the_retry() {
    let p = TestProvider::start().await;
    let c = client(&p);
    c.verify().await.unwrap();
    // The enclave "restarts"; the evidence now served does not verify.
    p.restart();
    p.set(Misbehavior::SpliceClaims);
    let err = chat(&c, 16).await.unwrap_err();
    assert!(err.is_verification_failure(), "{err}");
    // The fresh price sheet no longer lists the old enclave (so nothing is
    // posted to it), and nothing is sent after the failed re-verification.
    assert_eq!(
        p.posts(),
        0,
        "nothing sent after the failed re-verification"
    );
    assert!(c.verified().await.is_none());
}

#[tokio::test]
async fn changed_evidence_is_picked_up_when_polled() {
    let p = TestProvider::start().await;
    let c = client_with(&p, sim_policy(), Duration::ZERO);
    chat(&c, 16).await.unwrap();
    p.restart();
    // The poll before the request sees the new evidence: no 409.
    let (_, done) = chat(&c, 16).await.unwrap();
    assert_eq!(done.evidence_digest, p.digest());
    assert_eq!(p.posts(), 2);
    assert_eq!(p.evidence_gets(), 2);

    // With a long interval the evidence is not fetched before each request.
    let p = TestProvider::start().await;
    let c = client(&p);
    for _ in 0..3 {
        chat(&c, 16).await.unwrap();
    }
    assert_eq!(p.evidence_gets(), 1);
}

#[tokio::test]
async fn rate_limits_are_typed_with_retry_after() {
    let p = TestProvider::start().await;
    let c = client(&p);
    p.set(Misbehavior::RateLimit);
    match chat(&c, 16).await.unwrap_err() {
        ClientError::RateLimited {
            reason,
            retry_after,
        } => {
            assert_eq!(
                reason,
                "rate limited: 10 requests per minute for this account"
            );
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn an_unknown_model_is_not_sent() {
    let p = TestProvider::start().await;
    let c = client(&p);
    let err = c.chat("gpt-9", ask("q"), 16).await.unwrap_err();
    match &err {
        ClientError::ModelNotServed { model, available } => {
            assert_eq!(model, "gpt-9");
            assert_eq!(available, &vec![MODEL.to_string(), EMBED_MODEL.to_string()]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(p.posts(), 0);
}

#[tokio::test]
async fn an_unreachable_provider_is_reported_as_such() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = Client::new(&url, sim_policy(), AccountKey::generate(&mut OsRng));
    let err = c.verify().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
}

#[tokio::test]
async fn the_ledger_is_verified_and_must_be_ours() {
    let p = TestProvider::start().await;
    let c = client(&p);
    chat(&c, 16).await.unwrap();
    c.embeddings(EMBED_MODEL, vec!["x".into()]).await.unwrap();
    // Another account's traffic on the same provider.
    let other = client(&p);
    chat(&other, 16).await.unwrap();

    let mine = c.receipts(0, 10).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(
        mine.iter().map(|r| r.ledger_seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(mine
        .iter()
        .all(|r| r.receipt.client_account == c.account_id().0));
    assert!(mine.iter().all(|r| r.key_in_current_evidence));
    assert_eq!(mine[1].receipt.model, EMBED_MODEL);
    assert_eq!(c.receipts(1, 10).await.unwrap().len(), 1);

    p.set(Misbehavior::LedgerForeignReceipt);
    let err = c.receipts(0, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::BadLedgerReceipt {
                ledger_seq: 3,
                problem: ReceiptProblem::WrongAccount { .. }
            }
        ),
        "{err}"
    );
    p.set(Misbehavior::LedgerForgedReceipt);
    let err = c.receipts(0, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::BadLedgerReceipt {
                ledger_seq: 2,
                problem: ReceiptProblem::BadSignature
            }
        ),
        "{err}"
    );

    // After a restart the old receipts still verify, with keys no longer in
    // the evidence.
    p.set(Misbehavior::None);
    p.restart();
    c.verify().await.unwrap();
    let mine = c.receipts(0, 10).await.unwrap();
    assert!(mine.iter().all(|r| !r.key_in_current_evidence));
}
