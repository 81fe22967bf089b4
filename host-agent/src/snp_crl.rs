//! AMD SEV-SNP CRLs for the SNP bundles this host serves.
//!
//! Owns the HTTP side of revocation: for each SNP bundle an enclave hands
//! the host, the CRL AMD's key distribution service publishes for the
//! report's product and key family (`{base}/vcek/v1/{product}/crl`, AMD
//! #57230 §4) is fetched, cached under the rules of
//! [`cocoon_attestation::kds::CrlCache`] (never handed out at or past its
//! `nextUpdate`, refreshed ahead of it, a failed refresh keeps a CRL only
//! while it is still valid) and attached to the bundle before the host
//! verifies and serves it. It judges nothing: the verifier (the host's own
//! policy, and every client's) checks the CRL's signature, dates and
//! entries. Without a CRL the bundle is served as the enclave sent it, and
//! a policy with `revocation = "required"` refuses it by name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_attestation::bundle::{EvidenceBundle, PlatformEvidence};
use cocoon_attestation::kds::{crl_key, CrlCache, CrlFetcher, KdsConfig, KeyFamily};
use cocoon_attestation::snp::{Product, SnpReport};
use tracing::{debug, warn};

/// AMD's public key distribution service.
pub const AMD_KDS: &str = "https://kdsintf.amd.com";
/// Most bytes of a CRL accepted from the service (enforced while reading).
const MAX_CRL_BYTES: usize = 4 << 20;
/// One fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Refresh a CRL this long before its `nextUpdate`.
const REFRESH_MARGIN_SECS: u64 = 6 * 3600;

pub use crate::fetch::FetchError;

/// CRLs by (product, key family), fetched from a KDS base URL.
pub struct SnpCrls {
    kds: KdsConfig,
    http: reqwest::Client,
    cache: Arc<Mutex<CrlCache>>,
}

impl std::fmt::Debug for SnpCrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpCrls")
            .field("kds", &self.kds.base_url)
            .finish_non_exhaustive()
    }
}

/// A blocking fetch on the runtime `handle` (run from a blocking thread).
struct HttpFetcher {
    kds: KdsConfig,
    http: reqwest::Client,
    handle: tokio::runtime::Handle,
}

impl CrlFetcher for HttpFetcher {
    type Error = FetchError;

    fn fetch(&mut self, product: Product, family: KeyFamily) -> Result<Vec<u8>, FetchError> {
        let url = self.kds.crl_url(product, family);
        let got = self.handle.block_on(crate::fetch::get(
            &self.http,
            &url,
            MAX_CRL_BYTES,
            FETCH_TIMEOUT,
        ));
        got.map(|a| a.body)
    }
}

impl SnpCrls {
    /// Fetch from the service at `base_url` (AMD's: [`AMD_KDS`]).
    pub fn new(base_url: &str) -> SnpCrls {
        SnpCrls {
            kds: KdsConfig {
                base_url: base_url.to_string(),
            },
            http: reqwest::Client::new(),
            cache: Arc::new(Mutex::new(CrlCache::new(REFRESH_MARGIN_SECS))),
        }
    }

    /// `bundle` with the current CRL for its SNP report attached, when it
    /// is an SNP bundle without one and the CRL can be had; otherwise
    /// `bundle` unchanged (the verifier decides what that means).
    pub async fn attach(&self, bundle: Vec<u8>, now: u64) -> Vec<u8> {
        let Ok(mut decoded) = EvidenceBundle::from_cbor(&bundle) else {
            return bundle;
        };
        let key = match &decoded.platform {
            PlatformEvidence::Snp {
                report, crl: None, ..
            } => SnpReport::parse(report).ok().and_then(|r| crl_key(&r)),
            _ => None,
        };
        let Some((product, family)) = key else {
            return bundle;
        };
        let mut fetcher = HttpFetcher {
            kds: self.kds.clone(),
            http: self.http.clone(),
            handle: tokio::runtime::Handle::current(),
        };
        let cache = self.cache.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            c.get(&mut fetcher, product, family, now)
                .map(<[u8]>::to_vec)
                .map_err(|e| e.to_string())
        })
        .await;
        match got {
            Ok(Ok(crl)) => {
                debug!(
                    product = product.name(),
                    "AMD CRL attached to the SNP evidence"
                );
                decoded.attach_snp_crl(crl);
                decoded.to_cbor()
            }
            Ok(Err(e)) => {
                warn!(product = product.name(), error = %e, "no current AMD CRL for the SNP evidence; served without one");
                bundle
            }
            Err(_) => bundle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn vectors() -> PathBuf {
        let dir = std::env::var_os("COCOON_VECTORS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
            });
        assert!(
            dir.join("manifest.json").is_file(),
            "attestation vectors not found at {} (set COCOON_VECTORS)",
            dir.display()
        );
        dir
    }

    fn read(rel: &str) -> Vec<u8> {
        std::fs::read(vectors().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// A KDS on loopback serving `crl` for Genoa VCEKs, counting fetches.
    async fn kds(crl: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/vcek/v1/Genoa/crl",
            axum::routing::get(move || {
                let crl = crl.clone();
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    crl
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_current_crl_is_attached_to_snp_evidence_and_never_a_stale_one() {
        // A real Genoa report and VCEK; a real DER CRL (its signature is
        // the verifier's business, its nextUpdate the cache's).
        let snp = EvidenceBundle {
            platform: PlatformEvidence::Snp {
                report: read("snp/genoa-v5-oak/report.bin"),
                vek: read("snp/genoa-v5-oak/vcek.der"),
                chain: Vec::new(),
                crl: None,
            },
            claims_cbor: vec![0xa0],
            gpu: None,
        }
        .to_cbor();
        let crl = read("tdx/go-tdx-guest/pckcrl");
        let (url, hits) = kds(crl.clone()).await;
        let crls = SnpCrls::new(&url);
        let in_2020 = 1_600_000_000;
        for _ in 0..2 {
            let out = EvidenceBundle::from_cbor(&crls.attach(snp.clone(), in_2020).await).unwrap();
            match out.platform {
                PlatformEvidence::Snp { crl: Some(c), .. } => assert_eq!(c, crl),
                other => panic!("no CRL attached: {other:?}"),
            }
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "cached while current");
        // Past its nextUpdate: fetched again, still stale, not attached.
        let late = 4_000_000_000;
        assert_eq!(crls.attach(snp.clone(), late).await, snp);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Not SNP, or undecodable: unchanged, nothing fetched.
        assert_eq!(crls.attach(vec![1, 2, 3], in_2020).await, vec![1, 2, 3]);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // An unreachable service: served without a CRL.
        let down = SnpCrls::new("http://127.0.0.1:9");
        assert_eq!(down.attach(snp.clone(), in_2020).await, snp);
    }
}
