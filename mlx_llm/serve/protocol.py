"""OpenAI request bodies as typed dataclasses, validated field by field.

Nothing here knows about HTTP: `parse_chat`, `parse_completion` and
`parse_embedding` take the decoded JSON body and either return a request or
raise `RequestError`, which the app turns into an OpenAI error object with
its status code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..generation.sampling import SAMPLING_BOUNDS

# OpenAI's own bounds, kept so that clients written against it see the same errors.
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETION = 5
MAX_EMBEDDING_INPUTS = 2048
ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(Exception):
    """A request the server refuses, with what the OpenAI error object says.

    Attributes:
        status: HTTP status (400, 401, 404, 413, ...).
        message: One human-readable line.
        param: The offending field, if one is to blame.
        code: A short machine-readable code.
        type: OpenAI's error type (``invalid_request_error`` for client errors).
    """

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or text completion request.

    Attributes:
        model: The served name.
        messages: Chat messages (``role``, ``content`` strings) for a chat
            request; ``None`` for a text completion.
        prompt: The text (or token ids) of a text completion; ``None`` for chat.
        max_tokens, temperature, top_p, top_k, min_p, repetition_penalty:
            Sampling settings; ``None`` where the body leaves them out (the
            checkpoint's ``generation_config.json`` then decides).
        stop: Strings that end the completion (not returned).
        seed: Seed for reproducible sampling.
        stream: Answer with server-sent events.
        include_usage: Streaming: end with a chunk that carries ``usage``.
        logprobs: Return each token's log-probability.
        top_logprobs: Also the most likely alternatives at each step (count).
    """

    model: str
    messages: tuple[dict, ...] | None = None
    prompt: str | tuple[int, ...] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class EmbeddingRequest:
    """An embeddings request.

    Attributes:
        model: The served name.
        inputs: The texts, in order.
        encoding_format: ``"float"`` (lists of numbers) or ``"base64"``
            (little-endian float32 bytes, what the openai client asks for).
    """

    model: str
    inputs: tuple[str, ...]
    encoding_format: str = "float"


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _body(body) -> dict:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_body")
    return body


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "'model' is required and must be a non-empty string")
    return model


def _integer(body: dict, key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise _invalid(key, f"'{key}' must be an integer {bound}, got {value!r}")
    return value


def _float(body: dict, key: str, check, requirement: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value) or not check(value):
        raise _invalid(key, f"'{key}' must be a finite number {requirement}, got {value!r}")
    return float(value)


def _bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(key, f"'{key}' must be true or false, got {value!r}")
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(text, str) and text for text in stops):
        raise _invalid("stop", "'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise _invalid("stop", f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    return tuple(stops)


def _refuse_unsupported(body: dict) -> None:
    """Fields this server does not implement, refused unless set to their no-op value."""
    if body.get("n") not in (None, 1):
        raise _invalid("n", "'n' must be 1: this server returns one choice per request")
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _invalid(key, f"'{key}' is not supported; use 'repetition_penalty' (1 = off)")
    for key in ("tools", "functions", "response_format", "logit_bias", "suffix", "best_of"):
        if body.get(key) not in (None, [], {}, 1) and not (key == "response_format"
                                                          and body[key] == {"type": "text"}):
            raise _invalid(key, f"'{key}' is not supported by this server")
    if body.get("echo"):
        raise _invalid("echo", "'echo' is not supported by this server")


def _sampling(body: dict) -> dict:
    """The sampling fields shared by chat and text completions."""
    _refuse_unsupported(body)
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options", "'stream_options' must be an object")
    include_usage = bool(options and options.get("include_usage"))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _invalid("seed", f"'seed' must be an integer, got {seed!r}")
    return {
        "model": _model(body),
        "max_tokens": max_tokens,
        "temperature": _float(body, "temperature", lambda v: 0 <= v <= 2, "between 0 and 2"),
        # The library's own bounds (`mlx_llm.generation.sampling.SAMPLING_BOUNDS`); temperature keeps OpenAI's narrower range.
        "top_p": _float(body, "top_p", *SAMPLING_BOUNDS["top_p"]),
        "top_k": _integer(body, "top_k", 0),
        "min_p": _float(body, "min_p", *SAMPLING_BOUNDS["min_p"]),
        "repetition_penalty": _float(body, "repetition_penalty", *SAMPLING_BOUNDS["repetition_penalty"]),
        "stop": _stop(body),
        "seed": seed,
        "stream": stream,
        "include_usage": stream and include_usage,
    }


def _content(message: dict, index: int) -> str:
    """A message's content as text: a string, text parts joined, or empty."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid(f"messages[{index}].content",
                               "message content parts must be {\"type\": \"text\", \"text\": \"...\"}; "
                               "this server takes text only")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"messages[{index}].content", "message content must be a string or a list of text parts")


def _messages(body: dict) -> tuple[dict, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "'messages' must be a non-empty list of {role, content} objects")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{index}]", "each message must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"messages[{index}].role", f"message role must be one of {', '.join(ROLES)}, got {role!r}")
        text = _content(message, index)
        _check_unicode(text, f"messages[{index}].content")
        parsed.append({"role": role, "content": text})
    return tuple(parsed)


def _check_unicode(text: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\ud800")
        raise _invalid(param, f"'{param}' is not valid Unicode text (it holds a lone surrogate)") from None


def parse_chat(body) -> GenerationRequest:
    """Validate a ``/v1/chat/completions`` body.

    Args:
        body: The decoded JSON.

    Returns:
        The `GenerationRequest` (``messages`` set).

    Raises:
        RequestError: a missing or invalid field (400).
    """
    body = _body(body)
    fields = _sampling(body)
    logprobs = _bool(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT) or 0
    if top and not logprobs:
        raise _invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return GenerationRequest(messages=_messages(body), logprobs=logprobs, top_logprobs=top, **fields)


def parse_completion(body) -> GenerationRequest:
    """Validate a ``/v1/completions`` body.

    The prompt is one string, a list holding one string, or a list of
    token ids.

    Raises:
        RequestError: a missing or invalid field (400).
    """
    body = _body(body)
    fields = _sampling(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(_is_int(token) and token >= 0 for token in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt:
        raise _invalid("prompt", "'prompt' must be a non-empty string or a list of token ids "
                                 "(one prompt per request)")
    else:
        _check_unicode(prompt, "prompt")
    logprobs = _integer(body, "logprobs", 0, MAX_LOGPROBS_COMPLETION)
    return GenerationRequest(prompt=prompt, logprobs=logprobs is not None, top_logprobs=logprobs or 0, **fields)


def parse_embedding(body) -> EmbeddingRequest:
    """Validate a ``/v1/embeddings`` body: ``input`` is a string or a list of strings.

    Raises:
        RequestError: a missing or invalid field (400).
    """
    body = _body(body)
    model = _model(body)
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) and text for text in inputs):
        raise _invalid("input", "'input' must be a non-empty string or a list of non-empty strings "
                                "(token-id input is not supported)")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise _invalid("input", f"'input' takes at most {MAX_EMBEDDING_INPUTS} texts, got {len(inputs)}")
    for index, text in enumerate(inputs):
        _check_unicode(text, f"input[{index}]")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _invalid("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
    if body.get("dimensions") is not None:
        raise _invalid("dimensions", "'dimensions' is not supported: the model's own size is returned")
    return EmbeddingRequest(model=model, inputs=tuple(inputs), encoding_format=encoding)
