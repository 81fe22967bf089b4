//! [`TdxVerifier`]: our own Intel DCAP core for TDX quotes, with caches.
//!
//! [`crate::tdx::verify_tdx`] is this core, cold (a new verifier per call).
//! `dcap-qvl` is the tests' differential oracle for it.
//!
//! Owns the cryptographic checks of a TDX quote and its collateral, and two
//! bounded caches keyed by the SHA-256 of the exact bytes received (an
//! altered copy is a miss and is verified from scratch):
//!
//! * collateral sets: root CA CRL (signed by the pinned Intel SGX Root CA),
//!   PCK CRL (parsed; its signature is checked against the PCK CA of the
//!   quote), TCB info and QE identity (signature over the JSON text by a
//!   signing certificate issued directly by the root, not revoked by the
//!   root CA CRL);
//! * PCK chains carried in quotes (leaf and PCK CA up to the pinned root).
//!
//! What depends on the time is kept as data and checked again at every call
//! against the caller's `now`: every certificate's validity, each CRL's
//! nextUpdate, the TCB info and QE identity issueDate/nextUpdate. Revocation
//! of the PCK leaf and of its CA is checked at every call against the CRLs of
//! the collateral in use. Quote signature, QE report signature, QE report
//! data binding, QE identity, TCB evaluation and policy are judged at every
//! call; nothing about them is cached.
//!
//! Layouts: *Intel TDX DCAP Quoting Library API*, appendix "Quote Format"
//! (header, TD quote body, "ECDSA 256-bit Quote Signature Data Structure",
//! "QE Report Certification Data", certification data type 5 = PCK
//! certificate chain in PEM); *Intel PCS API* (TCB info v3, QE identity v2,
//! PCK CRL, root CA CRL; signatures are raw 64-byte `r || s` over the JSON
//! text of the `tcbInfo` / `enclaveIdentity` member).
//!
//! It does no I/O and reads no clock.

use std::sync::{Arc, Mutex};

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::tdx::{Quote, TdReport, TeeType};
use der::{Decode, Encode};

use crate::crypto::{sha256, EcdsaHash, P256Key};
use crate::policy::{TcbStatus, TdxPolicy};
use crate::tdx::{TcbFinding, VerifiedTdx};
use crate::verified_cache::VerifiedCache;
use crate::x509::{
    serial_contents, Cert, CertError, RawSigned, SigAlg, SubjectKey, OID_ECDSA_SHA256,
};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// Most entries each cache keeps; past this it starts over.
const CACHE_CAPACITY: usize = 256;
/// Intel's DCAP chains carry at most the CA and the root above a leaf.
const MAX_INTERMEDIATES: usize = 4;
/// Intel's QE vendor ID (Quote Format, header `QE Vendor ID`).
const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// Attestation key type 2: ECDSA-256 with P-256 (Quote Format, header).
const ECDSA_P256_KEY_TYPE: u16 = 2;

type Reject = (ReasonKind, String);

fn reject(kind: ReasonKind, msg: impl Into<String>) -> Reject {
    (kind, msg.into())
}

/// A validity window checked at every call.
#[derive(Clone)]
struct Window {
    what: String,
    not_before: u64,
    /// Last valid second, inclusive (certificates, JSON nextUpdate).
    not_after: u64,
}

impl Window {
    fn check(&self, now: UnixTime) -> Result<(), Reject> {
        if now.0 < self.not_before {
            Err(reject(
                ReasonKind::Expired,
                format!("{} is not valid yet at the verification time", self.what),
            ))
        } else if now.0 > self.not_after {
            Err(reject(
                ReasonKind::Expired,
                format!("{} expired before the verification time", self.what),
            ))
        } else {
            Ok(())
        }
    }
}

/// An Intel CRL (RFC 5280 §5, ecdsa-with-SHA256), parsed.
struct IntelCrl {
    tbs: Vec<u8>,
    signature: [u8; 64],
    issuer: Vec<u8>,
    next_update: u64,
    revoked: Vec<Vec<u8>>,
}

impl IntelCrl {
    fn parse(what: &str, der: &[u8]) -> Result<IntelCrl, Reject> {
        use x509_cert::crl::CertificateList;
        let bad = |e: String| reject(ReasonKind::Collateral, format!("{what}: {e}"));
        let crl = CertificateList::from_der(der).map_err(|e| bad(e.to_string()))?;
        let raw = RawSigned::from_der(der).map_err(|e| bad(e.to_string()))?;
        let t = &crl.tbs_cert_list;
        if crl.signature_algorithm.oid != OID_ECDSA_SHA256
            || crl.signature_algorithm.parameters.is_some()
            || t.signature != crl.signature_algorithm
        {
            return Err(bad("not signed with ecdsa-with-SHA256".into()));
        }
        let next_update = t
            .next_update
            .ok_or_else(|| bad("has no nextUpdate".into()))?
            .to_unix_duration()
            .as_secs();
        for e in t.crl_extensions.iter().flatten() {
            // Issuing distribution point (scope) and delta CRLs are not
            // used by Intel; refuse rather than guess their scope.
            let oid = e.extn_id.to_string();
            if e.critical || oid == "2.5.29.28" || oid == "2.5.29.27" {
                return Err(bad(format!(
                    "has an extension this verifier does not handle: {oid}"
                )));
            }
        }
        let mut revoked = Vec::new();
        for entry in t.revoked_certificates.iter().flatten() {
            if entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .any(|e| e.critical)
            {
                return Err(bad("an entry has a critical extension".into()));
            }
            revoked.push(serial_contents(&entry.serial_number).map_err(|e| bad(e.to_string()))?);
        }
        let sig = crl
            .signature
            .as_bytes()
            .ok_or_else(|| bad("signature bit string has unused bits".into()))?;
        let signature: [u8; 64] = p256::ecdsa::Signature::from_der(sig)
            .map_err(|_| bad("signature is not a P-256 Ecdsa-Sig-Value".into()))?
            .to_bytes()
            .into();
        Ok(IntelCrl {
            tbs: raw.tbs.to_der().map_err(|e| bad(e.to_string()))?,
            signature,
            issuer: t.issuer.to_der().map_err(|e| bad(e.to_string()))?,
            next_update,
            revoked,
        })
    }

    /// Whether `issuer` (by name and key) signed this CRL.
    fn issued_by(&self, issuer: &Cert) -> bool {
        // keyUsage, when present, must allow cRLSign (bit 6, RFC 5280
        // section 4.2.1.3).
        self.issuer == issuer.subject
            && matches!(issuer.key_usage_allows(6), Ok(None | Some(true)))
            && matches!(&issuer.key, SubjectKey::P256(k)
                if k.verify_fixed_with(EcdsaHash::Sha256, &self.tbs, &self.signature))
    }

    /// CRLs are usable while `now` is before nextUpdate (RFC 5280 §5.1.2.5).
    fn check_fresh(&self, what: &str, now: UnixTime) -> Result<(), Reject> {
        if now.0 >= self.next_update {
            Err(reject(
                ReasonKind::Expired,
                format!("{what} expired (nextUpdate) before the verification time"),
            ))
        } else {
            Ok(())
        }
    }

    fn revokes(&self, cert: &Cert) -> bool {
        self.issuer == cert.issuer && self.revoked.contains(&cert.serial)
    }
}

/// The PEM blocks of a certificate chain, read as the `pem` crate's
/// `parse_many` reads them (the reader `dcap-qvl` uses, so that both
/// verifiers see the same blocks): a block is `-----BEGIN label-----`, the
/// base64 data (with optional RFC 1421 headers ending at the first blank
/// line), `-----END label-----`; text between blocks is skipped; an
/// incomplete block at the end stops the reading; any block with a non-UTF-8
/// part, different or empty labels, a header line without `:`, or data that
/// is not canonical padded base64 once whitespace is removed fails the whole
/// chain. Labels are not checked (the leaf label is, elsewhere).
pub(crate) fn pem_chain(mut input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    /// `input` up to the first `marker` and what follows it, found by a
    /// left-to-right scan that, on a mismatch, restarts matching at the
    /// byte after the mismatching one (the `pem` crate's scan).
    fn until<'a>(input: &'a [u8], marker: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
        let (mut i, mut matched) = (0usize, 0usize);
        while input.len() - i >= marker.len() - matched {
            matched = if input[i] == marker[matched] {
                matched + 1
            } else {
                0
            };
            i += 1;
            if matched == marker.len() {
                return Some((&input[..i - matched], &input[i..]));
            }
        }
        None
    }
    fn skip_ws(mut s: &[u8]) -> &[u8] {
        while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = s {
            s = rest;
        }
        s
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "PEM is not UTF-8".to_string())
    };
    let mut out = Vec::new();
    while !input.is_empty() {
        let Some((_, rest)) = until(input, b"-----BEGIN ") else {
            break;
        };
        let Some((begin, rest)) = until(rest, b"-----") else {
            break;
        };
        let rest = skip_ws(rest);
        let Some((payload, rest)) = until(rest, b"-----END ") else {
            break;
        };
        let Some((end, rest)) = until(rest, b"-----") else {
            break;
        };
        input = skip_ws(rest);
        let (headers, data) = match until(payload, b"\n\n").or_else(|| until(payload, b"\r\n\r\n"))
        {
            Some((h, d)) => (h, d),
            None => (&[][..], payload),
        };
        let (begin, end) = (utf8(begin)?, utf8(end)?);
        if begin.is_empty() || end.is_empty() || begin != end {
            return Err("PEM block labels are missing or differ".into());
        }
        // Unicode White_Space removed (for ASCII: tab, LF, VT, FF, CR, space).
        let data: Vec<u8> = if data.is_ascii() {
            data.iter()
                .copied()
                .filter(|b| !matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' '))
                .collect()
        } else {
            utf8(data)?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .into_bytes()
        };
        let der = base64_standard(&data).ok_or("PEM data is not base64")?;
        if utf8(headers)?.lines().any(|l| !l.contains(':')) {
            return Err("PEM header line without ':'".into());
        }
        out.push(der);
    }
    Ok(out)
}

/// Canonical padded standard base64 (RFC 4648 §4): length a multiple of 4,
/// at most two `=` at the end only, zero trailing bits.
fn base64_standard(s: &[u8]) -> Option<Vec<u8>> {
    use base64ct::{Base64, Encoding};
    Base64::decode_vec(std::str::from_utf8(s).ok()?).ok()
}

/// Verify an issuer-chain PEM for a collateral signer: the first block
/// must be issued directly by the root. Returns the signer certificate.
fn collateral_signer(
    what: &str,
    pem: &str,
    root: &Cert,
    root_crl: &IntelCrl,
) -> Result<Cert, Reject> {
    let blocks = pem_chain(pem.as_bytes())
        .map_err(|e| reject(ReasonKind::Malformed, format!("{what} issuer chain: {e}")))?;
    let [leaf, rest @ ..] = &blocks[..] else {
        return Err(reject(
            ReasonKind::Chain,
            format!("{what} issuer chain is empty"),
        ));
    };
    if rest.len() > MAX_INTERMEDIATES {
        return Err(reject(
            ReasonKind::Chain,
            format!("{what} issuer chain is too long"),
        ));
    }
    let cert = Cert::from_der_as(leaf, SigAlg::EcdsaP256Sha256).map_err(|e| {
        reject(
            ReasonKind::Chain,
            format!("{what} signing certificate: {e}"),
        )
    })?;
    if cert.issuer != root.subject || !cert.signed_by(root) {
        return Err(reject(
            ReasonKind::Chain,
            format!("{what} signing certificate is not issued by the Intel SGX Root CA"),
        ));
    }
    end_entity_checks(what, &cert)?;
    if root_crl.revokes(&cert) {
        return Err(reject(
            ReasonKind::Revoked,
            format!("{what} signing certificate is revoked"),
        ));
    }
    Ok(cert)
}

/// What the path builder requires of an end-entity certificate: not a CA,
/// no critical extension it does not know, no EKU without serverAuth/any.
fn end_entity_checks(what: &str, cert: &Cert) -> Result<(), Reject> {
    if let Ok(Some((true, _))) | Err(_) = cert.basic_constraints() {
        return Err(reject(
            ReasonKind::Chain,
            format!("{what} certificate is a CA or unreadable"),
        ));
    }
    known_critical(what, cert)
}

/// What a path builder (webpki, as `dcap-qvl` runs it) requires of every
/// certificate on the path: no critical extension it does not know, and an
/// extendedKeyUsage, when present, that names serverAuth (`dcap-qvl` verifies
/// Intel's chains "for server auth"; Intel's certificates carry no EKU).
fn known_critical(what: &str, cert: &Cert) -> Result<(), Reject> {
    const KNOWN: [&str; 4] = ["2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.17"];
    const EKU: &str = "2.5.29.37";
    const SERVER_AUTH: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    for (oid, critical, value) in &cert.extensions {
        let oid_text = oid.to_string();
        if *critical && !KNOWN.contains(&oid_text.as_str()) {
            return Err(reject(
                ReasonKind::Chain,
                format!("{what} certificate has an unknown critical extension {oid}"),
            ));
        }
        if oid_text == EKU {
            let usable = x509_cert::ext::pkix::ExtendedKeyUsage::from_der(value)
                .is_ok_and(|eku| eku.0.contains(&SERVER_AUTH));
            if !usable {
                return Err(reject(
                    ReasonKind::Chain,
                    format!("{what} certificate's extended key usage does not allow this use"),
                ));
            }
        }
    }
    Ok(())
}

fn cert_window(what: &str, c: &Cert) -> Window {
    Window {
        what: format!("{what} certificate"),
        not_before: c.not_before.0,
        not_after: c.not_after.0,
    }
}

/// issueDate and nextUpdate of Intel's signed JSON (PCS API).
fn json_window(what: &str, v: &serde_json::Value) -> Result<Window, Reject> {
    let date = |k: &str| {
        v.get(k)
            .and_then(|d| d.as_str())
            .and_then(cocoon_attestation::pcs::rfc3339_to_unix)
            .ok_or_else(|| {
                reject(
                    ReasonKind::Collateral,
                    format!("{what} has no readable {k}"),
                )
            })
    };
    Ok(Window {
        what: what.to_string(),
        not_before: date("issueDate")?,
        not_after: date("nextUpdate")?,
    })
}

fn hex_array<const N: usize>(
    v: &serde_json::Value,
    k: &str,
    what: &str,
) -> Result<[u8; N], Reject> {
    v.get(k)
        .and_then(|s| s.as_str())
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| {
            reject(
                ReasonKind::Collateral,
                format!("{what}: {k} is missing or not {N} hex bytes"),
            )
        })
}

/// What the QE identity requires of the QE report (PCS API, QE identity v2).
struct QePolicy {
    mrsigner: [u8; 32],
    isvprodid: u16,
    miscselect: u32,
    miscselect_mask: u32,
    attributes: [u8; 16],
    attributes_mask: [u8; 16],
}

/// SEAM module signer and attributes a TCB info expects (PCS API, TCB info
/// v3 `tdxModule` and `tdxModuleIdentities`).
struct ModuleSigner {
    mrsigner: [u8; 48],
    attributes: [u8; 8],
    attributes_mask: [u8; 8],
}

/// A collateral set that passed every time-independent check.
struct CheckedCollateral {
    root_crl: IntelCrl,
    pck_crl: IntelCrl,
    windows: Vec<Window>,
    tcb_info: String,
    qe_identity: String,
    qe: QePolicy,
    module: ModuleSigner,
    /// `tdxModuleIdentities`: id → signer.
    module_ids: Vec<(String, ModuleSigner)>,
}

/// A PCK chain that passed every time-independent check.
struct CheckedPck {
    leaf: Cert,
    ca: Cert,
    pck: cocoon_attestation::tdx::PckExtensions,
    /// SHA-256 of PCK CRLs whose signature this CA verified.
    crls_signed: Mutex<Vec<[u8; 32]>>,
}

/// Verifies TDX quotes with our own DCAP core, caching verified collateral
/// sets and PCK chains (bounded, keyed by the SHA-256 of their exact bytes,
/// dates and revocation re-checked at every call). Cheap to share between
/// threads.
#[derive(Default)]
pub struct TdxVerifier {
    collateral: VerifiedCache<CheckedCollateral, CACHE_CAPACITY>,
    pck: VerifiedCache<CheckedPck, CACHE_CAPACITY>,
}

/// The pinned Intel root, parsed once.
fn root_cert() -> Option<&'static Cert> {
    static ROOT: std::sync::OnceLock<Option<Cert>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let der = crate::tdx::intel_root()?;
        Cert::from_der_as(der, SigAlg::EcdsaP256Sha256).ok()
    })
    .as_ref()
}

/// SHA-256 over the length-prefixed collateral fields: the cache key.
fn collateral_key(c: &TdxCollateral, root_crl: &[u8], pck_crl: &[u8]) -> [u8; 32] {
    let mut all = Vec::new();
    for part in [
        root_crl,
        pck_crl,
        c.tcb_info_issuer_chain.as_bytes(),
        c.tcb_info.as_bytes(),
        &c.tcb_info_signature,
        c.qe_identity_issuer_chain.as_bytes(),
        c.qe_identity.as_bytes(),
        &c.qe_identity_signature,
    ] {
        all.extend_from_slice(&(part.len() as u64).to_le_bytes());
        all.extend_from_slice(part);
    }
    sha256(&all)
}

fn check_collateral(
    c: &TdxCollateral,
    root: &Cert,
    root_crl_der: &[u8],
    pck_crl_der: &[u8],
) -> Result<CheckedCollateral, Reject> {
    let root_crl = IntelCrl::parse("Intel SGX Root CA CRL", root_crl_der)?;
    if !root_crl.issued_by(root) {
        return Err(reject(
            ReasonKind::Collateral,
            "the root CA CRL is not signed by the Intel SGX Root CA",
        ));
    }
    let pck_crl = IntelCrl::parse("PCK CRL", pck_crl_der)?;
    if root_crl.revokes(root) {
        return Err(reject(
            ReasonKind::Revoked,
            "the Intel SGX Root CA is revoked",
        ));
    }
    let mut windows = Vec::new();
    let mut known: Option<(String, Cert)> = None;
    let mut signed = |what: &str,
                      json: &str,
                      sig: &[u8],
                      chain: &str|
     -> Result<serde_json::Value, Reject> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| reject(ReasonKind::Collateral, format!("{what}: {e}")))?;
        windows.push(json_window(what, &v)?);
        // Intel signs TCB info and QE identity with the same certificate:
        // the same chain text is verified once.
        let signer = match &known {
            Some((text, cert)) if text == chain => cert,
            _ => {
                let cert = collateral_signer(what, chain, root, &root_crl)?;
                &known.insert((chain.to_owned(), cert)).1
            }
        };
        windows.push(cert_window(&format!("{what} signing"), signer));
        let ok = <&[u8; 64]>::try_from(sig).is_ok_and(|sig| {
            matches!(&signer.key, SubjectKey::P256(k) if k.verify_fixed_with(EcdsaHash::Sha256, json.as_bytes(), sig))
        });
        if !ok {
            return Err(reject(
                ReasonKind::Signature,
                format!(
                    "Signature is invalid for the {what} ({}) in the collateral",
                    if what == "TCB info" {
                        "tcb_info"
                    } else {
                        "qe_identity"
                    }
                ),
            ));
        }
        Ok(v)
    };
    let tcb = signed(
        "TCB info",
        &c.tcb_info,
        &c.tcb_info_signature,
        &c.tcb_info_issuer_chain,
    )?;
    let qe = signed(
        "QE identity",
        &c.qe_identity,
        &c.qe_identity_signature,
        &c.qe_identity_issuer_chain,
    )?;
    let (id, version) = (
        qe.get("id").and_then(|v| v.as_str()),
        qe.get("version").and_then(|v| v.as_u64()),
    );
    if id != Some("TD_QE") || !matches!(version, Some(2 | 3)) {
        return Err(reject(
            ReasonKind::Collateral,
            "QE identity is not the TD QE's (id TD_QE, version 2 or 3)",
        ));
    }
    let what = "QE identity";
    let qe_policy = QePolicy {
        mrsigner: hex_array(&qe, "mrsigner", what)?,
        isvprodid: qe
            .get("isvprodid")
            .and_then(|v| v.as_u64())
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| reject(ReasonKind::Collateral, "QE identity: isvprodid"))?,
        miscselect: u32::from_le_bytes(hex_array(&qe, "miscselect", what)?),
        miscselect_mask: u32::from_le_bytes(hex_array(&qe, "miscselectMask", what)?),
        attributes: hex_array(&qe, "attributes", what)?,
        attributes_mask: hex_array(&qe, "attributesMask", what)?,
    };
    let signer = |v: &serde_json::Value, what: &str| -> Result<ModuleSigner, Reject> {
        Ok(ModuleSigner {
            mrsigner: hex_array(v, "mrsigner", what)?,
            attributes: hex_array(v, "attributes", what)?,
            attributes_mask: hex_array(v, "attributesMask", what)?,
        })
    };
    let module = signer(
        tcb.get("tdxModule").unwrap_or(&serde_json::Value::Null),
        "TCB info tdxModule",
    )?;
    let mut module_ids = Vec::new();
    for m in tcb
        .get("tdxModuleIdentities")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let id = m
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        module_ids.push((id, signer(m, "TCB info tdxModuleIdentities")?));
    }
    Ok(CheckedCollateral {
        root_crl,
        pck_crl,
        windows,
        tcb_info: c.tcb_info.clone(),
        qe_identity: c.qe_identity.clone(),
        qe: qe_policy,
        module,
        module_ids,
    })
}

fn check_pck(chain: &[u8], root: &Cert) -> Result<CheckedPck, Reject> {
    // An unreadable chain is malformed evidence (dcap-qvl: "Failed to parse
    // certs"); in a readable one, the leaf must be the first block and be
    // labelled CERTIFICATE (RFC 7468 section 5.1), or it is no PCK chain.
    let blocks = pem_chain(chain).map_err(|e| {
        let msg = format!("PCK certificate chain: {e}");
        match crate::tdx::pck_leaf_der(chain) {
            // The first block is not a CERTIFICATE at all: no PCK chain.
            Err(leaf) if leaf.contains("labelled") => {
                reject(ReasonKind::Chain, format!("{leaf}; {msg}"))
            }
            _ => reject(ReasonKind::Malformed, msg),
        }
    })?;
    let leaf_der = crate::tdx::pck_leaf_der(chain).map_err(|e| reject(ReasonKind::Chain, e))?;
    let [first, rest @ ..] = &blocks[..] else {
        return Err(reject(
            ReasonKind::Chain,
            "quote carries no PCK certificate",
        ));
    };
    if *first != leaf_der {
        return Err(reject(
            ReasonKind::Chain,
            "PCK certificate PEM is ambiguous",
        ));
    }
    if rest.len() > MAX_INTERMEDIATES {
        return Err(reject(
            ReasonKind::Chain,
            "PCK certificate chain is too long",
        ));
    }
    // A certificate whose signature value cannot be read is one whose
    // signature does not verify.
    let kind = |e: &CertError| match e {
        CertError::SignatureEncoding => ReasonKind::Signature,
        _ => ReasonKind::Chain,
    };
    let leaf = Cert::from_der_as(first, SigAlg::EcdsaP256Sha256)
        .map_err(|e| reject(kind(&e), format!("PCK certificate: {e}")))?;
    end_entity_checks("PCK", &leaf)?;
    // The issuing CA: any later block that the root issued and that issued
    // the leaf. An unreadable block is skipped, as path builders do; when no
    // block fits, a signature that failed is the most specific reason.
    let mut signature_failed = false;
    let mut found = None;
    for der in rest {
        let ca = match Cert::from_der_as(der, SigAlg::EcdsaP256Sha256) {
            Ok(ca) => ca,
            Err(CertError::SignatureEncoding) => {
                signature_failed = true;
                continue;
            }
            Err(_) => continue,
        };
        if ca.subject != leaf.issuer
            || ca.issuer != root.subject
            || !matches!(ca.basic_constraints(), Ok(Some((true, _))))
            || !matches!(ca.key_usage_allows(5), Ok(None | Some(true)))
            || known_critical("PCK CA", &ca).is_err()
        {
            continue;
        }
        if ca.signed_by(root) && leaf.signed_by(&ca) {
            found = Some(ca);
            break;
        }
        signature_failed = true;
    }
    let Some(ca) = found else {
        return Err(if signature_failed {
            reject(
                ReasonKind::Signature,
                "a PCK certificate chain signature does not verify",
            )
        } else {
            reject(
                ReasonKind::Chain,
                "PCK certificate does not chain to the Intel SGX Root CA",
            )
        });
    };
    let cert = x509_cert::Certificate::from_der(first)
        .map_err(|e| reject(ReasonKind::Chain, format!("PCK certificate: {e}")))?;
    let pck =
        crate::tdx::pck_extensions_of(&cert).map_err(|e| reject(ReasonKind::Collateral, e))?;
    Ok(CheckedPck {
        leaf,
        ca,
        pck,
        crls_signed: Mutex::new(Vec::new()),
    })
}

impl TdxVerifier {
    /// A verifier with empty caches.
    pub fn new() -> Self {
        Self::default()
    }

    /// (collateral sets, PCK chains) cached.
    pub fn cached(&self) -> (usize, usize) {
        (self.collateral.len(), self.pck.len())
    }

    fn collateral(
        &self,
        c: &TdxCollateral,
        root: &Cert,
        root_crl: &[u8],
        pck_crl: &[u8],
    ) -> Result<(Arc<CheckedCollateral>, Option<[u8; 32]>), Reject> {
        let key = collateral_key(c, root_crl, pck_crl);
        if let Some(hit) = self.collateral.recall(&key) {
            return Ok((hit, None));
        }
        // Remembered by the caller once the PCK CRL's signature has been
        // checked too (it needs the PCK CA from the quote).
        Ok((
            Arc::new(check_collateral(c, root, root_crl, pck_crl)?),
            Some(key),
        ))
    }

    fn pck_chain(&self, chain: &[u8], root: &Cert) -> Result<Arc<CheckedPck>, Reject> {
        let key = sha256(chain);
        if let Some(hit) = self.pck.recall(&key) {
            return Ok(hit);
        }
        let checked = Arc::new(check_pck(chain, root)?);
        self.pck.remember(key, &checked);
        Ok(checked)
    }

    /// Verify a TDX quote with its collateral under `policy` at `now`.
    pub fn verify(
        &self,
        quote_bytes: &[u8],
        collateral: &TdxCollateral,
        policy: &TdxPolicy,
        now: UnixTime,
    ) -> Result<VerifiedTdx, (Rejection, Option<TcbFinding>)> {
        let one = |(kind, msg): Reject| (Rejection::single(kind, msg), None);
        let (quote, _unsigned_tail) = Quote::parse_prefix(quote_bytes)
            .map_err(|e| one(reject(ReasonKind::Malformed, format!("quote: {e}"))))?;
        let Some(td) = quote.td_report().cloned() else {
            let kind = quote.tee_type();
            return Err(one(reject(
                ReasonKind::UnknownValue,
                format!("this is an {kind} quote, not a TDX quote"),
            )));
        };
        let mut f = Findings::default();
        if collateral.root_ca_crl.is_none() {
            f.add(ReasonKind::Collateral, "collateral has no Intel SGX Root CA CRL, so revocation of the PCK CA cannot be checked");
        }
        if collateral.pck_crl.is_none() {
            f.add(
                ReasonKind::Collateral,
                "collateral has no PCK CRL, so revocation of the PCK certificate cannot be checked",
            );
        }
        let Some(root) = root_cert() else {
            return Err(one(reject(
                ReasonKind::Chain,
                "the bundled Intel SGX Root CA does not match its pinned fingerprint",
            )));
        };
        let evaluation = match (&collateral.root_ca_crl, &collateral.pck_crl) {
            (Some(root_crl), Some(pck_crl)) => self.core(
                &quote, &td, collateral, root, root_crl, pck_crl, policy, now,
            ),
            // Incomplete collateral never passes (said above), but the TCB
            // status its unverified TCB info gives is still reported.
            _ => unverified_evaluation(&quote, &td, collateral)
                .map_err(|m| (crate::tdx::classify(&m), m)),
        };
        let finding = match evaluation {
            Ok(e) => Some(TcbFinding {
                status: e.status,
                advisory_ids: e.advisory_ids,
            }),
            Err((kind, msg)) => {
                f.add(kind, msg);
                None
            }
        };
        if let Some(finding) = &finding {
            if finding.status == TcbStatus::Revoked {
                f.add(ReasonKind::Tcb, "the platform's TCB is revoked");
            } else if !policy.allowed_tcb_statuses.contains(&finding.status) {
                let adv = if finding.advisory_ids.is_empty() {
                    String::new()
                } else {
                    format!(" (advisories: {})", finding.advisory_ids.join(", "))
                };
                f.add(
                    ReasonKind::Tcb,
                    format!(
                        "TCB status {} is not allowed by the policy{adv}",
                        finding.status
                    ),
                );
            }
        }
        if let crate::policy::Check::Require(max) = policy.max_collateral_age_secs {
            match crate::tdx::tcb_info_issue_date(collateral) {
                Some(issued) if now.0.saturating_sub(issued.0) > max => f.add(
                    ReasonKind::Collateral,
                    format!("TCB info was issued {} days before the verification time; the policy allows {}", (now.0 - issued.0) / 86_400, max / 86_400),
                ),
                Some(_) => {}
                None => f.add(ReasonKind::Collateral, "TCB info has no readable issueDate"),
            }
        }
        crate::tdx::check_td_policy(&td, policy, &mut f);
        match (f.is_empty(), finding) {
            (true, Some(t)) => Ok(VerifiedTdx::new(quote, td, t.status, t.advisory_ids)),
            (true, None) => Err(one(reject(
                ReasonKind::Tcb,
                "no TCB status was established",
            ))),
            (false, finding) => Err((f.into_rejection(), finding)),
        }
    }

    /// The Intel DCAP checks, in `dcap-qvl`'s order so the first failure
    /// found is the same kind of failure.
    #[allow(clippy::too_many_arguments)]
    fn core(
        &self,
        quote: &Quote,
        td: &TdReport,
        collateral: &TdxCollateral,
        root: &Cert,
        root_crl_der: &[u8],
        pck_crl_der: &[u8],
        policy: &TdxPolicy,
        now: UnixTime,
    ) -> Result<crate::tdx_tcb::TcbEvaluation, Reject> {
        let h = quote.header();
        if !matches!(h.version(), 4 | 5) {
            return Err(reject(
                ReasonKind::UnknownValue,
                "TDX quote must have version 4 or 5",
            ));
        }
        if *h.qe_vendor_id() != INTEL_QE_VENDOR_ID {
            return Err(reject(ReasonKind::UnknownValue, "Unknown QE vendor ID"));
        }
        debug_assert_eq!(quote.tee_type(), TeeType::Tdx);
        if h.att_key_type() != ECDSA_P256_KEY_TYPE {
            return Err(reject(
                ReasonKind::UnknownValue,
                "unsupported attestation key type",
            ));
        }
        let (coll, unremembered) = self.collateral(collateral, root, root_crl_der, pck_crl_der)?;
        coll.root_crl.check_fresh("Intel SGX Root CA CRL", now)?;
        for w in &coll.windows {
            w.check(now)?;
        }
        // The parser has read the PCK certification data as type 5 (PCK
        // certificate chain) inside type 6 (QE report certification data).
        let pck = self.pck_chain(quote.pck_cert_chain_pem(), root)?;
        cert_window("PCK CA", &pck.ca).check(now)?;
        cert_window("PCK", &pck.leaf).check(now)?;
        if coll.root_crl.revokes(&pck.ca) {
            return Err(reject(
                ReasonKind::Revoked,
                "the PCK CA certificate is revoked",
            ));
        }
        let crl_hash = sha256(pck_crl_der);
        let known = pck
            .crls_signed
            .lock()
            .map(|l| l.contains(&crl_hash))
            .unwrap_or(false);
        if !known {
            if !coll.pck_crl.issued_by(&pck.ca) {
                return Err(reject(ReasonKind::Collateral, "the PCK CRL is not the CRL of the PCK certificate's issuer (revocation status unknown)"));
            }
            if let Ok(mut l) = pck.crls_signed.lock() {
                if l.len() >= 8 {
                    l.clear();
                }
                l.push(crl_hash);
            }
        }
        // Every part of the set has now been verified: it may be cached.
        if let Some(key) = unremembered {
            self.collateral.remember(key, &coll);
        }
        coll.pck_crl.check_fresh("PCK CRL", now)?;
        if coll.pck_crl.revokes(&pck.leaf) {
            return Err(reject(
                ReasonKind::Revoked,
                "the PCK certificate is revoked",
            ));
        }
        // QE report signed by the PCK key (Quote Format, QE Report
        // Certification Data).
        let qe_ok = matches!(&pck.leaf.key, SubjectKey::P256(k)
            if k.verify_fixed_with(EcdsaHash::Sha256, quote.qe_report_bytes(), quote.qe_report_signature()));
        if !qe_ok {
            return Err(reject(
                ReasonKind::Signature,
                "Signature is invalid for qe_report in quote",
            ));
        }
        // QE report data = SHA-256(attestation key || QE auth data) || 0^32.
        let auth = quote.qe_auth_data();
        if auth.len() != 32 {
            return Err(reject(ReasonKind::Signature, "Invalid QE auth data length"));
        }
        let mut bound = quote.attestation_key().to_vec();
        bound.extend_from_slice(auth);
        let qe = quote.qe_report();
        if sha256(&bound)[..] != qe.report_data()[..32] {
            return Err(reject(ReasonKind::Signature, "QE report hash mismatch"));
        }
        check_qe_identity(&coll.qe, qe)?;
        // Quote signed by the attestation key over header and body.
        let mut point = [0x04u8; 65];
        point[1..].copy_from_slice(quote.attestation_key());
        let sig_ok = P256Key::from_sec1(&point).is_ok_and(|k| {
            k.verify_fixed_with(EcdsaHash::Sha256, quote.signed_bytes(), quote.signature())
        });
        if !sig_ok {
            return Err(reject(
                ReasonKind::Signature,
                "the quote signature by the attestation key is invalid",
            ));
        }
        let eval =
            crate::tdx_tcb::evaluate(td, &pck.pck, qe.isvsvn(), &coll.tcb_info, &coll.qe_identity)
                .map_err(|m| (crate::tdx::classify(&m), m))?;
        check_module_signer(&coll, td)?;
        check_td_attributes(td, policy.allow_debug)?;
        Ok(eval)
    }
}

/// The TCB status the collateral's TCB info and QE identity give the
/// quote's PCK certificate and TD report, nothing verified: for reporting
/// only, never for a verdict.
fn unverified_evaluation(
    quote: &Quote,
    td: &TdReport,
    c: &TdxCollateral,
) -> Result<crate::tdx_tcb::TcbEvaluation, String> {
    let der = crate::tdx::pck_leaf_der(quote.pck_cert_chain_pem())?;
    let cert =
        x509_cert::Certificate::from_der(&der).map_err(|e| format!("PCK certificate: {e}"))?;
    let pck = crate::tdx::pck_extensions_of(&cert)?;
    crate::tdx_tcb::evaluate(
        td,
        &pck,
        quote.qe_report().isvsvn(),
        &c.tcb_info,
        &c.qe_identity,
    )
}

fn check_qe_identity(
    p: &QePolicy,
    qe: &cocoon_attestation::tdx::EnclaveReport,
) -> Result<(), Reject> {
    let bad = |m: &str| {
        Err(reject(
            ReasonKind::Collateral,
            format!("QE report does not match the QE identity: {m}"),
        ))
    };
    if *qe.mrsigner() != p.mrsigner {
        return bad("MRSIGNER");
    }
    if qe.debug() {
        return Err(reject(
            ReasonKind::Policy,
            "the quoting enclave runs in debug mode",
        ));
    }
    if qe.isvprodid() != p.isvprodid {
        return bad("ISVPRODID");
    }
    if qe.miscselect() & p.miscselect_mask != p.miscselect & p.miscselect_mask {
        return bad("MISCSELECT");
    }
    let attrs = qe.attributes();
    if (0..16).any(|i| attrs[i] & p.attributes_mask[i] != p.attributes[i] & p.attributes_mask[i]) {
        return bad("ATTRIBUTES");
    }
    Ok(())
}

fn check_module_signer(c: &CheckedCollateral, td: &TdReport) -> Result<(), Reject> {
    let svn = td.tee_tcb_svn();
    let version = svn.components()[1];
    let signer = if version == 0 {
        &c.module
    } else {
        let want = format!("TDX_{version:02X}");
        &c.module_ids
            .iter()
            .find(|(id, _)| id.eq_ignore_ascii_case(&want))
            .ok_or_else(|| {
                reject(
                    ReasonKind::Collateral,
                    format!("TCB info has no TDX module identity {want}"),
                )
            })?
            .1
    };
    if *td.mrsignerseam() != signer.mrsigner {
        return Err(reject(
            ReasonKind::Collateral,
            "TDX module MRSIGNER does not match the TCB info",
        ));
    }
    let have = td.seam_attributes();
    for ((h, want), m) in have
        .iter()
        .zip(&signer.attributes)
        .zip(&signer.attributes_mask)
    {
        if h & m != want & m || h & !m != 0 {
            return Err(reject(
                ReasonKind::Collateral,
                "TDX module SEAMATTRIBUTES do not match the TCB info",
            ));
        }
    }
    Ok(())
}

/// Bits `lo..=hi` set.
const fn bits(lo: u32, hi: u32) -> u64 {
    (u64::MAX << lo) & !(u64::MAX << hi << 1)
}

/// TD ATTRIBUTES bits that must be zero (Intel TDX Module ABI
/// specification, TD attributes table): reserved in TUD, SEC and OTHER.
const TD_ATTRIBUTES_MBZ: u64 = bits(1, 3) | bits(7, 15) | bits(23, 26) | bits(32, 61);
/// SERVTD_EXT (bit 17): the TD may bind service TDs.
const SERVTD_EXT: u64 = 1 << 17;

/// TD attributes Intel's QVL refuses (TDX module ABI, TDINFO ATTRIBUTES),
/// and a bound service TD (TD 1.5 body).
fn check_td_attributes(td: &TdReport, allow_debug: bool) -> Result<(), Reject> {
    let a = td.td_attributes();
    let policy = |m: &str| Err(reject(ReasonKind::Policy, m.to_string()));
    if let Some(m) = td.mrservicetd() {
        if *m != [0u8; 48] {
            return policy("Invalid MR service TD");
        }
    }
    if a.debug() && !allow_debug {
        return policy("TD DEBUG attribute is set: the host can read and write the TD's memory");
    }
    if a.tud() & 0x70 != 0 && !allow_debug {
        return policy("TD profiling is enabled");
    }
    if a.0 & TD_ATTRIBUTES_MBZ != 0 {
        return policy("Reserved bits in TD attributes are set");
    }
    if a.migratable() {
        return policy("TD migration is enabled");
    }
    if a.0 & SERVTD_EXT != 0 {
        return policy("SERVTD_EXT is enabled");
    }
    if !a.sept_ve_disable() {
        return policy("SEPT_VE_DISABLE is not enabled");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pem_chain;

    fn block(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    #[test]
    fn pem_chain_reads_as_the_pem_crate_reads() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        // Any label; text between blocks and an incomplete block at the end
        // are skipped.
        let two = format!(
            "\x01junk{}between{}-----BEGIN CERTIFICATE-----\nMAMC",
            block("CERTIFICATE", "MAMCAQU="),
            block("X509 CERTIFICATE", "MAMC\x0bAQU=")
        );
        assert_eq!(
            pem_chain(two.as_bytes()),
            Ok(vec![der.clone(), der.clone()])
        );
        // RFC 1421 headers end at the first blank line.
        let headers = block("C", "Proc-Type: 4,ENCRYPTED\n\nMAMCAQU=");
        assert_eq!(pem_chain(headers.as_bytes()), Ok(vec![der.clone()]));
        // A blank line inside the data makes what precedes it a header.
        assert!(pem_chain(block("C", "MAMC\n\nAQU=").as_bytes()).is_err());
        // Labels: equal and not empty.
        let mismatched = "-----BEGIN A-----\nMAMCAQU=\n-----END B-----\n";
        assert!(pem_chain(mismatched.as_bytes()).is_err());
        assert!(pem_chain(block("", "MAMCAQU=").as_bytes()).is_err());
        // Canonical padded base64 only.
        for bad in ["MAMCAQV=", "MAMCAQU", "MAMC-AQU=", "MAMCAQU=="] {
            assert!(pem_chain(block("C", bad).as_bytes()).is_err(), "{bad}");
        }
        // Any UTF-8 label; bytes that are not UTF-8 fail the chain inside a
        // block and are skipped outside one.
        assert!(pem_chain(block("C\u{80}", "MAMCAQU=").as_bytes()).is_ok());
        let mut raw = block("C", "MAMCAQU=").into_bytes();
        raw.insert(20, 0xFF);
        assert!(pem_chain(&raw).is_err());
        let mut outside = vec![0xFF, 0x80];
        outside.extend_from_slice(block("C", "MAMCAQU=").as_bytes());
        assert_eq!(pem_chain(&outside), Ok(vec![der]));
        // The boundary scan restarts after a mismatching byte: six dashes
        // before BEGIN hide the block.
        let six = format!("-{}", block("C", "MAMCAQU="));
        assert_eq!(pem_chain(six.as_bytes()), Ok(vec![]));
    }
}
