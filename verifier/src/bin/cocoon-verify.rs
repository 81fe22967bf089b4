//! `cocoon-verify`: check confidential-VM evidence from the command line.
//!
//! Exit status: 0 only when the evidence is accepted, 1 when it is rejected,
//! 64 (EX_USAGE) when the command line or an input file cannot be used.
//! This binary is the only part of the verifier that reads files or the
//! clock; the library takes bytes and time as arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cocoon_attestation::snp::{Explain, Product, SnpReport, TcbLayout, TcbVersion};
use cocoon_verifier::policy::parse_hex;
use cocoon_verifier::snp::SnpCertificates;
use cocoon_verifier::{Rejection, SnpPolicy, SnpVerifier, UnixTime, VerifiedSnp};
use serde_json::{json, Value};

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
        /// The raw 1184-byte attestation report.
        #[arg(long)]
        report: PathBuf,
        /// The VCEK or VLEK certificate (DER or PEM).
        #[arg(long)]
        cert: PathBuf,
        /// ASK/ASVK and ARK certificates (PEM); the bundled ones are used when absent.
        #[arg(long)]
        chain: Option<PathBuf>,
        /// An allowed launch measurement (96 hex digits); repeat for several.
        #[arg(long = "measurement", value_name = "HEX")]
        measurements: Vec<String>,
        /// A policy file (TOML with an [snp] table).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Verify as of this time (RFC 3339, e.g. 2025-10-01T08:00:00Z); default: now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
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

struct UsageError(String);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path)
        .map_err(|e| UsageError(format!("cannot read {what} {}: {e}", path.display())))
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

#[allow(clippy::too_many_arguments)]
fn run_snp(
    report: &Path,
    cert: &Path,
    chain: Option<&Path>,
    measurements: &[String],
    policy: Option<&Path>,
    at: Option<&str>,
    json_out: bool,
) -> Result<bool, UsageError> {
    let policy = match (policy, measurements.is_empty()) {
        (Some(_), false) => {
            return Err(UsageError("give measurements either in the policy file or with --measurement, not both".into()))
        }
        (Some(p), true) => {
            let text = String::from_utf8(read(p, "policy")?)
                .map_err(|_| UsageError(format!("policy {} is not UTF-8 text", p.display())))?;
            SnpPolicy::from_toml(&text).map_err(|e| UsageError(format!("policy {}: {e}", p.display())))?
        }
        (None, false) => {
            let list = measurements
                .iter()
                .map(|m| parse_hex::<48>(m).map_err(|e| UsageError(format!("--measurement: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            SnpPolicy::pinned_to_measurements(list)
        }
        (None, true) => {
            return Err(UsageError(
                "no policy: pass --measurement HEX (repeatable) or --policy FILE; a report is never accepted for any measurement".into(),
            ))
        }
    };
    let now = parse_time(at)?;
    let report_bytes = read(report, "report")?;
    let vek = read(cert, "certificate")?;
    let chain_bytes = match chain {
        Some(c) => read(c, "certificate chain")?,
        None => Vec::new(),
    };
    let result = SnpVerifier::new().verify(
        &report_bytes,
        SnpCertificates {
            vek: &vek,
            chain: &chain_bytes,
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
        }
        Err(rej) => {
            println!("REJECTED: the evidence does not meet the policy");
            for reason in rej.reasons() {
                println!("  - {reason}");
            }
        }
    }
}

fn run_explain(file: &Path, product: Option<&str>) -> Result<(), UsageError> {
    let bytes = read(file, "report")?;
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
            measurements,
            policy,
            at,
            json,
        } => run_snp(
            report,
            cert,
            chain.as_deref(),
            measurements,
            policy.as_deref(),
            at.as_deref(),
            *json,
        )
        .map(|accepted| {
            if accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
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
