"""Gemma 3 multimodal checkpoints (``Gemma3ForConditionalGeneration``) load as their text
model: a tiny random checkpoint with a tiny vision tower, saved by transformers (and with
transformers 4.52+'s ``model.language_model.*`` names), gives transformers' text-only
logits; a sparse ``text_config`` is filled as ``Gemma3TextConfig`` fills it; mlx-lm's
conversion (float and 4-bit) loads here; ``convert`` and ``export`` write ``gemma3_text``."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.model_files.export import export_to_hf
from mlx_llm.model_files.loading import convert, describe, load_model
from mlx_llm.models import gemma3

from test_models_gemma import ATTENTION_MASK, INPUT_IDS, PROMPT, with_tokenizer
from tokenizer_fixtures import build_byte_level_bpe

TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, query_pre_attn_scalar=24, sliding_window=4, max_position_embeddings=128,
            num_hidden_layers=4, sliding_window_pattern=3, rope_local_base_freq=100.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0})
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28,
              patch_size=14)


def build(path, text=TEXT, **extra):
    """Save a tiny random ``Gemma3ForConditionalGeneration`` (random norms, so ``1 + w`` counts)."""
    torch.manual_seed(0)
    config = transformers.Gemma3Config(text_config=text, vision_config=VISION, mm_tokens_per_image=4,
                                       boi_token_index=125, eoi_token_index=126, image_token_index=127, **extra)
    config._attn_implementation = "eager"
    reference = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "norm" in name and "language_model" in name:
                parameter.normal_(0.0, 0.5)
    reference.save_pretrained(path, safe_serialization=True)
    return reference


def text_logits(reference, input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK) -> np.ndarray:
    """transformers' logits for text-only input (no pixel values)."""
    with torch.no_grad():
        return reference(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask)).logits.numpy()


def assert_text_logits_match(path, reference):
    model, config = load_model(path)
    assert config["model_type"] == "gemma3_text" and model.args.windows == [4, 4, None, 4]
    logits = np.array(model(mx.array(INPUT_IDS), mx.array(ATTENTION_MASK)))
    real = np.array(ATTENTION_MASK, dtype=bool)  # padded positions are not compared
    assert np.abs(logits[real] - text_logits(reference)[real]).max() <= 1e-4
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_text_logits_match_transformers(tmp_path, capfd, tied):
    reference = build(tmp_path, tie_word_embeddings=tied)
    names = list(mx.load(str(tmp_path / "model.safetensors")))
    assert any(name.startswith("language_model.model.") for name in names)
    assert any(name.startswith("vision_tower.") for name in names)
    model = assert_text_logits_match(tmp_path, reference)
    assert ("lm_head" in model) != tied
    said = capfd.readouterr().err.splitlines()
    assert [line for line in said if line.startswith("gemma3:")] == [
        f"gemma3: multimodal checkpoint, loading its text model only "
        f"({sum(name.startswith(('vision_tower.', 'multi_modal_projector.')) for name in names)} vision_tower / "
        "multi_modal_projector tensors skipped); convert and export write a gemma3_text folder"]


def test_transformers_4_52_names_load(tmp_path):
    """``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head``."""
    reference = build(tmp_path, tie_word_embeddings=False)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    renamed = {}
    for name, tensor in weights.items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name.removeprefix("language_model.model.")
        elif name.startswith("language_model.lm_head."):
            name = name.removeprefix("language_model.")
        else:
            name = "model." + name
        renamed[name] = tensor
    assert "lm_head.weight" in renamed and "model.language_model.norm.weight" in renamed
    mx.save_safetensors(str(tmp_path / "model.safetensors"), renamed, metadata={"format": "pt"})
    assert_text_logits_match(tmp_path, reference)


def test_sparse_text_config_is_filled_as_transformers_fills_it():
    """google/gemma-3-4b-it's text_config lists five keys; the rest are Gemma3TextConfig's defaults."""
    sparse = {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
              "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}
    ours = gemma3.ModelArgs.from_config({"model_type": "gemma3", "text_config": sparse, "eos_token_id": [1, 106]})
    filled = transformers.Gemma3TextConfig(**sparse).to_dict()
    theirs = gemma3.ModelArgs.from_config({**filled, "architectures": ["Gemma3ForCausalLM"]})
    assert ours == theirs
    assert (ours.num_kv_heads, ours.head_dim, ours.vocab_size, ours.local_rope_theta) == (4, 256, 262_208, 10_000.0)
    text = gemma3.language_model_config({"model_type": "gemma3", "text_config": sparse, "eos_token_id": [1, 106],
                                         "tie_word_embeddings": False, "quantization": {"bits": 4, "group_size": 64}})
    assert text["model_type"] == "gemma3_text" and text["eos_token_id"] == [1, 106]
    assert text["tie_word_embeddings"] is False and text["quantization"]["bits"] == 4
    assert text["architectures"] == ["Gemma3ForCausalLM"] and "vision_config" not in text
    # A task's config over a multimodal base (fine-tuning): its class and labels are kept.
    task = gemma3.language_model_config({"model_type": "gemma3", "text_config": sparse, "num_labels": 3,
                                         "architectures": ["Gemma3TextForSequenceClassification"]})
    assert gemma3.ModelArgs.from_config(task).task == "sequence_classification" and task["num_labels"] == 3
    assert gemma3.language_model_config(filled) is filled  # a text config as it is


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_byte_level_bpe(tmp_path_factory.mktemp("tokenizer"))


def test_info_convert_and_export_write_gemma3_text(tmp_path, tokenizer):
    reference = build(tmp_path / "hf")
    with_tokenizer(tmp_path / "hf", tokenizer)
    info = describe(tmp_path / "hf")
    assert info.model_type == "gemma3" and info.family == "gemma3" and info.context_length == 128
    assert any("only its gemma3_text language model loads" in note for note in info.notes)
    assert "sliding-window attention (window 4) in layers [0, 1, 3], global in [2]" in info.features
    expected = text_logits(reference, [PROMPT], [[1] * len(PROMPT)])
    convert(tmp_path / "hf", tmp_path / "mlx")
    written = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert written["model_type"] == "gemma3_text" and "text_config" not in written
    assert not any("vision" in name for name in mx.load(str(tmp_path / "mlx" / "model.safetensors")))
    model, _ = load_model(tmp_path / "mlx")
    assert np.abs(np.array(model(mx.array([PROMPT]))) - expected).max() <= 1e-4
    export_to_hf(tmp_path / "hf", tmp_path / "exported")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    assert type(exported).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        logits = exported(torch.tensor([PROMPT])).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-4


def test_mlx_lm_conversion_loads_here(tmp_path, tokenizer):
    """A multimodal folder ``mlx_lm.convert`` writes (``language_model.model.*``; float and 4-bit)
    gives mlx-lm's logits here."""
    mlx_lm = pytest.importorskip("mlx_lm")
    build(tmp_path / "hf")
    with_tokenizer(tmp_path / "hf", tokenizer)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    # What Hub configs hold and mlx-lm reads: transformers 4.x's rope keys, and the vocabulary at the top.
    config["text_config"] = gemma3.mlx_lm_config(config["text_config"])
    config["vocab_size"] = TEXT["vocab_size"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    ids = mx.array([PROMPT])
    for bits in (None, 4):
        out = tmp_path / f"mlx-lm-{bits}"
        mlx_lm.convert(str(tmp_path / "hf"), str(out), **({} if bits is None else dict(quantize=True, q_bits=4)))
        assert any(name.startswith("language_model.model.") for name in mx.load(str(out / "model.safetensors")))
        ours, config = load_model(out)
        theirs, _ = mlx_lm.load(str(out))
        assert config["model_type"] == "gemma3_text"
        assert getattr(ours.model.embed_tokens, "bits", None) == bits
        assert np.abs(np.array(ours(ids)) - np.array(theirs(ids))).max() <= 1e-5
