"""Helpers for the distributed tests: `tandem shard` processes on this machine (or inside a
network namespace), each restartable with the same command line.

A shard prints "listening on tcp://HOST:PORT" once its socket is bound; ShardProcess waits for
that line. Ports are chosen free up front (not 0) so that a restart reuses the same address,
which is what the coordinator keeps dialing.
"""
import atexit
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

from conftest import TANDEM_BIN

_LISTEN_RE = re.compile(r"listening on tcp://([0-9.]+):(\d+)")
_STARTED = []  # every shard process this test process started: killed at exit at the latest


@atexit.register
def _kill_leftovers():
    for p in _STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ShardProcess:
    """One `tandem shard`. netns: run it inside that network namespace (ip netns exec)."""

    def __init__(self, model, host="127.0.0.1", port=None, tls="tcp", devices=None, threads=1,
                 netns=None, extra=(), start=True):
        self.model = str(model)
        self.host = host
        self.port = port or free_port(host if netns is None else "127.0.0.1")
        self.cmd = [str(TANDEM_BIN), "shard", "--model", self.model, "--listen",
                    f"{host}:{self.port}", "--threads", str(threads), *map(str, extra)]
        if tls:
            self.cmd += ["--ucx-tls", tls]
        if devices:
            self.cmd += ["--ucx-devices", devices]
        if netns:
            self.cmd = ["ip", "netns", "exec", netns, *self.cmd]
        self.proc = None
        self._err = None
        if start:
            self.start()

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    def start(self, timeout=30):
        self._err = tempfile.NamedTemporaryFile(prefix="tandem-shard-", suffix=".stderr",
                                                delete=False)
        env = dict(os.environ)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err, env=env)
        _STARTED.append(self.proc)
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if _LISTEN_RE.search(self.stderr()):
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"shard exited with {self.proc.returncode}:\n"
                                     f"{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"shard did not start:\n{self.stderr()}")

    def stderr(self):
        if self._err is None:
            return ""
        with open(self._err.name, "r", errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout=15):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._err is not None:
            try:
                os.unlink(self._err.name)
            except OSError:
                pass


class Shards:
    """n shards of one model; a context manager that stops them all."""

    def __init__(self, model, n, **kw):
        self.shards = []
        try:
            for _ in range(n):
                self.shards.append(ShardProcess(model, **kw))
        except BaseException:
            self.stop()
            raise

    @property
    def arg(self):
        return ",".join(s.addr for s in self.shards)

    def stderr(self):
        return "\n".join(f"--- shard {i} ---\n{s.stderr()[-3000:]}"
                         for i, s in enumerate(self.shards))

    def stop(self):
        for s in self.shards:
            s.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
