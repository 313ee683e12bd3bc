"""Shared fixtures: the real model from its package, the golden references, tiny random GGUFs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))          # gguf_factory

import engine  # noqa: E402,F401  (numba settings before any kernel)

# A copy of ../shared/fixtures lives in tests/golden so the repository tests itself anywhere;
# test_golden_copy.py checks the copy still equals the shared one when that is present.
GOLDEN = TESTS / "golden"
SHARED_FIXTURES = TESTS.parent.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def hf_reference() -> dict:
    return json.loads((GOLDEN / "smollm2" / "hf_reference.json").read_text())


@pytest.fixture(scope="session")
def llamacpp_reference() -> dict:
    return json.loads((GOLDEN / "smollm2" / "llamacpp_reference.json").read_text())


@pytest.fixture(scope="session")
def chat0_logits() -> np.ndarray:
    return np.load(GOLDEN / "smollm2" / "chat0_last_logits.npy")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from engine.assets import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def llm(smollm2_path):
    """SmolLM2-135M-Instruct in the exact mode (float32 activations)."""
    from engine.llm import LLM
    return LLM.load(smollm2_path)


@pytest.fixture(scope="session")
def fast_llm(smollm2_path):
    """The same model in the fast mode (int8 activations in decode)."""
    from engine.llm import LLM
    return LLM.load(smollm2_path, int8_activations=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
