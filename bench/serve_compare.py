#!/usr/bin/env python3
"""Tandem's server against llama.cpp's under the same load, on one machine, in one run.

    .venv/bin/python bench/serve_compare.py [--threads 2] [--concurrency 1,4,16,32] \\
        [--prompt-tokens 512] [--max-tokens 128] [--shared-prefix 0.5] [--api completions]

1. starts `tandem serve --model M --port P1 --threads T` (--tandem-bin), waits until
   GET /health (or, failing that, GET /v1/models) answers 200, runs bench/bench_serve.py at
   every concurrency, stops the server (SIGTERM);
2. the same against llama.cpp: by default llama-cpp-python's OpenAI server
   (`python -m llama_cpp.server`, one request at a time behind a lock, see below), or with
   --llama-server-bin the native `llama-server` with --parallel slots and continuous batching;
3. writes both runs as JSON and a combined markdown table (ratio row = Tandem / llama.cpp)
   into --out-dir, the plot into --plot (docs/bench-serve.png), and prints the markdown for
   docs/benchmarks.md.

Both servers get the same GGUF, the same thread count, the same prompts (same seed) and the
same request bodies with `ignore_eos: true`, so every request generates exactly --max-tokens
tokens. llama-cpp-python ignores `ignore_eos`, so llama.cpp's requests also carry a logit_bias
of -100 on the model's end-of-generation ids (read from the GGUF); Tandem's server rejects
logit_bias and needs none. The "short" column of the table checks that lengths were equal.

llama-cpp-python's server is configured for a fair single-stream peer: --interrupt_requests
False (by default a newly arrived request aborts the one streaming), --logits_all False (the
default True computes output logits for every prompt token), n_threads_batch = n_threads, and
n_ctx large enough for one request (it has a single sequence; requests queue behind its lock
and reuse the KV of the previous prompt's common prefix).
"""
import argparse
import contextlib
import datetime
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import bench_serve

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TANDEM = ROOT / "build" / "api" / "tandem"

# Token texts that llama.cpp treats as end of generation when the vocabulary has them.
EOG_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
             "<end_of_turn>", "<|return|>", "<|call|>", "<|end_of_text|>", "</s>")


def eog_token_ids(model):
    """End-of-generation token ids of a GGUF: tokenizer.ggml.{eos,eot,eom}_token_id and the
    ids of the EOG_TEXTS present in its vocabulary."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    ids = set()
    for key in ("eos", "eot", "eom"):
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            ids.add(int(field.contents()))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        ids.update(i for i, t in enumerate(tokens.contents()) if t in EOG_TEXTS)
    return sorted(ids)


def die(msg):
    print(f"serve_compare: {msg}", file=sys.stderr)
    sys.exit(2)


def check_tandem_serve(binary):
    """Exit with a clear message unless `binary serve --help` works."""
    try:
        p = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True,
                           timeout=60)
    except FileNotFoundError:
        die(f"no Tandem binary at {binary}: build it (cmake -S . -B build && cmake --build "
            "build -j) or pass --tandem-bin; --skip-tandem measures llama.cpp alone")
    except subprocess.TimeoutExpired:
        die(f"`{binary} serve --help` did not return within 60 s")
    if p.returncode != 0 or "unknown command" in (p.stderr + p.stdout):
        first = (p.stderr or p.stdout).strip().splitlines()[:1]
        die(f"{binary} has no `serve` subcommand ({first[0] if first else f'rc {p.returncode}'})"
            ": the HTTP server is not in this build; rebuild after it lands, or pass "
            "--skip-tandem to measure llama.cpp alone")


def port_busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def log_tail(path, n=30):
    with contextlib.suppress(OSError):
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-n:])
    return ""


@contextlib.contextmanager
def running_server(name, cmd, port, log_path, timeout):
    """Start a server, wait until it answers, yield (its base URL …/v1, its pid), stop it
    (SIGTERM, then SIGKILL after 20 s) however the block ends."""
    if port_busy(port):
        die(f"port {port} is already in use: stop what listens there or pick another port")
    print(f"[serve_compare] starting {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                die(f"{name} exited with status {proc.returncode} before it was ready; "
                    f"log {log_path}:\n{log_tail(log_path)}")
            if http_status(base + "/health") == 200 or http_status(base + "/v1/models") == 200:
                break
            if time.monotonic() > deadline:
                die(f"{name} not ready after {timeout} s; log {log_path}:\n{log_tail(log_path)}")
            time.sleep(0.25)
        print(f"[serve_compare] {name} ready on port {port}", file=sys.stderr, flush=True)
        yield base + "/v1", proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def run_bench(args, label, server, json_path, eos_ids):
    """bench_serve.py in its own process against server = (base URL, pid); returns the run."""
    base_url, pid = server
    cmd = [sys.executable, str(pathlib.Path(__file__).with_name("bench_serve.py")),
           "--base-url", base_url, "--server-pid", str(pid), "--label", label, "--api", args.api,
           "--concurrency", ",".join(map(str, args.concurrency)),
           "--prompt-tokens", str(args.prompt_tokens), "--max-tokens", str(args.max_tokens),
           "--shared-prefix", str(args.shared_prefix), "--seed", str(args.seed),
           "--json", str(json_path)]
    if args.num_requests:
        cmd += ["--num-requests", str(args.num_requests)]
    else:
        cmd += ["--requests-per-stream", str(args.requests_per_stream)]
    if eos_ids:
        cmd += ["--eos-id", ",".join(map(str, eos_ids))]
    print(f"[serve_compare] {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd).returncode
    if not json_path.exists():
        die(f"bench_serve against {label} wrote no results (status {rc})")
    if rc != 0:
        print(f"[serve_compare] warning: {label} had failed requests, see {json_path}",
              file=sys.stderr)
    return bench_serve.load_run(json_path)


def ctx_per_request(args):
    """KV positions one request needs: prompt, output, chat-template overhead, rounded up."""
    need = args.prompt_tokens + args.max_tokens + 128
    return -(-need // 256) * 256


def tandem_cmd(args):
    return [str(args.tandem_bin), "serve", "--model", str(args.model), "--port",
            str(args.tandem_port), "--threads", str(args.threads),
            *shlex.split(args.tandem_args)]


def llama_cmd(args):
    """(label, command) of the llama.cpp peer."""
    if args.llama_server_bin:
        slots = max(args.concurrency)
        # llama-server divides n_ctx among its slots: each must hold one whole request
        return (f"llama.cpp (llama-server -np {slots})",
                [str(args.llama_server_bin), "-m", str(args.model), "--host", "127.0.0.1",
                 "--port", str(args.llama_port), "-t", str(args.threads), "-tb",
                 str(args.threads), "-np", str(slots), "-c", str(slots * ctx_per_request(args)),
                 *shlex.split(args.llama_args)])
    return ("llama.cpp (llama-cpp-python server)",
            [sys.executable, "-m", "llama_cpp.server", "--model", str(args.model),
             "--host", "127.0.0.1", "--port", str(args.llama_port),
             "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
             "--n_ctx", str(max(2048, ctx_per_request(args))), "--n_batch", "512",
             "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False",
             *shlex.split(args.llama_args)])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2, help="compute threads of both servers")
    ap.add_argument("--concurrency", type=bench_serve.int_list, default=[1, 4, 16, 32])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--shared-prefix", type=bench_serve.fraction, default=0.5)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--num-requests", type=int, help="total requests per level instead")
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tandem-bin", type=pathlib.Path, default=DEFAULT_TANDEM)
    ap.add_argument("--tandem-port", type=int, default=8181)
    ap.add_argument("--tandem-args", default="", help="extra arguments for `tandem serve`")
    ap.add_argument("--llama-port", type=int, default=8182)
    ap.add_argument("--llama-server-bin", type=pathlib.Path,
                    help="native llama.cpp llama-server instead of llama-cpp-python's server")
    ap.add_argument("--llama-args", default="", help="extra arguments for the llama.cpp server")
    ap.add_argument("--skip-tandem", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "build" / "bench-serve",
                    help="JSON results, server logs and serve-compare.md go here")
    ap.add_argument("--plot", type=pathlib.Path, default=ROOT / "docs" / "bench-serve.png")
    args = ap.parse_args(argv)
    if args.skip_tandem and args.skip_llama:
        ap.error("nothing to run: both --skip-tandem and --skip-llama")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.model.exists():
        die(f"no model at {args.model} (tools/setup.sh fetches the default one)")
    if not args.skip_tandem:
        check_tandem_serve(args.tandem_bin)  # fail before spending minutes on llama.cpp
    args.out_dir.mkdir(parents=True, exist_ok=True)
    eos_ids = eog_token_ids(args.model)
    print(f"[serve_compare] end-of-generation ids (biased by -100 for llama.cpp): {eos_ids}",
          file=sys.stderr)

    runs = []
    if not args.skip_tandem:
        with running_server("tandem serve", tandem_cmd(args), args.tandem_port,
                            args.out_dir / "tandem-server.log", args.startup_timeout) as srv:
            runs.append(run_bench(args, "Tandem", srv, args.out_dir / "tandem.json", []))
    if not args.skip_llama:
        label, cmd = llama_cmd(args)
        with running_server(label, cmd, args.llama_port, args.out_dir / "llama-server.log",
                            args.startup_timeout) as srv:
            runs.append(run_bench(args, label, srv, args.out_dir / "llama.json", eos_ids))

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    bench_serve.plot_runs(runs, args.plot)
    r0 = runs[0]
    md = "\n".join([
        f"`{shlex.join([pathlib.Path(sys.executable).name, *sys.argv])}`",
        "",
        f"Measured {datetime.date.today()} on {r0['host']} ({r0['cpus']} CPUs), "
        f"{args.threads} threads for each server; " + bench_serve.describe(r0).split(", ", 2)[2]
        + f"; `ignore_eos: true` for both, and for llama.cpp a logit_bias of -100 on the "
        f"end-of-generation ids {eos_ids}.",
        "",
        bench_serve.markdown_table(runs),
        *("\n" + w for w in bench_serve.load_warnings(runs)),
        "",
        f"![throughput and TTFT against concurrency]({os.path.relpath(args.plot, ROOT / 'docs')})",
    ])
    (args.out_dir / "serve-compare.md").write_text(md + "\n")
    with open(args.out_dir / "serve-compare-commands.json", "w") as f:
        json.dump({"tandem": tandem_cmd(args), "llama": llama_cmd(args)[1]}, f, indent=1)
    print("\n----- markdown for docs/benchmarks.md -----\n")
    print(md)
    print(f"\n[serve_compare] plot {args.plot}, results in {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
