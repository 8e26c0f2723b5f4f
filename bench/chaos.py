#!/usr/bin/env python3
"""Chaos on shards: a served cluster under streaming load while shards are killed and frozen.

    bench/chaos.py --tandem build/api/tandem --model models/SmolLM2-135M-Instruct.Q4_1.gguf
                   [--shards 2] [--streams 16] [--duration 180] [--interval 3,6]
                   [--tls tcp] [--collective am|rma] [--seed 1] [--json OUT]

`tandem serve --shards` drives N `tandem shard` processes (one thread each). S client threads
stream chat completions (4-24 tokens) without pause. Every 3-6 s (--interval) one shard, chosen
at random, is either killed (SIGKILL, restarted with the same command 0.5-1.5 s later) or frozen
(SIGSTOP for 2-4 s, then SIGCONT); the next fault waits until /health is 200 again (the group
re-formed). What must hold (issue 16, item 4), each counted and printed as one JSON object:

- every request ends: a completed stream, an error event or an HTTP error; none runs into the
  client's 60 s timeout (`hangs`);
- an affected request (one in flight at a fault) ends with an error within 5 s of the fault
  (`late_errors`: those that took longer; `max_error_after_fault_s`);
- an unaffected request (started with the group ready, no fault while it ran) completes
  (`unaffected_failed`);
- the group re-forms after every fault (`formations_missing`, `max_reform_s`);
- no survivor dies: a shard that exits without being killed by this script, or the server
  exiting, is a failure (`survivor_deaths`, with the stderr tail).

Exit status 0 when all of these hold. The short version runs in CI (tests/python/test_chaos.py);
the long one is in docs/testing.md with its figures.
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
CLIENT_TIMEOUT_S = 60.0
ERROR_DEADLINE_S = 5.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process whose stderr goes to a file; restartable with the same command."""

    def __init__(self, cmd, ready_re, name):
        self.cmd, self.ready_re, self.name = cmd, ready_re, name
        self.p = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"chaos-{name}-", suffix=".log",
                                               delete=False)
        self.expected_exit = False
        self.frozen = False

    def start(self, timeout=60):
        self.log.seek(0)
        self.log.truncate()
        self.expected_exit = False
        self.frozen = False
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=self.log)
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            m = self.ready_re.search(self.text())
            if m:
                return m
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start:\n{self.text()}")

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self):
        if self.p is None:
            return
        self.expected_exit = True
        if self.frozen:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def http_json(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def health(port):
    try:
        st, _ = http_json(port, "GET", "/health", timeout=5)
        return st
    except OSError:
        return None


class Load:
    """S threads streaming chat completions; each request's outcome recorded."""

    def __init__(self, port, streams, seed):
        self.port, self.streams = port, streams
        self.rng = random.Random(seed)
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.requests = []  # dicts: t0, t1, outcome ('ok', 'error', 'http', 'hang'), detail
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(streams)]

    def start(self):
        for t in self.threads:
            t.start()

    def _one(self, n_tok, prompt):
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n_tok,
                "temperature": 0, "stream": True}
        rec = {"t0": time.monotonic(), "t1": None, "outcome": None, "detail": "",
               "wall0": time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"}
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT_S)
        try:
            c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                rec["outcome"], rec["detail"] = "http", f"{r.status} {r.read()[:200]!r}"
            else:
                outcome = None
                for raw in r:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        outcome = outcome or "ok"
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        outcome, rec["detail"] = "error", obj["error"].get("message", "")[:200]
                rec["outcome"] = outcome or "truncated"
        except socket.timeout:
            rec["outcome"] = "hang"
        except (OSError, http.client.HTTPException, ValueError) as e:
            rec["outcome"], rec["detail"] = "conn", repr(e)[:200]
        finally:
            c.close()
        rec["t1"] = time.monotonic()
        return rec

    def _run(self, i):
        rng = random.Random(self.rng.random() + i)
        words = ["dragon", "river", "cache", "shard", "token", "garden", "engine", "storm"]
        while not self.stop_flag.is_set():
            prompt = f"Tell me about the {rng.choice(words)} and the {rng.choice(words)}."
            rec = self._one(rng.randint(4, 24), prompt)
            with self.lock:
                self.requests.append(rec)
            if rec["outcome"] != "ok":
                time.sleep(0.25)  # a refused request: do not spin

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    ap.add_argument("--interval", default="3,6", help="seconds between faults: lo,hi")
    ap.add_argument("--tls", default="tcp")
    ap.add_argument("--collective", default="am", choices=["am", "rma"])
    ap.add_argument("--kinds", default="kill,freeze", help="fault kinds to draw from")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lo, hi = (float(x) for x in args.interval.split(","))
    kinds = args.kinds.split(",")

    shards = []
    for i in range(args.shards):
        port = free_port()
        cmd = [args.tandem, "shard", "--model", args.model, "--listen", f"127.0.0.1:{port}",
               "--threads", "1", "--ucx-tls", args.tls]
        shards.append(Proc(cmd, LISTEN_SHARD, f"shard{i}"))
    srv = None
    result = {"shards": args.shards, "streams": args.streams, "duration_s": args.duration,
              "tls": args.tls, "collective": args.collective, "seed": args.seed}
    faults = []
    survivor_deaths = []
    try:
        for s in shards:
            s.start()
        addrs = ",".join(s.cmd[s.cmd.index("--listen") + 1] for s in shards)
        srv = Proc([args.tandem, "serve", "--model", args.model, "--host", "127.0.0.1",
                    "--port", "0", "--threads", "1", "--shards", addrs,
                    "--shard-timeout-ms", "1500", "--collective-timeout-ms", "3000",
                    "--collective", args.collective], LISTEN_HTTP, "serve")
        port = int(srv.start(timeout=120).group(2))
        t_end = time.monotonic() + 120
        while health(port) != 200:
            if time.monotonic() > t_end:
                raise RuntimeError(f"the group did not form:\n{srv.text()[-3000:]}")
            time.sleep(0.1)

        load = Load(port, args.streams, args.seed)
        load.start()
        t_stop = time.monotonic() + args.duration

        def check_survivors():
            for s in shards + [srv]:
                if s.p is not None and s.p.poll() is not None and not s.expected_exit:
                    survivor_deaths.append({"process": s.name, "status": s.p.returncode,
                                            "log_tail": s.text()[-1500:]})
                    s.expected_exit = True  # report once

        while time.monotonic() < t_stop:
            wait_until = time.monotonic() + rng.uniform(lo, hi)
            while time.monotonic() < wait_until:
                check_survivors()
                time.sleep(0.05)
            victim = rng.randrange(len(shards))
            kind = rng.choice(kinds)
            s = shards[victim]
            f = {"t": time.monotonic(), "kind": kind, "shard": victim,
                 "wall": time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"}
            if kind == "kill":
                s.expected_exit = True
                s.signal(signal.SIGKILL)
                s.p.wait()
                time.sleep(rng.uniform(0.5, 1.5))
                s.start()
            else:
                s.frozen = True
                s.signal(signal.SIGSTOP)
                time.sleep(rng.uniform(2.0, 4.0))
                s.signal(signal.SIGCONT)
                s.frozen = False
            # the group must come back before the next fault
            t0 = time.monotonic()
            while health(port) != 200:
                check_survivors()
                if time.monotonic() - t0 > 60:
                    f["reformed_s"] = None
                    break
                time.sleep(0.05)
            else:
                f["reformed_s"] = round(time.monotonic() - f["t"], 3)
            f["t_ready"] = time.monotonic()
            faults.append(f)
            check_survivors()
        load.stop()
        check_survivors()

        # a last request once everything settled
        time.sleep(0.5)
        st, body = http_json(port, "POST", "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": "Say hi"}],
                              "max_tokens": 4, "temperature": 0}, timeout=60)
        result["final_request_status"] = st

        # classify every request against the fault windows [t_fault, t_ready]
        reqs = load.requests
        late, unaffected_failed, max_err = [], [], 0.0
        counts = {}
        for r in reqs:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
            # the faults this request lived through, the last one before its end first
            hit = sorted((f for f in faults if r["t0"] <= f["t_ready"] and f["t"] <= r["t1"]),
                         key=lambda f: -f["t"])
            if r["outcome"] == "ok":
                continue
            if r["outcome"] == "hang":
                continue
            if hit:
                # an error of an affected request: measured from the last fault before it
                # ended, or from its own start when it began during that outage
                f0 = hit[0]
                t_ref = max(f0["t"], r["t0"])
                dt = r["t1"] - t_ref
                max_err = max(max_err, dt)
                if dt > ERROR_DEADLINE_S:
                    late.append({"after_s": round(dt, 3), "outcome": r["outcome"],
                                 "detail": r["detail"], "fault": f0["kind"],
                                 "start_after_fault_s": round(r["t0"] - f0["t"], 3),
                                 "fault_reformed_s": f0["reformed_s"], "fault_wall": f0["wall"],
                                 "fault_shard": f0["shard"], "start_wall": r["wall0"]})
            else:
                unaffected_failed.append({"outcome": r["outcome"], "detail": r["detail"]})
        result.update({
            "faults": len(faults),
            "kills": sum(f["kind"] == "kill" for f in faults),
            "freezes": sum(f["kind"] == "freeze" for f in faults),
            "formations_missing": sum(f["reformed_s"] is None for f in faults),
            "max_reform_s": max((f["reformed_s"] or 0 for f in faults), default=0),
            "requests": len(reqs),
            "outcomes": counts,
            "hangs": counts.get("hang", 0),
            "late_errors": len(late),
            "late_examples": late[:5],
            "max_error_after_fault_s": round(max_err, 3),
            "unaffected_failed": len(unaffected_failed),
            "unaffected_examples": unaffected_failed[:5],
            "survivor_deaths": survivor_deaths,
        })
    finally:
        # a clean stop (SIGTERM) must exit 0: a crash while closing is a survivor's death too
        for p in ([srv] if srv is not None else []) + shards:
            p.stop()
            if p.p is not None and p.p.returncode != 0:
                survivor_deaths.append({"process": p.name, "status": p.p.returncode,
                                        "when": "stop (SIGTERM)", "log_tail": p.text()[-1500:]})
        result["survivor_deaths"] = survivor_deaths
    ok = (result.get("faults", 0) > 0 and result.get("hangs", 1) == 0
          and result.get("late_errors", 1) == 0 and result.get("unaffected_failed", 1) == 0
          and result.get("formations_missing", 1) == 0 and not survivor_deaths
          and result.get("final_request_status") == 200 and result.get("requests", 0) > 0)
    result["ok"] = ok
    for p in shards + ([srv] if srv else []):
        if ok:
            os.unlink(p.log.name)
        else:  # keep the logs of a failed run (of the last start of each process)
            result.setdefault("logs", []).append(p.log.name)
    out = json.dumps(result, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
