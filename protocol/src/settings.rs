//! The provider's settings: what a provider chooses for the enclave it
//! boots, outside the measured release.
//!
//! A release (kernel, initramfs, command line, the verity root disk with
//! the enclave, libtorch and the models, and the release's configuration)
//! has one launch measurement per platform and VM shape, whoever boots it.
//! What differs between providers — base prices, the payment contract,
//! how many requests run at once — is handed to the enclave once at boot
//! (by the host over vsock, or from a file for a process enclave), checked
//! strictly against the bounds the release sets, and carried in the claims
//! as the exact bytes of [`ProviderSettings::to_cbor`]. A client reads them
//! from verified claims ([`ProviderSettings::from_cbor`]) and refuses a
//! provider whose price sheet or payment contract says otherwise.
//!
//! Wire form (canonical CBOR, strict): `{"prices": {model: {"prompt",
//! "cached", "completion"}}, "payment_contract"?: text, "max_concurrent"?:
//! uint}`.

use std::collections::BTreeMap;

use ciborium::value::Value;
use cocoon_attestation::cbor::{self, CborError, MapReader};

use crate::receipt::UnitPrice;

/// Most bytes of encoded settings.
pub const MAX_SETTINGS: usize = 16 * 1024;
/// Most priced models.
pub const MAX_MODELS: usize = 64;
/// Longest model name.
pub const MAX_MODEL_NAME: usize = 128;

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Not well-formed CBOR, or not this shape.
    #[error(transparent)]
    Cbor(#[from] CborError),
    /// Well-formed but not acceptable.
    #[error("provider settings: {0}")]
    Invalid(String),
}

/// What one provider chose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderSettings {
    /// Base price per model (nanoton per token), before the load
    /// multiplier.
    pub prices: BTreeMap<String, UnitPrice>,
    /// The provider's TON payment contract (raw form `wc:hex`), when it
    /// settles on chain.
    pub payment_contract: Option<String>,
    /// Most requests run at once (at most the release's limit).
    pub max_concurrent: Option<u32>,
}

/// Whether `s` is a raw TON address: `-1` or `0`, a colon, 64 hex digits.
pub fn is_raw_address(s: &str) -> bool {
    match s.split_once(':') {
        Some((wc, hash)) => {
            (wc == "0" || wc == "-1")
                && hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

impl ProviderSettings {
    /// Checks the shape (bounds are the release's business):
    /// 1..=[`MAX_MODELS`] models with names of 1..=[`MAX_MODEL_NAME`]
    /// printable bytes, `cached ≤ prompt`, a raw contract address, a
    /// positive concurrency.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        if self.prices.is_empty() || self.prices.len() > MAX_MODELS {
            return bad(format!("1 to {MAX_MODELS} priced models needed"));
        }
        for (name, p) in &self.prices {
            if name.is_empty() || name.len() > MAX_MODEL_NAME || name.chars().any(char::is_control)
            {
                return bad(format!(
                    "model name {name:?} must be 1 to {MAX_MODEL_NAME} printable bytes"
                ));
            }
            if p.cached > p.prompt {
                return bad(format!(
                    "{name}: the cached-prompt price {} is above the prompt price {}",
                    p.cached, p.prompt
                ));
            }
        }
        if let Some(c) = &self.payment_contract {
            if !is_raw_address(c) {
                return bad(format!(
                    "payment_contract {c:?} is not a raw TON address (wc:64 hex digits)"
                ));
            }
        }
        if self.max_concurrent == Some(0) {
            return bad("max_concurrent must be at least 1".into());
        }
        Ok(())
    }

    /// Canonical CBOR: the bytes the claims carry.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut e = vec![(
            "prices",
            Value::Map(
                self.prices
                    .iter()
                    .map(|(k, v)| (Value::Text(k.clone()), v.to_cbor_value()))
                    .collect(),
            ),
        )];
        if let Some(c) = &self.payment_contract {
            e.push(("payment_contract", Value::Text(c.clone())));
        }
        if let Some(n) = self.max_concurrent {
            e.push(("max_concurrent", Value::Integer(n.into())));
        }
        cbor::encode(&cbor::map(e))
    }

    /// Decodes strictly: canonical encoding, no unknown keys, valid shape.
    pub fn from_cbor(bytes: &[u8]) -> Result<ProviderSettings, SettingsError> {
        let what = "provider_settings";
        let mut m = MapReader::new(cbor::decode(bytes, MAX_SETTINGS)?, what)?;
        let prices = crate::pricing::decode_price_map(m.take("prices")?, &format!("{what}.prices"))
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        if prices.len() > MAX_MODELS {
            return Err(SettingsError::Invalid(format!(
                "{} models, more than {MAX_MODELS}",
                prices.len()
            )));
        }
        let payment_contract = m.text_opt("payment_contract")?;
        let max_concurrent = match m.take_opt("max_concurrent") {
            None => None,
            Some(Value::Integer(i)) => Some(u32::try_from(i).map_err(|_| {
                SettingsError::Invalid("max_concurrent does not fit in 32 bits".into())
            })?),
            Some(_) => {
                return Err(CborError::Invalid(
                    format!("{what}.max_concurrent"),
                    "expected an unsigned integer".into(),
                )
                .into())
            }
        };
        m.finish()?;
        let s = ProviderSettings {
            prices,
            payment_contract,
            max_concurrent,
        };
        s.validate()?;
        if s.to_cbor() != bytes {
            return Err(SettingsError::Invalid("not in canonical encoding".into()));
        }
        Ok(s)
    }

    /// Reads the provider's TOML form:
    ///
    /// ```toml
    /// payment_contract = "0:…"      # optional
    /// max_concurrent = 8            # optional
    /// [prices.smollm2-135m-instruct]
    /// prompt = 20
    /// cached = 10                   # optional, default: prompt
    /// completion = 60
    /// ```
    pub fn from_toml(text: &str) -> Result<ProviderSettings, SettingsError> {
        let v: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            SettingsError::Invalid(format!("TOML: {}", e.message()))
        })?;
        let mut s = ProviderSettings::default();
        for (key, value) in v {
            match (key.as_str(), value) {
                ("payment_contract", toml::Value::String(c)) => s.payment_contract = Some(c),
                ("max_concurrent", toml::Value::Integer(n)) => {
                    s.max_concurrent = Some(u32::try_from(n).map_err(|_| {
                        SettingsError::Invalid(format!("max_concurrent {n} is out of range"))
                    })?)
                }
                ("prices", toml::Value::Table(models)) => {
                    for (name, p) in models {
                        let toml::Value::Table(p) = p else {
                            return Err(SettingsError::Invalid(format!(
                                "[prices.{name}] must be a table"
                            )));
                        };
                        let get = |k: &str, required: bool| -> Result<Option<u64>, SettingsError> {
                            match p.get(k) {
                                None if required => Err(SettingsError::Invalid(format!(
                                    "[prices.{name}] has no {k}"
                                ))),
                                None => Ok(None),
                                Some(toml::Value::Integer(i)) => u64::try_from(*i)
                                    .map(Some)
                                    .map_err(|_| SettingsError::Invalid(format!("[prices.{name}] {k} must not be negative"))),
                                Some(_) => Err(SettingsError::Invalid(format!(
                                    "[prices.{name}] {k} must be an integer (nanoton per token)"
                                ))),
                            }
                        };
                        let prompt = get("prompt", true)?.unwrap_or(0);
                        let completion = get("completion", true)?.unwrap_or(0);
                        let cached = get("cached", false)?.unwrap_or(prompt);
                        if let Some(k) = p.keys().find(|k| !["prompt", "cached", "completion"].contains(&k.as_str())) {
                            return Err(SettingsError::Invalid(format!("[prices.{name}] has an unknown key {k:?}")));
                        }
                        s.prices.insert(
                            name,
                            UnitPrice {
                                prompt,
                                cached,
                                completion,
                            },
                        );
                    }
                }
                (k, _) => {
                    return Err(SettingsError::Invalid(format!(
                        "unknown or mistyped key {k:?} (known: payment_contract, max_concurrent, [prices.MODEL])"
                    )))
                }
            }
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProviderSettings {
        ProviderSettings::from_toml(
            "payment_contract = \"0:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\nmax_concurrent = 4\n[prices.m]\nprompt = 20\ncompletion = 60\n",
        )
        .unwrap()
    }

    #[test]
    fn round_trips_canonically() {
        let s = sample();
        assert_eq!(s.prices["m"].cached, 20);
        let b = s.to_cbor();
        assert_eq!(ProviderSettings::from_cbor(&b).unwrap(), s);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(ProviderSettings::from_toml("[prices.m]\nprompt = 1\n").is_err());
        assert!(ProviderSettings::from_toml("[prices.m]\nprompt = -1\ncompletion = 1\n").is_err());
        assert!(ProviderSettings::from_toml(
            "[prices.m]\nprompt = 1\ncompletion = 1\ncached = 2\n"
        )
        .is_err());
        assert!(
            ProviderSettings::from_toml("color = 1\n[prices.m]\nprompt = 1\ncompletion = 1\n")
                .is_err()
        );
        assert!(ProviderSettings::from_toml(
            "payment_contract = \"EQabc\"\n[prices.m]\nprompt = 1\ncompletion = 1\n"
        )
        .is_err());
        assert!(ProviderSettings::from_toml(
            "max_concurrent = 0\n[prices.m]\nprompt = 1\ncompletion = 1\n"
        )
        .is_err());
        assert!(ProviderSettings::from_toml("").is_err());
        assert!(ProviderSettings::from_cbor(&[0xff]).is_err());
        // Trailing bytes and unknown keys.
        let mut b = sample().to_cbor();
        b.push(0);
        assert!(ProviderSettings::from_cbor(&b).is_err());
    }
}
