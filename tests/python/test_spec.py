"""Speculative decoding (coordinator/spec.h): verification in the engine must not change what
a request gets.

- Greedy: every request gives exactly the tokens (and log-probabilities) it gives with
  speculation off, alone and batched with others, with stop strings and with max_tokens
  ending in the middle of a run of drafts. The servers run with --spec-always, so every
  proposal is verified whatever the cost model would say; the test also checks through
  /metrics that drafts were verified, accepted and rejected.
  SmolLM2 (chat, text prompts) and the gpt-oss-b fixture (token-id prompts; its sliding-window
  layers use the second KV pool, so rolled-back drafts there are covered too).
- Sampled: the distribution of the second generated token (the first one a draft is verified
  for) with speculation on equals the one with it off: a two-sample chi-square test over
  many choices of the fixture at temperature 1, top_k 4 (p-value bound 1e-4). A verifier
  that accepted drafts without the rejection rule fails it (the second token would follow
  the prompt's copy).
"""
import math
import concurrent.futures as cf

import pytest

from conftest import FIXTURES
from serve_util import ServeProcess

FIXTURE = FIXTURES / "models" / "gpt-oss-b-f32.gguf"
FIXTURE_NAME = "gpt-oss-b-f32"

CODE = """def parse(line):
    key, _, value = line.partition("=")
    return key.strip(), value.strip()


def load(path):
    out = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            key, value = parse(line)
            out[key] = value
    return out
"""

PROMPTS = [
    ("Copy this Python code exactly, then stop:\n\n" + CODE, []),
    ("Rewrite this code with the function `load` renamed to `read_config`:\n\n" + CODE, []),
    ("List the numbers from 1 to 30, separated by commas.", []),
    ("Write a short poem about the sea.", []),
    ("Repeat after me three times: the quick brown fox jumps over the lazy dog.", ["lazy"]),
    ("Copy this code:\n\n" + CODE, ["out"]),
]


def chat(srv, content, spec, max_tokens, stop):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "logprobs": True, "speculative": {"mode": spec}}
    if stop:
        body["stop"] = stop
    r = srv.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    lp = [(t["token"], t["logprob"]) for t in (ch.get("logprobs") or {}).get("content") or []]
    return ch["message"]["content"], ch["finish_reason"], lp


def same(a, b):
    assert a[0] == b[0] and a[1] == b[1], (a, b)
    assert [t for t, _ in a[2]] == [t for t, _ in b[2]]
    for (_, x), (_, y) in zip(a[2], b[2]):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (x, y)


def spec_counts(srv):
    m = srv.metrics()
    from serve_util import metric_value
    return (metric_value(m, "tandem_spec_draft_tokens_total", drafter="ngram"),
            metric_value(m, "tandem_spec_accepted_tokens_total", drafter="ngram"))


def test_greedy_smollm2_identical(default_model):
    srv = ServeProcess(default_model, "--spec", "ngram", "--spec-always", "--spec-max", "6",
                       "--max-running", "8")
    try:
        cases = [(c, stop, n) for (c, stop) in PROMPTS for n in (40,)]
        cases += [(PROMPTS[0][0], [], 9), (PROMPTS[1][0], [], 13)]  # ending mid-draft
        ref = [chat(srv, c, "off", n, stop) for c, stop, n in cases]
        d0, a0 = spec_counts(srv)
        assert d0 == 0
        alone = [chat(srv, c, "ngram", n, stop) for c, stop, n in cases]
        with cf.ThreadPoolExecutor(len(cases)) as ex:
            batched = list(ex.map(lambda x: chat(srv, x[0], "ngram", x[2], x[1]), cases))
        drafted, accepted = spec_counts(srv)
    finally:
        srv.stop()
    for r, a, b in zip(ref, alone, batched):
        same(r, a)
        same(r, b)
    assert any(f == "stop" for _, f, _ in ref)  # a stop string ended some
    assert drafted > 0 and 0 < accepted < drafted, (drafted, accepted)


def complete_ids(srv, prompt, spec, n_tokens, **kw):
    body = {"model": FIXTURE_NAME, "prompt": prompt, "max_tokens": n_tokens,
            "speculative": {"mode": spec}, **kw}
    r = srv.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"]


# a prompt that repeats, so the n-gram drafter always finds something
PATTERN = [(i * 37 + 11) % 370 for i in range(24)]
# the last: "L t s(t)" for every id t, then L, so whatever the first token t1 is the
# drafter (which needs two matching tokens) finds "L t1" and proposes s(t1)
FIX_PROMPTS = [PATTERN * 3, PATTERN[:7] * 6 + [3, 4], list(range(40, 90)) * 2,
               [5, 6, 7, 8] * 12 + PATTERN,
               [x for t in range(360) for x in (365, t, (t * 53 + 7) % 360)] + [365]]


@pytest.fixture(scope="module")
def fixture_model(tandem_bin):
    if not FIXTURE.exists():
        pytest.skip("gpt-oss fixtures missing")
    return FIXTURE


def test_greedy_fixture_identical_sliding_window(fixture_model):
    srv = ServeProcess(fixture_model, "--spec", "ngram", "--spec-always", "--spec-max", "5")
    try:
        def run(p, spec, n):
            ch = complete_ids(srv, p, spec, n, temperature=0, logprobs=1)[0]
            return ch["text"], ch["finish_reason"], list(zip(ch["logprobs"]["tokens"],
                                                            ch["logprobs"]["token_logprobs"]))
        cases = [(p, n) for p in FIX_PROMPTS for n in (7, 30)]
        ref = [run(p, "off", n) for p, n in cases]
        alone = [run(p, "ngram", n) for p, n in cases]
        with cf.ThreadPoolExecutor(len(cases)) as ex:
            batched = list(ex.map(lambda x: run(x[0], "ngram", x[1]), cases))
        drafted, accepted = spec_counts(srv)
    finally:
        srv.stop()
    for r, a, b in zip(ref, alone, batched):
        same(r, a)
        same(r, b)
    assert drafted > 0, drafted


def chi2_sf(x, k):
    """P(X > x) for chi-square with k degrees of freedom (regularized upper gamma, series)."""
    s, a = x / 2.0, k / 2.0
    term = total = 1.0 / a
    n = 1
    while term > 1e-15 * total and n < 10000:
        term *= s / (a + n)
        total += term
        n += 1
    lower = math.exp(a * math.log(s) - s - math.lgamma(a)) * total if s > 0 else 0.0
    return max(0.0, 1.0 - lower)


def two_sample_p(ca, cb):
    """Chi-square homogeneity test of two count dicts; rare categories pooled."""
    na, nb = sum(ca.values()), sum(cb.values())
    keys = sorted(set(ca) | set(cb))
    cells, pool = [], [0, 0]
    for k in keys:
        a, b = ca.get(k, 0), cb.get(k, 0)
        if (a + b) * min(na, nb) / (na + nb) < 5:
            pool[0] += a
            pool[1] += b
        else:
            cells.append((a, b))
    if sum(pool) > 0:
        cells.append(tuple(pool))
    x = 0.0
    for a, b in cells:
        ea, eb = (a + b) * na / (na + nb), (a + b) * nb / (na + nb)
        x += (a - ea) ** 2 / ea + (b - eb) ** 2 / eb
    return chi2_sf(x, len(cells) - 1), len(cells)


def test_sampled_distribution_unchanged(fixture_model):
    srv = ServeProcess(fixture_model, "--spec", "ngram", "--spec-always", "--spec-max", "4",
                       "--max-running", "64")
    # L t succ(t) for every id t below 360, then L: whatever the first token t1 is, the
    # drafter finds "L t1" earlier and proposes succ(t1) (it needs two matching tokens)
    last = 365
    succ = {t: (t * 53 + 7) % 360 for t in range(360)}
    prompt = [x for t in range(360) for x in (last, t, succ[t])] + [last]
    try:
        text = {}
        for t in range(360):
            r = srv.post("/detokenize", {"tokens": [t]})
            assert r.status_code == 200, r.text
            text[t] = r.json()["prompt"]
        by_text = {}
        for t, x in text.items():
            by_text.setdefault(x, []).append(t)
        counts, hits = {}, {}
        for spec in ("off", "ngram"):
            c, h = {}, [0, 0]
            with cf.ThreadPoolExecutor(4) as ex:
                runs = ex.map(lambda _: complete_ids(srv, prompt, spec, 3, temperature=1.0,
                                                     n=16, logprobs=1), range(30))
                for choices in runs:
                    for ch in choices:
                        toks = ch["logprobs"]["tokens"]
                        if len(toks) != 3:
                            continue
                        c[toks[1]] = c.get(toks[1], 0) + 1
                        ids = by_text.get(toks[0], [])
                        if len(ids) == 1 and ids[0] in succ:
                            h[0] += 1
                            h[1] += toks[1] == text[succ[ids[0]]]
            counts[spec], hits[spec] = c, h
        drafted, accepted = spec_counts(srv)
    finally:
        srv.stop()
    # the drafter must really have run; how often varies with the sampled first tokens
    # (224-320 drafts in three runs of 2026-12-07, one run of 199 under load), so the bar is
    # well below that: without drafting it is 0
    assert drafted >= 100, drafted
    # how often the second token is the draft: the same law with and without verification
    (na, ka), (nb, kb) = hits["off"], hits["ngram"]
    assert na >= 200 and nb >= 200, hits
    pool = (ka + kb) / (na + nb)
    sd = math.sqrt(max(pool * (1 - pool), 1e-9) * (1 / na + 1 / nb))
    assert abs(ka / na - kb / nb) <= 4.5 * sd + 1e-9, hits
    # and the marginal law of the second token
    p, cells = two_sample_p(counts["off"], counts["ngram"])
    assert p > 1e-4, (p, counts)


def test_cost_model_measured_before_ready(fixture_model):
    """With --spec on, the planner's step-time curve is measured while the server loads
    (crd_sched_warm_up), so the first request that drafts never waits for it: /metrics
    shows t(1) > 0 before any request. With --spec off it is measured only when a request
    asks for speculation itself, at its first drafting step."""
    prompt = FIX_PROMPTS[-1]  # the drafter proposes after whatever first token
    srv = ServeProcess(fixture_model, "--spec", "ngram")
    try:
        assert srv.metric("tandem_spec_cost_step_seconds") > 0
    finally:
        srv.stop()
    # a context shorter than the curve's longest step (256): measured within it, and a
    # drafting request is served (the steps once sat at positions past the context)
    srv = ServeProcess(fixture_model, "--spec", "ngram", "--ctx-size", "64")
    try:
        assert srv.metric("tandem_spec_cost_step_seconds") > 0
        r = srv.post("/v1/completions", {"model": FIXTURE_NAME, "prompt": PATTERN * 2,
                                         "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
    srv = ServeProcess(fixture_model, "--spec", "off")
    try:
        assert srv.metric("tandem_spec_cost_step_seconds") == 0
        r = srv.post("/v1/completions", {"model": FIXTURE_NAME, "prompt": prompt,
                                         "max_tokens": 12, "temperature": 0,
                                         "speculative": {"mode": "ngram"}})
        assert r.status_code == 200, r.text
        assert srv.metric("tandem_spec_cost_step_seconds") > 0
    finally:
        srv.stop()
