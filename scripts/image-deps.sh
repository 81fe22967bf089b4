#!/usr/bin/env bash
# What booting the guest image needs on a host without a TEE (CI, a
# developer's machine): QEMU from Debian, and vhost-device-vsock (the
# rust-vmm user-space vsock device) where the kernel has no
# /dev/vhost-vsock. Installs only what is missing.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  log "installing qemu-system-x86 (Debian)"
  apt_install qemu-system-x86
fi
if [ ! -e /dev/vhost-vsock ] && ! command -v vhost-device-vsock >/dev/null 2>&1 \
   && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-vsock" ]; then
  log "installing vhost-device-vsock 0.3.0 from the Rust package registry (a few minutes, once)"
  # It only relays the test VMs' few kilobytes of vsock traffic: built at
  # opt-level 1 without LTO or debug info, which halves the install on a
  # 2-core CI machine.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --locked vhost-device-vsock --version 0.3.0
fi
echo "image boot tools: $(qemu-system-x86_64 --version | head -1); vsock: $( [ -e /dev/vhost-vsock ] && echo /dev/vhost-vsock || echo vhost-device-vsock)"
