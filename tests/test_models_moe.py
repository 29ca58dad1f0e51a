"""Mixtral and Qwen3-MoE (sparse mixture of experts) against `transformers` and mlx-lm,
and the switch layers of `mlx_llm.blocks.moe` against a NumPy loop over experts.

Tiny random checkpoints (4 experts, top-2) through the real loader: hidden states
and logits on a padded batch within 1e-4 with every expert reached, 20 greedy
tokens equal, the cache equal to no cache; quantized experts (`mx.gather_qmm`)
equal a float model of the dequantized weights; folders written by `convert`
load in mlx-lm and folders written by ``mlx_lm.convert`` load here, float and
quantized, with the same logits."""

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from mlx.utils import tree_flatten

from mlx_llm.generation.generate import generate_step
from mlx_llm.model_files.loading import convert, describe, load_model, quantization_predicate
from mlx_llm.blocks.moe import QuantizedSwitchLinear, SparseMoeBlock, SwitchGLU, SwitchLinear, top_k_routing
from mlx_llm.generation.sampling import SamplingConfig

from test_models_decoder import ATTENTION_MASK, INPUT_IDS, assert_matches
from decoder_parity import assert_chunked_cache_matches, assert_greedy_matches
from decoder_parity import with_tokenizer

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 99, 3, 50]
NUM_EXPERTS, TOP_K = 4, 2
# Widths divisible by 64: mlx-lm's default group size quantizes every layer (routers included).
SIZES = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             num_experts_per_tok=TOP_K)

FAMILIES = {
    # Every layer sparse; renormalized top-k weights; untied.
    "mixtral": lambda **extra: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **SIZES, num_hidden_layers=2, intermediate_size=128, num_local_experts=NUM_EXPERTS,
        tie_word_embeddings=False, **extra)),
    # Layer 0 dense (mlp_only_layers), softmax weights not renormalized, head_dim 32 != 64 // 4.
    "qwen3_moe": lambda **extra: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **SIZES, num_hidden_layers=3, intermediate_size=128, moe_intermediate_size=64, num_experts=NUM_EXPERTS,
        head_dim=32, mlp_only_layers=[0], norm_topk_prob=False, tie_word_embeddings=False, **extra)),
    # decoder_sparse_step 2 (layers 1 and 3 sparse), renormalized weights, tied embeddings.
    "qwen3_moe-step": lambda **extra: transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        **SIZES, num_hidden_layers=4, intermediate_size=96, moe_intermediate_size=64, num_experts=NUM_EXPERTS,
        head_dim=16, decoder_sparse_step=2, norm_topk_prob=True, tie_word_embeddings=True, **extra)),
}
# The layers with experts, as transformers builds them.
SPARSE_LAYERS = {"mixtral": [0, 1], "qwen3_moe": [1, 2], "qwen3_moe-step": [1, 3]}


def build(name: str, path, **extra):
    """Save a tiny random checkpoint (norms not all ones; routers spread wide, so that a
    few tokens reach every expert) and return the torch model."""
    torch.manual_seed(4)  # with it, the 10 real tokens of INPUT_IDS reach every expert of every family (asserted)
    reference = FAMILIES[name](**extra).eval()
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if "norm" in parameter_name:
                parameter.normal_(1.0, 0.5)
            elif parameter_name.endswith("gate.weight"):
                parameter.normal_(0.0, 1.0)
    reference.save_pretrained(path, safe_serialization=True)
    return reference


def experts_reached(reference, input_ids, attention_mask) -> dict[int, set[int]]:
    """Per sparse layer, the experts transformers routes the real tokens to."""
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                        output_router_logits=True)
    real = torch.tensor(attention_mask).flatten().bool()
    logits = [layer_logits for layer_logits in out.router_logits if layer_logits is not None]
    return {index: set(torch.topk(layer_logits[real], TOP_K, dim=-1).indices.flatten().tolist())
            for index, layer_logits in enumerate(logits)}


# --- The blocks against NumPy -----------------------------------------------------------------


def numpy_moe(block: SparseMoeBlock, x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """``sum_{e in top-k} w_e * down_e(silu(gate_e(x)) * up_e(x))``, one token and one expert at a time."""
    logits = x @ np.array(block.gate.weight, dtype=np.float64).T
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    output = np.zeros_like(x)
    for row in np.ndindex(*x.shape[:-1]):
        top = np.argsort(-probabilities[row])[:block.top_k]
        scores = probabilities[row][top]
        if block.normalize_top_k:
            scores = scores / scores.sum()
        for expert, score in zip(top, scores):
            gate, up = weights["gate_proj"][expert] @ x[row], weights["up_proj"][expert] @ x[row]
            output[row] += score * (weights["down_proj"][expert] @ (gate / (1 + np.exp(-gate)) * up))
    return output


def float_weights(switch: SwitchGLU) -> dict[str, np.ndarray]:
    layers = {name: getattr(switch, name) for name in ("gate_proj", "up_proj", "down_proj")}
    return {name: np.array(layer.dequantized_weight() if isinstance(layer, QuantizedSwitchLinear) else layer.weight,
                           dtype=np.float64) for name, layer in layers.items()}


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("length", [3, 40])  # 2 x 3 x 2 pairs run unsorted; 2 x 40 x 2 >= 64 are sorted by expert
def test_sparse_moe_block_equals_numpy(normalize, length):
    mx.random.seed(0)
    block = SparseMoeBlock(64, 32, 5, 2, normalize_top_k=normalize)
    x = mx.random.normal((2, length, 64))
    expected = numpy_moe(block, np.array(x, dtype=np.float64), float_weights(block.switch_mlp))
    np.testing.assert_allclose(np.array(block(x)), expected, atol=1e-5)
    # Quantized (gather_qmm): the same formula over the dequantized weights.
    nn.quantize(block, group_size=32, bits=4)
    assert isinstance(block.switch_mlp.down_proj, QuantizedSwitchLinear) and block.switch_mlp.down_proj.bits == 4
    block.gate = nn.Linear(64, 5, bias=False)  # a float router: the quantized experts alone are under test
    block.gate.weight = mx.random.normal((5, 64))
    expected = numpy_moe(block, np.array(x, dtype=np.float64), float_weights(block.switch_mlp))
    np.testing.assert_allclose(np.array(block(x)), expected, atol=1e-4)


def test_switch_linear_gathers_experts_with_biases():
    mx.random.seed(1)
    layer = SwitchLinear(32, 6, 3, bias=True)
    layer.bias = mx.random.normal((3, 6))
    x = mx.random.normal((5, 1, 1, 32))
    indices = mx.array([[0, 2], [1, 1], [2, 0], [0, 1], [2, 2]])
    rows = np.array(x)[:, 0, 0]
    quantized = layer.to_quantized(group_size=32, bits=8)
    for switch, weight in ((layer, layer.weight), (quantized, quantized.dequantized_weight())):
        output = np.array(switch(x, indices))  # (5, 2, 1, 6)
        weight, bias = np.array(weight), np.array(layer.bias)
        expected = [[rows[t] @ weight[e].T + bias[e] for e in row] for t, row in enumerate(indices.tolist())]
        np.testing.assert_allclose(output[:, :, 0], np.stack(expected), atol=1e-5)
    assert quantized.num_experts == 3 and not quantized.trainable_parameters()


def test_relayout_places_experts_input_major():
    """On the reference BLAS, `relayout` stores each expert's matrix (in, out) (gather_mm
    reads it 2-4x faster so); the block's output is unchanged."""
    from mlx_llm import backend, layers

    mx.random.seed(3)
    block = SparseMoeBlock(64, 32, 4, 2, normalize_top_k=True)
    x = mx.random.normal((1, 40, 64))
    expected = np.array(block(x))
    with backend.cpu_kernels(True):
        layers.set_input_major(True)
        try:
            assert layers.relayout(block) == 4  # the router and the three stacked projections
        finally:
            layers.set_input_major(None)
    down = block.switch_mlp.down_proj.weight  # (E, out, in) as an array, (E, in, out) in memory
    assert down.shape == (4, 64, 32) and memoryview(down).strides == (4 * 64 * 32, 4, 4 * 64)  # float32 strides
    np.testing.assert_allclose(np.array(block(x)), expected, atol=1e-6)


@pytest.mark.parametrize("length", [3, 40])
def test_expert_gradients_equal_a_loop_over_experts(length):
    """Gradients through gather_mm (unsorted and sorted) equal those of a plain loop over tokens and experts."""
    mx.random.seed(4)
    block = SparseMoeBlock(32, 16, 4, 2, normalize_top_k=False)
    x = mx.random.normal((1, length, 32))
    indices, weights = top_k_routing(block.gate(x), 2, False)

    def gathered(parameters):
        block.switch_mlp.update(parameters)
        return (block.switch_mlp(x, indices) * weights[..., None]).sum()

    def looped(parameters):
        total = mx.array(0.0)
        for t in range(length):
            for j in range(2):
                expert, row = int(indices[0, t, j]), x[0, t]
                gate, up = (parameters[name]["weight"][expert] @ row for name in ("gate_proj", "up_proj"))
                total = total + weights[0, t, j] * (parameters["down_proj"]["weight"][expert] @ (nn.silu(gate) * up)).sum()
        return total

    parameters = block.switch_mlp.parameters()
    expected = dict(tree_flatten(mx.grad(looped)(parameters)))
    for name, grad in tree_flatten(mx.grad(gathered)(parameters)):
        np.testing.assert_allclose(np.array(grad), np.array(expected[name]), atol=1e-5)


def test_top_k_routing_equals_numpy():
    logits = mx.array([[2.0, -1.0, 0.5, 1.5], [0.0, 3.0, -2.0, 0.1]])
    for normalize in (False, True):
        indices, weights = top_k_routing(logits, 2, normalize)
        order = np.argsort(np.array(indices), axis=-1)
        indices, weights = np.take_along_axis(np.array(indices), order, -1), np.take_along_axis(np.array(weights), order, -1)
        probabilities = np.exp(np.array(logits)) / np.exp(np.array(logits)).sum(-1, keepdims=True)
        assert indices.tolist() == [[0, 3], [1, 3]]
        expected = np.take_along_axis(probabilities, indices, -1)
        if normalize:  # == a softmax over the top-k logits (Mixtral's form)
            expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="experts per token must be between 1 and the 4 experts, got 5"):
        SparseMoeBlock(8, 8, 4, 5, normalize_top_k=True)


def test_layer_takes_a_feed_forward_module():
    from mlx_llm.blocks.transformer import TransformerEncoderLayer

    mx.random.seed(2)
    block = SparseMoeBlock(16, 8, 3, 2, normalize_top_k=True)
    layer = TransformerEncoderLayer(16, 2, 999, norm="rmsnorm", norm_first=True, bias=False, feed_forward=block)
    assert layer.feed_forward is block
    x = mx.random.normal((1, 4, 16))
    attended = x + layer.self_attn(layer.self_attn_norm(x), mask="causal")
    np.testing.assert_allclose(np.array(layer(x, mask="causal")),
                               np.array(attended + block(layer.feed_forward_norm(attended))), atol=1e-6)


# --- The families against transformers ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    sparse = [index for index, layer in enumerate(model.layers) if isinstance(layer.feed_forward, SparseMoeBlock)]
    assert sparse == SPARSE_LAYERS[name]
    # Every expert of every sparse layer takes part in the compared batch.
    reached = experts_reached(reference, INPUT_IDS, ATTENTION_MASK)
    assert len(reached) == len(sparse) and all(experts == set(range(NUM_EXPERTS)) for experts in reached.values())
    assert_matches(model, reference)  # hidden states and logits within 1e-4, padded row == alone


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_tokens_and_cache_match(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    expected = assert_greedy_matches(model, reference, PROMPT, n=20)
    # 32 tokens x top-2 = 64 (token, expert) pairs: one pass runs the sorted gather ...
    # ... equal to transformers' (1e-4), and the cache (prompt, then one token at a time, unsorted)
    # gives the same logits (1e-5).
    sequence = PROMPT + expected
    full = assert_chunked_cache_matches(model, sequence, [5] + [1] * (len(sequence) - 5), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(full, reference(torch.tensor([sequence])).logits.numpy(), atol=1e-4)


def dequantized_copy(quantized: nn.Module, float_model: nn.Module) -> nn.Module:
    """``float_model`` with each weight replaced by the dequantized one of ``quantized``."""
    weights = {}
    for path, module in quantized.named_modules():
        if isinstance(module, QuantizedSwitchLinear):
            weights[f"{path}.weight"] = module.dequantized_weight()
        elif isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            weights[f"{path}.weight"] = mx.dequantize(module.weight, module.scales, module.biases,
                                                      module.group_size, module.bits)
    float_model.load_weights(list(weights.items()), strict=False)
    return float_model


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_quantized_experts_equal_their_dequantized_weights(tmp_path, name):
    build(name, tmp_path)
    model, _ = load_model(tmp_path)
    nn.quantize(model, group_size=32, bits=4, class_predicate=quantization_predicate(32))
    block = model.layers[SPARSE_LAYERS[name][0]].feed_forward
    assert isinstance(block.switch_mlp.gate_proj, QuantizedSwitchLinear) and block.switch_mlp.gate_proj.bits == 4
    # mlx-lm's recipes: Qwen3-MoE's routers at 8 bits (group 64), Mixtral's at the model's bits.
    assert (block.gate.bits, block.gate.group_size) == ((8, 64) if name == "qwen3_moe" else (4, 32))
    reference = dequantized_copy(model, load_model(tmp_path)[0])
    ids = mx.array(INPUT_IDS)
    np.testing.assert_allclose(np.array(model(ids)), np.array(reference(ids)), atol=1e-4)


# --- Configs, layouts, info ------------------------------------------------------------------------


def test_config_spellings_and_errors(tmp_path):
    from mlx_llm.models import mixtral, qwen3_moe

    build("qwen3_moe", tmp_path / "qwen")
    config = json.loads((tmp_path / "qwen" / "config.json").read_text())
    assert config["num_local_experts"] == NUM_EXPERTS and "num_experts" not in config  # transformers 5's spelling
    # transformers 4.x: num_experts and rope_theta at the top level.
    old = {key: value for key, value in config.items() if key not in ("rope_parameters", "num_local_experts")}
    args = qwen3_moe.ModelArgs.from_config({**old, "num_experts": 6, "rope_theta": 12345.0})
    assert (args.num_experts, args.rope_theta, args.sparse_layers) == (6, 12345.0, (False, True, True))
    args = qwen3_moe.ModelArgs.from_config({**config, "mlp_only_layers": [], "decoder_sparse_step": 3})
    assert args.sparse_layers == (False, False, True)
    # Windows are read (parity: tests/test_moe_smollm3_sliding_window.py).
    args = qwen3_moe.ModelArgs.from_config({**config, "use_sliding_window": True, "sliding_window": 8})
    assert args.windows == [8] * 3
    with pytest.raises(ValueError, match="num_experts_per_tok must be between 1 and num_experts \\(4\\), got 5"):
        qwen3_moe.ModelArgs.from_config({**config, "num_experts_per_tok": 5})
    with pytest.raises(ValueError, match="decoder_sparse_step must be a positive integer, got 0"):
        qwen3_moe.ModelArgs.from_config({**config, "decoder_sparse_step": 0})
    build("mixtral", tmp_path / "mixtral")
    config = json.loads((tmp_path / "mixtral" / "config.json").read_text())
    old = {key: value for key, value in config.items() if key != "rope_parameters"}
    assert mixtral.ModelArgs.from_config(old).rope_theta == 1e6  # Mixtral's default
    assert mixtral.ModelArgs.from_config({**old, "rope_theta": 5e5}).rope_theta == 5e5
    assert mixtral.ModelArgs.from_config({**config, "sliding_window": 8}).windows == [8] * 2
    with pytest.raises(ValueError, match="lacks .*hidden_size"):
        mixtral.ModelArgs.from_config({key: value for key, value in config.items() if key != "hidden_size"})


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_fused_and_missing_experts(tmp_path, name):
    """transformers 5's fused expert tensors load as the per-expert ones; a missing expert is named."""
    reference = build(name, tmp_path / "hf")
    tensors = mx.load(str(tmp_path / "hf" / "model.safetensors"))
    names = {"mixtral": ("w1", "w3", "w2"), "qwen3_moe": ("gate_proj", "up_proj", "down_proj")}[name]
    fused = {}
    for key, value in tensors.items():
        if ".experts." not in key:
            fused[key.replace("block_sparse_moe", "mlp")] = value
    for layer in SPARSE_LAYERS[name]:
        block = f"model.layers.{layer}.{'block_sparse_moe' if name == 'mixtral' else 'mlp'}.experts"
        stack = {n: mx.stack([tensors[f"{block}.{e}.{n}.weight"] for e in range(NUM_EXPERTS)]) for n in names}
        target = f"model.layers.{layer}.mlp.experts"
        fused[f"{target}.gate_up_proj"] = mx.concatenate([stack[names[0]], stack[names[1]]], axis=1)
        fused[f"{target}.down_proj"] = stack[names[2]]
    shutil.copytree(tmp_path / "hf", tmp_path / "fused")
    mx.save_safetensors(str(tmp_path / "fused" / "model.safetensors"), fused, metadata={"format": "pt"})
    model, _ = load_model(tmp_path / "fused")
    assert_matches(model, reference)
    missing = {key: value for key, value in tensors.items() if ".experts.3." not in key}
    mx.save_safetensors(str(tmp_path / "hf" / "model.safetensors"), missing, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks experts \[3\] of 4"):
        load_model(tmp_path / "hf")


@pytest.mark.parametrize("name, feature", [
    ("mixtral", "4 experts, top-2 routing, normalised weights"),
    ("qwen3_moe", "4 experts (width 64), top-2 routing, softmax weights (not renormalised)"),
])
def test_info_names_family_and_features(tmp_path, name, feature):
    from click.testing import CliRunner
    from mlx_llm_cli.main import main

    build(name, tmp_path)
    info = describe(tmp_path)
    assert info.family == name and feature in info.features
    printed = CliRunner().invoke(main, ["info", str(tmp_path)]).output
    assert f"family          {name}" in printed and feature in printed
    if name == "qwen3_moe":
        assert "dense feed-forward in layers [0]" in info.features


# --- mlx-lm's layout, both ways --------------------------------------------------------------------

FLOAT_TOLERANCE = 1e-5


def checkpoint_for_mlx_lm(name, path, tokenizer):
    """A transformers checkpoint with a tokenizer, and the config keys mlx-lm reads that
    transformers 5 spells otherwise (``rope_theta``; Qwen3-MoE's ``num_experts``)."""
    build(name, path)
    config = json.loads((path / "config.json").read_text())
    config.setdefault("rope_theta", config["rope_parameters"]["rope_theta"])
    config.setdefault("num_experts", config.get("num_local_experts"))
    (path / "config.json").write_text(json.dumps(config))
    return with_tokenizer(path, tokenizer)


def assert_same_as_mlx_lm(folder):
    """Our model and mlx-lm's, both loaded from ``folder``: the same logits and 20 greedy tokens."""
    mlx_lm = pytest.importorskip("mlx_lm")
    from mlx_lm.generate import generate_step as their_step

    mine, _ = load_model(folder)
    theirs, _ = mlx_lm.load(str(folder))
    ids = mx.array([PROMPT])
    assert np.abs(np.array(mine(ids)) - np.array(theirs(ids))).max() <= FLOAT_TOLERANCE
    my_tokens = [int(t) for t, _ in generate_step(mine, ids[0], SamplingConfig(temperature=0.0), max_tokens=20)]
    their_tokens = [int(t) for (t, _), _ in zip(their_step(ids[0], theirs, max_tokens=20), range(20))]
    assert len(my_tokens) == 20 and my_tokens == their_tokens
    return mine


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("bits", [None, 4])
def test_mlx_lm_layout_both_ways(tmp_path, tokenizer, name, bits):
    mlx_lm = pytest.importorskip("mlx_lm")
    hf = checkpoint_for_mlx_lm(name, tmp_path / "hf", tokenizer)
    float_model, _ = load_model(hf)
    ids = mx.array([PROMPT])
    float_logits = np.array(float_model(ids))
    # Ours -> mlx-lm: stacked switch_mlp tensors under mlx-lm's names.
    convert(hf, tmp_path / "ours", quantize=bits is not None, bits=bits or 4, group_size=32)
    names = list(mx.load(str(tmp_path / "ours" / "model.safetensors")))
    block = "block_sparse_moe" if name == "mixtral" else "mlp"
    assert f"model.layers.1.{block}.switch_mlp.down_proj.weight" in names
    assert not any("feed_forward" in n or ".experts." in n for n in names)
    mine = assert_same_as_mlx_lm(tmp_path / "ours")
    expected = load_model(hf)[0]
    if bits is not None:  # exactly the float model quantized in memory
        nn.quantize(expected, group_size=32, bits=bits, class_predicate=quantization_predicate(32))
    np.testing.assert_allclose(np.array(mine(ids)), np.array(expected(ids)), atol=FLOAT_TOLERANCE, rtol=0)
    if bits is None:
        np.testing.assert_allclose(np.array(mine(ids)), float_logits, atol=1e-6, rtol=0)
    # mlx-lm -> ours, with mlx-lm's own recipe (Qwen3-MoE: routers at 8 bits).
    quantize = {} if bits is None else dict(quantize=True, q_bits=bits, q_group_size=64)
    mlx_lm.convert(str(hf), str(tmp_path / "theirs"), **quantize)
    mine = assert_same_as_mlx_lm(tmp_path / "theirs")
    # `describe` counts packed experts (and 8-bit routers) as the float parameters they stand for.
    count = sum(value.size for _, value in tree_flatten(float_model.parameters()))
    assert describe(tmp_path / "ours").num_parameters == describe(tmp_path / "theirs").num_parameters == count
    block = mine.layers[1].feed_forward
    assert getattr(block.switch_mlp.up_proj, "bits", None) == bits
    if bits is not None:  # mlx-lm quantizes routers too: Qwen3-MoE's at 8 bits, Mixtral's as the rest
        assert block.gate.bits == (8 if name == "qwen3_moe" else bits)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_export_to_transformers(tmp_path, tokenizer, name):
    """A quantized folder exports as a float transformers checkpoint (one tensor per
    expert) that transformers loads with the logits of the dequantized model."""
    from mlx_llm.model_files.export import export_to_hf

    hf = checkpoint_for_mlx_lm(name, tmp_path / "hf", tokenizer)
    convert(hf, tmp_path / "q8", quantize=True, bits=8, group_size=32)
    model, _ = load_model(tmp_path / "q8")
    export_to_hf(tmp_path / "q8", tmp_path / "exported")
    names = list(mx.load(str(tmp_path / "exported" / "model.safetensors")))
    expert = {"mixtral": "block_sparse_moe.experts.3.w2", "qwen3_moe": "mlp.experts.3.down_proj"}[name]
    assert f"model.layers.1.{expert}.weight" in names
    assert not any(n.endswith(".scales") for n in names)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        theirs = reference(torch.tensor([PROMPT])).logits.numpy()
    np.testing.assert_allclose(theirs, np.array(model(mx.array([PROMPT]))), atol=1e-4)
