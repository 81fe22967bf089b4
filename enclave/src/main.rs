//! `cocoon-enclave`: the guest runtime. Boots the enclave (keys, claims,
//! evidence), listens for the host on vsock or a Unix socket, and serves
//! sealed requests until SIGTERM or SIGINT, then drains in-flight requests
//! for up to 10 s and exits 0.
//!
//! Exit codes (sysexits): 64 usage, 70 boot failure, 71 cannot listen,
//! 78 bad configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cocoon_enclave::attest::{open_hardware, HardwareOptions, TdxCollateralSource};
use cocoon_enclave::config::BackendKind;
use cocoon_enclave::{
    AttestationProvider, DeterministicTestBackend, Enclave, EnclaveConfig, InferenceBackend,
    ListenAddr, Listener, SimulatedProvider, TeeChoice,
};
use tracing::{error, info};

const EX_USAGE: u8 = 64;
const EX_SOFTWARE: u8 = 70;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;
/// How long the runtime waits for abandoned work after `serve` returned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The Cocoon enclave runtime (started from the verity root disk by the guest image's PID 1, `cocoon-init`).
#[derive(Debug, Parser)]
#[command(name = "cocoon-enclave", version)]
struct Cli {
    /// Where to listen for the host: unix:PATH, vsock:PORT or vsock:CID:PORT.
    /// Overrides `listen` in the config file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,

    /// Configuration file (TOML). Without it the defaults are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Attestation provider (required):
    /// `configfs-tsm` — Linux 6.7+ /sys/kernel/config/tsm/report (SEV-SNP
    /// and TDX; TDX also needs `[tdx] collateral` in the config);
    /// `sev-guest` — SNP_GET_EXT_REPORT on /dev/sev-guest (older SNP guests);
    /// `tdx-guest` — /dev/tdx_guest gives only a TDREPORT, so this refuses
    /// to boot and says why (a quote needs configfs-tsm);
    /// `auto` — the first of configfs-tsm, /dev/sev-guest, /dev/tdx_guest
    /// present (never the simulator);
    /// `simulated` — NOT CONFIDENTIAL (no hardware isolation; for tests and
    /// demos only).
    #[arg(long, value_name = "PROVIDER", verbatim_doc_comment)]
    tee: Option<String>,

    /// TEST HOOK: the configfs-tsm report root to use instead of
    /// /sys/kernel/config/tsm/report (also COCOON_TSM_ROOT; the flag wins).
    /// For test doubles of configfs only; a real guest never needs it.
    #[arg(long, value_name = "DIR")]
    tsm_root: Option<PathBuf>,

    /// Also print the evidence digest (hex) on its own line to stdout once
    /// listening, for scripts. Keys are made at boot, so it changes on every
    /// start.
    #[arg(long)]
    print_evidence_digest: bool,

    /// The provider's settings (TOML: base prices within the release's
    /// `[price_bounds]`, `payment_contract`, `max_concurrent`), for a
    /// release with `prices_from = "provider"` run as a process. In a VM
    /// the host hands them over `--settings-listen` instead.
    #[arg(long, value_name = "FILE", conflicts_with = "settings_listen")]
    provider_settings: Option<PathBuf>,

    /// Wait on ADDR (vsock:PORT or unix:PATH) for the host to hand over the
    /// provider's settings once at boot (see `boot_settings`).
    #[arg(long, value_name = "ADDR")]
    settings_listen: Option<String>,

    /// The dm-verity root hash (hex) of the disk this enclave runs from;
    /// the guest image's PID 1 passes it, and it goes into the claims.
    #[arg(long, value_name = "HEX")]
    disk_verity_root: Option<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("cocoon-enclave: {msg}\nTry 'cocoon-enclave --help'.");
    ExitCode::from(EX_USAGE)
}

fn main() -> ExitCode {
    enclave_main()
}

fn enclave_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let tee = match cli.tee.as_deref() {
        Some(name) => match name.parse::<TeeChoice>() {
            Ok(t) => t,
            Err(e) => return usage(&format!("--tee: {e}")),
        },
        None => {
            return usage(&format!(
                "--tee is required (one of: {}; 'simulated' is NOT confidential)",
                TeeChoice::NAMES
            ))
        }
    };
    init_logging();
    // A panic message could quote data being processed: print where, not what.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_else(|| "unknown location".into());
        eprintln!("cocoon-enclave: internal error (panic) at {at}; message withheld");
    }));

    let mut config = match &cli.config {
        Some(path) => match EnclaveConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cocoon-enclave: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        None => EnclaveConfig::default(),
    };
    if let Some(h) = &cli.disk_verity_root {
        match hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            Some(root) => config.disk_verity_root = Some(root),
            None => return usage("--disk-verity-root must be 64 hex digits"),
        }
    }
    let settings_listen = match cli.settings_listen.as_deref().map(str::parse::<ListenAddr>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return usage(&format!("--settings-listen: {e}")),
    };
    if let Some(path) = &cli.provider_settings {
        if let Err(e) = cocoon_enclave::boot_settings::apply_file(&mut config, path) {
            eprintln!("cocoon-enclave: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    }
    let listen = match (&cli.listen, &config.listen) {
        (Some(s), _) => match s.parse::<ListenAddr>() {
            Ok(a) => a,
            Err(e) => return usage(&e.to_string()),
        },
        (None, Some(a)) => a.clone(),
        (None, None) => {
            return usage("no listen address: pass --listen or set `listen` in the config")
        }
    };

    if tee == TeeChoice::Simulated {
        eprintln!(
            "cocoon-enclave: SIMULATED TEE — NOT CONFIDENTIAL: there is no hardware isolation; the host can read every prompt, response and key. For tests and demos only."
        );
    }
    let mut hardware = HardwareOptions::default();
    if let Some(root) = cli
        .tsm_root
        .clone()
        .or_else(|| std::env::var_os("COCOON_TSM_ROOT").map(PathBuf::from))
    {
        hardware.tsm_root = root;
    }
    if let Some(path) = config.tdx.as_ref().and_then(|t| t.collateral.as_ref()) {
        hardware.tdx_collateral = TdxCollateralSource::file(path);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon-enclave: cannot start the async runtime: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    if let Some(addr) = &settings_listen {
        if config.applied.is_none() {
            if let Err(e) =
                runtime.block_on(cocoon_enclave::boot_settings::receive(&mut config, addr))
            {
                eprintln!("cocoon-enclave: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        }
    }
    let code = runtime.block_on(run(
        config,
        listen,
        tee,
        hardware,
        cli.print_evidence_digest,
    ));
    // Requests abandoned at the drain deadline may still hold blocking
    // threads; do not wait for them.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    code
}

async fn run(
    config: EnclaveConfig,
    listen: ListenAddr,
    tee: TeeChoice,
    hardware: HardwareOptions,
    print_digest: bool,
) -> ExitCode {
    let canonical = config.to_canonical_toml();
    let mut rng = rand_core::OsRng;
    let provider: Result<Arc<dyn AttestationProvider>, _> = match tee {
        TeeChoice::Simulated => SimulatedProvider::new(canonical.as_bytes(), &mut rng)
            .map(|p| Arc::new(p) as Arc<dyn AttestationProvider>),
        hw => open_hardware(hw, &hardware),
    };
    let provider = match provider {
        Ok(p) => {
            if tee != TeeChoice::Simulated {
                info!(provider = p.kind(), "attestation provider ready");
            }
            p
        }
        Err(e) => {
            error!(error = %e, "attestation provider failed");
            eprintln!("cocoon-enclave: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let backend: Arc<dyn InferenceBackend> = match config.backend {
        BackendKind::DeterministicTest => {
            eprintln!("cocoon-enclave: backend = deterministic-test: NOT A MODEL (fixed sentence and hashed words; for tests and demos)");
            Arc::new(DeterministicTestBackend::new(
                config.test_backend_reply_tokens,
            ))
        }
        #[cfg(feature = "tch")]
        BackendKind::Tch => {
            // Reading and hashing hundreds of MB blocks: off the runtime.
            let c = config.clone();
            match tokio::task::spawn_blocking(move || cocoon_enclave::torch::TchBackend::load(&c))
                .await
            {
                Ok(Ok(b)) => {
                    info!(device = ?b.device(), "tch backend ready");
                    Arc::new(b)
                }
                Ok(Err(e)) => {
                    eprintln!("cocoon-enclave: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
                Err(_) => {
                    eprintln!("cocoon-enclave: loading the models failed (internal error)");
                    return ExitCode::from(EX_SOFTWARE);
                }
            }
        }
        BackendKind::Upstream => {
            let c = config.clone();
            let handle = tokio::runtime::Handle::current();
            match tokio::task::spawn_blocking(move || {
                cocoon_enclave::upstream::UpstreamBackend::load(&c, handle)
            })
            .await
            {
                Ok(Ok(b)) => Arc::new(b),
                Ok(Err(e)) => {
                    eprintln!("cocoon-enclave: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
                Err(_) => {
                    eprintln!(
                        "cocoon-enclave: checking the upstream models failed (internal error)"
                    );
                    return ExitCode::from(EX_SOFTWARE);
                }
            }
        }
        #[allow(unreachable_patterns)]
        _ => {
            eprintln!(
                "cocoon-enclave: backend {:?} is not built in (build cocoon-enclave with --features tch)",
                config.backend.as_str()
            );
            return ExitCode::from(EX_CONFIG);
        }
    };
    let backend: Arc<dyn InferenceBackend> = match std::env::var(
        cocoon_enclave::fault::TEST_ONLY_FAIL_AFTER_TOKENS,
    ) {
        Err(std::env::VarError::NotPresent) => backend,
        Ok(_) | Err(_) if tee != TeeChoice::Simulated => {
            eprintln!(
                "cocoon-enclave: {} is set, and it is honoured only with --tee simulated: refusing to boot",
                cocoon_enclave::fault::TEST_ONLY_FAIL_AFTER_TOKENS
            );
            return ExitCode::from(EX_CONFIG);
        }
        Ok(text) => match cocoon_enclave::fault::FaultPlan::parse(&text) {
            Ok(plan) => {
                eprintln!(
                    "cocoon-enclave: WARNING: TEST-ONLY FAULT INJECTION ACTIVE ({}={text}): chat requests fail after {} tokens{}",
                    cocoon_enclave::fault::TEST_ONLY_FAIL_AFTER_TOKENS,
                    plan.after_tokens,
                    plan.requests
                        .map(|m| format!(" (the first {m} of this boot)"))
                        .unwrap_or_default()
                );
                tracing::warn!(?plan, "TEST-ONLY fault injection active");
                Arc::new(cocoon_enclave::fault::FailAfterTokens::new(backend, plan))
            }
            Err(e) => {
                eprintln!("cocoon-enclave: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        Err(e) => {
            eprintln!("cocoon-enclave: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let gpu = match &config.gpu {
        None => None,
        Some(g) => match cocoon_enclave::gpu::GpuSetup::from_config(g) {
            Ok(setup) => Some(setup),
            Err(e) => {
                eprintln!("cocoon-enclave: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
    };
    let enclave = match Enclave::with_gpu(config, provider, backend, gpu.as_ref(), &mut rng) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("cocoon-enclave: boot failed: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let listener = match Listener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cocoon-enclave: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cocoon-enclave: cannot watch SIGTERM: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let digest = hex::encode(enclave.evidence_digest().0);
    eprintln!("ready listen={listen} evidence_digest={digest}");
    if print_digest {
        println!("{digest}");
    }
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    };
    enclave.serve(listener, shutdown).await;
    info!("stopped");
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}
