"""The scripted tiny models in tests/fixtures/scripted (made by
tools/fixtures/make_scripted_models.py) driven through `tandem generate`, and the MiniMax-M2 and
gpt-oss harmony ones also through `tandem serve` with the official `openai` client (the
Hermes, Qwen3-Coder and content ones are served in test_serve.py).

Each model is a one-layer llama whose weights make the next token a function of the current one,
so through the chat template it deterministically writes a known assistant message (reasoning,
a Hermes JSON, Qwen3-Coder or MiniMax-M2 XML tool call, harmony messages, or plain content).
Oracles: scripted.json, whose prompt ids, generated text and ids the generator checked against
HF transformers (greedy generate on the same weights and the HF tokenizer + jinja rendering) and
llama.cpp, and whose `parsed` says what an OpenAI-compatible server returns.
"""
import hashlib
import json

import openai
import pytest

from conftest import FIXTURES, run_tandem
from serve_util import ServeProcess

DIR = FIXTURES / "scripted"
SCRIPTED = DIR / "scripted.json"


def load():
    return json.loads(SCRIPTED.read_text())


def cases():
    if not SCRIPTED.exists():
        return []
    return [pytest.param(m, c, id=f"{m['file'][:-5]}-{c['name']}") for m in load()["models"] for c in m["cases"]]


def generate(tmp_path, model, case, *extra):
    ids_out = tmp_path / "ids.json"
    args = ["generate", "--model", DIR / model["file"], "--chat", case["messages"][-1]["content"],
            "--max-tokens", "32", "--ids-out", ids_out, *extra]
    if case["template_kwargs"]:
        args += ["--template-kwargs", json.dumps(case["template_kwargs"])]
    proc = run_tandem(*args)
    return proc.stdout, json.loads(ids_out.read_text())


def test_files_match_manifest():
    doc = load()
    assert {p.name for p in DIR.iterdir()} == {m["file"] for m in doc["models"]} | {"scripted.json"}
    for m in doc["models"]:
        data = (DIR / m["file"]).read_bytes()
        assert len(data) == m["size_bytes"] and hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]
        assert len(data) < 1 << 20


def comparable_prompt(case, prompt_ids):
    """The prompt ids that do not depend on the day: gpt-oss's template writes today's date into
    its system message, the first message; from its <|end|> on the prompt is fixed."""
    if not case.get("date_dependent"):
        return prompt_ids
    end = load()["extended_tokenizer"]["control_tokens"]["<|end|>"]
    return prompt_ids[prompt_ids.index(end):]


@pytest.mark.parametrize("model,case", cases())
def test_greedy_script(tandem_bin, tmp_path, model, case):
    out, ids = generate(tmp_path, model, case, "--greedy")
    assert comparable_prompt(case, ids["prompt_ids"]) == comparable_prompt(case, case["prompt_ids"]), \
        "template rendering or tokenization differs from HF"
    assert ids["prompt_ids"][-1] == case["prompt_last_token"]["id"]
    assert ids["ids"] == case["ids"]
    assert ids["finish_reason"] == case["finish_reason"] == "stop"
    # the stop token (<|im_end|>, <|call|>, <|return|>) is not printed, nor are control tokens
    # (<|end|>) other than the four harmony ones always rendered; generate ends with a newline
    assert out == case.get("text_plain", case["text"]) + "\n"


@pytest.mark.parametrize("model,case", cases())
def test_sampling_follows_script(tandem_bin, tmp_path, model, case):
    # successor logit +20, every other token -10: ordinary sampling gives the script too
    out, ids = generate(tmp_path, model, case, "--temperature", "1.0", "--top-k", "0", "--seed", "7")
    assert ids["ids"] == case["ids"]
    assert out == case.get("text_plain", case["text"]) + "\n"


def test_ignore_eos_repeats_eos(tandem_bin, tmp_path):
    # every token that is not a state of the chain (<|im_end|> included) is followed by <|im_end|>
    doc = load()
    model = next(m for m in doc["models"] if m["file"] == "scripted-content.gguf")
    case = model["cases"][0]
    out, ids = generate(tmp_path, model, case, "--greedy", "--ignore-eos")
    eos = doc["special_ids"]["eos"]
    assert ids["ids"] == case["ids"] + [eos] * (32 - len(case["ids"]))
    assert ids["finish_reason"] == "length"
    assert out.startswith(case["text"])


# ---- MiniMax-M2 and gpt-oss harmony through the server ----

TOOL = load()["tool"] if SCRIPTED.exists() else None
HARMONY_MARKERS = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|constrain|>", "<|call|>",
                   "<|return|>")


def scripted_case(file, name):
    m = next(m for m in load()["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


class Reply:
    """One choice of a chat completion, whole or reassembled from its stream."""

    def __init__(self):
        self.content = ""
        self.reasoning = ""
        self.finish = None
        self.tool_calls = {}  # index -> {"id", "type", "name", "arguments"}
        self.usage = None
        self.n_chunks = 0


def _extra(obj, key):
    v = getattr(obj, key, None)
    if v is None and getattr(obj, "model_extra", None):
        v = obj.model_extra.get(key)
    return v


def ask(srv, model, messages, stream=False, **kw):
    cl = srv.client()
    g = Reply()
    if not stream:
        r = cl.chat.completions.create(model=model, messages=messages, **kw)
        c = r.choices[0]
        g.content = c.message.content
        g.reasoning = _extra(c.message, "reasoning_content") or ""
        g.finish = c.finish_reason
        g.usage = r.usage
        for i, tc in enumerate(c.message.tool_calls or []):
            g.tool_calls[i] = {"id": tc.id, "type": tc.type, "name": tc.function.name,
                               "arguments": tc.function.arguments}
        return g
    kw.setdefault("stream_options", {"include_usage": True})
    for ch in cl.chat.completions.create(model=model, messages=messages, stream=True, **kw):
        g.n_chunks += 1
        if ch.usage is not None:
            g.usage = ch.usage
        if not ch.choices:
            continue
        c = ch.choices[0]
        g.content += c.delta.content or ""
        g.reasoning += _extra(c.delta, "reasoning_content") or ""
        for tc in c.delta.tool_calls or []:
            slot = g.tool_calls.setdefault(tc.index, {"id": None, "type": None, "name": "",
                                                      "arguments": ""})
            if tc.id:
                assert slot["id"] in (None, tc.id), "a tool call's id changed mid-stream"
                slot["id"] = tc.id
            slot["type"] = tc.type or slot["type"]
            if tc.function is not None:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        if c.finish_reason is not None:
            assert g.finish is None, "two finish_reasons"
            g.finish = c.finish_reason
    return g


def check_parsed(g, parsed, exact_reasoning=None):
    """The reply against scripted.json's `parsed` (reasoning compared stripped there, exactly
    when given: the parsers keep the reasoning's text as written)."""
    calls = parsed["tool_calls"]
    assert g.finish == ("tool_calls" if calls else "stop")
    assert len(g.tool_calls) == len(calls)
    for i, want in enumerate(calls):
        tc = g.tool_calls[i]
        assert tc["name"] == want["name"]
        assert json.loads(tc["arguments"]) == want["arguments"]
        assert tc["id"] and tc["type"] == "function"
    assert (g.content or "") == parsed["content"]
    assert g.reasoning.strip() == parsed["reasoning_content"]
    if exact_reasoning is not None:
        assert g.reasoning == exact_reasoning


def serve_logged(file):
    """A server whose log says which output formats it chose (info level)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TANDEM_LOG_LEVEL", "info")
        return ServeProcess(DIR / file)


@pytest.fixture(scope="module")
def minimax(tandem_bin):
    srv = serve_logged("scripted-minimax.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def harmony(tandem_bin):
    srv = serve_logged("scripted-harmony.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def harmony_final(tandem_bin):
    srv = ServeProcess(DIR / "scripted-harmony-final.gguf")
    yield srv
    srv.stop()


def test_formats_chosen_from_templates(minimax, harmony):
    """--tool-parser auto reads the format off the chat template; the log says which."""
    log = minimax.stderr()
    assert "tool calls: minimax_m2" in log and "reasoning parser: on" in log
    log = harmony.stderr()
    assert "tool calls: harmony" in log and "reasoning parser: harmony" in log


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_minimax_tool_call(minimax, stream):
    """The prompt opens <think>: the reasoning is split off without an opening tag, the call's
    typed parameters are converted by the tool's schema (days: integer 3)."""
    case = scripted_case("scripted-minimax.gguf", "think_tools")
    g = ask(minimax, "scripted-minimax", case["messages"], stream=stream, tools=[TOOL],
            max_tokens=32, temperature=0)
    assert g.usage.prompt_tokens == len(case["prompt_ids"])
    check_parsed(g, case["parsed"], exact_reasoning=case["text"].split("</think>", 1)[0])
    if not stream:
        assert g.content is None or g.content == ""


def test_minimax_types_from_schema(minimax):
    case = scripted_case("scripted-minimax.gguf", "think_tools")
    tool = json.loads(json.dumps(TOOL))
    tool["function"]["parameters"]["properties"]["days"]["type"] = "string"
    g = ask(minimax, "scripted-minimax", case["messages"], tools=[tool], max_tokens=32,
            temperature=0)
    assert g.finish == "tool_calls"
    assert json.loads(g.tool_calls[0]["arguments"]) == {"city": "Paris", "days": "3"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_minimax_without_tools(minimax, stream):
    """No tools offered: the call is not parsed and stays content; the reasoning is still split."""
    case = scripted_case("scripted-minimax.gguf", "think")
    g = ask(minimax, "scripted-minimax", case["messages"], stream=stream, max_tokens=32,
            temperature=0)
    check_parsed(g, case["parsed"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_minimax_named_tool_choice(minimax, stream):
    """A named function: the server closes the reasoning and writes the start of the call; the
    model (its script goes on from the <invoke> line) completes it."""
    case = scripted_case("scripted-minimax.gguf", "think_tools")
    g = ask(minimax, "scripted-minimax", case["messages"], stream=stream, tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32,
            temperature=0)
    assert g.finish == "tool_calls", g.content
    assert g.tool_calls[0]["name"] == "get_weather"
    assert json.loads(g.tool_calls[0]["arguments"]) == {"city": "Paris", "days": 3}
    assert (g.content or "") == "" and g.reasoning == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_harmony_tool_call(harmony, stream):
    """analysis -> reasoning_content, the commentary message to=functions.get_weather -> a call;
    <|end|> (a control token) must reach the parser and no marker reaches the client."""
    case = scripted_case("scripted-harmony.gguf", "tools")
    g = ask(harmony, "scripted-harmony", case["messages"], stream=stream, tools=[TOOL],
            max_tokens=32, temperature=0)
    check_parsed(g, case["parsed"], exact_reasoning=case["parsed"]["reasoning_content"])
    for m in HARMONY_MARKERS:
        assert m not in g.reasoning and m not in (g.content or "")
    if not stream:
        assert g.content is None or g.content == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_harmony_without_tools(harmony, stream):
    """No tools: the call message is not understood and is given back as written."""
    case = scripted_case("scripted-harmony.gguf", "plain")
    g = ask(harmony, "scripted-harmony", case["messages"], stream=stream, max_tokens=32,
            temperature=0)
    check_parsed(g, case["parsed"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_harmony_final(harmony_final, stream):
    """analysis then final, ended by <|return|> (a stop token): reasoning and content."""
    case = scripted_case("scripted-harmony-final.gguf", "plain")
    g = ask(harmony_final, "scripted-harmony-final", case["messages"], stream=stream,
            max_tokens=32, temperature=0)
    check_parsed(g, case["parsed"], exact_reasoning=case["parsed"]["reasoning_content"])
    for m in HARMONY_MARKERS:
        assert m not in g.reasoning and m not in g.content


def test_harmony_skip_special_tokens_false(harmony_final):
    """skip_special_tokens false changes nothing for harmony: the parser eats the markers."""
    case = scripted_case("scripted-harmony-final.gguf", "plain")
    g = ask(harmony_final, "scripted-harmony-final", case["messages"], max_tokens=32,
            temperature=0, extra_body={"skip_special_tokens": False})
    check_parsed(g, case["parsed"])


def test_harmony_reasoning_effort(harmony):
    """reasoning_effort reaches the template ("Reasoning: low" instead of the default medium);
    chat_template_kwargs override it; a value OpenAI does not know is refused."""
    cases = {n: scripted_case("scripted-harmony.gguf", n) for n in ("tools", "tools_effort_low")}
    # the date in the prompt changes both lengths alike: compare differences
    want = len(cases["tools_effort_low"]["prompt_ids"]) - len(cases["tools"]["prompt_ids"])
    assert want != 0
    msgs = cases["tools"]["messages"]

    def n_prompt(**kw):
        g = ask(harmony, "scripted-harmony", msgs, tools=[TOOL], max_tokens=32, temperature=0, **kw)
        check_parsed(g, cases["tools"]["parsed"])
        return g.usage.prompt_tokens

    base = n_prompt()
    assert n_prompt(reasoning_effort="medium") == base
    assert n_prompt(reasoning_effort="low") - base == want
    assert n_prompt(reasoning_effort="low",
                    extra_body={"chat_template_kwargs": {"reasoning_effort": "medium"}}) == base
    with pytest.raises(openai.BadRequestError) as ei:
        harmony.client().chat.completions.create(model="scripted-harmony", messages=msgs,
                                                 max_tokens=4, reasoning_effort="extreme")
    assert ei.value.status_code == 400 and ei.value.param == "reasoning_effort"


def test_harmony_tool_result_turn(harmony):
    """A second turn: the assistant's call (with its reasoning_content, which the gpt-oss
    template wants as `thinking` before the call) and the tool's result render, and the model
    answers with its script again."""
    case = scripted_case("scripted-harmony.gguf", "tools")
    first = ask(harmony, "scripted-harmony", case["messages"], tools=[TOOL], max_tokens=32,
                temperature=0)
    tc = first.tool_calls[0]
    call = {"id": tc["id"], "type": "function",
            "function": {"name": tc["name"], "arguments": tc["arguments"]}}
    tool_msg = {"role": "tool", "tool_call_id": tc["id"], "content": "sunny, 21 C"}
    with_reasoning = case["messages"] + [
        {"role": "assistant", "content": None, "reasoning_content": first.reasoning,
         "tool_calls": [call]}, tool_msg]
    without = case["messages"] + [{"role": "assistant", "content": None, "tool_calls": [call]},
                                   tool_msg]
    g = ask(harmony, "scripted-harmony", with_reasoning, tools=[TOOL], max_tokens=32,
            temperature=0)
    check_parsed(g, case["parsed"])
    h = ask(harmony, "scripted-harmony", without, tools=[TOOL], max_tokens=32, temperature=0)
    check_parsed(h, case["parsed"])
    # the reasoning was rendered (as an analysis message) only where it was sent
    assert g.usage.prompt_tokens > h.usage.prompt_tokens > first.usage.prompt_tokens


# ---- Mistral (Devstral) through the server ----

@pytest.fixture(scope="module")
def mistral(tandem_bin):
    srv = serve_logged("scripted-mistral.gguf")
    yield srv
    srv.stop()


WEATHER_ARGS = '{"city":"Paris","days":3}'  # the arguments as the server returns them (compact)


def test_mistral_format_chosen(mistral):
    """[TOOL_CALLS] in the template picks the mistral parser; the template has no <think>."""
    log = mistral.stderr()
    assert "tool calls: mistral" in log and "reasoning parser: off" in log


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_mistral_tool_call(mistral, stream):
    """Devstral's shape, [TOOL_CALLS]get_weather[ARGS]{...}: the two control tokens reach the
    parser (rendered for it although skip_special_tokens is on) and neither reaches the
    client; tokenizer v13 writes no call id, so the server makes one up."""
    case = scripted_case("scripted-mistral.gguf", "tools")
    g = ask(mistral, "scripted-mistral", case["messages"], stream=stream, tools=[TOOL],
            max_tokens=32, temperature=0)
    assert g.usage.prompt_tokens == len(case["prompt_ids"])
    check_parsed(g, case["parsed"])
    assert g.tool_calls[0]["arguments"] == WEATHER_ARGS
    assert g.tool_calls[0]["id"].startswith("call_")
    if not stream:
        assert g.content is None or g.content == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("choice", ["none", "no_tools"])
def test_mistral_without_tools(mistral, stream, choice):
    """No tools offered (or tool_choice none): nothing is parsed and the control tokens are not
    rendered (skip_special_tokens), so the name and the JSON are content."""
    case = scripted_case("scripted-mistral.gguf", "plain")
    kw = {"tools": [TOOL], "tool_choice": "none"} if choice == "none" else {}
    g = ask(mistral, "scripted-mistral", case["messages"], stream=stream, max_tokens=32,
            temperature=0, **kw)
    check_parsed(g, case["parsed"])
    assert g.usage.prompt_tokens == len(case["prompt_ids"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_mistral_forced_call(mistral, stream, choice):
    """tool_choice required ("[TOOL_CALLS]" written after [/INST]) and a named function
    ("[TOOL_CALLS]get_weather[ARGS]"): the model completes the call."""
    case = scripted_case("scripted-mistral.gguf", "tools")
    tc = "required" if choice == "required" else {"type": "function",
                                                  "function": {"name": "get_weather"}}
    g = ask(mistral, "scripted-mistral", case["messages"], stream=stream, tools=[TOOL],
            tool_choice=tc, max_tokens=32, temperature=0)
    check_parsed(g, case["parsed"])
    assert g.tool_calls[0]["arguments"] == WEATHER_ARGS
    # the forced prefix is part of the prompt: one token for required, three for named
    assert g.usage.prompt_tokens == len(case["prompt_ids"]) + (1 if choice == "required" else 3)


def test_mistral_skip_special_tokens_false(mistral):
    """skip_special_tokens false changes nothing when calls are parsed."""
    case = scripted_case("scripted-mistral.gguf", "tools")
    g = ask(mistral, "scripted-mistral", case["messages"], tools=[TOOL], max_tokens=32,
            temperature=0, extra_body={"skip_special_tokens": False})
    check_parsed(g, case["parsed"])


def test_mistral_tool_result_turn(mistral):
    """A second turn: the assistant's call and the tool's result render through the v13
    template ([TOOL_CALLS]NAME[ARGS]{...}</s>[TOOL_RESULTS]...[/TOOL_RESULTS]); the script has
    nothing to say after [/TOOL_RESULTS], so the answer is empty."""
    case = scripted_case("scripted-mistral.gguf", "tools")
    first = ask(mistral, "scripted-mistral", case["messages"], tools=[TOOL], max_tokens=32,
                temperature=0)
    tc = first.tool_calls[0]
    msgs = case["messages"] + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": tc["id"], "type": "function",
                         "function": {"name": tc["name"], "arguments": tc["arguments"]}}]},
        {"role": "tool", "tool_call_id": tc["id"], "content": "sunny, 21 C"}]
    g = ask(mistral, "scripted-mistral", msgs, tools=[TOOL], max_tokens=32, temperature=0)
    assert g.finish == "stop" and not g.tool_calls
    assert (g.content or "") == ""
    assert g.usage.prompt_tokens > first.usage.prompt_tokens
