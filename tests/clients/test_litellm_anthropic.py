"""litellm's `anthropic/` provider against Tandem's /v1/messages: litellm turns OpenAI-shaped
calls into Anthropic Messages requests and Anthropic's replies (thinking, tool_use blocks, the
SSE events) back into OpenAI's shape, as a litellm gateway in front of Tandem does.

Oracles: scripted.json (the scripted models' replies as an OpenAI-compatible server parses
them, HF prompt ids), and Tandem's own count_tokens for the conversation litellm sent.
"""
import json
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
litellm = pytest.importorskip("litellm")

from conftest import SCRIPTED  # noqa: E402
from serve_util import ServeProcess  # noqa: E402

DOC = json.loads((SCRIPTED / "scripted.json").read_text())
QUESTION = DOC["question"]
KEY = "sk-litellm-test"


def case(file, name):
    m = next(m for m in DOC["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


@pytest.fixture(scope="module")
def hermes_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-hermes.gguf", api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def content_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-content.gguf")
    yield srv
    srv.stop()


def call(srv, model, **kw):
    return litellm.completion(model=f"anthropic/{model}", api_base=srv.url,
                              api_key=srv.api_key or "none", num_retries=0, timeout=60, **kw)


def test_text_whole_and_streamed(content_srv):
    c = case("scripted-content.gguf", "think")
    msgs = [{"role": "user", "content": QUESTION}]
    r = call(content_srv, "scripted-content", messages=msgs, max_tokens=64)
    assert r.choices[0].message.content == c["parsed"]["content"]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(c["prompt_ids"])
    assert r.usage.completion_tokens == len(c["ids"])
    text, finish, n = "", None, 0
    for ch in call(content_srv, "scripted-content", messages=msgs, max_tokens=64, stream=True):
        n += 1
        text += ch.choices[0].delta.content or ""
        finish = ch.choices[0].finish_reason or finish
    assert text == c["parsed"]["content"] and finish == "stop" and n > 2
    r = call(content_srv, "scripted-content", messages=msgs, max_tokens=64,
             stop=[DOC["stop_string_case"]["stop"][0]])
    assert r.choices[0].message.content == DOC["stop_string_case"]["text"]


def test_tool_round_trip(hermes_srv):
    c = case("scripted-hermes.gguf", "think_tools")
    want = c["parsed"]["tool_calls"][0]
    msgs = [{"role": "user", "content": QUESTION}]
    kw = dict(max_tokens=2048, tools=[DOC["tool"]])
    r = call(hermes_srv, "scripted-hermes", messages=msgs, **kw)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(m.tool_calls) == 1
    tc = m.tool_calls[0]
    assert tc.function.name == want["name"]
    assert json.loads(tc.function.arguments) == want["arguments"]
    assert m.reasoning_content.strip() == c["parsed"]["reasoning_content"]
    assert r.usage.prompt_tokens == len(c["prompt_ids"])

    # streamed: the tool call's arguments come as input_json_delta, rebuilt by litellm
    name, args, finish = "", "", None
    for ch in call(hermes_srv, "scripted-hermes", messages=msgs, stream=True, **kw):
        d = ch.choices[0].delta
        for t in d.tool_calls or []:
            name += t.function.name or ""
            args += t.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert name == want["name"] and json.loads(args) == want["arguments"]
    assert finish == "tool_calls"

    # the result back through litellm's translation (assistant tool_calls -> tool_use,
    # tool message -> tool_result)
    history = msgs + [m.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": tc.id, "content": "Sunny, 24 C"}]
    again = call(hermes_srv, "scripted-hermes", messages=history, **kw)
    assert again.choices[0].message.tool_calls[0].function.name == want["name"]
    assert again.usage.prompt_tokens > r.usage.prompt_tokens
