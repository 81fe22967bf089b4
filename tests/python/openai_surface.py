"""The official OpenAI Python client against `cocoon-client serve` in front
of real models: what the endpoint refuses, how errors are classified, what
they cost, and that one application's parallel requests are queued.

Run by tests/tests/e2e_openai.rs with the venv of scripts/torch-env.sh
(which pins the `openai` package):

    python openai_surface.py BASE_URL API_KEY_FILE CHAT_MODEL EMBEDDING_MODEL

The client keeps its default automatic retries (2) so that a 5xx is retried
as a real application's would be. The enclave behind the endpoint fails its
first chat after 2 tokens (a test-only fault). Prints one JSON object; the
Rust test checks it and the host's ledger.
"""

import json
import sys
import threading

import openai
from openai import OpenAI


def status_of(fn):
    """The status, code and param of the error `fn` raises (or "ok")."""
    try:
        fn()
        return "ok"
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        return {
            "status": err.status_code,
            "type": body.get("type"),
            "code": err.code,
            "param": body.get("param"),
        }


def main() -> None:
    base_url, key_file, chat_model, emb_model = sys.argv[1:5]
    with open(key_file, encoding="ascii") as f:
        api_key = f.read().strip()
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=300)
    out = {"openai_version": openai.__version__}
    ask = [{"role": "user", "content": "Say hello."}]

    # The enclave fails the first chat after 2 tokens: the client gets a
    # 5xx, retries on its own, and the retry is answered.
    r = client.chat.completions.create(model=chat_model, messages=ask, max_tokens=6)
    out["fault_then_retry"] = {
        "content": r.choices[0].message.content,
        "completion_tokens": r.usage.completion_tokens,
    }

    chat = client.chat.completions.create
    embed = client.embeddings.create
    refused = {
        "tools": lambda: chat(model=chat_model, messages=ask, max_tokens=4, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        "tool_choice": lambda: chat(model=chat_model, messages=ask, max_tokens=4, tool_choice="none"),
        "functions": lambda: chat(model=chat_model, messages=ask, max_tokens=4,
                                  functions=[{"name": "f", "parameters": {"type": "object"}}]),
        "function_call": lambda: chat(model=chat_model, messages=ask, max_tokens=4, function_call="none"),
        "response_format": lambda: chat(model=chat_model, messages=ask, max_tokens=4,
                                        response_format={"type": "json_object"}),
        "n": lambda: chat(model=chat_model, messages=ask, max_tokens=4, n=2),
        "unknown": lambda: chat(model=chat_model, messages=ask, max_tokens=4,
                                extra_body={"vendor_extra": True}),
        "max_tokens_0": lambda: chat(model=chat_model, messages=ask, max_tokens=0),
        "dimensions": lambda: embed(model=emb_model, input="x", dimensions=8),
        "empty_input": lambda: embed(model=emb_model, input=""),
    }
    out["refused"] = {name: status_of(fn) for name, fn in refused.items()}

    # Refused by the enclave before the model runs: 4xx, never retried.
    out["enclave_refused"] = {
        "context_length": status_of(lambda: chat(
            model=chat_model, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4)),
        "embedding_too_long": status_of(lambda: embed(model=emb_model, input="word " * 600)),
        "chat_with_embedding_model": status_of(lambda: chat(model=emb_model, messages=ask, max_tokens=4)),
        "embed_with_chat_model": status_of(lambda: embed(model=chat_model, input="x")),
        "unknown_model": status_of(lambda: chat(model="no-such-model", messages=ask, max_tokens=4)),
    }

    m = client.models.retrieve(chat_model)
    out["retrieve"] = {"id": m.id, "object": m.object}
    out["retrieve_unknown"] = status_of(lambda: client.models.retrieve("no-such-model"))

    chunks = []
    for chunk in chat(model=chat_model, messages=ask, max_tokens=4, stream=True,
                      stream_options={"include_usage": True}):
        chunks.append({
            "choices": len(chunk.choices),
            "finish": chunk.choices[0].finish_reason if chunk.choices else None,
            "usage": chunk.usage.model_dump() if chunk.usage else None,
        })
    out["include_usage"] = chunks

    results = [None] * 16

    def one(i):
        try:
            r = chat(model=chat_model, messages=[{"role": "user", "content": f"Count to {i}."}],
                     max_tokens=3)
            results[i] = r.usage.completion_tokens
        except openai.APIStatusError as err:
            results[i] = {"status": err.status_code, "code": err.code}
        except Exception as err:  # noqa: BLE001 - reported to the test
            results[i] = repr(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["parallel"] = results

    print(json.dumps(out))


if __name__ == "__main__":
    main()
