//! Intel TDX (and SGX) DCAP quotes, and the SGX extensions of PCK certificates.
//!
//! Owns the byte layout of ECDSA quotes as the Intel Quoting Enclave writes
//! them — header, body (TD report or SGX enclave report), and the signature
//! data with its certification data — and the decoding of the few packed
//! values in them (TD attributes, TEE TCB SVN). It also decodes the SGX
//! extensions that Intel puts in every PCK leaf certificate (FMSPC, PCE-ID,
//! TCB). It does **not** decide whether a quote is genuine: signatures, the
//! PCK chain, the QE identity and TCB levels live in `cocoon-verifier`. No
//! cryptography, no I/O, no X.509 parsing here: the PEM chain is handed out as
//! bytes, and the SGX extension is decoded from the `extnValue` bytes the
//! caller took out of the certificate.
//!
//! Layout source: *Intel TDX DCAP Quoting Library API* (and, for version 3
//! quotes, *Intel SGX ECDSA Quote Library API*), appendix "Quote Format":
//! tables "Quote Header", "TD Quote Body" (version 4), "TD Quote Body
//! Descriptor" and "TD Quote Body v1.5" (version 5), "Enclave Report Body",
//! "ECDSA 256-bit Quote Signature Data Structure", "QE Certification Data"
//! and "QE Report Certification Data". The enclave report's named reserved
//! areas (ISVEXTPRODID, CONFIGID, CONFIGSVN, ISVFAMILYID) follow the SGX
//! `REPORT` structure of the *Intel 64 and IA-32 Architectures Software
//! Developer's Manual*, Vol. 3D. TD attribute bits: *Intel TDX Module ABI
//! Specification*, "TD Attributes" (`ATTRIBUTES` in `TD_PARAMS`). PCK
//! certificate extensions: *Intel SGX PCK Certificate and Certificate
//! Revocation List Profile Specification*, "SGX Extensions".
//!
//! # The wire, in prose
//!
//! Every integer is little-endian. A quote is a 48-byte header, then the
//! body: for version 3 (SGX) and version 4 a body whose kind follows from the
//! header's TEE type (a 384-byte enclave report for SGX, a 584-byte TD 1.0
//! report for TDX); for version 5 a 6-byte descriptor (`u16` body type, `u32`
//! body size) and then the body it describes (type 1 SGX, 2 TD 1.0, 3 TD 1.5
//! of 648 bytes). The quote signature covers exactly the header and the body
//! ([`Quote::signed_bytes`]). Then a `u32` length and that many bytes of
//! signature data: the ECDSA P-256 signature (`r ‖ s`, 32 bytes each,
//! big-endian), the raw attestation public key (`x ‖ y`), and
//!
//! * version 3: the QE report (384), its signature (64), the QE
//!   authentication data (`u16` size and bytes) and certification data
//!   (`u16` type, `u32` size, bytes) of type 5, the PCK certificate chain;
//! * versions 4 and 5: certification data of type 6 (QE report certification
//!   data) holding those same four parts.
//!
//! Every declared length must fit its container exactly: a container with
//! bytes left over is refused, and so is anything after the quote
//! ([`Quote::parse`]); [`Quote::parse_prefix`] hands the rest back instead,
//! for quote buffers that come zero-padded.

use core::fmt;
use core::mem::{offset_of, size_of};
use core::ops::Range;

/// Size in bytes of the quote header.
pub const HEADER_SIZE: usize = 48;
/// Size in bytes of the version 5 body descriptor.
pub const BODY_DESCRIPTOR_SIZE: usize = 6;
/// Size in bytes of an SGX enclave report (the SGX quote body and the QE report).
pub const ENCLAVE_REPORT_SIZE: usize = 384;
/// Size in bytes of a TD 1.0 quote body.
pub const TD10_BODY_SIZE: usize = 584;
/// Size in bytes of a TD 1.5 quote body.
pub const TD15_BODY_SIZE: usize = 648;
/// Size in bytes of an ECDSA P-256 signature (`r ‖ s`).
pub const ECDSA_P256_SIGNATURE_SIZE: usize = 64;
/// Size in bytes of a raw P-256 public key (`x ‖ y`, no SEC1 prefix).
pub const ECDSA_P256_KEY_SIZE: usize = 64;

/// Quote versions this module parses: 3 (SGX only), 4 and 5.
pub const SUPPORTED_VERSIONS: [u16; 3] = [3, 4, 5];
/// Attestation key type 2: ECDSA-256-with-P-256 curve, the only one in use.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TEE type of an SGX quote.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Version 5 body type: SGX enclave report.
pub const BODY_TYPE_SGX: u16 = 1;
/// Version 5 body type: TD report for TDX 1.0.
pub const BODY_TYPE_TD10: u16 = 2;
/// Version 5 body type: TD report for TDX 1.5.
pub const BODY_TYPE_TD15: u16 = 3;
/// Certification data type 5: the PCK leaf certificate, its issuing CA and
/// the root CA, PEM, leaf first.
pub const CERT_DATA_PCK_CERT_CHAIN: u16 = 5;
/// Certification data type 6: QE report certification data (QE report, its
/// signature, QE authentication data and the PCK certification data).
pub const CERT_DATA_QE_REPORT: u16 = 6;
/// The QE vendor ID of Intel's quoting enclaves.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// The quote header ("Quote Header" table). Every field is a byte array, so
/// the struct has alignment 1 and no padding; size and offsets are checked at
/// compile time below.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// 0: quote format version (3, 4 or 5).
    pub version: [u8; 2],
    /// 2: attestation key type (2 = ECDSA-256-with-P-256).
    pub att_key_type: [u8; 2],
    /// 4: TEE type (0x00 SGX, 0x81 TDX); reserved (zero) in version 3.
    pub tee_type: [u8; 4],
    /// 8: QE SVN in version 3. Versions 4 and 5 reserve these bytes (Intel's
    /// `sgx_quote4_header_t` calls bytes 8..12 `reserved`); the TD QE's SVN
    /// is in the QE report.
    pub qe_svn: [u8; 2],
    /// 10: PCE SVN in version 3; reserved from version 4 on, as `qe_svn`.
    pub pce_svn: [u8; 2],
    /// 12: QE vendor ID ([`INTEL_QE_VENDOR_ID`] for Intel's QE).
    pub qe_vendor_id: [u8; 16],
    /// 28: custom data of the attestation key owner (the platform's QE ID
    /// for Intel's QE).
    pub user_data: [u8; 20],
}

/// The version 5 "TD Quote Body Descriptor".
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBodyDescriptor {
    /// 0: body type (1 SGX, 2 TD 1.0, 3 TD 1.5).
    pub body_type: [u8; 2],
    /// 2: body size in bytes.
    pub body_size: [u8; 4],
}

/// The TD 1.0 report body ("TD Quote Body" table; Intel's
/// `sgx_report2_body_t`), the body of every TDX version 4 quote.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTd10Body {
    /// 0: TEE TCB SVN, see [`TeeTcbSvn`].
    pub tee_tcb_svn: [u8; 16],
    /// 16: measurement of the TDX module (SHA-384).
    pub mrseam: [u8; 48],
    /// 64: measurement of the TDX module's signer; zero for Intel's module.
    pub mrsignerseam: [u8; 48],
    /// 112: TDX module attributes; zero for TDX 1.0 and 1.5.
    pub seam_attributes: [u8; 8],
    /// 120: TD attributes, see [`TdAttributes`].
    pub td_attributes: [u8; 8],
    /// 128: XSAVE feature set enabled for the TD (XFAM).
    pub xfam: [u8; 8],
    /// 136: measurement of the TD's initial contents (MRTD, SHA-384).
    pub mrtd: [u8; 48],
    /// 184: software-defined ID of the TD's non-owner configuration.
    pub mrconfigid: [u8; 48],
    /// 232: software-defined ID of the TD's owner.
    pub mrowner: [u8; 48],
    /// 280: software-defined ID of the owner-defined configuration.
    pub mrownerconfig: [u8; 48],
    /// 328: runtime-extendable measurement register 0 (firmware).
    pub rtmr0: [u8; 48],
    /// 376: RTMR 1 (OS loader and kernel).
    pub rtmr1: [u8; 48],
    /// 424: RTMR 2 (OS and applications).
    pub rtmr2: [u8; 48],
    /// 472: RTMR 3 (reserved for special usage).
    pub rtmr3: [u8; 48],
    /// 520: data the TD bound into the report.
    pub report_data: [u8; 64],
}

/// The TD 1.5 report body ("TD Quote Body v1.5"; Intel's
/// `sgx_report2_body_v1_5_t`): the TD 1.0 body followed by two fields.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTd15Body {
    /// 0: the TD 1.0 fields, unchanged.
    pub td10: RawTd10Body,
    /// 584: TEE TCB SVN of the TDX module the TD was migrated or
    /// TD-preserving-updated from (equals `tee_tcb_svn` otherwise).
    pub tee_tcb_svn_2: [u8; 16],
    /// 600: measurement of the service TD bound to this TD (zero if none).
    pub mrservicetd: [u8; 48],
}

/// The SGX enclave report ("Enclave Report Body"; SDM Vol. 3D `REPORT`):
/// the body of an SGX quote and the Quoting Enclave's own report.
#[repr(C)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnclaveReport {
    /// 0: security version of the CPU.
    pub cpusvn: [u8; 16],
    /// 16: SSA frame extended feature set (MISCSELECT).
    pub miscselect: [u8; 4],
    /// 20: reserved.
    pub reserved1: [u8; 12],
    /// 32: ISV-assigned extended product ID (KSS).
    pub isvextprodid: [u8; 16],
    /// 48: enclave attributes: flags (8 bytes) then XFRM (8 bytes).
    pub attributes: [u8; 16],
    /// 64: measurement of the enclave (SHA-256).
    pub mrenclave: [u8; 32],
    /// 96: reserved.
    pub reserved2: [u8; 32],
    /// 128: hash of the enclave signer's public key.
    pub mrsigner: [u8; 32],
    /// 160: reserved.
    pub reserved3: [u8; 32],
    /// 192: configuration ID (KSS).
    pub configid: [u8; 64],
    /// 256: ISV product ID.
    pub isvprodid: [u8; 2],
    /// 258: ISV security version.
    pub isvsvn: [u8; 2],
    /// 260: configuration SVN (KSS).
    pub configsvn: [u8; 2],
    /// 262: reserved.
    pub reserved4: [u8; 42],
    /// 304: ISV-assigned family ID (KSS).
    pub isvfamilyid: [u8; 16],
    /// 320: data the enclave bound into the report.
    pub report_data: [u8; 64],
}

// Compile-time checks that the structs mirror the specification tables.
const _: () = {
    assert!(size_of::<RawHeader>() == HEADER_SIZE);
    assert!(offset_of!(RawHeader, att_key_type) == 2);
    assert!(offset_of!(RawHeader, tee_type) == 4);
    assert!(offset_of!(RawHeader, qe_svn) == 8);
    assert!(offset_of!(RawHeader, pce_svn) == 10);
    assert!(offset_of!(RawHeader, qe_vendor_id) == 12);
    assert!(offset_of!(RawHeader, user_data) == 28);

    assert!(size_of::<RawBodyDescriptor>() == BODY_DESCRIPTOR_SIZE);
    assert!(offset_of!(RawBodyDescriptor, body_size) == 2);

    assert!(size_of::<RawTd10Body>() == TD10_BODY_SIZE);
    assert!(offset_of!(RawTd10Body, mrseam) == 16);
    assert!(offset_of!(RawTd10Body, mrsignerseam) == 64);
    assert!(offset_of!(RawTd10Body, seam_attributes) == 112);
    assert!(offset_of!(RawTd10Body, td_attributes) == 120);
    assert!(offset_of!(RawTd10Body, xfam) == 128);
    assert!(offset_of!(RawTd10Body, mrtd) == 136);
    assert!(offset_of!(RawTd10Body, mrconfigid) == 184);
    assert!(offset_of!(RawTd10Body, mrowner) == 232);
    assert!(offset_of!(RawTd10Body, mrownerconfig) == 280);
    assert!(offset_of!(RawTd10Body, rtmr0) == 328);
    assert!(offset_of!(RawTd10Body, rtmr1) == 376);
    assert!(offset_of!(RawTd10Body, rtmr2) == 424);
    assert!(offset_of!(RawTd10Body, rtmr3) == 472);
    assert!(offset_of!(RawTd10Body, report_data) == 520);

    assert!(size_of::<RawTd15Body>() == TD15_BODY_SIZE);
    assert!(offset_of!(RawTd15Body, tee_tcb_svn_2) == TD10_BODY_SIZE);
    assert!(offset_of!(RawTd15Body, mrservicetd) == 600);

    assert!(size_of::<RawEnclaveReport>() == ENCLAVE_REPORT_SIZE);
    assert!(offset_of!(RawEnclaveReport, miscselect) == 16);
    assert!(offset_of!(RawEnclaveReport, isvextprodid) == 32);
    assert!(offset_of!(RawEnclaveReport, attributes) == 48);
    assert!(offset_of!(RawEnclaveReport, mrenclave) == 64);
    assert!(offset_of!(RawEnclaveReport, mrsigner) == 128);
    assert!(offset_of!(RawEnclaveReport, configid) == 192);
    assert!(offset_of!(RawEnclaveReport, isvprodid) == 256);
    assert!(offset_of!(RawEnclaveReport, isvsvn) == 258);
    assert!(offset_of!(RawEnclaveReport, configsvn) == 260);
    assert!(offset_of!(RawEnclaveReport, isvfamilyid) == 304);
    assert!(offset_of!(RawEnclaveReport, report_data) == 320);
};

/// Fields of [`RawHeader`]: (name, offset within the header, length).
/// Derived from the layout struct, so it cannot drift from it.
pub const HEADER_FIELDS: &[(&str, usize, usize)] = &[
    ("version", offset_of!(RawHeader, version), 2),
    ("att_key_type", offset_of!(RawHeader, att_key_type), 2),
    ("tee_type", offset_of!(RawHeader, tee_type), 4),
    ("qe_svn", offset_of!(RawHeader, qe_svn), 2),
    ("pce_svn", offset_of!(RawHeader, pce_svn), 2),
    ("qe_vendor_id", offset_of!(RawHeader, qe_vendor_id), 16),
    ("user_data", offset_of!(RawHeader, user_data), 20),
];

/// Fields of [`RawBodyDescriptor`]: (name, offset, length).
pub const BODY_DESCRIPTOR_FIELDS: &[(&str, usize, usize)] = &[
    ("body_type", offset_of!(RawBodyDescriptor, body_type), 2),
    ("body_size", offset_of!(RawBodyDescriptor, body_size), 4),
];

/// Fields of [`RawTd10Body`]: (name, offset within the body, length).
pub const TD10_BODY_FIELDS: &[(&str, usize, usize)] = &[
    ("tee_tcb_svn", offset_of!(RawTd10Body, tee_tcb_svn), 16),
    ("mrseam", offset_of!(RawTd10Body, mrseam), 48),
    ("mrsignerseam", offset_of!(RawTd10Body, mrsignerseam), 48),
    (
        "seam_attributes",
        offset_of!(RawTd10Body, seam_attributes),
        8,
    ),
    ("td_attributes", offset_of!(RawTd10Body, td_attributes), 8),
    ("xfam", offset_of!(RawTd10Body, xfam), 8),
    ("mrtd", offset_of!(RawTd10Body, mrtd), 48),
    ("mrconfigid", offset_of!(RawTd10Body, mrconfigid), 48),
    ("mrowner", offset_of!(RawTd10Body, mrowner), 48),
    ("mrownerconfig", offset_of!(RawTd10Body, mrownerconfig), 48),
    ("rtmr0", offset_of!(RawTd10Body, rtmr0), 48),
    ("rtmr1", offset_of!(RawTd10Body, rtmr1), 48),
    ("rtmr2", offset_of!(RawTd10Body, rtmr2), 48),
    ("rtmr3", offset_of!(RawTd10Body, rtmr3), 48),
    ("report_data", offset_of!(RawTd10Body, report_data), 64),
];

/// The fields [`RawTd15Body`] adds after the TD 1.0 ones: (name, offset
/// within the body, length).
pub const TD15_EXTRA_FIELDS: &[(&str, usize, usize)] = &[
    ("tee_tcb_svn_2", offset_of!(RawTd15Body, tee_tcb_svn_2), 16),
    ("mrservicetd", offset_of!(RawTd15Body, mrservicetd), 48),
];

/// Fields of [`RawEnclaveReport`]: (name, offset within the report, length).
pub const ENCLAVE_REPORT_FIELDS: &[(&str, usize, usize)] = &[
    ("cpusvn", offset_of!(RawEnclaveReport, cpusvn), 16),
    ("miscselect", offset_of!(RawEnclaveReport, miscselect), 4),
    ("reserved1", offset_of!(RawEnclaveReport, reserved1), 12),
    (
        "isvextprodid",
        offset_of!(RawEnclaveReport, isvextprodid),
        16,
    ),
    ("attributes", offset_of!(RawEnclaveReport, attributes), 16),
    ("mrenclave", offset_of!(RawEnclaveReport, mrenclave), 32),
    ("reserved2", offset_of!(RawEnclaveReport, reserved2), 32),
    ("mrsigner", offset_of!(RawEnclaveReport, mrsigner), 32),
    ("reserved3", offset_of!(RawEnclaveReport, reserved3), 32),
    ("configid", offset_of!(RawEnclaveReport, configid), 64),
    ("isvprodid", offset_of!(RawEnclaveReport, isvprodid), 2),
    ("isvsvn", offset_of!(RawEnclaveReport, isvsvn), 2),
    ("configsvn", offset_of!(RawEnclaveReport, configsvn), 2),
    ("reserved4", offset_of!(RawEnclaveReport, reserved4), 42),
    ("isvfamilyid", offset_of!(RawEnclaveReport, isvfamilyid), 16),
    ("report_data", offset_of!(RawEnclaveReport, report_data), 64),
];

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

/// A cursor over a length-delimited container that never panics: every read
/// is checked and fails with a [`ParseError`] naming what was being read.
struct Reader<'a> {
    rest: &'a [u8],
    /// Offset of `rest[0]` within the whole quote.
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            offset: 0,
        }
    }

    fn truncated(&self, what: &'static str, needed: usize) -> ParseError {
        ParseError::Truncated {
            what,
            offset: self.offset,
            needed,
            available: self.rest.len(),
        }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(self.truncated(what, n));
        };
        self.rest = tail;
        self.offset += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ParseError> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.truncated(what, N));
        };
        self.rest = tail;
        self.offset += N;
        Ok(*head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// The next `n` bytes as a reader of their own, for a fixed-size
    /// structure: too few bytes is [`ParseError::Truncated`].
    fn fixed(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, ParseError> {
        let offset = self.offset;
        let rest = self.bytes(n, what)?;
        Ok(Reader { rest, offset })
    }

    /// The next `declared` bytes, a length read from the input, as a reader
    /// of their own: too few bytes is [`ParseError::LengthOutOfBounds`].
    fn counted(&mut self, declared: u64, what: &'static str) -> Result<Reader<'a>, ParseError> {
        let offset = self.offset;
        let out_of_bounds = ParseError::LengthOutOfBounds {
            what,
            offset,
            declared,
            available: self.rest.len(),
        };
        let n = usize::try_from(declared).map_err(|_| out_of_bounds.clone())?;
        let Some((rest, tail)) = self.rest.split_at_checked(n) else {
            return Err(out_of_bounds);
        };
        self.rest = tail;
        self.offset += n;
        Ok(Reader { rest, offset })
    }

    /// The container must be used up.
    fn finish(self, what: &'static str) -> Result<(), ParseError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ParseError::UnusedBytes {
                what,
                offset: self.offset,
                count: self.rest.len(),
            })
        }
    }

    /// The range (within the quote) of the bytes this reader still holds.
    fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.rest.len()
    }
}

impl RawHeader {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "quote header";
        let mut s = r.fixed(HEADER_SIZE, WHAT)?;
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
        let mut s = r.fixed(BODY_DESCRIPTOR_SIZE, WHAT)?;
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
        let mut s = r.fixed(TD10_BODY_SIZE, WHAT)?;
        let raw = Self::read_fields(&mut s, WHAT)?;
        s.finish(WHAT)?;
        Ok(raw)
    }
}

impl RawTd15Body {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        const WHAT: &str = "TD 1.5 quote body";
        let mut s = r.fixed(TD15_BODY_SIZE, WHAT)?;
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
        let mut s = r.fixed(ENCLAVE_REPORT_SIZE, what)?;
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

    fn to_bytes(&self) -> [u8; ENCLAVE_REPORT_SIZE] {
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

/// The trusted execution environment a quote is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeType {
    /// An SGX enclave (TEE type 0x00).
    Sgx,
    /// A TDX trust domain (TEE type 0x81).
    Tdx,
}

impl fmt::Display for TeeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TeeType::Sgx => "SGX",
            TeeType::Tdx => "TDX",
        })
    }
}

/// A parsed quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    raw: RawHeader,
    tee: TeeType,
}

impl QuoteHeader {
    /// The raw layout.
    pub fn raw(&self) -> &RawHeader {
        &self.raw
    }
    /// Quote format version (3, 4 or 5).
    pub fn version(&self) -> u16 {
        u16::from_le_bytes(self.raw.version)
    }
    /// Attestation key type (always [`ATT_KEY_TYPE_ECDSA_P256`] once parsed).
    pub fn att_key_type(&self) -> u16 {
        u16::from_le_bytes(self.raw.att_key_type)
    }
    /// The TEE type field as it was read.
    pub fn tee_type_raw(&self) -> u32 {
        u32::from_le_bytes(self.raw.tee_type)
    }
    /// The TEE the quote is for.
    pub fn tee_type(&self) -> TeeType {
        self.tee
    }
    /// QE SVN (version 3; reserved, normally zero, in versions 4 and 5).
    pub fn qe_svn(&self) -> u16 {
        u16::from_le_bytes(self.raw.qe_svn)
    }
    /// PCE SVN (version 3; reserved, normally zero, in versions 4 and 5).
    pub fn pce_svn(&self) -> u16 {
        u16::from_le_bytes(self.raw.pce_svn)
    }
    /// QE vendor ID.
    pub fn qe_vendor_id(&self) -> &[u8; 16] {
        &self.raw.qe_vendor_id
    }
    /// Attestation key owner's data.
    pub fn user_data(&self) -> &[u8; 20] {
        &self.raw.user_data
    }
}

/// The version 5 body descriptor, as read (and checked against the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDescriptor {
    /// Body type ([`BODY_TYPE_SGX`], [`BODY_TYPE_TD10`] or [`BODY_TYPE_TD15`]).
    pub body_type: u16,
    /// Body size in bytes.
    pub body_size: u32,
}

/// TD attributes (TDX Module ABI, "TD Attributes"): how the TD was
/// configured at creation. Bits 7:0 are the TD-under-debug (TUD) group; any
/// of them set means the host can inspect the TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TdAttributes(pub u64);

impl TdAttributes {
    /// Bit 0: the TD runs in debug mode; its memory and CPU state are not
    /// protected from the host.
    pub const DEBUG: u64 = 1 << 0;
    /// Bits 7:0: the TD-under-debug group (bit 0 DEBUG, bits 7:1 reserved).
    pub const TUD_MASK: u64 = 0xFF;
    /// Bit 28: EPT violations on pending private pages are not converted to
    /// #VE in the TD.
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
    /// Bit 29: the TD may be migrated (TDX 1.5).
    pub const MIGRATABLE: u64 = 1 << 29;
    /// Bit 30: the TD may use supervisor protection keys.
    pub const PKS: u64 = 1 << 30;
    /// Bit 31: the TD may use Key Locker.
    pub const KL: u64 = 1 << 31;
    /// Bit 63: the TD may use the host's performance monitoring.
    pub const PERFMON: u64 = 1 << 63;
    /// Every bit this type names.
    pub const KNOWN: u64 = Self::TUD_MASK
        | Self::SEPT_VE_DISABLE
        | Self::MIGRATABLE
        | Self::PKS
        | Self::KL
        | Self::PERFMON;

    /// Decode the 8 little-endian bytes of a TD report's `td_attributes`.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        TdAttributes(u64::from_le_bytes(b))
    }
    /// Bit 0: the TD is debuggable.
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG != 0
    }
    /// Bits 7:0, the TD-under-debug group.
    pub fn tud(self) -> u8 {
        self.0.to_le_bytes()[0]
    }
    /// Bit 28: SEPT #VE disabled.
    pub fn sept_ve_disable(self) -> bool {
        self.0 & Self::SEPT_VE_DISABLE != 0
    }
    /// Bit 29: migratable.
    pub fn migratable(self) -> bool {
        self.0 & Self::MIGRATABLE != 0
    }
    /// Bit 30: supervisor protection keys allowed.
    pub fn pks(self) -> bool {
        self.0 & Self::PKS != 0
    }
    /// Bit 31: Key Locker allowed.
    pub fn kl(self) -> bool {
        self.0 & Self::KL != 0
    }
    /// Bit 63: performance monitoring allowed.
    pub fn perfmon(self) -> bool {
        self.0 & Self::PERFMON != 0
    }
    /// Set bits this type does not name (reserved in the ABI revisions it
    /// follows, or defined by a later one).
    pub fn unknown_bits(self) -> u64 {
        self.0 & !Self::KNOWN
    }
}

/// The TEE TCB SVN of a TD report: one security version per TCB component
/// of the TDX module, compared component by component with the
/// `tdxtcbcomponents` of Intel's TCB info. Bytes 0 and 1 identify the TDX
/// module; when the TCB info lists TDX module identities, Intel's quote
/// verification judges them against those instead (the verifier's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TeeTcbSvn(pub [u8; 16]);

impl TeeTcbSvn {
    /// All sixteen components.
    pub fn components(&self) -> &[u8; 16] {
        &self.0
    }
    /// Byte 0: the TDX module's minor SVN, compared with the `isvsvn` of the
    /// module identity in Intel's TCB info.
    pub fn tdx_module_minor_svn(&self) -> u8 {
        self.0[0]
    }
    /// Byte 1: the TDX module's major SVN; Intel's TCB info names the module
    /// identity after it (`TDX_01`, `TDX_03`, ...).
    pub fn tdx_module_major_svn(&self) -> u8 {
        self.0[1]
    }
}

/// A TD report from a TDX quote body, TD 1.0 or TD 1.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdReport {
    /// TD 1.0 layout (every version 4 TDX quote, version 5 body type 2).
    Td10(RawTd10Body),
    /// TD 1.5 layout (version 5 body type 3).
    Td15(RawTd15Body),
}

impl TdReport {
    /// The TD 1.0 fields, which both layouts start with.
    pub fn td10(&self) -> &RawTd10Body {
        match self {
            TdReport::Td10(b) => b,
            TdReport::Td15(b) => &b.td10,
        }
    }
    /// TEE TCB SVN.
    pub fn tee_tcb_svn(&self) -> TeeTcbSvn {
        TeeTcbSvn(self.td10().tee_tcb_svn)
    }
    /// Measurement of the TDX module.
    pub fn mrseam(&self) -> &[u8; 48] {
        &self.td10().mrseam
    }
    /// Measurement of the TDX module's signer (zero for Intel's).
    pub fn mrsignerseam(&self) -> &[u8; 48] {
        &self.td10().mrsignerseam
    }
    /// TDX module attributes.
    pub fn seam_attributes(&self) -> &[u8; 8] {
        &self.td10().seam_attributes
    }
    /// TD attributes.
    pub fn td_attributes(&self) -> TdAttributes {
        TdAttributes::from_bytes(self.td10().td_attributes)
    }
    /// XFAM, as a little-endian integer.
    pub fn xfam(&self) -> u64 {
        u64::from_le_bytes(self.td10().xfam)
    }
    /// MRTD: measurement of the TD's initial contents.
    pub fn mrtd(&self) -> &[u8; 48] {
        &self.td10().mrtd
    }
    /// MRCONFIGID.
    pub fn mrconfigid(&self) -> &[u8; 48] {
        &self.td10().mrconfigid
    }
    /// MROWNER.
    pub fn mrowner(&self) -> &[u8; 48] {
        &self.td10().mrowner
    }
    /// MROWNERCONFIG.
    pub fn mrownerconfig(&self) -> &[u8; 48] {
        &self.td10().mrownerconfig
    }
    /// RTMR 0 to 3, in order.
    pub fn rtmrs(&self) -> [&[u8; 48]; 4] {
        let b = self.td10();
        [&b.rtmr0, &b.rtmr1, &b.rtmr2, &b.rtmr3]
    }
    /// Report data.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.td10().report_data
    }
    /// TEE TCB SVN 2 (TD 1.5 only).
    pub fn tee_tcb_svn_2(&self) -> Option<TeeTcbSvn> {
        match self {
            TdReport::Td10(_) => None,
            TdReport::Td15(b) => Some(TeeTcbSvn(b.tee_tcb_svn_2)),
        }
    }
    /// MRSERVICETD (TD 1.5 only).
    pub fn mrservicetd(&self) -> Option<&[u8; 48]> {
        match self {
            TdReport::Td10(_) => None,
            TdReport::Td15(b) => Some(&b.mrservicetd),
        }
    }
}

/// An SGX enclave report: the body of an SGX quote, or the Quoting
/// Enclave's report in the signature data (whose exact bytes the PCK key
/// signs, see [`EnclaveReport::as_bytes`]).
#[derive(Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    raw: RawEnclaveReport,
}

impl EnclaveReport {
    /// The raw layout.
    pub fn raw(&self) -> &RawEnclaveReport {
        &self.raw
    }
    /// The 384 bytes as they were in the quote.
    pub fn as_bytes(&self) -> [u8; ENCLAVE_REPORT_SIZE] {
        self.raw.to_bytes()
    }
    /// CPU SVN.
    pub fn cpusvn(&self) -> &[u8; 16] {
        &self.raw.cpusvn
    }
    /// MISCSELECT.
    pub fn miscselect(&self) -> u32 {
        u32::from_le_bytes(self.raw.miscselect)
    }
    /// Attributes, 16 bytes: flags then XFRM.
    pub fn attributes(&self) -> &[u8; 16] {
        &self.raw.attributes
    }
    /// Attribute flags (the first 8 bytes of `attributes`).
    pub fn attribute_flags(&self) -> u64 {
        let (flags, _) = self.raw.attributes.split_at(8);
        let mut b = [0u8; 8];
        b.copy_from_slice(flags);
        u64::from_le_bytes(b)
    }
    /// Attribute flag bit 1: the enclave is a debug enclave.
    pub fn debug(&self) -> bool {
        self.attribute_flags() & 0b10 != 0
    }
    /// MRENCLAVE.
    pub fn mrenclave(&self) -> &[u8; 32] {
        &self.raw.mrenclave
    }
    /// MRSIGNER.
    pub fn mrsigner(&self) -> &[u8; 32] {
        &self.raw.mrsigner
    }
    /// ISV product ID.
    pub fn isvprodid(&self) -> u16 {
        u16::from_le_bytes(self.raw.isvprodid)
    }
    /// ISV SVN.
    pub fn isvsvn(&self) -> u16 {
        u16::from_le_bytes(self.raw.isvsvn)
    }
    /// CONFIGID.
    pub fn configid(&self) -> &[u8; 64] {
        &self.raw.configid
    }
    /// CONFIGSVN.
    pub fn configsvn(&self) -> u16 {
        u16::from_le_bytes(self.raw.configsvn)
    }
    /// ISVEXTPRODID.
    pub fn isvextprodid(&self) -> &[u8; 16] {
        &self.raw.isvextprodid
    }
    /// ISVFAMILYID.
    pub fn isvfamilyid(&self) -> &[u8; 16] {
        &self.raw.isvfamilyid
    }
    /// Report data.
    pub fn report_data(&self) -> &[u8; 64] {
        &self.raw.report_data
    }
}

impl fmt::Debug for EnclaveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnclaveReport")
            .field("mrenclave", &hex::encode(self.mrenclave()))
            .field("mrsigner", &hex::encode(self.mrsigner()))
            .field("isvprodid", &self.isvprodid())
            .field("isvsvn", &self.isvsvn())
            .finish_non_exhaustive()
    }
}

/// The body of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a quote holds exactly one body; boxing the larger one saves nothing"
)]
pub enum QuoteBody {
    /// An SGX enclave report (TEE type SGX).
    Sgx(EnclaveReport),
    /// A TD report (TEE type TDX).
    Td(TdReport),
}

/// One named field of a parsed quote: where it is in the quote's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteField {
    /// The structure it belongs to: `header`, `body_descriptor`, `body`,
    /// `signature_data`, `certification_data`, `qe_report`,
    /// `qe_report_certification_data` or `pck_certification_data`.
    pub section: &'static str,
    /// The field's name (for `body` and `qe_report`, as in the layout
    /// tables [`TD10_BODY_FIELDS`], [`ENCLAVE_REPORT_FIELDS`], ...).
    pub name: &'static str,
    /// Offset of its first byte within the quote.
    pub offset: usize,
    /// Its length in bytes (zero for empty QE authentication data).
    pub len: usize,
}

impl QuoteField {
    /// The field's byte range within the quote.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

impl fmt::Display for QuoteField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} (offset {})", self.section, self.name, self.offset)
    }
}

/// Offsets of the variable-position parts of a parsed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// Length of header and body: where the signature data length is.
    signed_len: usize,
    /// Where the outer certification data header is (versions 4 and 5).
    outer_cert_data: Option<usize>,
    /// Where the QE report is.
    qe_report: usize,
    /// The QE authentication data (after its `u16` size).
    qe_auth_data: Range<usize>,
    /// The PCK certificate chain (after its type and size).
    pck_cert_chain: Range<usize>,
}

/// A parsed ECDSA quote. Holding one says nothing about whether it is
/// genuine; only the verifier's proof types say that.
#[derive(Clone, PartialEq, Eq)]
pub struct Quote {
    bytes: Vec<u8>,
    header: QuoteHeader,
    body_descriptor: Option<BodyDescriptor>,
    body: QuoteBody,
    signature_data_len: u32,
    signature: [u8; ECDSA_P256_SIGNATURE_SIZE],
    attestation_key: [u8; ECDSA_P256_KEY_SIZE],
    certification_data_type: u16,
    qe_report: EnclaveReport,
    qe_report_signature: [u8; ECDSA_P256_SIGNATURE_SIZE],
    layout: Layout,
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
    let qe_report_at = r.offset;
    let qe_report = EnclaveReport {
        raw: RawEnclaveReport::read(r, "QE report")?,
    };
    let qe_report_signature = r.array("QE report signature")?;
    let auth_len = r.u16("QE authentication data size")?;
    let qe_auth_data = r
        .counted(u64::from(auth_len), "QE authentication data")?
        .range();
    let found = r.u16("PCK certification data type")?;
    if found != CERT_DATA_PCK_CERT_CHAIN {
        return Err(ParseError::UnexpectedCertificationDataType {
            what: container,
            expected: CERT_DATA_PCK_CERT_CHAIN,
            found,
        });
    }
    let chain_len = r.u32("PCK certification data size")?;
    let pck_cert_chain = r
        .counted(u64::from(chain_len), "PCK certificate chain")?
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

        let signed_len = r.offset;
        let signature_data_len = r.u32("signature data length")?;
        let mut sd = r.counted(u64::from(signature_data_len), "signature data")?;
        let signature = sd.array("quote signature")?;
        let attestation_key = sd.array("attestation key")?;
        let (certification_data_type, outer_cert_data, qe) = if version == 3 {
            let qe = read_qe_report_certification(&mut sd, "signature data")?;
            (CERT_DATA_PCK_CERT_CHAIN, None, qe)
        } else {
            let at = sd.offset;
            let found = sd.u16("certification data type")?;
            if found != CERT_DATA_QE_REPORT {
                return Err(ParseError::UnexpectedCertificationDataType {
                    what: "signature data",
                    expected: CERT_DATA_QE_REPORT,
                    found,
                });
            }
            let size = sd.u32("certification data size")?;
            let mut cd = sd.counted(u64::from(size), "QE report certification data")?;
            let qe = read_qe_report_certification(&mut cd, "QE report certification data")?;
            cd.finish("QE report certification data")?;
            (found, Some(at), qe)
        };
        sd.finish("signature data")?;

        let quote_len = r.offset;
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

    /// Every named field with its position in [`Quote::as_bytes`], in order;
    /// together they tile the quote. For mutation tests and explanations.
    pub fn field_ranges(&self) -> Vec<QuoteField> {
        let mut out = Vec::new();
        let mut push_table = |section, base: usize, table: &[(&'static str, usize, usize)]| {
            for &(name, offset, len) in table {
                out.push(QuoteField {
                    section,
                    name,
                    offset: base + offset,
                    len,
                });
            }
        };
        push_table("header", 0, HEADER_FIELDS);
        let mut at = HEADER_SIZE;
        if self.body_descriptor.is_some() {
            push_table("body_descriptor", at, BODY_DESCRIPTOR_FIELDS);
            at += BODY_DESCRIPTOR_SIZE;
        }
        match &self.body {
            QuoteBody::Sgx(_) => push_table("body", at, ENCLAVE_REPORT_FIELDS),
            QuoteBody::Td(TdReport::Td10(_)) => push_table("body", at, TD10_BODY_FIELDS),
            QuoteBody::Td(TdReport::Td15(_)) => {
                push_table("body", at, TD10_BODY_FIELDS);
                push_table("body", at, TD15_EXTRA_FIELDS);
            }
        }
        let s = self.layout.signed_len;
        push_table(
            "signature_data",
            s,
            &[
                ("signature_data_len", 0, 4),
                ("quote_signature", 4, ECDSA_P256_SIGNATURE_SIZE),
                (
                    "attestation_key",
                    4 + ECDSA_P256_SIGNATURE_SIZE,
                    ECDSA_P256_KEY_SIZE,
                ),
            ],
        );
        if let Some(c) = self.layout.outer_cert_data {
            push_table(
                "certification_data",
                c,
                &[("cert_data_type", 0, 2), ("cert_data_size", 2, 4)],
            );
        }
        push_table("qe_report", self.layout.qe_report, ENCLAVE_REPORT_FIELDS);
        let auth = &self.layout.qe_auth_data;
        push_table(
            "qe_report_certification_data",
            self.layout.qe_report + ENCLAVE_REPORT_SIZE,
            &[
                ("qe_report_signature", 0, ECDSA_P256_SIGNATURE_SIZE),
                ("qe_auth_data_size", ECDSA_P256_SIGNATURE_SIZE, 2),
                ("qe_auth_data", ECDSA_P256_SIGNATURE_SIZE + 2, auth.len()),
            ],
        );
        push_table(
            "pck_certification_data",
            auth.end,
            &[
                ("pck_cert_data_type", 0, 2),
                ("pck_cert_data_size", 2, 4),
                ("pck_cert_chain", 6, self.layout.pck_cert_chain.len()),
            ],
        );
        out
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

// ---------------------------------------------------------------------------
// SGX extensions of the PCK certificate.

/// OID of the SGX extensions in PCK certificates.
pub const SGX_EXTENSIONS_OID: &str = "1.2.840.113741.1.13.1";

/// DER contents of [`SGX_EXTENSIONS_OID`]; each extension's OID is this
/// plus one arc, each TCB component's this plus `.2.<n>`.
const SGX_EXT_OID: [u8; 9] = [0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x01, 0x0D, 0x01];

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_ENUMERATED: u8 = 0x0A;
const TAG_SEQUENCE: u8 = 0x30;

/// Why the bytes of an SGX extensions value are not what the PCK
/// certificate profile defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PckExtensionsError {
    /// Not well-formed DER.
    #[error("malformed DER in {what} at offset {offset}: {reason}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Offset within the extension value.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An element of the wrong type.
    #[error("{what} at offset {offset}: expected DER tag {expected:#04x}, found {found:#04x}")]
    UnexpectedTag {
        /// What was being read.
        what: &'static str,
        /// Offset within the extension value.
        offset: usize,
        /// Tag the profile defines.
        expected: u8,
        /// Tag found.
        found: u8,
    },
    /// A fixed-size value of the wrong size.
    #[error("{what} is {found} bytes, expected {expected}")]
    WrongLength {
        /// The value.
        what: &'static str,
        /// Size the profile defines.
        expected: usize,
        /// Size found.
        found: usize,
    },
    /// An integer that is negative, not minimally encoded, or too large.
    #[error("{what} is not an integer in range: {reason}")]
    BadInteger {
        /// The value.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A required extension or TCB component is absent.
    #[error("SGX extension {0} is missing")]
    Missing(&'static str),
    /// An extension or TCB component appears twice.
    #[error("SGX extension {0} appears more than once")]
    Duplicate(&'static str),
}

/// A DER TLV reader over part of an extension value; never panics.
struct Der<'a> {
    rest: &'a [u8],
    /// Offset of `rest[0]` within the extension value.
    offset: usize,
}

impl<'a> Der<'a> {
    fn malformed(&self, what: &'static str, reason: &'static str) -> PckExtensionsError {
        PckExtensionsError::Malformed {
            what,
            offset: self.offset,
            reason,
        }
    }

    /// The next element: (tag, contents, a reader over the contents).
    fn next(&mut self, what: &'static str) -> Result<(u8, Der<'a>), PckExtensionsError> {
        let Some((&tag, after_tag)) = self.rest.split_first() else {
            return Err(self.malformed(what, "unexpected end"));
        };
        if tag & 0x1F == 0x1F {
            return Err(self.malformed(what, "multi-byte tags are not used here"));
        }
        let Some((&first, mut after_len)) = after_tag.split_first() else {
            return Err(self.malformed(what, "unexpected end in length"));
        };
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 {
                return Err(self.malformed(what, "indefinite length"));
            }
            if n > 4 {
                return Err(self.malformed(what, "length too large"));
            }
            let Some((len_bytes, tail)) = after_len.split_at_checked(n) else {
                return Err(self.malformed(what, "unexpected end in length"));
            };
            after_len = tail;
            if len_bytes.first() == Some(&0) {
                return Err(self.malformed(what, "length not minimally encoded"));
            }
            let len = len_bytes
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            if len < 0x80 {
                return Err(self.malformed(what, "length not minimally encoded"));
            }
            usize::try_from(len).map_err(|_| self.malformed(what, "length too large"))?
        };
        let header_len = self.rest.len() - after_len.len();
        let Some((contents, tail)) = after_len.split_at_checked(len) else {
            return Err(self.malformed(what, "length exceeds the enclosing element"));
        };
        let element = Der {
            rest: contents,
            offset: self.offset + header_len,
        };
        self.offset += header_len + len;
        self.rest = tail;
        Ok((tag, element))
    }

    /// The next element, which must have tag `expected`.
    fn expect(&mut self, expected: u8, what: &'static str) -> Result<Der<'a>, PckExtensionsError> {
        let offset = self.offset;
        let (found, element) = self.next(what)?;
        if found != expected {
            return Err(PckExtensionsError::UnexpectedTag {
                what,
                offset,
                expected,
                found,
            });
        }
        Ok(element)
    }

    fn finish(&self, what: &'static str) -> Result<(), PckExtensionsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(what, "unexpected data after the last element"))
        }
    }
}

/// An element's contents as a fixed-size OCTET STRING.
fn octets<const N: usize>(
    tag: u8,
    value: &Der<'_>,
    what: &'static str,
) -> Result<[u8; N], PckExtensionsError> {
    if tag != TAG_OCTET_STRING {
        return Err(PckExtensionsError::UnexpectedTag {
            what,
            offset: value.offset,
            expected: TAG_OCTET_STRING,
            found: tag,
        });
    }
    <[u8; N]>::try_from(value.rest).map_err(|_| PckExtensionsError::WrongLength {
        what,
        expected: N,
        found: value.rest.len(),
    })
}

/// An element's contents as a non-negative DER INTEGER (or ENUMERATED,
/// which is encoded the same way).
fn unsigned(
    tag: u8,
    expected_tag: u8,
    value: &Der<'_>,
    what: &'static str,
) -> Result<u64, PckExtensionsError> {
    if tag != expected_tag {
        return Err(PckExtensionsError::UnexpectedTag {
            what,
            offset: value.offset,
            expected: expected_tag,
            found: tag,
        });
    }
    let bad = |reason| PckExtensionsError::BadInteger { what, reason };
    let digits = match value.rest {
        [] => return Err(bad("empty encoding")),
        [first, ..] if first & 0x80 != 0 => return Err(bad("negative")),
        [0, second, ..] if second & 0x80 == 0 => return Err(bad("not minimally encoded")),
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    if digits.len() > 8 {
        return Err(bad("too large"));
    }
    Ok(digits.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// The arc after `prefix` when `oid` is `prefix` plus one arc below 128.
fn arc_below(oid: &[u8], prefix: &[u8]) -> Option<u8> {
    match oid.strip_prefix(prefix) {
        Some(&[arc]) if arc < 0x80 => Some(arc),
        _ => None,
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    name: &'static str,
) -> Result<(), PckExtensionsError> {
    if slot.is_some() {
        return Err(PckExtensionsError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// The SGX type of the platform a PCK certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SgxType {
    /// 0: Standard.
    Standard,
    /// 1: Scalable.
    Scalable,
    /// 2: Scalable with integrity.
    ScalableWithIntegrity,
    /// A value the profile does not define.
    Unknown(u64),
}

/// The SGX extensions (OID [`SGX_EXTENSIONS_OID`]) of a PCK certificate:
/// the platform's identity and the TCB level the certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckExtensions {
    /// PPID (`.1`): the platform provisioning ID, encrypted or not per the
    /// certificate's CA.
    pub ppid: [u8; 16],
    /// SGX TCB component SVNs 1 to 16 (`.2.1` to `.2.16`).
    pub sgx_tcb_comp_svn: [u8; 16],
    /// PCE SVN (`.2.17`).
    pub pcesvn: u16,
    /// CPU SVN (`.2.18`).
    pub cpusvn: [u8; 16],
    /// PCE-ID (`.3`).
    pub pceid: [u8; 2],
    /// FMSPC (`.4`): family, model, stepping and platform type; selects the
    /// TCB info.
    pub fmspc: [u8; 6],
    /// SGX type (`.5`).
    pub sgx_type: SgxType,
    /// Platform instance ID (`.6`), in certificates of the PCK Platform CA.
    pub platform_instance_id: Option<[u8; 16]>,
}

/// The TCB extension's components.
struct Tcb {
    comp_svn: [u8; 16],
    pcesvn: u16,
    cpusvn: [u8; 16],
}

impl PckExtensions {
    /// Decode the `extnValue` contents (the bytes inside the OCTET STRING)
    /// of a PCK certificate's SGX extensions. Extensions and TCB components
    /// this profile does not name (the Platform CA's Configuration, `.7`,
    /// for one) are checked for well-formed DER and otherwise skipped; the
    /// PPID, TCB (all 18 components), PCE-ID, FMSPC and SGX type are
    /// required, each exactly once.
    pub fn from_der(ext_value: &[u8]) -> Result<PckExtensions, PckExtensionsError> {
        let mut top = Der {
            rest: ext_value,
            offset: 0,
        };
        let mut items = top.expect(TAG_SEQUENCE, "SGX extensions")?;
        top.finish("SGX extensions")?;

        let mut ppid = None;
        let mut tcb = None;
        let mut pceid = None;
        let mut fmspc = None;
        let mut sgx_type = None;
        let mut platform_instance_id = None;
        while !items.rest.is_empty() {
            let mut item = items.expect(TAG_SEQUENCE, "SGX extension")?;
            let oid = item.expect(TAG_OID, "SGX extension OID")?;
            let (tag, value) = item.next("SGX extension value")?;
            item.finish("SGX extension")?;
            match arc_below(oid.rest, &SGX_EXT_OID) {
                Some(1) => set_once(&mut ppid, octets::<16>(tag, &value, "PPID")?, "PPID")?,
                Some(2) => set_once(&mut tcb, Self::tcb(tag, value)?, "TCB")?,
                Some(3) => set_once(&mut pceid, octets::<2>(tag, &value, "PCE-ID")?, "PCE-ID")?,
                Some(4) => set_once(&mut fmspc, octets::<6>(tag, &value, "FMSPC")?, "FMSPC")?,
                Some(5) => {
                    let v = unsigned(tag, TAG_ENUMERATED, &value, "SGX type")?;
                    let t = match v {
                        0 => SgxType::Standard,
                        1 => SgxType::Scalable,
                        2 => SgxType::ScalableWithIntegrity,
                        other => SgxType::Unknown(other),
                    };
                    set_once(&mut sgx_type, t, "SGX type")?;
                }
                Some(6) => set_once(
                    &mut platform_instance_id,
                    octets::<16>(tag, &value, "platform instance ID")?,
                    "platform instance ID",
                )?,
                _ => {}
            }
        }
        let tcb = tcb.ok_or(PckExtensionsError::Missing("TCB"))?;
        Ok(PckExtensions {
            ppid: ppid.ok_or(PckExtensionsError::Missing("PPID"))?,
            sgx_tcb_comp_svn: tcb.comp_svn,
            pcesvn: tcb.pcesvn,
            cpusvn: tcb.cpusvn,
            pceid: pceid.ok_or(PckExtensionsError::Missing("PCE-ID"))?,
            fmspc: fmspc.ok_or(PckExtensionsError::Missing("FMSPC"))?,
            sgx_type: sgx_type.ok_or(PckExtensionsError::Missing("SGX type"))?,
            platform_instance_id,
        })
    }

    /// The TCB extension: a SEQUENCE of (OID `.2.<n>`, value) pairs.
    fn tcb(tag: u8, mut value: Der<'_>) -> Result<Tcb, PckExtensionsError> {
        if tag != TAG_SEQUENCE {
            return Err(PckExtensionsError::UnexpectedTag {
                what: "TCB",
                offset: value.offset,
                expected: TAG_SEQUENCE,
                found: tag,
            });
        }
        const COMP_NAMES: [&str; 16] = [
            "TCB component 1",
            "TCB component 2",
            "TCB component 3",
            "TCB component 4",
            "TCB component 5",
            "TCB component 6",
            "TCB component 7",
            "TCB component 8",
            "TCB component 9",
            "TCB component 10",
            "TCB component 11",
            "TCB component 12",
            "TCB component 13",
            "TCB component 14",
            "TCB component 15",
            "TCB component 16",
        ];
        let mut tcb_prefix = [0u8; SGX_EXT_OID.len() + 1];
        if let Some((last, head)) = tcb_prefix.split_last_mut() {
            head.copy_from_slice(&SGX_EXT_OID);
            *last = 2;
        }
        let mut comps: [Option<u8>; 16] = [None; 16];
        let mut pcesvn = None;
        let mut cpusvn = None;
        while !value.rest.is_empty() {
            let mut entry = value.expect(TAG_SEQUENCE, "TCB component")?;
            let oid = entry.expect(TAG_OID, "TCB component OID")?;
            let (t, v) = entry.next("TCB component value")?;
            entry.finish("TCB component")?;
            let Some(n) = arc_below(oid.rest, &tcb_prefix) else {
                continue;
            };
            match n {
                1..=16 => {
                    let i = usize::from(n - 1);
                    let name = COMP_NAMES.get(i).copied().unwrap_or("TCB component");
                    let svn = unsigned(t, TAG_INTEGER, &v, name)?;
                    let svn = u8::try_from(svn).map_err(|_| PckExtensionsError::BadInteger {
                        what: name,
                        reason: "above 255",
                    })?;
                    if let Some(slot) = comps.get_mut(i) {
                        set_once(slot, svn, name)?;
                    }
                }
                17 => {
                    let svn = unsigned(t, TAG_INTEGER, &v, "PCESVN")?;
                    let svn = u16::try_from(svn).map_err(|_| PckExtensionsError::BadInteger {
                        what: "PCESVN",
                        reason: "above 65535",
                    })?;
                    set_once(&mut pcesvn, svn, "PCESVN")?;
                }
                18 => set_once(&mut cpusvn, octets::<16>(t, &v, "CPUSVN")?, "CPUSVN")?,
                _ => {}
            }
        }
        let mut comp_svn = [0u8; 16];
        for ((out, svn), name) in comp_svn.iter_mut().zip(comps).zip(COMP_NAMES) {
            *out = svn.ok_or(PckExtensionsError::Missing(name))?;
        }
        Ok(Tcb {
            comp_svn,
            pcesvn: pcesvn.ok_or(PckExtensionsError::Missing("PCESVN"))?,
            cpusvn: cpusvn.ok_or(PckExtensionsError::Missing("CPUSVN"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters of a synthetic quote.
    struct Build {
        version: u16,
        key_type: u16,
        tee_type: u32,
        body_type: u16,
        body_size: u32,
        body_len: usize,
        outer_type: u16,
        inner_type: u16,
        auth: Vec<u8>,
        chain: Vec<u8>,
    }

    impl Build {
        fn tdx(version: u16) -> Self {
            Build {
                version,
                key_type: 2,
                tee_type: TEE_TYPE_TDX,
                body_type: BODY_TYPE_TD15,
                body_size: TD15_BODY_SIZE as u32,
                body_len: if version == 5 {
                    TD15_BODY_SIZE
                } else {
                    TD10_BODY_SIZE
                },
                outer_type: 6,
                inner_type: 5,
                auth: vec![0xAA; 32],
                chain: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            }
        }

        fn sgx_v3() -> Self {
            Build {
                version: 3,
                tee_type: TEE_TYPE_SGX,
                body_len: ENCLAVE_REPORT_SIZE,
                ..Build::tdx(4)
            }
        }

        fn qe_part(&self) -> Vec<u8> {
            let mut q = vec![0x51; ENCLAVE_REPORT_SIZE];
            q.extend_from_slice(&[0x52; 64]);
            q.extend_from_slice(&(self.auth.len() as u16).to_le_bytes());
            q.extend_from_slice(&self.auth);
            q.extend_from_slice(&self.inner_type.to_le_bytes());
            q.extend_from_slice(&(self.chain.len() as u32).to_le_bytes());
            q.extend_from_slice(&self.chain);
            q
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&self.version.to_le_bytes());
            b.extend_from_slice(&self.key_type.to_le_bytes());
            b.extend_from_slice(&self.tee_type.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&INTEL_QE_VENDOR_ID);
            b.extend_from_slice(&[0; 20]);
            if self.version == 5 {
                b.extend_from_slice(&self.body_type.to_le_bytes());
                b.extend_from_slice(&self.body_size.to_le_bytes());
            }
            b.extend((0..self.body_len).map(|i| i as u8));
            let mut sd = vec![0x11; 64];
            sd.extend_from_slice(&[0x22; 64]);
            let qe = self.qe_part();
            if self.version == 3 {
                sd.extend_from_slice(&qe);
            } else {
                sd.extend_from_slice(&self.outer_type.to_le_bytes());
                sd.extend_from_slice(&(qe.len() as u32).to_le_bytes());
                sd.extend_from_slice(&qe);
            }
            b.extend_from_slice(&(sd.len() as u32).to_le_bytes());
            b.extend_from_slice(&sd);
            b
        }
    }

    #[test]
    fn synthetic_quotes_of_every_kind_parse() {
        let q = Quote::parse(&Build::tdx(4).bytes()).unwrap();
        assert_eq!(q.version(), 4);
        assert_eq!(q.tee_type(), TeeType::Tdx);
        assert!(matches!(
            q.td_report(),
            Some(TdReport::Td10(b)) if b.tee_tcb_svn[1] == 1 && b.report_data[0] == 8
        ));
        assert_eq!(q.signed_bytes().len(), HEADER_SIZE + TD10_BODY_SIZE);
        assert_eq!(q.certification_data_type(), CERT_DATA_QE_REPORT);
        assert_eq!(q.qe_auth_data(), &[0xAA; 32]);
        assert_eq!(q.pck_cert_chain_pem(), b"-----BEGIN CERTIFICATE-----\n");
        assert_eq!(q.qe_report_bytes(), &[0x51; ENCLAVE_REPORT_SIZE]);
        assert_eq!(q.qe_report().as_bytes(), [0x51; ENCLAVE_REPORT_SIZE]);
        assert_eq!(q.qe_report_signature(), &[0x52; 64]);
        assert_eq!(q.signature(), &[0x11; 64]);
        assert_eq!(q.attestation_key(), &[0x22; 64]);

        let q = Quote::parse(&Build::tdx(5).bytes()).unwrap();
        assert_eq!(
            q.body_descriptor(),
            Some(BodyDescriptor {
                body_type: 3,
                body_size: 648
            })
        );
        let td = q.td_report().unwrap();
        assert_eq!(td.tee_tcb_svn_2().unwrap().0[0], 584u32 as u8);
        assert_eq!(td.mrservicetd().unwrap()[0], 600u32 as u8);
        assert_eq!(q.signed_bytes().len(), HEADER_SIZE + 6 + TD15_BODY_SIZE);

        let v5_td10 = Build {
            body_type: BODY_TYPE_TD10,
            body_size: TD10_BODY_SIZE as u32,
            body_len: TD10_BODY_SIZE,
            ..Build::tdx(5)
        };
        let q = Quote::parse(&v5_td10.bytes()).unwrap();
        assert!(matches!(q.td_report(), Some(TdReport::Td10(_))));
        assert_eq!(q.td_report().unwrap().mrservicetd(), None);

        let v5_sgx = Build {
            tee_type: TEE_TYPE_SGX,
            body_type: BODY_TYPE_SGX,
            body_size: ENCLAVE_REPORT_SIZE as u32,
            body_len: ENCLAVE_REPORT_SIZE,
            ..Build::tdx(5)
        };
        let q = Quote::parse(&v5_sgx.bytes()).unwrap();
        assert_eq!(q.tee_type(), TeeType::Sgx);

        let q = Quote::parse(&Build::sgx_v3().bytes()).unwrap();
        assert_eq!(q.tee_type(), TeeType::Sgx);
        assert_eq!(q.certification_data_type(), CERT_DATA_PCK_CERT_CHAIN);
        assert_eq!(q.enclave_report().unwrap().mrenclave()[0], 64);
        assert_eq!(q.qe_auth_data(), &[0xAA; 32]);

        let empty_auth = Build {
            auth: Vec::new(),
            ..Build::tdx(4)
        };
        let q = Quote::parse(&empty_auth.bytes()).unwrap();
        assert!(q.qe_auth_data().is_empty());
    }

    #[test]
    fn field_ranges_tile_every_kind_of_quote() {
        for b in [
            Build::tdx(4),
            Build::tdx(5),
            Build::sgx_v3(),
            Build {
                auth: Vec::new(),
                chain: Vec::new(),
                ..Build::tdx(4)
            },
        ] {
            let bytes = b.bytes();
            let q = Quote::parse(&bytes).unwrap();
            let mut next = 0;
            for f in q.field_ranges() {
                assert_eq!(f.offset, next, "{f} does not follow its predecessor");
                next = f.offset + f.len;
            }
            assert_eq!(next, bytes.len());
        }
        type Table = [(&'static str, usize, usize)];
        let tables: [(&Table, usize); 4] = [
            (HEADER_FIELDS, HEADER_SIZE),
            (BODY_DESCRIPTOR_FIELDS, BODY_DESCRIPTOR_SIZE),
            (TD10_BODY_FIELDS, TD10_BODY_SIZE),
            (ENCLAVE_REPORT_FIELDS, ENCLAVE_REPORT_SIZE),
        ];
        for (table, size) in tables {
            let mut next = 0;
            for (name, off, len) in table {
                assert_eq!(*off, next, "{name}");
                next = off + len;
            }
            assert_eq!(next, size);
        }
    }

    #[test]
    fn header_values_are_checked() {
        let mut b = Build::tdx(4);
        b.version = 6;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnsupportedVersion(6))
        );
        let mut b = Build::tdx(4);
        b.key_type = 3;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnsupportedAttestationKeyType(3))
        );
        let mut b = Build::tdx(4);
        b.tee_type = 0x80;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnsupportedTeeType {
                version: 4,
                tee_type: 0x80
            })
        );
        let mut b = Build::sgx_v3();
        b.tee_type = TEE_TYPE_TDX;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnsupportedTeeType {
                version: 3,
                tee_type: 0x81
            })
        );
    }

    #[test]
    fn v5_descriptor_must_match_the_body() {
        let mut b = Build::tdx(5);
        b.body_type = 4;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnsupportedBodyType(4))
        );
        let mut b = Build::tdx(5);
        b.body_type = BODY_TYPE_SGX;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::BodyTypeMismatch {
                tee_type: 0x81,
                body_type: 1
            })
        );
        let mut b = Build::tdx(5);
        b.body_size = TD10_BODY_SIZE as u32;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::BodySizeMismatch {
                body_type: 3,
                expected: TD15_BODY_SIZE,
                declared: TD10_BODY_SIZE as u32
            })
        );
        let mut b = Build::tdx(5);
        b.body_size = u32::MAX;
        assert!(matches!(
            Quote::parse(&b.bytes()),
            Err(ParseError::BodySizeMismatch { .. })
        ));
    }

    #[test]
    fn certification_data_types_are_checked() {
        let mut b = Build::tdx(4);
        b.outer_type = 5;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnexpectedCertificationDataType {
                what: "signature data",
                expected: 6,
                found: 5
            })
        );
        let mut b = Build::tdx(4);
        b.inner_type = 4;
        assert_eq!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnexpectedCertificationDataType {
                what: "QE report certification data",
                expected: 5,
                found: 4
            })
        );
        let mut b = Build::sgx_v3();
        b.inner_type = 1;
        assert!(matches!(
            Quote::parse(&b.bytes()),
            Err(ParseError::UnexpectedCertificationDataType { found: 1, .. })
        ));
    }

    /// Offset of the signature data length field in a built TD 1.0 quote.
    const SIG_LEN_AT: usize = HEADER_SIZE + TD10_BODY_SIZE;

    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn lengths_must_fit_exactly() {
        let good = Build::tdx(4).bytes();
        let sig_len = u32::from_le_bytes(good[SIG_LEN_AT..SIG_LEN_AT + 4].try_into().unwrap());

        // Signature data longer than the input, or absurdly long.
        for declared in [sig_len + 1, u32::MAX] {
            let mut b = good.clone();
            put_u32(&mut b, SIG_LEN_AT, declared);
            assert!(matches!(
                Quote::parse(&b),
                Err(ParseError::LengthOutOfBounds {
                    what: "signature data",
                    ..
                })
            ));
        }
        // Signature data shorter than its contents.
        let mut b = good.clone();
        put_u32(&mut b, SIG_LEN_AT, sig_len - 1);
        assert!(matches!(
            Quote::parse(&b),
            Err(ParseError::LengthOutOfBounds { .. })
        ));
        // Signature data with a spare byte inside: unused.
        let mut b = good.clone();
        put_u32(&mut b, SIG_LEN_AT, sig_len + 1);
        b.push(0);
        assert!(matches!(
            Quote::parse(&b),
            Err(ParseError::UnusedBytes {
                what: "signature data",
                count: 1,
                ..
            })
        ));
        // Outer certification data with a spare byte inside.
        let cd_size_at = SIG_LEN_AT + 4 + 128 + 2;
        let mut b = good.clone();
        let cd = u32::from_le_bytes(b[cd_size_at..cd_size_at + 4].try_into().unwrap());
        put_u32(&mut b, cd_size_at, cd + 1);
        put_u32(&mut b, SIG_LEN_AT, sig_len + 1);
        b.push(0);
        assert!(matches!(
            Quote::parse(&b),
            Err(ParseError::UnusedBytes {
                what: "QE report certification data",
                count: 1,
                ..
            })
        ));
        // Outer certification data longer than the signature data.
        let mut b = good.clone();
        put_u32(&mut b, cd_size_at, u32::MAX);
        assert!(matches!(
            Quote::parse(&b),
            Err(ParseError::LengthOutOfBounds {
                what: "QE report certification data",
                declared: 0xFFFF_FFFF,
                ..
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused_or_handed_back() {
        let mut b = Build::tdx(4).bytes();
        let len = b.len();
        b.extend_from_slice(&[0, 0, 7]);
        assert_eq!(
            Quote::parse(&b),
            Err(ParseError::TrailingBytes {
                quote_len: len,
                trailing: 3
            })
        );
        let (q, rest) = Quote::parse_prefix(&b).unwrap();
        assert_eq!(rest, &[0, 0, 7]);
        assert_eq!(q.as_bytes().len(), len);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for build in [Build::tdx(4), Build::tdx(5), Build::sgx_v3()] {
            let b = build.bytes();
            for n in 0..b.len() {
                assert!(Quote::parse(&b[..n]).is_err(), "length {n}");
                assert!(Quote::parse_prefix(&b[..n]).is_err(), "length {n}");
            }
        }
        assert_eq!(
            Quote::parse(&[4, 0]),
            Err(ParseError::Truncated {
                what: "quote header",
                offset: 0,
                needed: 48,
                available: 2
            })
        );
        let b = Build::tdx(4).bytes();
        assert_eq!(
            Quote::parse(&b[..100]),
            Err(ParseError::Truncated {
                what: "TD 1.0 quote body",
                offset: 48,
                needed: TD10_BODY_SIZE,
                available: 52
            })
        );
    }

    #[test]
    fn td_attributes_decode() {
        // As in real quotes: SEPT_VE_DISABLE only.
        let a = TdAttributes::from_bytes([0, 0, 0, 0x10, 0, 0, 0, 0]);
        assert!(a.sept_ve_disable() && !a.debug() && !a.pks() && !a.kl() && !a.perfmon());
        assert_eq!(a.unknown_bits(), 0);
        let a = TdAttributes::from_bytes([1, 0, 0, 0xC0, 0, 0, 0, 0x80]);
        assert!(a.debug() && a.pks() && a.kl() && a.perfmon() && !a.sept_ve_disable());
        assert_eq!(a.tud(), 1);
        let a = TdAttributes(1 << 40 | 1 << 29 | 1 << 3);
        assert!(a.migratable() && !a.debug());
        assert_eq!(a.tud(), 8);
        assert_eq!(a.unknown_bits(), 1 << 40);
        let svn = TeeTcbSvn([6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(svn.tdx_module_minor_svn(), 6);
        assert_eq!(svn.tdx_module_major_svn(), 1);
    }

    // ---- PCK extensions

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = contents.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(contents);
        out
    }

    fn oid(arcs: &[u8]) -> Vec<u8> {
        let mut o = SGX_EXT_OID.to_vec();
        o.extend_from_slice(arcs);
        tlv(TAG_OID, &o)
    }

    fn entry(arcs: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut c = oid(arcs);
        c.extend_from_slice(&value);
        tlv(TAG_SEQUENCE, &c)
    }

    fn int(v: &[u8]) -> Vec<u8> {
        tlv(TAG_INTEGER, v)
    }

    /// TCB components as (arc, encoded value), in order.
    fn tcb_components() -> Vec<(u8, Vec<u8>)> {
        let mut comps: Vec<(u8, Vec<u8>)> = (1..=16u8).map(|n| (n, int(&[n]))).collect();
        comps[4].1 = int(&[0x00, 0xFF]); // component 5 = 255, with its sign byte
        comps.push((17, int(&[0x00, 0x80, 0x01]))); // PCESVN 0x8001
        comps.push((18, tlv(TAG_OCTET_STRING, &[0xC5; 16])));
        comps
    }

    fn extension(tcb: &[(u8, Vec<u8>)], extra: &[Vec<u8>], skip: Option<u8>) -> Vec<u8> {
        let tcb_seq: Vec<u8> = tcb
            .iter()
            .flat_map(|(n, v)| entry(&[2, *n], v.clone()))
            .collect();
        let mut items = vec![
            (1, entry(&[1], tlv(TAG_OCTET_STRING, &[0xAB; 16]))),
            (2, entry(&[2], tlv(TAG_SEQUENCE, &tcb_seq))),
            (3, entry(&[3], tlv(TAG_OCTET_STRING, &[0, 0]))),
            (
                4,
                entry(&[4], tlv(TAG_OCTET_STRING, &[0x90, 0xC0, 0x6F, 0, 0, 0])),
            ),
            (5, entry(&[5], tlv(TAG_ENUMERATED, &[1]))),
        ];
        items.retain(|(n, _)| Some(*n) != skip);
        let mut body: Vec<u8> = items.into_iter().flat_map(|(_, e)| e).collect();
        for e in extra {
            body.extend_from_slice(e);
        }
        tlv(TAG_SEQUENCE, &body)
    }

    #[test]
    fn pck_extensions_decode() {
        let ext = extension(&tcb_components(), &[], None);
        let p = PckExtensions::from_der(&ext).unwrap();
        assert_eq!(p.ppid, [0xAB; 16]);
        assert_eq!(
            p.sgx_tcb_comp_svn,
            [1, 2, 3, 4, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(p.pcesvn, 0x8001);
        assert_eq!(p.cpusvn, [0xC5; 16]);
        assert_eq!(p.pceid, [0, 0]);
        assert_eq!(p.fmspc, [0x90, 0xC0, 0x6F, 0, 0, 0]);
        assert_eq!(p.sgx_type, SgxType::Scalable);
        assert_eq!(p.platform_instance_id, None);

        // Platform CA certificates add .6 and .7; the latter is skipped.
        let extra = [
            entry(&[6], tlv(TAG_OCTET_STRING, &[0x66; 16])),
            entry(&[7], tlv(TAG_SEQUENCE, &entry(&[7, 1], tlv(0x01, &[0xFF])))),
        ];
        let p = PckExtensions::from_der(&extension(&tcb_components(), &extra, None)).unwrap();
        assert_eq!(p.platform_instance_id, Some([0x66; 16]));
    }

    #[test]
    fn pck_extensions_refuse_missing_duplicate_and_malformed_parts() {
        for (skip, name) in [
            (1, "PPID"),
            (2, "TCB"),
            (3, "PCE-ID"),
            (4, "FMSPC"),
            (5, "SGX type"),
        ] {
            assert_eq!(
                PckExtensions::from_der(&extension(&tcb_components(), &[], Some(skip))),
                Err(PckExtensionsError::Missing(name))
            );
        }
        let dup = [entry(&[4], tlv(TAG_OCTET_STRING, &[0; 6]))];
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb_components(), &dup, None)),
            Err(PckExtensionsError::Duplicate("FMSPC"))
        );
        let mut tcb = tcb_components();
        tcb.remove(7);
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::Missing("TCB component 8"))
        );
        let mut tcb = tcb_components();
        tcb.push((3, int(&[3])));
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::Duplicate("TCB component 3"))
        );
        let bad_ints: [(&[u8], &str); 5] = [
            (&[], "empty encoding"),
            (&[0x80], "negative"),
            (&[0x00, 0x05], "not minimally encoded"),
            (&[0x01, 0x00], "above 255"),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9], "too large"),
        ];
        for (v, reason) in bad_ints {
            let mut tcb = tcb_components();
            tcb[0].1 = int(v);
            assert_eq!(
                PckExtensions::from_der(&extension(&tcb, &[], None)),
                Err(PckExtensionsError::BadInteger {
                    what: "TCB component 1",
                    reason
                }),
                "{v:?}"
            );
        }
        let mut tcb = tcb_components();
        tcb[17].1 = tlv(TAG_OCTET_STRING, &[0; 15]);
        assert_eq!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::WrongLength {
                what: "CPUSVN",
                expected: 16,
                found: 15
            })
        );
        let mut tcb = tcb_components();
        tcb[16].1 = tlv(TAG_OCTET_STRING, &[1]);
        assert!(matches!(
            PckExtensions::from_der(&extension(&tcb, &[], None)),
            Err(PckExtensionsError::UnexpectedTag {
                what: "PCESVN",
                expected: TAG_INTEGER,
                found: TAG_OCTET_STRING,
                ..
            })
        ));
    }

    #[test]
    fn der_framing_is_strict() {
        let good = extension(&tcb_components(), &[], None);
        assert!(PckExtensions::from_der(&good).is_ok());
        // Every truncation fails; so does anything appended.
        for n in 0..good.len() {
            assert!(PckExtensions::from_der(&good[..n]).is_err(), "length {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            PckExtensions::from_der(&long),
            Err(PckExtensionsError::Malformed {
                reason: "unexpected data after the last element",
                ..
            })
        ));
        // The outer SEQUENCE uses a two-byte length; re-encode it badly.
        assert_eq!(good[1], 0x82);
        let mut indefinite = good.clone();
        indefinite[1] = 0x80;
        assert!(matches!(
            PckExtensions::from_der(&indefinite),
            Err(PckExtensionsError::Malformed {
                reason: "indefinite length",
                ..
            })
        ));
        let mut five = good.clone();
        five[1] = 0x85;
        assert!(matches!(
            PckExtensions::from_der(&five),
            Err(PckExtensionsError::Malformed {
                reason: "length too large",
                ..
            })
        ));
        // A short length in long form.
        let non_minimal = [0x30, 0x81, 0x05, 0x04, 0x03, 1, 2, 3];
        assert!(matches!(
            PckExtensions::from_der(&non_minimal),
            Err(PckExtensionsError::Malformed {
                reason: "length not minimally encoded",
                ..
            })
        ));
        let leading_zero = [0x30, 0x82, 0x00, 0x85];
        assert!(matches!(
            PckExtensions::from_der(&leading_zero),
            Err(PckExtensionsError::Malformed {
                reason: "length not minimally encoded",
                ..
            })
        ));
        assert!(matches!(
            PckExtensions::from_der(&[0x1F, 0x01, 0x00]),
            Err(PckExtensionsError::Malformed { .. })
        ));
        assert!(matches!(
            PckExtensions::from_der(&[0x31, 0x00]),
            Err(PckExtensionsError::UnexpectedTag {
                expected: TAG_SEQUENCE,
                found: 0x31,
                ..
            })
        ));
        // An empty SEQUENCE is well-formed but lacks everything.
        assert_eq!(
            PckExtensions::from_der(&[0x30, 0x00]),
            Err(PckExtensionsError::Missing("TCB"))
        );
    }
}
