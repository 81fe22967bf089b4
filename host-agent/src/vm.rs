//! `cocoon-host launch`: runs the guest image under QEMU and keeps it
//! running.
//!
//! Owns the QEMU command line for each kind of guest ([`plan`]), the
//! choice of vsock device, and [`Supervisor`], which starts QEMU (and, where
//! the host kernel has no `/dev/vhost-vsock`, the user-space vsock device
//! `vhost-device-vsock`), restarts both when the VM ends, and stops them on
//! shutdown. The broker reaches the enclave at [`VmPlan::enclave_addr`]; it
//! verifies the evidence of every boot afresh, so a restarted VM is trusted
//! only after its new evidence passes the policy.
//!
//! Guests:
//! - `snp`: KVM, `sev-snp-guest` with `kernel-hashes=on` (the SEV hashes
//!   table puts the kernel, initrd and command line into the launch digest),
//!   memfd private memory, the AmdSev OVMF build as `-bios` (QEMU 9.1 or
//!   later);
//! - `tdx`: KVM, a `tdx-guest` object and TDVF as `-bios`; the kernel,
//!   initrd and command line are measured into RTMR1/RTMR2 by TDVF (QEMU
//!   10.1 or later); optional `quote-generation-socket` to the host's QGS;
//! - `none`: no TEE at all, for tests. The enclave inside runs the
//!   **simulated** provider (NOT CONFIDENTIAL) and the default policy
//!   refuses it. KVM when `/dev/kvm` works, else TCG.
//!
//! Optional VFIO passthrough of GPUs (`--gpu 0000:41:00.0`) adds `vfio-pci`
//! devices and, for the TEE kinds, the large 64-bit MMIO window an H100's
//! BARs need.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::EnclaveAddr;

/// Which kind of guest to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// No TEE (tests only; the enclave runs the simulated provider).
    None,
}

impl Tee {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
            Tee::None => "none",
        }
    }
}

impl std::str::FromStr for Tee {
    type Err = String;
    fn from_str(s: &str) -> Result<Tee, String> {
        match s {
            "snp" => Ok(Tee::Snp),
            "tdx" => Ok(Tee::Tdx),
            "none" => Ok(Tee::None),
            other => Err(format!("--tee {other:?}: expected snp, tdx or none")),
        }
    }
}

/// How the VM is accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`/dev/kvm`).
    Kvm,
    /// QEMU's software emulation (slow; tests on machines without KVM).
    Tcg,
}

/// How the guest's vsock reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`): the host dials
    /// `vsock:CID:PORT`.
    Kernel,
    /// `vhost-device-vsock` (user space) over a vhost-user socket: the host
    /// dials the device's Unix socket (hybrid vsock). Needs shared guest
    /// memory (memfd).
    User {
        /// The `vhost-device-vsock` binary.
        binary: PathBuf,
    },
}

/// The files of a built image (`images/build.sh` output).
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel (bzImage): what SNP and TDX boot and measure.
    pub kernel: PathBuf,
    /// The same kernel uncompressed (ELF with a PVH entry), when the image
    /// has it: booted only without a TEE, where it saves the decompression
    /// (about a second under TCG).
    pub kernel_elf: Option<PathBuf>,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The measured kernel command line.
    pub cmdline: String,
    /// Release name.
    pub release: String,
    /// The enclave's vsock port.
    pub port: u32,
    /// The root disk (squashfs + dm-verity hash tree), attached read-only
    /// as virtio-blk, when the image has one.
    pub disk: Option<PathBuf>,
    /// The vsock port where the enclave takes the provider's settings at
    /// boot, when the image's release wants them.
    pub settings_port: Option<u32>,
    /// The vCPU model of SEV-SNP guests (`SNP_VCPU_TYPE` in `image.env`,
    /// from `images/image.lock`; the same value `images/measure.sh`
    /// measures with, since it is part of the launch digest). Images
    /// without it get [`DEFAULT_SNP_VCPU_TYPE`].
    pub snp_vcpu_type: String,
}

/// The SEV-SNP vCPU model of images that do not name one.
pub const DEFAULT_SNP_VCPU_TYPE: &str = "EPYC-v4";

impl Image {
    /// Reads an image directory: `vmlinuz`, `initrd.cpio`, `cmdline.txt`,
    /// `image.env` (and checks them against `SHA256SUMS` when present, so a
    /// partly replaced image is refused before it boots).
    pub fn load(dir: &Path) -> Result<Image, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| format!("image {}: cannot read {name}: {e}", dir.display()))
        };
        let cmdline = String::from_utf8(read("cmdline.txt")?)
            .map_err(|_| format!("image {}: cmdline.txt is not UTF-8", dir.display()))?;
        let env = String::from_utf8(read("image.env")?)
            .map_err(|_| format!("image {}: image.env is not UTF-8", dir.display()))?;
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
                .ok_or_else(|| format!("image {}: image.env has no {key}", dir.display()))
        };
        let release = get("IMAGE_RELEASE")?;
        let port = get("ENCLAVE_VSOCK_PORT")?
            .parse::<u32>()
            .map_err(|_| format!("image {}: ENCLAVE_VSOCK_PORT is not a u32", dir.display()))?;
        let disk = env
            .lines()
            .find_map(|l| l.strip_prefix("DISK="))
            .map(|name| {
                if name.is_empty() || name.contains('/') {
                    Err(format!(
                        "image {}: DISK={name:?} must name a file in the image directory",
                        dir.display()
                    ))
                } else {
                    Ok(dir.join(name))
                }
            })
            .transpose()?;
        let settings_port = match env
            .lines()
            .find_map(|l| l.strip_prefix("ENCLAVE_SETTINGS_PORT="))
        {
            None => None,
            Some(p) => Some(p.parse::<u32>().map_err(|_| {
                format!(
                    "image {}: ENCLAVE_SETTINGS_PORT is not a u32",
                    dir.display()
                )
            })?),
        };
        let snp_vcpu_type = match env.lines().find_map(|l| l.strip_prefix("SNP_VCPU_TYPE=")) {
            None => DEFAULT_SNP_VCPU_TYPE.to_string(),
            Some(t)
                if !t.is_empty()
                    && t.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                    }) =>
            {
                t.to_string()
            }
            Some(t) => {
                return Err(format!(
                    "image {}: SNP_VCPU_TYPE={t:?} is not a QEMU CPU model name",
                    dir.display()
                ))
            }
        };
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).ok();
        if let Some(sums) = &sums {
            use sha2::Digest as _;
            for line in sums.lines().filter(|l| !l.trim().is_empty()) {
                let (want, name) = line.split_once("  ").ok_or_else(|| {
                    format!(
                        "image {}: SHA256SUMS line {line:?} is malformed",
                        dir.display()
                    )
                })?;
                // The root disk (a gigabyte) is checked block by block in
                // the guest by dm-verity against the root hash on the
                // (checked) command line; hashing it here at every launch
                // would only add seconds.
                if disk
                    .as_ref()
                    .and_then(|d| d.file_name())
                    .and_then(|n| n.to_str())
                    == Some(name.trim())
                {
                    if !dir.join(name.trim()).is_file() {
                        return Err(format!(
                            "image {}: the root disk {name} is missing",
                            dir.display()
                        ));
                    }
                    continue;
                }
                let got = hex::encode(sha2::Sha256::digest(read(name.trim())?));
                if got != want.trim() {
                    return Err(format!(
                        "image {}: {name} has SHA-256 {got}, SHA256SUMS says {want}: refusing to boot it",
                        dir.display()
                    ));
                }
            }
        }
        Ok(Image {
            kernel: dir.join("vmlinuz"),
            kernel_elf: Some(dir.join("vmlinux")).filter(|p| {
                // With SHA256SUMS, only a listed (and so checked) ELF kernel.
                p.is_file()
                    && sums
                        .as_ref()
                        .is_none_or(|s| s.lines().any(|l| l.ends_with("  vmlinux")))
            }),
            initrd: dir.join("initrd.cpio"),
            cmdline,
            release,
            port,
            disk,
            settings_port,
            snp_vcpu_type,
        })
    }
}

/// Everything that decides the QEMU command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kind of guest.
    pub tee: Tee,
    /// Acceleration.
    pub accel: Accel,
    /// Whether a KVM internal error at run time moves the VM to TCG
    /// (`--accel auto` without a TEE: the probe passed but KVM failed the
    /// guest later). SNP and TDX guests have no TCG to move to.
    pub tcg_fallback: bool,
    /// The image.
    pub image: Image,
    /// Firmware (`-bios`): the AmdSev OVMF build for SNP, TDVF for TDX; the
    /// measurement depends on it. Not used for `none`.
    pub firmware: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The guest's vsock context id (kernel vhost-vsock only; 3 or more).
    pub cid: u32,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// vsock device.
    pub vsock: VsockDevice,
    /// GPUs to pass through (PCI addresses bound to vfio-pci).
    pub gpus: Vec<String>,
    /// TDX: the host's Quote Generation Service socket (vsock CID:port or a
    /// Unix path), if quotes are made by a QGS on this host.
    pub qgs: Option<String>,
    /// Where sockets, the serial log and the pid files go.
    pub run_dir: PathBuf,
    /// The provider's settings (canonical CBOR of
    /// `cocoon_protocol::settings::ProviderSettings`) handed to every boot
    /// of the enclave on the image's settings port.
    pub provider_settings: Option<Vec<u8>>,
}

/// The files and address of one planned VM.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// QEMU's arguments.
    pub qemu_args: Vec<String>,
    /// `vhost-device-vsock`'s arguments, when the user-space device is used.
    pub vsock_args: Option<Vec<String>>,
    /// Where the broker reaches the enclave.
    pub enclave_addr: EnclaveAddr,
    /// The guest's serial console log.
    pub serial_log: PathBuf,
    /// The vhost-user socket (user-space vsock only).
    pub vhost_socket: Option<PathBuf>,
}

/// The kernel command line for this VM: the image's own for SNP and TDX
/// (it is measured; changing it changes the launch digest), and for `none`
/// the same line with the enclave's `--tee` set to `simulated`, because a
/// VM without a TEE has no hardware to attest with.
pub fn cmdline_for(tee: Tee, image_cmdline: &str) -> Result<String, String> {
    if tee != Tee::None {
        return Ok(image_cmdline.to_string());
    }
    let (kernel, init) = image_cmdline
        .split_once(" -- ")
        .ok_or("the image's command line has no \" -- \" before the enclave's arguments")?;
    let mut args: Vec<&str> = init.split_whitespace().collect();
    match args.iter().position(|a| *a == "--tee") {
        Some(i) if i + 1 < args.len() => args[i + 1] = "simulated",
        _ => return Err("the image's command line does not pass --tee to the enclave".into()),
    }
    Ok(format!("{kernel} -- {}", args.join(" ")))
}

/// Plans a VM: QEMU's arguments, the vsock device's and the enclave address.
pub fn plan(c: &VmConfig) -> Result<VmPlan, String> {
    if c.vcpus == 0 || c.memory_mib < 256 {
        return Err("a guest needs at least 1 vCPU and 256 MiB of memory".into());
    }
    if c.tee != Tee::None && c.accel != Accel::Kvm {
        return Err(format!(
            "--tee {} needs KVM (SEV-SNP and TDX guests cannot run under TCG)",
            c.tee.as_str()
        ));
    }
    if c.tee != Tee::None && c.firmware.is_none() {
        return Err(
            "--tee snp|tdx needs --firmware (the measured OVMF/TDVF build from images/firmware)"
                .into(),
        );
    }
    let s = |x: &str| x.to_string();
    let serial_log = c.run_dir.join("serial.log");
    let mut a: Vec<String> = vec![
        s("-nodefaults"),
        s("-nographic"),
        s("-no-reboot"),
        s("-monitor"),
        s("none"),
        s("-serial"),
        format!("file:{}", serial_log.display()),
        s("-smp"),
        c.vcpus.to_string(),
        s("-m"),
        format!("{}M", c.memory_mib),
    ];
    let mem = format!(
        "memory-backend-memfd,id=ram0,size={}M,share=on",
        c.memory_mib
    );
    match c.tee {
        Tee::None => {
            let accel = match c.accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg",
            };
            a.extend([
                s("-machine"),
                format!("q35,accel={accel},memory-backend=ram0"),
                s("-object"),
                mem,
                s("-cpu"),
                // Under TCG a CPU without AVX: QEMU emulates SSE far faster
                // than AVX, and libtorch picks its kernels by what the CPU
                // offers (measured in the image test: an embedding 18.4 s
                // with `-cpu max`, 3.4 s with Nehalem; a 7-token chat over
                // 300 s, 37 s).
                s(if c.accel == Accel::Kvm {
                    "host"
                } else {
                    "Nehalem"
                }),
            ]);
        }
        Tee::Snp => {
            a.extend([
                s("-machine"),
                s("q35,accel=kvm,confidential-guest-support=sev0,memory-backend=ram0,vmport=off"),
                s("-object"),
                mem,
                s("-object"),
                s("sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"),
                s("-cpu"),
                c.image.snp_vcpu_type.clone(),
            ]);
        }
        Tee::Tdx => {
            let mut obj = s("tdx-guest,id=tdx0");
            if let Some(q) = &c.qgs {
                let addr = match q.split_once(':') {
                    Some((cid, port)) if cid.parse::<u32>().is_ok() => {
                        format!("{{\"type\":\"vsock\",\"cid\":\"{cid}\",\"port\":\"{port}\"}}")
                    }
                    _ => format!("{{\"type\":\"unix\",\"path\":\"{q}\"}}"),
                };
                obj = format!("{{\"qom-type\":\"tdx-guest\",\"id\":\"tdx0\",\"quote-generation-socket\":{addr}}}");
            }
            a.extend([
                s("-machine"),
                s("q35,accel=kvm,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram0"),
                s("-object"),
                mem,
                s("-object"),
                obj,
                s("-cpu"),
                s("host"),
            ]);
        }
    }
    if let Some(fw) = &c.firmware {
        if c.tee != Tee::None {
            a.extend([s("-bios"), fw.display().to_string()]);
        }
    }
    let kernel = match (&c.image.kernel_elf, c.tee) {
        (Some(elf), Tee::None) => elf,
        _ => &c.image.kernel,
    };
    a.extend([
        s("-kernel"),
        kernel.display().to_string(),
        s("-initrd"),
        c.image.initrd.display().to_string(),
        s("-append"),
        cmdline_for(c.tee, &c.image.cmdline)?,
    ]);
    if let Some(disk) = &c.image.disk {
        // The root disk, read-only: the guest maps it with dm-verity
        // against the root hash on the measured command line. The first
        // virtio-blk device is /dev/vda in the guest.
        let path = disk.display().to_string();
        if path.contains(',') {
            return Err(format!(
                "the disk path {path:?} contains a comma, which QEMU's -drive cannot take"
            ));
        }
        a.extend([
            s("-drive"),
            format!("file={path},if=none,id=root,format=raw,readonly=on"),
            s("-device"),
            s("virtio-blk-pci,drive=root"),
        ]);
    }
    let (vsock_args, enclave_addr, vhost_socket) = match &c.vsock {
        VsockDevice::Kernel => {
            if c.cid < 3 {
                return Err(format!("guest CID {} is reserved; use 3 or more", c.cid));
            }
            a.extend([s("-device"), format!("vhost-vsock-pci,guest-cid={}", c.cid)]);
            (
                None,
                EnclaveAddr::Vsock {
                    cid: c.cid,
                    port: c.image.port,
                },
                None,
            )
        }
        VsockDevice::User { .. } => {
            let vhost = c.run_dir.join("vhost-vsock.sock");
            let uds = c.run_dir.join("vsock.sock");
            a.extend([
                s("-chardev"),
                format!("socket,id=vsock0,path={}", vhost.display()),
                s("-device"),
                s("vhost-user-vsock-pci,chardev=vsock0"),
            ]);
            let cid = c.cid.max(3);
            (
                Some(vec![
                    s("--vm"),
                    format!(
                        "guest-cid={cid},socket={},uds-path={}",
                        vhost.display(),
                        uds.display()
                    ),
                ]),
                EnclaveAddr::HybridVsock {
                    path: uds,
                    port: c.image.port,
                },
                Some(vhost),
            )
        }
    };
    for gpu in &c.gpus {
        if !gpu
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!(
                "--gpu {gpu:?} is not a PCI address like 0000:41:00.0"
            ));
        }
        a.extend([s("-device"), format!("vfio-pci,host={gpu}")]);
    }
    if !c.gpus.is_empty() && c.tee != Tee::None {
        // An H100's 64-bit BARs do not fit OVMF's default MMIO window.
        a.extend([s("-fw_cfg"), s("name=opt/ovmf/X-PciMmio64Mb,string=262144")]);
    }
    Ok(VmPlan {
        qemu_args: a,
        vsock_args,
        enclave_addr,
        serial_log,
        vhost_socket,
    })
}

pub mod kvm;

/// Starts the VM, restarts it when it ends (backing off while it keeps
/// failing quickly), and stops it when `stop` turns true.
#[derive(Debug)]
pub struct Supervisor {
    config: VmConfig,
    plan: VmPlan,
}

/// A VM run that lasted at least this long resets the restart back-off.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The longest pause between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Supervisor {
    /// A supervisor for `config` (the plan is made now, so a bad
    /// configuration fails before anything starts).
    pub fn new(config: VmConfig) -> Result<Supervisor, String> {
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.run_dir.display()))?;
        let plan = plan(&config)?;
        Ok(Supervisor { config, plan })
    }

    /// The plan (command lines, enclave address).
    pub fn plan(&self) -> &VmPlan {
        &self.plan
    }

    /// Runs until `stop` is true: starts the VM, waits for it, restarts it.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let mut boots = 0u64;
        loop {
            if *stop.borrow() {
                return;
            }
            boots += 1;
            let started = Instant::now();
            let mut kvm_failed_guest = false;
            match self.start().await {
                Ok((mut qemu, mut device, mut kvm_failed)) => {
                    tracing::info!(boot = boots, release = %self.config.image.release, tee = self.config.tee.as_str(), accel = ?self.config.accel, "VM started");
                    let settings = self.settings_handoff();
                    tokio::pin!(settings);
                    let mut handed = false;
                    let ended = loop {
                        tokio::select! {
                            status = qemu.wait() => break Ended::Exited(status),
                            _ = stop.changed() => break Ended::Stopped,
                            true = async { kvm_failed.wait_for(|failed| *failed).await.is_ok() } => break Ended::KvmFailed,
                            r = &mut settings, if !handed => {
                                handed = true;
                                if let Err(reason) = r {
                                    tracing::error!(boot = boots, %reason, "the enclave refused the provider settings; stopping the VM and not restarting it (fix --provider-settings)");
                                    let _ = qemu.kill().await;
                                    if let Some(d) = device.as_mut() {
                                        let _ = d.kill().await;
                                    }
                                    return;
                                }
                            }
                        }
                    };
                    match ended {
                        Ended::Exited(status) => {
                            let tail = serial_tail(&self.plan.serial_log);
                            tracing::warn!(boot = boots, status = ?status.ok(), ran_ms = started.elapsed().as_millis() as u64, serial_tail = %tail, "VM ended; restarting");
                        }
                        Ended::KvmFailed => {
                            // QEMU keeps a VM that KVM failed paused for
                            // ever: end it.
                            let _ = qemu.kill().await;
                            let tail = serial_tail(&self.plan.serial_log);
                            tracing::error!(boot = boots, ran_ms = started.elapsed().as_millis() as u64, serial_tail = %tail, "KVM stopped the guest with an internal error");
                            kvm_failed_guest = true;
                        }
                        Ended::Stopped => {
                            tracing::info!("stopping the VM");
                            let _ = qemu.kill().await;
                        }
                    }
                    if let Some(d) = device.as_mut() {
                        let _ = d.kill().await;
                    }
                }
                Err(e) => tracing::error!(boot = boots, error = %e, "cannot start the VM"),
            }
            if *stop.borrow() {
                return;
            }
            if kvm_failed_guest && self.config.tcg_fallback && self.config.accel == Accel::Kvm {
                let mut config = self.config.clone();
                config.accel = Accel::Tcg;
                match plan(&config) {
                    Ok(p) => {
                        tracing::warn!("--accel auto: KVM passed the probe but cannot run this guest; restarting it under QEMU's software emulation (TCG), slowly");
                        eprintln!("cocoon-host: KVM failed the guest; the VM now runs under TCG (software emulation), slowly");
                        self.config = config;
                        self.plan = p;
                        backoff = Duration::from_secs(1);
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot plan the VM under TCG"),
                }
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Hands the provider's settings to the booting enclave: connects to
    /// the image's settings port until the guest listens, sends them once
    /// and reads the answer. `Err` only when the enclave refused them;
    /// with no settings (or no settings port) it returns at once.
    async fn settings_handoff(&self) -> Result<(), String> {
        let (Some(cbor), Some(port)) = (
            &self.config.provider_settings,
            self.config.image.settings_port,
        ) else {
            if self.config.image.settings_port.is_some() {
                tracing::warn!("the image's release takes provider settings and none were given (--provider-settings): the enclave will not start serving");
            }
            return Ok(());
        };
        let addr = match &self.plan.enclave_addr {
            EnclaveAddr::Vsock { cid, .. } => EnclaveAddr::Vsock { cid: *cid, port },
            EnclaveAddr::HybridVsock { path, .. } => EnclaveAddr::HybridVsock {
                path: path.clone(),
                port,
            },
            EnclaveAddr::Unix(p) => EnclaveAddr::Unix(p.clone()),
        };
        loop {
            // Bounded: a hybrid-vsock device may take a CONNECT before the
            // guest's vsock driver is up and never answer it; the next
            // attempt, once the guest listens, goes through.
            let attempt = tokio::time::timeout(SETTINGS_ATTEMPT, send_settings(&addr, cbor)).await;
            match attempt.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                Ok(SettingsAnswer::Accepted(digest)) => {
                    tracing::info!(settings_sha256 = %digest, "the enclave took the provider settings");
                    return Ok(());
                }
                Ok(SettingsAnswer::Refused(reason)) => return Err(reason),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Starts the vsock device (if user-space) and QEMU; the receiver
    /// turns true when QEMU reports a KVM internal error.
    async fn start(&self) -> Result<(Child, Option<Child>, watch::Receiver<bool>), String> {
        let mut device = None;
        if let (VsockDevice::User { binary }, Some(args), Some(sock)) = (
            &self.config.vsock,
            &self.plan.vsock_args,
            &self.plan.vhost_socket,
        ) {
            let _ = std::fs::remove_file(sock);
            if let EnclaveAddr::HybridVsock { path, .. } = &self.plan.enclave_addr {
                let _ = std::fs::remove_file(path);
            }
            let child = tied_to_us(binary)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            // QEMU connects to the device's socket at start: wait for it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not create {}",
                        binary.display(),
                        sock.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            device = Some(child);
        }
        let mut qemu = tied_to_us(&self.config.qemu)
            .args(&self.plan.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.config.qemu.display()))?;
        let (failed, kvm_failed) = watch::channel(false);
        if let Some(stderr) = qemu.stderr.take() {
            kvm::watch_stderr(stderr, failed);
        }
        Ok((qemu, device, kvm_failed))
    }
}

/// `name` in `PATH` (or `~/.cargo/bin`), if it is there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A command for `program` that dies with the host agent: through
/// util-linux's `setpriv --pdeathsig KILL` where it is installed (the
/// kernel kills the child when its parent goes, even on SIGKILL, which
/// `kill_on_drop` cannot see), else `program` itself.
fn tied_to_us(program: &Path) -> Command {
    match find_in_path("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// How one run of the VM ended.
enum Ended {
    /// QEMU exited.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The host agent is stopping.
    Stopped,
    /// KVM stopped the guest (QEMU printed a KVM internal error).
    KvmFailed,
}

/// The longest one settings exchange may take (connect, send, answer): the
/// enclave answers as soon as it has checked them against the release.
pub const SETTINGS_ATTEMPT: Duration = Duration::from_secs(20);

/// What the enclave said to the provider settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsAnswer {
    /// Taken; the SHA-256 (hex) of the settings it took.
    Accepted(String),
    /// Refused, and why.
    Refused(String),
}

/// One settings exchange (`cocoon_enclave::boot_settings`): a 4-byte
/// big-endian length and the CBOR, then one answer line (`ok <hex>` or
/// `refused <reason>`, at most 4 KiB).
pub async fn send_settings(addr: &EnclaveAddr, cbor: &[u8]) -> std::io::Result<SettingsAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut io = crate::broker::connect(addr).await?;
    let len = u32::try_from(cbor.len()).map_err(|_| std::io::Error::other("settings too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(cbor).await?;
    let mut answer = Vec::new();
    (&mut io).take(4096).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or("").trim();
    if let Some(d) = line.strip_prefix("ok ") {
        Ok(SettingsAnswer::Accepted(d.to_string()))
    } else if let Some(r) = line.strip_prefix("refused ") {
        Ok(SettingsAnswer::Refused(r.to_string()))
    } else {
        Err(std::io::Error::other(format!("unexpected answer {line:?}")))
    }
}

/// The last lines of the serial log, for the log line of a VM that ended.
fn serial_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tee: Tee) -> VmConfig {
        VmConfig {
            tee,
            accel: if tee == Tee::None {
                Accel::Tcg
            } else {
                Accel::Kvm
            },
            tcg_fallback: false,
            image: Image {
                kernel: "/img/vmlinuz".into(),
                kernel_elf: Some("/img/vmlinux".into()),
                initrd: "/img/initrd.cpio".into(),
                cmdline:
                    "console=ttyS0 panic=-1 -- --tee configfs-tsm --config /etc/cocoon/enclave.toml"
                        .into(),
                release: "r".into(),
                port: 5000,
                disk: Some("/img/disk.img".into()),
                settings_port: Some(5001),
                snp_vcpu_type: "EPYC-v4".into(),
            },
            firmware: Some("/fw/OVMF.fd".into()),
            vcpus: 2,
            memory_mib: 1024,
            cid: 7,
            qemu: "qemu-system-x86_64".into(),
            vsock: VsockDevice::Kernel,
            gpus: vec![],
            qgs: None,
            run_dir: "/run/vm".into(),
            provider_settings: None,
        }
    }

    fn joined(p: &VmPlan) -> String {
        p.qemu_args.join(" ")
    }

    #[test]
    fn snp_uses_kernel_hashes_memfd_and_the_measured_cmdline() {
        let p = plan(&config(Tee::Snp)).unwrap();
        let j = joined(&p);
        assert!(j.contains("sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"));
        assert!(j.contains("confidential-guest-support=sev0"));
        assert!(j.contains("memory-backend-memfd,id=ram0,size=1024M"));
        assert!(j.contains("-bios /fw/OVMF.fd"));
        assert!(
            j.contains("-cpu EPYC-v4"),
            "the image's measured vCPU model: {j}"
        );
        assert!(j.contains("--tee configfs-tsm"), "{j}");
        assert!(
            j.contains("-kernel /img/vmlinuz"),
            "SNP boots the measured bzImage: {j}"
        );
        assert_eq!(p.enclave_addr, EnclaveAddr::Vsock { cid: 7, port: 5000 });
        assert!(
            j.contains("-drive file=/img/disk.img,if=none,id=root,format=raw,readonly=on -device virtio-blk-pci,drive=root"),
            "the root disk is attached read-only: {j}"
        );
    }

    #[test]
    fn the_image_names_its_snp_vcpu_model_and_disk() {
        let dir = std::env::temp_dir().join(format!("cocoon-vm-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cmdline.txt"),
            "console=ttyS0 -- --tee configfs-tsm",
        )
        .unwrap();
        let env = |extra: &str| {
            std::fs::write(
                dir.join("image.env"),
                format!("IMAGE_RELEASE=r\nENCLAVE_VSOCK_PORT=5000\nENCLAVE_SETTINGS_PORT=5001\nDISK=disk.img\n{extra}"),
            )
            .unwrap();
        };
        env("SNP_VCPU_TYPE=EPYC-Genoa\n");
        let img = Image::load(&dir).unwrap();
        assert_eq!(img.snp_vcpu_type, "EPYC-Genoa");
        assert_eq!(img.settings_port, Some(5001));
        assert_eq!(img.disk, Some(dir.join("disk.img")));
        env("");
        assert_eq!(
            Image::load(&dir).unwrap().snp_vcpu_type,
            DEFAULT_SNP_VCPU_TYPE
        );
        env("SNP_VCPU_TYPE=EPYC,kvm=off\n");
        assert!(
            Image::load(&dir).is_err(),
            "no QEMU option injection through the model"
        );
        std::fs::write(
            dir.join("image.env"),
            "IMAGE_RELEASE=r\nENCLAVE_VSOCK_PORT=5000\nDISK=../etc/passwd\n",
        )
        .unwrap();
        assert!(
            Image::load(&dir).is_err(),
            "the disk is a file of the image directory"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_tee_attaches_the_root_disk_the_same_way() {
        for tee in [Tee::Snp, Tee::Tdx, Tee::None] {
            let mut c = config(tee);
            c.gpus = vec!["0000:41:00.0".into()];
            let j = joined(&plan(&c).unwrap());
            assert!(
                j.contains("file=/img/disk.img,if=none,id=root,format=raw,readonly=on"),
                "{tee:?}: {j}"
            );
            assert!(j.contains("virtio-blk-pci,drive=root"), "{tee:?}: {j}");
            assert!(j.contains("vfio-pci,host=0000:41:00.0"), "{tee:?}: {j}");
        }
        let mut c = config(Tee::Snp);
        c.image.disk = Some("/img/a,b.img".into());
        assert!(plan(&c).is_err(), "a comma would inject -drive options");
    }

    #[test]
    fn tdx_uses_the_tdx_guest_object_and_a_qgs_when_given() {
        let mut c = config(Tee::Tdx);
        c.qgs = Some("2:4050".into());
        c.gpus = vec!["0000:41:00.0".into()];
        let j = joined(&plan(&c).unwrap());
        assert!(j.contains("confidential-guest-support=tdx0"));
        assert!(j.contains("kernel-irqchip=split"));
        assert!(j.contains(
            "\"quote-generation-socket\":{\"type\":\"vsock\",\"cid\":\"2\",\"port\":\"4050\"}"
        ));
        assert!(j.contains("vfio-pci,host=0000:41:00.0"));
        assert!(j.contains("X-PciMmio64Mb"));
    }

    #[test]
    fn none_swaps_in_the_simulated_provider_and_user_vsock() {
        let mut c = config(Tee::None);
        c.vsock = VsockDevice::User {
            binary: "vhost-device-vsock".into(),
        };
        let p = plan(&c).unwrap();
        let j = joined(&p);
        assert!(j.contains("--tee simulated"), "{j}");
        assert!(j.contains("-kernel /img/vmlinux"), "{j}");
        assert!(!j.contains("-bios"));
        assert!(j.contains("accel=tcg"));
        assert!(j.contains("vhost-user-vsock-pci,chardev=vsock0"));
        assert_eq!(
            p.enclave_addr,
            EnclaveAddr::HybridVsock {
                path: "/run/vm/vsock.sock".into(),
                port: 5000
            }
        );
        let v = p.vsock_args.unwrap().join(" ");
        assert!(v.contains("uds-path=/run/vm/vsock.sock"), "{v}");
    }

    #[test]
    fn refusals() {
        let mut c = config(Tee::Snp);
        c.accel = Accel::Tcg;
        assert!(plan(&c).unwrap_err().contains("needs KVM"));
        let mut c = config(Tee::Tdx);
        c.firmware = None;
        assert!(plan(&c).unwrap_err().contains("--firmware"));
        let mut c = config(Tee::Snp);
        c.gpus = vec!["0000:41:00.0,x-evil=1".into()];
        assert!(plan(&c).is_err());
        let mut c = config(Tee::None);
        c.image.cmdline = "console=ttyS0".into();
        assert!(plan(&c).is_err());
        let mut c = config(Tee::Snp);
        c.cid = 2;
        assert!(plan(&c).is_err());
    }
}
