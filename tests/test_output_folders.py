"""Run folders (--out) of train, finetune and distill, through the real CLI: a folder
that holds files is refused (exit 2, not one byte changed) unless --resume or
--overwrite is given; an input's folder never, whatever the flags; --overwrite
leaves nothing of the earlier run; a failed fresh run leaves no files, so that
its corrected rerun needs no flag; a failed resume or an interrupted run keeps
what can be resumed."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_llm.finetune import FinetuneConfig, finetune
from mlx_llm.pretrain import pretrain
from mlx_llm.training.trainer import Trainer
from mlx_llm_cli.main import main

WORDS = "the king queen lord lady sword crown castle night day".split()
REFUSED = "already holds files; pass --resume to continue the run in it, --overwrite to delete them and start afresh"
INPUT = "a run never writes into its inputs, not even with --overwrite; choose another --out folder"


def run(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, files by content hash."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(folder.rglob("*"))}


def assert_refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer GPT pretrained for one step, a classifier fine-tuned from it (the
    distillation teacher) and their data: each run takes about a second."""
    root = tmp_path_factory.mktemp("output_folders")
    rng = random.Random(0)
    (root / "text.txt").write_text("\n".join(" ".join(rng.choices(WORDS, k=8)) for _ in range(60)) + "\n")
    rows = [(f"{'good' if i % 2 else 'bad'} {' '.join(rng.choices(WORDS, k=3))}", "pos" if i % 2 else "neg")
            for i in range(16)]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    (root / "size.json").write_text(json.dumps({"n_layer": 1, "n_embd": 16, "n_head": 2}))
    pretrain("gpt", [root / "text.txt"], root / "base", preset={"n_layer": 2, "n_embd": 16, "n_head": 2},
             vocab_size=280, seq_len=64, batch_size=4, steps=1, warmup_steps=0, eval_every=0, save_every=0,
             progress=False)
    finetune(FinetuneConfig(task="classify", model=str(root / "base"), train=str(root / "train.tsv"),
                            out=str(root / "teacher"), steps=1, batch_size=4), progress=False)
    return {"root": root, "base": root / "base", "teacher": root / "teacher", "train": root / "train.tsv",
            "text": root / "text.txt"}


def finetune_arguments(tiny, model, out, *extra):
    return ["finetune", "--task", "classify", "--model", model, "--train", tiny["train"], "--out", out,
            "--steps", 1, "--batch-size", 4, "-q", *extra]


def distill_arguments(tiny, teacher, out, *extra):
    return ["distill", "--task", "classify", "--teacher", teacher, "--data", tiny["train"], "--out", out,
            "--student-layers", 1, "--steps", 1, "--batch-size", 4, "-q", *extra]


def train_arguments(tiny, data, out, *extra):
    return ["train", "--arch", "gpt", "--data", data, "--out", out, "--vocab-size", 280, "--config",
            tiny["root"] / "size.json", "--seq-len", 16, "--batch-size", 4, "--warmup", 0, "--eval-every", 0,
            "--steps", 1, "-q", *extra]


def test_finetune_and_distill_refuse_a_folder_that_holds_files(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "checkpoints").mkdir()
    before = snapshot(out)
    assert_refused(run(*finetune_arguments(tiny, tiny["base"], out)), f"--out {out} {REFUSED}")
    assert snapshot(out) == before
    assert_refused(run(*distill_arguments(tiny, tiny["teacher"], out)), f"--out {out} {REFUSED}")
    assert snapshot(out) == before
    # train lists the files it reads only once the folder is accepted: the refusal is its one line.
    assert_refused(run(*train_arguments(tiny, tiny["text"], out)), f"{out} already holds files")
    assert snapshot(out) == before
    # --resume needs a checkpoint: refused too, and both flags at once.
    result = run(*finetune_arguments(tiny, tiny["base"], out, "--resume"))
    assert_refused(result, f"--resume: {out} holds no checkpoint to continue from")
    result = run(*distill_arguments(tiny, tiny["teacher"], out, "--resume", "--overwrite"))
    assert_refused(result, "pass --resume (continue the run in")
    assert snapshot(out) == before


@pytest.mark.parametrize("flags", [(), ("--overwrite",), ("--resume",)])
def test_the_input_model_or_teacher_folder_is_never_written(tiny, tmp_path, flags):
    """The issue's worst case (the model's weights replaced by a classifier's),
    a folder inside the model's and one that holds it: refused, whatever the flags."""
    model = tmp_path / "holder" / "model"
    shutil.copytree(tiny["teacher"], model)  # a teacher run: a model folder with checkpoints
    before = snapshot(tmp_path)
    for out, relation in ((model, "is the --model folder"), (model / "run", f"is inside the --model folder {model}"),
                          (model.parent, f"holds the --model folder {model}")):
        result = run(*finetune_arguments(tiny, model, out, *flags))
        assert_refused(result, f"--out {out} {relation}: {INPUT}")
        result = run(*distill_arguments(tiny, model, out, *flags))
        assert_refused(result, f"--out {out} {relation.replace('--model', '--teacher')}: {INPUT}")
        assert snapshot(tmp_path) == before
    # The same folder through another spelling of its path.
    result = run(*finetune_arguments(tiny, model, model / ".." / "model", *flags))
    assert_refused(result, "is the --model folder")
    assert snapshot(tmp_path) == before


def test_overwrite_leaves_nothing_of_the_earlier_run(tiny, tmp_path):
    out = tmp_path / "run"
    valid = tiny["train"]
    result = run(*finetune_arguments(tiny, tiny["base"], out, "--steps", 3, "--save-every", 1, "--valid", valid,
                                     "--eval-every", 1))
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert (out / "best").is_dir()
    (out / "stale.txt").write_text("from before")

    result = run(*finetune_arguments(tiny, tiny["base"], out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert [path.name for path in (out / "checkpoints").iterdir()] == ["step-0000001"]
    assert not (out / "best").exists() and not (out / "stale.txt").exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]

    result = run(*distill_arguments(tiny, tiny["teacher"], out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "distill.json").read_text())["teacher"] == str(tiny["teacher"])
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert [path.name for path in (out / "checkpoints").iterdir()] == ["step-0000001"]


def test_a_train_that_fails_on_its_data_leaves_no_files_and_the_rerun_succeeds(tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("The king. " * 40)
    # The tokenizer, run.json and the token cache are written before the data turns out too short.
    out = tmp_path / "new" / "run"
    result = run(*train_arguments(tiny, short, out, "--seq-len", 512))
    assert result.exit_code == 2 and "block" in result.output, result.output
    assert not (tmp_path / "new").exists()  # nor the parent folder it made
    made = tmp_path / "made"
    made.mkdir()  # the user's empty folder stays, empty
    result = run(*train_arguments(tiny, short, made, "--seq-len", 512))
    assert result.exit_code == 2 and "block" in result.output, result.output
    assert made.is_dir() and not any(made.iterdir())
    for folder in (out, made):
        result = run(*train_arguments(tiny, tiny["text"], folder))
        assert result.exit_code == 0, result.output
        assert (folder / "model.safetensors").is_file()


def test_a_finetune_that_fails_after_writing_leaves_no_files(tiny, tmp_path):
    out = tmp_path / "run"
    # The unknown metric shows at the first evaluation, after metrics.jsonl is written.
    result = run(*finetune_arguments(tiny, tiny["base"], out, "--valid", tiny["train"], "--best-metric", "bleu"))
    assert result.exit_code == 2 and "bleu" in result.output, result.output
    assert not out.exists()
    result = run(*finetune_arguments(tiny, tiny["base"], out, "--valid", tiny["train"]))
    assert result.exit_code == 0, result.output


def test_a_failed_resume_keeps_the_run(tiny, tmp_path):
    out = tmp_path / "run"
    assert run(*finetune_arguments(tiny, tiny["base"], out, "--steps", 2)).exit_code == 0
    before = snapshot(out)
    result = run(*finetune_arguments(tiny, tiny["base"], out, "--steps", 2, "--lr", 0.5, "--resume"))
    assert result.exit_code == 2 and "cannot resume" in result.output, result.output
    assert snapshot(out) == before


def test_an_interrupted_run_keeps_its_checkpoints_and_resumes(tiny, tmp_path, monkeypatch):
    config = FinetuneConfig(task="classify", model=str(tiny["base"]), train=str(tiny["train"]),
                            out=str(tmp_path / "run"), steps=3, save_every=1, batch_size=4)
    original = Trainer.train_step

    def interrupted_at(step):
        def train_step(self, micro_batches):
            if self.step + 1 == step:
                raise KeyboardInterrupt
            return original(self, micro_batches)
        return train_step

    # Ctrl-C before the first checkpoint: nothing to resume, nothing left.
    monkeypatch.setattr(Trainer, "train_step", interrupted_at(1))
    with pytest.raises(KeyboardInterrupt):
        finetune(config, progress=False)
    assert not (tmp_path / "run").exists()
    # Ctrl-C at step 3: the checkpoints of steps 1 and 2 stay, and --resume finishes the run.
    monkeypatch.setattr(Trainer, "train_step", interrupted_at(3))
    with pytest.raises(KeyboardInterrupt):
        finetune(config, progress=False)
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000001",
                                                                                        "step-0000002"]
    monkeypatch.setattr(Trainer, "train_step", original)
    assert finetune(config, resume=True, progress=False).steps == 3
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["convert", "export"])
def test_convert_and_export_never_replace_their_source(tiny, tmp_path, command):
    source = tmp_path / "model"
    shutil.copytree(tiny["teacher"] if command == "export" else tiny["base"], source)
    before = snapshot(source)
    for out in (source, source / "inside"):
        arguments = ["convert", source, "--out", out] if command == "convert" else ["export", source, "--to-hf", out]
        result = run(*arguments, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "a run never writes into its inputs" in result.output and "Traceback" not in result.output
        assert snapshot(source) == before
