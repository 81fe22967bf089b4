//! The Cocoon enclave: the guest runtime that the measured image's PID 1
//! (`cocoon-init`) starts from its dm-verity root disk, and the trusted
//! computing base of the network.
//!
//! It creates its keys at boot, publishes them in claims bound into platform
//! evidence, opens the HPKE-sealed requests the untrusted host forwards, runs
//! inference, and streams back AEAD-sealed responses that end with a signed
//! usage receipt. It never logs or exposes plaintext: logs carry request ids,
//! sizes, model names, token counts and error kinds only. It serves no HTTP;
//! the host talks to it in `cocoon_protocol::frame` frames over vsock (a Unix
//! socket in tests).
//!
//! At boot it takes the provider's settings when its release says
//! `prices_from = "provider"` ([`boot_settings`]), makes its HPKE and
//! receipt keys, takes GPU evidence when the config has a `[gpu]` table
//! ([`gpu`]), and builds its claims: the keys, the image id, each model's
//! name, version and SHA-256 of model and tokenizer, the config digest
//! (SHA-256 of the release's canonical config), the dm-verity root of its
//! disk (`--disk-verity-root`, passed by PID 1), the provider settings'
//! bytes and the epoch. The binary is dynamically linked against the
//! libtorch on the verity disk.
//!
//! * [`attest`] — attestation providers: who turns report data into platform
//!   evidence (configfs-tsm, `/dev/sev-guest`, `/dev/tdx_guest`, and the
//!   loudly named simulator).
//! * [`boot_settings`] — the provider's settings, taken once at boot
//!   (`--settings-listen vsock:5001` in a VM, `--provider-settings FILE` as
//!   a process) and applied only inside the release's bounds
//!   ([`config::EnclaveConfig::apply_provider_settings`]).
//! * [`gpu`] — GPU evidence for the session nonce, through
//!   `cocoon-gpu-evidence`, with its digest bound into the claims; the
//!   enclave refuses to boot when the GPUs cannot answer.
//! * [`backend`] — inference backends: the trait a model implements and the
//!   deterministic test backend (NOT A MODEL). Backends run in blocking
//!   tasks.
//! * [`fault`] — **TEST ONLY** fault injection (chat fails after N
//!   tokens), honoured only under the simulated TEE.
//! * [`files`] — model files and tokenizers, read once and loaded from the
//!   bytes whose SHA-256 matched the configuration; usage is counted by the
//!   enclave's own tokenizer (the `tokenizers` crate).
//! * `torch` (feature `tch`, on by default) — the tch backend
//!   (`torch::TchBackend`): TorchScript models in-process, `embedding`
//!   models batched on one thread per model, `chat` models decoded with a
//!   key/value cache and ChatML prompts (greedy, or sampled by [`sampling`]
//!   when the request asks), conversations batched continuously on one
//!   thread per model (`torch/batch/`; answers bit for bit the same as
//!   alone); on a CUDA device only with
//!   a `[gpu]` table (GPU evidence for the session, CC mode on, developer
//!   tools off).
//! * [`upstream`] — the upstream backend ([`upstream::UpstreamBackend`]):
//!   an OpenAI-compatible server inside the guest, over plain HTTP/1.1 on
//!   loopback (`hyper` client only), streamed and cut at `max_tokens`.
//! * [`sampling`] — picking a token from logits under a request's OpenAI
//!   sampling parameters (bias, penalties, temperature, top_p, seeded
//!   draws) and the log-probabilities; pure Rust.
//! * [`stop`] — cutting a streamed answer before its first stop string
//!   without sending part of one; the server applies it to every backend.
//! * [`config`] — the enclave's TOML configuration and its canonical form,
//!   whose digest goes into the claims.
//! * [`evidence`] — the evidence of one boot: the boot report, the reports
//!   made again on a timer and for client nonces (same keys), and every
//!   claims digest issued.
//! * [`transport`] — listen addresses and the listener that yields host
//!   connections (vsock or Unix socket).
//! * [`server`] — [`Enclave`]: keys, claims and evidence made at boot, and
//!   the frame protocol served on every host connection: `server/mod.rs`
//!   (boot, serve), `server/connection.rs` (the adapter to
//!   [`cocoon_protocol::mux::EnclaveConn`]) and `server/request.rs` (one
//!   request's life: the account's signature, expiry, opening, prices,
//!   the backend, the receipt). Requests that cannot be opened or
//!   admitted are refused with one `Error` frame and no receipt; an opened
//!   request the model cannot run (context length, wrong kind of model,
//!   `max_tokens` 0) ends `refused` and one that fails while running ends
//!   `failed`, each with a zero-charge receipt; a served request's receipt goes to the host before the final
//!   chunk and stays pending in the boot's
//!   [`TabBook`](cocoon_protocol::tabs::TabBook) until the host
//!   acknowledges it as committed.
//! * `replay` — the bounded memory of served request ids, each kept until
//!   its expiry by the non-decreasing enclave clock; when full it refuses
//!   new requests instead of forgetting.
//!
//! The wire formats (frames, sealed requests, response chunks, receipts,
//! request bodies and response events) live in `cocoon-protocol`; the
//! evidence bundle and claims in `cocoon-attestation`. This crate uses them
//! and defines none of them.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attest;
pub mod backend;
pub mod boot_settings;
pub mod config;
pub mod evidence;
pub mod fault;
pub mod files;
pub mod gpu;
pub mod prefix_cache;
mod replay;
pub mod sampling;
pub mod server;
pub mod stop;
#[cfg(feature = "tch")]
pub mod torch;
pub mod transport;
pub mod upstream;

pub use attest::{
    AttestError, AttestationProvider, ConfigfsTsmProvider, SimulatedProvider, TeeChoice,
};
pub use backend::{
    BackendError, ChatOutcome, DeterministicTestBackend, Finish, Generated, InferenceBackend,
};
pub use config::{ConfigError, EnclaveConfig};
pub use server::{Enclave, EnclaveError};
pub use transport::{Connection, ListenAddr, Listener, TransportError};
