"""`tandem serve` end to end with the official `openai` client: generation.

Servers (module-scoped, each started once): SmolLM2-135M (the default real model), the tiny
random llama fixture, and the three scripted fixtures (tests/fixtures/scripted: bigram models
that write a known message under the chat template). Expectations come from independent
oracles: llama.cpp's prompt ids and tokenizations (tests/fixtures/smollm2, tokenizers/), an HF
`tokenizers` tokenizer built from the GGUF's vocabulary plus jinja2 rendering of its template,
and scripted.json. "Same as alone" comparisons (batching, concurrency, stop strings) compare the
server with itself on purpose: that is the property under test.

Errors, auth and limits: test_serve_errors.py. Disconnects, keep-alive, shutdown:
test_serve_lifecycle.py.
"""
import asyncio
import concurrent.futures
import json
import threading
import time

import openai
import pytest

from conftest import FIXTURES
from serve_util import (ServeProcess, hf_tokenizer_from_gguf, metric_value, read_gguf_kv,
                        render_chat_template)

SMOL_NAME = "smollm2-test"
TINY = FIXTURES / "models" / "llama-a-f32.gguf"
SCRIPTED_DIR = FIXTURES / "scripted"
SCRIPTED = json.loads((SCRIPTED_DIR / "scripted.json").read_text())
EXPECTED = json.loads((FIXTURES / "smollm2" / "expected.json").read_text())


# ---- servers ----

@pytest.fixture(scope="module")
def smol(tandem_bin, default_model):
    srv = ServeProcess(default_model, "--served-model-name", SMOL_NAME)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tiny(tandem_bin):
    srv = ServeProcess(TINY, "--ctx-size", "4096")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hermes(tandem_bin):
    srv = ServeProcess(SCRIPTED_DIR / "scripted-hermes.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def qwen3coder(tandem_bin):
    srv = ServeProcess(SCRIPTED_DIR / "scripted-qwen3coder.gguf")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def content_srv(tandem_bin):
    srv = ServeProcess(SCRIPTED_DIR / "scripted-content.gguf")
    yield srv
    srv.stop()


# ---- the tokenizer oracle ----

@pytest.fixture(scope="module")
def smol_kv(default_model):
    return read_gguf_kv(default_model)


@pytest.fixture(scope="module")
def smol_tok(smol_kv):
    """HF tokenizers on SmolLM2's GGUF vocabulary, first checked against llama.cpp's ids for
    the whole tokenizer corpus (so that it is a trustworthy oracle)."""
    tk = hf_tokenizer_from_gguf(smol_kv)
    corpus = [json.loads(l) for l in (FIXTURES / "tokenizers" / "corpus.jsonl").open()]
    lines = (FIXTURES / "tokenizers" / "smollm2-expected.jsonl").read_text().splitlines()
    expected = [json.loads(l) for l in lines[1:]]
    assert len(corpus) == len(expected)
    bad = [c["text"] for c, e in zip(corpus, expected)
           if tk.encode(c["text"], add_special_tokens=False).ids != e["ids_special"]]
    assert not bad, f"the HF oracle differs from llama.cpp on {len(bad)} strings: {bad[:3]!r}"
    return tk


def smol_prompt_ids(smol_kv, smol_tok, messages):
    text = render_chat_template(smol_kv["tokenizer.chat_template"], messages)
    return smol_tok.encode(text, add_special_tokens=False).ids


# ---- helpers ----

class Gen:
    """What one choice produced, from a whole response or reassembled from a stream."""

    def __init__(self):
        self.content = ""
        self.reasoning = ""
        self.finish = None
        self.tokens = []       # logprobs entries: (token, logprob, [(token, logprob), ...])
        self.tool_calls = {}   # index -> {"id", "name", "arguments"}
        self.usage = None
        self.role = None
        self.n_chunks = 0

    def token_texts(self):
        return [t for t, _, _ in self.tokens]


def extra(obj, key):
    v = getattr(obj, key, None)
    if v is None and getattr(obj, "model_extra", None):
        v = obj.model_extra.get(key)
    return v


def lp_entries(content):
    return [(e.token, e.logprob, [(t.token, t.logprob) for t in (e.top_logprobs or [])])
            for e in content or []]


def chat(client, model, messages, stream=False, **kw):
    """One chat completion (n = 1) as a Gen; streams are reassembled."""
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, **kw)
        assert len(r.choices) == 1
        c = r.choices[0]
        g = Gen()
        g.content = c.message.content
        g.reasoning = extra(c.message, "reasoning_content")
        g.finish = c.finish_reason
        g.role = c.message.role
        g.usage = r.usage
        if c.logprobs is not None:
            g.tokens = lp_entries(c.logprobs.content)
        for i, tc in enumerate(c.message.tool_calls or []):
            g.tool_calls[i] = {"id": tc.id, "name": tc.function.name,
                               "arguments": tc.function.arguments, "type": tc.type}
        g.response = r
        return g
    g = Gen()
    g.content = ""
    g.reasoning = ""
    kw.setdefault("stream_options", {"include_usage": True})
    for ch in client.chat.completions.create(model=model, messages=messages, stream=True, **kw):
        g.n_chunks += 1
        if ch.usage is not None:
            g.usage = ch.usage
        if not ch.choices:
            continue
        assert len(ch.choices) == 1 and ch.choices[0].index == 0
        c = ch.choices[0]
        d = c.delta
        if d.role is not None:
            assert g.role is None, "role sent twice"
            g.role = d.role
        if d.content:
            g.content += d.content
        r = extra(d, "reasoning_content")
        if r:
            g.reasoning += r
        for tc in d.tool_calls or []:
            slot = g.tool_calls.setdefault(tc.index, {"id": None, "name": "", "arguments": "",
                                                      "type": None})
            if tc.id:
                assert slot["id"] in (None, tc.id), "a tool call's id changed mid-stream"
                slot["id"] = tc.id
            if tc.type:
                slot["type"] = tc.type
            if tc.function is not None:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        if c.logprobs is not None:
            g.tokens += lp_entries(c.logprobs.content)
        if c.finish_reason is not None:
            assert g.finish is None, "two finish_reasons"
            g.finish = c.finish_reason
    return g


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def explain_mismatch(solo, other, what):
    """The lead asked for the exact token position and logprob margin of a batching mismatch."""
    ta, tb = solo.token_texts(), other.token_texts()
    k = first_difference(ta, tb)
    if k >= min(len(ta), len(tb)):
        diffs = [abs(x[1] - y[1]) for x, y in zip(solo.tokens, other.tokens)]
        worst = max(range(len(diffs)), key=diffs.__getitem__) if diffs else 0
        return (f"{what}: tokens equal ({len(ta)} vs {len(tb)}); largest logprob difference "
                f"{max(diffs, default=0.0):.3g} at position {worst}; text {solo.content!r} vs "
                f"{other.content!r}")
    tops = solo.tokens[k][2]
    margin = tops[0][1] - tops[1][1] if len(tops) >= 2 else float("nan")
    dl = max((abs(x[1] - y[1]) for x, y in zip(solo.tokens[:k], other.tokens[:k])), default=0.0)
    return (f"{what}: first different token at position {k}: alone {ta[k]!r} "
            f"(logprob {solo.tokens[k][1]:.6f}, top-2 {tops[:2]}, margin {margin:.6f}), "
            f"concurrent {tb[k]!r} (logprob {other.tokens[k][1]:.6f}, top-2 "
            f"{other.tokens[k][2][:2]}); max |logprob diff| before it {dl:.3g}\n"
            f"alone:      {solo.content!r}\nconcurrent: {other.content!r}")


def max_lp_diff(a, b):
    return max((abs(x[1] - y[1]) for x, y in zip(a.tokens, b.tokens)), default=0.0)


GREEDY = dict(temperature=0, logprobs=True, top_logprobs=2)
_solo_cache = {}


def solo_greedy(srv, model, messages, max_tokens):
    """A greedy chat alone on the server (memoised per server and request)."""
    key = (srv.port, json.dumps(messages), max_tokens)
    if key not in _solo_cache:
        _solo_cache[key] = chat(srv.client(), model, messages, max_tokens=max_tokens, **GREEDY)
    return _solo_cache[key]


def run_concurrently(fns):
    """Calls each fn at (nearly) the same moment from its own thread; returns the results."""
    barrier = threading.Barrier(len(fns))

    def go(fn):
        barrier.wait()
        return fn()

    with concurrent.futures.ThreadPoolExecutor(len(fns)) as ex:
        return list(ex.map(go, fns))


CHAT0 = EXPECTED["chat"][0]["messages"]  # "What is the capital of France?"
CHAT1 = EXPECTED["chat"][1]["messages"]  # system + "Write a Python function that reverses a string."
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]  # many likely answers


# ---- 1. chat: whole and streamed ----

def test_chat_whole_and_streamed(smol, smol_kv, smol_tok):
    cl = smol.client()
    for case in EXPECTED["chat"]:
        # the HF oracle and llama.cpp agree on the rendered prompt; the server must too
        assert smol_prompt_ids(smol_kv, smol_tok, case["messages"]) == case["prompt_ids"]
    # a request for code: 12 tokens are not enough for the answer, so it finishes "length"
    msgs = CHAT1
    n_prompt = len(EXPECTED["chat"][1]["prompt_ids"])
    whole = chat(cl, SMOL_NAME, msgs, max_tokens=12, temperature=0)
    assert whole.role == "assistant"
    assert whole.finish == "length"
    assert whole.content, "no content"
    u = whole.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert whole.response.object == "chat.completion" and whole.response.model == SMOL_NAME
    assert whole.response.id

    streamed = chat(cl, SMOL_NAME, msgs, stream=True, max_tokens=12, temperature=0,
                    logprobs=True)
    assert streamed.role == "assistant"
    assert streamed.content == whole.content
    assert streamed.finish == "length"
    assert streamed.usage is not None, "stream_options.include_usage sent no usage chunk"
    su = streamed.usage
    assert (su.prompt_tokens, su.completion_tokens, su.total_tokens) == (n_prompt, 12, n_prompt + 12)
    assert len(streamed.tokens) == su.completion_tokens, "one logprobs entry per generated token"
    assert "".join(streamed.token_texts()) == streamed.content

    # without include_usage a stream carries no usage
    chunks = list(cl.chat.completions.create(model=SMOL_NAME, messages=msgs, stream=True,
                                             max_tokens=2, temperature=0))
    assert all(c.usage is None for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_chat_finish_stop_counts_eos(content_srv):
    """scripted-content writes a known text then <|im_end|>: finish 'stop'."""
    model = next(m for m in SCRIPTED["models"] if m["file"] == "scripted-content.gguf")
    case = model["cases"][0]
    cl = content_srv.client()
    for stream in (False, True):
        g = chat(cl, "scripted-content", case["messages"], stream=stream, max_tokens=32,
                 temperature=0, logprobs=True)
        assert g.content == case["text"]
        assert g.finish == "stop"
        assert g.usage.prompt_tokens == len(case["prompt_ids"])
        # the script's tokens: the text's and the end-of-turn token, which vLLM counts in
        # completion_tokens (as OpenAI does); logprobs cover the text's tokens
        n_text = len(case["ids"]) - 1
        assert len(g.tokens) == n_text
        assert g.usage.completion_tokens == n_text + 1
        assert [t for t, _, _ in g.tokens] == [c["text"] for c in model["chain"]]


def test_chat_content_parts(smol, smol_kv, smol_tok):
    """Text content parts are joined with newlines (as vLLM does) before templating."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    joined = [{"role": "user", "content": "What is the capital\nof France?"}]
    r = smol.client().chat.completions.create(model=SMOL_NAME, messages=parts, max_tokens=1)
    assert r.usage.prompt_tokens == len(smol_prompt_ids(smol_kv, smol_tok, joined))


def test_ignore_eos_and_special_tokens(content_srv):
    """scripted-content follows its script with <|im_end|> forever (fixtures README): with
    ignore_eos the request runs to max_tokens; the end-of-turn tokens are special, so they are
    left out of the text unless skip_special_tokens is false."""
    case = next(m for m in SCRIPTED["models"] if m["file"] == "scripted-content.gguf")["cases"][0]
    n_script = len(case["ids"]) - 1
    cl = content_srv.client()
    for stream in (False, True):
        g = chat(cl, "scripted-content", case["messages"], stream=stream, max_tokens=12,
                 temperature=0, extra_body={"ignore_eos": True})
        assert g.finish == "length" and g.usage.completion_tokens == 12
        assert g.content == case["text"]
        g = chat(cl, "scripted-content", case["messages"], stream=stream, max_tokens=12,
                 temperature=0, extra_body={"ignore_eos": True, "skip_special_tokens": False})
        assert g.content == case["text"] + "<|im_end|>" * (12 - n_script)


def test_sampling_filters_reduce_to_greedy(tiny):
    """top_k 1, a tiny top_p and min_p 1 each leave only the most likely token, so sampling
    at any temperature must give the greedy output."""
    cl = tiny.client()
    msgs = other_messages(5)
    greedy = chat(cl, "llama-a-f32", msgs, max_tokens=16, temperature=0).content
    for kw in ({"top_k": 1}, {"min_p": 1.0}):
        g = chat(cl, "llama-a-f32", msgs, max_tokens=16, temperature=1.5, seed=5,
                 extra_body=kw)
        assert g.content == greedy, kw
    g = chat(cl, "llama-a-f32", msgs, max_tokens=16, temperature=1.5, seed=5, top_p=1e-6)
    assert g.content == greedy, "top_p 1e-6"
    # and without a filter, temperature 1.5 does wander off
    g = chat(cl, "llama-a-f32", msgs, max_tokens=16, temperature=1.5, seed=5)
    assert g.content != greedy


def test_logit_bias(smol, smol_tok):
    """OpenAI's logit_bias through the official client: -100 on the greedy first token
    makes the runner-up (by the unbiased top_logprobs) come first, +100 on a token makes it
    every token; ids are SmolLM2's as HF tokenizers (checked against llama.cpp) gives them.
    Reported logprobs stay those of the model, as vLLM reports them."""
    cl = smol.client()
    prompt = EXPECTED["greedy"][0]["prompt_ids"]
    a = cl.completions.create(model=SMOL_NAME, prompt=prompt, max_tokens=1, temperature=0,
                              logprobs=2)
    tops = sorted(a.choices[0].logprobs.top_logprobs[0].items(), key=lambda kv: -kv[1])
    (t1, l1), (t2, l2) = tops[0], tops[1]
    assert a.choices[0].text == t1 and l1 > l2
    id1 = smol_tok.encode(t1, add_special_tokens=False).ids
    assert len(id1) == 1, (t1, id1)
    b = cl.completions.create(model=SMOL_NAME, prompt=prompt, max_tokens=1, temperature=0,
                              logprobs=2, logit_bias={str(id1[0]): -100})
    assert b.choices[0].text == t2
    assert b.choices[0].logprobs.top_logprobs[0] == a.choices[0].logprobs.top_logprobs[0]
    # banned for every step: the token never appears in a longer greedy answer
    c = cl.completions.create(model=SMOL_NAME, prompt=prompt, max_tokens=12, temperature=0,
                              logprobs=1, logit_bias={str(id1[0]): -100})
    assert t1 not in c.choices[0].logprobs.tokens
    # +100 forces a token, through chat too
    idb = smol_tok.encode(" banana", add_special_tokens=False).ids
    assert len(idb) == 1
    d = chat(cl, SMOL_NAME, [{"role": "user", "content": "Name a colour."}], max_tokens=6,
             temperature=0, logit_bias={str(idb[0]): 100})
    assert d.content == " banana" * 6 and d.finish == "length"
    # sampled, not only greedy: a banned token is never drawn at temperature 2
    e = cl.completions.create(model=SMOL_NAME, prompt=prompt, max_tokens=1, temperature=2.0,
                              seed=3, n=16, logit_bias={str(id1[0]): -100})
    assert all(ch.text != t1 for ch in e.choices)


# ---- 2. completions: text prompt and token-id prompt ----

def test_completions_text_and_ids(smol):
    cl = smol.client()
    g = EXPECTED["greedy"][0]  # "The capital of France is", llama.cpp's ids
    a = cl.completions.create(model=SMOL_NAME, prompt=g["prompt"], max_tokens=10, temperature=0)
    b = cl.completions.create(model=SMOL_NAME, prompt=g["prompt_ids"], max_tokens=10,
                              temperature=0)
    assert a.object == "text_completion"
    assert a.choices[0].text and a.choices[0].text == b.choices[0].text
    assert a.choices[0].finish_reason == b.choices[0].finish_reason == "length"
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(g["prompt_ids"])
    assert a.usage.completion_tokens == b.usage.completion_tokens == 10
    # streamed: the same text
    s = "".join(c.choices[0].text for c in cl.completions.create(
        model=SMOL_NAME, prompt=g["prompt_ids"], max_tokens=10, temperature=0, stream=True)
        if c.choices)
    assert s == a.choices[0].text


# ---- 3. stop strings ----

def test_stop_string_scripted(content_srv):
    sc = SCRIPTED["stop_string_case"]
    case = next(m for m in SCRIPTED["models"] if m["file"] == sc["file"])["cases"][0]
    cl = content_srv.client()
    for stream in (False, True):
        g = chat(cl, "scripted-content", case["messages"], stream=stream, stop=sc["stop"],
                 max_tokens=32, temperature=0)
        assert g.content == sc["text"] == "Hello from the scripted model."
        assert g.finish == "stop"
    # completions too, with the stop as a plain string
    r = cl.completions.create(model="scripted-content", prompt=case["prompt_ids"], stop=" STOP",
                              max_tokens=32, temperature=0)
    assert r.choices[0].text == sc["text"] and r.choices[0].finish_reason == "stop"


def test_stop_string_across_token_boundary(smol):
    base = solo_greedy(smol, SMOL_NAME, CHAT1, 24)
    toks = base.token_texts()
    assert "".join(toks) == base.content
    # two consecutive tokens of >= 2 printable ASCII characters each, past the first few
    i = next(i for i in range(3, len(toks) - 2)
             if len(toks[i].strip()) >= 2 and len(toks[i + 1]) >= 2
             and toks[i].isascii() and toks[i + 1].isascii()
             and toks[i].isprintable() and toks[i + 1].isprintable())
    stop = toks[i][-2:] + toks[i + 1][:2]
    cut = base.content.find(stop)
    assert 0 <= cut <= len("".join(toks[:i + 1])) - 2
    expected = base.content[:cut]
    cl = smol.client()
    for stream in (False, True):
        g = chat(cl, SMOL_NAME, CHAT1, stream=stream, stop=[stop], max_tokens=24, temperature=0)
        assert stop not in g.content
        assert g.content == expected, f"stop {stop!r} (tokens {toks[i]!r} {toks[i + 1]!r})"
        assert g.finish == "stop"


# ---- 4. seeded sampling ----

def test_seeded_sampling(smol):
    cl = smol.client()
    kw = dict(max_tokens=16, temperature=0.8)
    a = chat(cl, SMOL_NAME, POEM, seed=123, **kw)
    b = chat(cl, SMOL_NAME, POEM, seed=123, **kw)
    c = chat(cl, SMOL_NAME, POEM, seed=4242, **kw)
    assert a.content == b.content
    assert a.content != c.content, "a different seed gave the same 16 sampled tokens"
    # a seeded request sampled next to others: the same tokens as alone
    cl2 = smol.client()
    together = run_concurrently(
        [lambda: chat(cl2, SMOL_NAME, POEM, seed=123, **kw)] +
        [lambda i=i: chat(cl2, SMOL_NAME, other_messages(i), seed=i, **kw) for i in range(3)])
    assert together[0].content == a.content


# ---- 5 and 8. batch invariance: alone == concurrently ----

def other_messages(i):
    topics = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "trains", "glass",
              "music", "rain", "paper", "salt", "clocks", "maps", "ice", "wind", "copper",
              "owls", "tea", "bridges", "comets", "sand", "wool", "lamps", "frogs", "stone",
              "sugar", "kites", "coral", "honey", "ink", "snow"]
    return [{"role": "user", "content": f"Tell me one fact about {topics[i % len(topics)]}."}]


def test_greedy_alone_equals_concurrent_smollm2(smol):
    probes = [CHAT0, CHAT1, EXPECTED["chat"][2]["messages"], other_messages(0)]
    n_tok = 12
    alone = [solo_greedy(smol, SMOL_NAME, m, n_tok) for m in probes]
    batch = probes + [other_messages(i) for i in range(1, 13)]
    assert len(batch) == 16
    cl = smol.client()
    together = run_concurrently([lambda m=m: chat(cl, SMOL_NAME, m, max_tokens=n_tok, **GREEDY)
                                 for m in batch])
    for k, (a, t) in enumerate(zip(alone, together)):
        print(f"probe {k}: max |logprob diff| alone vs concurrent {max_lp_diff(a, t):.3g}")
    for k, (a, t) in enumerate(zip(alone, together)):
        assert t.token_texts() == a.token_texts(), explain_mismatch(a, t, f"probe {k}")
        assert t.content == a.content
    # batch-invariant kernels give bit-identical logits, hence identical logprobs
    for k, (a, t) in enumerate(zip(alone, together)):
        assert max_lp_diff(a, t) == 0.0, (
            f"probe {k}: same tokens, but logprobs differ by up to {max_lp_diff(a, t):.3g}: "
            "the kernels are not batch-invariant")


def test_greedy_alone_equals_concurrent_tiny(tiny):
    cl = tiny.client()
    batch = [other_messages(i) for i in range(16)]
    alone = [chat(cl, "llama-a-f32", m, max_tokens=16, **GREEDY) for m in batch]
    together = run_concurrently([lambda m=m: chat(cl, "llama-a-f32", m, max_tokens=16, **GREEDY)
                                 for m in batch])
    for k, (a, t) in enumerate(zip(alone, together)):
        assert t.token_texts() == a.token_texts(), explain_mismatch(a, t, f"request {k}")
        assert t.content == a.content
        assert max_lp_diff(a, t) == 0.0, explain_mismatch(a, t, f"request {k}")


def test_32_concurrent_streams(tiny):
    n = 32
    msgs = [other_messages(i) + [{"role": "assistant", "content": "Sure."},
                                 {"role": "user", "content": f"Again, number {i}."}]
            for i in range(n)]
    cl = tiny.client()
    alone = [chat(cl, "llama-a-f32", m, max_tokens=16, **GREEDY) for m in msgs]

    async def one(acl, m):
        g = Gen()
        stream = await acl.chat.completions.create(model="llama-a-f32", messages=m, stream=True,
                                                   max_tokens=16, **GREEDY)
        async for ch in stream:
            if ch.choices:
                c = ch.choices[0]
                g.content += c.delta.content or ""
                if c.logprobs is not None:
                    g.tokens += lp_entries(c.logprobs.content)
                if c.finish_reason:
                    g.finish = c.finish_reason
        return g

    async def all_streams():
        async with tiny.async_client() as acl:
            return await asyncio.gather(*(one(acl, m) for m in msgs))

    got = asyncio.run(all_streams())
    for k, (a, g) in enumerate(zip(alone, got)):
        assert g.finish == a.finish and g.finish in ("stop", "length"), f"stream {k}"
        assert g.token_texts() == a.token_texts(), explain_mismatch(a, g, f"stream {k}")
        assert g.content == a.content, f"stream {k}"
        assert max_lp_diff(a, g) == 0.0, explain_mismatch(a, g, f"stream {k}")
    assert tiny.wait_metric("tandem_kv_blocks_used", lambda v: v == 0) == 0


def test_metrics_count_a_request(tiny):
    before = tiny.metrics()
    r = tiny.client().chat.completions.create(model="llama-a-f32", messages=other_messages(3),
                                              max_tokens=5, temperature=0,
                                              extra_body={"ignore_eos": True})
    # the engine's gauges and counters are a snapshot taken after each step: the response can
    # come a moment before it
    gen0 = metric_value(before, "tandem_generation_tokens_total")
    tiny.wait_metric("tandem_generation_tokens_total", lambda v: v >= gen0 + 5, timeout=2)
    tiny.wait_metric("tandem_kv_blocks_used", lambda v: v == 0, timeout=2)
    after = tiny.metrics()

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert r.choices[0].finish_reason == "length"
    assert delta("tandem_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("tandem_generation_tokens_total") == 5
    assert delta("tandem_request_success_total", finished_reason="length") == 1
    assert delta("tandem_request_success_total", finished_reason="stop") == 0
    assert delta("tandem_time_to_first_token_seconds_count") == 1
    assert delta("tandem_e2e_request_latency_seconds_count") == 1
    assert delta("tandem_inter_token_latency_seconds_count") == 4
    assert delta("tandem_http_requests_total", route="/v1/chat/completions", code="200") == 1
    assert metric_value(after, "tandem_kv_blocks_used") == 0
    assert metric_value(after, "tandem_kv_blocks_total") == (
        metric_value(after, "tandem_kv_blocks_free") + metric_value(after, "tandem_kv_blocks_used"))
    assert metric_value(after, "tandem_requests_running") == 0
    assert metric_value(after, "tandem_requests_waiting") == 0


# ---- 6. logprobs ----

def test_logprobs_shape(smol):
    cl = smol.client()
    g = chat(cl, SMOL_NAME, CHAT1, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    assert len(g.tokens) == 8 == g.usage.completion_tokens
    entries = g.response.choices[0].logprobs.content
    for tok, lp, tops in g.tokens:
        assert lp <= 0.0
        assert len(tops) == 5
        assert tops[0][0] == tok and tops[0][1] == pytest.approx(lp, abs=1e-6), \
            "greedy: the chosen token is the most likely"
        assert all(tops[j][1] >= tops[j + 1][1] for j in range(4)), f"not sorted: {tops}"
        assert all(t[1] <= 0.0 for t in tops)
        assert sum(2.718281828459045 ** t[1] for t in tops) <= 1.0 + 1e-4
        assert len({t[0] for t in tops}) == 5
    for e in entries:
        if "\ufffd" not in e.token:
            assert bytes(e.bytes) == e.token.encode("utf-8")
    # logprobs without top_logprobs: empty lists
    g0 = chat(cl, SMOL_NAME, CHAT1, max_tokens=3, temperature=0, logprobs=True)
    assert all(tops == [] for _, _, tops in g0.tokens)
    assert g0.token_texts() == g.token_texts()[:3]
    # no logprobs requested: none returned
    g1 = chat(cl, SMOL_NAME, CHAT1, max_tokens=3, temperature=0)
    assert g1.response.choices[0].logprobs is None

    # completions: the legacy format with logprobs=3
    r = cl.completions.create(model=SMOL_NAME, prompt=EXPECTED["greedy"][0]["prompt"],
                              max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    off = 0
    for tok, l, tops, o in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
        assert o == off
        off += len(tok)
        assert l <= 0 and len(tops) == 3
        best = max(tops, key=tops.get)
        assert best == tok and tops[best] == pytest.approx(l, abs=1e-6)


# ---- 7. tools and reasoning on the scripted models ----

TOOL = SCRIPTED["tool"]


def scripted_case(file, name):
    m = next(m for m in SCRIPTED["models"] if m["file"] == file)
    return next(c for c in m["cases"] if c["name"] == name)


def raw_reasoning(case):
    """The text between the tags of the script, kept exactly (api/parse/reasoning.h: as vLLM
    does, the reasoning is not stripped; scripted.json's `parsed` holds it stripped)."""
    text = case["text"]
    if "<think>" not in text:
        return ""
    return text.split("<think>", 1)[1].split("</think>", 1)[0]


def check_tool_result(g, parsed, case=None):
    assert g.finish == "tool_calls"
    assert len(g.tool_calls) == len(parsed["tool_calls"]) == 1
    tc = g.tool_calls[0]
    assert tc["name"] == parsed["tool_calls"][0]["name"] == "get_weather"
    assert json.loads(tc["arguments"]) == parsed["tool_calls"][0]["arguments"] == \
        {"city": "Paris", "days": 3}
    assert tc["id"] and tc["type"] == "function"
    assert (g.content or "") == parsed["content"] == ""
    assert (g.reasoning or "").strip() == parsed["reasoning_content"]
    if case is not None:
        assert (g.reasoning or "") == raw_reasoning(case)


@pytest.mark.parametrize("case_name", ["think_tools", "no_think_tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tool_call_hermes(hermes, case_name, stream):
    case = scripted_case("scripted-hermes.gguf", case_name)
    g = chat(hermes.client(), "scripted-hermes", case["messages"], stream=stream, tools=[TOOL],
             max_tokens=32, temperature=0,
             extra_body={"chat_template_kwargs": {k: v for k, v in case["template_kwargs"].items()
                                                  if k != "tools"}})
    assert g.usage.prompt_tokens == len(case["prompt_ids"])
    check_tool_result(g, case["parsed"], case)
    if not stream:
        assert g.content is None or g.content == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tool_call_qwen3coder(qwen3coder, stream):
    case = scripted_case("scripted-qwen3coder.gguf", "tools")
    g = chat(qwen3coder.client(), "scripted-qwen3coder", case["messages"], stream=stream,
             tools=[TOOL], max_tokens=32, temperature=0)
    assert g.usage.prompt_tokens == len(case["prompt_ids"])
    check_tool_result(g, case["parsed"], case)


def test_tool_call_qwen3coder_types_from_schema(qwen3coder):
    """The XML format carries text; the schema decides the JSON type: days as a string."""
    case = scripted_case("scripted-qwen3coder.gguf", "tools")
    tool = json.loads(json.dumps(TOOL))
    tool["function"]["parameters"]["properties"]["days"]["type"] = "string"
    g = chat(qwen3coder.client(), "scripted-qwen3coder", case["messages"], tools=[tool],
             max_tokens=32, temperature=0)
    assert g.finish == "tool_calls"
    assert json.loads(g.tool_calls[0]["arguments"]) == {"city": "Paris", "days": "3"}


def test_tool_choice_none_and_named(hermes, qwen3coder):
    case = scripted_case("scripted-hermes.gguf", "think_tools")
    cl = hermes.client()
    # "none": the tools are not offered (template rendered without them) and nothing is parsed
    g = chat(cl, "scripted-hermes", case["messages"], tools=[TOOL], tool_choice="none",
             max_tokens=32, temperature=0)
    assert not g.tool_calls
    assert g.finish == "stop"
    assert "<tool_call>" in g.content and "get_weather" in g.content
    assert g.reasoning == raw_reasoning(case)
    assert g.content == case["text"].split("</think>", 1)[1].lstrip()
    # a named function: the server writes the start of the call, the model completes it
    named = {"type": "function", "function": {"name": "get_weather"}}
    for srv, model in ((hermes, "scripted-hermes"), (qwen3coder, "scripted-qwen3coder")):
        for stream in (False, True):
            g = chat(srv.client(), model, case["messages"], tools=[TOOL], tool_choice=named,
                     stream=stream, max_tokens=32, temperature=0)
            assert g.finish == "tool_calls", (model, stream, g.content)
            assert g.tool_calls[0]["name"] == "get_weather"
            assert json.loads(g.tool_calls[0]["arguments"]) == {"city": "Paris", "days": 3}
    # naming a function that is not in tools: 400
    with pytest.raises(openai.BadRequestError) as ei:
        cl.chat.completions.create(model="scripted-hermes", messages=case["messages"],
                                   tools=[TOOL], max_tokens=4,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})
    assert ei.value.status_code == 400 and ei.value.param == "tool_choice"
    assert ei.value.type == "invalid_request_error"


def test_tool_result_turn(hermes):
    """A second turn after a tool result renders (tool_calls with JSON-text arguments, a tool
    message) and the scripted model answers with its script again."""
    case = scripted_case("scripted-hermes.gguf", "think_tools")
    first = chat(hermes.client(), "scripted-hermes", case["messages"], tools=[TOOL],
                 max_tokens=32, temperature=0)
    tc = first.tool_calls[0]
    msgs = case["messages"] + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": tc["id"], "type": "function",
                         "function": {"name": tc["name"], "arguments": tc["arguments"]}}]},
        {"role": "tool", "tool_call_id": tc["id"], "content": "sunny, 21 C"}]
    g = chat(hermes.client(), "scripted-hermes", msgs, tools=[TOOL], max_tokens=32,
             temperature=0)
    check_tool_result(g, case["parsed"], case)
    assert g.usage.prompt_tokens > first.usage.prompt_tokens


# ---- 10. prefix cache ----

def long_system_prompt():
    colors = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "silver"]
    return "You are a careful archivist. Remember these records.\n" + "\n".join(
        f"Record {i}: box {i * 7 % 101} holds {colors[i % 8]} marbles and {i % 13} keys."
        for i in range(56))


def ttft_stream(cl, messages):
    t0 = time.monotonic()
    ttft = None
    usage = None
    text = ""
    for ch in cl.chat.completions.create(model=SMOL_NAME, messages=messages, stream=True,
                                         max_tokens=3, temperature=0,
                                         stream_options={"include_usage": True}):
        if ttft is None and ch.choices and ch.choices[0].delta.content:
            ttft = time.monotonic() - t0
        if ch.choices:
            text += ch.choices[0].delta.content or ""
        if ch.usage is not None:
            usage = ch.usage
    return ttft, usage, text


def test_prefix_cache(smol, smol_kv, smol_tok):
    system = {"role": "system", "content": long_system_prompt()}
    m1 = [system, {"role": "user", "content": "Which box holds violet marbles?"}]
    m2 = [system, {"role": "user", "content": "How many keys are in record 9?"}]
    n1 = len(smol_prompt_ids(smol_kv, smol_tok, m1))
    n2 = len(smol_prompt_ids(smol_kv, smol_tok, m2))
    # the shared part: the common token prefix of the two prompts
    shared = first_difference(smol_prompt_ids(smol_kv, smol_tok, m1),
                              smol_prompt_ids(smol_kv, smol_tok, m2))
    assert n1 > 1000 and shared > 950
    before = smol.metrics()
    cl = smol.client()
    t1, u1, text1 = ttft_stream(cl, m1)
    t2, u2, _ = ttft_stream(cl, m2)
    after = smol.metrics()
    assert u1.prompt_tokens == n1 and u2.prompt_tokens == n2
    c1 = u1.prompt_tokens_details.cached_tokens
    c2 = u2.prompt_tokens_details.cached_tokens
    assert c1 < 64, f"the first request found {c1} tokens cached"
    assert 900 <= c2 <= shared, f"cached_tokens {c2}, shared prefix {shared}"
    hits = after["tandem_prefix_cache_hits_total"][0][1] - before["tandem_prefix_cache_hits_total"][0][1]
    assert hits >= c2 + c1
    queries = (after["tandem_prefix_cache_queries_total"][0][1]
               - before["tandem_prefix_cache_queries_total"][0][1])
    assert queries >= n1 + n2 - 2
    print(f"TTFT uncached {t1:.3f} s ({n1} tokens), cached {t2:.3f} s ({c2} cached)")
    assert t2 * 3 < t1, f"TTFT with {c2} cached tokens {t2:.3f} s vs {t1:.3f} s uncached"
    # the first prompt again, now (almost) all cached: the same greedy tokens
    _, u3, text3 = ttft_stream(cl, m1)
    assert u3.prompt_tokens_details.cached_tokens >= n1 - 16
    assert text3 == text1


@pytest.fixture(scope="module")
def tiny_small_kv(tandem_bin):
    """64 KV blocks of 16 tokens: eight 300-token sequences need more, so some are preempted."""
    srv = ServeProcess(TINY, "--ctx-size", "512", "--kv-memory", "2M")
    yield srv
    srv.stop()


def test_preemption_keeps_outputs(tiny_small_kv):
    s = tiny_small_kv
    cl = s.client()
    kw = dict(max_tokens=280, temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    msgs = [other_messages(i) for i in range(8)]
    alone = [chat(cl, "llama-a-f32", m, **kw) for m in msgs]
    p0 = s.metric("tandem_preemptions_total")
    together = run_concurrently([lambda m=m: chat(cl, "llama-a-f32", m, **kw) for m in msgs])
    assert s.metric("tandem_preemptions_total") > p0, "no preemption: the test needs one"
    for k, (a, t) in enumerate(zip(alone, together)):
        assert t.finish == "length" and t.usage.completion_tokens == 280
        assert t.token_texts() == a.token_texts(), explain_mismatch(a, t, f"request {k}")
        assert max_lp_diff(a, t) == 0.0, explain_mismatch(a, t, f"request {k}")
    assert s.wait_metric("tandem_kv_blocks_used", lambda v: v == 0) == 0


# ---- 16. /tokenize and /detokenize ----

def test_tokenize_detokenize(smol, smol_tok):
    corpus = [json.loads(l) for l in (FIXTURES / "tokenizers" / "corpus.jsonl").open()]
    lines = (FIXTURES / "tokenizers" / "smollm2-expected.jsonl").read_text().splitlines()
    expected = [json.loads(l) for l in lines[1:]]
    picks = [i for i, c in enumerate(corpus) if c["text"] and len(c["text"]) < 400]
    picks = picks[::max(1, len(picks) // 40)]
    picks += [i for i, c in enumerate(corpus) if "<|im_start|>" in c["text"]][:3]
    texts = ["Hello, world!", "  leading spaces and 12345 digits", "héllo wörld ✓ 🙂",
             "<|im_start|>user\nhi<|im_end|>\n"]
    for t in texts:
        r = smol.tokenize(t)
        assert r["tokens"] == smol_tok.encode(t, add_special_tokens=False).ids, t
        assert r["count"] == len(r["tokens"])
    for i in picks:
        text = corpus[i]["text"]
        r = smol.tokenize(text)
        assert r["tokens"] == expected[i]["ids_special"], repr(text)
        d = smol.post("/detokenize", {"tokens": r["tokens"]})
        assert d.status_code == 200, d.text
        assert d.json()["prompt"] == text, repr(text)
    for t in texts:
        ids = smol.tokenize(t)["tokens"]
        assert smol.post("/detokenize", {"tokens": ids}).json()["prompt"] == t
    assert smol.post("/detokenize", {"tokens": []}).json()["prompt"] == ""
    # add_special_tokens false: SmolLM2 adds no BOS anyway, so the same ids
    assert smol.tokenize("Hello", add_special_tokens=False)["tokens"] == \
        smol_tok.encode("Hello", add_special_tokens=False).ids


# ---- 17. /v1/models and n ----

def test_models_and_n(smol, smol_kv, tiny):
    cl = smol.client()
    models = cl.models.list().data
    assert [m.id for m in models] == [SMOL_NAME]
    expect_ctx = min(smol_kv["llama.context_length"], 8192)
    assert models[0].model_extra["max_model_len"] == expect_ctx
    assert [m.id for m in tiny.client().models.list().data] == ["llama-a-f32"]
    assert tiny.client().models.list().data[0].model_extra["max_model_len"] == 4096

    r = cl.chat.completions.create(model=SMOL_NAME, messages=POEM, n=3, temperature=1.0,
                                   seed=11, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3, texts
    if all(c.finish_reason == "length" for c in r.choices):
        assert r.usage.completion_tokens == 3 * 8
    # the same seed again: the same three
    r2 = cl.chat.completions.create(model=SMOL_NAME, messages=POEM, n=3, temperature=1.0,
                                    seed=11, max_tokens=8)
    assert [c.message.content for c in r2.choices] == texts
    # streamed n=2: chunks carry both indices
    seen = {}
    for ch in cl.chat.completions.create(model=SMOL_NAME, messages=POEM, n=2, temperature=1.0,
                                         seed=11, max_tokens=8, stream=True):
        for c in ch.choices:
            seen[c.index] = seen.get(c.index, "") + (c.delta.content or "")
    assert seen == {0: texts[0], 1: texts[1]}
