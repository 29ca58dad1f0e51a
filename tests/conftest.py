import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)



@pytest.fixture(autouse=True, scope="session")
def _weight_order_cache(tmp_path_factory):
    """Measured weight orders (mlx_llm.blocks.layers) go to a temporary folder, never the user's cache."""
    import os

    previous = os.environ.get("MLX_LLM_CACHE")
    os.environ["MLX_LLM_CACHE"] = str(tmp_path_factory.mktemp("mlx_llm_cache"))
    yield
    if previous is None:
        os.environ.pop("MLX_LLM_CACHE", None)
    else:
        os.environ["MLX_LLM_CACHE"] = previous


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer folder (tests/tokenizer_fixtures.py), built once per test module."""
    from tokenizer_fixtures import build_byte_level_bpe

    return build_byte_level_bpe(tmp_path_factory.mktemp("tokenizer"))
