"""`tandem serve` with a model that has sliding-window layers (the gpt-oss-b fixture: layers
0 and 2 see the last 5 positions, KV blocks of 16 tokens): the prefix cache over the two KV
pools (coordinator/kv_manager.h).

A request is compared with the same request alone on a fresh server (greedy tokens and their
log-probabilities; the forward pass is batch invariant, so a cached prefix must not change a
bit). Prompts are token ids through /v1/completions (the fixture's vocabulary is tiny).
- A second request sharing a 48-token prefix reuses it (cached_tokens 48: the window before
  position 48 was kept) and answers as it does alone.
- With a small sliding pool (--kv-memory that leaves 6 sliding blocks, --max-running 1),
  unrelated requests in between evict the shared prefix's window while its full blocks stay
  cached: the hit is cut (cached_tokens below 48) and the answer is still the one alone.
With TANDEM_TEST_SHARDS=2 (ctest python_dist_serve) the servers drive two shards (EP 2),
whose steps carry the sliding tables.
"""
import os
import re

import pytest

from conftest import FIXTURES
from serve_util import ServeProcess

MODEL = FIXTURES / "models" / "gpt-oss-b-f32.gguf"
NAME = "gpt-oss-b-f32"
SHARED = [(i * 37 + 11) % 370 for i in range(48)]  # ids below the special tokens (377+)
TAIL_A = [5, 17, 29, 41, 53]
TAIL_B = [6, 18, 30, 42, 54]
# bytes of one 16-token block of gpt-oss-b's f32 KV (3 kv heads x 16 dims, K and V): 6144 per
# layer; one full-attention layer, two sliding ones
LAYER_BLOCK = 2 * 3 * 16 * 4 * 16
DISTRIBUTED = int(os.environ.get("TANDEM_TEST_SHARDS", "0") or 0) > 0


def serve(*args):
    return ServeProcess(MODEL, *args)


def complete(srv, prompt, n=12):
    r = srv.client().completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                        logprobs=1)
    ch = r.choices[0]
    return (ch.text, ch.logprobs.tokens, ch.logprobs.token_logprobs,
            r.usage.prompt_tokens_details.cached_tokens)


def same(a, b):
    assert a[0] == b[0] and a[1] == b[1], (a, b)
    assert all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a[2], b[2])), (a[2], b[2])


@pytest.fixture(scope="module")
def alone(tandem_bin):
    """Each prompt's answer on a server of its own (nothing cached)."""
    if not MODEL.exists():
        pytest.skip("gpt-oss fixtures missing")
    out = {}
    for key, tail in (("a", TAIL_A), ("b", TAIL_B)):
        srv = serve()
        out[key] = complete(srv, SHARED + tail)
        assert out[key][3] == 0
        srv.stop()
    return out


def test_shared_prefix_hits_and_matches_alone(alone):
    srv = serve()
    try:
        a = complete(srv, SHARED + TAIL_A)
        b = complete(srv, SHARED + TAIL_B)
    finally:
        srv.stop()
    assert a[3] == 0
    # 53 tokens: at most the 3 blocks before the last token; the window before 48 (43..47)
    # is still held by the sliding pool
    assert b[3] == 48, b
    same(a, alone["a"])
    same(b, alone["b"])


def test_evicted_window_cuts_the_hit(alone, monkeypatch):
    # the sliding pool's want first (7 blocks of 2 layers: shard/shd_model.h's rule
    # 2 x sequences x (ceil((w - 1) / bt) + 2) + ceil(batch / bt)), then 200 full-pool blocks
    swa_want = 2 * 1 * (-(-(5 - 1) // 16) + 2) + -(-16 // 16)  # max-running 1, batch 16
    budget = swa_want * 2 * LAYER_BLOCK + 200 * LAYER_BLOCK
    monkeypatch.setenv("TANDEM_LOG_LEVEL", "info")  # the KV pools' sizes
    srv = serve("--max-running", 1, "--batch", 16, "--kv-memory", budget)
    try:
        if not DISTRIBUTED:
            m = re.search(r"KV cache: (\d+) blocks of 16 tokens for the full-attention layers "
                          r".*?, (\d+) for the sliding-window layers", srv.stderr())
            assert m and (int(m.group(1)), int(m.group(2))) == (200, swa_want), srv.stderr()
        a = complete(srv, SHARED + TAIL_A)
        assert a[3] == 0
        # unrelated prompts: their windows take every sliding block (and far fewer than
        # the 200 full blocks, so the shared prefix's full blocks stay cached)
        for k in range(4):
            other = [(i * 13 + 7 * k + 3) % 370 for i in range(60)]
            complete(srv, other, n=4)
        b = complete(srv, SHARED + TAIL_B)
    finally:
        srv.stop()
    same(a, alone["a"])
    assert b[3] < 48, b
    same(b, alone["b"])
