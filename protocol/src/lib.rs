//! Cocoon's wire protocol, sans IO.
//!
//! This crate owns the bytes that travel between a client, the untrusted
//! host agent and the enclave, and the cryptography that makes them safe to
//! hand to the host. It reads no socket, no file and no clock (time is an
//! argument), and every decoder returns a typed error on bad input instead
//! of panicking. The evidence bundle and the claims are not defined here:
//! they come from `cocoon-attestation` ([`cocoon_attestation::bundle`]), as
//! do the strict CBOR helpers every decoder here uses.
//!
//! * [`seal`] — a request sealed with HPKE (RFC 9180, base mode) to the HPKE
//!   key the enclave's attested claims name, with the billing metadata the
//!   host may see ([`seal::BillingMeta`]) bound as associated data.
//! * [`request`] — what the enclave receives: the sealed request with the
//!   paying account's key and signature over its id, checked inside the
//!   enclave before anything is opened, run or signed
//!   ([`request::AuthorizedRequest`] is the proof it was). A request's
//!   expiry is in its billing metadata ([`seal::BillingMeta::expires_at`],
//!   [`seal::BillingMeta::check_lifetime`]).
//! * [`stream`] — the response: AEAD chunks under keys exported from the
//!   request's HPKE context, numbered and closed by a final chunk, so a host
//!   cannot reorder, replay, drop or cut them unnoticed.
//! * [`receipt`] — usage receipts, COSE_Sign1 (ES256) signed inside the
//!   enclave, verified by the client and by the host's ledger.
//! * [`frame`] — host ↔ enclave framing: a 9-byte header (length, stream
//!   id, type), payloads of at most 1 MiB, and an incremental decoder.
//! * [`mux`] — the host ↔ enclave connection as two sans-IO state machines,
//!   [`mux::HostConn`] and [`mux::EnclaveConn`]: stream ids and limits,
//!   stream 0 (evidence, prices, acknowledgements, tabs), cancellation, and
//!   the billing order (receipt → commit → acknowledgement → final chunk
//!   released → tab).
//! * [`message`] — the plaintext inside: the request body (chat or
//!   embeddings) and the response events, the last of which carries the
//!   receipt.
//! * [`account`] — client accounts: the id the billing metadata names and
//!   the signatures with which an account authorises a request or reads its
//!   receipts.
//! * [`pricing`] — the enclave's measured price table, the load multiplier
//!   rule and the host's price sheet.
//! * [`settings`] — the provider's settings (base prices, payment
//!   contract, concurrency): strict canonical CBOR as the claims carry it,
//!   and the provider's TOML.
//! * [`release`] — the release manifest: an image release's parts, price
//!   bounds, minimum TCB and launch measurements as canonical JSON, its
//!   hash (the registry's key) and measurement digests.
//! * [`settlement`] — the client's authorization and the enclave's tab,
//!   the two signed messages the TON payment contract pays against (fixed
//!   layouts TVM's `P256_CHKSIGNS` checks), and the settlement manifest
//!   `claims.json` ([`settlement::ClaimsManifest`], decoded strictly).
//! * [`tabs`] — receipt acknowledgements and the enclave-signed running
//!   totals per account that settlement pays against; the enclave's book of
//!   pending receipts and tabs ([`tabs::TabBook`]).
//! * [`ton`] — TON cells, bags of cells and the payment contract's message
//!   bodies.
//! * [`registry`] — the network registry contract's message bodies, the
//!   payment contract's init data and address as the registry checks them,
//!   and its get-method results.
//! * [`local_auth`] — what the local HTTP endpoints (the client's
//!   OpenAI-compatible endpoint, the host's operator API) check first: the
//!   `Host` header (loopback, `localhost`, configured names) and the bearer
//!   token (compared in constant time through SHA-256 digests).
//! * [`api`] — the host agent's HTTP API: paths, headers, and the bodies
//!   (evidence list, chunk records, receipt list).
//! * [`addr`] — where the host and an enclave meet: `unix:`, `vsock:` and
//!   `hybrid-vsock:` addresses, read and written in one place.
//!
//! The flow, with the functions that do each step:
//!
//! ```text
//! client                                 host (sees only ciphertext + meta)     enclave
//! seal_request(pk, digest, meta, body) ─► SealedRequest::from_cbor, billing_meta ─► open_request(sk, digest, ..)
//! ClientSession::response_opener()                                               EnclaveSession::response_sealer(rng)
//!   open_chunk() ... finish()         ◄─ forwards chunks                      ◄─ seal_chunk(data, last)
//! verify_receipt(bytes, attested key) ◄─ verify_receipt + ledger             ◄─ ReceiptSigner::sign(&UsageReceipt)
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod account;
pub mod addr;
pub mod api;
mod chunk_aead;
pub mod frame;
pub mod local_auth;
pub mod message;
pub mod mux;
pub mod pricing;
pub mod receipt;
pub mod registry;
pub mod release;
pub mod request;
pub mod sampling;
pub mod seal;
pub mod settings;
pub mod settlement;
pub mod stream;
pub mod tabs;
pub mod ton;

/// The random-number traits the key generation and sealing functions take
/// (`rand_core` 0.6, as `hpke` and `p256` use it). A caller on a normal OS
/// passes `&mut rand_core::OsRng`; tests may pass a seeded generator.
pub use rand_core;

/// Identifies one request everywhere: SHA-256 of the sealed request's wire
/// bytes ([`seal::SealedRequest::to_cbor`]).
///
/// The host, the enclave and the client compute it from the same bytes, so a
/// receipt names exactly one sealed request; the ledger refuses a second
/// receipt for the same id, which is what makes a replayed request
/// unbillable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub [u8; 32]);

impl RequestId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
