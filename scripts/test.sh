#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script):
# unit, integration and vector tests on both crypto backends, the CLI,
# dependency rules, wasm32 build, a short fuzz run, then fmt, clippy, doc.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
need_vectors
# libtorch (pinned PyTorch in a venv cached outside the clone) and the real
# model the tests use: installed and exported once, then reused.
source "$ROOT/scripts/torch-env.sh"
cd "$ROOT"
LOG="$(mktemp)"
# No incremental caches: a clean CI clone gains nothing from them and they
# are the largest part of a debug target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Phase times, printed at the end: what a cold run spends where.
PHASES=()
phase_name="toolchain, vectors, libtorch venv"
phase_start=$SECONDS
phase() {
  PHASES+=("$(printf '%6ds  %s' $((SECONDS - phase_start)) "$phase_name")")
  phase_name="$1"
  phase_start=$SECONDS
  log "$1"
}
# Printed however the script ends (a failing phase is the last line).
print_phases() {
  PHASES+=("$(printf '%6ds  %s' $((SECONDS - phase_start)) "$phase_name")")
  echo "phase times (seconds), total ${SECONDS}s:" >&2
  printf '%s\n' "${PHASES[@]}" >&2
}
trap 'print_phases; rm -f "$LOG"' EXIT
log "disk free before the build: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ')"

phase "guest image: boot tools, then two builds compared byte for byte"
bash "$ROOT/scripts/image-deps.sh"
bash "$ROOT/images/reproduce.sh"
# Before the cargo tests: the sandbox chain API (contracts/scripts/chain-api.mjs,
# a test double) that the chain, host, client, cocoon-registry and network
# (tests/tests/e2e_network.rs) tests start needs them too; under CI a missing
# node fails those tests instead of skipping them (SandboxChain::start_or_skip).
phase "payment contract tools (Node.js, pinned @ton npm packages)"
bash "$ROOT/scripts/ton-deps.sh"
# The rebuild was only for the comparison.
rm -rf "$ROOT/images/out/image-rebuild"
export COCOON_IMAGE_DIR="$ROOT/images/out/image"
# The image tests use KVM when the launcher's probe (a boot of the image's
# own kernel to its init) works under it, TCG otherwise, one VM at a time;
# COCOON_IMAGE_ACCEL=kvm|tcg overrides the choice.

phase "cargo test --workspace (aws-lc backend)"
cargo test --workspace --all-targets 2>&1 | tee -a "$LOG"
cargo test --workspace --doc 2>&1 | tee -a "$LOG"

phase "payment contract: @ton/sandbox tests (no network)"
(cd "$ROOT/contracts" && node --test test/) 2>&1 | tee "$LOG.node"
# Counted with the cargo tests.
node_pass=$(grep -E '^# pass ' "$LOG.node" | awk '{print $3}')
node_fail=$(grep -E '^# fail ' "$LOG.node" | awk '{print $3}')
echo "test result: node. ${node_pass:-0} passed; ${node_fail:-1} failed" | tee -a "$LOG"
rm -f "$LOG.node"

phase "vector suites on the pure-Rust backend (the one wasm32 uses)"
# A package of its own (tests/pure-rust): in cocoon-tests the client and
# host crates would turn aws-lc back on; its backend test fails unless the
# verifier really built without it.
cargo test -p cocoon-pure-rust-vectors --test backend --test snp_vectors --test nvidia_vectors --test nvidia_rim --test tdx_vectors 2>&1 | tee -a "$LOG"
cargo test -p cocoon-verifier --no-default-features --lib 2>&1 | tee -a "$LOG"

phase "SEV-SNP revocation with test-signed ARK/ASK/VCEK chains and CRLs (feature test-roots, test-only)"
cargo test -p cocoon-verifier --features test-roots --test snp_crl 2>&1 | tee -a "$LOG"

phase "dependency rules"
bash "$ROOT/.ci/check-deps.sh"

phase "verifier builds for wasm32-unknown-unknown"
if rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || timeout 180 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
  cargo build -q -p cocoon-verifier --no-default-features --target wasm32-unknown-unknown
  echo "wasm32 build: ok"
else
  echo "wasm32 build: SKIPPED (the wasm32-unknown-unknown target cannot be installed on this machine)"
fi

if [ -x "$ROOT/.ci/fuzz.sh" ] || [ -f "$ROOT/.ci/fuzz.sh" ]; then
  log "fuzzing briefly"
  bash "$ROOT/.ci/fuzz.sh"
  # The sanitizer build is only needed again for another fuzz run; a CI
  # clone (COCOON_PRUNE=1, set by .ci/run) gives its disk back.
  if [ "${COCOON_PRUNE:-0}" = 1 ]; then rm -rf "$ROOT/fuzz/target"; fi
fi

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
phase "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

log "disk free after the suite: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ')"
passed=$(grep -oE 'test result: [a-z]+\. [0-9]+ passed' "$LOG" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E 'test result:' "$LOG" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
