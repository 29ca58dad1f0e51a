"""Fine-tuning: adapt a pretrained model to text classification, sequence
labelling or instruction following, fully or with LoRA, then predict and
evaluate with the result.

A run folder is a model folder too: ``config.json`` (the task model, with
its labels), the weights (``model.safetensors``, or ``adapters.safetensors``
plus ``adapter_config.json`` naming the base model for LoRA), the tokenizer
files and ``finetune.json`` (how the data is read, the metrics), next to the
trainer's ``metrics.jsonl``, ``loss_curve.png``, ``checkpoints/`` and ``best/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import data
from .export import hf_architecture
from .heads import task_logits
from .hub import copy_tokenizer_files, read_json, resolve_model_path, write_json
from .loading import (ADAPTER_CONFIG, FORMAT_KEY, FORMAT_VERSION, OWN_NAMES_VERSION, load_model,
                      quantization_predicate, read_config)
from .lora import LoRAConfig, apply_lora, save_adapters
from .mlx_lm_layout import mlx_lm_folder
from .models import get_family
from .objectives import CausalLMObjective, SequenceClassificationObjective, TokenClassificationObjective
from .pretrain import save_model
from .run_folders import RunFolder
from .tokenization import Tokenizer
from .training import Trainer, TrainingConfig, evaluate_objective

TASKS = ("classify", "tag", "lm")
MODEL_TASKS = {"classify": "sequence_classification", "tag": "token_classification", "lm": "causal_lm"}
ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")
# transformers' problem_type names.
HF_PROBLEMS = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
               "regression": "regression"}
RUN_FILE = "finetune.json"


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs (the CLI's options, one field each).

    Attributes:
        task: ``"classify"``, ``"tag"`` or ``"lm"`` (instruction tuning).
        model: Pretrained model folder or Hub id.
        train: Training file (CSV/TSV/JSONL; CoNLL for tagging; JSONL for lm).
        out: Run folder.
        valid: Validation file in the same format (metrics, best checkpoint).
        text_column, text_pair_column, label_column: Columns of classification data.
        problem: ``"single_label"``, ``"multi_label"`` or ``"regression"``.
        scheme: Tagging scheme for entity scores, ``"IOB2"`` or ``"IOBES"``
            (``None``: IOBES when the tags have S-/E- prefixes).
        max_length: Longest tokenized input; longer ones are truncated.
        batch_size, grad_accum, epochs, steps: ``steps`` overrides ``epochs``.
        learning_rate: Peak rate; ``None`` gives 5e-5 (full) or 2e-4 (LoRA).
        warmup_ratio: Fraction of the steps spent warming up.
        lora, rank, alpha, lora_dropout, lora_layers, target_modules: LoRA
            (``lora_layers``: the last N layers; ``None`` = all).
        quantize: 4 or 8 to quantize the frozen base for LoRA (QLoRA).
        mask_prompt: No loss on prompt tokens (instruction tuning).
        eval_every: Validation every N steps (``None``: once per epoch).
        best_metric: Metric that picks the best checkpoint (``None``: accuracy,
            micro-F1, entity F1 or loss, by task).
        early_stopping_patience: Evaluations without improvement before stopping.
    """

    task: str
    model: str
    train: str
    out: str
    valid: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"
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
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        for name in ("max_length", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.quantize is not None and not self.lora:
            raise ValueError("quantize trains LoRA adapters over a quantized base: pass lora=True (--lora) too")
        if self.quantize not in (None, 4, 8):
            raise ValueError(f"quantize must be 4 or 8 bits, got {self.quantize}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        for name in ("model", "train", "out", "valid"):  # paths are recorded as JSON
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))


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


def _task_config(base_config: dict, task: str, labels: data.LabelSet | None, problem: str, pad_token_id: int | None,
                 model_source: str) -> dict:
    """The base's ``config.json`` turned into the task model's."""
    model_type = base_config.get("model_type")
    if task == "lm" and model_type not in DECODERS:
        raise ValueError(
            f"--task lm tunes a decoder (GPT-2 or the Llama family); {model_source} is a {model_type!r} model"
        )
    if model_type not in ENCODERS + DECODERS:
        raise ValueError(
            f"fine-tuning {model_type!r} models is not supported; use a BERT-family encoder or a GPT-2 / "
            "Llama-family decoder"
        )
    config = {key: value for key, value in base_config.items() if key not in ("quantization",)}
    config["architectures"] = [hf_architecture(model_type, MODEL_TASKS[task])]
    for key in ("id2label", "label2id", "num_labels", "problem_type"):
        config.pop(key, None)
    if task == "classify":
        config["problem_type"] = HF_PROBLEMS[problem]
        if problem == "regression":
            config["num_labels"] = 1
            config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
        else:
            config.update(labels.to_config())
    elif task == "tag":
        config.update(labels.to_config())
    if model_type in DECODERS and task != "lm" and config.get("pad_token_id") is None and pad_token_id is not None:
        config["pad_token_id"] = pad_token_id  # transformers finds each row's last real token with it
    return config


def _labels_for(config: FinetuneConfig, examples: list, base_config: dict) -> data.LabelSet | None:
    if config.task == "lm" or (config.task == "classify" and config.problem == "regression"):
        return None
    if config.task == "classify" and config.problem == "multi_label":
        values = [label for example in examples for label in example.label]
    elif config.task == "classify":
        values = [example.label for example in examples]
    else:
        values = [tag for example in examples for tag in example.tags]
    labels = data.LabelSet.from_labels(values)
    if "label2id" in base_config and set(base_config["label2id"]) == set(labels.names):
        labels = data.LabelSet.from_config(base_config)  # keep a trained head's label order
    return labels


def _read(task: str, path: str, config: FinetuneConfig, require_labels: bool = True) -> list:
    if task == "classify":
        return data.read_classification(path, config.text_column, config.text_pair_column, config.label_column,
                                        require_labels=require_labels)
    if task == "tag":
        return data.read_conll(path, require_tags=require_labels)
    return data.read_instructions(path)


def _encode(task: str, examples: list, tokenizer: Tokenizer, labels, info: dict) -> list[dict]:
    if task == "classify":
        return data.encode_classification(examples, tokenizer, labels, info["max_length"], problem=info["problem"])
    if task == "tag":
        return data.encode_tagging(examples, tokenizer, labels, info["max_length"])
    return data.encode_instructions(examples, tokenizer, info["max_length"], mask_prompt=info["mask_prompt"])


def _batches(task: str, encoded: list[dict], batch_size: int, pad_token_id: int, info: dict, shuffle: bool,
             seed: int = 0):
    if task == "classify":
        return data.ClassificationBatches(encoded, batch_size, pad_token_id, shuffle=shuffle, seed=seed,
                                          problem=info["problem"])
    if task == "tag":
        return data.TaggingBatches(encoded, batch_size, pad_token_id, shuffle=shuffle, seed=seed)
    return data.InstructionBatches(encoded, batch_size, pad_token_id, shuffle=shuffle, seed=seed)


def _objective(info: dict):
    if info["task"] == "classify":
        return SequenceClassificationObjective(info["problem"])
    if info["task"] == "tag":
        return TokenClassificationObjective(info["labels"], scheme=info["scheme"])
    return CausalLMObjective()


def _pad_id(tokenizer: Tokenizer) -> int:
    """The padding id (GPT-2 and Llama tokenizers often have none: then end of sequence;
    masks keep padding out of every result either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def _default_best_metric(info: dict) -> str:
    if info["task"] == "classify":
        return {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "loss"}[info["problem"]]
    return "f1" if info["task"] == "tag" else "loss"


def _lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention's query and value projections (LoRA's choice), or the fused
    ``qkv_proj`` where one product computes all three (GPT-2's ``c_attn``, peft's default there)."""
    fused = any(name.endswith(".qkv_proj") for name, _ in model.named_modules())
    return ("qkv_proj",) if fused else ("q_proj", "v_proj")


def _trainable_heads(model: nn.Module) -> tuple[str, ...]:
    """Modules that start fresh (or matter most) and train in full under LoRA."""
    names = {name for name, _ in model.named_modules()}
    return tuple(name for name in ("classifier", "head", "model.pooler") if name in names)


def _apply_lora(model: nn.Module, config: FinetuneConfig, info: dict) -> LoRAConfig:
    """Put LoRA adapters into ``model`` (over a base quantized first with ``config.quantize``)."""
    if config.quantize is not None:
        group_size = 64 if model.args.hidden_size % 64 == 0 else 32
        nn.quantize(model, group_size=group_size, bits=config.quantize,
                    class_predicate=quantization_predicate(group_size))
        info["quantization"] = {"group_size": group_size, "bits": config.quantize}
    lora_config = LoRAConfig(rank=config.rank, alpha=config.alpha, dropout=config.lora_dropout,
                             target_modules=config.target_modules or _lora_targets(model),
                             num_layers=config.lora_layers,
                             trainable_modules=_trainable_heads(model) if config.task != "lm" else ())
    apply_lora(model, lora_config)
    return lora_config


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
            folder this run may write into (see `mlx_llm.run_folders`), or bad input.
    """
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
    tokenizer = Tokenizer.from_pretrained(folder)
    pad_id = _pad_id(tokenizer)
    train_examples = _read(config.task, config.train, config)
    labels = _labels_for(config, train_examples, base_config)
    scheme = config.scheme
    if config.task == "tag" and scheme is None:
        prefixes = {tag.split("-", 1)[0] for example in train_examples for tag in example.tags}
        scheme = "IOBES" if prefixes & {"S", "E"} else "IOB2"
    info = {
        "task": config.task, "problem": config.problem if config.task == "classify" else None, "scheme": scheme,
        "labels": None if labels is None else list(labels.names), "max_length": config.max_length,
        "text_column": config.text_column, "text_pair_column": config.text_pair_column,
        "label_column": config.label_column, "mask_prompt": config.mask_prompt,
    }
    task_config = _task_config(base_config, config.task, labels, config.problem, pad_id, config.model)

    mx.random.seed(config.seed)  # fresh heads and LoRA matrices
    model, _ = load_model(folder, dtype=config.dtype, task_config=task_config)
    if base_config.get("quantization"):
        info["quantization"] = base_config["quantization"]  # a quantized checkpoint as the frozen base
    lora_config = _apply_lora(model, config, info) if config.lora else None
    num_parameters = sum(value.size for _, value in tree_flatten(model.parameters()))
    trainable = sum(value.size for _, value in tree_flatten(model.trainable_parameters()))

    train_encoded = _encode(config.task, train_examples, tokenizer, labels, info)
    train_batches = _batches(config.task, train_encoded, config.batch_size, pad_id, info, shuffle=True,
                             seed=config.seed)
    eval_data = None
    if config.valid is not None:
        valid_examples = _read(config.task, config.valid, config)
        valid_encoded = _encode(config.task, valid_examples, tokenizer, labels, info)
        eval_data = _batches(config.task, valid_encoded, config.batch_size, pad_id, info,
                             shuffle=False).evaluation_batches

    # Each epoch rounds up to whole optimizer steps, so evaluation at every epoch lands on one.
    steps_per_epoch = data.steps_for(1, train_batches.batches_per_epoch, config.grad_accum)
    steps = config.steps or data.steps_for(config.epochs, steps_per_epoch)
    learning_rate = config.learning_rate or (2e-4 if config.lora else 5e-5)
    best_metric = config.best_metric or (_default_best_metric(info) if eval_data is not None else None)
    training = TrainingConfig(
        steps=steps, grad_accum=config.grad_accum, learning_rate=learning_rate,
        min_learning_rate=config.min_learning_rate, warmup_steps=int(config.warmup_ratio * steps),
        schedule=config.schedule, weight_decay=config.weight_decay, betas=(0.9, 0.999),
        max_grad_norm=config.max_grad_norm, eval_every=config.eval_every or steps_per_epoch,
        save_every=config.save_every, log_every=config.log_every, seed=config.seed,
        best_metric=best_metric, early_stopping_patience=config.early_stopping_patience,
    )
    with run_folder:  # a fresh run that fails before its first checkpoint leaves no files
        out = run_folder.prepare()
        trainer = Trainer(model, _objective(info), train_batches, training, out, eval_data=eval_data,
                          run_config={"finetune": asdict(config)}, progress=progress)
        result = trainer.fit(resume=resume)
        best = trainer.load_best()
        metrics = trainer.evaluate() if eval_data is not None else {}
        model.eval()

        info.update({"base_model": str(folder.resolve()) if folder.exists() else config.model,
                     "lora": None if lora_config is None else lora_config.to_dict(),
                     "metrics": metrics, "best": best, "steps": result.steps,
                     "num_parameters": num_parameters, "trainable_parameters": trainable})
        if run_folder.writer:  # one writer when data-parallel
            _save_run(out, model, task_config, tokenizer, folder, info, lora_config, config.dtype)
    return FinetuneResult(out=out, steps=result.steps, seconds=result.seconds, train_seconds=result.train_seconds,
                          examples_per_second=result.examples / max(result.train_seconds, 1e-9),
                          tokens_per_second=result.tokens / max(result.train_seconds, 1e-9),
                          num_parameters=num_parameters, trainable_parameters=trainable, metrics=metrics, best=best)


def _save_run(out: Path, model: nn.Module, task_config: dict, tokenizer: Tokenizer, source: Path, info: dict,
              lora_config: LoRAConfig | None, dtype: str) -> None:
    """Write the model files of a finished run (each file atomically)."""
    if lora_config is None:
        save_model(model, task_config, out, source, dtype=dtype)
    else:
        metadata = {"base_model": info["base_model"]}
        if "quantization" in info:
            metadata["quantization"] = info["quantization"]
        save_adapters(out, model, lora_config, metadata=metadata)
        write_json({**task_config, FORMAT_KEY: {"format_version": FORMAT_VERSION, "trained_by": "mlx_llm"}},
                   out / "config.json")
        copy_tokenizer_files(source, out)
    write_json(info, out / RUN_FILE)


# --- using a run ------------------------------------------------------------------------------


def read_run(model_dir: str | Path) -> dict:
    """The task description a run folder keeps in ``finetune.json``.

    Raises:
        FileNotFoundError: naming the folder, when it is not a fine-tuning run.
    """
    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no {RUN_FILE}: it is not a fine-tuned model folder (made by `mlx-llm finetune`)"
        )
    return read_json(path)


COLUMN_NAMES = ("text_column", "text_pair_column", "label_column")


def _task_examples(info: dict, path: str, require_labels: bool, columns: dict[str, str | None] | None = None) -> list:
    # The columns the run was trained with, unless the caller names others (data in another layout).
    chosen = {name: info.get(name) for name in COLUMN_NAMES}
    for name, value in (columns or {}).items():
        if name not in COLUMN_NAMES:
            raise ValueError(f"unknown column setting {name!r}; choose from {COLUMN_NAMES}")
        if value is not None:
            if info["task"] != "classify":
                raise ValueError(f"{name} (--{name.replace('_', '-')}) applies to classification runs; this "
                                 f"run's task is {info['task']}")
            chosen[name] = value
    settings = FinetuneConfig(task=info["task"], model="", train="", out="",
                              text_column=chosen["text_column"], text_pair_column=chosen["text_pair_column"],
                              label_column=chosen["label_column"] or "label")
    return _read(info["task"], path, settings, require_labels=require_labels)


def _label_set(info: dict) -> data.LabelSet | None:
    return None if info.get("labels") is None else data.LabelSet(info["labels"])


def evaluate(model_dir: str | Path, data_path: str | Path, batch_size: int = 32,
             columns: dict[str, str | None] | None = None) -> dict[str, float]:
    """The task's metrics of a fine-tuned model on labelled data in the training format.

    Args:
        model_dir: A run folder of `finetune`.
        data_path: Labelled data.
        batch_size: Examples per forward pass.
        columns: Classification data whose columns differ from the training
            data's: ``text_column``, ``text_pair_column`` and/or ``label_column``.

    Returns:
        The task's metrics (accuracy and macro-F1, entity F1, or loss).
    """
    info = read_run(model_dir)
    examples = _task_examples(info, str(data_path), require_labels=True, columns=columns)  # bad data: before loading
    model, _ = load_model(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    encoded = _encode(info["task"], examples, tokenizer, _label_set(info), info)
    batches = _batches(info["task"], encoded, batch_size, _pad_id(tokenizer), info, shuffle=False)
    return evaluate_objective(model, _objective(info), (batch for _, batch in batches.iterate_once()))


def predict(model_dir: str | Path, input_path: str | Path, batch_size: int = 32, max_tokens: int = 256,
            temperature: float = 0.0, columns: dict[str, str | None] | None = None) -> Iterator[dict[str, Any]]:
    """Predictions of a fine-tuned model for each input record, in input order.

    ``columns`` names the ``text_column`` / ``text_pair_column`` of
    classification input whose columns differ from the training data's.

    Yields:
        Classification: ``{"label", "probabilities": {label: p}}`` (multi-label:
        ``{"labels", "probabilities"}``; regression: ``{"value"}``). Tagging:
        ``{"words", "tags"}``. Instruction tuning: ``{"completion"}`` for the
        prompt (or the conversation up to its last assistant turn).
    """
    info = read_run(model_dir)
    examples = _task_examples(info, str(input_path), require_labels=False, columns=columns)
    model, _ = load_model(model_dir)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    if info["task"] == "lm":
        yield from _predict_completions(model, tokenizer, examples, max_tokens, temperature)
        return
    # Labels in the input are allowed but not used: predictions never depend on them.
    if info["task"] == "classify":
        examples = [replace(example, label=None) for example in examples]
    else:
        examples = [replace(example, tags=None) for example in examples]
    encoded = _encode(info["task"], examples, tokenizer, _label_set(info), info)
    batches = _batches(info["task"], encoded, batch_size, _pad_id(tokenizer), info, shuffle=False)
    names = info["labels"]
    for indices, batch in batches.iterate_once():
        logits = task_logits(model, batch).astype(mx.float32)
        if info["task"] == "classify" and info["problem"] == "regression":
            values = np.array(logits[:, 0])
            for value in values:
                yield {"value": float(value)}
            continue
        if info["task"] == "classify":
            probabilities = mx.sigmoid(logits) if info["problem"] == "multi_label" else mx.softmax(logits, axis=-1)
            probabilities = np.array(probabilities)
            for row in probabilities:
                scores = {names[i]: round(float(p), 6) for i, p in enumerate(row)}
                if info["problem"] == "multi_label":
                    yield {"labels": [names[i] for i in np.flatnonzero(row >= 0.5)], "probabilities": scores}
                else:
                    yield {"label": names[int(row.argmax())], "probabilities": scores}
            continue
        predictions = np.array(logits.argmax(axis=-1))
        for row, index in enumerate(np.array(indices)):
            example, word_ids = examples[int(index)], encoded[int(index)]["word_ids"]
            tags: list[str | None] = [None] * len(example.words)
            for position, word in enumerate(word_ids[: predictions.shape[1]]):
                if word >= 0 and tags[word] is None:
                    tags[word] = names[int(predictions[row, position])]
            # Words cut by truncation (or with no tokens) get "O".
            yield {"words": example.words, "tags": [tag or "O" for tag in tags]}


def _predict_completions(model, tokenizer, examples, max_tokens: int, temperature: float) -> Iterator[dict]:
    from .generate import generate

    for example in examples:
        if example.messages is not None:
            messages = list(example.messages)
            while messages and messages[-1]["role"] == "assistant":
                messages.pop()
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        else:
            prompt = example.prompt if example.prompt is not None else example.text
        completion = generate(model, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature)
        yield {"completion": completion}


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
    from .export import dequantize_model
    from .hub import atomic_output_dir
    from .weight_files import save_safetensors
    from .lora import fuse_lora

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
            info = read_json(folder / RUN_FILE)
            info["fused_from"] = str(folder.resolve())
            write_json(info, staging / RUN_FILE)
    return Path(out)
