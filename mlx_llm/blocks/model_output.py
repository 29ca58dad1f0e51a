"""The model contract's two small pieces: what a forward pass returns, and what kind of model ran it.

Every family's ``Model`` (see `mlx_llm.models`) has ``forward(...)``, which
returns a `ModelOutput`, and ``__call__(...)``, which returns
``forward(...).logits``, an ``mx.array``. `ModelOutput` is a ``dict``, so
MLX's tree utilities (``mx.eval``, ``mx.async_eval``, ``tree_flatten``,
``tree_map``) see every array inside it: ``mx.eval(model.forward(ids))``
computes them all.

``Model.kind`` says which of `KINDS` a model is, so callers ask it instead of
guessing from the methods a model happens to have.
"""

from __future__ import annotations

# What a model is (``Model.kind``).
DECODER = "decoder"  # causal self-attention, KV cache, next-token (or task) logits
ENCODER = "encoder"  # bidirectional, no cache (BERT family)
ENCODER_DECODER = "encoder-decoder"  # encoder + decoder with cross-attention (T5)
KINDS = (DECODER, ENCODER, ENCODER_DECODER)

# Keys a family may leave out of its output; reading one that is absent gives ``None``.
OPTIONAL_KEYS = frozenset({
    "hidden_states",  # with output_hidden_states=True: num_layers + 1 arrays (B, L, H)
    "last_hidden_state",  # (B, L, H), after the final norm
    "pooler_output",  # BERT: (B, H), tanh(dense(h_0))
    "mlm_logits",  # BERT: (B, L, vocab_size)
    "nsp_logits",  # BERT: (B, 2)
    "encoder_last_hidden_state",  # T5: (B, S, H)
    "encoder_hidden_states",  # T5, with output_hidden_states=True: num_encoder_layers + 1 arrays (B, S, H)
})


class ModelOutput(dict):
    """A forward pass's arrays, by name, readable as keys or attributes.

    ``output["logits"]`` and ``output.logits`` are the same array. Keys:

    - ``logits`` (always): what ``Model.__call__`` returns: next-token
      logits ``(B, L, vocab_size)`` for language models, ``(B, num_labels)``
      or ``(B, L, num_labels)`` for classifiers; a BERT-family model gives its
      head's logits (masked-LM logits for MLM and pretraining models), and a
      bare encoder without a head its last hidden states ``(B, L, H)``.
    - ``last_hidden_state``: ``(B, L, H)``, the backbone's output after its
      final norm (T5: the decoder's, before the output scaling).
    - ``hidden_states`` (only with ``output_hidden_states=True``): as
      transformers returns them, ``num_layers + 1`` arrays ``(B, L, H)``:
      entry ``i < num_layers`` is the input of layer ``i``, the last one is
      ``last_hidden_state``.
    - family extras (see `OPTIONAL_KEYS`).

    An optional key the model did not produce reads as ``None`` (so code
    written for the former ``BertOutput`` dataclass keeps working); any other
    unknown attribute raises ``AttributeError``. Being a ``dict``, the output
    is a tree MLX enters: ``mx.eval(output)`` evaluates every array in it.
    """

    @classmethod
    def of(cls, **arrays) -> ModelOutput:
        """The output holding ``arrays`` less those that are ``None`` (optional keys a pass did not
        produce, e.g. ``hidden_states`` without ``output_hidden_states``)."""
        return cls({name: value for name, value in arrays.items() if value is not None})

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name in OPTIONAL_KEYS:
            return None
        raise AttributeError(f"this ModelOutput has no {name!r}; it holds {', '.join(self)}")

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


# The former name of BERT's output (a dataclass then); the same attributes still read.
BertOutput = ModelOutput
