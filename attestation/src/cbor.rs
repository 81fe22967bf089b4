//! Small, strict helpers over `ciborium::Value` for the wire types of this
//! crate. Owns nothing but the mechanics: decoding from untrusted bytes with a
//! size limit, reading a map with text keys where unknown keys are errors,
//! and encoding maps in a fixed key order so equal values give equal bytes.

use ciborium::Value;

/// Why CBOR bytes are not the expected structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The bytes are not one well-formed CBOR item (or have trailing bytes).
    #[error("not well-formed CBOR: {0}")]
    Syntax(String),
    /// Larger than the limit for this structure.
    #[error("CBOR input is {got} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Input size.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// A required key is absent.
    #[error("{0}: required key is missing")]
    Missing(String),
    /// A key the format does not define.
    #[error("{0}: unknown key")]
    UnknownKey(String),
    /// A value of the wrong type or size.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// Decode one CBOR item from `bytes`, refusing trailing bytes and inputs over `limit`.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Value, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge {
            got: bytes.len(),
            limit,
        });
    }
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 32)
        .map_err(|e| CborError::Syntax(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CborError::Syntax(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// Encode a value.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

/// Encode a value after what `out` already holds (a frame's or a chunk's
/// header room, say).
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail for a `Value`.
    let _ = ciborium::ser::into_writer(v, out);
}

/// A CBOR map with text keys being read: every key must be consumed.
pub struct MapReader {
    what: String,
    entries: Vec<(String, Value)>,
}

impl MapReader {
    /// Start reading `v`, which must be a map with text keys; `what` names it in errors.
    pub fn new(v: Value, what: &str) -> Result<MapReader, CborError> {
        let Value::Map(m) = v else {
            return Err(CborError::Invalid(what.into(), "expected a map".into()));
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            let Value::Text(k) = k else {
                return Err(CborError::Invalid(
                    what.into(),
                    "map keys must be text".into(),
                ));
            };
            if entries.iter().any(|(e, _): &(String, Value)| *e == k) {
                return Err(CborError::Invalid(
                    what.into(),
                    format!("duplicate key {k}"),
                ));
            }
            entries.push((k, v));
        }
        Ok(MapReader {
            what: what.into(),
            entries,
        })
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.what)
    }

    /// Take an optional value.
    pub fn take_opt(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.swap_remove(i).1)
    }

    /// Take a required value.
    pub fn take(&mut self, key: &str) -> Result<Value, CborError> {
        self.take_opt(key)
            .ok_or_else(|| CborError::Missing(self.path(key)))
    }

    /// Take a required byte string.
    pub fn bytes(&mut self, key: &str) -> Result<Vec<u8>, CborError> {
        let path = self.path(key);
        as_bytes(self.take(key)?, &path)
    }

    /// Take an optional byte string.
    pub fn bytes_opt(&mut self, key: &str) -> Result<Option<Vec<u8>>, CborError> {
        let path = self.path(key);
        self.take_opt(key).map(|v| as_bytes(v, &path)).transpose()
    }

    /// Take a required byte string of exactly `N` bytes.
    pub fn array<const N: usize>(&mut self, key: &str) -> Result<[u8; N], CborError> {
        let path = self.path(key);
        let b = self.bytes(key)?;
        <[u8; N]>::try_from(b.as_slice())
            .map_err(|_| CborError::Invalid(path, format!("expected {N} bytes, got {}", b.len())))
    }

    /// Take a required text string.
    pub fn text(&mut self, key: &str) -> Result<String, CborError> {
        let path = self.path(key);
        match self.take(key)? {
            Value::Text(t) => Ok(t),
            _ => Err(CborError::Invalid(path, "expected text".into())),
        }
    }

    /// Take an optional text string.
    pub fn text_opt(&mut self, key: &str) -> Result<Option<String>, CborError> {
        let path = self.path(key);
        match self.take_opt(key) {
            None => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t)),
            Some(_) => Err(CborError::Invalid(path, "expected text".into())),
        }
    }

    /// Take a required unsigned integer.
    pub fn u64(&mut self, key: &str) -> Result<u64, CborError> {
        let path = self.path(key);
        match self.take(key)? {
            Value::Integer(i) => u64::try_from(i)
                .map_err(|_| CborError::Invalid(path, "expected an unsigned integer".into())),
            _ => Err(CborError::Invalid(
                path,
                "expected an unsigned integer".into(),
            )),
        }
    }

    /// Finish: any key left over is an error.
    pub fn finish(self) -> Result<(), CborError> {
        match self.entries.first() {
            Some((k, _)) => Err(CborError::UnknownKey(format!("{}.{k}", self.what))),
            None => Ok(()),
        }
    }
}

/// A byte-string value.
pub fn as_bytes(v: Value, path: &str) -> Result<Vec<u8>, CborError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(CborError::Invalid(
            path.into(),
            "expected a byte string".into(),
        )),
    }
}

/// Build a map with text keys in the given order.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    )
}
