"""T5 against Hugging Face transformers: tiny random checkpoints made here, loaded
through the real converter, compared in float32 on CPU; plus the KV cache,
padding, relative position buckets and bad inputs."""

import glob
import importlib
import json
import os

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from mlx_llm.models import get_family  # noqa: E402
from mlx_llm.models.t5 import (  # noqa: E402
    Model,
    ModelArgs,
    convert_hf_weights,
    parse_feed_forward_proj,
    relative_position_bucket,
)

TOLERANCE = 1e-4
VOCAB, PAD = 99, 0
TINY = dict(
    vocab_size=VOCAB,
    d_model=32,
    d_kv=8,  # 4 heads x 8 = 32, but d_kv is set explicitly as T5 allows
    d_ff=37,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    decoder_start_token_id=PAD,
    pad_token_id=PAD,
    eos_token_id=1,
)
# Longer than max_distance, so the far (clipped) buckets are used.
SOURCE_LENGTHS, TARGET_LENGTHS = (26, 17), (23, 12)
CHECKPOINTS = ("relu-tied", "gated-gelu", "gated-gelu-untied")


def _tiny_hf_model(feed_forward_proj: str, tie_word_embeddings: bool, seed: int):
    config = transformers.T5Config(
        feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie_word_embeddings, **TINY
    )
    torch.manual_seed(seed)
    try:
        model = transformers.T5ForConditionalGeneration._from_config(config, attn_implementation="eager")
    except (TypeError, ValueError):
        model = transformers.T5ForConditionalGeneration(config)
    return model.eval()


def _make_checkpoint(kind: str, path: str):
    """A tiny random checkpoint in ``path`` and the PyTorch model it holds.

    - ``relu-tied``: original T5 (ReLU, head tied to the embeddings, scaled).
    - ``gated-gelu``: v1.1 config exactly as the installed transformers writes
      it (transformers 5 ties the head and records ``scale_decoder_outputs``).
    - ``gated-gelu-untied``: the layout of Hub FLAN-T5 checkpoints: a separate
      ``lm_head.weight`` and ``"tie_word_embeddings": false``.
    """
    if kind == "relu-tied":
        model = _tiny_hf_model("relu", True, seed=0)
    else:
        model = _tiny_hf_model("gated-gelu", False, seed=1)
    if kind == "gated-gelu-untied":
        generator = torch.Generator().manual_seed(2)
        head = torch.randn(model.lm_head.weight.shape, generator=generator)
        model.lm_head.weight = torch.nn.Parameter(head)  # distinct from shared.weight
    model.save_pretrained(path, safe_serialization=True)
    if kind == "gated-gelu-untied":
        for file in glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.index.json")):
            os.remove(file)
        state = {
            name: tensor.detach().clone().contiguous()
            for name, tensor in model.state_dict().items()
            if not name.endswith("embed_tokens.weight")
        }
        safetensors_torch.save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(path, "config.json")) as file:
            config = json.load(file)
        config["tie_word_embeddings"] = False
        config.pop("scale_decoder_outputs", None)  # as in configs written by transformers 4
        with open(os.path.join(path, "config.json"), "w") as file:
            json.dump(config, file)
        assert "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["shared.weight"])
    return model


def _load_locally(path: str) -> Model:
    with open(os.path.join(path, "config.json")) as file:
        config = json.load(file)
    args = ModelArgs.from_config(config)
    model = Model(args)
    weights = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        weights.update(mx.load(file))
    model.load_weights(list(convert_hf_weights(weights, args).items()), strict=True)
    model.eval()
    return model


def _load_mlx(path: str) -> Model:
    try:
        loading = importlib.import_module("mlx_llm.model_files.loading")
    except ModuleNotFoundError:
        loading = None
    if loading is not None and hasattr(loading, "load_model"):
        model, _ = loading.load_model(path)
        return model
    return _load_locally(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}
    for kind in CHECKPOINTS:
        path = str(tmp_path_factory.mktemp(kind))
        hf_model = _make_checkpoint(kind, path)
        made[kind] = (path, hf_model, _load_mlx(path))
    return made


def _padded_batch():
    """Right-padded sources and decoder inputs of two different lengths each."""
    rng = np.random.default_rng(0)
    batch = len(SOURCE_LENGTHS)
    input_ids = np.full((batch, max(SOURCE_LENGTHS)), PAD, np.int64)
    attention_mask = np.zeros_like(input_ids)
    decoder_input_ids = np.full((batch, max(TARGET_LENGTHS)), PAD, np.int64)
    decoder_attention_mask = np.zeros_like(decoder_input_ids)
    for row, (source_length, target_length) in enumerate(zip(SOURCE_LENGTHS, TARGET_LENGTHS)):
        input_ids[row, :source_length] = rng.integers(2, VOCAB, source_length)
        attention_mask[row, :source_length] = 1
        decoder_input_ids[row, 1:target_length] = rng.integers(2, VOCAB, target_length - 1)  # [0] = start
        decoder_attention_mask[row, :target_length] = 1
    return input_ids, attention_mask, decoder_input_ids, decoder_attention_mask


def _max_diff(actual, expected, mask) -> float:
    """Max |actual - expected| over positions where the (B, L) mask is 1."""
    actual = np.array(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected)[np.asarray(mask, bool)].max())


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_matches_transformers_on_a_padded_batch(checkpoints, kind):
    _, hf_model, model = checkpoints[kind]
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = _padded_batch()
    with torch.no_grad():
        torch_inputs = {
            "input_ids": torch.tensor(input_ids),
            "attention_mask": torch.tensor(attention_mask),
            "decoder_input_ids": torch.tensor(decoder_input_ids),
            "decoder_attention_mask": torch.tensor(decoder_attention_mask),
        }
        expected = hf_model(**torch_inputs, output_hidden_states=True)
        expected_decoder = hf_model.decoder(
            input_ids=torch_inputs["decoder_input_ids"],
            attention_mask=torch_inputs["decoder_attention_mask"],
            encoder_hidden_states=expected.encoder_last_hidden_state,
            encoder_attention_mask=torch_inputs["attention_mask"],
        ).last_hidden_state

    encoder_hidden_states = model.encode(mx.array(input_ids), mx.array(attention_mask))
    decoder_hidden_states = model.decode_hidden_states(
        mx.array(decoder_input_ids), encoder_hidden_states, mx.array(attention_mask), mx.array(decoder_attention_mask)
    )
    logits = model.decode(
        mx.array(decoder_input_ids), encoder_hidden_states, mx.array(attention_mask), mx.array(decoder_attention_mask)
    )
    called = model(
        mx.array(input_ids), mx.array(decoder_input_ids), mx.array(attention_mask), mx.array(decoder_attention_mask)
    )

    assert encoder_hidden_states.dtype == mx.float32 and logits.shape == (2, max(TARGET_LENGTHS), VOCAB)
    assert _max_diff(encoder_hidden_states, expected.encoder_last_hidden_state, attention_mask) <= TOLERANCE
    assert _max_diff(decoder_hidden_states, expected_decoder, decoder_attention_mask) <= TOLERANCE
    assert _max_diff(decoder_hidden_states, expected.decoder_hidden_states[-1], decoder_attention_mask) <= TOLERANCE
    assert _max_diff(logits, expected.logits, decoder_attention_mask) <= TOLERANCE
    assert _max_diff(called, expected.logits, decoder_attention_mask) <= TOLERANCE


def test_checkpoint_kinds_load_the_intended_head(checkpoints):
    tied = checkpoints["relu-tied"][2]
    untied = checkpoints["gated-gelu-untied"][2]
    assert tied.args.tie_word_embeddings and tied.args.scale_decoder_outputs and "lm_head" not in tied
    assert not untied.args.tie_word_embeddings and not untied.args.scale_decoder_outputs
    assert not np.array_equal(np.array(untied.lm_head.weight), np.array(untied.shared.weight))
    assert untied.args.gated and untied.args.activation == "gelu_tanh"
    assert not checkpoints["gated-gelu"][2].args.scale_decoder_outputs


@pytest.mark.parametrize("kind", ["relu-tied", "gated-gelu-untied"])
def test_incremental_decoding_with_cache_equals_full_pass(checkpoints, kind):
    model = checkpoints[kind][2]
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = _padded_batch()
    input_ids, attention_mask = mx.array(input_ids), mx.array(attention_mask)
    decoder_input_ids, decoder_attention_mask = mx.array(decoder_input_ids), mx.array(decoder_attention_mask)
    encoder_hidden_states = model.encode(input_ids, attention_mask)
    full = model.decode(decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask)

    cache = model.make_cache()
    assert len(cache) == 3 and all(len(pair) == 2 for pair in cache)
    steps = [(0, 3)] + [(position, position + 1) for position in range(3, decoder_input_ids.shape[1])]
    pieces = []
    for start, stop in steps:  # a 3-token prompt, then one token at a time
        pieces.append(
            model.decode(
                decoder_input_ids[:, start:stop],
                encoder_hidden_states,
                attention_mask,
                decoder_attention_mask[:, :stop],
                cache=cache,
            )
        )
    incremental = mx.concatenate(pieces, axis=1)
    assert cache[0][0].offset == decoder_input_ids.shape[1]
    assert cache[0][1].offset == input_ids.shape[1]  # cross-attention keys projected once
    assert _max_diff(incremental, full, np.array(decoder_attention_mask)) <= TOLERANCE

    # Without a target mask (right padding never hides an earlier token) too.
    cache = model.make_cache()
    stepwise = [
        model.decode(decoder_input_ids[:, i : i + 1], encoder_hidden_states, attention_mask, cache=cache)
        for i in range(decoder_input_ids.shape[1])
    ]
    assert _max_diff(mx.concatenate(stepwise, axis=1), full, np.array(decoder_attention_mask)) <= TOLERANCE


@pytest.mark.parametrize("kind", ["relu-tied", "gated-gelu-untied"])
def test_padded_row_equals_the_same_input_alone(checkpoints, kind):
    model = checkpoints[kind][2]
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = _padded_batch()
    source_length, target_length = SOURCE_LENGTHS[1], TARGET_LENGTHS[1]
    alone_source = mx.array(input_ids[1:, :source_length])
    alone_target = mx.array(decoder_input_ids[1:, :target_length])
    alone_encoded = model.encode(alone_source)
    alone_logits = model.decode(alone_target, alone_encoded)

    encoded = model.encode(mx.array(input_ids), mx.array(attention_mask))
    logits = model.decode(
        mx.array(decoder_input_ids), encoded, mx.array(attention_mask), mx.array(decoder_attention_mask)
    )
    ones = np.ones((1, source_length))
    assert _max_diff(encoded[1:, :source_length], alone_encoded, ones) <= TOLERANCE
    assert _max_diff(logits[1:, :target_length], alone_logits, np.ones((1, target_length))) <= TOLERANCE

    # Relative positions do not change when padding goes on the left instead.
    shift = max(SOURCE_LENGTHS) - source_length
    left_ids = np.roll(input_ids[1:], shift, axis=1)
    left_mask = np.roll(attention_mask[1:], shift, axis=1)
    left_encoded = model.encode(mx.array(left_ids), mx.array(left_mask))
    assert _max_diff(left_encoded[:, shift:], alone_encoded, ones) <= TOLERANCE
    left_logits = model.decode(alone_target, left_encoded, mx.array(left_mask))
    assert _max_diff(left_logits, alone_logits, np.ones((1, target_length))) <= TOLERANCE


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_stays_finite_with_fully_masked_rows(checkpoints, dtype):
    path, _, reference = checkpoints["relu-tied"]
    model = _load_locally(path)
    model.set_dtype(dtype)
    input_ids, attention_mask, decoder_input_ids, decoder_attention_mask = (mx.array(x) for x in _padded_batch())
    expected = reference(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)
    logits = model(input_ids, decoder_input_ids, attention_mask, decoder_attention_mask)
    assert logits.dtype == dtype
    assert _max_diff(logits.astype(mx.float32), np.array(expected), np.array(decoder_attention_mask)) < 0.1
    # A source that is all padding and a target mask that hides every key: no inf or NaN anywhere.
    nothing = model(input_ids, decoder_input_ids, mx.zeros_like(attention_mask), mx.zeros_like(decoder_attention_mask))
    assert mx.isfinite(nothing).all().item()


@pytest.mark.parametrize(
    "num_buckets, max_distance", [(32, 20), (32, 128), (8, 6), (64, 300)]
)
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative_position = np.arange(-3 * max_distance, 3 * max_distance + 1)
    for bidirectional in (True, False):
        expected = T5Attention._relative_position_bucket(
            torch.tensor(relative_position),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        ).numpy()
        actual = np.array(
            relative_position_bucket(mx.array(relative_position), bidirectional, num_buckets, max_distance)
        )
        np.testing.assert_array_equal(actual, expected)
        # Distances beyond max_distance reach the last (clipped) bucket of their direction.
        last = num_buckets // 2 - 1 if bidirectional else num_buckets - 1
        assert actual[0] == last and actual[relative_position < -max_distance].min() == last
        assert actual.min() == 0 and actual.max() == (num_buckets - 1)


def test_decoder_bias_with_cache_covers_offset_queries(checkpoints):
    bias = checkpoints["relu-tied"][2].decoder_position_bias
    full = bias(7, 7)
    assert full.shape == (1, 4, 7, 7)
    np.testing.assert_array_equal(np.array(bias(2, 7, offset=5)), np.array(full[:, :, 5:7, :]))


def test_from_config_reads_the_hugging_face_keys():
    args = ModelArgs.from_config(
        {
            **TINY,
            "model_type": "t5",
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
    )
    assert (args.hidden_size, args.head_dim, args.intermediate_size) == (32, 8, 37)
    assert (args.num_encoder_layers, args.num_decoder_layers, args.num_heads) == (2, 3, 4)
    assert (args.num_buckets, args.max_distance, args.norm_eps) == (32, 20, 1e-6)
    assert (args.activation, args.gated, args.tie_word_embeddings, args.scale_decoder_outputs) == (
        "gelu_tanh", True, False, False
    )
    assert args.dtype == "bfloat16"
    symmetric = ModelArgs.from_config({**TINY, "num_decoder_layers": None, "dtype": "float16"})
    assert symmetric.num_decoder_layers == 2 and symmetric.dtype == "float16"
    assert symmetric.activation == "relu" and not symmetric.gated and symmetric.scale_decoder_outputs
    assert ModelArgs.from_config({**TINY, "scale_decoder_outputs": False}).scale_decoder_outputs is False
    assert get_family("t5").ModelArgs is ModelArgs


@pytest.mark.parametrize(
    "feed_forward_proj, expected",
    [("relu", ("relu", False)), ("gated-gelu", ("gelu_tanh", True)), ("gelu", ("gelu", False)),
     ("gated-relu", ("relu", True)), ("gated-silu", ("silu", True)), ("gelu_new", ("gelu_tanh", False))],
)
def test_feed_forward_proj_forms(feed_forward_proj, expected):
    assert parse_feed_forward_proj(feed_forward_proj) == expected


@pytest.mark.parametrize("feed_forward_proj", ["gated-swoosh", "relu-gated", "gated-gelu-new", "tanh"])
def test_unknown_feed_forward_proj_is_named(feed_forward_proj):
    with pytest.raises(ValueError, match=feed_forward_proj):
        ModelArgs.from_config({**TINY, "feed_forward_proj": feed_forward_proj})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "bart"}, "bart"),
        ({"d_model": None}, "d_model"),
        ({"num_heads": 0}, "num_heads"),
        ({"relative_attention_max_distance": 16}, "max_distance"),
        ({"layer_norm_epsilon": -1.0}, "norm_eps"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"torch_dtype": "int8"}, "int8"),
    ],
)
def test_invalid_config_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        ModelArgs.from_config({**TINY, **change})


def _weights(path):
    weights = {}
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        weights.update(mx.load(file))
    return weights


@pytest.mark.parametrize(
    "name",
    [
        "encoder.block.0.layer.0.SelfAttention.qkv.weight",
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.3.layer.0.SelfAttention.q.weight",  # only 3 decoder blocks
        "encoder.block.0.layer.2.layer_norm.weight",  # encoder blocks have 2 sublayers
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",  # gated name in a ReLU model
        "lm_head.bias",
        "pooler.dense.weight",
    ],
)
def test_unknown_hf_tensor_name_is_named(checkpoints, name):
    path = checkpoints["relu-tied"][0]
    args = checkpoints["relu-tied"][2].args
    weights = _weights(path)
    weights[name] = mx.zeros((2, 2))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        convert_hf_weights(weights, args)


def test_converter_drops_only_tied_copies_and_checks_the_head(checkpoints):
    path, _, model = checkpoints["relu-tied"]
    args = model.args
    weights = _weights(path)
    shared = weights["shared.weight"]
    with_copies = {
        **weights,
        "encoder.embed_tokens.weight": shared,
        "decoder.embed_tokens.weight": shared,
        "lm_head.weight": shared,
    }
    converted = convert_hf_weights(with_copies, args)
    assert set(converted) == set(convert_hf_weights(weights, args))
    assert len(converted) == len(dict(_flatten(model.parameters())))

    with pytest.raises(ValueError, match="lm_head.weight differs"):
        convert_hf_weights({**weights, "lm_head.weight": shared + 1}, args)
    untied = ModelArgs.from_config({**TINY, "tie_word_embeddings": False})
    with pytest.raises(ValueError, match="no lm_head.weight"):
        convert_hf_weights(weights, untied)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix[:-1], tree
