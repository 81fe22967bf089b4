//! Real models, bare and through the whole sealed path, in one run:
//!
//! * embeddings of one 16-token input: a bare libtorch forward of the
//!   TorchScript module (ids tokenized beforehand), the enclave's
//!   `TchBackend::embed` in-process, and the whole sealed path (client SDK:
//!   seal, HTTP to `cocoon-host`, frames to `cocoon-enclave`, inference,
//!   sealed answer, receipt verified and committed by the host and checked
//!   by the client); ratios of the medians;
//! * chat with SmolLM2-135M-Instruct, 32 tokens: tokens per second in
//!   process (`TchBackend::chat`) and through the sealed path;
//! * continuous batching through the sealed path: the aggregate completion
//!   tokens per second of 8 concurrent conversations (one account, the
//!   host's default 8 streams) against 1 (goal ≥ 2.5×).
//!
//! Needs `source scripts/torch-env.sh` and the release binaries
//! (`cargo build --release --bins`, then `cargo bench -p cocoon-tests
//! --bench model_path`). Rounds alternate which path goes first.

use std::ops::ControlFlow;
use std::process::Command;
use std::time::Duration;

use cocoon_client::Client;
use cocoon_enclave::config::EnclaveConfig;
use cocoon_enclave::files::{read_checked, CheckedTokenizer};
use cocoon_enclave::torch::{pick_device, EmbeddingModel, TchBackend};
use cocoon_enclave::InferenceBackend;
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_test_kit::procs::{bin, field, Proc, TempDir};
use cocoon_tests::bench::{interleaved, mode, ms};
use cocoon_tests::models::{chat_model_toml, model_toml};

const EMB: &str = "all-minilm-l6-v2";
const CHAT: &str = "smollm2-135m-instruct";
const INPUT: &str = "Confidential inference reads this prompt only inside the enclave.";

fn main() {
    let m = mode(60);
    if m.rounds == 0 {
        return;
    }
    let models = format!("{}\n{}", model_toml(), chat_model_toml());
    let config_text = format!("backend = \"tch\"\ndevice = \"auto\"\n\n{models}");
    let dir = TempDir::new("bench-model-path");
    let cfg = dir.path().join("enclave.toml");
    std::fs::write(&cfg, &config_text).unwrap();
    let sock = dir.path().join("enclave.sock");
    let mut enclave = Command::new(bin("cocoon-enclave"));
    enclave
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--tee", "simulated"])
        .env("RUST_LOG", "warn");
    let mut enclave = Proc::spawn("cocoon-enclave", enclave);
    enclave.wait_for("ready listen=", Duration::from_secs(120));
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, cocoon_test_kit::simulated::policy_toml(None)).unwrap();
    let mut host = Command::new(bin("cocoon-host"));
    host.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .arg("--enclave")
        .arg(format!("unix:{}", sock.display()))
        .args(["--account-rps", "100000", "--account-burst", "100000"])
        .env("RUST_LOG", "warn");
    let mut host = Proc::spawn("cocoon-host", host);
    let line = host.wait_for("ready ", Duration::from_secs(60));
    let url = format!("http://{}", field(&line, "listen").unwrap());
    let policy =
        cocoon_verifier::policy::Policy::from_toml(&std::fs::read_to_string(&policy).unwrap())
            .expect("policy");
    let client = Client::new(&url, policy, AccountKey::generate(&mut OsRng));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(client.verify()).expect("verified");

    // In-process: the same model files, checked the same way.
    let config = EnclaveConfig::from_toml(&config_text).unwrap();
    let backend = TchBackend::load(&config).expect("models load");
    let device = pick_device(config.device, config.gpu.is_some()).unwrap();
    let mc = &config.models[EMB];
    let tok = CheckedTokenizer::load(&mc.tokenizer, &mc.tokenizer_sha256).unwrap();
    let bytes = read_checked("model file", &mc.path, &mc.sha256).unwrap();
    let (bare, _) = EmbeddingModel::load(&bytes, device, &mc.path).unwrap();
    let ids: Vec<i64> = tok
        .model_ids(INPUT)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let inputs = vec![INPUT.to_owned()];
    println!(
        "device {device:?}; {} rounds; one input of {} tokens",
        m.rounds,
        ids.len()
    );

    let mut bare_path = || bare.forward(std::slice::from_ref(&ids)).is_ok();
    let mut backend_path = || backend.embed(EMB, &inputs).is_ok();
    let mut sealed_path = || rt.block_on(client.embeddings(EMB, inputs.clone())).is_ok();
    let t = interleaved(
        m.rounds,
        &mut [&mut bare_path, &mut backend_path, &mut sealed_path],
    );
    println!(
        "embeddings: bare forward {}, TchBackend::embed {}, sealed path {}",
        ms(t[0]),
        ms(t[1]),
        ms(t[2])
    );
    println!(
        "embeddings ratios: backend / bare = {:.3}, sealed path / bare = {:.3}, sealed path / backend = {:.3}",
        t[1].as_secs_f64() / t[0].as_secs_f64(),
        t[2].as_secs_f64() / t[0].as_secs_f64(),
        t[2].as_secs_f64() / t[1].as_secs_f64()
    );

    let messages = vec![ChatMessage {
        role: Role::User,
        content: "Write a short story about a lighthouse keeper.".into(),
    }];
    let max_tokens = 32;
    let mut in_tokens = 0;
    let mut sealed_tokens = 0;
    let mut in_process = || {
        let o = backend.chat(
            CHAT,
            &messages,
            max_tokens,
            &Default::default(),
            &mut |_| ControlFlow::Continue(()),
        );
        in_tokens = o.as_ref().map_or(0, |o| o.completion_tokens);
        o.is_ok()
    };
    let mut sealed_chat = || {
        let r = rt.block_on(async {
            client
                .chat(CHAT, messages.clone(), max_tokens)
                .await
                .ok()?
                .collect_text()
                .await
                .ok()
        });
        sealed_tokens = r.as_ref().map_or(0, |(_, c)| c.usage.completion_tokens);
        r.is_some()
    };
    let rounds = (m.rounds / 10).max(2);
    let t = interleaved(rounds, &mut [&mut in_process, &mut sealed_chat]);
    let tps = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "chat ({rounds} rounds, prompt prefill included): in process {:.1} tokens/s, sealed path {:.1} tokens/s, sealed path / in process time = {:.3}",
        tps(in_tokens, t[0]),
        tps(sealed_tokens, t[1]),
        t[1].as_secs_f64() / t[0].as_secs_f64()
    );

    let topics = [
        "a lighthouse keeper",
        "a clockmaker",
        "a river pilot",
        "a beekeeper",
        "a mountain guide",
        "a baker",
        "a radio operator",
        "a glassblower",
    ];
    let conversations: Vec<Vec<ChatMessage>> = topics
        .iter()
        .map(|t| {
            vec![ChatMessage {
                role: Role::User,
                content: format!("Write a short story about {t}."),
            }]
        })
        .collect();
    let conversation = |m: Vec<ChatMessage>| {
        let client = client.clone();
        async move {
            let (_, done) = client
                .chat(CHAT, m, max_tokens)
                .await
                .ok()?
                .collect_text()
                .await
                .ok()?;
            Some(done.usage.completion_tokens)
        }
    };
    let mut one_tokens = 0;
    let mut eight_tokens = 0;
    let mut one = || {
        let r = rt.block_on(conversation(conversations[0].clone()));
        one_tokens = r.unwrap_or(0);
        r.is_some()
    };
    let mut eight = || {
        let r = rt.block_on(futures_util::future::join_all(
            conversations.iter().cloned().map(conversation),
        ));
        let ok = r.iter().all(Option::is_some);
        eight_tokens = r.into_iter().flatten().sum();
        ok
    };
    let rounds = (m.rounds / 6).max(2);
    let t = interleaved(rounds, &mut [&mut one, &mut eight]);
    let (tps1, tps8) = (tps(one_tokens, t[0]), tps(eight_tokens, t[1]));
    println!(
        "chat, continuous batching through the sealed path ({rounds} rounds): 1 conversation {tps1:.1} tokens/s, 8 concurrent {tps8:.1} tokens/s in all ({eight_tokens} tokens per round): 8 / 1 = {:.2}x (goal >= 2.5x)",
        tps8 / tps1
    );
    drop(host);
    drop(enclave);
}
