//! Pay per use, end to end with real processes: `cocoon-enclave` (simulated
//! TEE) and `cocoon-host` configured with a payment contract, client SDKs
//! paying from three accounts, `cocoon-host settle` writing the claims,
//! `cocoon-client statement` checking them, and the claims run on the TON
//! payment contract in `@ton/sandbox` (`contracts/scripts/run-claims.mjs`):
//! every claim paid once, a second run refused, and the totals equal to the
//! receipts to the nanoton.
//!
//! The contract step needs Node.js and `contracts/node_modules`
//! (`scripts/ton-deps.sh`); under CI (`CI` set) their absence fails the
//! test, elsewhere it is skipped with a message.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_client::{Client, ClientError, ClientOptions};
use cocoon_protocol::settlement::{ContractAddress, DepositOwner};
use cocoon_test_kit::procs::{bin, TempDir};
use common::*;

const MODEL: &str = "cocoon-deterministic-test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// An enclave with `config`, a host settling on [`CONTRACT`] in front of
/// it, and a runtime for the clients.
fn settling_provider(tag: &str, config: &str) -> (TempDir, Enclave, Host, tokio::runtime::Runtime) {
    let dir = TempDir::new(tag);
    let enclave = start_enclave_with(&dir, "enclave", config);
    let host = start_host(
        &dir,
        &[&enclave.socket],
        &["--settlement-contract", CONTRACT, "--no-deposit-check"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (dir, enclave, host, rt)
}

/// One rule for a request's worst case on both sides
/// (`cocoon_protocol::pricing::max_cost` over the sealed request): a client
/// whose per-request limit equals its authorization cap never sends a
/// request the host then refuses for the cap (402). Before, the client
/// counted the plaintext and the host the sealed request, about 300 bytes
/// (here 300 000 nanoton) more.
#[test]
fn the_clients_price_limit_and_the_hosts_cap_agree() {
    let (_dir, _enclave, host, rt) = settling_provider("e2e-settle-edge", "image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = 1\n[prices.\"cocoon-deterministic-test\"]\nprompt = 1000\ncompletion = 3000\n");
    rt.block_on(async {
        let cap = 600_000;
        let (mut sent, mut held_back) = (0, 0);
        for len in (0..900).step_by(60) {
            let mut o = ClientOptions::default();
            o.budget_nanoton = cap;
            o.max_request_nanoton = Some(u128::from(cap));
            let edge = Client::with_options(&host.url, simulated_policy(), account(), o);
            match edge.chat(MODEL, ask(&"x".repeat(len)), 1).await {
                Ok(stream) => {
                    stream.collect_text().await.expect("verified answer");
                    sent += 1;
                }
                Err(ClientError::OverPrice { .. }) => held_back += 1,
                Err(other) => panic!(
                    "{len}-byte prompt: the client's limit passed it and the host refused: {other:?}"
                ),
            }
        }
        assert!(
            sent > 0 && held_back > 0,
            "the limit cut between: {sent} sent, {held_back} held back"
        );
    });
}

#[test]
fn receipts_settle_on_the_payment_contract_to_the_nanoton() {
    let (dir, _enclave, host, rt) = settling_provider("e2e-settle", "image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = 12\nmax_concurrent = 64\n[pricing]\nmin_multiplier_milli = 1000\nmax_multiplier_milli = 2500\n[prices.\"cocoon-deterministic-test\"]\nprompt = 1000\ncached = 250\ncompletion = 3000\n");

    // Three paying accounts, keys in files (the statement reads them).
    let mut accounts = Vec::new();
    for i in 0..3 {
        let path = dir.path().join(format!("account-{i}.key"));
        let (key, created) = cocoon_client::load_or_create_account_key(&path).unwrap();
        assert!(created);
        accounts.push((path, key));
    }
    // What each account was charged, from the receipts its client verified.
    let mut charged: BTreeMap<String, u128> = BTreeMap::new();
    rt.block_on(async {
        for (i, (_, key)) in accounts.iter().enumerate() {
            let client = Client::new(&host.url, simulated_policy(), key.clone());
            let sheet = client.price_sheet(false).await.unwrap();
            assert_eq!(sheet.settlement.as_ref().unwrap().contract, CONTRACT);
            for j in 0..(3 + i) {
                let stream = client
                    .chat(
                        MODEL,
                        ask(&format!("question {j} from account {i}")),
                        4 + 3 * j as u32,
                    )
                    .await
                    .expect("request accepted");
                let (_, done) = stream.collect_text().await.expect("verified answer");
                assert_eq!(done.receipt.unit_price.prompt, 1000);
                assert_eq!(done.receipt.unit_price.cached, 250);
                assert_eq!(done.receipt.multiplier_milli, 1000);
                *charged.entry(hex::encode(key.id().0)).or_default() +=
                    done.receipt.charge_nanoton().unwrap();
            }
        }
        // A budget below one request's worst case: the host refuses (402)
        // before anything reaches the enclave.
        let mut o = ClientOptions::default();
        o.budget_nanoton = 10_000;
        let poor = Client::with_options(&host.url, simulated_policy(), account(), o);
        match poor.chat(MODEL, ask("too dear"), 8).await {
            Err(ClientError::Status {
                status: 402,
                reason,
            }) => {
                assert!(reason.contains("cap"), "{reason}")
            }
            other => panic!("expected 402, got {other:?}"),
        }
    });
    // The acknowledgements and tabs follow the commits within milliseconds.
    std::thread::sleep(Duration::from_millis(500));

    let out = dir.path().join("settle-1");
    let m = settle(&host, &out, &[]);
    let total: u128 = charged.values().sum();
    let claims = m["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 3, "one claim per account: {m:#}");
    assert!(m["unclaimed"].as_array().unwrap().is_empty(), "{m:#}");
    assert_eq!(
        dec(&m["total_amount"]),
        total,
        "claims = receipts, to the nanoton"
    );
    assert_eq!(dec(&m["ledger"]["nanoton"]), total);
    for c in claims {
        let account = c["account"].as_str().unwrap();
        assert_eq!(dec(&c["amount"]), charged[account], "account {account}");
        assert!(out.join("claim-0001.boc").exists());
    }

    // Each account's statement checks its claim against its receipts.
    for (path, _) in &accounts {
        let (code, stdout) = statement(&host, &dir, path, &out.join("claims.json"));
        assert_eq!(code, 0, "statement:\n{stdout}");
        assert!(stdout.contains(": OK"), "{stdout}");
    }
    // A manifest whose amount was inflated is a discrepancy.
    let mut forged = m.clone();
    let c0 = &mut forged["claims"][0];
    c0["amount"] = serde_json::Value::String((dec(&c0["amount"]) + 1).to_string());
    let forged_path = dir.path().join("forged-claims.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let owner = accounts
        .iter()
        .find(|(_, k)| hex::encode(k.id().0) == forged["claims"][0]["account"].as_str().unwrap())
        .unwrap();
    let (code, stdout) = statement(&host, &dir, &owner.0, &forged_path);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("DISCREPANCY"), "{stdout}");

    // Each client's deposit message, written by the CLI: it names the
    // owner wallet, signed by the account key for this contract.
    let contract = ContractAddress::parse_raw(CONTRACT).unwrap();
    let mut deposit_bodies = Vec::new();
    for (i, (path, key)) in accounts.iter().enumerate() {
        let owner = ContractAddress {
            workchain: 0,
            hash: [i as u8 + 1; 32],
        };
        let boc = dir.path().join(format!("deposit-{i}.boc"));
        let (code, stdout, stderr) = run(Command::new(bin("cocoon-client"))
            .args([
                "payment-message",
                "deposit",
                "--contract",
                CONTRACT,
                "--owner",
            ])
            .arg(owner.to_string())
            .arg("--account-key")
            .arg(path)
            .arg("--out")
            .arg(&boc));
        assert_eq!(code, 0, "{stdout}{stderr}");
        let designation = DepositOwner { contract, owner };
        let signature = key.sign_deposit_owner(&designation);
        designation
            .verify(&key.public_key_sec1(), &signature)
            .unwrap();
        let pk: [u8; 65] = key.public_key_sec1().try_into().unwrap();
        let bytes = std::fs::read(&boc).unwrap();
        assert_eq!(
            bytes,
            cocoon_protocol::ton::deposit_body(0, &pk, &owner, &signature)
                .unwrap()
                .to_boc()
        );
        deposit_bodies.push(bytes);
    }
    // Without --owner the CLI refuses, naming the flag.
    let (code, stdout, stderr) = run(Command::new(bin("cocoon-client"))
        .args([
            "payment-message",
            "deposit",
            "--contract",
            CONTRACT,
            "--account-key",
        ])
        .arg(&accounts[0].0)
        .arg("--out")
        .arg(dir.path().join("no-owner.boc")));
    assert_ne!(code, 0, "{stdout}");
    assert!(stderr.contains("--owner"), "{stderr}");

    // Nothing new: a second run claims nothing.
    let again = settle(&host, &dir.path().join("settle-2"), &[]);
    assert!(again["claims"].as_array().unwrap().is_empty(), "{again:#}");

    // On the contract, in the sandbox.
    let root = repo_root();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let modules = root.join("contracts/node_modules/@ton/sandbox");
    if !node_ok || !modules.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: node and contracts/node_modules are required (scripts/ton-deps.sh)"
        );
        eprintln!("SKIPPED the contract step: no node or no contracts/node_modules (run scripts/ton-deps.sh)");
        return;
    }
    let deposits: Vec<serde_json::Value> = accounts
        .iter()
        .zip(&deposit_bodies)
        .map(|((_, k), body)| {
            serde_json::json!({
                "body": hex::encode(body),
                "amount": (charged[&hex::encode(k.id().0)] + 1_000_000_000).to_string(),
            })
        })
        .collect();
    let deposits_path = dir.path().join("deposits.json");
    std::fs::write(
        &deposits_path,
        serde_json::Value::Array(deposits).to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = run(Command::new("node")
        .arg(root.join("contracts/scripts/run-claims.mjs"))
        .arg("--manifest")
        .arg(out.join("claims.json"))
        .arg("--deposits")
        .arg(&deposits_path)
        .arg("--twice"));
    assert_eq!(code, 0, "run-claims:\n{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let results = r["results"].as_array().unwrap();
    let mut paid = 0u128;
    let mut gas = Vec::new();
    for x in results {
        if x["pass"] == 1 {
            assert_eq!(x["success"], true, "claim paid: {x}");
            paid += dec(&x["paid"]);
            gas.push(dec(&x["gas_used"]));
        } else {
            assert_eq!(
                x["exit_code"], 109,
                "the same claim again is a double claim: {x}"
            );
            assert_eq!(dec(&x["paid"]), 0);
        }
    }
    assert_eq!(results.len(), 6);
    assert_eq!(paid, total, "paid on chain = receipts, to the nanoton");
    assert_eq!(dec(&r["provider_balance"]), total);
    for (_, k) in &accounts {
        let id = hex::encode(k.id().0);
        let c = &r["clients"][&id];
        assert_eq!(
            dec(&c["balance"]),
            charged[&id] + 1_000_000_000 - 10_000_000 - charged[&id],
            "deposit − fee − what its receipts charge, for {id}"
        );
    }
    eprintln!("gas per claim on the sandbox: {gas:?}");
}
