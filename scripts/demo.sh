#!/usr/bin/env bash
# The main job on an embedded default: verify a real AMD SEV-SNP report
# (Genoa, from Project Oak's public test data) with its VCEK against AMD's
# pinned roots, under a policy pinned to its launch measurement, and print
# the verdict. Then show what a rejection looks like.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
need_vectors
cd "$ROOT"
log "building cocoon-verify (release)"
cargo build --release -q -p cocoon-verifier --bin cocoon-verify
BIN="$ROOT/target/release/cocoon-verify"
V="$COCOON_VECTORS/snp"

log "verifying snp/genoa-v5-oak/report.bin as of 2025-10-01 (the vector's verification time)"
"$BIN" snp --report "$V/genoa-v5-oak/report.bin" --cert "$V/genoa-v5-oak/vcek.der" \
  --measurement c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc \
  --at 2025-10-01T08:00:00Z

log "a Milan report checked against a measurement it does not have; its guest policy also allows debugging"
set +e
"$BIN" snp --report "$V/milan-v2-gsg/attestation.bin" --cert "$V/milan-v2-gsg/vcek.der" \
  --measurement "$(printf 'ab%.0s' {1..48})" --at 2025-10-01T08:00:00Z
code=$?
set -e
[ "$code" = 1 ] || { echo "expected exit status 1 for a rejection, got $code" >&2; exit 1; }
log "done: exit status 0 means accepted, 1 rejected, 64 a usage error"
