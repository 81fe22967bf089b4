//! The production `TonHttpClient`, unchanged, against the sandbox chain API
//! (`contracts/scripts/chain-api.mjs`, A TEST DOUBLE, NOT A TON NETWORK):
//! a wallet v4r2 is funded, deployed by its first external message (with
//! its StateInit), sends TON; its state, its get-method `seqno` and the
//! transactions of both accounts are read back. Plus the wallet's address
//! and signed body against `@ton/ton`'s `WalletContractV4`.
//!
//! Needs Node.js and `contracts/node_modules` (`scripts/ton-deps.sh`); under
//! CI (`CI` set) their absence fails the tests, elsewhere they are skipped
//! with a message.

use std::process::Command;
use std::time::Duration;

use cocoon_chain::http::{ChainApiConfig, TonHttpClient};
use cocoon_chain::wait::{send_and_confirm, wallet_seqno};
use cocoon_chain::wallet::{self, InternalMessage, WalletV4};
use cocoon_chain::{AccountStatus, ChainClient, ChainError, StackValue};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{Cell, CellBuilder};
use cocoon_test_kit::chain::SandboxChain;
use ed25519_dalek::SigningKey;

const TON: u128 = 1_000_000_000;

fn client(endpoint: &str) -> TonHttpClient {
    TonHttpClient::new(ChainApiConfig {
        endpoint: endpoint.into(),
        api_key: None,
        timeout: Duration::from_secs(30),
        max_retries: 2,
        requests_per_second: 0.0,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_deploys_sends_and_reads_back() {
    let Some(chain) = SandboxChain::start_or_skip(&SandboxChain::contracts_dir()) else {
        return;
    };
    assert!(chain.output().contains(cocoon_test_kit::chain::BANNER));
    let c = client(&chain.endpoint);
    let key = SigningKey::from_bytes(&[0x42; 32]);
    let w = WalletV4::new(key.verifying_key().to_bytes());
    let me = w.address();

    // Never seen: nonexistent; the get-method is refused.
    let st = c.account_state(&me).await.unwrap();
    assert_eq!(st.status, AccountStatus::Nonexistent);
    assert_eq!(wallet_seqno(&c, &w).await.unwrap(), (0, false));

    // Funded: uninitialised with a balance.
    chain.fund(&me.to_friendly(false, false), 10 * TON);
    let st = c.account_state(&me).await.unwrap();
    assert_eq!(st.status, AccountStatus::Uninitialized);
    assert_eq!(st.balance, 10 * TON);
    assert!(st.code.is_none());

    // First external message: deploys the wallet and sends 1 TON.
    let dest = ContractAddress {
        workchain: 0,
        hash: [0x77; 32],
    };
    let body = {
        let mut b = CellBuilder::new();
        b.store_uint(0, 32).unwrap().store_bytes(b"cocoon").unwrap();
        b.build()
    };
    let mut m = InternalMessage::transfer(dest, TON, false);
    m.body = Some(body.clone());
    let sent = send_and_confirm(&c, &w, &key, &[m], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(sent.deployed);
    assert_eq!(sent.seqno, 0);

    let st = c.account_state(&me).await.unwrap();
    assert_eq!(st.status, AccountStatus::Active);
    let code = Cell::from_boc(st.code.as_deref().unwrap()).unwrap();
    assert_eq!(code.hash(), wallet::CODE_HASH, "the deployed code is v4r2");
    let data = Cell::from_boc(st.data.as_deref().unwrap()).unwrap();
    let mut d = data.as_slice();
    assert_eq!(d.load_uint(32).unwrap(), 1, "seqno in the data");
    assert_eq!(
        c.run_get_method(&me, "seqno", &[]).await.unwrap(),
        vec![StackValue::Int(cocoon_chain::TvmInt::from_u128(1))]
    );
    assert!(
        st.balance < 9 * TON && st.balance > 8 * TON,
        "{}",
        st.balance
    );

    // The destination got exactly 1 TON (fees paid separately).
    let ds = c.account_state(&dest).await.unwrap();
    assert_eq!(ds.balance, TON);
    let dtx = c.transactions(&dest, 10, None).await.unwrap();
    assert_eq!(dtx.len(), 1);
    assert_eq!(dtx[0].in_source, Some(me));
    assert_eq!(dtx[0].in_value, TON);
    assert_eq!(dtx[0].in_body_hash, Some(body.hash()));
    assert_eq!(
        (dtx[0].success, dtx[0].exit_code),
        (false, -1),
        "no code: compute skipped"
    );

    // Second message, two transfers.
    let two = [
        InternalMessage::transfer(dest, TON / 2, false),
        InternalMessage::transfer(dest, TON / 4, true),
    ];
    let sent = send_and_confirm(&c, &w, &key, &two, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((sent.seqno, sent.deployed), (1, false));
    assert_eq!(wallet_seqno(&c, &w).await.unwrap(), (2, true));

    // The wallet's transactions, newest first: the bounce of the
    // bounceable transfer (the destination has no code), the two
    // externals, the funding.
    let txs = c.transactions(&me, 10, None).await.unwrap();
    assert_eq!(txs.len(), 4, "{txs:?}");
    assert!(txs.windows(2).all(|p| p[0].id.lt > p[1].id.lt));
    assert_eq!(txs[0].in_source, Some(dest), "the bounce");
    assert!(txs[0].in_value < TON / 4 && txs[0].in_value > 0);
    for t in &txs[1..3] {
        assert_eq!(t.in_source, None, "external");
        assert!(t.success, "{t:?}");
        assert_eq!(t.exit_code, 0);
    }
    assert_eq!(
        txs[0].id,
        c.account_state(&me)
            .await
            .unwrap()
            .last_transaction
            .unwrap()
    );
    assert_eq!(txs[3].in_value, 10 * TON);
    // Paging: before the newest.
    let older = c.transactions(&me, 2, Some(txs[0].id)).await.unwrap();
    assert_eq!(older, txs[1..3].to_vec());
    let dtx = c.transactions(&dest, 10, None).await.unwrap();
    assert_eq!(dtx.len(), 3);
    assert!(c.requests_made() > 10);

    // A replayed message (seqno 0 again) is refused by the wallet: the API
    // answers an error, not a hash.
    let stale = w
        .external_message(&key, 0, u32::MAX, &two[..1], false)
        .unwrap();
    assert!(matches!(
        c.send_message(&stale).await,
        Err(ChainError::Api { .. })
    ));

    // Unreachable once the double is gone.
    drop(chain);
    assert!(matches!(
        c.account_state(&me).await,
        Err(ChainError::Unreachable { .. })
    ));
}

/// Our address and signed body equal `@ton/ton`'s for the same key, seqno,
/// deadline and messages (ed25519 signatures are deterministic).
#[test]
fn wallet_matches_ton_ton() {
    let contracts = SandboxChain::contracts_dir();
    if let Some(why) = SandboxChain::missing(&contracts) {
        assert!(std::env::var_os("CI").is_none(), "CI: {why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let seed = [0x5a; 32];
    let key = SigningKey::from_bytes(&seed);
    let w = WalletV4::new(key.verifying_key().to_bytes());
    let dest = ContractAddress {
        workchain: 0,
        hash: [0x33; 32],
    };
    let msgs = [
        InternalMessage::transfer(dest, 1_500_000_000, true),
        InternalMessage::transfer(dest, 7, false),
    ];
    let body = w.signed_body(&key, 5, 1_900_000_000, &msgs).unwrap();
    let script = format!(
        r#"
const {{ WalletContractV4, internal }} = require('@ton/ton');
const {{ keyPairFromSeed }} = require('@ton/crypto');
const {{ Address }} = require('@ton/core');
const kp = keyPairFromSeed(Buffer.from('{seed}', 'hex'));
const w = WalletContractV4.create({{ workchain: 0, publicKey: kp.publicKey }});
const to = Address.parse('{dest}');
const body = w.createTransfer({{ seqno: 5, secretKey: kp.secretKey, timeout: 1900000000, sendMode: 3,
  messages: [internal({{ to, value: 1500000000n, bounce: true }}), internal({{ to, value: 7n, bounce: false }})] }});
console.log(w.address.toRawString());
console.log(w.init.code.hash().toString('hex'));
console.log(body.hash().toString('hex'));
"#,
        seed = hex::encode(seed),
        dest = dest,
    );
    let out = Command::new("node")
        .args(["-e", &script])
        .current_dir(&contracts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], w.address().to_string(), "address");
    assert_eq!(lines[1], hex::encode(wallet::CODE_HASH), "code hash");
    assert_eq!(lines[2], hex::encode(body.hash()), "signed body");
}
