//! AMD SEV-SNP VCEKs for the SNP bundles that arrive without one.
//!
//! Owns the HTTP side of the VCEK: when an enclave's SNP evidence carries
//! no VEK (its host served the guest no certificate table), the VCEK the
//! report names is fetched from AMD's key distribution service by the
//! report's product, hardware ID and reported TCB
//! ([`cocoon_attestation::kds::vcek_key`], [`KdsConfig::vcek_url`]; AMD
//! #57230 §3), cached by that key, and put into the bundle before the host
//! verifies and serves it. A VEK the enclave sent is never replaced, and a
//! VLEK (issued to a cloud provider, not served by hardware ID) is never
//! fetched. It judges nothing: the verifier checks the certificate's chain
//! to AMD's ARK and its hwID and TCB extensions against the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cocoon_attestation::bundle::{EvidenceBundle, PlatformEvidence};
use cocoon_attestation::kds::{vcek_key, KdsConfig, VcekKey};
use cocoon_attestation::snp::SnpReport;
use tracing::{debug, warn};

use crate::fetch::{self, Backoff, FetchError, FetchLimits};

/// Most bytes of a VCEK (DER, ~1.4 KiB).
const MAX_VCEK_BYTES: usize = 64 << 10;
/// Most VCEKs kept: one per (chip, TCB) this host's enclaves run on.
const MAX_CACHED: usize = 64;

struct State {
    certs: HashMap<VcekKey, Vec<u8>>,
    backoff: Backoff<VcekKey>,
}

/// VCEKs by (product, hardware ID, TCB), fetched from a KDS base URL.
pub struct SnpVceks {
    kds: KdsConfig,
    http: reqwest::Client,
    limits: FetchLimits,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SnpVceks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpVceks")
            .field("kds", &self.kds.base_url)
            .finish_non_exhaustive()
    }
}

impl SnpVceks {
    /// Fetch from the service at `base_url` (AMD's:
    /// [`crate::snp_crl::AMD_KDS`]).
    pub fn new(base_url: &str) -> SnpVceks {
        SnpVceks::with_limits(base_url, FetchLimits::default())
    }

    /// As [`SnpVceks::new`], with other timeouts and back-off.
    pub fn with_limits(base_url: &str, limits: FetchLimits) -> SnpVceks {
        SnpVceks {
            kds: KdsConfig {
                base_url: base_url.to_string(),
            },
            http: reqwest::Client::new(),
            limits,
            state: Arc::new(Mutex::new(State {
                certs: HashMap::new(),
                backoff: Backoff::new(&limits),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VCEK (DER) for `key`, from the cache or fetched at `now`
    /// (seconds since the epoch; it only times the back-off).
    pub async fn vcek(&self, key: &VcekKey, now: u64) -> Result<Vec<u8>, FetchError> {
        {
            let s = self.state();
            if let Some(der) = s.certs.get(key) {
                return Ok(der.clone());
            }
            s.backoff.check(key, now)?;
        }
        let url = self.kds.vcek_url(key);
        let got = fetch::get(&self.http, &url, MAX_VCEK_BYTES, self.limits.timeout)
            .await
            .and_then(|a| {
                // A DER certificate is a SEQUENCE; anything else (an error
                // page, PEM) is not what KDS serves here.
                if a.body.first() == Some(&0x30) {
                    Ok(a.body)
                } else {
                    Err(FetchError::Malformed {
                        url: url.clone(),
                        reason: format!("{} bytes that are not a DER certificate", a.body.len()),
                    })
                }
            });
        let mut s = self.state();
        match &got {
            Ok(der) => {
                s.backoff.succeeded(key);
                if s.certs.len() >= MAX_CACHED {
                    s.certs.clear();
                }
                s.certs.insert(key.clone(), der.clone());
            }
            Err(_) => {
                s.backoff.failed(key.clone(), now);
            }
        }
        got
    }

    /// `bundle` with the VCEK its SNP report names, when it is an SNP
    /// bundle without a VEK and the VCEK can be had; otherwise `bundle`
    /// unchanged (the verifier refuses a report without its VEK by name).
    pub async fn attach(&self, bundle: Vec<u8>, now: u64) -> Vec<u8> {
        let Ok(mut decoded) = EvidenceBundle::from_cbor(&bundle) else {
            return bundle;
        };
        let key = match &decoded.platform {
            PlatformEvidence::Snp { report, vek, .. } if vek.is_empty() => {
                SnpReport::parse(report).ok().and_then(|r| vcek_key(&r))
            }
            _ => None,
        };
        let Some(key) = key else {
            return bundle;
        };
        match self.vcek(&key, now).await {
            Ok(der) => {
                debug!(
                    product = key.product.name(),
                    "AMD VCEK attached to the SNP evidence"
                );
                decoded.attach_snp_vek(der);
                decoded.to_cbor()
            }
            Err(e) => {
                warn!(product = key.product.name(), error = %e, "no VCEK for the SNP evidence; served without one");
                bundle
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_server::{Canned, Server};
    use cocoon_tests::read_vector;
    use std::time::Duration;

    fn quick() -> FetchLimits {
        FetchLimits {
            timeout: Duration::from_millis(500),
            backoff_min_secs: 60,
            backoff_max_secs: 600,
        }
    }

    fn snp_bundle(report: Vec<u8>, vek: Vec<u8>) -> Vec<u8> {
        EvidenceBundle {
            platform: PlatformEvidence::Snp {
                report,
                vek,
                chain: Vec::new(),
                crl: None,
            },
            claims_cbor: vec![0xa0],
            gpu: None,
        }
        .to_cbor()
    }

    /// The Genoa report's hwID (its CHIP_ID) and reported TCB, as the
    /// manifest records them from the VCEK's extensions.
    const GENOA_HWID: &str = "d2421d976f95ce0ba849b7cc5c789122f1e59c77a037272c137ae4d188bb102adbc7c53d0302bff82a432c94a305dec7a7a270ceb19a10f04a83316c6486968d";

    #[tokio::test]
    async fn the_vcek_is_fetched_by_product_hwid_and_tcb_and_attached() {
        let report = read_vector("snp/genoa-v5-oak/report.bin");
        let vcek = read_vector("snp/genoa-v5-oak/vcek.der");
        let path = format!("/vcek/v1/Genoa/{GENOA_HWID}");
        let server = Server::default();
        server.set(&path, Canned::ok(vcek.clone()));
        let base = server.start().await;
        let vceks = SnpVceks::with_limits(&base, quick());
        let now = 1_759_305_600;

        let out = vceks
            .attach(snp_bundle(report.clone(), Vec::new()), now)
            .await;
        assert_eq!(out, snp_bundle(report.clone(), vcek.clone()));
        // blSPL=10 teeSPL=0 snpSPL=25 ucodeSPL=84: the VCEK's own TCB extensions.
        assert_eq!(
            server.asked(),
            vec![format!("{path}?blSPL=10&teeSPL=00&snpSPL=25&ucodeSPL=84")]
        );
        // Cached by (product, hwID, TCB): not asked again.
        assert_eq!(
            vceks
                .attach(snp_bundle(report.clone(), Vec::new()), now)
                .await,
            out
        );
        assert_eq!(server.asked().len(), 1);
        // A VEK the enclave sent is kept; nothing is fetched for it.
        let sent = snp_bundle(report.clone(), vec![0x30, 0]);
        assert_eq!(vceks.attach(sent.clone(), now).await, sent);
        assert_eq!(server.asked().len(), 1);

        // The same chip at another TCB is another VCEK.
        let mut newer = report.clone();
        newer[0x186] = 26; // REPORTED_TCB.snp (Genoa layout: byte 6)
        let other = vceks
            .attach(snp_bundle(newer.clone(), Vec::new()), now)
            .await;
        assert_eq!(other, snp_bundle(newer, vcek.clone()));
        assert!(server.asked()[1].ends_with("snpSPL=26&ucodeSPL=84"));

        // The verifier accepts the report with the VCEK the host attached.
        let EvidenceBundle { platform, .. } = EvidenceBundle::from_cbor(&out).unwrap();
        let PlatformEvidence::Snp {
            report,
            vek,
            chain,
            crl,
        } = platform
        else {
            panic!("not SNP")
        };
        let measurement = *SnpReport::parse(&report).unwrap().measurement();
        let verified = cocoon_verifier::SnpVerifier::new().verify(
            &report,
            cocoon_verifier::snp::SnpCertificates {
                vek: &vek,
                chain: &chain,
                crl: crl.as_deref(),
            },
            &{
                let mut p = cocoon_verifier::SnpPolicy::pinned_to_measurements(vec![measurement]);
                p.revocation = cocoon_verifier::Check::Skip;
                p
            },
            cocoon_verifier::UnixTime(now),
        );
        assert!(verified.is_ok(), "{:?}", verified.err());
    }

    #[tokio::test]
    async fn failures_back_off_and_nothing_is_attached() {
        let report = read_vector("snp/genoa-v5-oak/report.bin");
        let path = format!("/vcek/v1/Genoa/{GENOA_HWID}");
        let server = Server::default();
        let base = server.start().await;
        let vceks = SnpVceks::with_limits(&base, quick());
        let bundle = snp_bundle(report.clone(), Vec::new());
        let now = 1_759_305_600;
        // 404: unavailable, served without a VEK, then backing off.
        assert_eq!(vceks.attach(bundle.clone(), now).await, bundle);
        assert_eq!(server.asked().len(), 1);
        assert_eq!(vceks.attach(bundle.clone(), now + 59).await, bundle);
        assert_eq!(server.asked().len(), 1, "backing off");
        let key = vcek_key(&SnpReport::parse(&report).unwrap()).unwrap();
        assert_eq!(
            vceks.vcek(&key, now + 59).await,
            Err(FetchError::BackingOff { until: now + 60 })
        );
        // An error page with a 200, and an oversized body.
        server.set(&path, Canned::ok(b"<html>".to_vec()));
        assert!(matches!(
            vceks.vcek(&key, now + 60).await,
            Err(FetchError::Malformed { .. })
        ));
        server.set(&path, Canned::ok(vec![0x30; MAX_VCEK_BYTES + 1]));
        let later = now + 10_000;
        assert!(matches!(
            vceks.vcek(&key, later).await,
            Err(FetchError::TooLarge { .. })
        ));
        // A report without CPUID (version 2) names no product: nothing asked.
        let v2 = read_vector("snp/milan-v2-gsg/attestation.bin");
        let b2 = snp_bundle(v2, Vec::new());
        let asked = server.asked().len();
        assert_eq!(vceks.attach(b2.clone(), later).await, b2);
        assert_eq!(server.asked().len(), asked);
    }
}
