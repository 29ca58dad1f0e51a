"""The encoder-decoder learns to reverse sequences (teacher forcing, then greedy
decoding with the KV cache)."""

import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_llm import EncoderDecoder, cross_entropy

BOS, FIRST_SYMBOL, NUM_SYMBOLS, LENGTH = 1, 2, 10, 8
VOCAB = FIRST_SYMBOL + NUM_SYMBOLS


def make_batch(rng: np.random.Generator, batch_size: int):
    source = rng.integers(FIRST_SYMBOL, VOCAB, size=(batch_size, LENGTH))
    target = np.ascontiguousarray(source[:, ::-1])
    decoder_input = np.concatenate([np.full((batch_size, 1), BOS), target[:, :-1]], axis=1)
    return mx.array(source), mx.array(decoder_input), mx.array(target)


def greedy_decode(model: EncoderDecoder, source: mx.array, length: int) -> mx.array:
    memory = model.encode(source)
    cache = model.make_cache()
    token = mx.full((source.shape[0], 1), BOS)
    generated = []
    for _ in range(length):
        logits = model.decode(token, memory, cache=cache)
        token = mx.argmax(logits[:, -1:], axis=-1)
        generated.append(token)
    return mx.concatenate(generated, axis=1)


def test_encoder_decoder_learns_sequence_reversal():
    rng = np.random.default_rng(0)
    model = EncoderDecoder(VOCAB, VOCAB, hidden_size=32, num_heads=4, num_encoder_layers=1,
                           num_decoder_layers=1, intermediate_size=64, dropout=0.0, max_positions=16)
    steps, warmup = 250, 25
    optimizer = optim.Adam(learning_rate=optim.join_schedules(
        [optim.linear_schedule(1e-4, 3e-3, warmup), optim.cosine_decay(3e-3, steps - warmup, 1e-4)], [warmup]))

    def loss_fn(source, decoder_input, target):
        return cross_entropy(model(source, decoder_input), target)

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    def step(source, decoder_input, target):
        loss, grads = loss_and_grad(source, decoder_input, target)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(*make_batch(rng, 32))
        mx.eval(state, loss)
    seconds = time.perf_counter() - start

    model.eval()
    source, _, target = make_batch(np.random.default_rng(1), 500)  # unseen sequences
    predicted = greedy_decode(model, source, LENGTH)
    accuracy = float((predicted == target).mean())
    print(f"reversal: final loss {float(loss):.4f}, greedy token accuracy {accuracy:.4f}, {seconds:.1f} s")
    assert accuracy >= 0.99
    assert float(loss) < 0.01
