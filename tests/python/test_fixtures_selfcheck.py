"""Self-check of the tiny-model fixtures in tests/fixtures/models (made by
tools/fixtures/make_tiny_models.py). Needs numpy, gguf and tokenizers, not torch.

Checks that every file the manifest names is there and consistent with it (GGUF readable, tensor
types, shapes, expected-output shapes), and recomputes the logits of every GGUF with a small
numpy forward pass that follows llama.cpp's semantics for the six architectures (llama, qwen3moe,
gpt-oss, minimax-m2, qwen2, mistral3), using only the GGUF's own metadata and tensors. That ties
the stored HF logits to the GGUF contents (key names, tensor layout, the llama / mistral3 q/k row
order, rope_freqs, YaRN, partial rope, biases, sinks, sliding window, attention temperature, MoE
routing and gating functions).
"""

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "models"
MANIFEST = FIX / "manifest.json"
# llama-c (3-way TP fixture) added 2.5 MB; gpt-oss, minimax-m2, qwen2, mistral3 (8 configs,
# 14 files) added 13.3 MB (37.7 MB in all)
BUDGET_BYTES = 38 * 1000 * 1000
# archs whose config A has every row (ne[0]) a multiple of 256 (K-quants apply everywhere)
ROWS_256_ARCHS = ("llama", "qwen3moe", "minimax-m2")


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


def yarn_params(hp, n_rot, theta):
    """(freq_scale, ext_factor, corr_dims, mscale) as llama.cpp sets them up (llama-context.cpp,
    ggml rope_yarn_corr_dims); the defaults make this plain rope."""
    factor = hp("rope.scaling.factor", 0.0) or 1.0
    if hp("rope.scaling.type", "linear") != "yarn":
        return 1.0 / factor, 0.0, (0.0, 0.0), 1.0
    orig = hp("rope.scaling.original_context_length", hp("context_length"))
    # gpt-oss's loader ignores the yarn_beta_* keys (defaults 32 / 1); the fixtures write 32 / 1
    beta_fast, beta_slow = hp("rope.scaling.yarn_beta_fast", 32.0), hp("rope.scaling.yarn_beta_slow", 1.0)
    corr = lambda r: n_rot * np.log(orig / (r * 2 * np.pi)) / (2 * np.log(theta))  # noqa: E731
    low, high = max(0.0, np.floor(corr(beta_fast))), min(n_rot - 1.0, np.ceil(corr(beta_slow)))
    mscale = lambda s, m: 1.0 if s <= 1 else 0.1 * m * np.log(s) + 1.0  # noqa: E731
    log_mul = hp("rope.scaling.yarn_log_multiplier", 0.0)
    # net cos/sin factor: llama.cpp's attn_factor (mscale ratio / (1 + 0.1 ln f)) times ggml's
    # (1 + 0.1 ln f) inside the rope
    ms = mscale(factor, 1.0) / mscale(factor, log_mul) if log_mul else mscale(factor, 1.0)
    return 1.0 / factor, 1.0, (low, high), ms


def rope(x, pos, theta, neox, divisors=None, n_rot=None, yarn=(1.0, 0.0, (0.0, 0.0), 1.0)):
    """x: [T, H, hd]; rotates the first n_rot dims. NORM pairs (2i, 2i+1); NEOX pairs (i, i + n_rot/2)."""
    hd = x.shape[-1]
    n_rot = n_rot or hd
    freq_scale, ext, (low, high), mscale = yarn
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv = theta ** (-2.0 * i / n_rot)
    if divisors is not None:
        inv = inv / divisors
    ang_extrap = pos[:, None].astype(np.float64) * inv[None, :]  # [T, n_rot/2]
    ramp = (1 - np.clip((i - low) / max(0.001, high - low), 0, 1)) * ext
    ang = ang_extrap * freq_scale * (1 - ramp) + ang_extrap * ramp
    c, s = mscale * np.cos(ang)[:, None, :], mscale * np.sin(ang)[:, None, :]
    xr = x[..., :n_rot].astype(np.float64)
    if neox:
        x0, x1 = xr[..., : n_rot // 2], xr[..., n_rot // 2 :]
    else:
        x0, x1 = xr[..., 0::2], xr[..., 1::2]
    y0, y1 = x0 * c - x1 * s, x0 * s + x1 * c
    out = x.astype(np.float64)
    if neox:
        out[..., : n_rot // 2], out[..., n_rot // 2 : n_rot] = y0, y1
    else:
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = y0, y1
    return out.astype(np.float32)


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu_oai(g, u, alpha=1.702, limit=7.0):
    """gpt-oss's clamped SwiGLU (llama.cpp swiglu_oai, HF GptOssExperts._apply_gate)."""
    g = np.minimum(g, limit)
    u = np.clip(u, -limit, limit)
    return g / (1.0 + np.exp(-alpha * g)) * (u + 1.0)


def forward(path, tokens):
    r = gguf.GGUFReader(str(path))
    arch = field(r, "general.architecture")
    hp = lambda k, d=None: field(r, f"{arch}.{k}", d)  # noqa: E731
    n_layer, n_head, n_kv = hp("block_count"), hp("attention.head_count"), hp("attention.head_count_kv")
    n_embd = hp("embedding_length")
    hd = hp("attention.key_length", n_embd // n_head)
    n_rot = hp("rope.dimension_count", hd)
    eps, theta = hp("attention.layer_norm_rms_epsilon"), hp("rope.freq_base", 10000.0)
    n_used = hp("expert_used_count", 0)
    W = {t.name: tensor_f32(t) for t in r.tensors}
    # llama_model_rope_type: llama / mistral3 NORM, the others NEOX
    neox = arch not in ("llama", "mistral3")
    divisors = W.get("rope_freqs.weight")
    yarn = yarn_params(hp, n_rot, theta)
    # routing per arch (llama.cpp's graphs): gating 1 softmax, 2 sigmoid, 3 softmax over the
    # selected logits (gpt-oss); top-k weights renormalized for qwen3moe (unless
    # expert_weights_norm = false) and minimax-m2, not for gpt-oss
    gating = 3 if arch == "gpt-oss" else hp("expert_gating_func", 1)
    renorm = False if arch == "gpt-oss" else hp("expert_weights_norm", True)
    n_swa = hp("attention.sliding_window", 0)  # gpt-oss: even layers sliding
    temp_scale = hp("attention.temperature_scale", 0.0)  # mistral3 (llama-4 attention temperature)
    n_orig = hp("rope.scaling.original_context_length", hp("context_length"))
    T = len(tokens)
    pos = np.arange(T)
    x = W["token_embd.weight"][np.asarray(tokens)]
    causal = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    swa = causal + np.tril(np.full((T, T), -np.inf, dtype=np.float32), -n_swa) if n_swa else causal
    bias = lambda name: W.get(name, 0.0)  # noqa: E731
    for il in range(n_layer):
        b = f"blk.{il}."
        n = rms_norm(x, W[b + "attn_norm.weight"], eps)
        q = n @ W[b + "attn_q.weight"].T + bias(b + "attn_q.bias")
        k = n @ W[b + "attn_k.weight"].T + bias(b + "attn_k.bias")
        v = (n @ W[b + "attn_v.weight"].T + bias(b + "attn_v.bias")).reshape(T, n_kv, hd)
        if b + "attn_q_norm.weight" in W and W[b + "attn_q_norm.weight"].shape[0] == n_head * hd:
            q = rms_norm(q, W[b + "attn_q_norm.weight"], eps)  # minimax-m2: over the whole projection
            k = rms_norm(k, W[b + "attn_k_norm.weight"], eps)
        q, k = q.reshape(T, n_head, hd), k.reshape(T, n_kv, hd)
        if b + "attn_q_norm.weight" in W and W[b + "attn_q_norm.weight"].shape[0] == hd:
            q = rms_norm(q, W[b + "attn_q_norm.weight"], eps)  # qwen3moe: per head
            k = rms_norm(k, W[b + "attn_k_norm.weight"], eps)
        q = rope(q, pos, theta, neox, divisors, n_rot, yarn)
        k = rope(k, pos, theta, neox, divisors, n_rot, yarn)
        if temp_scale:
            q = q * (1.0 + temp_scale * np.log(1.0 + np.floor(pos / n_orig)))[:, None, None].astype(np.float32)
        mask = swa if n_swa and il % 2 == 0 else causal
        sinks = W.get(b + "attn_sinks.weight")
        att = np.empty((T, n_head, hd), dtype=np.float32)
        for h in range(n_head):
            kh = h // (n_head // n_kv)
            sc = (q[:, h, :] @ k[:, kh, :].T) / np.sqrt(hd) + mask
            mx = sc.max(-1, keepdims=True)
            if sinks is not None:  # a per-head logit in the softmax denominator, no value
                mx = np.maximum(mx, sinks[h])
            e = np.exp(sc - mx)
            den = e.sum(-1, keepdims=True) + (np.exp(sinks[h] - mx) if sinks is not None else 0.0)
            att[:, h, :] = (e / den) @ v[:, kh, :]
        x = x + att.reshape(T, n_head * hd) @ W[b + "attn_output.weight"].T + bias(b + "attn_output.bias")
        m = rms_norm(x, W[b + "post_attention_norm.weight" if arch == "gpt-oss" else b + "ffn_norm.weight"], eps)
        if b + "ffn_gate_inp.weight" in W:
            logits = m @ W[b + "ffn_gate_inp.weight"].T + bias(b + "ffn_gate_inp.bias")
            if gating == 2:
                p = 1.0 / (1.0 + np.exp(-logits))
            elif gating == 3:
                p = logits
            else:
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p = p / p.sum(-1, keepdims=True)
            score = p + bias(b + "exp_probs_b.bias")  # the bias picks experts, weights stay unbiased
            y = np.zeros_like(x)
            for t in range(T):
                sel = np.argsort(-score[t], kind="stable")[:n_used]
                wts = p[t, sel]
                if gating == 3:
                    wts = np.exp(wts - wts.max()) / np.exp(wts - wts.max()).sum()
                if renorm:
                    wts = wts / max(wts.sum(), 6.103515625e-5)
                for e, wt in zip(sel, wts):
                    g = W[b + "ffn_gate_exps.weight"][e] @ m[t]
                    u = W[b + "ffn_up_exps.weight"][e] @ m[t]
                    if arch == "gpt-oss":
                        g = g + W[b + "ffn_gate_exps.bias"][e]
                        u = u + W[b + "ffn_up_exps.bias"][e]
                        o = W[b + "ffn_down_exps.weight"][e] @ swiglu_oai(g, u) + W[b + "ffn_down_exps.bias"][e]
                    else:
                        o = W[b + "ffn_down_exps.weight"][e] @ (silu(g) * u)
                    y[t] += wt * o
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
        if len(ne) >= 2 and m["config"].endswith("-a") and m["arch"] in ROWS_256_ARCHS:
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
