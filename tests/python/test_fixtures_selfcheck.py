"""Self-check of the tiny-model fixtures in tests/fixtures/models (made by
tools/fixtures/make_tiny_models.py). Needs numpy, gguf and tokenizers, not torch.

Checks that every file the manifest names is there and consistent with it (GGUF readable, tensor
types, shapes, expected-output shapes), and recomputes the logits of every GGUF with a small
numpy forward pass that follows llama.cpp's semantics for the two architectures, using only
the GGUF's own metadata and tensors. That ties the stored HF logits to the GGUF contents
(key names, tensor layout, the llama q/k row order, rope_freqs, MoE routing).
"""

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "models"
MANIFEST = FIX / "manifest.json"
BUDGET_BYTES = 26 * 1000 * 1000  # llama-c (3-way TP fixture) added 2.5 MB


def load_manifest():
    return json.loads(MANIFEST.read_text())


def model_ids():
    if not MANIFEST.exists():
        return []
    return [m["file"] for m in load_manifest()["models"]]


@pytest.fixture(scope="module")
def manifest():
    assert MANIFEST.exists(), f"{MANIFEST} missing: run tools/fixtures/make_tiny_models.py"
    return load_manifest()


def entry(manifest, fname):
    return next(m for m in manifest["models"] if m["file"] == fname)


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tensor_f32(t):
    """GGUF tensor -> float32 array in PyTorch order (reverse of ne)."""
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    qt = gguf.GGMLQuantizationType(int(t.tensor_type))
    if qt == gguf.GGMLQuantizationType.F32:
        a = np.asarray(t.data, dtype=np.float32)
    elif qt == gguf.GGMLQuantizationType.F16:
        a = np.asarray(t.data, dtype=np.float16).astype(np.float32)
    else:
        a = gguf.quants.dequantize(np.asarray(t.data), qt).astype(np.float32)
    return a.reshape(shape)


# ---------------------------------------------------------------------------------------------
# numpy forward pass with llama.cpp semantics (reference doc §3.0-3.2)


def rms_norm(x, w, eps):
    x64 = x.astype(np.float32)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)) * w


def rope(x, pos, theta, neox, divisors=None):
    """x: [T, H, hd]. NORM pairs (2i, 2i+1); NEOX pairs (i, i + hd/2)."""
    hd = x.shape[-1]
    i = np.arange(hd // 2, dtype=np.float64)
    inv = theta ** (-2.0 * i / hd)
    if divisors is not None:
        inv = inv / divisors
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, hd/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        x0, x1 = x[..., : hd // 2], x[..., hd // 2 :]
    else:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    y0, y1 = x0 * c - x1 * s, x0 * s + x1 * c
    out = np.empty_like(x, dtype=np.float64)
    if neox:
        out[..., : hd // 2], out[..., hd // 2 :] = y0, y1
    else:
        out[..., 0::2], out[..., 1::2] = y0, y1
    return out.astype(np.float32)


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(path, tokens):
    r = gguf.GGUFReader(str(path))
    arch = field(r, "general.architecture")
    hp = lambda k, d=None: field(r, f"{arch}.{k}", d)  # noqa: E731
    n_layer, n_head, n_kv = hp("block_count"), hp("attention.head_count"), hp("attention.head_count_kv")
    n_embd = hp("embedding_length")
    hd = hp("attention.key_length", n_embd // n_head)
    eps, theta = hp("attention.layer_norm_rms_epsilon"), hp("rope.freq_base", 10000.0)
    n_used = hp("expert_used_count", 0)
    renorm = hp("expert_weights_norm", True)  # llama.cpp's qwen3moe always renormalizes
    W = {t.name: tensor_f32(t) for t in r.tensors}
    neox = arch == "qwen3moe"
    divisors = W.get("rope_freqs.weight")
    T = len(tokens)
    pos = np.arange(T)
    x = W["token_embd.weight"][np.asarray(tokens)]
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    for il in range(n_layer):
        b = f"blk.{il}."
        n = rms_norm(x, W[b + "attn_norm.weight"], eps)
        q = (n @ W[b + "attn_q.weight"].T).reshape(T, n_head, hd)
        k = (n @ W[b + "attn_k.weight"].T).reshape(T, n_kv, hd)
        v = (n @ W[b + "attn_v.weight"].T).reshape(T, n_kv, hd)
        if b + "attn_q_norm.weight" in W:
            q = rms_norm(q, W[b + "attn_q_norm.weight"], eps)
            k = rms_norm(k, W[b + "attn_k_norm.weight"], eps)
        q, k = rope(q, pos, theta, neox, divisors), rope(k, pos, theta, neox, divisors)
        att = np.empty((T, n_head, hd), dtype=np.float32)
        for h in range(n_head):
            kh = h // (n_head // n_kv)
            sc = (q[:, h, :] @ k[:, kh, :].T) / np.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, h, :] = (sc / sc.sum(-1, keepdims=True)) @ v[:, kh, :]
        x = x + att.reshape(T, n_head * hd) @ W[b + "attn_output.weight"].T
        m = rms_norm(x, W[b + "ffn_norm.weight"], eps)
        if b + "ffn_gate_inp.weight" in W:
            logits = m @ W[b + "ffn_gate_inp.weight"].T
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p = p / p.sum(-1, keepdims=True)
            y = np.zeros_like(x)
            for t in range(T):
                sel = np.argsort(-p[t], kind="stable")[:n_used]
                wts = p[t, sel] / max(p[t, sel].sum(), 6.103515625e-5) if renorm else p[t, sel]
                for e, wt in zip(sel, wts):
                    g = W[b + "ffn_gate_exps.weight"][e] @ m[t]
                    u = W[b + "ffn_up_exps.weight"][e] @ m[t]
                    y[t] += wt * (W[b + "ffn_down_exps.weight"][e] @ (silu(g) * u))
            x = x + y
        else:
            g, u = m @ W[b + "ffn_gate.weight"].T, m @ W[b + "ffn_up.weight"].T
            x = x + (silu(g) * u) @ W[b + "ffn_down.weight"].T
    out = W.get("output.weight", W["token_embd.weight"])
    return rms_norm(x, W["output_norm.weight"], eps) @ out.T


# ---------------------------------------------------------------------------------------------


def test_budget_and_files(manifest):
    total = sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"fixtures total {total} bytes > {BUDGET_BYTES}"
    assert (FIX / manifest["tokenizer"]).is_file()
    named = {"manifest.json"}
    for m in manifest["models"]:
        named.add(m["file"])
        named.add(m["hf_config"])
        for e in m["expected"].values():
            named.add(e["logits"])
    on_disk = {p.name for p in FIX.iterdir() if p.is_file()}
    assert named <= on_disk, f"missing: {sorted(named - on_disk)}"
    assert on_disk <= named, f"not in manifest: {sorted(on_disk - named)}"


def test_tokenizer(manifest):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(FIX / manifest["tokenizer"]))
    assert tok.get_vocab_size(with_added_tokens=True) == manifest["n_vocab"]
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = manifest["special_ids"]
    assert vocab["<|endoftext|>"] == ids["bos"] == ids["pad"] and vocab["<|im_end|>"] == ids["eos"]
    for t in ["<|im_start|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]:
        assert t in vocab
    for s in json.loads((FIX / "tokenizer" / "samples.json").read_text()):
        assert tok.encode(s["text"]).ids == s["ids"], s["text"]


@pytest.mark.parametrize("fname", model_ids())
def test_model_consistent(manifest, fname):
    m = entry(manifest, fname)
    n_vocab = manifest["n_vocab"]
    r = gguf.GGUFReader(str(FIX / fname))
    arch = field(r, "general.architecture")
    assert arch == m["arch"]
    assert len(field(r, "tokenizer.ggml.tokens")) == n_vocab
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    types = {t.name: gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in r.tensors}
    assert types == m["tensor_types"]
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    assert shapes["token_embd.weight"] == [m["hparams"]["n_embd"], n_vocab]
    assert ("output.weight" in shapes) == (not m["hparams"]["tied"])
    for name, ne in shapes.items():
        if len(ne) >= 2 and m["config"].endswith("-a"):
            assert ne[0] % 256 == 0, f"{name} row length {ne[0]} not a multiple of 256"
        if len(ne) == 1:
            assert types[name] == "F32", f"1-D tensor {name} is {types[name]}"
    assert set(m["expected"]) == set(manifest["sequences"])
    for sname, e in m["expected"].items():
        seq = manifest["sequences"][sname]
        lg = np.load(FIX / e["logits"])
        assert lg.dtype == np.float32 and lg.shape == (len(e["positions"]), n_vocab)
        assert np.all(np.isfinite(lg))
        assert all(0 <= p < len(seq) for p in e["positions"])
        assert len(e["greedy"]) == manifest["n_greedy"] and all(0 <= t < n_vocab for t in e["greedy"])
        if e["positions"][-1] == len(seq) - 1:
            assert int(np.argmax(lg[-1])) == e["greedy"][0]


@pytest.mark.parametrize("fname", model_ids())
def test_numpy_forward_matches(manifest, fname):
    """The GGUF alone (llama.cpp semantics) reproduces the stored HF logits."""
    m = entry(manifest, fname)
    for sname, e in m["expected"].items():
        seq = manifest["sequences"][sname]
        want = np.load(FIX / e["logits"])
        got = forward(FIX / fname, seq)[e["positions"]]
        err = np.abs(got - want)
        # float32 HF vs float32/float64-mixed numpy: ~1e-5; an MoE routing near-tie could flip an
        # expert at one position, so allow rare outliers but require the bulk to agree tightly
        assert np.median(err) < 1e-4, (sname, float(np.median(err)))
        assert np.mean(err < 1e-3) > 0.99, (sname, float(err.max()))
