//! Where AMD's SEV-SNP CRLs come from, and how a host keeps them: sans-IO.
//!
//! Owns the CRL URLs of AMD's key distribution service (built from a
//! configured base URL; nothing here opens a socket), the [`CrlFetcher`]
//! trait a host implements over HTTP, which CRL an SNP report needs
//! ([`crl_key`]), and [`CrlCache`], which follows the TDX collateral cache's
//! rules ([`crate::pcs`]): a CRL is never handed out at or past its
//! `nextUpdate`, a stale entry is dropped before a refresh, and a failed
//! fetch leaves the caller with nothing rather than with a stale CRL. It
//! judges nothing: whether a CRL is genuine (signed by the ARK) and what it
//! revokes is the verifier's job.
//!
//! It also names the VCEK a report needs ([`vcek_key`],
//! [`KdsConfig::vcek_url`]): when an enclave's SNP evidence arrives without
//! its VCEK, the host fetches it by the report's product, hardware ID and
//! reported TCB. Whether that certificate is the right one (its hwID and
//! TCB extensions against the report, its chain to the ARK) is again the
//! verifier's job.
//!
//! Reference: *VCEK Certificate and KDS Interface Specification* (AMD
//! #57230), §4: `GET {base}/vcek/v1/{product_name}/crl` and
//! `GET {base}/vlek/v1/{product_name}/crl`, DER, one per product and key
//! family, signed by the product's ARK; §3:
//! `GET {base}/vcek/v1/{product_name}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=`
//! (Turin adds `fmcSPL` and its hwID is 8 bytes), the VCEK in DER.

use std::collections::HashMap;

use crate::pcs::{crl_next_update, CacheError};
use crate::snp::{Product, SigningKey, SnpReport, TcbVersion};

/// AMD's key distribution service, from the host's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdsConfig {
    /// Base URL of the service (AMD's public one, or a caching proxy).
    pub base_url: String,
}

/// Which key family a CRL covers: chip keys (VCEK, under the ASK) or
/// cloud-provider keys (VLEK, under the ASVK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// Versioned Chip Endorsement Keys.
    Vcek,
    /// Versioned Loaded Endorsement Keys.
    Vlek,
}

impl KdsConfig {
    /// The CRL AMD publishes for `product` and `family`.
    pub fn crl_url(&self, product: Product, family: KeyFamily) -> String {
        let family = match family {
            KeyFamily::Vcek => "vcek",
            KeyFamily::Vlek => "vlek",
        };
        format!(
            "{}/{family}/v1/{}/crl",
            self.base_url.trim_end_matches('/'),
            product.name()
        )
    }

    /// The VCEK for `key` (AMD #57230 §3): the product, the hwID in
    /// lowercase hex, and the SPLs of the reported TCB in decimal, decoded
    /// with the product's layout (`fmcSPL` only on Turin).
    pub fn vcek_url(&self, key: &VcekKey) -> String {
        let t = key.tcb.decode(key.product.tcb_layout());
        let fmc = t.fmc.map(|f| format!("fmcSPL={f:02}&")).unwrap_or_default();
        format!(
            "{}/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            self.base_url.trim_end_matches('/'),
            key.product.name(),
            hex::encode(&key.hwid),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }
}

/// Which VCEK a report needs: the one AMD's KDS derives for this chip at
/// this TCB. The cache key of the host's VCEK cache, and the parts of the
/// request URL ([`KdsConfig::vcek_url`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VcekKey {
    /// The product (from the report's CPUID).
    pub product: Product,
    /// The hardware ID KDS takes: the report's CHIP_ID, all 64 bytes on
    /// Milan and Genoa, the first 8 on Turin (AMD #57230 §3.1; the rest of
    /// a Turin CHIP_ID is zero padding).
    pub hwid: Vec<u8>,
    /// The report's REPORTED_TCB, the TCB the VCEK is derived for.
    pub tcb: TcbVersion,
}

/// The VCEK `report` is signed with, when the host can ask KDS for it: the
/// report names a VCEK (not a VLEK, which KDS does not serve by hwID), its
/// product is known (CPUID, version 3 and later) and its CHIP_ID is not
/// masked (`MASK_CHIP_ID` makes it zero, and KDS has no certificate for
/// that). `None` otherwise.
pub fn vcek_key(report: &SnpReport) -> Option<VcekKey> {
    if report.key_info().signing_key() != SigningKey::Vcek {
        return None;
    }
    let product = report.product_from_cpuid()?;
    let chip = report.chip_id();
    let hwid = match product {
        Product::Turin => &chip[..8],
        _ => &chip[..],
    };
    if hwid.iter().all(|b| *b == 0) {
        return None;
    }
    Some(VcekKey {
        product,
        hwid: hwid.to_vec(),
        tcb: report.reported_tcb(),
    })
}

/// The CRL a report needs: its product (from CPUID, reports of version 3
/// and later) and the key family its SIGNING_KEY names. `None` when the
/// report does not say (version 2, or no VCEK/VLEK): the host then has no
/// CRL to attach, and a policy that requires revocation refuses the
/// evidence by name.
pub fn crl_key(report: &SnpReport) -> Option<(Product, KeyFamily)> {
    let family = match report.key_info().signing_key() {
        SigningKey::Vcek => KeyFamily::Vcek,
        SigningKey::Vlek => KeyFamily::Vlek,
        SigningKey::None | SigningKey::Reserved(_) => return None,
    };
    Some((report.product_from_cpuid()?, family))
}

/// Fetches one CRL (DER). The host agent implements it over HTTP with
/// [`KdsConfig::crl_url`]; tests never call the real service.
pub trait CrlFetcher {
    /// Why a fetch failed.
    type Error: std::error::Error;
    /// Fetch the current CRL for `product` and `family`.
    fn fetch(&mut self, product: Product, family: KeyFamily) -> Result<Vec<u8>, Self::Error>;
}

/// A cache of AMD CRLs per (product, key family) that never serves one at
/// or past its `nextUpdate`.
#[derive(Debug, Default)]
pub struct CrlCache {
    entries: HashMap<(Product, KeyFamily), (Vec<u8>, u64)>,
    /// Refresh this many seconds before `nextUpdate`.
    pub refresh_margin_secs: u64,
}

impl CrlCache {
    /// An empty cache refreshing `margin` seconds before `nextUpdate`.
    pub fn new(refresh_margin_secs: u64) -> Self {
        CrlCache {
            entries: HashMap::new(),
            refresh_margin_secs,
        }
    }

    /// The CRL for `product` and `family`, valid at `now` (seconds since
    /// the epoch), fetching when missing or within the refresh margin. A
    /// fetched CRL that is already stale or has no readable `nextUpdate` is
    /// not stored and the call fails; within the margin a failed refresh
    /// keeps serving the old CRL, which is still valid.
    pub fn get<F: CrlFetcher>(
        &mut self,
        fetcher: &mut F,
        product: Product,
        family: KeyFamily,
        now: u64,
    ) -> Result<&[u8], CacheError<F::Error>> {
        let key = (product, family);
        let fresh = self
            .entries
            .get(&key)
            .is_some_and(|(_, until)| now.saturating_add(self.refresh_margin_secs) < *until);
        if !fresh {
            if self
                .entries
                .get(&key)
                .is_some_and(|(_, until)| now >= *until)
            {
                self.entries.remove(&key);
            }
            match fetcher.fetch(product, family) {
                Ok(crl) => {
                    let until = crl_next_update(&crl).ok_or(CacheError::Incomplete)?;
                    if now >= until {
                        return Err(CacheError::Expired { until });
                    }
                    self.entries.insert(key, (crl, until));
                }
                Err(e) if !self.entries.contains_key(&key) => return Err(CacheError::Fetch(e)),
                Err(_) => {}
            }
        }
        match self.entries.get(&key) {
            Some((crl, until)) if now < *until => Ok(crl),
            Some((_, until)) => Err(CacheError::Expired { until: *until }),
            None => Err(CacheError::Incomplete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER CRL skeleton with the given nextUpdate (UTCTime text): enough
    /// for the cache, which reads nothing else (it verifies nothing).
    fn crl(next_update: &str) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        let mut tbs = tlv(0x02, &[1]);
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x30, &[]));
        tbs.extend(tlv(0x17, b"251001000000Z"));
        tbs.extend(tlv(0x17, next_update.as_bytes()));
        tlv(0x30, &tlv(0x30, &tbs))
    }

    /// 2025-10-08T00:00:00Z, the nextUpdate of `crl("251008000000Z")`.
    const UNTIL: u64 = 1_759_881_600;

    #[derive(Debug, thiserror::Error)]
    #[error("service unavailable")]
    struct Unavailable;

    struct Recorded {
        crl: Vec<u8>,
        fail: bool,
        calls: Vec<(Product, KeyFamily)>,
    }

    impl CrlFetcher for Recorded {
        type Error = Unavailable;
        fn fetch(&mut self, p: Product, f: KeyFamily) -> Result<Vec<u8>, Unavailable> {
            self.calls.push((p, f));
            if self.fail {
                Err(Unavailable)
            } else {
                Ok(self.crl.clone())
            }
        }
    }

    #[test]
    fn urls_name_the_product_and_family() {
        let kds = KdsConfig {
            base_url: "https://kds.example/".into(),
        };
        assert_eq!(
            kds.crl_url(Product::Genoa, KeyFamily::Vcek),
            "https://kds.example/vcek/v1/Genoa/crl"
        );
        assert_eq!(
            kds.crl_url(Product::Turin, KeyFamily::Vlek),
            "https://kds.example/vlek/v1/Turin/crl"
        );
    }

    #[test]
    fn a_crl_is_served_until_its_next_update_and_never_after() {
        assert_eq!(crl_next_update(&crl("251008000000Z")), Some(UNTIL));
        let mut kds = Recorded {
            crl: crl("251008000000Z"),
            fail: false,
            calls: vec![],
        };
        let mut cache = CrlCache::new(3600);
        let early = UNTIL - 86_400;
        let got = cache.get(&mut kds, Product::Milan, KeyFamily::Vcek, early);
        assert_eq!(got.unwrap(), crl("251008000000Z").as_slice());
        // Cached: no second fetch while fresh.
        assert!(cache
            .get(&mut kds, Product::Milan, KeyFamily::Vcek, early + 60)
            .is_ok());
        assert_eq!(kds.calls.len(), 1);
        // Another product or family is another CRL.
        assert!(cache
            .get(&mut kds, Product::Milan, KeyFamily::Vlek, early)
            .is_ok());
        assert_eq!(kds.calls.len(), 2);
        // Within the margin a failed refresh keeps the still-valid CRL.
        kds.fail = true;
        assert!(cache
            .get(&mut kds, Product::Milan, KeyFamily::Vcek, UNTIL - 60)
            .is_ok());
        // At nextUpdate it is never served, whatever the fetcher does.
        assert!(matches!(
            cache.get(&mut kds, Product::Milan, KeyFamily::Vcek, UNTIL),
            Err(CacheError::Fetch(Unavailable))
        ));
        kds.fail = false;
        assert!(matches!(
            cache.get(&mut kds, Product::Milan, KeyFamily::Vcek, UNTIL),
            Err(CacheError::Expired { until: UNTIL })
        ));
        // A fresh CRL from the service is taken up.
        kds.crl = crl("251015000000Z");
        assert!(cache
            .get(&mut kds, Product::Milan, KeyFamily::Vcek, UNTIL)
            .is_ok());
        // Garbage is never stored.
        kds.crl = b"not a CRL".to_vec();
        let mut empty = CrlCache::new(0);
        assert!(matches!(
            empty.get(&mut kds, Product::Genoa, KeyFamily::Vcek, early),
            Err(CacheError::Incomplete)
        ));
    }

    #[test]
    fn the_vcek_url_names_product_hwid_and_tcb() {
        let kds = KdsConfig {
            base_url: "https://kds.example/".into(),
        };
        let mut b = vec![0u8; crate::snp::REPORT_SIZE];
        b[..4].copy_from_slice(&3u32.to_le_bytes());
        b[0x188] = 0x19; // Genoa
        b[0x189] = 0x11;
        // REPORTED_TCB (0x180), Milan/Genoa layout: bl@0 tee@1 snp@6 ucode@7.
        b[0x180..0x188].copy_from_slice(&[3, 0, 0, 0, 0, 0, 20, 209]);
        b[0x1A0..0x1E0].copy_from_slice(&[0xab; 64]);
        let r = SnpReport::parse(&b).unwrap();
        let key = vcek_key(&r).unwrap();
        assert_eq!(key.hwid, vec![0xab; 64]);
        assert_eq!(
            kds.vcek_url(&key),
            format!(
                "https://kds.example/vcek/v1/Genoa/{}?blSPL=03&teeSPL=00&snpSPL=20&ucodeSPL=209",
                "ab".repeat(64)
            )
        );
        // Turin: 8-byte hwID, fmc@0 bl@1 tee@2 snp@3 ucode@7.
        b[0x188] = 0x1A;
        b[0x189] = 0x02;
        b[0x180..0x188].copy_from_slice(&[1, 2, 3, 4, 0, 0, 0, 5]);
        let key = vcek_key(&SnpReport::parse(&b).unwrap()).unwrap();
        assert_eq!(key.product, Product::Turin);
        assert_eq!(
            kds.vcek_url(&key),
            "https://kds.example/vcek/v1/Turin/abababababababab?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
        );
        // A masked chip ID, a VLEK, or no CPUID: nothing to ask for.
        let mut masked = b.clone();
        masked[0x1A0..0x1A8].fill(0);
        assert_eq!(vcek_key(&SnpReport::parse(&masked).unwrap()), None);
        let mut vlek = b.clone();
        vlek[0x48] = 1 << 2;
        assert_eq!(vcek_key(&SnpReport::parse(&vlek).unwrap()), None);
        b[..4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(vcek_key(&SnpReport::parse(&b).unwrap()), None);
    }

    #[test]
    fn the_report_names_the_crl_it_needs() {
        let mut b = vec![0u8; crate::snp::REPORT_SIZE];
        b[..4].copy_from_slice(&3u32.to_le_bytes());
        // CPUID family 0x19 model 0x11: Genoa (version 3 reports carry it).
        b[0x188] = 0x19;
        b[0x189] = 0x11;
        let r = SnpReport::parse(&b).unwrap();
        assert_eq!(crl_key(&r), Some((Product::Genoa, KeyFamily::Vcek)));
        b[0x48] = 1 << 2; // SIGNING_KEY = VLEK
        let r = SnpReport::parse(&b).unwrap();
        assert_eq!(crl_key(&r), Some((Product::Genoa, KeyFamily::Vlek)));
        b[0x48] = 7 << 2; // unsigned
        assert_eq!(crl_key(&SnpReport::parse(&b).unwrap()), None);
        b[..4].copy_from_slice(&2u32.to_le_bytes()); // no CPUID
        b[0x48] = 0;
        assert_eq!(crl_key(&SnpReport::parse(&b).unwrap()), None);
    }
}
