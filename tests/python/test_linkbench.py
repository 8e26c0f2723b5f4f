"""`tandem linkbench`: UCX latency / bandwidth between two ends, here both on this machine.

`--local --quick --json` forks the connecting end itself; checked over TCP and over shared
memory: every size of the quick schedule is reported by every test, latencies and
bandwidths are positive and finite, p99 is not below the median, and a 256 KiB ping-pong
takes longer than an 8-byte one. Failure paths: dialing a port where nothing listens, and
listening where nobody dials, both exit non-zero within the timeout (never hang), and
usage errors exit 2.
"""
import json
import math
import socket
import time

import pytest

from conftest import run_tandem

# The --quick schedule (api/cli/cmd_linkbench.c).
QUICK_P2P = [8, 512, 32768, 262144]
QUICK_ALLREDUCE = [4096, 65536, 262144]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("tls", ["tcp", "sm"])
def test_local_quick_json(tandem_bin, tls):
    proc = run_tandem("linkbench", "--local", "--quick", "--json", "--tls", tls,
                      "--timeout-ms", "15000", timeout=90)
    r = json.loads(proc.stdout)
    assert r["tls"] == tls and r["quick"] is True
    for key, sizes in (("am_lat", QUICK_P2P), ("put_lat", QUICK_P2P),
                       ("allreduce_am", QUICK_ALLREDUCE), ("allreduce_rma", QUICK_ALLREDUCE)):
        rows = r[key]
        assert [row["bytes"] for row in rows] == sizes, key
        for row in rows:
            assert finite_positive(row["lat_us_median"]), (key, row)
            assert finite_positive(row["lat_us_p99"]), (key, row)
            assert row["lat_us_p99"] >= row["lat_us_median"], (key, row)
            assert row["iters"] >= 1
    for key in ("am_bw", "put_bw"):
        rows = r[key]
        assert [row["bytes"] for row in rows] == QUICK_P2P, key
        for row in rows:
            assert finite_positive(row["gbps"]), (key, row)
            assert row["msgs"] >= row["window"] >= 1
    am = r["am_lat"]
    assert am[0]["lat_us_median"] < am[-1]["lat_us_median"], am


def test_local_text_tables(tandem_bin):
    proc = run_tandem("linkbench", "--local", "--quick", "--tls", "tcp", "--max-bytes", "4K",
                      "--timeout-ms", "15000", timeout=90)
    out = proc.stdout
    for title in ("AM ping-pong latency", "AM bandwidth", "RMA put latency",
                  "RMA put bandwidth", "All-reduce latency, 2 ranks (tp 2), proto am",
                  "All-reduce latency, 2 ranks (tp 2), proto rma"):
        assert title in out, out
    # --max-bytes 4K keeps 8 and 512 of the point-to-point sizes and 4096 of the all-reduce
    assert " 32768 " not in out and " 4096 " in out


def test_connect_to_nothing_fails_in_time(tandem_bin):
    port = free_port()
    t0 = time.monotonic()
    proc = run_tandem("linkbench", "--connect", f"127.0.0.1:{port}", "--timeout-ms", "1500",
                      check=False, timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert "no answer" in proc.stderr
    assert 1.0 < elapsed < 8.0


def test_listen_without_peer_fails_in_time(tandem_bin):
    port = free_port()
    t0 = time.monotonic()
    proc = run_tandem("linkbench", "--listen", f"127.0.0.1:{port}", "--timeout-ms", "1000",
                      check=False, timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert "linkbench --connect" in proc.stderr
    assert elapsed < 8.0


@pytest.mark.parametrize("args", [[], ["--local", "--connect", "127.0.0.1:1"],
                                  ["--local", "--iters", "0"], ["--local", "--bogus"],
                                  ["--local", "--min-bytes", "1M", "--max-bytes", "1K"]])
def test_usage_errors(tandem_bin, args):
    proc = run_tandem("linkbench", *args, check=False, timeout=30)
    assert proc.returncode == 2, (args, proc.stderr)
