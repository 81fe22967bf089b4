//! One release, many providers: the measured configuration takes its
//! prices from each provider's settings, within the release's bounds.
//!
//! Real processes: `cocoon-enclave` (simulated TEE, deterministic backend,
//! a release config with `prices_from = "provider"`) and `cocoon-host`.
//! Two providers boot the same release with different prices and payment
//! contracts: the same measurement and config digest, different claims, and
//! each client is charged the prices in its provider's claims. Settings
//! outside the bounds are refused at boot; a host whose price sheet or
//! payment contract disagrees with the claims is refused by the client.
//! The settings handoff over a socket (what the host does over vsock)
//! survives garbage and takes the first well-formed settings.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use cocoon_client::{Client, ResponsePart};
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::settings::ProviderSettings;
use cocoon_test_kit::procs::{Proc, TempDir};
use cocoon_verifier::enclave::VerifiedPlatform;
use common::*;

const RELEASE: &str = "image_id = \"cocoon-release-test\"\n\
max_concurrent = 32\n\
prices_from = \"provider\"\n\
\n\
[price_bounds.cocoon-deterministic-test]\n\
prompt = [1, 50]\n\
completion = [1, 100]\n";

const CONTRACT_A: &str = "0:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const CONTRACT_B: &str = "0:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn settings(contract: &str, prompt: u64, completion: u64) -> String {
    format!(
        "payment_contract = \"{contract}\"\n\n[prices.cocoon-deterministic-test]\nprompt = {prompt}\ncompletion = {completion}\n"
    )
}

fn start_provider(dir: &TempDir, name: &str, settings_text: &str) -> Enclave {
    let file = dir.path().join(format!("{name}-provider.toml"));
    std::fs::write(&file, settings_text).unwrap();
    let (mut cmd, socket) = enclave_command(dir, name, RELEASE);
    cmd.arg("--provider-settings").arg(&file);
    let mut proc = Proc::spawn(name, cmd);
    let line = proc.wait_for("ready listen=", READY);
    let evidence_digest = cocoon_test_kit::procs::field(&line, "evidence_digest")
        .unwrap()
        .to_string();
    Enclave {
        proc,
        socket,
        evidence_digest,
    }
}

fn hello() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: "price check".into(),
    }]
}

#[test]
fn two_providers_one_release_each_charged_its_own_claimed_prices() {
    let dir = TempDir::new("release-two");
    let a = start_provider(&dir, "a", &settings(CONTRACT_A, 2, 5));
    let b = start_provider(&dir, "b", &settings(CONTRACT_B, 4, 11));
    let host_a = start_host(
        &dir,
        &[&a.socket],
        &["--settlement-contract", CONTRACT_A, "--no-deposit-check"],
    );
    let dir_b = TempDir::new("release-two-b");
    let host_b = start_host(
        &dir_b,
        &[&b.socket],
        &["--settlement-contract", CONTRACT_B, "--no-deposit-check"],
    );
    let rt = rt();
    let mut seen = Vec::new();
    for (host, prompt, completion, contract) in
        [(&host_a, 2, 5, CONTRACT_A), (&host_b, 4, 11, CONTRACT_B)]
    {
        let client = Client::new(&host.url, simulated_policy(), account());
        let (measurement, claims) = rt.block_on(async {
            let provider = client.verify().await.expect("verified");
            let e = &provider.enclaves()[0];
            let VerifiedPlatform::Simulated(sim) = e.verified().platform() else {
                panic!("simulated")
            };
            let claims = e.claims().clone();
            let bound = ProviderSettings::from_cbor(
                claims
                    .provider_settings
                    .as_deref()
                    .expect("settings in claims"),
            )
            .unwrap();
            assert_eq!(bound.prices["cocoon-deterministic-test"].prompt, prompt);
            assert_eq!(bound.payment_contract.as_deref(), Some(contract));
            let mut stream = client
                .chat("cocoon-deterministic-test", hello(), 4)
                .await
                .expect("accepted");
            let done = loop {
                match stream.next().await.expect("authentic") {
                    Some(ResponsePart::Completed(d)) => break d,
                    Some(_) => {}
                    None => panic!("no receipt"),
                }
            };
            assert_eq!(
                done.receipt.unit_price.prompt, prompt,
                "charged the claimed prompt price"
            );
            assert_eq!(
                done.receipt.unit_price.completion, completion,
                "charged the claimed completion price"
            );
            (sim.report().measurement, claims)
        });
        seen.push((measurement, claims));
    }
    assert_eq!(
        seen[0].0, seen[1].0,
        "one release, one measurement for both providers"
    );
    assert_eq!(
        seen[0].1.config_digest, seen[1].1.config_digest,
        "the same release configuration"
    );
    assert_ne!(
        seen[0].1.provider_settings, seen[1].1.provider_settings,
        "different provider settings in the claims"
    );
    // The measurement does not depend on the settings: the same release
    // with no settings at all would refuse to boot, so compare with a
    // third provider at other prices.
    let c = start_provider(&dir, "c", &settings(CONTRACT_A, 50, 100));
    let host_c = start_host(&TempDir::new("release-two-c"), &[&c.socket], &[]);
    let m = rt.block_on(async {
        let p = Client::new(&host_c.url, simulated_policy(), account())
            .verify()
            .await
            .expect("verified");
        let VerifiedPlatform::Simulated(sim) = p.enclaves()[0].verified().platform() else {
            panic!()
        };
        sim.report().measurement
    });
    assert_eq!(m, seen[0].0);
}

#[test]
fn a_host_settling_elsewhere_than_the_claims_is_refused_by_the_client() {
    let dir = TempDir::new("release-contract");
    let a = start_provider(&dir, "a", &settings(CONTRACT_A, 2, 5));
    // The host's sheet names contract B; the enclave's claims say A.
    let host = start_host(
        &dir,
        &[&a.socket],
        &["--settlement-contract", CONTRACT_B, "--no-deposit-check"],
    );
    let client = Client::new(&host.url, simulated_policy(), account());
    let err = rt().block_on(async {
        client.verify().await.expect("verified");
        match client.chat("cocoon-deterministic-test", hello(), 4).await {
            Ok(_) => panic!("a request was sent to a host that settles on another contract"),
            Err(e) => e.to_string(),
        }
    });
    assert!(err.contains("payment contract"), "{err}");
    assert!(ledger_request_ids(&host.admin).is_empty());
}

#[test]
fn settings_outside_the_bounds_or_malformed_are_refused_at_boot() {
    let dir = TempDir::new("release-bounds");
    for (name, text, why) in [
        (
            "over",
            settings(CONTRACT_A, 51, 5),
            "outside the release's bounds",
        ),
        (
            "under",
            settings(CONTRACT_A, 2, 0),
            "outside the release's bounds",
        ),
        (
            "unknown",
            format!(
                "{}\n[prices.gpt-9]\nprompt = 1\ncompletion = 1\n",
                settings(CONTRACT_A, 2, 5)
            ),
            "not a model this release serves",
        ),
        (
            "contract",
            settings("EQnot-raw", 2, 5),
            "not a raw TON address",
        ),
        (
            "concurrency",
            format!("max_concurrent = 33\n{}", settings(CONTRACT_A, 2, 5)),
            "above the release's",
        ),
    ] {
        let file = dir.path().join(format!("{name}-settings.toml"));
        std::fs::write(&file, text).unwrap();
        let (mut cmd, _) = enclave_command(&dir, name, RELEASE);
        cmd.arg("--provider-settings").arg(&file);
        let (code, _out, err) = run(&mut cmd);
        assert_eq!(code, 78, "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
    // Without settings, a release that takes them does not start.
    let (mut cmd, _) = enclave_command(&dir, "none", RELEASE);
    let (code, _, err) = run(&mut cmd);
    assert_ne!(code, 0);
    assert!(err.contains("provider"), "{err}");
    // And a release with measured prices takes none.
    let file = dir.path().join("measured-settings.toml");
    std::fs::write(&file, settings(CONTRACT_A, 2, 5)).unwrap();
    let (mut cmd, _) = enclave_command(&dir, "measured", "image_id = \"x\"\n");
    cmd.arg("--provider-settings").arg(&file);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("takes no provider settings"), "{err}");
}

fn handoff(path: &std::path::Path, body: &[u8], with_len: bool) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("settings socket");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    if with_len {
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    }
    s.write_all(body).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// An enclave of the release waiting for its settings on a Unix socket.
fn waiting_enclave(tag: &str) -> (TempDir, std::path::PathBuf, Proc) {
    let dir = TempDir::new(tag);
    let settings_sock = dir.path().join("settings.sock");
    let (mut cmd, _socket) = enclave_command(&dir, "e", RELEASE);
    cmd.arg("--settings-listen")
        .arg(format!("unix:{}", settings_sock.display()));
    let mut proc = Proc::spawn("e", cmd);
    proc.wait_for("cocoon-enclave: waiting for the provider's settings", READY);
    (dir, settings_sock, proc)
}

#[test]
fn the_settings_handoff_survives_garbage_and_takes_well_formed_settings() {
    let (_dir, settings_sock, mut proc) = waiting_enclave("release-handoff");
    // A length past the limit, then CBOR that is not settings: refused,
    // and the enclave waits on.
    assert!(handoff(&settings_sock, &[0xff, 0xff, 0xff, 0xff], false).starts_with("refused"));
    assert!(handoff(&settings_sock, &[0xa0], true).starts_with("refused"));
    // A connection that says nothing and goes away.
    drop(std::os::unix::net::UnixStream::connect(&settings_sock).unwrap());
    let good = ProviderSettings::from_toml(&settings(CONTRACT_A, 2, 5))
        .unwrap()
        .to_cbor();
    let answer = handoff(&settings_sock, &good, true);
    assert!(answer.starts_with("ok "), "{answer}");
    proc.wait_for("ready listen=", READY);
    proc.terminate(Duration::from_secs(10));

    // Well-formed but out of bounds: refused, and the boot ends.
    let (_dir, settings_sock, mut proc) = waiting_enclave("release-handoff-bad");
    let bad = ProviderSettings::from_toml(&settings(CONTRACT_A, 99, 5))
        .unwrap()
        .to_cbor();
    let answer = handoff(&settings_sock, &bad, true);
    assert!(
        answer.starts_with("refused") && answer.contains("bounds"),
        "{answer}"
    );
    let status = proc
        .wait_exit(Duration::from_secs(10))
        .expect("the enclave stops");
    assert_eq!(status.code(), Some(78));
}
