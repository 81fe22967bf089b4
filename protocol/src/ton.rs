//! TON cells and bags of cells, as far as settlement needs them: building
//! ordinary cells and serialising a tree of them as a standard BOC, plus
//! the payment contract's message bodies.
//!
//! Layouts follow the TON whitepapers: a cell holds up to 1023 data bits
//! and 4 references (tvm.pdf §3.1); its descriptor bytes are `d1 = refs +
//! 8·exotic + 32·level` and `d2 = ⌈bits/8⌉ + ⌊bits/8⌋`, and a partial last
//! byte is completed with a `1` bit then zeros (tvm.pdf §3.1.4–3.1.5); the
//! bag-of-cells serialisation is `serialized_boc` of tblkch.pdf §5.3.2 with
//! magic `b5ee9c72`, one root, no index and a CRC32-C (Castagnoli) trailer.
//! Only ordinary cells are produced (no exotic cells, level 0).

use crate::settlement::{ContractAddress, SignedAuthorization, SignedTab};

pub mod block;
mod boc;
pub mod dict;
mod slice;

pub use boc::BocLimits;
pub use slice::CellSlice;

/// Opcode of a deposit.
pub const OP_DEPOSIT: u32 = 0xc0c0_a001;
/// Opcode of a claim.
pub const OP_CLAIM: u32 = 0xc0c0_a002;
/// Opcode of a provider withdrawal.
pub const OP_PROVIDER_WITHDRAW: u32 = 0xc0c0_a003;
/// Opcode of a client's withdrawal request.
pub const OP_CLIENT_WITHDRAW_REQUEST: u32 = 0xc0c0_a004;
/// Opcode of a client's withdrawal payout.
pub const OP_CLIENT_WITHDRAW_FINISH: u32 = 0xc0c0_a005;

/// Most data bits of a cell.
pub const MAX_BITS: usize = 1023;
/// Most references of a cell.
pub const MAX_REFS: usize = 4;

/// Why a cell cannot be built, parsed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TonError {
    /// More than 1023 bits.
    #[error("cell overflow: {0} bits, at most 1023")]
    TooManyBits(usize),
    /// More than 4 references.
    #[error("cell overflow: more than 4 references")]
    TooManyRefs,
    /// A value does not fit its field.
    #[error("{0}")]
    OutOfRange(String),
    /// A bag of cells that is not a well-formed, single-root bag of
    /// ordinary cells within the limits.
    #[error("malformed bag of cells: {0}")]
    BadBoc(String),
    /// A read past the end of a slice.
    #[error("cell underflow: {wanted} more {what} wanted, {left} left")]
    Underflow {
        /// "bits" or "references".
        what: &'static str,
        /// How many the read wanted.
        wanted: usize,
        /// How many were left.
        left: usize,
    },
    /// A slice's contents do not follow the TL-B scheme it is read as.
    #[error("{0}")]
    Malformed(String),
}

/// Deepest cell tree [`Cell::from_boc`] accepts by default (the node's own
/// limit on cell depth).
pub const MAX_DEPTH: u16 = 1024;

/// An ordinary cell: data bits and references.
///
/// Cheap to clone (shared), immutable; the representation hash and depth
/// are computed once, when the cell is made, so hashing a tree with shared
/// subtrees costs one SHA-256 per distinct cell. Two cells are equal when
/// their representation hashes are.
#[derive(Clone)]
pub struct Cell(std::sync::Arc<CellInner>);

struct CellInner {
    data: Vec<u8>,
    bits: usize,
    refs: Vec<Cell>,
    hash: [u8; 32],
    depth: u16,
}

impl PartialEq for Cell {
    fn eq(&self, other: &Cell) -> bool {
        self.0.hash == other.0.hash
    }
}

impl Eq for Cell {}

impl std::hash::Hash for Cell {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash.hash(state)
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not recursive: a shared subtree would print once per path.
        f.debug_struct("Cell")
            .field("bits", &self.0.bits)
            .field("data", &hex::encode(&self.0.data))
            .field(
                "refs",
                &self
                    .0
                    .refs
                    .iter()
                    .map(|r| hex::encode(r.hash()))
                    .collect::<Vec<_>>(),
            )
            .field("hash", &hex::encode(self.0.hash))
            .finish()
    }
}

impl Cell {
    /// A cell of `bits` data bits (`data` left-aligned, exactly
    /// ⌈bits/8⌉ bytes; unused low bits are cleared) and `refs`.
    pub fn new(mut data: Vec<u8>, bits: usize, refs: Vec<Cell>) -> Result<Cell, TonError> {
        if bits > MAX_BITS {
            return Err(TonError::TooManyBits(bits));
        }
        if refs.len() > MAX_REFS {
            return Err(TonError::TooManyRefs);
        }
        if data.len() != bits.div_ceil(8) {
            return Err(TonError::OutOfRange(format!(
                "{} data bytes for {bits} bits",
                data.len()
            )));
        }
        if bits % 8 != 0 {
            if let Some(last) = data.last_mut() {
                *last &= 0xffu8 << (8 - bits % 8);
            }
        }
        Ok(Cell::from_parts(data, bits, refs))
    }

    /// A cell from checked parts: at most 1023 bits, 4 references, data of
    /// ⌈bits/8⌉ bytes with the unused low bits clear.
    fn from_parts(data: Vec<u8>, bits: usize, refs: Vec<Cell>) -> Cell {
        // Depth saturates at u16::MAX; the parser refuses anything over
        // MAX_DEPTH before it gets near.
        let depth = refs
            .iter()
            .map(|r| r.depth().saturating_add(1))
            .max()
            .unwrap_or(0);
        let hash = representation_hash(&data, bits, &refs);
        Cell(std::sync::Arc::new(CellInner {
            data,
            bits,
            refs,
            hash,
            depth,
        }))
    }

    /// Data bits.
    pub fn bit_len(&self) -> usize {
        self.0.bits
    }

    /// The data, the last byte's unused low bits zero.
    pub fn data(&self) -> &[u8] {
        &self.0.data
    }

    /// References.
    pub fn refs(&self) -> &[Cell] {
        &self.0.refs
    }

    fn descriptors(&self) -> [u8; 2] {
        descriptors(self.0.bits, self.0.refs.len())
    }

    /// The data with the completion tag when the last byte is partial.
    fn padded_data(&self) -> Vec<u8> {
        padded(&self.0.data, self.0.bits)
    }

    /// Depth: 0 for a leaf, else 1 + the deepest reference.
    pub fn depth(&self) -> u16 {
        self.0.depth
    }

    /// The representation hash (tvm.pdf §3.1.5): SHA-256 of the
    /// descriptors, the padded data, each reference's depth (u16 BE) and
    /// each reference's hash.
    pub fn hash(&self) -> [u8; 32] {
        self.0.hash
    }

    /// A slice reading this cell from its start.
    pub fn as_slice(&self) -> CellSlice {
        CellSlice::new(self.clone())
    }

    /// Serialise as a single-root bag of cells with a CRC32-C, identical
    /// subtrees stored once, cells in an order where every reference points
    /// forward (root first).
    ///
    /// The order is the one `@ton/core` writes (so the bytes are the same):
    /// the distinct cells, then a depth-first post-order from the root that
    /// visits a cell's references last to first, reversed.
    pub fn to_boc(&self) -> Vec<u8> {
        // Distinct cells by hash.
        let mut index: std::collections::HashMap<[u8; 32], usize> = Default::default();
        let mut post: Vec<Cell> = Vec::new();
        // Iterative post-order: (cell, next reference to visit, counting
        // down from the last).
        let mut seen: std::collections::HashSet<[u8; 32]> = Default::default();
        let mut stack: Vec<(Cell, usize)> = vec![(self.clone(), self.refs().len())];
        seen.insert(self.hash());
        while let Some((c, next)) = stack.pop() {
            if next == 0 {
                post.push(c);
                continue;
            }
            let r = c.refs()[next - 1].clone();
            stack.push((c, next - 1));
            if seen.insert(r.hash()) {
                let n = r.refs().len();
                stack.push((r, n));
            }
        }
        post.reverse();
        for (i, c) in post.iter().enumerate() {
            index.insert(c.hash(), i);
        }
        let n = post.len();
        let size_bytes = bytes_for(n as u64);
        let mut body = Vec::new();
        for c in &post {
            body.extend_from_slice(&c.descriptors());
            body.extend_from_slice(&c.padded_data());
            for r in c.refs() {
                push_be(&mut body, index[&r.hash()] as u64, size_bytes);
            }
        }
        let off_bytes = bytes_for(body.len() as u64);
        let mut out = Vec::with_capacity(body.len() + 32);
        out.extend_from_slice(&BOC_MAGIC);
        // has_idx 0, has_crc32c 1, has_cache_bits 0, flags 0, size.
        out.push(0x40 | size_bytes as u8);
        out.push(off_bytes as u8);
        push_be(&mut out, n as u64, size_bytes);
        push_be(&mut out, 1, size_bytes); // roots
        push_be(&mut out, 0, size_bytes); // absent
        push_be(&mut out, body.len() as u64, off_bytes);
        push_be(&mut out, 0, size_bytes); // root index
        out.extend_from_slice(&body);
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// `d1 = refs` (ordinary, level 0) and `d2 = ⌈bits/8⌉ + ⌊bits/8⌋`
/// (tvm.pdf §3.1.4).
fn descriptors(bits: usize, refs: usize) -> [u8; 2] {
    [refs as u8, (bits.div_ceil(8) + bits / 8) as u8]
}

/// The data with the completion tag (a `1` then zeros) when the last byte
/// is partial (tvm.pdf §3.1.4).
fn padded(data: &[u8], bits: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    if bits % 8 != 0 {
        if let Some(last) = d.last_mut() {
            *last |= 0x80 >> (bits % 8);
        }
    }
    d
}

fn representation_hash(data: &[u8], bits: usize, refs: &[Cell]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(descriptors(bits, refs.len()));
    if bits % 8 == 0 {
        h.update(data);
    } else {
        h.update(padded(data, bits));
    }
    for r in refs {
        h.update(r.depth().to_be_bytes());
    }
    for r in refs {
        h.update(r.hash());
    }
    h.finalize().into()
}

/// Magic of `serialized_boc` (tblkch.pdf §5.3.2).
pub const BOC_MAGIC: [u8; 4] = [0xb5, 0xee, 0x9c, 0x72];

fn bytes_for(v: u64) -> usize {
    let mut n = 1;
    while n < 8 && v >> (8 * n) != 0 {
        n += 1;
    }
    n
}

fn push_be(out: &mut Vec<u8>, v: u64, n: usize) {
    out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), a byte at a
/// time through a table built at compile time.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut k = 0;
            while k < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                k += 1;
            }
            t[i] = crc;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = (crc >> 8) ^ TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

/// Builds one cell, bit by bit.
#[derive(Debug, Clone, Default)]
pub struct CellBuilder {
    data: Vec<u8>,
    bits: usize,
    refs: Vec<Cell>,
}

impl CellBuilder {
    /// An empty builder.
    pub fn new() -> CellBuilder {
        CellBuilder::default()
    }

    fn push_bit(&mut self, bit: bool) -> Result<(), TonError> {
        if self.bits >= MAX_BITS {
            return Err(TonError::TooManyBits(self.bits + 1));
        }
        if self.bits % 8 == 0 {
            self.data.push(0);
        }
        if bit {
            if let Some(last) = self.data.last_mut() {
                *last |= 0x80 >> (self.bits % 8);
            }
        }
        self.bits += 1;
        Ok(())
    }

    /// An unsigned integer in `bits` bits (at most 128), big-endian.
    pub fn store_uint(&mut self, value: u128, bits: usize) -> Result<&mut Self, TonError> {
        if bits > 128 || (bits < 128 && value >> bits != 0) {
            return Err(TonError::OutOfRange(format!(
                "{value} does not fit in {bits} bits"
            )));
        }
        for i in (0..bits).rev() {
            self.push_bit((value >> i) & 1 == 1)?;
        }
        Ok(self)
    }

    /// Whole bytes.
    pub fn store_bytes(&mut self, bytes: &[u8]) -> Result<&mut Self, TonError> {
        if self.bits + 8 * bytes.len() > MAX_BITS {
            return Err(TonError::TooManyBits(self.bits + 8 * bytes.len()));
        }
        for &b in bytes {
            self.store_uint(u128::from(b), 8)?;
        }
        Ok(self)
    }

    /// `Coins` (`VarUInteger 16`, tblkch.pdf §3.1.5): a 4-bit byte length,
    /// then the value in that many bytes.
    pub fn store_coins(&mut self, value: u128) -> Result<&mut Self, TonError> {
        if value >> 120 != 0 {
            return Err(TonError::OutOfRange(format!(
                "{value} nanoton does not fit in Coins (< 2^120)"
            )));
        }
        let len = if value == 0 {
            0
        } else {
            (128 - value.leading_zeros() as usize).div_ceil(8)
        };
        self.store_uint(len as u128, 4)?;
        self.store_uint(value, 8 * len)
    }

    /// One bit.
    pub fn store_bit(&mut self, bit: bool) -> Result<&mut Self, TonError> {
        self.push_bit(bit)?;
        Ok(self)
    }

    /// The first `bits` bits of `data` (left-aligned).
    pub fn store_bits(&mut self, data: &[u8], bits: usize) -> Result<&mut Self, TonError> {
        if bits > 8 * data.len() {
            return Err(TonError::OutOfRange(format!(
                "{bits} bits from {} bytes",
                data.len()
            )));
        }
        if self.bits + bits > MAX_BITS {
            return Err(TonError::TooManyBits(self.bits + bits));
        }
        for i in 0..bits {
            self.push_bit((data[i / 8] >> (7 - i % 8)) & 1 == 1)?;
        }
        Ok(self)
    }

    /// A signed integer in `bits` bits (1 to 128), two's complement.
    pub fn store_int(&mut self, value: i128, bits: usize) -> Result<&mut Self, TonError> {
        if !(1..=128).contains(&bits)
            || (bits < 128 && (value < -(1i128 << (bits - 1)) || value >= 1i128 << (bits - 1)))
        {
            return Err(TonError::OutOfRange(format!(
                "{value} does not fit in a signed {bits}-bit integer"
            )));
        }
        let mask = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        self.store_uint(value as u128 & mask, bits)
    }

    /// `MsgAddress`: `addr_none$00` for `None`, else `addr_std$10` without
    /// anycast, `workchain_id:int8 address:bits256` (block.tlb), 267 bits.
    pub fn store_address(&mut self, a: Option<&ContractAddress>) -> Result<&mut Self, TonError> {
        match a {
            None => self.store_uint(0, 2),
            Some(a) => self
                .store_uint(0b100, 3)?
                .store_int(i128::from(a.workchain), 8)?
                .store_bytes(&a.hash),
        }
    }

    /// `Maybe ^Cell`: a 0 bit, or a 1 bit and the reference.
    pub fn store_maybe_ref(&mut self, cell: Option<Cell>) -> Result<&mut Self, TonError> {
        match cell {
            None => self.store_bit(false),
            Some(c) => {
                if self.refs.len() >= MAX_REFS {
                    return Err(TonError::TooManyRefs);
                }
                self.store_bit(true)?.store_ref(c)
            }
        }
    }

    /// Bits written so far.
    pub fn bit_len(&self) -> usize {
        self.bits
    }

    /// A reference.
    pub fn store_ref(&mut self, cell: Cell) -> Result<&mut Self, TonError> {
        if self.refs.len() >= MAX_REFS {
            return Err(TonError::TooManyRefs);
        }
        self.refs.push(cell);
        Ok(self)
    }

    /// The cell.
    pub fn build(&self) -> Cell {
        Cell::from_parts(self.data.clone(), self.bits, self.refs.clone())
    }
}

fn header(op: u32, query_id: u64) -> Result<CellBuilder, TonError> {
    let mut b = CellBuilder::new();
    b.store_uint(u128::from(op), 32)?
        .store_uint(u128::from(query_id), 64)?;
    Ok(b)
}

fn message_with_signature(message: &[u8], signature: &[u8; 64]) -> Result<Cell, TonError> {
    let mut sig = CellBuilder::new();
    sig.store_bytes(signature)?;
    let mut b = CellBuilder::new();
    b.store_bytes(message)?.store_ref(sig.build())?;
    Ok(b.build())
}

/// `deposit`: credits `msg value − DEPOSIT_FEE` to the account of this
/// (uncompressed SEC1) key. `owner` is the wallet that may withdraw and
/// `owner_signature` the key's signature of
/// [`DepositOwner`](crate::settlement::DepositOwner) naming it and the
/// contract; the contract checks it when the deposit opens the account.
pub fn deposit_body(
    query_id: u64,
    public_key_uncompressed: &[u8; 65],
    owner: &ContractAddress,
    owner_signature: &[u8; 64],
) -> Result<Cell, TonError> {
    let mut sig = CellBuilder::new();
    sig.store_bytes(owner_signature)?;
    let mut b = header(OP_DEPOSIT, query_id)?;
    b.store_bytes(public_key_uncompressed)?;
    store_address(&mut b, owner)?;
    b.store_ref(sig.build())?;
    Ok(b.build())
}

/// `MsgAddressInt` as `addr_std$10 anycast:(Maybe Anycast)=0 workchain_id:int8
/// address:bits256` (TL-B scheme of block.tlb): 267 bits.
fn store_address(b: &mut CellBuilder, a: &ContractAddress) -> Result<(), TonError> {
    b.store_address(Some(a))?;
    Ok(())
}

/// `claim`: two references, the signed authorization and the signed tab,
/// each a cell of the exact signed bytes with one reference holding the
/// 64-byte signature.
pub fn claim_body(
    query_id: u64,
    auth: &SignedAuthorization,
    tab: &SignedTab,
) -> Result<Cell, TonError> {
    let mut b = header(OP_CLAIM, query_id)?;
    b.store_ref(message_with_signature(
        &auth.auth.to_bytes(),
        &auth.signature,
    )?)?
    .store_ref(message_with_signature(&tab.tab.to_bytes(), &tab.signature)?)?;
    Ok(b.build())
}

/// `provider_withdraw`.
pub fn provider_withdraw_body(query_id: u64, amount: u128) -> Result<Cell, TonError> {
    let mut b = header(OP_PROVIDER_WITHDRAW, query_id)?;
    b.store_coins(amount)?;
    Ok(b.build())
}

/// `client_withdraw_request`.
pub fn client_withdraw_request_body(
    query_id: u64,
    account: [u8; 32],
    amount: u128,
) -> Result<Cell, TonError> {
    let mut b = header(OP_CLIENT_WITHDRAW_REQUEST, query_id)?;
    b.store_bytes(&account)?.store_coins(amount)?;
    Ok(b.build())
}

/// `client_withdraw_finish`.
pub fn client_withdraw_finish_body(query_id: u64, account: [u8; 32]) -> Result<Cell, TonError> {
    let mut b = header(OP_CLIENT_WITHDRAW_FINISH, query_id)?;
    b.store_bytes(&account)?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bits_coins_and_overflow() {
        let mut b = CellBuilder::new();
        b.store_uint(0b101, 3).unwrap();
        let c = b.build();
        assert_eq!((c.bit_len(), c.data()), (3, &[0b1010_0000][..]));
        assert_eq!(c.descriptors(), [0, 1]);
        assert_eq!(c.padded_data(), vec![0b1011_0000]);
        let mut b = CellBuilder::new();
        b.store_coins(0).unwrap();
        assert_eq!(b.build().bit_len(), 4);
        let mut b = CellBuilder::new();
        b.store_coins(1_000_000_000).unwrap(); // 4 bytes
        assert_eq!(b.build().bit_len(), 4 + 32);
        assert!(CellBuilder::new().store_coins(1 << 120).is_err());
        assert!(CellBuilder::new().store_uint(4, 2).is_err());
        let mut b = CellBuilder::new();
        b.store_bytes(&[0; 127]).unwrap();
        b.store_uint(0, 7).unwrap();
        assert!(b.store_uint(0, 1).is_err(), "1024th bit refused");
        let mut b = CellBuilder::new();
        for _ in 0..4 {
            b.store_ref(Cell::default_leaf()).unwrap();
        }
        assert!(b.store_ref(Cell::default_leaf()).is_err());
    }

    impl Cell {
        fn default_leaf() -> Cell {
            CellBuilder::new().build()
        }
    }

    /// Reference bytes produced by @ton/core 0.63.1 (`cell.toBoc()` with
    /// its defaults, `cell.hash()`), for the same cells built with
    /// `beginCell().storeUint(..).storeRef(..).storeBuffer(..).storeCoins(..)`.
    #[test]
    fn equals_ton_core() {
        let mut leaf = CellBuilder::new();
        leaf.store_uint(0xab, 8).unwrap();
        let leaf = leaf.build();
        let mut root = CellBuilder::new();
        root.store_uint(1, 1).unwrap();
        root.store_ref(leaf.clone()).unwrap();
        root.store_ref(leaf).unwrap();
        let root = root.build();
        assert_eq!(
            hex::encode(root.to_boc()),
            "b5ee9c72410102010008000201c001010002ab0974d146"
        );
        assert_eq!(
            hex::encode(root.hash()),
            "e609d6d609564c7adfacd00233b5aeadfec5ffc5aa134a66ec28d765789bd637"
        );
        let mut b = header(OP_CLAIM, 5).unwrap();
        b.store_ref(message_with_signature(&[1; 110], &[7; 64]).unwrap())
            .unwrap()
            .store_ref(message_with_signature(&[2; 52], &[7; 64]).unwrap())
            .unwrap();
        let claim = b.build();
        assert_eq!(
            hex::encode(claim.to_boc()),
            format!(
                "b5ee9c724101040100fa000218c0c0a0020000000000000005010201dc{}030168{}030080{}5aece11e",
                "01".repeat(110),
                "02".repeat(52),
                "07".repeat(64)
            )
        );
        assert_eq!(
            hex::encode(claim.hash()),
            "3b6634144760fb406e289141a502b0a0c14421cd1fc4436178ab26375be774ce"
        );
        assert_eq!(
            hex::encode(provider_withdraw_body(1, 1_000_000_000).unwrap().to_boc()),
            "b5ee9c72410101010013000021c0c0a003000000000000000143b9aca008141e1e89"
        );
        // depositBody(key, Address.parse("-1:abab…"), signature, 7n) of
        // contracts/lib/messages.mjs (storeAddress is @ton/core's).
        let mut key = [0u8; 65];
        key[0] = 4;
        for (i, k) in key.iter_mut().enumerate().skip(1) {
            *k = i as u8;
        }
        let mut sig = [0u8; 64];
        for (i, s) in sig.iter_mut().enumerate() {
            *s = 0xa0 ^ i as u8;
        }
        let owner = ContractAddress {
            workchain: -1,
            hash: [0xab; 32],
        };
        let deposit = deposit_body(7, &key, &owner, &sig).unwrap();
        assert_eq!(
            hex::encode(deposit.hash()),
            "899635281dd7fc2f577daf6df2c001d8570d23918711038797cce761d547b064"
        );
        assert_eq!(hex::encode(deposit.to_boc()), "b5ee9c724101020100b40001ddc0c0a0010000000000000007040102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f409ff57575757575757575757575757575757575757575757575757575757575757570010080a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f6f6bcc09");
    }

    #[test]
    fn boc_layout_and_dedup() {
        // One leaf referenced twice is stored once.
        let mut leaf = CellBuilder::new();
        leaf.store_uint(0xab, 8).unwrap();
        let leaf = leaf.build();
        let mut root = CellBuilder::new();
        root.store_uint(1, 1)
            .unwrap()
            .store_ref(leaf.clone())
            .unwrap()
            .store_ref(leaf)
            .unwrap();
        let boc = root.build().to_boc();
        assert_eq!(&boc[..4], &[0xb5, 0xee, 0x9c, 0x72]);
        assert_eq!(boc[4], 0x41);
        assert_eq!(boc[6], 2, "two distinct cells");
        let n = boc.len();
        let crc = u32::from_le_bytes([boc[n - 4], boc[n - 3], boc[n - 2], boc[n - 1]]);
        assert_eq!(crc, crc32c(&boc[..n - 4]));
    }
}
