//! Dictionaries: `HashmapE n X` of tblkch.pdf §3.3 (TL-B of block.tlb),
//!
//! ```text
//! hm_edge#_ {n:#} {X:Type} {l:#} {m:#} label:(HmLabel ~l n)
//!           {n = (~m) + l} node:(HashmapNode m X) = Hashmap n X;
//! hmn_leaf#_ {X:Type} value:X = HashmapNode 0 X;
//! hmn_fork#_ {n:#} {X:Type} left:^(Hashmap n X)
//!            right:^(Hashmap n X) = HashmapNode (n + 1) X;
//! hml_short$0 {m:#} {n:#} len:(Unary ~n) {n <= m} s:(n * Bit) = HmLabel ~n m;
//! hml_long$10 {m:#} n:(#<= m) s:(n * Bit) = HmLabel ~n m;
//! hml_same$11 {m:#} v:Bit n:(#<= m) = HmLabel ~n m;
//! unary_zero$0 = Unary ~0;
//! unary_succ$1 {n:#} x:(Unary ~n) = Unary ~(n + 1);
//! hme_empty$0 {n:#} {X:Type} = HashmapE n X;
//! hme_root$1 {n:#} {X:Type} root:^(Hashmap n X) = HashmapE n X;
//! ```
//!
//! `#<= m` is an integer of ⌈log2(m + 1)⌉ bits (tblkch.pdf §3.3.4). Keys
//! come out as bit strings, left-aligned in ⌈n/8⌉ bytes: for a whole number
//! of bytes, the big-endian unsigned key.
//!
//! A bag of cells may share subtrees, so a few hundred cells can describe
//! more leaves than memory holds: the walk is bounded by a number of
//! entries ([`DEFAULT_MAX_ENTRIES`] unless told otherwise) besides its
//! depth (at most n + 1 edges from the root to a leaf).

use super::{Cell, CellSlice, TonError, MAX_BITS};

/// Most entries [`parse_hashmap`] returns before refusing the dictionary.
pub const DEFAULT_MAX_ENTRIES: usize = 1 << 16;

/// A key being assembled bit by bit.
#[derive(Clone)]
struct Key {
    bytes: Vec<u8>,
    bits: usize,
}

impl Key {
    fn push(&mut self, bit: bool) {
        if self.bits % 8 == 0 {
            self.bytes.push(0);
        }
        if bit {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 0x80 >> (self.bits % 8);
            }
        }
        self.bits += 1;
    }
}

fn bad(reason: String) -> TonError {
    TonError::Malformed(format!("dictionary: {reason}"))
}

/// The entries of a `Hashmap n X` whose root edge is `root` (the cell a
/// `hme_root` references, or a get-method's dictionary cell), in ascending
/// key order, each with its value as the rest of its leaf's slice.
pub fn parse_hashmap(root: &Cell, key_bits: usize) -> Result<Vec<(Vec<u8>, CellSlice)>, TonError> {
    parse_hashmap_with_limit(root, key_bits, DEFAULT_MAX_ENTRIES)
}

/// `HashmapE n X` read from `slice` (a bit, then the root as a reference
/// when it is 1): no entries for `hme_empty`.
pub fn load_hashmap_e(
    slice: &mut CellSlice,
    key_bits: usize,
) -> Result<Vec<(Vec<u8>, CellSlice)>, TonError> {
    match slice.load_maybe_ref()? {
        None => Ok(Vec::new()),
        Some(root) => parse_hashmap(&root, key_bits),
    }
}

/// [`parse_hashmap`] with an explicit bound on the number of entries.
pub fn parse_hashmap_with_limit(
    root: &Cell,
    key_bits: usize,
    max_entries: usize,
) -> Result<Vec<(Vec<u8>, CellSlice)>, TonError> {
    if key_bits > MAX_BITS {
        return Err(bad(format!("{key_bits}-bit keys, at most 1023")));
    }
    let mut out = Vec::new();
    // Depth-first, left (bit 0) before right, so keys come out ascending.
    let mut stack: Vec<(Cell, Key, usize)> = vec![(
        root.clone(),
        Key {
            bytes: Vec::with_capacity(key_bits.div_ceil(8)),
            bits: 0,
        },
        key_bits,
    )];
    while let Some((cell, mut key, m)) = stack.pop() {
        let mut s = CellSlice::new(cell);
        let n = load_label(&mut s, m, &mut key)?;
        let rest = m - n;
        if rest == 0 {
            if out.len() >= max_entries {
                return Err(bad(format!("more than {max_entries} entries")));
            }
            out.push((key.bytes, s));
            continue;
        }
        let left = s.load_ref()?;
        let right = s.load_ref()?;
        if !s.is_empty() {
            return Err(bad(format!(
                "a fork carries {} bits and {} references besides its two branches",
                s.remaining_bits(),
                s.remaining_refs()
            )));
        }
        if out.len() + stack.len() >= max_entries {
            return Err(bad(format!("more than {max_entries} entries")));
        }
        let mut rkey = key.clone();
        rkey.push(true);
        key.push(false);
        stack.push((right, rkey, rest - 1));
        stack.push((left, key, rest - 1));
    }
    Ok(out)
}

/// Bits of `#<= m`: ⌈log2(m + 1)⌉.
fn len_bits(m: usize) -> usize {
    (usize::BITS - m.leading_zeros()) as usize
}

/// Reads `HmLabel ~n m`, appends its bits to `key` and returns `n`.
fn load_label(s: &mut CellSlice, m: usize, key: &mut Key) -> Result<usize, TonError> {
    if !s.load_bit()? {
        // hml_short: unary length, then the bits.
        let mut n = 0;
        while s.load_bit()? {
            n += 1;
            if n > m {
                return Err(bad(format!("short label of more than {m} bits")));
            }
        }
        for _ in 0..n {
            key.push(s.load_bit()?);
        }
        return Ok(n);
    }
    let same = s.load_bit()?;
    let v = if same { Some(s.load_bit()?) } else { None };
    let n = s.load_uint(len_bits(m))? as usize;
    if n > m {
        return Err(bad(format!("label of {n} bits where {m} remain")));
    }
    for _ in 0..n {
        let b = match v {
            Some(b) => b,
            None => s.load_bit()?,
        };
        key.push(b);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::CellBuilder;
    use super::*;

    /// A two-entry map with 8-bit keys 0x01 → 7 and 0x81 → 9, written by
    /// hand: the root's label is empty (short, length 0), the fork's
    /// branches carry 7-bit labels 0000001 (long) and 0000001 (short).
    #[test]
    fn hand_written() {
        let mut l = CellBuilder::new();
        // hml_long$10, n = 7 in ⌈log2 8⌉ = 3 bits (m = 7), the bits.
        l.store_uint(0b10, 2)
            .unwrap()
            .store_uint(7, 3)
            .unwrap()
            .store_uint(0b000_0001, 7)
            .unwrap()
            .store_uint(7, 16)
            .unwrap();
        let mut r = CellBuilder::new();
        // hml_short$0, unary 7 = 1111111 0, bits.
        r.store_uint(0, 1)
            .unwrap()
            .store_uint(0b1111_1110, 8)
            .unwrap()
            .store_uint(0b000_0001, 7)
            .unwrap()
            .store_uint(9, 16)
            .unwrap();
        let mut root = CellBuilder::new();
        root.store_uint(0b00, 2)
            .unwrap()
            .store_ref(l.build())
            .unwrap()
            .store_ref(r.build())
            .unwrap();
        let entries = parse_hashmap(&root.build(), 8).unwrap();
        let got: Vec<(Vec<u8>, u128)> = entries
            .into_iter()
            .map(|(k, mut v)| (k, v.load_uint(16).unwrap()))
            .collect();
        assert_eq!(got, vec![(vec![0x01], 7), (vec![0x81], 9)]);
    }

    #[test]
    fn same_label_and_bounds() {
        // One entry, key 0xffff (hml_same v = 1, n = 16 in 5 bits).
        let mut b = CellBuilder::new();
        b.store_uint(0b11, 2)
            .unwrap()
            .store_uint(1, 1)
            .unwrap()
            .store_uint(16, 5)
            .unwrap()
            .store_uint(42, 8)
            .unwrap();
        let c = b.build();
        let e = parse_hashmap(&c, 16).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, vec![0xff, 0xff]);
        // The same cell read as 15-bit keys: n = 16 > 15.
        assert!(parse_hashmap(&c, 15).is_err());
        assert!(parse_hashmap(&c, 2000).is_err());
        // A fork with only one branch.
        let mut f = CellBuilder::new();
        f.store_uint(0, 1).unwrap().store_ref(c.clone()).unwrap();
        assert!(parse_hashmap(&f.build(), 17).is_err());
    }

    #[test]
    fn shared_subtrees_are_bounded() {
        // Every level's two branches are the same cell: 2^40 leaves.
        let mut leaf = CellBuilder::new();
        leaf.store_uint(0, 2).unwrap(); // short label, n = 0
        let mut c = leaf.build();
        for _ in 0..40 {
            let mut b = CellBuilder::new();
            b.store_uint(0, 2)
                .unwrap()
                .store_ref(c.clone())
                .unwrap()
                .store_ref(c)
                .unwrap();
            c = b.build();
        }
        let err = parse_hashmap_with_limit(&c, 40, 1000).unwrap_err();
        assert!(err.to_string().contains("more than 1000 entries"), "{err}");
        // With 10-bit keys it is small enough.
        let mut c = leaf.build();
        for _ in 0..10 {
            let mut b = CellBuilder::new();
            b.store_uint(0, 2)
                .unwrap()
                .store_ref(c.clone())
                .unwrap()
                .store_ref(c)
                .unwrap();
            c = b.build();
        }
        let e = parse_hashmap(&c, 10).unwrap();
        assert_eq!(e.len(), 1024);
        assert_eq!(e[1023].0, vec![0xff, 0xc0]);
        assert!(e.windows(2).all(|w| w[0].0 < w[1].0), "ascending");
    }

    #[test]
    fn hashmap_e() {
        let mut b = CellBuilder::new();
        b.store_uint(0, 1).unwrap();
        assert!(load_hashmap_e(&mut b.build().as_slice(), 32)
            .unwrap()
            .is_empty());
    }
}
