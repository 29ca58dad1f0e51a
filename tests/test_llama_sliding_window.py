"""Sliding windows of the Llama-family configs against `transformers`: tiny random
Mistral (window 4 in every layer) and Qwen2 / Qwen3 (``use_sliding_window``, the
layers from ``max_window_layers`` on) checkpoints, with inputs of 12 tokens and
more, give the same hidden states and logits on padded batches, the same 20
greedy tokens, and the same logits with and without the (rotating) cache; a
window at least as long as the context changes nothing."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.blocks.cache import KVCache, RotatingKVCache
from mlx_llm.generation.generate import batch_generate
from mlx_llm.model_files.loading import load_model
from mlx_llm.models import llama, phi3, qwen3

from decoder_parity import (assert_chunked_cache_matches, assert_greedy_matches, assert_left_padded_batch_matches,
                            assert_padded_batch_matches)
from tokenizer_fixtures import build_byte_level_bpe

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 99, 3, 50]
# Right-padded: a 12-token row (3 windows) and a 5-token one.
INPUT_IDS = [PROMPT, [40, 3, 21, 7, 8] + [0] * 7]
ATTENTION_MASK = [[1] * 12, [1] * 5 + [0] * 7]
WINDOW = 4
SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1, pad_token_id=0,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, attn_implementation="eager")

FAMILIES = {
    "mistral": lambda **extra: transformers.MistralForCausalLM(transformers.MistralConfig(
        **{**SIZES, "num_hidden_layers": 2, "sliding_window": WINDOW, **extra})),
    # Layer 0 full, layers 1 and 2 windowed.
    "qwen2": lambda **extra: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **{**SIZES, "num_hidden_layers": 3, "use_sliding_window": True, "sliding_window": WINDOW,
           "max_window_layers": 1, **extra})),
    # Layers 0 and 1 full, layer 2 windowed; explicit head_dim.
    "qwen3": lambda **extra: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **{**SIZES, "num_hidden_layers": 3, "head_dim": 16, "use_sliding_window": True, "sliding_window": WINDOW,
           "max_window_layers": 2, **extra})),
}
WINDOWS = {"mistral": [4, 4], "qwen2": [None, 4, 4], "qwen3": [None, None, 4]}
FEATURES = {"mistral": "sliding-window attention (window 4)",
            "qwen2": "sliding-window attention (window 4) in layers [1, 2], full attention in [0]",
            "qwen3": "sliding-window attention (window 4) in layers [2], full attention in [0, 1]"}


def build(name: str, path, **extra):
    """Save a tiny random checkpoint (random biases, so Qwen2's count) and return the torch model."""
    torch.manual_seed(0)
    reference = FAMILIES[name](**extra).eval()
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if parameter_name.endswith("bias"):
                parameter.normal_(0.0, 0.5)
    reference.save_pretrained(path, safe_serialization=True)
    return reference


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_windows_are_read_per_layer(tmp_path, name):
    build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    assert model.args.windows == WINDOWS[name]
    assert FEATURES[name] in llama.features(model.args)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    # Hidden states and logits within 1e-4 on real positions; the padded row equals it alone.
    assert_padded_batch_matches(model, reference, INPUT_IDS, ATTENTION_MASK, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_left_padded_batch_matches_transformers(tmp_path, name):
    """Left padding (as `batch_generate` pads) through the per-layer caches."""
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    assert_left_padded_batch_matches(model, reference, PROMPT, pad=4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_tokens_and_cache_match(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    expected = assert_greedy_matches(model, reference, PROMPT, n=20)
    # Windowed layers hold the last 4 positions, the others everything.
    cache = model.make_cache()
    assert [type(layer) for layer in cache] == [KVCache if window is None else RotatingKVCache
                                                for window in WINDOWS[name]]
    assert all(layer.max_size == WINDOW for layer in cache if isinstance(layer, RotatingKVCache))
    # Prompt, chunks longer and shorter than the window, then one token at a time, equals one pass.
    sequence = PROMPT + expected
    assert_chunked_cache_matches(model, sequence, [5, 6, 2, 3] + [1] * (len(sequence) - 16), atol=1e-5,
                                 cache=cache)


@pytest.mark.parametrize("name", ["mistral", "qwen2"])
def test_batch_generate_equals_one_by_one(tmp_path, name):
    """Left-padded rows decoded together, past the window, give each row's own greedy text."""
    from mlx_llm.tokenization import Tokenizer

    build(name, tmp_path)
    for file in build_byte_level_bpe(tmp_path / "tokenizer").iterdir():
        shutil.copy(file, tmp_path)
    model, _ = load_model(tmp_path)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    prompts = [PROMPT, PROMPT[5:8]]  # 12 and 3 tokens
    together = batch_generate(model, tokenizer, prompts, max_tokens=10, eos_token_ids=[])
    alone = [batch_generate(model, tokenizer, [prompt], max_tokens=10, eos_token_ids=[])[0] for prompt in prompts]
    assert together == alone


def without_window(path, name):
    """Rewrite ``config.json`` at ``path`` so that no layer slides (the same weights)."""
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config.update(sliding_window=None) if name == "mistral" else config.update(
        use_sliding_window=False, sliding_window=None, layer_types=["full_attention"] * config["num_hidden_layers"])
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["mistral", "qwen2"])
def test_window_at_least_the_context_changes_nothing(tmp_path, name):
    build(name, tmp_path / "long", sliding_window=len(PROMPT))  # as long as the input
    build(name, tmp_path / "short")  # the window 4, same weights (same seed)
    build(name, tmp_path / "full")
    without_window(tmp_path / "full", name)
    ids = mx.array([PROMPT])
    long, short, full = (np.array(load_model(tmp_path / kind)[0](ids)) for kind in ("long", "short", "full"))
    np.testing.assert_allclose(long, full, atol=1e-5)
    # The window of 4 sees fewer keys from position 4 on: the test can fail.
    np.testing.assert_allclose(short[:, :WINDOW], full[:, :WINDOW], atol=1e-5)
    assert np.abs(short[:, WINDOW:] - full[:, WINDOW:]).max() > 1e-3
    # A window as long as max_position_embeddings is dropped: plain caches, no window feature.
    build(name, tmp_path / "context", sliding_window=SIZES["max_position_embeddings"])
    model, _ = load_model(tmp_path / "context")
    assert model.args.sliding_window is None and model.args.windows == [None] * model.args.num_layers
    assert all(type(layer) is KVCache for layer in model.make_cache())
    assert not any("sliding" in feature for feature in llama.features(model.args))


def test_config_rules_as_transformers_reads_them():
    base = {key: SIZES[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads")}
    base["num_hidden_layers"] = 4
    read = llama.ModelArgs.from_config
    # Mistral: sliding_window in every layer, 4096 when the key is absent (max positions 4096 * 32 then).
    assert read({**base, "model_type": "mistral"}).windows == [4096] * 4
    assert read({**base, "model_type": "mistral", "sliding_window": None}).windows == [None] * 4
    assert read({**base, "model_type": "mistral", "sliding_window": 4096,
                 "max_position_embeddings": 4096}).sliding_window is None
    # Llama has no window.
    assert read({**base, "model_type": "llama", "sliding_window": 4}).windows == [None] * 4
    # Qwen2: only with use_sliding_window; layers >= max_window_layers (default 28), or layer_types.
    qwen2 = {**base, "model_type": "qwen2", "sliding_window": 8}
    assert read(qwen2).windows == [None] * 4
    assert read({**qwen2, "use_sliding_window": True}).windows == [None] * 4  # 28 >= 4 layers
    assert read({**qwen2, "use_sliding_window": True, "max_window_layers": 3}).windows == [None, None, None, 8]
    types = ["sliding_attention", "full_attention"] * 2
    assert read({**qwen2, "use_sliding_window": True, "layer_types": types}).windows == [8, None, 8, None]
    assert read({**qwen2, "use_sliding_window": True, "max_window_layers": 0}).windows == [8] * 4
    with pytest.raises(ValueError, match="names sliding_attention layers but sets no window"):
        read({**qwen2, "layer_types": types})
    with pytest.raises(ValueError, match="layer_types must list 4 entries"):
        read({**qwen2, "use_sliding_window": True, "layer_types": ["chunked_attention"] * 4})
    # Qwen3: the same rule, and max_position_embeddings 32768 when absent.
    args = qwen3.ModelArgs.from_config({**base, "sliding_window": 8, "use_sliding_window": True,
                                        "max_window_layers": 2})
    assert args.windows == [None, None, 8, 8] and args.max_positions == 32768
    # Phi-3: the window in every layer, dropped when at least max_position_embeddings.
    phi = {**base, "model_type": "phi3", "max_position_embeddings": 64}
    assert phi3.ModelArgs.from_config({**phi, "sliding_window": 63}).windows == [63] * 4
    assert phi3.ModelArgs.from_config({**phi, "sliding_window": 64}).windows == [None] * 4
