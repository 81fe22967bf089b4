//! Intel DCAP collateral for the TDX bundles this host serves.
//!
//! Owns the HTTP side of TDX collateral: for each TDX bundle an enclave
//! hands the host, the collateral its quote needs (selected by the PCK
//! certificate's FMSPC and issuing CA, [`cocoon_verifier::tdx::collateral_key`])
//! is fetched from Intel's Provisioning Certification Service, v4, or a
//! provider's caching service (PCCS) with the same API, kept under the
//! rules of [`cocoon_attestation::pcs::CollateralCache`] (never handed out
//! past the earliest `nextUpdate` of its parts, refreshed ahead of it, a
//! still-valid item kept when a refresh fails), and put into the bundle
//! when the enclave's own collateral is incomplete or expires sooner. It
//! judges nothing: Intel signs the collateral, and the verifier (the host's
//! own policy, and every client's) checks it against the quote.
//!
//! What is asked for (*Intel SGX and Intel TDX PCS API*, v4):
//!
//! * TDX TCB info: `GET {base}/tdx/certification/v4/tcb?fmspc={hex}`, JSON
//!   `{"tcbInfo": {...}, "signature": "hex"}`, its issuer chain (TCB
//!   Signing, Root CA) URL-encoded PEM in the `TCB-Info-Issuer-Chain` header.
//! * TD QE identity: `GET {base}/tdx/certification/v4/qe/identity`, JSON
//!   `{"enclaveIdentity": {...}, "signature": "hex"}`, chain in
//!   `SGX-Enclave-Identity-Issuer-Chain`.
//! * PCK CRL: `GET {base}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der`,
//!   DER, chain in `SGX-PCK-CRL-Issuer-Chain`.
//! * Intel SGX Root CA CRL: DER from Intel's certificate site for Intel's
//!   PCS, `GET {base}/sgx/certification/v4/rootcacrl` for any other base
//!   (a PCCS; older ones answer hex text, which is accepted too).
//!
//! Every answer is bounded in size and time; a failed fetch backs off
//! ([`crate::fetch`]), and so does collateral the cache refuses
//! (expired, incomplete), so a broken service is not asked on every
//! evidence refresh.

use std::sync::{Arc, Mutex};

use cocoon_attestation::bundle::{EvidenceBundle, PlatformEvidence};
use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::pcs::{
    valid_until, CacheError, CollateralCache, CollateralFetcher, PckCa, PcsConfig,
};
use tracing::{debug, warn};

use crate::fetch::{self, Backoff, FetchError, FetchLimits};

/// Intel's public Provisioning Certification Service.
pub const INTEL_PCS: &str = "https://api.trustedservices.intel.com";
/// Where Intel publishes the Intel SGX Root CA CRL (DER).
pub const INTEL_ROOT_CA_CRL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";
/// Most bytes of a TCB info or QE identity answer (real ones are ~10 KiB).
const MAX_JSON_BYTES: usize = 1 << 20;
/// Most bytes of a CRL answer.
const MAX_CRL_BYTES: usize = 4 << 20;
/// Refresh collateral this long before its earliest `nextUpdate`.
const REFRESH_MARGIN_SECS: u64 = 12 * 3600;

/// Response header carrying the TCB info's issuer chain (v4).
pub const TCB_INFO_ISSUER_CHAIN: &str = "TCB-Info-Issuer-Chain";
/// Response header carrying the QE identity's issuer chain.
pub const QE_IDENTITY_ISSUER_CHAIN: &str = "SGX-Enclave-Identity-Issuer-Chain";
/// Response header carrying the PCK CRL's issuer chain.
pub const PCK_CRL_ISSUER_CHAIN: &str = "SGX-PCK-CRL-Issuer-Chain";

/// The service URLs for a PCS or PCCS at `base_url`: Intel's own Root CA
/// CRL location for Intel's PCS, the PCCS route for anything else.
pub fn pcs_config(base_url: &str) -> PcsConfig {
    let base = base_url.trim_end_matches('/');
    let root_ca_crl_url = if base == INTEL_PCS {
        INTEL_ROOT_CA_CRL.to_string()
    } else {
        format!("{base}/sgx/certification/v4/rootcacrl")
    };
    PcsConfig {
        base_url: base.to_string(),
        root_ca_crl_url,
    }
}

/// Cache and back-off, behind one lock (a fetch holds it, so two enclaves
/// on the same platform never fetch the same collateral twice at once).
struct State {
    cache: CollateralCache,
    backoff: Backoff<([u8; 6], PckCa)>,
}

/// TDX collateral by (FMSPC, PCK CA), fetched from a PCS or PCCS.
pub struct TdxCollaterals {
    pcs: PcsConfig,
    http: reqwest::Client,
    limits: FetchLimits,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for TdxCollaterals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdxCollaterals")
            .field("pcs", &self.pcs.base_url)
            .finish_non_exhaustive()
    }
}

/// One blocking fetch on the runtime `handle` (run from a blocking thread),
/// refused without asking while the key backs off.
struct HttpPcs<'a> {
    pcs: &'a PcsConfig,
    http: &'a reqwest::Client,
    limits: FetchLimits,
    handle: &'a tokio::runtime::Handle,
    backoff: &'a mut Backoff<([u8; 6], PckCa)>,
    now: u64,
}

impl CollateralFetcher for HttpPcs<'_> {
    type Error = FetchError;

    fn fetch(&mut self, fmspc: &[u8; 6], ca: PckCa) -> Result<TdxCollateral, FetchError> {
        let key = (*fmspc, ca);
        self.backoff.check(&key, self.now)?;
        let got = self.handle.block_on(fetch_collateral(
            self.http,
            self.pcs,
            self.limits,
            fmspc,
            ca,
        ));
        match &got {
            Ok(_) => self.backoff.succeeded(&key),
            Err(_) => {
                self.backoff.failed(key, self.now);
            }
        }
        got
    }
}

/// The four answers, fetched together, assembled into collateral.
async fn fetch_collateral(
    http: &reqwest::Client,
    pcs: &PcsConfig,
    limits: FetchLimits,
    fmspc: &[u8; 6],
    ca: PckCa,
) -> Result<TdxCollateral, FetchError> {
    let t = limits.timeout;
    let tcb_url = pcs.tcb_info_url(fmspc);
    let qe_url = pcs.qe_identity_url();
    let pck_url = pcs.pck_crl_url(ca);
    let root_url = &pcs.root_ca_crl_url;
    let (tcb, qe, pck, root) = tokio::try_join!(
        fetch::get(http, &tcb_url, MAX_JSON_BYTES, t),
        fetch::get(http, &qe_url, MAX_JSON_BYTES, t),
        fetch::get(http, &pck_url, MAX_CRL_BYTES, t),
        fetch::get(http, root_url, MAX_CRL_BYTES, t),
    )?;
    let tcb_chain = fetch::percent_decoded_header(&tcb.headers, TCB_INFO_ISSUER_CHAIN, &tcb_url)?;
    let qe_chain = fetch::percent_decoded_header(&qe.headers, QE_IDENTITY_ISSUER_CHAIN, &qe_url)?;
    let pck_chain = fetch::percent_decoded_header(&pck.headers, PCK_CRL_ISSUER_CHAIN, &pck_url)?;
    let pck_crl = crl_der(pck.body, &pck_url)?;
    let root_crl = crl_der(root.body, root_url)?;
    TdxCollateral::from_pcs_responses(
        &tcb.body,
        &tcb_chain,
        &qe.body,
        &qe_chain,
        Some(pck_crl),
        &pck_chain,
        Some(root_crl),
    )
    .map_err(|e| FetchError::Malformed {
        url: format!("{tcb_url} and {qe_url}"),
        reason: e.to_string(),
    })
}

/// A CRL answer as DER: DER as it came (a SEQUENCE), or hex text of it
/// (what some PCCS versions answer for the Root CA CRL).
fn crl_der(body: Vec<u8>, url: &str) -> Result<Vec<u8>, FetchError> {
    if body.first() == Some(&0x30) {
        return Ok(body);
    }
    let text = body.trim_ascii();
    match hex::decode(text) {
        Ok(der) if der.first() == Some(&0x30) => Ok(der),
        _ => Err(FetchError::Malformed {
            url: url.to_string(),
            reason: format!(
                "{} bytes that are neither a DER CRL nor hex of one",
                body.len()
            ),
        }),
    }
}

impl TdxCollaterals {
    /// Fetch from the PCS or PCCS at `base_url` (Intel's: [`INTEL_PCS`]).
    pub fn new(base_url: &str) -> TdxCollaterals {
        TdxCollaterals::with_limits(base_url, FetchLimits::default())
    }

    /// As [`TdxCollaterals::new`], with other timeouts and back-off.
    pub fn with_limits(base_url: &str, limits: FetchLimits) -> TdxCollaterals {
        TdxCollaterals {
            pcs: pcs_config(base_url),
            http: reqwest::Client::new(),
            limits,
            state: Arc::new(Mutex::new(State {
                cache: CollateralCache::new(REFRESH_MARGIN_SECS),
                backoff: Backoff::new(&limits),
            })),
        }
    }

    /// Collateral for `fmspc` and `ca` valid at `now` (seconds since the
    /// epoch), from the cache or fetched.
    pub async fn collateral(
        &self,
        fmspc: [u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<TdxCollateral, CacheError<FetchError>> {
        let pcs = self.pcs.clone();
        let http = self.http.clone();
        let limits = self.limits;
        let state = self.state.clone();
        let handle = tokio::runtime::Handle::current();
        let joined = tokio::task::spawn_blocking(move || {
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            let State { cache, backoff } = &mut *guard;
            let mut fetcher = HttpPcs {
                pcs: &pcs,
                http: &http,
                limits,
                handle: &handle,
                backoff,
                now,
            };
            let got = cache.get(&mut fetcher, fmspc, ca, now).cloned();
            // Collateral the service handed out but the cache refused
            // (already expired, incomplete) backs off like a failed fetch.
            let key = (fmspc, ca);
            let refused = matches!(
                got,
                Err(CacheError::Expired { .. } | CacheError::Incomplete)
            );
            // So does a refresh that brought nothing newer: inside the
            // refresh margin the cache would otherwise ask on every call.
            let stale_soon = got.as_ref().is_ok_and(|c| {
                valid_until(c).is_some_and(|u| now.saturating_add(REFRESH_MARGIN_SECS) >= u)
            });
            if refused || (stale_soon && guard.backoff.check(&key, now).is_ok()) {
                guard.backoff.failed(key, now);
            }
            got
        })
        .await;
        joined.unwrap_or_else(|e| {
            Err(CacheError::Fetch(FetchError::Unavailable {
                url: self.pcs.base_url.clone(),
                reason: format!("the fetch task failed: {e}"),
            }))
        })
    }

    /// `bundle` with current collateral in its TDX collateral slot, when it
    /// is a TDX bundle whose own collateral is incomplete or expires sooner
    /// and current collateral can be had; otherwise `bundle` unchanged (the
    /// verifier decides what that means).
    pub async fn attach(&self, bundle: Vec<u8>, now: u64) -> Vec<u8> {
        let Ok(mut decoded) = EvidenceBundle::from_cbor(&bundle) else {
            return bundle;
        };
        let PlatformEvidence::Tdx { quote, collateral } = &decoded.platform else {
            return bundle;
        };
        let (fmspc, ca) = match cocoon_verifier::tdx::collateral_key(quote) {
            Ok(k) => k,
            Err(e) => {
                debug!(error = %e, "no collateral key in the TDX quote; served as sent");
                return bundle;
            }
        };
        let theirs = valid_until(collateral);
        match self.collateral(fmspc, ca, now).await {
            Ok(ours) => {
                let newer = match (theirs, valid_until(&ours)) {
                    (None, _) => true,
                    (Some(t), Some(o)) => o > t,
                    (Some(_), None) => false,
                };
                if newer {
                    debug!(
                        fmspc = hex::encode(fmspc),
                        "Intel collateral attached to the TDX evidence"
                    );
                    decoded.attach_tdx_collateral(ours);
                    return decoded.to_cbor();
                }
                bundle
            }
            Err(e) => {
                warn!(fmspc = hex::encode(fmspc), error = %e, "no current Intel collateral for the TDX evidence; served with the enclave's own");
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
    use cocoon_verifier::policy::TdxPolicy;
    use cocoon_verifier::UnixTime;
    use std::time::Duration;

    /// URL-encode a PEM chain the way the PCS sends it in a header.
    fn url_encoded(pem: &str) -> String {
        let mut s = String::new();
        for b in pem.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                s.push(char::from(b));
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
        s
    }

    /// What a PCS answers for `c`: the signed members wrapped as the PCS
    /// wraps them (byte for byte what was signed), DER CRLs, and the issuer
    /// chains URL-encoded in their headers. (`dcap-qvl`'s recorded
    /// collateral keeps exactly these parts of real PCS answers.)
    fn serve_collateral(server: &Server, c: &TdxCollateral) {
        let wrap = |name: &str, member: &str, sig: &[u8]| {
            format!(
                r#"{{"{name}":{member},"signature":"{}"}}"#,
                hex::encode(sig)
            )
            .into_bytes()
        };
        server.set(
            "/tdx/certification/v4/tcb",
            Canned::ok(wrap("tcbInfo", &c.tcb_info, &c.tcb_info_signature)).header(
                TCB_INFO_ISSUER_CHAIN,
                &url_encoded(&c.tcb_info_issuer_chain),
            ),
        );
        server.set(
            "/tdx/certification/v4/qe/identity",
            Canned::ok(wrap(
                "enclaveIdentity",
                &c.qe_identity,
                &c.qe_identity_signature,
            ))
            .header(
                QE_IDENTITY_ISSUER_CHAIN,
                &url_encoded(&c.qe_identity_issuer_chain),
            ),
        );
        server.set(
            "/sgx/certification/v4/pckcrl",
            Canned::ok(c.pck_crl.clone().unwrap())
                .header(PCK_CRL_ISSUER_CHAIN, &url_encoded(&c.pck_crl_issuer_chain)),
        );
        server.set(
            "/sgx/certification/v4/rootcacrl",
            Canned::ok(c.root_ca_crl.clone().unwrap()),
        );
    }

    /// The recorded answers of Intel's PCS that go-tdx-guest keeps (TCB
    /// info for FMSPC 50806f000000, TD QE identity, Platform CA CRL, Root
    /// CA CRL, the two issuer chains), served verbatim.
    fn serve_go_tdx_guest(server: &Server) {
        let text = |p: &str| String::from_utf8(read_vector(p)).unwrap();
        let tcb_chain = url_encoded(&text("tdx/go-tdx-guest/tcb_info_issuer_chain.pem"));
        let pck_chain = url_encoded(&text("tdx/go-tdx-guest/pck_crl_issuer_chain.pem"));
        server.set(
            "/tdx/certification/v4/tcb",
            Canned::ok(read_vector("tdx/go-tdx-guest/sample_tcbInfo_response"))
                .header(TCB_INFO_ISSUER_CHAIN, &tcb_chain),
        );
        server.set(
            "/tdx/certification/v4/qe/identity",
            Canned::ok(read_vector("tdx/go-tdx-guest/sample_qeIdentity_response"))
                .header(QE_IDENTITY_ISSUER_CHAIN, &tcb_chain),
        );
        server.set(
            "/sgx/certification/v4/pckcrl",
            Canned::ok(read_vector("tdx/go-tdx-guest/pckcrl"))
                .header(PCK_CRL_ISSUER_CHAIN, &pck_chain),
        );
        server.set(
            "/sgx/certification/v4/rootcacrl",
            Canned::ok(read_vector("tdx/go-tdx-guest/rootcrl.der")),
        );
    }

    fn quick() -> FetchLimits {
        FetchLimits {
            timeout: Duration::from_millis(500),
            backoff_min_secs: 60,
            backoff_max_secs: 600,
        }
    }

    fn tdx_bundle(quote: Vec<u8>, collateral: TdxCollateral) -> Vec<u8> {
        EvidenceBundle {
            platform: PlatformEvidence::Tdx { quote, collateral },
            claims_cbor: vec![0xa0],
            gpu: None,
        }
        .to_cbor()
    }

    fn collateral_of(bundle: &[u8]) -> TdxCollateral {
        match EvidenceBundle::from_cbor(bundle).unwrap().platform {
            PlatformEvidence::Tdx { collateral, .. } => collateral,
            other => panic!("not TDX: {other:?}"),
        }
    }

    /// Empty collateral: what an enclave without a collateral file sends.
    fn none() -> TdxCollateral {
        TdxCollateral {
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: None,
            pck_crl: None,
            tcb_info_issuer_chain: String::new(),
            tcb_info: String::new(),
            tcb_info_signature: vec![],
            qe_identity_issuer_chain: String::new(),
            qe_identity: String::new(),
            qe_identity_signature: vec![],
        }
    }

    #[test]
    fn urls_for_intel_and_for_a_pccs() {
        let intel = pcs_config(INTEL_PCS);
        assert_eq!(intel.root_ca_crl_url, INTEL_ROOT_CA_CRL);
        let pccs = pcs_config("https://pccs.example:8081/");
        assert_eq!(pccs.base_url, "https://pccs.example:8081");
        assert_eq!(
            pccs.root_ca_crl_url,
            "https://pccs.example:8081/sgx/certification/v4/rootcacrl"
        );
        assert!(crl_der(b"3003020105\n".to_vec(), "u").is_ok(), "hex text");
        assert!(matches!(
            crl_der(b"<html>".to_vec(), "u"),
            Err(FetchError::Malformed { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetched_collateral_verifies_the_matching_quote() {
        // dcap-qvl's recorded collateral for its TDX quote, served as PCS
        // answers; the quote's PCK certificate names FMSPC b0c06f000000.
        let recorded =
            TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/tdx_quote_collateral.json"))
                .unwrap();
        let quote = read_vector("tdx/dcap-qvl/tdx_quote");
        let server = Server::default();
        serve_collateral(&server, &recorded);
        let base = server.start().await;
        let pcs = TdxCollaterals::with_limits(&base, quick());
        // The manifest's verification time, inside every part's validity.
        let at = 1_752_919_234;
        let (fmspc, ca) = cocoon_verifier::tdx::collateral_key(&quote).unwrap();
        assert_eq!(fmspc, [0xb0, 0xc0, 0x6f, 0, 0, 0]);
        let got = pcs.collateral(fmspc, ca, at).await.unwrap();
        assert_eq!(got, recorded, "the signed members are kept byte for byte");
        let mut asked = server.asked();
        asked.sort();
        let ca_name = match ca {
            PckCa::Platform => "platform",
            PckCa::Processor => "processor",
        };
        assert_eq!(
            asked,
            vec![
                format!("/sgx/certification/v4/pckcrl?ca={ca_name}&encoding=der"),
                "/sgx/certification/v4/rootcacrl".to_string(),
                "/tdx/certification/v4/qe/identity".to_string(),
                "/tdx/certification/v4/tcb?fmspc=b0c06f000000".to_string(),
            ]
        );

        // Attached to a bundle that came without collateral, it verifies.
        let out = pcs.attach(tdx_bundle(quote.clone(), none()), at).await;
        let attached = collateral_of(&out);
        assert_eq!(attached, recorded);
        let mrtd = *cocoon_attestation::tdx::Quote::parse_prefix(&quote)
            .unwrap()
            .0
            .td_report()
            .unwrap()
            .mrtd();
        let verified = cocoon_verifier::tdx::verify_tdx(
            &quote,
            &attached,
            &TdxPolicy::pinned_to_mrtd(vec![mrtd]),
            UnixTime(at),
        );
        assert!(verified.is_ok(), "{:?}", verified.err());
        // Served from the cache: nothing asked again (it expires within the
        // refresh margin, so the service, which had nothing newer, is
        // asked again only after the back-off).
        assert_eq!(server.asked().len(), 4);

        // The enclave's own collateral is kept when it is as fresh.
        let same = tdx_bundle(quote.clone(), recorded.clone());
        assert_eq!(pcs.attach(same.clone(), at).await, same);
        // Not TDX, or not a bundle: unchanged, nothing fetched.
        assert_eq!(pcs.attach(vec![1, 2, 3], at).await, vec![1, 2, 3]);
        assert_eq!(server.asked().len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recorded_pcs_answers_are_read_and_expired_collateral_is_never_handed_out() {
        let server = Server::default();
        serve_go_tdx_guest(&server);
        let base = server.start().await;
        let pcs = TdxCollaterals::with_limits(&base, quick());
        let fmspc = [0x50, 0x80, 0x6f, 0, 0, 0];
        // go-tdx-guest's test time: every part is current.
        let july_2023 = 1_688_173_200;
        let got = pcs
            .collateral(fmspc, PckCa::Platform, july_2023)
            .await
            .unwrap();
        let text = |p: &str| String::from_utf8(read_vector(p)).unwrap();
        assert_eq!(
            got.tcb_info_issuer_chain,
            text("tdx/go-tdx-guest/tcb_info_issuer_chain.pem")
        );
        assert_eq!(
            got.pck_crl_issuer_chain,
            text("tdx/go-tdx-guest/pck_crl_issuer_chain.pem")
        );
        assert_eq!(got.pck_crl, Some(read_vector("tdx/go-tdx-guest/pckcrl")));
        assert!(got.tcb_info.contains(r#""fmspc":"50806f000000""#));
        // The QE identity's nextUpdate (2023-07-08T07:24:59Z) is the earliest.
        assert_eq!(valid_until(&got), Some(1_688_801_099));

        // A fresh host asked after that: the service hands out the same,
        // now expired, collateral; it is refused, never handed out, and
        // the service is not asked again until the back-off has passed.
        let late = 1_688_801_099;
        let fresh = TdxCollaterals::with_limits(&base, quick());
        let before = server.asked().len();
        assert!(matches!(
            fresh.collateral(fmspc, PckCa::Platform, late).await,
            Err(CacheError::Expired {
                until: 1_688_801_099
            })
        ));
        assert_eq!(server.asked().len(), before + 4);
        assert!(matches!(
            fresh.collateral(fmspc, PckCa::Platform, late + 1).await,
            Err(CacheError::Fetch(FetchError::BackingOff { until })) if until == late + 60
        ));
        assert_eq!(server.asked().len(), before + 4, "backing off");
        // The host that cached it stops handing it out at its expiry too.
        assert!(pcs.collateral(fmspc, PckCa::Platform, late).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unusable_answers_are_refused_by_name() {
        let server = Server::default();
        serve_go_tdx_guest(&server);
        let base = server.start().await;
        let fmspc = [0x50, 0x80, 0x6f, 0, 0, 0];
        let at = 1_688_173_200;
        let try_once = || async {
            TdxCollaterals::with_limits(&base, quick())
                .collateral(fmspc, PckCa::Platform, at)
                .await
        };
        let tcb = read_vector("tdx/go-tdx-guest/sample_tcbInfo_response");
        let chain = url_encoded(
            &String::from_utf8(read_vector("tdx/go-tdx-guest/tcb_info_issuer_chain.pem")).unwrap(),
        );
        let tcb_path = "/tdx/certification/v4/tcb";

        // Malformed: cut JSON, and a body without the signed member.
        server.set(
            tcb_path,
            Canned::ok(tcb[..tcb.len() / 2].to_vec()).header(TCB_INFO_ISSUER_CHAIN, &chain),
        );
        let e = try_once().await.unwrap_err();
        assert!(
            matches!(e, CacheError::Fetch(FetchError::Malformed { .. })),
            "{e}"
        );
        server.set(
            tcb_path,
            Canned::ok(br#"{"signature":"00"}"#.to_vec()).header(TCB_INFO_ISSUER_CHAIN, &chain),
        );
        let e = try_once().await.unwrap_err();
        assert!(e.to_string().contains("no tcbInfo member"), "{e}");
        // The issuer chain header missing.
        server.set(tcb_path, Canned::ok(tcb.clone()));
        let e = try_once().await.unwrap_err();
        assert!(
            e.to_string().contains("no TCB-Info-Issuer-Chain header"),
            "{e}"
        );
        // A PCK CRL that is an HTML error page with a 200.
        let pck_chain = url_encoded(
            &String::from_utf8(read_vector("tdx/go-tdx-guest/pck_crl_issuer_chain.pem")).unwrap(),
        );
        server.set(
            "/sgx/certification/v4/pckcrl",
            Canned::ok(b"<html>maintenance</html>".to_vec())
                .header(PCK_CRL_ISSUER_CHAIN, &pck_chain),
        );
        server.set(
            tcb_path,
            Canned::ok(tcb.clone()).header(TCB_INFO_ISSUER_CHAIN, &chain),
        );
        let e = try_once().await.unwrap_err();
        assert!(e.to_string().contains("neither a DER CRL"), "{e}");
        serve_go_tdx_guest(&server);

        // Over the size limit (announced in Content-Length).
        let mut huge = Canned::ok(vec![b' '; MAX_JSON_BYTES + 1]);
        huge = huge.header(TCB_INFO_ISSUER_CHAIN, &chain);
        server.set(tcb_path, huge);
        let e = try_once().await.unwrap_err();
        assert!(
            matches!(e, CacheError::Fetch(FetchError::TooLarge { limit, .. }) if limit == MAX_JSON_BYTES),
            "{e}"
        );

        // 404, 500 and a timeout are "unavailable".
        for status in [404, 500] {
            let mut c = Canned::ok(b"{}".to_vec());
            c.status = status;
            server.set(tcb_path, c);
            let e = try_once().await.unwrap_err();
            assert!(
                matches!(&e, CacheError::Fetch(FetchError::Unavailable { reason, .. }) if reason.contains(&status.to_string())),
                "{e}"
            );
        }
        let mut slow = Canned::ok(tcb.clone()).header(TCB_INFO_ISSUER_CHAIN, &chain);
        slow.delay = Duration::from_secs(3);
        server.set(tcb_path, slow);
        let started = std::time::Instant::now();
        let e = try_once().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "timed out in time"
        );
        assert!(e.to_string().contains("no complete answer within"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_refresh_keeps_valid_collateral_and_backs_off() {
        let server = Server::default();
        serve_go_tdx_guest(&server);
        let base = server.start().await;
        let pcs = TdxCollaterals::with_limits(&base, quick());
        let fmspc = [0x50, 0x80, 0x6f, 0, 0, 0];
        let until = 1_688_801_099;
        let early = until - 5 * 86_400;
        let first = pcs.collateral(fmspc, PckCa::Platform, early).await.unwrap();
        assert_eq!(server.asked().len(), 4);

        // The service goes down. Inside the refresh margin the cache asks,
        // fails, and keeps handing out the still-valid collateral.
        let mut down = Canned::ok(Vec::new());
        down.status = 500;
        server.set("/tdx/certification/v4/qe/identity", down);
        let margin = until - 3600;
        let kept = pcs
            .collateral(fmspc, PckCa::Platform, margin)
            .await
            .unwrap();
        assert_eq!(kept, first);
        let asked = server.asked().len();
        assert!(asked > 4, "a refresh was tried");
        // Backing off: still served, the service is not asked.
        let kept = pcs
            .collateral(fmspc, PckCa::Platform, margin + 30)
            .await
            .unwrap();
        assert_eq!(kept, first);
        assert_eq!(server.asked().len(), asked);
        // After the back-off it asks again (and fails again: doubled wait).
        assert!(pcs
            .collateral(fmspc, PckCa::Platform, margin + 60)
            .await
            .is_ok());
        assert!(server.asked().len() > asked);
        // At expiry nothing is handed out, whatever happened before.
        assert!(pcs.collateral(fmspc, PckCa::Platform, until).await.is_err());
        // The service is back: the next try after the back-off succeeds
        // (and serves what it serves, which is as expired: refused).
        serve_go_tdx_guest(&server);
        assert!(matches!(
            pcs.collateral(fmspc, PckCa::Platform, until + 3600).await,
            Err(CacheError::Expired { .. })
        ));
    }
}
