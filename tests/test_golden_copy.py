"""tests/golden is a copy of ../shared/fixtures: fail loudly if the two drift apart."""
import filecmp

import pytest
from conftest import GOLDEN, SHARED_FIXTURES


@pytest.mark.skipif(not SHARED_FIXTURES.is_dir(), reason="no ../shared/fixtures beside this checkout")
@pytest.mark.parametrize("name", ["smollm2/hf_reference.json", "smollm2/llamacpp_reference.json",
                                  "smollm2/chat0_last_logits.npy", "minilm/minilm_reference.json",
                                  "minilm/minilm_embeddings.npy"])
def test_golden_files_equal_shared_fixtures(name):
    assert filecmp.cmp(GOLDEN / name, SHARED_FIXTURES / name, shallow=False), f"{name} differs from shared/fixtures"
