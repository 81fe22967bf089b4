//! How a chat completion picks its tokens, and the log-probabilities the
//! enclave reports back: the OpenAI sampling parameters as they travel
//! sealed inside a chat request ([`Sampling`]) and inside the response
//! stream ([`TokenLogprob`]).
//!
//! Owns the values, their ranges and their canonical CBOR. It does not
//! sample: the enclave's backends do (`cocoon-enclave`'s `sampling`).
//!
//! # Fixed point on the wire
//!
//! Floats have several CBOR encodings (half, single, double) and NaN has
//! many, which does not go with "decode, re-encode, compare". So every
//! fractional value is an integer of thousandths (log-probabilities:
//! millionths), and the Rust API converts at the edge
//! ([`Sampling::from_openai`] and the `f32` accessors):
//!
//! ```text
//! {"temperature": uint,          thousandths, 0..=2000 (0 = greedy, argmax)
//!  "top_p": uint,                thousandths, 0..=1000
//!  "seed": uint,                 only when the client chose one
//!  "stop": [text, ...],          at most 4, each 1..=64 bytes
//!  "presence_penalty": int,      thousandths, -2000..=2000
//!  "frequency_penalty": int,     thousandths, -2000..=2000
//!  "logit_bias": [[uint token id, int thousandths -100000..=100000], ...],
//!                                at most 300, token ids strictly ascending
//!  "logprobs": bool,
//!  "top_logprobs": uint}         0..=20, and 0 unless logprobs is true
//! ```
//!
//! A chat request whose sampling is [`Sampling::greedy`] carries no
//! `sampling` key at all (the encoding from before sampling existed), so a
//! greedy request has exactly one encoding.

use std::collections::BTreeMap;

use ciborium::Value;
use cocoon_attestation::cbor::{self, MapReader};

use crate::message::MessageError;

/// Highest temperature, in thousandths (OpenAI: 2).
pub const MAX_TEMPERATURE_MILLI: u16 = 2000;
/// `top_p` of 1, in thousandths.
pub const TOP_P_ONE_MILLI: u16 = 1000;
/// Largest absolute presence or frequency penalty, in thousandths (OpenAI: 2).
pub const MAX_PENALTY_MILLI: i16 = 2000;
/// Largest absolute logit bias, in thousandths (OpenAI: 100).
pub const MAX_LOGIT_BIAS_MILLI: i32 = 100_000;
/// Most entries of `logit_bias` (OpenAI's limit).
pub const MAX_LOGIT_BIAS_ENTRIES: usize = 300;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 64;
/// Most alternatives per token in `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// Most bytes of one token's text in a [`TokenLogprob`].
pub const MAX_TOKEN_BYTES: usize = 256;
/// The lowest log-probability reported, in millionths (OpenAI reports
/// -9999.0 for tokens it considers impossible).
pub const MIN_LOGPROB_MICROS: i64 = -9_999_000_000;

/// An out-of-range sampling value; `param` is the OpenAI field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct SamplingError {
    /// The OpenAI request field at fault (`temperature`, `stop`, ...).
    pub param: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl SamplingError {
    fn new(param: &'static str, message: impl Into<String>) -> SamplingError {
        SamplingError {
            param,
            message: message.into(),
        }
    }
}

impl From<SamplingError> for MessageError {
    fn from(e: SamplingError) -> MessageError {
        MessageError::Invalid(format!("request.sampling.{e}"))
    }
}

/// `value` in thousandths, refused unless finite and within `lo..=hi`
/// (the bounds are in the caller's units, as OpenAI documents them).
pub fn to_milli(value: f64, param: &'static str, lo: f64, hi: f64) -> Result<i32, SamplingError> {
    if !value.is_finite() || value < lo || value > hi {
        return Err(SamplingError::new(
            param,
            format!("{value} is out of range (must be between {lo} and {hi})"),
        ));
    }
    // In range, so the product fits easily in an i32.
    Ok((value * 1000.0).round() as i32)
}

/// How a chat completion picks its tokens (OpenAI's parameters, fixed
/// point). [`Sampling::default`] is [`Sampling::greedy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampling {
    /// Temperature in thousandths, `0..=2000`; 0 means greedy (argmax).
    pub temperature_milli: u16,
    /// Nucleus mass in thousandths, `0..=1000`: sample from the smallest
    /// set of most likely tokens whose probabilities sum to at least this
    /// (never fewer than one token).
    pub top_p_milli: u16,
    /// Seed of the draw: the same seed, prompt and model give the same
    /// tokens on the same device. `None`: the enclave seeds from its RNG.
    pub seed: Option<u64>,
    /// Strings that end the answer; the answer is cut before the first.
    pub stop: Vec<String>,
    /// Subtracted once from the logit of every token already generated,
    /// thousandths, `-2000..=2000`.
    pub presence_penalty_milli: i16,
    /// Subtracted from a token's logit per time it was generated,
    /// thousandths, `-2000..=2000`.
    pub frequency_penalty_milli: i16,
    /// Added to the logit of a token id, thousandths,
    /// `-100000..=100000`; at most 300 entries.
    pub logit_bias: BTreeMap<u32, i32>,
    /// Report the log-probability of every generated token.
    pub logprobs: bool,
    /// Also report this many most likely alternatives per token, `0..=20`;
    /// only with `logprobs`.
    pub top_logprobs: u8,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling::greedy()
    }
}

impl Sampling {
    /// Argmax decoding: what a request without sampling parameters gets,
    /// deterministic so an answer can be checked against a reference run.
    pub fn greedy() -> Sampling {
        Sampling {
            temperature_milli: 0,
            top_p_milli: TOP_P_ONE_MILLI,
            seed: None,
            stop: Vec::new(),
            presence_penalty_milli: 0,
            frequency_penalty_milli: 0,
            logit_bias: BTreeMap::new(),
            logprobs: false,
            top_logprobs: 0,
        }
    }

    /// OpenAI's defaults: temperature 1, top_p 1, nothing else.
    pub fn openai_default() -> Sampling {
        Sampling {
            temperature_milli: 1000,
            ..Sampling::greedy()
        }
    }

    /// OpenAI's defaults overridden by the fields a request set, each in
    /// OpenAI's units; the first out-of-range field is the error.
    #[allow(clippy::too_many_arguments)]
    pub fn from_openai(
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Vec<String>,
        presence_penalty: Option<f64>,
        frequency_penalty: Option<f64>,
        logit_bias: &[(u32, f64)],
        logprobs: bool,
        top_logprobs: Option<u8>,
    ) -> Result<Sampling, SamplingError> {
        let mut s = Sampling::openai_default();
        if let Some(t) = temperature {
            s.temperature_milli = to_milli(t, "temperature", 0.0, 2.0)? as u16;
        }
        if let Some(p) = top_p {
            s.top_p_milli = to_milli(p, "top_p", 0.0, 1.0)? as u16;
        }
        s.seed = seed;
        s.stop = stop;
        if let Some(p) = presence_penalty {
            s.presence_penalty_milli = to_milli(p, "presence_penalty", -2.0, 2.0)? as i16;
        }
        if let Some(p) = frequency_penalty {
            s.frequency_penalty_milli = to_milli(p, "frequency_penalty", -2.0, 2.0)? as i16;
        }
        for &(id, bias) in logit_bias {
            let b = to_milli(bias, "logit_bias", -100.0, 100.0)?;
            if s.logit_bias.insert(id, b).is_some() {
                return Err(SamplingError::new(
                    "logit_bias",
                    format!("token {id} is given twice"),
                ));
            }
        }
        s.logprobs = logprobs;
        s.top_logprobs = top_logprobs.unwrap_or(0);
        s.validate()?;
        Ok(s)
    }

    /// Check every range and rule of the format.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if self.temperature_milli > MAX_TEMPERATURE_MILLI {
            return Err(SamplingError::new(
                "temperature",
                format!("{} thousandths is more than 2", self.temperature_milli),
            ));
        }
        if self.top_p_milli > TOP_P_ONE_MILLI {
            return Err(SamplingError::new(
                "top_p",
                format!("{} thousandths is more than 1", self.top_p_milli),
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(SamplingError::new(
                "stop",
                format!(
                    "{} stop strings, more than the limit of {MAX_STOP_STRINGS}",
                    self.stop.len()
                ),
            ));
        }
        if let Some(s) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(SamplingError::new(
                "stop",
                format!(
                    "a stop string of {} bytes (each must be 1 to {MAX_STOP_BYTES} bytes)",
                    s.len()
                ),
            ));
        }
        for (param, p) in [
            ("presence_penalty", self.presence_penalty_milli),
            ("frequency_penalty", self.frequency_penalty_milli),
        ] {
            if p.unsigned_abs() > MAX_PENALTY_MILLI.unsigned_abs() {
                return Err(SamplingError::new(
                    param,
                    format!("{p} thousandths is outside -2..=2"),
                ));
            }
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS_ENTRIES {
            return Err(SamplingError::new(
                "logit_bias",
                format!(
                    "{} entries, more than the limit of {MAX_LOGIT_BIAS_ENTRIES}",
                    self.logit_bias.len()
                ),
            ));
        }
        if let Some((id, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| b.unsigned_abs() > MAX_LOGIT_BIAS_MILLI.unsigned_abs())
        {
            return Err(SamplingError::new(
                "logit_bias",
                format!("token {id}: {b} thousandths is outside -100..=100"),
            ));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(SamplingError::new(
                "top_logprobs",
                format!("{} is more than {MAX_TOP_LOGPROBS}", self.top_logprobs),
            ));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return Err(SamplingError::new(
                "top_logprobs",
                "top_logprobs needs logprobs = true",
            ));
        }
        Ok(())
    }

    /// Whether this is plain argmax decoding with nothing to adjust or
    /// report: the backend may then pick the token without looking at
    /// the logits itself.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature_milli == 0
            && self.presence_penalty_milli == 0
            && self.frequency_penalty_milli == 0
            && self.logit_bias.is_empty()
            && !self.logprobs
    }

    /// Temperature as OpenAI writes it.
    pub fn temperature(&self) -> f32 {
        f32::from(self.temperature_milli) / 1000.0
    }

    /// `top_p` as OpenAI writes it.
    pub fn top_p(&self) -> f32 {
        f32::from(self.top_p_milli) / 1000.0
    }

    /// Presence penalty as OpenAI writes it.
    pub fn presence_penalty(&self) -> f32 {
        f32::from(self.presence_penalty_milli) / 1000.0
    }

    /// Frequency penalty as OpenAI writes it.
    pub fn frequency_penalty(&self) -> f32 {
        f32::from(self.frequency_penalty_milli) / 1000.0
    }

    /// The bias of each token as OpenAI writes it.
    pub fn logit_bias_f32(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.logit_bias
            .iter()
            .map(|(&id, &b)| (id, b as f32 / 1000.0))
    }

    /// The CBOR value (see the module documentation).
    pub(crate) fn to_value(&self) -> Value {
        let mut m = vec![
            ("temperature", Value::Integer(self.temperature_milli.into())),
            ("top_p", Value::Integer(self.top_p_milli.into())),
        ];
        if let Some(seed) = self.seed {
            m.push(("seed", Value::Integer(seed.into())));
        }
        m.extend([
            (
                "stop",
                Value::Array(self.stop.iter().cloned().map(Value::Text).collect()),
            ),
            (
                "presence_penalty",
                Value::Integer(self.presence_penalty_milli.into()),
            ),
            (
                "frequency_penalty",
                Value::Integer(self.frequency_penalty_milli.into()),
            ),
            (
                "logit_bias",
                Value::Array(
                    self.logit_bias
                        .iter()
                        .map(|(&id, &b)| {
                            Value::Array(vec![Value::Integer(id.into()), Value::Integer(b.into())])
                        })
                        .collect(),
                ),
            ),
            ("logprobs", Value::Bool(self.logprobs)),
            ("top_logprobs", Value::Integer(self.top_logprobs.into())),
        ]);
        cbor::map(m)
    }

    /// Decode strictly: every key but `seed` required, unknown keys, wrong
    /// types, unsorted or repeated `logit_bias` ids and out-of-range values
    /// refused. (The request's caller also compares the re-encoding.)
    pub(crate) fn from_value(v: Value) -> Result<Sampling, MessageError> {
        let mut m = MapReader::new(v, "request.sampling")?;
        let temperature_milli = int::<u16>(m.take("temperature")?, "temperature")?;
        let top_p_milli = int::<u16>(m.take("top_p")?, "top_p")?;
        let seed = m
            .take_opt("seed")
            .map(|v| int::<u64>(v, "seed"))
            .transpose()?;
        let Value::Array(items) = m.take("stop")? else {
            return Err(invalid("stop", "expected an array"));
        };
        if items.len() > MAX_STOP_STRINGS {
            return Err(invalid("stop", "more than 4 stop strings"));
        }
        let stop = items
            .into_iter()
            .map(|v| match v {
                Value::Text(t) => Ok(t),
                _ => Err(invalid("stop", "every stop string must be text")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let presence_penalty_milli = int::<i16>(m.take("presence_penalty")?, "presence_penalty")?;
        let frequency_penalty_milli =
            int::<i16>(m.take("frequency_penalty")?, "frequency_penalty")?;
        let Value::Array(items) = m.take("logit_bias")? else {
            return Err(invalid("logit_bias", "expected an array"));
        };
        if items.len() > MAX_LOGIT_BIAS_ENTRIES {
            return Err(invalid("logit_bias", "more than 300 entries"));
        }
        let mut logit_bias = BTreeMap::new();
        let mut last: Option<u32> = None;
        for item in items {
            let Value::Array(pair) = item else {
                return Err(invalid(
                    "logit_bias",
                    "every entry must be [token id, bias]",
                ));
            };
            let Ok([id, bias]) = <[Value; 2]>::try_from(pair) else {
                return Err(invalid(
                    "logit_bias",
                    "every entry must be [token id, bias]",
                ));
            };
            let id = int::<u32>(id, "logit_bias")?;
            let bias = int::<i32>(bias, "logit_bias")?;
            if last.is_some_and(|l| l >= id) {
                return Err(invalid(
                    "logit_bias",
                    "token ids must be strictly ascending",
                ));
            }
            last = Some(id);
            logit_bias.insert(id, bias);
        }
        let logprobs = match m.take("logprobs")? {
            Value::Bool(b) => b,
            _ => return Err(invalid("logprobs", "expected a boolean")),
        };
        let top_logprobs = int::<u8>(m.take("top_logprobs")?, "top_logprobs")?;
        m.finish()?;
        let s = Sampling {
            temperature_milli,
            top_p_milli,
            seed,
            stop,
            presence_penalty_milli,
            frequency_penalty_milli,
            logit_bias,
            logprobs,
            top_logprobs,
        };
        s.validate()?;
        Ok(s)
    }
}

fn invalid(param: &str, message: &str) -> MessageError {
    MessageError::Invalid(format!("request.sampling.{param}: {message}"))
}

/// An integer value that fits `T`.
fn int<T: TryFrom<i128>>(v: Value, param: &str) -> Result<T, MessageError> {
    match v {
        Value::Integer(i) => T::try_from(i128::from(i))
            .map_err(|_| invalid(param, "integer out of range for this field")),
        _ => Err(invalid(param, "expected an integer")),
    }
}

/// A log-probability (natural log), kept in millionths so it has one
/// encoding; between [`MIN_LOGPROB_MICROS`] and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Logprob(i64);

impl Logprob {
    /// From a computed value: rounded to millionths and clamped into
    /// range (NaN and -inf become the minimum, anything above 0 becomes 0).
    pub fn from_f32(x: f32) -> Logprob {
        if x.is_nan() {
            return Logprob(MIN_LOGPROB_MICROS);
        }
        let micros = (f64::from(x) * 1e6).round();
        Logprob((micros as i64).clamp(MIN_LOGPROB_MICROS, 0))
    }

    /// From millionths, if in range.
    pub fn from_micros(micros: i64) -> Option<Logprob> {
        (MIN_LOGPROB_MICROS..=0)
            .contains(&micros)
            .then_some(Logprob(micros))
    }

    /// Millionths.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// The value as OpenAI reports it.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// One alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLogprob {
    /// The token's text as UTF-8 bytes (a token may hold part of a
    /// character; such bytes are as the tokenizer decodes the token alone).
    pub token: Vec<u8>,
    /// Its log-probability.
    pub logprob: Logprob,
}

/// The log-probability of one generated token, and of the most likely
/// alternatives at that position (most likely first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLogprob {
    /// The generated token and its log-probability.
    pub chosen: TopLogprob,
    /// Up to [`MAX_TOP_LOGPROBS`] alternatives.
    pub top: Vec<TopLogprob>,
}

impl TopLogprob {
    fn to_value(&self) -> Value {
        cbor::map(vec![
            ("token", Value::Bytes(self.token.clone())),
            ("logprob", Value::Integer(self.logprob.0.into())),
        ])
    }

    fn from_value(v: Value, what: &str) -> Result<TopLogprob, MessageError> {
        let mut m = MapReader::new(v, what)?;
        let token = m.bytes("token")?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(MessageError::Invalid(format!(
                "{what}.token: {} bytes, more than {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let logprob = match m.take("logprob")? {
            Value::Integer(i) => i64::try_from(i).ok().and_then(Logprob::from_micros),
            _ => None,
        }
        .ok_or_else(|| {
            MessageError::Invalid(format!(
                "{what}.logprob: expected an integer of millionths between {MIN_LOGPROB_MICROS} and 0"
            ))
        })?;
        m.finish()?;
        Ok(TopLogprob { token, logprob })
    }
}

impl TokenLogprob {
    /// The CBOR value: `{"token": bytes, "logprob": int, "top": [{"token",
    /// "logprob"}, ...]}`.
    pub(crate) fn to_value(&self) -> Value {
        let mut m = match self.chosen.to_value() {
            Value::Map(m) => m,
            other => return other,
        };
        m.push((
            Value::Text("top".into()),
            Value::Array(self.top.iter().map(TopLogprob::to_value).collect()),
        ));
        Value::Map(m)
    }

    /// Decode strictly.
    pub(crate) fn from_value(v: Value) -> Result<TokenLogprob, MessageError> {
        let what = "event.logprobs";
        let Value::Map(mut entries) = v else {
            return Err(MessageError::Invalid(format!("{what}: expected a map")));
        };
        let top = match entries
            .iter()
            .position(|(k, _)| *k == Value::Text("top".into()))
        {
            Some(i) => entries.remove(i).1,
            None => return Err(MessageError::Invalid(format!("{what}.top: missing"))),
        };
        let chosen = TopLogprob::from_value(Value::Map(entries), what)?;
        let Value::Array(items) = top else {
            return Err(MessageError::Invalid(format!(
                "{what}.top: expected an array"
            )));
        };
        if items.len() > usize::from(MAX_TOP_LOGPROBS) {
            return Err(MessageError::Invalid(format!(
                "{what}.top: more than {MAX_TOP_LOGPROBS} alternatives"
            )));
        }
        let top = items
            .into_iter()
            .map(|v| TopLogprob::from_value(v, "event.logprobs.top[]"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenLogprob { chosen, top })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Sampling {
        Sampling {
            temperature_milli: 700,
            top_p_milli: 900,
            seed: Some(42),
            stop: vec!["\n\n".into(), "END".into()],
            presence_penalty_milli: -500,
            frequency_penalty_milli: 1500,
            logit_bias: [(3, -100_000), (17, 2500)].into_iter().collect(),
            logprobs: true,
            top_logprobs: 5,
        }
    }

    #[test]
    fn openai_values_convert_and_ranges_name_the_field() {
        let s = Sampling::from_openai(
            Some(0.7),
            Some(0.9),
            Some(42),
            vec!["\n\n".into(), "END".into()],
            Some(-0.5),
            Some(1.5),
            &[(17, 2.5), (3, -100.0)],
            true,
            Some(5),
        )
        .unwrap();
        assert_eq!(s, full());
        assert_eq!(s.temperature(), 0.7);
        let bad = |t, p, pp, lb: &[(u32, f64)], lp, tl| {
            Sampling::from_openai(t, p, None, vec![], pp, None, lb, lp, tl)
                .unwrap_err()
                .param
        };
        assert_eq!(bad(Some(2.5), None, None, &[], false, None), "temperature");
        assert_eq!(
            bad(Some(f64::NAN), None, None, &[], false, None),
            "temperature"
        );
        assert_eq!(bad(None, Some(1.01), None, &[], false, None), "top_p");
        assert_eq!(
            bad(None, None, Some(-2.1), &[], false, None),
            "presence_penalty"
        );
        assert_eq!(
            bad(None, None, None, &[(1, 101.0)], false, None),
            "logit_bias"
        );
        assert_eq!(
            bad(None, None, None, &[(1, 1.0), (1, 2.0)], false, None),
            "logit_bias"
        );
        assert_eq!(bad(None, None, None, &[], true, Some(21)), "top_logprobs");
        assert_eq!(bad(None, None, None, &[], false, Some(2)), "top_logprobs");
        let stop = |s: Vec<&str>| {
            Sampling::from_openai(
                None,
                None,
                None,
                s.into_iter().map(String::from).collect(),
                None,
                None,
                &[],
                false,
                None,
            )
        };
        assert_eq!(stop(vec!["a"; 5]).unwrap_err().param, "stop");
        assert_eq!(stop(vec![""]).unwrap_err().param, "stop");
        assert_eq!(stop(vec![&"x".repeat(65)]).unwrap_err().param, "stop");
        assert!(stop(vec![&"x".repeat(64)]).is_ok());
        assert_eq!(Sampling::openai_default().temperature(), 1.0);
        assert!(Sampling::greedy().is_plain_greedy());
        assert!(!full().is_plain_greedy());
    }

    #[test]
    fn logprobs_clamp_and_round() {
        assert_eq!(Logprob::from_f32(0.25).micros(), 0);
        assert_eq!(
            Logprob::from_f32(f32::NEG_INFINITY).micros(),
            MIN_LOGPROB_MICROS
        );
        assert_eq!(Logprob::from_f32(f32::NAN).micros(), MIN_LOGPROB_MICROS);
        assert_eq!(Logprob::from_f32(-1.5).as_f64(), -1.5);
        assert!(Logprob::from_micros(1).is_none());
        assert!(Logprob::from_micros(MIN_LOGPROB_MICROS - 1).is_none());
    }
}
