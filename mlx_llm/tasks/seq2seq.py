"""``seq2seq``: sequence-to-sequence fine-tuning of an encoder-decoder (T5).

Data: input/target text pairs in JSONL (``{"input": ..., "target": ...}``),
CSV or TSV (`mlx_llm.data.read_seq2seq`; other field names with
``text_column`` / ``label_column``). The loss is the decoder's cross-entropy
on the target tokens (`mlx_llm.training.objectives.Seq2SeqObjective`, as
``T5ForConditionalGeneration(labels=...)``); validation reports it with the
exact match of greedy decoding. Predictions are generated targets: greedy (or
sampled) decoding with the decoder's KV cache, a batch at a time.
"""

from __future__ import annotations

from typing import Any, Iterator

import mlx.nn as nn

from .. import data
from ..blocks.model_output import ENCODER_DECODER
from ..tokenization import Tokenizer
from ..training.objectives import Seq2SeqObjective
from .base import TextTask
from .settings import RunSettings

INPUT_COLUMN, TARGET_COLUMN = "input", "target"


class Seq2SeqTask(TextTask):
    name = "seq2seq"
    help = "Sequence to sequence, T5 (JSONL/CSV/TSV input and target texts)."
    model_kinds = (ENCODER_DECODER,)
    models_help = "an encoder-decoder (T5)"
    model_task = "seq2seq_lm"
    columns = ("text_column", "label_column")

    def read(self, path: str, settings: RunSettings, labelled: bool = True) -> list:
        return data.read_seq2seq(path, settings.text_column or INPUT_COLUMN, settings.label_column or TARGET_COLUMN,
                                 require_targets=labelled)

    def encode(self, examples: list, tokenizer: Tokenizer, settings: RunSettings) -> list[dict]:
        return data.encode_seq2seq(examples, tokenizer, settings.max_length)

    def batches(self, encoded: list[dict], batch_size: int, pad_id: int, settings: RunSettings,
                shuffle: bool, seed: int = 0):
        return data.Seq2SeqBatches(encoded, batch_size, pad_id, shuffle=shuffle, seed=seed)

    def unlabelled(self, examples: list) -> list:
        return [data.Seq2SeqExample(example.input, None, example.line, example.path) for example in examples]

    def objective(self, settings: RunSettings):
        return Seq2SeqObjective()

    def predict(self, model: nn.Module, tokenizer: Tokenizer, examples: list, settings: RunSettings,
                batch_size: int, max_tokens: int, temperature: float) -> Iterator[dict[str, Any]]:
        """``{"target"}``: the generated target of each input (cut to ``max_length`` tokens),
        decoded a batch at a time with the decoder's cache."""
        from ..generation.generate import batch_generate

        encoded = self.encode(self.unlabelled(examples), tokenizer, settings)
        for start in range(0, len(encoded), batch_size):
            prompts = [item["input_ids"].tolist() for item in encoded[start : start + batch_size]]
            targets = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens, temperature=temperature,
                                     add_special_tokens=False)
            for target in targets:
                yield {"target": target}
