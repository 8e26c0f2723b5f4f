#!/usr/bin/env python3
"""Time to first token per turn of one agent conversation, Tandem against llama.cpp's server
on the same file: what prefix caching saves on later turns.

    .venv/bin/python bench/ttft_turns.py --model M.gguf [--turns 3] [--system-words 600]
        [--tools 4] [--answer-words 48] [--threads 2] [--tandem-bin build/api/tandem]
        [--tandem-args ARGS] [--llama-server-bin build-llamacpp/bin-cpu/llama-server]
        [--llama-args ARGS] [--md OUT.md] [--json OUT.json]

bench/swarm.py's conversation (an OpenCode-shaped system prompt with tool schemas, a task,
then tool results of ~60 tokens) for one agent, without swarm.py's sizing requests (each one
a whole prefill, minutes on a large model on the CPU): --system-words and --tools set the
size, the responses' usage reports it. Each turn is a streamed chat request for one token
(max_tokens 1, ignore_eos); TTFT is the time from sending it to the end of its stream, which
is the prompt's prefill plus one decode step, whatever text (or none: a random-weights model
may pick a token that prints nothing) that token is. The assistant's answer appended to the
history is a fixed text of --answer-words words, the same for both engines, so both see the
same prompts turn after turn. Each engine's server starts fresh (nothing cached).

llama.cpp runs as native llama-server with one slot (-np 1) and the same threads; its
`timings` give the tokens it took from its cache (cache_n) and those it computed (prompt_n).
Tandem's usage gives prompt_tokens_details.cached_tokens.
"""
import argparse
import datetime
import json
import os
import pathlib
import random
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import swarm  # noqa: E402  (the workload, streaming client and server runner)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def answer_text(turn, n_words):
    rng = random.Random(500 + turn)
    return " ".join(rng.choice(swarm.WORDS) for _ in range(n_words))


def run_conversation(port, model, args, system, tools):
    rng = random.Random(1000)
    history, rows = [], []
    for turn in range(args.turns):
        history.append({"role": "user", "content": swarm.user_turn(0, turn, rng)})
        body = swarm.request_body("chat", model, system, tools, history, 1)
        t0 = time.perf_counter()
        _, _, usage, timings, err, _ = swarm.post_stream(port, "/v1/chat/completions", body)
        wall = time.perf_counter() - t0
        if err is not None:
            raise RuntimeError(f"turn {turn + 1}: {err}")
        prompt, cached = swarm.cache_counts("chat", usage, timings)
        rows.append({"turn": turn + 1, "ttft": wall, "prompt": prompt, "cached": cached})
        swarm.log(f"turn {turn + 1}: {wall:.2f} s, prompt {prompt}, cached {cached}")
        history.append({"role": "assistant", "content": answer_text(turn, args.answer_words)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system-words", type=int, default=600)
    ap.add_argument("--tools", type=int, default=4, help="tool schemas (at most 14)")
    ap.add_argument("--answer-words", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tandem-bin", type=pathlib.Path, default=ROOT / "build" / "api" / "tandem")
    ap.add_argument("--tandem-args", default="")
    ap.add_argument("--llama-server-bin", type=pathlib.Path)
    ap.add_argument("--llama-args", default="")
    ap.add_argument("--ctx", type=int, default=16384, help="context of both servers")
    ap.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "build" / "bench-ttft")
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    system = swarm.system_text(args.system_words)
    tools = swarm.tool_schemas(args.tools)
    model = args.model.stem
    runs = {}
    port = swarm.free_port()
    cmd = [args.tandem_bin, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", port,
           "--threads", args.threads, "--ctx-size", args.ctx, *shlex.split(args.tandem_args)]
    with swarm.server("tandem serve", cmd, port, args.out_dir / "tandem.log"):
        runs["Tandem"] = run_conversation(port, model, args, system, tools)
    if args.llama_server_bin:
        port = swarm.free_port()
        cmd = [args.llama_server_bin, "-m", args.model, "--host", "127.0.0.1", "--port", port,
               "-t", args.threads, "-tb", args.threads, "-np", 1, "-c", args.ctx, "--jinja",
               *shlex.split(args.llama_args)]
        with swarm.server("llama-server", cmd, port, args.out_dir / "llama.log"):
            runs["llama.cpp"] = run_conversation(port, model, args, system, tools)
    head = "| engine | " + " | ".join(f"turn {t + 1}: TTFT s (prompt / cached tokens)"
                                       for t in range(args.turns)) + " |"
    out = [head, "|" + "---|" * (args.turns + 1)]
    for eng, rows in runs.items():
        out.append(f"| {eng} | " + " | ".join(f"{r['ttft']:.2f} ({r['prompt']} / {r['cached']})"
                                             for r in rows) + " |")
    if "llama.cpp" in runs:
        ratios = [f"turn {t + 1}: {runs['Tandem'][t]['ttft'] / runs['llama.cpp'][t]['ttft']:.1%}"
                  for t in range(args.turns)]
        out += ["", "Tandem TTFT / llama.cpp TTFT: " + ", ".join(ratios)]
    md = "\n".join([
        f"`{shlex.join(['bench/ttft_turns.py', *sys.argv[1:]])}`", "",
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {os.cpu_count()} CPUs; model "
        f"{args.model.name}; {args.turns} turns, {args.threads} threads per server; 1-minute "
        f"load at the end {os.getloadavg()[0]:.2f}.", ""] + out)
    print(md)
    if args.md:
        with open(args.md, "a") as f:
            f.write(md + "\n\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "args": {k: str(v) for k, v in vars(args).items()}}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
