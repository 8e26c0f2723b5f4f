"""`tandem serve` HTTP framing, limits and timeouts, over raw sockets (api/server/front.c,
http_frame.c; docs/serving.md "HTTP limits").

Each refusal is checked for its status, the JSON error shape (never an HTML page), the
connection being closed right after the answer (nothing else on the wire, EOF), the
pipelined rest not being executed (the /metrics request counters), and a normal client
being served at once afterwards. The server runs with short timeouts and small caps so
that every stall and flood takes about a second.
"""
import json
import re
import socket
import time

import httpx2 as httpx
import openai
import pytest

from conftest import FIXTURES
from serve_util import ServeProcess, parse_metrics, metric_value

TINY = FIXTURES / "models" / "llama-a-f32.gguf"
MAX_CONNS = 6
PER_CLIENT = 3
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def srv(tandem_bin):
    s = ServeProcess(TINY, "--max-connections", MAX_CONNS, "--max-connections-per-client",
                     PER_CLIENT, "--http-header-timeout", HEADER_TIMEOUT, "--http-body-timeout",
                     BODY_TIMEOUT, "--http-idle-timeout", IDLE_TIMEOUT, "--max-header-bytes",
                     "16K")
    yield s
    s.stop()


# ---- raw HTTP ----

def connect(s, src="127.0.0.1", timeout=5.0):
    c = socket.socket()
    c.bind((src, 0))
    c.settimeout(timeout)
    c.connect((s.host, s.port))
    return c


def read_all(c):
    """Everything the server sends until it closes: (bytes, closed)."""
    out = b""
    try:
        while True:
            b = c.recv(65536)
            if not b:
                return out, True
            out += b
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        pytest.fail(f"connection reset (after {out[:200]!r})")


def parse_responses(data):
    """Splits raw bytes into [(status, headers, body)] by Content-Length."""
    res = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3}) ", lines[0])
        assert m, lines[0]
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        res.append((int(m.group(1)), hdrs, rest[:n]))
        data = rest[n:]
    return res


def exchange(s, data, src="127.0.0.1", timeout=5.0):
    c = connect(s, src, timeout)
    try:
        if data:
            c.sendall(data)
        out, closed = read_all(c)
    finally:
        c.close()
    return parse_responses(out), closed


def assert_json_error(resp, status, code=None):
    st, hdrs, body = resp
    assert st == status, (st, body)
    assert hdrs.get("content-type") == "application/json", hdrs
    assert b"<html" not in body.lower()
    e = json.loads(body)
    assert set(e) == {"error"} and set(e["error"]) >= {"message", "type", "param", "code"}, e
    assert e["error"]["message"]
    if code is not None:
        assert e["error"]["code"] == code, e
    assert hdrs.get("connection") == "close", hdrs
    return e["error"]


def assert_served_at_once(s, src="127.0.0.1"):
    t0 = time.monotonic()
    r = httpx.get(s.url + "/health", timeout=5, headers={"Connection": "close"})
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    assert time.monotonic() - t0 < 1.0


def tokenize_count(s):
    m = parse_metrics(httpx.get(s.url + "/metrics", timeout=5).text)
    try:
        return metric_value(m, "tandem_http_requests_total", route="/tokenize")
    except KeyError:
        return 0


TOKENIZE = b'{"prompt":"hi"}'


def post_tokenize(extra_headers=b"", body=TOKENIZE, cl=True):
    h = b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    if cl:
        h += b"Content-Length: %d\r\n" % len(body)
    return h + extra_headers + b"\r\n" + body


# ---- framing ----

@pytest.mark.parametrize("second", [b"60", b"15"], ids=["conflicting", "repeated"])
def test_repeated_content_length_pipelined_part_not_run(srv, second):
    """Two Content-Length headers (different or equal): 400, closed; the bytes after the
    first length, a complete pipelined /tokenize request, are never executed."""
    before = tokenize_count(srv)
    data = post_tokenize(b"Content-Length: " + second + b"\r\n") + post_tokenize()
    resps, closed = exchange(srv, data)
    assert len(resps) == 1 and closed, resps
    assert_json_error(resps[0], 400, "bad_content_length")
    assert tokenize_count(srv) == before
    assert_served_at_once(srv)


def test_content_length_with_chunked(srv):
    body = b"f\r\n" + TOKENIZE + b"\r\n0\r\n\r\n"
    data = post_tokenize(b"Transfer-Encoding: chunked\r\n", body=body) + post_tokenize()
    before = tokenize_count(srv)
    resps, closed = exchange(srv, data)
    assert len(resps) == 1 and closed, resps
    assert_json_error(resps[0], 400, "bad_framing")
    assert tokenize_count(srv) == before
    assert_served_at_once(srv)


def test_unknown_transfer_coding(srv):
    resps, closed = exchange(srv, post_tokenize(b"Transfer-Encoding: gzip, chunked\r\n",
                                                body=b"", cl=False))
    assert len(resps) == 1 and closed
    assert_json_error(resps[0], 501, "unsupported_transfer_encoding")


@pytest.mark.parametrize("chunks,status", [
    (b"zz\r\n", 400),
    (b"-f\r\n", 400),
    (b"0x0f\r\n", 400),
    (b"f \r\n", 400),
    (b"f\n", 400),
    (b"f\r\n" + TOKENIZE + b"XX\r\n0\r\n\r\n", 400),   # data longer than its size
    (b"1" * 16 + b"\r\n", 413),                        # larger than any body
    (b"1000000\r\n", 413),                             # 16 MiB: over --max-body-bytes
], ids=["not-hex", "negative", "0x-prefix", "space", "bare-lf", "overrun", "16-digits",
        "over-body-limit"])
def test_bad_chunk_sizes(srv, chunks, status):
    before = tokenize_count(srv)
    data = post_tokenize(b"Transfer-Encoding: chunked\r\n", body=chunks, cl=False)
    resps, closed = exchange(srv, data)
    assert len(resps) == 1 and closed, resps
    assert_json_error(resps[0], status)
    assert tokenize_count(srv) == before
    assert_served_at_once(srv)


def test_chunked_body_and_keep_alive(srv):
    """A well-formed chunked body (split chunks, an extension, a trailer) is served, and the
    connection stays open for a second request."""
    body = b"7;ext=1\r\n" + TOKENIZE[:7] + b"\r\n8\r\n" + TOKENIZE[7:] + b"\r\n0\r\nX-T: 1\r\n\r\n"
    c = connect(srv)
    try:
        c.sendall(post_tokenize(b"Transfer-Encoding: chunked\r\n", body=body, cl=False))
        c.sendall(post_tokenize(b"Connection: close\r\n"))
        out, closed = read_all(c)
    finally:
        c.close()
    resps = parse_responses(out)
    assert [r[0] for r in resps] == [200, 200] and closed, resps
    assert json.loads(resps[0][2])["tokens"] == json.loads(resps[1][2])["tokens"]


def test_pipelined_bad_request_after_good_one(srv):
    """good, bad, good: the first is answered in full, then the 400 for the second, then
    the close; the third never runs."""
    before = tokenize_count(srv)
    data = (post_tokenize() + b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n"
            + post_tokenize())
    resps, closed = exchange(srv, data)
    assert [r[0] for r in resps] == [200, 400] and closed, resps
    assert_json_error(resps[1], 400, "bad_content_length")
    assert tokenize_count(srv) == before + 1


@pytest.mark.parametrize("data,status,code", [
    (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 300000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
     + b"\r\n", 431, "request_header_fields_too_large"),
    (b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000)
                                                       for i in range(5)) + b"\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
], ids=["long-line", "line-over-libmicrohttpd-pool", "count", "total", "request-line"])
def test_header_floods(srv, data, status, code):
    resps, closed = exchange(srv, data)
    assert len(resps) == 1 and closed, resps
    assert_json_error(resps[0], status, code)
    assert_served_at_once(srv)


@pytest.mark.parametrize("data,status", [
    (b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET /health HTTP/1.1\r\n\r\n", 400),                       # no Host
    (b"GET /health HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\nHost: t\n\n", 400),                  # bare LF
    (b"GET /health HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),  # obs-fold
    (b"GET /health HTTP/1.1\r\nHost : t\r\n\r\n", 400),           # space before colon
    (b"GET  /health HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),  # TLS hello
], ids=["http2", "no-host", "two-hosts", "bare-lf", "obs-fold", "space-colon",
        "double-space", "nul", "tls"])
def test_malformed_heads_get_json(srv, data, status):
    resps, closed = exchange(srv, data)
    assert len(resps) == 1 and closed, resps
    assert_json_error(resps[0], status)


def test_too_large_content_length(srv):
    resps, closed = exchange(srv, post_tokenize(b"", body=b"", cl=False)[:-2]
                             + b"Content-Length: 99999999999999999999999\r\n\r\n")
    assert len(resps) == 1 and closed
    assert_json_error(resps[0], 413, "request_too_large")


# ---- timeouts ----

def test_stalled_head(srv):
    """A head that stops arriving gets 408 after --http-header-timeout, even when it
    trickles a byte at a time (the timeout counts from its first byte)."""
    c = connect(srv)
    try:
        t0 = time.monotonic()
        part = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: "
        c.sendall(part)
        for _ in range(8):
            time.sleep(0.25)
            try:
                c.sendall(b"a")
            except OSError:
                break
        out, closed = read_all(c)
        dt = time.monotonic() - t0
    finally:
        c.close()
    resps = parse_responses(out)
    assert len(resps) == 1 and closed, out
    assert_json_error(resps[0], 408, "request_timeout")
    assert HEADER_TIMEOUT - 0.05 <= dt < HEADER_TIMEOUT + 1.5, dt
    assert_served_at_once(srv)


def test_stalled_body(srv):
    before = tokenize_count(srv)
    c = connect(srv)
    try:
        t0 = time.monotonic()
        c.sendall(post_tokenize(b"", body=b"", cl=False)[:-2] + b"Content-Length: 100\r\n\r\n{")
        out, closed = read_all(c)
        dt = time.monotonic() - t0
    finally:
        c.close()
    resps = parse_responses(out)
    assert len(resps) == 1 and closed, out
    assert_json_error(resps[0], 408, "request_timeout")
    assert BODY_TIMEOUT - 0.05 <= dt < BODY_TIMEOUT + 1.5, dt
    assert tokenize_count(srv) == before
    assert_served_at_once(srv)


def test_idle_keep_alive_closed(srv):
    """A connection that sends nothing, and one idle after its answer, are closed after
    --http-idle-timeout, without an answer."""
    for first in (b"", b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"):
        c = connect(srv)
        try:
            t0 = time.monotonic()
            if first:
                c.sendall(first)
            out, closed = read_all(c)
            dt = time.monotonic() - t0
        finally:
            c.close()
        assert closed
        assert [r[0] for r in parse_responses(out)] == ([200] if first else [])
        assert IDLE_TIMEOUT - 0.05 <= dt < IDLE_TIMEOUT + 1.5, dt


# ---- connection caps ----

def test_idle_flood_over_the_cap(srv):
    """--max-connections idle connections (from several addresses): one more gets a JSON
    503 and is closed at once (not reset); when one idle connection goes, a normal client
    is served at once; the flood itself is closed by the idle timeout."""
    rejected = metric_value(parse_metrics(httpx.get(srv.url + "/metrics", timeout=5).text),
                            "tandem_http_connections_rejected_total")
    flood = []
    try:
        for i in range(MAX_CONNS):
            flood.append(connect(srv, f"127.0.0.{10 + i // PER_CLIENT}"))
        time.sleep(0.3)
        t0 = time.monotonic()
        resps, closed = exchange(srv, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
                                 src="127.0.0.20")
        assert time.monotonic() - t0 < 1.0
        assert len(resps) == 1 and closed, resps
        err = assert_json_error(resps[0], 503, "too_many_connections")
        assert err["type"] == "service_unavailable"
        assert resps[0][1].get("retry-after") == "1"
        # one leaves: a normal client gets in at once
        flood.pop().close()
        time.sleep(0.2)
        assert_served_at_once(srv)
        m = parse_metrics(httpx.get(srv.url + "/metrics", timeout=5).text)
        assert metric_value(m, "tandem_http_connections_rejected_total") == rejected + 1
        assert metric_value(m, "tandem_http_connections") == MAX_CONNS  # this one included
        # the rest are dropped by the idle timeout
        for c in flood:
            out, closed = read_all(c)
            assert closed and out == b""
        assert_served_at_once(srv)
    finally:
        for c in flood:
            c.close()


def test_per_address_cap(srv):
    """--max-connections-per-client from one address: the next gets 429 and is closed;
    another address is served at once."""
    held = [connect(srv, "127.0.0.30") for _ in range(PER_CLIENT)]
    try:
        time.sleep(0.2)
        resps, closed = exchange(srv, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
                                 src="127.0.0.30")
        assert len(resps) == 1 and closed
        err = assert_json_error(resps[0], 429, "too_many_connections")
        assert err["type"] == "rate_limit_error"
        assert_served_at_once(srv)
    finally:
        for c in held:
            c.close()


# ---- GET /v1/models/{id} ----

def test_models_retrieve_openai_sdk(srv):
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0) as client:
        listed = client.models.list().data
        assert len(listed) == 1
        m = client.models.retrieve(listed[0].id)
        assert m.id == listed[0].id == "llama-a-f32"
        assert m.object == "model" and m.owned_by == "tandem" and m.created == listed[0].created
        with pytest.raises(openai.NotFoundError) as ei:
            client.models.retrieve("no-such-model")
        assert ei.value.status_code == 404
        assert ei.value.body["code"] == "model_not_found"
