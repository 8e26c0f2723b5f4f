#!/usr/bin/env python3
"""Engine-group layouts under an agent-shaped load (issue 14, item 6; docs/benchmarks.md).

    .venv/bin/python bench/layouts.py --layout a|b|c|d [--streams 4,16,32] [--turns 3]
        [--max-tokens 128] [--system-tokens 2048] [--model M.gguf] [--tls tcp]
        [--tandem-bin build/api/tandem] [--out-dir build/bench-layouts]
    .venv/bin/python bench/layouts.py --report [--out-dir ...] [--md OUT.md] [--plot OUT.png]

One run measures one layout (so each can be its own locked run) and writes
OUT_DIR/layout-X.json; --report merges the files into a markdown table, a JSON file and a
plot. Every layout spends the same two kernel threads: two `tandem shard` processes on
loopback (UCX over --tls), one thread each, driven by one `tandem serve`:

  a  one group of both shards (TP 2)
  b  two one-shard replicas, prefix-aware routing (--routing prefix)
  c  two one-shard replicas, round-robin (--routing round-robin)
  d  a prefill group and a decode group of one shard each

The load is bench/swarm.py's agent swarm (its request shapes, streaming client and
figures are imported, not copied): N conversations at once, all with the same system
prompt of about --system-tokens tokens as the chat template renders it, --turns turns each
(each turn after the previous answer), every answer exactly --max-tokens tokens
(ignore_eos). Each stream count gets fresh shards and a fresh server, so no level starts
with the previous level's cache. For layout d the run also reads the prefill group's KV
transfer counters (bytes put / seconds of put + flush) and, in the same run, `tandem
linkbench --local` on the same transport for comparison.
"""
import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import swarm  # noqa: E402  (the load and its figures)

LAYOUTS = {
    "a": "one group, TP 2 (2 shards)",
    "b": "2 replicas, prefix routing",
    "c": "2 replicas, round-robin",
    "d": "prefill + decode groups",
}


def log(msg):
    print(f"layouts: {msg}", file=sys.stderr, flush=True)


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def serve_args(layout, shards, tmp, a):
    """the `tandem serve` options that make the layout out of two running shards"""
    common = ["--ctx-size", str(a.ctx_size), "--kv-memory", a.kv_memory,
              "--max-running", "64"]
    if layout == "a":
        return ["--shards", ",".join(s.addr for s in shards), "--tp", "2", *common]
    if layout in ("b", "c"):
        groups = [{"name": f"r{k}", "shards": [s.addr]} for k, s in enumerate(shards)]
        routing = "prefix" if layout == "b" else "round-robin"
    else:
        groups = [{"name": "p", "role": "prefill", "shards": [shards[0].addr]},
                  {"name": "d", "role": "decode", "shards": [shards[1].addr]}]
        routing = "prefix"
    path = pathlib.Path(tmp) / f"cluster-{layout}.json"
    path.write_text(json.dumps({"groups": groups}))
    return ["--cluster", str(path), "--routing", routing, *common]


def linkbench(a):
    """`tandem linkbench --local` RMA put bandwidth on the same transport, 4 KiB-256 KiB
    (a disaggregated put is one layer's K or V of one block: 12 KiB for SmolLM2 in f16):
    [(bytes, GB/s)]"""
    out = subprocess.run([a.tandem_bin, "linkbench", "--local", "--tls", a.tls, "--json",
                          "--min-bytes", "4K", "--max-bytes", "256K", "--iters", "200"],
                         capture_output=True, text=True, timeout=600, check=True)
    return [(r["bytes"], r["gbps"]) for r in json.loads(out.stdout)["put_bw"]]


def run_layout(a):
    os.environ["TANDEM_BIN"] = str(a.tandem_bin)
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from dist_util import ShardProcess
    from serve_util import ServeProcess, metric_value, parse_metrics

    model_name = pathlib.Path(a.model).stem
    levels = []
    system = tools = sys_tokens = None
    tmp = tempfile.mkdtemp(prefix="tandem-layouts-")
    for n in a.streams:
        shards = [ShardProcess(a.model, tls=a.tls, threads=1) for _ in range(2)]
        srv = None
        try:
            srv = ServeProcess(a.model, *serve_args(a.layout, shards, tmp, a), threads=1,
                               ready_timeout=300)
            if system is None:
                system, tools, sys_tokens = swarm.build_system(srv.port, model_name,
                                                               a.system_tokens)
                log(f"system prompt + tools: {sys_tokens} tokens")
                # sizing the prompt cached it: restart so the first level starts cold too
                srv.stop()
                for s in shards:
                    s.stop()
                shards = [ShardProcess(a.model, tls=a.tls, threads=1) for _ in range(2)]
                srv = ServeProcess(a.model, *serve_args(a.layout, shards, tmp, a),
                                   threads=1, ready_timeout=300)
            sargs = types.SimpleNamespace(agents=n, turns=a.turns, max_tokens=a.max_tokens)
            load0 = os.getloadavg()[0]
            r = swarm.run_swarm(srv.port, model_name, "chat", sargs, system, tools)
            r.update(streams=n, load_start=load0, load_end=os.getloadavg()[0])
            if a.layout == "d":
                m = parse_metrics(srv.get("/metrics").text)
                r["kv_transfer"] = {
                    k: metric_value(m, f"tandem_kv_transfer_{k}_total", group="p")
                    for k in ("blocks", "bytes", "seconds")}
            levels.append(r)
            log(f"{a.layout} x{n}: {swarm.fmt(r['tok_s'], 1)} tok/s, "
                f"hit {swarm.fmt(r['hit_rate'], 3)}, errors {len(r['errors'])}")
        finally:
            if srv is not None:
                srv.stop()
            for s in shards:
                s.stop()
    out = {"layout": a.layout, "name": LAYOUTS[a.layout], "levels": levels,
           "system_tokens": sys_tokens, "model": pathlib.Path(a.model).name,
           "turns": a.turns, "max_tokens": a.max_tokens, "tls": a.tls,
           "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
           "command": " ".join(["bench/layouts.py", *sys.argv[1:]])}
    if a.layout == "d":
        out["linkbench"] = {"rma_put": linkbench(a)}
    path = pathlib.Path(a.out_dir) / f"layout-{a.layout}.json"
    path.write_text(json.dumps(out, indent=1))
    log(f"wrote {path}")
    return 0 if all(not r["errors"] for r in levels) else 1


def report(a):
    runs = []
    for k in LAYOUTS:
        p = pathlib.Path(a.out_dir) / f"layout-{k}.json"
        if p.exists():
            runs.append(json.loads(p.read_text()))
    if not runs:
        raise SystemExit(f"layouts: no layout-*.json in {a.out_dir}")
    md = ["| layout | streams | output tok/s | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) | "
          "worst gap (s) | cache hit | errors | load |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for run in runs:
        for r in run["levels"]:
            ttft = r.get("ttft_all") or []
            itl = r.get("itl") or {}
            row = {"layout": run["layout"], "name": run["name"], "streams": r["streams"],
                   "tok_s": r["tok_s"], "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
                   "itl_p50": itl.get("p50"), "itl_p99": itl.get("p99"), "itl_max": itl.get("max"),
                   "hit_rate": r["hit_rate"], "errors": len(r["errors"]),
                   "load": (r["load_start"], r["load_end"])}
            rows.append(row)
            ms = [None if x is None else 1e3 * x for x in (row["itl_p50"], row["itl_p99"])]
            md.append(f"| ({run['layout']}) {run['name']} | {r['streams']} | "
                      f"{swarm.fmt(row['tok_s'], 1)} | {swarm.fmt(row['ttft_p50'])} / "
                      f"{swarm.fmt(row['ttft_p99'])} | {swarm.fmt(ms[0], 0)} / "
                      f"{swarm.fmt(ms[1], 0)} | {swarm.fmt(row['itl_max'])} | "
                      f"{swarm.fmt(row['hit_rate'] and 100 * row['hit_rate'], 1)}% | "
                      f"{row['errors']} | {row['load'][0]:.1f}-{row['load'][1]:.1f} |")
    notes = []
    d = next((x for x in runs if x["layout"] == "d"), None)
    if d is not None:
        for r in d["levels"]:
            kv = r.get("kv_transfer") or {}
            if kv.get("seconds"):
                notes.append(f"- (d) at {r['streams']} streams: {kv['blocks']:.0f} blocks, "
                             f"{kv['bytes'] / 1e6:.1f} MB put in {kv['seconds']:.2f} s of put + "
                             f"flush: {kv['bytes'] / kv['seconds'] / 1e9:.3f} GB/s")
        lb = (d.get("linkbench") or {}).get("rma_put") or []
        if lb:
            notes.append(f"- `tandem linkbench --local --tls {d['tls']} --json --min-bytes 4K "
                         "--max-bytes 256K --iters 200` in the same "
                         "run, RMA put bandwidth: " +
                         ", ".join(f"{b // 1024 if b >= 1024 else b} {'KiB' if b >= 1024 else 'B'}"
                                   f" {g:.3f} GB/s" for b, g in lb if b >= 4096))
    head = runs[0]
    text = "\n".join([
        f"Model {head['model']}; {head['turns']}-turn conversations, shared system prompt + "
        f"tools {head['system_tokens']} tokens, {head['max_tokens']} tokens per answer "
        f"(ignore_eos); UCX over {head['tls']}; " +
        "; ".join(f"({x['layout']}) {x['date']}" for x in runs) + ".", "",
        *md, "", *notes])
    print(text)
    if a.md:
        pathlib.Path(a.md).write_text(text + "\n")
    pathlib.Path(a.out_dir, "layouts.json").write_text(json.dumps(
        {"rows": rows, "runs": [{k: v for k, v in x.items() if k != "levels"} for x in runs]},
        indent=1))
    if a.plot:
        plot(rows, a.plot, head)
    return 0


def plot(rows, path, head):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for key in LAYOUTS:
        rs = sorted((r for r in rows if r["layout"] == key), key=lambda r: r["streams"])
        if not rs:
            continue
        xs = [r["streams"] for r in rs]
        label = f"({key}) {LAYOUTS[key]}"
        ax[0].plot(xs, [r["tok_s"] for r in rs], "o-", label=label)
        ax[1].plot(xs, [r["ttft_p50"] for r in rs], "o-", label=label)
        ax[2].plot(xs, [1e3 * r["itl_p99"] for r in rs], "o-", label=label)
    for x, t in zip(ax, ("aggregate output tok/s", "TTFT p50 (s)", "ITL p99 (ms)")):
        x.set_xlabel("concurrent conversations")
        x.set_title(t)
        x.set_xticks([4, 16, 32])
        x.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.suptitle(f"Engine-group layouts, {head['model']}, 2 kernel threads in all "
                 f"({head['max_tokens']}-token answers, {head['system_tokens']}-token shared "
                 "prompt)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", choices=sorted(LAYOUTS))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--streams", default="4,16,32")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--system-tokens", type=int, default=2048)
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--kv-memory", default="1G")
    ap.add_argument("--tls", default="tcp")
    ap.add_argument("--tandem-bin", default=str(ROOT / "build" / "api" / "tandem"))
    ap.add_argument("--out-dir", default=str(ROOT / "build" / "bench-layouts"))
    ap.add_argument("--md")
    ap.add_argument("--plot")
    a = ap.parse_args()
    a.streams = [int(x) for x in a.streams.split(",")]
    pathlib.Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    if a.report:
        return report(a)
    if not a.layout:
        ap.error("--layout or --report")
    t0 = time.monotonic()
    rc = run_layout(a)
    log(f"layout {a.layout}: {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
