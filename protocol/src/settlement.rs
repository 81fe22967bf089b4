//! Settlement's signed messages: the client's authorization of an attested
//! enclave key with a cap, and the enclave's cumulative tab per account.
//!
//! Both are short fixed layouts (big-endian integers) signed with ECDSA
//! P-256 / SHA-256 over the exact bytes, 64-byte `r ‖ s` with low S, which
//! is what TVM's `P256_CHKSIGNS` verifies, so the payment contract checks
//! the very bytes the enclave and the client signed. The contract and its
//! exit codes are in `contracts/`.
//!
//! Authorization (client-signed, [`AUTH_LEN`] bytes):
//!
//! ```text
//! 0   4   "CCA1"
//! 4   1   contract workchain (i8)
//! 5   32  contract address hash
//! 37  32  account id (SHA-256 of the client's uncompressed SEC1 key)
//! 69  33  enclave receipt key, compressed SEC1
//! 102 8   cap: u64 nanoton, the most this account pays in total for
//!         receipts signed by that key
//! ```
//!
//! Tab (enclave-signed, [`TAB_LEN`] bytes):
//!
//! ```text
//! 0   4   "CCT1"
//! 4   32  account id
//! 36  8   count: u64, receipts counted
//! 44  8   total: u64 nanoton, the sum of their charges
//! ```

use p256::ecdsa::signature::Signer as _;
#[cfg(not(feature = "aws-lc"))]
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};

use crate::account::AccountId;

pub mod manifest;

pub use manifest::{ClaimsManifest, ManifestClaim, ManifestError};

/// Tag of an authorization.
pub const AUTH_TAG: &[u8; 4] = b"CCA1";
/// Tag of a tab.
pub const TAB_TAG: &[u8; 4] = b"CCT1";
/// Bytes of an authorization message.
pub const AUTH_LEN: usize = 110;
/// Tag of the deposit-owner message.
pub const OWNER_TAG: &[u8; 4] = b"CCD1";
/// Length of the deposit-owner message.
pub const OWNER_LEN: usize = 70;
/// Bytes of a tab message.
pub const TAB_LEN: usize = 52;
/// Bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of a signed authorization.
pub const SIGNED_AUTH_LEN: usize = AUTH_LEN + SIGNATURE_LEN;
/// Bytes of a signed tab.
pub const SIGNED_TAB_LEN: usize = TAB_LEN + SIGNATURE_LEN;
/// Nanoton a deposit keeps for the contract's gas and storage.
pub const DEPOSIT_FEE: u64 = 10_000_000;

/// Why a settlement message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettlementError {
    /// Wrong length or tag.
    #[error("{0}")]
    Malformed(String),
    /// Not a valid P-256 key.
    #[error("not a valid P-256 public key")]
    BadKey,
    /// The signature is malformed, high-S or does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The key does not belong to the account the message names.
    #[error("the client key does not belong to the account the authorization names")]
    WrongAccount,
}

/// A TON standard address: workchain and 32-byte hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractAddress {
    /// Workchain (0 basechain, -1 masterchain).
    pub workchain: i8,
    /// Account hash.
    pub hash: [u8; 32],
}

/// Flags of a user-friendly address (the first byte of its 36).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FriendlyFlags {
    /// `0x11` tag: a message to it bounces when the account is not active.
    pub bounceable: bool,
    /// `0x80` bit: meant for the testnet.
    pub testnet: bool,
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0, not reflected), the check
/// of a user-friendly address.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl ContractAddress {
    /// Parse an address in either form: raw (`wc:64hex`) or user-friendly
    /// (48 characters of base64 or base64url, see
    /// [`Self::parse_friendly`]); the friendly form's flags are not kept.
    pub fn parse(s: &str) -> Result<ContractAddress, SettlementError> {
        if s.contains(':') {
            ContractAddress::parse_raw(s)
        } else {
            ContractAddress::parse_friendly(s).map(|(a, _)| a)
        }
    }

    /// Parse the user-friendly form: 36 bytes, `flags ‖ workchain (i8) ‖
    /// hash (32) ‖ CRC-16/XMODEM of the first 34 (big-endian)`, written as
    /// 48 characters of base64 (`+/`) or base64url (`-_`). Flags are `0x11`
    /// (bounceable) or `0x51` (non-bounceable), plus `0x80` for testnet.
    pub fn parse_friendly(s: &str) -> Result<(ContractAddress, FriendlyFlags), SettlementError> {
        use base64ct::Encoding as _;
        let bad = |why: &str| {
            SettlementError::Malformed(format!("{s:?} is not a user-friendly TON address: {why}"))
        };
        if s.len() != 48 {
            return Err(bad("not 48 characters"));
        }
        let mut buf = [0u8; 36];
        let decoded = if s.contains(['-', '_']) {
            base64ct::Base64Url::decode(s, &mut buf)
        } else {
            base64ct::Base64::decode(s, &mut buf)
        }
        .map_err(|_| bad("not base64 or base64url"))?;
        if decoded.len() != 36 {
            return Err(bad("not 36 bytes"));
        }
        let crc = u16::from_be_bytes([buf[34], buf[35]]);
        if crc16_xmodem(&buf[..34]) != crc {
            return Err(bad("checksum mismatch"));
        }
        let testnet = buf[0] & 0x80 != 0;
        let bounceable = match buf[0] & 0x7f {
            0x11 => true,
            0x51 => false,
            _ => return Err(bad("unknown flags")),
        };
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&buf[2..34]);
        Ok((
            ContractAddress {
                workchain: i8::from_be_bytes([buf[1]]),
                hash,
            },
            FriendlyFlags {
                bounceable,
                testnet,
            },
        ))
    }

    /// The user-friendly form, base64url (48 characters).
    pub fn to_friendly(&self, bounceable: bool, testnet: bool) -> String {
        use base64ct::Encoding as _;
        let mut buf = [0u8; 36];
        buf[0] = if bounceable { 0x11 } else { 0x51 } | if testnet { 0x80 } else { 0 };
        buf[1] = self.workchain.to_be_bytes()[0];
        buf[2..34].copy_from_slice(&self.hash);
        let crc = crc16_xmodem(&buf[..34]);
        buf[34..].copy_from_slice(&crc.to_be_bytes());
        base64ct::Base64Url::encode_string(&buf)
    }

    /// Parse the raw form `wc:64hex`.
    pub fn parse_raw(s: &str) -> Result<ContractAddress, SettlementError> {
        let bad =
            || SettlementError::Malformed(format!("{s:?} is not a raw TON address (wc:64 hex)"));
        let (wc, h) = s.split_once(':').ok_or_else(bad)?;
        let workchain: i8 = wc.parse().map_err(|_| bad())?;
        let bytes = hex::decode(h).map_err(|_| bad())?;
        let hash: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(ContractAddress { workchain, hash })
    }
}

impl std::fmt::Display for ContractAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.workchain, hex::encode(self.hash))
    }
}

/// A P-256 key (SEC1, compressed or not) in compressed form.
pub fn compress_p256(sec1: &[u8]) -> Result<[u8; 33], SettlementError> {
    let key = VerifyingKey::from_sec1_bytes(sec1).map_err(|_| SettlementError::BadKey)?;
    key.to_encoded_point(true)
        .as_bytes()
        .try_into()
        .map_err(|_| SettlementError::BadKey)
}

fn sign(key: &SigningKey, msg: &[u8]) -> [u8; 64] {
    let sig: Signature = key.sign(msg);
    sig.normalize_s().unwrap_or(sig).to_bytes().into()
}

/// ECDSA P-256 / SHA-256, low S only. With the `aws-lc` feature the
/// arithmetic runs in aws-lc-rs (settlement checks thousands of these),
/// otherwise in `p256`.
fn verify(key_sec1: &[u8], msg: &[u8], sig: &[u8; 64]) -> Result<(), SettlementError> {
    let key = VerifyingKey::from_sec1_bytes(key_sec1).map_err(|_| SettlementError::BadKey)?;
    let parsed = Signature::from_slice(sig).map_err(|_| SettlementError::BadSignature)?;
    if parsed.normalize_s().is_some() {
        return Err(SettlementError::BadSignature);
    }
    #[cfg(feature = "aws-lc")]
    {
        let _ = parsed;
        let uncompressed = key.to_encoded_point(false);
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            uncompressed.as_bytes(),
        )
        .verify(msg, sig)
        .map_err(|_| SettlementError::BadSignature)
    }
    #[cfg(not(feature = "aws-lc"))]
    key.verify(msg, &parsed)
        .map_err(|_| SettlementError::BadSignature)
}

/// The client's authorization of one enclave receipt key, up to a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization {
    /// The payment contract.
    pub contract: ContractAddress,
    /// The paying account.
    pub account: [u8; 32],
    /// The enclave's receipt key, compressed.
    pub enclave_key: [u8; 33],
    /// Most nanoton, in total, for receipts under that key.
    pub cap: u64,
}

impl Authorization {
    /// The signed bytes.
    pub fn to_bytes(&self) -> [u8; AUTH_LEN] {
        let mut b = [0u8; AUTH_LEN];
        b[..4].copy_from_slice(AUTH_TAG);
        b[4] = self.contract.workchain.to_be_bytes()[0];
        b[5..37].copy_from_slice(&self.contract.hash);
        b[37..69].copy_from_slice(&self.account);
        b[69..102].copy_from_slice(&self.enclave_key);
        b[102..110].copy_from_slice(&self.cap.to_be_bytes());
        b
    }

    /// Parse strictly (length, tag, a valid compressed enclave key).
    pub fn from_bytes(b: &[u8]) -> Result<Authorization, SettlementError> {
        if b.len() != AUTH_LEN || &b[..4] != AUTH_TAG {
            return Err(SettlementError::Malformed(format!(
                "an authorization is {AUTH_LEN} bytes starting with CCA1"
            )));
        }
        let mut a = Authorization {
            contract: ContractAddress {
                workchain: i8::from_be_bytes([b[4]]),
                hash: [0; 32],
            },
            account: [0; 32],
            enclave_key: [0; 33],
            cap: 0,
        };
        a.contract.hash.copy_from_slice(&b[5..37]);
        a.account.copy_from_slice(&b[37..69]);
        a.enclave_key.copy_from_slice(&b[69..102]);
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[102..110]);
        a.cap = u64::from_be_bytes(cap);
        if !matches!(a.enclave_key[0], 2 | 3) || compress_p256(&a.enclave_key).is_err() {
            return Err(SettlementError::BadKey);
        }
        Ok(a)
    }

    /// Sign with the client's account key.
    pub fn sign(&self, key: &SigningKey) -> SignedAuthorization {
        SignedAuthorization {
            auth: *self,
            signature: sign(key, &self.to_bytes()),
        }
    }
}

/// The owner an account key names for its account on one contract: the
/// only address that may withdraw. The deposit that opens the account must
/// carry the key's signature of this, so knowing a client's public key is
/// not enough to open its account first and take its later deposits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositOwner {
    /// The payment contract.
    pub contract: ContractAddress,
    /// The wallet that may withdraw.
    pub owner: ContractAddress,
}

impl DepositOwner {
    /// The signed bytes: `"CCD1" ‖ contract workchain (i8) ‖ contract hash
    /// ‖ owner workchain (i8) ‖ owner hash`.
    pub fn to_bytes(&self) -> [u8; OWNER_LEN] {
        let mut b = [0u8; OWNER_LEN];
        b[..4].copy_from_slice(OWNER_TAG);
        b[4] = self.contract.workchain.to_be_bytes()[0];
        b[5..37].copy_from_slice(&self.contract.hash);
        b[37] = self.owner.workchain.to_be_bytes()[0];
        b[38..70].copy_from_slice(&self.owner.hash);
        b
    }

    /// Sign with the client's account key (`r ‖ s`, low S).
    pub fn sign(&self, key: &SigningKey) -> [u8; 64] {
        sign(key, &self.to_bytes())
    }

    /// Check a signature under the client's key (SEC1).
    pub fn verify(
        &self,
        client_public_key_sec1: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), SettlementError> {
        verify(client_public_key_sec1, &self.to_bytes(), signature)
    }
}

/// An authorization and the client's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedAuthorization {
    /// The message.
    pub auth: Authorization,
    /// ECDSA P-256 `r ‖ s`, low S.
    pub signature: [u8; 64],
}

impl SignedAuthorization {
    /// Check the signature under `client_public_key_sec1`, which must hash
    /// to the account the authorization names.
    pub fn verify(&self, client_public_key_sec1: &[u8]) -> Result<(), SettlementError> {
        let id = AccountId::of_public_key(client_public_key_sec1)
            .map_err(|_| SettlementError::BadKey)?;
        if id.0 != self.auth.account {
            return Err(SettlementError::WrongAccount);
        }
        verify(
            client_public_key_sec1,
            &self.auth.to_bytes(),
            &self.signature,
        )
    }

    /// Message ‖ signature.
    pub fn to_bytes(&self) -> [u8; SIGNED_AUTH_LEN] {
        let mut b = [0u8; SIGNED_AUTH_LEN];
        b[..AUTH_LEN].copy_from_slice(&self.auth.to_bytes());
        b[AUTH_LEN..].copy_from_slice(&self.signature);
        b
    }

    /// Parse message ‖ signature (the signature is not checked).
    pub fn from_bytes(b: &[u8]) -> Result<SignedAuthorization, SettlementError> {
        if b.len() != SIGNED_AUTH_LEN {
            return Err(SettlementError::Malformed(format!(
                "a signed authorization is {SIGNED_AUTH_LEN} bytes, not {}",
                b.len()
            )));
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[AUTH_LEN..]);
        Ok(SignedAuthorization {
            auth: Authorization::from_bytes(&b[..AUTH_LEN])?,
            signature,
        })
    }
}

/// An account's cumulative tab under one enclave receipt key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tab {
    /// The account.
    pub account: [u8; 32],
    /// Receipts counted.
    pub count: u64,
    /// Their charges, nanoton.
    pub total: u64,
}

impl Tab {
    /// The signed bytes.
    pub fn to_bytes(&self) -> [u8; TAB_LEN] {
        let mut b = [0u8; TAB_LEN];
        b[..4].copy_from_slice(TAB_TAG);
        b[4..36].copy_from_slice(&self.account);
        b[36..44].copy_from_slice(&self.count.to_be_bytes());
        b[44..52].copy_from_slice(&self.total.to_be_bytes());
        b
    }

    /// Parse strictly.
    pub fn from_bytes(b: &[u8]) -> Result<Tab, SettlementError> {
        if b.len() != TAB_LEN || &b[..4] != TAB_TAG {
            return Err(SettlementError::Malformed(format!(
                "a tab is {TAB_LEN} bytes starting with CCT1"
            )));
        }
        let mut account = [0u8; 32];
        account.copy_from_slice(&b[4..36]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[36..44]);
        let count = u64::from_be_bytes(n);
        n.copy_from_slice(&b[44..52]);
        Ok(Tab {
            account,
            count,
            total: u64::from_be_bytes(n),
        })
    }

    /// Sign with the enclave's receipt key.
    pub fn sign(&self, key: &SigningKey) -> SignedTab {
        SignedTab {
            tab: *self,
            signature: sign(key, &self.to_bytes()),
        }
    }

    /// Check `signature` under the enclave's receipt key (SEC1).
    pub fn verify(
        &self,
        signature: &[u8; 64],
        enclave_key_sec1: &[u8],
    ) -> Result<(), SettlementError> {
        verify(enclave_key_sec1, &self.to_bytes(), signature)
    }
}

/// A tab and the enclave's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedTab {
    /// The message.
    pub tab: Tab,
    /// ECDSA P-256 `r ‖ s`, low S.
    pub signature: [u8; 64],
}

impl SignedTab {
    /// Message ‖ signature.
    pub fn to_bytes(&self) -> [u8; SIGNED_TAB_LEN] {
        let mut b = [0u8; SIGNED_TAB_LEN];
        b[..TAB_LEN].copy_from_slice(&self.tab.to_bytes());
        b[TAB_LEN..].copy_from_slice(&self.signature);
        b
    }

    /// Parse message ‖ signature (the signature is not checked).
    pub fn from_bytes(b: &[u8]) -> Result<SignedTab, SettlementError> {
        if b.len() != SIGNED_TAB_LEN {
            return Err(SettlementError::Malformed(format!(
                "a signed tab is {SIGNED_TAB_LEN} bytes, not {}",
                b.len()
            )));
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[TAB_LEN..]);
        Ok(SignedTab {
            tab: Tab::from_bytes(&b[..TAB_LEN])?,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn friendly_addresses() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        let a = ContractAddress::parse_raw(
            "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8",
        )
        .unwrap();
        // The forms @ton/core 0.63.1's Address.toString gives for it.
        assert_eq!(
            a.to_friendly(true, false),
            "EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2N"
        );
        assert_eq!(
            a.to_friendly(false, false),
            "UQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqEBI"
        );
        for s in [
            "EQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqB2N",
            "UQCD39VS5jcptHL8vMjEXrzGaRcCVYto7HUn4bpAOg8xqEBI",
            "0:83dfd552e63729b472fcbcc8c45ebcc6691702558b68ec7527e1ba403a0f31a8",
        ] {
            assert_eq!(ContractAddress::parse(s).unwrap(), a, "{s}");
        }
        let t = a.to_friendly(true, true);
        let (b, f) = ContractAddress::parse_friendly(&t).unwrap();
        assert_eq!((b, f.bounceable, f.testnet), (a, true, true));
        // The standard alphabet is accepted too.
        let m = ContractAddress {
            workchain: -1,
            hash: [0xfb; 32],
        };
        let url = m.to_friendly(true, false);
        assert!(url.contains(['-', '_']));
        let std_form = url.replace('-', "+").replace('_', "/");
        assert_eq!(ContractAddress::parse(&std_form).unwrap(), m);
        // One character changed: the checksum catches it.
        let mut broken = a.to_friendly(true, false).into_bytes();
        broken[10] = if broken[10] == b'A' { b'B' } else { b'A' };
        let broken = String::from_utf8(broken).unwrap();
        assert!(ContractAddress::parse(&broken).is_err());
        assert!(ContractAddress::parse("EQCD39VS").is_err());
        assert!(ContractAddress::parse("0:zz").is_err());
    }

    use super::*;
    use rand_core::OsRng;

    #[test]
    fn layouts_sign_and_refuse() {
        let client = SigningKey::random(&mut OsRng);
        let client_pub = client.verifying_key().to_encoded_point(false);
        let account = AccountId::of_public_key(client_pub.as_bytes()).unwrap().0;
        let enclave = SigningKey::random(&mut OsRng);
        let enclave_pub = enclave.verifying_key().to_encoded_point(false);
        let auth = Authorization {
            contract: ContractAddress::parse_raw(&format!("0:{}", "ab".repeat(32))).unwrap(),
            account,
            enclave_key: compress_p256(enclave_pub.as_bytes()).unwrap(),
            cap: 0x0102_0304_0506_0708,
        };
        let b = auth.to_bytes();
        assert_eq!(&b[..4], b"CCA1");
        assert_eq!(b[4], 0);
        assert_eq!(&b[102..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let signed = auth.sign(&client);
        signed.verify(client_pub.as_bytes()).unwrap();
        let again = SignedAuthorization::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(again, signed);
        let mut forged = signed;
        forged.auth.cap += 1;
        assert_eq!(
            forged.verify(client_pub.as_bytes()),
            Err(SettlementError::BadSignature)
        );
        assert_eq!(
            signed.verify(enclave_pub.as_bytes()),
            Err(SettlementError::WrongAccount)
        );

        let tab = Tab {
            account,
            count: 3,
            total: 1234,
        };
        let st = tab.sign(&enclave);
        assert_eq!(&st.to_bytes()[36..44], &3u64.to_be_bytes());
        st.tab
            .verify(&st.signature, enclave_pub.as_bytes())
            .unwrap();
        assert_eq!(SignedTab::from_bytes(&st.to_bytes()).unwrap(), st);
        let mut bad = st.to_bytes();
        bad[50] ^= 1;
        let bad = SignedTab::from_bytes(&bad).unwrap();
        assert!(bad
            .tab
            .verify(&bad.signature, enclave_pub.as_bytes())
            .is_err());
        // The high-S twin of a valid signature is refused.
        let sig = Signature::from_slice(&st.signature).unwrap();
        let (r, s) = sig.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let high: [u8; 64] = high.to_bytes().into();
        assert!(st.tab.verify(&high, enclave_pub.as_bytes()).is_err());
        for n in [0, 51, 53] {
            assert!(Tab::from_bytes(&vec![0; n]).is_err());
        }
        assert!(SignedTab::from_bytes(&[0; 10]).is_err());
        assert!(Authorization::from_bytes(&[0; AUTH_LEN]).is_err());
    }
}
