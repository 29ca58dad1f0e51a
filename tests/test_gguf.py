"""GGUF files: tiny random transformers models written the way llama.cpp's
convert_hf_to_gguf writes them (its tensor names, q/k rows permuted for
``llama``), read back with the same logits and the same token ids as
transformers, quantized tensors kept quantized where MLX's format is exact."""

import io
import json
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner

gguf = pytest.importorskip("gguf")
sentencepiece = pytest.importorskip("sentencepiece")
import tokenizers  # noqa: E402

from mlx_llm.model_files.gguf import unpermute  # noqa: E402
from mlx_llm.model_files.gguf_tokenizer import load_gguf_tokenizer, merges_from_scores  # noqa: E402
from mlx_llm.model_files.loading import convert, describe, load, load_model  # noqa: E402
from mlx_llm_cli.main import main  # noqa: E402

Q = gguf.GGMLQuantizationType
INPUT_IDS = [[5, 17, 33, 2, 64, 9, 11, 70, 120, 3]]
TEXTS = ["Hello world", "  leading spaces and  double  spaces ", "café naïve 日本語 🙂", "line\nbreak\ttab",
         "<|im_start|>user\nhi<|im_end|>", "numbers 12345 and ünïcödé"]
CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "café naïve résumé 日本語のテキスト emoji 🙂 numbers 12345 67890",
    "The quick brown fox jumps over the lazy dog. Spaces   and\ttabs\nand new lines.",
] * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# --- vocabularies -------------------------------------------------------------------------


def byte_level_vocab():
    """A trained byte-level BPE (Qwen2 / Llama 3 style): tokens, merges and types."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=330, special_tokens=specials, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(state["vocab"].items(), key=lambda item: item[1])] + ["<think>"]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in state["merges"]]
    types = [3 if token in specials else 4 if token == "<think>" else 1 for token in tokens]
    return {"model": "gpt2", "pre": "qwen2", "tokens": tokens, "merges": merges, "types": types,
            "bos": None, "eos": tokens.index("<|im_end|>"), "eot": tokens.index("<|endoftext|>"), "add_bos": False}


def sentencepiece_vocab():
    """A trained SentencePiece BPE with byte fallback (Llama 2 style): pieces, scores, types."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for index in range(processor.get_piece_size()):
        tokens.append(processor.id_to_piece(index))
        scores.append(processor.get_score(index))
        types.append(2 if processor.is_unknown(index) else 3 if processor.is_control(index)
                     else 6 if processor.is_byte(index) else 1)
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "bos": 1, "eos": 2, "unk": 0}


@pytest.fixture(scope="module")
def vocabularies():
    return {"gpt2": byte_level_vocab(), "llama": sentencepiece_vocab()}


# --- writing GGUF files the way convert_hf_to_gguf does ---------------------------------------

HF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
            "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def permute(rows, heads):
    """llama.cpp's q/k permutation (convert_hf_to_gguf's LlamaModel.permute)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_tensors(model, arch):
    """``{gguf name: float32 array}`` of a transformers model, q/k permuted for llama."""
    config = model.config
    tensors = {}
    for name, parameter in model.state_dict().items():
        values = parameter.float().numpy()
        if name == "model.embed_tokens.weight":
            tensors["token_embd.weight"] = values
        elif name == "model.norm.weight":
            tensors["output_norm.weight"] = values
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                tensors["output.weight"] = values
        else:
            parts = name.split(".")  # model.layers.{i}.{module path}.{weight|bias}
            layer, hf_module = parts[2], ".".join(parts[3:-1])
            gguf_name = f"blk.{layer}.{HF_NAMES[hf_module]}.{parts[-1]}"
            if arch == "llama" and HF_NAMES[hf_module] in ("attn_q", "attn_k"):
                heads = config.num_attention_heads if HF_NAMES[hf_module] == "attn_q" else config.num_key_value_heads
                values = permute(values, heads)
            tensors[gguf_name] = values
    return tensors


def random_q6_k(shape, rng):
    """Valid random Q6_K blocks (gguf cannot quantize to Q6_K): 6-bit codes, small int8 scales, small d."""
    rows, columns = shape
    blocks = rng.integers(0, 256, size=(rows * columns // 256, 210), dtype=np.uint8)
    blocks[:, 192:208] = rng.integers(-8, 9, size=(blocks.shape[0], 16)).astype(np.int8).view(np.uint8)
    d = (rng.uniform(0.5, 1.5, size=(blocks.shape[0], 1)) * 1e-4).astype(np.float16)
    blocks[:, 208:210] = d.view(np.uint8)
    return blocks.reshape(rows, -1)


def encode_tensor(values, qtype, rng):
    """``(stored array, raw dtype, dequantized float32 values)`` of one tensor in ``qtype``."""
    if qtype == Q.F32:
        return values.astype(np.float32), None, values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16), None, values.astype(np.float16).astype(np.float32)
    if qtype == Q.Q8_1:  # a type gguf cannot dequantize: random bytes of the right size
        return rng.integers(0, 256, size=(values.shape[0], values.shape[1] // 32 * 40), dtype=np.uint8), qtype, None
    data = random_q6_k(values.shape, rng) if qtype == Q.Q6_K else gguf.quants.quantize(values, qtype)
    return data, qtype, gguf.quants.dequantize(data, qtype).reshape(values.shape)


def write_gguf(path, arch, config, tensors, vocab, types=None, extra=None):
    """Write a GGUF file; ``types`` maps a tensor-name part (``"attn_q"``) to its type (F32 by default).

    Returns:
        The dequantized values of every tensor as written.
    """
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
    for key in ("bos", "eos", "unk", "eot"):
        if vocab.get(key) is not None:
            getattr(writer, f"add_{key}_token_id")(vocab[key])
    if "add_bos" in vocab:
        writer.add_add_bos_token(vocab["add_bos"])
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, value in (extra or {}).items():
        writer.add_key_value(key, *value)
    written = {}
    for name, values in tensors.items():
        part = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        qtype = (types or {}).get(part, Q.F32) if values.ndim == 2 else Q.F32
        data, raw_dtype, written[name] = encode_tensor(values, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


# --- the models and files ----------------------------------------------------------------------

MIXED_TYPES = {"token_embd": Q.Q4_0, "attn_q": Q.Q4_0, "attn_k": Q.Q8_0, "attn_v": Q.Q4_1, "attn_output": Q.Q8_0,
               "ffn_gate": Q.Q4_0, "ffn_up": Q.F16, "ffn_down": Q.Q6_K, "output": Q.Q8_0}


def tiny(model_class, config_class, vocab, **overrides):
    options = dict(vocab_size=len(vocab["tokens"]), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                   tie_word_embeddings=False)
    options.update(overrides)
    torch.manual_seed(0)
    model = model_class(config_class(**options)).eval()
    with torch.no_grad():  # biases and norm weights get values, so that they are really compared
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory, vocabularies):
    folder = tmp_path_factory.mktemp("gguf")
    llama = tiny(transformers.LlamaForCausalLM, transformers.LlamaConfig, vocabularies["gpt2"])
    qwen2 = tiny(transformers.Qwen2ForCausalLM, transformers.Qwen2Config, vocabularies["gpt2"], tie_word_embeddings=True)
    spm = tiny(transformers.LlamaForCausalLM, transformers.LlamaConfig, vocabularies["llama"], num_hidden_layers=1)
    llama_tensors = gguf_tensors(llama, "llama")
    write_gguf(folder / "llama-f32.gguf", "llama", llama.config, llama_tensors, vocabularies["gpt2"])
    write_gguf(folder / "qwen2-f32.gguf", "qwen2", qwen2.config, gguf_tensors(qwen2, "qwen2"), vocabularies["gpt2"])
    write_gguf(folder / "spm-f32.gguf", "llama", spm.config, gguf_tensors(spm, "llama"), vocabularies["llama"])
    # Each quantized file has a float twin holding gguf's own dequantization of its tensors.
    for name, types in (("mixed", MIXED_TYPES), ("f16", dict.fromkeys(MIXED_TYPES, Q.F16))):
        written = write_gguf(folder / f"llama-{name}.gguf", "llama", llama.config, llama_tensors,
                             vocabularies["gpt2"], types)
        write_gguf(folder / f"llama-{name}-dequantized.gguf", "llama", llama.config, written, vocabularies["gpt2"])
    return folder, {"llama": llama, "qwen2": qwen2, "spm": spm}


def logits(model):
    return np.array(model(mx.array(INPUT_IDS)).astype(mx.float32))


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits.numpy()


# --- model parity ------------------------------------------------------------------------------


def test_unpermute_inverts_llama_cpp_permutation():
    rows = np.arange(32 * 3).reshape(32, 3)
    for heads in (1, 2, 4):
        assert not np.array_equal(permute(rows, heads), rows)
        np.testing.assert_array_equal(unpermute(permute(rows, heads), heads), rows)


@pytest.mark.parametrize("name", ["llama", "qwen2", "spm"])
def test_float_gguf_matches_transformers(files, name):
    folder, references = files
    model, config = load_model(folder / f"{name}-f32.gguf")
    reference = references[name]
    assert config["model_type"] == ("qwen2" if name == "qwen2" else "llama")
    assert model.args.tie_word_embeddings == reference.config.tie_word_embeddings
    assert model.args.num_kv_heads == reference.config.num_key_value_heads
    assert model.model.embed_tokens.weight.dtype == mx.float32  # an all-F32 file computes in float32
    error = np.abs(logits(model) - torch_logits(reference)).max()
    assert error <= 1e-4, error  # measured 1.8e-7 (llama)


def test_qwen3_gguf_matches_transformers(tmp_path, vocabularies):
    """Qwen3: per-head q/k norms (blk.N.attn_q_norm / attn_k_norm), explicit head_dim, unpermuted q/k."""
    reference = tiny(transformers.Qwen3ForCausalLM, transformers.Qwen3Config, vocabularies["gpt2"], head_dim=32)
    write_gguf(tmp_path / "qwen3.gguf", "qwen3", reference.config, gguf_tensors(reference, "qwen3"),
               vocabularies["gpt2"])
    model, config = load_model(tmp_path / "qwen3.gguf")
    assert config["model_type"] == "qwen3" and model.args.head_dim == 32
    error = np.abs(logits(model) - torch_logits(reference)).max()
    assert error <= 1e-4, error


def test_llama3_rope_freqs_tensor_matches_transformers(tmp_path, vocabularies):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    reference = tiny(transformers.LlamaForCausalLM, transformers.LlamaConfig, vocabularies["gpt2"],
                     head_dim=32, num_hidden_layers=1, rope_parameters=rope)
    tensors = gguf_tensors(reference, "llama")
    # convert_hf_to_gguf stores Llama 3's rope scaling as one divisor per frequency.
    inverse = 1.0 / rope["rope_theta"] ** (np.arange(0, 32, 2, dtype=np.float64) / 32)
    wavelength = 2 * np.pi / inverse
    smooth = (8192 / wavelength - 1.0) / (4.0 - 1.0)
    divisors = np.where(wavelength < 8192 / 4, 1.0, np.where(wavelength > 8192, 8.0, 1 / ((1 - smooth) / 8 + smooth)))
    tensors["rope_freqs.weight"] = divisors.astype(np.float32)
    assert divisors.min() == 1.0 and divisors.max() == 8.0  # the tiny model's frequencies cover every case
    write_gguf(tmp_path / "llama3.gguf", "llama", reference.config, tensors, vocabularies["gpt2"])
    model, config = load_model(tmp_path / "llama3.gguf")
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["rope_scaling"]["factor"] == 8.0
    assert np.abs(logits(model) - torch_logits(reference)).max() <= 1e-4


def test_f16_file_equals_its_float32_values(files):
    folder, _ = files
    model, _ = load_model(folder / "llama-f16.gguf")
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float16  # the file's type by default
    as_float32 = logits(load_model(folder / "llama-f16.gguf", dtype="float32")[0])
    reference = logits(load_model(folder / "llama-f16-dequantized.gguf")[0])
    assert np.abs(as_float32 - reference).max() <= 1e-5


def test_q4_0_q4_1_q8_0_stay_quantized_exactly_and_k_quants_are_dequantized(files, capsys):
    folder, _ = files
    model, config = load_model(folder / "llama-mixed.gguf", dtype="float32")
    assert "dequantized 2 Q6_K tensors to float32" in capsys.readouterr().err
    layer = model.model.layers[1]
    expected_bits = {"q_proj": 4, "k_proj": 8, "v_proj": 4, "o_proj": 8}
    for name, bits in expected_bits.items():
        module = getattr(layer.self_attn, name)
        assert (module.bits, module.group_size) == (bits, 32)
    assert model.model.embed_tokens.bits == 4 and model.lm_head.bits == 8
    assert not hasattr(layer.feed_forward.down_proj, "scales")  # Q6_K: dequantized
    assert config["quantization"]["bits"] == 4 and config["quantization"]["lm_head"]["bits"] == 8
    # Each kept type dequantizes in MLX to exactly gguf's NumPy dequantization (q/k rows unpermuted).
    twin = gguf.GGUFReader(folder / "llama-mixed-dequantized.gguf")
    dequantized = {tensor.name: np.asarray(tensor.data) for tensor in twin.tensors}
    for gguf_name, module, heads in (("attn_q", layer.self_attn.q_proj, 4), ("attn_k", layer.self_attn.k_proj, 2),
                                     ("attn_v", layer.self_attn.v_proj, None)):
        values = mx.dequantize(module.weight, module.scales, module.biases, group_size=32, bits=module.bits)
        expected = dequantized[f"blk.1.{gguf_name}.weight"]
        np.testing.assert_array_equal(np.array(values), expected if heads is None else unpermute(expected, heads))
    reference = logits(load_model(folder / "llama-mixed-dequantized.gguf")[0])
    error = np.abs(logits(model) - reference).max()
    assert error <= 1e-5, error  # measured 0.0
    half, _ = load_model(folder / "llama-mixed.gguf")  # default: float16 scales and dequantized weights
    assert layer.feed_forward.down_proj.weight.dtype == mx.float32
    assert half.model.layers[1].feed_forward.down_proj.weight.dtype == mx.float16
    error = np.abs(logits(half) - reference).max()
    assert error <= 0.02 * np.abs(reference).max(), error  # float16 rounding; measured 1.3e-3 of 0.63


# --- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", [("llama-f32", "gpt2"), ("spm-f32", "llama")])
def test_tokenizer_ids_equal_transformers_gguf_tokenizer(files, name, kind):
    folder, _ = files
    reference = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=f"{name}.gguf")
    tokenizer = load_gguf_tokenizer(folder / f"{name}.gguf")
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == reference(text)["input_ids"], text
        assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    if kind == "gpt2":  # Qwen2 style: no BOS, end-of-text and end-of-turn both stop generation
        assert tokenizer.bos_token_id is None and tokenizer.encode("<think>") == [len(tokenizer) - 1]
        assert tokenizer.eos_token_ids == {tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")}
    else:  # SentencePiece style: BOS added, byte fallback for characters outside the vocabulary
        assert tokenizer.encode("x")[0] == tokenizer.bos_token_id == 1 and tokenizer.eos_token_ids == {2}
        assert tokenizer.decode(tokenizer.encode("ψ∑")) == "ψ∑"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_merges_from_scores_equal_transformers_derivation():
    from transformers.tokenization_utils_base import generate_merges

    tokens = ["<unk>", "▁", "a", "b", "ab", "▁a", "▁ab", "ba", "bab", "aa"]
    scores = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -4.0, -7.0, -8.0]
    expected = generate_merges({token: index for index, token in enumerate(tokens)}, dict(zip(tokens, scores)))
    assert merges_from_scores(tokens, scores) == expected and len(expected) > 5


# --- load, convert, info, generate -------------------------------------------------------------


def test_load_and_convert_round_trip(files, tmp_path):
    folder, _ = files
    source = folder / "llama-mixed.gguf"
    model, tokenizer = load(source, dtype="float32")
    expected = logits(model)
    report = convert(source, tmp_path / "out", dtype="float32")
    assert report.num_parameters > 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"]["model.layers.0.self_attn.k_proj"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    reloaded, reloaded_tokenizer = load(tmp_path / "out")
    assert reloaded.model.layers[0].self_attn.k_proj.bits == 8
    np.testing.assert_array_equal(logits(reloaded), expected)
    for text in TEXTS:
        assert reloaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert reloaded_tokenizer.eos_token_ids == tokenizer.eos_token_ids
    assert reloaded_tokenizer.chat_template == CHAT_TEMPLATE


def test_describe_and_info_say_what_stays_quantized(files):
    folder, _ = files
    details = describe(folder / "llama-mixed.gguf")
    assert (details.model_type, details.file_format, details.dtype) == ("llama", "gguf", "float16")
    assert "dequantized 2 Q6_K tensors to float16" in details.notes
    # attn_k, attn_output (2 layers each) and output
    assert "kept 5 Q8_0 tensors quantized (8-bit, group size 32)" in details.notes
    result = CliRunner().invoke(main, ["info", str(folder / "llama-mixed.gguf")])
    assert result.exit_code == 0, result.output
    assert "dequantized 2 Q6_K tensors to float16" in result.output and "GGUF" in result.output


def test_generate_cli_reads_gguf(files):
    folder, _ = files
    result = CliRunner().invoke(main, ["generate", "-m", str(folder / "spm-f32.gguf"), "-p", "Hello",
                                       "--max-tokens", "3", "--temp", "0"])
    assert result.exit_code == 0, result.output


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(files, tmp_path_factory, vocabularies):
    """``{what: (path, words the one-line message must hold)}`` of GGUF files that must be refused."""
    folder, references = files
    bad = tmp_path_factory.mktemp("bad")
    llama = references["llama"]
    tensors = gguf_tensors(llama, "llama")
    write_gguf(bad / "phi3.gguf", "phi3", llama.config, tensors, vocabularies["gpt2"])
    write_gguf(bad / "q8_1.gguf", "llama", llama.config, tensors, vocabularies["gpt2"], {"attn_v": Q.Q8_1})
    data = (folder / "llama-f32.gguf").read_bytes()
    (bad / "truncated.gguf").write_bytes(data[: len(data) - 1000])
    (bad / "header-only.gguf").write_bytes(data[:200])
    return {
        "architecture": (bad / "phi3.gguf", ["'phi3' is not supported", "llama, mistral, qwen2, qwen3"]),
        "type": (bad / "q8_1.gguf", ["blk.0.attn_v.weight", "Q8_1"]),
        "truncated": (bad / "truncated.gguf", ["truncated"]),
        "header": (bad / "header-only.gguf", ["not a readable GGUF file"]),
    }


@pytest.mark.parametrize("what", ["architecture", "type", "truncated", "header"])
def test_bad_gguf_is_one_line_exit_2_and_nothing_written(bad_files, tmp_path, what):
    path, words = bad_files[what]
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert all(word in str(error.value) for word in words), str(error.value)
    for command in (["info", str(path)], ["convert", str(path), "--out", str(tmp_path / "out")],
                    ["generate", "-m", str(path), "-p", "hi", "--max-tokens", "1"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert all(word in result.stderr for word in words)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_missing_gguf_package_says_how_to_install(files, monkeypatch):
    folder, _ = files
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "mlx-llm-kit\[gguf\]"'):
        load(folder / "llama-f32.gguf")
    result = CliRunner().invoke(main, ["info", str(folder / "llama-f32.gguf")])
    assert result.exit_code == 2 and 'pip install "mlx-llm-kit[gguf]"' in result.stderr
