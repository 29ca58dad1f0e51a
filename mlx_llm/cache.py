"""Key/value cache for incremental (token-by-token) decoding."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys and values of past positions, for one attention layer.

    Storage grows in blocks of ``step`` positions and new entries are written
    in place, so decoding one token does not copy the whole cache.

    Attributes:
        offset: Number of positions held (the absolute position of the next
            token).
        left_padding: Optional ``(B,)`` count of padding positions at the
            start of each row of a left-padded batch; positions of a row are
            counted from its first real token (see `position_offset`).
    """

    def __init__(self, step: int = 256, left_padding: mx.array | None = None):
        if step < 1:
            raise ValueError(f"KVCache step must be >= 1, got {step}")
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self.left_padding = left_padding

    @property
    def position_offset(self) -> int | mx.array:
        """Position of the next token: ``offset``, or per row ``(B,)``
        ``offset - left_padding`` in a left-padded batch."""
        if self.left_padding is None:
            return self.offset
        return self.offset - self.left_padding

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append new positions and return everything held.

        Args:
            keys: ``(B, H_kv, L, D_k)`` keys of ``L`` new positions.
            values: ``(B, H_kv, L, D_v)`` values of the same positions.

        Returns:
            Keys ``(B, H_kv, offset, D_k)`` and values ``(B, H_kv, offset, D_v)``
            including the new ones.
        """
        if keys.ndim != 4 or values.ndim != 4 or keys.shape[:3] != values.shape[:3]:
            raise ValueError(
                "KVCache takes keys (B, H_kv, L, D_k) and values (B, H_kv, L, D_v), got "
                f"{tuple(keys.shape)} and {tuple(values.shape)}"
            )
        previous = self.offset
        new_length = keys.shape[2]
        if self.keys is not None and (
            keys.shape[:2] != self.keys.shape[:2]
            or keys.shape[3] != self.keys.shape[3]
            or values.shape[3] != self.values.shape[3]
        ):
            raise ValueError(
                f"KVCache holds keys of shape {tuple(self.keys.shape)}, cannot append "
                f"keys of shape {tuple(keys.shape)}; call reset() for a new batch"
            )
        if self.keys is None or previous + new_length > self.keys.shape[2]:
            batch, kv_heads, _, key_dim = keys.shape
            value_dim = values.shape[3]
            # Round the capacity up to a multiple of `step`; keep what is held.
            capacity = (previous + new_length + self.step - 1) // self.step * self.step
            new_keys = mx.zeros((batch, kv_heads, capacity - previous, key_dim), keys.dtype)
            new_values = mx.zeros((batch, kv_heads, capacity - previous, value_dim), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_keys, new_values
            else:
                self.keys = mx.concatenate([self.keys[..., :previous, :], new_keys], axis=2)
                self.values = mx.concatenate([self.values[..., :previous, :], new_values], axis=2)
        self.offset = previous + new_length
        self.keys[..., previous : self.offset, :] = keys
        self.values[..., previous : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple[None, None]:
        """The held keys and values, ``(B, H_kv, offset, D)`` each."""
        if self.keys is None:
            return None, None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def trim(self, num_positions: int) -> int:
        """Drop the last ``num_positions`` positions (e.g. rejected draft tokens).

        Returns:
            The number of positions actually dropped.
        """
        if num_positions < 0:
            raise ValueError(f"trim takes a non-negative count, got {num_positions}")
        dropped = min(self.offset, num_positions)
        self.offset -= dropped
        return dropped

    def reset(self) -> None:
        """Empty the cache, keeping nothing."""
        self.keys = self.values = None
        self.offset = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def __repr__(self) -> str:
        return f"KVCache(offset={self.offset}, step={self.step})"
