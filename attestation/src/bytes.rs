//! The one bounds-checked reader of untrusted bytes in this crate.
//!
//! Owns "is there enough left, and where are we": every fixed-layout format
//! here (TDX quotes, SNP reports and certificate tables, SPDM measurement
//! records and opaque data) and every DER walk (the SGX extensions of PCK
//! certificates, a CRL's `nextUpdate`, and the verifier's NVIDIA DICE
//! extension) reads through [`Reader`], so the arithmetic that keeps a
//! parser total is written once. Integers in the binary formats are
//! little-endian (Intel, AMD and DMTF SPDM all say so); DER lengths are
//! big-endian (X.690 §8.1.3). It knows no format and owns no error type of a
//! format: callers turn [`OutOfBounds`], [`Leftover`] and [`DerError`] into
//! their own errors, naming what they were reading. Nothing here panics.

use core::ops::Range;

/// A read that wanted more bytes than its container has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    /// What was being read.
    pub what: &'static str,
    /// Offset of the read's first byte within the whole input.
    pub offset: usize,
    /// Bytes the read needed (a length taken from the input may be huge).
    pub needed: u64,
    /// Bytes left in the container.
    pub available: usize,
}

/// A container with bytes its contents did not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// The container.
    pub what: &'static str,
    /// Offset of the first unused byte within the whole input.
    pub offset: usize,
    /// How many bytes are unused.
    pub count: usize,
}

/// A cursor over a container of untrusted bytes. Offsets are kept relative
/// to the whole input, so a reader over a nested container still reports
/// where in the input a problem is.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
    /// Offset of `rest[0]` within the whole input.
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader over all of `bytes`, at offset 0.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            offset: 0,
        }
    }

    /// A reader over `bytes`, which start at `offset` of a larger input.
    pub fn at(bytes: &'a [u8], offset: usize) -> Self {
        Reader {
            rest: bytes,
            offset,
        }
    }

    /// Offset of the next byte within the whole input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The range (within the whole input) of the bytes not read yet.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.rest.len()
    }

    fn out_of_bounds(&self, what: &'static str, needed: u64) -> OutOfBounds {
        OutOfBounds {
            what,
            offset: self.offset,
            needed,
            available: self.rest.len(),
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], OutOfBounds> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(self.out_of_bounds(what, n as u64));
        };
        self.rest = tail;
        self.offset += n;
        Ok(head)
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], OutOfBounds> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.out_of_bounds(what, N as u64));
        };
        self.rest = tail;
        self.offset += N;
        Ok(*head)
    }

    /// The next byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, OutOfBounds> {
        self.array::<1>(what).map(|[b]| b)
    }

    /// The next two bytes, little-endian.
    pub fn u16_le(&mut self, what: &'static str) -> Result<u16, OutOfBounds> {
        self.array(what).map(u16::from_le_bytes)
    }

    /// The next four bytes, little-endian.
    pub fn u32_le(&mut self, what: &'static str) -> Result<u32, OutOfBounds> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// The next `n` bytes as a reader of their own (a nested container).
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, OutOfBounds> {
        let offset = self.offset;
        self.bytes(n, what).map(|rest| Reader { rest, offset })
    }

    /// The next `declared` bytes, a length read from the input, as a reader
    /// of their own. A length that does not even fit a `usize` is out of
    /// bounds like any other.
    pub fn counted(
        &mut self,
        declared: u64,
        what: &'static str,
    ) -> Result<Reader<'a>, OutOfBounds> {
        match usize::try_from(declared) {
            Ok(n) => self.sub(n, what),
            Err(_) => Err(self.out_of_bounds(what, declared)),
        }
    }

    /// The container must be used up.
    pub fn finish(self, what: &'static str) -> Result<(), Leftover> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Leftover {
                what,
                offset: self.offset,
                count: self.rest.len(),
            })
        }
    }

    /// The next DER element (X.690 §8.1, with the DER restrictions of
    /// §10.1: definite lengths in the fewest octets): its one-byte tag and a
    /// reader over its contents. Multi-byte (high) tag numbers are refused,
    /// as are lengths of more than four octets. Nothing is consumed on
    /// error.
    pub fn der(&mut self, what: &'static str) -> Result<(u8, Reader<'a>), DerError> {
        let bad = |reason| DerError {
            what,
            offset: self.offset,
            reason,
        };
        let Some((&tag, after_tag)) = self.rest.split_first() else {
            return Err(bad("unexpected end"));
        };
        if tag & 0x1F == 0x1F {
            return Err(bad("multi-byte tags are not used here"));
        }
        let Some((&first, mut after_len)) = after_tag.split_first() else {
            return Err(bad("unexpected end in length"));
        };
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 {
                return Err(bad("indefinite length"));
            }
            if n > 4 {
                return Err(bad("length too large"));
            }
            let Some((len_bytes, tail)) = after_len.split_at_checked(n) else {
                return Err(bad("unexpected end in length"));
            };
            after_len = tail;
            if len_bytes.first() == Some(&0) {
                return Err(bad("length not minimally encoded"));
            }
            let len = len_bytes
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            if len < 0x80 {
                return Err(bad("length not minimally encoded"));
            }
            usize::try_from(len).map_err(|_| bad("length too large"))?
        };
        let header_len = self.rest.len() - after_len.len();
        let Some((contents, tail)) = after_len.split_at_checked(len) else {
            return Err(bad("length exceeds the enclosing element"));
        };
        let element = Reader {
            rest: contents,
            offset: self.offset + header_len,
        };
        self.offset += header_len + len;
        self.rest = tail;
        Ok((tag, element))
    }

    /// The container must hold no further DER element.
    pub fn der_finish(&self, what: &'static str) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DerError {
                what,
                offset: self.offset,
                reason: "unexpected data after the last element",
            })
        }
    }
}

/// Bytes that are not well-formed DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER in {what} at offset {offset}: {reason}")]
pub struct DerError {
    /// What was being read.
    pub what: &'static str,
    /// Offset within the whole input.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_tracks_offsets() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let mut r = Reader::at(&b, 100);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16_le("b"), Ok(0x0302));
        assert_eq!(r.bytes(3, "c"), Ok(&[4, 5, 6][..]));
        assert_eq!(r.offset(), 106);
        let mut inner = r.sub(4, "inner").unwrap();
        assert_eq!(inner.range(), 106..110);
        assert_eq!(inner.u32_le("d"), Ok(0x0A09_0807));
        assert_eq!(inner.finish("inner"), Ok(()));
        assert_eq!(
            r.u16_le("e"),
            Err(OutOfBounds {
                what: "e",
                offset: 110,
                needed: 2,
                available: 1
            })
        );
        assert_eq!(
            r.counted(u64::MAX, "f").unwrap_err().needed,
            u64::MAX,
            "a huge declared length is reported as declared"
        );
        assert_eq!(
            r.clone().finish("g"),
            Err(Leftover {
                what: "g",
                offset: 110,
                count: 1
            })
        );
        assert_eq!(r.bytes(1, "h"), Ok(&[11][..]));
        assert!(r.is_empty());
    }

    #[test]
    fn der_elements_are_strict() {
        let mut r = Reader::new(&[0x04, 0x02, 0xAA, 0xBB, 0x05, 0x00]);
        let (tag, v) = r.der("octets").unwrap();
        assert_eq!((tag, v.rest(), v.offset()), (0x04, &[0xAA, 0xBB][..], 2));
        assert_eq!(r.der("null").unwrap().0, 0x05);
        assert_eq!(r.der_finish("all"), Ok(()));
        for (bytes, reason) in [
            (&[][..], "unexpected end"),
            (&[0x1F, 0x01, 0x00], "multi-byte tags are not used here"),
            (&[0x30], "unexpected end in length"),
            (&[0x30, 0x80], "indefinite length"),
            (&[0x30, 0x85, 1, 0, 0, 0, 0], "length too large"),
            (&[0x30, 0x82, 0x01], "unexpected end in length"),
            (&[0x30, 0x82, 0x00, 0x85], "length not minimally encoded"),
            (&[0x30, 0x81, 0x05], "length not minimally encoded"),
            (&[0x30, 0x03, 0x00], "length exceeds the enclosing element"),
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(
                r.der("x").map(|_| ()).unwrap_err().reason,
                reason,
                "{bytes:?}"
            );
            assert_eq!(r.offset(), 0, "nothing consumed");
        }
        let r = Reader::at(&[0x05, 0x00], 7);
        assert_eq!(
            r.der_finish("tail"),
            Err(DerError {
                what: "tail",
                offset: 7,
                reason: "unexpected data after the last element"
            })
        );
    }
}
