"""Fine-tuning end to end on tiny random models: classification, tagging and
instruction tuning learn; LoRA runs predict like their fused models; runs
export to transformers; resume is exact; bad input gives clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from finetune_fixtures import (
    build_models,
    instruction_records,
    sentiment_rows,
    tagged_sentences,
    write_conll,
    write_jsonl,
    write_tsv,
)

from mlx_llm.finetune import FinetuneConfig, evaluate, finetune, fuse, predict, read_run
from mlx_llm_cli.main import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")



@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("finetune_models"))


def config_for(models, tmp_path, task, train, valid, model=None, **options) -> FinetuneConfig:
    model = models[model or ("llama" if task == "lm" else "bert")]
    defaults = dict(batch_size=16, learning_rate=3e-3, epochs=1, log_every=1, seed=0)
    return FinetuneConfig(task=task, model=str(model), train=str(train), out=str(tmp_path / "run"),
                          valid=None if valid is None else str(valid), **{**defaults, **options})


def test_classification_learns_and_predicts(models, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(320, seed=1))
    valid = write_tsv(tmp_path / "valid.tsv", sentiment_rows(64, seed=2))
    result = finetune(config_for(models, tmp_path, "classify", train, valid, epochs=4), progress=False)
    assert result.metrics["accuracy"] >= 0.95, result.metrics
    assert result.best["metric"] == "accuracy"
    run = tmp_path / "run"
    info = read_run(run)
    assert info["labels"] == ["negative", "positive"] and info["task"] == "classify"
    config = json.loads((run / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    # evaluate() reproduces the run's final validation metrics.
    assert evaluate(run, valid)["accuracy"] == pytest.approx(result.metrics["accuracy"])
    predictions = list(predict(run, valid))
    assert len(predictions) == 64
    for prediction in predictions:
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["label"] == max(prediction["probabilities"], key=prediction["probabilities"].get)
    expected = [label for _, label in sentiment_rows(64, seed=2)]
    accuracy = np.mean([p["label"] == label for p, label in zip(predictions, expected)])
    assert accuracy == pytest.approx(result.metrics["accuracy"])


def test_lora_run_equals_its_fused_model_and_exports(models, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(64, seed=3))
    result = finetune(config_for(models, tmp_path, "classify", train, train, lora=True, rank=4, steps=3),
                      progress=False)
    run = tmp_path / "run"
    trainable = result.trainable_parameters
    assert 0 < trainable < result.num_parameters / 5
    assert (run / "adapters.safetensors").is_file() and not (run / "model.safetensors").exists()
    assert json.loads((run / "adapter_config.json").read_text())["base_model"] == str(models["bert"].resolve())
    fused = fuse(run, tmp_path / "fused")
    from mlx_llm.model_files.loading import load_model

    lora_model, _ = load_model(run)
    fused_model, _ = load_model(fused)
    batch = {"input_ids": mx.array([[2, 30, 31, 32, 3], [2, 40, 41, 3, 0]]),
             "attention_mask": mx.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
    expected = np.array(lora_model(**batch))
    np.testing.assert_allclose(np.array(fused_model(**batch)), expected, atol=1e-5)
    assert evaluate(fused, train) == pytest.approx(evaluate(run, train))
    # The exported run loads in transformers with the same outputs.
    CliRunner().invoke(main, ["export", str(run), "--to-hf", str(tmp_path / "hf")], catch_exceptions=False)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert exported.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        logits = exported(input_ids=torch.tensor(np.array(batch["input_ids"])),
                          attention_mask=torch.tensor(np.array(batch["attention_mask"]))).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_gpt2_lora_adapts_the_fused_qkv_and_exports(models, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", instruction_records(16, seed=6))
    finetune(config_for(models, tmp_path, "lm", train, train, model="gpt2", lora=True, rank=4, steps=2,
                        learning_rate=1e-2), progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "adapter_config.json").read_text())["target_modules"] == ["qkv_proj"]
    from mlx_llm.model_files.loading import load_model

    lora_model, _ = load_model(run)
    adapter = lora_model.layers[1].self_attn.qkv_proj
    assert np.abs(np.array(adapter.lora_b)).max() > 0  # trained away from its zero start
    input_ids = mx.array([[5, 17, 33, 2, 64, 9]])
    expected = np.array(lora_model(input_ids))
    CliRunner().invoke(main, ["export", str(run), "--to-hf", str(tmp_path / "hf")], catch_exceptions=False)
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = exported(input_ids=torch.tensor(np.array(input_ids))).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_tagging_learns_entities_and_predicts_tags_per_word(models, tmp_path):
    train = write_conll(tmp_path / "train.txt", tagged_sentences(320, seed=4))
    valid_sentences = tagged_sentences(48, seed=5)
    valid = write_conll(tmp_path / "valid.txt", valid_sentences)
    result = finetune(config_for(models, tmp_path, "tag", train, valid, epochs=12), progress=False)
    assert result.metrics["f1"] >= 0.9, result.metrics
    info = read_run(tmp_path / "run")
    assert info["scheme"] == "IOB2" and set(info["labels"]) == {"O", "B-PER", "I-PER", "B-LOC"}
    predictions = list(predict(tmp_path / "run", valid))
    assert [p["words"] for p in predictions] == [[word for word, _ in s] for s in valid_sentences]
    # Word-level predictions score exactly the run's validation F1 (first sub-token of each word).
    from mlx_llm.training.metrics import entity_scores

    scores = entity_scores([p["tags"] for p in predictions], [[tag for _, tag in s] for s in valid_sentences])
    assert scores["f1"] == pytest.approx(result.metrics["f1"])


@pytest.mark.parametrize("quantize", [None, 4])
def test_instruction_tuning_lora_learns_the_completions(models, tmp_path, quantize):
    train = write_jsonl(tmp_path / "train.jsonl", instruction_records(96, seed=6))
    valid = write_jsonl(tmp_path / "valid.jsonl", instruction_records(16, seed=7))
    finetune(config_for(models, tmp_path, "lm", train, valid, lora=True, rank=8, epochs=10,
                                 learning_rate=1e-2, batch_size=8, quantize=quantize), progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record["eval_loss"] for record in history if "eval_loss" in record]
    assert evaluations[-1] < 0.5 * evaluations[0], evaluations
    if quantize:
        assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["quantization"]["bits"] == 4
    completions = list(predict(tmp_path / "run", valid, max_tokens=16))
    assert len(completions) == 16 and all(isinstance(c["completion"], str) for c in completions)
    matches = sum(c["completion"].strip().startswith(r["completion"].strip())
                  for c, r in zip(completions, instruction_records(16, seed=7)))
    assert matches >= 12, [(c["completion"], r["completion"]) for c, r in zip(completions, instruction_records(16, seed=7))]


def test_resume_continues_exactly(models, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(96, seed=8))
    whole = config_for(models, tmp_path / "whole", "classify", train, None, steps=6, save_every=3)
    finetune(whole, progress=False)
    interrupted = config_for(models, tmp_path / "resumed", "classify", train, None, steps=6, save_every=3)
    finetune(interrupted, progress=False)
    run = tmp_path / "resumed" / "run"
    # Forget the second half, as if the process had died after step 3.
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-0000006")
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 3]
    (run / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    finetune(interrupted, resume=True, progress=False)

    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(line)]

    assert losses(run) == losses(tmp_path / "whole" / "run")


def run_cli(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def test_bad_input_is_reported_with_file_and_line(models, tmp_path):
    good = write_tsv(tmp_path / "good.tsv", sentiment_rows(8, seed=9))
    base = ["finetune", "--model", models["bert"], "--out", tmp_path / "run", "--steps", "1", "-q"]

    no_label = tmp_path / "no_label.tsv"
    no_label.write_text("sentence\tstars\nfine movie\t5\n")
    result = run_cli(*base, "--task", "classify", "--train", no_label)
    assert result.exit_code == 2 and "no_label.tsv" in result.output and "label" in result.output

    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("sentence\tlabel\ngood movie\tpositive\nodd movie\tneutral\n")
    result = run_cli(*base, "--task", "classify", "--train", good, "--valid", unknown)
    assert result.exit_code == 2 and "unknown.tsv:3" in result.output and "neutral" in result.output

    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    result = run_cli(*base, "--task", "classify", "--train", empty)
    assert result.exit_code == 2 and "empty.tsv" in result.output

    conll = tmp_path / "bad.txt"
    conll.write_text("Peter NN B-PER\nlives NN\n")
    result = run_cli(*base, "--task", "tag", "--train", conll)
    assert result.exit_code == 2 and "bad.txt:2" in result.output and "columns" in result.output

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    result = run_cli("finetune", "--model", models["llama"], "--out", tmp_path / "run", "--steps", "1",
                     "--task", "lm", "--train", chat)
    assert result.exit_code == 2 and "chat.jsonl:1" in result.output and "assistant" in result.output

    result = run_cli(*base, "--task", "lm", "--train", write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}]))
    assert result.exit_code == 2 and "decoder" in result.output

    result = run_cli(*base, "--task", "classify", "--train", good, "--quantize", "4")
    assert result.exit_code == 2 and "--lora" in result.output

    result = run_cli("predict", "--model", models["bert"], "--input", good)
    assert result.exit_code == 2 and "finetune.json" in result.output
