"""Where a chunk sits in its document: the headings above it, as a contextual header.

A chunk cut from the middle of a long document ("It must return a string object.") does not say
what it is about; its document's title and section do ("Special method names > Basic
customization"). The header is indexed and embedded with the chunk (contextual chunk headers),
not shown as its text.

Headings recognised: reStructuredText titles (a line underlined, and optionally overlined, with
one of = - ~ ^ * # + " ' `: the first underline character met is level 1, the next new one level 2,
...), and Markdown ATX headings (# Title, ## Section).

    outline = DocumentOutline.of(text)
    outline.path_at(offset)  -> ["Special method names", "Basic customization"]
    headed_chunks(text, source, offsets_of, chunking) -> [(Chunk, "source: Title > Section"), ...]
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass

from .chunking import Chunk, ChunkingConfig, chunk_text

_RST_UNDERLINE = re.compile(r"^(?P<title>[^\n]*\S[^\n]*)\n(?P<line>([=\-~^*#+\"'`])\3{2,})[ \t]*$", re.M)
_MD_HEADING = re.compile(r"^(?P<hashes>#{1,6})[ \t]+(?P<title>[^\n]*\S)[ \t#]*$", re.M)
_EMPHASIS = re.compile(r"\*([^*\n]+)\*")
MAX_TITLE_CHARS = 120


@dataclass(frozen=True)
class Heading:
    offset: int          # where the heading starts in the document
    level: int           # 1 = the document's title
    title: str


class DocumentOutline:
    def __init__(self, headings: list[Heading]):
        self.headings = sorted(headings, key=lambda h: h.offset)
        self._offsets = [h.offset for h in self.headings]

    @classmethod
    def of(cls, text: str) -> DocumentOutline:
        headings: list[Heading] = []
        levels: dict[str, int] = {}
        for m in _RST_UNDERLINE.finditer(text):
            title = m.group("title").strip()
            underline = m.group("line")
            # a title as long as its underline (or close): not a sentence that ends above a rule
            if len(title) > MAX_TITLE_CHARS or len(underline) < len(title) * 0.6:
                continue
            level = levels.setdefault(underline[0], len(levels) + 1)
            headings.append(Heading(m.start(), level, _EMPHASIS.sub(r"\1", title)))
        for m in _MD_HEADING.finditer(text):
            headings.append(Heading(m.start(), len(m.group("hashes")), m.group("title").strip()))
        return cls(headings)

    def path_at(self, offset: int) -> list[str]:
        """Titles of the headings that contain offset, outermost first."""
        path: list[Heading] = []
        for heading in self.headings[:bisect.bisect_right(self._offsets, offset)]:
            while path and path[-1].level >= heading.level:
                path.pop()
            path.append(heading)
        return [h.title for h in path]


def contextual_header(source: str, outline: DocumentOutline, offset: int) -> str:
    """"source: Title > Section" for the chunk starting at offset (the source alone when the
    document has no headings; the source is left out when it is the title itself)."""
    path = outline.path_at(offset)
    if path and path[0].lower() == source.lower():
        path = path[1:]
    return f"{source}: {' > '.join(path)}" if path else source


def headed_chunks(text: str, source: str, offsets_of: Callable[[str], list[tuple[int, int]]],
                  chunking: ChunkingConfig, headers: bool = True) -> list[tuple[Chunk, str]]:
    """The document's chunks (chunking.chunk_text), each with its contextual header ("" when
    headers is off): what ingest stores, embeds and indexes."""
    chunks = chunk_text(text, offsets_of, chunking)
    if not headers:
        return [(c, "") for c in chunks]
    outline = DocumentOutline.of(text)
    return [(c, contextual_header(source, outline, c.start)) for c in chunks]
