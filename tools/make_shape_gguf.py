#!/usr/bin/env python3
"""make_shape_gguf.py - metadata-only GGUF files with the shapes of real models.

Writes a GGUF whose header, metadata (the real hyper-parameters) and tensor infos (every
tensor's name, shape and type, as a published release has them) are those of a large model,
and whose data section is a hole: the file has the real file's length but is sparse, so it
occupies a few hundred KiB of disk. `tandem plan` and `tandem inspect` read tensor infos only,
and Tandem's GGUF reader (model/gguf.c) checks that every tensor lies inside the file, which
the hole satisfies. The data reads as zeros: nothing can run such a file, only plan it.

    tools/make_shape_gguf.py --list
    tools/make_shape_gguf.py MODEL [--mix MIX] [-o OUT.gguf] [--summary]

Models and mixes (the first mix is the default; docs/models.md has the sources):

  minimax-m2.5        q4_k_m   llama-quantize Q4_K_M (llama.cpp's llama_tensor_get_type)
                      q3_k_xl  ASSUMED for unsloth's UD-Q3_K_XL: llama-quantize's Q3_K_M rules
                               (no published per-tensor list was found)
  gpt-oss-120b        mxfp4    ggml-org's release: experts MXFP4, the other matrices Q8_0
                               (llama-quantize MXFP4_MOE), vectors and the router F32
                      bf16     convert_hf_to_gguf.py --outtype bf16: experts stay MXFP4, the
                               other matrices BF16
  gpt-oss-20b         mxfp4, bf16 as above
  qwen2.5-coder-32b   q4_k_m
  devstral-small-2    q4_k_m   (mistral3; the text model of Devstral-Small-2-24B-Instruct-2512)
  qwen3-235b-a22b     q4_k_m   (the 2507 release: 262144 context)
  qwen3-coder-30b-a3b q4_k_m
  llama-3.3-70b       q4_k_m

The type rules are a port of the parts of llama.cpp's src/llama-quant.cpp
(llama_tensor_get_type_impl, tensor_type_fallback, tensor_allows_quantization) these mixes
use, from the vendored llama.cpp of llama-cpp-python 0.3.36; the converter keeps 1-D
tensors, norms and the routers (ffn_gate_inp) in F32.

Needs only the `gguf` package (tools/requirements.txt).
"""
import argparse
import collections
import os
import sys

import numpy as np

import gguf

T = gguf.GGMLQuantizationType

# ---- the models --------------------------------------------------------------------------

# Hyper-parameters as the GGUF metadata holds them (keys under "<arch>."). Sources:
# ../shared/reference/gguf-and-moe-architectures.md sections 3 and 6 (MiniMax-M2.5,
# gpt-oss, Qwen3); the published configs (Qwen2.5-Coder-32B-Instruct, Llama-3.3-70B-Instruct;
# Devstral-Small-2: 40 layers,
# 5120 wide, 32 heads / 8 kv heads, vocab 131072, 393216 context; head dim 128 and FFN
# width 32768 as Mistral Small 3.x, which gives its published 23.57 B parameters).
MODELS = {
    "minimax-m2.5": dict(
        arch="minimax-m2", name="MiniMax-M2.5", mixes=("q4_k_m", "q3_k_xl"), n_vocab=200064,
        kv={"block_count": 62, "context_length": 196608, "embedding_length": 3072,
            "feed_forward_length": 1536, "attention.head_count": 48,
            "attention.head_count_kv": 8, "attention.key_length": 128,
            "attention.value_length": 128, "rope.dimension_count": 64,
            "rope.freq_base": 5e6, "attention.layer_norm_rms_epsilon": 1e-6,
            "expert_count": 256, "expert_used_count": 8, "expert_feed_forward_length": 1536,
            "expert_gating_func": 2}),
    "gpt-oss-120b": dict(
        arch="gpt-oss", name="gpt-oss-120b", mixes=("mxfp4", "bf16"), n_vocab=201088,
        kv={"block_count": 36, "context_length": 131072, "embedding_length": 2880,
            "feed_forward_length": 2880, "attention.head_count": 64,
            "attention.head_count_kv": 8, "attention.key_length": 64,
            "attention.value_length": 64, "rope.freq_base": 150000.0,
            "attention.layer_norm_rms_epsilon": 1e-5, "expert_count": 128,
            "expert_used_count": 4, "expert_feed_forward_length": 2880,
            "attention.sliding_window": 128, "rope.scaling.type": "yarn",
            "rope.scaling.factor": 32.0, "rope.scaling.original_context_length": 4096}),
    "qwen2.5-coder-32b": dict(
        arch="qwen2", name="Qwen2.5-Coder-32B-Instruct", mixes=("q4_k_m",), n_vocab=152064,
        kv={"block_count": 64, "context_length": 32768, "embedding_length": 5120,
            "feed_forward_length": 27648, "attention.head_count": 40,
            "attention.head_count_kv": 8, "rope.freq_base": 1e6,
            "attention.layer_norm_rms_epsilon": 1e-6}),
    "devstral-small-2": dict(
        arch="mistral3", name="Devstral-Small-2-24B-Instruct-2512", mixes=("q4_k_m",),
        n_vocab=131072,
        kv={"block_count": 40, "context_length": 393216, "embedding_length": 5120,
            "feed_forward_length": 32768, "attention.head_count": 32,
            "attention.head_count_kv": 8, "attention.key_length": 128,
            "attention.value_length": 128, "rope.dimension_count": 128,
            "rope.freq_base": 1e8, "attention.layer_norm_rms_epsilon": 1e-5,
            "rope.scaling.type": "yarn", "rope.scaling.factor": 48.0,
            "rope.scaling.original_context_length": 8192,
            "attention.temperature_scale": 0.1}),
}
MODELS["qwen3-235b-a22b"] = dict(
    arch="qwen3moe", name="Qwen3-235B-A22B-Instruct-2507", mixes=("q4_k_m",), n_vocab=151936,
    kv={"block_count": 94, "context_length": 262144, "embedding_length": 4096,
        "feed_forward_length": 12288, "attention.head_count": 64, "attention.head_count_kv": 4,
        "attention.key_length": 128, "attention.value_length": 128, "rope.freq_base": 5e6,
        "attention.layer_norm_rms_epsilon": 1e-6, "expert_count": 128, "expert_used_count": 8,
        "expert_feed_forward_length": 1536})
MODELS["qwen3-coder-30b-a3b"] = dict(
    MODELS["qwen3-235b-a22b"], name="Qwen3-Coder-30B-A3B-Instruct",
    kv=dict(MODELS["qwen3-235b-a22b"]["kv"], block_count=48, embedding_length=2048,
            feed_forward_length=6144, **{"attention.head_count": 32,
                                          "expert_feed_forward_length": 768,
                                          "rope.freq_base": 1e7}))
MODELS["llama-3.3-70b"] = dict(
    arch="llama", name="Llama-3.3-70B-Instruct", mixes=("q4_k_m",), n_vocab=128256,
    kv={"block_count": 80, "context_length": 131072, "embedding_length": 8192,
        "feed_forward_length": 28672, "attention.head_count": 64, "attention.head_count_kv": 8,
        "rope.dimension_count": 128, "rope.freq_base": 500000.0,
        "attention.layer_norm_rms_epsilon": 1e-5})
MODELS["gpt-oss-20b"] = dict(MODELS["gpt-oss-120b"], name="gpt-oss-20b",
                             kv=dict(MODELS["gpt-oss-120b"]["kv"], block_count=24,
                                     expert_count=32))


def tensor_shapes(spec):
    """(name, ne) of every tensor, in the converter's order; ne as GGUF writes it (ne[0] the
    row length)."""
    kv, arch = spec["kv"], spec["arch"]
    E, V, L = kv["embedding_length"], spec["n_vocab"], kv["block_count"]
    H, KV = kv["attention.head_count"], kv["attention.head_count_kv"]
    hd = kv.get("attention.key_length", E // H)
    Q, K = H * hd, KV * hd
    out = [("token_embd.weight", [E, V])]
    if arch == "llama":
        out += [("rope_freqs.weight", [hd // 2])]  # Llama 3's per-dim RoPE factors
    for il in range(L):
        b = f"blk.{il}."
        out += [(b + "attn_norm.weight", [E]), (b + "attn_q.weight", [E, Q]),
                (b + "attn_k.weight", [E, K]), (b + "attn_v.weight", [E, K]),
                (b + "attn_output.weight", [Q, E])]
        if arch in ("qwen2", "gpt-oss"):
            out += [(b + "attn_q.bias", [Q]), (b + "attn_k.bias", [K]), (b + "attn_v.bias", [K])]
        if arch == "gpt-oss":
            out += [(b + "attn_output.bias", [E]), (b + "attn_sinks.weight", [H]),
                    (b + "post_attention_norm.weight", [E])]
        else:
            out += [(b + "ffn_norm.weight", [E])]
        if arch == "minimax-m2":
            out += [(b + "attn_q_norm.weight", [Q]), (b + "attn_k_norm.weight", [K])]
        if arch == "qwen3moe":
            out += [(b + "attn_q_norm.weight", [hd]), (b + "attn_k_norm.weight", [hd])]
        if "expert_count" in kv:
            NE, FE = kv["expert_count"], kv["expert_feed_forward_length"]
            out += [(b + "ffn_gate_inp.weight", [E, NE]),
                    (b + "ffn_gate_exps.weight", [E, FE, NE]),
                    (b + "ffn_up_exps.weight", [E, FE, NE]),
                    (b + "ffn_down_exps.weight", [FE, E, NE])]
            if arch == "minimax-m2":
                out += [(b + "exp_probs_b.bias", [NE])]
            if arch == "gpt-oss":
                out += [(b + "ffn_gate_inp.bias", [NE]), (b + "ffn_gate_exps.bias", [FE, NE]),
                        (b + "ffn_up_exps.bias", [FE, NE]), (b + "ffn_down_exps.bias", [E, NE])]
        else:
            F = kv["feed_forward_length"]
            out += [(b + "ffn_gate.weight", [E, F]), (b + "ffn_up.weight", [E, F]),
                    (b + "ffn_down.weight", [F, E])]
    out += [("output_norm.weight", [E]), ("output.weight", [E, V])]
    return out


# ---- the types ---------------------------------------------------------------------------

def use_more_bits(i, n):
    """llama-quant.cpp: the layers that get more bits in the _M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def block_of(t):
    return gguf.GGML_QUANT_SIZES[t][0]


def quantizable(name, ne):
    """llama-quant.cpp tensor_allows_quantization, the parts that apply here."""
    return (len(ne) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name)


def k_mix_type(name, ne, mix, spec, layer):
    """llama_tensor_get_type_impl for Q4_K_M and Q3_K_M (the mix q3_k_xl stands for), then
    tensor_type_fallback."""
    kv = spec["kv"]
    n_layer, n_expert = kv["block_count"], kv.get("expert_count", 0)
    t = T.Q4_K if mix == "q4_k_m" else T.Q3_K
    if name == "output.weight":
        t = T.Q8_0 if ne[0] % block_of(t) else T.Q6_K
    elif name == "token_embd.weight":
        pass
    elif ".attn_v." in name:
        if mix == "q3_k_m":
            t = T.Q5_K if layer < 2 else T.Q4_K
        elif use_more_bits(layer, n_layer):
            t = T.Q6_K
        if spec["arch"] == "llama" and n_layer == 80 and t in (T.Q3_K, T.Q4_K):
            t = T.Q5_K  # llama.cpp's LLM_TYPE_70B: attn_v is 8x smaller than attn_q
        if n_expert == 8:
            t = T.Q8_0
    elif ".attn_k." in name:
        if n_expert == 8:
            t = T.Q8_0
    elif "ffn_down" in name:
        if mix == "q3_k_m":
            t = T.Q5_K if layer < n_layer // 16 else T.Q4_K
        elif use_more_bits(layer, n_layer):
            t = T.Q6_K
    elif ".attn_output." in name:
        if n_expert == 8:
            t = T.Q5_K
        elif mix == "q3_k_m":
            t = T.Q4_K
    if ne[0] % block_of(t):
        t = FALLBACK.get(t, t)
        if ne[0] % block_of(t):
            t = T.F16
    return t


def tensor_type(name, ne, mix, spec):
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if not quantizable(name, ne):
        return T.F32  # 1-D tensors, norms and routers: F32 from the converter
    if mix in ("mxfp4", "bf16"):
        # gpt-oss: the experts are MXFP4 in the checkpoint and stay so; the rest is BF16
        # from the converter, Q8_0 after llama-quantize MXFP4_MOE (output included)
        if len(ne) == 3:
            return T.MXFP4
        return T.Q8_0 if mix == "mxfp4" else T.BF16
    return k_mix_type(name, ne, "q3_k_m" if mix == "q3_k_xl" else mix, spec, layer)


def nbytes_of(t, ne):
    blck, size = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(ne, dtype=np.int64))
    if ne[0] % blck:
        raise ValueError(f"{t.name} rows of {ne[0]} values do not split into blocks of {blck}")
    return n // blck * size


# ---- the file ----------------------------------------------------------------------------

FILE_TYPE = {"q4_k_m": 15, "q3_k_xl": 12, "mxfp4": 38, "bf16": 32}  # llama_ftype


def add_kv(w, arch, key, val):
    full = f"{arch}.{key}"
    if isinstance(val, str):
        w.add_string(full, val)
    elif isinstance(val, float):
        w.add_float32(full, val)
    else:
        w.add_uint32(full, val)


def build(model, mix, out):
    """Writes the file; returns [(name, type, ne, nbytes)]."""
    spec = MODELS[model]
    if mix not in spec["mixes"]:
        raise SystemExit(f"{model}: mix {mix!r}: one of {', '.join(spec['mixes'])}")
    tensors = []
    for name, ne in tensor_shapes(spec):
        t = tensor_type(name, ne, mix, spec)
        tensors.append((name, t, ne, nbytes_of(t, ne)))
    w = gguf.GGUFWriter(out, spec["arch"])
    w.add_name(f"{spec['name']} ({mix}, metadata only: no weights)")
    w.add_type("model")
    w.add_uint32("general.file_type", FILE_TYPE[mix])
    w.add_uint32("general.quantization_version", 2)
    w.add_string("general.comment", "tools/make_shape_gguf.py: tensor infos only; the data "
                 "section is a hole (zeros), for tandem plan / inspect")
    for key, val in spec["kv"].items():
        add_kv(w, spec["arch"], key, val)
    w.add_string("tokenizer.ggml.model", "gpt2")
    for name, t, ne, nb in tensors:
        # numpy order (outermost first); the dtype only marks it as not a byte shape
        w.add_tensor_info(name, list(reversed(ne)), np.dtype(np.float32), nb, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    fout.flush()
    align = w.data_alignment
    start = (fout.tell() + align - 1) // align * align
    size = start + sum((nb + align - 1) // align * align for _, _, _, nb in tensors)
    # the data section as a hole: the file's length without its blocks
    fout.truncate(size)
    w.close()
    return tensors


def summary(model, mix, tensors):
    counts, sizes = collections.Counter(), collections.Counter()
    for _, t, _, nb in tensors:
        counts[t.name] += 1
        sizes[t.name] += nb
    total = sum(sizes.values())
    lines = [f"{model} {mix}: {len(tensors)} tensors, {total} bytes "
             f"({total / 1e9:.2f} GB, {total / 2**30:.2f} GiB)"]
    for k in sorted(counts, key=lambda k: -sizes[k]):
        lines.append(f"  {k:6s} {counts[k]:5d} tensors {sizes[k] / 2**30:9.2f} GiB")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", choices=sorted(MODELS))
    ap.add_argument("--mix", help="the release's per-tensor types (default: the model's first)")
    ap.add_argument("-o", "--out", help="output file (default: MODEL-MIX.shape.gguf here)")
    ap.add_argument("--list", action="store_true", help="the models and their mixes")
    ap.add_argument("--summary", action="store_true", help="print tensors and bytes per type")
    a = ap.parse_args(argv)
    if a.list or a.model is None:
        for m in sorted(MODELS):
            print(f"{m:20s} {MODELS[m]['arch']:11s} mixes: {', '.join(MODELS[m]['mixes'])}")
        return 0
    mix = a.mix or MODELS[a.model]["mixes"][0]
    out = a.out or f"{a.model}-{mix}.shape.gguf"
    tensors = build(a.model, mix, out)
    if a.summary:
        print(summary(a.model, mix, tensors))
    on_disk = os.stat(out).st_blocks * 512
    print(f"{out}: {os.path.getsize(out)} bytes long, {on_disk} on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
