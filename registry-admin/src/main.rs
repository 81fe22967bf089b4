//! `cocoon-registry`: the registry owner's governance tool. See the crate
//! documentation (`cocoon_registry_admin`) for how every change is checked
//! before it is sent and confirmed after.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cocoon_chain::{ChainApiConfig, ChainClient, TonHttpClient};
use cocoon_protocol::registry::{ProviderEntry, RegistryInfo, Release};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_registry_admin::{
    self as admin, exit, AdminError, DeployParams, Outcome, Registry, Sender, Wallet,
};

const AFTER_HELP: &str = "\
Every change is sent from --wallet-key's wallet (wallet v4r2; fund it first:
`cocoon-registry wallet --wallet-key F` prints its address), after reading the
registry to refuse locally what the contract would refuse, and is reported
done only once the registry's state, read again, shows it. A change the
registry already shows is not sent again (exit 0, \"unchanged\").

Exit status: 0 done (or nothing to do); 1 the registry refused, or the request
contradicts its state (a revoked release listed again, an unknown release),
or the wallet cannot pay; 2 bad command line; 64 a flag's value is not
acceptable; 65 the manifest is not canonical; 66 a file cannot be read;
69 the chain API cannot be reached; 75 sent but not confirmed in time (rerun:
it finds out); 76 the chain API or the registry answered something malformed;
77 the wallet is not the owner (or not the proposed owner).";

/// The Cocoon registry owner's governance tool: deploy the registry, list
/// and revoke releases, set the network fee, hand ownership over, and show
/// what the registry lists.
#[derive(Debug, Parser)]
#[command(name = "cocoon-registry", version, after_help = AFTER_HELP)]
struct Cli {
    /// The TON HTTP API (toncenter-compatible, v2), e.g.
    /// `https://toncenter.com/api/v2`.
    #[arg(long, global = true, value_name = "URL")]
    chain_api: Option<String>,
    /// File holding the chain API's key (sent as X-API-Key; one line,
    /// mode 0600).
    #[arg(long, global = true, value_name = "FILE")]
    chain_api_key_file: Option<PathBuf>,
    /// Requests per second to the chain API [default: 1 without a key, as
    /// the public API allows; 10 with one; 0: no limit].
    #[arg(long, global = true, value_name = "RATE")]
    chain_api_rps: Option<f64>,
    /// Seconds to wait for the wallet's message, and then for the registry
    /// to show the change.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS")]
    wait_secs: u64,
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct WalletArg {
    /// The owner's wallet key (wallet v4r2): a file of the 32-byte ed25519
    /// seed, raw or as 64 hex characters, mode 0600.
    #[arg(long, value_name = "FILE")]
    wallet_key: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RegistryArg {
    /// The registry contract (raw 0:<64 hex> or user-friendly).
    #[arg(long, value_name = "ADDR")]
    registry: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Deploys a registry owned by the wallet (its address follows from
    /// the code and the settings: a rerun finds it and checks it). Prints
    /// the address.
    Deploy {
        #[command(flatten)]
        wallet: WalletArg,
        /// Where every payment contract pays the network fee.
        #[arg(long, value_name = "ADDR")]
        treasury: String,
        /// The network fee registrations must carry, in basis points
        /// (0 to 1000).
        #[arg(long, value_name = "N")]
        fee_bps: u16,
        /// Nanoton a provider stakes to register (returned when it
        /// deregisters).
        #[arg(long, value_name = "NANOTON")]
        stake: u128,
        /// The registry's code, a bag of cells [default: the committed
        /// build, contracts/build/cocoon_registry.boc, built in].
        #[arg(long, value_name = "FILE")]
        code: Option<PathBuf>,
        /// The payment contract's code, whose hash and depth the registry
        /// keeps [default: contracts/build/cocoon_payment.boc, built in].
        #[arg(long, value_name = "FILE")]
        payment_code: Option<PathBuf>,
        /// Nanoton left in the registry for its storage and gas.
        #[arg(long, value_name = "NANOTON", default_value_t = admin::DEFAULT_DEPLOY_VALUE)]
        value: u128,
    },
    /// Lists a release: the canonical release manifest's SHA-256 and its
    /// measurement digests (a file that is not the canonical encoding is
    /// refused).
    AddRelease {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
        /// The release manifest (release-manifest.json, as `cocoon-measure
        /// manifest` writes it).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
    },
    /// Revokes a release: clients stop accepting its enclaves at their
    /// next refresh. It stays listed as revoked and cannot come back.
    RevokeRelease {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
        /// The release's manifest hash (64 hex characters).
        #[arg(long, value_name = "HEX")]
        hash: String,
    },
    /// Sets the network fee later registrations carry (deployed payment
    /// contracts keep the fee they were deployed with).
    SetFee {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
        /// Basis points, 0 to 1000.
        #[arg(long, value_name = "N")]
        fee_bps: u16,
    },
    /// Proposes a new owner (step one of two; it must accept).
    ProposeOwner {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
        /// The proposed owner's wallet.
        #[arg(long, value_name = "ADDR")]
        new_owner: String,
    },
    /// Accepts ownership, from the proposed owner's wallet (step two).
    AcceptOwner {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Withdraws an ownership proposal not accepted yet.
    CancelOwnerTransfer {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// For providers: deploys, from the provider's wallet, the payment
    /// contract this registry accepts for it (the registry's payment code,
    /// treasury and fee; the wallet as provider). Prints its address;
    /// register it with `cocoon-host register`.
    DeployPayment {
        #[command(flatten)]
        wallet: WalletArg,
        #[command(flatten)]
        registry: RegistryArg,
        /// Notice period of clients' withdrawals, seconds.
        #[arg(long, value_name = "SECS", default_value_t = admin::DEFAULT_WITHDRAW_DELAY)]
        withdraw_delay_secs: u32,
        /// The payment contract's code [default: contracts/build/cocoon_payment.boc,
        /// built in]; must be the code the registry names.
        #[arg(long, value_name = "FILE")]
        payment_code: Option<PathBuf>,
        /// Nanoton left in the contract for its storage and gas.
        #[arg(long, value_name = "NANOTON", default_value_t = admin::DEFAULT_PAYMENT_DEPLOY_VALUE)]
        value: u128,
    },
    /// Shows the registry: owner, treasury, fee, stake, the releases with
    /// their status, and the providers.
    Show {
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Prints the wallet of a key (the address to fund), its balance and
    /// status.
    Wallet {
        #[command(flatten)]
        wallet: WalletArg,
    },
}

/// A failure with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: exit::USAGE,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn address(flag: &str, s: &str) -> Result<ContractAddress, Failure> {
    ContractAddress::parse(s.trim()).map_err(|e| usage(format!("{flag} {s:?}: {e}")))
}

fn chain(cli: &Cli) -> Result<Arc<dyn ChainClient>, Failure> {
    let Some(url) = &cli.chain_api else {
        return Err(usage("--chain-api URL is needed (the TON HTTP API v2)"));
    };
    let config =
        ChainApiConfig::from_flags(url, cli.chain_api_key_file.as_deref(), cli.chain_api_rps)
            .map_err(|e| usage(e.to_string()))?;
    let client = TonHttpClient::new(config).map_err(|e| usage(format!("--chain-api: {e}")))?;
    Ok(Arc::new(client))
}

fn wallet(w: &WalletArg) -> Result<Wallet, Failure> {
    let key = cocoon_chain::wallet::load_key(&w.wallet_key).map_err(|e| Failure {
        code: if w.wallet_key.exists() {
            exit::USAGE
        } else {
            exit::NOINPUT
        },
        message: e.to_string(),
    })?;
    Ok(Wallet::new(key))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure {
        code: exit::NOINPUT,
        message: format!("{what} {}: {e}", path.display()),
    })
}

fn code(
    path: &Option<PathBuf>,
    built_in: &[u8],
    what: &str,
) -> Result<cocoon_protocol::ton::Cell, Failure> {
    let bytes = match path {
        Some(p) => read_file(p, what)?,
        None => built_in.to_vec(),
    };
    Ok(admin::code_from_boc(&bytes, what)?)
}

fn hash_arg(s: &str) -> Result<[u8; 32], Failure> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut h)
        .map_err(|_| usage(format!("--hash {s:?}: expected 64 hex characters")))?;
    Ok(h)
}

fn word<T>(o: &Outcome<T>) -> &'static str {
    if o.changed() {
        "done"
    } else {
        "unchanged (the registry already shows it; nothing sent)"
    }
}

fn print_info(info: &RegistryInfo) {
    println!("owner           {}", info.owner);
    println!(
        "pending owner   {}",
        info.pending_owner
            .map_or_else(|| "none".to_string(), |a| a.to_string())
    );
    println!("treasury        {}", info.treasury);
    println!(
        "fee             {} bps ({}.{:02}%)",
        info.fee_bps,
        info.fee_bps / 100,
        info.fee_bps % 100
    );
    println!("stake           {} nanoton", info.stake);
    println!(
        "payment code    {} (depth {})",
        hex::encode(info.payment_code_hash),
        info.payment_code_depth
    );
    println!(
        "listed          {} releases, {} providers",
        info.release_count, info.provider_count
    );
}

fn print_release(r: &Release) {
    let status = if r.is_active() {
        "active".to_string()
    } else {
        format!("revoked at {}", r.revoked_at)
    };
    println!(
        "release {}  {status}  added at {}",
        hex::encode(r.manifest_hash),
        r.added_at
    );
    for (p, d) in &r.measurements {
        println!(
            "    {:<9} measurement digest {}",
            admin::platform_name(*p),
            hex::encode(d)
        );
    }
}

fn print_provider(p: &ProviderEntry) {
    println!("provider {}  {}", p.owner, p.endpoint);
    println!(
        "    payment {}  stake {} nanoton  registered {}  updated {}",
        p.payment, p.stake, p.registered_at, p.updated_at
    );
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let chain = chain(&cli)?;
    let sender = Sender::new(chain.clone(), Duration::from_secs(cli.wait_secs.max(1)));
    let registry_of = |r: &RegistryArg| -> Result<Registry, Failure> {
        Ok(Registry::new(
            chain.clone(),
            address("--registry", &r.registry)?,
        ))
    };
    let json = cli.json;
    match &cli.cmd {
        Cmd::Deploy {
            wallet: w,
            treasury,
            fee_bps,
            stake,
            code: code_path,
            payment_code,
            value,
        } => {
            let owner = wallet(w)?;
            let p = DeployParams {
                treasury: address("--treasury", treasury)?,
                fee_bps: *fee_bps,
                stake: *stake,
                code: code(code_path, admin::REGISTRY_CODE_BOC, "--code")?,
                payment_code: code(payment_code, admin::PAYMENT_CODE_BOC, "--payment-code")?,
                value: *value,
            };
            let (at, outcome) = admin::deploy(&sender, &owner, &p).await?;
            if json {
                let mut v = admin::show_json(&at, outcome.value(), &[], &[]);
                v["changed"] = outcome.changed().into();
                v["code_hash"] = hex::encode(p.code.hash()).into();
                println!("{v}");
            } else {
                println!("registry        {at}");
                println!("                {}", at.to_friendly(true, false));
                println!("code            {}", hex::encode(p.code.hash()));
                print_info(outcome.value());
                println!("deploy: {}", word(&outcome));
            }
        }
        Cmd::AddRelease {
            wallet: w,
            registry,
            manifest,
        } => {
            let owner = wallet(w)?;
            let registry = registry_of(registry)?;
            let bytes = read_file(manifest, "--manifest")?;
            let release = admin::release_of_manifest(&bytes).map_err(|e| Failure {
                code: e.exit_code(),
                message: format!(
                    "--manifest {}: {e} (list the file exactly as `cocoon-measure manifest` wrote it)",
                    manifest.display()
                ),
            })?;
            let outcome = admin::add_release(&sender, &owner, &registry, &release).await?;
            report_release(json, &outcome, "add-release");
        }
        Cmd::RevokeRelease {
            wallet: w,
            registry,
            hash,
        } => {
            let owner = wallet(w)?;
            let registry = registry_of(registry)?;
            let hash = hash_arg(hash)?;
            let outcome = admin::revoke_release(&sender, &owner, &registry, &hash).await?;
            report_release(json, &outcome, "revoke-release");
        }
        Cmd::SetFee {
            wallet: w,
            registry,
            fee_bps,
        } => {
            let owner = wallet(w)?;
            let registry = registry_of(registry)?;
            let outcome = admin::set_fee(&sender, &owner, &registry, *fee_bps).await?;
            report_info(json, &registry, &outcome, "set-fee");
        }
        Cmd::ProposeOwner {
            wallet: w,
            registry,
            new_owner,
        } => {
            let owner = wallet(w)?;
            let registry = registry_of(registry)?;
            let new_owner = address("--new-owner", new_owner)?;
            let outcome = admin::propose_owner(&sender, &owner, &registry, &new_owner).await?;
            report_info(json, &registry, &outcome, "propose-owner");
        }
        Cmd::AcceptOwner {
            wallet: w,
            registry,
        } => {
            let me = wallet(w)?;
            let registry = registry_of(registry)?;
            let outcome = admin::accept_owner(&sender, &me, &registry).await?;
            report_info(json, &registry, &outcome, "accept-owner");
        }
        Cmd::CancelOwnerTransfer {
            wallet: w,
            registry,
        } => {
            let owner = wallet(w)?;
            let registry = registry_of(registry)?;
            let outcome = admin::cancel_owner_transfer(&sender, &owner, &registry).await?;
            report_info(json, &registry, &outcome, "cancel-owner-transfer");
        }
        Cmd::DeployPayment {
            wallet: w,
            registry,
            withdraw_delay_secs,
            payment_code,
            value,
        } => {
            let provider = wallet(w)?;
            let registry = registry_of(registry)?;
            let code = code(payment_code, admin::PAYMENT_CODE_BOC, "--payment-code")?;
            let outcome = admin::deploy_payment(
                &sender,
                &provider,
                &registry,
                &code,
                *withdraw_delay_secs,
                *value,
            )
            .await?;
            let p = outcome.value();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "changed": outcome.changed(),
                        "payment": p.address.to_string(),
                        "provider": provider.address().to_string(),
                        "treasury": p.treasury.to_string(),
                        "fee_bps": p.fee_bps,
                        "withdraw_delay": p.withdraw_delay,
                    })
                );
            } else {
                println!("payment         {}", p.address);
                println!("                {}", p.address.to_friendly(true, false));
                println!("provider        {}", provider.address());
                println!("treasury        {}  fee {} bps", p.treasury, p.fee_bps);
                println!("withdraw delay  {} s", p.withdraw_delay);
                println!("deploy-payment: {}", word(&outcome));
            }
        }
        Cmd::Show { registry } => {
            let registry = registry_of(registry)?;
            let info = registry.info().await?;
            let releases = registry.releases().await?;
            let providers = registry.providers().await?;
            if json {
                println!(
                    "{}",
                    admin::show_json(registry.address(), &info, &releases, &providers)
                );
            } else {
                println!("registry        {}", registry.address());
                print_info(&info);
                for r in &releases {
                    print_release(r);
                }
                for p in &providers {
                    print_provider(p);
                }
            }
        }
        Cmd::Wallet { wallet: w } => {
            let me = wallet(w)?;
            let at = me.address();
            let state = chain.account_state(&at).await.map_err(AdminError::from)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "address": at.to_string(),
                        "friendly": at.to_friendly(false, false),
                        "balance": state.balance.to_string(),
                        "status": format!("{:?}", state.status),
                    })
                );
            } else {
                println!("wallet          {at}");
                println!(
                    "                {} (non-bounceable, to fund it)",
                    at.to_friendly(false, false)
                );
                println!("balance         {} nanoton", state.balance);
                println!("status          {:?}", state.status);
            }
        }
    }
    Ok(())
}

fn report_release(json: bool, outcome: &Outcome<Release>, what: &str) {
    let r = outcome.value();
    if json {
        let v = serde_json::json!({
            "changed": outcome.changed(),
            "manifest_hash": hex::encode(r.manifest_hash),
            "status": if r.is_active() { "active" } else { "revoked" },
            "added_at": r.added_at,
            "revoked_at": r.revoked_at,
            "measurements": r.measurements.iter().map(|(p, d)| serde_json::json!({
                "platform": admin::platform_name(*p),
                "digest": hex::encode(d),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        print_release(r);
        println!("{what}: {}", word(outcome));
    }
}

fn report_info(json: bool, registry: &Registry, outcome: &Outcome<RegistryInfo>, what: &str) {
    if json {
        let mut v = admin::show_json(registry.address(), outcome.value(), &[], &[]);
        if let Some(o) = v.as_object_mut() {
            o.remove("releases");
            o.remove("providers");
            o.insert("changed".into(), outcome.changed().into());
        }
        println!("{v}");
    } else {
        println!("registry        {}", registry.address());
        print_info(outcome.value());
        println!("{what}: {}", word(outcome));
    }
}
