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
//!
//! # Where things are
//!
//! * `layout` — sizes, type codes and the `repr(C)` structs that mirror the
//!   specification tables, with their offsets asserted at compile time.
//! * `report` — the decoded values: header, TD report, enclave report, TD
//!   attributes, TEE TCB SVN.
//! * `parse` — [`Quote::parse`]: the length-checked walk over a quote.
//! * `explain` — [`Quote::field_ranges`]: where each named field lies.
//! * `pck` — [`PckExtensions`]: the SGX extensions of a PCK certificate.

mod explain;
mod layout;
mod parse;
mod pck;
mod report;

pub use explain::QuoteField;
pub use layout::*;
pub use parse::{ParseError, Quote};
pub use pck::{PckExtensions, PckExtensionsError, SgxType, SGX_EXTENSIONS_OID};
pub use report::{
    BodyDescriptor, EnclaveReport, QuoteBody, QuoteHeader, TdAttributes, TdReport, TeeTcbSvn,
    TeeType,
};

#[cfg(test)]
mod tests;
