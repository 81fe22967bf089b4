//! NVIDIA confidential-computing evidence: H100 GPUs and LS10 NVSwitches.
//!
//! * `chain` — the pinned NVIDIA roots and ECDSA P-384 chain checks.
//! * [`device`] — one GPU's or NVSwitch's SPDM evidence.
//! * [`gpus`] — a whole evidence set under a GPU policy (RIMs, OCSP).
//! * [`rim`] — reference integrity manifests (SWID tags, XML signatures).
//! * [`ocsp`] — OCSP responses carried as revocation collateral.
//! * [`GpuVerifier`] — the above with verified chains and RIMs cached.

mod cache;
pub(crate) mod chain;
pub mod device;
pub mod gpus;
pub mod ocsp;
pub mod rim;
mod xml;

pub use cache::GpuVerifier;
pub use device::{verify_device, DeviceExpectations, DeviceKind, Golden, VerifiedDevice};

use crate::{Findings, Rejection, UnixTime};

/// Check a device certificate chain (PEM, leaf first, as the driver returns
/// it) up to the bundled NVIDIA Device Identity CA at `now`. Returns the
/// number of certificates checked. Signatures, names, CA flags, key usage,
/// path lengths and validity windows are checked; revocation is not (that
/// needs OCSP responses carried as collateral).
pub fn verify_device_chain(pem: &[u8], now: UnixTime) -> Result<usize, Rejection> {
    let certs = chain::parse_chain("device certificate chain", pem)
        .map_err(|(kind, msg)| Rejection::single(kind, msg))?;
    let mut findings = Findings::default();
    for (kind, msg) in
        chain::check_chain("device certificate chain", &certs, &chain::DEVICE_ROOT, now)
    {
        findings.add(kind, msg);
    }
    if findings.is_empty() {
        Ok(certs.len())
    } else {
        Err(findings.into_rejection())
    }
}
