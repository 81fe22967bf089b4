#!/usr/bin/env bash
# Builds the GPU layer of the Cocoon guest image (NVIDIA H100 in confidential
# computing mode) from the pinned inputs in images/gpu/gpu.lock and the
# kernel in images/image.lock:
#
#   OUT/tree/            to overlay onto the root disk:
#     lib/modules/<kernel>/updates/nvidia/{nvidia,nvidia-uvm}.ko
#                        NVIDIA's open kernel modules, built here against the
#                        pinned kernel's headers, debug info stripped
#     lib/modules/<kernel>/kernel/...   the pinned kernel's modules they
#                        need first (drm, the CC channel's crypto)
#     lib/firmware/nvidia/<driver>/gsp_ga10x.bin   the GSP firmware
#     usr/lib/x86_64-linux-gnu/   NVML, libcuda and its helpers (the same
#                        driver release as the modules), libcrypto
#     usr/lib/cocoon/    libtorch's CUDA half: the DT_NEEDED closure of
#                        libtorch_cuda.so, libtorch.so and libc10_cuda.so in
#                        the pinned PyTorch wheel, each file checked against
#                        the wheel's RECORD
#   OUT/gpu-modules      the .ko paths (relative to tree/) in load order
#   OUT/gpu-links        the symbolic links in tree/ ("path -> target")
#   OUT/GPU-SHA256SUMS   the SHA-256 of every regular file in tree/
#
# Two builds give the same bytes (images/gpu/reproduce.sh checks it): every
# .deb is checked against the lock, the modules are built with the kernel's
# own compiler (gcc-12 as in the headers' CONFIG_CC_VERSION_TEXT), fixed
# KBUILD_BUILD_* values and -ffile-prefix-map for the source and header
# paths, then stripped of debug info.
#
# Usage: images/gpu/build.sh OUT_DIR
# Environment: COCOON_CACHE (download cache, default ~/.cache/cocoon; the
# packages go to its debs/), COCOON_GPU_JOBS (make -j, default nproc), the
# PyTorch venv of scripts/torch-env.sh (sourced here).
set -euo pipefail

ME="images/gpu/build.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { echo "$ME: $*" >&2; exit 1; }
step() { echo "[gpu $(date +%H:%M:%S)] $*"; }

case "${1:-}" in
  -h|--help) sed -n '2,32p' "${BASH_SOURCE[0]}"; exit 0 ;;
  "") echo "usage: $ME OUT_DIR (try --help)" >&2; exit 64 ;;
esac
[ $# = 1 ] || { echo "usage: $ME OUT_DIR (try --help)" >&2; exit 64; }
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"

# shellcheck source=images/image.lock
source "$ROOT/images/image.lock"
# shellcheck source=images/gpu/gpu.lock
source "$ROOT/images/gpu/gpu.lock"
export SOURCE_DATE_EPOCH
CACHE="${COCOON_CACHE:-$HOME/.cache/cocoon}/debs"
JOBS="${COCOON_GPU_JOBS:-$(nproc)}"
export LC_ALL=C TZ=UTC

for tool in apt-get apt-cache dpkg-deb sha256sum readelf strip make patch xz python3 x86_64-linux-gnu-gcc-12 ld; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool (Debian: apt-get install dpkg binutils make patch xz-utils python3 gcc-12)"
done

# The driver release is one release everywhere: refuse a lock that mixes.
while read -r pv _; do
  [ -n "$pv" ] || continue
  case "$pv" in
    nvidia-*|libnvidia-*|libcuda1=*|firmware-nvidia-*)
      case "${pv#*=}" in
        "$GPU_DRIVER_VERSION"-*) ;;
        *) die "gpu.lock pins $pv but GPU_DRIVER_VERSION is $GPU_DRIVER_VERSION: kernel module, firmware and user-space libraries must be one driver release" ;;
      esac ;;
  esac
done <<< "$GPU_DEBS"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cocoon-gpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"

# --- 1. Packages -------------------------------------------------------------
# A private apt configuration: its own sources, lists and cache under $WORK,
# no dpkg status; the system's sources are neither read nor changed.
APT_DIR="$WORK/apt"
apt_private() {
  apt-get -q -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
    -o Dir::State::status=/dev/null -o APT::Sandbox::User=root "$@"
}
apt_ready=""
apt_update() {
  [ -z "$apt_ready" ] || return 0
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  local mirror="http://deb.debian.org"
  cat > "$APT_DIR/sources.list" <<EOF
deb $mirror/debian bookworm main contrib non-free non-free-firmware
deb $mirror/debian bookworm-updates main contrib non-free non-free-firmware
deb $mirror/debian bookworm-backports main contrib non-free non-free-firmware
deb $mirror/debian-security bookworm-security main contrib non-free non-free-firmware
EOF
  step "reading Debian's package index (private apt configuration)"
  apt_private update >/dev/null || die "apt-get update failed on the private configuration (network? Debian's archive keyring?)"
  apt_ready=1
}
cached_deb() { # package version -> CACHED: the cached .deb's path, or empty
  local f
  CACHED=""
  for f in "$CACHE/${1}_${2//:/%3a}_"*.deb; do [ -f "$f" ] && CACHED="$f"; done
  return 0
}
fetch_deb() { # package version sha256 -> CACHED: the .deb, downloaded if need be
  local pkg="$1" ver="$2" sha="$3" tmpd
  cached_deb "$pkg" "$ver"
  if [ -n "$CACHED" ] && echo "$sha  $CACHED" | sha256sum -c --status; then return 0; fi
  [ -z "$CACHED" ] || rm -f "$CACHED"
  apt_update
  step "downloading $pkg=$ver from Debian's archive"
  tmpd="$(mktemp -d "$WORK/dl.XXXXXX")"
  if ! (cd "$tmpd" && apt_private download "$pkg=$ver" >/dev/null 2>&1); then
    {
      echo "$ME: $pkg=$ver is not in Debian's archive (bookworm, -updates, -security, -backports)."
      echo "  Versions it has:"
      apt-cache -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" -o Dir::State::status=/dev/null \
        madison "$pkg" | awk -F'|' '{gsub(/ /, "", $2); print "    " $2}'
      echo "  Do not mix driver releases: pin one release for every NVIDIA package in images/gpu/gpu.lock"
      echo "  (and its SHA-256), or put the old .deb from a Debian snapshot into $CACHE."
    } >&2
    exit 1
  fi
  mv "$tmpd"/*.deb "$CACHE/"
  rmdir "$tmpd"
  cached_deb "$pkg" "$ver"
  [ -n "$CACHED" ] || die "apt-get download of $pkg=$ver left no .deb"
}
declare -A DEB
while read -r pv sha; do
  [ -n "$pv" ] || continue
  pkg="${pv%%=*}"; ver="${pv#*=}"
  fetch_deb "$pkg" "$ver" "$sha"
  if ! echo "$sha  $CACHED" | sha256sum -c --status; then
    die "$CACHED has SHA-256 $(sha256sum "$CACHED" | cut -d' ' -f1), images/gpu/gpu.lock says $sha: refusing it"
  fi
  DEB[$pkg]="$CACHED"
done <<< "$GPU_DEBS"
step "packages verified against images/gpu/gpu.lock ($(du -cm "${DEB[@]}" | tail -1 | cut -f1) MiB)"

TREE="$OUT/tree"
rm -rf "$TREE" "$OUT/gpu-modules" "$OUT/gpu-links" "$OUT/GPU-SHA256SUMS"
mkdir -p "$TREE"

# --- 2. The kernel modules ---------------------------------------------------
FLAVOUR="${KERNEL_RELEASE##*-}"                 # amd64
KBASE="${KERNEL_RELEASE%-"$FLAVOUR"}"           # 6.12.117+deb12
KROOT="$WORK/kernel"
for pkg in "linux-headers-$KERNEL_RELEASE" "linux-headers-$KBASE-common" "linux-kbuild-$KBASE"; do
  [ -n "${DEB[$pkg]:-}" ] || die "gpu.lock has no $pkg (the kernel in images/image.lock is $KERNEL_RELEASE)"
  dpkg-deb -x "${DEB[$pkg]}" "$KROOT"
done
KOUT="$KROOT/usr/src/linux-headers-$KERNEL_RELEASE"
KSRC="$KROOT/usr/src/linux-headers-$KBASE-common"
# The flavour's Makefile includes the common one by its installed path; point
# it at this unpacked copy.
printf 'include %s/Makefile\n' "$KSRC" > "$KOUT/Makefile"
# No BTF for these modules: the kernel's build would need pahole and the BTF
# of vmlinux; without vmlinux in the build tree kbuild skips it. The modules
# load the same; only BPF type information for them is missing.
rm -f "$KOUT/vmlinux"

KCC="x86_64-linux-gnu-gcc-12"
want_cc="$(. "$KOUT/.config"; echo "$CONFIG_CC_VERSION_TEXT")"
have_cc="$($KCC --version | head -1)"
if [ "$want_cc" != "$have_cc" ]; then
  die "the kernel was built with '$want_cc', this machine has '$have_cc': install Debian bookworm's gcc-12 (the same build) to build modules that match"
fi
want_ld="$(sed -n 's/.*LINUX_COMPILER.*, \(GNU ld.*\)"$/\1/p' "$KOUT/include/generated/compile.h")"
have_ld="$(ld --version | head -1)"
[ "$want_ld" = "$have_ld" ] || echo "$ME: warning: the kernel was linked with '$want_ld', this machine has '$have_ld'" >&2

NVSRC_PKG="$WORK/nvidia-pkg"
dpkg-deb -x "${DEB[nvidia-open-kernel-dkms]}" "$NVSRC_PKG"
NVSRC="$(echo "$NVSRC_PKG"/usr/src/nvidia-*-"$GPU_DRIVER_VERSION")"
[ -d "$NVSRC" ] || die "nvidia-open-kernel-dkms has no /usr/src/nvidia-*-$GPU_DRIVER_VERSION"
# Fixes for the pinned kernel's API (each patch says why), in name order.
for p in "$ROOT"/images/gpu/patches/*.patch; do
  [ -f "$p" ] || continue
  patch -s -p1 -N --no-backup-if-mismatch -d "$NVSRC" < "$p" || die "the patch $(basename "$p") does not apply to the driver source"
done

step "building ${GPU_MODULES} $GPU_DRIVER_VERSION against $KERNEL_RELEASE with $have_cc (-j$JOBS)"
build_start=$(date +%s)
PREFIX_MAP="-ffile-prefix-map=$NVSRC=/usr/src/nvidia-$GPU_DRIVER_VERSION -ffile-prefix-map=$KROOT/="
(
  cd "$NVSRC"
  env KBUILD_BUILD_TIMESTAMP="@$SOURCE_DATE_EPOCH" KBUILD_BUILD_USER=cocoon KBUILD_BUILD_HOST=cocoon \
    make -j"$JOBS" modules \
      SYSSRC="$KSRC" SYSOUT="$KOUT" ARCH=x86_64 CC="$KCC" \
      NV_KERNEL_MODULES="$GPU_MODULES" \
      KCFLAGS="$PREFIX_MAP" KAFLAGS="$PREFIX_MAP" \
      > "$WORK/modules.log" 2>&1
) || { tail -40 "$WORK/modules.log" >&2; die "the module build failed (the last lines of its log are above)"; }
step "modules built in $(( $(date +%s) - build_start )) s"

# The pinned kernel's own modules that nvidia.ko needs first (gpu.lock
# GPU_KERNEL_MODULES), from the very package images/image.lock pins.
fetch_deb "$KERNEL_PACKAGE" "$KERNEL_VERSION" "$KERNEL_DEB_SHA256"
echo "$KERNEL_DEB_SHA256  $CACHED" | sha256sum -c --status \
  || die "$CACHED does not have the SHA-256 images/image.lock pins: refusing it"
KIMG="$WORK/kernel-image"
dpkg-deb -x "$CACHED" "$KIMG"
KMODS="$KIMG/lib/modules/$KERNEL_RELEASE"
modinfo_field() { readelf -p .modinfo "$1" | sed -n "s/^ *\[ *[0-9a-f]*\]  $2=//p"; }
declare -A LOADED
check_deps() { # module.ko: every depends= must be loaded before it
  local dep deps
  deps="$(modinfo_field "$1" depends)"
  for dep in ${deps//,/ }; do
    [ -n "${LOADED[$dep]:-}" ] || die "$(basename "$1") depends on $dep, which is not loaded before it (GPU_KERNEL_MODULES in gpu.lock)"
  done
  LOADED[$(modinfo_field "$1" name)]=1
}
for m in $GPU_KERNEL_MODULES; do
  [ -f "$KMODS/$m.xz" ] || die "the kernel package has no $m.xz (GPU_KERNEL_MODULES in gpu.lock)"
  mkdir -p "$TREE/lib/modules/$KERNEL_RELEASE/$(dirname "$m")"
  xz -dc "$KMODS/$m.xz" > "$TREE/lib/modules/$KERNEL_RELEASE/$m"
  check_deps "$TREE/lib/modules/$KERNEL_RELEASE/$m"
  echo "lib/modules/$KERNEL_RELEASE/$m" >> "$OUT/gpu-modules"
done
for sd in $(modinfo_field "$NVSRC/nvidia.ko" softdep | sed 's/^pre://; s/,/ /g'); do
  [ -n "${LOADED[$sd]:-}" ] || grep -q "/$sd.ko\$" "$KMODS/modules.builtin" \
    || die "nvidia.ko wants $sd loaded first (softdep); it is neither built in nor in GPU_KERNEL_MODULES"
done

MODDIR="lib/modules/$KERNEL_RELEASE/updates/nvidia"
mkdir -p "$TREE/$MODDIR"
for m in $GPU_MODULES; do
  ko="$NVSRC/$m.ko"
  [ -f "$ko" ] || die "the build made no $m.ko"
  vermagic="$(readelf -p .modinfo "$ko" | sed -n 's/.*vermagic=//p')"
  case "$vermagic" in
    "$KERNEL_RELEASE "*) ;;
    *) die "$m.ko has vermagic '$vermagic', not for $KERNEL_RELEASE" ;;
  esac
  strip --strip-debug -o "$TREE/$MODDIR/$m.ko" "$ko"
  check_deps "$TREE/$MODDIR/$m.ko"
  echo "$MODDIR/$m.ko" >> "$OUT/gpu-modules"
done
if grep -aqF -e "$WORK" "$TREE/$MODDIR"/*.ko; then
  die "a build path ($WORK) is inside a module: the prefix maps missed it"
fi

# --- 3. Firmware and the driver's user-space libraries -------------------------
FW="$WORK/firmware"
dpkg-deb -x "${DEB[firmware-nvidia-gsp]}" "$FW"
mkdir -p "$TREE/lib/firmware/nvidia/$GPU_DRIVER_VERSION"
for f in $GPU_FIRMWARE; do
  src="$FW/lib/firmware/nvidia/$GPU_DRIVER_VERSION/$f"
  [ -f "$src" ] || die "firmware-nvidia-gsp has no lib/firmware/nvidia/$GPU_DRIVER_VERSION/$f"
  install -m 644 "$src" "$TREE/lib/firmware/nvidia/$GPU_DRIVER_VERSION/$f"
done
# The module asks for exactly this firmware path: check the source says so.
grep -rqF "gsp_ga10x.bin" "$NVSRC/common/inc/nv-firmware.h" \
  || die "nv-firmware.h of this driver does not name gsp_ga10x.bin; check GPU_FIRMWARE in gpu.lock"

DRV="$WORK/driver"
for pkg in libnvidia-ml1 libcuda1 libnvidia-ptxjitcompiler1 libnvidia-pkcs11-openssl3 libssl3 zlib1g; do
  [ -n "${DEB[$pkg]:-}" ] || die "gpu.lock has no $pkg"
  dpkg-deb -x "${DEB[$pkg]}" "$DRV"
done
LIBDIR="usr/lib/x86_64-linux-gnu"
mkdir -p "$TREE/$LIBDIR"
soname() { readelf -d "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'; }
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
for lib in $GPU_DRIVER_LIBS; do
  mapfile -t found < <(find "$DRV" -type f -name "$lib")
  [ ${#found[@]} = 1 ] || die "expected one $lib in the driver packages, found ${#found[@]}"
  install -m 644 "${found[0]}" "$TREE/$LIBDIR/$lib"
  so="$(soname "$TREE/$LIBDIR/$lib")"
  if [ -n "$so" ] && [ "$so" != "$lib" ]; then ln -sfn "$lib" "$TREE/$LIBDIR/$so"; fi
done
for lib in $GPU_DRIVER_LIBS; do
  for n in $(needed "$TREE/$LIBDIR/$lib"); do
    [ -e "$TREE/$LIBDIR/$n" ] || [[ " $TORCH_CUDA_SYSTEM_LIBS " == *" $n "* ]] \
      || die "$lib needs $n, which neither the GPU tree nor the disk's Debian runtime has"
  done
done
step "firmware and driver libraries: $GPU_FIRMWARE, $(echo $GPU_DRIVER_LIBS)"

# --- 4. libtorch's CUDA libraries ----------------------------------------------
set +u
# shellcheck source=/dev/null
source "$ROOT/scripts/torch-env.sh" >/dev/null
set -u
SP="$(echo "$VIRTUAL_ENV"/lib/python3*/site-packages)"
[ -d "$SP/torch/lib" ] || die "no torch/lib in $VIRTUAL_ENV (scripts/torch-env.sh)"
# libtorch's own RPATH order: cuDNN, NVSHMEM, NCCL, cuSPARSELt, the CUDA
# toolkit, then torch/lib.
SEARCH=("$SP/nvidia/cudnn/lib" "$SP/nvidia/nvshmem/lib" "$SP/nvidia/nccl/lib" "$SP/nvidia/cusparselt/lib" "$SP"/nvidia/cu[0-9]*/lib "$SP/torch/lib")
find_lib() { # name -> FOUND: its path in the venv, or empty
  local d hits=()
  for d in "${SEARCH[@]}"; do [ -f "$d/$1" ] && hits+=("$d/$1"); done
  [ ${#hits[@]} -le 1 ] || die "$1 is in more than one venv directory: ${hits[*]}"
  FOUND="${hits[0]:-}"
}
declare -A CLOSURE
queue=($TORCH_CUDA_ROOTS $TORCH_CUDA_DLOPEN)
while [ ${#queue[@]} -gt 0 ]; do
  name="${queue[0]}"; queue=("${queue[@]:1}")
  [ -z "${CLOSURE[$name]:-}" ] || continue
  find_lib "$name"; path="$FOUND"
  if [ -z "$path" ]; then
    [[ " $TORCH_CUDA_SYSTEM_LIBS " == *" $name "* ]] && continue
    [ -e "$TREE/$LIBDIR/$name" ] && continue
    die "$name (needed by libtorch's CUDA closure) is neither in the venv, the driver libraries nor the disk's Debian runtime"
  fi
  CLOSURE[$name]="$path"
  mapfile -t more < <(needed "$path")
  queue+=("${more[@]}")
done
mkdir -p "$TREE/usr/lib/cocoon"
: > "$WORK/closure"
for name in "${!CLOSURE[@]}"; do
  install -m 644 "${CLOSURE[$name]}" "$TREE/usr/lib/cocoon/$name"
  printf '%s\t%s\n' "${CLOSURE[$name]#"$SP"/}" "usr/lib/cocoon/$name" >> "$WORK/closure"
done
# Each copied file against the wheel's RECORD (urlsafe base64 of SHA-256,
# no padding), as the installed bytes must be the wheel's.
python3 - "$SP" "$TREE" "$WORK/closure" <<'PY' || die "a library differs from its wheel's RECORD (see above): refusing it"
import base64, csv, glob, hashlib, os, sys
sp, tree, closure = sys.argv[1:4]
record = {}
for rec in glob.glob(os.path.join(sp, "*.dist-info", "RECORD")):
    with open(rec, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[1].startswith("sha256="):
                record[os.path.normpath(row[0])] = row[1][len("sha256="):]
bad = 0
for line in open(closure):
    rel, dest = line.rstrip("\n").split("\t")
    h = hashlib.sha256()
    with open(os.path.join(tree, dest), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    want = record.get(os.path.normpath(rel))
    if want is None:
        print(f"  {rel}: in no wheel's RECORD", file=sys.stderr); bad += 1
    elif want != got:
        print(f"  {rel}: sha256={got}, RECORD says sha256={want}", file=sys.stderr); bad += 1
sys.exit(1 if bad else 0)
PY
step "libtorch CUDA closure: ${#CLOSURE[@]} libraries, each matching its wheel's RECORD"

# --- 5. Manifest ------------------------------------------------------------------
find "$TREE" -type d -exec chmod 755 {} +
find "$TREE" -type f -exec chmod 644 {} +
find "$TREE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$TREE" && find . -type f -printf '%P\n' | sort | xargs -d '\n' sha256sum) > "$OUT/GPU-SHA256SUMS"
(cd "$TREE" && find . -type l -printf '%P -> %l\n' | sort) > "$OUT/gpu-links"
step "GPU tree written to $TREE: $(du -sm "$TREE" | cut -f1) MiB ($(wc -l < "$OUT/GPU-SHA256SUMS") files); modules in load order:"
sed 's/^/  /' "$OUT/gpu-modules"
