"""Sparse mixture of experts: stacked expert layers run as one gathered product.

A sparse MoE feed-forward (Mixtral, Qwen3-MoE) replaces the dense one by ``E``
experts, each a SwiGLU, and a router. For each token ``x`` (``H`` wide):

    p = softmax(x W_r^T)                   router probabilities over the E experts
    S = top_k(p)                           the k experts with the largest p
    w_e = p_e  or  p_e / sum_{j in S} p_j  for e in S (``normalize_top_k``)
    y = sum_{e in S} w_e * down_e(silu(gate_e(x)) * up_e(x))

Mixtral always renormalizes (transformers computes the softmax over all
experts, takes the top k, and divides by their sum, which equals a softmax
over the top-k logits); Qwen3-MoE renormalizes when ``norm_topk_prob``.

The experts' weights are stacked, ``(E, out, in)`` per projection
(`SwitchLinear`), and every selected (token, expert) pair is computed in one
`mx.gather_mm` (quantized: `mx.gather_qmm`), as mlx-lm's switch layers do:
no Python loop over experts. With many pairs, they are first sorted by
expert so that each expert's weights are read in one run (`SwitchGLU`).

Checkpoints store experts one by one (``experts.{e}.w1``, transformers'
``save_pretrained``), fused (transformers 5's in-memory ``experts.gate_up_proj``)
or stacked (mlx-lm's ``switch_mlp``); `stack_experts` and `unstack_experts`
move between them.
"""

from __future__ import annotations

import math
import re

import mlx.core as mx
import mlx.nn as nn

from .feed_forward import GATED_ACTIVATIONS, get_activation
from .layers import Linear

# Sort (token, expert) pairs by expert from this many pairs on (mlx-lm's threshold): a
# prompt's pairs then read each expert's weights once; for a decoding step the sort
# costs more than it saves.
SORT_THRESHOLD = 64


class SwitchLinear(nn.Module):
    """``E`` linear layers stacked: ``weight`` ``(E, out, in)``, ``bias`` ``(E, out)``.

    For input ``x`` ``(..., 1 or k, M, in)`` and expert ``indices`` ``(..., k)``,
    output ``[..., j, :, :] = x[..., j, :, :] @ weight[indices[..., j]].T (+ bias[indices[..., j]])``,
    shape ``(..., k, M, out)``, computed by one `mx.gather_mm`.

    Args:
        input_dims: ``in``.
        output_dims: ``out``.
        num_experts: ``E``.
        bias: Whether each expert has a bias.
    """

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, bias: bool = False):
        super().__init__()
        scale = math.sqrt(1.0 / input_dims)
        self.weight = mx.random.uniform(-scale, scale, (num_experts, output_dims, input_dims))
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        output = mx.gather_mm(x, self["weight"].swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices)
        if "bias" in self:
            output = output + mx.expand_dims(self["bias"][indices], -2)
        return output

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine") -> "QuantizedSwitchLinear":
        """The quantized layer (`nn.quantize` calls this): each expert's ``(out, in)``
        matrix quantized along ``in`` in groups of ``group_size``."""
        return QuantizedSwitchLinear.from_switch_linear(self, group_size, bits, mode)


class QuantizedSwitchLinear(nn.Module):
    """`SwitchLinear` with quantized weights (``weight`` packed ``(E, out, in * bits / 32)``,
    ``scales`` and ``biases`` ``(E, out, in / group_size)``), computed by `mx.gather_qmm`.

    Its parameters are frozen, as `nn.QuantizedLinear`'s are.
    """

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, bias: bool = False,
                 group_size: int = 64, bits: int = 4, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        self._set_weight(mx.zeros((num_experts, output_dims, input_dims)))
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))
        self.freeze()

    def _set_weight(self, weight: mx.array) -> None:
        self.weight, self.scales, *biases = mx.quantize(weight, self.group_size, self.bits, mode=self.mode)
        if biases:  # affine mode; the floating-point modes have scales only
            self.biases = biases[0]

    @classmethod
    def from_switch_linear(cls, layer: SwitchLinear, group_size: int = 64, bits: int = 4,
                           mode: str = "affine") -> "QuantizedSwitchLinear":
        num_experts, output_dims, input_dims = layer.weight.shape
        quantized = cls(input_dims, output_dims, num_experts, "bias" in layer, group_size, bits, mode)
        quantized._set_weight(layer.weight)
        if "bias" in layer:
            quantized.bias = layer.bias  # frozen with the rest: the constructor made and froze one
        return quantized

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def dequantized_weight(self) -> mx.array:
        """The float ``(E, out, in)`` weight the packed one stands for."""
        return mx.dequantize(self.weight, self.scales, self.get("biases"), self.group_size, self.bits, mode=self.mode)

    def dequantized(self) -> SwitchLinear:
        """The float `SwitchLinear` of `dequantized_weight` (and the same biases)."""
        num_experts, output_dims, _ = self.weight.shape
        layer = SwitchLinear(self.scales.shape[-1] * self.group_size, output_dims, num_experts, bias="bias" in self)
        layer.weight = self.dequantized_weight()
        if "bias" in self:
            layer.bias = self.bias
        return layer

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        output = mx.gather_qmm(x, self["weight"], self["scales"], self.get("biases"), rhs_indices=indices,
                               transpose=True, group_size=self.group_size, bits=self.bits, mode=self.mode,
                               sorted_indices=sorted_indices)
        if "bias" in self:
            output = output + mx.expand_dims(self["bias"][indices], -2)
        return output


class SwitchGLU(nn.Module):
    """``E`` gated feed-forwards, ``down_e(act(gate_e(x)) * up_e(x))``, as three `SwitchLinear`.

    Args:
        hidden_size: ``H``, input and output width.
        intermediate_size: Each expert's inner width.
        num_experts: ``E``.
        activation: The gate's activation (``"silu"``: SwiGLU experts).
        bias: Biases in the experts' projections.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, activation: str = "silu",
                 bias: bool = False):
        super().__init__()
        get_activation(activation)  # validates the name
        self.gate_and_up = GATED_ACTIVATIONS[activation]
        self.gate_proj = SwitchLinear(hidden_size, intermediate_size, num_experts, bias=bias)
        self.up_proj = SwitchLinear(hidden_size, intermediate_size, num_experts, bias=bias)
        self.down_proj = SwitchLinear(intermediate_size, hidden_size, num_experts, bias=bias)

    def __call__(self, hidden_states: mx.array, indices: mx.array) -> mx.array:
        """``(..., H)`` states and ``(..., k)`` expert indices -> ``(..., k, H)``, each selected expert's output."""
        indices = mx.stop_gradient(indices)
        x = mx.expand_dims(hidden_states, (-2, -3))  # (..., 1, 1, H): one row, shared by the k experts
        sort = indices.size >= SORT_THRESHOLD
        expert_indices = indices
        if sort:
            # One row per (token, expert) pair, in expert order: (N * k, 1, H) and (N * k,).
            flat = indices.flatten()
            order = mx.argsort(flat)
            x = x.flatten(0, -3)[order // indices.shape[-1]]
            expert_indices = flat[order]
        gate = self.gate_proj(x, expert_indices, sorted_indices=sort)
        up = self.up_proj(x, expert_indices, sorted_indices=sort)
        output = self.down_proj(self.gate_and_up(gate, up), expert_indices, sorted_indices=sort)
        if sort:
            output = mx.unflatten(output[mx.argsort(order)], 0, indices.shape)  # back to (..., k, 1, H)
        return output.squeeze(-2)


def top_k_routing(router_logits: mx.array, top_k: int, normalize: bool) -> tuple[mx.array, mx.array]:
    """The experts each token goes to, and their weights.

    Args:
        router_logits: ``(..., E)``.
        top_k: ``k``, experts per token.
        normalize: Divide the top-k probabilities by their sum.

    Returns:
        ``(indices, weights)``, both ``(..., k)`` (in no particular order):
        ``weights = softmax(router_logits)[indices]`` (renormalized if ``normalize``),
        computed in float32.
    """
    probabilities = mx.softmax(router_logits.astype(mx.float32), axis=-1, precise=True)
    indices = mx.stop_gradient(mx.argpartition(-probabilities, kth=top_k - 1, axis=-1)[..., :top_k])
    weights = mx.take_along_axis(probabilities, indices, axis=-1)
    if normalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return indices, weights


class SparseMoeBlock(nn.Module):
    """A sparse mixture-of-experts feed-forward: a router (``gate``) and SwiGLU experts (``switch_mlp``).

    ``y = sum_{e in top_k} w_e * expert_e(x)`` with the weights of `top_k_routing`.
    The module names are mlx-lm's (``gate``, ``switch_mlp``), so its stacked
    tensors need no renaming.

    Args:
        hidden_size: ``H``.
        intermediate_size: Each expert's inner width.
        num_experts: ``E``.
        top_k: Experts per token.
        normalize_top_k: Renormalize the top-k router probabilities to sum to 1.
        activation: The experts' gate activation.
        router_quantization: ``{"bits": ..., "group_size": ...}`` that `convert
            --quantize` gives the router instead of the model's settings
            (mlx-lm's Qwen3-MoE recipe keeps routers at 8 bits); ``None``: the model's.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 normalize_top_k: bool, activation: str = "silu", router_quantization: dict | None = None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"experts per token must be between 1 and the {num_experts} experts, got {top_k}")
        self.top_k = top_k
        self.normalize_top_k = normalize_top_k
        self.gate = Linear(hidden_size, num_experts, bias=False)
        if router_quantization is not None:
            # Plain ints: read by `loading.quantization_predicate`, not parameters.
            self.gate.preferred_bits = router_quantization["bits"]
            self.gate.preferred_group_size = router_quantization["group_size"]
        self.switch_mlp = SwitchGLU(hidden_size, intermediate_size, num_experts, activation)

    def __call__(self, hidden_states: mx.array) -> mx.array:
        """``(..., H)`` in and out."""
        indices, weights = top_k_routing(self.gate(hidden_states), self.top_k, self.normalize_top_k)
        expert_outputs = self.switch_mlp(hidden_states, indices)  # (..., k, H)
        return (expert_outputs * weights.astype(expert_outputs.dtype)[..., None]).sum(axis=-2)


# --- Checkpoint layouts -------------------------------------------------------------------

_PER_EXPERT = re.compile(r"^(.*)\.experts\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$")
_FUSED = re.compile(r"^(.*)\.experts\.(gate_up_proj|down_proj)$")


def stack_experts(weights: dict[str, mx.array], projections: dict[str, str], num_experts: int) -> dict[str, mx.array]:
    """Expert tensors stored one by one, or fused, as this project's stacked ones.

    - ``<block>.experts.<e>.<theirs>.<suffix>`` (``projections`` maps ``theirs``,
      e.g. ``w1``, to ``gate_proj``, ``up_proj`` or ``down_proj``) ->
      ``<block>.switch_mlp.<ours>.<suffix>``, stacked over ``e`` to ``(E, ...)``;
      ``suffix`` is ``weight``, ``bias``, or a quantized layer's ``scales`` / ``biases``.
    - transformers 5's fused ``<block>.experts.gate_up_proj`` ``(E, 2I, H)``
      (gate rows first) and ``<block>.experts.down_proj`` ``(E, H, I)``.

    Other tensors (mlx-lm's ``switch_mlp`` ones included) pass unchanged.

    Raises:
        ValueError: when an expert is missing, or a projection is unknown.
    """
    converted: dict[str, mx.array] = {}
    groups: dict[str, dict[int, mx.array]] = {}
    for name, tensor in weights.items():
        fused = _FUSED.match(name)
        if fused is not None:
            block, kind = fused.groups()
            if kind == "gate_up_proj":
                gate, up = mx.split(tensor, 2, axis=1)
                converted[f"{block}.switch_mlp.gate_proj.weight"] = gate
                converted[f"{block}.switch_mlp.up_proj.weight"] = up
            else:
                converted[f"{block}.switch_mlp.down_proj.weight"] = tensor
            continue
        single = _PER_EXPERT.match(name)
        if single is None:
            converted[name] = tensor
            continue
        block, expert, theirs, suffix = single.groups()
        if theirs not in projections:
            raise ValueError(f"unknown expert tensor {name!r}; expected one of {sorted(projections)}")
        groups.setdefault(f"{block}.switch_mlp.{projections[theirs]}.{suffix}", {})[int(expert)] = tensor
    for name, experts in groups.items():
        if sorted(experts) != list(range(num_experts)):
            missing = sorted(set(range(num_experts)) - set(experts))
            raise ValueError(f"{name}: the checkpoint lacks experts {missing} of {num_experts}")
        converted[name] = mx.stack([experts[index] for index in range(num_experts)])
    return converted


def unstack_experts(weights: dict[str, mx.array], projections: dict[str, str]) -> dict[str, mx.array]:
    """The inverse of `stack_experts`' per-expert case: ``<block>.switch_mlp.<ours>.<suffix>``
    ``(E, ...)`` -> ``<block>.experts.<e>.<theirs>.<suffix>`` (transformers' ``save_pretrained``
    layout); ``projections`` maps theirs to ours as there."""
    theirs_of = {ours: theirs for theirs, ours in projections.items()}
    exported: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        block, found, rest = name.partition(".switch_mlp.")
        if not found:
            exported[name] = tensor
            continue
        ours, suffix = rest.split(".", 1)
        for expert in range(tensor.shape[0]):
            exported[f"{block}.experts.{expert}.{theirs_of[ours]}.{suffix}"] = tensor[expert]
    return exported
