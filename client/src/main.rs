//! `cocoon-client`: ask a provider's verified enclave a question
//! (`chat`), or run a local OpenAI-compatible endpoint over it (`serve`).
//!
//! Exit codes (sysexits): 0 ok, 1 verification or protocol failure, 64
//! usage error (bad arguments, unreadable policy or key file), 69 the
//! provider is unreachable.

use std::io::IsTerminal;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use cocoon_chain::http::{ChainApiConfig, TonHttpClient};
use cocoon_chain::{ChainClient, StackValue, TvmInt};
use cocoon_client::network::directory::{
    DirectoryOptions, ProviderDirectory, ProviderSet, StaticProviders, TrustSource,
};
use cocoon_client::network::registry::RegistrySource;
use cocoon_client::network::router::RouteConfig;
use cocoon_client::serve::{Backend, ServeOptions};
use cocoon_client::{
    AttestedEnclave, Client, ClientError, ClientOptions, Completed, NetworkClient, NetworkError,
    ResponsePart, ResponseStream, VerifiedProvider, SIMULATED_TEE_WARNING,
};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::local_auth::{AllowedHosts, BearerToken};
use cocoon_protocol::message::{ChatMessage, FinishReason, RefusalCode, Role};
use cocoon_protocol::settlement::{ContractAddress, DepositOwner};
use cocoon_verifier::policy::derive::LocalRules;
use cocoon_verifier::Policy;
use serde_json::{json, Value};

const EX_FAILURE: u8 = 1;
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

/// Talk to a Cocoon provider: verify its enclaves' evidence under a policy,
/// send requests only they can read, and check the signed usage receipts.
#[derive(Parser)]
#[command(name = "cocoon-client", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify the provider, ask one question, stream the answer to stdout,
    /// and print the verified receipt.
    Chat(ChatArgs),
    /// Verify the provider, then serve an OpenAI-compatible API locally
    /// (GET /v1/models, POST /v1/chat/completions, POST /v1/embeddings) to
    /// its owner only: every request must carry the endpoint's API key as
    /// `Authorization: Bearer <key>` (an OpenAI client's api_key), name a
    /// local host (127.0.0.1, localhost, [::1]) and send POST bodies as
    /// application/json. The key comes from COCOON_API_KEY or an API key
    /// file (created with a new random key if missing).
    Serve(ServeArgs),
    /// Check a provider's settlement claims (claims.json from `cocoon-host
    /// settle`) against this account's receipts in the provider's ledger:
    /// signatures, the claim bodies byte for byte, caps, and the totals to
    /// the nanoton. Exits 1 on any discrepancy.
    Statement(StatementArgs),
    /// Write the body of a message to the payment contract for this
    /// account (a BOC to send to the contract): `deposit --contract C
    /// --owner W` (from any wallet; the value sent minus the 0.01 TON fee is
    /// credited, and the deposit that opens the account makes W, signed by
    /// the account key, the only wallet that can withdraw), withdrawals
    /// from W:
    /// `withdraw-request --amount N` (starts the notice period) or
    /// `withdraw-finish` (pays out after it, within one more notice period).
    PaymentMessage(PaymentMessageArgs),
    /// Deposit into a provider's payment contract from a wallet: builds
    /// the deposit (as payment-message does, signed by the account key),
    /// sends it from the wallet (v4r2) through the chain API, waits for it
    /// to land and prints the balance.
    Deposit(DepositArgs),
    /// This account's deposit in a provider's payment contract
    /// (`get_client`): balance, pending withdrawal, unlock time.
    Balance(ChainArgs),
}

#[derive(Args)]
struct PaymentMessageArgs {
    /// deposit, withdraw-request or withdraw-finish.
    kind: String,
    /// Account key file.
    #[arg(long, value_name = "FILE")]
    account_key: Option<PathBuf>,
    /// Nanoton to withdraw (withdraw-request).
    #[arg(long, value_name = "NANOTON")]
    amount: Option<u128>,
    /// The payment contract, raw form `0:<64 hex>` (deposit: the owner is
    /// signed for this contract only).
    #[arg(long, value_name = "ADDRESS")]
    contract: Option<String>,
    /// The wallet that may withdraw, raw form `wc:<64 hex>` (deposit). The
    /// deposit that opens the account names it, signed by the account key;
    /// it cannot be changed later.
    #[arg(long, value_name = "ADDRESS")]
    owner: Option<String>,
    /// The message's query_id.
    #[arg(long, default_value_t = 0)]
    query_id: u64,
    /// Where to write the BOC.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct StatementArgs {
    #[command(flatten)]
    common: Common,
    /// The claims manifest.
    #[arg(long, value_name = "FILE")]
    claims: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Common {
    /// The provider's host agent, e.g. https://provider.example:8443.
    /// Repeat it (chat, serve) to route between several providers, all
    /// verified under --policy. Or find providers with --registry.
    #[arg(long, value_name = "URL", required_unless_present = "registry")]
    provider: Vec<String>,
    /// Policy file (TOML) listing the reference values evidence must meet
    /// (with --provider).
    #[arg(long, value_name = "FILE", required_unless_present = "registry")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Account key file (hex P-256 scalar, mode 0600); created if missing.
    /// Default: $HOME/.config/cocoon/account.key
    #[arg(long, value_name = "FILE")]
    account_key: Option<PathBuf>,
    /// The most one request may cost, in nanoton (worst case at the
    /// provider's current prices); a dearer request is not sent.
    #[arg(long, value_name = "NANOTON")]
    max_price: Option<u128>,
    /// Budget per attested enclave, in nanoton: the cap of the payment
    /// authorization signed for its receipt key (providers that settle on
    /// chain refuse requests that could pass it; the contract never pays
    /// more).
    #[arg(long, value_name = "NANOTON", default_value_t = 1_000_000_000)]
    budget: u64,
}

/// Finding providers in the registry on chain (chat, serve).
#[derive(Args)]
struct RegistryArgs {
    /// The registry contract (raw `0:<64 hex>` or user-friendly form):
    /// providers are those it lists, and only enclaves of a release it
    /// lists as active are accepted (the policy is derived from the
    /// releases and these local rules). Instead of --provider/--policy.
    #[arg(long, value_name = "ADDRESS", conflicts_with_all = ["provider", "policy"], requires = "chain_api")]
    registry: Option<String>,
    /// The TON HTTP API (toncenter v2 compatible), e.g.
    /// https://toncenter.com/api/v2
    #[arg(long, value_name = "URL")]
    chain_api: Option<String>,
    /// File holding the chain API's key (sent as X-API-Key; allows 10
    /// requests a second instead of 1).
    #[arg(long, value_name = "FILE")]
    chain_api_key_file: Option<PathBuf>,
    /// Refuse the registry unless its code has this representation hash
    /// (64 hex).
    #[arg(long, value_name = "HEX", requires = "registry")]
    registry_code_hash: Option<String>,
    /// Rebuild the verified set this often (seconds): a release revoked on
    /// chain, a provider deregistered or no longer verifying, stops being
    /// used within it.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    refresh_secs: u64,
    /// DANGEROUS, tests and demos only: accept enclaves on the simulated
    /// TEE when an active release lists a simulated measurement. NOT
    /// confidential: the provider can read every prompt and answer.
    #[arg(long)]
    allow_simulated_tee: bool,
}

/// Reaching the chain (deposit, balance).
#[derive(Args)]
struct ChainArgs {
    /// The TON HTTP API (toncenter v2 compatible).
    #[arg(long, value_name = "URL")]
    chain_api: String,
    /// File holding the chain API's key (sent as X-API-Key).
    #[arg(long, value_name = "FILE")]
    chain_api_key_file: Option<PathBuf>,
    /// The provider's payment contract (raw or user-friendly form).
    #[arg(long, value_name = "ADDRESS")]
    payment: String,
    /// Account key file. Default: $HOME/.config/cocoon/account.key
    #[arg(long, value_name = "FILE")]
    account_key: Option<PathBuf>,
}

#[derive(Args)]
struct DepositArgs {
    #[command(flatten)]
    chain: ChainArgs,
    /// Nanoton to send (the contract keeps 0.01 TON of it as its fee).
    #[arg(long, value_name = "NANOTON")]
    amount: u128,
    /// The paying wallet's key (wallet v4r2; 32 raw bytes or 64 hex, mode
    /// 0600).
    #[arg(long, value_name = "FILE")]
    wallet_key: PathBuf,
    /// The wallet that may withdraw the deposit (fixed by the first
    /// deposit). Default: the paying wallet.
    #[arg(long, value_name = "ADDRESS")]
    owner: Option<String>,
    /// Longest wait for the wallet's message to land (seconds).
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    common: Common,
    /// Model to ask (default: the first model the verified evidence lists).
    #[arg(long)]
    model: Option<String>,
    /// Most completion tokens to generate and pay for.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// A system message sent before the question.
    #[arg(long)]
    system: Option<String>,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// The question.
    question: String,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on (port 0 picks a free port; the `ready` line on
    /// stderr names the real one).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Look at the provider's evidence again at most this often, before a
    /// request (seconds).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    evidence_refresh: u64,
    /// Completion-token limit for requests that name none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: u32,
    /// File holding the endpoint's API key, one line, mode 0600 (refused
    /// if group or others may read it); created with a new random key if
    /// missing. Default: api.key beside the account key
    /// ($HOME/.config/cocoon/api.key). Without this flag the
    /// COCOON_API_KEY environment variable, if set, is the key instead.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Also serve requests whose Host header names HOST (repeatable), e.g.
    /// a name this machine has on the network. Loopback addresses,
    /// localhost and the --listen address are always served; any other
    /// name is refused (421), which stops DNS rebinding.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Ignore unknown top-level fields in OpenAI requests (vendor extras)
    /// instead of refusing them with 400. Parameters the endpoint refuses
    /// by name (tools, response_format other than text, n > 1, ...) are
    /// refused either way.
    #[arg(long)]
    allow_unknown_fields: bool,
    /// Requests sent to the provider at once; more wait in the queue. The
    /// default is the host agent's default per-account stream limit.
    #[arg(long, default_value_t = cocoon_client::serve::ServeOptions::DEFAULT_MAX_STREAMS, value_name = "N")]
    max_streams: usize,
    /// Requests that may wait for one of the --max-streams; one more is
    /// answered 429 with Retry-After.
    #[arg(long, default_value_t = cocoon_client::serve::ServeOptions::DEFAULT_QUEUE, value_name = "N")]
    queue: usize,
}

/// The environment variable that may hold the endpoint's API key.
const API_KEY_ENV: &str = "COCOON_API_KEY";

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
    kind: &'static str,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EX_USAGE,
            message: message.into(),
            kind: "usage",
        }
    }
}

impl From<NetworkError> for Failure {
    fn from(e: NetworkError) -> Failure {
        let (code, kind) = match &e {
            NetworkError::Refused { source, .. } | NetworkError::AnswerFailed { source, .. } => {
                let f = Failure::from_client(source);
                (f.0, f.1)
            }
            NetworkError::NoProvider { .. } => (EX_FAILURE, "no_provider"),
            NetworkError::AllFailed { attempts } => {
                if attempts.iter().all(|(_, e)| e.is_unreachable()) {
                    (EX_UNAVAILABLE, "unreachable")
                } else {
                    (EX_FAILURE, "protocol")
                }
            }
            NetworkError::Directory(_) => (EX_UNAVAILABLE, "directory"),
            _ => (EX_FAILURE, "protocol"),
        };
        Failure {
            code,
            message: e.to_string(),
            kind,
        }
    }
}

impl Failure {
    fn from_client(e: &ClientError) -> (u8, &'static str) {
        if e.is_unreachable() {
            (EX_UNAVAILABLE, "unreachable")
        } else if e.is_verification_failure() {
            (EX_FAILURE, "verification")
        } else {
            (EX_FAILURE, "protocol")
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let (code, kind) = if e.is_unreachable() {
            (EX_UNAVAILABLE, "unreachable")
        } else if e.is_verification_failure() {
            (EX_FAILURE, "verification")
        } else {
            (EX_FAILURE, "protocol")
        };
        Failure {
            code,
            message: e.to_string(),
            kind,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a pipe
        // or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let (json_mode, result) = match cli.command {
        Command::Chat(a) => (a.json, chat(a).await),
        Command::Serve(a) => (false, serve(a).await),
        Command::Statement(a) => (a.json, statement(a).await),
        Command::PaymentMessage(a) => (false, payment_message(a)),
        Command::Deposit(a) => (false, deposit(a).await),
        Command::Balance(a) => (false, balance(a).await),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if json_mode {
                println!(
                    "{}",
                    json!({"error": {"message": f.message, "kind": f.kind}})
                );
            } else {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn default_account_path() -> Result<PathBuf, Failure> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".config/cocoon/account.key"))
        .ok_or_else(|| Failure::usage("HOME is not set: pass --account-key FILE"))
}

fn load_policy(path: &Path) -> Result<Policy, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("policy file {}: {e}", path.display())))?;
    Policy::from_toml(&text)
        .map_err(|e| Failure::usage(format!("policy file {}: {e}", path.display())))
}

fn load_account(common: &Common) -> Result<AccountKey, Failure> {
    let path = match &common.account_key {
        Some(p) => p.clone(),
        None => default_account_path()?,
    };
    let (account, created) = cocoon_client::load_or_create_account_key(&path)
        .map_err(|e| Failure::usage(e.to_string()))?;
    if created {
        eprintln!(
            "created a new account key in {} (keep it: it is who pays)",
            path.display()
        );
    }
    eprintln!("account {} ({})", account.id(), path.display());
    Ok(account)
}

fn check_url(u: &str) -> Result<reqwest::Url, Failure> {
    let url = reqwest::Url::parse(u).map_err(|e| Failure::usage(format!("--provider {u}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::usage(format!(
            "--provider {u}: must be an http:// or https:// URL"
        )));
    }
    Ok(url)
}

fn with_limits(common: &Common, mut options: ClientOptions) -> ClientOptions {
    options.max_request_nanoton = common.max_price;
    options.budget_nanoton = common.budget;
    options
}

/// The one-provider client (`statement`, and `chat`/`serve` with one
/// `--provider`).
fn setup(common: &Common, options: ClientOptions) -> Result<Client, Failure> {
    let [provider] = common.provider.as_slice() else {
        return Err(Failure::usage("this command takes exactly one --provider"));
    };
    let url = check_url(provider)?;
    let policy = load_policy(policy_path(common)?)?;
    let account = load_account(common)?;
    Ok(Client::with_options(
        url.as_str(),
        policy,
        account,
        with_limits(common, options),
    ))
}

fn policy_path(common: &Common) -> Result<&Path, Failure> {
    common
        .policy
        .as_deref()
        .ok_or_else(|| Failure::usage("--provider needs --policy FILE"))
}

/// Several `--provider`s, or `--registry`: the network client.
fn is_network(common: &Common) -> bool {
    common.provider.len() > 1 || common.registry.registry.is_some()
}

fn chain_client(url: &str, key_file: Option<&Path>) -> Result<Arc<TonHttpClient>, Failure> {
    ChainApiConfig::from_flags(url, key_file, None)
        .and_then(TonHttpClient::new)
        .map(Arc::new)
        .map_err(|e| Failure::usage(format!("--chain-api {url}: {e}")))
}

fn parse_address(flag: &str, v: &str) -> Result<ContractAddress, Failure> {
    ContractAddress::parse(v).map_err(|e| Failure::usage(format!("{flag} {v}: {e}")))
}

/// The network client over several `--provider`s (all under `--policy`)
/// or over the registry: verified, routed, failed over.
async fn setup_network(common: &Common, options: ClientOptions) -> Result<NetworkClient, Failure> {
    let r = &common.registry;
    let source: Arc<dyn TrustSource> = match &r.registry {
        Some(registry) => {
            let registry = parse_address("--registry", registry)?;
            let Some(api) = &r.chain_api else {
                return Err(Failure::usage("--registry needs --chain-api URL"));
            };
            let pin = match &r.registry_code_hash {
                None => None,
                Some(h) => Some(
                    hex::decode(h)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            Failure::usage("--registry-code-hash: expected 64 hex characters")
                        })?,
                ),
            };
            let chain = chain_client(api, r.chain_api_key_file.as_deref())?;
            let rules = LocalRules {
                allow_simulated: r.allow_simulated_tee,
                ..LocalRules::default()
            };
            if r.allow_simulated_tee {
                eprintln!("!!! --allow-simulated-tee: {SIMULATED_TEE_WARNING} !!!");
            }
            eprintln!(
                "registry        {registry}{}",
                if pin.is_some() {
                    " (code hash pinned)"
                } else {
                    " (code hash not pinned: --registry-code-hash)"
                }
            );
            Arc::new(RegistrySource::new(chain, registry, pin, rules))
        }
        None => {
            let mut urls = Vec::new();
            for u in &common.provider {
                urls.push(check_url(u)?.to_string());
            }
            Arc::new(StaticProviders::new(
                urls,
                load_policy(policy_path(common)?)?,
            ))
        }
    };
    let account = load_account(common)?;
    let refresh = Duration::from_secs(r.refresh_secs.max(1));
    let mut dir_options = DirectoryOptions::default();
    dir_options.refresh = refresh;
    dir_options.max_stale = refresh * 2;
    let dir = ProviderDirectory::new(source, account, with_limits(common, options), dir_options);
    let net = NetworkClient::new(Arc::new(dir), RouteConfig::default());
    let set = net.refresh().await.map_err(|e| Failure {
        code: EX_UNAVAILABLE,
        message: e.to_string(),
        kind: "directory",
    })?;
    print_set(&set);
    if set.providers.is_empty() {
        return Err(Failure {
            code: EX_FAILURE,
            message: "no provider verified; nothing was sent".into(),
            kind: "verification",
        });
    }
    Ok(net)
}

async fn deposit(a: DepositArgs) -> Result<(), Failure> {
    use cocoon_chain::wallet::{self, InternalMessage, WalletV4};
    let payment = parse_address("--payment", &a.chain.payment)?;
    let key_path = match &a.chain.account_key {
        Some(p) => p.clone(),
        None => default_account_path()?,
    };
    let account =
        cocoon_client::load_account_key(&key_path).map_err(|e| Failure::usage(e.to_string()))?;
    let wallet_key = wallet::load_key(&a.wallet_key).map_err(|e| Failure::usage(e.to_string()))?;
    let wallet = WalletV4::new(wallet_key.verifying_key().to_bytes());
    let owner = match &a.owner {
        Some(o) => parse_address("--owner", o)?,
        None => wallet.address(),
    };
    let pk: [u8; 65] = account
        .public_key_sec1()
        .try_into()
        .map_err(|_| Failure::usage("account key is not an uncompressed P-256 key"))?;
    let deposit_owner = DepositOwner {
        contract: payment,
        owner,
    };
    let signature = account.sign_deposit_owner(&deposit_owner);
    let body = cocoon_protocol::ton::deposit_body(0, &pk, &owner, &signature)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let chain = chain_client(&a.chain.chain_api, a.chain.chain_api_key_file.as_deref())?;
    let mut message = InternalMessage::transfer(payment, a.amount, true);
    message.body = Some(body);
    eprintln!(
        "depositing {} nanoton for account {} into {payment} from wallet {} (withdrawals go to {owner})",
        a.amount,
        account.id(),
        wallet.address()
    );
    let confirmed = cocoon_chain::wait::send_and_confirm(
        chain.as_ref(),
        &wallet,
        &wallet_key,
        &[message],
        Duration::from_secs(a.timeout.max(1)),
    )
    .await
    .map_err(|e| Failure {
        code: EX_UNAVAILABLE,
        message: format!("deposit: {e}"),
        kind: "chain",
    })?;
    println!(
        "sent: message {} (wallet seqno {}{}); the wallet's seqno moved past it",
        hex::encode(confirmed.message_hash),
        confirmed.seqno,
        if confirmed.deployed {
            ", wallet deployed"
        } else {
            ""
        }
    );
    print_balance(chain.as_ref(), &payment, &account).await
}

async fn balance(a: ChainArgs) -> Result<(), Failure> {
    let payment = parse_address("--payment", &a.payment)?;
    let key_path = match &a.account_key {
        Some(p) => p.clone(),
        None => default_account_path()?,
    };
    let account =
        cocoon_client::load_account_key(&key_path).map_err(|e| Failure::usage(e.to_string()))?;
    let chain = chain_client(&a.chain_api, a.chain_api_key_file.as_deref())?;
    print_balance(chain.as_ref(), &payment, &account).await
}

/// `get_client(account)` → `(exists, balance, pending, unlock_at)`
/// (contracts/README.md).
async fn print_balance(
    chain: &dyn ChainClient,
    payment: &ContractAddress,
    account: &AccountKey,
) -> Result<(), Failure> {
    let stack = chain
        .run_get_method(
            payment,
            "get_client",
            &[StackValue::Int(TvmInt::from_be_bytes(account.id().0))],
        )
        .await
        .map_err(|e| Failure {
            code: EX_UNAVAILABLE,
            message: format!("get_client on {payment}: {e}"),
            kind: "chain",
        })?;
    let ints: Vec<&TvmInt> = stack
        .iter()
        .filter_map(|v| match v {
            StackValue::Int(i) => Some(i),
            _ => None,
        })
        .collect();
    let [exists, balance, pending, unlock] = ints.as_slice() else {
        return Err(Failure {
            code: EX_FAILURE,
            message: format!("get_client on {payment}: expected 4 integers, got {stack:?}"),
            kind: "chain",
        });
    };
    let exists = exists.negative || exists.magnitude != [0; 32];
    let num = |v: &TvmInt, what: &str| {
        v.to_u128().ok_or_else(|| Failure {
            code: EX_FAILURE,
            message: format!("get_client: {what} out of range"),
            kind: "chain",
        })
    };
    if !exists {
        println!(
            "account {} has no deposit in {payment} (deposit with `cocoon-client deposit`)",
            account.id()
        );
        return Ok(());
    }
    let (balance, pending, unlock) = (
        num(balance, "balance")?,
        num(pending, "pending")?,
        num(unlock, "unlock time")?,
    );
    println!(
        "account {} in {payment}: balance {balance} nanoton, pending withdrawal {pending} nanoton{}",
        account.id(),
        if pending > 0 {
            format!(" (unlocks at {})", utc(u64::try_from(unlock).unwrap_or(u64::MAX)))
        } else {
            String::new()
        }
    );
    Ok(())
}

fn print_set(set: &ProviderSet) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(
        e,
        "providers       {} verified, {} left out (checked in {} ms)",
        set.providers.len(),
        set.rejected.len(),
        set.took.as_millis()
    );
    for p in &set.providers {
        let simulated = p
            .verified
            .enclaves()
            .iter()
            .any(|a| !a.platform().is_confidential());
        let _ = writeln!(
            e,
            "  ok   {} ({} enclave(s), models {}){}",
            p.id,
            p.verified.enclaves().len(),
            p.verified.models().join(", "),
            if simulated {
                format!(" !!! {SIMULATED_TEE_WARNING} !!!")
            } else {
                String::new()
            }
        );
    }
    for (id, why) in &set.rejected {
        let first = why.lines().next().unwrap_or("");
        let _ = writeln!(e, "  out  {id}: {first}");
    }
}

fn enclave_json(e: &AttestedEnclave) -> Value {
    let c = e.claims();
    json!({
        "platform": e.platform().as_str(),
        "confidential": e.platform().is_confidential(),
        "image_id": c.image_id,
        "models": c.model_digests.iter().map(|m| json!({"name": m.name, "sha256": hex::encode(m.sha256)})).collect::<Vec<_>>(),
        "evidence_digest": hex::encode(e.evidence_digest().as_bytes()),
        "receipt_public_key": hex::encode(e.receipt_public_key()),
        "config_digest": hex::encode(c.config_digest),
        "gpu_evidence_digest": c.gpu_evidence_digest.map(hex::encode),
        "epoch": c.epoch,
    })
}

fn print_verified(client: &Client, p: &VerifiedProvider) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "provider        {}", client.provider());
    let _ = writeln!(e, "policy release  {}", p.release());
    let _ = writeln!(
        e,
        "verified        {} of {} enclave(s) at {}",
        p.enclaves().len(),
        p.enclaves().len() + p.rejected().len(),
        utc(p.verified_at().0)
    );
    for a in p.enclaves() {
        let c = a.claims();
        let _ = writeln!(e, "enclave #{}", a.bundle_index());
        let _ = writeln!(e, "  platform        {}", a.platform());
        if !a.platform().is_confidential() {
            let _ = writeln!(e, "  !!! {SIMULATED_TEE_WARNING} !!!");
        }
        let _ = writeln!(e, "  image_id        {}", c.image_id);
        for m in &c.model_digests {
            let _ = writeln!(
                e,
                "  model           {} (sha256 {})",
                m.name,
                hex::encode(m.sha256)
            );
        }
        let _ = writeln!(
            e,
            "  evidence digest {}",
            hex::encode(a.evidence_digest().as_bytes())
        );
        let _ = writeln!(
            e,
            "  receipt key     {}",
            hex::encode(a.receipt_public_key())
        );
        let _ = writeln!(e, "  config digest   {}", hex::encode(c.config_digest));
        let _ = writeln!(
            e,
            "  gpu evidence    {}",
            c.gpu_evidence_digest
                .map(hex::encode)
                .unwrap_or_else(|| "none".into())
        );
        let _ = writeln!(e, "  epoch           {}", c.epoch);
    }
    for r in p.rejected() {
        let _ = writeln!(e, "{r}");
    }
}

fn receipt_json(c: &Completed) -> Value {
    let r = &c.receipt;
    json!({
        "request_id": r.request_id.to_string(),
        "model": r.model,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.total_tokens,
        "cached_tokens": r.cached_tokens,
        "unit_price_nanoton": {"prompt": r.unit_price.prompt, "cached": r.unit_price.cached, "completion": r.unit_price.completion},
        "multiplier_milli": r.multiplier_milli,
        "charge_nanoton": r.charge_nanoton().map(|n| n.to_string()),
        "enclave_seq": r.enclave_seq,
        "time": r.time,
        "client_account": hex::encode(r.client_account),
        "signature_verified_with_attested_key": true,
        "cose_sign1_base64": base64::engine::general_purpose::STANDARD.encode(&c.receipt_bytes),
    })
}

fn print_receipt(c: &Completed) {
    let r = &c.receipt;
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "receipt");
    let _ = writeln!(e, "  request id      {}", r.request_id);
    let _ = writeln!(e, "  model           {}", r.model);
    let _ = writeln!(
        e,
        "  tokens          prompt {}, completion {}, total {}",
        r.prompt_tokens, r.completion_tokens, r.total_tokens
    );
    let _ = writeln!(
        e,
        "  prices          prompt {} / cached {} / completion {} nanoton per token (load multiplier {}.{:03}x)",
        r.unit_price.prompt,
        r.unit_price.cached,
        r.unit_price.completion,
        r.multiplier_milli / 1000,
        r.multiplier_milli % 1000
    );
    let _ = writeln!(
        e,
        "  charge          {} nanoton",
        r.charge_nanoton()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "overflow".into())
    );
    let _ = writeln!(e, "  enclave_seq     {}", r.enclave_seq);
    let _ = writeln!(e, "  time            {} ({})", r.time, utc(r.time));
    let _ = writeln!(e, "  finish          {}", finish_text(&c.finish));
    let _ = writeln!(e, "  signature verified with the attested receipt key");
}

fn finish_text(f: &FinishReason) -> String {
    match f {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length (max tokens reached)".into(),
        FinishReason::Refused { code, message } => {
            format!("refused ({code}, nothing charged): {message}")
        }
        FinishReason::Failed(m) => format!("failed (nothing charged): {m}"),
        _ => "unknown".into(),
    }
}

fn payment_message(a: PaymentMessageArgs) -> Result<(), Failure> {
    use cocoon_protocol::ton;
    let path = match &a.account_key {
        Some(p) => p.clone(),
        None => default_account_path()?,
    };
    let key = cocoon_client::load_account_key(&path).map_err(|e| Failure::usage(e.to_string()))?;
    let id = key.id().0;
    let body = match a.kind.as_str() {
        "deposit" => {
            let pk: [u8; 65] = key
                .public_key_sec1()
                .try_into()
                .map_err(|_| Failure::usage("account key is not an uncompressed P-256 key"))?;
            let address = |flag: &str, v: &Option<String>| {
                let v = v
                    .as_deref()
                    .ok_or_else(|| Failure::usage(format!("deposit needs {flag} ADDRESS")))?;
                ContractAddress::parse_raw(v).map_err(|e| Failure::usage(format!("{flag}: {e}")))
            };
            let owner = DepositOwner {
                contract: address("--contract", &a.contract)?,
                owner: address("--owner", &a.owner)?,
            };
            let signature = key.sign_deposit_owner(&owner);
            ton::deposit_body(a.query_id, &pk, &owner.owner, &signature)
        }
        "withdraw-request" => {
            let amount = a
                .amount
                .ok_or_else(|| Failure::usage("withdraw-request needs --amount NANOTON"))?;
            ton::client_withdraw_request_body(a.query_id, id, amount)
        }
        "withdraw-finish" => ton::client_withdraw_finish_body(a.query_id, id),
        other => {
            return Err(Failure::usage(format!(
                "{other:?}: expected deposit, withdraw-request or withdraw-finish"
            )))
        }
    }
    .map_err(|e| Failure::usage(e.to_string()))?;
    std::fs::write(&a.out, body.to_boc())
        .map_err(|e| Failure::usage(format!("{}: {e}", a.out.display())))?;
    println!(
        "{} message for account {} written to {} ({} bytes); send it to the provider's payment contract (a deposit from any wallet; a withdrawal from the owner the first deposit named)",
        a.kind,
        hex::encode(id),
        a.out.display(),
        body.to_boc().len()
    );
    Ok(())
}

async fn statement(a: StatementArgs) -> Result<(), Failure> {
    use cocoon_client::statement;
    let client = setup(&a.common, ClientOptions::default())?;
    let text = std::fs::read_to_string(&a.claims)
        .map_err(|e| Failure::usage(format!("claims file {}: {e}", a.claims.display())))?;
    let claims = statement::parse_manifest(&text).map_err(|e| Failure {
        code: EX_FAILURE,
        message: e,
        kind: "statement",
    })?;
    let mut receipts = Vec::new();
    let mut after = 0;
    loop {
        let page = client.receipts(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.ledger_seq;
        receipts.extend(page);
    }
    let checks = statement::check(
        &claims,
        &client.account_id(),
        &client.account_public_key(),
        &receipts,
    );
    let bad = checks.iter().filter(|c| !c.ok()).count();
    if a.json {
        let list: Vec<Value> = checks
            .iter()
            .map(|c| {
                json!({
                    "enclave_key": hex::encode(c.claim.enclave_key),
                    "count": c.claim.count,
                    "total": c.claim.total.to_string(),
                    "amount": c.claim.amount.to_string(),
                    "cap": c.claim.authorization.auth.cap.to_string(),
                    "receipts": c.receipts,
                    "receipts_nanoton": c.nanoton.to_string(),
                    "uncounted_receipts": c.uncounted(),
                    "ok": c.ok(),
                    "problems": c.problems,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"account": client.account_id().to_string(), "receipts": receipts.len(), "claims": list, "ok": bad == 0})
        );
    } else {
        println!(
            "account {}: {} receipt(s) in the provider's ledger, {} claim(s) on this account",
            client.account_id(),
            receipts.len(),
            checks.len()
        );
        for c in &checks {
            println!(
                "claim key {}: tab {} receipts / {} nanoton (cap {}), pays {} now; your receipts under that key: {} / {} nanoton{}: {}",
                hex::encode(&c.claim.enclave_key[..8]),
                c.claim.count,
                c.claim.total,
                c.claim.authorization.auth.cap,
                c.claim.amount,
                c.receipts,
                c.nanoton,
                if c.uncounted() > 0 {
                    format!(" ({} not counted yet)", c.uncounted())
                } else {
                    String::new()
                },
                if c.ok() { "OK".to_string() } else { format!("DISCREPANCY: {}", c.problems.join("; ")) }
            );
        }
    }
    if bad > 0 {
        return Err(Failure {
            code: EX_FAILURE,
            message: format!("{bad} claim(s) do not match this account's receipts"),
            kind: "statement",
        });
    }
    Ok(())
}

async fn chat(a: ChatArgs) -> Result<(), Failure> {
    let network = if is_network(&a.common) {
        Some(setup_network(&a.common, ClientOptions::default()).await?)
    } else {
        None
    };
    let (client, models, simulated) = match &network {
        Some(net) => {
            let set = net.providers();
            let simulated = set
                .providers
                .iter()
                .flat_map(|p| p.verified.enclaves())
                .any(|e| !e.platform().is_confidential());
            (None, set.models(), simulated)
        }
        None => {
            let client = setup(&a.common, ClientOptions::default())?;
            let provider = client.verify().await?;
            let simulated = provider
                .enclaves()
                .iter()
                .any(|e| !e.platform().is_confidential());
            if !a.json {
                print_verified(&client, &provider);
            }
            let models = provider.models();
            (Some(client), models, simulated)
        }
    };
    if a.json && simulated {
        eprintln!("!!! {SIMULATED_TEE_WARNING} !!!");
    }
    // Without --model: the listed models in turn, until one takes a chat.
    // The claims do not say which models chat; an enclave refuses the wrong
    // kind before running anything and charges nothing for it.
    let explicit = a.model.is_some();
    let candidates: Vec<String> = match a.model {
        Some(m) => vec![m],
        None if models.is_empty() => {
            return Err(Failure {
                code: EX_FAILURE,
                message: "the verified enclaves serve no model".into(),
                kind: "protocol",
            })
        }
        None => models,
    };
    let mut messages = Vec::new();
    if let Some(s) = a.system {
        messages.push(ChatMessage {
            role: Role::System,
            content: s,
        });
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: a.question,
    });
    let mut tries = candidates.into_iter().peekable();
    let (model, mut stream, provider, first) = loop {
        let Some(model) = tries.next() else {
            return Err(Failure {
                code: EX_FAILURE,
                message: "none of the verified enclaves' models is a chat model".into(),
                kind: "protocol",
            });
        };
        let (mut stream, provider): (ResponseStream, String) = match (&client, &network) {
            (Some(c), _) => (
                c.chat(&model, messages.clone(), a.max_tokens).await?,
                c.provider().to_string(),
            ),
            (None, Some(net)) => {
                let routed = net.chat(&model, messages.clone(), a.max_tokens).await?;
                for (p, e) in &routed.failed {
                    eprintln!("provider {p} did not take the request: {e}");
                }
                if !a.json {
                    eprintln!(
                        "provider        {} (chosen by the routing rule)",
                        routed.provider
                    );
                }
                (routed.value, routed.provider.to_string())
            }
            (None, None) => unreachable!("one of the two is set"),
        };
        let first = stream
            .next()
            .await
            .map_err(|e| Failure::from(ClientError::from(e)))?;
        let wrong_kind = matches!(
            &first,
            Some(ResponsePart::Completed(c)) if matches!(
                c.finish,
                FinishReason::Refused { code: RefusalCode::ModelKindMismatch, .. }
            )
        );
        if wrong_kind && !explicit && tries.peek().is_some() {
            if !a.json {
                eprintln!("model           {model} does not chat (refused, charged nothing); trying the next");
            }
            continue;
        }
        if !explicit && !a.json {
            eprintln!("model           {model} (the first listed that chats; choose with --model)");
        }
        break (model, stream, provider, first);
    };
    let enclave = stream.enclave().clone();
    let mut answer = String::new();
    let mut out = std::io::stdout();
    let mut first = Some(first);
    let completed = loop {
        let part = match first.take() {
            Some(part) => part,
            None => stream.next().await.map_err(|e| {
                if !a.json && !answer.is_empty() {
                    println!();
                }
                Failure::from(ClientError::from(e))
            })?,
        };
        match part {
            Some(ResponsePart::Text(t)) => {
                if !a.json {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
                answer.push_str(&t);
            }
            Some(ResponsePart::Completed(c)) => break *c,
            Some(_) => {}
            None => {
                return Err(Failure::from(ClientError::from(
                    cocoon_client::ResponseError::Ended,
                )))
            }
        }
    };
    if a.json {
        println!(
            "{}",
            json!({
                "provider": provider,
                "enclave": enclave_json(&enclave),
                "model": model,
                "answer": answer,
                "finish": completed.finish.as_str(),
                "usage": {
                    "prompt_tokens": completed.usage.prompt_tokens,
                    "completion_tokens": completed.usage.completion_tokens,
                    "total_tokens": completed.usage.total_tokens,
                },
                "evidence_digest": hex::encode(completed.evidence_digest.as_bytes()),
                "receipt": receipt_json(&completed),
            })
        );
    } else {
        if !answer.ends_with('\n') {
            println!();
        }
        print_receipt(&completed);
    }
    if let Some(m) = completed.finish.error_message() {
        return Err(Failure {
            code: EX_FAILURE,
            message: format!("the enclave could not serve the request: {m}"),
            kind: "enclave",
        });
    }
    Ok(())
}

/// The endpoint's API key and a sentence saying where it is kept.
fn api_key(a: &ServeArgs) -> Result<(BearerToken, String), Failure> {
    let from_file = |path: PathBuf| {
        let (key, created) = cocoon_client::load_or_create_api_key(&path)
            .map_err(|e| Failure::usage(e.to_string()))?;
        let verb = if created {
            "created a new API key in"
        } else {
            "API key in"
        };
        Ok((key, format!("{verb} {}", path.display())))
    };
    if let Some(path) = &a.api_key_file {
        return from_file(path.clone());
    }
    if let Some(v) = std::env::var_os(API_KEY_ENV).filter(|v| !v.is_empty()) {
        let text = v
            .into_string()
            .map_err(|_| Failure::usage(format!("{API_KEY_ENV} is not valid text")))?;
        let key =
            BearerToken::parse(&text).map_err(|e| Failure::usage(format!("{API_KEY_ENV}: {e}")))?;
        return Ok((
            key,
            format!("API key from the {API_KEY_ENV} environment variable"),
        ));
    }
    let account = match &a.common.account_key {
        Some(p) => p.clone(),
        None => default_account_path()?,
    };
    let dir = account.parent().unwrap_or_else(|| Path::new(""));
    from_file(dir.join("api.key"))
}

async fn serve(a: ServeArgs) -> Result<(), Failure> {
    let (key, key_place) = api_key(&a)?;
    let mut options = ClientOptions::default();
    options.evidence_refresh = Duration::from_secs(a.evidence_refresh);
    let (backend, _refresher): (Backend, _) = if is_network(&a.common) {
        let net = setup_network(&a.common, options).await?;
        let task = net.spawn_refresh();
        (net.into(), Some(task))
    } else {
        let client = setup(&a.common, options)?;
        let provider = client.verify().await?;
        print_verified(&client, &provider);
        (client.into(), None)
    };
    if !a.listen.ip().is_loopback() {
        eprintln!(
            "WARNING: listening on {}: the API key travels in clear over plain HTTP; anyone who can reach it and sniff or guess the key can send requests paid by this account",
            a.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Failure {
            code: EX_FAILURE,
            message: format!("cannot listen on {}: {e}", a.listen),
            kind: "listen",
        })?;
    let addr = listener.local_addr().map_err(|e| Failure {
        code: EX_FAILURE,
        message: format!("listener address: {e}"),
        kind: "listen",
    })?;
    let mut serve_options = ServeOptions::new(key);
    serve_options.default_max_tokens = a.default_max_tokens;
    serve_options.allow_unknown_fields = a.allow_unknown_fields;
    serve_options.max_streams = a.max_streams.max(1);
    serve_options.queue = a.queue;
    let mut hosts = AllowedHosts::loopback().with(&addr.ip().to_string());
    for h in &a.allow_hosts {
        hosts = hosts.with(h);
    }
    serve_options.allowed_hosts = hosts;
    eprintln!(
        "{key_place}; send it as `Authorization: Bearer <key>` (OpenAI clients: api_key, or OPENAI_API_KEY)"
    );
    eprintln!("ready listen={addr}");
    cocoon_client::serve::run(listener, backend, serve_options, shutdown_signal())
        .await
        .map_err(|e| Failure {
            code: EX_FAILURE,
            message: format!("serving: {e}"),
            kind: "listen",
        })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("shutting down");
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, UTC).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
