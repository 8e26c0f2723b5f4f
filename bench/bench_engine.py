#!/usr/bin/env python3
"""Prefill and decode speed of Tandem against llama.cpp on the same GGUF files, same run.

    .venv/bin/python bench/bench_engine.py [--threads 1,2] [--models A.gguf,B.gguf] [--md OUT.md]
        [--build BUILD_DIR] [--skip-llama]

For each model and thread count:
- Tandem: `tandem generate --prompt-file` with a fixed prompt of about --prompt-tokens
  tokens, greedy, --gen tokens, EOS ignored; prefill and decode rates are read from its
  summary line (model loading excluded);
- llama.cpp (PyPI llama-cpp-python, built from source on this machine by setup --dev): the
  same prompt ids evaluated in one batch, then --gen single-token decodes, timed around the
  calls (the Python overhead per call is well under 1% of a decode step);
- roofline: bytes of weights read per decoded token (`tandem inspect --json`,
  "bytes_per_token") divided by the measured read bandwidth (`tandem-membw` with the same
  thread count) = the best possible decode rate; the share reached is reported.
Every configuration runs --reps times, the two engines alternating, and the best run counts
(least disturbed).
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
TANDEM = BUILD / "api" / "tandem"
MEMBW = BUILD / "bench" / "tandem-membw"


def set_build(build):
    global BUILD, TANDEM, MEMBW
    BUILD = pathlib.Path(build).resolve()
    TANDEM = BUILD / "api" / "tandem"
    MEMBW = BUILD / "bench" / "tandem-membw"


PROMPT_SEED = (
    "The quick brown fox jumps over the lazy dog while the engineers measure how fast a "
    "language model can read its weights from memory. def add(a, b):\n    return a + b\n"
)


def sh(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, **kw)


def membw(threads):
    out = sh([MEMBW, "--threads", threads, "--mib", 1024, "--reps", 5]).stdout
    return json.loads(out)["read_gb_per_s"]


def bytes_per_token(model):
    info = json.loads(sh([TANDEM, "inspect", "--json", "--no-tensors", model]).stdout)
    # weights read per decoded token, with only the routed (top-k) experts for MoE
    return int(info["totals"]["bytes_per_token"]["top_k_experts"])


def make_prompt(llm, n_tokens):
    text = PROMPT_SEED
    while len(llm.tokenize(text.encode(), add_bos=False)) < n_tokens:
        text += PROMPT_SEED
    ids = llm.tokenize(text.encode(), add_bos=False)[:n_tokens]
    return llm.detokenize(ids).decode("utf-8", "ignore")


def run_tandem(model, prompt_file, threads, n_gen):
    p = sh([TANDEM, "generate", "--model", model, "--prompt-file", prompt_file, "--greedy",
            "--ignore-eos", "--max-tokens", n_gen, "--threads", threads, "--quiet"])
    m = re.search(r"(\d+) prompt tokens in ([\d.]+) s \(([\d.]+) tok/s\), (\d+) generated in "
                  r"([\d.]+) s \(([\d.]+) tok/s\)", p.stderr)
    if m is None:
        raise RuntimeError(f"no summary from tandem generate:\n{p.stderr}")
    return {"n_prompt": int(m.group(1)), "prefill": float(m.group(3)),
            "decode": float(m.group(6))}


def run_llama_cpp(model, prompt, threads, n_gen):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=2048, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    # decode cost does not depend on which token is fed: replay prompt tokens
    for i in range(n_gen):
        llm.eval([ids[i % len(ids)]])
    t2 = time.perf_counter()
    return {"n_prompt": len(ids), "prefill": len(ids) / (t1 - t0), "decode": n_gen / (t2 - t1)}


def best(runs, key):
    return max(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--md", help="append the markdown table to this file")
    ap.add_argument("--build", default=str(BUILD),
                    help="build folder holding api/tandem and bench/tandem-membw")
    ap.add_argument("--skip-llama", action="store_true",
                    help="Tandem only (quick iteration; ratios read as nan)")
    args = ap.parse_args()
    set_build(args.build)
    import llama_cpp

    rows = []
    for model in args.models.split(","):
        model = pathlib.Path(model)
        vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
        prompt = make_prompt(vocab, args.prompt_tokens)
        del vocab
        prompt_file = pathlib.Path("/tmp") / f"bench-prompt-{os.getpid()}.txt"
        prompt_file.write_text(prompt)
        bpt = bytes_per_token(model)
        for threads in [int(t) for t in args.threads.split(",")]:
            bw = membw(threads)
            # alternate the engines rep by rep, so a burst of other work on a shared machine
            # hits both rather than one
            td, lc = [], []
            for _ in range(args.reps):
                td.append(run_tandem(model, prompt_file, threads, args.gen))
                if not args.skip_llama:
                    lc.append(run_llama_cpp(model, prompt, threads, args.gen))
            if args.skip_llama:
                lc = [{"prefill": float("nan"), "decode": float("nan")}]
            roof = bw * 1e9 / bpt
            row = {
                "model": model.name, "threads": threads, "prompt_tokens": td[0]["n_prompt"],
                "tandem_prefill": best(td, "prefill"), "llama_prefill": best(lc, "prefill"),
                "tandem_decode": best(td, "decode"), "llama_decode": best(lc, "decode"),
                "bw_gbs": bw, "bytes_per_token": bpt, "roofline_decode": roof,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        prompt_file.unlink()

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPUs); "
        f"prompt {args.prompt_tokens} tokens, {args.gen} decoded tokens, best of {args.reps}.",
        "",
        "| model | threads | prefill tok/s Tandem | llama.cpp | ratio | decode tok/s Tandem | "
        "llama.cpp | ratio | roofline tok/s | Tandem share of roofline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['tandem_prefill']:.1f} | {r['llama_prefill']:.1f}"
            f" | {r['tandem_prefill'] / r['llama_prefill']:.2f} | {r['tandem_decode']:.1f} | "
            f"{r['llama_decode']:.1f} | {r['tandem_decode'] / r['llama_decode']:.2f} | "
            f"{r['roofline_decode']:.1f} ({r['bytes_per_token'] / 1e6:.1f} MB/token at "
            f"{r['bw_gbs']:.1f} GB/s) | {r['tandem_decode'] / r['roofline_decode']:.0%} |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
