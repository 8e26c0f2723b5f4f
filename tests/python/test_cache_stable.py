"""--cache-stable-prompts (issue 18, item 4): prefix-cache hit rates of recorded-shape agent
sessions with the normalisation off and on.

The sessions (made by tools/fixtures/make_agent_sessions.py) are the 15 requests (5 user
turns of 2 tool calls and an answer) of a Claude Code session (Messages API: a billing line with a new
nonce in every request's system prompt, context reminders kept in place) and of an OpenCode
session (chat API: a <system-reminder> that rides on the newest user message only). Each is
sent in order to a fresh server (tiny llama fixture, whose template renders tools, 32K
context) and the hit rate of requests 2-15 is cached prompt tokens / prompt tokens from the
responses' usage (the figures are printed; docs/serving.md has them).

Also: a request whose tools arrive with their keys in another order and other whitespace hits
the prefix of the first request with the flag on, and misses it without.
"""
import importlib.util
import json
import random

import pytest

from conftest import FIXTURES, SOURCE_DIR
from serve_util import ServeProcess

MODEL = FIXTURES / "models" / "llama-a-f32.gguf"


def _sessions():
    """the generator's sessions (deterministic; not committed: they are 400 KB of JSON)"""
    path = SOURCE_DIR / "tools" / "fixtures" / "make_agent_sessions.py"
    spec = importlib.util.spec_from_file_location("make_agent_sessions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"claude_code": mod.claude_code(random.Random(1)),
            "opencode": mod.opencode(random.Random(2))}


def _server(stable):
    args = ["--ctx-size", "32768", "--threads", "1"]
    if stable:
        args.append("--cache-stable-prompts")
    return ServeProcess(MODEL, *args, threads=None)


def _replay(srv, session):
    """(prompt tokens, cached tokens) of every request, in order"""
    path = "/v1/messages" if session["api"] == "messages" else "/v1/chat/completions"
    out = []
    for body in session["requests"]:
        body = dict(body, model="llama-a-f32")
        r = srv.post(path, body)
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        if session["api"] == "messages":
            cached = u["cache_read_input_tokens"]
            out.append((u["input_tokens"] + cached, cached))
        else:
            out.append((u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"]))
    return out


def _hit_rate(counts):
    later = counts[1:]
    return sum(c for _, c in later) / sum(p for p, _ in later)


@pytest.fixture(scope="module")
def rates():
    res = {}
    sessions = _sessions()
    for stable in (False, True):
        srv = _server(stable)
        try:
            for name in ("claude_code", "opencode"):
                session = sessions[name]
                srv.post("/v1/chat/completions",  # a cold cache for each session
                         {"model": "llama-a-f32", "max_tokens": 1,
                          "messages": [{"role": "user", "content": name}]})
                counts = _replay(srv, session)
                res[(name, stable)] = (_hit_rate(counts), counts)
        finally:
            srv.stop()
    for (name, stable), (rate, counts) in sorted(res.items()):
        print(f"{name:12s} cache-stable {'on ' if stable else 'off'}: hit rate of requests 2-"
              f"{len(counts)} {100 * rate:5.1f}%  (prompt, cached) per request {counts}")
    return res


def test_claude_code_billing_line(rates):
    off, on = rates[("claude_code", False)][0], rates[("claude_code", True)][0]
    assert off < 0.05, f"the billing nonce should defeat the cache without the flag: {off}"
    assert on >= 0.90, on


# What one request may lose against the previous one with the flag on: the moved reminder
# (about 120 tokens with the fixture's byte-level tokenizer) and the partial last block.
REMINDER_SLACK = 200


def _losses(counts):
    """tokens of the previous request's prompt that each request did not get from cache"""
    return [max(0, p0 - c1) for (p0, _), (_, c1) in zip(counts, counts[1:])]


def test_opencode_moving_reminder(rates):
    (off, c_off), (on, c_on) = rates[("opencode", False)], rates[("opencode", True)]
    assert on >= 0.90 and on > off, (off, on)
    # without the flag, every new user turn recomputes the previous turn's whole tool loop
    assert max(_losses(c_off)[3:]) > 3 * REMINDER_SLACK, _losses(c_off)
    # with it, from the third turn on (the reminder moved once, at turn 2) a request loses at
    # most the reminder
    assert max(_losses(c_on)[5:]) <= REMINDER_SLACK, _losses(c_on)


def test_tool_key_order_and_whitespace():
    tools = [{"type": "function", "function": {
        "name": "read", "description": "Read a file from the repository " * 12,
        "parameters": {"type": "object", "required": ["path"],
                       "properties": {"path": {"type": "string", "description": "the path"},
                                      "limit": {"type": "integer", "description": "lines"}}}}}]
    permuted = [{"function": {"parameters": {"properties": {
        "limit": {"description": "lines", "type": "integer"},
        "path": {"description": "the path", "type": "string"}},
        "required": ["path"], "type": "object"},
        "description": "Read a file from the repository " * 12, "name": "read"},
        "type": "function"}]
    msgs = [{"role": "user", "content": "open the file " * 20}]
    for stable in (False, True):
        srv = _server(stable)
        try:
            r1 = srv.post("/v1/chat/completions", {"model": "llama-a-f32", "max_tokens": 1,
                                                   "messages": msgs, "tools": tools})
            assert r1.status_code == 200, r1.text
            body = json.dumps({"model": "llama-a-f32", "max_tokens": 1, "messages": msgs,
                               "tools": permuted}, indent=3)  # other key order, other spacing
            status, _, data = srv.raw("POST", "/v1/chat/completions", body.encode())
            assert status == 200, data
            u = json.loads(data)["usage"]
            share = u["prompt_tokens_details"]["cached_tokens"] / u["prompt_tokens"]
            print(f"cache-stable {'on' if stable else 'off'}: permuted tools, "
                  f"{100 * share:.1f}% of the prompt from cache")
            if stable:
                assert share >= 0.9, u
            else:
                assert share < 0.5, u
        finally:
            srv.stop()
