//! `cocoon-init`: PID 1 of the Cocoon guest image.
//!
//! The measured initramfs holds this static binary, the kernel modules it
//! loads and nothing else. The kernel starts it as `/init` with the
//! arguments that follow `--` on the measured command line. It:
//!
//! 1. mounts `/proc`, `/sys` and `/dev` (devtmpfs);
//! 2. loads the modules named in `/etc/cocoon/modules`, in order (configfs,
//!    the TSM report core, `sev-guest`/`tdx-guest` (skipped with a log line
//!    when they answer "no such device": not that kind of TEE), vsock,
//!    virtio-blk, device-mapper, dm-verity, squashfs), then mounts configfs
//!    at `/sys/kernel/config` (configfs-tsm lives there);
//! 3. maps the root disk with dm-verity, its root hash and salt taken from
//!    the command line (`verity`), through the device-mapper ioctls
//!    (`cocoon_guest_device::dm`): Debian's kernel has device-mapper as a
//!    module, so `dm-mod.create=` (DM_INIT, built-in only) is not available;
//! 4. mounts the mapped squashfs read-only (no device nodes, no set-uid),
//!    moves `/proc`, `/sys` and `/dev` into it, adds a `noexec` tmpfs at
//!    `/tmp`, and changes its root to it: from then on every byte of code
//!    and every model file is read through dm-verity;
//! 5. runs the enclave from the disk (`--exec`, dynamically linked against
//!    the libtorch on the same disk) with the arguments that follow its
//!    path plus `--disk-verity-root HEX`, and waits for it;
//! 6. powers the VM off when the enclave ends or anything above fails: PID
//!    1 exiting would panic the kernel. The host's supervisor sees QEMU exit
//!    and boots a fresh VM (new keys, new evidence).
//!
//! There is no shell, no login and no network besides vsock. A block that
//! fails verification is an I/O error for that read and is logged by the
//! kernel ("data block N is corrupted"); it is never retried from anywhere
//! else: a file the enclave cannot read whole is refused, and code that
//! faults on a bad page ends the enclave and with it the VM.
#![forbid(unsafe_code)]

mod verity;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use verity::InitArgs;

/// The module list the image builder writes.
const MODULE_LIST: &str = "/etc/cocoon/modules";
/// Where the verity root is mounted before PID 1 moves into it.
const NEW_ROOT: &str = "/sysroot";
/// The device node PID 1 makes for the mapping.
const MAPPED_NODE: &str = "/dev/cocoon-root";
/// The mapping's device-mapper name and UUID.
const DM_NAME: &str = "cocoon-root";
const DM_UUID: &str = "COCOON-VERITY-ROOT";
/// Modules whose `ENODEV` means "not this kind of machine": the TEE
/// drivers on the other kind of guest, AES-NI on a CPU without it.
const PLATFORM_DRIVERS: &[&str] = &["sev-guest.ko", "tdx-guest.ko", "aesni-intel.ko"];
/// How long to wait for the disk to appear after virtio-blk loads.
const DISK_WAIT: Duration = Duration::from_secs(20);
/// Library path of the programs on the disk (libtorch, the C++ runtime).
const DISK_LIBRARY_PATH: &str = "/usr/lib/cocoon:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu";

/// Why the guest cannot be brought up.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        source: nix::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load kernel module {path}: {source}")]
    Module { path: String, source: nix::Error },
    #[error("bad arguments: {0}")]
    Args(#[from] verity::ParamError),
    #[error("the root disk {0} did not appear within {1:?}")]
    NoDisk(String, Duration),
    #[error(
        "the root disk {disk} has {have} bytes; the measured command line needs at least {need}"
    )]
    ShortDisk { disk: String, have: u64, need: u64 },
    #[error("cannot map the dm-verity root: {0}")]
    Dm(#[from] cocoon_guest_device::dm::DmError),
    #[error(
        "VERITY: the root disk does not match the measured root hash {root} \
         (mounting it failed: {source}); refusing to run anything from it"
    )]
    Verity { root: String, source: nix::Error },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: nix::Error,
    },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
}

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "cocoon-init: this is PID 1 of the Cocoon guest image; it does nothing elsewhere"
        );
        std::process::exit(64);
    }
    let ok = match boot() {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("cocoon-init: {e}");
            false
        }
    };
    power_off(ok)
}

fn boot() -> Result<bool, InitError> {
    let start = Instant::now();
    let args = verity::parse_args(std::env::args().skip(1))?;
    let nsnd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_one("proc", "/proc", "proc", nsnd, None)?;
    mount_one("sysfs", "/sys", "sysfs", nsnd, None)?;
    mount_one(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None,
    )?;
    load_modules(Path::new(MODULE_LIST))?;
    mount_one("configfs", "/sys/kernel/config", "configfs", nsnd, None)?;
    eprintln!(
        "cocoon-init: modules loaded in {} ms",
        start.elapsed().as_millis()
    );

    map_and_enter(&args)?;
    // After the chroot: the kernel's firmware loader shares PID 1's root
    // (PID 1 runs with CLONE_FS), so the GSP firmware is found on the disk.
    load_gpu_modules(Path::new("/"), Path::new("/sys/bus/pci/devices"))?;
    eprintln!(
        "cocoon-init: verity root {} mounted; starting {} ({} ms since PID 1 started)",
        args.verity.root_hex(),
        args.exec,
        start.elapsed().as_millis()
    );
    run(&args)
}

/// Maps the disk, mounts it read-only at [`NEW_ROOT`], moves the pseudo
/// file systems into it and makes it the root.
fn map_and_enter(args: &InitArgs) -> Result<(), InitError> {
    let v = &args.verity;
    let name = v.disk.trim_start_matches("/dev/");
    let sys_dev = format!("/sys/block/{name}/dev");
    let deadline = Instant::now() + DISK_WAIT;
    let dev = loop {
        match fs::read_to_string(&sys_dev) {
            Ok(s) => break s.trim().to_string(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return Err(InitError::NoDisk(v.disk.clone(), DISK_WAIT)),
        }
    };
    let sectors: u64 = fs::read_to_string(format!("/sys/block/{name}/size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if sectors * 512 < v.min_disk_bytes() {
        return Err(InitError::ShortDisk {
            disk: v.disk.clone(),
            have: sectors * 512,
            need: v.min_disk_bytes(),
        });
    }
    let table = v.table(&dev);
    let mapped = cocoon_guest_device::dm::create_readonly(
        DM_NAME,
        DM_UUID,
        &cocoon_guest_device::dm::Target {
            sectors: v.sectors(),
            target_type: "verity".into(),
            params: table,
        },
    )?;
    mknod(
        MAPPED_NODE,
        SFlag::S_IFBLK,
        Mode::S_IRUSR,
        makedev(mapped.major.into(), mapped.minor.into()),
    )
    .map_err(|source| InitError::Os {
        what: "mknod /dev/cocoon-root",
        source,
    })?;
    let _ = fs::create_dir_all(NEW_ROOT);
    mount(
        Some(MAPPED_NODE),
        NEW_ROOT,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| InitError::Verity {
        root: v.root_hex(),
        source,
    })?;
    for (from, to) in [("/proc", "proc"), ("/sys", "sys"), ("/dev", "dev")] {
        let target = format!("{NEW_ROOT}/{to}");
        mount(
            Some(from),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| InitError::Mount {
            fstype: format!("(move of {from})"),
            target: target.clone(),
            source,
        })?;
    }
    mount_one(
        "tmpfs",
        "/sysroot/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=64m"),
    )?;
    nix::unistd::chroot(NEW_ROOT).map_err(|source| InitError::Os {
        what: "chroot into the verity root",
        source,
    })?;
    nix::unistd::chdir("/").map_err(|source| InitError::Os {
        what: "chdir /",
        source,
    })?;
    Ok(())
}

/// Runs the enclave from the disk and waits for it.
fn run(args: &InitArgs) -> Result<bool, InitError> {
    let mut cmd = Command::new(&args.exec);
    cmd.env_clear()
        .env("LD_LIBRARY_PATH", DISK_LIBRARY_PATH)
        .env("PATH", "/usr/bin")
        .env("HOME", "/tmp")
        // The serial console is a terminal, its log a file: no colours.
        .env("NO_COLOR", "1")
        .args(&args.args)
        .arg("--disk-verity-root")
        .arg(args.verity.root_hex());
    let mut child = cmd.spawn().map_err(|source| InitError::Spawn {
        path: args.exec.clone(),
        source,
    })?;
    match child.wait() {
        Ok(status) => {
            eprintln!("cocoon-init: the enclave ended: {status}");
            Ok(status.success())
        }
        Err(e) => {
            eprintln!("cocoon-init: waiting for the enclave failed: {e}");
            Ok(false)
        }
    }
}

fn mount_one(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    // The initramfs has the mount points; create them anyway so a
    // hand-made initramfs still boots.
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (devtmpfs may be automounted by the kernel).
        Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source,
        }),
    }
}

/// The GPU variant's disk lists NVIDIA's kernel modules (built against this
/// kernel, on the verity disk) in `etc/cocoon/gpu-modules`; they are loaded
/// when an NVIDIA device (PCI vendor 0x10de) is present. Their firmware is
/// found through `firmware_class.path` on the GPU variant's command line.
const GPU_MODULE_LIST: &str = "etc/cocoon/gpu-modules";

/// How many PCI devices of NVIDIA's (vendor 0x10de) are under
/// `pci_devices` (`/sys/bus/pci/devices`).
fn nvidia_devices(pci_devices: &Path) -> usize {
    fs::read_dir(pci_devices)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    fs::read_to_string(e.path().join("vendor"))
                        .map(|v| v.trim().eq_ignore_ascii_case("0x10de"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn load_gpu_modules(root: &Path, pci_devices: &Path) -> Result<(), InitError> {
    let list = root.join(GPU_MODULE_LIST);
    let gpus = nvidia_devices(pci_devices);
    match (list.is_file(), gpus > 0) {
        (true, true) => {
            eprintln!("cocoon-init: NVIDIA GPU present; loading the disk's GPU modules");
            load_modules_from(root, &list)?;
            make_nvidia_nodes(gpus)
        }
        (true, false) => {
            eprintln!("cocoon-init: no NVIDIA GPU; the disk's GPU modules are not loaded");
            Ok(())
        }
        (false, true) => {
            eprintln!("cocoon-init: an NVIDIA GPU is present but this disk has no GPU modules (the CPU variant)");
            Ok(())
        }
        (false, false) => Ok(()),
    }
}

/// The device nodes NVIDIA's driver does not make itself (`nvidia-modprobe`
/// does on a normal system): `/dev/nvidiactl` (char 195:255), one
/// `/dev/nvidiaN` (195:N) per NVIDIA PCI device, and `/dev/nvidia-uvm`,
/// `/dev/nvidia-uvm-tools` (minors 0 and 1 of the major `/proc/devices`
/// gives `nvidia-uvm`).
fn make_nvidia_nodes(count: usize) -> Result<(), InitError> {
    const NVIDIA_MAJOR: u64 = 195;
    let mut nodes = vec![("/dev/nvidiactl".to_string(), NVIDIA_MAJOR, 255)];
    for i in 0..count as u64 {
        nodes.push((format!("/dev/nvidia{i}"), NVIDIA_MAJOR, i));
    }
    let devices = fs::read_to_string("/proc/devices").unwrap_or_default();
    if let Some(uvm) = char_major(&devices, "nvidia-uvm") {
        nodes.push(("/dev/nvidia-uvm".into(), uvm, 0));
        nodes.push(("/dev/nvidia-uvm-tools".into(), uvm, 1));
    }
    for (path, major, minor) in nodes {
        match mknod(
            path.as_str(),
            SFlag::S_IFCHR,
            Mode::S_IRUSR | Mode::S_IWUSR,
            makedev(major, minor),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(InitError::Os {
                    what: "mknod of an NVIDIA device node",
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The major number `/proc/devices` lists for the character device `name`.
fn char_major(devices: &str, name: &str) -> Option<u64> {
    devices
        .lines()
        .skip_while(|l| l.trim() != "Character devices:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (major, n) = l.trim().split_once(' ')?;
            (n.trim() == name).then(|| major.parse().ok()).flatten()
        })
}

/// Loads each module named in `list`, in order.
fn load_modules(list: &Path) -> Result<(), InitError> {
    load_modules_from(Path::new("/"), list)
}

/// Loads each module named in `list` (paths relative to `root`), in order.
fn load_modules_from(root: &Path, list: &Path) -> Result<(), InitError> {
    let text = fs::read_to_string(list).map_err(|source| InitError::Read {
        path: list.display().to_string(),
        source,
    })?;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = root
            .join(line.trim_start_matches('/'))
            .display()
            .to_string();
        let file = fs::File::open(&path).map_err(|source| InitError::Read {
            path: path.clone(),
            source,
        })?;
        let name = Path::new(&path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => {}
            Err(nix::Error::EEXIST) => eprintln!("cocoon-init: {name} is built in or loaded"),
            Err(nix::Error::ENODEV) if PLATFORM_DRIVERS.contains(&name) => {
                eprintln!(
                    "cocoon-init: {name}: no such device here (not this kind of TEE); skipped"
                )
            }
            Err(source) => return Err(InitError::Module { path, source }),
        }
    }
    Ok(())
}

/// Powers the VM off. Never returns: if `reboot(2)` fails, PID 1 exits and
/// the kernel panics, which with `panic=-1` on the command line also ends
/// the VM.
fn power_off(success: bool) -> ! {
    let how = if success { "stopped" } else { "failed" };
    eprintln!("cocoon-init: the guest {how}; powering off");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(if success { 0 } else { 70 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_nvidia_device_by_its_pci_vendor() {
        let dir = std::env::temp_dir().join(format!("cocoon-init-pci-{}", std::process::id()));
        let dev = |name: &str, vendor: &str| {
            let d = dir.join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), vendor).unwrap();
        };
        dev("0000:00:01.0", "0x1af4\n");
        assert_eq!(nvidia_devices(&dir), 0);
        dev("0000:41:00.0", "0x10de\n");
        dev("0000:42:00.0", "0x10DE\n");
        assert_eq!(nvidia_devices(&dir), 2);
        assert_eq!(nvidia_devices(&dir.join("missing")), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_a_character_major_from_proc_devices() {
        let devices = "Character devices:\n  1 mem\n195 nvidia\n509 nvidia-uvm\n\nBlock devices:\n509 nvidia-uvm-not\n";
        assert_eq!(char_major(devices, "nvidia-uvm"), Some(509));
        assert_eq!(char_major(devices, "nvidia"), Some(195));
        assert_eq!(char_major(devices, "missing"), None);
        assert_eq!(char_major("", "nvidia-uvm"), None);
    }
}
