//! Intel TDX quote verification.
//!
//! Owns the TDX verdict's public face: [`verify_tdx`] (a cold one-shot
//! [`TdxVerifier`](crate::TdxVerifier)), the verified result type, the
//! policy checks on the TD report and the reading of the PCK leaf from the
//! quote. The cryptographic core (quote signature by the attestation key, QE
//! report signed by the PCK, QE report data binding the attestation key, PCK
//! chain to Intel's SGX Root CA with the root and PCK CRLs, TCB info and QE
//! identity signatures and validity at `now`, FMSPC match, TCB level
//! matching with TDX module identities and the QE identity) is ours, in
//! [`crate::tdx_core`], with its caches. `dcap-qvl` is no dependency of this
//! crate any more: the tests keep it as a differential oracle
//! (`tests/tests/tdx_differential.rs`). Around the core this module adds what
//! a client needs: collateral that is missing is a rejection by name, the
//! TCB status and advisories are judged by a [`TdxPolicy`] (OutOfDate is
//! refused unless allowed, Revoked always), collateral age is bounded, and
//! every measurement register is compared.
//!
//! Reference: *Intel TDX DCAP Quoting Library API*, appendix "Quote Format";
//! *Intel PCS API* for TCB info v3 and QE identity v2.

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::pcs::PckCa;
use cocoon_attestation::tdx::{PckExtensions, Quote, TdReport, SGX_EXTENSIONS_OID};

use crate::policy::{Check, TcbStatus, TdxPolicy};
use crate::roots::PinnedCert;
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// Intel SGX Root CA (self-signed P-256, valid 2018-05-21..2049-12-31), the
/// trust anchor of every PCK chain and collateral signing chain.
const INTEL_ROOT: PinnedCert = PinnedCert::new(
    "Intel SGX Root CA",
    include_bytes!("../roots/intel/sgx_root_ca.der"),
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
);
/// SHA-256 of the bundled Intel SGX Root CA (DER).
pub const INTEL_ROOT_SHA256: &str = INTEL_ROOT.sha256;

/// A TDX quote that passed every check of a policy. Only this crate builds it.
#[derive(Debug, Clone)]
pub struct VerifiedTdx {
    quote: Quote,
    td: TdReport,
    tcb_status: TcbStatus,
    advisory_ids: Vec<String>,
}

impl VerifiedTdx {
    pub(crate) fn new(
        quote: Quote,
        td: TdReport,
        tcb_status: TcbStatus,
        advisory_ids: Vec<String>,
    ) -> Self {
        Self {
            quote,
            td,
            tcb_status,
            advisory_ids,
        }
    }
    /// The verified quote.
    pub fn quote(&self) -> &Quote {
        &self.quote
    }
    /// The TD report inside it.
    pub fn td_report(&self) -> &TdReport {
        &self.td
    }
    /// The converged TCB status.
    pub fn tcb_status(&self) -> TcbStatus {
        self.tcb_status
    }
    /// Intel security advisories that apply to this TCB level.
    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }
}

/// What the TCB evaluation found, whether or not the policy accepted it.
/// Returned alongside a rejection so tools can show the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbFinding {
    /// Converged status.
    pub status: TcbStatus,
    /// Advisory IDs.
    pub advisory_ids: Vec<String>,
}

/// The pinned Intel root, after checking its fingerprint.
pub(crate) fn intel_root() -> Option<&'static [u8]> {
    static PINNED: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| INTEL_ROOT.der())
}

pub(crate) fn classify(msg: &str) -> ReasonKind {
    let m = msg.to_ascii_lowercase();
    if m.contains("expired")
        || m.contains("in the future")
        || m.contains("notvalidyet")
        || m.contains("not valid yet")
    {
        ReasonKind::Expired
    } else if m.contains("no matching tcb level")
        || m.contains("below minimum")
        || m.contains("tcb status is invalid")
    {
        ReasonKind::Tcb
    } else if m.contains("crl") || m.contains("revocationstatus") {
        // A CRL that is not the one its slot needs (signed by another CA,
        // or none for the PCK's issuer): the collateral is unusable, even
        // when what failed is the CRL's signature.
        ReasonKind::Collateral
    } else if m.contains("vendor id") {
        // Checked before any signature: not Intel's quoting enclave.
        ReasonKind::UnknownValue
    } else if m.contains("signature") || m.contains("hash mismatch") {
        ReasonKind::Signature
    } else if m.contains("fmspc")
        || m.contains("tcb info")
        || m.contains("tcbinfo")
        || m.contains("qe identity")
    {
        ReasonKind::Collateral
    } else if m.contains("debug")
        || m.contains("attributes")
        || m.contains("sept_ve")
        || m.contains("migration")
        || m.contains("profiling")
        || m.contains("service td")
        || m.contains("servtd")
    {
        ReasonKind::Policy
    } else if m.contains("decode") || m.contains("unsupported") || m.contains("parse") {
        ReasonKind::Malformed
    } else {
        ReasonKind::Chain
    }
}

/// The issue date of the TCB info, from its signed JSON.
pub(crate) fn tcb_info_issue_date(c: &TdxCollateral) -> Option<UnixTime> {
    let v: serde_json::Value = serde_json::from_str(&c.tcb_info).ok()?;
    cocoon_attestation::pcs::rfc3339_to_unix(v.get("issueDate")?.as_str()?).map(UnixTime)
}

/// Verify a TDX quote with its collateral under `policy` at time `now`:
/// a cold one-shot [`TdxVerifier`](crate::TdxVerifier) (nothing cached
/// between calls). Callers that verify many quotes keep one `TdxVerifier`.
///
/// On rejection, the TCB finding is returned too when the cryptographic core
/// got far enough to compute it (so a tool can say "OutOfDate, rejected by
/// policy").
pub fn verify_tdx(
    quote_bytes: &[u8],
    collateral: &TdxCollateral,
    policy: &TdxPolicy,
    now: UnixTime,
) -> Result<VerifiedTdx, (Rejection, Option<TcbFinding>)> {
    crate::TdxVerifier::new().verify(quote_bytes, collateral, policy, now)
}

/// Which collateral a TDX quote needs: the FMSPC of its PCK certificate
/// (selects the TCB info) and the CA that issued that certificate (selects
/// the PCK CRL), read from the certificate the quote carries. It reads and
/// verifies nothing: the host uses it to fetch collateral
/// ([`cocoon_attestation::pcs::CollateralCache`]), whose Intel signatures
/// the verifier checks later against this same certificate.
pub fn collateral_key(quote_bytes: &[u8]) -> Result<([u8; 6], PckCa), String> {
    let (quote, _) = Quote::parse_prefix(quote_bytes).map_err(|e| format!("quote: {e}"))?;
    let cert = pck_leaf(&quote)?;
    let issuer = cert.tbs_certificate.issuer.to_string();
    // Intel's PCK certificate profile names exactly two issuing CAs.
    let ca = if issuer.contains("CN=Intel SGX PCK Platform CA") {
        PckCa::Platform
    } else if issuer.contains("CN=Intel SGX PCK Processor CA") {
        PckCa::Processor
    } else {
        return Err(format!(
            "the PCK certificate's issuer {issuer:?} is neither Intel SGX PCK Platform CA nor Processor CA"
        ));
    };
    Ok((pck_extensions_of(&cert)?.fmspc, ca))
}

/// The PCK leaf certificate carried in the quote.
fn pck_leaf(quote: &Quote) -> Result<x509_cert::Certificate, String> {
    use der::Decode;
    let der = pck_leaf_der(quote.pck_cert_chain_pem())?;
    x509_cert::Certificate::from_der(&der).map_err(|e| format!("PCK certificate: {e}"))
}

pub(crate) fn pck_extensions_of(cert: &x509_cert::Certificate) -> Result<PckExtensions, String> {
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == SGX_EXTENSIONS_OID)
        .ok_or("PCK certificate has no SGX extensions")?;
    PckExtensions::from_der(ext.extn_value.as_bytes())
        .map_err(|e| format!("PCK SGX extensions: {e}"))
}

/// The SGX extensions of a PCK certificate already parsed: the first
/// extension with their OID, as [`pck_extensions_of`] finds it.
pub(crate) fn pck_extensions_in(cert: &crate::x509::Cert) -> Result<PckExtensions, String> {
    const OID: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap(SGX_EXTENSIONS_OID);
    let value = cert
        .extension(&OID)
        .ok_or("PCK certificate has no SGX extensions")?;
    PckExtensions::from_der(value).map_err(|e| format!("PCK SGX extensions: {e}"))
}

/// The DER of the PCK leaf certificate: the first PEM block of the quote's
/// certificate chain (RFC 7468), which must be the very block `dcap-qvl`
/// (the tests' oracle) and our core's chain reading ([`crate::tdx_core`])
/// verifies as the leaf (`pem::parse_many`, first block), so that our TCB
/// evaluation reads the certificate whose signature was checked.
///
/// * Only that block is read. Bytes outside it (the NUL that usually ends
///   the chain, the issuing CA and the root) are not: RFC 7468 section 2,
///   "Data before the encapsulation boundaries are permitted, and parsers
///   MUST NOT malfunction when processing such data".
/// * Its label must be `CERTIFICATE` on both boundaries (RFC 7468 section 5).
/// * Inside it, whitespace between base64 characters is ignored, as the
///   lax grammar of RFC 7468 section 3 allows (`W`: SP, HT, CR, LF, VT, FF);
///   the base64 itself is decoded strictly. The certificate's signature, not
///   its line breaks, is what makes it genuine.
pub(crate) fn pck_leaf_der(chain: &[u8]) -> Result<Vec<u8>, String> {
    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }
    /// `rest` up to the next `marker`, and what follows the marker.
    fn split<'a>(rest: &'a [u8], marker: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
        let at = find(rest, marker)?;
        Some((&rest[..at], &rest[at + marker.len()..]))
    }
    const LABEL: &[u8] = b"CERTIFICATE";
    let (_, rest) = split(chain, b"-----BEGIN ").ok_or("quote carries no PCK certificate")?;
    let truncated = || "PCK certificate PEM is truncated".to_string();
    let (label, rest) = split(rest, b"-----").ok_or_else(truncated)?;
    let (body, rest) = split(rest, b"-----END ").ok_or_else(truncated)?;
    let (end_label, _) = split(rest, b"-----").ok_or_else(truncated)?;
    if label != LABEL || end_label != LABEL {
        return Err(format!(
            "the first PEM block of the PCK certificate chain is labelled {:?}/{:?}, not CERTIFICATE",
            String::from_utf8_lossy(label),
            String::from_utf8_lossy(end_label)
        ));
    }
    // The base64 characters, strictly decoded.
    crate::tdx_core::base64_standard(body, true)
        .ok_or_else(|| "PCK certificate PEM: the data is not canonical base64".to_string())
}

/// [`pck_leaf_der`]'s decoding as it was first written (the base64
/// re-wrapped into strict PEM and read by `der`'s PEM decoder), kept to test
/// the direct decoding against.
#[cfg(test)]
pub(crate) fn pck_leaf_der_rewrapped(body: &[u8]) -> Result<Vec<u8>, String> {
    let b64: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0B | 0x0C))
        .collect();
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in b64.chunks(64) {
        pem.extend_from_slice(line);
        pem.push(b'\n');
    }
    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    let (_, der) = der::pem::decode_vec(&pem).map_err(|e| format!("PCK certificate PEM: {e}"))?;
    Ok(der)
}

pub(crate) fn check_td_policy(td: &TdReport, p: &TdxPolicy, f: &mut Findings) {
    let want = |f: &mut Findings, name: &str, check: &Check<[u8; 48]>, have: &[u8; 48]| {
        if let Check::Require(v) = check {
            if v != have {
                f.add(
                    ReasonKind::Policy,
                    format!(
                        "{name} {} is not the expected {}",
                        hex::encode(have),
                        hex::encode(v)
                    ),
                );
            }
        }
    };
    if let Check::Require(list) = &p.mrtd {
        if !list.iter().any(|m| m == td.mrtd()) {
            f.add(
                ReasonKind::Policy,
                format!("MRTD not in policy: {}", hex::encode(td.mrtd())),
            );
        }
    }
    for (i, (check, have)) in p.rtmr.iter().zip(td.rtmrs()).enumerate() {
        want(f, &format!("RTMR{i}"), check, have);
    }
    want(f, "MRCONFIGID", &p.mrconfigid, td.mrconfigid());
    want(f, "MROWNER", &p.mrowner, td.mrowner());
    want(f, "MROWNERCONFIG", &p.mrownerconfig, td.mrownerconfig());
    let attrs = td.td_attributes();
    if let Check::Require(a) = &p.td_attributes {
        if u64::from_le_bytes(*a) != attrs.0 {
            f.add(
                ReasonKind::Policy,
                format!(
                    "TD attributes {:016x} are not the expected {}",
                    attrs.0,
                    hex::encode(a)
                ),
            );
        }
    }
    if attrs.debug() && !p.allow_debug {
        f.add(
            ReasonKind::Policy,
            "TD DEBUG attribute is set: the host can read and write the TD's memory",
        );
    }
    if let Check::Require(x) = &p.xfam {
        if u64::from_le_bytes(*x) != td.xfam() {
            f.add(
                ReasonKind::Policy,
                format!(
                    "XFAM {:016x} is not the expected {}",
                    td.xfam(),
                    hex::encode(x)
                ),
            );
        }
    }
    if let Check::Require(min) = &p.min_tee_tcb_svn {
        let have = td.tee_tcb_svn();
        for (i, (h, m)) in have.components().iter().zip(min.iter()).enumerate() {
            if h < m {
                f.add(
                    ReasonKind::Policy,
                    format!("TEE TCB SVN component {i} is {h}, below the minimum {m}"),
                );
            }
        }
    }
    if let Check::Require(d) = &p.report_data {
        if d != td.report_data() {
            f.add(
                ReasonKind::Policy,
                format!(
                    "report_data {} is not the expected {}",
                    hex::encode(td.report_data()),
                    hex::encode(d)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_root_matches() {
        assert!(intel_root().is_some());
    }

    #[test]
    fn pck_leaf_is_the_first_pem_block_read_as_rfc7468_allows() {
        // DER 30 03 02 01 05 is "MAMCAQU=".
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let chain = |leaf: &[u8]| {
            let mut c = b"\x01junk-----BEGIN CERTIFICATE-----\n".to_vec();
            c.extend_from_slice(leaf);
            c.extend_from_slice(
                b"\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nAA\xFF\n",
            );
            c.extend_from_slice(b"-----END CERTIFICATE-----\n\0\x80");
            c
        };
        // Anything outside the first block, UTF-8 or not, is not read.
        assert_eq!(pck_leaf_der(&chain(b"MAMCAQU=")), Ok(der.clone()));
        // Whitespace of the lax grammar inside the base64 is ignored...
        assert_eq!(pck_leaf_der(&chain(b"MA\x0bMC \tAQ\r\n\x0cU=")), Ok(der));
        // ... anything else is not base64.
        for bad in [
            &b"MAMCAQU"[..],
            b"MAMC-AQU=",
            b"MAMC:AQU=",
            b"MAMC\xC2\xA0AQU=",
        ] {
            assert!(pck_leaf_der(&chain(bad)).is_err(), "{bad:?}");
        }
        // The label must be CERTIFICATE on both boundaries.
        let relabel = String::from_utf8_lossy(&chain(b"MAMCAQU=")).replacen(
            "CERTIFICATE",
            "X509 CERTIFICATE",
            2,
        );
        assert!(pck_leaf_der(relabel.as_bytes())
            .unwrap_err()
            .contains("labelled"));
        assert!(pck_leaf_der(b"no PEM here").is_err());
        assert!(pck_leaf_der(b"-----BEGIN CERTIFICATE-----\nMAMCAQU=\n").is_err());
    }
}
