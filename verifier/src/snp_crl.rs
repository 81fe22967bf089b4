//! AMD's certificate revocation lists for SEV-SNP.
//!
//! Owns parsing a CRL from untrusted bytes ([`AmdCrl::parse`]) and judging
//! it for one verified VCEK/VLEK chain: signed by that chain's pinned ARK,
//! current at the verification time, and not listing the chain's ASK/ASVK
//! or VCEK/VLEK. It fetches nothing and reads no clock: the CRL comes in as
//! collateral (the evidence bundle's SNP collateral, `cocoon-verify snp
//! --crl`), time as [`UnixTime`]. Chain building stays in [`crate::snp`].
//!
//! AMD's key distribution service publishes one CRL per product and key
//! family (`/vcek/v1/{Milan,Genoa,Turin}/crl`, `/vlek/v1/.../crl`), DER,
//! signed by the product's ARK with RSASSA-PSS/SHA-384 (*VCEK Certificate
//! and KDS Interface Specification*, AMD #57230, §4 "KDS interface"). The
//! structure is RFC 5280 §5: `CertificateList ::= SEQUENCE { tbsCertList,
//! signatureAlgorithm, signatureValue }`.
//!
//! Rules (fail closed): version 2 only; the inner and outer signature
//! algorithms equal and RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48; `issuer`
//! byte-equal to the ARK's subject; `nextUpdate` present, and `thisUpdate ≤
//! now ≤ nextUpdate` (a CRL past its nextUpdate is stale); no delta CRL; no
//! critical CRL or entry extension (RFC 5280 §5.2/§5.3: a critical
//! extension the reader does not process makes the CRL unusable, e.g. an
//! indirect CRL's certificateIssuer or a scoping issuingDistributionPoint).
//! A listed serial equal to the serial of the chain's ASK/ASVK or of the
//! VCEK/VLEK is a revocation.

use core::fmt;

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::crl::CertificateList;

use crate::x509::{check_pss_sha384, serial_contents, Cert, RawSigned};
use crate::{Findings, ReasonKind, UnixTime};

/// Most bytes of a CRL accepted (AMD's are a few KiB).
pub const MAX_CRL: usize = 256 << 10;

/// deltaCRLIndicator (RFC 5280 §5.2.4): a delta CRL is not a complete list.
const OID_DELTA_CRL_INDICATOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.27");

/// Why bytes are not a usable AMD CRL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// Larger than [`MAX_CRL`].
    #[error("CRL is {0} bytes, more than the {MAX_CRL} accepted")]
    TooLarge(usize),
    /// PEM armour present but broken, or not an `X509 CRL` block.
    #[error("not a PEM CRL: {0}")]
    Pem(String),
    /// Not a DER CertificateList.
    #[error("not a DER X.509 CRL: {0}")]
    Der(String),
    /// A version other than v2.
    #[error("CRL version is not v2")]
    Version,
    /// The signature algorithm is not the one AMD's ARKs use.
    #[error("CRL signature algorithm is not RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48 as AMD's ARKs sign with")]
    Algorithm,
    /// tbsCertList.signature differs from signatureAlgorithm (RFC 5280 §5.1.2.2).
    #[error("CRL signatureAlgorithm differs from tbsCertList.signature")]
    AlgorithmMismatch,
    /// No nextUpdate: freshness cannot be judged.
    #[error("CRL has no nextUpdate, so its freshness cannot be judged")]
    NoNextUpdate,
    /// A delta CRL, not a complete list.
    #[error("CRL is a delta CRL (deltaCRLIndicator), not a complete list")]
    Delta,
    /// A critical extension this reader does not process.
    #[error("CRL has a critical {0} extension {1} this verifier does not process")]
    Critical(&'static str, String),
}

/// A parsed CRL. Its signature is not checked by parsing; the verifier
/// checks it against the ARK of the chain it judges.
#[derive(Clone, PartialEq, Eq)]
pub struct AmdCrl {
    tbs: Vec<u8>,
    signature: Vec<u8>,
    issuer: Vec<u8>,
    issuer_cn: String,
    this_update: UnixTime,
    next_update: UnixTime,
    /// (serial contents, revocation date).
    revoked: Vec<(Vec<u8>, UnixTime)>,
}

impl fmt::Debug for AmdCrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmdCrl")
            .field("issuer", &self.issuer_cn)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

fn der_err(e: der::Error) -> CrlError {
    CrlError::Der(e.to_string())
}

impl AmdCrl {
    /// Parse a CRL: DER, or PEM with one `X509 CRL` block.
    pub fn parse(bytes: &[u8]) -> Result<AmdCrl, CrlError> {
        if bytes.len() > MAX_CRL {
            return Err(CrlError::TooLarge(bytes.len()));
        }
        let trimmed = bytes.trim_ascii();
        let pem;
        let der = if trimmed.starts_with(b"-----BEGIN") {
            let (label, body) =
                der::pem::decode_vec(trimmed).map_err(|e| CrlError::Pem(e.to_string()))?;
            if label != "X509 CRL" {
                return Err(CrlError::Pem(format!(
                    "block is labelled {label:?}, not \"X509 CRL\""
                )));
            }
            pem = body;
            pem.as_slice()
        } else {
            bytes
        };
        let crl = CertificateList::from_der(der).map_err(der_err)?;
        let raw = RawSigned::from_der(der).map_err(der_err)?;
        let t = &crl.tbs_cert_list;
        if t.version != x509_cert::Version::V2 {
            return Err(CrlError::Version);
        }
        if t.signature != crl.signature_algorithm {
            return Err(CrlError::AlgorithmMismatch);
        }
        check_pss_sha384(&crl.signature_algorithm).map_err(|_| CrlError::Algorithm)?;
        let next_update = t.next_update.ok_or(CrlError::NoNextUpdate)?;
        for e in t.crl_extensions.iter().flatten() {
            if e.extn_id == OID_DELTA_CRL_INDICATOR {
                return Err(CrlError::Delta);
            }
            if e.critical {
                return Err(CrlError::Critical("CRL", e.extn_id.to_string()));
            }
        }
        let mut revoked = Vec::new();
        for entry in t.revoked_certificates.iter().flatten() {
            if let Some(e) = entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .find(|e| e.critical)
            {
                return Err(CrlError::Critical("entry", e.extn_id.to_string()));
            }
            revoked.push((
                serial_contents(&entry.serial_number).map_err(der_err)?,
                UnixTime(entry.revocation_date.to_unix_duration().as_secs()),
            ));
        }
        let signature = crl
            .signature
            .as_bytes()
            .ok_or_else(|| CrlError::Der("signature bit string has unused bits".into()))?
            .to_vec();
        Ok(AmdCrl {
            tbs: raw.tbs.to_der().map_err(der_err)?,
            signature,
            issuer: t.issuer.to_der().map_err(der_err)?,
            issuer_cn: crate::x509::common_name(&t.issuer),
            this_update: UnixTime(t.this_update.to_unix_duration().as_secs()),
            next_update: UnixTime(next_update.to_unix_duration().as_secs()),
            revoked,
        })
    }

    /// When the CRL was issued.
    pub fn this_update(&self) -> UnixTime {
        self.this_update
    }
    /// When the next CRL is due; past it this one is stale.
    pub fn next_update(&self) -> UnixTime {
        self.next_update
    }
    /// The issuer's common name, as the CRL states it (unverified until
    /// the signature is checked).
    pub fn issuer_cn(&self) -> &str {
        &self.issuer_cn
    }
    /// How many certificates it lists.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }
    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
    /// When the certificate with these serialNumber contents octets was
    /// revoked, if the CRL lists it.
    pub fn revoked_at(&self, serial: &[u8]) -> Option<UnixTime> {
        self.revoked
            .iter()
            .find(|(s, _)| s.as_slice() == serial)
            .map(|(_, t)| *t)
    }

    /// Whether `ark` issued and signed this CRL.
    pub(crate) fn issued_by(&self, ark: &Cert) -> bool {
        self.issuer == ark.subject
            && match &ark.key {
                crate::x509::SubjectKey::Rsa(k) => k.verify(&self.tbs, &self.signature),
                _ => false,
            }
    }
}

/// Whether, and how, the certificates of a verified SNP report were
/// checked for revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnpRevocation {
    /// AMD's CRL, signed by the chain's ARK and current, lists neither the
    /// ASK/ASVK nor the VCEK/VLEK.
    Checked {
        /// The CRL's thisUpdate.
        this_update: UnixTime,
        /// The CRL's nextUpdate (after the verification time).
        next_update: UnixTime,
        /// How many certificates the CRL lists.
        listed: usize,
    },
    /// The policy says `revocation = "skip"`: NOT checked.
    NotChecked,
}

/// A certificate a CRL may list: what it is ("ASK", "VCEK", ...), its
/// common name and its serialNumber contents octets.
#[derive(Debug, Clone)]
pub(crate) struct Listable {
    pub what: &'static str,
    pub cn: String,
    pub serial: Vec<u8>,
}

/// The certificates of one chain a CRL is judged for.
pub(crate) struct ChainToJudge<'a> {
    /// The chain's pinned ARK (the only acceptable CRL signer).
    pub ark: &'a Cert,
    /// The ASK/ASVK and the VCEK/VLEK.
    pub listed: &'a [Listable],
}

/// Judge `crl` for `chain` at `now`, adding every shortfall to `f`.
/// Returns the outcome when nothing fell short.
pub(crate) fn judge(
    crl: &AmdCrl,
    chain: &ChainToJudge<'_>,
    now: UnixTime,
    f: &mut Findings,
) -> Option<SnpRevocation> {
    let before = f.len();
    let ark = chain.ark;
    if !crl.issued_by(ark) {
        f.add(
            ReasonKind::Collateral,
            format!(
                "the AMD CRL (issuer {:?}) is not signed by {}, the ARK this chain leads to: it cannot say what AMD revoked",
                crl.issuer_cn, ark.subject_cn
            ),
        );
        return None;
    }
    if now < crl.this_update {
        f.add(
            ReasonKind::Collateral,
            format!(
                "the AMD CRL by {} is not valid until {} (verification time {})",
                ark.subject_cn,
                crate::snp::fmt_time(crl.this_update),
                crate::snp::fmt_time(now)
            ),
        );
    }
    if now > crl.next_update {
        f.add(
            ReasonKind::Collateral,
            format!(
                "the AMD CRL by {} is stale: its nextUpdate {} is before the verification time {}; fetch a current one",
                ark.subject_cn,
                crate::snp::fmt_time(crl.next_update),
                crate::snp::fmt_time(now)
            ),
        );
    }
    for c in chain.listed {
        if let Some(at) = crl.revoked_at(&c.serial) {
            f.add(
                ReasonKind::Revoked,
                format!(
                    "the {} certificate {} (serial {}) is revoked: AMD's CRL by {} lists it, revoked at {}",
                    c.what,
                    c.cn,
                    hex::encode(&c.serial),
                    ark.subject_cn,
                    crate::snp::fmt_time(at)
                ),
            );
        }
    }
    (f.len() == before).then_some(SnpRevocation::Checked {
        this_update: crl.this_update,
        next_update: crl.next_update,
        listed: crl.len(),
    })
}
