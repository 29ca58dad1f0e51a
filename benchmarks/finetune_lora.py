"""LoRA instruction tuning: training tokens/s of mlx_llm against mlx-lm's LoRA
trainer, on the same Llama-shaped model, data and settings.

    python benchmarks/finetune_lora.py [--tiny] [--steps 20] [--warmup 3] [--repeats 2]
        [--batch-size 4] [--examples 512] [--max-length 256] [--quantize 4] [--no-mlx-lm]
        [--clock wall|process]

    # with a real BLAS (MLX's Linux CPU wheel links a reference one), as installed here:
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL \\
        python benchmarks/finetune_lora.py --tiny
    # on a machine busy with other jobs, one BLAS thread (a multi-threaded BLAS
    # stalls on descheduled threads), and optionally CPU time instead of wall time:
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL MKL_NUM_THREADS=1 \\
        python benchmarks/finetune_lora.py --clock process

The model is a random-weight transformers ``LlamaForCausalLM`` (SmolLM-135M's
shape by default: hidden 576, 30 layers, 9 heads, 3 key/value heads, MLP 1536,
vocabulary 49152, tied embeddings; ``--tiny`` is a 128-wide, 4-layer one for
development; each dimension can be overridden), written once to --workdir
next to a byte-level BPE tokenizer trained here, with a chat template that
renders ``BOS prompt completion EOS`` so mlx-lm's prompt/completion dataset
sees the same tokens as mlx_llm's (the script checks that). The data are
--examples seeded synthetic question/answer records (about 100-200 tokens),
written as ``train.jsonl`` / ``valid.jsonl`` to a temporary folder.

Both sides: LoRA rank 8, scale 2.0 (mlx_llm alpha 16 / rank 8; mlx-lm
``scale`` 2.0), no dropout, adapters on ``self_attn.q_proj`` and
``self_attn.v_proj`` of every layer, float32 weights (or a 4/8-bit base with
--quantize, group size 64), Adam(W) with learning rate 1e-4 constant, no
weight decay, bias correction on (mlx_llm's default; mlx-lm takes it from
optimizer_config, MLX's default is off), no gradient clipping (mlx-lm has
none), no gradient checkpointing, loss on completion tokens only (prompt
masking). Each side keeps its own data pipeline and compiled step: mlx_llm's
`Trainer.train_step` over `InstructionBatches` (shuffled records, padded to a
multiple of 8), and the step of `mlx_lm.tuner.trainer.train` over its
`iterate_batches` (shuffled batches of consecutive records, padded to a
multiple of 32). Each run takes --warmup steps (compilation, not timed), then
times --steps steps, each from fetching the batch to the evaluated update.
Tokens/s counts the batches' real (non-padding) tokens: mlx-lm's ``lengths``,
mlx_llm's ``attention_mask`` sum. Padded tokens/s (the positions actually
computed) is shown too, since the two pipelines pad differently. A step whose
batch shape is new to the run includes a recompilation; tokens/s over the
other steps is reported as "steady". Repeats alternate mlx_llm and mlx-lm in
one process; medians are reported with the ratio mlx_llm / mlx-lm and peak
memory. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from common import blas_in_use, save_random_checkpoint

SHAPES = {
    "smollm-135M": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                        intermediate_size=1536, vocab_size=49152),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, vocab_size=4096),
}
TOKENIZER_VOCAB = 4096  # at most; the model's vocabulary may be larger (unused rows)
RANK, ALPHA, LEARNING_RATE = 8, 16.0, 1e-4
TARGETS = ("self_attn.q_proj", "self_attn.v_proj")
SEED = 0
# "process": CPU seconds of this process, for a machine busy with other jobs.
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
# BOS + prompt + completion + EOS: what mlx_llm builds for a prompt/completion record.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)


# --- model, tokenizer, data -------------------------------------------------------------------


def pseudo_words(count: int, seed: int) -> list[str]:
    """``count`` distinct pronounceable words made of 1-4 syllables."""
    rng = random.Random(seed)
    onsets = "b c d f g h k l m n p r s t v w z br st tr pl ch sh".split()
    vowels = "a e i o u ai ou".split()
    codas = ["", "", "n", "r", "s", "t", "l"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                          for _ in range(rng.randint(1, 4))))
    return sorted(words)


def make_records(count: int, seed: int) -> list[dict]:
    """Question/answer records of roughly 100-200 tokens with the tokenizer trained here."""
    rng = random.Random(seed)
    words = pseudo_words(1500, 0)
    common = "the of a to and is in that it for as with was on by what which how why".split()

    def sentence(length: int) -> str:
        return " ".join(rng.choice(common) if rng.random() < 0.3 else rng.choice(words) for _ in range(length))

    return [{"prompt": f"Question: {sentence(rng.randint(15, 50))}?\nAnswer:",
             "completion": f" {sentence(rng.randint(40, 110))}."} for _ in range(count)]


def build_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE with Llama's special tokens (BOS added on encoding), saved by transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = make_records(2000, seed=12345)
    tokenizer.train_from_iterator((record["prompt"] + record["completion"] for record in corpus), trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", bos)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            chat_template=CHAT_TEMPLATE).save_pretrained(folder)


def make_checkpoint(shape: dict, workdir: Path) -> Path:
    name = ("lora-llama-{hidden_size}x{num_hidden_layers}-h{num_attention_heads}-kv{num_key_value_heads}"
            "-i{intermediate_size}-v{vocab_size}").format(**shape)
    options = dict(shape, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)
    folder = save_random_checkpoint("LlamaForCausalLM", "LlamaConfig", options, workdir / name)
    if not (folder / "tokenizer.json").exists():
        build_tokenizer(folder, min(TOKENIZER_VOCAB, shape["vocab_size"]))
    return folder


def write_data(folder: Path, examples: int) -> None:
    """``train.jsonl`` (``examples`` records) and a small ``valid.jsonl``, as both libraries read them."""
    for name, count, seed in (("train", examples, SEED), ("valid", 16, SEED + 1)):
        with open(folder / f"{name}.jsonl", "w") as handle:
            for record in make_records(count, seed):
                handle.write(json.dumps(record) + "\n")


# --- timing -----------------------------------------------------------------------------------


def release() -> None:
    gc.collect()  # trainers hold reference cycles (their compiled steps capture them)
    mx.clear_cache()


def time_run(step, next_batch, total_steps: int, warmup: int, clock=time.perf_counter) -> dict:
    """Run ``total_steps`` steps; time the ones after ``warmup`` with ``clock``.

    ``next_batch()`` returns ``(batch, real_tokens, padded_tokens, shape)``
    (counting is cheap and done on host arrays); ``step(batch)`` runs one
    evaluated optimizer step and returns the loss.
    """
    mx.synchronize()
    mx.reset_peak_memory()
    seen_shapes: set = set()
    records = []
    for index in range(total_steps):
        start = clock()
        batch, real, padded, shape = next_batch()
        loss = step(batch)
        seconds = clock() - start
        records.append({"seconds": seconds, "real": real, "padded": padded, "new_shape": shape not in seen_shapes,
                        "loss": loss, "timed": index >= warmup})
        seen_shapes.add(shape)
    timed = [record for record in records if record["timed"]]
    steady = [record for record in timed if not record["new_shape"]]

    def rate(rows: list[dict], key: str) -> float | None:
        seconds = sum(row["seconds"] for row in rows)
        return sum(row[key] for row in rows) / seconds if rows and seconds > 0 else None

    return {
        "tokens_per_second": rate(timed, "real"),
        "padded_tokens_per_second": rate(timed, "padded"),
        "steady_tokens_per_second": rate(steady, "real"),
        "seconds_per_step": statistics.median(row["seconds"] for row in timed),
        "real_tokens": sum(row["real"] for row in timed),
        "padded_tokens": sum(row["padded"] for row in timed),
        "recompiled_steps": sum(row["new_shape"] for row in timed),
        "shapes": len(seen_shapes),
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }


# --- the two implementations ------------------------------------------------------------------


def quantize_predicate(group_size: int):
    return lambda _, module: hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0


def run_mlx_llm(checkpoint: Path, data: Path, options) -> dict:
    from mlx_llm.data import InstructionBatches, encode_instructions, read_instructions
    from mlx_llm.model_files.loading import load_model, quantization_predicate
    from mlx_llm.training.lora import LoRAConfig, apply_lora
    from mlx_llm.training.objectives import CausalLMObjective
    from mlx_llm.tokenization import Tokenizer
    from mlx_llm.training.trainer import Trainer, TrainingConfig

    # What mlx_llm.finetune.finetune builds for task="lm", lora=True.
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    encoded = encode_instructions(read_instructions(data / "train.jsonl"), tokenizer, options.max_length,
                                  mask_prompt=True)
    batches = iter(InstructionBatches(encoded, options.batch_size, pad_id, shuffle=True, seed=SEED))
    mx.random.seed(SEED)
    model, _ = load_model(checkpoint, dtype="float32")
    if options.quantize:
        nn.quantize(model, group_size=options.group_size, bits=options.quantize,
                    class_predicate=quantization_predicate(options.group_size))
    apply_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.0, target_modules=TARGETS, num_layers=None))
    steps = options.warmup + options.steps
    config = TrainingConfig(steps=steps, learning_rate=LEARNING_RATE, schedule="constant", warmup_steps=0,
                            weight_decay=0.0, betas=(0.9, 0.999), max_grad_norm=0.0, seed=SEED)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, CausalLMObjective(), None, config, out, progress=False)
        model.train()
        mx.eval(model.parameters())

        def next_batch():
            batch = next(batches)
            mask = np.array(batch["attention_mask"])
            return batch, int(mask.sum()), mask.size, mask.shape

        return time_run(lambda batch: trainer.train_step([batch])[0], next_batch, steps, options.warmup,
                        CLOCKS[options.clock])


def run_mlx_lm(checkpoint: Path, data: Path, options) -> dict:
    from mlx.nn.utils import average_gradients
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import default_loss, iterate_batches
    from mlx_lm.tuner.utils import linear_to_lora_layers

    # What mlx_lm.lora.train_model builds, with the dataset tokenized up front.
    model, tokenizer = load(str(checkpoint))
    train_set, _, _ = load_local_dataset(data, tokenizer, types.SimpleNamespace(mask_prompt=True))
    train_set = CacheDataset(train_set)
    for index in range(len(train_set)):
        train_set[index]  # tokenize now, not inside the timed steps
    model.set_dtype(mx.float32)
    if options.quantize:
        nn.quantize(model, group_size=options.group_size, bits=options.quantize,
                    class_predicate=quantize_predicate(options.group_size))
    mx.random.seed(SEED)
    np.random.seed(SEED)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers),
                          {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": list(TARGETS)})
    # mlx-lm's default optimizer (no weight decay), with bias correction as mlx_llm's AdamW has it
    # (mlx-lm: optimizer_config {"adam": {"bias_correction": true}}); MLX's default is off.
    optimizer = optim.Adam(learning_rate=LEARNING_RATE, bias_correction=True)
    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    # The step of mlx_lm.tuner.trainer.train without gradient accumulation.
    def step(batch):
        (loss, tokens), grad = loss_value_and_grad(model, *batch)
        grad = average_gradients(grad)
        optimizer.update(model, grad)
        return loss, tokens

    step = mx.compile(step, inputs=state, outputs=state)
    batches = iterate_batches(train_set, options.batch_size, options.max_length, loop=True)
    model.train()
    mx.eval(model.parameters())

    def next_batch():
        tokens, lengths = next(batches)
        real = int(np.array(lengths)[:, 1].sum())
        # default_loss feeds tokens[:, :-1]: that many positions are computed.
        shape = (tokens.shape[0], tokens.shape[1] - 1)
        return (tokens, lengths), real, shape[0] * shape[1], shape

    def run(batch):
        loss, tokens = step(batch)
        mx.eval(state, loss, tokens)
        return loss.item()

    return time_run(run, next_batch, options.warmup + options.steps, options.warmup, CLOCKS[options.clock])


def check_same_tokens(checkpoint: Path, data: Path, max_length: int) -> str:
    """Whether both pipelines give the same ids and learned positions for the training records."""
    from mlx_lm import load
    from mlx_lm.tuner.datasets import load_local_dataset
    from mlx_llm.data import encode_instructions, read_instructions
    from mlx_llm.tokenization import Tokenizer

    ours = encode_instructions(read_instructions(data / "train.jsonl"), Tokenizer.from_pretrained(checkpoint),
                               max_length, mask_prompt=True)
    _, tokenizer = load(str(checkpoint), lazy=True)
    theirs, _, _ = load_local_dataset(data, tokenizer, types.SimpleNamespace(mask_prompt=True))
    mismatched = 0
    for index, item in enumerate(ours):
        ids, offset = theirs.process(theirs[index])
        learned_from = int(np.argmax(item["loss_mask"]))
        if list(item["input_ids"]) != list(ids[:max_length]) or learned_from != offset:
            mismatched += 1
    lengths = [len(item["input_ids"]) for item in ours]
    return (f"{len(ours)} records, {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); "
            + ("same ids and prompt masks in both pipelines" if not mismatched
               else f"WARNING: {mismatched} records tokenize differently in the two pipelines"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="A 128-wide, 4-layer model for development.")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--intermediate-size", type=int)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per run.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (compilation).")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--quantize", type=int, choices=[4, 8], help="QLoRA: quantize the frozen base (both sides).")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; process: CPU time of this process (a busy shared machine).")
    parser.add_argument("--workdir", type=Path, default=Path("weights/bench"))
    parser.add_argument("--no-mlx-lm", action="store_true")
    options = parser.parse_args()

    shape = dict(SHAPES["tiny" if options.tiny else "smollm-135M"])
    for option, key in (("hidden_size", "hidden_size"), ("layers", "num_hidden_layers"),
                        ("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"),
                        ("intermediate_size", "intermediate_size"), ("vocab_size", "vocab_size")):
        if getattr(options, option) is not None:
            shape[key] = getattr(options, option)
    options.group_size = 64 if shape["hidden_size"] % 64 == 0 else 32  # as mlx_llm.finetune picks it
    checkpoint = make_checkpoint(shape, options.workdir)

    runners = {"mlx_llm": run_mlx_llm}
    if not options.no_mlx_lm:
        try:
            import mlx_lm  # noqa: F401

            runners["mlx-lm"] = run_mlx_lm
        except ImportError:
            print("mlx-lm is not installed (pip install -e '.[bench]'); its row is skipped", file=sys.stderr)

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        write_data(data, options.examples)
        data_note = check_same_tokens(checkpoint, data, options.max_length) if "mlx-lm" in runners else ""
        results: dict[str, list[dict]] = {name: [] for name in runners}
        for _ in range(options.repeats):
            for name, runner in runners.items():
                results[name].append(runner(checkpoint, data, options))
                release()  # the run's model and optimizer, before the next one loads

    def median(values) -> float | None:
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None

    def ratio_of(key: str) -> float | None:
        if "mlx-lm" not in rows or None in (rows["mlx_llm"][key], rows["mlx-lm"][key]):
            return None
        return rows["mlx_llm"][key] / rows["mlx-lm"][key]

    rows = {}
    for name, runs in results.items():
        rows[name] = {key: median(run[key] for run in runs)
                      for key in ("tokens_per_second", "padded_tokens_per_second", "steady_tokens_per_second",
                                  "seconds_per_step", "peak_memory_gb", "recompiled_steps", "shapes")}
        rows[name]["runs"] = runs
    ratio, steady_ratio = ratio_of("tokens_per_second"), ratio_of("steady_tokens_per_second")

    precision = f"{options.quantize}-bit base (QLoRA)" if options.quantize else "float32"
    print(f"Llama {shape['hidden_size']}x{shape['num_hidden_layers']} (heads {shape['num_attention_heads']}/"
          f"{shape['num_key_value_heads']}, MLP {shape['intermediate_size']}, vocabulary {shape['vocab_size']}), "
          f"{precision}; LoRA r{RANK} scale {ALPHA / RANK:g} on q_proj, v_proj; batch {options.batch_size}, "
          f"{options.steps} timed steps after {options.warmup}; {options.repeats} repeats (medians); "
          f"BLAS: {blas_in_use()}; {options.clock} clock")
    if data_note:
        print(f"data: {data_note}")
    print(f"{'implementation':<14} {'s/step':>7} {'tokens/s':>9} {'padded tok/s':>12} {'steady tok/s':>12} "
          f"{'recompiles':>10} {'peak GB':>8} {'loss first→last':>16}")
    for name, row in rows.items():
        losses = (f"{statistics.median(r['first_loss'] for r in row['runs']):.3f}→"
                  f"{statistics.median(r['last_loss'] for r in row['runs']):.3f}")
        steady = "-" if row["steady_tokens_per_second"] is None else f"{row['steady_tokens_per_second']:.0f}"
        print(f"{name:<14} {row['seconds_per_step']:7.3f} {row['tokens_per_second']:9.0f} "
              f"{row['padded_tokens_per_second']:12.0f} {steady:>12} "
              f"{row['recompiled_steps']:10.0f} {row['peak_memory_gb']:8.3f} {losses:>16}")
    if ratio is not None:
        steady = "" if steady_ratio is None else f", {steady_ratio:.2f}x on steps without recompilation"
        print(f"mlx_llm / mlx-lm: {ratio:.2f}x tokens/s{steady} (target >= 1.0x)")
    print(json.dumps({"benchmark": "finetune_lora", "blas": blas_in_use(), "clock": options.clock, "shape": shape,
                      "quantize": options.quantize, "batch_size": options.batch_size, "steps": options.steps,
                      "warmup": options.warmup, "max_length": options.max_length, "examples": options.examples,
                      "rows": rows, "ratio_vs_mlx_lm": ratio, "steady_ratio_vs_mlx_lm": steady_ratio}))


if __name__ == "__main__":
    main()
