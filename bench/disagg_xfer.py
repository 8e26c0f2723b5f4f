#!/usr/bin/env python3
"""KV transfer of disaggregated prefill/decode (docs/distributed.md) on this machine: a
prefill and a decode group of one `tandem shard` each on loopback, --prompts prompts of
--words words each, one at a time (max_tokens 1); prints the servers' transfer counters
(tandem_kv_transfer_{blocks,bytes,seconds}_total) as GB/s, and the same transport's RMA put
bandwidth from `tandem linkbench --local` for comparison.

--compare N: first serve the same prompts from one "mixed" group on the prefill shard, N
greedy tokens each with logprobs, then check the disaggregated answers are identical (any
architecture: the K/V, sliding-window blocks or recurrent states must all have travelled).
--text F: prompts are the first --words words of file F (the README by default with
--compare) instead of random words.

    .venv/bin/python bench/disagg_xfer.py [--model M.gguf] [--tls tcp] [--prompts 3]
        [--words 1200] [--compare 16] [--text FILE] [--tandem-bin build/api/tandem]
"""
import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tls", default="tcp")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--words", type=int, default=1200)
    ap.add_argument("--tandem-bin", default=str(ROOT / "build" / "api" / "tandem"))
    ap.add_argument("--compare", type=int, default=0)
    ap.add_argument("--text", default=None)
    a = ap.parse_args()
    os.environ["TANDEM_BIN"] = a.tandem_bin
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from dist_util import ShardProcess
    from serve_util import ServeProcess, metric_value, parse_metrics

    shards = [ShardProcess(a.model, tls=a.tls, threads=1) for _ in range(2)]
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone"]
    text = a.text or (str(ROOT / "README.md") if a.compare else None)
    if text:
        src = pathlib.Path(text).read_text().split()
        prompts = [" ".join(src[k * a.words:(k + 1) * a.words]) for k in range(a.prompts)]
    else:
        prompts = [" ".join(rng.choice(words) for _ in range(a.words)) for _ in range(a.prompts)]
    n_tok = max(a.compare, 1)
    body = {"max_tokens": n_tok, "temperature": 0}
    if a.compare:
        body["logprobs"] = 1

    def ask(srv, prompt):
        t0 = time.monotonic()
        r = srv.post("/v1/completions", dict(body, prompt=prompt), timeout=1200)
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        lp = ch["logprobs"]["token_logprobs"] if a.compare else None
        return ch["text"], lp, r.json()["usage"]["prompt_tokens"], time.monotonic() - t0

    tmp = pathlib.Path(tempfile.mkdtemp())
    want = []
    if a.compare:
        (tmp / "colocated.json").write_text(json.dumps(
            {"groups": [{"name": "m", "shards": [shards[0].addr]}]}))
        colo = ServeProcess(a.model, "--cluster", tmp / "colocated.json", "--ctx-size", "4096")
        try:
            want = [ask(colo, p) for p in prompts]
        finally:
            colo.stop()
    cluster = tmp / "cluster.json"
    cluster.write_text(json.dumps({"groups": [
        {"name": "p", "role": "prefill", "shards": [shards[0].addr]},
        {"name": "d", "role": "decode", "shards": [shards[1].addr]}]}))
    srv = ServeProcess(a.model, "--cluster", cluster, "--ctx-size", "4096")
    same = True
    try:
        for k, prompt in enumerate(prompts):
            got = ask(srv, prompt)
            line = f"prompt of {got[2]} tokens: {got[3]:.2f} s for {n_tok} token(s)"
            if a.compare:
                ok = got[:2] == want[k][:2]
                same &= ok
                line += f" (colocated {want[k][3]:.2f} s); answer " + \
                        ("identical" if ok else f"DIFFERS: {got[:2]} vs {want[k][:2]}")
            print(line)
        m = parse_metrics(srv.get("/metrics").text)
        b = metric_value(m, "tandem_kv_transfer_bytes_total", group="p")
        s = metric_value(m, "tandem_kv_transfer_seconds_total", group="p")
        n = metric_value(m, "tandem_kv_transfer_blocks_total", group="p")
        print(f"KV transfer: {n:.0f} blocks, {b / 1e6:.1f} MB in {s:.3f} s of put + flush: "
              f"{b / s / 1e9:.3f} GB/s")
    finally:
        srv.stop()
        for x in shards:
            x.stop()
    if not same:
        sys.exit("disaggregated answers differ from colocated ones")
    out = subprocess.run([a.tandem_bin, "linkbench", "--local", "--tls", a.tls, "--quick"],
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines() + out.stderr.splitlines()
    i = next((k for k, ln in enumerate(lines) if ln.startswith("RMA put bandwidth")), None)
    print("\n".join(lines[i:i + 6]) if i is not None else out.stdout + out.stderr)


if __name__ == "__main__":
    main()
