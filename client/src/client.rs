//! The client: talks to one provider's host agent over its HTTP API
//! (`cocoon_protocol::api`), and never sends anything to an enclave whose
//! evidence did not verify.
//!
//! Owns the HTTP exchanges, the verified set and when it is refreshed, the
//! choice of enclave, and the mapping of the host's statuses to
//! [`ClientError`]. Verification itself is [`crate::provider`] (and under
//! it `cocoon_verifier`), sealing is `cocoon_protocol::seal`, and reading a
//! response is [`crate::response`].
//!
//! # When evidence is (re-)verified
//!
//! * before the first request, and on every [`Client::verify`];
//! * before a request, when the last look at `GET /v1/evidence` is older
//!   than [`ClientOptions::evidence_refresh`]: the list is fetched again and
//!   verified again (at the new time, so expired certificates are caught
//!   too); if its bytes changed, the new set replaces the old;
//! * when the host answers `409` (the enclave the request was sealed to is
//!   not served, e.g. it restarted with new keys): the evidence is fetched
//!   and verified again; only if the evidence it was sealed to is gone (new
//!   keys) is the request sealed again to a verified enclave and sent once
//!   more. A `409` while the same evidence is still published (a replay
//!   refusal, or a host trying to make the client pay twice) and a second
//!   `409` are errors.
//!
//! If a re-verification finds no acceptable enclave, the old set is
//! dropped: the client does not keep sending to keys the provider no
//! longer vouches for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_protocol::account::{AccountError, AccountId, AccountKey};
use cocoon_protocol::api::{
    ApiError, ReceiptList, ACCOUNT_KEY_HEADER, ACCOUNT_SIGNATURE_HEADER, ACCOUNT_TIME_HEADER,
    AUTHORIZATION_HEADER, CBOR_CONTENT_TYPE, EVIDENCE_DIGEST_HEADER, EVIDENCE_NONCE_PATH,
    EVIDENCE_PATH, PRICES_PATH, RECEIPTS_PATH, REQUESTS_PATH,
};
use cocoon_protocol::message::{ChatMessage, InferenceRequest, MAX_EMBEDDING_INPUTS, MAX_MESSAGES};
use cocoon_protocol::pricing::{max_cost, PriceSheet};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::UsageReceipt;
use cocoon_protocol::sampling::Sampling;
use cocoon_protocol::seal::{
    seal_request, BillingMeta, ClientSession, EvidenceDigest, SealError, SealedRequest,
};
use cocoon_protocol::settlement::{compress_p256, Authorization, ContractAddress};
use cocoon_verifier::{Policy, UnixTime};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use crate::provider::{
    verify_evidence_list, verify_nonce_evidence, AttestedEnclave, VerificationError,
    VerifiedProvider,
};
use crate::receipts::{check_signed_by, ReceiptExpectation, ReceiptProblem};
use crate::response::{
    Completed, Expecting, ResponseError, ResponsePart, ResponseReader, ResponseStream,
};

/// Most bytes of an error reason read from the host.
const MAX_REASON_BODY: usize = 4096;
/// Most characters of a reason kept.
const MAX_REASON_CHARS: usize = 300;
/// Longest wait for a whole evidence list or receipt list.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of an evidence list read.
const MAX_EVIDENCE_LIST: usize =
    cocoon_protocol::api::MAX_ENCLAVES * (cocoon_attestation::bundle::MAX_BUNDLE + 16);

/// Settings of a [`Client`]; start from `ClientOptions::default()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The most one request may cost, in nanoton: the worst case (every
    /// prompt byte a token, all `max_tokens` produced) at the sheet's
    /// prices must not exceed it, or the request is not sent. `None`: no
    /// limit (default).
    pub max_request_nanoton: Option<u128>,
    /// The budget per attested enclave, in nanoton: the cap of the
    /// authorization this client signs for each enclave's receipt key when
    /// the provider settles on chain. The host refuses requests that could
    /// pass it (`402`) and the payment contract never pays more (default
    /// 1 TON).
    pub budget_nanoton: u64,
    /// Fetch `GET /v1/prices` again when the last sheet is older than this
    /// (default 10 s).
    pub price_refresh: Duration,
    /// Look at `GET /v1/evidence` again before a request when the last look
    /// is older than this (default 30 s).
    pub evidence_refresh: Duration,
    /// TCP connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response (default 300 s).
    pub read_timeout: Duration,
    /// How long a request may wait to be served: its expiry, signed into
    /// the billing metadata, lies this far ahead of the client's clock. The
    /// enclave refuses a request at or after its expiry, and one whose
    /// expiry lies further ahead than its measured maximum (10 minutes by
    /// default); it remembers each id it served until that expiry, so a
    /// request is served at most once (default 300 s).
    pub request_lifetime: Duration,
    /// A check every verified enclave must also pass (the network client:
    /// "its measurement belongs to an active release").
    pub(crate) enclave_filter: Option<EnclaveFilter>,
}

/// A check applied to each enclave after the verifier accepted it.
#[derive(Clone)]
pub(crate) struct EnclaveFilter(pub(crate) crate::network::directory::EnclaveCheck);

impl std::fmt::Debug for EnclaveFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnclaveFilter")
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            max_request_nanoton: None,
            budget_nanoton: 1_000_000_000,
            price_refresh: Duration::from_secs(10),
            evidence_refresh: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            request_lifetime: Duration::from_secs(
                cocoon_protocol::seal::DEFAULT_REQUEST_LIFETIME_SECS,
            ),
            enclave_filter: None,
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection to the provider. The message keeps the whole cause
    /// (connection refused, DNS, timeout), not only the transport's summary.
    #[error("provider {url} is unreachable: {}", error_chain(source))]
    Unreachable {
        /// What was being fetched.
        url: String,
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("HTTP exchange with the provider failed ({url}): {source}")]
    Http {
        /// What was being fetched.
        url: String,
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// `GET /v1/evidence` did not answer `200`.
    #[error("the provider's evidence is not available ({status}): {reason}")]
    EvidenceUnavailable {
        /// HTTP status.
        status: u16,
        /// The host's one-line reason.
        reason: String,
    },
    /// No enclave verified under the policy: nothing was sent.
    #[error(transparent)]
    Verification(#[from] VerificationError),
    /// No verified enclave serves the model.
    #[error("no verified enclave serves model {model:?} (verified models: {})", .available.join(", "))]
    ModelNotServed {
        /// The model asked for.
        model: String,
        /// The models verified enclaves serve.
        available: Vec<String>,
    },
    /// The request is not valid before anything is sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request could not be sealed.
    #[error("cannot seal the request: {0}")]
    Seal(#[from] SealError),
    /// The host answered `409` and either still publishes the evidence the
    /// request was sealed to (so the request is not resent), or answered
    /// `409` again after re-verifying and sealing once more.
    #[error("the provider refused the request with 409 (evidence not served, or a replay) and re-verifying did not justify a resend: {reason}")]
    EvidenceNotServed {
        /// The host's one-line reason.
        reason: String,
    },
    /// The request could cost more than the client's per-request limit.
    #[error("the request could cost up to {worst_case} nanoton at the provider's prices, more than the limit of {limit}")]
    OverPrice {
        /// Worst case.
        worst_case: u128,
        /// The limit.
        limit: u128,
    },
    /// The provider's price sheet is unusable.
    #[error("prices: {0}")]
    Prices(String),
    /// The host answered `429`.
    #[error("rate limited by the provider: {reason}{}", .retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The host's one-line reason.
        reason: String,
        /// The `retry-after` delay, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// The host answered another error status.
    #[error("the provider answered {status}: {reason}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The host's one-line reason.
        reason: String,
    },
    /// The response was not accepted.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The enclave ended the response refused (before running the model)
    /// or failed (while running it); `completed.finish` says which, and its
    /// verified receipt charges nothing.
    #[error("the enclave could not serve the request: {message}")]
    EnclaveFailed {
        /// The enclave's message.
        message: String,
        /// The verified end of the response.
        completed: Box<Completed>,
    },
    /// The receipt list is not acceptable.
    #[error("receipt list: {0}")]
    MalformedReceipts(String),
    /// A receipt in the ledger is not acceptable.
    #[error("ledger entry {ledger_seq}: {problem}")]
    BadLedgerReceipt {
        /// The entry.
        ledger_seq: u64,
        /// What is wrong with it.
        problem: ReceiptProblem,
    },
    /// The account key is unusable.
    #[error("account: {0}")]
    Account(#[from] AccountError),
}

impl ClientError {
    /// Whether the provider could not be reached at all (exit code 69 in
    /// the CLI).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// Whether the provider's evidence did not verify (nothing was sent).
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, ClientError::Verification(_))
    }
}

/// `e` and each of its sources, joined with `: `, repeats left out.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ")
}

fn transport(url: &str, source: reqwest::Error) -> ClientError {
    if source.is_connect() || (source.is_timeout() && !source.is_body()) {
        ClientError::Unreachable {
            url: url.to_string(),
            source,
        }
    } else {
        ClientError::Http {
            url: url.to_string(),
            source,
        }
    }
}

/// The result of an embeddings request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddingsResult {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// The verified end of the response (receipt, usage).
    pub completed: Completed,
}

/// A ledger entry of this account, verified.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedReceipt {
    /// The host ledger's sequence number.
    pub ledger_seq: u64,
    /// The receipt's content.
    pub receipt: UsageReceipt,
    /// The signed receipt.
    pub receipt_bytes: Vec<u8>,
    /// The key it verified with (as the ledger entry names it).
    pub receipt_public_key: Vec<u8>,
    /// Whether that key is the receipt key of an enclave in the client's
    /// current verified set. A receipt from an enclave that has since
    /// restarted verifies, but its key is no longer in the evidence.
    pub key_in_current_evidence: bool,
}

#[derive(Default)]
struct EvidenceState {
    current: Option<Arc<VerifiedProvider>>,
    bytes: Vec<u8>,
    fetched_at: Option<Instant>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    policy: Policy,
    account: AccountKey,
    options: ClientOptions,
    state: tokio::sync::Mutex<EvidenceState>,
    prices: tokio::sync::Mutex<Option<(Instant, Arc<PriceSheet>)>>,
    next_enclave: AtomicUsize,
}

/// A client of one provider. Cheap to clone; clones share the verified set.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("provider", &self.inner.base)
            .field("account", &self.inner.account.id())
            .finish_non_exhaustive()
    }
}

/// The time now, for the verifier and the receipts query: the one place the
/// client reads the clock.
/// How long before the policy's `max_evidence_age` runs out the client
/// already fetches fresh evidence (at most half the age).
const EVIDENCE_AGE_MARGIN: Duration = Duration::from_secs(60);

pub(crate) fn unix_now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

enum Attempt {
    Stream(Box<ResponseStream>),
    /// 412: the offered prices were refused (stale sheet).
    PriceMoved(String),
    /// 409, with the host's reason and the digest the request was sealed to.
    NotServed(String, EvidenceDigest),
}

impl Client {
    /// A client of the provider at `provider_base_url` (e.g.
    /// `https://provider.example:8443`), accepting enclaves under `policy`
    /// and paying with `account`.
    ///
    /// Panics only if the TLS backend cannot be initialised (as
    /// `reqwest::Client::new` does).
    pub fn new(provider_base_url: &str, policy: Policy, account: AccountKey) -> Client {
        Client::with_options(provider_base_url, policy, account, ClientOptions::default())
    }

    /// As [`Client::new`], with options.
    pub fn with_options(
        provider_base_url: &str,
        policy: Policy,
        account: AccountKey,
        options: ClientOptions,
    ) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .user_agent(concat!("cocoon-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("TLS backend initialisation");
        Client {
            inner: Arc::new(Inner {
                http,
                base: provider_base_url.trim_end_matches('/').to_string(),
                policy,
                account,
                options,
                state: tokio::sync::Mutex::new(EvidenceState::default()),
                prices: tokio::sync::Mutex::new(None),
                next_enclave: AtomicUsize::new(0),
            }),
        }
    }

    /// The provider's base URL.
    pub fn provider(&self) -> &str {
        &self.inner.base
    }

    /// The paying account.
    pub fn account_id(&self) -> AccountId {
        self.inner.account.id()
    }

    /// The paying account's public key (uncompressed SEC1).
    pub fn account_public_key(&self) -> Vec<u8> {
        self.inner.account.public_key_sec1()
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    /// Fetch the provider's evidence and verify every bundle under the
    /// policy, now. Replaces the verified set; on failure the set is
    /// emptied and the error lists every rejection, bundle by bundle.
    pub async fn verify(&self) -> Result<VerifiedProvider, ClientError> {
        self.refresh(true).await.map(|p| (*p).clone())
    }

    /// The current verified set, if any, without any network exchange.
    pub async fn verified(&self) -> Option<VerifiedProvider> {
        self.inner.state.lock().await.current.as_deref().cloned()
    }

    /// The verified set to use for the next request: verifies if there is
    /// none, looks at the evidence again if the last look is older than
    /// [`ClientOptions::evidence_refresh`].
    pub async fn ensure_verified(&self) -> Result<VerifiedProvider, ClientError> {
        self.refresh(false).await.map(|p| (*p).clone())
    }

    async fn refresh(&self, force: bool) -> Result<Arc<VerifiedProvider>, ClientError> {
        let mut st = self.inner.state.lock().await;
        if !force {
            if let (Some(cur), Some(at)) = (&st.current, st.fetched_at) {
                if at.elapsed() < self.inner.options.evidence_refresh && !self.too_old(cur) {
                    return Ok(cur.clone());
                }
            }
        }
        let bytes = self.fetch_evidence().await?;
        st.fetched_at = Some(Instant::now());
        let changed = bytes != st.bytes;
        let verified =
            verify_evidence_list(&bytes, &self.inner.policy, unix_now()).and_then(|p| match &self
                .inner
                .options
                .enclave_filter
            {
                Some(f) => p.retain(&*f.0),
                None => Ok(p),
            });
        match verified {
            Ok(p) => {
                if changed && st.current.is_some() {
                    tracing::info!(
                        provider = %self.inner.base,
                        enclaves = p.enclaves().len(),
                        "provider evidence changed; re-verified"
                    );
                }
                for r in p.rejected() {
                    tracing::warn!(provider = %self.inner.base, "{r}");
                }
                let p = Arc::new(p);
                st.current = Some(p.clone());
                st.bytes = bytes;
                Ok(p)
            }
            Err(e) => {
                // Debug only: the error goes back to the caller, who reports
                // it (the CLI prints it once, serve answers 503 with it).
                tracing::debug!(provider = %self.inner.base, "provider evidence does not verify: {e}");
                st.current = None;
                st.bytes.clear();
                st.fetched_at = None;
                Err(e.into())
            }
        }
    }

    /// Whether some enclave's evidence in `p` is, or within
    /// [`EVIDENCE_AGE_MARGIN`] will be, older than the policy's
    /// `max_evidence_age`: then the evidence is fetched and verified again
    /// before the next request, whatever `evidence_refresh` says.
    fn too_old(&self, p: &VerifiedProvider) -> bool {
        let cocoon_verifier::policy::Check::Require(max) = self.inner.policy.max_evidence_age
        else {
            return false;
        };
        let now = unix_now().0;
        p.enclaves().iter().any(|e| {
            e.claims()
                .issued_at
                .saturating_add(max)
                .saturating_sub(EVIDENCE_AGE_MARGIN.as_secs().min(max / 2))
                <= now
        })
    }

    async fn fetch_evidence(&self) -> Result<Vec<u8>, ClientError> {
        let url = self.url(EVIDENCE_PATH);
        let resp = self
            .inner
            .http
            .get(&url)
            .timeout(LIST_TIMEOUT)
            .header(reqwest::header::ACCEPT, CBOR_CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(ClientError::EvidenceUnavailable {
                status: status.as_u16(),
                reason: read_reason(resp).await,
            });
        }
        read_capped(resp, MAX_EVIDENCE_LIST)
            .await
            .map_err(|e| match e {
                Capped::Transport(e) => transport(&url, e),
                Capped::TooLarge => {
                    ClientError::Verification(VerificationError::MalformedList(ApiError::Invalid(
                        format!("evidence list larger than {MAX_EVIDENCE_LIST} bytes"),
                    )))
                }
            })
    }

    /// Send a chat request to a verified enclave that serves `model`, and
    /// return its response as it streams. Decoding is greedy (temperature
    /// 0), so the answer can be checked against a reference run; see
    /// [`Client::chat_with`] for sampling.
    pub async fn chat(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
    ) -> Result<ResponseStream, ClientError> {
        self.chat_with(model, messages, max_tokens, Sampling::greedy())
            .await
    }

    /// [`Client::chat`] with sampling parameters (temperature, top_p, seed,
    /// stop strings, penalties, logit bias, logprobs). They travel sealed:
    /// the host never sees them.
    pub async fn chat_with(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
        sampling: Sampling,
    ) -> Result<ResponseStream, ClientError> {
        sampling
            .validate()
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        if messages.is_empty() {
            return Err(ClientError::InvalidRequest("no messages".into()));
        }
        if messages.len() > MAX_MESSAGES {
            return Err(ClientError::InvalidRequest(format!(
                "{} messages, more than the limit of {MAX_MESSAGES}",
                messages.len()
            )));
        }
        let body = InferenceRequest::Chat { messages, sampling }.to_cbor();
        self.send(model, max_tokens, &body, Expecting::Chat).await
    }

    /// Embed each input with a verified enclave that serves `model`.
    pub async fn embeddings(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<EmbeddingsResult, ClientError> {
        if inputs.is_empty() {
            return Err(ClientError::InvalidRequest("no inputs".into()));
        }
        if inputs.len() > MAX_EMBEDDING_INPUTS {
            return Err(ClientError::InvalidRequest(format!(
                "{} inputs, more than the limit of {MAX_EMBEDDING_INPUTS}",
                inputs.len()
            )));
        }
        let n = inputs.len();
        let stream = self.start_embeddings(model, inputs).await?;
        collect_embeddings(stream, n).await
    }

    /// Send an embeddings request; the answer is read by
    /// [`collect_embeddings`]. The network client fails over between the
    /// two only before the answer starts.
    pub(crate) async fn start_embeddings(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<ResponseStream, ClientError> {
        if inputs.is_empty() {
            return Err(ClientError::InvalidRequest("no inputs".into()));
        }
        if inputs.len() > MAX_EMBEDDING_INPUTS {
            return Err(ClientError::InvalidRequest(format!(
                "{} inputs, more than the limit of {MAX_EMBEDDING_INPUTS}",
                inputs.len()
            )));
        }
        let n = inputs.len();
        let body = InferenceRequest::Embeddings { inputs }.to_cbor();
        // An embedding has no completion: nothing may be billed as one.
        self.send(model, 0, &body, Expecting::Embeddings { inputs: n })
            .await
    }

    async fn send(
        &self,
        model: &str,
        max_tokens: u32,
        body: &[u8],
        expecting: Expecting,
    ) -> Result<ResponseStream, ClientError> {
        let provider = self.refresh(false).await?;
        let mut attempt = self
            .send_once(&provider, model, max_tokens, body, expecting, false)
            .await?;
        if let Attempt::PriceMoved(reason) = attempt {
            tracing::info!(provider = %self.inner.base, %reason, "prices moved (412); fetching the price sheet again and retrying once");
            attempt = self
                .send_once(&provider, model, max_tokens, body, expecting, true)
                .await?;
        }
        match attempt {
            Attempt::Stream(s) => Ok(*s),
            Attempt::PriceMoved(reason) => Err(ClientError::Prices(reason)),
            Attempt::NotServed(reason, sealed_to) => {
                tracing::info!(
                    provider = %self.inner.base,
                    %reason,
                    "the host does not serve the verified enclave (409); re-verifying its evidence and retrying once"
                );
                let provider = self.refresh(true).await?;
                // Resend only if the evidence really changed: a host that
                // still publishes the enclave it claims not to serve could
                // be answering 409 to a request it did serve (a replay
                // refusal, or a lie to make us pay twice).
                if provider
                    .enclaves()
                    .iter()
                    .any(|e| e.evidence_digest() == sealed_to)
                {
                    return Err(ClientError::EvidenceNotServed { reason });
                }
                match self
                    .send_once(&provider, model, max_tokens, body, expecting, true)
                    .await?
                {
                    Attempt::Stream(s) => Ok(*s),
                    Attempt::PriceMoved(reason) => Err(ClientError::Prices(reason)),
                    Attempt::NotServed(reason, _) => Err(ClientError::EvidenceNotServed { reason }),
                }
            }
        }
    }

    fn pick(
        &self,
        provider: &VerifiedProvider,
        model: &str,
    ) -> Result<AttestedEnclave, ClientError> {
        let serving: Vec<&AttestedEnclave> = provider.serving(model).collect();
        if serving.is_empty() {
            return Err(ClientError::ModelNotServed {
                model: model.to_string(),
                available: provider.models(),
            });
        }
        let i = self.inner.next_enclave.fetch_add(1, Ordering::Relaxed) % serving.len();
        Ok(serving[i].clone())
    }

    async fn send_once(
        &self,
        provider: &VerifiedProvider,
        model: &str,
        max_tokens: u32,
        body: &[u8],
        expecting: Expecting,
        fresh_prices: bool,
    ) -> Result<Attempt, ClientError> {
        let enclave = self.pick(provider, model)?;
        let digest = enclave.evidence_digest();
        let mut sheet = self.price_sheet(fresh_prices).await?;
        if sheet.entry(digest.as_bytes()).is_none() && !fresh_prices {
            // A sheet from before the enclave (re)started.
            sheet = self.price_sheet(true).await?;
        }
        let Some(entry) = sheet.entry(digest.as_bytes()) else {
            // The host prices only the enclaves it serves: as a 409.
            return Ok(Attempt::NotServed(
                format!(
                    "the price sheet has no entry for enclave {}",
                    hex::encode(digest.as_bytes())
                ),
                digest,
            ));
        };
        let (unit_price, multiplier_milli) = entry
            .offer(model)
            .map_err(|e| ClientError::Prices(e.to_string()))?;
        if let Some(settings) = enclave.provider_settings() {
            // The provider's prices are in the verified claims: the sheet
            // must offer exactly those (before its load multiplier).
            let base = entry.table.models.get(model);
            if base != settings.prices.get(model) {
                return Err(ClientError::Prices(format!(
                    "the price sheet's base price for {model} ({base:?}) is not the one in the enclave's verified claims ({:?}); refusing",
                    settings.prices.get(model)
                )));
            }
            if let (Some(s), Some(c)) = (&sheet.settlement, &settings.payment_contract) {
                if &s.contract != c {
                    return Err(ClientError::Prices(format!(
                        "the price sheet settles on {} but the enclave's verified claims name the payment contract {c}; refusing",
                        s.contract
                    )));
                }
            }
        }
        let meta = BillingMeta {
            model: model.to_string(),
            max_tokens,
            price_quote_id: sheet.quote_id.clone(),
            unit_price,
            multiplier_milli,
            client_account: self.inner.account.id().0,
            expires_at: unix_now()
                .0
                .saturating_add(self.inner.options.request_lifetime.as_secs()),
        };
        let authorization = match &sheet.settlement {
            None => None,
            Some(s) => {
                let contract = ContractAddress::parse_raw(&s.contract)
                    .map_err(|e| ClientError::Prices(format!("settlement contract: {e}")))?;
                let enclave_key = compress_p256(enclave.receipt_public_key())
                    .map_err(|e| ClientError::Prices(format!("receipt key: {e}")))?;
                let auth = Authorization {
                    contract,
                    account: self.inner.account.id().0,
                    enclave_key,
                    cap: self.inner.options.budget_nanoton,
                };
                Some(hex::encode(
                    self.inner.account.sign_authorization(&auth).to_bytes(),
                ))
            }
        };
        let (sealed, session) = seal_to(&enclave, &meta, body)?;
        let sealed_bytes = sealed.to_cbor();
        // The host reserves exactly this against the authorization cap.
        let worst_case = max_cost(&unit_price, sealed_bytes.len(), max_tokens);
        if let Some(limit) = self.inner.options.max_request_nanoton {
            if worst_case > limit {
                return Err(ClientError::OverPrice { worst_case, limit });
            }
        }
        let request_id = sealed.request_id();
        let url = self.url(REQUESTS_PATH);
        let mut req = self.inner.http.post(&url);
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION_HEADER, a);
        }
        let resp = req
            .header(CONTENT_TYPE, CBOR_CONTENT_TYPE)
            .header(
                EVIDENCE_DIGEST_HEADER,
                hex::encode(enclave.evidence_digest().as_bytes()),
            )
            .header(
                ACCOUNT_KEY_HEADER,
                hex::encode(self.inner.account.public_key_sec1()),
            )
            .header(
                ACCOUNT_SIGNATURE_HEADER,
                hex::encode(self.inner.account.sign_request(&request_id)),
            )
            .body(sealed_bytes)
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let status = resp.status();
        if status == StatusCode::OK {
            let expect = ReceiptExpectation {
                request_id,
                account: self.inner.account.id(),
                model: model.to_string(),
                max_tokens,
                unit_price,
                multiplier_milli,
                receipt_public_key: enclave.receipt_public_key().to_vec(),
            };
            let reader =
                ResponseReader::new(session.response_opener(), expect, expecting, &enclave);
            return Ok(Attempt::Stream(Box::new(ResponseStream::new(
                Box::pin(resp.bytes_stream()),
                reader,
                enclave,
                model.to_string(),
                max_tokens,
            ))));
        }
        let retry_after = retry_after(resp.headers());
        let reason = read_reason(resp).await;
        Err(match status {
            // 409: the evidence digest is not served here (the enclave
            // restarted), or the request is a replay; `send` tells them apart
            // by fetching the evidence again.
            StatusCode::CONFLICT => {
                return Ok(Attempt::NotServed(reason, enclave.evidence_digest()))
            }
            StatusCode::PRECONDITION_FAILED if !fresh_prices => {
                return Ok(Attempt::PriceMoved(reason))
            }
            StatusCode::TOO_MANY_REQUESTS => ClientError::RateLimited {
                reason,
                retry_after,
            },
            s => ClientError::Status {
                status: s.as_u16(),
                reason,
            },
        })
    }

    /// The provider's price sheet (`GET /v1/prices`), fetched again when
    /// older than `price_refresh` or when `force`.
    pub async fn price_sheet(&self, force: bool) -> Result<Arc<PriceSheet>, ClientError> {
        let mut g = self.inner.prices.lock().await;
        if let Some((at, sheet)) = g.as_ref() {
            if !force && at.elapsed() < self.inner.options.price_refresh {
                return Ok(sheet.clone());
            }
        }
        let url = self.url(PRICES_PATH);
        let resp = self
            .inner
            .http
            .get(&url)
            .timeout(LIST_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let status = resp.status();
        if status != StatusCode::OK {
            let reason = read_reason(resp).await;
            return Err(ClientError::Prices(format!(
                "GET {PRICES_PATH} answered {status}: {reason}"
            )));
        }
        let bytes = read_capped(resp, cocoon_protocol::pricing::MAX_PRICE_SHEET)
            .await
            .map_err(|_| ClientError::Prices("the price sheet is too large or was cut".into()))?;
        let sheet = Arc::new(
            PriceSheet::from_cbor(&bytes).map_err(|e| ClientError::Prices(e.to_string()))?,
        );
        *g = Some((Instant::now(), sheet.clone()));
        Ok(sheet)
    }

    /// Ask for evidence of `enclave` bound to a fresh random nonce of this
    /// client's (`GET /v1/evidence/nonce`): a new hardware report made for
    /// this client alone, so it proves the enclave runs now. It is verified
    /// under the policy, must carry the nonce and name the same keys; the
    /// result is the same enclave, attested again for this client alone
    /// (requests to it go to the same keys). Hosts limit how
    /// often an account may ask (quotes are slow): `RateLimited`.
    pub async fn attest_with_nonce(
        &self,
        enclave: &AttestedEnclave,
    ) -> Result<AttestedEnclave, ClientError> {
        let mut nonce = [0u8; 32];
        cocoon_protocol::rand_core::RngCore::fill_bytes(&mut OsRng, &mut nonce);
        let time = unix_now().0;
        let url = format!(
            "{}?nonce={}",
            self.url(EVIDENCE_NONCE_PATH),
            hex::encode(nonce)
        );
        let resp = self
            .inner
            .http
            .get(&url)
            .timeout(LIST_TIMEOUT)
            .header(
                EVIDENCE_DIGEST_HEADER,
                hex::encode(enclave.evidence_digest().0),
            )
            .header(
                ACCOUNT_KEY_HEADER,
                hex::encode(self.inner.account.public_key_sec1()),
            )
            .header(ACCOUNT_TIME_HEADER, time.to_string())
            .header(
                ACCOUNT_SIGNATURE_HEADER,
                hex::encode(self.inner.account.sign_evidence_nonce(&nonce, time)),
            )
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let resp = ok_or_status(resp).await?;
        let bytes = read_capped(resp, cocoon_attestation::bundle::MAX_BUNDLE)
            .await
            .map_err(|e| match e {
                Capped::Transport(e) => transport(&url, e),
                Capped::TooLarge => ClientError::Verification(VerificationError::MalformedList(
                    ApiError::Invalid("evidence bundle too large".into()),
                )),
            })?;
        verify_nonce_evidence(&bytes, &nonce, enclave, &self.inner.policy, unix_now()).map_err(
            |rejection| {
                ClientError::Verification(VerificationError::NoneVerified(vec![
                    crate::provider::BundleRejection {
                        index: enclave.bundle_index(),
                        rejection,
                    },
                ]))
            },
        )
    }

    /// This account's receipts from the host's ledger, after ledger
    /// sequence number `after`, at most `limit`. Every receipt is verified
    /// with the key its entry names and must bill this account.
    pub async fn receipts(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<VerifiedReceipt>, ClientError> {
        let time = unix_now().0;
        let url = format!("{}?after={after}&limit={limit}", self.url(RECEIPTS_PATH));
        let resp = self
            .inner
            .http
            .get(&url)
            .timeout(LIST_TIMEOUT)
            .header(
                ACCOUNT_KEY_HEADER,
                hex::encode(self.inner.account.public_key_sec1()),
            )
            .header(ACCOUNT_TIME_HEADER, time.to_string())
            .header(
                ACCOUNT_SIGNATURE_HEADER,
                hex::encode(self.inner.account.sign_receipts_query(time)),
            )
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        let resp = ok_or_status(resp).await?;
        let max = cocoon_protocol::api::MAX_RECEIPTS_PER_PAGE
            * (cocoon_protocol::receipt::MAX_RECEIPT + 128);
        let bytes = read_capped(resp, max).await.map_err(|e| match e {
            Capped::Transport(e) => transport(&url, e),
            Capped::TooLarge => ClientError::MalformedReceipts(format!("larger than {max} bytes")),
        })?;
        let list = ReceiptList::from_cbor(&bytes)
            .map_err(|e| ClientError::MalformedReceipts(e.to_string()))?;
        if list.0.len() > limit as usize {
            return Err(ClientError::MalformedReceipts(format!(
                "{} entries, more than the {limit} asked for",
                list.0.len()
            )));
        }
        let current_keys: Vec<Vec<u8>> = self
            .verified()
            .await
            .map(|p| {
                p.enclaves()
                    .iter()
                    .map(|e| e.receipt_public_key().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        let account = self.inner.account.id();
        let mut last = after;
        let mut out: Vec<VerifiedReceipt> = Vec::with_capacity(list.0.len());
        let mut seen_requests = std::collections::HashSet::new();
        let mut seen_seqs = std::collections::HashSet::new();
        for e in list.0 {
            if e.ledger_seq <= last {
                return Err(ClientError::MalformedReceipts(format!(
                    "ledger entry {} is not after {last}",
                    e.ledger_seq
                )));
            }
            last = e.ledger_seq;
            let receipt = check_signed_by(&e.receipt, &e.receipt_public_key, &account).map_err(
                |problem| ClientError::BadLedgerReceipt {
                    ledger_seq: e.ledger_seq,
                    problem,
                },
            )?;
            // One request is billed once, and an enclave numbers its
            // receipts uniquely: a repeat is a host billing twice.
            if !seen_requests.insert(receipt.request_id)
                || !seen_seqs.insert((e.receipt_public_key.clone(), receipt.enclave_seq))
            {
                return Err(ClientError::MalformedReceipts(format!(
                    "ledger entry {} repeats request {} (enclave_seq {}): the host lists one receipt twice",
                    e.ledger_seq, receipt.request_id, receipt.enclave_seq
                )));
            }
            out.push(VerifiedReceipt {
                ledger_seq: e.ledger_seq,
                receipt,
                key_in_current_evidence: current_keys.contains(&e.receipt_public_key),
                receipt_bytes: e.receipt,
                receipt_public_key: e.receipt_public_key,
            });
        }
        Ok(out)
    }
}

/// Read an embeddings answer of `n` inputs to its verified end.
pub(crate) async fn collect_embeddings(
    mut stream: ResponseStream,
    n: usize,
) -> Result<EmbeddingsResult, ClientError> {
    let mut embeddings: Vec<Option<Vec<f32>>> = vec![None; n];
    loop {
        match stream.next().await? {
            Some(ResponsePart::Embedding { index, vector }) => {
                // The reader checked the index is in range and new.
                if let Some(slot) = embeddings.get_mut(index as usize) {
                    *slot = Some(vector);
                }
            }
            Some(ResponsePart::Completed(c)) => {
                if let Some(message) = c.finish.error_message() {
                    return Err(ClientError::EnclaveFailed {
                        message: message.to_owned(),
                        completed: c,
                    });
                }
                let embeddings = embeddings.into_iter().flatten().collect::<Vec<_>>();
                if embeddings.len() != n {
                    return Err(ResponseError::Event(format!(
                        "{} embedding(s) for {n} input(s)",
                        embeddings.len()
                    ))
                    .into());
                }
                return Ok(EmbeddingsResult {
                    embeddings,
                    completed: *c,
                });
            }
            Some(_) => {}
            None => return Err(ResponseError::Ended.into()),
        }
    }
}

/// Seal a request to a verified enclave: its HPKE key and evidence digest
/// come from its verified claims, and nothing else can be sealed to.
fn seal_to(
    enclave: &AttestedEnclave,
    meta: &BillingMeta,
    body: &[u8],
) -> Result<(SealedRequest, ClientSession), SealError> {
    seal_request(
        enclave.hpke_public_key(),
        &enclave.evidence_digest(),
        meta,
        body,
        &mut OsRng,
    )
}

/// The response when it is a 200; otherwise the error its status means
/// (`RateLimited` with the `retry-after` delay for a 429).
async fn ok_or_status(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status == StatusCode::OK {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let reason = read_reason(resp).await;
    Err(if status == StatusCode::TOO_MANY_REQUESTS {
        ClientError::RateLimited {
            reason,
            retry_after,
        }
    } else {
        ClientError::Status {
            status: status.as_u16(),
            reason,
        }
    })
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

enum Capped {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_capped(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Capped> {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(b) = body.next().await {
        let b = b.map_err(Capped::Transport)?;
        if out.len() + b.len() > max {
            return Err(Capped::TooLarge);
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// The host's one-line reason: the first line of the body, printable
/// characters only, bounded; the status's name when the body is empty.
async fn read_reason(resp: reqwest::Response) -> String {
    let status = resp.status();
    let mut buf = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(b)) = body.next().await {
        buf.extend_from_slice(&b);
        if buf.len() >= MAX_REASON_BODY {
            break;
        }
    }
    buf.truncate(MAX_REASON_BODY);
    let text = String::from_utf8_lossy(&buf);
    let line: String = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    if line.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unreachable provider's error says why (here: connection refused),
    /// not only "error sending request".
    #[tokio::test]
    async fn unreachable_keeps_the_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/evidence", closed.local_addr().unwrap());
        drop(closed);
        let e = reqwest::get(&url).await.unwrap_err();
        let e = transport(&url, e);
        assert!(e.is_unreachable(), "{e}");
        let text = e.to_string().to_lowercase();
        assert!(text.contains("refused"), "{text}");
    }
}
