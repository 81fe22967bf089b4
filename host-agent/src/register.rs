//! `cocoon-host register`: the provider's entry in the Cocoon registry
//! (`contracts/cocoon_registry.tolk`), sent from the provider's wallet:
//! register (with the registry's stake), update the endpoint or the payment
//! contract, or deregister (the stake comes back).
//!
//! Before sending, it reads what the chain already says, so that a rerun
//! does nothing twice and a message the registry would refuse is not sent:
//! the registry's settings (`get_registry`: treasury, fee, payment code,
//! stake), the payment contract's withdrawal delay (`get_provider` on it),
//! and the provider's current entry (`get_provider(owner hash)`). The
//! payment contract must be at the address the registry derives from its
//! code and the empty storage naming this wallet, the registry's treasury
//! and fee (`protocol::registry`); a contract deployed otherwise is refused
//! here with both addresses. After sending it waits for the wallet's seqno
//! to move and reads the entry again: the command succeeds only when the
//! chain shows the change.

use std::time::Duration;

use cocoon_chain::wait::send_and_confirm;
use cocoon_chain::wallet::{InternalMessage, WalletV4};
use cocoon_chain::{ChainClient, StackValue};
use cocoon_protocol::registry::{
    deregister_provider_body, payment_init_data, register_provider_body, update_provider_body,
    ProviderEntry, RegistryInfo, StackItem, REGISTER_GAS,
};
use cocoon_protocol::settlement::ContractAddress;
use ed25519_dalek::SigningKey;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new entry.
    Register,
    /// Change the endpoint (and the payment contract, if another).
    Update,
    /// Remove the entry; the stake comes back.
    Deregister,
}

/// What `register` is asked.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    /// The registry contract.
    pub registry: ContractAddress,
    /// The provider's public endpoint (`http(s)://`, at most 256 bytes).
    pub endpoint: String,
    /// The provider's payment contract.
    pub payment: ContractAddress,
    /// Register, update or deregister.
    pub action: Action,
    /// How long to wait for the wallet's message.
    pub wait: Duration,
}

/// What the chain shows afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The entry, as the registry now holds it.
    Entry(ProviderEntry),
    /// No entry (after a deregistration).
    Gone,
    /// Nothing was sent: the entry already says this.
    Unchanged(ProviderEntry),
}

async fn get(
    chain: &dyn ChainClient,
    at: &ContractAddress,
    method: &str,
    args: &[StackValue],
) -> Result<Vec<StackItem>, String> {
    chain
        .run_get_method(at, method, args)
        .await
        .map_err(|e| e.to_string())
        .and_then(|s| cocoon_chain::registry_stack(method, &s).map_err(|e| e.to_string()))
        .map_err(|e| format!("{method} on {at}: {e}"))
}

/// The provider's entry now.
async fn entry(
    chain: &dyn ChainClient,
    registry: &ContractAddress,
    owner: &ContractAddress,
) -> Result<Option<ProviderEntry>, String> {
    let stack = get(
        chain,
        registry,
        "get_provider",
        &[StackValue::Int(cocoon_chain::TvmInt::from_be_bytes(
            owner.hash,
        ))],
    )
    .await?;
    ProviderEntry::from_get_provider(owner.hash, &stack).map_err(|e| e.to_string())
}

/// Register, update or deregister (module docs).
pub async fn run(
    chain: &dyn ChainClient,
    wallet: &WalletV4,
    key: &SigningKey,
    req: &RegisterRequest,
) -> Result<Registered, String> {
    let owner = wallet.address();
    let info = RegistryInfo::from_stack(&get(chain, &req.registry, "get_registry", &[]).await?)
        .map_err(|e| e.to_string())?;
    let current = entry(chain, &req.registry, &owner).await?;
    let (body, value) = match req.action {
        Action::Deregister => {
            if current.is_none() {
                return Ok(Registered::Gone);
            }
            (
                deregister_provider_body(1).map_err(|e| e.to_string())?,
                REGISTER_GAS,
            )
        }
        Action::Register | Action::Update => {
            // The payment contract's withdrawal delay, then the address the
            // registry will require of it.
            let stack = get(chain, &req.payment, "get_provider", &[]).await?;
            let delay = match stack.as_slice() {
                [_, _, StackItem::Int {
                    negative: false,
                    magnitude,
                }] if magnitude[..28].iter().all(|&b| b == 0) => {
                    u32::from_be_bytes([magnitude[28], magnitude[29], magnitude[30], magnitude[31]])
                }
                other => {
                    return Err(format!(
                        "get_provider on the payment contract {}: not (provider, balance, delay): {other:?}",
                        req.payment
                    ))
                }
            };
            let expected = info
                .payment_address_for(&owner, delay)
                .map_err(|e| e.to_string())?;
            if expected != req.payment {
                return Err(format!(
                    "the payment contract {} is not the one the registry accepts for wallet {owner}: that is {expected} (the registry's payment code with empty storage naming this wallet, a {delay}-second withdrawal delay, treasury {} and fee {} bps); deploy that one",
                    req.payment, info.treasury, info.fee_bps
                ));
            }
            let init = payment_init_data(&owner, delay, &info.treasury, info.fee_bps)
                .map_err(|e| e.to_string())?;
            match (req.action, &current) {
                (Action::Register, Some(e)) if e.endpoint == req.endpoint && e.payment == req.payment => {
                    return Ok(Registered::Unchanged(e.clone()))
                }
                (Action::Register, Some(e)) => {
                    return Err(format!(
                        "wallet {owner} is registered already (endpoint {}, payment {}): use --update to change it",
                        e.endpoint, e.payment
                    ))
                }
                (Action::Register, None) => (
                    register_provider_body(1, &req.payment, &req.endpoint, init)
                        .map_err(|e| e.to_string())?,
                    info.stake + REGISTER_GAS,
                ),
                (_, None) => {
                    return Err(format!(
                        "wallet {owner} is not registered: register it first (without --update)"
                    ))
                }
                (_, Some(e)) if e.endpoint == req.endpoint && e.payment == req.payment => {
                    return Ok(Registered::Unchanged(e.clone()))
                }
                (_, Some(e)) => {
                    let payment = (e.payment != req.payment).then_some((&req.payment, init));
                    (
                        update_provider_body(1, &req.endpoint, payment)
                            .map_err(|e| e.to_string())?,
                        REGISTER_GAS,
                    )
                }
            }
        }
    };
    let mut message = InternalMessage::transfer(req.registry, value, true);
    message.body = Some(body);
    send_and_confirm(chain, wallet, key, &[message], req.wait)
        .await
        .map_err(|e| format!("sending to the registry: {e}"))?;
    let after = entry(chain, &req.registry, &owner).await?;
    match (req.action, after) {
        (Action::Deregister, None) => Ok(Registered::Gone),
        (Action::Deregister, Some(_)) => Err(
            "the registry still lists this wallet: it refused the deregistration (see its transaction)".into(),
        ),
        (_, Some(e)) if e.endpoint == req.endpoint && e.payment == req.payment => {
            Ok(Registered::Entry(e))
        }
        (_, _) => Err(format!(
            "the registry does not show the change: it refused the message (see its transaction; the wallet must hold the stake of {} nanoton plus {} for gas)",
            info.stake, REGISTER_GAS
        )),
    }
}
