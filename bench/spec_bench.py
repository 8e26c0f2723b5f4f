#!/usr/bin/env python3
"""Speculative decoding (n-gram drafts, a draft model) on and off, on Tandem and on llama.cpp's
server.

    .venv/bin/python bench/spec_bench.py [--concurrency 1,4,16] [--max-tokens 192] \\
        [--threads 2] [--llama-server-bin build-llamacpp/bin-cpu/llama-server] \\
        [--draft-model D.gguf [--modes off,ngram,draft]]

Workloads (greedy, so a request gives the same tokens with and without speculation; the
prompts are SmolLM2's chat format rendered here and sent to /v1/completions, so both
servers see the same text):
  agent-edit  a ~180-line source file (coordinator/stop_strings.c, cut at four different
              first lines so streams differ) with the instruction to rename a function;
              the assistant's answer has begun with "Here is the updated file:" and the
              file's first three lines, as an editing model's answer does (SmolLM2-135M,
              asked in a plain chat turn, does not reproduce the file: it explains it or
              invents code, which no drafter can predict);
  prose       short creative and explanatory prompts, little to copy.
At each concurrency C, C streams each send --requests-per-stream requests, streamed. Each
prompt was sent once before (one token), so prompts come from the prefix cache where the
server has one. tok/s = generated tokens after each request's first / (last streamed text
- first streamed text of the batch): decode throughput, prompt processing left out.

Tandem: one `tandem serve --spec ngram` (the cost model deciding), the
same requests with "speculative": {"mode": "off"} and {"mode": "ngram"} (and {"mode":
"draft"} with --draft-model, which the server then loads: --modes picks), --repeat pairs
per cell in alternating order, so both modes share the server, the warm-up and the load
of the machine at that time; the median of each mode is reported; drafted/accepted
(summed over the repeats) come from /metrics deltas. With --always, a
second pass runs "ngram" on a server started with --spec-always (every proposal drafted,
no cost model), to show what the cost model saves under load.

llama.cpp: llama-server -np max(--llama-concurrency) started twice, with --spec-type none and with
--spec-type ngram-simple (its prompt lookup; --spec-ngram-simple-size-n 3, -size-m 8, the
closest to Tandem's lookup), same requests; acceptance from the response timings when the
server reports them (draft_n, draft_n_accepted).

Prints a markdown table (ratio = on / off, measured in the same run) and writes JSON to
--out (default /tmp/spec_bench.json).
"""
import argparse
import concurrent.futures as cf
import json
import pathlib
import sys
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from serve_compare import running_server  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EDIT_FILE = ROOT / "coordinator" / "stop_strings.c"

EDIT = "Rename the function crd_stop_strings_create to crd_stops_create everywhere."
PROSE = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "Describe a walk through a busy market in the morning.",
    "Write a letter to a friend about your favourite book.",
    "What are the main causes of the seasons on Earth? Explain in a few paragraphs.",
    "Write a poem about autumn leaves.",
]


def chatml(user, assistant_start=""):
    """SmolLM2's chat format, rendered here so both servers get the same prompt text."""
    return (f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant_start}")


def workload(name):
    if name == "agent-edit":
        # the agent's answer has begun with the file's first lines (as an editing model's
        # answer does): the rest repeats the file with the change
        src = EDIT_FILE.read_text()
        # four variants (the file cut at different ends) so streams differ
        lines = src.splitlines(True)
        out = []
        for cut in (0, 10, 20, 30):
            body = "".join(lines[cut:])
            out.append(chatml(f"{EDIT}\n\n```c\n{body}```",
                              "Here is the updated file:\n\n```c\n" + "".join(
                                  lines[cut:cut + 3])))
        return out
    return [chatml(p) for p in PROSE]


def metrics(base):
    with urllib.request.urlopen(base.rsplit("/v1", 1)[0] + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        # summed over the drafters (one label each): a run uses one mode, and the deltas
        # around it count only that one
        if line.startswith("tandem_spec_draft_tokens_total"):
            out["drafted"] = out.get("drafted", 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("tandem_spec_accepted_tokens_total"):
            out["accepted"] = out.get("accepted", 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("tandem_decode_steps_total"):
            out["steps"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tandem_decode_step_tokens_total"):
            out["step_tokens"] = float(line.rsplit(" ", 1)[1])
    return out


def stream_one(base, prompt, max_tokens, extra):
    """One streamed completion: (tokens, t_first_text, t_last_text, draft_n, draft_acc)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    req = urllib.request.Request(base + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t_first = t_last = None
    chunks = toks = dn = da = 0
    with urllib.request.urlopen(req, timeout=1800) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            ev = json.loads(line[5:])
            now = time.monotonic()
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    chunks += 1
                    t_first = t_first or now
                    t_last = now
            if ev.get("usage"):
                toks = ev["usage"].get("completion_tokens", 0)
            t = ev.get("timings") or {}
            dn = t.get("draft_n", dn)
            da = t.get("draft_n_accepted", da)
    return toks or chunks, t_first, t_last, dn, da


def run_batch(base, prompts, conc, per_stream, max_tokens, extra):
    """conc streams x per_stream requests, all started together. Returns (tokens, decode
    seconds, draft_n, draft_acc): decode seconds run from the first streamed text of any
    request to the last, so prompt processing before the first token is left out."""
    jobs = [prompts[(s * per_stream + i) % len(prompts)]
            for s in range(conc) for i in range(per_stream)]

    def stream(s):
        return [stream_one(base, jobs[s * per_stream + i], max_tokens, extra)
                for i in range(per_stream)]

    with cf.ThreadPoolExecutor(conc) as ex:
        res = [x for r in ex.map(stream, range(conc)) for x in r]
    t0 = min(r[1] for r in res if r[1])
    t1 = max(r[2] for r in res if r[2])
    # the first token of each request came with its prompt: not decode work
    toks = sum(max(r[0] - 1, 0) for r in res)
    return toks, t1 - t0, sum(r[3] for r in res), sum(r[4] for r in res)


def warm(base, prompts, extra):
    """Each prompt once (one token), so the measured runs find it in the prefix cache."""
    for p in prompts:
        stream_one(base, p, 1, extra)


def tandem_pass(args, work, label, extra_flags, modes):
    rows = []
    cmd = [str(args.tandem_bin), "serve", "--model", str(args.model), "--port",
           str(args.port), "--threads", str(args.threads), "--max-running",
           str(max(args.concurrency)), *extra_flags]
    with running_server(label, cmd, args.port, "/tmp/spec_bench_tandem.log", 300) as (base, _):
        # warm-up: page the weights in, measure the cost model
        run_batch(base, workload("prose"), 1, 1, 16, {})
        for wl in work:
            prompts = workload(wl)
            warm(base, prompts, {})
            for c in args.concurrency:
                runs = {m: [] for m in modes}
                for r in range(args.repeat):
                    # alternate the order, so a drift in the machine's load favours neither
                    for mode in (modes if r % 2 == 0 else modes[::-1]):
                        m0 = metrics(base)
                        toks, dt, _, _ = run_batch(base, prompts, c, args.requests_per_stream,
                                                   args.max_tokens,
                                                   {"speculative": {"mode": mode}})
                        m1 = metrics(base)
                        d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
                        runs[mode].append({"tokens": toks, "seconds": dt, "tok_s": toks / dt,
                                           **d})
                        print(json.dumps({"workload": wl, "conc": c, "mode": mode,
                                          **runs[mode][-1]}), file=sys.stderr, flush=True)
                for mode in modes:
                    rs = runs[mode]
                    med = sorted(x["tok_s"] for x in rs)[len(rs) // 2]
                    steps = sum(x.get("steps", 0) for x in rs)
                    rows.append({"server": label, "workload": wl, "conc": c, "mode": mode,
                                 "tok_s": med, "all_tok_s": [x["tok_s"] for x in rs],
                                 "drafted": sum(x.get("drafted", 0) for x in rs),
                                 "accepted": sum(x.get("accepted", 0) for x in rs),
                                 "tokens_per_step": sum(x.get("step_tokens", 0) for x in rs) /
                                 steps if steps else None})
    return rows


def llama_pass(args, work, spec):
    rows = []
    slots = max(args.llama_concurrency)
    ctx = slots * 4096
    flags = ["--spec-type", "none"] if spec == "off" else [
        "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
        "--spec-ngram-simple-size-m", "8"]
    cmd = [str(args.llama_server_bin), "-m", str(args.model), "--host", "127.0.0.1", "--port",
           str(args.port + 1), "-t", str(args.threads), "-tb", str(args.threads), "-np",
           str(slots), "-c", str(ctx), *flags]
    label = f"llama-server ({spec})"
    with running_server(label, cmd, args.port + 1, "/tmp/spec_bench_llama.log", 300) as (base, _):
        run_batch(base, workload("prose"), 1, 1, 16, {})
        for wl in work:
            prompts = workload(wl)
            # every slot computes its prompt once (a slot keeps its last prompt's KV)
            run_batch(base, prompts, slots, 1, 1, {})
            for c in args.llama_concurrency:
                toks, dt, dn, da = run_batch(base, prompts, c, args.requests_per_stream,
                                             args.max_tokens, {})
                rows.append({"server": "llama-server", "workload": wl, "conc": c, "mode": spec,
                             "tokens": toks, "seconds": dt, "tok_s": toks / dt,
                             "drafted": dn, "accepted": da, "tokens_per_step": None})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows):
    out = ["| server | workload | streams | off tok/s | on tok/s | on/off | drafted | "
           "accepted | tokens/step (on) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["server"], r["workload"], r["conc"]), {})[r["mode"]] = r
    for (srv, wl, c), m in keyed.items():
        off = m.get("off")
        for mode in [k for k in m if k != "off"]:
            on = m[mode]
            acc = f"{on['accepted'] / on['drafted']:.0%}" if on["drafted"] else "-"
            tps = f"{on['tokens_per_step']:.2f}" if on.get("tokens_per_step") else "-"
            name = srv if mode in ("ngram", "on") else f"{srv} [{mode}]"
            out.append(f"| {name} | {wl} | {c} | {off['tok_s']:.1f} | {on['tok_s']:.1f} | "
                       f"{on['tok_s'] / off['tok_s']:.2f}x | {on['drafted']:.0f} | {acc} | {tps} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=pathlib.Path,
                    default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tandem-bin", type=pathlib.Path, default=ROOT / "build" / "api" / "tandem")
    ap.add_argument("--llama-server-bin", type=pathlib.Path)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--llama-concurrency", default="1,4",
                    help="llama-server runs -np max(these) slots; each slot computes a "
                         "~2.5k-token prompt once, minutes each on a 2-core machine")
    ap.add_argument("--workloads", default="agent-edit,prose")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--requests-per-stream", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3,
                    help="Tandem: off/ngram pairs per cell (median reported, order alternated)")
    ap.add_argument("--skip-tandem", action="store_true")
    ap.add_argument("--port", type=int, default=18611)
    ap.add_argument("--draft-model", type=pathlib.Path,
                    help="serve with --draft-model (same vocabulary; tools/make_draft_model.py "
                         "cuts one from a model) and add mode draft")
    ap.add_argument("--modes", help="Tandem request modes, off first (default off,ngram; "
                                    "off,ngram,draft with --draft-model)")
    ap.add_argument("--always", action="store_true",
                    help="also run ngram with --spec-always (no cost model)")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/spec_bench.json"))
    args = ap.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.llama_concurrency = [int(x) for x in args.llama_concurrency.split(",")]
    work = args.workloads.split(",")
    modes = (args.modes.split(",") if args.modes else
             ["off", "ngram", "draft"] if args.draft_model else ["off", "ngram"])
    flags = ["--spec", "ngram"]
    if args.draft_model:
        flags += ["--draft-model", str(args.draft_model)]
    rows = [] if args.skip_tandem else tandem_pass(args, work, "tandem", flags, modes)
    if args.always:
        al = tandem_pass(args, work, "tandem", ["--spec", "ngram", "--spec-always"],
                         ["off", "ngram"])
        for r in al:
            r["mode"] = "always" if r["mode"] == "ngram" else "off-always"
        # compare "always" with the off runs of its own server
        for r in al:
            if r["mode"] == "off-always":
                r["mode"] = "off"
                r["server"] = "tandem --spec-always"
            else:
                r["server"] = "tandem --spec-always"
                r["mode"] = "ngram"
        rows += al
    if args.llama_server_bin:
        off = llama_pass(args, work, "off")
        on = llama_pass(args, work, "on")
        rows += off + on
    args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
