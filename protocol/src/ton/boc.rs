//! Reading a bag of cells: `serialized_boc` of tblkch.pdf §5.3.2,
//!
//! ```text
//! serialized_boc#b5ee9c72 has_idx:(## 1) has_crc32c:(## 1)
//!   has_cache_bits:(## 1) flags:(## 2) { flags = 0 }
//!   size:(## 3) { size <= 4 }
//!   off_bytes:(## 8) { off_bytes <= 8 }
//!   cells:(##(size * 8))
//!   roots:(##(size * 8)) { roots >= 1 }
//!   absent:(##(size * 8)) { roots + absent <= cells }
//!   tot_cells_size:(##(off_bytes * 8))
//!   root_list:(roots * ##(size * 8))
//!   index:has_idx?(cells * ##(off_bytes * 8))
//!   cell_data:(tot_cells_size * [ uint8 ])
//!   crc32c:has_crc32c?uint32
//!   = BagOfCells;
//! ```
//!
//! each cell serialised as its two descriptor bytes, its padded data and
//! its references as `size`-byte cell indices (tvm.pdf §3.1.4, tblkch.pdf
//! §5.3.1). Strict: exactly one root, no absent cells, ordinary level-0
//! cells without stored hashes, every reference pointing to a later cell,
//! every cell reachable from the root, an index (when present) that agrees
//! with the cells, a CRC32-C (when flagged) that matches, no byte left
//! over, and limits on cell count and depth.

use super::{crc32c, Cell, TonError, BOC_MAGIC, MAX_BITS, MAX_DEPTH, MAX_REFS};

/// Limits [`Cell::from_boc_with_limits`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BocLimits {
    /// Most cells in the bag.
    pub max_cells: usize,
    /// Deepest tree (0: one leaf).
    pub max_depth: u16,
}

impl Default for BocLimits {
    /// 65 536 cells (far above any account state Cocoon reads) and depth
    /// [`MAX_DEPTH`].
    fn default() -> BocLimits {
        BocLimits {
            max_cells: 1 << 16,
            max_depth: MAX_DEPTH,
        }
    }
}

fn bad(reason: impl Into<String>) -> TonError {
    TonError::BadBoc(reason.into())
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], TonError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad(format!("truncated in {what}")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize, what: &str) -> Result<u64, TonError> {
        Ok(self
            .take(n, what)?
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }
}

/// One cell as read, before its references are resolved.
struct RawCell {
    data: Vec<u8>,
    bits: usize,
    refs: [usize; MAX_REFS],
    n_refs: usize,
}

impl Cell {
    /// Parse a bag of cells with [`BocLimits::default`].
    pub fn from_boc(boc: &[u8]) -> Result<Cell, TonError> {
        Cell::from_boc_with_limits(boc, BocLimits::default())
    }

    /// Parse a bag of cells with one root (see the module's documentation
    /// for what is refused). Every malformed input is a
    /// [`TonError::BadBoc`] saying what is wrong; nothing panics.
    pub fn from_boc_with_limits(boc: &[u8], limits: BocLimits) -> Result<Cell, TonError> {
        let mut r = Reader { b: boc, pos: 0 };
        if r.take(4, "the magic")? != BOC_MAGIC {
            return Err(bad(
                "not a serialized_boc (magic b5ee9c72; the older 68ff65f3/acc3a728 forms are not accepted)",
            ));
        }
        let flags = r.uint(1, "the flags")? as u8;
        let has_idx = flags & 0x80 != 0;
        let has_crc = flags & 0x40 != 0;
        let has_cache_bits = flags & 0x20 != 0;
        if flags & 0x18 != 0 {
            return Err(bad("reserved flags set"));
        }
        if has_cache_bits && !has_idx {
            return Err(bad("cache bits without an index"));
        }
        let size = usize::from(flags & 7);
        if !(1..=4).contains(&size) {
            return Err(bad(format!("reference size {size}, 1 to 4 allowed")));
        }
        let off_bytes = usize::from(r.take(1, "off_bytes")?[0]);
        if !(1..=8).contains(&off_bytes) {
            return Err(bad(format!("offset size {off_bytes}, 1 to 8 allowed")));
        }
        let cells = r.uint(size, "the cell count")?;
        let roots = r.uint(size, "the root count")?;
        let absent = r.uint(size, "the absent count")?;
        let total = r.uint(off_bytes, "the data size")?;
        if roots != 1 {
            return Err(bad(format!("{roots} roots, exactly one expected")));
        }
        if absent != 0 {
            return Err(bad(format!("{absent} absent cells, none accepted")));
        }
        if cells == 0 {
            return Err(bad("no cells"));
        }
        if cells > limits.max_cells as u64 {
            return Err(bad(format!(
                "{cells} cells, at most {} accepted",
                limits.max_cells
            )));
        }
        let cells = cells as usize;
        // Every length the header announces must add up to the input's
        // length exactly, before anything is allocated for the cells.
        let expected = (r.pos as u64)
            .saturating_add(size as u64)
            .saturating_add(if has_idx {
                (cells as u64).saturating_mul(off_bytes as u64)
            } else {
                0
            })
            .saturating_add(total)
            .saturating_add(if has_crc { 4 } else { 0 });
        if expected != boc.len() as u64 {
            return Err(bad(format!(
                "the header announces {expected} bytes, the input has {}",
                boc.len()
            )));
        }
        // Two bytes is the smallest cell.
        if (cells as u64).saturating_mul(2) > total {
            return Err(bad(format!("{cells} cells cannot fit in {total} bytes")));
        }
        if has_crc {
            let n = boc.len() - 4;
            let want = u32::from_le_bytes([boc[n], boc[n + 1], boc[n + 2], boc[n + 3]]);
            if crc32c(&boc[..n]) != want {
                return Err(bad("CRC32-C mismatch"));
            }
        }
        let root = r.uint(size, "the root list")? as usize;
        if root >= cells {
            return Err(bad(format!("root index {root} out of {cells} cells")));
        }
        let index_start = r.pos;
        if has_idx {
            r.take(cells * off_bytes, "the index")?;
        }
        let data_start = r.pos;
        let mut raw: Vec<RawCell> = Vec::with_capacity(cells);
        for i in 0..cells {
            let d = r.take(2, "a cell's descriptors")?;
            let (d1, d2) = (d[0], d[1]);
            let n_refs = usize::from(d1 & 7);
            if n_refs > MAX_REFS {
                return Err(bad(format!(
                    "cell {i}: {n_refs} references (an absent cell), at most 4"
                )));
            }
            if d1 & 8 != 0 {
                return Err(bad(format!(
                    "cell {i} is exotic (pruned branch, library, Merkle proof or update); only ordinary cells are accepted"
                )));
            }
            if d1 & 16 != 0 {
                return Err(bad(format!("cell {i} carries stored hashes; not accepted")));
            }
            if d1 >> 5 != 0 {
                return Err(bad(format!(
                    "cell {i} has level {}; only level 0 is accepted",
                    d1 >> 5
                )));
            }
            let len = usize::from(d2).div_ceil(2);
            let mut data = r.take(len, "a cell's data")?.to_vec();
            let bits = if d2 % 2 == 1 {
                // The completion tag: the last byte's lowest set bit.
                let last = data.last_mut().ok_or_else(|| bad("empty partial byte"))?;
                if *last == 0 {
                    return Err(bad(format!(
                        "cell {i}: partial last byte without its completion tag"
                    )));
                }
                let tz = last.trailing_zeros() as usize;
                *last &= !(1u8 << tz);
                (len - 1) * 8 + (7 - tz)
            } else {
                len * 8
            };
            if bits > MAX_BITS {
                return Err(bad(format!("cell {i}: {bits} bits, at most 1023")));
            }
            let mut refs = [0usize; MAX_REFS];
            for slot in refs.iter_mut().take(n_refs) {
                let j = r.uint(size, "a cell's references")? as usize;
                if j <= i || j >= cells {
                    return Err(bad(format!(
                        "cell {i} references cell {j}: references must point to a later cell of the {cells}"
                    )));
                }
                *slot = j;
            }
            if has_idx {
                let at = index_start + i * off_bytes;
                let mut v = boc[at..at + off_bytes]
                    .iter()
                    .fold(0u64, |v, &b| (v << 8) | u64::from(b));
                if has_cache_bits {
                    v >>= 1;
                }
                if v != (r.pos - data_start) as u64 {
                    return Err(bad(format!(
                        "index entry {i} says cell {i} ends at {v}, it ends at {}",
                        r.pos - data_start
                    )));
                }
            }
            raw.push(RawCell {
                data,
                bits,
                refs,
                n_refs,
            });
        }
        if (r.pos - data_start) as u64 != total {
            return Err(bad(format!(
                "the cells take {} bytes, the header says {total}",
                r.pos - data_start
            )));
        }
        // Reachability from the root (references point forward, so one
        // pass in index order suffices).
        let mut reached = vec![false; cells];
        reached[root] = true;
        for (i, c) in raw.iter().enumerate() {
            if reached[i] {
                for &j in &c.refs[..c.n_refs] {
                    reached[j] = true;
                }
            }
        }
        if let Some(i) = reached.iter().position(|r| !r) {
            return Err(bad(format!("cell {i} is not reachable from the root")));
        }
        // Build from the last cell back, so references exist when needed.
        let mut built: Vec<Option<Cell>> = vec![None; cells];
        for i in (0..cells).rev() {
            let c = std::mem::replace(
                &mut raw[i],
                RawCell {
                    data: Vec::new(),
                    bits: 0,
                    refs: [0; MAX_REFS],
                    n_refs: 0,
                },
            );
            let refs = c.refs[..c.n_refs]
                .iter()
                .map(|&j| built[j].clone().ok_or_else(|| bad("unresolved reference")))
                .collect::<Result<Vec<Cell>, TonError>>()?;
            let cell = Cell::new(c.data, c.bits, refs)?;
            if cell.depth() > limits.max_depth {
                return Err(bad(format!(
                    "cell {i} is {} deep, at most {} accepted",
                    cell.depth(),
                    limits.max_depth
                )));
            }
            built[i] = Some(cell);
        }
        built[root].take().ok_or_else(|| bad("no root"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CellBuilder;
    use super::*;

    fn sample() -> Cell {
        let mut leaf = CellBuilder::new();
        leaf.store_uint(0xab, 8).unwrap();
        let leaf = leaf.build();
        let mut mid = CellBuilder::new();
        mid.store_uint(0b10110, 5)
            .unwrap()
            .store_ref(leaf.clone())
            .unwrap();
        let mid = mid.build();
        let mut root = CellBuilder::new();
        root.store_bytes(&[1, 2, 3])
            .unwrap()
            .store_uint(1, 1)
            .unwrap()
            .store_ref(mid)
            .unwrap()
            .store_ref(leaf)
            .unwrap();
        root.build()
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let boc = c.to_boc();
        let back = Cell::from_boc(&boc).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.bit_len(), 25);
        assert_eq!(back.refs()[0].bit_len(), 5);
        assert_eq!(back.refs()[0].data(), &[0b1011_0000]);
        assert_eq!(back.to_boc(), boc);
        // Known @ton/core bytes (see ton.rs equals_ton_core).
        let known = hex::decode("b5ee9c72410102010008000201c001010002ab0974d146").unwrap();
        assert_eq!(Cell::from_boc(&known).unwrap().to_boc(), known);
    }

    #[test]
    fn refusals_have_reasons() {
        let boc = sample().to_boc();
        let err = |b: &[u8]| match Cell::from_boc(b) {
            Err(TonError::BadBoc(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err(&[]).contains("truncated"));
        assert!(err(&boc[..boc.len() - 1]).contains("announces"));
        let mut c = boc.clone();
        let n = c.len();
        c[n - 5] ^= 1;
        assert!(err(&c).contains("CRC32-C"));
        let mut c = boc.clone();
        c[0] = 0x68;
        assert!(err(&c).contains("magic"));
        let mut extra = boc.clone();
        extra.push(0);
        assert!(err(&extra).contains("announces"));
        // Two roots.
        let two = hex::decode("b5ee9c72010102020008000000000000").unwrap();
        assert!(err(&two).contains("roots"));
        // An exotic cell: d1 = 8 (pruned branch type byte follows).
        let mut exotic = vec![0xb5, 0xee, 0x9c, 0x72, 0x01, 0x01, 1, 1, 0, 3, 0];
        exotic.extend_from_slice(&[0x08, 0x02, 0x01]);
        assert!(err(&exotic).contains("exotic"));
        // A level-1 cell.
        let mut lvl = vec![0xb5, 0xee, 0x9c, 0x72, 0x01, 0x01, 1, 1, 0, 3, 0];
        lvl.extend_from_slice(&[0x20, 0x02, 0x01]);
        assert!(err(&lvl).contains("level"));
        // A self-reference (a cycle).
        let mut cyc = vec![0xb5, 0xee, 0x9c, 0x72, 0x01, 0x01, 1, 1, 0, 3, 0];
        cyc.extend_from_slice(&[0x01, 0x00, 0x00]);
        assert!(err(&cyc).contains("later cell"));
        // Partial byte without its tag.
        let mut tag = vec![0xb5, 0xee, 0x9c, 0x72, 0x01, 0x01, 1, 1, 0, 3, 0];
        tag.extend_from_slice(&[0x00, 0x01, 0x00]);
        assert!(err(&tag).contains("completion tag"));
        // An unreachable cell: root 0 (leaf) and a second leaf.
        let mut unr = vec![0xb5, 0xee, 0x9c, 0x72, 0x01, 0x01, 2, 1, 0, 4, 0];
        unr.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]);
        assert!(err(&unr).contains("not reachable"));
    }

    #[test]
    fn limits() {
        // A chain 1025 deep: refused by default, accepted with a higher limit.
        let mut c = CellBuilder::new().build();
        for _ in 0..1025 {
            let mut b = CellBuilder::new();
            b.store_ref(c).unwrap();
            c = b.build();
        }
        assert_eq!(c.depth(), 1025);
        let boc = c.to_boc();
        assert!(matches!(Cell::from_boc(&boc), Err(TonError::BadBoc(r)) if r.contains("deep")));
        let big = BocLimits {
            max_cells: 2000,
            max_depth: 2000,
        };
        assert_eq!(Cell::from_boc_with_limits(&boc, big).unwrap(), c);
        let few = BocLimits {
            max_cells: 10,
            max_depth: 2000,
        };
        assert!(
            matches!(Cell::from_boc_with_limits(&boc, few), Err(TonError::BadBoc(r)) if r.contains("cells"))
        );
    }

    #[test]
    fn shared_subtrees_are_linear() {
        // Each level references the one below twice: 2^200 paths, 201 cells.
        let mut c = CellBuilder::new().build();
        for _ in 0..200 {
            let mut b = CellBuilder::new();
            b.store_ref(c.clone()).unwrap().store_ref(c).unwrap();
            c = b.build();
        }
        let boc = c.to_boc();
        assert_eq!(boc[6], 201);
        assert_eq!(Cell::from_boc(&boc).unwrap().hash(), c.hash());
    }

    #[test]
    fn index_and_cache_bits() {
        // The same leaf with an index: ab, one cell ending at offset 3.
        let with_idx = {
            let mut b = vec![0xb5, 0xee, 0x9c, 0x72, 0x81, 0x01, 1, 1, 0, 3, 0, 3];
            b.extend_from_slice(&[0x00, 0x02, 0xab]);
            b
        };
        assert_eq!(Cell::from_boc(&with_idx).unwrap().data(), &[0xab]);
        let mut wrong = with_idx.clone();
        wrong[11] = 2;
        assert!(Cell::from_boc(&wrong).is_err());
        let mut cached = with_idx.clone();
        cached[4] = 0xa1;
        cached[11] = 7; // 3 << 1 | cache bit
        assert_eq!(Cell::from_boc(&cached).unwrap().data(), &[0xab]);
    }
}
