"""Knowledge distillation: train a smaller, faster student to imitate a teacher.

Students come from a config (fewer layers, narrower) or from the teacher
itself by copying a subset of its layers (every other one by default, as
DistilBERT), embeddings and heads included. One objective mixes the terms of
the classic recipes, each weighted by an ``alpha``:

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
causal-LM distillation of decoders (``lm``).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import finetune as finetuning
from .data import steps_for
from .export import dequantize_model
from .heads import task_of
from .hub import read_json, resolve_model_path, write_json
from .layers import Linear
from .loading import DTYPES, load_model
from .losses import (
    IGNORE_INDEX,
    attention_score_mse_loss,
    binary_cross_entropy_with_logits,
    cosine_embedding_loss,
    cross_entropy,
    hidden_mse_loss,
    jensen_shannon,
    mean_squared_error,
    pkd_loss,
    reverse_kl,
    soft_target_loss,
)
from .lora import fuse_lora
from .models import get_family
from .objectives import CausalLMObjective, MaskedLMObjective
from .pretrain import build_model, save_model
from .run_folders import RunFolder
from .tokenization import Tokenizer
from .training import Trainer, TrainingConfig, evaluate_objective
from .utils import num_parameters

TASKS = ("mlm", "classify", "tag", "lm")
ENCODERS = ("bert", "roberta", "distilbert")
DIVERGENCES = ("forward", "reverse", "jsd")
# config.json key holding the number of layers, per model_type.
LAYER_KEYS = {"bert": "num_hidden_layers", "roberta": "num_hidden_layers", "distilbert": "n_layers",
              "gpt2": "n_layer", "llama": "num_hidden_layers", "mistral": "num_hidden_layers",
              "qwen2": "num_hidden_layers", "qwen3": "num_hidden_layers", "smollm3": "num_hidden_layers",
              "olmo2": "num_hidden_layers"}
WIDTH_KEYS = {"distilbert": "dim", "gpt2": "n_embd"}
RUN_FILE = "distill.json"


# --- students ----------------------------------------------------------------------------------


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student of ``student_layers`` copies: every other one
    (0, 2, 4, ... as DistilBERT) when that fits, else evenly spaced from the first to the last."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} layers (the teacher's), got {student_layers}")
    if 2 * student_layers <= teacher_layers:
        return [2 * index for index in range(student_layers)]
    if student_layers == 1:
        return [0]
    return [round(index * (teacher_layers - 1) / (student_layers - 1)) for index in range(student_layers)]


def check_layer_map(layer_map: list[int], teacher_layers: int) -> list[int]:
    """Validate a layer map (student layer i <- teacher layer ``layer_map[i]``)."""
    if not layer_map:
        raise ValueError("the layer map is empty; name at least one teacher layer")
    for index in layer_map:
        if not 0 <= index < teacher_layers:
            raise ValueError(
                f"the layer map names teacher layer {index}, but the teacher has {teacher_layers} layers "
                f"(0 to {teacher_layers - 1})"
            )
    return list(layer_map)


def _layer_count(config: dict) -> int:
    return config[LAYER_KEYS[config["model_type"]]]


def _width(config: dict) -> int:
    return config[WIDTH_KEYS.get(config["model_type"], "hidden_size")]


def student_from_teacher(teacher: nn.Module, teacher_config: dict, layer_map: list[int]) -> tuple[nn.Module, dict]:
    """A student with ``len(layer_map)`` layers initialized from the teacher:
    student layer ``i`` is a copy of teacher layer ``layer_map[i]``; embeddings,
    final norms, pooler and heads are copied as they are.

    Returns:
        ``(student, config)``.
    """
    layer_map = check_layer_map(layer_map, _layer_count(teacher_config))
    config = {**teacher_config, LAYER_KEYS[teacher_config["model_type"]]: len(layer_map)}
    # Per-layer settings follow the copied layers (SmolLM3's rotary flags, per-layer attention kinds).
    rope_layers = getattr(getattr(teacher, "args", None), "rope_layers", None)
    if rope_layers:
        config["no_rope_layers"] = [int(rope_layers[index]) for index in layer_map]
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == _layer_count(teacher_config):
        config["layer_types"] = [config["layer_types"][index] for index in layer_map]
    family = get_family(config["model_type"])
    student = family.Model(family.ModelArgs.from_config(config))
    source = dict(tree_flatten(teacher.parameters()))
    weights = {}
    for name, _ in tree_flatten(student.parameters()):
        if name.startswith("model.layers."):
            index, _, rest = name.removeprefix("model.layers.").partition(".")
            name_in_teacher = f"model.layers.{layer_map[int(index)]}.{rest}"
        else:
            name_in_teacher = name
        weights[name] = source[name_in_teacher]
    student.load_weights(list(weights.items()))
    mx.eval(student.parameters())
    return student, config


def student_from_config(teacher_config: dict, fields: dict) -> tuple[nn.Module, dict]:
    """A freshly initialized student: the teacher's config with ``fields`` replaced
    (e.g. fewer layers, a narrower width), same task and labels.

    Raises:
        ValueError: when the student's vocabulary differs from the teacher's
            (logit losses compare distributions over the same tokens).
    """
    config = {**teacher_config, **fields}
    if config.get("model_type") != teacher_config.get("model_type"):
        raise ValueError(f"the student must be a {teacher_config['model_type']} model like the teacher, "
                         f"not {config.get('model_type')!r}")
    if config.get("vocab_size") != teacher_config.get("vocab_size"):
        raise ValueError(
            f"the student config has vocab_size {config.get('vocab_size')}, the teacher "
            f"{teacher_config.get('vocab_size')}: logit losses need the same vocabulary (and tokenizer)"
        )
    return build_model(config), config


class Distiller(nn.Module):
    """What the trainer optimizes: the student, and the projection of its hidden
    states to the teacher's width when they differ (TinyBERT's ``W_h``)."""

    def __init__(self, student: nn.Module, student_width: int, teacher_width: int, needs_projection: bool):
        super().__init__()
        self.student = student
        if needs_projection and student_width != teacher_width:
            self.projection = Linear(student_width, teacher_width)

    def project(self, hidden_states: mx.array) -> mx.array:
        return self.projection(hidden_states) if "projection" in self else hidden_states


# --- the objective -----------------------------------------------------------------------------


@dataclass
class LossWeights:
    """The ``alpha`` of each term (0 leaves a term out)."""

    soft: float = 1.0
    hard: float = 1.0
    cos: float = 0.0
    hidden: float = 0.0
    attention: float = 0.0
    pkd: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"alpha_{name} must be >= 0, got {value}")
        if not any(asdict(self).values()):
            raise ValueError("every alpha is 0: give at least one loss term a weight")

    def active(self) -> dict[str, float]:
        return {name: value for name, value in asdict(self).items() if value > 0}


def _encoder_inputs(model: nn.Module, batch: dict) -> dict:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if "token_type_ids" in batch and model.args.type_vocab_size > 0:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return inputs


def attention_scores(layer: nn.Module, hidden_states: mx.array, attention_mask: mx.array | None) -> mx.array:
    """A post-LN encoder layer's unnormalized attention scores ``(B, H, L, L)`` for its
    input ``hidden_states`` (``q k^T / sqrt(d)``, padding keys at -inf-like values)."""
    attention = layer.self_attn
    queries, keys, _ = attention.project(hidden_states)
    scores = (queries * attention.scale) @ keys.transpose(0, 1, 3, 2)
    if attention_mask is not None:
        scores = mx.where(attention_mask[:, None, None, :] != 0, scores, mx.array(-1e4, scores.dtype))
    return scores


class DistillationObjective:
    """The weighted distillation terms for one task (see the module docstring).

    Each term's loss is a sum here; the trainer divides it by the term's count.

    Args:
        teacher: The frozen teacher (eval mode; never updated).
        task: ``"mlm"``, ``"classify"``, ``"tag"`` or ``"lm"``.
        weights: `LossWeights`.
        temperature: Softening of both distributions for the soft term.
        layer_map: Student layer i is matched with teacher layer ``layer_map[i]``
            (hidden, attention and PKD terms).
        divergence: Causal LMs: ``"forward"`` KL, ``"reverse"`` KL or ``"jsd"``.
        beta: The Jensen-Shannon mix.
        problem: Classification kind of the teacher's head.
        task_objective: Validation metrics of the task (on the student).
        teacher_logits: Cached teacher logits by ``example_index`` (classify, tag).
    """

    def __init__(self, teacher: nn.Module, task: str, weights: LossWeights, temperature: float,
                 layer_map: list[int], divergence: str = "forward", beta: float = 0.5,
                 problem: str = "single_label", task_objective=None, teacher_logits: mx.array | None = None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        encoder = teacher.args.model_type in ENCODERS
        for name in ("hidden", "attention", "pkd"):
            if getattr(weights, name) > 0 and not encoder:
                raise ValueError(f"the {name} term compares encoder layers; {teacher.args.model_type} teachers "
                                 "distill with the soft, hard and cos terms")
        if weights.pkd > 0 and task != "classify":
            raise ValueError("the PKD term matches [CLS] states: it serves --task classify")
        self.teacher = teacher
        self.task = task
        self.weights = weights
        self.temperature = temperature
        self.layer_map = layer_map
        self.divergence = divergence
        self.beta = beta
        self.problem = problem
        self.task_objective = task_objective
        self.teacher_logits = teacher_logits
        self.encoder = encoder
        self.needs_states = any(getattr(weights, name) > 0 for name in ("hidden", "attention", "pkd", "cos"))

    @property
    def state(self) -> list:
        """The arrays the loss reads besides the batch (for the trainer's compiled step)."""
        return [self.teacher.state]  # cached logits are constants: captured as they are

    # which positions each term averages over
    def _soft_positions(self, batch: dict) -> mx.array | None:
        if self.task == "mlm":
            return batch["mlm_labels"] != IGNORE_INDEX
        if self.task == "lm":
            return batch["targets"] != IGNORE_INDEX
        if self.task == "tag":
            return batch["attention_mask"] != 0
        return None  # one distribution per sequence

    def _token_positions(self, batch: dict) -> mx.array:
        if "attention_mask" in batch:
            return batch["attention_mask"] != 0
        return mx.ones(batch["input_ids"].shape, dtype=mx.bool_)

    def counts(self, batch: dict) -> dict[str, mx.array]:
        rows = batch["input_ids"].shape[0]
        counts = {}
        soft_positions = self._soft_positions(batch)
        if self.weights.soft:
            counts["soft"] = mx.array(rows) if soft_positions is None else soft_positions.sum()
        if self.weights.hard:
            if self.task == "mlm":
                counts["hard"] = (batch["mlm_labels"] != IGNORE_INDEX).sum()
            elif self.task == "lm":
                counts["hard"] = (batch["targets"] != IGNORE_INDEX).sum()
            elif self.task == "tag":
                counts["hard"] = (batch["labels"] != IGNORE_INDEX).sum()
            else:
                counts["hard"] = mx.array(batch["labels"].size)
        tokens = self._token_positions(batch).sum()
        if self.weights.cos:
            counts["cos"] = tokens
        if self.weights.hidden:
            counts["hidden"] = tokens * _model_width(self.teacher)
        if self.weights.attention:
            length = batch["input_ids"].shape[1]
            counts["attention"] = mx.array(rows * self.teacher.args.num_heads * length * length)
        if self.weights.pkd:
            counts["pkd"] = mx.array(rows)
        return counts

    def _run(self, model: nn.Module, batch: dict, with_states: bool):
        """``(logits, hidden states or None)`` of a model for this task."""
        if self.encoder:
            output = model(**_encoder_inputs(model, batch), output_hidden_states=with_states)
            logits = output.mlm_logits if self.task == "mlm" else output.logits
            return logits, output.hidden_states
        logits = model(batch["input_ids"], batch.get("attention_mask"))
        states = [model.model(batch["input_ids"], batch.get("attention_mask"))] if with_states else None
        return logits, states

    def _teacher(self, batch: dict):
        if self.teacher_logits is not None and "example_index" in batch and not self.needs_states:
            logits = self.teacher_logits[batch["example_index"]]
            if logits.ndim == 3:
                logits = logits[:, : batch["input_ids"].shape[1]]
            return logits, None
        logits, states = self._run(self.teacher, batch, self.needs_states)
        return mx.stop_gradient(logits), None if states is None else [mx.stop_gradient(s) for s in states]

    def _soft(self, student_logits: mx.array, teacher_logits: mx.array, positions) -> mx.array:
        if self.task == "classify" and self.problem == "regression":
            return mean_squared_error(student_logits, teacher_logits.squeeze(-1), reduction="sum")
        if self.task == "classify" and self.problem == "multi_label":
            targets = mx.sigmoid(teacher_logits / self.temperature)
            return (self.temperature ** 2) * binary_cross_entropy_with_logits(
                student_logits / self.temperature, targets, reduction="sum") / student_logits.shape[-1]
        if self.task == "lm" and self.divergence != "forward":
            if self.divergence == "reverse":
                return reverse_kl(student_logits, teacher_logits, mask=positions, temperature=self.temperature,
                                  reduction="sum")
            return jensen_shannon(student_logits, teacher_logits, beta=self.beta, mask=positions,
                                  temperature=self.temperature, reduction="sum")
        return soft_target_loss(student_logits, teacher_logits, temperature=self.temperature, mask=positions,
                                reduction="sum")

    def _hard(self, logits: mx.array, batch: dict) -> mx.array:
        if self.task == "mlm":
            return cross_entropy(logits, batch["mlm_labels"], reduction="sum")
        if self.task == "lm":
            return cross_entropy(logits, batch["targets"], reduction="sum")
        if self.task == "tag" or self.problem == "single_label":
            return cross_entropy(logits, batch["labels"], reduction="sum")
        if self.problem == "multi_label":
            return binary_cross_entropy_with_logits(logits, batch["labels"], reduction="sum")
        return mean_squared_error(logits, batch["labels"], reduction="sum")

    def sums(self, distiller: Distiller, batch: dict) -> dict[str, mx.array]:
        student = distiller.student
        student_logits, student_states = self._run(student, batch, self.needs_states)
        teacher_logits, teacher_states = self._teacher(batch)
        sums = {}
        if self.weights.soft:
            sums["soft"] = self._soft(student_logits, teacher_logits, self._soft_positions(batch))
        if self.weights.hard:
            sums["hard"] = self._hard(student_logits, batch)
        positions = self._token_positions(batch)
        if self.weights.cos:
            sums["cos"] = cosine_embedding_loss(distiller.project(student_states[-1]), teacher_states[-1],
                                                mask=positions, reduction="sum")
        if self.weights.hidden:
            # Embedding outputs, then each student layer's output against its teacher layer's.
            pairs = [(0, 0)] + [(index + 1, teacher + 1) for index, teacher in enumerate(self.layer_map)]
            sums["hidden"] = sum(
                hidden_mse_loss(distiller.project(student_states[s]), teacher_states[t], mask=positions,
                                reduction="sum")
                for s, t in pairs
            )
        if self.weights.attention:
            mask = batch.get("attention_mask")
            total = mx.array(0.0)
            for index, teacher_index in enumerate(self.layer_map):
                ours = attention_scores(student.layers[index], student_states[index], mask)
                theirs = mx.stop_gradient(
                    attention_scores(self.teacher.layers[teacher_index], teacher_states[teacher_index], mask))
                total = total + attention_score_mse_loss(ours, theirs, attention_mask=mask) * ours.size
            sums["attention"] = total
        if self.weights.pkd:
            ours = [distiller.project(student_states[index + 1][:, 0]) for index in range(len(self.layer_map))]
            theirs = [teacher_states[teacher + 1][:, 0] for teacher in self.layer_map]
            sums["pkd"] = pkd_loss(ours, theirs) * batch["input_ids"].shape[0]
        return {name: value * getattr(self.weights, name) for name, value in sums.items()}

    def evaluate_dataset(self, distiller: Distiller, batches) -> dict[str, float]:
        """The task's metrics of the student, and its top-1 agreement with the teacher."""
        batches = list(batches)
        metrics = evaluate_objective(distiller.student, self.task_objective, iter(batches))
        agreements, count = 0, 0
        for batch in batches:
            student_logits, _ = self._run(distiller.student, batch, False)
            teacher_logits, _ = self._run(self.teacher, batch, False)
            same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
            positions = self._soft_positions(batch)
            if self.task == "classify" and self.problem != "single_label":
                continue
            if positions is not None:
                same = same & positions
                count += int(positions.sum())
            else:
                count += same.size
            agreements += int(same.sum())
        if count:
            metrics["agreement"] = agreements / count
        return metrics


def _model_width(model: nn.Module) -> int:
    return model.args.hidden_size


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
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
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


def _task_info(config: DistillConfig, teacher_config: dict, folder: Path) -> dict:
    """How the classify/tag data is read: the teacher run's settings, or its config's labels."""
    if (folder / finetuning.RUN_FILE).is_file():
        return read_json(folder / finetuning.RUN_FILE)
    if "id2label" not in teacher_config:
        raise ValueError(f"--task {config.task} distills a fine-tuned model; {config.teacher} has no labels "
                         "(fine-tune it first with `mlx-llm finetune`)")
    labels = [teacher_config["id2label"][str(i)] for i in range(len(teacher_config["id2label"]))]
    problem = {"multi_label_classification": "multi_label", "regression": "regression"}.get(
        teacher_config.get("problem_type"), "single_label")
    return {"task": config.task, "problem": problem if config.task == "classify" else None, "scheme": None,
            "labels": labels, "max_length": config.max_length, "text_column": config.text_column,
            "text_pair_column": config.text_pair_column, "label_column": config.label_column, "mask_prompt": True}


def _expected_task(task: str, model: nn.Module, source: str) -> None:
    wanted = {"classify": ("sequence_classification",), "tag": ("token_classification",),
              "mlm": ("masked_lm", "pretraining"), "lm": ("causal_lm",)}[task]
    if task_of(model) not in wanted:
        raise ValueError(f"--task {task} needs a teacher with a {' or '.join(wanted)} head; {source} is a "
                         f"{model.args.model_type} {task_of(model)} model")


def _text_data(config: DistillConfig, tokenizer: Tokenizer, out: Path, progress: bool):
    """Training and validation batch sources for mlm / lm, and the student's objective."""
    from .data import (BertPretrainingBatches, CausalLMBatches, split_documents, split_tokens,
                       tokenize_corpus, tokenize_documents_for_bert)
    from .pretrain import _DictBatches

    if config.task == "lm":
        token_file = tokenize_corpus(config.data, tokenizer, out / "data", show_progress=progress)
        if config.valid:
            train_tokens = token_file.tokens
            valid_tokens = tokenize_corpus([config.valid], tokenizer, out / "data", show_progress=progress).tokens
        else:
            train_tokens, valid_tokens = split_tokens(token_file, 0.1)
        train = CausalLMBatches(train_tokens, config.max_length, config.batch_size, seed=config.seed)
        valid = CausalLMBatches(valid_tokens, config.max_length, config.batch_size, seed=config.seed)

        def evaluation() -> Iterator[dict]:
            for inputs, targets in valid.evaluation_batches():
                yield {"input_ids": inputs, "targets": targets}

        return _DictBatches(train), evaluation, train.batches_per_epoch, CausalLMObjective()
    # Documents are separated by blank lines; masked-LM distillation needs no random next
    # sentences, so every pair is a true continuation (next_sentence_probability=1).
    documents = tokenize_documents_for_bert(config.data, tokenizer, split_on_blank_lines=True,
                                            show_progress=progress)
    if config.valid:
        valid_documents = tokenize_documents_for_bert([config.valid], tokenizer, split_on_blank_lines=True,
                                                      show_progress=progress)
    else:
        documents, valid_documents = split_documents(documents, 0.1)
    train = BertPretrainingBatches(documents, tokenizer, config.max_length, config.batch_size, seed=config.seed,
                                   next_sentence_probability=1.0)
    valid = BertPretrainingBatches(valid_documents, tokenizer, config.max_length, config.batch_size,
                                   seed=config.seed + 1, next_sentence_probability=1.0)
    return train, valid.evaluation_batches, train.batches_per_epoch, MaskedLMObjective()


def measure_speed(model: nn.Module, batch: dict, repeats: int = 5, encoder: bool = True) -> float:
    """Inference examples per second of ``model`` on ``batch`` (median of ``repeats``, after a warm-up)."""
    def forward():
        if encoder:
            output = model(**_encoder_inputs(model, batch))
            mx.eval(output.logits if output.logits is not None else output.mlm_logits)
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
    deletes what it holds first; it is never the teacher's folder (`mlx_llm.run_folders`).
    """
    with RunFolder(config.out, resume=resume, overwrite=overwrite,
                   inputs={"--teacher": config.teacher, "--data": config.data, "--valid": config.valid}) as run_folder:
        return _distill(config, run_folder, resume, progress)


def _distill(config: DistillConfig, run_folder: RunFolder, resume: bool, progress: bool) -> DistillResult:
    start = time.perf_counter()
    teacher, teacher_config, folder = load_teacher(config.teacher, config.dtype)
    run_folder.add_inputs({"--teacher": folder})
    tokenizer = Tokenizer.from_pretrained(folder)
    _expected_task(config.task, teacher, config.teacher)
    out = run_folder.path

    # The student.
    mx.random.seed(config.seed)
    layer_map = None
    if config.student_config is not None:
        path = Path(config.student_config)
        if not path.is_file():
            raise FileNotFoundError(f"--student-config {path} does not exist")
        fields = read_json(path)
        student, student_config = student_from_config(teacher_config, fields)
        student.set_dtype(DTYPES[config.dtype])
        student_layers = _layer_count(student_config)
        layer_map = default_layer_map(_layer_count(teacher_config), student_layers)
    else:
        teacher_layers = _layer_count(teacher_config)
        layer_map = config.layer_map or default_layer_map(teacher_layers, config.student_layers)
        student, student_config = student_from_teacher(teacher, teacher_config, layer_map)
    if config.task == "mlm":
        # Task-agnostic students keep only the MLM head (DistilBERT drops NSP and the pooler).
        student_config["architectures"] = [f"{_hf_prefix(student_config['model_type'])}ForMaskedLM"]
        family = get_family(student_config["model_type"])
        masked = family.Model(family.ModelArgs.from_config(student_config))
        masked.load_weights([(n, w) for n, w in tree_flatten(student.parameters())
                             if n in dict(tree_flatten(masked.parameters()))])
        student = masked
    weights = config.weights()
    distiller = Distiller(student, _width(student_config), _width(teacher_config),
                          needs_projection=weights.hidden > 0 or weights.cos > 0 or weights.pkd > 0)

    # Data and the task's own validation metrics.
    info = None
    teacher_logits = None
    if config.task in ("classify", "tag"):
        info = _task_info(config, teacher_config, folder)
        settings = finetuning.FinetuneConfig(task=config.task, model="", train="", out="",
                                             text_column=info.get("text_column"),
                                             text_pair_column=info.get("text_pair_column"),
                                             label_column=info.get("label_column") or "label")
        labels = finetuning._label_set(info)
        info = {**info, "max_length": config.max_length}
        pad_id = finetuning._pad_id(tokenizer)
        train_encoded = finetuning._encode(config.task, finetuning._read(config.task, config.data[0], settings),
                                           tokenizer, labels, info)
        train = finetuning._batches(config.task, train_encoded, config.batch_size, pad_id, info, shuffle=True,
                                    seed=config.seed)
        task_objective = finetuning._objective(info)
        evaluation = None
        if config.valid:
            valid_encoded = finetuning._encode(config.task, finetuning._read(config.task, config.valid, settings),
                                               tokenizer, labels, info)
            valid = finetuning._batches(config.task, valid_encoded, config.batch_size, pad_id, info, shuffle=False)
            evaluation = valid.evaluation_batches
        epoch_batches = train.batches_per_epoch
        if config.cache_teacher:
            teacher_logits = _cached_teacher_logits(teacher, train, run_folder.prepare(), config.task)
            train.include_indices = True
    else:
        train, evaluation, epoch_batches, task_objective = _text_data(config, tokenizer, run_folder.prepare(), progress)
    objective = DistillationObjective(
        teacher, config.task, weights, config.temperature, layer_map, divergence=config.divergence,
        beta=config.jsd_beta, problem=(info or {}).get("problem") or "single_label",
        task_objective=task_objective, teacher_logits=teacher_logits,
    )

    steps = config.steps or steps_for(config.epochs, epoch_batches)
    training = TrainingConfig(
        steps=steps, learning_rate=config.learning_rate, warmup_steps=int(config.warmup_ratio * steps),
        schedule="linear", weight_decay=config.weight_decay, betas=(0.9, 0.999), max_grad_norm=config.max_grad_norm,
        eval_every=config.eval_every or max(1, epoch_batches), eval_batches=config.eval_batches,
        save_every=config.save_every, log_every=config.log_every, seed=config.seed,
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
    encoder = teacher.args.model_type in ENCODERS
    # Alternate the two, so that a change in machine load touches both alike.
    teacher_speeds, student_speeds = [], []
    for _ in range(3):
        teacher_speeds.append(measure_speed(teacher, speed_batch, config.speed_batches, encoder))
        student_speeds.append(measure_speed(student, speed_batch, config.speed_batches, encoder))
    teacher_speed, student_speed = statistics.median(teacher_speeds), statistics.median(student_speeds)

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
        if info is not None:
            write_json({**info, "base_model": str(config.teacher), "distilled_from": str(config.teacher),
                        "metrics": student_metrics, "lora": None}, out / finetuning.RUN_FILE)
        write_json(report, out / RUN_FILE)
    return DistillResult(
        out=out, teacher_parameters=report["teacher_parameters"], student_parameters=report["student_parameters"],
        teacher_examples_per_second=teacher_speed, student_examples_per_second=student_speed,
        speedup=report["speedup"], teacher_metrics=teacher_metrics, student_metrics=student_metrics,
        seconds=time.perf_counter() - start, layer_map=layer_map, history=trainer.history,
    )


def _hf_prefix(model_type: str) -> str:
    return {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}[model_type]


def _cached_teacher_logits(teacher: nn.Module, batches, out: Path, task: str) -> mx.array:
    """The teacher's logits for every training example, computed once before training
    (``(N, C)``, or ``(N, longest, C)`` for tagging) and kept in ``teacher_logits.npy``."""
    path = out / "teacher_logits.npy"
    rows = []
    longest = max(len(item["input_ids"]) for item in batches.encoded)
    for _, batch in batches.iterate_once():
        output = teacher(**_encoder_inputs(teacher, batch)) if teacher.args.model_type in ENCODERS else None
        logits = output.logits if output is not None else teacher(batch["input_ids"], batch.get("attention_mask"))
        logits = np.array(logits.astype(mx.float32))
        if task == "tag":
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
