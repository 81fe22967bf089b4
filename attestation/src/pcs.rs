//! Where TDX collateral comes from, and how a host keeps it: sans-IO.
//!
//! Owns the Intel PCS / PCCS request URLs (built from configured base URLs;
//! nothing here opens a socket), the [`CollateralFetcher`] trait the host
//! agent implements over HTTP, and [`CollateralCache`], which hands out
//! collateral only while every part of it is still valid. The cache never
//! fails open: an entry past the earliest `nextUpdate` of its TCB info, QE
//! identity or CRLs is dropped, not served "just this once"; a fetch failure
//! leaves the caller with nothing rather than with stale collateral.
//!
//! Reference: *Intel SGX and TDX Provisioning Certification Service API*
//! (v4): `/tdx/certification/v4/tcb?fmspc=`, `/tdx/certification/v4/qe/identity`,
//! `/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der`, and the
//! root CA CRL distribution point.

use std::collections::HashMap;

use crate::bytes::Reader;
use crate::collateral::TdxCollateral;

/// Base URLs of a collateral service, from the host's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcsConfig {
    /// Base of the PCS or PCCS API, e.g. `https://api.trustedservices.intel.com`
    /// or a local PCCS `https://pccs.example:8081`.
    pub base_url: String,
    /// Where the Intel SGX Root CA CRL is published.
    pub root_ca_crl_url: String,
}

/// Which CA issued the PCK certificate (selects the PCK CRL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// Intel SGX PCK Platform CA.
    Platform,
    /// Intel SGX PCK Processor CA.
    Processor,
}

impl PcsConfig {
    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
    /// TDX TCB info for a platform family.
    pub fn tcb_info_url(&self, fmspc: &[u8; 6]) -> String {
        format!(
            "{}/tdx/certification/v4/tcb?fmspc={}",
            self.base(),
            hex::encode(fmspc)
        )
    }
    /// The TD quoting enclave's identity.
    pub fn qe_identity_url(&self) -> String {
        format!("{}/tdx/certification/v4/qe/identity", self.base())
    }
    /// The PCK CRL of the given CA, DER-encoded.
    pub fn pck_crl_url(&self, ca: PckCa) -> String {
        let ca = match ca {
            PckCa::Platform => "platform",
            PckCa::Processor => "processor",
        };
        format!(
            "{}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der",
            self.base()
        )
    }
}

/// Fetches collateral for one platform family. The host agent implements it
/// over HTTP with the URLs of [`PcsConfig`]; tests never call a real service.
pub trait CollateralFetcher {
    /// Why a fetch failed.
    type Error: std::error::Error;
    /// Fetch fresh collateral for `fmspc`, whose PCK certificate `ca` issued.
    fn fetch(&mut self, fmspc: &[u8; 6], ca: PckCa) -> Result<TdxCollateral, Self::Error>;
}

/// The earliest moment any part of `c` stops being valid (seconds since the
/// epoch): the `nextUpdate` of the TCB info, of the QE identity and of both
/// CRLs. `None` when any of them is missing or unreadable, which makes the
/// collateral unusable.
pub fn valid_until(c: &TdxCollateral) -> Option<u64> {
    let json_next = |text: &str| -> Option<u64> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        rfc3339_to_unix(v.get("nextUpdate")?.as_str()?)
    };
    let crls = [c.root_ca_crl.as_deref()?, c.pck_crl.as_deref()?];
    let mut until = json_next(&c.tcb_info)?.min(json_next(&c.qe_identity)?);
    for crl in crls {
        until = until.min(crl_next_update(crl)?);
    }
    Some(until)
}

/// A cache of collateral per (FMSPC, PCK CA) that never serves expired data.
#[derive(Debug, Default)]
pub struct CollateralCache {
    entries: HashMap<([u8; 6], PckCa), (TdxCollateral, u64)>,
    /// Refresh this many seconds before expiry.
    pub refresh_margin_secs: u64,
}

impl CollateralCache {
    /// An empty cache refreshing `margin` seconds before expiry.
    pub fn new(refresh_margin_secs: u64) -> Self {
        CollateralCache {
            entries: HashMap::new(),
            refresh_margin_secs,
        }
    }

    /// Collateral valid at `now`, fetching when missing or about to expire.
    /// A fetched collateral that is already expired (or incomplete) is not
    /// stored and the call fails; an old entry is never returned past its
    /// expiry, whatever the fetcher does.
    pub fn get<F: CollateralFetcher>(
        &mut self,
        fetcher: &mut F,
        fmspc: [u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<&TdxCollateral, CacheError<F::Error>> {
        let key = (fmspc, ca);
        let fresh = self
            .entries
            .get(&key)
            .is_some_and(|(_, until)| now.saturating_add(self.refresh_margin_secs) < *until);
        if !fresh {
            // Drop anything stale first: a failed refresh must not leave it behind.
            if self
                .entries
                .get(&key)
                .is_some_and(|(_, until)| now >= *until)
            {
                self.entries.remove(&key);
            }
            match fetcher.fetch(&fmspc, ca) {
                Ok(c) => {
                    let until = valid_until(&c).ok_or(CacheError::Incomplete)?;
                    if now >= until {
                        return Err(CacheError::Expired { until });
                    }
                    self.entries.insert(key, (c, until));
                }
                // Within the margin the old entry is still valid: keep serving it.
                Err(e) if !self.entries.contains_key(&key) => return Err(CacheError::Fetch(e)),
                Err(_) => {}
            }
        }
        match self.entries.get(&key) {
            Some((c, until)) if now < *until => Ok(c),
            Some((_, until)) => Err(CacheError::Expired { until: *until }),
            None => Err(CacheError::Incomplete),
        }
    }
}

/// Why the cache has no collateral to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError<E: std::error::Error> {
    /// The fetch failed and nothing valid is cached.
    #[error("collateral fetch failed: {0}")]
    Fetch(E),
    /// The service returned collateral that has already expired.
    #[error("collateral expired at unix time {until}")]
    Expired {
        /// When it expired.
        until: u64,
    },
    /// The collateral lacks a CRL or a readable nextUpdate.
    #[error("collateral is incomplete (missing CRL or nextUpdate)")]
    Incomplete,
}

/// Parse `YYYY-MM-DDTHH:MM:SSZ` (the form Intel's collateral uses; fractional
/// seconds allowed) into seconds since the epoch. Offsets other than `Z` are
/// refused.
pub fn rfc3339_to_unix(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(10) != Some(&b'T') || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    days_secs(
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    )
}

fn days_secs(y: i64, mo: i64, d: i64, h: i64, mi: i64, se: i64) -> Option<u64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// The nextUpdate of a DER CRL (RFC 5280 §5.1): a minimal walk of
/// TBSCertList { version?, signature, issuer, thisUpdate, nextUpdate, ... }.
pub(crate) fn crl_next_update(der: &[u8]) -> Option<u64> {
    let mut outer = Reader::new(der);
    let (_, mut cert_list) = outer.der("CertificateList").ok()?;
    let (_, mut tbs) = cert_list.der("TBSCertList").ok()?;
    let mut first = tbs.clone();
    if first.der("version").ok()?.0 == 0x02 {
        tbs = first; // version
    }
    tbs.der("signature").ok()?;
    tbs.der("issuer").ok()?;
    tbs.der("thisUpdate").ok()?;
    let (tag, t) = tbs.der("nextUpdate").ok()?;
    let t = t.rest();
    let t = std::str::from_utf8(t).ok()?;
    let n = |r: std::ops::Range<usize>| -> Option<i64> { t.get(r)?.parse().ok() };
    match (tag, t.len()) {
        // UTCTime YYMMDDHHMMSSZ (RFC 5280 §4.1.2.5.1: YY < 50 is 20YY)
        (0x17, 13) => {
            let yy = n(0..2)?;
            days_secs(
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                n(2..4)?,
                n(4..6)?,
                n(6..8)?,
                n(8..10)?,
                n(10..12)?,
            )
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        (0x18, 15) => days_secs(
            n(0..4)?,
            n(4..6)?,
            n(6..8)?,
            n(8..10)?,
            n(10..12)?,
            n(12..14)?,
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_from_config() {
        let c = PcsConfig {
            base_url: "https://pccs.local:8081/".into(),
            root_ca_crl_url: "https://crl.local/root.der".into(),
        };
        assert_eq!(
            c.tcb_info_url(&[0xb0, 0xc0, 0x6f, 0, 0, 0]),
            "https://pccs.local:8081/tdx/certification/v4/tcb?fmspc=b0c06f000000"
        );
        assert_eq!(
            c.pck_crl_url(PckCa::Platform),
            "https://pccs.local:8081/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
        );
        assert_eq!(
            c.qe_identity_url(),
            "https://pccs.local:8081/tdx/certification/v4/qe/identity"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_to_unix("2025-07-19T10:00:34Z"), Some(1_752_919_234));
        assert_eq!(rfc3339_to_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_to_unix("2025-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_to_unix("2025-07-19"), None);
        assert_eq!(rfc3339_to_unix("garbage-and-more-text"), None);
        assert_eq!(rfc3339_to_unix("2025-07-19T10:00:34+02:00"), None);
    }
}
