//! The suites of this package must have run on the pure-Rust backend.
//! Not part of a `--workspace` run (`test = false`): scripts/test.sh
//! builds this package alone and names its tests.

#[test]
fn the_verifier_uses_the_pure_rust_backend() {
    assert_eq!(cocoon_verifier::SIGNATURE_BACKEND, "rustcrypto");
}
