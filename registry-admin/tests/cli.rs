//! `cocoon-registry` against the sandbox chain API (a TEST DOUBLE, NOT A
//! TON NETWORK, `contracts/scripts/chain-api.mjs`): deploy, list, revoke,
//! the fee, the two-step ownership transfer, `show`, and each refusal with
//! its exit status. Needs Node.js and `contracts/node_modules`
//! (`scripts/ton-deps.sh`): skipped with a message without them, a
//! failure under CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_protocol::release::{
    Hex, LaunchMeasurement, MinTcb, PriceBounds, PricesFrom, ReleaseManifest, ReleaseModel,
    SimulatedValues,
};
use cocoon_registry_admin::{exit, Wallet};
use cocoon_test_kit::chain::SandboxChain;
use cocoon_test_kit::TempDir;

/// A release of the simulated TEE with these measurements (one per VM
/// shape: 1, 2, ... vCPUs).
fn manifest(name: &str, measurements: &[[u8; 48]]) -> ReleaseManifest {
    let mut m = ReleaseManifest {
        version: 1,
        release: name.into(),
        kernel_sha256: Hex([1; 32]),
        initrd_sha256: Hex([2; 32]),
        cmdline: "console=ttyS0".into(),
        disk_verity_root: Hex([3; 32]),
        models: vec![ReleaseModel {
            name: "cocoon-deterministic-test".into(),
            version: "1".into(),
            sha256: Hex([4; 32]),
            tokenizer_sha256: Hex([5; 32]),
        }],
        prices_from: PricesFrom::Provider,
        price_bounds: [(
            "cocoon-deterministic-test".to_string(),
            PriceBounds {
                prompt: [0, 1_000_000],
                completion: [0, 1_000_000],
            },
        )]
        .into(),
        max_request_lifetime_secs: 600,
        min_tcb: MinTcb {
            snp: None,
            tdx: None,
        },
        measurements: measurements
            .iter()
            .zip(1..)
            .map(|(v, vcpus)| LaunchMeasurement::Simulated {
                vcpus,
                values: SimulatedValues {
                    measurement: Hex(*v),
                },
            })
            .collect(),
    };
    m.sort();
    m
}

fn key_file(dir: &TempDir, name: &str, seed: u8) -> (PathBuf, Wallet) {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.write(name, hex::encode([seed; 32]));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let w = Wallet::new(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]));
    (p, w)
}

struct Tool<'a> {
    chain: &'a SandboxChain,
}

impl Tool<'_> {
    /// Runs `cocoon-registry ARGS --json`: exit status, stdout parsed as
    /// JSON when it is, and stderr.
    fn run(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_cocoon-registry"))
            .args(["--chain-api", &self.chain.endpoint, "--chain-api-rps", "0"])
            .args(["--wait-secs", "20", "--json"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), v, stderr)
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let (code, v, stderr) = self.run(args);
        assert_eq!(code, 0, "cocoon-registry {args:?}: {stderr}");
        v
    }

    fn fails(&self, args: &[&str], want: u8, says: &str) {
        let (code, v, stderr) = self.run(args);
        assert_eq!(
            code,
            i32::from(want),
            "cocoon-registry {args:?}: {v} {stderr}"
        );
        assert!(stderr.contains(says), "{args:?}: {stderr:?} lacks {says:?}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn governance_through_the_tool() {
    let Some(chain) = SandboxChain::start_or_skip(&SandboxChain::contracts_dir()) else {
        return;
    };
    let dir = TempDir::new("registry-admin");
    let tool = Tool { chain: &chain };
    let (owner_key, owner) = key_file(&dir, "owner.key", 11);
    let (next_key, next) = key_file(&dir, "next.key", 12);
    let (stranger_key, _) = key_file(&dir, "stranger.key", 13);
    let treasury = Wallet::new(ed25519_dalek::SigningKey::from_bytes(&[14; 32])).address();

    // An unfunded wallet is refused with its balance, before sending.
    let (code, _, stderr) = tool.run(&[
        "deploy",
        "--wallet-key",
        s(&owner_key),
        "--treasury",
        &treasury.to_string(),
        "--fee-bps",
        "250",
        "--stake",
        "1000000000",
    ]);
    assert_eq!(code, i32::from(exit::REFUSED), "{stderr}");
    assert!(stderr.contains("fund it first"), "{stderr}");

    let w = tool.ok(&["wallet", "--wallet-key", s(&owner_key)]);
    assert_eq!(w["address"], owner.address().to_string());
    for a in [owner.address(), next.address()] {
        chain.fund(&a.to_string(), 5_000_000_000);
    }
    chain.fund(
        &Wallet::new(ed25519_dalek::SigningKey::from_bytes(&[13; 32]))
            .address()
            .to_string(),
        5_000_000_000,
    );

    let deploy = [
        "deploy",
        "--wallet-key",
        s(&owner_key),
        "--treasury",
        &treasury.to_string(),
        "--fee-bps",
        "250",
        "--stake",
        "1000000000",
    ];
    tool.fails(
        &[
            "deploy",
            "--wallet-key",
            s(&owner_key),
            "--treasury",
            &treasury.to_string(),
            "--fee-bps",
            "1001",
            "--stake",
            "1",
        ],
        exit::USAGE,
        "at most 1000",
    );
    let d = tool.ok(&deploy);
    assert_eq!(d["changed"], true);
    assert_eq!(d["owner"], owner.address().to_string());
    assert_eq!(d["treasury"], treasury.to_string());
    assert_eq!(d["fee_bps"], 250);
    assert_eq!(d["stake"], "1000000000");
    let registry = d["registry"].as_str().unwrap().to_string();
    // The same settings, the same address: found and checked, not sent.
    let again = tool.ok(&deploy);
    assert_eq!(again["changed"], false);
    assert_eq!(again["registry"], registry.as_str());

    // A manifest that is not the canonical encoding is refused.
    let m1 = manifest("release-one", &[[0x5a; 48], [0x5b; 48]]);
    let canonical = m1.to_canonical().unwrap();
    let pretty = dir.write(
        "pretty.json",
        serde_json::to_string_pretty(
            &serde_json::from_slice::<serde_json::Value>(&canonical).unwrap(),
        )
        .unwrap(),
    );
    let file1 = dir.write("release-one.json", &canonical);
    let hash1 = hex::encode(m1.manifest_hash().unwrap());
    tool.fails(
        &[
            "add-release",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--manifest",
            s(&pretty),
        ],
        exit::DATAERR,
        "canonical",
    );
    tool.fails(
        &[
            "add-release",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--manifest",
            s(&dir.join("absent.json")),
        ],
        exit::NOINPUT,
        "absent.json",
    );
    // Only the owner lists releases (refused before sending).
    tool.fails(
        &[
            "add-release",
            "--wallet-key",
            s(&stranger_key),
            "--registry",
            &registry,
            "--manifest",
            s(&file1),
        ],
        exit::NOPERM,
        "not the owner",
    );
    let add1 = [
        "add-release",
        "--wallet-key",
        s(&owner_key),
        "--registry",
        &registry,
        "--manifest",
        s(&file1),
    ];
    let r = tool.ok(&add1);
    assert_eq!(r["changed"], true);
    assert_eq!(r["manifest_hash"], hash1.as_str());
    assert_eq!(r["status"], "active");
    let digests: Vec<String> = m1
        .measurement_digests()
        .iter()
        .map(|(_, d)| hex::encode(d))
        .collect();
    let mut listed: Vec<String> = r["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["platform"], "simulated");
            m["digest"].as_str().unwrap().to_string()
        })
        .collect();
    listed.sort();
    let mut want = digests.clone();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(tool.ok(&add1)["changed"], false, "a rerun sends nothing");

    let m2 = manifest("release-two", &[[0x77; 48]]);
    let file2 = dir.write("release-two.json", m2.to_canonical().unwrap());
    let hash2 = hex::encode(m2.manifest_hash().unwrap());
    tool.ok(&[
        "add-release",
        "--wallet-key",
        s(&owner_key),
        "--registry",
        &registry,
        "--manifest",
        s(&file2),
    ]);

    // Revoke: unknown hash, then the real one, then again.
    tool.fails(
        &[
            "revoke-release",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--hash",
            &"ab".repeat(32),
        ],
        exit::REFUSED,
        "not listed",
    );
    tool.fails(
        &[
            "revoke-release",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--hash",
            "abc",
        ],
        exit::USAGE,
        "64 hex",
    );
    let revoke = [
        "revoke-release",
        "--wallet-key",
        s(&owner_key),
        "--registry",
        &registry,
        "--hash",
        &hash2,
    ];
    let r = tool.ok(&revoke);
    assert_eq!(r["changed"], true);
    assert_eq!(r["status"], "revoked");
    assert_ne!(r["revoked_at"], 0);
    assert_eq!(tool.ok(&revoke)["changed"], false);
    // A revoked release cannot come back.
    tool.fails(
        &[
            "add-release",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--manifest",
            s(&file2),
        ],
        exit::REFUSED,
        "revoked",
    );

    // The fee.
    tool.fails(
        &[
            "set-fee",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--fee-bps",
            "1500",
        ],
        exit::USAGE,
        "at most 1000",
    );
    let f = tool.ok(&[
        "set-fee",
        "--wallet-key",
        s(&owner_key),
        "--registry",
        &registry,
        "--fee-bps",
        "300",
    ]);
    assert_eq!(
        (f["changed"].clone(), f["fee_bps"].clone()),
        (true.into(), 300.into())
    );

    // Ownership in two steps.
    tool.fails(
        &[
            "accept-owner",
            "--wallet-key",
            s(&next_key),
            "--registry",
            &registry,
        ],
        exit::NOPERM,
        "not the proposed owner",
    );
    let p = tool.ok(&[
        "propose-owner",
        "--wallet-key",
        s(&owner_key),
        "--registry",
        &registry,
        "--new-owner",
        &next.address().to_friendly(true, false),
    ]);
    assert_eq!(p["pending_owner"], next.address().to_string());
    tool.fails(
        &[
            "accept-owner",
            "--wallet-key",
            s(&stranger_key),
            "--registry",
            &registry,
        ],
        exit::NOPERM,
        "not the proposed owner",
    );
    let a = tool.ok(&[
        "accept-owner",
        "--wallet-key",
        s(&next_key),
        "--registry",
        &registry,
    ]);
    assert_eq!(a["owner"], next.address().to_string());
    assert_eq!(a["pending_owner"], serde_json::Value::Null);
    // A proposal can be withdrawn before it is accepted.
    let pr = tool.ok(&[
        "propose-owner",
        "--wallet-key",
        s(&next_key),
        "--registry",
        &registry,
        "--new-owner",
        &owner.address().to_string(),
    ]);
    assert_eq!(pr["pending_owner"], owner.address().to_string());
    let c = tool.ok(&[
        "cancel-owner-transfer",
        "--wallet-key",
        s(&next_key),
        "--registry",
        &registry,
    ]);
    assert_eq!(
        (c["changed"].clone(), c["pending_owner"].clone()),
        (true.into(), serde_json::Value::Null)
    );
    tool.fails(
        &[
            "accept-owner",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
        ],
        exit::NOPERM,
        "not the proposed owner",
    );
    // The old owner has no say any more.
    tool.fails(
        &[
            "set-fee",
            "--wallet-key",
            s(&owner_key),
            "--registry",
            &registry,
            "--fee-bps",
            "100",
        ],
        exit::NOPERM,
        "not the owner",
    );

    // For providers: the payment contract the registry accepts, deployed
    // from the provider's wallet (the stranger's here); a rerun finds it.
    let dp = [
        "deploy-payment",
        "--wallet-key",
        s(&stranger_key),
        "--registry",
        &registry,
        "--withdraw-delay-secs",
        "3600",
    ];
    let pay = tool.ok(&dp);
    assert_eq!(pay["changed"], true);
    assert_eq!(pay["fee_bps"], 300);
    assert_eq!(pay["treasury"], treasury.to_string());
    let stranger = Wallet::new(ed25519_dalek::SigningKey::from_bytes(&[13; 32])).address();
    let info = cocoon_protocol::registry::RegistryInfo {
        owner: next.address(),
        pending_owner: None,
        treasury,
        fee_bps: 300,
        payment_code_hash: cocoon_registry_admin::code_from_boc(
            cocoon_registry_admin::PAYMENT_CODE_BOC,
            "p",
        )
        .unwrap()
        .hash(),
        release_count: 2,
        provider_count: 0,
        payment_code_depth: cocoon_registry_admin::code_from_boc(
            cocoon_registry_admin::PAYMENT_CODE_BOC,
            "p",
        )
        .unwrap()
        .depth(),
        stake: 1_000_000_000,
    };
    assert_eq!(
        pay["payment"],
        info.payment_address_for(&stranger, 3600)
            .unwrap()
            .to_string()
    );
    assert_eq!(tool.ok(&dp)["changed"], false);
    // Another payment code than the registry's is refused.
    let other = dir.write("other.boc", cocoon_registry_admin::REGISTRY_CODE_BOC);
    tool.fails(
        &[
            "deploy-payment",
            "--wallet-key",
            s(&stranger_key),
            "--registry",
            &registry,
            "--payment-code",
            s(&other),
        ],
        exit::REFUSED,
        "accepts only",
    );

    // A message the registry refuses is reported with its exit code (sent
    // here without the tool's checks: a stranger revoking a release).
    let chain_api = std::sync::Arc::new(
        cocoon_chain::TonHttpClient::new(cocoon_chain::ChainApiConfig {
            requests_per_second: 0.0,
            ..cocoon_chain::ChainApiConfig::new(chain.endpoint.clone())
        })
        .unwrap(),
    );
    let sender =
        cocoon_registry_admin::Sender::new(chain_api.clone(), std::time::Duration::from_secs(20));
    let reg = cocoon_registry_admin::Registry::new(
        chain_api,
        cocoon_protocol::settlement::ContractAddress::parse(&registry).unwrap(),
    );
    let stranger_wallet = Wallet::new(ed25519_dalek::SigningKey::from_bytes(&[13; 32]));
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&hash1, &mut hash).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = cocoon_protocol::registry::revoke_release_body(7, &hash).unwrap();
    match rt.block_on(sender.send_op(&stranger_wallet, &reg, body, "a stranger's revoke")) {
        Err(e @ cocoon_registry_admin::AdminError::Refused { exit_code: 201 }) => {
            assert_eq!(e.exit_code(), exit::REFUSED);
            assert!(e.to_string().contains("not the registry's owner"), "{e}");
        }
        other => panic!("expected the registry's refusal 201: {other:?}"),
    }
    assert_eq!(
        rt.block_on(reg.release(&hash)).unwrap().unwrap().status,
        cocoon_protocol::registry::STATUS_ACTIVE
    );

    // show: everything, as read from the chain.
    let v = tool.ok(&["show", "--registry", &registry]);
    assert_eq!(v["owner"], next.address().to_string());
    assert_eq!(v["fee_bps"], 300);
    assert_eq!(v["release_count"], 2);
    let releases = v["releases"].as_array().unwrap();
    let status = |h: &str| {
        releases
            .iter()
            .find(|r| r["manifest_hash"] == h)
            .map(|r| r["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status(&hash1).as_deref(), Some("active"));
    assert_eq!(status(&hash2).as_deref(), Some("revoked"));
    assert!(v["providers"].as_array().unwrap().is_empty());

    // The text form says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-registry"))
        .args([
            "--chain-api",
            &chain.endpoint,
            "--chain-api-rps",
            "0",
            "show",
            "--registry",
            &registry,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!("release {hash2}  revoked at")),
        "{text}"
    );
    assert!(text.contains("fee             300 bps (3.00%)"), "{text}");

    // No registry there, and no chain API at all.
    tool.fails(
        &["show", "--registry", &treasury.to_string()],
        exit::REFUSED,
        "no registry",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-registry"))
        .args([
            "--chain-api",
            "http://127.0.0.1:9/api/v2",
            "--chain-api-rps",
            "0",
            "show",
            "--registry",
            &registry,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNAVAILABLE)));
}

#[test]
fn help_names_every_command_and_the_exit_statuses() {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-registry"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "deploy",
        "add-release",
        "revoke-release",
        "set-fee",
        "propose-owner",
        "accept-owner",
        "cancel-owner-transfer",
        "show",
        "wallet",
        "Exit status",
    ] {
        assert!(text.contains(c), "--help lacks {c}:\n{text}");
    }
    // No --chain-api: a usage error naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon-registry"))
        .args(["show", "--registry", "0:00"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::USAGE)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chain-api"));
}
