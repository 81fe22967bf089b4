//! Continuous batching of chat with the real SmolLM2-135M-Instruct (tch
//! backend, CPU; `source scripts/torch-env.sh` exports it):
//!
//! * eight different conversations at once (six greedy, one greedy with
//!   logprobs, one seeded sampled) each get exactly the answer, text and
//!   logprobs, that the same request gets alone, while the batch really
//!   ran them together (the backend's counters say how wide its steps
//!   were);
//! * requests that join a running batch at different times, with
//!   different `max_tokens`, and one that stops listening after three
//!   tokens: each answer is its lone answer cut at its own limit, the
//!   cancelled one ends where it was cancelled, and the rest go on.

use std::ops::ControlFlow;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cocoon_enclave::config::EnclaveConfig;
use cocoon_enclave::torch::TchBackend;
use cocoon_enclave::{ChatOutcome, Finish, InferenceBackend};
use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::sampling::{Sampling, TokenLogprob};
use cocoon_tests::models::chat_model_toml;

const MODEL: &str = "smollm2-135m-instruct";
const WIDTH: usize = 8;

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Write a short story about a lighthouse keeper.",
    "hi",
    "Explain photosynthesis to a child in three sentences.",
    "List five prime numbers.",
    "Translate 'good morning' into Spanish, French and German, and explain the differences in usage between them.",
    "What is 17 times 23?",
    "Describe the water cycle.",
];

fn backend() -> TchBackend {
    let text = format!(
        "backend = \"tch\"\ndevice = \"cpu\"\nchat_batch = {WIDTH}\n\n{}",
        chat_model_toml()
    );
    TchBackend::load(&EnclaveConfig::from_toml(&text).expect("config")).expect("model loads")
}

fn sampling(i: usize) -> Sampling {
    match i {
        5 => Sampling {
            temperature_milli: 800,
            top_p_milli: 950,
            seed: Some(7),
            ..Sampling::greedy()
        },
        6 => Sampling {
            logprobs: true,
            top_logprobs: 2,
            ..Sampling::greedy()
        },
        _ => Sampling::greedy(),
    }
}

/// What one request got: its pieces (with logprobs) and its outcome.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    pieces: Vec<(String, Option<TokenLogprob>)>,
    outcome: ChatOutcome,
}

/// Ask question `i`; `stop_after` tokens delivered, stop listening.
fn ask(b: &TchBackend, i: usize, max_tokens: u32, stop_after: Option<usize>) -> Answer {
    let messages = [ChatMessage {
        role: Role::User,
        content: QUESTIONS[i].into(),
    }];
    let mut pieces = Vec::new();
    let outcome = b
        .chat(MODEL, &messages, max_tokens, &sampling(i), &mut |g| {
            if stop_after == Some(pieces.len()) {
                return ControlFlow::Break(());
            }
            pieces.push((g.text.to_owned(), g.logprob));
            ControlFlow::Continue(())
        })
        .expect("answered");
    Answer { pieces, outcome }
}

#[test]
fn batched_answers_are_the_lone_answers_bit_for_bit() {
    let b = backend();
    let max_tokens = 24;
    let alone: Vec<Answer> = (0..8).map(|i| ask(&b, i, max_tokens, None)).collect();
    let lone_stats = b.chat_stats(MODEL).unwrap();
    assert_eq!(lone_stats.widest, 1, "one at a time: {lone_stats:?}");
    for (i, a) in alone.iter().enumerate() {
        assert!(!a.pieces.is_empty(), "question {i} got an answer");
        assert_eq!(a.outcome.completion_tokens, a.pieces.len() as u64);
        assert_eq!(a.pieces.iter().all(|p| p.1.is_some()), i == 6);
    }
    assert!(
        alone.iter().any(|a| a.outcome.finish == Finish::Length),
        "some answers run to max_tokens, so rows leave at different times"
    );

    let start = Barrier::new(8);
    let together: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (b, start) = (&b, &start);
                s.spawn(move || {
                    start.wait();
                    ask(b, i, max_tokens, None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = b.chat_stats(MODEL).unwrap();
    let (steps, rows) = (stats.steps - lone_stats.steps, stats.rows - lone_stats.rows);
    eprintln!(
        "together: {steps} steps, {rows} row-steps ({:.1} rows per step), widest {}",
        rows as f64 / steps as f64,
        stats.widest
    );
    assert!(
        stats.widest >= 6,
        "the conversations shared steps: {stats:?}"
    );
    assert!(
        rows >= 3 * steps,
        "mostly batched: {steps} steps, {rows} rows"
    );
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(t, a, "question {i}: batched differs from alone");
    }
}

#[test]
fn requests_join_and_leave_a_running_batch() {
    let b = Arc::new(backend());
    let alone: Vec<Answer> = (0..8).map(|i| ask(&b, i, 30, None)).collect();
    // (question, max_tokens, stop listening after, start delay in ms)
    let plan: [(usize, u32, Option<usize>, u64); 8] = [
        (1, 30, None, 0),
        (3, 30, Some(3), 0),
        (0, 2, None, 150),
        (5, 30, None, 300),
        (2, 9, None, 450),
        (7, 17, None, 600),
        (4, 30, None, 900),
        (6, 5, None, 1200),
    ];
    let got: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .map(|&(i, max, stop_after, delay)| {
                let b = &b;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    ask(b, i, max, stop_after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (&(i, max, stop_after, _), g) in plan.iter().zip(&got) {
        let lone = &alone[i];
        let limit = (max as usize).min(lone.pieces.len());
        let (n, finish) = match stop_after {
            // The caller stopped listening: the answer ends there.
            Some(s) if s < limit => (s, Finish::Stop),
            // Cut by its own max_tokens before the model's own end.
            _ if max as usize <= lone.pieces.len() => (limit, Finish::Length),
            _ => (limit, lone.outcome.finish),
        };
        assert_eq!(g.pieces, lone.pieces[..n], "question {i}");
        assert_eq!(g.outcome.completion_tokens, n as u64, "question {i}");
        assert_eq!(g.outcome.finish, finish, "question {i}");
    }
    let stats = b.chat_stats(MODEL).unwrap();
    assert!(stats.widest >= 3, "requests overlapped: {stats:?}");
    // The batch is empty again and serves the next request as before.
    assert_eq!(ask(&b, 0, 30, None), alone[0]);
}
