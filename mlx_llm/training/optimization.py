"""The optimizer and its settings: `OptimizationConfig` (what pretrain, finetune and
distill share), `TrainingConfig` (one run's steps and loop), AdamW with decay on
matrices only, and the learning-rate schedule.

The learning rate at optimizer step ``t`` (peak ``lr``, floor ``lr_min``,
``W`` warmup steps, ``T`` steps in all, ``u = (t - W) / (T - W)``)::

    t < W:     lr * t / W
    cosine:    lr_min + (lr - lr_min) * (1 + cos(pi * u)) / 2
    linear:    lr + (lr_min - lr) * u
    constant:  lr
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.optimizers as optim

from ..data.epochs import steps_for

SCHEDULES = ("cosine", "linear", "constant")


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class OptimizationConfig:
    """How a run optimizes, whatever it trains: pretrain, finetune and distill take one.

    The run's length is ``steps`` when given, else `steps_for` ``(epochs,
    batches per epoch, grad_accum)``; `training_config` then makes the
    `TrainingConfig` of the run.

    Attributes:
        learning_rate: Peak learning rate (> 0).
        min_learning_rate: Learning rate at the end of the decay, in ``[0, learning_rate]``.
        schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` after warmup.
        warmup_steps: Linear warmup from 0 over this many steps (cut to the
            run's steps); ``None``: ``warmup_ratio`` of the steps.
        warmup_ratio: Fraction of the steps spent warming up, in ``[0, 1)``,
            when ``warmup_steps`` is ``None``.
        weight_decay: Decoupled AdamW decay (>= 0), on parameters with 2+ dimensions only.
        betas, eps: AdamW moments (each beta in ``[0, 1)``) and ``eps > 0``.
        max_grad_norm: Clip the global gradient norm to this (0 = off).
        grad_accum: Micro-batches per optimizer step (>= 1).
        steps: Optimizer steps; wins over ``epochs``.
        epochs: Epochs to train (> 0, may be fractional) when ``steps`` is ``None``.

    Raises:
        ValueError: naming the first setting out of its range.
    """

    learning_rate: float = 3e-4
    min_learning_rate: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    steps: int | None = None
    epochs: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        _check_finite(learning_rate=self.learning_rate, min_learning_rate=self.min_learning_rate,
                      warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay, eps=self.eps,
                      max_grad_norm=self.max_grad_norm)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"min_learning_rate must be in [0, learning_rate={self.learning_rate}], "
                             f"got {self.min_learning_rate}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_ratio:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.eps <= 0:
            raise ValueError(f"weight_decay and max_grad_norm must be >= 0 and eps > 0, got {self.weight_decay}, "
                             f"{self.max_grad_norm} and {self.eps}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give the run's length: steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs}")

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the run: ``steps``, else ``ceil(epochs * batches_per_epoch / grad_accum)``."""
        if self.steps is not None:
            return self.steps
        return steps_for(self.epochs, batches_per_epoch, self.grad_accum)

    def warmup_for(self, steps: int) -> int:
        """Warmup steps of a ``steps``-step run: ``min(warmup_steps, steps)``, else ``int(warmup_ratio * steps)``."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, steps)
        return int(self.warmup_ratio * steps)

    def training_config(self, steps: int, **loop) -> TrainingConfig:
        """The `TrainingConfig` of a ``steps``-step run (`total_steps`) with these settings.

        Args:
            steps: The run's optimizer steps.
            **loop: The loop's own settings (``eval_every``, ``save_every``, ``seed``, ...).
        """
        return TrainingConfig(
            steps=steps, grad_accum=self.grad_accum, learning_rate=self.learning_rate,
            min_learning_rate=self.min_learning_rate, warmup_steps=self.warmup_for(steps), schedule=self.schedule,
            weight_decay=self.weight_decay, betas=self.betas, eps=self.eps, max_grad_norm=self.max_grad_norm, **loop,
        )


@dataclass
class TrainingConfig:
    """Hyperparameters of a run (all recorded in checkpoints; resuming needs the same).

    Attributes:
        steps: Optimizer steps.
        grad_accum: Micro-batches per optimizer step.
        learning_rate: Peak learning rate.
        min_learning_rate: Learning rate at the end of the decay.
        warmup_steps: Linear warmup from 0.
        schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` after warmup.
        weight_decay: Decoupled decay, applied to parameters with 2+ dimensions only.
        betas, eps: AdamW moments.
        max_grad_norm: Clip the global gradient norm (0 = off).
        eval_every: Evaluate every N steps (0 = only at the end).
        eval_batches: Validation batches per evaluation (0 = all).
        save_every: Checkpoint every N steps (0 = only at the end).
        keep_checkpoints: Keep the newest K checkpoints.
        log_every: Write a metrics line every N steps.
        seed: Seeds dropout (per step, so that a resumed run draws the same masks).
        best_metric: Validation metric (e.g. ``"accuracy"``, ``"loss"``) whose
            best value so far keeps the weights in ``best/``; ``None`` = off.
        best_mode: ``"max"`` or ``"min"``; ``None`` picks ``"min"`` for losses
            and perplexity, ``"max"`` for the rest.
        early_stopping_patience: Stop after this many evaluations without a
            better ``best_metric`` (0 = never).
    """

    steps: int
    grad_accum: int = 1
    learning_rate: float = 3e-4
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    eval_every: int = 0
    eval_batches: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    best_metric: str | None = None
    best_mode: str | None = None
    early_stopping_patience: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        self.betas = tuple(self.betas)
        self.optimization()  # the optimizer's settings are checked where they are defined
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.best_mode is None and self.best_metric is not None:
            lower_is_better = "loss" in self.best_metric or "perplexity" in self.best_metric or self.best_metric == "mse"
            self.best_mode = "min" if lower_is_better else "max"
        if self.best_mode not in (None, "min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.early_stopping_patience and self.best_metric is None:
            raise ValueError("early stopping watches best_metric: set best_metric too")

    def optimization(self) -> OptimizationConfig:
        """This run's optimizer settings as an `OptimizationConfig` (validated there)."""
        return OptimizationConfig(
            learning_rate=self.learning_rate, min_learning_rate=self.min_learning_rate, schedule=self.schedule,
            warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps,
            max_grad_norm=self.max_grad_norm, grad_accum=self.grad_accum, steps=self.steps,
        )


class AdamWMatrixDecay(optim.AdamW):
    """AdamW whose weight decay skips vectors (biases, norm scales).

    Bias correction is on by default, as in the AdamW paper, PyTorch and
    transformers (MLX's own default is off: its first steps are then up to
    several times larger, which short fine-tuning runs feel most).
    """

    def __init__(self, learning_rate, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 bias_correction: bool = True):
        super().__init__(learning_rate=learning_rate, betas=list(betas), eps=eps, weight_decay=weight_decay,
                         bias_correction=bias_correction)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        if parameter.ndim < 2:
            return optim.Adam.apply_single(self, gradient, parameter, state)
        return super().apply_single(gradient, parameter, state)


def learning_rate_schedule(config: TrainingConfig) -> Callable[[mx.array], mx.array]:
    """Linear warmup from 0 to the peak, then the chosen decay to ``min_learning_rate``."""
    decay_steps = max(config.steps - config.warmup_steps, 1)
    if config.schedule == "cosine":
        decay = optim.cosine_decay(config.learning_rate, decay_steps, config.min_learning_rate)
    elif config.schedule == "linear":
        decay = optim.linear_schedule(config.learning_rate, config.min_learning_rate, decay_steps)
    else:
        decay = lambda step: mx.array(config.learning_rate)  # noqa: E731
    if config.warmup_steps == 0:
        return decay
    warmup = optim.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optim.join_schedules([warmup, decay], [config.warmup_steps])
