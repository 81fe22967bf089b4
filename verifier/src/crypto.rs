//! Signature primitives behind one small interface.
//!
//! Owns the choice of backend: aws-lc-rs when the `aws-lc` feature is on
//! (fast, C), RustCrypto otherwise (pure Rust, builds for wasm32). Both take
//! keys in the encodings certificates carry and answer a plain yes/no; the
//! callers turn a "no" into a reason a person can act on.

/// An RSA public key for RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte
/// salt (the only scheme AMD's KDS certificates use).
pub(crate) struct RsaPssSha384Key {
    #[cfg(feature = "aws-lc")]
    key: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(not(feature = "aws-lc"))]
    key: rsa::pss::VerifyingKey<sha2::Sha384>,
    bits: usize,
}

/// Why a public key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("not a valid RSA public key")]
    Rsa,
    #[error("not a valid P-384 public key")]
    P384,
}

impl RsaPssSha384Key {
    /// Parse a PKCS#1 `RSAPublicKey` (the contents of an X.509
    /// subjectPublicKey bit string).
    pub(crate) fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::traits::PublicKeyParts;
        let parsed = rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|_| KeyError::Rsa)?;
        let bits = parsed.n().bits();
        #[cfg(feature = "aws-lc")]
        {
            let _ = parsed;
            let key = aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA384,
                der,
            )
            .map_err(|_| KeyError::Rsa)?;
            Ok(Self { key, bits })
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            Ok(Self {
                key: rsa::pss::VerifyingKey::new_with_salt_len(parsed, 48),
                bits,
            })
        }
    }

    /// Modulus size in bits.
    pub(crate) fn bits(&self) -> usize {
        self.bits
    }

    /// Verify `sig` over `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        #[cfg(feature = "aws-lc")]
        {
            self.key.verify_sig(msg, sig).is_ok()
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use rsa::signature::Verifier;
            let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
                return false;
            };
            self.key.verify(msg, &sig).is_ok()
        }
    }
}

/// A P-384 public key for ECDSA with SHA-384.
pub(crate) struct P384Key {
    #[cfg(feature = "aws-lc")]
    key: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(not(feature = "aws-lc"))]
    key: p384::ecdsa::VerifyingKey,
}

impl P384Key {
    /// Parse an uncompressed or compressed SEC1 point.
    pub(crate) fn from_sec1(point: &[u8]) -> Result<Self, KeyError> {
        // Validate with RustCrypto in both builds so the two backends accept
        // exactly the same keys.
        let parsed =
            p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| KeyError::P384)?;
        #[cfg(feature = "aws-lc")]
        {
            let uncompressed = parsed.to_encoded_point(false);
            let key = aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
                uncompressed.as_bytes(),
            )
            .map_err(|_| KeyError::P384)?;
            Ok(Self { key })
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            Ok(Self { key: parsed })
        }
    }

    /// Verify a fixed-width big-endian `r || s` signature over `msg`.
    pub(crate) fn verify_fixed(&self, msg: &[u8], sig: &[u8; 96]) -> bool {
        #[cfg(feature = "aws-lc")]
        {
            self.key.verify_sig(msg, sig).is_ok()
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use p384::ecdsa::signature::Verifier;
            let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            self.key.verify(msg, &sig).is_ok()
        }
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
