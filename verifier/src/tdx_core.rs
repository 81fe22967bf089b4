//! [`TdxVerifier`]: our own Intel DCAP core for TDX quotes, with caches.
//!
//! [`crate::tdx::verify_tdx`] is this core, cold (a new verifier per call).
//! `dcap-qvl` is the tests' differential oracle for it.
//!
//! Owns the cryptographic checks of a TDX quote and its collateral, and
//! bounded caches keyed by the SHA-256 of the exact bytes received (an
//! altered copy is a miss and is verified from scratch; only what verified
//! is kept):
//!
//! * collateral sets: root CA CRL (signed by the pinned Intel SGX Root CA),
//!   PCK CRL (parsed; its signature is checked against the PCK CA of the
//!   quote), TCB info and QE identity (signature over the JSON text by a
//!   signing certificate issued directly by the root, not revoked by the
//!   root CA CRL);
//! * PCK chains carried in quotes (leaf and PCK CA up to the pinned root);
//! * each item on its own, so that a new collateral set verifies only what
//!   is new in it (Intel re-issues TCB info, QE identity and CRLs far more
//!   often than the certificates that sign them): the collateral signing
//!   certificate by its issuer chain text and the root's key; CRLs and PCK
//!   chain certificates parsed, by their DER; every signature over a
//!   certificate, a CRL, the TCB info or the QE identity, by the signer's
//!   public key and the SHA-256 of the signed bytes with the signature.
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

use std::sync::Arc;

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::tdx::{Quote, TdReport, TeeType};
use der::{Decode, Encode, Reader as _};

use crate::crypto::{sha256, EcdsaHash, P256Key};
use crate::policy::{TcbStatus, TdxPolicy};
use crate::tdx::{TcbFinding, VerifiedTdx};
use crate::tdx_json::{Doc, Scalar};
use crate::verified_cache::VerifiedCache;
use crate::x509::{Cert, CertError, RawSigned, SigAlg, SubjectKey, OID_ECDSA_SHA256};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// Most entries each cache keeps; past this it starts over.
const CACHE_CAPACITY: usize = 256;
/// Most verified signatures kept (a new collateral set adds about seven).
const SIGNATURE_CAPACITY: usize = 1024;
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
    /// SHA-256 of the CRL's DER as received.
    hash: [u8; 32],
    tbs: Vec<u8>,
    signature: [u8; 64],
    issuer: Vec<u8>,
    next_update: u64,
    /// Contents octets of each revoked serial number: ranges of `tbs`.
    revoked: Vec<(usize, usize)>,
}

/// `TBSCertList` (RFC 5280 §5.1) as `x509_cert::crl::TbsCertList` reads
/// it, field for field and with the same types where they do not allocate
/// per entry: the revoked entries are read in place ([`RevokedList`]).
#[derive(der::Sequence)]
struct TbsCertListRef<'a> {
    _version: x509_cert::Version,
    signature: spki::AlgorithmIdentifierOwned,
    issuer: x509_cert::name::Name,
    _this_update: x509_cert::time::Time,
    next_update: Option<x509_cert::time::Time>,
    revoked_certificates: Option<RevokedList<'a>>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    crl_extensions: Option<Vec<ExtensionRef<'a>>>,
}

/// `x509_cert::ext::Extension` with its value borrowed.
#[derive(der::Sequence)]
struct ExtensionRef<'a> {
    extn_id: der::asn1::ObjectIdentifier,
    #[asn1(default = "Default::default")]
    critical: bool,
    _extn_value: der::asn1::OctetStringRef<'a>,
}

/// `x509_cert::crl::RevokedCert` with its serial number borrowed (checked
/// as `SerialNumber` checks it: a canonical INTEGER of at most 21 octets).
#[derive(der::Sequence)]
struct RevokedRef<'a> {
    serial_number: der::asn1::IntRef<'a>,
    _revocation_date: x509_cert::time::Time,
    crl_entry_extensions: Option<AnyCritical>,
}

/// `SEQUENCE OF RevokedCert`, read as `Vec<RevokedCert>` reads it: each
/// serial's contents octets, and whether an entry has a critical extension.
struct RevokedList<'a> {
    serials: Vec<&'a [u8]>,
    critical: bool,
}

impl<'a> der::DecodeValue<'a> for RevokedList<'a> {
    fn decode_value<R: der::Reader<'a>>(reader: &mut R, header: der::Header) -> der::Result<Self> {
        reader.read_nested(header.length, |reader| {
            let mut list = RevokedList {
                serials: Vec::new(),
                critical: false,
            };
            while !reader.is_finished() {
                let entry = RevokedRef::decode(reader)?;
                if entry.serial_number.as_bytes().len() > 21 {
                    return Err(der::Tag::Integer.value_error());
                }
                list.critical |= entry.crl_entry_extensions.is_some_and(|c| c.0);
                list.serials.push(entry.serial_number.as_bytes());
            }
            Ok(list)
        })
    }
}

/// Read only: the derive that holds it wants an encoder.
impl der::EncodeValue for RevokedList<'_> {
    fn value_len(&self) -> der::Result<der::Length> {
        Err(der::ErrorKind::Failed.into())
    }
    fn encode_value(&self, _: &mut impl der::Writer) -> der::Result<()> {
        Err(der::ErrorKind::Failed.into())
    }
}

impl der::FixedTag for RevokedList<'_> {
    const TAG: der::Tag = der::Tag::Sequence;
}

/// `Extensions` (a `SEQUENCE OF Extension`) read as `Vec<Extension>` reads
/// it: whether any of them is critical.
struct AnyCritical(bool);

impl<'a> der::DecodeValue<'a> for AnyCritical {
    fn decode_value<R: der::Reader<'a>>(reader: &mut R, header: der::Header) -> der::Result<Self> {
        reader.read_nested(header.length, |reader| {
            let mut critical = false;
            while !reader.is_finished() {
                critical |= ExtensionRef::decode(reader)?.critical;
            }
            Ok(AnyCritical(critical))
        })
    }
}

/// Read only: the derive that holds it wants an encoder.
impl der::EncodeValue for AnyCritical {
    fn value_len(&self) -> der::Result<der::Length> {
        Err(der::ErrorKind::Failed.into())
    }
    fn encode_value(&self, _: &mut impl der::Writer) -> der::Result<()> {
        Err(der::ErrorKind::Failed.into())
    }
}

impl der::FixedTag for AnyCritical {
    const TAG: der::Tag = der::Tag::Sequence;
}

impl IntelCrl {
    /// Parse a CRL: what `x509_cert::crl::CertificateList::from_der` accepts,
    /// read in place (no allocation per revoked entry).
    fn parse(what: &str, der: &[u8], hash: [u8; 32]) -> Result<IntelCrl, Reject> {
        let bad = |e: String| reject(ReasonKind::Collateral, format!("{what}: {e}"));
        let der_err = |e: der::Error| bad(e.to_string());
        let raw = RawSigned::from_der(der).map_err(der_err)?;
        let alg: spki::AlgorithmIdentifierOwned = raw.alg.decode_as().map_err(der_err)?;
        let tbs = raw.tbs.to_der().map_err(der_err)?;
        let t: TbsCertListRef<'_> = raw.tbs.decode_as().map_err(der_err)?;
        if alg.oid != OID_ECDSA_SHA256 || alg.parameters.is_some() || t.signature != alg {
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
        let entries = t.revoked_certificates.unwrap_or(RevokedList {
            serials: Vec::new(),
            critical: false,
        });
        if entries.critical {
            return Err(bad("an entry has a critical extension".into()));
        }
        // The serials lie inside the TBS bytes: keep where.
        let base = raw.tbs.value().as_ptr() as usize;
        let head = tbs.len() - raw.tbs.value().len();
        let revoked = entries
            .serials
            .iter()
            .map(|s| {
                let at = s.as_ptr() as usize - base + head;
                (at, at + s.len())
            })
            .collect();
        let sig = raw
            .sig
            .as_bytes()
            .ok_or_else(|| bad("signature bit string has unused bits".into()))?;
        let signature: [u8; 64] = p256::ecdsa::Signature::from_der(sig)
            .map_err(|_| bad("signature is not a P-256 Ecdsa-Sig-Value".into()))?
            .to_bytes()
            .into();
        Ok(IntelCrl {
            hash,
            issuer: t.issuer.to_der().map_err(der_err)?,
            tbs,
            signature,
            next_update,
            revoked,
        })
    }

    /// Whether `issuer` may have issued this CRL: its name, and keyUsage,
    /// when present, allowing cRLSign (bit 6, RFC 5280 section 4.2.1.3).
    fn issuer_may_sign(&self, issuer: &Cert) -> bool {
        self.issuer == issuer.subject && matches!(issuer.key_usage_allows(6), Ok(None | Some(true)))
    }

    /// Whether `issuer`'s key made this CRL's signature.
    fn signature_by(&self, issuer: &Cert) -> bool {
        matches!(&issuer.key, SubjectKey::P256(k)
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
        self.issuer == cert.issuer
            && self
                .revoked
                .iter()
                .any(|&(a, b)| self.tbs[a..b] == cert.serial[..])
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
            if matched == 0 {
                // Bytes that cannot start the marker are passed over
                // (what the loop below does one at a time).
                i += input[i..].iter().position(|&b| b == marker[0])?;
                if input.len() - i < marker.len() {
                    return None;
                }
            }
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
        let der = if data.is_ascii() {
            base64_standard(data, true)
        } else {
            let data: String = utf8(data)?.chars().filter(|c| !c.is_whitespace()).collect();
            base64_standard(data.as_bytes(), false)
        }
        .ok_or("PEM data is not base64")?;
        if utf8(headers)?.lines().any(|l| !l.contains(':')) {
            return Err("PEM header line without ':'".into());
        }
        out.push(der);
    }
    Ok(out)
}

/// Canonical padded standard base64 (RFC 4648 §4), what `base64ct`'s
/// `Base64::decode_vec` accepts: length a multiple of 4, at most two `=` at
/// the end only, zero trailing bits. With `skip_ws`, the ASCII whitespace
/// of PEM (tab, LF, VT, FF, CR, space) is passed over first. Not constant
/// time: it reads public certificates.
pub(crate) fn base64_standard(s: &[u8], skip_ws: bool) -> Option<Vec<u8>> {
    const BAD: u8 = 0xFF;
    const WS: u8 = 0xFE;
    const PAD: u8 = 0xFD;
    const TABLE: [u8; 256] = {
        let mut t = [BAD; 256];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut i = 0;
        while i < 64 {
            t[alphabet[i] as usize] = i as u8;
            i += 1;
        }
        t[b'=' as usize] = PAD;
        let ws = [b'\t', b'\n', 0x0B, 0x0C, b'\r', b' '];
        let mut i = 0;
        while i < ws.len() {
            t[ws[i] as usize] = WS;
            i += 1;
        }
        t
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut quad, mut n, mut ended) = ([0u8; 4], 0usize, false);
    for &b in s {
        let v = TABLE[usize::from(b)];
        if v == WS && skip_ws {
            continue;
        }
        if ended || v == BAD || v == WS {
            return None;
        }
        quad[n] = v;
        n += 1;
        if n < 4 {
            continue;
        }
        n = 0;
        let [a, b, c, d] = quad;
        if a == PAD || b == PAD {
            return None;
        }
        let bits = u32::from(a) << 18 | u32::from(b) << 12;
        match (c == PAD, d == PAD) {
            (false, false) => {
                let bits = bits | u32::from(c) << 6 | u32::from(d);
                out.extend_from_slice(&bits.to_be_bytes()[1..]);
            }
            // The bits past the last byte must be zero (canonical).
            (false, true) if c & 0x03 == 0 => {
                let bits = bits | u32::from(c) << 6;
                out.extend_from_slice(&bits.to_be_bytes()[1..3]);
                ended = true;
            }
            (true, true) if b & 0x0F == 0 => {
                out.push(bits.to_be_bytes()[1]);
                ended = true;
            }
            _ => return None,
        }
    }
    (n == 0).then_some(out)
}

/// Verify an issuer-chain PEM for a collateral signer: the first block
/// must be issued directly by the root (name, signature) and be usable as
/// an end entity. Returns the signer certificate; its validity and its
/// revocation by the root CA CRL are the caller's to check at every call.
fn collateral_signer(
    what: &str,
    pem: &str,
    root: &Cert,
    signed: impl FnOnce(&Cert) -> bool,
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
    if cert.issuer != root.subject || !signed(&cert) {
        return Err(reject(
            ReasonKind::Chain,
            format!("{what} signing certificate is not issued by the Intel SGX Root CA"),
        ));
    }
    end_entity_checks(what, &cert)?;
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
fn json_window(what: &str, v: &Doc<'_>) -> Result<Window, Reject> {
    let date = |k: &str, d: &Scalar<'_>| {
        d.as_str()
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
        not_before: date("issueDate", &v.issue_date)?,
        not_after: date("nextUpdate", &v.next_update)?,
    })
}

fn hex_array<const N: usize>(v: &Scalar<'_>, k: &str, what: &str) -> Result<[u8; N], Reject> {
    let mut out = [0u8; N];
    v.as_str()
        .and_then(|s| hex::decode_to_slice(s, &mut out).ok())
        .map(|()| out)
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
    root_crl: Arc<IntelCrl>,
    pck_crl: Arc<IntelCrl>,
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
    leaf: Arc<Cert>,
    ca: Arc<Cert>,
    pck: cocoon_attestation::tdx::PckExtensions,
}

/// Verifies TDX quotes with our own DCAP core, with bounded caches keyed by
/// the SHA-256 of the exact bytes verified (an altered copy is a miss and
/// is verified from scratch; what depends on the time, and revocation, is
/// checked again at every call):
///
/// * whole collateral sets, and the PCK chains quotes carry;
/// * each collateral item on its own, for a new set that shares items with
///   one seen before (Intel re-issues TCB info, QE identity and CRLs far
///   more often than the certificates that sign them): the collateral
///   signing certificate by its issuer chain, each CRL parsed, and every
///   signature over a certificate, a CRL or a signed JSON document by the
///   signer's key, the signed bytes and the signature.
///
/// The quote's own signatures (QE report by the PCK key, quote by the
/// attestation key) are verified at every call. Cheap to share between
/// threads.
#[derive(Default)]
pub struct TdxVerifier {
    collateral: VerifiedCache<CheckedCollateral, CACHE_CAPACITY>,
    pck: VerifiedCache<CheckedPck, CACHE_CAPACITY>,
    /// Collateral signing certificates issued by the root, by issuer chain.
    signers: VerifiedCache<Cert, CACHE_CAPACITY>,
    /// CRLs parsed, by their DER.
    crls: VerifiedCache<IntelCrl, CACHE_CAPACITY>,
    /// Certificates of PCK chains parsed, by their DER.
    certs: VerifiedCache<Cert, CACHE_CAPACITY>,
    /// Signatures that verified, by [`signature_key`].
    signatures: VerifiedCache<(), SIGNATURE_CAPACITY>,
}

/// How many entries each per-item cache holds, for [`TdxVerifier::cached_items`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxCachedItems {
    /// Collateral signing certificates (TCB info / QE identity issuer chains).
    pub signers: usize,
    /// CRLs parsed.
    pub crls: usize,
    /// PCK chain certificates parsed.
    pub certs: usize,
    /// Signatures verified (certificates, CRLs, TCB info, QE identity).
    pub signatures: usize,
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

/// SHA-256 over length-prefixed parts (so no two lists of parts share one).
fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The key of a verified signature: what kind of item, the signer's public
/// key, and the SHA-256 of the item's exact bytes including the signature.
fn signature_key(kind: &[u8], signer: &Cert, item: &[u8; 32]) -> [u8; 32] {
    sha256_parts(&[kind, &signer.public_key, item])
}

/// SHA-256 of each collateral item: the per-item cache keys and, together,
/// the key of the whole set.
struct CollateralHashes {
    root_crl: [u8; 32],
    pck_crl: [u8; 32],
    tcb_chain: [u8; 32],
    /// TCB info text and its signature.
    tcb_info: [u8; 32],
    qe_chain: [u8; 32],
    /// QE identity text and its signature.
    qe_identity: [u8; 32],
}

impl CollateralHashes {
    fn of(c: &TdxCollateral, root_crl: &[u8], pck_crl: &[u8]) -> Self {
        let chain = |pem: &str| sha256_parts(&[b"issuer chain", pem.as_bytes()]);
        let tcb_chain = chain(&c.tcb_info_issuer_chain);
        CollateralHashes {
            root_crl: sha256(root_crl),
            pck_crl: sha256(pck_crl),
            qe_chain: if c.qe_identity_issuer_chain == c.tcb_info_issuer_chain {
                tcb_chain
            } else {
                chain(&c.qe_identity_issuer_chain)
            },
            tcb_chain,
            tcb_info: sha256_parts(&[c.tcb_info.as_bytes(), &c.tcb_info_signature]),
            qe_identity: sha256_parts(&[c.qe_identity.as_bytes(), &c.qe_identity_signature]),
        }
    }

    /// The key of the whole set.
    fn set(&self) -> [u8; 32] {
        sha256_parts(&[
            &self.root_crl,
            &self.pck_crl,
            &self.tcb_chain,
            &self.tcb_info,
            &self.qe_chain,
            &self.qe_identity,
        ])
    }
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

    /// Entries in the per-item caches.
    pub fn cached_items(&self) -> TdxCachedItems {
        TdxCachedItems {
            signers: self.signers.len(),
            crls: self.crls.len(),
            certs: self.certs.len(),
            signatures: self.signatures.len(),
        }
    }

    /// Whether `signer` made the signature over the item whose bytes hash to
    /// `item`: remembered when `verify` says so, recalled after.
    fn signed(
        &self,
        kind: &[u8],
        signer: &Cert,
        item: &[u8; 32],
        verify: impl FnOnce() -> bool,
    ) -> bool {
        let key = signature_key(kind, signer, item);
        if self.signatures.recall(&key).is_some() {
            return true;
        }
        let ok = verify();
        if ok {
            self.signatures.remember(key, &Arc::new(()));
        }
        ok
    }

    /// `cert.signed_by(issuer)`, once per certificate and issuer key.
    fn cert_signed_by(&self, cert: &Cert, issuer: &Cert) -> bool {
        self.signed(b"certificate", issuer, &sha256(&cert.der), || {
            cert.signed_by(issuer)
        })
    }

    /// `crl.issued_by(issuer)`: the name and key usage at every call, the
    /// signature once per CRL and issuer key.
    fn crl_issued_by(&self, crl: &IntelCrl, issuer: &Cert) -> bool {
        crl.issuer_may_sign(issuer)
            && self.signed(b"crl", issuer, &crl.hash, || crl.signature_by(issuer))
    }

    /// A certificate of a PCK chain parsed, recalled by the SHA-256 of its
    /// DER (Intel's PCK CAs are in every chain of their platforms).
    fn cert(&self, der: &[u8]) -> Result<Arc<Cert>, CertError> {
        let key = sha256(der);
        if let Some(hit) = self.certs.recall(&key) {
            return Ok(hit);
        }
        let cert = Arc::new(Cert::from_der_as(der, SigAlg::EcdsaP256Sha256)?);
        self.certs.remember(key, &cert);
        Ok(cert)
    }

    /// A CRL parsed, recalled by the SHA-256 of its DER.
    fn crl(&self, what: &str, der: &[u8], hash: &[u8; 32]) -> Result<Arc<IntelCrl>, Reject> {
        if let Some(hit) = self.crls.recall(hash) {
            return Ok(hit);
        }
        let crl = Arc::new(IntelCrl::parse(what, der, *hash)?);
        self.crls.remember(*hash, &crl);
        Ok(crl)
    }

    /// The signing certificate of a collateral issuer chain, recalled by the
    /// chain's text (and the root's key).
    fn collateral_signer(
        &self,
        what: &str,
        pem: &str,
        chain_hash: &[u8; 32],
        root: &Cert,
    ) -> Result<Arc<Cert>, Reject> {
        let key = sha256_parts(&[b"collateral signer", &root.public_key, chain_hash]);
        if let Some(hit) = self.signers.recall(&key) {
            return Ok(hit);
        }
        let cert = Arc::new(collateral_signer(what, pem, root, |c| {
            self.cert_signed_by(c, root)
        })?);
        self.signers.remember(key, &cert);
        Ok(cert)
    }

    fn check_collateral<'c>(
        &self,
        c: &'c TdxCollateral,
        h: &CollateralHashes,
        root: &Cert,
        root_crl_der: &[u8],
        pck_crl_der: &[u8],
    ) -> Result<CheckedCollateral, Reject> {
        let root_crl = self.crl("Intel SGX Root CA CRL", root_crl_der, &h.root_crl)?;
        if !self.crl_issued_by(&root_crl, root) {
            return Err(reject(
                ReasonKind::Collateral,
                "the root CA CRL is not signed by the Intel SGX Root CA",
            ));
        }
        let pck_crl = self.crl("PCK CRL", pck_crl_der, &h.pck_crl)?;
        if root_crl.revokes(root) {
            return Err(reject(
                ReasonKind::Revoked,
                "the Intel SGX Root CA is revoked",
            ));
        }
        let mut windows = Vec::new();
        let mut signed = |what: &str,
                          json: &'c str,
                          sig: &[u8],
                          item: &[u8; 32],
                          chain: &str,
                          chain_hash: &[u8; 32]|
         -> Result<Doc<'c>, Reject> {
            let v = Doc::read(json)
                .map_err(|e| reject(ReasonKind::Collateral, format!("{what}: {e}")))?;
            windows.push(json_window(what, &v)?);
            // Intel signs TCB info and QE identity with the same
            // certificate: the second chain is a cache hit.
            let signer = self.collateral_signer(what, chain, chain_hash, root)?;
            if root_crl.revokes(&signer) {
                return Err(reject(
                    ReasonKind::Revoked,
                    format!("{what} signing certificate is revoked"),
                ));
            }
            windows.push(cert_window(&format!("{what} signing"), &signer));
            let ok = <&[u8; 64]>::try_from(sig).is_ok_and(|sig| {
                self.signed(b"signed json", &signer, item, || {
                    matches!(&signer.key, SubjectKey::P256(k)
                        if k.verify_fixed_with(EcdsaHash::Sha256, json.as_bytes(), sig))
                })
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
            &h.tcb_info,
            &c.tcb_info_issuer_chain,
            &h.tcb_chain,
        )?;
        let qe = signed(
            "QE identity",
            &c.qe_identity,
            &c.qe_identity_signature,
            &h.qe_identity,
            &c.qe_identity_issuer_chain,
            &h.qe_chain,
        )?;
        if qe.id.as_str() != Some("TD_QE") || !matches!(qe.version.as_u64(), Some(2 | 3)) {
            return Err(reject(
                ReasonKind::Collateral,
                "QE identity is not the TD QE's (id TD_QE, version 2 or 3)",
            ));
        }
        let what = "QE identity";
        let qe_policy = QePolicy {
            mrsigner: hex_array(&qe.mrsigner, "mrsigner", what)?,
            isvprodid: qe
                .isvprodid
                .as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| reject(ReasonKind::Collateral, "QE identity: isvprodid"))?,
            miscselect: u32::from_le_bytes(hex_array(&qe.miscselect, "miscselect", what)?),
            miscselect_mask: u32::from_le_bytes(hex_array(
                &qe.miscselect_mask,
                "miscselectMask",
                what,
            )?),
            attributes: hex_array(&qe.attributes, "attributes", what)?,
            attributes_mask: hex_array(&qe.attributes_mask, "attributesMask", what)?,
        };
        let signer = |v: &Doc<'_>, what: &str| -> Result<ModuleSigner, Reject> {
            Ok(ModuleSigner {
                mrsigner: hex_array(&v.mrsigner, "mrsigner", what)?,
                attributes: hex_array(&v.attributes, "attributes", what)?,
                attributes_mask: hex_array(&v.attributes_mask, "attributesMask", what)?,
            })
        };
        let module = signer(
            tcb.tdx_module.as_deref().unwrap_or(&Doc::default()),
            "TCB info tdxModule",
        )?;
        let mut module_ids = Vec::new();
        for m in tcb.tdx_module_identities.iter().flatten() {
            let id = m.id.as_str().unwrap_or_default().to_string();
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

    fn check_pck(&self, chain: &[u8], root: &Cert) -> Result<CheckedPck, Reject> {
        // An unreadable chain is malformed evidence (dcap-qvl: "Failed to
        // parse certs"); in a readable one, the leaf must be the first block
        // and be labelled CERTIFICATE (RFC 7468 section 5.1), or it is no
        // PCK chain.
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
        let leaf = self
            .cert(first)
            .map_err(|e| reject(kind(&e), format!("PCK certificate: {e}")))?;
        end_entity_checks("PCK", &leaf)?;
        // The issuing CA: any later block that the root issued and that
        // issued the leaf. An unreadable block is skipped, as path builders
        // do; when no block fits, a signature that failed is the most
        // specific reason.
        let mut signature_failed = false;
        let mut found = None;
        for der in rest {
            let ca = match self.cert(der) {
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
            if self.cert_signed_by(&ca, root) && self.cert_signed_by(&leaf, &ca) {
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
        let pck =
            crate::tdx::pck_extensions_in(&leaf).map_err(|e| reject(ReasonKind::Collateral, e))?;
        Ok(CheckedPck { leaf, ca, pck })
    }

    fn collateral(
        &self,
        c: &TdxCollateral,
        root: &Cert,
        root_crl: &[u8],
        pck_crl: &[u8],
    ) -> Result<(Arc<CheckedCollateral>, Option<[u8; 32]>), Reject> {
        let hashes = CollateralHashes::of(c, root_crl, pck_crl);
        let key = hashes.set();
        if let Some(hit) = self.collateral.recall(&key) {
            return Ok((hit, None));
        }
        // Remembered by the caller once the PCK CRL's signature has been
        // checked too (it needs the PCK CA from the quote).
        Ok((
            Arc::new(self.check_collateral(c, &hashes, root, root_crl, pck_crl)?),
            Some(key),
        ))
    }

    fn pck_chain(&self, chain: &[u8], root: &Cert) -> Result<Arc<CheckedPck>, Reject> {
        let key = sha256(chain);
        if let Some(hit) = self.pck.recall(&key) {
            return Ok(hit);
        }
        let checked = Arc::new(self.check_pck(chain, root)?);
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
        if !self.crl_issued_by(&coll.pck_crl, &pck.ca) {
            return Err(reject(ReasonKind::Collateral, "the PCK CRL is not the CRL of the PCK certificate's issuer (revocation status unknown)"));
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
    use super::*;

    fn block(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    /// The CRL parse as first written (`x509_cert::crl::CertificateList`):
    /// (issuer, nextUpdate, revoked serials, TBS, signature) or the failure.
    #[allow(clippy::type_complexity)]
    fn crl_reference(der: &[u8]) -> Result<(Vec<u8>, u64, Vec<Vec<u8>>, Vec<u8>, [u8; 64]), ()> {
        use der::{Decode, Encode};
        use x509_cert::crl::CertificateList;
        let crl = CertificateList::from_der(der).map_err(|_| ())?;
        let raw = RawSigned::from_der(der).map_err(|_| ())?;
        let t = &crl.tbs_cert_list;
        if crl.signature_algorithm.oid != OID_ECDSA_SHA256
            || crl.signature_algorithm.parameters.is_some()
            || t.signature != crl.signature_algorithm
        {
            return Err(());
        }
        let next_update = t.next_update.ok_or(())?.to_unix_duration().as_secs();
        for e in t.crl_extensions.iter().flatten() {
            let oid = e.extn_id.to_string();
            if e.critical || oid == "2.5.29.28" || oid == "2.5.29.27" {
                return Err(());
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
                return Err(());
            }
            revoked.push(crate::x509::serial_contents(&entry.serial_number).map_err(|_| ())?);
        }
        let sig = crl.signature.as_bytes().ok_or(())?;
        let signature: [u8; 64] = p256::ecdsa::Signature::from_der(sig)
            .map_err(|_| ())?
            .to_bytes()
            .into();
        Ok((
            t.issuer.to_der().map_err(|_| ())?,
            next_update,
            revoked,
            raw.tbs.to_der().map_err(|_| ())?,
            signature,
        ))
    }

    #[allow(clippy::type_complexity)]
    fn crl_now(der: &[u8]) -> Result<(Vec<u8>, u64, Vec<Vec<u8>>, Vec<u8>, [u8; 64]), ()> {
        let c = IntelCrl::parse("CRL", der, [0; 32]).map_err(|_| ())?;
        let revoked = c
            .revoked
            .iter()
            .map(|&(a, b)| c.tbs[a..b].to_vec())
            .collect();
        Ok((c.issuer, c.next_update, revoked, c.tbs, c.signature))
    }

    fn reference_base64(s: &[u8]) -> Option<Vec<u8>> {
        use base64ct::{Base64, Encoding};
        Base64::decode_vec(std::str::from_utf8(s).ok()?).ok()
    }

    /// A small deterministic generator for the mutation tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn collateral(path: &str) -> serde_json::Value {
        serde_json::from_slice(&cocoon_tests::read_vector(path)).expect("collateral")
    }

    const COLLATERALS: [&str; 3] = [
        "tdx/dcap-qvl/tdx_quote_collateral.json",
        "tdx/dcap-qvl/sgx_quote_collateral.json",
        "tdx/dcap-qvl/tdx_quote_outdated_collateral.json",
    ];

    #[test]
    fn a_signature_is_recalled_only_for_the_same_kind_signer_and_bytes() {
        let root = root_cert().expect("root");
        let c = collateral(COLLATERALS[0]);
        let chain =
            pem_chain(c["tcb_info_issuer_chain"].as_str().expect("pem").as_bytes()).expect("chain");
        let signer = Cert::from_der_as(&chain[0], SigAlg::EcdsaP256Sha256).expect("signer");
        let v = TdxVerifier::new();
        let item = sha256(b"signed bytes and signature");
        // A signature that does not verify is not remembered.
        assert!(!v.signed(b"crl", root, &item, || false));
        assert_eq!(v.cached_items().signatures, 0);
        assert!(v.signed(b"crl", root, &item, || true));
        assert!(v.signed(b"crl", root, &item, || panic!(
            "a hit is not verified again"
        )));
        // Another signer key, other bytes, another kind: each a miss.
        assert!(!v.signed(b"crl", &signer, &item, || false));
        assert!(!v.signed(b"crl", root, &sha256(b"other bytes"), || false));
        assert!(!v.signed(b"certificate", root, &item, || false));
        assert_eq!(v.cached_items().signatures, 1);
    }

    #[test]
    fn base64_decodes_as_base64ct_decodes() {
        // Every string of up to 6 symbols over characters that exercise the
        // padding, the trailing bits and the whitespace.
        let symbols = b"ABQ/= \n*";
        let mut s = Vec::new();
        for len in 0..=6u32 {
            for mut n in 0..symbols.len().pow(len) {
                s.clear();
                for _ in 0..len {
                    s.push(symbols[n % symbols.len()]);
                    n /= symbols.len();
                }
                let without_ws: Vec<u8> =
                    s.iter().copied().filter(|b| !b" \n".contains(b)).collect();
                assert_eq!(base64_standard(&s, false), reference_base64(&s), "{s:?}");
                assert_eq!(
                    base64_standard(&s, true),
                    reference_base64(&without_ws),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn crls_parse_as_x509_cert_parses_them() {
        let mut rng = Rng(0x5eed_c0c0);
        for path in COLLATERALS {
            let c = collateral(path);
            for key in ["root_ca_crl", "pck_crl"] {
                let der = hex::decode(c[key].as_str().expect("hex")).expect("hex");
                assert_eq!(crl_now(&der), crl_reference(&der), "{path} {key}");
                assert!(crl_now(&der).is_ok());
                // Each byte changed (to neighbours, DER tags and lengths,
                // and random values), one at a time.
                for at in 0..der.len() {
                    let values = [
                        der[at] ^ 0x01,
                        der[at] ^ 0x80,
                        [0x00, 0x30, 0x81, 0xFF][at % 4],
                        rng.below(256) as u8,
                    ];
                    for v in values {
                        let mut m = der.clone();
                        m[at] = v;
                        assert_eq!(
                            crl_now(&m),
                            crl_reference(&m),
                            "{path} {key} [{at}] = {v:#x}"
                        );
                    }
                }
                // Cut short, and a byte inserted or removed.
                for at in (0..der.len()).step_by(7) {
                    assert_eq!(crl_now(&der[..at]), crl_reference(&der[..at]));
                    let mut m = der.clone();
                    m.remove(at);
                    assert_eq!(crl_now(&m), crl_reference(&m), "{path} {key} -[{at}]");
                    let mut m = der.clone();
                    m.insert(at, 0x00);
                    assert_eq!(crl_now(&m), crl_reference(&m), "{path} {key} +[{at}]");
                }
            }
        }
    }

    #[test]
    fn pem_chains_read_as_first_written() {
        let mut rng = Rng(0xdecaf);
        let mut chains: Vec<Vec<u8>> = Vec::new();
        for path in COLLATERALS {
            let c = collateral(path);
            for key in ["tcb_info_issuer_chain", "pck_crl_issuer_chain"] {
                chains.push(c[key].as_str().expect("text").as_bytes().to_vec());
            }
        }
        for q in ["tdx/dcap-qvl/tdx_quote", "tdx/dcap-qvl/sgx_quote"] {
            let bytes = cocoon_tests::read_vector(q);
            let (quote, _) = Quote::parse_prefix(&bytes).expect("quote");
            chains.push(quote.pck_cert_chain_pem().to_vec());
        }
        let chars = b"-= \n\r\t\x0b\x0cA/+:\x00\xc2\xa0BEGINEND";
        for chain in &chains {
            assert_eq!(pem_chain(chain), pem_chain_reference(chain));
            assert!(pem_chain(chain).is_ok_and(|b| !b.is_empty()));
            assert_eq!(crate::tdx::pck_leaf_der(chain), pck_leaf_reference(chain),);
            for _ in 0..1000 {
                let mut m = chain.clone();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(m.len());
                    match rng.below(3) {
                        0 => m[at] = chars[rng.below(chars.len())],
                        1 => m.insert(at, chars[rng.below(chars.len())]),
                        _ => {
                            m.remove(at);
                        }
                    }
                }
                assert_eq!(
                    pem_chain(&m),
                    pem_chain_reference(&m),
                    "{:?}",
                    String::from_utf8_lossy(&m)
                );
                assert_eq!(
                    crate::tdx::pck_leaf_der(&m).is_ok(),
                    pck_leaf_reference(&m).is_ok(),
                    "{:?}",
                    String::from_utf8_lossy(&m)
                );
                if let Ok(der) = crate::tdx::pck_leaf_der(&m) {
                    assert_eq!(Ok(der), pck_leaf_reference(&m));
                }
            }
        }
    }

    /// `pck_leaf_der` with the decoding as first written.
    fn pck_leaf_reference(chain: &[u8]) -> Result<Vec<u8>, String> {
        // The block is found as `pck_leaf_der` finds it; only its decoding
        // differs.
        let found = crate::tdx::pck_leaf_der(chain);
        let Some(start) = chain.windows(11).position(|w| w == b"-----BEGIN ") else {
            return found;
        };
        let rest = &chain[start + 11..];
        let Some(l) = rest.windows(5).position(|w| w == b"-----") else {
            return found;
        };
        let rest = &rest[l + 5..];
        let Some(e) = rest.windows(9).position(|w| w == b"-----END ") else {
            return found;
        };
        match found {
            Err(m) if m.contains("labelled") || m.contains("truncated") => Err(m),
            _ => crate::tdx::pck_leaf_der_rewrapped(&rest[..e]),
        }
    }

    fn pem_chain_reference(mut input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
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
            let (headers, data) =
                match until(payload, b"\n\n").or_else(|| until(payload, b"\r\n\r\n")) {
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
            let der = reference_base64(&data).ok_or("PEM data is not base64")?;
            if utf8(headers)?.lines().any(|l| !l.contains(':')) {
                return Err("PEM header line without ':'".into());
            }
            out.push(der);
        }
        Ok(out)
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
