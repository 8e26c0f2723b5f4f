"""The client conformance suite (tests/clients): official client libraries (anthropic, openai,
openai-agents, litellm) driving `tandem serve`, unchanged apart from their base URL and model.

The serving helpers and fixtures are tests/python's (conftest.py, serve_util.py): that conftest
is loaded here under another module name and its public names re-exported, so that
`from conftest import ...` and serve_util's own import of it work from this folder too.
"""
import importlib.util
import pathlib
import sys

_PYTHON_TESTS = pathlib.Path(__file__).resolve().parents[1] / "python"
sys.path.insert(0, str(_PYTHON_TESTS))

_spec = importlib.util.spec_from_file_location("tandem_python_conftest",
                                               _PYTHON_TESTS / "conftest.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
globals().update({k: v for k, v in vars(_base).items() if not k.startswith("_")})

SCRIPTED = FIXTURES / "scripted"  # noqa: F821 (re-exported above)
