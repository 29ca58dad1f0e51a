"""Batches for causal language modelling (GPT): a token stream packed into shuffled fixed-length blocks."""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from .epochs import ResumableEpochs, check_positive, check_seed
from .token_cache import TokenFile


class CausalLMBatches(ResumableEpochs):
    """Shuffled, packed fixed-length blocks of a token stream, for next-token prediction.

    Block ``i`` is ``tokens[i * seq_len : i * seq_len + seq_len + 1]``: its
    first ``seq_len`` ids are the inputs and its last ``seq_len`` the targets
    (blocks share one boundary token, so no token is lost as a target). Each
    epoch visits the blocks in the order ``np.random.default_rng(seed +
    epoch).permutation(num_blocks)``, in batches of ``batch_size``; the
    ``num_blocks % batch_size`` blocks left over at the end of that order are
    skipped in that epoch (a different few each epoch), so that every batch
    has the same shape.

    The object is an infinite iterator (epoch after epoch); stop after as many
    steps as you train. ``state()`` / ``restore()`` resume it exactly.

    Args:
        tokens: 1-D token ids (e.g. ``split_tokens(...)[0]``) or a `TokenFile`.
        seq_len: Tokens per input sequence.
        batch_size: Sequences per batch.
        seed: Seed of the shuffling.

    Raises:
        ValueError: The stream is shorter than one block (``seq_len + 1`` tokens).
    """

    def __init__(self, tokens: np.ndarray | TokenFile, seq_len: int, batch_size: int, seed: int = 0):
        tokens = tokens.tokens if isinstance(tokens, TokenFile) else tokens
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D NumPy array of ids, got {type(tokens).__name__}")
        check_positive(seq_len=seq_len, batch_size=batch_size)
        check_seed(seed)
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"the token stream has {len(tokens)} tokens, but one block of seq_len={seq_len} needs "
                f"{seq_len + 1} (the inputs plus one target); use a smaller seq_len (--seq-len) or more text"
            )
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_blocks = (len(tokens) - 1) // self.seq_len
        self.batches_per_epoch = self.num_blocks // self.batch_size
        self._start_epochs()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.num_blocks)

    def _blocks(self, block_indices: np.ndarray) -> tuple[mx.array, mx.array]:
        starts = np.asarray(block_indices, dtype=np.int64) * self.seq_len
        window = starts[:, None] + np.arange(self.seq_len + 1)  # (B, seq_len + 1)
        blocks = np.asarray(self.tokens[window], dtype=np.int32)
        return mx.array(np.ascontiguousarray(blocks[:, :-1])), mx.array(np.ascontiguousarray(blocks[:, 1:]))

    def _make_batch(self, indices: np.ndarray, epoch: int, position: int) -> tuple[mx.array, mx.array]:
        """The next ``(inputs, targets)``, int32 arrays of shape ``(batch_size, seq_len)``."""
        return self._blocks(indices)

    def _no_batches_message(self) -> str:
        return (
            f"the token stream makes {self.num_blocks} blocks of {self.seq_len + 1} tokens, fewer than "
            f"batch_size={self.batch_size}; use a smaller batch_size (--batch-size) or seq_len (--seq-len), or more text"
        )

    def _settings(self) -> dict:
        """What a saved position is only valid for: ``seed``, ``seq_len``, ``batch_size``, ``num_blocks``."""
        return {"seed": self.seed, "seq_len": self.seq_len, "batch_size": self.batch_size, "num_blocks": self.num_blocks}

    def evaluation_batches(self) -> Iterator[tuple[mx.array, mx.array]]:
        """Every block once, in order, for validation; the last batch may be smaller.

        Does not touch the training position.

        Returns:
            An iterator of ``(inputs, targets)`` int32 arrays of shape ``(b, seq_len)``.
        """
        for start in range(0, self.num_blocks, self.batch_size):
            yield self._blocks(np.arange(start, min(start + self.batch_size, self.num_blocks)))


class CausalLMDictBatches:
    """`CausalLMBatches` as the trainer's dict batches: ``{"input_ids", "targets"}``, each
    ``(batch_size, seq_len)`` int32, resumable as the blocks are (``state`` / ``restore``).

    Args:
        batches: The packed blocks.
    """

    def __init__(self, batches: CausalLMBatches):
        self.batches = batches

    def __iter__(self) -> Iterator[dict]:
        for inputs, targets in self.batches:
            yield {"input_ids": inputs, "targets": targets}

    def state(self) -> dict:
        return self.batches.state()

    def restore(self, state: dict) -> None:
        self.batches.restore(state)

    def evaluation_batches(self) -> Iterator[dict]:
        """Every block once, in order, as dicts (see `CausalLMBatches.evaluation_batches`)."""
        for inputs, targets in self.batches.evaluation_batches():
            yield {"input_ids": inputs, "targets": targets}
