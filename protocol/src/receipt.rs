//! Usage receipts: what the enclave signs for every request it served, so
//! that a host cannot bill for work the enclave did not do and a client can
//! check what it was billed.
//!
//! Owns the receipt's content ([`UsageReceipt`]), its signed wire form and
//! both ends of the signature ([`ReceiptSigner`] in the enclave,
//! [`ReceiptVerifier`] / [`verify_receipt`] in the client and the host's
//! ledger). The verifying key comes from verified claims
//! (`Claims::receipt_public_key`); this module does not check where a key
//! came from.
//!
//! # Wire
//!
//! A tagged COSE_Sign1 (RFC 9052, CBOR tag 18):
//!
//! * protected header: exactly `{1 (alg): -7 (ES256)}`; the unprotected
//!   header is empty;
//! * payload: the canonical CBOR of [`UsageReceipt`] (text keys, fixed
//!   order, see [`UsageReceipt::to_cbor`]);
//! * external AAD: `"cocoon-receipt-v1"`, so no other COSE object signed by
//!   the same key can pass for a receipt;
//! * signature: ECDSA P-256 with SHA-256 over the Sig_structure, 64 bytes
//!   `r ‖ s`, with low S (the verifier refuses high-S twins, so a receipt
//!   has one valid encoding).
//!
//! Verification refuses a wrong algorithm, any extra header, a detached or
//! malformed payload, unknown keys, trailing bytes, inputs over
//! [`MAX_RECEIPT`], inconsistent totals and a bad signature.

use ciborium::Value;
use cocoon_attestation::cbor::{self, CborError, MapReader};
use coset::{iana, AsCborValue, CoseSign1, CoseSign1Builder, HeaderBuilder};
use p256::ecdsa::signature::Signer as _;
#[cfg(not(feature = "aws-lc"))]
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};

use crate::seal::MAX_MODEL_NAME;
use crate::RequestId;

/// External AAD of the COSE signature.
pub const RECEIPT_AAD: &[u8] = b"cocoon-receipt-v1";
/// Most bytes of a signed receipt.
pub const MAX_RECEIPT: usize = 2048;
/// CBOR tag of COSE_Sign1.
const COSE_SIGN1_TAG: u64 = 18;
/// Length of an uncompressed SEC1 P-256 public key.
pub const RECEIPT_PUBLIC_KEY_LEN: usize = 65;

/// Why a receipt cannot be signed or is not a valid receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The bytes are not a well-formed receipt (CBOR, COSE or payload).
    #[error("receipt: {0}")]
    Cbor(#[from] CborError),
    /// Well-formed COSE that is not what a receipt must be.
    #[error("receipt: {0}")]
    Cose(String),
    /// The protected header names another algorithm than ES256.
    #[error("receipt: signature algorithm is not ES256")]
    WrongAlgorithm,
    /// The signature does not verify under the given key.
    #[error("receipt signature does not verify under the attested receipt key")]
    BadSignature,
    /// The verifying key is not a P-256 SEC1 public key.
    #[error("receipt public key is not a valid P-256 SEC1 key")]
    BadPublicKey,
    /// The signing key is not a P-256 scalar in range.
    #[error("receipt signing key is not a valid P-256 scalar")]
    BadSigningKey,
    /// The payload's numbers do not add up, or a field is over its limit.
    #[error("receipt: {0}")]
    Inconsistent(String),
    /// The payload is not in canonical encoding.
    #[error("receipt payload is not in canonical encoding")]
    NotCanonical,
}

/// Price per token, in nanoton, by kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitPrice {
    /// Nanoton per prompt (input) token that had to be computed.
    pub prompt: u64,
    /// Nanoton per prompt token served from a cache (a prefix the backend
    /// had already computed).
    pub cached: u64,
    /// Nanoton per completion (output) token.
    pub completion: u64,
}

/// A multiplier of 1, in thousandths.
pub const MULTIPLIER_ONE: u32 = 1000;

impl UnitPrice {
    /// These (base) prices under a load multiplier in thousandths, each
    /// rounded down: `floor(base × multiplier_milli / 1000)`. `None` on
    /// overflow.
    pub fn scaled(&self, multiplier_milli: u32) -> Option<UnitPrice> {
        let f = |p: u64| -> Option<u64> {
            u64::try_from(u128::from(p) * u128::from(multiplier_milli) / 1000).ok()
        };
        Some(UnitPrice {
            prompt: f(self.prompt)?,
            cached: f(self.cached)?,
            completion: f(self.completion)?,
        })
    }

    /// CBOR map `{"prompt", "cached", "completion"}`.
    pub fn to_cbor_value(&self) -> Value {
        cbor::map(vec![
            ("prompt", Value::Integer(self.prompt.into())),
            ("cached", Value::Integer(self.cached.into())),
            ("completion", Value::Integer(self.completion.into())),
        ])
    }

    /// Decode the map [`UnitPrice::to_cbor_value`] writes, strictly.
    pub fn from_cbor_value(v: Value, what: &str) -> Result<UnitPrice, CborError> {
        let mut p = MapReader::new(v, what)?;
        let price = UnitPrice {
            prompt: p.u64("prompt")?,
            cached: p.u64("cached")?,
            completion: p.u64("completion")?,
        };
        p.finish()?;
        Ok(price)
    }

    /// The most a request can cost at these prices, with at most
    /// `prompt_tokens` prompt tokens (all charged as computed) and
    /// `completion_tokens` completion tokens. `None` on overflow.
    pub fn max_charge(&self, prompt_tokens: u64, completion_tokens: u64) -> Option<u128> {
        let p = u128::from(prompt_tokens).checked_mul(u128::from(self.prompt.max(self.cached)))?;
        let c = u128::from(completion_tokens).checked_mul(u128::from(self.completion))?;
        p.checked_add(c)
    }
}

/// What the enclave attests it did for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReceipt {
    /// SHA-256 of the sealed request's wire bytes.
    pub request_id: RequestId,
    /// The model that served it.
    pub model: String,
    /// Prompt tokens processed (cached ones included).
    pub prompt_tokens: u64,
    /// Of the prompt tokens, those served from a cache (charged at
    /// [`UnitPrice::cached`]); at most `prompt_tokens`.
    pub cached_tokens: u64,
    /// Completion tokens produced.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// Prices applied: the ones the client accepted in the request's
    /// billing metadata.
    pub unit_price: UnitPrice,
    /// The load multiplier (thousandths) those prices include.
    pub multiplier_milli: u32,
    /// When the enclave finished the request (Unix seconds, passed in).
    pub time: u64,
    /// The enclave's receipt counter (starts at boot; strictly increasing
    /// per receipt key).
    pub enclave_seq: u64,
    /// The paying account, from the request's billing metadata.
    pub client_account: [u8; 32],
}

impl UsageReceipt {
    /// Canonical CBOR payload: `{"request_id", "model", "prompt_tokens",
    /// "cached_tokens", "completion_tokens", "total_tokens", "unit_price":
    /// {"prompt", "cached", "completion"}, "multiplier_milli", "time",
    /// "enclave_seq", "client_account"}` in that order.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("request_id", Value::Bytes(self.request_id.0.to_vec())),
            ("model", Value::Text(self.model.clone())),
            ("prompt_tokens", Value::Integer(self.prompt_tokens.into())),
            ("cached_tokens", Value::Integer(self.cached_tokens.into())),
            (
                "completion_tokens",
                Value::Integer(self.completion_tokens.into()),
            ),
            ("total_tokens", Value::Integer(self.total_tokens.into())),
            ("unit_price", self.unit_price.to_cbor_value()),
            (
                "multiplier_milli",
                Value::Integer(self.multiplier_milli.into()),
            ),
            ("time", Value::Integer(self.time.into())),
            ("enclave_seq", Value::Integer(self.enclave_seq.into())),
            ("client_account", Value::Bytes(self.client_account.to_vec())),
        ]))
    }

    /// Decode a payload strictly (unknown keys, non-canonical encodings,
    /// inconsistent totals are errors). This checks no signature: use
    /// [`verify_receipt`] on untrusted bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<UsageReceipt, ReceiptError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_RECEIPT)?, "receipt")?;
        let request_id = RequestId(m.array::<32>("request_id")?);
        let model = m.text("model")?;
        let prompt_tokens = m.u64("prompt_tokens")?;
        let cached_tokens = m.u64("cached_tokens")?;
        let completion_tokens = m.u64("completion_tokens")?;
        let total_tokens = m.u64("total_tokens")?;
        let unit_price = UnitPrice::from_cbor_value(m.take("unit_price")?, "receipt.unit_price")?;
        let multiplier_milli = u32::try_from(m.u64("multiplier_milli")?).map_err(|_| {
            CborError::Invalid(
                "receipt.multiplier_milli".into(),
                "does not fit in 32 bits".into(),
            )
        })?;
        let r = UsageReceipt {
            request_id,
            model,
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            total_tokens,
            unit_price,
            multiplier_milli,
            time: m.u64("time")?,
            enclave_seq: m.u64("enclave_seq")?,
            client_account: m.array::<32>("client_account")?,
        };
        m.finish()?;
        r.check()?;
        if r.to_cbor() != bytes {
            return Err(ReceiptError::NotCanonical);
        }
        Ok(r)
    }

    /// What the receipt charges, in nanoton: computed prompt tokens
    /// (`prompt_tokens − cached_tokens`) × prompt price + cached tokens ×
    /// cached price + completion tokens × completion price; `None` on
    /// overflow or when more tokens are cached than were prompted.
    pub fn charge_nanoton(&self) -> Option<u128> {
        let computed = self.prompt_tokens.checked_sub(self.cached_tokens)?;
        let p = u128::from(computed).checked_mul(u128::from(self.unit_price.prompt))?;
        let k = u128::from(self.cached_tokens).checked_mul(u128::from(self.unit_price.cached))?;
        let c = u128::from(self.completion_tokens)
            .checked_mul(u128::from(self.unit_price.completion))?;
        p.checked_add(k)?.checked_add(c)
    }

    fn check(&self) -> Result<(), ReceiptError> {
        if self.cached_tokens > self.prompt_tokens {
            return Err(ReceiptError::Inconsistent(format!(
                "cached_tokens {} is more than prompt_tokens {}",
                self.cached_tokens, self.prompt_tokens
            )));
        }
        if self
            .charge_nanoton()
            .is_none_or(|c| c > u128::from(u64::MAX))
        {
            return Err(ReceiptError::Inconsistent(
                "the charge does not fit in 64 bits of nanoton".into(),
            ));
        }
        if self.model.len() > MAX_MODEL_NAME {
            return Err(ReceiptError::Inconsistent(format!(
                "model name is {} bytes, more than {MAX_MODEL_NAME}",
                self.model.len()
            )));
        }
        if self.prompt_tokens.checked_add(self.completion_tokens) != Some(self.total_tokens) {
            return Err(ReceiptError::Inconsistent(format!(
                "total_tokens {} is not prompt_tokens {} + completion_tokens {}",
                self.total_tokens, self.prompt_tokens, self.completion_tokens
            )));
        }
        Ok(())
    }
}

/// What a request's billing metadata lets its receipt say: the same request
/// id, account and model, and no more completion tokens than were paid
/// for. The client and the host's ledger both hold a receipt to this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingExpectation {
    /// The request's id.
    pub request_id: RequestId,
    /// The paying account from the billing metadata.
    pub account: [u8; 32],
    /// The model from the billing metadata.
    pub model: String,
    /// The completion-token limit from the billing metadata.
    pub max_tokens: u32,
    /// The prices the client accepted.
    pub unit_price: UnitPrice,
    /// The multiplier the client accepted.
    pub multiplier_milli: u32,
}

impl BillingExpectation {
    /// The expectations a request's billing metadata sets.
    pub fn of(request_id: RequestId, meta: &crate::seal::BillingMeta) -> BillingExpectation {
        BillingExpectation {
            request_id,
            account: meta.client_account,
            model: meta.model.clone(),
            max_tokens: meta.max_tokens,
            unit_price: meta.unit_price,
            multiplier_milli: meta.multiplier_milli,
        }
    }
}

/// How a genuine receipt differs from what its request allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptMismatch {
    /// It names another request.
    #[error("receipt is for request {got}, not {expected}")]
    WrongRequest {
        /// The request it should name.
        expected: RequestId,
        /// The request it names.
        got: RequestId,
    },
    /// It bills another account.
    #[error("receipt bills account {}, not {}", hex32(got), hex32(expected))]
    WrongAccount {
        /// The account it should bill.
        expected: [u8; 32],
        /// The account it bills.
        got: [u8; 32],
    },
    /// It names another model.
    #[error("receipt names model {got:?}, not {expected:?}")]
    WrongModel {
        /// The model asked for.
        expected: String,
        /// The model it names.
        got: String,
    },
    /// More completion tokens than the request paid for.
    #[error("receipt bills {got} completion tokens, more than the {max} paid for")]
    TooManyTokens {
        /// The request's limit.
        max: u32,
        /// What the receipt bills.
        got: u64,
    },
    /// Other prices than the ones the request accepted.
    #[error("receipt charges prices {got:?} at multiplier {got_multiplier}/1000, not the accepted {expected:?} at {expected_multiplier}/1000")]
    WrongPrice {
        /// Accepted.
        expected: UnitPrice,
        /// Accepted multiplier.
        expected_multiplier: u32,
        /// Charged.
        got: UnitPrice,
        /// Charged multiplier.
        got_multiplier: u32,
    },
}

fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl UsageReceipt {
    /// Check this (already verified) receipt against its request's billing
    /// metadata: request id, account, model, then the token limit.
    pub fn matches(&self, e: &BillingExpectation) -> Result<(), ReceiptMismatch> {
        if self.request_id != e.request_id {
            return Err(ReceiptMismatch::WrongRequest {
                expected: e.request_id,
                got: self.request_id,
            });
        }
        if self.client_account != e.account {
            return Err(ReceiptMismatch::WrongAccount {
                expected: e.account,
                got: self.client_account,
            });
        }
        if self.model != e.model {
            return Err(ReceiptMismatch::WrongModel {
                expected: e.model.clone(),
                got: self.model.clone(),
            });
        }
        if self.completion_tokens > u64::from(e.max_tokens) {
            return Err(ReceiptMismatch::TooManyTokens {
                max: e.max_tokens,
                got: self.completion_tokens,
            });
        }
        if self.unit_price != e.unit_price || self.multiplier_milli != e.multiplier_milli {
            return Err(ReceiptMismatch::WrongPrice {
                expected: e.unit_price,
                expected_multiplier: e.multiplier_milli,
                got: self.unit_price,
                got_multiplier: self.multiplier_milli,
            });
        }
        Ok(())
    }
}

/// The only protected header a receipt may have.
fn protected_header() -> coset::Header {
    HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .build()
}

/// The enclave's receipt key (ECDSA P-256). Made at boot, never exported.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner").finish_non_exhaustive()
    }
}

impl ReceiptSigner {
    /// A fresh key.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> ReceiptSigner {
        ReceiptSigner {
            key: SigningKey::random(rng),
        }
    }

    /// A key from its 32-byte scalar (fixtures and tests).
    pub fn from_scalar(bytes: &[u8]) -> Result<ReceiptSigner, ReceiptError> {
        SigningKey::from_slice(bytes)
            .map(|key| ReceiptSigner { key })
            .map_err(|_| ReceiptError::BadSigningKey)
    }

    /// The public key as uncompressed SEC1 (65 bytes), for the claims'
    /// `receipt_public_key`.
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// Sign an account's cumulative tab for settlement
    /// ([`crate::settlement`]), with the same key.
    pub fn sign_tab(&self, tab: &crate::settlement::Tab) -> crate::settlement::SignedTab {
        tab.sign(&self.key)
    }

    /// Sign a receipt. Refuses one whose totals do not add up or whose
    /// model name is over the limit (the verifier would refuse it).
    pub fn sign(&self, receipt: &UsageReceipt) -> Result<Vec<u8>, ReceiptError> {
        receipt.check()?;
        let mut failed = false;
        let sign1 = CoseSign1Builder::new()
            .protected(protected_header())
            .payload(receipt.to_cbor())
            .create_signature(RECEIPT_AAD, |tbs| match self.key.try_sign(tbs) {
                Ok(sig) => {
                    let sig: Signature = sig;
                    sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
                }
                Err(_) => {
                    failed = true;
                    Vec::new()
                }
            })
            .build();
        if failed {
            return Err(ReceiptError::Cose("signing failed".into()));
        }
        let value = sign1
            .to_cbor_value()
            .map_err(|e| ReceiptError::Cose(e.to_string()))?;
        let bytes = cbor::encode(&Value::Tag(COSE_SIGN1_TAG, Box::new(value)));
        if bytes.len() > MAX_RECEIPT {
            return Err(ReceiptError::Inconsistent(format!(
                "signed receipt is {} bytes, more than {MAX_RECEIPT}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// A parsed receipt key, for verifying many receipts (the ledger).
///
/// With the `aws-lc` feature the ECDSA verification runs in aws-lc-rs
/// (several times faster than pure Rust, which matters for a ledger that
/// checks every receipt before appending it); without it, in `p256`.
#[derive(Debug, Clone)]
pub struct ReceiptVerifier {
    #[cfg(not(feature = "aws-lc"))]
    key: VerifyingKey,
    /// Validated by `p256`, then parsed once by aws-lc-rs (uncompressed
    /// SEC1), not again for every receipt.
    #[cfg(feature = "aws-lc")]
    key: aws_lc_rs::signature::ParsedPublicKey,
}

impl ReceiptVerifier {
    /// Parse the claims' `receipt_public_key` (SEC1, compressed or not).
    pub fn new(receipt_public_key_sec1: &[u8]) -> Result<ReceiptVerifier, ReceiptError> {
        let key = VerifyingKey::from_sec1_bytes(receipt_public_key_sec1)
            .map_err(|_| ReceiptError::BadPublicKey)?;
        #[cfg(feature = "aws-lc")]
        let key = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key.to_encoded_point(false).as_bytes(),
        )
        .map_err(|_| ReceiptError::BadPublicKey)?;
        Ok(ReceiptVerifier { key })
    }

    fn verify_signature(&self, tbs: &[u8], sig: &Signature) -> Result<(), ReceiptError> {
        #[cfg(feature = "aws-lc")]
        let ok = self.key.verify_sig(tbs, &sig.to_bytes()).is_ok();
        #[cfg(not(feature = "aws-lc"))]
        let ok = self.key.verify(tbs, sig).is_ok();
        if ok {
            Ok(())
        } else {
            Err(ReceiptError::BadSignature)
        }
    }

    /// Verify a signed receipt and return its content.
    pub fn verify(&self, bytes: &[u8]) -> Result<UsageReceipt, ReceiptError> {
        let value = cbor::decode(bytes, MAX_RECEIPT)?;
        let Value::Tag(COSE_SIGN1_TAG, inner) = value else {
            return Err(ReceiptError::Cose("not a tagged COSE_Sign1".into()));
        };
        let sign1 = CoseSign1::from_cbor_value(*inner)
            .map_err(|e| ReceiptError::Cose(format!("not a COSE_Sign1: {e}")))?;
        if sign1.protected.header.alg != protected_header().alg {
            return Err(ReceiptError::WrongAlgorithm);
        }
        if sign1.protected.header != protected_header() {
            return Err(ReceiptError::Cose("unexpected protected header".into()));
        }
        if !sign1.unprotected.is_empty() {
            return Err(ReceiptError::Cose(
                "unprotected header must be empty".into(),
            ));
        }
        let Some(payload) = &sign1.payload else {
            return Err(ReceiptError::Cose("detached payload".into()));
        };
        let sig =
            Signature::from_slice(&sign1.signature).map_err(|_| ReceiptError::BadSignature)?;
        if sig.normalize_s().is_some() {
            return Err(ReceiptError::BadSignature);
        }
        sign1.verify_signature(RECEIPT_AAD, |_, tbs| self.verify_signature(tbs, &sig))?;
        UsageReceipt::from_cbor(payload)
    }
}

/// Verify a signed receipt under the attested receipt key (SEC1) and return
/// its content.
pub fn verify_receipt(
    bytes: &[u8],
    receipt_public_key_sec1: &[u8],
) -> Result<UsageReceipt, ReceiptError> {
    ReceiptVerifier::new(receipt_public_key_sec1)?.verify(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::rng;

    pub(crate) fn receipt() -> UsageReceipt {
        UsageReceipt {
            request_id: RequestId([0x11; 32]),
            model: "minilm".into(),
            prompt_tokens: 12,
            cached_tokens: 2,
            completion_tokens: 30,
            total_tokens: 42,
            unit_price: UnitPrice {
                prompt: 100,
                cached: 25,
                completion: 300,
            },
            multiplier_milli: 1000,
            time: 1_795_000_000,
            enclave_seq: 7,
            client_account: [0xac; 32],
        }
    }

    fn resign(signer: &ReceiptSigner, protected: coset::Header, payload: Vec<u8>) -> Vec<u8> {
        let s = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(RECEIPT_AAD, |tbs| {
                let sig: Signature = signer.key.sign(tbs);
                sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
            })
            .build();
        cbor::encode(&Value::Tag(18, Box::new(s.to_cbor_value().unwrap())))
    }

    #[test]
    fn round_trip() {
        let signer = ReceiptSigner::generate(&mut rng());
        let pk = signer.public_key_sec1();
        assert_eq!(pk.len(), RECEIPT_PUBLIC_KEY_LEN);
        let bytes = signer.sign(&receipt()).unwrap();
        assert_eq!(verify_receipt(&bytes, &pk).unwrap(), receipt());
        // Ten computed prompt tokens, two cached ones, thirty completion.
        assert_eq!(
            receipt().charge_nanoton(),
            Some(10 * 100 + 2 * 25 + 30 * 300)
        );
        // Deterministic signatures (RFC 6979): same receipt, same bytes.
        assert_eq!(signer.sign(&receipt()).unwrap(), bytes);
    }

    #[test]
    fn forged_and_inflated_receipts_are_refused() {
        let signer = ReceiptSigner::generate(&mut rng());
        let pk = signer.public_key_sec1();
        let other = ReceiptSigner::generate(&mut rng());
        let forged = other.sign(&receipt()).unwrap();
        assert_eq!(
            verify_receipt(&forged, &pk),
            Err(ReceiptError::BadSignature)
        );

        // Payload edited after signing: more tokens, same signature.
        let genuine = signer.sign(&receipt()).unwrap();
        let mut inflated = receipt();
        inflated.completion_tokens = 3000;
        inflated.total_tokens = 3012;
        let Value::Tag(_, inner) = cbor::decode(&genuine, MAX_RECEIPT).unwrap() else {
            panic!()
        };
        let mut s = CoseSign1::from_cbor_value(*inner).unwrap();
        s.payload = Some(inflated.to_cbor());
        let edited = cbor::encode(&Value::Tag(18, Box::new(s.to_cbor_value().unwrap())));
        assert_eq!(
            verify_receipt(&edited, &pk),
            Err(ReceiptError::BadSignature)
        );

        // Every bit of the genuine receipt matters.
        for i in 0..genuine.len() * 8 {
            let mut b = genuine.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(verify_receipt(&b, &pk).is_err(), "bit {i}");
        }
        for cut in 0..genuine.len() {
            assert!(verify_receipt(&genuine[..cut], &pk).is_err());
        }
        let mut trailing = genuine.clone();
        trailing.push(0);
        assert!(verify_receipt(&trailing, &pk).is_err());
    }

    #[test]
    fn wrong_alg_headers_and_payloads_are_refused() {
        let signer = ReceiptSigner::generate(&mut rng());
        let pk = signer.public_key_sec1();
        let es384 = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES384)
            .build();
        let b = resign(&signer, es384, receipt().to_cbor());
        assert_eq!(verify_receipt(&b, &pk), Err(ReceiptError::WrongAlgorithm));
        let with_kid = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(vec![1])
            .build();
        assert!(matches!(
            verify_receipt(&resign(&signer, with_kid, receipt().to_cbor()), &pk),
            Err(ReceiptError::Cose(_))
        ));
        // Correctly signed, but the payload has an unknown key.
        let mut v = cbor::decode(&receipt().to_cbor(), MAX_RECEIPT).unwrap();
        if let Value::Map(m) = &mut v {
            m.push((Value::Text("bonus".into()), Value::Integer(1.into())));
        }
        assert!(matches!(
            verify_receipt(&resign(&signer, protected_header(), cbor::encode(&v)), &pk),
            Err(ReceiptError::Cbor(CborError::UnknownKey(_)))
        ));
        // Correctly signed, totals that do not add up.
        let mut bad = receipt();
        bad.total_tokens = 1;
        assert!(matches!(
            verify_receipt(&resign(&signer, protected_header(), bad.to_cbor()), &pk),
            Err(ReceiptError::Inconsistent(_))
        ));
        assert!(signer.sign(&bad).is_err());
        // Payload not CBOR at all.
        assert!(verify_receipt(&resign(&signer, protected_header(), vec![0xff]), &pk).is_err());
        // Untagged COSE_Sign1.
        let genuine = signer.sign(&receipt()).unwrap();
        let Value::Tag(_, inner) = cbor::decode(&genuine, MAX_RECEIPT).unwrap() else {
            panic!()
        };
        assert!(verify_receipt(&cbor::encode(&inner), &pk).is_err());
        // Bad keys.
        assert_eq!(
            verify_receipt(&genuine, &[4; 65]),
            Err(ReceiptError::BadPublicKey)
        );
        assert_eq!(
            verify_receipt(&genuine, &[]),
            Err(ReceiptError::BadPublicKey)
        );
    }

    #[test]
    fn high_s_twin_is_refused() {
        let signer = ReceiptSigner::generate(&mut rng());
        let pk = signer.public_key_sec1();
        let genuine = signer.sign(&receipt()).unwrap();
        let Value::Tag(_, inner) = cbor::decode(&genuine, MAX_RECEIPT).unwrap() else {
            panic!()
        };
        let mut s = CoseSign1::from_cbor_value(*inner).unwrap();
        let sig = Signature::from_slice(&s.signature).unwrap();
        let (r, low_s) = sig.split_scalars();
        let high = Signature::from_scalars(r, -*low_s).unwrap();
        // The twin is a valid ECDSA signature...
        use p256::ecdsa::signature::Verifier;
        assert!(signer
            .key
            .verifying_key()
            .verify(&s.tbs_data(RECEIPT_AAD), &high)
            .is_ok());
        // ...that the receipt verifier refuses.
        s.signature = high.to_bytes().to_vec();
        let twin = cbor::encode(&Value::Tag(18, Box::new(s.to_cbor_value().unwrap())));
        assert_eq!(verify_receipt(&twin, &pk), Err(ReceiptError::BadSignature));
    }
}
