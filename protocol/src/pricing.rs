//! Prices: the enclave's measured price table, the load multiplier rule and
//! the price sheet a host publishes.
//!
//! Who decides what:
//!
//! * The **enclave** holds the base prices per model and token kind
//!   (prompt, cached, completion; nanoton per token) and the bounds of the
//!   load multiplier, from its measured configuration ([`PriceTable`]). It
//!   charges a request exactly the prices the client put in the billing
//!   metadata, and refuses the request unless those are its base prices
//!   scaled by a multiplier inside its bounds ([`PriceTable::accept`]).
//! * The **host** picks the multiplier from its load ([`load_multiplier`])
//!   and publishes a [`PriceSheet`] (`GET /v1/prices`). It is untrusted: a
//!   sheet only tells the client what to offer.
//! * The **client** reads the sheet, computes the most the request can cost
//!   and refuses to send when that is over its own limit; it then checks
//!   that the receipt charged the prices it accepted.
//!
//! So no receipt can charge a price the client did not accept, or one
//! outside the measured bounds, whatever the host does.
//!
//! # The load rule
//!
//! `utilisation` = requests in flight ÷ capacity, in thousandths, smoothed
//! by the host. The multiplier is `min` up to 50 % utilisation, rises
//! linearly to `max` at 100 % and stays there; it is rounded down to a step
//! of [`MULTIPLIER_STEP`] thousandths and clamped to `[min, max]`.

use std::collections::BTreeMap;

use ciborium::Value;
use cocoon_attestation::cbor::{self, CborError, MapReader};

use crate::receipt::{UnitPrice, MULTIPLIER_ONE};
use crate::seal::{BillingMeta, MAX_MODEL_NAME};

/// Multipliers move in steps of this many thousandths.
pub const MULTIPLIER_STEP: u32 = 50;
/// Utilisation (thousandths) at and below which the multiplier is `min`.
pub const KNEE_MILLI: u32 = 500;
/// Most models in a price table.
pub const MAX_PRICED_MODELS: usize = 256;
/// Most bytes of an encoded price table or sheet.
pub const MAX_PRICE_SHEET: usize = 64 * 1024;
/// Most bytes of a quote id.
pub const MAX_QUOTE_ID: usize = crate::seal::MAX_PRICE_QUOTE_ID;

/// Why prices are refused or do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriceError {
    /// Not a well-formed table or sheet.
    #[error("prices: {0}")]
    Cbor(#[from] CborError),
    /// The enclave has no price for the model.
    #[error("no price for model {0:?}")]
    UnknownModel(String),
    /// The multiplier is outside the measured bounds.
    #[error("multiplier {got}/1000 is outside the enclave's bounds [{min}, {max}]/1000")]
    MultiplierOutOfBounds {
        /// Asked for.
        got: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// The prices are not the base prices under the multiplier.
    #[error("prices {got:?} are not the base prices {base:?} at {multiplier}/1000 (expected {expected:?})")]
    WrongPrice {
        /// Offered.
        got: UnitPrice,
        /// Base.
        base: UnitPrice,
        /// Multiplier.
        multiplier: u32,
        /// What the base and multiplier give.
        expected: UnitPrice,
    },
    /// A bound or table that makes no sense.
    #[error("prices: {0}")]
    Invalid(String),
}

/// The enclave's measured prices: base prices per model and the bounds of
/// the load multiplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    /// Base prices per model (nanoton per token).
    pub models: BTreeMap<String, UnitPrice>,
    /// Lowest multiplier, thousandths.
    pub min_multiplier_milli: u32,
    /// Highest multiplier, thousandths.
    pub max_multiplier_milli: u32,
}

impl PriceTable {
    /// Check the bounds: `0 < min ≤ max ≤ 100 000` (at most 100×), and the
    /// size limits.
    pub fn validate(&self) -> Result<(), PriceError> {
        if self.min_multiplier_milli == 0
            || self.min_multiplier_milli > self.max_multiplier_milli
            || self.max_multiplier_milli > 100 * MULTIPLIER_ONE
        {
            return Err(PriceError::Invalid(format!(
                "multiplier bounds [{}, {}]/1000 must satisfy 0 < min <= max <= 100000",
                self.min_multiplier_milli, self.max_multiplier_milli
            )));
        }
        if self.models.len() > MAX_PRICED_MODELS {
            return Err(PriceError::Invalid(format!(
                "{} models, more than {MAX_PRICED_MODELS}",
                self.models.len()
            )));
        }
        for (name, base) in &self.models {
            if name.len() > MAX_MODEL_NAME {
                return Err(PriceError::Invalid(format!(
                    "model name of {} bytes, more than {MAX_MODEL_NAME}",
                    name.len()
                )));
            }
            if base.scaled(self.max_multiplier_milli).is_none() {
                return Err(PriceError::Invalid(format!(
                    "prices of {name:?} overflow at the highest multiplier"
                )));
            }
        }
        Ok(())
    }

    /// The prices of `model` under `multiplier_milli`, if the model is
    /// priced and the multiplier inside the bounds.
    pub fn quote(&self, model: &str, multiplier_milli: u32) -> Result<UnitPrice, PriceError> {
        let base = self
            .models
            .get(model)
            .ok_or_else(|| PriceError::UnknownModel(model.to_owned()))?;
        if multiplier_milli < self.min_multiplier_milli
            || multiplier_milli > self.max_multiplier_milli
        {
            return Err(PriceError::MultiplierOutOfBounds {
                got: multiplier_milli,
                min: self.min_multiplier_milli,
                max: self.max_multiplier_milli,
            });
        }
        base.scaled(multiplier_milli)
            .ok_or_else(|| PriceError::Invalid("price overflow".into()))
    }

    /// Whether a request's billing metadata offers exactly this table's
    /// prices for its model under an allowed multiplier.
    pub fn accept(&self, meta: &BillingMeta) -> Result<(), PriceError> {
        let expected = self.quote(&meta.model, meta.multiplier_milli)?;
        if expected != meta.unit_price {
            return Err(PriceError::WrongPrice {
                got: meta.unit_price,
                base: self.models[&meta.model],
                multiplier: meta.multiplier_milli,
                expected,
            });
        }
        Ok(())
    }

    /// CBOR value `{"models": {name: prices}, "min_multiplier_milli",
    /// "max_multiplier_milli"}`.
    pub fn to_cbor_value(&self) -> Value {
        cbor::map(vec![
            (
                "models",
                Value::Map(
                    self.models
                        .iter()
                        .map(|(k, v)| (Value::Text(k.clone()), v.to_cbor_value()))
                        .collect(),
                ),
            ),
            (
                "min_multiplier_milli",
                Value::Integer(self.min_multiplier_milli.into()),
            ),
            (
                "max_multiplier_milli",
                Value::Integer(self.max_multiplier_milli.into()),
            ),
        ])
    }

    /// Canonical CBOR (the enclave → host `PriceTable` frame).
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&self.to_cbor_value())
    }

    /// Decode strictly and validate.
    pub fn from_cbor_value(v: Value, what: &str) -> Result<PriceTable, PriceError> {
        let mut m = MapReader::new(v, what)?;
        let models = decode_price_map(m.take("models")?, &format!("{what}.models"))?;
        let table = PriceTable {
            models,
            min_multiplier_milli: u32_of(&mut m, "min_multiplier_milli", what)?,
            max_multiplier_milli: u32_of(&mut m, "max_multiplier_milli", what)?,
        };
        m.finish()?;
        table.validate()?;
        Ok(table)
    }

    /// Decode the frame payload strictly (canonical encoding required).
    pub fn from_cbor(bytes: &[u8]) -> Result<PriceTable, PriceError> {
        let table = PriceTable::from_cbor_value(cbor::decode(bytes, MAX_PRICE_SHEET)?, "prices")?;
        if table.to_cbor() != bytes {
            return Err(PriceError::Invalid(
                "price table is not in canonical encoding".into(),
            ));
        }
        Ok(table)
    }
}

/// A CBOR map of model name to [`UnitPrice`], strictly: text keys, each
/// model once, at most [`MAX_PRICED_MODELS`]. `what` names it in errors.
pub(crate) fn decode_price_map(
    v: Value,
    what: &str,
) -> Result<BTreeMap<String, UnitPrice>, PriceError> {
    let Value::Map(entries) = v else {
        return Err(CborError::Invalid(what.into(), "expected a map".into()).into());
    };
    if entries.len() > MAX_PRICED_MODELS {
        return Err(PriceError::Invalid(format!(
            "{} models, more than {MAX_PRICED_MODELS}",
            entries.len()
        )));
    }
    let mut models = BTreeMap::new();
    for (k, v) in entries {
        let Value::Text(name) = k else {
            return Err(CborError::Invalid(what.into(), "model names must be text".into()).into());
        };
        let price = UnitPrice::from_cbor_value(v, &format!("{what}[{name:?}]"))?;
        if models.insert(name.clone(), price).is_some() {
            return Err(PriceError::Invalid(format!("model {name:?} priced twice")));
        }
    }
    Ok(models)
}

/// Token allowance for the chat template and framing around a prompt, on
/// top of one token per byte of the sealed request.
pub const PROMPT_TOKEN_SLACK: u64 = 64;

/// The most a request can cost, the one rule the client (against its own
/// per-request limit) and the host (against the client's authorization
/// cap) both apply: every byte of the sealed request as sent (its CBOR:
/// encapsulated key, billing metadata, ciphertext) counted as a prompt
/// token, plus [`PROMPT_TOKEN_SLACK`], and all `max_tokens` completion
/// tokens, at `price`. Saturates at `u128::MAX`.
pub fn max_cost(price: &UnitPrice, sealed_request_len: usize, max_tokens: u32) -> u128 {
    price
        .max_charge(
            (sealed_request_len as u64).saturating_add(PROMPT_TOKEN_SLACK),
            u64::from(max_tokens),
        )
        .unwrap_or(u128::MAX)
}

fn u32_of(m: &mut MapReader, key: &str, what: &str) -> Result<u32, PriceError> {
    u32::try_from(m.u64(key)?).map_err(|_| {
        PriceError::Cbor(CborError::Invalid(
            format!("{what}.{key}"),
            "does not fit in 32 bits".into(),
        ))
    })
}

/// The load rule (module docs): the multiplier for a utilisation in
/// thousandths (values over 1000 count as 1000).
pub fn load_multiplier(utilisation_milli: u32, min_milli: u32, max_milli: u32) -> u32 {
    let (min, max) = (min_milli.min(max_milli), max_milli.max(min_milli));
    let u = utilisation_milli.min(1000);
    if u <= KNEE_MILLI {
        return min;
    }
    let span = u64::from(max - min);
    let raw = u64::from(min) + span * u64::from(u - KNEE_MILLI) / u64::from(1000 - KNEE_MILLI);
    let stepped = raw - raw % u64::from(MULTIPLIER_STEP);
    u32::try_from(stepped).unwrap_or(max).clamp(min, max)
}

/// One enclave's entry in a price sheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetEntry {
    /// The evidence digest requests to this enclave are sealed to.
    pub evidence_digest: [u8; 32],
    /// Its measured price table (base prices and bounds).
    pub table: PriceTable,
    /// The multiplier now: [`load_multiplier`] of the sheet's utilisation
    /// within this table's bounds.
    pub multiplier_milli: u32,
}

impl SheetEntry {
    /// What a request for `model` must offer: the prices and the
    /// multiplier (refused when the model is not priced or the multiplier
    /// is outside the table's bounds).
    pub fn offer(&self, model: &str) -> Result<(UnitPrice, u32), PriceError> {
        Ok((
            self.table.quote(model, self.multiplier_milli)?,
            self.multiplier_milli,
        ))
    }
}

/// Where a provider settles: its TON payment contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementInfo {
    /// The contract's address (raw form `wc:hex`).
    pub contract: String,
}

/// The host's price sheet (`GET /v1/prices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceSheet {
    /// Names this sheet; requests echo it in `price_quote_id`.
    pub quote_id: String,
    /// When the host issued it (Unix seconds).
    pub issued_at: u64,
    /// Until when the host accepts its multipliers (Unix seconds).
    pub valid_until: u64,
    /// The smoothed utilisation the multipliers were computed from,
    /// thousandths.
    pub utilisation_milli: u32,
    /// Every ready enclave.
    pub enclaves: Vec<SheetEntry>,
    /// The payment contract, when the host settles on chain.
    pub settlement: Option<SettlementInfo>,
}

impl PriceSheet {
    /// The entry of the enclave with this evidence digest.
    pub fn entry(&self, evidence_digest: &[u8; 32]) -> Option<&SheetEntry> {
        self.enclaves
            .iter()
            .find(|e| &e.evidence_digest == evidence_digest)
    }

    /// Canonical CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("quote_id", Value::Text(self.quote_id.clone())),
            ("issued_at", Value::Integer(self.issued_at.into())),
            ("valid_until", Value::Integer(self.valid_until.into())),
            (
                "utilisation_milli",
                Value::Integer(self.utilisation_milli.into()),
            ),
            (
                "enclaves",
                Value::Array(
                    self.enclaves
                        .iter()
                        .map(|e| {
                            cbor::map(vec![
                                ("evidence_digest", Value::Bytes(e.evidence_digest.to_vec())),
                                ("prices", e.table.to_cbor_value()),
                                (
                                    "multiplier_milli",
                                    Value::Integer(e.multiplier_milli.into()),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "settlement",
                match &self.settlement {
                    None => Value::Null,
                    Some(s) => cbor::map(vec![("contract", Value::Text(s.contract.clone()))]),
                },
            ),
        ]))
    }

    /// Decode strictly (unknown keys, oversize inputs, bad tables and
    /// non-canonical encodings are errors).
    pub fn from_cbor(bytes: &[u8]) -> Result<PriceSheet, PriceError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_PRICE_SHEET)?, "price_sheet")?;
        let quote_id = m.text("quote_id")?;
        if quote_id.len() > MAX_QUOTE_ID {
            return Err(PriceError::Invalid(format!(
                "quote id of {} bytes, more than {MAX_QUOTE_ID}",
                quote_id.len()
            )));
        }
        let issued_at = m.u64("issued_at")?;
        let valid_until = m.u64("valid_until")?;
        let utilisation_milli = u32_of(&mut m, "utilisation_milli", "price_sheet")?;
        let Value::Array(items) = m.take("enclaves")? else {
            return Err(CborError::Invalid(
                "price_sheet.enclaves".into(),
                "expected an array".into(),
            )
            .into());
        };
        if items.len() > crate::api::MAX_ENCLAVES {
            return Err(PriceError::Invalid(format!(
                "{} enclaves, more than {}",
                items.len(),
                crate::api::MAX_ENCLAVES
            )));
        }
        let mut enclaves = Vec::with_capacity(items.len());
        for item in items {
            let mut e = MapReader::new(item, "price_sheet.enclaves[]")?;
            let evidence_digest = e.array::<32>("evidence_digest")?;
            let table =
                PriceTable::from_cbor_value(e.take("prices")?, "price_sheet.enclaves[].prices")?;
            let multiplier_milli = u32_of(&mut e, "multiplier_milli", "price_sheet.enclaves[]")?;
            e.finish()?;
            enclaves.push(SheetEntry {
                evidence_digest,
                table,
                multiplier_milli,
            });
        }
        let settlement = match m.take("settlement")? {
            Value::Null => None,
            v => {
                let mut s = MapReader::new(v, "price_sheet.settlement")?;
                let contract = s.text("contract")?;
                s.finish()?;
                if contract.len() > 128 {
                    return Err(PriceError::Invalid("contract address too long".into()));
                }
                Some(SettlementInfo { contract })
            }
        };
        m.finish()?;
        let sheet = PriceSheet {
            quote_id,
            issued_at,
            valid_until,
            utilisation_milli,
            enclaves,
            settlement,
        };
        if sheet.to_cbor() != bytes {
            return Err(PriceError::Invalid(
                "price sheet is not in canonical encoding".into(),
            ));
        }
        Ok(sheet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable {
            models: BTreeMap::from([(
                "m".to_owned(),
                UnitPrice {
                    prompt: 1000,
                    cached: 250,
                    completion: 3000,
                },
            )]),
            min_multiplier_milli: 1000,
            max_multiplier_milli: 3000,
        }
    }

    #[test]
    fn load_rule() {
        assert_eq!(load_multiplier(0, 1000, 3000), 1000);
        assert_eq!(load_multiplier(500, 1000, 3000), 1000);
        // 75 % is half way from the knee: 1000 + 2000 / 2.
        assert_eq!(load_multiplier(750, 1000, 3000), 2000);
        // 76 % gives 2040, rounded down to the 50 step; 78 % gives 2120.
        assert_eq!(load_multiplier(760, 1000, 3000), 2000);
        assert_eq!(load_multiplier(780, 1000, 3000), 2100);
        assert_eq!(load_multiplier(1000, 1000, 3000), 3000);
        assert_eq!(load_multiplier(5000, 1000, 3000), 3000);
        // A max that is not on the step is still reached.
        assert_eq!(load_multiplier(1000, 1000, 1234), 1200);
        assert_eq!(load_multiplier(1000, 1000, 1000), 1000);
        // Monotone.
        let mut last = 0;
        for u in 0..=1200 {
            let m = load_multiplier(u, 900, 2500);
            assert!(m >= last && (900..=2500).contains(&m));
            last = m;
        }
    }

    #[test]
    fn accept_exact_prices_only() {
        let t = table();
        let mut meta = BillingMeta {
            model: "m".into(),
            max_tokens: 10,
            price_quote_id: "q".into(),
            unit_price: t.quote("m", 1500).unwrap(),
            multiplier_milli: 1500,
            client_account: [0; 32],
            expires_at: 1_800_000_000,
        };
        assert_eq!(
            meta.unit_price,
            UnitPrice {
                prompt: 1500,
                cached: 375,
                completion: 4500
            }
        );
        t.accept(&meta).unwrap();
        meta.unit_price.completion -= 1;
        assert!(matches!(
            t.accept(&meta),
            Err(PriceError::WrongPrice { .. })
        ));
        meta.multiplier_milli = 3050;
        meta.unit_price = t.models["m"].scaled(3050).unwrap();
        assert!(matches!(
            t.accept(&meta),
            Err(PriceError::MultiplierOutOfBounds { .. })
        ));
        meta.model = "other".into();
        assert!(matches!(t.accept(&meta), Err(PriceError::UnknownModel(_))));
    }

    #[test]
    fn table_and_sheet_round_trip_strictly() {
        let t = table();
        assert_eq!(PriceTable::from_cbor(&t.to_cbor()).unwrap(), t);
        let sheet = PriceSheet {
            quote_id: "q-1".into(),
            issued_at: 10,
            valid_until: 70,
            utilisation_milli: 12,
            enclaves: vec![SheetEntry {
                evidence_digest: [7; 32],
                table: t.clone(),
                multiplier_milli: 1000,
            }],
            settlement: Some(SettlementInfo {
                contract: "0:00".into(),
            }),
        };
        let bytes = sheet.to_cbor();
        assert_eq!(PriceSheet::from_cbor(&bytes).unwrap(), sheet);
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(PriceSheet::from_cbor(&bad).is_err());
        for cut in 0..bytes.len() {
            assert!(PriceSheet::from_cbor(&bytes[..cut]).is_err());
        }
        let mut inverted = t;
        inverted.min_multiplier_milli = 4000;
        assert!(PriceTable::from_cbor(&inverted.to_cbor()).is_err());
    }
}
