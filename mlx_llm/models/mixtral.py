"""The Mixtral family: Mixtral 8x7B and 8x22B (sparse mixture of experts).

A Llama-family decoder (`llama`: pre-RMSNorm blocks, rotary positions,
grouped-query attention) whose feed-forward is, in every layer, a sparse
mixture of ``num_local_experts`` SwiGLU experts with ``num_experts_per_tok``
of them per token (`mlx_llm.blocks.moe.SparseMoeBlock`): router softmax, top-k,
the top-k probabilities renormalized to sum to 1.

Weights: transformers' ``save_pretrained`` stores each expert
(``block_sparse_moe.experts.{e}.w1`` gate, ``w3`` up, ``w2`` down);
transformers 5 names the block ``mlp`` in memory with fused
``experts.gate_up_proj``; mlx-lm stacks them as ``block_sparse_moe.switch_mlp.*``.
All three load; folders are written in mlx-lm's stacked layout
(`export_mlx_lm_weights`) and exported to transformers per expert
(`export_hf_weights`).

Sliding-window attention is read as transformers reads it: ``sliding_window``
(``MixtralConfig``'s default is null, as in the released models, unlike
Mistral's 4096) in every layer, each with a rotating cache of ``W`` positions
(`llama.window_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.moe import SparseMoeBlock, stack_experts, unstack_experts
from . import ModelType, llama

MODEL_TYPES = {"mixtral": ModelType("Mixtral", "Mixtral")}
hf_architecture = llama.hf_architecture  # MixtralForCausalLM, MixtralForSequenceClassification, ...

# transformers' per-expert names -> the stacked projections.
EXPERT_PROJECTIONS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_RENAMES = {"block_sparse_moe.": "feed_forward.", **llama.BLOCK_NORMS}
_KNOWN = (*llama.ATTENTION_TENSORS, "block_sparse_moe.gate.", "block_sparse_moe.switch_mlp.", *llama.BLOCK_NORMS)


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus the experts (``intermediate_size`` is each expert's width)."""

    num_experts: int = 8
    num_experts_per_tok: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"{self.model_type} num_experts_per_tok must be between 1 and num_local_experts "
                f"({self.num_experts}), got {self.num_experts_per_tok}"
            )

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Mixtral config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``;
        ``MixtralConfig``'s defaults: rope theta 1e6, ``max_position_embeddings`` 4096 * 32).

        Raises:
            ValueError: naming missing keys, invalid expert counts or an invalid window.
        """
        config = {"model_type": "mixtral", "rope_theta": 1e6, "max_position_embeddings": 4096 * 32, **config}
        base = llama.ModelArgs.from_config(config)
        every_layer = (True,) * base.num_layers  # absent key: no window (MixtralConfig's default)
        windows = llama.window_fields(config.get("sliding_window"), every_layer, base.max_positions)
        return cls(**{**vars(base), **windows}, num_experts=config.get("num_local_experts", 8),
                   num_experts_per_tok=config.get("num_experts_per_tok", 2))


def features(args: ModelArgs) -> list[str]:
    """Llama's features plus the experts, for ``mlx-llm info``."""
    return [*llama.features(args),
            f"{args.num_experts} experts, top-{args.num_experts_per_tok} routing, normalised weights"]


class MixtralModel(llama.LlamaModel):
    """The Llama backbone with a sparse mixture of experts as every feed-forward."""

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        experts = SparseMoeBlock(args.hidden_size, args.intermediate_size, args.num_experts,
                                 args.num_experts_per_tok, normalize_top_k=True)
        return {**super().layer_options(args, index, rope), "feed_forward": experts}


class Model(llama.Model):
    """Mixtral causal language model (or classifier, as `llama.Model`)."""

    backbone = MixtralModel


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``MixtralForCausalLM`` (per-expert or fused) or mlx-lm (stacked) names to this file's."""
    # transformers 5's in-memory names: the block is ``mlp``, the router ``mlp.gate``.
    weights = {name.replace(".mlp.", ".block_sparse_moe.", 1) if ".layers." in name else name: tensor
               for name, tensor in weights.items()}
    weights = stack_experts(weights, EXPERT_PROJECTIONS, args.num_experts)
    return llama.convert_hf_weights(weights, args, renames=_RENAMES, known=_KNOWN)


def export_mlx_lm_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """This file's names to mlx-lm's (experts stacked as ``block_sparse_moe.switch_mlp.*``)."""
    return llama.export_hf_weights(weights, args, renames=_RENAMES)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """This file's names to transformers' ``save_pretrained`` layout (one tensor per expert)."""
    return unstack_experts(export_mlx_lm_weights(weights, args), EXPERT_PROJECTIONS)
