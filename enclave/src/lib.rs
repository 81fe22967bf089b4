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
//! * [`attest`] — attestation providers: who turns report data into platform
//!   evidence (configfs-tsm, `/dev/sev-guest`, `/dev/tdx_guest`, and the
//!   loudly named simulator).
//! * [`backend`] — inference backends: the trait a model implements and the
//!   deterministic test backend (NOT A MODEL).
//! * [`files`] — model files and tokenizers, read only after their SHA-256
//!   matched the configuration.
//! * `torch` (feature `tch`, on by default) — the tch backend: TorchScript
//!   models in-process, batched; on a CUDA device only with a `[gpu]` table
//!   (GPU evidence for the session, CC mode on).
//! * [`upstream`] — the upstream backend: an OpenAI-compatible server inside
//!   the guest.
//! * [`config`] — the enclave's TOML configuration and its canonical form,
//!   whose digest goes into the claims.
//! * [`evidence`] — the evidence of one boot: the boot report, the reports
//!   made again on a timer and for client nonces (same keys), and every
//!   claims digest issued.
//! * [`transport`] — listen addresses and the listener that yields host
//!   connections (vsock or Unix socket).
//! * [`server`] — [`Enclave`]: keys, claims and evidence made at boot, and
//!   the frame protocol served on every host connection.
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
pub mod files;
pub mod gpu;
mod replay;
pub mod server;
#[cfg(feature = "tch")]
pub mod torch;
pub mod transport;
pub mod upstream;

pub use attest::{
    AttestError, AttestationProvider, ConfigfsTsmProvider, SimulatedProvider, TeeChoice,
};
pub use backend::{BackendError, ChatOutcome, DeterministicTestBackend, Finish, InferenceBackend};
pub use config::{ConfigError, EnclaveConfig};
pub use server::{Enclave, EnclaveError};
pub use transport::{Connection, ListenAddr, Listener, TransportError};
