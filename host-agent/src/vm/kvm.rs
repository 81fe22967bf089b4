//! Does KVM work here, for this guest? `/dev/kvm` opening is not enough:
//! nested and paravirtual KVMs exist that accept a VM and then stop it
//! part-way through the guest kernel's boot with a "KVM internal error"
//! (an instruction their emulator cannot handle, such as `cmpxchg16b` on
//! memory they emulate), or that never get past the firmware. QEMU then
//! pauses the VM and never exits, which looks like a guest that is slow to
//! boot.
//!
//! So the probe boots the image's own kernel and initramfs, with the
//! guest's memory size and vCPU count, and an init that does not exist:
//! a kernel that gets as far as looking for its init has come through
//! memory and device setup, and panics at once; with `panic=-1` and
//! `-no-reboot` QEMU then exits by itself. Anything else (QEMU still
//! running at the deadline, a KVM internal error on its error stream, an
//! exit without the panic) means KVM cannot run this guest here.
//!
//! The run-time half is [`watch_stderr`]: the supervisor passes QEMU's
//! error stream through it, and a KVM internal error after the probe has
//! passed ends the VM instead of leaving it paused forever.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Image;

/// How long the probe guest may take to reach its init (a 3 GiB guest
/// gets there in a second or two under a working KVM).
pub const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(30);

/// The text QEMU prints when KVM stops a vCPU it cannot run further.
pub const KVM_INTERNAL_ERROR: &str = "KVM internal error";

/// What the probe kernel prints once it has found no init to run.
const PROBE_PANIC: &str = "Kernel panic";

/// Boots `image`'s kernel under KVM with `vcpus` and `memory_mib` (see the
/// module documentation). `Ok` when the kernel reached its init; `Err` says
/// what happened instead. Blocking (up to [`KVM_PROBE_DEADLINE`]): call it
/// before the runtime starts.
pub fn probe(qemu: &Path, image: &Image, vcpus: u32, memory_mib: u32) -> Result<(), String> {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = opens {
        return Err(format!("/dev/kvm: {e}"));
    }
    let kernel = image.kernel_elf.as_ref().unwrap_or(&image.kernel);
    let mut child = std::process::Command::new(qemu)
        .args(["-nodefaults", "-nographic", "-no-reboot", "-monitor", "none"])
        .args(["-serial", "stdio"])
        .args(["-smp", &vcpus.to_string(), "-m", &format!("{memory_mib}M")])
        // The guest's own memory layout: the same backend as `plan`.
        .args(["-machine", "q35,accel=kvm,memory-backend=ram0"])
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=ram0,size={memory_mib}M,share=on"
        ))
        .args(["-cpu", "host"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args([
            "-append",
            "console=ttyS0 loglevel=4 panic=-1 rdinit=/cocoon-kvm-probe-no-init init=/cocoon-kvm-probe-no-init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let console = collect(child.stdout.take());
    let errors = collect(child.stderr.take());
    let deadline = Instant::now() + KVM_PROBE_DEADLINE;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for the probe VM: {e}"));
            }
        }
        if text(&errors).contains(KVM_INTERNAL_ERROR) || Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The readers end with the process; give them a moment to drain.
    std::thread::sleep(Duration::from_millis(50));
    let (console, errors) = (text(&console), text(&errors));
    let reached_init = console.contains(PROBE_PANIC);
    match exited {
        Some(_) if reached_init => Ok(()),
        _ if errors.contains(KVM_INTERNAL_ERROR) => Err(format!(
            "the probe guest stopped with a KVM internal error: {}",
            first_line_with(&errors, KVM_INTERNAL_ERROR)
        )),
        Some(status) => Err(format!(
            "QEMU exited ({status}) before the probe kernel reached its init; it printed: {}",
            tail(&format!("{console}{errors}"))
        )),
        None => Err(format!(
            "the probe kernel did not reach its init within {} s; its console: {}",
            KVM_PROBE_DEADLINE.as_secs(),
            tail(&console)
        )),
    }
}

fn collect<R: Read + Send + 'static>(stream: Option<R>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut stream) = stream {
        let sink = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = sink.lock() {
                    // Enough to find the markers; a runaway console is cut.
                    if b.len() < 1 << 20 {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        });
    }
    buf
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    buf.lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or(needle)
        .trim()
        .to_string()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Passes QEMU's error stream through to ours, line by line, and turns
/// `failed` true on a KVM internal error (after which QEMU keeps the VM
/// paused and never exits by itself).
pub fn watch_stderr(
    stderr: tokio::process::ChildStderr,
    failed: tokio::sync::watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if line.contains(KVM_INTERNAL_ERROR) {
                let _ = failed.send(true);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_is_a_reason_not_a_pass() {
        let dir = std::env::temp_dir();
        let image = Image {
            kernel: dir.join("no-such-kernel"),
            kernel_elf: None,
            initrd: dir.join("no-such-initrd"),
            cmdline: String::new(),
            release: "t".into(),
            port: 1,
            disk: None,
            settings_port: None,
            snp_vcpu_type: "EPYC-v4".into(),
        };
        let r = probe(Path::new("/nonexistent/qemu-system-x86_64"), &image, 1, 256);
        assert!(r.is_err());
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\nd\ne\n"), "b | c | d | e");
        assert_eq!(
            first_line_with("x\nKVM internal error. Suberror: 1\ny", KVM_INTERNAL_ERROR),
            "KVM internal error. Suberror: 1"
        );
    }
}
