"""The official `anthropic` SDK against POST /v1/messages and /v1/messages/count_tokens.

The servers run the scripted tiny models of tests/fixtures/scripted: whatever they are asked,
they write a known assistant message (plain text; or Hermes-format reasoning and a tool call),
so replies are exact. Oracles: scripted.json (prompt ids from HF transformers' tokenizer and
jinja rendering, the generated text, and `parsed`, what an OpenAI-compatible server returns),
Python jinja2 rendering of the GGUF's own template for conversations with history, and the
SDK itself: its stream accumulator must rebuild the same message as the non-streamed reply,
and its exception classes come from the HTTP status and Anthropic's error shape.
"""
import json

import anthropic
import httpx2 as httpx
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import SCRIPTED
from serve_util import ServeProcess, read_gguf_kv

DOC = json.loads((SCRIPTED / "scripted.json").read_text())
QUESTION = DOC["question"]
TOOL_FN = DOC["tool"]["function"]
# the chat tool in Anthropic's shape
TOOL = {"name": TOOL_FN["name"], "description": TOOL_FN["description"],
        "input_schema": TOOL_FN["parameters"]}
KEY = "sk-ant-test-key"


def case(file, name):
    m = next(m for m in DOC["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


def client(srv, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 120)
    kw.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=srv.url, **kw)


@pytest.fixture(scope="module")
def content_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-content.gguf", api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hermes_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED / "scripted-hermes.gguf")
    yield srv
    srv.stop()


def total_input(usage):
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


# ---- text ----

def test_create_text(content_srv):
    c = case("scripted-content.gguf", "think")
    cl = client(content_srv)
    msg = cl.messages.create(model="scripted-content", max_tokens=64,
                             messages=[{"role": "user", "content": QUESTION}],
                             metadata={"user_id": "u1"},
                             # sampling parameters this SDK no longer names, as Claude Code sends
                             extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40})
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.model == "scripted-content"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == c["parsed"]["content"]
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    # the prompt as HF tokenizes it, split between computed and prefix-cache tokens
    assert total_input(msg.usage) == len(c["prompt_ids"])
    assert msg.usage.cache_creation_input_tokens == 0
    # the generated ids minus the end-of-turn token
    assert msg.usage.output_tokens == len(c["ids"])


def test_stream_helpers_rebuild_the_message(content_srv):
    c = case("scripted-content.gguf", "think")
    cl = client(content_srv)
    kw = dict(model="scripted-content", max_tokens=64,
              messages=[{"role": "user", "content": QUESTION}])
    with cl.messages.stream(**kw) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, "the text came in one piece: not streamed"
    assert "".join(pieces) == c["parsed"]["content"]
    whole = cl.messages.create(**kw)
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert total_input(final.usage) == total_input(whole.usage) == len(c["prompt_ids"])
    assert final.usage.output_tokens == whole.usage.output_tokens


def sse_events(srv, body, headers=None):
    """(event name, data) pairs of a raw streamed /v1/messages response."""
    h = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    h.update(headers or {})
    events = []
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, headers=h, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name, "an event's name and its data's type differ"
                events.append((name, data))
                name = None
    return events


def check_sequence(events):
    """Anthropic's grammar: message_start, then blocks (start, deltas, stop) with consecutive
    indices, then message_delta and message_stop; pings anywhere after message_start."""
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[0][0] == "message_start"
    open_index, next_index = None, 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index, next_index = None, next_index + 1
        else:
            assert name == "ping", name
    assert open_index is None


def test_stream_event_sequence(content_srv):
    events = sse_events(content_srv, {"model": "scripted-content", "max_tokens": 64,
                                      "stream": True,
                                      "messages": [{"role": "user", "content": QUESTION}]})
    check_sequence(events)
    assert any(n == "ping" for n, _ in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"}
    md = events[-2][1]
    assert md["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert set(md["usage"]) >= {"input_tokens", "output_tokens", "cache_read_input_tokens",
                                "cache_creation_input_tokens"}


def test_stop_sequence(content_srv):
    sc = DOC["stop_string_case"]
    stop = sc["stop"][0]
    cl = client(content_srv)
    kw = dict(model="scripted-content", max_tokens=64, stop_sequences=["never", stop],
              messages=[{"role": "user", "content": QUESTION}])
    msg = cl.messages.create(**kw)
    assert msg.content[0].text == sc["text"]
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    with cl.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == sc["text"] and final.stop_sequence == stop
    assert final.stop_reason == "stop_sequence"


def test_max_tokens(content_srv):
    cl = client(content_srv)
    msg = cl.messages.create(model="scripted-content", max_tokens=3,
                             messages=[{"role": "user", "content": QUESTION}])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3
    full = case("scripted-content.gguf", "think")["parsed"]["content"]
    assert full.startswith(msg.content[0].text) and len(msg.content[0].text) < len(full)


def test_assistant_prefill_is_continued(content_srv):
    """A final assistant message is a prefill: the reply is the rest of the scripted text, and
    the prompt is HF's prompt ids plus the prefill's tokens."""
    c = case("scripted-content.gguf", "think")
    full, head = c["parsed"]["content"], "Hello from"
    cl = client(content_srv)
    msgs = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": head}]
    msg = cl.messages.create(model="scripted-content", max_tokens=64, messages=msgs)
    assert head + msg.content[0].text == full
    n = cl.messages.count_tokens(model="scripted-content", messages=msgs).input_tokens
    assert n == len(c["prompt_ids"]) + len(content_srv.tokenize(head, add_special_tokens=False)
                                           ["tokens"])
    assert total_input(msg.usage) == n


# ---- counting and the prefix cache ----

def test_count_tokens_matches_hf_and_usage(content_srv):
    c = case("scripted-content.gguf", "think")
    cl = client(content_srv)
    msgs = [{"role": "user", "content": QUESTION}]
    n = cl.messages.count_tokens(model="scripted-content", messages=msgs).input_tokens
    assert n == len(c["prompt_ids"])
    msg = cl.messages.create(model="scripted-content", max_tokens=8, messages=msgs)
    assert total_input(msg.usage) == n


def test_repeated_long_prompt_reads_the_cache(content_srv):
    cl = client(content_srv)
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly." for i in
                                                       range(120))
    kw = dict(model="scripted-content", max_tokens=4, system=system,
              messages=[{"role": "user", "content": QUESTION}])
    n = cl.messages.count_tokens(model="scripted-content", system=system,
                                 messages=kw["messages"]).input_tokens
    assert n > 600
    first = cl.messages.create(**kw)
    second = cl.messages.create(**kw)
    assert total_input(first.usage) == total_input(second.usage) == n
    # everything but the block the last prompt token sits in comes from the cache
    assert second.usage.cache_read_input_tokens > n - 64
    assert second.usage.input_tokens == n - second.usage.cache_read_input_tokens
    with cl.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == second.usage.cache_read_input_tokens


def test_system_blocks_equal_system_string(content_srv):
    cl = client(content_srv)
    msgs = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    as_blocks = cl.messages.count_tokens(
        model="scripted-content", messages=msgs,
        system=[{"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}])
    as_string = cl.messages.count_tokens(model="scripted-content", messages=msgs,
                                         system="Be brief.\nBe kind.")
    assert as_blocks.input_tokens == as_string.input_tokens


# ---- errors ----

def test_errors_raise_the_sdk_exceptions(content_srv):
    cl = client(content_srv)
    msgs = [{"role": "user", "content": QUESTION}]
    with pytest.raises(anthropic.BadRequestError) as e:
        cl.post("/v1/messages", body={"model": "scripted-content", "messages": msgs},
                cast_to=httpx.Response)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(content_srv, api_key="wrong").messages.create(model="scripted-content",
                                                             max_tokens=8, messages=msgs)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        cl.messages.create(model="no-such-model", max_tokens=8, messages=msgs)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        cl.messages.count_tokens(model="no-such-model", messages=msgs)
    with pytest.raises(anthropic.BadRequestError) as e:
        cl.messages.create(model="scripted-content", max_tokens=8,
                           messages=[{"role": "system", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        cl.messages.create(model="scripted-content", max_tokens=8, messages=msgs,
                           extra_body={"temperature": 1.5})
    with pytest.raises(anthropic.BadRequestError) as e:
        cl.messages.create(model="scripted-content", max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    assert "image" in e.value.body["error"]["message"]
    # a prompt beyond the context: Anthropic's wording, which Claude Code compacts on
    with pytest.raises(anthropic.BadRequestError) as e:
        cl.messages.create(model="scripted-content", max_tokens=8,
                           messages=[{"role": "user", "content": "word " * 5000}])
    assert e.value.body["error"]["message"].startswith("prompt is too long: ")


def test_raw_errors_have_anthropics_shape(content_srv):
    h = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    for body, status, etype in [(b'{"model": "scripted-content", "max_tokens": ', 400,
                                 "invalid_request_error"),
                                (b"[]", 400, "invalid_request_error")]:
        st, _, data = content_srv.raw("POST", "/v1/messages", body, headers=h)
        assert st == status
        doc = json.loads(data)
        assert doc["type"] == "error" and doc["error"]["type"] == etype and doc["error"]["message"]
    r = httpx.post(content_srv.url + "/v1/messages/count_tokens", content=b"{", timeout=30,
                   headers={"content-type": "application/json"})  # no key
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    # Authorization: Bearer works as well as x-api-key (the SDK's auth_token)
    cl = anthropic.Anthropic(base_url=content_srv.url, api_key=None, auth_token=KEY,
                             max_retries=0)
    assert cl.messages.count_tokens(model="scripted-content",
                                    messages=[{"role": "user", "content": "hi"}]).input_tokens > 0


# ---- thinking and tools (Hermes-format scripted model) ----

def hf_render(source, messages, **extra):
    """A chat template rendered by jinja2 configured as transformers configures it (its
    tojson keeps key order and does not escape HTML)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, **extra)


def tool_messages_oracle(srv, openai_messages, tools=None, **kw):
    """The prompt's length by jinja2 rendering of the GGUF's template and the server's
    tokenizer (itself checked against HF's in tests/python)."""
    tpl = read_gguf_kv(srv.model)["tokenizer.chat_template"]
    extra = {"tools": tools} if tools else {}
    text = hf_render(tpl, openai_messages, **extra, **kw)
    return len(srv.tokenize(text, add_special_tokens=False)["tokens"])


def test_thinking_switch_reaches_the_template(hermes_srv):
    cl = client(hermes_srv)
    msgs = [{"role": "user", "content": QUESTION}]
    on = cl.messages.count_tokens(model="scripted-hermes", messages=msgs,
                                  thinking={"type": "enabled", "budget_tokens": 2048})
    off = cl.messages.count_tokens(model="scripted-hermes", messages=msgs,
                                   thinking={"type": "disabled"})
    assert on.input_tokens == len(case("scripted-hermes.gguf", "think")["prompt_ids"])
    assert off.input_tokens == len(case("scripted-hermes.gguf", "no_think")["prompt_ids"])
    with pytest.raises(anthropic.BadRequestError):  # Anthropic: budget_tokens < max_tokens
        cl.messages.create(model="scripted-hermes", max_tokens=1500, messages=msgs,
                           thinking={"type": "enabled", "budget_tokens": 2048})


def check_tool_reply(msg, parsed):
    assert [b.type for b in msg.content] == ["thinking", "tool_use"]
    th, tu = msg.content
    assert th.thinking.strip() == parsed["reasoning_content"] and th.signature
    want = parsed["tool_calls"][0]
    assert tu.name == want["name"] and tu.input == want["arguments"]
    assert tu.id.startswith("toolu_")
    assert msg.stop_reason == "tool_use"


def test_tool_use_round_trip(hermes_srv):
    c = case("scripted-hermes.gguf", "think_tools")
    cl = client(hermes_srv)
    msgs = [{"role": "user", "content": QUESTION}]
    kw = dict(model="scripted-hermes", max_tokens=2048, tools=[TOOL],
              thinking={"type": "enabled", "budget_tokens": 1024})
    msg = cl.messages.create(messages=msgs, **kw)
    check_tool_reply(msg, c["parsed"])
    assert total_input(msg.usage) == len(c["prompt_ids"])
    assert cl.messages.count_tokens(model="scripted-hermes", messages=msgs, tools=[TOOL],
                                    thinking=kw["thinking"]).input_tokens == len(c["prompt_ids"])
    # the same through the stream helpers: input_json_delta rebuilt into the input
    with cl.messages.stream(messages=msgs, **kw) as stream:
        kinds = [ev.delta.type for ev in stream if ev.type == "content_block_delta"]
        final = stream.get_final_message()
    assert {"thinking_delta", "signature_delta", "input_json_delta"} <= set(kinds)
    check_tool_reply(final, c["parsed"])

    # round trip: the assistant turn sent back as it came, then the tool's result
    tu = msg.content[1]
    history = msgs + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tu.id,
             "content": [{"type": "text", "text": "Sunny, 24 C"}]},
            {"type": "text", "text": "And tomorrow?"}]}]
    again = cl.messages.create(messages=history, **kw)
    check_tool_reply(again, c["parsed"])  # the script does not read its prompt
    oai = msgs + [
        {"role": "assistant", "content": "",
         "reasoning_content": msg.content[0].thinking,
         "tool_calls": [{"id": tu.id, "type": "function",
                         "function": {"name": tu.name, "arguments": tu.input}}]},
        {"role": "tool", "tool_call_id": tu.id, "name": tu.name, "content": "Sunny, 24 C"},
        {"role": "user", "content": "And tomorrow?"}]
    n = cl.messages.count_tokens(model="scripted-hermes", messages=history, tools=[TOOL],
                                 thinking=kw["thinking"]).input_tokens
    assert n == tool_messages_oracle(hermes_srv, oai, tools=[DOC["tool"]], enable_thinking=True)
    assert total_input(again.usage) == n


def test_tool_choice(hermes_srv):
    """tool_choice any / tool force a call as the chat API's "required" / named function do
    (the same text appended to the prompt: the counts agree with the chat API's prompt); none
    leaves the tools out, so the scripted call comes back as text."""
    cl = client(hermes_srv)
    msgs = [{"role": "user", "content": QUESTION}]
    oai = hermes_srv.client()
    for choice, chat_choice in [({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
                                ({"type": "tool", "name": "get_weather"},
                                 {"type": "function", "function": {"name": "get_weather"}}),
                                ({"type": "none"}, "none")]:
        n = cl.messages.count_tokens(model="scripted-hermes", tools=[TOOL], tool_choice=choice,
                                     messages=msgs).input_tokens
        chat = oai.chat.completions.create(model="scripted-hermes", messages=msgs, max_tokens=1,
                                           tools=[DOC["tool"]], tool_choice=chat_choice)
        assert n == chat.usage.prompt_tokens, choice
        msg = cl.messages.create(model="scripted-hermes", max_tokens=64, tools=[TOOL],
                                 tool_choice=choice, messages=msgs)
        assert total_input(msg.usage) == n
    assert all(b.type != "tool_use" for b in msg.content)
    assert msg.stop_reason == "end_turn"
    assert "<tool_call>" in "".join(b.text for b in msg.content if b.type == "text")
    with pytest.raises(anthropic.BadRequestError):
        cl.messages.create(model="scripted-hermes", max_tokens=16, tools=[TOOL], messages=msgs,
                           tool_choice={"type": "tool", "name": "other"})


# ---- every output format through the Messages API ----

@pytest.fixture(scope="module")
def servers(tandem_bin):
    """Servers of the scripted models, started on first use."""
    running = {}

    def get(file):
        if file not in running:
            running[file] = ServeProcess(SCRIPTED / file)
        return running[file]

    yield get
    for srv in running.values():
        srv.stop()


def parsed_cases():
    return [pytest.param(m["file"], c, id=f"{m['file'][:-5]}-{c['name']}")
            for m in DOC["models"] for c in m["cases"] if c.get("parsed")]


def request_of(c):
    """The Messages request for a scripted case: its template kwargs in Anthropic's terms."""
    kw = dict(messages=[{"role": "user", "content": QUESTION}])
    tk = c["template_kwargs"]
    if "tools" in tk:
        kw["tools"] = [TOOL]
    if tk.get("enable_thinking") is False:
        kw["thinking"] = {"type": "disabled"}
    if "reasoning_effort" in tk:
        kw["output_config"] = {"effort": tk["reasoning_effort"]}
    assert set(tk) <= {"tools", "enable_thinking", "reasoning_effort"}
    return kw


def check_blocks(msg, parsed):
    calls = parsed["tool_calls"]
    want = (["thinking"] if parsed["reasoning_content"] else []) + \
        (["text"] if parsed["content"] else []) + ["tool_use"] * len(calls)
    assert [b.type for b in msg.content] == want
    assert "".join(b.thinking for b in msg.content if b.type == "thinking").strip() == \
        parsed["reasoning_content"]
    assert "".join(b.text for b in msg.content if b.type == "text") == parsed["content"]
    uses = [b for b in msg.content if b.type == "tool_use"]
    for u, w in zip(uses, calls):
        assert u.name == w["name"] and u.input == w["arguments"] and u.id
    assert msg.stop_reason == ("tool_use" if calls else "end_turn")


@pytest.mark.parametrize("file,c", parsed_cases())
def test_output_formats(servers, file, c):
    """Hermes, Qwen3-Coder, MiniMax-M2, harmony and Mistral output read by the chat API's
    parsers into blocks, whole and streamed; calls the request did not offer tools for (or
    cannot be read) stay text, markers included."""
    srv = servers(file)
    cl = client(srv)
    model = file[:-5]
    kw = request_of(c)
    msg = cl.messages.create(model=model, max_tokens=256, **kw)
    check_blocks(msg, c["parsed"])
    with cl.messages.stream(model=model, max_tokens=256, **kw) as stream:
        final = stream.get_final_message()
    check_blocks(final, c["parsed"])
    if not c.get("date_dependent"):  # gpt-oss writes today's date into its prompt
        assert total_input(msg.usage) == len(c["prompt_ids"])
        assert cl.messages.count_tokens(model=model, **kw).input_tokens == len(c["prompt_ids"])


# ---- keep-alive during a long prefill ----

def test_pings_during_long_prefill(default_model, tandem_bin):
    """A prompt that takes a while to prefill (SmolLM2, ~800 tokens in 16-token steps):
    message_start goes out after --keepalive, then ping events, all before the first token's
    block; the final usage still has the whole prompt."""
    srv = ServeProcess(default_model, "--keepalive", "0.02", "--batch", "16")
    try:
        system = " ".join(f"Line {i}: the quick brown fox." for i in range(80))
        body = {"model": default_model.name[:-5], "max_tokens": 2, "stream": True,
                "system": system, "messages": [{"role": "user", "content": "Say hi."}]}
        events = sse_events(srv, body)
        check_sequence(events)
        first_block = next(i for i, (n, _) in enumerate(events) if n == "content_block_start")
        assert sum(n == "ping" for n, _ in events[1:first_block]) >= 2
        usage = events[-2][1]["usage"]
        n = client(srv, api_key="none").messages.count_tokens(
            model=body["model"], system=system, messages=body["messages"]).input_tokens
        assert n > 500
        assert usage["input_tokens"] + usage["cache_read_input_tokens"] == n
    finally:
        srv.stop()


# ---- a Claude Code-shaped session ----

def claude_code_tools():
    """Tool definitions in the shape Claude Code sends (JSON Schema draft-07 with $schema and
    additionalProperties, MCP-style names), plus the scripted model's tool."""
    def tool(name, desc, props, required):
        return {"name": name, "description": desc, "input_schema": {
            "type": "object", "properties": props, "required": required,
            "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}
    return [
        tool("Bash", "Executes a given bash command in a persistent shell session.",
             {"command": {"type": "string", "description": "The command to execute"},
              "timeout": {"type": "number", "description": "Optional timeout in milliseconds"}},
             ["command"]),
        tool("Read", "Reads a file from the local filesystem.",
             {"file_path": {"type": "string"}, "offset": {"type": "number"},
              "limit": {"type": "number"}}, ["file_path"]),
        tool("TodoWrite", "Create and manage a structured task list.",
             {"todos": {"type": "array", "items": {"type": "object", "properties": {
                 "content": {"type": "string", "minLength": 1},
                 "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}},
                 "required": ["content", "status"], "additionalProperties": False}}},
             ["todos"]),
        tool("mcp__ide__getDiagnostics", "Get language diagnostics from VS Code",
             {"uri": {"type": "string"}}, []),
        TOOL,
    ]


def test_claude_code_shaped_session(hermes_srv):
    """Two turns as Claude Code sends them: system blocks (a billing header line, cache_control),
    system-reminder text blocks, its tool schemas, max_tokens beyond the context, thinking with
    a 31999-token budget, metadata.user_id, stream; the second turn carries the thinking and
    tool_use blocks back with an is_error tool_result, and reads the shared prefix from the
    cache."""
    cl = client(hermes_srv)
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.14; cc_entrypoint=cli"},
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "You are an interactive CLI tool that helps users with software "
         "engineering tasks. " * 20, "cache_control": {"type": "ephemeral"}}]
    user = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can "
         "use the following context: today's date is 2026-12-06.\n</system-reminder>"},
        {"type": "text", "text": QUESTION, "cache_control": {"type": "ephemeral"}}]}
    kw = dict(model="scripted-hermes", max_tokens=32000, system=system, tools=claude_code_tools(),
              thinking={"type": "enabled", "budget_tokens": 31999},
              metadata={"user_id": "user_0123_account__session_4567"},
              extra_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
              extra_query={"beta": "true"})
    with cl.messages.stream(messages=[user], **kw) as stream:
        first = stream.get_final_message()
    parsed = case("scripted-hermes.gguf", "think_tools")["parsed"]
    check_tool_reply(first, parsed)
    tu = first.content[1]
    second_msgs = [user,
                   {"role": "assistant",
                    "content": [b.model_dump(exclude_none=True) for b in first.content]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": tu.id, "is_error": True,
                        "content": "Error: the weather service is unreachable"},
                       # Read on a picture: an image in a tool result is noted, not refused
                       {"type": "tool_result", "tool_use_id": "toolu_read_1", "content": [
                           {"type": "text", "text": "map.png"},
                           {"type": "image", "source": {"type": "base64",
                                                        "media_type": "image/png",
                                                        "data": "iVBORw0KGgo="}}]}]}]
    with cl.messages.stream(messages=second_msgs, **kw) as stream:
        second = stream.get_final_message()
    check_tool_reply(second, parsed)
    n = cl.messages.count_tokens(model="scripted-hermes", system=system, tools=kw["tools"],
                                 thinking=kw["thinking"], messages=second_msgs).input_tokens
    assert total_input(second.usage) == n
    # the system prompt and tool schemas (well over 1000 tokens) come from the cache
    assert second.usage.cache_read_input_tokens > 1000
