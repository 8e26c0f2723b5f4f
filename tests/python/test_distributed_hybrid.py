"""The hybrid Gated DeltaNet models (qwen3next, qwen35moe; tests/fixtures/hybrid) on `tandem
shard` processes on this machine, against single-node Tandem (itself checked against HF in
test_forward_hybrid.py).

Every sequence's recurrent-state slot, and the stored states a prefix hit loads or a cached
prefix saves, travel in the STEP message; each shard keeps its heads' share of every slot.
- Exactness: four prompts of 150, 33, 64 and 8 tokens at once, prefilled in chunks of 40
  (the state carried across steps), then 8 greedy tokens each, through 2, 3 and 4 shards: TP
  over the DeltaNet heads (grouped v heads, a k head shared by neighbouring ranks; tiled v
  heads, each rank with the k heads its v heads read) and the attention heads, EP over the
  experts, and TP x EP on 4. Same greedy tokens, logits within 1e-5 relative L2 per
  position (measured <= 4.4e-6: the order of the all-reduces' sums).
- Serving on 2 shards (TP 2): a three-turn agent conversation resumes turns 2 and 3 from the
  states stored on the shards (cached_tokens) and answers as a single-node server that
  computed each turn from scratch; four requests on two state slots (--max-running 2), one
  of them cancelled mid-stream, so slots are freed and reused on every shard; each answer
  equals its single-node answer.
"""
import json
import threading

import httpx2 as httpx
import numpy as np
import pytest

from conftest import FIXTURES, run_tandem
from dist_util import Shards
from serve_util import ServeProcess

HYBRID = FIXTURES / "hybrid"


def _seqs():
    m = HYBRID / "manifest.json"
    if not m.exists():
        pytest.skip("hybrid fixtures missing: run tools/fixtures/make_hybrid_models.py")
    return json.loads(m.read_text())["sequences"]


def _eval(model, *extra, tmp_path, name):
    s = _seqs()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(",".join(map(str, s[k])) + "\n" for k in ("s150", "s33", "s64", "s8")))
    out = tmp_path / f"{name}.npy"
    proc = run_tandem("eval", "--model", model, "--prompts-file", prompts, "--greedy", 8,
                      "--threads", 1, "--chunk", 40, "--logits-out", out, *extra, timeout=300)
    res = json.loads(proc.stdout)
    return [q["greedy"] for q in res["sequences"]], np.load(out), res


# (fixture, shards, transport, split): qwen3next-a / qwen35moe-a have 2 k and 4 v heads and
# experts 32 wide (no TP 3: the expert width does not split); the -b fixtures 3 k / 3 v
# (qwen3next) and 1 k / 3 v (qwen35moe) heads, experts 24 wide
CASES = [
    ("qwen3next-a", 2, "tcp", ["--tp", "2"]),
    ("qwen3next-a", 3, "tcp", ["--ep", "3"]),
    ("qwen3next-b", 2, "sm", ["--tp", "2"]),
    ("qwen3next-b", 3, "tcp", ["--tp", "3"]),
    ("qwen35moe-a", 2, "tcp", ["--tp", "2"]),
    ("qwen35moe-a", 3, "sm", ["--ep", "3"]),
    ("qwen35moe-b", 3, "tcp", ["--tp", "3"]),
    ("qwen35moe-b", 2, "tcp", ["--ep", "2"]),
    # one v head per rank: tiled, each rank reads one k head (0, 1, 0, 1); grouped, pairs
    # of ranks share one; and TP x EP
    ("qwen35moe-a", 4, "tcp", ["--tp", "4"]),
    ("qwen3next-a", 4, "tcp", ["--tp", "2", "--ep", "2"]),
    # Q8_0: the shared expert's 64 columns in 32-column blocks (EP 3: the third shard holds
    # none of it; TP is refused there: its experts are 32 wide, one block)
    ("qwen3next-a-q8_0", 3, "tcp", ["--ep", "3"]),
]


@pytest.mark.parametrize("cfg,n,tls,extra", CASES,
                         ids=[f"{c}-{n}x-{t}{''.join(e)}" for c, n, t, e in CASES])
def test_hybrid_shards_match_single_node(tandem_bin, tmp_path, cfg, n, tls, extra):
    path = HYBRID / (f"{cfg}.gguf" if cfg.endswith("q8_0") else f"{cfg}-f32.gguf")
    g1, l1, _ = _eval(path, tmp_path=tmp_path, name="single")
    with Shards(path, n, tls=tls) as sh:
        gd, ld, res = _eval(path, "--shards", sh.arg, *extra, tmp_path=tmp_path, name="dist")
    assert (res["tp"] * res["ep"]) == n, res
    rel = np.linalg.norm(ld - l1, axis=1) / np.linalg.norm(l1, axis=1)
    assert rel.max() <= 1e-5, f"max relative L2 {rel.max():.3g}"
    assert gd == g1
    print(f"{cfg} x{n} {tls} {' '.join(extra)}: max relative L2 {rel.max():.3g}")


def test_hybrid_tp_plan_splits_heads(tandem_bin):
    """`tandem plan` splits the DeltaNet heads over TP as the loader does: each shard's
    recurrent state is its v heads' matrices and its channels' conv inputs."""
    _seqs()
    m = json.loads((HYBRID / "manifest.json").read_text())
    hp = next(e for e in m["models"] if e["config"] == "qwen3next-b")["hparams"]
    model = HYBRID / "qwen3next-b-f32.gguf"
    p = json.loads(run_tandem("plan", "--model", model, "--shards", 2, "--tp", 2, "--device", "cpu",
                              "--json").stdout)
    one = json.loads(run_tandem("plan", "--model", model, "--shards", 1, "--device", "cpu",
                                "--json").stdout)
    d, conv, n_rec = hp["lin_head_dim"], hp["conv"], p["gdn_layers"]
    slots = p["n_state_slots"] + p["n_state_store"]
    assert hp["lin_k_heads"] == hp["lin_v_heads"] == 3  # rank 0 holds 2 of each, rank 1 one

    def state(v):
        return n_rec * 4 * slots * ((conv - 1) * 3 * v * d + v * d * d)
    assert [s["state"] for s in p["shards"]] == [state(2), state(1)]
    assert one["shards"][0]["state"] == state(3)


def _complete(srv, prompt, n, **kw):
    r = srv.client().completions.create(model="qwen3next-a-f32", prompt=prompt, max_tokens=n, temperature=0,
                                        **kw)
    return r


def _agent_turns(srv, tok, user):
    """An agent conversation: each turn appends the next user tokens to the previous prompt
    and answer; per turn (text, token logprobs, cached prompt tokens, prompt length)."""
    prompt, out = [], []
    for extra in user:
        prompt = prompt + extra
        r = _complete(srv, prompt, 6, logprobs=1)
        ch = r.choices[0]
        out.append((ch.text, ch.logprobs.token_logprobs,
                    r.usage.prompt_tokens_details.cached_tokens, len(prompt)))
        prompt = prompt + tok.encode(ch.text).ids
    return out


def test_hybrid_serve_on_shards_stores_states_and_frees_slots(tandem_bin):
    seqs = _seqs()
    model = HYBRID / "qwen3next-a-f32.gguf"
    tok = pytest.importorskip("tokenizers").Tokenizer.from_file(
        str(FIXTURES / "models" / "tokenizer" / "tokenizer.json"))
    user = [seqs["s64"] + seqs["s8"], seqs["rep24"][:13], seqs["s33"][:21]]
    cases = [seqs[k] for k in ("s150", "s33", "s64", "s8")]

    def turns_of(srv):
        return _agent_turns(srv, tok, user)

    ref = ServeProcess(model, "--max-running", 2)
    try:
        want_turns = turns_of(ref)
        want_alone = [_complete(ref, p, 6).choices[0].text for p in cases]
    finally:
        ref.stop()

    with Shards(model, 2, tls="tcp") as sh:
        srv = ServeProcess(model, "--max-running", 2, "--shards", sh.arg, "--tp", 2)
        try:
            got_turns = turns_of(srv)
            # a streamed request dropped after its first tokens: its slot must come back
            with httpx.Client(timeout=30) as c:
                with c.stream("POST", f"{srv.url}/v1/completions",
                              json={"model": "qwen3next-a-f32", "prompt": cases[0], "max_tokens": 200,
                                    "temperature": 0, "stream": True}) as r:
                    for i, _ in enumerate(r.iter_lines()):
                        if i >= 3:
                            break
            out = [None] * len(cases)

            def run(i):
                out[i] = _complete(srv, cases[i], 6).choices[0].text

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            again = _complete(srv, cases[0], 6).choices[0].text
        finally:
            srv.stop()
    for k, ((text, lps, cached, n), (wtext, wlps, _, _)) in enumerate(zip(got_turns, want_turns)):
        assert text == wtext, (k, text, wtext)
        assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(lps, wlps)), (lps, wlps)
        if k > 0:  # resumed where the previous turn stored its state on the shards
            assert cached == (got_turns[k - 1][3] - 1) // 16 * 16 > 0, (k, cached)
    assert out == want_alone and again == want_alone[0], (out, want_alone)


def test_hybrid_state_cache_reaches_shards(tandem_bin):
    """`tandem serve --state-cache N` is carried to the shards in LOAD: each keeps N stored
    prefix states (the coordinator addresses as many as the fewest any shard reported).
    Oracle: a single-node server with caching off (--state-cache 0), which computes every
    turn from scratch.
    - --state-cache 3 (more than --max-running 2): turns 2 and 3 of an agent conversation
      resume from states stored on the shards (cached_tokens, and the prefix-cache hit
      counter of /metrics), answers equal to the oracle's;
    - --state-cache 1 on the same shards (they reload for it): turn 3 resumes where turn 1
      stored (turn 2 could not store beside the state it resumed from); prompt A, then B,
      then A: the one stored state is B's when A comes back, so A is computed again (with
      3 it resumes);
    - --state-cache 0: no stored state on the shards, so no hit, same answers."""
    seqs = _seqs()
    model = HYBRID / "qwen3next-a-f32.gguf"
    tok = pytest.importorskip("tokenizers").Tokenizer.from_file(
        str(FIXTURES / "models" / "tokenizer" / "tokenizer.json"))
    user = [seqs["s64"] + seqs["s8"], seqs["rep24"][:13], seqs["s33"][:21]]
    a, b = seqs["s150"][:70], seqs["s33"] + seqs["s64"][:20]

    def turns_of(srv):
        return _agent_turns(srv, tok, user)

    def aba(srv):
        return [(_complete(srv, p, 4).choices[0].text, _complete(srv, p, 1).usage) for p in (a, b)] + \
            [(None, _complete(srv, a, 1).usage)]

    def hits(srv):
        return srv.metric("tandem_prefix_cache_hits_total")

    ref = ServeProcess(model, "--max-running", 2, "--state-cache", 0)
    try:
        want = turns_of(ref)
        want_ab = [_complete(ref, p, 4).choices[0].text for p in (a, b)]
        assert hits(ref) == 0
    finally:
        ref.stop()
    assert [t[2] for t in want] == [0, 0, 0]

    got = {}
    with Shards(model, 2, tls="tcp") as sh:
        for n in (3, 1, 0):
            srv = ServeProcess(model, "--max-running", 2, "--shards", sh.arg, "--tp", 2,
                               "--state-cache", n)
            try:
                got[n] = (turns_of(srv), hits(srv), aba(srv))
            finally:
                srv.stop()
    for n, (turns, n_hits, ab) in got.items():
        for k, ((text, lps, cached, _), (wtext, wlps, _, _)) in enumerate(zip(turns, want)):
            assert text == wtext, (n, k, text, wtext)
            assert all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(lps, wlps)), (n, lps, wlps)
        cached = [t[2] for t in turns]
        want_cached = [0] + [(turns[k - 1][3] - 1) // 16 * 16 for k in (1, 2)]
        assert min(want_cached[1:]) > 0
        if n == 3:  # resumed where the previous turn stored its state on the shards
            assert cached == want_cached, (n, cached)
        elif n == 1:
            # turn 2 holds the one stored state it resumed from while its step saves: no
            # room for its own, so turn 3 resumes where turn 1 stored
            assert cached == [0, want_cached[1], want_cached[1]], (n, cached)
        else:
            assert cached == [0, 0, 0], cached
        assert n_hits == sum(cached), (n, n_hits, cached)
        assert [t for t, _ in ab[:2]] == want_ab, (n, ab)
        # the second request of each prompt resumes from the first's stored state
        a_again = ab[2][1].prompt_tokens_details.cached_tokens
        if n == 0:
            assert [u.prompt_tokens_details.cached_tokens for _, u in ab] == [0, 0, 0], (n, ab)
        elif n == 1:
            assert a_again == 0, ab  # B's state took the only place
        else:
            assert a_again == (len(a) - 1) // 16 * 16, ab
