#!/usr/bin/env python3
"""An agent swarm against Tandem and llama.cpp's server, on one file, in one run.

    .venv/bin/python bench/swarm.py [--model M.gguf] [--agents 12] [--turns 5]
        [--system-tokens 6000] [--max-tokens 64] [--apis chat,messages] [--threads 2]
        [--tandem-bin build/api/tandem] [--llama-server-bin build-llamacpp/bin-cpu/llama-server]
        [--md OUT.md] [--json OUT.json]

Issue 18, item 7. Every agent is a multi-turn conversation shaped like OpenCode's: the same
long system prompt (instructions, then the tool schemas: --system-tokens in all as the model's
chat template renders them, sized from Tandem's usage) and tool definitions in every request, then its own task and its own
growing history: each turn appends the assistant's answer and a new user message (a tool result
of ~60 tokens). The agents run concurrently, each turn after the previous one's answer, with
streaming; every request generates exactly --max-tokens tokens (`ignore_eos`), so both engines
do the same work. Measured per engine and API:

- TTFT (time to the first streamed event carrying generated text) per turn, p50 and p99 over
  the agents;
- aggregate output tokens per second (all tokens of all agents / wall time of the swarm);
- prefix-cache hit rate: prompt tokens served from cache / prompt tokens, from the responses'
  usage (chat: usage.prompt_tokens_details.cached_tokens; messages: cache_read_input_tokens /
  (input_tokens + cache_read_input_tokens)); llama.cpp also reports `timings.cache_n` and
  `timings.prompt_n`, used when its usage has no cached count.

llama.cpp runs as native `llama-server` with one slot per agent (-np), the same threads, and a
context that holds every agent's whole conversation in its slot. Its prompt cache is per slot
(the default `cache_prompt`), so an agent's later turns reuse its own slot; the shared system
prompt is computed once per slot.
"""
import argparse
import contextlib
import datetime
import http.client
import json
import os
import pathlib
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def log(msg):
    print(f"swarm: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the workload -----------------------------------------------------------------------------

WORDS = ("file function test build error module import change review patch branch commit "
         "config server client request response cache token shard kernel thread memory "
         "buffer stream parser schema format output input value result check update").split()


def tool_schemas(n=14, seed=7):
    rng = random.Random(seed)
    names = ["bash", "read", "write", "edit", "glob", "grep", "list", "webfetch", "todowrite",
             "todoread", "task", "patch", "lsp_diagnostics", "lsp_hover"][:n]
    tools = []
    for name in names:
        props = {}
        for k in range(rng.randint(2, 5)):
            pn = f"{rng.choice(WORDS)}_{k}"
            props[pn] = {"type": rng.choice(["string", "integer", "boolean"]),
                         "description": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))}
        desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90)))
        tools.append({"name": name, "description": desc,
                      "parameters": {"type": "object", "properties": props,
                                     "required": list(props)[:1]}})
    return tools


def system_text(n_words, seed=3):
    rng = random.Random(seed)
    lines = ["You are opencode, an interactive CLI agent that helps users with software "
             "engineering tasks. Use the instructions below and the tools available to you."]
    while sum(len(x.split()) for x in lines) < n_words:
        lines.append("- " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + ".")
    return "\n".join(lines)


def prompt_tokens(port, model, system, tools):
    """prompt tokens of a one-token chat request with this system prompt and tools, as the
    model's chat template renders them (a template may leave the tools out)"""
    body = request_body("chat", model, system, tools, [{"role": "user", "content": "hi"}], 1)
    body.update(stream=False, ignore_eos=False)
    body.pop("stream_options")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["usage"]["prompt_tokens"]


def build_system(port, model, target):
    """(system text, tools, prompt tokens): the system text sized so that system prompt and
    tools, as the template renders them, come to about `target` tokens"""
    tools = tool_schemas()
    words = max(50, int(target * 0.5))
    got = None
    for _ in range(6):
        text = system_text(words)
        got = prompt_tokens(port, model, text, tools)
        if abs(got - target) < 0.03 * target:
            break
        words = max(50, int(words * target / max(got, 1)))
    return text, tools, got


def user_turn(agent, turn, rng):
    if turn == 0:
        return (f"Agent {agent}: in the repository, " +
                " ".join(rng.choice(WORDS) for _ in range(40)) + ". Start by reading the files.")
    return (f"<tool_result turn={turn}>" + " ".join(rng.choice(WORDS) for _ in range(45)) +
            "</tool_result> Continue.")


# ---- one streamed request per API -------------------------------------------------------------

def post_stream(port, path, body, timeout=900):
    """POST, read the SSE stream; returns (ttft_s, text, usage dict, timings dict, error,
    gaps): gaps are the seconds between successive streamed pieces of text (inter-token
    latency as the client sees it)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    ttft, text, usage, timings, err = None, [], {}, {}, None
    gaps, t_last = [], None
    try:
        c.request("POST", path, body=json.dumps(body),
                  headers={"Content-Type": "application/json", "x-api-key": "none",
                           "anthropic-version": "2023-06-01"})
        r = c.getresponse()
        if r.status != 200:
            return None, "", {}, {}, f"HTTP {r.status}: {r.read()[:300]!r}", []
        for raw in r:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj and obj.get("type") != "message_delta":
                err = json.dumps(obj["error"])[:300]
                break
            piece, extra = "", ""
            if path.endswith("/chat/completions"):
                for ch in obj.get("choices") or []:
                    d = ch.get("delta") or {}
                    piece += d.get("content") or ""
                    # a model's first output may be reasoning or a tool call (a random-weights
                    # bench model's often is): any generated delta counts for TTFT and ITL
                    extra += (d.get("reasoning_content") or "") + \
                        "".join(json.dumps(tc) for tc in d.get("tool_calls") or [])
                if obj.get("usage"):
                    usage = obj["usage"]
                if obj.get("timings"):
                    timings = obj["timings"]
            else:
                t = obj.get("type")
                if t == "content_block_delta":
                    d = obj.get("delta") or {}
                    piece = d.get("text") or d.get("thinking") or d.get("partial_json") or ""
                elif t == "content_block_start" and \
                        (obj.get("content_block") or {}).get("type") == "tool_use":
                    extra = json.dumps(obj["content_block"])
                elif t == "message_start":
                    usage.update((obj.get("message") or {}).get("usage") or {})
                elif t == "message_delta":
                    usage.update({k: v for k, v in (obj.get("usage") or {}).items()
                                  if v is not None})
                if obj.get("timings"):
                    timings = obj["timings"]
            if piece or extra:
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - t_last)
                t_last = now
                text.append(piece)  # the history keeps the answer's text only
    except (OSError, http.client.HTTPException, ValueError) as e:
        err = repr(e)[:300]
    finally:
        c.close()
    return ttft, "".join(text), usage, timings, err, gaps


def request_body(api, model, system, tools, history, max_tokens):
    if api == "chat":
        return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": system}] + history,
                "tools": [{"type": "function", "function": t} for t in tools]}
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "system": system, "messages": history,
            "tools": [{"name": t["name"], "description": t["description"],
                       "input_schema": t["parameters"]} for t in tools]}


def cache_counts(api, usage, timings):
    """(prompt tokens, of them from cache) of one response"""
    if api == "chat":
        prompt = usage.get("prompt_tokens")
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    else:
        cached = usage.get("cache_read_input_tokens")
        prompt = (usage.get("input_tokens") or 0) + (cached or 0) if usage else None
    if (cached is None or prompt is None) and timings:
        cached = timings.get("cache_n", 0)
        prompt = cached + timings.get("prompt_n", 0)
    return prompt or 0, cached or 0


def run_swarm(port, model, api, args, system, tools):
    path = "/v1/chat/completions" if api == "chat" else "/v1/messages"
    results = [[None] * args.turns for _ in range(args.agents)]
    errors = []
    out_tokens = [0]
    all_gaps = []
    lock = threading.Lock()

    def agent(a):
        rng = random.Random(1000 + a)
        history = []
        for turn in range(args.turns):
            history.append({"role": "user", "content": user_turn(a, turn, rng)})
            body = request_body(api, model, system, tools, history, args.max_tokens)
            ttft, text, usage, timings, err, gaps = post_stream(port, path, body)
            if err is not None or ttft is None:
                with lock:
                    errors.append(f"agent {a} turn {turn}: {err or 'no text'}")
                return
            prompt, cached = cache_counts(api, usage, timings)
            n_out = usage.get("completion_tokens") or usage.get("output_tokens") or 0
            with lock:
                out_tokens[0] += n_out
                all_gaps.extend(gaps)
            results[a][turn] = {"ttft": ttft, "prompt": prompt, "cached": cached, "out": n_out}
            history.append({"role": "assistant", "content": text})

    t0 = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(a,)) for a in range(args.agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    per_turn = []
    for turn in range(args.turns):
        xs = sorted(r[turn]["ttft"] for r in results if r[turn] is not None)
        per_turn.append({"p50": statistics.median(xs) if xs else None,
                         "p99": xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else None,
                         "n": len(xs)})
    prompt = sum(r[t]["prompt"] for r in results for t in range(args.turns) if r[t])
    cached = sum(r[t]["cached"] for r in results for t in range(args.turns) if r[t])
    later_p = sum(r[t]["prompt"] for r in results for t in range(1, args.turns) if r[t])
    later_c = sum(r[t]["cached"] for r in results for t in range(1, args.turns) if r[t])
    all_gaps.sort()
    ttft_all = sorted(r[t]["ttft"] for r in results for t in range(args.turns) if r[t])
    itl = {"p50": all_gaps[len(all_gaps) // 2] if all_gaps else None,
           "p99": all_gaps[min(len(all_gaps) - 1, int(0.99 * len(all_gaps)))] if all_gaps else None,
           "max": all_gaps[-1] if all_gaps else None}
    return {"api": api, "wall_s": wall, "out_tokens": out_tokens[0], "itl": itl,
            "tok_s": out_tokens[0] / wall if wall > 0 else None, "ttft": per_turn,
            "ttft_all": ttft_all,
            "prompt_tokens": prompt, "cached_tokens": cached,
            "hit_rate": cached / prompt if prompt else None,
            "hit_rate_after_turn1": later_c / later_p if later_p else None,
            "errors": errors}


# ---- servers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def server(name, cmd, port, log_path, timeout=600):
    log(f"starting {name}: {shlex.join(map(str, cmd))}")
    lf = open(log_path, "w")
    p = subprocess.Popen([str(c) for c in cmd], stdout=lf, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        t_end = time.monotonic() + timeout
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}); see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > t_end:
                raise RuntimeError(f"{name} not ready after {timeout} s; see {log_path}")
            time.sleep(0.25)
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        lf.close()


def save_partial(args, rows, sys_tokens):
    """the rows so far (a long run cut short keeps what it measured)"""
    if args.json:
        with open(args.json + ".partial", "w") as f:
            json.dump({"rows": rows, "system_tokens": sys_tokens}, f, indent=1)


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def markdown(rows, args, sys_tokens):
    head = "| engine | API | " + " | ".join(f"TTFT t{t + 1} p50 / p99 (s)" for t in range(args.turns)) \
        + " | ITL p50 / p99 / max (ms) | output tok/s | cache hit (all) | cache hit (turns 2+) | errors |"
    sep = "|" + "---|" * (args.turns + 7)
    out = [head, sep]
    for r in rows:
        cells = [f"{fmt(x['p50'])} / {fmt(x['p99'])}" for x in r["ttft"]]
        itl = r.get("itl") or {}
        ms = [None if itl.get(k) is None else 1e3 * itl[k] for k in ("p50", "p99", "max")]
        out.append(f"| {r['engine']} | {r['api']} | " + " | ".join(cells) +
                   f" | {fmt(ms[0], 0)} / {fmt(ms[1], 0)} / {fmt(ms[2], 0)}"
                   f" | {fmt(r['tok_s'], 1)} | {fmt(r['hit_rate'] and 100 * r['hit_rate'], 1)}% | "
                   f"{fmt(r['hit_rate_after_turn1'] and 100 * r['hit_rate_after_turn1'], 1)}% | "
                   f"{len(r['errors'])} |")
    by = {}
    for r in rows:
        by.setdefault(r["api"], {})[r["engine"]] = r
    ratios = []
    for api, d in by.items():
        if "Tandem" in d and "llama.cpp" in d and d["llama.cpp"]["tok_s"]:
            ratios.append(f"{api}: Tandem / llama.cpp output tok/s = "
                          f"{d['Tandem']['tok_s'] / d['llama.cpp']['tok_s']:.2f}x")
    return "\n".join(out + [""] + ratios)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=pathlib.Path,
                    default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--agents", type=int, default=12)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--system-tokens", type=int, default=6000)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--apis", default="chat,messages")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tandem-bin", type=pathlib.Path, default=ROOT / "build" / "api" / "tandem")
    ap.add_argument("--tandem-args", default="")
    ap.add_argument("--llama-server-bin", type=pathlib.Path)
    ap.add_argument("--llama-args", default="")
    ap.add_argument("--skip-tandem", action="store_true")
    ap.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "build" / "bench-swarm")
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    apis = args.apis.split(",")
    model_name = args.model.stem
    rows = []
    system = tools = None
    sys_tokens = None
    if not args.skip_tandem:
        port = free_port()
        cmd = [args.tandem_bin, "serve", "--model", args.model, "--host", "127.0.0.1", "--port",
               port, "--threads", args.threads, *shlex.split(args.tandem_args)]
        with server("tandem serve", cmd, port, args.out_dir / "tandem.log"):
            system, tools, sys_tokens = build_system(port, model_name, args.system_tokens)
            log(f"system prompt + tools: {sys_tokens} tokens")
            for api in apis:
                r = run_swarm(port, model_name, api, args, system, tools)
                r["engine"] = "Tandem" + (f" `{args.tandem_args}`" if args.tandem_args else "")
                rows.append(r)
                save_partial(args, rows, sys_tokens)
                log(f"Tandem {api}: {fmt(r['tok_s'], 1)} tok/s, hit {fmt(r['hit_rate'], 3)}, "
                    f"errors {len(r['errors'])}")
    if args.llama_server_bin:
        if system is None:
            raise SystemExit("swarm: the system prompt is sized with Tandem's /tokenize; "
                             "run without --skip-tandem")
        per_agent = sys_tokens + args.turns * (args.max_tokens + 120) + 512
        port = free_port()
        cmd = [args.llama_server_bin, "-m", args.model, "--host", "127.0.0.1", "--port", port,
               "-t", args.threads, "-tb", args.threads, "-np", args.agents,
               "-c", args.agents * per_agent, "--jinja", *shlex.split(args.llama_args)]
        with server("llama-server", cmd, port, args.out_dir / "llama.log"):
            for api in apis:
                r = run_swarm(port, model_name, api, args, system, tools)
                r["engine"] = "llama.cpp"
                rows.append(r)
                save_partial(args, rows, sys_tokens)
                log(f"llama.cpp {api}: {fmt(r['tok_s'], 1)} tok/s, hit {fmt(r['hit_rate'], 3)}, "
                    f"errors {len(r['errors'])}")
    md = "\n".join([
        f"`{shlex.join(['bench/swarm.py', *sys.argv[1:]])}`",
        "",
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {os.cpu_count()} CPUs; model "
        f"{args.model.name}; {args.agents} agents x {args.turns} turns, shared system prompt + "
        f"tools {sys_tokens} tokens, {args.max_tokens} tokens per answer (ignore_eos), "
        f"{args.threads} threads per server; 1-minute load at the end "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        markdown(rows, args, sys_tokens),
    ])
    print(md)
    if args.md:
        with open(args.md, "a") as f:
            f.write(md + "\n\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "system_tokens": sys_tokens, "args": {
                k: str(v) for k, v in vars(args).items()}}, f, indent=1)
    return 0 if all(not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
