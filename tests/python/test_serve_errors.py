"""`tandem serve`: malformed requests, limits, authentication and queue limits.

Every refused request must get its HTTP status and an OpenAI-shaped error
{"error": {"message", "type", "param", "code"}} naming the offending parameter, and the server
must stay healthy afterwards. Servers: the tiny random llama fixture (loads in milliseconds)
with default limits, with a small body limit and context, with an API key, and with a queue of
one running and one waiting request.
"""
import json
import threading

import httpx2 as httpx
import openai
import pytest

from conftest import FIXTURES
from serve_util import ServeProcess, dumps, error_of

TINY = FIXTURES / "models" / "llama-a-f32.gguf"
MODEL = "llama-a-f32"
N_VOCAB = 384
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv(tandem_bin):
    s = ServeProcess(TINY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small(tandem_bin):
    """A 2 KiB body limit and a 64-token context (an explicit KV budget: see
    test_small_context_default_kv)."""
    s = ServeProcess(TINY, "--max-body-bytes", "2K", "--ctx-size", "64", "--kv-memory", "2M")
    yield s
    s.stop()


def test_small_context_default_kv(tandem_bin):
    """--ctx-size 64 with the default KV budget ("4 x context") must start: the default has to
    cover the engine's minimum (a full --batch of blocks), whatever the context."""
    s = ServeProcess(TINY, "--ctx-size", "64")
    try:
        r = s.client().completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2)
        assert r.usage.completion_tokens >= 1
    finally:
        s.stop()


def chat_body(**kw):
    b = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
    b.update(kw)
    return b


def without(d, key):
    d = dict(d)
    del d[key]
    return d


C, P = "/v1/chat/completions", "/v1/completions"
IRE = "invalid_request_error"

# (id, path, body: dict/list -> JSON, bytes -> as is, status, type, param, code)
# code None here means "not checked" (the server may give a finer code); param is checked exactly.
CASES = [
    ("invalid-json", C, b'{"model": "x", "messages": [', 400, IRE, None, "invalid_json"),
    ("body-not-object", C, [1, 2, 3], 400, IRE, None, None),
    ("body-empty", C, b"", 400, IRE, None, None),
    ("missing-messages", C, without(chat_body(), "messages"), 400, IRE, "messages", None),
    ("empty-messages", C, chat_body(messages=[]), 400, IRE, "messages", None),
    ("messages-not-array", C, chat_body(messages={"role": "user"}), 400, IRE, "messages", None),
    ("message-not-object", C, chat_body(messages=["hi"]), 400, IRE, "messages[0]", None),
    ("bad-role", C, chat_body(messages=[{"role": "wizard", "content": "hi"}]), 400, IRE,
     "messages[0].role", None),
    ("missing-role", C, chat_body(messages=[MSGS[0], {"content": "hi"}]), 400, IRE,
     "messages[1].role", None),
    ("content-wrong-type", C, chat_body(messages=[{"role": "user", "content": 42}]), 400, IRE,
     "messages[0].content", None),
    ("image-content-part", C, chat_body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
     400, IRE, "messages[0].content", None),
    ("temperature-string", C, chat_body(temperature="hot"), 400, IRE, "temperature", None),
    ("temperature-5", C, chat_body(temperature=5), 400, IRE, "temperature", None),
    ("temperature-negative", C, chat_body(temperature=-0.5), 400, IRE, "temperature", None),
    ("top-p-0", C, chat_body(top_p=0), 400, IRE, "top_p", None),
    ("top-p-1.5", C, chat_body(top_p=1.5), 400, IRE, "top_p", None),
    ("n-0", C, chat_body(n=0), 400, IRE, "n", None),
    ("n-100", C, chat_body(n=100), 400, IRE, "n", None),
    ("n-float", C, chat_body(n=1.5), 400, IRE, "n", None),
    ("max-tokens-0", C, chat_body(max_tokens=0), 400, IRE, "max_tokens", None),
    ("max-tokens-negative", C, chat_body(max_tokens=-3), 400, IRE, "max_tokens", None),
    ("max-tokens-string", C, chat_body(max_tokens="10"), 400, IRE, "max_tokens", None),
    ("max-completion-tokens-0", C, chat_body(max_completion_tokens=0), 400, IRE,
     "max_completion_tokens", None),
    ("stop-17", C, chat_body(stop=[f"s{i}" for i in range(17)]), 400, IRE, "stop", None),
    ("stop-non-string", C, chat_body(stop=[1]), 400, IRE, "stop", None),
    ("stop-too-long", C, chat_body(stop=["x" * 1025]), 400, IRE, "stop", None),
    ("prompt-1mb-over-context", C, chat_body(messages=[{"role": "user",
                                                       "content": "word " * 200000}]),
     400, IRE, "messages", "context_length_exceeded"),
    ("stop-empty-string", C, chat_body(stop=""), 400, IRE, "stop", None),
    ("stream-not-bool", C, chat_body(stream="yes"), 400, IRE, "stream", None),
    ("logprobs-string", C, chat_body(logprobs="yes"), 400, IRE, "logprobs", None),
    ("top-logprobs-without-logprobs", C, chat_body(top_logprobs=3), 400, IRE, "top_logprobs",
     None),
    ("top-logprobs-50", C, chat_body(logprobs=True, top_logprobs=50), 400, IRE,
     "top_logprobs", None),
    ("tools-not-array", C, chat_body(tools={"type": "function"}), 400, IRE, "tools", None),
    ("tool-without-name", C, chat_body(tools=[{"type": "function", "function": {
        "parameters": {"type": "object"}}}]), 400, IRE, "tools[0]", None),
    ("tool-bad-type", C, chat_body(tools=[{"type": "retrieval"}]), 400, IRE, "tools[0]", None),
    ("tool-choice-unknown", C, chat_body(tools=[{"type": "function", "function": {
        "name": "f"}}], tool_choice="sometimes"), 400, IRE, "tool_choice", None),
    ("tool-choice-without-tools", C, chat_body(tool_choice="required"), 400, IRE,
     "tool_choice", None),
    ("response-format-json-schema", C, chat_body(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
     400, IRE, "response_format", None),
    ("logit-bias-not-object", C, chat_body(logit_bias=[5, 10]), 400, IRE, "logit_bias", None),
    ("logit-bias-key-not-id", C, chat_body(logit_bias={"five": 10}), 400, IRE, "logit_bias",
     None),
    ("logit-bias-negative-id", C, chat_body(logit_bias={"-5": 10}), 400, IRE, "logit_bias",
     None),
    ("logit-bias-same-id-twice", C, chat_body(logit_bias={"5": 1, "05": 2}), 400, IRE,
     "logit_bias", None),
    ("logit-bias-over-100", C, chat_body(logit_bias={"5": 100.5}), 400, IRE, "logit_bias", None),
    ("logit-bias-string-value", C, chat_body(logit_bias={"5": "10"}), 400, IRE, "logit_bias",
     None),
    ("logit-bias-outside-vocab", C, chat_body(logit_bias={"99999999": 1}), 400, IRE,
     "logit_bias", None),
    ("logit-bias-301-entries", C, chat_body(logit_bias={str(i): 1 for i in range(301)}), 400,
     IRE, "logit_bias", None),
    ("template-kwargs-not-object", C, chat_body(chat_template_kwargs=[1]), 400, IRE,
     "chat_template_kwargs", None),
    ("seed-string", C, chat_body(seed="abc"), 400, IRE, "seed", None),
    ("model-not-string", C, chat_body(model=7), 400, IRE, "model", None),
    ("non-utf8-body", C, b'{"model": "llama-a-f32", "messages": [{"role": "user", '
                         b'"content": "caf\xe9 \xff\xfe"}]}', 400, IRE, None, "invalid_json"),
    ("deeply-nested", C, b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, IRE,
     None, "invalid_json"),
    ("duplicate-keys", C, b'{"model": "llama-a-f32", "messages": [{"role": "user", '
                          b'"content": "hi"}], "max_tokens": 2, "max_tokens": 3}', 400, IRE,
     None, "invalid_json"),
    ("nul-in-content", C, b'{"messages": [{"role": "user", "content": "a\\u0000b"}], '
                          b'"max_tokens": 2}', 400, IRE, None, None),
    # completions
    ("completions-prompt-missing", P, {"model": MODEL, "max_tokens": 2}, 400, IRE, "prompt",
     None),
    ("completions-two-prompts", P, {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2},
     400, IRE, "prompt", None),
    ("completions-empty-ids", P, {"model": MODEL, "prompt": [], "max_tokens": 2}, 400, IRE,
     "prompt", None),
    ("completions-prompt-number", P, {"model": MODEL, "prompt": 5, "max_tokens": 2}, 400, IRE,
     "prompt", None),
    ("completions-negative-id", P, {"model": MODEL, "prompt": [1, -2], "max_tokens": 2}, 400,
     IRE, "prompt", None),
    ("completions-id-out-of-vocab", P, {"model": MODEL, "prompt": [1, 2, N_VOCAB + 5],
                                        "max_tokens": 2}, 400, IRE, "prompt", None),
    ("completions-id-huge", P, {"model": MODEL, "prompt": [1, 2**40], "max_tokens": 2}, 400,
     IRE, "prompt", None),
    ("completions-echo", P, {"model": MODEL, "prompt": "a", "echo": True}, 400, IRE, "echo",
     None),
    ("completions-logprobs-9", P, {"model": MODEL, "prompt": "a", "logprobs": 9}, 400, IRE,
     "logprobs", None),
    # other routes
    ("unknown-model", C, chat_body(model="gpt-17"), 404, ("invalid_request_error",
                                                          "not_found_error"), "model",
     "model_not_found"),
    ("tokenize-prompt-not-string", "/tokenize", {"prompt": 5}, 400, IRE, "prompt", None),
    ("tokenize-not-json", "/tokenize", b"prompt=hello", 400, IRE, None, None),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [1, N_VOCAB]}, 400, IRE, "tokens",
     None),
    ("detokenize-not-array", "/detokenize", {"tokens": "1,2"}, 400, IRE, "tokens", None),
]


def check_error(status, body, exp_status, exp_type, exp_param, exp_code, what):
    assert status == exp_status, f"{what}: status {status}, body {body[:300]!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError(f"{what}: the error body is not JSON: {body[:300]!r}")
    e = error_of(doc)
    types = exp_type if isinstance(exp_type, tuple) else (exp_type,)
    assert e["type"] in types, f"{what}: {e}"
    assert e["param"] == exp_param, f"{what}: {e}"
    if exp_code is not None:
        assert e["code"] == exp_code, f"{what}: {e}"
    return e


def _case_id(c):
    return (c.values[0] if hasattr(c, "values") else c)[0]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_malformed(srv, case):
    name, path, body, st, typ, param, code = case
    raw = body if isinstance(body, bytes) else dumps(body)
    status, _, data = srv.raw("POST", path, raw)
    check_error(status, data, st, typ, param, code, name)


def test_routes_and_methods(srv):
    for method, path, st in [("GET", "/v1/nothing", 404), ("POST", "/v2/chat/completions", 404),
                             ("GET", "/v1/chat/completions", 405),
                             ("GET", "/v1/completions", 405), ("DELETE", "/v1/models", 405),
                             ("POST", "/health", 405), ("PUT", "/tokenize", 405)]:
        status, _, data = srv.raw(method, path, b"{}" if method != "GET" else None)
        e = check_error(status, data, st, ("invalid_request_error", "not_found_error"), None,
                        None, f"{method} {path}")
        assert e["message"]


def test_openai_client_errors(srv):
    """The same errors through the official client: exception classes and attributes."""
    cl = srv.client()
    with pytest.raises(openai.BadRequestError) as ei:
        cl.chat.completions.create(model=MODEL, messages=MSGS, temperature=5)
    assert ei.value.status_code == 400 and ei.value.param == "temperature"
    assert ei.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as ei:
        cl.chat.completions.create(model="no-such-model", messages=MSGS, max_tokens=2)
    assert ei.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        cl.chat.completions.create(model=MODEL, messages=MSGS, stream=True, n=0)
    # the server is fine afterwards
    r = cl.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_healthy_after_errors(srv):
    assert srv.get("/health").status_code == 200
    r = srv.client().chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4,
                                             temperature=0)
    assert r.usage.completion_tokens >= 1
    assert srv.wait_metric("tandem_kv_blocks_used", lambda v: v == 0, timeout=2) == 0
    assert srv.alive()


def test_body_limit(small):
    # 2 KiB limit: a body just under passes the limit check, one over gets 413
    pad = "x" * 1500
    ok = dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1, "user": pad})
    assert len(ok) < 2048
    status, _, data = small.raw("POST", C, ok)
    assert status == 200, data
    big = dumps({"model": MODEL, "messages": [{"role": "user", "content": "y" * 5000}]})
    status, _, data = small.raw("POST", C, big)
    check_error(status, data, 413, IRE, None, None, "body over the limit")
    # chunked upload (no Content-Length): the limit still holds
    def gen():
        for _ in range(10):
            yield b" " * 1000
        yield dumps({"messages": MSGS})
    r = httpx.post(small.url + C, content=gen(), headers={"Content-Type": "application/json"},
                   timeout=30)
    check_error(r.status_code, r.content, 413, IRE, None, None, "chunked body over the limit")
    assert small.get("/health").status_code == 200


def test_context_length_exceeded(small):
    # completions with 100 token ids on a 64-token context
    status, _, data = small.raw("POST", P, dumps({"model": MODEL, "prompt": list(range(1, 101)),
                                                   "max_tokens": 2}))
    e = check_error(status, data, 400, IRE, "prompt", "context_length_exceeded", "100 ids")
    assert "64" in e["message"] and "100" in e["message"], e["message"]
    # exactly the context: no room for a token
    status, _, data = small.raw("POST", P, dumps({"model": MODEL, "prompt": list(range(1, 65))}))
    check_error(status, data, 400, IRE, "prompt", "context_length_exceeded", "64 ids")
    # one less fits, and max_tokens is clipped to the room left
    r = small.client().completions.create(model=MODEL, prompt=list(range(1, 64)),
                                          max_tokens=50, extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == 63 and r.usage.completion_tokens == 1
    assert r.choices[0].finish_reason == "length"
    # chat: the rendered conversation counts
    long_msg = [{"role": "user", "content": " ".join(["word"] * 120)}]
    with pytest.raises(openai.BadRequestError) as ei:
        small.client().chat.completions.create(model=MODEL, messages=long_msg, max_tokens=2)
    assert ei.value.code == "context_length_exceeded" and ei.value.param == "messages"
    assert "64" in ei.value.message
    assert small.get("/health").status_code == 200


# ---- authentication ----

KEY = "sk-tandem-test-0123456789"


@pytest.fixture(scope="module")
def keyed(tandem_bin):
    s = ServeProcess(TINY, api_key=KEY)
    yield s
    s.stop()


def test_api_key(keyed):
    url = keyed.url
    body = chat_body()
    for headers, what in [({}, "no key"), ({"Authorization": "Bearer wrong"}, "wrong key"),
                          ({"Authorization": "Bearer " + KEY[:-1]}, "prefix of the key"),
                          ({"Authorization": "Bearer " + KEY + "x"}, "key plus a character"),
                          ({"Authorization": "Basic " + KEY}, "not a bearer")]:
        r = httpx.post(url + C, json=body, headers=headers, timeout=30)
        check_error(r.status_code, r.content, 401, "authentication_error", None, None, what)
        for method, path in [("GET", "/v1/models"), ("POST", "/tokenize"), ("POST", P)]:
            r = httpx.request(method, url + path, headers=headers, json={"prompt": "a"},
                              timeout=30)
            assert r.status_code == 401, (what, path, r.text)
    # open routes
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    # the official client with the wrong key, then the right one
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="sk-wrong").chat.completions.create(model=MODEL, messages=MSGS,
                                                                 max_tokens=2)
    r = keyed.client(api_key=KEY).chat.completions.create(model=MODEL, messages=MSGS,
                                                          max_tokens=2)
    assert r.choices[0].message.role == "assistant"
    assert [m.id for m in keyed.client(api_key=KEY).models.list().data] == [MODEL]
    r = httpx.post(url + "/tokenize", json={"prompt": "hi"},
                   headers={"Authorization": "Bearer " + KEY}, timeout=30)
    assert r.status_code == 200 and r.json()["count"] >= 1


def test_refusals_before_the_body_are_answered_not_reset(keyed):
    """401 and 404 are decided from the head; the server reads (and drops) the body before
    answering, since closing a socket with unread bytes resets the connection and can
    destroy the answer before the client reads it (about 1 in 100 such requests used to
    end in a reset). Fresh connections, 32 KB bodies."""
    body = dict(chat_body(), messages=[{"role": "user", "content": "hi " * 11000}])
    failures = []
    for i in range(150):
        url = keyed.url + (C if i % 3 else "/v1/no-such-route")
        try:
            r = httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)
            if r.status_code not in (401, 404):
                failures.append(r.status_code)
        except httpx.HTTPError as e:
            failures.append(repr(e))
    assert not failures, failures[:5]


# ---- 429 ----

@pytest.fixture(scope="module")
def queue1(tandem_bin):
    s = ServeProcess(TINY, "--max-running", "1", "--max-waiting", "1", "--ctx-size", "4096",
                     "--shutdown-timeout", "0.5")
    yield s
    if s.returncode is None:
        s.stop()


def long_stream_body(**kw):
    b = {"model": MODEL, "messages": MSGS, "max_tokens": 4000, "stream": True,
         "ignore_eos": True, "temperature": 0}
    b.update(kw)
    return b


def test_queue_full_429(queue1):
    s = queue1
    with httpx.Client(timeout=60) as hc:
        with hc.stream("POST", s.url + C, json=long_stream_body()) as r1:
            assert r1.status_code == 200
            lines = r1.iter_lines()
            assert next(l for l in lines if l.startswith("data:"))  # running
            # the queue limit reads the engine's stats snapshot, refreshed after each step;
            # wait until it shows r1 admitted (see the report: a submit right after the first
            # token can otherwise be refused on the stale count)
            assert s.wait_metric("tandem_requests_waiting", lambda v: v == 0) == 0
            with hc.stream("POST", s.url + C, json=long_stream_body()) as r2:
                assert r2.status_code == 200  # queued
                assert s.wait_metric("tandem_requests_waiting", lambda v: v == 1) == 1
                assert s.metric("tandem_requests_running") == 1
                # a third: the queue is full
                with pytest.raises(openai.RateLimitError) as ei:
                    s.client().chat.completions.create(model=MODEL, messages=MSGS,
                                                       max_tokens=2)
                assert ei.value.status_code == 429
                assert ei.value.type == "rate_limit_error"
                # streaming requests are refused the same way, before any event
                r3 = hc.post(s.url + C, json=long_stream_body(max_tokens=2))
                check_error(r3.status_code, r3.content, 429, "rate_limit_error", None, None,
                            "stream on a full queue")
                assert s.metric("tandem_requests_rejected_total") >= 2
    # both canceled by the disconnects: the server drains and serves again
    assert s.wait_metric("tandem_requests_running", lambda v: v == 0, timeout=5) == 0
    assert s.wait_metric("tandem_requests_waiting", lambda v: v == 0, timeout=5) == 0
    r = s.client().chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_shutdown_timeout_cancels_stream(queue1):
    """--shutdown-timeout 0.5 and a stream of thousands of tokens: after SIGTERM the stream
    ends (an error event or its end) and the process exits promptly with status 0."""
    import time

    s = queue1
    events = []
    done = threading.Event()

    def reader():
        try:
            with httpx.Client(timeout=60) as hc:
                with hc.stream("POST", s.url + C, json=long_stream_body()) as r:
                    for line in r.iter_lines():
                        events.append(line)
                        if line.startswith("data:") and len(events) == 1:
                            first.set()
        except httpx.HTTPError as e:
            events.append(f"transport error: {e!r}")
        finally:
            done.set()

    first = threading.Event()
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert first.wait(30), "the stream sent nothing"
    t0 = time.monotonic()
    s.terminate()
    assert done.wait(10), "the stream did not end after SIGTERM"
    t_end = time.monotonic() - t0
    rc = s.wait(10)
    t_exit = time.monotonic() - t0
    assert rc == 0, s.stderr()
    data = [l for l in events if l.startswith("data:")]
    finished = [l for l in data if '"finish_reason":"length"' in l]
    assert not finished, "the 4000-token stream finished in 0.5 s?"
    if "data: [DONE]" in data:
        # a stream that ends normally must say why it was cut: an OpenAI-shaped error event
        errs = [json.loads(l[5:]) for l in data if l.startswith("data: {") and '"error"' in l]
        assert errs, f"[DONE] without an error event or finish_reason: {data[-3:]!r}"
        error_of(errs[-1])
    print(f"stream ended {t_end:.2f} s after SIGTERM, exit after {t_exit:.2f} s; last events "
          f"{[e[:200] for e in events[-4:]]!r}")
    assert t_end < 5 and t_exit < 8
    s.stop()
