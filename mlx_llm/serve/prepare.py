"""From a validated request to what the scheduler runs: prompt ids and resolved settings.

Runs in a handler's worker thread (tokenizing is plain Python and Rust, no
MLX), so a prompt that does not fit is refused with a 400 before any
response starts.
"""

from __future__ import annotations

from ..generation.generation_config import GenerationDefaults, resolve_sampling_config
from .engine import SequenceSettings
from .protocol import GenerationRequest, RequestError
from .worker import GENERATE, ModelWorker


def prompt_ids(worker: ModelWorker, request: GenerationRequest) -> list[int]:
    """The request's prompt as token ids: messages through the chat template, or the plain prompt.

    Raises:
        RequestError: 400 when the model has no chat template, the template
            refuses the messages, or token ids fall outside the vocabulary.
    """
    tokenizer = worker.tokenizer
    if request.is_chat:
        if tokenizer.chat_template is None:
            raise RequestError(f"the model '{request.model}' has no chat template; use /v1/completions",
                               param="messages", code="no_chat_template")
        try:
            ids = tokenizer.chat_prompt(request.messages)
        except ValueError as error:  # the template's own raise_exception(...), e.g. roles out of order
            raise RequestError(f"the chat template refused the messages: {error}", param="messages") from None
        return list(ids)
    if isinstance(request.prompt, tuple):
        vocabulary = tokenizer.vocab_size
        if any(token >= vocabulary for token in request.prompt):
            raise RequestError(f"token ids must be below the vocabulary size {vocabulary}", param="prompt",
                               code="invalid_value")
        return list(request.prompt)
    ids = tokenizer.encode(request.prompt, add_special_tokens=True)
    if not ids:
        raise RequestError("the prompt has no tokens", param="prompt", code="invalid_value")
    return ids


def prepare(worker: ModelWorker, request: GenerationRequest) -> tuple[list[int], SequenceSettings]:
    """Prompt ids and settings for one generation request.

    Fields the request leaves out come from the checkpoint's
    ``generation_config.json`` (`mlx_llm.generation.generation_config.resolve_sampling_config`);
    ``max_tokens`` is cut to what the context leaves after the prompt.

    Raises:
        RequestError: 400 for an encoder model, a prompt the model's context
            (or ``--max-kv-size``) cannot hold, or a prompt that cannot be rendered.
    """
    if worker.kind != GENERATE:
        raise RequestError(f"the model '{request.model}' is an encoder; it serves /v1/embeddings only",
                           param="model", code="model_not_generative")
    ids = prompt_ids(worker, request)
    defaults = worker.generation_defaults or GenerationDefaults()
    max_tokens, sampling = resolve_sampling_config(
        defaults, max_tokens=request.max_tokens, temperature=request.temperature, top_k=request.top_k,
        top_p=request.top_p, min_p=request.min_p, repetition_penalty=request.repetition_penalty)
    limit = worker.context_limit
    if limit is not None:
        if len(ids) >= limit:
            raise RequestError(
                f"the prompt has {len(ids)} tokens but the model's context holds {limit} "
                f"(prompt and completion together); shorten the prompt",
                param="messages" if request.is_chat else "prompt", code="context_length_exceeded")
        max_tokens = min(max_tokens, limit - len(ids))
    settings = SequenceSettings(max_tokens=max_tokens, sampling=sampling, stop=request.stop, seed=request.seed,
                                top_logprobs=request.top_logprobs)
    return ids, settings
