//! The registry's message bodies as the Rust side builds them, written to
//! `contracts/test/fixtures/registry-rust.json`; `contracts/test/
//! registry.test.mjs` sends every one of them to the registry contract in
//! the sandbox (each must be accepted, with the effect its op names) and
//! compares it with the JavaScript builder's cell. This test fails when the
//! committed file is not what the builders make now; run it with
//! `COCOON_WRITE_FIXTURES=1` to rewrite the file, then `npm test` in
//! contracts/.
//!
//! The payment code's hash and depth come from the committed build
//! (`contracts/build/cocoon_payment.json`), as the registry is deployed
//! with them.

use cocoon_protocol::registry::*;
use cocoon_protocol::settlement::ContractAddress;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn addr(s: &str) -> ContractAddress {
    ContractAddress::parse_raw(s).expect("raw address")
}

#[test]
fn registry_bodies_fixture() {
    let build: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("contracts/build/cocoon_payment.json")).expect("payment build"),
    )
    .expect("json");
    let code_hash: [u8; 32] = hex::decode(build["codeHash"].as_str().expect("codeHash"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let code_depth = u16::try_from(build["codeDepth"].as_u64().expect("codeDepth")).expect("u16");

    let owner = addr(&format!("0:{}", "01".repeat(32)));
    let next_owner = addr(&format!("0:{}", "02".repeat(32)));
    let treasury = addr(&format!("-1:{}", "03".repeat(32)));
    let provider = addr(&format!("0:{}", "5a".repeat(32)));
    let fee_bps = 250u16;

    let init = payment_init_data(&provider, 3600, &treasury, fee_bps).unwrap();
    let payment = payment_contract_address(&code_hash, code_depth, &init);
    let init2 = payment_init_data(&provider, 7200, &treasury, fee_bps).unwrap();
    let payment2 = payment_contract_address(&code_hash, code_depth, &init2);
    let release = [0x77u8; 32];
    // Digests chosen so the dictionary has forks at several depths and
    // labels of each kind (all-zero and all-one keys take hml_same).
    let mut d3 = [0u8; 32];
    d3[31] = 1;
    let measurements = vec![
        (PLATFORM_SNP, [0xa1; 32]),
        (PLATFORM_TDX, [0xa2; 32]),
        (PLATFORM_SIMULATED, [0; 32]),
        (PLATFORM_SNP, d3),
        (PLATFORM_TDX, [0xff; 32]),
    ];
    let long_endpoint = format!("https://{}.example:8443/v1", "p".repeat(200));

    let msgs: Vec<(&str, &ContractAddress, Vec<u8>)> = vec![
        (
            "add_release",
            &owner,
            add_release_body(1, &release, &measurements)
                .unwrap()
                .to_boc(),
        ),
        (
            "add_release_one",
            &owner,
            add_release_body(2, &[0x78; 32], &[(PLATFORM_SNP, [0x42; 32])])
                .unwrap()
                .to_boc(),
        ),
        (
            "revoke_release",
            &owner,
            revoke_release_body(3, &[0x78; 32]).unwrap().to_boc(),
        ),
        (
            "set_fee",
            &owner,
            set_fee_body(4, fee_bps).unwrap().to_boc(),
        ),
        (
            "propose_owner",
            &owner,
            propose_owner_body(5, &next_owner).unwrap().to_boc(),
        ),
        (
            "cancel_owner_transfer",
            &owner,
            cancel_owner_transfer_body(6).unwrap().to_boc(),
        ),
        (
            "propose_owner_again",
            &owner,
            propose_owner_body(7, &next_owner).unwrap().to_boc(),
        ),
        (
            "accept_owner",
            &next_owner,
            accept_owner_body(8).unwrap().to_boc(),
        ),
        (
            "register_provider",
            &provider,
            register_provider_body(9, &payment, "https://provider.example:8443", init.clone())
                .unwrap()
                .to_boc(),
        ),
        (
            "update_provider_endpoint",
            &provider,
            update_provider_body(10, &long_endpoint, None)
                .unwrap()
                .to_boc(),
        ),
        (
            "update_provider_payment",
            &provider,
            update_provider_body(11, "http://10.0.0.7:8080", Some((&payment2, init2.clone())))
                .unwrap()
                .to_boc(),
        ),
        (
            "deregister_provider",
            &provider,
            deregister_provider_body(12).unwrap().to_boc(),
        ),
    ];
    let fixture = serde_json::json!({
        "comment": "written by protocol/tests/registry_fixture.rs (COCOON_WRITE_FIXTURES=1); sent to the registry by contracts/test/registry.test.mjs",
        "owner": owner.to_string(),
        "next_owner": next_owner.to_string(),
        "treasury": treasury.to_string(),
        "provider": provider.to_string(),
        "fee_bps": fee_bps,
        "payment_code_hash": hex::encode(code_hash),
        "payment_code_depth": code_depth,
        "release": hex::encode(release),
        "measurements": measurements
            .iter()
            .map(|(p, d)| serde_json::json!([hex::encode(d), p]))
            .collect::<Vec<_>>(),
        "long_endpoint": long_endpoint,
        "payment_init": hex::encode(init.to_boc()),
        "payment": payment.to_string(),
        "payment_init_2": hex::encode(init2.to_boc()),
        "payment_2": payment2.to_string(),
        "messages": msgs
            .iter()
            .map(|(name, from, boc)| serde_json::json!({
                "name": name,
                "from": from.to_string(),
                "body": hex::encode(boc),
            }))
            .collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
    let path = root().join("contracts/test/fixtures/registry-rust.json");
    if std::env::var_os("COCOON_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, &text).expect("write fixture");
    }
    // Compared as JSON values: whether `json!` keeps its keys in insertion
    // order depends on serde_json's `preserve_order` feature, which other
    // crates of the workspace turn on (a workspace build and a
    // `-p cocoon-protocol` build print the same fixture in two key orders).
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
    assert!(
        committed == fixture,
        "{} is not what the builders make now: rerun with COCOON_WRITE_FIXTURES=1 and run npm test in contracts/",
        path.display()
    );
}
