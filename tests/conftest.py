"""Shared fixtures: tiny random models per architecture, and the embedded model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from latentmas.models import LoadedModel, load_model
from latentmas.tiny import tiny_loaded

NOT_APPLICABLE = "not applicable:"  # a skip reason that is not a missing package

ARCHS = ["llama", "qwen2", "qwen3", "gemma", "gemma3", "mistral"]  # the last two slide (window 16)

# Questions of very different lengths, so a batch needs real padding.
QUESTIONS = [
    "Janet has 16 eggs and eats 3. How many are left?",
    "x",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "What is 7 * 8?",
    "Josh buys a house for $80,000, puts in $50,000 of repairs and the value rises by 150%. "
    "How much profit did he make? Think about every step carefully before answering.",
    "2+2",
    "A train travels 60 miles in 1.5 hours. What is its speed?",
    "Count to three.",
]


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmark_script():
    """Import a script of benchmarks/ by name (they are scripts, not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session", params=ARCHS)
def tiny_any(request) -> LoadedModel:
    return tiny_loaded(request.param)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_loaded("llama")


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    """The real SmolLM2-135M-Instruct (converted from GGUF once, then cached), in float32,
    where a batch's answers equal the rows' answers alone token for token."""
    return load_model(None, device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Realignment matrices of test models go to a per-session folder, not the user's cache;
    the embedded model keeps using the user's cache so it is converted only once."""
    from latentmas import paths

    real = paths.cache_dir()
    session_cache = tmp_path_factory.getbasetemp() / "latentmas-cache"
    (session_cache).mkdir(exist_ok=True)
    models = session_cache / "models"
    if not models.exists():
        (real / "models").mkdir(parents=True, exist_ok=True)
        models.symlink_to(real / "models", target_is_directory=True)
    monkeypatch.setenv("LATENTMAS_CACHE", str(session_cache))


def pytest_runtest_makereport(item, call):
    """With LATENTMAS_REQUIRE_OPTIONAL=1 (set by CI for its optional-engine pass), a test
    skipped for a missing package or program fails instead: that pass must run them all."""
    import os

    if call.when != "setup" or not os.environ.get("LATENTMAS_REQUIRE_OPTIONAL"):
        return None
    if call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        reason = str(call.excinfo.value)
        if "CUDA" in reason or "GPU" in reason or reason.startswith(NOT_APPLICABLE):
            return None  # no CI machine has one; or the test checks what happens without the package
        call.excinfo = None
        pytest.fail(f"required optional test was skipped: {reason}")
    return None
