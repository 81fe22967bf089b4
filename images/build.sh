#!/usr/bin/env bash
# Builds the Cocoon guest image from the pinned inputs in images/image.lock:
#
#   OUT/vmlinuz      Debian's kernel (bzImage), byte for byte from the package
#   OUT/vmlinux      the same kernel uncompressed (no-TEE launches under TCG)
#   OUT/initrd.cpio  newc initramfs: /init = static cocoon-enclave, the
#                    decompressed modules PID 1 loads, /etc/cocoon/enclave.toml
#   OUT/cmdline.txt  the measured kernel command line
#   OUT/image.env    release name, enclave vsock port (for cocoon-host launch)
#   OUT/SHA256SUMS   the digests of all of the above
#
# Two builds from the same commit give the same bytes (see images/README.md
# for what makes it so); images/reproduce.sh checks it.
#
# Usage: images/build.sh [--out DIR] [--target-dir DIR] [--enclave-config FILE]
# Environment: COCOON_CACHE (download cache, default ~/.cache/cocoon).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/images/out/image"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ENCLAVE_CONFIG="$ROOT/images/enclave.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --target-dir) TARGET_DIR="$2"; shift 2 ;;
    --enclave-config) ENCLAVE_CONFIG="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
mkdir -p "$TARGET_DIR"
TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"

# shellcheck source=images/image.lock
source "$ROOT/images/image.lock"
export SOURCE_DATE_EPOCH
CACHE="${COCOON_CACHE:-$HOME/.cache/cocoon}/debs"
step() { echo "[image $(date +%H:%M:%S)] $*"; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    local pkgs=()
    for tool in "${missing[@]}"; do
      case "$tool" in
        xz) pkgs+=(xz-utils) ;;
        dpkg-deb) pkgs+=(dpkg) ;;
        od) pkgs+=(coreutils) ;;
        *) pkgs+=("$tool") ;;
      esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}
need xz zstd dpkg-deb sha256sum od

# 1. The kernel package, checked against the lock before anything reads it.
mkdir -p "$CACHE"
DEB="$CACHE/${KERNEL_PACKAGE}_${KERNEL_VERSION//:/%3a}_amd64.deb"
if [ ! -f "$DEB" ] || ! echo "$KERNEL_DEB_SHA256  $DEB" | sha256sum -c --status; then
  step "downloading $KERNEL_PACKAGE=$KERNEL_VERSION (about 100 MB)"
  rm -f "$DEB"
  tmpd="$(mktemp -d)"
  chmod 777 "$tmpd"
  if ! (cd "$tmpd" && apt-get download -q "$KERNEL_PACKAGE=$KERNEL_VERSION" 2>/dev/null); then
    apt-get update -qq
    (cd "$tmpd" && apt-get download -q "$KERNEL_PACKAGE=$KERNEL_VERSION") || {
      echo "images/build.sh: the pinned kernel $KERNEL_PACKAGE=$KERNEL_VERSION cannot be downloaded from Debian's archive." >&2
      echo "  Security updates replace kernels; pin a newer one in images/image.lock (package, version, SHA-256)" >&2
      echo "  and publish the new measurements, or fetch the old .deb from a Debian snapshot into $CACHE." >&2
      exit 1
    }
  fi
  mv "$tmpd"/*.deb "$DEB"
  rm -rf "$tmpd"
fi
if ! echo "$KERNEL_DEB_SHA256  $DEB" | sha256sum -c --status; then
  echo "images/build.sh: $DEB has SHA-256 $(sha256sum "$DEB" | cut -d' ' -f1), the lock says $KERNEL_DEB_SHA256: refusing it" >&2
  exit 1
fi
step "kernel package verified: $KERNEL_PACKAGE $KERNEL_VERSION"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$DEB" "$WORK/deb"
KDIR="$WORK/deb/lib/modules/$KERNEL_RELEASE"
[ -d "$KDIR" ] || { echo "images/build.sh: the package has no /lib/modules/$KERNEL_RELEASE (KERNEL_RELEASE in the lock is wrong)" >&2; exit 1; }

if ! grep -qx "image_id = \"$IMAGE_RELEASE\"" "$ENCLAVE_CONFIG"; then
  echo "images/build.sh: $ENCLAVE_CONFIG must say image_id = \"$IMAGE_RELEASE\" (the release in images/image.lock)" >&2
  exit 1
fi

# 2. The enclave, statically linked, paths remapped so that neither the
#    checkout's location nor the cargo home ends up in the binary.
step "building the static enclave (cargo profile 'image', no libtorch)"
# shellcheck source=/dev/null
source "$ROOT/scripts/common.sh"
ensure_toolchain
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
(
  cd "$ROOT"
  export CARGO_TARGET_DIR="$TARGET_DIR"
  export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$ROOT=/cocoon --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$TARGET_DIR=/target"
  cargo build --locked --profile image -p cocoon-enclave --no-default-features \
    --target x86_64-unknown-linux-gnu
)
ENCLAVE_BIN="$TARGET_DIR/x86_64-unknown-linux-gnu/image/cocoon-enclave"
if ldd "$ENCLAVE_BIN" 2>&1 | grep -q "=>"; then
  echo "images/build.sh: $ENCLAVE_BIN is dynamically linked; PID 1 must be static" >&2
  exit 1
fi

# 3. The initramfs tree.
STAGE="$WORK/stage"
mkdir -p "$STAGE"/{dev,proc,sys,tmp,run,etc/cocoon}
cp "$ENCLAVE_BIN" "$STAGE/init"
chmod 755 "$STAGE/init"
cp "$ENCLAVE_CONFIG" "$STAGE/etc/cocoon/enclave.toml"
: > "$STAGE/etc/cocoon/modules"
for m in $MODULES; do
  src="$KDIR/$m.xz"
  [ -f "$src" ] || { echo "images/build.sh: module $m.xz is not in the kernel package" >&2; exit 1; }
  mkdir -p "$STAGE/lib/modules/$KERNEL_RELEASE/$(dirname "$m")"
  xz -dc "$src" > "$STAGE/lib/modules/$KERNEL_RELEASE/$m"
  echo "lib/modules/$KERNEL_RELEASE/$m" >> "$STAGE/etc/cocoon/modules"
done

step "packing the initramfs"
(
  cd "$ROOT"
  CARGO_TARGET_DIR="$TARGET_DIR" cargo run --locked -q -p cocoon-image -- initramfs \
    --staging "$STAGE" --out "$OUT/initrd.cpio" --mtime "$SOURCE_DATE_EPOCH" \
    --char-dev dev/console:5:1:600 --char-dev dev/null:1:3:666
)
cp "$WORK/deb/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/vmlinuz"
# The same kernel uncompressed (ELF, PVH entry), for launches without a TEE
# only: under TCG, decompressing the bzImage costs about a second. SNP and
# TDX boot vmlinuz through OVMF/TDVF, which is what their measurements
# cover. The payload's place is in the bzImage's setup header (Linux boot
# protocol 2.08+: setup_sects at 0x1f1, payload_offset at 0x248,
# payload_length at 0x24c); its last 4 bytes are the decompressed size.
u8at() { od -An -tu1 -j"$2" -N1 "$1" | tr -d ' '; }
u32at() { od -An -tu4 -j"$2" -N4 "$1" | tr -d ' '; }
setup_sects=$(u8at "$OUT/vmlinuz" $((0x1f1)))
[ "$setup_sects" = 0 ] && setup_sects=4
payload_at=$(( (setup_sects + 1) * 512 + $(u32at "$OUT/vmlinuz" $((0x248))) ))
payload_len=$(u32at "$OUT/vmlinuz" $((0x24c)))
dd if="$OUT/vmlinuz" bs=64K iflag=skip_bytes,count_bytes skip="$payload_at" \
  count=$((payload_len - 4)) status=none | zstd -dq > "$OUT/vmlinux"
[ "$(head -c 4 "$OUT/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
  || { echo "images/build.sh: the kernel's payload did not decompress to an ELF image" >&2; exit 1; }
printf '%s' "$KERNEL_CMDLINE" > "$OUT/cmdline.txt"
cat > "$OUT/image.env" <<EOF
IMAGE_RELEASE=$IMAGE_RELEASE
KERNEL_RELEASE=$KERNEL_RELEASE
ENCLAVE_VSOCK_PORT=$ENCLAVE_VSOCK_PORT
EOF
(cd "$OUT" && sha256sum vmlinuz vmlinux initrd.cpio cmdline.txt image.env > SHA256SUMS)
step "image $IMAGE_RELEASE written to $OUT"
cat "$OUT/SHA256SUMS"
