"""Input-major products (mlx_llm.layers): the same numbers as nn.Linear, forward and backward."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_llm import layers
from mlx_llm.layers import Embedding, Linear, reference_blas_in, relayout

WHEEL = "/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0"
NUMPY_OPENBLAS = "/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so"


@pytest.fixture(params=[True, False], ids=["input-major", "mlx"])
def mode(request):
    layers.set_input_major(request.param)
    yield request.param
    layers.set_input_major(None)


@pytest.mark.parametrize("mapped, preload, expected", [
    ([WHEEL, NUMPY_OPENBLAS], "", True),  # numpy's own OpenBLAS is not MLX's
    ([WHEEL], "/usr/lib/x86_64-linux-gnu/libopenblas.so.0", False),
    ([WHEEL], "/venv/lib/libmkl_rt.so.3", False),
    (["/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"], "", False),  # Debian's alternative
    (["/usr/lib/x86_64-linux-gnu/blas/libblas.so.3"], "", True),  # a source build on netlib
    ([NUMPY_OPENBLAS, "/usr/lib/libc.so.6"], "", False),  # no reference BLAS at all
])
def test_reference_blas_detection(mapped, preload, expected):
    assert reference_blas_in(mapped, preload) is expected


def _pair(bias: bool):
    mx.random.seed(0)
    ours = Linear(24, 40, bias=bias)
    reference = nn.Linear(24, 40, bias=bias)
    reference.update(ours.parameters())
    return ours, reference


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relaid", [False, True])
def test_linear_matches_nn_linear_forward_and_backward(mode, bias, relaid):
    ours, reference = _pair(bias)
    if relaid:
        assert relayout(ours) == (1 if mode else 0)
    x = mx.random.normal((3, 5, 24))
    cotangent = mx.random.normal((3, 5, 40))

    def loss(model, x):
        return (model(x) * cotangent).sum()

    (value, grads), x_grad = nn.value_and_grad(ours, loss)(ours, x), mx.grad(lambda x: loss(ours, x))(x)
    (ref_value, ref_grads), ref_x_grad = (nn.value_and_grad(reference, loss)(reference, x),
                                          mx.grad(lambda x: loss(reference, x))(x))
    np.testing.assert_allclose(np.array(ours(x)), np.array(reference(x)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value.item(), ref_value.item(), rtol=1e-5)
    np.testing.assert_allclose(np.array(x_grad), np.array(ref_x_grad), rtol=1e-5, atol=1e-5)
    for name in grads:
        np.testing.assert_allclose(np.array(grads[name]), np.array(ref_grads[name]), rtol=1e-5, atol=1e-5)
    # And against the formula in NumPy.
    w = np.array(ours.weight, dtype=np.float64)
    expected = np.array(x, dtype=np.float64) @ w.T + (np.array(ours.bias) if bias else 0)
    np.testing.assert_allclose(np.array(ours(x)), expected, atol=1e-5)


def test_tied_output_layer_matches_and_backpropagates(mode):
    mx.random.seed(1)
    embedding = Embedding(50, 16)
    hidden = mx.random.normal((2, 3, 16))
    np.testing.assert_allclose(np.array(embedding.as_linear(hidden)),
                               np.array(hidden) @ np.array(embedding.weight).T, rtol=1e-5, atol=1e-5)
    ids = mx.array([[1, 4, 9]])

    def loss(weight):  # lookup and output layer share the weight, as in GPT-2 and Llama
        embedding.weight = weight
        return embedding.as_linear(embedding(ids)).sum()

    def reference_loss(weight):
        return (weight[ids] @ weight.T).sum()

    weight = embedding.weight
    np.testing.assert_allclose(np.array(mx.grad(loss)(weight)), np.array(mx.grad(reference_loss)(weight)),
                               rtol=1e-5, atol=1e-5)


def test_relayout_keeps_values_and_only_moves_float32(mode, tmp_path):
    mx.random.seed(2)
    model = nn.Sequential(Linear(8, 12), nn.Linear(12, 6), Embedding(10, 8))
    model.layers[1].set_dtype(mx.bfloat16)
    before = [np.array(p.astype(mx.float32)) for _, p in tree_items(model)]
    moved = relayout(model)
    assert moved == (2 if mode else 0)  # the bfloat16 layer is left alone (no BLAS there)
    after = [np.array(p.astype(mx.float32)) for _, p in tree_items(model)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # Saving writes the values, whatever the memory order.
    mx.save_safetensors(str(tmp_path / "w.safetensors"), dict(tree_items(model)))
    loaded = mx.load(str(tmp_path / "w.safetensors"))
    for (name, value), expected in zip(tree_items(model), after):
        np.testing.assert_array_equal(np.array(loaded[name].astype(mx.float32)), expected)


def tree_items(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def test_with_an_optimized_blas_weights_are_stored_out_in(monkeypatch):
    monkeypatch.setattr(layers, "_reference_blas", lambda: False)
    mx.random.seed(3)
    model = nn.Sequential(Linear(8, 12), Linear(12, 6), Embedding(10, 8))
    conv1d = mx.random.normal((8, 12))  # stored (in, out), as GPT-2's Conv1D
    model.layers[0].weight = conv1d.T
    x = mx.random.normal((2, 8))
    expected = np.array(model.layers[1](model.layers[0](x)))
    assert relayout(model) == 3
    np.testing.assert_array_equal(np.array(model.layers[0].weight), np.array(conv1d).T)
    np.testing.assert_allclose(np.array(model.layers[1](model.layers[0](x))), expected, rtol=1e-5, atol=1e-6)
