"""Prompt and decode speed of mlx_llm against mlx-lm and transformers, side by side.

    python benchmarks/generate.py [--shape llama-135M|gpt2-124M | --model PATH]
        [--precision float32|bfloat16|q4] [--prompt-tokens 512] [--gen-tokens 128] [--repeats 3]
        [--mlx-lm-quantize BITS]

--model takes any folder both load: a Hugging Face checkpoint, or a converted
MLX folder (mlx-lm's or this project's `mlx-llm convert` output; a quantized
one runs as stored). --mlx-lm-quantize BITS first converts the checkpoint with
mlx-lm itself (group size 64, written once next to it), as an mlx-community
folder is made, and compares the two on that folder.

Random-weight checkpoints of the named shapes are written once to --workdir
(transformers is needed for that). The implementations alternate within
each repeat, in one process, on the same weights and token ids (mlx_llm and
mlx-lm swap places every repeat, so neither always runs first); medians are
reported with the ratios mlx_llm / mlx-lm. Decode speed is also compared with
the memory-bandwidth limit: measured copy bandwidth / bytes of weights read
per token. Prints a table and one JSON line.

On Linux, MLX's CPU wheel links a reference BLAS; run once as installed and
once with a real BLAS preloaded, e.g.
    LD_PRELOAD=$VIRTUAL_ENV/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL python benchmarks/generate.py
The BLAS in use is printed.
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
import numpy as np
from common import blas_in_use, save_random_checkpoint
from mlx.utils import tree_flatten

SHAPES = {
    "llama-135M": ("LlamaForCausalLM", "LlamaConfig", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)),
    "gpt2-124M": ("GPT2LMHeadModel", "GPT2Config", dict(
        n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
}


def make_checkpoint(shape: str, workdir: Path) -> Path:
    model_class, config_class, options = SHAPES[shape]
    return save_random_checkpoint(model_class, config_class, options, workdir / shape)


def copy_bandwidth_gb_s() -> float:
    """Read + write bandwidth of a large memory copy (bytes moved / s)."""
    source = np.ones(256 * 2**20 // 8)  # 256 MiB
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def weight_bytes_per_token(model: nn.Module, tied: bool) -> int:
    """Bytes of weights a decode step reads: every matrix once; of an untied
    input embedding only one row."""
    total = 0
    for name, array in tree_flatten(model.parameters()):
        if "embed" in name or "wte" in name:
            if not tied:
                continue
        total += array.nbytes
    return total


def mlx_lm_quantized(checkpoint: Path, bits: int, group_size: int = 64) -> Path:
    """``checkpoint`` converted by mlx-lm (its quantization, its layout), written once beside it."""
    out = checkpoint.with_name(f"{checkpoint.name}-mlx-lm-q{bits}")
    if (out / "config.json").exists():
        return out
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(checkpoint)
    model, config = quantize_model(model, config, group_size, bits)
    save_model(out, model)
    save_config(config, out / "config.json")
    return out


def prepare(model: nn.Module, precision: str) -> nn.Module:
    if precision == "bfloat16":
        model.set_dtype(mx.bfloat16)
    elif precision == "q4":
        nn.quantize(model, group_size=64, bits=4,
                    class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0)
    mx.eval(model.parameters())
    return model


def time_steps(steps, prompt_tokens: int) -> dict:
    """Consume a (token, logprobs) generator: prompt speed from the first token, decode speed from the rest."""
    mx.synchronize()
    mx.reset_peak_memory()
    start = time.perf_counter()
    count = 0
    first = None
    for token, _ in steps:
        if isinstance(token, mx.array):
            token.item()
        count += 1
        if count == 1:
            first = time.perf_counter()
    end = time.perf_counter()
    return {
        "prompt_tps": prompt_tokens / (first - start),
        "decode_tps": (count - 1) / (end - first),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "tokens": count,
    }


def run_mlx_llm(model, prompt: mx.array, gen_tokens: int, prefill: int) -> dict:
    from mlx_llm.generation.generate import generate_step
    from mlx_llm.generation.sampling import SamplingConfig

    return time_steps(generate_step(model, prompt, SamplingConfig(), gen_tokens, prefill_step_size=prefill),
                      prompt.size)


def run_mlx_lm(model, prompt: mx.array, gen_tokens: int, prefill: int) -> dict:
    from mlx_lm.generate import generate_step

    return time_steps(generate_step(prompt, model, max_tokens=gen_tokens, prefill_step_size=prefill), prompt.size)


def run_transformers(model, prompt: np.ndarray, gen_tokens: int) -> dict:
    import torch

    ids = torch.tensor(prompt[None], dtype=torch.long)
    with torch.no_grad():
        start = time.perf_counter()
        model(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                       pad_token_id=0, attention_mask=torch.ones_like(ids))
        total = time.perf_counter() - start
    return {"prompt_tps": prompt.size / prefill, "decode_tps": (gen_tokens - 1) / max(total - prefill, 1e-9),
            "peak_memory_gb": float("nan"), "tokens": gen_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-135M")
    parser.add_argument("--model", type=Path, help="A checkpoint folder instead of a random shape.")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "q4"], default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--prefill-step-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("weights/bench"))
    parser.add_argument("--no-transformers", action="store_true", help="Skip the PyTorch reference row.")
    parser.add_argument("--mlx-lm-quantize", type=int, choices=[2, 3, 4, 5, 6, 8],
                        help="Convert with mlx-lm to this many bits (group size 64) and compare on that folder.")
    options = parser.parse_args()

    from mlx_llm.model_files.loading import load_model

    checkpoint = options.model or make_checkpoint(options.shape, options.workdir)
    if options.mlx_lm_quantize:
        checkpoint = options.model = mlx_lm_quantized(Path(checkpoint), options.mlx_lm_quantize)
    ours, config = load_model(checkpoint)
    if "quantization" in config:
        if options.precision != "float32":
            parser.error(f"{checkpoint} is quantized already: it runs as stored (leave --precision out)")
        record = config["quantization"]
        options.precision = f"as stored ({record['bits']}-bit, group {record['group_size']})"
        options.no_transformers = True  # transformers does not read MLX quantization
    prepare(ours, options.precision)
    implementations = {"mlx_llm": ours}
    try:
        from mlx_lm.utils import load_model as mlx_lm_load

        implementations["mlx-lm"] = prepare(mlx_lm_load(Path(checkpoint))[0], options.precision)
    except ImportError:
        print("mlx-lm is not installed (pip install -e '.[bench]'); its rows are skipped")
    reference = None
    if not options.no_transformers and options.precision != "q4":
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        dtype = torch.bfloat16 if options.precision == "bfloat16" else torch.float32
        reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval()

    vocab = config.get("vocab_size")
    prompt_np = np.random.default_rng(0).integers(0, vocab, options.prompt_tokens)
    prompt = mx.array(prompt_np)
    results: dict[str, list[dict]] = {name: [] for name in [*implementations, *(["transformers"] if reference else [])]}
    # Warm-up (kernels, allocator), then alternate implementations in every repeat.
    for name, model in implementations.items():
        (run_mlx_llm if name == "mlx_llm" else run_mlx_lm)(model, prompt[:16], 4, options.prefill_step_size)
    for repeat in range(options.repeats):
        # Swap the order every repeat, so that neither implementation always runs first (after PyTorch's).
        order = list(implementations.items())
        for name, model in order[::-1] if repeat % 2 else order:
            runner = run_mlx_llm if name == "mlx_llm" else run_mlx_lm
            results[name].append(runner(model, prompt, options.gen_tokens, options.prefill_step_size))
        if reference is not None:
            results["transformers"].append(run_transformers(reference, prompt_np, options.gen_tokens))

    tied = config.get("tie_word_embeddings", config.get("model_type") == "gpt2")
    bytes_per_token = weight_bytes_per_token(ours, tied)
    bandwidth = copy_bandwidth_gb_s()
    limit = bandwidth * 1e9 / bytes_per_token
    medians = {name: {key: statistics.median(run[key] for run in runs) for key in ("prompt_tps", "decode_tps",
                                                                                    "peak_memory_gb")}
               for name, runs in results.items()}
    label = options.model.name if options.model else options.shape
    print(f"model {label}, {options.precision}, prompt {options.prompt_tokens}, generate {options.gen_tokens}, "
          f"{options.repeats} repeats (medians); BLAS: {blas_in_use()}")
    print(f"{'implementation':<14} {'prompt tok/s':>13} {'decode tok/s':>13} {'peak GB':>8} {'decode / limit':>15}")
    for name, row in medians.items():
        print(f"{name:<14} {row['prompt_tps']:13.1f} {row['decode_tps']:13.1f} {row['peak_memory_gb']:8.3f} "
              f"{row['decode_tps'] / limit:15.2f}")
    print(f"memory-bandwidth limit: {bandwidth:.1f} GB/s copy / {bytes_per_token / 1e6:.0f} MB per token = "
          f"{limit:.1f} tokens/s")
    ratios = {}
    if "mlx-lm" in medians:
        ours_row, theirs = medians["mlx_llm"], medians["mlx-lm"]
        ratios = {
            "prompt": ours_row["prompt_tps"] / theirs["prompt_tps"],
            "decode": ours_row["decode_tps"] / theirs["decode_tps"],
            "peak_memory": ours_row["peak_memory_gb"] / theirs["peak_memory_gb"],
        }
        print(f"mlx_llm / mlx-lm: prompt {ratios['prompt']:.2f}x, decode {ratios['decode']:.2f}x, "
              f"peak memory {ratios['peak_memory']:.2f}x")
    print(json.dumps({"benchmark": "generate", "model": label, "precision": options.precision,
                      "blas": blas_in_use(), "prompt_tokens": options.prompt_tokens,
                      "gen_tokens": options.gen_tokens, "medians": medians, "ratios_vs_mlx_lm": ratios,
                      "bandwidth_limit_tps": limit}))


if __name__ == "__main__":
    main()
