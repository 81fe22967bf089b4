//! The one type for a certificate this crate trusts without being told to,
//! bundled as DER and pinned by the SHA-256 of its bytes: AMD's ARKs, ASKs
//! and ASVKs (`snp`), Intel's SGX Root CA (`tdx`) and NVIDIA's device
//! identity and CoRIM signing roots (`nvidia::chain`), with the files under
//! `verifier/roots/`.
//!
//! Owns the pin check. What each certificate anchors (which product, which
//! chain) is its user's business.

use crate::crypto::sha256;
use crate::x509::{Cert, CertError};

/// A bundled certificate with its pinned SHA-256 fingerprint (of the DER).
pub(crate) struct PinnedCert {
    /// Its name, for messages.
    pub name: &'static str,
    der: &'static [u8],
    /// Lowercase hex SHA-256 of `der`.
    pub sha256: &'static str,
}

impl PinnedCert {
    /// A bundled certificate and the pin its bytes must match.
    pub(crate) const fn new(name: &'static str, der: &'static [u8], sha256: &'static str) -> Self {
        PinnedCert { name, der, sha256 }
    }

    /// The DER, only if it matches its pin. A bundled certificate that does
    /// not is a build defect; its users fail closed.
    pub(crate) fn der(&self) -> Option<&'static [u8]> {
        (hex::encode(sha256(self.der)) == self.sha256).then_some(self.der)
    }

    /// The parsed certificate (signed with `parse`'s algorithm), after the
    /// pin check; an error message naming it otherwise.
    pub(crate) fn cert(&self, parse: fn(&[u8]) -> Result<Cert, CertError>) -> Result<Cert, String> {
        let der = self
            .der()
            .ok_or_else(|| format!("bundled root {} does not match its pin", self.name))?;
        parse(der).map_err(|e| format!("bundled root {}: {e}", self.name))
    }
}
