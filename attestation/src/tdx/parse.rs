//! The walk over a quote's bytes: every declared length checked against its
//! container, nothing left over. Layout: see the parent module.

use core::fmt;
use core::ops::Range;

use crate::bytes::{Leftover, OutOfBounds, Reader};

use super::layout::*;
use super::report::{BodyDescriptor, EnclaveReport, QuoteBody, QuoteHeader, TdReport, TeeType};

/// Why a byte string is not a quote this module can parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input ends inside a fixed-size structure.
    #[error(
        "quote truncated: {what} needs {needed} bytes at offset {offset}, only {available} left"
    )]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Byte offset (within the quote) where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left in its container.
        available: usize,
    },
    /// The version field names a format this module does not know.
    #[error("quote version {0} is not supported (TDX: 4 and 5; SGX: 3, 4 and 5)")]
    UnsupportedVersion(u16),
    /// The attestation key type is not ECDSA-256-with-P-256.
    #[error("attestation key type {0} is not supported (only 2, ECDSA-256-with-P-256)")]
    UnsupportedAttestationKeyType(u16),
    /// The TEE type is neither SGX nor TDX, or TDX in a version 3 quote.
    #[error("TEE type {tee_type:#x} is not defined for quote version {version} (0x0 SGX, 0x81 TDX from version 4)")]
    UnsupportedTeeType {
        /// Quote version.
        version: u16,
        /// TEE type field.
        tee_type: u32,
    },
    /// A version 5 body descriptor names an unknown body type.
    #[error("quote body type {0} is unknown (1 SGX, 2 TD 1.0, 3 TD 1.5)")]
    UnsupportedBodyType(u16),
    /// A version 5 body type belongs to the other TEE.
    #[error("quote body type {body_type} does not belong to TEE type {tee_type:#x}")]
    BodyTypeMismatch {
        /// TEE type from the header.
        tee_type: u32,
        /// Body type from the descriptor.
        body_type: u16,
    },
    /// A version 5 body descriptor gives the wrong size for its type.
    #[error("quote body type {body_type} is {expected} bytes, but the descriptor says {declared}")]
    BodySizeMismatch {
        /// Body type from the descriptor.
        body_type: u16,
        /// Size of that body type.
        expected: usize,
        /// Size from the descriptor.
        declared: u32,
    },
    /// A declared length runs past the end of its container.
    #[error("{what} declares {declared} bytes at offset {offset}, but only {available} are there")]
    LengthOutOfBounds {
        /// What the length is of.
        what: &'static str,
        /// Byte offset (within the quote) where the counted bytes start.
        offset: usize,
        /// Declared length.
        declared: u64,
        /// Bytes left in the container.
        available: usize,
    },
    /// A length-delimited structure has bytes its contents do not use.
    #[error("{what} has {count} unused bytes at offset {offset}")]
    UnusedBytes {
        /// The structure.
        what: &'static str,
        /// Byte offset (within the quote) of the first unused byte.
        offset: usize,
        /// How many bytes are unused.
        count: usize,
    },
    /// Certification data of a type that cannot appear at this place.
    #[error("{what} has certification data type {found}, expected {expected}")]
    UnexpectedCertificationDataType {
        /// Where the certification data is.
        what: &'static str,
        /// The type this place requires.
        expected: u16,
        /// The type found.
        found: u16,
    },
    /// Bytes follow the quote's signature data ([`Quote::parse`] only).
    #[error("{trailing} bytes follow the {quote_len}-byte quote")]
    TrailingBytes {
        /// Length of the quote the signature data length delimits.
        quote_len: usize,
        /// Bytes after it.
        trailing: usize,
    },
}

/// A fixed-size read past the end of its container: the structure is
/// truncated.
impl From<OutOfBounds> for ParseError {
    fn from(e: OutOfBounds) -> Self {
        ParseError::Truncated {
            what: e.what,
            offset: e.offset,
            needed: usize::try_from(e.needed).unwrap_or(usize::MAX),
            available: e.available,
        }
    }
}

/// A length-delimited structure its contents did not use up.
impl From<Leftover> for ParseError {
    fn from(e: Leftover) -> Self {
        ParseError::UnusedBytes {
            what: e.what,
            offset: e.offset,
            count: e.count,
        }
    }
}

/// A length read from the quote that runs past its container.
fn length_out_of_bounds(e: OutOfBounds) -> ParseError {
    ParseError::LengthOutOfBounds {
        what: e.what,
        offset: e.offset,
        declared: e.needed,
        available: e.available,
    }
}

impl RawHeader {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "quote header";
        let mut s = r.sub(HEADER_SIZE, WHAT)?;
        let raw = RawHeader {
            version: s.array(WHAT)?,
            att_key_type: s.array(WHAT)?,
            tee_type: s.array(WHAT)?,
            qe_svn: s.array(WHAT)?,
            pce_svn: s.array(WHAT)?,
            qe_vendor_id: s.array(WHAT)?,
            user_data: s.array(WHAT)?,
        };
        s.finish(WHAT)?;
        Ok(raw)
    }
}

impl RawBodyDescriptor {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "quote body descriptor";
        let mut s = r.sub(BODY_DESCRIPTOR_SIZE, WHAT)?;
        let raw = RawBodyDescriptor {
            body_type: s.array(WHAT)?,
            body_size: s.array(WHAT)?,
        };
        s.finish(WHAT)?;
        Ok(raw)
    }
}

impl RawTd10Body {
    fn read_fields(s: &mut Reader<'_>, what: &'static str) -> Result<Self, ParseError> {
        Ok(RawTd10Body {
            tee_tcb_svn: s.array(what)?,
            mrseam: s.array(what)?,
            mrsignerseam: s.array(what)?,
            seam_attributes: s.array(what)?,
            td_attributes: s.array(what)?,
            xfam: s.array(what)?,
            mrtd: s.array(what)?,
            mrconfigid: s.array(what)?,
            mrowner: s.array(what)?,
            mrownerconfig: s.array(what)?,
            rtmr0: s.array(what)?,
            rtmr1: s.array(what)?,
            rtmr2: s.array(what)?,
            rtmr3: s.array(what)?,
            report_data: s.array(what)?,
        })
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "TD 1.0 quote body";
        let mut s = r.sub(TD10_BODY_SIZE, WHAT)?;
        let raw = Self::read_fields(&mut s, WHAT)?;
        s.finish(WHAT)?;
        Ok(raw)
    }
}

impl RawTd15Body {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "TD 1.5 quote body";
        let mut s = r.sub(TD15_BODY_SIZE, WHAT)?;
        let raw = RawTd15Body {
            td10: RawTd10Body::read_fields(&mut s, WHAT)?,
            tee_tcb_svn_2: s.array(WHAT)?,
            mrservicetd: s.array(WHAT)?,
        };
        s.finish(WHAT)?;
        Ok(raw)
    }
}

impl RawEnclaveReport {
    fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, ParseError> {
        let mut s = r.sub(ENCLAVE_REPORT_SIZE, what)?;
        let raw = RawEnclaveReport {
            cpusvn: s.array(what)?,
            miscselect: s.array(what)?,
            reserved1: s.array(what)?,
            isvextprodid: s.array(what)?,
            attributes: s.array(what)?,
            mrenclave: s.array(what)?,
            reserved2: s.array(what)?,
            mrsigner: s.array(what)?,
            reserved3: s.array(what)?,
            configid: s.array(what)?,
            isvprodid: s.array(what)?,
            isvsvn: s.array(what)?,
            configsvn: s.array(what)?,
            reserved4: s.array(what)?,
            isvfamilyid: s.array(what)?,
            report_data: s.array(what)?,
        };
        s.finish(what)?;
        Ok(raw)
    }

    pub(super) fn to_bytes(&self) -> [u8; ENCLAVE_REPORT_SIZE] {
        let mut out = [0u8; ENCLAVE_REPORT_SIZE];
        let parts: [&[u8]; 16] = [
            &self.cpusvn,
            &self.miscselect,
            &self.reserved1,
            &self.isvextprodid,
            &self.attributes,
            &self.mrenclave,
            &self.reserved2,
            &self.mrsigner,
            &self.reserved3,
            &self.configid,
            &self.isvprodid,
            &self.isvsvn,
            &self.configsvn,
            &self.reserved4,
            &self.isvfamilyid,
            &self.report_data,
        ];
        let mut rest = out.as_mut_slice();
        for part in parts {
            // The parts add up to the array's size (asserted at compile
            // time), so `split_at_mut_checked` always succeeds.
            if let Some((head, tail)) = core::mem::take(&mut rest).split_at_mut_checked(part.len())
            {
                head.copy_from_slice(part);
                rest = tail;
            }
        }
        out
    }
}

/// Offsets of the variable-position parts of a parsed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Length of header and body: where the signature data length is.
    pub(super) signed_len: usize,
    /// Where the outer certification data header is (versions 4 and 5).
    pub(super) outer_cert_data: Option<usize>,
    /// Where the QE report is.
    pub(super) qe_report: usize,
    /// The QE authentication data (after its `u16` size).
    pub(super) qe_auth_data: Range<usize>,
    /// The PCK certificate chain (after its type and size).
    pub(super) pck_cert_chain: Range<usize>,
}

/// A parsed ECDSA quote. Holding one says nothing about whether it is
/// genuine; only the verifier's proof types say that.
#[derive(Clone, PartialEq, Eq)]
pub struct Quote {
    pub(super) bytes: Vec<u8>,
    pub(super) header: QuoteHeader,
    pub(super) body_descriptor: Option<BodyDescriptor>,
    pub(super) body: QuoteBody,
    pub(super) signature_data_len: u32,
    pub(super) signature: [u8; ECDSA_P256_SIGNATURE_SIZE],
    pub(super) attestation_key: [u8; ECDSA_P256_KEY_SIZE],
    pub(super) certification_data_type: u16,
    pub(super) qe_report: EnclaveReport,
    pub(super) qe_report_signature: [u8; ECDSA_P256_SIGNATURE_SIZE],
    pub(super) layout: Layout,
}

/// What the QE report certification data holds.
struct QeReportCertification {
    qe_report_at: usize,
    qe_report: EnclaveReport,
    qe_report_signature: [u8; ECDSA_P256_SIGNATURE_SIZE],
    qe_auth_data: Range<usize>,
    pck_cert_chain: Range<usize>,
}

/// QE report, its signature, QE authentication data and the PCK
/// certification data, which must use up `r`.
fn read_qe_report_certification(
    r: &mut Reader<'_>,
    container: &'static str,
) -> Result<QeReportCertification, ParseError> {
    let qe_report_at = r.offset();
    let qe_report = EnclaveReport {
        raw: RawEnclaveReport::read(r, "QE report")?,
    };
    let qe_report_signature = r.array("QE report signature")?;
    let auth_len = r.u16_le("QE authentication data size")?;
    let qe_auth_data = r
        .counted(u64::from(auth_len), "QE authentication data")
        .map_err(length_out_of_bounds)?
        .range();
    let found = r.u16_le("PCK certification data type")?;
    if found != CERT_DATA_PCK_CERT_CHAIN {
        return Err(ParseError::UnexpectedCertificationDataType {
            what: container,
            expected: CERT_DATA_PCK_CERT_CHAIN,
            found,
        });
    }
    let chain_len = r.u32_le("PCK certification data size")?;
    let pck_cert_chain = r
        .counted(u64::from(chain_len), "PCK certificate chain")
        .map_err(length_out_of_bounds)?
        .range();
    Ok(QeReportCertification {
        qe_report_at,
        qe_report,
        qe_report_signature,
        qe_auth_data,
        pck_cert_chain,
    })
}

impl Quote {
    /// Parse a quote from untrusted bytes that hold exactly one quote:
    /// anything after its signature data is [`ParseError::TrailingBytes`].
    pub fn parse(bytes: &[u8]) -> Result<Quote, ParseError> {
        let (quote, rest) = Quote::parse_prefix(bytes)?;
        if rest.is_empty() {
            Ok(quote)
        } else {
            Err(ParseError::TrailingBytes {
                quote_len: quote.bytes.len(),
                trailing: rest.len(),
            })
        }
    }

    /// Parse the quote at the start of `bytes` and return what follows its
    /// signature data. Quote buffers from some quote generation paths are
    /// padded (with zeros, typically) to a fixed size; whether the rest may
    /// be accepted is the caller's decision.
    pub fn parse_prefix(bytes: &[u8]) -> Result<(Quote, &[u8]), ParseError> {
        let mut r = Reader::new(bytes);
        let raw_header = RawHeader::read(&mut r)?;
        let version = u16::from_le_bytes(raw_header.version);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ParseError::UnsupportedVersion(version));
        }
        let key_type = u16::from_le_bytes(raw_header.att_key_type);
        if key_type != ATT_KEY_TYPE_ECDSA_P256 {
            return Err(ParseError::UnsupportedAttestationKeyType(key_type));
        }
        let tee_type = u32::from_le_bytes(raw_header.tee_type);
        let tee = match (version, tee_type) {
            (_, TEE_TYPE_SGX) => TeeType::Sgx,
            (4 | 5, TEE_TYPE_TDX) => TeeType::Tdx,
            _ => return Err(ParseError::UnsupportedTeeType { version, tee_type }),
        };
        let header = QuoteHeader {
            raw: raw_header,
            tee,
        };

        let (body_descriptor, body) = if version == 5 {
            let d = RawBodyDescriptor::read(&mut r)?;
            let body_type = u16::from_le_bytes(d.body_type);
            let body_size = u32::from_le_bytes(d.body_size);
            let (body_tee, expected) = match body_type {
                BODY_TYPE_SGX => (TeeType::Sgx, ENCLAVE_REPORT_SIZE),
                BODY_TYPE_TD10 => (TeeType::Tdx, TD10_BODY_SIZE),
                BODY_TYPE_TD15 => (TeeType::Tdx, TD15_BODY_SIZE),
                other => return Err(ParseError::UnsupportedBodyType(other)),
            };
            if body_tee != tee {
                return Err(ParseError::BodyTypeMismatch {
                    tee_type,
                    body_type,
                });
            }
            if usize::try_from(body_size) != Ok(expected) {
                return Err(ParseError::BodySizeMismatch {
                    body_type,
                    expected,
                    declared: body_size,
                });
            }
            let body = match body_type {
                BODY_TYPE_SGX => QuoteBody::Sgx(EnclaveReport {
                    raw: RawEnclaveReport::read(&mut r, "SGX quote body")?,
                }),
                BODY_TYPE_TD10 => QuoteBody::Td(TdReport::Td10(RawTd10Body::read(&mut r)?)),
                _ => QuoteBody::Td(TdReport::Td15(RawTd15Body::read(&mut r)?)),
            };
            let descriptor = BodyDescriptor {
                body_type,
                body_size,
            };
            (Some(descriptor), body)
        } else {
            let body = match tee {
                TeeType::Sgx => QuoteBody::Sgx(EnclaveReport {
                    raw: RawEnclaveReport::read(&mut r, "SGX quote body")?,
                }),
                TeeType::Tdx => QuoteBody::Td(TdReport::Td10(RawTd10Body::read(&mut r)?)),
            };
            (None, body)
        };

        let signed_len = r.offset();
        let signature_data_len = r.u32_le("signature data length")?;
        let mut sd = r
            .counted(u64::from(signature_data_len), "signature data")
            .map_err(length_out_of_bounds)?;
        let signature = sd.array("quote signature")?;
        let attestation_key = sd.array("attestation key")?;
        let (certification_data_type, outer_cert_data, qe) = if version == 3 {
            let qe = read_qe_report_certification(&mut sd, "signature data")?;
            (CERT_DATA_PCK_CERT_CHAIN, None, qe)
        } else {
            let at = sd.offset();
            let found = sd.u16_le("certification data type")?;
            if found != CERT_DATA_QE_REPORT {
                return Err(ParseError::UnexpectedCertificationDataType {
                    what: "signature data",
                    expected: CERT_DATA_QE_REPORT,
                    found,
                });
            }
            let size = sd.u32_le("certification data size")?;
            let mut cd = sd
                .counted(u64::from(size), "QE report certification data")
                .map_err(length_out_of_bounds)?;
            let qe = read_qe_report_certification(&mut cd, "QE report certification data")?;
            cd.finish("QE report certification data")?;
            (found, Some(at), qe)
        };
        sd.finish("signature data")?;

        let quote_len = r.offset();
        let Some((quote_bytes, rest)) = bytes.split_at_checked(quote_len) else {
            // Unreachable: the reader only advances over `bytes`.
            return Err(ParseError::Truncated {
                what: "quote",
                offset: 0,
                needed: quote_len,
                available: bytes.len(),
            });
        };
        let quote = Quote {
            bytes: quote_bytes.to_vec(),
            header,
            body_descriptor,
            body,
            signature_data_len,
            signature,
            attestation_key,
            certification_data_type,
            qe_report: qe.qe_report,
            qe_report_signature: qe.qe_report_signature,
            layout: Layout {
                signed_len,
                outer_cert_data,
                qe_report: qe.qe_report_at,
                qe_auth_data: qe.qe_auth_data,
                pck_cert_chain: qe.pck_cert_chain,
            },
        };
        Ok((quote, rest))
    }

    /// The quote's bytes (without anything that followed it).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The header.
    pub fn header(&self) -> &QuoteHeader {
        &self.header
    }
    /// Quote format version.
    pub fn version(&self) -> u16 {
        self.header.version()
    }
    /// The TEE the quote is for. A version 3 quote is always SGX.
    pub fn tee_type(&self) -> TeeType {
        self.header.tee_type()
    }
    /// The body descriptor (version 5 only).
    pub fn body_descriptor(&self) -> Option<BodyDescriptor> {
        self.body_descriptor
    }
    /// The body.
    pub fn body(&self) -> &QuoteBody {
        &self.body
    }
    /// The TD report, for a TDX quote.
    pub fn td_report(&self) -> Option<&TdReport> {
        match &self.body {
            QuoteBody::Td(td) => Some(td),
            QuoteBody::Sgx(_) => None,
        }
    }
    /// The enclave report, for an SGX quote.
    pub fn enclave_report(&self) -> Option<&EnclaveReport> {
        match &self.body {
            QuoteBody::Sgx(e) => Some(e),
            QuoteBody::Td(_) => None,
        }
    }
    /// The report data of the body, whichever TEE it is.
    pub fn report_data(&self) -> &[u8; 64] {
        match &self.body {
            QuoteBody::Td(td) => td.report_data(),
            QuoteBody::Sgx(e) => e.report_data(),
        }
    }
    /// The bytes the quote signature covers: header, body descriptor (v5)
    /// and body; everything before the signature data length.
    pub fn signed_bytes(&self) -> &[u8] {
        self.bytes.get(..self.layout.signed_len).unwrap_or_default()
    }
    /// The declared length of the signature data.
    pub fn signature_data_len(&self) -> u32 {
        self.signature_data_len
    }
    /// ECDSA P-256 signature over [`Quote::signed_bytes`] by the attestation
    /// key: `r ‖ s`, 32 bytes each, big-endian.
    pub fn signature(&self) -> &[u8; ECDSA_P256_SIGNATURE_SIZE] {
        &self.signature
    }
    /// The attestation public key: `x ‖ y`, 32 bytes each, big-endian (an
    /// uncompressed SEC1 point without its `0x04` prefix).
    pub fn attestation_key(&self) -> &[u8; ECDSA_P256_KEY_SIZE] {
        &self.attestation_key
    }
    /// Type of the certification data after the attestation key: 6 (QE
    /// report certification data) in versions 4 and 5; in version 3, where
    /// the QE report comes first, the type of the certification data after
    /// it, 5 (PCK certificate chain).
    pub fn certification_data_type(&self) -> u16 {
        self.certification_data_type
    }
    /// The Quoting Enclave's report.
    pub fn qe_report(&self) -> &EnclaveReport {
        &self.qe_report
    }
    /// The exact 384 bytes of the QE report, which the PCK key signs.
    pub fn qe_report_bytes(&self) -> &[u8] {
        let start = self.layout.qe_report;
        self.bytes
            .get(start..start + ENCLAVE_REPORT_SIZE)
            .unwrap_or_default()
    }
    /// ECDSA P-256 signature over [`Quote::qe_report_bytes`] by the PCK key:
    /// `r ‖ s`, big-endian.
    pub fn qe_report_signature(&self) -> &[u8; ECDSA_P256_SIGNATURE_SIZE] {
        &self.qe_report_signature
    }
    /// The QE authentication data. The QE report's report data starts with
    /// SHA-256(attestation key ‖ QE authentication data).
    pub fn qe_auth_data(&self) -> &[u8] {
        self.bytes
            .get(self.layout.qe_auth_data.clone())
            .unwrap_or_default()
    }
    /// The PCK certificate chain as the quote carries it: PEM certificates,
    /// leaf (PCK) first, then the PCK platform or processor CA, then the
    /// root CA. Often followed by a NUL byte.
    pub fn pck_cert_chain_pem(&self) -> &[u8] {
        self.bytes
            .get(self.layout.pck_cert_chain.clone())
            .unwrap_or_default()
    }
}

impl fmt::Debug for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Quote");
        d.field("version", &self.version())
            .field("tee_type", &self.tee_type());
        match &self.body {
            QuoteBody::Td(td) => d.field("mrtd", &hex::encode(td.mrtd())).field(
                "td_attributes",
                &format_args!("{:#018x}", td.td_attributes().0),
            ),
            QuoteBody::Sgx(e) => d.field("mrenclave", &hex::encode(e.mrenclave())),
        };
        d.field("report_data", &hex::encode(self.report_data()))
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}
