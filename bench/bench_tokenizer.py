#!/usr/bin/env python3
"""Tokenizer encode throughput on one core: Tandem vs Hugging Face `tokenizers`.

    bench_tokenizer.py [--tandem BUILD/api/tandem] [--fixture qwen3|gpt-oss]
                       [--model M.gguf --hf-json tokenizer.json] [--input FILE] [--mb 1.0]

Both sides encode the same ~1 MB text, one line per document (newline kept), with the same
vocabulary: by default a fixture GGUF (tests/fixtures/tokenizers) for Tandem and the HF
tokenizer rebuilt from that GGUF plus its *-hf-skeleton.json; or a GGUF and the matching
tokenizer.json given explicitly. Tandem times itself (`tandem tokenize --bench`, load time
excluded); HF is timed around encode_batch with one thread (RAYON_NUM_THREADS=1,
TOKENIZERS_PARALLELISM=false). Both processes are pinned to the same CPU. Reported: MB/s of
the first (cold word cache) pass and the best of --iters further passes, and the ratio.

The default text mixes real code and prose found on the machine (Python's standard library
sources, license texts in /usr/share/common-licenses), read in sorted order, falling back to
the parity corpus when those are absent.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKDIR = ROOT / "tests" / "fixtures" / "tokenizers"


def read_files(paths, budget):
    out, size = [], 0
    for p in paths:
        if size >= budget:
            break
        try:
            t = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        out.append(t)
        size += len(t.encode())
    return "".join(out)


def build_text(mb):
    target = int(mb * 1_000_000)
    prose_dir = pathlib.Path("/usr/share/common-licenses")
    prose_files = sorted(p for p in prose_dir.glob("*") if p.is_file()) if prose_dir.exists() else []
    prose = read_files(prose_files, target * 0.4)
    code = read_files(sorted(pathlib.Path(os.__file__).parent.glob("*.py")), target - len(prose))
    if len(prose) + len(code) < target // 2:  # fall back to the corpus
        texts = [json.loads(x)["text"] for x in (TOKDIR / "corpus.jsonl").read_bytes()
                 .split(b"\n") if x]
        code, prose = "\n".join(texts), ""
    # interleave blocks of 50 lines so both kinds spread over the whole run
    pl, cl = prose.split("\n"), code.split("\n")
    blocks, i, j = [], 0, 0
    while i < len(pl) or j < len(cl):
        blocks += pl[i:i + 50] + cl[j:j + 75]
        i, j = i + 50, j + 75
    data = "\n".join(blocks).encode()[:target]
    return data.decode("utf-8", errors="ignore")


def hf_from_fixture(name):
    import gguf
    from tokenizers import Tokenizer

    r = gguf.GGUFReader(str(TOKDIR / f"{name}-vocab.gguf"))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    skel = json.loads((TOKDIR / f"{name}-hf-skeleton.json").read_text(encoding="utf-8"))
    added = {t["id"] for t in skel["added_tokens"]}
    skel["model"]["vocab"] = {t: i for i, t in enumerate(tokens) if i not in added}
    skel["model"]["merges"] = [m.split(" ", 1) for m in merges]
    return Tokenizer.from_str(json.dumps(skel))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("TANDEM_BIN", ROOT / "build/api/tandem")))
    ap.add_argument("--fixture", default="qwen3", choices=["qwen3", "gpt-oss"])
    ap.add_argument("--model", type=pathlib.Path)
    ap.add_argument("--hf-json", type=pathlib.Path)
    ap.add_argument("--input", type=pathlib.Path)
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first allowed)")
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    from tokenizers import Tokenizer

    if args.model:
        if not args.hf_json:
            sys.exit("--model needs --hf-json (the same tokenizer for HF)")
        model, hf = args.model, Tokenizer.from_file(str(args.hf_json))
    else:
        model, hf = TOKDIR / f"{args.fixture}-vocab.gguf", hf_from_fixture(args.fixture)

    text = args.input.read_text(encoding="utf-8") if args.input else build_text(args.mb)
    data = text.encode()
    # the C side splits on b"\n" only; keep the two document lists identical
    lines = [x + "\n" for x in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()

    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(data)
        path = f.name
    try:
        proc = subprocess.run(["taskset", "-c", str(cpu), str(args.tandem), "tokenize",
                               "--model", str(model), "--bench", path, "--iters",
                               str(args.iters)], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    tdm = json.loads(proc.stdout)

    t0 = time.perf_counter()
    enc = hf.encode_batch(lines, add_special_tokens=False)
    cold = time.perf_counter() - t0
    hf_tokens = sum(len(e.ids) for e in enc)
    best = None
    for _ in range(args.iters):
        t0 = time.perf_counter()
        hf.encode_batch(lines, add_special_tokens=False)
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    best = best or cold
    mb = len(data) / 1e6
    res = {
        "bytes": len(data),
        "documents": len(lines),
        "cpu": cpu,
        "tandem_tokens": tdm["tokens"],
        "hf_tokens": hf_tokens,
        "tandem_cold_mb_s": round(tdm["cold_mb_per_s"], 2),
        "tandem_mb_s": round(tdm["mb_per_s"], 2),
        "hf_cold_mb_s": round(mb / cold, 2),
        "hf_mb_s": round(mb / best, 2),
    }
    res["ratio_cold"] = round(res["tandem_cold_mb_s"] / res["hf_cold_mb_s"], 2)
    res["ratio"] = round(res["tandem_mb_s"] / res["hf_mb_s"], 2)
    print(json.dumps(res, indent=1))
    if tdm["tokens"] != hf_tokens:
        print(f"warning: token counts differ (tandem {tdm['tokens']}, hf {hf_tokens})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
