"""Continuous batching: sequences join a running batch at a token boundary and leave it when done.

`Scheduler` runs in the one thread that owns a model (`mlx_llm.serve.worker`).
Each `step` prefills the sequences that arrived (each on its own, reusing a
stored prefix when one matches), stacks them onto the batch's KV cache, and
runs one batched decoding step for every active sequence; each sequence has
its own sampling settings, stop strings and random key. Results leave through
each sequence's ``emit`` callback as `TokenEvent` / `DoneEvent` / `ErrorEvent`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..generate import _StopStrings
from ..sampling import SamplingConfig, process_logits, sample
from .batch_cache import BatchKVCache, join, keep_rows, row_state
from .prefix_cache import PrefixCache

log = logging.getLogger("mlx_llm.serve")

# Finish reasons as OpenAI names them: an end token and a stop string are both "stop".
OPENAI_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class TokenEvent:
    """Text that became final with one generated token.

    Attributes:
        text: The new text (may be empty while a stop string or a character
            is incomplete).
        token: The token id; ``None`` for text flushed at an end token.
        logprob: Its log-probability under the model.
        top_logprobs: ``[(token id, logprob), ...]``, most likely first, when asked for.
    """

    text: str
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class DoneEvent:
    """The sequence finished. ``finish_reason`` is OpenAI's (``stop`` / ``length``)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass
class ErrorEvent:
    """The sequence failed; the message is safe to show the client."""

    message: str
    status: int = 500


@dataclass(frozen=True)
class SequenceSettings:
    """The resolved settings of one sequence (every default already filled in)."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0


@dataclass
class Sequence:
    """One request's generation.

    Attributes:
        prompt_ids: The prompt's token ids.
        settings: How to sample and when to stop.
        emit: Called (in the scheduler's thread) with each event.
        cancelled: Set from any thread; the sequence leaves the batch at the
            next step and its cache rows are dropped.
    """

    prompt_ids: list[int]
    settings: SequenceSettings
    emit: Callable[[object], None]
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    cached_tokens: int = 0

    def cancel(self) -> None:
        self.cancelled = True

    def start(self, tokenizer) -> None:
        """Set up the per-sequence state; MLX arrays are made here, in the scheduler's thread."""
        s = self.settings
        self.sampling = SamplingConfig(s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty)
        self.key = None if s.seed is None else mx.random.key(s.seed)
        self.detokenizer = tokenizer.detokenizer()
        self.stops = _StopStrings(s.stop)
        self.finished = False

    @property
    def batchable_greedy(self) -> bool:
        return self.sampling.greedy and self.sampling.repetition_penalty == 1.0

    def history(self) -> mx.array:
        context = self.sampling.repetition_context_size
        return mx.array([(self.prompt_ids + self.generated)[-context:]])


def prefill(model: nn.Module, ids: list[int], cache: list, step_size: int = 512) -> mx.array:
    """Run prompt ids through the model in chunks; return the last position's logits ``(1, V)``."""
    tokens = mx.array(ids)[None]
    while tokens.shape[1] > 1:
        chunk = min(step_size, tokens.shape[1] - 1)
        model(tokens[:, :chunk], cache=cache)
        mx.eval([layer.state for layer in cache])
        tokens = tokens[:, chunk:]
    return model(tokens, cache=cache)[:, -1, :]


class Scheduler:
    """The running batch of one model.

    Args:
        model: A decoder-only model (``make_cache``).
        tokenizer: Its tokenizer.
        eos_token_ids: Tokens that end a sequence.
        prefix_cache: Where finished sequences leave their KV state for reuse
            (``None``: no reuse).
        max_batch: Most sequences decoded together; more wait their turn.
        prefill_step_size: Prompt tokens per forward pass.
    """

    def __init__(self, model: nn.Module, tokenizer, eos_token_ids, prefix_cache: PrefixCache | None = None,
                 max_batch: int = 32, prefill_step_size: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_token_ids)
        self.prefix_cache = prefix_cache
        self.max_batch = max_batch
        self.prefill_step_size = prefill_step_size
        self.waiting: list[Sequence] = []
        self.rows: list[Sequence] = []
        self.cache = [BatchKVCache() for _ in model.make_cache()]
        self.peak_batch = 0  # most sequences decoded together so far

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def add(self, sequence: Sequence) -> None:
        """Queue a sequence; it joins the batch at the next `step`."""
        self.waiting.append(sequence)

    def fail_all(self, message: str) -> None:
        """End every sequence with an `ErrorEvent` and empty the batch."""
        for sequence in self.rows + self.waiting:
            _safe_emit(sequence, ErrorEvent(message))
        self.rows, self.waiting = [], []
        keep_rows(self.cache, [])

    def step(self) -> None:
        """Admit waiting sequences, then decode one token for every active one."""
        self._admit()
        self._drop([row for row, sequence in enumerate(self.rows) if sequence.cancelled], store=False)
        if not self.rows:
            return
        self.peak_batch = max(self.peak_batch, len(self.rows))
        tokens = mx.array([[sequence.generated[-1]] for sequence in self.rows])
        try:
            logits = self.model(tokens, cache=self.cache)[:, -1, :]
            picks = self._choose(self.rows, logits)
        except Exception as error:  # the whole batch's step failed: its sequences fail, the server goes on
            log.exception("decoding step failed")
            self.fail_all(f"generation failed: {type(error).__name__}")
            return
        finished = [row for row, (sequence, pick) in enumerate(zip(self.rows, picks)) if self._advance(sequence, *pick)]
        self._drop(finished, store=True)

    def _admit(self) -> None:
        room = self.max_batch - len(self.rows)
        arrivals, self.waiting = self.waiting[:room], self.waiting[room:]
        for sequence in arrivals:
            if sequence.cancelled:
                continue
            try:
                sequence.start(self.tokenizer)
                cache, held = (None, 0) if self.prefix_cache is None else self.prefix_cache.lookup(sequence.prompt_ids)
                cache = cache if cache is not None else self.model.make_cache()
                sequence.cached_tokens = held
                logits = prefill(self.model, sequence.prompt_ids[held:], cache, self.prefill_step_size)
                pick = self._choose([sequence], logits)[0]
                if self._advance(sequence, *pick):
                    self._store(sequence, [(layer.keys[..., : layer.offset, :], layer.values[..., : layer.offset, :])
                                           for layer in cache])
                    continue
                join(self.cache, cache)
                self.rows.append(sequence)
            except Exception as error:  # this request fails alone
                log.exception("prefill failed")
                _safe_emit(sequence, ErrorEvent(f"generation failed: {type(error).__name__}: {error}"))

    def _choose(self, rows: list[Sequence], logits: mx.array) -> list[tuple[int, float, list | None]]:
        """Each row's next token, its logprob and (if asked) the top alternatives.

        Greedy rows share one argmax; sampling rows are processed one by one,
        each with its own settings and random key.
        """
        logits = logits.astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        greedy = None
        picks = []
        for row, sequence in enumerate(rows):
            if sequence.batchable_greedy:
                greedy = mx.argmax(logits, axis=-1) if greedy is None else greedy
                picks.append(greedy[row : row + 1])
                continue
            config = sequence.sampling
            history = sequence.history() if config.repetition_penalty != 1.0 else None
            key = None
            if sequence.key is not None:
                sequence.key, key = mx.random.split(sequence.key)
            picks.append(sample(process_logits(logits[row : row + 1], config, history), config, key=key))
        tokens = picks[0] if len(picks) == 1 else mx.concatenate(picks)
        chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
        tops = {}
        for row, sequence in enumerate(rows):
            count = min(sequence.settings.top_logprobs, logprobs.shape[-1])
            if count:
                ids = mx.argpartition(-logprobs[row], count - 1)[:count]
                tops[row] = (ids, logprobs[row][ids])
        mx.eval(tokens, chosen, tops)
        results = []
        for row, (token, logprob) in enumerate(zip(tokens.tolist(), chosen.tolist())):
            top = None
            if row in tops:
                top = sorted(zip(tops[row][0].tolist(), tops[row][1].tolist()), key=lambda pair: -pair[1])
            results.append((token, logprob, top))
        return results

    def _advance(self, sequence: Sequence, token: int, logprob: float, top: list | None) -> bool:
        """Record one token of ``sequence`` and emit its text; return whether it finished."""
        try:
            sequence.generated.append(token)
            finish = None
            if token in self.eos_ids:
                finish, text = "eos", ""
            else:
                sequence.detokenizer.add_token(token)
                text, stopped = sequence.stops.feed(sequence.detokenizer.last_segment)
                finish = "stop" if stopped else None
            if finish is None and len(sequence.generated) >= sequence.settings.max_tokens:
                finish = "length"
            if finish in ("eos", "length"):  # text held back for a stop string or an unfinished character
                sequence.detokenizer.finalize()
                text += sequence.stops.feed(sequence.detokenizer.last_segment)[0] + sequence.stops.flush()
            if finish != "eos":
                sequence.emit(TokenEvent(text, token, logprob, top))
            elif text:
                sequence.emit(TokenEvent(text))
            if finish is not None:
                sequence.finished = True
                sequence.emit(DoneEvent(OPENAI_FINISH[finish], len(sequence.prompt_ids), len(sequence.generated),
                                        sequence.cached_tokens))
            return finish is not None
        except Exception as error:  # e.g. the client's queue went away: this sequence ends alone
            log.exception("a sequence failed")
            _safe_emit(sequence, ErrorEvent(f"generation failed: {type(error).__name__}"))
            sequence.cancelled = True
            return True

    def _drop(self, rows: list[int], store: bool) -> None:
        """Take ``rows`` out of the batch, keeping finished ones' KV state for prefix reuse."""
        if not rows:
            return
        if store and self.prefix_cache is not None:
            for row in rows:
                if self.rows[row].finished:
                    self._store(self.rows[row], row_state(self.cache, row))
        kept = [row for row in range(len(self.rows)) if row not in set(rows)]
        self.rows = [self.rows[row] for row in kept]
        keep_rows(self.cache, kept)

    def _store(self, sequence: Sequence, state: list[tuple[mx.array, mx.array]]) -> None:
        if self.prefix_cache is None or not sequence.finished:
            return  # a cancelled or failed sequence's state is dropped
        # The cache holds the prompt and every generated token but the last, which was never fed back.
        ids = (sequence.prompt_ids + sequence.generated[:-1])[: state[0][0].shape[2]]
        self.prefix_cache.store(ids, state)


def _safe_emit(sequence: Sequence, event) -> None:
    try:
        sequence.emit(event)
    except Exception:  # the receiving side is gone; nothing more to tell it
        log.debug("could not deliver an event", exc_info=True)
