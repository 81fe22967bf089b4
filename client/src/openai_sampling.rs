//! OpenAI's sampling fields in a chat completion request, read into a
//! [`Sampling`], and the `logprobs` object of a choice written from the
//! enclave's [`TokenLogprob`]s. Used by [`crate::serve`]; owns no HTTP.
//!
//! An absent field takes OpenAI's default (temperature 1, top_p 1, no
//! seed, no stop strings, no penalties or bias, no logprobs); `null` counts
//! as absent. A value of the wrong type or out of OpenAI's range is a
//! [`SamplingError`] naming the field, which the endpoint answers with
//! `400 invalid_request_error` and that field as `param`.

use cocoon_protocol::sampling::{Sampling, SamplingError, TokenLogprob, TopLogprob};
use serde_json::{json, Value};

/// The sampling fields of a request, as they came (absent: `None`).
#[derive(Debug, Default)]
pub(crate) struct SamplingFields {
    pub temperature: Option<Value>,
    pub top_p: Option<Value>,
    pub seed: Option<Value>,
    pub stop: Option<Value>,
    pub presence_penalty: Option<Value>,
    pub frequency_penalty: Option<Value>,
    pub logit_bias: Option<Value>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
}

fn wrong(param: &'static str, message: &str) -> SamplingError {
    SamplingError {
        param,
        message: message.into(),
    }
}

fn given(v: &Option<Value>) -> Option<&Value> {
    v.as_ref().filter(|v| !v.is_null())
}

fn number(v: &Option<Value>, param: &'static str) -> Result<Option<f64>, SamplingError> {
    given(v)
        .map(|v| v.as_f64().ok_or_else(|| wrong(param, "must be a number")))
        .transpose()
}

impl SamplingFields {
    /// The request's [`Sampling`].
    pub(crate) fn parse(&self) -> Result<Sampling, SamplingError> {
        let seed = given(&self.seed)
            .map(|v| {
                // OpenAI takes any 64-bit integer; a negative one is used
                // by its two's-complement bits.
                v.as_u64()
                    .or_else(|| v.as_i64().map(|i| i as u64))
                    .ok_or_else(|| wrong("seed", "must be an integer"))
            })
            .transpose()?;
        let stop = match given(&self.stop) {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| wrong("stop", "must be a string or an array of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong("stop", "must be a string or an array of strings")),
        };
        let logit_bias = match given(&self.logit_bias) {
            None => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let id = k.parse::<u32>().map_err(|_| {
                        wrong("logit_bias", &format!("key {k:?} is not a token id"))
                    })?;
                    let bias = v
                        .as_f64()
                        .ok_or_else(|| wrong("logit_bias", "every bias must be a number"))?;
                    Ok((id, bias))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(wrong(
                    "logit_bias",
                    "must be an object mapping token ids to numbers",
                ))
            }
        };
        let logprobs = match given(&self.logprobs) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(wrong("logprobs", "must be a boolean")),
        };
        let top_logprobs = given(&self.top_logprobs)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| wrong("top_logprobs", "must be an integer between 0 and 20"))
            })
            .transpose()?;
        Sampling::from_openai(
            number(&self.temperature, "temperature")?,
            number(&self.top_p, "top_p")?,
            seed,
            stop,
            number(&self.presence_penalty, "presence_penalty")?,
            number(&self.frequency_penalty, "frequency_penalty")?,
            &logit_bias,
            logprobs,
            top_logprobs,
        )
    }
}

fn alternative(t: &TopLogprob) -> Value {
    json!({
        "token": String::from_utf8_lossy(&t.token),
        "logprob": t.logprob.as_f64(),
        "bytes": t.token,
    })
}

/// A choice's `logprobs` object: `{"content": [{"token", "logprob",
/// "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}`.
pub(crate) fn logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut v = alternative(&t.chosen);
            v["top_logprobs"] = Value::Array(t.top.iter().map(alternative).collect());
            v
        })
        .collect();
    json!({ "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::sampling::Logprob;

    fn parse(v: Value) -> Result<Sampling, SamplingError> {
        let f = |k: &str| v.get(k).cloned();
        SamplingFields {
            temperature: f("temperature"),
            top_p: f("top_p"),
            seed: f("seed"),
            stop: f("stop"),
            presence_penalty: f("presence_penalty"),
            frequency_penalty: f("frequency_penalty"),
            logit_bias: f("logit_bias"),
            logprobs: f("logprobs"),
            top_logprobs: f("top_logprobs"),
        }
        .parse()
    }

    #[test]
    fn fields_parse_with_openai_defaults_and_errors_name_the_field() {
        assert_eq!(parse(json!({})).unwrap(), Sampling::openai_default());
        assert_eq!(
            parse(json!({"temperature": null})).unwrap(),
            Sampling::openai_default()
        );
        let s = parse(json!({
            "temperature": 0, "top_p": 0.5, "seed": -1, "stop": "END",
            "presence_penalty": 1, "frequency_penalty": -0.5,
            "logit_bias": {"42": 100, "7": -3.5}, "logprobs": true, "top_logprobs": 3
        }))
        .unwrap();
        assert_eq!(s.temperature_milli, 0);
        assert_eq!(s.top_p_milli, 500);
        assert_eq!(s.seed, Some(u64::MAX));
        assert_eq!(s.stop, vec!["END".to_string()]);
        assert_eq!(s.logit_bias.get(&7), Some(&-3500));
        assert_eq!((s.logprobs, s.top_logprobs), (true, 3));
        assert_eq!(parse(json!({"stop": ["a", "b"]})).unwrap().stop.len(), 2);
        for (body, param) in [
            (json!({"temperature": 3}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": -0.1}), "top_p"),
            (json!({"seed": 1.5}), "seed"),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": [""]}), "stop"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"frequency_penalty": -3}), "frequency_penalty"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"1": 101}}), "logit_bias"),
            (json!({"logit_bias": [1]}), "logit_bias"),
            (json!({"logprobs": "yes"}), "logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 300}),
                "top_logprobs",
            ),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().param, param, "{body}");
        }
    }

    #[test]
    fn logprobs_have_openai_shape() {
        let t = TokenLogprob {
            chosen: TopLogprob {
                token: b"Hi".to_vec(),
                logprob: Logprob::from_f32(-0.5),
            },
            top: vec![TopLogprob {
                token: vec![0xe2],
                logprob: Logprob::from_f32(-2.0),
            }],
        };
        let v = logprobs_json(&[t]);
        assert_eq!(
            v,
            json!({"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                "top_logprobs": [{"token": "\u{FFFD}", "logprob": -2.0, "bytes": [226]}]}]})
        );
    }
}
