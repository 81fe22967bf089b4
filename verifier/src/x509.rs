//! The slice of X.509 the AMD key hierarchy needs.
//!
//! Owns parsing a DER certificate into what chain building uses: the exact
//! signed TBS bytes, names, validity, the subject key and its signature
//! algorithm, and the extensions. It verifies nothing by itself and never
//! panics on input.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use der::{Decode, Encode};
use x509_cert::Certificate;

use crate::crypto::{EcdsaHash, KeyError, P256Key, P384Key, RsaPssSha384Key};
use crate::UnixTime;

/// rsaEncryption.
pub(crate) const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// RSASSA-PSS.
pub(crate) const OID_RSASSA_PSS: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// MGF1.
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// SHA-384.
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// id-ecPublicKey.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// ecdsa-with-SHA256 (RFC 5758 §3.2).
pub(crate) const OID_ECDSA_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA384 (RFC 5758 §3.2).
pub(crate) const OID_ECDSA_SHA384: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// secp384r1.
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// secp256r1 (prime256v1).
const OID_SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// Why bytes are not a usable certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not DER X.509.
    #[error("not a DER X.509 certificate: {0}")]
    Der(String),
    /// PEM armour present but broken.
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    /// The signature algorithm is not RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
    #[error("signature algorithm is not RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48 as AMD's key hierarchy uses")]
    UnsupportedSignatureAlgorithm,
    /// The signature algorithm is not ecdsa-with-SHA384 (without parameters).
    #[error(
        "signature algorithm is not ecdsa-with-SHA384 as NVIDIA's certificate hierarchies use"
    )]
    NotEcdsaSha384,
    /// The signature algorithm is not ecdsa-with-SHA256 (without parameters).
    #[error("signature algorithm is not ecdsa-with-SHA256 as Intel's SGX PKI uses")]
    NotEcdsaSha256,
    /// The signature value is not a DER `Ecdsa-Sig-Value` with scalars in
    /// range (P-256): the certificate's signature cannot verify.
    #[error("the signature value is not a P-256 Ecdsa-Sig-Value")]
    SignatureEncoding,
    /// The inner and outer signature algorithms differ (RFC 5280 §4.1.1.2).
    #[error("signatureAlgorithm differs from tbsCertificate.signature")]
    AlgorithmMismatch,
    /// The subject key is not of a kind this hierarchy uses.
    #[error("subject public key: {0}")]
    Key(String),
}

/// The subject key of a certificate, parsed for verification.
pub(crate) enum SubjectKey {
    Rsa(RsaPssSha384Key),
    P384(P384Key),
    /// A P-256 key. No certificate hierarchy this crate checks is signed
    /// with one; it is parsed so that a delegated OCSP responder with a
    /// P-256 key can be used (`nvidia::ocsp`).
    P256(P256Key),
}

/// How the issuer signed a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigAlg {
    /// RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48 (AMD).
    RsaPssSha384,
    /// ECDSA with SHA-384 (NVIDIA device and RIM hierarchies).
    EcdsaSha384,
    /// ECDSA P-256 with SHA-256 (Intel's SGX/TDX PKI).
    EcdsaP256Sha256,
}

/// A parsed certificate.
pub(crate) struct Cert {
    /// The issuer's signature algorithm (checked when parsed).
    pub sig_alg: SigAlg,
    /// The DER as received.
    pub der: Vec<u8>,
    /// The exact bytes the issuer signed.
    pub tbs: Vec<u8>,
    /// DER of the issuer and subject names (compared byte for byte).
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
    /// Subject common name, for messages.
    pub subject_cn: String,
    /// Contents octets of the serialNumber INTEGER, as encoded (DER, so
    /// minimal; compared byte for byte).
    pub serial: Vec<u8>,
    /// The subjectPublicKey BIT STRING's bytes, without the unused-bits
    /// octet (what RFC 6960 §4.1.1 issuerKeyHash and §4.2.1 KeyHash hash).
    pub public_key: Vec<u8>,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// The signature value: RSASSA-PSS bytes, or for ECDSA the fixed
    /// big-endian `r || s` converted from the DER `Ecdsa-Sig-Value`.
    pub signature: Vec<u8>,
    pub key: SubjectKey,
    /// (OID, critical, extnValue contents).
    pub extensions: Vec<(ObjectIdentifier, bool, Vec<u8>)>,
}

/// The outer shape every signed X.509 structure shares (a certificate,
/// RFC 5280 §4.1, and a CRL, §5.1): to-be-signed, algorithm, signature.
/// Read to get the exact signed bytes.
#[derive(der::Sequence)]
pub(crate) struct RawSigned<'a> {
    pub(crate) tbs: AnyRef<'a>,
    pub(crate) alg: AnyRef<'a>,
    pub(crate) sig: BitStringRef<'a>,
}

pub(crate) fn common_name(name: &x509_cert::name::Name) -> String {
    // id-at-commonName 2.5.4.3
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                if let Ok(s) = atv.value.decode_as::<der::asn1::PrintableStringRef<'_>>() {
                    return s.as_str().to_owned();
                }
                if let Ok(s) = atv.value.decode_as::<der::asn1::Utf8StringRef<'_>>() {
                    return s.as_str().to_owned();
                }
                if let Ok(s) = atv.value.decode_as::<der::asn1::Ia5StringRef<'_>>() {
                    return s.as_str().to_owned();
                }
            }
        }
    }
    String::from("(no common name)")
}

pub(crate) fn check_pss_sha384(
    alg: &x509_cert::spki::AlgorithmIdentifierOwned,
) -> Result<(), CertError> {
    if alg.oid != OID_RSASSA_PSS {
        return Err(CertError::UnsupportedSignatureAlgorithm);
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or(CertError::UnsupportedSignatureAlgorithm)?;
    let der = params
        .to_der()
        .map_err(|_| CertError::UnsupportedSignatureAlgorithm)?;
    let p = rsa::pkcs1::RsaPssParams::from_der(&der)
        .map_err(|_| CertError::UnsupportedSignatureAlgorithm)?;
    let mgf_hash_ok = p
        .mask_gen
        .parameters
        .as_ref()
        .is_some_and(|h| h.oid == OID_SHA384);
    if p.hash.oid == OID_SHA384
        && p.mask_gen.oid == OID_MGF1
        && mgf_hash_ok
        && p.salt_len == 48
        && p.trailer_field == rsa::pkcs1::TrailerField::BC
    {
        Ok(())
    } else {
        Err(CertError::UnsupportedSignatureAlgorithm)
    }
}

/// ecdsa-with-SHA384 carries no parameters (RFC 5758 §3.2).
fn check_ecdsa_sha384(alg: &x509_cert::spki::AlgorithmIdentifierOwned) -> Result<(), CertError> {
    if alg.oid == OID_ECDSA_SHA384 && alg.parameters.is_none() {
        Ok(())
    } else {
        Err(CertError::NotEcdsaSha384)
    }
}

impl Cert {
    /// Parse one DER certificate signed with RSASSA-PSS/SHA-384 (AMD).
    pub(crate) fn from_der(der: &[u8]) -> Result<Cert, CertError> {
        Self::from_der_as(der, SigAlg::RsaPssSha384)
    }

    /// Parse one DER certificate signed with ecdsa-with-SHA384 (NVIDIA).
    pub(crate) fn from_der_ecdsa(der: &[u8]) -> Result<Cert, CertError> {
        Self::from_der_as(der, SigAlg::EcdsaSha384)
    }

    /// Parse one DER certificate whose signature algorithm must be `alg`.
    pub(crate) fn from_der_as(der: &[u8], alg: SigAlg) -> Result<Cert, CertError> {
        let bad = |e: der::Error| CertError::Der(e.to_string());
        let cert = Certificate::from_der(der).map_err(bad)?;
        let raw = RawSigned::from_der(der).map_err(bad)?;
        let tbs = raw.tbs.to_der().map_err(bad)?;
        let t = &cert.tbs_certificate;
        if t.signature != cert.signature_algorithm {
            return Err(CertError::AlgorithmMismatch);
        }
        match alg {
            SigAlg::RsaPssSha384 => check_pss_sha384(&cert.signature_algorithm)?,
            SigAlg::EcdsaSha384 => check_ecdsa_sha384(&cert.signature_algorithm)?,
            SigAlg::EcdsaP256Sha256 => {
                let alg = &cert.signature_algorithm;
                if alg.oid != OID_ECDSA_SHA256 || alg.parameters.is_some() {
                    return Err(CertError::NotEcdsaSha256);
                }
            }
        }
        let spki = &t.subject_public_key_info;
        let key_bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| CertError::Key("bit string has unused bits".into()))?;
        let key = if spki.algorithm.oid == OID_RSA_ENCRYPTION {
            SubjectKey::Rsa(
                RsaPssSha384Key::from_pkcs1_der(key_bits)
                    .map_err(|e| CertError::Key(e.to_string()))?,
            )
        } else if spki.algorithm.oid == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if curve == Some(OID_SECP384R1) {
                SubjectKey::P384(
                    P384Key::from_sec1(key_bits)
                        .map_err(|e: KeyError| CertError::Key(e.to_string()))?,
                )
            } else if curve == Some(OID_SECP256R1) {
                SubjectKey::P256(
                    P256Key::from_sec1(key_bits)
                        .map_err(|e: KeyError| CertError::Key(e.to_string()))?,
                )
            } else {
                return Err(CertError::Key("EC key is not on P-384 or P-256".into()));
            }
        } else {
            return Err(CertError::Key(format!(
                "unsupported key algorithm {}",
                spki.algorithm.oid
            )));
        };
        let signature = cert
            .signature
            .as_bytes()
            .ok_or_else(|| CertError::Der("signature bit string has unused bits".into()))?;
        let signature = match alg {
            SigAlg::RsaPssSha384 => signature.to_vec(),
            SigAlg::EcdsaSha384 => p384::ecdsa::Signature::from_der(signature)
                .map_err(|_| {
                    CertError::Der("ECDSA signature is not a P-384 Ecdsa-Sig-Value".into())
                })?
                .to_bytes()
                .to_vec(),
            SigAlg::EcdsaP256Sha256 => p256::ecdsa::Signature::from_der(signature)
                .map_err(|_| CertError::SignatureEncoding)?
                .to_bytes()
                .to_vec(),
        };
        let extensions = t
            .extensions
            .iter()
            .flatten()
            .map(|e| (e.extn_id, e.critical, e.extn_value.as_bytes().to_vec()))
            .collect();
        let serial = serial_contents(&t.serial_number).map_err(bad)?;
        Ok(Cert {
            sig_alg: alg,
            der: der.to_vec(),
            tbs,
            issuer: t.issuer.to_der().map_err(bad)?,
            subject: t.subject.to_der().map_err(bad)?,
            subject_cn: common_name(&t.subject),
            serial,
            public_key: key_bits.to_vec(),
            not_before: UnixTime(t.validity.not_before.to_unix_duration().as_secs()),
            not_after: UnixTime(t.validity.not_after.to_unix_duration().as_secs()),
            signature,
            key,
            extensions,
        })
    }

    /// Parse DER, or PEM with one or more `CERTIFICATE` blocks (RSASSA-PSS).
    pub(crate) fn parse_many(bytes: &[u8]) -> Result<Vec<Cert>, CertError> {
        Self::parse_many_as(bytes, SigAlg::RsaPssSha384)
    }

    /// Parse DER, or PEM with one or more `CERTIFICATE` blocks, each signed
    /// with `alg`.
    pub(crate) fn parse_many_as(bytes: &[u8], alg: SigAlg) -> Result<Vec<Cert>, CertError> {
        let trimmed = bytes.trim_ascii_start();
        if trimmed.starts_with(b"-----BEGIN") {
            let text =
                std::str::from_utf8(trimmed).map_err(|_| CertError::Pem("not UTF-8".into()))?;
            pem_blocks(text)?
                .iter()
                .map(|der| Cert::from_der_as(der, alg))
                .collect()
        } else {
            Ok(vec![Cert::from_der_as(bytes, alg)?])
        }
    }

    /// Verify that `issuer_key` signed this certificate.
    pub(crate) fn signed_by(&self, issuer: &Cert) -> bool {
        match (&issuer.key, self.sig_alg) {
            (SubjectKey::Rsa(k), SigAlg::RsaPssSha384) => k.verify(&self.tbs, &self.signature),
            (SubjectKey::P384(k), SigAlg::EcdsaSha384) => {
                <&[u8; 96]>::try_from(self.signature.as_slice())
                    .is_ok_and(|sig| k.verify_fixed(&self.tbs, sig))
            }
            (SubjectKey::P256(k), SigAlg::EcdsaP256Sha256) => {
                <&[u8; 64]>::try_from(self.signature.as_slice())
                    .is_ok_and(|sig| k.verify_fixed_with(EcdsaHash::Sha256, &self.tbs, sig))
            }
            _ => false,
        }
    }

    /// The basicConstraints extension (RFC 5280 §4.2.1.9): `Some((cA,
    /// pathLenConstraint))`, `None` when absent; an unparsable one is an
    /// error.
    pub(crate) fn basic_constraints(&self) -> Result<Option<(bool, Option<u8>)>, CertError> {
        use x509_cert::ext::pkix::BasicConstraints;
        const OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
        match self.extension(&OID) {
            None => Ok(None),
            Some(v) => {
                let bc = BasicConstraints::from_der(v)
                    .map_err(|e| CertError::Der(format!("basicConstraints: {e}")))?;
                Ok(Some((bc.ca, bc.path_len_constraint)))
            }
        }
    }

    /// Whether keyUsage (RFC 5280 §4.2.1.3), when present, allows `bit`
    /// (0 = digitalSignature, 5 = keyCertSign). `None` when absent.
    pub(crate) fn key_usage_allows(&self, bit: u8) -> Result<Option<bool>, CertError> {
        const OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
        match self.extension(&OID) {
            None => Ok(None),
            Some(v) => {
                let bits = BitStringRef::from_der(v)
                    .map_err(|e| CertError::Der(format!("keyUsage: {e}")))?;
                let raw = bits.raw_bytes();
                let byte = usize::from(bit / 8);
                let set = raw.get(byte).is_some_and(|b| b & (0x80 >> (bit % 8)) != 0);
                Ok(Some(set))
            }
        }
    }

    /// The extension with this OID, if present.
    pub(crate) fn extension(&self, oid: &ObjectIdentifier) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|(o, _, _)| o == oid)
            .map(|(_, _, v)| v.as_slice())
    }
}

/// The contents octets of a serialNumber INTEGER as encoded (DER, so
/// minimal): the form serials are compared in, byte for byte.
pub(crate) fn serial_contents(
    serial: &x509_cert::serial_number::SerialNumber,
) -> Result<Vec<u8>, der::Error> {
    let der = serial.to_der()?;
    Ok(AnyRef::from_der(&der)?.value().to_vec())
}

/// Split PEM text into the DER of its CERTIFICATE blocks.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[start..];
        let end_marker = "-----END CERTIFICATE-----";
        let Some(end) = after.find(end_marker) else {
            return Err(CertError::Pem("BEGIN CERTIFICATE without END".into()));
        };
        let block = &after[..end + end_marker.len()];
        let (label, der) =
            der::pem::decode_vec(block.as_bytes()).map_err(|e| CertError::Pem(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(CertError::Pem(format!("unexpected PEM label {label}")));
        }
        out.push(der);
        rest = &after[end + end_marker.len()..];
    }
    if out.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(out)
}
