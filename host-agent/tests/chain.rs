//! The host against a chain: the sandbox chain API (a TEST DOUBLE, NOT A
//! TON NETWORK: `contracts/scripts/chain-api.mjs`, `@ton/sandbox` behind the
//! TON HTTP API v2) with the payment contract deployed in it, read and
//! written through the production `TonHttpClient`.
//!
//! * the deposit check: an account that never deposited gets `402 no
//!   deposit`; after a deposit it is served; a request whose worst case is
//!   over the deposit gets `402`; a chain API that cannot be reached gets
//!   `503`;
//! * `cocoon-host settle --send` (the real binary): the contract pays the
//!   tab to the nanoton (the provider's and the treasury's shares), a
//!   rerun sends nothing, and a run that dies between send and confirm is
//!   resumed by the next without paying twice.
//!
//! Skipped, loudly, where Node.js or the contracts' npm packages are
//! missing (`scripts/ton-deps.sh` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cocoon_chain::http::{ChainApiConfig, TonHttpClient};
use cocoon_chain::wait::{send_and_confirm, wallet_seqno};
use cocoon_chain::wallet::{load_key, InternalMessage, WalletV4};
use cocoon_chain::{ChainClient, StackValue};
use cocoon_host::deposits::DepositConfig;
use cocoon_host::{HostConfig, Listeners};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::api::AUTHORIZATION_HEADER;
use cocoon_protocol::pricing::PriceSheet;
use cocoon_protocol::seal::BillingMeta;
use cocoon_protocol::settlement::{compress_p256, Authorization, ContractAddress, DepositOwner};
use cocoon_test_kit::chain::SandboxChain;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cocoon-host");
const FEE_BPS: u16 = 250;
const DEPOSIT: u128 = 200_000_000;
/// Where the network fee goes (the payment contracts' and the registry's).
const TREASURY: ContractAddress = ContractAddress {
    workchain: 0,
    hash: [0x7e; 32],
};

fn contracts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts")
}

fn client(endpoint: &str) -> Arc<TonHttpClient> {
    let mut c = ChainApiConfig::new(endpoint);
    c.requests_per_second = 0.0;
    c.timeout = Duration::from_secs(10);
    c.max_retries = 1;
    Arc::new(TonHttpClient::new(c).unwrap())
}

/// A wallet key file (64 hex characters, mode 0600) and its wallet.
fn wallet_key(dir: &TempDir, name: &str) -> (PathBuf, WalletV4) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let path = dir.write(name, hex::encode(seed));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = load_key(&path).unwrap();
    (path, WalletV4::new(key.verifying_key().to_bytes()))
}

fn int(v: &StackValue) -> u128 {
    match v {
        StackValue::Int(i) => i.to_u128().unwrap(),
        other => panic!("not an int: {other:?}"),
    }
}

/// The chain, the payment contract of a provider wallet (with a treasury
/// and a fee), and that wallet's key file.
struct World {
    chain: SandboxChain,
    api: Arc<TonHttpClient>,
    contract: ContractAddress,
    provider_key: PathBuf,
    provider: WalletV4,
}

fn world(dir: &TempDir) -> Option<World> {
    let chain = SandboxChain::start_or_skip(&contracts_dir())?;
    let api = client(&chain.endpoint);
    let (provider_key, provider) = wallet_key(dir, "provider.key");
    chain.fund(&provider.address().to_string(), 5_000_000_000);
    let treasury = ContractAddress {
        workchain: 0,
        hash: [0x7e; 32],
    };
    let data =
        cocoon_protocol::registry::payment_init_data(&provider.address(), 3600, &treasury, FEE_BPS)
            .unwrap();
    let code = std::fs::read(contracts_dir().join("build/cocoon_payment.boc")).unwrap();
    let at = chain.deploy(&code, &data.to_boc(), 1_000_000_000);
    let contract = ContractAddress::parse(&at).unwrap();
    Some(World {
        chain,
        api,
        contract,
        provider_key,
        provider,
    })
}

/// `account` deposits `amount` (less the contract's 0.01 TON fee) from a
/// wallet of its own.
async fn deposit(w: &World, dir: &TempDir, account: &AccountKey, amount: u128) {
    let (key_path, wallet) = wallet_key(dir, "client-wallet.key");
    w.chain
        .fund(&wallet.address().to_string(), amount + 1_000_000_000);
    let owner = wallet.address();
    let designation = DepositOwner {
        contract: w.contract,
        owner,
    };
    let signature = account.sign_deposit_owner(&designation);
    let pk: [u8; 65] = account.public_key_sec1().try_into().unwrap();
    let body = cocoon_protocol::ton::deposit_body(7, &pk, &owner, &signature).unwrap();
    let mut m = InternalMessage::transfer(w.contract, amount, true);
    m.body = Some(body);
    send_and_confirm(
        w.api.as_ref(),
        &wallet,
        &load_key(&key_path).unwrap(),
        &[m],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

async fn get_paid(w: &World, account: [u8; 32], enclave_key: &[u8]) -> u128 {
    cocoon_host::payment::read_paid(
        w.api.as_ref(),
        &w.contract,
        account,
        &compress_p256(enclave_key).unwrap(),
    )
    .await
    .unwrap()
}

async fn start_host(dir: &TempDir, enclave: &TestEnclave, w: &World, endpoint: &str) -> TestHost {
    let listeners = Listeners {
        public: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let chain: Arc<dyn ChainClient> = client(endpoint);
    let config = HostConfig {
        enclaves: vec![enclave.addr()],
        policy: simulated_policy(),
        ledger_path: dir.path().join("ledger.sqlite"),
        limits: test_limits(),
        settlement: Some(w.contract),
        deposits: Some(DepositConfig {
            chain,
            ttl: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
        }),
        amd_kds_url: "http://127.0.0.1:9".into(),
        intel_pcs_url: "http://127.0.0.1:9".into(),
        admin_token: None,
        clock: cocoon_host::Clock::system(),
        release_manifest: None,
    };
    let host = TestHost::start_config(listeners, config).await.unwrap();
    host.wait_ready().await;
    host
}

/// A request of `account` with `max_tokens`, authorized up to 10 TON.
async fn ask(
    host: &TestHost,
    w: &World,
    account: &AccountKey,
    max_tokens: u32,
) -> (HttpResponse, u128) {
    let target = &fetch_targets(host.public).await[0];
    let r = http(host.public, "GET", "/v1/prices", &[], b"").await;
    let sheet = PriceSheet::from_cbor(&r.body).unwrap();
    let meta = BillingMeta {
        model: MODEL.into(),
        max_tokens,
        price_quote_id: sheet.quote_id.clone(),
        unit_price: PRICE,
        multiplier_milli: 1000,
        client_account: account.id().0,
        expires_at: now() + 300,
    };
    let (sealed, _) = seal_meta(target, &meta, b"a short question");
    let auth = account.sign_authorization(&Authorization {
        contract: w.contract,
        account: account.id().0,
        enclave_key: compress_p256(&target.receipt_public_key).unwrap(),
        cap: 10_000_000_000,
    });
    let mut h = request_headers(&target.digest, account, &sealed);
    h.push((AUTHORIZATION_HEADER.into(), hex::encode(auth.to_bytes())));
    let cost = cocoon_protocol::pricing::max_cost(&PRICE, sealed.to_cbor().len(), max_tokens);
    (
        http(host.public, "POST", "/v1/requests", &h, &sealed.to_cbor()).await,
        cost,
    )
}

/// Wait until the enclave's tabs count every receipt in the ledger.
async fn tabs_caught_up(host: &TestHost, receipts: usize) {
    for _ in 0..250 {
        let m = host.metrics().await;
        if m.contains(&format!(
            "cocoon_host_tabs_total{{result=\"stored\"}} {receipts}"
        )) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the enclave's tabs did not reach {receipts} receipts");
}

/// `cocoon-host settle --send`, its exit status and stdout + stderr.
fn settle_send(dir: &TempDir, w: &World, crash: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--ledger")
        .arg(dir.path().join("ledger.sqlite"))
        .args(["--settlement-contract", &w.contract.to_string()])
        .args(["--chain-api", &w.chain.endpoint])
        .args(["--chain-api-rps", "100"])
        .args(["settle", "--send", "--wait-secs", "30", "--wallet-key"])
        .arg(&w.provider_key);
    if crash {
        cmd.env(cocoon_host::settle::send::TEST_ONLY_EXIT_AFTER_SEND, "1");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn charges(rows: &[serde_json::Value]) -> u128 {
    rows.iter()
        .map(|r| u128::from(r["charge"].as_u64().unwrap()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_checked_and_claims_are_paid_once() {
    let dir = TempDir::new("chain");
    let Some(w) = world(&dir) else { return };
    let enclave = TestEnclave::start(dir.path(), "e");
    let host = start_host(&dir, &enclave, &w, &w.chain.endpoint).await;
    let account = new_account();

    // Never deposited: 402, nothing forwarded.
    let (r, _) = ask(&host, &w, &account, 4).await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert!(r.text().starts_with("no deposit"), "{}", r.text());
    assert_eq!(enclave.requests(), 0);

    // Deposited: served (the refusal is read again after a second).
    deposit(&w, &dir, &account, DEPOSIT).await;
    tokio::time::sleep(cocoon_host::deposits::REREAD_AFTER_REFUSAL).await;
    let (r, cost) = ask(&host, &w, &account, 4).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(cost < DEPOSIT);
    // A worst case over what is left: 402 naming the amounts.
    let (r, _) = ask(&host, &w, &account, 2_000_000).await;
    assert_eq!(r.status, 402, "{}", r.text());
    let text = r.text();
    let balance = DEPOSIT - u128::from(cocoon_protocol::settlement::DEPOSIT_FEE);
    assert!(
        text.contains(&format!("deposit {balance} nanoton")) && text.contains("needed up to"),
        "{text}"
    );
    assert_eq!(enclave.requests(), 1);
    let m = host.metrics().await;
    assert!(
        m.contains("cocoon_host_deposit_refusals_total{reason=\"no_deposit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("cocoon_host_deposit_refusals_total{reason=\"insufficient\"} 1"),
        "{m}"
    );

    // A host whose chain API cannot be reached: 503, never served.
    let dir2 = TempDir::new("chain-down");
    let down = start_host(&dir2, &enclave, &w, "http://127.0.0.1:9/api/v2").await;
    let (r, _) = ask(&down, &w, &account, 4).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("cannot be checked"), "{}", r.text());
    assert_eq!(enclave.requests(), 1);
    down.stop().await;

    // One more request, then settle: the contract pays the tab to the
    // nanoton, split between the provider and the treasury.
    let (r, _) = ask(&host, &w, &account, 4).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tabs_caught_up(&host, 2).await;
    let rows = host.export().await;
    let total = charges(&rows);
    let key = hex::decode(rows[0]["receipt_public_key"].as_str().unwrap()).unwrap();
    host.stop().await;
    let seqno = |w: &World| {
        let api = w.api.clone();
        let wallet = w.provider.clone();
        async move { wallet_seqno(api.as_ref(), &wallet).await.unwrap().0 }
    };
    let (code, out) = settle_send(&dir, &w, false);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("1 claim(s) sent in 1 message(s), 1 landed"),
        "{out}"
    );
    assert!(out.contains(&format!("{total} nanoton paid")), "{out}");
    assert_eq!(get_paid(&w, account.id().0, &key).await, total);
    let provider = w
        .api
        .run_get_method(&w.contract, "get_provider", &[])
        .await
        .unwrap();
    let fee = total * u128::from(FEE_BPS) / 10_000;
    assert_eq!(int(&provider[1]), total - fee, "the provider's share");
    let client = cocoon_host::payment::read_client(w.api.as_ref(), &w.contract, account.id().0)
        .await
        .unwrap();
    assert_eq!(client.balance, balance - total);
    let after_first = seqno(&w).await;

    // A rerun pays nothing and sends nothing.
    let (code, out) = settle_send(&dir, &w, false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 claim(s) sent in 0 message(s)"), "{out}");
    assert!(out.contains("1 skipped as already paid"), "{out}");
    assert_eq!(seqno(&w).await, after_first);
    assert_eq!(get_paid(&w, account.id().0, &key).await, total);

    // Served again with the paid receipts no longer counted against the
    // deposit; then a run dies between send and confirm, and the next one
    // finds the claim paid instead of sending it again.
    let host = start_host(&dir, &enclave, &w, &w.chain.endpoint).await;
    let (r, _) = ask(&host, &w, &account, 4).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tabs_caught_up(&host, 1).await;
    let total = charges(&host.export().await);
    host.stop().await;
    let (code, out) = settle_send(&dir, &w, true);
    assert_eq!(
        code,
        Some(cocoon_host::settle::send::TEST_ONLY_EXIT_CODE),
        "{out}"
    );
    assert_eq!(seqno(&w).await, after_first + 1);
    let (code, out) = settle_send(&dir, &w, false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 claim(s) sent"), "{out}");
    assert!(
        out.contains("resumed: 1 claim(s) an earlier run sent were found paid"),
        "{out}"
    );
    assert_eq!(seqno(&w).await, after_first + 1, "nothing sent twice");
    assert_eq!(get_paid(&w, account.id().0, &key).await, total);
    let client = cocoon_host::payment::read_client(w.api.as_ref(), &w.contract, account.id().0)
        .await
        .unwrap();
    assert_eq!(client.balance, balance - total);
}

/// The registry's initial data (`contracts/lib/registry.mjs`,
/// `buildRegistryData`): owner, no pending owner, no releases or providers,
/// and the configuration cell (treasury, fee, payment code hash and depth,
/// stake).
fn registry_data(
    owner: &ContractAddress,
    treasury: &ContractAddress,
    payment_code: &cocoon_protocol::ton::Cell,
    stake: u128,
) -> cocoon_protocol::ton::Cell {
    use cocoon_protocol::ton::CellBuilder;
    let mut config = CellBuilder::new();
    config
        .store_address(Some(treasury))
        .unwrap()
        .store_uint(u128::from(FEE_BPS), 16)
        .unwrap()
        .store_bytes(&payment_code.hash())
        .unwrap()
        .store_uint(u128::from(payment_code.depth()), 16)
        .unwrap()
        .store_coins(stake)
        .unwrap();
    let mut root = CellBuilder::new();
    root.store_address(Some(owner))
        .unwrap()
        .store_uint(0, 2)
        .unwrap()
        .store_uint(0, 32)
        .unwrap()
        .store_uint(0, 32)
        .unwrap()
        .store_uint(0, 2)
        .unwrap()
        .store_ref(config.build())
        .unwrap();
    root.build()
}

/// `cocoon-host register ...`: exit status and stdout + stderr.
fn register(w: &World, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["--chain-api", &w.chain.endpoint, "--chain-api-rps", "100"])
        .arg("register")
        .arg("--wallet-key")
        .arg(&w.provider_key)
        .args(["--wait-secs", "30"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_registers_updates_and_deregisters() {
    let dir = TempDir::new("chain-register");
    let Some(w) = world(&dir) else { return };
    let code = std::fs::read(contracts_dir().join("build/cocoon_payment.boc")).unwrap();
    let payment_code = cocoon_protocol::ton::Cell::from_boc(&code).unwrap();
    let stake = 1_000_000_000;
    let registry_code = std::fs::read(contracts_dir().join("build/cocoon_registry.boc")).unwrap();
    let data = registry_data(
        &ContractAddress {
            workchain: 0,
            hash: [0x0e; 32],
        },
        &TREASURY,
        &payment_code,
        stake,
    );
    let registry = w
        .chain
        .deploy(&registry_code, &data.to_boc(), 1_000_000_000);
    let contract = w.contract.to_string();
    let wallet = |w: &World| {
        let api = w.api.clone();
        let a = w.provider.address();
        async move { api.account_state(&a).await.unwrap().balance }
    };

    // A payment contract the registry would refuse (another treasury in
    // its storage) is refused here, before anything is sent.
    let foreign = cocoon_protocol::registry::payment_init_data(
        &w.provider.address(),
        3600,
        &ContractAddress {
            workchain: 0,
            hash: [0x11; 32],
        },
        FEE_BPS,
    )
    .unwrap();
    let other = w.chain.deploy(&code, &foreign.to_boc(), 100_000_000);
    let before = wallet(&w).await;
    let (code_, out) = register(
        &w,
        &[
            "--registry",
            &registry,
            "--endpoint",
            "https://a.example",
            "--payment",
            &other,
        ],
    );
    assert_eq!(code_, Some(69), "{out}");
    assert!(
        out.contains("is not the one the registry accepts") && out.contains(&contract),
        "{out}"
    );
    assert_eq!(wallet(&w).await, before, "nothing sent");

    let args = |endpoint: &'static str| -> Vec<String> {
        vec![
            "--registry".into(),
            registry.clone(),
            "--endpoint".into(),
            endpoint.into(),
            "--payment".into(),
            contract.clone(),
        ]
    };
    let run = |extra: &[&str], endpoint: &'static str| {
        let mut a = args(endpoint);
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        register(&w, &refs)
    };
    let before = wallet(&w).await;
    let (code, out) = run(&[], "https://a.example");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("registered: wallet") && out.contains("endpoint https://a.example"),
        "{out}"
    );
    assert!(out.contains(&format!("stake {stake} nanoton")), "{out}");
    assert!(
        before - wallet(&w).await >= stake,
        "the stake left the wallet"
    );
    // Again: nothing to do, nothing sent.
    let before = wallet(&w).await;
    let (code, out) = run(&[], "https://a.example");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("unchanged"), "{out}");
    assert_eq!(wallet(&w).await, before);
    // Another endpoint without --update: refused, naming the flag.
    let (code, out) = run(&[], "https://b.example");
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("--update"), "{out}");
    let (code, out) = run(&["--update"], "https://b.example");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("endpoint https://b.example"), "{out}");
    // Deregistered: the stake comes back.
    let before = wallet(&w).await;
    let (code, out) = register(&w, &["--registry", &registry, "--deregister"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("not registered"), "{out}");
    assert!(wallet(&w).await > before + stake / 2, "the stake came back");
}
