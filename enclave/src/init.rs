//! The enclave as PID 1 of the guest image.
//!
//! In the guest image the kernel starts `cocoon-enclave` directly as `/init`
//! from the initramfs: there is no shell, no init system, no login and no
//! network besides vsock. Before the enclave proper starts, PID 1 must do
//! the little an init system would:
//!
//! 1. mount `/proc`, `/sys`, `/dev` (devtmpfs) and configfs at
//!    `/sys/kernel/config` (where configfs-tsm lives);
//! 2. load the kernel modules named, in order, in `/etc/cocoon/modules`
//!    (one path per line, relative to `/`, already decompressed at image
//!    build time): configfs, the TSM report core, `sev-guest` / `tdx-guest`
//!    and the virtio vsock transport. A TEE driver that answers "no such
//!    device" (`ENODEV`: the guest is not that kind of TEE) is skipped with a
//!    log line; any other failure stops the boot;
//! 3. when the enclave returns, power the VM off (`reboot(2)`) instead of
//!    returning: PID 1 exiting would panic the kernel. The host's supervisor
//!    sees QEMU exit and starts a fresh VM.
//!
//! Outside PID 1 (a process on a host, the tests) none of this runs.

use std::fs;
use std::path::Path;
use std::time::Instant;

use nix::mount::{mount, MsFlags};

/// The module list the image builder writes.
pub const MODULE_LIST: &str = "/etc/cocoon/modules";

/// Modules whose `ENODEV` means "this guest is not that kind of TEE".
const PLATFORM_DRIVERS: &[&str] = &["sev-guest.ko", "tdx-guest.ko"];

/// Why the guest cannot be brought up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// A file system could not be mounted.
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The OS error.
        source: nix::Error,
    },
    /// The module list or a module could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel refused a module.
    #[error("cannot load kernel module {path}: {source}")]
    Module {
        /// The module file.
        path: String,
        /// The OS error.
        source: nix::Error,
    },
}

/// Whether this process is the guest's PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Mounts the pseudo file systems and loads the image's modules. Prints one
/// line per step to stderr (the serial console) with how long it took.
pub fn prepare() -> Result<(), InitError> {
    let start = Instant::now();
    let mounts: [(&'static str, &'static str, &'static str, MsFlags); 4] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec()),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec()),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        ),
        (
            "configfs",
            "/sys/kernel/config",
            "configfs",
            nosuid_nodev_noexec(),
        ),
    ];
    // configfs is a module in Debian's kernel: the first three mounts come
    // first, then the modules, then configfs.
    for (source, target, fstype, flags) in &mounts[..3] {
        mount_one(source, target, fstype, *flags)?;
    }
    load_modules(Path::new(MODULE_LIST))?;
    let (source, target, fstype, flags) = mounts[3];
    mount_one(source, target, fstype, flags)?;
    eprintln!(
        "cocoon-init: guest prepared in {} ms",
        start.elapsed().as_millis()
    );
    Ok(())
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

fn mount_one(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
) -> Result<(), InitError> {
    // The initramfs has the mount points; create them anyway (idempotent)
    // so a hand-made initramfs still boots.
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, None::<&str>) {
        Ok(()) => Ok(()),
        // Already mounted (devtmpfs may be automounted by the kernel).
        Err(nix::Error::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype,
            target,
            source,
        }),
    }
}

/// Loads each module named in `list`, in order.
pub fn load_modules(list: &Path) -> Result<(), InitError> {
    let text = fs::read_to_string(list).map_err(|source| InitError::Read {
        path: list.display().to_string(),
        source,
    })?;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = format!("/{}", line.trim_start_matches('/'));
        let t = Instant::now();
        let file = fs::File::open(&path).map_err(|source| InitError::Read {
            path: path.clone(),
            source,
        })?;
        let name = Path::new(&path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => eprintln!(
                "cocoon-init: loaded {name} ({} ms)",
                t.elapsed().as_millis()
            ),
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
pub fn power_off(success: bool) -> ! {
    let how = if success { "stopped" } else { "failed" };
    eprintln!("cocoon-init: the enclave {how}; powering off");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(if success { 0 } else { 70 })
}
