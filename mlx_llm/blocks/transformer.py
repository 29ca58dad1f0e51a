"""Transformer layers, stacks and the original encoder-decoder model.

A layer wraps each sublayer (attention, feed-forward) in a residual
connection with layer normalization, either after the residual
(post-LN: ``LayerNorm(x + Sublayer(x))``, the textbook and BERT) or before
the sublayer (pre-LN: ``x + Sublayer(LayerNorm(x))``, GPT-2 and Llama).
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .attention import Mask, MultiHeadAttention
from .cache import KVCache
from .feed_forward import FeedForward, GatedFeedForward
from .layers import Embedding, Linear
from .masks import create_attention_mask, padding_mask
from .norms import NORMS, make_norm  # noqa: F401  (NORMS, make_norm: also importable from here)
from .positions import SinusoidalPositionalEncoding


def _final_norm(layer: "TransformerEncoderLayer", hidden_size: int) -> nn.Module | None:
    # Pre-LN (and normalized-output) stacks normalize their output once more; post-LN layers
    # already end in a norm.
    if layer.norm_first or layer.norm_output:
        return make_norm(layer.norm_kind, hidden_size, layer.norm_eps)
    return None


class TransformerEncoderLayer(nn.Module):
    """Self-attention and a feed-forward network, each with residual + norm.

    With a bidirectional (padding) mask this is an encoder layer (BERT);
    with a causal mask it is a decoder-only block (GPT-2, Llama).

    Args:
        hidden_size: Model width ``d_model``.
        num_heads: Attention heads.
        intermediate_size: Feed-forward inner width ``d_ff``.
        num_kv_heads: Key/value heads for grouped-query attention.
        head_dim: Per-head width if not ``hidden_size // num_heads``.
        activation: Feed-forward activation (see `feed_forward.ACTIVATIONS`).
        gated: Use a gated feed-forward (SwiGLU with ``"silu"``).
        bias: Biases in the attention and feed-forward projections.
        attention_output_bias: Bias in ``W^O``; ``bias`` if ``None``.
        feed_forward_bias: Biases in the feed-forward layers; ``bias`` if ``None``.
        norm: One of `mlx_llm.blocks.norms.NORMS` (``"layernorm"``, ``"rmsnorm"``,
            ``"rmsnorm_unit_offset"``); the query/key norms are of this kind too.
        norm_eps: Normalization epsilon.
        norm_first: Pre-LN if ``True``, post-LN (the textbook) if ``False``.
        dropout: Dropout on each sublayer's output before the residual add.
        feed_forward_dropout: Dropout inside the feed-forward, on its activations
            before the second product (T5's ``dropout_rate``); none at 0.
        rope: Optional rotary embedding for queries and keys.
        attention_scale: Score scale, ``1 / sqrt(head_dim)`` if ``None``.
        attention_logit_softcap: Cap ``c`` of the attention scores,
            ``c * tanh(scores / c)`` (Gemma 2); none if ``None``.
        attention_dropout: Dropout on the attention probabilities (training only).
        fused_qkv: One ``qkv_proj`` for queries, keys and values (GPT-2's ``c_attn``).
        qk_norm: RMSNorm of queries and keys, ``"head"`` or ``"width"`` (see
            `MultiHeadAttention`); none if ``None``.
        norm_output: With ``norm_first=False``, normalize each sublayer's output
            before the residual add, ``x + Norm(Sublayer(x))`` (OLMo 2), instead of
            post-LN's ``Norm(x + Sublayer(x))``. With ``norm_first=True``, a second
            norm of its own follows each sublayer ("sandwich" norms, Gemma 2 and 3):
            ``x + OutputNorm(Sublayer(Norm(x)))``, the output norms being
            ``self_attn_output_norm`` and ``feed_forward_output_norm``.
        feed_forward: A module ``(B, L, hidden_size) -> (B, L, hidden_size)`` used as the
            feed-forward sublayer instead of building one (a sparse mixture of experts,
            `mlx_llm.blocks.moe.SparseMoeBlock`); ``intermediate_size``, ``activation``,
            ``gated``, ``feed_forward_bias`` and ``feed_forward_dropout`` are then unused.
        residual_scale: Multiplier ``m`` of each sublayer's output before the residual
            add, ``x + m * Sublayer(...)`` (Granite's ``residual_multiplier``); 1 by default.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        activation: str = "relu",
        gated: bool = False,
        bias: bool = True,
        attention_output_bias: bool | None = None,
        feed_forward_bias: bool | None = None,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        norm_first: bool = False,
        dropout: float = 0.0,
        feed_forward_dropout: float = 0.0,
        rope: nn.Module | None = None,
        attention_scale: float | None = None,
        attention_dropout: float = 0.0,
        fused_qkv: bool = False,
        qk_norm: str | None = None,
        norm_output: bool = False,
        attention_logit_softcap: float | None = None,
        feed_forward: nn.Module | None = None,
        residual_scale: float = 1.0,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.norm_output = norm_output
        self.norm_kind = norm
        self.norm_eps = norm_eps
        self.self_attn = MultiHeadAttention(
            hidden_size,
            num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            bias=bias,
            output_bias=attention_output_bias,
            rope=rope,
            scale=attention_scale,
            dropout=attention_dropout,
            fused_qkv=fused_qkv,
            qk_norm=qk_norm,
            qk_norm_eps=norm_eps,
            qk_norm_kind=norm,
            logit_softcap=attention_logit_softcap,
        )
        self.self_attn_norm = make_norm(norm, hidden_size, norm_eps)
        if feed_forward is None:
            feed_forward = (GatedFeedForward if gated else FeedForward)(
                hidden_size, intermediate_size, activation=activation,
                bias=bias if feed_forward_bias is None else feed_forward_bias, dropout=feed_forward_dropout,
            )
        self.feed_forward = feed_forward
        self.feed_forward_norm = make_norm(norm, hidden_size, norm_eps)
        self.sandwich = norm_first and norm_output
        if self.sandwich:
            self.self_attn_output_norm = make_norm(norm, hidden_size, norm_eps)
            self.feed_forward_output_norm = make_norm(norm, hidden_size, norm_eps)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None  # no call at all when off
        self.residual_scale = residual_scale

    def _residual(self, hidden_states: mx.array, norm: nn.Module, sublayer: Callable[..., mx.array],
                  output_norm: nn.Module | None = None, **inputs) -> mx.array:
        # `inputs` go to the sublayer as keywords (no closure: this runs for every layer of every decoding step).
        if self.norm_first:
            output = sublayer(norm(hidden_states), **inputs)
            if output_norm is not None:
                output = output_norm(output)
        elif self.norm_output:
            output = norm(sublayer(hidden_states, **inputs))
        else:
            output = sublayer(hidden_states, **inputs)
        if self.dropout is not None and self.training:
            output = self.dropout(output)
        if self.residual_scale != 1.0:
            output = output * self.residual_scale
        if self.norm_first or self.norm_output:
            return hidden_states + output
        return norm(hidden_states + output)

    def __call__(self, hidden_states: mx.array, mask: Mask = None, cache: KVCache | None = None) -> mx.array:
        """``(B, L, hidden_size)`` in and out; ``mask`` and ``cache`` go to self-attention."""
        if self.sandwich:
            hidden_states = self._residual(hidden_states, self.self_attn_norm, self.self_attn,
                                           self.self_attn_output_norm, mask=mask, cache=cache)
            return self._residual(hidden_states, self.feed_forward_norm, self.feed_forward, self.feed_forward_output_norm)
        hidden_states = self._residual(hidden_states, self.self_attn_norm, self.self_attn, mask=mask, cache=cache)
        return self._residual(hidden_states, self.feed_forward_norm, self.feed_forward)


class TransformerDecoderLayer(TransformerEncoderLayer):
    """Masked self-attention, cross-attention to the encoder output, and a
    feed-forward network, each with residual + norm (the textbook decoder).

    Takes the arguments of `TransformerEncoderLayer`, plus ``memory_size``,
    the width of the encoder output if it differs from ``hidden_size``.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, memory_size: int | None = None, **options):
        super().__init__(hidden_size, num_heads, intermediate_size, **options)
        if self.sandwich:
            raise ValueError("sandwich norms (norm_first with norm_output) are not supported with cross-attention")
        self_attn = self.self_attn
        # Same heads, widths and biases as self-attention; no rotary positions across sequences.
        self.cross_attn = MultiHeadAttention(
            hidden_size,
            num_heads,
            num_kv_heads=self_attn.num_kv_heads,
            head_dim=self_attn.head_dim,
            bias=self_attn.projection_bias,
            output_bias="bias" in self_attn.o_proj,
            key_value_size=memory_size,
            scale=self_attn.scale,
        )
        self.cross_attn_norm = make_norm(self.norm_kind, hidden_size, self.norm_eps)

    def __call__(
        self,
        hidden_states: mx.array,
        memory: mx.array,
        mask: Mask = None,
        memory_mask: Mask = None,
        cache: tuple[KVCache, KVCache] | None = None,
    ) -> mx.array:
        """Decode ``(B, L, hidden_size)`` target states against ``memory``.

        Args:
            hidden_states: Target-side states ``(B, L, hidden_size)``.
            memory: Encoder output ``(B, S, memory_size)``.
            mask: Self-attention mask (causal, usually).
            memory_mask: Cross-attention mask over encoder positions, e.g.
                `padding_mask` of the source.
            cache: ``(self_attention_cache, cross_attention_cache)`` for
                incremental decoding.
        """
        self_cache, cross_cache = (None, None) if cache is None else cache
        hidden_states = self._residual(hidden_states, self.self_attn_norm, self.self_attn, mask=mask, cache=self_cache)
        hidden_states = self._residual(
            hidden_states, self.cross_attn_norm, self.cross_attn, key_value_states=memory, mask=memory_mask,
            cache=cross_cache,
        )
        return self._residual(hidden_states, self.feed_forward_norm, self.feed_forward)


def layer_norm_layers(args, **options) -> list[TransformerEncoderLayer]:
    """``args.num_layers`` layers as BERT and GPT-2 build them: `TransformerEncoderLayer` with
    biases and LayerNorm (eps ``args.layer_norm_eps``), sized by ``args.hidden_size``,
    ``args.num_heads`` and ``args.intermediate_size``, with ``args.activation``,
    ``args.dropout`` and ``args.attention_dropout``; ``options`` give the rest
    (``norm_first``, ...)."""
    return [
        TransformerEncoderLayer(args.hidden_size, args.num_heads, args.intermediate_size, activation=args.activation,
                                bias=True, norm="layernorm", norm_eps=args.layer_norm_eps, dropout=args.dropout,
                                attention_dropout=args.attention_dropout, **options)
        for _ in range(args.num_layers)
    ]


def run_layers(
    layers: list[nn.Module],
    hidden_states: mx.array,
    masks: list[Mask] | tuple[Mask, ...],
    cache: list | None = None,
    all_hidden_states: list | None = None,
    norm: nn.Module | None = None,
    **layer_inputs,
) -> mx.array:
    """``hidden_states`` ``(B, L, hidden_size)`` through ``layers`` in turn, layer ``i`` called
    with ``mask=masks[i]``, ``cache=cache[i]`` and ``layer_inputs`` (a decoder layer's ``memory``
    and ``memory_mask``), then through ``norm`` when one is given.

    ``all_hidden_states``, when given, receives ``len(layers) + 1`` arrays as transformers'
    ``output_hidden_states``: the input of each layer, then the output (after ``norm``).

    Raises:
        ValueError: when ``cache`` has another length than ``layers``.
    """
    if cache is not None and len(cache) != len(layers):
        raise ValueError(f"cache has {len(cache)} entries for {len(layers)} layers")
    for index, layer in enumerate(layers):
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        hidden_states = layer(hidden_states, mask=masks[index], cache=None if cache is None else cache[index],
                              **layer_inputs)
    if norm is not None:
        hidden_states = norm(hidden_states)
    if all_hidden_states is not None:
        all_hidden_states.append(hidden_states)
    return hidden_states


class TransformerEncoder(nn.Module):
    """A stack of `TransformerEncoderLayer`; with pre-LN a final norm follows.

    Args:
        num_layers: Number of layers.
        hidden_size, num_heads, intermediate_size, **options: As for
            `TransformerEncoderLayer`.
    """

    layer_class: type[TransformerEncoderLayer] = TransformerEncoderLayer

    def __init__(self, num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int, **options):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = [
            self.layer_class(hidden_size, num_heads, intermediate_size, **options) for _ in range(num_layers)
        ]
        self.norm = _final_norm(self.layers[-1], hidden_size)

    def __call__(
        self,
        hidden_states: mx.array,
        mask: Mask = None,
        cache: list[KVCache] | None = None,
        all_hidden_states: list | None = None,
        **layer_inputs,
    ) -> mx.array:
        """``(B, L, hidden_size)`` in and out; ``cache`` holds one `KVCache` per layer.
        ``all_hidden_states``, when given, receives ``num_layers + 1`` arrays as transformers'
        ``output_hidden_states``: the input of each layer, then the output (after the final norm).
        ``layer_inputs`` go to every layer (a decoder layer's ``memory`` and ``memory_mask``)."""
        return run_layers(self.layers, hidden_states, [mask] * len(self.layers), cache, all_hidden_states, self.norm,
                          **layer_inputs)

    def make_cache(self) -> list[KVCache]:
        """One empty `KVCache` per layer."""
        return [KVCache() for _ in self.layers]


class TransformerDecoder(TransformerEncoder):
    """A stack of `TransformerDecoderLayer`; with pre-LN a final norm follows
    (built as `TransformerEncoder`, called with the encoder's ``memory``)."""

    layer_class = TransformerDecoderLayer

    def __call__(self, hidden_states: mx.array, memory: mx.array, mask: Mask = None, **options) -> mx.array:
        """``(B, L, hidden_size)`` target states against ``memory`` ``(B, S, memory_size)``, in
        and out (see `TransformerDecoderLayer`); ``options``: ``memory_mask``, and ``cache`` (one
        ``(self_attention, cross_attention)`` pair per layer) and ``all_hidden_states`` as in
        `TransformerEncoder`."""
        return super().__call__(hidden_states, mask, memory=memory, **options)

    def make_cache(self) -> list[tuple[KVCache, KVCache]]:
        """One ``(self_attention, cross_attention)`` cache pair per layer."""
        return [(KVCache(), KVCache()) for _ in self.layers]


class EncoderDecoder(nn.Module):
    """The original Transformer (Vaswani et al., 2017) for sequence to sequence.

    Token embeddings scaled by ``sqrt(d_model)`` plus sinusoidal positions,
    an encoder, a decoder with masked self-attention and cross-attention,
    and a linear layer to target-vocabulary logits.

    Args:
        source_vocab_size: Source vocabulary size.
        target_vocab_size: Target vocabulary size.
        hidden_size: ``d_model``.
        num_heads: Attention heads.
        num_encoder_layers: Encoder depth.
        num_decoder_layers: Decoder depth.
        intermediate_size: Feed-forward width ``d_ff``; ``4 * hidden_size`` if ``None``.
        dropout: Dropout on embeddings and sublayer outputs.
        max_positions: Longest source or target sequence.
        **options: Further layer options (``activation``, ``norm_first``, ...),
            see `TransformerEncoderLayer`.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        hidden_size: int = 512,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        intermediate_size: int | None = None,
        dropout: float = 0.1,
        max_positions: int = 1024,
        **options,
    ):
        super().__init__()
        intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_size = hidden_size
        self.source_embed = Embedding(source_vocab_size, hidden_size)
        self.target_embed = Embedding(target_vocab_size, hidden_size)
        self.positions = SinusoidalPositionalEncoding(hidden_size, max_positions)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(
            num_encoder_layers, hidden_size, num_heads, intermediate_size, dropout=dropout, **options
        )
        self.decoder = TransformerDecoder(
            num_decoder_layers, hidden_size, num_heads, intermediate_size, dropout=dropout, **options
        )
        self.output_proj = Linear(hidden_size, target_vocab_size, bias=False)

    def _embed(self, embedding: nn.Embedding, token_ids: mx.array, offset: int = 0) -> mx.array:
        if token_ids.ndim != 2:
            raise ValueError(f"token ids must have shape (batch, length), got {tuple(token_ids.shape)}")
        hidden_states = embedding(token_ids) * math.sqrt(self.hidden_size)
        positions = self.positions(token_ids.shape[1], offset).astype(hidden_states.dtype)
        return self.dropout(hidden_states + positions)

    def encode(self, source_ids: mx.array, source_mask: mx.array | None = None) -> mx.array:
        """Encoder output ``(B, S, hidden_size)`` for ``(B, S)`` source ids.

        ``source_mask`` is the ``(B, S)`` 1/0 padding mask of the source.
        """
        mask = None if source_mask is None else padding_mask(source_mask)
        return self.encoder(self._embed(self.source_embed, source_ids), mask=mask)

    def decode(
        self,
        target_ids: mx.array,
        memory: mx.array,
        source_mask: mx.array | None = None,
        target_mask: mx.array | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
    ) -> mx.array:
        """Next-token logits ``(B, L, target_vocab_size)`` for ``(B, L)`` target ids.

        Args:
            target_ids: Target ids; with a ``cache``, only the new ones.
            memory: `encode` output.
            source_mask: ``(B, S)`` 1/0 padding mask of the source.
            target_mask: ``(B, offset + L)`` 1/0 padding mask of the target.
            cache: From `make_cache`, for incremental decoding.
        """
        offset = 0 if cache is None else cache[0][0].offset
        mask = create_attention_mask(target_ids.shape[1], target_mask, causal=True, offset=offset)
        memory_mask = None if source_mask is None else padding_mask(source_mask)
        hidden_states = self._embed(self.target_embed, target_ids, offset)
        hidden_states = self.decoder(hidden_states, memory, mask=mask, memory_mask=memory_mask, cache=cache)
        return self.output_proj(hidden_states)

    def __call__(
        self,
        source_ids: mx.array,
        target_ids: mx.array,
        source_mask: mx.array | None = None,
        target_mask: mx.array | None = None,
    ) -> mx.array:
        """Teacher-forced logits ``(B, L, target_vocab_size)``."""
        memory = self.encode(source_ids, source_mask)
        return self.decode(target_ids, memory, source_mask, target_mask)

    def make_cache(self) -> list[tuple[KVCache, KVCache]]:
        """Empty decoder caches for incremental decoding."""
        return self.decoder.make_cache()
