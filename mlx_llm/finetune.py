"""Fine-tuning: adapt a pretrained model to a task (`mlx_llm.tasks`: text
classification, sequence labelling, instruction following, sequence to
sequence), fully or with LoRA, then predict and evaluate with the result.

The workflow is task-agnostic: the task object (`mlx_llm.tasks.get_task`)
reads, encodes and batches the data, gives the objective, the default metric,
the task model's config and the predictions.

A run folder is a model folder too: ``config.json`` (the task model, with
its labels), the weights (``model.safetensors``, or ``adapters.safetensors``
plus ``adapter_config.json`` naming the base model for LoRA), the tokenizer
files and ``finetune.json`` (the run's `RunSettings`: how the data is read,
the metrics), next to the trainer's ``metrics.jsonl``, ``loss_curve.png``,
``checkpoints/`` and ``best/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import data
from .blocks.model_output import DECODER, ENCODER
from .model_files.hub import copy_tokenizer_files, read_json, resolve_model_path, write_json
from .model_files.loading import (
    ADAPTER_CONFIG,
    FORMAT_KEY,
    FORMAT_VERSION,
    OWN_NAMES_VERSION,
    load_model,
    quantization_predicate,
    read_config,
)
from .model_files.mlx_lm_layout import mlx_lm_folder
from .model_files.run_folders import RunFolder
from .models import get_family, model_types_of_kind
from .pretrain import save_model
from .tasks import RUN_FILE, RunSettings, Task, get_task, pad_token_id
from .tasks import TASKS as TASK_REGISTRY
from .tasks.classify import HF_PROBLEMS  # noqa: F401  (re-exported: its former home)
from .tokenization import Tokenizer
from .training.lora import LoRAConfig, apply_lora, save_adapters
from .training.trainer import OptimizationConfig, Trainer, TrainingConfig, evaluate_objective

TASKS = tuple(TASK_REGISTRY)
# The task model each task builds (``args.task``), by task name.
MODEL_TASKS = {name: task.model_task for name, task in TASK_REGISTRY.items()}
_pad_id = pad_token_id  # the former private name


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs (the CLI's options, one field each).

    Attributes:
        task: A registered task (`mlx_llm.tasks.TASKS`): ``"classify"``,
            ``"tag"``, ``"lm"`` (instruction tuning) or ``"seq2seq"``.
        model: Pretrained model folder or Hub id.
        train: Training file (CSV/TSV/JSONL; CoNLL for tagging; JSONL for lm;
            JSONL/CSV/TSV input/target pairs for seq2seq).
        out: Run folder.
        valid: Validation file in the same format (metrics, best checkpoint).
        text_column, text_pair_column, label_column: Columns of classification
            data (``label_column`` ``None``: ``label``); seq2seq: the input and
            target fields (``None``: ``input`` and ``target``).
        problem: ``"single_label"``, ``"multi_label"`` or ``"regression"``.
        scheme: Tagging scheme for entity scores, ``"IOB2"`` or ``"IOBES"``
            (``None``: IOBES when the tags have S-/E- prefixes).
        max_length: Longest tokenized input (and seq2seq target); longer ones are truncated.
        batch_size, grad_accum, epochs, steps: ``steps`` overrides ``epochs``.
        learning_rate: Peak rate; ``None`` gives 5e-5 (full) or 2e-4 (LoRA).
        warmup_ratio: Fraction of the steps spent warming up.
        lora, rank, alpha, lora_dropout, lora_layers, target_modules: LoRA
            (``lora_layers``: the last N layers; ``None`` = all).
        quantize: 4 or 8 to quantize the frozen base for LoRA (QLoRA).
        mask_prompt: No loss on prompt tokens (instruction tuning).
        eval_every: Validation every N steps (``None``: once per epoch).
        best_metric: Metric that picks the best checkpoint (``None``: the
            task's default, e.g. accuracy, micro-F1, entity F1 or loss).
        early_stopping_patience: Evaluations without improvement before stopping.
    """

    task: str
    model: str
    train: str
    out: str
    valid: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    problem: str = "single_label"
    scheme: str | None = None
    max_length: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    epochs: float = 3.0
    steps: int | None = None
    learning_rate: float | None = None
    min_learning_rate: float = 0.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    rank: int = 8
    alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    target_modules: tuple[str, ...] | None = None
    quantize: int | None = None
    mask_prompt: bool = True
    eval_every: int | None = None
    best_metric: str | None = None
    early_stopping_patience: int = 0
    save_every: int = 0
    dtype: str = "float32"
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        get_task(self.task)  # ValueError naming the known tasks
        for name in ("max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.optimization()  # the optimizer's settings are checked where they are defined
        if self.quantize is not None and not self.lora:
            raise ValueError("quantize trains LoRA adapters over a quantized base: pass lora=True (--lora) too")
        if self.quantize not in (None, 4, 8):
            raise ValueError(f"quantize must be 4 or 8 bits, got {self.quantize}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        for name in ("model", "train", "out", "valid"):  # paths are recorded as JSON
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))

    def optimization(self) -> OptimizationConfig:
        """The run's optimizer settings (AdamW with betas 0.9, 0.999, as transformers)."""
        return OptimizationConfig(
            learning_rate=self.learning_rate or (2e-4 if self.lora else 5e-5),
            min_learning_rate=self.min_learning_rate, schedule=self.schedule, warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay, betas=(0.9, 0.999), max_grad_norm=self.max_grad_norm,
            grad_accum=self.grad_accum, steps=self.steps, epochs=self.epochs,
        )

    def run_settings(self, task: Task) -> RunSettings:
        """How ``task`` reads and encodes this run's data (completed by `Task.resolve`)."""
        return RunSettings(
            task=self.task, problem=self.problem if "problem" in task.options else None,
            scheme=self.scheme if "scheme" in task.options else None, max_length=self.max_length,
            text_column=self.text_column, text_pair_column=self.text_pair_column, label_column=self.label_column,
            mask_prompt=self.mask_prompt,
        )

    def fingerprint(self) -> dict:
        """The settings a resumed run must share, as earlier versions recorded them
        (they wrote ``label_column`` ``"label"`` where none was given)."""
        return {**asdict(self), "label_column": self.label_column or "label"}


@dataclass
class FinetuneResult:
    """A finished run: ``seconds`` in all, ``train_seconds`` in training steps alone
    (what ``examples_per_second`` divides by), tokens/s counting padding."""

    out: Path
    steps: int
    seconds: float
    train_seconds: float
    examples_per_second: float
    tokens_per_second: float
    num_parameters: int
    trainable_parameters: int
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict | None = None


# --- preparing the task model -----------------------------------------------------------------


def _lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention's query and value projections (LoRA's choice), or the fused
    ``qkv_proj`` where one product computes all three (GPT-2's ``c_attn``, peft's default there)."""
    fused = any(name.endswith(".qkv_proj") for name, _ in model.named_modules())
    return ("qkv_proj",) if fused else ("q_proj", "v_proj")


def _apply_lora(model: nn.Module, config: FinetuneConfig, task: Task) -> tuple[LoRAConfig, dict | None]:
    """Put LoRA adapters into ``model`` (over a base quantized first with ``config.quantize``).

    Returns:
        The `LoRAConfig` and the quantization record of the base it quantized (``None`` if none).
    """
    quantization = None
    if config.quantize is not None:
        group_size = 64 if model.args.hidden_size % 64 == 0 else 32
        nn.quantize(model, group_size=group_size, bits=config.quantize,
                    class_predicate=quantization_predicate(group_size))
        quantization = {"group_size": group_size, "bits": config.quantize}
    lora_config = LoRAConfig(rank=config.rank, alpha=config.alpha, dropout=config.lora_dropout,
                             target_modules=config.target_modules or _lora_targets(model),
                             num_layers=config.lora_layers, trainable_modules=task.lora_trainable(model))
    apply_lora(model, lora_config)
    return lora_config, quantization


def _training_config(config: FinetuneConfig, batches_per_epoch: int, best_metric: str | None) -> TrainingConfig:
    """The trainer's settings: each epoch rounds up to whole optimizer steps, so that
    evaluation at every epoch lands on one."""
    optimization = config.optimization()
    steps_per_epoch = data.steps_for(1, batches_per_epoch, config.grad_accum)
    steps = optimization.total_steps(steps_per_epoch * config.grad_accum)
    return optimization.training_config(
        steps, eval_every=config.eval_every or steps_per_epoch, save_every=config.save_every,
        log_every=config.log_every, seed=config.seed, best_metric=best_metric,
        early_stopping_patience=config.early_stopping_patience,
    )


def finetune(config: FinetuneConfig, resume: bool = False, progress: bool = True,
             overwrite: bool = False) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.train`` and write the run folder ``config.out``.

    Args:
        config: The run's settings.
        resume: Continue the run in ``config.out`` from its latest checkpoint.
        progress: Show a progress bar on stderr.
        overwrite: Start afresh in a ``config.out`` that holds files (an
            earlier run): they are deleted once the data is read.

    Returns:
        `FinetuneResult` (validation metrics of the kept weights when there is
        validation data).

    Raises:
        FileExistsError, FileNotFoundError, ValueError: ``config.out`` is not a
            folder this run may write into (see `mlx_llm.model_files.run_folders`), or bad input.
    """
    task = get_task(config.task)
    run_folder = RunFolder(config.out, resume=resume, overwrite=overwrite,
                           inputs={"--model": config.model, "--train": config.train, "--valid": config.valid})
    folder = resolve_model_path(config.model)
    run_folder.add_inputs({"--model": folder})
    if (folder / ADAPTER_CONFIG).is_file():
        raise ValueError(
            f"{config.model} is a LoRA run (adapters over another model); merge it first with "
            f"`mlx-llm fuse {config.model} --out DIR` and fine-tune DIR"
        )
    base_config = read_config(folder)
    task.check_model(base_config.get("model_type"), config.model)
    tokenizer = Tokenizer.from_pretrained(folder)
    pad_id = pad_token_id(tokenizer)
    train_examples = task.read(config.train, config.run_settings(task))
    settings = task.resolve(config.run_settings(task), train_examples, base_config)
    task_config = task.task_config(base_config, settings, pad_id)

    mx.random.seed(config.seed)  # fresh heads and LoRA matrices
    model, _ = load_model(folder, dtype=config.dtype, task_config=task_config)
    quantization = base_config.get("quantization")  # a quantized checkpoint as the frozen base
    lora_config = None
    if config.lora:
        lora_config, quantization = _apply_lora(model, config, task)
        quantization = quantization or base_config.get("quantization")
    num_parameters = sum(value.size for _, value in tree_flatten(model.parameters()))
    trainable = sum(value.size for _, value in tree_flatten(model.trainable_parameters()))

    train_batches = task.batches(task.encode(train_examples, tokenizer, settings), config.batch_size, pad_id,
                                 settings, shuffle=True, seed=config.seed)
    eval_data = None
    if config.valid is not None:
        valid_encoded = task.encode(task.read(config.valid, settings), tokenizer, settings)
        eval_data = task.batches(valid_encoded, config.batch_size, pad_id, settings, shuffle=False).evaluation_batches
    best_metric = config.best_metric or (task.default_metric(settings) if eval_data is not None else None)
    training = _training_config(config, train_batches.batches_per_epoch, best_metric)
    with run_folder:  # a fresh run that fails before its first checkpoint leaves no files
        out = run_folder.prepare()
        trainer = Trainer(model, task.objective(settings), train_batches, training, out, eval_data=eval_data,
                          run_config={"finetune": config.fingerprint()}, progress=progress)
        result = trainer.fit(resume=resume)
        best = trainer.load_best()
        metrics = trainer.evaluate() if eval_data is not None else {}
        model.eval()

        settings = replace(settings, base_model=str(folder.resolve()) if folder.exists() else config.model,
                           lora=None if lora_config is None else lora_config.to_dict(), quantization=quantization,
                           metrics=metrics, best=best, steps=result.steps, num_parameters=num_parameters,
                           trainable_parameters=trainable)
        if run_folder.writer:  # one writer when data-parallel
            _save_run(out, model, task_config, tokenizer, folder, settings, lora_config, config.dtype)
    return FinetuneResult(out=out, steps=result.steps, seconds=result.seconds, train_seconds=result.train_seconds,
                          examples_per_second=result.examples / max(result.train_seconds, 1e-9),
                          tokens_per_second=result.tokens / max(result.train_seconds, 1e-9),
                          num_parameters=num_parameters, trainable_parameters=trainable, metrics=metrics, best=best)


def _save_run(out: Path, model: nn.Module, task_config: dict, tokenizer: Tokenizer, source: Path,
              settings: RunSettings, lora_config: LoRAConfig | None, dtype: str) -> None:
    """Write the model files of a finished run (each file atomically)."""
    if lora_config is None:
        save_model(model, task_config, out, source, dtype=dtype)
    else:
        metadata = {"base_model": settings.base_model}
        if settings.quantization is not None:
            metadata["quantization"] = settings.quantization
        save_adapters(out, model, lora_config, metadata=metadata)
        write_json({**task_config, FORMAT_KEY: {"format_version": FORMAT_VERSION, "trained_by": "mlx_llm"}},
                   out / "config.json")
        copy_tokenizer_files(source, out)
    settings.to_json(out)


# --- using a run ------------------------------------------------------------------------------


def read_run(model_dir: str | Path) -> dict:
    """The record a run folder keeps in ``finetune.json``, as a dict (`RunSettings.from_json`
    reads it typed).

    Raises:
        FileNotFoundError: naming the folder, when it is not a fine-tuning run.
    """
    return RunSettings.from_json(model_dir).to_dict()


def _run_and_examples(model_dir: str | Path, path: str | Path, labelled: bool,
                      columns: dict[str, str | None] | None) -> tuple[Task, RunSettings, list]:
    """The run's task and settings (with the caller's column names), and the examples of ``path``."""
    settings = RunSettings.from_json(model_dir)
    task = get_task(settings.task)
    settings = settings.with_columns(columns, task.columns)
    return task, settings, task.read(str(path), settings, labelled=labelled)


def evaluate(model_dir: str | Path, data_path: str | Path, batch_size: int = 32,
             columns: dict[str, str | None] | None = None) -> dict[str, float]:
    """The task's metrics of a fine-tuned model on labelled data in the training format.

    Args:
        model_dir: A run folder of `finetune`.
        data_path: Labelled data.
        batch_size: Examples per forward pass.
        columns: Data whose columns differ from the training data's:
            ``text_column``, ``text_pair_column`` and/or ``label_column``
            (those the run's task reads).

    Returns:
        The task's metrics (accuracy and macro-F1, entity F1, loss and
        perplexity, seq2seq loss and exact match).
    """
    task, settings, examples = _run_and_examples(model_dir, data_path, True, columns)  # bad data: before loading
    model, _ = load_model(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    batches = task.batches(task.encode(examples, tokenizer, settings), batch_size, pad_token_id(tokenizer),
                           settings, shuffle=False)
    return evaluate_objective(model, task.objective(settings), batches.evaluation_batches())


def predict(model_dir: str | Path, input_path: str | Path, batch_size: int = 32, max_tokens: int = 256,
            temperature: float = 0.0, columns: dict[str, str | None] | None = None) -> Iterator[dict[str, Any]]:
    """Predictions of a fine-tuned model for each input record, in input order.

    ``columns`` names the input columns (``text_column``, ``text_pair_column``)
    where they differ from the training data's. Targets in the input are
    allowed but not used: predictions never depend on them.

    Yields:
        Classification: ``{"label", "probabilities": {label: p}}`` (multi-label:
        ``{"labels", "probabilities"}``; regression: ``{"value"}``). Tagging:
        ``{"words", "tags"}``. Instruction tuning: ``{"completion"}`` for the
        prompt (or the conversation up to its last assistant turn).
        Sequence to sequence: ``{"target"}``, generated.
    """
    task, settings, examples = _run_and_examples(model_dir, input_path, False, columns)
    model, _ = load_model(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    yield from task.predict(model, tokenizer, examples, settings, batch_size, max_tokens, temperature)


def write_predictions(predictions: Iterator[dict], output: str | Path | None) -> int:
    """Write predictions as JSON lines to ``output`` (atomically) or stdout; returns the count."""
    count = 0
    if output is None:
        for record in predictions:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
        return count
    output = Path(output)
    temporary = output.with_name(f".{output.name}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in predictions:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        temporary.replace(output)
    finally:
        temporary.unlink(missing_ok=True)
    return count


def fuse(model_dir: str | Path, out: str | Path, dequantize: bool = False, overwrite: bool = False) -> Path:
    """Merge a LoRA run's adapters into its base and write a standalone model folder
    (quantized bases stay quantized unless ``dequantize``)."""
    from .model_files.export import dequantize_model
    from .model_files.hub import atomic_output_dir
    from .model_files.weight_files import save_safetensors
    from .training.lora import fuse_lora

    folder = Path(model_dir)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} has no {ADAPTER_CONFIG}: there are no LoRA adapters to fuse")
    model, config = load_model(folder)
    fuse_lora(model, dequantize=dequantize)
    if dequantize:
        dequantize_model(model)
    # mlx-lm's layout; the quantization record is built from the fused model's modules.
    weights, config = mlx_lm_folder(model, config, get_family(config["model_type"]), {"trained_by": "mlx_llm"},
                                    FORMAT_VERSION, OWN_NAMES_VERSION)
    base = read_json(folder / ADAPTER_CONFIG).get("base_model")
    with atomic_output_dir(Path(out), overwrite=overwrite, inputs={"MODEL_DIR": folder, "base_model": base}) as staging:
        save_safetensors(weights, staging)
        write_json(config, staging / "config.json")
        copy_tokenizer_files(folder, staging)
        if (folder / RUN_FILE).is_file():
            replace(RunSettings.from_json(folder), fused_from=str(folder.resolve())).to_json(staging)
    return Path(out)


def __getattr__(name: str) -> tuple[str, ...]:
    """The former tables ``ENCODERS`` and ``DECODERS`` (the model_types fine-tuning takes),
    derived on first use from each family's ``Model.kind``."""
    if name in ("ENCODERS", "DECODERS"):
        return model_types_of_kind(ENCODER if name == "ENCODERS" else DECODER)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
