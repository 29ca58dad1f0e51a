"""The training and data commands of the CLI report mistakes in one line with a
fitting exit code (2: bad input, 3: a diverged run), never a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_llm_cli.main import main

WORDS = "the cat sat on a mat and dog ran far away from home with big red ball".split()


def _text(path: Path, sentences: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=10)) + "." for _ in range(sentences)) + "\n")
    return path


def _invoke(*args: str):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert not isinstance(result.exception, (AttributeError, KeyError, TypeError)), result.exception
    return result


def _error_line(result) -> str:
    """The one line of an error: the last line of stderr, which must start with Error:."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


TINY = ("--arch", "gpt", "--vocab-size", "300", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "-q")


# --- 1. a diverged run -------------------------------------------------------------------


def test_diverged_train_exits_3_naming_step_checkpoint_and_options(tmp_path):
    corpus = _text(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    result = _invoke("train", *TINY, "--data", corpus, "--out", out, "--steps", "6", "--lr", "1e6", "--warmup", "0",
                     "--save-every", "2")
    assert result.exit_code == 3, result.output
    line = _error_line(result)
    assert "training diverged: the loss became nan at step" in line
    assert "checkpoints/step-0000002 is kept" in line and "a lower --lr" in line and "--warmup" in line
    assert (out / "checkpoints" / "step-0000002").is_dir()


@pytest.mark.parametrize("command, target, option", [
    ("finetune", "mlx_llm.finetune.finetune", "--warmup-ratio"),
    ("distill", "mlx_llm.distillation.distill.distill", "--warmup-ratio"),
])
def test_every_training_command_exits_3_when_the_loss_diverges(tmp_path, monkeypatch, command, target, option):
    from mlx_llm.training.trainer import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("the loss became inf at step 7", step=7, checkpoint=None, loss=float("inf"))

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, diverge)
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\ngood\tpos\n")
    if command == "finetune":
        args = ["finetune", "--task", "classify", "--model", tmp_path, "--train", data, "--out", tmp_path / "o"]
    else:
        args = ["distill", "--teacher", tmp_path, "--task", "classify", "--data", data, "--out", tmp_path / "o",
                "--student-layers", "1"]
    result = _invoke(*args, "--dtype", "bfloat16") if command == "finetune" else _invoke(*args)
    assert result.exit_code == 3, result.output
    line = _error_line(result)
    assert "loss became inf at step 7; no checkpoint was written yet" in line and option in line
    assert ("--dtype float32" in line) == (command == "finetune")


# --- 2. train --config -----------------------------------------------------------------------


@pytest.mark.parametrize("content, fragments", [
    ('{"n_embd": 32, "vocab_size": 9, "n_layers": 2}', ["missing n_layer, n_head", "unknown n_layers, vocab_size"]),
    ('{"n_embd": 32,', ["is not valid JSON", "line 1, column 15"]),
    ("[32, 2, 2]", ["must be a JSON object"]),
])
def test_config_file_problems_are_named_before_any_work(tmp_path, content, fragments):
    config = tmp_path / "size.json"
    config.write_text(content)
    out = tmp_path / "run"
    result = _invoke("train", *TINY, "--data", _text(tmp_path / "c.txt"), "--out", out, "--steps", "1",
                     "--config", config)
    assert result.exit_code == 2
    line = _error_line(result)
    assert f"--config {config}" in line and all(fragment in line for fragment in fragments), line
    assert not out.exists()  # no tokenizer was trained, no folder made


def test_config_name_that_is_no_preset(tmp_path):
    result = _invoke("train", *TINY, "--data", _text(tmp_path / "c.txt"), "--out", tmp_path / "r", "--steps", "1",
                     "--config", "huge")
    assert result.exit_code == 2 and "neither a gpt size (tiny, demo, small, gpt2)" in _error_line(result)


# --- 3. output paths -------------------------------------------------------------------------


def test_predict_output_into_missing_folder_is_refused_and_nothing_created(tmp_path):
    data = tmp_path / "in.tsv"
    data.write_text("sentence\tlabel\ngood\tpos\n")
    result = _invoke("predict", "--model", tmp_path, "--input", data, "--output", tmp_path / "no" / "p.jsonl")
    assert result.exit_code == 2
    assert _error_line(result) == (f"Error: --output {tmp_path / 'no' / 'p.jsonl'}: the folder {tmp_path / 'no'} "
                                   "does not exist; create it first")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_convert_into_the_working_folder_is_refused(tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = _invoke("convert", "weights-that-are-not-read", "--out", out, "--overwrite")
    assert result.exit_code == 2
    assert "is the current folder or holds it; name a new folder inside it instead" in _error_line(result)
    assert work.is_dir() and list(tmp_path.iterdir()) == [work]


def test_convert_into_non_empty_folder_needs_overwrite(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "weights" / "demo"
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke("convert", demo, "--out", out)
    assert result.exit_code == 2 and "already exists and is not empty" in _error_line(result)
    assert (out / "keep.txt").read_text() == "mine"


# --- 4. --vocab-size -------------------------------------------------------------------------


def test_vocab_size_minimum_is_the_real_one(tmp_path):
    from mlx_llm.tokenizer_training import min_vocab_size
    from mlx_llm_cli.train import MIN_VOCAB_SIZE

    assert MIN_VOCAB_SIZE == min_vocab_size() == 262
    corpus = tmp_path / "a.txt"
    corpus.write_text("a")
    result = _invoke("tokenizer", "train", "--input", corpus, "--vocab-size", "261", "--out", tmp_path / "t")
    assert result.exit_code == 2 and "x>=262" in result.stderr
    assert "x>=262" in _invoke("train", "--help").output
    result = _invoke("tokenizer", "train", "--input", corpus, "--vocab-size", "262", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    result = _invoke("tokenizer", "train", "--input", corpus, "--vocab-size", "262", "--bert", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "pass vocab_size >= 263" in _error_line(result)


# --- 6. which files --data reads -------------------------------------------------------------


def test_data_folder_reads_text_files_only_and_lists_them(tmp_path):
    folder = tmp_path / "data"
    _text(folder / "a.txt")
    _text(folder / "b" / "c.txt", seed=1)
    (folder / "README.md").write_text("# not training text\n")
    (folder / "prepare.py").write_text("print('no')\n")
    out = tmp_path / "run"
    result = _invoke("train", *TINY, "--data", folder, "--out", out, "--steps", "1")
    assert result.exit_code == 0, result.output
    assert f"--data: 2 files: {folder / 'a.txt'}, {folder / 'b' / 'c.txt'}" in result.stderr
    assert json.loads((out / "run.json").read_text())["data"] == [str(folder / "a.txt"), str(folder / "b" / "c.txt")]
    result = _invoke("eval", out, "--data", folder, "--data-glob", "c.*")
    assert result.exit_code == 0, result.output
    assert f"--data: 1 file: {folder / 'b' / 'c.txt'}" in result.stderr and "loss" in json.loads(result.stdout)
    result = _invoke("eval", out, "--data", folder, "--data-glob", "*.csv")
    assert result.exit_code == 2 and "holds no files matching '*.csv'" in _error_line(result)


# --- 5. predict / evaluate columns -----------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny GPT (2 steps) fine-tuned for 2 steps on a TSV whose columns are body / target."""
    root = tmp_path_factory.mktemp("classifier")
    base = root / "base"
    result = _invoke("train", *TINY, "--data", _text(root / "c.txt"), "--out", base, "--steps", "2")
    assert result.exit_code == 0, result.output
    data = root / "train.tsv"
    data.write_text("body\ttarget\ngood cat\tpos\nbad dog\tneg\nfine mat\tpos\nsad ball\tneg\n")
    result = _invoke("finetune", "--task", "classify", "--model", base, "--train", data, "--out", root / "run",
                     "--text-column", "body", "--label-column", "target", "--steps", "2", "--batch-size", "2", "-q")
    assert result.exit_code == 0, result.output
    return root / "run"


def test_predict_and_evaluate_take_column_options(classifier, tmp_path):
    other = tmp_path / "other.tsv"
    other.write_text("sentence\tlabel\ngood cat\tpos\nbad dog\tneg\n")
    result = _invoke("predict", "--model", classifier, "--input", other)
    assert result.exit_code == 2
    assert "no column 'body' (text_column, --text-column); the columns are ['sentence', 'label']" in _error_line(result)
    result = _invoke("predict", "--model", classifier, "--input", other, "--text-column", "sentence")
    assert result.exit_code == 0, result.output
    assert [set(json.loads(line)) for line in result.stdout.splitlines()] == [{"label", "probabilities"}] * 2
    result = _invoke("evaluate", "--model", classifier, "--data", other, "--text-column", "sentence")
    assert result.exit_code == 2 and "no label column 'target'" in _error_line(result)
    assert "(--label-column)" in _error_line(result)
    result = _invoke("evaluate", "--model", classifier, "--data", other, "--text-column", "sentence",
                     "--label-column", "label")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] in (0.0, 0.5, 1.0)
    # The run's own layout needs no options.
    result = _invoke("evaluate", "--model", classifier, "--data", classifier.parent / "train.tsv")
    assert result.exit_code == 0 and "macro_f1" in json.loads(result.stdout)


# --- 5. BERT from one plain text file ---------------------------------------------------------


def _paragraphs(path: Path, count: int = 30) -> Path:
    rng = random.Random(2)
    blocks = ["\n".join(" ".join(rng.choices(WORDS, k=8)) + "." for _ in range(4)) for _ in range(count)]
    path.write_text("\n\n".join(blocks) + "\n")
    return path


BERT = ("--arch", "bert", "--vocab-size", "300", "--batch-size", "2", "--seq-len", "32", "--steps", "1", "-q")


def test_bert_from_a_text_file_needs_and_has_flags(tmp_path):
    text = _paragraphs(tmp_path / "paras.txt")
    result = _invoke("train", *BERT, "--data", text, "--out", tmp_path / "one")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "1 document(s), too few to hold out a validation set" in line and "--split-on-blank-lines" in line
    assert not (tmp_path / "one").exists()
    result = _invoke("train", *BERT, "--data", text, "--out", tmp_path / "split", "--split-on-blank-lines")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "split" / "run.json").read_text())["split_on_blank_lines"] is True
    # One document with its own validation text: random next sentences need other documents ...
    result = _invoke("train", *BERT, "--data", text, "--valid", text, "--out", tmp_path / "nsp")
    assert result.exit_code == 2 and "(--nsp-probability 1)" in _error_line(result)
    # ... unless every B is the actual continuation.
    result = _invoke("train", *BERT, "--data", text, "--valid", text, "--out", tmp_path / "nsp",
                     "--nsp-probability", "1")
    assert result.exit_code == 0, result.output
    result = _invoke("train", *TINY, "--data", text, "--out", tmp_path / "gpt", "--steps", "1", "--nsp-probability", "1")
    assert result.exit_code == 2 and "--nsp-probability applies to --arch bert" in _error_line(result)


def test_library_messages_name_flags_not_only_arguments():
    # Messages that reach CLI users name the flag beside any Python argument.
    import re

    root = Path(__file__).resolve().parents[1] / "mlx_llm"
    data_modules = [str(path.relative_to(root)) for path in sorted((root / "data").glob("*.py"))]
    for module in (*data_modules, "tokenizer_training.py", "pretrain.py"):
        source = (root / module).read_text()
        for argument in ("label_column=<", "text_column=<", "split_on_blank_lines=True", "next_sentence_probability=1",
                         "vocab_size >="):
            for match in re.finditer(re.escape(argument), source):
                line = source[source.rfind("\n", 0, match.start()) + 1: source.find("\n", match.start())]
                if '"' not in line:
                    continue  # a docstring, not a message
                message = source[max(0, match.start() - 250): match.start() + 200]  # the message around it
                assert "--" in message or "mlx-llm" in message, f"{module}: {line}"


# --- 7. eval progress ----------------------------------------------------------------------------


def test_eval_shows_progress_unless_quiet(tmp_path):
    corpus = _text(tmp_path / "c.txt", sentences=60)
    out = tmp_path / "run"
    assert _invoke("train", *TINY, "--data", corpus, "--out", out, "--steps", "1").exit_code == 0
    result = _invoke("eval", out, "--data", corpus, "--seq-len", "16", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "window" in result.stderr and "100%" in result.stderr and "loss=" in result.stderr
    assert set(json.loads(result.stdout)) >= {"loss", "perplexity", "bits_per_byte"}
    quiet = _invoke("eval", out, "--data", corpus, "--seq-len", "16", "--batch-size", "4", "--quiet")
    assert quiet.exit_code == 0 and json.loads(quiet.stdout) == json.loads(result.stdout)
    assert "window" not in quiet.stderr and "--data:" not in quiet.stderr


def test_too_little_text_names_the_short_stream_and_the_flag(tmp_path):
    small = _text(tmp_path / "small.txt", sentences=40)
    result = _invoke("train", *TINY, "--data", small, "--out", tmp_path / "r", "--steps", "1", "--seq-len", "100000")
    assert result.exit_code == 2 and "use a smaller seq_len (--seq-len) or more text" in _error_line(result)
    # 40 sentences are about 600 tokens: enough for blocks of 200, but not the 10% held out.
    result = _invoke("train", *TINY, "--data", small, "--out", tmp_path / "r", "--steps", "1", "--seq-len", "200")
    line = _error_line(result)
    assert result.exit_code == 2 and "validation text (the last 10% of --data, held out)" in line, line
