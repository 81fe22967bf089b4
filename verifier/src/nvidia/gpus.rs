//! A whole GPU evidence set under a [`GpuPolicy`]: every device verified
//! (see [`super::device`]), its measurements compared with the driver and
//! VBIOS RIMs that match its versions, revocation judged from OCSP
//! responses, then counts, models, versions and CC mode.
//!
//! Which RIM applies to which device: a GPU needs the driver RIM whose
//! `colloquialVersion` is the driver version in its report and the VBIOS
//! RIM whose `colloquialVersion` is its VBIOS version (case-insensitive);
//! an NVSwitch needs only its VBIOS RIM. The RIM's product must be the
//! device's chip (`GH100`, `LS10`). The golden values are the union of the
//! active measurements of both RIMs; an index active in both is a conflict
//! and a rejection. RIM index `i` is SPDM measurement block `i + 1`.
//!
//! Revocation: NVIDIA's OCSP responder answers for the device chain's
//! certificates above the leaf (the leaf is made by the device's firmware
//! at boot and is not known to the responder) and for every certificate of
//! a RIM signing chain below the root. With revocation required, each of
//! those needs a verified OCSP response with status good (or
//! `certificateHold` where the policy allows it).

use cocoon_attestation::nvidia::{GpuCollateral, SpdmReport};

use std::sync::Arc;

use super::chain::LinkMemo;
use super::device::{
    compare_measurements, verify_device_with, DeviceExpectations, DeviceKind, Golden,
    VerifiedDevice,
};
use super::ocsp::{check_response, CertStatus, RevocationReason};
use super::rim::VerifiedRim;
use super::GpuVerifier;
use crate::policy::{Check, GpuPolicy, RevocationRule};
use crate::x509::Cert;
use crate::{Findings, ReasonKind, Rejection, UnixTime};

/// One device's evidence, as carried.
pub struct DeviceInput<'a> {
    /// SPDM request || response.
    pub report: &'a [u8],
    /// Attestation key chain (PEM, leaf first).
    pub cert_chain: &'a [u8],
}

/// What the enclave read from the driver when it took the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcState {
    /// Confidential-computing mode on.
    pub cc_enabled: bool,
    /// Developer-tools mode on.
    pub devtools: bool,
}

/// A GPU evidence set that met the policy. Only this crate builds it.
#[derive(Debug, Clone)]
pub struct VerifiedGpus {
    devices: Vec<VerifiedDevice>,
    rims: Vec<(String, String)>,
    revocation_checked: usize,
    cc: Option<CcState>,
}

impl VerifiedGpus {
    /// Every device, in evidence order.
    pub fn devices(&self) -> &[VerifiedDevice] {
        &self.devices
    }
    /// The RIMs the measurements were compared with, as (product, version).
    pub fn rims_used(&self) -> &[(String, String)] {
        &self.rims
    }
    /// How many certificates had their revocation status checked.
    pub fn revocation_checked(&self) -> usize {
        self.revocation_checked
    }
    /// The CC state the evidence came with, if any.
    pub fn cc_state(&self) -> Option<CcState> {
        self.cc
    }
}

fn normalize_model(m: &str) -> String {
    m.chars()
        .filter(|c| *c != '_' && *c != ' ')
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Verify a GPU evidence set. `nonce` is the nonce every report must
/// answer (`None` only for recorded evidence checked by hand; a session
/// always passes one); `cc` is what the enclave read from the driver, when
/// known.
pub fn verify_gpus(
    devices: &[DeviceInput<'_>],
    collateral: &GpuCollateral,
    policy: &GpuPolicy,
    nonce: Option<&[u8; 32]>,
    cc: Option<CcState>,
    now: UnixTime,
) -> Result<VerifiedGpus, Rejection> {
    GpuVerifier::new().verify_gpus(devices, collateral, policy, nonce, cc, now)
}

impl GpuVerifier {
    /// Verify a GPU evidence set, as [`verify_gpus`] does, reusing the
    /// device chains and RIMs this verifier has already verified (their
    /// validity windows are checked at `now` on every call).
    pub fn verify_gpus(
        &self,
        devices: &[DeviceInput<'_>],
        collateral: &GpuCollateral,
        policy: &GpuPolicy,
        nonce: Option<&[u8; 32]>,
        cc: Option<CcState>,
        now: UnixTime,
    ) -> Result<VerifiedGpus, Rejection> {
        verify_set(self, devices, collateral, policy, nonce, cc, now)
    }
}

fn verify_set(
    verifier: &GpuVerifier,
    devices: &[DeviceInput<'_>],
    collateral: &GpuCollateral,
    policy: &GpuPolicy,
    nonce: Option<&[u8; 32]>,
    cc: Option<CcState>,
    now: UnixTime,
) -> Result<VerifiedGpus, Rejection> {
    let mut f = Findings::default();
    if devices.is_empty() && policy.gpus != Check::Require(0) {
        f.add(
            ReasonKind::Policy,
            "no GPU evidence, and the policy does not say gpus = 0",
        );
    }
    // RIMs: verified once each; unusable ones are rejections only when a
    // device needs them.
    let rims: Vec<Result<Arc<VerifiedRim>, Rejection>> = if policy.rims == Check::Require(()) {
        collateral
            .rims
            .iter()
            .map(|x| verifier.verify_rim(x, now))
            .collect()
    } else {
        Vec::new()
    };
    let mut verified = Vec::with_capacity(devices.len());
    let mut used: Vec<(String, String)> = Vec::new();
    let mut revocation_checked = 0;
    let mut memo = LinkMemo::default();
    for (i, d) in devices.iter().enumerate() {
        let expect = DeviceExpectations {
            nonce,
            golden: None,
        };
        let checked = verifier.device_chain(d.cert_chain, now, &mut memo);
        let (mut v, report) = match verify_device_with(d.report, checked, &expect) {
            Ok(v) => v,
            Err(r) => {
                for reason in r.reasons() {
                    f.add(reason.kind, format!("device {i}: {}", reason.message));
                }
                continue;
            }
        };
        if policy.rims == Check::Require(()) {
            compare_with_rims(i, &mut v, &report, &rims, &mut used, &mut f);
        }
        if let Check::Require(rule) = &policy.revocation {
            revocation_checked += check_revocation(
                &format!("device {i} ({})", v.device_id()),
                v.chain_der(),
                1,
                &collateral.ocsp,
                rule,
                now,
                &mut f,
            );
        }
        verified.push(v);
    }
    if let Check::Require(rule) = &policy.revocation {
        for r in rims.iter().flatten() {
            if used
                .iter()
                .any(|(p, v)| p == r.product() && v == r.version())
            {
                revocation_checked += check_revocation(
                    &format!("RIM {} {}", r.product(), r.version()),
                    r.signer_chain_der(),
                    0,
                    &collateral.ocsp,
                    rule,
                    now,
                    &mut f,
                );
            }
        }
    }
    let gpus: Vec<&VerifiedDevice> = verified
        .iter()
        .filter(|d| d.kind() == DeviceKind::Gpu)
        .collect();
    let switches = verified.len() - gpus.len();
    if f.is_empty() {
        if let Check::Require(n) = policy.gpus {
            if gpus.len() != n as usize {
                f.add(
                    ReasonKind::Policy,
                    format!("{} GPUs attested, the policy requires {n}", gpus.len()),
                );
            }
        }
        if let Check::Require(n) = policy.switches {
            if switches != n as usize {
                f.add(
                    ReasonKind::Policy,
                    format!("{switches} NVSwitches attested, the policy requires {n}"),
                );
            }
        }
    }
    if let Check::Require(models) = &policy.models {
        let allowed: Vec<String> = models.iter().map(|m| normalize_model(m)).collect();
        for (i, g) in gpus.iter().enumerate() {
            if !allowed.contains(&normalize_model(g.model())) {
                f.add(
                    ReasonKind::Policy,
                    format!(
                        "GPU {i} is a {}, the policy allows {}",
                        g.model(),
                        models.join(", ")
                    ),
                );
            }
        }
    }
    if let Check::Require(min) = &policy.min_driver {
        for (i, g) in gpus.iter().enumerate() {
            let have = g.driver_version().unwrap_or_default();
            match crate::policy::DottedVersion::driver(have) {
                Ok(v) if v.at_least(min) => {}
                Ok(_) => f.add(
                    ReasonKind::Policy,
                    format!(
                        "GPU {i} runs driver {have}, the policy requires at least {}",
                        min.as_str()
                    ),
                ),
                Err(e) => f.add(
                    ReasonKind::UnknownValue,
                    format!("GPU {i} driver version: {e}"),
                ),
            }
        }
    }
    if let Check::Require(min) = &policy.min_vbios {
        for (i, g) in gpus.iter().enumerate() {
            let have = g.vbios_version().unwrap_or_default();
            match crate::policy::DottedVersion::vbios(have) {
                Ok(v) if v.at_least(min) => {}
                Ok(_) => f.add(
                    ReasonKind::Policy,
                    format!(
                        "GPU {i} runs VBIOS {have}, the policy requires at least {}",
                        min.as_str()
                    ),
                ),
                Err(e) => f.add(
                    ReasonKind::UnknownValue,
                    format!("GPU {i} VBIOS version: {e}"),
                ),
            }
        }
    }
    if policy.cc_mode == Check::Require(()) {
        match cc {
            Some(CcState { cc_enabled: true, devtools: false }) => {}
            Some(CcState { cc_enabled: false, .. }) => {
                f.add(ReasonKind::Policy, "confidential-computing mode is off on the GPUs")
            }
            Some(CcState { devtools: true, .. }) => f.add(
                ReasonKind::Policy,
                "the GPUs run in developer-tools mode, which lifts CC protections",
            ),
            None => f.add(
                ReasonKind::Policy,
                "the evidence does not say whether CC mode is on (only an enclave's evidence set does); the policy requires it",
            ),
        }
    }
    if !f.is_empty() {
        return Err(f.into_rejection());
    }
    Ok(VerifiedGpus {
        devices: verified,
        rims: used,
        revocation_checked,
        cc,
    })
}

fn compare_with_rims(
    i: usize,
    v: &mut VerifiedDevice,
    report: &SpdmReport,
    rims: &[Result<Arc<VerifiedRim>, Rejection>],
    used: &mut Vec<(String, String)>,
    f: &mut Findings,
) {
    let model = normalize_model(v.model());
    let mut wanted: Vec<(&str, String)> = Vec::new();
    if let Some(d) = v.driver_version() {
        wanted.push(("driver", d.to_string()));
    }
    match v.vbios_version() {
        Some(b) => wanted.push(("VBIOS", b.to_string())),
        None => f.add(
            ReasonKind::Policy,
            format!("device {i}: reports no VBIOS version to pick a RIM by"),
        ),
    }
    // Per RIM kind: the candidates with the device's product and version;
    // the first whose every active measurement matches is used (NVIDIA has
    // signed more than one RIM for the same version), else the first
    // candidate's mismatches are reported.
    let mut chosen: Vec<(String, Vec<Golden>)> = Vec::new();
    for (what, version) in wanted {
        let candidates: Vec<&VerifiedRim> = rims
            .iter()
            .filter_map(|r| r.as_deref().ok())
            .filter(|r| {
                r.version().eq_ignore_ascii_case(&version) && normalize_model(r.product()) == model
            })
            .collect();
        if candidates.is_empty() {
            let mut msg = format!(
                "device {i}: no verified {what} RIM for {} {version} in the collateral",
                v.model()
            );
            let broken: Vec<String> = rims
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(|r| r.to_string().replace('\n', " "))
                .collect();
            if !broken.is_empty() {
                msg.push_str(&format!(
                    " (RIMs that did not verify: {})",
                    broken.join("; ")
                ));
            }
            f.add(ReasonKind::Collateral, msg);
            continue;
        }
        let source = format!("{what} RIM {version}");
        let mut first_failure: Option<Findings> = None;
        let mut picked = None;
        for rim in &candidates {
            let golden = Golden::from_rim(rim, &source);
            let mut sub = Findings::default();
            compare_measurements(report, &golden, &mut sub);
            if sub.is_empty() {
                picked = Some((rim, golden));
                break;
            }
            first_failure.get_or_insert(sub);
        }
        match picked {
            Some((rim, golden)) => {
                let key = (rim.product().to_string(), rim.version().to_string());
                if !used.contains(&key) {
                    used.push(key);
                }
                chosen.push((source, golden));
            }
            None => {
                for r in first_failure
                    .map(Findings::into_rejection)
                    .iter()
                    .flat_map(|r| r.reasons())
                {
                    f.add(r.kind, format!("device {i}: {}", r.message));
                }
                if candidates.len() > 1 {
                    f.add(
                        ReasonKind::Policy,
                        format!(
                            "device {i}: none of the {} {source}s in the collateral matches",
                            candidates.len()
                        ),
                    );
                }
            }
        }
    }
    // A measurement index is owned by one RIM: active in both is a conflict.
    if let [(a, ga), (b, gb)] = chosen.as_slice() {
        for g in ga {
            if gb.iter().any(|h| h.index == g.index) {
                f.add(
                    ReasonKind::Collateral,
                    format!(
                        "device {i}: measurement {} is active in both the {a} and the {b}",
                        g.index
                    ),
                );
            }
        }
    }
    let compared: usize = chosen.iter().map(|(_, g)| g.len()).sum();
    v.set_measurements_compared(compared);
}

/// Check the revocation of `chain[skip..]` (leaf first, root excluded; the
/// last certificate's issuer is looked up among the pinned roots by the
/// chain check already done, so it is the last one checked here against
/// its issuer). Returns how many certificates were checked.
fn check_revocation(
    what: &str,
    chain: &[Vec<u8>],
    skip: usize,
    responses: &[Vec<u8>],
    rule: &RevocationRule,
    now: UnixTime,
    f: &mut Findings,
) -> usize {
    let certs: Vec<Cert> = chain
        .iter()
        .filter_map(|d| Cert::from_der_ecdsa(d).ok())
        .collect();
    let roots = [
        super::chain::pinned_root(&super::chain::DEVICE_ROOT),
        super::chain::pinned_root(&super::chain::RIM_ROOT),
    ];
    let mut checked = 0;
    for (n, cert) in certs.iter().enumerate().skip(skip) {
        let issuer = match certs.get(n + 1) {
            Some(i) => i,
            None => match roots
                .iter()
                .flatten()
                .copied()
                .find(|r| r.subject == cert.issuer)
            {
                Some(r) => r,
                None => {
                    f.add(
                        ReasonKind::Chain,
                        format!(
                            "{what}: no issuer for {} to check its revocation with",
                            cert.subject_cn
                        ),
                    );
                    continue;
                }
            },
        };
        checked += 1;
        let mut last_err = None;
        let verdict = responses.iter().find_map(|r| {
            match check_response(cert, issuer, r, now, rule.max_age_secs) {
                Ok(v) => Some(v),
                Err(e) => {
                    last_err = Some(e);
                    None
                }
            }
        });
        match verdict {
            Some(v) => match v.status {
                CertStatus::Good => {}
                CertStatus::Revoked {
                    reason: Some(RevocationReason::CertificateHold),
                    ..
                } if rule.allow_certificate_hold => {}
                status => f.add(
                    ReasonKind::Revoked,
                    format!(
                        "{what}: {} is {status} according to {}",
                        cert.subject_cn, v.responder
                    ),
                ),
            },
            None => f.add(
                ReasonKind::Collateral,
                format!(
                    "{what}: no usable OCSP response for {}{}",
                    cert.subject_cn,
                    last_err
                        .map(|(_, m)| format!(" (last problem: {m})"))
                        .unwrap_or_default()
                ),
            ),
        }
    }
    checked
}
