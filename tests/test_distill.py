"""Distillation: students copied from the right teacher layers, gradients only in the
student, tiny end-to-end runs where the student learns to agree with the teacher,
and clear errors for impossible setups."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from finetune_fixtures import build_models, sentiment_rows, write_tsv
from mlx.utils import tree_flatten

from mlx_llm.distillation.distill import (
    DistillationObjective,
    DistillConfig,
    Distiller,
    LossWeights,
    default_layer_map,
    distill,
    student_from_config,
    student_from_teacher,
)
from mlx_llm.finetune import FinetuneConfig, evaluate, finetune
from mlx_llm.model_files.loading import load_model
from mlx_llm.models import gpt2
from mlx_llm_cli.main import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT fine-tuned on a separable sentiment task: the classification teacher."""
    root = tmp_path_factory.mktemp("distill")
    models = build_models(root / "models")
    train = write_tsv(root / "train.tsv", sentiment_rows(320, seed=1))
    valid = write_tsv(root / "valid.tsv", sentiment_rows(64, seed=2))
    config = FinetuneConfig(task="classify", model=str(models["bert"]), train=str(train), valid=str(valid),
                            out=str(root / "teacher"), epochs=4, batch_size=16, learning_rate=3e-3, seed=0)
    result = finetune(config, progress=False)
    assert result.metrics["accuracy"] >= 0.95
    return {"teacher": root / "teacher", "train": train, "valid": valid, "root": root}


def test_default_layer_map():
    assert default_layer_map(12, 6) == [0, 2, 4, 6, 8, 10]  # DistilBERT
    assert default_layer_map(6, 3) == [0, 2, 4]
    assert default_layer_map(6, 4) == [0, 2, 3, 5]
    assert default_layer_map(4, 1) == [0]
    with pytest.raises(ValueError, match="1 to 6 layers"):
        default_layer_map(6, 7)


def test_layer_copy_puts_teacher_tensors_in_the_right_student_layers():
    mx.random.seed(0)
    config = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 4, "n_head": 2}
    teacher = gpt2.Model(gpt2.ModelArgs.from_config(config))
    student, student_config = student_from_teacher(teacher, config, [1, 3])
    assert student_config["n_layer"] == 2 and len(student.layers) == 2
    ours, theirs = dict(tree_flatten(student.parameters())), dict(tree_flatten(teacher.parameters()))
    for name, value in ours.items():
        if name.startswith("model.layers."):
            index, _, rest = name.removeprefix("model.layers.").partition(".")
            source = f"model.layers.{[1, 3][int(index)]}.{rest}"
        else:
            source = name
        np.testing.assert_array_equal(np.array(value), np.array(theirs[source]), err_msg=name)
    with pytest.raises(ValueError, match="names teacher layer 4, but the teacher has 4 layers"):
        student_from_teacher(teacher, config, [0, 4])


def test_student_from_config_needs_the_teachers_vocabulary():
    config = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 4, "n_head": 2}
    student, student_config = student_from_config(config, {"n_layer": 1, "n_embd": 8})
    assert len(student.layers) == 1 and student.args.hidden_size == 8
    with pytest.raises(ValueError, match="vocab_size 60, the teacher 50: logit losses need the same vocabulary"):
        student_from_config(config, {"vocab_size": 60})


def test_gradients_reach_the_student_only(teacher_run):
    teacher, config = load_model(teacher_run["teacher"])
    teacher.freeze()
    student, _ = student_from_teacher(teacher, config, [0])
    distiller = Distiller(student, 32, 32, needs_projection=False)
    objective = DistillationObjective(teacher, "classify", LossWeights(soft=1.0, hard=1.0, cos=1.0), 2.0, [0])
    batch = {"input_ids": mx.array([[2, 30, 31, 3], [2, 40, 3, 0]]), "attention_mask": mx.array([[1, 1, 1, 1],
                                                                                               [1, 1, 1, 0]]),
             "labels": mx.array([0, 1])}
    before = {name: np.array(value) for name, value in tree_flatten(teacher.parameters())}

    def loss_fn(model):
        sums, counts = objective.sums(model, batch), objective.counts(batch)
        return sum(sums[name] / counts[name] for name in sums)

    loss, grads = nn.value_and_grad(distiller, loss_fn)(distiller)
    names = {name for name, _ in tree_flatten(grads)}
    assert names and all(name.startswith("student.") for name in names)
    assert any(np.abs(np.array(g)).max() > 0 for _, g in tree_flatten(grads))
    optimizer = __import__("mlx.optimizers", fromlist=["Adam"]).Adam(learning_rate=1e-2)
    optimizer.update(distiller, grads)
    for name, value in tree_flatten(teacher.parameters()):
        np.testing.assert_array_equal(np.array(value), before[name], err_msg=name)


def test_classification_distillation_end_to_end(teacher_run, tmp_path):
    """A fresh 1-layer student: its loss falls and its agreement with the teacher rises."""
    student_config = tmp_path / "student.json"
    student_config.write_text(json.dumps({"num_hidden_layers": 1, "intermediate_size": 32}))
    config = DistillConfig(task="classify", teacher=str(teacher_run["teacher"]), data=[str(teacher_run["train"])],
                           valid=str(teacher_run["valid"]), out=str(tmp_path / "student"),
                           student_config=str(student_config), epochs=4, learning_rate=3e-3, batch_size=16,
                           alpha_cos=1.0, cache_teacher=True, eval_every=5, log_every=1, speed_batches=2)
    result = distill(config, progress=False)
    losses = [record["loss"] for record in result.history if "loss" in record]
    agreements = [record["eval_agreement"] for record in result.history if "eval_agreement" in record]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert agreements[-1] > agreements[0] and agreements[-1] >= 0.9, agreements
    assert result.student_parameters < result.teacher_parameters
    assert result.student_metrics["accuracy"] >= 0.9
    assert (tmp_path / "student" / "teacher_logits.npy").is_file()
    report = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert report["student_parameters"] == result.student_parameters and report["speedup"] > 0
    # The student predicts and evaluates like a fine-tuned model.
    assert evaluate(tmp_path / "student", teacher_run["valid"])["accuracy"] == pytest.approx(
        result.student_metrics["accuracy"])


def test_cached_teacher_logits_equal_the_teacher(teacher_run, tmp_path):
    config = DistillConfig(task="classify", teacher=str(teacher_run["teacher"]), data=[str(teacher_run["train"])],
                           out=str(tmp_path / "student"), student_layers=1, steps=1, cache_teacher=True,
                           speed_batches=1)
    distill(config, progress=False)
    cached = np.load(tmp_path / "student" / "teacher_logits.npy")
    teacher, _ = load_model(teacher_run["teacher"])
    from mlx_llm.finetune import predict

    probabilities = np.array([[p["probabilities"]["negative"], p["probabilities"]["positive"]]
                              for p in predict(teacher_run["teacher"], teacher_run["train"])])
    expected = np.exp(cached - cached.max(-1, keepdims=True))
    np.testing.assert_allclose(expected / expected.sum(-1, keepdims=True), probabilities, atol=1e-5)


def test_lm_distillation_of_a_decoder(tmp_path):
    """Half-depth student of a tiny GPT: the KL to the teacher falls."""
    from mlx_llm.pretrain import pretrain

    text = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    text.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(300)))
    pretrain("gpt", [text], tmp_path / "teacher", preset={"n_layer": 4, "n_embd": 32, "n_head": 2},
             vocab_size=300, seq_len=32, batch_size=8, steps=30, warmup_steps=5, eval_every=0, save_every=0,
             progress=False)
    config = DistillConfig(task="lm", teacher=str(tmp_path / "teacher"), data=[str(text)], out=str(tmp_path / "s"),
                           student_layers=2, max_length=32, batch_size=8, steps=30, learning_rate=3e-3,
                           temperature=1.0, alpha_hard=0.0, log_every=1, speed_batches=2)
    result = distill(config, progress=False)
    assert result.layer_map == [0, 2]
    losses = [record["loss"] for record in result.history if "loss" in record]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert result.speedup > 1.0
    student, _ = load_model(tmp_path / "s")
    assert len(student.layers) == 2


def test_bad_setups_give_clear_errors(teacher_run, tmp_path):
    runner = CliRunner()
    base = ["distill", "--teacher", str(teacher_run["teacher"]), "--task", "classify", "--data",
            str(teacher_run["train"]), "--out", str(tmp_path / "s"), "--steps", "1", "-q"]
    result = runner.invoke(main, base + ["--layer-map", "0,5"])
    assert result.exit_code == 2 and "names teacher layer 5, but the teacher has 2 layers" in result.output
    result = runner.invoke(main, base)
    assert result.exit_code == 2 and "--student-layers" in result.output
    config = tmp_path / "wide.json"
    config.write_text(json.dumps({"vocab_size": 7}))
    result = runner.invoke(main, base + ["--student-config", str(config)])
    assert result.exit_code == 2 and "same vocabulary" in result.output
    result = runner.invoke(main, base[:4] + ["lm"] + base[5:] + ["--student-layers", "1"])
    assert result.exit_code == 2 and "causal_lm head" in result.output
    result = runner.invoke(main, base + ["--student-layers", "1", "--alpha-soft", "0", "--alpha-hard", "0"])
    assert result.exit_code == 2 and "every alpha is 0" in result.output


def test_masked_lm_distillation_of_an_encoder(tmp_path):
    """Task-agnostic distillation: a 1-layer student of a 2-layer BERT, on masked positions."""
    import torch
    import transformers
    import tokenizer_fixtures as fx

    folder = fx.build_wordpiece_bert(tmp_path / "teacher")
    vocab = len((folder / "vocab.txt").read_text().split("\n")) - 1
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64,
                                     initializer_range=0.2)  # a confident teacher: a KL worth learning
    transformers.BertForPreTraining(config).save_pretrained(folder)
    text = tmp_path / "text.txt"
    lines = fx.corpus_lines(200)
    text.write_text("\n\n".join(" . ".join(lines[i:i + 4]) + " ." for i in range(0, 200, 4)))
    result = distill(DistillConfig(task="mlm", teacher=str(folder), data=[str(text)], out=str(tmp_path / "s"),
                                   student_layers=1, max_length=32, batch_size=8, steps=40, learning_rate=3e-3,
                                   alpha_hard=0.0, alpha_cos=1.0, log_every=1, speed_batches=1), progress=False)
    losses = [record["loss"] for record in result.history if "loss" in record]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert {"loss", "accuracy", "agreement"} <= set(result.student_metrics)
    student, student_config = load_model(tmp_path / "s")
    assert student_config["architectures"] == ["BertForMaskedLM"] and len(student.layers) == 1
