"""The Qwen3-MoE family: Qwen3-30B-A3B, Qwen3-235B-A22B (sparse mixture of experts).

A Qwen3 decoder (`qwen3`: Llama blocks with per-head query/key RMSNorm and an
explicit ``head_dim``) whose feed-forward is, in its sparse layers, a mixture
of ``num_experts`` SwiGLU experts of width ``moe_intermediate_size`` with
``num_experts_per_tok`` per token (`mlx_llm.blocks.moe.SparseMoeBlock`): router
softmax, top-k, renormalized to sum to 1 only when ``norm_topk_prob``.

Layer ``i`` is sparse when ``i`` is not in ``mlp_only_layers`` and
``(i + 1) % decoder_sparse_step == 0`` (as transformers decides); the others
keep a dense SwiGLU of width ``intermediate_size``.

Weights: transformers stores each expert (``mlp.experts.{e}.gate_proj`` ...),
transformers 5 fuses them in memory (``mlp.experts.gate_up_proj``), mlx-lm
stacks them (``mlp.switch_mlp.*``); all three load. Folders are written in
mlx-lm's layout, with mlx-lm's quantization recipe for the routers (8 bits,
group size 64).

Sliding-window attention (``use_sliding_window``, off in the released models)
is read as transformers 5.25 reads it: ``Qwen3MoeConfig`` keeps ``sliding_window``
(default 4096) only with ``use_sliding_window``, and ``Qwen3MoeModel`` then
windows every layer (unlike dense Qwen3, it has no ``max_window_layers`` or
``layer_types``), each with a rotating cache of ``W`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.moe import SparseMoeBlock, stack_experts, unstack_experts
from . import ModelType, llama, qwen3

MODEL_TYPES = {"qwen3_moe": ModelType("Qwen3-MoE", "Qwen3Moe")}
hf_architecture = llama.hf_architecture  # Qwen3MoeForCausalLM, Qwen3MoeForSequenceClassification, ...

EXPERT_PROJECTIONS = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
_KNOWN = qwen3._KNOWN + ("mlp.gate.", "mlp.switch_mlp.")
# mlx-lm's recipe (its Qwen3-MoE ``quant_predicate``): routers at 8 bits whatever the rest.
ROUTER_QUANTIZATION = {"bits": 8, "group_size": 64}


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus the experts and which layers have them."""

    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = False
    sparse_layers: tuple[bool, ...] = ()  # one flag per layer, True = mixture of experts

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.sparse_layers) != self.num_layers:
            raise ValueError(f"{self.model_type} has {len(self.sparse_layers)} layer flags for {self.num_layers} layers")
        if any(self.sparse_layers) and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"{self.model_type} num_experts_per_tok must be between 1 and num_experts ({self.num_experts}), "
                f"got {self.num_experts_per_tok}"
            )

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Qwen3-MoE config: transformers 4.x (``num_experts``, ``rope_theta``) or
        5.x (``num_local_experts``, ``rope_parameters``); ``max_position_embeddings`` 32768
        when absent, as ``Qwen3MoeConfig``.

        Raises:
            ValueError: naming missing keys or invalid values.
        """
        base = llama.ModelArgs.from_config({"model_type": "qwen3_moe", "max_position_embeddings": 32768, **config})
        window = config.get("sliding_window", 4096) if config.get("use_sliding_window", False) else None
        windows = llama.window_fields(window, (True,) * base.num_layers, base.max_positions)
        num_experts = config.get("num_local_experts", config.get("num_experts", 128))
        step = config.get("decoder_sparse_step", 1)
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"qwen3_moe decoder_sparse_step must be a positive integer, got {step!r}")
        dense = set(config.get("mlp_only_layers") or [])
        sparse = tuple(index not in dense and num_experts > 0 and (index + 1) % step == 0
                       for index in range(base.num_layers))
        return cls(**{**vars(base), **windows}, num_experts=num_experts,
                   num_experts_per_tok=config.get("num_experts_per_tok", 8),
                   moe_intermediate_size=config.get("moe_intermediate_size", 768),
                   norm_topk_prob=bool(config.get("norm_topk_prob", False)), sparse_layers=sparse)


def features(args: ModelArgs) -> list[str]:
    """Qwen3's features plus the experts, for ``mlx-llm info``."""
    weights = "normalised weights" if args.norm_topk_prob else "softmax weights (not renormalised)"
    found = [*qwen3.features(args),
             f"{args.num_experts} experts (width {args.moe_intermediate_size}), "
             f"top-{args.num_experts_per_tok} routing, {weights}"]
    dense = [index for index, sparse in enumerate(args.sparse_layers) if not sparse]
    if dense:
        found.append(f"dense feed-forward in layers {dense}")
    return found


class Qwen3MoeModel(qwen3.Qwen3Model):
    """The Qwen3 backbone with a sparse mixture of experts in the sparse layers."""

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        options = super().layer_options(args, index, rope)
        if args.sparse_layers[index]:
            options["feed_forward"] = SparseMoeBlock(
                args.hidden_size, args.moe_intermediate_size, args.num_experts, args.num_experts_per_tok,
                normalize_top_k=args.norm_topk_prob, router_quantization=ROUTER_QUANTIZATION)
        return options


class Model(llama.Model):
    """Qwen3-MoE causal language model (or classifier, as `llama.Model`)."""

    backbone = Qwen3MoeModel


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Qwen3MoeForCausalLM`` (per-expert or fused) or mlx-lm (stacked) names to this file's."""
    weights = stack_experts(weights, EXPERT_PROJECTIONS, args.num_experts)
    return llama.convert_hf_weights(weights, args, known=_KNOWN)


def export_mlx_lm_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """This file's names to mlx-lm's (experts stacked as ``mlp.switch_mlp.*``)."""
    return llama.export_hf_weights(weights, args)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """This file's names to transformers' ``save_pretrained`` layout (one tensor per expert)."""
    return unstack_experts(export_mlx_lm_weights(weights, args), EXPERT_PROJECTIONS)


def mlx_lm_config(config: dict) -> dict:
    """``config.json`` keys mlx-lm requires that transformers 5 spells otherwise."""
    experts = config.get("num_experts", config.get("num_local_experts"))
    return {**config, "num_experts": experts, "mlp_only_layers": config.get("mlp_only_layers") or []}
