"""Knowledge distillation: train a smaller, faster student to imitate a teacher.

Students come from a config (fewer layers, narrower) or from the teacher
itself by copying a subset of its layers (every other one by default, as
DistilBERT), embeddings and heads included (`distill_students`). One objective
(`distill_objective`) mixes the terms of the classic recipes, each weighted by an
``alpha``:

- ``soft``: the teacher's softened distribution (KL x T^2, Hinton et al.);
  for causal LMs forward KL, reverse KL or a generalized Jensen-Shannon mix;
- ``hard``: the data's labels (cross-entropy, masked-LM or next-token loss);
- ``cos``: cosine between last hidden states (DistilBERT);
- ``hidden`` and ``attention``: MSE of matched layers' states (through a
  learned projection when widths differ) and attention scores (TinyBERT);
- ``pkd``: distance of normalized [CLS] states of matched layers (BERT-PKD).

Workflows: task-agnostic masked-LM distillation of encoders (``mlm``),
task-specific distillation of a fine-tuned classifier or tagger
(``classify``, ``tag``; teacher logits on the fly or cached once), and
causal-LM distillation of decoders (``lm``). Each is a `distill_tasks.DistillationTask`
(its teacher's head, student head, data and logit targets) that this workflow asks.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..blocks.model_output import ENCODER
from ..model_files.export import dequantize_model
from ..model_files.hub import read_json, resolve_model_path, write_json
from ..model_files.loading import DTYPES, load_model
from ..model_files.run_folders import RunFolder
from ..pretrain import save_model
from ..tokenization import Tokenizer
from ..training.lora import fuse_lora
from ..training.trainer import OptimizationConfig, Trainer, evaluate_objective
from ..utils import num_parameters
from .objective import (
    DIVERGENCES,  # noqa: F401  (re-exported, as the names below)
    DistillationObjective,
    Distiller,
    LossWeights,
    encoder_inputs,
)
from .students import (
    check_layer_map,  # noqa: F401
    default_layer_map,
    layer_count,
    student_from_config,
    student_from_teacher,
    width,
)
from .tasks import DISTILL_TASKS, DistillationTask, get_distillation_task

TASKS = tuple(DISTILL_TASKS)
RUN_FILE = "distill.json"


# --- the workflow ------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """A distillation run (the CLI's options, one field each).

    Attributes:
        task: ``"mlm"``, ``"classify"``, ``"tag"`` or ``"lm"``.
        teacher: Teacher folder or Hub id (classify/tag: a fine-tuned run or a
            checkpoint with a classification head).
        data: Training data: text files (mlm, lm) or the fine-tuning format.
        out: Run folder for the student.
        valid: Validation data (default for mlm/lm: the last 10% of ``data``).
        student_layers: Copy this many teacher layers (default map: every other one).
        student_config: JSON file of config fields for a fresh student instead.
        layer_map: Teacher layer of each student layer (overrides the default map).
        temperature, alpha_*: Loss terms (see `LossWeights`).
        divergence, jsd_beta: Causal-LM soft term.
        eval_batches: Validate on the first N batches only (0 = all).
        cache_teacher: classify/tag: compute the teacher's logits once, store
            them in the run folder, and train from the cache.
    """

    task: str
    teacher: str
    data: list[str]
    out: str
    valid: str | None = None
    student_layers: int | None = None
    student_config: str | None = None
    layer_map: list[int] | None = None
    temperature: float = 2.0
    alpha_soft: float = 1.0
    alpha_hard: float = 1.0
    alpha_cos: float = 0.0
    alpha_hidden: float = 0.0
    alpha_attention: float = 0.0
    alpha_pkd: float = 0.0
    divergence: str = "forward"
    jsd_beta: float = 0.5
    cache_teacher: bool = False
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = 128
    batch_size: int = 16
    epochs: float = 3.0
    steps: int | None = None
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    eval_batches: int = 0
    save_every: int = 0
    seed: int = 0
    log_every: int = 10
    speed_batches: int = 5
    dtype: str = "float32"

    def __post_init__(self) -> None:
        get_distillation_task(self.task)  # validates the name
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"training dtype must be float32 or bfloat16 (float16 needs loss scaling), got {self.dtype!r}")
        if (self.student_layers is None) == (self.student_config is None) and self.layer_map is None:
            raise ValueError("give the student's size: --student-layers N, --layer-map, or --student-config FILE")
        if self.student_config is not None and (self.student_layers is not None or self.layer_map is not None):
            raise ValueError("--student-config builds a fresh student; do not combine it with "
                             "--student-layers or --layer-map (they copy teacher layers)")
        if (self.layer_map is not None and self.student_layers is not None
                and len(self.layer_map) != self.student_layers):
            raise ValueError(f"--layer-map names {len(self.layer_map)} layers but --student-layers is "
                             f"{self.student_layers}")
        self.data = [str(self.data)] if isinstance(self.data, (str, Path)) else [str(path) for path in self.data]
        for name in ("teacher", "out", "valid", "student_config"):  # paths are recorded as JSON
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        self.weights()  # validates the alphas
        self.optimization()  # and the optimizer's settings, where they are defined

    def optimization(self) -> OptimizationConfig:
        """The run's optimizer settings: AdamW (betas 0.9, 0.999), linear decay after warmup."""
        return OptimizationConfig(
            learning_rate=self.learning_rate, schedule="linear", warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay, betas=(0.9, 0.999), max_grad_norm=self.max_grad_norm,
            steps=self.steps, epochs=self.epochs,
        )

    def weights(self) -> LossWeights:
        return LossWeights(self.alpha_soft, self.alpha_hard, self.alpha_cos, self.alpha_hidden,
                           self.alpha_attention, self.alpha_pkd)


@dataclass
class DistillResult:
    out: Path
    teacher_parameters: int
    student_parameters: int
    teacher_examples_per_second: float
    student_examples_per_second: float
    speedup: float
    teacher_metrics: dict
    student_metrics: dict
    seconds: float
    layer_map: list[int] | None = None
    history: list[dict] = field(default_factory=list)


def load_teacher(teacher: str, dtype: str = "float32") -> tuple[nn.Module, dict, Path]:
    """The teacher as a plain float model (LoRA fused, quantized weights dequantized) in
    ``dtype``, in eval mode. Students copied from it start in the same dtype."""
    folder = resolve_model_path(teacher)
    model, config = load_model(folder)
    fuse_lora(model, dequantize=True)
    dequantize_model(model)
    model.set_dtype(DTYPES[dtype])
    model.freeze()
    model.eval()
    return model, config, folder


def measure_speed(model: nn.Module, batch: dict, repeats: int = 5, encoder: bool = True) -> float:
    """Inference examples per second of ``model`` on ``batch`` (median of ``repeats``, after a warm-up);
    ``encoder`` passes an encoder's token types too."""
    def forward():
        if encoder:
            mx.eval(model(**encoder_inputs(model, batch)))
        else:
            mx.eval(model(batch["input_ids"], batch.get("attention_mask")))

    forward()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return batch["input_ids"].shape[0] / statistics.median(times)


def distill(config: DistillConfig, resume: bool = False, progress: bool = True,
            overwrite: bool = False) -> DistillResult:
    """Distill ``config.teacher`` into a smaller student saved in ``config.out``.

    The student folder loads like any model of its kind (and, for classify and
    tag, predicts and evaluates like a fine-tuned run). ``distill.json``
    records parameters, the measured speed-up and both models' validation
    metrics. ``resume`` continues the run in ``config.out``; ``overwrite``
    deletes what it holds first; it is never the teacher's folder (`mlx_llm.model_files.run_folders`).
    """
    with RunFolder(config.out, resume=resume, overwrite=overwrite,
                   inputs={"--teacher": config.teacher, "--data": config.data, "--valid": config.valid}) as run_folder:
        return _distill(config, run_folder, resume, progress)


def _student(config: DistillConfig, task: DistillationTask, teacher: nn.Module,
             teacher_config: dict) -> tuple[nn.Module, dict, list[int]]:
    """The student ``config`` asks for: fresh from ``--student-config`` or copied from the teacher's
    layers, with the head ``task`` trains.

    Returns:
        ``(student, student_config, layer_map)``; the layer map pairs student and teacher layers for the losses.
    """
    mx.random.seed(config.seed)
    if config.student_config is not None:
        path = Path(config.student_config)
        if not path.is_file():
            raise FileNotFoundError(f"--student-config {path} does not exist")
        fields = read_json(path)
        student, student_config = student_from_config(teacher_config, fields)
        student.set_dtype(DTYPES[config.dtype])
        student_layers = layer_count(student_config)
        layer_map = default_layer_map(layer_count(teacher_config), student_layers)
    else:
        teacher_layers = layer_count(teacher_config)
        layer_map = config.layer_map or default_layer_map(teacher_layers, config.student_layers)
        student, student_config = student_from_teacher(teacher, teacher_config, layer_map)
    student, student_config = task.student(student, student_config)
    return student, student_config, layer_map


def _compare_speeds(teacher: nn.Module, student: nn.Module, batch: dict, repeats: int) -> tuple[float, float]:
    """Examples per second of teacher and student on ``batch``: the median of three alternating runs."""
    encoder = teacher.kind == ENCODER
    # Alternate the two, so that a change in machine load touches both alike.
    teacher_speeds, student_speeds = [], []
    for _ in range(3):
        teacher_speeds.append(measure_speed(teacher, batch, repeats, encoder))
        student_speeds.append(measure_speed(student, batch, repeats, encoder))
    return statistics.median(teacher_speeds), statistics.median(student_speeds)


def _distill(config: DistillConfig, run_folder: RunFolder, resume: bool, progress: bool) -> DistillResult:
    start = time.perf_counter()
    teacher, teacher_config, folder = load_teacher(config.teacher, config.dtype)
    run_folder.add_inputs({"--teacher": folder})
    tokenizer = Tokenizer.from_pretrained(folder)
    task = get_distillation_task(config.task)
    task.check_teacher(teacher, config.teacher)
    out = run_folder.path

    student, student_config, layer_map = _student(config, task, teacher, teacher_config)
    weights = config.weights()
    distiller = Distiller(student, width(student_config), width(teacher_config),
                          needs_projection=weights.hidden > 0 or weights.cos > 0 or weights.pkd > 0)

    # Data and the task's own validation metrics.
    data = task.data(config, tokenizer, teacher_config, folder, run_folder, progress)
    train, evaluation, epoch_batches, task_objective, settings = (
        data.train, data.evaluation, data.batches_per_epoch, data.objective, data.settings)
    teacher_logits = None
    if config.cache_teacher and task.caches_teacher:
        teacher_logits = _cached_teacher_logits(teacher, train, run_folder.prepare())
        train.include_indices = True
    objective = DistillationObjective(
        teacher, config.task, weights, config.temperature, layer_map, divergence=config.divergence,
        beta=config.jsd_beta, problem=None if settings is None else settings.problem,
        task_objective=task_objective, teacher_logits=teacher_logits,
    )

    optimization = config.optimization()
    training = optimization.training_config(
        optimization.total_steps(epoch_batches), eval_every=config.eval_every or max(1, epoch_batches),
        eval_batches=config.eval_batches, save_every=config.save_every, log_every=config.log_every, seed=config.seed,
    )
    trainer = Trainer(distiller, objective, train, training, run_folder.prepare(), eval_data=evaluation,
                      run_config={"distill": asdict(config)}, progress=progress)
    trainer.fit(resume=resume)
    student.eval()

    # Quality of both, and inference speed on the same batch.
    teacher_metrics, student_metrics = {}, {}
    if evaluation is not None:
        def validation() -> Iterator[dict]:
            batches = evaluation()
            return itertools.islice(batches, config.eval_batches) if config.eval_batches else batches

        teacher_metrics = evaluate_objective(teacher, task_objective, validation())
        student_metrics = objective.evaluate_dataset(distiller, validation())
        speed_batch = next(iter(evaluation()))
    else:
        speed_batch = next(iter(train))
    speed_batch = {key: value for key, value in speed_batch.items() if key != "example_index"}
    teacher_speed, student_speed = _compare_speeds(teacher, student, speed_batch, config.speed_batches)

    report = {
        "teacher": str(config.teacher), "task": config.task, "layer_map": layer_map,
        "teacher_parameters": num_parameters(teacher), "student_parameters": num_parameters(student),
        "speed_batch": list(speed_batch["input_ids"].shape),
        "teacher_examples_per_second": teacher_speed, "student_examples_per_second": student_speed,
        "speedup": student_speed / teacher_speed, "teacher_metrics": teacher_metrics,
        "student_metrics": student_metrics,
    }
    if mx.distributed.init().rank() == 0:
        save_model(student, student_config, out, folder)
        if settings is not None:  # the student predicts and evaluates like a fine-tuned run
            replace(settings, base_model=str(config.teacher), distilled_from=str(config.teacher),
                    metrics=student_metrics, lora=None).to_json(out)
        write_json(report, out / RUN_FILE)
    return DistillResult(
        out=out, teacher_parameters=report["teacher_parameters"], student_parameters=report["student_parameters"],
        teacher_examples_per_second=teacher_speed, student_examples_per_second=student_speed,
        speedup=report["speedup"], teacher_metrics=teacher_metrics, student_metrics=student_metrics,
        seconds=time.perf_counter() - start, layer_map=layer_map, history=trainer.history,
    )


def _cached_teacher_logits(teacher: nn.Module, batches, out: Path) -> mx.array:
    """The teacher's logits for every training example, computed once before training
    (``(N, C)``, or ``(N, longest, C)`` for tagging) and kept in ``teacher_logits.npy``."""
    path = out / "teacher_logits.npy"
    rows = []
    longest = max(len(item["input_ids"]) for item in batches.encoded)
    for _, batch in batches.iterate_once():
        if teacher.kind == ENCODER:
            logits = teacher(**encoder_inputs(teacher, batch))
        else:
            logits = teacher(batch["input_ids"], batch.get("attention_mask"))
        logits = np.array(logits.astype(mx.float32))
        if logits.ndim == 3:  # per-token logits (tagging), padded to the longest example
            padded = np.zeros((logits.shape[0], longest, logits.shape[-1]), dtype=np.float32)
            padded[:, : logits.shape[1]] = logits
            logits = padded
        rows.append(logits)
    cached = np.concatenate(rows)
    temporary = path.with_name(".teacher_logits.npy.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, cached)
    temporary.replace(path)
    return mx.array(cached)


def __getattr__(name: str):
    """The former tables ``ENCODERS``, ``LAYER_KEYS`` and ``WIDTH_KEYS``, still importable from
    here; each is derived on first use from what the families answer."""
    from . import objective as distill_objective
    from . import students as distill_students

    if name == "ENCODERS":
        return distill_objective.ENCODERS
    if name in ("LAYER_KEYS", "WIDTH_KEYS"):
        return getattr(distill_students, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
