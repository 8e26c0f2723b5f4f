"""Engine groups behind one `tandem serve` (coordinator/router.h): replicas as shard
processes on loopback, prefix-aware routing against the round-robin baseline, and a replica
killed under load. The model is the tiny llama-a fixture (token-id prompts on
/v1/completions), so 2K-token prompts cost milliseconds and the test stays fast on 2 cores.

Prefix routing: 8 agents, each with its own 2048-token system prompt, do 4 turns each
against 2 replicas (one `tandem shard` each); turn t's prompt is turn t-1's plus the agent's
new 24-token message. The turns of all agents run side by side, arriving in a shuffled
order every turn (a seeded RNG; each request is routed before the next is sent, so the
order, and round-robin's choices, are the same on every run), as independent agents'
turns interleave. The
oracle is the servers' own accounting of cached prompt tokens per group (/metrics,
tandem_group_cached_tokens_total against tandem_group_prompt_tokens_total), cross-checked
with the per-response usage (prompt_tokens_details.cached_tokens): after the first turn
>= 90% of the agents' prompt tokens must come from the cache with prefix routing, and the
round-robin baseline, measured in the same test on the same shards, must be clearly lower
(it lands an agent on either replica regardless of where its prefix is).

Faults: 8 long streams spread over the 2 replicas by load, then kill -9 of one replica's shard: the
streams it served end with an error naming the shard within 5 s, the others complete, /health
says degraded (200: the survivor serves), new requests all go to the survivor, and the
restarted shard rejoins (its group is up again and takes requests).
"""
import json
import random
import threading
import time

import httpx2 as httpx
import pytest

from dist_util import ShardProcess
from serve_util import ServeProcess, metric_value, parse_metrics

from conftest import FIXTURES

MODEL = FIXTURES / "models" / "llama-a-f32.gguf"
N_AGENTS = 8
N_TURNS = 4
SYSTEM_TOKENS = 2048
TURN_TOKENS = 24
# per replica: 768 blocks of 16 tokens (llama-a, f32 K and V: 2 KiB a token), room for
# about 5 agents' conversations; prefix routing keeps 4 on each replica, round-robin makes
# each replica cache all 8 and evict
KV_MEMORY = "24M"


def _tokens(rng, n):
    return [rng.randrange(3, 370) for _ in range(n)]  # below the fixture's special ids


def _cluster_file(tmp_path, shards):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"groups": [{"name": f"r{i}", "shards": [s.addr], "tp": 1}
                                           for i, s in enumerate(shards)]}))
    return path


@pytest.fixture
def replicas():
    shards = []
    try:
        for _ in range(2):
            shards.append(ShardProcess(MODEL, tls="tcp", threads=1))
        yield shards
    finally:
        for s in shards:
            s.stop()


def _serve(cluster, *extra):
    return ServeProcess(MODEL, "--cluster", cluster, "--ctx-size", "4096", "--max-running", "16",
                        "--shard-timeout-ms", "1500", "--collective-timeout-ms", "5000", *extra)


def _group_counts(srv):
    m = parse_metrics(srv.get("/metrics").text)
    out = {}
    for g in ("r0", "r1"):
        out[g] = {k: metric_value(m, f"tandem_group_{k}_total", group=g)
                  for k in ("routed_requests", "prompt_tokens", "cached_tokens")}
    return out


def _n_routed(srv):
    m = parse_metrics(srv.get("/metrics").text)
    return metric_value(m, "tandem_group_routed_requests_total")


def _swarm(srv, systems, seed):
    """8 agents x 4 turns; returns (cached share of prompt tokens after turn 1, counts)."""
    rng = random.Random(seed)
    prompts = list(systems)
    usage_prompt = usage_cached = 0
    before = None
    for turn in range(N_TURNS):
        if turn == 1:
            before = _group_counts(srv)
        prompts = [p + _tokens(rng, TURN_TOKENS) for p in prompts]
        results = [None] * N_AGENTS
        order = list(range(N_AGENTS))
        rng.shuffle(order)

        def one(a):
            r = srv.post("/v1/completions", {"prompt": prompts[a], "max_tokens": 8,
                                             "temperature": 0}, timeout=300)
            assert r.status_code == 200, r.text
            results[a] = r.json()["usage"]

        threads = []
        for a in order:  # arrival order shuffled every turn; each routed before the next
            routed = _n_routed(srv)
            t = threading.Thread(target=one, args=(a,))
            t.start()
            threads.append(t)
            t_end = time.monotonic() + 30
            while _n_routed(srv) == routed and time.monotonic() < t_end:
                time.sleep(0.005)
        for t in threads:
            t.join()
        for u in results:
            assert u is not None
            if turn > 0:
                usage_prompt += u["prompt_tokens"]
                usage_cached += u["prompt_tokens_details"]["cached_tokens"]
    after = _group_counts(srv)
    d = {k: sum(after[g][k] - before[g][k] for g in after)
         for k in ("routed_requests", "prompt_tokens", "cached_tokens")}
    assert d["routed_requests"] == N_AGENTS * (N_TURNS - 1), (before, after)
    assert d["prompt_tokens"] == usage_prompt, (d, usage_prompt)
    assert d["cached_tokens"] == usage_cached, (d, usage_cached)
    # both replicas served: the first turn spreads cold prompts by load
    assert all(after[g]["routed_requests"] > 0 for g in after), after
    return d["cached_tokens"] / d["prompt_tokens"], after


def test_prefix_routing_beats_round_robin(replicas, tmp_path):
    cluster = _cluster_file(tmp_path, replicas)
    rng = random.Random(14)
    systems = [_tokens(rng, SYSTEM_TOKENS) for _ in range(N_AGENTS)]
    share = {}
    for routing in ("round-robin", "prefix"):
        srv = _serve(cluster, "--routing", routing, "--kv-memory", KV_MEMORY)
        try:
            h = srv.get("/health").json()
            assert h["status"] == "ok" and h["routing"] == routing, h
            assert [g["name"] for g in h["groups"]] == ["r0", "r1"]
            # a new coordinator starts with empty prefix caches: same prompts, same seed
            share[routing], counts = _swarm(srv, systems, seed=7)
            print(f"{routing}: {100 * share[routing]:.1f}% of prompt tokens after turn 1 "
                  f"cached; per group {counts}")
        finally:
            srv.stop()
    assert share["prefix"] >= 0.90, share
    assert share["round-robin"] <= share["prefix"] - 0.2, share


def _stream(srv, content, max_tokens, out, i, started):
    body = {"prompt": content, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    events, err, finish = 0, None, None
    try:
        with httpx.stream("POST", srv.url + "/v1/completions", json=body,
                          timeout=60) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    err = (time.monotonic(), obj["error"]["message"])
                    break
                events += 1
                if events == 3:
                    started.release()
                for c in obj.get("choices", []):
                    finish = c.get("finish_reason") or finish
    finally:
        if events < 3:
            started.release()
        out[i] = {"events": events, "error": err, "finish": finish}


def _wait_health(srv, pred, timeout):
    t_end = time.monotonic() + timeout
    while True:
        r = srv.get("/health", timeout=5)
        if pred(r) or time.monotonic() > t_end:
            return r
        time.sleep(0.1)


def replica_kill_under_load(srv, replicas):
    """8 streams over the 2 replicas of srv (groups r0, r1), kill -9 of r1's shard, then
    the checks of the module docstring (also run in network namespaces:
    test_distributed_netns.py)."""
    rng = random.Random(5)

    def complete(prompt):
        r = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    n = 8
    out = [None] * n
    started = threading.Semaphore(0)
    pre = _group_counts(srv)
    threads = [threading.Thread(target=_stream,
                                args=(srv, _tokens(rng, 64), 1500, out, i, started))
               for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for _ in range(n):
        assert started.acquire(timeout=120), "streams did not start"
    c0 = _group_counts(srv)
    on = {g: c0[g]["routed_requests"] - pre[g]["routed_requests"] for g in c0}
    on_r1 = on["r1"]
    assert on["r0"] + on_r1 == n and 0 < on_r1 < n, (pre, c0)  # spread by load
    replicas[1].kill9()
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=120)
    errors = [o for o in out if o["error"] is not None]
    done = [o for o in out if o["error"] is None]
    # the dead replica's streams error, promptly and saying why; the survivor's finish
    assert len(errors) == on_r1, (on_r1, out)
    for o in errors:
        assert o["error"][0] - killed_at < 5.0, (o, killed_at)
        assert "shard" in o["error"][1], o
    assert all(o["finish"] == "length" for o in done), out

    # degraded, not down: 200 with the dead group named
    r = _wait_health(srv, lambda r: r.json()["status"] == "degraded", 5)
    h = r.json()
    assert r.status_code == 200 and h["status"] == "degraded", h
    assert [g["up"] for g in h["groups"]] == [True, False], h
    assert "r1" in h["error"] and replicas[1].addr in h["error"], h
    models = srv.get("/v1/models").json()["data"][0]["groups"]
    assert [(g["name"], g["up"]) for g in models] == [("r0", True), ("r1", False)], models
    # new requests all go to the survivor
    c1 = _group_counts(srv)
    for i in range(4):
        r = srv.post("/v1/completions",
                     {"prompt": _tokens(rng, 40), "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
    c2 = _group_counts(srv)
    assert c2["r0"]["routed_requests"] - c1["r0"]["routed_requests"] == 4, (c1, c2)
    assert c2["r1"]["routed_requests"] == c1["r1"]["routed_requests"], (c1, c2)
    m = parse_metrics(srv.get("/metrics").text)
    assert metric_value(m, "tandem_group_up", group="r1") == 0
    assert metric_value(m, "tandem_shard_group_ready", group="r1") == 0

    # the same command brings the replica back; its group rejoins and takes requests
    replicas[1].start()
    r = _wait_health(srv, lambda r: r.json()["status"] == "ok", 30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    for i in range(4):  # cold prompts on idle replicas: spread over both
        r = srv.post("/v1/completions",
                     {"prompt": _tokens(rng, 40), "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
    c3 = _group_counts(srv)
    assert c3["r1"]["routed_requests"] > c2["r1"]["routed_requests"], (c2, c3)
    assert srv.alive()

    # r1 dies idle (no step fails there, its engine never notices) with a prompt cached on
    # it, which then gets cached on r0 too; r1 re-forms with an empty cache: what it
    # published before is void, so the prompt goes to r0 (not to r1 on a tie of two hits)
    warm = None
    for _ in range(4):  # cold prompts on idle replicas alternate
        p, before = _tokens(rng, 200), _group_counts(srv)["r1"]["routed_requests"]
        complete(p)
        if _group_counts(srv)["r1"]["routed_requests"] > before:
            warm = p
            break
    assert warm is not None
    replicas[1].kill9()
    r = _wait_health(srv, lambda r: r.json()["status"] == "degraded", 5)
    assert r.json()["status"] == "degraded", r.text
    assert complete(warm + _tokens(rng, 5)) == 0  # on r0 now
    replicas[1].start()
    r = _wait_health(srv, lambda r: r.json()["status"] == "ok", 30)
    assert r.json()["status"] == "ok", r.text
    for _ in range(3):
        assert complete(warm + _tokens(rng, 5)) >= 192
    print(f"kill -9 -> {len(errors)} streams ended with an error after at most "
          f"{max(o['error'][0] for o in errors) - killed_at:.3f} s")


def test_replica_killed_under_load(replicas, tmp_path):
    srv = _serve(_cluster_file(tmp_path, replicas))
    try:
        replica_kill_under_load(srv, replicas)
    finally:
        srv.kill()


def test_local_groups(tmp_path):
    """Groups without shards are engines in the server's process: a repeated prompt returns
    to the group that cached it, cold prompts spread, /v1/models lists the groups."""
    path = tmp_path / "local.json"
    path.write_text(json.dumps({"groups": [{"name": "a"}, {"name": "b"}]}))
    srv = ServeProcess(MODEL, "--cluster", path, "--ctx-size", "1024", "--threads", "1")
    try:
        h = srv.get("/health").json()
        assert h["status"] == "ok" and [g["kind"] for g in h["groups"]] == ["local", "local"], h
        models = srv.get("/v1/models").json()["data"][0]["groups"]
        assert models == [{"name": "a", "role": "mixed", "up": True},
                          {"name": "b", "role": "mixed", "up": True}], models
        rng = random.Random(3)
        warm = _tokens(rng, 300)
        cached = []
        for i in range(3):
            r = srv.post("/v1/completions", {"prompt": warm + _tokens(rng, 5), "max_tokens": 2,
                                             "temperature": 0})
            assert r.status_code == 200, r.text
            cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert cached[0] == 0 and cached[1] >= 288 and cached[2] >= 288, cached
        m = parse_metrics(srv.get("/metrics").text)
        routed = [metric_value(m, "tandem_group_routed_requests_total", group=g) for g in "ab"]
        assert sorted(routed) == [0, 3], routed  # all three where the prefix is
        for i in range(4):  # cold prompts on idle groups: spread
            r = srv.post("/v1/completions", {"prompt": _tokens(rng, 20), "max_tokens": 2,
                                             "temperature": 0})
            assert r.status_code == 200, r.text
        m = parse_metrics(srv.get("/metrics").text)
        after = [metric_value(m, "tandem_group_routed_requests_total", group=g) for g in "ab"]
        assert min(after) > 0 and sum(after) == 7, (routed, after)
        assert metric_value(m, "tandem_group_cached_tokens_total") == sum(cached)
    finally:
        srv.stop()


def test_cluster_groups_refused(tandem_bin, tmp_path):
    """Bad group files fail at start with a message naming the cause."""
    cases = [
        ({"groups": [{"name": "p", "shards": ["127.0.0.1:1"], "role": "prefill"}]},
         "as many \"prefill\" groups as \"decode\" groups"),
        ({"groups": [{"name": "p", "shards": ["127.0.0.1:1"], "role": "prefill"},
                     {"name": "d", "role": "decode"}]}, "a \"decode\" group needs \"shards\""),
        ({"groups": [{"name": "x", "role": "both"}]}, "unknown group role 'both'"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "must be unique"),
        ({"groups": [{"name": "a", "shards": ["127.0.0.1:1", "127.0.0.1:2"], "tp": 3}]},
         "is not the 2 shards named"),
        ({"groups": [{"name": "a", "tp": 2}]}, "need \"shards\""),
        ({"groups": [], "collective": "am"}, "array of 1 to 64"),
        ({"groups": [{"name": "a", "shards": ["127.0.0.1:1"]}], "shards": ["127.0.0.1:2"]},
         "unknown key \"shards\""),
    ]
    import subprocess
    for i, (doc, msg) in enumerate(cases):
        path = tmp_path / f"c{i}.json"
        path.write_text(json.dumps(doc))
        p = subprocess.run([str(tandem_bin), "serve", "--model", str(MODEL), "--cluster",
                            str(path), "--port", "0"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and msg in p.stderr, (doc, p.returncode, p.stderr)
    p = subprocess.run([str(tandem_bin), "serve", "--model", str(MODEL), "--routing",
                        "random"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown routing 'random'" in p.stderr, p.stderr


def test_retry_before_first_token(replicas, tmp_path):
    """A request its replica fails before any token reached the client is retried once on
    the other replica (coordinator/router.h); one that already streamed ends with the
    error. One request runs per replica (--max-running 1). A 600-token prompt is cached on
    one replica (V); a long stream and then three short requests extending that prompt are
    routed there by prefix, the short ones queued behind the stream; kill -9 of V's shard
    ends the stream with the error naming the shard, and the three, which had streamed
    nothing, complete on the other replica."""
    srv = _serve(_cluster_file(tmp_path, replicas), "--max-running", "1")
    try:
        rng = random.Random(11)
        base = _tokens(rng, 600)

        def routed_to(before):
            now = _group_counts(srv)
            moved = [g for g in now if now[g]["routed_requests"] > before[g]["routed_requests"]]
            return moved[0] if moved else None

        c0 = _group_counts(srv)
        r = srv.post("/v1/completions", {"prompt": base, "max_tokens": 1, "temperature": 0})
        assert r.status_code == 200, r.text
        victim = routed_to(c0)
        other = "r1" if victim == "r0" else "r0"
        out = [None] * 4
        started = threading.Semaphore(0)
        threads = []
        for i, n in enumerate((2500, 16, 16, 16)):
            before = _group_counts(srv)
            t = threading.Thread(target=_stream, args=(srv, base + _tokens(rng, 8), n, out, i,
                                                       started if i == 0 else
                                                       threading.Semaphore(0)))
            t.start()
            threads.append(t)
            if i == 0:
                assert started.acquire(timeout=60), "the long stream did not start"
            t_end = time.monotonic() + 30
            while routed_to(before) is None and time.monotonic() < t_end:
                time.sleep(0.005)
            assert routed_to(before) == victim, (i, victim)  # its prefix is there
        on_other = _group_counts(srv)[other]["routed_requests"]
        assert out[0] is None, out  # still streaming: the short ones wait behind it
        replicas[int(victim[1])].kill9()
        for t in threads:
            t.join(timeout=120)
        assert out[0]["error"] is not None and "shard" in out[0]["error"][1], out
        for o in out[1:]:
            assert o["error"] is None and o["finish"] == "length" and o["events"] > 0, out
        assert _group_counts(srv)[other]["routed_requests"] - on_other == 3
        assert srv.alive()
    finally:
        srv.kill()
