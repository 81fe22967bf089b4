//! `cocoon-measure`: launch measurements from build outputs.
//!
//! Exit codes: 0 computed, 1 computation refused (bad firmware, must-fail
//! combination, replay not matching a quote), 64 usage error (sysexits
//! `EX_USAGE`: bad or missing arguments, unreadable files).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use cocoon_measure::direct_boot::{self, QemuDirectBoot, QEMU_ACPI_DATA_SIZE};
use cocoon_measure::eventlog::{self, DigestCheck, EventLog};
use cocoon_measure::ovmf::OvmfLayout;
use cocoon_measure::policy::{self, Provenance, Reference, TdxReferences};
use cocoon_measure::sev_hashes::KernelHashes;
use cocoon_measure::snp::{self, FirmwareStart, SevEsVcpus, SevMode, SnpLaunch};
use cocoon_measure::tdvf::{self, PageAddOrder, TdvfMetadata};
use cocoon_measure::vmsa::VmmType;
use cocoon_measure::{cpu, parse_hex, Measurement};

mod manifest_cmd;

const EX_USAGE: u8 = 64;

/// Append a line to the command's output (written to stdout once, at the end).
macro_rules! say {
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($t)*);
    }};
}

/// Append text to the command's output.
macro_rules! put {
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($o, $($t)*);
    }};
}
const UNVERIFIED: &str = "unverified: no reference vector";

#[derive(Parser)]
#[command(
    name = "cocoon-measure",
    version,
    about = "Compute launch measurements (SEV-SNP launch digest, TDX MRTD/RTMRs) offline from build outputs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The SEV-SNP launch digest of an OVMF launch (48 bytes, hex).
    Snp(SnpArgs),
    /// The digest of the OVMF pages alone and the OVMF layout, as JSON (inputs for `snp --ovmf-hash --ovmf-layout`).
    SnpOvmf {
        /// The OVMF image.
        #[arg(long)]
        ovmf: PathBuf,
    },
    /// The SEV or SEV-ES launch digest (32 bytes, hex).
    Sev(SevArgs),
    /// TDX MRTD from a TDVF image, and RTMR1/RTMR2 of a QEMU direct kernel boot (unverified: no reference vector).
    Tdx(TdxArgs),
    /// Replay a TDX event log (CCEL or dstack JSON) into RTMR0..3.
    TdxReplay(ReplayArgs),
    /// Write the image's release manifest (canonical JSON: release.json plus launch measurements) and print its hash and measurement digests.
    Manifest(Box<manifest_cmd::ManifestArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum VmmArg {
    Qemu,
    Ec2,
    Gce,
}

impl From<VmmArg> for VmmType {
    fn from(v: VmmArg) -> VmmType {
        match v {
            VmmArg::Qemu => VmmType::Qemu,
            VmmArg::Ec2 => VmmType::Ec2,
            VmmArg::Gce => VmmType::Gce,
        }
    }
}

#[derive(Args)]
struct PolicyOut {
    /// Print the verifier policy's table (TOML) instead of the bare values.
    #[arg(long, requires = "release")]
    policy_fragment: bool,
    /// The image release the values belong to (named in the fragment).
    #[arg(long)]
    release: Option<String>,
}

#[derive(Args)]
struct KernelArgs {
    /// Kernel for a direct boot (`-kernel`).
    #[arg(long, conflicts_with = "kernel_sha256")]
    kernel: Option<PathBuf>,
    /// SHA-256 of the kernel, instead of --kernel.
    #[arg(long)]
    kernel_sha256: Option<String>,
    /// Initrd (`-initrd`).
    #[arg(long, conflicts_with = "initrd_sha256")]
    initrd: Option<PathBuf>,
    /// SHA-256 of the initrd, instead of --initrd.
    #[arg(long)]
    initrd_sha256: Option<String>,
    /// Kernel command line (`-append`).
    #[arg(long)]
    append: Option<String>,
}

#[derive(Args)]
struct SnpArgs {
    /// The OVMF image (its pages are measured unless --ovmf-hash is given).
    #[arg(
        long,
        required_unless_present = "ovmf_layout",
        conflicts_with = "ovmf_layout"
    )]
    ovmf: Option<PathBuf>,
    /// OVMF layout JSON (from `snp-ovmf`, or a dstack SEV measurement document) instead of --ovmf; needs --ovmf-hash.
    #[arg(long, requires = "ovmf_hash")]
    ovmf_layout: Option<PathBuf>,
    /// Precomputed digest of the OVMF pages (96 hex digits): the pages are not re-measured.
    #[arg(long)]
    ovmf_hash: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: u32,
    /// QEMU vCPU model (EPYC-v4, EPYC-Milan, ...), for the CPUID signature in the VMSA.
    #[arg(long, conflicts_with = "vcpu_sig")]
    vcpu_type: Option<String>,
    /// CPUID signature (hex), instead of --vcpu-type.
    #[arg(long)]
    vcpu_sig: Option<String>,
    /// Guest features, the VMSA's SEV_FEATURES (hex, e.g. 0x1).
    #[arg(long)]
    guest_features: String,
    /// Hypervisor.
    #[arg(long, value_enum, default_value = "qemu")]
    vmm_type: VmmArg,
    #[command(flatten)]
    kernel: KernelArgs,
    #[command(flatten)]
    out: PolicyOut,
}

#[derive(Args)]
struct SevArgs {
    /// SEV-ES (VMSAs are measured) instead of plain SEV.
    #[arg(long)]
    es: bool,
    /// The OVMF image.
    #[arg(long)]
    ovmf: PathBuf,
    /// Number of vCPUs (SEV-ES).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// QEMU vCPU model (SEV-ES).
    #[arg(long, conflicts_with = "vcpu_sig")]
    vcpu_type: Option<String>,
    /// CPUID signature (hex), instead of --vcpu-type (SEV-ES).
    #[arg(long)]
    vcpu_sig: Option<String>,
    /// Hypervisor (SEV-ES).
    #[arg(long, value_enum, default_value = "qemu")]
    vmm_type: VmmArg,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum OrderArg {
    SinglePass,
    TwoPass,
}

#[derive(Args)]
struct TdxArgs {
    /// The TDVF (OVMF with TDX) image.
    #[arg(long)]
    firmware: PathBuf,
    /// Kernel (bzImage with EFI stub) for a direct boot.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// Guest memory in MiB (`-m`): decides where QEMU places the initrd, which changes the kernel header.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Order of PAGE.ADD and MR.EXTEND (single-pass for current KVM, two-pass for older TDX trees).
    #[arg(long, value_enum, default_value = "single-pass")]
    page_add_order: OrderArg,
    #[command(flatten)]
    out: PolicyOut,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Tcg,
    DstackJson,
}

#[derive(Args)]
struct ReplayArgs {
    /// ACPI CCEL table (e.g. /sys/firmware/acpi/tables/CCEL).
    #[arg(long, requires = "ccel_data", conflicts_with_all = ["event_log", "dstack_quote_report"])]
    ccel_table: Option<PathBuf>,
    /// The CCEL log area (e.g. /sys/firmware/acpi/tables/data/CCEL).
    #[arg(long, requires = "ccel_table")]
    ccel_data: Option<PathBuf>,
    /// An event log file (TCG binary log or dstack JSON list).
    #[arg(long, conflicts_with = "dstack_quote_report")]
    event_log: Option<PathBuf>,
    /// Format of --event-log (default: dstack-json when it starts with '[', else tcg).
    #[arg(long, value_enum, requires = "event_log")]
    format: Option<LogFormatArg>,
    /// A dstack quote-report JSON ({"quote": hex, "event_log": JSON string}): replays the log and compares with the quote.
    #[arg(long)]
    dstack_quote_report: Option<PathBuf>,
    /// A TDX quote (binary, or hex text) to compare the replayed RTMRs with.
    #[arg(long)]
    quote: Option<PathBuf>,
    /// List the events.
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    out: PolicyOut,
}

/// How a command failed.
enum Failure {
    /// Bad invocation: exit 64.
    Usage(String),
    /// The computation refused the inputs: exit 1.
    Refused(String),
}

fn refused(e: impl std::fmt::Display) -> Failure {
    Failure::Refused(e.to_string())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {what} {}: {e}", path.display())))
}

fn read_text(path: &Path, what: &str) -> Result<String, Failure> {
    String::from_utf8(read(path, what)?)
        .map_err(|_| Failure::Usage(format!("{what} {} is not UTF-8 text", path.display())))
}

fn hex_arg<const N: usize>(s: &str, what: &str) -> Result<[u8; N], Failure> {
    parse_hex::<N>(s).map_err(|e| Failure::Usage(format!("--{what}: {e}")))
}

fn int_arg(s: &str, what: &str) -> Result<u64, Failure> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => u64::from_str_radix(t, 16),
    };
    r.map_err(|_| Failure::Usage(format!("--{what}: {s:?} is not a hex number")))
}

fn vcpu_sig(
    vcpu_type: &Option<String>,
    vcpu_sig: &Option<String>,
    vmm: VmmType,
) -> Result<u32, Failure> {
    match (vcpu_type, vcpu_sig) {
        (Some(t), _) => cpu::vcpu_signature(t).map_err(|e| Failure::Usage(e.to_string())),
        (None, Some(s)) => u32::try_from(int_arg(s, "vcpu-sig")?)
            .map_err(|_| Failure::Usage("--vcpu-sig: does not fit 32 bits".into())),
        // EC2 and GCE put a fixed value in RDX.
        (None, None) if vmm != VmmType::Qemu => Ok(0),
        (None, None) => Err(Failure::Usage("give --vcpu-type (or --vcpu-sig)".into())),
    }
}

fn kernel_hashes(k: &KernelArgs) -> Result<Option<KernelHashes>, Failure> {
    let kernel = match (&k.kernel, &k.kernel_sha256) {
        (Some(p), _) => Some(KernelHashes::file_hash(&read(p, "kernel")?)),
        (None, Some(h)) => Some(hex_arg::<32>(h, "kernel-sha256")?),
        (None, None) => None,
    };
    let Some(kernel) = kernel else {
        if k.initrd.is_some() || k.initrd_sha256.is_some() || k.append.is_some() {
            return Err(Failure::Usage(
                "--initrd and --append need --kernel (or --kernel-sha256)".into(),
            ));
        }
        return Ok(None);
    };
    let initrd = match (&k.initrd, &k.initrd_sha256) {
        (Some(p), _) => KernelHashes::file_hash(&read(p, "initrd")?),
        (None, Some(h)) => hex_arg::<32>(h, "initrd-sha256")?,
        (None, None) => KernelHashes::file_hash(b""),
    };
    Ok(Some(KernelHashes {
        kernel,
        initrd,
        cmdline: KernelHashes::cmdline_hash(k.append.as_deref()),
    }))
}

fn release(out: &PolicyOut) -> Result<Option<&str>, Failure> {
    match (out.policy_fragment, &out.release) {
        (true, Some(r)) if !r.trim().is_empty() => Ok(Some(r)),
        (true, _) => Err(Failure::Usage(
            "--policy-fragment needs a non-empty --release".into(),
        )),
        (false, _) => Ok(None),
    }
}

fn run_snp(a: &SnpArgs) -> Result<String, Failure> {
    let mut out = String::new();
    let vmm = VmmType::from(a.vmm_type);
    let launch = SnpLaunch {
        vcpus: a.vcpus,
        vcpu_signature: vcpu_sig(&a.vcpu_type, &a.vcpu_sig, vmm)?,
        guest_features: int_arg(&a.guest_features, "guest-features")?,
        vmm,
        kernel: kernel_hashes(&a.kernel)?,
    };
    let release = release(&a.out)?;
    let precomputed = a
        .ovmf_hash
        .as_deref()
        .map(|h| hex_arg::<48>(h, "ovmf-hash").map(Measurement))
        .transpose()?;
    let image;
    let (layout, start) = match (&a.ovmf, &a.ovmf_layout) {
        (Some(p), _) => {
            image = read(p, "OVMF image")?;
            let layout = OvmfLayout::from_image(&image).map_err(refused)?;
            let start = match precomputed {
                Some(d) => FirmwareStart::Precomputed(d),
                None => FirmwareStart::Image(&image),
            };
            (layout, start)
        }
        (None, Some(p)) => {
            let layout = OvmfLayout::from_json(&read_text(p, "OVMF layout")?).map_err(refused)?;
            let d = precomputed
                .ok_or_else(|| Failure::Usage("--ovmf-layout needs --ovmf-hash".into()))?;
            (layout, FirmwareStart::Precomputed(d))
        }
        (None, None) => return Err(Failure::Usage("give --ovmf or --ovmf-layout".into())),
    };
    let digest = snp::launch_digest(start, &layout, &launch).map_err(refused)?;
    match release {
        Some(r) => put!(out, "{}", policy::snp_table(r, &[digest])),
        None => say!(out, "{digest}"),
    }
    Ok(out)
}

fn run_snp_ovmf(ovmf: &Path) -> Result<String, Failure> {
    let mut out = String::new();
    let image = read(ovmf, "OVMF image")?;
    let layout = OvmfLayout::from_image(&image).map_err(refused)?;
    let digest = snp::ovmf_pages_digest(&image).map_err(refused)?;
    say!(out, "{}", layout.to_json(Some(&digest)));
    Ok(out)
}

fn run_sev(a: &SevArgs) -> Result<String, Failure> {
    let mut out = String::new();
    let vmm = VmmType::from(a.vmm_type);
    let image = read(&a.ovmf, "OVMF image")?;
    let layout = OvmfLayout::from_image(&image).map_err(refused)?;
    let kernel = kernel_hashes(&a.kernel)?;
    let (mode, vcpus) = if a.es {
        let sig = vcpu_sig(&a.vcpu_type, &a.vcpu_sig, vmm)?;
        (
            SevMode::SevEs,
            SevEsVcpus {
                vcpus: a.vcpus,
                vcpu_signature: sig,
                vmm,
            },
        )
    } else {
        (
            SevMode::Sev,
            SevEsVcpus {
                vcpus: 1,
                vcpu_signature: 0,
                vmm,
            },
        )
    };
    let d =
        snp::sev_launch_digest(mode, &image, &layout, kernel.as_ref(), vcpus).map_err(refused)?;
    say!(out, "{}", hex::encode(d));
    Ok(out)
}

fn run_tdx(a: &TdxArgs) -> Result<String, Failure> {
    let mut out = String::new();
    let release = release(&a.out)?;
    let fw = read(&a.firmware, "TDVF image")?;
    let meta = TdvfMetadata::from_image(&fw).map_err(refused)?;
    let order = match a.page_add_order {
        OrderArg::SinglePass => PageAddOrder::SinglePass,
        OrderArg::TwoPass => PageAddOrder::TwoPass,
    };
    let mrtd = tdvf::mrtd(&fw, &meta, order);
    let boot = match &a.kernel {
        None => None,
        Some(kp) => {
            let kernel = read(kp, "kernel")?;
            let initrd = a.initrd.as_deref().map(|p| read(p, "initrd")).transpose()?;
            let memory_bytes = match (a.memory_mib, &initrd) {
                (Some(m), _) => m
                    .checked_mul(1 << 20)
                    .ok_or_else(|| Failure::Usage("--memory-mib is too large".into()))?,
                (None, Some(_)) => {
                    return Err(Failure::Usage(
                        "--initrd needs --memory-mib: QEMU's initrd address, written into the kernel header, depends on guest memory".into(),
                    ))
                }
                (None, None) => 0,
            };
            let b = QemuDirectBoot {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                cmdline: a.append.as_deref().unwrap_or(""),
                memory_bytes,
                acpi_data_size: QEMU_ACPI_DATA_SIZE,
            };
            Some(direct_boot::rtmrs(&b).map_err(refused)?)
        }
    };
    eprintln!(
        "cocoon-measure: WARNING: {UNVERIFIED}: MRTD{} follow the TDX/TDVF specifications but no public vector checks them; confirm against a real launch before pinning",
        if boot.is_some() { ", RTMR1 and RTMR2" } else { "" }
    );
    let rtmr0_skip = "RTMR0 not computed: it depends on the VM's TD HOB, CFV and ACPI tables; replay a reference launch's event log (tdx-replay)";
    let rtmr3_skip = "RTMR3 is extended at run time by the guest; it is not an image value";
    if let Some(r) = release {
        let why = "TDVF MRTD per the TDX module/TDVF specifications".to_string();
        let refs = TdxReferences {
            mrtd: Reference::Value(mrtd, Provenance::Unverified(why)),
            rtmr: [
                Reference::Skip(rtmr0_skip.into()),
                boot.as_ref().map_or_else(
                    || Reference::Skip("RTMR1 not computed: no --kernel".into()),
                    |b| {
                        Reference::Value(
                            b.rtmr1,
                            Provenance::Unverified("QEMU direct boot through TDVF".into()),
                        )
                    },
                ),
                boot.as_ref().map_or_else(
                    || Reference::Skip("RTMR2 not computed: no --kernel".into()),
                    |b| {
                        Reference::Value(
                            b.rtmr2,
                            Provenance::Unverified("Linux EFI stub load options and initrd".into()),
                        )
                    },
                ),
                Reference::Skip(rtmr3_skip.into()),
            ],
        };
        put!(out, "{}", policy::tdx_table(r, &refs));
        return Ok(out);
    }
    say!(out, "mrtd  {mrtd}  # {UNVERIFIED}");
    say!(out, "rtmr0 -  # {rtmr0_skip}");
    match &boot {
        Some(b) => {
            say!(out, "rtmr1 {}  # {UNVERIFIED}", b.rtmr1);
            say!(out, "rtmr2 {}  # {UNVERIFIED}", b.rtmr2);
            say!(
                out,
                "kernel_authenticode_sha384 {}  # {UNVERIFIED}",
                hex::encode(b.kernel_digest)
            );
        }
        None => {
            say!(out, "rtmr1 -  # not computed: no --kernel");
            say!(out, "rtmr2 -  # not computed: no --kernel");
        }
    }
    say!(out, "rtmr3 -  # {rtmr3_skip}");
    Ok(out)
}

/// The TD report values of a quote: MRTD and RTMR0..3.
fn quote_registers(bytes: &[u8]) -> Result<(Measurement, [Measurement; 4]), Failure> {
    let text_hex = std::str::from_utf8(bytes)
        .ok()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| hex::decode(s).ok());
    let raw = text_hex.as_deref().unwrap_or(bytes);
    let (q, _) = cocoon_attestation::tdx::Quote::parse_prefix(raw)
        .map_err(|e| Failure::Refused(format!("quote: {e}")))?;
    let td = q
        .td_report()
        .ok_or_else(|| Failure::Refused("quote: an SGX quote, not TDX".into()))?;
    Ok((Measurement(*td.mrtd()), td.rtmrs().map(|r| Measurement(*r))))
}

fn run_replay(a: &ReplayArgs) -> Result<String, Failure> {
    let mut out = String::new();
    let release = release(&a.out)?;
    let mut quote = a.quote.as_deref().map(|p| read(p, "quote")).transpose()?;
    let log = if let (Some(t), Some(d)) = (&a.ccel_table, &a.ccel_data) {
        EventLog::parse_ccel(&read(t, "CCEL table")?, &read(d, "CCEL data")?).map_err(refused)?
    } else if let Some(p) = &a.event_log {
        let bytes = read(p, "event log")?;
        let json = match a.format {
            Some(LogFormatArg::DstackJson) => true,
            Some(LogFormatArg::Tcg) => false,
            None => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
        };
        if json {
            let text = String::from_utf8(bytes)
                .map_err(|_| Failure::Usage(format!("{} is not UTF-8 JSON", p.display())))?;
            EventLog::parse_dstack_json(&text).map_err(refused)?
        } else {
            EventLog::parse_tcg(&bytes).map_err(refused)?
        }
    } else if let Some(p) = &a.dstack_quote_report {
        let doc: serde_json::Value = serde_json::from_str(&read_text(p, "dstack quote report")?)
            .map_err(|e| Failure::Refused(format!("{}: {e}", p.display())))?;
        let field = |k: &str| {
            doc.get(k)
                .and_then(|v| v.as_str())
                .ok_or_else(|| Failure::Refused(format!("{}: no string field {k:?}", p.display())))
        };
        let log = EventLog::parse_dstack_json(field("event_log")?).map_err(refused)?;
        if quote.is_none() {
            quote = Some(field("quote")?.as_bytes().to_vec());
        }
        log
    } else {
        return Err(Failure::Usage(
            "give --ccel-table and --ccel-data, --event-log, or --dstack-quote-report".into(),
        ));
    };

    let rtmrs = log.replay();
    let checks = log.check_digests();
    let count = |c: DigestCheck| checks.iter().filter(|x| **x == c).count();
    eprintln!(
        "cocoon-measure: {} events replayed; event digests checked against their data: {} match, {} mismatch, {} not checkable (image or table digests)",
        log.events.len(),
        count(DigestCheck::Matches),
        count(DigestCheck::Mismatch),
        count(DigestCheck::NotCheckable)
    );
    for (i, (e, c)) in log.events.iter().zip(&checks).enumerate() {
        if *c == DigestCheck::Mismatch {
            eprintln!(
                "cocoon-measure: WARNING: event {i} ({}, RTMR{}): its digest is not the hash of its data; the log's description of this event cannot be trusted",
                eventlog::event_type_name(e.event_type),
                e.rtmr.map_or("-".to_string(), |r| r.to_string())
            );
        }
    }

    let from_quote = quote.as_deref().map(quote_registers).transpose()?;
    if let Some((_, q)) = &from_quote {
        let bad: Vec<usize> = (0..4).filter(|i| q[*i] != rtmrs[*i]).collect();
        if !bad.is_empty() {
            for i in &bad {
                eprintln!(
                    "cocoon-measure: RTMR{i}: replay {} but the quote has {}",
                    rtmrs[*i], q[*i]
                );
            }
            return Err(Failure::Refused(
                "the replayed RTMRs do not match the quote: this log is not the one the TD measured".into(),
            ));
        }
        eprintln!("cocoon-measure: RTMR0..3 of the quote match the replay");
    }

    if let Some(r) = release {
        let refs = TdxReferences {
            mrtd: match &from_quote {
                Some((m, _)) => Reference::Value(*m, Provenance::FromQuote),
                None => Reference::Skip(
                    "MRTD is not in an event log: give --quote, or compute it with `cocoon-measure tdx --firmware`".into(),
                ),
            },
            rtmr: [
                Reference::Value(rtmrs[0], Provenance::Replayed),
                Reference::Value(rtmrs[1], Provenance::Replayed),
                Reference::Value(rtmrs[2], Provenance::Replayed),
                Reference::Skip("RTMR3 is extended at run time by the guest; it is not an image value".into()),
            ],
        };
        put!(out, "{}", policy::tdx_table(r, &refs));
        return Ok(out);
    }
    for (i, r) in rtmrs.iter().enumerate() {
        say!(out, "rtmr{i} {r}");
    }
    if a.events {
        for (i, (e, c)) in log.events.iter().zip(&checks).enumerate() {
            say!(
                out,
                "event {i:3} rtmr{} {:#010x} {:<34} {} {:?}{}",
                e.rtmr.map_or("-".to_string(), |r| r.to_string()),
                e.event_type,
                eventlog::event_type_name(e.event_type),
                hex::encode(e.digest),
                c,
                if e.name.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", e.name)
                }
            );
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match &cli.command {
        Command::Snp(a) => run_snp(a),
        Command::SnpOvmf { ovmf } => run_snp_ovmf(ovmf),
        Command::Sev(a) => run_sev(a),
        Command::Tdx(a) => run_tdx(a),
        Command::TdxReplay(a) => run_replay(a),
        Command::Manifest(a) => manifest_cmd::run(a),
    };
    match result {
        Ok(text) => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cocoon-measure: cannot write the output: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(Failure::Usage(m)) => {
            eprintln!("cocoon-measure: {m}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Refused(m)) => {
            eprintln!("cocoon-measure: refused: {m}");
            ExitCode::from(1)
        }
    }
}
