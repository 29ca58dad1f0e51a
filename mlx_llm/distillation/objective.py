"""The distillation objective: what a student learns from its teacher, term by term.

`DistillationObjective` mixes the terms of the classic recipes, each weighted
by a `LossWeights` alpha (soft targets, hard labels, cosine of hidden states,
matched layers' states and attention scores, BERT-PKD); `Distiller` is the
student plus the projection to the teacher's width that the trainer optimizes.
What the soft and hard terms compare, and where, the task's
`mlx_llm.distillation.targets.LogitTargets` answers (`mlx_llm.distillation.tasks`). The
workflow that builds and trains them is `distill`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.layers import Linear
from ..blocks.model_output import ENCODER
from ..models import model_types_of_kind
from ..training.losses import attention_score_mse_loss, cosine_embedding_loss, hidden_mse_loss, pkd_loss
from ..training.trainer import evaluate_objective
from .targets import DIVERGENCES
from .tasks import get_distillation_task


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


def encoder_inputs(model: nn.Module, batch: dict) -> dict:
    """An encoder's keyword inputs from a batch: ids, mask, and token types where it has them."""
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
        task: A distillation task's name (`distill_tasks.DISTILL_TASKS`: ``"mlm"``,
            ``"classify"``, ``"tag"`` or ``"lm"``); its `LogitTargets` are ``self.targets``.
        weights: `LossWeights`.
        temperature: Softening of both distributions for the soft term.
        layer_map: Student layer i is matched with teacher layer ``layer_map[i]``
            (hidden, attention and PKD terms).
        divergence: Causal LMs: ``"forward"`` KL, ``"reverse"`` KL or ``"jsd"``.
        beta: The Jensen-Shannon mix.
        problem: Classification kind of the teacher's head (``None``: single-label).
        task_objective: Validation metrics of the task (on the student).
        teacher_logits: Cached teacher logits by ``example_index`` (classify, tag).
    """

    def __init__(self, teacher: nn.Module, task: str, weights: LossWeights, temperature: float,
                 layer_map: list[int], divergence: str = "forward", beta: float = 0.5,
                 problem: str | None = "single_label", task_objective=None, teacher_logits: mx.array | None = None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        encoder = teacher.kind == ENCODER
        for name in ("hidden", "attention", "pkd"):
            if getattr(weights, name) > 0 and not encoder:
                raise ValueError(f"the {name} term compares encoder layers; {teacher.args.model_type} teachers "
                                 "distill with the soft, hard and cos terms")
        targets = get_distillation_task(task).targets(problem, divergence, beta)
        if weights.pkd > 0 and not targets.serves_pkd:
            raise ValueError("the PKD term matches [CLS] states: it serves --task classify")
        self.teacher = teacher
        self.task = task
        self.targets = targets
        self.weights = weights
        self.temperature = temperature
        self.layer_map = layer_map
        self.task_objective = task_objective
        self.teacher_logits = teacher_logits
        self.encoder = encoder
        self.needs_states = any(getattr(weights, name) > 0 for name in ("hidden", "attention", "pkd", "cos"))

    @property
    def state(self) -> list:
        """The arrays the loss reads besides the batch (for the trainer's compiled step)."""
        return [self.teacher.state]  # cached logits are constants: captured as they are

    def _token_positions(self, batch: dict) -> mx.array:
        if "attention_mask" in batch:
            return batch["attention_mask"] != 0
        return mx.ones(batch["input_ids"].shape, dtype=mx.bool_)

    def counts(self, batch: dict) -> dict[str, mx.array]:
        rows = batch["input_ids"].shape[0]
        counts = {}
        soft_positions = self.targets.positions(batch)
        if self.weights.soft:
            counts["soft"] = mx.array(rows) if soft_positions is None else soft_positions.sum()
        if self.weights.hard:
            counts["hard"] = self.targets.hard_count(batch)
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
        """``(logits, hidden states or None)`` of a model for this task, from one forward pass
        (a masked-LM encoder's logits are its MLM logits)."""
        if self.encoder:
            output = model.forward(**encoder_inputs(model, batch), output_hidden_states=with_states)
        else:
            output = model.forward(batch["input_ids"], batch.get("attention_mask"), output_hidden_states=with_states)
        return output.logits, output.hidden_states

    def _teacher(self, batch: dict):
        if self.teacher_logits is not None and "example_index" in batch and not self.needs_states:
            logits = self.teacher_logits[batch["example_index"]]
            if logits.ndim == 3:
                logits = logits[:, : batch["input_ids"].shape[1]]
            return logits, None
        logits, states = self._run(self.teacher, batch, self.needs_states)
        return mx.stop_gradient(logits), None if states is None else [mx.stop_gradient(s) for s in states]

    def sums(self, distiller: Distiller, batch: dict) -> dict[str, mx.array]:
        student = distiller.student
        student_logits, student_states = self._run(student, batch, self.needs_states)
        teacher_logits, teacher_states = self._teacher(batch)
        sums = {}
        if self.weights.soft:
            sums["soft"] = self.targets.soft(student_logits, teacher_logits, self.targets.positions(batch),
                                             self.temperature)
        if self.weights.hard:
            sums["hard"] = self.targets.hard(student_logits, batch)
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
        """The task's metrics of the student, and its top-1 agreement with the teacher
        (where the outputs are distributions: `LogitTargets.agreement`)."""
        batches = list(batches)
        metrics = evaluate_objective(distiller.student, self.task_objective, iter(batches))
        if not self.targets.agreement:
            return metrics
        agreements, count = 0, 0
        for batch in batches:
            student_logits, _ = self._run(distiller.student, batch, False)
            teacher_logits, _ = self._run(self.teacher, batch, False)
            same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
            positions = self.targets.positions(batch)
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


def __getattr__(name: str) -> tuple[str, ...]:
    """``ENCODERS``, the former table of encoder model_types, derived on first use from each
    family's ``Model.kind`` (the objective itself asks ``model.kind``)."""
    if name == "ENCODERS":
        return model_types_of_kind(ENCODER)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
