//! Shared attestation vocabulary for Cocoon.
//!
//! This crate owns the *types* of platform evidence and their parsing from
//! untrusted bytes. It performs no cryptography and no I/O: deciding whether a
//! piece of evidence is genuine is the `cocoon-verifier` crate's job. Every
//! parser here returns a typed error on bad input and never panics.
//!
//! * [`snp`] — AMD SEV-SNP attestation reports (versions 2, 3 and 5): the
//!   `ATTESTATION_REPORT` layout ([`snp::RawReport`], offsets asserted at
//!   compile time against the ABI specification's table), guest policy,
//!   platform info, key info, TCB versions (Milan/Genoa and Turin layouts),
//!   the signature format, and a person-readable [`snp::Explain`].
//! * [`snp_certs`] — the SEV-SNP certificate table (GUID-keyed VCEK/VLEK,
//!   ASK, ARK) a host hands its guest beside a report; every offset bounded.
//! * [`tdx`] — Intel DCAP quotes (TDX versions 4 and 5; SGX version 3
//!   quotes recognised): header, TD 1.0/1.5 bodies, QE report,
//!   certification data, and the SGX extensions of PCK certificates; a
//!   module of `layout`, `report`, `parse`, `explain` and `pck`.
//! * [`nvidia`] — NVIDIA GPU and NVSwitch SPDM 1.1 attestation reports, the
//!   GPU evidence set ([`nvidia::GpuEvidence`]), its collateral and the
//!   session nonce ([`nvidia::session_nonce`]).
//! * [`collateral`] — Intel DCAP collateral for offline TDX verification
//!   (our CBOR, `dcap-qvl`'s JSON, PCS responses).
//! * [`pcs`] — collateral service URLs, the fetcher trait and a cache that
//!   never serves expired collateral (sans-IO; the host agent does the HTTP).
//! * [`kds`] — the same for AMD's SEV-SNP CRLs: KDS URLs, the fetcher trait,
//!   which CRL a report needs, and a cache that never serves a stale CRL;
//!   and which VCEK a report needs.
//! * [`bundle`] — the evidence bundle and the enclave's claims, with their
//!   binding into report data. The claims name each model by name, version
//!   and the SHA-256 of model and tokenizer, the root disk's dm-verity root
//!   hash, and carry the provider settings' exact bytes; the bundle has an
//!   optional GPU section. The host fills what the guest cannot produce
//!   with [`bundle::EvidenceBundle::attach_snp_crl`],
//!   [`attach_snp_vek`](bundle::EvidenceBundle::attach_snp_vek) and
//!   [`attach_tdx_collateral`](bundle::EvidenceBundle::attach_tdx_collateral).
//! * [`measurement`] — measurement digests (SHA-256 of a platform byte
//!   and the launch values), the one formula the release manifest, the
//!   registry and the verifier share, and a release's reference values.
//! * [`simulated`] — the simulated TEE's report (labelled NOT CONFIDENTIAL;
//!   refused by default).
//! * [`cbor`] — strict CBOR helpers shared by the wire types.
//! * [`bytes`] — the one bounds-checked reader of untrusted bytes (little-endian
//!   fields and DER elements) every parser here and the verifier use.
//!
//! Dependencies stay small (`thiserror`, `hex`, `sha2`, `ciborium`,
//! `serde_json`): hashing is the only cryptography here, and the crate
//! forbids `unsafe` code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bundle;
pub mod bytes;
pub mod cbor;
pub mod collateral;
pub mod kds;
pub mod measurement;
pub mod nvidia;
pub mod pcs;
pub mod simulated;
pub mod snp;
pub mod snp_certs;
pub mod tdx;
