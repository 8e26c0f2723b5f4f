"""test_gguf.py - `tandem inspect` and `tandem quantize` against the gguf Python package.

The oracle is gguf-py (GGUFWriter writes the fixtures, GGUFReader and gguf.quants read the
results): every key, value and tensor `tandem inspect --json` reports must match what
GGUFReader reads, split models made by GGUFWriter must read as one model, and `tandem
quantize` output must be readable by GGUFReader with the expected types and dequantize
close to the source. Fixtures are written by the tests themselves into tmp_path; only the
SmolLM2 test needs models/ (made by tools/setup.sh) and is skipped without it.
"""
import json
import os
import re
import subprocess

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType as VT

SOURCE_DIR = os.environ.get(
    "TANDEM_SOURCE_DIR", os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..")))
SMOLLM = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def tandem():
    path = os.environ.get("TANDEM_BIN")
    if not path:
        pytest.fail("TANDEM_BIN is not set: run through ctest, or export TANDEM_BIN=<build>/api/tandem")
    assert os.access(path, os.X_OK), f"TANDEM_BIN={path} is not an executable"
    return path


def run(tandem, *args, check=True):
    p = subprocess.run([tandem, *args], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"tandem {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def inspect_json(tandem, path):
    return json.loads(run(tandem, "inspect", "--json", str(path)).stdout)


def write_gguf(path, build, arch="llama", **kw):
    w = gguf.GGUFWriter(str(path), arch, **kw)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- comparison against GGUFReader ---------------------------------------------------------

def json_scalar(v, vtype):
    """Undoes inspect's JSON encodings of numbers JSON cannot hold (only for numeric types:
    a STRING "nan" stays a string)."""
    if vtype == VT.UINT64 and isinstance(v, str):
        return int(v)
    if vtype in (VT.FLOAT32, VT.FLOAT64) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def same_value(ours, theirs, vtype):
    if isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same_value(a, b, vtype) for a, b in zip(ours, theirs))
    ours = json_scalar(ours, vtype)
    if vtype == VT.BOOL:
        return type(ours) is bool and ours == bool(theirs)
    if vtype in (VT.FLOAT32, VT.FLOAT64) and np.isnan(theirs):
        return isinstance(ours, float) and np.isnan(ours)
    if vtype == VT.STRING:
        return isinstance(ours, str) and ours == theirs
    return type(ours) in (int, float) and ours == theirs


def check_metadata(ours_meta, reader):
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    assert [m["key"] for m in ours_meta] == [f.name for f in fields]
    for m, f in zip(ours_meta, fields):
        assert m["type"] == VT(f.types[0]).name, m["key"]
        theirs = f.contents()
        if f.types[0] == VT.ARRAY:
            assert m["elem_type"] == VT(f.types[-1]).name, m["key"]
            assert m["n"] == len(theirs), m["key"]
        assert same_value(m["value"], theirs, VT(f.types[-1])), (m["key"], m["value"], theirs)


def check_tensors(ours, readers):
    """ours: inspect's tensor list; readers: one GGUFReader per file, in order."""
    expected = [(i, t) for i, r in enumerate(readers) for t in r.tensors]
    assert len(ours) == len(expected)
    for o, (i, t) in zip(ours, expected):
        assert o["name"] == t.name
        assert o["type"] == QT(t.tensor_type).name
        assert o["type_id"] == int(t.tensor_type)
        assert o["ne"] == [int(x) for x in t.shape]
        assert o["nbytes"] == int(t.n_bytes)
        assert o["file"] == i


def check_offsets(js, readers):
    k = 0
    for i, r in enumerate(readers):
        for t in r.tensors:
            o = js["tensors"][k]
            # GGUFReader gives the absolute offset; inspect gives it relative to the data section
            assert js["files"][i]["data_offset"] + o["offset"] == t.data_offset, t.name
            k += 1


def expected_per_token(tensors, scale=1.0):
    """Independent bytes-per-token model: see cmd_inspect.c's header comment."""
    by_name = {t.name: t for t in tensors}
    embd = by_name.get("token_embd.weight")
    total = 0.0
    for t in tensors:
        if t is embd:
            continue
        expert = re.fullmatch(r"blk\.\d+\.ffn_.*_exps\..*", t.name) is not None
        total += int(t.n_bytes) * (scale if expert else 1.0)
    if embd is not None:
        rows = int(np.prod([int(x) for x in embd.shape[1:]]))
        total += int(embd.n_bytes) // rows
        if "output.weight" not in by_name:
            total += int(embd.n_bytes)
    return total


# ---- fixtures ------------------------------------------------------------------------------

RNG = np.random.default_rng(1234)


def many_types(w):
    w.add_key_value("t.u8", 250, VT.UINT8)
    w.add_key_value("t.i8", -120, VT.INT8)
    w.add_key_value("t.u16", 65000, VT.UINT16)
    w.add_key_value("t.i16", -32000, VT.INT16)
    w.add_key_value("t.u32", 4_000_000_000, VT.UINT32)
    w.add_key_value("t.i32", -2_000_000_000, VT.INT32)
    w.add_key_value("t.f32", 0.1, VT.FLOAT32)
    w.add_key_value("t.bool_t", True, VT.BOOL)
    w.add_key_value("t.bool_f", False, VT.BOOL)
    w.add_key_value("t.str", "héllo wörld ✓", VT.STRING)
    w.add_key_value("t.empty_str", "", VT.STRING)
    w.add_key_value("t.u64", 2**64 - 1, VT.UINT64)
    w.add_key_value("t.u64_small", 12345678901234, VT.UINT64)
    w.add_key_value("t.i64", -(2**63), VT.INT64)
    w.add_key_value("t.f64", 1e-310, VT.FLOAT64)
    w.add_key_value("t.f32_inf", float("inf"), VT.FLOAT32)
    w.add_key_value("t.arr_u8", [0, 1, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("t.arr_i16", [-5, 7], VT.ARRAY, sub_type=VT.INT16)
    w.add_key_value("t.arr_u32", [1, 2, 3], VT.ARRAY, sub_type=VT.UINT32)
    w.add_key_value("t.arr_i64", [-(2**40), 2**40], VT.ARRAY, sub_type=VT.INT64)
    w.add_key_value("t.arr_f32", [0.5, -1.25, 3.0], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_key_value("t.arr_f64", [1.0 / 3.0], VT.ARRAY, sub_type=VT.FLOAT64)
    w.add_key_value("t.arr_bool", [True, False, True], VT.ARRAY, sub_type=VT.BOOL)
    w.add_key_value("t.arr_str", ["a", "", "c d", "ünï"], VT.ARRAY, sub_type=VT.STRING)
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(["<s>", "</s>", "<pad>", "a", "b"])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")

    w.add_tensor("token_embd.weight", RNG.standard_normal((5, 256)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", RNG.standard_normal((256, 256)).astype(np.float16))
    bf16 = RNG.integers(0, 256, size=(3, 256 * 2), dtype=np.uint8)
    w.add_tensor("blk.0.attn_k.weight", bf16, raw_dtype=QT.BF16)
    q8 = RNG.integers(0, 256, size=(4, 8 * 34), dtype=np.uint8)
    w.add_tensor("blk.0.attn_v.weight", q8, raw_dtype=QT.Q8_0)
    q4k = RNG.integers(0, 256, size=(2, 2, 144), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_up.weight", q4k, raw_dtype=QT.Q4_K)
    q6k = RNG.integers(0, 256, size=(3, 210), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_down.weight", q6k, raw_dtype=QT.Q6_K)
    w.add_tensor("t.ints", np.arange(10, dtype=np.int32))
    w.add_tensor("t.bytes", np.arange(7, dtype=np.int8))
    w.add_tensor("output.weight", RNG.standard_normal((5, 256)).astype(np.float32))


# ---- inspect -------------------------------------------------------------------------------

def test_inspect_matches_gguf_reader(tandem, tmp_path):
    path = tmp_path / "types.gguf"
    write_gguf(path, many_types)
    js = inspect_json(tandem, path)
    r = GGUFReader(str(path))
    assert js["version"] == 3 and js["n_files"] == 1
    assert js["files"][0]["size"] == os.path.getsize(path)
    assert js["architecture"] == "llama"
    check_metadata(js["metadata"], r)
    check_tensors(js["tensors"], [r])
    check_offsets(js, [r])

    tok = js["tokenizer"]
    assert tok["model"] == "gpt2" and tok["pre"] == "smollm"
    assert tok["vocab_size"] == 5 and tok["merges"] == 1
    assert (tok["bos_id"], tok["bos_token"]) == (0, "<s>")
    assert (tok["eos_id"], tok["eos_token"]) == (1, "</s>")
    assert (tok["padding_id"], tok["padding_token"]) == (2, "<pad>")
    assert tok["eot_id"] is None and tok["add_bos"] is True
    assert tok["chat_template"] is True
    assert tok["chat_template_bytes"] == len(r.fields["tokenizer.chat_template"].contents().encode())

    tot = js["totals"]
    assert tot["n_params"] == sum(int(t.n_elements) for t in r.tensors)
    assert tot["tensor_bytes"] == sum(int(t.n_bytes) for t in r.tensors)
    assert tot["file_bytes"] == os.path.getsize(path)
    per_type = {}
    for t in r.tensors:
        per_type[QT(t.tensor_type).name] = per_type.get(QT(t.tensor_type).name, 0) + int(t.n_bytes)
    assert tot["bytes_per_type"] == per_type
    bpt = tot["bytes_per_token"]
    assert bpt["tied_embeddings"] is False and bpt["moe"] is False
    assert bpt["all_weights"] == pytest.approx(expected_per_token(r.tensors))
    assert bpt["top_k_experts"] == bpt["all_weights"]

    # the text form shows the same facts
    text = run(tandem, "inspect", str(path)).stdout
    assert "architecture:  \"llama\"" in text
    assert "blk.0.ffn_up.weight" in text and "Q4_K" in text
    assert "chat template    yes" in text
    no_t = inspect_json_no_tensors = json.loads(
        run(tandem, "inspect", "--json", "--no-tensors", str(path)).stdout)
    assert "tensors" not in no_t and inspect_json_no_tensors["totals"] == tot
    assert "blk.0.ffn_up.weight" not in run(tandem, "inspect", "--no-tensors", str(path)).stdout


def test_inspect_moe_bytes_per_token(tandem, tmp_path):
    n_expert, used, d, f = 8, 2, 64, 96

    def build(w):
        w.add_block_count(1)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(used)
        w.add_tensor("token_embd.weight", RNG.standard_normal((10, d)).astype(np.float32))
        w.add_tensor("blk.0.attn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor("blk.0.ffn_gate_inp.weight", RNG.standard_normal((n_expert, d)).astype(np.float32))
        for name, shape in (("gate", (n_expert, f, d)), ("up", (n_expert, f, d)),
                            ("down", (n_expert, d, f))):
            w.add_tensor(f"blk.0.ffn_{name}_exps.weight", RNG.standard_normal(shape).astype(np.float16))
        # no output.weight: tied embeddings

    path = tmp_path / "moe.gguf"
    write_gguf(path, build, arch="qwen3moe")
    js = inspect_json(tandem, path)
    r = GGUFReader(str(path))
    check_tensors(js["tensors"], [r])
    bpt = js["totals"]["bytes_per_token"]
    assert bpt["moe"] is True and bpt["expert_count"] == n_expert and bpt["expert_used_count"] == used
    assert bpt["tied_embeddings"] is True
    assert bpt["all_weights"] == pytest.approx(expected_per_token(r.tensors))
    assert bpt["top_k_experts"] == pytest.approx(expected_per_token(r.tensors, used / n_expert))
    assert bpt["top_k_experts"] < bpt["all_weights"]
    assert "per token (top-2 of 8 experts)" in run(tandem, "inspect", str(path)).stdout


def test_inspect_smollm2(tandem):
    if not os.path.exists(SMOLLM):
        pytest.skip(f"{SMOLLM} is absent (tools/setup.sh downloads it)")
    js = inspect_json(tandem, SMOLLM)
    r = GGUFReader(SMOLLM)
    check_metadata(js["metadata"], r)
    check_tensors(js["tensors"], [r])
    check_offsets(js, [r])
    assert js["architecture"] == "llama"
    tok = js["tokenizer"]
    assert tok["vocab_size"] == len(r.fields["tokenizer.ggml.tokens"].contents())
    assert tok["merges"] == len(r.fields["tokenizer.ggml.merges"].contents())
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    bos = r.fields["tokenizer.ggml.bos_token_id"].contents()
    assert tok["bos_id"] == bos and tok["bos_token"] == tokens[bos]
    tot = js["totals"]
    assert tot["n_params"] == sum(int(t.n_elements) for t in r.tensors)
    assert tot["bytes_per_token"]["tied_embeddings"] is True
    assert tot["bytes_per_token"]["all_weights"] == pytest.approx(expected_per_token(r.tensors))


def test_inspect_split_model(tandem, tmp_path):
    path = tmp_path / "split.gguf"
    write_gguf(path, many_types, split_max_tensors=4)
    files = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(files) == 3, files
    js = inspect_json(tandem, files[0])
    readers = [GGUFReader(str(f)) for f in files]
    assert js["n_files"] == 3
    assert [f["path"] for f in js["files"]] == [str(f) for f in files]
    check_metadata(js["metadata"], readers[0])  # metadata comes from the first file
    check_tensors(js["tensors"], readers)
    check_offsets(js, readers)
    assert js["totals"]["file_bytes"] == sum(os.path.getsize(f) for f in files)

    # a non-first file names the first; a missing file is named
    p = run(tandem, "inspect", str(files[1]), check=False)
    assert p.returncode == 1 and files[0].name in p.stderr and "split file 2 of 3" in p.stderr
    os.unlink(files[2])
    p = run(tandem, "inspect", str(files[0]), check=False)
    assert p.returncode == 1 and files[2].name in p.stderr and "missing" in p.stderr


def test_inspect_errors(tandem, tmp_path):
    path = tmp_path / "types.gguf"
    write_gguf(path, many_types)
    data = path.read_bytes()
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(data[:100])
    p = run(tandem, "inspect", str(bad), check=False)
    assert p.returncode == 1 and "trunc.gguf" in p.stderr and "truncated" in p.stderr
    bad.write_bytes(data[:-1000])
    p = run(tandem, "inspect", str(bad), check=False)
    assert p.returncode == 1 and "past end of file" in p.stderr
    p = run(tandem, "inspect", str(tmp_path / "none.gguf"), check=False)
    assert p.returncode == 1 and "none.gguf" in p.stderr
    assert run(tandem, "inspect", check=False).returncode == 2
    assert run(tandem, "inspect", str(path), "--bogus", check=False).returncode == 2


# ---- quantize ------------------------------------------------------------------------------

# Normalised RMS error bound (||deq - x|| / ||x||) on N(0,1) weights, per target type. Each is
# about 1.25x the rounding noise of the format (step / sqrt(12), step = a block's range over
# its levels) that llama.cpp's reference quantizers reach: a broken quantizer (wrong scale,
# wrong nibble order, lost sign) is far above these.
TOLERANCE = {
    "F16": 5e-4, "BF16": 4e-3, "Q8_0": 7e-3, "Q6_K": 2.2e-2, "Q5_K": 4.5e-2, "Q5_0": 5e-2,
    "Q5_1": 4.5e-2, "Q4_K": 9e-2, "Q4_0": 1.1e-1, "Q4_1": 9e-2,
}
FTYPE = {"F16": 1, "BF16": 32, "Q8_0": 7, "Q6_K": 18, "Q5_K": 16, "Q5_0": 8, "Q5_1": 9,
         "Q4_K": 14, "Q4_0": 2, "Q4_1": 3}


def quant_source(w):
    w.add_block_count(1)
    w.add_string("general.name", "quantize me")
    w.add_token_list(["x", "y"])
    w.add_key_value("split.count", 1, VT.UINT16)  # dropped by quantize (single-file output)
    w.add_tensor("token_embd.weight", RNG.standard_normal((16, 512)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", RNG.standard_normal(512).astype(np.float16))
    w.add_tensor("blk.0.attn_q.weight", RNG.standard_normal((64, 512)).astype(np.float32))
    w.add_tensor("blk.0.ffn_up.weight", RNG.standard_normal((32, 256)).astype(np.float16))
    w.add_tensor("blk.0.ffn_gate_inp.weight", RNG.standard_normal((8, 512)).astype(np.float32))
    w.add_tensor("blk.0.odd.weight", RNG.standard_normal((4, 48)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.bias", RNG.standard_normal(64).astype(np.float32))
    w.add_tensor("blk.0.ffn_gate_exps.weight", RNG.standard_normal((2, 8, 256)).astype(np.float32))
    w.add_tensor("t.index", np.arange(6, dtype=np.int32))


@pytest.mark.parametrize("qtype", list(TOLERANCE))
def test_quantize(tandem, tmp_path, qtype):
    src = tmp_path / "src.gguf"
    write_gguf(src, quant_source)
    out = tmp_path / "out.gguf"
    p = run(tandem, "quantize", str(src), str(out), "--type", qtype, "--threads", "2", check=False)
    if p.returncode == 2 and "cannot quantize" in p.stderr:
        pytest.fail(f"this build has no {qtype} quantizer: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]  # temporary renamed away

    rs, ro = GGUFReader(str(src)), GGUFReader(str(out))
    blck = gguf.GGML_QUANT_SIZES[QT[qtype]][0]
    src_fields = {k: f.contents() for k, f in rs.fields.items()
                  if not k.startswith("GGUF.") and not k.startswith("split.")}
    out_fields = {k: f.contents() for k, f in ro.fields.items() if not k.startswith("GGUF.")}
    assert "split.count" not in out_fields
    assert out_fields.pop("general.file_type") == FTYPE[qtype]
    if qtype not in ("F16", "BF16"):
        assert out_fields.pop("general.quantization_version") == 2
    assert out_fields == src_fields

    src_t = {t.name: t for t in rs.tensors}
    assert [t.name for t in ro.tensors] == [t.name for t in rs.tensors]
    for t in ro.tensors:
        s = src_t[t.name]
        assert list(t.shape) == list(s.shape), t.name
        name = t.name
        if name == "t.index":
            want = QT.I32
        elif len(s.shape) == 1:
            want = QT.F32
        elif name.endswith("ffn_gate_inp.weight") or int(s.shape[0]) % blck != 0:
            want = s.tensor_type
        else:
            want = QT[qtype]
        assert QT(t.tensor_type) == want, (name, QT(t.tensor_type).name, want.name)
        if want == QT.I32:
            assert np.array_equal(t.data, s.data)
            continue
        x = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float64).reshape(-1)
        y = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        assert x.shape == y.shape
        if want == s.tensor_type or want == QT.F32:
            assert np.array_equal(x, y), name  # copied, or widened exactly to F32
            continue
        nrmse = np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x ** 2))
        assert nrmse < TOLERANCE[qtype], (name, qtype, nrmse)
        # where gguf-py has a quantizer (F16, BF16, Q8_0, Q4_0/1, Q5_0/1), it follows
        # llama.cpp's reference bit for bit, and so must ours
        try:
            ref = gguf.quants.quantize(gguf.quants.dequantize(s.data, s.tensor_type), QT[qtype])
        except NotImplementedError:
            continue
        assert ref.tobytes() == np.asarray(t.data).tobytes(), (name, qtype)


def test_quantize_errors(tandem, tmp_path):
    src = tmp_path / "src.gguf"
    write_gguf(src, quant_source)
    p = run(tandem, "quantize", str(src), str(tmp_path / "o.gguf"), "--type", "Q9_9", check=False)
    assert p.returncode == 2 and "unknown type" in p.stderr
    p = run(tandem, "quantize", str(src), str(tmp_path / "o.gguf"), check=False)
    assert p.returncode == 2
    p = run(tandem, "quantize", str(tmp_path / "none.gguf"), str(tmp_path / "o.gguf"),
            "--type", "Q8_0", check=False)
    assert p.returncode == 1 and "none.gguf" in p.stderr
    p = run(tandem, "quantize", str(src), str(tmp_path / "no-such-dir" / "o.gguf"),
            "--type", "Q8_0", check=False)
    assert p.returncode == 1 and "no-such-dir" in p.stderr
    assert not (tmp_path / "o.gguf").exists()
