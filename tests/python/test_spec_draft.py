"""Speculative decoding with a draft model (serve --spec draft --draft-model, coordinator/
draft_model.h): a second, smaller model of the same vocabulary drafts greedily and the
model verifies, so a request must get what it gets without speculation.

The draft model is SmolLM2-135M cut to its first 10 blocks (tools/make_draft_model.py,
written into the test's temporary directory): same vocabulary, and a poor enough guesser
(about 1 draft in 10 accepted) that rejections and the trimming of the draft model's KV
cache happen all the time. The servers run with --spec-always so every proposal is
verified whatever the cost model says; /metrics must show drafts accepted and rejected
under drafter="draft".

A draft model with another vocabulary (the llama-a fixture) is refused at start-up, and so
are `--spec draft` without a draft model and a request asking for mode "draft" from a
server that has none.
"""
import concurrent.futures as cf
import subprocess
import sys

import pytest

from conftest import FIXTURES, SOURCE_DIR
from serve_util import ServeProcess, metric_value
from test_spec import CODE, chat, same

OTHER_VOCAB = FIXTURES / "models" / "llama-a-f32.gguf"

PROMPTS = [
    ("Copy this Python code exactly, then stop:\n\n" + CODE, []),
    ("List the numbers from 1 to 30, separated by commas.", []),
    ("Repeat after me three times: the quick brown fox jumps over the lazy dog.", ["lazy"]),
    ("Copy this code:\n\n" + CODE, ["out"]),
]


@pytest.fixture(scope="module")
def draft_model(default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("draft") / "smollm2-10-blocks.gguf"
    subprocess.run([sys.executable, str(SOURCE_DIR / "tools" / "make_draft_model.py"),
                    str(default_model), str(out), "--layers", "10"], check=True, timeout=120)
    return out


def counts(srv):
    m = srv.metrics()
    return (metric_value(m, "tandem_spec_draft_tokens_total", drafter="draft"),
            metric_value(m, "tandem_spec_accepted_tokens_total", drafter="draft"))


def test_greedy_identical(default_model, draft_model):
    srv = ServeProcess(default_model, "--spec", "draft", "--draft-model", draft_model,
                       "--spec-always", "--spec-max", "5", "--max-running", "8",
                       "--ctx-size", "1024")
    try:
        cases = [(c, stop, 24) for c, stop in PROMPTS]
        cases += [(PROMPTS[0][0], [], 9), (PROMPTS[1][0], [], 13)]  # ending mid-draft
        ref = [chat(srv, c, "off", n, stop) for c, stop, n in cases]
        assert counts(srv)[0] == 0
        alone = [chat(srv, c, "draft", n, stop) for c, stop, n in cases]
        with cf.ThreadPoolExecutor(len(cases)) as ex:
            batched = list(ex.map(lambda x: chat(srv, x[0], "draft", x[2], x[1]), cases))
        # sampled requests take drafts through rejection sampling (test_spec.py checks the
        # distribution with the n-gram drafter; a draft model's greedy drafts are as
        # deterministic): here only that they run through
        d1 = counts(srv)[0]
        body = {"messages": [{"role": "user", "content": PROMPTS[0][0]}], "max_tokens": 16,
                "temperature": 0.8, "seed": 7, "speculative": {"mode": "draft"}}
        r = srv.post("/v1/chat/completions", body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 2, r.text
        assert counts(srv)[0] > d1
        drafted, accepted = counts(srv)
        rate = metric_value(srv.metrics(), "tandem_spec_acceptance_rate", drafter="draft")
    finally:
        srv.stop()
    for r, a, b in zip(ref, alone, batched):
        same(r, a)
        same(r, b)
    assert any(f == "stop" for _, f, _ in ref)  # a stop string ended some
    assert drafted > 0 and 0 < accepted < drafted, (drafted, accepted)
    assert rate == pytest.approx(accepted / drafted)


def test_same_model_as_drafter_accepts_everything(default_model):
    """The model drafting for itself must agree with itself: every draft accepted. A drafter
    whose KV fell out of step with the sequence (a position off, a rejected draft left in
    place) would propose something else and be rejected."""
    srv = ServeProcess(default_model, "--spec", "draft", "--draft-model", default_model,
                       "--spec-always", "--spec-max", "3", "--ctx-size", "1024")
    try:
        cases = [(c, stop, 12) for c, stop in PROMPTS[:2]]
        with cf.ThreadPoolExecutor(len(cases)) as ex:
            out = list(ex.map(lambda x: chat(srv, x[0], "draft", x[2], x[1]), cases))
        ref = [chat(srv, c, "off", n, stop) for c, stop, n in cases]
        drafted, accepted = counts(srv)
    finally:
        srv.stop()
    for r, o in zip(ref, out):
        same(r, o)
    assert drafted > 0 and accepted == drafted, (drafted, accepted)


def serve_fails(tandem_bin, *args):
    p = subprocess.run([str(tandem_bin), "serve", "--port", "0", "--threads", "1", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def test_other_vocabulary_refused(tandem_bin, default_model):
    if not OTHER_VOCAB.exists():
        pytest.skip("llama-a fixture missing")
    rc, err = serve_fails(tandem_bin, "--model", default_model, "--draft-model", OTHER_VOCAB,
                          "--spec", "draft")
    assert rc != 0
    assert "draft model" in err and ("vocabulary" in err or "tokenizer" in err), err


def test_draft_needs_a_draft_model(tandem_bin, default_model):
    rc, err = serve_fails(tandem_bin, "--model", default_model, "--spec", "draft")
    assert rc != 0 and "--draft-model" in err, err
    srv = ServeProcess(default_model, "--ctx-size", "512")
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                "speculative": {"mode": "draft"}}
        r = srv.post("/v1/chat/completions", body)
        assert r.status_code == 400, r.text
        assert "draft model" in r.text
        body["speculative"] = {"mode": "eagle"}
        assert srv.post("/v1/chat/completions", body).status_code == 400
    finally:
        srv.stop()
