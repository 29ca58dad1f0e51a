"""mlx_llm: Transformers on MLX, from the textbook building blocks to
pretrained models, training, fine-tuning, distillation and generation."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import _moved

_moved.install()  # the former module names (mlx_llm.generate, mlx_llm.attention, ...) still import

from .blocks.attention import MultiHeadAttention, attention_weights, scaled_dot_product_attention
from .blocks.cache import KVCache
from .blocks.feed_forward import ACTIVATIONS, FeedForward, GatedFeedForward, SwiGLU, get_activation
from .blocks.masks import causal_mask, combine_masks, create_attention_mask, padding_mask
from .blocks.model_output import ModelOutput
from .blocks.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from .blocks.transformer import (
    EncoderDecoder,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    make_norm,
)
from .embeddings import embed
from .generation.chat import ChatSession
from .generation.generate import GenerationResponse, batch_generate, generate, stream_generate
from .generation.sampling import SamplingConfig
from .model_files.loading import convert, describe, load, load_model
from .tokenization import Tokenizer
from .training.losses import cross_entropy

try:
    __version__ = _version("mlx-llm-kit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ACTIVATIONS",
    "ChatSession",
    "GenerationResponse",
    "ModelOutput",
    "SamplingConfig",
    "Tokenizer",
    "batch_generate",
    "convert",
    "describe",
    "embed",
    "generate",
    "load",
    "load_model",
    "stream_generate",
    "EncoderDecoder",
    "FeedForward",
    "GatedFeedForward",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "SwiGLU",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "attention_weights",
    "causal_mask",
    "combine_masks",
    "create_attention_mask",
    "cross_entropy",
    "get_activation",
    "make_norm",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_table",
]
