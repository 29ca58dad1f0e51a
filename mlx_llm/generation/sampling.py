"""Choosing the next token: `SamplingConfig`, logits processors and samplers.

Every function takes logits of shape ``(B, V)`` and returns arrays of the
same shape (processors) or token ids ``(B,)`` (samplers). Filters set
removed tokens to ``-inf``, so they get exactly zero probability.

The settings are checked once, when a `SamplingConfig` is made (against
`SAMPLING_BOUNDS`); the processors take the values it holds as they are.
`pick_tokens` is the one way a token is chosen (generation, chat, the
server); `TokenPicker` adds the running history the repetition penalty reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import mlx.core as mx

NEG_INF = float("-inf")


def _check_logits(logits: mx.array) -> None:
    if logits.ndim != 2:
        raise ValueError(f"sampling takes logits of shape (batch, vocab), got {tuple(logits.shape)}")


def apply_repetition_penalty(logits: mx.array, previous_tokens: mx.array, penalty: float) -> mx.array:
    """CTRL's repetition penalty as Hugging Face applies it: for every token
    already seen, a positive logit is divided by ``penalty`` and a negative
    one multiplied by it.

    Args:
        logits: ``(B, V)``.
        previous_tokens: ``(B, T)`` ids generated (or in the prompt) so far.
        penalty: ``> 0`` (`SamplingConfig` checks it); ``1`` changes nothing,
            ``> 1`` discourages repeats.
    """
    _check_logits(logits)
    if previous_tokens.size == 0 or penalty == 1.0:
        return logits
    seen = mx.take_along_axis(logits, previous_tokens, axis=-1)
    penalized = mx.where(seen > 0, seen / penalty, seen * penalty)
    return mx.put_along_axis(logits, previous_tokens, penalized, axis=-1)


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    """Keep the ``k`` largest logits of each row (ties at the k-th value are kept)."""
    _check_logits(logits)
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.sort(logits, axis=-1)[:, -k][:, None]
    return mx.where(logits >= kth, logits, NEG_INF)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    """Nucleus filtering: keep the smallest set of most likely tokens whose
    probability reaches ``p`` in ``(0, 1]`` (the token that crosses ``p`` is kept)."""
    _check_logits(logits)
    if p == 1.0:
        return logits
    probabilities = mx.softmax(logits.astype(mx.float32), axis=-1)
    order = mx.argsort(-probabilities, axis=-1)
    sorted_probabilities = mx.take_along_axis(probabilities, order, axis=-1)
    # Probability mass strictly before each token in descending order.
    mass_before = mx.cumsum(sorted_probabilities, axis=-1) - sorted_probabilities
    keep_sorted = mass_before < p
    keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
    return mx.where(keep, logits, NEG_INF)


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    """Keep tokens whose probability is at least ``min_p`` (in ``[0, 1)``) times the top token's."""
    _check_logits(logits)
    if min_p == 0.0:
        return logits
    log_probabilities = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    threshold = log_probabilities.max(axis=-1, keepdims=True) + mx.log(mx.array(min_p, mx.float32))
    return mx.where(log_probabilities >= threshold, logits, NEG_INF)


# The valid values of each sampling option: name -> (test, what the test requires). Read by
# SamplingConfig, generation_config.json's reader and the command line, so that all three agree.
SAMPLING_BOUNDS = {
    "temperature": (lambda value: value >= 0, ">= 0"),
    "top_k": (lambda value: value >= 0, ">= 0"),
    "top_p": (lambda value: 0 < value <= 1, "in (0, 1]"),
    "min_p": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "repetition_penalty": (lambda value: value > 0, "> 0"),
}


def sampling_value_problem(name: str, value: float) -> str | None:
    """What is wrong with ``value`` for the sampling option ``name``, or ``None``.

    nan passes every comparison unnoticed, and an infinite temperature or
    penalty flattens or erases the distribution: neither is a setting.

    Returns:
        For example ``"must be a finite number >= 0, got nan"``.
    """
    test, requirement = SAMPLING_BOUNDS[name]
    if not math.isfinite(value) or not test(value):
        return f"must be a finite number {requirement}, got {value}"
    return None


class SamplingError(ValueError):
    """A sampling setting out of its range (raised by `SamplingConfig`).

    Attributes:
        name: The `SamplingConfig` field, e.g. ``"temperature"``.
        problem: What is wrong, e.g. ``"must be a finite number >= 0, got nan"``.
    """

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token; its settings are checked here, once.

    Attributes:
        temperature: 0 for greedy (argmax); otherwise logits are divided by it.
        top_k: Keep the k most likely tokens (0 = off).
        top_p: Nucleus probability (1 = off).
        min_p: Relative probability floor (0 = off).
        repetition_penalty: CTRL penalty on tokens seen in the last
            ``repetition_context_size`` tokens (1 = off).
        repetition_context_size: How many recent tokens the penalty looks at.

    Raises:
        SamplingError: (a ``ValueError``) naming the first setting out of its
            range (`SAMPLING_BOUNDS`).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_context_size: int = 20

    def __post_init__(self):
        for name in SAMPLING_BOUNDS:
            problem = sampling_value_problem(name, getattr(self, name))
            if problem is not None:
                raise SamplingError(name, problem)
        if self.repetition_context_size < 1:
            raise SamplingError("repetition_context_size", f"must be >= 1, got {self.repetition_context_size}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


SAMPLING_FIELDS = tuple(field.name for field in fields(SamplingConfig))


def sampling_config(sampling: SamplingConfig | None = None, **options) -> SamplingConfig:
    """The one `SamplingConfig` of a call: ``sampling``, or one made from its fields given as keywords.

    `stream_generate`, `batch_generate` and `ChatSession` take both forms:
    ``sampling=SamplingConfig(temperature=0.8)`` or ``temperature=0.8``.

    Raises:
        TypeError: a keyword that is not a `SamplingConfig` field.
        ValueError: both forms given, or a setting `SamplingConfig` refuses.
    """
    unknown = sorted(set(options) - set(SAMPLING_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (sampling settings: {', '.join(SAMPLING_FIELDS)})")
    if sampling is None:
        return SamplingConfig(**options)
    if options:
        raise ValueError(f"give sampling=SamplingConfig(...) or the keywords {', '.join(options)}, not both")
    return sampling


def process_logits(logits: mx.array, config: SamplingConfig, previous_tokens: mx.array | None = None) -> mx.array:
    """Apply the repetition penalty, temperature and the top-k / top-p / min-p filters.

    Returns:
        Float32 logits ``(B, V)``; filtered tokens are ``-inf``.
    """
    logits = logits.astype(mx.float32)
    if config.repetition_penalty != 1.0 and previous_tokens is not None:
        logits = apply_repetition_penalty(
            logits, previous_tokens[:, -config.repetition_context_size :], config.repetition_penalty
        )
    if config.greedy:
        return logits
    logits = logits / config.temperature
    logits = apply_top_k(logits, config.top_k)
    logits = apply_top_p(logits, config.top_p)
    return apply_min_p(logits, config.min_p)


def sample(logits: mx.array, config: SamplingConfig, key: mx.array | None = None) -> mx.array:
    """Token ids ``(B,)`` from processed logits: argmax when greedy, otherwise a
    draw from ``softmax(logits)`` (with ``key`` for reproducible draws)."""
    if config.greedy:
        return mx.argmax(logits, axis=-1)
    return mx.random.categorical(logits, axis=-1, key=key)


def pick_tokens(logits: mx.array, config: SamplingConfig, history: mx.array | None = None,
                key: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """Choose each row's next token: ``sample(process_logits(logits, config, history), config, key)``.

    Args:
        logits: ``(B, V)`` the model's logits at the last position.
        config: How to choose.
        history: ``(B, T)`` recent tokens, for the repetition penalty (its
            last ``repetition_context_size`` are read); ``None``: no penalty.
        key: Random key for the draw; ``None`` uses MLX's global generator.

    Returns:
        ``(tokens, logprobs)``, both ``(B,)``: the chosen ids and their
        log-probabilities under the model, ``log_softmax(logits)[token]``
        (before penalty, temperature and filters), in float32. Lazy: an
        unused ``logprobs`` is never computed.
    """
    tokens = sample(process_logits(logits, config, history), config, key=key)
    logits = logits.astype(mx.float32)
    logprobs = mx.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - mx.logsumexp(logits, axis=-1)
    return tokens, logprobs


class TokenPicker:
    """`pick_tokens` for ``B`` sequences decoded together, with the history the penalty reads.

    Args:
        config: How to choose.
        history: ``(B, T)`` the tokens so far (the prompt, or a start token);
            the picker keeps the last ``repetition_context_size`` and, when
            the penalty is on, appends each chosen token.
    """

    def __init__(self, config: SamplingConfig, history: mx.array):
        self.config = config
        self.history = history[:, -config.repetition_context_size :]

    def __call__(self, logits: mx.array, key: mx.array | None = None) -> tuple[mx.array, mx.array]:
        """``(tokens, logprobs)``, both ``(B,)``, for ``(B, V)`` logits (see `pick_tokens`)."""
        tokens, logprobs = pick_tokens(logits, self.config, self.history, key)
        if self.config.repetition_penalty != 1.0:  # the history only feeds the penalty
            self.history = mx.concatenate([self.history, tokens[:, None]], axis=1)
            self.history = self.history[:, -self.config.repetition_context_size :]
        return tokens, logprobs
