"""Text generation: streaming, sampling, stop conditions and statistics.

`stream_generate` yields a `GenerationResponse` per token with the newly
final text; `generate` returns the whole completion; `batch_generate` runs
several prompts at once (left-padded, with masks) and returns what each
prompt gives alone. Decoder-only models and encoder-decoders (T5) go through
the same functions.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..blocks.heads import task_of
from ..blocks.model_output import DECODER, ENCODER, ENCODER_DECODER
from ..models import model_type_info
from .sampling import SamplingConfig, TokenPicker, sampling_config
from .stopping import FINISH_REASONS, SequenceText, StopStrings  # noqa: F401 (FINISH_REASONS, StopStrings: also importable from here)

# Generation runs on its own stream, so building the next step's graph in Python
# overlaps with the evaluation of the current one.
generation_stream = mx.new_stream(mx.default_device())


@dataclass
class GenerationResponse:
    """One step of `stream_generate`.

    Attributes:
        text: Text that became final with this token (may be empty).
        token: The generated token id.
        logprob: Its log-probability under the model's distribution.
        prompt_tokens: Length of the prompt in tokens.
        prompt_tps: Prompt tokens processed per second.
        generation_tokens: Tokens generated so far.
        generation_tps: Tokens generated per second after the first.
        time_to_first_token: Seconds from the call to the first token.
        peak_memory: Peak memory MLX allocated, in GB.
        finish_reason: ``None`` while generating; then ``"eos"`` (an end
            token, not emitted as text), ``"stop"`` (a stop string, not
            emitted) or ``"length"`` (``max_tokens`` or the context limit).
    """

    text: str
    token: int
    logprob: float
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory: float
    finish_reason: str | None = None


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` encodes a source and decodes a target (T5): it says so in ``kind``."""
    return model.kind == ENCODER_DECODER


def context_length(model: nn.Module) -> int | None:
    """Longest sequence the model's positions cover, ``None`` without a limit (its ``args.context_length``)."""
    return model.args.context_length


# An encoder's task -> (what its heads are, the commands that fit it).
_ENCODER_TASKS = {
    "base": ("with no task head", "mlx-llm embed"),
    "masked_lm": ("with a masked-language-model head", "mlx-llm embed"),
    "pretraining": ("with masked-LM and next-sentence heads", "mlx-llm embed"),
    "next_sentence": ("with a next-sentence-prediction head", "mlx-llm embed"),
    "sequence_classification": ("with a sequence-classification head",
                                "mlx-llm predict / evaluate / embed"),
    "token_classification": ("with a token-classification head", "mlx-llm predict / evaluate / embed"),
}


def check_can_generate(model: nn.Module, name: str = "the model") -> None:
    """Raise a ``ValueError`` unless ``model`` can generate text.

    Encoders (BERT family) and decoders fine-tuned into classifiers load
    like any checkpoint but have no next-token head; without this check
    they fail deep inside generation with an unrelated error.

    Args:
        model: A loaded model.
        name: How the message names it (a path, for the command line).

    Raises:
        ValueError: saying what the model is and which commands fit it.
    """
    task = task_of(model)
    if model.kind == ENCODER_DECODER or (model.kind == DECODER and task == "causal_lm"):
        return
    family = model_type_info(model.args.model_type).display_name
    if model.kind == ENCODER:
        heads, commands = _ENCODER_TASKS[task]
        what = f"a {family} encoder {heads}"
    elif task in ("sequence_classification", "token_classification"):
        what = f"a {family} decoder with a {task.replace('_', '-')} head (a fine-tuned classifier)"
        commands = "mlx-llm predict / evaluate"
    else:
        what, commands = f"a {family} model without a next-token head", "another command"
    raise ValueError(f"{name} is {what}; it cannot generate text: use {commands}")


def check_text(text: str, what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` if ``text`` cannot be encoded as UTF-8.

    Text read with ``errors="surrogateescape"`` (Python's default for argv
    and, in some locales, stdin) carries undecodable bytes as lone
    surrogates, which the tokenizers reject with an unrelated error.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes read with errors="surrogateescape"
        raise ValueError(
            f"{what} is not valid Unicode text (it holds undecodable bytes); decode it with errors='replace'"
        ) from None


def _prompt_ids(tokenizer, prompt: str | Sequence[int] | mx.array, add_special_tokens: bool) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("the prompt is empty; give some text to continue")
        check_text(prompt, "the prompt")
        ids = tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
    else:
        ids = [int(token) for token in (prompt.tolist() if isinstance(prompt, mx.array) else prompt)]
    if not ids:
        raise ValueError("the prompt has no tokens; give some text to continue")
    return ids


def _fit_prompt(ids: list[int], limit: int | None, truncate: bool, max_tokens: int,
                warn: Callable[[str], None]) -> tuple[list[int], int]:
    """The prompt and the number of tokens to generate that fit in ``limit`` positions.

    A prompt that leaves no room raises unless ``truncate``; truncation drops
    the oldest tokens until ``max_tokens`` fit (keeping at least one prompt
    token). Whenever the context cuts ``max_tokens``, ``warn`` says so.
    """
    if limit is None:
        return ids, max_tokens
    if len(ids) >= limit and not truncate:
        raise ValueError(
            f"the prompt has {len(ids)} tokens but the model's context holds {limit}; shorten it, or ask for "
            "truncation (truncate_prompt=True, --truncate-prompt) to keep its last tokens"
        )
    if truncate and len(ids) + max_tokens > limit:
        keep = max(1, limit - max_tokens)
        if keep < len(ids):
            warn(f"the prompt was cut from {len(ids)} to its last {keep} tokens to leave room for "
                 f"{limit - keep} new tokens in the model's {limit}-token context")
            ids = ids[-keep:]
    if len(ids) + max_tokens > limit:
        warn(f"the model's context holds {limit} tokens, so after the {len(ids)}-token prompt there is room for "
             f"{limit - len(ids)} new tokens, not {max_tokens}")
        max_tokens = limit - len(ids)
    return ids, max_tokens


def _default_warning(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _prefill(model: nn.Module, tokens: mx.array, cache: list, step_size: int, **model_inputs) -> mx.array:
    """Run ``(B, L)`` prompt tokens through the model in chunks of ``step_size``
    so activations stay bounded; returns the last position's logits ``(B, V)``.

    Only the cache is evaluated for all but the last token, so the output
    layer (``hidden x vocab`` per position) runs for that token alone.
    """
    with mx.stream(generation_stream):
        while tokens.shape[1] > 1:
            chunk = min(step_size, tokens.shape[1] - 1)
            model(tokens[:, :chunk], cache=cache, **_slice_mask(model_inputs, cache, chunk))
            mx.eval([c.state for c in cache])
            mx.clear_cache()  # free the chunk's activations for the next one
            tokens = tokens[:, chunk:]
        return model(tokens, cache=cache, **_slice_mask(model_inputs, cache, 1))[:, -1, :]


def _slice_mask(model_inputs: dict, cache: list, length: int) -> dict:
    # The attention mask must cover the cached keys and the new ones, no more.
    mask = model_inputs.get("attention_mask")
    if mask is None:
        return {}
    return {"attention_mask": mask[:, : cache[0].offset + length]}


def generate_step(
    model: nn.Module,
    prompt: mx.array,
    sampling: SamplingConfig,
    max_tokens: int,
    prefill_step_size: int = 512,
    cache: list | None = None,
    max_kv_size: int | None = None,
) -> Iterator[tuple[mx.array, mx.array]]:
    """Yield ``(token, logprob)`` pairs, ``(1,)`` arrays, for a decoder-only model.

    The next step is queued (``mx.async_eval``) before the current token is
    handed out, so the model computes while the caller decodes text.

    Args:
        model: A causal LM taking ``(input_ids, cache=...)``.
        prompt: ``(L,)`` prompt ids.
        sampling: How to choose tokens.
        max_tokens: Most tokens to generate.
        prefill_step_size: Prompt tokens per forward pass.
        cache: Existing KV cache to extend (a chat session); new if ``None``.
        max_kv_size: Bound a new cache to this many positions (rotating).
    """
    cache = model.make_cache(max_kv_size=max_kv_size) if cache is None else cache
    choose = TokenPicker(sampling, prompt[None])

    def step(token: mx.array) -> tuple[mx.array, mx.array]:
        with mx.stream(generation_stream):
            return choose(model(token[:, None], cache=cache)[:, -1, :])

    with mx.stream(generation_stream):
        token, logprob = choose(_prefill(model, prompt[None], cache, prefill_step_size))
    mx.async_eval(token, logprob)
    for count in range(max_tokens):
        if count + 1 < max_tokens:
            next_token, next_logprob = step(token)
            mx.async_eval(next_token, next_logprob)
        yield token, logprob
        if count % 256 == 255:
            mx.clear_cache()
        if count + 1 < max_tokens:
            token, logprob = next_token, next_logprob


def _encoder_decoder_step(
    model: nn.Module,
    prompt: mx.array,
    sampling: SamplingConfig,
    max_tokens: int,
) -> Iterator[tuple[mx.array, mx.array]]:
    """Like `generate_step` for an encoder-decoder: encode once, then decode with a cache."""
    memory = model.encode(prompt[None])
    cache = model.make_cache()
    token = mx.array([model.args.decoder_start_token_id])
    choose = TokenPicker(sampling, token[None])
    for _ in range(max_tokens):
        token, logprob = choose(model.decode(token[:, None], memory, cache=cache)[:, -1, :])
        yield token, logprob


def stream_generate(
    model: nn.Module,
    tokenizer,
    prompt: str | Sequence[int] | mx.array,
    max_tokens: int = 256,
    *,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    prefill_step_size: int = 512,
    add_special_tokens: bool = True,
    truncate_prompt: bool = False,
    cache: list | None = None,
    eos_token_ids: Sequence[int] | None = None,
    max_kv_size: int | None = None,
    on_warning: Callable[[str], None] | None = None,
    **sampling_options,
) -> Iterator[GenerationResponse]:
    """Generate from ``prompt``, yielding each token with its final text.

    Args:
        model: A loaded model (decoder-only or encoder-decoder).
        tokenizer: Its `Tokenizer`.
        prompt: Text, or token ids.
        max_tokens: Most tokens to generate.
        sampling: How to choose tokens (default: greedy); instead, its fields
            may be given as keywords (``temperature=0.8, top_p=0.95``), as
            before `SamplingConfig` travelled whole (`sampling_config`).
        seed: Seed for sampling; the same seed gives the same text.
        stop: Strings that end generation; they are not emitted.
        prefill_step_size: Prompt tokens per forward pass.
        add_special_tokens: Let the tokenizer add BOS (or EOS for T5).
        truncate_prompt: Keep the end of a prompt longer than the context
            instead of raising an error.
        cache: A decoder-only KV cache holding earlier turns (chat); the
            prompt then holds only the new tokens.
        eos_token_ids: Tokens that end generation; the tokenizer's end
            tokens if ``None`` (pass ``()`` to ignore them).
        max_kv_size: Keep at most this many positions in the KV cache (the
            first 4 and the most recent), so memory stays bounded.
        on_warning: Called with a one-line message when the context cuts
            the prompt (``truncate_prompt``) or ``max_tokens``; by default
            the message goes to `warnings.warn`.

    Yields:
        `GenerationResponse`; the last one has ``finish_reason`` set.

    Raises:
        ValueError: bad options, a prompt too long for the context, or a
            model that cannot generate text (see `check_can_generate`).
    """
    sampling = _checked_run(model, max_tokens, prefill_step_size, sampling, sampling_options)
    ids = _prompt_ids(tokenizer, prompt, add_special_tokens)
    warn = _default_warning if on_warning is None else on_warning
    ids, max_tokens, steps = _token_steps(model, ids, sampling, max_tokens, truncate_prompt, warn, cache,
                                          max_kv_size, prefill_step_size)
    if seed is not None:
        mx.random.seed(seed)
    text = SequenceText(tokenizer, max_tokens, stop, tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)
    yield from _responses(steps, text, len(ids))


def _checked_run(model: nn.Module, max_tokens: int, prefill_step_size: int, sampling: SamplingConfig | None,
                 sampling_options: dict) -> SamplingConfig:
    """The run's `SamplingConfig` (`sampling_config` of ``sampling`` or its fields as keywords),
    after refusing ``max_tokens`` or ``prefill_step_size`` below 1 and a model that cannot
    generate text (`check_can_generate`)."""
    sampling = sampling_config(sampling, **sampling_options)
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if prefill_step_size < 1:
        raise ValueError(f"prefill_step_size must be >= 1, got {prefill_step_size}")
    check_can_generate(model)
    return sampling


def _token_steps(model: nn.Module, ids: list[int], sampling: SamplingConfig, max_tokens: int, truncate: bool,
                 warn: Callable[[str], None], cache: list | None, max_kv_size: int | None,
                 prefill_step_size: int) -> tuple[list[int], int, Iterator[tuple[mx.array, mx.array]]]:
    """Fit the prompt into the model's context (`_fit_prompt`) and start decoding it.

    Returns:
        The prompt ids kept, the tokens to generate, and the ``(token,
        logprob)`` steps (`generate_step`, or `_encoder_decoder_step`).
    """
    limit = context_length(model)
    if is_encoder_decoder(model):
        if max_kv_size is not None or cache is not None:
            raise ValueError("max_kv_size and cache apply to decoder-only models, not encoder-decoders")
        ids, _ = _fit_prompt(ids, limit, truncate, 1, warn)  # the decoder's length is not bounded here
        return ids, max_tokens, _encoder_decoder_step(model, mx.array(ids), sampling, max_tokens)
    if limit is not None:
        held = 0 if cache is None else cache[0].offset
        ids, max_tokens = _fit_prompt(ids, limit - held, truncate, max_tokens, warn)
    steps = generate_step(model, mx.array(ids), sampling, max_tokens, prefill_step_size, cache, max_kv_size)
    return ids, max_tokens, steps


def _responses(steps: Iterator[tuple[mx.array, mx.array]], text: SequenceText,
               prompt_tokens: int) -> Iterator[GenerationResponse]:
    """A `GenerationResponse` per step, with its text (`SequenceText`) and timings, until the sequence ends."""
    start = time.perf_counter()
    first_token_time = prompt_tps = 0.0
    for count, (token_array, logprob_array) in enumerate(steps, start=1):
        token, logprob = int(token_array.item()), float(logprob_array.item())
        now = time.perf_counter()
        if count == 1:
            first_token_time = now - start
            prompt_tps = prompt_tokens / first_token_time
        piece, finish = text.add(token)
        elapsed = now - start - first_token_time
        yield GenerationResponse(
            text=piece,
            token=token,
            logprob=logprob,
            prompt_tokens=prompt_tokens,
            prompt_tps=prompt_tps,
            generation_tokens=count,
            generation_tps=(count - 1) / elapsed if count > 1 and elapsed > 0 else 0.0,
            time_to_first_token=first_token_time,
            peak_memory=mx.get_peak_memory() / 1e9,
            finish_reason=finish,
        )
        if finish is not None:
            break


def generate(model: nn.Module, tokenizer, prompt: str | Sequence[int] | mx.array, **options) -> str:
    """The completion of ``prompt`` as one string (options as for `stream_generate`)."""
    return "".join(response.text for response in stream_generate(model, tokenizer, prompt, **options))


def batch_generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    max_tokens: int = 256,
    *,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    prefill_step_size: int = 512,
    add_special_tokens: bool = True,
    eos_token_ids: Sequence[int] | None = None,
    **sampling_options,
) -> list[str]:
    """Complete several prompts in one batch.

    Decoder-only prompts are left-padded, with an attention mask and per-row
    positions, so each completion is the one the prompt gives alone (greedy
    decoding gives the same tokens). Each row stops on its own.

    Args: as for `stream_generate` (``sampling`` or its fields as keywords),
        with a list of prompts.

    Returns:
        The completions, in prompt order.
    """
    if not prompts:
        raise ValueError("no prompts given")
    sampling = _checked_run(model, max_tokens, prefill_step_size, sampling, sampling_options)
    rows = [_prompt_ids(tokenizer, prompt, add_special_tokens) for prompt in prompts]
    limit = context_length(model)
    longest = max(len(ids) for ids in rows)
    if limit is not None:
        if longest >= limit:
            raise ValueError(f"a prompt has {longest} tokens but the model's context holds {limit}; shorten it")
        if not is_encoder_decoder(model):
            max_tokens = min(max_tokens, limit - longest)
    if seed is not None:
        mx.random.seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = _start_encoder_decoder_batch if is_encoder_decoder(model) else _start_decoder_batch
    logits, next_logits, history = start(model, rows, pad, sampling.repetition_context_size, prefill_step_size)
    eos_ids = tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids
    texts = [SequenceText(tokenizer, max_tokens, stop, eos_ids) for _ in rows]
    return _decode_batch(TokenPicker(sampling, history), logits, next_logits, texts)


def _start_decoder_batch(model: nn.Module, rows: list[list[int]], pad: int, context: int, prefill_step_size: int):
    """Prefill left-padded prompts (attention mask, per-row positions in the cache).

    Returns:
        The first logits ``(B, V)``, a function from the fed tokens ``(B,)``
        to the next logits, and each row's last ``context`` tokens ``(B,
        context)`` for the repetition penalty, left-filled with the row's
        first token (a repeat changes nothing).
    """
    longest = max(len(ids) for ids in rows)
    left_padding = [longest - len(ids) for ids in rows]
    tokens = mx.array([[pad] * gap + ids for gap, ids in zip(left_padding, rows)])
    mask = mx.array([[0] * gap + [1] * len(ids) for gap, ids in zip(left_padding, rows)])
    history = mx.array([[ids[0]] * max(0, context - len(ids)) + ids[-context:] for ids in rows])
    cache = model.make_cache(left_padding=mx.array(left_padding))
    logits = _prefill(model, tokens, cache, prefill_step_size, attention_mask=mask)

    def next_logits(token: mx.array) -> mx.array:
        nonlocal mask
        mask = mx.concatenate([mask, mx.ones((len(rows), 1), mask.dtype)], axis=1)
        return model(token[:, None], attention_mask=mask, cache=cache)[:, -1, :]

    return logits, next_logits, history


def _start_encoder_decoder_batch(model: nn.Module, rows: list[list[int]], pad: int, context: int,
                                 prefill_step_size: int):
    """Encode right-padded prompts once; the decoder starts from its start token.

    Returns: as `_start_decoder_batch` (the history is the start token).
    """
    longest = max(len(ids) for ids in rows)
    source = mx.array([ids + [pad] * (longest - len(ids)) for ids in rows])
    source_mask = mx.array([[1] * len(ids) + [0] * (longest - len(ids)) for ids in rows])
    memory = model.encode(source, source_mask)
    cache = model.make_cache()
    token = mx.full((len(rows),), model.args.decoder_start_token_id)

    def next_logits(token: mx.array) -> mx.array:
        return model.decode(token[:, None], memory, attention_mask=source_mask, cache=cache)[:, -1, :]

    return next_logits(token), next_logits, token[:, None]


def _decode_batch(choose: TokenPicker, logits: mx.array, next_logits: Callable[[mx.array], mx.array],
                  texts: list[SequenceText]) -> list[str]:
    """Decode every row until each has ended (`SequenceText`); the next step is queued before
    the current tokens are read. Returns each row's text."""
    pieces: list[list[str]] = [[] for _ in texts]
    max_tokens = texts[0].max_tokens
    for count in range(max_tokens):
        tokens, _ = choose(logits)
        if count + 1 < max_tokens:
            logits = next_logits(tokens)
            mx.async_eval(logits, choose.history)
        for row, token in enumerate(tokens.tolist()):
            if texts[row].finish_reason is None:
                pieces[row].append(texts[row].add(token)[0])
        if all(text.finish_reason is not None for text in texts):
            break
    return ["".join(row) for row in pieces]
