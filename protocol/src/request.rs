//! The request as the enclave receives it: a sealed request together with
//! the paying account's public key and its signature over the request id.
//!
//! Owns [`SignedRequest`] (the payload of a host → enclave `Request` frame)
//! and the proof type [`AuthorizedRequest`], which only
//! [`SignedRequest::authorize`] builds. It does not open the request (that
//! is [`crate::seal::open_request`]) and does not decide whether the
//! request is fresh or new (the enclave's expiry and replay memory do).
//!
//! # Why the enclave checks the account
//!
//! The billing metadata names the paying account, and anyone who holds the
//! enclave's public HPKE key (the host above all) can seal a request naming
//! any account. The host checks the account's signature at its edge, but a
//! host is untrusted: it could seal its own requests for a victim's account
//! and send them to the enclave directly. So the signature travels with the
//! request into the enclave, which checks that SHA-256(account key) is the
//! billed account and that the key signed
//! `"cocoon-request-auth-v1" ‖ request_id` ([`crate::account`]) before it
//! opens, runs or signs anything. The request id is SHA-256 of the sealed
//! request's exact wire bytes, so the signature covers the ciphertext and
//! every field of the billing metadata (model, token limit, prices,
//! account, expiry), and cannot be moved to another request.
//!
//! `evidence` names the claims digest the client sealed to (the host knows
//! it from the request's routing header). An enclave re-attests during its
//! life with the same keys, so it has issued several digests; the name tells
//! it which one to open under. It needs no signature: the digest is bound
//! into the HPKE `info`, so a wrong one only makes the request fail to open.
//!
//! # Wire
//!
//! A CBOR map `{"request": bstr (SealedRequest wire bytes), "evidence": bstr
//! .size 32, "account_key": bstr (SEC1 P-256, 33 or 65 bytes), "signature":
//! bstr .size 64}` in that key order, decoded strictly and canonically (unknown keys, trailing
//! bytes, sizes over the limits and other encodings are errors).

use ciborium::Value;
use cocoon_attestation::cbor::{self, MapReader};

use crate::account::{verify_request_auth, AccountError, AccountId, ACCOUNT_SIGNATURE_LEN};
use crate::seal::{BillingMeta, EvidenceDigest, SealError, SealedRequest, MAX_SEALED_REQUEST};
use crate::RequestId;

/// Bytes a [`SignedRequest`] adds around the sealed request at most (the
/// CBOR map, its keys, the key and the signature), so that the largest
/// sealed request still fits one frame.
pub const SIGNED_REQUEST_OVERHEAD: usize = 256;
/// Most bytes of the account key (uncompressed SEC1).
pub const MAX_ACCOUNT_KEY: usize = 65;

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestAuthError {
    /// The bytes are not a well-formed signed request, or the sealed request
    /// inside does not decode.
    #[error("not a signed request: {0}")]
    Malformed(#[from] SealError),
    /// The account key does not hash to the billed account, or its
    /// signature does not cover this request.
    #[error("the request is not authorized by the account it bills ({account}): {source}")]
    Account {
        /// The account the billing metadata names (hex).
        account: String,
        /// What failed.
        source: AccountError,
    },
}

/// A sealed request with the paying account's authorization: the payload
/// of a host → enclave `Request` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The sealed request's wire bytes, exactly as the client sent them
    /// ([`SealedRequest::to_cbor`]).
    pub sealed: Vec<u8>,
    /// The claims digest it was sealed to
    /// ([`crate::seal::EvidenceDigest`]).
    pub evidence: [u8; 32],
    /// The paying account's public key (SEC1).
    pub account_key: Vec<u8>,
    /// The account's signature over the request id
    /// ([`crate::account::AccountKey::sign_request`]).
    pub signature: [u8; ACCOUNT_SIGNATURE_LEN],
}

/// A request whose billed account signed it: only
/// [`SignedRequest::authorize`] makes one.
#[derive(Debug, Clone)]
pub struct AuthorizedRequest {
    sealed: SealedRequest,
    evidence: EvidenceDigest,
    meta: BillingMeta,
    request_id: RequestId,
}

impl AuthorizedRequest {
    /// The sealed request.
    pub fn sealed(&self) -> &SealedRequest {
        &self.sealed
    }

    /// Its billing metadata, decoded (not yet authenticated by the AEAD:
    /// [`crate::seal::open_request`] does that, and the account's signature
    /// already covers these bytes).
    pub fn meta(&self) -> &BillingMeta {
        &self.meta
    }

    /// The claims digest the request names as the one it was sealed to
    /// (unauthenticated until it opens under it).
    pub fn evidence(&self) -> EvidenceDigest {
        self.evidence
    }

    /// The request id the account signed.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// The account that signed and pays.
    pub fn account(&self) -> AccountId {
        AccountId(self.meta.client_account)
    }
}

impl SignedRequest {
    /// The wire form (canonical CBOR).
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("request", Value::Bytes(self.sealed.clone())),
            ("evidence", Value::Bytes(self.evidence.to_vec())),
            ("account_key", Value::Bytes(self.account_key.clone())),
            ("signature", Value::Bytes(self.signature.to_vec())),
        ]))
    }

    /// Decode strictly and canonically. The sealed request inside is only
    /// bounded here; [`authorize`](Self::authorize) decodes it.
    pub fn from_cbor(bytes: &[u8]) -> Result<SignedRequest, SealError> {
        let mut m = MapReader::new(
            cbor::decode(bytes, MAX_SEALED_REQUEST + SIGNED_REQUEST_OVERHEAD)?,
            "signed_request",
        )?;
        let r = SignedRequest {
            sealed: m.bytes("request")?,
            evidence: m.array::<32>("evidence")?,
            account_key: m.bytes("account_key")?,
            signature: m.array::<ACCOUNT_SIGNATURE_LEN>("signature")?,
        };
        m.finish()?;
        if r.sealed.len() > MAX_SEALED_REQUEST {
            return Err(SealError::TooLarge {
                what: "signed_request.request",
                got: r.sealed.len(),
                limit: MAX_SEALED_REQUEST,
            });
        }
        if r.account_key.len() > MAX_ACCOUNT_KEY {
            return Err(SealError::TooLarge {
                what: "signed_request.account_key",
                got: r.account_key.len(),
                limit: MAX_ACCOUNT_KEY,
            });
        }
        if r.to_cbor() != bytes {
            return Err(SealError::NotCanonical("signed_request"));
        }
        Ok(r)
    }

    /// Decode a signed request and check that the account its billing
    /// metadata names signed exactly this sealed request: SHA-256 of the
    /// key is the account, and the signature over the request id verifies
    /// (low S).
    pub fn authorize(bytes: &[u8]) -> Result<AuthorizedRequest, RequestAuthError> {
        let signed = SignedRequest::from_cbor(bytes)?;
        let sealed = SealedRequest::from_cbor(&signed.sealed)?;
        let meta = sealed.billing_meta()?;
        let request_id = sealed.request_id();
        let account = AccountId(meta.client_account);
        verify_request_auth(
            &signed.account_key,
            &account,
            &request_id,
            &signed.signature,
        )
        .map_err(|source| RequestAuthError::Account {
            account: account.to_string(),
            source,
        })?;
        Ok(AuthorizedRequest {
            sealed,
            evidence: EvidenceDigest(signed.evidence),
            meta,
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountKey;
    use crate::seal::tests::meta;
    use crate::seal::{seal_request, EvidenceDigest, HpkeSecretKey};
    use rand_core::OsRng;

    fn sealed_for(account: &AccountKey) -> SealedRequest {
        let sk = HpkeSecretKey::generate(&mut OsRng);
        let mut m = meta();
        m.client_account = account.id().0;
        seal_request(
            sk.public_key(),
            &EvidenceDigest::of_claims(b"c"),
            &m,
            b"body",
            &mut OsRng,
        )
        .unwrap()
        .0
    }

    fn signed(by: &AccountKey, sealed: &SealedRequest) -> SignedRequest {
        SignedRequest {
            sealed: sealed.to_cbor(),
            evidence: [5; 32],
            account_key: by.public_key_sec1(),
            signature: by.sign_request(&sealed.request_id()),
        }
    }

    #[test]
    fn the_billed_account_must_sign_this_request() {
        let victim = AccountKey::generate(&mut OsRng);
        let host = AccountKey::generate(&mut OsRng);
        let sealed = sealed_for(&victim);
        let good = signed(&victim, &sealed);
        let ok = SignedRequest::authorize(&good.to_cbor()).unwrap();
        assert_eq!(ok.request_id(), sealed.request_id());
        assert_eq!(ok.evidence(), EvidenceDigest([5; 32]));
        assert_eq!(ok.account(), victim.id());
        assert_eq!(ok.sealed(), &sealed);

        // Signed by another account, naming the victim.
        let by_host = signed(&host, &sealed);
        let e = SignedRequest::authorize(&by_host.to_cbor()).unwrap_err();
        assert!(matches!(
            e,
            RequestAuthError::Account {
                source: AccountError::WrongAccount { .. },
                ..
            }
        ));
        // The victim's key with the host's signature.
        let mut mixed = by_host.clone();
        mixed.account_key = victim.public_key_sec1();
        assert!(matches!(
            SignedRequest::authorize(&mixed.to_cbor()).unwrap_err(),
            RequestAuthError::Account {
                source: AccountError::BadSignature,
                ..
            }
        ));
        // The victim's genuine signature of another request.
        let other = sealed_for(&victim);
        let mut moved = good.clone();
        moved.sealed = other.to_cbor();
        assert!(SignedRequest::authorize(&moved.to_cbor()).is_err());
        // Any bit of the sealed request changed.
        let mut flipped = good.clone();
        let n = flipped.sealed.len();
        flipped.sealed[n - 1] ^= 1;
        assert!(SignedRequest::authorize(&flipped.to_cbor()).is_err());
        // High-S signature of the right message.
        let mut garbage = good.clone();
        garbage.signature = [0xff; 64];
        assert!(SignedRequest::authorize(&garbage.to_cbor()).is_err());
    }

    /// Mutation suite: every bit of the sealed request (ciphertext, `enc`
    /// and every billing field: model, token limit, prices, account,
    /// expiry), of the key and of the signature matters.
    #[test]
    fn every_bit_of_a_signed_request_matters() {
        let a = AccountKey::generate(&mut OsRng);
        let good = signed(&a, &sealed_for(&a));
        assert!(SignedRequest::authorize(&good.to_cbor()).is_ok());
        let mut refused = 0;
        for i in 0..good.sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut m = good.clone();
                m.sealed[i] ^= bit;
                assert!(
                    SignedRequest::authorize(&m.to_cbor()).is_err(),
                    "sealed byte {i} bit {bit:#x}"
                );
                refused += 1;
            }
        }
        for i in 0..good.account_key.len() {
            let mut m = good.clone();
            m.account_key[i] ^= 0x01;
            assert!(
                SignedRequest::authorize(&m.to_cbor()).is_err(),
                "key byte {i}"
            );
            refused += 1;
        }
        for i in 0..good.signature.len() {
            let mut m = good.clone();
            m.signature[i] ^= 0x01;
            assert!(
                SignedRequest::authorize(&m.to_cbor()).is_err(),
                "signature byte {i}"
            );
            refused += 1;
        }
        assert!(refused > 300, "{refused} mutants");
        // The evidence name is not signed: the HPKE `info` binds it, so a
        // wrong one only fails to open (the enclave's tests show that).
        let mut m = good.clone();
        m.evidence[0] ^= 1;
        assert!(SignedRequest::authorize(&m.to_cbor()).is_ok());
    }

    #[test]
    fn strict_decoding() {
        let a = AccountKey::generate(&mut OsRng);
        let good = signed(&a, &sealed_for(&a));
        let wire = good.to_cbor();
        assert_eq!(SignedRequest::from_cbor(&wire).unwrap(), good);
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(SignedRequest::from_cbor(&trailing).is_err());
        let reordered = cbor::encode(&cbor::map(vec![
            ("account_key", Value::Bytes(good.account_key.clone())),
            ("request", Value::Bytes(good.sealed.clone())),
            ("evidence", Value::Bytes(good.evidence.to_vec())),
            ("signature", Value::Bytes(good.signature.to_vec())),
        ]));
        assert!(SignedRequest::from_cbor(&reordered).is_err());
        let extra = cbor::encode(&cbor::map(vec![
            ("request", Value::Bytes(good.sealed.clone())),
            ("evidence", Value::Bytes(good.evidence.to_vec())),
            ("account_key", Value::Bytes(good.account_key.clone())),
            ("signature", Value::Bytes(good.signature.to_vec())),
            ("x", Value::Null),
        ]));
        assert!(SignedRequest::from_cbor(&extra).is_err());
        let long_key = cbor::encode(&cbor::map(vec![
            ("request", Value::Bytes(good.sealed.clone())),
            ("evidence", Value::Bytes(good.evidence.to_vec())),
            ("account_key", Value::Bytes(vec![4; 66])),
            ("signature", Value::Bytes(good.signature.to_vec())),
        ]));
        assert!(matches!(
            SignedRequest::from_cbor(&long_key),
            Err(SealError::TooLarge { .. })
        ));
        for cut in 0..wire.len() {
            assert!(SignedRequest::authorize(&wire[..cut]).is_err());
        }
    }

    #[test]
    fn the_largest_signed_request_fits_one_frame() {
        let a = AccountKey::generate(&mut OsRng);
        let s = SignedRequest {
            sealed: vec![0; MAX_SEALED_REQUEST],
            evidence: [0xff; 32],
            account_key: a.public_key_sec1(),
            signature: [1; 64],
        };
        assert!(s.to_cbor().len() <= crate::frame::MAX_PAYLOAD);
    }
}
