//! The TON reading primitives of `cocoon_protocol::ton`: what a chain API
//! answers (account states, get-method stacks, transactions) is parsed by
//! them before anything else looks at it.

use std::hint::black_box;

use cocoon_protocol::settlement::ContractAddress;
use cocoon_protocol::ton::{block, dict, Cell, CellSlice, TonError};

/// `ton_boc`: the input as a bag of cells ([`Cell::from_boc`]). A cell that
/// parses must serialise and parse back to the same hash, and is then read
/// with every [`CellSlice`] primitive and as a dictionary with keys of
/// 1 to 256 bits (the first byte picks); a failed read must leave the
/// slice where it was; and as a transaction
/// ([`block::parse_transaction`]). The input is also parsed as an address in text.
pub fn ton_boc(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = ContractAddress::parse(s) {
            let back = ContractAddress::parse(&a.to_friendly(true, false));
            assert_eq!(back, Ok(a), "friendly form round trip");
        }
    }
    let cell = match Cell::from_boc(data) {
        Ok(c) => c,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    let again = Cell::from_boc(&cell.to_boc()).expect("our own BOC parses");
    assert_eq!(again.hash(), cell.hash(), "BOC round trip changes the hash");
    assert_eq!(again.depth(), cell.depth());
    match block::parse_transaction(&cell) {
        Ok(t) => assert_eq!(t.hash, cell.hash(), "a transaction's hash is its root's"),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    let key_bits = usize::from(data.get(data.len() / 2).copied().unwrap_or(0)) + 1;
    match dict::parse_hashmap_with_limit(&cell, key_bits, 4096) {
        Ok(entries) => {
            assert!(entries.len() <= 4096);
            for (k, v) in &entries {
                assert_eq!(k.len(), key_bits.div_ceil(8), "key length");
                black_box(v.remaining_bits());
            }
            assert!(
                entries.windows(2).all(|w| w[0].0 < w[1].0),
                "keys ascending and distinct"
            );
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
    // Read every primitive from every cell (breadth-first, bounded).
    let mut queue = vec![cell];
    let mut seen = 0;
    while let Some(c) = queue.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        queue.extend(c.refs().iter().cloned());
        read_all(c.as_slice());
    }
}

fn read_all(mut s: CellSlice) {
    let ops: [fn(&mut CellSlice) -> Result<(), TonError>; 9] = [
        |s| {
            s.load_address().map(|a| {
                black_box(a);
            })
        },
        |s| {
            s.load_coins().map(|v| {
                black_box(v);
            })
        },
        |s| {
            s.load_maybe_ref().map(|v| {
                black_box(v);
            })
        },
        |s| s.load_uint(7).map(|v| assert!(v < 128)),
        |s| s.load_int(13).map(|v| assert!((-4096..4096).contains(&v))),
        |s| {
            s.load_uint_wide(256).map(|v| {
                black_box(v);
            })
        },
        |s| s.load_bytes(3).map(|v| assert_eq!(v.len(), 3)),
        |s| s.load_bits(11).map(|v| assert_eq!(v[1] & 0x1f, 0)),
        |s| {
            s.load_ref().map(|v| {
                black_box(v);
            })
        },
    ];
    let mut i = 0;
    let mut failures = 0;
    while !s.is_empty() && failures < ops.len() {
        let before = (s.remaining_bits(), s.remaining_refs());
        match ops[i % ops.len()](&mut s) {
            Ok(()) => failures = 0,
            Err(e) => {
                black_box(e.to_string());
                assert_eq!(
                    (s.remaining_bits(), s.remaining_refs()),
                    before,
                    "a failed read moved the slice"
                );
                failures += 1;
            }
        }
        i += 1;
    }
    black_box(s.end().is_ok());
}
