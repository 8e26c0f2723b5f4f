"""Speculative decoding on a hybrid Gated DeltaNet model (the qwen3next-a fixture of
tests/fixtures/hybrid): a step that carries drafts runs the sequence's recurrent state in a
spare slot and keeps its own slot as it was, so a rejected draft rolls the state back and the
accepted tokens are computed again from there (coordinator/scheduler.c, spec_rollback).

- Greedy: with --spec ngram --spec-always every request gives exactly the tokens and
  log-probabilities of --spec off, alone and four at once on two running slots (so spare
  slots run out and some steps go without drafts), on one node and on 2 shards (TP 2, the
  slots and spares on every shard). /metrics shows drafts accepted and rejected and
  accepted tokens replayed after a rollback: a scheduler that kept the state past a
  rejected draft (or never rolled back) gives other tokens.
- Sampled: the rejection-sampling law holds here too: the second and the third generated
  token (the third follows a step that may have rolled back) have the same distribution
  with and without speculation (two-sample chi-square, p-value bound 1e-4), and the third
  token after a drafted second one follows it as often.
"""
import concurrent.futures as cf

import numpy as np
import pytest

from conftest import FIXTURES, run_tandem
from dist_util import Shards
from serve_util import ServeProcess, metric_value
from test_spec import PATTERN, two_sample_p

HYBRID = FIXTURES / "hybrid"
MODEL = HYBRID / "qwen3next-a-f32.gguf"
NAME = "qwen3next-a-f32"
CTX = 256  # the fixture's context

# prompts that repeat, so the n-gram drafter finds something (all well inside the context)
PROMPTS = [PATTERN * 3, PATTERN[:7] * 6 + [3, 4], list(range(40, 90)) * 2,
           [5, 6, 7, 8] * 12 + PATTERN, [x for t in range(50) for x in (365, t, (t * 7 + 3) % 50)]]


@pytest.fixture(scope="module")
def model(tandem_bin):
    if not MODEL.exists():
        pytest.skip("hybrid fixtures missing")
    return MODEL


def complete(srv, prompt, spec, n_tokens, **kw):
    body = {"model": NAME, "prompt": prompt, "max_tokens": n_tokens, "speculative": {"mode": spec}, **kw}
    r = srv.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"]


def counts(srv):
    m = srv.metrics()
    return (metric_value(m, "tandem_spec_draft_tokens_total", drafter="ngram"),
            metric_value(m, "tandem_spec_accepted_tokens_total", drafter="ngram"),
            metric_value(m, "tandem_spec_replayed_tokens_total"))


def greedy_runs(srv):
    def run(p, spec, n):
        ch = complete(srv, p, spec, n, temperature=0, logprobs=1)[0]
        return ch["text"], ch["finish_reason"], list(zip(ch["logprobs"]["tokens"],
                                                        ch["logprobs"]["token_logprobs"]))
    cases = [(p, n) for p in PROMPTS for n in (9, 40)]
    ref = [run(p, "off", n) for p, n in cases]
    assert counts(srv)[0] == 0
    alone = [run(p, "ngram", n) for p, n in cases]
    with cf.ThreadPoolExecutor(4) as ex:
        batched = list(ex.map(lambda x: run(x[0], "ngram", x[1]), cases))
    return ref, alone, batched, counts(srv)


def same(a, b):
    assert a[0] == b[0] and a[1] == b[1], (a, b)
    assert [t for t, _ in a[2]] == [t for t, _ in b[2]]
    for (_, x), (_, y) in zip(a[2], b[2]):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)


def check_greedy(ref, alone, batched, c):
    for r, a, b in zip(ref, alone, batched):
        same(r, a)
        same(r, b)
    drafted, accepted, replayed = c
    assert 0 < accepted < drafted, c  # drafts both accepted and rejected
    assert replayed > 0, c            # and rolled back after a rejection


SPEC = ("--spec", "ngram", "--spec-always", "--spec-max", "5", "--max-running", "2")


def test_hybrid_greedy_identical_single_node(model):
    srv = ServeProcess(model, *SPEC)
    try:
        res = greedy_runs(srv)
    finally:
        srv.stop()
    check_greedy(*res)


def test_hybrid_greedy_identical_two_shards(model):
    with Shards(model, 2, tls="tcp") as sh:
        srv = ServeProcess(model, *SPEC, "--shards", sh.arg, "--tp", 2)
        try:
            res = greedy_runs(srv)
        finally:
            srv.stop()
    check_greedy(*res)


def first_top(prompt, k, tmp_path):
    """The k likeliest first tokens after prompt (tandem eval's logits, single node)."""
    out = tmp_path / "last.npy"
    run_tandem("eval", "--model", MODEL, "--tokens", ",".join(map(str, prompt)),
               "--logits-out", out, "--threads", 1)
    return [int(t) for t in np.argsort(-np.load(out)[-1], kind="stable")[:k]]


def test_hybrid_sampled_distribution_unchanged(model, tmp_path):
    # "L t s(t)" for 80 ids t, then L: a first token t1 among them has the drafter (which
    # needs two matching tokens) propose s(t1). The ids are chosen so that the first token's
    # top 4 (top_k 4 below) are among them: every request is drafted for.
    last = 365

    def build(ids):
        return [x for i, t in enumerate(ids) for x in (last, t, ids[(i * 53 + 7) % len(ids)])] + [last]
    ids = list(range(80))
    for _ in range(6):
        top = first_top(build(ids), 4, tmp_path)
        if set(top) <= set(ids):
            break
        ids = top + [t for t in ids if t not in top][:80 - len(top)]
    assert set(top) <= set(ids), (top, ids)
    prompt = build(ids)
    assert len(prompt) + 3 < CTX
    srv = ServeProcess(model, "--spec", "ngram", "--spec-always", "--spec-max", "4",
                       "--max-running", "8")
    try:
        c2, c3 = {}, {}
        for spec in ("off", "ngram"):
            a, b = {}, {}
            with cf.ThreadPoolExecutor(4) as ex:
                runs = ex.map(lambda _: complete(srv, prompt, spec, 3, temperature=1.0, top_k=4,
                                                 n=16, logprobs=1), range(24))
                for choices in runs:
                    for ch in choices:
                        toks = ch["logprobs"]["tokens"]
                        if len(toks) == 3:
                            a[toks[1]] = a.get(toks[1], 0) + 1
                            b[toks[2]] = b.get(toks[2], 0) + 1
            c2[spec], c3[spec] = a, b
        drafted, accepted, replayed = counts(srv)
    finally:
        srv.stop()
    assert drafted >= 150 and replayed > 0, (drafted, accepted, replayed)
    for c in (c2, c3):
        p, cells = two_sample_p(c["off"], c["ngram"])
        assert cells >= 2 and p > 1e-4, (p, c)
