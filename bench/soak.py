#!/usr/bin/env python3
"""Soak: many streams of mixed, partly hostile traffic for a bounded time; nothing may leak.

    bench/soak.py --tandem build/api/tandem [--model M.gguf] [--streams 64] [--duration 600]
                  [--shards 0|2] [--sample 60] [--warmup 120] [--timeout 300] [--asan]
                  [--json OUT]

Issue 16, item 3. `tandem serve` (single node, or over --shards `tandem shard` processes) gets
--streams client threads for --duration seconds; each thread loops over a random mix of:
streamed and whole chat completions, completions, chat with tools, stop strings, logprobs,
requests the client abandons mid-stream (socket closed after a few events), and malformed or
refused requests (bad JSON, unknown model, a prompt over the context, a negative max_tokens),
each with the status it must get (a request that gets no answer within --timeout seconds is
unexpected). Every --sample seconds it records the resident memory (VmRSS)
and open file descriptors of every server and shard process and the KV blocks held by requests
(`tandem_kv_blocks_used`).

Acceptance (printed as one JSON object, exit 0 when all hold):
- `unexpected`: 0 requests with another status or a broken stream than their kind expects;
- RSS flat after --warmup: the last sample under load within 5% (--rss-tolerance) of the first
  one after the warm-up, per process; open file descriptors back to their idle count of before the load
  (+-4) once the load has stopped (both idle counts taken once closed connections are torn down:
  a count that stays up for 10 s is a leak);
- `kv_blocks_used_end`: 0 once the load has stopped;
- with --asan (the binary built with TANDEM_SANITIZE=address,undefined): every process exits
  0 on SIGTERM and its stderr has no AddressSanitizer / LeakSanitizer / UBSan report.

The 10-minute runs and their figures are in docs/benchmarks.md; CI runs a short one
(tests/python/test_soak.py).
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

LISTEN_HTTP = re.compile(r"listening on http://([0-9.]+):(\d+)")
LISTEN_SHARD = re.compile(r"listening on tcp://([0-9.]+):(\d+)")
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, cmd, ready_re, name, env=None):
        self.cmd, self.ready_re, self.name = [str(c) for c in cmd], ready_re, name
        self.log = tempfile.NamedTemporaryFile(prefix=f"soak-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=self.log, env=env)

    def wait_ready(self, timeout):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            m = self.ready_re.search(self.text())
            if m:
                return m
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.p.returncode}):\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout} s:\n{self.text()[-3000:]}")

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def rss_kib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.p.pid}/fd"))
        except OSError:
            return None

    def idle_fds(self, want=None, limit_s=10.0):
        """Open fds once no request runs. A connection the client has just closed holds 3
        fds in the server (client socket and the socketpair to libmicrohttpd) for a few ms
        to ~0.3 s until both ends are torn down; the sampler's own /metrics request is one
        such. So wait until the count has not changed for 1 s (and is at most `want` when
        given, up to limit_s): a count that stays up is a leak, one that falls is not."""
        t_end = time.monotonic() + limit_s
        last, since = self.fds(), time.monotonic()
        while last is not None and time.monotonic() < t_end:
            time.sleep(0.1)
            n = self.fds()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= 1.0 and (want is None or n <= want):
                break
        return last

    def stop(self, timeout=90):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


# ---- the traffic --------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
WORDS = "cache shard token river garden engine storm kernel thread memory stream".split()


def kinds(n_ctx):
    """(name, method, path, body or raw bytes, expected status, streamed?, abandon?)"""
    def chat(rng, **kw):
        body = {"messages": [{"role": "user", "content": "Tell me about " + " ".join(
            rng.choice(WORDS) for _ in range(rng.randint(3, 30)))}],
                "max_tokens": rng.randint(4, 24), "temperature": rng.choice([0, 0.7])}
        body.update(kw)
        return body
    return [
        ("chat_stream", 20, lambda r: ("/v1/chat/completions", chat(r, stream=True), 200, True, False)),
        ("chat", 15, lambda r: ("/v1/chat/completions", chat(r), 200, False, False)),
        ("completions", 10, lambda r: ("/v1/completions", {
            "prompt": "Once upon a time " + r.choice(WORDS), "max_tokens": r.randint(4, 24)},
            200, False, False)),
        ("tools", 8, lambda r: ("/v1/chat/completions", chat(r, tools=TOOLS), 200, False, False)),
        ("stop", 8, lambda r: ("/v1/chat/completions", chat(r, stop=[" the", "\n"], stream=True),
                               200, True, False)),
        ("logprobs", 8, lambda r: ("/v1/chat/completions", chat(r, logprobs=True, top_logprobs=2),
                                   200, False, False)),
        ("abandon", 10, lambda r: ("/v1/chat/completions", chat(r, stream=True, max_tokens=200),
                                   200, True, True)),
        ("bad_json", 5, lambda r: ("/v1/chat/completions", b'{"messages": [', 400, False, False)),
        ("unknown_model", 5, lambda r: ("/v1/chat/completions", chat(r, model="no-such-model"),
                                        404, False, False)),
        ("too_long", 3, lambda r: ("/v1/completions", {"prompt": "word " * (n_ctx + 64),
                                                       "max_tokens": 4}, 400, False, False)),
        ("bad_value", 3, lambda r: ("/v1/chat/completions", chat(r, max_tokens=-5), 400, False,
                                    False)),
    ]


def one(port, path, body, expect, streamed, abandon, timeout):
    """None when the request went as expected, else a short description."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != expect:
            return f"{path}: status {r.status}, expected {expect}: {r.read()[:200]!r}"
        if not streamed:
            data = json.loads(r.read())
            if expect == 200 and "choices" not in data:
                return f"{path}: no choices in {str(data)[:200]}"
            if expect != 200 and "error" not in data:
                return f"{path}: no error object in {str(data)[:200]}"
            return None
        events = 0
        for raw_line in r:
            line = raw_line.decode(errors="replace").strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return None
            obj = json.loads(line[6:])
            if "error" in obj:
                return f"{path}: error event {str(obj)[:200]}"
            events += 1
            if abandon and events >= 3:
                c.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
                return None
        return f"{path}: the stream ended without [DONE] after {events} events"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return f"{path}: {e!r}"[:300]
    finally:
        c.close()


def metric(port, name):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return None
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--shards", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-size", type=int, default=2048)
    ap.add_argument("--sample", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=120)
    ap.add_argument("--rss-tolerance", type=float, default=0.05,
                    help="largest RSS change after the warm-up (fraction; short runs need more)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="client timeout per request (s); a Debug + ASan server at 64 streams "
                         "needs about 1200: it answers ~0.3 requests/s, so a request waits "
                         "~200 s on average behind the 63 others")
    ap.add_argument("--asan", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()

    env = dict(os.environ)
    if args.asan:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    procs, shards = [], []
    for i in range(args.shards):
        port = free_port()
        shards.append(Proc([args.tandem, "shard", "--model", args.model, "--listen",
                            f"127.0.0.1:{port}", "--threads", "1", "--ucx-tls", "tcp"],
                           LISTEN_SHARD, f"shard{i}", env))
    for s in shards:
        s.wait_ready(120)
    cmd = [args.tandem, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
           "--threads", args.threads, "--ctx-size", args.ctx_size, "--max-waiting", 4096]
    if shards:
        cmd += ["--shards", ",".join(s.cmd[s.cmd.index("--listen") + 1] for s in shards)]
    srv = Proc(cmd, LISTEN_HTTP, "serve", env)
    procs = [srv] + shards
    result = {"streams": args.streams, "duration_s": args.duration, "shards": args.shards,
              "asan": args.asan}
    unexpected, counts, samples = [], {}, []
    lock = threading.Lock()
    try:
        port = int(srv.wait_ready(300).group(2))
        t_end = time.monotonic() + 300
        while metric(port, "tandem_kv_blocks_total") is None:  # ready (also for shards)
            if time.monotonic() > t_end:
                raise RuntimeError(f"server not ready:\n{srv.text()[-3000:]}")
            time.sleep(0.5)
        mix = kinds(args.ctx_size)
        weights = [w for _, w, _ in mix]
        stop = threading.Event()

        def client(i):
            rng = random.Random(args.seed * 1000 + i)
            while not stop.is_set():
                name, _, make = rng.choices(mix, weights)[0]
                path, body, expect, streamed, abandon = make(rng)
                err = one(port, path, body, expect, streamed, abandon, timeout=args.timeout)
                with lock:
                    counts[name] = counts.get(name, 0) + 1
                    if err is not None:
                        unexpected.append(f"{name}: {err}")

        def sample(t0, load=True):
            s = {"t_s": round(time.monotonic() - t0, 1), "load": load,
                 "kv_blocks_used": metric(port, "tandem_kv_blocks_used")}
            if load:
                fds = {p.name: p.fds() for p in procs}
            else:  # idle: let closed connections go first (the idle count before the load
                # is the target of the one after it)
                want = {p.name: samples[0]["procs"][p.name]["fds"] + 4 for p in procs} \
                    if samples else {}
                fds = {p.name: p.idle_fds(want.get(p.name)) for p in procs}
            s["procs"] = {p.name: {"rss_kib": p.rss_kib(), "fds": fds[p.name]} for p in procs}
            samples.append(s)
            print(f"soak: {json.dumps(s)}", file=sys.stderr, flush=True)

        t0 = time.monotonic()
        sample(t0, load=False)  # idle, before the load
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(args.streams)]
        for t in threads:
            t.start()
        next_sample = t0
        while time.monotonic() - t0 < args.duration:
            if time.monotonic() >= next_sample:
                sample(t0)
                next_sample += args.sample
            for p in procs:
                if p.p.poll() is not None:
                    raise RuntimeError(f"{p.name} died ({p.p.returncode}):\n{p.text()[-3000:]}")
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=args.timeout + 30)
        # the load is gone: blocks must come back (aborted streams are noticed within ~0.1 s)
        t_q = time.monotonic()
        while (metric(port, "tandem_kv_blocks_used") or 0) > 0 and time.monotonic() - t_q < 30:
            time.sleep(0.5)
        sample(t0, load=False)
        result["kv_blocks_used_end"] = samples[-1]["kv_blocks_used"]
        # RSS flat under load after warm-up (first such sample against the last); open fds
        # back to the idle count of before the load (under load they follow the connections)
        after = [s for s in samples if s["load"] and s["t_s"] >= args.warmup]
        growth = {}
        if len(after) >= 2:
            a, b = after[0]["procs"], after[-1]["procs"]
            i0, i1 = samples[0]["procs"], samples[-1]["procs"]
            for name in a:
                ra, rb = a[name]["rss_kib"], b[name]["rss_kib"]
                growth[name] = {"rss_kib": [ra, rb],
                                "rss_growth": (rb - ra) / ra if ra and rb else None,
                                "fds": [i0[name]["fds"], i1[name]["fds"]]}
        result.update({"requests": sum(counts.values()), "by_kind": counts,
                       "unexpected": len(unexpected), "unexpected_examples": unexpected[:8],
                       "growth_after_warmup": growth, "samples": samples})
    finally:
        exits = {p.name: p.stop() for p in procs}
        result["exit_status"] = exits
        reports = {p.name: SANITIZER.findall(p.text()) for p in procs}
        result["sanitizer_reports"] = {k: len(v) for k, v in reports.items() if v}
        if any(reports.values()):
            result["sanitizer_tail"] = {p.name: p.text()[-3000:] for p in procs if reports[p.name]}
    flat = all(g["rss_growth"] is not None and abs(g["rss_growth"]) <= args.rss_tolerance and
               g["fds"][0] is not None and abs(g["fds"][1] - g["fds"][0]) <= 4
               for g in result.get("growth_after_warmup", {}).values()) and \
        bool(result.get("growth_after_warmup"))
    result["flat"] = flat
    ok = (result.get("unexpected", 1) == 0 and flat and result.get("kv_blocks_used_end") == 0
          and all(v == 0 for v in result["exit_status"].values())
          and not result["sanitizer_reports"] and result.get("requests", 0) > 0)
    result["ok"] = ok
    for p in procs:
        if ok:
            os.unlink(p.log.name)
        else:
            result.setdefault("logs", []).append(p.log.name)
    out = json.dumps({k: v for k, v in result.items() if k != "samples"} |
                     {"samples": result.get("samples", [])[-3:]}, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
