"""Sequence-to-sequence fine-tuning of T5 (``--task seq2seq``) on a tiny random checkpoint:
the loss and its gradients equal ``T5ForConditionalGeneration(labels=...)``, dropout acts in
training only, exact match is counted as greedy decoding defines it, full and LoRA runs go
through the command line, and predictions equal transformers' greedy ``generate``. Also the
task registry and the typed run record (`RunSettings`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from finetune_fixtures import FILLER, POSITIVE, write_jsonl
from mlx.utils import tree_flatten
from tokenizer_fixtures import build_sentencepiece

from mlx_llm import data
from mlx_llm.model_files.loading import load_model
from mlx_llm.models.t5_weights import convert_hf_weights
from mlx_llm.training.objectives import Seq2SeqObjective, shift_right
from mlx_llm.tasks import TASKS, RunSettings, get_task
from mlx_llm.tokenization import Tokenizer
from mlx_llm_cli.main import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = FILLER + POSITIVE
PAIRS = [("copy the quick fox", "quick fox"), ("copy data", "data"), ("copy the lazy dog over text", "lazy dog")]


def build_t5(folder: Path, dropout: float) -> Path:
    build_sentencepiece(folder, "t5")  # <pad> = 0, </s> = 1
    config = transformers.T5Config(
        vocab_size=Tokenizer.from_pretrained(folder).vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2,
        num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        dropout_rate=dropout,
    )
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    return build_t5(tmp_path_factory.mktemp("seq2seq") / "t5", dropout=0.1)


def copy_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        word = rng.choice(WORDS)
        records.append({"input": f"copy {word}", "target": word})
    return records


def encoded_batch(folder: Path, pairs=PAIRS) -> dict:
    examples = [data.Seq2SeqExample(source, target, index + 1) for index, (source, target) in enumerate(pairs)]
    encoded = data.encode_seq2seq(examples, Tokenizer.from_pretrained(folder), max_length=32)
    return next(iter(data.Seq2SeqBatches(encoded, len(pairs), 0, shuffle=False).evaluation_batches()))


def test_loss_and_gradients_match_transformers_on_a_padded_batch(tmp_path):
    folder = build_t5(tmp_path / "t5", dropout=0.0)
    batch = encoded_batch(folder)
    # The encoding is transformers' tokenizer(inputs, text_target=targets, truncation=True).
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    expected = hf_tokenizer([s for s, _ in PAIRS], text_target=[t for _, t in PAIRS], truncation=True, max_length=32)
    assert np.array(batch["labels"])[0, : len(expected["labels"][0])].tolist() == expected["labels"][0]
    assert np.array(batch["input_ids"])[2, : len(expected["input_ids"][2])].tolist() == expected["input_ids"][2]
    labels = np.array(batch["labels"])
    assert (labels == -100).any() and (np.array(batch["attention_mask"]) == 0).any()  # padded both sides

    reference = transformers.T5ForConditionalGeneration.from_pretrained(folder)
    reference.train()
    output = reference(input_ids=torch.tensor(np.array(batch["input_ids"]), dtype=torch.long),
                       attention_mask=torch.tensor(np.array(batch["attention_mask"]), dtype=torch.long),
                       labels=torch.tensor(labels, dtype=torch.long))
    output.loss.backward()
    reference_grads = {name: mx.array(p.grad.numpy()) for name, p in reference.named_parameters() if p.grad is not None}

    model, _ = load_model(folder)
    model.train()
    objective = Seq2SeqObjective()

    def loss_fn(model):
        return objective.sums(model, batch)["loss"] / objective.counts(batch)["loss"]

    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    assert float(loss) == pytest.approx(output.loss.item(), abs=1e-5)
    ours = dict(tree_flatten(grads))
    converted = convert_hf_weights(reference_grads, model.args)
    assert set(converted) == set(ours)
    for name, value in converted.items():
        np.testing.assert_allclose(np.array(ours[name]), np.array(value), atol=1e-5, err_msg=name)


def test_dropout_acts_in_training_mode_only(t5):
    model, _ = load_model(t5)
    assert model.args.dropout == pytest.approx(0.1)
    batch = encoded_batch(t5)
    objective = Seq2SeqObjective()
    evaluated = np.array(objective.logits(model, batch))
    np.testing.assert_array_equal(np.array(objective.logits(model, batch)), evaluated)
    real = np.array(batch["labels"]) != -100
    model.train()
    trained = np.array(objective.logits(model, batch))
    assert np.abs(trained - evaluated)[real].max() > 1e-3
    assert np.abs(np.array(objective.logits(model, batch)) - trained)[real].max() > 1e-3  # fresh masks each call
    model.eval()
    np.testing.assert_array_equal(np.array(objective.logits(model, batch)), evaluated)
    # The feed-forward's own dropout, between wi and wo (transformers' T5DenseGatedActDense), acts
    # when every other dropout is off.
    model.dropout = nn.Dropout(0.0)
    for layer in (*model.encoder.layers, *model.decoder.layers):
        layer.dropout = layer.self_attn.attention_dropout = None
    model.train()
    assert np.abs(np.array(objective.logits(model, batch)) - evaluated)[real].max() > 1e-3


class FixedLogits(nn.Module):
    """Stands for a model: returns the given logits whatever it is fed, and records the decoder inputs."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.args = type("Args", (), {"decoder_start_token_id": 0, "pad_token_id": 0})()
        self.fixed = mx.array(logits)
        self.decoder_inputs = None

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None):
        self.decoder_inputs = np.array(decoder_input_ids)
        return self.fixed


def test_exact_match_and_loss_by_hand():
    labels = np.array([[5, 6, 1, -100], [7, 1, -100, -100], [4, 1, -100, -100]])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 9)).astype(np.float32)
    for row, position, token in [(0, 0, 5), (0, 1, 6), (0, 2, 1), (1, 0, 7), (1, 1, 3), (2, 0, 4), (2, 1, 1)]:
        logits[row, position, token] = 10.0  # argmax: row 0 and row 2 right everywhere, row 1 wrong at its </s>
    batch = {"input_ids": mx.array([[3, 1], [3, 1], [3, 1]]), "attention_mask": mx.ones((3, 2)),
             "labels": mx.array(labels)}
    model = FixedLogits(logits)
    metrics = Seq2SeqObjective().evaluate(model, batch)
    assert model.decoder_inputs.tolist() == [[0, 5, 6, 1], [0, 7, 1, 0], [0, 4, 1, 0]]  # shifted right, -100 -> pad
    assert np.array(shift_right(mx.array(labels), 0, 0)).tolist() == model.decoder_inputs.tolist()
    matched, rows = metrics["exact_match"]
    assert (int(matched), int(rows)) == (2, 3)
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = labels != -100
    expected = -np.take_along_axis(log_probabilities, np.where(targets, labels, 0)[..., None], -1)[..., 0][targets]
    total, count = metrics["loss"]
    assert int(count) == 7 and float(total) == pytest.approx(expected.sum(), rel=1e-5)


def run_cli(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], catch_exceptions=False)


def test_full_run_learns_predicts_like_transformers_and_exports(t5, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", copy_records(64, seed=1))
    valid_records = copy_records(12, seed=2)
    valid = write_jsonl(tmp_path / "valid.jsonl", valid_records)
    run = tmp_path / "run"
    result = run_cli("finetune", "--task", "seq2seq", "--model", t5, "--train", train, "--valid", valid, "--out", run,
                     "--steps", 40, "--lr", "3e-3", "--batch-size", 16, "--eval-every", 10, "-q")
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["eval_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "eval_loss" in json.loads(line)]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    settings = RunSettings.from_json(run)
    assert settings.task == "seq2seq" and settings.best["metric"] == "loss"
    assert json.loads((run / "config.json").read_text())["architectures"] == ["T5ForConditionalGeneration"]

    output = tmp_path / "predictions.jsonl"
    assert run_cli("predict", "--model", run, "--input", valid, "--output", output, "--max-tokens", 8).exit_code == 0
    predictions = [json.loads(line)["target"] for line in output.read_text().splitlines()]
    metrics = json.loads(run_cli("evaluate", "--model", run, "--data", valid).output)
    assert metrics["loss"] == pytest.approx(settings.metrics["loss"], rel=1e-5)
    # Exact match is the share of generated targets equal to the references.
    hits = [prediction == record["target"] for prediction, record in zip(predictions, valid_records)]
    assert metrics["exact_match"] == pytest.approx(np.mean(hits)) and 0 < np.mean(hits)

    # The same weights in transformers decode the same targets.
    assert run_cli("export", run, "--to-hf", tmp_path / "hf").exit_code == 0
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5)
    for record, prediction in zip(valid_records, predictions):
        with torch.no_grad():
            ids = reference.generate(**tokenizer(record["input"], return_tensors="pt"), max_new_tokens=8,
                                     do_sample=False)
        assert prediction == tokenizer.decode(ids[0], skip_special_tokens=True)


def test_lora_run_adapts_both_stacks_and_is_read_back(t5, tmp_path):
    records = copy_records(16, seed=3)
    train = tmp_path / "train.csv"
    train.write_text("source,summary\n" + "".join(f"{r['input']},{r['target']}\n" for r in records))
    run = tmp_path / "run"
    result = run_cli("finetune", "--task", "seq2seq", "--model", t5, "--train", train, "--out", run, "--lora",
                     "--rank", 4, "--steps", 3, "--lr", "1e-2", "--text-column", "source", "--label-column",
                     "summary", "-q")
    assert result.exit_code == 0, result.output
    assert (run / "adapters.safetensors").is_file() and not (run / "model.safetensors").exists()
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["target_modules"] == ["q_proj", "v_proj"] and adapter_config["trainable_modules"] == []
    model, _ = load_model(run)
    adapted = [name for name, _ in tree_flatten(model.trainable_parameters())]
    for part in ("encoder.layers.0.self_attn.q_proj", "decoder.layers.1.cross_attn.v_proj"):
        assert f"{part}.lora_b" in adapted
    assert np.abs(np.array(model.decoder.layers[1].self_attn.v_proj.lora_b)).max() > 0
    # predict and evaluate read the run's field names back from finetune.json.
    predictions = run_cli("predict", "--model", run, "--input", train, "--max-tokens", 4)
    assert predictions.exit_code == 0 and len(predictions.stdout.splitlines()) == 16
    metrics = json.loads(run_cli("evaluate", "--model", run, "--data", train).output)
    assert set(metrics) == {"loss", "exact_match", "perplexity"}


def test_bad_setups_and_data_are_refused(t5, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", copy_records(4, seed=4))
    base = ["finetune", "--model", t5, "--out", tmp_path / "run", "--steps", 1, "-q"]
    result = CliRunner().invoke(main, [str(a) for a in base + ["--task", "classify", "--train", good]])
    assert result.exit_code == 2 and "encoder-decoder" in result.output and "'t5'" in result.output
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"input": "copy fox", "target": "fox"}, {"input": "copy"}])
    result = CliRunner().invoke(main, [str(a) for a in base + ["--task", "seq2seq", "--train", missing]])
    assert result.exit_code == 2 and "missing.jsonl:2" in result.output and "target" in result.output


def test_registry_and_run_settings_round_trip(tmp_path):
    assert list(TASKS) == ["classify", "tag", "lm", "seq2seq"]
    with pytest.raises(ValueError, match="unknown task 'summarize'; choose one of classify, tag, lm, seq2seq"):
        get_task("summarize")
    settings = RunSettings(task="classify", problem="single_label", labels=["a", "b"], metrics={"accuracy": 1.0})
    settings.to_json(tmp_path)
    assert RunSettings.from_json(tmp_path) == settings
    # A record of an earlier version (no seq2seq keys) and of a newer one (a key unknown here) still read.
    (tmp_path / "finetune.json").write_text(json.dumps({"task": "tag", "scheme": "IOB2", "labels": ["O"],
                                                        "max_length": 64, "added_later": 1}))
    read = RunSettings.from_json(tmp_path)
    assert (read.task, read.max_length, read.label_column, read.extra) == ("tag", 64, "label", {"added_later": 1})
    assert read.to_dict()["added_later"] == 1
    with pytest.raises(ValueError, match="does not apply to tag runs"):
        read.with_columns({"text_column": "sentence"}, get_task("tag").columns)
    with pytest.raises(FileNotFoundError, match="not a fine-tuned model folder"):
        RunSettings.from_json(tmp_path / "nowhere")
