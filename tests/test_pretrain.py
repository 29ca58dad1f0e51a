"""Pretraining from the command line: GPT and BERT runs that load like any model,
resume, evaluation, and bad input."""

import json
import random

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_llm.model_files.loading import load
from mlx_llm.pretrain import evaluate_text, pretrain, pretrain_optimization
from mlx_llm.training.trainer import OptimizationConfig
from mlx_llm_cli.main import main

WORDS = "the king queen lord lady sword crown castle night day love war peace heart blood fair foul".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    documents = []
    for _ in range(30):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "."
                     for _ in range(8)]
        documents.append("\n".join(sentences))
    (folder / "train.txt").write_text("\n\n".join(documents[:26]) + "\n")
    (folder / "valid.txt").write_text("\n\n".join(documents[26:]) + "\n")
    with open(folder / "docs.jsonl", "w") as handle:
        for document in documents:
            handle.write(json.dumps({"text": document}) + "\n")
    return folder


def run(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def gpt_arguments(corpus, out, *extra):
    return ["train", "--arch", "gpt", "--data", corpus / "train.txt", "--valid", corpus / "valid.txt", "--out", out,
            "--vocab-size", 300, "--seq-len", 16, "--batch-size", 4, "--warmup", 2, "--eval-every", 4,
            "--save-every", 4, "--quiet", *extra]


def test_gpt_run_trains_loads_generates_and_evaluates(corpus, tmp_path):
    out = tmp_path / "gpt"
    result = run(*gpt_arguments(corpus, out, "--steps", 12, "--lr", 3e-3))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert evaluations[-1] < evaluations[0] and evaluations[-1] < np.log(300) - 0.5  # it learns
    assert [m["step"] for m in metrics if "eval_loss" in m] == [4, 8, 12]
    assert (out / "loss_curve.png").exists()
    # The run folder is a model like any other.
    model, tokenizer = load(out)
    text = CliRunner().invoke(main, ["generate", "-m", str(out), "-p", "The king", "--max-tokens", "5", "-q"])
    assert text.exit_code == 0, text.output
    metrics_eval = evaluate_text(model, tokenizer, [corpus / "valid.txt"], seq_len=16)
    assert metrics_eval["loss"] == pytest.approx(summary["eval_loss"], rel=0.05)
    assert metrics_eval["nats_per_character"] == pytest.approx(
        metrics_eval["loss"] * metrics_eval["tokens"] / metrics_eval["characters"], rel=1e-6)
    printed = json.loads(run("eval", out, "--data", corpus / "valid.txt", "--seq-len", 16).stdout)
    assert printed["loss"] == pytest.approx(metrics_eval["loss"], rel=1e-5)
    assert printed["bits_per_byte"] == pytest.approx(metrics_eval["nats_per_character"] / np.log(2), rel=1e-6)


def test_gpt_resume_equals_uninterrupted_run(corpus, tmp_path):
    straight = tmp_path / "straight"
    assert run(*gpt_arguments(corpus, straight, "--steps", 8)).exit_code == 0
    interrupted = tmp_path / "interrupted"
    assert run(*gpt_arguments(corpus, interrupted, "--steps", 8)).exit_code == 0  # trains the same tokenizer
    # Drop the final checkpoint and metrics after step 4, as if the run had stopped there.
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "step-0000008")
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    (interrupted / "metrics.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["step"] <= 4) + "\n")
    (interrupted / "model.safetensors").unlink()  # an interrupted run has no final model yet
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        (interrupted / name).unlink()
    result = run(*gpt_arguments(corpus, interrupted, "--steps", 8), "--resume")
    assert result.exit_code == 0, result.output

    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(line)]

    assert losses(interrupted) == losses(straight)
    # Resuming with other settings is refused and changes nothing.
    before = (interrupted / "model.safetensors").read_bytes()
    result = run(*gpt_arguments(corpus, interrupted, "--steps", 8, "--seq-len", 8), "--resume")
    assert result.exit_code == 2 and "other settings" in result.output
    assert (interrupted / "model.safetensors").read_bytes() == before


def test_bert_run_reports_mlm_and_nsp(corpus, tmp_path):
    out = tmp_path / "bert"
    result = run("train", "--arch", "bert", "--data", corpus / "docs.jsonl", "--out", out, "--vocab-size", 300,
                 "--seq-len", 32, "--batch-size", 8, "--steps", 6, "--warmup", 1, "--eval-every", 3, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    for key in ("eval_mlm_loss", "eval_nsp_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert key in summary
    assert 0.0 <= summary["eval_nsp_accuracy"] <= 1.0
    model, tokenizer = load(out)
    assert tokenizer.mask_token_id is not None and model.args.has_mlm_head and model.args.has_nsp_head


def test_bad_input(corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run("train", "--arch", "gpt", "--data", empty, "--out", tmp_path / "a", "--vocab-size", 300, "--steps", 2)
    assert result.exit_code == 2 and "empty" in result.output
    short = tmp_path / "short.txt"
    short.write_text("The king. " * 40)
    result = run("train", "--arch", "gpt", "--data", short, "--out", tmp_path / "b", "--vocab-size", 270,
                 "--seq-len", 512, "--steps", 2, "--quiet")
    assert result.exit_code == 2 and "block" in result.output
    result = run("train", "--arch", "gpt", "--data", corpus / "train.txt", "--out", tmp_path / "c",
                 "--vocab-size", 100000, "--steps", 2)
    assert result.exit_code == 2 and "vocab_size" in result.output
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    result = run(*gpt_arguments(corpus, existing, "--steps", 2))
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (existing / "notes.txt").read_text() == "keep me"
    result = run("train", "--arch", "gpt", "--data", corpus / "train.txt", "--out", tmp_path / "d", "--steps", 2)
    assert result.exit_code == 2 and "--vocab-size" in result.output
    result = run("train", "--arch", "gpt", "--data", corpus / "train.txt", "--out", tmp_path / "e",
                 "--vocab-size", 300, "--steps", 2, "--dtype", "float16")
    assert result.exit_code == 2


def test_pretrain_takes_an_optimization_config_or_its_keywords(corpus, tmp_path):
    # The keywords build one OptimizationConfig, with pretraining's defaults for those left out.
    assert pretrain_optimization(steps=10) == OptimizationConfig(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, weight_decay=0.1, steps=10)
    assert pretrain_optimization(epochs=2, learning_rate=0.5, grad_accum=3).min_learning_rate == 0.05
    with pytest.raises(ValueError, match="give exactly one of steps and epochs"):
        pretrain_optimization()
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        pretrain("gpt", [corpus / "train.txt"], tmp_path / "bad", vocab_size=300, steps=2, learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"not both \(learning_rate, steps given as keywords\)"):
        pretrain("gpt", [corpus / "train.txt"], tmp_path / "both", vocab_size=300, learning_rate=1e-3, steps=2,
                 optimization=OptimizationConfig(steps=2))
    with pytest.raises(TypeError, match="unexpected keyword arguments: learning_rte"):
        pretrain("gpt", [corpus / "train.txt"], tmp_path / "typo", vocab_size=300, learning_rte=1e-3,
                 optimization=OptimizationConfig(steps=2))
    assert not any((tmp_path / name).exists() for name in ("bad", "both", "typo"))  # refused before any file
