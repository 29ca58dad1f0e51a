"""A KV cache whose rows join and leave between decoding steps (continuous batching).

Rows are left-padded to a common length, as in `mlx_llm.generation.generate.batch_generate`:
each row counts its positions from its first real token (``left_padding``),
and the mask hides the padding. Sequences that arrive together are prefilled
together (`start_rows`: a left-padded batch of their own), then `join` pads
them (or the batch) on the left and stacks them onto the batch; `keep_rows`
drops finished rows and the padding no row needs any more.
"""

from __future__ import annotations

import mlx.core as mx

from ..blocks.cache import KVCache


class BatchKVCache(KVCache):
    """A `KVCache` for a left-padded batch whose rows change over time.

    ``padding`` holds the per-row padding counts (``left_padding`` is the
    same as an array); the mask for one new token hides them, so the model
    needs no ``attention_mask``.
    """

    def __init__(self, step: int = 256):
        super().__init__(step=step)
        self.padding: list[int] = []

    def set_rows(self, keys: mx.array | None, values: mx.array | None, offset: int, padding: list[int]) -> None:
        """Replace the keys and values (``(B, H, capacity, D)``, the first ``offset`` positions
        held, the rest room for the next ones) and the row paddings."""
        self.keys, self.values, self.offset, self.padding = keys, values, offset, list(padding)
        # No padded row: plain integer positions, which take the faster rotary path on the CPU.
        self.left_padding = mx.array(padding) if any(padding) else None

    def make_mask(self, query_length: int, attention_mask: mx.array | None = None, window_size: int | None = None):
        """``(B, 1, L, offset + L)`` mask hiding each row's padding (and causal
        within the ``L`` new queries, and within ``window_size`` positions for a
        sliding-window layer); ``None`` when nothing is hidden."""
        if attention_mask is not None or not any(self.padding):
            return super().make_mask(query_length, attention_mask, window_size)
        key_positions = mx.arange(self.offset + query_length)
        mask = (key_positions[None, :] >= self.left_padding[:, None])[:, None, None, :]  # (B, 1, 1, S)
        queries = mx.arange(self.offset, self.offset + query_length)[:, None]
        if query_length > 1:
            mask = mask & (key_positions[None, :] <= queries)[None, None]
        if window_size is not None and self.offset + query_length > window_size:
            mask = mask & (key_positions[None, :] > queries - window_size)[None, None]
        return mask


def _pad_left(array: mx.array, count: int) -> mx.array:
    if count == 0:
        return array
    shape = list(array.shape)
    shape[2] = count
    return mx.concatenate([mx.zeros(shape, array.dtype), array], axis=2)


def join(batch: list[BatchKVCache], new: list[KVCache]) -> None:
    """Append the rows of ``new`` (prefilled caches, one per layer) to ``batch``.

    Whichever is shorter is padded on the left, so every row's last position
    lines up with the others'. ``new`` may hold several left-padded rows (a
    `BatchKVCache` prefilled together) or one row (a plain `KVCache`).

    Args:
        batch: The running batch's caches, one per layer (possibly empty).
        new: The new sequences' caches, one per layer.
    """
    for layer, single in zip(batch, new):
        new_keys, new_values = single.state
        new_padding = list(getattr(single, "padding", None) or [0] * new_keys.shape[0])
        if layer.keys is None or not layer.padding:
            # Kept as they are, spare capacity included: the next step writes in place.
            layer.set_rows(single.keys, single.values, single.offset, new_padding)
            continue
        keys, values = layer.state
        length = max(layer.offset, single.offset)
        grow = length - layer.offset
        keys, values = _pad_left(keys, grow), _pad_left(values, grow)
        gap = length - single.offset
        keys = mx.concatenate([keys, _pad_left(new_keys, gap)], axis=0)
        values = mx.concatenate([values, _pad_left(new_values, gap)], axis=0)
        layer.set_rows(keys, values, length, [pad + grow for pad in layer.padding] + [pad + gap for pad in new_padding])


def start_rows(count: int, padding: list[int]) -> list[BatchKVCache]:
    """Empty caches (``count`` layers) for a batch of new rows with these left paddings, to prefill together.

    Args:
        count: Number of layers.
        padding: Padding positions at the start of each row.

    Returns:
        One `BatchKVCache` per layer, holding nothing yet.
    """
    caches = [BatchKVCache() for _ in range(count)]
    for cache in caches:
        cache.set_rows(None, None, 0, padding)
    return caches


def keep_rows(batch: list[BatchKVCache], rows: list[int]) -> None:
    """Keep only ``rows`` (indices, in order) and trim padding every kept row has.

    Args:
        batch: The running batch's caches, one per layer.
        rows: Indices of the rows that stay; an empty list empties the cache.
    """
    for layer in batch:
        if not rows:
            layer.set_rows(None, None, 0, [])
            continue
        padding = [layer.padding[row] for row in rows]
        shared = min(padding)  # columns that are padding in every kept row
        if rows == list(range(len(layer.padding))) and shared == 0:
            continue  # nothing leaves: no copy
        # The whole buffer, spare capacity included, so the next steps still write in place.
        index = mx.array(rows)
        keys, values = layer.keys[index, :, shared:, :], layer.values[index, :, shared:, :]
        layer.set_rows(keys, values, layer.offset - shared, [pad - shared for pad in padding])


def row_state(batch: list[BatchKVCache], row: int) -> list[tuple[mx.array, mx.array]]:
    """The keys and values of one row without its padding, ``(1, H, length, D)``
    per layer, copied so they do not keep the batch's buffers alive."""
    state = []
    for layer in batch:
        keys, values = layer.state
        start = layer.padding[row]
        state.append((mx.contiguous(keys[row : row + 1, :, start:, :]),
                      mx.contiguous(values[row : row + 1, :, start:, :])))
    return state


def single_cache(state: list[tuple[mx.array, mx.array]], length: int) -> list[KVCache]:
    """Batch-of-one caches holding the first ``length`` positions of ``state``."""
    caches = []
    for keys, values in state:
        cache = KVCache()
        cache.keys, cache.values, cache.offset = keys[..., :length, :], values[..., :length, :], length
        caches.append(cache)
    return caches
