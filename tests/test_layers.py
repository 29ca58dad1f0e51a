"""mlx_llm.blocks.layers: input-major products give the same numbers as nn.Linear, forward and backward; weights
are stored in the order measured faster (mlx_llm.cpu.tuning), and the measurement is kept; with the CPU
branches off (MLX_LLM_CPU_KERNELS=0, as on Metal) products are x @ W.T and weights stay as stored."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_llm import backend, cpu_tuning, layers
from mlx_llm.cpu.tuning import reference_blas_in
from mlx_llm.blocks.layers import Embedding, Linear, relayout

WHEEL = "/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0"
NUMPY_OPENBLAS = "/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so"


@pytest.fixture(autouse=True)
def _cpu_kernels_on():
    """Most tests here check the CPU branch itself, so it runs even under MLX_LLM_CPU_KERNELS=0."""
    with backend.cpu_kernels(True):
        yield


@pytest.fixture(params=[True, False], ids=["input-major", "mlx"])
def mode(request):
    layers.set_input_major(request.param)
    yield request.param
    layers.set_input_major(None)


@pytest.mark.parametrize("mapped, preload, expected", [
    ([WHEEL, NUMPY_OPENBLAS], "", True),  # numpy's own OpenBLAS is not MLX's
    ([WHEEL, "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"], "/usr/lib/x86_64-linux-gnu/libopenblas.so.0", False),
    ([WHEEL, NUMPY_OPENBLAS, "/venv/lib/libmkl_rt.so.3"], "/venv/lib/libmkl_rt.so.3", False),
    ([WHEEL, "/venv/lib/libmkl_rt.so.3"], "/lib/libjemalloc.so.2:/venv/lib/libmkl_rt.so.3", False),
    ([WHEEL, NUMPY_OPENBLAS], "/missing/libmkl_rt.so.3", True),  # ld.so could not preload it: still the wheel's
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
    monkeypatch.setattr(cpu_tuning, "reference_blas", lambda: False)
    mx.random.seed(3)
    model = nn.Sequential(Linear(8, 12), Linear(12, 6), Embedding(10, 8))
    conv1d = mx.random.normal((8, 12))  # stored (in, out), as GPT-2's Conv1D
    model.layers[0].weight = conv1d.T
    x = mx.random.normal((2, 8))
    expected = np.array(model.layers[1](model.layers[0](x)))
    assert relayout(model) == 3
    np.testing.assert_array_equal(np.array(model.layers[0].weight), np.array(conv1d).T)
    np.testing.assert_allclose(np.array(model.layers[1](model.layers[0](x))), expected, rtol=1e-5, atol=1e-6)


# --- Weight order with an optimized BLAS ----------------------------------------------------------


def _in_out(weight: mx.array) -> bool:
    """Whether an (out, in) weight is stored (in, out) in memory, read from its strides."""
    mx.eval(weight)
    return memoryview(weight).strides == (4, 4 * weight.shape[0])


def _out_in(weight: mx.array) -> bool:
    mx.eval(weight)
    return memoryview(weight).strides == (4 * weight.shape[1], 4)


@pytest.fixture
def optimized_blas(monkeypatch, tmp_path):
    """Weight orders are measured here: an optimized BLAS on the CPU, every shape timed, a fresh cache."""
    monkeypatch.setattr(cpu_tuning, "reference_blas", lambda: False)
    monkeypatch.setattr(cpu_tuning, "_UNTIMED_MODEL_BYTES", 0)
    monkeypatch.setattr(cpu_tuning, "_UNTIMED_SHAPE_BYTES", 0)
    monkeypatch.setenv("MLX_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLX_LLM_TUNE_ORDER", raising=False)
    return tmp_path / "cache" / "weight_order.json"


def _tuned_model():
    mx.random.seed(4)
    return nn.Sequential(Linear(8, 12), Linear(12, 6), Embedding(10, 8), Embedding(20, 6, output_layer=True))


def test_measured_orders_place_each_shape_and_are_kept(optimized_blas, monkeypatch):
    timed_shapes = []

    def faster_in_out(weights):  # stands in for the timing: (12, 8) weights read faster (in, out)
        timed_shapes.append(tuple(weights[0].shape))
        return tuple(weights[0].shape) == (12, 8)

    monkeypatch.setattr(cpu_tuning, "in_out_is_faster", faster_in_out)
    model = _tuned_model()
    x = mx.random.normal((3, 8))
    expected = [np.array(model.layers[1](model.layers[0](x))), np.array(model.layers[3].as_linear(x[:, :6]))]
    assert relayout(model) == 4
    assert sorted(timed_shapes) == [(6, 12), (12, 8), (20, 6)]  # the lookup-only embedding is not timed
    assert _in_out(model.layers[0].weight)
    assert _out_in(model.layers[1].weight) and _out_in(model.layers[2].weight) and _out_in(model.layers[3].weight)
    np.testing.assert_allclose(np.array(model.layers[1](model.layers[0](x))), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(model.layers[3].as_linear(x[:, :6])), expected[1], rtol=1e-5, atol=1e-6)

    saved = json.loads(optimized_blas.read_text())
    assert list(saved.values()) == [{"12x8": "in_out", "6x12": "out_in", "20x6": "out_in"}]
    assert not [path for path in optimized_blas.parent.iterdir() if path.name.endswith(".tmp")]

    # A second load reads the orders instead of timing again.
    monkeypatch.setattr(cpu_tuning, "in_out_is_faster", lambda weights: pytest.fail("measured twice"))
    again = _tuned_model()
    again.layers[0].weight = mx.contiguous(again.layers[0].weight)
    relayout(again)
    assert _in_out(again.layers[0].weight) and _out_in(again.layers[1].weight)

    # A model with a new shape adds it to what is kept.
    monkeypatch.setattr(cpu_tuning, "in_out_is_faster", lambda weights: True)
    relayout(nn.Sequential(Linear(8, 12), Linear(8, 20)))
    assert list(json.loads(optimized_blas.read_text()).values()) == [
        {"12x8": "in_out", "6x12": "out_in", "20x6": "out_in", "20x8": "in_out"}
    ]


def test_unreadable_order_file_is_measured_again_and_unwritable_cache_is_harmless(optimized_blas, monkeypatch,
                                                                                   tmp_path):
    monkeypatch.setattr(cpu_tuning, "in_out_is_faster", lambda weights: True)
    optimized_blas.parent.mkdir(parents=True)
    optimized_blas.write_text("{not json")
    relayout(_tuned_model())
    assert set(json.loads(optimized_blas.read_text()).popitem()[1].values()) == {"in_out"}

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("MLX_LLM_CACHE", str(blocker / "cache"))  # cannot be created
    model = _tuned_model()
    assert relayout(model) == 4
    assert _in_out(model.layers[0].weight) and _out_in(model.layers[2].weight)


def test_small_shapes_and_tune_order_0_are_not_measured(optimized_blas, monkeypatch):
    monkeypatch.setattr(cpu_tuning, "in_out_is_faster", lambda weights: pytest.fail("measured"))
    monkeypatch.setenv("MLX_LLM_TUNE_ORDER", "0")
    model = _tuned_model()
    relayout(model)
    assert all(_out_in(layer.weight) for layer in model.layers)
    monkeypatch.delenv("MLX_LLM_TUNE_ORDER")
    monkeypatch.setattr(cpu_tuning, "_UNTIMED_SHAPE_BYTES", 2**20)  # the default: these shapes are far below it
    relayout(model)
    monkeypatch.setattr(cpu_tuning, "_UNTIMED_SHAPE_BYTES", 0)
    monkeypatch.setattr(cpu_tuning, "_UNTIMED_MODEL_BYTES", 64 * 2**20)  # and so is the model
    relayout(model)
    assert not optimized_blas.exists()


@pytest.mark.parametrize("out_in_ms, in_out_ms, expected", [
    ((50, 10.0, 10.1, 9.9), (9.0, 9.2, 9.1, 9.3), True),  # 9% faster; the slow warm-up pass is ignored
    ((10.0, 10.0, 10.1, 9.9), (9.7, 9.6, 9.8, 9.7), False),  # 3% faster: within the margin, kept (out, in)
    ((10.0, 8.0, 8.1, 8.2), (7.0, 9.0, 9.1, 9.2), False),  # slower once warm
])
def test_in_out_is_faster_compares_the_best_warm_passes(monkeypatch, out_in_ms, in_out_ms, expected):
    monkeypatch.setattr(cpu_tuning, "_FLUSH_BYTES", 4096)
    calls = []

    def pass_seconds(weights, row, flush):
        in_out = _in_out(weights[0])
        assert row.shape == (1, 16) and len(weights) == 2
        calls.append(in_out)
        return (in_out_ms if in_out else out_in_ms)[sum(1 for c in calls if c == in_out) - 1] / 1e3

    monkeypatch.setattr(cpu_tuning, "_pass_seconds", pass_seconds)
    weights = [mx.random.normal((24, 16)), mx.random.normal((24, 16))]
    before = [np.array(w) for w in weights]
    assert cpu_tuning.in_out_is_faster(weights) is expected
    assert calls == [False, True] * 4  # alternating orders
    for weight, values in zip(weights, before):
        np.testing.assert_array_equal(np.array(weight), values)
        assert _out_in(weight)


def test_lookup_embeddings_keep_rows_in_input_major_mode():
    layers.set_input_major(True)
    try:
        model = _tuned_model()
        relayout(model)
        assert _in_out(model.layers[0].weight) and _in_out(model.layers[3].weight)  # products
        assert _out_in(model.layers[2].weight)  # looked up only
    finally:
        layers.set_input_major(None)


@pytest.mark.parametrize("family, task, tied, output_layer", [
    ("gpt2", "causal_lm", True, True),
    ("gpt2", "sequence_classification", True, False),
    ("llama", "causal_lm", True, True),
    ("llama", "causal_lm", False, False),
])
def test_decoders_mark_a_tied_output_embedding(family, task, tied, output_layer):
    if family == "gpt2":
        from mlx_llm.models.gpt2 import Model, ModelArgs

        args = ModelArgs(vocab_size=32, max_positions=16, hidden_size=8, num_layers=1, num_heads=2,
                         intermediate_size=16, task=task, tie_word_embeddings=tied)
        embedding = Model(args).model.wte
    else:
        from mlx_llm.models.llama import Model, ModelArgs

        args = ModelArgs(model_type="llama", vocab_size=32, hidden_size=8, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=4, intermediate_size=16, max_positions=16, task=task,
                         tie_word_embeddings=tied)
        embedding = Model(args).model.embed_tokens
    assert embedding.output_layer is output_layer


# --- With the CPU branches off (MLX_LLM_CPU_KERNELS=0): the code Metal and CUDA run ------------------


@pytest.mark.parametrize("forced", [None, True])
def test_with_the_cpu_kernels_off_weights_stay_as_stored(monkeypatch, forced):
    monkeypatch.setattr(cpu_tuning, "reference_blas", lambda: True)  # the reference BLAS, as installed
    monkeypatch.setattr(cpu_tuning, "weight_orders", lambda groups: pytest.fail("weight orders looked up"))
    layers.set_input_major(forced)
    try:
        model = _tuned_model()
        conv1d = mx.random.normal((8, 12))
        model.layers[0].weight = conv1d.T  # stored (in, out), as GPT-2's Conv1D: relayout would copy it
        before = [model.layers[i].weight for i in range(4)]
        with backend.cpu_kernels(False):
            assert not layers.input_major()
            assert relayout(model) == 0
        assert all(layer.weight is weight for layer, weight in zip(model.layers, before))
        assert _in_out(model.layers[0].weight) and _out_in(model.layers[1].weight)
        assert layers.input_major()  # and back on, the CPU branch again
    finally:
        layers.set_input_major(None)


@pytest.mark.parametrize("bias", [True, False])
def test_with_the_cpu_kernels_off_linear_is_nn_linear_exactly(monkeypatch, bias):
    monkeypatch.setattr(cpu_tuning, "reference_blas", lambda: True)
    ours, reference = _pair(bias)
    x, cotangent = mx.random.normal((3, 5, 24)), mx.random.normal((3, 5, 40))

    def loss(model, x):
        return (model(x) * cotangent).sum()

    with backend.cpu_kernels(False):
        output, grads = ours(x), nn.value_and_grad(ours, loss)(ours, x)[1]
    np.testing.assert_array_equal(np.array(output), np.array(reference(x)))
    ref_grads = nn.value_and_grad(reference, loss)(reference, x)[1]
    for name in grads:
        np.testing.assert_array_equal(np.array(grads[name]), np.array(ref_grads[name]))
    embedding = Embedding(40, 24)  # a tied output layer
    with backend.cpu_kernels(False):
        np.testing.assert_array_equal(np.array(embedding.as_linear(x)), np.array(x @ embedding.weight.T))
