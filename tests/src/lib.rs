//! Helpers shared by Cocoon's cross-crate tests and benchmarks: locating the
//! shared attestation vectors and reading their manifest.
//!
//! The vectors live in `../shared/vectors` beside the repository (override
//! with `COCOON_VECTORS`). When they are absent every test that needs them
//! fails with a message saying where they were looked for; none silently
//! passes.
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
