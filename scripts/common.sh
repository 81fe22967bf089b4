# Shared by the project's scripts: locate the vectors, make sure the tools
# the build needs are present (installing Debian packages only when missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export COCOON_VECTORS="${COCOON_VECTORS:-$ROOT/../shared/vectors}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_vectors() {
  if [ ! -f "$COCOON_VECTORS/manifest.json" ]; then
    echo "error: attestation vectors not found at $COCOON_VECTORS" >&2
    echo "       check out shared/ beside the repository or set COCOON_VECTORS=/path/to/vectors" >&2
    exit 66
  fi
}

# Install Debian packages (as root, or through sudo), quietly, without
# recommends.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_toolchain() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust 1.85 or newer with rustup (https://rustup.rs), then re-run." >&2
    exit 69
  fi
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (needed to build aws-lc)"
    apt_install "${missing[@]}"
  fi
}
