"""Qwen3, SmolLM3 and OLMo 2 against `transformers`: tiny random checkpoints through
the real loader give the same hidden states and logits on a padded batch, the same
20 greedy tokens, the same logits with and without the cache; folders written by
`convert` (float and quantized) load here and in mlx-lm."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.model_files.loading import convert, describe, load_model, quantization_predicate

from test_models_decoder import assert_matches
from decoder_parity import assert_chunked_cache_matches, assert_greedy_matches
from decoder_parity import with_tokenizer

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 99, 3, 50]
SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1, pad_token_id=0,
             bos_token_id=1, eos_token_id=2)

FAMILIES = {
    # head_dim 32 != 64 // 4: Qwen3's explicit head_dim; untied output layer.
    "qwen3": lambda **extra: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **SIZES, num_hidden_layers=3, head_dim=32, tie_word_embeddings=False, **extra)),
    "qwen3-tied-biases": lambda **extra: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **SIZES, num_hidden_layers=2, head_dim=16, tie_word_embeddings=True, attention_bias=True, **extra)),
    # no_rope_layer_interval 4 (the default): layer 3 has no rotary positions.
    "smollm3": lambda **extra: transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
        **SIZES, num_hidden_layers=4, tie_word_embeddings=True, **extra)),
    # An explicit per-layer list (1 = rotary positions), biases, untied.
    "smollm3-list": lambda **extra: transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
        **SIZES, num_hidden_layers=3, no_rope_layers=[0, 1, 0], attention_bias=True, tie_word_embeddings=False,
        **extra)),
    # Norms after each sublayer, q/k norms over the full width; GQA makes the k width differ.
    "olmo2": lambda **extra: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        **SIZES, num_hidden_layers=3, tie_word_embeddings=False, **extra)),
    "olmo2-tied-biases": lambda **extra: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        **SIZES, num_hidden_layers=2, tie_word_embeddings=True, attention_bias=True, **extra)),
}


# Family module, and one feature `mlx-llm info` must name.
FEATURES = {
    "qwen3": ("qwen3", "per-head q/k RMSNorm (head_dim 32)"),
    "smollm3": ("smollm3", "no rotary positions in layers [3]"),
    "olmo2": ("olmo2", "norms after attention and feed-forward"),
}


def build(name: str, path, **extra):
    """Save a tiny random checkpoint (random biases, so they count) and return the torch model."""
    torch.manual_seed(0)
    reference = FAMILIES[name](**extra).eval()
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if parameter_name.endswith("bias") or "norm" in parameter_name:
                parameter.normal_(1.0 if "norm" in parameter_name else 0.0, 0.5)  # norms: not all ones
    reference.save_pretrained(path, safe_serialization=True)
    return reference


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    assert_matches(model, reference)  # hidden states and logits within 1e-4, padded row == alone


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_tokens_and_cache_match(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    expected = assert_greedy_matches(model, reference, PROMPT, n=20)
    # The cache: prompt, then one token at a time, equals one pass over everything.
    sequence = PROMPT + expected
    assert_chunked_cache_matches(model, sequence, [5] + [1] * (len(sequence) - 5), atol=1e-5)


def test_config_spellings_and_errors(tmp_path):
    build("qwen3", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    from mlx_llm.models import get_family

    family = get_family(config["model_type"])
    # transformers 4.x: rope_theta at the top level.
    old = {key: value for key, value in config.items() if key != "rope_parameters"}
    old["rope_theta"] = 12345.0
    assert family.ModelArgs.from_config(old).rope_theta == 12345.0
    new = {**config, "rope_parameters": {"rope_type": "default", "rope_theta": 54321.0}}
    assert family.ModelArgs.from_config(new).rope_theta == 54321.0
    with pytest.raises(ValueError, match="lacks hidden_size, num_hidden_layers"):
        family.ModelArgs.from_config({k: v for k, v in config.items() if k not in ("hidden_size", "num_hidden_layers")})


def test_qwen3_sliding_window_is_read(tmp_path):
    # Parity with transformers: tests/test_llama_sliding_window.py.
    build("qwen3", tmp_path, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    model, _ = load_model(tmp_path)
    assert model.args.windows == [None, 4, 4]


def test_smollm3_rope_layers_in_both_spellings(tmp_path):
    from mlx_llm.models import smollm3

    build("smollm3-list", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert smollm3.ModelArgs.from_config(config).rope_layers == (False, True, False)
    # Only the interval given: every 2nd layer is a NoPE layer.
    interval = {key: value for key, value in config.items() if key != "no_rope_layers"}
    args = smollm3.ModelArgs.from_config({**interval, "no_rope_layer_interval": 2})
    assert args.rope_layers == (True, False, True)
    model = smollm3.Model(args)
    assert [layer.self_attn.rope is None for layer in model.layers] == [False, True, False]
    with pytest.raises(ValueError, match="no_rope_layers has 2 entries for 3 layers"):
        smollm3.ModelArgs.from_config({**config, "no_rope_layers": [1, 0]})
    # NoPE layers slide (parity: tests/test_moe_smollm3_sliding_window.py).
    args = smollm3.ModelArgs.from_config({**interval, "no_rope_layers": [0, 1, 0], "use_sliding_window": True,
                                          "sliding_window": 4, "layer_types": None})
    assert args.windows == [4, None, 4]
    # layer_types, when written, decides (as in transformers): all full attention here.
    args = smollm3.ModelArgs.from_config({**config, "use_sliding_window": True, "sliding_window": 4})
    assert args.windows == [None] * 3


@pytest.mark.parametrize("name", ["qwen3", "smollm3", "olmo2"])
def test_convert_float_and_quantized(tmp_path, name, tokenizer):
    """`convert` writes Hugging Face names that load back here (float: equal logits;
    8- and 4-bit: within quantization error) and, where mlx-lm has the family, in mlx-lm."""
    build(name, tmp_path / "hf")
    with_tokenizer(tmp_path / "hf", tokenizer)
    float_model, config = load_model(tmp_path / "hf")
    ids = mx.array([PROMPT])
    float_logits = np.array(float_model(ids))
    spread = np.ptp(float_logits)
    info = describe(tmp_path / "hf")
    assert (info.model_type, info.family) == (config["model_type"], FEATURES[name][0])
    assert FEATURES[name][1] in info.features
    from click.testing import CliRunner
    from mlx_llm_cli.main import main

    printed = CliRunner().invoke(main, ["info", str(tmp_path / "hf")]).output
    assert f"family          {FEATURES[name][0]}" in printed and FEATURES[name][1] in printed
    for bits in (None, 8, 4):
        out = tmp_path / f"out-{bits}"
        convert(tmp_path / "hf", out, quantize=bits is not None, bits=bits or 4, group_size=32)
        names = list(mx.load(str(out / "model.safetensors")))
        assert not any("feed_forward" in n or "self_attn_norm" in n for n in names)
        model, _ = load_model(out)
        logits = np.array(model(ids))
        error = np.abs(logits - float_logits).max()
        print(f"{name} {bits}-bit: max |logit difference| {error:.2e} (logit range {spread:.2f})")
        # The folder holds exactly the float model quantized in memory ...
        reference, _ = load_model(tmp_path / "hf")
        if bits is not None:
            nn.quantize(reference, group_size=32, bits=bits, class_predicate=quantization_predicate(32))
        np.testing.assert_allclose(logits, np.array(reference(ids)), atol=1e-5, rtol=0)
        # ... and 8 bits stay close to float (4 bits on random tiny weights drift ~20% of the range).
        assert error <= {None: 1e-6, 8: 0.02 * spread, 4: 0.5 * spread}[bits]
        mlx_lm = pytest.importorskip("mlx_lm")
        theirs, _ = mlx_lm.load(str(out))
        assert np.abs(np.array(theirs(ids)) - np.array(model(ids))).max() <= 1e-5
