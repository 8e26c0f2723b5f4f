"""`tandem serve` with a hybrid Gated DeltaNet model (the qwen3next-a fixture of
tests/fixtures/hybrid): each running request owns a recurrent-state slot next to its KV
blocks (coordinator/kv_manager.h).

Prompts are token ids through /v1/completions. The oracle is HF's greedy continuation stored
in the fixture manifest, detokenized with the fixture tokenizer:
- a 150-token prompt and a 33-token one answer HF's greedy text;
- the same prompt again resumes from the recurrent state stored at the end of its last full
  prompt block (cached_tokens) and answers the same;
- a three-turn agent conversation (each turn's prompt is the previous prompt, its answer and
  new text) reuses the previous turn's prefix from its stored state on turns 2 and 3 and
  answers as servers that computed each turn from scratch;
- four requests at once on a server that runs two at a time (--max-running 2: two state
  slots, reused as requests finish) each answer as alone.
"""
import json
import threading

import pytest

from conftest import FIXTURES
from serve_util import ServeProcess

HYBRID = FIXTURES / "hybrid"
MODEL = HYBRID / "qwen3next-a-f32.gguf"
NAME = "qwen3next-a-f32"
SPECIAL = 377  # ids from here on are the tokenizer's added tokens


def expected(seq):
    """(prompt ids, HF greedy text of the leading non-special tokens, their count)."""
    tok = pytest.importorskip("tokenizers")
    m = json.loads((HYBRID / "manifest.json").read_text())
    entry = next(e for e in m["models"] if e["file"] == MODEL.name)
    greedy = entry["expected"][seq]["greedy"]
    n = next((i for i, t in enumerate(greedy) if t >= SPECIAL), len(greedy))
    n = min(n, 12)
    assert n >= 4, (seq, greedy)
    t = tok.Tokenizer.from_file(str(FIXTURES / "models" / "tokenizer" / "tokenizer.json"))
    return m["sequences"][seq], t.decode(greedy[:n], skip_special_tokens=False), n


def complete(srv, prompt, n):
    r = srv.client().completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0)
    return r.choices[0].text, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens


@pytest.fixture(scope="module")
def server(tandem_bin):
    if not MODEL.exists():
        pytest.skip("hybrid fixtures missing")
    srv = ServeProcess(MODEL, "--max-running", 2)
    yield srv
    srv.stop()


@pytest.mark.parametrize("seq", ["s150", "s33"])
def test_hybrid_serve_matches_hf(server, seq):
    prompt, text, n = expected(seq)
    got = complete(server, prompt, n)
    assert got[0] == text and got[1] == n, (got, text)
    again = complete(server, prompt, n)
    # resumed from the state stored at the end of the last full 16-token prompt block
    assert again[2] == (len(prompt) - 1) // 16 * 16, again
    assert again[:2] == got[:2]


def test_hybrid_serve_concurrent_slots(server):
    cases = [expected(s) for s in ("s150", "s33", "s64", "s8")]
    alone = [complete(server, p, n)[:2] for p, _, n in cases]
    for (p, text, n), a in zip(cases, alone):
        assert a == (text, n)
    out = [None] * len(cases)

    def run(i):
        p, _, n = cases[i]
        out[i] = complete(server, p, n)[:2]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == alone


def test_hybrid_agent_turns_reuse_stored_states(server, tandem_bin):
    """Turn k + 1's prompt extends turn k's prompt and answer: it resumes from the state
    stored at the end of turn k's last full prompt block, computing only the rest, and its
    answer (greedy text and log-probabilities) is the one of a server that never saw the
    earlier turns."""
    m = json.loads((HYBRID / "manifest.json").read_text())
    seqs = m["sequences"]
    user = [seqs["s64"] + seqs["s8"], seqs["rep24"][:13], seqs["s33"][:21]]
    prompt, turns = [], []
    for k, extra in enumerate(user):
        prompt = prompt + extra
        r = server.client().completions.create(model=NAME, prompt=prompt, max_tokens=6,
                                               temperature=0, logprobs=1)
        ch = r.choices[0]
        turns.append((list(prompt), ch.text, ch.logprobs.token_logprobs,
                      r.usage.prompt_tokens_details.cached_tokens))
        # the answer's ids, for the next turn's prompt (the fixture tokenizer round-trips)
        tok = pytest.importorskip("tokenizers").Tokenizer.from_file(
            str(FIXTURES / "models" / "tokenizer" / "tokenizer.json"))
        prompt = prompt + tok.encode(ch.text).ids
    for k in (1, 2):
        prev_prompt_len = len(turns[k - 1][0])
        want = (prev_prompt_len - 1) // 16 * 16  # where turn k - 1 stored its state
        assert turns[k][3] == want > 0, (k, turns[k][3], want)
    for p, text, lps, _ in turns:
        fresh = ServeProcess(MODEL, "--max-running", 2)
        try:
            r = fresh.client().completions.create(model=NAME, prompt=p, max_tokens=6,
                                                  temperature=0, logprobs=1)
        finally:
            fresh.stop()
        assert r.usage.prompt_tokens_details.cached_tokens == 0
        assert r.choices[0].text == text
        got = r.choices[0].logprobs.token_logprobs
        assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(lps, got)), (lps, got)


def test_hybrid_state_cache_off(tandem_bin):
    """--state-cache 0: no stored states, so no prefix hit (a hit would need the recurrent
    state at its end); the answer is the same."""
    if not MODEL.exists():
        pytest.skip("hybrid fixtures missing")
    prompt, text, n = expected("s150")
    srv = ServeProcess(MODEL, "--max-running", 2, "--state-cache", 0)
    try:
        first = complete(srv, prompt, n)
        again = complete(srv, prompt, n)
    finally:
        srv.stop()
    assert first == (text, n, 0) and again == (text, n, 0), (first, again)


def test_hybrid_state_every_serves_shared_leading_part(tandem_bin):
    """Two prompts that share only their first 100 tokens (one system prompt, two tasks):
    by default the first stores its state at its own last full block only, which the second
    does not share (no hit); with --state-every 32 it also stores at 32, 64 and 96, and the
    second resumes at 96, answering as a cold server does."""
    if not MODEL.exists():
        pytest.skip("hybrid fixtures missing")
    seqs = json.loads((HYBRID / "manifest.json").read_text())["sequences"]
    shared = seqs["s150"][:100]
    a, b = shared + seqs["s33"][:20], shared + seqs["s64"][:20]
    cold = ServeProcess(MODEL, "--max-running", 2)
    try:
        want = complete(cold, b, 6)
    finally:
        cold.stop()
    for args, hit in (([], 0), (["--state-every", 32], 96)):
        srv = ServeProcess(MODEL, "--max-running", 2, *args)
        try:
            complete(srv, a, 6)
            got = complete(srv, b, 6)
        finally:
            srv.stop()
        assert got[2] == hit, (args, got)
        assert got[:2] == want[:2], (args, got, want)
