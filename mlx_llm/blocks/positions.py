"""Position information: learned absolute, sinusoidal and rotary."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..cpu.backend import cpu_kernels_enabled
from .layers import Embedding

_ROTARY_TABLE_MIN = 4096  # positions in the first cos/sin table; it doubles when a longer one is needed


def _check_positions(length: int, offset: int, max_positions: int, what: str) -> None:
    if length < 0 or offset < 0:
        raise ValueError(f"{what}: length and offset must be >= 0, got {length} and {offset}")
    if offset + length > max_positions:
        raise ValueError(
            f"{what} covers {max_positions} positions, but positions up to "
            f"{offset + length - 1} were asked for; shorten the input or use a model with a "
            "longer context"
        )


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per absolute position (GPT-2, BERT).

    Args:
        max_positions: Number of positions (the context length).
        dims: Embedding width.
    """

    def __init__(self, max_positions: int, dims: int):
        super().__init__()
        self.max_positions = max_positions
        self.embedding = Embedding(max_positions, dims)

    def __call__(self, length: int, offset: int = 0, position_ids: mx.array | None = None) -> mx.array:
        """Embeddings ``(length, dims)`` of positions ``offset .. offset + length - 1``,
        or of explicit ``position_ids`` (any shape) when given."""
        if position_ids is not None:
            return self.embedding(position_ids)
        _check_positions(length, offset, self.max_positions, "LearnedPositionalEmbedding")
        return self.embedding(mx.arange(offset, offset + length))


def sinusoidal_table(num_positions: int, dims: int, base: float = 10000.0) -> mx.array:
    """The original Transformer's encoding, ``(num_positions, dims)`` float32:
    ``PE[p, 2i] = sin(p / base^(2i/dims))``, ``PE[p, 2i+1] = cos(p / base^(2i/dims))``."""
    if dims % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even width, got dims={dims}")
    positions = mx.arange(num_positions, dtype=mx.float32)[:, None]
    frequencies = mx.exp(-math.log(base) * mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    angles = positions * frequencies  # (P, dims / 2)
    # Interleave: even columns sin, odd columns cos.
    return mx.stack([mx.sin(angles), mx.cos(angles)], axis=-1).reshape(num_positions, dims)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions of "Attention Is All You Need" (no parameters).

    Args:
        dims: Encoding width (even).
        max_positions: Positions precomputed.
        base: Wavelength base (10000 in the paper).
    """

    def __init__(self, dims: int, max_positions: int = 4096, base: float = 10000.0):
        super().__init__()
        self.dims = dims
        self.max_positions = max_positions
        self._table = sinusoidal_table(max_positions, dims, base)  # underscore: not a parameter

    def __call__(self, length: int, offset: int = 0) -> mx.array:
        """Encodings ``(length, dims)`` of positions ``offset .. offset + length - 1``."""
        _check_positions(length, offset, self.max_positions, "SinusoidalPositionalEncoding")
        return self._table[offset : offset + length]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) applied to queries and keys.

    Rotates feature pairs by an angle proportional to the position, so that
    ``q_i . k_j`` depends on ``i - j`` only. Runs as `mx.fast.rope` on Metal
    and CUDA (a fused kernel). On the CPU, where that op is a graph of about
    twenty small ones that recomputes the angles on every call, the rotation
    reads ``cos`` and ``sin`` from a table computed once in float64: a Llama
    135M decoding step took 54 instead of 57.6 ms (2-core x86, OpenBLAS). A
    left-padded batch (an array ``offset``), and ``MLX_LLM_CPU_KERNELS=0``
    (`mlx_llm.cpu.backend`), always use `mx.fast.rope`.

    Args:
        dims: Number of leading features per head to rotate (the head width
            for most models; fewer for partial rotary).
        base: Frequency base (``rope_theta``), ignored when ``freqs`` is given.
        traditional: Rotate adjacent pairs ``(x0, x1)`` (original RoFormer)
            instead of the two halves ``(x_i, x_{i + d/2})`` (Llama/GPT-NeoX
            layout, used by Hugging Face checkpoints).
        scale: Position scale (linear rope scaling uses ``1 / factor``).
        freqs: Optional explicit inverse frequencies ``(dims / 2,)`` used in
            place of ``base`` (e.g. Llama 3 rope scaling).
    """

    def __init__(
        self,
        dims: int,
        base: float = 10000.0,
        traditional: bool = False,
        scale: float = 1.0,
        freqs: mx.array | None = None,
    ):
        super().__init__()
        if dims % 2 != 0:
            raise ValueError(f"rotary embedding needs an even number of dims, got {dims}")
        if freqs is not None and freqs.shape != (dims // 2,):
            raise ValueError(f"rotary freqs must have shape ({dims // 2},), got {tuple(freqs.shape)}")
        self.dims = dims
        self.base = base
        self.traditional = traditional
        self.scale = scale
        # mx.fast.rope takes periods (1 / inverse frequency) in `freqs`.
        self._periods = None if freqs is None else 1.0 / freqs
        if freqs is None:
            self._inverse_frequencies = base ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)
        else:
            self._inverse_frequencies = np.array(freqs, dtype=np.float64)
        self._cos_sin: tuple[mx.array, mx.array] | None = None  # (positions, dims / 2) each, float32

    def _table(self, length: int) -> tuple[mx.array, mx.array]:
        """``cos`` and ``sin`` of the angles of positions ``0 .. length - 1`` (at least)."""
        if self._cos_sin is None or self._cos_sin[0].shape[0] < length:
            size = max(_ROTARY_TABLE_MIN, 1 << (length - 1).bit_length())
            angles = np.arange(size, dtype=np.float64)[:, None] * self.scale * self._inverse_frequencies[None]
            self._cos_sin = (mx.array(np.cos(angles), mx.float32), mx.array(np.sin(angles), mx.float32))
        return self._cos_sin

    def _rotate(self, hidden_states: mx.array, offset: int) -> mx.array:
        length = hidden_states.shape[-2]
        cos, sin = (table[offset : offset + length] for table in self._table(offset + length))
        rotated = hidden_states[..., : self.dims] if self.dims < hidden_states.shape[-1] else hidden_states
        if rotated.dtype != mx.float32:
            rotated = rotated.astype(mx.float32)
        if self.traditional:  # adjacent pairs (x0, x1), (x2, x3), ...
            pairs = rotated.reshape(*rotated.shape[:-1], self.dims // 2, 2)
            first, second = pairs[..., 0], pairs[..., 1]
            output = mx.stack([first * cos - second * sin, second * cos + first * sin], axis=-1)
            output = output.reshape(rotated.shape)
        else:  # the two halves (x_i, x_{i + dims/2})
            first, second = rotated[..., : self.dims // 2], rotated[..., self.dims // 2 :]
            output = mx.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
        output = output.astype(hidden_states.dtype)
        if self.dims < hidden_states.shape[-1]:
            return mx.concatenate([output, hidden_states[..., self.dims :]], axis=-1)
        return output

    def __call__(self, hidden_states: mx.array, offset: int | mx.array = 0) -> mx.array:
        """Rotate ``(B, H, L, D)`` queries or keys sitting at positions ``offset + 0 .. L - 1``."""
        if isinstance(offset, int) and cpu_kernels_enabled():
            if offset < 0:
                raise ValueError(f"rotary offset must be >= 0, got {offset}")
            return self._rotate(hidden_states, offset)
        return mx.fast.rope(
            hidden_states,
            self.dims,
            traditional=self.traditional,
            base=None if self._periods is not None else self.base,
            scale=self.scale,
            offset=offset,
            freqs=self._periods,
        )


def longrope_attention_factor(factor: float, original_max_positions: int) -> float:
    """LongRoPE's default magnitude of ``cos`` and ``sin``: ``sqrt(1 + ln(s) / ln(n))`` for the
    context extension ``s = factor`` (``max_position_embeddings / n`` unless the config
    gives one) over the pretraining length ``n``; 1 when ``s <= 1``."""
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max_positions))


class LongRoPE(nn.Module):
    """LongRoPE (Phi-3's ``"longrope"``, formerly ``"su"``): rotary positions whose
    frequencies are divided per pair by rescale factors, one list for inputs within
    the pretraining length and one for longer inputs.

    For feature pair ``i`` of the first ``dims`` features of a head, the inverse
    frequency is ``1 / (f_i * base^(2i / dims))`` with ``f`` the ``short_factor`` or
    ``long_factor`` list, and the rotated features are multiplied by
    ``attention_factor`` (transformers multiplies ``cos`` and ``sin`` by it; see
    `longrope_attention_factor`). As in transformers, the choice is made per call:
    the long factors when the positions reach past ``original_max_positions``
    (``offset + L > original_max_positions``), the short ones otherwise; with an
    array ``offset`` (a left-padded batch), per row. Keys cached with one set do
    not suit a call that picks the other: the model recomputes its cache then
    (`mlx_llm.models.phi3.LongRoPECache`).

    Args:
        dims: Leading features per head to rotate (``head_dim * partial_rotary_factor``).
        base: Frequency base (``rope_theta``).
        short_factor: ``dims / 2`` rescale factors for short inputs.
        long_factor: ``dims / 2`` rescale factors for long inputs.
        original_max_positions: The pretraining context length ``n``.
        attention_factor: Magnitude of the rotated features.
    """

    def __init__(
        self,
        dims: int,
        base: float,
        short_factor: list[float],
        long_factor: list[float],
        original_max_positions: int,
        attention_factor: float = 1.0,
    ):
        super().__init__()
        for name, factors in (("short_factor", short_factor), ("long_factor", long_factor)):
            if len(factors) != dims // 2:
                raise ValueError(f"longrope {name} has {len(factors)} entries; {dims // 2} (rotary dims / 2) are needed")
        if original_max_positions < 1:
            raise ValueError(f"longrope needs original_max_position_embeddings >= 1, got {original_max_positions}")
        self.dims = dims
        self.original_max_positions = original_max_positions
        self.attention_factor = attention_factor
        exponents = base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
        short_inverse = 1.0 / (np.array(short_factor, dtype=np.float64) * exponents)  # (dims / 2,)
        long_inverse = 1.0 / (np.array(long_factor, dtype=np.float64) * exponents)
        self.short = RotaryEmbedding(dims, freqs=mx.array(short_inverse, mx.float32))
        self.long = RotaryEmbedding(dims, freqs=mx.array(long_inverse, mx.float32))

    def _scaled(self, hidden_states: mx.array) -> mx.array:
        if self.attention_factor == 1.0:
            return hidden_states
        if self.dims == hidden_states.shape[-1]:
            return hidden_states * self.attention_factor
        return hidden_states.at[..., : self.dims].multiply(self.attention_factor)

    def __call__(self, hidden_states: mx.array, offset: int | mx.array = 0) -> mx.array:
        """Rotate ``(B, H, L, D)`` queries or keys at positions ``offset + 0 .. L - 1``."""
        hidden_states = self._scaled(hidden_states)
        length = hidden_states.shape[-2]
        if isinstance(offset, int):
            rope = self.long if offset + length > self.original_max_positions else self.short
            return rope(hidden_states, offset)
        long_rows = (offset + length > self.original_max_positions)[:, None, None, None]  # (B, 1, 1, 1)
        return mx.where(long_rows, self.long(hidden_states, offset), self.short(hidden_states, offset))
