//! The suites of this package must have run on the pure-Rust backend.

#[test]
fn the_verifier_uses_the_pure_rust_backend() {
    // A `--workspace` build unifies features with crates that turn aws-lc
    // on; only a run of this package alone proves the pure-Rust backend.
    if std::env::var_os("COCOON_EXPECT_PURE_RUST").is_some() {
        assert_eq!(cocoon_verifier::SIGNATURE_BACKEND, "rustcrypto");
    }
}
