"""Multi-token-prediction (MTP) helpers for the tests: a GGUF writer that gives a hybrid
fixture an MTP block, and an independent numpy oracle of the block read straight from the
GGUF's tensors.

The block, as vLLM's qwen3_next_mtp / qwen3_5_mtp and llama.cpp's qwen35moe graph_mtp run it
(the formulas, not Tandem's code): row p pairs token x_{p+1} with the trunk's hidden state h_p
after the final norm,

    x   = eh_proj [RMSNorm(embed(x_{p+1}); enorm) ; RMSNorm(h_p; hnorm)]
    x  += Wo (softmax(q k^T / sqrt(d)) v * sigmoid(gate))     gated attention over rows 0..p,
          q / k RMSNorm per head, NEOX RoPE at position p on the first n_rot dims
    x  += sum_top-k w_e SwiGLU_e(n) + sigmoid(shexp_inp . n) SwiGLU_sh(n),  n = RMSNorm(x)
    out = RMSNorm(x; shared_head_norm, else output_norm);  logits = head(out)

and a chained draft feeds `out` back as the next row's h with the row's argmax as its token.
"""
import zlib

import gguf
import numpy as np


def _fields(r):
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    return arch


def add_mtp_block(src, dst, seed=7, echo=False):
    """Copies the hybrid GGUF src to dst with an MTP block after its trunk, named as llama.cpp's
    converter names a Qwen3-Next / Qwen3.5 checkpoint's `mtp.*` tensors (blk.<n>.nextn.eh_proj,
    .enorm, .hnorm, .shared_head_norm, and a full-attention layer's tensors shaped like the
    trunk's first attention layer), random values from a fixed seed, and the keys the converter
    writes (block_count + 1, nextn_predict_layers 1, recurrent_layers one False longer). The
    trunk is untouched, so the trunk's references still hold.

    echo: a block that mostly passes h_p through (eh_proj = [0 | I], unit norms, the
    attention's and the FFN's output projections scaled by 0.05), so its draft is nearly the
    trunk's own choice at p, i.e. the last token again: a random trunk that repeats itself
    accepts some such drafts, which a test needs to see acceptance at all."""
    r = gguf.GGUFReader(str(src))
    arch = _fields(r)
    n_layer = int(r.fields[f"{arch}.block_count"].parts[-1][0])
    rec = r.fields.get(f"{arch}.attention.recurrent_layers")
    rec_list = [bool(x) for x in rec.contents()] if rec is not None else None
    full = next(i for i in range(n_layer) if rec_list is None or not rec_list[i])
    w = gguf.GGUFWriter(str(dst), arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        val = f.contents()
        if name == f"{arch}.block_count":
            val = n_layer + 1
        elif name == f"{arch}.attention.recurrent_layers":
            val = list(rec_list) + [False]
        w.add_key_value(name, val, vt, sub)
    w.add_key_value(f"{arch}.nextn_predict_layers", 1, gguf.GGUFValueType.UINT32)
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    E = tensors["token_embd.weight"].shape[1]
    extra = {}
    pre = f"blk.{full}."
    for name, data in tensors.items():
        if name.startswith(pre):
            extra[f"blk.{n_layer}." + name[len(pre):]] = data.shape
    extra[f"blk.{n_layer}.nextn.eh_proj.weight"] = (E, 2 * E)
    for k in ("enorm", "hnorm", "shared_head_norm"):
        extra[f"blk.{n_layer}.nextn.{k}.weight"] = (E,)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    for name, shape in extra.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("norm.weight"):
            v = 1.0 + rng.uniform(-0.3, 0.3, size=shape)  # stored as 1 + w, as the converter does
            if echo and "attn_" not in name:
                v = np.ones(shape)
        else:
            fan_in = shape[-1]
            v = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
            if echo and name.endswith("nextn.eh_proj.weight"):
                v = np.concatenate([np.zeros((E, E)), np.eye(E)], axis=1)
            elif echo and any(k in name for k in ("attn_output", "ffn_down_exps", "ffn_down_shexp")):
                v = 0.05 * v
        w.add_tensor(name, v.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class MtpOracle:
    """The MTP block of a float GGUF in numpy (float64), rows fed one by one."""

    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        arch = _fields(r)

        def kv(key, default=None):
            f = r.fields.get(f"{arch}.{key}")
            return default if f is None else f.contents()
        self.t = {t.name: np.array(t.data, dtype=np.float64) for t in r.tensors}
        self.n_layer = int(kv("block_count")) - int(kv("nextn_predict_layers"))
        self.eps = float(kv("attention.layer_norm_rms_epsilon"))
        self.n_head = int(kv("attention.head_count"))
        self.n_kv = int(kv("attention.head_count_kv"))
        self.hd = int(kv("attention.key_length"))
        self.n_rot = int(kv("rope.dimension_count"))
        self.base = float(kv("rope.freq_base"))
        self.k_used = int(kv("expert_used_count"))
        self.norm_topk = bool(kv("expert_weights_norm", True))
        b = f"blk.{self.n_layer}."
        self.b = b
        self.embed = self.t.get(b + "nextn.embed_tokens.weight", self.t["token_embd.weight"])
        self.head = self.t.get(b + "nextn.shared_head_head.weight",
                               self.t.get("output.weight", self.t["token_embd.weight"]))
        self.head_norm = self.t.get(b + "nextn.shared_head_norm.weight", self.t["output_norm.weight"])
        self.k_cache, self.v_cache = [], []

    def truncate(self, n):
        """Forgets the rows from position n on (the engine writes them again)."""
        del self.k_cache[n:]
        del self.v_cache[n:]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, p):
        """NEOX rotation of each head's first n_rot dims (pairs i, i + n_rot/2)."""
        h = self.n_rot // 2
        i = np.arange(h)
        ang = p * self.base ** (-2.0 * i / self.n_rot)
        c, s = np.cos(ang), np.sin(ang)
        y = x.copy()
        a, b2 = x[:, :h], x[:, h:self.n_rot]
        y[:, :h] = a * c - b2 * s
        y[:, h:self.n_rot] = b2 * c + a * s
        return y

    def row(self, token, h, p):
        """One row at position p (rows must come in position order from 0); returns
        (logits, out state)."""
        t, b, hd = self.t, self.b, self.hd
        e = self.rms(self.embed[token], t[b + "nextn.enorm.weight"])
        hn = self.rms(np.asarray(h, dtype=np.float64), t[b + "nextn.hnorm.weight"])
        x = t[b + "nextn.eh_proj.weight"] @ np.concatenate([e, hn])
        # gated attention: per head hd query rows then hd gate rows
        n = self.rms(x, t[b + "attn_norm.weight"])
        qg = (t[b + "attn_q.weight"] @ n).reshape(self.n_head, 2 * hd)
        q, gate = qg[:, :hd], qg[:, hd:]
        k = (t[b + "attn_k.weight"] @ n).reshape(self.n_kv, hd)
        v = (t[b + "attn_v.weight"] @ n).reshape(self.n_kv, hd)
        q = self.rope(self.rms(q, t[b + "attn_q_norm.weight"]), p)
        k = self.rope(self.rms(k, t[b + "attn_k_norm.weight"]), p)
        assert len(self.k_cache) == p
        self.k_cache.append(k)
        self.v_cache.append(v)
        K, V = np.stack(self.k_cache), np.stack(self.v_cache)  # [p + 1, n_kv, hd]
        group = self.n_head // self.n_kv
        o = np.empty((self.n_head, hd))
        for hh in range(self.n_head):
            s = K[:, hh // group, :] @ q[hh] / np.sqrt(hd)
            a = np.exp(s - s.max())
            a /= a.sum()
            o[hh] = a @ V[:, hh // group, :]
        o = o * (1.0 / (1.0 + np.exp(-gate)))
        x = x + t[b + "attn_output.weight"] @ o.reshape(-1)
        # MoE with the gated shared expert
        n = self.rms(x, t[b + "post_attention_norm.weight"])
        logit = t[b + "ffn_gate_inp.weight"] @ n
        prob = np.exp(logit - logit.max())
        prob /= prob.sum()
        top = np.argsort(-prob, kind="stable")[:self.k_used]
        wts = prob[top] / (prob[top].sum() if self.norm_topk else 1.0)

        def swiglu(g, u, d):
            a = g @ n
            return d @ (a / (1.0 + np.exp(-a)) * (u @ n))
        y = np.zeros_like(x)
        for e_i, wt in zip(top, wts):
            y += wt * swiglu(t[b + "ffn_gate_exps.weight"][e_i], t[b + "ffn_up_exps.weight"][e_i],
                             t[b + "ffn_down_exps.weight"][e_i])
        if b + "ffn_up_shexp.weight" in t:
            sg = 1.0 / (1.0 + np.exp(-(t[b + "ffn_gate_inp_shexp.weight"].reshape(-1) @ n)))
            y += sg * swiglu(t[b + "ffn_gate_shexp.weight"], t[b + "ffn_up_shexp.weight"],
                             t[b + "ffn_down_shexp.weight"])
        x = x + y
        out = self.rms(x, self.head_norm)
        return self.head @ out, out


def hidden_from_logits(path, logits):
    """The trunk's normed last hidden states that give `logits` (rows), recovered by least
    squares through the model's output matrix (n_vocab > n_embd: exact up to rounding)."""
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    out = np.array((t.get("output.weight") or t["token_embd.weight"]).data, dtype=np.float64)
    sol, *_ = np.linalg.lstsq(out, np.asarray(logits, dtype=np.float64).T, rcond=None)
    return sol.T
