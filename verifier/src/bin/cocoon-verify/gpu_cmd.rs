//! `cocoon-verify gpu`: NVIDIA GPU and NVSwitch evidence from files.
//!
//! Evidence formats read (detected from the content):
//! * hex text of one SPDM request || response (NVIDIA's sample
//!   `hopperAttestationReport.txt`), with `--cert-chain` (PEM);
//! * a JSON array of `{ "evidence": base64, "certificate": base64 PEM, ... }`
//!   items (NVIDIA's protected-PCIe verifier format; GPUs and NVSwitches);
//! * our CBOR evidence set (`GpuEvidence`, as an enclave takes it), which
//!   also says whether CC mode was on.

use std::path::{Path, PathBuf};

use base64::Engine;
use cocoon_attestation::nvidia::{GpuCollateral, GpuEvidence, SpdmReport};
use cocoon_verifier::nvidia::gpus::{verify_gpus, CcState, DeviceInput, VerifiedGpus};
use cocoon_verifier::nvidia::DeviceKind;
use cocoon_verifier::policy::{parse_hex, Check, GpuPolicy, RevocationRule};
use cocoon_verifier::{Rejection, UnixTime};
use serde_json::{json, Value};

use crate::{parse_time, print_json, read, read_policy, verdict_json, UsageError};

/// Arguments of `cocoon-verify gpu`.
pub struct GpuArgs<'a> {
    pub evidence: &'a Path,
    pub cert_chain: Option<&'a Path>,
    pub driver_rims: &'a [PathBuf],
    pub vbios_rims: &'a [PathBuf],
    pub ocsp: &'a [PathBuf],
    pub nonce: Option<&'a str>,
    pub policy: Option<&'a Path>,
    pub at: Option<&'a str>,
    pub json: bool,
}

struct Loaded {
    devices: Vec<(Vec<u8>, Vec<u8>)>,
    cc: Option<CcState>,
    format: &'static str,
}

fn load_evidence(bytes: &[u8], chain: Option<&[u8]>) -> Result<Loaded, UsageError> {
    let text = bytes.trim_ascii();
    if text.first() == Some(&b'[') {
        let items: Vec<Value> = serde_json::from_slice(text).map_err(|e| {
            UsageError(format!("evidence: not a JSON array of evidence items: {e}"))
        })?;
        let b64 = |item: &Value, k: &str, i: usize| -> Result<Vec<u8>, UsageError> {
            let s = item[k]
                .as_str()
                .ok_or_else(|| UsageError(format!("evidence item {i}: no \"{k}\" string")))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| UsageError(format!("evidence item {i}: \"{k}\" is not base64: {e}")))
        };
        let devices = items
            .iter()
            .enumerate()
            .map(|(i, item)| Ok((b64(item, "evidence", i)?, b64(item, "certificate", i)?)))
            .collect::<Result<Vec<_>, UsageError>>()?;
        if chain.is_some() {
            return Err(UsageError(
                "--cert-chain is not used with JSON evidence: each item carries its own certificate".into(),
            ));
        }
        return Ok(Loaded {
            devices,
            cc: None,
            format: "JSON evidence items",
        });
    }
    if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
        let report =
            hex::decode(text).map_err(|e| UsageError(format!("evidence: hex text: {e}")))?;
        let chain = chain.ok_or_else(|| {
            UsageError("hex-text evidence needs --cert-chain FILE (the device's PEM chain)".into())
        })?;
        return Ok(Loaded {
            devices: vec![(report, chain.to_vec())],
            cc: None,
            format: "hex text",
        });
    }
    match GpuEvidence::from_cbor(bytes) {
        Ok(set) => {
            if chain.is_some() {
                return Err(UsageError(
                    "--cert-chain is not used with an evidence set: each device carries its own chain".into(),
                ));
            }
            Ok(Loaded {
                devices: set
                    .devices
                    .into_iter()
                    .map(|d| (d.report, d.cert_chain))
                    .collect(),
                cc: Some(CcState {
                    cc_enabled: set.cc_enabled,
                    devtools: set.devtools,
                }),
                format: "CBOR evidence set",
            })
        }
        Err(e) => Err(UsageError(format!(
            "evidence is neither hex text, a JSON array of items, nor a CBOR evidence set ({e})"
        ))),
    }
}

fn device_json(d: &cocoon_verifier::nvidia::VerifiedDevice) -> Value {
    json!({
        "kind": match d.kind() { DeviceKind::Gpu => "gpu", DeviceKind::Switch => "nvswitch" },
        "model": d.model(),
        "device_id": d.device_id(),
        "driver_version": d.driver_version(),
        "vbios_version": d.vbios_version(),
        "nonce": hex::encode(d.nonce()),
        "fwid": d.fwid().map(hex::encode),
        "feature_mode": d.feature_mode().map(|m| format!("{m:?}")),
        "measurement_blocks": d.blocks(),
        "padding_bytes_ignored": d.padding_ignored(),
        "measurements_compared": d.measurements_compared(),
    })
}

/// Run the command; `Ok(true)` when accepted.
pub fn run_gpu(a: &GpuArgs<'_>) -> Result<bool, UsageError> {
    let now: UnixTime = parse_time(a.at)?;
    let chain = a
        .cert_chain
        .map(|p| read(p, "certificate chain"))
        .transpose()?;
    let loaded = load_evidence(&read(a.evidence, "evidence")?, chain.as_deref())?;
    let mut collateral = GpuCollateral::default();
    for p in a.driver_rims.iter().chain(a.vbios_rims) {
        collateral.rims.push(read(p, "RIM")?);
    }
    for p in a.ocsp {
        collateral.ocsp.push(read(p, "OCSP response")?);
    }
    let policy = match a.policy {
        Some(p) => read_policy(p)?
            .gpu
            .ok_or_else(|| UsageError(format!("policy {} has no [gpu] table", p.display())))?,
        None => GpuPolicy {
            rims: if collateral.rims.is_empty() {
                Check::Skip
            } else {
                Check::Require(())
            },
            revocation: if collateral.ocsp.is_empty() {
                Check::Skip
            } else {
                Check::Require(RevocationRule {
                    max_age_secs: 7 * 86_400,
                    allow_certificate_hold: false,
                })
            },
            ..GpuPolicy::integrity_only()
        },
    };
    let nonce = a
        .nonce
        .map(|n| parse_hex::<32>(n).map_err(|e| UsageError(format!("--nonce: {e}"))))
        .transpose()?;
    let inputs: Vec<DeviceInput<'_>> = loaded
        .devices
        .iter()
        .map(|(report, cert_chain)| DeviceInput { report, cert_chain })
        .collect();
    let result: Result<VerifiedGpus, Rejection> = verify_gpus(
        &inputs,
        &collateral,
        &policy,
        nonce.as_ref(),
        loaded.cc,
        now,
    );
    let mut not_checked = Vec::new();
    if nonce.is_none() {
        not_checked.push("nonce (no --nonce: the evidence may be genuine but old or replayed)");
    }
    if policy.rims == Check::Skip {
        not_checked.push(
            "measurements against RIMs (no --driver-rim/--vbios-rim, or skipped by the policy)",
        );
    }
    if policy.revocation == Check::Skip {
        not_checked.push("revocation (no --ocsp responses, or skipped by the policy)");
    }
    if policy.cc_mode == Check::Skip {
        not_checked.push("CC mode (only an enclave's evidence set carries it)");
    }
    // Zero padding after a signature is outside the signed transcript; say
    // how much was ignored, whatever the verdict.
    let padding: usize = loaded
        .devices
        .iter()
        .filter_map(|(report, _)| SpdmReport::parse(report).ok())
        .map(|r| r.padding_len())
        .sum();
    if a.json {
        let fields = match &result {
            Ok(v) => json!({
                "format": loaded.format,
                "padding_bytes_ignored": padding,
                "devices": v.devices().iter().map(device_json).collect::<Vec<_>>(),
                "rims_used": v.rims_used().iter().map(|(p, v)| format!("{p} {v}")).collect::<Vec<_>>(),
                "revocation_checked": v.revocation_checked(),
                "not_checked": not_checked,
            }),
            Err(_) => {
                json!({ "format": loaded.format, "devices_given": loaded.devices.len(), "padding_bytes_ignored": padding, "not_checked": not_checked })
            }
        };
        let reasons = result
            .as_ref()
            .err()
            .map(|r| r.reasons().iter().map(|r| r.message.clone()).collect())
            .unwrap_or_default();
        print_json(&verdict_json(result.is_ok(), reasons, fields, now));
        return Ok(result.is_ok());
    }
    match &result {
        Ok(v) => {
            println!(
                "ACCEPTED: {} device(s) from {}, each signed by a key chaining to NVIDIA's pinned Device Identity CA",
                v.devices().len(),
                loaded.format
            );
            for (i, d) in v.devices().iter().enumerate() {
                println!(
                    "  [{i}] {} {} id {} driver {} vbios {} ({} blocks, {} compared with RIMs)",
                    match d.kind() {
                        DeviceKind::Gpu => "GPU",
                        DeviceKind::Switch => "NVSwitch",
                    },
                    d.model(),
                    d.device_id(),
                    d.driver_version().unwrap_or("-"),
                    d.vbios_version().unwrap_or("-"),
                    d.blocks(),
                    d.measurements_compared()
                );
            }
            for (p, ver) in v.rims_used() {
                println!(
                    "  RIM {p} {ver}: signature and chain to NVIDIA's pinned CoRIM root verified"
                );
            }
            if v.revocation_checked() > 0 {
                println!(
                    "  revocation: {} certificates good per OCSP",
                    v.revocation_checked()
                );
            }
        }
        Err(r) => {
            println!("REJECTED: the GPU evidence does not meet the policy");
            for reason in r.reasons() {
                println!("  - {reason}");
            }
        }
    }
    if padding > 0 {
        println!("  ignored {padding} zero padding byte(s) after the SPDM signature(s) (outside the signed transcript)");
    }
    for n in &not_checked {
        println!("  NOT CHECKED: {n}");
    }
    Ok(result.is_ok())
}

/// The `[gpu]` table `policy init` writes for a bundle: `gpus = 0` for an
/// enclave without GPU evidence; otherwise pinned to what its devices
/// report (counts, models, at least these driver and VBIOS versions, CC
/// mode on, RIMs and revocation required). The evidence must verify (chain
/// and signature; its nonce is checked against the claims when the bundle
/// is verified) before a policy is pinned to it.
pub fn policy_from_bundle(
    b: &cocoon_attestation::bundle::EvidenceBundle,
) -> Result<GpuPolicy, UsageError> {
    use cocoon_verifier::nvidia::{verify_device, DeviceExpectations};
    use cocoon_verifier::policy::DottedVersion;
    let Some(g) = &b.gpu else {
        return Ok(GpuPolicy {
            gpus: Check::Require(0),
            ..GpuPolicy::integrity_only()
        });
    };
    let set = GpuEvidence::from_cbor(&g.evidence_cbor)
        .map_err(|e| UsageError(format!("the bundle's GPU evidence: {e}")))?;
    let now = parse_time(None)?;
    let expect = DeviceExpectations {
        nonce: None,
        golden: None,
    };
    let mut devices = Vec::new();
    for (i, d) in set.devices.iter().enumerate() {
        devices.push(
            verify_device(&d.report, &d.cert_chain, &expect, now).map_err(|r| {
                UsageError(format!(
                    "GPU device {i} does not verify, so no policy is pinned to it: {r}"
                ))
            })?,
        );
    }
    let gpus: Vec<_> = devices
        .iter()
        .filter(|d| d.kind() == DeviceKind::Gpu)
        .collect();
    let mut models: Vec<String> = gpus.iter().map(|d| d.model().to_string()).collect();
    models.sort();
    models.dedup();
    let lowest = |f: fn(&str) -> Result<DottedVersion, String>, versions: Vec<Option<&str>>| {
        versions
            .into_iter()
            .filter_map(|v| v.and_then(|v| f(v).ok()))
            .reduce(|a, b| if a.at_least(&b) { b } else { a })
            .map_or(Check::Skip, Check::Require)
    };
    let drivers = gpus.iter().map(|d| d.driver_version()).collect();
    let vbioses = gpus.iter().map(|d| d.vbios_version()).collect();
    Ok(GpuPolicy {
        gpus: Check::Require(gpus.len() as u32),
        switches: Check::Require((devices.len() - gpus.len()) as u32),
        models: if models.is_empty() {
            Check::Skip
        } else {
            Check::Require(models)
        },
        min_driver: lowest(DottedVersion::driver, drivers),
        min_vbios: lowest(DottedVersion::vbios, vbioses),
        cc_mode: Check::Require(()),
        rims: Check::Require(()),
        revocation: Check::Require(RevocationRule {
            max_age_secs: 7 * 86_400,
            allow_certificate_hold: false,
        }),
    })
}
