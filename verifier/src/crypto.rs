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
    #[error("not a valid P-256 public key")]
    P256,
}

/// The hash an ECDSA signature is computed over (the `H` of
/// ecdsa-with-SHA256 / ecdsa-with-SHA384, RFC 5758 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcdsaHash {
    Sha256,
    Sha384,
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

/// A P-384 public key for ECDSA (SHA-384, or SHA-256 where a signer chose
/// it, as OCSP responders may).
pub(crate) struct P384Key {
    #[cfg(feature = "aws-lc")]
    key: aws_lc_rs::signature::ParsedPublicKey,
    /// The uncompressed SEC1 point, for verifications with another hash.
    #[cfg(feature = "aws-lc")]
    point: Vec<u8>,
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
            Ok(Self {
                key,
                point: uncompressed.as_bytes().to_vec(),
            })
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

    /// Verify a fixed-width big-endian `r || s` signature over `msg`
    /// hashed with `hash`.
    pub(crate) fn verify_fixed_with(&self, hash: EcdsaHash, msg: &[u8], sig: &[u8; 96]) -> bool {
        match hash {
            EcdsaHash::Sha384 => self.verify_fixed(msg, sig),
            EcdsaHash::Sha256 => {
                #[cfg(feature = "aws-lc")]
                {
                    // aws-lc offers P-384 with SHA-256 only for ASN.1
                    // signatures: re-encode the (already range-checked)
                    // scalars as a DER Ecdsa-Sig-Value.
                    let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
                        return false;
                    };
                    aws_lc_rs::signature::UnparsedPublicKey::new(
                        &aws_lc_rs::signature::ECDSA_P384_SHA256_ASN1,
                        &self.point,
                    )
                    .verify(msg, sig.to_der().as_bytes())
                    .is_ok()
                }
                #[cfg(not(feature = "aws-lc"))]
                {
                    use p384::ecdsa::signature::hazmat::PrehashVerifier;
                    let Ok(sig) = p384::ecdsa::Signature::from_slice(sig) else {
                        return false;
                    };
                    self.key.verify_prehash(&sha256(msg), &sig).is_ok()
                }
            }
        }
    }
}

/// A P-256 public key for ECDSA with SHA-256 or SHA-384.
pub(crate) struct P256Key {
    /// The uncompressed SEC1 point.
    #[cfg(feature = "aws-lc")]
    point: Vec<u8>,
    /// The key parsed once for ECDSA with SHA-256 and fixed `r || s`
    /// signatures (Intel's PKI, every TDX quote signature).
    #[cfg(feature = "aws-lc")]
    sha256_fixed: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(not(feature = "aws-lc"))]
    key: p256::ecdsa::VerifyingKey,
}

impl P256Key {
    /// Parse an uncompressed or compressed SEC1 point.
    pub(crate) fn from_sec1(point: &[u8]) -> Result<Self, KeyError> {
        // Validated with RustCrypto in both builds, as for P-384.
        let parsed =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| KeyError::P256)?;
        #[cfg(feature = "aws-lc")]
        {
            let point = parsed.to_encoded_point(false).as_bytes().to_vec();
            let sha256_fixed = aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                &point,
            )
            .map_err(|_| KeyError::P256)?;
            Ok(Self {
                point,
                sha256_fixed,
            })
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            Ok(Self { key: parsed })
        }
    }

    /// Verify a fixed-width big-endian `r || s` signature over `msg`
    /// hashed with `hash` (a SHA-384 digest is truncated to the curve's
    /// 256 bits, as ECDSA specifies).
    pub(crate) fn verify_fixed_with(&self, hash: EcdsaHash, msg: &[u8], sig: &[u8; 64]) -> bool {
        #[cfg(feature = "aws-lc")]
        {
            use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA384_ASN1};
            match hash {
                EcdsaHash::Sha256 => self.sha256_fixed.verify_sig(msg, sig).is_ok(),
                EcdsaHash::Sha384 => {
                    let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
                        return false;
                    };
                    UnparsedPublicKey::new(&ECDSA_P256_SHA384_ASN1, &self.point)
                        .verify(msg, sig.to_der().as_bytes())
                        .is_ok()
                }
            }
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
                return false;
            };
            match hash {
                EcdsaHash::Sha256 => self.key.verify_prehash(&sha256(msg), &sig).is_ok(),
                EcdsaHash::Sha384 => self.key.verify_prehash(&sha384(msg), &sig).is_ok(),
            }
        }
    }
}

/// SHA-1 of `data`. Only for identifiers that RFC 6960 defines with it
/// (CertID hashes, the responder KeyHash); never for signatures.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    use sha1::Digest;
    sha1::Sha1::digest(data).into()
}

/// SHA-384 of `data`.
pub(crate) fn sha384(data: &[u8]) -> [u8; 48] {
    use sha2::Digest;
    sha2::Sha384::digest(data).into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
