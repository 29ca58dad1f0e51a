import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)



@pytest.fixture(autouse=True, scope="session")
def _weight_order_cache(tmp_path_factory):
    """Measured weight orders (mlx_llm.layers) go to a temporary folder, never the user's cache."""
    import os

    previous = os.environ.get("MLX_LLM_CACHE")
    os.environ["MLX_LLM_CACHE"] = str(tmp_path_factory.mktemp("mlx_llm_cache"))
    yield
    if previous is None:
        os.environ.pop("MLX_LLM_CACHE", None)
    else:
        os.environ["MLX_LLM_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def _no_blas_hint():
    """The line heavy commands print on MLX's reference BLAS (cli/blas.py) depends on the machine's BLAS,
    not on the code under test: silenced, so that what commands print is the same everywhere
    (tests/test_blas_cli.py turns it on for its own runs)."""
    import os

    previous = os.environ.get("MLX_LLM_BLAS_HINT")
    os.environ["MLX_LLM_BLAS_HINT"] = "0"
    yield
    if previous is None:
        os.environ.pop("MLX_LLM_BLAS_HINT", None)
    else:
        os.environ["MLX_LLM_BLAS_HINT"] = previous
