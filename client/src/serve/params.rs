//! Which OpenAI request parameters the endpoint honours and which it
//! refuses: the one table ([`CHAT_PARAMETERS`], [`EMBEDDINGS_PARAMETERS`])
//! that README.md's OpenAI section mirrors.
//!
//! A parameter the enclave cannot honour is refused with `400
//! invalid_request_error` naming it in `param`, never silently ignored: a
//! client that asks for tools or a JSON schema must learn that it got
//! neither. Unknown top-level fields are refused too, unless the endpoint
//! was started with `--allow-unknown-fields`. `null` counts as not sent.
//!
//! Owns only the top-level check of a JSON body; the handlers read the
//! values they honour.

use serde_json::{Map, Value};

use super::error::ApiErr;

/// What the endpoint does with one request parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// Read and honoured.
    Honoured,
    /// Sampling control: sealed with the messages and honoured by the
    /// enclave (`openai_sampling.rs` reads and checks the values).
    Sampling,
    /// Accepted only with values that change nothing; the function says
    /// why another value is refused.
    Only(fn(&Value) -> Result<(), String>),
    /// Refused with 400; the text says why.
    Refused(&'static str),
}

/// `/v1/chat/completions`.
pub(crate) const CHAT_PARAMETERS: &[(&str, Rule)] = &[
    ("model", Rule::Honoured),
    ("messages", Rule::Honoured),
    ("max_tokens", Rule::Honoured),
    ("max_completion_tokens", Rule::Honoured),
    ("stream", Rule::Honoured),
    ("stream_options", Rule::Only(stream_options)),
    ("user", Rule::Honoured),
    ("temperature", Rule::Sampling),
    ("top_p", Rule::Sampling),
    ("seed", Rule::Sampling),
    ("stop", Rule::Sampling),
    ("presence_penalty", Rule::Sampling),
    ("frequency_penalty", Rule::Sampling),
    ("logit_bias", Rule::Sampling),
    ("logprobs", Rule::Sampling),
    ("top_logprobs", Rule::Sampling),
    ("n", Rule::Only(n_is_one)),
    ("response_format", Rule::Only(text_format)),
    ("tools", Rule::Refused("tool calls are not supported")),
    ("tool_choice", Rule::Refused("tool calls are not supported")),
    (
        "parallel_tool_calls",
        Rule::Refused("tool calls are not supported"),
    ),
    (
        "functions",
        Rule::Refused("function calls are not supported"),
    ),
    (
        "function_call",
        Rule::Refused("function calls are not supported"),
    ),
];

/// `/v1/embeddings`.
pub(crate) const EMBEDDINGS_PARAMETERS: &[(&str, Rule)] = &[
    ("model", Rule::Honoured),
    ("input", Rule::Honoured),
    ("encoding_format", Rule::Honoured),
    ("user", Rule::Honoured),
    (
        "dimensions",
        Rule::Refused("the served embedding models cannot shorten their vectors"),
    ),
];

fn n_is_one(v: &Value) -> Result<(), String> {
    match v.as_u64() {
        Some(1) => Ok(()),
        _ => Err("only n = 1 is supported (one choice per request)".into()),
    }
}

fn text_format(v: &Value) -> Result<(), String> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        _ => Err(
            "only response_format {\"type\": \"text\"} is supported (no JSON mode or schema)"
                .into(),
        ),
    }
}

fn stream_options(v: &Value) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err("stream_options must be an object".into());
    };
    for (k, x) in o {
        match (k.as_str(), x) {
            ("include_usage", Value::Bool(_) | Value::Null) => {}
            ("include_usage", _) => {
                return Err("stream_options.include_usage must be true or false".into())
            }
            (other, _) => return Err(format!("stream_options.{other} is not supported")),
        }
    }
    Ok(())
}

/// Check every top-level field of `body` against `table`: the first field
/// refused, unknown (unless `allow_unknown`) or with a refused value is a
/// `400` naming it.
pub(crate) fn check(
    body: &Map<String, Value>,
    table: &[(&str, Rule)],
    allow_unknown: bool,
) -> Result<(), ApiErr> {
    // In the table's order, then the body's, so the answer is stable.
    for (name, rule) in table {
        let Some(v) = body.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        let refused = match rule {
            Rule::Honoured | Rule::Sampling => None,
            Rule::Only(f) => f(v).err(),
            Rule::Refused(why) => Some(format!("{name}: {why}")),
        };
        if let Some(message) = refused {
            return Err(ApiErr::bad_param(
                "unsupported_parameter",
                name,
                format!("{message} by this endpoint"),
            ));
        }
    }
    if !allow_unknown {
        if let Some(name) = body
            .keys()
            .find(|k| !table.iter().any(|(n, _)| n == &k.as_str()))
        {
            return Err(ApiErr::bad_param(
                "unknown_parameter",
                name,
                format!(
                    "unknown parameter {name:?}: refused rather than ignored (start cocoon-client serve with --allow-unknown-fields to ignore unknown fields)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn refused_parameters_are_named_and_accepted_ones_pass() {
        let ok = body(json!({
            "model": "m", "messages": [], "max_tokens": 3, "stream": true,
            "stream_options": {"include_usage": true}, "user": "u",
            "temperature": 0.2, "top_p": 0.9, "seed": 1, "stop": ["x"],
            "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {},
            "logprobs": false, "top_logprobs": 0, "n": 1,
            "response_format": {"type": "text"}, "tools": null,
        }));
        assert!(check(&ok, CHAT_PARAMETERS, false).is_ok());
        for (field, value) in [
            ("tools", json!([{"type": "function"}])),
            ("tool_choice", json!("auto")),
            ("functions", json!([])),
            ("function_call", json!("auto")),
            ("response_format", json!({"type": "json_object"})),
            ("n", json!(2)),
            ("stream_options", json!({"include_usage": 1})),
            ("vendor_extra", json!(1)),
        ] {
            let mut b = body(json!({"model": "m", "messages": []}));
            b.insert(field.into(), value);
            let e = check(&b, CHAT_PARAMETERS, false).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{field}");
            assert_eq!(e.kind, "invalid_request_error", "{field}");
            assert_eq!(e.param.as_deref(), Some(field), "{field}");
        }
        let extra = body(json!({"model": "m", "input": "x", "vendor_extra": 1}));
        assert!(check(&extra, EMBEDDINGS_PARAMETERS, false).is_err());
        assert!(check(&extra, EMBEDDINGS_PARAMETERS, true).is_ok());
        let dims = body(json!({"model": "m", "input": "x", "dimensions": 8}));
        let e = check(&dims, EMBEDDINGS_PARAMETERS, true).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("dimensions"));
    }

    /// README.md's table lists every parameter of both tables.
    #[test]
    fn the_readme_documents_every_parameter() {
        let readme = include_str!("../../../README.md");
        for (name, _) in CHAT_PARAMETERS.iter().chain(EMBEDDINGS_PARAMETERS) {
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README.md's OpenAI parameter table lacks `{name}`"
            );
        }
    }
}
