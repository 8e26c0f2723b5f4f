"""Shared pytest fixtures: where the tandem binary, the source tree and models are.

ctest sets TANDEM_BIN, TANDEM_SOURCE_DIR and TANDEM_BUILD_DIR; when pytest is run by hand
the defaults below point at a tree built with tools/build.sh.

Every tandem process the suite starts runs on TANDEM_TEST_DEVICE (default "cpu", whose
results the oracles' tolerances are set for): it becomes their TANDEM_DEVICE. The GPU
check runs the serving suite again with TANDEM_TEST_DEVICE=cuda (tools/gpu-check.sh).
"""
import os
import pathlib
import subprocess

import pytest

SOURCE_DIR = pathlib.Path(os.environ.get("TANDEM_SOURCE_DIR",
                                         pathlib.Path(__file__).resolve().parents[2]))
BUILD_DIR = pathlib.Path(os.environ.get("TANDEM_BUILD_DIR", SOURCE_DIR / "build"))
TANDEM_BIN = pathlib.Path(os.environ.get("TANDEM_BIN", BUILD_DIR / "api" / "tandem"))
DEFAULT_MODEL = SOURCE_DIR / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = SOURCE_DIR / "tests" / "fixtures"
TEST_DEVICE = os.environ.get("TANDEM_TEST_DEVICE", "cpu")
os.environ["TANDEM_DEVICE"] = TEST_DEVICE


@pytest.fixture(scope="session")
def tandem_bin():
    if not TANDEM_BIN.exists():
        pytest.fail(f"tandem binary not found at {TANDEM_BIN}: build first (tools/build.sh)")
    return TANDEM_BIN


@pytest.fixture(scope="session")
def default_model():
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"default model missing at {DEFAULT_MODEL}: run tools/setup.sh")
    return DEFAULT_MODEL


def run_tandem(*args, input=None, check=True, timeout=600, env=None):
    """Runs the tandem binary and returns the CompletedProcess (text mode)."""
    proc = subprocess.run([str(TANDEM_BIN), *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tandem {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
