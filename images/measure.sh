#!/usr/bin/env bash
# Computes the launch measurements of a built image with the measured
# firmware, offline, and writes them as verifier policy fragments:
#   OUT/policy-snp-<vcpus>vcpu.toml   ([snp] table, SEV-SNP launch digest),
#                                     for each vCPU count of --vcpus (default 1,2,4,8)
#   OUT/policy-tdx-<mem>mib.toml      ([tdx] table, MRTD + RTMR1/2, labelled unverified)
#   OUT/release-manifest.json         the release manifest (canonical JSON)
#                                     with those SNP launch digests
# The vCPU count and type (SNP) and the guest memory size (TDX: QEMU puts
# the initrd at an address that depends on it) are part of the values:
# publish one fragment per VM shape you launch.
#
# The command line carries the root disk's dm-verity root hash, so these
# values cover the disk (the enclave, libtorch, the models) too.
#
# Usage: images/measure.sh [--image DIR] [--firmware DIR] [--vcpus N[,N...]] [--vcpu-type T] [--memory-mib M]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMG="$ROOT/images/out/image"; FW="$ROOT/images/out/firmware"
VCPUS=1,2,4,8; VCPU_TYPE=""; MEM=2048
while [ $# -gt 0 ]; do
  case "$1" in
    --image) IMG="$2"; shift 2 ;;
    --firmware) FW="$2"; shift 2 ;;
    --vcpus) VCPUS="$2"; shift 2 ;;
    --vcpu-type) VCPU_TYPE="$2"; shift 2 ;;
    --memory-mib) MEM="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "images/measure.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
for f in "$IMG/vmlinuz" "$IMG/initrd.cpio" "$IMG/cmdline.txt" "$IMG/image.env" "$FW/OVMF-AmdSev.fd" "$FW/OVMF-IntelTdx.fd"; do
  [ -f "$f" ] || { echo "images/measure.sh: $f is missing (images/build.sh, images/firmware/build.sh)" >&2; exit 66; }
done
# shellcheck source=/dev/null
source "$IMG/image.env"
# The vCPU model cocoon-host launch gives QEMU for this image (image.env),
# unless --vcpu-type says otherwise.
VCPU_TYPE="${VCPU_TYPE:-${SNP_VCPU_TYPE:-EPYC-v4}}"
measure() { (cd "$ROOT" && cargo run --locked -q -p cocoon-measure -- "$@"); }
for n in ${VCPUS//,/ }; do
  measure snp --ovmf "$FW/OVMF-AmdSev.fd" --vcpus "$n" --vcpu-type "$VCPU_TYPE" \
    --guest-features 0x1 --vmm-type qemu \
    --kernel "$IMG/vmlinuz" --initrd "$IMG/initrd.cpio" --append "$(cat "$IMG/cmdline.txt")" \
    --policy-fragment --release "$IMAGE_RELEASE" > "$IMG/policy-snp-${n}vcpu.toml"
  echo "SNP ($n x $VCPU_TYPE): $(grep '^measurements' "$IMG/policy-snp-${n}vcpu.toml")"
done
measure tdx --firmware "$FW/OVMF-IntelTdx.fd" \
  --kernel "$IMG/vmlinuz" --initrd "$IMG/initrd.cpio" --memory-mib "$MEM" --append "$(cat "$IMG/cmdline.txt")" \
  --policy-fragment --release "$IMAGE_RELEASE" > "$IMG/policy-tdx-${MEM}mib.toml"
echo "TDX ($MEM MiB): $(grep '^mrtd' "$IMG/policy-tdx-${MEM}mib.toml")"
echo "fragments: $IMG/policy-snp-*vcpu.toml $IMG/policy-tdx-${MEM}mib.toml"
# The release manifest with the same SNP launch digests (TDX values need
# RTMR0 from a reference launch: `cocoon-measure manifest --tdx ...`).
measure manifest --image "$IMG" --snp-ovmf "$FW/OVMF-AmdSev.fd" --vcpus "$VCPUS" --vcpu-type "$VCPU_TYPE"
