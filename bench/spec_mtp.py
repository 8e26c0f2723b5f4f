"""MTP drafting (serve --spec mtp) on a model that carries an MTP block: single-stream decode
tokens/s with speculation off and on (cost model, and --spec-always), the mtp drafter's
acceptance and tokens per decoding step from /metrics.

    flock /tmp/bench.lock nice -n -10 .venv/bin/python bench/spec_mtp.py \\
        --model tests/fixtures/hybrid/qwen35moe-b-f32.gguf [--echo] [--requests 8] [--tokens 64]

--echo first writes a copy of a qwen3next fixture with an "echo" MTP block
(tests/python/mtp_util.py: its drafts are mostly the trunk's last token), so that some drafts
are accepted on the random fixtures; the fixtures' random MTP blocks predict nothing.
Prints one JSON line per mode.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from mtp_util import add_mtp_block  # noqa: E402
from serve_util import ServeProcess, metric_value  # noqa: E402

# token-id prompts of the fixtures' vocabulary: repeats and plain runs
PROMPTS = [[5, 6, 7, 8] * 8, list(range(40, 90)), [100, 101] * 20,
           [200 + (i * 7) % 50 for i in range(60)]]


def run(model, flags, n_req, n_tok, threads):
    srv = ServeProcess(model, *flags, "--max-running", "4", threads=threads)
    name = pathlib.Path(model).name[:-5]
    mode = "off" if "off" in flags else "mtp"
    try:
        t0 = time.perf_counter()
        gen = 0
        for i in range(n_req):
            r = srv.post("/v1/completions", {"model": name, "prompt": PROMPTS[i % len(PROMPTS)],
                                             "max_tokens": n_tok, "temperature": 0,
                                             "ignore_eos": True, "speculative": {"mode": mode}})
            assert r.status_code == 200, r.text
            gen += r.json()["usage"]["completion_tokens"]
        dt = time.perf_counter() - t0
        m = srv.metrics()
    finally:
        srv.stop()
    drafted = metric_value(m, "tandem_spec_draft_tokens_total", drafter="mtp")
    accepted = metric_value(m, "tandem_spec_accepted_tokens_total", drafter="mtp")
    steps = metric_value(m, "tandem_decode_steps_total")
    return {"flags": " ".join(flags), "requests": n_req, "tokens": gen, "seconds": round(dt, 3),
            "tok_s": round(gen / dt, 1), "drafted": drafted, "accepted": accepted,
            "acceptance": round(accepted / drafted, 3) if drafted else None,
            "tokens_per_step": round(metric_value(m, "tandem_decode_step_tokens_total") / steps, 3)
            if steps else None,
            "replayed": metric_value(m, "tandem_spec_replayed_tokens_total")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/hybrid/qwen35moe-b-f32.gguf"))
    ap.add_argument("--echo", action="store_true")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spec-max", default="3")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = a.model
        if a.echo:
            model = str(pathlib.Path(d) / "qwen3next-b-echo.gguf")
            add_mtp_block(ROOT / "tests/fixtures/hybrid/qwen3next-b-f32.gguf", model, echo=True)
        for flags in (["--spec", "off"], ["--spec", "mtp", "--spec-max", a.spec_max],
                      ["--spec", "mtp", "--spec-max", a.spec_max, "--spec-always"]):
            print(json.dumps({"model": pathlib.Path(model).name,
                              **run(model, flags, a.requests, a.tokens, a.threads)}), flush=True)


if __name__ == "__main__":
    main()
