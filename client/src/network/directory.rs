//! The set of providers a network client may use, checked and kept fresh.
//!
//! A [`ProviderDirectory`] asks a [`TrustSource`] which providers exist and
//! under what policy each one's enclaves must verify — the registry on
//! chain or a fixed list
//! with a policy file ([`StaticProviders`]) — and then, for every
//! provider, in parallel (at most [`DirectoryOptions::concurrency`] at
//! once, each bounded by [`DirectoryOptions::provider_timeout`]):
//!
//! 1. asks the source to admit it (for the registry: its release manifest,
//!    checked against an active release, gives the policy);
//! 2. fetches its evidence and verifies every enclave under that policy
//!    (plus the source's per-enclave check), as a one-provider
//!    [`Client`] does;
//! 3. fetches its price sheet.
//!
//! A provider that fails any step is left out of the set (with the reason,
//! [`ProviderSet::rejected`]) until a later refresh admits it. A refresh
//! replaces the whole set at once; requests in flight keep the set they
//! started with. Refreshes run every [`DirectoryOptions::refresh`]
//! (default 60 s), so a release revoked on chain, or a provider
//! deregistered, stops being used within one refresh interval (plus the
//! time the refresh takes). When the source itself fails (the chain API
//! is down) the old set is kept, but only until it is older than
//! [`DirectoryOptions::max_stale`] (default twice the refresh interval):
//! after that the network client refuses to route rather than trust a set
//! it cannot re-check.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cocoon_protocol::account::AccountKey;
use cocoon_protocol::pricing::PriceSheet;
use cocoon_protocol::settlement::ContractAddress;
use cocoon_verifier::Policy;
use futures_util::StreamExt;

use crate::client::{Client, ClientOptions, EnclaveFilter};
use crate::network::router::ProviderId;
use crate::provider::{AttestedEnclave, VerifiedProvider};

/// Settings of a directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DirectoryOptions {
    /// How often the set is rebuilt (default 60 s).
    pub refresh: Duration,
    /// Providers checked at once (default 16).
    pub concurrency: usize,
    /// Longest time one provider's check may take: manifest, evidence,
    /// prices (default 10 s).
    pub provider_timeout: Duration,
    /// A set older than this is not routed to (default 120 s).
    pub max_stale: Duration,
}

impl Default for DirectoryOptions {
    fn default() -> DirectoryOptions {
        DirectoryOptions {
            refresh: Duration::from_secs(60),
            concurrency: 16,
            provider_timeout: Duration::from_secs(10),
            max_stale: Duration::from_secs(120),
        }
    }
}

/// A provider the source lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Who it is.
    pub id: ProviderId,
    /// Its host agent's base URL.
    pub endpoint: String,
    /// Its payment contract, when known.
    pub payment: Option<ContractAddress>,
}

/// A check each enclave must pass after the verifier accepted it; `Err`
/// says why not.
pub type EnclaveCheck = Arc<dyn Fn(&AttestedEnclave) -> Result<(), String> + Send + Sync>;

/// What a source says about one provider before its evidence is fetched.
pub struct Admission {
    /// The policy its enclaves must verify under.
    pub policy: Policy,
    /// A check each verified enclave must also pass.
    pub check: Option<EnclaveCheck>,
    /// The release (manifest hash) it runs, when known.
    pub release: Option<[u8; 32]>,
}

/// Why the source could not list providers.
#[derive(Debug, Clone, thiserror::Error)]
#[error("provider directory: {0}")]
pub struct DirectoryError(pub String);

/// Where the providers and the trust in them come from.
#[async_trait::async_trait]
pub trait TrustSource: Send + Sync {
    /// The providers to consider now.
    async fn candidates(&self) -> Result<Vec<Candidate>, DirectoryError>;
    /// The policy (and extra check) for one of them; `Err` leaves it out
    /// with the reason.
    async fn admit(&self, c: &Candidate, http: &reqwest::Client) -> Result<Admission, String>;
}

/// A fixed list of provider URLs, every one verified under one policy
/// (`--provider URL --policy FILE`).
pub struct StaticProviders {
    providers: Vec<String>,
    policy: Policy,
}

impl StaticProviders {
    /// These providers under this policy.
    pub fn new(providers: Vec<String>, policy: Policy) -> StaticProviders {
        StaticProviders { providers, policy }
    }
}

#[async_trait::async_trait]
impl TrustSource for StaticProviders {
    async fn candidates(&self) -> Result<Vec<Candidate>, DirectoryError> {
        Ok(self
            .providers
            .iter()
            .map(|u| Candidate {
                id: ProviderId(u.trim_end_matches('/').to_string()),
                endpoint: u.clone(),
                payment: None,
            })
            .collect())
    }

    async fn admit(&self, _: &Candidate, _: &reqwest::Client) -> Result<Admission, String> {
        Ok(Admission {
            policy: self.policy.clone(),
            check: None,
            release: None,
        })
    }
}

/// A provider that passed every check at the last refresh.
#[derive(Debug)]
pub struct LiveProvider {
    /// Who it is.
    pub id: ProviderId,
    /// Its base URL.
    pub endpoint: String,
    /// Its payment contract, when known.
    pub payment: Option<ContractAddress>,
    /// The release it runs, when known.
    pub release: Option<[u8; 32]>,
    /// The one-provider client that verified it and sends to it.
    pub client: Client,
    /// Its verified enclaves at the refresh.
    pub verified: VerifiedProvider,
    /// Its price sheet at the refresh (for choosing; the client checks the
    /// current one before it sends).
    pub sheet: Arc<PriceSheet>,
}

/// The providers usable now, and why the others are not.
#[derive(Debug)]
pub struct ProviderSet {
    /// Verified providers, in the source's order.
    pub providers: Vec<Arc<LiveProvider>>,
    /// Providers left out, with the reason.
    pub rejected: Vec<(ProviderId, String)>,
    /// When the refresh that built it ended.
    pub refreshed_at: Instant,
    /// How long that refresh took.
    pub took: Duration,
}

impl ProviderSet {
    fn empty() -> ProviderSet {
        ProviderSet {
            providers: Vec::new(),
            rejected: Vec::new(),
            refreshed_at: Instant::now(),
            took: Duration::ZERO,
        }
    }

    /// Every model a verified provider serves, each once.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.providers.iter().flat_map(|p| p.verified.models()) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }
}

/// The checked set of providers, rebuilt by [`ProviderDirectory::refresh`].
pub struct ProviderDirectory {
    source: Arc<dyn TrustSource>,
    account: AccountKey,
    client_options: ClientOptions,
    options: DirectoryOptions,
    http: reqwest::Client,
    current: RwLock<Option<Arc<ProviderSet>>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ProviderDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderDirectory")
            .field("account", &self.account.id())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ProviderDirectory {
    /// A directory over `source`; requests are paid by `account` and sent
    /// with `client_options`. Nothing is fetched until
    /// [`refresh`](ProviderDirectory::refresh).
    pub fn new(
        source: Arc<dyn TrustSource>,
        account: AccountKey,
        client_options: ClientOptions,
        options: DirectoryOptions,
    ) -> ProviderDirectory {
        let http = reqwest::Client::builder()
            .connect_timeout(client_options.connect_timeout)
            .timeout(options.provider_timeout)
            .user_agent(concat!("cocoon-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("TLS backend initialisation");
        ProviderDirectory {
            source,
            account,
            client_options,
            options,
            http,
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings.
    pub fn options(&self) -> &DirectoryOptions {
        &self.options
    }

    /// The client options each provider's client is built with.
    pub fn client_options(&self) -> &ClientOptions {
        &self.client_options
    }

    /// The paying account.
    pub fn account(&self) -> &AccountKey {
        &self.account
    }

    /// The set from the last successful refresh (empty before the first).
    pub fn current(&self) -> Arc<ProviderSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Arc::new(ProviderSet::empty()))
    }

    /// Whether a set exists and is younger than
    /// [`DirectoryOptions::max_stale`].
    pub fn is_fresh(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.refreshed_at.elapsed() <= self.options.max_stale)
    }

    /// Ask the source, check every provider, and replace the set. When the
    /// source fails the old set stays (see the module docs) and the error
    /// is returned.
    pub async fn refresh(&self) -> Result<Arc<ProviderSet>, DirectoryError> {
        let _one = self.refreshing.lock().await;
        let start = Instant::now();
        let candidates = self.source.candidates().await?;
        let results: Vec<(ProviderId, Result<LiveProvider, String>)> =
            futures_util::stream::iter(candidates)
                .map(|c| async move {
                    let id = c.id.clone();
                    let r = match tokio::time::timeout(self.options.provider_timeout, self.check(c))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(format!(
                            "not checked within {} s",
                            self.options.provider_timeout.as_secs_f64()
                        )),
                    };
                    (id, r)
                })
                .buffered(self.options.concurrency.max(1))
                .collect()
                .await;
        let mut providers = Vec::new();
        let mut rejected = Vec::new();
        for (id, r) in results {
            match r {
                Ok(p) => providers.push(Arc::new(p)),
                Err(reason) => {
                    tracing::warn!(provider = %id, "provider left out: {reason}");
                    rejected.push((id, reason));
                }
            }
        }
        let set = Arc::new(ProviderSet {
            providers,
            rejected,
            refreshed_at: Instant::now(),
            took: start.elapsed(),
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
        Ok(set)
    }

    async fn check(&self, c: Candidate) -> Result<LiveProvider, String> {
        let url = reqwest::Url::parse(&c.endpoint)
            .map_err(|e| format!("endpoint {:?}: {e}", c.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("endpoint {:?}: not an http(s) URL", c.endpoint));
        }
        let admission = self.source.admit(&c, &self.http).await?;
        let mut options = self.client_options.clone();
        options.enclave_filter = admission.check.map(EnclaveFilter);
        let client = Client::with_options(
            url.as_str(),
            admission.policy,
            self.account.clone(),
            options,
        );
        // A provider behind a load balancer may answer the evidence from
        // one host agent and the prices from another: ask again (a few
        // times) until the sheet covers an enclave that verified.
        let mut tries = 0;
        let (verified, sheet) = loop {
            let verified = client.verify().await.map_err(|e| e.to_string())?;
            let sheet = client.price_sheet(true).await.map_err(|e| e.to_string())?;
            tries += 1;
            let covered = verified
                .enclaves()
                .iter()
                .any(|e| sheet.entry(e.evidence_digest().as_bytes()).is_some());
            if covered || tries >= SHEET_TRIES {
                break (verified, sheet);
            }
        };
        Ok(LiveProvider {
            id: c.id,
            endpoint: c.endpoint,
            payment: c.payment,
            release: admission.release,
            client,
            verified,
            sheet,
        })
    }
}

/// How many times a provider's evidence and price sheet are fetched
/// together before a sheet that covers none of its verified enclaves is
/// taken as it is (and its offers refused).
const SHEET_TRIES: u32 = 4;
