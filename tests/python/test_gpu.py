"""The CUDA backend at model level: every check runs the same model on the GPU and on an
independent oracle (HF's logits stored with the fixtures, or the CPU backend).

Skipped, with the reason, when no CUDA device is visible (`tandem --version` lists the
devices); the device flags' refusals are checked everywhere. tools/gpu-check.sh runs this
file on a borrowed GPU machine.

Tolerances (relative L2 per position unless said otherwise):
- f32/f16 fixtures with an f32 KV cache vs HF: 1e-4, greedy tokens identical (the GPU's
  f32 weights use FFMA on f32 activations, no f16 rounding of x).
- the same with the default f16 KV cache: 5e-3, and top-1 on decisive positions.
- quantized fixtures (Q8_0, Q4_K, Q6_K) and SmolLM2 vs the CPU backend: top-1 on decisive
  positions (margin >= 0.5 logit) >= 99% (agreement.py says why not a tolerance).
- a batch vs each sequence alone on the GPU: bit-identical logits (the kernels' order of
  accumulation does not depend on the step).
- CUDA graphs on vs off: identical greedy tokens and logits.
- two GPU shards (TP or EP) vs single-node on the GPU: 1e-5, greedy identical.
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from agreement import compare, rel_l2
from conftest import DEFAULT_MODEL, FIXTURES, TANDEM_BIN, run_tandem

MODELS = FIXTURES / "models"
MANIFEST = MODELS / "manifest.json"


def gpu_count():
    if not TANDEM_BIN.exists():
        return 0
    out = subprocess.run([str(TANDEM_BIN), "--version"], capture_output=True, text=True).stdout
    return len(re.findall(r"^cuda device \d+:", out, re.M))


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="no CUDA device visible "
                               "(tandem --version lists none); run tools/gpu-check.sh on a GPU")


def manifest():
    return json.loads(MANIFEST.read_text())


def entries(variants):
    if not MANIFEST.exists():
        return []
    return [e for e in manifest()["models"] if e["variant"] in variants]


def tandem_eval(tmp_path, model, tokens, *extra, greedy=16, name="out", env=None):
    out = tmp_path / f"{name}.npy"
    proc = run_tandem("eval", "--model", model, "--tokens", ",".join(map(str, tokens)),
                      "--greedy", greedy, "--threads", 2, "--logits-out", out, *extra, env=env)
    res = json.loads(proc.stdout)
    return res["greedy"], np.load(out), proc


# ---- the flags, everywhere ------------------------------------------------------------------

def test_device_flag_refusals(tandem_bin):
    model = MODELS / "llama-a-f32.gguf"
    bad = run_tandem("eval", "--model", model, "--tokens", "1,2", "--device", "tpu", check=False)
    assert bad.returncode != 0 and "expected auto, cpu, cuda or cuda:N" in bad.stderr
    kv = run_tandem("eval", "--model", model, "--tokens", "1,2", "--kv-type", "q4_0",
                    check=False)
    assert kv.returncode != 0 and "expected f32, f16, q8_0" in kv.stderr
    far = run_tandem("eval", "--model", model, "--tokens", "1,2", "--device", "cuda:77",
                     check=False)
    assert far.returncode != 0
    assert re.search(r"no CUDA device|only \d+ CUDA device|has no CUDA", far.stderr), far.stderr


def test_auto_falls_back_to_cpu_and_says_so(tandem_bin):
    if gpu_count() > 0:
        pytest.skip("a GPU is visible: auto picks it")
    model = MODELS / "llama-a-f32.gguf"
    proc = run_tandem("eval", "--model", model, "--tokens", "1,2", "--device", "auto")
    assert "device cpu" in proc.stderr and "no usable GPU" in proc.stderr


def test_q8_0_kv_needs_whole_blocks(tandem_bin):
    """llama-b's heads are 16 wide: a q8_0 cache (blocks of 32) is refused."""
    model = MODELS / "llama-b-f32.gguf"
    proc = run_tandem("eval", "--model", model, "--tokens", "1,2", "--device", "cpu",
                      "--kv-type", "q8_0", check=False)
    assert proc.returncode != 0 and "--kv-type f16" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kv,bound", [("f16", 5e-3), ("q8_0", 5e-2)])
@pytest.mark.parametrize("name", ["llama-a-f32.gguf", "qwen3moe-a-f32.gguf"])
def test_cpu_kv_types_close_to_f32(tandem_bin, tmp_path, name, kv, bound):
    """The CPU backend's f16 and q8_0 caches (heads of 64) against its f32 cache: within
    the rounding of K/V to f16 (2^-11) or to 8 bits per block of 32."""
    model = MODELS / name
    toks = manifest()["sequences"]["s64"]
    _, l32, _ = tandem_eval(tmp_path, model, toks, "--device", "cpu", greedy=0, name="f32")
    _, lkv, _ = tandem_eval(tmp_path, model, toks, "--device", "cpu", "--kv-type", kv, greedy=0,
                            name=kv)
    assert rel_l2(lkv, l32).max() <= bound
    assert compare(lkv, l32)["top1_decisive"] >= 0.99


# ---- on a GPU ----------------------------------------------------------------------------------

@needs_gpu
def test_version_lists_the_gpu(tandem_bin):
    out = run_tandem("--version").stdout
    assert re.search(r"cuda device 0: .+compute capability \d+\.\d+.+GiB", out), out


@needs_gpu
@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"])
                                   for e in entries({"F32", "F16"})])
def test_float_fixtures_match_hf(tandem_bin, tmp_path, entry):
    m = manifest()
    for seq, exp in entry["expected"].items():
        greedy, logits, proc = tandem_eval(tmp_path, MODELS / entry["file"], m["sequences"][seq],
                                           "--device", "cuda", "--kv-type", "f32",
                                           greedy=len(exp["greedy"]), name=seq)
        assert "device cuda" in proc.stderr
        ref = np.load(MODELS / exp["logits"])
        rel = rel_l2(logits[exp["positions"]], ref)
        assert rel.max() <= 1e-4, f"{seq}: max relative L2 {rel.max():.3g}"
        assert greedy == exp["greedy"], seq


@needs_gpu
@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"])
                                   for e in entries({"F32"})])
def test_float_fixtures_f16_kv(tandem_bin, tmp_path, entry):
    m = manifest()
    for seq, exp in entry["expected"].items():
        _, logits, _ = tandem_eval(tmp_path, MODELS / entry["file"], m["sequences"][seq],
                                   "--device", "cuda", greedy=0, name=seq)
        ref = np.load(MODELS / exp["logits"])
        got = logits[exp["positions"]]
        assert rel_l2(got, ref).max() <= 5e-3
        assert compare(got, ref)["top1_decisive"] == 1.0


@needs_gpu
@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"])
                                   for e in entries({"Q8_0", "Q4_K", "Q6_K"})])
def test_quantized_fixtures_agree_with_cpu(tandem_bin, tmp_path, entry):
    seqs = manifest()["sequences"]
    gots, refs = [], []
    for seq, toks in seqs.items():
        _, g, _ = tandem_eval(tmp_path, MODELS / entry["file"], toks, "--device", "cuda",
                              "--kv-type", "f32", greedy=0, name=f"gpu-{seq}")
        _, r, _ = tandem_eval(tmp_path, MODELS / entry["file"], toks, "--device", "cpu",
                              greedy=0, name=f"cpu-{seq}")
        gots.append(g)
        refs.append(r)
    c = compare(np.concatenate(gots), np.concatenate(refs))
    assert c["top1_decisive"] >= 0.99, c


SMOLLM2_TEXT = ("The history of the city begins with a small fishing village on the river. "
                "Over the centuries it grew into a trading port, and its merchants sailed to "
                "distant markets. Today it is known for its museums, its parks and the old "
                "bridge that connects the two halves of the town. def fibonacci(n):\n"
                "    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n")


@needs_gpu
def test_smollm2_agrees_with_cpu(tandem_bin, tmp_path):
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} not present (too big to carry to a borrowed GPU: see "
                    "docs/gpu.md)")
    ids = json.loads(run_tandem("tokenize", "--model", DEFAULT_MODEL, "--text",
                                SMOLLM2_TEXT).stdout)
    ids = ids["ids"] if isinstance(ids, dict) else ids
    _, g, _ = tandem_eval(tmp_path, DEFAULT_MODEL, ids, "--device", "cuda", greedy=0, name="gpu")
    _, r, _ = tandem_eval(tmp_path, DEFAULT_MODEL, ids, "--device", "cpu", greedy=0, name="cpu")
    c = compare(g, r)
    assert c["decisive"] >= 20 and c["top1_decisive"] >= 0.99, c


@needs_gpu
@pytest.mark.parametrize("name", ["llama-a-q4_k.gguf", "qwen3moe-a-q4_k.gguf",
                                  "qwen3moe-c-f32.gguf"])
def test_batch_invariance_on_gpu(tandem_bin, tmp_path, name):
    """Several sequences batched (chunked prefill and decode mixed) vs each alone."""
    seqs = list(manifest()["sequences"].values())
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(",".join(map(str, s)) for s in seqs) + "\n")
    proc = run_tandem("eval", "--model", MODELS / name, "--prompts-file", pf, "--greedy", 8,
                      "--chunk", 5, "--batch-test", "--device", "cuda")
    bt = json.loads(proc.stdout)["batch_test"]
    assert bt["greedy_equal"] and bt["max_abs_diff"] == 0.0, bt


@needs_gpu
def test_cuda_graphs_change_nothing(tandem_bin, tmp_path):
    model = MODELS / "qwen3moe-a-q4_k.gguf"
    toks = manifest()["sequences"]["s33"]
    g1, l1, p1 = tandem_eval(tmp_path, model, toks, "--device", "cuda", greedy=24, name="graphs")
    env = dict(os.environ, TANDEM_CUDA_GRAPHS="0")
    g0, l0, p0 = tandem_eval(tmp_path, model, toks, "--device", "cuda", greedy=24, name="eager",
                             env=env)
    assert g1 == g0
    assert np.array_equal(l1, l0)
    # 23 decode steps of one shape: captured on the second, replayed from the third on
    stats = re.search(r"cuda graphs: (\d+) captured, (\d+) replayed, (\d+) dropped", p1.stderr)
    assert stats, p1.stderr
    captured, replayed, dropped = map(int, stats.groups())
    assert captured >= 1 and replayed >= 20 and dropped == 0, stats.group(0)
    assert "0 captured, 0 replayed" in p0.stderr


@needs_gpu
@pytest.mark.parametrize("model,split", [("llama-c-f32.gguf", ("--tp", "2")),
                                         ("qwen3moe-b-f32.gguf", ("--ep", "2"))])
def test_two_gpu_shards_equal_single_node(tandem_bin, tmp_path, model, split):
    from dist_util import Shards

    toks = manifest()["sequences"]["s33"]
    gs, ls, _ = tandem_eval(tmp_path, MODELS / model, toks, "--device", "cuda", "--kv-type",
                            "f32", name="single")
    extra = ("--device", "cuda", "--kv-type", "f32")
    with Shards(MODELS / model, 2, tls="tcp", extra=extra) as sh:
        gd, ld, proc = tandem_eval(tmp_path, MODELS / model, toks, "--shards", sh.arg, *split,
                                   name="dist")
        assert "device: cuda" in sh.stderr(), sh.stderr()
    assert rel_l2(ld, ls).max() <= 1e-5
    assert gd == gs


@needs_gpu
def test_load_that_does_not_fit_is_refused(tandem_bin):
    proc = subprocess.run([str(TANDEM_BIN), "serve", "--model", str(MODELS / "llama-a-f32.gguf"),
                           "--device", "cuda", "--kv-memory", "100000G", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert re.search(r"needs [0-9.]+ GiB on cuda:0 .*free", proc.stderr), proc.stderr
