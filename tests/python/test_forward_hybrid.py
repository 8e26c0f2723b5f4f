"""The hybrid linear-attention models (Gated DeltaNet + gated attention): `qwen3next`
(Qwen3-Next, Qwen3-Coder-Next) and `qwen35moe` (Qwen3.5/3.6), on the tiny fixtures of
tests/fixtures/hybrid (tools/fixtures/make_hybrid_models.py: llama.cpp's own converter wrote
each GGUF from a random HF model).

Oracles:
- HF transformers float32 logits and 32 greedy tokens (prefill through HF's chunked gated
  delta rule, decode through its recurrent form); prompts of 8 to 150 tokens, so more than
  two 64-token chunks of the rule and, with --chunk, many prefill steps whose state carries
  over. Bound: 1e-4 relative L2 per stored position (measured <= 1e-5), greedy identical.
- llama.cpp (llama-cpp-python) on the same file: 1e-4 relative L2 (it matches HF to ~6e-5
  absolute, recorded in the manifest).
- Tandem itself: batched sequences against each alone (1e-6 of the largest logit; measured
  bit-identical: a sequence's state and rule never read another's) and chunked prefill
  against the whole prompt (5e-5 relative: the chunked rule's sums follow the chunk split,
  measured <= 1.2e-5).
"""
import json

import numpy as np
import pytest

from conftest import FIXTURES, run_tandem

HYBRID = FIXTURES / "hybrid"
MANIFEST = HYBRID / "manifest.json"
# four F32 GGUFs (0.76-1.3 MB), a Q8_0 one, 20 logits files, the manifest and the HF configs
BUDGET_BYTES = 5500 * 1000


def manifest():
    if not MANIFEST.exists():
        pytest.skip(f"no fixtures at {MANIFEST}: run tools/fixtures/make_hybrid_models.py")
    return json.loads(MANIFEST.read_text())


def _entries(variants=("F32",)):
    if not MANIFEST.exists():
        return []
    return [e for e in json.loads(MANIFEST.read_text())["models"] if e["variant"] in variants]


def _cases():
    return [pytest.param(e, s, id=f"{e['file']}-{s}") for e in _entries() for s in e["expected"]]


def rel_l2(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def tandem_eval(tmp_path, model, tokens, *extra, greedy=32, name="out"):
    out = tmp_path / f"{name}.npy"
    proc = run_tandem("eval", "--model", model, "--tokens", ",".join(map(str, tokens)),
                      "--greedy", greedy, "--threads", 2, "--logits-out", out, *extra)
    res = json.loads(proc.stdout)
    logits = np.load(out)
    assert logits.shape == (len(tokens), res["n_vocab"])
    return res["greedy"], logits


# (chunk, block tokens): the whole prompt; steps of 7 (state carried across 22 steps of s150);
# 64 and 65 (a step ends on / one past a rule chunk); 1 (every prompt token recurrent)
SCHEDULES = [(0, 16), (7, 3), (64, 16), (65, 5), (1, 4)]


@pytest.mark.parametrize("chunk,bt", SCHEDULES)
@pytest.mark.parametrize("entry,seq", _cases())
def test_hybrid_matches_hf(tandem_bin, tmp_path, entry, seq, chunk, bt):
    if chunk == 1 and seq != "s150" and seq != "s33":
        pytest.skip("token-by-token prefill: the two longer prompts suffice")
    m = manifest()
    exp = entry["expected"][seq]
    greedy, logits = tandem_eval(tmp_path, HYBRID / entry["file"], m["sequences"][seq],
                                 "--chunk", chunk, "--block-tokens", bt)
    ref = np.load(HYBRID / exp["logits"])
    rel = rel_l2(logits[exp["positions"]], ref)
    assert rel.max() <= 1e-4, f"max relative L2 {rel.max():.3g} at row {rel.argmax()}"
    assert greedy == exp["greedy"]


@pytest.mark.parametrize("chunk", [0, 5, 64])
@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"]) for e in _entries()])
def test_hybrid_batched_equals_alone(tandem_bin, tmp_path, entry, chunk):
    """Every fixture sequence in one schedule (each its own state slot; prefill chunks of
    the long prompts share steps with decode tokens of the short ones) against each alone."""
    m = manifest()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(",".join(map(str, v)) + "\n" for v in m["sequences"].values()))
    proc = run_tandem("eval", "--model", HYBRID / entry["file"], "--prompts-file", prompts,
                      "--greedy", 8, "--threads", 2, "--chunk", chunk, "--block-tokens", 4,
                      "--batch-test")
    bt = json.loads(proc.stdout)["batch_test"]
    assert bt["greedy_equal"]
    assert bt["max_abs_diff"] <= 1e-6 * bt["max_abs_logit"]


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"]) for e in _entries()])
def test_hybrid_chunked_prefill_equals_whole_prompt(tandem_bin, tmp_path, entry):
    toks = manifest()["sequences"]["s150"]
    g0, l0 = tandem_eval(tmp_path, HYBRID / entry["file"], toks, greedy=8, name="whole")
    for chunk in (3, 64, 100):
        g1, l1 = tandem_eval(tmp_path, HYBRID / entry["file"], toks, "--chunk", chunk, greedy=8,
                             name=f"c{chunk}")
        assert g0 == g1
        # not bit-identical: the chunked rule groups its sums by chunk (measured <= 1.2e-5)
        assert rel_l2(l1, l0).max() <= 5e-5, chunk


def _llamacpp_logits(path, tokens):
    lc = pytest.importorskip("llama_cpp")
    raw = lc.llama_cpp
    if not getattr(raw.llama_model_default_params, "_tandem_patched", False):
        orig = raw.llama_model_default_params

        def params():  # no AMX / repack buffers (see test_forward.py)
            p = orig()
            p.use_extra_bufts = False
            return p

        params._tandem_patched = True
        raw.llama_model_default_params = params
    llm = lc.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True,
                   verbose=False, n_threads=2, type_k=0, type_v=0)
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return logits


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"]) for e in _entries()])
def test_hybrid_matches_llamacpp_same_file(tandem_bin, tmp_path, entry):
    """llama.cpp runs the file (so the layout is the one users' files have) and agrees."""
    toks = manifest()["sequences"]["s150"]
    ref = _llamacpp_logits(HYBRID / entry["file"], toks)
    _, logits = tandem_eval(tmp_path, HYBRID / entry["file"], toks, greedy=0)
    rel = rel_l2(logits, ref)
    assert rel.max() <= 1e-4, f"max relative L2 {rel.max():.3g} at {rel.argmax()}"


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"])
                                   for e in _entries(("Q8_0", "Q4_K", "Q6_K"))])
def test_hybrid_quantized_matches_llamacpp(tandem_bin, tmp_path, entry):
    """A quantized file against llama.cpp on the same file, under test_forward.py's rule for
    quantized files (positions of all sequences pooled): both quantize the activations to
    the weights' dot format, so most positions agree to ~1e-7; a rounding tie broken the
    other way moves a few by ~1e-2."""
    m = manifest()
    rels, agree = [], []
    for seq, toks in m["sequences"].items():
        _, logits = tandem_eval(tmp_path, HYBRID / entry["file"], toks, greedy=0, name=seq)
        ref = _llamacpp_logits(HYBRID / entry["file"], toks)
        rels.append(rel_l2(logits, ref))
        agree.append(logits.argmax(1) == ref.argmax(1))
    rel, agree = np.concatenate(rels), np.concatenate(agree)
    assert np.mean(rel <= 1e-5) >= 0.5, f"only {np.mean(rel <= 1e-5):.0%} of positions agree"
    assert rel.max() <= 3e-2, f"max relative L2 {rel.max():.3g}"
    assert agree.mean() >= 0.95, f"argmax agrees at {agree.mean():.0%} of positions"


def test_hybrid_fixtures_selfcheck():
    """Every file of the manifest is there, the folder stays in its budget, and the GGUFs
    carry the layout llama.cpp's converter writes for each architecture."""
    gguf = pytest.importorskip("gguf")
    m = manifest()
    total = sum(p.stat().st_size for p in HYBRID.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, total
    named = {"manifest.json"}
    for e in m["models"]:
        named |= {e["file"], e["hf_config"]} | {x["logits"] for x in e["expected"].values()}
        if e["variant"] != "F32":
            continue  # checked against llama.cpp (test_hybrid_quantized_matches_llamacpp)
        assert set(e["expected"]) == set(m["sequences"])
        r = gguf.GGUFReader(str(HYBRID / e["file"]))
        arch = r.fields["general.architecture"].contents()
        assert arch == e["arch"]
        names = {t.name for t in r.tensors}
        rec = r.fields[f"{arch}.attention.recurrent_layers"].contents()
        assert 0 < sum(rec) < len(rec)
        for il, is_rec in enumerate(rec):
            if is_rec:
                assert f"blk.{il}.attn_qkv.weight" in names and f"blk.{il}.ssm_a" in names
                ba = {f"blk.{il}.ssm_ba.weight"} if arch == "qwen3next" else {
                    f"blk.{il}.ssm_beta.weight", f"blk.{il}.ssm_alpha.weight"}
                assert ba <= names, (il, ba)
            else:
                assert f"blk.{il}.attn_q.weight" in names and f"blk.{il}.attn_q_norm.weight" in names
            assert f"blk.{il}.ffn_gate_inp_shexp.weight" in names
        for x in e["expected"].values():
            assert x["cache_consistent"]
            assert x.get("llamacpp_greedy_prefix_match", 32) == 32
    assert {p.name for p in HYBRID.iterdir()} == named


def _split_cases():
    out = []
    for e in _entries():
        hp = e["hparams"]
        for tp, ep in ((1, 2), (1, 3), (2, 1), (3, 1), (2, 2)):
            if ep <= hp["n_expert"] and hp["n_ff_exp"] % tp == 0 and tp <= hp["lin_v_heads"]:
                out.append(pytest.param(e, tp, ep, id=f"{e['file']}-tp{tp}-ep{ep}"))
    return out


@pytest.mark.parametrize("entry,tp,ep", _split_cases())
def test_hybrid_parallel_matches_single(tandem_bin, tmp_path, entry, tp, ep):
    """TP and EP over in-process ranks: under TP each rank holds its DeltaNet v heads, the
    k heads they read (conv channels, gates and ssm_out columns follow) and its share of
    every recurrent state, its attention heads and its columns of each expert; under EP its
    range of experts; world rank 0 adds the shared expert to the all-reduce."""
    toks = manifest()["sequences"]["s150"]
    g1, l1 = tandem_eval(tmp_path, HYBRID / entry["file"], toks, "--chunk", 40, greedy=8,
                         name="whole")
    gp, lp = tandem_eval(tmp_path, HYBRID / entry["file"], toks, "--chunk", 40, "--tp", tp,
                         "--ep", ep, greedy=8, name="part")
    assert rel_l2(lp, l1).max() <= 1e-5
    assert gp == g1


def test_hybrid_refusals(tandem_bin):
    """TP needs a DeltaNet v head per rank (qwen35moe-b has 3)."""
    e = next((x for x in _entries() if x["config"] == "qwen35moe-b"), None)
    if e is None:
        pytest.skip("fixtures missing")
    model = HYBRID / e["file"]
    p = run_tandem("eval", "--model", model, "--tokens", "1,2,3", "--tp", 4, check=False)
    assert p.returncode == 1 and "3 Gated DeltaNet value heads" in p.stderr, p.stderr
    p = run_tandem("plan", "--model", model, "--shards", 4, "--tp", 4, "--device", "cpu",
                   check=False)
    assert p.returncode != 0 and "3 Gated DeltaNet value heads" in p.stderr, p.stderr


def test_hybrid_plan_counts_states(tandem_bin):
    """`tandem plan`: the recurrent layers keep no K/V; each of n_out running sequences
    gets a state (conv + delta rule per GDN layer, f32), and as many stored prefix states,
    inside the KV total; under TP 2 each shard keeps half of every state (its 2 of the 4 v
    heads, 1 of the 2 k heads); under EP every shard keeps the states whole."""
    e = next(x for x in _entries() if x["config"] == "qwen3next-a") if _entries() else None
    if e is None:
        pytest.skip("fixtures missing")
    hp = e["hparams"]
    model = HYBRID / e["file"]
    p = json.loads(run_tandem("plan", "--model", model, "--shards", 1, "--device", "cpu",
                              "--json").stdout)
    n_rec = hp["interval"] - 1  # 3 of the 4 layers
    conv = (hp["conv"] - 1) * (2 * hp["lin_k_heads"] + hp["lin_v_heads"]) * hp["lin_head_dim"]
    ssm = hp["lin_v_heads"] * hp["lin_head_dim"] ** 2
    per_seq = n_rec * 4 * (conv + ssm)
    sp = p["shards"][0]
    assert p["gdn_layers"] == n_rec and p["n_state_slots"] == 64 and p["n_state_store"] == 64
    assert sp["state"] == (64 + 64) * per_seq  # running sequences + stored prefix states
    assert sp["kv_per_token"] == 2 * (hp["n_layer"] - n_rec) * hp["n_head_kv"] * hp["head_dim"] * 4
    assert sp["kv"] == p["kv_tokens"] * sp["kv_per_token"] + sp["state"]
    tp = json.loads(run_tandem("plan", "--model", model, "--shards", 2, "--tp", 2, "--device",
                               "cpu", "--json").stdout)
    assert tp["tp"] == 2 and all(2 * s["state"] == sp["state"] for s in tp["shards"])
    ep = json.loads(run_tandem("plan", "--model", model, "--shards", 2, "--device", "cpu",
                               "--json").stdout)
    assert ep["ep"] == 2 and all(s["state"] == sp["state"] for s in ep["shards"])


def test_hybrid_mtp_block_kept_not_run(tandem_bin, tmp_path):
    """qwen35moe-b carries a multi-token-prediction block as the converter writes Qwen3.5's
    (block_count 5, nextn_predict_layers 1): the trunk is the first 4 blocks (its logits are
    HF's, test_hybrid_matches_hf), `tandem inspect` lists the block and `tandem plan` counts
    its bytes on every shard, outside what a decoded token reads."""
    gguf = pytest.importorskip("gguf")
    e = next((x for x in _entries() if x["config"] == "qwen35moe-b"), None)
    if e is None:
        pytest.skip("fixtures missing")
    model = HYBRID / e["file"]
    r = gguf.GGUFReader(str(model))
    assert r.fields["qwen35moe.nextn_predict_layers"].contents() == 1
    mtp = [t for t in r.tensors if t.name.startswith("blk.4.")]
    assert any(t.name == "blk.4.nextn.eh_proj.weight" for t in mtp)
    j = json.loads(run_tandem("inspect", "--json", "--no-tensors", model).stdout)["model"]
    assert (j["n_layer"], j["n_mtp"], j["mtp_tensors"]) == (4, 1, len(mtp))
    assert j["mtp_bytes"] == sum(int(t.n_bytes) for t in mtp)
    assert "multi-token-prediction block (from blk.4)" in run_tandem(
        "inspect", "--no-tensors", model).stdout
    for shards in (1, 2):
        p = json.loads(run_tandem("plan", "--model", model, "--shards", shards, "--device", "cpu",
                                  "--json").stdout)
        assert all(s["bytes"]["mtp"] == j["mtp_bytes"] for s in p["shards"]), p["shards"]
