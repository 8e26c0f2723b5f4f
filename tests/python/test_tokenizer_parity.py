"""Tokenizer parity: `tandem tokenize` against independent tokenizers on a 2,955-string corpus.

Oracles:
  * Hugging Face `tokenizers` for the Qwen3 and gpt-oss fixtures. The fixtures are vocab-only
    GGUFs written by tools/convert_tokenizer.py (truncated to their first 50,000 merges, see
    tests/fixtures/tokenizers/README.md); the HF tokenizer is rebuilt at test time from the
    same GGUF's tokens and merges plus the original tokenizer.json's remaining settings
    (normalizer, pre-tokenizer regex, model options, added tokens) kept in *-hf-skeleton.json.
  * llama.cpp for the real SmolLM2 GGUF: ids recorded once with llama-cpp-python
    (tests/fixtures/tokenizers/smollm2-expected.jsonl) and, when llama_cpp is importable,
    also computed live.

Qwen3's tokenizer.json has an NFC normalizer; Tandem applies it too (tokenizer.ggml.normalizer
= "nfc", written by the converter; the default for pre qwen2), so Qwen3 must match HF with its
real normalizer on every string.

One deliberate, documented difference from HF (coordinator/tokenizer/README.md):
  * Which added tokens user text may produce (parse_special off) follows the GGUF token type
    (USER_DEFINED), as in llama.cpp; HF uses its own `special` flag, which llama.cpp's converter
    overrides for texts that look special (<|fim_prefix|> ...). The HF oracle is given the
    GGUF's classification for that mode.
decode(encode(x)) == x (== NFC(x) for an NFC vocabulary, as in HF) is checked for every
string, for both the whole-sequence and the streaming decoder.
"""
import hashlib
import json
import subprocess
import sys
import unicodedata

import pytest

from conftest import DEFAULT_MODEL, FIXTURES, SOURCE_DIR, run_tandem

TOKDIR = FIXTURES / "tokenizers"
CORPUS = TOKDIR / "corpus.jsonl"
CONTROL = 3


def load_corpus():
    raw = CORPUS.read_bytes()
    return [json.loads(line)["text"] for line in raw.split(b"\n") if line]


def tandem_tokenize(model, texts, *flags):
    inp = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    proc = run_tandem("tokenize", "--model", model, "--jsonl", "-", "--decode", *flags,
                      input=inp)
    out = [json.loads(line) for line in proc.stdout.split("\n") if line]
    assert len(out) == len(texts)
    for o in out:
        assert "error" not in o, o
    return out


def hf_from_fixture(name, *, special_from_types):
    gguf = pytest.importorskip("gguf")
    tokenizers = pytest.importorskip("tokenizers")
    r = gguf.GGUFReader(str(TOKDIR / f"{name}-vocab.gguf"))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    skel = json.loads((TOKDIR / f"{name}-hf-skeleton.json").read_text(encoding="utf-8"))
    added = {t["id"] for t in skel["added_tokens"]}
    skel["model"]["vocab"] = {t: i for i, t in enumerate(tokens) if i not in added}
    skel["model"]["merges"] = [m.split(" ", 1) for m in merges]
    if special_from_types:
        for t in skel["added_tokens"]:
            t["special"] = types[t["id"]] == CONTROL
    return tokenizers.Tokenizer.from_str(json.dumps(skel))


def hf_ids(tok, texts, parse_special):
    tok.encode_special_tokens = not parse_special
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def check_roundtrip(texts, got, label, nfc=False):
    want = [unicodedata.normalize("NFC", t) if nfc else t for t in texts]
    bad = [t for t, w, g in zip(texts, want, got) if g["decoded"] != w or g["stream"] != w]
    what = "NFC(x)" if nfc else "x"
    assert not bad, f"{label}: decode(encode(x)) != {what} for {len(bad)} strings, " \
                    f"e.g. {bad[:3]!r}"


def report(label, n, mismatches, extra=""):
    print(f"\n[tokenizer parity] {label}: {n} strings, {mismatches} mismatches{extra}",
          file=sys.stderr)


def test_corpus_is_reproducible_and_large_enough(tmp_path):
    out = tmp_path / "corpus.jsonl"
    subprocess.run([sys.executable, str(SOURCE_DIR / "tools" / "make_tokenizer_corpus.py"),
                    "-o", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == CORPUS.read_bytes(), \
        "corpus.jsonl differs from what tools/make_tokenizer_corpus.py generates"
    texts = load_corpus()
    assert len(texts) >= 2000
    assert "" in texts
    assert max(len(t.encode()) for t in texts) >= 100 * 1024


@pytest.mark.parametrize("name", ["qwen3", "gpt-oss"])
@pytest.mark.parametrize("parse_special", [False, True], ids=["user", "special"])
def test_hf_parity(tandem_bin, name, parse_special):
    texts = load_corpus()
    hf = hf_from_fixture(name, special_from_types=not parse_special)
    want = hf_ids(hf, texts, parse_special)
    flags = ["--parse-special", "--render-special"] if parse_special else []
    got = tandem_tokenize(TOKDIR / f"{name}-vocab.gguf", texts, *flags)
    has_nfc = (hf_skeleton_normalizer(name) or {}).get("type") == "NFC"
    nfc_changed = sum(unicodedata.normalize("NFC", t) != t for t in texts) if has_nfc else 0
    mismatches = [(t, w, g["ids"]) for t, w, g in zip(texts, want, got) if g["ids"] != w]
    report(f"{name} vs HF tokenizers ({'parse_special' if parse_special else 'user text'})",
           len(texts), len(mismatches),
           f"; {nfc_changed} strings changed by NFC" if has_nfc else "")
    assert not mismatches, "\n".join(f"{t[:60]!r}\n  hf     {w[:24]}\n  tandem {g[:24]}"
                                     for t, w, g in mismatches[:5])
    check_roundtrip(texts, got, name, nfc=has_nfc)


# NFC next to added tokens: HF matches added tokens (normalized: false in Qwen3) on the raw
# text and normalizes only the pieces between them, so '>' + U+0338 (which NFC composes to
# U+226F) stays split when the '>' ends <think> or <|im_end|>.
NFC_SPECIAL_CASES = [
    "<think>\u0338",
    "e\u0301<think>e\u0301",
    "<|im_start|>\u0301x<|im_end|>\u0338",
    "a>\u0338<|im_end|>",
    "\u0301<|endoftext|>\u0301\u0301",
    "A\u030a\u0301 \uac00\u11a8 <tool_call>\u1100\u1161\u11a8</tool_call>",
    "\u212b\u2126 e\u0327\u0301 q\u0307\u0323",
]


@pytest.mark.parametrize("parse_special", [False, True], ids=["user", "special"])
def test_nfc_around_special_tokens(tandem_bin, parse_special):
    texts = NFC_SPECIAL_CASES
    assert sum(unicodedata.normalize("NFC", t) != t for t in texts) >= len(texts) - 1
    hf = hf_from_fixture("qwen3", special_from_types=not parse_special)
    want = hf_ids(hf, texts, parse_special)
    flags = ["--parse-special", "--render-special"] if parse_special else []
    got = tandem_tokenize(TOKDIR / "qwen3-vocab.gguf", texts, *flags)
    for t, w, g in zip(texts, want, got):
        assert g["ids"] == w, f"{t!r}: hf {w}, tandem {g['ids']}"
    # the test strings do exercise the raw-text matching: NFC of the whole string differs
    whole = hf_ids(hf, [unicodedata.normalize("NFC", texts[0])], parse_special)[0]
    assert whole != want[0]


def hf_skeleton_normalizer(name):
    skel = json.loads((TOKDIR / f"{name}-hf-skeleton.json").read_text(encoding="utf-8"))
    return skel.get("normalizer")


def smollm2_model():
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"SmolLM2 GGUF missing at {DEFAULT_MODEL}: run tools/setup.sh")
    return DEFAULT_MODEL


@pytest.mark.parametrize("parse_special", [False, True], ids=["user", "special"])
def test_smollm2_recorded_llama_cpp_parity(tandem_bin, parse_special):
    model = smollm2_model()
    lines = (TOKDIR / "smollm2-expected.jsonl").read_text(encoding="utf-8").split("\n")
    header = json.loads(lines[0])
    assert header["corpus_sha256"] == hashlib.sha256(CORPUS.read_bytes()).hexdigest(), \
        "smollm2-expected.jsonl is stale: rerun tools/make_tokenizer_corpus.py --llama-expected"
    expected = [json.loads(line) for line in lines[1:] if line]
    texts = load_corpus()
    assert len(expected) == len(texts)
    flags = ["--parse-special", "--render-special"] if parse_special else []
    got = tandem_tokenize(model, texts, *flags)
    key = "ids_special" if parse_special else "ids"
    bad = [(t, e[key], g["ids"]) for t, e, g in zip(texts, expected, got) if e[key] != g["ids"]]
    report(f"SmolLM2 vs recorded llama.cpp ({key})", len(texts), len(bad))
    assert not bad, "\n".join(f"{t[:60]!r}\n  llama.cpp {w[:24]}\n  tandem    {g[:24]}"
                              for t, w, g in bad[:5])
    check_roundtrip(texts, got, "smollm2")


def test_smollm2_live_llama_cpp_parity(tandem_bin):
    model = smollm2_model()
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    texts = load_corpus()
    for parse_special in (False, True):
        flags = ["--parse-special"] if parse_special else []
        got = tandem_tokenize(model, texts, *flags)
        bad = [t for t, g in zip(texts, got)
               if llm.tokenize(t.encode(), add_bos=False, special=parse_special) != g["ids"]]
        report(f"SmolLM2 vs live llama.cpp (special={parse_special})", len(texts), len(bad))
        assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"


def test_fixture_metadata(tandem_bin):
    """The fixtures carry what the converter promised: pre, special ids, EOG set."""
    for name, pre, eog_texts in (("qwen3", "qwen2", {"<|endoftext|>", "<|im_end|>"}),
                                 ("gpt-oss", "gpt-4o",
                                  {"<|endoftext|>", "<|return|>", "<|call|>"})):
        path = TOKDIR / f"{name}-vocab.gguf"
        assert path.stat().st_size < 2_500_000, f"{path} grew past the fixture budget"
        info = json.loads(run_tandem("tokenize", "--model", path, "--info").stdout)
        assert info["pre"] == pre
        assert info["normalizer"] == ("nfc" if name == "qwen3" else "none")
        gguf = pytest.importorskip("gguf")
        tokens = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents()
        assert {tokens[i] for i in info["eog"]} == eog_texts
        assert info["add_bos"] is False


def test_chat_markup_with_special_parsing(tandem_bin):
    path = TOKDIR / "qwen3-vocab.gguf"
    gguf = pytest.importorskip("gguf")
    tokens = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents()
    ids = {t: i for i, t in enumerate(tokens)}
    text = "<|im_start|>user\nhi<|im_end|>"
    got = json.loads(run_tandem("tokenize", "--model", path, "--parse-special",
                                "--text", text).stdout)["ids"]
    assert got[0] == ids["<|im_start|>"] and got[-1] == ids["<|im_end|>"]
    plain = json.loads(run_tandem("tokenize", "--model", path, "--text", text).stdout)["ids"]
    assert ids["<|im_start|>"] not in plain and ids["<|im_end|>"] not in plain


def test_bad_inputs_fail_cleanly(tandem_bin, tmp_path):
    # unknown pre-tokenizer: a clear error naming it, no crash
    gguf = pytest.importorskip("gguf")
    bad = tmp_path / "bad-pre.gguf"
    w = gguf.GGUFWriter(str(bad), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("no-such-pre")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = run_tandem("tokenize", "--model", bad, "--text", "ab", check=False)
    assert proc.returncode == 1
    assert "no-such-pre" in proc.stderr
    # detokenizing an out-of-range id is an error line, not a crash
    proc = run_tandem("tokenize", "--model", TOKDIR / "qwen3-vocab.gguf", "--detokenize", "-",
                      input='{"ids": [1, 99999999]}\n{"ids": [9707]}\nnot json\n', check=False)
    lines = [json.loads(x) for x in proc.stdout.split("\n") if x]
    assert proc.returncode == 1
    assert "error" in lines[0] and "text" in lines[1] and "error" in lines[2]
