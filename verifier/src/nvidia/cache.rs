//! [`GpuVerifier`]: NVIDIA evidence verification that remembers what it has
//! already verified, so a known GPU set costs little more than its report
//! signatures when it is verified again.
//!
//! Owns two bounded caches, each keyed by the SHA-256 of the exact bytes
//! received (a cache hit needs the very same bytes; an altered copy is a
//! miss and is verified from scratch):
//!
//! * device certificate chains (PEM) that passed every time-independent
//!   check up to the pinned NVIDIA Device Identity CA, with the parsed leaf
//!   whose key checks the report signature;
//! * reference integrity manifests whose XML signature, signing chain and
//!   contents verified.
//!
//! Only a chain or RIM that passed every check, its dates included, is
//! kept. What depends on the time is kept as data and checked again at
//! every call against the caller's `now`: the validity window of every
//! certificate on the path, root included. Reports, nonces, measurements,
//! policy and revocation (OCSP) are judged at every call; nothing about
//! them is cached. Mirrors [`crate::SnpVerifier`]'s chain cache.

use std::sync::Arc;

use super::chain::{self, check_windows, ChainProblem, LinkMemo};
use super::device::{
    verify_device_with, CheckedChain, DeviceChain, DeviceExpectations, VerifiedDevice,
};
use super::rim::{verify_rim_windows, VerifiedRim};
use crate::crypto::sha256;
use crate::verified_cache::VerifiedCache;
use crate::{Findings, Rejection, UnixTime};

/// Most entries each cache keeps; past this it starts over.
const CACHE_CAPACITY: usize = 1024;

/// A verified RIM with the validity windows of its signing path.
struct CachedRim {
    rim: Arc<VerifiedRim>,
    windows: Vec<chain::Window>,
}

/// Verifies NVIDIA device evidence and RIMs, caching verified device
/// chains and RIMs (bounded, keyed by their exact bytes, dates re-checked
/// at every call). Cheap to share between threads.
#[derive(Default)]
pub struct GpuVerifier {
    chains: VerifiedCache<DeviceChain, CACHE_CAPACITY>,
    rims: VerifiedCache<CachedRim, CACHE_CAPACITY>,
}

impl GpuVerifier {
    /// A verifier with empty caches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verify one device's report with its certificate chain at `now`, as
    /// [`super::verify_device`] does, reusing a chain verified before.
    pub fn verify_device(
        &self,
        report: &[u8],
        chain_pem: &[u8],
        expect: &DeviceExpectations<'_>,
        now: UnixTime,
    ) -> Result<VerifiedDevice, Rejection> {
        let checked = self.device_chain(chain_pem, now, &mut LinkMemo::default());
        verify_device_with(report, checked, expect).map(|(v, _)| v)
    }

    /// Verify a RIM at `now`, as [`super::rim::verify_rim`] does, reusing
    /// one verified before.
    pub fn verify_rim(&self, xml: &[u8], now: UnixTime) -> Result<Arc<VerifiedRim>, Rejection> {
        let key = sha256(xml);
        if let Some(hit) = self.rims.recall(&key) {
            let problems = check_windows("RIM signing chain", &hit.windows, now);
            return if problems.is_empty() {
                Ok(Arc::clone(&hit.rim))
            } else {
                Err(findings(problems).into_rejection())
            };
        }
        let (rim, windows) = verify_rim_windows(xml, now)?;
        let cached = Arc::new(CachedRim {
            rim: Arc::new(rim),
            windows,
        });
        self.rims.remember(key, &cached);
        Ok(Arc::clone(&cached.rim))
    }

    /// The device chain in `chain_pem` with its problems at `now`: from the
    /// cache (only the validity windows checked again), or checked in full
    /// and cached when it had none.
    pub(crate) fn device_chain(
        &self,
        chain_pem: &[u8],
        now: UnixTime,
        memo: &mut LinkMemo,
    ) -> Result<CheckedChain, ChainProblem> {
        let key = sha256(chain_pem);
        if let Some(hit) = self.chains.recall(&key) {
            let problems = check_windows("device certificate chain", &hit.windows, now);
            return Ok((hit, problems));
        }
        let (chain, problems) = DeviceChain::check(chain_pem, now, memo)?;
        let chain = Arc::new(chain);
        if problems.is_empty() {
            self.chains.remember(key, &chain);
        }
        Ok((chain, problems))
    }

    /// How many device chains and RIMs are cached (for tests and metrics).
    pub fn cached(&self) -> (usize, usize) {
        (self.chains.len(), self.rims.len())
    }
}

fn findings(problems: Vec<ChainProblem>) -> Findings {
    let mut f = Findings::default();
    for (kind, msg) in problems {
        f.add(kind, msg);
    }
    f
}
