#!/usr/bin/env python3
"""Serving load benchmark: concurrent streaming requests against any OpenAI-compatible endpoint.

    .venv/bin/python bench/bench_serve.py --base-url http://127.0.0.1:8080/v1 \\
        [--model NAME] [--api completions|chat] [--concurrency 1,4,16,32] \\
        [--prompt-tokens 512] [--max-tokens 128] [--shared-prefix 0.5] \\
        [--requests-per-stream 2 | --num-requests N] [--eos-id 0,2] \\
        [--label NAME] [--json OUT.json] [--plot OUT.png]
    .venv/bin/python bench/bench_serve.py --compare a.json b.json [--plot OUT.png] [--md OUT.md]

For each concurrency C (one level after another) C streams run at once, each a closed loop:
send a streaming request, read it to the end, send the next. Every prompt is about
--prompt-tokens words (each word of WORDS is one token in common BPE vocabularies, SmolLM2's
included, so words ~ tokens); its first --shared-prefix fraction is a fixed text identical
across all requests (an agent swarm's common system prompt), the rest is unique per request.
With --api chat the shared part is the system message and the unique part the user message.

Output length is forced to --max-tokens: the body carries `ignore_eos: true` (vLLM's
extension, which Tandem and llama.cpp's llama-server honour) and, with --eos-id, a logit_bias of
-100 on those ids (for llama-cpp-python's server, which ignores ignore_eos; Tandem's server
rejects logit_bias). Requests that still end early are counted as "short".

Per request: TTFT (request sent -> first chunk with content), ITL (gaps between content chunks;
when the server reports more tokens than chunks via stream_options.include_usage, each gap is
divided by the mean tokens per chunk of that request), TPOT ((E2E - TTFT) / (tokens - 1)),
E2E latency, tokens generated (usage.completion_tokens when the server sends it, else the
number of content chunks). Per level: throughput = tokens / wall time of the level.

The client is the official `openai` AsyncOpenAI (one client; a request is sent again only when
its connection failed before any response, counted as "retried"); it costs about 0.1 ms
of CPU per streamed chunk, far below the gap between tokens of a stream at 100+ tok/s. On a
small machine the client shares the cores with the server, so each level records CPU use in %
of one core: the client's, the server's (--server-pid) and other processes' (a warning is
printed when they used more than OTHER_LOAD_WARN_PCT: the figures are then disturbed).
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import resource
import sys
import time

# Common English words, each a single token with a leading space in SmolLM2's vocabulary
# (checked with llama.cpp's tokenizer: 500 random words -> 500 tokens) and in most BPE
# vocabularies; prompts are built from them so that word counts approximate token counts.
WORDS = tuple("""
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye
job word business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education foot boy age policy process music market
sense nation plan college interest death experience effect use class control care field
development role effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action model season
society tax director position player record paper space ground form event official matter
center couple site project activity star table need court oil situation cost industry figure
street image phone data picture practice piece land product doctor wall patient worker news
test movie north love support technology step baby computer type attention film tree source
organization hair window evidence population truth song river garden stone bridge cloud storm
forest island engine signal memory network server client request answer agent task tool file
code review
""".split())

PERCENTILES = (50, 90, 99)
OTHER_LOAD_WARN_PCT = 20  # CPU use by other processes (% of one core) that makes a level suspect
SHARED_SEED = 0x5EED  # the shared prefix is the same text in every run and for every server
WARMUP_INDEX = -1  # request index of the warm-up request (its unique part is used nowhere else)


# ---- prompts --------------------------------------------------------------------------------

def words_text(rng, n_words):
    """n_words random words from WORDS, space-separated, each with a leading space."""
    return "".join(" " + rng.choice(WORDS) for _ in range(n_words))


def prompt_parts(prompt_tokens, shared_fraction, seed, index):
    """(shared, unique) texts of request `index`: the shared part is identical for every
    request of every run; the unique part depends on (seed, index) only, so two servers
    benchmarked with the same seed see exactly the same prompts."""
    n_shared = round(prompt_tokens * shared_fraction)
    shared = words_text(random.Random(SHARED_SEED), n_shared)
    unique = words_text(random.Random(f"{seed}:{index}"), prompt_tokens - n_shared)
    return shared, unique


def request_args(args, model, index, stream):
    """(method name, keyword arguments) of the openai client call for request `index`."""
    shared, unique = prompt_parts(args.prompt_tokens, args.shared_prefix, args.seed, index)
    kw = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature,
          "stream": stream}
    if stream:
        kw["stream_options"] = {"include_usage": True}
    if args.eos_id:
        kw["logit_bias"] = {str(t): -100 for t in args.eos_id}
    if not args.no_ignore_eos:
        kw["extra_body"] = {"ignore_eos": True}
    if args.api == "chat":
        messages = []
        if shared:
            messages.append({"role": "system", "content": shared.lstrip()})
        messages.append({"role": "user", "content": unique.lstrip()})
        kw["messages"] = messages
        return "chat", kw
    kw["prompt"] = (shared + unique).lstrip()
    return "completions", kw


# ---- one request ----------------------------------------------------------------------------

def chunk_text(chunk, api):
    """Content text carried by one streamed chunk ('' for role-only, usage-only, final)."""
    if not chunk.choices:
        return ""
    choice = chunk.choices[0]
    if api == "chat":
        return (choice.delta.content or "") if choice.delta is not None else ""
    return choice.text or ""


def create_call(client, api):
    return client.chat.completions.create if api == "chat" else client.completions.create


async def open_stream(client, api, kw, rec):
    """Send the request; once more if the connection failed before any response (a kept-alive
    connection that the server closed just then: servers differ in keep-alive limits)."""
    import openai

    try:
        return await create_call(client, api)(**kw)
    except openai.APIConnectionError as e:
        if isinstance(e, openai.APITimeoutError):
            raise
        rec["retried"] = True
        return await create_call(client, api)(**kw)


async def run_request(client, args, model, index):
    """Send streaming request `index`, read it to the end; return its measurements."""
    api, kw = request_args(args, model, index, stream=True)
    rec = {"index": index, "ok": False, "error": None, "ttft_s": None, "e2e_s": None,
           "tokens": 0, "chunks": 0, "prompt_tokens": None, "usage_reported": False,
           "itl_s": [], "finish_reason": None, "retried": False}
    stamps = []
    t0 = time.perf_counter()
    rec["start_s"] = t0
    try:
        stream = await open_stream(client, api, kw, rec)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                rec["usage_reported"] = True
                rec["prompt_tokens"] = chunk.usage.prompt_tokens
                rec["tokens"] = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].finish_reason:
                rec["finish_reason"] = chunk.choices[0].finish_reason
            if chunk_text(chunk, api):
                stamps.append(now)
        t_end = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - any failure of a request is counted, not raised
        rec["error"] = f"{type(e).__name__}: {e}"[:500]
        rec["e2e_s"] = time.perf_counter() - t0
        return rec
    rec["chunks"] = len(stamps)
    if not rec["usage_reported"]:
        rec["tokens"] = len(stamps)
    rec["e2e_s"] = t_end - t0
    if not stamps:
        rec["error"] = "no content in the stream"
        return rec
    rec["ok"] = True
    rec["ttft_s"] = stamps[0] - t0
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    if gaps and rec["tokens"] > len(stamps):  # several tokens per chunk: per-token gaps
        per_chunk = (rec["tokens"] - 1) / len(gaps)
        gaps = [g / per_chunk for g in gaps]
    rec["itl_s"] = gaps
    if rec["tokens"] > 1:
        rec["tpot_s"] = (stamps[-1] - stamps[0]) / (rec["tokens"] - 1)
    return rec


async def warm_up(client, args, model):
    """One non-streaming request (not measured): loads caches, primes the shared prefix for
    every server alike, and returns usage.prompt_tokens when the server reports it."""
    api, kw = request_args(args, model, WARMUP_INDEX, stream=False)
    kw["max_tokens"] = min(8, args.max_tokens)
    resp = await create_call(client, api)(**kw)
    return resp.usage.prompt_tokens if resp.usage is not None else None


# ---- one concurrency level ------------------------------------------------------------------

def percentiles(values, scale=1.0):
    """{'p50':..., 'p90':..., 'p99':..., 'mean':...} of values (times scale); None if empty."""
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    s = sorted(values)
    out = {}
    for p in PERCENTILES:  # linear interpolation between closest ranks (numpy's default)
        k = (len(s) - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        out[f"p{p}"] = (s[lo] + (s[hi] - s[lo]) * (k - lo)) * scale
    out["mean"] = sum(s) / len(s) * scale
    return out


def cpu_seconds():
    """CPU seconds used by this process (the client)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def host_cpu_seconds():
    """CPU seconds used by the whole machine, all CPUs together (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def process_cpu_seconds(pid):
    """CPU seconds used by process pid, all its threads (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_sample(server_pid):
    return cpu_seconds(), host_cpu_seconds(), process_cpu_seconds(server_pid)


def cpu_shares(before, after, wall):
    """CPU use during a level in % of one core: client, server (with --server-pid), whole
    machine, and the rest (other processes: should be near 0 on a quiet machine)."""
    pct = [None if a is None or b is None else 100 * (b - a) / wall
           for a, b in zip(before, after)]
    client, host, server = pct
    other = None if host is None or server is None else max(0.0, host - client - server)
    return {"client_cpu_pct": client, "server_cpu_pct": server, "host_cpu_pct": host,
            "other_cpu_pct": other}


async def run_level(client, args, model, concurrency, first_index, n_requests,
                    warm_prompt_tokens):
    """Run n_requests over `concurrency` closed-loop streams; return the level's summary."""
    indices = iter(range(first_index, first_index + n_requests))
    records = []

    async def stream_worker():
        for i in indices:  # shared iterator: each worker takes the next request index
            records.append(await run_request(client, args, model, i))

    cpu0 = cpu_sample(args.server_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(stream_worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = cpu_shares(cpu0, cpu_sample(args.server_pid), wall)
    records.sort(key=lambda r: r["index"])
    for r in records:
        r["start_s"] -= t0

    ok = [r for r in records if r["ok"]]
    out_tokens = sum(r["tokens"] for r in ok)
    if ok and all(r["prompt_tokens"] is not None for r in ok):
        prompt_tokens, prompt_source = sum(r["prompt_tokens"] for r in ok), "usage"
    elif warm_prompt_tokens is not None:
        prompt_tokens, prompt_source = warm_prompt_tokens * len(ok), "warm-up usage"
    else:
        prompt_tokens, prompt_source = args.prompt_tokens * len(ok), "requested"
    itl = [g for r in ok for g in r["itl_s"]]
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "short": sum(1 for r in ok if r["tokens"] < args.max_tokens),
        "retried": sum(1 for r in records if r["retried"]),
        "error_samples": sorted({r["error"] for r in records if r["error"]})[:5],
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_source": prompt_source,
        "usage_reported": bool(ok) and all(r["usage_reported"] for r in ok),
        "wall_s": wall,
        "output_tok_s": out_tokens / wall,
        "total_tok_s": (out_tokens + prompt_tokens) / wall,
        "request_s": len(ok) / wall,
        "ttft_ms": percentiles([r["ttft_s"] for r in ok], 1e3),
        "itl_ms": percentiles(itl, 1e3),
        "tpot_ms": percentiles([r["tpot_s"] for r in ok if "tpot_s" in r], 1e3),
        "e2e_s": percentiles([r["e2e_s"] for r in ok]),
        **cpu,
        "records": records,
    }


async def run_benchmark(args):
    """All levels against one endpoint; returns the run dict written by --json."""
    import openai

    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key,
                                max_retries=0, timeout=args.timeout)
    try:
        model = args.model
        served = [m.id async for m in client.models.list()]
        if model is None:
            if not served:
                raise SystemExit("bench_serve: the endpoint lists no model; pass --model")
            model = served[0]
        warm_prompt_tokens = None
        for _ in range(args.warmup):
            try:
                warm_prompt_tokens = await warm_up(client, args, model)
            except openai.APIError as e:
                raise SystemExit(f"bench_serve: the warm-up request to {args.base_url} failed: "
                                 f"{type(e).__name__}: {e}")
        levels = []
        first = 0
        for c in args.concurrency:
            n = args.num_requests or c * args.requests_per_stream
            level = await run_level(client, args, model, c, first, n, warm_prompt_tokens)
            first += n
            print(f"[bench_serve] {args.label}: concurrency {c}: {level['requests']} requests, "
                  f"{level['errors']} errors, {level['short']} short, "
                  f"{level['output_tok_s']:.1f} out tok/s, TTFT p50 "
                  f"{fmt(level['ttft_ms']['p50'])} ms, ITL p50 {fmt(level['itl_ms']['p50'], 1)}"
                  f" ms; CPU % of a core: client {fmt(level['client_cpu_pct'])}, server "
                  f"{fmt(level['server_cpu_pct'])}, other processes {fmt(level['other_cpu_pct'])}",
                  file=sys.stderr, flush=True)
            if (level["other_cpu_pct"] or 0) > OTHER_LOAD_WARN_PCT:
                print(f"[bench_serve] warning: other processes used "
                      f"{level['other_cpu_pct']:.0f}% of a core during this level: the figures "
                      "are disturbed", file=sys.stderr, flush=True)
            levels.append(level)
    finally:
        await client.close()
    return {
        "label": args.label,
        "base_url": args.base_url,
        "model": model,
        "served_models": served,
        "api": args.api,
        "config": {k: v for k, v in vars(args).items() if k not in ("api_key", "compare")},
        "warmup_prompt_tokens": warm_prompt_tokens,
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "levels": levels,
    }


# ---- reporting ------------------------------------------------------------------------------

def fmt(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


def triple(stats, digits):
    return " / ".join(fmt(stats[f"p{p}"], digits) for p in PERCENTILES)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


HEADER = ("| server | concurrency | requests | errors / short | output tokens | wall s "
          "| output tok/s | total tok/s | TTFT ms p50 / p90 / p99 | ITL ms p50 / p90 / p99 "
          "| E2E s p50 / p90 / p99 |")


def level_row(label, lv):
    return (f"| {label} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} / "
            f"{lv['short']} | {lv['output_tokens']} | {lv['wall_s']:.1f} | "
            f"{lv['output_tok_s']:.1f} | {lv['total_tok_s']:.1f} | {triple(lv['ttft_ms'], 0)} | "
            f"{triple(lv['itl_ms'], 1)} | {triple(lv['e2e_s'], 2)} |")


def ratio_row(label, a, b):
    def rt(key):
        return " / ".join(fmt(ratio(a[key][f"p{p}"], b[key][f"p{p}"]), 2) for p in PERCENTILES)
    return (f"| *{label}* | {a['concurrency']} | | | | | "
            f"*{fmt(ratio(a['output_tok_s'], b['output_tok_s']), 2)}* | "
            f"*{fmt(ratio(a['total_tok_s'], b['total_tok_s']), 2)}* | *{rt('ttft_ms')}* | "
            f"*{rt('itl_ms')}* | *{rt('e2e_s')}* |")


def markdown_table(runs):
    """Markdown table of one or more runs, grouped by concurrency; with two or more runs a
    ratio row (first run / second run) follows each concurrency."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    concurrencies = sorted({lv["concurrency"] for r in runs for lv in r["levels"]})
    for c in concurrencies:
        per_run = [next((lv for lv in r["levels"] if lv["concurrency"] == c), None)
                   for r in runs]
        for r, lv in zip(runs, per_run):
            if lv is not None:
                lines.append(level_row(r["label"], lv))
        if len(runs) >= 2 and per_run[0] is not None and per_run[1] is not None:
            lines.append(ratio_row(f"ratio {runs[0]['label']} / {runs[1]['label']}",
                                   per_run[0], per_run[1]))
    return "\n".join(lines)


def describe(run):
    """One line saying how a run was made (for the text above a table)."""
    cfg = run["config"]
    n = (f"{cfg['num_requests']} requests per level" if cfg.get("num_requests")
         else f"{cfg['requests_per_stream']} requests per stream")
    return (f"{run['date'][:10]}, {run['host']} ({run['cpus']} CPUs), model `{run['model']}`, "
            f"`{cfg['api']}` API, prompt ~{cfg['prompt_tokens']} tokens "
            f"({cfg['shared_prefix']:.0%} shared prefix), {cfg['max_tokens']} output tokens, "
            f"{n}, temperature {cfg['temperature']}")


def plot_runs(runs, path):
    """PNG: output throughput and TTFT p50 against concurrency, one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        xs = [lv["concurrency"] for lv in r["levels"]]
        ax1.plot(xs, [lv["output_tok_s"] for lv in r["levels"]], marker="o", label=r["label"])
        ax2.plot(xs, [lv["ttft_ms"]["p50"] for lv in r["levels"]], marker="o", label=r["label"])
    ticks = sorted({lv["concurrency"] for r in runs for lv in r["levels"]})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax1.set_ylabel("output tokens/s (all streams)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Throughput")
    ax2.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    ax2.yaxis.set_major_formatter(plain)
    ax2.yaxis.set_minor_formatter(plain)
    ax2.set_ylabel("TTFT p50 (ms)")
    ax2.set_title("Time to first token")
    cfg = runs[0]["config"]
    fig.suptitle(f"{runs[0]['model'].split('/')[-1]}: prompt ~{cfg['prompt_tokens']} tokens "
                 f"({cfg['shared_prefix']:.0%} shared), {cfg['max_tokens']} output tokens, "
                 f"{cfg['api']} API", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_warnings(runs):
    """Sentences about levels during which other processes used the CPU."""
    out = []
    for r in runs:
        busy = [f"{lv['concurrency']} ({lv['other_cpu_pct']:.0f}%)" for lv in r["levels"]
                if (lv.get("other_cpu_pct") or 0) > OTHER_LOAD_WARN_PCT]
        if busy:
            out.append(f"Warning: other processes used the CPU (% of one core) while "
                       f"{r['label']} ran at concurrency {', '.join(busy)}: not a quiet machine.")
    return out


def load_run(path):
    with open(path) as f:
        return json.load(f)


# ---- command line ---------------------------------------------------------------------------

def int_list(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def fraction(text):
    x = float(text)
    if not 0.0 <= x < 1.0:
        raise argparse.ArgumentTypeError("--shared-prefix must be in [0, 1)")
    return x


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", help="model name to send (default: the first of GET /models)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    ap.add_argument("--label", help="name of this endpoint in tables and plots (default: URL)")
    ap.add_argument("--concurrency", type=int_list, default=[1, 4, 16, 32],
                    help="comma-separated stream counts, run one after another")
    ap.add_argument("--prompt-tokens", type=int, default=512,
                    help="prompt length in words (~tokens)")
    ap.add_argument("--max-tokens", type=int, default=128, help="output tokens per request")
    ap.add_argument("--shared-prefix", type=fraction, default=0.5,
                    help="fraction of each prompt that is identical across requests")
    ap.add_argument("--requests-per-stream", type=int, default=2,
                    help="requests each stream sends in turn (level total = C x this)")
    ap.add_argument("--num-requests", type=int,
                    help="total requests per level instead of --requests-per-stream")
    ap.add_argument("--eos-id", type=int_list, default=[],
                    help="token ids to bias by -100 (comma-separated; e.g. the GGUF's "
                         "tokenizer.ggml.eos_token_id)")
    ap.add_argument("--no-ignore-eos", action="store_true",
                    help="do not send ignore_eos: true (for servers that reject unknown fields)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1, help="seed of the unique prompt parts")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests before level 1")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-request timeout, seconds")
    ap.add_argument("--server-pid", type=int,
                    help="pid of a local server: record its CPU use and other processes' per "
                         "level (warns when the machine was not otherwise idle)")
    ap.add_argument("--json", help="write every measurement (per request too) to this file")
    ap.add_argument("--plot", help="write a PNG of throughput and TTFT against concurrency")
    ap.add_argument("--md", help="also write the markdown table to this file")
    ap.add_argument("--compare", nargs="+", metavar="RUN.json",
                    help="no benchmark: tabulate (ratio row = first / second) and plot runs "
                         "saved by --json")
    args = ap.parse_args(argv)
    if args.compare is None:
        if not args.base_url:
            ap.error("--base-url is required (or --compare)")
        if min(args.concurrency, default=0) < 1 or args.prompt_tokens < 1 or args.max_tokens < 1:
            ap.error("concurrency, --prompt-tokens and --max-tokens must be positive")
        args.label = args.label or args.base_url
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.compare:
        runs = [load_run(p) for p in args.compare]
    else:
        runs = [asyncio.run(run_benchmark(args))]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs[0], f, indent=1)
    text = "\n".join(f"- {r['label']}: {describe(r)}" for r in runs) + "\n\n" + \
        markdown_table(runs) + "".join(f"\n\n{w}" for w in load_warnings(runs))
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot_runs(runs, args.plot)
    failed = sum(lv["errors"] for r in runs for lv in r["levels"])
    return 1 if failed and not args.compare else 0


if __name__ == "__main__":
    sys.exit(main())
