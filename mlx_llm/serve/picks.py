"""Choosing every row's next token in one graph, left unevaluated so the next step can start first.

`choose` builds, for the whole batch, the next tokens, their log-probabilities
and (for rows that ask) the top alternatives, as MLX arrays that are not yet
computed. The scheduler queues them with the next forward pass
(`mx.async_eval`) and reads them (`Picks.resolve`) only once that pass is on
its way, so the Python work of a step (detokenizing, stop strings, sending
events, building the next graph) overlaps the model's compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from ..generation.sampling import SamplingConfig, pick_tokens

_GREEDY = SamplingConfig()


@dataclass
class Picks:
    """One step's choices for the rows of a batch, in row order (arrays not yet evaluated).

    Attributes:
        tokens: ``(B,)`` the chosen token ids.
        logprobs: ``(B,)`` their log-probabilities.
        tops: Per row, ``(ids, logprobs)`` of the most likely tokens, or ``None``
            for a row that did not ask for them.
    """

    tokens: mx.array
    logprobs: mx.array
    tops: list[tuple[mx.array, mx.array] | None]

    def arrays(self) -> list:
        """Everything to evaluate."""
        return [self.tokens, self.logprobs, [top for top in self.tops if top is not None]]

    def take(self, rows: list[int]) -> Picks:
        """The choices of ``rows`` (indices, in order)."""
        index = mx.array(rows)
        return Picks(self.tokens[index], self.logprobs[index], [self.tops[row] for row in rows])

    def resolve(self) -> list[tuple[int, float, list[tuple[int, float]] | None]]:
        """Wait for the values; per row ``(token, logprob, top)``, ``top`` most likely first.

        Returns:
            One tuple per row.
        """
        mx.eval(self.arrays())
        tops = [None if top is None else sorted(zip(top[0].tolist(), top[1].tolist()), key=lambda pair: -pair[1])
                for top in self.tops]
        return list(zip(self.tokens.tolist(), self.logprobs.tolist(), tops))


def concatenate(first: Picks | None, second: Picks) -> Picks:
    """The rows of ``first`` (``None``: no rows) followed by those of ``second``."""
    if first is None:
        return second
    return Picks(mx.concatenate([first.tokens, second.tokens]), mx.concatenate([first.logprobs, second.logprobs]),
                 first.tops + second.tops)


def choose(rows: list, logits: mx.array, fed: mx.array | None = None) -> Picks:
    """Every row's next token, as one graph.

    Greedy rows without a repetition penalty share one ``argmax`` over the
    batch (the whole choice when every row is such); other rows are processed
    one by one with their own settings and random key.

    Args:
        rows: The sequences (`mlx_llm.serve.engine.Sequence`), in row order.
        logits: ``(B, V)`` logits of each row's last position.
        fed: ``(B,)`` the tokens these logits followed, not yet in the
            sequences' ``generated`` lists (``None`` after a prefill), for
            the repetition penalty's history.

    Returns:
        The `Picks`, unevaluated.
    """
    logits = logits.astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if all(sequence.batchable_greedy for sequence in rows):
        tokens = pick_tokens(logits, _GREEDY)[0]
    else:
        greedy, picks = None, []
        for row, sequence in enumerate(rows):
            if sequence.batchable_greedy:
                greedy = pick_tokens(logits, _GREEDY)[0] if greedy is None else greedy
                picks.append(greedy[row : row + 1])
                continue
            config = sequence.sampling
            history = None
            if config.repetition_penalty != 1.0:
                history = sequence.history(None if fed is None else fed[row : row + 1])
            key = None
            if sequence.key is not None:
                sequence.key, key = mx.random.split(sequence.key)
            picks.append(pick_tokens(logits[row : row + 1], config, history, key)[0])
        tokens = mx.concatenate(picks)
    chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    tops = []
    for row, sequence in enumerate(rows):
        count = min(sequence.settings.top_logprobs, logprobs.shape[-1])
        if not count:
            tops.append(None)
            continue
        ids = mx.argpartition(-logprobs[row], count - 1)[:count]
        tops.append((ids, logprobs[row][ids]))
    return Picks(tokens, chosen, tops)
