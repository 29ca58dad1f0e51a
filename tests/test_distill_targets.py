"""Distillation asks its task: each `LogitTargets` (the soft and hard terms, their positions
and counts) equals the NumPy formula, the registry of distillation tasks picks the targets
of each task and problem, and `DistillationObjective` sums exactly what the targets say."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.distillation.distill import TASKS, DistillConfig, DistillationObjective, Distiller, LossWeights
from mlx_llm.distillation.students import student_from_teacher
from mlx_llm.distillation.targets import (
    ClassTargets,
    MultiLabelTargets,
    NextTokenTargets,
    RegressionTargets,
    TagTargets,
    TokenTargets,
)
from mlx_llm.distillation.tasks import DISTILL_TASKS, get_distillation_task
from mlx_llm.models import gpt2
from mlx_llm.training.objectives import SequenceClassificationObjective
from mlx_llm.pretrain import build_model
from mlx_llm.tasks import get_task

T = 2.0


def log_softmax(logits, temperature=1.0):
    scaled = logits / temperature
    scaled = scaled - scaled.max(-1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))


def kl(log_p, log_q):
    """KL(p || q) over the last axis."""
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def bce(logits, targets):
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def random(shape, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def close(value, expected):
    assert float(value) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_sequence_targets_match_numpy():
    student, teacher = random((4, 3), 0), random((4, 3), 1)
    labels = np.array([0, 2, 1, 2])
    targets = ClassTargets()
    assert targets.positions({"labels": mx.array(labels)}) is None and targets.serves_pkd and targets.agreement
    close(targets.soft(mx.array(student), mx.array(teacher), None, T),
          T ** 2 * kl(log_softmax(teacher, T), log_softmax(student, T)).sum())
    batch = {"labels": mx.array(labels)}
    close(targets.hard(mx.array(student), batch), -log_softmax(student)[np.arange(4), labels].sum())
    assert int(targets.hard_count(batch)) == 4

    multi_hot = (random((4, 3), 2) > 0).astype(np.float32)
    targets = MultiLabelTargets()
    assert not targets.agreement and targets.serves_pkd
    close(targets.soft(mx.array(student), mx.array(teacher), None, T),
          T ** 2 * bce(student / T, sigmoid(teacher / T)).sum() / 3)
    batch = {"labels": mx.array(multi_hot)}
    close(targets.hard(mx.array(student), batch), bce(student, multi_hot).sum())
    assert int(targets.hard_count(batch)) == 12

    values, teacher_values = random((4, 1), 3), random((4, 1), 4)
    gold = random((4,), 5)
    targets = RegressionTargets()
    assert not targets.agreement
    close(targets.soft(mx.array(values), mx.array(teacher_values), None, T), ((values - teacher_values) ** 2).sum())
    batch = {"labels": mx.array(gold)}
    close(targets.hard(mx.array(values), batch), ((values[:, 0] - gold) ** 2).sum())
    assert int(targets.hard_count(batch)) == 4


def token_batch():
    attention_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    labels = np.array([[2, -100, 4, 1, -100], [-100, 0, 6, -100, -100]])
    return attention_mask, labels


def test_token_targets_match_numpy():
    student, teacher = random((2, 5, 7), 6), random((2, 5, 7), 7)
    attention_mask, labels = token_batch()
    student_log, teacher_log = log_softmax(student, T), log_softmax(teacher, T)
    labelled = labels != -100
    hard = -sum(log_softmax(student)[row, column, labels[row, column]] for row, column in zip(*np.nonzero(labelled)))

    # Tagging: soft on every real token, hard on each word's first sub-token.
    targets = TagTargets()
    batch = {"attention_mask": mx.array(attention_mask), "labels": mx.array(labels)}
    positions = targets.positions(batch)
    np.testing.assert_array_equal(np.array(positions), attention_mask == 1)
    close(targets.soft(mx.array(student), mx.array(teacher), positions, T),
          T ** 2 * (kl(teacher_log, student_log) * attention_mask).sum())
    close(targets.hard(mx.array(student), batch), hard)
    assert int(targets.hard_count(batch)) == labelled.sum() and not targets.serves_pkd

    # Masked LM: both terms on the masked positions only.
    targets = TokenTargets("mlm_labels")
    batch = {"attention_mask": mx.array(attention_mask), "mlm_labels": mx.array(labels)}
    positions = targets.positions(batch)
    np.testing.assert_array_equal(np.array(positions), labelled)
    close(targets.soft(mx.array(student), mx.array(teacher), positions, T),
          T ** 2 * (kl(teacher_log, student_log) * labelled).sum())
    close(targets.hard(mx.array(student), batch), hard)
    assert int(targets.hard_count(batch)) == labelled.sum()

    # Causal LM: next tokens, forward KL x T^2, reverse KL or generalized JSD (no T^2).
    batch = {"targets": mx.array(labels)}
    forward, reverse, jsd = NextTokenTargets("forward"), NextTokenTargets("reverse"), NextTokenTargets("jsd", 0.3)
    positions = forward.positions(batch)
    np.testing.assert_array_equal(np.array(positions), labelled)
    close(forward.soft(mx.array(student), mx.array(teacher), positions, T),
          T ** 2 * (kl(teacher_log, student_log) * labelled).sum())
    close(reverse.soft(mx.array(student), mx.array(teacher), positions, T),
          (kl(student_log, teacher_log) * labelled).sum())
    mixture = np.log(0.3 * np.exp(teacher_log) + 0.7 * np.exp(student_log))
    close(jsd.soft(mx.array(student), mx.array(teacher), positions, T),
          ((0.3 * kl(teacher_log, mixture) + 0.7 * kl(student_log, mixture)) * labelled).sum())
    close(forward.hard(mx.array(student), batch), hard)
    with pytest.raises(ValueError, match="unknown divergence 'kl'; choose one of"):
        NextTokenTargets("kl")


def test_registry_picks_the_targets_of_each_task_and_problem():
    assert TASKS == tuple(DISTILL_TASKS) == ("mlm", "classify", "tag", "lm")
    classify = get_distillation_task("classify")
    assert classify.teacher_tasks == (get_task("classify").model_task,) and classify.caches_teacher
    assert type(classify.targets()) is ClassTargets
    assert type(classify.targets("multi_label")) is MultiLabelTargets
    assert type(classify.targets("regression")) is RegressionTargets
    tag = get_distillation_task("tag")
    assert tag.teacher_tasks == ("token_classification",) and type(tag.targets()) is TagTargets
    mlm, lm = get_distillation_task("mlm"), get_distillation_task("lm")
    assert mlm.teacher_tasks == ("masked_lm", "pretraining") and not mlm.caches_teacher
    assert mlm.targets().labels_key == "mlm_labels"
    assert lm.teacher_tasks == ("causal_lm",) and lm.targets(divergence="reverse").labels_key == "targets"
    with pytest.raises(ValueError, match="unknown task 'seq2seq'; choose one of mlm, classify, tag, lm"):
        get_distillation_task("seq2seq")
    with pytest.raises(ValueError, match="unknown task 'mlm'; choose one of classify, tag, lm, seq2seq"):
        get_task("mlm")
    with pytest.raises(ValueError, match="unknown task 'seq2seq'"):
        DistillConfig(task="seq2seq", teacher="t", data=["d"], out="o", student_layers=1)


def tiny_gpt2(task: str, num_labels: int = 3):
    mx.random.seed(0)
    config = {"model_type": "gpt2", "vocab_size": 40, "n_positions": 16, "n_embd": 16, "n_layer": 2, "n_head": 2,
              "architectures": [f"GPT2For{task}"], "num_labels": num_labels, "pad_token_id": 0}
    teacher = gpt2.Model(gpt2.ModelArgs.from_config(config))
    mx.eval(teacher.parameters())
    teacher.eval()
    student, _ = student_from_teacher(teacher, config, [1])
    student.eval()  # no dropout: the sums are compared with a second forward pass
    return teacher, student


def test_objective_sums_what_the_tag_targets_say():
    teacher, student = tiny_gpt2("TokenClassification")
    attention_mask, labels = token_batch()
    labels = np.where(labels >= 0, labels % 3, labels)
    batch = {"input_ids": mx.array(np.arange(10).reshape(2, 5) + 1), "attention_mask": mx.array(attention_mask),
             "labels": mx.array(labels)}
    objective = DistillationObjective(teacher, "tag", LossWeights(soft=0.5, hard=2.0), T, [1])
    sums, counts = objective.sums(Distiller(student, 16, 16, needs_projection=False), batch), objective.counts(batch)
    student_logits, teacher_logits = student(batch["input_ids"], batch["attention_mask"]), teacher(
        batch["input_ids"], batch["attention_mask"])
    targets = TagTargets()
    close(sums["soft"], 0.5 * float(targets.soft(student_logits, teacher_logits, targets.positions(batch), T)))
    close(sums["hard"], 2.0 * float(targets.hard(student_logits, batch)))
    assert int(counts["soft"]) == attention_mask.sum() and int(counts["hard"]) == (labels != -100).sum()
    encoder = build_model({"model_type": "bert", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
                           "architectures": ["BertForTokenClassification"], "num_labels": 3})
    with pytest.raises(ValueError, match="the PKD term matches \\[CLS\\] states: it serves --task classify"):
        DistillationObjective(encoder, "tag", LossWeights(pkd=1.0), T, [1])
    with pytest.raises(ValueError, match="--task lm needs a teacher with a causal_lm head; here is a gpt2 "
                                         "token_classification model"):
        get_distillation_task("lm").check_teacher(teacher, "here")


def test_agreement_only_where_outputs_are_distributions():
    teacher, student = tiny_gpt2("SequenceClassification")
    batch = {"input_ids": mx.array([[3, 4, 5, 6], [7, 8, 9, 0]]), "attention_mask": mx.array([[1, 1, 1, 1],
                                                                                           [1, 1, 1, 0]])}
    distiller = Distiller(student, 16, 16, needs_projection=False)
    single = DistillationObjective(teacher, "classify", LossWeights(), T, [1],
                                   task_objective=SequenceClassificationObjective("single_label"))
    metrics = single.evaluate_dataset(distiller, [{**batch, "labels": mx.array([0, 2])}])
    same = np.array(student(batch["input_ids"], batch["attention_mask"]).argmax(-1)
                    == teacher(batch["input_ids"], batch["attention_mask"]).argmax(-1))
    assert metrics["agreement"] == pytest.approx(same.mean())
    multi = DistillationObjective(teacher, "classify", LossWeights(), T, [1], problem="multi_label",
                                  task_objective=SequenceClassificationObjective("multi_label"))
    multi_hot = mx.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    metrics = multi.evaluate_dataset(distiller, [{**batch, "labels": multi_hot}])
    assert "agreement" not in metrics and "micro_f1" in metrics


def test_tag_distillation_of_a_token_classifier_end_to_end(tmp_path):
    """``--task tag`` from a checkpoint with a token-classification head: cached per-token teacher
    logits (padded to the longest example), the loss falls, and the student is a tagging run."""
    import torch
    import transformers
    import tokenizer_fixtures as fx
    from finetune_fixtures import tagged_sentences, write_conll

    from mlx_llm.distillation.distill import distill
    from mlx_llm.finetune import predict
    from mlx_llm.tasks import RunSettings

    folder = fx.build_wordpiece_bert(tmp_path / "teacher")
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len((folder / "vocab.txt").read_text().split("\n")) - 1, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
        id2label=dict(enumerate(tags)), label2id={tag: index for index, tag in enumerate(tags)})
    transformers.BertForTokenClassification(config).save_pretrained(folder)
    train = write_conll(tmp_path / "train.txt", tagged_sentences(48, seed=1))
    valid = write_conll(tmp_path / "valid.txt", tagged_sentences(16, seed=2))
    result = distill(DistillConfig(task="tag", teacher=str(folder), data=[str(train)], valid=str(valid),
                                   out=str(tmp_path / "s"), student_layers=1, batch_size=8, steps=24,
                                   learning_rate=3e-3, alpha_hard=0.0, alpha_hidden=1.0, cache_teacher=True,
                                   log_every=1, speed_batches=1), progress=False)
    losses = [record["loss"] for record in result.history if "loss" in record]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    assert {"f1", "agreement"} <= set(result.student_metrics)
    cached = np.load(tmp_path / "s" / "teacher_logits.npy")
    assert cached.shape[0] == 48 and cached.shape[2] == len(tags)
    settings = RunSettings.from_json(tmp_path / "s")
    assert settings.task == "tag" and settings.labels == tags
    predictions = list(predict(tmp_path / "s", valid))
    assert len(predictions) == 16 and all(set(p["tags"]) <= set(tags) for p in predictions)
