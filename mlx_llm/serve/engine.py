"""Continuous batching: sequences join a running batch at a token boundary and leave it when done.

`Scheduler` runs in the one thread that owns a model (`mlx_llm.serve.worker`).
Each `step` prefills the sequences that arrived (together, or alone when a
stored prefix matches and is reused), stacks them onto the batch's KV cache,
and queues one batched decoding step for every active sequence, reading the
previous step's tokens while it runs (`mlx_llm.serve.picks`); each sequence has
its own sampling settings, stop strings and random key. Results leave through
each sequence's ``emit`` callback as `TokenEvent` / `DoneEvent` / `ErrorEvent`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..generation.sampling import SamplingConfig
from ..generation.stopping import SequenceText
from .batch_cache import BatchKVCache, join, keep_rows, row_state, start_rows
from .picks import Picks, choose, concatenate
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
    sampling: SamplingConfig = SamplingConfig()
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

    def start(self, tokenizer, eos_token_ids) -> None:
        """Set up the per-sequence state; MLX arrays are made here, in the scheduler's thread."""
        settings = self.settings
        self.sampling = settings.sampling
        self.key = None if settings.seed is None else mx.random.key(settings.seed)
        self.text = SequenceText(tokenizer, settings.max_tokens, settings.stop, eos_token_ids)
        self.finished = False

    @property
    def batchable_greedy(self) -> bool:
        return self.sampling.greedy and self.sampling.repetition_penalty == 1.0

    def history(self, fed: mx.array | None = None) -> mx.array:
        """``(1, T)`` the last tokens of prompt and completion, for the repetition penalty.

        Args:
            fed: ``(1,)`` a token already fed to the model but not yet in
                ``generated`` (the pipelined step's), appended last.
        """
        context = self.sampling.repetition_context_size
        ids = self.prompt_ids + self.generated
        if fed is None:
            return mx.array([ids[-context:]])
        tail = mx.array(ids[len(ids) - context + 1 :] if context > 1 else [], dtype=mx.int32)
        return mx.concatenate([tail, fed.astype(mx.int32)])[None]


def prefill(model: nn.Module, prompts: list[list[int]], cache: list, step_size: int = 512) -> mx.array:
    """Run prompts through the model together, in chunks; return each one's last logits ``(N, V)``.

    Several prompts are left-padded to the longest (`batch_cache.start_rows`
    made ``cache`` with those paddings), so their last positions line up.

    Args:
        model: The decoder.
        prompts: Token ids, one list per row.
        cache: One cache per layer, for ``len(prompts)`` rows.
        step_size: Most positions per forward pass.

    Returns:
        ``(N, V)`` logits of every prompt's last position (unevaluated).
    """
    length = max(len(ids) for ids in prompts)
    tokens = mx.array([[0] * (length - len(ids)) + list(ids) for ids in prompts])
    while tokens.shape[1] > 1:
        chunk = min(step_size, tokens.shape[1] - 1)  # the last position runs alone: only its logits are needed
        model(tokens[:, :chunk], cache=cache)
        tokens = tokens[:, chunk:]
        if tokens.shape[1] > 1:  # bounds a long prompt's graph; a short one stays lazy, queued with the next step
            mx.eval([layer.state for layer in cache])
    return model(tokens, cache=cache)[:, -1, :]


class Scheduler:
    """The running batch of one model.

    Each `step` queues the next forward pass (`mx.async_eval`) before it
    reads the tokens of the previous one, so its Python work overlaps the
    model's compute: ``pending`` holds the chosen tokens not yet fed back.

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
        self.layers = len(model.make_cache())
        self.cache = [BatchKVCache() for _ in range(self.layers)]
        self.pending: Picks | None = None  # each row's next token, chosen but not yet fed (nor read)
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
        self.rows, self.waiting, self.pending = [], [], None
        keep_rows(self.cache, [])

    def step(self) -> None:
        """Admit waiting sequences, queue one decoding step for every active one, and
        emit the tokens the previous step chose."""
        self._drop([row for row, sequence in enumerate(self.rows) if sequence.cancelled], store=False)
        self._admit()
        if not self.rows:
            return
        # Rows whose pending token is their last (max_tokens) leave before the step, not after:
        # feeding that token would be wasted work, and could run past the model's positions.
        last = [row for row, sequence in enumerate(self.rows)
                if len(sequence.generated) + 1 >= sequence.settings.max_tokens]
        leaving = [(self.rows[row], self._state(row)) for row in last]
        leaving_picks = self.pending.take(last) if last else None
        self._remove(last)
        fed, upcoming = self.pending, None
        try:
            if self.rows:
                self.peak_batch = max(self.peak_batch, len(self.rows))
                logits = self.model(fed.tokens[:, None], cache=self.cache)[:, -1, :]
                upcoming = choose(self.rows, logits, fed.tokens)
                mx.async_eval(upcoming.arrays())
            chosen = [] if fed is None else fed.resolve()
            left = [] if leaving_picks is None else leaving_picks.resolve()
        except Exception as error:  # the whole batch's step failed: its sequences fail, the server goes on
            log.exception("decoding step failed")
            self.rows += [sequence for sequence, _ in leaving]
            self.fail_all(f"generation failed: {type(error).__name__}")
            return
        for (sequence, state), pick in zip(leaving, left):
            if self._advance(sequence, *pick):
                self._store(sequence, state)
        self.pending = upcoming
        finished = [row for row, (sequence, pick) in enumerate(zip(self.rows, chosen)) if self._advance(sequence, *pick)]
        self._drop(finished, store=True)

    def _admit(self) -> None:
        """Prefill the waiting sequences that fit and add them to the batch, their first tokens pending.

        Those without a stored prefix run together; those with one run
        together when the rest of their prompts is as long (their stored
        states left-padded into one batch), which is the case for a prompt
        sent again.
        """
        room = self.max_batch - len(self.rows)
        arrivals, self.waiting = self.waiting[:room], self.waiting[room:]
        fresh, reused = [], {}
        for sequence in arrivals:
            if sequence.cancelled:
                continue
            try:
                sequence.start(self.tokenizer, self.eos_ids)
                cache, held = (None, 0) if self.prefix_cache is None else self.prefix_cache.lookup(sequence.prompt_ids)
            except Exception as error:  # this request fails alone
                log.exception("prefill failed")
                _safe_emit(sequence, ErrorEvent(f"generation failed: {type(error).__name__}: {error}"))
                continue
            if cache is None:
                fresh.append(sequence)
            else:
                sequence.cached_tokens = held
                reused.setdefault(len(sequence.prompt_ids) - held, []).append((sequence, cache))
        for group in reused.values():
            if len(group) == 1:
                self._prefill([group[0][0]], group[0][1])
                continue
            batch = [BatchKVCache() for _ in range(self.layers)]
            for _, cache in group:
                join(batch, cache)
            self._prefill([sequence for sequence, _ in group], batch)
        if fresh:
            self._prefill(fresh)

    def _prefill(self, sequences: list[Sequence], cache: list | None = None) -> None:
        """Prefill ``sequences`` together and join them to the batch; when that fails,
        each is tried alone, so a failure fails its own request only."""
        try:
            prompts = [sequence.prompt_ids[sequence.cached_tokens :] for sequence in sequences]
            if cache is None:
                length = max(len(ids) for ids in prompts)
                cache = start_rows(self.layers, [length - len(ids) for ids in prompts])
            picks = choose(sequences, prefill(self.model, prompts, cache, self.prefill_step_size))
        except Exception as error:
            if len(sequences) > 1:
                for sequence in sequences:
                    sequence.cached_tokens = 0  # alone, from the start: the stored states were joined
                    self._prefill([sequence])
                return
            log.exception("prefill failed")
            _safe_emit(sequences[0], ErrorEvent(f"generation failed: {type(error).__name__}: {error}"))
            return
        join(self.cache, cache)
        self.rows += sequences
        self.pending = concatenate(self.pending, picks)

    def _advance(self, sequence: Sequence, token: int, logprob: float, top: list | None) -> bool:
        """Record one token of ``sequence`` and emit its text; return whether it finished."""
        try:
            sequence.generated.append(token)
            text, finish = sequence.text.add(token)
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

    def _state(self, row: int) -> list[tuple[mx.array, mx.array]] | None:
        """Row ``row``'s KV state for the prefix cache (``None`` when there is none)."""
        return None if self.prefix_cache is None else row_state(self.cache, row)

    def _remove(self, rows: list[int]) -> None:
        """Take ``rows`` out of the batch: sequences, cache rows and pending tokens."""
        if not rows:
            return
        gone = set(rows)
        kept = [row for row in range(len(self.rows)) if row not in gone]
        self.rows = [self.rows[row] for row in kept]
        self.pending = self.pending.take(kept) if kept and self.pending is not None else None
        keep_rows(self.cache, kept)

    def _drop(self, rows: list[int], store: bool) -> None:
        """Take ``rows`` out of the batch, keeping finished ones' KV state for prefix reuse."""
        if store:
            for row in rows:
                self._store(self.rows[row], self._state(row))
        self._remove(rows)

    def _store(self, sequence: Sequence, state: list[tuple[mx.array, mx.array]] | None) -> None:
        if self.prefix_cache is None or state is None or not sequence.finished:
            return  # a cancelled or failed sequence's state is dropped
        # The cache holds the prompt and the generated tokens fed back: all, or all but the last.
        ids = (sequence.prompt_ids + sequence.generated)[: state[0][0].shape[2]]
        self.prefix_cache.store(ids, state)


def _safe_emit(sequence: Sequence, event) -> None:
    try:
        sequence.emit(event)
    except Exception:  # the receiving side is gone; nothing more to tell it
        log.debug("could not deliver an event", exc_info=True)
