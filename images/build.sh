#!/usr/bin/env bash
# Builds the Cocoon guest image from the pinned inputs in images/image.lock:
#
#   OUT/vmlinuz      Debian's kernel (bzImage), byte for byte from the package
#   OUT/vmlinux      the same kernel uncompressed (no-TEE launches under TCG)
#   OUT/initrd.cpio  newc initramfs: /init = static cocoon-init (PID 1) and
#                    the decompressed modules it loads; nothing else
#   OUT/disk.img     the root disk: a squashfs (the enclave linked against
#                    libtorch, libtorch's CPU libraries from the pinned
#                    PyTorch wheel, Debian's C/C++ runtime, the exported
#                    models and tokenizers, the release configuration),
#                    then its dm-verity hash tree
#   OUT/cmdline.txt  the measured kernel command line, with the disk's
#                    verity root hash
#   OUT/image.env    release name, vsock ports, verity root (for cocoon-host)
#   OUT/release.json what a client pins and an auditor compares
#   OUT/release-manifest.json  the release manifest (canonical JSON: the
#                    above plus SEV-SNP launch digests), when the measured
#                    firmware is built (SNP_OVMF, SNP_VCPUS override)
#   OUT/SHA256SUMS   the digests of all of the above
#
# Two builds from the same commit give the same bytes (see images/README.md
# for what makes it so); images/reproduce.sh checks it.
#
# Usage: images/build.sh [--variant cpu|gpu] [--out DIR] [--target-dir DIR] [--enclave-config FILE]
#   --variant gpu   adds the GPU layer of images/gpu/build.sh (NVIDIA's open
#                   kernel modules built against the pinned kernel, NVML,
#                   libcuda, libtorch's CUDA half) to the disk, with
#                   images/enclave-gpu.toml; default out images/out/image-gpu
# Environment: COCOON_CACHE (download cache, default ~/.cache/cocoon); the
# PyTorch venv and exported models of scripts/torch-env.sh (sourced here).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/images/out/image"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ENCLAVE_CONFIG=""
VARIANT=cpu
OUT_SET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT="$2"; shift 2 ;;
    --out) OUT="$2"; OUT_SET=1; shift 2 ;;
    --target-dir) TARGET_DIR="$2"; shift 2 ;;
    --enclave-config) ENCLAVE_CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
case "$VARIANT" in
  cpu) ENCLAVE_CONFIG="${ENCLAVE_CONFIG:-$ROOT/images/enclave.toml}" ;;
  gpu)
    ENCLAVE_CONFIG="${ENCLAVE_CONFIG:-$ROOT/images/enclave-gpu.toml}"
    [ -n "$OUT_SET" ] || OUT="$ROOT/images/out/image-gpu"
    ;;
  *) echo "images/build.sh: --variant must be cpu or gpu" >&2; exit 64 ;;
esac
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
        mksquashfs) pkgs+=(squashfs-tools) ;;
        veritysetup) pkgs+=(cryptsetup-bin) ;;
        *) pkgs+=("$tool") ;;
      esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}
need xz zstd dpkg-deb sha256sum od mksquashfs veritysetup patchelf

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

[ "$VARIANT" = gpu ] && IMAGE_RELEASE="$IMAGE_RELEASE-gpu"
if ! grep -qx "image_id = \"$IMAGE_RELEASE\"" "$ENCLAVE_CONFIG"; then
  echo "images/build.sh: $ENCLAVE_CONFIG must say image_id = \"$IMAGE_RELEASE\" (the release in images/image.lock)" >&2
  exit 1
fi

# 2. The Debian runtime for the disk (glibc, libgcc, libstdc++), each
#    package checked against the lock.
RUNTIME="$WORK/runtime"
mkdir -p "$RUNTIME"
while read -r pv sha; do
  [ -n "$pv" ] || continue
  pkg="${pv%%=*}"; ver="${pv#*=}"
  deb="$CACHE/${pkg}_${ver//:/%3a}_amd64.deb"
  if [ ! -f "$deb" ] || ! echo "$sha  $deb" | sha256sum -c --status; then
    step "downloading $pkg=$ver"
    tmpd="$(mktemp -d)"; chmod 777 "$tmpd"
    (cd "$tmpd" && { apt-get download -q "$pkg=$ver" 2>/dev/null || { apt-get update -qq && apt-get download -q "$pkg=$ver"; }; }) || {
      echo "images/build.sh: $pkg=$ver cannot be downloaded from Debian's archive; pin the current version in images/image.lock" >&2
      exit 1
    }
    mv "$tmpd"/*.deb "$deb"; rm -rf "$tmpd"
  fi
  if ! echo "$sha  $deb" | sha256sum -c --status; then
    echo "images/build.sh: $deb has SHA-256 $(sha256sum "$deb" | cut -d' ' -f1), the lock says $sha: refusing it" >&2
    exit 1
  fi
  dpkg-deb -x "$deb" "$RUNTIME"
done <<< "$RUNTIME_DEBS"
step "runtime packages verified"

# 3. PID 1 (static) and the enclave (dynamic, against libtorch), paths
#    remapped so that neither the checkout's location, the cargo home, the
#    target directory nor the venv ends up in a binary.
# shellcheck source=/dev/null
source "$ROOT/scripts/common.sh"
ensure_toolchain
# shellcheck source=/dev/null
source "$ROOT/scripts/torch-env.sh"
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
REMAP="--remap-path-prefix=$ROOT=/cocoon --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$TARGET_DIR=/target --remap-path-prefix=$VIRTUAL_ENV=/venv"
CMAP="-ffile-prefix-map=$ROOT=/cocoon -ffile-prefix-map=$CARGO_HOME_DIR=/cargo -ffile-prefix-map=$TARGET_DIR=/target -ffile-prefix-map=$VIRTUAL_ENV=/venv"
step "building cocoon-init (static) and cocoon-enclave (libtorch) with cargo profile 'image'"
(
  cd "$ROOT"
  export CARGO_TARGET_DIR="$TARGET_DIR"
  RUSTFLAGS="-C target-feature=+crt-static $REMAP" \
    cargo build --locked --profile image -p cocoon-init --target x86_64-unknown-linux-gnu
  # Its own target directory: other RUSTFLAGS. CFLAGS/CXXFLAGS reach the
  # C and C++ that build scripts compile (torch-sys's wrapper, oniguruma).
  # No rpath to the venv (enclave/build.rs): the image's loader path names
  # /usr/lib/cocoon, and a builder's path must not reach the bytes.
  COCOON_ENCLAVE_RPATH=none CFLAGS="$CMAP" CXXFLAGS="$CMAP" RUSTFLAGS="$REMAP" CARGO_TARGET_DIR="$TARGET_DIR/enclave-image" \
    cargo build --locked --profile image -p cocoon-enclave --bin cocoon-enclave
)
INIT_BIN="$TARGET_DIR/x86_64-unknown-linux-gnu/image/cocoon-init"
ENCLAVE_BIN="$TARGET_DIR/enclave-image/image/cocoon-enclave"
if ldd "$INIT_BIN" 2>&1 | grep -q "=>"; then
  echo "images/build.sh: $INIT_BIN is dynamically linked; PID 1 must be static" >&2
  exit 1
fi

# 4. The root disk's tree.
DISK="$WORK/disk"
mkdir -p "$DISK"/{usr/bin,usr/lib/cocoon,etc/cocoon,models,proc,sys,dev,tmp}
for d in lib lib64 usr/lib/x86_64-linux-gnu; do
  if [ -d "$RUNTIME/$d" ]; then mkdir -p "$DISK/$d"; cp -a "$RUNTIME/$d/." "$DISK/$d/"; fi
done
install -m 755 "$ENCLAVE_BIN" "$DISK/usr/bin/cocoon-enclave"
# libtorch's CPU libraries from the pinned wheel (libtorch_cpu needs the
# CUDA runtime and CUPTI libraries to load, not a GPU). The binary's links
# to libtorch.so and libtorch_cuda.so (the CUDA half: 0.5 GB, plus 2.7 GB
# of CUDA libraries) are dropped with patchelf: the CPU image never calls
# them; the GPU variant carries them.
TORCH_LIB="$(echo "$VIRTUAL_ENV"/lib/python3*/site-packages/torch/lib)"
CU_LIB="$(echo "$VIRTUAL_ENV"/lib/python3*/site-packages/nvidia/cu13/lib)"
for lib in "$TORCH_LIB"/libtorch_cpu.so "$TORCH_LIB"/libc10.so "$TORCH_LIB"/libgomp.so.1 \
           "$CU_LIB"/libcudart.so.13 "$CU_LIB"/libcupti.so.13; do
  install -m 644 "$lib" "$DISK/usr/lib/cocoon/"
done
if [ "$VARIANT" = cpu ]; then
  for needed in libtorch.so libtorch_cuda.so libc10_cuda.so; do
    if readelf -d "$DISK/usr/bin/cocoon-enclave" | grep -q "NEEDED.*\[$needed\]"; then
      patchelf --remove-needed "$needed" "$DISK/usr/bin/cocoon-enclave"
    fi
  done
else
  # The GPU layer: modules, firmware, NVML, libcuda, libtorch's CUDA half.
  # libtorch registers CUDA from libtorch_cuda.so's initialisers, so the
  # enclave must load it even though it calls nothing there directly (the
  # linker's --as-needed dropped it).
  step "building the GPU layer (images/gpu/build.sh)"
  bash "$ROOT/images/gpu/build.sh" "$WORK/gpu"
  cp -a "$WORK/gpu/tree/." "$DISK/"
  install -m 644 "$WORK/gpu/gpu-modules" "$DISK/etc/cocoon/gpu-modules"
  if ! readelf -d "$DISK/usr/bin/cocoon-enclave" | grep -q "NEEDED.*\[libtorch_cuda.so\]"; then
    patchelf --add-needed libtorch_cuda.so "$DISK/usr/bin/cocoon-enclave"
  fi
fi
if readelf -d "$DISK/usr/bin/cocoon-enclave" | grep -qE "RPATH|RUNPATH"; then
  patchelf --remove-rpath "$DISK/usr/bin/cocoon-enclave"
fi
missing=$(LD_LIBRARY_PATH="$DISK/usr/lib/cocoon:$DISK/usr/lib/x86_64-linux-gnu" ldd "$DISK/usr/bin/cocoon-enclave" | grep "not found" || true)
[ -z "$missing" ] || { echo "images/build.sh: the enclave needs libraries the disk lacks: $missing" >&2; exit 1; }
# The models, each checked against the SHA-256 the release config pins.
for pair in "all-minilm-l6-v2=$COCOON_MODEL_DIR" "smollm2-135m-instruct=$COCOON_CHAT_MODEL_DIR"; do
  name="${pair%%=*}"; dir="${pair#*=}"
  mkdir -p "$DISK/models/$name"
  install -m 644 "$dir/model.pt" "$dir/tokenizer.json" "$DISK/models/$name/"
done
install -m 644 "$ENCLAVE_CONFIG" "$DISK/etc/cocoon/enclave.toml"
python3 "$ROOT/images/release.py" check-models "$ENCLAVE_CONFIG" "$DISK"
step "root disk tree: $(du -sm "$DISK" | cut -f1) MiB"

# 5. squashfs (uncompressed: the guest reads libtorch and the weights
#    straight through dm-verity; owners, times and order fixed), then the
#    hash tree after it with a fixed salt and UUID.
find "$DISK" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$OUT/disk.img"
env -u SOURCE_DATE_EPOCH mksquashfs "$DISK" "$OUT/disk.img" -noappend -no-xattrs -all-root \
  -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" \
  -noI -noD -noF -noX -no-progress -quiet >/dev/null
size=$(stat -c %s "$OUT/disk.img")
[ $((size % 4096)) = 0 ] || truncate -s $(( (size / 4096 + 1) * 4096 )) "$OUT/disk.img"
DATA_BLOCKS=$(( $(stat -c %s "$OUT/disk.img") / 4096 ))
VERITY_OUT="$(veritysetup format --data-blocks="$DATA_BLOCKS" --hash-offset=$((DATA_BLOCKS * 4096)) \
  --salt="$VERITY_SALT" --uuid="$VERITY_UUID" --hash=sha256 \
  --data-block-size=4096 --hash-block-size=4096 "$OUT/disk.img" "$OUT/disk.img")"
VERITY_ROOT="$(echo "$VERITY_OUT" | awk '/^Root hash:/ {print $3}')"
[ ${#VERITY_ROOT} = 64 ] || { echo "images/build.sh: veritysetup gave no root hash:" >&2; echo "$VERITY_OUT" >&2; exit 1; }
step "root disk: $DATA_BLOCKS data blocks, verity root $VERITY_ROOT"

# 6. The initramfs tree: PID 1 and its modules, nothing else.
STAGE="$WORK/stage"
mkdir -p "$STAGE"/{dev,proc,sys,run,sysroot,etc/cocoon}
cp "$INIT_BIN" "$STAGE/init"
chmod 755 "$STAGE/init"
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
CMDLINE="${KERNEL_CMDLINE//@ROOT@/$VERITY_ROOT}"
CMDLINE="${CMDLINE//@BLOCKS@/$DATA_BLOCKS}"
printf '%s' "$CMDLINE" > "$OUT/cmdline.txt"
cat > "$OUT/image.env" <<EOF
IMAGE_RELEASE=$IMAGE_RELEASE
KERNEL_RELEASE=$KERNEL_RELEASE
ENCLAVE_VSOCK_PORT=$ENCLAVE_VSOCK_PORT
ENCLAVE_SETTINGS_PORT=$ENCLAVE_SETTINGS_PORT
SNP_VCPU_TYPE=$SNP_VCPU_TYPE
DISK=disk.img
DISK_VERITY_ROOT=$VERITY_ROOT
EOF
python3 "$ROOT/images/release.py" manifest "$ENCLAVE_CONFIG" "$OUT" "$IMAGE_RELEASE" "$VERITY_ROOT"
# The release manifest (canonical JSON, its SHA-256 is the release's key in
# the registry): release.json plus the SEV-SNP launch digests for the vCPU
# counts providers launch, computed with the measured OVMF when it is
# built (images/firmware/build.sh). TDX values need RTMR0 from a reference
# launch: add them with `cocoon-measure manifest --tdx ...` afterwards.
SUMMED=(vmlinuz vmlinux initrd.cpio disk.img cmdline.txt image.env release.json)
rm -f "$OUT/release-manifest.json"
SNP_OVMF="${SNP_OVMF:-$ROOT/images/out/firmware/OVMF-AmdSev.fd}"
if [ -f "$SNP_OVMF" ]; then
  (
    cd "$ROOT"
    CARGO_TARGET_DIR="$TARGET_DIR" cargo run --locked -q -p cocoon-measure -- manifest \
      --image "$OUT" --snp-ovmf "$SNP_OVMF" --vcpus "${SNP_VCPUS:-1,2,4,8}"
  )
  SUMMED+=(release-manifest.json)
else
  step "release-manifest.json NOT written: no measured firmware at $SNP_OVMF (run images/firmware/build.sh, then images/measure.sh)"
fi
(cd "$OUT" && sha256sum "${SUMMED[@]}" > SHA256SUMS)
step "image $IMAGE_RELEASE written to $OUT"
cat "$OUT/SHA256SUMS"
