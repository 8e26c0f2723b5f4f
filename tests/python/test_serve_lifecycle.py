"""`tandem serve`: clients that go away, SSE keep-alive comments, and graceful shutdown.

(The forced shutdown, --shutdown-timeout 0.5 with a stream of thousands of tokens, is in
test_serve_errors.py on the server with a one-request queue.)
"""
import json
import threading
import time

import httpx2 as httpx
import pytest

from conftest import FIXTURES
from serve_util import ServeProcess

TINY = FIXTURES / "models" / "llama-a-f32.gguf"
TINY_NAME = "llama-a-f32"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tiny(tandem_bin):
    s = ServeProcess(TINY, "--ctx-size", "4096")
    yield s
    s.stop()


# ---- 9. a client that disconnects ----

def test_disconnect_mid_stream(tiny):
    aborted0 = tiny.metric("tandem_requests_aborted_total")
    body = {"model": TINY_NAME, "messages": MSGS, "max_tokens": 4000, "ignore_eos": True,
            "stream": True, "temperature": 0}
    with httpx.Client(timeout=60) as hc:
        with hc.stream("POST", tiny.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            n = 0
            for line in r.iter_lines():
                n += line.startswith("data:")
                if n >= 3:
                    break
        # leaving the block closes the connection mid-stream
    t0 = time.monotonic()
    aborted = tiny.wait_metric("tandem_requests_aborted_total", lambda v: v >= aborted0 + 1,
                               timeout=2.0)
    assert aborted == aborted0 + 1, "the disconnect was not noticed within 2 s"
    used = tiny.wait_metric("tandem_kv_blocks_used", lambda v: v == 0, timeout=2.0)
    assert used == 0, "KV blocks still held after the only request was canceled"
    assert tiny.metric("tandem_requests_running") == 0
    gen = tiny.metric("tandem_generation_tokens_total")
    time.sleep(0.3)
    assert tiny.metric("tandem_generation_tokens_total") == gen, "still generating"
    print(f"abort seen after {time.monotonic() - t0:.2f} s")
    # and the server keeps serving
    r = tiny.client().chat.completions.create(model=TINY_NAME, messages=MSGS, max_tokens=3,
                                              temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_disconnect_while_waiting_whole(tiny):
    """A non-streaming request whose client times out is canceled too."""
    aborted0 = tiny.metric("tandem_requests_aborted_total")
    body = {"model": TINY_NAME, "messages": MSGS, "max_tokens": 4000, "ignore_eos": True,
            "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(tiny.url + "/v1/chat/completions", json=body, timeout=0.5)
    assert tiny.wait_metric("tandem_requests_aborted_total", lambda v: v >= aborted0 + 1,
                            timeout=2.5) == aborted0 + 1
    assert tiny.wait_metric("tandem_kv_blocks_used", lambda v: v == 0, timeout=2.0) == 0


# ---- 14 and 15: SmolLM2 with --keepalive 0.05 and --shutdown-timeout 10 ----

@pytest.fixture(scope="module")
def smol_ka(tandem_bin, default_model):
    s = ServeProcess(default_model, "--keepalive", "0.05", "--shutdown-timeout", "10")
    yield s
    if s.returncode is None:
        s.stop()


def model_id(s):
    return s.client().models.list().data[0].id


def test_keepalive_comments_during_prefill(smol_ka):
    # ~300 prompt tokens: the prefill takes well over 0.2 s with 2 threads
    text = " ".join(f"Line {i} says the number {i * 37 % 1000} is interesting." for i in range(25))
    body = {"model": model_id(smol_ka), "max_tokens": 1, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": text + "\nSummarize."}]}
    lines = []
    t0 = time.monotonic()
    t_first = None
    with httpx.Client(timeout=120) as hc:
        with hc.stream("POST", smol_ka.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data:") and t_first is None:
                    t_first = time.monotonic() - t0
    first_data = next(i for i, l in enumerate(lines) if l.startswith("data:"))
    comments = [l for l in lines[:first_data] if l.startswith(":")]
    print(f"first data after {t_first:.2f} s, {len(comments)} comment lines before it")
    if t_first < 0.2 and not comments:
        pytest.skip(f"the prefill took only {t_first:.2f} s: too fast to need keep-alives")
    assert comments, f"no ':' keep-alive line before the first event: {lines[:5]!r}"
    assert lines[-1] == "" or lines[-1] == "data: [DONE]"
    assert "data: [DONE]" in lines


def test_sigterm_drains_stream(smol_ka):
    """SIGTERM with a stream in flight and --shutdown-timeout 10: the stream completes (its
    last chunk, then [DONE]); meanwhile the listener still answers, /health with 503
    {"status": "draining"} and a new generation with 503, each closing its connection;
    the exit status is 0."""
    s = smol_ka
    n_tokens = 40
    body = {"model": model_id(s), "messages": MSGS, "max_tokens": n_tokens, "ignore_eos": True,
            "stream": True, "temperature": 0, "logprobs": True}
    lines = []
    first = threading.Event()
    done = threading.Event()
    errors = []

    def reader():
        try:
            with httpx.Client(timeout=120) as hc:
                with hc.stream("POST", s.url + "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        lines.append(line)
                        if line.startswith("data:"):
                            first.set()
        except Exception as e:  # reported below
            errors.append(repr(e))
        finally:
            first.set()
            done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert first.wait(60) and not errors, errors
    s.terminate()
    in_flight = not done.is_set()
    # the stream keeps going; the listener stays open and says so
    t0 = time.monotonic()
    health = None
    while time.monotonic() - t0 < 3:
        health = httpx.get(s.url + "/health", timeout=5)
        if health.status_code == 503:
            break
        time.sleep(0.02)
    gen = httpx.post(s.url + "/v1/chat/completions", timeout=10,
                     json={"model": body["model"], "messages": MSGS, "max_tokens": 2})
    assert in_flight and not done.is_set(), "the stream ended before the checks"
    assert health.status_code == 503 and health.json() == {"status": "draining"}, health.text
    assert health.headers.get("connection") == "close"
    assert gen.status_code == 503, gen.text
    assert gen.json()["error"]["code"] == "not_ready", gen.text
    assert done.wait(30), "the stream did not end"
    assert not errors, errors
    rc = s.wait(15)
    assert rc == 0, s.stderr()
    data = [l[len("data: "):] for l in lines if l.startswith("data:")]
    assert data[-1] == "[DONE]", data[-3:]
    assert any('"finish_reason":"length"' in d for d in data), data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    assert not any("error" in c for c in chunks), chunks[-1]
    n_lp = sum(len(c["choices"][0]["logprobs"]["content"]) for c in chunks
               if c["choices"] and c["choices"][0].get("logprobs"))
    assert n_lp == n_tokens, f"{n_lp} tokens streamed"
    assert "SIGTERM" in s.stderr()
