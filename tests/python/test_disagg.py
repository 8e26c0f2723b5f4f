"""Disaggregated prefill/decode (issue 14 items 3 and 4; docs/distributed.md): a "prefill"
group computes the prompt and puts its KV blocks into the paired "decode" group's pool over
UCX RMA, the decode group samples the first token from the prefill group's logits and
decodes. Shard processes on loopback (UCX over tcp), one per group.

Oracle: the same shards serving the same requests colocated (one "mixed" group on the
prefill group's shard, so every kernel runs with the same threads on the same process
kind): greedy tokens and logprobs (with the top alternatives) must be identical, on the f32
fixture (token-id prompts) and on SmolLM2 (text). The transfer is checked by the servers'
own accounting: tandem_kv_transfer_blocks_total grows by exactly the prompt's blocks the
decode group did not hold, and a second prompt sharing a prefix with the first moves only
the blocks after the shared ones (usage's cached_tokens says what the decode group held).

Sliding-window models (the gpt-oss fixture): the sliding layers' blocks travel for the last
window only, into the few sliding blocks the decode group reserves for it.

Hybrid models (qwen3next, qwen35moe fixtures): the recurrent state at the prompt's end
travels too, into the decode request's state slot, and the decode group's prefix cache serves
attention blocks without a stored state (the state comes whole). Oracle as above, plus the
bytes moved: the attention layers' K/V of the blocks moved plus one state per request, sizes
from the HF config (conv: (kernel - 1) x (2 k heads x k dim + v heads x v dim) floats; delta
rule: v heads x k dim x v dim floats, per linear-attention layer).

Preemption on the decode side: a KV budget too small for 8 long streams, so requests whose
prompt came from the prefill group are preempted after decoding and recompute on the decode
group; outputs equal the colocated run.

Faults: kill -9 of the prefill shard while it prefills a long prompt, and of the decode
shard in the middle of a stream: the affected request ends with an error within 5 s,
nothing hangs, and the restarted shard's group forms again and serves.
"""
import json
import random
import threading
import time

import httpx2 as httpx
import pytest

from dist_util import ShardProcess
from serve_util import ServeProcess, metric_value, parse_metrics

from conftest import DEFAULT_MODEL, FIXTURES

F32 = FIXTURES / "models" / "llama-a-f32.gguf"
HYBRID = FIXTURES / "hybrid"
BLOCK = 16


def _tokens(rng, n):
    return [rng.randrange(3, 370) for _ in range(n)]  # below the fixture's special ids


def _cluster(tmp_path, groups, name="cluster.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"groups": groups}))
    return path


def _pair_file(tmp_path, pre, dec):
    return _cluster(tmp_path, [{"name": "p", "role": "prefill", "shards": [pre.addr]},
                               {"name": "d", "role": "decode", "shards": [dec.addr]}])


def _serve(model, cluster, *extra):
    return ServeProcess(model, "--cluster", cluster, "--ctx-size", "2048", "--max-running", "8",
                        "--shard-timeout-ms", "1500", "--collective-timeout-ms", "5000", *extra)


@pytest.fixture
def pair():
    shards = []
    try:
        for _ in range(2):
            shards.append(ShardProcess(F32, tls="tcp", threads=1))
        yield shards
    finally:
        for s in shards:
            s.stop()


def _complete(srv, prompt, n, model):
    r = srv.client().completions.create(model=model, prompt=prompt, max_tokens=n,
                                        temperature=0, logprobs=3)
    ch = r.choices[0]
    return {"text": ch.text, "lp": ch.logprobs.token_logprobs,
            "top": ch.logprobs.top_logprobs, "finish": ch.finish_reason,
            "cached": r.usage.prompt_tokens_details.cached_tokens,
            "prompt_tokens": r.usage.prompt_tokens}


def _moved(srv):
    m = parse_metrics(srv.get("/metrics").text)
    return (metric_value(m, "tandem_kv_transfer_blocks_total", group="p"),
            metric_value(m, "tandem_kv_transfer_bytes_total", group="p"))


def _blocks(n_prompt):
    return (n_prompt + BLOCK - 1) // BLOCK


def test_disagg_f32_matches_colocated_and_moves_only_missing_blocks(pair, tmp_path):
    rng = random.Random(31)
    shared = _tokens(rng, 120)
    prompts = [shared + _tokens(rng, 37),         # cold everywhere
               shared + _tokens(rng, 23),         # 7 blocks of it are on the decode side
               _tokens(rng, 5),                   # shorter than a block
               _tokens(rng, 300)]                 # several chunks' worth of blocks
    model = "llama-a-f32"
    got, moved, sent = _colocated_then_disagg(tmp_path, F32, model, [pair[0].addr],
                                              [pair[1].addr], prompts, 12)
    blocks, nbytes = sum(moved), sum(sent)
    # only what the decode group lacked travelled: all of a cold prompt's blocks; of the
    # second prompt the blocks after the 7 whole ones the first left in the decode cache
    assert [g["cached"] for g in got] == [0, 112, 0, 0], got
    assert moved == [_blocks(157), _blocks(143) - 7, 1, _blocks(300)], moved
    # llama-a: every layer's K and V, f32 rows: bytes per block from the fixture's shape
    assert nbytes > 0 and nbytes % blocks == 0, (blocks, nbytes)
    print(f"moved {moved} blocks, {nbytes / blocks:.0f} bytes per block")


def _colocated_then_disagg(tmp_path, model_path, model, pre, dec, prompts, n, split=None,
                           serve_args=()):
    """Serves prompts one at a time from one mixed group on the prefill shards, then from the
    prefill/decode pair; asserts the answers identical (greedy tokens, logprobs, top-3) and
    returns the disaggregated answers with the blocks and bytes each prompt moved."""
    split = split or {}
    colo = _serve(model_path, _cluster(tmp_path, [dict(name="m", shards=pre, **split)], "c.json"),
                  *serve_args)
    try:
        want = [_complete(colo, p, n, model) for p in prompts]
    finally:
        colo.stop()
    srv = _serve(model_path, _cluster(tmp_path, [
        dict(name="p", role="prefill", shards=pre, **split),
        dict(name="d", role="decode", shards=dec, **split)]), *serve_args)
    try:
        h = srv.get("/health").json()
        assert h["status"] == "ok", h
        assert [(g["name"], g["role"]) for g in h["groups"]] == [("p", "prefill"),
                                                                   ("d", "decode")], h
        got, moved, sent = [], [], []
        for p in prompts:
            b0, y0 = _moved(srv)
            got.append(_complete(srv, p, n, model))
            b1, y1 = _moved(srv)
            moved.append(b1 - b0)
            sent.append(y1 - y0)
    finally:
        srv.stop()
    for w, g in zip(want, got):
        assert g["text"] == w["text"] and g["finish"] == w["finish"], (w, g)
        assert g["lp"] == w["lp"], (w["lp"], g["lp"])
        assert g["top"] == w["top"], (w["top"], g["top"])
    return got, moved, sent


def _hybrid_sizes(cfg_name):
    """(K or V bytes of one block of one attention layer, recurrent-state bytes of one
    sequence, attention layers) from the HF config, with f32 KV rows and f32 states."""
    c = json.loads((HYBRID / f"{cfg_name}.hf_config.json").read_text())
    text = c.get("text_config", c)
    types = text["layer_types"]
    n_attn = types.count("full_attention")
    n_lin = types.count("linear_attention")
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv_block = text["num_key_value_heads"] * head_dim * BLOCK * 4
    kd, vd = text["linear_key_head_dim"], text["linear_value_head_dim"]
    nk, nv = text["linear_num_key_heads"], text["linear_num_value_heads"]
    conv = (text["linear_conv_kernel_dim"] - 1) * (2 * nk * kd + nv * vd)
    state = n_lin * (conv + nv * kd * vd) * 4
    return kv_block, state, n_attn


@pytest.mark.parametrize("cfg,tp", [("qwen3next-a", 1), ("qwen35moe-a", 1), ("qwen3next-a", 2)])
def test_disagg_hybrid_hands_over_recurrent_state(tandem_bin, tmp_path, cfg, tp):
    """tp 2: each group is 2 shards splitting the DeltaNet and attention heads; shard r puts
    its heads' share of the state into the decode shard r (a k head two ranks share is held
    by both, so the bytes are not the model's state once: only the outputs and blocks are
    checked there)."""
    m = HYBRID / "manifest.json"
    if not m.exists():
        pytest.skip("hybrid fixtures missing: run tools/fixtures/make_hybrid_models.py")
    seqs = json.loads(m.read_text())["sequences"]
    model_path = HYBRID / f"{cfg}-f32.gguf"
    model = f"{cfg}-f32"
    # s150 is prefilled in two steps (to the stored state's block end at 144, then the rest):
    # the state crosses steps; whole blocks go once (a partial one would go again)
    prompts = [seqs["s150"],
               seqs["s33"],
               seqs["s8"],                         # shorter than a block
               seqs["s150"][:100] + seqs["s33"]]   # 6 blocks of it cached on the decode side
    shards = [ShardProcess(model_path, tls="tcp", threads=1, extra=("--kv-type", "f32"))
              for _ in range(2 * tp)]
    pre, dec = [s.addr for s in shards[:tp]], [s.addr for s in shards[tp:]]
    try:
        got, moved, sent = _colocated_then_disagg(tmp_path, model_path, model, pre, dec, prompts,
                                                  8, split={"tp": tp} if tp > 1 else None)
    finally:
        for sh in shards:
            sh.stop()
    # the decode side held the first 6 blocks of the last prompt without a stored state
    assert [g["cached"] for g in got] == [0, 0, 0, 96], got
    assert moved == [_blocks(150), _blocks(33), 1, _blocks(133) - 6], moved
    if tp == 1:
        kv_block, state, n_attn = _hybrid_sizes(cfg)
        assert sent == [b * n_attn * 2 * kv_block + state for b in moved], (sent, kv_block, state)


def test_disagg_sliding_window_hands_over_the_last_window(tandem_bin, tmp_path):
    """gpt-oss (the f32 fixture: layer 0 slides over 8 positions, layer 1 attends over all):
    the full layer's blocks travel as for any model, the sliding layer's only for the window
    the first generated token reads (the decode group reserves no more of its sliding pool),
    so a prompt far longer than that pool holds still hands over. Outputs identical to
    colocated; the bytes are the full layer's K/V of every block moved plus the sliding
    layer's of the window's blocks (sizes from the GGUF header, f32 rows)."""
    gguf = pytest.importorskip("gguf")
    model_path = FIXTURES / "models" / "gpt-oss-a-f32.gguf"
    model = "gpt-oss-a-f32"
    r = gguf.GGUFReader(str(model_path))

    def field(k):
        return int(r.fields[f"gpt-oss.{k}"].contents())

    window = field("attention.sliding_window")
    head_dim = field("attention.key_length")
    kv_block = field("attention.head_count_kv") * head_dim * BLOCK * 4
    rng = random.Random(17)
    shared = _tokens(rng, 120)
    prompts = [shared + _tokens(rng, 37),   # 157: the window is positions 150-157
               shared + _tokens(rng, 23),   # shares 7 blocks with the first
               _tokens(rng, 5),             # inside one block
               _tokens(rng, 1000)]          # chunked by --batch 64: 63 blocks, past the sliding
    #                                            pool (2 x 8 running x 3 + 64 / 16 = 52 blocks)
    shards = [ShardProcess(model_path, tls="tcp", threads=1, extra=("--kv-type", "f32"))
              for _ in range(2)]
    try:
        got, moved, sent = _colocated_then_disagg(tmp_path, model_path, model, [shards[0].addr],
                                                  [shards[1].addr], prompts, 10,
                                                  serve_args=("--batch", "64"))
    finally:
        for sh in shards:
            sh.stop()
    for p, g, b, y in list(zip(prompts, got, moved, sent))[:3]:  # one prefill step each
        n, first = len(p), g["cached"] // BLOCK
        assert b == _blocks(n) - first, (n, g["cached"], b)
        # the sliding blocks of the window position n reads, that the decode side lacked
        lo = max(max(n - window + 1, 0) // BLOCK, first)
        assert y == (b + (_blocks(n) - lo)) * 2 * kv_block, (n, y, b, lo, kv_block)
    assert moved[3] >= _blocks(1000)  # chunks of 64: a partial block goes again


def test_disagg_decode_preemption_keeps_outputs(pair, tmp_path):
    """The decode group's KV budget (--kv-memory 2M: 64 blocks of the f32 fixture) is too
    small for 8 streams of 280 tokens: requests whose prompt the prefill group computed are
    preempted and recompute on the decode group (the prompt is not sent for again)."""
    rng = random.Random(5)
    prompts = [_tokens(rng, 30 + 7 * i) for i in range(8)]
    body = {"max_tokens": 280, "temperature": 0, "logprobs": 1, "ignore_eos": True}

    def run_all(srv):
        out = [None] * len(prompts)

        def one(i):
            r = srv.post("/v1/completions", dict(body, prompt=prompts[i]), timeout=300)
            assert r.status_code == 200, r.text
            ch = r.json()["choices"][0]
            out[i] = (ch["text"], ch["logprobs"]["token_logprobs"], ch["finish_reason"])

        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        return out

    colo = _serve(F32, _cluster(tmp_path, [{"name": "m", "shards": [pair[0].addr]}], "c.json"))
    try:
        want = run_all(colo)
    finally:
        colo.stop()
    srv = _serve(F32, _pair_file(tmp_path, pair[0], pair[1]), "--kv-memory", "2M")
    try:
        p0 = srv.metric("tandem_preemptions_total")
        got = run_all(srv)
        assert srv.metric("tandem_preemptions_total") > p0, "no preemption: the test needs one"
        routed = metric_value(parse_metrics(srv.get("/metrics").text),
                              "tandem_group_routed_requests_total", group="p")
    finally:
        srv.stop()
    assert got == want
    assert routed == len(prompts)  # each prompt went to the prefill group once


def test_disagg_smollm2_matches_colocated(tandem_bin, default_model, tmp_path):
    if not DEFAULT_MODEL.exists():
        pytest.skip("SmolLM2 missing: run tools/setup.sh")
    shards = [ShardProcess(DEFAULT_MODEL, tls="tcp", threads=1) for _ in range(2)]
    try:
        prompts = ["The capital of France is",
                   "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                   "The capital of France is Paris. The capital of Italy is"]
        model = "SmolLM2-135M-Instruct.Q4_1"
        colo = _serve(DEFAULT_MODEL,
                      _cluster(tmp_path, [{"name": "m", "shards": [shards[0].addr]}], "c.json"))
        try:
            want = [_complete(colo, p, 10, model) for p in prompts]
        finally:
            colo.stop()
        srv = _serve(DEFAULT_MODEL, _pair_file(tmp_path, shards[0], shards[1]))
        try:
            got = [_complete(srv, p, 10, model) for p in prompts]
            blocks, _ = _moved(srv)
        finally:
            srv.stop()
        for w, g in zip(want, got):
            assert (g["text"], g["lp"], g["top"]) == (w["text"], w["lp"], w["top"]), (w, g)
        assert blocks > 0
    finally:
        for s in shards:
            s.stop()


def _stream(srv, prompt, max_tokens, out, started):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    events, err, finish = 0, None, None
    try:
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as resp:
            if resp.status_code != 200:  # failed before its first token: an error reply
                resp.read()
                err = (time.monotonic(), resp.text)
                return
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line[6:] == "[DONE]":
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    err = (time.monotonic(), obj["error"]["message"])
                    break
                events += 1
                if events == 3 and started is not None:
                    started.release()
                for c in obj.get("choices", []):
                    finish = c.get("finish_reason") or finish
    finally:
        out["events"], out["error"], out["finish"] = events, err, finish
        out["t_end"] = time.monotonic()


def _wait_ok(srv, timeout):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        r = srv.get("/health", timeout=5)
        if r.status_code == 200 and r.json()["status"] == "ok":
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"not ok after {timeout} s: {srv.get('/health').text}")


def _serves(srv, rng):
    r = srv.post("/v1/completions", {"prompt": _tokens(rng, 40), "max_tokens": 4,
                                     "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def test_disagg_faults_kill_prefill_mid_transfer_and_decode_mid_stream(pair, tmp_path):
    rng = random.Random(9)
    # a long prompt, prefilled in chunks of 32 tokens: each chunk a step whose blocks are put
    # into the decode pool, so the prefill shard dies between transfers of one prompt
    srv = _serve(F32, _pair_file(tmp_path, pair[0], pair[1]), "--batch", "32",
                 "--max-step-ms", "off")
    try:
        _serves(srv, rng)
        b0, _ = _moved(srv)
        out = {}
        t = threading.Thread(target=_stream, args=(srv, _tokens(rng, 1900), 8, out, None))
        t.start()
        t_end = time.monotonic() + 30
        while _moved(srv)[0] == b0 and time.monotonic() < t_end:
            time.sleep(0.002)
        assert _moved(srv)[0] > b0, "no transfer seen"
        pair[0].kill9()
        killed = time.monotonic()
        t.join(timeout=30)
        assert not t.is_alive(), "the request hangs"
        assert out["error"] is not None, out
        assert out["error"][0] - killed < 5.0, (out, killed)
        assert "prefill" in out["error"][1] and "shard" in out["error"][1], out
        h = srv.get("/health").json()
        assert h["status"] != "ok", h
        pair[0].start()
        _wait_ok(srv, 30)
        _serves(srv, rng)

        # the decode shard, mid-stream
        out = {}
        started = threading.Semaphore(0)
        t = threading.Thread(target=_stream, args=(srv, _tokens(rng, 64), 1500, out, started))
        t.start()
        assert started.acquire(timeout=60), out
        pair[1].kill9()
        killed = time.monotonic()
        t.join(timeout=30)
        assert not t.is_alive(), "the stream hangs"
        assert out["error"] is not None and out["error"][0] - killed < 5.0, (out, killed)
        assert "shard" in out["error"][1], out
        pair[1].start()
        _wait_ok(srv, 30)
        _serves(srv, rng)
    finally:
        srv.stop()
