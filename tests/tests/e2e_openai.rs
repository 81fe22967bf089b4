//! The OpenAI surface of `cocoon-client serve` with the official `openai`
//! Python client (tests/python/openai_surface.py), in front of a real host
//! agent with its default limits and a simulated-TEE enclave serving the
//! real models (all-minilm-l6-v2, smollm2-135m-instruct): refused
//! parameters are 400s naming them, refusals by the enclave are 4xx and
//! cost nothing, a provider fault followed by the client's own retries is
//! charged once, `models.retrieve`, the `include_usage` chunk, and 16
//! parallel requests from one application all answered.

mod common;

use cocoon_enclave::fault::TEST_ONLY_FAIL_AFTER_TOKENS;
use cocoon_test_kit::procs::{Proc, TempDir};
use cocoon_tests::models::{chat_model_toml, model_toml};
use common::*;

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

/// (charge, request id) of every receipt in the host's ledger.
fn ledger(admin: &str) -> Vec<u64> {
    let (status, body) = get(&format!("{admin}/admin/ledger/export?after=0"));
    assert_eq!(status, 200, "ledger export: {body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON line");
            v["charge"].as_u64().expect("charge")
        })
        .collect()
}

#[test]
fn the_openai_client_gets_refusals_as_4xx_pays_once_and_is_queued() {
    let dir = TempDir::new("e2e-openai");
    let config = format!(
        "backend = \"tch\"\ndevice = \"cpu\"\n\n[prices.{EMBED}]\nprompt = 3\ncompletion = 0\n\n[prices.{CHAT}]\nprompt = 1\ncompletion = 4\n\n{}\n{}",
        model_toml(),
        chat_model_toml()
    );
    let (mut cmd, socket) = enclave_command(&dir, "enclave", &config);
    // TEST ONLY: the first chat of this boot fails after 2 tokens.
    cmd.env(TEST_ONLY_FAIL_AFTER_TOKENS, "2:1");
    let mut enclave = Proc::spawn("enclave", cmd);
    enclave.wait_for("ready listen=", READY);
    // The host's default limits (8 streams per account, 5 requests/s).
    let host = start_host(&dir, &[&socket], &[]);

    let policy = dir.path().join("client-policy.toml");
    std::fs::write(&policy, simulated_policy().to_toml()).unwrap();
    let api_key_file = dir.path().join("api.key");
    let (_serve, addr) = start_serve(
        &host.url,
        &policy,
        &dir.path().join("account.key"),
        &api_key_file,
    );
    let base = format!("http://{addr}/v1");

    let v = run_openai_script(
        "openai_surface.py",
        &[
            base.as_ref(),
            api_key_file.as_ref(),
            CHAT.as_ref(),
            EMBED.as_ref(),
        ],
    );
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());

    // The fault, then the client's own retry, answered.
    assert!(
        v["fault_then_retry"]["completion_tokens"].as_u64().unwrap() > 0,
        "{v}"
    );

    // Each refused parameter: 400 invalid_request_error naming it.
    for (name, param) in [
        ("tools", "tools"),
        ("tool_choice", "tool_choice"),
        ("functions", "functions"),
        ("function_call", "function_call"),
        ("response_format", "response_format"),
        ("n", "n"),
        ("unknown", "vendor_extra"),
        ("max_tokens_0", "max_tokens"),
        ("dimensions", "dimensions"),
        ("empty_input", "input"),
    ] {
        let r = &v["refused"][name];
        assert_eq!(r["status"], 400, "{name}: {r}");
        assert_eq!(r["type"], "invalid_request_error", "{name}: {r}");
        assert_eq!(r["param"], param, "{name}: {r}");
    }
    // Refused by the enclave: the OpenAI status and code, never a 5xx.
    let e = &v["enclave_refused"];
    assert_eq!(e["context_length"]["status"], 400, "{e}");
    assert_eq!(
        e["context_length"]["code"], "context_length_exceeded",
        "{e}"
    );
    assert_eq!(
        e["embedding_too_long"]["code"], "context_length_exceeded",
        "{e}"
    );
    assert_eq!(e["chat_with_embedding_model"]["status"], 400, "{e}");
    assert_eq!(
        e["chat_with_embedding_model"]["code"], "model_kind_mismatch",
        "{e}"
    );
    assert_eq!(e["embed_with_chat_model"]["status"], 400, "{e}");
    assert_eq!(e["unknown_model"]["status"], 404, "{e}");
    assert_eq!(e["unknown_model"]["code"], "model_not_found", "{e}");

    assert_eq!(v["retrieve"]["id"], CHAT, "{v}");
    assert_eq!(v["retrieve_unknown"]["status"], 404, "{v}");
    assert_eq!(v["retrieve_unknown"]["code"], "model_not_found", "{v}");

    // include_usage: the finish chunk has no usage; a last chunk with no
    // choices carries it.
    let chunks = v["include_usage"].as_array().unwrap();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], 0, "{chunks:?}");
    assert!(
        last["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{chunks:?}"
    );
    let finish = chunks
        .iter()
        .find(|c| !c["finish"].is_null())
        .expect("a finish chunk");
    assert!(finish["usage"].is_null(), "{chunks:?}");
    assert_eq!(
        chunks.iter().filter(|c| !c["usage"].is_null()).count(),
        1,
        "{chunks:?}"
    );

    // 16 parallel requests against the host's default 8 streams: all
    // answered.
    let parallel = v["parallel"].as_array().unwrap();
    assert_eq!(parallel.len(), 16);
    for (i, p) in parallel.iter().enumerate() {
        assert!(p.as_u64().is_some_and(|n| n > 0), "request {i}: {p}");
    }

    // What was charged: the failed chat and the four enclave refusals each
    // left a zero-charge receipt; the fault's retry, the streamed chat and
    // the 16 parallel chats are the only charges. Nothing refused by serve
    // (parameters, max_tokens 0, an unknown model) reached the provider.
    let charges = ledger(&host.admin);
    let charged = charges.iter().filter(|c| **c > 0).count();
    let free = charges.iter().filter(|c| **c == 0).count();
    eprintln!(
        "ledger: {} receipts, {charged} charged, {free} free",
        charges.len()
    );
    assert_eq!(charged, 1 + 1 + 16, "{charges:?}");
    assert_eq!(free, 1 + 4, "{charges:?}");
}
