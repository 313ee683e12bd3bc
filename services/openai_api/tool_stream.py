"""One streamed chat choice that was offered tools: its text deltas as content and tool-call events.

<tool_call> blocks are parsed as they stream (engine.tool_calls.ToolCallStreamParser). An answer
that is a call's bare JSON (no tags; small models write that, and the Generation service counts it
as a call) can only be told from content at its end, so content that starts with "{" is held
back until the answer ends: then it is either the call the Generation service found (its last
message's tool_calls) or released as content.
"""
from __future__ import annotations

from engine.tool_calls import ArgumentsDelta, ContentDelta, StreamEvent, ToolCallStart, ToolCallStreamParser


class ChatToolStream:
    def __init__(self):
        self._parser = ToolCallStreamParser()
        self._held = ""              # content that may be a bare call
        self._released = False       # content was sent: the answer is not a bare call

    def feed(self, text: str) -> list[StreamEvent]:
        return self._settle(self._parser.feed(text))

    def finish(self, final_calls) -> list[StreamEvent]:
        """What the end settles; final_calls: the tool_calls of the Generation service's last message."""
        events = self._settle(self._parser.finish())
        if self._held:
            if not self._parser.calls and not self._parser.malformed and len(final_calls) == 1:
                call = final_calls[0]
                events += [ToolCallStart(0, call.id, call.name), ArgumentsDelta(0, call.arguments)]
            else:
                events.append(ContentDelta(self._held))
            self._held = ""
        return events

    def _settle(self, events: list[StreamEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for e in events:
            if isinstance(e, ContentDelta) and not self._released:
                self._held += e.text
                if self._held.lstrip() and not self._held.lstrip().startswith("{"):
                    out.append(ContentDelta(self._held))
                    self._held, self._released = "", True
                continue
            if not isinstance(e, ContentDelta) and self._held:      # a tagged call follows: what came before is content
                out.append(ContentDelta(self._held))
                self._held, self._released = "", True
            out.append(e)
        return out
