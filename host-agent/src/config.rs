//! The host's configuration: where enclaves listen, what the host refuses
//! to exceed, and the TOML file an operator writes.
//!
//! Owns [`EnclaveAddr`] (`unix:/path` or `vsock:CID:PORT`), [`Limits`]
//! (every bound and timeout the daemon enforces, with defaults), the file
//! form [`FileConfig`] (strict: unknown keys are errors), [`HostConfig`],
//! the value [`crate::start`] takes, and the rule for where the operator
//! API may listen ([`check_admin_exposure`]). It reads no file and no socket: the
//! binary reads the files and passes their text in, so tests build a
//! [`HostConfig`] directly.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use cocoon_protocol::addr::{Addr, Role};
use cocoon_protocol::local_auth::BearerToken;
use cocoon_protocol::seal::MAX_SEALED_REQUEST;
use cocoon_verifier::Policy;
use serde::Deserialize;

use crate::clock::Clock;

/// Slack on top of [`MAX_SEALED_REQUEST`] in the body limit, so the limit
/// never refuses a body the sealed-request decoder would accept.
pub const REQUEST_BODY_SLACK: usize = 64;
/// The largest request body the host will ever read (and its default).
pub const MAX_REQUEST_BODY: usize = MAX_SEALED_REQUEST + REQUEST_BODY_SLACK;

/// Why a configuration is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML does not parse or has unknown keys.
    #[error("config: {0}")]
    Toml(String),
    /// A value is out of range or malformed.
    #[error("config: {field}: {reason}")]
    Invalid {
        /// Which setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A required setting is missing from both the file and the flags.
    #[error("config: {0} is required (in the config file or as a flag)")]
    Missing(&'static str),
}

/// Where an enclave listens for the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EnclaveAddr {
    /// A Unix socket (tests; a hybrid-vsock bridge).
    Unix(PathBuf),
    /// AF_VSOCK context id and port (a confidential VM).
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The port the enclave listens on.
        port: u32,
    },
    /// Vsock through a user-space device (`vhost-device-vsock`, Firecracker
    /// style "hybrid vsock"): the host connects to this Unix socket, writes
    /// `CONNECT <port>\n` and reads `OK <n>\n`; from then on the stream is
    /// the guest's vsock connection. Used where the host kernel has no
    /// `/dev/vhost-vsock` (the test machines; `cocoon-host launch` picks it).
    HybridVsock {
        /// The device's Unix socket (its `uds-path`).
        path: PathBuf,
        /// The guest port.
        port: u32,
    },
}

/// Read and written by [`cocoon_protocol::addr`], as the side that connects.
impl FromStr for EnclaveAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<EnclaveAddr, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "enclave",
            reason,
        };
        match Addr::parse(s, Role::Connect).map_err(|e| invalid(e.to_string()))? {
            Addr::Unix(path) => Ok(EnclaveAddr::Unix(path)),
            Addr::Vsock {
                cid: Some(cid),
                port,
            } => Ok(EnclaveAddr::Vsock { cid, port }),
            Addr::HybridVsock { path, port } => Ok(EnclaveAddr::HybridVsock { path, port }),
            Addr::Vsock { cid: None, .. } => Err(invalid(format!(
                "{s:?}: the host connects to one guest: give vsock:CID:PORT"
            ))),
        }
    }
}

impl From<&EnclaveAddr> for Addr {
    fn from(a: &EnclaveAddr) -> Addr {
        match a {
            EnclaveAddr::Unix(p) => Addr::Unix(p.clone()),
            EnclaveAddr::Vsock { cid, port } => Addr::Vsock {
                cid: Some(*cid),
                port: *port,
            },
            EnclaveAddr::HybridVsock { path, port } => Addr::HybridVsock {
                path: path.clone(),
                port: *port,
            },
        }
    }
}

impl fmt::Display for EnclaveAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Addr::from(self).fmt(f)
    }
}

impl<'de> Deserialize<'de> for EnclaveAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EnclaveAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Every bound and timeout the daemon enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest `POST /v1/requests` body (at most [`MAX_REQUEST_BODY`]).
    pub max_request_bytes: usize,
    /// Concurrent streams per enclave connection.
    pub max_streams_per_enclave: usize,
    /// How long a request waits for a free stream on its enclave before a
    /// `503`.
    pub queue_timeout: Duration,
    /// Sustained requests per second per account (token bucket rate).
    pub account_requests_per_second: f64,
    /// Requests an account may make at once above the rate (bucket size).
    pub account_burst: u32,
    /// Concurrent streams per account.
    pub account_max_streams: u32,
    /// Accounts whose limiter state is kept before idle ones are pruned.
    pub max_tracked_accounts: usize,
    /// From forwarding a request to the enclave's first frame.
    pub first_frame_timeout: Duration,
    /// Between two frames of one stream (and for a client to take a chunk).
    pub idle_timeout: Duration,
    /// Whole request, first byte to last.
    pub total_timeout: Duration,
    /// After a client went away: how long to wait for the enclave's receipt
    /// (the work it already did is still billed).
    pub cancel_grace: Duration,
    /// Connecting to an enclave.
    pub connect_timeout: Duration,
    /// An enclave's answer to an evidence request.
    pub evidence_timeout: Duration,
    /// How often a connected enclave's evidence is fetched and verified
    /// again.
    pub evidence_refresh: Duration,
    /// Reports bound to a client's nonce an account may ask for per minute
    /// (`GET /v1/evidence/nonce`; a hardware quote is slow to make).
    pub nonce_evidence_per_minute: f64,
    /// How many of them an account may ask for at once above that rate.
    pub nonce_evidence_burst: u32,
    /// First reconnect delay; doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// How long in-flight streams may run after a drain starts.
    pub drain_timeout: Duration,
    /// Receipts queries signed further than this from the host's clock are
    /// refused (seconds).
    pub receipts_query_max_skew_secs: u64,
    /// Most appends per ledger transaction (group commit).
    pub ledger_max_batch: usize,
    /// Frames buffered per stream between the enclave reader and the
    /// client (backpressure).
    pub stream_buffer_frames: usize,
    /// How long the connection's reader waits for room in one stream's
    /// full buffer before it drops that stream (and cancels it). The frame
    /// protocol has no per-stream flow control, so while it waits every
    /// other stream on the connection waits too: this bounds that
    /// head-of-line blocking.
    pub stream_stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: MAX_REQUEST_BODY,
            max_streams_per_enclave: 64,
            queue_timeout: Duration::from_secs(5),
            account_requests_per_second: 5.0,
            account_burst: 20,
            account_max_streams: 8,
            max_tracked_accounts: 100_000,
            first_frame_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
            cancel_grace: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            evidence_timeout: Duration::from_secs(10),
            evidence_refresh: Duration::from_secs(300),
            nonce_evidence_per_minute: 6.0,
            nonce_evidence_burst: 3,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            receipts_query_max_skew_secs: 300,
            ledger_max_batch: 1024,
            stream_buffer_frames: 16,
            stream_stall_timeout: Duration::from_secs(2),
        }
    }
}

impl Limits {
    /// Check every value is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        };
        if self.max_request_bytes == 0 || self.max_request_bytes > MAX_REQUEST_BODY {
            return bad(
                "max_request_bytes",
                &format!("must be 1..={MAX_REQUEST_BODY} (a sealed request is at most {MAX_SEALED_REQUEST} bytes)"),
            );
        }
        if self.max_streams_per_enclave == 0 {
            return bad("max_streams_per_enclave", "must be at least 1");
        }
        if !(self.account_requests_per_second.is_finite() && self.account_requests_per_second > 0.0)
        {
            return bad("account_requests_per_second", "must be a positive number");
        }
        if !(self.nonce_evidence_per_minute.is_finite() && self.nonce_evidence_per_minute > 0.0) {
            return bad("nonce_evidence_per_minute", "must be a positive number");
        }
        if self.account_burst == 0 {
            return bad("account_burst", "must be at least 1");
        }
        if self.account_max_streams == 0 {
            return bad("account_max_streams", "must be at least 1");
        }
        if self.max_tracked_accounts == 0 {
            return bad("max_tracked_accounts", "must be at least 1");
        }
        if self.ledger_max_batch == 0 {
            return bad("ledger_max_batch", "must be at least 1");
        }
        if self.stream_buffer_frames == 0 {
            return bad("stream_buffer_frames", "must be at least 1");
        }
        for (field, d) in [
            ("first_frame_timeout", self.first_frame_timeout),
            ("idle_timeout", self.idle_timeout),
            ("total_timeout", self.total_timeout),
            ("connect_timeout", self.connect_timeout),
            ("evidence_timeout", self.evidence_timeout),
            ("evidence_refresh", self.evidence_refresh),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("stream_stall_timeout", self.stream_stall_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "must be more than 0 seconds");
            }
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return bad(
                "reconnect_backoff_max",
                "must not be less than reconnect_backoff_min",
            );
        }
        Ok(())
    }
}

/// What [`crate::start`] needs: addresses of the enclaves, the verifier
/// policy their evidence must meet, the ledger file and the limits. The
/// listening sockets are passed separately ([`crate::Listeners`]).
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Enclaves to connect to, in the order `/v1/evidence` lists them.
    pub enclaves: Vec<EnclaveAddr>,
    /// The host's own verifier policy: an enclave is served only once its
    /// evidence meets it (the simulated TEE only if the policy opts in).
    pub policy: Policy,
    /// The SQLite ledger file (created if missing).
    pub ledger_path: PathBuf,
    /// Bounds and timeouts.
    pub limits: Limits,
    /// The TON payment contract this host settles with; when set, requests
    /// need the client's authorization of the enclave's receipt key
    /// (`cocoon-authorization`) and stay within its cap.
    pub settlement: Option<cocoon_protocol::settlement::ContractAddress>,
    /// The deposit check ([`crate::deposits`]): with a settlement contract,
    /// each request is admitted only while the client's deposit in it
    /// covers the request's worst case and what the host served it unpaid.
    /// `None` serves without checking deposits (the binary requires
    /// `--no-deposit-check` for that, and warns).
    pub deposits: Option<crate::deposits::DepositConfig>,
    /// Where AMD's SEV-SNP CRLs are fetched from, to attach to the SNP
    /// evidence the host serves ([`crate::snp_crl`]).
    pub amd_kds_url: String,
    /// Where Intel's TDX collateral is fetched from (Intel's PCS or a
    /// provider's PCCS), to attach to the TDX evidence the host serves
    /// ([`crate::intel_pcs`]).
    pub intel_pcs_url: String,
    /// The token every operator API request must then carry as
    /// `Authorization: Bearer <token>`. Required when the operator API
    /// listens on a non-loopback address; without it, the operator API
    /// answers only requests whose `Host` names a loopback address or
    /// `localhost` (no DNS rebinding from a browser).
    pub admin_token: Option<BearerToken>,
    /// Where the service reads the time: [`Clock::system`] in the daemon,
    /// a pinned clock in tests.
    pub clock: Clock,
    /// The release manifest of the image the enclaves run, served at
    /// `GET /v1/release` as its canonical bytes (`None`: 404).
    pub release_manifest: Option<cocoon_protocol::release::ReleaseManifest>,
}

/// Whether the operator API may listen on `addr`: a loopback address
/// always; any other only when the operator asked for it explicitly
/// (`allow_remote`: `--admin-allow-remote`) and a token guards it
/// (`has_token`: `--admin-token-file`). The operator API exports every
/// account's receipts and can drain the service.
pub fn check_admin_exposure(
    addr: SocketAddr,
    allow_remote: bool,
    has_token: bool,
) -> Result<(), ConfigError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ConfigError::Invalid {
            field: "admin_listen",
            reason: format!(
                "{addr} is not a loopback address, and the operator API exports every account's receipts and can drain the host: keep it on 127.0.0.1 or [::1], or pass --admin-allow-remote with --admin-token-file FILE"
            ),
        });
    }
    if allow_remote && !has_token {
        return Err(ConfigError::Invalid {
            field: "admin_allow_remote",
            reason: "--admin-allow-remote needs --admin-token-file FILE (a file only its owner can read, holding a token of at least 32 characters, e.g. made with `(umask 077; openssl rand -hex 32 > FILE)`); every operator request must then send Authorization: Bearer <token>".into(),
        });
    }
    Ok(())
}

fn secs(field: &'static str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).map_err(|_| ConfigError::Invalid {
        field,
        reason: format!("{v} is not a duration in seconds"),
    })
}

/// The `[limits]` table: every key optional, defaults from [`Limits`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsFile {
    pub max_request_bytes: Option<usize>,
    pub max_streams_per_enclave: Option<usize>,
    pub queue_timeout_secs: Option<f64>,
    pub account_requests_per_second: Option<f64>,
    pub account_burst: Option<u32>,
    pub account_max_streams: Option<u32>,
    pub max_tracked_accounts: Option<usize>,
    pub first_frame_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub total_timeout_secs: Option<f64>,
    pub cancel_grace_secs: Option<f64>,
    pub connect_timeout_secs: Option<f64>,
    pub evidence_timeout_secs: Option<f64>,
    pub evidence_refresh_secs: Option<f64>,
    pub nonce_evidence_per_minute: Option<f64>,
    pub nonce_evidence_burst: Option<u32>,
    pub reconnect_backoff_min_secs: Option<f64>,
    pub reconnect_backoff_max_secs: Option<f64>,
    pub drain_timeout_secs: Option<f64>,
    pub receipts_query_max_skew_secs: Option<u64>,
    pub ledger_max_batch: Option<usize>,
    pub stream_buffer_frames: Option<usize>,
    pub stream_stall_timeout_secs: Option<f64>,
}

impl LimitsFile {
    /// Apply the values that are set on top of `base`, then validate.
    pub fn apply(&self, mut base: Limits) -> Result<Limits, ConfigError> {
        macro_rules! plain {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { base.$f = v; } )*};
        }
        macro_rules! dur {
            ($($f:ident <- $k:ident),*) => {$(
                if let Some(v) = self.$k { base.$f = secs(stringify!($k), v)?; }
            )*};
        }
        plain!(
            max_request_bytes,
            max_streams_per_enclave,
            account_requests_per_second,
            account_burst,
            account_max_streams,
            max_tracked_accounts,
            receipts_query_max_skew_secs,
            ledger_max_batch,
            stream_buffer_frames,
            nonce_evidence_per_minute,
            nonce_evidence_burst
        );
        dur!(
            queue_timeout <- queue_timeout_secs,
            first_frame_timeout <- first_frame_timeout_secs,
            idle_timeout <- idle_timeout_secs,
            total_timeout <- total_timeout_secs,
            cancel_grace <- cancel_grace_secs,
            connect_timeout <- connect_timeout_secs,
            evidence_timeout <- evidence_timeout_secs,
            evidence_refresh <- evidence_refresh_secs,
            reconnect_backoff_min <- reconnect_backoff_min_secs,
            reconnect_backoff_max <- reconnect_backoff_max_secs,
            drain_timeout <- drain_timeout_secs,
            stream_stall_timeout <- stream_stall_timeout_secs
        );
        base.validate()?;
        Ok(base)
    }
}

/// The config file:
///
/// ```toml
/// listen = "127.0.0.1:8080"          # public API
/// admin_listen = "127.0.0.1:8081"    # operator endpoints; loopback unless
///                                    # admin_allow_remote = true, which
///                                    # needs admin_token_file
/// enclaves = ["vsock:3:5000"]        # or "unix:/run/cocoon/enclave.sock"
/// policy = "/etc/cocoon/policy.toml" # cocoon-verifier policy
/// ledger = "/var/lib/cocoon/ledger.sqlite"
/// settlement_contract = "0:<64 hex>"  # the payment contract; then one of:
/// chain_api = "https://toncenter.com/api/v2/"  # deposit check (and
/// chain_api_key_file = "/etc/cocoon/toncenter.key" # its key, optional)
/// deposit_ttl_secs = 5
/// # no_deposit_check = true          # serve without it (warned loudly)
///
/// [limits]                           # every key optional
/// account_requests_per_second = 5.0
/// drain_timeout_secs = 30
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Public API address.
    pub listen: Option<SocketAddr>,
    /// Operator endpoints address.
    pub admin_listen: Option<SocketAddr>,
    /// Allow a non-loopback `admin_listen` (needs `admin_token_file`).
    #[serde(default)]
    pub admin_allow_remote: bool,
    /// File holding the operator API's bearer token (mode 0600).
    pub admin_token_file: Option<PathBuf>,
    /// Enclave addresses.
    #[serde(default)]
    pub enclaves: Vec<EnclaveAddr>,
    /// Verifier policy file.
    pub policy: Option<PathBuf>,
    /// Ledger file.
    pub ledger: Option<PathBuf>,
    /// The TON payment contract (raw address `0:<64 hex>`).
    pub settlement_contract: Option<String>,
    /// The TON HTTP API (toncenter v2) the deposit check reads.
    pub chain_api: Option<String>,
    /// File holding that API's key (mode 0600).
    pub chain_api_key_file: Option<PathBuf>,
    /// Seconds a deposit read is trusted.
    pub deposit_ttl_secs: Option<f64>,
    /// Serve a settling host without checking deposits (loudly warned).
    #[serde(default)]
    pub no_deposit_check: bool,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsFile,
}

impl FileConfig {
    /// Parse the TOML text of a config file.
    pub fn from_toml(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string().replace('\n', " ")))
    }
}

/// Default public API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default operator address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclave_addresses() {
        assert_eq!(
            "unix:/run/e.sock".parse::<EnclaveAddr>().unwrap(),
            EnclaveAddr::Unix("/run/e.sock".into())
        );
        assert_eq!(
            "vsock:3:5000".parse::<EnclaveAddr>().unwrap(),
            EnclaveAddr::Vsock { cid: 3, port: 5000 }
        );
        for bad in [
            "unix:",
            "vsock:3",
            "vsock:x:1",
            "vsock:1:-1",
            "tcp:1.2.3.4:5",
            "",
        ] {
            assert!(bad.parse::<EnclaveAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            EnclaveAddr::Vsock { cid: 3, port: 5000 }.to_string(),
            "vsock:3:5000"
        );
    }

    #[test]
    fn file_config_is_strict_and_applies_limits() {
        let c = FileConfig::from_toml(
            "listen = \"127.0.0.1:9000\"\nenclaves = [\"unix:/tmp/e\", \"vsock:4:1\"]\npolicy = \"p.toml\"\nledger = \"l.db\"\n[limits]\nidle_timeout_secs = 0.5\naccount_burst = 3\n",
        )
        .unwrap();
        assert_eq!(c.enclaves.len(), 2);
        let l = c.limits.apply(Limits::default()).unwrap();
        assert_eq!(l.idle_timeout, Duration::from_millis(500));
        assert_eq!(l.account_burst, 3);
        assert_eq!(l.max_request_bytes, MAX_REQUEST_BODY);
        assert!(FileConfig::from_toml("lisen = \"127.0.0.1:1\"\n").is_err());
        assert!(FileConfig::from_toml("[limits]\nidle_timeout = 1\n").is_err());
        assert!(FileConfig::from_toml("enclaves = [\"tcp:x\"]\n").is_err());
        let too_big = LimitsFile {
            max_request_bytes: Some(MAX_REQUEST_BODY + 1),
            ..LimitsFile::default()
        };
        assert!(too_big.apply(Limits::default()).is_err());
        let negative = LimitsFile {
            idle_timeout_secs: Some(-1.0),
            ..LimitsFile::default()
        };
        assert!(negative.apply(Limits::default()).is_err());
        Limits::default().validate().unwrap();
    }

    #[test]
    fn the_operator_api_stays_on_loopback_unless_asked_and_guarded() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for local in ["127.0.0.1:8081", "[::1]:8081", "127.0.0.2:0"] {
            check_admin_exposure(a(local), false, false).unwrap();
            check_admin_exposure(a(local), false, true).unwrap();
            check_admin_exposure(a(local), true, true).unwrap();
        }
        for remote in ["0.0.0.0:8081", "[::]:8081", "10.1.2.3:8081"] {
            let e = check_admin_exposure(a(remote), false, true).unwrap_err();
            assert!(e.to_string().contains("--admin-allow-remote"), "{e}");
            let e = check_admin_exposure(a(remote), true, false).unwrap_err();
            assert!(e.to_string().contains("--admin-token-file"), "{e}");
            check_admin_exposure(a(remote), true, true).unwrap();
        }
        let c = FileConfig::from_toml(
            "admin_listen = \"0.0.0.0:9\"\nadmin_allow_remote = true\nadmin_token_file = \"/etc/cocoon/admin.token\"\n",
        )
        .unwrap();
        assert!(c.admin_allow_remote);
        assert_eq!(
            c.admin_token_file,
            Some(PathBuf::from("/etc/cocoon/admin.token"))
        );
    }
}
