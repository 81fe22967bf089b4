//! The same enclave binary, in the guest and on the host, in one run.
//!
//! The guest: `cocoon-host launch --tee none` on the built image
//! (`COCOON_IMAGE_DIR`, default images/out/image): the enclave from the
//! dm-verity disk, libtorch from the disk, QEMU (KVM where usable, else
//! TCG). The host: the very same files, extracted from the disk with
//! `unsquashfs` (the enclave binary, its libraries, the models and the
//! release configuration with its paths pointed at the extracted tree), run
//! as a process behind a second `cocoon-host`. Both get the same provider
//! settings. Rounds alternate which goes first; printed: medians of one
//! embedding request and of a 16-token chat through the sealed path, and
//! the guest/host ratios.
//!
//! `cargo build --bins && cargo bench -p cocoon-tests --bench guest_path`
//! (needs the image, QEMU, vhost-device-vsock, squashfs-tools and
//! `source scripts/torch-env.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_client::{Client, ResponsePart};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_test_kit::procs::{bin, field, Proc, TempDir};
use cocoon_tests::bench::{interleaved, mode, ms};

const SETTINGS: &str = "[prices.all-minilm-l6-v2]\nprompt = 1\ncompletion = 0\n[prices.smollm2-135m-instruct]\nprompt = 1\ncompletion = 1\n";

fn main() {
    let m = mode(5);
    if m.rounds == 0 {
        return;
    }
    if !m.measuring {
        // Booting the guest under TCG takes a minute and a chat there half
        // of one: the test suite's image_boot covers the same path, so the
        // test run of this bench only says so.
        println!("guest_path: measures under `cargo bench` only (it boots the image); image_boot tests the same path");
        return;
    }
    let image = std::env::var_os("COCOON_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/out/image"));
    let dir = TempDir::new("bench-guest-path");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, cocoon_test_kit::simulated::policy_toml(None)).unwrap();
    let settings = dir.path().join("provider.toml");
    std::fs::write(&settings, SETTINGS).unwrap();

    // The guest.
    let started = Instant::now();
    let mut guest_host = Command::new(bin("cocoon-host"));
    guest_host
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join("guest.db"))
        .args(["--account-rps", "100000", "--account-burst", "100000"])
        .arg("launch")
        .arg("--image")
        .arg(&image)
        .args(["--tee", "none", "--vcpus", "2", "--memory-mib", "3072"])
        .arg("--provider-settings")
        .arg(&settings)
        .arg("--run-dir")
        .arg(dir.path().join("vm"))
        .env("RUST_LOG", "warn");
    let mut guest_host = Proc::spawn("cocoon-host launch", guest_host);
    let line = guest_host.wait_for("ready ", Duration::from_secs(900));
    println!("launch to ready: {:.1} s", started.elapsed().as_secs_f64());
    let guest_url = format!("http://{}", field(&line, "listen").unwrap());

    // The host: the disk's own files.
    let tree = dir.path().join("tree");
    let st = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&tree)
        .arg(image.join("disk.img"))
        .status()
        .expect("unsquashfs runs");
    assert!(st.success(), "unsquashfs failed");
    let release = std::fs::read_to_string(tree.join("etc/cocoon/enclave.toml")).unwrap();
    let release = release
        .replace("listen = \"vsock:5000\"\n", "")
        .replace("\"/models/", &format!("\"{}/models/", tree.display()));
    let cfg = dir.path().join("release.toml");
    std::fs::write(&cfg, release).unwrap();
    let sock = dir.path().join("enclave.sock");
    let mut enclave = Command::new(tree.join("usr/bin/cocoon-enclave"));
    enclave
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--tee", "simulated"])
        .arg("--provider-settings")
        .arg(&settings)
        .env(
            "LD_LIBRARY_PATH",
            format!(
                "{0}/usr/lib/cocoon:{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
                tree.display()
            ),
        )
        .env("RUST_LOG", "warn");
    let mut enclave = Proc::spawn("cocoon-enclave (host)", enclave);
    enclave.wait_for("ready listen=", Duration::from_secs(300));
    let mut host = Command::new(bin("cocoon-host"));
    host.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join("host.db"))
        .arg("--enclave")
        .arg(format!("unix:{}", sock.display()))
        .args(["--account-rps", "100000", "--account-burst", "100000"])
        .env("RUST_LOG", "warn");
    let mut host = Proc::spawn("cocoon-host", host);
    let line = host.wait_for("ready ", Duration::from_secs(60));
    let host_url = format!("http://{}", field(&line, "listen").unwrap());

    let policy = cocoon_test_kit::simulated::policy(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guest = Client::new(&guest_url, policy.clone(), AccountKey::generate(&mut OsRng));
    let local = Client::new(&host_url, policy, AccountKey::generate(&mut OsRng));
    rt.block_on(guest.verify()).expect("guest verified");
    rt.block_on(local.verify()).expect("host process verified");

    let input =
        vec!["Confidential inference reads this prompt only inside the enclave.".to_owned()];
    let mut g = || {
        rt.block_on(guest.embeddings("all-minilm-l6-v2", input.clone()))
            .is_ok()
    };
    let mut h = || {
        rt.block_on(local.embeddings("all-minilm-l6-v2", input.clone()))
            .is_ok()
    };
    let t = interleaved(m.rounds, &mut [&mut g, &mut h]);
    println!(
        "embedding (1 input): guest {}, host {}; guest/host = {:.2} (throughput host/guest)",
        ms(t[0]),
        ms(t[1]),
        t[0].as_secs_f64() / t[1].as_secs_f64()
    );

    let msgs = vec![ChatMessage {
        role: Role::User,
        content: "Name three colours.".into(),
    }];
    let chat = |c: &Client| {
        rt.block_on(async {
            let mut s = c
                .chat("smollm2-135m-instruct", msgs.clone(), 16)
                .await
                .ok()?;
            loop {
                match s.next().await.ok()? {
                    Some(ResponsePart::Completed(d)) => return Some(d.usage.completion_tokens),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .is_some()
    };
    let mut g = || chat(&guest);
    let mut h = || chat(&local);
    let t = interleaved(m.rounds, &mut [&mut g, &mut h]);
    println!(
        "chat (16 tokens): guest {}, host {}; guest/host = {:.2}",
        ms(t[0]),
        ms(t[1]),
        t[0].as_secs_f64() / t[1].as_secs_f64()
    );
    host.terminate(Duration::from_secs(10));
    enclave.terminate(Duration::from_secs(10));
    guest_host.terminate(Duration::from_secs(30));
}
