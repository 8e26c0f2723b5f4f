"""`tandem plan` and `tandem topo` against independent oracles.

plan: the per-shard bytes of every tensor are recomputed here from the GGUF tensor infos
(the `gguf` package) and the split rules of shard/shd_model.h, written independently of
topology/topo_plan.c: heads, kv heads as the set of kv heads a rank's q heads use, FFN
columns, output rows, experts per EP group. Checked: split tensors sum to the unpartitioned
bytes (times the EP groups that each hold a copy), replicated tensors count once per shard,
expert bytes are balanced within one expert of optimal, KV bytes follow the formula,
over-budget plans exit 3 with the numbers, and impossible splits are refused by name.

topo: on this machine (no RDMA expected) it says TCP; over a fabricated DGX Spark sysfs
tree it proposes both twins of the cabled port.
"""
import json
import math
import os

import gguf
import pytest

from conftest import FIXTURES, SOURCE_DIR, run_tandem

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

    def expert_bytes(self, layer):
        """Bytes of one expert of a layer: gate + up + down of the stacked tensors / n_expert."""
        return sum(self.tensors[f"blk.{layer}.ffn_{p}_exps.weight"]
                   for p in ("gate", "up", "down")) // self.n_expert


def kv_heads_of(m, tp, tp_rank):
    """The kv heads a TP rank needs: those its q heads map to (GQA groups)."""
    per = m.n_head // tp
    group = m.n_head // m.n_head_kv
    return sorted({h // group for h in range(tp_rank * per, (tp_rank + 1) * per)})


def expected_bytes(m, name, nbytes, plan, shard):
    """What a shard holds of one tensor, from the rules, or None for experts (checked apart)."""
    tp, tp_rank = plan["tp"], shard["tp_rank"]
    base = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    if base in ("attn_q", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        return nbytes // tp
    if base in ("attn_k", "attn_v"):
        return nbytes // m.n_head_kv * len(kv_heads_of(m, tp, tp_rank))
    if base == "output":
        return nbytes // tp if m.n_vocab % tp == 0 else nbytes
    if base.endswith("_exps"):
        return None
    return nbytes  # token_embd, norms, routers: replicated


def plan(model, *args, check=True):
    proc = run_tandem("plan", "--model", model, *args, "--json", "--node-memory", "1T",
                      check=check)
    return (json.loads(proc.stdout) if proc.returncode in (0, 3) else None), proc


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


@pytest.mark.parametrize("file,args", SPLITS, ids=[f"{f}:{' '.join(a)}" for f, a in SPLITS])
def test_plan_bytes(file, args):
    m = Model(MODELS / file)
    p, _ = plan(MODELS / file, *args)
    n, tp, ep = p["n_shards"], p["tp"], p["ep"]
    assert n == tp * ep
    assert p["model_bytes"] == sum(m.tensors.values())
    by_name = {t["name"]: t for t in p["tensors"]}
    assert set(by_name) == set(m.tensors), "every tensor of the file is in the plan"

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
            assert sum(ps) == nbytes, f"{name}: each expert on exactly one EP group"
        for s, shard in enumerate(p["shards"]):
            want = expected_bytes(m, name, nbytes, p, shard)
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
                                  "qwen3moe-c-f32.gguf"])
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


def test_plan_kv_and_buffers():
    m = Model(MODELS / "llama-a-f32.gguf")
    p, _ = plan(MODELS / "llama-a-f32.gguf", "--shards", "4", "--ctx-size", "1000")
    assert p["kv_tokens"] == 1008 and p["kv_blocks"] == 63  # whole blocks of 16
    for s, sh in enumerate(p["shards"]):
        kvh = len(kv_heads_of(m, 4, sh["tp_rank"]))
        assert sh["kv_per_token"] == 2 * m.n_layer * kvh * m.head_dim * 4
        assert sh["kv"] == 1008 * sh["kv_per_token"]
        assert sh["buffers"] == sh["scratch"] + sh["vec_copies"] + sh["comm"]
        assert sh["comm"] == 2 * 512 * m.n_embd * 4
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
                      check=False)
    assert proc.returncode == 3
    assert "refused" in proc.stderr and f"({need} bytes" in proc.stderr
    assert "1048576 bytes, --node-memory" in proc.stderr
    assert "NO" in proc.stdout  # the plan is still printed
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--node-memory", "1M", "--json",
                      check=False)
    assert proc.returncode == 3
    j = json.loads(proc.stdout)
    assert j["fits"] is False and not any(sh["fits"] for sh in j["shards"])
    # Enough memory: accepted.
    proc = run_tandem("plan", "--model", model, "--shards", "2", "--node-memory", str(need))
    assert "refused" not in proc.stderr


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


def test_plan_usage_and_missing_model(tmp_path):
    proc = run_tandem("plan", "--shards", "2", check=False)
    assert proc.returncode == 2 and "--model and --shards are required" in proc.stderr
    proc = run_tandem("plan", "--model", tmp_path / "none.gguf", "--shards", "2", check=False)
    assert proc.returncode == 1 and "none.gguf" in proc.stderr
    assert run_tandem("plan", "--help").stdout.startswith("usage: tandem plan")


def test_plan_text_names_what_is_replicated():
    out = run_tandem("plan", "--model", MODELS / "qwen3moe-a-f32.gguf", "--shards", "2",
                     "--node-memory", "1T").stdout
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
