//! What the host reads from its payment contract (`contracts/`), through a
//! [`ChainClient`]: a client's deposit (`get_client`) before serving it,
//! and what the contract has paid for a pair (`get_paid`) before and after
//! sending a claim. The get-methods and their stacks are in
//! `contracts/README.md` and `contracts/cocoon_payment.tolk`.

use cocoon_chain::{ChainClient, ChainError, StackValue, TvmInt};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::CellBuilder;

/// A client's account in the payment contract, as `get_client` returns it:
/// `(exists, balance, pending, unlock time)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientDeposit {
    /// Whether the contract knows the account (a deposit opened it).
    pub exists: bool,
    /// Its balance, nanoton (what claims draw on).
    pub balance: u128,
    /// A withdrawal the client asked for and may take once `unlock_at`
    /// passes, nanoton.
    pub pending: u128,
    /// When that withdrawal unlocks (Unix seconds; 0 when none).
    pub unlock_at: u64,
}

impl ClientDeposit {
    /// What claims can still draw on once the pending withdrawal leaves:
    /// balance − pending (never below 0).
    pub fn spendable(&self) -> u128 {
        self.balance.saturating_sub(self.pending)
    }
}

fn malformed(contract: &ContractAddress, method: &str, reason: String) -> ChainError {
    ChainError::Malformed {
        endpoint: format!("{method} on {contract}"),
        reason,
    }
}

/// A non-negative integer of a result stack, or why not.
fn uint(
    v: &StackValue,
    contract: &ContractAddress,
    method: &str,
    what: &str,
) -> Result<u128, ChainError> {
    match v {
        StackValue::Int(i) => i.to_u128().ok_or_else(|| {
            malformed(
                contract,
                method,
                format!("{what} is negative or over 128 bits"),
            )
        }),
        other => Err(malformed(
            contract,
            method,
            format!("{what} is not an integer: {other:?}"),
        )),
    }
}

/// A TVM boolean: 0 false, −1 true (anything else refused).
fn boolean(v: &StackValue, contract: &ContractAddress, method: &str) -> Result<bool, ChainError> {
    let minus_one = {
        let mut m = [0u8; 32];
        m[31] = 1;
        TvmInt {
            negative: true,
            magnitude: m,
        }
    };
    match v {
        StackValue::Int(i) if i.to_u128() == Some(0) => Ok(false),
        StackValue::Int(i) if *i == minus_one => Ok(true),
        other => Err(malformed(
            contract,
            method,
            format!("exists is not a TVM boolean: {other:?}"),
        )),
    }
}

/// `get_client(account_id)` on `contract`.
pub async fn read_client(
    chain: &dyn ChainClient,
    contract: &ContractAddress,
    account: [u8; 32],
) -> Result<ClientDeposit, ChainError> {
    const M: &str = "get_client";
    let stack = chain
        .run_get_method(
            contract,
            M,
            &[StackValue::Int(TvmInt::from_be_bytes(account))],
        )
        .await?;
    let [exists, balance, pending, unlock] = stack.as_slice() else {
        return Err(malformed(
            contract,
            M,
            format!("{} values on the stack, expected 4", stack.len()),
        ));
    };
    let unlock_at = uint(unlock, contract, M, "unlock time")?;
    Ok(ClientDeposit {
        exists: boolean(exists, contract, M)?,
        balance: uint(balance, contract, M, "balance")?,
        pending: uint(pending, contract, M, "pending")?,
        unlock_at: u64::try_from(unlock_at)
            .map_err(|_| malformed(contract, M, "unlock time over 64 bits".into()))?,
    })
}

/// `get_paid(account_id, enclave key)` on `contract`: the total the
/// contract has paid for the pair (0 when nothing yet). The key is the
/// 33-byte compressed P-256 point the claims carry, passed as a slice.
pub async fn read_paid(
    chain: &dyn ChainClient,
    contract: &ContractAddress,
    account: [u8; 32],
    enclave_key: &[u8; 33],
) -> Result<u128, ChainError> {
    const M: &str = "get_paid";
    let mut key = CellBuilder::new();
    key.store_bytes(enclave_key)
        .map_err(|e| malformed(contract, M, e.to_string()))?;
    let stack = chain
        .run_get_method(
            contract,
            M,
            &[
                StackValue::Int(TvmInt::from_be_bytes(account)),
                StackValue::Slice(key.build().to_boc()),
            ],
        )
        .await?;
    match stack.as_slice() {
        [paid] => uint(paid, contract, M, "paid"),
        other => Err(malformed(
            contract,
            M,
            format!("{} values on the stack, expected 1", other.len()),
        )),
    }
}
