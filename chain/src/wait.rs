//! Sending through a wallet and waiting until the chain shows it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;

use crate::wallet::{InternalMessage, WalletV4};
use crate::{AccountStatus, ChainClient, ChainError, StackValue};

/// What [`send_and_confirm`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The external message's hash.
    pub message_hash: [u8; 32],
    /// The seqno it was signed for.
    pub seqno: u32,
    /// Whether it deployed the wallet.
    pub deployed: bool,
}

/// The wallet's current seqno: 0 for a wallet not deployed yet (then the
/// next message must carry its `StateInit`), else its get-method `seqno`.
pub async fn wallet_seqno(
    client: &dyn ChainClient,
    wallet: &WalletV4,
) -> Result<(u32, bool), ChainError> {
    let address = wallet.address();
    let state = client.account_state(&address).await?;
    match state.status {
        AccountStatus::Active => {}
        AccountStatus::Uninitialized | AccountStatus::Nonexistent => return Ok((0, false)),
        AccountStatus::Frozen => {
            return Err(ChainError::InvalidRequest(format!(
                "wallet {address} is frozen"
            )))
        }
    }
    let stack = client.run_get_method(&address, "seqno", &[]).await?;
    match stack.as_slice() {
        [StackValue::Int(v)] => v
            .to_u128()
            .and_then(|v| u32::try_from(v).ok())
            .map(|s| (s, true))
            .ok_or_else(|| ChainError::Malformed {
                endpoint: String::new(),
                reason: format!("wallet {address} seqno out of range"),
            }),
        other => Err(ChainError::Malformed {
            endpoint: String::new(),
            reason: format!("wallet {address} seqno: stack {other:?}"),
        }),
    }
}

/// Reads the wallet's seqno, sends `messages` signed for it (deploying the
/// wallet when it has no code yet), then polls until the seqno moves past
/// the one used, for at most `timeout`. The message is valid for `timeout`
/// from now; after that the chain refuses it, so a timeout here means it
/// will not land later either (once the chain's clock passes it).
pub async fn send_and_confirm(
    client: &dyn ChainClient,
    wallet: &WalletV4,
    key: &SigningKey,
    messages: &[InternalMessage],
    timeout: Duration,
) -> Result<Confirmed, ChainError> {
    let started = Instant::now();
    let (seqno, active) = wallet_seqno(client, wallet).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let valid_until = u32::try_from(now + timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    let boc = wallet
        .external_message(key, seqno, valid_until, messages, !active)
        .map_err(|e| ChainError::InvalidRequest(e.to_string()))?;
    let message_hash = client.send_message(&boc).await?;
    let poll = (timeout / 20).clamp(Duration::from_millis(200), Duration::from_secs(3));
    loop {
        match wallet_seqno(client, wallet).await {
            Ok((s, _)) if s > seqno => {
                return Ok(Confirmed {
                    message_hash,
                    seqno,
                    deployed: !active,
                })
            }
            Ok(_) => {}
            // A read that fails while waiting is retried until the deadline.
            Err(e) if started.elapsed() >= timeout => return Err(e),
            Err(_) => {}
        }
        if started.elapsed() >= timeout {
            return Err(ChainError::NotConfirmed {
                what: format!(
                    "message {} from wallet {} (seqno {seqno})",
                    hex::encode(message_hash),
                    wallet.address()
                ),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}
