//! The client on a network of providers: find them ([`directory`]), keep
//! statistics of how each one serves ([`stats`]), choose one per request
//! and fail over ([`router`]), all behind [`NetworkClient`].
//!
//! The choice rule and the failover rule are written out in [`router`];
//! the statistics window and ejection in [`stats`]; when the set of
//! providers is rebuilt in [`directory`].
//!
//! ```no_run
//! # async fn demo(policy: cocoon_verifier::Policy, account: cocoon_protocol::account::AccountKey) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cocoon_client::network::{directory::*, router::RouteConfig, NetworkClient};
//! use cocoon_protocol::message::{ChatMessage, Role};
//!
//! let source = Arc::new(StaticProviders::new(
//!     vec!["https://a.example".into(), "https://b.example".into()],
//!     policy,
//! ));
//! let dir = ProviderDirectory::new(source, account, Default::default(), Default::default());
//! let net = NetworkClient::new(Arc::new(dir), RouteConfig::default());
//! net.refresh().await?;
//! let _refresher = net.spawn_refresh();
//! let answer = net
//!     .chat("minilm", vec![ChatMessage { role: Role::User, content: "hi".into() }], 64)
//!     .await?;
//! println!("served by {}", answer.provider);
//! let (text, _end) = answer.value.collect_text().await?;
//! # Ok(()) }
//! ```

pub mod directory;
pub mod registry;
pub mod router;
pub mod stats;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_protocol::message::{ChatMessage, InferenceRequest, MAX_MESSAGES};
use cocoon_protocol::pricing::max_cost;
use cocoon_protocol::sampling::Sampling;

use crate::client::{collect_embeddings, Client, ClientError, EmbeddingsResult};
use crate::response::{ResponseStream, StreamObserver};
use directory::{DirectoryError, LiveProvider, ProviderDirectory, ProviderSet};
use router::{decide, Decision, Offer, ProviderId, Rng, RouteConfig, Router};
use stats::{Health, StatsSnapshot};

/// Bytes a sealed request adds to its plaintext body besides the model
/// name (encapsulated key, billing metadata, AEAD tag, CBOR framing),
/// rounded up: only for ranking and pre-filtering by worst case; the
/// one-provider client checks the exact worst case before it sends.
const SEAL_OVERHEAD_ESTIMATE: usize = 320;

/// A result and the provider that gave it.
#[derive(Debug)]
pub struct Routed<T> {
    /// The provider that served the request.
    pub provider: ProviderId,
    /// What it gave.
    pub value: T,
    /// The providers tried before it, with what each answered.
    pub failed: Vec<(ProviderId, ClientError)>,
}

/// Why a routed request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// No verified provider could take the request; nothing was sent.
    #[error("no provider can take a request for model {model:?}: {}", .reasons.join("; "))]
    NoProvider {
        /// The model asked for.
        model: String,
        /// Why each provider (or the set) was not usable.
        reasons: Vec<String>,
    },
    /// A provider refused the request for a reason any other would share
    /// (a `4xx` other than 402/409/429, an invalid request); not retried.
    #[error("provider {provider}: {source}")]
    Refused {
        /// The provider.
        provider: ProviderId,
        /// Its answer.
        #[source]
        source: ClientError,
    },
    /// Every provider tried failed before its answer started.
    #[error("every provider tried failed: {}", .attempts.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// Each provider and its error, in the order tried.
        attempts: Vec<(ProviderId, ClientError)>,
    },
    /// The answer started and then failed: reported, never restarted
    /// elsewhere (it may have been billed).
    #[error("provider {provider}: the answer failed after it started (not retried elsewhere: it may be billed): {source}")]
    AnswerFailed {
        /// The provider.
        provider: ProviderId,
        /// What failed.
        #[source]
        source: ClientError,
    },
    /// The set of providers could not be refreshed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

struct NetInner {
    directory: Arc<ProviderDirectory>,
    router: Arc<Mutex<Router>>,
    rng: Mutex<Rng>,
}

/// A client of the whole network: routes each request to a verified
/// provider by the documented rule and fails over. Cheap to clone.
#[derive(Clone)]
pub struct NetworkClient {
    inner: Arc<NetInner>,
}

impl std::fmt::Debug for NetworkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkClient")
            .field("directory", &self.inner.directory)
            .finish_non_exhaustive()
    }
}

/// Stops the background refresh when dropped.
#[derive(Debug)]
pub struct RefreshTask(tokio::task::JoinHandle<()>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One provider as the router sees it now.
#[derive(Debug, Clone)]
pub struct ProviderStatus {
    /// Who.
    pub id: ProviderId,
    /// Its URL.
    pub endpoint: String,
    /// Whether it may be chosen.
    pub health: Health,
    /// Its statistics window.
    pub stats: StatsSnapshot,
}

impl NetworkClient {
    /// A network client over `directory`, with a generator seeded by the
    /// OS.
    pub fn new(directory: Arc<ProviderDirectory>, config: RouteConfig) -> NetworkClient {
        NetworkClient::with_rng(directory, config, Rng::from_os())
    }

    /// As [`NetworkClient::new`] with a given generator (tests).
    pub fn with_rng(
        directory: Arc<ProviderDirectory>,
        config: RouteConfig,
        rng: Rng,
    ) -> NetworkClient {
        NetworkClient {
            inner: Arc::new(NetInner {
                directory,
                router: Arc::new(Mutex::new(Router::new(config))),
                rng: Mutex::new(rng),
            }),
        }
    }

    /// The directory.
    pub fn directory(&self) -> &Arc<ProviderDirectory> {
        &self.inner.directory
    }

    /// Rebuild the provider set now; statistics of providers still listed
    /// survive, those of providers gone are dropped.
    pub async fn refresh(&self) -> Result<Arc<ProviderSet>, DirectoryError> {
        let set = self.inner.directory.refresh().await?;
        let mut keep: Vec<ProviderId> = set.providers.iter().map(|p| p.id.clone()).collect();
        keep.extend(set.rejected.iter().map(|(id, _)| id.clone()));
        lock(&self.inner.router).retain(&keep);
        Ok(set)
    }

    /// Refresh every [`directory::DirectoryOptions::refresh`] in the
    /// background until the returned task is dropped.
    pub fn spawn_refresh(&self) -> RefreshTask {
        let me = self.clone();
        let every = self.inner.directory.options().refresh;
        RefreshTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh().await {
                    tracing::warn!("provider refresh failed (keeping the last set while it is fresh enough): {e}");
                }
            }
        }))
    }

    /// The current set of providers.
    pub fn providers(&self) -> Arc<ProviderSet> {
        self.inner.directory.current()
    }

    /// Every provider of the current set with its health and statistics.
    pub fn status(&self) -> Vec<ProviderStatus> {
        let set = self.providers();
        let now = Instant::now();
        let r = lock(&self.inner.router);
        set.providers
            .iter()
            .map(|p| ProviderStatus {
                id: p.id.clone(),
                endpoint: p.endpoint.clone(),
                health: r.health(&p.id, now),
                stats: r.snapshot(&p.id, now),
            })
            .collect()
    }

    /// The probability that each candidate provider would be tried first
    /// for this chat request now, by the rule (with exploration); the
    /// providers that are not candidates are left out.
    pub fn choice_shares(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
    ) -> Vec<(ProviderId, f64)> {
        let body_len = InferenceRequest::Chat {
            messages: messages.to_vec(),
            sampling: Sampling::greedy(),
        }
        .to_cbor()
        .len();
        let set = self.providers();
        let (offers, _) = self.offers(&set, model, max_tokens, body_len);
        let plain: Vec<Offer> = offers.into_iter().map(|(o, _)| o).collect();
        let p = lock(&self.inner.router).first_choice_probabilities(&plain, Instant::now());
        plain.into_iter().map(|o| o.id).zip(p).collect()
    }

    /// Send a chat request to a provider chosen by the rule, failing over
    /// before the answer starts; the answer streams from the provider that
    /// took it.
    pub async fn chat(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
    ) -> Result<Routed<ResponseStream>, NetworkError> {
        self.chat_with(model, messages, max_tokens, Sampling::greedy())
            .await
    }

    /// [`NetworkClient::chat`] with sampling parameters
    /// ([`Client::chat_with`]).
    pub async fn chat_with(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        max_tokens: u32,
        sampling: Sampling,
    ) -> Result<Routed<ResponseStream>, NetworkError> {
        if messages.is_empty() || messages.len() > MAX_MESSAGES {
            return Err(NetworkError::Refused {
                provider: ProviderId("(none)".into()),
                source: ClientError::InvalidRequest(format!(
                    "{} messages: between 1 and {MAX_MESSAGES}",
                    messages.len()
                )),
            });
        }
        let body_len = InferenceRequest::Chat {
            messages: messages.clone(),
            sampling: sampling.clone(),
        }
        .to_cbor()
        .len();
        self.route(model, max_tokens, body_len, |c: Client| {
            let messages = messages.clone();
            let model = model.to_string();
            let sampling = sampling.clone();
            async move { c.chat_with(&model, messages, max_tokens, sampling).await }
        })
        .await
    }

    /// Embed each input with a provider chosen by the rule, failing over
    /// before the answer starts.
    pub async fn embeddings(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Routed<EmbeddingsResult>, NetworkError> {
        let n = inputs.len();
        let body_len = InferenceRequest::Embeddings {
            inputs: inputs.clone(),
        }
        .to_cbor()
        .len();
        let routed = self
            .route(model, 0, body_len, |c: Client| {
                let inputs = inputs.clone();
                let model = model.to_string();
                async move { c.start_embeddings(&model, inputs).await }
            })
            .await?;
        match collect_embeddings(routed.value, n).await {
            Ok(value) => Ok(Routed {
                provider: routed.provider,
                value,
                failed: routed.failed,
            }),
            Err(source) => Err(NetworkError::AnswerFailed {
                provider: routed.provider,
                source,
            }),
        }
    }

    /// The candidates for a request and the reasons the others are not.
    fn offers(
        &self,
        set: &ProviderSet,
        model: &str,
        max_tokens: u32,
        body_len: usize,
    ) -> (Vec<(Offer, Arc<LiveProvider>)>, Vec<String>) {
        let limit = self.inner.directory.client_options().max_request_nanoton;
        let sealed_len = body_len + model.len() + SEAL_OVERHEAD_ESTIMATE;
        let mut offers = Vec::new();
        let mut reasons = Vec::new();
        for p in &set.providers {
            let Some(enclave) = p.verified.serving(model).next() else {
                reasons.push(format!("{}: does not serve {model:?}", p.id));
                continue;
            };
            let price = p
                .sheet
                .entry(enclave.evidence_digest().as_bytes())
                .and_then(|e| e.offer(model).ok());
            let Some((unit, _)) = price else {
                reasons.push(format!(
                    "{}: its price sheet has no offer for {model:?}",
                    p.id
                ));
                continue;
            };
            let worst_case = max_cost(&unit, sealed_len, max_tokens);
            if let Some(limit) = limit {
                if worst_case > limit {
                    reasons.push(format!(
                        "{}: worst case {worst_case} nanoton is over the limit of {limit}",
                        p.id
                    ));
                    continue;
                }
            }
            offers.push((
                Offer {
                    id: p.id.clone(),
                    worst_case,
                },
                p.clone(),
            ));
        }
        (offers, reasons)
    }

    async fn route<F, Fut>(
        &self,
        model: &str,
        max_tokens: u32,
        body_len: usize,
        send: F,
    ) -> Result<Routed<ResponseStream>, NetworkError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<ResponseStream, ClientError>>,
    {
        if !self.inner.directory.is_fresh() {
            return Err(NetworkError::NoProvider {
                model: model.to_string(),
                reasons: vec![format!(
                    "the provider set has not been refreshed within {} s (chain API unreachable?)",
                    self.inner.directory.options().max_stale.as_secs()
                )],
            });
        }
        let set = self.providers();
        let (offers, mut reasons) = self.offers(&set, model, max_tokens, body_len);
        for (id, why) in &set.rejected {
            reasons.push(format!("{id}: {why}"));
        }
        let plain: Vec<Offer> = offers.iter().map(|(o, _)| o.clone()).collect();
        let order = {
            let r = lock(&self.inner.router);
            let mut rng = lock(&self.inner.rng);
            r.order(&plain, Instant::now(), &mut rng)
        };
        if order.is_empty() {
            if !offers.is_empty() {
                reasons.push("every candidate is held (429 or 402)".into());
            }
            return Err(NetworkError::NoProvider {
                model: model.to_string(),
                reasons,
            });
        }
        let max_attempts = lock(&self.inner.router).config().max_attempts.max(1);
        let mut failed: Vec<(ProviderId, ClientError)> = Vec::new();
        for id in order.into_iter().take(max_attempts) {
            let Some((_, p)) = offers.iter().find(|(o, _)| o.id == id) else {
                continue;
            };
            let started = Instant::now();
            // Each try seals the request anew to this provider's enclave.
            match send(p.client.clone()).await {
                Ok(mut stream) => {
                    stream.observe(Box::new(Recorder {
                        router: self.inner.router.clone(),
                        id: id.clone(),
                        started,
                        first: None,
                    }));
                    return Ok(Routed {
                        provider: id,
                        value: stream,
                        failed,
                    });
                }
                Err(e) => {
                    let now = Instant::now();
                    let decision = {
                        let mut r = lock(&self.inner.router);
                        let d = decide(&e, r.config());
                        match d {
                            Decision::NextFailure => r.failure(&id, now),
                            Decision::NextHold(d) => r.hold(&id, now + d),
                            Decision::Next | Decision::Stop => {}
                        }
                        d
                    };
                    tracing::info!(provider = %id, ?decision, "request not taken: {e}");
                    if decision == Decision::Stop {
                        return Err(NetworkError::Refused {
                            provider: id,
                            source: e,
                        });
                    }
                    failed.push((id, e));
                }
            }
        }
        Err(NetworkError::AllFailed { attempts: failed })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a routed answer's latency (to its first checked part) and
/// outcome in the router.
struct Recorder {
    router: Arc<Mutex<Router>>,
    id: ProviderId,
    started: Instant,
    first: Option<Duration>,
}

impl StreamObserver for Recorder {
    fn first_part(&mut self) {
        if self.first.is_none() {
            self.first = Some(self.started.elapsed());
        }
    }

    fn finished(&mut self, ok: bool) {
        let now = Instant::now();
        let mut r = lock(&self.router);
        if ok {
            r.success(
                &self.id,
                now,
                self.first.unwrap_or_else(|| self.started.elapsed()),
            );
        } else {
            r.failure(&self.id, now);
        }
    }
}
