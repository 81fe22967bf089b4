//! Figures of the network client, printed (ratios and times, no timed
//! assertions): start-up time to a verified set of 3 and of 100
//! providers on loopback, and the per-request routing overhead (a routed
//! request's time over a direct request's to the same provider, same
//! run).
//!
//! The providers are the in-test providers of `support` (the host agent's
//! HTTP API over a simulated enclave that signs simulated TEE reports),
//! NOT the real host agent: the figures measure the client's side
//! (fetching, verifying, routing), on loopback.
//!
//! `cargo test -p cocoon-client --test network_figures -- --nocapture`

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_client::network::directory::{DirectoryOptions, ProviderDirectory, StaticProviders};
use cocoon_client::network::router::{Rng, RouteConfig};
use cocoon_client::{Client, ClientOptions, NetworkClient};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::rand_core::OsRng;
use support::*;

fn network(urls: Vec<String>, account: AccountKey) -> NetworkClient {
    let source = Arc::new(StaticProviders::new(urls, sim_policy()));
    let dir = ProviderDirectory::new(
        source,
        account,
        ClientOptions::default(),
        DirectoryOptions::default(),
    );
    NetworkClient::with_rng(Arc::new(dir), RouteConfig::default(), Rng::seeded(1))
}

fn ask() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: "what is the answer".into(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_time_3_and_100_providers() {
    let mut providers = Vec::new();
    for _ in 0..100 {
        providers.push(TestProvider::start_priced(PRICE, Duration::ZERO).await);
    }
    for n in [3usize, 100] {
        let urls: Vec<String> = providers[..n].iter().map(|p| p.url.clone()).collect();
        let mut times = Vec::new();
        for _ in 0..3 {
            let net = network(urls.clone(), AccountKey::generate(&mut OsRng));
            let t = Instant::now();
            let set = net.refresh().await.unwrap();
            times.push(t.elapsed());
            assert_eq!(set.providers.len(), n, "{:?}", set.rejected);
        }
        times.sort();
        println!(
            "FIGURE start-up to a verified set of {n} providers (loopback, in-test simulated-TEE providers, concurrency 16): median {:.1} ms (runs {:?})",
            times[1].as_secs_f64() * 1000.0,
            times.iter().map(|t| format!("{:.1} ms", t.as_secs_f64() * 1000.0)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_overhead_ratio() {
    let p = TestProvider::start_priced(PRICE, Duration::ZERO).await;
    let others = [
        TestProvider::start_priced(PRICE, Duration::ZERO).await,
        TestProvider::start_priced(PRICE, Duration::ZERO).await,
    ];
    let account = AccountKey::generate(&mut OsRng);
    let direct = Client::new(&p.url, sim_policy(), account.clone());
    direct.verify().await.unwrap();
    // The network has three providers; only the requests it sends to `p`
    // are compared with the direct ones.
    let net = network(
        vec![p.url.clone(), others[0].url.clone(), others[1].url.clone()],
        account,
    );
    net.refresh().await.unwrap();
    // Warm both paths (connections, price sheets).
    for _ in 0..5 {
        direct
            .chat(MODEL, ask(), 8)
            .await
            .unwrap()
            .collect_text()
            .await
            .unwrap();
        net.chat(MODEL, ask(), 8)
            .await
            .unwrap()
            .value
            .collect_text()
            .await
            .unwrap();
    }
    let rounds = 150;
    let (mut d, mut r) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        for k in 0..2 {
            if (i + k) % 2 == 0 {
                let t = Instant::now();
                direct
                    .chat(MODEL, ask(), 8)
                    .await
                    .unwrap()
                    .collect_text()
                    .await
                    .unwrap();
                d.push(t.elapsed());
            } else {
                let t = Instant::now();
                let routed = net.chat(MODEL, ask(), 8).await.unwrap();
                let to_p = routed.provider.0 == p.url;
                routed.value.collect_text().await.unwrap();
                if to_p {
                    r.push(t.elapsed());
                }
            }
        }
    }
    d.sort();
    r.sort();
    let ms = |v: &Vec<Duration>, q: usize| v[(v.len() - 1) * q / 100].as_secs_f64() * 1000.0;
    let nr = r.len();
    println!(
        "FIGURE per-request routing overhead (loopback, same provider, same run; chat, 8 tokens): direct median {:.3} ms (p90 {:.3}), routed median {:.3} ms (p90 {:.3}) over {nr} routed requests; ratio of medians {:.3}",
        ms(&d, 50),
        ms(&d, 90),
        ms(&r, 50),
        ms(&r, 90),
        ms(&r, 50) / ms(&d, 50)
    );
    assert!(nr > 0);
}
