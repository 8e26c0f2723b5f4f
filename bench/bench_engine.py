#!/usr/bin/env python3
"""Prefill and decode speed of Tandem against llama.cpp on the same GGUF files, same run.

    .venv/bin/python bench/bench_engine.py [--models A.gguf,B.gguf] [--device cpu|cuda[:N]]
        [--batches 1,16] [--threads 1,2] [--prompt-tokens 256] [--gen 64] [--reps 3]
        [--llama-bench PATH [--llama-batched-bench PATH]] [--bandwidth-gbs X]
        [--md OUT.md] [--json OUT.json] [--build BUILD_DIR | --tandem PATH] [--skip-llama]
        [--stat best|median] [--max-load L [--load-wait S]]

For each model, thread count and batch size B (sequences decoded together):
- Tandem, B = 1: `tandem generate --prompt-file` with a fixed prompt of --prompt-tokens tokens
  (counted with `tandem tokenize`), greedy, --gen tokens, EOS ignored; prefill and decode rates
  are read from its summary line (model loading excluded).
- Tandem, B > 1: `tandem eval --prompts-file` with B different prompts of random token ids,
  timed from outside and differenced, since eval prints no timings: t0 = B one-token prompts,
  --greedy 1 (load + one small step); t1 = B prompts of P tokens, --greedy 1 (load + the
  prefill step); t2 = the same with --greedy G+1 (+ G decode steps of B tokens each).
  Prefill = B P / (t1 - t0), decode = B G / (t2 - t1), each t the best of --reps. (--eval-all
  measures B = 1 this way too.) On a GPU, CUDA_MODULE_LOADING=EAGER moves kernel loading into
  the load that the differences cancel.
- llama.cpp, native binaries (--llama-bench PATH, built by bench/build_llamacpp.sh):
  B = 1 from `llama-bench -p P -n G -d 0,P` (prefill pp P at depth 0, decode tg G at depth
  P, i.e. after a P-token prompt like Tandem's); B > 1 from `llama-batched-bench -npp P -ntg G
  -npl B` (B prompts of P random tokens prefilled, then G steps decoding B tokens). Both with
  -ngl (99 on a GPU, 0 on the CPU) and the same thread count; best sample of --reps.
  Without --llama-bench, on the CPU: llama-cpp-python as before (B = 1 only), in a
  subprocess, so that a crash of the library is reported instead of ending the run.
- Bytes of weights read per decoded token, from the GGUF (gguf package): every tensor except
  the experts and token_embd, plus n_expert_used / n_expert of the expert tensors, plus one
  token_embd row (the whole matrix when it is also the output head). For B > 1, per decode
  step: the expert tensors count for the share of experts that B tokens select, assuming
  uniform routing (n_expert (1 - (1 - k/n_expert)^B) distinct experts per layer).
- Bandwidth share: decode tok/s x bytes per token / read bandwidth. The bandwidth is
  --bandwidth-gbs (or --bandwidth-json, gpu_membw.py's output), else measured in the same
  run: `tandem-membw` (same thread count) on the CPU, bench/gpu_membw.py (torch
  device-to-device copy, (bytes read + written) / time) on a GPU.
Every configuration runs --reps times; on the CPU the engines alternate rep by rep so a burst
of other work on a shared machine hits both; the best rep counts (least disturbed), or with
--stat median the median rep (rates: median of the reps' rates; eval differencing: median of
each wall time). --max-load L: before every timed tool run (each rep of each engine, each eval,
tandem-membw), wait while the machine is busy: go when the 1-minute load average is <= L, or
when a 5 s sample of /proc/stat shows other processes using <= L CPUs (the load average still
carries this script's own previous run for a minute); else poll every 30 s, up to --load-wait
seconds (default 1200), then run anyway. The load average and the CPUs busy at each start go
to the JSON and their range under the table. Prints a markdown table (for docs/benchmarks.md)
and JSON (one line per row, all of it with --json).
"""
import argparse
import json
import math
import os
import pathlib
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROMPT_SEED = (
    "The quick brown fox jumps over the lazy dog while the engineers measure how fast a "
    "language model can read its weights from memory. def add(a, b):\n    return a + b\n"
)
NAN = float("nan")


def log(msg):
    print(f"bench_engine: {msg}", file=sys.stderr, flush=True)


# ---- statistics and a quiet machine -----------------------------------------------------------
STAT = {"stat": "best"}


def agg_rate(xs):
    """best (max) or median of rates"""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return NAN
    return max(xs) if STAT["stat"] == "best" else statistics.median(xs)


def agg_time(xs):
    """best (min) or median of wall times"""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return NAN
    return min(xs) if STAT["stat"] == "best" else statistics.median(xs)


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]), idle


def busy_cpus(seconds):
    """CPUs in use (by everything: this script is idle meanwhile) over `seconds`"""
    t0, i0 = cpu_times()
    time.sleep(seconds)
    t1, i1 = cpu_times()
    dt = t1 - t0
    return (os.cpu_count() or 1) * (dt - (i1 - i0)) / dt if dt > 0 else NAN


LOADS = []  # (what, 1-min load average, CPUs busy or None, seconds waited) per timed run


class Quiet:
    def __init__(self, max_load, wait_s):
        self.max_load, self.wait_s = max_load, wait_s

    def __call__(self, what):
        """waits (see --max-load) and records the load this run starts with"""
        if self.max_load is None:
            LOADS.append((what, os.getloadavg()[0], None, 0.0))
            return
        t0 = time.time()
        while True:
            la = os.getloadavg()[0]
            busy = None
            if la <= self.max_load:
                break
            busy = busy_cpus(5.0)
            if busy <= self.max_load:
                break
            if time.time() - t0 > self.wait_s:
                log(f"{what}: still busy after {self.wait_s} s (load {la:.2f}, {busy:.2f} CPUs "
                    "in use): running anyway")
                break
            log(f"{what}: load {la:.2f}, {busy:.2f} CPUs in use by others: waiting")
            time.sleep(25.0)
        LOADS.append((what, os.getloadavg()[0], busy, time.time() - t0))


QUIET = Quiet(None, 0)


def run(cmd, env=None, timeout=None, check=True):
    cmd = [str(c) for c in cmd]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p, wall


# ---- the model file ---------------------------------------------------------------------------
def gguf_facts(path):
    """weights read per decoded token from the GGUF's tensor table (gguf package)"""
    import gguf
    r = gguf.GGUFReader(path)

    def field(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    n_expert = int(field(f"{arch}.expert_count", 0) or 0)
    n_used = int(field(f"{arch}.expert_used_count", 0) or 0)
    dense = expert = embd = 0
    n_vocab = None
    names = set()
    types = {}
    for t in r.tensors:
        nb = int(t.n_bytes)
        names.add(t.name)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + nb
        if t.name == "token_embd.weight":
            embd = nb
            n_vocab = int(t.shape[-1])  # ne = [n_embd, n_vocab]
        elif "_exps." in t.name:
            expert += nb
        else:
            dense += nb
    tied = "output.weight" not in names
    embd_row = embd / n_vocab if n_vocab else 0
    return {
        "arch": arch, "n_expert": n_expert, "n_expert_used": n_used, "n_vocab": n_vocab,
        "tied": tied, "dense_bytes": dense, "expert_bytes": expert, "embd_bytes": embd,
        "embd_row_bytes": embd_row, "bytes_per_type": types, "file_bytes": os.path.getsize(path),
    }


def bytes_per_step(f, batch):
    """weights read by one decode step of `batch` tokens (uniform routing for MoE)"""
    b = f["dense_bytes"] + (f["embd_bytes"] if f["tied"] else 0) + batch * f["embd_row_bytes"]
    if f["n_expert"] and f["n_expert_used"]:
        k, n = f["n_expert_used"], f["n_expert"]
        distinct = n * (1.0 - (1.0 - k / n) ** batch)
        b += f["expert_bytes"] * distinct / n
    else:
        b += f["expert_bytes"]
    return b


# ---- Tandem -----------------------------------------------------------------------------------
class Tandem:
    def __init__(self, binary, device, kv_type, timeout, extra=(), chunk=0):
        self.bin, self.device, self.kv_type, self.timeout = binary, device, kv_type, timeout
        self.extra, self.chunk = list(extra), chunk
        self.env = dict(os.environ)
        if device.startswith("cuda"):
            self.env.setdefault("CUDA_MODULE_LOADING", "EAGER")

    def common(self, threads):
        a = ["--device", self.device]
        if self.kv_type:
            a += ["--kv-type", self.kv_type]
        if threads:
            a += ["--threads", threads]
        return a + self.extra

    def version(self):
        p, _ = run([self.bin, "--version"], check=False)
        return p.stdout.strip().splitlines()[0] if p.stdout else "?"

    def count_tokens(self, model, text):
        p, _ = run([self.bin, "tokenize", "--model", model, "--text", text, "--add-special"])
        return len(json.loads(p.stdout)["ids"])

    def make_prompt_text(self, model, n_tokens):
        """text of exactly (or just under) n_tokens tokens for this model's tokenizer"""
        text = PROMPT_SEED
        while self.count_tokens(model, text) < n_tokens:
            text += PROMPT_SEED
        lo, hi = 1, len(text)  # largest prefix with <= n_tokens tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count_tokens(model, text[:mid]) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo], self.count_tokens(model, text[:lo])

    def generate(self, model, prompt_file, threads, n_gen, n_prompt):
        p, wall = run([self.bin, "generate", "--model", model, "--prompt-file", prompt_file,
                       "--greedy", "--ignore-eos", "--max-tokens", n_gen,
                       "--batch", max(512, n_prompt), "--quiet"] + self.common(threads),
                      env=self.env, timeout=self.timeout)
        m = re.search(r"(\d+) prompt tokens in ([\d.]+) s \(([\d.]+) tok/s\), (\d+) generated in "
                      r"([\d.]+) s \(([\d.]+) tok/s\)", p.stderr)
        if m is None:
            raise RuntimeError(f"no summary from tandem generate:\n{p.stderr}")
        return {"n_prompt": int(m.group(1)), "prefill": float(m.group(3)),
                "decode": float(m.group(6)), "wall_s": wall}

    def eval_wall(self, model, prompts, greedy, threads):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            for ids in prompts:
                f.write(",".join(map(str, ids)) + "\n")
            path = f.name
        try:
            p, wall = run([self.bin, "eval", "--model", model, "--prompts-file", path,
                           "--greedy", greedy] + (["--chunk", self.chunk] if self.chunk else [])
                          + self.common(threads),
                          env=self.env, timeout=self.timeout)
        finally:
            os.unlink(path)
        out = json.loads(p.stdout)
        got = [len(s["greedy"]) for s in out["sequences"]]
        if got != [greedy] * len(prompts):
            raise RuntimeError(f"tandem eval returned {got} greedy tokens, expected {greedy}")
        # the device line, and on a GPU the CUDA graph counters
        return wall, [ln for ln in p.stderr.splitlines() if ln.startswith("tandem eval:")][:4]


def random_prompts(batch, n_tokens, n_vocab, seed):
    import random
    rng = random.Random(seed)
    hi = max(100, min(n_vocab or 32000, 32000))
    return [[rng.randrange(10, hi) for _ in range(n_tokens)] for _ in range(batch)]


def tandem_eval_rates(td, model, facts, batch, n_prompt, n_gen, threads, reps):
    """prefill and decode rates of `batch` sequences, by differencing eval wall times"""
    big = random_prompts(batch, n_prompt, facts["n_vocab"], 1000 + batch)
    small = [[ids[0]] for ids in big]
    t0, t1, t2 = [], [], []
    note = None
    for _ in range(reps):
        QUIET(f"tandem eval B={batch} load")
        t0.append(td.eval_wall(model, small, 1, threads)[0])
        QUIET(f"tandem eval B={batch} prefill")
        t1.append(td.eval_wall(model, big, 1, threads)[0])
        QUIET(f"tandem eval B={batch} decode")
        w, note = td.eval_wall(model, big, n_gen + 1, threads)  # note: the decoding run's
        t2.append(w)
    a, b, c = agg_time(t0), agg_time(t1), agg_time(t2)
    pre = batch * n_prompt / (b - a) if b > a else NAN
    dec = batch * n_gen / (c - b) if c > b else NAN
    return {"prefill": pre, "decode": dec, "n_prompt": n_prompt,
            "t_load_s": t0, "t_prefill_s": t1, "t_decode_s": t2, "eval_stderr": note}


# ---- llama.cpp --------------------------------------------------------------------------------
def llama_common(args, threads):
    a = ["-ngl", args.ngl]
    if threads:
        a += ["-t", threads]
    if args.kv_type:
        a += ["-ctk", args.kv_type, "-ctv", args.kv_type]
    return a + shlex.split(args.llama_args)


def llama_bench(args, model, n_prompt, n_gen, threads, reps):
    cmd = [args.llama_bench, "-m", model, "-p", n_prompt, "-n", n_gen, "-d", f"0,{n_prompt}",
           "-r", reps, "-o", "json"] + llama_common(args, threads)
    p, wall = run(cmd, timeout=args.timeout)
    res = json.loads(p.stdout)

    def best(sel):
        return agg_rate([x for r in res if sel(r) for x in (r.get("samples_ts") or [r["avg_ts"]])])
    pre = best(lambda r: r["n_prompt"] == n_prompt and r["n_gen"] == 0 and r.get("n_depth", 0) == 0)
    dec = best(lambda r: r["n_prompt"] == 0 and r["n_gen"] == n_gen
               and r.get("n_depth", 0) == n_prompt)
    r0 = res[0] if res else {}
    return {"prefill": pre, "decode": dec, "tool": "llama-bench",
            "build_commit": r0.get("build_commit"), "gpu_info": r0.get("gpu_info"),
            "cpu_info": r0.get("cpu_info"), "backends": r0.get("backends"),
            "wall_s": wall, "command": shlex.join(map(str, cmd))}


def llama_batched_bench(args, model, batches, n_prompt, n_gen, threads, reps):
    n_ctx = max(batches) * (n_prompt + n_gen) + 256
    npl = ",".join(str(b) for b in batches for _ in range(reps))
    QUIET("llama-batched-bench")
    cmd = [args.llama_batched_bench, "-m", model, "-c", n_ctx, "-b", 2048, "-ub", 512,
           "-npp", n_prompt, "-ntg", n_gen, "-npl", npl, "--output-format", "jsonl"]
    cmd += llama_common(args, threads)
    if threads:
        cmd += ["-tb", threads]
    p, wall = run(cmd, timeout=args.timeout)
    out = {}
    for line in (p.stdout + "\n" + p.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and "speed_pp" in line:
            r = json.loads(line)
            o = out.setdefault(r["pl"], {"pp": [], "tg": [], "tool": "llama-batched-bench",
                                         "wall_s": wall, "command": shlex.join(map(str, cmd))})
            o["pp"].append(r["speed_pp"])
            o["tg"].append(r["speed_tg"])
    for o in out.values():
        o["prefill"], o["decode"] = agg_rate(o["pp"]), agg_rate(o["tg"])
    if not out:
        raise RuntimeError(f"no results from llama-batched-bench:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return out


LLAMA_PY = r"""
import json, sys, time
import llama_cpp
model, threads, n_gen, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = llama_cpp.Llama(model_path=model, n_ctx=max(2048, len(ids) + n_gen + 16),
                      n_batch=max(512, len(ids)), n_threads=threads, n_threads_batch=threads,
                      verbose=False)
llm.reset()
t0 = time.perf_counter(); llm.eval(ids); t1 = time.perf_counter()
for i in range(n_gen):  # decode cost does not depend on which token is fed
    llm.eval([ids[i % len(ids)]])
t2 = time.perf_counter()
print(json.dumps({"prefill": len(ids) / (t1 - t0), "decode": n_gen / (t2 - t1)}))
"""


def llama_python(args, model, ids, threads, n_gen):
    p, wall = run([sys.executable, "-c", LLAMA_PY, model, threads or os.cpu_count(), n_gen,
                   json.dumps(ids)], timeout=args.timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"llama-cpp-python exited {p.returncode} "
                           f"({'crashed' if p.returncode < 0 else 'error'}): {p.stderr[-500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(tool="llama-cpp-python", wall_s=wall)
    return r


# ---- bandwidth --------------------------------------------------------------------------------
_gpu_bw = {}


def gpu_bw_note(r):
    return (f"bench/gpu_membw.py on {r['device']}: a {r['buffer_bytes'] >> 20} MiB device copy "
            f"moves {r['read_gb_per_s']:.0f} GB/s read + written (copy rate "
            f"{r['copy_gb_per_s']:.0f} GB/s; read-only sum {r['read_only_gb_per_s']:.0f} GB/s)")


def bandwidth(args, threads):
    if args.bandwidth_gbs:
        return args.bandwidth_gbs, "--bandwidth-gbs"
    if args.bandwidth_json:
        r = json.load(open(args.bandwidth_json))
        return r["read_gb_per_s"], gpu_bw_note(r)
    if args.device == "cpu":
        if not args.membw or not pathlib.Path(args.membw).exists():
            return NAN, "no tandem-membw"
        QUIET("tandem-membw")
        p, _ = run([args.membw, "--threads", threads or os.cpu_count(), "--mib", 1024, "--reps", 5])
        return json.loads(p.stdout)["read_gb_per_s"], f"tandem-membw, {threads or os.cpu_count()} threads"
    if "bw" not in _gpu_bw:
        dev = args.device if ":" in args.device else "cuda:0"
        p, _ = run([sys.executable, ROOT / "bench" / "gpu_membw.py", "--device", dev, "--json"],
                   check=False, timeout=300)
        if p.returncode == 0:
            r = json.loads(p.stdout)
            _gpu_bw["bw"] = (r["read_gb_per_s"], gpu_bw_note(r))
        else:
            log(f"gpu_membw.py failed: {p.stderr.strip()[-300:]}")
            _gpu_bw["bw"] = (NAN, "not measured")
    return _gpu_bw["bw"]


def device_name(args):
    if args.device.startswith("cuda"):
        try:
            p, _ = run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                        "--format=csv,noheader"], check=False, timeout=30)
            if p.returncode == 0 and p.stdout.strip():
                return p.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "GPU (nvidia-smi not available)"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


# ---- main -------------------------------------------------------------------------------------
def clean(x):
    """NaN -> None, so the JSON is strict"""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def write_json(path, meta, rows):
    with open(path, "w") as f:
        json.dump(clean({"meta": meta, "rows": rows}), f, indent=1, default=str)
        f.write("\n")


def fmt(x, nd=1, pct=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.{nd}f}"


def ratio(a, b):
    return a / b if a and b and not math.isnan(a) and not math.isnan(b) and b > 0 else NAN


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--models", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], passed to tandem")
    ap.add_argument("--kv-type", help="f32|f16|q8_0 for tandem, -ctk/-ctv for llama.cpp "
                    "(default: each engine's own: Tandem f16 on a GPU, f32 on the CPU; llama.cpp f16)")
    ap.add_argument("--threads", help="comma list (default 1,2 on the CPU; on a GPU each "
                    "engine's default)")
    ap.add_argument("--batches", default="1,16", help="sequences decoded together (default 1,16)")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eval-all", action="store_true",
                    help="measure Tandem's batch 1 with eval differencing too (not generate)")
    ap.add_argument("--tandem-chunk", type=int, default=0,
                    help="tandem eval --chunk: prefill tokens per sequence per step (default: "
                    "the whole prompt, all sequences in one step)")
    ap.add_argument("--tandem-args", default="",
                    help="extra arguments for tandem generate and eval")
    ap.add_argument("--build", default=str(ROOT / "build"),
                    help="build folder holding api/tandem and bench/tandem-membw")
    ap.add_argument("--tandem", help="the tandem binary (default BUILD/api/tandem)")
    ap.add_argument("--membw", help="tandem-membw (default BUILD/bench/tandem-membw)")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (the peer)")
    ap.add_argument("--llama-batched-bench",
                    help="llama-batched-bench for batches > 1 (default: next to --llama-bench)")
    ap.add_argument("--ngl", type=int, help="llama.cpp -ngl (default 99 on a GPU, 0 on the CPU)")
    ap.add_argument("--llama-args", default="", help="extra arguments for llama-bench and "
                    "llama-batched-bench, e.g. '-fa 1'")
    ap.add_argument("--skip-llama", action="store_true", help="Tandem only (ratios read n/a)")
    ap.add_argument("--bandwidth-gbs", type=float,
                    help="read bandwidth for the roofline (default: measured in this run)")
    ap.add_argument("--bandwidth-json", help="bench/gpu_membw.py --json output measured "
                    "earlier in the same session (instead of measuring again)")
    ap.add_argument("--alternate", choices=["auto", "yes", "no"], default="auto",
                    help="alternate the engines rep by rep (auto: on the CPU)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per tool run")
    ap.add_argument("--stat", choices=["best", "median"], default="best",
                    help="which rep counts: the best (default) or the median")
    ap.add_argument("--max-load", type=float,
                    help="wait before each timed run while the machine is busier than this "
                    "(1-minute load average, else CPUs in use over 5 s; see above)")
    ap.add_argument("--load-wait", type=int, default=1200,
                    help="longest wait for --max-load, seconds (then run anyway)")
    ap.add_argument("--md", help="append the markdown table to this file")
    ap.add_argument("--json", help="write all rows and the run's facts to this file")
    args = ap.parse_args()
    STAT["stat"] = args.stat
    global QUIET
    QUIET = Quiet(args.max_load, args.load_wait)

    build = pathlib.Path(args.build).resolve()
    tandem_bin = pathlib.Path(args.tandem or build / "api" / "tandem").resolve()
    args.membw = args.membw or str(build / "bench" / "tandem-membw")
    if not tandem_bin.exists():
        ap.error(f"no tandem binary at {tandem_bin} (--build or --tandem)")
    on_gpu = args.device.startswith("cuda")
    if args.ngl is None:
        args.ngl = 99 if on_gpu else 0
    if args.threads is None:
        args.threads = "" if on_gpu else "1,2"
    threads_list = [t for t in args.threads.split(",")] if args.threads else [""]
    batches = [int(b) for b in args.batches.split(",")]
    alternate = args.alternate == "yes" or (args.alternate == "auto" and not on_gpu)
    if args.llama_bench:
        args.llama_bench = str(pathlib.Path(args.llama_bench).resolve())
        if not args.llama_batched_bench:
            cand = pathlib.Path(args.llama_bench).with_name("llama-batched-bench")
            args.llama_batched_bench = str(cand) if cand.exists() else None
    llama_info = None
    if args.llama_bench:
        info = pathlib.Path(args.llama_bench).with_name("llama-build-info.txt")
        if info.exists():  # written by bench/build_llamacpp.sh
            llama_info = info.read_text().splitlines()[0].split(" (")[0]
    peer = "none"
    if not args.skip_llama:
        if args.llama_bench:
            peer = "native"
        elif not on_gpu:
            try:
                import importlib.util
                peer = "python" if importlib.util.find_spec("llama_cpp") else "none"
            except ImportError:
                peer = "none"
    td = Tandem(tandem_bin, args.device, args.kv_type, args.timeout,
                shlex.split(args.tandem_args), args.tandem_chunk)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(),
        "device": args.device, "device_name": device_name(args), "tandem": td.version(),
        "command": shlex.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "prompt_tokens": args.prompt_tokens, "gen": args.gen, "reps": args.reps,
        "batches": batches, "kv_type": args.kv_type, "peer": peer, "llama_commit": None,
        "stat": args.stat, "max_load": args.max_load,
        "llama_build": llama_info,
    }
    log(f"{meta['tandem']}; device {args.device}: {meta['device_name']}; peer {peer}")

    rows = []
    for model in args.models.split(","):
        model = pathlib.Path(model).resolve()
        try:
            facts = gguf_facts(model)
            text, n_prompt = td.make_prompt_text(model, args.prompt_tokens)
            prompt_ids = json.loads(run([tandem_bin, "tokenize", "--model", model, "--text", text,
                                         "--add-special"])[0].stdout)["ids"]
        except Exception as e:  # noqa: BLE001 - go on with the next model
            log(f"{model}: cannot prepare: {e}")
            continue
        log(f"{model.name}: {facts['file_bytes'] / 1e9:.2f} GB, {facts['arch']}, "
            f"{bytes_per_step(facts, 1) / 1e6:.1f} MB read per decoded token, prompt {n_prompt} tokens")
        prompt_file = pathlib.Path(tempfile.gettempdir()) / f"bench-prompt-{os.getpid()}.txt"
        prompt_file.write_text(text)
        for threads in threads_list:
            load_mark = len(LOADS)
            bw, bw_src = bandwidth(args, threads)
            tdm = {b: {"runs": [], "error": None} for b in batches}
            lc = {b: {"runs": [], "error": None} for b in batches}

            def tandem_b1():
                if tdm[1]["error"]:
                    return  # failed once: do not pay for the load again
                try:
                    QUIET("tandem generate")
                    tdm[1]["runs"].append(td.generate(model, prompt_file, threads, args.gen, n_prompt))
                except Exception as e:  # noqa: BLE001 - record and go on
                    tdm[1]["error"] = str(e)[-800:]
                    log(f"tandem generate failed: {tdm[1]['error']}")

            def llama_b1(reps):
                try:
                    if peer == "native":
                        QUIET("llama-bench")
                        lc[1]["runs"].append(llama_bench(args, model, n_prompt, args.gen, threads, reps))
                    elif peer == "python":
                        QUIET("llama-cpp-python")
                        lc[1]["runs"].append(llama_python(args, model, prompt_ids, threads, args.gen))
                except Exception as e:  # noqa: BLE001
                    lc[1]["error"] = str(e)[-800:]
                    log(f"llama.cpp (batch 1) failed: {lc[1]['error']}")

            if 1 in batches and not args.eval_all:
                if alternate:
                    for _ in range(args.reps):
                        tandem_b1()
                        llama_b1(1)
                else:
                    for _ in range(args.reps):
                        tandem_b1()
                    llama_b1(args.reps)
            elif 1 in batches:
                llama_b1(args.reps)
            eval_batches = [b for b in batches if b > 1 or args.eval_all]
            for b in eval_batches:
                try:
                    tdm[b]["runs"].append(tandem_eval_rates(td, model, facts, b, n_prompt, args.gen,
                                                            threads, args.reps))
                except Exception as e:  # noqa: BLE001
                    tdm[b]["error"] = str(e)[-800:]
                    log(f"tandem eval (batch {b}) failed: {tdm[b]['error']}")
            big = [b for b in batches if b > 1]
            if big and peer == "native":
                if args.llama_batched_bench:
                    try:
                        for b, r in llama_batched_bench(args, model, big, n_prompt, args.gen,
                                                        threads, args.reps).items():
                            if b in lc:
                                lc[b]["runs"].append(r)
                    except Exception as e:  # noqa: BLE001
                        for b in big:
                            lc[b]["error"] = str(e)[-800:]
                        log(f"llama-batched-bench failed: {str(e)[-800:]}")
                else:
                    for b in big:
                        lc[b]["error"] = "no llama-batched-bench next to llama-bench"

            for b in batches:
                tr, lr = tdm[b]["runs"], lc[b]["runs"]
                t_pre = agg_rate([r["prefill"] for r in tr])
                t_dec = agg_rate([r["decode"] for r in tr])
                l_pre = agg_rate([r["prefill"] for r in lr])
                l_dec = agg_rate([r["decode"] for r in lr])
                for r in lr:
                    if r.get("build_commit"):
                        meta["llama_commit"] = r["build_commit"]
                step = bytes_per_step(facts, b)
                roof = b * bw * 1e9 / step if bw and not math.isnan(bw) else NAN
                row = {
                    "model": model.name, "device": args.device, "threads": threads or "default",
                    "batch": b, "prompt_tokens": n_prompt, "gen_tokens": args.gen,
                    "tandem_prefill": t_pre, "tandem_decode": t_dec,
                    "tandem_method": "eval-diff" if (b > 1 or args.eval_all) else "generate",
                    "llama_prefill": l_pre, "llama_decode": l_dec,
                    "llama_tool": lr[0]["tool"] if lr else None,
                    "prefill_ratio": ratio(t_pre, l_pre), "decode_ratio": ratio(t_dec, l_dec),
                    "bytes_per_step": step, "bytes_per_token": step / b,
                    "bw_gbs": bw, "bw_source": bw_src, "roofline_decode": roof,
                    "tandem_bw_share": ratio(t_dec, roof), "llama_bw_share": ratio(l_dec, roof),
                    "tandem_error": tdm[b]["error"], "llama_error": lc[b]["error"],
                    "loads": [{"run": w, "load1": la, "busy_cpus": bz, "waited_s": ws}
                              for w, la, bz, ws in LOADS[load_mark:]],
                    "tandem_runs": tr, "llama_runs": lr,
                }
                rows.append(row)
                print(json.dumps(clean({k: v for k, v in row.items()
                                        if not k.endswith("_runs") and k != "loads"})),
                      flush=True)
                if args.json:  # kept up to date: a run cut short still leaves its rows
                    write_json(args.json, meta, rows)
        prompt_file.unlink()

    on_cpu = not on_gpu
    peer_name = {"native": "llama.cpp (llama-bench / llama-batched-bench)",
                 "python": "llama.cpp (llama-cpp-python)", "none": "none"}[peer]
    head = (f"Measured {meta['date']} on {meta['host']}: {meta['device_name']} "
            f"(`--device {args.device}`{', KV ' + args.kv_type if args.kv_type else ''}); "
            f"{meta['tandem']}; peer {peer_name}"
            f"{', ' + (meta['llama_build'] or 'build ' + str(meta['llama_commit'])) if peer == 'native' else ''}"
            f"{', -ngl ' + str(args.ngl) if peer == 'native' else ''}. Prompt "
            f"{args.prompt_tokens} tokens, {args.gen} decoded tokens, "
            f"{'best' if args.stat == 'best' else 'median'} of {args.reps}. "
            f"Bandwidth: {rows[0]['bw_source'] if rows else '-'}.")
    lines = [f"`{meta['command']}`", "", head, "",
             "| model | batch |" + (" threads |" if on_cpu else "") +
             " prefill tok/s Tandem | llama.cpp | ratio | decode tok/s Tandem | llama.cpp | ratio"
             " | weights read per decode step | roofline decode tok/s | Tandem share | llama.cpp share |",
             "|---|---|" + ("---|" if on_cpu else "") + "---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} |" + (f" {r['threads']} |" if on_cpu else "") +
            f" {fmt(r['tandem_prefill'])} | {fmt(r['llama_prefill'])} | {fmt(r['prefill_ratio'], 2)}"
            f" | {fmt(r['tandem_decode'])} | {fmt(r['llama_decode'])} | {fmt(r['decode_ratio'], 2)}"
            f" | {r['bytes_per_step'] / 1e6:.1f} MB | {fmt(r['roofline_decode'])} at "
            f"{fmt(r['bw_gbs'])} GB/s | {fmt(r['tandem_bw_share'], pct=True)} | "
            f"{fmt(r['llama_bw_share'], pct=True)} |")
    notes = []
    if any(r["batch"] > 1 for r in rows):
        notes.append("Batch > 1: Tandem by `tandem eval` wall-time differences, llama.cpp by "
                     + ("llama-batched-bench" if peer == "native" else "nothing (needs --llama-bench)")
                     + "; weights per step assume uniform expert routing.")
    errs = [f"{r['model']} batch {r['batch']}: "
            + "; ".join(e for e in (r["tandem_error"] and "Tandem: " + r["tandem_error"].splitlines()[0],
                                    r["llama_error"] and "llama.cpp: " + r["llama_error"].splitlines()[0]) if e)
            for r in rows if r["tandem_error"] or r["llama_error"]]
    if errs:
        notes.append("Failed: " + " | ".join(errs))
    if LOADS:
        las = [x[1] for x in LOADS]
        bzs = [x[2] for x in LOADS if x[2] is not None]
        waited = sum(x[3] for x in LOADS)
        notes.append(f"1-minute load average at the start of the {len(LOADS)} timed runs: "
                     f"{min(las):.2f} to {max(las):.2f} (median {statistics.median(las):.2f})"
                     + (f"; CPUs in use by others where sampled: {min(bzs):.2f} to {max(bzs):.2f}"
                        if bzs else "")
                     + (f"; waited {waited:.0f} s in all for a quieter machine (--max-load "
                        f"{args.max_load})" if args.max_load is not None else ""))
    table = "\n".join(lines + ([""] + notes if notes else []))
    print(table)
    if args.md:
        with open(args.md, "a") as f:
            f.write(table + "\n")
    if args.json:
        write_json(args.json, meta, rows)
    return 0 if rows and all(not r["tandem_error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
