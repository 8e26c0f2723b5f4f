#!/usr/bin/env python3
"""Copies a random-weights benchmark GGUF with the output-head rows of chosen tokens set to
zero, so the model never prefers them and writes ordinary text.

    .venv/bin/python tools/mute_tokens.py models/bench-qwen3moe-1b-q4_k.gguf \
        models/bench-qwen3moe-1b-q4_k-text.gguf   # mutes every control and unused token
    .venv/bin/python tools/mute_tokens.py IN OUT --tokens 50256,50257,50258

Why: a model with random weights (tools/make_bench_moe.py, tools/make_bench_model.py) has
no notion of when an answer ends or which rows are real. After a long prompt the 1B MoE bench
model puts its control tokens (<|endoftext|>, <|im_start|>, <|im_end|>) on top at every step,
and with those muted, one of the 101,654 padding rows (type UNUSED: Qwen3 checkpoints pad the
vocabulary to 151,936 rows, and the bench file's tokenizer has 50,256 ordinary tokens), which
decode to nothing as well; so a stream carries no text and a benchmark cannot read time to first token from it; `ignore_eos`
means different things to different engines (llama.cpp bans end-of-generation tokens, vLLM
and Tandem only keep going), and Anthropic's Messages API has no such field at all. With the
rows zeroed every control and unused token's logit is exactly 0 while some ordinary token's is positive,
so both engines, through every API, generate text until max_tokens: the same work.

A zero byte block decodes to zero weights in every GGML block type (the scales are zero), so
the rows are zeroed in place whatever the tensor's type. Only files with an untied output
head (`output.weight`) are accepted: with tied embeddings the same rows are the input
embeddings of the control tokens the chat template writes. Weights other than those rows,
metadata and layout are copied unchanged (the file's size and offsets stay the same).
"""
import argparse
import shutil
import sys

import numpy as np
import gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--tokens",
                    help="comma-separated token ids (default: every control and unused token)")
    args = ap.parse_args()

    r = gguf.GGUFReader(args.src)
    out = next((t for t in r.tensors if t.name == "output.weight"), None)
    if out is None:
        sys.exit(f"{args.src}: no output.weight (tied embeddings): refusing, see --help")
    n_rows = int(out.shape[1])  # GGUF ne = [n_per_row, n_rows]
    n_per_row = int(out.shape[0])
    if args.tokens:
        ids = sorted({int(x) for x in args.tokens.split(",")})
    else:
        types = r.fields["tokenizer.ggml.token_type"]
        ids = [i for i, p in enumerate(types.data)
               if int(types.parts[p][0]) in (gguf.TokenType.CONTROL, gguf.TokenType.UNUSED)]
    if not ids:
        sys.exit("no tokens to mute")
    for t in ids:
        if not 0 <= t < n_rows:
            sys.exit(f"token {t} outside the output head's {n_rows} rows")
    block, type_size = gguf.GGML_QUANT_SIZES[out.tensor_type]
    row_bytes = n_per_row // block * type_size
    shutil.copyfile(args.src, args.dst)
    with open(args.dst, "r+b") as f:
        zero = bytes(row_bytes)
        for t in ids:
            f.seek(int(out.data_offset) + t * row_bytes)
            f.write(zero)
    # Read back through the gguf package's own dequantizer: the rows must decode to 0 and a
    # row we did not touch must be unchanged.
    chk = gguf.GGUFReader(args.dst)
    o2 = next(t for t in chk.tensors if t.name == "output.weight")
    deq = gguf.quants.dequantize(o2.data[ids], o2.tensor_type)
    if np.any(deq != 0):
        sys.exit("muted rows do not decode to zero")
    muted = set(ids)
    keep = next(i for i in range(n_rows) if i not in muted)
    if not np.array_equal(o2.data[keep], out.data[keep]):
        sys.exit("an untouched row changed")
    print(f"{args.dst}: muted {len(ids)} output rows ({out.tensor_type.name}, "
          f"{row_bytes} bytes each): {ids[:8]}{' ...' if len(ids) > 8 else ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
