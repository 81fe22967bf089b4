#!/usr/bin/env bash
# Fuzz smoke test for SNP report and certificate parsing: seeds the corpus
# from the shared vectors, builds every target in fuzz/ with cargo-fuzz and
# runs each for a bounded time. Exits non-zero when a target crashes (panic,
# sanitizer report, timeout or OOM); the input is saved under
# fuzz/artifacts/<target>/.
#
# Environment:
#   COCOON_VECTORS           vectors directory (default ../shared/vectors from the repo root)
#   COCOON_FUZZ_SECONDS      seconds per target (default: 90 s shared by the targets, so
#                            ~1.5 min after the build however many there are)
#   COCOON_FUZZ_SANITIZER    cargo-fuzz --sanitizer (default address)
#   COCOON_FUZZ_TARGET_DIR   cargo target dir (default fuzz/target, apart from the workspace's)
#   COCOON_FUZZ_FALLBACK=1   skip cargo-fuzz and run the plain-test fallback (for testing it)
#
# Toolchain: `cargo +nightly fuzz` when rustup has a nightly; otherwise (or
# when that nightly cannot build the targets) the default, stable toolchain
# with RUSTC_BOOTSTRAP=1, which lets it accept the -Zsanitizer flag
# cargo-fuzz passes. If cargo-fuzz cannot be installed or cannot build, each
# target's function runs as a plain test over the corpus
# (fuzz/tests/replay.rs) and the output says so loudly.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# The targets: the [[bin]] entries of fuzz/Cargo.toml, which must be the
# names of cocoon_fuzz::TARGETS (the fallback's list) too.
mapfile -t targets < <(awk '/^\[\[bin\]\]/ {bin=1; next} bin && /^name = / {gsub(/"/, "", $3); print $3; bin=0}' fuzz/Cargo.toml)
mapfile -t listed < <(grep -oE '^    \("[a-z0-9_]+",' fuzz/src/lib.rs | grep -oE '[a-z0-9_]+')
if [ "$(printf '%s\n' "${targets[@]}" | sort)" != "$(printf '%s\n' "${listed[@]}" | sort)" ]; then
  echo "fuzz.sh: fuzz/Cargo.toml's [[bin]] targets and cocoon_fuzz::TARGETS in fuzz/src/lib.rs differ:" >&2
  diff <(printf '%s\n' "${targets[@]}" | sort) <(printf '%s\n' "${listed[@]}" | sort) >&2 || true
  exit 1
fi
seconds="${COCOON_FUZZ_SECONDS:-$((90 / ${#targets[@]}))}"
sanitizer="${COCOON_FUZZ_SANITIZER:-address}"
export CARGO_TARGET_DIR="${COCOON_FUZZ_TARGET_DIR:-$repo_root/fuzz/target}"
logs="$repo_root/fuzz/artifacts/ci-logs"
mkdir -p "$logs"
started=$SECONDS

say() { echo "fuzz.sh: $*"; }

# 1. Seed corpus (fails with a clear message when the vectors are absent).
fuzz/seed.sh

# Plain-test fallback: no coverage guidance, no sanitizer, but the same
# target functions over the seeds plus random mutations.
fallback() {
    local why="$1"
    echo
    echo "################################################################################"
    echo "## WARNING: cargo-fuzz is NOT usable here ($why)."
    echo "## Falling back to running each target's function as a plain test over the"
    echo "## corpus plus random mutations (fuzz/tests/replay.rs). This is NOT fuzzing:"
    echo "## no coverage guidance, no sanitizer."
    echo "################################################################################"
    echo
    local rc=0
    CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
        COCOON_FUZZ_SECONDS="$seconds" \
        cargo test --release --manifest-path fuzz/Cargo.toml --test replay -- --nocapture \
        2>&1 | tee "$logs/replay.log" || rc=$?
    echo
    grep '^REPLAY ' "$logs/replay.log" | sed 's/^/fuzz.sh: /' || true
    if [[ $rc -ne 0 ]]; then
        say "FAILED: the plain-test fallback found a problem (exit $rc); inputs under fuzz/artifacts/<target>/replay-crash-*"
        exit 1
    fi
    say "WARNING: fallback only (cargo-fuzz unusable: $why); no crash in $((SECONDS - started)) s"
    exit 0
}

if [[ "${COCOON_FUZZ_FALLBACK:-0}" == 1 ]]; then
    fallback "COCOON_FUZZ_FALLBACK=1"
fi

# 2. cargo-fuzz, installed once.
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked; then
        fallback "cargo install cargo-fuzz failed"
    fi
fi
say "$(cargo fuzz --version)"

# 3. Toolchain: a rustup nightly if there is one, else (or if the nightly
#    cannot build the targets) the default toolchain with RUSTC_BOOTSTRAP=1.
toolchains="$(rustup toolchain list 2>/dev/null || true)"
nightly="$(awk '/^nightly/ { print $1; exit }' <<<"$toolchains")"

use_nightly() {
    fuzz=(cargo "+$nightly" fuzz)
    repro_env=""
    unset RUSTC_BOOTSTRAP
    say "toolchain: $nightly ($(rustc "+$nightly" --version))"
}
use_bootstrap() {
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    repro_env="RUSTC_BOOTSTRAP=1 "
    say "toolchain: $(rustc --version) with RUSTC_BOOTSTRAP=1"
}

# 4. Build every target once (the runs below then only re-check freshness).
build() {
    local started_at=$SECONDS
    if "${fuzz[@]}" build --sanitizer "$sanitizer" 2>&1 | tee "$logs/build.log"; then
        say "build took $((SECONDS - started_at)) s"
        return 0
    fi
    return 1
}
if [[ -n "$nightly" ]] && cargo "+$nightly" --version >/dev/null 2>&1; then
    use_nightly
    if ! build; then
        say "cargo fuzz build failed on $nightly; retrying with the default toolchain and RUSTC_BOOTSTRAP=1"
        use_bootstrap
        build || fallback "cargo fuzz build failed with $nightly and with RUSTC_BOOTSTRAP=1, see fuzz/artifacts/ci-logs/build.log"
    fi
else
    say "no nightly toolchain installed"
    use_bootstrap
    build || fallback "cargo fuzz build failed with RUSTC_BOOTSTRAP=1, see fuzz/artifacts/ci-logs/build.log"
fi

# 5. Run each target for a bounded time.
failed=()
summary=()
runs_started=$SECONDS
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    say "running $t for ${seconds}s"
    rc=0
    "${fuzz[@]}" run --sanitizer "$sanitizer" "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    added="$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n1)"
    cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2 || true)"
    if [[ -z "$runs" ]]; then
        # Stats are not printed after a crash: take the last status line.
        runs="$(grep -Eo '^#[0-9]+' "$log" | tail -n1 | tr -d '#' || true)"
    fi
    if [[ $rc -eq 0 ]]; then
        summary+=("$t: ok, ${runs:-?} runs (${eps:-?} exec/s), cov ${cov:-?}, ${added:-?} new corpus units")
    else
        failed+=("$t")
        artifact="$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n1 | cut -d' ' -f5 || true)"
        summary+=("$t: FAILED (exit $rc) after ${runs:-?} runs; input ${artifact:-not saved}; log $log")
        echo "----- last 60 lines of $log (cut to 300 columns) -----"
        tail -n 60 "$log" | cut -c1-300
        echo "----- reproduce: ${repro_env}${fuzz[*]} run --sanitizer $sanitizer $t ${artifact:-<artifact>} -----"
    fi
done

echo
for line in "${summary[@]}"; do
    say "$line"
done
say "fuzzing took $((SECONDS - runs_started)) s, $((SECONDS - started)) s in all (toolchain: ${fuzz[*]}${RUSTC_BOOTSTRAP:+, RUSTC_BOOTSTRAP=1})"
if [[ ${#failed[@]} -gt 0 ]]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
