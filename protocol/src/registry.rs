//! The network registry contract (`contracts/cocoon_registry.tolk`): the
//! bodies of its messages, the payment contract's init data and address as
//! the registry checks them, and (see [`Release`], [`ProviderEntry`],
//! [`RegistryInfo`]) the results of its get-methods.
//!
//! Every message body is `op:uint32 query_id:uint64` then the op's fields
//! (TL-B of `block.tlb` for addresses and `Coins`):
//!
//! ```text
//! add_release            0xc0c0b001  manifest_hash:uint256 measurements:(HashmapE 256 uint8)
//! revoke_release         0xc0c0b002  manifest_hash:uint256
//! set_fee                0xc0c0b003  fee_bps:uint16
//! propose_owner          0xc0c0b004  new_owner:MsgAddressInt
//! accept_owner           0xc0c0b005  (nothing)
//! cancel_owner_transfer  0xc0c0b006  (nothing)
//! register_provider      0xc0c0b011  payment:MsgAddressInt ^endpoint ^payment_init
//! update_provider        0xc0c0b012  ^endpoint (Maybe ^[payment:MsgAddressInt ^payment_init])
//! deregister_provider    0xc0c0b013  (nothing)
//! ```
//!
//! The endpoint is the URL's bytes in a "snake" of cells (whole bytes per
//! cell, at most one reference, to the next cell; 127 bytes per cell here).
//! The measurements map a measurement digest (the key) to its platform byte
//! ([`PLATFORM_SNP`], [`PLATFORM_TDX`], [`PLATFORM_SIMULATED`]).
//!
//! A registration must carry the registry's stake plus 0.05 TON
//! ([`REGISTER_GAS`]); what is left after the transaction goes back, and
//! the stake comes back on deregistration. The payment contract must be at
//! [`payment_contract_address`] of the payment code (hash and depth, as
//! `get_registry` reports them) and [`payment_init_data`] naming the
//! registering wallet, the registry's treasury and its fee.
//!
//! The exit codes of refusals are in [`exit_code_reason`], and all of it in
//! contracts/README.md ("Registry").

use crate::settlement::ContractAddress;
use crate::ton::{Cell, CellBuilder, CellSlice, TonError};

/// Opcode of `add_release`.
pub const OP_ADD_RELEASE: u32 = 0xc0c0_b001;
/// Opcode of `revoke_release`.
pub const OP_REVOKE_RELEASE: u32 = 0xc0c0_b002;
/// Opcode of `set_fee`.
pub const OP_SET_FEE: u32 = 0xc0c0_b003;
/// Opcode of `propose_owner`.
pub const OP_PROPOSE_OWNER: u32 = 0xc0c0_b004;
/// Opcode of `accept_owner`.
pub const OP_ACCEPT_OWNER: u32 = 0xc0c0_b005;
/// Opcode of `cancel_owner_transfer`.
pub const OP_CANCEL_OWNER_TRANSFER: u32 = 0xc0c0_b006;
/// Opcode of `register_provider`.
pub const OP_REGISTER_PROVIDER: u32 = 0xc0c0_b011;
/// Opcode of `update_provider`.
pub const OP_UPDATE_PROVIDER: u32 = 0xc0c0_b012;
/// Opcode of `deregister_provider`.
pub const OP_DEREGISTER_PROVIDER: u32 = 0xc0c0_b013;

/// Event: a release was added (`query_id`, `manifest_hash:uint256`).
pub const EV_RELEASE_ADDED: u32 = 0xc0c0_e001;
/// Event: a release was revoked (`query_id`, `manifest_hash:uint256`, `revoked_at:uint32`).
pub const EV_RELEASE_REVOKED: u32 = 0xc0c0_e002;
/// Event: the fee for later registrations changed (`query_id`, `fee_bps:uint16`).
pub const EV_FEE_CHANGED: u32 = 0xc0c0_e003;
/// Event: an ownership transfer was proposed (`query_id`, `pending_owner`).
pub const EV_OWNER_PROPOSED: u32 = 0xc0c0_e004;
/// Event: the proposed owner accepted (`query_id`, `owner`).
pub const EV_OWNER_CHANGED: u32 = 0xc0c0_e005;
/// Event: the owner cancelled a transfer (`query_id`, the cancelled `pending_owner`).
pub const EV_OWNER_TRANSFER_CANCELLED: u32 = 0xc0c0_e006;
/// Event: a provider registered (`query_id`, `owner_hash:uint256`, `payment`).
pub const EV_PROVIDER_REGISTERED: u32 = 0xc0c0_e011;
/// Event: a provider updated its entry (`query_id`, `owner_hash:uint256`, `payment`).
pub const EV_PROVIDER_UPDATED: u32 = 0xc0c0_e012;
/// Event: a provider deregistered (`query_id`, `owner_hash:uint256`, `stake:Coins`).
pub const EV_PROVIDER_DEREGISTERED: u32 = 0xc0c0_e013;

/// The most network fee the registry allows: 1000 basis points, 10%.
pub const MAX_FEE_BPS: u16 = 1000;
/// Longest endpoint URL, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// What a registration must carry beyond the stake (0.05 TON); the unused
/// part comes back.
pub const REGISTER_GAS: u128 = 50_000_000;
/// Release status: active.
pub const STATUS_ACTIVE: u8 = 1;
/// Release status: revoked.
pub const STATUS_REVOKED: u8 = 2;
/// Measurement platform byte: AMD SEV-SNP.
pub const PLATFORM_SNP: u8 = 1;
/// Measurement platform byte: Intel TDX.
pub const PLATFORM_TDX: u8 = 2;
/// Measurement platform byte: the simulated TEE (tests only).
pub const PLATFORM_SIMULATED: u8 = 0xff;

/// Bytes of a cell's data in an endpoint snake.
const SNAKE_BYTES: usize = 127;

/// What an exit code of the registry means, `None` for codes it does not
/// use.
pub fn exit_code_reason(code: i32) -> Option<&'static str> {
    Some(match code {
        200 => "malformed message body",
        201 => "not the registry's owner",
        202 => "not the proposed owner",
        203 => "no ownership transfer pending",
        204 => "release already listed",
        205 => "unknown release",
        206 => "release already revoked",
        207 => "measurements empty or of an unknown platform",
        208 => "fee above 1000 basis points",
        210 => "not on workchain 0",
        211 => "provider already registered",
        212 => "provider not registered",
        213 => "endpoint is not an http(s) URL of at most 256 bytes",
        214 => "payment init data is not the empty storage naming this provider, the treasury and the fee",
        215 => "payment contract is not at the address of the payment code and that init data",
        216 => "value below the stake plus 0.05 TON",
        0xffff => "unknown op",
        _ => return None,
    })
}

fn header(op: u32, query_id: u64) -> Result<CellBuilder, TonError> {
    let mut b = CellBuilder::new();
    b.store_uint(u128::from(op), 32)?
        .store_uint(u128::from(query_id), 64)?;
    Ok(b)
}

fn store_address(b: &mut CellBuilder, a: &ContractAddress) -> Result<(), TonError> {
    b.store_address(Some(a))?;
    Ok(())
}

/// An endpoint URL as the registry stores it: checked as the contract
/// checks it (`http://` or `https://` and at least one byte more, at most
/// [`MAX_ENDPOINT_BYTES`]), then 127 bytes per cell, each cell referencing
/// the next.
pub fn endpoint_cell(url: &str) -> Result<Cell, TonError> {
    let bytes = url.as_bytes();
    let scheme = if bytes.starts_with(b"https://") {
        8
    } else if bytes.starts_with(b"http://") {
        7
    } else {
        return Err(TonError::OutOfRange(format!(
            "endpoint {url:?}: not http:// or https://"
        )));
    };
    if bytes.len() <= scheme || bytes.len() > MAX_ENDPOINT_BYTES {
        return Err(TonError::OutOfRange(format!(
            "endpoint {url:?}: {} bytes, a host and at most {MAX_ENDPOINT_BYTES} in all",
            bytes.len()
        )));
    }
    let mut next: Option<Cell> = None;
    for chunk in bytes.chunks(SNAKE_BYTES).rev() {
        let mut b = CellBuilder::new();
        b.store_bytes(chunk)?;
        if let Some(n) = next.take() {
            b.store_ref(n)?;
        }
        next = Some(b.build());
    }
    next.ok_or_else(|| TonError::OutOfRange("empty endpoint".into()))
}

/// `add_release`: list a release by its manifest hash with its measurement
/// digests, each with its platform (as
/// [`ReleaseManifest::measurement_digests`](crate::release::ReleaseManifest::measurement_digests)
/// gives them). At least one; a pair given twice is listed once, a digest
/// with two platforms is refused; only the three platform bytes.
pub fn add_release_body(
    query_id: u64,
    manifest_hash: &[u8; 32],
    measurements: &[(u8, [u8; 32])],
) -> Result<Cell, TonError> {
    if measurements.is_empty() {
        return Err(TonError::OutOfRange("a release needs a measurement".into()));
    }
    let mut entries: Vec<([u8; 32], u8)> = Vec::with_capacity(measurements.len());
    for (platform, digest) in measurements {
        if ![PLATFORM_SNP, PLATFORM_TDX, PLATFORM_SIMULATED].contains(platform) {
            return Err(TonError::OutOfRange(format!(
                "unknown measurement platform {platform}"
            )));
        }
        entries.push((*digest, *platform));
    }
    entries.sort();
    entries.dedup();
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(TonError::OutOfRange("a measurement digest twice".into()));
    }
    let root = hashmap_edge(&entries, 0, 256)?;
    let mut b = header(OP_ADD_RELEASE, query_id)?;
    b.store_bytes(manifest_hash)?
        .store_uint(1, 1)? // hme_root
        .store_ref(root)?;
    Ok(b.build())
}

fn key_bit(key: &[u8; 32], i: usize) -> bool {
    key[i / 8] >> (7 - i % 8) & 1 == 1
}

/// Bits of `#<= m`: ⌈log2(m + 1)⌉.
fn len_bits(m: usize) -> usize {
    (usize::BITS - m.leading_zeros()) as usize
}

/// One edge of a `Hashmap m uint8` (tblkch.pdf §3.3.3, `hm_edge`) holding
/// `entries` (sorted, distinct, at least one), whose keys agree on their
/// first `from` bits; `m` key bits are left. The label is the longest
/// common prefix, written in the shortest of `hml_short`, `hml_long`,
/// `hml_same` (short on a tie, then long), as @ton/core writes it, so the
/// cells are bit for bit the ones the JavaScript side builds.
fn hashmap_edge(entries: &[([u8; 32], u8)], from: usize, m: usize) -> Result<Cell, TonError> {
    let first = &entries[0].0;
    let last = &entries[entries.len() - 1].0;
    // Sorted keys: the common prefix of all is that of the first and last.
    let mut n = 0;
    while n < m && (entries.len() == 1 || key_bit(first, from + n) == key_bit(last, from + n)) {
        n += 1;
    }
    let mut b = CellBuilder::new();
    let bits: Vec<bool> = (0..n).map(|i| key_bit(first, from + i)).collect();
    let short = 2 + 2 * n;
    let long = 2 + len_bits(m) + n;
    let same = 3 + len_bits(m);
    let all_same = bits.windows(2).all(|w| w[0] == w[1]);
    let mut best = short;
    let mut kind = 0;
    if long < best {
        best = long;
        kind = 1;
    }
    if all_same && same < best {
        kind = 2;
    }
    match kind {
        0 => {
            b.store_uint(0, 1)?;
            for _ in 0..n {
                b.store_uint(1, 1)?;
            }
            b.store_uint(0, 1)?;
            for &bit in &bits {
                b.store_uint(u128::from(bit), 1)?;
            }
        }
        1 => {
            b.store_uint(0b10, 2)?.store_uint(n as u128, len_bits(m))?;
            for &bit in &bits {
                b.store_uint(u128::from(bit), 1)?;
            }
        }
        _ => {
            b.store_uint(0b11, 2)?
                .store_uint(u128::from(bits.first().copied().unwrap_or(false)), 1)?
                .store_uint(n as u128, len_bits(m))?;
        }
    }
    if entries.len() == 1 {
        b.store_uint(u128::from(entries[0].1), 8)?;
    } else {
        // A fork: the keys split on the bit after the label.
        let at = from + n;
        let split = entries.partition_point(|(k, _)| !key_bit(k, at));
        let rest = m - n - 1;
        b.store_ref(hashmap_edge(&entries[..split], at + 1, rest)?)?
            .store_ref(hashmap_edge(&entries[split..], at + 1, rest)?)?;
    }
    Ok(b.build())
}

/// `revoke_release`.
pub fn revoke_release_body(query_id: u64, manifest_hash: &[u8; 32]) -> Result<Cell, TonError> {
    let mut b = header(OP_REVOKE_RELEASE, query_id)?;
    b.store_bytes(manifest_hash)?;
    Ok(b.build())
}

/// `set_fee`: the fee later registrations must carry, at most
/// [`MAX_FEE_BPS`].
pub fn set_fee_body(query_id: u64, fee_bps: u16) -> Result<Cell, TonError> {
    if fee_bps > MAX_FEE_BPS {
        return Err(TonError::OutOfRange(format!(
            "fee {fee_bps} bps above {MAX_FEE_BPS}"
        )));
    }
    let mut b = header(OP_SET_FEE, query_id)?;
    b.store_uint(u128::from(fee_bps), 16)?;
    Ok(b.build())
}

/// `propose_owner`: step one of handing the registry over.
pub fn propose_owner_body(query_id: u64, new_owner: &ContractAddress) -> Result<Cell, TonError> {
    let mut b = header(OP_PROPOSE_OWNER, query_id)?;
    store_address(&mut b, new_owner)?;
    Ok(b.build())
}

/// `accept_owner`: step two, sent by the proposed owner.
pub fn accept_owner_body(query_id: u64) -> Result<Cell, TonError> {
    Ok(header(OP_ACCEPT_OWNER, query_id)?.build())
}

/// `cancel_owner_transfer`.
pub fn cancel_owner_transfer_body(query_id: u64) -> Result<Cell, TonError> {
    Ok(header(OP_CANCEL_OWNER_TRANSFER, query_id)?.build())
}

/// `register_provider`, sent from the provider's wallet (workchain 0) with
/// the stake plus [`REGISTER_GAS`].
pub fn register_provider_body(
    query_id: u64,
    payment: &ContractAddress,
    endpoint: &str,
    payment_init: Cell,
) -> Result<Cell, TonError> {
    let mut b = header(OP_REGISTER_PROVIDER, query_id)?;
    store_address(&mut b, payment)?;
    b.store_ref(endpoint_cell(endpoint)?)?
        .store_ref(payment_init)?;
    Ok(b.build())
}

/// `update_provider`: a new endpoint and, optionally, a new payment
/// contract with its init data.
pub fn update_provider_body(
    query_id: u64,
    endpoint: &str,
    payment: Option<(&ContractAddress, Cell)>,
) -> Result<Cell, TonError> {
    let mut b = header(OP_UPDATE_PROVIDER, query_id)?;
    b.store_ref(endpoint_cell(endpoint)?)?;
    match payment {
        None => {
            b.store_uint(0, 1)?;
        }
        Some((address, init)) => {
            let mut change = CellBuilder::new();
            store_address(&mut change, address)?;
            change.store_ref(init)?;
            b.store_uint(1, 1)?.store_ref(change.build())?;
        }
    }
    Ok(b.build())
}

/// `deregister_provider`: the entry goes and the stake comes back.
pub fn deregister_provider_body(query_id: u64) -> Result<Cell, TonError> {
    Ok(header(OP_DEREGISTER_PROVIDER, query_id)?.build())
}

/// The payment contract's init data (`struct Storage` of
/// `contracts/cocoon_payment.tolk`, empty): `provider:MsgAddressInt
/// provider_balance:Coins(0) withdraw_delay:uint32 clients:(HashmapE)=0
/// paid:(HashmapE)=0 treasury:MsgAddressInt fee_bps:uint16
/// treasury_balance:Coins(0) treasury_paid:Coins(0)`. The only storage the
/// registry accepts for a provider.
pub fn payment_init_data(
    provider: &ContractAddress,
    withdraw_delay: u32,
    treasury: &ContractAddress,
    fee_bps: u16,
) -> Result<Cell, TonError> {
    let mut b = CellBuilder::new();
    store_address(&mut b, provider)?;
    b.store_coins(0)?
        .store_uint(u128::from(withdraw_delay), 32)?
        .store_uint(0, 2)?;
    store_address(&mut b, treasury)?;
    b.store_uint(u128::from(fee_bps), 16)?
        .store_coins(0)?
        .store_coins(0)?;
    Ok(b.build())
}

/// The address (workchain 0) of the contract whose StateInit is
/// `b{00110} ^code ^data` with code of this hash and depth: the
/// representation hash (tvm.pdf §3.1.4–3.1.5) SHA-256(d1 = 2, d2 = 1, the
/// data byte 0x34 (5 bits and the completion tag), depth(code) u16,
/// depth(data) u16, hash(code), hash(data)). The registry computes the
/// same from `payment_code_hash` and `payment_code_depth`.
pub fn payment_contract_address(
    code_hash: &[u8; 32],
    code_depth: u16,
    data: &Cell,
) -> ContractAddress {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([0x02, 0x01, 0x34]);
    h.update(code_depth.to_be_bytes());
    h.update(data.depth().to_be_bytes());
    h.update(code_hash);
    h.update(data.hash());
    ContractAddress {
        workchain: 0,
        hash: h.finalize().into(),
    }
}

// ---------------------------------------------------------------------------
// Reading: get-method results
// ---------------------------------------------------------------------------

/// Why a get-method result of the registry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A cell or bag of cells that does not follow its layout.
    #[error("registry data: {0}")]
    Ton(#[from] TonError),
    /// The stack does not have the shape the get-method returns.
    #[error("registry get-method result: {0}")]
    Stack(String),
}

/// One value of a get-method's result stack, as the parsers here take it:
/// `cocoon_chain::StackValue` maps onto it one to one (`Int(TvmInt {
/// negative, magnitude })` to `Int { negative, magnitude }`, `Cell(boc)`,
/// `Slice(boc)`, `Null`). Cells and slices are single-root bags of cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackItem {
    /// An integer: sign and 32 big-endian magnitude bytes.
    Int {
        /// True when negative.
        negative: bool,
        /// The magnitude, big-endian.
        magnitude: [u8; 32],
    },
    /// A cell.
    Cell(Vec<u8>),
    /// A slice (a whole cell).
    Slice(Vec<u8>),
    /// `null`.
    Null,
}

fn stack_err(msg: impl Into<String>) -> RegistryError {
    RegistryError::Stack(msg.into())
}

fn want_len(stack: &[StackItem], n: usize, method: &str) -> Result<(), RegistryError> {
    if stack.len() != n {
        return Err(stack_err(format!(
            "{method}: {} values, {n} expected",
            stack.len()
        )));
    }
    Ok(())
}

/// A non-negative integer that fits `bits` bits.
fn int_of(item: &StackItem, bits: usize, what: &str) -> Result<u128, RegistryError> {
    match item {
        StackItem::Int {
            negative: false,
            magnitude,
        } if magnitude[..16].iter().all(|&b| b == 0) => {
            let v = u128::from_be_bytes(magnitude[16..].try_into().unwrap_or([0xff; 16]));
            if bits < 128 && v >> bits != 0 {
                return Err(stack_err(format!("{what}: {v} does not fit {bits} bits")));
            }
            Ok(v)
        }
        StackItem::Int { .. } => Err(stack_err(format!("{what}: out of range"))),
        other => Err(stack_err(format!(
            "{what}: an integer expected, got {other:?}"
        ))),
    }
}

fn uint256_of(item: &StackItem, what: &str) -> Result<[u8; 32], RegistryError> {
    match item {
        StackItem::Int {
            negative: false,
            magnitude,
        } => Ok(*magnitude),
        other => Err(stack_err(format!(
            "{what}: a non-negative integer expected, got {other:?}"
        ))),
    }
}

/// The `found` flag of get_release/get_provider: -1 or 0.
fn found_of(item: &StackItem, what: &str) -> Result<bool, RegistryError> {
    match item {
        StackItem::Int {
            negative: true,
            magnitude,
        } if magnitude[..31].iter().all(|&b| b == 0) && magnitude[31] == 1 => Ok(true),
        StackItem::Int {
            negative: false,
            magnitude,
        } if magnitude.iter().all(|&b| b == 0) => Ok(false),
        other => Err(stack_err(format!(
            "{what}: -1 or 0 expected, got {other:?}"
        ))),
    }
}

fn cell_of(item: &StackItem, what: &str) -> Result<Option<Cell>, RegistryError> {
    match item {
        StackItem::Null => Ok(None),
        StackItem::Cell(boc) | StackItem::Slice(boc) => Ok(Some(Cell::from_boc(boc)?)),
        other => Err(stack_err(format!("{what}: a cell expected, got {other:?}"))),
    }
}

/// An address returned as a slice: exactly `MsgAddress`, nothing after it.
fn address_of(item: &StackItem, what: &str) -> Result<Option<ContractAddress>, RegistryError> {
    match item {
        StackItem::Null => Ok(None),
        StackItem::Slice(boc) | StackItem::Cell(boc) => {
            let mut s = Cell::from_boc(boc)?.as_slice();
            let a = s.load_address()?;
            s.end()?;
            Ok(a)
        }
        other => Err(stack_err(format!(
            "{what}: an address slice expected, got {other:?}"
        ))),
    }
}

fn some_address(a: Option<ContractAddress>, what: &str) -> Result<ContractAddress, RegistryError> {
    a.ok_or_else(|| stack_err(format!("{what}: addr_none where an address is required")))
}

/// What `get_registry()` returns:
///
/// ```text
/// owner:slice(MsgAddressInt)  pending_owner:slice(MsgAddressInt)|null
/// treasury:slice(MsgAddressInt)  fee_bps:int  payment_code_hash:int
/// release_count:int  provider_count:int  payment_code_depth:int  stake:int
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryInfo {
    /// Who adds and revokes releases and sets the fee.
    pub owner: ContractAddress,
    /// The proposed next owner, until it accepts or the owner cancels.
    pub pending_owner: Option<ContractAddress>,
    /// Where network fees go (every registered payment contract names it).
    pub treasury: ContractAddress,
    /// The network fee registrations must carry now, in basis points.
    pub fee_bps: u16,
    /// Representation hash of the payment contract's code.
    pub payment_code_hash: [u8; 32],
    /// Releases listed (active and revoked).
    pub release_count: u32,
    /// Providers registered.
    pub provider_count: u32,
    /// Depth of the payment contract's code cell (for its StateInit hash).
    pub payment_code_depth: u16,
    /// Nanoton a registration stakes (returned on deregistration).
    pub stake: u128,
}

impl RegistryInfo {
    /// From `get_registry()`'s nine values. A fee above [`MAX_FEE_BPS`] is
    /// refused: such a registry registers nobody, and a client should not
    /// trust its list.
    pub fn from_stack(stack: &[StackItem]) -> Result<RegistryInfo, RegistryError> {
        want_len(stack, 9, "get_registry")?;
        let fee_bps = int_of(&stack[3], 16, "fee_bps")? as u16;
        if fee_bps > MAX_FEE_BPS {
            return Err(stack_err(format!(
                "fee_bps {fee_bps} above the bound {MAX_FEE_BPS}"
            )));
        }
        Ok(RegistryInfo {
            owner: some_address(address_of(&stack[0], "owner")?, "owner")?,
            pending_owner: address_of(&stack[1], "pending_owner")?,
            treasury: some_address(address_of(&stack[2], "treasury")?, "treasury")?,
            fee_bps,
            payment_code_hash: uint256_of(&stack[4], "payment_code_hash")?,
            release_count: int_of(&stack[5], 32, "release_count")? as u32,
            provider_count: int_of(&stack[6], 32, "provider_count")? as u32,
            payment_code_depth: int_of(&stack[7], 16, "payment_code_depth")? as u16,
            stake: int_of(&stack[8], 120, "stake")?,
        })
    }

    /// The address the payment contract of `provider` (with this
    /// withdrawal delay) must have to be registered here now.
    pub fn payment_address_for(
        &self,
        provider: &ContractAddress,
        withdraw_delay: u32,
    ) -> Result<ContractAddress, TonError> {
        let init = payment_init_data(provider, withdraw_delay, &self.treasury, self.fee_bps)?;
        Ok(payment_contract_address(
            &self.payment_code_hash,
            self.payment_code_depth,
            &init,
        ))
    }
}

/// A listed release: `status:uint2 added_at:uint32 revoked_at:uint32
/// measurements:(HashmapE 256 uint8)` under its manifest hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// SHA-256 of the canonical release manifest (the key).
    pub manifest_hash: [u8; 32],
    /// [`STATUS_ACTIVE`] or [`STATUS_REVOKED`].
    pub status: u8,
    /// When it was added (unix time).
    pub added_at: u32,
    /// When it was revoked, 0 while active.
    pub revoked_at: u32,
    /// `(platform, measurement digest)`, in ascending digest order.
    pub measurements: Vec<(u8, [u8; 32])>,
}

impl Release {
    /// Clients accept evidence of active releases only.
    pub fn is_active(&self) -> bool {
        self.status == STATUS_ACTIVE
    }

    /// A release's value in the releases dictionary.
    fn from_value(manifest_hash: [u8; 32], mut v: CellSlice) -> Result<Release, RegistryError> {
        let status = v.load_uint(2)? as u8;
        let added_at = v.load_uint(32)? as u32;
        let revoked_at = v.load_uint(32)? as u32;
        let root = v.load_maybe_ref()?;
        v.end()?;
        let measurements = match &root {
            None => Vec::new(),
            Some(root) => parse_measurements(root)?,
        };
        check_release(status, revoked_at, &measurements)?;
        Ok(Release {
            manifest_hash,
            status,
            added_at,
            revoked_at,
            measurements,
        })
    }

    /// From `get_release(hash)`: `found:int(-1|0) status:int added_at:int
    /// revoked_at:int measurements:cell|null` (`None` when not listed).
    pub fn from_get_release(
        manifest_hash: [u8; 32],
        stack: &[StackItem],
    ) -> Result<Option<Release>, RegistryError> {
        want_len(stack, 5, "get_release")?;
        if !found_of(&stack[0], "found")? {
            return Ok(None);
        }
        let status = int_of(&stack[1], 2, "status")? as u8;
        let added_at = int_of(&stack[2], 32, "added_at")? as u32;
        let revoked_at = int_of(&stack[3], 32, "revoked_at")? as u32;
        let measurements = match cell_of(&stack[4], "measurements")? {
            None => Vec::new(),
            Some(root) => parse_measurements(&root)?,
        };
        check_release(status, revoked_at, &measurements)?;
        Ok(Some(Release {
            manifest_hash,
            status,
            added_at,
            revoked_at,
            measurements,
        }))
    }
}

/// What the contract guarantees of every release it lists.
fn check_release(
    status: u8,
    revoked_at: u32,
    measurements: &[(u8, [u8; 32])],
) -> Result<(), RegistryError> {
    if status != STATUS_ACTIVE && status != STATUS_REVOKED {
        return Err(stack_err(format!("release status {status}")));
    }
    if (status == STATUS_ACTIVE) != (revoked_at == 0) {
        return Err(stack_err(
            "a release's revocation time disagrees with its status",
        ));
    }
    if measurements.is_empty() {
        return Err(stack_err("a release without measurements"));
    }
    Ok(())
}

fn key32(key: &[u8]) -> Result<[u8; 32], RegistryError> {
    key.try_into()
        .map_err(|_| stack_err(format!("a {}-byte dictionary key", key.len())))
}

/// `HashmapE 256 uint8` (root cell): digest → platform, only the three
/// platform bytes.
fn parse_measurements(root: &Cell) -> Result<Vec<(u8, [u8; 32])>, RegistryError> {
    let mut out = Vec::new();
    for (key, mut v) in crate::ton::dict::parse_hashmap(root, 256)? {
        let platform = v.load_uint(8)? as u8;
        v.end()?;
        if ![PLATFORM_SNP, PLATFORM_TDX, PLATFORM_SIMULATED].contains(&platform) {
            return Err(stack_err(format!("measurement platform {platform}")));
        }
        out.push((platform, key32(&key)?));
    }
    Ok(out)
}

/// The releases dictionary (`get_releases()`'s cell; `None` for null),
/// in ascending manifest-hash order.
pub fn parse_releases(root: Option<&Cell>) -> Result<Vec<Release>, RegistryError> {
    let Some(root) = root else {
        return Ok(Vec::new());
    };
    crate::ton::dict::parse_hashmap(root, 256)?
        .into_iter()
        .map(|(k, v)| Release::from_value(key32(&k)?, v))
        .collect()
}

/// `get_releases()`: one value, the dictionary's root cell or null.
pub fn releases_from_stack(stack: &[StackItem]) -> Result<Vec<Release>, RegistryError> {
    want_len(stack, 1, "get_releases")?;
    parse_releases(cell_of(&stack[0], "releases")?.as_ref())
}

/// A registered provider: `payment:MsgAddressInt ^endpoint
/// registered_at:uint32 updated_at:uint32 stake:Coins` under the owner
/// wallet's address hash (workchain 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEntry {
    /// The provider's wallet (workchain 0; its hash is the key).
    pub owner: ContractAddress,
    /// Its payment contract.
    pub payment: ContractAddress,
    /// Its endpoint URL (`http://` or `https://`, at most 256 bytes).
    pub endpoint: String,
    /// When it registered (unix time).
    pub registered_at: u32,
    /// When it last changed its entry.
    pub updated_at: u32,
    /// Its stake, in nanoton.
    pub stake: u128,
}

impl ProviderEntry {
    fn from_value(owner_hash: [u8; 32], mut v: CellSlice) -> Result<ProviderEntry, RegistryError> {
        let payment = some_address(v.load_address()?, "payment")?;
        let endpoint = endpoint_of(&v.load_ref()?)?;
        let registered_at = v.load_uint(32)? as u32;
        let updated_at = v.load_uint(32)? as u32;
        let stake = v.load_coins()?;
        v.end()?;
        Ok(ProviderEntry {
            owner: ContractAddress {
                workchain: 0,
                hash: owner_hash,
            },
            payment,
            endpoint,
            registered_at,
            updated_at,
            stake,
        })
    }

    /// From `get_provider(owner_hash)`: `found:int(-1|0)
    /// payment:slice|null endpoint:cell|null registered_at:int
    /// updated_at:int stake:int` (`None` when not registered).
    pub fn from_get_provider(
        owner_hash: [u8; 32],
        stack: &[StackItem],
    ) -> Result<Option<ProviderEntry>, RegistryError> {
        want_len(stack, 6, "get_provider")?;
        if !found_of(&stack[0], "found")? {
            return Ok(None);
        }
        let payment = some_address(address_of(&stack[1], "payment")?, "payment")?;
        let endpoint = cell_of(&stack[2], "endpoint")?
            .ok_or_else(|| stack_err("endpoint: null for a registered provider"))?;
        Ok(Some(ProviderEntry {
            owner: ContractAddress {
                workchain: 0,
                hash: owner_hash,
            },
            payment,
            endpoint: endpoint_of(&endpoint)?,
            registered_at: int_of(&stack[3], 32, "registered_at")? as u32,
            updated_at: int_of(&stack[4], 32, "updated_at")? as u32,
            stake: int_of(&stack[5], 120, "stake")?,
        }))
    }
}

/// An endpoint snake: whole bytes per cell, at least one, at most one
/// reference onwards, at most [`MAX_ENDPOINT_BYTES`] in all, UTF-8 with
/// the `http://` or `https://` scheme and a host (what the contract
/// checks, checked again here: the answer comes from an untrusted API).
fn endpoint_of(cell: &Cell) -> Result<String, RegistryError> {
    let mut bytes = Vec::new();
    let mut s = cell.as_slice();
    loop {
        let bits = s.remaining_bits();
        if bits == 0 || bits % 8 != 0 || s.remaining_refs() > 1 {
            return Err(stack_err("endpoint: not a snake of whole bytes"));
        }
        if bytes.len() + bits / 8 > MAX_ENDPOINT_BYTES {
            return Err(stack_err("endpoint: over 256 bytes"));
        }
        bytes.extend(s.load_bytes(bits / 8)?);
        if s.remaining_refs() == 0 {
            break;
        }
        s = s.load_ref()?.as_slice();
    }
    let url = String::from_utf8(bytes).map_err(|_| stack_err("endpoint: not UTF-8"))?;
    endpoint_cell(&url)?;
    Ok(url)
}

/// The providers dictionary (`get_providers()`'s cell; `None` for null),
/// in ascending owner-hash order.
pub fn parse_providers(root: Option<&Cell>) -> Result<Vec<ProviderEntry>, RegistryError> {
    let Some(root) = root else {
        return Ok(Vec::new());
    };
    crate::ton::dict::parse_hashmap(root, 256)?
        .into_iter()
        .map(|(k, v)| ProviderEntry::from_value(key32(&k)?, v))
        .collect()
}

/// `get_providers()`: one value, the dictionary's root cell or null.
pub fn providers_from_stack(stack: &[StackItem]) -> Result<Vec<ProviderEntry>, RegistryError> {
    want_len(stack, 1, "get_providers")?;
    parse_providers(cell_of(&stack[0], "providers")?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(b: u8) -> ContractAddress {
        ContractAddress {
            workchain: 0,
            hash: [b; 32],
        }
    }

    #[test]
    fn endpoint_rules() {
        assert!(endpoint_cell("https://a").is_ok());
        assert!(endpoint_cell("http://a").is_ok());
        for bad in ["https://", "http://", "ftp://a", "HTTPS://a", ""] {
            assert!(endpoint_cell(bad).is_err(), "{bad}");
        }
        let long = format!("https://{}", "a".repeat(248));
        let c = endpoint_cell(&long).unwrap();
        assert_eq!(c.bit_len(), 127 * 8);
        assert_eq!(c.refs()[0].bit_len(), 127 * 8);
        assert_eq!(c.refs()[0].refs()[0].bit_len(), 2 * 8);
        assert!(c.refs()[0].refs()[0].refs().is_empty());
        assert!(endpoint_cell(&format!("{long}a")).is_err());
    }

    #[test]
    fn release_body_checks() {
        assert!(add_release_body(0, &[1; 32], &[]).is_err());
        assert!(add_release_body(0, &[1; 32], &[(3, [0; 32])]).is_err());
        assert!(add_release_body(0, &[1; 32], &[(1, [0; 32]), (2, [0; 32])]).is_err());
        assert!(add_release_body(0, &[1; 32], &[(1, [0; 32]), (2, [1; 32])]).is_ok());
        assert_eq!(
            add_release_body(0, &[1; 32], &[(1, [0; 32]), (1, [0; 32])]).unwrap(),
            add_release_body(0, &[1; 32], &[(1, [0; 32])]).unwrap()
        );
        assert!(set_fee_body(0, 1001).is_err());
        assert!(set_fee_body(0, 1000).is_ok());
    }

    #[test]
    fn labels() {
        // One entry: the whole 256-bit key is the label; long (2 + 9 + 256)
        // beats short (2 + 512), unless the key is all one bit (same, 12).
        let one = hashmap_edge(&[([0xab; 32], 1)], 0, 256).unwrap();
        assert_eq!(one.bit_len(), 2 + 9 + 256 + 8);
        let zeros = hashmap_edge(&[([0; 32], 1)], 0, 256).unwrap();
        assert_eq!(zeros.bit_len(), 3 + 9 + 8);
        assert_eq!(len_bits(256), 9);
        assert_eq!(len_bits(255), 8);
        assert_eq!(len_bits(0), 0);
        assert_eq!(len_bits(1), 1);
    }

    #[test]
    fn payment_init_layout() {
        let c = payment_init_data(&addr(1), 3600, &addr(2), 100).unwrap();
        assert_eq!(c.bit_len(), 267 + 4 + 32 + 2 + 267 + 16 + 4 + 4);
        assert!(c.refs().is_empty());
        // The address changes with every field.
        let a = payment_contract_address(&[9; 32], 7, &c);
        for other in [
            payment_init_data(&addr(3), 3600, &addr(2), 100).unwrap(),
            payment_init_data(&addr(1), 3601, &addr(2), 100).unwrap(),
            payment_init_data(&addr(1), 3600, &addr(3), 100).unwrap(),
            payment_init_data(&addr(1), 3600, &addr(2), 101).unwrap(),
        ] {
            assert_ne!(payment_contract_address(&[9; 32], 7, &other), a);
        }
        assert_ne!(payment_contract_address(&[9; 32], 8, &c), a);
        assert_eq!(a.workchain, 0);
    }
}
