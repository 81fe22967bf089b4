//! The settlement manifest, `claims.json`: what one `cocoon-host settle`
//! run claims and what it could not claim, written by the host and read
//! by the client's statement (and by `contracts/scripts/run-claims.mjs`).
//! The format in prose is in `contracts/README.md` ("The claims
//! manifest").
//!
//! [`ClaimsManifest::to_json`] writes it (pretty-printed JSON, two-space
//! indent, fields in the documented order); [`ClaimsManifest::from_json`]
//! reads it strictly: an unknown field at any level, a missing one, a
//! number where a string is expected (or the reverse), hex that is not
//! lowercase or not the field's length, a decimal string with a sign or
//! leading zeros, base64 that is not canonical, or a signed message that
//! does not parse is refused with the field's path. Whether the claims
//! are sound (signatures, sums against the receipts) is the reader's
//! question, not the decoder's: a manifest that says something wrong must
//! still decode so that it can be reported.

use base64ct::{Base64, Encoding as _};
use serde::{Deserialize, Serialize};

use super::{compress_p256, ContractAddress, SignedAuthorization, SignedTab};

/// The one manifest version this code writes and reads.
pub const MANIFEST_VERSION: u64 = 1;

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not JSON, or not the manifest's shape (unknown or missing field,
    /// wrong JSON type); serde's message with line and column.
    #[error("claims manifest: {0}")]
    Shape(String),
    /// A field's value is refused.
    #[error("claims manifest: {field}: {reason}")]
    Field {
        /// The field's path, e.g. `claims[2].total`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A whole `claims.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsManifest {
    /// The payment contract the claims are for.
    pub contract: ContractAddress,
    /// The claim messages, in the order of their BOC files
    /// (`claim-0001.boc`, ...).
    pub claims: Vec<ManifestClaim>,
    /// The sum of the claims' amounts, nanoton.
    pub total_amount: u128,
    /// Receipts that were not claimed, and why.
    pub unclaimed: Vec<ManifestUnclaimed>,
    /// What the ledger held when the manifest was written.
    pub ledger: LedgerTotals,
}

/// One claim message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestClaim {
    /// The account.
    pub account: [u8; 32],
    /// The enclave receipt key, compressed SEC1.
    pub enclave_key: [u8; 33],
    /// Receipts the tab counts.
    pub count: u64,
    /// The tab's total, nanoton.
    pub total: u64,
    /// What earlier runs claimed.
    pub already_claimed: u64,
    /// What this claim adds (the host writes `total − already_claimed`).
    pub amount: u64,
    /// The message body's `query_id`.
    pub query_id: u64,
    /// The client's signed authorization the claim carries.
    pub authorization: SignedAuthorization,
    /// The enclave's signed tab the claim carries.
    pub tab: SignedTab,
    /// The message body (BOC).
    pub body_boc: Vec<u8>,
}

/// Receipts of one (enclave key, account) that were not claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestUnclaimed {
    /// The account.
    pub account: [u8; 32],
    /// The enclave receipt key, compressed SEC1; `None` (written as `""`)
    /// when the stored key is not a P-256 key.
    pub enclave_key: Option<[u8; 33]>,
    /// How many receipts.
    pub receipts: u64,
    /// Their charges, nanoton.
    pub nanoton: u128,
    /// Why they were not claimed (one line).
    pub reason: String,
}

/// The ledger's totals at settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Receipts in the ledger.
    pub receipts: u64,
    /// Their charges, nanoton.
    pub nanoton: u128,
    /// Receipts counted by the claimed tabs (this and earlier runs).
    pub counted_receipts: u64,
    /// Their charges (the tabs' totals).
    pub counted_nanoton: u128,
}

// The JSON as written: field order here is the order in the file.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u64,
    contract: String,
    claims: Vec<WireClaim>,
    total_amount: String,
    unclaimed: Vec<WireUnclaimed>,
    ledger: WireLedger,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaim {
    account: String,
    enclave_key: String,
    count: u64,
    total: String,
    already_claimed: String,
    amount: String,
    query_id: u64,
    authorization: String,
    tab: String,
    body_boc: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUnclaimed {
    account: String,
    enclave_key: String,
    receipts: u64,
    nanoton: String,
    reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLedger {
    receipts: u64,
    nanoton: String,
    counted_receipts: u64,
    counted_nanoton: String,
}

impl ClaimsManifest {
    /// The manifest as `claims.json` holds it.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            version: MANIFEST_VERSION,
            contract: self.contract.to_string(),
            claims: self.claims.iter().map(ManifestClaim::to_wire).collect(),
            total_amount: self.total_amount.to_string(),
            unclaimed: self
                .unclaimed
                .iter()
                .map(ManifestUnclaimed::to_wire)
                .collect(),
            ledger: WireLedger {
                receipts: self.ledger.receipts,
                nanoton: self.ledger.nanoton.to_string(),
                counted_receipts: self.ledger.counted_receipts,
                counted_nanoton: self.ledger.counted_nanoton.to_string(),
            },
        };
        // Strings, integers and arrays only: serialization cannot fail.
        serde_json::to_string_pretty(&wire).unwrap_or_default()
    }

    /// Read a manifest strictly (see the module documentation).
    pub fn from_json(text: &str) -> Result<ClaimsManifest, ManifestError> {
        let wire: Wire =
            serde_json::from_str(text).map_err(|e| ManifestError::Shape(e.to_string()))?;
        if wire.version != MANIFEST_VERSION {
            return Err(field(
                "version",
                format!("must be {MANIFEST_VERSION}, not {}", wire.version),
            ));
        }
        let contract = ContractAddress::parse_raw(&wire.contract)
            .map_err(|e| field("contract", e.to_string()))?;
        let claims = wire
            .claims
            .iter()
            .enumerate()
            .map(|(i, c)| ManifestClaim::from_wire(c, &format!("claims[{i}]")))
            .collect::<Result<_, _>>()?;
        let unclaimed = wire
            .unclaimed
            .iter()
            .enumerate()
            .map(|(i, u)| ManifestUnclaimed::from_wire(u, &format!("unclaimed[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(ClaimsManifest {
            contract,
            claims,
            total_amount: decimal(&wire.total_amount, "total_amount")?,
            unclaimed,
            ledger: LedgerTotals {
                receipts: wire.ledger.receipts,
                nanoton: decimal(&wire.ledger.nanoton, "ledger.nanoton")?,
                counted_receipts: wire.ledger.counted_receipts,
                counted_nanoton: decimal(&wire.ledger.counted_nanoton, "ledger.counted_nanoton")?,
            },
        })
    }
}

impl ManifestClaim {
    fn to_wire(&self) -> WireClaim {
        WireClaim {
            account: hex::encode(self.account),
            enclave_key: hex::encode(self.enclave_key),
            count: self.count,
            total: self.total.to_string(),
            already_claimed: self.already_claimed.to_string(),
            amount: self.amount.to_string(),
            query_id: self.query_id,
            authorization: hex::encode(self.authorization.to_bytes()),
            tab: hex::encode(self.tab.to_bytes()),
            body_boc: Base64::encode_string(&self.body_boc),
        }
    }

    fn from_wire(c: &WireClaim, at: &str) -> Result<ManifestClaim, ManifestError> {
        let path = |name: &str| format!("{at}.{name}");
        // In the file's order, so that the first bad field is reported.
        let account = hex_array(&c.account, &path("account"))?;
        let enclave_key = enclave_key(&c.enclave_key, &path("enclave_key"))?;
        let total = decimal(&c.total, &path("total"))?;
        let already_claimed = decimal(&c.already_claimed, &path("already_claimed"))?;
        let amount = decimal(&c.amount, &path("amount"))?;
        let authorization = hex_bytes(&c.authorization, &path("authorization"))?;
        let authorization = SignedAuthorization::from_bytes(&authorization)
            .map_err(|e| field(&path("authorization"), e.to_string()))?;
        let tab = SignedTab::from_bytes(&hex_bytes(&c.tab, &path("tab"))?)
            .map_err(|e| field(&path("tab"), e.to_string()))?;
        let body_boc = Base64::decode_vec(&c.body_boc)
            .map_err(|_| field(&path("body_boc"), "not canonical base64".into()))?;
        Ok(ManifestClaim {
            account,
            enclave_key,
            count: c.count,
            total,
            already_claimed,
            amount,
            query_id: c.query_id,
            authorization,
            tab,
            body_boc,
        })
    }
}

impl ManifestUnclaimed {
    fn to_wire(&self) -> WireUnclaimed {
        WireUnclaimed {
            account: hex::encode(self.account),
            enclave_key: self.enclave_key.map(hex::encode).unwrap_or_default(),
            receipts: self.receipts,
            nanoton: self.nanoton.to_string(),
            reason: self.reason.clone(),
        }
    }

    fn from_wire(u: &WireUnclaimed, at: &str) -> Result<ManifestUnclaimed, ManifestError> {
        let path = |name: &str| format!("{at}.{name}");
        Ok(ManifestUnclaimed {
            account: hex_array(&u.account, &path("account"))?,
            enclave_key: match u.enclave_key.as_str() {
                "" => None,
                k => Some(enclave_key(k, &path("enclave_key"))?),
            },
            receipts: u.receipts,
            nanoton: decimal(&u.nanoton, &path("nanoton"))?,
            reason: u.reason.clone(),
        })
    }
}

fn field(name: &str, reason: String) -> ManifestError {
    ManifestError::Field {
        field: name.to_string(),
        reason,
    }
}

/// Lowercase hex, as the encoder writes it (one spelling per value).
fn hex_bytes(s: &str, name: &str) -> Result<Vec<u8>, ManifestError> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(field(name, "hex must be lowercase".into()));
    }
    hex::decode(s).map_err(|e| field(name, format!("not hex: {e}")))
}

fn hex_array<const N: usize>(s: &str, name: &str) -> Result<[u8; N], ManifestError> {
    let b = hex_bytes(s, name)?;
    let len = b.len();
    b.try_into()
        .map_err(|_| field(name, format!("{N} bytes of hex expected, got {len}")))
}

/// A compressed P-256 key (33 bytes of hex, a point on the curve).
fn enclave_key(s: &str, name: &str) -> Result<[u8; 33], ManifestError> {
    let k: [u8; 33] = hex_array(s, name)?;
    match compress_p256(&k) {
        Ok(c) if c == k => Ok(k),
        _ => Err(field(name, "not a compressed P-256 public key".into())),
    }
}

/// A decimal string as the encoder writes it: digits only, no sign, no
/// leading zero (but `"0"`), within the type.
fn decimal<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, ManifestError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(field(
            name,
            format!("{s:?} is not a decimal number (digits only, no sign or leading zero)"),
        ));
    }
    s.parse().map_err(|_| {
        field(
            name,
            format!(
                "{s} does not fit in {}",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::{Authorization, Tab};
    use p256::ecdsa::SigningKey;
    use rand_core::OsRng;

    fn sample() -> ClaimsManifest {
        let client = SigningKey::random(&mut OsRng);
        let enclave = SigningKey::random(&mut OsRng);
        let enclave_key =
            compress_p256(enclave.verifying_key().to_encoded_point(true).as_bytes()).unwrap();
        let contract = ContractAddress {
            workchain: 0,
            hash: [7; 32],
        };
        let authorization = Authorization {
            contract,
            account: [1; 32],
            enclave_key,
            cap: 1_000,
        }
        .sign(&client);
        let tab = Tab {
            account: [1; 32],
            count: 3,
            total: 600,
        }
        .sign(&enclave);
        ClaimsManifest {
            contract,
            claims: vec![ManifestClaim {
                account: [1; 32],
                enclave_key,
                count: 3,
                total: 600,
                already_claimed: 100,
                amount: 500,
                query_id: 9,
                authorization,
                tab,
                body_boc: vec![0xb5, 0xee, 0x9c, 0x72, 1, 2, 3],
            }],
            total_amount: 500,
            unclaimed: vec![
                ManifestUnclaimed {
                    account: [2; 32],
                    enclave_key: Some(enclave_key),
                    receipts: 1,
                    nanoton: u128::from(u64::MAX) + 1,
                    reason: "not counted by the enclave's tab yet".into(),
                },
                ManifestUnclaimed {
                    account: [3; 32],
                    enclave_key: None,
                    receipts: 2,
                    nanoton: 0,
                    reason: "no tab".into(),
                },
            ],
            ledger: LedgerTotals {
                receipts: 6,
                nanoton: 18_446_744_073_709_552_216,
                counted_receipts: 3,
                counted_nanoton: 600,
            },
        }
    }

    #[test]
    fn round_trips_in_the_documented_layout() {
        let m = sample();
        let text = m.to_json();
        assert_eq!(ClaimsManifest::from_json(&text).unwrap(), m);
        // Field order and formatting as documented (contracts/README.md).
        assert!(text.starts_with("{\n  \"version\": 1,\n  \"contract\": \"0:0707"));
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .collect();
        assert_eq!(
            &keys[..13],
            [
                "version",
                "contract",
                "claims",
                "account",
                "enclave_key",
                "count",
                "total",
                "already_claimed",
                "amount",
                "query_id",
                "authorization",
                "tab",
                "body_boc"
            ]
        );
        assert!(text.contains("\"total\": \"600\""));
        assert!(text.contains("\"count\": 3,"));
        assert!(text.contains("\"enclave_key\": \"\","));
        // Compact JSON (as a script would write it back) reads the same.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(ClaimsManifest::from_json(&v.to_string()).unwrap(), m);
        let empty = ClaimsManifest {
            claims: vec![],
            unclaimed: vec![],
            total_amount: 0,
            ..m
        };
        assert!(empty.to_json().contains("\"claims\": [],"));
        assert_eq!(ClaimsManifest::from_json(&empty.to_json()).unwrap(), empty);
    }

    /// Replace the JSON value at `path` (object keys and array indices).
    fn edit(text: &str, path: &[&str], value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut at = &mut v;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        *at = value;
        v.to_string()
    }

    fn refused(text: &str) -> String {
        ClaimsManifest::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn every_field_is_checked() {
        use serde_json::json;
        let good = sample().to_json();
        let cases: Vec<(&[&str], serde_json::Value, &str)> = vec![
            (&["version"], json!(2), "version: must be 1"),
            (&["version"], json!("1"), "invalid type"),
            (&["contract"], json!("0:12"), "contract:"),
            (&["total_amount"], json!(500), "invalid type"),
            (
                &["total_amount"],
                json!("+500"),
                "total_amount: \"+500\" is not a decimal",
            ),
            (&["total_amount"], json!("0500"), "total_amount:"),
            (&["total_amount"], json!(""), "total_amount:"),
            (
                &["claims", "0", "account"],
                json!("01"),
                "claims[0].account: 32 bytes",
            ),
            (
                &["claims", "0", "account"],
                json!("zz"),
                "claims[0].account: not hex",
            ),
            (
                &["claims", "0", "account"],
                json!("0A".repeat(32)),
                "claims[0].account: hex must be lowercase",
            ),
            (
                &["claims", "0", "enclave_key"],
                json!(format!("02{}", "ff".repeat(32))),
                "claims[0].enclave_key: not a compressed P-256",
            ),
            (&["claims", "0", "count"], json!(-1), "invalid value"),
            (&["claims", "0", "count"], json!(1.5), "invalid type"),
            (&["claims", "0", "count"], json!("3"), "invalid type"),
            (
                &["claims", "0", "total"],
                json!("18446744073709551616"),
                "claims[0].total: 18446744073709551616 does not fit in u64",
            ),
            (
                &["claims", "0", "already_claimed"],
                json!("-1"),
                "claims[0].already_claimed:",
            ),
            (
                &["claims", "0", "amount"],
                json!("1e3"),
                "claims[0].amount:",
            ),
            (&["claims", "0", "query_id"], json!(null), "invalid type"),
            (
                &["claims", "0", "authorization"],
                json!("00"),
                "claims[0].authorization:",
            ),
            (
                &["claims", "0", "tab"],
                json!("00".repeat(116)),
                "claims[0].tab:",
            ),
            (
                &["claims", "0", "body_boc"],
                json!("te$t"),
                "claims[0].body_boc: not canonical base64",
            ),
            (
                &["claims", "0", "body_boc"],
                json!("AB=="),
                "claims[0].body_boc:",
            ),
            (
                &["unclaimed", "1", "account"],
                json!(""),
                "unclaimed[1].account: 32 bytes",
            ),
            (
                &["unclaimed", "0", "enclave_key"],
                json!("02"),
                "unclaimed[0].enclave_key:",
            ),
            (
                &["unclaimed", "0", "nanoton"],
                json!("x"),
                "unclaimed[0].nanoton:",
            ),
            (&["unclaimed", "0", "reason"], json!(1), "invalid type"),
            (&["ledger", "receipts"], json!("6"), "invalid type"),
            (
                &["ledger", "counted_nanoton"],
                json!("6.0"),
                "ledger.counted_nanoton:",
            ),
            (&["claims"], json!({}), "invalid type"),
        ];
        for (path, value, want) in cases {
            let msg = refused(&edit(&good, path, value.clone()));
            assert!(msg.contains(want), "{path:?} = {value}: {msg}");
            assert!(msg.starts_with("claims manifest: "), "{msg}");
        }
        assert!(refused("not json").contains("claims manifest"));
    }

    #[test]
    fn unknown_and_missing_fields_are_refused_at_every_level() {
        let good = sample().to_json();
        for (path, name) in [
            (&[][..], "extra"),
            (&["claims", "0"][..], "note"),
            (&["unclaimed", "0"][..], "note"),
            (&["ledger"][..], "note"),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            let mut at = &mut v;
            for p in path {
                at = match p.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*p],
                };
            }
            at.as_object_mut()
                .unwrap()
                .insert(name.into(), serde_json::json!(1));
            let msg = refused(&v.to_string());
            assert!(msg.contains(&format!("unknown field `{name}`")), "{msg}");
        }
        for (path, name) in [
            (&[][..], "ledger"),
            (&["claims", "0"][..], "tab"),
            (&["unclaimed", "0"][..], "reason"),
            (&["ledger"][..], "nanoton"),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            let mut at = &mut v;
            for p in path {
                at = match p.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*p],
                };
            }
            at.as_object_mut().unwrap().remove(name);
            let msg = refused(&v.to_string());
            assert!(msg.contains(&format!("missing field `{name}`")), "{msg}");
        }
    }

    #[test]
    fn what_the_reader_judges_still_decodes() {
        // An amount that is not total − already claimed, or a count that
        // differs from the signed tab, is the statement's discrepancy to
        // report, not a decoding error.
        let mut m = sample();
        m.claims[0].amount = 501;
        m.claims[0].count = 4;
        m.total_amount = 7;
        assert_eq!(ClaimsManifest::from_json(&m.to_json()).unwrap(), m);
    }
}
