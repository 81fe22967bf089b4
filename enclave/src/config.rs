//! The enclave's configuration: a small TOML file, every field optional.
//!
//! Owns the fields, their defaults, their validation and the canonical TOML
//! form ([`EnclaveConfig::to_canonical_toml`]). The claims' `config_digest`
//! is SHA-256 of that canonical form, so it describes the configuration the
//! enclave actually runs (whether read from a file, left at the defaults or
//! built in code) and does not change with comments or formatting.
//!
//! ```toml
//! image_id = "cocoon-dev-unmeasured"
//! listen = "vsock:5000"                  # or "unix:/run/cocoon.sock"
//! max_concurrent = 64                    # requests running at once
//! max_streams_per_connection = 1024      # open streams per host connection
//! replay_window = 1048576                # served request ids remembered until they expire
//! max_request_lifetime_secs = 600        # a request's expiry may lie at most this far ahead
//! evidence_refresh_secs = 600            # re-attest (same keys, new report) this often
//! backend = "deterministic-test"
//! test_backend_reply_tokens = 48
//!
//! [pricing]                             # bounds of the host's load multiplier
//! min_multiplier_milli = 1000            # thousandths: 1000 = 1x
//! max_multiplier_milli = 3000
//!
//! [prices."cocoon-deterministic-test"]   # base prices, nanoton per token
//! prompt = 1
//! cached = 1                             # prompt tokens served from a cache (default: = prompt)
//! completion = 2
//! ```
//!
//! A release that many providers boot (one measurement for all of them)
//! leaves prices to each provider instead: `prices_from = "provider"`, no
//! `[prices]`, and for every served model the range a provider may choose
//! in, `[price_bounds.MODEL] prompt = [lo, hi]`, `completion = [lo, hi]`.
//! The provider's settings (`cocoon_protocol::settings`) then arrive once
//! at boot and are applied by [`EnclaveConfig::apply_provider_settings`];
//! the release's canonical form and digest stay the same, and the
//! settings' bytes are bound into the claims.
//!
//! The enclave charges a request exactly the prices the client accepted in
//! its billing metadata, and refuses it unless they are these base prices
//! scaled by a multiplier inside `[pricing]`'s bounds
//! ([`cocoon_protocol::pricing`]).
//!
//! The real backends (`backend = "tch"` or `"upstream"`) name their models;
//! every file is checked against its SHA-256 before it is used, and the
//! model digests go into the claims (the rest into the config digest):
//!
//! ```toml
//! backend = "tch"
//! device = "auto"                        # "cpu", "cuda" or "auto"
//! max_batch = 32                         # embedding sequences per forward pass
//! chat_batch = 8                         # chat conversations per decoding step
//!
//! [models.all-minilm-l6-v2]              # the name clients ask for
//! kind = "embedding"
//! path = "/models/minilm/model.pt"       # TorchScript
//! sha256 = "…64 hex digits…"
//! tokenizer = "/models/minilm/tokenizer.json"
//! tokenizer_sha256 = "…"
//! max_input_tokens = 512
//!
//! # backend = "upstream": an OpenAI-compatible server inside the guest
//! [upstream]
//! url = "http://127.0.0.1:8000"
//! timeout_secs = 300
//! [upstream.models.llama]                # name clients ask for
//! served_name = "meta-llama/Llama-3.1-8B" # name the upstream knows (default: same)
//! sha256 = "…"                           # digest of the weights it serves
//! weights = "/models/llama.safetensors"  # optional: checked at boot
//! tokenizer = "/models/llama/tokenizer.json"
//! tokenizer_sha256 = "…"
//! max_input_tokens = 8192
//! ```
//!
//! GPUs: with a `[gpu]` table the enclave takes NVIDIA confidential-computing
//! evidence from every GPU at boot, for a nonce derived from its fresh HPKE
//! key and epoch, and binds its digest into the claims. Without one it
//! claims no GPU.
//!
//! ```toml
//! [gpu]
//! evidence = "nvml"                                  # the driver's NVML library
//! library = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"   # optional; default: found by the loader
//! rims = ["/config/NV_GPU_DRIVER_GH100_550.90.07.xml"]     # optional collateral carried in the bundle
//! ocsp = ["/config/ocsp/device-brom.der"]                  # optional collateral
//! ```
//!
//! TDX: a guest can produce only the quote; the Intel DCAP collateral that
//! verifies it (PCK CRL, TCB info, QE identity) comes from Intel PCS through
//! the host, as a file the enclave reads at every attestation:
//!
//! ```toml
//! [tdx]
//! collateral = "/run/cocoon/tdx-collateral.json"   # dcap-qvl JSON or CBOR
//! ```
//!
//! Only the *path* is part of the canonical form (and so of the config
//! digest), like the `[gpu]` collateral paths: the file's contents are
//! signed by Intel, checked by every verifier, and replaced by the host
//! before they expire (days), so measuring them would change the config
//! digest with every refresh and pin nothing a verifier does not already
//! check. Without the table, TDX evidence is refused with a message naming
//! the key.
//!
//! Unknown keys are errors. This module reads no file except in
//! [`EnclaveConfig::load`] and knows nothing of sockets or keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::seal::MAX_MODEL_NAME;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::DeterministicTestBackend;
use crate::transport::ListenAddr;

/// The image id an enclave reports when none is configured: says plainly
/// that no measured image release backs it.
pub const DEFAULT_IMAGE_ID: &str = "cocoon-dev-unmeasured";
/// Default for [`EnclaveConfig::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default for [`EnclaveConfig::max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 1024;
/// Default for [`EnclaveConfig::replay_window`].
pub const DEFAULT_REPLAY_WINDOW: usize = 1 << 20;
/// Default for [`EnclaveConfig::max_request_lifetime_secs`].
pub const DEFAULT_MAX_REQUEST_LIFETIME_SECS: u64 =
    cocoon_protocol::seal::DEFAULT_MAX_REQUEST_LIFETIME_SECS;
/// Default for [`EnclaveConfig::evidence_refresh_secs`]: ten minutes, well
/// inside the hour `policy init` allows evidence to age.
pub const DEFAULT_EVIDENCE_REFRESH_SECS: u64 = 600;
/// Default for [`EnclaveConfig::test_backend_reply_tokens`].
pub const DEFAULT_TEST_BACKEND_REPLY_TOKENS: u32 = 48;

/// Default for [`EnclaveConfig::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Default for [`EnclaveConfig::chat_batch`]: the host's default number of
/// concurrent streams per account. Every step costs what this many rows
/// cost, so on a CPU a wider batch buys throughput with the latency of a
/// lone conversation.
pub const DEFAULT_CHAT_BATCH: usize = 8;

/// Upper bounds that keep a typo from exhausting the guest's memory.
const MAX_MAX_CONCURRENT: usize = 4096;
const MAX_STREAMS_LIMIT: usize = 1 << 16;
const MAX_REPLAY_WINDOW: usize = 1 << 24;
/// An hour: ids are remembered that long at most.
const MAX_REQUEST_LIFETIME_LIMIT: u64 = 3600;
const MAX_IMAGE_ID: usize = 128;
const MAX_MAX_BATCH: usize = 1024;
const MAX_CHAT_BATCH: usize = 256;
const MAX_INPUT_TOKENS_LIMIT: u32 = 1 << 20;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("config {origin}: {message}")]
    Parse {
        /// The file, or "(inline)".
        origin: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value out of its allowed range.
    #[error("config: {field}: {reason}")]
    Invalid {
        /// The key.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// Which inference backend serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BackendKind {
    /// [`DeterministicTestBackend`]: NOT A MODEL.
    #[default]
    DeterministicTest,
    /// TorchScript models run in-process by libtorch (`[models]`).
    Tch,
    /// An OpenAI-compatible server inside the guest (`[upstream]`).
    Upstream,
}

impl BackendKind {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::DeterministicTest => "deterministic-test",
            BackendKind::Tch => "tch",
            BackendKind::Upstream => "upstream",
        }
    }
}

/// A SHA-256 digest written as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256Hex(pub [u8; 32]);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "a SHA-256 digest must be 64 lowercase hex digits",
            ));
        }
        hex::decode_to_slice(&s, &mut out).map_err(|_| {
            serde::de::Error::custom("a SHA-256 digest must be 64 lowercase hex digits")
        })?;
        Ok(Sha256Hex(out))
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What a model served by the tch backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ModelKind {
    /// Sentence embeddings: `forward(input_ids, attention_mask)` gives one
    /// vector per input (pooled and normalised inside the TorchScript).
    Embedding,
    /// A chat (causal) language model with a key/value cache:
    /// `forward(ids, past_k, past_v)` gives the last position's logits and
    /// the grown cache; `cache_shape()` gives `[layers, kv heads, head dim]`.
    /// Prompts use the ChatML template.
    Chat,
}

impl ModelKind {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Chat => "chat",
        }
    }
}

/// Where the tch backend runs its models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, the CPU otherwise.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0; boot fails when there is none.
    Cuda,
}

impl DeviceChoice {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

fn default_max_input_tokens() -> u32 {
    512
}

/// A model run by the tch backend (`[models.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Its version: with the name, the model's identity `name@version`
    /// (in the claims).
    #[serde(default)]
    pub version: Option<String>,
    /// What it computes.
    pub kind: ModelKind,
    /// The TorchScript file.
    pub path: String,
    /// Its SHA-256 (the digest in the claims).
    pub sha256: Sha256Hex,
    /// The `tokenizer.json` (Hugging Face tokenizers format).
    pub tokenizer: String,
    /// Its SHA-256.
    pub tokenizer_sha256: Sha256Hex,
    /// Longest input, in tokens, the model accepts.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: u32,
    /// Chat models: the system message put first when a conversation has
    /// none (the model's own template's default).
    pub system_prompt: Option<String>,
}

fn default_upstream_timeout() -> u64 {
    300
}

/// The OpenAI-compatible server the upstream backend forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://HOST:PORT` (plain HTTP: it runs inside the same guest).
    pub url: String,
    /// Most seconds one request may take.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_secs: u64,
    /// The models it serves, by the name clients ask for.
    pub models: BTreeMap<String, UpstreamModel>,
}

/// One model the upstream server serves (`[upstream.models.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamModel {
    /// The name the upstream server knows it by (default: the same name).
    pub served_name: Option<String>,
    /// SHA-256 of the weights it serves (the digest in the claims).
    pub sha256: Sha256Hex,
    /// The weights file, checked against `sha256` at boot when given.
    pub weights: Option<String>,
    /// The tokenizer the enclave counts usage with.
    pub tokenizer: String,
    /// Its SHA-256.
    pub tokenizer_sha256: Sha256Hex,
    /// Longest prompt, in tokens.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: u32,
}

/// Base price of one model, nanoton per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per computed prompt token.
    pub prompt: u64,
    /// Per prompt token served from a cache; default: the prompt price.
    #[serde(default)]
    pub cached: Option<u64>,
    /// Per completion token.
    pub completion: u64,
}

impl From<Price> for UnitPrice {
    fn from(p: Price) -> UnitPrice {
        UnitPrice {
            prompt: p.prompt,
            cached: p.cached.unwrap_or(p.prompt),
            completion: p.completion,
        }
    }
}

/// The `[pricing]` table: bounds of the load multiplier the host may apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Lowest multiplier, thousandths (default 1000).
    pub min_multiplier_milli: u32,
    /// Highest multiplier, thousandths (default 3000).
    pub max_multiplier_milli: u32,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            min_multiplier_milli: 1000,
            max_multiplier_milli: 3000,
        }
    }
}

/// Where GPU evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuEvidenceSource {
    /// NVIDIA's NVML library (`libnvidia-ml.so.1`) from the guest's driver.
    Nvml,
}

/// The `[gpu]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// Where the evidence comes from.
    pub evidence: GpuEvidenceSource,
    /// The NVML library to load; default: `libnvidia-ml.so.1` from the
    /// loader's search path.
    #[serde(default)]
    pub library: Option<String>,
    /// Reference integrity manifests (driver and VBIOS) to carry in the
    /// bundle as collateral.
    #[serde(default)]
    pub rims: Vec<String>,
    /// OCSP responses (DER) to carry in the bundle as collateral.
    #[serde(default)]
    pub ocsp: Vec<String>,
}

/// The `[tdx]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxConfig {
    /// File holding the Intel DCAP collateral for this platform's quotes
    /// (`dcap-qvl` JSON or CBOR), kept fresh by the host. Its path is in the
    /// config digest; its contents are not (see the [module docs](self)).
    pub collateral: Option<String>,
}

/// The enclave's configuration. See the [module docs](self) for the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnclaveConfig {
    /// The image release the enclave says it runs (the measurement is what
    /// proves it).
    pub image_id: String,
    /// Where to listen, unless the command line says otherwise.
    pub listen: Option<ListenAddr>,
    /// Most requests running at once across all connections.
    pub max_concurrent: usize,
    /// Most open streams on one host connection; more get an error frame.
    pub max_streams_per_connection: usize,
    /// How many served request ids are remembered at once, each until its
    /// request's expiry, to refuse replays. When it is full, new requests
    /// are refused until ids expire (nothing is forgotten early).
    pub replay_window: usize,
    /// How far ahead (seconds) a request's expiry may lie; requests that
    /// would live longer are refused.
    pub max_request_lifetime_secs: u64,
    /// How often (seconds) the enclave re-attests: a new report with the
    /// same keys, a new issue time and the refresh counter one higher.
    pub evidence_refresh_secs: u64,
    /// The inference backend.
    pub backend: BackendKind,
    /// Reply length, in words, of the deterministic test backend.
    pub test_backend_reply_tokens: u32,
    /// Bounds of the load multiplier.
    pub pricing: PricingConfig,
    /// Base price per model; a served model without an entry is billed at 0.
    pub prices: BTreeMap<String, Price>,
    /// Where the tch backend runs.
    pub device: DeviceChoice,
    /// Most sequences the tch backend runs in one forward pass of an
    /// embedding model.
    pub max_batch: usize,
    /// Rows of every decoding step of a tch chat model: the most
    /// conversations decoded together (more wait for a row). Every step
    /// computes this many rows, padding included, so that an answer does
    /// not depend on the others in the batch: on a CPU keep it small; 1
    /// decodes one conversation at a time at the unbatched cost.
    pub chat_batch: usize,
    /// Models of the tch backend, by the name clients ask for.
    pub models: BTreeMap<String, ModelConfig>,
    /// The upstream backend's server.
    pub upstream: Option<UpstreamConfig>,
    /// GPU evidence, when the enclave uses GPUs.
    pub gpu: Option<GpuConfig>,
    /// TDX settings (the collateral file).
    pub tdx: Option<TdxConfig>,
    /// Where base prices come from: `"release"` (the `[prices]` tables of
    /// this measured file, the default) or `"provider"` (the provider's
    /// settings at boot, within `[price_bounds]`; see
    /// [`EnclaveConfig::apply_provider_settings`]).
    pub prices_from: PricesFrom,
    /// The range a provider's base price for each model must lie in,
    /// nanoton per token (`prices_from = "provider"` only).
    pub price_bounds: BTreeMap<String, PriceBounds>,
    /// Set at run time, not from the file: the dm-verity root hash of the
    /// disk the enclave runs from (PID 1 passes it).
    #[serde(skip)]
    pub disk_verity_root: Option<[u8; 32]>,
    /// Set at run time: the provider settings applied, with the release
    /// configuration's canonical form from before they were.
    #[serde(skip)]
    pub applied: Option<AppliedSettings>,
}

/// Where base prices come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PricesFrom {
    /// The `[prices]` tables of the (measured) configuration.
    #[default]
    Release,
    /// The provider's settings at boot, within `[price_bounds]`.
    Provider,
}

impl PricesFrom {
    /// The name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            PricesFrom::Release => "release",
            PricesFrom::Provider => "provider",
        }
    }
}

/// `[price_bounds.MODEL]`: inclusive ranges, nanoton per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBounds {
    /// Lowest and highest prompt price (the cached-prompt price must lie
    /// between 0 and the prompt price).
    pub prompt: [u64; 2],
    /// Lowest and highest completion price.
    pub completion: [u64; 2],
}

/// Provider settings in force, and the release they were applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSettings {
    /// The settings' canonical CBOR (what the claims carry).
    pub cbor: Vec<u8>,
    /// The release configuration's canonical TOML, before the settings.
    pub release_canonical: String,
}

impl Default for EnclaveConfig {
    fn default() -> Self {
        EnclaveConfig {
            image_id: DEFAULT_IMAGE_ID.into(),
            listen: None,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            replay_window: DEFAULT_REPLAY_WINDOW,
            max_request_lifetime_secs: DEFAULT_MAX_REQUEST_LIFETIME_SECS,
            evidence_refresh_secs: DEFAULT_EVIDENCE_REFRESH_SECS,
            backend: BackendKind::DeterministicTest,
            test_backend_reply_tokens: DEFAULT_TEST_BACKEND_REPLY_TOKENS,
            pricing: PricingConfig::default(),
            prices: BTreeMap::from([(
                DeterministicTestBackend::MODEL.to_owned(),
                Price {
                    prompt: 1,
                    cached: Some(1),
                    completion: 2,
                },
            )]),
            device: DeviceChoice::Auto,
            max_batch: DEFAULT_MAX_BATCH,
            chat_batch: DEFAULT_CHAT_BATCH,
            models: BTreeMap::new(),
            upstream: None,
            gpu: None,
            tdx: None,
            prices_from: PricesFrom::Release,
            price_bounds: BTreeMap::new(),
            disk_verity_root: None,
            applied: None,
        }
    }
}

impl EnclaveConfig {
    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<EnclaveConfig, ConfigError> {
        Self::parse(text, "(inline)")
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<EnclaveConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<EnclaveConfig, ConfigError> {
        let mut c: EnclaveConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        // A release that takes its prices from the provider has none of its
        // own (not even the default table), unless the file names some,
        // which validate() refuses.
        if c.prices_from == PricesFrom::Provider {
            let named = toml::from_str::<toml::Table>(text)
                .map(|t| t.contains_key("prices"))
                .unwrap_or(false);
            if !named {
                c.prices.clear();
            }
        }
        // One form for equal prices: an omitted cached price is the prompt
        // price.
        for p in c.prices.values_mut() {
            p.cached = Some(p.cached.unwrap_or(p.prompt));
        }
        c.validate()?;
        Ok(c)
    }

    /// Check every value is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.into(),
            reason,
        };
        if self.image_id.is_empty()
            || self.image_id.len() > MAX_IMAGE_ID
            || self.image_id.chars().any(char::is_control)
        {
            return Err(invalid(
                "image_id",
                format!("must be 1 to {MAX_IMAGE_ID} bytes of printable text"),
            ));
        }
        let ranges = [
            ("max_concurrent", self.max_concurrent, MAX_MAX_CONCURRENT),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection,
                MAX_STREAMS_LIMIT,
            ),
            ("replay_window", self.replay_window, MAX_REPLAY_WINDOW),
            ("max_batch", self.max_batch, MAX_MAX_BATCH),
            ("chat_batch", self.chat_batch, MAX_CHAT_BATCH),
        ];
        for (field, value, max) in ranges {
            if !(1..=max).contains(&value) {
                return Err(invalid(
                    field,
                    format!("{value} is out of range (1 to {max})"),
                ));
            }
        }
        if !(1..=MAX_REQUEST_LIFETIME_LIMIT).contains(&self.max_request_lifetime_secs) {
            return Err(invalid(
                "max_request_lifetime_secs",
                format!(
                    "{} is out of range (1 to {MAX_REQUEST_LIFETIME_LIMIT})",
                    self.max_request_lifetime_secs
                ),
            ));
        }
        if !(1..=86_400).contains(&self.evidence_refresh_secs) {
            return Err(invalid(
                "evidence_refresh_secs",
                format!(
                    "{} is out of range (1 to 86400)",
                    self.evidence_refresh_secs
                ),
            ));
        }
        let p = self.pricing;
        if p.min_multiplier_milli == 0
            || p.min_multiplier_milli > p.max_multiplier_milli
            || p.max_multiplier_milli > 100_000
        {
            return Err(invalid(
                "pricing",
                format!(
                    "multiplier bounds [{}, {}] must satisfy 0 < min_multiplier_milli <= max_multiplier_milli <= 100000",
                    p.min_multiplier_milli, p.max_multiplier_milli
                ),
            ));
        }
        for (model, price) in &self.prices {
            if UnitPrice::from(*price)
                .scaled(p.max_multiplier_milli)
                .is_none()
            {
                return Err(invalid(
                    "prices",
                    format!("prices of {model:?} overflow at the highest multiplier"),
                ));
            }
            if model.is_empty() || model.len() > MAX_MODEL_NAME {
                return Err(invalid(
                    "prices",
                    format!("model name {model:?} must be 1 to {MAX_MODEL_NAME} bytes"),
                ));
            }
        }
        let name_ok = |name: &str| !name.is_empty() && name.len() <= MAX_MODEL_NAME;
        for (name, m) in &self.models {
            if !name_ok(name) {
                return Err(invalid(
                    "models",
                    format!("model name {name:?} must be 1 to {MAX_MODEL_NAME} bytes"),
                ));
            }
            check_tokens(
                &format!("models.{name}.max_input_tokens"),
                m.max_input_tokens,
            )?;
            if m.system_prompt.is_some() && m.kind != ModelKind::Chat {
                return Err(invalid(
                    &format!("models.{name}.system_prompt"),
                    "only chat models have a system prompt".into(),
                ));
            }
        }
        if let Some(u) = &self.upstream {
            crate::upstream::UpstreamUrl::parse(&u.url).map_err(|e| invalid("upstream.url", e))?;
            if !(1..=86_400).contains(&u.timeout_secs) {
                return Err(invalid(
                    "upstream.timeout_secs",
                    format!("{} is out of range (1 to 86400)", u.timeout_secs),
                ));
            }
            for (name, m) in &u.models {
                if !name_ok(name) || m.served_name.as_deref().is_some_and(|s| s.is_empty()) {
                    return Err(invalid(
                        "upstream.models",
                        format!("model name {name:?} must be 1 to {MAX_MODEL_NAME} bytes"),
                    ));
                }
                check_tokens(
                    &format!("upstream.models.{name}.max_input_tokens"),
                    m.max_input_tokens,
                )?;
            }
        }
        match self.prices_from {
            PricesFrom::Release if !self.price_bounds.is_empty() => {
                return Err(invalid(
                    "price_bounds",
                    "bounds are for prices_from = \"provider\"".into(),
                ))
            }
            PricesFrom::Provider if self.applied.is_none() && !self.prices.is_empty() => {
                return Err(invalid(
                    "prices",
                    "with prices_from = \"provider\" the release sets [price_bounds], not [prices]"
                        .into(),
                ))
            }
            PricesFrom::Provider if self.price_bounds.is_empty() => return Err(invalid(
                "price_bounds",
                "prices_from = \"provider\" needs a [price_bounds.MODEL] table per served model"
                    .into(),
            )),
            _ => {}
        }
        for (name, b) in &self.price_bounds {
            if b.prompt[0] > b.prompt[1] || b.completion[0] > b.completion[1] {
                return Err(invalid(
                    &format!("price_bounds.{name}"),
                    "each range must be [lowest, highest]".into(),
                ));
            }
        }
        match self.backend {
            BackendKind::Tch if self.models.is_empty() => Err(invalid(
                "models",
                "backend \"tch\" needs at least one [models.NAME] table".into(),
            )),
            BackendKind::Upstream
                if self.upstream.as_ref().is_none_or(|u| u.models.is_empty()) =>
            {
                Err(invalid(
                    "upstream",
                    "backend \"upstream\" needs an [upstream] table with at least one [upstream.models.NAME]".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The price of `model`, if the table has one.
    pub fn price(&self, model: &str) -> Option<UnitPrice> {
        self.prices.get(model).copied().map(UnitPrice::from)
    }

    /// The canonical TOML of this configuration: every key, in the order of
    /// the module docs, prices sorted by model name, integers in decimal,
    /// strings quoted with `\"`, `\\` and `\uXXXX` escapes only, `\n` line
    /// ends. Parsing it gives back an equal configuration.
    pub fn to_canonical_toml(&self) -> String {
        if let Some(a) = &self.applied {
            return a.release_canonical.clone();
        }
        // Every field, by name and without `..`: a new field does not
        // compile until it is written here (or named as not hashed).
        let EnclaveConfig {
            image_id,
            listen,
            max_concurrent,
            max_streams_per_connection,
            replay_window,
            max_request_lifetime_secs,
            evidence_refresh_secs,
            backend,
            test_backend_reply_tokens,
            pricing,
            prices,
            device,
            max_batch,
            chat_batch,
            models,
            upstream,
            gpu,
            tdx,
            prices_from,
            price_bounds,
            // Run-time values with claims of their own, not configuration.
            disk_verity_root: _,
            applied: _,
        } = self;
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "image_id = {}", quote(image_id));
        if let Some(l) = listen {
            let _ = writeln!(s, "listen = {}", quote(&l.to_string()));
        }
        let _ = writeln!(s, "max_concurrent = {}", max_concurrent);
        let _ = writeln!(
            s,
            "max_streams_per_connection = {}",
            max_streams_per_connection
        );
        let _ = writeln!(s, "replay_window = {}", replay_window);
        let _ = writeln!(
            s,
            "max_request_lifetime_secs = {}",
            max_request_lifetime_secs
        );
        let _ = writeln!(s, "evidence_refresh_secs = {}", evidence_refresh_secs);
        let _ = writeln!(s, "backend = {}", quote(backend.as_str()));
        let _ = writeln!(
            s,
            "test_backend_reply_tokens = {}",
            test_backend_reply_tokens
        );
        let _ = writeln!(s, "device = {}", quote(device.as_str()));
        let _ = writeln!(s, "max_batch = {}", max_batch);
        let _ = writeln!(s, "chat_batch = {}", chat_batch);
        if *prices_from != PricesFrom::Release {
            let _ = writeln!(s, "prices_from = {}", quote(prices_from.as_str()));
        }
        let _ = write!(
            s,
            "\n[pricing]\nmin_multiplier_milli = {}\nmax_multiplier_milli = {}\n",
            pricing.min_multiplier_milli, pricing.max_multiplier_milli
        );
        for (model, p) in prices {
            let p = UnitPrice::from(*p);
            let _ = write!(
                s,
                "\n[prices.{}]\nprompt = {}\ncached = {}\ncompletion = {}\n",
                quote(model),
                p.prompt,
                p.cached,
                p.completion
            );
        }
        for (model, PriceBounds { prompt, completion }) in price_bounds {
            let _ = write!(
                s,
                "\n[price_bounds.{}]\nprompt = [{}, {}]\ncompletion = [{}, {}]\n",
                quote(model),
                prompt[0],
                prompt[1],
                completion[0],
                completion[1]
            );
        }
        for (name, m) in models {
            let ModelConfig {
                version,
                kind,
                path,
                sha256,
                tokenizer,
                tokenizer_sha256,
                max_input_tokens,
                system_prompt,
            } = m;
            let _ = write!(
                s,
                "\n[models.{}]\nkind = {}\npath = {}\nsha256 = \"{}\"\ntokenizer = {}\ntokenizer_sha256 = \"{}\"\nmax_input_tokens = {}\n",
                quote(name),
                quote(kind.as_str()),
                quote(path),
                sha256,
                quote(tokenizer),
                tokenizer_sha256,
                max_input_tokens
            );
            if let Some(p) = system_prompt {
                let _ = writeln!(s, "system_prompt = {}", quote(p));
            }
            if let Some(v) = version {
                let _ = writeln!(s, "version = {}", quote(v));
            }
        }
        if let Some(u) = upstream {
            let _ = write!(
                s,
                "\n[upstream]\nurl = {}\ntimeout_secs = {}\n",
                quote(&u.url),
                u.timeout_secs
            );
            for (name, m) in &u.models {
                let _ = write!(s, "\n[upstream.models.{}]\n", quote(name));
                if let Some(n) = &m.served_name {
                    let _ = writeln!(s, "served_name = {}", quote(n));
                }
                let _ = writeln!(s, "sha256 = \"{}\"", m.sha256);
                if let Some(w) = &m.weights {
                    let _ = writeln!(s, "weights = {}", quote(w));
                }
                let _ = write!(
                    s,
                    "tokenizer = {}\ntokenizer_sha256 = \"{}\"\nmax_input_tokens = {}\n",
                    quote(&m.tokenizer),
                    m.tokenizer_sha256,
                    m.max_input_tokens
                );
            }
        }
        if let Some(g) = gpu {
            let list = |l: &[String]| l.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ");
            let source = match g.evidence {
                GpuEvidenceSource::Nvml => "nvml",
            };
            let _ = write!(s, "\n[gpu]\nevidence = {}\n", quote(source));
            if let Some(lib) = &g.library {
                let _ = writeln!(s, "library = {}", quote(lib));
            }
            let _ = writeln!(s, "rims = [{}]\nocsp = [{}]", list(&g.rims), list(&g.ocsp));
        }
        if let Some(t) = tdx {
            let _ = write!(s, "\n[tdx]\n");
            if let Some(c) = &t.collateral {
                let _ = writeln!(s, "collateral = {}", quote(c));
            }
        }
        s
    }

    /// The names of the models this configuration serves (the tch models,
    /// the upstream ones, or the test backend's).
    pub fn served_models(&self) -> Vec<String> {
        match self.backend {
            BackendKind::Tch => self.models.keys().cloned().collect(),
            BackendKind::Upstream => self
                .upstream
                .as_ref()
                .map(|u| u.models.keys().cloned().collect())
                .unwrap_or_default(),
            BackendKind::DeterministicTest => vec![DeterministicTestBackend::MODEL.to_owned()],
        }
    }

    /// Applies a provider's settings to this release configuration, once,
    /// after checking them strictly: the release must take prices from the
    /// provider; every served model and no other must be priced, each price
    /// inside its `[price_bounds]` range; `max_concurrent` at most the
    /// release's. The release's canonical form (and so
    /// [`digest`](EnclaveConfig::digest)) stays what it was; the settings'
    /// bytes go into the claims.
    pub fn apply_provider_settings(
        &mut self,
        settings: &cocoon_protocol::settings::ProviderSettings,
    ) -> Result<(), ConfigError> {
        let refuse = |reason: String| ConfigError::Invalid {
            field: "provider settings".into(),
            reason,
        };
        if self.prices_from != PricesFrom::Provider {
            return Err(refuse(
                "this release's prices are measured (prices_from = \"release\"); it takes no provider settings".into(),
            ));
        }
        if self.applied.is_some() {
            return Err(refuse("settings were already applied at this boot".into()));
        }
        settings.validate().map_err(|e| refuse(e.to_string()))?;
        let served = self.served_models();
        for m in &served {
            if !settings.prices.contains_key(m) {
                return Err(refuse(format!("no price for the served model {m:?}")));
            }
        }
        for (m, p) in &settings.prices {
            if !served.contains(m) {
                return Err(refuse(format!("{m:?} is not a model this release serves")));
            }
            let b = self
                .price_bounds
                .get(m)
                .ok_or_else(|| refuse(format!("the release sets no price bounds for {m:?}")))?;
            let inside = |v: u64, r: [u64; 2]| (r[0]..=r[1]).contains(&v);
            if !inside(p.prompt, b.prompt) || !inside(p.completion, b.completion) {
                return Err(refuse(format!(
                    "{m}: prompt {} / completion {} nanoton per token are outside the release's bounds (prompt {:?}, completion {:?})",
                    p.prompt, p.completion, b.prompt, b.completion
                )));
            }
        }
        if let Some(n) = settings.max_concurrent {
            if n as usize > self.max_concurrent {
                return Err(refuse(format!(
                    "max_concurrent {n} is above the release's {}",
                    self.max_concurrent
                )));
            }
        }
        let release_canonical = self.to_canonical_toml();
        self.prices = settings
            .prices
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    Price {
                        prompt: p.prompt,
                        cached: Some(p.cached),
                        completion: p.completion,
                    },
                )
            })
            .collect();
        if let Some(n) = settings.max_concurrent {
            self.max_concurrent = n as usize;
        }
        self.applied = Some(AppliedSettings {
            cbor: settings.to_cbor(),
            release_canonical,
        });
        Ok(())
    }

    /// SHA-256 of [`to_canonical_toml`](EnclaveConfig::to_canonical_toml):
    /// the claims' `config_digest`.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_canonical_toml().as_bytes()).into()
    }
}

fn check_tokens(field: &str, value: u32) -> Result<(), ConfigError> {
    if (1..=MAX_INPUT_TOKENS_LIMIT).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: field.into(),
            reason: format!("{value} is out of range (1 to {MAX_INPUT_TOKENS_LIMIT})"),
        })
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_canonical_form_round_trips() {
        let d = EnclaveConfig::from_toml("").unwrap();
        assert_eq!(d, EnclaveConfig::default());
        assert_eq!(d.max_concurrent, 64);
        assert_eq!(d.test_backend_reply_tokens, 48);
        assert_eq!(d.image_id, "cocoon-dev-unmeasured");
        let canon = d.to_canonical_toml();
        assert_eq!(EnclaveConfig::from_toml(&canon).unwrap(), d);
        assert!(
            canon.contains("[prices.\"cocoon-deterministic-test\"]"),
            "{canon}"
        );

        let custom = EnclaveConfig::from_toml(
            "# comment\nimage_id = \"img \\\"q\\\" \\\\ x\"\nlisten = \"unix:/tmp/x y.sock\"\nmax_concurrent = 3\ntest_backend_reply_tokens = 1000\n[prices.\"a.b\"]\nprompt = 5\ncompletion = 7\n[prices.m]\nprompt = 0\ncompletion = 1\n[prices.\"tab\\tin name\"]\nprompt = 0\ncompletion = 0\n",
        )
        .unwrap();
        assert_eq!(custom.max_concurrent, 3);
        assert_eq!(custom.image_id, "img \"q\" \\ x");
        assert!(custom.prices.contains_key("tab\tin name"));
        assert_eq!(
            custom.listen,
            Some(ListenAddr::Unix("/tmp/x y.sock".into()))
        );
        assert_eq!(
            custom.price("a.b"),
            Some(UnitPrice {
                prompt: 5,
                cached: 5,
                completion: 7
            })
        );
        assert_eq!(custom.price("cocoon-deterministic-test"), None);
        let canon = custom.to_canonical_toml();
        assert_eq!(EnclaveConfig::from_toml(&canon).unwrap(), custom);
        let priced = EnclaveConfig::from_toml(
            "[pricing]\nmin_multiplier_milli = 500\nmax_multiplier_milli = 2000\n[prices.m]\nprompt = 4\ncached = 1\ncompletion = 9\n",
        )
        .unwrap();
        assert_eq!(
            priced.price("m"),
            Some(UnitPrice {
                prompt: 4,
                cached: 1,
                completion: 9
            })
        );
        assert_eq!(priced.pricing.min_multiplier_milli, 500);
        assert_eq!(
            EnclaveConfig::from_toml(&priced.to_canonical_toml()).unwrap(),
            priced
        );
        for bad in [
            "[pricing]\nmin_multiplier_milli = 0",
            "[pricing]\nmin_multiplier_milli = 3000\nmax_multiplier_milli = 2000",
            "[pricing]\nmax_multiplier_milli = 100001",
            "[pricing]\nfloor = 1",
            "[prices.m]\nprompt = 18446744073709551615\ncompletion = 1",
        ] {
            assert!(EnclaveConfig::from_toml(bad).is_err(), "{bad}");
        }
        assert_ne!(custom.digest(), d.digest());
        // Formatting does not change the digest; values do.
        let spaced =
            EnclaveConfig::from_toml("\n\n  max_concurrent   =   64 # same as default\n").unwrap();
        assert_eq!(spaced.digest(), d.digest());
    }

    #[test]
    fn unknown_keys_wrong_types_and_ranges_are_refused() {
        for bad in [
            "max_concurent = 3",
            "max_concurrent = \"3\"",
            "max_concurrent = 0",
            "max_concurrent = 100000",
            "replay_window = 0",
            "max_request_lifetime_secs = 0",
            "max_request_lifetime_secs = 3601",
            "evidence_refresh_secs = 0",
            "max_streams_per_connection = 0",
            "image_id = \"\"",
            "backend = \"tch\"",
            "backend = \"upstream\"",
            "backend = \"torch\"",
            "max_batch = 0",
            "chat_batch = 0",
            "chat_batch = 257",
            "device = \"tpu\"",
            "[models.m]\nkind = \"embedding\"\npath = \"p\"\nsha256 = \"00\"\ntokenizer = \"t\"\ntokenizer_sha256 = \"00\"",
            "[upstream]\nurl = \"https://x\"\n[upstream.models.m]\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\ntokenizer = \"t\"\ntokenizer_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
            "listen = \"tcp:1\"",
            "[prices.m]\nprompt = 1",
            "[prices.m]\nprompt = 1\ncompletion = 1\nextra = 2",
            "[prices.m]\nprompt = -1\ncompletion = 1",
        ] {
            let e = EnclaveConfig::from_toml(bad).unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad}");
        }
        let e = EnclaveConfig::from_toml("max_concurrent = 0").unwrap_err();
        assert!(e.to_string().contains("max_concurrent"), "{e}");
        let e = EnclaveConfig::load(Path::new("/nonexistent/enclave.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/enclave.toml"), "{e}");
    }

    #[test]
    fn tdx_collateral_path_is_in_the_canonical_form() {
        let c = EnclaveConfig::from_toml("[tdx]\ncollateral = \"/run/c.json\"\n").unwrap();
        assert_eq!(
            c.tdx.as_ref().unwrap().collateral.as_deref(),
            Some("/run/c.json")
        );
        let canon = c.to_canonical_toml();
        assert!(
            canon.ends_with("\n[tdx]\ncollateral = \"/run/c.json\"\n"),
            "{canon}"
        );
        assert_eq!(EnclaveConfig::from_toml(&canon).unwrap(), c);
        assert_ne!(c.digest(), EnclaveConfig::default().digest());
        let empty = EnclaveConfig::from_toml("[tdx]\n").unwrap();
        assert_eq!(
            EnclaveConfig::from_toml(&empty.to_canonical_toml()).unwrap(),
            empty
        );
        assert!(EnclaveConfig::from_toml("[tdx]\ncolateral = \"x\"").is_err());
    }

    #[test]
    fn model_and_upstream_tables_round_trip_through_the_canonical_form() {
        let d = "ab".repeat(32);
        let text = format!(
            "backend = \"tch\"\ndevice = \"cpu\"\nmax_batch = 8\nchat_batch = 4\n\n[models.emb]\nkind = \"embedding\"\npath = \"/m/e.pt\"\nsha256 = \"{d}\"\ntokenizer = \"/m/t.json\"\ntokenizer_sha256 = \"{d}\"\n\n[models.\"chat model\"]\nkind = \"chat\"\npath = \"/m/c.pt\"\nsha256 = \"{d}\"\ntokenizer = \"/m/c.json\"\ntokenizer_sha256 = \"{d}\"\nmax_input_tokens = 2048\nsystem_prompt = \"Be \\\"brief\\\".\"\n\n[upstream]\nurl = \"http://127.0.0.1:8000/base\"\n[upstream.models.up]\nserved_name = \"org/up\"\nsha256 = \"{d}\"\nweights = \"/m/w\"\ntokenizer = \"/m/u.json\"\ntokenizer_sha256 = \"{d}\"\n"
        );
        let c = EnclaveConfig::from_toml(&text).unwrap();
        assert_eq!(c.backend, BackendKind::Tch);
        assert_eq!((c.max_batch, c.chat_batch), (8, 4));
        assert_eq!(c.models["emb"].max_input_tokens, 512);
        assert_eq!(c.models["chat model"].kind, ModelKind::Chat);
        assert_eq!(
            c.models["chat model"].system_prompt.as_deref(),
            Some("Be \"brief\".")
        );
        let u = c.upstream.as_ref().unwrap();
        assert_eq!(u.timeout_secs, 300);
        assert_eq!(u.models["up"].served_name.as_deref(), Some("org/up"));
        let canon = c.to_canonical_toml();
        assert_eq!(EnclaveConfig::from_toml(&canon).unwrap(), c, "{canon}");
        // Every digest is part of the config digest.
        let other = text.replacen(&d, &"cd".repeat(32), 1);
        assert_ne!(
            EnclaveConfig::from_toml(&other).unwrap().digest(),
            c.digest()
        );
        // A system prompt on an embedding model is a mistake.
        let bad = text.replace(
            "tokenizer = \"/m/t.json\"",
            "tokenizer = \"/m/t.json\"\nsystem_prompt = \"x\"",
        );
        assert!(EnclaveConfig::from_toml(&bad).is_err());
    }
}
