//! The tch backend against bare libtorch on the same inputs, in one run.
//!
//! * embeddings: `TchBackend::embed` (tokenize, queue to the model thread,
//!   forward, split) against `EmbeddingModel::forward` on ids tokenized
//!   beforehand; ratio goal ≤ 1.05;
//! * chat: `TchBackend::chat` (template, tokenize, greedy decode with the
//!   key/value cache, detokenize per token, emit): tokens per second;
//!   one conversation alone (a batch of `chat_batch` rows, one live)
//!   against a bare greedy loop of the decoder's single-sequence `forward`
//!   (the unbatched decoding of before); and the aggregate completion
//!   tokens per second of 8 concurrent conversations against 1 (goal ≥
//!   2.5×), in interleaved rounds.
//!
//! Needs the exported models (`source scripts/torch-env.sh`). Prints
//! ratios, not absolute times; run with `cargo bench -p cocoon-enclave`.
//! Under `cargo test --benches` (no `--bench` argument) every path runs
//! once, without warm-up, as a smoke test: the full run takes minutes.

use std::io::Cursor;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use cocoon_enclave::config::EnclaveConfig;
use cocoon_enclave::files::{read_checked, CheckedTokenizer};
use cocoon_enclave::torch::{pick_device, EmbeddingModel, TchBackend};
use cocoon_enclave::InferenceBackend;
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::sampling::Sampling;
use tch::{CModule, IValue, Tensor};

fn model_toml(var: &str) -> String {
    let dir = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run `source scripts/torch-env.sh` first"));
    std::fs::read_to_string(format!("{dir}/model.toml")).expect("model.toml")
}

/// Whether this run measures (`cargo bench`: `--bench` without `--test`,
/// criterion's rule) or only smoke-tests each path once.
fn measuring() -> bool {
    static M: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *M.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
    })
}

/// `n` rounds when measuring, one otherwise.
fn rounds(n: usize) -> usize {
    if measuring() {
        n
    } else {
        1
    }
}

/// Warm-up calls before timing: none in a smoke test.
fn warmups() -> usize {
    if measuring() {
        3
    } else {
        0
    }
}

fn time(f: &mut impl FnMut()) -> Duration {
    let s = Instant::now();
    f();
    s.elapsed()
}

/// Median of `n` timings of `f`, after a warm-up.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmups() {
        f();
    }
    let mut t: Vec<Duration> = (0..rounds(n)).map(|_| time(&mut f)).collect();
    t.sort();
    t[t.len() / 2]
}

/// Median ratio b/a over `n` rounds that time `a` then `b` back to
/// back, so load from elsewhere hits both alike.
fn ratio(n: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> f64 {
    for _ in 0..warmups() {
        a();
        b();
    }
    let mut r: Vec<f64> = (0..rounds(n))
        .map(|_| {
            let ta = time(&mut a);
            let tb = time(&mut b);
            tb.as_secs_f64() / ta.as_secs_f64()
        })
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let text = format!(
        "backend = \"tch\"\ndevice = \"auto\"\n\n{}\n{}",
        model_toml("COCOON_MODEL_DIR"),
        model_toml("COCOON_CHAT_MODEL_DIR")
    );
    let config = EnclaveConfig::from_toml(&text).expect("config");
    let backend = TchBackend::load(&config).expect("models load");
    let device = pick_device(config.device, config.gpu.is_some()).unwrap();
    println!(
        "device: {device:?}, libtorch threads: {}",
        tch::get_num_threads()
    );

    // --- embeddings -------------------------------------------------------
    let m = &config.models["all-minilm-l6-v2"];
    let tok = CheckedTokenizer::load(&m.tokenizer, &m.tokenizer_sha256).unwrap();
    let bytes = read_checked("model file", &m.path, &m.sha256).unwrap();
    let (bare, _) = EmbeddingModel::load(&bytes, device, &m.path).unwrap();
    for (label, input) in [
        (
            "16 tokens",
            "Confidential inference reads this prompt only inside the enclave.",
        ),
        (
            "128 tokens",
            &"attestation evidence binds the session key to the measured image. ".repeat(11),
        ),
    ] {
        let ids: Vec<i64> = tok
            .model_ids(input)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let inputs = vec![input.to_owned()];
        let r = ratio(
            60,
            || {
                bare.forward(std::slice::from_ref(&ids)).unwrap();
            },
            || {
                backend.embed("all-minilm-l6-v2", &inputs).unwrap();
            },
        );
        println!(
            "embeddings, one input of {label} ({} ids): backend / bare forward = {r:.3} (median of {} paired rounds)",
            ids.len(),
            rounds(60)
        );
    }
    // A batch of 32 short inputs in one request against 32 bare forwards
    // of one: what batching buys.
    let inputs: Vec<String> = (0..32)
        .map(|i| format!("input number {i} for the batch"))
        .collect();
    let ids: Vec<Vec<i64>> = inputs
        .iter()
        .map(|s| {
            tok.model_ids(s)
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect()
        })
        .collect();
    let r = ratio(
        10,
        || {
            for s in &ids {
                bare.forward(std::slice::from_ref(s)).unwrap();
            }
        },
        || {
            backend.embed("all-minilm-l6-v2", &inputs).unwrap();
        },
    );
    println!("embeddings, 32 inputs: backend batched / 32 bare single forwards = {r:.3}");

    // --- chat ---------------------------------------------------------------
    let messages = vec![ChatMessage {
        role: Role::User,
        content: "Write a short story about a lighthouse keeper.".into(),
    }];
    // Shorter answers in a smoke test.
    let max_tokens = if measuring() { 48 } else { 8 };
    let mut produced = 0u64;
    let chat = |sampling: &Sampling| {
        backend
            .chat(
                "smollm2-135m-instruct",
                &messages,
                max_tokens,
                sampling,
                &mut |_| ControlFlow::Continue(()),
            )
            .unwrap()
            .completion_tokens
    };
    let t_chat = median(5, || produced = chat(&Sampling::greedy()));
    println!(
        "chat: {produced} tokens in the median run, {:.1} tokens/s through TchBackend::chat (prompt prefill included)",
        produced as f64 / t_chat.as_secs_f64()
    );
    // The same greedy answer with the logits copied to the CPU sampler at
    // every step (a zero logit bias turns the device argmax off), and a
    // seeded sampled answer, against the device argmax, side by side.
    let copied = Sampling {
        logit_bias: [(0, 0)].into_iter().collect(),
        ..Sampling::greedy()
    };
    let sampled = Sampling {
        temperature_milli: 700,
        top_p_milli: 900,
        seed: Some(1),
        ..Sampling::greedy()
    };
    let r = ratio(
        5,
        || {
            chat(&Sampling::greedy());
        },
        || {
            chat(&copied);
        },
    );
    println!("chat: greedy with logits copied to the sampler / device argmax = {r:.3}");
    let r = ratio(
        5,
        || {
            chat(&Sampling::greedy());
        },
        || {
            chat(&sampled);
        },
    );
    println!(
        "chat: sampled (T 0.7, top_p 0.9) / device argmax = {r:.3} (answers differ in length)"
    );

    // --- chat: batching ----------------------------------------------------
    // A bare greedy loop over `forward`, one token at a time: what decoding
    // cost before continuous batching (one sequence, matrix products of one
    // row).
    let c = &config.models["smollm2-135m-instruct"];
    let ctok = CheckedTokenizer::load(&c.tokenizer, &c.tokenizer_sha256).unwrap();
    let cbytes = read_checked("model file", &c.path, &c.sha256).unwrap();
    let mut decoder = CModule::load_data_on_device(&mut Cursor::new(&cbytes), device).unwrap();
    decoder.set_eval();
    let Ok(IValue::IntList(shape)) = decoder.method_is::<IValue>("cache_shape", &[]) else {
        panic!("cache_shape")
    };
    let prompt: Vec<i64> = ctok
        .ids(&format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            c.system_prompt.as_deref().unwrap_or_default(),
            messages[0].content
        ))
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let bare_loop = |n: usize| {
        let run = |ids: &[i64], k: Tensor, v: Tensor| {
            let t = Tensor::from_slice(ids)
                .view([1, ids.len() as i64])
                .to_device(device);
            let out = tch::no_grad(|| {
                decoder.forward_is(&[IValue::Tensor(t), IValue::Tensor(k), IValue::Tensor(v)])
            })
            .unwrap();
            let IValue::Tuple(mut p) = out else {
                panic!("tuple")
            };
            let (IValue::Tensor(v), IValue::Tensor(k), IValue::Tensor(l)) =
                (p.remove(2), p.remove(1), p.remove(0))
            else {
                panic!("tensors")
            };
            (l.argmax(-1, false).int64_value(&[0]), k, v)
        };
        let empty = || {
            Tensor::zeros(
                [shape[0], shape[1], 0, shape[2]],
                (tch::Kind::Float, device),
            )
        };
        let (mut next, mut k, mut v) = run(&prompt, empty(), empty());
        for _ in 1..n {
            (next, k, v) = run(&[next], k, v);
        }
    };
    let lone_tokens = chat(&Sampling::greedy());
    let lone = ratio(
        5,
        || bare_loop(lone_tokens as usize),
        || {
            chat(&Sampling::greedy());
        },
    );
    println!(
        "chat, one conversation of {lone_tokens} tokens: backend (batch of {} rows, 1 live) / bare forward loop (1 row) = {lone:.3}",
        config.chat_batch
    );

    // 8 conversations at once against 1, the same answer length each.
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
    let tokens = if measuring() { 32 } else { 8 };
    let ask = |m: &[ChatMessage]| {
        backend
            .chat(
                "smollm2-135m-instruct",
                m,
                tokens,
                &Sampling::greedy(),
                &mut |_| ControlFlow::Continue(()),
            )
            .unwrap()
            .completion_tokens
    };
    let mut one_tokens = 0;
    let mut eight_tokens = 0;
    let mut one = || one_tokens = ask(&conversations[0]);
    let chat_stats = || backend.chat_stats("smollm2-135m-instruct").unwrap();
    let (mut steps, mut rows) = (0, 0);
    let mut eight = || {
        let before = chat_stats();
        let ask = &ask;
        eight_tokens = std::thread::scope(|s| {
            let hs: Vec<_> = conversations
                .iter()
                .map(|m| s.spawn(move || ask(m)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        });
        let after = chat_stats();
        steps += after.steps - before.steps;
        rows += after.rows - before.rows;
    };
    let r = ratio(5, &mut one, &mut eight);
    // ratio() is time(8) / time(1); tokens/s scale by the tokens each made.
    let speedup = eight_tokens as f64 / one_tokens as f64 / r;
    println!(
        "chat, aggregate completion tokens/s, 8 concurrent conversations / 1: {speedup:.2}x ({eight_tokens} vs {one_tokens} tokens per round, time ratio {r:.3}, median of {} paired rounds; {:.1} live rows per step with 8)",
        rounds(5),
        rows as f64 / steps as f64
    );
    println!(
        "chat, 8 concurrent conversations / the bare unbatched loop, from the two ratios above: {:.2}x",
        speedup / lone
    );
}
