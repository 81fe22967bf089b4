//! The host ↔ enclave connection as plain data: one state machine per side.
//!
//! [`frame`](crate::frame) cuts bytes into frames; this module decides what
//! a sequence of frames may be, for both ends of one connection, and owns
//! every rule that decides money on it. Neither machine reads a socket, a
//! clock or a channel: frames go in through `on_frame`, what the local side
//! wants to do goes in through method calls, frames to write come out of
//! `poll_transmit` and what the application must act on comes out of
//! `poll_event`. Time, where a rule needs it, is an argument. The tokio
//! adapters (`enclave/src/server/connection.rs`,
//! `host-agent/src/broker/connection.rs`) only move bytes between sockets
//! and these machines, and the fuzz target `mux_billing` drives the two
//! machines against each other through an adversarial channel.
//!
//! # Streams
//!
//! Stream 0 is the connection; every other stream is one request (or one
//! report for a client's nonce). The host picks the ids ([`HostConn`] never
//! hands out an id that is still live on its side, and skips 0); the
//! enclave ([`EnclaveConn`]) refuses an id it still has open, and more than
//! its limit of open streams, each with one `Error` frame on that stream.
//!
//! Stream 0 carries the connection's own exchanges: the host's calls, one
//! at a time ([`Call`]: `EvidenceRequest` → `EvidenceResponse`,
//! `PriceTableRequest` → `PriceTable`), its batched `ReceiptAck`s and the
//! enclave's `Tab` answers.
//!
//! # Cancellation
//!
//! [`HostConn::cancel`] sends `Cancel`; the stream stays live, so a receipt
//! (and final chunk) the enclave sent before it saw the cancel is still
//! committed and billed, until the owner [forgets](HostConn::forget) it. In
//! the enclave a `Cancel` (or an `Error` from the host) on an open stream, or
//! the end of the connection, sets the stream's [`CancelToken`]: the code
//! producing the response can stop early, the writer drops the stream's
//! frames still queued, and [`EnclaveConn::finish`] on a cancelled stream
//! records and sends nothing ([`Finished::Cancelled`]), so no receipt is
//! pending for it.
//!
//! # The billing order
//!
//! For a request stream the enclave sends response chunks, then exactly
//! one `Receipt` (the host's copy of the signed usage receipt), then the
//! final chunk, whose `End` event carries the same receipt for the client:
//!
//! 1. [`EnclaveConn::finish`] records the receipt as *pending* in the boot's
//!    [`TabBook`](crate::tabs::TabBook) and emits `Receipt` then the final
//!    chunk, in that order, in one call.
//! 2. [`HostConn`] hands the receipt to the host ([`StreamEvent::Receipt`]),
//!    and **holds the final chunk** until the host says the receipt is
//!    durably committed ([`HostConn::commit`]); a refused receipt
//!    ([`HostConn::refuse`]) means the final chunk is never released, so the
//!    client never gets a complete response the host did not account for.
//!    A final chunk without a receipt ends the stream
//!    ([`StreamEvent::Broken`], [`Broken::FinalWithoutReceipt`]).
//! 3. Committing queues the receipt's acknowledgement (`ReceiptAck`,
//!    batched: [`HostConn::poll_timeout`]); the enclave counts each
//!    acknowledged pending receipt into its account's tab exactly once and
//!    answers with the signed tabs (`Tab`), which the host checks under the
//!    attested receipt key before it stores them.
//!
//! # Failure
//!
//! A frame that only the other side may send, a frame that does not fit the
//! stream's state where the protocol leaves no doubt, or undecodable bytes
//! are a [`Violation`]: the adapter closes the connection. Closing cancels
//! every open stream on both sides; receipts not yet acknowledged stay
//! pending in the enclave's book, and the host acknowledges the committed
//! ones again on its next connection.

mod enclave;
mod host;

pub use enclave::{CancelToken, EnclaveConn, EnclaveEvent, Finished, Transmit};

pub use host::{Broken, Call, HostConn, HostEvent, StreamEvent, ACK_DELAY};

use crate::frame::FrameType;

/// The peer broke the protocol: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame type only this side may send.
    #[error("{kind:?} frame on stream {stream}: only the other side sends that")]
    WrongSender {
        /// Its type.
        kind: FrameType,
        /// Its stream.
        stream: u32,
    },
}

/// The local side called a machine in a way the protocol does not allow (a
/// bug in the adapter, never the peer's doing). Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misuse {
    /// The stream is not open on this connection.
    #[error("stream {0} is not open on this connection")]
    NotOpen(u32),
    /// The call does not fit what the stream was opened for.
    #[error("stream {0} was not opened for that")]
    WrongKind(u32),
    /// A response chunk with the last flag through [`EnclaveConn::chunk`]
    /// (the final chunk goes with its receipt, [`EnclaveConn::finish`]), or
    /// a final chunk without the flag.
    #[error("stream {stream}: the final chunk must be the only one with the last flag, sent with the receipt")]
    LastFlag {
        /// The stream.
        stream: u32,
    },
    /// A payload over the frame limit.
    #[error("a {len}-byte payload does not fit in one frame")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The receipt does not bound its charge to 64 bits.
    #[error("stream {0}: the receipt's charge is over 64 bits of nanoton")]
    Charge(u32),
}

/// Whether a `ResponseChunk` payload carries the last flag (the flags byte
/// of the chunk header, in clear: [`crate::stream`]). `None` if it is
/// shorter than the chunk header.
pub fn chunk_is_last(payload: &[u8]) -> Option<bool> {
    payload
        .get(crate::stream::CHUNK_HEADER_LEN - 1)
        .map(|flags| flags & 1 == 1)
}

#[cfg(test)]
mod tests;
