"""Sequence-to-sequence fine-tuning (``--task seq2seq``, T5) of mlx_llm against
Hugging Face transformers (PyTorch, CPU): quality and training speed of the
same small T5 trained on the same data, in the same order, with the same
recipe, by both, one after the other in one process; then a LoRA run of
mlx_llm on the same data.

    # as installed (the MLX wheel's reference BLAS)
    python benchmarks/finetune_seq2seq.py
    # MKL preloaded (torch uses its own MKL either way)
    LD_PRELOAD=$VIRTUAL_ENV/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL python benchmarks/finetune_seq2seq.py
    # quicker: fewer pairs and epochs, or one side only
    python benchmarks/finetune_seq2seq.py --train-size 1000 --epochs 1 --no-lora --no-torch

Model: a random-weight ``T5ForConditionalGeneration`` built from a
``transformers.T5Config`` shaped like a smaller flan-t5-small (``d_model``
256, 4 encoder + 4 decoder layers, 4 heads of 64, ``d_ff`` 1024, gated-GELU,
untied output layer, dropout 0.1, T5's relative-position buckets), with a
SentencePiece unigram tokenizer of ``--vocab-size`` (2000) pieces trained on
the Shakespeare text in T5's layout (``<pad>`` = 0, ``</s>`` = 1 appended to
every text, ``<unk>`` = 2; ``mlx-llm tokenizer`` writes GPT/BERT layouts
only, so it is trained with ``sentencepiece`` directly, as for a T5),
saved as ``spiece.model`` + ``tokenizer_config.json`` and written once to
``--workdir``. The script checks that mlx_llm's and transformers' tokenizers
give the same ids for every pair.

Data: the lines of ``--data`` (tinyshakespeare, ``../shared/data`` from the
repository root) that hold 4-8 words and are no speaker's name (no final
``:``), each once; shuffled with ``--seed``, the first ``--valid-size`` (300)
are held out, the next ``--train-size`` (2000) trained on. Input: the line's
words in reverse order; target: the line (``{"input": "speak. me hear
further, any proceed we Before", "target": "Before we proceed any further,
hear me speak."}``).

Recipe, both sides: ``--epochs`` (2) passes in the order mlx_llm's
`Seq2SeqBatches` shuffles them (``np.random.default_rng([seed, epoch])``),
batches of ``--batch-size`` (32) padded on the right to the batch's longest
input / target rounded up to a multiple of 8 (so both compute the same
shapes), AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), peak rate
``--lr`` (2e-3) with a linear warmup over ``--warmup-ratio`` (0.06) of the
steps and linear decay to 0, gradient norm clipped at 1.0, T5's dropout 0.1
in training. mlx_llm runs `mlx_llm.finetune.finetune` (what ``mlx-llm
finetune --task seq2seq`` calls), validating once, after the last step, then
`mlx_llm.finetune.evaluate` on the run folder; transformers runs its own
PyTorch loop, then the validation loss and greedy ``generate``. The LoRA row
is mlx_llm with ``lora=True``: rank 8, alpha 16 on ``q_proj``/``v_proj`` of
every attention (self and cross), at ``--lora-lr`` (2e-3).

Metrics: validation loss (mean cross-entropy per target token, ``</s>``
included) and exact match (the share of validation inputs whose greedy
decoding is the target, token for token up to ``</s>``). mlx_llm counts
exact match from the teacher-forced pass (greedy decoding reproduces the
target exactly when the argmax is the next target token at every position);
transformers' row counts it from ``generate`` and also reports the
teacher-forced count, which agree.

Speed: training seconds exclude evaluation (mlx_llm: the trainer's
``train_seconds``, the steps with their batching and compilation;
transformers: the loop's wall time, batching included). Tokens/s =
epochs x (input + target tokens of the training pairs, no padding) /
training seconds; examples/s likewise. PyTorch keeps its default thread
count. The 1-minute load average is recorded before and after each run
(the machine is shared: figures taken under load are slower). Prints a table,
the ratios, the BLAS and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import blas_in_use, save_random_checkpoint, torch_training_step

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "../shared/data/tinyshakespeare/input.txt"
MIN_WORDS, MAX_WORDS = 4, 8
PAD_TO_MULTIPLE_OF = 8  # as mlx_llm's Seq2SeqBatches
# flan-t5-small's recipe (gated-GELU, dropout 0.1), narrower and shallower. transformers 5 ties the
# output layer to the embeddings (std 1 at initialization) whatever the config says; scaling the decoder
# output by d_model ** -0.5 before it, as the original T5, starts the logits near std 1 (unscaled they
# are near std 16 and the first loss is about 30).
T5_SHAPE = {"d_model": 256, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 4,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True, "scale_decoder_outputs": True,
            "dropout_rate": 0.1,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
RANK, ALPHA = 8, 16.0


def load_average() -> float:
    return os.getloadavg()[0]


# --- data -------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    """The distinct lines of ``path`` with MIN_WORDS-MAX_WORDS words that are not a speaker's name, in file order."""
    seen: set[str] = set()
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = " ".join(line.split())
        if line and not line.endswith(":") and MIN_WORDS <= len(line.split()) <= MAX_WORDS and line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def make_pairs(lines: list[str], train_size: int, valid_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, valid)`` records ``{"input": words reversed, "target": line}``, shuffled with ``seed``."""
    if train_size + valid_size > len(lines):
        raise ValueError(f"--train-size {train_size} + --valid-size {valid_size} exceeds the {len(lines)} usable "
                         "lines of the data")
    order = np.random.default_rng(seed).permutation(len(lines))
    records = [{"input": " ".join(reversed(lines[i].split())), "target": lines[i]} for i in order.tolist()]
    return records[valid_size : valid_size + train_size], records[:valid_size]


def write_jsonl(records: list[dict], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


# --- checkpoint -------------------------------------------------------------------------------


def train_t5_tokenizer(lines: list[str], folder: Path, vocab_size: int) -> None:
    """A SentencePiece unigram model in T5's layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no ``<s>``)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(0)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "extra_ids": 0, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_checkpoint(workdir: Path, vocab_size: int, data_path: Path) -> Path:
    """The random T5 and its tokenizer (trained on every line of ``data_path``), written once."""
    shape = T5_SHAPE
    name = (f"seq2seq-t5-{shape['d_model']}x{shape['num_layers']}+{shape['num_decoder_layers']}-h{shape['num_heads']}"
            f"-ff{shape['d_ff']}-v{vocab_size}-{data_path.parent.name}")
    folder = save_random_checkpoint("T5ForConditionalGeneration", "T5Config", dict(shape, vocab_size=vocab_size),
                                    workdir / name)
    if not (folder / "spiece.model").exists():
        lines = [line.strip() for line in data_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        train_t5_tokenizer(lines, folder, vocab_size)
    return folder


def encode_pairs(checkpoint: Path, records: list[dict], max_length: int) -> list[dict]:
    """mlx_llm's encoding of the pairs (`encode_seq2seq`), checked against transformers'
    ``tokenizer(inputs, text_target=targets, truncation=True)``."""
    import transformers

    from mlx_llm import data
    from mlx_llm.tokenization import Tokenizer

    examples = [data.Seq2SeqExample(record["input"], record["target"], index + 1)
                for index, record in enumerate(records)]
    ours = data.encode_seq2seq(examples, Tokenizer.from_pretrained(checkpoint), max_length)
    theirs = transformers.AutoTokenizer.from_pretrained(checkpoint)(
        [record["input"] for record in records], text_target=[record["target"] for record in records],
        truncation=True, max_length=max_length)
    for index, item in enumerate(ours):
        if item["input_ids"].tolist() != theirs["input_ids"][index] or item["labels"].tolist() != theirs["labels"][index]:
            raise RuntimeError(f"the tokenizers disagree on pair {index}: {records[index]}")
    return [{"input_ids": item["input_ids"].tolist(), "labels": item["labels"].tolist()} for item in ours]


def real_tokens(items: list[dict]) -> int:
    return sum(len(item["input_ids"]) + len(item["labels"]) for item in items)


# --- mlx_llm ----------------------------------------------------------------------------------


def run_mlx_llm(options, checkpoint: Path, train_file: Path, valid_file: Path, out: Path, tokens: int,
                num_train: int, lora: bool) -> dict:
    from mlx_llm.finetune import FinetuneConfig, evaluate, finetune

    load_before = load_average()
    config = FinetuneConfig(
        task="seq2seq", model=str(checkpoint), train=str(train_file), valid=str(valid_file), out=str(out),
        epochs=options.epochs, batch_size=options.batch_size, learning_rate=options.lora_lr if lora else options.lr,
        max_length=options.max_length, warmup_ratio=options.warmup_ratio, schedule="linear", weight_decay=0.0,
        max_grad_norm=1.0, lora=lora, rank=RANK, alpha=ALPHA, seed=options.seed, log_every=50,
        eval_every=10**9,  # validate once, after the last step, outside the timing
    )
    result = finetune(config, progress=False)
    load_after = load_average()
    metrics = evaluate(out, valid_file, batch_size=options.batch_size)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    training = [record for record in records if "loss" in record]
    return {
        "exact_match": metrics["exact_match"], "eval_loss": metrics["loss"], "train_seconds": result.train_seconds,
        "tokens_per_second": options.epochs * tokens / result.train_seconds,
        "examples_per_second": options.epochs * num_train / result.train_seconds, "steps": result.steps,
        "final_train_loss": training[-1]["loss"], "trainable_parameters": result.trainable_parameters,
        "num_parameters": result.num_parameters, "learning_rate": config.learning_rate,
        "load_before": load_before, "load_after": load_after,
    }


# --- transformers -----------------------------------------------------------------------------


def padded(rows: list[list[int]], fill: int, length: int):
    import torch

    values = torch.full((len(rows), length), fill, dtype=torch.long)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return values


def torch_batch(items: list[dict], longest_input: int) -> dict:
    """The batch mlx_llm's `Seq2SeqBatches` builds: inputs padded with 0 to the batch's longest
    rounded up to a multiple of 8 (at most the longest input of the data), labels with -100."""
    import torch

    def rounded(length: int) -> int:
        return -(-length // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF

    input_length = min(rounded(max(len(item["input_ids"]) for item in items)), longest_input)
    input_ids = padded([item["input_ids"] for item in items], 0, input_length)
    lengths = torch.tensor([len(item["input_ids"]) for item in items])
    attention_mask = (torch.arange(input_length)[None, :] < lengths[:, None]).long()
    labels = padded([item["labels"] for item in items], -100, rounded(max(len(item["labels"]) for item in items)))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def greedy_exact_matches(model, batch: dict) -> int:
    """How many rows ``generate`` (greedy) decodes to their labels, token for token up to ``</s>``."""
    labels = batch["labels"]
    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               do_sample=False, num_beams=1, max_new_tokens=labels.shape[1], min_new_tokens=0,
                               decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)[:, 1:]  # drop the start
    matches = 0
    for row, target in zip(generated.tolist(), labels.tolist()):
        target = [token for token in target if token != -100]
        matches += row[: len(target)] == target
    return matches


def run_transformers(options, checkpoint: Path, train_items: list[dict], valid_items: list[dict],
                     tokens: int) -> dict:
    import torch
    import transformers

    load_before = load_average()
    torch.manual_seed(options.seed)  # dropout
    model = transformers.T5ForConditionalGeneration.from_pretrained(checkpoint)
    longest_train = max(len(item["input_ids"]) for item in train_items)
    steps_per_epoch = math.ceil(len(train_items) / options.batch_size)
    steps = steps_per_epoch * options.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, int(options.warmup_ratio * steps), steps)

    model.train()
    loss = torch.tensor(math.nan)
    start = time.perf_counter()
    for epoch in range(options.epochs):
        order = np.random.default_rng([options.seed, epoch]).permutation(len(train_items)).tolist()
        for first in range(0, len(order), options.batch_size):
            batch = torch_batch([train_items[i] for i in order[first : first + options.batch_size]], longest_train)
            loss = torch_training_step(model, batch, optimizer, scheduler)
    seconds = time.perf_counter() - start
    load_after = load_average()

    model.eval()
    longest_valid = max(len(item["input_ids"]) for item in valid_items)
    loss_sum, loss_count, teacher_forced, generated = 0.0, 0, 0, 0
    with torch.no_grad():
        for first in range(0, len(valid_items), options.batch_size):
            batch = torch_batch(valid_items[first : first + options.batch_size], longest_valid)
            logits = model(**batch).logits
            labels = batch["labels"]
            loss_sum += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                                labels.reshape(-1), reduction="sum"))
            loss_count += int((labels != -100).sum())
            teacher_forced += int(((logits.argmax(-1) == labels) | (labels == -100)).all(-1).sum())
            generated += greedy_exact_matches(model, batch)
    return {
        "exact_match": generated / len(valid_items), "teacher_forced_exact_match": teacher_forced / len(valid_items),
        "eval_loss": loss_sum / loss_count, "train_seconds": seconds,
        "tokens_per_second": options.epochs * tokens / seconds,
        "examples_per_second": options.epochs * len(train_items) / seconds, "steps": steps,
        "final_train_loss": loss.item(), "learning_rate": options.lr, "torch_threads": torch.get_num_threads(),
        "load_before": load_before, "load_after": load_after,
    }


# --- the benchmark ----------------------------------------------------------------------------


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"text file (default: {DEFAULT_DATA} from the repository root)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--valid-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("weights/bench"), help="where the checkpoint is written")
    parser.add_argument("--no-torch", action="store_true", help="no transformers run")
    parser.add_argument("--no-mlx", action="store_true", help="no full mlx_llm run")
    parser.add_argument("--no-lora", action="store_true", help="no LoRA run")
    options = parser.parse_args()
    options.data = options.data or (REPO_ROOT / DEFAULT_DATA).resolve()
    for name in ("train_size", "valid_size", "epochs", "batch_size", "max_length"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.no_torch and options.no_mlx and options.no_lora:
        parser.error("--no-torch, --no-mlx and --no-lora leave nothing to run")
    if not options.data.is_file():
        parser.error(f"--data {options.data} is not a file; pass the tinyshakespeare input.txt")
    try:
        options.lines = read_lines(options.data)
        options.pairs = make_pairs(options.lines, options.train_size, options.valid_size, options.seed)
    except ValueError as error:
        parser.error(str(error))
    return options


def report(options, checkpoint: Path, rows: dict[str, dict], tokens: int) -> None:
    """The table, the ratios and the JSON line."""
    train, valid = options.pairs
    torch_threads = rows["transformers"]["torch_threads"] if "transformers" in rows else None
    ratios = {}
    if "mlx_llm" in rows and "transformers" in rows:
        mlx, hf = rows["mlx_llm"], rows["transformers"]
        ratios = {"tokens_per_second_mlx_over_torch": mlx["tokens_per_second"] / hf["tokens_per_second"],
                  "exact_match_difference_points": 100 * (mlx["exact_match"] - hf["exact_match"]),
                  "eval_loss_difference": mlx["eval_loss"] - hf["eval_loss"]}
    if "mlx_llm LoRA" in rows and "transformers" in rows:
        ratios["tokens_per_second_lora_over_torch"] = (rows["mlx_llm LoRA"]["tokens_per_second"]
                                                       / rows["transformers"]["tokens_per_second"])
    print(f"seq2seq (reverse the words of a line): {len(train)} training / {len(valid)} validation pairs from "
          f"{options.data}; {options.epochs} epoch(s), batch {options.batch_size}, lr {options.lr:g} (LoRA "
          f"{options.lora_lr:g}; linear, warmup ratio {options.warmup_ratio:g}), seed {options.seed}; "
          f"{tokens} training tokens per epoch (inputs + targets)")
    print(f"model {checkpoint.name}; BLAS: {blas_in_use()}; torch threads: {torch_threads}")
    print(f"{'implementation':<14} {'exact match':>11} {'eval loss':>9} {'train s':>8} {'tokens/s':>9} "
          f"{'examples/s':>10} {'steps':>6} {'trainable':>10} {'load before/after':>17}")
    for name, row in rows.items():
        trainable = row.get("trainable_parameters")
        print(f"{name:<14} {row['exact_match']:11.4f} {row['eval_loss']:9.4f} {row['train_seconds']:8.1f} "
              f"{row['tokens_per_second']:9.1f} {row['examples_per_second']:10.1f} {row['steps']:6d} "
              f"{trainable if trainable is not None else '':>10} "
              f"{row['load_before']:8.2f}/{row['load_after']:.2f}")
    if "transformers" in rows:
        print(f"transformers' teacher-forced exact match: {rows['transformers']['teacher_forced_exact_match']:.4f} "
              "(generate's above)")
    if "tokens_per_second_mlx_over_torch" in ratios:
        print(f"tokens/s ratio (mlx_llm / transformers): {ratios['tokens_per_second_mlx_over_torch']:.2f}x; "
              f"exact match difference {ratios['exact_match_difference_points']:+.2f} points, "
              f"eval loss difference {ratios['eval_loss_difference']:+.4f}")
    if "tokens_per_second_lora_over_torch" in ratios:
        print(f"tokens/s ratio (mlx_llm LoRA / transformers full): {ratios['tokens_per_second_lora_over_torch']:.2f}x")
    print(json.dumps({
        "benchmark": "finetune_seq2seq", "data": str(options.data), "model": checkpoint.name, "shape": T5_SHAPE,
        "vocab_size": options.vocab_size, "train_size": len(train), "valid_size": len(valid),
        "epochs": options.epochs, "batch_size": options.batch_size, "learning_rate": options.lr,
        "lora_learning_rate": options.lora_lr, "lora_rank": RANK, "lora_alpha": ALPHA,
        "max_length": options.max_length, "warmup_ratio": options.warmup_ratio, "schedule": "linear",
        "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": options.seed, "tokens_per_epoch": tokens,
        "blas": blas_in_use(), "torch_threads": torch_threads, "rows": rows, "ratios": ratios,
    }))


def main() -> None:
    options = parse_options()
    train, valid = options.pairs
    checkpoint = make_checkpoint(options.workdir, options.vocab_size, options.data)
    train_items = encode_pairs(checkpoint, train, options.max_length)
    valid_items = encode_pairs(checkpoint, valid, options.max_length)
    tokens = real_tokens(train_items)

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="finetune_seq2seq_") as folder:
        folder = Path(folder)
        train_file, valid_file = write_jsonl(train, folder / "train.jsonl"), write_jsonl(valid, folder / "valid.jsonl")

        def ours(name: str, lora: bool) -> dict:
            return run_mlx_llm(options, checkpoint, train_file, valid_file, folder / name.replace(" ", "_"), tokens,
                               len(train), lora)

        # The two full runs next to each other (the machine's load changes over minutes), LoRA last.
        if not options.no_mlx:
            rows["mlx_llm"] = ours("mlx_llm", lora=False)
        if not options.no_torch:
            rows["transformers"] = run_transformers(options, checkpoint, train_items, valid_items, tokens)
        if not options.no_lora:
            rows["mlx_llm LoRA"] = ours("mlx_llm LoRA", lora=True)
    report(options, checkpoint, rows, tokens)


if __name__ == "__main__":
    main()
