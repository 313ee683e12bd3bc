"""Documents to ingest: text and markdown files, and the default demo corpus.

The default corpus is CPython's language-reference topics (`pydoc_data.topics`, in every Python):
79 documents, ~465 KB, so a newcomer can ask about `with` or `yield` right after `make run`.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def pydoc_topics() -> Iterator[tuple[str, str, str, dict]]:
    """(id, text, source, metadata) for every topic of the Python language reference."""
    from pydoc_data.topics import topics
    for name in sorted(topics):
        yield f"pydoc:{name}", topics[name], name, {"corpus": "pydoc_data.topics"}


def text_files(paths: list[str]) -> Iterator[tuple[str, str, str, dict]]:
    """(id, text, source, metadata) for each text or markdown file under paths (folders recursively)."""
    for p in paths:
        path = Path(p)
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES) \
            if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"no such file: {f}")
            text = f.read_text(encoding="utf-8", errors="replace")
            yield str(f.resolve()), text, f.name, {"path": str(f.resolve())}
