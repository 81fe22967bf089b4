#!/usr/bin/env bash
# The main job on an embedded default, on one machine:
#   1. a host agent (cocoon-host), an enclave (cocoon-enclave on the
#      SIMULATED TEE: NOT CONFIDENTIAL, for demos only) serving two real
#      models with libtorch (SmolLM2-135M-Instruct for chat,
#      all-MiniLM-L6-v2 for embeddings; installed and exported once by
#      scripts/torch-env.sh) and a client (cocoon-client) that verifies the
#      enclave's evidence, seals a question to it, streams the sealed answer
#      back and checks the signed receipt;
#   2. the same client under the default policy, refusing the simulated TEE;
#   3. the verifier on real hardware evidence: an AMD SEV-SNP report (Genoa)
#      checked against AMD's pinned roots, then a rejection.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
need_vectors
cd "$ROOT"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# On a first run, PyTorch's download and install and the two model exports
# (scripts/torch-env.sh) take minutes. The three binaries that do not link
# libtorch are built meanwhile, in the background; cocoon-enclave, which
# needs libtorch to build, follows once it is installed.
EARLY_BUILD=""
if ! COCOON_TORCH_CHECK_ONLY=1 bash "$ROOT/scripts/torch-env.sh" 2>/dev/null; then
  log "building cocoon-host, cocoon-client and cocoon-verify in the background while PyTorch and the models are installed"
  cargo build -q -p cocoon-host -p cocoon-client -p cocoon-verifier --bins >"$WORK/early-build.log" 2>&1 &
  EARLY_BUILD=$!
  PIDS+=("$EARLY_BUILD")
fi
# Pinned PyTorch (libtorch for the enclave) and the two models: first run
# only, cached in ~/.cache/cocoon.
source "$ROOT/scripts/torch-env.sh"
cd "$ROOT"
if [ -n "$EARLY_BUILD" ] && ! wait "$EARLY_BUILD"; then
  cat "$WORK/early-build.log" >&2
  echo "error: building cocoon-host, cocoon-client and cocoon-verify failed (above)" >&2
  exit 1
fi
# The dev profile: its dependencies (crypto, parsers, tokenizers, SQLite)
# are optimized (Cargo.toml), the model runs in libtorch, and the
# project's own crates at opt-level 0 cost no time the demo would notice;
# it compiles faster than the release profile (opt-level 3 and debug info
# for everything) on 2 cores, and the test suite (./scripts/test.sh)
# builds in the same profile, so it can reuse the dependencies whose
# features agree.
log "building cocoon-enclave, cocoon-host, cocoon-client, cocoon-verify (the first build takes a few minutes)"
cargo build -q -p cocoon-enclave -p cocoon-host -p cocoon-client -p cocoon-verifier --bins

wait_ready() { # file, seconds -> the ready line
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if grep -q '^ready ' "$1" 2>/dev/null; then grep -m1 '^ready ' "$1"; return 0; fi
    sleep 0.1
  done
  echo "error: no ready line in $1 after $2 s:" >&2
  cat "$1" >&2
  return 1
}

# The enclave's configuration: both models, each file named with the
# SHA-256 the enclave checks before loading it (and publishes in its claims).
{
  printf 'image_id = "cocoon-dev-unmeasured"\nbackend = "tch"\ndevice = "auto"\n\n'
  printf '[prices.smollm2-135m-instruct]\nprompt = 1\ncompletion = 4\n\n'
  printf '[prices.all-minilm-l6-v2]\nprompt = 1\ncompletion = 0\n\n'
  cat "$COCOON_CHAT_MODEL_DIR/model.toml"
  echo
  cat "$COCOON_MODEL_DIR/model.toml"
} >"$WORK/enclave.toml"

log "starting the enclave on the SIMULATED TEE (NOT CONFIDENTIAL: no hardware isolation, demo only)"
"$BIN/cocoon-enclave" --tee simulated --listen "unix:$WORK/enclave.sock" --config "$WORK/enclave.toml" 2>"$WORK/enclave.log" &
PIDS+=($!)
wait_ready "$WORK/enclave.log" 30 >/dev/null
grep -m1 "NOT CONFIDENTIAL" "$WORK/enclave.log" >&2 || true

# The host agent verifies its enclave too (it must trust the receipt key it
# bills by), so it needs a policy that names the simulated TEE's opt-in.
cat >"$WORK/simulated-policy.toml" <<'TOML'
release = "cocoon-dev-unmeasured"
max_evidence_age = 3600

# DANGER: accepts the simulated TEE. Nothing is confidential with it: the
# host can read every prompt and answer. For demos and tests only.
[dangerous_simulated_tee]
i_understand_this_is_not_confidential = true
measurements = "skip"
TOML
cat >"$WORK/default-policy.toml" <<'TOML'
# A policy for real hardware: SEV-SNP guests of one measured image, and no
# [dangerous_simulated_tee] table, so simulated evidence is refused.
release = "cocoon-image-2026.11.0"
max_evidence_age = 3600             # seconds, or "skip": how old a report may be

[snp]
measurements = ["c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc"]
min_tcb = "skip"
vmpl = 0
report_data = "skip"
host_data = "skip"
id_key_digests = "skip"
author_key_digests = "skip"
smt = "allowed"
revocation = "required"
TOML

log "starting the host agent (public API and loopback-only operator API on free ports)"
"$BIN/cocoon-host" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --enclave "unix:$WORK/enclave.sock" --policy "$WORK/simulated-policy.toml" \
  --ledger "$WORK/ledger.sqlite" 2>"$WORK/host.log" &
PIDS+=($!)
ready=$(wait_ready "$WORK/host.log" 30)
HOST="http://$(sed -E 's/.*listen=([^ ]+).*/\1/' <<<"$ready")"
ADMIN="http://$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$ready")"

QUESTION="${COCOON_DEMO_QUESTION:-What is the capital of France? Answer in one sentence.}"
log "client: verify the enclave, seal the question, stream the answer, check the receipt"
echo "question: $QUESTION" >&2
"$BIN/cocoon-client" chat --provider "$HOST" --policy "$WORK/simulated-policy.toml" \
  --account-key "$WORK/account.key" --model smollm2-135m-instruct --max-tokens 64 "$QUESTION"
echo

log "the host's ledger now holds the receipt it verified before releasing the answer's last chunk"
if command -v curl >/dev/null 2>&1; then
  curl -s "$ADMIN/admin/ledger/export?after=0" | head -c 600
  echo
fi

log "the same client under the default policy refuses the simulated TEE and sends nothing"
set +e
"$BIN/cocoon-client" chat --provider "$HOST" --policy "$WORK/default-policy.toml" \
  --account-key "$WORK/account.key" "this question is never sent"
code=$?
set -e
[ "$code" = 1 ] || { echo "expected exit status 1 for a refused provider, got $code" >&2; exit 1; }

V="$COCOON_VECTORS/snp"
log "the verifier on real hardware evidence: snp/genoa-v5-oak/report.bin, as of 2025-10-01"
"$BIN/cocoon-verify" snp --report "$V/genoa-v5-oak/report.bin" --cert "$V/genoa-v5-oak/vcek.der" \
  --measurement c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc \
  --at 2025-10-01T08:00:00Z

log "a Milan report checked against a measurement it does not have; its guest policy also allows debugging"
set +e
"$BIN/cocoon-verify" snp --report "$V/milan-v2-gsg/attestation.bin" --cert "$V/milan-v2-gsg/vcek.der" \
  --measurement "$(printf 'ab%.0s' {1..48})" --at 2025-10-01T08:00:00Z
code=$?
set -e
[ "$code" = 1 ] || { echo "expected exit status 1 for a rejection, got $code" >&2; exit 1; }
log "done. Exit status 0 means accepted, 1 rejected, 64 a usage error."
log "the answer above came from SmolLM2-135M-Instruct (135M parameters, greedy decoding) run by libtorch inside cocoon-enclave; the enclave's TEE was SIMULATED"
