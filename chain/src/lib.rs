//! Reading and writing the TON chain, behind one replaceable interface.
//!
//! [`ChainClient`] is everything Cocoon asks of the chain: an account's
//! state, a get-method's result, sending an external message, and an
//! account's recent transactions. The production implementation speaks the
//! TON HTTP API (the toncenter-compatible JSON API, v2) that providers run
//! or rent; tests run the same implementation, unchanged, against a local
//! server of the same API backed by `@ton/sandbox` (a loudly named test
//! double: no TON network is reachable from the test machines).
//!
//! What a reader must trust about the API it reads is in `chain/README.md`.

#![forbid(unsafe_code)]

pub mod http;
pub mod wait;
pub mod wallet;

pub use http::{ChainApiConfig, TonHttpClient};

use cocoon_protocol::settlement::ContractAddress;

/// Why a chain call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The API could not be reached, or did not answer in time (after the
    /// retries the client allows).
    #[error("chain API {endpoint} unreachable: {reason}")]
    Unreachable {
        /// The endpoint called.
        endpoint: String,
        /// What went wrong, with its cause.
        reason: String,
    },
    /// The API answered with an error of its own (`ok: false`, or an HTTP
    /// error status that is not worth retrying).
    #[error("chain API {endpoint} refused: {status}: {message}")]
    Api {
        /// The endpoint called.
        endpoint: String,
        /// HTTP status (or the `code` of the JSON error).
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The API's answer was not what the API specifies.
    #[error("chain API {endpoint}: malformed answer: {reason}")]
    Malformed {
        /// The endpoint called.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The request itself is not one this client can make (an argument
    /// the API cannot carry, a message that is not a bag of cells, a
    /// malformed configuration).
    #[error("invalid chain request: {0}")]
    InvalidRequest(String),
    /// A message was sent but the chain did not show its effect in time.
    #[error("{what} not confirmed after {waited:?}")]
    NotConfirmed {
        /// What was waited for.
        what: String,
        /// How long.
        waited: std::time::Duration,
    },
    /// A get-method ran and exited with a non-zero TVM exit code.
    #[error("get-method {method} on {address} exited with code {exit_code}")]
    GetMethodFailed {
        /// The contract.
        address: ContractAddress,
        /// The method's name.
        method: String,
        /// The TVM exit code.
        exit_code: i32,
    },
}

/// The state of an account, as the chain reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Balance in nanoton.
    pub balance: u128,
    /// Whether it is active, uninitialised, frozen or absent.
    pub status: AccountStatus,
    /// The code, a bag of cells, when active.
    pub code: Option<Vec<u8>>,
    /// The data, a bag of cells, when active.
    pub data: Option<Vec<u8>>,
    /// The last transaction, if there is one.
    pub last_transaction: Option<TransactionId>,
}

/// An account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Deployed and running code.
    Active,
    /// Has a balance (or not) but no code yet.
    Uninitialized,
    /// Frozen for unpaid storage.
    Frozen,
    /// Never seen on chain.
    Nonexistent,
}

/// A transaction's identity: logical time and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId {
    /// Logical time.
    pub lt: u64,
    /// The transaction's hash.
    pub hash: [u8; 32],
}

/// One value on a TVM stack, as get-methods take and return them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackValue {
    /// An integer (up to 257 bits signed), big-endian two's complement
    /// magnitude kept as a sign and 32 big-endian bytes.
    Int(TvmInt),
    /// A cell, as a bag of cells with one root.
    Cell(Vec<u8>),
    /// A slice (a whole cell, read from its start), as a bag of cells.
    Slice(Vec<u8>),
    /// `null`.
    Null,
    /// A tuple (or a list, as the API renders one): its elements in order.
    /// Only in results; the API takes no tuples as arguments.
    Tuple(Vec<StackValue>),
}

/// A TVM integer: at most 257 bits signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TvmInt {
    /// True when negative.
    pub negative: bool,
    /// The magnitude, big-endian.
    pub magnitude: [u8; 32],
}

impl TvmInt {
    /// A non-negative integer from 32 big-endian bytes (an account id, a hash).
    pub fn from_be_bytes(magnitude: [u8; 32]) -> TvmInt {
        TvmInt {
            negative: false,
            magnitude,
        }
    }

    /// A non-negative integer from a `u128`.
    pub fn from_u128(v: u128) -> TvmInt {
        let mut magnitude = [0u8; 32];
        magnitude[16..].copy_from_slice(&v.to_be_bytes());
        TvmInt::from_be_bytes(magnitude)
    }

    /// The value as a `u128`, if it is non-negative and fits.
    pub fn to_u128(&self) -> Option<u128> {
        if self.negative && self.magnitude != [0; 32] {
            return None;
        }
        if self.magnitude[..16] != [0; 16] {
            return None;
        }
        Some(u128::from_be_bytes(self.magnitude[16..].try_into().ok()?))
    }
}

/// A transaction, as far as Cocoon reads them: who sent the inbound
/// message, its value and body, and whether the transaction succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its identity.
    pub id: TransactionId,
    /// Unix time it was included.
    pub utime: u64,
    /// The inbound message's source (`None` for an external message).
    pub in_source: Option<ContractAddress>,
    /// The inbound message's value in nanoton.
    pub in_value: u128,
    /// The hash of the inbound message's body cell, if it had one.
    pub in_body_hash: Option<[u8; 32]>,
    /// Whether the compute phase succeeded and the transaction was not aborted.
    pub success: bool,
    /// The compute phase's exit code (0 or 1 on success).
    pub exit_code: i32,
}

/// Everything Cocoon asks of the chain. Implemented over the TON HTTP API
/// in production (the `http` module); any other source (a liteserver with proofs,
/// later) implements the same trait.
#[async_trait::async_trait]
pub trait ChainClient: Send + Sync {
    /// The account's state now.
    async fn account_state(&self, address: &ContractAddress) -> Result<AccountState, ChainError>;

    /// Runs get-method `method` with `args` on the account's current state
    /// and returns its stack (top last, as the API returns it). A non-zero
    /// exit code is [`ChainError::GetMethodFailed`].
    async fn run_get_method(
        &self,
        address: &ContractAddress,
        method: &str,
        args: &[StackValue],
    ) -> Result<Vec<StackValue>, ChainError>;

    /// Sends an external message (a bag of cells with one root: the whole
    /// message, header included). Returns the message's hash.
    async fn send_message(&self, boc: &[u8]) -> Result<[u8; 32], ChainError>;

    /// The account's transactions, newest first, at most `limit`, starting
    /// before `before` (exclusive) when given.
    async fn transactions(
        &self,
        address: &ContractAddress,
        limit: u32,
        before: Option<TransactionId>,
    ) -> Result<Vec<Transaction>, ChainError>;
}

/// A get-method's result in the form `cocoon_protocol::registry`'s parsers
/// take: one to one, except that a tuple (which no registry get-method
/// returns) is an error naming the method.
pub fn registry_stack(
    method: &str,
    stack: &[StackValue],
) -> Result<Vec<cocoon_protocol::registry::StackItem>, cocoon_protocol::registry::RegistryError> {
    use cocoon_protocol::registry::{RegistryError, StackItem};
    stack
        .iter()
        .map(|v| {
            Ok(match v {
                StackValue::Int(i) => StackItem::Int {
                    negative: i.negative,
                    magnitude: i.magnitude,
                },
                StackValue::Cell(b) => StackItem::Cell(b.clone()),
                StackValue::Slice(b) => StackItem::Slice(b.clone()),
                StackValue::Null => StackItem::Null,
                StackValue::Tuple(_) => {
                    return Err(RegistryError::Stack(format!(
                        "{method}: a tuple on the stack, which the registry never returns"
                    )))
                }
            })
        })
        .collect()
}
