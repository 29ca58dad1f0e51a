"""Scaled dot-product attention and multi-head attention.

The textbook formulas, for query i and keys j:

    alpha_ij = softmax_j(q_i . k_j / sqrt(d_k) + mask_ij)
    o_i      = sum_j alpha_ij v_j
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O

computed by `mx.fast.scaled_dot_product_attention`, a fused kernel on Metal
and CUDA with a plain fallback elsewhere. Every model in mlx_llm attends
through this module.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .cache import KVCache
from .layers import Linear
from .norms import make_norm

Mask = mx.array | str | None


def _check_broadcastable(mask_shape: tuple, scores_shape: tuple) -> None:
    if len(mask_shape) > len(scores_shape) or any(
        m != 1 and m != s for m, s in zip(reversed(mask_shape), reversed(scores_shape))
    ):
        raise ValueError(
            f"mask of shape {mask_shape} does not broadcast to the attention scores "
            f"(batch, heads, queries, keys) = {scores_shape}"
        )


def _check_attention_inputs(queries: mx.array, keys: mx.array, values: mx.array, mask: Mask) -> None:
    if queries.ndim != 4 or keys.ndim != 4 or values.ndim != 4:
        raise ValueError(
            "attention takes queries (B, H, L, D), keys (B, H_kv, S, D) and values "
            f"(B, H_kv, S, D_v); got shapes {tuple(queries.shape)}, {tuple(keys.shape)}, "
            f"{tuple(values.shape)}"
        )
    batch, num_heads, query_length, head_dim = queries.shape
    if keys.shape[0] != batch or keys.shape[3] != head_dim or keys.shape[:3] != values.shape[:3]:
        raise ValueError(
            f"mismatched attention shapes: queries {tuple(queries.shape)}, keys "
            f"{tuple(keys.shape)}, values {tuple(values.shape)}; batch and head_dim of queries "
            "and keys must agree, and keys and values must agree in all but the last axis"
        )
    if num_heads % keys.shape[1] != 0:
        raise ValueError(
            f"{num_heads} query heads cannot share {keys.shape[1]} key/value heads: "
            "the number of query heads must be a multiple of the number of key/value heads"
        )
    if mask is not None:
        _check_mask(mask, (batch, num_heads, query_length, keys.shape[2]))


def _check_mask(mask: mx.array | str, scores_shape: tuple) -> None:
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"the only string mask is 'causal', got {mask!r}")
    else:
        _check_broadcastable(tuple(mask.shape), scores_shape)


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    mask: Mask = None,
    scale: float | None = None,
) -> mx.array:
    """Attention output ``softmax(Q K^T * scale + mask) V``.

    Grouped-query and multi-query attention need no repeated keys: pass
    ``H_kv`` key/value heads with ``H`` a multiple of it.

    Args:
        queries: ``(B, H, L, D)``.
        keys: ``(B, H_kv, S, D)``.
        values: ``(B, H_kv, S, D_v)``.
        mask: ``None``; ``"causal"`` (query ``L-1`` aligned with key ``S-1``,
            as after a KV cache); a boolean array, ``True`` where attention is
            allowed; or an additive array added to the scores. Arrays
            broadcast to ``(B, H, L, S)``.
        scale: Score scale, ``1 / sqrt(D)`` when ``None``.

    Returns:
        ``(B, H, L, D_v)``. A query row whose boolean mask allows no key
        outputs zeros (not NaN).
    """
    _check_attention_inputs(queries, keys, values, mask)
    return _attend(queries, keys, values, mask, 1.0 / math.sqrt(queries.shape[-1]) if scale is None else scale)


def _attend(queries: mx.array, keys: mx.array, values: mx.array, mask: Mask, scale: float) -> mx.array:
    # `scaled_dot_product_attention` on checked inputs.
    if mask is None or isinstance(mask, str):
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    if mask.dtype != mx.bool_:  # additive masks must match the compute dtype
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask.astype(queries.dtype))
    output = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    # Backends disagree on rows with nothing to attend to; define them as 0.
    return mx.where(mask.any(axis=-1, keepdims=True), output, mx.zeros((), output.dtype))


def attention_weights(
    queries: mx.array,
    keys: mx.array,
    mask: Mask = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> mx.array:
    """The attention probabilities ``alpha`` themselves, ``(B, H, L, S)``.

    Materializes the score matrix, so use it for inspection and distillation,
    and in the forward pass only where the fused kernel cannot compute it
    (dropout on the probabilities, soft-capped scores). Masked positions get
    exactly zero weight and a row with no allowed key is all zeros.

    Args:
        softcap: If given, scores ``s = Q K^T * scale`` become
            ``softcap * tanh(s / softcap)`` before the mask (Gemma 2's
            ``attn_logit_softcapping``).
    """
    values = mx.zeros(keys.shape[:3] + (1,), keys.dtype)
    _check_attention_inputs(queries, keys, values, mask)
    if scale is None:
        scale = 1.0 / math.sqrt(queries.shape[-1])
    repeats = queries.shape[1] // keys.shape[1]
    if repeats > 1:
        keys = mx.repeat(keys, repeats, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    if softcap is not None:
        scores = mx.tanh(scores / softcap) * softcap
    query_length, key_length = scores.shape[-2:]
    if isinstance(mask, str):
        query_positions = mx.arange(key_length - query_length, key_length)[:, None]
        mask = mx.arange(key_length)[None] <= query_positions
    if mask is not None and mask.dtype != mx.bool_:
        scores = scores + mask.astype(scores.dtype)
        mask = None
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    weights = mx.softmax(scores.astype(mx.float32), axis=-1, precise=True)
    weights = mx.where(mx.isnan(weights), 0.0, weights)  # rows with no allowed key
    return weights.astype(queries.dtype)


# Norms of the projected queries and keys: per head (Qwen3) or over the whole width (OLMo 2).
QK_NORMS = (None, "head", "width")


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention, with grouped-query heads, rotary
    positions and a KV cache.

    ``num_kv_heads`` below ``num_heads`` gives grouped-query attention
    (``num_kv_heads == 1``: multi-query attention). Parameter names follow
    the most common Hugging Face layout (``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``), so checkpoint converters are short key maps. With
    ``fused_qkv`` one ``qkv_proj`` computes queries, keys and values in a
    single matrix product (GPT-2's ``c_attn``): fewer, larger products, which
    is faster when decoding one token at a time.

    Args:
        hidden_size: Model width, the size of queries in and outputs out.
        num_heads: Number of query heads ``h``.
        num_kv_heads: Number of key/value heads; ``num_heads`` if ``None``.
        head_dim: Per-head width; ``hidden_size // num_heads`` if ``None``.
        bias: Whether the query, key and value projections have biases.
        output_bias: Whether ``W^O`` has a bias; same as ``bias`` if ``None``.
        key_value_size: Width of the key/value input for cross-attention, if
            it differs from ``hidden_size``.
        rope: Optional rotary embedding applied to queries and keys.
        scale: Score scale, ``1 / sqrt(head_dim)`` if ``None`` (T5 uses 1).
        dropout: Dropout on the attention probabilities in training mode (BERT's
            ``attention_probs_dropout_prob``); the fused kernel runs otherwise.
        fused_qkv: One ``qkv_proj`` (rows: queries, keys, values) instead of
            three projections; self-attention only.
        qk_norm: RMSNorm (``q_norm``, ``k_norm``) on the projected queries and
            keys, before rotary positions: ``"head"`` over each head's
            ``head_dim`` (Qwen3), ``"width"`` over the whole projected width
            (OLMo 2); ``None`` (the default) for none.
        qk_norm_eps: Epsilon of those norms.
        qk_norm_kind: Their kind (`mlx_llm.blocks.norms.NORMS`): ``"rmsnorm"``, or
            ``"rmsnorm_unit_offset"`` (Gemma 3's ``(1 + w)`` scale).
        logit_softcap: Cap ``c`` of the scores, ``c * tanh(s / c)`` before the
            mask (Gemma 2); the probabilities are then computed explicitly
            (`attention_weights`), since the fused kernel has no cap.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        output_bias: bool | None = None,
        key_value_size: int | None = None,
        rope: nn.Module | None = None,
        scale: float | None = None,
        dropout: float = 0.0,
        fused_qkv: bool = False,
        qk_norm: str | None = None,
        qk_norm_eps: float = 1e-6,
        qk_norm_kind: str = "rmsnorm",
        logit_softcap: float | None = None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {qk_norm!r}; choose one of {QK_NORMS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
        if logit_softcap is not None and not logit_softcap > 0:
            raise ValueError(f"attention logit_softcap must be positive, got {logit_softcap}")
        if hidden_size < 1 or num_heads < 1 or num_kv_heads < 1:
            raise ValueError(
                f"hidden_size, num_heads and num_kv_heads must be positive, got "
                f"hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads}"
            )
        if head_dim is None:
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; "
                    "choose a multiple of num_heads or pass head_dim explicitly"
                )
            head_dim = hidden_size // num_heads
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}; "
                "each key/value head must serve the same number of query heads"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        key_value_size = hidden_size if key_value_size is None else key_value_size
        self.key_value_size = key_value_size
        output_bias = bias if output_bias is None else output_bias
        self.projection_bias = bias

        if fused_qkv:
            if key_value_size != hidden_size:
                raise ValueError(
                    f"fused_qkv projects queries, keys and values from one input (self-attention), but "
                    f"key_value_size={key_value_size} differs from hidden_size={hidden_size}; "
                    "use separate projections for cross-attention"
                )
            self.qkv_proj = Linear(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias)
        else:
            self.q_proj = Linear(hidden_size, num_heads * head_dim, bias=bias)
            self.k_proj = Linear(key_value_size, num_kv_heads * head_dim, bias=bias)
            self.v_proj = Linear(key_value_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, bias=output_bias)
        self.rope = rope
        self.attention_dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.logit_softcap = logit_softcap
        self.qk_norm = qk_norm
        if qk_norm is not None:
            per_head = qk_norm == "head"
            self.q_norm = make_norm(qk_norm_kind, head_dim if per_head else num_heads * head_dim, qk_norm_eps)
            self.k_norm = make_norm(qk_norm_kind, head_dim if per_head else num_kv_heads * head_dim, qk_norm_eps)

    def _normed(self, projected: mx.array, norm_name: str) -> mx.array:
        # (B, L, H * D) in and out; "head" normalizes each (B, L, H, D) head vector over D.
        if self.qk_norm is None:
            return projected
        norm = self[norm_name]
        if self.qk_norm == "width":
            return norm(projected)
        batch, length, width = projected.shape
        return norm(projected.reshape(batch, length, width // self.head_dim, self.head_dim)).reshape(
            batch, length, width
        )

    def _split_heads(self, projected: mx.array, num_heads: int) -> mx.array:
        batch, length, _ = projected.shape
        # (B, L, H * D) -> (B, H, L, D)
        return projected.reshape(batch, length, num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def project(
        self, hidden_states: mx.array, key_value_states: mx.array | None = None
    ) -> tuple[mx.array, mx.array, mx.array]:
        """Queries ``(B, num_heads, L, head_dim)`` from ``hidden_states`` and keys and
        values ``(B, num_kv_heads, S, head_dim)`` from ``key_value_states`` (or, for
        self-attention, ``hidden_states``), before rotary positions."""
        if "qkv_proj" in self:
            if key_value_states is not None:
                raise ValueError("this attention has a fused qkv_proj and cannot attend to key_value_states")
            query_size, key_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            queries, keys, values = mx.split(
                self.qkv_proj(hidden_states), [query_size, query_size + key_size], axis=-1
            )
        else:
            source = hidden_states if key_value_states is None else key_value_states
            queries, keys, values = self.q_proj(hidden_states), self.k_proj(source), self.v_proj(source)
        queries, keys = self._normed(queries, "q_norm"), self._normed(keys, "k_norm")
        batch, length, _ = hidden_states.shape
        source_length = length if key_value_states is None else key_value_states.shape[1]
        # (B, L, H * D) -> (B, H, L, D)
        return (
            queries.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3),
            keys.reshape(batch, source_length, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3),
            values.reshape(batch, source_length, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3),
        )

    def __call__(
        self,
        hidden_states: mx.array,
        key_value_states: mx.array | None = None,
        mask: Mask = None,
        cache: KVCache | None = None,
    ) -> mx.array:
        """Attend from ``hidden_states`` to itself or to ``key_value_states``.

        Args:
            hidden_states: ``(B, L, hidden_size)`` queries (and, for
                self-attention, keys and values).
            key_value_states: ``(B, S, key_value_size)`` for cross-attention,
                e.g. the encoder output; ``None`` for self-attention.
            mask: See `scaled_dot_product_attention`; broadcasts to
                ``(B, num_heads, L, S)`` where ``S`` counts cached positions.
            cache: Self-attention: new keys and values are appended and all
                are attended to. Cross-attention: the projected
                ``key_value_states`` are stored on the first call and reused
                afterwards.

        Returns:
            ``(B, L, hidden_size)``.
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"MultiHeadAttention expects hidden_states of shape (batch, length, "
                f"{self.hidden_size}), got {tuple(hidden_states.shape)}"
            )
        batch, length, _ = hidden_states.shape

        if key_value_states is None:
            offset = 0 if cache is None else cache.position_offset
            queries, keys, values = self.project(hidden_states)
            if self.rope is not None:
                queries = self.rope(queries, offset=offset)
                keys = self.rope(keys, offset=offset)
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)
        elif cache is not None and cache.offset > 0:
            queries = self._split_heads(self._normed(self.q_proj(hidden_states), "q_norm"), self.num_heads)
            keys, values = cache.state  # encoder keys/values projected on an earlier step
        else:
            if (
                key_value_states.ndim != 3
                or key_value_states.shape[0] != batch
                or key_value_states.shape[2] != self.key_value_size
            ):
                raise ValueError(
                    f"cross-attention expects key_value_states of shape ({batch}, length, "
                    f"{self.key_value_size}), got {tuple(key_value_states.shape)}"
                )
            queries, keys, values = self.project(hidden_states, key_value_states)
            if cache is not None:
                keys, values = cache.update_and_fetch(keys, values)

        dropout = self.attention_dropout is not None and self.training
        if dropout or self.logit_softcap is not None:
            # Dropout and the cap need the probabilities themselves: the textbook computation, unfused.
            weights = attention_weights(queries, keys, mask=mask, scale=self.scale, softcap=self.logit_softcap)
            weights = self.attention_dropout(weights) if dropout else weights
            repeats = self.num_heads // self.num_kv_heads
            output = weights @ (mx.repeat(values, repeats, axis=1) if repeats > 1 else values)  # (B, H, L, D)
        else:
            if mask is not None:  # queries, keys and values are this layer's own, and consistent
                _check_mask(mask, (batch, self.num_heads, length, keys.shape[2]))
            output = _attend(queries, keys, values, mask, self.scale)
        # (B, H, L, D) -> (B, L, H * D), i.e. Concat(head_1..head_h), then W^O.
        output = output.transpose(0, 2, 1, 3).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(output)
