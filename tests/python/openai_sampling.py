"""Sampling parameters through the official OpenAI Python client against
`cocoon-client serve`, with the real chat model behind it.

Run by tests/tests/e2e_sampling.rs with the venv of scripts/torch-env.sh:

    python openai_sampling.py BASE_URL API_KEY_FILE MODEL PROMPT

Prints one JSON object; the Rust test checks it against the model's greedy
answer: temperature 0, two answers with the same seed, a stop string (plain
and streamed), logprobs with top_logprobs (plain and streamed), and the
status, type and param of requests with out-of-range fields.
"""

import json
import sys

import openai
from openai import OpenAI


def logprobs_of(content):
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.bytes,
            "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top_logprobs],
        }
        for t in content
    ]


def main() -> None:
    base_url, key_file, model, prompt = sys.argv[1:5]
    with open(key_file, encoding="ascii") as f:
        api_key = f.read().strip()
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": prompt}]
    out = {"openai_version": openai.__version__}

    def chat(**kw):
        kw.setdefault("max_tokens", 64)
        return client.chat.completions.create(model=model, messages=messages, **kw)

    greedy = chat(temperature=0)
    answer = greedy.choices[0].message.content
    out["greedy"] = {"content": answer, "finish_reason": greedy.choices[0].finish_reason}

    out["seeded"] = [
        chat(temperature=1.0, top_p=0.95, seed=42, max_tokens=16).choices[0].message.content
        for _ in range(2)
    ]

    words = answer.split(" ")
    stop = " " + words[len(words) // 2]
    r = chat(temperature=0, stop=[stop, "never appears"])
    out["stop"] = {
        "stop": stop,
        "content": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
    }
    pieces, finish = [], None
    for chunk in chat(temperature=0, stop=stop, stream=True):
        if chunk.choices:
            c = chunk.choices[0]
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    out["stream_stop"] = {"content": "".join(pieces), "finish_reason": finish}

    r = chat(temperature=0, logprobs=True, top_logprobs=2)
    out["logprobs"] = logprobs_of(r.choices[0].logprobs.content)
    streamed = []
    for chunk in chat(temperature=0, logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(logprobs_of(chunk.choices[0].logprobs.content))
    out["stream_logprobs"] = streamed

    errors = {}
    for field, value in [
        ("temperature", 2.5),
        ("top_p", 1.5),
        ("presence_penalty", -3),
        ("logit_bias", {"5": 150}),
        ("top_logprobs", 25),
    ]:
        kw = {field: value}
        if field == "top_logprobs":
            kw["logprobs"] = True
        try:
            chat(**kw)
            errors[field] = {"status": 200}
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            errors[field] = {
                "status": e.status_code,
                "param": body.get("param"),
                "type": body.get("type"),
            }
    out["errors"] = errors
    print(json.dumps(out))


if __name__ == "__main__":
    main()
