//! The host agent's public HTTP API, as bytes: paths, headers, content types
//! and the bodies that are not plain CBOR of another module's type.
//!
//! Owns only what a client and the host must agree on; the HTTP server is
//! `cocoon-host`, the HTTP client is `cocoon-client`. No I/O here.
//!
//! # Endpoints
//!
//! * `GET /v1/evidence` → `200`, `application/cbor`: an [`EvidenceList`],
//!   the evidence bundle of every ready enclave behind this host.
//! * `POST /v1/requests`, body `application/cbor`: one
//!   [`crate::seal::SealedRequest`]. Headers:
//!   [`EVIDENCE_DIGEST_HEADER`] (hex of the [`crate::seal::EvidenceDigest`]
//!   the request was sealed to: the host routes by it),
//!   [`ACCOUNT_KEY_HEADER`] (hex SEC1 of the paying account's key) and
//!   [`ACCOUNT_SIGNATURE_HEADER`] (hex of
//!   [`crate::account::AccountKey::sign_request`]). Answer: `200`,
//!   [`CHUNKS_CONTENT_TYPE`], a body of chunk records streamed as the
//!   enclave produces them; or an error status with a one-line
//!   `text/plain` reason: `400` malformed, `401` bad account signature,
//!   `409` the evidence digest is not served here (fetch the evidence
//!   again; resend only if it changed) or the request is a replay, `413` too large, `429` rate limited (with `retry-after`),
//!   `502` the enclave failed, `503` not ready or draining, `504` timed
//!   out.
//! * `GET /v1/prices` → `200`, `application/cbor`: a
//!   [`crate::pricing::PriceSheet`] (base prices and bounds of every ready
//!   enclave, the multiplier now, the payment contract if any). A request
//!   offers the sheet's prices in its billing metadata; a host that
//!   settles on chain also wants [`AUTHORIZATION_HEADER`] and answers
//!   `402` when the authorization's cap would be passed, and `412` when
//!   the offered prices are not acceptable (stale multiplier, wrong
//!   prices: fetch the sheet again).
//! * `GET /v1/receipts?after=N&limit=M`, headers [`ACCOUNT_KEY_HEADER`],
//!   [`ACCOUNT_TIME_HEADER`] (decimal Unix seconds) and
//!   [`ACCOUNT_SIGNATURE_HEADER`] (hex of
//!   [`crate::account::AccountKey::sign_receipts_query`]) → `200`,
//!   `application/cbor`: a [`ReceiptList`] of that account's receipts only.
//! * `GET /v1/evidence/nonce?nonce=HEX` (1 to 64 bytes), headers
//!   [`EVIDENCE_DIGEST_HEADER`] (which enclave: any digest it issued),
//!   [`ACCOUNT_KEY_HEADER`], [`ACCOUNT_TIME_HEADER`] and
//!   [`ACCOUNT_SIGNATURE_HEADER`] (hex of
//!   [`crate::account::AccountKey::sign_evidence_nonce`]) → `200`,
//!   `application/cbor`: one evidence bundle of that enclave whose claims
//!   carry the nonce (a fresh hardware report, same keys). Quotes are slow
//!   to make, so the host limits this per account (`429` with
//!   `retry-after`); `409` when the digest is not served here.
//! * `GET /v1/release` → `200`, `application/json`: the canonical bytes of
//!   the [`crate::release::ReleaseManifest`] of the image the host runs,
//!   exactly as stored (decode with
//!   [`crate::release::ReleaseManifest::from_canonical`]; its SHA-256 is
//!   the release's key in the registry); `404` when the host was started
//!   without one.
//!
//! # Chunk records
//!
//! The response body of `POST /v1/requests` is a sequence of records
//! `u32 big-endian length ‖ chunk` where each chunk is a response chunk in
//! [`crate::stream`]'s wire form, forwarded unchanged from the enclave.
//! [`ChunkRecordDecoder`] cuts a body into records incrementally.

use ciborium::Value;
use cocoon_attestation::bundle::MAX_BUNDLE;
use cocoon_attestation::cbor::{self, CborError, MapReader};

use crate::receipt::{MAX_RECEIPT, RECEIPT_PUBLIC_KEY_LEN};
use crate::stream::MAX_CHUNK_WIRE;

/// Evidence of the enclaves behind a host.
pub const EVIDENCE_PATH: &str = "/v1/evidence";
/// Submit a sealed request.
pub const REQUESTS_PATH: &str = "/v1/requests";
/// An account's receipts.
pub const RECEIPTS_PATH: &str = "/v1/receipts";
/// Evidence of one enclave bound to a client's nonce.
pub const EVIDENCE_NONCE_PATH: &str = "/v1/evidence/nonce";
/// Most bytes of a client nonce.
pub const MAX_CLIENT_NONCE: usize = 64;
/// The price sheet ([`crate::pricing::PriceSheet`], CBOR).
pub const PRICES_PATH: &str = "/v1/prices";
/// Hex of a [`crate::settlement::SignedAuthorization`]: the paying
/// account's authorization of the enclave's receipt key up to a cap.
/// Required by hosts that settle on chain (the price sheet names their
/// contract).
pub const AUTHORIZATION_HEADER: &str = "cocoon-authorization";
/// The release manifest the host runs (exact canonical bytes of
/// [`crate::release::ReleaseManifest`], `application/json`).
pub const RELEASE_PATH: &str = "/v1/release";
/// Content type of [`RELEASE_PATH`].
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Liveness probe.
pub const LIVE_PATH: &str = "/live";
/// Readiness probe (an enclave is connected and the host is not draining).
pub const READY_PATH: &str = "/ready";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Hex of the evidence digest a request was sealed to.
pub const EVIDENCE_DIGEST_HEADER: &str = "cocoon-evidence-digest";
/// Hex SEC1 public key of the paying account.
pub const ACCOUNT_KEY_HEADER: &str = "cocoon-account-key";
/// Hex account signature (request or query).
pub const ACCOUNT_SIGNATURE_HEADER: &str = "cocoon-account-signature";
/// Decimal Unix seconds a receipts query was signed at.
pub const ACCOUNT_TIME_HEADER: &str = "cocoon-account-time";

/// CBOR bodies.
pub const CBOR_CONTENT_TYPE: &str = "application/cbor";
/// The streamed response body.
pub const CHUNKS_CONTENT_TYPE: &str = "application/vnd.cocoon.chunks";

/// Most enclaves in an evidence list.
pub const MAX_ENCLAVES: usize = 64;
/// Most receipts in one receipts answer.
pub const MAX_RECEIPTS_PER_PAGE: usize = 1000;
/// Length of a chunk record's length prefix.
pub const RECORD_HEADER_LEN: usize = 4;

/// Why an API body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Not the CBOR structure expected.
    #[error("api: {0}")]
    Cbor(#[from] CborError),
    /// Breaks a rule of the format.
    #[error("api: {0}")]
    Invalid(String),
}

/// The body of `GET /v1/evidence`: a CBOR array of byte strings, each an
/// encoded [`cocoon_attestation::bundle::EvidenceBundle`], kept as bytes so
/// the client verifies exactly what the enclave produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EvidenceList(pub Vec<Vec<u8>>);

impl EvidenceList {
    /// Encode.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&Value::Array(
            self.0.iter().cloned().map(Value::Bytes).collect(),
        ))
    }

    /// Decode, with sizes bounded.
    pub fn from_cbor(bytes: &[u8]) -> Result<EvidenceList, ApiError> {
        let v = cbor::decode(bytes, MAX_ENCLAVES * (MAX_BUNDLE + 16))?;
        let Value::Array(items) = v else {
            return Err(ApiError::Invalid("evidence list: expected an array".into()));
        };
        if items.len() > MAX_ENCLAVES {
            return Err(ApiError::Invalid(format!(
                "evidence list: {} bundles, more than {MAX_ENCLAVES}",
                items.len()
            )));
        }
        let list = items
            .into_iter()
            .map(|v| {
                let b = cbor::as_bytes(v, "evidence list[]")?;
                if b.len() > MAX_BUNDLE {
                    return Err(ApiError::Invalid(format!(
                        "evidence list: a bundle of {} bytes, more than {MAX_BUNDLE}",
                        b.len()
                    )));
                }
                Ok(b)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(EvidenceList(list))
    }
}

/// One ledger entry as an account sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptEntry {
    /// The host ledger's sequence number (for paging with `after`).
    pub ledger_seq: u64,
    /// The signed receipt (COSE_Sign1), as the enclave produced it.
    pub receipt: Vec<u8>,
    /// The receipt key of the enclave that signed it (SEC1), from the
    /// evidence the host verified; the client should check it against the
    /// evidence it verified itself.
    pub receipt_public_key: Vec<u8>,
}

/// The body of `GET /v1/receipts`: `[{"ledger_seq", "receipt",
/// "receipt_public_key"}, ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiptList(pub Vec<ReceiptEntry>);

impl ReceiptList {
    /// Encode.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&Value::Array(
            self.0
                .iter()
                .map(|e| {
                    cbor::map(vec![
                        ("ledger_seq", Value::Integer(e.ledger_seq.into())),
                        ("receipt", Value::Bytes(e.receipt.clone())),
                        (
                            "receipt_public_key",
                            Value::Bytes(e.receipt_public_key.clone()),
                        ),
                    ])
                })
                .collect(),
        ))
    }

    /// Decode, with sizes bounded.
    pub fn from_cbor(bytes: &[u8]) -> Result<ReceiptList, ApiError> {
        let v = cbor::decode(
            bytes,
            MAX_RECEIPTS_PER_PAGE * (MAX_RECEIPT + RECEIPT_PUBLIC_KEY_LEN + 64),
        )?;
        let Value::Array(items) = v else {
            return Err(ApiError::Invalid("receipt list: expected an array".into()));
        };
        if items.len() > MAX_RECEIPTS_PER_PAGE {
            return Err(ApiError::Invalid(format!(
                "receipt list: {} entries, more than {MAX_RECEIPTS_PER_PAGE}",
                items.len()
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut m = MapReader::new(item, "receipt list[]")?;
            let e = ReceiptEntry {
                ledger_seq: m.u64("ledger_seq")?,
                receipt: m.bytes("receipt")?,
                receipt_public_key: m.bytes("receipt_public_key")?,
            };
            m.finish()?;
            if e.receipt.len() > MAX_RECEIPT || e.receipt_public_key.len() > RECEIPT_PUBLIC_KEY_LEN
            {
                return Err(ApiError::Invalid(
                    "receipt list: an entry over the size limits".into(),
                ));
            }
            out.push(e);
        }
        Ok(ReceiptList(out))
    }
}

/// Append one chunk record (`u32` BE length ‖ chunk) to `out`.
pub fn encode_chunk_record(chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
    if chunk.len() > MAX_CHUNK_WIRE {
        return Err(ApiError::Invalid(format!(
            "chunk of {} bytes, more than {MAX_CHUNK_WIRE}",
            chunk.len()
        )));
    }
    // Fits: MAX_CHUNK_WIRE is far below u32::MAX.
    out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
    out.extend_from_slice(chunk);
    Ok(())
}

/// Cuts a streamed response body into chunk records, incrementally. A
/// record longer than [`MAX_CHUNK_WIRE`] fails the decoder as soon as its
/// length is read.
#[derive(Debug, Default)]
pub struct ChunkRecordDecoder {
    buf: Vec<u8>,
    start: usize,
    failed: bool,
}

impl ChunkRecordDecoder {
    /// A decoder.
    pub fn new() -> ChunkRecordDecoder {
        ChunkRecordDecoder::default()
    }

    /// Feed body bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete record, if one is buffered.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        if self.failed {
            return Err(ApiError::Invalid(
                "chunk record stream already failed".into(),
            ));
        }
        let avail = &self.buf[self.start..];
        if avail.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_CHUNK_WIRE {
            self.failed = true;
            return Err(ApiError::Invalid(format!(
                "chunk record of {len} bytes, more than {MAX_CHUNK_WIRE}"
            )));
        }
        if avail.len() < RECORD_HEADER_LEN + len {
            return Ok(None);
        }
        let rec = avail[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len].to_vec();
        self.start += RECORD_HEADER_LEN + len;
        Ok(Some(rec))
    }

    /// At the end of the body: an error if a partial record is buffered.
    pub fn finish(&self) -> Result<(), ApiError> {
        let left = self.buf.len() - self.start;
        if left != 0 {
            return Err(ApiError::Invalid(format!(
                "response body ended inside a chunk record ({left} bytes buffered)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_anywhere() {
        let chunks: Vec<Vec<u8>> = vec![vec![1; 10], vec![], vec![2; 300]];
        let mut body = Vec::new();
        for c in &chunks {
            encode_chunk_record(c, &mut body).unwrap();
        }
        for step in [1, 3, 7, 1000] {
            let mut d = ChunkRecordDecoder::new();
            let mut got = vec![];
            for piece in body.chunks(step) {
                d.push(piece);
                while let Some(r) = d.next_record().unwrap() {
                    got.push(r);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, chunks);
        }
        let mut d = ChunkRecordDecoder::new();
        d.push(&body[..body.len() - 1]);
        while d.next_record().unwrap().is_some() {}
        assert!(d.finish().is_err());
        let mut d = ChunkRecordDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next_record().is_err());
    }

    #[test]
    fn lists_round_trip() {
        let e = EvidenceList(vec![vec![1, 2], vec![3]]);
        assert_eq!(EvidenceList::from_cbor(&e.to_cbor()).unwrap(), e);
        let r = ReceiptList(vec![ReceiptEntry {
            ledger_seq: 9,
            receipt: vec![5; 40],
            receipt_public_key: vec![4; 65],
        }]);
        assert_eq!(ReceiptList::from_cbor(&r.to_cbor()).unwrap(), r);
        assert!(ReceiptList::from_cbor(&e.to_cbor()).is_err());
    }
}
