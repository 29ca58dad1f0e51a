"""Key/value cache for incremental (token-by-token) decoding."""

from __future__ import annotations

import mlx.core as mx

from .masks import create_attention_mask


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
        key_shape, value_shape = keys.shape, values.shape
        if len(key_shape) != 4 or len(value_shape) != 4 or key_shape[:3] != value_shape[:3]:
            raise ValueError(
                "KVCache takes keys (B, H_kv, L, D_k) and values (B, H_kv, L, D_v), got "
                f"{tuple(key_shape)} and {tuple(value_shape)}"
            )
        previous = self.offset
        new_length = key_shape[2]
        held_shape = None if self.keys is None else self.keys.shape
        if held_shape is not None and (
            key_shape[:2] != held_shape[:2] or key_shape[3] != held_shape[3] or value_shape[3] != self.values.shape[3]
        ):
            raise ValueError(
                f"KVCache holds keys of shape {tuple(held_shape)}, cannot append "
                f"keys of shape {tuple(key_shape)}; call reset() for a new batch"
            )
        if held_shape is None or previous + new_length > held_shape[2]:
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

    def make_mask(
        self, query_length: int, attention_mask: mx.array | None = None, window_size: int | None = None
    ) -> mx.array | str | None:
        """The causal (and padding) mask for ``query_length`` new queries against
        the held and new keys; ``attention_mask`` is ``(B, offset + L)`` 1/0;
        ``window_size`` limits each query to the keys ``p - window_size < k <= p``
        (a sliding-window layer that keeps every position)."""
        return create_attention_mask(query_length, attention_mask, causal=True, offset=self.offset,
                                     window_size=window_size)

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


class RotatingKVCache:
    """A KV cache bounded to ``max_size`` positions, for long generations in
    fixed memory.

    It keeps the first ``keep`` positions (attention sinks) and the most
    recent ``max_size - keep``; each query attends to exactly those (see
    `make_mask`). Keys are stored after rotary embedding, so evicting old
    positions needs no re-rotation. With ``keep=0`` and ``max_size`` the
    window ``W``, this is the cache of a sliding-window layer: the query at
    position ``p`` sees ``p - W < k <= p``, and nothing older is kept.

    ``left_padding`` (``(B,)``, as `KVCache`'s) holds a left-padded batch:
    positions count from each row's first real token and the mask hides the
    padding while it is held.
    """

    def __init__(self, max_size: int, keep: int = 0, step: int = 256, left_padding: mx.array | None = None):
        if max_size < 2 or not 0 <= keep < max_size - 1:
            raise ValueError(
                f"RotatingKVCache needs max_size >= 2 and 0 <= keep < max_size - 1, got max_size={max_size}, keep={keep}"
            )
        self.max_size = max_size
        self.keep = keep
        self.step = step
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0  # positions seen in total
        self.left_padding = left_padding
        self._size = 0  # positions held
        self._next = 0  # buffer slot of the next single-token write once full

    @property
    def position_offset(self) -> int | mx.array:
        """Position of the next token: ``offset``, or per row ``(B,)`` ``offset - left_padding``."""
        if self.left_padding is None:
            return self.offset
        return self.offset - self.left_padding

    def _held_positions(self) -> mx.array:
        """Absolute positions of the held keys, in time order."""
        sinks = min(self.keep, self._size)
        recent = self._size - sinks
        return mx.concatenate([mx.arange(sinks), mx.arange(self.offset - recent, self.offset)])

    def _in_time_order(self, array: mx.array) -> mx.array:
        if self._size < self.max_size or self._next == self.keep:
            return array[..., : self._size, :]
        return mx.concatenate(
            [array[..., : self.keep, :], array[..., self._next :, :], array[..., self.keep : self._next, :]], axis=2
        )

    def _buffer_positions(self) -> mx.array:
        """Absolute positions of the ``max_size`` buffer slots of a full cache, in slot
        order, once the next single-token write (position ``offset``) lands in slot ``_next``."""
        slots = mx.arange(self.max_size)
        recent = self.max_size - self.keep
        # Slot _next gets `offset`; the slot before it holds offset - 1, and so on around the ring.
        age = ((self._next - slots) % recent + recent) % recent
        return mx.where(slots < self.keep, slots, self.offset - age)

    def make_mask(
        self, query_length: int, attention_mask: mx.array | None = None, window_size: int | None = None
    ) -> mx.array | None:
        """The mask for ``query_length`` new queries against held + new keys (in the
        order `update_and_fetch` returns them): causal, within the sinks or the
        recent window, within ``window_size`` if given, and off the padding of a
        left-padded batch. ``(L, S)``, ``(B, 1, L, S)`` with padding, or ``None``."""
        if self.left_padding is None and attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a rotating KV cache (max_kv_size) cannot hold padded batches; generate one prompt at a time")
        window = self.max_size - self.keep
        narrower = window_size is not None and (self.keep > 0 or window_size < window)
        if query_length == 1 and self.left_padding is None and not narrower:
            return None  # the held keys are exactly what the new position may see
        if query_length == 1 and self._size == self.max_size:
            key_positions = self._buffer_positions()
        else:
            key_positions = mx.concatenate([self._held_positions(), mx.arange(self.offset, self.offset + query_length)])
        query_positions = mx.arange(self.offset, self.offset + query_length)[:, None]
        visible = (key_positions[None] < self.keep) | (key_positions[None] > query_positions - window)
        visible = visible & (key_positions[None] <= query_positions)
        if window_size is not None:
            visible = visible & (key_positions[None] > query_positions - window_size)
        if self.left_padding is not None:  # (B, 1, L, S): no row sees its padding
            visible = visible[None, None] & (key_positions >= self.left_padding[:, None])[:, None, None, :]
        return visible

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``(B, H_kv, L, D)`` keys and values; return what the new
        queries attend to (held positions, then the new ones)."""
        new_length = keys.shape[2]
        if new_length == 1 and self._size == self.max_size:
            # Full: overwrite the oldest recent position in place.
            self.keys[..., self._next : self._next + 1, :] = keys
            self.values[..., self._next : self._next + 1, :] = values
            self._next = self.keep + (self._next - self.keep + 1) % (self.max_size - self.keep)
            self.offset += 1
            return self.keys, self.values
        if new_length == 1 and self.keys is not None and self._size < self.keys.shape[2]:
            self.keys[..., self._size : self._size + 1, :] = keys
            self.values[..., self._size : self._size + 1, :] = values
            self._size += 1
            self.offset += 1
            return self.keys[..., : self._size, :], self.values[..., : self._size, :]
        # Several tokens (or growth): attend over everything, then keep the sinks and the window.
        if self.keys is None:
            all_keys, all_values = keys, values
        else:
            all_keys = mx.concatenate([self._in_time_order(self.keys), keys], axis=2)
            all_values = mx.concatenate([self._in_time_order(self.values), values], axis=2)
        self.offset += new_length
        total = all_keys.shape[2]
        if total > self.max_size:
            recent = self.max_size - self.keep
            stored_keys = mx.concatenate([all_keys[..., : self.keep, :], all_keys[..., total - recent :, :]], axis=2)
            stored_values = mx.concatenate([all_values[..., : self.keep, :], all_values[..., total - recent :, :]], axis=2)
            self._size, self._next = self.max_size, self.keep
        else:
            # Room to grow: leave up to `step` free slots for single-token writes.
            capacity = min(self.max_size, total + self.step)
            pad = capacity - total
            shape = all_keys.shape[:2]
            stored_keys = mx.concatenate([all_keys, mx.zeros((*shape, pad, all_keys.shape[3]), all_keys.dtype)], axis=2)
            stored_values = mx.concatenate(
                [all_values, mx.zeros((*shape, pad, all_values.shape[3]), all_values.dtype)], axis=2
            )
            self._size, self._next = total, self.keep
        self.keys, self.values = stored_keys, stored_values
        return all_keys, all_values

    @property
    def state(self) -> tuple[mx.array, mx.array] | tuple[None, None]:
        if self.keys is None:
            return None, None
        return self._in_time_order(self.keys), self._in_time_order(self.values)

    def trim(self, num_positions: int) -> int:
        """Drop the last positions; possible only before anything was evicted."""
        if num_positions < 0:
            raise ValueError(f"trim takes a non-negative count, got {num_positions}")
        if self.offset > self._size:
            return 0  # evicted positions cannot come back
        dropped = min(self._size, num_positions)
        self._size -= dropped
        self.offset -= dropped
        return dropped

    def reset(self) -> None:
        self.keys = self.values = None
        self.offset = self._size = self._next = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def __repr__(self) -> str:
        return f"RotatingKVCache(offset={self.offset}, max_size={self.max_size}, keep={self.keep})"


def make_decoder_cache(
    num_layers: int,
    left_padding: mx.array | None = None,
    max_kv_size: int | None = None,
    keep: int = 4,
    windows: list[int | None] | None = None,
) -> list[KVCache | RotatingKVCache]:
    """Caches for the layers of a decoder-only model.

    Args:
        num_layers: One cache per layer.
        left_padding: ``(B,)`` padding counts of a left-padded batch.
        max_kv_size: Bound the cache to this many positions (a `RotatingKVCache`
            keeping ``keep`` initial positions as attention sinks).
        windows: Per layer, the sliding window ``W`` of a sliding-window layer
            (a `RotatingKVCache` of ``W`` positions without sinks, or the
            ``max_kv_size`` one when that is smaller), or ``None`` for a layer
            that sees every position.
    """
    if max_kv_size is not None and left_padding is not None:
        raise ValueError("a rotating KV cache (max_kv_size) cannot hold padded batches; generate one prompt at a time")
    windows = [None] * num_layers if windows is None else windows
    if len(windows) != num_layers:
        raise ValueError(f"make_decoder_cache got {len(windows)} windows for {num_layers} layers")
    caches: list[KVCache | RotatingKVCache] = []
    for window in windows:
        if window is not None and (max_kv_size is None or window < max_kv_size):
            caches.append(RotatingKVCache(max(window, 2), keep=0, left_padding=left_padding))
        elif max_kv_size is not None:
            caches.append(RotatingKVCache(max_kv_size, keep=min(keep, max_kv_size - 2)))
        else:
            caches.append(KVCache(left_padding=left_padding))
    return caches
