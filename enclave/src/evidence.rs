//! The evidence an enclave publishes over its life: the report made at boot,
//! the reports it makes again on a timer, and reports bound to a client's
//! nonce; and every claims digest it issued, so it can open requests sealed
//! to any of them.
//!
//! Owns [`EvidenceState`]: the attestation provider, the GPU section every
//! report of this boot carries, the [`Published`] evidence the host is given, and the bounded
//! set of issued digests. It does not decide when to refresh (the server's
//! timer does) nor who may ask for a nonce (the host rate-limits per
//! account; the server lets one nonce report be made at a time).
//!
//! Every report has the same keys: a refresh proves that the enclave that
//! holds them still runs (a new report, `issued_at` = now, `refresh` + 1),
//! so a client can demand evidence younger than its policy's
//! `max_evidence_age`, and a nonce report proves it to one client with its
//! own nonce. Requests sealed to an older digest of the same boot still
//! open: the keys are the same, and the client decided on evidence that was
//! acceptable when it sealed. The set of digests is bounded
//! ([`MAX_ISSUED`], oldest forgotten first, the current one always known);
//! a request sealed to a forgotten digest is refused, and its client
//! fetches evidence again.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use cocoon_attestation::bundle::{
    claims_report_data, Claims, EvidenceBundle, GpuBundle, MAX_CLAIMS,
};
use cocoon_protocol::frame;
use cocoon_protocol::seal::EvidenceDigest;

use crate::attest::AttestationProvider;
use crate::server::EnclaveError;

/// Most claims digests remembered (besides the current one).
pub const MAX_ISSUED: usize = 4096;
/// Most bytes of a client nonce.
pub const MAX_CLIENT_NONCE: usize = 64;

/// One report's evidence, as published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The claims it binds.
    pub claims: Claims,
    /// The bundle.
    pub bundle: EvidenceBundle,
    /// The bundle's wire bytes (the `EvidenceResponse` payload).
    pub bundle_cbor: Vec<u8>,
    /// SHA-256 of the claims: what requests are sealed under.
    pub digest: EvidenceDigest,
}

#[derive(Debug, Default)]
struct Issued {
    order: VecDeque<EvidenceDigest>,
    set: HashSet<EvidenceDigest>,
}

impl Issued {
    fn insert(&mut self, d: EvidenceDigest) {
        if !self.set.insert(d) {
            return;
        }
        self.order.push_back(d);
        if self.order.len() > MAX_ISSUED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// The evidence of one boot (see the module docs).
pub struct EvidenceState {
    gpu: Option<GpuBundle>,
    provider: Arc<dyn AttestationProvider>,
    current: RwLock<Arc<Published>>,
    issued: Mutex<Issued>,
}

impl std::fmt::Debug for EvidenceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceState")
            .field("provider", &self.provider.kind())
            .field("current", &hex::encode(self.current().digest.0))
            .finish_non_exhaustive()
    }
}

impl EvidenceState {
    /// Make the boot report for `template` (its `issued_at` and `refresh`
    /// are taken as they are) with `gpu` carried beside it.
    pub fn boot(
        template: Claims,
        gpu: Option<GpuBundle>,
        provider: Arc<dyn AttestationProvider>,
    ) -> Result<EvidenceState, EnclaveError> {
        let first = attest(&*provider, template, gpu.clone())?;
        let mut issued = Issued::default();
        issued.insert(first.digest);
        Ok(EvidenceState {
            gpu,
            provider,
            current: RwLock::new(Arc::new(first)),
            issued: Mutex::new(issued),
        })
    }

    /// The evidence published now.
    pub fn current(&self) -> Arc<Published> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether requests sealed to `digest` open here: the current digest or
    /// one of the last [`MAX_ISSUED`] this boot issued.
    pub fn knows(&self, digest: &EvidenceDigest) -> bool {
        self.current().digest == *digest || lock(&self.issued).set.contains(digest)
    }

    /// Re-attest at `now` (blocking: the provider asks the hardware): a new
    /// report with the same keys, `issued_at = now` and the refresh counter
    /// one higher, published in place of the current one.
    pub fn refresh(&self, now: u64) -> Result<Arc<Published>, EnclaveError> {
        let mut claims = self.current().claims.clone();
        claims.issued_at = now;
        claims.refresh = claims.refresh.saturating_add(1);
        claims.client_nonce = None;
        let p = Arc::new(attest(&*self.provider, claims, self.gpu.clone())?);
        lock(&self.issued).insert(p.digest);
        match self.current.write() {
            Ok(mut c) => *c = p.clone(),
            Err(poisoned) => *poisoned.into_inner() = p.clone(),
        }
        Ok(p)
    }

    /// A report bound to a client's `nonce` at `now` (blocking), with the
    /// current refresh counter; not published to others, but requests
    /// sealed to it open.
    pub fn for_nonce(&self, nonce: &[u8], now: u64) -> Result<Published, EnclaveError> {
        if nonce.is_empty() || nonce.len() > MAX_CLIENT_NONCE {
            return Err(EnclaveError::Nonce(format!(
                "a client nonce is 1 to {MAX_CLIENT_NONCE} bytes, not {}",
                nonce.len()
            )));
        }
        let mut claims = self.current().claims.clone();
        claims.issued_at = now;
        claims.client_nonce = Some(nonce.to_vec());
        let p = attest(&*self.provider, claims, self.gpu.clone())?;
        lock(&self.issued).insert(p.digest);
        Ok(p)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One report for `claims`: the provider's evidence over the claims'
/// report data, bundled with the GPU section.
fn attest(
    provider: &dyn AttestationProvider,
    claims: Claims,
    gpu: Option<GpuBundle>,
) -> Result<Published, EnclaveError> {
    let claims_cbor = claims.to_cbor();
    if claims_cbor.len() > MAX_CLAIMS {
        return Err(EnclaveError::TooLarge {
            what: "the claims",
            len: claims_cbor.len(),
            max: MAX_CLAIMS,
        });
    }
    let platform = provider.evidence(&claims_report_data(&claims_cbor))?;
    let digest = EvidenceDigest::of_claims(&claims_cbor);
    let bundle = EvidenceBundle {
        platform,
        claims_cbor,
        gpu,
    };
    let bundle_cbor = bundle.to_cbor();
    if bundle_cbor.len() > frame::MAX_PAYLOAD {
        return Err(EnclaveError::TooLarge {
            what: "the evidence bundle",
            len: bundle_cbor.len(),
            max: frame::MAX_PAYLOAD,
        });
    }
    Ok(Published {
        claims,
        bundle,
        bundle_cbor,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::SimulatedProvider;
    use rand_core::OsRng;

    fn template() -> Claims {
        Claims {
            hpke_public_key: vec![1; 32],
            receipt_public_key: vec![2; 65],
            image_id: "t".into(),
            model_digests: vec![],
            config_digest: [3; 32],
            gpu_evidence_digest: None,
            epoch: 100,
            issued_at: 100,
            refresh: 0,
            client_nonce: None,
            disk_verity_root: None,
            provider_settings: None,
        }
    }

    #[test]
    fn refreshes_and_nonce_reports_keep_the_keys_and_every_digest_opens() {
        let provider = Arc::new(SimulatedProvider::with_image_bytes(
            b"img", b"cfg", &mut OsRng,
        ));
        let e = EvidenceState::boot(template(), None, provider).unwrap();
        let boot = e.current();
        assert_eq!(boot.claims.refresh, 0);
        let r1 = e.refresh(200).unwrap();
        assert_eq!((r1.claims.refresh, r1.claims.issued_at), (1, 200));
        assert_eq!(r1.claims.hpke_public_key, boot.claims.hpke_public_key);
        assert_eq!(r1.claims.epoch, 100);
        assert_ne!(r1.digest, boot.digest);
        assert_eq!(e.current().digest, r1.digest);
        let n = e.for_nonce(b"client nonce", 250).unwrap();
        assert_eq!(n.claims.client_nonce.as_deref(), Some(&b"client nonce"[..]));
        assert_eq!((n.claims.refresh, n.claims.issued_at), (1, 250));
        assert_eq!(
            e.current().digest,
            r1.digest,
            "a nonce report is not published"
        );
        for d in [boot.digest, r1.digest, n.digest] {
            assert!(e.knows(&d));
        }
        assert!(!e.knows(&EvidenceDigest([9; 32])));
        let r2 = e.refresh(300).unwrap();
        assert_eq!(r2.claims.client_nonce, None);
        assert_eq!(r2.claims.refresh, 2);
        assert!(e.for_nonce(b"", 1).is_err());
        assert!(e.for_nonce(&[0; MAX_CLIENT_NONCE + 1], 1).is_err());
    }

    #[test]
    fn the_set_of_digests_is_bounded_and_the_current_one_is_always_known() {
        let provider = Arc::new(SimulatedProvider::with_image_bytes(
            b"img", b"cfg", &mut OsRng,
        ));
        let e = EvidenceState::boot(template(), None, provider).unwrap();
        let first = e.current().digest;
        let second = e.refresh(200).unwrap().digest;
        for i in 0..MAX_ISSUED as u64 {
            let mut d = [0xee; 32];
            d[..8].copy_from_slice(&i.to_be_bytes());
            lock(&e.issued).insert(EvidenceDigest(d));
        }
        assert_eq!(lock(&e.issued).order.len(), MAX_ISSUED);
        assert_eq!(lock(&e.issued).set.len(), MAX_ISSUED);
        assert!(!e.knows(&first), "the oldest is forgotten");
        assert!(e.knows(&second), "the current one is always known");
    }
}
