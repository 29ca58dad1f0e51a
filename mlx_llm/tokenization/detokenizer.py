"""Streaming detokenization: text of generated ids as they arrive, one token at a time."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class StreamingDetokenizer:
    """Text of generated ids, one token at a time, never emitting text that may still change.

    Byte-level BPE and SentencePiece-style tokenizers decode each token to
    bytes on its own, so each step costs O(1): bytes go through an
    incremental UTF-8 decoder that holds back an incomplete character (no
    U+FFFD halfway through an emoji). Other decoders (WordPiece, cleanup of
    spaces) re-decode a short window of recent tokens and emit only the text
    that adding the newest token did not change. Either way the segments add
    up to ``tokenizer.decode(all_ids)`` (one exception: where byte-fallback
    tokens spell invalid UTF-8, `tokenizers` writes a U+FFFD per byte and
    this class one per invalid sequence, as Python's decoder does).

    Args:
        tokenizer: The tokenizer whose ids arrive.
        skip_special_tokens: Leave out special tokens, as `Tokenizer.decode` does.
    """

    # Tokens of already-emitted text kept as context when the window slides.
    _CONTEXT_TOKENS = 4
    _MAX_WINDOW = 16

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._plan = tokenizer._backend.byte_plan()
        self.reset()

    def reset(self) -> None:
        """Forget all tokens and text, to start a new stream."""
        self._tokens: list[int] = []
        self._text_parts: list[str] = []
        self._unread: list[str] = []
        self._seen_text_token = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Window state of the re-decoding path.
        self._window: list[int] = []
        self._window_text = ""
        self._emitted = 0

    @property
    def tokens(self) -> list[int]:
        """All ids added since the last reset."""
        return list(self._tokens)

    @property
    def text(self) -> str:
        """All final text so far."""
        return "".join(self._text_parts)

    @property
    def last_segment(self) -> str:
        """Final text that arrived since the previous read of this property."""
        segment = "".join(self._unread)
        self._unread = []
        return segment

    def _emit(self, text: str) -> None:
        if text:
            self._text_parts.append(text)
            self._unread.append(text)

    def add_token(self, token_id: int) -> None:
        """Add the next generated id (one past the vocabulary adds no text, as in `Tokenizer.decode`)."""
        token_id = int(token_id)
        if token_id < 0:
            raise ValueError(f"token ids must be >= 0, got {token_id}")
        self._tokens.append(token_id)
        if self._tokenizer.id_to_token(token_id) is None:
            return
        if self._plan is not None:
            if self._skip_special_tokens and token_id in self._tokenizer._special_ids:
                return
            data = self._plan.token_bytes(token_id, first=not self._seen_text_token)
            self._seen_text_token = True
            self._emit(self._utf8.decode(data))
            return
        self._add_by_redecoding(token_id)

    def _add_by_redecoding(self, token_id: int) -> None:
        self._window.append(token_id)
        text = self._tokenizer.decode(self._window, self._skip_special_tokens)
        # Text the newest token left unchanged is final; the newest token's own text may still
        # change (a following "." pulls in the space before it, a byte completes a character).
        stable = 0
        limit = min(len(text), len(self._window_text))
        while stable < limit and text[stable] == self._window_text[stable]:
            stable += 1
        while stable > self._emitted and text[stable - 1] == "\ufffd":
            stable -= 1
        if stable > self._emitted:
            self._emit(text[self._emitted : stable])
            self._emitted = stable
        self._window_text = text
        if len(self._window) > self._MAX_WINDOW:
            self._slide_window(text)

    def _slide_window(self, text: str) -> None:
        # Keep a few tokens of context; the dropped tokens' text must be emitted and be a
        # prefix of the window's text, so that decoding the rest gives the remaining suffix.
        # The kept tokens must show some text: a decoder treats the first text token of a
        # window differently (no space before it), and later tokens must not be that one.
        kept = self._window[-self._CONTEXT_TOKENS :]
        kept_text = self._tokenizer.decode(kept, self._skip_special_tokens)
        dropped_length = len(text) - len(kept_text)
        if kept_text and text.endswith(kept_text) and self._emitted >= dropped_length:
            self._window = kept
            self._window_text = kept_text
            self._emitted -= dropped_length

    def finalize(self) -> None:
        """Flush the text held back at the end of the stream."""
        if self._plan is not None:
            self._emit(self._utf8.decode(b"", final=True))
            return
        text = self._tokenizer.decode(self._window, self._skip_special_tokens)
        self._emit(text[self._emitted :])
        self._emitted = len(text)
        self._window_text = text
