"""Generation against transformers' greedy decoding, plus stop conditions,
batching, chunked prefill and bad input."""

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from tokenizer_fixtures import build_byte_level_bpe, build_sentencepiece

from mlx_llm.generation.generate import _prefill, batch_generate, generate, stream_generate
from mlx_llm.model_files.loading import load

PROMPT = "the quick brown fox"
VOCAB = 400  # the byte-level BPE of tokenizer_fixtures


def make_checkpoint(folder, model_class, config):
    build_byte_level_bpe(folder)
    torch.manual_seed(0)
    reference = model_class(config).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    return reference


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=96, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    reference = make_checkpoint(folder, transformers.GPT2LMHeadModel, config)
    return folder, reference


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    reference = make_checkpoint(folder, transformers.LlamaForCausalLM, config)
    return folder, reference


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5") / "model"
    build_sentencepiece(folder, "t5")  # </s> = 1, <pad> = 0
    from mlx_llm.tokenization import Tokenizer

    config = transformers.T5Config(
        vocab_size=Tokenizer.from_pretrained(folder).vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    reference = transformers.T5ForConditionalGeneration(config).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    return folder, reference


def test_t5_greedy_equals_transformers(t5):
    folder, reference = t5
    model, tokenizer = load(folder)
    source = tokenizer.encode(PROMPT)
    assert source[-1] == 1  # T5 appends </s>
    with torch.no_grad():
        output = reference.generate(
            torch.tensor([source]), max_new_tokens=32, min_new_tokens=32, do_sample=False
        )
    expected = output[0, 1:].tolist()  # drop the decoder start token
    responses = list(stream_generate(model, tokenizer, source, max_tokens=32, eos_token_ids=()))
    assert [r.token for r in responses] == expected
    # Batched encoder-decoder generation equals single prompts, with the real end token.
    prompts = [PROMPT, "over the lazy dog", "a"]
    singles = [generate(model, tokenizer, prompt, max_tokens=12) for prompt in prompts]
    assert batch_generate(model, tokenizer, prompts, max_tokens=12) == singles


def hf_greedy(reference, prompt_ids, max_new_tokens):
    with torch.no_grad():
        output = reference.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            min_new_tokens=max_new_tokens,
            pad_token_id=1,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        )
    return output[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_equals_transformers(name, request):
    folder, reference = request.getfixturevalue(name)
    model, tokenizer = load(folder)
    prompt_ids = tokenizer.encode(PROMPT)
    expected = hf_greedy(reference, prompt_ids, 32)
    # No end tokens, so that all 32 are produced as transformers does with min_new_tokens.
    responses = list(stream_generate(model, tokenizer, prompt_ids, max_tokens=32, eos_token_ids=()))
    assert [r.token for r in responses] == expected
    assert responses[-1].finish_reason == "length" and responses[-1].generation_tokens == 32
    text = "".join(r.text for r in responses)
    assert text == tokenizer.decode(expected)
    for response in responses:
        assert response.logprob <= 0.0
    last = responses[-1]
    assert last.prompt_tokens == len(prompt_ids) and last.prompt_tps > 0 and last.generation_tps > 0
    assert last.peak_memory > 0 and last.time_to_first_token > 0


def test_temperature_zero_is_greedy_and_seeds_repeat(gpt2):
    model, tokenizer = load(gpt2[0])
    greedy = generate(model, tokenizer, PROMPT, max_tokens=12)
    assert generate(model, tokenizer, PROMPT, max_tokens=12, temperature=0.0, top_k=5, top_p=0.5) == greedy
    first = generate(model, tokenizer, PROMPT, max_tokens=12, temperature=1.0, seed=3)
    assert generate(model, tokenizer, PROMPT, max_tokens=12, temperature=1.0, seed=3) == first
    samples = {
        generate(model, tokenizer, PROMPT, max_tokens=12, temperature=1.5, seed=seed) for seed in range(4)
    }
    assert len(samples) > 1  # sampling does sample


def test_stop_strings_are_not_emitted(gpt2):
    model, tokenizer = load(gpt2[0])
    full = generate(model, tokenizer, PROMPT, max_tokens=24)
    assert len(full) > 6
    stop = full[3:6]
    responses = list(stream_generate(model, tokenizer, PROMPT, max_tokens=24, stop=[stop, "never-there"]))
    text = "".join(r.text for r in responses)
    assert responses[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)] and stop not in text


def test_eos_stops_generation(gpt2):
    model, tokenizer = load(gpt2[0])
    tokens = [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=40, eos_token_ids=())]
    # Make the 5th generated token an end token: generation must stop right there.
    eos = tokens[4]
    responses = list(stream_generate(model, tokenizer, PROMPT, max_tokens=40, eos_token_ids=[eos, 10**6]))
    first_eos = tokens.index(eos)
    assert len(responses) == first_eos + 1 and responses[-1].finish_reason == "eos"
    assert responses[-1].text == "" or eos not in tokenizer.encode(
        responses[-1].text, add_special_tokens=False
    )


def test_chunked_prefill_equals_single_pass(llama):
    model, tokenizer = load(llama[0])
    tokens = mx.array([tokenizer.encode(PROMPT * 4)])
    full = np.array(model(tokens)[:, -1, :])
    for step in (1, 3, 7):
        chunked = np.array(_prefill(model, tokens, model.make_cache(), step))
        np.testing.assert_allclose(chunked, full, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_batched_generation_equals_single_prompts(name, request):
    model, tokenizer = load(request.getfixturevalue(name)[0])
    prompts = [PROMPT, "a", "jumps over the lazy dog and then"]
    singles = [generate(model, tokenizer, prompt, max_tokens=16) for prompt in prompts]
    assert batch_generate(model, tokenizer, prompts, max_tokens=16) == singles


def test_bad_input(gpt2):
    model, tokenizer = load(gpt2[0])
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, tokenizer, "")
    with pytest.raises(ValueError, match=r"the prompt has \d+ tokens but the model's context holds 96"):
        generate(model, tokenizer, "word " * 200)
    truncated = list(stream_generate(model, tokenizer, "word " * 200, max_tokens=5, truncate_prompt=True,
                                     eos_token_ids=(), on_warning=lambda message: None))
    assert truncated[-1].prompt_tokens == 91 and len(truncated) == 5  # the oldest tokens make room for max_tokens
    with pytest.raises(ValueError, match=r"top_p must be a finite number in \(0, 1\]"):
        generate(model, tokenizer, PROMPT, top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        generate(model, tokenizer, PROMPT, temperature=-1.0)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        generate(model, tokenizer, PROMPT, max_tokens=0)
    for run in (generate, lambda *args, **options: batch_generate(model, tokenizer, [PROMPT], **options)):
        with pytest.raises(ValueError, match="prefill_step_size must be >= 1, got 0"):
            run(model, tokenizer, PROMPT, prefill_step_size=0)


def test_rotating_cache_generation(llama):
    model, tokenizer = load(llama[0])
    prompt = PROMPT * 3
    plain = generate(model, tokenizer, prompt, max_tokens=20, eos_token_ids=())
    # A window larger than prompt + generation changes nothing.
    assert generate(model, tokenizer, prompt, max_tokens=20, eos_token_ids=(), max_kv_size=200) == plain
    # A small window bounds memory and still generates every token.
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=30, eos_token_ids=(), max_kv_size=16,
                                     prefill_step_size=8))
    assert len(responses) == 30 and responses[-1].finish_reason == "length"
