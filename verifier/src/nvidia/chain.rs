//! ECDSA P-384 certificate chains to a pinned NVIDIA root.
//!
//! Owns the two NVIDIA trust anchors this crate bundles (the device identity
//! root for GPU and NVSwitch attestation keys, the CoRIM signing root for
//! reference integrity manifests), each pinned by the SHA-256 of its DER, and
//! the path check both hierarchies share: every link signed with
//! ecdsa-with-SHA384 by the next certificate, names chained byte for byte,
//! issuers marked as CAs (RFC 5280 §4.2.1.9) allowed to sign certificates
//! (§4.2.1.3) within their path-length limits, and every certificate valid
//! at the caller's time.

use crate::crypto::sha256;
use crate::roots::PinnedCert;
use crate::x509::Cert;
use crate::{ReasonKind, UnixTime};

/// "NVIDIA Device Identity CA": the top of every GPU (GH100) and NVSwitch
/// (LS10) attestation key chain. Public, as published in NVIDIA's nvtrust
/// local verifier.
pub(crate) const DEVICE_ROOT: PinnedCert = PinnedCert::new(
    "NVIDIA Device Identity CA",
    include_bytes!("../../roots/nvidia/device_identity_ca.der"),
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
);

/// "NVIDIA CoRIM signing Root CA": the top of the chains embedded in driver
/// and VBIOS reference integrity manifests.
pub(crate) const RIM_ROOT: PinnedCert = PinnedCert::new(
    "NVIDIA CoRIM signing Root CA",
    include_bytes!("../../roots/nvidia/corim_signing_root_ca.der"),
    "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
);

/// One shortfall of a chain.
pub(crate) type ChainProblem = (ReasonKind, String);

/// Longest chain accepted (NVIDIA's device chains have five certificates,
/// RIM chains four).
pub(crate) const MAX_CHAIN: usize = 8;

/// Certificate links whose signature already verified during one call that
/// checks many chains (an HGX board's devices share their upper links), by
/// SHA-256 of the child's and the issuer's DER. Only the signature check is
/// skipped for a remembered link; names, CA flags, key usage, path lengths
/// and validity are checked every time.
#[derive(Default)]
pub(crate) struct LinkMemo(std::collections::HashSet<([u8; 32], [u8; 32])>);

/// Check `chain` (leaf first; the root itself may or may not be included at
/// the end) up to `root` at time `now`. `what` names the chain in messages.
/// Returns every problem found; an empty list means the chain is good.
pub(crate) fn check_chain(
    what: &str,
    chain: &[Cert],
    root: &PinnedCert,
    now: UnixTime,
) -> Vec<ChainProblem> {
    check_chain_memo(what, chain, root, now, &mut LinkMemo::default())
}

/// [`check_chain`] with links already verified in `memo` not verified again.
pub(crate) fn check_chain_memo(
    what: &str,
    chain: &[Cert],
    root: &PinnedCert,
    now: UnixTime,
    memo: &mut LinkMemo,
) -> Vec<ChainProblem> {
    let mut problems = Vec::new();
    let root_cert = match pinned_root(root) {
        Ok(c) => c,
        Err(e) => return vec![(ReasonKind::Chain, e)],
    };
    if chain.is_empty() {
        return vec![(ReasonKind::Chain, format!("{what}: no certificates"))];
    }
    if chain.len() > MAX_CHAIN {
        return vec![(
            ReasonKind::Chain,
            format!(
                "{what}: {} certificates, more than the {MAX_CHAIN} accepted",
                chain.len()
            ),
        )];
    }
    // The supplied chain may end with the root; it must then be the pinned
    // root byte for byte (a different self-signed certificate with the same
    // name is not our root).
    let mut path: Vec<&Cert> = chain.iter().collect();
    if let Some(last) = path.last() {
        if last.subject == last.issuer && last.subject == root_cert.subject {
            if last.der != root_cert.der {
                problems.push((
                    ReasonKind::Chain,
                    format!(
                        "{what}: ends with a certificate named {} that is not the pinned {}",
                        last.subject_cn, root.name
                    ),
                ));
                return problems;
            }
            path.pop();
        }
    }
    if path.is_empty() {
        return vec![(
            ReasonKind::Chain,
            format!("{what}: holds only the root, no leaf"),
        )];
    }
    path.push(root_cert);
    for (i, pair) in path.windows(2).enumerate() {
        let (child, issuer) = (pair[0], pair[1]);
        if child.issuer != issuer.subject {
            problems.push((
                ReasonKind::Chain,
                format!(
                    "{what}: certificate {i} ({}) is not issued by the next one ({})",
                    child.subject_cn, issuer.subject_cn
                ),
            ));
        } else if !signed_by_memo(child, issuer, memo) {
            problems.push((
                ReasonKind::Chain,
                format!(
                    "{what}: the signature on certificate {i} ({}) does not verify with {}'s key",
                    child.subject_cn, issuer.subject_cn
                ),
            ));
        }
        // Certificates between `issuer` and the leaf that are not
        // self-issued count against pathLenConstraint (§4.2.1.9).
        let below = i;
        match issuer.basic_constraints() {
            Ok(Some((true, limit))) => {
                if let Some(limit) = limit {
                    if below > usize::from(limit) {
                        problems.push((
                            ReasonKind::Chain,
                            format!(
                                "{what}: {} allows {limit} intermediate certificates below it, the chain has {below}",
                                issuer.subject_cn
                            ),
                        ));
                    }
                }
            }
            Ok(_) => problems.push((
                ReasonKind::Chain,
                format!(
                    "{what}: {} issues a certificate but is not marked as a CA",
                    issuer.subject_cn
                ),
            )),
            Err(e) => problems.push((ReasonKind::Certificate, format!("{what}: {e}"))),
        }
        match issuer.key_usage_allows(5) {
            Ok(Some(false)) => problems.push((
                ReasonKind::Chain,
                format!(
                    "{what}: {}'s key usage does not allow signing certificates",
                    issuer.subject_cn
                ),
            )),
            Ok(_) => {}
            Err(e) => problems.push((ReasonKind::Certificate, format!("{what}: {e}"))),
        }
    }
    problems.extend(check_windows(what, &windows_of(&path), now));
    problems
}

/// One certificate's validity window: (common name, notBefore, notAfter).
pub(crate) type Window = (String, UnixTime, UnixTime);

/// The validity windows of the path [`check_chain`] checks for `chain`
/// (the supplied certificates without a trailing copy of the root, then
/// the pinned root): what a cached chain must still satisfy at every later
/// call.
pub(crate) fn path_windows(chain: &[Cert], root: &PinnedCert) -> Vec<Window> {
    let mut path: Vec<&Cert> = chain.iter().collect();
    if let Ok(root_cert) = pinned_root(root) {
        if path.last().is_some_and(|last| last.der == root_cert.der) {
            path.pop();
        }
        path.push(root_cert);
    }
    windows_of(&path)
}

fn windows_of(path: &[&Cert]) -> Vec<Window> {
    path.iter()
        .map(|c| (c.subject_cn.clone(), c.not_before, c.not_after))
        .collect()
}

/// The certificates of `windows` not valid at `now`, in the words
/// [`check_chain`] uses.
pub(crate) fn check_windows(what: &str, windows: &[Window], now: UnixTime) -> Vec<ChainProblem> {
    windows
        .iter()
        .filter(|(_, nb, na)| now < *nb || now > *na)
        .map(|(cn, nb, na)| {
            (
                ReasonKind::Expired,
                format!(
                    "{what}: {cn} is valid from {} to {} (unix), not at {}",
                    nb.0, na.0, now.0
                ),
            )
        })
        .collect()
}

/// A pinned NVIDIA root, parsed once per process after its pin check.
pub(crate) fn pinned_root(root: &PinnedCert) -> Result<&'static Cert, String> {
    use std::sync::OnceLock;
    static DEVICE: OnceLock<Result<Cert, String>> = OnceLock::new();
    static RIM: OnceLock<Result<Cert, String>> = OnceLock::new();
    let cell = if root.sha256 == DEVICE_ROOT.sha256 {
        &DEVICE
    } else if root.sha256 == RIM_ROOT.sha256 {
        &RIM
    } else {
        return Err(format!("{} is not a bundled NVIDIA root", root.name));
    };
    cell.get_or_init(|| root.cert(Cert::from_der_ecdsa))
        .as_ref()
        .map_err(Clone::clone)
}

fn signed_by_memo(child: &Cert, issuer: &Cert, memo: &mut LinkMemo) -> bool {
    let link = (sha256(&child.der), sha256(&issuer.der));
    if memo.0.contains(&link) {
        return true;
    }
    let ok = child.signed_by(issuer);
    if ok {
        memo.0.insert(link);
    }
    ok
}

/// Parse a PEM bundle (or one DER certificate) of ECDSA P-384 certificates.
pub(crate) fn parse_chain(what: &str, bytes: &[u8]) -> Result<Vec<Cert>, ChainProblem> {
    Cert::parse_many_as(bytes, crate::x509::SigAlg::EcdsaSha384)
        .map_err(|e| (ReasonKind::Certificate, format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_roots_match_their_pins_and_are_self_signed() {
        for root in [DEVICE_ROOT, RIM_ROOT] {
            let c = root.cert(Cert::from_der_ecdsa).unwrap();
            assert_eq!(c.subject, c.issuer, "{}", root.name);
            assert!(c.signed_by(&c), "{}", root.name);
            assert_eq!(c.subject_cn, root.name);
        }
    }
}
