"""Endless, resumable batch iterators: `ResumableEpochs`, the base of every training iterator in `mlx_llm.data`.

Every training iterator here walks its items epoch after epoch, each epoch in
an order drawn from its seed, and can stop and resume exactly: ``state()``
after ``k`` batches, then ``restore(state)`` on a fresh iterator, gives the
very same batch ``k + 1`` onwards. The state is a plain dict (``epoch``,
``position`` and the settings it is only valid for) that training
checkpoints store as is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_positive(**values: int) -> None:
    """Raise `ValueError` naming the first value that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: int) -> None:
    """Raise `ValueError` unless ``seed`` is a non-negative integer."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def steps_for(epochs: float, batches_per_epoch: int, grad_accum: int = 1) -> int:
    """Optimizer steps that train for ``epochs`` epochs: ``ceil(epochs * batches_per_epoch / grad_accum)``, at least 1.

    Args:
        epochs: Epochs to train (may be fractional).
        batches_per_epoch: Batches (or, already rounded per epoch, optimizer steps) in one epoch.
        grad_accum: Batches per optimizer step.
    """
    return max(1, math.ceil(epochs * batches_per_epoch / grad_accum))


class ResumableEpochs:
    """An endless iterator of batches, epoch after epoch, that resumes exactly from a saved `state`.

    Epoch ``e`` visits the items in the order ``_epoch_order(e)``, in slices of
    ``batch_size``; the iterator yields ``_make_batch(indices, epoch, position)``
    for each of the ``batches_per_epoch`` slices and then moves on to the next
    epoch. A subclass sets ``batch_size`` and ``batches_per_epoch``, calls
    `_start_epochs`, and defines `_epoch_order`, `_make_batch` and `_settings`.
    """

    batch_size: int
    batches_per_epoch: int

    def _start_epochs(self) -> None:
        self._epoch = 0
        self._position = 0
        self._order: tuple[int, np.ndarray] | None = None

    # -- what a subclass defines ---------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The indices of the items in the order epoch ``epoch`` visits them."""
        raise NotImplementedError

    def _make_batch(self, indices: np.ndarray, epoch: int, position: int) -> Any:
        """The batch of the items ``indices``, batch ``position`` of epoch ``epoch``."""
        raise NotImplementedError

    def _settings(self) -> dict:
        """What a saved position is only valid for (seed, sizes): `restore` checks them."""
        raise NotImplementedError

    def _no_batches_message(self) -> str:
        """Why an epoch holds no batch, and what to do (raised by `__next__`)."""
        return f"{type(self).__name__}: an epoch holds no batch of batch_size={self.batch_size}"

    # -- the shared iteration --------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (0-based)."""
        return self._epoch

    def _order_of(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._epoch_order(epoch))
        return self._order[1]

    def __iter__(self):
        return self

    def __next__(self):
        if self.batches_per_epoch == 0:
            raise ValueError(self._no_batches_message())
        start = self._position * self.batch_size
        indices = self._order_of(self._epoch)[start : start + self.batch_size]
        batch = self._make_batch(indices, self._epoch, self._position)
        self._position += 1
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        return batch

    def state(self) -> dict:
        """Where the iterator stands: pass to `restore` to continue from here.

        Returns:
            ``{"epoch", "position"}`` (the next batch) plus the settings
            (`_settings`: seed, sizes) that `restore` checks.
        """
        return {"epoch": self._epoch, "position": self._position, **self._settings()}

    def restore(self, state: dict) -> None:
        """Continue from a `state`: the next batch is the one that followed it.

        Raises:
            ValueError: The state is malformed or comes from other data or settings.
        """
        name = type(self).__name__
        if not isinstance(state, dict) or not {"epoch", "position"} <= state.keys():
            raise ValueError(
                f"{name}.restore needs a dict with 'epoch' and 'position' (from state()), got {state!r}"
            )
        for key, value in self._settings().items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"the saved {name} state has {key}={state[key]!r} but this iterator has {value!r}; "
                    "resume with the same data and settings as the checkpointed run"
                )
        epoch, position = state["epoch"], state["position"]
        if not all(isinstance(value, int) and value >= 0 for value in (epoch, position)):
            raise ValueError(f"epoch and position must be non-negative integers, got {epoch!r}, {position!r}")
        if position >= max(self.batches_per_epoch, 1):
            raise ValueError(f"position {position} is past the {self.batches_per_epoch} batches of an epoch")
        self._epoch, self._position = epoch, position
