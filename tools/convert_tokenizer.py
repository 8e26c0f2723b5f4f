#!/usr/bin/env python3
"""Convert a Hugging Face byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json)
into a vocab-only GGUF with the tokenizer.* keys llama.cpp uses.

    convert_tokenizer.py TOKENIZER_JSON --pre qwen2 -o qwen3-vocab.gguf \
        [--config tokenizer_config.json] [--bos TEXT] [--eos TEXT] [--pad TEXT] \
        [--max-merges N] [--hf-skeleton OUT.json] [--name NAME]

Token types follow llama.cpp's converter (convert_hf_to_gguf.py, get_vocab_base): vocabulary
entries are NORMAL (1); an added token is CONTROL (3) when tokenizer.json marks it special
or its text looks special (<|...|>, <｜...｜>, <pad>, <mask>, ...), else USER_DEFINED (4);
ids with no token become "[PAD<id>]" UNUSED (5). An NFC normalizer in tokenizer.json (alone
or inside a Sequence) is recorded as tokenizer.ggml.normalizer = "nfc", a Tandem key.

--max-merges N keeps a smaller but self-consistent tokenizer for test fixtures: the first N
merges, the tokens they need or produce, the 256 byte tokens, and every added token. Ids
are renumbered densely in original order (added tokens follow the vocabulary). The result
is a different, smaller tokenizer, so tests compare it with HF tokenizers running the
*same* truncated vocabulary: --hf-skeleton writes tokenizer.json without vocab and merges
(normalizer, pre-tokenizer, model options and added tokens, with the new ids); a test
rebuilds the HF tokenizer from the skeleton plus the GGUF's tokens and merges.
"""
import argparse
import json
import pathlib
import sys

import gguf

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def looks_special(text):
    """llama.cpp's does_token_look_special."""
    if text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]"):
        return True
    if text.startswith("<|") and text.endswith("|>"):
        return True
    if text.startswith("<\uff5c") and text.endswith("\uff5c>"):
        return True
    return text.startswith("<unused") and text.endswith(">")


def bytes_to_unicode():
    """GPT-2 byte stand-ins: printable bytes keep their value, the rest count from U+0100."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def merge_parts(m):
    if isinstance(m, list):
        a, b = m
    else:
        a, b = m.split(" ", 1)
    if " " in a or " " in b or not a or not b:
        raise SystemExit(f"merge {m!r} cannot be written as 'A B'")
    return a, b


def token_text(cfg_value):
    """tokenizer_config values may be a string or an AddedToken dict."""
    if cfg_value is None:
        return None
    if isinstance(cfg_value, dict):
        return cfg_value.get("content")
    return cfg_value


def is_nfc_normalizer(norm):
    """True when tokenizer.json's normalizer is NFC, alone or inside a Sequence."""
    if not norm:
        return False
    if norm.get("type") == "NFC":
        return True
    if norm.get("type") == "Sequence":
        return any(is_nfc_normalizer(n) for n in norm.get("normalizers", []))
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer_json", type=pathlib.Path)
    ap.add_argument("--config", type=pathlib.Path,
                    help="tokenizer_config.json (default: next to tokenizer.json)")
    ap.add_argument("--pre", required=True, help="tokenizer.ggml.pre (qwen2, gpt-4o, ...)")
    ap.add_argument("-o", "--out", type=pathlib.Path, required=True)
    ap.add_argument("--arch", default="llama", help="general.architecture to record")
    ap.add_argument("--name", default=None, help="general.name")
    ap.add_argument("--bos", help="BOS token text (overrides tokenizer_config)")
    ap.add_argument("--eos", help="EOS token text (overrides tokenizer_config)")
    ap.add_argument("--pad", help="padding token text (overrides tokenizer_config)")
    ap.add_argument("--eot", help="end-of-turn token text")
    ap.add_argument("--max-merges", type=int, default=None)
    ap.add_argument("--hf-skeleton", type=pathlib.Path)
    args = ap.parse_args()

    tj = json.loads(args.tokenizer_json.read_text(encoding="utf-8"))
    cfg_path = args.config or args.tokenizer_json.with_name("tokenizer_config.json")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    model = tj["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"model type {model.get('type')!r} is not BPE")
    if model.get("byte_fallback"):
        raise SystemExit("byte_fallback BPE (SentencePiece-style) is not byte-level BPE")

    vocab = model["vocab"]  # text -> id
    merges = [merge_parts(m) for m in model["merges"]]
    added = sorted(tj.get("added_tokens", []), key=lambda t: t["id"])

    # --- choose the tokens to keep ---------------------------------------------------------
    if args.max_merges is not None:
        merges = merges[: args.max_merges]
        keep = set(bytes_to_unicode().values())
        for a, b in merges:
            keep.update((a, b, a + b))
        missing = [t for t in keep if t not in vocab]
        if missing:
            raise SystemExit(f"{len(missing)} merge tokens are not in the vocabulary, "
                             f"e.g. {missing[:3]}")
        base = sorted(keep, key=lambda t: vocab[t])
    else:
        base = sorted(vocab, key=lambda t: vocab[t])
    added_texts = {t["content"] for t in added}

    tokens, types = [], []
    if args.max_merges is not None:
        for t in base:
            tokens.append(t)
            types.append(NORMAL)
        new_id = {t: i for i, t in enumerate(tokens)}
        for t in added:
            if t["content"] in new_id:
                continue
            new_id[t["content"]] = len(tokens)
            tokens.append(t["content"])
            types.append(CONTROL if (t["special"] or looks_special(t["content"])) else USER_DEFINED)
    else:
        by_id = {i: t for t, i in vocab.items()}
        added_by_id = {t["id"]: t for t in added}
        n = max(list(by_id) + list(added_by_id)) + 1
        for i in range(n):
            if i in added_by_id:
                t = added_by_id[i]
                tokens.append(t["content"])
                types.append(CONTROL if (t["special"] or looks_special(t["content"]))
                              else USER_DEFINED)
            elif i in by_id:
                tokens.append(by_id[i])
                types.append(NORMAL)
            else:
                tokens.append(f"[PAD{i}]")
                types.append(UNUSED)
        new_id = {}
        for i, t in enumerate(tokens):
            new_id.setdefault(t, i)

    def id_of(text, what):
        if text is None:
            return None
        if text not in new_id:
            raise SystemExit(f"{what} token {text!r} is not in the vocabulary")
        return new_id[text]

    bos = id_of(args.bos or token_text(cfg.get("bos_token")), "bos")
    eos = id_of(args.eos or token_text(cfg.get("eos_token")), "eos")
    pad = id_of(args.pad or token_text(cfg.get("pad_token")), "pad")
    eot = id_of(args.eot, "eot")
    add_bos = bool(cfg.get("add_bos_token", False))
    add_eos = bool(cfg.get("add_eos_token", False))

    # --- write ---------------------------------------------------------------------------
    args.out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(args.out), args.arch)
    w.add_name(args.name or args.out.stem)
    if args.max_merges is not None:
        w.add_description(f"vocab-only test fixture from {args.tokenizer_json.parent.name}: "
                          f"first {len(merges)} merges, {len(tokens)} tokens (ids renumbered)")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(args.pre)
    if is_nfc_normalizer(tj.get("normalizer")):
        # Tandem's own key (GGUF has none): the tokenizer NFC-normalizes text between
        # special tokens before pre-tokenization (coordinator/tokenizer/README.md).
        w.add_string("tokenizer.ggml.normalizer", "nfc")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    for setter, v in ((w.add_bos_token_id, bos), (w.add_eos_token_id, eos),
                      (w.add_pad_token_id, pad), (w.add_eot_token_id, eot)):
        if v is not None:
            setter(v)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": ..., "template": ...}]
        named = {t["name"]: t["template"] for t in tmpl}
        tmpl = named.get("default")
    if tmpl:
        w.add_chat_template(tmpl)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if args.hf_skeleton:
        skel = {k: v for k, v in tj.items() if k != "model"}
        skel["model"] = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
        skel["added_tokens"] = [dict(t, id=new_id[t["content"]]) for t in added
                                if t["content"] in new_id]
        args.hf_skeleton.write_text(json.dumps(skel, ensure_ascii=False, indent=1) + "\n",
                                    encoding="utf-8")

    print(f"{args.out}: {len(tokens)} tokens ({sum(t != NORMAL for t in types)} non-normal), "
          f"{len(merges)} merges, pre {args.pre}, bos {bos}, eos {eos}, pad {pad}, "
          f"{args.out.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
