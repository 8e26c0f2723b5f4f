"""Properties of the build itself.

- A missing dependency stops the configure step with the Debian package to install.
- When CUDA is compiled in, every CUDA object carries SASS for sm_90 and sm_121 and PTX for
  compute_121 (read from the objects' .nv_fatbin sections; the fatbin container is a
  sequence of headers: magic 0xBA55ED50, then entries of kind 1 = PTX / 2 = ELF with the
  target architecture).
"""
import os
import pathlib
import struct
import subprocess
import tempfile

import pytest

from conftest import BUILD_DIR, SOURCE_DIR

FATBIN_MAGIC = 0xBA55ED50


def fatbin_entries(blob):
    entries, off = [], 0
    while off + 16 <= len(blob):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", blob, off)
        assert magic == FATBIN_MAGIC, f"bad fatbin magic {magic:#x} at {off}"
        p, end = off + hsize, off + hsize + fsize
        while p < end:
            kind, _, ehsize, size = struct.unpack_from("<HHIQ", blob, p)
            arch = struct.unpack_from("<I", blob, p + 28)[0]
            entries.append(("ptx" if kind == 1 else "elf" if kind == 2 else kind, arch))
            p += ehsize + size
        off = (end + 7) & ~7
    return entries


def cuda_objects():
    return sorted(BUILD_DIR.glob("kernels/**/*.cu.o"))


def test_cuda_objects_carry_sm90_sm121_and_ptx():
    config = (BUILD_DIR / "generated" / "tdm_build_config.h").read_text()
    if "#define TDM_HAVE_CUDA       1" not in config:
        pytest.skip("this build has no CUDA (nvcc not found at configure time)")
    objs = cuda_objects()
    assert objs, "CUDA is configured but no .cu.o objects were built"
    for obj in objs:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "fatbin"
            subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", str(obj),
                            str(out)], check=True)
            entries = set(fatbin_entries(out.read_bytes()))
        for want in (("elf", 90), ("elf", 121), ("ptx", 121)):
            assert want in entries, f"{obj.name}: missing {want}, has {sorted(entries)}"


def test_missing_dependency_names_debian_package():
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PKG_CONFIG_LIBDIR=os.path.join(tmp, "none"),
                   PKG_CONFIG_PATH="")
        p = subprocess.run(["cmake", "-S", str(SOURCE_DIR), "-B", os.path.join(tmp, "b"),
                            "-DTANDEM_CUDA=OFF"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "missing dependency 'ucx'" in out and "libucx-dev" in out, out
