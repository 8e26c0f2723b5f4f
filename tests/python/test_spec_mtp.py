"""Speculative decoding with the model's own multi-token-prediction block (--spec mtp) on the
hybrid fixtures: qwen35moe-b (llama.cpp's converter wrote its MTP block) and qwen3next-b
given an MTP block by mtp_util.add_mtp_block (the converter's names; its trunk untouched).

- The drafter is the MTP block: `tandem eval --mtp-out` runs the block through the shard's
  forward pass (the same shd_forward_mtp the drafter's executor calls) over every prompt
  position and chains 3 drafts; an independent numpy oracle of the block, built from the
  GGUF's tensors and fed the trunk's hidden states recovered from HF transformers' stored
  logits (not Tandem's), gives the same logits within 1e-4 relative L2 and the same drafts.
- Greedy output with --spec mtp equals --spec off (tokens and log-probabilities), alone and
  four at once on two running slots, and /metrics counts the mtp drafter's drafts, some
  accepted (prompts that make the random trunk repeat itself, whose MTP block predicts the
  repeats) and some rejected (a hybrid model then replays: rollback is exercised).
- The engine drafts what the block predicts, from the right rows: on qwen3next-b with an
  "echo" MTP block (it mostly passes h_p through, so its drafts are mostly the trunk's own
  last token: 10 of 48 accepted on a short prompt, 3 of 56 on a 150-token one run whole and
  in prefill chunks, whose rows go through catch-up steps) the numpy oracle, fed the
  trunk's states, replays the engine's decode (--spec-always, k = 3, catch-up rows, chained
  rows dropped, the hybrid replay after a rejection, cut at a block boundary where the state
  is stored) and predicts exactly how many
  tokens it drafts and how many are accepted; /metrics must say the same.
- Preemption: four drafting requests in a KV budget they do not fit give the tokens they give
  alone without speculation, and every block (the MTP K/V lives in them) comes back.
- Refusals: a model without an MTP block, --spec mtp over shards, a request asking for mtp
  on a server without it.
"""
import concurrent.futures as cf
import json

import numpy as np
import pytest

from conftest import FIXTURES, run_tandem
from mtp_util import MtpOracle, add_mtp_block, hidden_from_logits
from serve_util import ServeProcess, metric_value

HYBRID = FIXTURES / "hybrid"
MANIFEST = HYBRID / "manifest.json"


@pytest.fixture(scope="module")
def models(tmp_path_factory, tandem_bin):
    if not MANIFEST.exists():
        pytest.skip("hybrid fixtures missing")
    d = tmp_path_factory.mktemp("mtp")
    nx = d / "qwen3next-b-mtp.gguf"
    add_mtp_block(HYBRID / "qwen3next-b-f32.gguf", nx)
    echo = d / "qwen3next-b-echo.gguf"
    add_mtp_block(HYBRID / "qwen3next-b-f32.gguf", echo, echo=True)
    return {"qwen35moe-b": (HYBRID / "qwen35moe-b-f32.gguf", "qwen35moe-b-f32.gguf"),
            "qwen3next-b": (nx, "qwen3next-b-f32.gguf"),
            "qwen3next-b-echo": (echo, "qwen3next-b-f32.gguf")}


def rel_l2(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("name", ["qwen35moe-b", "qwen3next-b"])
def test_mtp_logits_match_numpy_oracle(models, tmp_path, name):
    path, ref_file = models[name]
    m = json.loads(MANIFEST.read_text())
    entry = next(e for e in m["models"] if e["file"] == ref_file)
    seq = "s33"
    tokens = m["sequences"][seq]
    exp = entry["expected"][seq]
    assert exp["positions"] == list(range(len(tokens)))
    ref_logits = np.load(HYBRID / exp["logits"])
    # the trunk's states from HF's logits (independent of Tandem's trunk)
    h = hidden_from_logits(path, ref_logits)
    oracle = MtpOracle(path)
    out = tmp_path / "mtp.npy"
    chain = 3
    res = json.loads(run_tandem("eval", "--model", path, "--tokens", ",".join(map(str, tokens)),
                                "--mtp-out", out, "--mtp-chain", chain, "--threads", 2).stdout)
    got = np.load(out)
    n = len(tokens)
    assert got.shape == (n - 2 + chain, m["n_vocab"])
    want, drafts = [], []
    for p in range(n - 1):
        lg, state = oracle.row(tokens[p + 1], h[p], p)
        want.append(lg)
    drafts.append(int(np.argmax(want[-1])))
    for d in range(1, chain):
        lg, state = oracle.row(drafts[-1], state, n - 2 + d)
        want.append(lg)
        drafts.append(int(np.argmax(lg)))
    rel = rel_l2(got, np.array(want))
    assert rel.max() <= 1e-4, f"{name}: max relative L2 {rel.max():.3g} at row {rel.argmax()}"
    assert res["mtp_drafts"] == drafts
    # and the oracle is sensitive: another hidden state or a shifted token moves the rows
    o2 = MtpOracle(path)
    off = [o2.row(tokens[p], h[p], p)[0] for p in range(4)]
    assert rel_l2(got[:4], np.array(off)).min() > 1e-2


def complete(srv, name, prompt, spec, n_tokens, **kw):
    body = {"model": name, "prompt": prompt, "max_tokens": n_tokens,
            "speculative": {"mode": spec}, **kw}
    r = srv.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"]


def same(a, b):
    assert a[0] == b[0] and a[1] == b[1], (a, b)
    assert [t for t, _ in a[2]] == [t for t, _ in b[2]]
    for (_, x), (_, y) in zip(a[2], b[2]):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)


# prompts of the fixtures' tokenizer ids: repeats (the random trunk then tends to repeat
# itself, and its MTP block to predict repeats) and plain runs
PROMPTS = [[5, 6, 7, 8] * 8, list(range(40, 90)), [100, 101] * 20, [200 + (i * 7) % 50 for i in range(60)]]


@pytest.mark.parametrize("name", ["qwen35moe-b", "qwen3next-b"])
def test_mtp_greedy_identical(models, name):
    path, _ = models[name]
    model_name = path.name[:-5]
    srv = ServeProcess(path, "--spec", "mtp", "--spec-always", "--spec-max", "3",
                       "--max-running", "2")
    try:
        def run(p, spec, n):
            ch = complete(srv, model_name, p, spec, n, temperature=0, logprobs=1)[0]
            return ch["text"], ch["finish_reason"], list(zip(ch["logprobs"]["tokens"],
                                                            ch["logprobs"]["token_logprobs"]))
        cases = [(p, n) for p in PROMPTS for n in (7, 40)]
        ref = [run(p, "off", n) for p, n in cases]
        m0 = srv.metrics()
        assert metric_value(m0, "tandem_spec_draft_tokens_total", drafter="mtp") == 0
        alone = [run(p, "mtp", n) for p, n in cases]
        with cf.ThreadPoolExecutor(4) as ex:
            batched = list(ex.map(lambda x: run(x[0], "mtp", x[1]), cases))
        m = srv.metrics()
    finally:
        srv.stop()
    for r, a, b in zip(ref, alone, batched):
        same(r, a)
        same(r, b)
    drafted = metric_value(m, "tandem_spec_draft_tokens_total", drafter="mtp")
    accepted = metric_value(m, "tandem_spec_accepted_tokens_total", drafter="mtp")
    assert drafted > 0 and accepted < drafted, (drafted, accepted)
    assert metric_value(m, "tandem_spec_draft_tokens_total", drafter="ngram") == 0


def simulate(oracle, h, seq, n_prompt, n_gen_max, k_max, block=16):
    """The engine's decode of one greedy request under --spec mtp --spec-always --spec-max
    k_max on a hybrid model (scheduler.c, mtp.h), with the oracle as the block: returns
    (drafted, accepted, smallest top-2 logit margin of any draft). After a rejection the
    engine computes the accepted tokens again from the state before the step; that replay
    stops at the last block boundary before the sequence's end (the recurrent state is stored
    there for the prefix cache), and when one token is left after it, that token's step is an
    ordinary decode step with drafts; otherwise the replay's step emits a token undrafted."""
    n, n_gen, rows, replay = n_prompt + 1, 1, 0, False
    drafted = accepted = 0
    margin = np.inf
    while n_gen < n_gen_max:
        k = min(k_max, n_gen_max - n_gen - 1)
        if replay or k <= 0:  # a replay step after a rejection: no drafts, one token
            n, n_gen, replay = n + 1, n_gen + 1, False
            continue
        oracle.truncate(rows)  # the chained rows and the last proposal's first row go
        for p in range(rows, n - 2):
            oracle.row(seq[p + 1], h[p], p)
        rows = n - 2
        lg, state = oracle.row(seq[n - 1], h[n - 2], n - 2)
        drafts = []
        for d in range(k):
            if d > 0:
                lg, state = oracle.row(drafts[-1], state, n - 2 + d)
            top = np.sort(lg)[-2:]
            margin = min(margin, top[1] - top[0])
            drafts.append(int(np.argmax(lg)))
        a = 0
        while a < k and drafts[a] == seq[n + a]:
            a += 1
        drafted += k
        accepted += a
        p0 = n - 1  # the verified step's first position
        n, n_gen = n + a + 1, n_gen + a + 1
        saved = (n - 1) // block * block
        replay = a < k and n - (saved if saved > p0 else p0) > 1
    return drafted, accepted, margin


# a short prompt (10 of 48 drafts accepted) and a 150-token one, whose
# rows go through the block in catch-up steps as they are computed (3 of 56), whole and in
# prefill chunks of 48
@pytest.mark.parametrize("repeat,flags", [(4, ()), (30, ()), (30, ("--batch", 48))])
def test_mtp_engine_drafts_what_the_block_predicts(models, tmp_path, repeat, flags):
    path, _ = models["qwen3next-b-echo"]
    prompt, n_gen, k = [379, 378, 300, 301, 302] * repeat, 40, 3
    res = json.loads(run_tandem("eval", "--model", path, "--tokens", ",".join(map(str, prompt)),
                                "--greedy", n_gen, "--threads", 2).stdout)
    seq = prompt + res["greedy"]
    out = tmp_path / "trunk.npy"
    run_tandem("eval", "--model", path, "--tokens", ",".join(map(str, seq[:-1])),
               "--logits-out", out, "--threads", 2)
    h = hidden_from_logits(path, np.load(out))
    drafted, accepted, margin = simulate(MtpOracle(path), h, seq, len(prompt), n_gen, k)
    assert margin > 1e-3, f"a draft decided by {margin:.2g}: pick another prompt"
    assert 0 < accepted < drafted, (drafted, accepted)
    # max-running 4: logits rows (and spare state slots) for all k drafts of the one request
    srv = ServeProcess(path, "--spec", "mtp", "--spec-always", "--spec-max", k, "--max-running", 4,
                       *flags)
    try:
        ch = complete(srv, path.name[:-5], prompt, "mtp", n_gen, temperature=0, ignore_eos=True)[0]
        m = srv.metrics()
        used = metric_value(m, "tandem_kv_blocks_used")
    finally:
        srv.stop()
    assert ch["finish_reason"] == "length"
    assert (metric_value(m, "tandem_spec_draft_tokens_total", drafter="mtp"),
            metric_value(m, "tandem_spec_accepted_tokens_total", drafter="mtp")) == (drafted, accepted)
    assert used == 0  # the MTP block's K/V went with the sequence's blocks


def test_mtp_refusals(models, tmp_path):
    # no MTP block: refused at start-up, saying why
    proc = run_tandem("serve", "--model", HYBRID / "qwen3next-a-f32.gguf", "--spec", "mtp",
                      "--port", "0", check=False, timeout=60)
    assert proc.returncode != 0
    assert "--spec mtp" in proc.stderr and "no multi-token-prediction block" in proc.stderr
    # over shards: refused before any shard is contacted
    proc = run_tandem("serve", "--model", models["qwen35moe-b"][0], "--spec", "mtp",
                      "--shards", "127.0.0.1:1", "--port", "0", check=False, timeout=60)
    assert proc.returncode != 0 and "--spec mtp runs on one node only" in proc.stderr
    # a request asking for mtp on a server started without it
    path = models["qwen35moe-b"][0]
    srv = ServeProcess(path, "--spec", "ngram")
    try:
        r = srv.post("/v1/completions", {"model": path.name[:-5], "prompt": [1, 2, 3],
                                         "max_tokens": 2, "speculative": {"mode": "mtp"}})
        assert r.status_code == 400, r.text
        assert "--spec mtp" in r.text
        r = srv.post("/v1/completions", {"model": path.name[:-5], "prompt": [1, 2, 3],
                                         "max_tokens": 2, "speculative": {"mode": "eagle"}})
        assert r.status_code == 400 and "mtp" in r.text
    finally:
        srv.stop()


def test_mtp_preemption_keeps_outputs(models):
    """A KV budget four drafting requests do not fit: some are preempted (their blocks, the
    MTP block's K/V with them, go; they resume from what is cached, the drafter's rows from
    there) and still give the tokens they give alone without speculation; every block is back
    at the end."""
    path, _ = models["qwen35moe-b"]
    name = path.name[:-5]
    srv = ServeProcess(path, "--spec", "mtp", "--spec-always", "--spec-max", "3",
                       "--max-running", "4", "--batch", "64", "--kv-memory", "400K")
    try:
        def run(p, spec):
            ch = complete(srv, name, p, spec, 120, temperature=0, logprobs=1, ignore_eos=True)[0]
            return ch["text"], ch["finish_reason"], list(zip(ch["logprobs"]["tokens"],
                                                            ch["logprobs"]["token_logprobs"]))
        ref = [run(p, "off") for p in PROMPTS]
        p0 = metric_value(srv.metrics(), "tandem_preemptions_total")
        with cf.ThreadPoolExecutor(4) as ex:
            together = list(ex.map(lambda p: run(p, "mtp"), PROMPTS))
        m = srv.metrics()
        assert metric_value(m, "tandem_preemptions_total") > p0, "no preemption: the test needs one"
        assert metric_value(m, "tandem_spec_draft_tokens_total", drafter="mtp") > 0
        for r, t in zip(ref, together):
            same(r, t)
        assert srv.wait_metric("tandem_kv_blocks_used", lambda v: v == 0) == 0
    finally:
        srv.stop()
