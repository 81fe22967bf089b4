//! The built guest image boots under QEMU and serves real models.
//!
//! `cocoon-host launch --tee none` starts the image from `images/build.sh`
//! (Debian's kernel; the static `cocoon-init` as PID 1 of the initramfs,
//! which maps the root disk with dm-verity against the root hash on the
//! command line and starts the enclave from it, linked against the disk's
//! libtorch) under QEMU (KVM where a probe boot of the image's kernel works
//! under it, TCG otherwise; one guest at a time), with the disk attached
//! read-only and vsock through the kernel's vhost-vsock or
//! `vhost-device-vsock`. The host hands the provider's settings over
//! vsock, its broker verifies the enclave's evidence, and a client gets
//! MiniLM embeddings and a SmolLM2 answer through the real guest, equal to
//! the Python references, with receipts at the provider's prices. Disks
//! with a flipped data byte, a flipped hash-tree byte, or other model bytes
//! (a consistent disk with another root hash) never serve.
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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_client::{Client, ResponsePart};
use cocoon_protocol::message::{ChatMessage, FinishReason, Role};
use cocoon_protocol::receipt::verify_receipt;
use cocoon_protocol::settings::ProviderSettings;
use cocoon_test_kit::procs::{bin, field, Proc, TempDir};
use cocoon_tests::models::{chat_reference, max_abs_diff, reference};
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

/// One guest at a time: on 2 cores, three emulated guests side by side
/// (TCG, where KVM cannot run them) each take longer than their deadlines.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it leaves it poisoned; the guard
    // only orders the tests.
    ONE_VM.lock().unwrap_or_else(|e| e.into_inner())
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

/// A file of the root disk (squashfs), read with `unsquashfs -cat`.
fn disk_file(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(image.join("disk.img"))
        .arg(path)
        .output()
        .expect("unsquashfs (squashfs-tools) runs");
    assert!(
        out.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What the image build says of itself (`image.env`).
fn image_env(image: &Path, key: &str) -> String {
    let env = std::fs::read_to_string(image.join("image.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("image.env has no {key}"))
        .to_string()
}

/// The enclave binary and the release config, read back from the disk,
/// give the measurement the simulated provider reports.
fn expected_simulated_measurement(image: &Path) -> [u8; 48] {
    let exe = disk_file(image, "usr/bin/cocoon-enclave");
    let config_text = String::from_utf8(disk_file(image, "etc/cocoon/enclave.toml")).unwrap();
    let config = cocoon_enclave::EnclaveConfig::from_toml(&config_text).expect("release config");
    cocoon_enclave::attest::simulated_measurement(&exe, config.to_canonical_toml().as_bytes())
}

const CONTRACT: &str = "0:c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";

fn settings_toml(embed_prompt: u64, chat_prompt: u64) -> String {
    format!(
        "payment_contract = \"{CONTRACT}\"\nmax_concurrent = 4\n\n\
         [prices.all-minilm-l6-v2]\nprompt = {embed_prompt}\ncompletion = 0\n\n\
         [prices.smollm2-135m-instruct]\nprompt = {chat_prompt}\ncompletion = 9\n"
    )
}

/// `cocoon-host launch --tee none` on `image` with these provider settings.
fn launch(dir: &TempDir, image: &Path, settings: &str) -> (Proc, PathBuf) {
    launch_named(dir, "vm", image, settings)
}

/// As [`launch`], with its own run directory (serial log) `name`.
fn launch_named(dir: &TempDir, name: &str, image: &Path, settings: &str) -> (Proc, PathBuf) {
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let settings_file = dir.path().join(format!("{name}-provider.toml"));
    std::fs::write(&settings_file, settings).unwrap();
    let run_dir = dir.path().join(name);
    let mut cmd = Command::new(bin("cocoon-host"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        // The first token of a chat on an emulated CPU can take longer than
        // the default minute to come.
        .args(["--first-frame-timeout", "300", "--idle-timeout", "120"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join(format!("{name}-ledger.db")))
        .arg("launch")
        .arg("--image")
        .arg(image)
        .args(["--tee", "none", "--vcpus", "2", "--memory-mib", "3072"])
        // `auto` unless COCOON_IMAGE_ACCEL says otherwise: a host whose
        // /dev/kvm passes the probe but cannot boot a guest needs `tcg`.
        .arg("--accel")
        .arg(std::env::var("COCOON_IMAGE_ACCEL").unwrap_or_else(|_| "auto".into()))
        .arg("--provider-settings")
        .arg(&settings_file)
        .arg("--run-dir")
        .arg(&run_dir);
    (Proc::spawn("cocoon-host launch", cmd), run_dir)
}

fn serial(run_dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(run_dir.join("serial.log")).unwrap_or_default())
        .into_owned()
}

#[test]
fn the_image_boots_from_its_verity_disk_and_serves_real_models() {
    if skip_or_fail() {
        return;
    }
    let _vm = one_vm_at_a_time();
    let image = image_dir();
    let dir = TempDir::new("image-boot");
    let started = Instant::now();
    let (mut host, run_dir) = launch(&dir, &image, &settings_toml(3, 7));
    // TCG: the kernel, libtorch and 630 MB of models read through
    // dm-verity and hashed, all emulated.
    let line = host.wait_for("ready ", Duration::from_secs(600));
    let ready = started.elapsed();
    let console = serial(&run_dir);
    eprintln!(
        "launch to ready (VM boot, verity disk, libtorch, models, evidence verified): {} ms",
        ready.as_millis()
    );
    eprintln!("--- guest serial console ---\n{console}\n---");
    let root_hex = image_env(&image, "DISK_VERITY_ROOT");
    assert!(
        console.contains(&format!("cocoon-init: verity root {root_hex} mounted")),
        "{console}"
    );
    let url = format!("http://{}", field(&line, "listen").expect("listen="));
    let admin = format!("http://{}", field(&line, "admin").expect("admin="));

    let account = account();
    let client = Client::new(&url, simulated_policy(), account.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let want_chat = chat_reference();
    let want_embed = reference();
    let ids = rt.block_on(async {
        let provider = client
            .verify()
            .await
            .expect("the guest's evidence verifies");
        let e = &provider.enclaves()[0];
        let cocoon_verifier::enclave::VerifiedPlatform::Simulated(sim) = e.verified().platform()
        else {
            panic!("--tee none must give simulated evidence");
        };
        assert_eq!(
            sim.report().measurement,
            expected_simulated_measurement(&image),
            "the verified enclave is the disk's binary with the release's config"
        );
        // The claims name the disk and the models on it.
        let claims = e.claims();
        assert_eq!(
            claims.disk_verity_root.map(hex::encode),
            Some(root_hex.clone())
        );
        let config_text = String::from_utf8(disk_file(&image, "etc/cocoon/enclave.toml")).unwrap();
        let release = cocoon_enclave::EnclaveConfig::from_toml(&config_text).unwrap();
        assert_eq!(claims.config_digest, release.digest());
        for (name, m) in &release.models {
            let d = claims
                .model_digests
                .iter()
                .find(|d| &d.name == name)
                .expect("model in claims");
            assert_eq!(d.sha256, m.sha256.0, "{name}");
            assert_eq!(d.tokenizer_sha256, Some(m.tokenizer_sha256.0), "{name}");
            assert_eq!(d.version, m.version, "{name}");
        }
        // The provider's settings, as handed over vsock, are in the claims.
        let bound = ProviderSettings::from_cbor(
            claims
                .provider_settings
                .as_deref()
                .expect("settings in claims"),
        )
        .unwrap();
        assert_eq!(
            bound,
            ProviderSettings::from_toml(&settings_toml(3, 7)).unwrap()
        );

        let t = Instant::now();
        let r = client
            .embeddings("all-minilm-l6-v2", vec![want_embed.inputs[0].clone()])
            .await
            .expect("embeddings through the guest");
        eprintln!(
            "first answer (embedding) through the guest: {} ms",
            t.elapsed().as_millis()
        );
        let diff = max_abs_diff(&r.embeddings[0], &want_embed.embeddings[0]);
        assert!(
            diff <= 1e-4,
            "max abs diff {diff} against the Python reference"
        );
        assert_eq!(
            r.completed.receipt.unit_price.prompt, 3,
            "the provider's price"
        );
        let embed_id = r.completed.request_id;

        let t = Instant::now();
        let mut stream = client
            .chat(
                "smollm2-135m-instruct",
                vec![ChatMessage {
                    role: Role::User,
                    content: want_chat.prompt.clone(),
                }],
                want_chat.max_tokens,
            )
            .await
            .expect("chat accepted");
        let mut text = String::new();
        let done = loop {
            match stream.next().await.expect("authentic chunk") {
                Some(ResponsePart::Text(t)) => text.push_str(&t),
                Some(ResponsePart::Completed(c)) => break c,
                Some(other) => panic!("unexpected part {other:?}"),
                None => panic!("stream ended without its receipt"),
            }
        };
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "chat through the guest: {} tokens in {secs:.1} s ({:.2} tokens/s)",
            done.usage.completion_tokens,
            done.usage.completion_tokens as f64 / secs
        );
        assert_eq!(text, want_chat.answer, "greedy: the same answer as Python");
        assert_eq!(
            done.finish,
            if want_chat.stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            }
        );
        let receipt = verify_receipt(&done.receipt_bytes, e.receipt_public_key()).unwrap();
        assert_eq!(receipt.client_account, account.id().0);
        assert_eq!(receipt.unit_price.prompt, 7);
        assert_eq!(receipt.unit_price.completion, 9);
        vec![embed_id.to_string(), done.request_id.to_string()]
    });
    // The auditor's view: `cocoon-verify bundle` on the guest's own evidence
    // names the release, the disk and the models.
    let list = rt.block_on(async {
        reqwest::get(format!("{url}/v1/evidence"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let list = cocoon_protocol::api::EvidenceList::from_cbor(&list).expect("evidence list");
    let bundle = dir.path().join("bundle.cbor");
    std::fs::write(&bundle, &list.0[0]).unwrap();
    let policy_file = dir.path().join("release-policy.toml");
    let mut release_policy = simulated_policy();
    release_policy.release = image_env(&image, "IMAGE_RELEASE");
    std::fs::write(&policy_file, release_policy.to_toml()).unwrap();
    let out = Command::new(bin("cocoon-verify"))
        .arg("bundle")
        .arg(&bundle)
        .arg("--policy")
        .arg(&policy_file)
        .output()
        .expect("cocoon-verify runs");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("release {}", image_env(&image, "IMAGE_RELEASE"))),
        "{text}"
    );
    assert!(text.contains(&format!("disk verity  {root_hex}")), "{text}");
    assert!(
        text.contains("model        smollm2-135m-instruct@0.1.2-2 sha256 "),
        "{text}"
    );
    let mut got = ledger_request_ids(&admin);
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    host.terminate(Duration::from_secs(20));
}

/// A copy of the image with its own disk (and no SHA256SUMS: the disk is
/// the one thing that differs, and only dm-verity judges it). Only the
/// disk is copied; the other files are hard links where the file system
/// allows (a copy otherwise). Each copy is removed as soon as its case has
/// run ([`drop_copy`]), so the test never holds more than one extra disk:
/// a CI machine's disk once filled up holding three.
fn image_copy(dir: &TempDir, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = image_dir();
    let dst = dir.path().join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in [
        "vmlinuz",
        "vmlinux",
        "initrd.cpio",
        "cmdline.txt",
        "image.env",
    ] {
        if std::fs::hard_link(src.join(f), dst.join(f)).is_err() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    std::fs::copy(src.join("disk.img"), dst.join("disk.img"))
        .unwrap_or_else(|e| panic!("copying the image's disk into {}: {e}", dst.display()));
    edit(&dst.join("disk.img"));
    dst
}

/// Gives a copy's disk space back once its case has run.
fn drop_copy(copy: &Path) {
    if let Err(e) = std::fs::remove_dir_all(copy) {
        eprintln!("could not remove {}: {e}", copy.display());
    }
}

/// Where `needle` is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|b| *b == first) {
        let at = i + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

/// The byte offset, in the disk, of the chat model's data 1 MiB into the
/// file (uncompressed squashfs stores file data as is).
fn model_offset(disk: &[u8]) -> usize {
    let model = disk_file(&image_dir(), "models/smollm2-135m-instruct/model.pt");
    let needle = &model[1 << 20..(1 << 20) + 64];
    find(disk, needle).expect("the model's bytes are on the disk")
}

fn expect_no_service(image: &Path, dir: &TempDir, what: &str, wanted: &[&str]) {
    let name = what.replace(' ', "-");
    let (mut host, run_dir) = launch_named(dir, &name, image, &settings_toml(3, 7));
    let deadline = Instant::now() + Duration::from_secs(420);
    let mut console = String::new();
    while Instant::now() < deadline {
        console = serial(&run_dir);
        if wanted.iter().all(|w| console.contains(w)) {
            break;
        }
        assert!(
            !host.output().contains("ready "),
            "{what}: the host became ready with a tampered disk\n{console}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("--- {what}: guest console ---\n{console}\n---");
    for w in wanted {
        assert!(console.contains(w), "{what}: expected {w:?} on the console");
    }
    assert!(
        !host.output().contains("ready "),
        "{what}: the host became ready with a tampered disk"
    );
    host.terminate(Duration::from_secs(20));
}

#[test]
fn tampered_disks_never_serve() {
    if skip_or_fail() {
        return;
    }
    let _vm = one_vm_at_a_time();
    let dir = TempDir::new("image-tamper");
    let disk = std::fs::read(image_dir().join("disk.img")).unwrap();
    let cmdline = std::fs::read_to_string(image_dir().join("cmdline.txt")).unwrap();
    let data_blocks: usize = cmdline
        .split_whitespace()
        .skip_while(|a| *a != "--data-blocks")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("--data-blocks on the command line");
    let at = model_offset(&disk);
    drop(disk);

    // 1. One flipped byte in the model's data: the block no longer matches
    //    its hash; reading the model fails, the enclave refuses to start.
    let flipped_data = image_copy(&dir, "data", |d| flip(d, at as u64));
    expect_no_service(
        &flipped_data,
        &dir,
        "flipped data byte",
        &["is corrupted", "cocoon-init: the enclave ended"],
    );
    drop_copy(&flipped_data);

    // 2. One flipped byte in the hash tree: the leaf hash of the model's
    //    block. The tree is stored top level first after the superblock,
    //    so the leaf level is last: 128 SHA-256 hashes per 4 KiB block.
    let mut levels = vec![data_blocks.div_ceil(128)];
    while *levels.last().unwrap() > 1 {
        levels.push(levels.last().unwrap().div_ceil(128));
    }
    let upper: usize = levels[1..].iter().sum();
    let leaf_start = (data_blocks + 1 + upper) * 4096;
    let leaf = leaf_start + (at / 4096) * 32;
    let flipped_tree = image_copy(&dir, "tree", |d| flip(d, leaf as u64));
    expect_no_service(
        &flipped_tree,
        &dir,
        "flipped hash-tree byte",
        &["is corrupted", "cocoon-init: the enclave ended"],
    );
    drop_copy(&flipped_tree);

    // 3. Other model bytes in a consistent disk (its own, valid hash tree
    //    and root): the measured command line names the release's root, so
    //    the disk cannot even be mounted.
    let other = image_copy(&dir, "other", |d| {
        let mut f = std::fs::OpenOptions::new().write(true).open(d).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
        drop(f);
        let salt = cmdline
            .split_whitespace()
            .skip_while(|a| *a != "--verity-salt")
            .nth(1)
            .unwrap()
            .to_string();
        let out = Command::new("veritysetup")
            .arg("format")
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--hash-offset={}", data_blocks * 4096))
            .arg(format!("--salt={salt}"))
            .arg(d)
            .arg(d)
            .output()
            .expect("veritysetup runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    expect_no_service(
        &other,
        &dir,
        "a disk with other model bytes",
        &["VERITY: the root disk does not match the measured root hash"],
    );
    drop_copy(&other);
}

fn flip(disk: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

#[test]
fn settings_outside_the_release_bounds_are_refused_at_boot() {
    if skip_or_fail() {
        return;
    }
    let _vm = one_vm_at_a_time();
    let dir = TempDir::new("image-bounds");
    // The release allows at most 100000 nanoton per chat prompt token.
    let (mut host, run_dir) = launch(&dir, &image_dir(), &settings_toml(3, 100_001));
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline && !host.output().contains("refused the provider settings") {
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = host.output();
    eprintln!("--- guest console ---\n{}\n---", serial(&run_dir));
    assert!(out.contains("refused the provider settings"), "{out}");
    assert!(out.contains("outside the release's bounds"), "{out}");
    assert!(!out.contains("ready "), "{out}");
    host.terminate(Duration::from_secs(20));
}
