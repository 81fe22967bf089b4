//! The vendor-signed collateral the host adds to its enclaves' evidence.
//!
//! One place where evidence picks up what the guest cannot produce itself,
//! before the broker verifies it and serves it: the VCEK of an SNP report
//! that came without one ([`crate::snp_vcek`]), AMD's CRL for SNP reports
//! ([`crate::snp_crl`]), and current Intel collateral for TDX quotes
//! ([`crate::intel_pcs`]). Each part is signed by AMD or Intel, so the host
//! judges none of it: every client verifies it whoever attached it.

use crate::intel_pcs::TdxCollaterals;
use crate::snp_crl::SnpCrls;
use crate::snp_vcek::SnpVceks;

/// The collateral fetchers, one per kind.
#[derive(Debug)]
pub struct Collateral {
    /// VCEKs from AMD's key distribution service.
    pub snp_vceks: SnpVceks,
    /// AMD's CRLs from the same service.
    pub snp_crls: SnpCrls,
    /// Intel's collateral from its PCS or a PCCS.
    pub tdx: TdxCollaterals,
}

impl Collateral {
    /// Fetchers for AMD's service at `amd_kds_url` and Intel's (or a
    /// PCCS) at `intel_pcs_url`.
    pub fn new(amd_kds_url: &str, intel_pcs_url: &str) -> Collateral {
        Collateral {
            snp_vceks: SnpVceks::new(amd_kds_url),
            snp_crls: SnpCrls::new(amd_kds_url),
            tdx: TdxCollaterals::new(intel_pcs_url),
        }
    }

    /// `bundle` with whatever collateral it lacks and can be had at `now`
    /// (seconds since the epoch); what cannot be had is left out, and the
    /// verifier decides what that means.
    pub async fn attach(&self, bundle: Vec<u8>, now: u64) -> Vec<u8> {
        let bundle = self.snp_vceks.attach(bundle, now).await;
        let bundle = self.snp_crls.attach(bundle, now).await;
        self.tdx.attach(bundle, now).await
    }
}
