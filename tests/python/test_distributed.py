"""Distributed serving: `tandem shard` processes on this machine against single-node Tandem.

Exactness (oracle: single-node `tandem eval`, itself checked against HF transformers in
test_forward.py): the same prompt through 2 and 3 shard processes, over UCX TCP and over
shared memory, must give the same greedy tokens and logits within 1e-5 relative L2 per
position on the f32 fixtures (llama-c: TP 2 with uneven kv heads and TP 3; qwen3moe-b: EP 2
and EP 3 with bytes-balanced per-layer expert ranges; qwen3moe-c: dense + MoE layers;
gpt-oss-b: EP 2 and TP 2 with the sliding-window layers in their own KV pool, whose block
tables the step message carries).
Measured: <= 4.3e-7 (float summation order of the all-reduces; qwen3moe-c: 0).

Refusals: a shard holding another model, and a memory plan over a node's budget, are
refused at start with a message naming the cause.

Faults (against `tandem serve` on a 2-shard cluster): kill -9 of a shard mid-generation
ends the request with an error within 5 s, /health names the shard, a restart with the same
command restores service without restarting the coordinator; a restarted coordinator gets
the shards back.

--collective nccl: with 2 visible GPUs, 2 shards on cuda:0 and cuda:1 must match single-node
on cuda:0 within the same 1e-5 (TP 2 and EP 2), and a served cluster must survive kill -9 of
a shard (a new formation with a new NCCL id). Everywhere (builds with NCCL): CPU shards are
refused with a message naming the cause, at JOIN for 2 shards and by the shard at LOAD for
one. Builds without NCCL: --collective nccl is refused naming the build.

The serving suite itself runs against a 2-shard cluster in ctest `python_dist_serve`
(TANDEM_TEST_SHARDS=2, see serve_util.py); the network-namespace variant is
test_distributed_netns.py.
"""
import json
import pathlib
import re
import time

import httpx2 as httpx
import numpy as np
import pytest

from conftest import FIXTURES, DEFAULT_MODEL, run_tandem
from dist_util import ShardProcess, Shards
from serve_util import ServeProcess

MODELS = FIXTURES / "models"
PROMPTS = [[5, 17, 42, 99, 123, 7, 250, 31, 64, 200, 11, 3, 77, 301, 150, 9, 44],
           [300, 2, 18, 260, 91, 33, 120, 8]]


def _eval(model, *extra, tmp_path, name):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(",".join(map(str, p)) + "\n" for p in PROMPTS))
    out = tmp_path / f"{name}.npy"
    proc = run_tandem("eval", "--model", model, "--prompts-file", prompts, "--greedy", 8,
                      "--threads", 1, "--chunk", 5, "--logits-out", out, *extra, timeout=300)
    res = json.loads(proc.stdout)
    return [s["greedy"] for s in res["sequences"]], np.load(out), proc.stderr


CASES = [
    ("llama-c-f32.gguf", 2, "tcp", []),
    ("llama-c-f32.gguf", 3, "tcp", []),
    ("llama-c-f32.gguf", 2, "sm", []),
    ("llama-c-f32.gguf", 3, "sm", ["--collective", "rma"]),
    ("qwen3moe-b-f32.gguf", 2, "tcp", []),
    ("qwen3moe-b-f32.gguf", 3, "tcp", ["--collective", "rma"]),
    ("qwen3moe-b-f32.gguf", 2, "sm", ["--collective", "rma"]),
    ("qwen3moe-b-f32.gguf", 3, "sm", []),
    ("qwen3moe-c-f32.gguf", 2, "tcp", []),
    ("qwen3moe-b-f32.gguf", 2, "tcp", ["--tp", "2"]),
]
# Issue 17's architectures on shard processes: MiniMax-M2's full-width q/k norm reduces its
# sum of squares across TP shards; its sigmoid router is replicated under EP; qwen2's biases
# and mistral3's temperature under TP.
CASES += [
    ("minimax-m2-b-f32.gguf", 2, "tcp", []),
    ("minimax-m2-b-f32.gguf", 3, "sm", []),
    ("minimax-m2-b-f32.gguf", 2, "tcp", ["--tp", "2"]),
    ("minimax-m2-b-f32.gguf", 3, "tcp", ["--tp", "3"]),
    ("qwen2-b-f32.gguf", 3, "tcp", []),
    ("mistral3-b-f32.gguf", 2, "sm", []),
]


@pytest.mark.parametrize("model,n,tls,extra", CASES,
                         ids=[f"{m.split('-f32')[0]}-{n}x-{t}{''.join(e)}"
                              for m, n, t, e in CASES])
def test_shards_match_single_node(tandem_bin, tmp_path, model, n, tls, extra):
    path = MODELS / model
    g1, l1, _ = _eval(path, tmp_path=tmp_path, name="single")
    with Shards(path, n, tls=tls) as sh:
        gd, ld, err = _eval(path, "--shards", sh.arg, *extra, tmp_path=tmp_path, name="dist")
    assert f"on {n} shards" in err
    rel = np.linalg.norm(ld - l1, axis=1) / np.linalg.norm(l1, axis=1)
    assert rel.max() <= 1e-5, f"max relative L2 {rel.max():.3g}"
    assert gd == g1
    print(f"{model} x{n} {tls} {' '.join(extra)}: max relative L2 {rel.max():.3g}")


@pytest.mark.parametrize("extra", [[], ["--tp", "2"]], ids=["ep2", "tp2"])
def test_sliding_pool_over_shards(tandem_bin, tmp_path, extra):
    """gpt-oss-b (layers 0 and 2 slide, window 5) over 2 shards, EP 2 and TP 2, with KV
    blocks of 2 tokens: every shard keeps the sliding layers in a pool of its own, which
    the step message's sliding tables address (a shard refuses a step without them); the
    same tokens and logits as single-node within 1e-5."""
    path = MODELS / "gpt-oss-b-f32.gguf"
    if not path.exists():
        pytest.skip("gpt-oss fixtures missing")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(",".join(map(str, p)) + "\n" for p in PROMPTS))

    def run(*more, name):
        out = tmp_path / f"{name}.npy"
        proc = run_tandem("eval", "--model", path, "--prompts-file", prompts, "--greedy", 8,
                          "--threads", 1, "--chunk", 3, "--block-tokens", 2, "--logits-out",
                          out, *more, timeout=300)
        return json.loads(proc.stdout), np.load(out)

    r1, l1 = run(name="single")
    with Shards(path, 2, tls="tcp") as sh:
        rd, ld = run("--shards", sh.arg, *extra, name="dist")
    assert (rd["tp"], rd["ep"]) == ((2, 1) if extra else (1, 2))
    rel = np.linalg.norm(ld - l1, axis=1) / np.linalg.norm(l1, axis=1)
    assert rel.max() <= 1e-5, f"max relative L2 {rel.max():.3g}"
    assert [s["greedy"] for s in rd["sequences"]] == [s["greedy"] for s in r1["sequences"]]
    # the coordinator drove a sliding pool: the shards reported one, and released blocks
    assert rd["kv"]["swa_window"] == 5 == r1["kv"]["swa_window"]
    assert 0 < rd["kv"]["swa_blocks_peak"] < rd["kv"]["blocks_peak"], rd["kv"]
    print(f"gpt-oss-b x2 {extra}: max relative L2 {rel.max():.3g}, kv {rd['kv']}")


def test_model_mismatch_refused(tandem_bin, tmp_path):
    with Shards(MODELS / "llama-a-f32.gguf", 1) as other, \
            Shards(MODELS / "llama-c-f32.gguf", 1) as good:
        t0 = time.monotonic()
        proc = run_tandem("eval", "--model", MODELS / "llama-c-f32.gguf", "--tokens", "1,2,3",
                          "--shards", f"{good.arg},{other.arg}", check=False, timeout=120)
        assert proc.returncode == 1
        assert "holds another model" in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 30
        assert "refused" in other.stderr()


def test_cluster_secret(tandem_bin):
    """--cluster-secret on the shards, TANDEM_CLUSTER_SECRET on the coordinator: the same
    secret forms the group; a wrong one, none on either side, are refused at JOIN with a
    message naming the cluster secret, and the shard logs the refusal."""
    import os
    model = MODELS / "llama-c-f32.gguf"

    def run(secret):
        env = dict(os.environ)
        env.pop("TANDEM_CLUSTER_SECRET", None)
        if secret is not None:
            env["TANDEM_CLUSTER_SECRET"] = secret
        return run_tandem("eval", "--model", model, "--tokens", "1,2,3", "--shards", sh.arg,
                          check=False, timeout=120, env=env)

    with Shards(model, 2, extra=["--cluster-secret", "open sesame"]) as sh:
        ok = run("open sesame")
        assert ok.returncode == 0, ok.stderr
        assert "on 2 shards" in ok.stderr
        for secret, want in [("open sesame!", "wrong cluster secret"),
                             (None, "requires a cluster secret")]:
            t0 = time.monotonic()
            bad = run(secret)
            assert bad.returncode == 1, bad.stderr
            assert want in bad.stderr, bad.stderr
            assert time.monotonic() - t0 < 30
        assert "the coordinator refused this shard" in sh.stderr()
        assert "cluster secret" in sh.stderr()
    with Shards(model, 1) as sh:
        bad = run("open sesame")
        assert bad.returncode == 1, bad.stderr
        assert "no proof of the cluster secret" in bad.stderr, bad.stderr


def test_shard_obeys_only_proven_coordinator(tandem_bin):
    """A shard with --cluster-secret, driven over its control port by this test (pyzmq,
    msgpack): its JOIN's proof is HMAC-SHA-256(secret, "tandem-join" || session || nonce),
    checked with Python's hmac; a JOIN_ACK without the coordinator's proof, or with one
    under another secret, makes the shard ignore that peer (its SHUTDOWN is not obeyed);
    with the right proof it obeys."""
    zmq = pytest.importorskip("zmq")
    msgpack = pytest.importorskip("msgpack")
    import hashlib
    import hmac
    import random
    secret = b"open sesame"
    hello, join, join_ack, shutdown = 1, 2, 3, 8
    # the control protocol's version, from the header the shard is built with
    header = pathlib.Path(__file__).resolve().parents[2] / "transport" / "xp_msg.h"
    proto = int(re.search(r"#define XP_MSG_PROTOCOL_VERSION\s+(\d+)", header.read_text()).group(1))

    def mac(key, label, session, nonce):
        return hmac.new(key, label + session.to_bytes(8, "little") + nonce.to_bytes(8, "little"),
                        hashlib.sha256).digest()

    def send(sock, typ, body):
        sock.send(msgpack.packb(["TDM1", proto, typ, random.getrandbits(32), body],
                                use_bin_type=True))

    def released(sh):
        return sh.stderr().count("the coordinator released the group")

    with Shards(MODELS / "llama-c-f32.gguf", 1, extra=["--cluster-secret", "open sesame"]) \
            as group:
        sh = group.shards[0]
        ctx = zmq.Context()
        try:
            for ack_key, obeyed, log in [(None, False, "no proof of the cluster secret"),
                                         (b"open sesame!", False, "wrong cluster secret"),
                                         (secret, True, None)]:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, 10000)
                sock.connect(f"tcp://{sh.addr}")
                session = random.getrandbits(64)
                send(sock, hello, [session])
                while True:  # skip anything but the JOIN
                    magic, version, typ, _, body = msgpack.unpackb(sock.recv(), raw=False)
                    if typ == join:
                        break
                assert (magic, version, len(body)) == ("TDM1", proto, 10), body[:4]
                assert body[3] == session
                nonce, proof = body[8], body[9]
                assert proof == mac(secret, b"tandem-join", session, nonce)
                auth = b"" if ack_key is None else mac(ack_key, b"tandem-ack", session, nonce)
                before = released(sh)
                send(sock, join_ack, [True, "", auth])
                send(sock, shutdown, [])
                t_end = time.monotonic() + 5
                while time.monotonic() < t_end and released(sh) == before and \
                        (log is None or log not in sh.stderr()):
                    time.sleep(0.05)
                time.sleep(0.3)
                assert (released(sh) > before) == obeyed, sh.stderr()[-2000:]
                if log is not None:
                    assert f"refused a coordinator: {log}" in sh.stderr(), sh.stderr()[-2000:]
                sock.close()
            assert "ignoring control messages from a peer that has not proved" in sh.stderr()
        finally:
            ctx.destroy(linger=0)  # closes a socket a failed assertion left open (term would wait)


def test_memory_plan_refused(tandem_bin, tmp_path):
    with Shards(MODELS / "qwen3moe-b-f32.gguf", 2, extra=["--node-memory", "1M"]) as sh:
        proc = run_tandem("eval", "--model", MODELS / "qwen3moe-b-f32.gguf", "--tokens", "1,2",
                          "--shards", sh.arg, check=False, timeout=120)
    assert proc.returncode == 1
    assert "needs" in proc.stderr and "offers 0.00 GiB" in proc.stderr, proc.stderr


def test_missing_shard_times_out(tandem_bin):
    from dist_util import free_port
    proc = run_tandem("serve", "--model", MODELS / "llama-c-f32.gguf", "--port", "0",
                      "--shards", f"127.0.0.1:{free_port()}", "--shard-start-timeout", "2",
                      check=False, timeout=60)
    assert proc.returncode == 1
    assert "did not form within 2 s" in proc.stderr, proc.stderr


# ---- faults against a served 2-shard cluster ----

def _chat(url, content, max_tokens, stream=False, timeout=60):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)


def _wait_health(url, status, timeout):
    t_end = time.monotonic() + timeout
    last = None
    while time.monotonic() < t_end:
        try:
            r = httpx.get(url + "/health", timeout=5)
            last = (r.status_code, r.text)
            if r.status_code == status:
                return r.json()
        except httpx.TransportError as e:
            last = repr(e)
        time.sleep(0.1)
    raise AssertionError(f"/health not {status} within {timeout} s: {last}")


@pytest.fixture
def cluster(default_model):
    shards = Shards(default_model, 2, tls="tcp")
    srv = None
    try:
        srv = ServeProcess(default_model, "--shards", shards.arg, "--shard-timeout-ms", "1500",
                           "--collective-timeout-ms", "3000")
        yield srv, shards
    finally:
        if srv is not None:
            srv.kill()
        shards.stop()


def test_kill_shard_mid_generation(cluster):
    srv, shards = cluster
    url = srv.url
    h = _wait_health(url, 200, 10)
    assert [s["state"] for s in h["group"]["shards"]] == ["ready", "ready"]
    # one short request works
    r = _chat(url, "Say hi", 4)
    assert r.status_code == 200, r.text

    # a long streaming generation, then kill -9 one shard
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 4000, "temperature": 0, "stream": True}
    events, error_at, killed_at = 0, None, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                error_at = time.monotonic()
                assert "shard" in obj["error"]["message"], obj
                break
            events += 1
            if events == 5:
                shards.shards[1].kill9()
                killed_at = time.monotonic()
    assert killed_at is not None and error_at is not None, "the stream did not end with an error"
    assert error_at - killed_at < 5.0, f"error after {error_at - killed_at:.1f} s"
    print(f"kill -9 -> SSE error event after {error_at - killed_at:.3f} s")

    # the coordinator stays up, /health names the missing shard, requests get 503 at once
    t_end = time.monotonic() + 5
    while True:
        h = _wait_health(url, 503, 5)
        assert h["status"] == "degraded"
        missing = [s["name"] for s in h["group"]["shards"] if s["state"] == "missing"]
        if missing or time.monotonic() > t_end:
            break
        time.sleep(0.1)
    assert missing == [shards.shards[1].addr], h
    assert shards.shards[1].addr in h["error"]
    metrics = httpx.get(url + "/metrics", timeout=5).text
    assert 'tandem_shard_group_ready{model_name=' in metrics
    assert re.search(r'tandem_shard_up\{[^}]*rank="1"[^}]*\} 0', metrics), metrics
    assert re.search(r'tandem_collective_bytes_total\{[^}]*\} [1-9]', metrics), metrics
    t0 = time.monotonic()
    r = _chat(url, "Say hi", 4)
    assert r.status_code == 503 and time.monotonic() - t0 < 5
    assert "shard" in r.json()["error"]["message"]

    # the same command brings it back; the coordinator re-forms the group
    t_restart = time.monotonic()
    shards.shards[1].start()
    h = _wait_health(url, 200, 30)
    print(f"restarted shard -> /health 200 after {time.monotonic() - t_restart:.3f} s")
    assert h["group"]["generation"] >= 2
    r = _chat(url, "Say hi", 4)
    assert r.status_code == 200, r.text
    assert srv.alive()
    metrics = httpx.get(url + "/metrics", timeout=5).text
    assert re.search(r'tandem_shard_group_ready\{[^}]*\} 1', metrics), metrics
    assert re.search(r'tandem_shard_group_formations_total\{[^}]*\} [2-9]', metrics), metrics
    assert re.search(r'tandem_shard_steps_failed_total\{[^}]*\} [1-9]', metrics), metrics


def test_coordinator_restart_shards_rejoin(cluster, default_model):
    srv, shards = cluster
    r1 = _chat(srv.url, "Name a colour.", 8).json()["choices"][0]["message"]["content"]
    srv.stop()
    srv2 = ServeProcess(default_model, "--shards", shards.arg)
    try:
        h = _wait_health(srv2.url, 200, 30)
        assert all(s["state"] == "ready" for s in h["group"]["shards"])
        r2 = _chat(srv2.url, "Name a colour.", 8).json()["choices"][0]["message"]["content"]
        assert r2 == r1
    finally:
        srv2.stop()
    assert all(s.alive() for s in shards.shards)


def test_resident_slice_reported(cluster, default_model):
    srv, _ = cluster
    h = _wait_health(srv.url, 200, 10)
    size = DEFAULT_MODEL.stat().st_size
    for s in h["group"]["shards"]:
        # each shard's views cover its slice: well under the whole file (TP 2)
        assert 0 < s["weight_bytes"] < 0.8 * size, s
        assert s["resident_bytes"] >= s["weight_bytes"]


# ---- --collective nccl ----

NCCL_CPU_MSG = "--collective nccl needs shards on a GPU (--device cuda)"


def _build_info():
    out = run_tandem("--version").stdout
    gpus = len(re.findall(r"^cuda device \d+:", out, re.M))
    return "nccl: yes" in out, gpus


def _need_nccl_build():
    nccl, _ = _build_info()
    if not nccl:
        pytest.skip("this build has no NCCL (tandem --version: nccl: no)")


def _need_two_gpus():
    nccl, gpus = _build_info()
    if not nccl:
        pytest.skip("this build has no NCCL (tandem --version: nccl: no)")
    if gpus < 2:
        pytest.skip(f"{gpus} CUDA device(s) visible; --collective nccl needs one GPU per shard "
                    "(NCCL refuses two ranks on one GPU), so 2 shards need 2 GPUs")


def _gpu_shards(path, n, *extra):
    """n shards, shard i on cuda:i (f32 KV, as the single-node oracle below)."""
    shards = Shards(path, 0)
    try:
        for i in range(n):
            shards.shards.append(ShardProcess(path, tls="tcp", extra=[
                "--device", f"cuda:{i}", "--kv-type", "f32", *extra]))
    except BaseException:
        shards.stop()
        raise
    return shards


NCCL_CASES = [("llama-c-f32.gguf", ["--tp", "2"]), ("qwen3moe-b-f32.gguf", ["--ep", "2"])]


@pytest.mark.parametrize("model,extra", NCCL_CASES,
                         ids=[f"{m.split('-f32')[0]}-{e[0][2:]}2" for m, e in NCCL_CASES])
def test_nccl_shards_match_single_node(tandem_bin, tmp_path, model, extra):
    _need_two_gpus()
    path = MODELS / model
    # the oracle on the same kind of device: what is compared is the split, not the kernels
    g1, l1, _ = _eval(path, "--device", "cuda:0", "--kv-type", "f32", tmp_path=tmp_path,
                      name="single")
    with _gpu_shards(path, 2) as sh:
        gd, ld, err = _eval(path, "--shards", sh.arg, "--collective", "nccl", *extra,
                            tmp_path=tmp_path, name="dist")
        assert "device: cuda" in sh.stderr(), sh.stderr()
    assert "on 2 shards" in err
    rel = np.linalg.norm(ld - l1, axis=1) / np.linalg.norm(l1, axis=1)
    assert rel.max() <= 1e-5, f"max relative L2 {rel.max():.3g}"
    assert gd == g1
    print(f"{model} x2 nccl: max relative L2 {rel.max():.3g}")


def test_nccl_served_cluster_survives_kill(tandem_bin, default_model):
    _need_two_gpus()
    shards = _gpu_shards(default_model, 2)
    srv = None
    try:
        srv = ServeProcess(default_model, "--shards", shards.arg, "--collective", "nccl",
                           "--shard-timeout-ms", "1500")
        url = srv.url
        r1 = _chat(url, "Name a colour.", 8)
        assert r1.status_code == 200, r1.text
        body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                "max_tokens": 4000, "temperature": 0, "stream": True}
        events, error_at, killed_at = 0, None, None
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line[6:] == "[DONE]":
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    error_at = time.monotonic()
                    break
                events += 1
                if events == 5:
                    shards.shards[1].kill9()
                    killed_at = time.monotonic()
        assert killed_at is not None and error_at is not None, "no error ended the stream"
        assert error_at - killed_at < 10.0, f"error after {error_at - killed_at:.1f} s"
        # the survivor left the dead world (no hang in NCCL): a restart re-forms the group
        # with a new epoch and a new NCCL id, and the answers are those of before
        shards.shards[1].start()
        h = _wait_health(url, 200, 60)
        assert h["group"]["generation"] >= 2
        r2 = _chat(url, "Name a colour.", 8)
        assert r2.status_code == 200, r2.text
        assert r2.json()["choices"][0]["message"]["content"] == \
            r1.json()["choices"][0]["message"]["content"]
        assert shards.shards[0].alive()
    finally:
        if srv is not None:
            srv.kill()
        shards.stop()


def test_nccl_cpu_shards_refused(tandem_bin, tmp_path):
    """Two CPU shards: the coordinator refuses them at JOIN (it makes no NCCL id)."""
    _need_nccl_build()
    path = MODELS / "llama-c-f32.gguf"
    with Shards(path, 2, extra=["--device", "cpu"]) as sh:
        t0 = time.monotonic()
        proc = run_tandem("eval", "--model", path, "--tokens", "1,2,3", "--shards", sh.arg,
                          "--collective", "nccl", check=False, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert NCCL_CPU_MSG in proc.stderr, proc.stderr
        assert "shard group refused" in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 30
        assert NCCL_CPU_MSG in sh.shards[0].stderr() + sh.shards[1].stderr()

        # the same through tandem serve and the cluster file's "collective" key
        cluster = tmp_path / "cluster.json"
        cluster.write_text(json.dumps({"shards": [s.addr for s in sh.shards],
                                       "collective": "nccl"}))
        proc = run_tandem("serve", "--model", path, "--port", "0", "--cluster", cluster,
                          "--shard-start-timeout", "30", check=False, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert NCCL_CPU_MSG in proc.stderr, proc.stderr


def test_nccl_single_cpu_shard_refuses_load(tandem_bin):
    """One CPU shard (no NCCL world, no id): the shard itself refuses the LOAD."""
    _need_nccl_build()
    path = MODELS / "llama-c-f32.gguf"
    with Shards(path, 1, extra=["--device", "cpu"]) as sh:
        proc = run_tandem("eval", "--model", path, "--tokens", "1,2,3", "--shards", sh.arg,
                          "--collective", "nccl", check=False, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "failed to load: " + NCCL_CPU_MSG in proc.stderr, proc.stderr
        assert "LOAD" in sh.shards[0].stderr() and NCCL_CPU_MSG in sh.shards[0].stderr()


def test_collective_option_values(tandem_bin, tmp_path):
    path = MODELS / "llama-c-f32.gguf"
    proc = run_tandem("eval", "--model", path, "--tokens", "1", "--shards", "127.0.0.1:1",
                      "--collective", "mpi", check=False, timeout=60)
    assert proc.returncode == 2
    assert "collective 'mpi': expected am, rma or nccl" in proc.stderr, proc.stderr
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"shards": ["127.0.0.1:1"], "collective": 2}))
    proc = run_tandem("serve", "--model", path, "--port", "0", "--cluster", cluster,
                      check=False, timeout=60)
    assert proc.returncode != 0
    assert '"collective": must be "am", "rma" or "nccl"' in proc.stderr, proc.stderr


def test_collective_nccl_needs_nccl_build(tandem_bin, tmp_path):
    nccl, _ = _build_info()
    if nccl:
        pytest.skip("this build has NCCL (the refusal is for builds without it)")
    path = MODELS / "llama-c-f32.gguf"
    for args in (["eval", "--model", path, "--tokens", "1", "--shards", "127.0.0.1:1",
                  "--collective", "nccl"],
                 ["serve", "--model", path, "--port", "0", "--shards", "127.0.0.1:1",
                  "--collective", "nccl"]):
        proc = run_tandem(*args, check=False, timeout=60)
        assert proc.returncode != 0
        assert "this build of tandem has no NCCL" in proc.stderr, proc.stderr
