//! Our TON reading primitives against `tonlib-core` (the ston-fi Rust
//! library) on the same reference cells, side by side in one run: parse a
//! bag of cells and take the root's hash, serialise it back, and a
//! correctness cross-check (same hashes; each side parses the other's
//! output; what each accepts of a few malformed inputs). `tonlib-core` is a
//! dev-dependency of this bench only.
//!
//!     cargo bench -p cocoon-chain --bench ton_boc
//!
//! Prints one line per case: ns per operation for each and the ratio
//! (tonlib-core / ours: above 1 means ours is faster).

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64ct::Encoding as _;
use cocoon_protocol::ton::{Cell, CellBuilder};
use tonlib_core::cell::{BagOfCells, CellBuilder as TlBuilder};

/// A transaction the sandbox chain wrote (a transfer of 5 TON).
const TRANSACTION_B64: &str = "te6cckECBQEAAQsAA694Pf1VLmNym0cvy8yMRevMZpFwJVi2jsdSfhukA6DzGoAAAAAAAtxsAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaxbCdgAAAIAQMEAQGgAgCzSAGCV0EWWeL6lAKu7Vp9FlcSOdwsQ/TFCOSXh/WA2kt5ZwAg9/VUuY3KbRy/LzIxF68xmkXAlWLaOx1J+G6QDoPMahQEqBfIAAYII1oAAAAAAD0JAtYthOxAAIJy6y3KPnqFoMsD+BMVP0+dCDM3212rKqBuoCoEQAFgIxYpQvxRlfS+wk6JVM/UmG0oc/ayk4AIJn+CzwM2dKn4+gARDAlASoF8gAEgKmxUpQ==";

/// A full 4-ary tree of `depth` levels, every cell 100 distinct bytes.
fn tree(depth: u32, n: &mut u64) -> Cell {
    let mut b = CellBuilder::new();
    let mut bytes = [0u8; 100];
    for (i, x) in bytes.iter_mut().enumerate() {
        *n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *x = (*n >> 33) as u8 ^ i as u8;
    }
    b.store_bytes(&bytes).unwrap();
    if depth > 0 {
        for _ in 0..4 {
            b.store_ref(tree(depth - 1, n)).unwrap();
        }
    }
    b.build()
}

/// A chain of `len` cells.
fn chain(len: usize) -> Cell {
    let mut c = CellBuilder::new().build();
    for i in 0..len {
        let mut b = CellBuilder::new();
        b.store_uint(i as u128, 16).unwrap().store_ref(c).unwrap();
        c = b.build();
    }
    c
}

/// ns per call of `f`, over at least `min` of calls (after a warm-up).
fn time<F: FnMut()>(mut f: F, min: Duration) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < min {
        for _ in 0..8 {
            f();
        }
        n += 8;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let min = Duration::from_millis(
        std::env::var("COCOON_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
    );
    // The wallet v4r2 code (its hash is checked against the well-known
    // code hash by cocoon_chain::wallet's tests).
    let wallet = cocoon_chain::wallet::code().to_boc();
    let tx = base64ct::Base64::decode_vec(TRANSACTION_B64).unwrap();
    let mut seed = 7;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wallet v4r2 code", wallet),
        ("transaction", tx),
        ("4-ary tree, 1365 cells", tree(5, &mut seed).to_boc()),
        ("chain of 1000 cells", chain(1000).to_boc()),
    ];
    assert_eq!(
        hex::encode(Cell::from_boc(&cases[0].1).unwrap().hash()),
        "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0",
        "the wallet code constant is v4r2"
    );

    println!("correctness (same reference cells):");
    for (name, boc) in &cases {
        let ours = Cell::from_boc(boc).unwrap();
        let theirs = BagOfCells::parse(boc).unwrap().single_root().unwrap();
        assert_eq!(
            ours.hash().as_slice(),
            theirs.cell_hash().as_slice(),
            "{name}: root hashes differ"
        );
        // Each side parses the other's serialisation to the same hash.
        let their_boc = BagOfCells::from_root((*theirs).clone())
            .serialize(true)
            .unwrap();
        assert_eq!(Cell::from_boc(&their_boc).unwrap().hash(), ours.hash());
        let back = BagOfCells::parse(&ours.to_boc())
            .unwrap()
            .single_root()
            .unwrap();
        assert_eq!(back.cell_hash().as_slice(), ours.hash().as_slice());
        println!(
            "  {name}: {} bytes, same root hash {}, each parses the other's BOC",
            boc.len(),
            hex::encode(&ours.hash()[..8])
        );
    }

    println!("malformed inputs (accepted?):");
    let good = cases[1].1.clone();
    let mut crc = good.clone();
    let n = crc.len();
    crc[n - 5] ^= 1; // data changed, CRC32-C no longer matches
    let mut trailing = good.clone();
    trailing.push(0);
    let truncated = good[..good.len() - 6].to_vec();
    let two_roots = {
        let a = CellBuilder::new().build();
        let mut b = TlBuilder::new();
        b.store_u8(8, 1).unwrap();
        let b = b.build().unwrap();
        let ta = BagOfCells::parse(&a.to_boc())
            .unwrap()
            .single_root()
            .unwrap();
        BagOfCells::new(&[ta, std::sync::Arc::new(b)])
            .serialize(false)
            .unwrap()
    };
    for (name, bad) in [
        ("CRC32-C mismatch", &crc),
        ("a trailing byte", &trailing),
        ("truncated", &truncated),
        ("two roots", &two_roots),
    ] {
        let ours = Cell::from_boc(bad).is_ok();
        let theirs = BagOfCells::parse(bad).and_then(|b| b.single_root()).is_ok();
        println!("  {name}: ours {ours}, tonlib-core {theirs}");
        assert!(!ours, "{name} must be refused by ours");
    }

    println!("speed (ns per operation, ratio = tonlib-core / ours):");
    for (name, boc) in &cases {
        let ours = time(
            || {
                let c = Cell::from_boc(black_box(boc)).unwrap();
                black_box(c.hash());
            },
            min,
        );
        let theirs = time(
            || {
                let c = BagOfCells::parse(black_box(boc))
                    .unwrap()
                    .single_root()
                    .unwrap();
                black_box(c.cell_hash());
            },
            min,
        );
        println!(
            "  parse + root hash, {name}: ours {ours:.0}, tonlib-core {theirs:.0}, ratio {:.2}",
            theirs / ours
        );
        let our_cell = Cell::from_boc(boc).unwrap();
        let their_bag = BagOfCells::parse(boc).unwrap();
        let ours = time(|| drop(black_box(our_cell.to_boc())), min);
        let theirs = time(|| drop(black_box(their_bag.serialize(true).unwrap())), min);
        println!(
            "  serialise, {name}: ours {ours:.0}, tonlib-core {theirs:.0}, ratio {:.2}",
            theirs / ours
        );
    }
}
