//! Shared attestation vocabulary for Cocoon.
//!
//! This crate owns the *types* of platform evidence and their parsing from
//! untrusted bytes. It performs no cryptography and no I/O: deciding whether a
//! piece of evidence is genuine is the `cocoon-verifier` crate's job. Every
//! parser here returns a typed error on bad input and never panics.
//!
//! * [`snp`] — AMD SEV-SNP attestation reports (versions 2, 3 and 5).
//! * [`snp_certs`] — the SEV-SNP certificate table (GUID-keyed VCEK/VLEK,
//!   ASK, ARK) a host hands its guest beside a report.
//! * [`tdx`] — Intel TDX DCAP quotes (versions 4 and 5; SGX version 3 quotes
//!   recognised) and the SGX extensions of PCK certificates.
//! * [`nvidia`] — NVIDIA GPU and NVSwitch SPDM attestation reports.
//! * [`collateral`] — Intel DCAP collateral for offline TDX verification.
//! * [`pcs`] — collateral service URLs, the fetcher trait and a cache that
//!   never serves expired collateral (sans-IO; the host agent does the HTTP).
//! * [`kds`] — the same for AMD's SEV-SNP CRLs: KDS URLs, the fetcher trait,
//!   which CRL a report needs, and a cache that never serves a stale CRL.
//! * [`bundle`] — the evidence bundle and the enclave's claims, with their
//!   binding into report data.
//! * [`simulated`] — the simulated TEE's report (not confidential; refused
//!   by default).
//! * [`cbor`] — strict CBOR helpers shared by the wire types.
//! * [`bytes`] — the one bounds-checked reader of untrusted bytes (little-endian
//!   fields and DER elements) every parser here and the verifier use.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod bytes;
pub mod cbor;
pub mod collateral;
pub mod kds;
pub mod nvidia;
pub mod pcs;
pub mod simulated;
pub mod snp;
pub mod snp_certs;
pub mod tdx;
