//! The network client with trust from the registry: providers and active
//! releases read through a `ChainClient`, each provider's release manifest
//! checked against the registry, enclaves accepted only under an active
//! release, revocation and deregistration seen at the next refresh, and
//! the chain reads a client makes.
//!
//! The chain here is `FakeRegistryChain`, A TEST DOUBLE: an in-memory
//! `ChainClient` that answers `get_releases` / `get_providers` with
//! dictionaries built the way the registry contract stores them (TL-B
//! `HashmapE 256`), parsed by the real `protocol::registry` parsers. The
//! end-to-end test over the sandbox-backed chain API and the real registry
//! contract lives in `tests/`.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cocoon_chain::{
    AccountState, AccountStatus, ChainClient, ChainError, StackValue, Transaction, TransactionId,
};
use cocoon_client::network::directory::{DirectoryOptions, ProviderDirectory};
use cocoon_client::network::registry::RegistrySource;
use cocoon_client::network::router::{Rng, RouteConfig};
use cocoon_client::{ClientOptions, NetworkClient};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::registry::{add_release_body, endpoint_cell};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{Cell, CellBuilder};
use cocoon_verifier::policy::derive::LocalRules;
use cocoon_verifier::policy::Check;
use support::*;

/// A release whose only measurement is the simulated `measurement`.
/// Canonical bytes, hash and measurement digests of a release manifest.
type Manifest = (Vec<u8>, [u8; 32], Vec<(u8, [u8; 32])>);

fn manifest(name: &str, measurement: [u8; 48]) -> Manifest {
    let m = cocoon_test_kit::simulated::release_manifest(name, MODEL, measurement);
    (
        m.to_canonical().unwrap(),
        m.manifest_hash().unwrap(),
        m.measurement_digests(),
    )
}

#[derive(Clone)]
struct ReleaseRow {
    hash: [u8; 32],
    revoked_at: u32,
    measurements: Vec<(u8, [u8; 32])>,
}

#[derive(Clone)]
struct ProviderRow {
    owner: [u8; 32],
    payment: ContractAddress,
    endpoint: String,
}

/// A TEST DOUBLE of the chain: the registry's two dictionaries in memory,
/// and a count of every read.
#[derive(Default)]
struct FakeRegistryChain {
    releases: Mutex<Vec<ReleaseRow>>,
    providers: Mutex<Vec<ProviderRow>>,
    code: Mutex<Vec<u8>>,
    reads: AtomicU64,
}

fn bit(k: &[u8; 32], i: usize) -> u128 {
    u128::from((k[i / 8] >> (7 - i % 8)) & 1)
}

/// `Hashmap m X` over 256-bit keys, every label `hml_long` (TL-B of
/// block.tlb; any label form is valid, the parser must take each).
fn edge(entries: &[([u8; 32], Cell)], offset: usize, m: usize) -> Cell {
    let first = &entries[0].0;
    let mut l = 0;
    while l < m
        && entries
            .iter()
            .all(|(k, _)| bit(k, offset + l) == bit(first, offset + l))
    {
        l += 1;
    }
    let mut b = CellBuilder::new();
    let len_bits = (usize::BITS - m.leading_zeros()) as usize;
    b.store_uint(0b10, 2).unwrap();
    b.store_uint(l as u128, len_bits).unwrap();
    for i in 0..l {
        b.store_uint(bit(first, offset + i), 1).unwrap();
    }
    if l == m {
        let v = &entries[0].1;
        b.store_bits(v.data(), v.bit_len()).unwrap();
        for r in v.refs() {
            b.store_ref(r.clone()).unwrap();
        }
    } else {
        let at = offset + l;
        let (left, right): (Vec<_>, Vec<_>) =
            entries.iter().cloned().partition(|(k, _)| bit(k, at) == 0);
        b.store_ref(edge(&left, at + 1, m - l - 1)).unwrap();
        b.store_ref(edge(&right, at + 1, m - l - 1)).unwrap();
    }
    b.build()
}

fn dict(mut entries: Vec<([u8; 32], Cell)>) -> StackValue {
    if entries.is_empty() {
        return StackValue::Null;
    }
    entries.sort_by_key(|a| a.0);
    StackValue::Cell(edge(&entries, 0, 256).to_boc())
}

impl FakeRegistryChain {
    fn releases_dict(&self) -> StackValue {
        let rows = self.releases.lock().unwrap().clone();
        dict(
            rows.into_iter()
                .map(|r| {
                    let body = add_release_body(0, &r.hash, &r.measurements).unwrap();
                    let mut v = CellBuilder::new();
                    v.store_uint(if r.revoked_at == 0 { 1 } else { 2 }, 2)
                        .unwrap()
                        .store_uint(1_795_000_000, 32)
                        .unwrap()
                        .store_uint(u128::from(r.revoked_at), 32)
                        .unwrap()
                        .store_maybe_ref(Some(body.refs()[0].clone()))
                        .unwrap();
                    (r.hash, v.build())
                })
                .collect(),
        )
    }

    fn providers_dict(&self) -> StackValue {
        let rows = self.providers.lock().unwrap().clone();
        dict(
            rows.into_iter()
                .map(|p| {
                    let mut v = CellBuilder::new();
                    v.store_address(Some(&p.payment))
                        .unwrap()
                        .store_ref(endpoint_cell(&p.endpoint).unwrap())
                        .unwrap()
                        .store_uint(1_795_000_000, 32)
                        .unwrap()
                        .store_uint(1_795_000_000, 32)
                        .unwrap()
                        .store_coins(1_000_000_000)
                        .unwrap();
                    (p.owner, v.build())
                })
                .collect(),
        )
    }
}

#[async_trait::async_trait]
impl ChainClient for FakeRegistryChain {
    async fn account_state(&self, _: &ContractAddress) -> Result<AccountState, ChainError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(AccountState {
            balance: 1,
            status: AccountStatus::Active,
            code: Some(self.code.lock().unwrap().clone()),
            data: None,
            last_transaction: None,
        })
    }

    async fn run_get_method(
        &self,
        address: &ContractAddress,
        method: &str,
        _: &[StackValue],
    ) -> Result<Vec<StackValue>, ChainError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        match method {
            "get_releases" => Ok(vec![self.releases_dict()]),
            "get_providers" => Ok(vec![self.providers_dict()]),
            _ => Err(ChainError::GetMethodFailed {
                address: *address,
                method: method.into(),
                exit_code: 11,
            }),
        }
    }

    async fn send_message(&self, _: &[u8]) -> Result<[u8; 32], ChainError> {
        unreachable!("the client only reads the registry")
    }

    async fn transactions(
        &self,
        _: &ContractAddress,
        _: u32,
        _: Option<TransactionId>,
    ) -> Result<Vec<Transaction>, ChainError> {
        unreachable!("the client only reads the registry")
    }
}

const REGISTRY: ContractAddress = ContractAddress {
    workchain: 0,
    hash: [0xee; 32],
};

fn rules() -> LocalRules {
    LocalRules {
        allow_simulated: true,
        // The in-test enclaves' evidence is dated 1970.
        max_evidence_age: Check::Skip,
        ..LocalRules::default()
    }
}

fn network(chain: Arc<FakeRegistryChain>, pin: Option<[u8; 32]>) -> NetworkClient {
    let source = Arc::new(RegistrySource::new(chain, REGISTRY, pin, rules()));
    let dir = ProviderDirectory::new(
        source,
        AccountKey::generate(&mut OsRng),
        ClientOptions::default(),
        DirectoryOptions::default(),
    );
    NetworkClient::with_rng(Arc::new(dir), RouteConfig::default(), Rng::seeded(4))
}

fn ask() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: "hello".into(),
    }]
}

async fn register(chain: &FakeRegistryChain, n: u8, p: &TestProvider) {
    chain.providers.lock().unwrap().push(ProviderRow {
        owner: [n; 32],
        payment: ContractAddress {
            workchain: 0,
            hash: [n + 100; 32],
        },
        endpoint: p.url.clone(),
    });
}

#[tokio::test]
async fn registry_releases_decide_which_providers_are_used() {
    let (m1, h1, d1) = manifest("release-one", MEASUREMENT);
    // Another release, whose measurement no in-test enclave has.
    let (m2, h2, d2) = manifest("release-two", [0x77; 48]);
    // A release not in the registry at all.
    let (m3, _, _) = manifest("release-unlisted", MEASUREMENT);
    let chain = Arc::new(FakeRegistryChain::default());
    chain.releases.lock().unwrap().extend([
        ReleaseRow {
            hash: h1,
            revoked_at: 0,
            measurements: d1,
        },
        ReleaseRow {
            hash: h2,
            revoked_at: 0,
            measurements: d2,
        },
    ]);
    let a = TestProvider::start().await;
    let b = TestProvider::start().await;
    let wrong_enclave = TestProvider::start().await;
    let unlisted = TestProvider::start().await;
    a.state().release = Some(m1.clone());
    b.state().release = Some(m1.clone());
    wrong_enclave.state().release = Some(m2);
    unlisted.state().release = Some(m3);
    for (n, p) in [(1, &a), (2, &b), (3, &wrong_enclave), (4, &unlisted)] {
        register(&chain, n, p).await;
    }
    let net = network(chain.clone(), None);
    let set = net.refresh().await.unwrap();
    let mut ok: Vec<String> = set.providers.iter().map(|p| p.endpoint.clone()).collect();
    ok.sort();
    let mut want = vec![a.url.clone(), b.url.clone()];
    want.sort();
    assert_eq!(ok, want, "left out: {:?}", set.rejected);
    let why: Vec<String> = set.rejected.iter().map(|(_, w)| w.clone()).collect();
    assert!(
        why.iter()
            .any(|w| w.contains("not one of an active release") || w.contains("measurement")),
        "{why:?}"
    );
    assert!(why.iter().any(|w| w.contains("does not list")), "{why:?}");
    assert!(set.providers.iter().all(|p| p.release == Some(h1)));
    for _ in 0..6 {
        let r = net.chat(MODEL, ask(), 8).await.unwrap();
        r.value.collect_text().await.unwrap();
    }
    assert_eq!(wrong_enclave.posts() + unlisted.posts(), 0);

    // Deregistration: b disappears at the next refresh.
    chain
        .providers
        .lock()
        .unwrap()
        .retain(|p| p.owner != [2; 32]);
    let set = net.refresh().await.unwrap();
    assert_eq!(set.providers.len(), 1);
    assert_eq!(set.providers[0].endpoint, a.url);

    // Revocation: nothing of release one is used after the refresh.
    chain.releases.lock().unwrap()[0].revoked_at = 1_795_000_100;
    let set = net.refresh().await.unwrap();
    assert!(set.providers.is_empty());
    assert!(set
        .rejected
        .iter()
        .any(|(_, w)| w.contains("revoked in the registry")));
    let posts = a.posts();
    assert!(net.chat(MODEL, ask(), 8).await.is_err());
    assert_eq!(a.posts(), posts);
}

#[tokio::test]
async fn pinned_code_hash_and_chain_reads() {
    let (m1, h1, d1) = manifest("release-one", MEASUREMENT);
    let chain = Arc::new(FakeRegistryChain::default());
    chain.releases.lock().unwrap().push(ReleaseRow {
        hash: h1,
        revoked_at: 0,
        measurements: d1,
    });
    let a = TestProvider::start().await;
    a.state().release = Some(m1);
    register(&chain, 1, &a).await;
    let code = {
        let mut b = CellBuilder::new();
        b.store_uint(0xc0de, 16).unwrap();
        b.build()
    };
    *chain.code.lock().unwrap() = code.to_boc();

    // The wrong pin: the registry is refused and nothing is used.
    let net = network(chain.clone(), Some([0; 32]));
    let e = net.refresh().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("not the registry this client trusts"),
        "{e}"
    );

    // The right pin: reads per refresh are fixed, whatever the providers.
    let net = network(chain.clone(), Some(code.hash()));
    let before = chain.reads.load(Ordering::Relaxed);
    let refreshes = 5;
    for _ in 0..refreshes {
        let set = net.refresh().await.unwrap();
        assert_eq!(set.providers.len(), 1);
        // Requests read nothing from the chain.
        for _ in 0..3 {
            net.chat(MODEL, ask(), 8)
                .await
                .unwrap()
                .value
                .collect_text()
                .await
                .unwrap();
        }
    }
    let per_refresh = (chain.reads.load(Ordering::Relaxed) - before) as f64 / refreshes as f64;
    let refresh = DirectoryOptions::default().refresh;
    println!(
        "FIGURE chain reads per client at steady state: {per_refresh} per refresh (account state for the code pin, get_releases, get_providers; none per request or per provider) = {:.1} per minute at the default refresh of {} s",
        per_refresh * 60.0 / refresh.as_secs_f64(),
        refresh.as_secs()
    );
    assert_eq!(per_refresh, 3.0);
}
