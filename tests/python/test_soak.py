"""A short soak (issue 16, item 3): bench/soak.py for tens of seconds against one node and
against 2 shard processes. Mixed traffic (chat, streamed chat, completions, tools, stop strings,
logprobs, abandoned streams, malformed and refused requests): no request may get another status
than its kind expects, resident memory stays flat under load after the warm-up (10% in these
short runs: a 60 MB coordinator's malloc arenas still settle; 5% in the long runs), open file
descriptors return to their idle count, KV blocks held by requests return to 0, and every
process exits 0 on SIGTERM. The 10-minute runs are in docs/benchmarks.md; tools/test.sh also
runs a short soak against the ASan + UBSan build.
"""
import json
import subprocess
import sys

import pytest

from conftest import SOURCE_DIR, TANDEM_BIN

SOAK = SOURCE_DIR / "bench" / "soak.py"


@pytest.mark.parametrize("shards,streams,duration", [(0, 16, 40), (2, 8, 30)])
def test_soak_short(default_model, shards, streams, duration):
    p = subprocess.run([sys.executable, str(SOAK), "--tandem", str(TANDEM_BIN), "--model",
                        str(default_model), "--streams", str(streams), "--duration",
                        str(duration), "--sample", "5", "--warmup", "15", "--shards",
                        str(shards), "--rss-tolerance", "0.10"],
                       capture_output=True, text=True, timeout=duration + 400)
    assert p.stdout.strip(), p.stderr[-3000:]
    r = json.loads(p.stdout)
    print(json.dumps({k: r.get(k) for k in ("requests", "by_kind", "growth_after_warmup",
                                            "kv_blocks_used_end")}))
    assert r["requests"] > 50, r
    assert r["unexpected"] == 0, r["unexpected_examples"]
    assert r["kv_blocks_used_end"] == 0, r
    assert r["flat"], r["growth_after_warmup"]
    assert all(v == 0 for v in r["exit_status"].values()), r["exit_status"]
    assert r["ok"] and p.returncode == 0, r
