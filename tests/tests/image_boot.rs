//! The built guest image boots under QEMU and serves a sealed request.
//!
//! `cocoon-host launch --tee none` starts the image from `images/build.sh`
//! (Debian's kernel, the static `cocoon-enclave` as PID 1 of the
//! initramfs) under QEMU, KVM where `/dev/kvm` works and TCG otherwise,
//! with vsock through the kernel's vhost-vsock or `vhost-device-vsock`. The
//! host agent's broker reaches the enclave over vsock, verifies its
//! evidence, and a client sends a sealed chat request through the real
//! guest and gets a receipt signed inside it.
//!
//! `--tee none` has no TEE: the enclave inside runs the SIMULATED provider
//! (NOT CONFIDENTIAL). What this shows is the image, PID 1, the modules,
//! vsock and the sealed path in a real VM; SEV-SNP and TDX launches need
//! hardware this machine does not have.
//!
//! Needs the image (`images/build.sh`, run by `scripts/test.sh`), QEMU and,
//! without `/dev/vhost-vsock`, `vhost-device-vsock`. When any is missing the
//! test fails under CI (`CI` set) and is skipped with a loud message
//! elsewhere.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_client::{Client, ResponsePart};
use cocoon_protocol::message::{ChatMessage, FinishReason, Role};
use cocoon_protocol::receipt::verify_receipt;
use cocoon_tests::procs::{bin, field, Proc, TempDir};
use common::*;

fn image_dir() -> PathBuf {
    std::env::var_os("COCOON_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("images/out/image")
        })
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} >/dev/null || test -x \"$HOME/.cargo/bin/{cmd}\""),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What is missing to boot the image here, if anything.
fn missing() -> Option<String> {
    let dir = image_dir();
    if !dir.join("SHA256SUMS").is_file() {
        return Some(format!(
            "no image at {} (run images/build.sh)",
            dir.display()
        ));
    }
    if !have("qemu-system-x86_64") {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    if !std::path::Path::new("/dev/vhost-vsock").exists() && !have("vhost-device-vsock") {
        return Some("no /dev/vhost-vsock and no vhost-device-vsock (cargo install vhost-device-vsock --version 0.3.0)".into());
    }
    None
}

fn skip_or_fail() -> bool {
    if let Some(why) = missing() {
        if std::env::var_os("CI").is_some() {
            panic!("the image boot test cannot run under CI: {why}");
        }
        eprintln!("SKIPPED image boot test: {why}");
        return true;
    }
    false
}

/// The PID 1 binary and the enclave config, read back from the image's
/// initramfs, give the measurement the simulated provider reports.
fn expected_simulated_measurement() -> [u8; 48] {
    let cpio = std::fs::read(image_dir().join("initrd.cpio")).unwrap();
    let entries = cocoon_image::read_newc(&cpio).expect("the image's initramfs parses");
    let file = |path: &str| {
        entries
            .iter()
            .find(|e| e.entry.path == path)
            .and_then(|e| match &e.entry.kind {
                cocoon_image::Kind::File(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} is not a file in the initramfs"))
    };
    let init = file("init");
    let config_text = String::from_utf8(file("etc/cocoon/enclave.toml")).unwrap();
    let config = cocoon_enclave::EnclaveConfig::from_toml(&config_text).expect("image config");
    cocoon_enclave::attest::simulated_measurement(&init, config.to_canonical_toml().as_bytes())
}

#[test]
fn the_image_boots_and_serves_a_sealed_request_over_vsock() {
    if skip_or_fail() {
        return;
    }
    let dir = TempDir::new("image-boot");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let run_dir = dir.path().join("vm");
    let mut cmd = Command::new(bin("cocoon-host"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .arg("launch")
        .arg("--image")
        .arg(image_dir())
        .args(["--tee", "none", "--vcpus", "1", "--memory-mib", "512"])
        .arg("--run-dir")
        .arg(&run_dir);
    let started = Instant::now();
    let mut host = Proc::spawn("cocoon-host launch", cmd);
    let line = host.wait_for("ready ", Duration::from_secs(120));
    let ready = started.elapsed();
    let serial = std::fs::read_to_string(run_dir.join("serial.log")).unwrap_or_default();
    eprintln!(
        "launch to ready (VM boot + vsock + evidence verified): {} ms",
        ready.as_millis()
    );
    eprintln!("--- guest serial console ---\n{serial}\n---");
    assert!(
        serial.contains("cocoon-init: loaded vmw_vsock_virtio_transport.ko"),
        "PID 1 loaded the vsock transport: {serial}"
    );
    assert!(serial.contains("cocoon-init: guest prepared"), "{serial}");
    let url = format!("http://{}", field(&line, "listen").expect("listen="));
    let admin = format!("http://{}", field(&line, "admin").expect("admin="));

    let account = account();
    let client = Client::new(&url, simulated_policy(), account.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (request_id, text) = rt.block_on(async {
        let provider = client
            .verify()
            .await
            .expect("the guest's evidence verifies");
        let e = &provider.enclaves()[0];
        assert!(
            !e.platform().is_confidential(),
            "--tee none is the simulated provider"
        );
        let cocoon_verifier::enclave::VerifiedPlatform::Simulated(sim) = e.verified().platform()
        else {
            panic!("--tee none must give simulated evidence");
        };
        assert_eq!(
            sim.report().measurement,
            expected_simulated_measurement(),
            "the verified enclave is the image's /init with the image's config"
        );
        let t = Instant::now();
        let mut stream = client
            .chat(
                "cocoon-deterministic-test",
                vec![ChatMessage {
                    role: Role::User,
                    content: "Hello from outside the VM".into(),
                }],
                8,
            )
            .await
            .expect("request accepted");
        let mut text = String::new();
        let done = loop {
            match stream.next().await.expect("authentic chunk") {
                Some(ResponsePart::Text(t)) => text.push_str(&t),
                Some(ResponsePart::Completed(c)) => break c,
                Some(other) => panic!("unexpected part {other:?}"),
                None => panic!("stream ended without its receipt"),
            }
        };
        eprintln!(
            "sealed round trip through the guest: {} ms",
            t.elapsed().as_millis()
        );
        assert_eq!(done.finish, FinishReason::Length);
        assert_eq!(done.usage.completion_tokens, 8);
        let r = verify_receipt(&done.receipt_bytes, e.receipt_public_key()).unwrap();
        assert_eq!(r.client_account, account.id().0);
        (done.request_id, text)
    });
    assert!(
        text.starts_with("This is the Cocoon deterministic"),
        "{text}"
    );
    assert_eq!(ledger_request_ids(&admin), vec![request_id.to_string()]);
    host.terminate(Duration::from_secs(20));
}
