"""Fine-tuning and distillation take the newer decoder families (Qwen3, SmolLM3,
OLMo 2) like the Llama family: a LoRA run predicts like its fused model, a
classifier head trains, and a student copies a subset of the teacher's layers."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from finetune_fixtures import sentiment_rows, write_tsv
from tokenizer_fixtures import build_byte_level_bpe

from mlx_llm.distillation.distill import DistillConfig, distill, student_from_teacher
from mlx_llm.finetune import FinetuneConfig, finetune, fuse
from mlx_llm.model_files.loading import load_model

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SIZES = dict(vocab_size=400, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.1)
BUILDERS = {
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SIZES, num_hidden_layers=2, head_dim=16)),
    "smollm3": lambda: transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
        **SIZES, num_hidden_layers=2, no_rope_layers=[1, 0])),
    "olmo2": lambda: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**SIZES, num_hidden_layers=2)),
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_model(request, tmp_path_factory):
    folder = build_byte_level_bpe(tmp_path_factory.mktemp(request.param) / "model")
    torch.manual_seed(0)
    BUILDERS[request.param]().save_pretrained(folder)
    return folder


def test_lora_classifier_trains_and_equals_its_fused_model(family_model, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(32, seed=3))
    config = FinetuneConfig(task="classify", model=str(family_model), train=str(train), out=str(tmp_path / "run"),
                            lora=True, rank=4, steps=3, batch_size=8, learning_rate=3e-3, seed=0)
    result = finetune(config, progress=False)
    assert 0 < result.trainable_parameters < result.num_parameters / 5
    lora_model, _ = load_model(tmp_path / "run")
    fused_model, _ = load_model(fuse(tmp_path / "run", tmp_path / "fused"))
    batch = {"input_ids": mx.array([[5, 30, 31, 32, 7], [5, 40, 41, 7, 0]]),
             "attention_mask": mx.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
    # Decoder classifiers return their logits (issue 14's one output type is not there yet).
    expected = np.array(lora_model(**batch))
    assert expected.shape == (2, 2) and np.isfinite(expected).all()
    np.testing.assert_allclose(np.array(fused_model(**batch)), expected, atol=1e-5)


def test_student_copies_every_other_layer(family_model, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    config = DistillConfig(teacher=str(family_model), task="lm", data=[str(text)], out=str(tmp_path / "student"),
                           student_layers=1, max_length=32, batch_size=2, steps=1, seed=0)
    distill(config, progress=False)
    student, _ = load_model(tmp_path / "student")
    teacher, _ = load_model(family_model)
    assert len(student.layers) == 1 and len(teacher.layers) == 2
    ids = mx.array([[5, 30, 31, 32, 7]])
    logits = student(ids)
    assert logits.shape == teacher(ids).shape and np.isfinite(np.array(logits)).all()


def test_student_layers_keep_their_per_layer_settings(family_model):
    teacher, _ = load_model(family_model)
    config = json.loads((family_model / "config.json").read_text())
    ids = mx.array([[5, 30, 31, 32, 7, 9, 11]])
    # Every layer copied in order: the student is the teacher.
    whole, _ = student_from_teacher(teacher, config, [0, 1])
    np.testing.assert_array_equal(np.array(whole(ids)), np.array(teacher(ids)))
    # One layer: it keeps the teacher layer's own settings (SmolLM3: layer 1 has no rotary positions).
    second, second_config = student_from_teacher(teacher, config, [1])
    if hasattr(teacher.args, "rope_layers"):
        assert second.args.rope_layers == (teacher.args.rope_layers[1],) == (False,)
        assert second_config["no_rope_layers"] == [0]
