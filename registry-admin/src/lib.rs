//! The registry owner's governance operations on the Cocoon registry
//! contract (`contracts/cocoon_registry.tolk`), behind the `cocoon-registry`
//! command.
//!
//! Every change is sent from the owner's wallet (wallet v4r2,
//! [`cocoon_chain::wallet`]) and is done only when the chain shows it:
//!
//! 1. read the registry first, and refuse locally what the registry would
//!    refuse (not the owner, a release already listed, an unknown release,
//!    a fee above the bound), or do nothing when the chain already says
//!    what was asked ([`Outcome::Unchanged`]: reruns are harmless);
//! 2. send through [`send_and_confirm`] (the wallet's seqno moves past the
//!    one used);
//! 3. wait for the registry's transaction from the wallet: a failed one is
//!    [`AdminError::Refused`] with the contract's exit code and its reason
//!    ([`registry::exit_code_reason`]); a successful one is followed by a
//!    re-read of the registry's state, and the command succeeds only when
//!    that state shows the change ([`Outcome::Changed`]).
//!
//! Deployment builds the registry's initial storage ([`initial_data`],
//! contracts/README.md "Registry", "Storage") and sends it with the
//! registry code as a `StateInit` from the owner's wallet; the address is
//! that of the `StateInit`, so two deployments with the same settings and
//! owner are the same contract (a rerun finds it deployed and checks it).
//!
//! The committed contract builds (`contracts/build/*.boc`, made by `node
//! contracts/scripts/build.mjs`) are compiled into the tool as its default
//! code ([`REGISTRY_CODE_BOC`], [`PAYMENT_CODE_BOC`]).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_chain::wait::send_and_confirm;
use cocoon_chain::wallet::{contract_address, InternalMessage, WalletV4, MODE_PAY_FEES_SEPARATELY};
use cocoon_chain::{AccountStatus, ChainClient, ChainError, StackValue, TransactionId, TvmInt};
use cocoon_protocol::registry::{
    self, ProviderEntry, RegistryError, RegistryInfo, Release, StackItem, MAX_FEE_BPS,
};
use cocoon_protocol::release::{ReleaseError, ReleaseManifest};
use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{Cell, CellBuilder, TonError};
use ed25519_dalek::SigningKey;

/// The registry's code as committed (`contracts/build/cocoon_registry.boc`).
pub const REGISTRY_CODE_BOC: &[u8] = include_bytes!("../../contracts/build/cocoon_registry.boc");
/// The payment contract's code as committed
/// (`contracts/build/cocoon_payment.boc`): the registry stores its hash and
/// depth, and accepts only providers whose payment contract runs it.
pub const PAYMENT_CODE_BOC: &[u8] = include_bytes!("../../contracts/build/cocoon_payment.boc");

/// Nanoton an owner operation carries for the registry's gas; what is left
/// comes back to the wallet (contracts/README.md, "Messages").
pub const DEFAULT_OP_VALUE: u128 = 50_000_000;
/// Nanoton a deployment leaves in the registry (its storage rent and the
/// first operations' gas come from its own balance).
pub const DEFAULT_DEPLOY_VALUE: u128 = 500_000_000;
/// What the wallet needs beyond the value it sends (its own gas and the
/// forwarding fees), checked before sending so a poor wallet is refused
/// with its balance rather than by a message that never lands.
pub const WALLET_FEE_MARGIN: u128 = 20_000_000;

/// Why an operation failed. [`AdminError::exit_code`] maps each to the
/// command's exit status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The chain API could not be read or written.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The registry's answer does not parse.
    #[error("the registry at {address} answered what a Cocoon registry does not: {source}")]
    Registry {
        /// The registry.
        address: ContractAddress,
        /// What was wrong.
        #[source]
        source: RegistryError,
    },
    /// The registry is not deployed (or is frozen).
    #[error("no registry at {address}: the account is {status:?}")]
    NotDeployed {
        /// The address given.
        address: ContractAddress,
        /// What the chain says of it.
        status: AccountStatus,
    },
    /// The release manifest cannot be listed.
    #[error("{0}")]
    Manifest(#[from] ReleaseError),
    /// A value the command was given is not acceptable.
    #[error("{0}")]
    Usage(String),
    /// The wallet may not do this (not the owner, not the proposed owner).
    #[error("{0}")]
    NotAllowed(String),
    /// What was asked contradicts the registry's state (a revoked release
    /// cannot be listed again, an unknown release cannot be revoked, no
    /// transfer is pending).
    #[error("{0}")]
    Conflict(String),
    /// The wallet cannot pay for the message.
    #[error("wallet {wallet} has {balance} nanoton, needs at least {needed} (fund it first)")]
    WalletPoor {
        /// The wallet.
        wallet: ContractAddress,
        /// Its balance.
        balance: u128,
        /// What the message needs.
        needed: u128,
    },
    /// The registry's transaction from the wallet failed: the contract
    /// refused the message (it bounced, nothing changed).
    #[error("the registry refused the message: exit code {exit_code} ({})", registry::exit_code_reason(*.exit_code).unwrap_or("not a registry exit code"))]
    Refused {
        /// The TVM exit code.
        exit_code: i32,
    },
    /// The message was sent and the wallet moved on, but the registry did
    /// not show the change within the wait.
    #[error("sent ({what}), but the registry does not show it after {waited:?}; read it again with `cocoon-registry show`")]
    NotLanded {
        /// What was sent.
        what: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A cell could not be built.
    #[error("building the message: {0}")]
    Cell(#[from] TonError),
}

/// Exit statuses (sysexits.h where one fits).
pub mod exit {
    /// Success (also when nothing had to be sent).
    pub const OK: u8 = 0;
    /// The registry refused, or the request contradicts its state.
    pub const REFUSED: u8 = 1;
    /// A flag's value is not acceptable (clap's own usage errors are 2).
    pub const USAGE: u8 = 64;
    /// An input file is not acceptable (a manifest that is not canonical).
    pub const DATAERR: u8 = 65;
    /// An input file cannot be read.
    pub const NOINPUT: u8 = 66;
    /// The chain API cannot be reached.
    pub const UNAVAILABLE: u8 = 69;
    /// Sent but not confirmed in time: rerun to find out.
    pub const TEMPFAIL: u8 = 75;
    /// The chain API or the registry answered something malformed.
    pub const PROTOCOL: u8 = 76;
    /// The wallet may not do this.
    pub const NOPERM: u8 = 77;
}

impl AdminError {
    /// The command's exit status for this error ([`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Chain(ChainError::Unreachable { .. }) => exit::UNAVAILABLE,
            AdminError::Chain(ChainError::NotConfirmed { .. }) | AdminError::NotLanded { .. } => {
                exit::TEMPFAIL
            }
            AdminError::Chain(ChainError::InvalidRequest(_)) => exit::USAGE,
            AdminError::Chain(_) | AdminError::Registry { .. } => exit::PROTOCOL,
            AdminError::NotDeployed { .. }
            | AdminError::Conflict(_)
            | AdminError::WalletPoor { .. }
            | AdminError::Refused { .. } => exit::REFUSED,
            AdminError::Manifest(_) => exit::DATAERR,
            AdminError::Usage(_) | AdminError::Cell(_) => exit::USAGE,
            AdminError::NotAllowed(_) => exit::NOPERM,
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Sent, landed, and the re-read state shows it: `T` as read.
    Changed(T),
    /// Nothing sent: the registry already says this.
    Unchanged(T),
}

impl<T> Outcome<T> {
    /// The state read at the end.
    pub fn value(&self) -> &T {
        match self {
            Outcome::Changed(v) | Outcome::Unchanged(v) => v,
        }
    }

    /// Whether a message was sent.
    pub fn changed(&self) -> bool {
        matches!(self, Outcome::Changed(_))
    }
}

/// Reading one registry.
#[derive(Clone)]
pub struct Registry {
    chain: Arc<dyn ChainClient>,
    address: ContractAddress,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry at `address`, read through `chain`.
    pub fn new(chain: Arc<dyn ChainClient>, address: ContractAddress) -> Registry {
        Registry { chain, address }
    }

    /// Its address.
    pub fn address(&self) -> &ContractAddress {
        &self.address
    }

    async fn get(&self, method: &str, args: &[StackValue]) -> Result<Vec<StackItem>, AdminError> {
        let stack = match self.chain.run_get_method(&self.address, method, args).await {
            Ok(s) => s,
            Err(e @ ChainError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                // An account without code fails every get-method: say so.
                let state = self.chain.account_state(&self.address).await?;
                if state.status != AccountStatus::Active {
                    return Err(AdminError::NotDeployed {
                        address: self.address,
                        status: state.status,
                    });
                }
                return Err(e.into());
            }
        };
        cocoon_chain::registry_stack(method, &stack).map_err(|source| self.bad(source))
    }

    fn bad(&self, source: RegistryError) -> AdminError {
        AdminError::Registry {
            address: self.address,
            source,
        }
    }

    /// `get_registry()`.
    pub async fn info(&self) -> Result<RegistryInfo, AdminError> {
        let s = self.get("get_registry", &[]).await?;
        RegistryInfo::from_stack(&s).map_err(|e| self.bad(e))
    }

    /// `get_releases()`: every listed release, active and revoked.
    pub async fn releases(&self) -> Result<Vec<Release>, AdminError> {
        let s = self.get("get_releases", &[]).await?;
        registry::releases_from_stack(&s).map_err(|e| self.bad(e))
    }

    /// `get_release(hash)`.
    pub async fn release(&self, hash: &[u8; 32]) -> Result<Option<Release>, AdminError> {
        let arg = StackValue::Int(TvmInt::from_be_bytes(*hash));
        let s = self.get("get_release", &[arg]).await?;
        Release::from_get_release(*hash, &s).map_err(|e| self.bad(e))
    }

    /// `get_providers()`: every registered provider.
    pub async fn providers(&self) -> Result<Vec<ProviderEntry>, AdminError> {
        let s = self.get("get_providers", &[]).await?;
        registry::providers_from_stack(&s).map_err(|e| self.bad(e))
    }
}

/// The owner's (or the proposed owner's) wallet and key.
pub struct Wallet {
    /// The wallet contract.
    pub wallet: WalletV4,
    key: SigningKey,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("address", &self.wallet.address())
            .finish_non_exhaustive()
    }
}

impl Wallet {
    /// The standard wallet v4r2 of `key`.
    pub fn new(key: SigningKey) -> Wallet {
        Wallet {
            wallet: WalletV4::new(key.verifying_key().to_bytes()),
            key,
        }
    }

    /// Its address.
    pub fn address(&self) -> ContractAddress {
        self.wallet.address()
    }
}

/// How an operation sends and waits.
#[derive(Clone)]
pub struct Sender {
    chain: Arc<dyn ChainClient>,
    /// How long to wait for the wallet's message, and then for the
    /// registry to show its effect (each).
    pub wait: Duration,
    /// Nanoton each owner operation carries (the excess comes back).
    pub value: u128,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("wait", &self.wait)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sender {
    /// Sends through `chain`, waiting up to `wait` for each step.
    pub fn new(chain: Arc<dyn ChainClient>, wait: Duration) -> Sender {
        Sender {
            chain,
            wait,
            value: DEFAULT_OP_VALUE,
        }
    }

    /// The chain it sends through.
    pub fn chain(&self) -> &Arc<dyn ChainClient> {
        &self.chain
    }

    async fn check_funds(&self, wallet: &Wallet, value: u128) -> Result<(), AdminError> {
        let address = wallet.address();
        let state = self.chain.account_state(&address).await?;
        let needed = value + WALLET_FEE_MARGIN;
        if state.balance < needed {
            return Err(AdminError::WalletPoor {
                wallet: address,
                balance: state.balance,
                needed,
            });
        }
        Ok(())
    }

    /// The registry's newest transaction, to find the ones after it.
    async fn last_tx(&self, at: &ContractAddress) -> Result<Option<TransactionId>, AdminError> {
        Ok(self.chain.account_state(at).await?.last_transaction)
    }

    /// Sends `body` from `wallet` to the registry (with [`Self::value`]),
    /// then waits for the registry's transaction of it: `Ok` once one
    /// succeeded, [`AdminError::Refused`] with the contract's exit code
    /// when it failed (the message bounced; nothing changed). No check
    /// before sending: the operations above check first.
    pub async fn send_op(
        &self,
        wallet: &Wallet,
        registry: &Registry,
        body: Cell,
        what: &str,
    ) -> Result<(), AdminError> {
        self.check_funds(wallet, self.value).await?;
        let before = self.last_tx(registry.address()).await?;
        let msg = InternalMessage {
            dest: *registry.address(),
            value: self.value,
            bounce: true,
            body: Some(body),
            state_init: None,
            mode: MODE_PAY_FEES_SEPARATELY,
        };
        send_and_confirm(&*self.chain, &wallet.wallet, &wallet.key, &[msg], self.wait).await?;
        self.wait_for_tx(registry.address(), &wallet.address(), before, what)
            .await
    }

    /// Polls `at`'s transactions newer than `before` for one whose inbound
    /// message came from `from`.
    async fn wait_for_tx(
        &self,
        at: &ContractAddress,
        from: &ContractAddress,
        before: Option<TransactionId>,
        what: &str,
    ) -> Result<(), AdminError> {
        let started = Instant::now();
        let poll = (self.wait / 20).clamp(Duration::from_millis(100), Duration::from_secs(3));
        loop {
            let txs = self.chain.transactions(at, 16, None).await?;
            let mut newer = txs
                .iter()
                .filter(|t| before.is_none_or(|b| t.id.lt > b.lt))
                .filter(|t| t.in_source.as_ref() == Some(from));
            // Newest first: the oldest new one from the wallet is ours (an
            // operator sends one message at a time).
            if let Some(t) = newer.next_back() {
                if t.success {
                    return Ok(());
                }
                return Err(AdminError::Refused {
                    exit_code: t.exit_code,
                });
            }
            if started.elapsed() >= self.wait {
                return Err(AdminError::NotLanded {
                    what: what.into(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Polls `check` on fresh reads until it gives a value, for at most
    /// the wait.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T, AdminError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, AdminError>>,
    {
        let started = Instant::now();
        let poll = (self.wait / 20).clamp(Duration::from_millis(100), Duration::from_secs(3));
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if started.elapsed() >= self.wait {
                return Err(AdminError::NotLanded {
                    what: what.into(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// The registry's settings at deployment.
#[derive(Debug, Clone)]
pub struct DeployParams {
    /// Where network fees go.
    pub treasury: ContractAddress,
    /// The network fee registrations carry, in basis points (≤ 1000).
    pub fee_bps: u16,
    /// Nanoton a provider stakes to register (returned on deregistration).
    pub stake: u128,
    /// The registry's code.
    pub code: Cell,
    /// The payment contract's code (its hash and depth are stored).
    pub payment_code: Cell,
    /// Nanoton the deployment leaves in the registry.
    pub value: u128,
}

/// The registry's initial storage (contracts/README.md, "Storage"):
/// `owner:MsgAddressInt pending_owner:addr_none release_count:uint32(0)
/// provider_count:uint32(0) releases:(HashmapE)=0 providers:(HashmapE)=0
/// ^[treasury:MsgAddressInt fee_bps:uint16 payment_code_hash:uint256
/// payment_code_depth:uint16 stake:Coins]`.
pub fn initial_data(
    owner: &ContractAddress,
    treasury: &ContractAddress,
    fee_bps: u16,
    payment_code: &Cell,
    stake: u128,
) -> Result<Cell, TonError> {
    let mut config = CellBuilder::new();
    config
        .store_address(Some(treasury))?
        .store_uint(u128::from(fee_bps), 16)?
        .store_bytes(&payment_code.hash())?
        .store_uint(u128::from(payment_code.depth()), 16)?
        .store_coins(stake)?;
    let mut b = CellBuilder::new();
    b.store_address(Some(owner))?
        .store_uint(0, 2)? // pending_owner: addr_none
        .store_uint(0, 32)?
        .store_uint(0, 32)?
        .store_bit(false)? // releases
        .store_bit(false)? // providers
        .store_ref(config.build())?;
    Ok(b.build())
}

/// A bag of cells with one root, for `--code` files and the built-in codes.
pub fn code_from_boc(boc: &[u8], what: &str) -> Result<Cell, AdminError> {
    Cell::from_boc(boc).map_err(|e| AdminError::Usage(format!("{what}: not a bag of cells: {e}")))
}

/// Deploys a registry owned by `owner`'s wallet. Returns its address and
/// its settings as read back; [`Outcome::Unchanged`] when a registry with
/// exactly this code and initial data is already there.
pub async fn deploy(
    sender: &Sender,
    owner: &Wallet,
    p: &DeployParams,
) -> Result<(ContractAddress, Outcome<RegistryInfo>), AdminError> {
    if p.fee_bps > MAX_FEE_BPS {
        return Err(AdminError::Usage(format!(
            "--fee-bps {}: the registry allows at most {MAX_FEE_BPS} (10%)",
            p.fee_bps
        )));
    }
    if p.treasury.workchain != 0 {
        return Err(AdminError::Usage(
            "--treasury must be on workchain 0 (payment contracts pay it there)".into(),
        ));
    }
    let data = initial_data(
        &owner.address(),
        &p.treasury,
        p.fee_bps,
        &p.payment_code,
        p.stake,
    )?;
    let address = contract_address(0, p.code.clone(), data.clone());
    let registry = Registry::new(sender.chain.clone(), address);
    let state = sender.chain.account_state(&address).await?;
    let deployed = state.status == AccountStatus::Active;
    if !deployed {
        sender.check_funds(owner, p.value).await?;
        let msg = InternalMessage {
            dest: address,
            value: p.value,
            bounce: false,
            body: None,
            state_init: Some((p.code.clone(), data)),
            mode: MODE_PAY_FEES_SEPARATELY,
        };
        send_and_confirm(
            &*sender.chain,
            &owner.wallet,
            &owner.key,
            &[msg],
            sender.wait,
        )
        .await?;
    }
    let info = sender
        .until("the registry's deployment", || async {
            let s = sender.chain.account_state(&address).await?;
            if s.status != AccountStatus::Active {
                return Ok(None);
            }
            registry.info().await.map(Some)
        })
        .await?;
    let expected = (
        owner.address(),
        p.treasury,
        p.fee_bps,
        p.payment_code.hash(),
        p.payment_code.depth(),
        p.stake,
    );
    let got = (
        info.owner,
        info.treasury,
        info.fee_bps,
        info.payment_code_hash,
        info.payment_code_depth,
        info.stake,
    );
    if got != expected {
        return Err(AdminError::Conflict(format!(
            "the registry at {address} reads {got:?}, deployed with {expected:?}"
        )));
    }
    Ok((
        address,
        if deployed {
            Outcome::Unchanged(info)
        } else {
            Outcome::Changed(info)
        },
    ))
}

/// Default notice period of a payment contract's client withdrawals
/// (`withdraw_delay`, seconds): one day.
pub const DEFAULT_WITHDRAW_DELAY: u32 = 86_400;

/// Nanoton a payment contract's deployment leaves in it (its storage rent
/// and gas until deposits arrive).
pub const DEFAULT_PAYMENT_DEPLOY_VALUE: u128 = 100_000_000;

/// A provider's payment contract as this registry accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentContract {
    /// Its address (the StateInit's).
    pub address: ContractAddress,
    /// The treasury it pays the network fee to (the registry's).
    pub treasury: ContractAddress,
    /// The fee it pays, basis points (the registry's now).
    pub fee_bps: u16,
    /// Its client withdrawal notice period, seconds.
    pub withdraw_delay: u32,
}

/// For providers: deploys the payment contract the registry accepts for
/// `provider`'s wallet now (the registry's payment code, the empty storage
/// naming the wallet, the registry's treasury and fee, `withdraw_delay`),
/// from that wallet. `payment_code` must be the code whose hash and depth
/// the registry stores. [`Outcome::Unchanged`] when it is deployed already.
/// Register it afterwards with `cocoon-host register`.
pub async fn deploy_payment(
    sender: &Sender,
    provider: &Wallet,
    registry: &Registry,
    payment_code: &Cell,
    withdraw_delay: u32,
    value: u128,
) -> Result<Outcome<PaymentContract>, AdminError> {
    let info = registry.info().await?;
    if (payment_code.hash(), payment_code.depth())
        != (info.payment_code_hash, info.payment_code_depth)
    {
        return Err(AdminError::Conflict(format!(
            "the payment code given hashes to {} (depth {}); registry {} accepts only {} (depth {})",
            hex::encode(payment_code.hash()),
            payment_code.depth(),
            registry.address(),
            hex::encode(info.payment_code_hash),
            info.payment_code_depth
        )));
    }
    let me = provider.address();
    let data = registry::payment_init_data(&me, withdraw_delay, &info.treasury, info.fee_bps)?;
    let address = contract_address(0, payment_code.clone(), data.clone());
    // The registry derives the address from the code's hash and depth
    // alone (`payment_contract_address`): it must be this one.
    let derived = info.payment_address_for(&me, withdraw_delay)?;
    if derived != address {
        return Err(AdminError::Conflict(format!(
            "the registry would expect the payment contract at {derived}, the StateInit is at {address}"
        )));
    }
    let contract = PaymentContract {
        address,
        treasury: info.treasury,
        fee_bps: info.fee_bps,
        withdraw_delay,
    };
    let state = sender.chain.account_state(&address).await?;
    if state.status == AccountStatus::Active {
        return Ok(Outcome::Unchanged(contract));
    }
    sender.check_funds(provider, value).await?;
    let msg = InternalMessage {
        dest: address,
        value,
        bounce: false,
        body: None,
        state_init: Some((payment_code.clone(), data)),
        mode: MODE_PAY_FEES_SEPARATELY,
    };
    send_and_confirm(
        &*sender.chain,
        &provider.wallet,
        &provider.key,
        &[msg],
        sender.wait,
    )
    .await?;
    sender
        .until("the payment contract's deployment", || async {
            let s = sender.chain.account_state(&address).await?;
            Ok((s.status == AccountStatus::Active).then_some(()))
        })
        .await?;
    Ok(Outcome::Changed(contract))
}

async fn require_owner(registry: &Registry, wallet: &Wallet) -> Result<RegistryInfo, AdminError> {
    let info = registry.info().await?;
    if info.owner != wallet.address() {
        return Err(AdminError::NotAllowed(format!(
            "wallet {} is not the owner of registry {} (the owner is {})",
            wallet.address(),
            registry.address(),
            info.owner
        )));
    }
    Ok(info)
}

/// A release as [`add_release`] lists it: the manifest's hash and digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseToList {
    /// SHA-256 of the canonical manifest.
    pub manifest_hash: [u8; 32],
    /// `(platform, digest)` pairs, sorted by digest, each once.
    pub measurements: Vec<(u8, [u8; 32])>,
    /// The manifest's release name (for messages).
    pub name: String,
}

/// Reads manifest bytes strictly: only the canonical encoding is accepted
/// (a file someone reformatted has another hash than the one the release
/// was built with, and clients fetching it would not match it).
pub fn release_of_manifest(bytes: &[u8]) -> Result<ReleaseToList, AdminError> {
    let manifest = ReleaseManifest::from_canonical(bytes)?;
    let mut measurements = manifest.measurement_digests();
    measurements.sort_by_key(|(_, d)| *d);
    measurements.dedup();
    Ok(ReleaseToList {
        manifest_hash: manifest.manifest_hash()?,
        measurements,
        name: manifest.release.clone(),
    })
}

/// `add_release`: lists the release of a canonical manifest. Unchanged
/// when it is already listed, active, with the same measurements; a
/// revoked one cannot come back (the contract refuses it, 204).
pub async fn add_release(
    sender: &Sender,
    owner: &Wallet,
    registry: &Registry,
    release: &ReleaseToList,
) -> Result<Outcome<Release>, AdminError> {
    require_owner(registry, owner).await?;
    let hash = release.manifest_hash;
    if let Some(r) = registry.release(&hash).await? {
        if !r.is_active() {
            return Err(AdminError::Conflict(format!(
                "release {} was revoked at {} and cannot be listed again; build a new release",
                hex::encode(hash),
                r.revoked_at
            )));
        }
        if r.measurements != release.measurements {
            return Err(AdminError::Conflict(format!(
                "release {} is listed with other measurements than this manifest's",
                hex::encode(hash)
            )));
        }
        return Ok(Outcome::Unchanged(r));
    }
    let body = registry::add_release_body(now_millis(), &hash, &release.measurements)?;
    let what = format!("add_release {}", hex::encode(hash));
    sender.send_op(owner, registry, body, &what).await?;
    let r = sender
        .until(&what, || async {
            Ok(registry.release(&hash).await?.filter(|r| r.is_active()))
        })
        .await?;
    if r.measurements != release.measurements {
        return Err(AdminError::Conflict(format!(
            "release {} landed with other measurements than were sent",
            hex::encode(hash)
        )));
    }
    Ok(Outcome::Changed(r))
}

/// `revoke_release`: clients stop accepting the release's evidence at
/// their next refresh. Unchanged when it is revoked already.
pub async fn revoke_release(
    sender: &Sender,
    owner: &Wallet,
    registry: &Registry,
    hash: &[u8; 32],
) -> Result<Outcome<Release>, AdminError> {
    require_owner(registry, owner).await?;
    match registry.release(hash).await? {
        None => {
            return Err(AdminError::Conflict(format!(
                "release {} is not listed in registry {}",
                hex::encode(hash),
                registry.address()
            )))
        }
        Some(r) if !r.is_active() => return Ok(Outcome::Unchanged(r)),
        Some(_) => {}
    }
    let body = registry::revoke_release_body(now_millis(), hash)?;
    let what = format!("revoke_release {}", hex::encode(hash));
    sender.send_op(owner, registry, body, &what).await?;
    let r = sender
        .until(&what, || async {
            Ok(registry.release(hash).await?.filter(|r| !r.is_active()))
        })
        .await?;
    Ok(Outcome::Changed(r))
}

/// `set_fee`: the fee later registrations carry (deployed payment
/// contracts keep theirs).
pub async fn set_fee(
    sender: &Sender,
    owner: &Wallet,
    registry: &Registry,
    fee_bps: u16,
) -> Result<Outcome<RegistryInfo>, AdminError> {
    if fee_bps > MAX_FEE_BPS {
        return Err(AdminError::Usage(format!(
            "--fee-bps {fee_bps}: the registry allows at most {MAX_FEE_BPS} (10%)"
        )));
    }
    let info = require_owner(registry, owner).await?;
    if info.fee_bps == fee_bps {
        return Ok(Outcome::Unchanged(info));
    }
    let body = registry::set_fee_body(now_millis(), fee_bps)?;
    let what = format!("set_fee {fee_bps}");
    sender.send_op(owner, registry, body, &what).await?;
    let info = sender
        .until(&what, || async {
            Ok(Some(registry.info().await?).filter(|i| i.fee_bps == fee_bps))
        })
        .await?;
    Ok(Outcome::Changed(info))
}

/// `propose_owner`: step one of a transfer; `new_owner` then accepts.
pub async fn propose_owner(
    sender: &Sender,
    owner: &Wallet,
    registry: &Registry,
    new_owner: &ContractAddress,
) -> Result<Outcome<RegistryInfo>, AdminError> {
    let info = require_owner(registry, owner).await?;
    if info.pending_owner.as_ref() == Some(new_owner) {
        return Ok(Outcome::Unchanged(info));
    }
    let body = registry::propose_owner_body(now_millis(), new_owner)?;
    let what = format!("propose_owner {new_owner}");
    sender.send_op(owner, registry, body, &what).await?;
    let info =
        sender
            .until(&what, || async {
                Ok(Some(registry.info().await?)
                    .filter(|i| i.pending_owner.as_ref() == Some(new_owner)))
            })
            .await?;
    Ok(Outcome::Changed(info))
}

/// `accept_owner`, from the proposed owner's wallet: step two.
pub async fn accept_owner(
    sender: &Sender,
    new_owner: &Wallet,
    registry: &Registry,
) -> Result<Outcome<RegistryInfo>, AdminError> {
    let info = registry.info().await?;
    let me = new_owner.address();
    if info.owner == me {
        return Ok(Outcome::Unchanged(info));
    }
    if info.pending_owner != Some(me) {
        return Err(AdminError::NotAllowed(format!(
            "wallet {me} is not the proposed owner of registry {} (pending: {})",
            registry.address(),
            info.pending_owner
                .map_or_else(|| "none".to_string(), |a| a.to_string())
        )));
    }
    let body = registry::accept_owner_body(now_millis())?;
    sender
        .send_op(new_owner, registry, body, "accept_owner")
        .await?;
    let info = sender
        .until("accept_owner", || async {
            Ok(Some(registry.info().await?).filter(|i| i.owner == me && i.pending_owner.is_none()))
        })
        .await?;
    Ok(Outcome::Changed(info))
}

/// `cancel_owner_transfer`: withdraws a proposal not accepted yet.
pub async fn cancel_owner_transfer(
    sender: &Sender,
    owner: &Wallet,
    registry: &Registry,
) -> Result<Outcome<RegistryInfo>, AdminError> {
    let info = require_owner(registry, owner).await?;
    if info.pending_owner.is_none() {
        return Ok(Outcome::Unchanged(info));
    }
    let body = registry::cancel_owner_transfer_body(now_millis())?;
    sender
        .send_op(owner, registry, body, "cancel_owner_transfer")
        .await?;
    let info = sender
        .until("cancel_owner_transfer", || async {
            Ok(Some(registry.info().await?).filter(|i| i.pending_owner.is_none()))
        })
        .await?;
    Ok(Outcome::Changed(info))
}

/// A platform byte's name.
pub fn platform_name(p: u8) -> &'static str {
    match p {
        registry::PLATFORM_SNP => "snp",
        registry::PLATFORM_TDX => "tdx",
        registry::PLATFORM_SIMULATED => "simulated",
        _ => "unknown",
    }
}

/// Everything `show` prints, as JSON (amounts as decimal strings, hashes
/// and digests as hex, addresses raw).
pub fn show_json(
    address: &ContractAddress,
    info: &RegistryInfo,
    releases: &[Release],
    providers: &[ProviderEntry],
) -> serde_json::Value {
    use serde_json::json;
    json!({
        "registry": address.to_string(),
        "owner": info.owner.to_string(),
        "pending_owner": info.pending_owner.map(|a| a.to_string()),
        "treasury": info.treasury.to_string(),
        "fee_bps": info.fee_bps,
        "stake": info.stake.to_string(),
        "payment_code_hash": hex::encode(info.payment_code_hash),
        "payment_code_depth": info.payment_code_depth,
        "release_count": info.release_count,
        "provider_count": info.provider_count,
        "releases": releases.iter().map(|r| json!({
            "manifest_hash": hex::encode(r.manifest_hash),
            "status": if r.is_active() { "active" } else { "revoked" },
            "added_at": r.added_at,
            "revoked_at": r.revoked_at,
            "measurements": r.measurements.iter().map(|(p, d)| json!({
                "platform": platform_name(*p),
                "digest": hex::encode(d),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "providers": providers.iter().map(|p| json!({
            "owner": p.owner.to_string(),
            "payment": p.payment.to_string(),
            "endpoint": p.endpoint,
            "registered_at": p.registered_at,
            "updated_at": p.updated_at,
            "stake": p.stake.to_string(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in codes are the committed builds the contracts' JSON
    /// describes.
    #[test]
    fn built_in_codes_are_the_committed_builds() {
        for (boc, json) in [
            (
                REGISTRY_CODE_BOC,
                include_str!("../../contracts/build/cocoon_registry.json"),
            ),
            (
                PAYMENT_CODE_BOC,
                include_str!("../../contracts/build/cocoon_payment.json"),
            ),
        ] {
            let meta: serde_json::Value = serde_json::from_str(json).unwrap();
            let code = code_from_boc(boc, "code").unwrap();
            assert_eq!(hex::encode(code.hash()), meta["codeHash"].as_str().unwrap());
        }
        let registry = code_from_boc(REGISTRY_CODE_BOC, "code").unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(include_str!("../../contracts/build/cocoon_registry.json"))
                .unwrap();
        assert_eq!(
            u64::from(registry.depth()),
            meta["codeDepth"].as_u64().unwrap()
        );
    }

    #[test]
    fn non_canonical_manifests_are_refused() {
        assert!(matches!(
            release_of_manifest(b"{ \"version\": 1 }"),
            Err(AdminError::Manifest(_))
        ));
        assert_eq!(
            release_of_manifest(b"{}").unwrap_err().exit_code(),
            exit::DATAERR
        );
    }

    #[test]
    fn initial_data_layout() {
        let owner = ContractAddress {
            workchain: 0,
            hash: [1; 32],
        };
        let treasury = ContractAddress {
            workchain: 0,
            hash: [2; 32],
        };
        let payment = code_from_boc(PAYMENT_CODE_BOC, "payment").unwrap();
        let d = initial_data(&owner, &treasury, 250, &payment, 7).unwrap();
        let mut s = d.as_slice();
        assert_eq!(s.load_address().unwrap(), Some(owner));
        assert_eq!(s.load_address().unwrap(), None);
        assert_eq!(s.load_uint(64).unwrap(), 0);
        assert_eq!(s.load_uint(2).unwrap(), 0);
        let c = s.load_ref().unwrap();
        s.end().unwrap();
        let mut c = c.as_slice();
        assert_eq!(c.load_address().unwrap(), Some(treasury));
        assert_eq!(c.load_uint(16).unwrap(), 250);
        assert_eq!(c.load_bytes(32).unwrap(), payment.hash().to_vec());
        assert_eq!(c.load_uint(16).unwrap(), u128::from(payment.depth()));
        assert_eq!(c.load_coins().unwrap(), 7);
        c.end().unwrap();
    }
}
