"""The `tandem` binary's top level: --help, --version and its capability report.

Oracles: the project version in CMakeLists.txt, /proc/cpuinfo for the SIMD level the
kernels must pick, and whether nvcc exists on this machine for the CUDA line.
"""
import os
import re
import shutil

from conftest import BUILD_DIR, SOURCE_DIR, run_tandem


def project_version():
    text = (SOURCE_DIR / "CMakeLists.txt").read_text()
    return re.search(r"project\(tandem VERSION ([0-9.]+)", text).group(1)


def cpu_flags():
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    return flags


def expected_simd(flags):
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    if "asimddp" in flags:
        return "neon+dotprod"
    if "asimd" in flags:
        return "neon"
    return "scalar"


def test_version_reports_version_and_capabilities(tandem_bin):
    out = run_tandem("--version").stdout
    assert out.startswith(f"tandem {project_version()} ")
    for key in ("cuda:", "nccl:", "ucx: yes", "cpu:", "simd:"):
        assert key in out, f"missing '{key}' in:\n{out}"
    # `tandem version` and `tandem --version` agree
    assert run_tandem("version").stdout == out


def test_simd_level_matches_cpuinfo(tandem_bin):
    out = run_tandem("--version").stdout
    simd = re.search(r"^simd: (\S+)", out, re.M).group(1)
    assert simd == expected_simd(cpu_flags())


def test_simd_cap_by_environment(tandem_bin):
    env = dict(os.environ, TANDEM_CPU_ISA="scalar")
    out = run_tandem("--version", env=env).stdout
    assert re.search(r"^simd: scalar", out, re.M)


def test_cuda_line_matches_toolchain(tandem_bin):
    out = run_tandem("--version").stdout
    cuda_line = re.search(r"^cuda: (.*)$", out, re.M).group(1)
    # the build looks for nvcc on PATH and in the toolkit's standard place, unless it was
    # configured with -DTANDEM_CUDA=OFF
    cache = (BUILD_DIR / "CMakeCache.txt")
    cuda_off = cache.exists() and "TANDEM_CUDA:STRING=OFF" in cache.read_text()
    if not cuda_off and (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        assert cuda_line.startswith("yes"), out
        assert "90" in cuda_line and "121" in cuda_line
    else:
        assert cuda_line == "no"


def test_help_lists_commands(tandem_bin):
    out = run_tandem("--help").stdout
    assert "usage: tandem" in out
    assert re.search(r"^  version ", out, re.M)


def test_bad_usage_exits_2(tandem_bin):
    p = run_tandem("no-such-command", check=False)
    assert p.returncode == 2 and "unknown command" in p.stderr
    p = run_tandem("--bogus", check=False)
    assert p.returncode == 2 and "unknown option" in p.stderr
    p = run_tandem("--log-level", "loud", "version", check=False)
    assert p.returncode == 2 and "unknown log level" in p.stderr
    p = run_tandem(check=False)
    assert p.returncode == 2
