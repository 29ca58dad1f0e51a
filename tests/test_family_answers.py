"""What callers ask a family instead of comparing model_type names: ``ModelArgs.context_length``
(generation's and evaluation's limit), ``mlx_lm_config`` (GPT-2's ``n_ctx``) and ``init_std``
(GPT-2's scaled residual projections in `pretrain.build_model`)."""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_llm import models
from mlx_llm.generation.generate import context_length
from mlx_llm.models import gpt2
from mlx_llm.pretrain import build_model

from test_model_contract import TINY_CONFIGS, tiny_model

# The positions each tiny config covers: GPT-2's n_positions, max_position_embeddings, T5 none.
EXPECTED_CONTEXT = {"gpt2": 32, "t5": None}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_context_length_is_the_familys_answer(name):
    model = tiny_model(name)
    expected = EXPECTED_CONTEXT.get(name, TINY_CONFIGS[name].get("max_position_embeddings"))
    assert model.args.context_length == expected and context_length(model) == expected


def test_every_family_args_answers_context_length():
    for model_type in models.FAMILIES:
        assert isinstance(models.get_family(model_type).ModelArgs.context_length, property), model_type


def test_gpt2_mlx_lm_config_adds_n_ctx_unless_present():
    assert gpt2.mlx_lm_config({"model_type": "gpt2", "n_positions": 64})["n_ctx"] == 64
    assert gpt2.mlx_lm_config({"model_type": "gpt2", "n_positions": 64, "n_ctx": 16})["n_ctx"] == 16


def _std(model, suffix: str) -> float:
    """The sample standard deviation of every weight whose path ends in ``suffix``."""
    weights = [np.array(value) for path, value in tree_flatten(model.parameters()) if path.endswith(suffix)]
    return float(np.concatenate([weight.ravel() for weight in weights]).std())


def test_build_model_scales_gpt2_residual_projections_only():
    mx.random.seed(0)
    sizes = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4)
    gpt = build_model({"model_type": "gpt2", "vocab_size": 64, "n_positions": 32, "n_embd": 64, "n_layer": 8,
                       "n_head": 4})
    llama = build_model({"model_type": "llama", **sizes})
    residual = 0.02 / math.sqrt(2 * 8)  # 0.005
    # 8 layers of 64 x 64 (o_proj) and 64 x 256 (c_proj) draws: the sample std is within a few percent.
    assert _std(gpt, "o_proj.weight") == pytest.approx(residual, rel=0.05)
    assert _std(gpt, "down_proj.weight") == pytest.approx(residual, rel=0.05)
    assert _std(gpt, "qkv_proj.weight") == pytest.approx(0.02, rel=0.05)
    assert _std(llama, "o_proj.weight") == pytest.approx(0.02, rel=0.05)
    assert _std(llama, "down_proj.weight") == pytest.approx(0.02, rel=0.05)
