//! Intel DCAP collateral that travels with a TDX quote.
//!
//! Owns the collateral's shape and its three encodings: our CBOR (inside the
//! evidence bundle), the JSON layout `dcap-qvl` writes (hex CRLs and
//! signatures, PEM issuer chains, the signed TCB info and QE identity as the
//! exact JSON text that was signed), and Intel PCS / PCCS response bodies
//! (`{"tcbInfo": {...}, "signature": "..."}`) from which the signed member is
//! cut out byte for byte. It verifies nothing: signatures, validity and
//! revocation are the verifier's job. A missing CRL is kept as `None` so the
//! verifier can reject it by name.

use ciborium::Value;

use crate::cbor::{self, CborError, MapReader};

/// Most bytes of CBOR collateral accepted (real collateral is ~20 KiB).
pub const MAX_COLLATERAL_CBOR: usize = 1 << 20;

/// The collateral needed to verify a quote offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxCollateral {
    /// PEM chain that issued the PCK CRL (PCK Platform/Processor CA, Root CA).
    pub pck_crl_issuer_chain: String,
    /// DER CRL of the Intel SGX Root CA.
    pub root_ca_crl: Option<Vec<u8>>,
    /// DER CRL of the PCK Platform or Processor CA.
    pub pck_crl: Option<Vec<u8>>,
    /// PEM chain of the TCB signing certificate (TCB Signing, Root CA).
    pub tcb_info_issuer_chain: String,
    /// The TCB info JSON object exactly as signed.
    pub tcb_info: String,
    /// ECDSA P-256 signature (r || s) over `tcb_info`.
    pub tcb_info_signature: Vec<u8>,
    /// PEM chain of the QE identity signing certificate.
    pub qe_identity_issuer_chain: String,
    /// The QE identity JSON object exactly as signed.
    pub qe_identity: String,
    /// ECDSA P-256 signature (r || s) over `qe_identity`.
    pub qe_identity_signature: Vec<u8>,
}

/// Why bytes are not collateral.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// Not JSON of the expected layout.
    #[error("collateral JSON: {0}")]
    Json(String),
    /// Not CBOR of the expected layout.
    #[error("collateral CBOR: {0}")]
    Cbor(#[from] CborError),
}

fn json_err(e: impl std::fmt::Display) -> CollateralError {
    CollateralError::Json(e.to_string())
}

impl TdxCollateral {
    /// Read the JSON layout `dcap-qvl` uses (`QuoteCollateralV3`): hex for
    /// CRLs and signatures, PEM for chains, the signed JSON as text.
    pub fn from_dcap_qvl_json(bytes: &[u8]) -> Result<TdxCollateral, CollateralError> {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(json_err)?;
        let text = |k: &str| -> Result<String, CollateralError> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| CollateralError::Json(format!("{k} is missing or not a string")))
        };
        let hex_opt = |k: &str| -> Result<Option<Vec<u8>>, CollateralError> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => hex::decode(s)
                    .map(Some)
                    .map_err(|_| CollateralError::Json(format!("{k} is not hex"))),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .map(Some)
                    .ok_or_else(|| CollateralError::Json(format!("{k} is not a byte array"))),
                Some(_) => Err(CollateralError::Json(format!("{k} is not hex"))),
            }
        };
        let hex_req =
            |k: &str| hex_opt(k)?.ok_or_else(|| CollateralError::Json(format!("{k} is missing")));
        Ok(TdxCollateral {
            pck_crl_issuer_chain: text("pck_crl_issuer_chain")?,
            root_ca_crl: hex_opt("root_ca_crl")?,
            pck_crl: hex_opt("pck_crl")?,
            tcb_info_issuer_chain: text("tcb_info_issuer_chain")?,
            tcb_info: text("tcb_info")?,
            tcb_info_signature: hex_req("tcb_info_signature")?,
            qe_identity_issuer_chain: text("qe_identity_issuer_chain")?,
            qe_identity: text("qe_identity")?,
            qe_identity_signature: hex_req("qe_identity_signature")?,
        })
    }

    /// Write the `dcap-qvl` JSON layout.
    pub fn to_dcap_qvl_json(&self) -> String {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.to_owned(), v);
        };
        put(
            "pck_crl_issuer_chain",
            self.pck_crl_issuer_chain.clone().into(),
        );
        if let Some(c) = &self.root_ca_crl {
            put("root_ca_crl", hex::encode(c).into());
        }
        if let Some(c) = &self.pck_crl {
            put("pck_crl", hex::encode(c).into());
        }
        put(
            "tcb_info_issuer_chain",
            self.tcb_info_issuer_chain.clone().into(),
        );
        put("tcb_info", self.tcb_info.clone().into());
        put(
            "tcb_info_signature",
            hex::encode(&self.tcb_info_signature).into(),
        );
        put(
            "qe_identity_issuer_chain",
            self.qe_identity_issuer_chain.clone().into(),
        );
        put("qe_identity", self.qe_identity.clone().into());
        put(
            "qe_identity_signature",
            hex::encode(&self.qe_identity_signature).into(),
        );
        serde_json::Value::Object(m).to_string()
    }

    /// Assemble collateral from Intel PCS/PCCS response bodies: the TCB info
    /// response (`{"tcbInfo":{...},"signature":"hex"}`) with its issuer
    /// chain header, the QE identity response (`{"enclaveIdentity":...}`)
    /// with its chain, and the CRLs (DER) with the PCK CRL's issuer chain.
    pub fn from_pcs_responses(
        tcb_info_response: &[u8],
        tcb_info_issuer_chain: &str,
        qe_identity_response: &[u8],
        qe_identity_issuer_chain: &str,
        pck_crl: Option<Vec<u8>>,
        pck_crl_issuer_chain: &str,
        root_ca_crl: Option<Vec<u8>>,
    ) -> Result<TdxCollateral, CollateralError> {
        let (tcb_info, tcb_info_signature) = signed_member(tcb_info_response, "tcbInfo")?;
        let (qe_identity, qe_identity_signature) =
            signed_member(qe_identity_response, "enclaveIdentity")?;
        Ok(TdxCollateral {
            pck_crl_issuer_chain: pck_crl_issuer_chain.to_owned(),
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain: tcb_info_issuer_chain.to_owned(),
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: qe_identity_issuer_chain.to_owned(),
            qe_identity,
            qe_identity_signature,
        })
    }

    /// Read either encoding: JSON when the first non-space byte is `{`, CBOR otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Result<TdxCollateral, CollateralError> {
        if bytes.trim_ascii_start().starts_with(b"{") {
            Self::from_dcap_qvl_json(bytes)
        } else {
            Self::from_cbor(bytes)
        }
    }

    /// The CBOR map form.
    pub fn to_cbor_value(&self) -> Value {
        let mut e = vec![
            (
                "pck_crl_issuer_chain",
                Value::Text(self.pck_crl_issuer_chain.clone()),
            ),
            (
                "tcb_info_issuer_chain",
                Value::Text(self.tcb_info_issuer_chain.clone()),
            ),
            ("tcb_info", Value::Text(self.tcb_info.clone())),
            (
                "tcb_info_signature",
                Value::Bytes(self.tcb_info_signature.clone()),
            ),
            (
                "qe_identity_issuer_chain",
                Value::Text(self.qe_identity_issuer_chain.clone()),
            ),
            ("qe_identity", Value::Text(self.qe_identity.clone())),
            (
                "qe_identity_signature",
                Value::Bytes(self.qe_identity_signature.clone()),
            ),
        ];
        if let Some(c) = &self.root_ca_crl {
            e.push(("root_ca_crl", Value::Bytes(c.clone())));
        }
        if let Some(c) = &self.pck_crl {
            e.push(("pck_crl", Value::Bytes(c.clone())));
        }
        cbor::map(e)
    }

    /// Encode as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&self.to_cbor_value())
    }

    /// Decode from CBOR.
    pub fn from_cbor(bytes: &[u8]) -> Result<TdxCollateral, CollateralError> {
        Self::from_cbor_value(cbor::decode(bytes, MAX_COLLATERAL_CBOR)?)
    }

    /// Decode from a CBOR value (for use inside a bundle).
    pub fn from_cbor_value(v: Value) -> Result<TdxCollateral, CollateralError> {
        let mut m = MapReader::new(v, "collateral")?;
        let c = TdxCollateral {
            pck_crl_issuer_chain: m.text("pck_crl_issuer_chain")?,
            root_ca_crl: m.bytes_opt("root_ca_crl")?,
            pck_crl: m.bytes_opt("pck_crl")?,
            tcb_info_issuer_chain: m.text("tcb_info_issuer_chain")?,
            tcb_info: m.text("tcb_info")?,
            tcb_info_signature: m.bytes("tcb_info_signature")?,
            qe_identity_issuer_chain: m.text("qe_identity_issuer_chain")?,
            qe_identity: m.text("qe_identity")?,
            qe_identity_signature: m.bytes("qe_identity_signature")?,
        };
        m.finish()?;
        Ok(c)
    }
}

/// Cut the signed member `name` out of a PCS response body byte for byte,
/// and decode the hex `signature` next to it.
fn signed_member(body: &[u8], name: &str) -> Result<(String, Vec<u8>), CollateralError> {
    let members: std::collections::BTreeMap<&str, &serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(json_err)?;
    let raw = members
        .get(name)
        .ok_or_else(|| CollateralError::Json(format!("response has no {name} member")))?;
    let sig = members
        .get("signature")
        .ok_or_else(|| CollateralError::Json("response has no signature".into()))?;
    let sig: String = serde_json::from_str(sig.get())
        .map_err(|_| CollateralError::Json("signature is not a string".into()))?;
    let sig = hex::decode(sig).map_err(|_| CollateralError::Json("signature is not hex".into()))?;
    Ok((raw.get().to_owned(), sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_member_keeps_exact_bytes() {
        let body = br#"{"tcbInfo":{"b": 1,"a":[2, 3]},"signature":"0a0b"}"#;
        let (m, s) = signed_member(body, "tcbInfo").unwrap();
        assert_eq!(m, r#"{"b": 1,"a":[2, 3]}"#);
        assert_eq!(s, vec![10, 11]);
        assert!(signed_member(body, "enclaveIdentity").is_err());
    }

    #[test]
    fn cbor_round_trip_and_strictness() {
        let c = TdxCollateral {
            pck_crl_issuer_chain: "pem".into(),
            root_ca_crl: Some(vec![1, 2]),
            pck_crl: None,
            tcb_info_issuer_chain: "pem2".into(),
            tcb_info: "{}".into(),
            tcb_info_signature: vec![3; 64],
            qe_identity_issuer_chain: "pem3".into(),
            qe_identity: "{\"x\":1}".into(),
            qe_identity_signature: vec![4; 64],
        };
        let bytes = c.to_cbor();
        assert_eq!(TdxCollateral::from_cbor(&bytes).unwrap(), c);
        assert_eq!(TdxCollateral::from_bytes(&bytes).unwrap(), c);
        let json = c.to_dcap_qvl_json();
        assert_eq!(TdxCollateral::from_bytes(json.as_bytes()).unwrap(), c);
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(TdxCollateral::from_cbor(&extra).is_err());
        assert!(TdxCollateral::from_cbor(&bytes[..bytes.len() - 1]).is_err());
        assert!(TdxCollateral::from_cbor(&[]).is_err());
    }
}
