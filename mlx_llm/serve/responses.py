"""OpenAI response objects: completions, streamed chunks, logprobs, embeddings and usage."""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np

from .engine import DoneEvent, TokenEvent
from .protocol import GenerationRequest


def new_id(request: GenerationRequest) -> str:
    return ("chatcmpl-" if request.is_chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(done: DoneEvent) -> dict:
    """OpenAI's ``usage``, with the prompt tokens served from the prefix cache."""
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def token_byte_plan(tokenizer):
    """How ``tokenizer`` turns each token into bytes (the streaming detokenizer's
    `BytePlan`), or ``None`` where its decoder does not work token by token."""
    backend = getattr(tokenizer, "_backend", None)  # an mlx_llm Tokenizer; other tokenizers fall back to text
    try:
        return None if backend is None else backend.byte_plan()
    except Exception:  # a decoder the plan cannot describe: bytes come from the decoded text
        return None


class LogprobFormatter:
    """Token log-probabilities in the chat or the text-completion layout."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer = tokenizer
        self.chat = chat
        self._plan = token_byte_plan(tokenizer)

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _bytes(self, token: int) -> list[int]:
        # A token may hold part of a character: its text is then U+FFFD, its bytes are its own.
        if self._plan is not None:
            try:
                return list(self._plan.token_bytes(token))
            except ValueError:  # not in the vocabulary the plan reads (an added token)
                pass
        return list(self._text(token).encode())

    def chat_entry(self, event: TokenEvent) -> dict:
        """One token's entry of a chat ``logprobs.content`` list, with its top alternatives.

        Args:
            event: A token event (``token`` set).

        Returns:
            ``{"token", "logprob", "bytes", "top_logprobs"}``; ``bytes`` are the
            token's own UTF-8 bytes, part of a character included.
        """
        text = self._text(event.token)
        top = [{"token": self._text(token), "logprob": logprob, "bytes": self._bytes(token)}
               for token, logprob in (event.top_logprobs or [])]
        return {"token": text, "logprob": event.logprob, "bytes": self._bytes(event.token), "top_logprobs": top}

    def format(self, events: list[TokenEvent], text_offset: int = 0) -> dict | None:
        """The ``logprobs`` object of a choice for these token events (tokens only)."""
        events = [event for event in events if event.token is not None]
        if self.chat:
            return {"content": [self.chat_entry(event) for event in events]}
        tokens = [self._text(event.token) for event in events]
        offsets, position = [], text_offset
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [event.logprob for event in events],
            "top_logprobs": [{self._text(token): logprob for token, logprob in (event.top_logprobs or [])}
                             for event in events],
            "text_offset": offsets,
        }


def completion(request: GenerationRequest, response_id: str, text: str, done: DoneEvent,
               logprobs: dict | None) -> dict:
    """The whole (non-streamed) answer."""
    if request.is_chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                  "finish_reason": done.finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done.finish_reason}
        kind = "text_completion"
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": request.model,
            "choices": [choice], "usage": usage(done)}


def chunk(request: GenerationRequest, response_id: str, created: int, text: str | None,
          finish_reason: str | None = None, logprobs: dict | None = None, role: bool = False,
          usage_of: DoneEvent | None = None) -> dict:
    """One streamed chunk: new text, the finish reason, or (with no choices) the usage."""
    if usage_of is not None:
        choices = []
    elif request.is_chat:
        delta = {"role": "assistant", "content": text or ""} if role else ({} if text is None else {"content": text})
        choices = [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}]
    body = {"id": response_id, "object": "chat.completion.chunk" if request.is_chat else "text_completion",
            "created": created, "model": request.model, "choices": choices}
    if usage_of is not None:
        body["usage"] = usage(usage_of)
    elif request.include_usage:
        body["usage"] = None
    return body


def embeddings(model: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str) -> dict:
    """The ``/v1/embeddings`` answer; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for index, vector in enumerate(vectors):
        if encoding_format == "base64":
            value = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = [float(number) for number in vector]
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
