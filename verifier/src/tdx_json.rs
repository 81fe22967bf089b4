//! The members of Intel's signed JSON (TCB info, QE identity) that the DCAP
//! core ([`crate::tdx_core`]) reads before and beside the TCB evaluation:
//! dates, the QE identity's expected QE report fields, the TDX module
//! signers. Read in one pass over the text, without building a
//! `serde_json::Value`, and with the same outcome as reading a `Value` and
//! calling `get(k)` then `as_str` / `as_u64` on it:
//!
//! * the whole text is checked as `serde_json::from_str::<Value>` checks it
//!   (same parser, every value visited through `deserialize_any`: strings
//!   decoded, numbers in range, nesting limit, no trailing characters), so
//!   the same texts fail, with the same error;
//! * a member read is the last one of its name in its object (as a `Value`
//!   map keeps the last duplicate); a member that is not a string (or a
//!   non-negative integer, where a number is read) reads as absent, and so
//!   does every member of something that is not an object;
//! * everything else is checked and dropped as it is read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One member as `Value::get` then `as_str` / `as_u64` read it.
#[derive(Default)]
pub(crate) enum Scalar<'a> {
    /// Absent, or neither a string nor a non-negative integer.
    #[default]
    Other,
    Str(Cow<'a, str>),
    U64(u64),
}

impl Scalar<'_> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Scalar::U64(n) => Some(*n),
            _ => None,
        }
    }
}

/// The members the core reads of an object (the document itself, its
/// `tdxModule`, each of its `tdxModuleIdentities`); all absent for a value
/// that is not an object.
#[derive(Default)]
pub(crate) struct Doc<'a> {
    pub(crate) issue_date: Scalar<'a>,
    pub(crate) next_update: Scalar<'a>,
    pub(crate) id: Scalar<'a>,
    pub(crate) version: Scalar<'a>,
    pub(crate) mrsigner: Scalar<'a>,
    pub(crate) isvprodid: Scalar<'a>,
    pub(crate) miscselect: Scalar<'a>,
    pub(crate) miscselect_mask: Scalar<'a>,
    pub(crate) attributes: Scalar<'a>,
    pub(crate) attributes_mask: Scalar<'a>,
    /// `tdxModule` (all absent when it is).
    pub(crate) tdx_module: Option<Box<Doc<'a>>>,
    /// `tdxModuleIdentities` when it is an array.
    pub(crate) tdx_module_identities: Option<Vec<Doc<'a>>>,
}

impl<'a> Doc<'a> {
    /// Read `json` (the error is `serde_json`'s for the text).
    pub(crate) fn read(json: &'a str) -> Result<Doc<'a>, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Any JSON value, checked and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            // `Value` keeps a non-negative i64 as a positive integer.
            fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
                Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::U64))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
                SkipVisitor.visit_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
                SkipVisitor.visit_map(map).map(|_| Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// The member names [`Doc`] keeps.
enum Field {
    IssueDate,
    NextUpdate,
    Id,
    Version,
    Mrsigner,
    Isvprodid,
    Miscselect,
    MiscselectMask,
    Attributes,
    AttributesMask,
    TdxModule,
    TdxModuleIdentities,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, s: &str) -> Result<Field, E> {
                Ok(match s {
                    "issueDate" => Field::IssueDate,
                    "nextUpdate" => Field::NextUpdate,
                    "id" => Field::Id,
                    "version" => Field::Version,
                    "mrsigner" => Field::Mrsigner,
                    "isvprodid" => Field::Isvprodid,
                    "miscselect" => Field::Miscselect,
                    "miscselectMask" => Field::MiscselectMask,
                    "attributes" => Field::Attributes,
                    "attributesMask" => Field::AttributesMask,
                    "tdxModule" => Field::TdxModule,
                    "tdxModuleIdentities" => Field::TdxModuleIdentities,
                    _ => Field::Other,
                })
            }
        }
        // A map key: serde_json reads it as a string whatever is asked.
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_none<E>(self) -> Result<Doc<'de>, E> {
                Ok(Doc::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Doc<'de>, A::Error> {
                SkipVisitor.visit_seq(seq).map(|_| Doc::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
                let mut doc = Doc::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::IssueDate => doc.issue_date = map.next_value()?,
                        Field::NextUpdate => doc.next_update = map.next_value()?,
                        Field::Id => doc.id = map.next_value()?,
                        Field::Version => doc.version = map.next_value()?,
                        Field::Mrsigner => doc.mrsigner = map.next_value()?,
                        Field::Isvprodid => doc.isvprodid = map.next_value()?,
                        Field::Miscselect => doc.miscselect = map.next_value()?,
                        Field::MiscselectMask => doc.miscselect_mask = map.next_value()?,
                        Field::Attributes => doc.attributes = map.next_value()?,
                        Field::AttributesMask => doc.attributes_mask = map.next_value()?,
                        Field::TdxModule => doc.tdx_module = Some(Box::new(map.next_value()?)),
                        Field::TdxModuleIdentities => {
                            doc.tdx_module_identities = map.next_value_seed(DocArray)?;
                        }
                        Field::Other => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_any(V)
    }
}

/// An array of objects read as [`Doc`]s; `None` for anything else.
struct DocArray;

impl<'de> DeserializeSeed<'de> for DocArray {
    type Value = Option<Vec<Doc<'de>>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Vec<Doc<'de>>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(doc) = seq.next_element::<Doc<'de>>()? {
                    out.push(doc);
                }
                Ok(Some(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                SkipVisitor.visit_map(map).map(|_| None)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the core read from a `Value` before: every member, by `get`.
    fn by_value(json: &str) -> Result<String, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Ok(describe_value(&v))
    }

    const NAMES: [&str; 10] = [
        "issueDate",
        "nextUpdate",
        "id",
        "version",
        "mrsigner",
        "isvprodid",
        "miscselect",
        "miscselectMask",
        "attributes",
        "attributesMask",
    ];

    fn describe_value(v: &Value) -> String {
        let mut out = String::new();
        for k in NAMES {
            let m = v.get(k);
            out += &format!(
                "{k}={:?}/{:?};",
                m.and_then(|m| m.as_str()),
                m.and_then(|m| m.as_u64())
            );
        }
        let null = Value::Null;
        out += &format!(
            "module[{}]",
            describe_value_flat(v.get("tdxModule").unwrap_or(&null))
        );
        match v.get("tdxModuleIdentities").and_then(|a| a.as_array()) {
            Some(a) => {
                for m in a {
                    out += &format!("id[{}]", describe_value_flat(m));
                }
            }
            None => out += "ids:none",
        }
        out
    }

    fn describe_value_flat(v: &Value) -> String {
        NAMES
            .iter()
            .map(|k| {
                let m = v.get(k);
                format!(
                    "{k}={:?}/{:?};",
                    m.and_then(|m| m.as_str()),
                    m.and_then(|m| m.as_u64())
                )
            })
            .collect()
    }

    fn describe_doc(d: &Doc<'_>) -> String {
        let mut out = describe_doc_flat(d);
        out += &format!(
            "module[{}]",
            describe_doc_flat(d.tdx_module.as_deref().unwrap_or(&Doc::default()))
        );
        match &d.tdx_module_identities {
            Some(a) => {
                for m in a {
                    out += &format!("id[{}]", describe_doc_flat(m));
                }
            }
            None => out += "ids:none",
        }
        out
    }

    fn describe_doc_flat(d: &Doc<'_>) -> String {
        [
            &d.issue_date,
            &d.next_update,
            &d.id,
            &d.version,
            &d.mrsigner,
            &d.isvprodid,
            &d.miscselect,
            &d.miscselect_mask,
            &d.attributes,
            &d.attributes_mask,
        ]
        .iter()
        .zip(NAMES)
        .map(|(s, k)| format!("{k}={:?}/{:?};", s.as_str(), s.as_u64()))
        .collect()
    }

    fn by_doc(json: &str) -> Result<String, String> {
        Doc::read(json)
            .map(|d| describe_doc(&d))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn it_reads_what_a_value_reads() {
        let cases = [
            r#"{"issueDate":"2025-01-01T00:00:00Z","version":2,"id":"TD_QE"}"#,
            r#"{"version":-0,"isvprodid":-2,"miscselect":2.0,"id":1e2}"#,
            r#"{"id":"a","id":"b","version":3,"version":"x"}"#,
            r#"{"i\u0064":"esc\u00e9aped","mrsigner":"\ud83d\ude00"}"#,
            r#"{"tdxModule":{"mrsigner":"aa","attributes":"00"},"tdxModule":5}"#,
            r#"{"tdxModule":{"mrsigner":"aa","attributes":"00","tdxModule":{}}}"#,
            r#"{"tdxModuleIdentities":[{"id":"TDX_03"},7,"x",[1],{"id":"TDX_01","mrsigner":null}]}"#,
            r#"{"tdxModuleIdentities":{"id":"x"}}"#,
            r#"{"tdxModuleIdentities":[{"id":"x"}],"tdxModuleIdentities":null}"#,
            r#"[{"id":"x"}]"#,
            r#""text""#,
            r#"{"tcbLevels":[{"tcb":{"sgxtcbcomponents":[{"svn":1}]}}],"id":"TDX"}"#,
            // Texts both refuse, with the same error.
            r#"{"id":"x""#,
            r#"{"id":"x"} trailing"#,
            r#"{"id":"\ud800"}"#,
            r#"{"other":"\ud800"}"#,
            r#"{"other":"a\u0001b"}"#,
            "{\"other\":\"a\u{1}b\"}",
            r#"{"other":1e999}"#,
            r#"{"other":[1,2,}"#,
            r#"{1:2}"#,
            r#"{"a":01}"#,
            "",
            "  ",
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            &format!("{{\"x\":{}1{}}}", "[".repeat(127), "]".repeat(127)),
        ];
        for json in cases {
            assert_eq!(by_doc(json), by_value(json), "{json}");
        }
    }

    #[test]
    fn it_reads_intels_documents_as_a_value_does() {
        for (coll, key) in [
            ("tdx/dcap-qvl/tdx_quote_collateral.json", "tcb_info"),
            ("tdx/dcap-qvl/tdx_quote_collateral.json", "qe_identity"),
            ("tdx/dcap-qvl/sgx_quote_collateral.json", "tcb_info"),
            (
                "tdx/dcap-qvl/tdx_quote_outdated_collateral.json",
                "tcb_info",
            ),
        ] {
            let c: Value =
                serde_json::from_slice(&cocoon_tests::read_vector(coll)).expect("collateral");
            let json = c[key].as_str().expect("text");
            assert_eq!(by_doc(json), by_value(json), "{coll} {key}");
            assert!(by_doc(json).is_ok());
            // Each byte changed to one of a few characters that matter to
            // JSON: both readers agree on every one.
            for at in (0..json.len()).step_by(7) {
                for c in ['"', '\\', ',', '}', ']', '0', 'x'] {
                    if !json.is_char_boundary(at) || !json.is_char_boundary(at + 1) {
                        continue;
                    }
                    let mut m = json.to_string();
                    m.replace_range(at..at + 1, &c.to_string());
                    assert_eq!(by_doc(&m), by_value(&m), "{coll} {key} at {at} -> {c}");
                }
            }
        }
    }
}
