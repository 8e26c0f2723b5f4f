"""The scripted tiny models in tests/fixtures/scripted (made by
tools/fixtures/make_scripted_models.py) driven through `tandem generate`.

Each model is a one-layer llama whose weights make the next token a function of the current one,
so through the chat template it deterministically writes a known assistant message (reasoning,
a Hermes JSON or Qwen3-Coder XML tool call, or plain content). Oracles: scripted.json, whose
prompt ids, generated text and ids the generator checked against HF transformers (greedy
generate on the same weights and the HF tokenizer + jinja rendering) and llama.cpp.
"""
import hashlib
import json

import pytest

from conftest import FIXTURES, run_tandem

DIR = FIXTURES / "scripted"
SCRIPTED = DIR / "scripted.json"


def load():
    return json.loads(SCRIPTED.read_text())


def cases():
    if not SCRIPTED.exists():
        return []
    return [pytest.param(m, c, id=f"{m['file'][:-5]}-{c['name']}") for m in load()["models"] for c in m["cases"]]


def generate(tmp_path, model, case, *extra):
    ids_out = tmp_path / "ids.json"
    args = ["generate", "--model", DIR / model["file"], "--chat", case["messages"][-1]["content"],
            "--max-tokens", "32", "--ids-out", ids_out, *extra]
    if case["template_kwargs"]:
        args += ["--template-kwargs", json.dumps(case["template_kwargs"])]
    proc = run_tandem(*args)
    return proc.stdout, json.loads(ids_out.read_text())


def test_files_match_manifest():
    doc = load()
    assert {p.name for p in DIR.iterdir()} == {m["file"] for m in doc["models"]} | {"scripted.json"}
    for m in doc["models"]:
        data = (DIR / m["file"]).read_bytes()
        assert len(data) == m["size_bytes"] and hashlib.sha256(data).hexdigest() == m["sha256"], m["file"]
        assert len(data) < 1 << 20


@pytest.mark.parametrize("model,case", cases())
def test_greedy_script(tandem_bin, tmp_path, model, case):
    out, ids = generate(tmp_path, model, case, "--greedy")
    assert ids["prompt_ids"] == case["prompt_ids"], "template rendering or tokenization differs from HF"
    assert ids["prompt_ids"][-1] == case["prompt_last_token"]["id"]
    assert ids["ids"] == case["ids"]
    assert ids["finish_reason"] == case["finish_reason"] == "stop"
    # the stop token (<|im_end|>) is not printed; generate ends its output with a newline
    assert out == case["text"] + "\n"


@pytest.mark.parametrize("model,case", cases())
def test_sampling_follows_script(tandem_bin, tmp_path, model, case):
    # successor logit +20, every other token -10: ordinary sampling gives the script too
    out, ids = generate(tmp_path, model, case, "--temperature", "1.0", "--top-k", "0", "--seed", "7")
    assert ids["ids"] == case["ids"]
    assert out == case["text"] + "\n"


def test_ignore_eos_repeats_eos(tandem_bin, tmp_path):
    # every token that is not a state of the chain (<|im_end|> included) is followed by <|im_end|>
    doc = load()
    model = next(m for m in doc["models"] if m["file"] == "scripted-content.gguf")
    case = model["cases"][0]
    out, ids = generate(tmp_path, model, case, "--greedy", "--ignore-eos")
    eos = doc["special_ids"]["eos"]
    assert ids["ids"] == case["ids"] + [eos] * (32 - len(case["ids"]))
    assert ids["finish_reason"] == "length"
    assert out.startswith(case["text"])
