//! The host-side collateral cache never fails open: it serves collateral only
//! while every part (TCB info, QE identity, both CRLs) is valid, and a failed
//! or stale refresh leaves the caller with an error, not with old data.

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::pcs::{valid_until, CacheError, CollateralCache, CollateralFetcher, PckCa};
use cocoon_tests::read_vector;

/// A stand-in for the PCS over HTTP that hands out recorded collateral (or
/// fails on demand) and counts calls. Test-only: the real fetcher lives in
/// the host agent.
struct RecordedPcs {
    collateral: TdxCollateral,
    fail: bool,
    calls: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("service unavailable")]
struct Unavailable;

impl CollateralFetcher for RecordedPcs {
    type Error = Unavailable;
    fn fetch(&mut self, _fmspc: &[u8; 6], _ca: PckCa) -> Result<TdxCollateral, Unavailable> {
        self.calls += 1;
        if self.fail {
            Err(Unavailable)
        } else {
            Ok(self.collateral.clone())
        }
    }
}

const FMSPC: [u8; 6] = [0xb0, 0xc0, 0x6f, 0, 0, 0];

fn recorded() -> TdxCollateral {
    TdxCollateral::from_bytes(&read_vector("tdx/dcap-qvl/tdx_quote_collateral.json")).unwrap()
}

#[test]
fn expiry_is_the_earliest_next_update() {
    let c = recorded();
    // The manifest's valid window for this collateral ends at 2025-07-19T10:00:35Z.
    assert_eq!(valid_until(&c), Some(1_752_919_235));
    let mut no_crl = c.clone();
    no_crl.pck_crl = None;
    assert_eq!(valid_until(&no_crl), None);
}

#[test]
fn cache_serves_only_valid_collateral() {
    let until = valid_until(&recorded()).unwrap();
    let mut pcs = RecordedPcs {
        collateral: recorded(),
        fail: false,
        calls: 0,
    };
    let mut cache = CollateralCache::new(3600);
    let early = until - 86_400;
    assert!(cache.get(&mut pcs, FMSPC, PckCa::Platform, early).is_ok());
    assert!(cache
        .get(&mut pcs, FMSPC, PckCa::Platform, early + 1)
        .is_ok());
    assert_eq!(pcs.calls, 1, "a fresh entry is served from the cache");

    // Inside the refresh margin a failing service still leaves the valid entry usable.
    pcs.fail = true;
    assert!(cache
        .get(&mut pcs, FMSPC, PckCa::Platform, until - 60)
        .is_ok());
    // Past expiry a failing service means no collateral, never the stale entry.
    assert!(matches!(
        cache.get(&mut pcs, FMSPC, PckCa::Platform, until),
        Err(CacheError::Fetch(_))
    ));
    // A service that returns expired collateral is refused too.
    pcs.fail = false;
    assert!(matches!(
        cache.get(&mut pcs, FMSPC, PckCa::Platform, until + 10),
        Err(CacheError::Expired { .. })
    ));
    // Incomplete collateral is never cached.
    pcs.collateral.root_ca_crl = None;
    assert!(matches!(
        cache.get(&mut pcs, FMSPC, PckCa::Processor, early),
        Err(CacheError::Incomplete)
    ));
}
