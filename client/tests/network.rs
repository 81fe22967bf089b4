//! The network client over in-test providers (`support`): verification of
//! every provider, routing by the documented rule, failover with
//! re-sealing, and no restart of an answer that already started.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cocoon_client::network::directory::{DirectoryOptions, ProviderDirectory, StaticProviders};
use cocoon_client::network::router::{ProviderId, Rng, RouteConfig};
use cocoon_client::network::stats::Health;
use cocoon_client::{ClientOptions, NetworkClient, NetworkError};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::UnitPrice;
use support::*;

fn ask() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: "what is the answer".into(),
    }]
}

fn network(urls: Vec<String>, seed: u64) -> NetworkClient {
    network_with(urls, seed, ClientOptions::default())
}

fn network_with(urls: Vec<String>, seed: u64, options: ClientOptions) -> NetworkClient {
    let mut route = RouteConfig::default();
    // Short ejections, so a test sees a provider come back.
    route.stats.base_backoff = Duration::from_millis(100);
    let source = Arc::new(StaticProviders::new(urls, sim_policy()));
    let dir = ProviderDirectory::new(
        source,
        AccountKey::generate(&mut OsRng),
        options,
        DirectoryOptions::default(),
    );
    NetworkClient::with_rng(Arc::new(dir), route, Rng::seeded(seed))
}

fn id(p: &TestProvider) -> ProviderId {
    ProviderId(p.url.clone())
}

const HALF: UnitPrice = UnitPrice {
    prompt: PRICE.prompt / 2,
    cached: PRICE.cached / 2,
    completion: PRICE.completion / 2,
};

/// One provider cheaper, one slower (injected latency): the share each
/// gets follows the rule. Before each request the test asks the client
/// for the rule's probabilities (from the statistics as they are then);
/// their sum over the run is the expected count of each provider, and the
/// observed counts must be within sampling error of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choices_follow_the_rule_cheaper_and_slower() {
    let base = TestProvider::start_priced(PRICE, Duration::from_millis(15)).await;
    let cheap = TestProvider::start_priced(HALF, Duration::from_millis(15)).await;
    let slow = TestProvider::start_priced(PRICE, Duration::from_millis(60)).await;
    let net = network(
        vec![base.url.clone(), cheap.url.clone(), slow.url.clone()],
        11,
    );
    let set = net.refresh().await.unwrap();
    assert_eq!(set.providers.len(), 3, "{:?}", set.rejected);
    let names = [
        (id(&base), "base"),
        (id(&cheap), "cheaper"),
        (id(&slow), "slower"),
    ];
    let n = 200;
    let mut expected = [0.0f64; 3];
    let mut observed = [0usize; 3];
    for _ in 0..n {
        let shares = net.choice_shares(MODEL, &ask(), 16);
        for (pid, p) in shares {
            let k = names.iter().position(|(i, _)| *i == pid).unwrap();
            expected[k] += p;
        }
        let routed = net.chat(MODEL, ask(), 16).await.unwrap();
        let k = names
            .iter()
            .position(|(i, _)| *i == routed.provider)
            .unwrap();
        observed[k] += 1;
        routed.value.collect_text().await.unwrap();
    }
    let final_shares = net.choice_shares(MODEL, &ask(), 16);
    println!("routing shares over {n} requests (base: price 1x, latency 15 ms; cheaper: price 0.5x; slower: latency 60 ms):");
    for (k, (_, name)) in names.iter().enumerate() {
        let st = net
            .status()
            .into_iter()
            .find(|s| s.id == names[k].0)
            .unwrap();
        println!(
            "  {name:8} observed {:.3}  rule {:.3}  (p50 {:?}, {} ok)  final rule share {:.3}",
            observed[k] as f64 / n as f64,
            expected[k] / n as f64,
            st.stats.p50,
            st.stats.total_successes,
            final_shares
                .iter()
                .find(|(i, _)| *i == names[k].0)
                .unwrap()
                .1
        );
    }
    for k in 0..3 {
        // A sum of independent Bernoulli draws: variance at most n/4.
        let sd = (expected[k] * (1.0 - expected[k] / n as f64))
            .sqrt()
            .max(1.0);
        let diff = (observed[k] as f64 - expected[k]).abs();
        assert!(
            diff <= 4.0 * sd,
            "{}: observed {} vs expected {:.1} (sd {sd:.1})",
            names[k].1,
            observed[k],
            expected[k]
        );
    }
    assert!(
        observed[1] > observed[0] && observed[0] > observed[2],
        "{observed:?}"
    );
}

/// A provider that is down, answers 5xx, or 409s without reason: the
/// request is sealed anew to another provider's enclave and succeeds
/// there; the failures eject the bad provider.
#[tokio::test]
async fn fails_over_and_reseals() {
    let good = TestProvider::start().await;
    let bad = TestProvider::start().await;
    let net = network(vec![good.url.clone(), bad.url.clone()], 5);
    net.refresh().await.unwrap();
    for m in [
        Misbehavior::Status(503),
        Misbehavior::Status(500),
        Misbehavior::AlwaysConflict,
    ] {
        bad.set(m.clone());
        let mut seen_bad = false;
        // Its weight drops with each failure, so the third consecutive one
        // may take a while to come.
        for _ in 0..200 {
            let routed = net.chat(MODEL, ask(), 16).await.unwrap();
            assert_eq!(routed.provider, id(&good), "{m:?}");
            if !routed.failed.is_empty() {
                assert_eq!(routed.failed[0].0, id(&bad));
                seen_bad = true;
            }
            routed.value.collect_text().await.unwrap();
            if matches!(net_health(&net, &id(&bad)), Health::Ejected(_)) {
                break;
            }
        }
        assert!(seen_bad, "{m:?}: the bad provider was never tried");
        assert!(
            matches!(net_health(&net, &id(&bad)), Health::Ejected(_)),
            "{m:?}: not ejected"
        );
        // Every request the good provider got was sealed to its own
        // enclave and opened there.
        {
            let st = good.state();
            assert!(st.open_failures.is_empty(), "{:?}", st.open_failures);
            let own = hex::encode(st.enclave.digest().as_bytes());
            assert!(st.digests_seen.iter().all(|d| *d == own));
        }
        // Start the next case afresh.
        net.refresh().await.unwrap();
        bad.set(Misbehavior::None);
        wait_readmitted(&net, &bad).await;
    }
    // Down: its server is gone.
    let bad_url = bad.url.clone();
    drop(bad);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..6 {
        let routed = net.chat(MODEL, ask(), 16).await.unwrap();
        assert_eq!(routed.provider, id(&good));
        for (p, e) in &routed.failed {
            assert_eq!(p.0, bad_url);
            assert!(
                e.is_unreachable() || matches!(e, cocoon_client::ClientError::Http { .. }),
                "{e}"
            );
        }
        routed.value.collect_text().await.unwrap();
    }
}

fn net_health(net: &NetworkClient, pid: &ProviderId) -> Health {
    net.status()
        .into_iter()
        .find(|s| s.id == *pid)
        .map(|s| s.health)
        .unwrap()
}

/// Drive requests until `bad` is chosen and succeeds again (after its
/// ejection ran out), so that each case starts with both admitted.
async fn wait_readmitted(net: &NetworkClient, bad: &TestProvider) {
    for _ in 0..400 {
        if net_health(net, &id(bad)) == Health::Admitted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = net.chat(MODEL, ask(), 16).await.unwrap();
        r.value.collect_text().await.unwrap();
    }
    panic!("the provider was not readmitted");
}

/// 402 (no deposit there): another provider takes it; the first is held,
/// not counted as failing. 400: the caller's error, not retried.
#[tokio::test]
async fn no_deposit_moves_on_and_bad_request_stops() {
    let a = TestProvider::start().await;
    let b = TestProvider::start().await;
    let net = network(vec![a.url.clone(), b.url.clone()], 3);
    net.refresh().await.unwrap();
    a.set(Misbehavior::Status(402));
    for _ in 0..5 {
        let routed = net.chat(MODEL, ask(), 16).await.unwrap();
        assert_eq!(routed.provider, id(&b));
        routed.value.collect_text().await.unwrap();
    }
    assert!(matches!(net_health(&net, &id(&a)), Health::Held(_)));
    let st = net.status();
    let sa = st.iter().find(|s| s.id == id(&a)).unwrap();
    assert_eq!(sa.stats.total_failures, 0);
    assert!(a.posts() <= 1, "held after its 402: {} posts", a.posts());

    b.set(Misbehavior::Status(400));
    let posts_a = a.posts();
    match net.chat(MODEL, ask(), 16).await {
        Err(NetworkError::Refused { provider, source }) => {
            assert_eq!(provider, id(&b));
            assert!(source.to_string().contains("400"), "{source}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(a.posts(), posts_a, "a 400 is not retried elsewhere");
}

/// An answer that breaks after it started is the caller's error and is
/// never sent again elsewhere (it may be billed).
#[tokio::test]
async fn broken_stream_is_reported_not_restarted() {
    let a = TestProvider::start().await;
    let b = TestProvider::start().await;
    let net = network(vec![a.url.clone(), b.url.clone()], 9);
    net.refresh().await.unwrap();
    a.set(Misbehavior::CutMidRecord);
    b.set(Misbehavior::CutMidRecord);
    let routed = net.chat(MODEL, ask(), 16).await.unwrap();
    let served_by = routed.provider.clone();
    let posts_before = a.posts() + b.posts();
    assert!(routed.value.collect_text().await.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.posts() + b.posts(), posts_before, "nothing was resent");
    let s = net
        .status()
        .into_iter()
        .find(|s| s.id == served_by)
        .unwrap();
    assert_eq!(s.stats.total_failures, 1);
    // Embeddings: the same, through the NetworkError.
    a.set(Misbehavior::DropLastChunk);
    b.set(Misbehavior::DropLastChunk);
    let posts_before = a.posts() + b.posts();
    match net.embeddings(EMBED_MODEL, vec!["x".into()]).await {
        Err(NetworkError::AnswerFailed { .. }) => {}
        other => panic!("expected AnswerFailed, got {other:?}"),
    }
    assert_eq!(a.posts() + b.posts(), posts_before + 1);
}

/// A provider whose evidence does not verify is left out at refresh, with
/// the reason; one over the price limit is not a candidate.
#[tokio::test]
async fn unverified_and_over_limit_providers_are_not_used() {
    let good = TestProvider::start().await;
    let forged = TestProvider::start().await;
    forged.set(Misbehavior::SpliceClaims);
    let dear = TestProvider::start_priced(
        UnitPrice {
            prompt: PRICE.prompt * 100,
            cached: PRICE.cached * 100,
            completion: PRICE.completion * 100,
        },
        Duration::from_millis(2),
    )
    .await;
    let mut options = ClientOptions::default();
    // Above the good provider's worst case for 16 tokens, far below the
    // dear one's.
    options.max_request_nanoton = Some(2_000_000);
    let net = network_with(
        vec![good.url.clone(), forged.url.clone(), dear.url.clone()],
        1,
        options,
    );
    let set = net.refresh().await.unwrap();
    assert_eq!(set.providers.len(), 2);
    assert_eq!(set.rejected.len(), 1);
    assert_eq!(set.rejected[0].0, id(&forged));
    for _ in 0..10 {
        let routed = net.chat(MODEL, ask(), 16).await.unwrap();
        assert_eq!(routed.provider, id(&good));
        routed.value.collect_text().await.unwrap();
    }
    assert_eq!(forged.posts() + dear.posts(), 0);
    let shares = net.choice_shares(MODEL, &ask(), 16);
    assert_eq!(shares, vec![(id(&good), 1.0)]);
}

/// Statistics survive a refresh; a provider gone from the source is
/// dropped with its statistics.
#[tokio::test]
async fn stats_survive_refresh() {
    let a = TestProvider::start().await;
    let net = network(vec![a.url.clone()], 2);
    net.refresh().await.unwrap();
    for _ in 0..3 {
        net.chat(MODEL, ask(), 16)
            .await
            .unwrap()
            .value
            .collect_text()
            .await
            .unwrap();
    }
    net.refresh().await.unwrap();
    let s = &net.status()[0];
    assert_eq!(s.stats.total_successes, 3);
    assert!(s.stats.p50.is_some());
}
