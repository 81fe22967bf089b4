//! The network, end to end with real processes: the sandbox-backed chain
//! API (`contracts/scripts/chain-api.mjs`, A TEST DOUBLE, NOT A TON
//! NETWORK), the registry deployed and governed with `cocoon-registry`,
//! providers that are each a `cocoon-host` with its `cocoon-enclave` on the
//! simulated TEE, their payment contracts deployed with `cocoon-registry
//! deploy-payment` and registered with `cocoon-host register`, clients
//! that deposit (`cocoon-client deposit`, and wallet messages built with
//! the SDK's bodies), discover, verify and route (`NetworkClient` over
//! `RegistrySource`), and `cocoon-host settle --send` paying on chain.
//!
//! * [`network_end_to_end`]: three providers with their own releases,
//!   prices and payment contracts, and a fourth whose release the
//!   registry does not list (never used); one provider killed while the
//!   clients send (every request that had not started streaming succeeds
//!   elsewhere, none billed twice); one release revoked (its provider is
//!   dropped within the refresh interval); a client that never deposited
//!   gets 402 from every host; settlement pays each provider and the
//!   treasury to the nanoton, and a rerun pays nothing. Prints the
//!   start-up time to a verified set and the chain reads per minute.
//! * [`two_host_agents_of_one_provider`]: one provider's two host agents
//!   behind one registered URL, a round-robin TCP balancer (a test
//!   stand-in for an ordinary load balancer); each agent settles its own
//!   ledger, each paid once.
//! * [`routing_follows_the_documented_rule`]: one provider cheaper, one
//!   slower (latency injected by a delaying TCP relay in front of it); the
//!   shares of the client's choices are printed beside the rule's.
//!
//! Needs Node.js and `contracts/node_modules` (`scripts/ton-deps.sh`):
//! skipped with a message without them, a failure under CI (`CI` set).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_chain::wallet::{load_key, InternalMessage, WalletV4};
use cocoon_chain::{ChainApiConfig, ChainClient, StackValue, TonHttpClient};
use cocoon_client::network::directory::{DirectoryOptions, ProviderDirectory};
use cocoon_client::network::registry::RegistrySource;
use cocoon_client::network::router::{ProviderId, RouteConfig};
use cocoon_client::{Client, ClientError, ClientOptions, NetworkClient, NetworkError};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::release::ReleaseManifest;
use cocoon_protocol::settlement::{ContractAddress, DepositOwner};
use cocoon_test_kit::chain::SandboxChain;
use cocoon_test_kit::procs::{bin, TempDir};
use cocoon_verifier::policy::derive::LocalRules;
use cocoon_verifier::policy::Check;
use common::*;

const MODEL: &str = "cocoon-deterministic-test";
const TON: u128 = 1_000_000_000;
const FEE_BPS: u16 = 250;
/// How often the clients re-read the registry in these tests.
const REFRESH: Duration = Duration::from_secs(3);

/// The tests share two cores with everything else: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A key file of mode 0600 holding `seed` (a wallet's ed25519 seed).
fn wallet_key(dir: &TempDir, name: &str, seed: u8) -> (PathBuf, WalletV4) {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.write(name, hex::encode([seed; 32]));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = load_key(&p).unwrap();
    (p, WalletV4::new(key.verifying_key().to_bytes()))
}

/// The enclave config of a provider: its prices are part of the measured
/// config, so each price list is its own simulated measurement.
fn enclave_config(prompt: u64, completion: u64, reply_tokens: u32) -> String {
    format!(
        "image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = {reply_tokens}\nmax_concurrent = 64\n[prices.\"{MODEL}\"]\nprompt = {prompt}\ncompletion = {completion}\n"
    )
}

/// What the simulated TEE reports for an enclave started with this config
/// (SHA-384 of the enclave binary and the canonical config).
fn simulated_measurement(config_text: &str) -> [u8; 48] {
    let exe = std::fs::read(bin("cocoon-enclave")).unwrap();
    let config = cocoon_enclave::EnclaveConfig::from_toml(config_text).unwrap();
    cocoon_enclave::attest::simulated_measurement(&exe, config.to_canonical_toml().as_bytes())
}

/// A release of the simulated TEE whose only measurement is `measurement`.
fn manifest(name: &str, measurement: [u8; 48]) -> ReleaseManifest {
    cocoon_test_kit::simulated::release_manifest(name, MODEL, measurement)
}

/// The chain, the registry and its owner.
struct Network {
    chain: SandboxChain,
    dir: TempDir,
    /// The test's own reader (no rate limit).
    api: Arc<TonHttpClient>,
    registry: String,
    owner_key: PathBuf,
    treasury: ContractAddress,
    rt: tokio::runtime::Runtime,
}

impl Network {
    /// The chain double and a registry deployed by `cocoon-registry`.
    fn start(tag: &str) -> Option<Network> {
        let chain = SandboxChain::start_or_skip(&SandboxChain::contracts_dir())?;
        let dir = TempDir::new(tag);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = ChainApiConfig::new(chain.endpoint.clone());
        cfg.requests_per_second = 0.0;
        let api = Arc::new(TonHttpClient::new(cfg).unwrap());
        let (owner_key, owner) = wallet_key(&dir, "owner.key", 1);
        let (_, treasury) = wallet_key(&dir, "treasury.key", 2);
        chain.fund(&owner.address().to_string(), 10 * TON);
        let mut net = Network {
            chain,
            dir,
            api,
            registry: String::new(),
            owner_key,
            treasury: treasury.address(),
            rt,
        };
        let d = net.tool(&[
            "deploy",
            "--wallet-key",
            s(&net.owner_key.clone()),
            "--treasury",
            &net.treasury.to_string(),
            "--fee-bps",
            &FEE_BPS.to_string(),
            "--stake",
            &TON.to_string(),
        ]);
        net.registry = d["registry"].as_str().unwrap().to_string();
        eprintln!("registry deployed by cocoon-registry at {}", net.registry);
        Some(net)
    }

    /// `cocoon-registry ARGS --json`, which must succeed.
    fn tool(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = run(Command::new(bin("cocoon-registry"))
            .args(["--chain-api", &self.chain.endpoint, "--chain-api-rps", "0"])
            .args(["--wait-secs", "30", "--json"])
            .args(args));
        assert_eq!(code, 0, "cocoon-registry {args:?}:\n{out}\n{err}");
        serde_json::from_str(out.trim()).expect("JSON")
    }

    /// `cocoon-registry add-release` of `m` (canonical bytes in a file);
    /// its manifest hash and the file.
    fn add_release(&self, m: &ReleaseManifest) -> (String, PathBuf) {
        let file = self.dir.write(
            &format!("{}.release-manifest.json", m.release),
            m.to_canonical().unwrap(),
        );
        let r = self.tool(&[
            "add-release",
            "--wallet-key",
            s(&self.owner_key),
            "--registry",
            &self.registry,
            "--manifest",
            s(&file),
        ]);
        assert_eq!(r["status"], "active");
        (r["manifest_hash"].as_str().unwrap().to_string(), file)
    }

    fn manifest_file(&self, m: &ReleaseManifest) -> PathBuf {
        self.dir.write(
            &format!("{}.release-manifest.json", m.release),
            m.to_canonical().unwrap(),
        )
    }

    fn get(&self, at: &ContractAddress, method: &str, args: &[StackValue]) -> Vec<StackValue> {
        self.rt
            .block_on(self.api.run_get_method(at, method, args))
            .unwrap_or_else(|e| panic!("{method} on {at}: {e}"))
    }

    fn int(&self, at: &ContractAddress, method: &str, index: usize) -> u128 {
        match &self.get(at, method, &[])[index] {
            StackValue::Int(i) => i.to_u128().unwrap(),
            other => panic!("{method}[{index}]: {other:?}"),
        }
    }

    /// The provider's claimed balance in its payment contract.
    fn provider_balance(&self, payment: &ContractAddress) -> u128 {
        self.int(payment, "get_provider", 1)
    }

    /// The treasury's share owed by the payment contract.
    fn treasury_balance(&self, payment: &ContractAddress) -> u128 {
        self.int(payment, "get_network_fee", 2)
    }

    /// A client of the network: its own chain API client (the production
    /// one, at the public API's default rate), the registry's code pinned,
    /// the simulated TEE allowed by its dangerous name.
    fn client(&self, account: AccountKey) -> (NetworkClient, Arc<TonHttpClient>) {
        self.client_at(account, ChainApiConfig::new("").requests_per_second)
    }

    /// [`Self::client`] with another limit on its chain reads a second.
    fn client_at(&self, account: AccountKey, rps: f64) -> (NetworkClient, Arc<TonHttpClient>) {
        let mut cfg = ChainApiConfig::new(self.chain.endpoint.clone());
        cfg.requests_per_second = rps;
        let chain = Arc::new(TonHttpClient::new(cfg).unwrap());
        let registry = ContractAddress::parse(&self.registry).unwrap();
        let code = cocoon_protocol::ton::Cell::from_boc(cocoon_registry_admin::REGISTRY_CODE_BOC)
            .unwrap()
            .hash();
        let rules = LocalRules {
            allow_simulated: true,
            max_evidence_age: Check::Require(3600),
            ..LocalRules::default()
        };
        let source = Arc::new(RegistrySource::new(
            chain.clone(),
            registry,
            Some(code),
            rules,
        ));
        let mut o = DirectoryOptions::default();
        o.refresh = REFRESH;
        o.max_stale = REFRESH * 4;
        let dir = ProviderDirectory::new(source, account, ClientOptions::default(), o);
        (
            NetworkClient::new(Arc::new(dir), RouteConfig::default()),
            chain,
        )
    }
}

/// One provider: wallet, enclave(s), host(s), release, payment contract.
struct Provider {
    name: String,
    dir: TempDir,
    key: PathBuf,
    wallet: WalletV4,
    enclave: Enclave,
    host: Host,
    release_file: PathBuf,
    release_hash: String,
    payment: ContractAddress,
}

impl Provider {
    fn id(&self) -> ProviderId {
        ProviderId(self.wallet.address().to_string())
    }
}

/// Host flags of a settling provider on the chain double.
fn host_flags(net: &Network, payment: &ContractAddress, release: &Path) -> Vec<String> {
    vec![
        "--settlement-contract".into(),
        payment.to_string(),
        "--chain-api".into(),
        net.chain.endpoint.clone(),
        "--chain-api-rps".into(),
        "1000".into(),
        "--release-manifest".into(),
        release.display().to_string(),
        // The clients here send back to back; the default per-account
        // rate (5/s) would hold them (429), which is not what is tested.
        "--account-rps".into(),
        "200".into(),
        "--account-burst".into(),
        "400".into(),
    ]
}

fn start_settling_host(
    dir: &TempDir,
    enclaves: &[&PathBuf],
    listen: &str,
    flags: &[String],
) -> Host {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_host_on(dir, enclaves, listen, &flags)
}

/// Starts a provider: enclave with its prices, its release (listed when
/// `list`), its payment contract (deployed with `cocoon-registry
/// deploy-payment`), its host, and its registry entry (`cocoon-host
/// register`) at `endpoint(host url)`.
fn provider(net: &Network, name: &str, seed: u8, prices: (u64, u64), list: bool) -> Provider {
    let dir = TempDir::new(&format!("net-{name}"));
    let (key, wallet) = wallet_key(&dir, "wallet.key", seed);
    net.chain.fund(&wallet.address().to_string(), 10 * TON);
    let config = enclave_config(prices.0, prices.1, 16);
    let enclave = start_enclave_with(&dir, "enclave", &config);
    let m = manifest(&format!("release-{name}"), simulated_measurement(&config));
    let (release_hash, release_file) = if list {
        net.add_release(&m)
    } else {
        (
            hex::encode(m.manifest_hash().unwrap()),
            net.manifest_file(&m),
        )
    };
    let p = net.tool(&[
        "deploy-payment",
        "--wallet-key",
        s(&key),
        "--registry",
        &net.registry,
    ]);
    let payment = ContractAddress::parse(p["payment"].as_str().unwrap()).unwrap();
    let host = start_settling_host(
        &dir,
        &[&enclave.socket],
        "127.0.0.1:0",
        &host_flags(net, &payment, &release_file),
    );
    register(net, &key, &host.url, &payment);
    Provider {
        name: name.into(),
        dir,
        key,
        wallet,
        enclave,
        host,
        release_file,
        release_hash,
        payment,
    }
}

/// `cocoon-host register`.
fn register(net: &Network, key: &Path, endpoint: &str, payment: &ContractAddress) {
    let (code, out, err) = run(Command::new(bin("cocoon-host"))
        .args([
            "--chain-api",
            &net.chain.endpoint,
            "--chain-api-rps",
            "1000",
        ])
        .args([
            "register",
            "--registry",
            &net.registry,
            "--endpoint",
            endpoint,
        ])
        .args(["--payment", &payment.to_string(), "--wallet-key", s(key)]));
    assert_eq!(code, 0, "register:\n{out}\n{err}");
}

/// `cocoon-host settle --send` on a ledger: (claims sent, nanoton paid,
/// the landed amounts), from its summary lines.
fn settle_send(
    net: &Network,
    ledger: &Path,
    payment: &ContractAddress,
    key: &Path,
) -> (u64, u128, Vec<u128>) {
    let (code, out, err) = run(Command::new(bin("cocoon-host"))
        .arg("--ledger")
        .arg(ledger)
        .args(["--settlement-contract", &payment.to_string()])
        .args([
            "--chain-api",
            &net.chain.endpoint,
            "--chain-api-rps",
            "1000",
        ])
        .args([
            "settle",
            "--send",
            "--wallet-key",
            s(key),
            "--wait-secs",
            "30",
        ]));
    let text = format!("{out}{err}");
    assert_eq!(code, 0, "settle --send:\n{text}");
    eprintln!("{}", text.trim());
    let summary = text
        .lines()
        .find(|l| l.starts_with("settle --send:"))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let number_before = |what: &str| -> u128 {
        let at = summary
            .find(what)
            .unwrap_or_else(|| panic!("{what} in {summary}"));
        summary[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let sent = number_before(" claim(s) sent") as u64;
    let paid = number_before(" nanoton paid");
    let landed = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("landed: account "))
        .map(|l| {
            let after = l.split(": ").nth(1).unwrap();
            after.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    (sent, paid, landed)
}

/// `cocoon-client deposit` of `amount` into `payment` for the account in
/// `account_key`, paid by the wallet of `wallet_key`.
fn deposit_cli(
    net: &Network,
    account_key: &Path,
    wallet_key: &Path,
    payment: &ContractAddress,
    amount: u128,
) {
    let (code, out, err) = run(Command::new(bin("cocoon-client"))
        .args(["deposit", "--chain-api", &net.chain.endpoint])
        .args([
            "--payment",
            &payment.to_string(),
            "--amount",
            &amount.to_string(),
        ])
        .arg("--account-key")
        .arg(account_key)
        .arg("--wallet-key")
        .arg(wallet_key));
    assert_eq!(code, 0, "deposit:\n{out}\n{err}");
    // `cocoon-client balance` reads back what the deposit printed.
    let (code, balance, err) = run(Command::new(bin("cocoon-client"))
        .args(["balance", "--chain-api", &net.chain.endpoint])
        .args(["--payment", &payment.to_string()])
        .arg("--account-key")
        .arg(account_key));
    assert_eq!(code, 0, "balance:\n{balance}\n{err}");
    assert!(
        balance.contains(" nanoton") && out.trim_end().ends_with(balance.trim_end()),
        "balance after the deposit:\n{balance}\ndeposit said:\n{out}"
    );
}

/// Deposits into several payment contracts in one wallet message (up to
/// four), with the SDK's bodies: what `cocoon-client deposit` sends, four
/// at a time.
fn deposit_many(
    net: &Network,
    account: &AccountKey,
    wallet_key: &Path,
    payments: &[ContractAddress],
    amount: u128,
) {
    let key = load_key(wallet_key).unwrap();
    let wallet = WalletV4::new(key.verifying_key().to_bytes());
    let pk: [u8; 65] = account.public_key_sec1().try_into().unwrap();
    let messages: Vec<InternalMessage> = payments
        .iter()
        .map(|p| {
            let owner = wallet.address();
            let signature = account.sign_deposit_owner(&DepositOwner {
                contract: *p,
                owner,
            });
            let mut m = InternalMessage::transfer(*p, amount, true);
            m.body = Some(cocoon_protocol::ton::deposit_body(0, &pk, &owner, &signature).unwrap());
            m
        })
        .collect();
    net.rt
        .block_on(cocoon_chain::wait::send_and_confirm(
            &*net.api,
            &wallet,
            &key,
            &messages,
            Duration::from_secs(30),
        ))
        .unwrap();
}

/// The account's deposit in a payment contract (`get_client`: exists,
/// balance, ...).
fn deposit_of(net: &Network, payment: &ContractAddress, account: &AccountKey) -> u128 {
    let arg = StackValue::Int(cocoon_chain::TvmInt::from_be_bytes(account.id().0));
    match &net.get(payment, "get_client", &[arg])[1] {
        StackValue::Int(i) => i.to_u128().unwrap(),
        other => panic!("get_client: {other:?}"),
    }
}

/// What one routed request came to.
#[derive(Debug)]
enum Outcome {
    /// Served and billed by `provider`, with its receipt.
    Served {
        provider: ProviderId,
        request_id: String,
        charge: u128,
        failed_over: usize,
    },
    /// The answer started at `provider` and broke (reported, not retried).
    Broke { provider: ProviderId, error: String },
    /// Nothing served.
    Failed(String),
}

async fn one_request(net: &NetworkClient, text: &str) -> Outcome {
    match net.chat(MODEL, ask(text), 12).await {
        Ok(routed) => {
            let provider = routed.provider.clone();
            let failed_over = routed.failed.len();
            match routed.value.collect_text().await {
                Ok((_, done)) => Outcome::Served {
                    provider,
                    request_id: done.receipt.request_id.to_string(),
                    charge: done.receipt.charge_nanoton().unwrap(),
                    failed_over,
                },
                Err(e) => Outcome::Broke {
                    provider,
                    error: e.to_string(),
                },
            }
        }
        Err(NetworkError::AnswerFailed { provider, source }) => Outcome::Broke {
            provider,
            error: source.to_string(),
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[test]
fn network_end_to_end() {
    let _serial = serial();
    let Some(net) = Network::start("e2e-network") else {
        return;
    };
    // Three listed providers with their own prices, and a fourth (the
    // cheapest) whose release the registry does not list.
    let providers = [
        provider(&net, "p0", 10, (1000, 3000), true),
        provider(&net, "p1", 11, (1200, 3600), true),
        provider(&net, "p2", 12, (900, 2700), true),
        provider(&net, "unlisted", 13, (300, 900), false),
    ];
    let v = net.tool(&["show", "--registry", &net.registry]);
    assert_eq!(v["providers"].as_array().unwrap().len(), 4, "{v:#}");
    assert_eq!(v["releases"].as_array().unwrap().len(), 3, "{v:#}");
    let payments: Vec<ContractAddress> = providers.iter().map(|p| p.payment).collect();

    // Clients: account keys in files, wallets funded by the faucet.
    let mut clients = Vec::new();
    for j in 0..3u8 {
        let account_path = net.dir.join(format!("client-{j}.account"));
        let (account, _) = cocoon_client::load_or_create_account_key(&account_path).unwrap();
        let (wkey, wallet) = wallet_key(&net.dir, &format!("client-{j}.wallet"), 40 + j);
        net.chain.fund(&wallet.address().to_string(), 20 * TON);
        clients.push((account_path, account, wkey));
    }
    // Client 0 deposits with the CLI, one contract at a time; the others
    // into all four contracts in one wallet message each.
    let deposit = 2 * TON;
    for p in &payments {
        deposit_cli(&net, &clients[0].0, &clients[0].2, p, deposit);
    }
    for (_, account, wkey) in &clients[1..] {
        deposit_many(&net, account, wkey, &payments, deposit);
    }
    for (_, account, _) in &clients {
        for p in &payments {
            // The contract keeps 0.01 TON of a first deposit.
            assert_eq!(deposit_of(&net, p, account), deposit - 10_000_000);
        }
    }

    // Discover and verify: start-up time to a verified set.
    let mut nets = Vec::new();
    for (_, account, _) in &clients {
        let (nc, chain) = net.client(account.clone());
        let started = Instant::now();
        let set = net.rt.block_on(nc.refresh()).expect("refresh");
        let took = started.elapsed();
        let ids: HashSet<ProviderId> = set.providers.iter().map(|p| p.id.clone()).collect();
        let want: HashSet<ProviderId> = providers[..3].iter().map(Provider::id).collect();
        assert_eq!(ids, want, "rejected: {:?}", set.rejected);
        let why = set
            .rejected
            .iter()
            .find(|(id, _)| *id == providers[3].id())
            .map(|(_, why)| why.clone())
            .expect("the unlisted provider is rejected");
        assert!(why.contains("does not list"), "{why}");
        eprintln!(
            "FIGURE start-up to a verified set of 3 providers (+1 rejected): {took:?} ({} chain reads at the public API's 1 request/s)",
            chain.requests_made()
        );
        nets.push((nc, chain));
    }
    // The same with no limit on chain reads (an API of one's own): what
    // verifying three providers takes besides the public API's pacing.
    let (unpaced, _) = net.client_at(account(), 0.0);
    let started = Instant::now();
    let set = net.rt.block_on(unpaced.refresh()).expect("refresh");
    assert_eq!(set.providers.len(), 3, "rejected: {:?}", set.rejected);
    eprintln!(
        "FIGURE start-up to a verified set of 3 providers, chain reads not rate-limited: {:?}",
        started.elapsed()
    );
    let refreshers: Vec<_> = {
        let _in_runtime = net.rt.enter();
        nets.iter().map(|(nc, _)| nc.spawn_refresh()).collect()
    };

    // Phase 1: traffic, then one provider killed while it flows.
    // Each outcome with the time its request started.
    let outcomes: Arc<Mutex<Vec<(Instant, Outcome)>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let reads_before: Vec<u64> = nets.iter().map(|(_, c)| c.requests_made()).collect();
    let phase1 = Instant::now();
    let killed = &providers[1];
    net.rt.block_on(async {
        let stop = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (j, (nc, _)) in nets.iter().enumerate() {
            let nc = nc.clone();
            let out = outcomes.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                // Paced (about 30 a second per client) so that traffic
                // flows before, during and after the kill.
                let mut i = 0;
                while stop.load(Ordering::Relaxed) == 0 && i < 2000 {
                    let started = Instant::now();
                    let o = one_request(&nc, &format!("client {j} question {i}")).await;
                    out.lock().unwrap().push((started, o));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        // The kill: the host process of p1, SIGKILL, mid-traffic.
        eprintln!(
            "killing {}'s host (pid {})",
            killed.name,
            killed.host.proc.pid()
        );
        let _ = Command::new("kill")
            .args(["-KILL", &killed.host.proc.pid().to_string()])
            .status();
        *killed_at.lock().unwrap() = Some(Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(1, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    let timed = std::mem::take(&mut *outcomes.lock().unwrap());
    let killed_at = killed_at.lock().unwrap().expect("killed");
    // Requests that started after the kill (with 100 ms for the signal to
    // land): none served by the killed provider; those routed to it first
    // failed over before streaming.
    let mut after_kill = 0;
    for (started, o) in &timed {
        if *started > killed_at + Duration::from_millis(100) {
            after_kill += 1;
            if let Outcome::Served { provider, .. } = o {
                assert_ne!(*provider, killed.id(), "served by a killed host");
            }
        }
    }
    let outcomes: Vec<Outcome> = timed.into_iter().map(|(_, o)| o).collect();
    let window = phase1.elapsed();
    for (j, (_, chain)) in nets.iter().enumerate() {
        let reads = chain.requests_made() - reads_before[j];
        eprintln!(
            "FIGURE client {j}: {reads} chain reads in {window:.1?} of traffic ({} requests by all clients) = {:.0} a minute at a {REFRESH:?} refresh; 3 reads a refresh (code hash pin, get_releases, get_providers) and none per request, so 3 a minute at the default 60 s refresh",
            outcomes.len(),
            reads as f64 * 60.0 / window.as_secs_f64()
        );
    }
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut broke = 0;
    let mut failovers = 0;
    for o in &outcomes {
        match o {
            Outcome::Served {
                provider,
                failed_over,
                ..
            } => {
                *served.entry(provider.0.clone()).or_default() += 1;
                failovers += usize::from(*failed_over > 0);
            }
            Outcome::Broke { provider, error } => {
                assert_eq!(
                    *provider,
                    killed.id(),
                    "only the killed provider's answers may break: {error}"
                );
                broke += 1;
            }
            Outcome::Failed(e) => panic!("a request that had not started streaming failed: {e}"),
        }
    }
    eprintln!(
        "phase 1: {} requests ({after_kill} started after the kill), served per provider {served:?}, {failovers} failed over before streaming, {broke} broke mid-stream at the killed provider",
        outcomes.len()
    );
    assert!(after_kill >= 30, "traffic after the kill: {after_kill}");
    assert!(
        failovers + broke > 0,
        "no request met the killed provider: the kill was not exercised"
    );
    assert!(
        !served.contains_key(&providers[3].id().0),
        "the unlisted provider was used"
    );
    assert!(
        served.len() >= 3,
        "every listed provider served before the kill: {served:?}"
    );

    // The killed host comes back on its port (its ledger intact) so its
    // ledger can be read and settled; clients may use it again.
    let killed_url = killed.host.url.trim_start_matches("http://").to_string();
    let restarted = start_settling_host(
        &killed.dir,
        &[&killed.enclave.socket],
        &killed_url,
        &host_flags(&net, &killed.payment, &killed.release_file),
    );

    // Phase 2: a release revoked on chain.
    let revoked = &providers[2];
    net.tool(&[
        "revoke-release",
        "--wallet-key",
        s(&net.owner_key),
        "--registry",
        &net.registry,
        "--hash",
        &revoked.release_hash,
    ]);
    let revoked_at = Instant::now();
    for (nc, _) in &nets {
        while nc
            .providers()
            .providers
            .iter()
            .any(|p| p.id == revoked.id())
        {
            assert!(
                revoked_at.elapsed() < REFRESH * 2 + Duration::from_secs(6),
                "still routing to a revoked release after {:?}",
                revoked_at.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let dropped_after = revoked_at.elapsed();
    eprintln!("FIGURE revoked release dropped by every client after {dropped_after:?} (refresh interval {REFRESH:?})");
    let after: Vec<Outcome> = net.rt.block_on(async {
        let mut v = Vec::new();
        for (j, (nc, _)) in nets.iter().enumerate() {
            for i in 0..6 {
                v.push(one_request(nc, &format!("after revocation {j}/{i}")).await);
            }
        }
        v
    });
    for o in &after {
        match o {
            Outcome::Served { provider, .. } => {
                assert_ne!(*provider, revoked.id(), "served by the revoked release");
                assert_ne!(*provider, providers[3].id());
            }
            other => panic!("after the revocation: {other:?}"),
        }
    }

    drop(refreshers);

    // A client that never deposited: 402 from every host, the unlisted
    // provider's included.
    let poor = account();
    net.rt.block_on(async {
        for p in providers.iter() {
            let url = if p.name == killed.name {
                &restarted.url
            } else {
                &p.host.url
            };
            let c = Client::new(url, simulated_policy(), poor.clone());
            match c.chat(MODEL, ask("free lunch?"), 8).await {
                Err(ClientError::Status {
                    status: 402,
                    reason,
                }) => {
                    eprintln!("{}: 402 {reason}", p.name)
                }
                other => panic!("{}: expected 402, got {other:?}", p.name),
            }
        }
    });

    // Billing: every receipt a client holds is in exactly one ledger, that
    // of the host that served it; no request id twice anywhere.
    std::thread::sleep(Duration::from_millis(500));
    let admin_of = |p: &Provider| {
        if p.name == killed.name {
            restarted.admin.clone()
        } else {
            p.host.admin.clone()
        }
    };
    let mut ledger_ids: HashMap<String, String> = HashMap::new();
    for p in &providers {
        for id in ledger_request_ids(&admin_of(p)) {
            assert!(
                ledger_ids.insert(id.clone(), p.name.clone()).is_none(),
                "request {id} billed twice"
            );
        }
    }
    assert!(
        !ledger_ids.values().any(|n| n == "unlisted"),
        "the unlisted provider billed"
    );
    let name_of: HashMap<ProviderId, String> =
        providers.iter().map(|p| (p.id(), p.name.clone())).collect();
    let mut charged: HashMap<String, u128> = HashMap::new();
    for o in outcomes.iter().chain(&after) {
        if let Outcome::Served {
            provider,
            request_id,
            charge,
            ..
        } = o
        {
            assert_eq!(
                ledger_ids.get(request_id),
                name_of.get(provider),
                "request {request_id}"
            );
            *charged.entry(name_of[provider].clone()).or_default() += charge;
        }
    }

    // Settlement: each listed provider's host settles its ledger from its
    // wallet; the contract pays the provider and the treasury its share,
    // to the nanoton; a rerun pays nothing.
    for p in &providers {
        let ledger = p.dir.path().join("ledger.db");
        let (sent, paid, landed) = settle_send(&net, &ledger, &p.payment, &p.key);
        let fee: u128 = landed
            .iter()
            .map(|a| a * u128::from(FEE_BPS) / 10_000)
            .sum();
        assert_eq!(landed.iter().sum::<u128>(), paid);
        let client_seen = charged.get(&p.name).copied().unwrap_or(0);
        if p.name == killed.name && broke > 0 {
            // Answers that broke mid-stream may have been billed: the
            // enclave finished them, the client never saw the receipt.
            assert!(
                paid >= client_seen,
                "{}: paid {paid} < receipts {client_seen}",
                p.name
            );
            eprintln!(
                "{}: {} nanoton billed for the {broke} answer(s) that broke mid-stream (not retried elsewhere)",
                p.name,
                paid - client_seen
            );
        } else {
            assert_eq!(
                paid, client_seen,
                "{}: paid = the receipts the clients hold",
                p.name
            );
        }
        assert_eq!(
            net.provider_balance(&p.payment),
            paid - fee,
            "{}: provider's share",
            p.name
        );
        assert_eq!(
            net.treasury_balance(&p.payment),
            fee,
            "{}: treasury's share",
            p.name
        );
        eprintln!(
            "{}: {sent} claims, {paid} nanoton: provider {} + treasury {fee} ({FEE_BPS} bps, floor per claim)",
            p.name,
            paid - fee
        );
        if p.name == "unlisted" {
            assert_eq!((sent, paid), (0, 0));
        } else {
            assert!(sent > 0);
        }
        let (sent2, paid2, _) = settle_send(&net, &ledger, &p.payment, &p.key);
        assert_eq!((sent2, paid2), (0, 0), "{}: a rerun pays nothing", p.name);
        assert_eq!(net.provider_balance(&p.payment), paid - fee);
        assert_eq!(net.treasury_balance(&p.payment), fee);
    }
    drop(restarted);
}

/// A round-robin TCP balancer: each accepted connection goes to the next
/// backend, bytes copied both ways. A TEST STAND-IN FOR AN ORDINARY LOAD
/// BALANCER (TCP mode); it looks at nothing inside the connections.
struct RoundRobinTcpBalancer {
    addr: SocketAddr,
    per_backend: Arc<Vec<AtomicUsize>>,
    _task: tokio::task::JoinHandle<()>,
}

impl RoundRobinTcpBalancer {
    /// Listens on 127.0.0.1:0; `delay` is added before every chunk sent
    /// back to the client (injected latency; zero for none).
    async fn start(backends: Vec<String>, delay: Duration) -> RoundRobinTcpBalancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_backend: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = per_backend.clone();
        let task = tokio::spawn(async move {
            let mut next = 0;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let i = next % backends.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i].clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&backend).await else {
                        return;
                    };
                    relay(inbound, outbound, delay).await;
                });
            }
        });
        RoundRobinTcpBalancer {
            addr,
            per_backend,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> Vec<usize> {
        self.per_backend
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Copies both ways until either side closes; `delay` before each chunk
/// from `outbound` to `inbound`.
async fn relay(inbound: tokio::net::TcpStream, outbound: tokio::net::TcpStream, delay: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut ir, mut iw) = inbound.into_split();
    let (mut or, mut ow) = outbound.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut ir, &mut ow).await;
        let _ = ow.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match or.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if iw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = iw.shutdown().await;
    };
    tokio::join!(up, down);
}

#[test]
fn two_host_agents_of_one_provider() {
    let _serial = serial();
    let Some(net) = Network::start("e2e-two-hosts") else {
        return;
    };
    // One provider: one wallet, one release, one payment contract, two
    // host agents each with its own enclave and ledger.
    let dir_a = TempDir::new("net-agent-a");
    let dir_b = TempDir::new("net-agent-b");
    let (key, wallet) = wallet_key(&dir_a, "wallet.key", 20);
    net.chain.fund(&wallet.address().to_string(), 10 * TON);
    let config = enclave_config(1000, 3000, 8);
    let enclave_a = start_enclave_with(&dir_a, "enclave", &config);
    let enclave_b = start_enclave_with(&dir_b, "enclave", &config);
    let m = manifest("release-two-agents", simulated_measurement(&config));
    let (_, release) = net.add_release(&m);
    let p = net.tool(&[
        "deploy-payment",
        "--wallet-key",
        s(&key),
        "--registry",
        &net.registry,
    ]);
    let payment = ContractAddress::parse(p["payment"].as_str().unwrap()).unwrap();
    let flags = host_flags(&net, &payment, &release);
    let host_a = start_settling_host(&dir_a, &[&enclave_a.socket], "127.0.0.1:0", &flags);
    let host_b = start_settling_host(&dir_b, &[&enclave_b.socket], "127.0.0.1:0", &flags);
    let balancer = net.rt.block_on(RoundRobinTcpBalancer::start(
        vec![
            host_a.url.trim_start_matches("http://").into(),
            host_b.url.trim_start_matches("http://").into(),
        ],
        Duration::ZERO,
    ));
    eprintln!(
        "ROUND-ROBIN TCP BALANCER (a test stand-in for an ordinary load balancer) at {} in front of {} and {}",
        balancer.url(),
        host_a.url,
        host_b.url
    );
    // The provider is registered once, at the balancer's URL.
    register(&net, &key, &balancer.url(), &payment);

    // Clients, each its own connections (so the balancer spreads them).
    // Which agent ends up serving a client depends on how many connections
    // its verification and requests open; before every other client one
    // empty connection shifts the round robin, and clients keep coming
    // (at least 4, at most 8) until both agents have served.
    let mut charged = 0u128;
    let mut served = 0;
    for j in 0..8u8 {
        if j >= 4
            && !ledger_request_ids(&host_a.admin).is_empty()
            && !ledger_request_ids(&host_b.admin).is_empty()
        {
            break;
        }
        if j % 2 == 1 {
            drop(std::net::TcpStream::connect(balancer.addr).expect("balancer"));
            std::thread::sleep(Duration::from_millis(100));
        }
        let account = account();
        let (wkey, w) = wallet_key(&net.dir, &format!("c{j}.wallet"), 60 + j);
        net.chain.fund(&w.address().to_string(), 5 * TON);
        deposit_many(&net, &account, &wkey, &[payment], TON);
        let (nc, _) = net.client(account);
        let set = net.rt.block_on(nc.refresh()).expect("refresh");
        assert_eq!(set.providers.len(), 1, "rejected: {:?}", set.rejected);
        for i in 0..4 {
            match net.rt.block_on(one_request(&nc, &format!("c{j} q{i}"))) {
                Outcome::Served { charge, .. } => {
                    charged += charge;
                    served += 1;
                }
                other => panic!("client {j}: {other:?}"),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let a = ledger_request_ids(&host_a.admin);
    let b = ledger_request_ids(&host_b.admin);
    eprintln!(
        "balancer connections per agent {:?}; requests billed by agent A {}, by agent B {}",
        balancer.connections(),
        a.len(),
        b.len()
    );
    assert_eq!(a.len() + b.len(), served);
    assert!(!a.is_empty() && !b.is_empty(), "both agents served");
    assert!(
        a.iter().all(|id| !b.contains(id)),
        "a request in both ledgers"
    );

    // Each agent settles its own ledger from the provider's wallet, one
    // after the other; each claim paid once; reruns pay nothing.
    let (sa, pa, la) = settle_send(&net, &host_a.ledger, &payment, &key);
    let (sb, pb, lb) = settle_send(&net, &host_b.ledger, &payment, &key);
    assert!(sa > 0 && sb > 0);
    assert_eq!(
        pa + pb,
        charged,
        "both agents' claims = the clients' receipts"
    );
    let fee: u128 = la
        .iter()
        .chain(&lb)
        .map(|x| x * u128::from(FEE_BPS) / 10_000)
        .sum();
    assert_eq!(net.provider_balance(&payment), charged - fee);
    assert_eq!(net.treasury_balance(&payment), fee);
    for ledger in [&host_a.ledger, &host_b.ledger] {
        assert_eq!(settle_send(&net, ledger, &payment, &key).0, 0, "rerun");
    }
    assert_eq!(net.provider_balance(&payment), charged - fee);
}

#[test]
fn routing_follows_the_documented_rule() {
    let _serial = serial();
    let Some(net) = Network::start("e2e-routing") else {
        return;
    };
    // Three providers: "base", "cheap" (half the price), "slow" (base
    // price, 120 ms added to every chunk of its answers by a delaying TCP
    // relay in front of its host).
    let specs = [
        ("base", 1000, 3000, 0u64),
        ("cheap", 500, 1500, 0),
        ("slow", 1000, 3000, 120),
    ];
    let mut keep = Vec::new();
    let mut ids = HashMap::new();
    let account = account();
    let (wkey, w) = wallet_key(&net.dir, "client.wallet", 70);
    net.chain.fund(&w.address().to_string(), 10 * TON);
    let mut payments = Vec::new();
    for (i, (name, prompt, completion, delay)) in specs.iter().enumerate() {
        let dir = TempDir::new(&format!("net-{name}"));
        let (key, wallet) = wallet_key(&dir, "wallet.key", 80 + i as u8);
        net.chain.fund(&wallet.address().to_string(), 10 * TON);
        let config = enclave_config(*prompt, *completion, 8);
        let enclave = start_enclave_with(&dir, "enclave", &config);
        let (_, release) = net.add_release(&manifest(
            &format!("release-{name}"),
            simulated_measurement(&config),
        ));
        let p = net.tool(&[
            "deploy-payment",
            "--wallet-key",
            s(&key),
            "--registry",
            &net.registry,
        ]);
        let payment = ContractAddress::parse(p["payment"].as_str().unwrap()).unwrap();
        let host = start_settling_host(
            &dir,
            &[&enclave.socket],
            "127.0.0.1:0",
            &host_flags(&net, &payment, &release),
        );
        let relay = net.rt.block_on(RoundRobinTcpBalancer::start(
            vec![host.url.trim_start_matches("http://").into()],
            Duration::from_millis(*delay),
        ));
        register(&net, &key, &relay.url(), &payment);
        ids.insert(ProviderId(wallet.address().to_string()), *name);
        payments.push(payment);
        keep.push((dir, enclave, host, relay));
    }
    deposit_many(&net, &account, &wkey, &payments, 3 * TON);
    let (nc, _) = net.client(account);
    net.rt.block_on(nc.refresh()).expect("refresh");
    let n = 150;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut predicted: BTreeMap<&str, f64> = BTreeMap::new();
    let warmup = 30;
    net.rt.block_on(async {
        for i in 0..n {
            if i >= warmup {
                for (id, p) in nc.choice_shares(MODEL, &ask(&format!("q{i}")), 12) {
                    *predicted.entry(ids[&id]).or_default() += p / f64::from(n - warmup);
                }
            }
            match one_request(&nc, &format!("q{i}")).await {
                Outcome::Served { provider, .. } if i >= warmup => {
                    *counts.entry(ids[&provider]).or_default() += 1;
                }
                Outcome::Served { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    });
    eprintln!(
        "FIGURE routing shares over {} requests after {warmup} of warm-up:",
        n - warmup
    );
    for (name, _, _, _) in &specs {
        let got = counts.get(name).copied().unwrap_or(0) as f64 / f64::from(n - warmup);
        let want = predicted.get(name).copied().unwrap_or(0.0);
        eprintln!(
            "  {name:<6} chosen {:>5.1}%  rule {:>5.1}%",
            got * 100.0,
            want * 100.0
        );
        assert!(
            (got - want).abs() < 0.15,
            "{name}: chosen {got:.3}, the rule gives {want:.3}"
        );
    }
    let share = |n: &str| counts.get(n).copied().unwrap_or(0);
    assert!(share("cheap") > share("base"), "{counts:?}");
    assert!(share("base") > share("slow"), "{counts:?}");
}
