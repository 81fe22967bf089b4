#!/usr/bin/env bash
# Reproducible build of the measured guest firmware (issue 7, firmware part).
#
# Debian ships no AmdSev or IntelTdx OVMF builds, so we build them ourselves
# from Debian's edk2 *source* package at the version pinned in firmware.lock:
#
#   SNP: OvmfPkg/AmdSev/AmdSevX64.dsc   -> images/out/firmware/OVMF-AmdSev.fd
#        (SEV/SEV-ES/SEV-SNP, measured direct kernel boot: the kernel,
#        initrd and command-line hashes sit in the launch-measured
#        SEV hash table page; BlobVerifierLibSevHashes checks them)
#   TDX: OvmfPkg/IntelTdx/IntelTdxX64.dsc -> images/out/firmware/OVMF-IntelTdx.fd
#        (TDVF "config B": the VMM is outside the TCB, PEI skipped,
#        CC measurement into RTMRs mandatory)
#
# Usage: images/firmware/build.sh [--check] [--rebuild] [--only snp|tdx]
#                                 [--update-lock] [--jobs N]
#   --check        compare the outputs with the sha256 values in the lock and
#                  fail naming every mismatch (what an auditor runs)
#   --rebuild      ignore the output cache and build from a clean tree
#   --only P       build one platform only
#   --update-lock  write the output hashes measured here into the lock
#                  (maintainers, after changing the pinned source)
#
# Reproducibility measures (all needed for bit-for-bit identical images):
#   * sources: the .dsc / .orig.tar.xz / .debian.tar.xz of the pinned Debian
#     version, each checked against its SHA-256 in the lock before unpacking;
#     the lock's values are also cross-checked against apt's Sources index,
#     which apt verified against Debian's signed InRelease;
#   * the tree is unpacked and patched (debian/patches/series, as
#     dpkg-source -x does for "3.0 (quilt)") into a FIXED path, BUILD_ROOT
#     below, from scratch every time: edk2 embeds absolute paths of the
#     intermediate .dll files in the CodeView debug entries of every PE image;
#   * SOURCE_DATE_EPOCH from debian/changelog, TZ=UTC, LC_ALL=C, umask 022,
#     PYTHONHASHSEED=0 (BaseTools' Python iterates over sets and dicts of
#     strings), the distribution's /usr/bin/python3 rather than whatever
#     python3 is first on PATH;
#   * GenFw zeroes PE TimeDateStamps for ELF-converted images (checked in
#     the pinned source), so no timestamp patching is needed;
#   * the toolchain (gcc, nasm, iasl, binutils) is that of the Debian release
#     named in the lock: a different compiler gives a different image. The
#     script warns when the versions here differ from the lock.
#
# Nothing here needs network access except apt-get (source download and, on
# first use, build dependencies). Run as root (apt) or with the source files
# already in the cache.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LOCK="$HERE/firmware.lock"
OUT_DIR="$REPO/images/out/firmware"
CACHE="${COCOON_CACHE:-$HOME/.cache/cocoon}/firmware"
PY=/usr/bin/python3

CHECK=0; REBUILD=0; ONLY=""; UPDATE_LOCK=0; JOBS="$(nproc)"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK=1 ;;
    --rebuild) REBUILD=1 ;;
    --only) ONLY="${2:?--only needs snp or tdx}"; shift ;;
    --update-lock) UPDATE_LOCK=1 ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
case "$ONLY" in ""|snp|tdx) ;; *) echo "--only takes snp or tdx" >&2; exit 64 ;; esac

log() { printf '[firmware %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[firmware] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY not found (apt-get install python3)"
[ -f "$LOCK" ] || die "lock file $LOCK not found"

# ---------------------------------------------------------------- lock ----
# Parse the lock with Python's tomllib (3.11+) into shell variables.
eval "$("$PY" - "$LOCK" <<'PYEOF'
import sys, tomllib, shlex
lock = tomllib.load(open(sys.argv[1], "rb"))
def out(k, v): print(f"{k}={shlex.quote(str(v))}")
s, t = lock["source"], lock["toolchain"]
out("SRC_PACKAGE", s["package"]); out("SRC_VERSION", s["version"])
out("SRC_SUITE", s["suite"]); out("SRC_ARCHIVE", s["archive"])
out("SRC_EPOCH", s["source_date_epoch"])
names = [f["name"] for f in s["files"]]
out("SRC_FILES", " ".join(names))
for i, f in enumerate(s["files"]):
    out(f"SRC_SHA_{i}", f["sha256"]); out(f"SRC_KIND_{i}", f["kind"])
out("TC_TAG", t["edk2_toolchain"]); out("TC_TARGET", t["target"])
out("TC_ARCH", t["arch"]); out("TC_GCC", t["gcc"]); out("TC_NASM", t["nasm"])
out("TC_IASL", t["iasl"]); out("BUILD_ROOT", t["build_root"])
for p in ("snp", "tdx"):
    f = lock["firmware"][p]
    out(f"FW_{p}_PLATFORM", f["platform"]); out(f"FW_{p}_FD", f["build_output"])
    out(f"FW_{p}_OUT", f["output"]); out(f"FW_{p}_SHA", f["sha256"])
    out(f"FW_{p}_DEFINES", " ".join(f.get("defines", [])))
PYEOF
)"
read -r -a SRC_FILE_ARR <<<"$SRC_FILES"
src_sha() { local i; for i in "${!SRC_FILE_ARR[@]}"; do
  [ "${SRC_FILE_ARR[$i]}" = "$1" ] && { eval "echo \"\$SRC_SHA_$i\""; return; }; done; }
src_of_kind() { local i; for i in "${!SRC_FILE_ARR[@]}"; do
  [ "$(eval "echo \"\$SRC_KIND_$i\"")" = "$1" ] && { echo "${SRC_FILE_ARR[$i]}"; return; }; done; }

PLATFORMS=(snp tdx); [ -n "$ONLY" ] && PLATFORMS=("$ONLY")
log "edk2 source: $SRC_PACKAGE $SRC_VERSION (Debian $SRC_SUITE), build root $BUILD_ROOT"

# ------------------------------------------------------------ toolchain ----
need_pkgs=()
command -v nasm >/dev/null || need_pkgs+=(nasm)
command -v iasl >/dev/null || need_pkgs+=(acpica-tools)
command -v gcc >/dev/null && command -v make >/dev/null || need_pkgs+=(build-essential)
[ -e /usr/include/uuid/uuid.h ] || need_pkgs+=(uuid-dev)
command -v dpkg-parsechangelog >/dev/null || need_pkgs+=(dpkg-dev)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v patch >/dev/null || need_pkgs+=(patch)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing build dependencies: ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2
fi
HAVE_GCC="$(gcc --version | head -n1)"
HAVE_NASM="$(nasm -v)"
HAVE_IASL="$(iasl -v 2>&1 | grep -o 'version [0-9]*' | head -n1)"
tc_warn=0
[ "$HAVE_GCC" = "$TC_GCC" ] || { log "WARNING: gcc here is '$HAVE_GCC', lock says '$TC_GCC'"; tc_warn=1; }
[ "$HAVE_NASM" = "$TC_NASM" ] || { log "WARNING: nasm here is '$HAVE_NASM', lock says '$TC_NASM'"; tc_warn=1; }
[ "$HAVE_IASL" = "$TC_IASL" ] || { log "WARNING: iasl here is '$HAVE_IASL', lock says '$TC_IASL'"; tc_warn=1; }
[ $tc_warn = 0 ] || log "WARNING: a different toolchain will most likely give different firmware hashes"

# -------------------------------------------------------------- sources ----
SRC_CACHE="$CACHE/src/$SRC_PACKAGE-$SRC_VERSION"
mkdir -p "$SRC_CACHE"

check_sources() { # prints missing files; dies on mismatch
  local n got want missing=()
  for n in "${SRC_FILE_ARR[@]}"; do
    if [ ! -f "$SRC_CACHE/$n" ]; then missing+=("$n"); continue; fi
    want="$(src_sha "$n")"; got="$(sha256sum "$SRC_CACHE/$n" | cut -d' ' -f1)"
    if [ "$got" != "$want" ]; then
      mv -f "$SRC_CACHE/$n" "$SRC_CACHE/$n.bad"
      die "SHA-256 mismatch for $n: lock says $want, file has $got (moved aside to $SRC_CACHE/$n.bad)"
    fi
  done
  echo "${missing[*]:-}"
}

# The paragraph of apt's Sources index for the pinned version (empty if none).
apt_index_entry() {
  apt-cache showsrc "$SRC_PACKAGE" 2>/dev/null \
    | awk -v RS= -v v="$SRC_VERSION" 'index($0 "\n", "\nVersion: " v "\n") { print; print "" }'
}

missing="$(check_sources)"
if [ -n "$missing" ]; then
  log "downloading $SRC_PACKAGE=$SRC_VERSION source (missing: $missing)"
  APT_SRC=/etc/apt/sources.list.d/cocoon-edk2-src.sources
  if [ -z "$(apt_index_entry)" ]; then
    log "writing $APT_SRC (deb-src for $SRC_ARCHIVE $SRC_SUITE) and running apt-get update"
    cat >"$APT_SRC" <<EOF
# Written by cocoon images/firmware/build.sh: Debian source packages, used to
# fetch the pinned edk2 source for the measured guest firmware.
Types: deb-src
URIs: $SRC_ARCHIVE
Suites: $SRC_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update >&2
  fi
  # apt-get source fails as a whole when any one file fails; keep going and
  # judge by what arrived (see the .dsc note below).
  (cd "$SRC_CACHE" && apt-get source --download-only "$SRC_PACKAGE=$SRC_VERSION" >&2) \
    || log "WARNING: apt-get source reported an error; checking what was downloaded"
  missing="$(check_sources)"
fi

# Cross-check the lock against apt's (InRelease-signed) Sources index, when apt
# knows this version. Superseded versions drop out of the index; then the lock
# hashes alone are the trust anchor.
idx="$(apt_index_entry)"
if [ -n "$idx" ]; then
  for n in "${SRC_FILE_ARR[@]}"; do
    want="$(src_sha "$n")"
    grep -q "^ $want [0-9]* $n\$" <<<"$idx" \
      || die "lock's SHA-256 for $n ($want) is not the one in Debian's signed Sources index"
  done
  log "lock's source hashes match Debian's signed Sources index"
else
  log "note: $SRC_PACKAGE=$SRC_VERSION is not in apt's Sources index here; relying on the lock's hashes"
fi

DSC="$(src_of_kind dsc)"; ORIG="$(src_of_kind orig)"; DEBTAR="$(src_of_kind debian)"
for n in $missing; do
  if [ "$n" = "$DSC" ]; then
    # The build only needs the two tarballs (unpacked below exactly as
    # dpkg-source -x would). Some mirrors/proxies fail to serve the .dsc; its
    # hash is still pinned in the lock and checked whenever it is present.
    log "WARNING: $n could not be downloaded; building from the hash-checked tarballs alone"
  else
    die "$n could not be downloaded (is $SRC_PACKAGE=$SRC_VERSION still in Debian $SRC_SUITE? \
if not, point [source].archive at snapshot.debian.org)"
  fi
done
present=(); for n in "${SRC_FILE_ARR[@]}"; do [ -f "$SRC_CACHE/$n" ] && present+=("$n"); done
log "verified against the lock's SHA-256: ${present[*]}"

# ------------------------------------------------------------- cache key ----
SCRIPT_SHA="$(sha256sum "$0" | cut -d' ' -f1)"
cache_key() { # platform
  local p="$1" plat fd defs
  plat="$(eval "echo \"\$FW_${p}_PLATFORM\"")"; defs="$(eval "echo \"\$FW_${p}_DEFINES\"")"
  fd="$(eval "echo \"\$FW_${p}_FD\"")"
  printf '%s\n' "$SRC_VERSION" "$(for n in "${SRC_FILE_ARR[@]}"; do src_sha "$n"; done)" \
    "$plat" "$defs" "$fd" "$TC_TAG" "$TC_TARGET" "$TC_ARCH" "$HAVE_GCC" "$HAVE_NASM" \
    "$HAVE_IASL" "$BUILD_ROOT" "$SCRIPT_SHA" | sha256sum | cut -c1-24
}

to_build=()
for p in "${PLATFORMS[@]}"; do
  k="$(cache_key "$p")"
  if [ $REBUILD = 1 ] || [ ! -f "$CACHE/out/$k/$(eval "echo \"\$FW_${p}_OUT\"")" ]; then
    to_build+=("$p")
  else
    log "$p: cached build found ($CACHE/out/$k), not rebuilding (use --rebuild to force)"
  fi
done

# ---------------------------------------------------------------- build ----
export SOURCE_DATE_EPOCH="$SRC_EPOCH" TZ=UTC LC_ALL=C LANG=C PYTHONHASHSEED=0
umask 022

prepare_tree() {
  local t0=$SECONDS
  log "unpacking into $BUILD_ROOT (removing any previous tree)"
  case "$BUILD_ROOT" in /tmp/*|/var/tmp/*|/build/*) ;; *) die "refusing to rm -rf build_root $BUILD_ROOT";; esac
  rm -rf "$BUILD_ROOT"; mkdir -p "$BUILD_ROOT"
  tar -xf "$SRC_CACHE/$ORIG" -C "$BUILD_ROOT" --strip-components=1 --no-same-owner
  tar -xf "$SRC_CACHE/$DEBTAR" -C "$BUILD_ROOT" --no-same-owner
  local pcount=0 line
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"; line="$(echo "$line" | xargs)"
    [ -z "$line" ] && continue
    case "$line" in *" "*) die "unsupported patch options in series: $line";; esac
    patch -d "$BUILD_ROOT" -p1 -s -f --no-backup-if-mismatch <"$BUILD_ROOT/debian/patches/$line" \
      || die "Debian patch $line does not apply"
    pcount=$((pcount + 1))
  done <"$BUILD_ROOT/debian/patches/series"
  local epoch; epoch="$(dpkg-parsechangelog -l "$BUILD_ROOT/debian/changelog" -STimestamp)"
  [ "$epoch" = "$SRC_EPOCH" ] || die "debian/changelog timestamp $epoch != lock source_date_epoch $SRC_EPOCH"
  # AmdSevX64.dsc has PREBUILD = OvmfPkg/AmdSev/Grub/grub.sh, which runs
  # grub-mkimage to embed a GRUB that unlocks a LUKS disk with a SEV-injected
  # secret. We boot with measured direct kernel boot (QEMU -kernel/-initrd/
  # -append, hashes checked by BlobVerifierLibSevHashes), so GRUB is not
  # wanted in the TCB, and grub-mkimage + mkfs.msdos (random volume id) would
  # also make the image unreproducible. grub.sh skips its work when grub.efi
  # exists and is newer than grub.cfg and grub.sh: an empty grub.efi leaves
  # only an empty PE32 section in the Grub FFS file, which is never started
  # on the direct-boot path.
  : >"$BUILD_ROOT/OvmfPkg/AmdSev/Grub/grub.efi"
  touch -d "@$((SRC_EPOCH + 1))" "$BUILD_ROOT/OvmfPkg/AmdSev/Grub/grub.efi"
  touch -d "@$SRC_EPOCH" "$BUILD_ROOT/OvmfPkg/AmdSev/Grub/grub.cfg" "$BUILD_ROOT/OvmfPkg/AmdSev/Grub/grub.sh"
  log "unpacked, applied $pcount Debian patches, SOURCE_DATE_EPOCH=$SRC_EPOCH ($((SECONDS - t0))s)"
  log "building BaseTools (C tools), log: $BUILD_ROOT/basetools.log"
  t0=$SECONDS
  (cd "$BUILD_ROOT" && export PYTHON_COMMAND="$PY" && set -- && set +u && . ./edksetup.sh >/dev/null && set -u \
    && make -C BaseTools -j"$JOBS" >"$BUILD_ROOT/basetools.log" 2>&1) \
    || { tail -n 40 "$BUILD_ROOT/basetools.log" >&2; die "BaseTools build failed"; }
  log "BaseTools built ($((SECONDS - t0))s)"
}

build_platform() { # snp|tdx
  local p="$1" plat fd defs t0=$SECONDS k total
  plat="$(eval "echo \"\$FW_${p}_PLATFORM\"")"; fd="$(eval "echo \"\$FW_${p}_FD\"")"
  defs="$(eval "echo \"\$FW_${p}_DEFINES\"")"
  local logf="$BUILD_ROOT/build-$p.log"
  local -a dargs=(); for d in $defs; do dargs+=(-D "$d"); done
  log "$p: build -p $plat -a $TC_ARCH -t $TC_TAG -b $TC_TARGET ${dargs[*]:-} (log: $logf)"
  # Progress: one line per 25 modules built, then the final Done/Failed line.
  (cd "$BUILD_ROOT" && export PYTHON_COMMAND="$PY" && set -- && set +u && . ./edksetup.sh >/dev/null && set -u \
    && build -p "$plat" -a "$TC_ARCH" -t "$TC_TAG" -b "$TC_TARGET" -n "$JOBS" "${dargs[@]}" 2>&1) \
    | tee "$logf" | awk -v p="$p" '
        /^Building \.\.\./ { n++; if (n % 25 == 0) { printf "[firmware] %s: %d modules...\n", p, n; fflush() } }
        /^Fd File Name:|^- Done -|^- Failed -/ { printf "[firmware] %s: %s\n", p, $0; fflush() }' >&2 \
    || { tail -n 60 "$logf" >&2; die "$p: edk2 build failed (full log: $logf)"; }
  [ -f "$BUILD_ROOT/$fd" ] || die "$p: build output $fd not found"
  k="$(cache_key "$p")"
  mkdir -p "$CACHE/out/$k"
  cp -f "$BUILD_ROOT/$fd" "$CACHE/out/$k/$(eval "echo \"\$FW_${p}_OUT\"")"
  total=$((SECONDS - t0))
  log "$p: built in ${total}s"
}

if [ ${#to_build[@]} -gt 0 ]; then
  T0=$SECONDS
  prepare_tree
  for p in "${to_build[@]}"; do build_platform "$p"; done
  log "build finished in $((SECONDS - T0))s"
fi

# --------------------------------------------------------------- output ----
mkdir -p "$OUT_DIR"
fail=0
for p in "${PLATFORMS[@]}"; do
  name="$(eval "echo \"\$FW_${p}_OUT\"")"; want="$(eval "echo \"\$FW_${p}_SHA\"")"
  cp -f "$CACHE/out/$(cache_key "$p")/$name" "$OUT_DIR/$name"
  got="$(sha256sum "$OUT_DIR/$name" | cut -d' ' -f1)"   # always re-hash the output
  printf '%s  %s\n' "$got" "images/out/firmware/$name"
  if [ "$got" != "$want" ]; then
    if [ $CHECK = 1 ]; then
      echo "[firmware] MISMATCH $p: images/out/firmware/$name has sha256 $got," \
        "firmware.lock [firmware.$p].sha256 expects $want" >&2
      fail=1
    elif [ $UPDATE_LOCK = 0 ]; then
      log "note: $p output differs from the lock ($want); run with --check to fail on this"
    fi
  elif [ $CHECK = 1 ]; then
    log "OK $p: matches firmware.lock"
  fi
  if [ $UPDATE_LOCK = 1 ]; then
    "$PY" - "$LOCK" "$p" "$got" <<'PYEOF'
import sys
path, plat, sha = sys.argv[1:]
lines = open(path).read().split("\n")
try:
    start = lines.index(f"[firmware.{plat}]")
except ValueError:
    sys.exit(f"no [firmware.{plat}] table in {path}")
for i in range(start + 1, len(lines)):
    if lines[i].startswith("["):
        break
    if lines[i].replace(" ", "").startswith("sha256="):
        lines[i] = f'sha256 = "{sha}"'
        open(path, "w").write("\n".join(lines))
        sys.exit(0)
sys.exit(f"no sha256 key in [firmware.{plat}] of {path}")
PYEOF
    log "lock updated: [firmware.$p].sha256 = $got"
  fi
done
if [ $fail = 1 ]; then
  [ $tc_warn = 1 ] && echo "[firmware] (the toolchain differs from the lock; see the warnings above)" >&2
  die "firmware does not match firmware.lock"
fi
