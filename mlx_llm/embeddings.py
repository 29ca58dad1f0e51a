"""Sentence embeddings: pooled hidden states of an encoder (or decoder) model."""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import mlx.nn as nn

from .blocks.model_output import ENCODER_DECODER

POOLINGS = ("mean", "cls", "last")


def _hidden_states(model: nn.Module, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
    """Last hidden states ``(B, L, H)`` of any supported model (T5: its encoder's)."""
    if model.kind == ENCODER_DECODER:
        return model.encode(input_ids, attention_mask)
    # MLX is lazy: the caller evaluates only what it pools, so the head's logits are never computed.
    return model.forward(input_ids, attention_mask).last_hidden_state


def pool(hidden_states: mx.array, attention_mask: mx.array, pooling: str = "mean") -> mx.array:
    """Pool ``(B, L, H)`` states into ``(B, H)``.

    Args:
        hidden_states: Model output.
        attention_mask: ``(B, L)``, 1 for tokens and 0 for padding.
        pooling: ``"mean"`` over real tokens, ``"cls"`` (first token) or
            ``"last"`` (last real token, for right-padded decoder inputs).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    mask = attention_mask.astype(hidden_states.dtype)[..., None]
    if pooling == "mean":
        return (hidden_states * mask).sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)
    if pooling == "cls":
        return hidden_states[:, 0]
    last = attention_mask.astype(mx.int32).sum(axis=1) - 1
    return mx.take_along_axis(hidden_states, mx.maximum(last, 0)[:, None, None], axis=1)[:, 0]


def embed(
    model: nn.Module,
    tokenizer,
    texts: str | Sequence[str],
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 32,
    max_length: int | None = None,
) -> mx.array:
    """Embed texts as pooled hidden states.

    Texts are sorted by length and batched, so padding stays small; the
    result is in the input order.

    Args:
        model: A loaded model (BERT family, T5 encoder, or a decoder).
        tokenizer: Its `Tokenizer`.
        texts: One text or a list.
        pooling: See `pool`.
        normalize: Scale each embedding to unit L2 norm.
        batch_size: Texts per forward pass.
        max_length: Truncate longer inputs (the tokenizer's limit if ``None``).

    Returns:
        ``(N, H)`` float32 embeddings.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    truncation = max_length is not None or tokenizer.model_max_length is not None
    lengths = [len(ids) for ids in tokenizer(texts, truncation=truncation, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda index: lengths[index])
    pooled: list[mx.array] = []
    for start in range(0, len(order), batch_size):
        batch = [texts[index] for index in order[start : start + batch_size]]
        encoded = tokenizer(batch, padding=True, truncation=truncation, max_length=max_length, return_tensors="mlx")
        hidden_states = _hidden_states(model, encoded["input_ids"], encoded["attention_mask"])
        vectors = pool(hidden_states.astype(mx.float32), encoded["attention_mask"], pooling)
        if normalize:
            vectors = vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        mx.eval(vectors)
        pooled.append(vectors)
    stacked = mx.concatenate(pooled, axis=0)
    inverse = [0] * len(order)
    for position, index in enumerate(order):
        inverse[index] = position
    return stacked[mx.array(inverse)]
