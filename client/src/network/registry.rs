//! Trust from the registry on chain: which providers exist, which
//! releases are active, and the policy each provider's enclaves must
//! verify under.
//!
//! [`RegistrySource`] is the [`TrustSource`] of `cocoon-client
//! --registry ADDR --chain-api URL`. Each refresh reads, through the
//! [`ChainClient`]:
//!
//! 1. with a pinned code hash, the registry's account state, and refuses
//!    the registry unless its code's representation hash is the pinned
//!    one (a different contract at that address could list anything);
//! 2. `get_releases`: the releases, of which only the active ones count;
//! 3. `get_providers`: the registered providers.
//!
//! Three get-method reads per refresh (four with a pinned code hash),
//! whatever the number of providers: nothing per provider is read from
//! the chain. Then, for each provider, [`RegistrySource::admit`] fetches
//! `GET /v1/release` from its host (the manifest of the release it says it
//! runs, as stored), decodes it strictly (canonical bytes only), and
//! requires its hash to be an **active** release in the registry and its
//! measurement digests to be exactly the ones the registry stores for that
//! hash. The policy is derived from that manifest and the client's
//! [`LocalRules`] (`cocoon_verifier::policy::derive`), and every enclave
//! that verifies must also have a measurement digest of that release (and
//! meet its TCB floor): [`DerivedPolicy::check`]. A release revoked on
//! chain is absent from the next refresh's active set, so its providers
//! are left out from then on; a deregistered provider is absent from
//! `get_providers`.
//!
//! The manifest comes from the provider, an untrusted source, but only its
//! hash is trusted, and that comes from the chain. What the client must
//! trust about the chain API itself is in chain/README.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cocoon_chain::ChainClient;
use cocoon_protocol::api::RELEASE_PATH;
use cocoon_protocol::registry::{self, ProviderEntry, Release, StackItem};
use cocoon_protocol::release::{ReleaseManifest, MAX_MANIFEST};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::Cell;
use cocoon_verifier::policy::derive::{from_releases, DerivedPolicy, LocalRules};
use futures_util::StreamExt;

use crate::network::directory::{Admission, Candidate, DirectoryError, TrustSource};
use crate::network::router::ProviderId;

/// The registry as the last refresh read it.
#[derive(Debug, Clone, Default)]
pub struct RegistryView {
    /// Active releases by manifest hash, with their measurement digests.
    pub active: HashMap<[u8; 32], Release>,
    /// Revoked releases' hashes.
    pub revoked: Vec<[u8; 32]>,
    /// Registered providers.
    pub providers: Vec<ProviderEntry>,
}

/// Providers and trust from the registry (module docs).
pub struct RegistrySource {
    chain: Arc<dyn ChainClient>,
    registry: ContractAddress,
    code_hash: Option<[u8; 32]>,
    rules: LocalRules,
    view: Mutex<Arc<RegistryView>>,
    /// Policies derived per release (manifests are immutable: a hash names
    /// one document).
    derived: Mutex<HashMap<[u8; 32], Arc<DerivedPolicy>>>,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySource")
            .field("registry", &self.registry)
            .field("code_hash", &self.code_hash.map(hex::encode))
            .finish_non_exhaustive()
    }
}

impl RegistrySource {
    /// The registry at `registry`, read through `chain`; its code must
    /// hash to `code_hash` when given. Enclaves are accepted under the
    /// active releases and `rules`.
    pub fn new(
        chain: Arc<dyn ChainClient>,
        registry: ContractAddress,
        code_hash: Option<[u8; 32]>,
        rules: LocalRules,
    ) -> RegistrySource {
        RegistrySource {
            chain,
            registry,
            code_hash,
            rules,
            view: Mutex::new(Arc::new(RegistryView::default())),
            derived: Mutex::new(HashMap::new()),
        }
    }

    /// The registry as the last refresh read it.
    pub fn view(&self) -> Arc<RegistryView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn get(&self, method: &str) -> Result<Vec<StackItem>, DirectoryError> {
        let stack = self
            .chain
            .run_get_method(&self.registry, method, &[])
            .await
            .map_err(|e| DirectoryError(format!("registry {}: {e}", self.registry)))?;
        cocoon_chain::registry_stack(method, &stack)
            .map_err(|e| DirectoryError(format!("registry {}: {e}", self.registry)))
    }

    /// Read the registry now (module docs, steps 1 to 3).
    pub async fn read(&self) -> Result<RegistryView, DirectoryError> {
        if let Some(pin) = self.code_hash {
            let state = self
                .chain
                .account_state(&self.registry)
                .await
                .map_err(|e| DirectoryError(format!("registry {}: {e}", self.registry)))?;
            let code = state.code.ok_or_else(|| {
                DirectoryError(format!(
                    "registry {} has no code ({:?})",
                    self.registry, state.status
                ))
            })?;
            let hash = Cell::from_boc(&code)
                .map_err(|e| DirectoryError(format!("registry code: {e}")))?
                .hash();
            if hash != pin {
                return Err(DirectoryError(format!(
                    "the contract at {} has code hash {}, not the pinned {}: not the registry this client trusts",
                    self.registry,
                    hex::encode(hash),
                    hex::encode(pin)
                )));
            }
        }
        let releases = registry::releases_from_stack(&self.get("get_releases").await?)
            .map_err(|e| DirectoryError(format!("get_releases: {e}")))?;
        let providers = registry::providers_from_stack(&self.get("get_providers").await?)
            .map_err(|e| DirectoryError(format!("get_providers: {e}")))?;
        let mut view = RegistryView {
            providers,
            ..RegistryView::default()
        };
        for r in releases {
            if r.is_active() {
                view.active.insert(r.manifest_hash, r);
            } else {
                view.revoked.push(r.manifest_hash);
            }
        }
        Ok(view)
    }

    fn derive(
        &self,
        hash: [u8; 32],
        manifest: &ReleaseManifest,
    ) -> Result<Arc<DerivedPolicy>, String> {
        if let Some(d) = self
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            return Ok(d.clone());
        }
        let reference = manifest.reference().map_err(|e| e.to_string())?;
        let d = Arc::new(from_releases(&[reference], &self.rules).map_err(|e| e.to_string())?);
        for n in d.notes() {
            tracing::info!(release = %manifest.release, "{n}");
        }
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, d.clone());
        Ok(d)
    }
}

#[async_trait::async_trait]
impl TrustSource for RegistrySource {
    async fn candidates(&self) -> Result<Vec<Candidate>, DirectoryError> {
        let view = Arc::new(self.read().await?);
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view.clone();
        // Releases no longer active cannot be used again: forget their
        // policies.
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h, _| view.active.contains_key(h));
        Ok(view
            .providers
            .iter()
            .map(|p| Candidate {
                id: ProviderId(p.owner.to_string()),
                endpoint: p.endpoint.clone(),
                payment: Some(p.payment),
            })
            .collect())
    }

    async fn admit(&self, c: &Candidate, http: &reqwest::Client) -> Result<Admission, String> {
        let url = format!("{}{RELEASE_PATH}", c.endpoint.trim_end_matches('/'));
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {RELEASE_PATH}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {RELEASE_PATH} answered {}", resp.status()));
        }
        let mut bytes = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("GET {RELEASE_PATH}: {e}"))?;
            if bytes.len() + chunk.len() > MAX_MANIFEST {
                return Err(format!(
                    "its release manifest is larger than {MAX_MANIFEST} bytes"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let manifest = ReleaseManifest::from_canonical(&bytes).map_err(|e| e.to_string())?;
        let hash = manifest.manifest_hash().map_err(|e| e.to_string())?;
        let view = self.view();
        let Some(release) = view.active.get(&hash) else {
            return Err(if view.revoked.contains(&hash) {
                format!(
                    "it runs release {} ({}), revoked in the registry",
                    manifest.release,
                    hex::encode(hash)
                )
            } else {
                format!(
                    "it runs release {} ({}), which the registry does not list",
                    manifest.release,
                    hex::encode(hash)
                )
            });
        };
        let mut listed = release.measurements.clone();
        let mut ours = manifest.measurement_digests();
        listed.sort();
        ours.sort();
        ours.dedup();
        if listed != ours {
            return Err(format!(
                "release {}: the manifest's measurement digests are not the ones the registry stores for it",
                hex::encode(hash)
            ));
        }
        let derived = self.derive(hash, &manifest)?;
        let check = derived.clone();
        Ok(Admission {
            policy: derived.policy().clone(),
            check: Some(Arc::new(move |e: &crate::AttestedEnclave| {
                check
                    .check(e.verified())
                    .map(|_| ())
                    .map_err(|r| r.to_string())
            })),
            release: Some(hash),
        })
    }
}
