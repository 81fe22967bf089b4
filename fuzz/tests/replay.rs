//! Fallback for machines where cargo-fuzz cannot run: each fuzz target's
//! function as a plain test over `corpus/<target>/`, followed by simple
//! random mutations of the seeds (bit flips, interesting bytes, splices,
//! truncations, insertions) for a bounded time. No coverage feedback, so it
//! is much weaker than libFuzzer, but it runs on stable Rust with nothing
//! extra installed.
//!
//! Environment:
//! * `COCOON_FUZZ_CORPUS`: the corpus root (default `<this crate>/corpus`).
//! * `COCOON_FUZZ_SECONDS`: mutation time per target (default 5).
//! * `COCOON_FUZZ_TARGET`: run only this target.
//!
//! A failing input is written to `artifacts/<target>/replay-crash-<n>`
//! (beside `corpus/`) before the test fails.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cocoon_fuzz::TARGETS;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0x81, 0xff, 0x30, 0x82];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            3 => input.truncate(rng.below(len + 1)),
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1);
                input.drain(start..end);
            }
            _ => {
                // Splice: a tail of another seed.
                if let Some(other) = seeds.get(rng.below(seeds.len())) {
                    let at = rng.below(len + 1);
                    let from = rng.below(other.len() + 1);
                    input.truncate(at);
                    input.extend_from_slice(&other[from..]);
                }
            }
        }
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn save_crash(target: &str, data: &[u8]) -> PathBuf {
    let dir = crate_dir().join("artifacts").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let mut n = 0;
    loop {
        let p = dir.join(format!("replay-crash-{n}"));
        if !p.exists() {
            let _ = std::fs::write(&p, data);
            return p;
        }
        n += 1;
    }
}

#[test]
fn replay_corpus_and_mutations() {
    let corpus_root = std::env::var_os("COCOON_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("corpus"));
    let seconds: u64 = std::env::var("COCOON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("COCOON_FUZZ_TARGET").ok();
    let mut ran = 0;
    for (name, run) in TARGETS {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        ran += 1;
        let dir = corpus_root.join(name);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "corpus {} unreadable ({e}); run fuzz/seed.sh first",
                    dir.display()
                )
            })
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| std::fs::read(e.path()).expect("read seed"))
            .collect();
        seeds.sort();
        assert!(
            !seeds.is_empty(),
            "corpus {} is empty; run fuzz/seed.sh first",
            dir.display()
        );
        let check = |data: &[u8]| {
            if catch_unwind(AssertUnwindSafe(|| run(data))).is_err() {
                let p = save_crash(name, data);
                panic!(
                    "target {name} panicked; input saved to {} (reproduce with `cargo fuzz run {name} {}`)",
                    p.display(),
                    p.display()
                );
            }
        };
        let started = Instant::now();
        let mut runs: u64 = 0;
        for seed in &seeds {
            check(seed);
            runs += 1;
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let deadline = started + Duration::from_secs(seconds);
        let mut input = Vec::new();
        while Instant::now() < deadline {
            input.clear();
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &seeds, &mut input);
            check(&input);
            runs += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "REPLAY {name}: {runs} runs ({} seeds + mutations) in {secs:.1}s, {:.0} exec/s, no panic",
            seeds.len(),
            runs as f64 / secs.max(0.001)
        );
    }
    assert!(ran > 0, "COCOON_FUZZ_TARGET={only:?} names no target");
}
