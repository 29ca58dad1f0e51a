"""Training throughput of mlx_llm's trainer against mlx-lm's full fine-tuning and a
PyTorch loop, on the same GPT-2-shaped model, batch and sequence length.

    python benchmarks/train.py [--steps 12] [--repeats 3] [--batch-size 8] [--seq-len 256]

The model (random weights, GPT-2 layout: n_embd 384, 6 layers, 6 heads,
vocabulary 8192) is written once to --workdir with transformers and loaded by
each implementation. Each repeat runs every implementation for --steps
optimizer steps on the same token batches (AdamW, learning rate 1e-4, no
weight decay, no clipping: mlx-lm's loop has none) and times the steps after
the first two (compilation). Reports tokens/s, achieved FLOP/s
(6 x parameters x tokens/s), MFU against MLX's own measured float32 matmul
throughput, and the ratio to mlx-lm. Prints a table and one JSON line.
Say which BLAS: run as installed and with one preloaded (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from common import blas_in_use, save_random_checkpoint

SHAPE = dict(n_embd=384, n_layer=6, n_head=6, vocab_size=8192, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0,
             attn_pdrop=0.0)


def make_checkpoint(workdir: Path, seq_len: int) -> Path:
    return save_random_checkpoint("GPT2LMHeadModel", "GPT2Config", {**SHAPE, "n_positions": seq_len},
                                  workdir / f"gpt2-train-{seq_len}")


def matmul_flops() -> float:
    a = mx.random.normal((2048, 2048))
    b = mx.random.normal((2048, 2048))
    mx.eval(a, b, a @ b)
    start = time.perf_counter()
    for _ in range(5):
        mx.eval(a @ b)
    return 5 * 2 * 2048**3 / (time.perf_counter() - start)


def time_steps(step, batches) -> float:
    """Seconds per step, from the third step on."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def run_mlx_llm(checkpoint: Path, batches: list[np.ndarray]) -> float:
    from mlx_llm.model_files.loading import load_model
    from mlx_llm.training.objectives import CausalLMObjective
    from mlx_llm.training.trainer import Trainer, TrainingConfig

    model, _ = load_model(checkpoint)
    model.train()
    config = TrainingConfig(steps=len(batches), learning_rate=1e-4, weight_decay=0.0, max_grad_norm=0.0,
                            warmup_steps=0, schedule="constant", betas=(0.9, 0.999))
    trainer = Trainer(model, CausalLMObjective(), None, config, "/tmp/mlx_llm_train_bench", progress=False)
    return time_steps(lambda b: trainer.train_step([{"input_ids": mx.array(b[:, :-1]), "targets": mx.array(b[:, 1:])}]),
                      batches)


def run_mlx_lm(checkpoint: Path, batches: list[np.ndarray]) -> float:
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.utils import load_model

    model, _ = load_model(checkpoint)
    model.train()
    optimizer = optim.AdamW(learning_rate=1e-4, weight_decay=0.0)
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    # mlx-lm's own step (mlx_lm.tuner.trainer.train), without its data loading and UI.
    def step(batch, lengths):
        (loss, tokens), grad = loss_and_grad(model, batch, lengths)
        optimizer.update(model, grad)
        return loss, tokens

    step = mx.compile(step, inputs=state, outputs=state)

    def run(batch):
        lengths = mx.array([[0, batch.shape[1] - 1]] * batch.shape[0])
        loss, tokens = step(mx.array(batch), lengths)
        mx.eval(state, loss, tokens)

    return time_steps(run, batches)


def run_torch(checkpoint: Path, batches: list[np.ndarray]) -> float:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

    def step(batch):
        tokens = torch.tensor(batch, dtype=torch.long)
        loss = model(input_ids=tokens[:, :-1], labels=None).logits
        loss = torch.nn.functional.cross_entropy(loss.reshape(-1, loss.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return time_steps(step, batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("weights/bench"))
    parser.add_argument("--no-torch", action="store_true")
    options = parser.parse_args()

    checkpoint = make_checkpoint(options.workdir, options.seq_len)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, SHAPE["vocab_size"], (options.batch_size, options.seq_len + 1)).astype(np.int32)
               for _ in range(options.steps)]
    runners = {"mlx_llm": run_mlx_llm}
    try:
        import mlx_lm  # noqa: F401

        runners["mlx-lm"] = run_mlx_lm
    except ImportError:
        print("mlx-lm is not installed (pip install -e '.[bench]'); its row is skipped")
    if not options.no_torch:
        runners["pytorch"] = run_torch
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(options.repeats):
        for name, runner in runners.items():
            seconds[name].append(runner(checkpoint, batches))

    from mlx_llm.model_files.loading import load_model
    from mlx_llm.utils import num_parameters

    parameters = num_parameters(load_model(checkpoint)[0])
    peak = matmul_flops()
    tokens = options.batch_size * options.seq_len
    rows = {}
    for name, values in seconds.items():
        step_time = statistics.median(values)
        throughput = tokens / step_time
        flops = 6 * parameters * throughput
        rows[name] = {"seconds_per_step": step_time, "tokens_per_second": throughput, "flops": flops,
                      "mfu": flops / peak}
    print(f"GPT-2 shape {SHAPE['n_embd']}x{SHAPE['n_layer']} ({parameters / 1e6:.1f}M parameters), batch "
          f"{options.batch_size} x {options.seq_len}, {options.repeats} repeats (medians); BLAS: {blas_in_use()}; "
          f"MLX float32 matmul {peak / 1e9:.0f} GFLOP/s")
    print(f"{'implementation':<14} {'s/step':>8} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6}")
    for name, row in rows.items():
        print(f"{name:<14} {row['seconds_per_step']:8.3f} {row['tokens_per_second']:10.0f} {row['flops'] / 1e9:9.1f} "
              f"{row['mfu']:6.1%}")
    ratio = rows["mlx_llm"]["tokens_per_second"] / rows["mlx-lm"]["tokens_per_second"] if "mlx-lm" in rows else None
    if ratio is not None:
        print(f"mlx_llm / mlx-lm: {ratio:.2f}x tokens/s")
    print(json.dumps({"benchmark": "train", "blas": blas_in_use(), "parameters": parameters, "rows": rows,
                      "ratio_vs_mlx_lm": ratio, "matmul_flops": peak}))


if __name__ == "__main__":
    main()
