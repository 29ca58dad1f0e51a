"""Decoder parity checks against `transformers`' PyTorch models, shared by the family tests.

Every check compares our MLX model with the torch ``reference`` built from the same tiny
random checkpoint:

- ``assert_padded_batch_matches``: a right-padded batch gives every hidden state and the
  logits within ``atol`` (max |ours - theirs| over real positions only), and each padded
  row equals that row run alone (``assert_allclose``, ``atol``);
- ``assert_left_padded_batch_matches``: ``[prompt, pad zeros + prompt[:-pad]]`` through a
  left-padded cache, positions counted from each row's first token, logits within ``atol``;
- ``assert_greedy_matches``: 20 greedy tokens equal ``transformers``' ``generate``;
- ``assert_chunked_cache_matches``: feeding ``tokens`` in chunks through the cache gives
  the logits of one full pass (``atol``).

The ``tokenizer`` fixture these tests copy in with ``with_tokenizer`` is in ``conftest.py``.
"""

import shutil

import mlx.core as mx
import numpy as np
import torch

from mlx_llm.generation.generate import generate_step
from mlx_llm.generation.sampling import SamplingConfig


def torch_forward(reference, input_ids, attention_mask, **options):
    """``reference`` on ``input_ids`` / ``attention_mask`` (lists, [batch, length]):
    (hidden states, each [batch, length, hidden], logits [batch, length, vocab]) as NumPy."""
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                        output_hidden_states=True, **options)
    return [state.numpy() for state in out.hidden_states], out.logits.numpy()


def assert_padded_batch_matches(model, reference, input_ids, attention_mask, atol=1e-4):
    """Right-padded batch: hidden states and logits within ``atol`` on real positions; each
    padded row's logits equal those of its real tokens run alone."""
    hidden_ref, logits_ref = torch_forward(reference, input_ids, attention_mask)
    output = model.forward(mx.array(input_ids), mx.array(attention_mask), output_hidden_states=True)
    real = np.array(attention_mask, dtype=bool)  # padded positions are not compared
    assert len(output.hidden_states) == len(hidden_ref)
    for ours, theirs in zip(output.hidden_states, hidden_ref):
        assert np.abs(np.array(ours)[real] - theirs[real]).max() <= atol
    logits = np.array(output.logits)
    assert np.abs(logits[real] - logits_ref[real]).max() <= atol
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
        length = sum(mask)
        if length < len(mask):
            alone = np.array(model(mx.array([ids[:length]])))
            np.testing.assert_allclose(logits[row, :length], alone[0], atol=atol)


def assert_left_padded_batch_matches(model, reference, prompt, pad=4, atol=1e-4):
    """Left padding (as `batch_generate` pads) through the per-layer caches: rows ``prompt``
    and ``[0] * pad + prompt[:-pad]``, positions from each row's first token; logits within
    ``atol`` on real positions."""
    length = len(prompt)
    ids = [prompt, [0] * pad + prompt[:length - pad]]
    mask = [[1] * length, [0] * pad + [1] * (length - pad)]
    positions = torch.tensor([list(range(length)), [0] * pad + list(range(length - pad))])
    _, logits_ref = torch_forward(reference, ids, mask, position_ids=positions)
    cache = model.make_cache(left_padding=mx.array([0, pad]))
    logits = np.array(model(mx.array(ids), mx.array(mask), cache=cache))
    real = np.array(mask, dtype=bool)
    assert np.abs(logits[real] - logits_ref[real]).max() <= atol


def transformers_greedy(reference, prompt, n=20):
    """Exactly ``n`` greedy tokens after ``prompt`` from ``reference.generate`` (no EOS stop)."""
    prompt_ids = torch.tensor([prompt])
    with torch.no_grad():
        expected = reference.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return expected[0, len(prompt):].tolist()


def our_greedy(model, prompt, n=20):
    """Up to ``n`` greedy tokens after ``prompt`` from `generate_step` (temperature 0)."""
    return [int(token) for token, _ in generate_step(model, mx.array(prompt), SamplingConfig(temperature=0.0),
                                                      max_tokens=n)]


def assert_greedy_matches(model, reference, prompt, n=20):
    """Our ``n`` greedy tokens equal transformers'; returns them."""
    expected = transformers_greedy(reference, prompt, n)
    tokens = our_greedy(model, prompt, n)
    assert len(tokens) == n and tokens == expected
    return expected


def assert_chunked_cache_matches(model, tokens, chunks, atol=1e-5, cache=None):
    """``tokens`` fed through ``cache`` (a fresh ``model.make_cache()`` when None) in chunks
    of the sizes ``chunks`` (summing to ``len(tokens)``) give the logits of one full pass
    within ``atol``; returns the full pass's logits [1, len(tokens), vocab]."""
    assert sum(chunks) == len(tokens)
    sequence = mx.array([tokens])
    full = np.array(model(sequence))
    cache = model.make_cache() if cache is None else cache
    steps, start = [], 0
    for size in chunks:
        steps.append(np.array(model(sequence[:, start:start + size], cache=cache)))
        start += size
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=atol)
    return full


def with_tokenizer(path, tokenizer):
    """Copy the tokenizer files of folder ``tokenizer`` into ``path``; returns ``path``."""
    for file in tokenizer.iterdir():
        shutil.copy(file, path)
    return path
