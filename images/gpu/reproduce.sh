#!/usr/bin/env bash
# Builds the GPU layer twice, each time in a fresh build directory under a
# different path and into a different output directory, and compares the
# SHA-256 of every .ko, then of every other file and link of the two trees.
# For a module that differs it names the ELF sections that differ.
#
# Usage: images/gpu/reproduce.sh [SCRATCH_DIR]   (default: a new temp dir)
# The downloads are cached (COCOON_CACHE), so only the first build fetches.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRATCH="${1:-$(mktemp -d "${TMPDIR:-/tmp}/cocoon-gpu-repro.XXXXXX")}"
mkdir -p "$SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
step() { echo "[gpu-repro $(date +%H:%M:%S)] $*"; }

# Different build paths: TMPDIR decides where build.sh unpacks and builds.
for n in 1 2; do
  rm -rf "$SCRATCH/out$n" "$SCRATCH/build-path-$n"
  mkdir -p "$SCRATCH/build-path-$n/$( [ $n = 1 ] && echo a || echo somewhere/else )"
done
start=$(date +%s)
TMPDIR="$SCRATCH/build-path-1/a" "$ROOT/images/gpu/build.sh" "$SCRATCH/out1"
step "first build: $(( $(date +%s) - start )) s"
start=$(date +%s)
TMPDIR="$SCRATCH/build-path-2/somewhere/else" "$ROOT/images/gpu/build.sh" "$SCRATCH/out2"
step "second build: $(( $(date +%s) - start )) s"

section_sha() { # file section -> SHA-256 of the section's bytes
  local t; t="$(mktemp -d "$SCRATCH/sec.XXXXXX")"
  objcopy --dump-section "$2=$t/s" "$1" "$t/o" 2>/dev/null || : > "$t/s"
  sha256sum < "$t/s" | cut -c1-16
  rm -rf "$t"
}
status=0
while read -r ko; do
  a="$SCRATCH/out1/tree/$ko"; b="$SCRATCH/out2/tree/$ko"
  ha="$(sha256sum < "$a" | cut -d' ' -f1)"; hb="$(sha256sum < "$b" | cut -d' ' -f1)"
  if [ "$ha" = "$hb" ]; then
    step "identical: $ko $ha"
  else
    status=1
    step "DIFFERENT: $ko ($ha vs $hb); sections that differ:"
    for sec in $(readelf -SW "$a" | sed -n 's/^ *\[ *[0-9]*\] \([^ ]*\) .*/\1/p' | grep -v '^NULL$'); do
      sa="$(section_sha "$a" "$sec")"; sb="$(section_sha "$b" "$sec")"
      [ "$sa" = "$sb" ] || echo "    $sec"
    done
  fi
done < "$SCRATCH/out1/gpu-modules"
cmp -s "$SCRATCH/out1/gpu-modules" "$SCRATCH/out2/gpu-modules" || { status=1; step "DIFFERENT: gpu-modules"; }
if ! diff <(cat "$SCRATCH/out1/GPU-SHA256SUMS" "$SCRATCH/out1/gpu-links") \
          <(cat "$SCRATCH/out2/GPU-SHA256SUMS" "$SCRATCH/out2/gpu-links"); then
  status=1
  step "DIFFERENT: the trees (lines above: < first build, > second)"
fi
if [ $status = 0 ]; then
  step "the two builds are byte-identical ($(wc -l < "$SCRATCH/out1/GPU-SHA256SUMS") files, $(wc -l < "$SCRATCH/out1/gpu-links") links)"
  rm -rf "$SCRATCH/out2"
else
  step "the builds differ; both are kept in $SCRATCH"
fi
exit $status
