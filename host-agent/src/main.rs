//! `cocoon-host`: the provider daemon's command line.
//!
//! Reads the config file and the verifier policy, applies the flags on top,
//! binds both listeners, starts the service, prints
//! `ready listen=<addr> admin=<addr>` to stderr once it listens and an
//! enclave's evidence verified, drains on SIGTERM/SIGINT and exits 0.
//!
//! Exit codes (sysexits): 64 usage (bad flags, a required setting
//! missing, a non-loopback `--admin-listen` without `--admin-allow-remote`
//! and `--admin-token-file`), 66 a config or policy file cannot be read, 78 a config or
//! policy file is invalid, 69 a listener cannot be bound, 74 the ledger
//! cannot be opened, 70 anything else.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cocoon_host::config::{
    check_admin_exposure, FileConfig, LimitsFile, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
};
use cocoon_host::{vm, EnclaveAddr, HostConfig, HostError, Limits, Listeners};
use cocoon_protocol::local_auth::BearerToken;
use cocoon_protocol::release::ReleaseManifest;
use cocoon_verifier::Policy;

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_IOERR: u8 = 74;
const EX_CONFIG: u8 = 78;
/// The release manifest `images/build.sh` writes into the image directory.
const RELEASE_MANIFEST_FILE: &str = "release-manifest.json";
/// Longest pause between two connects to a launched VM's enclave.
const LAUNCH_RECONNECT_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// The Cocoon provider daemon: HTTP API for sealed requests, enclave
/// broker, billing ledger. Flags override the config file.
#[derive(Debug, Parser)]
#[command(name = "cocoon-host", version)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public API address [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Operator endpoints address [default: 127.0.0.1:8081]. They export
    /// every account's receipts and can drain the host, so the address
    /// must be a loopback one: any other is refused unless
    /// --admin-allow-remote is given.
    #[arg(long, global = true, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Allow --admin-listen on a non-loopback address (e.g. 0.0.0.0:8081).
    /// Requires --admin-token-file: every operator request must then send
    /// `Authorization: Bearer <token>`. The API is plain HTTP: put it on a
    /// private network or behind TLS.
    #[arg(long, global = true)]
    admin_allow_remote: bool,
    /// File holding the operator API's token (one line, at least 32
    /// characters, e.g. `openssl rand -hex 32`), readable by its owner
    /// only (mode 0600; refused otherwise). With it every operator request
    /// needs `Authorization: Bearer <token>`, on loopback too.
    #[arg(long, global = true, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Enclave address, unix:/path or vsock:CID:PORT (repeatable; replaces
    /// the config file's list).
    #[arg(long = "enclave", global = true, value_name = "ADDR")]
    enclaves: Vec<EnclaveAddr>,
    /// The release manifest of the image the enclaves run (canonical JSON,
    /// `cocoon-measure manifest`), served at GET /v1/release; refused at
    /// start unless canonical. `launch` serves the image directory's
    /// release-manifest.json when this is not given.
    #[arg(long, global = true, value_name = "FILE")]
    release_manifest: Option<PathBuf>,
    /// Verifier policy file (cocoon-verifier TOML).
    #[arg(long, global = true, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Ledger file (SQLite; created if missing).
    #[arg(long, global = true, value_name = "PATH")]
    ledger: Option<PathBuf>,
    /// The TON payment contract to settle with (raw address 0:<64 hex>).
    /// Requests then need the client's authorization and stay within its
    /// cap; `settle` writes claims for it.
    #[arg(long, global = true, value_name = "ADDR")]
    settlement_contract: Option<String>,
    /// The TON HTTP API (toncenter-compatible, v2; e.g.
    /// https://toncenter.com/api/v2/ or the provider's own) where the host
    /// reads clients' deposits before serving them, and where `settle
    /// --send` and `register` read and send. A settling host
    /// (--settlement-contract) needs it, or --no-deposit-check.
    #[arg(long, global = true, value_name = "URL")]
    chain_api: Option<String>,
    /// File holding the chain API's key (sent as X-API-Key; one line,
    /// owner-only: mode 0600).
    #[arg(long, global = true, value_name = "FILE")]
    chain_api_key_file: Option<PathBuf>,
    /// Requests per second to the chain API [default: 1 without a key, as
    /// the public API allows; 10 with one].
    #[arg(long, global = true, value_name = "RATE")]
    chain_api_rps: Option<f64>,
    /// Seconds a read of a client's deposit is trusted before the next
    /// request reads it again [default: 5]. Each admitted request's worst
    /// case is reserved against it at once.
    #[arg(long, global = true, value_name = "SECS")]
    deposit_ttl_secs: Option<f64>,
    /// Serve a settling host WITHOUT checking clients' deposits on chain
    /// (the behaviour before the deposit check; the host may serve work no
    /// deposit pays for). Warned loudly at start.
    #[arg(long, global = true, conflicts_with = "chain_api")]
    no_deposit_check: bool,
    /// AMD's key distribution service (or a caching mirror), where the CRL
    /// for each SEV-SNP enclave's product is fetched and attached to its
    /// evidence [default: AMD's public service].
    #[arg(long, global = true, value_name = "URL")]
    amd_kds_url: Option<String>,
    /// Intel's Provisioning Certification Service, or a provider's PCCS,
    /// where TDX collateral for each enclave's quote is fetched and
    /// attached to its evidence [default: Intel's public PCS].
    #[arg(long, global = true, value_name = "URL")]
    intel_pcs_url: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, global = true, value_name = "BYTES")]
    max_request_bytes: Option<usize>,
    /// Concurrent streams per enclave [default: 64].
    #[arg(long, global = true, value_name = "N")]
    max_streams_per_enclave: Option<usize>,
    /// Requests per second per account (sustained) [default: 5].
    #[arg(long, global = true, value_name = "RATE")]
    account_rps: Option<f64>,
    /// Requests per account above the rate at once [default: 20].
    #[arg(long, global = true, value_name = "N")]
    account_burst: Option<u32>,
    /// Concurrent streams per account; more are answered 429
    /// (`cocoon-client serve` queues them) [default: 8].
    #[arg(long, global = true, value_name = "N")]
    account_max_streams: Option<u32>,
    /// Seconds to wait for an enclave's first frame.
    #[arg(long, global = true, value_name = "SECS")]
    first_frame_timeout: Option<f64>,
    /// Seconds allowed between two frames of a stream.
    #[arg(long, global = true, value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// Seconds a whole request may take.
    #[arg(long, global = true, value_name = "SECS")]
    total_timeout: Option<f64>,
    /// Seconds in-flight streams may run after a drain starts.
    #[arg(long, global = true, value_name = "SECS")]
    drain_timeout: Option<f64>,
    /// Log filter (tracing-subscriber syntax); RUST_LOG wins if set.
    #[arg(long, global = true, value_name = "FILTER", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Serves (the same as no subcommand): the public API and the
    /// operator endpoints, with the enclaves given by --enclave.
    Serve,
    /// Boots the guest image under QEMU, supervises it (restarting it when
    /// it ends) and serves with the broker connected to it over vsock. The
    /// serve flags (--policy, --ledger, --listen ...) apply as without a
    /// subcommand; --enclave is not allowed (the VM is the enclave).
    Launch(Box<LaunchArgs>),
    /// Aggregates the ledger's receipts per (enclave key, account) into
    /// claim messages for the payment contract. With --out: writes
    /// DIR/claims.json and DIR/claim-NNNN.boc (message bodies to send from
    /// the provider's wallet), prints a summary, and records the claims in
    /// the ledger (unless --dry-run). With --send: sends them from the
    /// provider's wallet (--wallet-key, through --chain-api), skipping
    /// what the contract already paid, confirms each on chain and records
    /// it; a rerun resumes an interrupted one without paying twice. Needs
    /// --ledger and --settlement-contract.
    Settle(SettleArgs),
    /// Registers this provider in the Cocoon registry contract (from the
    /// provider's wallet, with the registry's stake), or updates or
    /// removes its entry; reads the registry before and after and
    /// succeeds only when the chain shows the change. Needs --chain-api.
    Register(RegisterArgs),
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    /// The registry contract (raw 0:<hex> or user-friendly).
    #[arg(long, value_name = "ADDR")]
    registry: String,
    /// The public endpoint clients reach this provider at (http(s)://,
    /// at most 256 bytes; behind a load balancer, its address).
    #[arg(long, value_name = "URL", required_unless_present = "deregister")]
    endpoint: Option<String>,
    /// The provider's payment contract (deployed with the registry's
    /// payment code, naming this wallet, the registry's treasury and fee).
    #[arg(long, value_name = "ADDR", required_unless_present = "deregister")]
    payment: Option<String>,
    /// The provider's wallet key (wallet v4r2; the same wallet the payment
    /// contract names as provider): 32-byte ed25519 seed, raw or 64 hex
    /// characters, mode 0600.
    #[arg(long, value_name = "FILE")]
    wallet_key: PathBuf,
    /// Change the registered endpoint (and payment contract).
    #[arg(long, conflicts_with = "deregister")]
    update: bool,
    /// Remove the entry (the stake comes back).
    #[arg(long)]
    deregister: bool,
    /// Seconds to wait for the wallet's message.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("how").required(true).args(["out", "send"]))]
struct SettleArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// query_id of the first claim (the rest follow).
    #[arg(long, default_value_t = 1)]
    query_id: u64,
    /// Write the claims but do not record them in the ledger.
    #[arg(long, conflicts_with = "send")]
    dry_run: bool,
    /// Send the claims from the provider's wallet and confirm them on
    /// chain (needs --chain-api and --wallet-key).
    #[arg(long)]
    send: bool,
    /// The provider's wallet key (wallet v4r2, the payment contract's
    /// provider): a file of the 32-byte ed25519 seed, raw or as 64 hex
    /// characters, mode 0600.
    #[arg(long, value_name = "FILE", requires = "send")]
    wallet_key: Option<PathBuf>,
    /// Seconds to wait for each external message to be processed (also
    /// its validity on chain).
    #[arg(long, default_value_t = 60, requires = "send")]
    wait_secs: u64,
    /// Nanoton attached to each claim for gas (what gas leaves stays in
    /// the contract).
    #[arg(long, default_value_t = cocoon_host::settle::send::DEFAULT_CLAIM_VALUE, requires = "send")]
    claim_value: u128,
}

#[derive(Debug, clap::Args)]
struct LaunchArgs {
    /// Image directory (images/build.sh output: vmlinuz, initrd.cpio,
    /// cmdline.txt, image.env, SHA256SUMS).
    #[arg(long, value_name = "DIR")]
    image: PathBuf,
    /// Kind of guest: snp, tdx, or none (no TEE: the enclave runs the
    /// SIMULATED provider, NOT CONFIDENTIAL; tests only).
    #[arg(long, value_name = "KIND")]
    tee: vm::Tee,
    /// Measured firmware for snp/tdx (images/firmware: OVMF AmdSev, TDVF).
    #[arg(long, value_name = "FILE")]
    firmware: Option<PathBuf>,
    /// vCPUs (part of the SNP launch digest: publish measurements for it).
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_mib: u32,
    /// Guest vsock context id (kernel vhost-vsock).
    #[arg(long, default_value_t = 16)]
    cid: u32,
    /// QEMU binary (9.1+ for SNP, 10.1+ for TDX).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// kvm, tcg or auto (kvm when a probe boot of the image's kernel works
    /// under it, and TCG if KVM later fails the guest; snp/tdx need kvm).
    #[arg(long, default_value = "auto")]
    accel: String,
    /// vsock device: kernel (/dev/vhost-vsock), user (vhost-device-vsock)
    /// or auto (kernel when /dev/vhost-vsock exists).
    #[arg(long, default_value = "auto")]
    vsock: String,
    /// The vhost-device-vsock binary for --vsock user.
    #[arg(long, value_name = "PATH")]
    vhost_device_vsock: Option<PathBuf>,
    /// A GPU to pass through with VFIO (PCI address; repeatable).
    #[arg(long = "gpu", value_name = "BDF")]
    gpus: Vec<String>,
    /// TDX: the host's quote generation service (CID:PORT or a Unix path).
    #[arg(long, value_name = "ADDR")]
    qgs: Option<String>,
    /// Directory for the VM's sockets and serial log.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// This provider's settings (TOML: `[prices.MODEL]` prompt, cached,
    /// completion in nanoton per token within the release's bounds;
    /// `payment_contract`; `max_concurrent`), handed to the enclave at every
    /// boot over vsock and bound into its claims. Needed when the image's
    /// release takes its prices from the provider.
    #[arg(long, value_name = "FILE")]
    provider_settings: Option<PathBuf>,
}

fn vm_config(l: &LaunchArgs) -> Result<vm::VmConfig, Failure> {
    let usage = |e: String| Failure(EX_USAGE, e);
    let image = vm::Image::load(&l.image).map_err(|e| Failure(EX_NOINPUT, e))?;
    let accel = match l.accel.as_str() {
        "kvm" => vm::Accel::Kvm,
        "tcg" => vm::Accel::Tcg,
        // SEV-SNP and TDX exist only under KVM: no probe, QEMU says why if
        // KVM cannot start the guest.
        "auto" if l.tee != vm::Tee::None => vm::Accel::Kvm,
        "auto" => match vm::kvm::probe(&l.qemu, &image, l.vcpus, l.memory_mib) {
            Ok(()) => vm::Accel::Kvm,
            Err(why) => {
                eprintln!("cocoon-host: --accel auto: KVM cannot run this guest here ({why})");
                vm::Accel::Tcg
            }
        },
        other => {
            return Err(usage(format!(
                "--accel {other:?}: expected kvm, tcg or auto"
            )))
        }
    };
    let vsock = match l.vsock.as_str() {
        "kernel" => vm::VsockDevice::Kernel,
        "auto" if std::path::Path::new("/dev/vhost-vsock").exists() => vm::VsockDevice::Kernel,
        "user" | "auto" => {
            let binary = match &l.vhost_device_vsock {
                Some(b) => b.clone(),
                None => vm::find_in_path("vhost-device-vsock").ok_or_else(|| {
                    usage("no /dev/vhost-vsock and no vhost-device-vsock binary: `cargo install vhost-device-vsock --version 0.3.0` or pass --vhost-device-vsock".into())
                })?,
            };
            vm::VsockDevice::User { binary }
        }
        other => {
            return Err(usage(format!(
                "--vsock {other:?}: expected kernel, user or auto"
            )))
        }
    };
    let run_dir = l
        .run_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cocoon-vm-{}", std::process::id())));
    if l.tee == vm::Tee::None {
        eprintln!("cocoon-host: --tee none: the guest has NO TEE and its enclave runs the SIMULATED provider (NOT CONFIDENTIAL). For tests only; the default policy refuses it.");
    }
    if accel == vm::Accel::Tcg {
        eprintln!("cocoon-host: the VM runs under QEMU's software emulation (TCG), slowly: --accel tcg, or /dev/kvm is missing or cannot run a guest");
    }
    let provider_settings = match &l.provider_settings {
        None => {
            if image.settings_port.is_some() {
                return Err(usage(format!(
                    "the release {} takes its prices from the provider: pass --provider-settings FILE",
                    image.release
                )));
            }
            None
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure(
                    EX_NOINPUT,
                    format!("--provider-settings {}: {e}", path.display()),
                )
            })?;
            let s = cocoon_protocol::settings::ProviderSettings::from_toml(&text).map_err(|e| {
                Failure(
                    EX_CONFIG,
                    format!("--provider-settings {}: {e}", path.display()),
                )
            })?;
            Some(s.to_cbor())
        }
    };
    Ok(vm::VmConfig {
        tee: l.tee,
        accel,
        tcg_fallback: l.accel == "auto" && l.tee == vm::Tee::None,
        image,
        firmware: l.firmware.clone(),
        vcpus: l.vcpus,
        memory_mib: l.memory_mib,
        cid: l.cid,
        qemu: l.qemu.clone(),
        vsock,
        gpus: l.gpus.clone(),
        qgs: l.qgs.clone(),
        run_dir,
        provider_settings,
    })
}

struct Failure(u8, String);

fn read(path: &PathBuf, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure(
            EX_NOINPUT,
            format!("cannot read {what} {}: {e}", path.display()),
        )
    })
}

/// A secret file's text, refused unless only its owner can read it.
fn read_owner_only(
    path: &Path,
    what: &str,
    make: &str,
) -> Result<zeroize::Zeroizing<String>, Failure> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| {
                Failure(
                    EX_NOINPUT,
                    format!(
                        "cannot read {what} {shown}: {e} (make one: (umask 077; {make} > {shown}))"
                    ),
                )
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(Failure(
                EX_CONFIG,
                format!("{what} {shown} is accessible by others (mode {mode:o}); run: chmod 600 {shown}"),
            ));
        }
    }
    Ok(zeroize::Zeroizing::new(read(&path.to_path_buf(), what)?))
}

/// The operator API's token from its file: owner-only, one line.
fn read_admin_token(path: &Path) -> Result<BearerToken, Failure> {
    let text = read_owner_only(path, "admin token file", "openssl rand -hex 32")?;
    BearerToken::parse(&text).map_err(|e| {
        Failure(
            EX_CONFIG,
            format!("admin token file {}: {e}", path.display()),
        )
    })
}

fn configure(
    cli: &Cli,
    vm_addr: Option<EnclaveAddr>,
) -> Result<(HostConfig, SocketAddr, SocketAddr), Failure> {
    let file = match &cli.config {
        Some(p) => FileConfig::from_toml(&read(p, "config file")?)
            .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", p.display())))?,
        None => FileConfig::default(),
    };
    let usage = |e: String| Failure(EX_USAGE, e);
    let parse_addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| usage(e.to_string()));
    let listen = match cli.listen.or(file.listen) {
        Some(a) => a,
        None => parse_addr(DEFAULT_LISTEN)?,
    };
    let admin_listen = match cli.admin_listen.or(file.admin_listen) {
        Some(a) => a,
        None => parse_addr(DEFAULT_ADMIN_LISTEN)?,
    };
    let admin_token_file = cli
        .admin_token_file
        .clone()
        .or(file.admin_token_file.clone());
    check_admin_exposure(
        admin_listen,
        cli.admin_allow_remote || file.admin_allow_remote,
        admin_token_file.is_some(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let admin_token = admin_token_file
        .as_deref()
        .map(read_admin_token)
        .transpose()?;
    let launching = vm_addr.is_some();
    let enclaves = if let Some(addr) = vm_addr {
        if !cli.enclaves.is_empty() {
            return Err(usage(
                "launch: --enclave is not allowed (the launched VM is the enclave)".into(),
            ));
        }
        vec![addr]
    } else if cli.enclaves.is_empty() {
        file.enclaves.clone()
    } else {
        cli.enclaves.clone()
    };
    if enclaves.is_empty() {
        return Err(usage(
            "at least one --enclave (or `enclaves` in the config file) is required".into(),
        ));
    }
    let policy_path = cli
        .policy
        .clone()
        .or(file.policy.clone())
        .ok_or_else(|| usage("--policy (or `policy` in the config file) is required".into()))?;
    let policy = Policy::from_toml(&read(&policy_path, "policy file")?)
        .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", policy_path.display())))?;
    let ledger_path = cli
        .ledger
        .clone()
        .or(file.ledger.clone())
        .ok_or_else(|| usage("--ledger (or `ledger` in the config file) is required".into()))?;
    let limits = file
        .limits
        .apply(Limits::default())
        .map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    let flags = LimitsFile {
        max_request_bytes: cli.max_request_bytes,
        max_streams_per_enclave: cli.max_streams_per_enclave,
        account_requests_per_second: cli.account_rps,
        account_burst: cli.account_burst,
        account_max_streams: cli.account_max_streams,
        first_frame_timeout_secs: cli.first_frame_timeout,
        idle_timeout_secs: cli.idle_timeout,
        total_timeout_secs: cli.total_timeout,
        drain_timeout_secs: cli.drain_timeout,
        ..LimitsFile::default()
    };
    let mut limits = flags.apply(limits).map_err(|e| usage(e.to_string()))?;
    if launching {
        // The launched VM is on this host and a connect attempt costs a
        // Unix-socket round trip: retry often while it boots, so the broker
        // reaches the enclave soon after it listens.
        limits.reconnect_backoff_max = limits.reconnect_backoff_max.min(LAUNCH_RECONNECT_MAX);
        limits.reconnect_backoff_min = limits
            .reconnect_backoff_min
            .min(limits.reconnect_backoff_max);
    }
    let settlement = settlement_contract(cli, &file)?;
    let release_manifest = release_manifest(cli)?;
    let deposits = deposit_check(cli, &file, settlement.is_some())?;
    Ok((
        HostConfig {
            enclaves,
            policy,
            ledger_path,
            limits,
            settlement,
            deposits,
            amd_kds_url: cli
                .amd_kds_url
                .clone()
                .unwrap_or_else(|| cocoon_host::snp_crl::AMD_KDS.to_string()),
            intel_pcs_url: cli
                .intel_pcs_url
                .clone()
                .unwrap_or_else(|| cocoon_host::intel_pcs::INTEL_PCS.to_string()),
            admin_token,
            clock: cocoon_host::Clock::system(),
            release_manifest,
        },
        listen,
        admin_listen,
    ))
}

async fn serve(
    config: HostConfig,
    listen: SocketAddr,
    admin: SocketAddr,
    vm: Option<vm::Supervisor>,
) -> Result<(), Failure> {
    let (stop_vm, stop_rx) = tokio::sync::watch::channel(false);
    let vm_task = vm.map(|v| tokio::spawn(v.run(stop_rx)));
    let result = serve_inner(config, listen, admin).await;
    let _ = stop_vm.send(true);
    if let Some(t) = vm_task {
        let _ = t.await;
    }
    result
}

async fn serve_inner(
    config: HostConfig,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(), Failure> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Failure(
                EX_UNAVAILABLE,
                format!("cannot listen on {addr} ({what}): {e}"),
            )
        })
    };
    let listeners = Listeners {
        public: bind("public", listen).await?,
        admin: bind("admin", admin).await?,
    };
    let running = cocoon_host::start(listeners, config)
        .await
        .map_err(|e| match e {
            HostError::Ledger(e) => Failure(EX_IOERR, e.to_string()),
            HostError::Config(e) => Failure(EX_CONFIG, e.to_string()),
            other => Failure(EX_SOFTWARE, other.to_string()),
        })?;
    let (public_addr, admin_addr) = (running.public_addr(), running.admin_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure(EX_SOFTWARE, format!("cannot watch SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure(EX_SOFTWARE, format!("cannot watch SIGINT: {e}")))?;
    let mut announced = false;
    let running_ref = &running;
    loop {
        tokio::select! {
            _ = running_ref.wait_ready(), if !announced => {
                eprintln!("ready listen={public_addr} admin={admin_addr}");
                announced = true;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                break;
            }
            _ = running_ref.draining() => break,
        }
    }
    running.drain();
    running
        .join()
        .await
        .map_err(|e| Failure(EX_SOFTWARE, e.to_string()))
}

/// `--release-manifest FILE`, or for `launch` the image directory's
/// release-manifest.json when it is there; refused unless canonical.
fn release_manifest(cli: &Cli) -> Result<Option<ReleaseManifest>, Failure> {
    let path = match (&cli.release_manifest, &cli.cmd) {
        (Some(p), _) => p.clone(),
        (None, Some(Cmd::Launch(l))) if l.image.join(RELEASE_MANIFEST_FILE).is_file() => {
            l.image.join(RELEASE_MANIFEST_FILE)
        }
        _ => return Ok(None),
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        Failure(
            EX_NOINPUT,
            format!("cannot read release manifest {}: {e}", path.display()),
        )
    })?;
    let m = ReleaseManifest::from_canonical(&bytes)
        .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", path.display())))?;
    tracing::info!(
        release = %m.release,
        manifest_hash = %m.manifest_hash().map(hex::encode).unwrap_or_default(),
        "serving the release manifest at {}",
        cocoon_protocol::api::RELEASE_PATH
    );
    Ok(Some(m))
}

/// The chain API's settings from the flags and the config file.
fn chain_api_config(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Option<cocoon_chain::http::ChainApiConfig>, Failure> {
    let Some(endpoint) = cli.chain_api.clone().or(file.chain_api.clone()) else {
        return Ok(None);
    };
    let key_file = cli
        .chain_api_key_file
        .clone()
        .or(file.chain_api_key_file.clone());
    let rps = match cli.chain_api_rps {
        Some(r) if !(r.is_finite() && r > 0.0) => {
            return Err(Failure(
                EX_USAGE,
                format!("--chain-api-rps {r}: must be a positive number"),
            ))
        }
        r => r,
    };
    cocoon_chain::http::ChainApiConfig::from_flags(&endpoint, key_file.as_deref(), rps)
        .map(Some)
        .map_err(|e| Failure(EX_USAGE, e.to_string()))
}

/// The chain client for `--chain-api`.
fn open_chain(
    config: cocoon_chain::http::ChainApiConfig,
) -> Result<std::sync::Arc<dyn cocoon_chain::ChainClient>, Failure> {
    let endpoint = config.endpoint.clone();
    let client = cocoon_chain::http::TonHttpClient::new(config)
        .map_err(|e| Failure(EX_USAGE, format!("--chain-api {endpoint}: {e}")))?;
    Ok(std::sync::Arc::new(client))
}

/// The deposit check a serving host runs: required on a settling host
/// unless --no-deposit-check says otherwise (loudly).
fn deposit_check(
    cli: &Cli,
    file: &FileConfig,
    settling: bool,
) -> Result<Option<cocoon_host::deposits::DepositConfig>, Failure> {
    let usage = |e: &str| Failure(EX_USAGE, e.to_string());
    let no_check = cli.no_deposit_check || file.no_deposit_check;
    let chain = chain_api_config(cli, file)?;
    let ttl = match cli.deposit_ttl_secs.or(file.deposit_ttl_secs) {
        None => cocoon_host::deposits::DEFAULT_TTL,
        Some(s) => std::time::Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| usage("--deposit-ttl-secs must be a positive number of seconds"))?,
    };
    match (settling, chain, no_check) {
        (_, Some(_), true) => Err(usage(
            "--chain-api and --no-deposit-check (or chain_api and no_deposit_check in the config file) contradict each other",
        )),
        (false, Some(_), false) => Err(usage(
            "--chain-api: the deposit check reads the payment contract; give --settlement-contract too",
        )),
        (true, None, false) => Err(usage(
            "a settling host (--settlement-contract) checks each client's deposit on chain before serving it: give --chain-api URL (the TON HTTP API), or --no-deposit-check to serve without checking (work no deposit covers goes unpaid)",
        )),
        (true, None, true) => {
            eprintln!("cocoon-host: WARNING: --no-deposit-check: clients' deposits are NOT checked on chain; this host serves requests that no deposit may pay for");
            Ok(None)
        }
        (false, None, _) => Ok(None),
        (true, Some(chain), false) => Ok(Some(cocoon_host::deposits::DepositConfig {
            chain: open_chain(chain)?,
            ttl,
            read_timeout: cocoon_host::deposits::DEFAULT_READ_TIMEOUT,
        })),
    }
}

fn settlement_contract(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Option<cocoon_protocol::settlement::ContractAddress>, Failure> {
    cli.settlement_contract
        .as_deref()
        .or(file.settlement_contract.as_deref())
        .map(|s| {
            cocoon_protocol::settlement::ContractAddress::parse_raw(s)
                .map_err(|e| Failure(EX_USAGE, format!("settlement contract: {e}")))
        })
        .transpose()
}

fn settle(cli: &Cli, args: &SettleArgs) -> Result<(), Failure> {
    let file = match &cli.config {
        Some(p) => FileConfig::from_toml(&read(p, "config file")?)
            .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", p.display())))?,
        None => FileConfig::default(),
    };
    let contract = settlement_contract(cli, &file)?.ok_or_else(|| {
        Failure(
            EX_USAGE,
            "settle: --settlement-contract (or `settlement_contract` in the config file) is required".into(),
        )
    })?;
    let ledger_path = cli
        .ledger
        .clone()
        .or(file.ledger.clone())
        .ok_or_else(|| Failure(EX_USAGE, "settle: --ledger is required".into()))?;
    if !ledger_path.exists() {
        return Err(Failure(
            EX_NOINPUT,
            format!("no ledger at {}", ledger_path.display()),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(EX_SOFTWARE, format!("cannot start the runtime: {e}")))?;
    if args.send {
        return rt.block_on(settle_send(cli, &file, args, contract, &ledger_path));
    }
    let Some(out) = &args.out else {
        return Err(Failure(EX_USAGE, "settle: --out DIR or --send".into()));
    };
    rt.block_on(async {
        let ledger = cocoon_host::ledger::Ledger::open(&ledger_path, Default::default())
            .map_err(|e| Failure(EX_IOERR, e.to_string()))?;
        let s = cocoon_host::settle::run(&ledger, contract, out, args.query_id, args.dry_run)
            .await
            .map_err(|e| Failure(EX_IOERR, e));
        ledger.close();
        let s = s?;
        println!(
            "settle: {} claim(s), {} nanoton, written to {}{}",
            s.claims.len(),
            s.total_amount(),
            out.display(),
            if args.dry_run {
                " (dry run: not recorded)"
            } else {
                ""
            }
        );
        println!(
            "ledger: {} receipts, {} nanoton; counted by claimed tabs: {} receipts, {} nanoton",
            s.ledger_receipts, s.ledger_nanoton, s.counted_receipts, s.counted_nanoton
        );
        print_unclaimed(&s.unclaimed);
        Ok(())
    })
}

/// `settle --send`: send, confirm, record, and print what happened.
async fn settle_send(
    cli: &Cli,
    file: &FileConfig,
    args: &SettleArgs,
    contract: cocoon_protocol::settlement::ContractAddress,
    ledger_path: &Path,
) -> Result<(), Failure> {
    let usage = |e: &str| Failure(EX_USAGE, e.to_string());
    let chain = chain_api_config(cli, file)?
        .ok_or_else(|| usage("settle --send: --chain-api URL is required"))?;
    let chain = open_chain(chain)?;
    let key_path = args
        .wallet_key
        .as_deref()
        .ok_or_else(|| usage("settle --send: --wallet-key FILE is required"))?;
    let key =
        cocoon_chain::wallet::load_key(key_path).map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    let wallet = cocoon_chain::wallet::WalletV4::new(key.verifying_key().to_bytes());
    if std::env::var_os(cocoon_host::settle::send::TEST_ONLY_EXIT_AFTER_SEND).is_some() {
        eprintln!(
            "cocoon-host: WARNING: {} is set: this run stops after its first send (TEST ONLY)",
            cocoon_host::settle::send::TEST_ONLY_EXIT_AFTER_SEND
        );
    }
    let ledger = cocoon_host::ledger::Ledger::open(ledger_path, Default::default())
        .map_err(|e| Failure(EX_IOERR, e.to_string()))?;
    let opts = cocoon_host::settle::send::SendOptions {
        contract,
        query_id: args.query_id,
        claim_value: args.claim_value,
        wait: std::time::Duration::from_secs(args.wait_secs.max(1)),
    };
    let r = cocoon_host::settle::send::run(&ledger, chain.as_ref(), &wallet, &key, &opts).await;
    ledger.close();
    let r = r.map_err(|e| Failure(EX_UNAVAILABLE, format!("settle --send: {e}")))?;
    let short = |k: &[u8; 33]| hex::encode(&k[..8]);
    let landed = r.landed().count();
    let failed: Vec<_> = r.failed().collect();
    println!(
        "settle --send: wallet {}, contract {contract}: {} claim(s) sent in {} message(s), {landed} landed, {} skipped as already paid, {} failed; {} nanoton paid",
        wallet.address(),
        r.sent.len(),
        r.messages,
        r.already_paid.len(),
        failed.len(),
        r.amount_landed()
    );
    if !r.resumed_landed.is_empty() {
        println!(
            "resumed: {} claim(s) an earlier run sent were found paid",
            r.resumed_landed.len()
        );
    }
    for c in r.landed() {
        println!(
            "landed: account {} key {}: {} nanoton (paid {} of tab total {})",
            hex::encode(c.account),
            short(&c.enclave_key),
            c.amount(),
            c.paid_after,
            c.total
        );
    }
    for c in failed
        .iter()
        .chain(r.resumed_pending.iter().collect::<Vec<_>>().iter())
    {
        println!(
            "failed: account {} key {}: {}",
            hex::encode(c.account),
            short(&c.enclave_key),
            c.failure.as_deref().unwrap_or("")
        );
    }
    print_unclaimed(&r.unclaimed);
    if failed.is_empty() && r.resumed_pending.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            EX_UNAVAILABLE,
            format!(
                "settle --send: {} claim(s) not confirmed paid (above); rerun to resume",
                failed.len() + r.resumed_pending.len()
            ),
        ))
    }
}

/// `register`: the provider's registry entry.
fn register(cli: &Cli, args: &RegisterArgs) -> Result<(), Failure> {
    use cocoon_host::register::{Action, RegisterRequest, Registered};
    let file = match &cli.config {
        Some(p) => FileConfig::from_toml(&read(p, "config file")?)
            .map_err(|e| Failure(EX_CONFIG, format!("{}: {e}", p.display())))?,
        None => FileConfig::default(),
    };
    let usage = |e: String| Failure(EX_USAGE, e);
    let address = |what: &str, s: &str| {
        cocoon_protocol::settlement::ContractAddress::parse(s)
            .map_err(|e| usage(format!("--{what} {s}: {e}")))
    };
    let chain = chain_api_config(cli, &file)?
        .ok_or_else(|| usage("register: --chain-api URL is required".into()))?;
    let chain = open_chain(chain)?;
    let key = cocoon_chain::wallet::load_key(&args.wallet_key)
        .map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    let wallet = cocoon_chain::wallet::WalletV4::new(key.verifying_key().to_bytes());
    let req = RegisterRequest {
        registry: address("registry", &args.registry)?,
        endpoint: args.endpoint.clone().unwrap_or_default(),
        payment: match &args.payment {
            Some(p) => address("payment", p)?,
            None => wallet.address(),
        },
        action: if args.deregister {
            Action::Deregister
        } else if args.update {
            Action::Update
        } else {
            Action::Register
        },
        wait: std::time::Duration::from_secs(args.wait_secs.max(1)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(EX_SOFTWARE, format!("cannot start the runtime: {e}")))?;
    let r = rt
        .block_on(cocoon_host::register::run(
            chain.as_ref(),
            &wallet,
            &key,
            &req,
        ))
        .map_err(|e| Failure(EX_UNAVAILABLE, format!("register: {e}")))?;
    match r {
        Registered::Entry(e) => println!(
            "registered: wallet {} endpoint {} payment {} stake {} nanoton",
            e.owner, e.endpoint, e.payment, e.stake
        ),
        Registered::Unchanged(e) => println!(
            "unchanged: wallet {} is registered with endpoint {} payment {} already",
            e.owner, e.endpoint, e.payment
        ),
        Registered::Gone => println!(
            "not registered: wallet {} has no entry in {}",
            wallet.address(),
            req.registry
        ),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cocoon-host: --log {:?}: {e}", cli.log);
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let one_shot = match &cli.cmd {
        Some(Cmd::Settle(args)) => Some(settle(&cli, args)),
        Some(Cmd::Register(args)) => Some(register(&cli, args)),
        _ => None,
    };
    if let Some(result) = one_shot {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure(code, msg)) => {
                eprintln!("cocoon-host: {msg}");
                ExitCode::from(code)
            }
        };
    }
    let supervisor = match &cli.cmd {
        None | Some(Cmd::Serve) | Some(Cmd::Settle(_)) | Some(Cmd::Register(_)) => None,
        Some(Cmd::Launch(l)) => match vm_config(l)
            .and_then(|c| vm::Supervisor::new(c).map_err(|e| Failure(EX_CONFIG, e)))
        {
            Ok(s) => Some(s),
            Err(Failure(code, msg)) => {
                eprintln!("cocoon-host: {msg}");
                return ExitCode::from(code);
            }
        },
    };
    let vm_addr = supervisor.as_ref().map(|s| s.plan().enclave_addr.clone());
    let (config, listen, admin) = match configure(&cli, vm_addr) {
        Ok(c) => c,
        Err(Failure(code, msg)) => {
            eprintln!("cocoon-host: {msg}");
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon-host: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    match rt.block_on(serve(config, listen, admin, supervisor)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("cocoon-host: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The receipts a settlement run left unclaimed, one line each, as both
/// `settle --out` and `settle --send` report them.
fn print_unclaimed(unclaimed: &[cocoon_host::settle::Unclaimed]) {
    for u in unclaimed {
        println!(
            "not claimed: account {} key {}: {} receipts, {} nanoton: {}",
            hex::encode(u.account),
            hex::encode(&u.receipt_public_key[..u.receipt_public_key.len().min(8)]),
            u.receipts,
            u.nanoton,
            u.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` shows the per-account and per-enclave limits' defaults,
    /// and they are the ones `Limits::default()` applies.
    #[test]
    fn help_shows_the_real_default_limits() {
        let help = Cli::command().render_long_help().to_string();
        let d = cocoon_host::config::Limits::default();
        for (flag, default) in [
            (
                "--max-streams-per-enclave",
                d.max_streams_per_enclave.to_string(),
            ),
            ("--account-rps", d.account_requests_per_second.to_string()),
            ("--account-burst", d.account_burst.to_string()),
            ("--account-max-streams", d.account_max_streams.to_string()),
        ] {
            let at = help.find(flag).unwrap_or_else(|| panic!("{flag} in help"));
            let rest = &help[at..];
            let end = rest[2..].find("\n  -").map_or(rest.len(), |e| e + 2);
            assert!(
                rest[..end].contains(&format!("[default: {default}]")),
                "{flag}: {}",
                &rest[..end]
            );
        }
    }
}
