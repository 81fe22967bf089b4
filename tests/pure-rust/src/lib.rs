//! The shared vector suites (`tests/tests/{snp_vectors, nvidia_vectors,
//! nvidia_rim, tdx_vectors}.rs`) run again on the verifier's pure-Rust
//! (RustCrypto) backend, the one wasm32 builds use.
//!
//! They live in a package of their own because `cargo test -p cocoon-tests
//! --no-default-features` did not do this: cargo unifies features within a
//! build, and the client and host crates the end-to-end tests need turn
//! the verifier's `aws-lc` feature back on. Run alone,
//! `cargo test -p cocoon-pure-rust-vectors --test backend --test ...`
//! builds the verifier without it, and `backend.rs` fails unless that is
//! so. The tests are `test = false`, so a `--workspace` run (aws-lc on)
//! does not run them.
