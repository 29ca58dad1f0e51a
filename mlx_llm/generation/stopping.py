"""When a generated sequence stops, and the text it emits on the way.

`SequenceText.add` is the one place that turns generated tokens into final
text: `stream_generate`, `batch_generate` (and through them `ChatSession`)
and the server's scheduler all feed it one token at a time.
"""

from __future__ import annotations

from typing import Sequence

# Why a sequence ended: an end token, a stop string, or max_tokens (or the context limit).
FINISH_REASONS = ("eos", "stop", "length")


class StopStrings:
    """Holds back text that could be the start of a stop string."""

    def __init__(self, stop: Sequence[str]):
        if any(not text for text in stop):
            raise ValueError("stop strings must not be empty")
        self.stop = list(stop)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return ``(text safe to emit, whether a stop string appeared)``."""
        self.pending += text
        found = [self.pending.find(stop) for stop in self.stop if stop in self.pending]
        if found:
            emitted = self.pending[: min(found)]
            self.pending = ""
            return emitted, True
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.pending)), held, -1):
                if self.pending.endswith(stop[:size]):
                    held = size
                    break
        emitted = self.pending[: len(self.pending) - held]
        self.pending = self.pending[len(emitted):]
        return emitted, False

    def flush(self) -> str:
        emitted, self.pending = self.pending, ""
        return emitted


class SequenceText:
    """The text of one generated sequence, token by token.

    For each token `add` returns the text that became final and, on the
    last token, why the sequence ended:

    - an end token ends it with ``"eos"`` and emits no text of its own;
    - otherwise the token is detokenized and text that could begin a stop
      string is held back; a stop string ends it with ``"stop"`` (neither
      the stop string nor anything after it is emitted);
    - the ``max_tokens``-th token ends it with ``"length"``;
    - on ``"eos"`` and ``"length"``, the text still held back (an unfinished
      character, the start of a stop string that never completed) is emitted.

    Args:
        tokenizer: Gives the streaming detokenizer (``tokenizer.detokenizer()``).
        max_tokens: Most tokens of the sequence (>= 1).
        stop: Strings that end it; they must not be empty.
        eos_token_ids: Tokens that end it.
    """

    def __init__(self, tokenizer, max_tokens: int, stop: Sequence[str] = (), eos_token_ids: Sequence[int] = ()):
        self.detokenizer = tokenizer.detokenizer()
        self.stops = StopStrings(stop)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_tokens = max_tokens
        self.tokens = 0
        self.finish_reason: str | None = None

    def add(self, token: int) -> tuple[str, str | None]:
        """Add the next generated token.

        Returns:
            ``(text, finish_reason)``: the newly final text (may be empty) and
            ``None`` while the sequence goes on, else one of `FINISH_REASONS`.
        """
        assert self.finish_reason is None, "the sequence has already ended"
        self.tokens += 1
        if token in self.eos_token_ids:
            text, finish = "", "eos"
        else:
            self.detokenizer.add_token(token)
            text, stopped = self.stops.feed(self.detokenizer.last_segment)
            finish = "stop" if stopped else None
        if finish is None and self.tokens >= self.max_tokens:
            finish = "length"
        if finish in ("eos", "length"):
            self.detokenizer.finalize()
            text += self.stops.feed(self.detokenizer.last_segment)[0] + self.stops.flush()
        self.finish_reason = finish
        return text, finish
