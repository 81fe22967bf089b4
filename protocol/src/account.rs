//! Client accounts: who pays for a request and who may read its receipts.
//!
//! Owns the account key (ECDSA P-256), the account id and the two
//! statements an account signs. It does not decide what an account may do
//! (rate limits, balances): that is the host's business.
//!
//! * The account id is SHA-256 of the account's uncompressed SEC1 public key
//!   (65 bytes). It is what [`crate::seal::BillingMeta::client_account`] and
//!   [`crate::receipt::UsageReceipt::client_account`] carry.
//! * To submit a request, the account signs
//!   `"cocoon-request-auth-v1" ‖ request_id` ([`crate::RequestId`], the
//!   SHA-256 of the sealed request). The host checks it before it forwards
//!   anything, so nobody can spend another account's money or rate limit;
//!   the signature names one sealed request, so it cannot be moved to
//!   another, and a replay of the same request is refused by the ledger.
//! * To read its receipts, the account signs
//!   `"cocoon-receipts-query-v1" ‖ account_id ‖ time (u64 big-endian Unix
//!   seconds)`. The host accepts a time within its skew window only.
//!
//! * To ask for evidence bound to its own nonce, the account signs
//!   `"cocoon-evidence-nonce-v1" ‖ account_id ‖ time (u64 big-endian) ‖
//!   nonce`; the host checks the time like a receipts query and limits the
//!   account's rate (a hardware quote is slow to make).
//!
//! Signatures are 64 bytes `r ‖ s` (ECDSA P-256, SHA-256), low S.

use p256::ecdsa::signature::Signer as _;
#[cfg(not(feature = "aws-lc"))]
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::RequestId;

/// Domain of a request authorisation.
pub const REQUEST_AUTH_DOMAIN: &[u8] = b"cocoon-request-auth-v1";
/// Domain of a receipts query authorisation.
pub const RECEIPTS_QUERY_DOMAIN: &[u8] = b"cocoon-receipts-query-v1";
/// Domain of an evidence-for-a-nonce authorisation.
pub const EVIDENCE_NONCE_DOMAIN: &[u8] = b"cocoon-evidence-nonce-v1";
/// Length of an account signature.
pub const ACCOUNT_SIGNATURE_LEN: usize = 64;

/// Why an account statement does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// Not a P-256 SEC1 public key.
    #[error("account public key is not a valid P-256 SEC1 key")]
    BadPublicKey,
    /// Not a valid 32-byte scalar.
    #[error("account secret key is not a valid P-256 scalar")]
    BadSecretKey,
    /// The public key does not hash to the account id it claims.
    #[error("account public key does not belong to account {claimed}")]
    WrongAccount {
        /// The account that was claimed (hex).
        claimed: String,
    },
    /// The signature is malformed, high-S or does not verify.
    #[error("account signature does not verify")]
    BadSignature,
    /// A query signed too far from the host's clock.
    #[error(
        "receipts query signed at {time}, more than {max_skew} s from the server's time {now}"
    )]
    Stale {
        /// Time in the query.
        time: u64,
        /// The verifier's time.
        now: u64,
        /// The window.
        max_skew: u64,
    },
}

/// A client account's id: SHA-256 of its uncompressed SEC1 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// The id of an account public key (SEC1, compressed or not).
    pub fn of_public_key(sec1: &[u8]) -> Result<AccountId, AccountError> {
        let key = VerifyingKey::from_sec1_bytes(sec1).map_err(|_| AccountError::BadPublicKey)?;
        Ok(AccountId(
            Sha256::digest(key.to_encoded_point(false).as_bytes()).into(),
        ))
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountId({self})")
    }
}

/// An account's signing key. Lives with the client; never sent anywhere.
#[derive(Clone)]
pub struct AccountKey {
    key: SigningKey,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    /// A fresh key.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore)) -> AccountKey {
        AccountKey {
            key: SigningKey::random(rng),
        }
    }

    /// A key from its 32-byte scalar (as stored in a key file).
    pub fn from_scalar(bytes: &[u8]) -> Result<AccountKey, AccountError> {
        SigningKey::from_slice(bytes)
            .map(|key| AccountKey { key })
            .map_err(|_| AccountError::BadSecretKey)
    }

    /// The 32-byte scalar, for the key file.
    pub fn to_scalar(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The public key, uncompressed SEC1 (65 bytes).
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// The account id.
    pub fn id(&self) -> AccountId {
        AccountId(Sha256::digest(self.public_key_sec1()).into())
    }

    fn sign(&self, msg: &[u8]) -> [u8; ACCOUNT_SIGNATURE_LEN] {
        let sig: Signature = self.key.sign(msg);
        sig.normalize_s().unwrap_or(sig).to_bytes().into()
    }

    /// Authorise payments for receipts of one attested enclave key, up to
    /// a cap ([`crate::settlement`]).
    pub fn sign_authorization(
        &self,
        auth: &crate::settlement::Authorization,
    ) -> crate::settlement::SignedAuthorization {
        auth.sign(&self.key)
    }

    /// Name the wallet that may withdraw this account's deposits on one
    /// payment contract ([`crate::settlement::DepositOwner`]).
    pub fn sign_deposit_owner(&self, owner: &crate::settlement::DepositOwner) -> [u8; 64] {
        owner.sign(&self.key)
    }

    /// Authorise one sealed request: sign `"cocoon-request-auth-v1" ‖
    /// request_id`.
    pub fn sign_request(&self, request_id: &RequestId) -> [u8; ACCOUNT_SIGNATURE_LEN] {
        self.sign(&request_message(request_id))
    }

    /// Authorise a receipts query at `time` (Unix seconds).
    pub fn sign_receipts_query(&self, time: u64) -> [u8; ACCOUNT_SIGNATURE_LEN] {
        self.sign(&query_message(&self.id(), time))
    }

    /// Ask, at `time` (Unix seconds), for evidence bound to `nonce`.
    pub fn sign_evidence_nonce(&self, nonce: &[u8], time: u64) -> [u8; ACCOUNT_SIGNATURE_LEN] {
        self.sign(&nonce_message(&self.id(), time, nonce))
    }
}

fn nonce_message(account: &AccountId, time: u64, nonce: &[u8]) -> Vec<u8> {
    [
        EVIDENCE_NONCE_DOMAIN,
        &account.0,
        &time.to_be_bytes(),
        nonce,
    ]
    .concat()
}

/// Host: check a request for evidence bound to `nonce`, signed at `time`
/// by the key `public_key_sec1`, with `now` the host's time and `max_skew`
/// the window in seconds either side. Returns the account that asked.
pub fn verify_evidence_nonce(
    public_key_sec1: &[u8],
    nonce: &[u8],
    time: u64,
    signature: &[u8],
    now: u64,
    max_skew: u64,
) -> Result<AccountId, AccountError> {
    verify_timed(public_key_sec1, time, signature, now, max_skew, |id| {
        nonce_message(id, time, nonce)
    })
}

fn request_message(request_id: &RequestId) -> Vec<u8> {
    [REQUEST_AUTH_DOMAIN, request_id.as_bytes()].concat()
}

fn query_message(account: &AccountId, time: u64) -> Vec<u8> {
    [RECEIPTS_QUERY_DOMAIN, &account.0, &time.to_be_bytes()].concat()
}

/// Check `sig` (low S) over `msg` under the key, and return the key's
/// account. The key is parsed and checked once, by `p256`; with the
/// `aws-lc` feature the ECDSA verification itself runs in aws-lc-rs (it is
/// on every request's path through the host, and again in the enclave).
fn verify(public_key_sec1: &[u8], msg: &[u8], sig: &[u8]) -> Result<AccountId, AccountError> {
    let key =
        VerifyingKey::from_sec1_bytes(public_key_sec1).map_err(|_| AccountError::BadPublicKey)?;
    let point = key.to_encoded_point(false);
    let id = AccountId(Sha256::digest(point.as_bytes()).into());
    let sig = Signature::from_slice(sig).map_err(|_| AccountError::BadSignature)?;
    if sig.normalize_s().is_some() {
        return Err(AccountError::BadSignature);
    }
    #[cfg(feature = "aws-lc")]
    let ok = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(msg, &sig.to_bytes())
    .is_ok();
    #[cfg(not(feature = "aws-lc"))]
    let ok = key.verify(msg, &sig).is_ok();
    if !ok {
        return Err(AccountError::BadSignature);
    }
    Ok(id)
}

/// A statement signed at `time`: within `max_skew` of `now`, and signed by
/// the key over the message `message` makes for its account.
fn verify_timed(
    public_key_sec1: &[u8],
    time: u64,
    signature: &[u8],
    now: u64,
    max_skew: u64,
    message: impl FnOnce(&AccountId) -> Vec<u8>,
) -> Result<AccountId, AccountError> {
    if time.abs_diff(now) > max_skew {
        return Err(AccountError::Stale {
            time,
            now,
            max_skew,
        });
    }
    let id = AccountId::of_public_key(public_key_sec1)?;
    verify(public_key_sec1, &message(&id), signature)
}

/// Host: check that `account` authorised `request_id` with the key
/// `public_key_sec1` (whose hash must be `account`).
pub fn verify_request_auth(
    public_key_sec1: &[u8],
    account: &AccountId,
    request_id: &RequestId,
    signature: &[u8],
) -> Result<(), AccountError> {
    let id = AccountId::of_public_key(public_key_sec1)?;
    if id != *account {
        return Err(AccountError::WrongAccount {
            claimed: account.to_string(),
        });
    }
    verify(public_key_sec1, &request_message(request_id), signature).map(|_| ())
}

/// Host: check a receipts query signed at `time` by the key
/// `public_key_sec1`, with `now` the host's time and `max_skew` the window
/// in seconds either side. Returns the account that asked.
pub fn verify_receipts_query(
    public_key_sec1: &[u8],
    time: u64,
    signature: &[u8],
    now: u64,
    max_skew: u64,
) -> Result<AccountId, AccountError> {
    verify_timed(public_key_sec1, time, signature, now, max_skew, |id| {
        query_message(id, time)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn request_auth() {
        let a = AccountKey::generate(&mut OsRng);
        let b = AccountKey::generate(&mut OsRng);
        let rid = RequestId([7; 32]);
        let sig = a.sign_request(&rid);
        let pk = a.public_key_sec1();
        verify_request_auth(&pk, &a.id(), &rid, &sig).unwrap();
        assert!(matches!(
            verify_request_auth(&pk, &b.id(), &rid, &sig),
            Err(AccountError::WrongAccount { .. })
        ));
        assert_eq!(
            verify_request_auth(&pk, &a.id(), &RequestId([8; 32]), &sig),
            Err(AccountError::BadSignature)
        );
        assert_eq!(
            verify_request_auth(&b.public_key_sec1(), &b.id(), &rid, &sig),
            Err(AccountError::BadSignature)
        );
        assert_eq!(
            AccountKey::from_scalar(&a.to_scalar()).unwrap().id(),
            a.id()
        );
    }

    #[test]
    fn nonce_auth() {
        let a = AccountKey::generate(&mut OsRng);
        let sig = a.sign_evidence_nonce(b"n1", 1_000);
        let pk = a.public_key_sec1();
        assert_eq!(
            verify_evidence_nonce(&pk, b"n1", 1_000, &sig, 1_010, 300).unwrap(),
            a.id()
        );
        assert!(verify_evidence_nonce(&pk, b"n2", 1_000, &sig, 1_010, 300).is_err());
        assert!(verify_evidence_nonce(&pk, b"n1", 1_001, &sig, 1_010, 300).is_err());
        assert!(matches!(
            verify_evidence_nonce(&pk, b"n1", 1_000, &sig, 9_000, 300),
            Err(AccountError::Stale { .. })
        ));
        // Not interchangeable with a receipts query.
        let q = a.sign_receipts_query(1_000);
        assert!(verify_evidence_nonce(&pk, b"", 1_000, &q, 1_000, 300).is_err());
    }

    #[test]
    fn query_auth() {
        let a = AccountKey::generate(&mut OsRng);
        let sig = a.sign_receipts_query(1_000);
        let pk = a.public_key_sec1();
        assert_eq!(
            verify_receipts_query(&pk, 1_000, &sig, 1_100, 300).unwrap(),
            a.id()
        );
        assert!(matches!(
            verify_receipts_query(&pk, 1_000, &sig, 2_000, 300),
            Err(AccountError::Stale { .. })
        ));
        assert_eq!(
            verify_receipts_query(&pk, 1_001, &sig, 1_000, 300),
            Err(AccountError::BadSignature)
        );
    }
}
