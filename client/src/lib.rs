//! The Cocoon client SDK: talk to a provider's host agent so that only an
//! enclave whose evidence verified can read a request, and check what comes
//! back.
//!
//! Owns the client side of the flow and nothing of the wire format (that is
//! `cocoon-protocol`) or of evidence verification (that is
//! `cocoon-verifier`, which this crate calls with the time it reads):
//!
//! 1. `GET /v1/evidence`, verify every bundle under the client's policy
//!    ([`provider`]); keep the enclaves that verified, with every rejection
//!    of the others.
//! 2. Seal the request (HPKE) to a verified enclave's key and evidence
//!    digest, sign it with the account key, `POST /v1/requests`
//!    ([`client`]). A `409` (enclave restarted) re-verifies and retries
//!    once.
//! 3. Read the streamed chunks, open each, and check the final receipt
//!    against the attested receipt key and the request ([`response`],
//!    [`receipts`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cocoon_client::{Client, ResponsePart};
//! use cocoon_protocol::message::{ChatMessage, Role};
//!
//! let policy = cocoon_verifier::Policy::from_toml(&std::fs::read_to_string("policy.toml")?)?;
//! let account = cocoon_client::load_account_key("account.key".as_ref())?;
//! let client = Client::new("https://provider.example", policy, account);
//! let provider = client.verify().await?;
//! println!("{} enclave(s) verified", provider.enclaves().len());
//! let mut answer = client
//!     .chat("minilm", vec![ChatMessage { role: Role::User, content: "hi".into() }], 64)
//!     .await?;
//! while let Some(part) = answer.next().await? {
//!     match part {
//!         ResponsePart::Text(t) => print!("{t}"),
//!         ResponsePart::Completed(c) => println!("\nbilled {:?}", c.usage),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Requests go at the price sheet's prices within the client's per-request
//! limit and budget; a sheet whose base prices or payment contract differ
//! from the provider settings in the verified claims is refused, and when
//! the provider settles on chain the client signs the payment
//! authorization. Only an [`AttestedEnclave`] (built from a
//! `VerifiedEnclave`) can be sealed to. Every request is signed with an
//! expiry ([`ClientOptions::request_lifetime`]); evidence can be bound to
//! the client's own nonce ([`Client::attest_with_nonce`]). Account keys
//! and the endpoint's API key live in owner-only files (`account_file`,
//! `api_key_file`); [`statement`] checks settlement claims against the
//! account's receipts. The crate reads the wall clock in one place only
//! (`client::unix_now`).
//!
//! [`serve`] is a local OpenAI-compatible endpoint over a [`Client`], used
//! by the `cocoon-client serve` command; it answers only requests that
//! name a local host (else `421`) and carry its API key as `Authorization:
//! Bearer` (else `401`, [`load_or_create_api_key`]); a `POST` must be
//! `application/json` (else `415`), and it sends no CORS headers. The
//! binary's commands are `chat`, `serve`, `statement`, `payment-message`,
//! `deposit` and `balance`.
//!
//! [`network`] is the client of many providers: [`NetworkClient`] finds
//! them (the registry on chain, or a list), verifies each with the policy
//! of its active release, chooses one per request by price, latency and
//! success rate, and fails over before an answer starts.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod account_file;
mod api_key_file;
pub mod client;
pub mod network;
mod openai_sampling;
pub mod provider;
pub mod receipts;
pub mod response;
pub mod serve;
pub mod statement;

pub use account_file::{
    create_account_key, load_account_key, load_or_create_account_key, KeyFileError,
};
pub use api_key_file::{load_or_create_api_key, ApiKeyFileError, API_KEY_PREFIX};
pub use client::{Client, ClientError, ClientOptions, EmbeddingsResult, VerifiedReceipt};
pub use network::{NetworkClient, NetworkError, Routed};
pub use provider::{
    verify_evidence_list, AttestedEnclave, BundleRejection, PlatformKind, VerificationError,
    VerifiedProvider,
};
pub use receipts::ReceiptProblem;
pub use response::{Completed, ResponseError, ResponsePart, ResponseStream, Usage};

/// The warning shown wherever the simulated TEE is in use.
pub const SIMULATED_TEE_WARNING: &str =
    "SIMULATED TEE — NOT CONFIDENTIAL: the provider can read everything";
