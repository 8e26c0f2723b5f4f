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
  tool-trace  a coding agent several tool calls into a task (Qwen3-Coder's tool-call format,
              which carries arguments as raw text): it has read a ~100-150-line source file
              (four files, one per stream variant), grepped for a name, run the tests and
              read their output; its next turn is the write_file call that gives the file
              back with the change, begun with its path and the file's first three lines.
              The history's tool results echo the file and the arguments, as agent
              traffic does;
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

The 1B MoE bench model (--model build-bench/models/bench-qwen3moe-1b-q4_k-text.gguf) is made
from models/bench-qwen3moe-1b-q4_k.gguf by tools/mute_tokens.py when missing (any
--model NAME-text.gguf is made from models/NAME.gguf so).

Prints a markdown table (ratio = on / off, measured in the same run) and writes JSON to
--out (default /tmp/spec_bench.json). --merge A.json B.json ... prints one table of several
runs (split so each timed run stays short) and --plot draws on/off against streams.
"""
import argparse
import concurrent.futures as cf
import json
import math
import pathlib
import statistics
import subprocess
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


TRACE_FILES = ["coordinator/ngram.c", "coordinator/step_time.c", "coordinator/spec_cost.c",
               "common/cpu_features.c"]
TRACE_SYSTEM = """You are a coding agent working in a C repository. Call one tool per turn.
Tools:
- read_file(path): the file's text
- grep(pattern, path): matching lines as path:line:text
- run(command): the command's output
- write_file(path, content): replaces the file
A call is written as
<tool_call>
<function=NAME>
<parameter=ARG>
VALUE
</parameter>
</function>
</tool_call>"""


def tool_call(name, **args):
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in args.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def turn(role, text):
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def tool_trace(path):
    """A multi-turn agent trace whose last turn writes `path` back (see the docstring)."""
    src = (ROOT / path).read_text()
    lines = src.splitlines(True)
    first = next((ln for ln in lines if "(" in ln and not ln.startswith((" ", "/", "#", "*"))),
                 lines[0])
    name = first.split("(")[0].split()[-1].lstrip("*")
    hits = "".join(f"{path}:{i + 1}:{ln}" for i, ln in enumerate(lines) if name in ln)
    task = (f"In {path}, rename the function {name} to {name}_v2 and update its callers. "
            f"Then run the unit tests.")
    return (turn("system", TRACE_SYSTEM) + turn("user", task) +
            turn("assistant", "I will read the file first.\n" + tool_call("read_file", path=path)) +
            turn("user", f"<tool_response>\n{src}</tool_response>") +
            turn("assistant", tool_call("grep", pattern=name, path=path.split("/")[0] + "/")) +
            turn("user", f"<tool_response>\n{hits}</tool_response>") +
            turn("assistant", tool_call("run", command="ctest --test-dir build -R test_spec")) +
            turn("user", "<tool_response>\n100% tests passed, 0 tests failed out of 1\n"
                 "</tool_response>") +
            f"<|im_start|>assistant\nNow I write the file with {name} renamed.\n"
            f"<tool_call>\n<function=write_file>\n<parameter=path>\n{path}\n</parameter>\n"
            f"<parameter=content>\n" + "".join(lines[:3]))


def workload(name):
    if name == "tool-trace":
        return [tool_trace(f) for f in TRACE_FILES]
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


def warm_spec(base, prompts):
    """The first step with drafts to plan measures the cost model (seconds; more on a large
    model): done here, not inside a timed run. Drafted tokens show it happened."""
    loop = chatml("Count with me.", "1 2 3 4 5 6 7 8 1 2 3 4 5 6 7 8 1 2 3 4 5 6 7 8 1 2 3")
    for p in [loop, *prompts] * 2:
        if metrics(base).get("drafted", 0) > 0:
            return
        stream_one(base, p, 48, {"speculative": {"mode": "ngram"}})
    print("warning: no draft in the warm-up: the cost model is measured in a timed run",
          file=sys.stderr)


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
            if "ngram" in modes:
                warm_spec(base, prompts)
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
                    med = statistics.median(x["tok_s"] for x in rs)
                    steps = sum(x.get("steps", 0) for x in rs)
                    rows.append({"model": args.model.stem, "server": label, "workload": wl,
                                 "conc": c, "mode": mode,
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
                rows.append({"model": args.model.stem, "server": "llama-server",
                             "workload": wl, "conc": c, "mode": spec,
                             "tokens": toks, "seconds": dt, "tok_s": toks / dt,
                             "drafted": dn, "accepted": da, "tokens_per_step": None})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def runs_text(r):
    """The median, and every run when there were several."""
    xs = r.get("all_tok_s") or [r["tok_s"]]
    if len(xs) == 1:
        return f"{r['tok_s']:.1f}"
    return f"{r['tok_s']:.1f} ({', '.join(f'{x:.1f}' for x in xs)})"


def pairs(rows):
    """{(model, server, workload, streams): {mode: row}} in the order of the rows."""
    keyed = {}
    for r in rows:
        key = (r.get("model", "-"), r["server"], r["workload"], r["conc"])
        keyed.setdefault(key, {})[r["mode"]] = r
    return keyed


def table(rows):
    out = ["| model | server | workload | streams | off tok/s | on tok/s | on/off | drafted | "
           "accepted | tokens/step (on) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, srv, wl, c), m in pairs(rows).items():
        off = m.get("off")
        for mode in [k for k in m if k != "off"]:
            on = m[mode]
            acc = f"{on['accepted'] / on['drafted']:.0%}" if on["drafted"] else "-"
            tps = f"{on['tokens_per_step']:.2f}" if on.get("tokens_per_step") else "-"
            name = srv if mode in ("ngram", "on") else f"{srv} [{mode}]"
            if off is None:
                out.append(f"| {model} | {name} | {wl} | {c} | - | {runs_text(on)} | - | "
                           f"{on['drafted']:.0f} | {acc} | {tps} |")
                continue
            out.append(f"| {model} | {name} | {wl} | {c} | {runs_text(off)} | {runs_text(on)} | "
                       f"{on['tok_s'] / off['tok_s']:.2f}x | {on['drafted']:.0f} | {acc} | {tps} |")
    return "\n".join(out)


def sign_p(k, n):
    """Two-sided sign-test p of k of n pairs on one side (binomial, p = 1/2)."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def median_interval(xs, level=0.95):
    """The distribution-free interval of a median (the sign test's): the k-th smallest and
    k-th largest of n values, k the largest with P(k <= Binomial(n, 1/2) <= n - k) >= level
    (n = 7: the smallest and the largest, 98.4%). None below 6 values (no such k)."""
    xs, n = sorted(xs), len(xs)
    k = 0
    while k + 1 <= n // 2 and 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n >= level:
        k += 1
    return (xs[k - 1], xs[n - k]) if k > 0 else None


def pair_table(rows):
    """Paired statistics per cell of Tandem: repeat i ran off and on back to back (order
    alternated), so all_tok_s[i] of both modes is a pair and the load's drift hits both.
    The median of the per-pair ratios on/off, its 95% distribution-free interval, how many
    pairs had on < off and the two-sided sign test's p of that count."""
    out = ["| model | workload | streams | pairs | median on/off | 95% interval | on < off | "
           "sign p | drafted per run | accepted |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for (model, srv, wl, c), m in pairs(rows).items():
        if srv != "tandem" or "off" not in m or "ngram" not in m:
            continue
        off, on = m["off"].get("all_tok_s", []), m["ngram"].get("all_tok_s", [])
        ratios = [b / a for a, b in zip(off, on)]
        n = len(ratios)
        if n < 2:
            continue
        iv = median_interval(ratios)
        losses = sum(r < 1.0 for r in ratios)
        d = m["ngram"]
        acc = f"{d['accepted'] / d['drafted']:.0%}" if d["drafted"] else "-"
        out.append(f"| {model} | {wl} | {c} | {n} | {statistics.median(ratios):.3f}x | "
                   f"{f'{iv[0]:.3f}-{iv[1]:.3f}' if iv else '-'} | {losses} of {n} | "
                   f"{sign_p(losses, n):.2f} | {d['drafted'] / n:.0f} | {acc} |")
    return "\n".join(out)


def plot(rows, path):
    """on/off against streams, one line per model, server and workload."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = {}
    for (model, srv, wl, c), m in pairs(rows).items():
        if "off" in m and m["off"]["tok_s"] > 0:
            for mode in [k for k in m if k != "off"]:
                key = (model, srv, wl)
                lines.setdefault(key, []).append((c, m[mode]["tok_s"] / m["off"]["tok_s"]))
    models = sorted({k[0] for k in lines})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    styles = {"agent-edit": "o-", "tool-trace": "s--", "prose": "^:"}
    for ax, model in zip(axes[0], models):
        for (mdl, srv, wl), pts in sorted(lines.items()):
            if mdl != model:
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(wl, "x-"),
                    color="C0" if srv == "tandem" else "C1", label=f"{srv}, {wl}",
                    alpha=1.0 if srv == "tandem" else 0.6)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16, 32])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("decode tok/s, n-gram speculation / off")
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ensure_model(path):
    """NAME-text.gguf: made from models/NAME.gguf with its control and padding rows muted
    (tools/mute_tokens.py), so a random-weight bench model writes ordinary text."""
    if path.exists() or not path.name.endswith("-text.gguf"):
        return
    src = ROOT / "models" / path.name.replace("-text.gguf", ".gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"making {path} from {src}", file=sys.stderr)
    subprocess.run([sys.executable, str(ROOT / "tools" / "mute_tokens.py"), str(src), str(path)],
                   check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=pathlib.Path,
                    default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tandem-bin", type=pathlib.Path, default=ROOT / "build" / "api" / "tandem")
    ap.add_argument("--llama-server-bin", type=pathlib.Path)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--llama-concurrency", default="1,4",
                    help="llama-server runs -np max(these) slots; each slot computes a "
                         "~2.5k-token prompt once, minutes each on a 2-core machine")
    ap.add_argument("--workloads", default="agent-edit,tool-trace,prose")
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
    ap.add_argument("--skip-llama-off", action="store_true",
                    help="run llama-server with speculation only (its off rows from an earlier "
                         "--out merged with --merge)")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/spec_bench.json"))
    ap.add_argument("--merge", type=pathlib.Path, nargs="+",
                    help="print one table of these --out files (and --plot) instead of running")
    ap.add_argument("--plot", type=pathlib.Path, help="with --merge: on/off against streams")
    ap.add_argument("--pairs", action="store_true",
                    help="with --merge: also the paired statistics per Tandem cell (median "
                    "of the on/off ratios, its sign-test interval, the sign test)")
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(f.read_text())]
        print(table(rows))
        if args.pairs:
            print()
            print(pair_table(rows))
        if args.plot:
            plot(rows, args.plot)
        return
    ensure_model(args.model)
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
        off = [] if args.skip_llama_off else llama_pass(args, work, "off")
        on = llama_pass(args, work, "on")
        rows += off + on
    args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
