#!/usr/bin/env python3
"""Writes a benchmark GGUF with the shape and quantization mix of a real model file but
random weights, fast enough for a 30B MoE (about 17 GB) in well under two minutes.

    .venv/bin/python tools/make_bench_model.py --shape qwen3-30b-a3b --out /dev/shm/q3-30b-a3b.Q4_K_M.gguf
    .venv/bin/python tools/make_bench_model.py --shape qwen3-30b-a3b --layers 2 --out /tmp/q3-2l.gguf
    .venv/bin/python tools/make_bench_model.py --shape smollm2-135m --out /tmp/smollm2-135m.Q4_1.gguf
    # an F16 file made as a converter makes it, then llama.cpp's own quantizer:
    .venv/bin/python tools/make_bench_model.py --shape gpt-oss-20b --layers 4 --out /tmp/g.F16.gguf
    build-llamacpp/bin-cpu/llama-quantize /tmp/g.F16.gguf /tmp/g.MXFP4_MOE.gguf MXFP4_MOE

Shapes (--list prints them):
  qwen3-30b-a3b  qwen3moe: 48 layers, hidden 2048, 32 query / 4 KV heads of 128, per-head q/k
                 RMS norms, 128 experts of width 768 with 8 active, vocabulary 151936, untied
                 output, rope theta 1e6; default mix q4_k_m (about 17.4 GB)
  smollm2-135m   llama: 30 layers, hidden 576, FFN 1536, 9 query / 3 KV heads of 64,
                 vocabulary 49152, tied embeddings, rope theta 1e5; default mix q4_1
  qwen3moe-1b    tools/make_bench_moe.py's shape (16 layers, hidden 1024, 24 experts x 512, 4
                 active); default mix q4_k
  gpt-oss-20b    gpt-oss: 24 layers, hidden 2880, 64 query / 8 KV heads of 64 with q/k/v/o
                 biases and attention sinks, sliding window 128 on even layers, YaRN (factor 32,
                 original context 4096, theta 150000), 32 experts of width 2880 with 4 active
                 and biases (router too), vocabulary 201088, untied output; default mix f16
                 (quantize with llama-quantize MXFP4_MOE, as ggml-org's release is made)
  minimax-m2     minimax-m2: 62 layers, hidden 3072, 48 query / 8 KV heads of 128, rotary dims
                 64, q/k RMS norms over the whole projection ([6144] / [1024]), 256 experts of
                 width 1536 with 8 active, sigmoid router with a selection bias (exp_probs_b),
                 vocabulary 200064, untied output, rope theta 5e6; default mix f16 (quantize
                 with llama-quantize Q4_K_M)
  qwen3-coder-next
                 qwen3next (Qwen3-Coder-Next): 48 layers, three Gated DeltaNet layers then one
                 gated attention layer (full attention iff (il + 1) % 4 == 0), hidden 2048;
                 DeltaNet 16 k heads / 32 v heads of 128 (attn_qkv 8192 rows, attn_gate 4096,
                 ssm_ba 64, conv kernel 4, ssm_out 4096 -> 2048); attention 16 query (with
                 their output gates: attn_q 8192 rows) / 2 KV heads of 256, q/k RMS norms,
                 rotary dims 64, rope theta 5e6; 512 experts of width 512 with 10 active plus a
                 shared expert of width 512 with its sigmoid gate (ffn_gate_inp_shexp);
                 vocabulary 151936, untied output; default mix f16 (quantize with
                 llama-quantize Q4_K_M). --layers 4 keeps the real 3:1 pattern.
--layers N keeps the first N layers (the mix rules then see N layers, as llama-quantize would).

Mixes (--mix), following llama.cpp's llama_tensor_get_type (src/llama-quant.cpp of the
llama.cpp vendored in llama-cpp-python 0.3.36) for a model without an imatrix:
  q4_k_m  Q4_K by default; attn_v and ffn_down / ffn_down_exps Q6_K in the layers where
          use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (24 of 48 layers);
          output Q6_K (Q8_0 when its rows are not a multiple of 256); an untied token_embd
          stays Q4_K; a tied one takes the output's type. (The rule's n_expert == 8 and 70B
          special cases do not apply to these shapes.)
  q4_1    Q4_1 everywhere; output / tied token_embd Q6_K, or Q8_0 when the row length is not
          a multiple of 256 (SmolLM2: 576, so Q8_0, as in the published Q4_1 file)
  q8_0    Q8_0 everywhere
  q4_k    Q4_K everywhere, output Q6_K (what `tandem quantize --type q4_k` is compared with)
  f16     F16 matrices, as convert_hf_to_gguf.py --outtype f16 writes them: the input of
          llama-quantize (bench/build_llamacpp.sh --quantize builds it). Values are
          normal(0, 0.02) from one random pool per file read at random offsets.
Tensors whose row length does not divide into their type's super-block fall back as
llama.cpp does (Q4_K -> Q5_0, Q6_K -> Q8_0). Norms, the MoE router (ffn_gate_inp), biases
(gpt-oss's expert biases included), attention sinks and the selection bias are F32, as the
converter writes them and llama-quantize leaves them.

Quantized weights are random bytes with the f16 scale fields (d, dmin, m) overwritten by
small finite values chosen so that weights come out with a standard deviation of about 0.02,
so every block decodes to finite floats. Bytes come from one random pool per type (--pool-mib)
that each tensor reads from a random block offset (wrapping around), so writing is bound by
the disk (or the page cache, written by --threads threads with pwrite), not by Python.
Router weights (the shared expert's gate too) are normal(0, 0.02) and norms 1.0, so MoE routing is spread over the experts
as with a trained model (no expert is favoured). Biases, sinks and the selection bias are
normal(0, 0.02): small, so activations stay finite and routing stays spread. qwen3next's
ssm_a is -exp(U(0, log 16)) and its conv taps U(-1/2, 1/2), as HF initializes them.

Keys and tensor names of gpt-oss-20b, minimax-m2 and qwen3-coder-next are those llama.cpp's
convert_hf_to_gguf.py writes (copied from tests/fixtures/models/gpt-oss-a-f32.gguf,
minimax-m2-a-f32.gguf and tests/fixtures/hybrid/qwen3next-a-f32.gguf, which were written that
way), in the converter's tensor order.

Tokenizer: qwen3 shapes copy the keys of tests/fixtures/tokenizers/qwen3-vocab.gguf (Qwen3's
vocabulary, padded with unused tokens to the embedding rows as Qwen3 checkpoints are);
gpt-oss-20b and minimax-m2 copy tests/fixtures/tokenizers/gpt-oss-vocab.gguf (o200k_harmony's
first 50,000 merges, pre-tokenizer gpt-4o, padded to the embedding rows; llama.cpp maps
MiniMax-M2's pre-tokenizer to the same regex) and the chat template of the fixture model of
their architecture; smollm2-135m gets a minimal byte-level gpt2 vocabulary with SmolLM2's special tokens
(<|endoftext|>, <|im_start|>, <|im_end|> at 0..2, 256 byte tokens, a few merges, padding), or
the keys of --vocab-gguf (e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf) when given. Benchmarks
feed token ids, so the tokenizer only has to load.
Needs numpy and the gguf package (pip install gguf; a wheel: gguf-0.19.0-py3-none-any.whl
with its dependencies numpy, pyyaml, requests, tqdm).
"""
import argparse
import concurrent.futures
import os
import pathlib
import sys
import time

import numpy as np
import gguf

ROOT = pathlib.Path(__file__).resolve().parents[1]
Q = gguf.GGMLQuantizationType

SHAPES = {
    "qwen3-30b-a3b": dict(
        arch="qwen3moe", name="bench-qwen3-30b-a3b", n_layer=48, n_embd=2048, n_ff=6144,
        n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8, n_ff_exp=768,
        n_vocab=151936, rope_theta=1e6, eps=1e-6, ctx=40960, tied=False, qk_norm=True,
        mix="q4_k_m", vocab="qwen3"),
    "smollm2-135m": dict(
        arch="llama", name="bench-smollm2-135m", n_layer=30, n_embd=576, n_ff=1536,
        n_head=9, n_head_kv=3, head_dim=64, n_expert=0, n_expert_used=0, n_ff_exp=0,
        n_vocab=49152, rope_theta=1e5, eps=1e-5, ctx=8192, tied=True, qk_norm=False,
        mix="q4_1", vocab="smollm2"),
    "qwen3moe-1b": dict(
        arch="qwen3moe", name="bench-qwen3moe-1b", n_layer=16, n_embd=1024, n_ff=3072,
        n_head=16, n_head_kv=4, head_dim=64, n_expert=24, n_expert_used=4, n_ff_exp=512,
        n_vocab=151936, rope_theta=1e6, eps=1e-6, ctx=32768, tied=False, qk_norm=True,
        mix="q4_k", vocab="qwen3"),
    "gpt-oss-20b": dict(
        arch="gpt-oss", name="bench-gpt-oss-20b", n_layer=24, n_embd=2880, n_ff=2880,
        n_head=64, n_head_kv=8, head_dim=64, n_expert=32, n_expert_used=4, n_ff_exp=2880,
        n_vocab=201088, rope_theta=150000.0, eps=1e-5, ctx=131072, tied=False, qk_norm=False,
        swa=128, yarn=dict(factor=32.0, orig_ctx=4096, beta_fast=32.0, beta_slow=1.0),
        mix="f16", vocab="gpt-oss", template="tests/fixtures/models/gpt-oss-a-f32.gguf"),
    "minimax-m2": dict(
        arch="minimax-m2", name="bench-minimax-m2", n_layer=62, n_embd=3072, n_ff=1536,
        n_head=48, n_head_kv=8, head_dim=128, n_rot=64, n_expert=256, n_expert_used=8,
        n_ff_exp=1536, n_vocab=200064, rope_theta=5e6, eps=1e-6, ctx=196608, tied=False,
        qk_norm=True, mix="f16", vocab="gpt-oss",
        template="tests/fixtures/models/minimax-m2-a-f32.gguf"),
    "qwen3-coder-next": dict(
        arch="qwen3next", name="bench-qwen3-coder-next", n_layer=48, n_embd=2048, n_ff=5120,
        n_head=16, n_head_kv=2, head_dim=256, n_rot=64, n_expert=512, n_expert_used=10,
        n_ff_exp=512, n_ff_shexp=512, ssm_conv=4, ssm_state=128, ssm_groups=16, ssm_dt_rank=32,
        ssm_inner=4096, attn_interval=4, n_vocab=151936, rope_theta=5e6, eps=1e-6, ctx=262144,
        tied=False, qk_norm=True, mix="f16", vocab="qwen3",
        template="tests/fixtures/hybrid/qwen3next-a-f32.gguf"),
}

FILE_TYPE = {
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S,  # nearest llama.cpp label for "all Q4_K"
    "f16": gguf.LlamaFileType.MOSTLY_F16,
}

# ---- random but valid blocks -------------------------------------------------------------------
# Byte offsets of the f16 scale fields in each block, and the value that gives weights a
# standard deviation of about 0.02 when the other bytes are uniformly random:
#   Q4_0: w = d (q - 8), q in 0..15                    std(q - 8) ~ 4.6
#   Q4_1: w = d q + m                                   m = -7.5 d centres it
#   Q5_0: w = d (q - 16), q in 0..31                    std ~ 9.2
#   Q5_1: w = d q + m, q in 0..31                       m = -15.5 d centres it
#   Q8_0: w = d q, q int8                               std ~ 74
#   Q4_K: w = d sc q - dmin mn, sc, mn 6-bit, q 4-bit   std ~ 257 d with dmin = 7.5 d
#   Q5_K: same with q 5-bit                             std ~ 520 d with dmin = 15.5 d
#   Q6_K: w = d sc (q - 32), sc int8 (set to -32..31)   std ~ 18.5 * 18.5 d
TARGET_STD = 0.02


def make_pool(qtype, pool_bytes, rng):
    if qtype == Q.F16:  # normal(0, TARGET_STD) values
        n = max(1, pool_bytes // 2)
        return (rng.standard_normal(n, dtype=np.float32) * TARGET_STD).astype(np.float16).view(np.uint8)
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = max(1, pool_bytes // size)
    pool = np.frombuffer(rng.bytes(nb * size), dtype=np.uint8).reshape(nb, size).copy()
    jitter = rng.uniform(0.5, 1.5, nb).astype(np.float32)

    def put_f16(off, values):
        pool[:, off:off + 2] = values.astype(np.float16).view(np.uint8).reshape(nb, 2)

    if qtype == Q.Q4_0:
        put_f16(0, TARGET_STD / 4.6 * jitter)
    elif qtype == Q.Q4_1:
        d = TARGET_STD / 4.6 * jitter
        put_f16(0, d)
        put_f16(2, -7.5 * d)
    elif qtype == Q.Q5_0:
        put_f16(0, TARGET_STD / 9.2 * jitter)
    elif qtype == Q.Q5_1:
        d = TARGET_STD / 9.2 * jitter
        put_f16(0, d)
        put_f16(2, -15.5 * d)
    elif qtype == Q.Q8_0:
        put_f16(0, TARGET_STD / 74.0 * jitter)
    elif qtype == Q.Q4_K:
        d = TARGET_STD / 257.0 * jitter
        put_f16(0, d)
        put_f16(2, 7.5 * d)
    elif qtype == Q.Q5_K:
        d = TARGET_STD / 520.0 * jitter
        put_f16(0, d)
        put_f16(2, 15.5 * d)
    elif qtype == Q.Q6_K:
        # 16 int8 sub-block scales at 192..207, d at 208
        pool[:, 192:208] = ((pool[:, 192:208] & 0x3F).astype(np.int16) - 32).astype(np.int8).view(np.uint8)
        put_f16(208, TARGET_STD / (18.5 * 18.5) * jitter)
    else:
        raise ValueError(f"no random block recipe for {qtype.name}")
    return pool.reshape(-1)


class Pools:
    def __init__(self, pool_bytes, rng):
        self.pool_bytes, self.rng, self.pools = pool_bytes, rng, {}

    def chunks(self, qtype, nbytes):
        """memoryviews over the type's pool, from a random block, that add up to nbytes"""
        if qtype not in self.pools:
            self.pools[qtype] = make_pool(qtype, self.pool_bytes, self.rng)
        pool = self.pools[qtype]
        size = gguf.GGML_QUANT_SIZES[qtype][1]
        mv = memoryview(pool)
        pos = int(self.rng.integers(len(pool) // size)) * size
        left = nbytes
        while left > 0:
            n = min(left, len(pool) - pos)
            yield mv[pos:pos + n]
            left -= n
            pos = 0


# ---- llama.cpp's type choice ------------------------------------------------------------------
def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(qtype, ne0):
    blk = gguf.GGML_QUANT_SIZES[qtype][0]
    if ne0 % blk == 0:
        return qtype
    return {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q4_1: Q.Q8_0,
            Q.Q4_0: Q.Q8_0}.get(qtype, Q.Q8_0)


F32_ROLES = ("attn_norm", "ffn_norm", "output_norm", "attn_q_norm", "attn_k_norm",
             "post_attention_norm", "ffn_gate_inp", "attn_sinks", "ffn_gate_inp_shexp",
             "ssm_a", "ssm_conv1d", "ssm_norm")


def tensor_type(mix, role, il, n_layer, ne0, tied):
    """role: the tensor name without blk.N. and .weight (biases keep their .bias)"""
    if role in F32_ROLES or role.endswith(".bias"):
        return Q.F32
    head = role == "output" or (role == "token_embd" and tied)
    if mix == "f16":
        return Q.F16
    if mix == "q8_0":
        t = Q.Q8_0
    elif mix == "q4_1":
        t = Q.Q6_K if head else Q.Q4_1
    elif mix == "q4_k":
        t = Q.Q6_K if head else Q.Q4_K
    elif mix == "q4_k_m":
        if head:
            t = Q.Q6_K
        elif role == "attn_v" or role.startswith("ffn_down"):
            t = Q.Q6_K if use_more_bits(il, n_layer) else Q.Q4_K
        else:
            t = Q.Q4_K
    else:
        raise ValueError(f"unknown mix {mix}")
    if head and ne0 % 256 != 0:
        return Q.Q8_0  # llama.cpp: output rows not a multiple of the K super-block
    return fallback(t, ne0)


# ---- tokenizers ------------------------------------------------------------------------------
def copy_tokenizer(w, vocab_path, n_vocab):
    r = gguf.GGUFReader(vocab_path)
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "surrogateescape")
              for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0])
             for i in f["tokenizer.ggml.token_type"].data]
    if len(tokens) > n_vocab:
        raise SystemExit(f"{vocab_path}: {len(tokens)} tokens, more than the {n_vocab} rows")
    for i in range(len(tokens), n_vocab):  # pad to the embedding rows as HF checkpoints do
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model(f["tokenizer.ggml.model"].contents())
    if "tokenizer.ggml.pre" in f:
        w.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    w.add_token_list(tokens)
    w.add_token_types(types)
    if "tokenizer.ggml.merges" in f:
        w.add_token_merges([bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8", "surrogateescape")
                            for i in f["tokenizer.ggml.merges"].data])
    for key, fn in (("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                    ("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                    ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
                    ("tokenizer.ggml.padding_token_id", w.add_pad_token_id)):
        if key in f:
            fn(int(f[key].contents()))
    for key, fn in (("tokenizer.ggml.add_bos_token", w.add_add_bos_token),
                    ("tokenizer.ggml.add_eos_token", w.add_add_eos_token)):
        if key in f:
            fn(bool(f[key].contents()))
    if "tokenizer.chat_template" in f:
        w.add_chat_template(f["tokenizer.chat_template"].contents())


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def synth_tokenizer(w, n_vocab):
    """byte-level gpt2 vocabulary with SmolLM2's special tokens"""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = list(specials)
    types = [gguf.TokenType.CONTROL] * len(specials)
    b2u = bytes_to_unicode()
    tokens += [b2u[b] for b in range(256)]
    types += [gguf.TokenType.NORMAL] * 256
    merges = []
    for a, b in (("Ġ", "t"), ("h", "e"), ("i", "n"), ("t", "h"), ("Ġ", "a"), ("e", "r"),
                 ("o", "n"), ("Ġt", "he"), ("r", "e"), ("a", "t")):
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# ---- the model -------------------------------------------------------------------------------
def tensor_list(s, n_layer):
    """(name, role, layer, numpy-order shape) in llama.cpp's file order"""
    E, H, HKV, D = s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"]
    out = [("token_embd.weight", "token_embd", -1, (s["n_vocab"], E))]
    X, F = s["n_expert"], s["n_ff_exp"]
    for il in range(n_layer):
        p = f"blk.{il}."
        if s["arch"] == "gpt-oss":  # convert_hf_to_gguf.py's order (gpt-oss-a-f32.gguf)
            lay = [("attn_norm", (E,)), ("attn_q", (H * D, E)), ("attn_q.bias", (H * D,)),
                   ("attn_k", (HKV * D, E)), ("attn_k.bias", (HKV * D,)),
                   ("attn_v", (HKV * D, E)), ("attn_v.bias", (HKV * D,)),
                   ("attn_output", (E, H * D)), ("attn_output.bias", (E,)),
                   ("attn_sinks", (H,)), ("post_attention_norm", (E,)),
                   ("ffn_gate_inp", (X, E)), ("ffn_gate_inp.bias", (X,)),
                   ("ffn_gate_exps", (X, F, E)), ("ffn_gate_exps.bias", (X, F)),
                   ("ffn_up_exps", (X, F, E)), ("ffn_up_exps.bias", (X, F)),
                   ("ffn_down_exps", (X, E, F)), ("ffn_down_exps.bias", (X, E))]
            out += [(p + (role if role.endswith(".bias") else role + ".weight"), role, il, shape)
                    for role, shape in lay]
            continue
        if s["arch"] == "qwen3next":  # qwen3next-a-f32.gguf's order
            out += [(p + (role if role in ("ssm_a", "ssm_dt.bias") else role + ".weight"), role,
                     il, shape) for role, shape in qwen3next_layer(s, il)]
            continue
        if s["arch"] == "minimax-m2":  # minimax-m2-a-f32.gguf: q/k norms over all heads
            lay = [("attn_norm", (E,)), ("attn_q", (H * D, E)), ("attn_k", (HKV * D, E)),
                   ("attn_v", (HKV * D, E)), ("attn_output", (E, H * D)),
                   ("attn_q_norm", (H * D,)), ("attn_k_norm", (HKV * D,)), ("ffn_norm", (E,)),
                   ("ffn_gate_inp", (X, E)), ("exp_probs_b.bias", (X,)),
                   ("ffn_gate_exps", (X, F, E)), ("ffn_up_exps", (X, F, E)),
                   ("ffn_down_exps", (X, E, F))]
            out += [(p + (role if role.endswith(".bias") else role + ".weight"), role, il, shape)
                    for role, shape in lay]
            continue
        lay = [("attn_norm", (E,)), ("attn_q", (H * D, E)), ("attn_k", (HKV * D, E)),
               ("attn_v", (HKV * D, E)), ("attn_output", (E, H * D))]
        if s["qk_norm"]:
            lay += [("attn_q_norm", (D,)), ("attn_k_norm", (D,))]
        lay.append(("ffn_norm", (E,)))
        if s["n_expert"]:
            lay += [("ffn_gate_inp", (X, E)), ("ffn_gate_exps", (X, F, E)),
                    ("ffn_up_exps", (X, F, E)), ("ffn_down_exps", (X, E, F))]
        else:
            F = s["n_ff"]
            lay += [("ffn_gate", (F, E)), ("ffn_up", (F, E)), ("ffn_down", (E, F))]
        out += [(p + role + ".weight", role, il, shape) for role, shape in lay]
    out.append(("output_norm.weight", "output_norm", -1, (E,)))
    if not s["tied"]:
        out.append(("output.weight", "output", -1, (s["n_vocab"], E)))
    return out


def qwen3next_layer(s, il):
    """(role, shape) of one qwen3next layer in convert_hf_to_gguf.py's order: the token
    mixer (Gated DeltaNet, or gated attention every attn_interval-th layer), then the MoE"""
    E, X, F, FS = s["n_embd"], s["n_expert"], s["n_ff_exp"], s["n_ff_shexp"]
    nv, dk = s["ssm_dt_rank"], s["ssm_state"]
    key_dim, value_dim = s["ssm_groups"] * dk, s["ssm_inner"]
    conv_dim = 2 * key_dim + value_dim
    ffn = [("ffn_down_exps", (X, E, F)), ("ffn_gate_exps", (X, F, E)), ("ffn_up_exps", (X, F, E)),
           ("ffn_gate_inp", (X, E)), ("ffn_down_shexp", (E, FS)), ("ffn_gate_shexp", (FS, E)),
           ("ffn_up_shexp", (FS, E)), ("ffn_gate_inp_shexp", (1, E)),
           ("post_attention_norm", (E,))]
    if (il + 1) % s["attn_interval"] != 0:
        return [("attn_norm", (E,)), ("ssm_a", (nv,)), ("ssm_conv1d", (conv_dim, s["ssm_conv"])),
                ("ssm_dt.bias", (nv,)), ("ssm_ba", (2 * nv, E)), ("attn_qkv", (conv_dim, E)),
                ("attn_gate", (value_dim, E)), ("ssm_norm", (dk,)), ("ssm_out", (E, value_dim))] + ffn
    H, HKV, D = s["n_head"], s["n_head_kv"], s["head_dim"]
    return ([("attn_norm", (E,))] + ffn +
            [("attn_k_norm", (D,)), ("attn_k", (HKV * D, E)), ("attn_output", (E, H * D)),
             ("attn_q_norm", (D,)), ("attn_q", (2 * H * D, E)), ("attn_v", (HKV * D, E))])


def nbytes_of(qtype, shape):
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    assert shape[-1] % blk == 0, (qtype, shape)
    return n // blk * size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--out")
    ap.add_argument("--mix", choices=sorted(FILE_TYPE), help="default: the shape's")
    ap.add_argument("--layers", type=int, help="keep the first N layers")
    ap.add_argument("--vocab-gguf", help="copy the tokenizer keys of this GGUF instead")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pool-mib", type=int, default=64,
                    help="random bytes per quantization type, reused across tensors")
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1),
                    help="threads writing tensor data (default min(8, CPUs))")
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    args = ap.parse_args()
    if args.list:
        for k, v in SHAPES.items():
            print(k, v)
        return 0
    if not args.shape or not args.out:
        ap.error("--shape and --out are required")

    t0 = time.time()
    s = dict(SHAPES[args.shape])
    n_layer = args.layers or s["n_layer"]
    if not 1 <= n_layer <= s["n_layer"]:
        ap.error(f"--layers must be 1..{s['n_layer']}")
    mix = args.mix or s["mix"]
    rng = np.random.default_rng(args.seed)
    arch = s["arch"]

    w = gguf.GGUFWriter(args.out, arch)
    name = s["name"] + (f"-{n_layer}l" if n_layer != s["n_layer"] else "")
    # an F16 file is what llama-quantize reads: its name stays in the quantized file
    w.add_name(f"{name} (random weights)" if mix == "f16" else f"{name} {mix.upper()} (random weights)")
    if arch in ("gpt-oss", "minimax-m2", "qwen3next"):
        w.add_type("model")
    w.add_description(f"tools/make_bench_model.py --shape {args.shape} --mix {mix} "
                      f"--layers {n_layer} --seed {args.seed}: random weights, for benchmarks")
    if arch in ("gpt-oss", "minimax-m2", "qwen3next"):
        add_keys_converter_order(w, s, n_layer, mix)
    else:
        add_keys(w, s, n_layer, mix)
    if args.vocab_gguf:
        copy_tokenizer(w, args.vocab_gguf, s["n_vocab"])
    elif s["vocab"] == "qwen3":
        copy_tokenizer(w, ROOT / "tests/fixtures/tokenizers/qwen3-vocab.gguf", s["n_vocab"])
    elif s["vocab"] == "gpt-oss":
        copy_tokenizer(w, ROOT / "tests/fixtures/tokenizers/gpt-oss-vocab.gguf", s["n_vocab"])
    else:
        synth_tokenizer(w, s["n_vocab"])
    if "template" in s and not args.vocab_gguf:  # the fixture model's chat template
        f = gguf.GGUFReader(ROOT / s["template"]).fields.get("tokenizer.chat_template")
        if f is not None:
            w.add_chat_template(f.contents())
    write_tensors(w, args, s, n_layer, mix, rng, t0)
    return 0


def add_keys_converter_order(w, s, n_layer, mix):
    """the keys convert_hf_to_gguf.py writes for gpt-oss / minimax-m2, in its order"""
    w.add_block_count(n_layer)
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    if "yarn" in s:
        y = s["yarn"]
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(y["factor"])
        w.add_rope_scaling_orig_ctx_len(y["orig_ctx"])
        w.add_rope_scaling_yarn_beta_fast(y["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(y["beta_slow"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_expert_count(s["n_expert"])
    w.add_expert_used_count(s["n_expert_used"])
    if s["arch"] == "minimax-m2":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_file_type(int(FILE_TYPE[mix]))
    if "swa" in s:
        w.add_sliding_window(s["swa"])
    w.add_expert_feed_forward_length(s["n_ff_exp"])
    if s["arch"] == "qwen3next":  # qwen3next-a-f32.gguf's keys after the expert width
        w.add_expert_shared_feed_forward_length(s["n_ff_shexp"])
        w.add_ssm_conv_kernel(s["ssm_conv"])
        w.add_ssm_state_size(s["ssm_state"])
        w.add_ssm_group_count(s["ssm_groups"])
        w.add_ssm_time_step_rank(s["ssm_dt_rank"])
        w.add_ssm_inner_size(s["ssm_inner"])
        w.add_array("qwen3next.attention.recurrent_layers",
                    [(il + 1) % s["attn_interval"] != 0 for il in range(n_layer)])
        w.add_full_attention_interval(s["attn_interval"])
    if "n_rot" in s:
        w.add_rope_dimension_count(s["n_rot"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_keys(w, s, n_layer, mix):
    arch = s["arch"]
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(n_layer)
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    if arch == "llama":
        w.add_rope_dimension_count(s["head_dim"])
        w.add_vocab_size(s["n_vocab"])
    else:
        w.add_key_length(s["head_dim"])
        w.add_value_length(s["head_dim"])
    if s["n_expert"]:
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        w.add_expert_feed_forward_length(s["n_ff_exp"])
    w.add_file_type(int(FILE_TYPE[mix]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_tensors(w, args, s, n_layer, mix, rng, t0):
    plan = []
    for tname, role, il, shape in tensor_list(s, n_layer):
        qt = tensor_type(mix, role, il, n_layer, shape[-1], s["tied"])
        nb = nbytes_of(qt, shape)
        # shape in elements, numpy order; the dtype argument is ignored when raw_dtype is set
        w.add_tensor_info(tname, shape, np.dtype(np.float32), nb, raw_dtype=qt)
        plan.append((tname, role, qt, shape, nb))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())  # tensor data starts aligned
    fout.flush()
    fd = fout.fileno()
    off = fout.tell()
    jobs = []  # (file offset, bytes-like): written by --threads threads with pwrite
    pools = Pools(args.pool_mib << 20, rng)
    for tname, role, qt, shape, nb in plan:
        if qt == Q.F32:
            if role in ("ffn_gate_inp", "ffn_gate_inp_shexp", "attn_sinks") or role.endswith(".bias"):
                a = rng.standard_normal(shape, dtype=np.float32) * TARGET_STD
            elif role == "ssm_a":  # -exp(A_log), A_log uniform in [0, log 16) as HF initializes it
                a = -np.exp(rng.uniform(0.0, np.log(16.0), shape)).astype(np.float32)
            elif role == "ssm_conv1d":  # HF's default for a 4-tap depthwise conv: U(-1/2, 1/2)
                a = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
            else:
                a = np.ones(shape, dtype=np.float32)
            assert a.nbytes == nb
            jobs.append((off, a.tobytes()))
        else:
            o = off
            for mv in pools.chunks(qt, nb):
                jobs.append((o, mv))
                o += len(mv)
        off += gguf.GGUFWriter.ggml_pad(nb, w.data_alignment)
    os.ftruncate(fd, off)  # the padding between tensors reads as zeros

    def put(job):
        o, buf = job
        mv = memoryview(buf)
        while len(mv):
            n = os.pwrite(fd, mv, o)
            mv, o = mv[n:], o + n

    with concurrent.futures.ThreadPoolExecutor(args.threads) as ex:
        for _ in ex.map(put, jobs):
            pass
    w.close()

    counts = {}
    for _, _, qt, _, nb in plan:
        c = counts.setdefault(qt.name, [0, 0])
        c[0] += 1
        c[1] += nb
    mix_s = ", ".join(f"{k} {v[0]} tensors {v[1] / 1e9:.3f} GB" for k, v in sorted(counts.items()))
    size = pathlib.Path(args.out).stat().st_size
    print(f"wrote {args.out}: {args.shape} {mix}, {n_layer} layers, {len(plan)} tensors, "
          f"{size / 1e9:.3f} GB in {time.time() - t0:.1f} s ({mix_s})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
