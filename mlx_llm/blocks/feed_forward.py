"""Position-wise feed-forward networks: FFN(x) = dropout(act(x W1 + b1)) W2 + b2."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..cpu import fast_math
from ..cpu.backend import cpu_kernels_enabled
from .layers import Linear

# On the CPU, GELU and SiLU come from `fast_math` (vectorized approximations, 2e-6 of
# MLX's) for all but small inputs; on Metal and CUDA, and with MLX_LLM_CPU_KERNELS=0, they are MLX's own.
ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "relu": nn.relu,  # the original Transformer; cheapest on CPU
    "gelu": fast_math.gelu,  # exact, x * Phi(x) (BERT)
    "gelu_tanh": fast_math.gelu_tanh,  # tanh approximation (GPT-2's "gelu_new", T5 v1.1)
    "silu": fast_math.silu,  # a.k.a. swish (SwiGLU in Llama)
}
_NATIVE = {"relu": nn.relu, "gelu": nn.gelu, "gelu_tanh": nn.gelu_approx, "silu": nn.silu}

# act(gate) * up as one fused kernel on accelerators (mx.compile fuses elementwise ops;
# shapeless: no recompilation per sequence length).
_FUSED_GATES = {
    name: mx.compile(lambda gate, up, activation=activation: activation(gate) * up, shapeless=True)
    for name, activation in _NATIVE.items()
}


def _gated(name: str) -> Callable[[mx.array, mx.array], mx.array]:
    activation = ACTIVATIONS[name]

    def gate_and_up(gate: mx.array, up: mx.array) -> mx.array:
        if cpu_kernels_enabled() and gate.size >= fast_math.NATIVE_BELOW:
            return activation(gate) * up
        return _FUSED_GATES[name](gate, up)

    return gate_and_up


GATED_ACTIVATIONS: dict[str, Callable[[mx.array, mx.array], mx.array]] = {name: _gated(name) for name in ACTIVATIONS}


# The one Hugging Face activation map: transformers' ACT2FN names (``hidden_act``,
# ``activation_function``, ``activation``, T5's ``feed_forward_proj`` after ``gated-``)
# -> `ACTIVATIONS` names. gelu_new, gelu_pytorch_tanh and gelu_fast are all
# 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))); swish is silu.
HF_ACTIVATIONS: dict[str, str] = {
    "relu": "relu",
    "gelu": "gelu",  # exact, x * Phi(x)
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}


def hf_activation(name: str, key: str) -> str:
    """The `ACTIVATIONS` name of the Hugging Face activation ``name``.

    Args:
        name: The value in ``config.json``, e.g. ``"gelu_new"``.
        key: The ``config.json`` key it was read from, for the message.

    Raises:
        ValueError: naming the key, the value and the supported values.
    """
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported {key}={name!r} in config.json; supported: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def get_activation(name: str) -> Callable[[mx.array], mx.array]:
    """Look up an activation by name (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _inner_dropout(probability: float) -> nn.Dropout | None:
    """The dropout between a feed-forward's two products; ``None`` (no call at all) at 0."""
    return nn.Dropout(probability) if probability > 0 else None


class FeedForward(nn.Module):
    """Two linear layers with an activation between them (the textbook FFN).

    Args:
        hidden_size: Input and output width.
        intermediate_size: Inner width (4 x hidden_size in most models).
        activation: ``"relu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"silu"``.
        bias: Whether both layers have biases.
        dropout: Dropout on the activations ``(B, L, intermediate_size)`` before
            ``down_proj``, in training mode only (T5's ``T5DenseActDense``); none at 0.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "relu", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.activation_name = activation
        self.activation = get_activation(activation)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.dropout = _inner_dropout(dropout)

    def __call__(self, hidden_states: mx.array) -> mx.array:
        inner = self.activation(self.up_proj(hidden_states))  # (B, L, intermediate_size)
        return self.down_proj(inner if self.dropout is None else self.dropout(inner))


class GatedFeedForward(nn.Module):
    """Gated linear unit FFN: ``down(act(gate(x)) * up(x))``.

    With ``activation="silu"`` this is SwiGLU (Llama, Mistral, Qwen2); with
    ``"gelu_tanh"`` it is the gated-GELU of T5 v1.1 and FLAN-T5. With
    ``fused``, one ``gate_up_proj`` of ``2 * intermediate_size`` outputs (rows:
    gate, then up) computes both in one product, as Phi-3 stores them. With
    ``dropout``, ``act(gate(x)) * up(x)`` is dropped out before ``down`` in
    training mode (T5's ``T5DenseGatedActDense``).
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, activation: str = "silu", bias: bool = False,
        fused: bool = False, dropout: float = 0.0,
    ):
        super().__init__()
        self.activation_name = activation
        get_activation(activation)  # validates the name
        self.gate_and_up = GATED_ACTIVATIONS[activation]
        if fused:
            self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)
        else:
            self.gate_proj = Linear(hidden_size, intermediate_size, bias=bias)
            self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.dropout = _inner_dropout(dropout)

    def __call__(self, hidden_states: mx.array) -> mx.array:
        if "gate_up_proj" in self:
            gate, up = mx.split(self.gate_up_proj(hidden_states), 2, axis=-1)  # (B, L, d_ff) each
        else:
            gate, up = self.gate_proj(hidden_states), self.up_proj(hidden_states)
        inner = self.gate_and_up(gate, up)  # (B, L, d_ff)
        return self.down_proj(inner if self.dropout is None else self.dropout(inner))


def SwiGLU(hidden_size: int, intermediate_size: int, bias: bool = False) -> GatedFeedForward:
    """The SwiGLU feed-forward of Llama: ``down(silu(gate(x)) * up(x))``."""
    return GatedFeedForward(hidden_size, intermediate_size, activation="silu", bias=bias)
