//! What the tests that compare against the `@ton` npm packages share.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The JSON that `contracts/scripts/<script>` prints, run with node at test
/// time; `None` (skipped, said on stderr) when node or the pinned packages
/// (`scripts/ton-deps.sh`) are missing, except under CI (`CI` set), where
/// their absence fails the test.
pub fn node_fixtures(script: &str) -> Option<Value> {
    let contracts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !contracts.join("node_modules/@ton/sandbox").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: node and contracts/node_modules are required (scripts/ton-deps.sh)"
        );
        eprintln!("SKIPPED: no node or no contracts/node_modules (run scripts/ton-deps.sh)");
        return None;
    }
    let out = Command::new("node")
        .arg(format!("scripts/{script}"))
        .current_dir(&contracts)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("fixtures are JSON"))
}
