"""LoRA / QLoRA: the adapter formula against NumPy, what trains and what stays
frozen, fusing, layer and module selection, saving and loading, and errors."""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_llm.blocks.layers import Linear
from mlx_llm.training.lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    fuse_lora,
    load_adapters,
    lora_parameters,
    save_adapters,
)
from mlx_llm.models import bert, llama, t5

ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INPUT_IDS = mx.array([[1, 5, 9, 13, 17, 21], [2, 4, 6, 8, 10, 12]])
TARGETS = mx.array([[5, 9, 13, 17, 21, 25], [4, 6, 8, 10, 12, 14]])


def make_llama(hidden_size: int = 32, seed: int = 0) -> llama.Model:
    mx.random.seed(seed)
    config = {
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 2 * hidden_size,
        "max_position_embeddings": 64,
    }
    model = llama.Model(llama.ModelArgs.from_config(config))
    mx.eval(model.parameters())
    return model


def make_quantized_llama(seed: int = 0) -> llama.Model:
    model = make_llama(hidden_size=64, seed=seed)  # every input width a multiple of the group size
    nn.quantize(model, group_size=32, bits=4)
    mx.eval(model.parameters())
    return model


def make_bert_classifier() -> bert.Model:
    args = bert.ModelArgs(
        model_type="bert", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
        max_positions=64, task="sequence_classification", num_labels=3,
    )
    model = bert.Model(args)
    model.eval()
    mx.eval(model.parameters())
    return model


def randomize_lora_b(model: nn.Module, scale: float = 0.1) -> None:
    """Nonzero B matrices, so the adapters change the outputs."""
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_b = scale * mx.random.normal(module.lora_b.shape)
    mx.eval(model.parameters())


def snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in tree_flatten(model.parameters())}


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {path: module for path, module in model.named_modules() if isinstance(module, LoRALinear)}


def train_step(model: nn.Module, optimizer: optim.Optimizer, loss_fn) -> None:
    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state, loss)


def language_model_loss(model: nn.Module) -> mx.array:
    return nn.losses.cross_entropy(model(INPUT_IDS), TARGETS).mean()


# --- the layer itself -------------------------------------------------------------------------


def test_lora_linear_matches_numpy_formula_and_initialization():
    base = nn.Linear(32, 48, bias=True)
    base.bias = mx.random.normal((48,))
    layer = LoRALinear.from_base(base, rank=4, alpha=8.0)
    assert layer.lora_a.shape == (32, 4) and layer.lora_b.shape == (4, 48)
    assert np.abs(np.array(layer.lora_a)).max() <= 1 / np.sqrt(32)
    assert np.array(layer.lora_a).std() > 0.05  # uniform(-1/sqrt(32), 1/sqrt(32)) has std 0.102
    np.testing.assert_array_equal(np.array(layer.lora_b), 0.0)
    assert sorted(name for name, _ in tree_flatten(layer.trainable_parameters())) == ["lora_a", "lora_b"]

    layer.lora_b = mx.random.normal((4, 48))
    x = mx.random.normal((2, 5, 32))
    weight, bias, a, b = (np.array(p, dtype=np.float64) for p in (base.weight, base.bias, layer.lora_a, layer.lora_b))
    x64 = np.array(x, dtype=np.float64)
    expected = x64 @ weight.T + bias + (8.0 / 4) * (x64 @ a @ b)
    np.testing.assert_allclose(np.array(layer(x)), expected, atol=1e-5, rtol=1e-5)


def test_dropout_applies_to_the_adapter_input_only():
    base = nn.Linear(32, 32)
    layer = LoRALinear.from_base(base, rank=4, alpha=8.0, dropout=0.5)
    x = mx.random.normal((4, 32))
    layer.train()
    # Zero B: dropout on the adapter input cannot show; on the output it would.
    np.testing.assert_array_equal(np.array(layer(x)), np.array(base(x)))
    layer.lora_b = mx.random.normal((4, 32))
    layer.eval()
    deterministic = np.array(layer(x))
    layer.train()
    assert not np.allclose(np.array(layer(x)), deterministic)


def test_adapter_runs_in_the_input_dtype():
    base = nn.Linear(32, 32)
    base.set_dtype(mx.float16)
    layer = LoRALinear.from_base(base, rank=4)
    layer.lora_b = mx.random.normal((4, 32))
    assert layer.lora_a.dtype == mx.float32  # adapters train in float32
    assert layer(mx.random.normal((2, 32)).astype(mx.float16)).dtype == mx.float16


# --- applying adapters --------------------------------------------------------------------------


def test_zero_adapters_leave_llama_logits_unchanged():
    model = make_llama()
    before = np.array(model(INPUT_IDS))
    assert apply_lora(model, LoRAConfig(target_modules=ALL_LINEARS)) == 2 * 7
    np.testing.assert_array_equal(np.array(model(INPUT_IDS)), before)


def test_zero_adapters_leave_bert_classifier_logits_unchanged():
    model = make_bert_classifier()
    before = np.array(model(INPUT_IDS))
    config = LoRAConfig(
        target_modules=("q_proj", "v_proj", "up_proj"), trainable_modules=("classifier", "model.pooler")
    )
    assert apply_lora(model, config) == 2 * 3
    np.testing.assert_array_equal(np.array(model(INPUT_IDS)), before)


def test_t5_adapts_encoder_then_decoder_layers():
    args = t5.ModelArgs(
        vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64,
        num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
    )
    model = t5.Model(args).eval()  # T5 has dropout (dropout_rate 0.1 by default): compare without it
    before = np.array(model(INPUT_IDS, INPUT_IDS))
    # The last layer is the last decoder layer: self- and cross-attention q_proj.
    assert apply_lora(model, LoRAConfig(target_modules=("q_proj",), num_layers=1)) == 2
    assert sorted(lora_modules(model)) == ["decoder.layers.1.cross_attn.q_proj", "decoder.layers.1.self_attn.q_proj"]
    np.testing.assert_array_equal(np.array(model(INPUT_IDS, INPUT_IDS)), before)


def test_num_layers_selects_the_last_layers():
    model = make_llama()
    assert apply_lora(model, LoRAConfig(num_layers=1)) == 2
    assert sorted(lora_modules(model)) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert isinstance(model.layers[0].self_attn.q_proj, nn.Linear)


def test_target_modules_match_path_suffixes_on_whole_components():
    model = make_llama()
    assert apply_lora(model, LoRAConfig(target_modules=("self_attn.o_proj", "feed_forward.up_proj", "gate_proj"))) == 6
    assert sorted(path.split(".", 3)[3] for path in lora_modules(model)) == sorted(
        ["feed_forward.gate_proj", "feed_forward.up_proj", "self_attn.o_proj"] * 2
    )
    with pytest.raises(ValueError, match=r"no module named 'proj'"):
        apply_lora(make_llama(), LoRAConfig(target_modules=("proj",)))  # not a substring match


def test_unknown_target_lists_the_linear_modules_of_the_layers():
    model = make_bert_classifier()
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        apply_lora(model, LoRAConfig(target_modules=("q_proj", "query"), num_layers=2))
    message = str(error.value)
    assert "no module named 'query' in the last 2 of the 2 layers" in message
    assert "self_attn.q_proj" in message and "feed_forward.down_proj" in message
    assert not lora_modules(model) and snapshot(model).keys() == before.keys()
    assert len(tree_flatten(model.trainable_parameters())) == len(before)  # nothing frozen either


def test_apply_lora_errors():
    with pytest.raises(ValueError, match=r"num_layers=3 exceeds the model's 2 layers"):
        apply_lora(make_llama(), LoRAConfig(num_layers=3))
    with pytest.raises(ValueError, match=r"trainable module 'head' does not exist; top-level modules: lm_head, model"):
        apply_lora(make_llama(), LoRAConfig(trainable_modules=("head",)))
    model = make_llama()
    apply_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match=r"'lm_head' holds quantized layers \(lm_head\)"):
        apply_lora(make_quantized_llama(), LoRAConfig(trainable_modules=("lm_head",)))
    with pytest.raises(ValueError, match="Linear has no `layers` list"):
        apply_lora(nn.Linear(4, 4), LoRAConfig())
    with pytest.raises(TypeError, match="LoRA wraps nn.Linear or nn.QuantizedLinear, got Embedding"):
        LoRALinear.from_base(nn.Embedding(4, 4))


# --- training -------------------------------------------------------------------------------------


def test_only_adapters_train():
    model = make_llama()
    apply_lora(model, LoRAConfig(target_modules=("q_proj", "v_proj", "down_proj")))
    trainable = lora_parameters(model)
    assert len(trainable) == 2 * 3 * 2
    assert all(name.endswith((".lora_a", ".lora_b")) for name in trainable)
    before = snapshot(model)
    optimizer = optim.Adam(learning_rate=1e-2)

    train_step(model, optimizer, language_model_loss)
    after_one = snapshot(model)
    for name, value in before.items():
        if name.endswith(".lora_b"):
            assert np.abs(after_one[name] - value).min() > 0, name  # every entry moved
        else:  # the base, and lora_a, whose gradient is zero while B is zero
            np.testing.assert_array_equal(after_one[name], value, err_msg=name)

    train_step(model, optimizer, language_model_loss)
    after_two = snapshot(model)
    for name, value in before.items():
        if name.endswith((".lora_a", ".lora_b")):
            assert not np.array_equal(after_two[name], value), name
        else:
            np.testing.assert_array_equal(after_two[name], value, err_msg=name)


def test_trainable_modules_train_in_full():
    model = make_bert_classifier()
    apply_lora(model, LoRAConfig(trainable_modules=("classifier",)))
    names = set(lora_parameters(model))
    assert {"classifier.weight", "classifier.bias"} <= names
    assert all(name.startswith("classifier.") or name.endswith((".lora_a", ".lora_b")) for name in names)
    before = snapshot(model)
    labels = mx.array([0, 2])
    def classification_loss(model):
        return nn.losses.cross_entropy(model(INPUT_IDS), labels).mean()

    train_step(model, optim.Adam(learning_rate=1e-2), classification_loss)
    after = snapshot(model)
    for name, value in before.items():
        changed = not np.array_equal(after[name], value)
        assert changed == (name.startswith("classifier.") or name.endswith(".lora_b")), name


# --- fusing ---------------------------------------------------------------------------------------


def test_fused_model_equals_base_plus_adapters():
    model = make_llama()
    reference_names = set(snapshot(model))
    apply_lora(model, LoRAConfig(target_modules=ALL_LINEARS))
    randomize_lora_b(model)
    adapted = np.array(model(INPUT_IDS))
    assert fuse_lora(model) == 2 * 7
    assert not lora_modules(model)
    assert isinstance(model.layers[1].feed_forward.down_proj, nn.Linear)
    assert set(snapshot(model)) == reference_names  # a plain checkpoint again
    np.testing.assert_allclose(np.array(model(INPUT_IDS)), adapted, atol=1e-5)


# --- QLoRA ----------------------------------------------------------------------------------------


def test_qlora_trains_only_adapters_over_a_quantized_base():
    model = make_quantized_llama()
    quantized_logits = np.array(model(INPUT_IDS))
    apply_lora(model, LoRAConfig(target_modules=ALL_LINEARS))
    np.testing.assert_array_equal(np.array(model(INPUT_IDS)), quantized_logits)
    assert all(name.endswith((".lora_a", ".lora_b")) for name in lora_parameters(model))
    before = snapshot(model)
    optimizer = optim.Adam(learning_rate=1e-2)
    for _ in range(2):
        train_step(model, optimizer, language_model_loss)
    after = snapshot(model)
    for name, value in before.items():
        if name.endswith((".lora_a", ".lora_b")):
            assert not np.array_equal(after[name], value), name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    base = model.layers[0].self_attn.q_proj.linear
    assert isinstance(base, nn.QuantizedLinear) and base.weight.dtype == mx.uint32


def test_fusing_a_quantized_layer_requantizes_within_one_step():
    base = nn.QuantizedLinear.from_linear(nn.Linear(64, 48, bias=True), group_size=32, bits=4)
    layer = LoRALinear.from_base(base, rank=4, alpha=8.0)
    layer.lora_b = 0.1 * mx.random.normal((4, 48))
    fused = layer.fuse()
    assert isinstance(fused, nn.QuantizedLinear) and (fused.group_size, fused.bits) == (32, 4)
    np.testing.assert_array_equal(np.array(fused.bias), np.array(base.bias))

    base_weight = mx.dequantize(base.weight, base.scales, base.biases, group_size=32, bits=4)
    exact = np.array(base_weight + layer.scale * (layer.lora_a @ layer.lora_b).T)  # (48, 64)
    requantized = np.array(mx.dequantize(fused.weight, fused.scales, fused.biases, group_size=32, bits=4))
    step = np.abs(np.repeat(np.array(fused.scales), 32, axis=1))  # each weight's quantization step
    # MLX anchors each group's grid at its larger-magnitude end (so zero stays exact);
    # rounding that anchor can shorten the covered range by up to half a step, and
    # rounding the weight adds another half: each weight is off by at most one step.
    assert np.all(np.abs(requantized - exact) <= step * (1 + 1e-4))
    assert np.abs(np.array(base_weight) - exact).max() > 3 * step.max()  # so the bound has teeth

    dequantized = layer.fuse(dequantize=True)
    assert type(dequantized) is Linear  # float again, mlx_llm.blocks.layers.Linear like every model layer
    np.testing.assert_allclose(np.array(dequantized.weight), exact, atol=1e-6)


def test_qlora_fused_models_match_the_adapted_model():
    model = make_quantized_llama()
    base_logits = np.array(model(INPUT_IDS))
    apply_lora(model, LoRAConfig(target_modules=ALL_LINEARS))
    randomize_lora_b(model)
    adapted = np.array(model(INPUT_IDS))

    requantized_model = make_quantized_llama()
    apply_lora(requantized_model, LoRAConfig(target_modules=ALL_LINEARS))
    requantized_model.update(model.parameters())
    assert fuse_lora(requantized_model) == 2 * 7
    assert isinstance(requantized_model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    requantized = np.array(requantized_model(INPUT_IDS))
    # Re-quantizing moves each weight by up to one 4-bit step (see the test above), an
    # error as large as the adapters' own effect on single logits. On average the
    # fused logits must sit much closer to the adapted ones than the base's do
    # (measured: 13-20% of the adapters' effect over five seeds; a fuse that drops the
    # update gives 100%).
    requantization_error = np.abs(requantized - adapted).mean()
    assert requantization_error < 0.4 * np.abs(base_logits - adapted).mean()

    assert fuse_lora(model, dequantize=True) == 2 * 7
    assert type(model.layers[0].self_attn.q_proj) is Linear
    np.testing.assert_allclose(np.array(model(INPUT_IDS)), adapted, atol=1e-4)


# --- saving and loading ---------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = make_llama(seed=1)
    config = LoRAConfig(
        rank=4, alpha=8.0, target_modules=("q_proj", "o_proj"), num_layers=1, trainable_modules=("lm_head",)
    )
    apply_lora(model, config)
    randomize_lora_b(model)
    model.lm_head.weight = model.lm_head.weight + 0.5  # a trained head
    adapted = np.array(model(INPUT_IDS))

    assert save_adapters(tmp_path / "adapter", model, config) == tmp_path / "adapter"
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    saved = mx.load(str(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME))
    assert sorted(saved) == [
        "lm_head.weight",
        "model.layers.1.self_attn.o_proj.lora_a",
        "model.layers.1.self_attn.o_proj.lora_b",
        "model.layers.1.self_attn.q_proj.lora_a",
        "model.layers.1.self_attn.q_proj.lora_b",
    ]
    saved_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert saved_config["format"] == "mlx_llm-lora" and saved_config["rank"] == 4

    fresh = make_llama(seed=1)  # the same base weights
    assert load_adapters(fresh, tmp_path / "adapter") == config
    np.testing.assert_array_equal(np.array(fresh(INPUT_IDS)), adapted)
    assert set(lora_parameters(fresh)) == set(saved)


def test_qlora_adapters_round_trip(tmp_path):
    model = make_quantized_llama()
    config = LoRAConfig(target_modules=ALL_LINEARS)
    apply_lora(model, config)
    randomize_lora_b(model)
    save_adapters(tmp_path, model, config)
    fresh = make_quantized_llama()
    load_adapters(fresh, tmp_path)
    np.testing.assert_array_equal(np.array(fresh(INPUT_IDS)), np.array(model(INPUT_IDS)))


def test_load_adapters_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"adapter folder {tmp_path / 'missing'} does not exist"):
        load_adapters(make_llama(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"adapter folder {tmp_path / 'empty'} has no adapter_config.json"):
        load_adapters(make_llama(), tmp_path / "empty")

    model = make_llama()
    config = LoRAConfig(rank=8)
    apply_lora(model, config)
    save_adapters(tmp_path, model, config)
    config_path = tmp_path / ADAPTER_CONFIG_NAME
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "rank": 4}))
    rank_mismatch = (
        r"'model.layers.0.self_attn.q_proj.lora_a' .* has shape \(32, 8\), "
        r"but the model's parameter has shape \(32, 4\); adapter_config.json \(rank 4\)"
    )
    with pytest.raises(ValueError, match=rank_mismatch):
        load_adapters(make_llama(), tmp_path)

    config_path.write_text(json.dumps({**config.to_dict(), "format": "mlx_llm-lora", "target_modules": ["q_proj"]}))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.v_proj.lora_a' .* matches no trainable"):
        load_adapters(make_llama(), tmp_path)

    config_path.write_text(json.dumps(config.to_dict()))
    with pytest.raises(ValueError, match="not an mlx_llm LoRA config"):
        load_adapters(make_llama(), tmp_path)


def test_save_adapters_errors(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_adapters(tmp_path, make_llama(), LoRAConfig())
    model = make_llama()
    apply_lora(model, LoRAConfig(rank=8))
    with pytest.raises(ValueError, match="has rank 8 and scale 2, but the config says rank 4"):
        save_adapters(tmp_path, model, LoRAConfig(rank=4))
    assert not any(tmp_path.iterdir())


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rank": 0}, r"rank must be an integer >= 1, got 0"),
        ({"rank": 2.5}, r"rank must be an integer >= 1, got 2.5"),
        ({"alpha": 0.0}, r"alpha must be > 0, got 0.0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
        ({"num_layers": 0}, r"num_layers must be an integer >= 1 or None \(all layers\), got 0"),
        ({"target_modules": ()}, r"target_modules is empty"),
        ({"target_modules": "q_proj"}, r"target_modules must be a list of module names, got the string 'q_proj'"),
    ],
)
def test_bad_config_values_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**options)


def test_config_dict_round_trip():
    config = LoRAConfig(
        rank=4, alpha=32.0, dropout=0.05, target_modules=["q_proj"], num_layers=2, trainable_modules=["classifier"]
    )
    assert config.target_modules == ("q_proj",)
    data = config.to_dict()
    assert data["target_modules"] == ["q_proj"] and json.loads(json.dumps(data)) == data
    assert LoRAConfig.from_dict(data) == config
    with pytest.raises(ValueError, match=r"unknown LoRA config keys \['lora_rank'\]"):
        LoRAConfig.from_dict({**data, "lora_rank": 4})
