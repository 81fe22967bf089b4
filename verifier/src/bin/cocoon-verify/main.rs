//! `cocoon-verify`: check confidential-VM evidence from the command line.
//!
//! Exit status: 0 only when the evidence is accepted, 1 when it is rejected,
//! 64 (EX_USAGE) when the command line or an input file cannot be used.
//! This binary is the only part of the verifier that reads files or the
//! clock; the library takes bytes and time as arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cocoon_attestation::bundle::{EvidenceBundle, PlatformEvidence};
use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::simulated::SimulatedReport;
use cocoon_attestation::snp::{
    report_from_file, Explain, Product, SnpReport, TcbLayout, TcbVersion,
};
use cocoon_attestation::tdx::Quote;
use cocoon_verifier::enclave::VerifiedPlatform;
use cocoon_verifier::policy::{parse_hex, Check, MinTcb, SimulatedTeePolicy};
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::snp_crl::SnpRevocation;
use cocoon_verifier::tdx::{verify_tdx, TcbFinding};
use cocoon_verifier::{
    Policy, ReasonKind, Rejection, SnpPolicy, SnpVerifier, TdxPolicy, UnixTime, VerifiedSnp,
};
use serde_json::{json, Value};

mod gpu_cmd;

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "cocoon-verify",
    version,
    about = "Verify confidential-VM attestation evidence offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify an AMD SEV-SNP attestation report against AMD's pinned roots and a policy.
    Snp {
        /// The attestation report: the raw 1184 bytes, or hex text of them.
        #[arg(long)]
        report: PathBuf,
        /// The VCEK or VLEK certificate (DER or PEM), or a PEM bundle of it with its ASK/ASVK and ARK.
        #[arg(long)]
        cert: PathBuf,
        /// ASK/ASVK and ARK certificates (PEM); the bundled ones are used when absent.
        #[arg(long)]
        chain: Option<PathBuf>,
        /// AMD's CRL for the product (DER or PEM), as AMD's key distribution service serves it.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// An allowed launch measurement (96 hex digits); repeat for several.
        #[arg(long = "measurement", value_name = "HEX")]
        measurements: Vec<String>,
        /// A policy file (TOML) with an `[snp]` table.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Verify as of this time (RFC 3339, e.g. 2025-10-01T08:00:00Z); default: now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify an Intel TDX quote with its collateral against Intel's pinned root and a policy.
    Tdx {
        /// The raw DCAP quote (v4 or v5).
        #[arg(long)]
        quote: PathBuf,
        /// Collateral: our CBOR, or the JSON layout dcap-qvl writes.
        #[arg(long)]
        collateral: PathBuf,
        /// An allowed MRTD (96 hex digits); repeat for several.
        #[arg(long = "mrtd", value_name = "HEX")]
        mrtds: Vec<String>,
        /// A policy file (TOML) with a `[tdx]` table.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Verify as of this time (RFC 3339); default: now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify NVIDIA GPU / NVSwitch attestation evidence against NVIDIA's pinned roots.
    Gpu {
        /// Evidence: hex text of one report, a JSON array of evidence items, or a CBOR evidence set.
        #[arg(long)]
        evidence: PathBuf,
        /// The device certificate chain (PEM), for hex-text evidence.
        #[arg(long)]
        cert_chain: Option<PathBuf>,
        /// A driver reference integrity manifest (SWID XML); repeatable.
        #[arg(long = "driver-rim")]
        driver_rims: Vec<PathBuf>,
        /// A VBIOS reference integrity manifest (SWID XML); repeatable.
        #[arg(long = "vbios-rim")]
        vbios_rims: Vec<PathBuf>,
        /// An OCSP response (DER) for a device or RIM certificate; repeatable.
        #[arg(long = "ocsp")]
        ocsp: Vec<PathBuf>,
        /// The nonce the reports must answer (64 hex digits).
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
        /// A policy file (TOML) with a `[gpu]` table.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Verify as of this time (RFC 3339); default: now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify an evidence bundle (CBOR): platform evidence plus the claims bound into it.
    Bundle {
        /// The bundle file.
        file: PathBuf,
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Verify as of this time (RFC 3339); default: now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print a report's fields for a person, without verifying anything.
    Explain {
        /// The raw attestation report.
        file: PathBuf,
        /// Decode TCB values for this product (milan, genoa, turin); default: from the report's CPUID, else Milan/Genoa layout.
        #[arg(long)]
        product: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write a policy pinned to real evidence (a bundle, an SNP report or a TDX quote).
    Init {
        /// The evidence to pin to.
        #[arg(long)]
        from: PathBuf,
        /// The image release these reference values belong to.
        #[arg(long)]
        release: String,
        /// Where to write the policy; default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

struct UsageError(String);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path)
        .map_err(|e| UsageError(format!("cannot read {what} {}: {e}", path.display())))
}

/// Decode repeated 48-byte hex arguments.
fn hex48_args(values: &[String], flag: &str) -> Result<Vec<[u8; 48]>, UsageError> {
    values
        .iter()
        .map(|m| parse_hex::<48>(m).map_err(|e| UsageError(format!("{flag}: {e}"))))
        .collect()
}

fn parse_time(at: Option<&str>) -> Result<UnixTime, UsageError> {
    let t = match at {
        Some(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| UsageError(format!("--at {s:?} is not an RFC 3339 time: {e}")))?,
        None => std::time::SystemTime::now(),
    };
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| UsageError("time before 1970".into()))?
        .as_secs();
    Ok(UnixTime(secs))
}

fn tcb_json(tcb: TcbVersion, layout: TcbLayout) -> Value {
    let p = tcb.decode(layout);
    let mut v = json!({
        "raw": format!("{:#018x}", tcb.0),
        "bootloader": p.bootloader,
        "tee": p.tee,
        "snp": p.snp,
        "microcode": p.microcode,
    });
    if let Some(fmc) = p.fmc {
        v["fmc"] = json!(fmc);
    }
    v
}

fn fields_json(r: &SnpReport, layout: TcbLayout) -> Value {
    json!({
        "version": r.version(),
        "measurement": hex::encode(r.measurement()),
        "report_data": hex::encode(r.report_data()),
        "host_data": hex::encode(r.host_data()),
        "chip_id": hex::encode(r.chip_id()),
        "reported_tcb": tcb_json(r.reported_tcb(), layout),
        "policy": format!("{:#018x}", r.policy().0),
        "vmpl": r.vmpl(),
        "guest_svn": r.guest_svn(),
        "signing_key": r.key_info().signing_key().to_string(),
        "id_key_digest": hex::encode(r.id_key_digest()),
        "author_key_digest": hex::encode(r.author_key_digest()),
    })
}

fn guess_layout(r: &SnpReport) -> TcbLayout {
    r.product_from_cpuid()
        .map_or(TcbLayout::MilanGenoa, Product::tcb_layout)
}

/// Arguments of `cocoon-verify snp`.
#[derive(Clone, Copy)]
struct SnpArgs<'a> {
    report: &'a Path,
    cert: &'a Path,
    chain: Option<&'a Path>,
    crl: Option<&'a Path>,
    measurements: &'a [String],
    policy: Option<&'a Path>,
    at: Option<&'a str>,
    json_out: bool,
}

fn run_snp(a: &SnpArgs<'_>) -> Result<bool, UsageError> {
    let SnpArgs {
        report,
        cert,
        chain,
        crl,
        measurements,
        policy,
        at,
        json_out,
    } = *a;
    let policy = match (policy, measurements.is_empty()) {
        (Some(_), false) => {
            return Err(UsageError("give measurements either in the policy file or with --measurement, not both".into()))
        }
        (Some(p), true) => read_policy(p)?
            .snp
            .ok_or_else(|| UsageError(format!("policy {} has no [snp] table", p.display())))?,
        (None, false) => {
            let mut p =
                SnpPolicy::pinned_to_measurements(hex48_args(measurements, "--measurement")?);
            // Without a policy file, a CRL given is a CRL checked.
            if crl.is_some() {
                p.revocation = Check::Require(());
            }
            p
        }
        (None, true) => {
            return Err(UsageError(
                "no policy: pass --measurement HEX (repeatable) or --policy FILE; a report is never accepted for any measurement".into(),
            ))
        }
    };
    let now = parse_time(at)?;
    let report_bytes = report_from_file(&read(report, "report")?)
        .map_err(|e| UsageError(format!("report {}: {e}", report.display())))?;
    let vek = read(cert, "certificate")?;
    let chain_bytes = match chain {
        Some(c) => read(c, "certificate chain")?,
        None => Vec::new(),
    };
    let crl_bytes = crl.map(|c| read(c, "CRL")).transpose()?;
    let result = SnpVerifier::new().verify(
        &report_bytes,
        SnpCertificates {
            vek: &vek,
            chain: &chain_bytes,
            crl: crl_bytes.as_deref(),
        },
        &policy,
        now,
    );
    let parsed = SnpReport::parse(&report_bytes).ok();
    print_verdict(&result, parsed.as_ref(), now, json_out);
    Ok(result.is_ok())
}

fn print_verdict(
    result: &Result<VerifiedSnp, Rejection>,
    parsed: Option<&SnpReport>,
    now: UnixTime,
    json_out: bool,
) {
    let layout = match (result, parsed) {
        (Ok(v), _) => v.product().tcb_layout(),
        (Err(_), Some(r)) => guess_layout(r),
        (Err(_), None) => TcbLayout::MilanGenoa,
    };
    if json_out {
        let mut out = json!({
            "verdict": if result.is_ok() { "accepted" } else { "rejected" },
            "reasons": match result {
                Ok(_) => Vec::new(),
                Err(rej) => rej.reasons().iter().map(|r| r.message.clone()).collect(),
            },
            "fields": parsed.map(|r| fields_json(r, layout)),
            "verified_at": now.0,
        });
        if let Ok(v) = result {
            out["product"] = json!(v.product().name());
            out["signer"] = json!(v.signer().to_string());
            out["revocation"] = revocation_json(v.revocation());
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    match result {
        Ok(v) => {
            let r = v.report();
            println!(
                "ACCEPTED: SEV-SNP report v{} signed by a {} {} chaining to AMD's pinned ARK",
                r.version(),
                v.product(),
                v.signer()
            );
            println!("  measurement  {}", hex::encode(r.measurement()));
            println!("  report_data  {}", hex::encode(r.report_data()));
            println!("  reported_tcb {}", v.reported_tcb());
            println!("  policy       {:#018x}, vmpl {}", r.policy().0, r.vmpl());
            println!("{}", revocation_text(v.revocation()));
        }
        Err(rej) => {
            println!("REJECTED: the evidence does not meet the policy");
            for reason in rej.reasons() {
                println!("  - {reason}");
            }
        }
    }
}

/// The revocation outcome for `--json`: checked against AMD's CRL, or
/// NOT CHECKED (the policy skipped it).
fn revocation_json(r: &SnpRevocation) -> Value {
    match r {
        SnpRevocation::Checked {
            this_update,
            next_update,
            listed,
        } => json!({
            "checked": true,
            "crl_this_update": this_update.0,
            "crl_next_update": next_update.0,
            "crl_entries": listed,
        }),
        _ => json!({
            "checked": false,
            "note": "revocation NOT CHECKED: the policy says revocation = \"skip\" (pass AMD's CRL with --crl to check it)",
        }),
    }
}

fn revocation_text(r: &SnpRevocation) -> String {
    match r {
        SnpRevocation::Checked { listed, .. } => format!(
            "  revocation   checked: AMD's CRL ({listed} entries, signed by the ARK, current) lists neither the ASK/ASVK nor the VCEK/VLEK"
        ),
        _ => "  NOT CHECKED: revocation (the policy says revocation = \"skip\"; pass AMD's CRL with --crl to check it)".into(),
    }
}

fn td_fields(q: &Quote, finding: Option<&TcbFinding>) -> Value {
    let Some(td) = q.td_report() else {
        return json!({ "version": q.version(), "tee_type": q.tee_type().to_string() });
    };
    let [r0, r1, r2, r3] = td.rtmrs();
    json!({
        "version": q.version(),
        "mrtd": hex::encode(td.mrtd()),
        "rtmr0": hex::encode(r0),
        "rtmr1": hex::encode(r1),
        "rtmr2": hex::encode(r2),
        "rtmr3": hex::encode(r3),
        "mrconfigid": hex::encode(td.mrconfigid()),
        "mrowner": hex::encode(td.mrowner()),
        "mrownerconfig": hex::encode(td.mrownerconfig()),
        "report_data": hex::encode(td.report_data()),
        "td_attributes": hex::encode(td.td_attributes().0.to_le_bytes()),
        "xfam": hex::encode(td.xfam().to_le_bytes()),
        "tee_tcb_svn": hex::encode(td.tee_tcb_svn().components()),
        "tcb_status": finding.map(|f| f.status.to_string()),
        "advisory_ids": finding.map(|f| f.advisory_ids.clone()).unwrap_or_default(),
    })
}

fn read_policy(path: &Path) -> Result<Policy, UsageError> {
    let text = String::from_utf8(read(path, "policy")?)
        .map_err(|_| UsageError(format!("policy {} is not UTF-8 text", path.display())))?;
    Policy::from_toml(&text).map_err(|e| UsageError(format!("policy {}: {e}", path.display())))
}

fn verdict_json(accepted: bool, reasons: Vec<String>, fields: Value, now: UnixTime) -> Value {
    json!({
        "verdict": if accepted { "accepted" } else { "rejected" },
        "reasons": reasons,
        "fields": fields,
        "verified_at": now.0,
    })
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run_tdx(
    quote: &Path,
    collateral: &Path,
    mrtds: &[String],
    policy: Option<&Path>,
    at: Option<&str>,
    json_out: bool,
) -> Result<bool, UsageError> {
    let policy = match (policy, mrtds.is_empty()) {
        (Some(_), false) => {
            return Err(UsageError(
                "give MRTDs either in the policy file or with --mrtd, not both".into(),
            ))
        }
        (Some(p), true) => read_policy(p)?
            .tdx
            .ok_or_else(|| UsageError(format!("policy {} has no [tdx] table", p.display())))?,
        (None, false) => TdxPolicy::pinned_to_mrtd(hex48_args(mrtds, "--mrtd")?),
        (None, true) => {
            return Err(UsageError(
                "no policy: pass --mrtd HEX (repeatable) or --policy FILE".into(),
            ))
        }
    };
    let now = parse_time(at)?;
    let quote_bytes = read(quote, "quote")?;
    let coll_bytes = read(collateral, "collateral")?;
    let parsed = Quote::parse_prefix(&quote_bytes).ok().map(|(q, _)| q);
    let result = match TdxCollateral::from_bytes(&coll_bytes) {
        Ok(c) => verify_tdx(&quote_bytes, &c, &policy, now),
        Err(e) => Err((
            Rejection::single(ReasonKind::Collateral, e.to_string()),
            None,
        )),
    };
    let finding = match &result {
        Ok(v) => Some(TcbFinding {
            status: v.tcb_status(),
            advisory_ids: v.advisory_ids().to_vec(),
        }),
        Err((_, f)) => f.clone(),
    };
    let reasons: Vec<String> = match &result {
        Ok(_) => Vec::new(),
        Err((r, _)) => r.reasons().iter().map(|r| r.message.clone()).collect(),
    };
    if json_out {
        let fields = parsed
            .as_ref()
            .map_or(Value::Null, |q| td_fields(q, finding.as_ref()));
        print_json(&verdict_json(result.is_ok(), reasons, fields, now));
    } else {
        match &result {
            Ok(v) => {
                let td = v.td_report();
                println!(
                    "ACCEPTED: TDX quote v{} chaining to Intel's pinned SGX Root CA, TCB {}",
                    v.quote().version(),
                    v.tcb_status()
                );
                println!("  mrtd         {}", hex::encode(td.mrtd()));
                println!("  report_data  {}", hex::encode(td.report_data()));
                if !v.advisory_ids().is_empty() {
                    println!("  advisories   {}", v.advisory_ids().join(", "));
                }
            }
            Err(_) => {
                println!("REJECTED: the evidence does not meet the policy");
                if let Some(f) = &finding {
                    println!("  (TCB status computed from the collateral: {})", f.status);
                }
                for r in &reasons {
                    println!("  - {r}");
                }
            }
        }
    }
    Ok(result.is_ok())
}

fn run_bundle(
    file: &Path,
    policy: &Path,
    at: Option<&str>,
    json_out: bool,
) -> Result<bool, UsageError> {
    let policy = read_policy(policy)?;
    let now = parse_time(at)?;
    let bytes = read(file, "bundle")?;
    let result = cocoon_verifier::verify(&bytes, &policy, now);
    let fields = match &result {
        Ok(v) => {
            let c = v.claims();
            let mut f = match v.platform() {
                VerifiedPlatform::Snp(s) => {
                    let mut f = fields_json(s.report(), s.product().tcb_layout());
                    f["revocation"] = revocation_json(s.revocation());
                    f
                }
                VerifiedPlatform::Tdx(t) => td_fields(
                    t.quote(),
                    Some(&TcbFinding {
                        status: t.tcb_status(),
                        advisory_ids: t.advisory_ids().to_vec(),
                    }),
                ),
                VerifiedPlatform::Simulated(s) => json!({
                    "platform": "SIMULATED TEE - NOT CONFIDENTIAL",
                    "label": s.report().label,
                    "measurement": hex::encode(s.report().measurement),
                    "report_data": hex::encode(s.report().report_data),
                }),
                _ => Value::Null,
            };
            f["claims"] = json!({
                "image_id": c.image_id,
                "epoch": c.epoch,
                "hpke_public_key": hex::encode(&c.hpke_public_key),
                "receipt_public_key": hex::encode(&c.receipt_public_key),
                "models": c.model_digests.iter().map(|m| json!({
                    "name": m.name,
                    "version": m.version,
                    "sha256": hex::encode(m.sha256),
                    "tokenizer_sha256": m.tokenizer_sha256.map(hex::encode),
                    "disk_verity_root": c.disk_verity_root.map(hex::encode),
                })).collect::<Vec<_>>(),
                "config_digest": hex::encode(c.config_digest),
                "disk_verity_root": c.disk_verity_root.map(hex::encode),
                "provider_settings": c.provider_settings.as_ref().map(hex::encode),
                "gpu_evidence_digest": c.gpu_evidence_digest.map(hex::encode),
            });
            f["release"] = json!(v.release());
            f
        }
        Err(_) => Value::Null,
    };
    let reasons: Vec<String> = result
        .as_ref()
        .err()
        .map(|r| r.reasons().iter().map(|r| r.message.clone()).collect())
        .unwrap_or_default();
    if json_out {
        print_json(&verdict_json(result.is_ok(), reasons, fields, now));
    } else if let Ok(v) = &result {
        if let VerifiedPlatform::Simulated(_) = v.platform() {
            println!("WARNING: SIMULATED TEE - NOT CONFIDENTIAL. Accepted only because the policy opted in by name.");
        }
        println!(
            "ACCEPTED: enclave of release {} (epoch {}), claims bound to the hardware report",
            v.release(),
            v.claims().epoch
        );
        println!("  image_id     {}", v.claims().image_id);
        if let Some(root) = &v.claims().disk_verity_root {
            println!(
                "  disk verity  {} (root hash of the disk the code and models were read from)",
                hex::encode(root)
            );
        }
        for m in &v.claims().model_digests {
            let id = match &m.version {
                Some(ver) => format!("{}@{ver}", m.name),
                None => m.name.clone(),
            };
            println!("  model        {id} sha256 {}", hex::encode(m.sha256));
        }
        if v.claims().provider_settings.is_some() {
            println!(
                "  provider settings bound in the claims (prices and payment contract; see --json)"
            );
        }
        println!(
            "  hpke key     {}",
            hex::encode(&v.claims().hpke_public_key)
        );
        println!(
            "  receipt key  {}",
            hex::encode(&v.claims().receipt_public_key)
        );
        if let VerifiedPlatform::Snp(s) = v.platform() {
            println!("{}", revocation_text(s.revocation()));
        }
    } else {
        println!("REJECTED: the evidence does not meet the policy");
        for r in &reasons {
            println!("  - {r}");
        }
    }
    Ok(result.is_ok())
}

fn run_policy_init(from: &Path, release: &str, out: Option<&Path>) -> Result<(), UsageError> {
    let bytes = read(from, "evidence")?;
    let mut policy = Policy {
        release: release.to_string(),
        snp: None,
        tdx: None,
        simulated: None,
        gpu: None,
        max_evidence_age: Check::Require(cocoon_verifier::policy::DEFAULT_MAX_EVIDENCE_AGE_SECS),
    };
    let (report, quote) = match EvidenceBundle::from_cbor(&bytes) {
        Ok(b) => {
            policy.gpu = Some(gpu_cmd::policy_from_bundle(&b)?);
            match b.platform {
                PlatformEvidence::Snp { report, .. } => (Some(report), None),
                PlatformEvidence::Tdx { quote, .. } => (None, Some(quote)),
                PlatformEvidence::Simulated { report, .. } => {
                    let r = SimulatedReport::from_cbor(&report)
                        .map_err(|e| UsageError(format!("{}: {e}", from.display())))?;
                    eprintln!("cocoon-verify: WARNING: this is simulated evidence; the policy written accepts a TEE that is NOT confidential");
                    policy.simulated = Some(SimulatedTeePolicy {
                        measurements: Check::Require(vec![r.measurement]),
                    });
                    (None, None)
                }
                _ => {
                    return Err(UsageError(
                        "the bundle holds evidence of a kind this tool does not know".into(),
                    ))
                }
            }
        }
        Err(_) => match report_from_file(&bytes) {
            Ok(r) if r.len() == cocoon_attestation::snp::REPORT_SIZE => (Some(r), None),
            _ => (None, Some(bytes)),
        },
    };
    if let Some(r) = report {
        let r = SnpReport::parse(&r).map_err(|e| UsageError(format!("{}: {e}", from.display())))?;
        let tcb = r.reported_tcb().decode(guess_layout(&r));
        let mut p = SnpPolicy::pinned_to_measurements(vec![*r.measurement()]);
        // Milan and Genoa have no FMC: skipped by name there.
        let min: MinTcb = tcb.map_fmc(|fmc| fmc.map_or(Check::Skip, Check::Require));
        p.min_tcb = Check::Require(min);
        p.vmpl = Check::Require(r.vmpl());
        p.host_data = Check::Require(*r.host_data());
        p.revocation = Check::Require(());
        if r.id_key_digest().iter().any(|b| *b != 0) {
            p.id_key_digests = Check::Require(vec![*r.id_key_digest()]);
        }
        if r.key_info().author_key_en() {
            p.author_key_digests = Check::Require(vec![*r.author_key_digest()]);
        }
        policy.snp = Some(p);
    }
    if let Some(q) = quote {
        let (q, _) = Quote::parse_prefix(&q).map_err(|e| {
            UsageError(format!(
                "{} is neither a bundle, an SNP report nor a TDX quote: {e}",
                from.display()
            ))
        })?;
        let td = q
            .td_report()
            .ok_or_else(|| UsageError(format!("{} is an SGX quote, not TDX", from.display())))?;
        let mut p = TdxPolicy::pinned_to_mrtd(vec![*td.mrtd()]);
        let [r0, r1, r2, _] = td.rtmrs();
        // RTMR3 is extended at run time by the guest; it is not an image value.
        p.rtmr = [
            Check::Require(*r0),
            Check::Require(*r1),
            Check::Require(*r2),
            Check::Skip,
        ];
        p.mrconfigid = Check::Require(*td.mrconfigid());
        p.mrowner = Check::Require(*td.mrowner());
        p.mrownerconfig = Check::Require(*td.mrownerconfig());
        p.td_attributes = Check::Require(td.td_attributes().0.to_le_bytes());
        p.xfam = Check::Require(td.xfam().to_le_bytes());
        p.min_tee_tcb_svn = Check::Require(*td.tee_tcb_svn().components());
        p.max_collateral_age_secs = Check::Require(30 * 86_400);
        policy.tdx = Some(p);
    }
    let text = policy.to_toml();
    match out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?,
        None => print!("{text}"),
    }
    Ok(())
}

fn run_explain(file: &Path, product: Option<&str>) -> Result<(), UsageError> {
    let bytes = report_from_file(&read(file, "report")?)
        .map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
    let report =
        SnpReport::parse(&bytes).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
    let layout = match product.map(str::to_ascii_lowercase).as_deref() {
        Some("milan") | Some("genoa") => TcbLayout::MilanGenoa,
        Some("turin") => TcbLayout::Turin,
        Some(other) => {
            return Err(UsageError(format!(
                "--product {other:?}: expected milan, genoa or turin"
            )))
        }
        None => guess_layout(&report),
    };
    println!(
        "{}",
        Explain {
            report: &report,
            layout
        }
    );
    Ok(())
}

fn verdict_code(accepted: bool) -> ExitCode {
    if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let outcome = match &cli.command {
        Command::Snp {
            report,
            cert,
            chain,
            crl,
            measurements,
            policy,
            at,
            json,
        } => run_snp(&SnpArgs {
            report,
            cert,
            chain: chain.as_deref(),
            crl: crl.as_deref(),
            measurements,
            policy: policy.as_deref(),
            at: at.as_deref(),
            json_out: *json,
        })
        .map(verdict_code),
        Command::Tdx {
            quote,
            collateral,
            mrtds,
            policy,
            at,
            json,
        } => run_tdx(
            quote,
            collateral,
            mrtds,
            policy.as_deref(),
            at.as_deref(),
            *json,
        )
        .map(verdict_code),
        Command::Gpu {
            evidence,
            cert_chain,
            driver_rims,
            vbios_rims,
            ocsp,
            nonce,
            policy,
            at,
            json,
        } => gpu_cmd::run_gpu(&gpu_cmd::GpuArgs {
            evidence,
            cert_chain: cert_chain.as_deref(),
            driver_rims,
            vbios_rims,
            ocsp,
            nonce: nonce.as_deref(),
            policy: policy.as_deref(),
            at: at.as_deref(),
            json: *json,
        })
        .map(verdict_code),
        Command::Bundle {
            file,
            policy,
            at,
            json,
        } => run_bundle(file, policy, at.as_deref(), *json).map(verdict_code),
        Command::Policy {
            command: PolicyCommand::Init { from, release, out },
        } => run_policy_init(from, release, out.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Explain { file, product } => {
            run_explain(file, product.as_deref()).map(|()| ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("cocoon-verify: {msg}");
            ExitCode::from(EX_USAGE)
        }
    }
}
