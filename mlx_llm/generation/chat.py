"""Multi-turn chat that keeps the KV cache between turns."""

from __future__ import annotations

from typing import Iterator

import mlx.nn as nn

from .generate import GenerationResponse, check_can_generate, check_text, is_encoder_decoder, stream_generate
from .sampling import SAMPLING_FIELDS, SamplingConfig, sampling_config


class ChatSession:
    """A conversation with a model, rendered with its chat template.

    Each turn renders the whole conversation, finds how much of it the KV
    cache already holds (the longest common prefix of token ids) and runs
    only the rest through the model, so earlier turns are not processed
    again.

    Args:
        model: A decoder-only model.
        tokenizer: Its tokenizer, with a chat template.
        system: Optional system message.
        max_kv_size: Bound the KV cache (rotating); older turns are then
            re-processed when the cache cannot be reused.
        sampling: How to choose tokens (`SamplingConfig`); or its fields as
            keywords among ``options``.
        **options: Other options for `stream_generate` (``max_tokens``,
            ``stop``, ``on_warning``, ...).

    Raises:
        ValueError: the model cannot generate text, is an encoder-decoder,
            or its tokenizer has no chat template.
    """

    def __init__(self, model: nn.Module, tokenizer, system: str | None = None, max_kv_size: int | None = None,
                 sampling: SamplingConfig | None = None, **options):
        check_can_generate(model)
        if system is not None:
            check_text(system, "the system message")
        if is_encoder_decoder(model):
            raise ValueError("chat needs a decoder-only model; encoder-decoders have no conversation cache")
        if tokenizer.chat_template is None:
            raise ValueError("this model's tokenizer has no chat template, so it cannot chat; use generate instead")
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.max_kv_size = max_kv_size
        self.sampling = sampling_config(sampling, **{name: options.pop(name) for name in SAMPLING_FIELDS
                                                     if name in options})
        self.options = options
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and empty the cache."""
        self.messages: list[dict[str, str]] = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.cache = self.model.make_cache(max_kv_size=self.max_kv_size)
        self._cached_ids: list[int] = []  # the token ids whose keys/values the cache holds

    def _reuse_cache(self, prompt_ids: list[int]) -> list[int]:
        """Trim the cache to its common prefix with ``prompt_ids``; return the ids still to run."""
        common = 0
        for cached, new in zip(self._cached_ids, prompt_ids):
            if cached != new:
                break
            common += 1
        common = min(common, len(prompt_ids) - 1)  # at least one token must run to get logits
        excess = self.cache[0].offset - common
        if excess > 0 and any(layer.trim(excess) != excess for layer in self.cache):
            self.cache = self.model.make_cache(max_kv_size=self.max_kv_size)  # could not trim: start over
            common = 0
        self._cached_ids = self._cached_ids[:common]
        return prompt_ids[common:]

    def send(self, message: str) -> Iterator[GenerationResponse]:
        """Add a user message and stream the assistant's answer.

        Stopping early (closing the iterator, e.g. on Ctrl-C) keeps what was
        generated so far as the answer.

        Raises:
            ValueError: an empty or undecodable message, or a chat template
                that refuses the conversation (`ChatTemplateError`); the
                conversation is then left as it was, so the session goes on.
        """
        if not message.strip():
            raise ValueError("the message is empty")
        check_text(message, "the message")
        # Rendered before the message joins the conversation: a template that refuses it
        # must not leave it behind for the next turn.
        conversation = [*self.messages, {"role": "user", "content": message}]
        prompt_ids = self.tokenizer.chat_prompt(conversation)
        self.messages = conversation
        new_ids = self._reuse_cache(prompt_ids)
        answer: list[str] = []
        generated: list[int] = []
        refused = False
        try:
            for response in stream_generate(self.model, self.tokenizer, new_ids, cache=self.cache,
                                            sampling=self.sampling, **self.options):
                answer.append(response.text)
                generated.append(response.token)
                yield response
        except ValueError:  # refused before any token (the context cannot hold the conversation)
            refused = True
            raise
        finally:
            # The cache holds the prompt and the generated tokens that were fed back in.
            self._cached_ids = (self._cached_ids + new_ids + generated)[: self.cache[0].offset]
            if refused:
                self.messages.pop()  # the turn did not happen
            else:
                self.messages.append({"role": "assistant", "content": "".join(answer)})
