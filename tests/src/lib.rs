//! Helpers shared by Cocoon's cross-crate tests and benchmarks: locating the
//! shared attestation vectors and reading their manifest.
//!
//! The vectors live in `../shared/vectors` beside the repository (override
//! with `COCOON_VECTORS`). When they are absent every test that needs them
//! fails with a message saying where they were looked for; none silently
//! passes. Besides the vectors, [`models`] finds the exported models and
//! their Python references, and `cocoon_test_kit::procs` starts and watches the real
//! binaries.
//!
//! What the suites in `tests/tests/` cover (each file's own docs say more):
//! the real vectors and their mutation suites (`snp_vectors`, `tdx_*`,
//! `nvidia_*`); end-to-end tests over the real binaries (`e2e_*`): the
//! sealed path with the CLI and the OpenAI endpoint (driven by the official
//! OpenAI Python client, `tests/python/openai_client.py`, and the requests
//! it must refuse), 1,000 concurrent streams and 20 SIGKILLs of the host
//! (`e2e_load`), the malicious host (including one that seals requests for
//! a victim's account, and one that floods the replay memory then
//! replays), evidence refreshed with the same keys and bound to a client
//! nonce (`e2e_fresh_evidence`), real models (`e2e_models`), settlement
//! (`e2e_settlement`: ledger, `settle`, `statement` and the sandbox
//! contract agree to the nanoton), GPU evidence at boot (`e2e_gpu`) and one
//! release for many providers (`e2e_release`); the settlement property
//! test (`settlement_property`: random crashes between commit,
//! acknowledgement and tab storage, no receipt counted twice). The
//! benchmarks in `tests/benches/` compare with peer crates (`sev`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The vectors directory, or a panic that says how to provide it.
pub fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COCOON_VECTORS") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("manifest.json").is_file(),
            "COCOON_VECTORS={} has no manifest.json",
            dir.display()
        );
        return dir;
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    assert!(
        default.join("manifest.json").is_file(),
        "attestation vectors not found at {}: check out shared/ beside the repository or set COCOON_VECTORS",
        default.display()
    );
    default
}

/// Read a vector file by its manifest path.
pub fn read_vector(rel: &str) -> Vec<u8> {
    let p = vectors_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read vector {}: {e}", p.display()))
}

/// The parsed `manifest.json`.
pub fn manifest() -> serde_json::Value {
    let bytes = read_vector("manifest.json");
    serde_json::from_slice(&bytes).expect("manifest.json is valid JSON")
}

/// Manifest entries of one kind (for example `"snp-report"`).
pub fn entries_of_kind(kind: &str) -> Vec<serde_json::Value> {
    manifest()["entries"]
        .as_array()
        .expect("manifest entries")
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// Decode a manifest hex string.
pub fn unhex(s: &serde_json::Value) -> Vec<u8> {
    hex::decode(s.as_str().expect("hex string")).expect("valid hex")
}

/// The TEST DOUBLE of NVIDIA's NVML library (`cocoon-fake-nvml`, a
/// cdylib), found beside the running test binary (cargo builds it before
/// the tests of a crate that names it as a dev-dependency).
pub fn fake_nvml_library() -> PathBuf {
    let name = format!(
        "{}cocoon_fake_nvml{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found near {}: build it with `cargo build -p cocoon-fake-nvml` \
                 (cargo test builds it as a dev-dependency)",
                exe.display()
            )
        })
}

pub mod models;

/// xorshift64*: a deterministic generator for randomised tests (a seed
/// reproduces a run), no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Side-by-side timing for the benchmarks: interleaved rounds, medians, and
/// the bench/test-mode switch criterion uses. Machines here are shared, so
/// benchmarks report ratios of medians taken in the same run.
pub mod bench {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    /// How a bench binary was started.
    pub struct Mode {
        /// `cargo bench` (not `--test`, not `--list`): measure for real.
        pub measuring: bool,
        /// Rounds for the interleaved ratio loop (0 when listing).
        pub rounds: usize,
    }

    /// Read the mode from the command line; `COCOON_BENCH_ROUNDS` overrides
    /// the number of rounds when measuring.
    pub fn mode(default_rounds: usize) -> Mode {
        let args: Vec<String> = std::env::args().collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        // criterion's own rule: only `--bench` without `--test` measures.
        let measuring = has("--bench") && !has("--test");
        let rounds = if has("--list") {
            0
        } else if measuring {
            std::env::var("COCOON_BENCH_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(default_rounds)
        } else {
            2
        };
        Mode { measuring, rounds }
    }

    /// Time one call, which must succeed.
    pub fn time(f: impl FnOnce() -> bool) -> Duration {
        let t = Instant::now();
        let ok = black_box(f());
        let d = t.elapsed();
        assert!(ok, "a verification failed inside the ratio loop");
        d
    }

    /// Median of `v` (sorted in place).
    pub fn median(v: &mut [Duration]) -> Duration {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    /// Run every path `rounds` times, rotating which goes first each round,
    /// and return the median time of each path.
    pub fn interleaved(rounds: usize, paths: &mut [&mut dyn FnMut() -> bool]) -> Vec<Duration> {
        let n = paths.len();
        let mut t: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); n];
        for round in 0..rounds {
            for k in 0..n {
                let p = (k + round) % n;
                t[p].push(time(&mut *paths[p]));
            }
        }
        t.iter_mut().map(|v| median(v)).collect()
    }

    /// Milliseconds with three decimals.
    pub fn ms(d: Duration) -> String {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }
}

/// Base64 and PEM as the mutation suites need them: decode a PEM chain to
/// DER, re-armour DER, and the alphabet for flipping characters in place.
pub mod pem {
    /// The standard base64 alphabet (RFC 4648 §4).
    pub const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Decode base64 text (padding and non-alphabet characters must already
    /// be removed, except `=` which is skipped). Panics on other characters:
    /// test input only.
    pub fn decode_base64(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for ch in s.bytes().filter(|b| *b != b'=') {
            let v = B64.iter().position(|a| *a == ch).expect("base64 character");
            acc = acc << 6 | v as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    /// The DER of every CERTIFICATE block of a PEM text.
    pub fn certificates(text: &str) -> Vec<Vec<u8>> {
        text.split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|blk| {
                let body: String = blk
                    .split("-----END CERTIFICATE-----")
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                decode_base64(&body)
            })
            .collect()
    }

    /// Armour DER certificates as PEM (64-character lines).
    pub fn to_pem(ders: &[Vec<u8>]) -> String {
        let mut s = String::new();
        for d in ders {
            let mut b64 = String::new();
            for chunk in d.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
                for i in 0..4 {
                    if i <= chunk.len() {
                        b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        b64.push('=');
                    }
                }
            }
            s.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                s.push_str(std::str::from_utf8(line).unwrap_or_default());
                s.push('\n');
            }
            s.push_str("-----END CERTIFICATE-----\n");
        }
        s
    }
}
