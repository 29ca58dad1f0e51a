"""Gemma 2 and Gemma 3 (text) against `transformers`: tiny random checkpoints whose
sliding window (4) is shorter than the inputs (12 tokens and more), with both layer
kinds present, give the same hidden states and logits on padded batches, the same 20
greedy tokens, and the same logits with and without the (rotating) cache; folders
written by `convert` load here and in mlx-lm, and mlx-lm's conversions load here."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.blocks.cache import RotatingKVCache
from mlx_llm.generation.generate import batch_generate
from mlx_llm.model_files.loading import convert, describe, load_model, quantization_predicate
from mlx_llm.models import gemma2, gemma3, get_family

from decoder_parity import (assert_chunked_cache_matches, assert_greedy_matches, assert_left_padded_batch_matches,
                            assert_padded_batch_matches, with_tokenizer)

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 99, 3, 50]
# Right-padded: a 12-token row (3 windows) and a 5-token one.
INPUT_IDS = [PROMPT, [40, 3, 21, 7, 8] + [0] * 7]
ATTENTION_MASK = [[1] * 12, [1] * 5 + [0] * 7]
WINDOW = 4
SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, max_position_embeddings=128,
             initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")

FAMILIES = {
    # Layers 0 and 2 slide, 1 and 3 are global; small caps so that the tanh bends the scores.
    "gemma2": lambda **extra: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **{**SIZES, "num_hidden_layers": 4, "attn_logit_softcapping": 3.0, "final_logit_softcapping": 5.0,
           **extra})),
    # Pattern 3: layers 0, 1, 3 slide, 2 is global; linear rope scaling on the global layer,
    # another base on the sliding ones; untied output layer.
    "gemma3": lambda **extra: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **{**SIZES, "num_hidden_layers": 4, "sliding_window_pattern": 3, "rope_local_base_freq": 100.0,
           "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": False, **extra})),
}
# Family module, and features `mlx-llm info` must name.
FEATURES = {
    "gemma2": ("gemma2", ["attention logit soft-cap 3", "final logit soft-cap 5",
                          "sliding-window attention (window 4) in layers [0, 2], global in [1, 3]"]),
    "gemma3": ("gemma3", ["per-head q/k (1 + w) RMSNorm (head_dim 16)",
                          "sliding-window attention (window 4) in layers [0, 1, 3], global in [2]",
                          "rotary positions (theta 1e+06, linear scaling) in global layers, theta 100 in sliding ones"]),
}


def build(name: str, path, **extra):
    """Save a tiny random checkpoint (norm weights random, so ``1 + w`` counts) and return the torch model."""
    torch.manual_seed(0)
    reference = FAMILIES[name](**extra).eval()
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if "norm" in parameter_name:
                parameter.normal_(0.0, 0.5)
    reference.save_pretrained(path, safe_serialization=True)
    return reference


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    # Hidden states and logits within 1e-4 on real positions; the padded row equals it alone.
    assert_padded_batch_matches(model, reference, INPUT_IDS, ATTENTION_MASK, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_left_padded_batch_matches_transformers(tmp_path, name):
    """Left padding (as `batch_generate` pads): positions count from each row's first token."""
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    assert_left_padded_batch_matches(model, reference, PROMPT, pad=4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_tokens_and_cache_match(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    expected = assert_greedy_matches(model, reference, PROMPT, n=20)
    # The cache: sliding layers rotate (window 4), global ones keep everything.
    cache = model.make_cache()
    sliding = model.args.sliding_layers
    assert [isinstance(layer, RotatingKVCache) for layer in cache] == list(sliding)
    assert all(layer.max_size == WINDOW for layer, slides in zip(cache, sliding) if slides)
    # Prompt, chunks longer and shorter than the window, then one token at a time, equals one pass.
    sequence = PROMPT + expected
    assert_chunked_cache_matches(model, sequence, [5, 6, 2, 3] + [1] * (len(sequence) - 16), atol=1e-5,
                                 cache=cache)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batch_generate_equals_one_by_one(tmp_path, name, tokenizer):
    """Left-padded rows decoded together, past the window, give each row's own greedy text."""
    build(name, tmp_path)
    with_tokenizer(tmp_path, tokenizer)
    model, _ = load_model(tmp_path)
    from mlx_llm.tokenization import Tokenizer

    loaded = Tokenizer.from_pretrained(tmp_path)
    prompts = [PROMPT, PROMPT[5:8]]  # ids within the tiny vocabulary; 12 and 3 tokens
    together = batch_generate(model, loaded, prompts, max_tokens=10, eos_token_ids=[])
    alone = [batch_generate(model, loaded, [prompt], max_tokens=10, eos_token_ids=[])[0] for prompt in prompts]
    assert together == alone


def test_config_spellings_and_errors(tmp_path):
    build("gemma3", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    new = gemma3.ModelArgs.from_config(config)
    assert (new.rope_theta, new.rope_scaling["factor"], new.local_rope_theta) == (1e6, 2.0, 100.0)
    assert new.sliding_layers == (True, True, False, True) and new.windows == [4, 4, None, 4]
    # transformers 4.x: rope_theta, rope_local_base_freq, rope_scaling, sliding_window_pattern.
    old = {key: value for key, value in config.items() if key not in ("rope_parameters", "layer_types")}
    old.update(rope_theta=1e6, rope_local_base_freq=100.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert gemma3.ModelArgs.from_config(old) == new
    assert gemma3.mlx_lm_config(config)["sliding_window_pattern"] == 3
    two = {"model_type": "gemma2", **{key: config[key] for key in ("vocab_size", "hidden_size", "intermediate_size",
                                                                    "num_hidden_layers", "num_attention_heads")}}
    args = gemma2.ModelArgs.from_config({**two, "rope_theta": 123.0})
    assert (args.rope_theta, args.attn_logit_softcap, args.final_logit_softcap) == (123.0, 50.0, 30.0)
    assert args.sliding_layers == (True, False, True, False) and args.tie_word_embeddings
    # A multimodal config reads as its text model, tied as the outer config says (tests/test_gemma3_multimodal.py).
    assert gemma3.ModelArgs.from_config({"model_type": "gemma3", "text_config": config,
                                         "tie_word_embeddings": False}) == new
    with pytest.raises(ValueError, match="layer_types must list 4 entries of .*got \\['chunked_attention'"):
        gemma2.ModelArgs.from_config({**two, "layer_types": ["chunked_attention"] * 4})
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        gemma3.ModelArgs.from_config({**config, "use_bidirectional_attention": True})
    with pytest.raises(ValueError, match="hidden_activation='relu6'"):
        gemma2.ModelArgs.from_config({**two, "hidden_activation": "relu6"})
    with pytest.raises(ValueError, match="unsupported model_type 'gemma7'.*gemma2, gemma3, gemma3_text"):
        get_family("gemma7")


def info_window(name: str) -> int:
    return 16 if name == "gemma2" else WINDOW


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_info_and_convert_float_and_quantized(tmp_path, name, tokenizer):
    """`info` names the family and its features; `convert` writes Hugging Face names that
    load back here (float: equal logits; 4-bit: the float model quantized in memory) and in mlx-lm."""
    # mlx-lm's Gemma 2 has no sliding window: there the window holds the whole prompt.
    build(name, tmp_path / "hf", sliding_window=info_window(name))
    with_tokenizer(tmp_path / "hf", tokenizer)
    info = describe(tmp_path / "hf")
    family, features = FEATURES[name]
    assert info.family == family
    from click.testing import CliRunner
    from mlx_llm_cli.main import main

    printed = CliRunner().invoke(main, ["info", str(tmp_path / "hf")]).output
    assert f"family          {family}" in printed
    for feature in features:
        feature = feature.replace("window 4", f"window {info_window(name)}")
        assert feature in printed, feature
    float_model, _ = load_model(tmp_path / "hf")
    ids = mx.array([PROMPT])
    float_logits = np.array(float_model(ids))
    mlx_lm = pytest.importorskip("mlx_lm")
    for bits in (None, 4):
        out = tmp_path / f"out-{bits}"
        convert(tmp_path / "hf", out, quantize=bits is not None, bits=bits or 4, group_size=32)
        names = list(mx.load(str(out / "model.safetensors")))
        assert "model.layers.0.pre_feedforward_layernorm.weight" in names
        model, _ = load_model(out)
        logits = np.array(model(ids))
        reference, _ = load_model(tmp_path / "hf")
        if bits is not None:
            nn.quantize(reference, group_size=32, bits=bits, class_predicate=quantization_predicate(32))
        np.testing.assert_allclose(logits, np.array(reference(ids)), atol=1e-5, rtol=0)
        if bits is None:
            assert np.abs(logits - float_logits).max() <= 1e-6
        theirs, _ = mlx_lm.load(str(out))
        assert np.abs(np.array(theirs(ids)) - logits).max() <= 1e-5


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_mlx_lm_conversion_loads_here(tmp_path, name, tokenizer):
    """A folder ``mlx_lm.convert`` writes (float and 4-bit) gives mlx-lm's logits here."""
    mlx_lm = pytest.importorskip("mlx_lm")
    build(name, tmp_path / "hf", sliding_window=info_window(name))
    with_tokenizer(tmp_path / "hf", tokenizer)
    # The keys Hub configs (transformers 4.x) hold and mlx-lm reads.
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config = get_family(config["model_type"]).mlx_lm_config(config)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    ids = mx.array([PROMPT])
    for bits in (None, 4):
        out = tmp_path / f"mlx-lm-{bits}"
        mlx_lm.convert(str(tmp_path / "hf"), str(out), **({} if bits is None else dict(quantize=True, q_bits=4)))
        ours, _ = load_model(out)
        theirs, _ = mlx_lm.load(str(out))
        assert getattr(ours.model.embed_tokens, "bits", None) == bits
        assert np.abs(np.array(ours(ids)) - np.array(theirs(ids))).max() <= 1e-5
