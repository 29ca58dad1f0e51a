"""mlx_llm.cpu.backend: MLX_LLM_CPU_KERNELS turns every CPU-only branch off, so that the CPU runs the code
Metal and CUDA run; a whole model then calls mx.fast.rope and MLX's own activations."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm import backend, fast_math


@pytest.mark.parametrize("value, expected", [
    (None, True), ("1", True), ("", True), ("0", False), ("off", False), (" False ", False), ("no", False),
])
def test_the_environment_variable_is_read_at_import(value, expected):
    environment = {key: v for key, v in os.environ.items() if key != backend.ENVIRONMENT_VARIABLE}
    if value is not None:
        environment[backend.ENVIRONMENT_VARIABLE] = value
    code = "from mlx_llm import backend; print(backend.cpu_kernels_switch(), backend.cpu_kernels_enabled())"
    output = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                            check=True).stdout.split()
    assert output == [str(expected), str(expected)]  # the suite runs on the CPU, so both agree


def test_set_cpu_kernels_and_the_context_manager_restore_the_setting(monkeypatch):
    initial = backend.cpu_kernels_switch()
    with backend.cpu_kernels(not initial):
        assert backend.cpu_kernels_switch() is (not initial)
        with backend.cpu_kernels(True):
            assert backend.cpu_kernels_enabled()
        assert backend.cpu_kernels_switch() is (not initial)
    assert backend.cpu_kernels_switch() is initial
    try:
        backend.set_cpu_kernels(False)
        assert not backend.cpu_kernels_enabled()
        monkeypatch.setenv(backend.ENVIRONMENT_VARIABLE, "1")
        backend.set_cpu_kernels(None)  # the environment again
        assert backend.cpu_kernels_enabled()
    finally:
        monkeypatch.undo()
        backend.set_cpu_kernels(None)
    assert backend.cpu_kernels_switch() is initial


def test_the_gpu_takes_no_cpu_branch_whatever_the_switch(monkeypatch):
    monkeypatch.setattr(backend.mx, "default_device", lambda: mx.Device(mx.gpu))
    with backend.cpu_kernels(True):
        assert not backend.on_cpu() and not backend.cpu_kernels_enabled()


def _tiny_llama():
    from mlx_llm.models.llama import Model, ModelArgs

    args = ModelArgs(model_type="llama", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=8, intermediate_size=256, max_positions=64)
    return Model(args)


@pytest.mark.parametrize("enabled", [False, True])
def test_a_model_takes_the_plain_branch_with_the_switch_off(monkeypatch, enabled):
    """Counted calls: with the switch off a Llama forward pass rotates with mx.fast.rope and never runs
    the CPU approximations (its SwiGLU has 8 x 256 activations, over NATIVE_BELOW); on, the reverse."""
    calls = {"rope": 0, "approximation": 0}
    rope = mx.fast.rope

    def counted_rope(*args, **kwargs):
        calls["rope"] += 1
        return rope(*args, **kwargs)

    monkeypatch.setattr(mx.fast, "rope", counted_rope)
    for name, function in list(fast_math._CPU.items()):
        def counted(x, function=function):
            calls["approximation"] += 1
            return function(x)
        monkeypatch.setitem(fast_math._CPU, name, counted)
    model = _tiny_llama()
    tokens = mx.array([[1, 5, 9, 3, 7, 2, 4, 6]])
    assert 8 * 256 >= fast_math.NATIVE_BELOW
    with backend.cpu_kernels(enabled):
        logits = model(tokens)
    mx.eval(logits)
    assert logits.shape == (1, 8, 32) and np.isfinite(np.array(logits)).all()
    if enabled:
        assert calls == {"rope": 0, "approximation": 2}  # one SwiGLU per layer
    else:
        assert calls == {"rope": 4, "approximation": 0}  # queries and keys in each of 2 layers
