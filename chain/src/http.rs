//! [`TonHttpClient`]: the production [`ChainClient`] over the TON HTTP API
//! v2 (the toncenter-compatible JSON API), calls `getAddressInformation`,
//! `runGetMethod`, `sendBocReturnHash` and `getTransactions`.
//!
//! Every call goes through a client-side rate limit (the public API allows
//! one request a second without a key), and is retried with exponential
//! back-off and jitter on HTTP 429, 5xx, timeouts and connection errors,
//! waiting at least what a `Retry-After` header (in seconds) asks. Errors
//! keep their cause (connection refused, DNS, timeout, the API's message).
//!
//! What is trusted from the API's answers and what is checked: bags of
//! cells are parsed strictly ([`Cell::from_boc`]); a transaction's fields
//! are read from its own bag of cells (`data`), whose root hash and logical
//! time must be the transaction id the API gives, not from the API's JSON
//! rendering of it; the hash [`ChainClient::send_message`] returns is
//! computed here from the message sent. Everything else (that an account's
//! state is the chain's) rests on trusting the endpoint: see
//! `chain/README.md`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64ct::{Base64, Encoding as _};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{block, Cell};
use serde_json::{json, Value};

use crate::{
    AccountState, AccountStatus, ChainClient, ChainError, StackValue, Transaction, TransactionId,
    TvmInt,
};

/// How to reach a TON HTTP API v2 endpoint.
#[derive(Clone, PartialEq)]
pub struct ChainApiConfig {
    /// The API's base URL, e.g. `https://toncenter.com/api/v2` (methods are
    /// appended as `/getAddressInformation` etc.).
    pub endpoint: String,
    /// Sent as `X-API-Key` when set.
    pub api_key: Option<String>,
    /// Per-request timeout (connect and answer).
    pub timeout: Duration,
    /// Retries after the first attempt (on 429, 5xx, timeouts, connection
    /// errors).
    pub max_retries: u32,
    /// Client-side limit on requests a second, retries included (`0` or
    /// less: none).
    pub requests_per_second: f64,
}

impl std::fmt::Debug for ChainApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainApiConfig")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("requests_per_second", &self.requests_per_second)
            .finish()
    }
}

impl ChainApiConfig {
    /// Defaults for `endpoint`: no key, 10 s timeout, 3 retries, and 1
    /// request a second (what the public API allows without a key).
    pub fn new(endpoint: impl Into<String>) -> ChainApiConfig {
        ChainApiConfig {
            endpoint: endpoint.into(),
            api_key: None,
            timeout: Duration::from_secs(10),
            max_retries: 3,
            requests_per_second: 1.0,
        }
    }

    /// The configuration the command-line tools share (`--chain-api URL
    /// [--chain-api-key-file F] [--chain-api-rps N]`): the key is the
    /// file's one line, and the file must be its owner's alone (mode 0600
    /// or stricter, as for wallet keys); the rate defaults to 1 request a
    /// second without a key and 10 with one (what the public API allows);
    /// `0` means no client-side limit.
    pub fn from_flags(
        endpoint: &str,
        key_file: Option<&std::path::Path>,
        requests_per_second: Option<f64>,
    ) -> Result<ChainApiConfig, ChainError> {
        let mut config = ChainApiConfig::new(endpoint);
        if let Some(path) = key_file {
            config.api_key = Some(read_api_key(path)?);
            config.requests_per_second = 10.0;
        }
        if let Some(rps) = requests_per_second {
            if !rps.is_finite() || rps < 0.0 {
                return Err(ChainError::InvalidRequest(format!(
                    "--chain-api-rps {rps}: requests a second must be a number, 0 or more"
                )));
            }
            config.requests_per_second = rps;
        }
        Ok(config)
    }
}

/// The API key in `path`: its one line, trimmed; refused when empty or
/// when group or others may read the file.
pub fn read_api_key(path: &std::path::Path) -> Result<String, ChainError> {
    let bad = |reason: String| {
        ChainError::InvalidRequest(format!("chain API key file {}: {reason}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets group or others read it; it must be 0600 or stricter (chmod 600 {})",
                path.display()
            )));
        }
    }
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() || key.lines().count() != 1 {
        return Err(bad("expected the key on one line".into()));
    }
    Ok(key.to_string())
}

/// First back-off step; doubled each retry, capped at [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts (a longer `Retry-After` included).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The production chain client over the TON HTTP API v2.
pub struct TonHttpClient {
    cfg: ChainApiConfig,
    base: String,
    http: reqwest::Client,
    /// The earliest time the next request may start.
    next_slot: tokio::sync::Mutex<Instant>,
    requests: AtomicU64,
    recent: Mutex<VecDeque<Instant>>,
    jitter: AtomicU64,
}

impl std::fmt::Debug for TonHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TonHttpClient")
            .field("cfg", &self.cfg)
            .field("requests", &self.requests_made())
            .finish()
    }
}

/// One failed attempt: whether worth another, and what a `Retry-After`
/// asked for.
struct Failure {
    error: ChainError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl TonHttpClient {
    /// A client for `cfg.endpoint` (must be an `http://` or `https://`
    /// URL).
    pub fn new(cfg: ChainApiConfig) -> Result<TonHttpClient, ChainError> {
        let base = cfg.endpoint.trim_end_matches('/').to_string();
        let bad = |reason: String| ChainError::InvalidRequest(reason);
        let url = reqwest::Url::parse(&base)
            .map_err(|e| bad(format!("chain API endpoint {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "chain API endpoint {base:?}: http:// or https:// expected"
            )));
        }
        if cfg.requests_per_second.is_nan() {
            return Err(bad("requests_per_second is not a number".into()));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = &cfg.api_key {
            let mut v = reqwest::header::HeaderValue::from_str(k.trim())
                .map_err(|_| bad("the API key is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert("X-API-Key", v);
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .default_headers(headers)
            .user_agent(concat!("cocoon-chain/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(format!("HTTP client: {}", chain_of(&e))))?;
        let seed = {
            use std::hash::{BuildHasher as _, Hasher as _};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish() | 1
        };
        Ok(TonHttpClient {
            cfg,
            base,
            http,
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            jitter: AtomicU64::new(seed),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &ChainApiConfig {
        &self.cfg
    }

    /// HTTP requests sent since it was made (every attempt counts).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// HTTP requests sent in the last 60 seconds: the "chain reads per
    /// minute" figure.
    pub fn requests_last_minute(&self) -> usize {
        let mut q = match self.recent.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        prune(&mut q, Instant::now());
        q.len()
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut q = match self.recent.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        prune(&mut q, now);
        q.push_back(now);
    }

    /// Waits for the rate limit's next slot.
    async fn pace(&self) {
        let rps = self.cfg.requests_per_second;
        if rps.is_nan() || rps <= 0.0 || rps.is_infinite() {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / rps);
        let at = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }

    /// A uniformly random fraction in [0, 1) (xorshift64*, seeded per
    /// client): the back-off's jitter.
    fn random(&self) -> f64 {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The wait before retry `attempt` (1-based): half the exponential
    /// step plus up to another half at random, at least `retry_after`,
    /// never more than [`MAX_BACKOFF`].
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let step = BASE_BACKOFF
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let jittered = step / 2 + step.mul_f64(self.random() / 2.0);
        jittered
            .max(retry_after.unwrap_or_default())
            .min(MAX_BACKOFF)
    }

    /// One API method, retried as configured; the `result` of an `ok`
    /// answer.
    async fn call(
        &self,
        method: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ChainError> {
        let url = format!("{}/{method}", self.base);
        let mut attempt = 0u32;
        loop {
            self.pace().await;
            self.count();
            let req = match body {
                Some(b) => self.http.post(&url).json(b),
                None => self.http.get(&url).query(query),
            };
            let failure = match req.send().await {
                Ok(resp) => match self.answer(resp).await {
                    Ok(v) => return Ok(v),
                    Err(f) => f,
                },
                Err(e) => Failure {
                    error: self.unreachable(&e),
                    retry: true,
                    retry_after: None,
                },
            };
            if !failure.retry || attempt >= self.cfg.max_retries {
                return Err(match failure.error {
                    ChainError::Unreachable { endpoint, reason } if attempt > 0 => {
                        ChainError::Unreachable {
                            endpoint,
                            reason: format!("{reason} (after {} attempts)", attempt + 1),
                        }
                    }
                    e => e,
                });
            }
            attempt += 1;
            tokio::time::sleep(self.backoff(attempt, failure.retry_after)).await;
        }
    }

    async fn answer(&self, resp: reqwest::Response) -> Result<Value, Failure> {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Err(Failure {
                    error: self.unreachable(&e),
                    retry: true,
                    retry_after,
                })
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let api_message = parsed.as_ref().and_then(|v| {
            v.get("error").and_then(|e| {
                e.as_str()
                    .map(str::to_string)
                    .or_else(|| Some(e.to_string()))
            })
        });
        if !status.is_success() {
            let message = api_message.unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
            });
            // A refused external message is final, whatever the status.
            let refused_external = message.contains("cannot apply external message")
                || message.contains("not accepted");
            let retry = (status.as_u16() == 429 || status.is_server_error()) && !refused_external;
            return Err(Failure {
                error: ChainError::Api {
                    endpoint: self.base.clone(),
                    status: status.as_u16(),
                    message,
                },
                retry,
                retry_after,
            });
        }
        let Some(v) = parsed else {
            return Err(Failure {
                error: self.malformed("the answer is not JSON"),
                retry: false,
                retry_after: None,
            });
        };
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            let code = v
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(status.as_u16());
            return Err(Failure {
                error: ChainError::Api {
                    endpoint: self.base.clone(),
                    status: code,
                    message: api_message.unwrap_or_else(|| "ok is not true".into()),
                },
                retry: code == 429 || code >= 500,
                retry_after,
            });
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(Failure {
                error: self.malformed("no result"),
                retry: false,
                retry_after: None,
            }),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ChainError {
        let chain = chain_of(e);
        let lower = chain.to_ascii_lowercase();
        let kind = if e.is_timeout() || lower.contains("timed out") {
            format!("timed out (after {:?})", self.cfg.timeout)
        } else if lower.contains("dns") || lower.contains("failed to lookup") {
            "DNS lookup failed".into()
        } else if lower.contains("connection refused") {
            "connection refused".into()
        } else if e.is_connect() {
            "cannot connect".into()
        } else {
            "request failed".into()
        };
        ChainError::Unreachable {
            endpoint: self.base.clone(),
            reason: format!("{kind}: {chain}"),
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> ChainError {
        ChainError::Malformed {
            endpoint: self.base.clone(),
            reason: reason.into(),
        }
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant) {
    while q
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        q.pop_front();
    }
}

/// An error and its sources, joined with ": ".
fn chain_of(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn str_or_num(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A TVM integer as the API writes it: decimal, or `0x` hex, either
/// optionally negative.
pub fn parse_tvm_int(s: &str) -> Option<TvmInt> {
    let s = s.trim();
    let (negative, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut magnitude = [0u8; 32];
    if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let padded = format!("{h:0>64}");
        hex::decode_to_slice(padded, &mut magnitude).ok()?;
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        for d in digits.bytes() {
            // magnitude = magnitude * 10 + d, failing on overflow.
            let mut carry = u16::from(d - b'0');
            for byte in magnitude.iter_mut().rev() {
                let v = u16::from(*byte) * 10 + carry;
                *byte = v as u8;
                carry = v >> 8;
            }
            if carry != 0 {
                return None;
            }
        }
    }
    Some(TvmInt {
        negative: negative && magnitude != [0; 32],
        magnitude,
    })
}

fn tvm_int_hex(v: &TvmInt) -> String {
    let h = hex::encode(v.magnitude);
    let h = h.trim_start_matches('0');
    let h = if h.is_empty() { "0" } else { h };
    if v.negative {
        format!("-0x{h}")
    } else {
        format!("0x{h}")
    }
}

fn b64_boc(b: &[u8]) -> String {
    Base64::encode_string(b)
}

impl TonHttpClient {
    fn decode_boc(&self, what: &str, b64: &str) -> Result<Vec<u8>, ChainError> {
        let bytes = Base64::decode_vec(b64.trim())
            .map_err(|_| self.malformed(format!("{what}: not base64")))?;
        Cell::from_boc(&bytes).map_err(|e| self.malformed(format!("{what}: {e}")))?;
        Ok(bytes)
    }

    fn decode_stack_entry(&self, e: &Value) -> Result<StackValue, ChainError> {
        let arr = e
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| self.malformed(format!("stack entry {e} is not [type, value]")))?;
        let kind = arr[0].as_str().unwrap_or_default();
        let v = &arr[1];
        fn boc_of(v: &Value) -> Option<&str> {
            v.as_str()
                .or_else(|| v.get("bytes").and_then(Value::as_str))
        }
        match kind {
            "num" | "int" | "number" => {
                let s = str_or_num(Some(v))
                    .ok_or_else(|| self.malformed(format!("stack number {v}")))?;
                parse_tvm_int(&s)
                    .map(StackValue::Int)
                    .ok_or_else(|| self.malformed(format!("stack number {s:?}")))
            }
            "cell" => {
                let b = boc_of(v).ok_or_else(|| self.malformed("stack cell without bytes"))?;
                Ok(StackValue::Cell(self.decode_boc("stack cell", b)?))
            }
            "slice" => {
                let b = boc_of(v).ok_or_else(|| self.malformed("stack slice without bytes"))?;
                Ok(StackValue::Slice(self.decode_boc("stack slice", b)?))
            }
            "null" => Ok(StackValue::Null),
            "list" | "tuple" => {
                let elements = v
                    .get("elements")
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.malformed(format!("stack {kind} without elements")))?;
                elements
                    .iter()
                    .map(|x| self.decode_element(x, 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map(StackValue::Tuple)
            }
            other => Err(self.malformed(format!("stack entry type {other:?}"))),
        }
    }

    /// An element of a tuple or list in tonlib's object form
    /// (`tvm.stackEntryNumber` etc.).
    fn decode_element(&self, e: &Value, depth: u32) -> Result<StackValue, ChainError> {
        if depth > 32 {
            return Err(self.malformed("stack tuples nested deeper than 32"));
        }
        if e.is_null() {
            return Ok(StackValue::Null);
        }
        let t = e.get("@type").and_then(Value::as_str).unwrap_or_default();
        match t {
            "tvm.stackEntryNumber" => {
                let n = str_or_num(e.get("number").and_then(|n| n.get("number")))
                    .ok_or_else(|| self.malformed("tuple number without a value"))?;
                parse_tvm_int(&n)
                    .map(StackValue::Int)
                    .ok_or_else(|| self.malformed(format!("tuple number {n:?}")))
            }
            "tvm.stackEntryCell" => {
                let b = e
                    .get("cell")
                    .and_then(|c| c.get("bytes"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.malformed("tuple cell without bytes"))?;
                Ok(StackValue::Cell(self.decode_boc("tuple cell", b)?))
            }
            "tvm.stackEntrySlice" => {
                let b = e
                    .get("slice")
                    .and_then(|c| c.get("bytes"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.malformed("tuple slice without bytes"))?;
                Ok(StackValue::Slice(self.decode_boc("tuple slice", b)?))
            }
            "tvm.stackEntryTuple" | "tvm.stackEntryList" => {
                let inner = e
                    .get("tuple")
                    .or_else(|| e.get("list"))
                    .and_then(|t| t.get("elements"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.malformed("tuple without elements"))?;
                inner
                    .iter()
                    .map(|x| self.decode_element(x, depth + 1))
                    .collect::<Result<Vec<_>, _>>()
                    .map(StackValue::Tuple)
            }
            "tvm.stackEntryUnsupported" | "tvm.stackEntryNull" => Ok(StackValue::Null),
            other => Err(self.malformed(format!("tuple element type {other:?}"))),
        }
    }

    fn encode_stack_entry(v: &StackValue) -> Result<Value, ChainError> {
        Ok(match v {
            StackValue::Int(i) => json!(["num", tvm_int_hex(i)]),
            StackValue::Cell(b) => json!(["tvm.Cell", b64_boc(b)]),
            StackValue::Slice(b) => json!(["tvm.Slice", b64_boc(b)]),
            StackValue::Null | StackValue::Tuple(_) => {
                return Err(ChainError::InvalidRequest(
                    "the TON HTTP API v2 takes numbers, cells and slices as get-method arguments, not null or tuples".into(),
                ))
            }
        })
    }

    fn transaction_from(
        &self,
        address: &ContractAddress,
        t: &Value,
    ) -> Result<Transaction, ChainError> {
        let id = t
            .get("transaction_id")
            .ok_or_else(|| self.malformed("transaction without transaction_id"))?;
        let lt: u64 = str_or_num(id.get("lt"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.malformed("transaction id without lt"))?;
        let hash: [u8; 32] = id
            .get("hash")
            .and_then(Value::as_str)
            .and_then(|h| Base64::decode_vec(h).ok())
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| self.malformed("transaction id without a 32-byte hash"))?;
        let data = t
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| self.malformed("transaction without data"))?;
        let boc = self.decode_boc("transaction data", data)?;
        let root =
            Cell::from_boc(&boc).map_err(|e| self.malformed(format!("transaction data: {e}")))?;
        let s = block::parse_transaction(&root)
            .map_err(|e| self.malformed(format!("transaction {lt}: {e}")))?;
        if s.hash != hash || s.lt != lt {
            return Err(self.malformed(format!(
                "transaction data (lt {}, hash {}) is not transaction {lt} {}",
                s.lt,
                hex::encode(s.hash),
                hex::encode(hash)
            )));
        }
        if s.account != address.hash {
            return Err(self.malformed(format!(
                "transaction {lt} is on account {}, not {address}",
                hex::encode(s.account)
            )));
        }
        let (in_source, in_value, in_body_hash) = match &s.in_msg {
            Some(m) => (m.source, m.value, Some(m.body_hash)),
            None => (None, 0, None),
        };
        Ok(Transaction {
            id: TransactionId { lt, hash },
            utime: u64::from(s.now),
            in_source,
            in_value,
            in_body_hash,
            success: s.success,
            exit_code: s.exit_code,
        })
    }
}

#[async_trait::async_trait]
impl ChainClient for TonHttpClient {
    async fn account_state(&self, address: &ContractAddress) -> Result<AccountState, ChainError> {
        let r = self
            .call(
                "getAddressInformation",
                &[("address", address.to_string())],
                None,
            )
            .await?;
        let balance: u128 = str_or_num(r.get("balance"))
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| self.malformed("balance is not a non-negative integer"))?;
        let state = r.get("state").and_then(Value::as_str).unwrap_or_default();
        let boc_field = |name: &str| -> Result<Option<Vec<u8>>, ChainError> {
            match r.get(name).and_then(Value::as_str) {
                None | Some("") => Ok(None),
                Some(b) => self.decode_boc(name, b).map(Some),
            }
        };
        let code = boc_field("code")?;
        let data = boc_field("data")?;
        let last = r.get("last_transaction_id");
        let lt: u64 = str_or_num(last.and_then(|l| l.get("lt")))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let last_transaction = if lt == 0 {
            None
        } else {
            let hash: [u8; 32] = last
                .and_then(|l| l.get("hash"))
                .and_then(Value::as_str)
                .and_then(|h| Base64::decode_vec(h).ok())
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| self.malformed("last transaction without a 32-byte hash"))?;
            Some(TransactionId { lt, hash })
        };
        let status = match state {
            "active" => AccountStatus::Active,
            "frozen" => AccountStatus::Frozen,
            // The API reports an account it never saw as uninitialised
            // with no balance and no transaction.
            "uninitialized" | "uninit" if balance == 0 && last_transaction.is_none() => {
                AccountStatus::Nonexistent
            }
            "uninitialized" | "uninit" => AccountStatus::Uninitialized,
            other => return Err(self.malformed(format!("account state {other:?}"))),
        };
        if status == AccountStatus::Active && code.is_none() {
            return Err(self.malformed("an active account without code"));
        }
        Ok(AccountState {
            balance,
            status,
            code,
            data,
            last_transaction,
        })
    }

    async fn run_get_method(
        &self,
        address: &ContractAddress,
        method: &str,
        args: &[StackValue],
    ) -> Result<Vec<StackValue>, ChainError> {
        let stack = args
            .iter()
            .map(TonHttpClient::encode_stack_entry)
            .collect::<Result<Vec<_>, _>>()?;
        let body = json!({"address": address.to_string(), "method": method, "stack": stack});
        let r = self.call("runGetMethod", &[], Some(&body)).await?;
        let exit_code = r
            .get("exit_code")
            .and_then(Value::as_i64)
            .and_then(|c| i32::try_from(c).ok())
            .ok_or_else(|| self.malformed("runGetMethod without exit_code"))?;
        // 0 and 1 are TVM's two normal terminations.
        if exit_code != 0 && exit_code != 1 {
            return Err(ChainError::GetMethodFailed {
                address: *address,
                method: method.into(),
                exit_code,
            });
        }
        r.get("stack")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("runGetMethod without a stack"))?
            .iter()
            .map(|e| self.decode_stack_entry(e))
            .collect()
    }

    async fn send_message(&self, boc: &[u8]) -> Result<[u8; 32], ChainError> {
        let root = Cell::from_boc(boc)
            .map_err(|e| ChainError::InvalidRequest(format!("the message to send: {e}")))?;
        let body = json!({"boc": b64_boc(boc)});
        self.call("sendBocReturnHash", &[], Some(&body)).await?;
        Ok(root.hash())
    }

    async fn transactions(
        &self,
        address: &ContractAddress,
        limit: u32,
        before: Option<TransactionId>,
    ) -> Result<Vec<Transaction>, ChainError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The API starts at (and includes) the transaction named by lt and
        // hash: ask for one more and drop it.
        let mut query = vec![
            ("address", address.to_string()),
            ("limit", (limit + u32::from(before.is_some())).to_string()),
            ("archival", "true".to_string()),
        ];
        if let Some(b) = &before {
            query.push(("lt", b.lt.to_string()));
            query.push(("hash", Base64::encode_string(&b.hash)));
        }
        let r = self.call("getTransactions", &query, None).await?;
        let list = r
            .as_array()
            .ok_or_else(|| self.malformed("getTransactions result is not a list"))?;
        let mut out = Vec::with_capacity(list.len());
        for t in list {
            let tx = self.transaction_from(address, t)?;
            if Some(tx.id) == before {
                continue;
            }
            if let Some(prev) = out.last().map(|p: &Transaction| p.id.lt) {
                if tx.id.lt >= prev {
                    return Err(self.malformed("transactions are not newest first"));
                }
            }
            if before.is_some_and(|b| tx.id.lt >= b.lt) {
                return Err(self.malformed("a transaction not before the one asked"));
            }
            out.push(tx);
            if out.len() == limit as usize {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_configuration_reads_only_an_owner_only_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("cocoon-chain-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let write = |text: &str, mode: u32| {
            std::fs::write(&key, text).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("secret-key\n", 0o600);
        let c = ChainApiConfig::from_flags("http://127.0.0.1:1/api/v2", Some(&key), None).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("secret-key"));
        assert_eq!(c.requests_per_second, 10.0, "the keyed default");
        let c = ChainApiConfig::from_flags("http://x/", None, Some(0.0)).unwrap();
        assert_eq!((c.api_key, c.requests_per_second), (None, 0.0));
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            assert!(ChainApiConfig::from_flags("http://x/", None, Some(bad)).is_err());
        }
        write("secret-key\n", 0o644);
        let e = ChainApiConfig::from_flags("http://x/", Some(&key), None).unwrap_err();
        assert!(e.to_string().contains("mode 0644"), "{e}");
        for text in ["", "  \n", "one\ntwo\n"] {
            write(text, 0o600);
            let e = read_api_key(&key).unwrap_err();
            assert!(e.to_string().contains("one line"), "{text:?}: {e}");
        }
        let e = read_api_key(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tvm_ints() {
        let v = parse_tvm_int("0x1f").unwrap();
        assert_eq!(v.to_u128(), Some(31));
        assert_eq!(tvm_int_hex(&v), "0x1f");
        let n = parse_tvm_int("-0x10").unwrap();
        assert!(n.negative);
        assert_eq!(tvm_int_hex(&n), "-0x10");
        assert_eq!(
            parse_tvm_int("340282366920938463463374607431768211456")
                .unwrap()
                .magnitude[15],
            1
        );
        assert_eq!(parse_tvm_int("12345").unwrap().to_u128(), Some(12345));
        assert!(!parse_tvm_int("-0").unwrap().negative);
        assert!(parse_tvm_int(&format!("0x1{}", "0".repeat(64))).is_none());
        assert!(parse_tvm_int("1e5").is_none());
        assert!(parse_tvm_int("").is_none());
        // 2^256 does not fit the 32-byte magnitude.
        assert!(parse_tvm_int(
            "115792089237316195423570985008687907853269984665640564039457584007913129639936"
        )
        .is_none());
        assert_eq!(tvm_int_hex(&TvmInt::from_u128(0)), "0x0");
    }
}
