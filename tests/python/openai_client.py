"""The official OpenAI Python client against `cocoon-client serve`.

Run by tests/tests/e2e_sealed_path.rs with the venv of scripts/torch-env.sh
(which pins the `openai` package):

    python openai_client.py BASE_URL API_KEY_FILE MODEL

It uses the endpoint's API key as the client's api_key and prints one JSON
object: the models listed, a chat completion, a streamed chat completion,
embeddings of two inputs, and what a wrong key got. The Rust test checks
each against the ledger and the enclave's deterministic backend.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, key_file, model = sys.argv[1:4]
    with open(key_file, encoding="ascii") as f:
        api_key = f.read().strip()
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
    out = {"openai_version": openai.__version__}

    out["models"] = [m.id for m in client.models.list()]

    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello from the OpenAI client"}],
        max_tokens=8,
    )
    out["chat"] = {
        "id": r.id,
        "content": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
        "usage": r.usage.model_dump(),
    }

    pieces, usage, finish, ids = [], None, None, set()
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Stream to the OpenAI client"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        ids.add(chunk.id)
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
        if chunk.usage:
            # OpenAI's shape: usage only on a last chunk with no choices.
            assert not chunk.choices, chunk
            usage = chunk.usage.model_dump()
    out["stream"] = {
        "pieces": pieces,
        "finish_reason": finish,
        "usage": usage,
        "ids": sorted(ids),
    }

    e = client.embeddings.create(model=model, input=["first input", "second input"])
    out["embeddings"] = {
        "vectors": [list(map(float, d.embedding)) for d in e.data],
        "indices": [d.index for d in e.data],
        "usage": e.usage.model_dump(),
    }

    wrong = OpenAI(
        base_url=base_url,
        api_key="cocoon-local-" + "0" * 64,
        max_retries=0,
        timeout=60,
    )
    try:
        wrong.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "not with this key"}],
            max_tokens=8,
        )
        out["wrong_key"] = "accepted"
    except openai.AuthenticationError as err:
        out["wrong_key"] = {"status": err.status_code, "code": err.code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
