//! NVIDIA GPU and NVSwitch attestation reports: SPDM 1.1 GET_MEASUREMENTS.
//!
//! An H100 in confidential-computing mode (and an LS10 NVSwitch in a
//! protected-PCIe system) answers the driver's attestation request with an
//! SPDM exchange. The report the driver returns is the request followed by
//! the response, byte for byte:
//!
//! ```text
//! GET_MEASUREMENTS request (DSP0274 1.1 §10.11.1, 37 bytes)
//!   0  SPDMVersion (0x11)        1  RequestResponseCode (0xE0)
//!   2  Param1 (bit 0: signature requested)
//!   3  Param2 (0xFF: all measurements)
//!   4  Nonce[32]                36  SlotIDParam
//! MEASUREMENTS response (DSP0274 1.1 §10.11.2)
//!   0  SPDMVersion (0x11)        1  RequestResponseCode (0x60)
//!   2  Param1                    3  Param2 (slot)
//!   4  NumberOfBlocks            5  MeasurementRecordLength (3 bytes, LE)
//!   8  MeasurementRecord         then Nonce[32], OpaqueDataLength (u16 LE),
//!      OpaqueData, Signature (ECDSA P-384: r || s, 96 bytes)
//! ```
//!
//! Each measurement block (§10.11.2, Table "Measurement block format") is
//! `Index, MeasurementSpecification (bit 0 = DMTF), MeasurementSize (u16
//! LE), Measurement`, and a DMTF measurement is `DMTFSpecMeasurementValueType,
//! DMTFSpecMeasurementValueSize (u16 LE), DMTFSpecMeasurementValue`.
//!
//! The opaque data is NVIDIA's: a list of `type (u16 LE), length (u16 LE),
//! value` fields (driver version, VBIOS version, FWID, measurement counts,
//! switch PDIs, feature flag, ...). Types this module does not know are kept
//! as raw fields: they are signed, shown, and never used for a decision.
//!
//! The signature covers request || response up to the signature (SPDM 1.1
//! signs the transcript L1 directly; 1.2's signing context is not used at
//! 1.1). The signed transcript ends with the signature, but the buffer the
//! driver hands back can be longer: it is zero-filled after the signature
//! (NVIDIA's own verifier reads the response's lengths and ignores the
//! rest). Zero bytes after the signature are therefore accepted, bounded
//! by the driver's buffer size ([`MAX_REPORT`]), counted
//! ([`SpdmReport::padding_len`]) and dropped; a non-zero byte there is an
//! error, since nothing unsigned may carry information. This module parses
//! and never verifies; it never panics on input.

use core::fmt;
use core::ops::Range;

use crate::bytes::{OutOfBounds, Reader};

/// SPDM version this parser accepts (1.1).
pub const SPDM_VERSION_11: u8 = 0x11;
/// GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Size of the GET_MEASUREMENTS request with a nonce (1.1).
pub const REQUEST_SIZE: usize = 37;
/// ECDSA P-384 signature size (r || s).
pub const SIGNATURE_SIZE: usize = 96;
/// Largest report accepted (the driver's buffer is 8 KiB).
pub const MAX_REPORT: usize = 0x2000;
/// Offset of the response within a report.
const RESP: usize = REQUEST_SIZE;
/// Offset of the measurement record within a report.
pub const RECORD_OFFSET: usize = RESP + 8;

/// Why bytes are not an NVIDIA SPDM report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpdmError {
    /// Fewer bytes than the structure needs.
    #[error("report truncated: {what} needs bytes {need:?}, report has {have}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// The byte range needed.
        need: Range<usize>,
        /// Bytes available.
        have: usize,
    },
    /// More bytes than any driver returns.
    #[error("report is {0} bytes, more than the {MAX_REPORT} accepted")]
    TooLarge(usize),
    /// Bytes after the signature that are not zero padding.
    #[error("{after_signature} bytes follow the signature and byte {first_nonzero} of the report is not zero: only zero padding may follow the signed transcript")]
    Trailing {
        /// How many bytes follow the signature.
        after_signature: usize,
        /// Offset (in the report) of the first non-zero one.
        first_nonzero: usize,
    },
    /// A fixed field holds an unexpected value.
    #[error("{field} is {value:#04x}, expected {expected}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u32,
        /// What the spec requires.
        expected: &'static str,
    },
    /// The measurement record is inconsistent.
    #[error("measurement record: {0}")]
    Record(String),
    /// The opaque data is inconsistent.
    #[error("opaque data: {0}")]
    Opaque(String),
    /// The hex text form is broken.
    #[error("hex text: {0}")]
    Hex(String),
}

/// One SPDM measurement block with a DMTF measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Block index (1-based in NVIDIA's reports).
    pub index: u8,
    /// DMTFSpecMeasurementValueType: bit 7 set means a raw bit stream,
    /// clear means a digest; bits 0-6 name what was measured.
    pub value_type: u8,
    /// Where the measurement value lies in the report.
    pub value: Range<usize>,
}

/// One opaque-data field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field type (see [`OpaqueField::name`]).
    pub kind: u16,
    /// Where its value lies in the report.
    pub value: Range<usize>,
}

impl OpaqueField {
    /// NVIDIA's name for the field type, or `None` for a type this module
    /// does not know.
    pub fn name(&self) -> Option<&'static str> {
        opaque_name(self.kind)
    }
}

/// Opaque-data field types (NVIDIA's `OPAQUE_FIELD_ID_*`).
pub mod opaque {
    /// Driver version, NUL-terminated ASCII.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU info.
    pub const GPU_INFO: u16 = 4;
    /// VBIOS version: 8 bytes (GPU) or ASCII (NVSwitch).
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 status.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts, u32 LE each.
    pub const MSRSCNT: u16 = 12;
    /// Chip SKU, ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// Project, ASCII.
    pub const PROJECT: u16 = 17;
    /// Project SKU, ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// FWID: SHA-384 of the firmware that holds the attestation key.
    pub const FWID: u16 = 20;
    /// Protected-PCIe status.
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    /// PDIs of the NVSwitches (GPU) or the switch's own PDI, 8 bytes each.
    pub const SWITCH_PDI: u16 = 22;
    /// Opaque-data layout version.
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    /// Chip info, ASCII.
    pub const CHIP_INFO: u16 = 35;
    /// Feature flag: 0 single-GPU passthrough, 1 multi-GPU passthrough,
    /// 2 protected PCIe.
    pub const FEATURE_FLAG: u16 = 36;
}

fn opaque_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        1 => "CERT_ISSUER_NAME",
        2 => "CERT_AUTHORITY_KEY_IDENTIFIER",
        3 => "DRIVER_VERSION",
        4 => "GPU_INFO",
        5 => "SKU",
        6 => "VBIOS_VERSION",
        7 => "MANUFACTURER_ID",
        8 => "TAMPER_DETECTION",
        9 => "SMC",
        10 => "VPR",
        11 => "NVDEC0_STATUS",
        12 => "MSRSCNT",
        13 => "CPRINFO",
        14 => "BOARD_ID",
        15 => "CHIP_SKU",
        16 => "CHIP_SKU_MOD",
        17 => "PROJECT",
        18 => "PROJECT_SKU",
        19 => "PROJECT_SKU_MOD",
        20 => "FWID",
        21 => "PROTECTED_PCIE_STATUS",
        22 => "SWITCH_PDI",
        23 => "FLOORSWEPT_PORTS",
        24 => "POSITION_ID",
        25 => "LOCK_SWITCH_STATUS",
        32 => "GPU_LINK_CONN",
        33 => "SYS_ENABLE_STATUS",
        34 => "OPAQUE_DATA_VERSION",
        35 => "CHIP_INFO",
        36 => "FEATURE_FLAG",
        _ => return None,
    })
}

/// The multi-GPU mode a GPU reports in its feature flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureMode {
    /// Single GPU passthrough.
    SinglePassthrough,
    /// Multi-GPU passthrough.
    MultiPassthrough,
    /// Protected PCIe (GPUs and NVSwitches attested together).
    ProtectedPcie,
}

/// A parsed GPU or NVSwitch attestation report. Holds the bytes; every
/// accessor reads from them.
#[derive(Clone, PartialEq, Eq)]
pub struct SpdmReport {
    bytes: Vec<u8>,
    blocks: Vec<MeasurementBlock>,
    opaque: Vec<OpaqueField>,
    responder_nonce: Range<usize>,
    opaque_range: Range<usize>,
    signature_at: usize,
    padding: usize,
}

impl fmt::Debug for SpdmReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpdmReport")
            .field("len", &self.bytes.len())
            .field("blocks", &self.blocks.len())
            .field("opaque_fields", &self.opaque.len())
            .field("padding", &self.padding)
            .finish()
    }
}

/// A read past the end of the report (the reader runs over all of it, so
/// its offsets are report offsets).
fn truncated(e: OutOfBounds) -> SpdmError {
    let needed = usize::try_from(e.needed).unwrap_or(usize::MAX);
    SpdmError::Truncated {
        what: e.what,
        need: e.offset..e.offset.saturating_add(needed),
        have: e.offset + e.available,
    }
}

fn expect(
    field: &'static str,
    value: u8,
    want: u8,
    expected: &'static str,
) -> Result<(), SpdmError> {
    if value == want {
        Ok(())
    } else {
        Err(SpdmError::Field {
            field,
            value: u32::from(value),
            expected,
        })
    }
}

impl SpdmReport {
    /// Parse request || response bytes, optionally followed by zero padding
    /// (the driver's buffer; see the module documentation).
    pub fn parse(bytes: &[u8]) -> Result<SpdmReport, SpdmError> {
        if bytes.len() > MAX_REPORT {
            return Err(SpdmError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let req = r
            .bytes(REQUEST_SIZE, "GET_MEASUREMENTS request")
            .map_err(truncated)?;
        expect(
            "request SPDMVersion",
            req[0],
            SPDM_VERSION_11,
            "0x11 (SPDM 1.1)",
        )?;
        expect(
            "request code",
            req[1],
            GET_MEASUREMENTS,
            "0xe0 (GET_MEASUREMENTS)",
        )?;
        if req[2] & 1 == 0 {
            return Err(SpdmError::Field {
                field: "request Param1",
                value: u32::from(req[2]),
                expected: "bit 0 set (signature requested)",
            });
        }
        let head = r
            .bytes(RECORD_OFFSET - RESP, "MEASUREMENTS header")
            .map_err(truncated)?;
        expect(
            "response SPDMVersion",
            head[0],
            SPDM_VERSION_11,
            "0x11 (SPDM 1.1)",
        )?;
        expect(
            "response code",
            head[1],
            MEASUREMENTS,
            "0x60 (MEASUREMENTS)",
        )?;
        let number_of_blocks = head[4];
        let record_len =
            usize::from(head[5]) | usize::from(head[6]) << 8 | usize::from(head[7]) << 16;
        let record = r.sub(record_len, "measurement record").map_err(truncated)?;
        let blocks = parse_record(record, number_of_blocks)?;
        let responder_nonce = r.sub(32, "responder nonce").map_err(truncated)?.range();
        let opaque_len = r.u16_le("OpaqueDataLength").map_err(truncated)?;
        let opaque = r
            .sub(usize::from(opaque_len), "opaque data")
            .map_err(truncated)?;
        let opaque_range = opaque.range();
        let opaque = parse_opaque(opaque)?;
        let signature_at = r.offset();
        r.bytes(SIGNATURE_SIZE, "signature").map_err(truncated)?;
        let end = signature_at + SIGNATURE_SIZE;
        let padding = bytes.get(end..).unwrap_or_default();
        if let Some(at) = padding.iter().position(|b| *b != 0) {
            return Err(SpdmError::Trailing {
                after_signature: padding.len(),
                first_nonzero: end + at,
            });
        }
        Ok(SpdmReport {
            bytes: bytes.get(..end).unwrap_or(bytes).to_vec(),
            blocks,
            opaque,
            responder_nonce,
            opaque_range,
            signature_at,
            padding: padding.len(),
        })
    }

    /// Parse the hex text form NVIDIA's tools write (whitespace around it
    /// is ignored; anything else that is not a hex digit is an error).
    pub fn parse_hex(text: &[u8]) -> Result<SpdmReport, SpdmError> {
        let trimmed = text.trim_ascii();
        if trimmed.len() > 2 * MAX_REPORT {
            return Err(SpdmError::TooLarge(trimmed.len() / 2));
        }
        let bytes = hex::decode(trimmed).map_err(|e| SpdmError::Hex(e.to_string()))?;
        Self::parse(&bytes)
    }

    /// The report: request || response, ending with the signature (without
    /// any zero padding that followed it).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// How many zero bytes followed the signature and were ignored.
    pub fn padding_len(&self) -> usize {
        self.padding
    }
    /// The bytes the signature covers: request || response up to the
    /// signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..self.signature_at]
    }
    /// The ECDSA P-384 signature, big-endian r || s.
    pub fn signature(&self) -> &[u8] {
        &self.bytes[self.signature_at..]
    }
    /// The requester's nonce (what the verifier compares with its own).
    pub fn request_nonce(&self) -> &[u8] {
        &self.bytes[4..36]
    }
    /// The requested slot.
    pub fn slot_id(&self) -> u8 {
        self.bytes[36]
    }
    /// The request's Param2 (measurement operation; 0xFF = all).
    pub fn request_param2(&self) -> u8 {
        self.bytes[3]
    }
    /// The responder's nonce.
    pub fn responder_nonce(&self) -> &[u8] {
        &self.bytes[self.responder_nonce.clone()]
    }
    /// The response's Param1 and Param2.
    pub fn response_params(&self) -> (u8, u8) {
        (self.bytes[RESP + 2], self.bytes[RESP + 3])
    }
    /// The measurement blocks, in report order.
    pub fn blocks(&self) -> &[MeasurementBlock] {
        &self.blocks
    }
    /// The value of a measurement block.
    pub fn value(&self, block: &MeasurementBlock) -> &[u8] {
        &self.bytes[block.value.clone()]
    }
    /// The measurement block with this index.
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }
    /// Where the measurement record lies.
    pub fn record_len(&self) -> usize {
        self.responder_nonce.start - RECORD_OFFSET
    }
    /// The opaque data, raw.
    pub fn opaque_data(&self) -> &[u8] {
        &self.bytes[self.opaque_range.clone()]
    }
    /// The opaque fields, in report order.
    pub fn opaque_fields(&self) -> &[OpaqueField] {
        &self.opaque
    }
    /// The value of the (first) opaque field of this type.
    pub fn opaque_value(&self, kind: u16) -> Option<&[u8]> {
        self.opaque
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| &self.bytes[f.value.clone()])
    }
    /// The driver version ("550.90.07"), when reported (GPUs only).
    pub fn driver_version(&self) -> Option<String> {
        self.opaque_value(opaque::DRIVER_VERSION).map(ascii_z)
    }
    /// The VBIOS version as NVIDIA prints it ("96.00.9F.00.01"): GPUs
    /// report 8 bytes (a little-endian u64 whose low 32 bits are the first
    /// four parts and bits 32-39 the fifth), NVSwitches ASCII.
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.opaque_value(opaque::VBIOS_VERSION)?;
        if v.len() == 8 && !v.iter().all(|b| b.is_ascii_graphic()) {
            Some(format!(
                "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
                v[3], v[2], v[1], v[0], v[4]
            ))
        } else {
            Some(ascii_z(v))
        }
    }
    /// The FWID (SHA-384 of the firmware holding the attestation key), when
    /// reported.
    pub fn fwid(&self) -> Option<&[u8]> {
        self.opaque_value(opaque::FWID)
    }
    /// The feature flag, when reported; `Err` with the raw value when it is
    /// not one NVIDIA defines.
    pub fn feature_mode(&self) -> Option<Result<FeatureMode, u32>> {
        let v = self.opaque_value(opaque::FEATURE_FLAG)?;
        let mut raw = 0u32;
        for (i, b) in v.iter().take(4).enumerate() {
            raw |= u32::from(*b) << (8 * i);
        }
        Some(match (v.len() <= 4, raw) {
            (true, 0) => Ok(FeatureMode::SinglePassthrough),
            (true, 1) => Ok(FeatureMode::MultiPassthrough),
            (true, 2) => Ok(FeatureMode::ProtectedPcie),
            _ => Err(raw),
        })
    }
    /// The 8-byte PDIs listed in the SWITCH_PDI field.
    pub fn switch_pdis(&self) -> Vec<[u8; 8]> {
        self.opaque_value(opaque::SWITCH_PDI)
            .map(|v| {
                v.chunks_exact(8)
                    .filter_map(|c| <[u8; 8]>::try_from(c).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Chip info ("GH100"), when reported.
    pub fn chip_info(&self) -> Option<String> {
        self.opaque_value(opaque::CHIP_INFO).map(ascii_z)
    }
    /// Project (board) name, when reported.
    pub fn project(&self) -> Option<String> {
        self.opaque_value(opaque::PROJECT).map(ascii_z)
    }
}

/// ASCII up to the first NUL, non-printable bytes replaced.
fn ascii_z(v: &[u8]) -> String {
    v.iter()
        .take_while(|b| **b != 0)
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                char::from(*b)
            } else {
                '?'
            }
        })
        .collect()
}

/// The measurement blocks of `record`, which they must fill exactly.
fn parse_record(mut record: Reader<'_>, expected: u8) -> Result<Vec<MeasurementBlock>, SpdmError> {
    let mut blocks = Vec::with_capacity(usize::from(expected));
    while !record.is_empty() {
        if blocks.len() == usize::from(expected) {
            return Err(SpdmError::Record(format!(
                "bytes left after the {expected} blocks NumberOfBlocks announces"
            )));
        }
        let at = record.offset();
        let mut head = record
            .sub(4, "block header")
            .map_err(|_| SpdmError::Record(format!("block header at {at} runs past the record")))?;
        let (Ok(index), Ok(spec), Ok(size)) = (
            head.u8("Index"),
            head.u8("MeasurementSpecification"),
            head.u16_le("MeasurementSize"),
        ) else {
            return Err(SpdmError::Record(format!(
                "block header at {at} runs past the record"
            )));
        };
        if spec & 1 == 0 {
            return Err(SpdmError::Record(format!(
                "block {index}: MeasurementSpecification {spec:#04x} is not DMTF"
            )));
        }
        let mut body = record
            .sub(usize::from(size), "block")
            .map_err(|_| SpdmError::Record(format!("block {index} runs past the record")))?;
        let (Ok(value_type), Ok(value_size)) = (
            body.u8("DMTFSpecMeasurementValueType"),
            body.u16_le("DMTFSpecMeasurementValueSize"),
        ) else {
            return Err(SpdmError::Record(format!(
                "block {index}: DMTF header truncated"
            )));
        };
        if body.range().len() != usize::from(value_size) {
            return Err(SpdmError::Record(format!(
                "block {index}: DMTF value size {value_size} does not fill MeasurementSize {size}"
            )));
        }
        if blocks.iter().any(|x: &MeasurementBlock| x.index == index) {
            return Err(SpdmError::Record(format!(
                "block index {index} appears twice"
            )));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value: body.range(),
        });
    }
    if blocks.len() != usize::from(expected) {
        return Err(SpdmError::Record(format!(
            "NumberOfBlocks says {expected}, the record holds {}",
            blocks.len()
        )));
    }
    Ok(blocks)
}

/// NVIDIA's `type, length, value` fields, which must fill `opaque` exactly.
fn parse_opaque(mut opaque: Reader<'_>) -> Result<Vec<OpaqueField>, SpdmError> {
    let mut out = Vec::new();
    while !opaque.is_empty() {
        let at = opaque.offset();
        let (Ok(kind), Ok(len)) = (opaque.u16_le("type"), opaque.u16_le("length")) else {
            return Err(SpdmError::Opaque(format!(
                "field header at {at} runs past the opaque data"
            )));
        };
        let value = opaque.sub(usize::from(len), "value").map_err(|_| {
            SpdmError::Opaque(format!(
                "field {kind} ({}) of {len} bytes runs past the opaque data",
                opaque_name(kind).unwrap_or("unknown")
            ))
        })?;
        if opaque_name(kind).is_some() && out.iter().any(|f: &OpaqueField| f.kind == kind) {
            return Err(SpdmError::Opaque(format!(
                "field {} appears twice",
                opaque_name(kind).unwrap_or("?")
            )));
        }
        out.push(OpaqueField {
            kind,
            value: value.range(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small well-formed report: two blocks, two opaque fields.
    fn sample() -> Vec<u8> {
        let mut b = vec![0x11, 0xE0, 1, 0xFF];
        b.extend([7u8; 32]);
        b.push(0);
        let mut record = Vec::new();
        for index in [1u8, 2] {
            record.extend([index, 1, 51, 0, 1, 48, 0]);
            record.extend([index; 48]);
        }
        b.extend([0x11, 0x60, 0, 0, 2]);
        b.extend(&(record.len() as u32).to_le_bytes()[..3]);
        b.extend(&record);
        b.extend([9u8; 32]);
        let mut opaque = Vec::new();
        opaque.extend(3u16.to_le_bytes());
        opaque.extend(10u16.to_le_bytes());
        opaque.extend(b"550.90.07\0");
        opaque.extend(6u16.to_le_bytes());
        opaque.extend(8u16.to_le_bytes());
        opaque.extend([0x00, 0x9f, 0x00, 0x96, 0x01, 0, 0, 0]);
        b.extend((opaque.len() as u16).to_le_bytes());
        b.extend(opaque);
        b.extend([0xAB; 96]);
        b
    }

    #[test]
    fn parses_a_well_formed_report() {
        let r = SpdmReport::parse(&sample()).unwrap();
        assert_eq!(r.blocks().len(), 2);
        assert_eq!(r.value(&r.blocks()[1]), &[2u8; 48]);
        assert_eq!(r.request_nonce(), &[7u8; 32]);
        assert_eq!(r.responder_nonce(), &[9u8; 32]);
        assert_eq!(r.driver_version().as_deref(), Some("550.90.07"));
        assert_eq!(r.vbios_version().as_deref(), Some("96.00.9F.00.01"));
        assert_eq!(r.signature(), &[0xAB; 96]);
        assert_eq!(r.signed_bytes().len() + 96, sample().len());
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let s = sample();
        for n in 0..s.len() {
            assert!(SpdmReport::parse(&s[..n]).is_err(), "prefix {n}");
        }
        let mut long = s.clone();
        long.push(1);
        assert_eq!(
            SpdmReport::parse(&long),
            Err(SpdmError::Trailing {
                after_signature: 1,
                first_nonzero: s.len()
            })
        );
    }

    #[test]
    fn zero_padding_after_the_signature_is_counted_and_dropped() {
        let s = sample();
        let exact = SpdmReport::parse(&s).unwrap();
        assert_eq!(exact.padding_len(), 0);
        // The driver's 8 KiB buffer, zero-filled after the transcript.
        let mut buffer = s.clone();
        buffer.resize(MAX_REPORT, 0);
        let padded = SpdmReport::parse(&buffer).unwrap();
        assert_eq!(padded.padding_len(), MAX_REPORT - s.len());
        assert_eq!(padded.bytes(), exact.bytes());
        assert_eq!(padded.signature(), exact.signature());
        assert_eq!(padded.signed_bytes(), exact.signed_bytes());
        // Bounded by the buffer size.
        buffer.push(0);
        assert_eq!(
            SpdmReport::parse(&buffer),
            Err(SpdmError::TooLarge(MAX_REPORT + 1))
        );
        // Any non-zero byte in the padding is refused, wherever it is.
        for at in [s.len(), s.len() + 1, MAX_REPORT - 1] {
            let mut b = s.clone();
            b.resize(MAX_REPORT, 0);
            b[at] = 0x80;
            assert_eq!(
                SpdmReport::parse(&b),
                Err(SpdmError::Trailing {
                    after_signature: MAX_REPORT - s.len(),
                    first_nonzero: at
                }),
                "non-zero byte at {at}"
            );
        }
    }

    #[test]
    fn inconsistent_records_are_errors() {
        let mut s = sample();
        s[RESP + 4] = 3; // NumberOfBlocks
        assert!(matches!(SpdmReport::parse(&s), Err(SpdmError::Record(_))));
        let mut s = sample();
        s[RECORD_OFFSET + 55] = 1; // second block's index = first's
        assert!(matches!(SpdmReport::parse(&s), Err(SpdmError::Record(_))));
        let mut s = sample();
        s[RECORD_OFFSET + 5] = 47; // DMTF size no longer fills the block
        assert!(matches!(SpdmReport::parse(&s), Err(SpdmError::Record(_))));
        let mut s = sample();
        s[0] = 0x12;
        assert!(matches!(
            SpdmReport::parse(&s),
            Err(SpdmError::Field { .. })
        ));
        assert!(matches!(
            SpdmReport::parse_hex(b"11e0zz"),
            Err(SpdmError::Hex(_))
        ));
    }
}

/// Domain separator of the GPU nonce.
pub const GPU_NONCE_DOMAIN: &[u8] = b"cocoon-gpu-nonce-v1";
/// Most devices in one evidence set (8 GPUs and 4 NVSwitches on an HGX
/// board, with room).
pub const MAX_DEVICES: usize = 32;
/// Most bytes of an encoded evidence set.
pub const MAX_GPU_EVIDENCE: usize = 1 << 20;

/// The nonce an enclave asks its GPUs to sign at an attestation epoch:
/// `SHA-256("cocoon-gpu-nonce-v1" || hpke_public_key || epoch (u64 BE))`.
/// It names the enclave's fresh HPKE key, which exists only inside this
/// VM, so GPU evidence cannot be replayed into another enclave or epoch.
pub fn session_nonce(hpke_public_key: &[u8], epoch: u64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(GPU_NONCE_DOMAIN);
    h.update(hpke_public_key);
    h.update(epoch.to_be_bytes());
    h.finalize().into()
}

/// One device's evidence as the driver returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvidence {
    /// SPDM GET_MEASUREMENTS request || response.
    pub report: Vec<u8>,
    /// The attestation key's certificate chain (PEM, leaf first).
    pub cert_chain: Vec<u8>,
}

/// The GPU evidence an enclave takes at an epoch; its SHA-256 (over
/// [`GpuEvidence::to_cbor`]) is `Claims::gpu_evidence_digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The nonce every report must answer ([`session_nonce`]).
    pub nonce: [u8; 32],
    /// Confidential-computing mode as the enclave read it from the driver.
    pub cc_enabled: bool,
    /// Developer-tools mode (CC without protections), as read from the driver.
    pub devtools: bool,
    /// GPUs and NVSwitches.
    pub devices: Vec<DeviceEvidence>,
}

/// NVIDIA-signed collateral for GPU evidence: reference integrity manifests
/// and OCSP responses. Not bound into the claims: its own signatures make
/// it trustworthy, and the host may refresh it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuCollateral {
    /// Driver and VBIOS RIMs (SWID XML).
    pub rims: Vec<Vec<u8>>,
    /// OCSP responses (DER) for device and RIM certificates.
    pub ocsp: Vec<Vec<u8>>,
}

use crate::cbor::{self, CborError, MapReader};
use ciborium::Value;

fn byte_list(v: Value, what: &str, max: usize) -> Result<Vec<Vec<u8>>, CborError> {
    match v {
        Value::Array(a) if a.len() <= max => {
            a.into_iter().map(|x| cbor::as_bytes(x, what)).collect()
        }
        Value::Array(_) => Err(CborError::Invalid(
            what.into(),
            format!("more than {max} entries"),
        )),
        _ => Err(CborError::Invalid(what.into(), "expected an array".into())),
    }
}

impl GpuEvidence {
    /// Encode as canonical CBOR (fixed key order).
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&cbor::map(vec![
            ("nonce", Value::Bytes(self.nonce.to_vec())),
            ("cc_enabled", Value::Bool(self.cc_enabled)),
            ("devtools", Value::Bool(self.devtools)),
            (
                "devices",
                Value::Array(
                    self.devices
                        .iter()
                        .map(|d| {
                            cbor::map(vec![
                                ("report", Value::Bytes(d.report.clone())),
                                ("cert_chain", Value::Bytes(d.cert_chain.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]))
    }

    /// SHA-256 of the encoding: what the claims carry.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.to_cbor()).into()
    }

    /// Decode strictly.
    pub fn from_cbor(bytes: &[u8]) -> Result<GpuEvidence, CborError> {
        let mut m = MapReader::new(cbor::decode(bytes, MAX_GPU_EVIDENCE)?, "gpu_evidence")?;
        let flag = |m: &mut MapReader, k: &str| match m.take(k)? {
            Value::Bool(b) => Ok(b),
            _ => Err(CborError::Invalid(
                format!("gpu_evidence.{k}"),
                "expected a boolean".into(),
            )),
        };
        let nonce = m.array::<32>("nonce")?;
        let cc_enabled = flag(&mut m, "cc_enabled")?;
        let devtools = flag(&mut m, "devtools")?;
        let devices = match m.take("devices")? {
            Value::Array(a) if a.len() <= MAX_DEVICES => a
                .into_iter()
                .map(|v| {
                    let mut d = MapReader::new(v, "gpu_evidence.devices[]")?;
                    let e = DeviceEvidence {
                        report: d.bytes("report")?,
                        cert_chain: d.bytes("cert_chain")?,
                    };
                    d.finish()?;
                    Ok(e)
                })
                .collect::<Result<Vec<_>, CborError>>()?,
            _ => {
                return Err(CborError::Invalid(
                    "gpu_evidence.devices".into(),
                    format!("expected an array of at most {MAX_DEVICES}"),
                ))
            }
        };
        m.finish()?;
        Ok(GpuEvidence {
            nonce,
            cc_enabled,
            devtools,
            devices,
        })
    }
}

impl GpuCollateral {
    /// Encode as a CBOR value (inside a bundle).
    pub fn to_cbor_value(&self) -> Value {
        cbor::map(vec![
            (
                "rims",
                Value::Array(self.rims.iter().cloned().map(Value::Bytes).collect()),
            ),
            (
                "ocsp",
                Value::Array(self.ocsp.iter().cloned().map(Value::Bytes).collect()),
            ),
        ])
    }

    /// Decode a CBOR value strictly.
    pub fn from_cbor_value(v: Value) -> Result<GpuCollateral, CborError> {
        let mut m = MapReader::new(v, "gpu_collateral")?;
        let c = GpuCollateral {
            rims: byte_list(m.take("rims")?, "gpu_collateral.rims", 4 * MAX_DEVICES)?,
            ocsp: byte_list(m.take("ocsp")?, "gpu_collateral.ocsp", 16 * MAX_DEVICES)?,
        };
        m.finish()?;
        Ok(c)
    }
}
