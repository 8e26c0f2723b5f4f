"""`tandem plan` and `tandem topo` against independent oracles.

plan: the per-shard bytes of every tensor are recomputed here from the GGUF tensor infos
(the `gguf` package) and the split rules of shard/shd_model.h, written independently of
topology/topo_plan.c, by tensor name: heads (the first n_head % tp ranks one more), kv heads
as the set of kv heads a rank's q heads use, FFN columns, output rows, experts per EP group,
and the vectors bound with them (q/k/v biases and minimax-m2's full-width q/k norms by
heads, sinks by heads, dense gate/up biases by columns, expert biases as whole rows of the
group's experts, the rest whole). Every tensor of every architecture's fixtures must be in
the plan and bound by some shard. Checked: split tensors sum to the unpartitioned
bytes (times the EP groups that each hold a copy), replicated tensors count once per shard,
expert bytes are balanced within one expert of optimal, KV bytes follow the formula for every
KV type, a GPU plan (--gpu-memory: no GPU needed) counts the CUDA backend's op scratch
(recomputed here from kernels/cuda/backend_cuda.cu's carving) and check_fit's margin,
over-budget plans exit 3 with the numbers, and impossible splits are refused by name.

Also: the weight bytes one decoded token reads (and the decode ceiling of --mem-bw), KV by
layer kind (gpt-oss's sliding-window layers), the KV that fits a budget, refusal of tensor
types without kernels, `tandem inspect`'s model section, and real models planned from
metadata-only GGUFs (tools/make_shape_gguf.py: sparse files with the real tensor infos, the
published sizes met) on one and two DGX Sparks.

Plans run with --device cpu unless a test says otherwise, so they do not depend on whether
the machine has a GPU.

topo: on this machine (no RDMA expected) it says TCP; over a fabricated DGX Spark sysfs
tree it proposes both twins of the cabled port.
"""
import json
import math
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from conftest import FIXTURES, SOURCE_DIR, run_tandem
from serve_util import ServeProcess, metric_value

MODELS = FIXTURES / "models"
BENCH_MODEL = SOURCE_DIR / "models" / "bench-qwen3moe-1b-q4_k.gguf"


# ---- oracle ------------------------------------------------------------------------------

class Model:
    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        self.path = path
        self.tensors = {t.name: int(t.n_bytes) for t in r.tensors}
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

        def get(key, default=None):
            f = r.fields.get(f"{arch}.{key}")
            return int(f.parts[f.data[0]][0]) if f is not None else default

        self.n_layer = get("block_count")
        self.n_head = get("attention.head_count")
        self.n_head_kv = get("attention.head_count_kv", self.n_head)
        self.n_embd = get("embedding_length")
        self.head_dim = get("attention.key_length", self.n_embd // self.n_head)
        self.n_ff = get("feed_forward_length", 0)
        self.n_expert = get("expert_count", 0)
        self.n_ff_exp = get("expert_feed_forward_length", 0)
        self.n_vocab = [int(t.shape[1]) for t in r.tensors if t.name == "token_embd.weight"][0]
        self.moe_layers = [i for i in range(self.n_layer)
                           if f"blk.{i}.ffn_gate_inp.weight" in self.tensors]

        self.shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
        self.types = {t.name: t.tensor_type for t in r.tensors}
        self.n_expert_used = get("expert_used_count", 0)

    def expert_bytes(self, layer):
        """Bytes of one expert of a layer: gate + up + down of the stacked tensors and their
        biases (where present) / n_expert."""
        return sum(self.tensors.get(f"blk.{layer}.ffn_{p}_exps.{w}", 0)
                   for p in ("gate", "up", "down") for w in ("weight", "bias")) // self.n_expert


def heads_of(m, tp, tp_rank):
    """The q heads of a TP rank: n_head // tp consecutive ones, the first n_head % tp ranks
    one more."""
    base, rem = divmod(m.n_head, tp)
    lo = tp_rank * base + min(tp_rank, rem)
    return list(range(lo, lo + base + (tp_rank < rem)))


def kv_heads_of(m, tp, tp_rank):
    """The kv heads a TP rank needs: those its q heads map to (GQA groups)."""
    group = m.n_head // m.n_head_kv
    return sorted({h // group for h in heads_of(m, tp, tp_rank)})


def expected_bytes(m, name, nbytes, plan, shard, held=None):
    """What a shard holds of one tensor, from the rules; None for the expert weights (checked
    apart). `held`: experts of the tensor's layer the shard's EP group holds."""
    tp, tp_rank = plan["tp"], shard["tp_rank"]
    parts = name.split(".")
    base, kind = (parts[2], parts[3]) if name.startswith("blk.") else (parts[0], parts[1])
    heads = len(heads_of(m, tp, tp_rank))
    kv = len(kv_heads_of(m, tp, tp_rank))
    if base.endswith("_exps"):
        # weights: checked apart; biases: whole rows of the held experts, on every TP rank
        return None if kind == "weight" else nbytes * held // m.n_expert
    if base in ("attn_q", "attn_sinks") or (base == "attn_q_norm"
                                             and m.shapes[name][0] != m.head_dim):
        return nbytes * heads // m.n_head  # by heads (minimax-m2's norm over all of them)
    if base in ("attn_k", "attn_v") or (base == "attn_k_norm"
                                         and m.shapes[name][0] != m.head_dim):
        return nbytes * kv // m.n_head_kv
    if base == "attn_output":
        return nbytes * heads // m.n_head if kind == "weight" else nbytes
    if base in ("ffn_gate", "ffn_up"):
        return nbytes // tp
    if base == "ffn_down":
        return nbytes // tp if kind == "weight" else nbytes
    if base == "output":
        return nbytes // tp if m.n_vocab % tp == 0 else nbytes
    return nbytes  # token_embd, norms, routers and their biases: replicated


def plan(model, *args, check=True):
    args = [str(a) for a in args]
    if "--device" not in args and "--gpu-memory" not in args:
        args += ["--device", "cpu"]
    if "--node-memory" not in args:
        args += ["--node-memory", "1T"]
    proc = run_tandem("plan", "--model", model, *args, "--json", check=check)
    return (json.loads(proc.stdout) if proc.returncode in (0, 3) else None), proc


def a256(n):
    return (n + 255) // 256 * 256


def cuda_reserve(p, sh):
    """What the CUDA backend reserves for a shard (backend_cuda.cu reserve_sizes, sizes_total
    and the step metadata; matmul.cu cu_act_bytes; moe.cu cu_moe_max_tiles), for the request
    shard/model.c reserve_of makes, from the plan's ranges."""
    hp = p["hparams"]
    hd, e, n_exp, k = hp["head_dim"], hp["n_embd"], hp["n_expert"], hp["n_expert_used"]
    tok, ctx = p["batch"], p["ctx_size"]
    q, kv = sh["heads"]["n"] * hd, sh["kv_heads"]["n"] * hd
    ff, ffe = sh["ffn_cols"]["n"], sh["expert_cols"]["n"]
    max_cols = max(e, q, ff, ffe)
    max_rows = max(sh["vocab_rows"]["n"], e, q, kv, ff, ffe, n_exp)
    pairs = tok * k if n_exp > 0 else 0
    rows = max(tok, pairs)
    q8_1 = a256(rows * max_cols) + 2 * a256(rows * (max_cols // 32) * 4)
    q8_k = (a256(rows * max_cols) + a256(rows * (max_cols // 256) * 4)
            + a256(rows * (max_cols // 16) * 4))
    act = a256(max(q8_1, q8_k))  # Q8_0 is Q8_1 without its sums: never the largest
    partial = min(8 * rows * max_rows, 16 << 20)
    segs = (ctx + 511) // 512
    attn = min(tok * sh["heads"]["n"] * segs * (hd + 2), 8 << 20) if segs > 1 else 0
    moe = 0
    if n_exp > 0:
        tiles = (pairs + 7) // 8 + n_exp
        moe = (2 * a256((n_exp + 1) * 4) + 3 * a256(pairs * 4) + a256((tiles * 3 + 2) * 4)
               + 2 * a256(pairs * ffe * 4) + a256(pairs * e * 4))
    meta = (6 * tok + 2 + tok * (ctx // 16 + 1)) * 4
    return 2 * act + a256(partial * 4) + a256(attn * 4) + moe + 2 * meta


SPLITS = [
    ("llama-a-f32.gguf", ["--shards", "2"]),
    ("llama-a-f32.gguf", ["--shards", "4"]),          # tp 4 > 2 kv heads: shared kv heads
    ("llama-b-f32.gguf", ["--shards", "8"]),          # 1 kv head on 8 ranks, tied output
    ("qwen3moe-a-f32.gguf", ["--shards", "2"]),       # 3 experts over 2 EP groups
    ("qwen3moe-a-f32.gguf", ["--shards", "3"]),
    ("qwen3moe-a-f32.gguf", ["--shards", "2", "--tp", "2"]),
    ("qwen3moe-a-f32.gguf", ["--shards", "4", "--tp", "2", "--ep", "2"]),
    ("qwen3moe-b-f32.gguf", ["--shards", "3"]),
    ("qwen3moe-c-f32.gguf", ["--shards", "4", "--tp", "2"]),  # dense and MoE layers
]
# The other architectures: every fixture at tp 2 and 3, ep 2 and 3, where the split is
# possible (test_plan_every_fixture says which are not, and why).
FAMILIES = ("minimax-m2", "gpt-oss", "qwen2", "mistral3")
NEW_FIXTURES = sorted(p.name for p in MODELS.glob("*.gguf") if p.name.startswith(FAMILIES))
for _f in NEW_FIXTURES:
    SPLITS += [(_f, ["--shards", "1"])]
    SPLITS += [(_f, ["--shards", str(n), "--tp", str(n)]) for n in (2, 3)]
    SPLITS += [(_f, ["--shards", str(n), "--ep", str(n)]) for n in (2, 3)]
    SPLITS += [(_f, ["--shards", "4", "--tp", "2", "--ep", "2"])]


def refusal(m, file, tp, ep):
    """Why the loader cannot take a split of m (a substring of the plan's message), or None:
    the rules of shard/model.c plan_partition and of the block boundaries of column slices."""
    if tp > m.n_head:
        return f"tp {tp} is more than the {m.n_head} attention heads"
    if len(m.moe_layers) < m.n_layer and m.n_ff % tp:
        return f"tp {tp} does not divide the dense FFN width {m.n_ff}"
    if not m.moe_layers and ep > 1:
        return "the model has no experts"
    if m.moe_layers and ep > m.n_expert:
        return f"ep {ep} is more than the {m.n_expert} experts"
    if m.moe_layers and m.n_ff_exp % tp:
        return f"tp {tp} does not divide the expert width {m.n_ff_exp}"
    for name, t in m.types.items():
        if tp > 1 and name.endswith(("attn_output.weight", "ffn_down.weight",
                                     "ffn_down_exps.weight")):
            blck = gguf.GGML_QUANT_SIZES[t][0]
            if "attn_output" in name:
                cols = [(h[0] * m.head_dim, len(h) * m.head_dim)
                        for h in (heads_of(m, tp, r) for r in range(tp))]
            else:
                w = m.shapes[name][0] // tp
                cols = [(r * w, w) for r in range(tp)]
            if any(lo % blck or n % blck for lo, n in cols):
                return "block boundaries"
    return None


@pytest.mark.parametrize("file,args", SPLITS, ids=[f"{f}:{' '.join(a)}" for f, a in SPLITS])
def test_plan_bytes(file, args):
    m = Model(MODELS / file)
    want_tp = int(args[args.index("--tp") + 1]) if "--tp" in args else None
    want_ep = int(args[args.index("--ep") + 1]) if "--ep" in args else None
    if want_tp or want_ep:
        shards = int(args[args.index("--shards") + 1])
        tp = want_tp or shards // want_ep
        why = refusal(m, file, tp, shards // tp)
        if why is not None:
            _, proc = plan(MODELS / file, *args, check=False)
            assert proc.returncode == 2 and why in proc.stderr, proc.stderr
            return
    p, _ = plan(MODELS / file, *args)
    n, tp, ep = p["n_shards"], p["tp"], p["ep"]
    assert n == tp * ep
    assert p["model_bytes"] == sum(m.tensors.values())
    by_name = {t["name"]: t for t in p["tensors"]}
    assert set(by_name) == set(m.tensors), "every tensor of the file is in the plan"
    unused = [t["name"] for t in p["tensors"] if t["split"] == "unused"]
    assert not unused, f"tensors no shard binds: {unused}"

    for name, nbytes in m.tensors.items():
        t = by_name[name]
        assert t["bytes"] == nbytes
        ps = t["per_shard"]
        if t["split"] == "replicated":
            assert ps == [nbytes] * n, f"{name}: replicated tensors count once per shard"
        elif t["split"] in ("tp_rows", "tp_cols"):
            # Each EP group holds one copy, split over its TP ranks.
            assert sum(ps) == nbytes * ep, name
        elif t["split"] == "experts":
            # each expert on exactly one EP group: its weights split over the group's TP
            # ranks, its biases whole on each of them
            assert sum(ps) == nbytes * (tp if name.endswith(".bias") else 1), name
        for s, shard in enumerate(p["shards"]):
            layer = int(name.split(".")[1]) if name.startswith("blk.") else None
            held = (p["expert_ranges"][layer][shard["ep_rank"]]["n"]
                    if layer in m.moe_layers else None)
            want = expected_bytes(m, name, nbytes, p, shard, held)
            if want is not None:
                assert ps[s] == want, f"{name} shard {s}: {ps[s]} != {want}"

    # Experts: per-layer ranges cover every expert once; a shard holds its group's experts,
    # split over TP.
    for layer in range(m.n_layer):
        ranges = p["expert_ranges"][layer]
        if layer not in m.moe_layers:
            assert ranges is None
            continue
        assert sum(r["n"] for r in ranges) == m.n_expert
        lo = 0
        for r in ranges:
            assert r["lo"] == lo
            lo += r["n"]
        for part in ("gate", "up", "down"):
            name = f"blk.{layer}.ffn_{part}_exps.weight"
            per_expert = m.tensors[name] // m.n_expert
            for s, shard in enumerate(p["shards"]):
                held = ranges[shard["ep_rank"]]["n"]
                assert by_name[name]["per_shard"][s] == held * per_expert // tp

    # Shard totals are the sum of their tensors; replicated + sharded = weights.
    for s, shard in enumerate(p["shards"]):
        assert shard["weights"] == sum(t["per_shard"][s] for t in p["tensors"])
        assert shard["replicated"] + shard["sharded"] == shard["weights"]
    # Unpartitioned bytes = what every shard holds whole (once) + the parts of the rest, when
    # no tensor is held by several shards in part (tp or ep is 1 and kv heads divide).
    if (tp == 1 or ep == 1) and m.n_head_kv % tp == 0:
        reps = {sh["replicated"] for sh in p["shards"]}
        assert len(reps) == 1
        assert reps.pop() + sum(sh["sharded"] for sh in p["shards"]) == p["model_bytes"]


@pytest.mark.parametrize("file", ["qwen3moe-a-f32.gguf", "qwen3moe-b-f32.gguf",
                                  "qwen3moe-c-f32.gguf", "minimax-m2-b-f32.gguf",
                                  "gpt-oss-a-mxfp4.gguf", "gpt-oss-b-f32.gguf"])
@pytest.mark.parametrize("ep", [2, 3, 4])
def test_plan_expert_balance(file, ep):
    m = Model(MODELS / file)
    if ep > m.n_expert:
        # more EP groups than experts: some shard would hold none; the plan refuses it
        _, proc = plan(MODELS / file, "--shards", ep, "--ep", ep, check=False)
        assert proc.returncode == 2 and "expert" in proc.stderr
        return
    p, _ = plan(MODELS / file, "--shards", ep, "--ep", ep)
    one = max(m.expert_bytes(layer) for layer in m.moe_layers)
    total = sum(m.expert_bytes(layer) * m.n_expert for layer in m.moe_layers)
    loads = [sh["bytes"]["experts"] for sh in p["shards"]]
    assert sum(loads) == total
    assert loads == p["ep_load"]
    optimal = max(math.ceil(total / ep), one)  # no packing of whole experts does better
    assert max(loads) <= optimal + one, "within one expert's bytes of optimal"
    assert max(loads) - min(loads) <= one


def expected_reads(m, p):
    """Weight bytes one decoded token reads on each shard, from the rules: every tensor's
    slice, token_embd one row (and the output head's rows when tied), expert tensors k /
    n_expert of the slice (uniform routing; rounded down per tensor)."""
    out = []
    for shard in p["shards"]:
        total = experts = 0
        for name, nbytes in m.tensors.items():
            layer = int(name.split(".")[1]) if name.startswith("blk.") else None
            held = (p["expert_ranges"][layer][shard["ep_rank"]]["n"]
                    if layer in m.moe_layers else None)
            want = expected_bytes(m, name, nbytes, p, shard, held)
            if name == "token_embd.weight":
                row = nbytes // m.n_vocab
                want = row + (row * shard["vocab_rows"]["n"] if "output.weight" not in m.tensors
                              else 0)
            elif "_exps." in name:
                if want is None:  # the expert weights: the held experts' slices
                    want = held * (nbytes // m.n_expert) // p["tp"]
                want = want * m.n_expert_used // m.n_expert
                experts += want
            total += want
        out.append((total, experts))
    return out


@pytest.mark.parametrize("file,args", [
    ("llama-b-f32.gguf", ["--shards", "2"]),  # tied output
    ("qwen3moe-b-f32.gguf", ["--shards", "2"]),
    ("minimax-m2-b-f32.gguf", ["--shards", "2", "--tp", "2"]),
    ("minimax-m2-a-q4_k.gguf", ["--shards", "3"]),
    ("gpt-oss-a-mxfp4.gguf", ["--shards", "4", "--tp", "2"]),
    ("gpt-oss-b-f32.gguf", ["--shards", "1"]),
    ("qwen2-b-f32.gguf", ["--shards", "3"]),
    ("mistral3-b-f32.gguf", ["--shards", "2"]),
])
def test_plan_reads_per_token(file, args):
    """The bytes one decoded token reads (the roofline's numerator) per shard, and the decode
    ceiling --mem-bw derives from them; at one shard the same as `tandem inspect`'s."""
    m = Model(MODELS / file)
    p, _ = plan(MODELS / file, *args, "--mem-bw", "273", "--ctx-size", "100")
    for sh, (total, experts) in zip(p["shards"], expected_reads(m, p)):
        assert (sh["read_per_token"], sh["read_experts"]) == (total, experts)
    most = max(sh["read_per_token"] for sh in p["shards"])
    assert p["read_per_token_max"] == most
    kv = max(100 * sh["kv_per_token_full"] + min(100, p["swa_window"] or 100)
             * sh["kv_per_token_swa"] for sh in p["shards"])
    assert p["kv_read_at_ctx"] == kv
    assert p["decode_ceiling_tps"] == pytest.approx(273e9 / most)
    assert p["decode_ceiling_tps_at_ctx"] == pytest.approx(273e9 / (most + kv), rel=1e-3)
    if p["n_shards"] == 1:
        j = json.loads(run_tandem("inspect", "--json", "--no-tensors", MODELS / file).stdout)
        per = j["totals"]["bytes_per_token"]
        assert abs(per["top_k_experts"] - most) <= len(m.tensors)  # rounding per tensor
    # without --mem-bw, no ceiling
    q, _ = plan(MODELS / file, *args)
    assert q["decode_ceiling_tps"] is None and q["read_per_token_max"] == most


def test_plan_kv_by_layer_kind():
    """gpt-oss: KV per token by layer kind (sliding-window layers and full ones); one pool
    for both today, so the sliding layers keep as many tokens as the rest."""
    m = Model(MODELS / "gpt-oss-b-f32.gguf")  # 3 layers, 0 and 2 slide (window 5)
    p, _ = plan(MODELS / "gpt-oss-b-f32.gguf", "--shards", "3", "--tp", "3",
                "--ctx-size", "1000")
    assert (p["n_swa_layers"], p["swa_window"]) == (2, 5)
    assert p["kv_swa_tokens"] == p["kv_tokens"] == 1008
    assert p["kv_swa_blocks"] == p["kv_blocks"]
    for sh in p["shards"]:
        row = 2 * len(kv_heads_of(m, 3, sh["tp_rank"])) * m.head_dim * 4
        assert sh["kv_per_token_swa"] == 2 * row and sh["kv_per_token_full"] == row
        assert sh["kv_per_token"] == 3 * row
        assert sh["kv"] == 1008 * 3 * row
    text = run_tandem("plan", "--model", MODELS / "gpt-oss-b-f32.gguf", "--shards", "1",
                      "--device", "cpu", "--node-memory", "1T").stdout
    assert "of which the 2 sliding-window layers (window 5)" in text
    assert "(one pool with the full-attention layers)" in text
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "1")
    assert (p["n_swa_layers"], p["swa_window"], p["kv_swa_tokens"]) == (0, 0, 0)
    assert p["shards"][0]["kv_per_token_swa"] == 0


@pytest.mark.parametrize("file", ["gpt-oss-a-mxfp4.gguf", "minimax-m2-b-f32.gguf"])
def test_plan_kv_tokens_fit(file):
    """The KV a shard's memory holds beside the weights and buffers, in whole blocks."""
    p, _ = plan(MODELS / file, "--shards", "2", "--gpu-memory", "1G", "--node-memory", "1G")
    room = (1 << 30) - max(sh["total"] - sh["kv"] for sh in p["shards"])
    full = 16 * max(sh["kv_per_token_full"] for sh in p["shards"])
    swa = 16 * max(sh["kv_per_token_swa"] for sh in p["shards"])
    # the sliding pool: min(full pool, 2 x sequences x (ceil((w - 1) / 16) + 2) + ceil(batch /
    # 16)), plan's defaults 64 sequences and a batch of 512 (shard/shd_model.h)
    w = p["swa_window"]
    want = 2 * 64 * (-(-(w - 1) // 16) + 2) + 512 // 16 if w else 0
    n = room // (full + swa)  # pools of equal size, when that is below the sliding want
    if n > want:
        n = (room - want * swa) // full
    assert p["kv_tokens_fit"] == n * 16
    need = max(sh["total"] for sh in p["shards"])
    p, _ = plan(MODELS / file, "--shards", "2", "--node-memory", str(need))
    assert p["kv_tokens_fit"] >= p["kv_tokens"]
    p, proc = plan(MODELS / file, "--shards", "2", "--node-memory", "1M", check=False)
    assert p["kv_tokens_fit"] == 0 and proc.returncode == 3
    proc = run_tandem("plan", "--model", MODELS / file, "--shards", "1", "--mem-bw", "fast",
                      check=False)
    assert proc.returncode == 2 and "--mem-bw wants GB/s" in proc.stderr


def test_plan_kv_and_buffers():
    m = Model(MODELS / "llama-a-f32.gguf")
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "4", "--ctx-size", "1000")
    assert p["kv_tokens"] == 1008 and p["kv_blocks"] == 63  # whole blocks of 16
    assert p["device"]["kind"] == "cpu" and p["kv_type"] == "f32"
    for s, sh in enumerate(p["shards"]):
        kvh = len(kv_heads_of(m, 4, sh["tp_rank"]))
        assert sh["kv_per_token"] == 2 * m.n_layer * kvh * m.head_dim * 4
        assert sh["kv"] == 1008 * sh["kv_per_token"]
        assert sh["buffers"] == (sh["scratch"] + sh["backend_scratch"] + sh["vec_copies"]
                                 + sh["comm"])
        assert sh["backend_scratch"] > 0 and sh["margin"] == 0
        assert sh["comm"] == 2 * 512 * m.n_embd * 4
        assert sh["weights_device"] == sh["weights"]
        assert sh["total"] == sh["weights"] + sh["kv"] + sh["buffers"]
    # A small context still holds one batch (transport/exec_local.c's minimum).
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "2", "--ctx-size", "16")
    assert p["kv_tokens"] == 528
    # --kv-memory: the blocks it holds on the shard with the most kv heads.
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "1", "--kv-memory", "8M")
    per_token = 2 * m.n_layer * m.n_head_kv * m.head_dim * 4
    assert p["kv_blocks"] == (8 << 20) // (16 * per_token)


def test_plan_over_budget_refused():
    model = MODELS / "qwen3moe-a-f32.gguf"
    p, _ = plan(model, "--shards", "2")
    need = max(sh["total"] for sh in p["shards"])
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--node-memory", "1M",
                      "--device", "cpu", check=False)
    assert proc.returncode == 3
    assert "refused" in proc.stderr and f"({need} bytes" in proc.stderr
    assert "1048576 bytes, --node-memory" in proc.stderr
    assert "NO" in proc.stdout  # the plan is still printed
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--node-memory", "1M", "--json",
                      "--device", "cpu", check=False)
    assert proc.returncode == 3
    j = json.loads(proc.stdout)
    assert j["fits"] is False and not any(sh["fits"] for sh in j["shards"])
    # Enough memory: accepted.
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--node-memory", str(need),
                      "--device", "cpu")
    assert "refused" not in proc.stderr


KV_BYTES = {"f32": (4, 1), "f16": (2, 1), "q8_0": (34, 32)}  # bytes per element, as a ratio


@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("device", [["--device", "cpu"], ["--gpu-memory", "80G"]])
def test_plan_kv_types(kv_type, device):
    m = Model(MODELS / "llama-a-f32.gguf")  # head_dim 64
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "2", "--ctx-size", "1000",
                "--kv-type", kv_type, *device)
    assert p["kv_type"] == kv_type and p["kv_tokens"] == 1008
    num, den = KV_BYTES[kv_type]
    for sh in p["shards"]:
        kvh = len(kv_heads_of(m, 2, sh["tp_rank"]))
        assert sh["kv_per_token"] == 2 * m.n_layer * kvh * m.head_dim * num // den
        assert sh["kv"] == 1008 * sh["kv_per_token"]
    f32, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "2", "--ctx-size", "1000",
                  "--kv-type", "f32", *device)
    for sh, ref in zip(p["shards"], f32["shards"]):
        assert sh["kv"] * 4 * den == ref["kv"] * num  # f16: half; q8_0: 34/128 of f32
        assert sh["total"] - sh["kv"] == ref["total"] - ref["kv"]  # nothing else moves


def test_plan_kv_type_default_by_device():
    cpu, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "1", "--device", "cpu")
    gpu, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "1", "--gpu-memory", "80G")
    assert cpu["kv_type"] == "f32" and gpu["kv_type"] == "f16"
    assert gpu["shards"][0]["kv"] * 2 == cpu["shards"][0]["kv"]


def test_plan_spec_mtp_counts_the_mtp_layer():
    """--spec mtp: the MTP block's attention keeps its K/V as one more full-attention layer
    (the block runs on the one shard), so the planned KV per token is the --spec off figure
    plus one attention layer's K and V, computed here from the GGUF metadata (kv heads, key
    and value lengths; the block's own attn_k has that many outputs). Any --spec other than
    off asks for logits rows for the drafts, on a hybrid model one spare state slot per
    sequence up to 8 (api/server/server.c). The running server's KV pool under a --kv-memory
    budget is the independent check of both: `tandem serve --spec X` must hold exactly the
    blocks `tandem plan --spec X` says."""
    path = FIXTURES / "hybrid" / "qwen35moe-b-f32.gguf"
    if not path.exists():
        pytest.skip("hybrid fixtures missing")
    r = gguf.GGUFReader(str(path))
    meta = {k.split(".", 1)[1]: f.contents() for k, f in r.fields.items()
            if k.startswith("qwen35moe.")}
    n_mtp = meta["nextn_predict_layers"]
    n_trunk = meta["block_count"] - n_mtp
    kvh, dk, dv = (meta["attention.head_count_kv"], meta["attention.key_length"],
                   meta["attention.value_length"])
    k_out = [int(t.shape[1]) for t in r.tensors if t.name == f"blk.{n_trunk}.attn_k.weight"][0]
    assert n_mtp == 1 and k_out == kvh * dk
    one_layer = kvh * (dk + dv) * 4  # f32 K and V rows of one attention layer
    n_attn = meta["attention.recurrent_layers"][:n_trunk].count(False)
    base = ("--shards", "1", "--ctx-size", "1000")
    off, _ = plan(path, *base)
    mtp, _ = plan(path, *base, "--spec", "mtp")
    so, sm = off["shards"][0], mtp["shards"][0]
    assert so["kv_per_token"] == so["kv_per_token_full"] == n_attn * one_layer
    assert sm["kv_per_token"] == sm["kv_per_token_full"] == so["kv_per_token"] + one_layer
    assert mtp["kv_tokens"] == off["kv_tokens"] == 1008
    assert (off["spec"], mtp["spec"]) == ("off", "mtp")
    # rows: 64 running sequences, + 8 spare state slots under speculation
    assert (off["n_out"], off["n_state_slots"]) == (64, 64)
    assert (mtp["n_out"], mtp["n_state_slots"]) == (72, 72)
    state = mdl_state_bytes(meta) * 2 * 72  # running + stored prefix states
    assert sm["kv"] == 1008 * sm["kv_per_token"] + state
    ngram, _ = plan(path, *base, "--spec", "ngram")
    assert ngram["shards"][0]["kv_per_token"] == so["kv_per_token"]
    assert ngram["n_out"] == 72
    # the server's pool under a budget: what the plan says for each mode
    for spec in ("off", "ngram", "mtp"):
        want, _ = plan(path, "--shards", "1", "--kv-memory", "4M", "--spec", spec)
        srv = ServeProcess(path, "--spec", spec, "--kv-memory", "4M", threads=1)
        try:
            got = metric_value(srv.metrics(), "tandem_kv_blocks_total")
        finally:
            srv.stop()
        assert got == want["kv_blocks"], (spec, got, want["kv_blocks"])
    # refused as serve refuses: over shards, or a model without an MTP block
    _, proc = plan(path, "--shards", "2", "--spec", "mtp", check=False)
    assert proc.returncode == 2 and "--spec mtp runs on one node only" in proc.stderr
    _, proc = plan(MODELS / "llama-a-f32.gguf", "--shards", "1", "--spec", "mtp", check=False)
    assert proc.returncode == 2 and "no multi-token-prediction block" in proc.stderr
    _, proc = plan(path, "--shards", "1", "--spec", "eagle", check=False)
    assert proc.returncode == 2 and "--spec is off, ngram, draft or mtp" in proc.stderr


def mdl_state_bytes(meta):
    """One sequence's Gated DeltaNet state over the trunk's recurrent layers (f32): the conv
    window (conv_kernel - 1 rows of the q, k and v channels) and a d x d state per v head,
    from the ssm.* keys as llama.cpp's converter writes them (time_step_rank v heads,
    group_count k heads, state_size the head dim d)."""
    n_trunk = meta["block_count"] - meta["nextn_predict_layers"]
    n_rec = meta["attention.recurrent_layers"][:n_trunk].count(True)
    d, v_heads, k_heads = (meta["ssm.state_size"], meta["ssm.time_step_rank"],
                           meta["ssm.group_count"])
    assert meta["ssm.inner_size"] == v_heads * d
    conv = (meta["ssm.conv_kernel"] - 1) * (2 * k_heads + v_heads) * d
    return n_rec * (conv + v_heads * d * d) * 4


@pytest.mark.parametrize("file,head_dim", [("qwen3moe-b-f32.gguf", 48), ("llama-b-f32.gguf", 16)])
def test_plan_q8_0_needs_head_dim_of_32(file, head_dim):
    proc = run_tandem("plan", "--model", MODELS / file, "--shards", "1", "--kv-type", "q8_0",
                      "--device", "cpu", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (f"KV cache type q8_0 needs a head dim that is a multiple of 32 (the model's is "
            f"{head_dim}): use --kv-type f16") in proc.stderr
    plan(MODELS / file, "--shards", "1", "--kv-type", "f16")  # f16 rows have no blocks


@pytest.mark.parametrize("file,args", [
    ("llama-a-f32.gguf", ["--shards", "2"]),
    ("llama-a-q4_k.gguf", ["--shards", "1", "--ctx-size", "4096"]),  # attention segments
    ("qwen3moe-a-f32.gguf", ["--shards", "2"]),
    ("qwen3moe-c-f32.gguf", ["--shards", "4", "--tp", "2", "--batch", "64"]),
])
def test_plan_gpu_scratch(file, args):
    """--gpu-memory plans for a GPU without one: the CUDA backend's op scratch and the
    256 MiB margin of shard/model.c check_fit join the step scratch; the f32 norm copies and
    collective staging stay in host memory."""
    p, _ = plan(MODELS / file, *args, "--gpu-memory", "80G", "--kv-type", "f32")
    cpu, _ = plan(MODELS / file, *args, "--device", "cpu", "--kv-type", "f32")
    assert p["device"]["kind"] == "cuda" and p["device"]["queried"] is False
    assert "a GPU with 80.00 GiB free" in p["device"]["label"]
    assert p["node_memory_source"] == "--node-memory"  # plan() passes 1T: it wins
    for sh, c in zip(p["shards"], cpu["shards"]):
        assert sh["backend_scratch"] == cuda_reserve(p, sh)
        assert sh["margin"] == 256 << 20
        assert sh["buffers"] == sh["scratch"] + sh["backend_scratch"] + sh["margin"]
        assert sh["total"] == sh["weights_device"] + sh["kv"] + sh["buffers"]
        # the same slice, KV and step scratch as on the CPU; the store holds vectors as f32
        # and aligns each view to 256 bytes
        assert (sh["weights"], sh["kv"], sh["scratch"]) == (c["weights"], c["kv"], c["scratch"])
        assert sh["weights_device"] >= sh["weights"]
        assert sh["weights_device"] - sh["weights"] < 256 * len(p["tensors"]) + 4 * sum(
            t["bytes"] for t in p["tensors"] if t["name"].endswith("norm.weight"))


def test_plan_gpu_text_and_refusal():
    model = MODELS / "qwen3moe-a-f32.gguf"
    out = run_tandem("plan", "--model", model, "--shards", "2", "--gpu-memory", "80G").stdout
    assert "device   cuda:0, a GPU with 80.00 GiB free (--gpu-memory; not queried)" in out
    assert "memory   80.00 GiB per shard (--gpu-memory)" in out
    for row in ("weights on the GPU", "step scratch", "GPU scratch", "GPU margin",
                "fits the GPU"):
        assert f"  {row}" in out, row
    assert "x 64 x 2 B" in out  # f16 KV rows by default
    p, _ = plan(model, "--shards", "2", "--gpu-memory", "80G")
    need = max(sh["total"] for sh in p["shards"])
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--gpu-memory", "1G",
                      "--node-memory", str(need - 1), check=False)
    assert proc.returncode == 3
    assert f"({need} bytes" in proc.stderr and "GPU scratch" in proc.stderr
    assert f"but the GPU has" in proc.stderr and "--node-memory" in proc.stderr
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--gpu-memory", str(need))
    assert "refused" not in proc.stderr


def test_plan_device_options():
    model = MODELS / "llama-a-f32.gguf"
    # --device cuda asks the driver: without a GPU it fails cleanly and names the way out
    proc = run_tandem("plan", "--model", model, "--shards", "1", "--device", "cuda",
                      "--json", check=False)
    if proc.returncode in (0, 3):
        d = json.loads(proc.stdout)["device"]
        assert d["kind"] == "cuda" and d["queried"] is True and d["free_bytes"] > 0
    else:
        assert proc.returncode == 2 and proc.stdout == ""
        assert "no CUDA device" in proc.stderr and "--gpu-memory" in proc.stderr
    for args, message in [
        (["--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        (["--device", "cpu", "--gpu-memory", "1G"], "--gpu-memory plans for a GPU"),
        (["--kv-type", "q4_0"], "--kv-type 'q4_0': expected f32, f16, q8_0"),
        (["--gpu-memory", "lots"], "is not a size"),
    ]:
        proc = run_tandem("plan", "--model", model, "--shards", "1", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    # the default device is the shards': TANDEM_DEVICE (the suite sets it), else auto
    env = dict(os.environ, TANDEM_DEVICE="cpu")
    out = run_tandem("plan", "--model", model, "--shards", "1", "--json", env=env).stdout
    assert json.loads(out)["device"]["kind"] == "cpu"


@pytest.mark.parametrize("file,args,message", [
    ("llama-a-f32.gguf", ["--shards", "3"], "tp 3 does not divide the dense FFN width 256"),
    ("llama-a-f32.gguf", ["--shards", "5"], "tp 5 is more than the 4 attention heads"),
    ("llama-a-f32.gguf", ["--shards", "4", "--tp", "3"], "--tp 3 does not divide --shards 4"),
    ("llama-a-f32.gguf", ["--shards", "4", "--tp", "2", "--ep", "1"],
     "--shards 4 is not --tp 2 x --ep 1"),
    ("llama-a-f32.gguf", ["--shards", "2", "--ep", "2"], "the model has no experts"),
    ("llama-a-f32.gguf", ["--shards", "1", "--kv-memory", "1K"], "--kv-memory"),
    ("qwen3moe-a-f32.gguf", ["--shards", "4", "--ep", "4"], "ep 4 is more than the 3 experts"),
    ("qwen3moe-a-q4_k.gguf", ["--shards", "2", "--tp", "2"],
     "'blk.0.attn_output.weight': tp 2 gives shard 0 columns [0, 128) of a Q4_K matrix"),
    ("llama-a-f32.gguf", ["--shards", "0"], "--shards wants an integer"),
    ("llama-a-f32.gguf", ["--shards", "2", "--node-memory", "lots"], "is not a size"),
])
def test_plan_bad_splits(file, args, message):
    proc = run_tandem("plan", "--model", MODELS / file, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


def retyped_copy(src, dst, retype):
    """A metadata-only copy of GGUF src (the data section a hole) with the types of the
    tensors named in retype replaced."""
    r = gguf.GGUFReader(str(src))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(dst), arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vt, sub)
    for t in r.tensors:
        typ = retype.get(t.name, t.tensor_type)
        blck, size = gguf.GGML_QUANT_SIZES[typ]
        ne = [int(x) for x in t.shape]
        w.add_tensor_info(t.name, list(reversed(ne)), np.dtype("float32"),
                          int(np.prod(ne)) // blck * size, raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    end = w.fout[0].tell()
    w.fout[0].truncate(end + sum(ti.nbytes + 64 for ti in w.tensors[0].values()))
    w.close()


def test_plan_refuses_types_without_kernels(tmp_path):
    """The loader has no kernel for the IQ1/IQ2/IQ3 types; the plan refuses them by name."""
    model = tmp_path / "llama-iq2.gguf"
    retyped_copy(MODELS / "llama-a-f32.gguf", model,
                 {"blk.1.attn_q.weight": gguf.GGMLQuantizationType.IQ2_XXS})
    proc = run_tandem("plan", "--model", model, "--shards", "1", "--device", "cpu", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "tensor 'blk.1.attn_q.weight': type IQ2_XXS has no kernel in this build" in proc.stderr
    same = tmp_path / "llama-same.gguf"  # the copy itself plans as the original
    retyped_copy(MODELS / "llama-a-f32.gguf", same, {})
    assert plan(same, "--shards", "2")[0]["shards"] == plan(MODELS / "llama-a-f32.gguf",
                                                           "--shards", "2")[0]["shards"]


def test_inspect_model_section(tmp_path):
    """`tandem inspect` says how Tandem reads a model of each family, and why it cannot
    read one of another architecture."""
    for file, wants in [
        ("gpt-oss-b-f32.gguf", ["architecture     gpt-oss", "2 in a sliding window of 5 tokens",
                                "a sink logit per head", "router: top k of the logits",
                                "clamped SwiGLU", "attn_q.bias", "ffn_down_exps.bias"]),
        ("minimax-m2-b-f32.gguf", ["RMSNorm over all heads at once", "NEOX on 12 of 16 dims",
                                   "chosen by sigmoid + exp_probs_b", "exp_probs_b.bias"]),
        ("mistral3-b-f32.gguf", ["NORM on 16 of 16 dims", "yarn x8 from 32 tokens",
                                 "attn temperature", "tied: token_embd"]),
        ("qwen2-a-f32.gguf", ["attn_q.bias, attn_k.bias, attn_v.bias", "dense FFN        2 layers"]),
        ("qwen3moe-a-f32.gguf", ["RMSNorm per head", "router: softmax over all experts"]),
    ]:
        text = run_tandem("inspect", "--no-tensors", MODELS / file).stdout
        for want in wants:
            assert want in text, (file, want)
    j = json.loads(run_tandem("inspect", "--json", "--no-tensors",
                              MODELS / "gpt-oss-b-f32.gguf").stdout)["model"]
    assert (j["arch"], j["sliding_window"], j["swa_layers"]) == ("gpt-oss", 5, [0, 2])
    assert (j["gating"], j["attn_sinks"], j["qk_norm"]) == ("softmax_selected", True, "none")
    hybrid = MODELS.parent / "hybrid" / "qwen35moe-a-f32.gguf"
    text = run_tandem("inspect", "--no-tensors", hybrid).stdout
    for want in ["3 Gated DeltaNet (layers 0, 1, 2), 1 gated attention", "output gate sigmoid(g)",
                 "2 q/k heads, 4 v heads (tiled order) x 32, conv 4 taps",
                 "shared expert    SwiGLU 48 wide"]:
        assert want in text, want
    j = json.loads(run_tandem("inspect", "--json", "--no-tensors", hybrid).stdout)["model"]
    assert (j["gdn_layers"], j["attn_out_gate"], j["n_ff_shexp"]) == ([0, 1, 2], True, 48)
    assert j["gdn"]["state_bytes"] == 3 * 4 * ((2 * 2 + 4) * 32 * 3 + 4 * 32 * 32)
    w = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "rwkv7")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    text = run_tandem("inspect", tmp_path / "other.gguf").stdout
    assert "this build cannot run it: general.architecture 'rwkv7' is not supported" in text
    j = json.loads(run_tandem("inspect", "--json", tmp_path / "other.gguf").stdout)["model"]
    assert j["supported"] is False and "rwkv7" in j["error"]


def test_plan_usage_and_missing_model(tmp_path):
    proc = run_tandem("plan", "--shards", "2", check=False)
    assert proc.returncode == 2 and "--model and --shards are required" in proc.stderr
    proc = run_tandem("plan", "--model", tmp_path / "none.gguf", "--shards", "2", check=False)
    assert proc.returncode == 1 and "none.gguf" in proc.stderr
    assert run_tandem("plan", "--help").stdout.startswith("usage: tandem plan")


def test_plan_text_names_what_is_replicated():
    out = run_tandem("plan", "--model", MODELS / "qwen3moe-a-f32.gguf", "--shards", "2",
                     "--node-memory", "1T", "--device", "cpu").stdout
    assert "tp 1 x ep 2" in out
    assert "held whole by every shard: token_embd.weight" in out
    assert "routers (ffn_gate_inp)" in out
    assert "KV per token on shard 0: 2 x 1 layers x 2 kv heads x 64 x 4 B" in out


@pytest.mark.skipif(not BENCH_MODEL.exists(), reason=f"{BENCH_MODEL} not present")
@pytest.mark.parametrize("shards", [2, 3])
def test_plan_bench_model(shards):
    m = Model(BENCH_MODEL)
    p, _ = plan(BENCH_MODEL, "--shards", shards)
    assert (p["tp"], p["ep"]) == (1, shards)
    assert p["model_bytes"] == sum(m.tensors.values())
    reps = {sh["replicated"] for sh in p["shards"]}
    assert len(reps) == 1
    assert reps.pop() + sum(sh["sharded"] for sh in p["shards"]) == p["model_bytes"]
    loads = [sh["bytes"]["experts"] for sh in p["shards"]]
    assert max(loads) - min(loads) <= max(m.expert_bytes(i) for i in m.moe_layers)


# ---- real models, as metadata-only GGUFs ------------------------------------------------

SHAPE_TOOL = SOURCE_DIR / "tools" / "make_shape_gguf.py"
# (model, mix): the published size its tensors should add up to, in bytes, and how close
# (the sources are in docs/models.md)
SHAPES = {
    ("gpt-oss-120b", "mxfp4"): (59.02 * 2**30, 0.01 * 2**30),  # ggml-org, 59.02 GiB
    ("gpt-oss-120b", "bf16"): (60.87 * 2**30, 0.01 * 2**30),   # unsloth "F16", 60.87 GiB
    ("gpt-oss-20b", "mxfp4"): (12.1e9, 0.05e9),                # ~12.1 GB
    ("minimax-m2.5", "q4_k_m"): (138e9, 1.5e9),                # ~138 GB
    ("minimax-m2.5", "q3_k_xl"): (101 * 2**30, 2 * 2**30),     # ~101 GiB (an assumed mix)
    ("qwen2.5-coder-32b", "q4_k_m"): (19.85e9, 0.05e9),        # 19.85 GB
    ("devstral-small-2", "q4_k_m"): (14.3e9, 0.3e9),
    ("qwen3-235b-a22b", "q4_k_m"): (142e9, 1.5e9),             # ~142 GB
    ("qwen3-coder-30b-a3b", "q4_k_m"): (18.6e9, 0.1e9),        # ~18.6 GB
    ("llama-3.3-70b", "q4_k_m"): (42.52e9, 0.05e9),            # 42.52 GB
}
SPARK = ["--gpu-memory", "119.2G", "--node-memory", "119.2G", "--ctx-size", "32768",
         "--mem-bw", "273"]  # a DGX Spark: 128 GB = 119.2 GiB unified memory, 273 GB/s


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The metadata-only real-size GGUFs, written by tools/make_shape_gguf.py: sparse files as
    long as the real ones, occupying a few KiB."""
    d = tmp_path_factory.mktemp("shapes")
    out = {}
    for model, mix in SHAPES:
        path = d / f"{model}-{mix}.gguf"
        subprocess.run([sys.executable, str(SHAPE_TOOL), model, "--mix", mix, "-o", str(path)],
                       check=True, capture_output=True, timeout=60)
        out[model, mix] = path
    return out


@pytest.mark.parametrize("key", list(SHAPES), ids=[f"{m}-{x}" for m, x in SHAPES])
def test_shape_gguf(shapes, key):
    """tandem inspect and tandem plan on the real shapes: every tensor planned, the bytes
    consistent with the file's, the published sizes met; one and two DGX Sparks."""
    path = shapes[key]
    want, tol = SHAPES[key]
    st = os.stat(path)
    assert st.st_size > 10**10 and st.st_blocks * 512 < 16 << 20, "sparse"
    m = Model(path)
    tensor_bytes = sum(m.tensors.values())
    assert abs(tensor_bytes - want) <= tol, f"{tensor_bytes / 2**30:.2f} GiB"

    j = json.loads(run_tandem("inspect", "--json", "--no-tensors", path).stdout)
    assert j["totals"]["tensor_bytes"] == tensor_bytes
    assert j["totals"]["file_bytes"] == st.st_size
    model = j["model"]
    assert model["supported"] and model["n_layer"] == m.n_layer
    assert (model["n_head"], model["n_head_kv"], model["head_dim"]) == \
        (m.n_head, m.n_head_kv, m.head_dim)
    assert model["n_expert"] == m.n_expert and model["n_ff_exp"] == m.n_ff_exp
    text = run_tandem("inspect", "--no-tensors", path).stdout
    assert "model (as Tandem reads it):" in text and "bytes per type:" in text

    one, proc1 = plan(path, "--shards", "1", *SPARK, check=False)
    assert one["model_bytes"] == tensor_bytes
    assert not [t for t in one["tensors"] if t["split"] == "unused"]
    assert one["shards"][0]["weights"] == tensor_bytes  # one shard binds everything
    assert proc1.returncode == (0 if one["fits"] else 3)
    # one row of token_embd, k / n_expert of the experts, everything else once
    experts = sum(v for n, v in m.tensors.items() if "_exps." in n)
    rest = tensor_bytes - experts - m.tensors["token_embd.weight"]
    read = one["shards"][0]["read_per_token"]
    k = m.n_expert_used / m.n_expert if m.n_expert else 0
    assert abs(read - (rest + experts * k + m.tensors["token_embd.weight"] / m.n_vocab)) < 4096
    assert one["decode_ceiling_tps"] == pytest.approx(273e9 / read)

    two, proc2 = plan(path, "--shards", "2", *SPARK, check=False)
    assert proc2.returncode == 0 and two["fits"], "two Sparks hold each of these"
    if m.n_expert:
        assert (two["tp"], two["ep"]) == (1, 2)
        for sh in two["shards"]:  # EP 2 halves the experts, the rest stays whole
            assert sh["bytes"]["experts"] * 2 == two["expert_bytes_total"]
            assert sh["weights"] == tensor_bytes - two["expert_bytes_total"] // 2
    else:
        assert (two["tp"], two["ep"]) == (2, 1)
        assert all(sh["weights"] < tensor_bytes * 0.55 for sh in two["shards"])


def test_shape_gguf_fits_a_spark(shapes):
    """What fits one DGX Spark with 32768 tokens of f16 KV: gpt-oss-120b and the 3-bit
    MiniMax-M2.5 do, its Q4_K_M does not (exit 3, with the numbers)."""
    for key, fits in [(("gpt-oss-120b", "mxfp4"), True), (("minimax-m2.5", "q3_k_xl"), True),
                      (("minimax-m2.5", "q4_k_m"), False)]:
        p, proc = plan(shapes[key], "--shards", "1", *SPARK, check=False)
        assert p["fits"] is fits and proc.returncode == (0 if fits else 3), key
        if not fits:
            assert "refused: shard 0 needs" in proc.stderr and p["kv_tokens_fit"] == 0
    p, _ = plan(shapes["gpt-oss-120b", "mxfp4"], "--shards", "1", *SPARK)
    assert (p["n_swa_layers"], p["swa_window"]) == (18, 128)
    assert p["shards"][0]["kv_per_token"] == 72 << 10  # f16: 2 x 36 x 8 x 64 x 2 B
    assert p["kv_tokens_fit"] > 20 * 32768


def test_plan_layout_on_two_sparks(shapes):
    """`tandem plan --streams`: the engine-group layout (topology/topo_layout.c's rule) for
    real model sizes on two DGX Sparks. gpt-oss-120b fits one Spark: replicas, at 64 and at
    4 streams, and no prefill/decode groups on GPU shards (no pinned host KV pool yet: said
    why). MiniMax-M2.5 Q4_K_M fits two Sparks only: replicas
    are impossible, whatever the load, and the plan says so with the numbers."""
    gpt = shapes["gpt-oss-120b", "mxfp4"]
    one, _ = plan(gpt, "--shards", "1", *SPARK)
    p, _ = plan(gpt, "--shards", "2", "--streams", "64", *SPARK)
    lay = p["layout"]
    assert (lay["kind"], lay["groups"], lay["shards_per_group"]) == ("replicas", 2, 1)
    assert lay["routing"] == "prefix" and lay["replicas_possible"] is True
    assert lay["replica_bytes"] == one["shards"][0]["total"] and lay["machines"] == 2
    p, _ = plan(gpt, "--shards", "2", "--streams", "4", *SPARK)  # measured: replicas still
    assert (p["layout"]["kind"], p["layout"]["groups"]) == ("replicas", 2)
    p, _ = plan(gpt, "--shards", "2", "--streams", "64", "--prompt-tokens", "4000", *SPARK)
    assert p["layout"]["kind"] == "replicas"
    assert p["layout"]["prefill_decode_supported"] is False
    assert any("pinned host KV pool" in w for w in p["layout"]["why"]), p["layout"]

    mm = shapes["minimax-m2.5", "q4_k_m"]
    p, proc = plan(mm, "--shards", "2", "--streams", "64", *SPARK)
    assert proc.returncode == 0 and p["fits"]
    lay = p["layout"]
    assert (lay["kind"], lay["groups"], lay["shards_per_group"]) == ("split", 1, 2)
    assert lay["replicas_possible"] is False
    assert lay["replica_bytes"] > int(119.2 * 2**30)
    assert any("replicas are impossible" in w for w in lay["why"]), lay
    text = run_tandem("plan", "--model", mm, "--shards", "2", "--streams", "64", *SPARK).stdout
    assert "layout for 64 streams" in text and "replicas are impossible" in text


def test_plan_layout_cluster_file_and_prompt_heavy(tmp_path):
    """--cluster counts the machines (distinct hosts; two shards on one host are one
    machine); a prompt-heavy load on CPU shards of a full-attention model gets prefill +
    decode groups; without --streams there is no layout; --cluster and --shards exclude
    each other."""
    model = MODELS / "llama-a-f32.gguf"
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"groups": [
        {"name": "a", "shards": ["10.0.0.1:7101", "10.0.0.1:7102"]},
        {"name": "b", "shards": ["10.0.0.2:7101"]}]}))
    p, _ = plan(model, "--cluster", cluster, "--streams", "32", "--prompt-tokens", "640",
                "--answer-tokens", "128")
    lay = p["layout"]
    assert p["n_shards"] == 2 and lay["machines"] == 2
    assert (lay["kind"], lay["groups"]) == ("prefill-decode", 2), lay
    assert lay["prefill_decode_supported"] is True
    p, _ = plan(model, "--cluster", cluster, "--streams", "32", "--prompt-tokens", "639")
    assert p["layout"]["kind"] == "replicas"
    assert any("would idle" in w for w in p["layout"]["why"]), p["layout"]
    p, _ = plan(model, "--shards", "2")
    assert "layout" not in p
    proc = run_tandem("plan", "--model", model, "--cluster", cluster, "--shards", "2",
                      check=False)
    assert proc.returncode == 2 and "--cluster and --shards" in proc.stderr


# ---- topo --------------------------------------------------------------------------------

def test_topo_this_machine():
    j = json.loads(run_tandem("topo", "--json").stdout)
    assert j["proposal"]["transport"] in ("tcp", "rdma")
    if not j["devices"]:
        assert j["proposal"]["transport"] == "tcp"
        assert j["proposal"]["ucx_net_devices"] is None
        text = run_tandem("topo").stdout
        assert "RDMA devices" in text and ": 0" in text
        assert "UCX will use TCP between nodes and shared memory" in text


def _spark_sysfs(root, second_twin_state="4: ACTIVE"):
    """A DGX Spark's /sys/class/infiniband with the cable on port f1 (twins at PCI
    0000:01:00.1 and 0002:01:00.1) and the f0 twins down."""
    devs = [("rocep1s0f0", "0000:01:00.0", "1: DOWN", "enp1s0f0np0", None),
            ("rocep1s0f1", "0000:01:00.1", "4: ACTIVE", "enp1s0f1np1", "c0a8:c80d"),
            ("roceP2p1s0f0", "0002:01:00.0", "1: DOWN", "enP2p1s0f0np0", None),
            ("roceP2p1s0f1", "0002:01:00.1", second_twin_state, "enP2p1s0f1np1", "c0a8:c90d")]
    for name, pci, state, ndev, ip in devs:
        d = root / "class" / "infiniband" / name
        port = d / "ports" / "1"
        for sub in ("gids", "gid_attrs/types", "gid_attrs/ndevs"):
            (port / sub).mkdir(parents=True)
        (d / "node_guid").write_text("0c42:a103:0065:4f8a\n")
        os.symlink(f"../../../devices/pci0000:00/0000:00:01.0/{pci}", d / "device")
        (port / "state").write_text(state + "\n")
        (port / "link_layer").write_text("Ethernet\n")
        (port / "rate").write_text("200 Gb/sec (4X HDR)\n")
        entries = [("fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a", "IB/RoCE v1"),
                   ("fe80:0000:0000:0000:0e42:a1ff:fe65:4f8a", "RoCE v2")]
        if ip:
            entries += [(f"0000:0000:0000:0000:0000:ffff:{ip}", "IB/RoCE v1"),
                        (f"0000:0000:0000:0000:0000:ffff:{ip}", "RoCE v2")]
        for i, (gid, typ) in enumerate(entries):
            (port / "gids" / str(i)).write_text(gid + "\n")
            (port / "gid_attrs" / "types" / str(i)).write_text(typ + "\n")
            (port / "gid_attrs" / "ndevs" / str(i)).write_text(ndev + "\n")
        (port / "gids" / str(len(entries))).write_text("0000:" * 7 + "0000\n")
        net = root / "class" / "net" / ndev
        net.mkdir(parents=True)
        (net / "mtu").write_text("9000\n")


def test_topo_spark_twins(tmp_path):
    _spark_sysfs(tmp_path)
    j = json.loads(run_tandem("topo", "--sysfs", tmp_path, "--json").stdout)
    assert len(j["devices"]) == 4
    dev = {d["name"]: d for d in j["devices"]}["rocep1s0f1"]
    assert dev["pci"] == "0000:01:00.1" and dev["node_guid"] == "0c42:a103:0065:4f8a"
    port = dev["ports"][0]
    assert (port["state"], port["link_layer"], port["rate_gbps"], port["active_mtu"]) == \
        ("ACTIVE", "Ethernet", 200.0, 4096)
    gids = {g["index"]: g for g in port["gids"]}
    assert sorted(gids) == [0, 1, 2, 3]  # the empty entry 4 is skipped
    assert gids[3]["type"] == "RoCE v2" and gids[3]["ipv4"] == "192.168.200.13"
    assert gids[3]["gid"] == "::ffff:192.168.200.13" and gids[3]["netdev"] == "enp1s0f1np1"
    assert gids[0]["type"] == "RoCE v1" and gids[0]["ipv4"] is None
    pr = j["proposal"]
    assert pr["transport"] == "rdma"
    assert pr["ucx_net_devices"] == "rocep1s0f1:1,roceP2p1s0f1:1"
    assert pr["twin_pairs"] == 1 and pr["warnings"] == []
    text = run_tandem("topo", "--sysfs", tmp_path).stdout
    assert "UCX_NET_DEVICES=rocep1s0f1:1,roceP2p1s0f1:1" in text
    assert "twins" in text and "100 Gb/s" in text


def test_topo_spark_one_twin_down(tmp_path):
    _spark_sysfs(tmp_path, second_twin_state="1: DOWN")
    pr = json.loads(run_tandem("topo", "--sysfs", tmp_path, "--json").stdout)["proposal"]
    assert pr["ucx_net_devices"] == "rocep1s0f1:1"
    assert pr["twins_missing"] == 1
    assert any("roceP2p1s0f1:1 is not" in w for w in pr["warnings"])
