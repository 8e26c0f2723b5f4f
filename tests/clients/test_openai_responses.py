"""The official `openai` SDK's Responses API (`client.responses.create`, its streaming and the
`responses.stream` helper) against POST /v1/responses.

The servers run the scripted tiny models of tests/fixtures/scripted: whatever they are asked,
they write a known assistant message (plain text; or Hermes-format reasoning and a tool call),
so replies are exact. Oracles: scripted.json (the generated text, and `parsed`, what an
OpenAI-compatible server returns: reasoning, content, calls), Python jinja2 rendering of the
GGUF's own template for the conversation the Responses input stands for (so the conversion of
items into messages is checked token for token), and the SDK itself: its typed events and
their accumulation must rebuild the non-streamed response, and its exception classes come
from the HTTP status and OpenAI's error shape.
"""
import json

import openai
import pytest

from conftest import SCRIPTED
from serve_util import ServeProcess, read_gguf_kv, render_chat_template

DOC = json.loads((SCRIPTED / "scripted.json").read_text())
QUESTION = DOC["question"]
CHAT_TOOL = DOC["tool"]
TOOL_FN = CHAT_TOOL["function"]
# the same tool in the Responses API's flat shape
TOOL = {"type": "function", "name": TOOL_FN["name"], "description": TOOL_FN["description"],
        "parameters": TOOL_FN["parameters"]}
TIME_TOOL = {"type": "function", "name": "get_time", "description": "The time in a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def case(file, name):
    m = next(m for m in DOC["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


CONTENT = case("scripted-content.gguf", "think")["parsed"]["content"]
HERMES = case("scripted-hermes.gguf", "think_tools")["parsed"]


@pytest.fixture(scope="module")
def content_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-content.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hermes_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-hermes.gguf")
    yield srv
    srv.stop()


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def n_rendered(srv, messages, **kw):
    """Tokens of the conversation rendered by jinja2 from the GGUF's template (the oracle)."""
    tpl = read_gguf_kv(srv.model)["tokenizer.chat_template"]
    return len(srv.tokenize(render_chat_template(tpl, messages, **kw),
                            add_special_tokens=False)["tokens"])


# ---- text ----

def test_plain_text(content_srv):
    r = client(content_srv).responses.create(model="scripted-content", input=QUESTION)
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == CONTENT
    assert [o.type for o in r.output] == ["message"]
    msg = r.output[0]
    assert msg.role == "assistant" and msg.status == "completed"
    assert [p.type for p in msg.content] == ["output_text"]
    u = r.usage
    assert u.input_tokens == n_rendered(content_srv, [{"role": "user", "content": QUESTION}])
    assert u.output_tokens == len(case("scripted-content.gguf", "think")["ids"])
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0
    assert 0 <= u.input_tokens_details.cached_tokens < u.input_tokens
    assert r.incomplete_details is None and r.error is None and r.store is False


def test_instructions_and_items_render_as_chat(content_srv):
    cl = client(content_srv)
    items = [{"role": "developer", "content": "Answer briefly."},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "Hi"}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
             {"role": "user", "content": QUESTION}]
    r = cl.responses.create(model="scripted-content", instructions="You are terse.", input=items,
                            temperature=0.0, top_p=0.5)
    chat = [{"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": QUESTION}]
    assert r.usage.input_tokens == n_rendered(content_srv, chat)
    assert r.instructions == "You are terse." and r.temperature == 0.0 and r.top_p == 0.5
    assert r.output_text == CONTENT


def test_max_output_tokens_incomplete(content_srv):
    r = client(content_srv).responses.create(model="scripted-content", input=QUESTION,
                                             max_output_tokens=3)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3
    assert r.output[0].status == "incomplete"
    assert CONTENT.startswith(r.output_text) and 0 < len(r.output_text) < len(CONTENT)


def event_stream(srv, **kw):
    events = list(client(srv).responses.create(stream=True, **kw))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


def test_stream_text(content_srv):
    events = event_stream(content_srv, model="scripted-content", input=QUESTION)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"} and len(types[4:-4]) > 1
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == CONTENT
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == CONTENT
    final = events[-1].response
    assert final.status == "completed" and final.output_text == CONTENT
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    whole = client(content_srv).responses.create(model="scripted-content", input=QUESTION)
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}


def test_stream_helper(content_srv):
    with client(content_srv).responses.stream(model="scripted-content", input=QUESTION) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert text == CONTENT and final.output_text == CONTENT


# ---- function tools ----

def check_call_output(r):
    types = [o.type for o in r.output]
    assert types == ["reasoning", "function_call"], types
    rs, fc = r.output
    assert rs.content[0].type == "reasoning_text"
    assert rs.content[0].text.strip() == HERMES["reasoning_content"]
    want = HERMES["tool_calls"][0]
    assert fc.name == want["name"] and json.loads(fc.arguments) == want["arguments"]
    assert fc.call_id.startswith("call_") and fc.id.startswith("fc_") and fc.status == "completed"
    return rs, fc


def test_function_call(hermes_srv):
    r = client(hermes_srv).responses.create(model="scripted-hermes", input=QUESTION,
                                            tools=[TOOL, TIME_TOOL])
    check_call_output(r)
    assert r.status == "completed" and r.output_text == ""
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    assert [t.name for t in r.tools] == ["get_weather", "get_time"]
    chat = [{"role": "user", "content": QUESTION}]
    tools = [CHAT_TOOL, {"type": "function", "function": {k: v for k, v in TIME_TOOL.items()
                                                          if k != "type"}}]
    assert r.usage.input_tokens == n_rendered(hermes_srv, chat, tools=tools)


def test_function_call_round_trip(hermes_srv):
    """The SDK's output items go back as input with the function's output: the conversation
    renders as chat completions' assistant tool call + tool message would."""
    cl = client(hermes_srv)
    first = cl.responses.create(model="scripted-hermes", input=QUESTION, tools=[TOOL])
    rs, fc = check_call_output(first)
    history = [{"role": "user", "content": QUESTION}, *first.output,
               {"type": "function_call_output", "call_id": fc.call_id, "output": "Sunny, 21 C"}]
    second = cl.responses.create(model="scripted-hermes", input=history, tools=[TOOL])
    check_call_output(second)  # the scripted model calls again, whatever it is told
    chat = [{"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "", "reasoning_content": rs.content[0].text,
             "tool_calls": [{"id": fc.call_id, "type": "function",
                             "function": {"name": fc.name,
                                          "arguments": json.loads(fc.arguments)}}]},
            {"role": "tool", "tool_call_id": fc.call_id, "name": fc.name,
             "content": "Sunny, 21 C"}]
    assert second.usage.input_tokens == n_rendered(hermes_srv, chat, tools=[CHAT_TOOL])
    # the shared prefix (the first turn's prompt) is served from the prefix cache
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_stream_function_call(hermes_srv):
    events = event_stream(hermes_srv, model="scripted-hermes", input=QUESTION, tools=[TOOL])
    types = [e.type for e in events]
    assert "response.reasoning_text.delta" in types
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["reasoning", "function_call"]
    assert [e.output_index for e in added] == [0, 1]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == args and done.item_id == added[1].item.id
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    final = events[-1]
    assert final.type == "response.completed"
    rs, fc = check_call_output(final.response)
    assert fc.arguments == args and rs.content[0].text == reasoning
    assert types.index("response.function_call_arguments.done") < len(types) - 2
    assert types[-2] == "response.output_item.done" and events[-2].item.type == "function_call"


def test_tool_choice(hermes_srv):
    cl = client(hermes_srv)
    r = cl.responses.create(model="scripted-hermes", input=QUESTION, tools=[TOOL],
                            tool_choice={"type": "function", "name": "get_weather"})
    assert r.output[-1].type == "function_call" and r.output[-1].name == "get_weather"
    assert json.loads(r.output[-1].arguments) == HERMES["tool_calls"][0]["arguments"]
    none = cl.responses.create(model="scripted-hermes", input=QUESTION, tools=[TOOL],
                               tool_choice="none")
    # tools are not offered and calls not parsed: the model's text comes back as a message
    assert "function_call" not in [o.type for o in none.output]
    assert "<tool_call>" in none.output_text
    assert none.usage.input_tokens == n_rendered(hermes_srv, [{"role": "user", "content": QUESTION}])


# ---- errors ----

def test_previous_response_id_refused(content_srv):
    with pytest.raises(openai.BadRequestError) as ei:
        client(content_srv).responses.create(model="scripted-content", input="Go on.",
                                             previous_response_id="resp_0123456789")
    assert ei.value.status_code == 400
    err = ei.value.body
    assert err["param"] == "previous_response_id" and err["type"] == "invalid_request_error"
    assert "stateless" in err["message"]


@pytest.mark.parametrize("kw,param", [
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
     "input[0].arguments"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content"),
])
def test_bad_requests(content_srv, kw, param):
    with pytest.raises(openai.BadRequestError) as ei:
        client(content_srv).responses.create(model="scripted-content", **kw)
    assert ei.value.body["param"] == param


def test_unknown_model(content_srv):
    with pytest.raises(openai.NotFoundError) as ei:
        client(content_srv).responses.create(model="gpt-5", input="x")
    assert ei.value.body["code"] == "model_not_found"


# ---- gpt-oss harmony: reasoning.effort reaches the template ----

def test_harmony_reasoning_effort(tandem_bin):
    """reasoning.effort is the template's reasoning_effort ("Reasoning: low" instead of the
    default medium): the prompt grows by what HF's rendering of the two scripted cases says;
    the analysis channel comes back as a reasoning item, the commentary call as a
    function_call."""
    cases = {n: case("scripted-harmony.gguf", n) for n in ("tools", "tools_effort_low")}
    # the date in the prompt changes both lengths alike: compare differences
    want = len(cases["tools_effort_low"]["prompt_ids"]) - len(cases["tools"]["prompt_ids"])
    parsed = cases["tools"]["parsed"]
    srv = ServeProcess(SCRIPTED / "scripted-harmony.gguf")
    try:
        cl = client(srv)

        def ask(**kw):
            r = cl.responses.create(model="scripted-harmony", input=QUESTION, tools=[TOOL],
                                    temperature=0, **kw)
            assert [o.type for o in r.output] == ["reasoning", "function_call"]
            assert r.output[0].content[0].text == parsed["reasoning_content"]
            assert json.loads(r.output[1].arguments) == parsed["tool_calls"][0]["arguments"]
            return r.usage.input_tokens

        base = ask()
        assert ask(reasoning={"effort": "medium"}) == base
        assert ask(reasoning={"effort": "low"}) - base == want != 0
    finally:
        srv.stop()
