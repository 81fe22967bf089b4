//! NVIDIA reference integrity manifests (RIMs): signed SWID tags.
//!
//! NVIDIA publishes the expected measurements of GPU and NVSwitch firmware
//! (VBIOS) and of the driver as ISO/IEC 19770-2 software identification
//! tags carrying the TCG RIM information model in their `Meta` element and
//! one `Resource type="Measurement"` per measurement index in their
//! `Payload`. Each tag carries an enveloped XML signature
//! ([xmldsig-core]) whose `KeyInfo` holds the signer's certificate chain up
//! to the NVIDIA CoRIM signing root that this crate pins.
//!
//! This module owns checking such a tag offline: [`verify_rim`] parses it
//! with the strict XML subset of the crate-private `xml` module, checks that
//! the signature uses exactly the algorithms NVIDIA uses, recomputes the
//! reference digest and the signature, checks the embedded chain at the
//! caller's time, and only then returns a [`VerifiedRim`]. It does not
//! compare measurements with evidence and does not check revocation (the
//! caller can run OCSP over [`VerifiedRim::signer_chain_der`]).
//!
//! The signature profile accepted is exactly:
//!
//! * one `ds:Signature`, a child of the document element, with
//!   `SignedInfo`, `SignatureValue` and `KeyInfo` and nothing else
//!   (xmldsig-core §4.1);
//! * `CanonicalizationMethod` Canonical XML 1.1 without comments
//!   (`http://www.w3.org/2006/12/xml-c14n11`, xmldsig-core §4.3.1, §6.5);
//! * `SignatureMethod` ECDSA over P-384 with SHA-384
//!   (`http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384`, RFC 6931
//!   §2.3.6); the `SignatureValue` is the base64 of `r || s`, 48 bytes each
//!   (RFC 4050 §3.3, xmldsig-core1 §6.4.3);
//! * exactly one `Reference` with `URI=""` (the whole document without
//!   comments, xmldsig-core §4.3.3.3), the transforms enveloped-signature
//!   (§6.6.4) then Canonical XML 1.1, and `DigestMethod` SHA-384
//!   (`http://www.w3.org/2001/04/xmldsig-more#sha384`, RFC 6931 §2.1.3);
//! * `KeyInfo` holding one `X509Data` of `X509Certificate` elements, the
//!   signer first (xmldsig-core §4.4.4).
//!
//! Section numbers are those of XML Signature Syntax and Processing, Second
//! Edition (xmldsig-core); Canonical XML 1.1 is xml-c14n11.
//!
//! [xmldsig-core]: https://www.w3.org/TR/xmldsig-core/

use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha384};

use super::chain::{check_chain, path_windows, Window, MAX_CHAIN, RIM_ROOT};
use super::xml::{self, Element};
use crate::x509::{Cert, SubjectKey};
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// The ISO/IEC 19770-2:2015 SWID tag namespace.
const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
/// The XML signature namespace.
const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// The namespace of the `HashN` attributes on measurement resources.
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

/// Canonical XML 1.1, without comments.
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
/// ECDSA with SHA-384 (RFC 6931 §2.3.6).
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
/// SHA-384 (RFC 6931 §2.1.3).
const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
/// The enveloped-signature transform (xmldsig-core §6.6.4).
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// Most content problems listed one by one in a rejection.
const MAX_REPORTED: usize = 16;

/// One measurement a RIM expects: the measurement at `index` must equal one
/// of `alternatives`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimMeasurement {
    /// The measurement index (the `index` attribute, decimal).
    pub index: u32,
    /// Whether the measurement is to be compared (`active="True"`); inactive
    /// entries are placeholders.
    pub active: bool,
    /// The accepted SHA-384 values, `Hash0` to `Hash{N-1}` where N is the
    /// `alternatives` attribute.
    pub alternatives: Vec<[u8; 48]>,
}

/// What a RIM says, parsed without checking its signature: for display
/// only, never for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimInfo {
    /// The tag identifier (`SoftwareIdentity/@tagId`).
    pub tag_id: String,
    /// The software name (`SoftwareIdentity/@name`).
    pub name: String,
    /// `Meta/@product`, for example `GH100` or `LS10`.
    pub product: String,
    /// `Meta/@colloquialVersion`: the VBIOS or driver version.
    pub version: String,
    /// `Meta/@edition`, for example `GPU` or `SWITCH`.
    pub edition: String,
    /// The measurement resources, in document order.
    pub measurements: Vec<RimMeasurement>,
}

/// A RIM whose XML signature verified with the first embedded certificate,
/// whose embedded chain reaches the pinned NVIDIA CoRIM signing root at the
/// time given to [`verify_rim`], and whose measurements parsed. Only
/// [`verify_rim`] builds one.
#[derive(Debug, Clone)]
pub struct VerifiedRim {
    info: RimInfo,
    chain: Vec<Vec<u8>>,
}

impl VerifiedRim {
    /// The tag identifier (`SoftwareIdentity/@tagId`).
    pub fn tag_id(&self) -> &str {
        &self.info.tag_id
    }
    /// The software name (`SoftwareIdentity/@name`).
    pub fn name(&self) -> &str {
        &self.info.name
    }
    /// `Meta/@product`, for example `GH100` or `LS10`.
    pub fn product(&self) -> &str {
        &self.info.product
    }
    /// `Meta/@colloquialVersion`: the VBIOS or driver version.
    pub fn version(&self) -> &str {
        &self.info.version
    }
    /// `Meta/@edition`, for example `GPU` or `SWITCH`.
    pub fn edition(&self) -> &str {
        &self.info.edition
    }
    /// The measurement resources, in document order (indices are unique).
    pub fn measurements(&self) -> &[RimMeasurement] {
        &self.info.measurements
    }
    /// The measurement with this index, if the RIM has one.
    pub fn measurement(&self, index: u32) -> Option<&RimMeasurement> {
        self.info.measurements.iter().find(|m| m.index == index)
    }
    /// The embedded certificates as DER, signer first, as they appear in
    /// `KeyInfo`: for revocation checks (OCSP) by the caller.
    pub fn signer_chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::single(ReasonKind::Malformed, msg)
}

/// The signature parts, after the structural checks.
struct SignatureParts<'d> {
    signature: &'d Element,
    signed_info: &'d Element,
    digest_value: Vec<u8>,
    signature_value: Vec<u8>,
    certificates: Vec<Vec<u8>>,
}

/// Count `ds:Signature` elements anywhere under `el` (depth is bounded by
/// the parser).
fn count_signatures(el: &Element) -> usize {
    el.elements()
        .map(|c| usize::from(c.is(DS_NS, "Signature")) + count_signatures(c))
        .sum()
}

/// The only child element of `parent` that is `ds:local`; anything else is
/// refused.
fn ds_children<'d>(parent: &'d Element, expected: &[&str]) -> Result<Vec<&'d Element>, Rejection> {
    let children: Vec<&Element> = parent.elements().collect();
    let names: Vec<String> = children.iter().map(|c| c.qname()).collect();
    let ok = children.len() == expected.len()
        && children
            .iter()
            .zip(expected)
            .all(|(c, want)| c.is(DS_NS, want));
    if !ok || !parent.text_is_whitespace() {
        return Err(malformed(format!(
            "RIM signature: <{}> must contain exactly {} (found {})",
            parent.qname(),
            expected
                .iter()
                .map(|e| format!("ds:{e}"))
                .collect::<Vec<_>>()
                .join(", "),
            if names.is_empty() {
                "no element".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok(children)
}

/// The `Algorithm` attribute of an algorithm element, which must have no
/// element content (algorithm parameters are not accepted).
fn algorithm(el: &Element) -> Result<&str, Rejection> {
    if el.elements().next().is_some() || !el.text_is_whitespace() {
        return Err(malformed(format!(
            "RIM signature: <{}> carries parameters, which are not accepted",
            el.qname()
        )));
    }
    el.attr(None, "Algorithm").ok_or_else(|| {
        malformed(format!(
            "RIM signature: <{}> has no Algorithm attribute",
            el.qname()
        ))
    })
}

/// Base64 content of an element with no child elements (base64Binary, XML
/// Schema Part 2 §3.2.16: whitespace between characters is allowed).
fn base64_content(el: &Element) -> Result<Vec<u8>, Rejection> {
    if el.elements().next().is_some() {
        return Err(malformed(format!(
            "RIM signature: <{}> must hold only base64 text",
            el.qname()
        )));
    }
    let text: String = el
        .text()
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'))
        .collect();
    Base64::decode_vec(&text).map_err(|_| {
        malformed(format!(
            "RIM signature: <{}> is not valid base64",
            el.qname()
        ))
    })
}

/// Structural checks of the signature (xmldsig-core §4); algorithm URIs
/// that are not the accepted ones are added to `findings`.
fn signature_parts<'d>(
    root: &'d Element,
    findings: &mut Findings,
) -> Result<SignatureParts<'d>, Rejection> {
    match count_signatures(root) {
        1 => {}
        0 => return Err(malformed("RIM has no ds:Signature element")),
        n => {
            return Err(malformed(format!(
                "RIM has {n} ds:Signature elements, exactly one is accepted"
            )))
        }
    }
    let signature = root
        .elements()
        .find(|c| c.is(DS_NS, "Signature"))
        .ok_or_else(|| {
            malformed("RIM: the ds:Signature element must be a child of SoftwareIdentity")
        })?;
    let parts = ds_children(signature, &["SignedInfo", "SignatureValue", "KeyInfo"])?;
    let (signed_info, signature_value, key_info) = match parts.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => return Err(malformed("RIM signature: unexpected structure")),
    };

    // SignedInfo (xmldsig-core §4.3): exactly one Reference.
    let si: Vec<&Element> = signed_info.elements().collect();
    let reference_count = si.iter().filter(|c| c.is(DS_NS, "Reference")).count();
    if reference_count != 1 {
        return Err(malformed(format!(
            "RIM signature: SignedInfo has {reference_count} ds:Reference elements, exactly one is accepted"
        )));
    }
    let si = ds_children(
        signed_info,
        &["CanonicalizationMethod", "SignatureMethod", "Reference"],
    )?;
    let (c14n_method, sig_method, reference) = match si.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => return Err(malformed("RIM signature: unexpected SignedInfo structure")),
    };
    let alg = algorithm(c14n_method)?;
    if alg != C14N11 {
        findings.add(
            ReasonKind::UnknownValue,
            format!("RIM signature: canonicalization method {alg} is not accepted (only {C14N11})"),
        );
    }
    let alg = algorithm(sig_method)?;
    if alg != ECDSA_SHA384 {
        findings.add(
            ReasonKind::UnknownValue,
            format!("RIM signature: signature method {alg} is not accepted (only {ECDSA_SHA384})"),
        );
    }

    // Reference (xmldsig-core §4.3.3): the whole document.
    match reference.attr(None, "URI") {
        Some("") => {}
        Some(uri) => {
            return Err(malformed(format!(
                "RIM signature: Reference URI \"{uri}\" is not accepted (only URI=\"\", the whole document)"
            )))
        }
        None => {
            return Err(malformed(
                "RIM signature: Reference has no URI (only URI=\"\", the whole document, is accepted)",
            ))
        }
    }
    let r = ds_children(reference, &["Transforms", "DigestMethod", "DigestValue"])?;
    let (transforms, digest_method, digest_value) = match r.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => return Err(malformed("RIM signature: unexpected Reference structure")),
    };
    let t = ds_children(transforms, &["Transform", "Transform"])?;
    let mut transform_algs = Vec::new();
    for tr in &t {
        transform_algs.push(algorithm(tr)?);
    }
    if transform_algs != [ENVELOPED, C14N11] {
        for alg in &transform_algs {
            if *alg != ENVELOPED && *alg != C14N11 {
                findings.add(
                    ReasonKind::UnknownValue,
                    format!("RIM signature: transform {alg} is not accepted"),
                );
            }
        }
        findings.add(
            ReasonKind::UnknownValue,
            format!(
                "RIM signature: transforms [{}] are not accepted (only enveloped-signature then Canonical XML 1.1)",
                transform_algs.join(", ")
            ),
        );
    }
    let alg = algorithm(digest_method)?;
    if alg != SHA384 {
        findings.add(
            ReasonKind::UnknownValue,
            format!("RIM signature: digest method {alg} is not accepted (only {SHA384})"),
        );
    }
    let digest_value = base64_content(digest_value)?;
    let signature_value = base64_content(signature_value)?;

    // KeyInfo (xmldsig-core §4.4): one X509Data of certificates.
    let x509_data = ds_children(key_info, &["X509Data"])?;
    let x509_data = x509_data
        .first()
        .ok_or_else(|| malformed("RIM signature: KeyInfo has no X509Data"))?;
    if !x509_data.text_is_whitespace() {
        return Err(malformed("RIM signature: X509Data holds text"));
    }
    let mut certificates = Vec::new();
    for c in x509_data.elements() {
        if !c.is(DS_NS, "X509Certificate") {
            return Err(malformed(format!(
                "RIM signature: X509Data holds <{}>; only ds:X509Certificate is accepted",
                c.qname()
            )));
        }
        certificates.push(base64_content(c)?);
    }
    if certificates.is_empty() {
        return Err(malformed("RIM signature: X509Data holds no certificate"));
    }
    if certificates.len() > MAX_CHAIN {
        return Err(malformed(format!(
            "RIM signature: {} certificates, more than the {MAX_CHAIN} accepted",
            certificates.len()
        )));
    }
    Ok(SignatureParts {
        signature,
        signed_info,
        digest_value,
        signature_value,
        certificates,
    })
}

/// The one child element of the document element that is `ns0:local`.
fn single_child<'d>(root: &'d Element, local: &str) -> Result<&'d Element, String> {
    let mut it = root.elements().filter(|c| c.is(SWID_NS, local));
    match (it.next(), it.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(format!("RIM has no {local} element")),
        (Some(_), Some(_)) => Err(format!("RIM has more than one {local} element")),
    }
}

fn required_attr(el: &Element, name: &str) -> Result<String, String> {
    el.attr(None, name)
        .map(str::to_owned)
        .ok_or_else(|| format!("RIM: <{}> has no {name} attribute", el.qname()))
}

/// A decimal integer without sign, as xs:nonNegativeInteger writes it.
fn decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One `Resource` element of the payload.
fn measurement(el: &Element) -> Result<RimMeasurement, String> {
    let index_text = required_attr(el, "index")?;
    let index = decimal_u32(&index_text).ok_or_else(|| {
        format!("RIM: measurement index \"{index_text}\" is not a decimal number")
    })?;
    let what = format!("RIM measurement {index}");
    match el.attr(None, "type") {
        Some("Measurement") => {}
        Some(t) => return Err(format!("{what}: resource type \"{t}\" is not accepted")),
        None => return Err(format!("{what}: resource has no type")),
    }
    let active = match required_attr(el, "active")?.as_str() {
        "True" | "true" | "1" => true,
        "False" | "false" | "0" => false,
        other => return Err(format!("{what}: active=\"{other}\" is not a boolean")),
    };
    let n_text = required_attr(el, "alternatives")?;
    let n = decimal_u32(&n_text)
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("{what}: alternatives=\"{n_text}\" is not a positive number"))?;
    // Every attribute in the SHA-384 namespace must be one of Hash0..Hash{n-1}.
    for a in el
        .attrs
        .iter()
        .filter(|a| a.ns.as_deref() == Some(SHA384_NS))
    {
        let k = a.local.strip_prefix("Hash").and_then(|k| {
            if k.len() > 1 && k.starts_with('0') {
                None
            } else {
                decimal_u32(k)
            }
        });
        match k {
            Some(k) if k < n => {}
            _ => {
                return Err(format!(
                    "{what}: hash attribute {} is not one of Hash0..Hash{} (alternatives=\"{n}\")",
                    a.local,
                    n - 1
                ))
            }
        }
    }
    let mut alternatives = Vec::new();
    for k in 0..n {
        let name = format!("Hash{k}");
        let hex_value = el
            .attr(Some(SHA384_NS), &name)
            .ok_or_else(|| format!("{what}: alternatives=\"{n}\" but {name} is missing"))?;
        let mut h = [0u8; 48];
        hex::decode_to_slice(hex_value, &mut h)
            .map_err(|_| format!("{what}: {name} is not 48 bytes of hex"))?;
        alternatives.push(h);
    }
    Ok(RimMeasurement {
        index,
        active,
        alternatives,
    })
}

/// Everything but the signature: SWID tag fields and measurements. Every
/// shortfall is added to `findings`; returns what could be read.
fn content(root: &Element, findings: &mut Findings) -> Option<RimInfo> {
    let mut errors: Vec<String> = Vec::new();
    let field = |r: Result<String, String>, errors: &mut Vec<String>| match r {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };
    let tag_id = field(required_attr(root, "tagId"), &mut errors);
    let name = field(required_attr(root, "name"), &mut errors);
    let (product, version, edition) = match single_child(root, "Meta") {
        Ok(meta) => (
            field(required_attr(meta, "product"), &mut errors),
            field(required_attr(meta, "colloquialVersion"), &mut errors),
            field(required_attr(meta, "edition"), &mut errors),
        ),
        Err(e) => {
            errors.push(e);
            Default::default()
        }
    };
    let mut measurements: Vec<RimMeasurement> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    match single_child(root, "Payload") {
        Ok(payload) => {
            for r in payload.elements() {
                if !r.is(SWID_NS, "Resource") {
                    errors.push(format!(
                        "RIM: Payload holds <{}>; only Resource elements are accepted",
                        r.qname()
                    ));
                    continue;
                }
                match measurement(r) {
                    Ok(m) if !seen.insert(m.index) => errors.push(format!(
                        "RIM: measurement index {} appears more than once",
                        m.index
                    )),
                    Ok(m) => measurements.push(m),
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    if errors.is_empty() && measurements.is_empty() {
        errors.push("RIM: Payload has no measurement".to_owned());
    }
    if !errors.is_empty() {
        let total = errors.len();
        for e in errors.into_iter().take(MAX_REPORTED) {
            findings.add(ReasonKind::Malformed, e);
        }
        if total > MAX_REPORTED {
            findings.add(
                ReasonKind::Malformed,
                format!(
                    "RIM: {} more problems with its content",
                    total - MAX_REPORTED
                ),
            );
        }
        return None;
    }
    Some(RimInfo {
        tag_id,
        name,
        product,
        version,
        edition,
        measurements,
    })
}

fn parse_document(xml: &[u8]) -> Result<xml::Document, Rejection> {
    let doc = xml::parse(xml).map_err(|e| malformed(format!("RIM is not accepted XML: {e}")))?;
    if !doc.root.is(SWID_NS, "SoftwareIdentity") {
        return Err(malformed(format!(
            "RIM document element is <{}> in namespace {}, not a SWID SoftwareIdentity",
            doc.root.qname(),
            doc.root.ns.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(doc)
}

/// Read a RIM's fields without checking its signature or chain, for
/// display (for example a CLI's explanation of what it was given). Never
/// base a decision on the result; use [`verify_rim`].
pub fn parse_rim_unverified(xml: &[u8]) -> Result<RimInfo, Rejection> {
    let doc = parse_document(xml)?;
    let mut findings = Findings::default();
    match content(&doc.root, &mut findings) {
        Some(info) if findings.is_empty() => Ok(info),
        _ => Err(findings.into_rejection()),
    }
}

/// Verify a RIM (a signed SWID tag, as bytes) at time `now`.
///
/// Checks, reporting every shortfall found:
///
/// 1. the document is in the accepted XML subset (see the `xml` module) and
///    its element is a SWID `SoftwareIdentity` (else
///    [`ReasonKind::Malformed`]);
/// 2. it holds exactly one enveloped `ds:Signature` with exactly one
///    `Reference` and the structure in the module documentation
///    ([`ReasonKind::Malformed`]), using exactly the accepted algorithms
///    ([`ReasonKind::UnknownValue`], naming the URI);
/// 3. reference validation (xmldsig-core §3.2.1): the SHA-384 of the
///    Canonical XML 1.1 form of the document without the `Signature`
///    element equals `DigestValue` ([`ReasonKind::Signature`]);
/// 4. signature validation (§3.2.2): `SignatureValue` is a valid ECDSA
///    P-384/SHA-384 signature, by the first certificate's key, over the
///    Canonical XML 1.1 form of `SignedInfo` as a document subset, which
///    carries the namespaces it inherits from its ancestors (Canonical XML
///    1.1 §2.4) ([`ReasonKind::Signature`]);
/// 5. the embedded certificates parse as ECDSA P-384 certificates
///    ([`ReasonKind::Certificate`]), the signer's key usage, when present,
///    allows digitalSignature, and the chain reaches the pinned NVIDIA
///    CoRIM signing root with every certificate valid at `now`
///    ([`ReasonKind::Chain`], [`ReasonKind::Expired`]);
/// 6. `tagId`, `name`, `Meta` `product`/`colloquialVersion`/`edition` are
///    present and every `Resource` is a measurement with a decimal `index`
///    (unique), a boolean `active` and `alternatives` = N with `Hash0` ..
///    `Hash{N-1}` each 48 bytes of hex ([`ReasonKind::Malformed`]).
///
/// Revocation (OCSP) is not checked.
pub fn verify_rim(xml: &[u8], now: UnixTime) -> Result<VerifiedRim, Rejection> {
    verify_rim_windows(xml, now).map(|(rim, _)| rim)
}

/// [`verify_rim`], with the validity windows of the signing chain's path
/// (root included): the only part of the verdict that depends on `now`,
/// re-checked when a [`super::GpuVerifier`] finds the RIM in its cache.
pub(crate) fn verify_rim_windows(
    xml: &[u8],
    now: UnixTime,
) -> Result<(VerifiedRim, Vec<Window>), Rejection> {
    let doc = parse_document(xml)?;
    let root = &doc.root;
    let mut findings = Findings::default();
    let parts = signature_parts(root, &mut findings)?;
    let algorithms_ok = findings.is_empty();

    // Reference validation (xmldsig-core §3.2.1).
    if algorithms_ok {
        let canonical = xml::c14n_document(root, Some(parts.signature));
        let digest = Sha384::digest(&canonical);
        if parts.digest_value.len() != 48 {
            findings.add(
                ReasonKind::Signature,
                format!(
                    "RIM signature: DigestValue is {} bytes, a SHA-384 digest is 48",
                    parts.digest_value.len()
                ),
            );
        } else if digest.as_slice() != parts.digest_value.as_slice() {
            findings.add(
                ReasonKind::Signature,
                "RIM signature: the digest of the signed content does not match DigestValue (the RIM was altered after signing)",
            );
        }
    }

    // Certificates.
    let mut certs = Vec::new();
    let mut certs_ok = true;
    for (i, der) in parts.certificates.iter().enumerate() {
        match Cert::from_der_ecdsa(der) {
            Ok(c) => certs.push(c),
            Err(e) => {
                certs_ok = false;
                findings.add(
                    ReasonKind::Certificate,
                    format!("RIM signature: embedded certificate {i}: {e}"),
                );
            }
        }
    }

    // Signature validation (xmldsig-core §3.2.2).
    if algorithms_ok {
        match certs.first().filter(|_| certs_ok) {
            None => findings.add(
                ReasonKind::Signature,
                "RIM signature not checked: the signer certificate is unusable",
            ),
            Some(signer) => {
                let signed = xml::c14n_subtree(&[root, parts.signature], parts.signed_info);
                let sig = <&[u8; 96]>::try_from(parts.signature_value.as_slice()).ok();
                match (&signer.key, sig) {
                    (_, None) => findings.add(
                        ReasonKind::Signature,
                        format!(
                            "RIM signature: SignatureValue is {} bytes, an ECDSA P-384 r||s is 96",
                            parts.signature_value.len()
                        ),
                    ),
                    (SubjectKey::P384(key), Some(sig)) => {
                        if !key.verify_fixed(&signed, sig) {
                            findings.add(
                                ReasonKind::Signature,
                                format!(
                                    "RIM signature does not verify with the key of {}",
                                    signer.subject_cn
                                ),
                            );
                        }
                    }
                    (SubjectKey::Rsa(_) | SubjectKey::P256(_), Some(_)) => findings.add(
                        ReasonKind::Certificate,
                        format!(
                            "RIM signer {} does not have the P-384 key ECDSA-SHA384 needs",
                            signer.subject_cn
                        ),
                    ),
                }
                match signer.key_usage_allows(0) {
                    Ok(Some(false)) => findings.add(
                        ReasonKind::Certificate,
                        format!(
                            "RIM signer {}'s key usage does not allow digitalSignature",
                            signer.subject_cn
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => findings.add(
                        ReasonKind::Certificate,
                        format!("RIM signer {}: {e}", signer.subject_cn),
                    ),
                }
            }
        }
    }
    if certs_ok {
        for (kind, msg) in check_chain("RIM signing chain", &certs, &RIM_ROOT, now) {
            findings.add(kind, msg);
        }
    }

    let info = content(root, &mut findings);
    match info {
        Some(info) if findings.is_empty() => Ok((
            VerifiedRim {
                info,
                chain: parts.certificates,
            },
            path_windows(&certs, &RIM_ROOT),
        )),
        _ => Err(findings.into_rejection()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = r#"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2006/12/xml-c14n11"/><ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"/><ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2006/12/xml-c14n11"/></ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#sha384"/><ds:DigestValue>AAAA</ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue>AAAA</ds:SignatureValue><ds:KeyInfo><ds:X509Data><ds:X509Certificate>AAAA</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>"#;

    fn tag(payload: &str, sig: &str) -> String {
        format!(
            r#"<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" name="GH100" tagId="t"><Meta product="GH100" colloquialVersion="1" edition="GPU"/><Payload>{payload}</Payload>{sig}</SoftwareIdentity>"#
        )
    }

    fn h(b: u8) -> String {
        hex::encode([b; 48])
    }

    #[test]
    fn measurements_parse_with_alternatives() {
        let p = format!(
            r#"<Resource type="Measurement" index="7" active="True" alternatives="2" ns2:Hash0="{}" ns2:Hash1="{}"/><Resource type="Measurement" index="8" active="False" alternatives="1" ns2:Hash0="{}"/>"#,
            h(1),
            h(2),
            h(3)
        );
        let info = parse_rim_unverified(tag(&p, SIG).as_bytes()).unwrap();
        assert_eq!(info.measurements.len(), 2);
        assert_eq!(info.measurements[0].index, 7);
        assert!(info.measurements[0].active);
        assert_eq!(info.measurements[0].alternatives, vec![[1; 48], [2; 48]]);
        assert!(!info.measurements[1].active);
        assert_eq!(info.product, "GH100");
    }

    #[test]
    fn bad_measurements_are_malformed() {
        let cases = [
            (
                format!(r#"<Resource type="Measurement" index="1" active="True" alternatives="2" ns2:Hash0="{}"/>"#, h(1)),
                "Hash1 is missing",
            ),
            (
                format!(r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="{}" ns2:Hash1="{}"/>"#, h(1), h(2)),
                "not one of",
            ),
            (
                format!(r#"<Resource type="Measurement" index="x" active="True" alternatives="1" ns2:Hash0="{}"/>"#, h(1)),
                "not a decimal",
            ),
            (
                format!(r#"<Resource type="Measurement" index="1" active="yes" alternatives="1" ns2:Hash0="{}"/>"#, h(1)),
                "boolean",
            ),
            (
                r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="00"/>"#.to_owned(),
                "48 bytes",
            ),
            (
                format!(r#"<Resource type="Measurement" index="1" active="True" alternatives="0" ns2:Hash0="{}"/>"#, h(1)),
                "positive",
            ),
            (
                format!(r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="{0}"/><Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="{0}"/>"#, h(1)),
                "more than once",
            ),
            (
                format!(r#"<Resource type="File" index="1" active="True" alternatives="1" ns2:Hash0="{}"/>"#, h(1)),
                "type",
            ),
            (String::new(), "no measurement"),
        ];
        for (payload, want) in cases {
            let r = parse_rim_unverified(tag(&payload, SIG).as_bytes()).unwrap_err();
            assert!(r.has(ReasonKind::Malformed), "{r}");
            assert!(r.to_string().contains(want), "{want}: {r}");
            // verify_rim reports the same shortfall beside the others.
            let r = verify_rim(tag(&payload, SIG).as_bytes(), UnixTime(0)).unwrap_err();
            assert!(r.to_string().contains(want), "{want}: {r}");
        }
    }

    #[test]
    fn signature_structure_is_strict() {
        let p = format!(
            r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="{}"/>"#,
            h(1)
        );
        let r = verify_rim(tag(&p, "").as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.to_string().contains("no ds:Signature"), "{r}");
        let two = format!("{SIG}{SIG}");
        let r = verify_rim(tag(&p, &two).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.to_string().contains("2 ds:Signature"), "{r}");
        let nested = tag(&format!("{p}{SIG}"), "");
        let r = verify_rim(nested.as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.to_string().contains("child of SoftwareIdentity"), "{r}");
        let two_refs = SIG.replace("</ds:Reference>", "</ds:Reference><ds:Reference URI=\"\"/>");
        let r = verify_rim(tag(&p, &two_refs).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.to_string().contains("2 ds:Reference"), "{r}");
        let other_uri = SIG.replace("URI=\"\"", "URI=\"#x\"");
        let r = verify_rim(tag(&p, &other_uri).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.has(ReasonKind::Malformed), "{r}");
        let object = SIG.replace("</ds:KeyInfo>", "</ds:KeyInfo><ds:Object/>");
        let r = verify_rim(tag(&p, &object).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.has(ReasonKind::Malformed), "{r}");
    }

    #[test]
    fn other_algorithms_are_unknown_values_naming_the_uri() {
        let p = format!(
            r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="{}"/>"#,
            h(1)
        );
        for (from, to) in [
            (C14N11, "http://www.w3.org/2001/10/xml-exc-c14n#"),
            (
                ECDSA_SHA384,
                "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            ),
            (SHA384, "http://www.w3.org/2001/04/xmlenc#sha256"),
            (ENVELOPED, "http://www.w3.org/TR/1999/REC-xpath-19991116"),
        ] {
            let sig = SIG.replacen(from, to, 1);
            let r = verify_rim(tag(&p, &sig).as_bytes(), UnixTime(0)).unwrap_err();
            assert!(r.has(ReasonKind::UnknownValue), "{to}: {r}");
            assert!(r.to_string().contains(to), "{to}: {r}");
        }
        // The two transforms swapped.
        let swapped = SIG
            .replacen(ENVELOPED, "SWAP", 1)
            .replacen(
                &format!("Transform Algorithm=\"{C14N11}\""),
                &format!("Transform Algorithm=\"{ENVELOPED}\""),
                1,
            )
            .replacen("SWAP", C14N11, 1);
        let r = verify_rim(tag(&p, &swapped).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.has(ReasonKind::UnknownValue), "{r}");
    }

    #[test]
    fn many_bad_resources_are_summarized_and_fast() {
        let one = r#"<Resource type="Measurement" index="1" active="True" alternatives="1" ns2:Hash0="00"/>"#;
        let payload = one.repeat(40_000);
        let r = verify_rim(tag(&payload, SIG).as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.reasons().len() < 32, "{}", r.reasons().len());
        assert!(r.to_string().contains("more problems"), "{r}");
        let good = |i: u32| {
            format!(
                r#"<Resource type="Measurement" index="{i}" active="True" alternatives="1" ns2:Hash0="{}"/>"#,
                h(1)
            )
        };
        let payload: String = (0..20_000).map(good).collect::<String>() + &good(7);
        let r = parse_rim_unverified(tag(&payload, SIG).as_bytes()).unwrap_err();
        assert!(
            r.to_string().contains("index 7 appears more than once"),
            "{r}"
        );
    }

    #[test]
    fn doctype_is_malformed() {
        let doc = format!("<!DOCTYPE x>{}", tag("", SIG));
        let r = verify_rim(doc.as_bytes(), UnixTime(0)).unwrap_err();
        assert!(r.has(ReasonKind::Malformed), "{r}");
        assert!(r.to_string().contains("DOCTYPE"), "{r}");
        let r = verify_rim(b"<a/>", UnixTime(0)).unwrap_err();
        assert!(r.to_string().contains("SoftwareIdentity"), "{r}");
    }
}
