#!/usr/bin/env python3
"""Shard scaling: decode and prefill time per token with 1, 2 and 3 `tandem shard` processes
on this machine (UCX over loopback TCP or shared memory), with the communication counters the
shards report (bytes each shard sent, time inside collectives).

For each shard count N the same two runs go through `tandem eval --shards`:
  prefill: one prompt of --prompt-tokens tokens, one step (ms per prompt token);
  decode:  a 1-token prompt then --gen greedy tokens, one token per step (ms per token).
The coordinator's wall time per step is what a client sees (step_ns); the shards report how
much of it they spent inside collectives (coll_ns, averaged over shards) and how many bytes
they sent (coll_bytes).

Derived columns:
  bytes/tok/layer  bytes one shard sent per token per layer;
  min              the issue's minimum: n_embd x 4 (f32) x collectives per layer, i.e. one
                   copy of the hidden state per collective (a one-shot all-reduce between W
                   ranks sends (W-1) copies, reduce-scatter + all-gather 2 (W-1)/W);
  coll/step        time one shard spent in collectives per step;
  lat x colls      the link latency (tandem linkbench: AM half round trip of the step's
                   message size, measured in the same run) x collectives per step;
  goal             coll/step <= 1.1 x (lat x colls)?
Collective time includes waiting for the slowest rank, so compute imbalance counts against it.

  .venv/bin/python bench/bench_shards.py --model models/bench-qwen3moe-1b-q4_k.gguf \\
      --shards 1,2,3 --threads 1 --prompt-tokens 256 --gen 32 --tls tcp
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
os.environ.setdefault("TANDEM_BIN", str(ROOT / "build" / "api" / "tandem"))
from dist_util import Shards  # noqa: E402
from conftest import TANDEM_BIN  # noqa: E402

STATS_RE = re.compile(r"remote_stats (\{.*\})")


def hparams(model):
    out = subprocess.run([str(TANDEM_BIN), "inspect", "--json", "--no-tensors", str(model)],
                         capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    arch = j["architecture"]
    kv = {m["key"]: m.get("value") for m in j["metadata"]}
    return {"n_layer": kv[f"{arch}.block_count"], "n_embd": kv[f"{arch}.embedding_length"]}


def run_eval(model, shards, tokens, gen, extra):
    p = subprocess.run([str(TANDEM_BIN), "eval", "--model", str(model), "--tokens",
                        ",".join(map(str, tokens)), "--greedy", str(gen), "--shards", shards,
                        *extra], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"eval failed:\n{p.stderr}")
    m = STATS_RE.search(p.stderr)
    return json.loads(m.group(1))


def linkbench_latency(tls):
    """AM half-round-trip latency by size from `tandem linkbench --local` (None if absent)."""
    p = subprocess.run([str(TANDEM_BIN), "linkbench", "--local", "--json", "--tls", tls,
                        "--max-bytes", "1048576"], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        print(f"linkbench failed ({p.stderr.strip()[:200]}); no latency column", file=sys.stderr)
        return None
    j = json.loads(p.stdout)
    return j


def lat_us(lb, key, nbytes):
    """Median latency of the first size >= nbytes in linkbench table `key` (else the largest)."""
    if lb is None:
        return None
    rows = lb.get(key) or []
    best = None
    for r in rows:
        if r["bytes"] >= nbytes:
            best = r
            break
    best = best or (rows[-1] if rows else None)
    return best["lat_us_median"] if best else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "bench-qwen3moe-1b-q4_k.gguf"))
    ap.add_argument("--shards", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads per shard")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--tls", default="tcp")
    ap.add_argument("--collective", default="am", choices=["am", "rma"])
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()

    hp = hparams(a.model)
    n_layer, n_embd = int(hp["n_layer"]), int(hp["n_embd"])
    lb = linkbench_latency(a.tls)
    prompt = [(i * 7919) % 1000 + 10 for i in range(a.prompt_tokens)]
    rows = []
    for n in [int(x) for x in a.shards.split(",")]:
        with Shards(a.model, n, tls=a.tls, threads=a.threads) as sh:
            extra = ["--collective", a.collective]
            pre = run_eval(a.model, sh.arg, prompt, 1, extra)
            dec = run_eval(a.model, sh.arg, prompt[:1], a.gen + 1, extra)
        for kind, st, toks in (("prefill", pre, a.prompt_tokens), ("decode", dec, a.gen + 1)):
            steps = st["steps"]
            colls = st["coll_calls"] / n / max(steps, 1)  # per shard per step
            per_layer = colls / n_layer
            sent = st["coll_bytes"] / n / toks / n_layer  # per shard per token per layer
            coll_ms = st["coll_ns"] / n / max(steps, 1) / 1e6
            msg = n_embd * 4 * (toks // max(steps, 1))
            lat = lat_us(lb, "am_lat", msg) if n > 1 else None
            lat_colls = lat * colls / 1e3 if lat is not None else None
            ar = lat_us(lb, f"allreduce_{a.collective}", msg) if n > 1 else None
            rows.append(dict(
                shards=n, kind=kind, steps=steps,
                ms_per_token=st["step_ns"] / 1e6 / toks,
                ms_per_step=st["step_ns"] / 1e6 / steps,
                colls_per_layer=per_layer,
                bytes_per_token_layer=sent,
                min_bytes_per_token_layer=n_embd * 4 * per_layer if n > 1 else 0,
                coll_ms_per_step=coll_ms,
                lat_x_colls_ms=lat_colls,
                allreduce_x_colls_ms=ar * colls / 1e3 if ar is not None else None,
                goal=(coll_ms <= 1.1 * lat_colls) if lat_colls else None,
            ))
    print(f"model {a.model}: n_layer {n_layer}, n_embd {n_embd}; {a.threads} thread(s) per "
          f"shard, UCX {a.tls}, collectives {a.collective}")
    print("| shards | phase | ms/token | ms/step | colls/layer | bytes/tok/layer (min) | "
          "coll ms/step | lat x colls ms | 2-rank all-reduce x colls ms | within 1.1x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        goal = "-" if r["goal"] is None else ("yes" if r["goal"] else "no")
        print(f"| {r['shards']} | {r['kind']} | {r['ms_per_token']:.3f} | {r['ms_per_step']:.2f} | "
              f"{r['colls_per_layer']:.2f} | {r['bytes_per_token_layer']:.0f} "
              f"({r['min_bytes_per_token_layer']:.0f}) | {r['coll_ms_per_step']:.3f} | "
              f"{fmt(r['lat_x_colls_ms'])} | {fmt(r['allreduce_x_colls_ms'])} | {goal} |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"rows": rows, "linkbench": lb}, indent=1))


if __name__ == "__main__":
    main()
