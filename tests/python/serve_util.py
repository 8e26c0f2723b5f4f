"""Helpers for the `tandem serve` end-to-end tests (test_serve*.py).

A ServeProcess runs `tandem serve` on a free port (--port 0: the kernel picks one and the server
prints it), waits for GET /health == 200, and stops with SIGTERM, asserting a clean exit (status
0). The server's stderr goes to a temporary file so that every failure message can quote it.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import httpx2 as httpx
import openai

from conftest import TANDEM_BIN

READY_TIMEOUT_S = 120.0  # SmolLM2 takes ~5 s to load on a busy 2-core machine
_LISTEN_RE = re.compile(r"listening on http://([0-9.]+):(\d+)")


class ServerError(AssertionError):
    pass


class ServeProcess:
    """One `tandem serve` process. args: extra command-line options after --model.

    With TANDEM_TEST_SHARDS=N (N >= 1) in the environment, every server of the suite runs
    distributed: N `tandem shard` processes of the same model (UCX over TCP, one kernel
    thread each) are started first and the server drives them (--shards); they are
    stopped with the server. That is how the serving suite runs against a 2-shard cluster
    (ctest: python_dist_serve)."""

    def __init__(self, model, *args, threads=2, api_key=None, ready_timeout=READY_TIMEOUT_S):
        self.model = str(model)
        self.api_key = api_key
        self.args = [str(a) for a in args]
        self.shards = None
        n_shards = int(os.environ.get("TANDEM_TEST_SHARDS", "0") or 0)
        if n_shards > 0 and "--shards" not in self.args:
            from dist_util import Shards
            self.shards = Shards(model, n_shards, threads=1,
                                 tls=os.environ.get("TANDEM_TEST_UCX_TLS", "tcp"))
            self.args += ["--shards", self.shards.arg]
        if threads is not None and "--threads" not in self.args:
            self.args += ["--threads", str(threads)]
        if api_key is not None:
            self.args += ["--api-key", api_key]
        self._err = tempfile.NamedTemporaryFile(prefix="tandem-serve-", suffix=".stderr",
                                                delete=False)
        env = dict(os.environ)
        env.pop("TANDEM_API_KEY", None)
        cmd = [str(TANDEM_BIN), "serve", "--model", self.model, "--host", "127.0.0.1",
               "--port", "0", *self.args]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err, env=env)
        self.host = "127.0.0.1"
        self.port = None
        self.returncode = None
        self.saw_loading = False
        try:
            self._wait_port(ready_timeout)
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    # ---- life cycle ----

    def stderr(self):
        with open(self._err.name, "r", errors="replace") as f:
            return f.read()

    def _fail(self, msg):
        extra = "" if self.shards is None else "\n" + self.shards.stderr()
        raise ServerError(f"{msg}\ncommand: {' '.join(self.cmd)}\n--- server stderr ---\n"
                          f"{self.stderr()[-6000:]}{extra}")

    def _wait_port(self, timeout):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            m = _LISTEN_RE.search(self.stderr())
            if m:
                self.port = int(m.group(2))
                return
            if self.proc.poll() is not None:
                self._fail(f"tandem serve exited with {self.proc.returncode} before listening")
            time.sleep(0.02)
        self._fail("tandem serve did not print its port")

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        t_end = time.monotonic() + timeout
        last = None
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                self._fail(f"tandem serve exited with {self.proc.returncode} while loading "
                           f"(last /health: {last})")
            try:
                r = httpx.get(self.url + "/health", timeout=5)
                last = (r.status_code, r.text)
                if r.status_code == 200:
                    return
                if r.status_code != 503:
                    self._fail(f"/health answered {r.status_code} {r.text!r}")
                if r.json() != {"status": "loading"}:
                    self._fail(f"/health while loading answered {r.text!r}")
                self.saw_loading = True
            except httpx.TransportError as e:
                last = repr(e)
            time.sleep(0.05)
        self._fail(f"/health not 200 after {timeout} s (last: {last})")

    def alive(self):
        return self.proc.poll() is None

    def terminate(self):
        """Sends SIGTERM (does not wait)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._fail(f"tandem serve did not exit within {timeout} s")
        if self.shards is not None:
            self.shards.stop()
        return self.returncode

    def stop(self, timeout=60, expect_rc=0):
        """SIGTERM, wait, and assert the exit status (a clean drain exits 0)."""
        if self.returncode is None:
            self.terminate()
            self.wait(timeout)
        if expect_rc is not None and self.returncode != expect_rc:
            self._fail(f"tandem serve exited with {self.returncode}, expected {expect_rc}")
        try:
            os.unlink(self._err.name)
        except OSError:
            pass
        if self.shards is not None:
            self.shards.stop()
        return self.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.returncode = self.proc.returncode
        if self.shards is not None:
            self.shards.stop()

    # ---- clients ----

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self):
        return self.url + "/v1"

    def client(self, api_key=None, **kw):
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 300)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key or self.api_key or "none",
                             **kw)

    def async_client(self, api_key=None, **kw):
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 300)
        return openai.AsyncOpenAI(base_url=self.base_url,
                                  api_key=api_key or self.api_key or "none", **kw)

    def _headers(self, headers):
        h = {}
        if self.api_key is not None:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(headers or {})
        return h

    def get(self, path, headers=None, timeout=60):
        return httpx.get(self.url + path, headers=self._headers(headers), timeout=timeout)

    def post(self, path, json_body=None, headers=None, timeout=300):
        return httpx.post(self.url + path, json=json_body, headers=self._headers(headers),
                          timeout=timeout)

    def raw(self, method, path, body=b"", headers=None, timeout=60):
        """An exact request over http.client: (status, headers dict, body bytes)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = self._headers(headers)
            if body is not None and method != "GET":
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body if method != "GET" else None, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data
        finally:
            conn.close()

    def metrics(self):
        """GET /metrics parsed: {'name{labels}': value} plus {'name': value} for unlabelled
        lookups (labels model_name only)."""
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        return parse_metrics(r.text)

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)

    def wait_metric(self, name, pred, timeout=5.0, **labels):
        """Polls /metrics until pred(value) holds; returns the last value."""
        t_end = time.monotonic() + timeout
        v = None
        while True:
            v = self.metric(name, **labels)
            if pred(v) or time.monotonic() >= t_end:
                return v
            time.sleep(0.05)

    def tokenize(self, text, **kw):
        r = self.post("/tokenize", {"prompt": text, **kw})
        assert r.status_code == 200, r.text
        return r.json()


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, rest = key.partition("{")
        labels = {}
        if rest:
            for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest):
                labels[k] = v
        out.setdefault(name, []).append((labels, float(value)))
    return out


def metric_value(parsed, name, **labels):
    """Sum of the samples of name whose labels include labels; KeyError when absent."""
    if name not in parsed:
        raise KeyError(f"metric {name} missing from /metrics")
    return sum(v for lab, v in parsed[name] if all(lab.get(k) == w for k, w in labels.items()))


def sse_lines(server, path, body, headers=None, timeout=120):
    """POSTs a streaming request with httpx and yields each raw line of the response
    (the caller may stop early, which closes the connection)."""
    with httpx.Client(timeout=timeout) as c:
        with c.stream("POST", server.url + path, json=body,
                      headers=server._headers(headers)) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                yield line


def connect_refused(host, port, timeout=2.0):
    """True when a TCP connection to host:port is refused (nothing listens)."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except (ConnectionRefusedError, OSError):
        return True
    finally:
        s.close()
    return False


def error_of(resp_json):
    """The OpenAI error object of a response body, asserting its shape."""
    assert set(resp_json) == {"error"}, resp_json
    e = resp_json["error"]
    assert set(e) >= {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"], e
    assert isinstance(e["type"], str) and e["type"], e
    return e


def dumps(o):
    return json.dumps(o).encode()


# ---- an independent tokenizer oracle: HF `tokenizers` built from a GGUF's vocabulary ----

_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                11: "<q", 12: "<d"}


def read_gguf_kv(path):
    """The metadata key/values of a GGUF file (header only; tensors are not read)."""
    import struct

    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def rstr():
            return f.read(rd("<Q")).decode("utf-8", errors="surrogateescape")

        def rval(t):
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("<I"), rd("<Q")
                if et in _GGUF_SCALAR:
                    fmt = _GGUF_SCALAR[et]
                    size = struct.calcsize(fmt)
                    raw = f.read(size * n)
                    return list(struct.unpack("<" + fmt[1] * n, raw))
                return [rval(et) for _ in range(n)]
            return rd(_GGUF_SCALAR[t])

        assert f.read(4) == b"GGUF", f"{path} is not a GGUF file"
        rd("<I")
        rd("<Q")
        n_kv = rd("<Q")
        kv = {}
        for _ in range(n_kv):
            key = rstr()
            kv[key] = rval(rd("<I"))
        return kv


def hf_tokenizer_from_gguf(kv):
    """A byte-level BPE `tokenizers.Tokenizer` from a GGUF's tokenizer.ggml.* keys, with the
    SmolLM (gpt2-style, single digits) pre-tokenizer and CONTROL tokens as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    toks = kv["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in kv["tokenizer.ggml.merges"]]
    types = kv["tokenizer.ggml.token_type"]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(toks, types) if ty == 3])
    return tk


def render_chat_template(source, messages, **extra):
    """Renders a chat template with jinja2 as transformers does (trim_blocks, lstrip_blocks)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])

    # transformers' tojson: keys in their order (jinja2's own sorts them), no HTML escaping
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    return env.from_string(source).render(messages=messages, add_generation_prompt=True, **extra)
