#!/usr/bin/env python3
"""Writes a ~1B-parameter qwen3moe-shaped GGUF with random weights, for benchmarks.

    .venv/bin/python tools/make_bench_moe.py --vocab-gguf tests/fixtures/tokenizers/qwen3-vocab.gguf \
        --out models/bench-qwen3moe-1b-f16.gguf
    build/api/tandem quantize models/bench-qwen3moe-1b-f16.gguf models/bench-qwen3moe-1b-q4_k.gguf --type q4_k

Shape (Qwen3-MoE layout, sized so 1, 2, 3 and 4 shards divide the experts evenly):
hidden 1024, 16 layers, 16 query heads x 64, 4 KV heads, 24 experts of width 512 with 4
active, vocabulary of the real Qwen3 tokenizer padded to 151936 rows (as Qwen3 checkpoints
are), untied output head. About 0.96 B parameters in all, about 0.30 B read per token.

Weights are F16 normal(0, 0.02) (norms 1.0) from a fixed seed; the tokenizer keys are copied
from a vocab-only GGUF so that llama.cpp and Tandem can both load the file.
"""
import argparse
import sys

import numpy as np
import gguf

N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM = 1024, 16, 16, 4, 64
N_EXPERT, N_EXPERT_USED, N_FF_EXP = 24, 4, 512
N_VOCAB = 151936


def copy_tokenizer(w, vocab_path):
    r = gguf.GGUFReader(vocab_path)
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "surrogateescape")
              for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    merges = [bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8", "surrogateescape")
              for i in f["tokenizer.ggml.merges"].data]
    # pad to the embedding rows the way HF checkpoints do
    for i in range(len(tokens), N_VOCAB):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, fn in (("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                    ("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                    ("tokenizer.ggml.padding_token_id", w.add_pad_token_id)):
        if key in f:
            fn(int(f[key].contents()))
    w.add_add_bos_token(False)
    if "tokenizer.chat_template" in f:
        w.add_chat_template(f["tokenizer.chat_template"].contents())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab-gguf", required=True, help="vocab-only GGUF with a Qwen3 tokenizer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)

    def rand(*shape):  # numpy shape (out, in) -> GGUF ne [in, out]
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w = gguf.GGUFWriter(args.out, "qwen3moe")
    w.add_name("bench-qwen3moe-1b")
    w.add_context_length(32768)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(3072)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer(w, args.vocab_gguf)

    ones = lambda n: np.ones(n, dtype=np.float32)
    w.add_tensor("token_embd.weight", rand(N_VOCAB, N_EMBD))
    for il in range(N_LAYER):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "attn_q.weight", rand(N_HEAD * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(p + "attn_q_norm.weight", ones(HEAD_DIM))
        w.add_tensor(p + "attn_k_norm.weight", ones(HEAD_DIM))
        w.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "ffn_gate_inp.weight", rand(N_EXPERT, N_EMBD).astype(np.float32))
        w.add_tensor(p + "ffn_gate_exps.weight", rand(N_EXPERT, N_FF_EXP, N_EMBD))
        w.add_tensor(p + "ffn_up_exps.weight", rand(N_EXPERT, N_FF_EXP, N_EMBD))
        w.add_tensor(p + "ffn_down_exps.weight", rand(N_EXPERT, N_EMBD, N_FF_EXP))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    w.add_tensor("output.weight", rand(N_VOCAB, N_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
