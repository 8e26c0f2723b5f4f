"""litellm's `openai/` provider against Tandem: `litellm.completion` (chat completions, whole
and streamed, with a tool call) and `litellm.responses` (the Responses API), as a litellm
gateway in front of Tandem would call it.

The servers run the scripted tiny models of tests/fixtures/scripted, which write a known
message whatever they are asked. Oracles: scripted.json's text and parsed tool call, and
litellm's own reassembly of a stream (stream_chunk_builder) matching the whole reply.
"""
import json
import os

import pytest

# litellm fetches a model price list from the network at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")

from conftest import SCRIPTED  # noqa: E402
from serve_util import ServeProcess  # noqa: E402

DOC = json.loads((SCRIPTED / "scripted.json").read_text())
QUESTION = DOC["question"]
CHAT_TOOL = DOC["tool"]


def case(file, name):
    m = next(m for m in DOC["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


CONTENT = case("scripted-content.gguf", "think")["parsed"]["content"]
HERMES = case("scripted-hermes.gguf", "think_tools")["parsed"]


@pytest.fixture(scope="module")
def content_srv(tandem_bin):
    litellm.telemetry = False
    srv = ServeProcess(SCRIPTED / "scripted-content.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hermes_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-hermes.gguf")
    yield srv
    srv.stop()


def kw(srv, model):
    return dict(model=f"openai/{model}", api_base=srv.url + "/v1", api_key="unused",
                num_retries=0, timeout=120)


def test_completion_text(content_srv):
    r = litellm.completion(messages=[{"role": "user", "content": QUESTION}],
                           **kw(content_srv, "scripted-content"))
    assert r.choices[0].message.content == CONTENT
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(case("scripted-content.gguf", "think")["ids"])


def test_completion_stream(content_srv):
    chunks = list(litellm.completion(messages=[{"role": "user", "content": QUESTION}],
                                     stream=True, stream_options={"include_usage": True},
                                     **kw(content_srv, "scripted-content")))
    assert len(chunks) > 2
    whole = litellm.stream_chunk_builder(chunks)
    assert whole.choices[0].message.content == CONTENT


def test_completion_tool_call(hermes_srv):
    r = litellm.completion(messages=[{"role": "user", "content": QUESTION}], tools=[CHAT_TOOL],
                           **kw(hermes_srv, "scripted-hermes"))
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    call = msg.tool_calls[0]
    want = HERMES["tool_calls"][0]
    assert call.function.name == want["name"]
    assert json.loads(call.function.arguments) == want["arguments"]
    assert msg.reasoning_content.strip() == HERMES["reasoning_content"]
    # the round trip: the call and its output go back
    r2 = litellm.completion(messages=[{"role": "user", "content": QUESTION}, msg.model_dump(),
                                      {"role": "tool", "tool_call_id": call.id,
                                       "content": "Sunny"}],
                            tools=[CHAT_TOOL], **kw(hermes_srv, "scripted-hermes"))
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    assert r2.choices[0].message.tool_calls[0].function.name == want["name"]


def test_responses(hermes_srv):
    tool = {"type": "function", **CHAT_TOOL["function"]}
    r = litellm.responses(input=QUESTION, tools=[tool], **kw(hermes_srv, "scripted-hermes"))
    calls = [o for o in r.output if o.type == "function_call"]
    want = HERMES["tool_calls"][0]
    assert len(calls) == 1 and calls[0].name == want["name"]
    assert json.loads(calls[0].arguments) == want["arguments"]
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
