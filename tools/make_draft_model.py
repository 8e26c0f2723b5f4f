#!/usr/bin/env python3
"""Writes a draft model for speculative decoding (serve --spec draft --draft-model) by
keeping the first N transformer blocks of a GGUF model: same vocabulary, tokenizer,
embeddings, output norm and head, fewer layers. The blocks are copied byte for byte (any
quantization), <arch>.block_count is set to N, every other key is kept.

A truncated model is a cheap stand-in for a small sibling model (SmolLM2-135M has no
smaller sibling): its greedy choice agrees with the full model's often enough to make
real drafts, and disagrees often enough that rejections happen.

    tools/make_draft_model.py models/SmolLM2-135M-Instruct.Q4_1.gguf --layers 10 out.gguf
"""
import argparse
import re
import sys

import gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, required=True, help="blocks to keep (from the first)")
    a = ap.parse_args()

    r = gguf.GGUFReader(a.model)
    arch = r.fields["general.architecture"].contents()
    key = f"{arch}.block_count"
    n_layer = int(r.fields[key].contents())
    if not 1 <= a.layers <= n_layer:
        sys.exit(f"--layers must be in [1, {n_layer}]")
    w = gguf.GGUFWriter(a.out, arch=arch, use_temp_file=False)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vt = f.types[0]
        sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        val = a.layers if f.name == key else f.contents()
        w.add_key_value(f.name, val, vt, sub_type=sub)
    block = re.compile(r"^blk\.(\d+)\.")
    kept = [t for t in r.tensors
            if not block.match(t.name) or int(block.match(t.name).group(1)) < a.layers]
    for t in kept:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in kept:
        w.write_tensor_data(t.data)
    w.close()


if __name__ == "__main__":
    main()
