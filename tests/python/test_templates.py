"""Chat templates: `tandem template` against Python jinja2 configured as transformers
configures it for apply_chat_template (the oracle), byte for byte.

The contexts are tests/fixtures/templates/cases.jsonl (made by tools/make_template_cases.py);
the templates are the committed fixture copies in tests/fixtures/templates/ (see the README
there). Each template is rendered for all its cases by one `tandem template --jsonl`
process. A case the oracle rejects (raise_exception, a type error) must fail in tandem
too, and for raise_exception our error must contain the template's message.

When transformers is installed, the oracle itself is checked against
transformers.utils.chat_template_utils.render_jinja_template on every case.
"""
import datetime as _dt
import json
import os
import subprocess
from collections import defaultdict

import jinja2
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import DEFAULT_MODEL, FIXTURES, TANDEM_BIN

TPL_DIR = FIXTURES / "templates"
CASES = TPL_DIR / "cases.jsonl"
NOW = 1718000000.123456  # fixed clock for strftime_now (2024-06-10 06:13:20 UTC)
TEMPLATES = ["qwen3-coder", "gpt-oss", "minimax-m2", "llama-3.1", "qwen3", "smollm2", "devstral-small-2",
             "mistral-v13", "qwen3-coder-next", "qwen3.5"]
MIN_CASES = 30


# ---------------------------------------------------------------------------------------
# The oracle: jinja2 set up as transformers' _cached_compile_jinja_template does, and the
# context prepared as render_jinja_template prepares it.

class _TemplateDict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")


class RaisedByTemplate(Exception):
    pass


def _raise_exception(message):
    raise RaisedByTemplate(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return _dt.datetime.fromtimestamp(NOW).strftime(fmt)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _alias_reasoning(messages):
    out = []
    for m in messages:
        if isinstance(m, dict):
            r = next((m[k] for k in ("reasoning_content", "thinking", "reasoning")
                      if m.get(k) is not None), None)
            if r is not None:
                m = {"thinking": r, **m, "reasoning_content": r}
        out.append(m)
    return out


def oracle_render(env_tpl, ctx):
    """('ok', text) or ('raise', message) or ('error', description)."""
    kwargs = {k: v for k, v in ctx.items() if k not in ("messages", "tools", "documents",
                                                       "add_generation_prompt")}
    try:
        text = env_tpl.render(messages=_alias_reasoning(ctx.get("messages", [])),
                              tools=ctx.get("tools"), documents=ctx.get("documents"),
                              add_generation_prompt=ctx.get("add_generation_prompt", False),
                              **kwargs)
        return ("ok", text)
    except RaisedByTemplate as e:
        return ("raise", str(e))
    except Exception as e:  # noqa: BLE001 - any template failure must fail in tandem too
        return ("error", f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------

def load_cases():
    by_tpl = defaultdict(list)
    with open(CASES, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                c = json.loads(line)
                by_tpl[c["template"]].append(c)
    return by_tpl


def tandem_render_all(tpl_args, contexts, tmp_path, extra=()):
    path = tmp_path / "ctx.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for c in contexts:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    env = dict(os.environ, TZ="UTC")
    proc = subprocess.run([str(TANDEM_BIN), "template", *tpl_args, "--jsonl", str(path),
                           "--now", repr(NOW), *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(contexts), proc.stdout[-2000:]
    return [json.loads(x) for x in lines]


def compare(cases, results, env_tpl):
    """Returns (n_ok, n_raise, mismatches)."""
    n_ok = n_err = 0
    mismatches = []
    for case, got in zip(cases, results):
        kind, val = oracle_render(env_tpl, case["context"])
        if kind == "ok":
            if got.get("output") != val:
                mismatches.append((case["id"], "output differs", val, got))
            else:
                n_ok += 1
        else:
            if "error" not in got:
                mismatches.append((case["id"], f"oracle failed ({val}) but tandem rendered", val, got))
            elif kind == "raise" and val not in got["error"]:
                mismatches.append((case["id"], "raise_exception message missing", val, got))
            else:
                n_err += 1
    return n_ok, n_err, mismatches


def describe(mismatches):
    out = []
    for cid, why, want, got in mismatches[:5]:
        out.append(f"{cid}: {why}\n  want: {want!r}\n  got:  {got!r}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def cases_by_template():
    return load_cases()


@pytest.fixture(scope="module")
def jinja_env():
    os.environ["TZ"] = "UTC"  # the oracle's strftime_now uses local time, as tandem does
    import time
    time.tzset()
    return make_env()


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_matches_jinja2(name, cases_by_template, jinja_env, tandem_bin, tmp_path):
    cases = cases_by_template[name]
    assert len(cases) >= MIN_CASES, f"{name}: only {len(cases)} cases"
    src = (TPL_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    env_tpl = jinja_env.from_string(src)
    results = tandem_render_all(["--template", str(TPL_DIR / f"{name}.jinja")],
                                [c["context"] for c in cases], tmp_path)
    n_ok, n_err, mism = compare(cases, results, env_tpl)
    print(f"{name}: {len(cases)} cases, {n_ok} identical renders, {n_err} rejected by both, "
          f"{len(mism)} mismatches")
    assert not mism, describe(mism)
    assert n_ok >= MIN_CASES - 5, f"{name}: too few successful renders ({n_ok})"


def test_smollm2_from_gguf_matches(cases_by_template, jinja_env, tandem_bin, tmp_path):
    """The template read from the GGUF (tokenizer.chat_template) renders like the fixture
    copy, with bos/eos texts taken from the model's vocabulary."""
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"model missing at {DEFAULT_MODEL}")
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(DEFAULT_MODEL))
    f = r.fields["tokenizer.chat_template"]
    assert bytes(f.parts[f.data[0]]).decode() == (TPL_DIR / "smollm2.jinja").read_text(encoding="utf-8")
    cases = cases_by_template["smollm2"]
    ctxs = []
    for c in cases:
        ctx = dict(c["context"])
        ctx.pop("bos_token", None)
        ctx.pop("eos_token", None)
        ctxs.append(ctx)
    results = tandem_render_all(["--model", str(DEFAULT_MODEL)], ctxs, tmp_path)
    env_tpl = jinja_env.from_string((TPL_DIR / "smollm2.jinja").read_text(encoding="utf-8"))
    n_ok, n_err, mism = compare([{"id": c["id"], "context": x} for c, x in zip(cases, ctxs)],
                                results, env_tpl)
    assert not mism, describe(mism)
    assert n_ok > 0


def test_oracle_matches_transformers(cases_by_template, jinja_env):
    """Our oracle reproduces transformers' own renderer (when transformers is installed)."""
    cu = pytest.importorskip("transformers.utils.chat_template_utils")

    class FixedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.fromtimestamp(NOW, tz)

    saved = cu.datetime
    cu.datetime = FixedDatetime
    try:
        checked = 0
        for name in TEMPLATES:
            src = (TPL_DIR / f"{name}.jinja").read_text(encoding="utf-8")
            env_tpl = jinja_env.from_string(src)
            for c in cases_by_template[name]:
                ctx = dict(c["context"])
                msgs = ctx.pop("messages", [])
                tools = ctx.pop("tools", None)
                agp = ctx.pop("add_generation_prompt", False)
                try:
                    rendered, _ = cu.render_jinja_template(conversations=[msgs], tools=tools,
                                                           chat_template=src,
                                                           add_generation_prompt=agp, **ctx)
                    theirs = ("ok", rendered[0])
                except Exception:  # noqa: BLE001
                    theirs = ("fail", None)
                ours = oracle_render(env_tpl, c["context"])
                if theirs[0] == "ok":
                    assert ours == theirs, c["id"]
                else:
                    assert ours[0] != "ok", c["id"]
                checked += 1
        assert checked > 0
    finally:
        cu.datetime = saved


def test_syntax_error_reports_position(tandem_bin, tmp_path):
    t = tmp_path / "bad.jinja"
    t.write_text("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}\n", encoding="utf-8")
    proc = subprocess.run([str(TANDEM_BIN), "template", "--template", str(t)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "line 3, column 10" in proc.stderr, proc.stderr
    assert "{{ 1 + }}" in proc.stderr


def test_raise_exception_message_and_status(tandem_bin, tmp_path):
    t = tmp_path / "r.jinja"
    t.write_text("{% if messages|length == 0 %}{{ raise_exception('need at least one message: ünïcode') }}{% endif %}ok",
                 encoding="utf-8")
    ctx = tmp_path / "c.json"
    ctx.write_text('{"messages": []}', encoding="utf-8")
    proc = subprocess.run([str(TANDEM_BIN), "template", "--template", str(t), "--context", str(ctx)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "need at least one message: ünïcode" in proc.stderr
    res = tandem_render_all(["--template", str(t)], [{"messages": []}, {"messages": [{"role": "user"}]}],
                            tmp_path)
    assert res[0]["status"] == "invalid parameter" and "ünïcode" in res[0]["error"]
    assert res[1] == {"output": "ok"}


def test_limits_stop_hostile_templates(tandem_bin, tmp_path):
    cases = {
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": "iteration",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}": "depth",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}": "limit",
    }
    for src, word in cases.items():
        t = tmp_path / "h.jinja"
        t.write_text(src, encoding="utf-8")
        proc = subprocess.run([str(TANDEM_BIN), "template", "--template", str(t),
                               "--max-iterations", "1000000"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, src
        assert word in proc.stderr, (src, proc.stderr)


SNIPPET_CTX = {"xs": [3, 1, 2], "d": {"b": 1, "a": [1, 2.5, "x"]}, "s": "Hello World", "n": None}


def test_snippets_match_jinja2(jinja_env, tandem_bin, tmp_path):
    """Small templates exercising one feature each (tests/fixtures/templates/snippets.txt,
    separated by lines '===='), rendered by both engines with the same variables."""
    text = (TPL_DIR / "snippets.txt").read_text(encoding="utf-8")
    snippets = [s for s in text.split("\n====\n") if s.strip()]
    assert len(snippets) >= 90
    mism = []
    for i, src in enumerate(snippets):
        t = tmp_path / f"s{i}.jinja"
        t.write_text(src, encoding="utf-8")
        want = oracle_render(jinja_env.from_string(src), dict(SNIPPET_CTX))
        got = tandem_render_all(["--template", str(t), "--no-reasoning-alias"], [SNIPPET_CTX], tmp_path)[0]
        if want[0] == "ok":
            if got.get("output") != want[1]:
                mism.append((f"snippet {i}", src, want, got))
        elif "error" not in got or (want[0] == "raise" and want[1] not in got["error"]):
            mism.append((f"snippet {i}", src, want, got))
    assert not mism, "\n".join(f"{a}: {b!r}\n  want {c!r}\n  got  {d!r}" for a, b, c, d in mism[:5])
