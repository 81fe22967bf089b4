//! `cocoon-measure manifest`: the release manifest of a built image.
//!
//! Reads the image directory's `release.json` (written by
//! `images/release.py`), checks that the kernel, initramfs and command line
//! beside it are the ones it names, adds the launch measurements (SEV-SNP
//! computed here from the measured OVMF for each vCPU count; SEV-SNP, TDX
//! and simulated values given on the command line), and writes the canonical
//! bytes of `cocoon_protocol::release::ReleaseManifest` to
//! `release-manifest.json` (or `--out`). Prints the manifest hash and each
//! measurement digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use cocoon_protocol::release::{
    Hex, LaunchMeasurement, MinTcb, PriceBounds, PricesFrom, ReleaseManifest, ReleaseModel,
    SimulatedValues, SnpMinTcb, SnpValues, TdxMinTcb, TdxValues, MANIFEST_VERSION,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use cocoon_measure::ovmf::OvmfLayout;
use cocoon_measure::sev_hashes::KernelHashes;
use cocoon_measure::snp::{self, FirmwareStart, SnpLaunch};
use cocoon_measure::vmsa::VmmType;
use cocoon_measure::{cpu, parse_hex};

use crate::{int_arg, read, read_text, refused, Failure};

/// The file `images/build.sh` writes beside `release.json`.
pub const MANIFEST_FILE: &str = "release-manifest.json";

#[derive(Args)]
pub struct ManifestArgs {
    /// Image directory (images/build.sh output: release.json, vmlinuz,
    /// initrd.cpio, cmdline.txt, image.env).
    #[arg(long, value_name = "DIR")]
    image: PathBuf,
    /// Where to write the manifest [default: DIR/release-manifest.json].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The measured OVMF for SEV-SNP (images/firmware: OVMF-AmdSev.fd):
    /// computes one launch digest per --vcpus count.
    #[arg(long, value_name = "FILE")]
    snp_ovmf: Option<PathBuf>,
    /// vCPU counts to compute SEV-SNP launch digests for (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8",
        requires = "snp_ovmf"
    )]
    vcpus: Vec<u32>,
    /// QEMU vCPU model for the VMSA's CPUID signature [default: image.env's
    /// SNP_VCPU_TYPE, else EPYC-v4].
    #[arg(long, requires = "snp_ovmf")]
    vcpu_type: Option<String>,
    /// SEV features of the VMSA (hex), as `cocoon-host launch` starts QEMU.
    #[arg(long, default_value = "0x1", requires = "snp_ovmf")]
    guest_features: String,
    /// A precomputed SEV-SNP launch digest: VCPUS:HEX96 (repeatable).
    #[arg(long = "snp-measurement", value_name = "VCPUS:HEX")]
    snp_measurements: Vec<String>,
    /// TDX values of a reference launch: VCPUS:MEMORY_MIB:MRTD:RTMR0:RTMR1:RTMR2
    /// (hex; MRTD, RTMR1/2 from `cocoon-measure tdx`, RTMR0 from
    /// `tdx-replay` of that launch's event log; repeatable).
    #[arg(long = "tdx", value_name = "VALUES")]
    tdx: Vec<String>,
    /// TESTS ONLY, NOT CONFIDENTIAL: a simulated TEE measurement (96 hex
    /// digits) clients accept only with their dangerous opt-in.
    #[arg(long, value_name = "HEX")]
    simulated_measurement: Option<String>,
    /// The release's minimum SEV-SNP TCB:
    /// bootloader=N,tee=N,snp=N,microcode=N[,fmc=N].
    #[arg(long, value_name = "PARTS")]
    snp_min_tcb: Option<String>,
    /// The release's minimum TDX TEE TCB SVN (32 hex digits).
    #[arg(long, value_name = "HEX")]
    tdx_min_tee_tcb_svn: Option<String>,
}

/// `release.json` as `images/release.py` writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseJson {
    release: String,
    kernel_sha256: String,
    initrd_sha256: String,
    cmdline: String,
    disk_verity_root: String,
    models: Vec<ModelJson>,
    prices_from: PricesFrom,
    price_bounds: BTreeMap<String, PriceBounds>,
    max_request_lifetime_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelJson {
    name: String,
    version: Option<String>,
    sha256: String,
    tokenizer_sha256: String,
}

fn hex32(s: &str, what: &str) -> Result<Hex<32>, Failure> {
    parse_hex::<32>(s)
        .map(Hex)
        .map_err(|e| Failure::Refused(format!("release.json {what}: {e}")))
}

fn hex48(s: &str, what: &str) -> Result<Hex<48>, Failure> {
    parse_hex::<48>(s)
        .map(Hex)
        .map_err(|e| Failure::Usage(format!("{what}: {e}")))
}

fn uint<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, Failure> {
    s.parse()
        .map_err(|_| Failure::Usage(format!("{what}: {s:?} is not a number")))
}

fn sha256_file(dir: &Path, name: &str) -> Result<[u8; 32], Failure> {
    Ok(Sha256::digest(read(&dir.join(name), name)?).into())
}

/// `KEY=value` lines of image.env (no quoting: build.sh writes none).
fn image_env(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("image.env")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

fn snp_min_tcb(s: &str) -> Result<SnpMinTcb, Failure> {
    let mut parts: BTreeMap<&str, u8> = BTreeMap::new();
    for kv in s.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--snp-min-tcb: {kv:?} is not PART=N")))?;
        if !["fmc", "bootloader", "tee", "snp", "microcode"].contains(&k)
            || parts.insert(k, uint(v, "--snp-min-tcb")?).is_some()
        {
            return Err(Failure::Usage(format!(
                "--snp-min-tcb: {k:?} is unknown or given twice (parts: bootloader, tee, snp, microcode, fmc)"
            )));
        }
    }
    let need = |k: &str| {
        parts
            .get(k)
            .copied()
            .ok_or_else(|| Failure::Usage(format!("--snp-min-tcb: {k} is missing")))
    };
    Ok(SnpMinTcb {
        fmc: parts.get("fmc").copied(),
        bootloader: need("bootloader")?,
        tee: need("tee")?,
        snp: need("snp")?,
        microcode: need("microcode")?,
    })
}

/// The manifest for `a`, and a report of what went into it (stderr).
pub fn run(a: &ManifestArgs) -> Result<String, Failure> {
    let dir = &a.image;
    let rel: ReleaseJson =
        serde_json::from_str(&read_text(&dir.join("release.json"), "release.json")?)
            .map_err(|e| Failure::Refused(format!("{}/release.json: {e}", dir.display())))?;
    // The files the SNP digest covers must be the ones release.json names.
    let kernel = sha256_file(dir, "vmlinuz")?;
    let initrd = sha256_file(dir, "initrd.cpio")?;
    let cmdline = read_text(&dir.join("cmdline.txt"), "cmdline.txt")?;
    let kernel_sha256 = hex32(&rel.kernel_sha256, "kernel_sha256")?;
    let initrd_sha256 = hex32(&rel.initrd_sha256, "initrd_sha256")?;
    for (what, file, named) in [
        ("vmlinuz", kernel, kernel_sha256.0),
        ("initrd.cpio", initrd, initrd_sha256.0),
    ] {
        if file != named {
            return Err(Failure::Refused(format!(
                "{what} has SHA-256 {}, release.json says {}: not the image release.json describes",
                hex::encode(file),
                hex::encode(named)
            )));
        }
    }
    if cmdline != rel.cmdline {
        return Err(Failure::Refused(
            "cmdline.txt is not the command line release.json names".into(),
        ));
    }
    let models = rel
        .models
        .iter()
        .map(|m| {
            Ok(ReleaseModel {
                name: m.name.clone(),
                version: m.version.clone().ok_or_else(|| {
                    Failure::Refused(format!(
                        "release.json: model {} has no version (set version in the release config)",
                        m.name
                    ))
                })?,
                sha256: hex32(&m.sha256, "model sha256")?,
                tokenizer_sha256: hex32(&m.tokenizer_sha256, "model tokenizer_sha256")?,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;

    let mut measurements = Vec::new();
    if let Some(ovmf) = &a.snp_ovmf {
        let image = read(ovmf, "OVMF image")?;
        let layout = OvmfLayout::from_image(&image).map_err(refused)?;
        let pages = snp::ovmf_pages_digest(&image).map_err(refused)?;
        let vcpu_type = a
            .vcpu_type
            .clone()
            .or_else(|| image_env(dir, "SNP_VCPU_TYPE"))
            .unwrap_or_else(|| "EPYC-v4".into());
        let signature =
            cpu::vcpu_signature(&vcpu_type).map_err(|e| Failure::Usage(e.to_string()))?;
        let hashes = KernelHashes {
            kernel,
            initrd,
            cmdline: KernelHashes::cmdline_hash(Some(&cmdline)),
        };
        for &vcpus in &a.vcpus {
            let launch = SnpLaunch {
                vcpus,
                vcpu_signature: signature,
                guest_features: int_arg(&a.guest_features, "guest-features")?,
                vmm: VmmType::Qemu,
                kernel: Some(hashes),
            };
            let d = snp::launch_digest(FirmwareStart::Precomputed(pages), &layout, &launch)
                .map_err(refused)?;
            eprintln!("cocoon-measure: SNP {vcpus} x {vcpu_type}: {d}");
            measurements.push(LaunchMeasurement::Snp {
                vcpus,
                values: SnpValues {
                    launch_measurement: Hex(d.0),
                },
            });
        }
    }
    for s in &a.snp_measurements {
        let (v, h) = s.split_once(':').ok_or_else(|| {
            Failure::Usage(format!("--snp-measurement {s:?}: expected VCPUS:HEX"))
        })?;
        measurements.push(LaunchMeasurement::Snp {
            vcpus: uint(v, "--snp-measurement vcpus")?,
            values: SnpValues {
                launch_measurement: hex48(h, "--snp-measurement")?,
            },
        });
    }
    for s in &a.tdx {
        let f: Vec<&str> = s.split(':').collect();
        let [vcpus, mem, mrtd, r0, r1, r2] = f[..] else {
            return Err(Failure::Usage(format!(
                "--tdx {s:?}: expected VCPUS:MEMORY_MIB:MRTD:RTMR0:RTMR1:RTMR2"
            )));
        };
        measurements.push(LaunchMeasurement::Tdx {
            vcpus: uint(vcpus, "--tdx vcpus")?,
            memory_mib: uint(mem, "--tdx memory_mib")?,
            values: TdxValues {
                mrtd: hex48(mrtd, "--tdx mrtd")?,
                rtmr0: hex48(r0, "--tdx rtmr0")?,
                rtmr1: hex48(r1, "--tdx rtmr1")?,
                rtmr2: hex48(r2, "--tdx rtmr2")?,
            },
        });
    }
    if let Some(h) = &a.simulated_measurement {
        eprintln!("cocoon-measure: WARNING: adding a SIMULATED TEE measurement: NOT CONFIDENTIAL, for tests only; clients accept it only with their dangerous opt-in");
        measurements.push(LaunchMeasurement::Simulated {
            vcpus: 1,
            values: SimulatedValues {
                measurement: hex48(h, "--simulated-measurement")?,
            },
        });
    }
    if measurements.is_empty() {
        return Err(Failure::Usage(
            "no measurement: give --snp-ovmf, --snp-measurement, --tdx or (tests only) --simulated-measurement".into(),
        ));
    }
    let mut m = ReleaseManifest {
        version: MANIFEST_VERSION,
        release: rel.release,
        kernel_sha256,
        initrd_sha256,
        cmdline: rel.cmdline,
        disk_verity_root: hex32(&rel.disk_verity_root, "disk_verity_root")?,
        models,
        prices_from: rel.prices_from,
        price_bounds: rel.price_bounds,
        max_request_lifetime_secs: rel.max_request_lifetime_secs.ok_or_else(|| {
            Failure::Refused("release.json has no max_request_lifetime_secs".into())
        })?,
        min_tcb: MinTcb {
            snp: a.snp_min_tcb.as_deref().map(snp_min_tcb).transpose()?,
            tdx: a
                .tdx_min_tee_tcb_svn
                .as_deref()
                .map(|h| {
                    parse_hex::<16>(h)
                        .map(|b| TdxMinTcb {
                            tee_tcb_svn: Hex(b),
                        })
                        .map_err(|e| Failure::Usage(format!("--tdx-min-tee-tcb-svn: {e}")))
                })
                .transpose()?,
        },
        measurements,
    };
    m.sort();
    let bytes = m.to_canonical().map_err(refused)?;
    let out = a.out.clone().unwrap_or_else(|| dir.join(MANIFEST_FILE));
    std::fs::write(&out, &bytes)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", out.display())))?;
    let mut text = format!(
        "manifest_hash {}  # SHA-256 of {} ({} bytes)\n",
        hex::encode(Sha256::digest(&bytes)),
        out.display(),
        bytes.len()
    );
    for (p, d) in m.measurement_digests() {
        text.push_str(&format!("digest {p:#04x} {}\n", hex::encode(d)));
    }
    Ok(text)
}
