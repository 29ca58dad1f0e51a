"""Pretraining from scratch: a GPT (causal LM) or a BERT (masked LM + next
sentence prediction) on local text, into a run folder that `load` reads like
any converted checkpoint."""

from __future__ import annotations

import inspect
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map_with_path

from .cpu.tuning import warn_if_reference_blas
from .data import (
    BertPretrainingBatches,
    CausalLMBatches,
    CausalLMDictBatches,
    read_documents,
    split_documents,
    split_tokens,
    tokenize_corpus,
    tokenize_documents_for_bert,
)
from .model_files.hub import copy_tokenizer_files, read_json, write_json
from .model_files.loading import DTYPES, FORMAT_VERSION, OWN_NAMES_VERSION
from .model_files.mlx_lm_layout import mlx_lm_folder
from .model_files.run_folders import RunFolder
from .model_files.weight_files import save_safetensors
from .models import get_family
from .tokenization import Tokenizer
from .tokenizer_training import train_tokenizer
from .training.objectives import BertPretrainingObjective, CausalLMObjective
from .training.trainer import OptimizationConfig, Trainer, TrainResult
from .utils import num_parameters

ARCHITECTURES = ("gpt", "bert")

# Size presets: Hugging Face config fields (GPT-2 and BERT layouts).
GPT_PRESETS: dict[str, dict] = {
    "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2},
    # The built-in demo model: ReLU (cheap on CPUs), as in the original Transformer.
    # Four heads: on CPUs the attention softmax (exp) costs more per head than the matmuls.
    "demo": {"n_embd": 256, "n_layer": 6, "n_head": 4, "activation_function": "relu"},
    "small": {"n_embd": 384, "n_layer": 6, "n_head": 6},
    "gpt2": {"n_embd": 768, "n_layer": 12, "n_head": 12},
}
BERT_PRESETS: dict[str, dict] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256},
    "mini": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 2048},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
# Config-file fields: the ones every preset sets are required; the others may be given.
# vocab_size and the context length are not among them: the tokenizer and --seq-len set those.
SIZE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gpt": (("n_embd", "n_layer", "n_head"),
            ("n_inner", "activation_function", "layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop",
             "tie_word_embeddings", "scale_attn_weights")),
    "bert": (("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
             ("hidden_act", "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
              "tie_word_embeddings")),
}


# Defaults of pretrain's document options (recorded in run.json only when they differ).
_TEXT_DEFAULTS = {"split_on_blank_lines": False, "next_sentence_probability": 0.5}


def check_size_fields(arch: str, fields: dict) -> None:
    """Check the config fields of a size given as a dict (a ``--config`` JSON file).

    Args:
        arch: ``"gpt"`` or ``"bert"``.
        fields: Hugging Face config fields, as in `GPT_PRESETS` / `BERT_PRESETS`.

    Raises:
        ValueError: naming the missing required fields and the unknown ones.
    """
    if not isinstance(fields, dict):
        raise ValueError(f"a {arch} config must be a JSON object of config fields, got {type(fields).__name__}")
    required, optional = SIZE_FIELDS[arch]
    missing = [name for name in required if name not in fields]
    unknown = sorted(name for name in fields if name not in required + optional)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown {', '.join(unknown)}")
    if problems:
        raise ValueError(
            f"{arch} config fields: {'; '.join(problems)} (required: {', '.join(required)}; "
            f"optional: {', '.join(optional)})"
        )


def model_config(arch: str, preset: str | dict, vocab_size: int, seq_len: int, tokenizer: Tokenizer,
                 dropout: float) -> dict:
    """A Hugging Face style ``config.json`` for a new model.

    Raises:
        ValueError: An unknown architecture or size name, config fields that
            are missing or unknown (`check_size_fields`), or a BERT without
            its special tokens.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    presets = GPT_PRESETS if arch == "gpt" else BERT_PRESETS
    if isinstance(preset, str):
        if preset not in presets:
            raise ValueError(f"unknown {arch} size {preset!r}; choose one of {sorted(presets)} or pass a config file")
        sizes = dict(presets[preset])
    else:
        check_size_fields(arch, preset)
        sizes = dict(preset)
    if arch == "gpt":
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size,
            "n_positions": seq_len, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": 0.0, "tie_word_embeddings": True,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, **sizes,
        }
    for name in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(
                f"a BERT needs [CLS], [SEP], [MASK] and [PAD] tokens and this tokenizer has no {name[:-3]}; "
                "train one with bert special tokens (mlx-llm tokenizer train --bert) or pass --vocab-size"
            )
    return {
        "model_type": "bert", "architectures": ["BertForPreTraining"], "vocab_size": vocab_size,
        "max_position_embeddings": seq_len, "type_vocab_size": 2, "hidden_act": "gelu",
        "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-12,
        "pad_token_id": tokenizer.pad_token_id, **sizes,
    }


def build_model(config: dict) -> nn.Module:
    """A freshly initialized model for ``config`` (GPT-2 / BERT initialization:
    normal(0, 0.02) weights, zero biases, unit norms; GPT-2 scales the residual
    output projections by 1/sqrt(2 * layers))."""
    family = get_family(config["model_type"])
    args = family.ModelArgs.from_config(config)
    model = family.Model(args)

    def initialize(path: str, parameter: mx.array) -> mx.array:
        if "norm" in path or "ln_" in path or "LayerNorm" in path:
            return mx.ones_like(parameter) if path.endswith("weight") else mx.zeros_like(parameter)
        if path.endswith("bias"):
            return mx.zeros_like(parameter)
        std = family.init_std(path, args) if hasattr(family, "init_std") else 0.02  # optional: GPT-2's
        return mx.random.normal(parameter.shape) * std

    model.update(tree_map_with_path(initialize, model.parameters()))
    mx.eval(model.parameters())
    return model


def save_model(model: nn.Module, config: dict, folder: Path, tokenizer_dir: Path | None, dtype: str | None = None) -> None:
    """Write ``model.safetensors``, ``config.json`` and the tokenizer files into
    ``folder`` (each file atomically), so that `load` reads the folder, in
    mlx-lm's layout (`mlx_llm.model_files.mlx_lm_layout`) so that mlx-lm does too."""
    family = get_family(config.get("model_type"))
    weights, config = mlx_lm_folder(model, config, family, {"trained_by": "mlx_llm"},
                                    FORMAT_VERSION, OWN_NAMES_VERSION)
    if dtype is not None:  # floating tensors only: packed quantized weights stay as they are
        weights = {name: value.astype(DTYPES[dtype]) if mx.issubdtype(value.dtype, mx.floating) else value
                   for name, value in weights.items()}
    save_safetensors(weights, folder)
    stored = next(value.dtype for value in weights.values() if mx.issubdtype(value.dtype, mx.floating))
    config["torch_dtype"] = config["dtype"] = next(k for k, v in DTYPES.items() if v == stored)
    write_json(config, folder / "config.json")
    if tokenizer_dir is not None and tokenizer_dir.resolve() != folder.resolve():
        copy_tokenizer_files(tokenizer_dir, folder)


def _barrier(world) -> None:
    """Wait for every process (no-op in a single process)."""
    if world.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world))


@dataclass
class PretrainResult:
    out: Path
    num_parameters: int
    train: TrainResult
    validation: dict


def pretrain(
    arch: str,
    data: list[str | Path],
    out: str | Path,
    preset: str | dict = "tiny",
    valid_data: list[str | Path] | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int | None = None,
    seq_len: int = 256,
    batch_size: int = 16,
    dropout: float = 0.1,
    eval_every: int = 200,
    eval_batches: int = 0,
    save_every: int = 200,
    validation_fraction: float = 0.1,
    split_on_blank_lines: bool = False,
    next_sentence_probability: float = 0.5,
    dtype: str = "float32",
    save_dtype: str | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_start: Callable[[], None] | None = None,
    optimization: OptimizationConfig | None = None,
    **optimizer_keywords,
) -> PretrainResult:
    """Pretrain a model on local text and save it to ``out``.

    Args:
        arch: ``"gpt"`` (causal LM) or ``"bert"`` (masked LM + next sentence).
        data: Text files, folders or JSONL files.
        out: Run folder (model, tokenizer, checkpoints, metrics, loss curve).
        valid_data: Validation text; without it the last ``validation_fraction``
            of ``data`` is held out.
        preset: A size name (`GPT_PRESETS` / `BERT_PRESETS`) or config fields.
        tokenizer: A tokenizer folder; otherwise one is trained on ``data``
            with ``vocab_size`` tokens into ``out``.
        seq_len: Tokens per training sequence (the context length).
        batch_size: Sequences per micro-batch.
        optimization: Learning rate, schedule, warmup, weight decay, clipping,
            accumulation and length (`OptimizationConfig`).
        **optimizer_keywords: Instead of ``optimization``, the keywords of
            `pretrain_optimization` (grad_accum, learning_rate, min_learning_rate,
            warmup_steps, steps, epochs, weight_decay), with its defaults.
        validation_fraction: The last part of the token stream held out.
        split_on_blank_lines: Text files hold one document per blank-line
            separated block (BERT's input format) instead of one per file.
        next_sentence_probability: BERT: the chance that sentence B is the
            actual continuation (1.0 lets a single document train).
        dtype: ``"float32"`` or ``"bfloat16"`` (float16 would need loss scaling).
        save_dtype: Store the final weights in this type (default: ``dtype``).
        resume: Continue from the latest checkpoint in ``out``.
        overwrite: Start afresh in an ``out`` that holds files (an earlier
            run): they are deleted first.
        on_start: Called once the settings and ``out`` are accepted, before
            any data is read (the command line lists the files it will read
            there, so that a refused run prints only its error).

    Raises:
        FileExistsError, FileNotFoundError, ValueError: ``out`` is not a folder
            this run may write into (see `mlx_llm.model_files.run_folders`), or bad input.
            A fresh run that fails before its first checkpoint leaves no files.
    """
    optimization = _optimization(optimization, **optimizer_keywords)
    _check_settings(arch, dtype, tokenizer, vocab_size, resume, next_sentence_probability)
    world = mx.distributed.init()
    leader = world.rank() == 0
    run_folder = _open_run_folder(out, resume, overwrite, leader,
                                  {"--data": data, "--valid": valid_data, "--tokenizer": tokenizer})
    out = run_folder.path
    with run_folder:  # a fresh run that fails before its first checkpoint leaves no files
        run_folder.prepare()
        if on_start is not None:
            on_start()
        tokenizer_dir, loaded_tokenizer = _run_tokenizer(arch, data, out, tokenizer, vocab_size, resume, world)
        config, model = _new_model(arch, preset, loaded_tokenizer, seq_len, dropout, dtype, seed)
        text_options = {"split_on_blank_lines": split_on_blank_lines,
                        "next_sentence_probability": next_sentence_probability}
        run = {"arch": arch, "config": config, "data": [str(Path(p)) for p in data],
               "valid_data": [str(Path(p)) for p in valid_data or []], "seq_len": seq_len,
               "batch_size": batch_size, "validation_fraction": validation_fraction, "dtype": dtype}
        _record_run(run, text_options, out, resume, leader)
        source, objective, evaluation, batches_per_epoch = _training_data(
            arch, data, valid_data, loaded_tokenizer, out, seq_len, batch_size, validation_fraction, seed, world,
            progress, **text_options)
        training = optimization.training_config(optimization.total_steps(batches_per_epoch), eval_every=eval_every,
                                                eval_batches=eval_batches, save_every=save_every, seed=seed)
        trainer = Trainer(model, objective, source, training, out, eval_data=evaluation, run_config=run,
                          progress=progress)
        return _fit_and_save(trainer, config, tokenizer_dir, save_dtype, resume)


def pretrain_optimization(
    grad_accum: int | None = None,
    learning_rate: float | None = None,
    min_learning_rate: float | None = None,
    warmup_steps: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    weight_decay: float | None = None,
) -> OptimizationConfig:
    """The `OptimizationConfig` of `pretrain`'s keywords, with pretraining's defaults for those left out.

    Defaults: ``grad_accum`` 1, ``learning_rate`` 1e-3, ``min_learning_rate``
    a tenth of the learning rate, ``warmup_steps`` 100 (cut to the run),
    ``weight_decay`` 0.1; cosine decay, AdamW betas (0.9, 0.95), clipping at 1.

    Raises:
        ValueError: not exactly one of ``steps`` and ``epochs``, or a setting
            `OptimizationConfig` refuses.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    learning_rate = 1e-3 if learning_rate is None else learning_rate
    return OptimizationConfig(
        learning_rate=learning_rate,
        min_learning_rate=learning_rate / 10 if min_learning_rate is None else min_learning_rate,
        warmup_steps=100 if warmup_steps is None else warmup_steps,
        weight_decay=0.1 if weight_decay is None else weight_decay,
        grad_accum=1 if grad_accum is None else grad_accum,
        steps=steps, epochs=epochs,
    )


def _optimization(optimization: OptimizationConfig | None, **keywords) -> OptimizationConfig:
    """``optimization``, or the one the keywords describe (`pretrain_optimization`); not both."""
    unknown = set(keywords) - set(inspect.signature(pretrain_optimization).parameters)
    if unknown:
        raise TypeError(f"pretrain() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if optimization is None:
        return pretrain_optimization(**keywords)
    given = [name for name, value in keywords.items() if value is not None]
    if given:
        raise ValueError(f"give the optimizer settings either as optimization=OptimizationConfig(...) or as "
                         f"keywords, not both ({', '.join(given)} given as keywords)")
    return optimization


def _check_settings(arch: str, dtype: str, tokenizer, vocab_size: int | None, resume: bool,
                    next_sentence_probability: float) -> None:
    """Refuse settings that cannot start a run, before anything is written."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"training dtype must be float32 or bfloat16 (float16 needs loss scaling), got {dtype!r}")
    if arch != "bert" and next_sentence_probability != 0.5:
        raise ValueError("next_sentence_probability (--nsp-probability) applies to BERT pretraining only")
    if tokenizer is None and vocab_size is None and not resume:
        raise ValueError("pass a tokenizer folder or a vocabulary size to train one")


def _fit_and_save(trainer: Trainer, config: dict, tokenizer_dir: Path, save_dtype: str | None,
                  resume: bool) -> PretrainResult:
    """Train, then save the model into the run folder (the first process); the result
    holds the last validation metrics."""
    result = trainer.fit(resume=resume)
    trainer.model.eval()
    if trainer.world.rank() == 0:
        save_model(trainer.model, config, trainer.out_dir, tokenizer_dir, dtype=save_dtype)
    evaluations = [record for record in trainer.history if any(key.startswith("eval_") for key in record)]
    return PretrainResult(trainer.out_dir, num_parameters(trainer.model), result,
                          evaluations[-1] if evaluations else {})


def _open_run_folder(out, resume: bool, overwrite: bool, leader: bool, inputs: dict) -> RunFolder:
    """The run folder `RunFolder` accepts for ``out``; resuming needs the ``run.json`` of a run there."""
    run_folder = RunFolder(out, resume=resume, overwrite=overwrite, writer=leader, inputs=inputs)
    if resume and not (run_folder.path / "run.json").is_file():
        raise FileNotFoundError(f"--resume: {run_folder.path} holds no run (run.json is missing)")
    return run_folder


def _new_model(arch: str, preset: str | dict, tokenizer: Tokenizer, seq_len: int, dropout: float, dtype: str,
               seed: int) -> tuple[dict, nn.Module]:
    """The ``config.json`` fields and the freshly initialized model (from ``seed``) of a run, in ``dtype``."""
    mx.random.seed(seed)
    config = model_config(arch, preset, tokenizer.vocab_size, seq_len, tokenizer, dropout)
    model = build_model(config)
    if dtype == "bfloat16":
        model.set_dtype(mx.bfloat16)
    return config, model


def _run_tokenizer(arch: str, data, out: Path, tokenizer, vocab_size: int | None, resume: bool,
                   world) -> tuple[Path, Tokenizer]:
    """The run's tokenizer folder and tokenizer: the one given, the resumed run's, or one trained
    on the data into the run folder (by the first process, which the others wait for)."""
    if tokenizer is not None:
        folder = Path(tokenizer)
    elif resume:
        folder = out / "tokenizer" if (out / "tokenizer").is_dir() else out
    else:
        folder = out / "tokenizer"
        if world.rank() == 0:
            train_tokenizer(data, vocab_size, folder, bert_special_tokens=arch == "bert", overwrite=True)
    _barrier(world)
    return folder, Tokenizer.from_pretrained(folder)


def _record_run(run: dict, text_options: dict, out: Path, resume: bool, leader: bool) -> None:
    """Write the run's settings to ``run.json``, or, when resuming, check that they are the saved ones.

    The document options (``text_options``) are recorded only where they are
    not the default, so that runs started before those options existed still resume.
    """
    run = {**run, **{key: value for key, value in text_options.items() if value != _TEXT_DEFAULTS[key]}}
    if not resume:
        if leader:
            write_json(run, out / "run.json")
        return
    saved = read_json(out / "run.json")
    if saved != json.loads(json.dumps(run)):
        differing = sorted(key for key in run if saved.get(key) != json.loads(json.dumps(run[key])))
        raise ValueError(f"cannot resume {out}: the run was started with other settings ({', '.join(differing)})")


def _training_data(arch: str, data, valid_data, tokenizer: Tokenizer, out: Path, seq_len: int, batch_size: int,
                   validation_fraction: float, seed: int, world, progress: bool, split_on_blank_lines: bool = False,
                   next_sentence_probability: float = 0.5):
    """Training batches, objective, validation batches and batches per epoch of a pretraining run
    (GPT: the token cache in ``out/data``, written by the first process)."""
    split = {"split_on_blank_lines": split_on_blank_lines}
    leader = world.rank() == 0
    if arch == "gpt":
        if not leader:
            _barrier(world)  # the first process writes the token cache; the others then read it
        token_file = tokenize_corpus(data, tokenizer, out / "data", show_progress=progress, **split)
        if valid_data:
            train_tokens = token_file.tokens
            valid_tokens = tokenize_corpus(valid_data, tokenizer, out / "data", show_progress=progress, **split).tokens
        else:
            train_tokens, valid_tokens = split_tokens(token_file, validation_fraction)
        if leader:
            _barrier(world)
        train_batches = CausalLMBatches(train_tokens, seq_len, batch_size, seed=seed)
        try:
            valid_batches = CausalLMBatches(valid_tokens, seq_len, batch_size, seed=seed)
        except ValueError as error:  # say which stream is short: the held-out one is the usual culprit
            held_out = "--valid" if valid_data else f"the last {validation_fraction:.0%} of --data, held out"
            raise ValueError(f"validation text ({held_out}): {error}") from None
        source = CausalLMDictBatches(train_batches)
        objective = CausalLMObjective()

        def evaluation() -> Iterator[dict]:
            for inputs, targets in valid_batches.evaluation_batches():
                yield {"input_ids": inputs, "targets": targets}

        batches_per_epoch = train_batches.batches_per_epoch
    else:
        documents = tokenize_documents_for_bert(data, tokenizer, show_progress=progress, **split)
        if valid_data:
            train_documents = documents
            valid_documents = tokenize_documents_for_bert(valid_data, tokenizer, show_progress=progress, **split)
        else:
            train_documents, valid_documents = split_documents(documents, validation_fraction)
        if not valid_documents:
            raise ValueError(
                f"the corpus has {len(documents)} document(s), too few to hold out a validation set; split text "
                "files into documents at blank lines (split_on_blank_lines=True, --split-on-blank-lines), add "
                "documents, or give validation text (valid_data, --valid)"
            )
        nsp = {"next_sentence_probability": next_sentence_probability}
        source = BertPretrainingBatches(train_documents, tokenizer, seq_len, batch_size, seed=seed, **nsp)
        # Validation pairs are built from documents of their own, masked the same way at every evaluation.
        validation_batches = BertPretrainingBatches(valid_documents, tokenizer, seq_len, batch_size,
                                                    seed=seed + 1, **nsp)
        objective = BertPretrainingObjective()

        def evaluation() -> Iterator[dict]:
            return validation_batches.evaluation_batches()

        batches_per_epoch = source.batches_per_epoch
    return source, objective, evaluation, batches_per_epoch


def evaluate_text(
    model: nn.Module, tokenizer: Tokenizer, data: list[str | Path], seq_len: int | None = None, batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float]:
    """Causal-LM loss of ``model`` on text: mean nats per token, perplexity,
    nats per character (total nats / characters, comparable with
    character-level models) and bits per UTF-8 byte.

    The text is tokenized as one stream (documents joined with the end token)
    and cut into consecutive windows of ``seq_len`` tokens; every token but
    the first is predicted once.

    Args:
        model: A causal language model.
        tokenizer: Its tokenizer.
        data: Text files, folders or JSONL files.
        seq_len: Window length (default: the model's context, else 512).
        batch_size: Windows per forward pass.
        progress: A progress bar over the windows on stderr.

    Returns:
        ``loss``, ``perplexity``, ``nats_per_character``, ``bits_per_byte``,
        ``tokens`` and ``characters``.
    """
    documents = list(read_documents(data))
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for document in documents:
        ids += tokenizer.encode(document, add_special_tokens=False)
        if eos is not None:
            ids.append(eos)
    if len(ids) < 2:
        raise ValueError("the evaluation text has fewer than 2 tokens")
    characters = sum(len(document) for document in documents)
    num_bytes = sum(len(document.encode("utf-8")) for document in documents)
    limit = model.args.context_length
    seq_len = seq_len or limit or 512
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} (--seq-len) is longer than the model's context ({limit})")
    warn_if_reference_blas()  # Linux: the products would run many times faster on MKL
    tokens = np.array(ids)
    total, count = 0.0, 0
    windows = [tokens[start : start + seq_len + 1] for start in range(0, len(tokens) - 1, seq_len)]
    from tqdm import tqdm

    from .training.losses import IGNORE_INDEX, cross_entropy

    bar = tqdm(total=len(windows), unit="window", file=sys.stderr, dynamic_ncols=True, disable=not progress)
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        width = max(len(window) for window in group)
        inputs = np.zeros((len(group), width - 1), dtype=np.int32)
        targets = np.full((len(group), width - 1), IGNORE_INDEX, dtype=np.int32)
        for row, window in enumerate(group):
            inputs[row, : len(window) - 1] = window[:-1]
            targets[row, : len(window) - 1] = window[1:]
        logits = model(mx.array(inputs))
        loss = cross_entropy(logits, mx.array(targets), reduction="sum")
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
        bar.update(len(group))
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    nats = total / count
    return {
        "loss": nats,
        "perplexity": math.exp(min(nats, 700.0)),
        "nats_per_character": total / characters,
        "bits_per_byte": total / math.log(2) / num_bytes,
        "tokens": count,
        "characters": characters,
    }
