#!/usr/bin/env python3
"""How far two runs of the same model are apart: the figures docs/gpu.md records.

Runs `tandem eval` teacher-forced over a token sequence twice, with two settings (the
CPU's scalar reference vs its SIMD kernels, or the GPU vs the CPU), and prints per model:
the largest relative L2 of a position's logits, the largest absolute difference, top-1
agreement over all positions and over decisive ones (margin >= 0.5 logit; see
tests/python/agreement.py).

  bench/agreement.py --models A.gguf,B.gguf --a "cpu,isa=scalar" --b "cpu" [--tokens N]
  bench/agreement.py --models A.gguf --a cpu --b "cuda,kv=f32"

A setting is a device (cpu, cuda, cuda:N) with options: isa=scalar|avx2|... (the CPU's
TANDEM_CPU_ISA), kv=f32|f16|q8_0. The tokens are the model's tokenizer run on a fixed
text of prose and code (`--tokens N` of them), or --ids with a comma-separated list.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
from agreement import compare  # noqa: E402

TEXT = (
    "The history of the city begins with a small fishing village on the river. Over the "
    "centuries it grew into a trading port, and its merchants sailed to distant markets. "
    "Today it is known for its museums, its parks and the old bridge that connects the two "
    "halves of the town.\n\ndef fibonacci(n):\n    if n < 2:\n        return n\n    return "
    "fibonacci(n - 1) + fibonacci(n - 2)\n\nimport json\nwith open('data.json') as f:\n    "
    "rows = json.load(f)\nprint(sum(r['price'] * r['qty'] for r in rows))\n\nWhen the "
    "water rose in the spring, the farmers moved their animals to the hills and waited. ")


def parse_setting(s):
    parts = s.split(",")
    out = {"device": parts[0], "isa": None, "kv": None}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k not in ("isa", "kv"):
            raise SystemExit(f"agreement: unknown option '{k}' in '{s}'")
        out[k] = v
    return out


def token_ids(tandem, model, n):
    out = subprocess.run([tandem, "tokenize", "--model", model, "--text", TEXT * 8],
                         capture_output=True, text=True, check=True).stdout
    ids = json.loads(out)
    ids = ids["ids"] if isinstance(ids, dict) else ids
    return ids[:n]


def run(tandem, model, ids, setting, threads, tmp):
    out = pathlib.Path(tmp) / "logits.npy"
    env = dict(os.environ)
    if setting["isa"]:
        env["TANDEM_CPU_ISA"] = setting["isa"]
    cmd = [tandem, "eval", "--model", model, "--tokens", ",".join(map(str, ids)), "--greedy",
           "0", "--device", setting["device"], "--logits-out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    if setting["kv"]:
        cmd += ["--kv-type", setting["kv"]]
    subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return np.load(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tandem", default=str(HERE.parent / "build" / "api" / "tandem"))
    ap.add_argument("--models", required=True, help="comma-separated GGUF files")
    ap.add_argument("--a", required=True, help="the reference setting")
    ap.add_argument("--b", required=True, help="the setting compared with it")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--ids", help="comma-separated token ids instead of the text")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    a, b = parse_setting(args.a), parse_setting(args.b)
    rows = []
    for model in args.models.split(","):
        ids = ([int(x) for x in args.ids.split(",")] if args.ids
               else token_ids(args.tandem, model, args.tokens))
        with tempfile.TemporaryDirectory() as tmp:
            ra = run(args.tandem, model, ids, a, args.threads, tmp)
            rb = run(args.tandem, model, ids, b, args.threads, tmp)
        c = compare(rb, ra)
        c["model"] = pathlib.Path(model).name
        rows.append(c)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"| model | {args.b} vs {args.a}: max rel L2 | max abs diff | top-1 all | "
          "decisive positions | top-1 decisive |")
    print("|---|---|---|---|---|---|")
    for c in rows:
        print(f"| {c['model']} | {c['max_rel_l2']:.2g} | {c['max_abs_diff']:.2g} | "
              f"{c['top1_all']:.1%} | {c['decisive']} of {c['positions']} | "
              f"{c['top1_decisive']:.1%} |")


if __name__ == "__main__":
    main()
