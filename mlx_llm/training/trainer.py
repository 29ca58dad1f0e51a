"""The trainer shared by pretraining, fine-tuning and distillation.

A training objective says, for a batch, which loss terms it has and how
many predictions each term averages over. The trainer normalizes every term
by its count over the whole accumulation window (and over all processes),
so k micro-batches give exactly the gradient of one batch k times larger.

Features: AdamW with weight decay on matrices only, warmup then cosine or
linear decay, gradient accumulation, global-norm clipping, a compiled step,
evaluation every N steps, a progress bar (loss, tokens/s, ETA), metrics as
JSON lines, a loss-curve PNG, atomic checkpoints with exact resume, a stop
on NaN/inf, and data parallelism over `mx.distributed`. Checkpoint files: `checkpoints`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from ..cpu.tuning import warn_if_reference_blas
from .checkpoints import (
    latest_checkpoint,
    load_trained_weights,
    prune_checkpoints,
    read_optimizer_state,
    read_resumable_state,
    settings_fingerprint,
    write_best,
    write_checkpoint,
)
from .optimization import (  # noqa: F401 (defined there, imported from here too)
    SCHEDULES,
    AdamWMatrixDecay,
    OptimizationConfig,
    TrainingConfig,
    learning_rate_schedule,
)

Batch = dict[str, mx.array]


class Objective(Protocol):
    """What the trainer optimizes.

    ``counts(batch)`` gives, per loss term, the number of predictions in the
    batch (e.g. non-ignored targets); ``sums(model, batch)`` the summed
    per-prediction losses. The loss is ``sum_k sums_k / counts_k``.
    ``evaluate(model, batch)`` gives ``{metric: (numerator, denominator)}``
    pairs summed over the validation set.
    """

    def counts(self, batch: Batch) -> dict[str, mx.array]: ...

    def sums(self, model: nn.Module, batch: Batch) -> dict[str, mx.array]: ...

    def evaluate(self, model: nn.Module, batch: Batch) -> dict[str, tuple[mx.array, mx.array]]: ...


class BatchSource(Protocol):
    """A resumable iterator of batches (dicts of arrays with a leading batch axis)."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite.

    Attributes:
        step: The step whose loss was not finite.
        checkpoint: The last good checkpoint kept (``None`` if none was written).
        loss: The loss value (nan or inf).
    """

    def __init__(self, message: str, step: int | None = None, checkpoint: Path | None = None,
                 loss: float = float("nan")):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.loss = loss


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    tokens: int
    seconds: float
    evaluations: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"step", "metric", "value"} of the weights in ``best/``
    stopped_early: bool = False
    examples: int = 0  # rows of every micro-batch of this session
    train_seconds: float = 0.0  # in training steps (data included), without evaluation and checkpoints


def evaluate_objective(model: nn.Module, objective: Objective, batches: Iterator[Batch],
                       max_batches: int = 0) -> dict[str, float]:
    """An objective's validation metrics over ``batches`` (the first ``max_batches``
    if nonzero): its ``evaluate_dataset`` when it has one (F1, correlations),
    else each ``numerator / denominator`` of ``evaluate`` summed over the set,
    plus the perplexity of a ``loss``."""
    if max_batches:
        batches = (batch for _, batch in zip(range(max_batches), batches))
    evaluate_dataset = getattr(objective, "evaluate_dataset", None)
    if evaluate_dataset is not None:
        return evaluate_dataset(model, batches)
    sums: dict[str, list[mx.array]] = {}
    for batch in batches:
        for name, (numerator, denominator) in objective.evaluate(model, batch).items():
            pair = sums.setdefault(name, [mx.array(0.0), mx.array(0.0)])
            pair[0] = pair[0] + numerator
            pair[1] = pair[1] + denominator
        mx.eval([pair for pair in sums.values()])
    metrics = {name: float(numerator / mx.maximum(denominator, 1)) for name, (numerator, denominator) in sums.items()}
    summarize = getattr(objective, "summarize", None)
    if summarize is not None:
        metrics = summarize(metrics)
    if "loss" in metrics and "perplexity" not in metrics:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))
    return metrics


class Trainer:
    """Trains ``model`` on ``objective`` over batches from ``train_data``.

    Args:
        model: Any MLX module.
        objective: The loss terms (see `Objective`).
        train_data: Resumable source of micro-batches for the whole job
            (with several processes, each takes its share of the rows).
        config: `TrainingConfig`.
        out_dir: Run folder: ``metrics.jsonl``, ``loss_curve.png``, ``checkpoints/``.
        eval_data: Callable returning a fresh iterator of validation batches.
        run_config: Extra settings that must match on resume (model shape, data).
        tokens_key: Batch entry counted for tokens/s (``"input_ids"``).
        progress: Show a progress bar on stderr.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_data: BatchSource,
        config: TrainingConfig,
        out_dir: str | Path,
        eval_data: Callable[[], Iterator[Batch]] | None = None,
        run_config: dict | None = None,
        tokens_key: str = "input_ids",
        progress: bool = True,
    ):
        self.model = model
        self.objective = objective
        self.train_data = train_data
        self.config = config
        self.out_dir = Path(out_dir)
        self.eval_data = eval_data
        self.tokens_key = tokens_key
        self.progress = progress
        self.world = mx.distributed.init()
        self.fingerprint_values = {"training": asdict(config), "run": run_config or {},
                                   "world_size": self.world.size()}
        self.schedule = learning_rate_schedule(config)
        self.optimizer = AdamWMatrixDecay(
            learning_rate=self.schedule, betas=list(config.betas), eps=config.eps, weight_decay=config.weight_decay
        )
        self.optimizer.init(model.trainable_parameters())
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.evaluations_since_best = 0
        self._build_steps()

    # --- the compiled computation ----------------------------------------------------------

    def _build_steps(self) -> None:
        model, objective, optimizer = self.model, self.objective, self.optimizer

        def loss_of(batch: Batch, totals: dict[str, mx.array]) -> tuple[mx.array, dict]:
            sums = objective.sums(model, batch)
            return sum(sums[name] / totals[name] for name in sums), sums

        loss_and_grad = nn.value_and_grad(model, loss_of)

        def micro_step(batch: Batch, totals: dict[str, mx.array]):
            (loss, sums), grads = loss_and_grad(batch, totals)
            return loss, grads

        def apply(grads):
            if self.config.max_grad_norm > 0:
                grads, norm = optim.clip_grad_norm(grads, self.config.max_grad_norm)
            else:
                norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(grads)))
            optimizer.update(model, grads)
            return norm

        def whole_step(batch: Batch, totals: dict[str, mx.array]):
            loss, grads = micro_step(batch, totals)
            return loss, apply(grads)

        # Arrays the objective reads besides the batch (a distillation teacher) are compiled as inputs.
        objective_state = getattr(objective, "state", [])
        state = [model.state, mx.random.state]
        self._micro_step = mx.compile(micro_step, inputs=state + [objective_state], outputs=state)
        self._apply = mx.compile(apply, inputs=[model.state, optimizer.state], outputs=[model.state, optimizer.state])
        # Without accumulation or other processes, gradients and update are one compiled graph.
        everything = [model.state, optimizer.state, mx.random.state]
        self._whole_step = mx.compile(whole_step, inputs=everything + [objective_state], outputs=everything)

    def _shard(self, batch: Batch) -> Batch:
        """This process's rows of a job-wide micro-batch."""
        size, rank = self.world.size(), self.world.rank()
        if size == 1:
            return batch
        rows = next(iter(batch.values())).shape[0]
        if rows % size != 0:
            raise ValueError(f"batch size {rows} does not split evenly over {size} processes")
        share = rows // size
        return {key: value[rank * share : (rank + 1) * share] for key, value in batch.items()}

    def _totals(self, micro_batches: list[Batch]) -> dict[str, mx.array]:
        """Per loss term, the number of predictions in the whole window (all processes)."""
        totals: dict[str, mx.array] = {}
        for batch in micro_batches:
            for name, count in self.objective.counts(batch).items():
                totals[name] = totals.get(name, 0) + count
        mx.random.seed(self.config.seed * 1_000_003 + self.step)  # dropout depends on the step only
        return {name: mx.maximum(count, 1).astype(mx.float32) for name, count in totals.items()}

    def accumulate_gradients(self, micro_batches: list[Batch]) -> tuple[mx.array, dict]:
        """Loss and summed gradients of a window of job-wide micro-batches, each
        loss term normalized by its count over the whole window (and all processes)."""
        totals = self._totals(micro_batches)
        accumulated = None
        loss = mx.array(0.0)
        for batch in micro_batches:
            micro_loss, grads = self._micro_step(self._shard(batch), totals)
            loss = loss + micro_loss
            accumulated = grads if accumulated is None else tree_map(mx.add, accumulated, grads)
        if self.world.size() > 1:  # every process holds the sums of its rows: add them up
            loss = mx.distributed.all_sum(loss, group=self.world)
            accumulated = tree_map(lambda g: mx.distributed.all_sum(g, group=self.world), accumulated)
        return loss, accumulated

    def train_step(self, micro_batches: list[Batch]) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` job-wide micro-batches.

        Returns:
            ``(loss, grad_norm)``; the loss is the whole window's, every term
            averaged over all its predictions; the norm is before clipping.
        """
        if len(micro_batches) == 1 and self.world.size() == 1:
            loss, norm = self._whole_step(micro_batches[0], self._totals(micro_batches))
        else:
            loss, gradients = self.accumulate_gradients(micro_batches)
            norm = self._apply(gradients)
        mx.eval(loss, norm, self.model.state, self.optimizer.state)
        return float(loss), float(norm)

    # --- evaluation ------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Validation metrics over ``eval_data`` (see `evaluate_objective`)."""
        if self.eval_data is None:
            return {}
        self.model.eval()
        metrics = evaluate_objective(self.model, self.objective, self.eval_data(), self.config.eval_batches)
        self.model.train()
        return metrics

    # --- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, data position and step to ``checkpoints/step-NNNNNNN`` atomically."""
        target = self.checkpoint_dir / f"step-{self.step:07d}"
        if self.world.rank() == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            # Frozen parameters (a LoRA base) never change: only the trained ones are kept.
            write_checkpoint(target, self.trained_weights(), dict(tree_flatten(self.optimizer.state)), {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "data": self.train_data.state(),
                "fingerprint": settings_fingerprint(self.fingerprint_values),
                "settings": self.fingerprint_values,
                "history": self.history,
                "best": self.best,
                "evaluations_since_best": self.evaluations_since_best,
            })
            prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return target

    def trained_weights(self) -> dict[str, mx.array]:
        """The parameters being trained, by flat name."""
        return dict(tree_flatten(self.model.trainable_parameters()))

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"

    def _track_best(self, metrics: dict[str, float]) -> bool:
        """Keep the weights in ``best/`` when ``best_metric`` improved; ``True``
        when early stopping's patience has run out."""
        name = self.config.best_metric
        if name is None:
            return False
        if name not in metrics:
            raise ValueError(f"best_metric {name!r} is not among the validation metrics {sorted(metrics)}")
        value = metrics[name]
        previous = None if self.best is None else self.best["value"]
        better = previous is None or (value > previous if self.config.best_mode == "max" else value < previous)
        if better:
            self.best = {"step": self.step, "metric": name, "value": value}
            self.evaluations_since_best = 0
            if self.world.rank() == 0:
                write_best(self.best_dir, self.trained_weights(), {**self.best, "metrics": metrics})
        else:
            self.evaluations_since_best += 1
        patience = self.config.early_stopping_patience
        return bool(patience) and self.evaluations_since_best >= patience

    def load_best(self) -> dict | None:
        """Put the best weights (see ``best_metric``) back into the model; their record, or ``None``."""
        if self.best is None or not (self.best_dir / "model.safetensors").is_file():
            return None
        load_trained_weights(self.model, self.best_dir / "model.safetensors")
        mx.eval(self.model.parameters())
        return self.best

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoint_dir)

    def restore(self, checkpoint: Path) -> None:
        """Continue exactly from ``checkpoint``; refuses a checkpoint of a different configuration."""
        state = read_resumable_state(checkpoint, self.fingerprint_values)
        load_trained_weights(self.model, checkpoint / "model.safetensors")
        self.optimizer.state = read_optimizer_state(checkpoint)
        self.train_data.restore(state["data"])
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.history = state["history"]
        self.best = state.get("best")
        self.evaluations_since_best = state.get("evaluations_since_best", 0)
        mx.eval(self.model.parameters(), self.optimizer.state)
        self._build_steps()  # the compiled step captured the replaced optimizer state

    # --- the loop --------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.world.rank() == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``config.steps``, from the latest checkpoint if ``resume``.

        Raises:
            TrainingDiverged: The loss became NaN or infinite; the last good
                checkpoint is kept.
        """
        if resume:
            checkpoint = self.latest_checkpoint()
            if checkpoint is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.checkpoint_dir}")
            self.restore(checkpoint)
        warn_if_reference_blas()  # Linux: the products would run many times faster on MKL
        self.model.train()
        config = self.config
        batches = iter(self.train_data)
        bar = None
        if self.progress and self.world.rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, initial=self.step, file=sys.stderr, unit="step", dynamic_ncols=True)
        start = time.perf_counter()
        window_start, window_tokens = start, 0
        loss = float("nan")
        evaluations = []
        stopped_early = False
        examples, train_seconds = 0, 0.0
        while self.step < config.steps and not stopped_early:
            step_start = time.perf_counter()
            micro_batches = [next(batches) for _ in range(config.grad_accum)]
            loss, norm = self.train_step(micro_batches)
            train_seconds += time.perf_counter() - step_start
            examples += sum(int(batch[self.tokens_key].shape[0]) for batch in micro_batches)
            tokens = sum(self._real_tokens(batch) for batch in micro_batches)
            self.step += 1
            self.tokens_seen += tokens
            window_tokens += tokens
            if not math.isfinite(loss):
                last = self.latest_checkpoint()
                if bar is not None:
                    bar.close()  # so that the error starts a line of its own
                raise TrainingDiverged(
                    f"the loss became {loss} at step {self.step}; training stopped and the last good checkpoint "
                    f"({last if last else 'none was written yet'}) is kept. Lower the learning rate, raise warmup, "
                    "or check the data",
                    step=self.step, checkpoint=last, loss=loss,
                )
            if self.step % config.log_every == 0 or self.step == config.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_second = window_tokens / max(elapsed, 1e-9)
                self._log({"step": self.step, "loss": loss, "learning_rate": float(self.schedule(mx.array(self.step))),
                           "grad_norm": norm, "tokens_per_second": tokens_per_second, "tokens": self.tokens_seen,
                           "elapsed": time.perf_counter() - start})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
                window_start, window_tokens = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if (config.eval_every and self.step % config.eval_every == 0) or self.step == config.steps:
                metrics = self.evaluate()
                if metrics:
                    record = {"step": self.step, **{f"eval_{name}": value for name, value in metrics.items()}}
                    evaluations.append(record)
                    self._log(record)
                    if bar is not None:
                        bar.write(" ".join(f"{key}={value:.4g}" for key, value in record.items()), file=sys.stderr)
                    self.write_loss_curve()
                    stopped_early = self._track_best(metrics)
                    if stopped_early:
                        self._log({"step": self.step, "early_stopping": True, "best": self.best})
            if (config.save_every and self.step % config.save_every == 0) or self.step == config.steps or stopped_early:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.write_loss_curve()
        return TrainResult(self.step, loss, self.tokens_seen, time.perf_counter() - start, evaluations,
                           best=self.best, stopped_early=stopped_early, examples=examples,
                           train_seconds=train_seconds)

    def _real_tokens(self, batch: Batch) -> int:
        """Tokens of a micro-batch for tokens/s: padding (``attention_mask`` 0) not counted."""
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        return int(batch[self.tokens_key].size)

    def write_loss_curve(self) -> Path | None:
        """``loss_curve.png``: training loss and validation loss against steps."""
        if self.world.rank() != 0:
            return None
        train = [(r["step"], r["loss"]) for r in self.history if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in self.history if "eval_loss" in r]
        if not train:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
        axis.plot(*zip(*train), label="training loss")
        if evals:
            axis.plot(*zip(*evals), marker="o", label="validation loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss (nats per token)")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        path = self.out_dir / "loss_curve.png"
        temporary = path.with_name(".loss_curve.png.tmp")
        figure.savefig(temporary, format="png")
        plt.close(figure)
        temporary.replace(path)
        return path

