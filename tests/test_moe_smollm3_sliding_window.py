"""Sliding windows of Mixtral, Qwen3-MoE and SmolLM3 against `transformers`: tiny random
checkpoints with a window of 4 on inputs of 12 tokens and more give the same hidden
states and logits on padded batches (right and left padded), the same 20 greedy
tokens, and the same logits with and without the (rotating) cache; a window at least
as long as the context changes nothing.

As transformers 5.25 reads the configs: Mixtral windows every layer (``sliding_window``,
null when absent); Qwen3-MoE every layer when ``use_sliding_window`` (no
``max_window_layers`` or ``layer_types``, unlike dense Qwen3); SmolLM3 the layers
``layer_types`` names, by default its NoPE layers when ``use_sliding_window``."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.blocks.cache import KVCache, RotatingKVCache
from mlx_llm.model_files.loading import load_model
from mlx_llm.models import llama, mixtral, qwen3_moe, smollm3

import test_models_moe
import test_models_new_families
from decoder_parity import assert_chunked_cache_matches, assert_greedy_matches, assert_left_padded_batch_matches
from decoder_parity import assert_padded_batch_matches
from test_llama_sliding_window import ATTENTION_MASK, INPUT_IDS, PROMPT, WINDOW

# name -> (builder of tests/test_models_moe.py or test_models_new_families.py, its family, config keys
# turning the window on; {window} is filled in).
CASES = {
    # Every layer windowed (2 layers, 4 experts, top-2).
    "mixtral": (test_models_moe.build, "mixtral", {"sliding_window": "{window}"}),
    # Every layer windowed: max_window_layers and layer_types are Qwen3's, not Qwen3-MoE's (both ignored).
    "qwen3_moe": (test_models_moe.build, "qwen3_moe", {
        "use_sliding_window": True, "sliding_window": "{window}", "max_window_layers": 2}),
    # layer_types filled in by SmolLM3Config: its NoPE layers 0 and 2 slide.
    "smollm3": (test_models_new_families.build, "smollm3-list", {
        "use_sliding_window": True, "sliding_window": "{window}"}),
    # layer_types written out decide, without use_sliding_window (transformers' masks and caches).
    "smollm3-types": (test_models_new_families.build, "smollm3", {
        "sliding_window": "{window}",
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}),
}
WINDOWS = {"mixtral": [4, 4], "qwen3_moe": [4, 4, 4], "smollm3": [4, None, 4], "smollm3-types": [4, None, 4, None]}
FEATURES = {"mixtral": "sliding-window attention (window 4)", "qwen3_moe": "sliding-window attention (window 4)",
            "smollm3": "sliding-window attention (window 4) in layers [0, 2], full attention in [1]",
            "smollm3-types": "sliding-window attention (window 4) in layers [0, 2], full attention in [1, 3]"}


def build(name: str, path, window: int = WINDOW):
    """Save the tiny random checkpoint of ``name`` with sliding window ``window``
    (the same weights for every window) and return the torch model."""
    builder, family, keys = CASES[name]
    extra = {key: window if value == "{window}" else value for key, value in keys.items()}
    return builder(family, path, attn_implementation="eager", **extra)


@pytest.mark.parametrize("name", sorted(CASES))
def test_windows_are_read_per_layer(tmp_path, name):
    build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    assert model.args.windows == WINDOWS[name]
    assert FEATURES[name] in llama.features(model.args)
    # Windowed layers hold the last 4 positions, the others everything.
    cache = model.make_cache()
    assert [type(layer) for layer in cache] == [KVCache if window is None else RotatingKVCache
                                                for window in WINDOWS[name]]
    assert all(layer.max_size == WINDOW for layer in cache if isinstance(layer, RotatingKVCache))


@pytest.mark.parametrize("name", sorted(CASES))
def test_padded_batches_match_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    # Right padded: a 12-token row (3 windows) and a 5-token one; padded positions are not compared,
    # the padded row equals it alone.
    assert_padded_batch_matches(model, reference, INPUT_IDS, ATTENTION_MASK, atol=1e-4)
    # Left padded (as batch_generate pads), through the per-layer caches.
    assert_left_padded_batch_matches(model, reference, PROMPT, pad=4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_greedy_tokens_and_cache_match(tmp_path, name):
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    expected = assert_greedy_matches(model, reference, PROMPT, n=20)
    # Chunks longer and shorter than the window, then one token at a time, equal one pass.
    sequence = PROMPT + expected
    assert_chunked_cache_matches(model, sequence, [5, 6, 2, 3] + [1] * (len(sequence) - 16), atol=1e-5)


def without_window(path):
    """Rewrite ``config.json`` at ``path`` so that no layer slides (the same weights)."""
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config.update(use_sliding_window=False, sliding_window=None,
                  layer_types=["full_attention"] * config["num_hidden_layers"])
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "smollm3"])
def test_window_at_least_the_context_changes_nothing(tmp_path, name):
    build(name, tmp_path / "long", window=len(PROMPT))  # as long as the input
    build(name, tmp_path / "short")  # the window 4, same weights
    build(name, tmp_path / "full")
    without_window(tmp_path / "full")
    ids = mx.array([PROMPT])
    long, short, full = (np.array(load_model(tmp_path / kind)[0](ids)) for kind in ("long", "short", "full"))
    assert load_model(tmp_path / "full")[0].args.windows == [None] * len(WINDOWS[name])
    np.testing.assert_allclose(long, full, atol=1e-5)
    # The window of 4 sees fewer keys from position 4 on: the test can fail.
    np.testing.assert_allclose(short[:, :WINDOW], full[:, :WINDOW], atol=1e-5)
    assert np.abs(short[:, WINDOW:] - full[:, WINDOW:]).max() > 1e-3
    # A window as long as max_position_embeddings (128) is dropped: plain caches, no window feature.
    build(name, tmp_path / "context", window=128)
    model, _ = load_model(tmp_path / "context")
    assert model.args.sliding_window is None and model.args.windows == [None] * model.args.num_layers
    assert all(type(layer) is KVCache for layer in model.make_cache())
    assert not any("sliding" in feature for feature in llama.features(model.args))


def test_config_rules_as_transformers_reads_them():
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=4)
    # Mixtral: sliding_window in every layer, none when absent (MixtralConfig's default, not Mistral's 4096).
    read = mixtral.ModelArgs.from_config
    assert read(base).windows == [None] * 4 and read(base).max_positions == 4096 * 32
    assert read({**base, "sliding_window": 8}).windows == [8] * 4
    assert read({**base, "sliding_window": 64, "max_position_embeddings": 64}).sliding_window is None
    with pytest.raises(ValueError, match="sliding_window must be >= 1, got 0"):
        read({**base, "sliding_window": 0})
    # Qwen3-MoE: only with use_sliding_window (then 4096 when absent), in every layer.
    read = qwen3_moe.ModelArgs.from_config
    assert read({**base, "sliding_window": 8}).windows == [None] * 4
    assert read({**base, "use_sliding_window": True}).windows == [4096] * 4
    assert read({**base, "use_sliding_window": True, "max_position_embeddings": 4096}).sliding_window is None
    assert read({**base, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3}).windows == [8] * 4
    # SmolLM3: layer_types decide; without them the NoPE layers (every 4th by default) with use_sliding_window.
    read = smollm3.ModelArgs.from_config
    assert read({**base, "sliding_window": 8}).windows == [None] * 4
    assert read({**base, "use_sliding_window": True, "sliding_window": 8}).windows == [None, None, None, 8]
    assert read({**base, "use_sliding_window": True}).windows == [None] * 4  # SmolLM3Config: no window by default
    assert read({**base, "use_sliding_window": True, "sliding_window": 8,
                 "no_rope_layers": [0, 1, 0, 1]}).windows == [8, None, 8, None]
    types = ["full_attention", "sliding_attention"] * 2
    assert read({**base, "sliding_window": 8, "layer_types": types}).windows == [None, 8, None, 8]
    with pytest.raises(ValueError, match="names sliding_attention layers but sets no window"):
        read({**base, "layer_types": types})
    with pytest.raises(ValueError, match="layer_types must list 4 entries"):
        read({**base, "sliding_window": 8, "layer_types": types[:3]})
