"""The context `tandem serve` picks without --ctx-size: the model's trained context when the
memory plan holds one such sequence plus a batch, else what fits (docs/serving.md).

The 64K model is the scripted content model (tests/fixtures/scripted) with its
llama.context_length rewritten to 65536 by the `gguf` package, the only change, made in a
temporary folder: a one-layer model whose 40K-token prefill takes seconds. Oracles: the GGUF's
metadata (trained context; KV bytes per token = 2 x layers x kv heads x key length x 4 bytes
for the CPU's f32 cache), OpenAI's error shape, and the SDK's usage.
"""
import shutil

import openai
import pytest

from conftest import FIXTURES
from serve_util import ServeProcess, read_gguf_kv

BATCH = 512  # tandem serve's default --batch
TOOLS = [{"type": "function", "name": f"tool_{i}", "description": "An agent tool. " * 20,
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}
         for i in range(8)]


@pytest.fixture(scope="module")
def model_64k(tmp_path_factory):
    gguf = pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("ctx") / "ctx64k.gguf"
    shutil.copy(FIXTURES / "scripted" / "scripted-content.gguf", path)
    r = gguf.GGUFReader(str(path), "r+")
    r.fields["llama.context_length"].parts[-1][0] = 65536
    del r
    assert read_gguf_kv(path)["llama.context_length"] == 65536
    return path


def max_model_len(srv):
    return srv.get("/v1/models").json()["data"][0]["max_model_len"]


def test_trained_context_by_default(tandem_bin, model_64k):
    """An agent-sized prompt (instructions, tools, 40K tokens) is served with no option."""
    srv = ServeProcess(model_64k)
    try:
        assert max_model_len(srv) == 65536
        assert "context: 65536 tokens, the model's trained context" in srv.stderr()
        cl = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=600)
        prompt = "word " * 20000  # two tokens a word
        r = cl.responses.create(model="ctx64k", instructions="You are a coding agent.",
                                input=prompt, tools=TOOLS, max_output_tokens=2)
        assert 40000 <= r.usage.input_tokens < 65536
        assert r.usage.output_tokens == 2 and r.status == "incomplete"
        # more than the trained context: refused, not cut
        with pytest.raises(openai.BadRequestError) as ei:
            cl.responses.create(model="ctx64k", input="word " * 33000, max_output_tokens=2)
        assert ei.value.body["code"] == "context_length_exceeded"
        assert "65536" in ei.value.body["message"]
    finally:
        srv.stop()


def test_kv_memory_bounds_the_default(tandem_bin, model_64k):
    """With --kv-memory the context is what that budget holds beside one batch."""
    kv = read_gguf_kv(model_64k)
    per_token = 2 * kv["llama.block_count"] * kv["llama.attention.head_count_kv"] * \
        kv["llama.attention.key_length"] * 4
    budget = 4 << 20
    srv = ServeProcess(model_64k, "--kv-memory", str(budget))
    try:
        want = (budget // per_token - BATCH) // 16 * 16
        assert max_model_len(srv) == want
        assert f"context: {want} tokens, the most it holds" in srv.stderr()
    finally:
        srv.stop()


def test_short_trained_context_unchanged(tandem_bin):
    srv = ServeProcess(FIXTURES / "scripted" / "scripted-content.gguf")
    try:
        assert max_model_len(srv) == 4096
        assert "context: 4096 tokens, the model's trained context" in srv.stderr()
        # the KV cache keeps the old default, 4 x the context
        assert "KV cache 16384 tokens" in srv.stderr()
    finally:
        srv.stop()
