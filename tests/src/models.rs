//! The real model the tests use: all-minilm-l6-v2, exported to TorchScript
//! by `scripts/torch-env.sh` (which sets `COCOON_MODEL_DIR`), and the Python
//! reference embeddings written beside it.

use std::path::PathBuf;

fn complete_dir(var: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from);
    match dir {
        Some(d) if d.join(".complete").is_file() => d,
        other => panic!(
            "the exported model is not available ({var}={other:?}): run `source scripts/torch-env.sh` first (scripts/test.sh does), which installs the pinned PyTorch and exports the models"
        ),
    }
}

/// The exported chat model's directory (SmolLM2-135M-Instruct).
pub fn chat_model_dir() -> PathBuf {
    complete_dir("COCOON_CHAT_MODEL_DIR")
}

/// The chat model's `[models.smollm2-135m-instruct]` table.
pub fn chat_model_toml() -> String {
    let p = chat_model_dir().join("model.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What the chat model answered in Python (greedy), for the chat test.
#[derive(Debug, Clone)]
pub struct ChatReference {
    /// The user's message.
    pub prompt: String,
    /// The token limit it ran with.
    pub max_tokens: u32,
    /// Tokens of the templated prompt.
    pub prompt_tokens: u64,
    /// Tokens of the answer (the stop token not counted).
    pub answer_tokens: u64,
    /// The answer's text.
    pub answer: String,
    /// Whether it ended on the stop token (not the limit).
    pub stopped: bool,
}

/// Read the chat model's `reference.json`.
pub fn chat_reference() -> ChatReference {
    let p = chat_model_dir().join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference.json is JSON");
    let len = |k: &str| v[k].as_array().expect(k).len() as u64;
    ChatReference {
        prompt: v["prompt"].as_str().expect("prompt").into(),
        max_tokens: v["max_tokens"].as_u64().expect("max_tokens") as u32,
        prompt_tokens: len("prompt_ids"),
        answer_tokens: len("answer_ids"),
        answer: v["answer"].as_str().expect("answer").into(),
        stopped: v["stopped"].as_bool().expect("stopped"),
    }
}

/// The exported model's directory. Panics with instructions when it is
/// missing: these tests need the real model, there is no stand-in.
pub fn model_dir() -> PathBuf {
    complete_dir("COCOON_MODEL_DIR")
}

/// The `[models.all-minilm-l6-v2]` table the export wrote (paths and
/// SHA-256 digests).
pub fn model_toml() -> String {
    let p = model_dir().join("model.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What the Python reference computed.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The inputs.
    pub inputs: Vec<String>,
    /// Tokens of each input, special tokens included.
    pub token_counts: Vec<u64>,
    /// One embedding per input.
    pub embeddings: Vec<Vec<f32>>,
}

/// Read `reference.json`.
pub fn reference() -> Reference {
    let p = model_dir().join("reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference.json is JSON");
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    Reference {
        inputs: strings("inputs"),
        token_counts: v["token_counts"]
            .as_array()
            .expect("token_counts")
            .iter()
            .map(|n| n.as_u64().expect("count"))
            .collect(),
        embeddings: v["embeddings"]
            .as_array()
            .expect("embeddings")
            .iter()
            .map(|e| {
                e.as_array()
                    .expect("vector")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect(),
    }
}

/// Largest absolute difference between two vectors (infinite when their
/// lengths differ).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
