"""Load time, peak memory and conversion throughput for 124M GPT-2-shaped and
~135M Llama-shaped (SmolLM-135M) checkpoints with random weights made locally.

    python benchmarks/load.py [--workdir DIR] [--repeats 3]

Each measurement runs in a fresh process so peak memory is its own. With an
optimized BLAS, the first load on a machine also measures the weight orders
(`mlx_llm.blocks.layers.relayout`): "first load" times that, with an empty cache of
measured orders; the other loads find them measured. Prints a table and one
JSON line. Needs the test extra (torch, transformers) to write
the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {
    "gpt2-124M": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                                                         n_positions=1024)),
    "llama-135M": ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=576, intermediate_size=1536,
                                                            num_hidden_layers=30, num_attention_heads=9,
                                                            num_key_value_heads=3, vocab_size=49152,
                                                            max_position_embeddings=2048, tie_word_embeddings=True)),
}

MEASURE = r"""
import json, resource, sys, time
import mlx.core as mx
from mlx_llm.model_files.loading import load_model, convert
action, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if action == "load":
    model, _ = load_model(path)
    result = {"seconds": time.perf_counter() - start}
else:
    report = convert(path, sys.argv[3], overwrite=True)
    result = {"seconds": report.seconds, "mb_per_s": report.megabytes_per_second, "mb": report.bytes_written / 1e6}
result["mlx_peak_mb"] = mx.get_peak_memory() / 1e6
result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
print(json.dumps(result))
"""


def make_checkpoint(name: str, folder: Path) -> Path:
    import torch
    import transformers

    model_class, config_class, options = SHAPES[name]
    path = folder / name
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**options))
        model.save_pretrained(path, safe_serialization=True)
    return path


def run(action: str, *args: str, order_cache: Path) -> dict:
    environment = {**os.environ, "MLX_LLM_CACHE": str(order_cache)}  # where measured weight orders are kept
    completed = subprocess.run([sys.executable, "-c", MEASURE, action, *args], capture_output=True, text=True,
                               check=True, env=environment)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the checkpoints (a temp dir if unset).")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="mlx_llm_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in SHAPES:
        checkpoint = make_checkpoint(name, workdir)
        converted = workdir / f"{name}-mlx"
        order_cache = workdir / "order-cache"
        conversions = [run("convert", str(checkpoint), str(converted), order_cache=order_cache)
                       for _ in range(options.repeats)]
        first_loads = []
        for _ in range(options.repeats):
            with tempfile.TemporaryDirectory(prefix="orders-", dir=workdir) as empty:
                first_loads.append(run("load", str(checkpoint), order_cache=Path(empty)))
        run("load", str(checkpoint), order_cache=order_cache)  # the orders are measured from now on
        loads_hf = [run("load", str(checkpoint), order_cache=order_cache) for _ in range(options.repeats)]
        loads_mlx = [run("load", str(converted), order_cache=order_cache) for _ in range(options.repeats)]
        rows.append({
            "model": name,
            "size_mb": conversions[0]["mb"],
            "first_load_hf_s": statistics.median(r["seconds"] for r in first_loads),
            "load_hf_s": statistics.median(r["seconds"] for r in loads_hf),
            "load_mlx_s": statistics.median(r["seconds"] for r in loads_mlx),
            "load_peak_mlx_mb": statistics.median(r["mlx_peak_mb"] for r in loads_mlx),
            "load_max_rss_mb": statistics.median(r["max_rss_mb"] for r in loads_mlx),
            "convert_mb_per_s": statistics.median(r["mb_per_s"] for r in conversions),
            "convert_max_rss_mb": statistics.median(r["max_rss_mb"] for r in conversions),
        })
    print(f"{'model':<12} {'MB':>7} {'first load s':>13} {'load HF s':>10} {'load MLX s':>11} {'MLX peak MB':>12} "
          f"{'max RSS MB':>11} {'convert MB/s':>13}")
    for row in rows:
        print(f"{row['model']:<12} {row['size_mb']:7.0f} {row['first_load_hf_s']:13.2f} {row['load_hf_s']:10.2f} "
              f"{row['load_mlx_s']:11.2f} "
              f"{row['load_peak_mlx_mb']:12.0f} {row['load_max_rss_mb']:11.0f} {row['convert_mb_per_s']:13.0f}")
    print(json.dumps({"benchmark": "load", "repeats": options.repeats, "rows": rows}))


if __name__ == "__main__":
    main()
