#!/usr/bin/env bash
# Builds the guest image twice and compares the bytes: the first build into
# images/out/image with the usual cargo target directory, the second into
# a separate output directory with a fresh, empty target directory at
# another path (so neither cached artifacts nor build paths can make the
# two agree by accident). Exit 0 when every file's SHA-256 matches; 1 with
# the differing entries listed (cocoon-image list) otherwise.
#
# Usage: images/reproduce.sh [SECOND_OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIRST="$ROOT/images/out/image"
SECOND="${1:-$ROOT/images/out/image-rebuild}"
SCRATCH="$(mktemp -d /tmp/cocoon-rebuild.XXXXXX)"
trap 'rm -rf "$SCRATCH"' EXIT

echo "== first build -> $FIRST"
bash "$ROOT/images/build.sh" --out "$FIRST"
echo "== second build from scratch (target dir $SCRATCH/target) -> $SECOND"
rm -rf "$SECOND"
bash "$ROOT/images/build.sh" --out "$SECOND" --target-dir "$SCRATCH/target"

if cmp -s "$FIRST/SHA256SUMS" "$SECOND/SHA256SUMS"; then
  echo "reproducible: both builds gave identical bytes"
  cat "$FIRST/SHA256SUMS"
  exit 0
fi
echo "NOT REPRODUCIBLE: the two builds differ" >&2
diff "$FIRST/SHA256SUMS" "$SECOND/SHA256SUMS" >&2 || true
if ! cmp -s "$FIRST/initrd.cpio" "$SECOND/initrd.cpio"; then
  diff <(cd "$ROOT" && cargo run -q -p cocoon-image -- list "$FIRST/initrd.cpio") \
       <(cd "$ROOT" && cargo run -q -p cocoon-image -- list "$SECOND/initrd.cpio") >&2 || true
fi
exit 1
