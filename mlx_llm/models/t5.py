"""T5: the text-to-text encoder-decoder (Raffel et al., 2020), original and v1.1 / FLAN-T5.

T5 is the textbook encoder-decoder with four changes, all expressed here with
the shared blocks (`TransformerEncoder`, `TransformerDecoder`):

- pre-LN residuals with an RMS norm that has a weight but no bias, and no
  biases anywhere else;
- unscaled attention scores (``scale = 1``) and a per-head width ``d_kv``
  that need not equal ``d_model / num_heads``;
- no absolute positions: a learned scalar per head and *relative position
  bucket* is added to the self-attention scores. The bias is computed once
  per stack (it lives in the first layer of each Hugging Face stack) and
  shared by every layer, so it travels to the layers as an additive mask;
- a ReLU feed-forward (original T5, ``feed_forward_proj="relu"``) or a
  gated-GELU one (v1.1 and FLAN-T5, ``"gated-gelu"``).

The original T5 ties the output head to the token embeddings and scales the
decoder output by ``d_model ** -0.5`` before it; v1.1 and FLAN-T5 have a
separate ``lm_head`` and no scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..blocks.cache import KVCache
from ..blocks.feed_forward import ACTIVATIONS, HF_ACTIVATIONS
from ..blocks.layers import Embedding, Linear
from ..blocks.masks import causal_mask, combine_masks, padding_mask
from ..blocks.model_output import ENCODER_DECODER, ModelOutput
from ..blocks.transformer import TransformerDecoder, TransformerEncoder
from . import ModelType, check_required_keys

# The Hugging Face weight-name map: the family interface's convert/export functions, in their own file.
from .t5_weights import convert_hf_weights, export_hf_weights  # noqa: F401

MODEL_TYPES = {"t5": ModelType("T5", "T5", layers_key="num_layers", width_key="d_model")}


def hf_architecture(model_type: str, task: str) -> str:
    """``T5ForConditionalGeneration``, the transformers class of T5's one task, ``"seq2seq_lm"``."""
    if task != "seq2seq_lm":
        raise ValueError(f"T5 models have the task 'seq2seq_lm' only, not {task!r}")
    return "T5ForConditionalGeneration"


_DTYPES = ("float32", "float16", "bfloat16")

# Hugging Face config.json key -> ModelArgs field. Keys not listed are not used.
_REQUIRED_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "d_kv": "head_dim",
    "d_ff": "intermediate_size",
    "num_layers": "num_encoder_layers",
    "num_heads": "num_heads",
}
# Optional keys, with transformers' defaults where the key is absent.
_OPTIONAL_KEYS: dict[str, tuple[str, Any]] = {
    "num_decoder_layers": ("num_decoder_layers", None),  # None: same as num_layers
    "relative_attention_num_buckets": ("num_buckets", 32),
    "relative_attention_max_distance": ("max_distance", 128),
    "layer_norm_epsilon": ("norm_eps", 1e-6),
    "tie_word_embeddings": ("tie_word_embeddings", True),
    "decoder_start_token_id": ("decoder_start_token_id", 0),
    "pad_token_id": ("pad_token_id", 0),
    "eos_token_id": ("eos_token_id", 1),
    "dropout_rate": ("dropout", 0.1),
}
_CONFIG_KEY_OF: dict[str, str] = {
    **{name: key for key, name in _REQUIRED_KEYS.items()},
    **{name: key for key, (name, _) in _OPTIONAL_KEYS.items()},
    "activation": "feed_forward_proj",
}


def _label(field_name: str) -> str:
    """A field's name, with the config.json key it comes from when that differs."""
    key = _CONFIG_KEY_OF.get(field_name, field_name)
    return field_name if key == field_name else f"{field_name} (config.json {key})"


def parse_feed_forward_proj(feed_forward_proj: str) -> tuple[str, bool]:
    """Split a Hugging Face ``feed_forward_proj`` into an activation and a gate flag.

    Args:
        feed_forward_proj: ``"{act}"`` or ``"gated-{act}"``, e.g. ``"relu"``
            (original T5) or ``"gated-gelu"`` (v1.1, FLAN-T5).

    Returns:
        ``(activation, gated)`` with ``activation`` a `feed_forward.ACTIVATIONS`
        name. As in transformers, ``"gated-gelu"`` means the tanh approximation.
    """
    if not isinstance(feed_forward_proj, str):
        raise ValueError(
            f"feed_forward_proj must be a string such as 'relu' or 'gated-gelu', got {feed_forward_proj!r}"
        )
    parts = feed_forward_proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(
            f"invalid feed_forward_proj {feed_forward_proj!r}; expected '{{activation}}' or "
            "'gated-{activation}', e.g. 'relu' or 'gated-gelu'"
        )
    if feed_forward_proj == "gated-gelu":
        return "gelu_tanh", True  # transformers maps this one to gelu_new for backward compatibility
    if parts[-1] not in HF_ACTIVATIONS:
        raise ValueError(
            f"unsupported activation {parts[-1]!r} in feed_forward_proj {feed_forward_proj!r}; "
            f"supported activations: {', '.join(sorted(HF_ACTIVATIONS))}"
        )
    return HF_ACTIVATIONS[parts[-1]], gated


@dataclass
class ModelArgs:
    """T5 hyperparameters (Hugging Face names in brackets).

    Attributes:
        vocab_size: Shared source/target vocabulary [``vocab_size``].
        hidden_size: Model width [``d_model``].
        head_dim: Per-head width [``d_kv``].
        intermediate_size: Feed-forward width [``d_ff``].
        num_encoder_layers: Encoder depth [``num_layers``].
        num_decoder_layers: Decoder depth [``num_decoder_layers``].
        num_heads: Attention heads [``num_heads``].
        num_buckets: Relative position buckets [``relative_attention_num_buckets``].
        max_distance: Distance beyond which relative positions share a
            bucket [``relative_attention_max_distance``].
        norm_eps: RMS norm epsilon [``layer_norm_epsilon``].
        activation: Feed-forward activation, a `feed_forward.ACTIVATIONS` name.
        gated: Gated feed-forward (``wi_0``/``wi_1``) [``feed_forward_proj``].
        tie_word_embeddings: The output head is the token embedding matrix.
        scale_decoder_outputs: Scale the decoder output by ``hidden_size ** -0.5``
            before the head; the original T5 does, v1.1 does not. Read from
            ``scale_decoder_outputs`` (written by transformers 5), else equal
            to ``tie_word_embeddings``.
        decoder_start_token_id: First decoder input token.
        pad_token_id: Padding token.
        eos_token_id: End-of-sequence token(s).
        dtype: Parameter dtype of the checkpoint [``dtype`` or ``torch_dtype``].
        dropout: Training-mode dropout on the embeddings, attention probabilities,
            the feed-forward's inner activations, each sublayer's output and each
            stack's output [``dropout_rate``].
    """

    vocab_size: int
    hidden_size: int
    head_dim: int
    intermediate_size: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    norm_eps: float = 1e-6
    activation: str = "relu"
    gated: bool = False
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int | list[int] | None = 1
    dtype: str = "float32"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "head_dim",
            "intermediate_size",
            "num_encoder_layers",
            "num_decoder_layers",
            "num_heads",
            "num_buckets",
            "max_distance",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"T5 {_label(name)} must be a positive integer, got {value!r}")
        if self.num_buckets < 4:
            raise ValueError(
                f"T5 {_label('num_buckets')} must be at least 4 (half exact, half logarithmic, in each "
                f"direction), got {self.num_buckets}"
            )
        if self.max_distance <= self.num_buckets // 2:
            raise ValueError(
                f"T5 {_label('max_distance')}={self.max_distance} must exceed num_buckets // 2 = "
                f"{self.num_buckets // 2}, the last exactly-bucketed distance"
            )
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or self.norm_eps <= 0:
            raise ValueError(f"T5 {_label('norm_eps')} must be a positive number, got {self.norm_eps!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"T5 activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"T5 {_label('dropout')} must be a number in [0, 1), got {self.dropout!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"T5 dtype (config.json dtype or torch_dtype) must be one of {_DTYPES}, got {self.dtype!r}"
            )

    @property
    def context_length(self) -> None:
        """No limit: relative position buckets cover any length."""
        return None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelArgs":
        """Read a Hugging Face T5 ``config.json`` (as a dict).

        Raises:
            ValueError: If ``model_type`` is not ``"t5"``, a required key is
                missing, or a value is invalid (the message names it).
        """
        model_type = config.get("model_type", "t5")
        if model_type != "t5":
            raise ValueError(f"the T5 family reads model_type 't5', got {model_type!r}")
        check_required_keys(config, tuple(_REQUIRED_KEYS), "T5")
        values: dict[str, Any] = {field_name: config[key] for key, field_name in _REQUIRED_KEYS.items()}
        for key, (field_name, default) in _OPTIONAL_KEYS.items():
            value = config.get(key)
            values[field_name] = default if value is None else value
        if values["num_decoder_layers"] is None:
            values["num_decoder_layers"] = values["num_encoder_layers"]
        values["activation"], values["gated"] = parse_feed_forward_proj(config.get("feed_forward_proj", "relu"))
        if not isinstance(values["tie_word_embeddings"], bool):
            raise ValueError(
                f"T5 config tie_word_embeddings must be true or false, got {values['tie_word_embeddings']!r}"
            )
        # transformers 5 always ties on load and records the original T5's output scaling here.
        scale = config.get("scale_decoder_outputs")
        if scale is None:
            scale = values["tie_word_embeddings"]
        elif not isinstance(scale, bool):
            raise ValueError(f"T5 config scale_decoder_outputs must be true or false, got {scale!r}")
        values["scale_decoder_outputs"] = scale
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
        values["dtype"] = dtype
        return cls(**values)


def relative_position_bucket(
    relative_position: mx.array, bidirectional: bool, num_buckets: int, max_distance: int
) -> mx.array:
    """T5's bucket for each relative position ``key - query`` (as in Mesh TensorFlow).

    Distances below ``max_exact`` (a quarter of the buckets when
    bidirectional, half otherwise) get a bucket each; longer ones share
    logarithmically wider buckets up to ``max_distance``, beyond which all
    fall into the last bucket. Bidirectional buckets split keys before and
    after the query; unidirectional ones treat every future key as distance 0.

    Args:
        relative_position: Integer array of ``key_position - query_position``.
        bidirectional: ``True`` in the encoder, ``False`` in the decoder.
        num_buckets: Total number of buckets.
        max_distance: Distance from which on the bucket no longer changes.

    Returns:
        Integer array of the same shape, values in ``[0, num_buckets)``.
    """
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).astype(mx.int32) * num_buckets
        distance = mx.abs(relative_position)
    else:
        buckets = mx.zeros(relative_position.shape, mx.int32)
        distance = -mx.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # Same float32 arithmetic as the reference, so bucket edges agree; the
    # maximum keeps log() finite where the exact bucket is used anyway.
    scaled = mx.maximum(distance, max_exact).astype(mx.float32) / max_exact
    logarithmic = mx.log(scaled) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = mx.minimum(max_exact + logarithmic.astype(mx.int32), num_buckets - 1)
    return buckets + mx.where(distance < max_exact, distance.astype(mx.int32), large)


class RelativePositionBias(nn.Module):
    """A learned scalar per head and relative position bucket, added to the scores.

    Args:
        num_heads: Attention heads.
        num_buckets: Relative position buckets.
        max_distance: See `relative_position_bucket`.
        bidirectional: ``True`` for the encoder, ``False`` for the decoder.
    """

    def __init__(self, num_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = Embedding(num_buckets, num_heads)

    def __call__(self, query_length: int, key_length: int, offset: int = 0) -> mx.array:
        """Bias ``(1, H, L, S)`` for queries at ``offset .. offset + L - 1`` and keys ``0 .. S - 1``."""
        query_positions = mx.arange(offset, offset + query_length)[:, None]
        key_positions = mx.arange(key_length)[None, :]
        buckets = relative_position_bucket(
            key_positions - query_positions, self.bidirectional, self.num_buckets, self.max_distance
        )
        # (L, S, H) -> (1, H, L, S)
        return self.embedding(buckets).transpose(2, 0, 1)[None]


def _masked_value(dtype: mx.Dtype) -> float:
    # Large but finite: a fully masked row stays finite, and adding a score to
    # it cannot overflow to -inf even in float16.
    return float(mx.finfo(dtype).min) / 2


def _apply_mask(bias: mx.array, allowed: mx.array | None, dtype: mx.Dtype) -> mx.array:
    """The additive attention mask: ``bias`` where ``allowed``, a large negative value elsewhere."""
    bias = bias.astype(dtype)
    if allowed is None:
        return bias
    return mx.where(allowed, bias, mx.array(_masked_value(dtype), dtype))


class Model(nn.Module):
    """T5 for conditional generation: encoder, decoder and language-model head.

    Parameter names: ``shared`` (token embeddings), ``encoder`` and
    ``decoder`` (the shared-block stacks, each ending in its final RMS norm),
    ``encoder_position_bias`` and ``decoder_position_bias``, and ``lm_head``
    when the head is not tied.
    """

    kind = ENCODER_DECODER

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        layer_options = dict(
            head_dim=args.head_dim,
            activation=args.activation,
            gated=args.gated,
            bias=False,
            norm="rmsnorm",
            norm_eps=args.norm_eps,
            norm_first=True,
            attention_scale=1.0,  # T5 folds 1/sqrt(d_kv) into its weight initialization
            dropout=args.dropout,
            attention_dropout=args.dropout,
            feed_forward_dropout=args.dropout,  # between wi and wo, as T5DenseActDense / T5DenseGatedActDense
        )
        self.dropout = nn.Dropout(args.dropout)  # embeddings and stack outputs, in training mode
        self.shared = Embedding(args.vocab_size, args.hidden_size, output_layer=args.tie_word_embeddings)
        self.encoder = TransformerEncoder(
            args.num_encoder_layers, args.hidden_size, args.num_heads, args.intermediate_size, **layer_options
        )
        self.encoder_position_bias = RelativePositionBias(
            args.num_heads, args.num_buckets, args.max_distance, bidirectional=True
        )
        self.decoder = TransformerDecoder(
            args.num_decoder_layers, args.hidden_size, args.num_heads, args.intermediate_size, **layer_options
        )
        self.decoder_position_bias = RelativePositionBias(
            args.num_heads, args.num_buckets, args.max_distance, bidirectional=False
        )
        if not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)

    def _embed(self, token_ids: mx.array, what: str) -> mx.array:
        if token_ids.ndim != 2:
            raise ValueError(f"{what} must have shape (batch, length), got {tuple(token_ids.shape)}")
        return self.dropout(self.shared(token_ids))  # T5 neither scales embeddings nor adds positions

    def encode(
        self, input_ids: mx.array, attention_mask: mx.array | None = None, all_hidden_states: list | None = None
    ) -> mx.array:
        """Encoder output.

        Args:
            input_ids: ``(B, S)`` source token ids.
            attention_mask: ``(B, S)``, 1 for tokens and 0 for padding.
            all_hidden_states: When given, receives ``num_encoder_layers + 1``
                arrays ``(B, S, hidden_size)`` as transformers' ``encoder_hidden_states``.

        Returns:
            ``(B, S, hidden_size)``, after the encoder's final norm.
        """
        hidden_states = self._embed(input_ids, "input_ids")
        length = input_ids.shape[1]
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask of shape {tuple(attention_mask.shape)} does not match input_ids "
                f"of shape {tuple(input_ids.shape)}"
            )
        allowed = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, S)
        mask = _apply_mask(self.encoder_position_bias(length, length), allowed, hidden_states.dtype)
        return self._stack_output(self.encoder(hidden_states, mask=mask, all_hidden_states=all_hidden_states),
                                  all_hidden_states)

    def _stack_output(self, hidden_states: mx.array, all_hidden_states: list | None) -> mx.array:
        """A stack's output after dropout, which is also the last of its ``all_hidden_states`` (as transformers)."""
        hidden_states = self.dropout(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states[-1] = hidden_states
        return hidden_states

    def decode_hidden_states(
        self,
        decoder_input_ids: mx.array,
        encoder_hidden_states: mx.array,
        attention_mask: mx.array | None = None,
        decoder_attention_mask: mx.array | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
        all_hidden_states: list | None = None,
    ) -> mx.array:
        """Decoder output before the head (what transformers calls the decoder's last hidden state).

        Args:
            decoder_input_ids: ``(B, L)`` target ids, starting with
                ``decoder_start_token_id``; with a ``cache``, only the new ones.
            encoder_hidden_states: `encode` output ``(B, S, hidden_size)``.
            attention_mask: ``(B, S)`` source padding mask (1 = token).
            decoder_attention_mask: ``(B, offset + L)`` target padding mask
                over the cached and new positions; causal masking is always on.
            cache: From `make_cache`; filled and advanced in place.
            all_hidden_states: When given, receives ``num_decoder_layers + 1``
                arrays as transformers' ``decoder_hidden_states``.

        Returns:
            ``(B, L, hidden_size)``, after the decoder's final norm and before
            any output scaling.
        """
        hidden_states = self._embed(decoder_input_ids, "decoder_input_ids")
        length = decoder_input_ids.shape[1]
        offset = 0 if cache is None else cache[0][0].offset
        allowed = causal_mask(length, offset)  # (L, offset + L)
        if decoder_attention_mask is not None:
            if decoder_attention_mask.ndim != 2 or decoder_attention_mask.shape[1] != offset + length:
                raise ValueError(
                    f"decoder_attention_mask of shape {tuple(decoder_attention_mask.shape)} must be "
                    f"(batch, {offset + length}): it covers the {offset} cached and {length} new "
                    "decoder positions"
                )
            allowed = combine_masks(allowed, padding_mask(decoder_attention_mask))  # (B, 1, L, offset + L)
        bias = self.decoder_position_bias(length, offset + length, offset)  # (1, H, L, offset + L)
        mask = _apply_mask(bias, allowed, hidden_states.dtype)
        memory_mask = None if attention_mask is None else padding_mask(attention_mask)
        hidden_states = self.decoder(hidden_states, encoder_hidden_states, mask=mask, memory_mask=memory_mask,
                                     cache=cache, all_hidden_states=all_hidden_states)
        return self._stack_output(hidden_states, all_hidden_states)

    def lm_logits(self, decoder_hidden_states: mx.array) -> mx.array:
        """Vocabulary logits ``(B, L, vocab_size)`` from `decode_hidden_states` output."""
        if self.args.scale_decoder_outputs:
            decoder_hidden_states = decoder_hidden_states * (self.args.hidden_size**-0.5)
        if self.args.tie_word_embeddings:
            return self.shared.as_linear(decoder_hidden_states)
        return self.lm_head(decoder_hidden_states)

    def decode(self, *args, **kwargs) -> mx.array:
        """Next-token logits ``(B, L, vocab_size)``: `lm_logits` of `decode_hidden_states`
        (teacher-forced, or incremental with a ``cache``), which takes the same arguments."""
        return self.lm_logits(self.decode_hidden_states(*args, **kwargs))

    def forward(
        self,
        input_ids: mx.array,
        decoder_input_ids: mx.array,
        attention_mask: mx.array | None = None,
        decoder_attention_mask: mx.array | None = None,
        cache: list[tuple[KVCache, KVCache]] | None = None,
        *,
        encoder_outputs: mx.array | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Encode the source and decode the target (teacher-forced, or the new tokens with a ``cache``).

        The decoder inputs follow ``input_ids`` (positionally too, as before the
        model contract): ``model(input_ids, decoder_input_ids, attention_mask)``.

        Args:
            input_ids, attention_mask: ``(B, S)`` source ids and padding mask.
            decoder_input_ids, decoder_attention_mask, cache: as for `decode_hidden_states`.
            encoder_outputs: An `encode` output ``(B, S, hidden_size)`` to reuse;
                the encoder then does not run (and ``input_ids`` is not read).
            output_hidden_states: Also return every layer's hidden states.

        Returns:
            `ModelOutput` with ``logits`` ``(B, L, vocab_size)``, ``last_hidden_state``
            (the decoder's, ``(B, L, hidden_size)``), ``encoder_last_hidden_state``
            ``(B, S, hidden_size)``, and with ``output_hidden_states`` the decoder's
            ``hidden_states`` and (when the encoder ran) its ``encoder_hidden_states``,
            ``num_layers + 1`` arrays each, as transformers' decoder/encoder hidden states.
        """
        encoder_states = [] if output_hidden_states and encoder_outputs is None else None
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, encoder_states)
        decoder_states = [] if output_hidden_states else None
        hidden_states = self.decode_hidden_states(decoder_input_ids, encoder_outputs, attention_mask,
                                                  decoder_attention_mask, cache, decoder_states)
        return ModelOutput.of(logits=self.lm_logits(hidden_states), last_hidden_state=hidden_states,
                              encoder_last_hidden_state=encoder_outputs, hidden_states=decoder_states,
                              encoder_hidden_states=encoder_states)

    def __call__(self, *args, **kwargs) -> mx.array:
        """``forward(...).logits``: logits ``(B, L, vocab_size)``; the arguments are `forward`'s."""
        return self.forward(*args, **kwargs).logits

    @property
    def layers(self) -> list[nn.Module]:
        """The encoder's layers, then the decoder's (LoRA's ``num_layers`` counts from the last)."""
        return [*self.encoder.layers, *self.decoder.layers]

    def make_cache(self) -> list[tuple[KVCache, KVCache]]:
        """One empty ``(self_attention, cross_attention)`` cache pair per decoder layer."""
        return self.decoder.make_cache()
