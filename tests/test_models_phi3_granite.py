"""Phi-3 (LongRoPE, partial rotary, fused projections, sliding window) and Granite (the four
multipliers) against `transformers`: tiny random checkpoints through the real loader give
the same hidden states and logits on padded batches, the same 20 greedy tokens and the
same logits with and without the cache; LongRoPE, the fused gate/up projection and the
residual scale against their formulas; folders load in mlx-lm and transformers both ways."""

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.blocks.feed_forward import GatedFeedForward
from mlx_llm.model_files.loading import convert, describe, load_model, quantization_predicate
from mlx_llm.models import get_family
from mlx_llm.blocks.positions import LongRoPE, longrope_attention_factor
from mlx_llm.blocks.transformer import TransformerEncoderLayer

from test_models_decoder import assert_matches
from decoder_parity import assert_greedy_matches, with_tokenizer

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 99, 3, 50]  # 12 tokens: past ORIGINAL
ORIGINAL = 8  # LongRoPE's original_max_position_embeddings in the tiny Phi-3
SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.1, pad_token_id=0,
             bos_token_id=1, eos_token_id=2)
# head_dim 16, partial_rotary_factor 0.75: 12 rotary dims, 6 factors each.
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0 + 0.4 * i for i in range(6)],
            "long_factor": [1.5 + 2.5 * i for i in range(6)]}
# mlx-lm keeps Granite's o_proj and down_proj at 8 bits, group size 64: their inputs must divide by 64.
GRANITE_SIZES = {**SIZES, "intermediate_size": 128}

FAMILIES = {
    "phi3-longrope": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **SIZES, num_hidden_layers=2, partial_rotary_factor=0.75, original_max_position_embeddings=ORIGINAL,
        rope_scaling=dict(LONGROPE), tie_word_embeddings=False)),
    # Phi-4-mini's shape: partial rotary, tied embeddings; a sliding window shorter than the inputs.
    "phi3-window": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **SIZES, num_hidden_layers=2, partial_rotary_factor=0.75, sliding_window=5, tie_word_embeddings=True)),
    "granite": lambda: transformers.GraniteForCausalLM(transformers.GraniteConfig(
        **GRANITE_SIZES, num_hidden_layers=2, embedding_multiplier=4.0, residual_multiplier=0.3, attention_multiplier=0.07,
        logits_scaling=3.0, attention_bias=True, tie_word_embeddings=False)),
    "granite-tied": lambda: transformers.GraniteForCausalLM(transformers.GraniteConfig(
        **GRANITE_SIZES, num_hidden_layers=2, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
        logits_scaling=8.0, tie_word_embeddings=True)),
}


def build(name: str, path):
    """Save a tiny random checkpoint (norms not all ones, random biases) and return the torch model."""
    torch.manual_seed(0)
    reference = FAMILIES[name]().eval()
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if parameter_name.endswith("bias") or "norm" in parameter_name:
                parameter.normal_(1.0 if "norm" in parameter_name else 0.0, 0.5)
    reference.save_pretrained(path, safe_serialization=True)
    return reference


def torch_logits(reference, ids, mask=None):
    ids = torch.tensor(ids)
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else torch.tensor(mask),
                        output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


# --- the blocks against their formulas -------------------------------------------------------


def numpy_rotary(x, positions, inverse, factor):
    """transformers' rotate-half rotary on the first 2 * len(inverse) features, cos/sin times ``factor``."""
    dims = 2 * len(inverse)
    angles = positions[:, None] * inverse[None]  # (L, dims / 2)
    cos, sin = np.cos(angles) * factor, np.sin(angles) * factor
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    rotary, rest = x[..., :dims], x[..., dims:]
    half = np.concatenate([-rotary[..., dims // 2:], rotary[..., : dims // 2]], -1)
    return np.concatenate([rotary * cos + half * sin, rest], -1)


def test_longrope_matches_its_formula():
    base, dims, original = 10000.0, 12, 8
    short, long = LONGROPE["short_factor"], LONGROPE["long_factor"]
    factor = longrope_attention_factor(64 / original, original)
    assert factor == pytest.approx(math.sqrt(1 + math.log(8) / math.log(8)))
    assert longrope_attention_factor(1.0, original) == 1.0
    rope = LongRoPE(dims, base, short, long, original, factor)
    exponents = base ** (np.arange(0, dims, 2) / dims)
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 16)).astype(np.float32)
    # Positions 0..4 and 2..6 stay within the original length (short factors); 4..8 pass it (long).
    for offset, factors in ((0, short), (2, short), (4, long)):
        expected = numpy_rotary(x, np.arange(offset, offset + 5), 1 / (np.array(factors) * exponents), factor)
        np.testing.assert_allclose(np.array(rope(mx.array(x), offset=offset)), expected, atol=2e-5)
    # Per row with an array offset (a left-padded batch): row 0 short, row 1 long.
    both = np.array(rope(mx.array(x), offset=mx.array([1, 4])))
    np.testing.assert_allclose(both[0], numpy_rotary(x, np.arange(1, 6), 1 / (np.array(short) * exponents), factor)[0],
                               atol=2e-5)
    np.testing.assert_allclose(both[1], numpy_rotary(x, np.arange(4, 9), 1 / (np.array(long) * exponents), factor)[1],
                               atol=2e-5)
    with pytest.raises(ValueError, match="short_factor has 5 entries; 6"):
        LongRoPE(dims, base, short[:5], long, original)


def test_fused_gate_up_equals_separate_projections():
    mx.random.seed(0)
    fused = GatedFeedForward(8, 6, fused=True)
    separate = GatedFeedForward(8, 6)
    gate, up = mx.split(fused.gate_up_proj.weight, 2, axis=0)  # rows: gate, then up
    separate.update({"gate_proj": {"weight": gate}, "up_proj": {"weight": up}, "down_proj": fused.down_proj.parameters()})
    x = mx.random.normal((2, 3, 8))
    np.testing.assert_allclose(np.array(fused(x)), np.array(separate(x)), atol=1e-6)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    xs, g, u, d = (np.array(a) for a in (x, gate, up, fused.down_proj.weight))
    np.testing.assert_allclose(np.array(fused(x)), (silu(xs @ g.T) * (xs @ u.T)) @ d.T, atol=1e-5)


def test_residual_scale_multiplies_each_sublayer_output():
    """``x + m * Sublayer(Norm(x))`` equals the unscaled layer with W^O and W_down times m."""
    mx.random.seed(0)
    options = dict(activation="silu", gated=True, bias=False, norm="rmsnorm", norm_first=True)
    scaled = TransformerEncoderLayer(16, 2, 24, residual_scale=0.3, **options)
    plain = TransformerEncoderLayer(16, 2, 24, **options)
    plain.update(scaled.parameters())
    plain.self_attn.o_proj.weight = scaled.self_attn.o_proj.weight * 0.3
    plain.feed_forward.down_proj.weight = scaled.feed_forward.down_proj.weight * 0.3
    x = mx.random.normal((2, 5, 16))
    np.testing.assert_allclose(np.array(scaled(x, mask="causal")), np.array(plain(x, mask="causal")), atol=1e-5)


# --- the families against transformers -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, name):
    reference = build(name, tmp_path)
    model, config = load_model(tmp_path)
    assert model.args.model_type == config["model_type"]
    assert_matches(model, reference)  # 7 positions (short factors, past the window), padded row == alone


def test_longer_padded_batch_uses_the_long_factors(tmp_path):
    reference = build("phi3-longrope", tmp_path)
    model, _ = load_model(tmp_path)
    ids = [PROMPT, PROMPT[2:] + [0, 0]]  # 12 positions > ORIGINAL; row 1 pads 2
    mask = [[1] * 12, [1] * 10 + [0, 0]]
    hidden_ref, logits_ref = torch_logits(reference, ids, mask)
    hidden = np.array(model.model(mx.array(ids), mx.array(mask)))
    logits = np.array(model(mx.array(ids), mx.array(mask)))
    real = np.array(mask, dtype=bool)
    assert np.abs(hidden[real] - hidden_ref[real]).max() <= 1e-4
    assert np.abs(logits[real] - logits_ref[real]).max() <= 1e-4
    np.testing.assert_allclose(logits[1, :10], np.array(model(mx.array([PROMPT[2:]])))[0], atol=1e-4)
    # The first 7 positions differ from a 7-token pass, which uses the short factors.
    assert np.abs(logits[0, :7] - np.array(model(mx.array([PROMPT[:7]])))[0]).max() > 1e-2


@pytest.mark.parametrize("name, prompt_length", [("phi3-longrope", 5), ("phi3-longrope", 12), ("phi3-window", 12),
                                                 ("granite", 12), ("granite-tied", 12)])
def test_greedy_tokens_and_cache_match(tmp_path, name, prompt_length):
    """5 prompt tokens: the generation passes LongRoPE's original length (the cache is
    recomputed); 12: it starts past it. Each cached call (one token at a time, or chunks of 3)
    gives what one full pass over the sequence so far gives at those positions."""
    reference = build(name, tmp_path)
    model, _ = load_model(tmp_path)
    prompt = PROMPT[:prompt_length]
    expected = assert_greedy_matches(model, reference, prompt, n=20)
    sequence = mx.array([prompt + expected])
    for chunk in (1, 3):
        cache = model.make_cache()
        for start in [0] + list(range(4, sequence.shape[1], chunk)):
            end = 4 if start == 0 else min(start + chunk, sequence.shape[1])
            cached = np.array(model(sequence[:, start:end], cache=cache))
            np.testing.assert_allclose(cached, np.array(model(sequence[:, :end]))[:, start:], atol=1e-4)


def test_left_padded_rows_switch_to_long_factors_on_their_own(tmp_path):
    """A left-padded batch: each row picks and switches its factors by its own length, as alone."""
    build("phi3-longrope", tmp_path)
    model, _ = load_model(tmp_path)
    prompts = [PROMPT[:5], PROMPT[:10]]  # row 0 short until it passes ORIGINAL; row 1 long from the start
    cache = model.make_cache(left_padding=mx.array([5, 0]))
    mask = mx.array([[0] * 5 + [1] * 5, [1] * 10])
    logits = model(mx.array([[0] * 5 + prompts[0], prompts[1]]), mask, cache=cache)[:, -1]
    rows = [[np.array(logits[0])], [np.array(logits[1])]]
    tokens = mx.argmax(logits, axis=-1)
    for _ in range(6):
        mask = mx.concatenate([mask, mx.ones((2, 1), mask.dtype)], axis=1)
        logits = model(tokens[:, None], mask, cache=cache)[:, -1]
        for row in (0, 1):
            rows[row].append(np.array(logits[row]))
        tokens = mx.argmax(logits, axis=-1)
    for row, prompt in enumerate(prompts):
        alone = model.make_cache()
        alone_logits = [np.array(model(mx.array([prompt]), cache=alone)[0, -1])]
        for step in range(6):
            token = int(np.argmax(alone_logits[-1]))
            alone_logits.append(np.array(model(mx.array([[token]]), cache=alone)[0, -1]))
        np.testing.assert_allclose(np.stack(rows[row]), np.stack(alone_logits), atol=1e-4)


def test_config_spellings_and_errors(tmp_path):
    build("phi3-longrope", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    phi3 = get_family("phi3")
    new = phi3.ModelArgs.from_config(config)
    assert (new.rotary_dim, new.rope_scaling["original_max_position_embeddings"]) == (12, ORIGINAL)
    assert new.rope_scaling["attention_factor"] == pytest.approx(math.sqrt(2.0))  # s = 64 / 8
    # transformers 4.x: rope_theta, rope_scaling ("su", the older name) and the factor at the top level.
    old = {key: value for key, value in config.items() if key != "rope_parameters"}
    old.update(rope_theta=10000.0, partial_rotary_factor=0.75, original_max_position_embeddings=ORIGINAL,
               rope_scaling={"type": "su", **{k: v for k, v in LONGROPE.items() if k != "rope_type"}})
    assert phi3.ModelArgs.from_config(old) == new
    with pytest.raises(ValueError, match="long_factor has 5 entries; 6"):
        phi3.ModelArgs.from_config({**old, "rope_scaling": {**old["rope_scaling"], "long_factor": [1.0] * 5}})
    with pytest.raises(ValueError, match="rope type 'dynamic'"):
        phi3.ModelArgs.from_config({**old, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    granite = get_family("granite")
    build("granite", tmp_path / "granite")
    config = json.loads((tmp_path / "granite" / "config.json").read_text())
    args = granite.ModelArgs.from_config(config)
    assert (args.embedding_multiplier, args.residual_multiplier, args.logits_scaling) == (4.0, 0.3, 3.0)
    old = {key: value for key, value in config.items() if key != "rope_parameters"}
    assert granite.ModelArgs.from_config({**old, "rope_theta": 5e5}).rope_theta == 5e5
    with pytest.raises(ValueError, match="logits_scaling 0"):
        granite.ModelArgs.from_config({**config, "logits_scaling": 0})


FEATURES = {
    "phi3-longrope": ("phi3", ["fused qkv_proj and gate_up_proj", "partial rotary (12 of 16 head dims)",
                               "LongRoPE (short/long factors, original context 8, attention factor 1.414)"]),
    "phi3-window": ("phi3", ["sliding-window attention (window 5)", "tied embeddings"]),
    "granite": ("granite", ["multipliers: embedding 4, residual 0.3, attention 0.07, logits divided by 3"]),
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_info_names_family_and_features(tmp_path, name):
    build(name, tmp_path)
    family, features = FEATURES[name]
    info = describe(tmp_path)
    assert info.family == family and all(feature in info.features for feature in features)
    from click.testing import CliRunner
    from mlx_llm_cli.main import main

    printed = CliRunner().invoke(main, ["info", str(tmp_path)]).output
    assert f"family          {family}" in printed and all(feature in printed for feature in features)


# --- conversion, mlx-lm and transformers both ways -------------------------------------------


def in_4x_spelling(path):
    """Rewrite ``config.json`` the way transformers 4.x (and the Hub's Phi-3 and Granite) write it."""
    config = json.loads((path / "config.json").read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    rope.pop("partial_rotary_factor", None)
    rope.pop("original_max_position_embeddings", None)
    if rope.get("rope_type") not in (None, "default"):
        config["rope_scaling"] = {"type": rope["rope_type"], **rope}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["phi3-longrope", "granite-tied"])
def test_convert_and_mlx_lm_both_ways(tmp_path, name, tokenizer):
    """`convert` (float and 4-bit) writes Hugging Face names that load back here and in mlx-lm
    with the same logits; mlx-lm's own conversion (float and 4-bit) loads here. The prompt
    passes ORIGINAL: mlx-lm's LongRoPE always uses the long factors."""
    mlx_lm = pytest.importorskip("mlx_lm")
    reference = build(name, tmp_path / "hf")
    with_tokenizer(tmp_path / "hf", tokenizer)
    in_4x_spelling(tmp_path / "hf")  # transformers reads it too
    ids = mx.array([PROMPT])
    _, expected = torch_logits(reference, [PROMPT])
    for bits in (None, 4):
        out = tmp_path / f"ours-{bits}"
        convert(tmp_path / "hf", out, quantize=bits is not None, bits=4, group_size=32)
        model, _ = load_model(out)
        logits = np.array(model(ids))
        in_memory, _ = load_model(tmp_path / "hf")
        if bits is not None:
            nn.quantize(in_memory, group_size=32, bits=bits, class_predicate=quantization_predicate(32))
        else:
            assert np.abs(logits - expected).max() <= 1e-4
        np.testing.assert_allclose(logits, np.array(in_memory(ids)), atol=1e-5, rtol=0)
        theirs, _ = mlx_lm.load(str(out))
        assert np.abs(np.array(theirs(ids)) - logits).max() <= 1e-5
        converted = tmp_path / f"mlx-lm-{bits}"
        options = {} if bits is None else dict(quantize=True, q_bits=4, q_group_size=32)
        mlx_lm.convert(str(tmp_path / "hf"), str(converted), **options)
        theirs, _ = mlx_lm.load(str(converted))
        ours, _ = load_model(converted)
        assert np.abs(np.array(ours(ids)) - np.array(theirs(ids))).max() <= 1e-5


def test_export_loads_in_transformers(tmp_path):
    from mlx_llm.model_files.export import export_to_hf

    reference = build("phi3-longrope", tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "mlx")
    export_to_hf(tmp_path / "mlx", tmp_path / "export")
    exported = transformers.Phi3ForCausalLM.from_pretrained(tmp_path / "export").eval()
    _, expected = torch_logits(reference, [PROMPT])
    _, logits = torch_logits(exported, [PROMPT])
    np.testing.assert_allclose(logits, expected, atol=1e-5)
