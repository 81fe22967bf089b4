//! OpenAI sampling parameters honoured inside the enclave, with the real
//! SmolLM2 chat model (tch backend, CPU) behind a real host:
//!
//! * temperature 0 (with and without logprobs) answers exactly what the
//!   Python reference answers, and every logprob is ≤ 0;
//! * the same seed twice gives the same text, another seed another text;
//! * a stop string taken from the greedy answer cuts it there, with finish
//!   `stop` and fewer tokens billed;
//! * the official OpenAI Python client against `cocoon-client serve`
//!   (`tests/python/openai_sampling.py`): seeds, stop, logprobs in both
//!   the plain and the streamed answer, and 400s naming the bad field.
//!
//! It also prints greedy tokens per second with the logits left on the
//! device against the same decode with them copied out for the sampler.

mod common;

use std::time::Instant;

use cocoon_client::Client;
use cocoon_protocol::message::FinishReason;
use cocoon_protocol::sampling::Sampling;
use cocoon_test_kit::procs::TempDir;
use cocoon_tests::models::{chat_model_toml, chat_reference};
use common::*;

const MODEL: &str = "smollm2-135m-instruct";

#[test]
fn sampling_parameters_are_honoured_by_the_real_chat_model() {
    let want = chat_reference();
    let dir = TempDir::new("e2e-sampling");
    let config = format!(
        "backend = \"tch\"\ndevice = \"cpu\"\n\n[prices.{MODEL}]\nprompt = 1\ncompletion = 4\n\n{}",
        chat_model_toml()
    );
    let enclave = start_enclave_with(&dir, "enclave", &config);
    let host = start_host(&dir, &[&enclave.socket], &[]);
    let client = Client::new(&host.url, simulated_policy(), account());
    let greedy_answer = rt().block_on(async {
        client.verify().await.expect("verified");
        let run_on = |prompt: String, sampling: Sampling, max: u32| {
            let client = client.clone();
            async move {
                let started = Instant::now();
                let out = client
                    .chat_with(MODEL, ask(&prompt), max, sampling)
                    .await
                    .expect("accepted")
                    .collect_with_logprobs()
                    .await
                    .expect("authentic");
                (out, started.elapsed())
            }
        };
        let run = |sampling: Sampling, max: u32| run_on(want.prompt.clone(), sampling, max);

        // Temperature 0 is the reference answer, logprobs or not.
        let ((plain, none, d), plain_time) = run(Sampling::greedy(), want.max_tokens).await;
        assert_eq!(plain, want.answer);
        assert!(none.is_empty(), "no logprobs unless asked");
        assert_eq!(d.usage.completion_tokens, want.answer_tokens);
        let with_logprobs = Sampling {
            logprobs: true,
            top_logprobs: 3,
            ..Sampling::greedy()
        };
        let ((text, logprobs, d), logprobs_time) = run(with_logprobs, want.max_tokens).await;
        assert_eq!(text, want.answer, "argmax over the copied logits");
        assert_eq!(logprobs.len() as u64, d.usage.completion_tokens);
        for lp in &logprobs {
            assert!(lp.chosen.logprob.micros() <= 0, "{lp:?}");
            assert_eq!(lp.top.len(), 3, "{lp:?}");
            // Greedy: the chosen token is the most likely one.
            assert_eq!(lp.top[0], lp.chosen, "{lp:?}");
            assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        }
        assert_eq!(
            logprobs
                .iter()
                .flat_map(|l| l.chosen.token.clone())
                .collect::<Vec<u8>>(),
            want.answer.as_bytes(),
            "the tokens spell the answer"
        );
        let tokens = want.answer_tokens as f64;
        eprintln!(
            "greedy decode, {} tokens: argmax on the device {:.1} tokens/s, logits copied to the sampler {:.1} tokens/s (ratio {:.2})",
            want.answer_tokens,
            tokens / plain_time.as_secs_f64(),
            tokens / logprobs_time.as_secs_f64(),
            logprobs_time.as_secs_f64() / plain_time.as_secs_f64()
        );

        // A seed makes a sampled answer reproducible (an open prompt, so
        // that sampling has room to differ).
        let seeded = |seed| Sampling {
            seed: Some(seed),
            ..Sampling::openai_default()
        };
        let story = || "Tell me a short story about a dragon.".to_string();
        let ((a, _, _), _) = run_on(story(), seeded(1234), 24).await;
        let ((b, _, _), _) = run_on(story(), seeded(1234), 24).await;
        let ((c, _, _), _) = run_on(story(), seeded(98765), 24).await;
        assert_eq!(a, b, "same seed, same text");
        assert_ne!(a, c, "another seed, another text");
        // A hot temperature with a tiny nucleus is greedy again.
        let ((narrow, _, _), _) = run(
            Sampling {
                temperature_milli: 2000,
                top_p_milli: 1,
                ..seeded(5)
            },
            want.max_tokens,
        )
        .await;
        assert_eq!(narrow, want.answer);

        // A stop string from the middle of the greedy answer cuts it there.
        let words: Vec<&str> = want.answer.split(' ').collect();
        assert!(words.len() > 4, "{:?}", want.answer);
        let stop = format!(" {}", words[words.len() / 2]);
        let at = want.answer.find(&stop).unwrap();
        let ((cut, lps, d), _) = run(
            Sampling {
                stop: vec!["never appears".into(), stop.clone()],
                logprobs: true,
                ..Sampling::greedy()
            },
            want.max_tokens,
        )
        .await;
        assert_eq!(cut, want.answer[..at], "cut before {stop:?}");
        assert_eq!(d.finish, FinishReason::Stop);
        assert!(d.usage.completion_tokens < want.answer_tokens);
        assert!(d.usage.completion_tokens as usize >= lps.len());
        let spelled: Vec<u8> = lps.iter().flat_map(|l| l.chosen.token.clone()).collect();
        assert!(spelled.starts_with(cut.as_bytes()), "logprobs cover the text sent");
        want.answer.clone()
    });

    // The official OpenAI client against cocoon-client serve.
    let policy = dir.path().join("client-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let key = dir.path().join("account.key");
    let api_key_file = dir.path().join("api.key");
    let (_serve, addr) = start_serve(&host.url, &policy, &key, &api_key_file);
    let base = format!("http://{addr}/v1");
    let v = run_openai_script(
        "openai_sampling.py",
        &[
            base.as_ref(),
            api_key_file.as_ref(),
            MODEL.as_ref(),
            want.prompt.as_ref(),
        ],
    );
    eprintln!("{v:#}");
    assert_eq!(v["greedy"]["content"], greedy_answer.as_str(), "{v}");
    assert_eq!(v["seeded"][0], v["seeded"][1], "{v}");
    let stop = v["stop"]["stop"].as_str().unwrap();
    let at = greedy_answer.find(stop).unwrap();
    assert_eq!(v["stop"]["content"], &greedy_answer[..at], "{v}");
    assert_eq!(v["stop"]["finish_reason"], "stop", "{v}");
    assert_eq!(v["stream_stop"]["content"], &greedy_answer[..at], "{v}");
    assert_eq!(v["stream_stop"]["finish_reason"], "stop", "{v}");
    for which in ["logprobs", "stream_logprobs"] {
        let lp = v[which].as_array().unwrap();
        assert!(!lp.is_empty(), "{which}: {v}");
        let spelled: String = lp.iter().map(|t| t["token"].as_str().unwrap()).collect();
        assert_eq!(spelled, greedy_answer, "{which}");
        for t in lp {
            assert!(t["logprob"].as_f64().unwrap() <= 0.0, "{t}");
            assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2, "{t}");
        }
    }
    for (field, status) in v["errors"].as_object().unwrap() {
        assert_eq!(status["status"], 400, "{field}: {v}");
        assert_eq!(status["param"], field.as_str(), "{field}: {v}");
        assert_eq!(status["type"], "invalid_request_error", "{field}: {v}");
    }
    assert_eq!(v["errors"].as_object().unwrap().len(), 5, "{v}");
}
