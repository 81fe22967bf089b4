//! Request sealing: a client encrypts a request so that only the enclave
//! whose evidence it verified can read it.
//!
//! Owns the HPKE suite and key types, the billing metadata the host may see
//! ([`BillingMeta`]), the sealed request's wire form ([`SealedRequest`]) and
//! the [`RequestId`] derived from it. It does not verify evidence (the
//! verifier does; the client passes in the key and digest of a
//! `VerifiedEnclave`), and it knows nothing about transport.
//!
//! # Suite
//!
//! HPKE (RFC 9180) in base mode with
//! **DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM** (KEM 0x0020,
//! KDF 0x0001, AEAD 0x0002):
//!
//! * X25519: every request pays one encapsulation, and X25519 costs about a
//!   third of P-256's DH with the `hpke` crate (see the `protocol` bench);
//!   keys are 32 fixed bytes with no point-validation corner cases.
//! * HKDF-SHA256: the KDF RFC 9180 pairs with this KEM, and the one the
//!   response key schedule ([`crate::stream`]) runs through the HPKE
//!   exporter.
//! * AES-256-GCM: 256-bit keys, hardware AES on every TEE host, and the same
//!   primitive as the response stream, so one AES implementation is audited.
//!
//! The suite is fixed by the protocol version: it is not negotiated and not
//! sent on the wire. A new suite means a new `info` label
//! (`cocoon-request-v2`), which no v1 enclave can open.
//!
//! # Binding
//!
//! ```text
//! info = "cocoon-request-v1" || evidence_digest        (17 + 32 bytes)
//! evidence_digest = SHA-256(claims_cbor)               (EvidenceBundle::claims_cbor)
//! aad  = meta_cbor                                     (canonical CBOR of BillingMeta)
//! ```
//!
//! The evidence digest covers the claims, not the whole bundle: the claims
//! are the attested statement (bound into the hardware report as
//! `SHA-512("cocoon-claims-v1" || claims_cbor)`) that names this HPKE key, the
//! receipt key, the image, the models and the epoch. Binding them into
//! `info` means a request opens only in an enclave that holds the key *and*
//! agrees it published exactly those claims: evidence swapped in from
//! another enclave or an older epoch makes the open fail, even if a key were
//! reused. The rest of the bundle (certificate chains, TDX collateral) is
//! evidence *about* the claims, may be refreshed or re-encoded by the host
//! without the enclave's statement changing, and is not known to the
//! enclave byte for byte.
//!
//! The AEAD's associated data is the billing metadata's canonical CBOR, so
//! the host can read (and bill by) the model, token limit, price quote and
//! account, but any change to them makes the enclave refuse the request.
//!
//! # Wire
//!
//! [`SealedRequest`] is a CBOR map `{"enc": bstr .size 32, "meta": bstr
//! (meta_cbor), "ciphertext": bstr}` in that key order. Decoding is strict
//! (unknown keys, trailing bytes, sizes over the limits) and canonical: the
//! bytes must be exactly what [`SealedRequest::to_cbor`] writes, so the host,
//! the enclave and the client all derive the same [`RequestId`] =
//! SHA-256(wire bytes).

use ciborium::Value;
use cocoon_attestation::bundle::EvidenceBundle;
use cocoon_attestation::cbor::{self, CborError, MapReader};
use hpke::kem::Kem as _;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::receipt::UnitPrice;
use crate::RequestId;

/// The HPKE KEM: DHKEM(X25519, HKDF-SHA256).
pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
/// The HPKE KDF: HKDF-SHA256.
pub(crate) type Kdf = hpke::kdf::HkdfSha256;
/// The HPKE AEAD: AES-256-GCM.
pub(crate) type Aead = hpke::aead::AesGcm256;
/// The sender's HPKE context, kept by the client for the response.
pub(crate) type SenderContext = hpke::aead::AeadCtxS<Aead, Kdf, Kem>;
/// The receiver's HPKE context, kept by the enclave for the response.
pub(crate) type ReceiverContext = hpke::aead::AeadCtxR<Aead, Kdf, Kem>;

/// Label at the start of `info`.
pub const REQUEST_INFO_LABEL: &[u8] = b"cocoon-request-v1";
/// Length of an HPKE public key and of `enc` (X25519).
pub const HPKE_PUBLIC_KEY_LEN: usize = 32;
/// Length of the AEAD tag on the request ciphertext.
pub const REQUEST_TAG_LEN: usize = 16;
/// Most bytes of encoded billing metadata.
pub const MAX_META: usize = 1024;
/// Most bytes of a model name (also the limit in receipts).
pub const MAX_MODEL_NAME: usize = 128;
/// Most bytes of a price quote id.
pub const MAX_PRICE_QUOTE_ID: usize = 128;
/// Most bytes of a sealed request's wire form: one frame's payload, less
/// the room the account's key and signature take around it
/// ([`crate::request::SignedRequest`]).
pub const MAX_SEALED_REQUEST: usize =
    crate::frame::MAX_PAYLOAD - crate::request::SIGNED_REQUEST_OVERHEAD;
/// Room left in [`MAX_SEALED_REQUEST`] for `enc`, the metadata, the tag and
/// the CBOR around them.
const SEALED_OVERHEAD: usize = 64 + MAX_META + REQUEST_TAG_LEN;
/// Most bytes of request plaintext.
pub const MAX_REQUEST_PLAINTEXT: usize = MAX_SEALED_REQUEST - SEALED_OVERHEAD;

/// Why a request cannot be sealed, decoded or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Bytes are not a well-formed, canonical sealed request or metadata.
    #[error("sealed request: {0}")]
    Cbor(#[from] CborError),
    /// The same value encoded differently from this crate's canonical form.
    #[error("{0}: not in canonical encoding")]
    NotCanonical(&'static str),
    /// A field over its limit.
    #[error("{what} is {got} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a valid HPKE public key.
    #[error("invalid HPKE public key (expected {HPKE_PUBLIC_KEY_LEN} bytes of X25519)")]
    BadPublicKey,
    /// HPKE encapsulation failed (the recipient key is a low-order point).
    #[error("HPKE encapsulation to the enclave key failed")]
    Encapsulation,
    /// The request does not open: wrong key, wrong evidence digest, or
    /// ciphertext, `enc` or billing metadata changed in transit.
    #[error("sealed request does not open under this enclave key and evidence digest (wrong enclave, or tampered ciphertext or metadata)")]
    Open,
}

/// SHA-256 of the enclave's claims CBOR: what `info` binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EvidenceDigest(pub [u8; 32]);

impl EvidenceDigest {
    /// The digest of exactly these claims bytes (as carried in the bundle
    /// and hashed into report data).
    pub fn of_claims(claims_cbor: &[u8]) -> EvidenceDigest {
        EvidenceDigest(Sha256::digest(claims_cbor).into())
    }

    /// The digest of a bundle's claims.
    pub fn of_bundle(bundle: &EvidenceBundle) -> EvidenceDigest {
        EvidenceDigest::of_claims(&bundle.claims_cbor)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The enclave's HPKE public key (X25519), as its claims carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct HpkePublicKey(<Kem as hpke::Kem>::PublicKey);

impl HpkePublicKey {
    /// Parse the claims' `hpke_public_key` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<HpkePublicKey, SealError> {
        if bytes.len() != HPKE_PUBLIC_KEY_LEN {
            return Err(SealError::BadPublicKey);
        }
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(HpkePublicKey)
            .map_err(|_| SealError::BadPublicKey)
    }

    /// The key's 32 bytes, for the claims.
    pub fn to_bytes(&self) -> [u8; HPKE_PUBLIC_KEY_LEN] {
        let mut out = [0u8; HPKE_PUBLIC_KEY_LEN];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }
}

impl std::fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HpkePublicKey(")?;
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The enclave's HPKE private key. Made at boot, never serialized, zeroed
/// on drop (by `x25519-dalek`).
#[derive(Clone)]
pub struct HpkeSecretKey {
    sk: <Kem as hpke::Kem>::PrivateKey,
    pk: HpkePublicKey,
}

impl HpkeSecretKey {
    /// A fresh key pair.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> HpkeSecretKey {
        let (sk, pk) = Kem::gen_keypair(rng);
        HpkeSecretKey {
            sk,
            pk: HpkePublicKey(pk),
        }
    }

    /// The key pair RFC 9180 `DeriveKeyPair` makes from `ikm` (at least 32
    /// bytes of secret entropy). For known-answer tests and deterministic
    /// fixtures; an enclave uses [`generate`](HpkeSecretKey::generate).
    pub fn derive(ikm: &[u8]) -> HpkeSecretKey {
        let (sk, pk) = Kem::derive_keypair(ikm);
        HpkeSecretKey {
            sk,
            pk: HpkePublicKey(pk),
        }
    }

    /// The public half, for the claims.
    pub fn public_key(&self) -> &HpkePublicKey {
        &self.pk
    }
}

impl std::fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HpkeSecretKey")
            .field("public_key", &self.pk)
            .finish_non_exhaustive()
    }
}

/// What the host may see about a request, bound as the AEAD's associated
/// data: enough to route, price and bill it, nothing of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingMeta {
    /// Model asked for (a name in the claims' model digests).
    pub model: String,
    /// Most completion tokens the client will pay for.
    pub max_tokens: u32,
    /// The price quote the client accepted.
    pub price_quote_id: String,
    /// The prices per token the client accepts: the provider's base
    /// prices for `model` scaled by `multiplier_milli`
    /// ([`UnitPrice::scaled`]). The enclave charges exactly these, and
    /// refuses the request when they are not its measured base prices under
    /// a multiplier inside its measured bounds.
    pub unit_price: UnitPrice,
    /// The load multiplier (thousandths) of the accepted prices.
    pub multiplier_milli: u32,
    /// The paying account (hash of the account's public key).
    pub client_account: [u8; 32],
    /// When the request lapses, in Unix seconds by the enclave's clock. The
    /// enclave refuses a request at or after this time, and one that would
    /// live longer than its measured maximum lifetime; it remembers every id
    /// it served until the id's expiry, so a request is served (and billed)
    /// at most once per enclave boot ([`check_lifetime`](Self::check_lifetime)).
    pub expires_at: u64,
}

impl BillingMeta {
    /// Canonical CBOR: `{"model", "max_tokens", "price_quote_id",
    /// "unit_price": {"prompt", "cached", "completion"}, "multiplier_milli",
    /// "client_account", "expires_at"}` in that order.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("model", Value::Text(self.model.clone())),
            ("max_tokens", Value::Integer(self.max_tokens.into())),
            ("price_quote_id", Value::Text(self.price_quote_id.clone())),
            ("unit_price", self.unit_price.to_cbor_value()),
            (
                "multiplier_milli",
                Value::Integer(self.multiplier_milli.into()),
            ),
            ("client_account", Value::Bytes(self.client_account.to_vec())),
            ("expires_at", Value::Integer(self.expires_at.into())),
        ]))
    }

    /// Decode strictly: unknown or missing keys, wrong types, sizes over the
    /// limits and non-canonical encodings are errors.
    pub fn from_cbor(bytes: &[u8]) -> Result<BillingMeta, SealError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_META)?, "billing_meta")?;
        let max_tokens = u32::try_from(m.u64("max_tokens")?).map_err(|_| {
            CborError::Invalid(
                "billing_meta.max_tokens".into(),
                "does not fit in 32 bits".into(),
            )
        })?;
        let model = m.text("model")?;
        let price_quote_id = m.text("price_quote_id")?;
        let unit_price =
            UnitPrice::from_cbor_value(m.take("unit_price")?, "billing_meta.unit_price")?;
        let multiplier_milli = u32::try_from(m.u64("multiplier_milli")?).map_err(|_| {
            CborError::Invalid(
                "billing_meta.multiplier_milli".into(),
                "does not fit in 32 bits".into(),
            )
        })?;
        let meta = BillingMeta {
            model,
            max_tokens,
            price_quote_id,
            unit_price,
            multiplier_milli,
            client_account: m.array::<32>("client_account")?,
            expires_at: m.u64("expires_at")?,
        };
        m.finish()?;
        meta.check_limits()?;
        if meta.to_cbor() != bytes {
            return Err(SealError::NotCanonical("billing_meta"));
        }
        Ok(meta)
    }

    /// Whether the request may still be served at `now` (Unix seconds) by
    /// an enclave whose measured maximum request lifetime is
    /// `max_lifetime_secs`: it must not have expired (`now < expires_at`),
    /// and its expiry must not lie more than `max_lifetime_secs` ahead, so
    /// the enclave never has to remember an id for longer than that.
    pub fn check_lifetime(&self, now: u64, max_lifetime_secs: u64) -> Result<(), LifetimeError> {
        if self.expires_at <= now {
            return Err(LifetimeError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        if self.expires_at - now > max_lifetime_secs {
            return Err(LifetimeError::TooFarAhead {
                expires_at: self.expires_at,
                now,
                max_lifetime_secs,
            });
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<(), SealError> {
        limit("billing_meta.model", self.model.len(), MAX_MODEL_NAME)?;
        limit(
            "billing_meta.price_quote_id",
            self.price_quote_id.len(),
            MAX_PRICE_QUOTE_ID,
        )
    }
}

/// How long a client makes its requests live by default (seconds): well
/// inside the enclave's default maximum ([`DEFAULT_MAX_REQUEST_LIFETIME_SECS`])
/// so that a few minutes of clock skew between client and enclave do not
/// refuse it.
pub const DEFAULT_REQUEST_LIFETIME_SECS: u64 = 300;
/// The enclave's default maximum request lifetime (seconds); its measured
/// configuration may lower or raise it.
pub const DEFAULT_MAX_REQUEST_LIFETIME_SECS: u64 = 600;

/// Why a request's expiry refuses it ([`BillingMeta::check_lifetime`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimeError {
    /// The request lapsed.
    #[error("the request expired at {expires_at} (Unix seconds); the enclave's time is {now}")]
    Expired {
        /// The request's expiry.
        expires_at: u64,
        /// The enclave's time.
        now: u64,
    },
    /// The request would outlive the enclave's maximum lifetime.
    #[error(
        "the request expires at {expires_at} (Unix seconds), more than the enclave's maximum \
         request lifetime of {max_lifetime_secs} s after its time {now}"
    )]
    TooFarAhead {
        /// The request's expiry.
        expires_at: u64,
        /// The enclave's time.
        now: u64,
        /// The enclave's measured maximum.
        max_lifetime_secs: u64,
    },
}

fn limit(what: &'static str, got: usize, limit: usize) -> Result<(), SealError> {
    if got > limit {
        return Err(SealError::TooLarge { what, got, limit });
    }
    Ok(())
}

/// A request as the host carries it: readable billing metadata, opaque
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRequest {
    /// HPKE encapsulated key (X25519, 32 bytes).
    pub enc: [u8; HPKE_PUBLIC_KEY_LEN],
    /// Canonical CBOR of [`BillingMeta`]: the AEAD's associated data.
    pub meta_cbor: Vec<u8>,
    /// The request body sealed with AES-256-GCM (tag appended).
    pub ciphertext: Vec<u8>,
}

impl SealedRequest {
    /// The wire form (canonical CBOR).
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("enc", Value::Bytes(self.enc.to_vec())),
            ("meta", Value::Bytes(self.meta_cbor.clone())),
            ("ciphertext", Value::Bytes(self.ciphertext.clone())),
        ]))
    }

    /// Decode the wire form strictly and canonically (see the module doc).
    /// The metadata is checked to decode too, so the host can bill by it;
    /// the ciphertext is not touched.
    pub fn from_cbor(bytes: &[u8]) -> Result<SealedRequest, SealError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_SEALED_REQUEST)?, "sealed_request")?;
        let r = SealedRequest {
            enc: m.array::<HPKE_PUBLIC_KEY_LEN>("enc")?,
            meta_cbor: m.bytes("meta")?,
            ciphertext: m.bytes("ciphertext")?,
        };
        m.finish()?;
        limit("sealed_request.meta", r.meta_cbor.len(), MAX_META)?;
        limit(
            "sealed_request.ciphertext",
            r.ciphertext.len(),
            MAX_REQUEST_PLAINTEXT + REQUEST_TAG_LEN,
        )?;
        if r.ciphertext.len() < REQUEST_TAG_LEN {
            return Err(CborError::Invalid(
                "sealed_request.ciphertext".into(),
                "shorter than the AEAD tag".into(),
            )
            .into());
        }
        BillingMeta::from_cbor(&r.meta_cbor)?;
        if r.to_cbor() != bytes {
            return Err(SealError::NotCanonical("sealed_request"));
        }
        Ok(r)
    }

    /// The billing metadata, decoded (what the host bills by).
    pub fn billing_meta(&self) -> Result<BillingMeta, SealError> {
        BillingMeta::from_cbor(&self.meta_cbor)
    }

    /// SHA-256 of the wire form.
    pub fn request_id(&self) -> RequestId {
        RequestId(Sha256::digest(self.to_cbor()).into())
    }
}

fn info(evidence: &EvidenceDigest) -> [u8; REQUEST_INFO_LABEL.len() + 32] {
    let mut info = [0u8; REQUEST_INFO_LABEL.len() + 32];
    info[..REQUEST_INFO_LABEL.len()].copy_from_slice(REQUEST_INFO_LABEL);
    info[REQUEST_INFO_LABEL.len()..].copy_from_slice(&evidence.0);
    info
}

/// The client's side of one request: what it needs to read the response.
pub struct ClientSession {
    pub(crate) request_id: RequestId,
    pub(crate) ctx: SenderContext,
}

impl ClientSession {
    /// The request this session belongs to.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// The enclave's side of one opened request: what it needs to seal the
/// response.
pub struct EnclaveSession {
    pub(crate) request_id: RequestId,
    pub(crate) ctx: ReceiverContext,
}

impl EnclaveSession {
    /// The request this session belongs to (the id its receipt names).
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }
}

impl std::fmt::Debug for EnclaveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveSession")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// Client: seal `plaintext` to the enclave key named in verified claims
/// whose digest is `evidence`, with `meta` visible to the host.
pub fn seal_request(
    enclave_hpke_pk: &HpkePublicKey,
    evidence: &EvidenceDigest,
    meta: &BillingMeta,
    plaintext: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<(SealedRequest, ClientSession), SealError> {
    meta.check_limits()?;
    limit("request plaintext", plaintext.len(), MAX_REQUEST_PLAINTEXT)?;
    let meta_cbor = meta.to_cbor();
    limit("billing_meta", meta_cbor.len(), MAX_META)?;
    let (enc, mut ctx) = hpke::setup_sender::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &enclave_hpke_pk.0,
        &info(evidence),
        rng,
    )
    .map_err(|_| SealError::Encapsulation)?;
    let ciphertext = ctx
        .seal(plaintext, &meta_cbor)
        .map_err(|_| SealError::Encapsulation)?;
    let mut enc_bytes = [0u8; HPKE_PUBLIC_KEY_LEN];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    let request = SealedRequest {
        enc: enc_bytes,
        meta_cbor,
        ciphertext,
    };
    let session = ClientSession {
        request_id: request.request_id(),
        ctx,
    };
    Ok((request, session))
}

/// Enclave: open a request sealed to `hpke_sk` under this enclave's own
/// claims digest. Returns the authenticated billing metadata, the request
/// body and the session for the response.
pub fn open_request(
    hpke_sk: &HpkeSecretKey,
    evidence: &EvidenceDigest,
    request: &SealedRequest,
) -> Result<(BillingMeta, Vec<u8>, EnclaveSession), SealError> {
    limit("sealed_request.meta", request.meta_cbor.len(), MAX_META)?;
    limit(
        "sealed_request.ciphertext",
        request.ciphertext.len(),
        MAX_REQUEST_PLAINTEXT + REQUEST_TAG_LEN,
    )?;
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&request.enc).map_err(|_| SealError::Open)?;
    let mut ctx =
        hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &hpke_sk.sk, &enc, &info(evidence))
            .map_err(|_| SealError::Open)?;
    let plaintext = ctx
        .open(&request.ciphertext, &request.meta_cbor)
        .map_err(|_| SealError::Open)?;
    // Authenticated first, parsed second.
    let meta = BillingMeta::from_cbor(&request.meta_cbor)?;
    let session = EnclaveSession {
        request_id: request.request_id(),
        ctx,
    };
    Ok((meta, plaintext, session))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rng() -> rand_core::OsRng {
        rand_core::OsRng
    }

    pub(crate) fn meta() -> BillingMeta {
        BillingMeta {
            model: "minilm".into(),
            max_tokens: 256,
            price_quote_id: "q-2026-11-23-1".into(),
            unit_price: UnitPrice {
                prompt: 150,
                cached: 40,
                completion: 450,
            },
            multiplier_milli: 1500,
            client_account: [0xac; 32],
            expires_at: 1_800_000_000,
        }
    }

    #[test]
    fn lifetime() {
        let m = meta();
        let e = m.expires_at;
        assert_eq!(m.check_lifetime(e - 600, 600), Ok(()));
        assert_eq!(m.check_lifetime(e - 1, 600), Ok(()));
        assert!(matches!(
            m.check_lifetime(e, 600),
            Err(LifetimeError::Expired { .. })
        ));
        assert!(matches!(
            m.check_lifetime(e + 5, 600),
            Err(LifetimeError::Expired { .. })
        ));
        assert!(matches!(
            m.check_lifetime(e - 601, 600),
            Err(LifetimeError::TooFarAhead { .. })
        ));
        assert!(matches!(
            m.check_lifetime(0, 600),
            Err(LifetimeError::TooFarAhead { .. })
        ));
    }

    #[test]
    fn round_trip() {
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let pk = HpkePublicKey::from_bytes(&sk.public_key().to_bytes()).unwrap();
        let digest = EvidenceDigest::of_claims(b"claims");
        let (req, client) = seal_request(&pk, &digest, &meta(), b"hello", &mut rng).unwrap();
        let wire = req.to_cbor();
        let decoded = SealedRequest::from_cbor(&wire).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(decoded.billing_meta().unwrap(), meta());
        let (m, body, enclave) = open_request(&sk, &digest, &decoded).unwrap();
        assert_eq!(m, meta());
        assert_eq!(body, b"hello");
        let id = RequestId(Sha256::digest(&wire).into());
        assert_eq!(client.request_id(), id);
        assert_eq!(enclave.request_id(), id);
        assert!(format!("{client:?}").contains(&id.to_string()));
        assert!(!format!("{sk:?}").contains("sk"));
    }

    #[test]
    fn tampering_is_refused() {
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let digest = EvidenceDigest::of_claims(b"claims");
        let (req, _) = seal_request(sk.public_key(), &digest, &meta(), b"hello", &mut rng).unwrap();

        for i in 0..req.ciphertext.len() * 8 {
            let mut r = req.clone();
            r.ciphertext[i / 8] ^= 1 << (i % 8);
            assert_eq!(open_request(&sk, &digest, &r).unwrap_err(), SealError::Open);
        }
        for i in 0..32 * 8 {
            let mut r = req.clone();
            r.enc[i / 8] ^= 1 << (i % 8);
            assert!(open_request(&sk, &digest, &r).is_err());
        }
        // Metadata changed by the host, still well formed: refused.
        let mut inflated = meta();
        inflated.max_tokens = 100_000;
        let mut r = req.clone();
        r.meta_cbor = inflated.to_cbor();
        assert_eq!(open_request(&sk, &digest, &r).unwrap_err(), SealError::Open);
        for i in 0..req.meta_cbor.len() * 8 {
            let mut r = req.clone();
            r.meta_cbor[i / 8] ^= 1 << (i % 8);
            assert!(open_request(&sk, &digest, &r).is_err());
        }
        // Wrong evidence digest; wrong enclave key.
        let other = EvidenceDigest::of_claims(b"other claims");
        assert_eq!(
            open_request(&sk, &other, &req).unwrap_err(),
            SealError::Open
        );
        let sk2 = HpkeSecretKey::generate(&mut rng);
        assert_eq!(
            open_request(&sk2, &digest, &req).unwrap_err(),
            SealError::Open
        );
        // Truncated ciphertext.
        let mut r = req.clone();
        r.ciphertext.truncate(3);
        assert!(open_request(&sk, &digest, &r).is_err());
    }

    #[test]
    fn strict_wire() {
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let digest = EvidenceDigest::of_claims(b"claims");
        let (req, _) = seal_request(sk.public_key(), &digest, &meta(), b"x", &mut rng).unwrap();
        let wire = req.to_cbor();
        for cut in 0..wire.len() {
            assert!(SealedRequest::from_cbor(&wire[..cut]).is_err());
        }
        let mut trailing = wire.clone();
        trailing.push(0);
        assert!(SealedRequest::from_cbor(&trailing).is_err());
        // Unknown key.
        let unknown = cbor::encode(&cbor::map(vec![
            ("enc", Value::Bytes(req.enc.to_vec())),
            ("meta", Value::Bytes(req.meta_cbor.clone())),
            ("ciphertext", Value::Bytes(req.ciphertext.clone())),
            ("extra", Value::Bool(true)),
        ]));
        assert!(matches!(
            SealedRequest::from_cbor(&unknown),
            Err(SealError::Cbor(CborError::UnknownKey(_)))
        ));
        // Same content, other key order: not canonical.
        let reordered = cbor::encode(&cbor::map(vec![
            ("meta", Value::Bytes(req.meta_cbor.clone())),
            ("enc", Value::Bytes(req.enc.to_vec())),
            ("ciphertext", Value::Bytes(req.ciphertext.clone())),
        ]));
        assert_eq!(
            SealedRequest::from_cbor(&reordered),
            Err(SealError::NotCanonical("sealed_request"))
        );
        // Metadata that does not decode.
        let mut bad = req.clone();
        bad.meta_cbor = vec![0xa0];
        assert!(SealedRequest::from_cbor(&bad.to_cbor()).is_err());
        // Wrong enc length.
        let short_enc = cbor::encode(&cbor::map(vec![
            ("enc", Value::Bytes(vec![1; 31])),
            ("meta", Value::Bytes(req.meta_cbor.clone())),
            ("ciphertext", Value::Bytes(req.ciphertext.clone())),
        ]));
        assert!(SealedRequest::from_cbor(&short_enc).is_err());
    }

    #[test]
    fn meta_strictness() {
        let m = meta();
        assert_eq!(BillingMeta::from_cbor(&m.to_cbor()).unwrap(), m);
        let big = cbor::encode(&cbor::map(vec![
            ("model", Value::Text("m".into())),
            ("max_tokens", Value::Integer((1u64 << 32).into())),
            ("price_quote_id", Value::Text("q".into())),
            ("client_account", Value::Bytes(vec![0; 32])),
        ]));
        assert!(BillingMeta::from_cbor(&big).is_err());
        let mut long = m.clone();
        long.model = "m".repeat(MAX_MODEL_NAME + 1);
        assert!(matches!(
            BillingMeta::from_cbor(&long.to_cbor()),
            Err(SealError::TooLarge { .. })
        ));
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let d = EvidenceDigest::of_claims(b"");
        assert!(seal_request(sk.public_key(), &d, &long, b"", &mut rng).is_err());
        let huge = vec![0u8; MAX_REQUEST_PLAINTEXT + 1];
        assert!(seal_request(sk.public_key(), &d, &m, &huge, &mut rng).is_err());
        // The largest request fits in one frame.
        let most = vec![0u8; MAX_REQUEST_PLAINTEXT];
        let mut longest = m.clone();
        longest.model = "m".repeat(MAX_MODEL_NAME);
        longest.price_quote_id = "q".repeat(MAX_PRICE_QUOTE_ID);
        let (req, _) = seal_request(sk.public_key(), &d, &longest, &most, &mut rng).unwrap();
        let wire = req.to_cbor();
        assert!(wire.len() <= MAX_SEALED_REQUEST);
        assert_eq!(SealedRequest::from_cbor(&wire).unwrap(), req);
    }

    #[test]
    fn public_key_parsing() {
        assert!(HpkePublicKey::from_bytes(&[0; 31]).is_err());
        assert!(HpkePublicKey::from_bytes(&[0; 33]).is_err());
        let sk = HpkeSecretKey::derive(&[7; 32]);
        assert_eq!(
            HpkeSecretKey::derive(&[7; 32]).public_key(),
            sk.public_key()
        );
        // The all-zero (low-order) point parses but cannot be sealed to.
        let zero = HpkePublicKey::from_bytes(&[0; 32]).unwrap();
        let r = seal_request(
            &zero,
            &EvidenceDigest::of_claims(b""),
            &meta(),
            b"",
            &mut rng(),
        );
        assert_eq!(r.unwrap_err(), SealError::Encapsulation);
    }
}
