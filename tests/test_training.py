"""The trainer: schedules, weight decay, accumulation, clipping, exact resume,
NaN handling, and data parallelism over two processes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_llm.models.gpt2 import Model as GPT2, ModelArgs as GPT2Args
from mlx_llm.training.objectives import CausalLMObjective
from mlx_llm.training.trainer import (
    AdamWMatrixDecay,
    OptimizationConfig,
    Trainer,
    TrainingConfig,
    TrainingDiverged,
    learning_rate_schedule,
)

VOCAB, SEQ = 32, 8


class ArrayBatches:
    """A resumable source of fixed batches built from a seed (targets may contain -100)."""

    def __init__(self, batch_size=4, seed=0, ignore_fraction=0.25):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, VOCAB, (64, SEQ + 1))
        self.ignore = rng.random((64, SEQ)) < ignore_fraction
        self.batch_size = batch_size
        self.position = 0

    def __iter__(self):
        while True:
            rows = [(self.position + i) % len(self.data) for i in range(self.batch_size)]
            self.position += self.batch_size
            block = self.data[rows]
            targets = np.where(self.ignore[rows], -100, block[:, 1:])
            yield {"input_ids": mx.array(block[:, :-1]), "targets": mx.array(targets)}

    def state(self):
        return {"position": self.position}

    def restore(self, state):
        self.position = state["position"]


def tiny_gpt(seed=0, dropout_free=True):
    mx.random.seed(seed)
    return GPT2(GPT2Args(vocab_size=VOCAB, max_positions=SEQ, hidden_size=16, num_layers=2, num_heads=2,
                         intermediate_size=32, activation="relu"))


def make_trainer(tmp_path, model=None, batch_size=4, **options):
    config = TrainingConfig(**{"steps": 6, "learning_rate": 1e-2, "warmup_steps": 2, "log_every": 1, **options})
    return Trainer(model or tiny_gpt(), CausalLMObjective(), ArrayBatches(batch_size), config, tmp_path,
                   progress=False)


def test_schedule_values():
    config = TrainingConfig(steps=10, learning_rate=1.0, min_learning_rate=0.1, warmup_steps=4, schedule="cosine")
    schedule = learning_rate_schedule(config)
    values = [float(schedule(mx.array(step))) for step in range(11)]
    np.testing.assert_allclose(values[:5], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    # Cosine from 1.0 at step 4 to 0.1 at step 10.
    for step in range(4, 11):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 6))
        assert values[step] == pytest.approx(expected, abs=1e-6)
    linear = learning_rate_schedule(TrainingConfig(steps=10, learning_rate=1.0, warmup_steps=0, schedule="linear"))
    assert float(linear(mx.array(5))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        TrainingConfig(steps=10, schedule="step")
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, steps=10\]"):
        TrainingConfig(steps=10, warmup_steps=11)



@pytest.mark.parametrize("settings, message", [
    ({"steps": 5, "learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    ({"steps": 5, "learning_rate": math.nan}, "learning_rate must be a finite number, got nan"),
    ({"steps": 5, "learning_rate": 1e-3, "min_learning_rate": 1e-2}, r"min_learning_rate must be in \[0, "),
    ({"steps": 5, "schedule": "step"}, "unknown schedule 'step'"),
    ({"steps": 5, "warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({"steps": 5, "warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\), got 1.0"),
    ({"steps": 5, "warmup_steps": 2, "warmup_ratio": 0.1}, "give warmup_steps or warmup_ratio, not both"),
    ({"steps": 5, "weight_decay": -0.1}, "weight_decay and max_grad_norm must be >= 0"),
    ({"steps": 5, "betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ({"steps": 5, "grad_accum": 0}, "grad_accum must be >= 1, got 0"),
    ({}, "give the run's length: steps or epochs"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"epochs": 0.0}, "epochs must be a finite number > 0, got 0.0"),
])
def test_optimization_config_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        OptimizationConfig(**settings)


def test_optimization_config_makes_the_training_config():
    # 10 batches an epoch, 4 per step: 2.5 epochs are ceil(2.5 * 10 / 4) = 7 steps; warmup 0.3 * 7 -> 2.
    optimization = OptimizationConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_ratio=0.3, epochs=2.5,
                                      grad_accum=4, schedule="linear", betas=[0.9, 0.999])
    steps = optimization.total_steps(batches_per_epoch=10)
    training = optimization.training_config(steps, eval_every=3, seed=5)
    assert (steps, training.warmup_steps, training.grad_accum, training.betas) == (7, 2, 4, (0.9, 0.999))
    assert (training.learning_rate, training.min_learning_rate, training.schedule) == (1e-3, 1e-4, "linear")
    assert (training.eval_every, training.seed) == (3, 5)
    # Warmup given in steps is cut to the run; steps win over epochs.
    assert OptimizationConfig(warmup_steps=100, steps=20, epochs=3).training_config(20).warmup_steps == 20
    assert OptimizationConfig(steps=20, epochs=3).total_steps(batches_per_epoch=1000) == 20
    # A TrainingConfig's optimizer settings are checked by OptimizationConfig.
    assert training.optimization() == OptimizationConfig(
        learning_rate=1e-3, min_learning_rate=1e-4, schedule="linear", warmup_steps=2, betas=(0.9, 0.999),
        grad_accum=4, steps=7)
    with pytest.raises(ValueError, match="weight_decay and max_grad_norm must be >= 0"):
        TrainingConfig(steps=5, max_grad_norm=-1.0)

def test_weight_decay_applies_to_matrices_only():
    layer = nn.Linear(3, 2)
    optimizer = AdamWMatrixDecay(learning_rate=0.1, weight_decay=0.5)
    before = {name: np.array(value) for name, value in [("weight", layer.weight), ("bias", layer.bias)]}
    zero = {"weight": mx.zeros_like(layer.weight), "bias": mx.zeros_like(layer.bias)}
    optimizer.update(layer, zero)  # a zero gradient: only decay can move parameters
    np.testing.assert_allclose(np.array(layer.weight), before["weight"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(np.array(layer.bias), before["bias"])


def test_optimizer_steps_equal_torch_adamw():
    """Three steps on a matrix and a vector equal torch.optim.AdamW with decay on the matrix only."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)
    gradients = [(rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32))
                 for _ in range(3)]
    parameters = {"weight": mx.array(weight), "bias": mx.array(bias)}
    optimizer = AdamWMatrixDecay(learning_rate=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    torch_weight, torch_bias = torch.tensor(weight, requires_grad=True), torch.tensor(bias, requires_grad=True)
    reference = torch.optim.AdamW([{"params": [torch_weight], "weight_decay": 0.1},
                                   {"params": [torch_bias], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    for weight_gradient, bias_gradient in gradients:
        parameters = optimizer.apply_gradients({"weight": mx.array(weight_gradient), "bias": mx.array(bias_gradient)},
                                               parameters)
        torch_weight.grad, torch_bias.grad = torch.tensor(weight_gradient), torch.tensor(bias_gradient)
        reference.step()
    np.testing.assert_allclose(np.array(parameters["weight"]), torch_weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(parameters["bias"]), torch_bias.detach().numpy(), atol=1e-6)


def parameters_of(model):
    from mlx.utils import tree_flatten

    return {name: np.array(value) for name, value in tree_flatten(model.parameters())}


def test_accumulation_equals_one_big_batch(tmp_path):
    # 4 micro-batches of 2 == 1 batch of 8, with uneven numbers of ignored targets per micro-batch.
    small = make_trainer(tmp_path / "a", model=tiny_gpt(), batch_size=2, grad_accum=4, steps=1, warmup_steps=0)
    big = make_trainer(tmp_path / "b", model=tiny_gpt(), batch_size=8, grad_accum=1, steps=1, warmup_steps=0)
    small_batches, big_batches = iter(small.train_data), iter(big.train_data)
    window = [next(small_batches) for _ in range(4)]
    loss_small, grads_small = small.accumulate_gradients(window)
    loss_big, grads_big = big.accumulate_gradients([next(big_batches)])
    assert float(loss_small) == pytest.approx(float(loss_big), rel=1e-6)
    from mlx.utils import tree_flatten

    for (name, small_grad), (_, big_grad) in zip(tree_flatten(grads_small), tree_flatten(grads_big)):
        np.testing.assert_allclose(np.array(small_grad), np.array(big_grad), rtol=1e-4, atol=1e-7, err_msg=name)
    # Normalizing per micro-batch instead would give a different loss: the test can tell.
    per_micro = np.mean([float(small.accumulate_gradients([batch])[0]) for batch in window])
    assert abs(per_micro - float(loss_big)) > 1e-4


def test_clipping_bounds_the_update(tmp_path):
    clipped = make_trainer(tmp_path / "a", model=tiny_gpt(), max_grad_norm=1e-3, steps=1, warmup_steps=0,
                           learning_rate=1.0, weight_decay=0.0, betas=(0.0, 0.0))
    free = make_trainer(tmp_path / "b", model=tiny_gpt(), max_grad_norm=0.0, steps=1, warmup_steps=0,
                        learning_rate=1.0, weight_decay=0.0, betas=(0.0, 0.0))
    batch = next(iter(ArrayBatches()))
    _, norm_clipped = clipped.train_step([batch])
    _, norm_free = free.train_step([batch])
    assert norm_clipped == pytest.approx(norm_free, rel=1e-5) and norm_free > 1e-3  # the norm before clipping


def test_resume_continues_exactly(tmp_path):
    straight = make_trainer(tmp_path / "straight", model=tiny_gpt())
    straight.fit()
    straight_losses = [r["loss"] for r in straight.history if "loss" in r]

    first = make_trainer(tmp_path / "resumed", model=tiny_gpt(), save_every=3)
    first.config.steps = 3  # interrupted after step 3 (the checkpoint is written then)
    first.fit()
    resumed = make_trainer(tmp_path / "resumed", model=tiny_gpt(seed=99), save_every=3)
    resumed.fit(resume=True)
    resumed_losses = [r["loss"] for r in resumed.history if "loss" in r]
    assert resumed_losses == straight_losses  # bit for bit
    metrics = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    assert (tmp_path / "resumed" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_with_different_settings_is_refused(tmp_path):
    make_trainer(tmp_path, steps=2).fit()
    changed = make_trainer(tmp_path, steps=2, learning_rate=5e-3)
    with pytest.raises(ValueError, match=r"settings differ \(training.learning_rate: checkpoint 0.01, now 0.005"):
        changed.fit(resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(tmp_path / "empty").fit(resume=True)


def test_resume_from_weights_of_another_layout_is_refused(tmp_path):
    make_trainer(tmp_path, steps=2).fit()
    saved = next((tmp_path / "checkpoints").iterdir()) / "model.safetensors"
    weights = mx.load(str(saved))
    name = next(name for name in weights if name.endswith("qkv_proj.weight"))
    weights[name.replace("qkv_proj", "q_proj")] = weights.pop(name)  # as an older layout named it
    mx.save_safetensors(str(saved), weights)
    with pytest.raises(ValueError, match=r"does not fit this model: 1 tensor\(s\) .*q_proj.weight.*start a new run"):
        make_trainer(tmp_path, steps=2).fit(resume=True)


class ExplodingBatches(ArrayBatches):
    """Batches whose loss scale turns NaN from the 4th batch on."""

    def __iter__(self):
        for batch in super().__iter__():
            batch["scale"] = mx.array(1.0 if self.position <= 3 * self.batch_size else float("nan"))
            yield batch


class ScaledObjective(CausalLMObjective):
    def sums(self, model, batch):
        return {"lm": super().sums(model, batch)["lm"] * batch["scale"]}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = TrainingConfig(steps=6, learning_rate=1e-2, save_every=2, log_every=1)
    trainer = Trainer(tiny_gpt(), ScaledObjective(), ExplodingBatches(), config, tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4.*step-0000002"):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002"]


DISTRIBUTED_SCRIPT = r"""
import json, sys
import mlx.core as mx
sys.path.insert(0, sys.argv[2])
from test_training import ArrayBatches, tiny_gpt
from mlx_llm.training.objectives import CausalLMObjective
from mlx_llm.training.trainer import Trainer, TrainingConfig
config = TrainingConfig(steps=4, learning_rate=1e-2, warmup_steps=1, log_every=1)
trainer = Trainer(tiny_gpt(), CausalLMObjective(), ArrayBatches(batch_size=4), config, sys.argv[1], progress=False)
trainer.fit()
if trainer.world.rank() == 0:
    print("LOSSES", json.dumps([r["loss"] for r in trainer.history if "loss" in r]))
"""


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    single = make_trainer(tmp_path / "single", steps=4, warmup_steps=1)
    single.fit()
    expected = [r["loss"] for r in single.history if "loss" in r]
    script = tmp_path / "train_distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    launcher = Path(sys.executable).parent / "mlx.launch"
    completed = subprocess.run(
        [str(launcher), "--backend", "ring", "-n", "2", "--starting-port", str(20000 + os.getpid() % 20000),
         sys.executable, str(script), str(tmp_path / "distributed"), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    line = next(line for line in completed.stdout.splitlines() if line.startswith("LOSSES"))
    np.testing.assert_allclose(json.loads(line[len("LOSSES "):]), expected, rtol=1e-5)


class ScriptedObjective(CausalLMObjective):
    """Causal LM training, with validation metrics read from a script (one per evaluation)."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = 0

    def evaluate_dataset(self, model, batches):
        score = self.scores[self.calls]
        self.calls += 1
        return {"accuracy": score, "loss": -score}


def test_best_checkpoint_and_early_stopping(tmp_path):
    objective = ScriptedObjective([0.5, 0.7, 0.6, 0.65, 0.9])
    config = TrainingConfig(steps=10, learning_rate=1e-2, eval_every=2, log_every=1, best_metric="accuracy",
                            early_stopping_patience=2)
    assert config.best_mode == "max" and TrainingConfig(steps=1, best_metric="loss").best_mode == "min"
    trainer = Trainer(tiny_gpt(), objective, ArrayBatches(), config, tmp_path, eval_data=lambda: iter([]),
                      progress=False)
    saved_at_best = {}
    original_track = trainer._track_best

    def track(metrics):
        stop = original_track(metrics)
        if trainer.best["step"] == trainer.step:
            saved_at_best.update({name: np.array(value) for name, value in trainer.trained_weights().items()})
        return stop

    trainer._track_best = track
    result = trainer.fit()
    # Evaluations at steps 2, 4, 6, 8: best 0.7 at step 4, then two without improvement stop the run.
    assert result.stopped_early and result.steps == 8
    assert result.best == {"step": 4, "metric": "accuracy", "value": 0.7}
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 4
    assert trainer.latest_checkpoint().name == "step-0000008"
    # load_best puts the step-4 weights back.
    assert trainer.load_best()["step"] == 4
    for name, value in trainer.trained_weights().items():
        np.testing.assert_array_equal(np.array(value), saved_at_best[name])
    with pytest.raises(ValueError, match="best_metric 'f1' is not among the validation metrics"):
        Trainer(tiny_gpt(), ScriptedObjective([0.1]), ArrayBatches(), TrainingConfig(steps=1, best_metric="f1"),
                tmp_path / "other", eval_data=lambda: iter([]), progress=False).fit()
    with pytest.raises(ValueError, match="early stopping watches best_metric"):
        TrainingConfig(steps=1, early_stopping_patience=1)


def test_checkpoints_hold_only_trained_parameters(tmp_path):
    model = tiny_gpt()
    model.freeze()
    model.model.ln_f.unfreeze()
    trainer = make_trainer(tmp_path, model=model, steps=2)
    trainer.fit()
    saved = mx.load(str(trainer.latest_checkpoint() / "model.safetensors"))
    assert sorted(saved) == ["model.ln_f.bias", "model.ln_f.weight"]
