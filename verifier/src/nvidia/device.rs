//! One GPU's or NVSwitch's SPDM evidence: signature, chain, nonce, FWID and
//! the comparison of its measurements with reference values.
//!
//! Extract → expect → compare: the report is parsed by
//! `cocoon_attestation::nvidia`, the attestation key's chain is checked up to
//! the pinned NVIDIA Device Identity CA, the ECDSA P-384 signature over the
//! exact request || response bytes is checked with the chain's leaf, the
//! request nonce is compared with the caller's, the firmware ID in the
//! report is compared with the one in the leaf certificate's TCG DICE
//! TcbInfo extension, and the measurement blocks are compared with the
//! golden values of the driver and VBIOS reference integrity manifests.

use cocoon_attestation::bytes::{DerError, Reader};
use cocoon_attestation::nvidia::{FeatureMode, SpdmReport};
use std::sync::Arc;

use der::asn1::ObjectIdentifier;

use super::chain::{self, DEVICE_ROOT};
use crate::x509::{Cert, SubjectKey};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// What kind of device the evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A GPU (its report names a driver version).
    Gpu,
    /// An NVSwitch (no driver version; a switch PDI).
    Switch,
}

/// A golden measurement from a reference integrity manifest: block
/// `index` (0-based, as the RIMs number them; SPDM block `index + 1`) must
/// equal one of `alternatives`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Golden {
    /// RIM measurement index (0-based).
    pub index: u32,
    /// Accepted values.
    pub alternatives: Vec<Vec<u8>>,
    /// Which manifest it comes from ("driver RIM 550.90.07"), for messages.
    pub source: String,
}

impl Golden {
    /// The active measurements of a verified RIM, as golden values.
    pub fn from_rim(rim: &super::rim::VerifiedRim, source: &str) -> Vec<Golden> {
        rim.measurements()
            .iter()
            .filter(|m| m.active)
            .map(|m| Golden {
                index: m.index,
                alternatives: m.alternatives.iter().map(|a| a.to_vec()).collect(),
                source: source.to_string(),
            })
            .collect()
    }
}

/// A device whose evidence verified. Only this crate builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    kind: DeviceKind,
    model: String,
    driver_version: Option<String>,
    vbios_version: Option<String>,
    nonce: [u8; 32],
    fwid: Option<Vec<u8>>,
    feature_mode: Option<FeatureMode>,
    leaf_serial: String,
    measurements_compared: usize,
    blocks: usize,
    padding: usize,
    chain_der: Vec<Vec<u8>>,
}

impl VerifiedDevice {
    /// GPU or NVSwitch.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }
    /// Chip model from the attestation key's certificate ("GH100", "LS_10").
    pub fn model(&self) -> &str {
        &self.model
    }
    /// Driver version the GPU reported (GPUs only).
    pub fn driver_version(&self) -> Option<&str> {
        self.driver_version.as_deref()
    }
    /// VBIOS version the device reported.
    pub fn vbios_version(&self) -> Option<&str> {
        self.vbios_version.as_deref()
    }
    /// The request nonce (equal to the caller's, when one was given).
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }
    /// The firmware ID, when reported.
    pub fn fwid(&self) -> Option<&[u8]> {
        self.fwid.as_deref()
    }
    /// The feature flag (single, multi-GPU passthrough, protected PCIe).
    pub fn feature_mode(&self) -> Option<FeatureMode> {
        self.feature_mode
    }
    /// The device identity: the serialNumber attribute of the leaf's
    /// subject (hex, as NVIDIA prints it).
    pub fn device_id(&self) -> &str {
        &self.leaf_serial
    }
    /// How many measurement blocks were compared with golden values.
    pub fn measurements_compared(&self) -> usize {
        self.measurements_compared
    }
    pub(crate) fn set_measurements_compared(&mut self, n: usize) {
        self.measurements_compared = n;
    }
    /// How many measurement blocks the report holds.
    pub fn blocks(&self) -> usize {
        self.blocks
    }
    /// How many zero bytes followed the signature in the buffer the driver
    /// returned; they are outside the signed transcript and were ignored.
    pub fn padding_ignored(&self) -> usize {
        self.padding
    }
    /// The attestation key's chain (DER, leaf first, root excluded), for
    /// revocation checks.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }
}

/// What one device's evidence must satisfy.
pub struct DeviceExpectations<'a> {
    /// The nonce the verifier asked for; `None` skips the nonce check (only
    /// for evidence recorded elsewhere, never for live sessions).
    pub nonce: Option<&'a [u8; 32]>,
    /// Golden measurements; `None` skips the comparison.
    pub golden: Option<&'a [Golden]>,
}

/// TCG DICE TcbInfo (TCG DICE Attestation Architecture §6.1.1).
const OID_DICE_TCB_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
/// X.520 serialNumber.
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");

/// Verify one device's report (binary, request || response) with its
/// certificate chain (PEM, leaf first) at `now`.
pub fn verify_device(
    report: &[u8],
    chain_pem: &[u8],
    expect: &DeviceExpectations<'_>,
    now: UnixTime,
) -> Result<VerifiedDevice, Rejection> {
    verify_device_memo(
        report,
        chain_pem,
        expect,
        now,
        &mut chain::LinkMemo::default(),
    )
    .map(|(v, _)| v)
}

/// [`verify_device`], with certificate links already verified in `memo`
/// (by an earlier device of the same set) not verified again. Returns the
/// parsed report with the verdict, so a caller that compares measurements
/// does not parse it again.
pub(crate) fn verify_device_memo(
    report: &[u8],
    chain_pem: &[u8],
    expect: &DeviceExpectations<'_>,
    now: UnixTime,
    memo: &mut chain::LinkMemo,
) -> Result<(VerifiedDevice, SpdmReport), Rejection> {
    let checked = DeviceChain::check(chain_pem, now, memo).map(|(c, p)| (Arc::new(c), p));
    verify_device_with(report, checked, expect)
}

/// The time-independent result of checking a device certificate chain up
/// to the pinned NVIDIA Device Identity CA, with what the report checks
/// need from it. A [`super::GpuVerifier`] keeps those that passed, keyed by
/// the SHA-256 of the exact PEM, and re-checks only `windows` at each call.
pub(crate) struct DeviceChain {
    leaf: Cert,
    /// Validity windows of the whole path, root included.
    pub(crate) windows: Vec<chain::Window>,
    chain_der: Vec<Vec<u8>>,
}

/// A device chain with the problems found at this call's time.
pub(crate) type CheckedChain = (Arc<DeviceChain>, Vec<chain::ChainProblem>);

impl DeviceChain {
    /// Parse and check `chain_pem` at `now`: the chain and every problem
    /// found (none means it may be cached), or why it is not a chain.
    pub(crate) fn check(
        chain_pem: &[u8],
        now: UnixTime,
        memo: &mut chain::LinkMemo,
    ) -> Result<(DeviceChain, Vec<chain::ChainProblem>), chain::ChainProblem> {
        let mut certs = chain::parse_chain("device certificate chain", chain_pem)?;
        let problems =
            chain::check_chain_memo("device certificate chain", &certs, &DEVICE_ROOT, now, memo);
        let windows = chain::path_windows(&certs, &DEVICE_ROOT);
        let chain_der = certs
            .iter()
            .filter(|c| c.subject != c.issuer)
            .map(|c| c.der.clone())
            .collect();
        if certs.is_empty() {
            return Err((
                ReasonKind::Certificate,
                "device certificate chain is empty".into(),
            ));
        }
        let leaf = certs.swap_remove(0);
        Ok((
            DeviceChain {
                leaf,
                windows,
                chain_der,
            },
            problems,
        ))
    }
}

/// One device's report checked with its (already checked) chain.
pub(crate) fn verify_device_with(
    report: &[u8],
    checked: Result<CheckedChain, chain::ChainProblem>,
    expect: &DeviceExpectations<'_>,
) -> Result<(VerifiedDevice, SpdmReport), Rejection> {
    let mut f = Findings::default();
    let parsed = SpdmReport::parse(report);
    let (report, (chain, problems)) = match (parsed, checked) {
        (Ok(r), Ok(c)) => (r, c),
        (parsed, checked) => {
            if let Err(e) = parsed {
                f.add(ReasonKind::Malformed, format!("attestation report: {e}"));
            }
            if let Err((kind, msg)) = checked {
                f.add(kind, msg);
            }
            return Err(f.into_rejection());
        }
    };
    for (kind, msg) in problems {
        f.add(kind, msg);
    }
    let leaf = &chain.leaf;
    match &leaf.key {
        SubjectKey::P384(k) => {
            let ok = <&[u8; 96]>::try_from(report.signature())
                .is_ok_and(|sig| k.verify_fixed(report.signed_bytes(), sig));
            if !ok {
                f.add(
                    ReasonKind::Signature,
                    format!(
                        "the SPDM signature does not verify with the attestation key of {}",
                        leaf.subject_cn
                    ),
                );
            }
        }
        SubjectKey::Rsa(_) | SubjectKey::P256(_) => f.add(
            ReasonKind::Certificate,
            "the attestation key is not on P-384; NVIDIA devices sign with P-384",
        ),
    }
    if let Some(want) = expect.nonce {
        if report.request_nonce() != want.as_slice() {
            f.add(
                ReasonKind::Policy,
                format!(
                    "nonce mismatch: the report answers nonce {}, the verifier asked for {}",
                    hex::encode(report.request_nonce()),
                    hex::encode(want)
                ),
            );
        }
    }
    if report.request_param2() != 0xFF {
        f.add(
            ReasonKind::Policy,
            format!(
                "the request asked for measurement {} only, not all measurements (0xff)",
                report.request_param2()
            ),
        );
    }
    for b in report.blocks() {
        if b.value_type & 0x80 != 0 {
            f.add(
                ReasonKind::UnknownValue,
                format!(
                    "measurement block {} is a raw bit stream, not a digest",
                    b.index
                ),
            );
        }
    }
    // The report's FWID must be the firmware the attestation key's
    // certificate was issued to (older firmware does not report one).
    if let Some(fwid) = report.fwid() {
        match leaf_fwid(leaf) {
            Ok(Some(cert_fwid)) if cert_fwid == fwid => {}
            Ok(Some(cert_fwid)) => f.add(
                ReasonKind::KeyBinding,
                format!(
                    "the report's FWID {} is not the FWID {} in the attestation key's certificate",
                    hex::encode(fwid),
                    hex::encode(cert_fwid)
                ),
            ),
            Ok(None) => f.add(
                ReasonKind::KeyBinding,
                "the report carries an FWID but the attestation key's certificate has no TCG DICE TcbInfo FWID",
            ),
            Err(e) => f.add(ReasonKind::Certificate, format!("leaf TcbInfo extension: {e}")),
        }
    }
    let kind = if report.driver_version().is_some() {
        DeviceKind::Gpu
    } else {
        DeviceKind::Switch
    };
    let feature_mode = match report.feature_mode() {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(raw)) => {
            f.add(
                ReasonKind::UnknownValue,
                format!("feature flag {raw} is not one NVIDIA defines (0, 1, 2)"),
            );
            None
        }
    };
    let mut compared = 0;
    if let Some(golden) = expect.golden {
        compared = compare_measurements(&report, golden, &mut f);
    }
    let model = leaf
        .subject_cn
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if !f.is_empty() {
        return Err(f.into_rejection());
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(report.request_nonce());
    let verified = VerifiedDevice {
        kind,
        model,
        driver_version: report.driver_version(),
        vbios_version: report.vbios_version(),
        nonce,
        fwid: report.fwid().map(<[u8]>::to_vec),
        feature_mode,
        leaf_serial: leaf_serial(leaf),
        measurements_compared: compared,
        blocks: report.blocks().len(),
        padding: report.padding_len(),
        chain_der: chain.chain_der.clone(),
    };
    Ok((verified, report))
}

/// Compare measurement blocks with golden values: every golden index must
/// be present in the report with one of its values. Returns how many were
/// compared.
pub(crate) fn compare_measurements(
    report: &SpdmReport,
    golden: &[Golden],
    f: &mut Findings,
) -> usize {
    let mut compared = 0;
    for g in golden {
        let block = u8::try_from(g.index + 1).ok().and_then(|i| report.block(i));
        let Some(block) = block else {
            f.add(
                ReasonKind::Policy,
                format!(
                    "measurement {} of the {} is not in the report",
                    g.index, g.source
                ),
            );
            continue;
        };
        compared += 1;
        let value = report.value(block);
        if !g.alternatives.iter().any(|a| a.as_slice() == value) {
            f.add(
                ReasonKind::Policy,
                format!(
                    "measurement mismatch at index {}: the report has {}, the {} allows {}",
                    g.index,
                    hex::encode(value),
                    g.source,
                    g.alternatives
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            );
        }
    }
    compared
}

fn leaf_serial(leaf: &Cert) -> String {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(&leaf.der) else {
        return String::new();
    };
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_SERIAL_NUMBER {
                if let Ok(s) = atv.value.decode_as::<der::asn1::PrintableStringRef<'_>>() {
                    return s.as_str().to_string();
                }
                if let Ok(s) = atv.value.decode_as::<der::asn1::Utf8StringRef<'_>>() {
                    return s.as_str().to_string();
                }
            }
        }
    }
    String::new()
}

/// The FWID digest in the leaf's extension 2.23.133.5.4.1 (the OID TCG
/// DICE assigns to TcbInfo, TCG DICE Attestation Architecture §6.1.1).
///
/// Two layouts are read: the DICE one, `SEQUENCE { ..., fwids [6]
/// IMPLICIT SEQUENCE OF FWID, ... }`, and the one NVIDIA's GH100 and LS10
/// leaf certificates carry (seen in every vector), `SEQUENCE { INTEGER,
/// SubjectPublicKeyInfo, FWID }`; in both `FWID ::= SEQUENCE { hashAlg
/// OBJECT IDENTIFIER, digest OCTET STRING }` and the first FWID is taken.
fn leaf_fwid(leaf: &Cert) -> Result<Option<Vec<u8>>, String> {
    let Some(ext) = leaf.extension(&OID_DICE_TCB_INFO) else {
        return Ok(None);
    };
    let der = |e: DerError| e.to_string();
    let mut ext = Reader::new(ext);
    let (tag, mut items) = ext.der("TcbInfo").map_err(der)?;
    if tag != 0x30 || !ext.is_empty() {
        return Err("the 2.23.133.5.4.1 extension is not one SEQUENCE".into());
    }
    while !items.is_empty() {
        let (tag, mut value) = items.der("TcbInfo field").map_err(der)?;
        let mut fwid = match tag {
            // DICE: fwids [6] IMPLICIT SEQUENCE OF FWID; take the first.
            0xA6 => {
                let (t, first) = value.der("FWID").map_err(der)?;
                if t != 0x30 {
                    return Err("FWID is not a SEQUENCE".into());
                }
                first
            }
            // NVIDIA: an FWID SEQUENCE directly (OID first; the SPKI
            // SEQUENCE starts with a SEQUENCE and is skipped).
            0x30 if value.rest().first() == Some(&0x06) => value,
            _ => continue,
        };
        let (t, _oid) = fwid.der("FWID hashAlg").map_err(der)?;
        if t != 0x06 {
            return Err("FWID hashAlg is not an OID".into());
        }
        let (t, digest) = fwid.der("FWID digest").map_err(der)?;
        if t != 0x04 {
            return Err("FWID digest is not an OCTET STRING".into());
        }
        return Ok(Some(digest.rest().to_vec()));
    }
    Ok(None)
}
