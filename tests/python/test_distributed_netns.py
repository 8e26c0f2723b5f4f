"""Distributed serving across real network separation: each shard in its own network
namespace, joined to the coordinator's (the root namespace) by a veth pair on a bridge.

Needs root (CAP_NET_ADMIN) and iproute2; CI runs as root. Without them every test here is
skipped with the reason (a skip, not a pass: the reason says which capability is missing).

Checks: the exactness check of test_distributed.py with 2 and 3 shards over UCX TCP on the
veth devices; and a cut link (the shard's veth set down inside its namespace, so its
traffic is dropped, no reset) ends a streaming request with an error within the liveness
timeout, /health names the cut shard, and bringing the link back up restores service.
Replicas (engine groups, test_routing.py): two one-shard replicas, each in its own
namespace, and kill -9 of one under load: its streams error within 5 s, the other's finish,
new requests go to the survivor, and the restarted replica rejoins. Disaggregated
prefill/decode (test_disagg.py): two prefill/decode pairs, each shard in its own namespace,
kill -9 of a prefill shard mid-transfer and of a decode shard mid-stream: the affected
request errors within 5 s, the streams decoding elsewhere finish, the group rejoins.
Namespaces, veths and the bridge are removed at the end, also on failure.
"""
import json
import os
import random
import shutil
import subprocess
import threading
import time

import httpx2 as httpx
import numpy as np
import pytest

from conftest import FIXTURES, run_tandem
from dist_util import ShardProcess
from serve_util import ServeProcess, metric_value, parse_metrics

MODELS = FIXTURES / "models"
SUBNET = "10.77.{}".format(os.getpid() % 200 + 20)  # one /24 per test run


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _can_make_netns():
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    name = f"tdmprobe{os.getpid()}"
    p = _ip("netns", "add", name, check=False)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    br = f"tdmprb{os.getpid() % 100000}"
    p = _ip("link", "add", br, "type", "bridge", check=False)
    if p.returncode != 0:
        return f"cannot create a bridge (kernel without CONFIG_BRIDGE?): {p.stderr.strip()}"
    _ip("link", "del", br, check=False)
    return None


class Net:
    """A bridge in the root namespace and n namespaces, each with one veth (tdm0) on it."""

    def __init__(self, n):
        tag = os.getpid() % 100000
        self.bridge = f"tdmbr{tag}"
        self.ns = [f"tdmns{tag}x{k}" for k in range(n)]
        self.root_ends = [f"tdmv{tag}x{k}" for k in range(n)]
        self.addrs = [f"{SUBNET}.{11 + k}" for k in range(n)]
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for k, ns in enumerate(self.ns):
                _ip("netns", "add", ns)
                _ip("link", "add", self.root_ends[k], "type", "veth", "peer", "name", "tdm0",
                    "netns", ns)
                _ip("link", "set", self.root_ends[k], "master", self.bridge)
                _ip("link", "set", self.root_ends[k], "up")
                _ip("-n", ns, "addr", "add", f"{self.addrs[k]}/24", "dev", "tdm0")
                _ip("-n", ns, "link", "set", "tdm0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def set_link(self, k, up):
        _ip("-n", self.ns[k], "link", "set", "tdm0", "up" if up else "down")

    def remove(self):
        for ns in self.ns:
            _ip("netns", "del", ns, check=False)
        for v in self.root_ends:
            _ip("link", "del", v, check=False)
        _ip("link", "del", self.bridge, check=False)


@pytest.fixture
def net_factory():
    why = _can_make_netns()
    if why is not None:
        pytest.skip(f"network-namespace tests not run: {why}")
    made = []

    def make(n):
        net = Net(n)
        made.append(net)
        return net

    yield make
    for net in made:
        net.remove()
        assert _ip("netns", "list").stdout.count(net.ns[0]) == 0


def _shards_in(net, model):
    out = []
    try:
        for k, ns in enumerate(net.ns):
            out.append(ShardProcess(model, host=net.addrs[k], port=7100, tls="tcp",
                                    devices="tdm0", netns=ns))
    except BaseException:
        for s in out:
            s.stop()
        raise
    return out


@pytest.mark.parametrize("model,n", [("llama-c-f32.gguf", 3), ("qwen3moe-b-f32.gguf", 2),
                                     ("qwen3moe-b-f32.gguf", 3)])
def test_netns_shards_match_single_node(tandem_bin, tmp_path, net_factory, model, n):
    net = net_factory(n)
    path = MODELS / model
    toks = "5,17,42,99,123,7,250,31,64,200,11,3,77,301"
    single = run_tandem("eval", "--model", path, "--tokens", toks, "--greedy", 8, "--threads", 1,
                        "--logits-out", tmp_path / "s.npy")
    shards = _shards_in(net, path)
    try:
        addrs = ",".join(s.addr for s in shards)
        dist = run_tandem("eval", "--model", path, "--tokens", toks, "--greedy", 8,
                          "--shards", addrs, "--logits-out", tmp_path / "d.npy", timeout=120)
    finally:
        for s in shards:
            s.stop()
    assert json.loads(dist.stdout)["greedy"] == json.loads(single.stdout)["greedy"]
    a, b = np.load(tmp_path / "d.npy"), np.load(tmp_path / "s.npy")
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() <= 1e-5, rel.max()


def test_netns_cut_link(tandem_bin, net_factory):
    net = net_factory(2)
    model = MODELS / "llama-c-f32.gguf"
    shards = _shards_in(net, model)
    srv = None
    try:
        srv = ServeProcess(model, "--shards", ",".join(s.addr for s in shards),
                           "--shard-timeout-ms", "1500", "--collective-timeout-ms", "3000",
                           "--ctx-size", "256")
        url = srv.url
        body = {"prompt": "hello", "max_tokens": 200, "temperature": 0, "stream": True,
                "ignore_eos": True}
        r = httpx.post(url + "/v1/completions", json={**body, "stream": False, "max_tokens": 4},
                       timeout=30)
        assert r.status_code == 200, r.text

        # cut shard 1's link in the middle of a stream
        cut_at = err_at = None
        n = 0
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    err_at = time.monotonic()
                    break
                n += 1
                if n == 3:
                    net.set_link(1, False)
                    cut_at = time.monotonic()
        assert cut_at is not None, "the stream ended before the cut"
        assert err_at is not None, "the stream did not end with an error after the cut"
        assert err_at - cut_at < 8.0, f"error {err_at - cut_at:.1f} s after the cut"
        print(f"cut link -> SSE error event after {err_at - cut_at:.3f} s")

        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            h = httpx.get(url + "/health", timeout=5)
            missing = [s["name"] for s in h.json().get("group", {}).get("shards", [])
                       if s["state"] == "missing"]
            if h.status_code == 503 and missing:
                break
            time.sleep(0.2)
        assert h.status_code == 503 and missing == [shards[1].addr], h.text

        # link back: the group re-forms (the same shard processes) and serves again
        net.set_link(1, True)
        t_end = time.monotonic() + 40
        while time.monotonic() < t_end:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
            time.sleep(0.2)
        r = httpx.post(url + "/v1/completions", json={**body, "stream": False, "max_tokens": 4},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert all(s.alive() for s in shards)
    finally:
        if srv is not None:
            srv.kill()
        for s in shards:
            s.stop()


def test_netns_replica_killed_under_load(tandem_bin, net_factory, tmp_path):
    from test_routing import MODEL, replica_kill_under_load

    net = net_factory(2)
    shards = _shards_in(net, MODEL)
    srv = None
    try:
        cluster = tmp_path / "cluster.json"
        cluster.write_text(json.dumps({"groups": [{"name": f"r{k}", "shards": [s.addr]}
                                                  for k, s in enumerate(shards)]}))
        srv = ServeProcess(MODEL, "--cluster", cluster, "--ctx-size", "4096", "--max-running",
                           "16", "--shard-timeout-ms", "1500", "--collective-timeout-ms", "5000")
        replica_kill_under_load(srv, shards)
    finally:
        if srv is not None:
            srv.kill()
        for s in shards:
            s.stop()


def _routed(srv, groups):
    m = parse_metrics(srv.get("/metrics").text)
    return {g: metric_value(m, "tandem_group_routed_requests_total", group=g) for g in groups}


def _sent(srv, group):
    m = parse_metrics(srv.get("/metrics").text)
    return metric_value(m, "tandem_kv_transfer_blocks_total", group=group)


def _one_stream_per_decode_group(srv, rng, max_tokens):
    """two long streams, which the router spreads by load over d0 and d1; returns their
    result dicts and threads once both stream"""
    from test_disagg import _stream, _tokens

    before = _routed(srv, ("d0", "d1"))
    outs, threads, started = [{}, {}], [], threading.Semaphore(0)
    for k in range(2):
        t = threading.Thread(target=_stream,
                             args=(srv, _tokens(rng, 64), max_tokens, outs[k], started))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    for _ in range(2):
        assert started.acquire(timeout=60), outs
    after = _routed(srv, ("d0", "d1"))
    assert all(after[g] - before[g] == 1 for g in after), (before, after)
    return outs, threads


def test_netns_disagg_faults(tandem_bin, net_factory, tmp_path):
    """Disaggregated prefill/decode (test_disagg.py) with two prefill/decode pairs, every
    shard in its own namespace: kill -9 of a prefill shard while it puts a long prompt's
    blocks, then of a decode shard mid-stream. The long prompt, which had streamed nothing,
    moves to the other pair and completes there (the router's retry; with one pair it errors:
    test_disagg.py); the stream on the dead decode shard errors within 5 s; the streams
    decoding elsewhere (also on the dead prefill shard's own decode partner) finish, and the
    restarted shard's group forms again and serves."""
    from test_disagg import F32, _serve, _serves, _stream, _tokens, _wait_ok

    net = net_factory(4)
    shards = _shards_in(net, F32)  # p0, d0, p1, d1
    srv = None
    rng = random.Random(11)
    try:
        cluster = tmp_path / "cluster.json"
        cluster.write_text(json.dumps({"groups": [
            {"name": name, "role": "prefill" if name[0] == "p" else "decode",
             "shards": [s.addr]} for name, s in zip(("p0", "d0", "p1", "d1"), shards)]}))
        # prompts prefilled in chunks of 32 tokens: a prompt is many steps of puts
        # a context of 6144 (the later --ctx-size wins over _serve's 2048): streams long
        # enough to outlast the kill on a quiet machine too (1900 tokens of this fixture
        # sometimes ended before it, about 1 s in)
        srv = _serve(F32, cluster, "--batch", "32", "--max-step-ms", "off", "--ctx-size", "6144")
        _serves(srv, rng)
        t0 = time.monotonic()

        # a prefill shard, mid-transfer, while a stream decodes on each decode group (long
        # ones: the first put can come seconds after the prompt on a loaded machine)
        outs, threads = _one_stream_per_decode_group(srv, rng, 6000)
        sent = {g: _sent(srv, g) for g in ("p0", "p1")}
        long_out = {}
        t = threading.Thread(target=_stream, args=(srv, _tokens(rng, 1900), 8, long_out, None))
        t.start()
        t_end = time.monotonic() + 30
        moving = []
        while not moving and time.monotonic() < t_end:
            moving = [g for g in sent if _sent(srv, g) > sent[g]]
            time.sleep(0.002)
        assert moving, "no transfer seen"
        print(f"transfer seen {time.monotonic() - t0:.2f} s after the streams' start")
        victim = {"p0": 0, "p1": 2}[moving[0]]
        other = {"p0": "d1", "p1": "d0"}[moving[0]]
        on_other = _routed(srv, (other,))[other]
        shards[victim].kill9()
        killed = time.monotonic()
        t.join(timeout=60)
        assert not t.is_alive(), "the request hangs"
        assert long_out["error"] is None and long_out["finish"] == "length", long_out
        assert _routed(srv, (other,))[other] == on_other + 1  # retried on the other pair
        for th in threads:
            th.join(timeout=60)
        assert all(o["error"] is None and o["finish"] == "length" for o in outs), outs
        assert all(o["t_end"] > killed for o in outs), "a stream ended before the kill"
        assert srv.get("/health").json()["status"] != "ok"
        print(f"prefill killed: the long prompt done on {other} "
              f"{long_out['t_end'] - killed:.2f} s after, "
              f"streams done {time.monotonic() - t0:.1f} s")
        shards[victim].start()
        _wait_ok(srv, 30)
        print(f"rejoined {time.monotonic() - t0:.1f} s")
        _serves(srv, rng)

        # a decode shard, mid-stream: its stream errors, the other decode group's finishes
        outs, threads = _one_stream_per_decode_group(srv, rng, 600)
        shards[3].kill9()
        killed = time.monotonic()
        for th in threads:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in threads), "a stream hangs"
        errors = [o for o in outs if o["error"] is not None]
        assert len(errors) == 1, outs
        assert errors[0]["error"][0] - killed < 5.0 and "shard" in errors[0]["error"][1], outs
        assert [o["finish"] for o in outs if o["error"] is None] == ["length"], outs
        assert all(o["t_end"] > killed for o in outs), "a stream ended before the kill"
        print(f"decode killed: error after {errors[0]['error'][0] - killed:.2f} s, "
              f"streams done {time.monotonic() - t0:.1f} s")
        shards[3].start()
        _wait_ok(srv, 30)
        print(f"rejoined {time.monotonic() - t0:.1f} s")
        _serves(srv, rng)
    finally:
        if srv is not None:
            srv.kill()
        for s in shards:
            s.stop()
