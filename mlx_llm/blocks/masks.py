"""Attention masks.

Every mask here is boolean, ``True`` where a query may attend to a key, and
broadcasts against attention scores of shape ``(B, H, L, S)`` (batch, heads,
queries, keys). Boolean masks take MLX's fused attention path on every
backend; `scaled_dot_product_attention` also accepts additive masks.
"""

from __future__ import annotations

import mlx.core as mx


def causal_mask(query_length: int, offset: int = 0, window_size: int | None = None) -> mx.array:
    """Lower-triangular mask for masked (autoregressive) self-attention.

    Args:
        query_length: Number of new query positions ``L``.
        offset: Number of earlier positions already in the KV cache; the
            queries sit at absolute positions ``offset .. offset + L - 1``.
        window_size: If given, a query also ignores keys more than
            ``window_size - 1`` positions behind it (sliding-window attention).

    Returns:
        Boolean array of shape ``(L, offset + L)``.
    """
    if query_length < 1 or offset < 0:
        raise ValueError(
            f"causal_mask needs query_length >= 1 and offset >= 0, got "
            f"query_length={query_length}, offset={offset}"
        )
    query_positions = mx.arange(offset, offset + query_length)[:, None]
    key_positions = mx.arange(offset + query_length)[None, :]
    mask = key_positions <= query_positions
    if window_size is not None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        mask = mask & (key_positions > query_positions - window_size)
    return mask


def padding_mask(attention_mask: mx.array) -> mx.array:
    """Key mask from a tokenizer-style ``(B, S)`` attention mask of 1s and 0s.

    Args:
        attention_mask: ``1`` (or ``True``) for real tokens, ``0`` for padding.

    Returns:
        Boolean array of shape ``(B, 1, 1, S)``: no query attends to padding.
    """
    if attention_mask.ndim != 2:
        raise ValueError(
            "attention_mask must have shape (batch, length) with 1 for tokens and 0 "
            f"for padding, got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != mx.bool_:
        attention_mask = attention_mask != 0
    return attention_mask[:, None, None, :]


def combine_masks(*masks: mx.array | None) -> mx.array | None:
    """Logical AND of boolean masks; ``None`` entries are skipped.

    Returns:
        The broadcast combination, or ``None`` when every entry is ``None``.
    """
    combined = None
    for mask in masks:
        if mask is None:
            continue
        if mask.dtype != mx.bool_:
            raise ValueError(f"combine_masks takes boolean masks, got dtype {mask.dtype}")
        combined = mask if combined is None else combined & mask
    return combined


def create_attention_mask(
    query_length: int,
    attention_mask: mx.array | None = None,
    causal: bool = False,
    offset: int = 0,
    window_size: int | None = None,
) -> mx.array | str | None:
    """The mask a model passes to its attention layers.

    Picks the cheapest form: ``None`` when nothing is masked, the string
    ``"causal"`` (MLX's built-in lower-right-aligned causal mask, which is
    also correct after ``offset`` cached positions) when only causality
    applies, and a boolean array otherwise.

    Args:
        query_length: Number of query positions ``L`` in this call.
        attention_mask: Optional ``(B, offset + L)`` 1/0 mask over all keys
            (cached and new).
        causal: Whether queries may not attend to later positions.
        offset: Number of positions already in the KV cache.
        window_size: With ``causal``, sliding-window attention: the query at
            position ``p`` sees keys ``p - window_size < k <= p`` (transformers'
            ``sliding_window``); the window only matters once ``offset + L``
            exceeds it.

    Returns:
        ``None``, ``"causal"`` or a boolean array broadcastable to
        ``(B, 1, L, offset + L)``.
    """
    key_length = offset + query_length
    if attention_mask is not None and attention_mask.shape[-1] != key_length:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} positions but attention sees "
            f"{key_length} keys ({offset} cached + {query_length} new); pass a mask over all of them"
        )
    keys = padding_mask(attention_mask) if attention_mask is not None else None
    if not causal:
        return keys
    if window_size is not None and key_length <= window_size:
        window_size = None  # every key is inside every query's window
    if keys is None and window_size is None:
        return "causal" if query_length > 1 else None
    return combine_masks(causal_mask(query_length, offset, window_size), keys)


def decoder_mask(
    query_length: int, attention_mask: mx.array | None = None, cache=None, window_size: int | None = None
) -> mx.array | str | None:
    """The causal (and padding) mask of a decoder-only model's layers; with a
    cache (one layer's `KVCache` or `RotatingKVCache`), the cache builds it,
    since only it knows which earlier positions it holds. ``window_size``: for
    sliding-window layers (see `create_attention_mask`)."""
    if cache is None:
        return create_attention_mask(query_length, attention_mask, causal=True, window_size=window_size)
    return cache.make_mask(query_length, attention_mask, window_size=window_size)


def decoder_masks(
    query_length: int, attention_mask: mx.array | None, cache, windows: list[int | None] | tuple[int | None, ...]
) -> list:
    """One `decoder_mask` per layer of a decoder whose layer ``i`` attends within ``windows[i]``
    (``None``: every earlier position), each distinct window's mask made once, by the
    first layer of that window (with a ``cache``, that layer's cache builds it)."""
    made: dict[int | None, object] = {}  # window -> mask
    for index, window in enumerate(windows):
        if window not in made:
            made[window] = decoder_mask(query_length, attention_mask, None if cache is None else cache[index],
                                        window_size=window)
    return [made[window] for window in windows]
