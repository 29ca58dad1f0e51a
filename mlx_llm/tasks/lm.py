"""``lm``: instruction tuning of a decoder.

Data: JSONL in ``text``, ``prompt``/``completion`` or chat ``messages`` form
(`mlx_llm.data.read_instructions`); the loss is on the completion / the
assistant turns only unless ``mask_prompt`` is off. Predictions are
completions of the prompt (or of the conversation up to its last assistant turn).
"""

from __future__ import annotations

from typing import Any, Iterator

import mlx.nn as nn

from .. import data
from ..blocks.model_output import DECODER
from ..tokenization import Tokenizer
from ..training.objectives import CausalLMObjective
from .base import TextTask
from .settings import RunSettings


class LanguageModelTask(TextTask):
    name = "lm"
    help = "Instruction tuning (JSONL text, prompt/completion or chat messages)."
    model_kinds = (DECODER,)
    models_help = "a decoder (GPT-2 or the Llama family)"
    model_task = "causal_lm"

    def read(self, path: str, settings: RunSettings, labelled: bool = True) -> list:
        return data.read_instructions(path)

    def encode(self, examples: list, tokenizer: Tokenizer, settings: RunSettings) -> list[dict]:
        return data.encode_instructions(examples, tokenizer, settings.max_length, mask_prompt=settings.mask_prompt)

    def batches(self, encoded: list[dict], batch_size: int, pad_id: int, settings: RunSettings,
                shuffle: bool, seed: int = 0):
        return data.InstructionBatches(encoded, batch_size, pad_id, shuffle=shuffle, seed=seed)

    def objective(self, settings: RunSettings):
        return CausalLMObjective()

    def predict(self, model: nn.Module, tokenizer: Tokenizer, examples: list, settings: RunSettings,
                batch_size: int, max_tokens: int, temperature: float) -> Iterator[dict[str, Any]]:
        """``{"completion"}`` for each prompt, one at a time."""
        from ..generation.generate import generate

        for example in examples:
            if example.messages is not None:
                messages = list(example.messages)
                while messages and messages[-1]["role"] == "assistant":
                    messages.pop()
                prompt = tokenizer.chat_prompt(messages)
            else:
                prompt = example.prompt if example.prompt is not None else example.text
            yield {"completion": generate(model, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature)}
