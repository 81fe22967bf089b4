//! Reading a cell's bits and references in order (a TVM slice, tvm.pdf
//! §3.2.3), with the TL-B primitives Cocoon meets: unsigned and signed
//! integers, bytes, `Coins`, `MsgAddress` and (Maybe) references.

use super::{Cell, TonError};
use crate::settlement::ContractAddress;

/// A read position in a cell: the bits and references not read yet.
///
/// Owns (shares) its cell, so it can outlive the tree it came from. Every
/// read checks what is left and fails with [`TonError::Underflow`] (or
/// [`TonError::Malformed`] for a value outside its scheme) rather than
/// panicking; a failed read leaves the position unchanged.
#[derive(Clone, Debug)]
pub struct CellSlice {
    cell: Cell,
    bit: usize,
    bit_end: usize,
    r#ref: usize,
}

impl CellSlice {
    /// The whole of `cell`, from its start.
    pub fn new(cell: Cell) -> CellSlice {
        let bit_end = cell.bit_len();
        CellSlice {
            cell,
            bit: 0,
            bit_end,
            r#ref: 0,
        }
    }

    /// The cell this slice reads.
    pub fn cell(&self) -> &Cell {
        &self.cell
    }

    /// Data bits not read yet.
    pub fn remaining_bits(&self) -> usize {
        self.bit_end - self.bit
    }

    /// References not read yet.
    pub fn remaining_refs(&self) -> usize {
        self.cell.refs().len() - self.r#ref
    }

    /// Nothing left (no bits, no references).
    pub fn is_empty(&self) -> bool {
        self.remaining_bits() == 0 && self.remaining_refs() == 0
    }

    /// Succeeds when everything was read: a scheme's value must fill its
    /// cell exactly.
    pub fn end(&self) -> Result<(), TonError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(TonError::Malformed(format!(
                "{} bits and {} references left unread",
                self.remaining_bits(),
                self.remaining_refs()
            )))
        }
    }

    fn need_bits(&self, n: usize) -> Result<(), TonError> {
        if n > self.remaining_bits() {
            return Err(TonError::Underflow {
                what: "bits",
                wanted: n,
                left: self.remaining_bits(),
            });
        }
        Ok(())
    }

    fn bit_at(&self, i: usize) -> bool {
        (self.cell.data()[i / 8] >> (7 - i % 8)) & 1 == 1
    }

    /// The 8 bits from bit `i` (the caller checked they exist).
    fn byte_at(&self, i: usize) -> u8 {
        let d = self.cell.data();
        let s = i % 8;
        let hi = d[i / 8] << s;
        if s == 0 {
            hi
        } else {
            hi | (d[i / 8 + 1] >> (8 - s))
        }
    }

    /// Bits from the current position without moving it.
    pub fn preload_bit(&self) -> Result<bool, TonError> {
        self.need_bits(1)?;
        Ok(self.bit_at(self.bit))
    }

    /// One bit.
    pub fn load_bit(&mut self) -> Result<bool, TonError> {
        let b = self.preload_bit()?;
        self.bit += 1;
        Ok(b)
    }

    /// Skips `n` bits.
    pub fn skip_bits(&mut self, n: usize) -> Result<(), TonError> {
        self.need_bits(n)?;
        self.bit += n;
        Ok(())
    }

    /// `n` bits, left-aligned in ⌈n/8⌉ bytes (the last byte's unused low
    /// bits zero).
    pub fn load_bits(&mut self, n: usize) -> Result<Vec<u8>, TonError> {
        self.need_bits(n)?;
        let mut out = Vec::with_capacity(n.div_ceil(8));
        let mut i = 0;
        while i + 8 <= n {
            out.push(self.byte_at(self.bit + i));
            i += 8;
        }
        if i < n {
            let mut last = 0u8;
            for k in 0..n - i {
                if self.bit_at(self.bit + i + k) {
                    last |= 0x80 >> k;
                }
            }
            out.push(last);
        }
        self.bit += n;
        Ok(out)
    }

    /// An unsigned integer of `bits` bits (at most 128), big-endian
    /// (`uint` of TL-B).
    pub fn load_uint(&mut self, bits: usize) -> Result<u128, TonError> {
        if bits > 128 {
            return Err(TonError::OutOfRange(format!(
                "load_uint of {bits} bits: at most 128 (use load_uint_wide)"
            )));
        }
        self.need_bits(bits)?;
        let mut v = 0u128;
        let mut i = 0;
        while i + 8 <= bits {
            v = (v << 8) | u128::from(self.byte_at(self.bit + i));
            i += 8;
        }
        while i < bits {
            v = (v << 1) | u128::from(self.bit_at(self.bit + i));
            i += 1;
        }
        self.bit += bits;
        Ok(v)
    }

    /// An unsigned integer of `bits` bits (at most 256), right-aligned in
    /// 32 big-endian bytes (`uint256` hashes and keys).
    pub fn load_uint_wide(&mut self, bits: usize) -> Result<[u8; 32], TonError> {
        if bits > 256 {
            return Err(TonError::OutOfRange(format!(
                "load_uint_wide of {bits} bits: at most 256"
            )));
        }
        self.need_bits(bits)?;
        let mut out = [0u8; 32];
        let hi = bits.saturating_sub(128);
        let high = self.load_uint(hi)?;
        let low = self.load_uint(bits - hi)?;
        out[..16].copy_from_slice(&high.to_be_bytes());
        out[16..].copy_from_slice(&low.to_be_bytes());
        Ok(out)
    }

    /// A signed (two's complement) integer of `bits` bits, 1 to 128
    /// (`int` of TL-B).
    pub fn load_int(&mut self, bits: usize) -> Result<i128, TonError> {
        if !(1..=128).contains(&bits) {
            return Err(TonError::OutOfRange(format!(
                "load_int of {bits} bits: 1 to 128"
            )));
        }
        let u = self.load_uint(bits)?;
        // Sign-extend.
        let shift = 128 - bits;
        Ok(((u << shift) as i128) >> shift)
    }

    /// `n` whole bytes.
    pub fn load_bytes(&mut self, n: usize) -> Result<Vec<u8>, TonError> {
        let bits = n.checked_mul(8).ok_or_else(|| TonError::Underflow {
            what: "bits",
            wanted: usize::MAX,
            left: self.remaining_bits(),
        })?;
        self.load_bits(bits)
    }

    /// `Coins` (`VarUInteger 16`, tblkch.pdf §3.1.5): a 4-bit byte length,
    /// then the value in that many bytes.
    pub fn load_coins(&mut self) -> Result<u128, TonError> {
        let save = self.bit;
        let len = self.load_uint(4)? as usize;
        match self.load_uint(8 * len) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.bit = save;
                Err(e)
            }
        }
    }

    /// `MsgAddress` (block.tlb): `addr_none$00` is `None`; `addr_std$10
    /// anycast:(Maybe Anycast) workchain_id:int8 address:bits256` without
    /// anycast is the address. External (`addr_extern$01`), variable
    /// (`addr_var$11`) and anycast addresses are refused.
    pub fn load_address(&mut self) -> Result<Option<ContractAddress>, TonError> {
        let save = self.bit;
        let r = self.load_address_inner();
        if r.is_err() {
            self.bit = save;
        }
        r
    }

    fn load_address_inner(&mut self) -> Result<Option<ContractAddress>, TonError> {
        match self.load_uint(2)? {
            0b00 => Ok(None),
            0b10 => {
                if self.load_bit()? {
                    return Err(TonError::Malformed(
                        "anycast addresses are not accepted".into(),
                    ));
                }
                let workchain = self.load_int(8)? as i8;
                let hash = self.load_uint_wide(256)?;
                Ok(Some(ContractAddress { workchain, hash }))
            }
            0b01 => Err(TonError::Malformed(
                "an external address (addr_extern) where a contract address was expected".into(),
            )),
            _ => Err(TonError::Malformed(
                "a variable-length address (addr_var) is not accepted".into(),
            )),
        }
    }

    /// The next reference.
    pub fn load_ref(&mut self) -> Result<Cell, TonError> {
        let c = self
            .cell
            .refs()
            .get(self.r#ref)
            .cloned()
            .ok_or(TonError::Underflow {
                what: "references",
                wanted: 1,
                left: 0,
            })?;
        self.r#ref += 1;
        Ok(c)
    }

    /// `Maybe ^X`: a bit, then a reference when it is 1.
    pub fn load_maybe_ref(&mut self) -> Result<Option<Cell>, TonError> {
        if !self.preload_bit()? {
            self.bit += 1;
            return Ok(None);
        }
        if self.remaining_refs() == 0 {
            return Err(TonError::Underflow {
                what: "references",
                wanted: 1,
                left: 0,
            });
        }
        self.bit += 1;
        self.load_ref().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::super::CellBuilder;
    use super::*;

    #[test]
    fn reads_what_the_builder_wrote() {
        let addr = ContractAddress {
            workchain: -1,
            hash: [0x5a; 32],
        };
        let mut inner = CellBuilder::new();
        inner.store_uint(7, 3).unwrap();
        let inner = inner.build();
        let mut b = CellBuilder::new();
        b.store_uint(0x1234_5678_9abc_def0_1122_3344_5566_7788, 128)
            .unwrap()
            .store_uint(5, 3)
            .unwrap()
            .store_coins(1_000_000_000)
            .unwrap()
            .store_coins(0)
            .unwrap()
            .store_bytes(&[9, 8, 7])
            .unwrap()
            .store_uint(0b00, 2)
            .unwrap()
            .store_uint(1, 1)
            .unwrap()
            .store_ref(inner.clone())
            .unwrap()
            .store_uint(0, 1)
            .unwrap()
            .store_uint(0xff, 8)
            .unwrap();
        b.store_address(Some(&addr)).unwrap();
        let c = b.build();
        let mut s = c.as_slice();
        assert_eq!(
            s.load_uint(128).unwrap(),
            0x1234_5678_9abc_def0_1122_3344_5566_7788
        );
        assert_eq!(s.load_uint(3).unwrap(), 5);
        assert_eq!(s.load_coins().unwrap(), 1_000_000_000);
        assert_eq!(s.load_coins().unwrap(), 0);
        assert_eq!(s.load_bytes(3).unwrap(), vec![9, 8, 7]);
        assert_eq!(s.load_address().unwrap(), None);
        assert_eq!(s.load_maybe_ref().unwrap(), Some(inner));
        assert_eq!(s.load_maybe_ref().unwrap(), None);
        assert_eq!(s.load_int(8).unwrap(), -1);
        let before = s.remaining_bits();
        assert_eq!(s.load_address().unwrap(), Some(addr));
        assert_eq!(before - s.remaining_bits(), 267);
        s.end().unwrap();
        assert!(matches!(
            s.load_bit(),
            Err(TonError::Underflow { what: "bits", .. })
        ));
        assert!(matches!(
            s.load_ref(),
            Err(TonError::Underflow {
                what: "references",
                ..
            })
        ));
    }

    #[test]
    fn wide_and_partial() {
        let mut b = CellBuilder::new();
        b.store_bytes(&[0xab; 32])
            .unwrap()
            .store_uint(0b101, 3)
            .unwrap();
        let c = b.build();
        let mut s = c.as_slice();
        assert_eq!(s.load_uint_wide(256).unwrap(), [0xab; 32]);
        assert!(s.load_uint(4).is_err(), "a failed read moves nothing");
        assert_eq!(s.load_bits(3).unwrap(), vec![0b1010_0000]);
        let mut s = c.as_slice();
        s.skip_bits(4).unwrap();
        assert_eq!(s.load_uint_wide(12).unwrap()[30..], [0x0b, 0xab]);
        assert_eq!(s.load_bits(9).unwrap(), vec![0xab, 0x80]);
        assert!(s.end().is_err());
        assert!(s.load_uint(129).is_err());
        assert!(s.load_bytes(usize::MAX).is_err());
    }

    #[test]
    fn refused_addresses() {
        for (tag, bits) in [(0b01u128, 2), (0b11, 2), (0b101, 3)] {
            let mut b = CellBuilder::new();
            b.store_uint(tag, bits)
                .unwrap()
                .store_bytes(&[0; 40])
                .unwrap();
            let mut s = b.build().as_slice();
            assert!(matches!(s.load_address(), Err(TonError::Malformed(_))));
            assert_eq!(s.remaining_bits(), bits + 320, "position kept");
        }
    }
}
