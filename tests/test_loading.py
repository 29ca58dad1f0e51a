"""Conversion, quantization and the errors of loading bad checkpoints."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.model_files.weight_files import UnsafeCheckpointError
from mlx_llm.model_files.loading import FORMAT_VERSION, convert, load_model

INPUT_IDS = mx.array([[5, 17, 33, 2, 64, 9, 11, 70]])


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def copy_of(checkpoint, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(checkpoint, target)
    return target


def test_convert_round_trip_float_and_bfloat16(llama_checkpoint, tmp_path):
    original, _ = load_model(llama_checkpoint)
    reference = np.array(original(INPUT_IDS))
    report = convert(llama_checkpoint, tmp_path / "f32")
    assert report.bytes_written > 0 and report.megabytes_per_second > 0
    config = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert config["mlx_llm"]["format_version"] == FORMAT_VERSION == 3 and config["dtype"] == "float32"
    reloaded, _ = load_model(tmp_path / "f32")
    np.testing.assert_array_equal(np.array(reloaded(INPUT_IDS)), reference)

    convert(llama_checkpoint, tmp_path / "bf16", dtype="bfloat16")
    half, half_config = load_model(tmp_path / "bf16")
    assert half_config["dtype"] == "bfloat16" and half.model.embed_tokens.weight.dtype == mx.bfloat16
    assert np.abs(np.array(half(INPUT_IDS).astype(mx.float32)) - reference).max() < 0.05


# Measured on this checkpoint (logit range 1.0): 8-bit max error 0.005, 4-bit 0.11.
@pytest.mark.parametrize("bits, tolerance, min_correlation", [(8, 0.02, 0.999), (4, 0.25, 0.95)])
def test_quantized_conversion_round_trips_close_to_float(llama_checkpoint, tmp_path, bits, tolerance, min_correlation):
    reference = np.array(load_model(llama_checkpoint)[0](INPUT_IDS))
    out = tmp_path / f"q{bits}"
    convert(llama_checkpoint, out, quantize=True, bits=bits, group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == config["quantization_config"] == {"group_size": 32, "bits": bits, "mode": "affine"}
    model, _ = load_model(out)
    assert model.model.layers[0].self_attn.q_proj.bits == bits  # reloaded as quantized
    logits = np.array(model(INPUT_IDS))
    error = np.abs(logits - reference).max()
    correlation = np.corrcoef(logits.ravel(), reference.ravel())[0, 1]
    print(f"{bits}-bit: max |logit error| = {error:.4f} (logit range {np.ptp(reference):.2f}), "
          f"correlation {correlation:.5f}")
    assert error < tolerance
    assert correlation >= min_correlation


def test_sharded_conversion_loads(llama_checkpoint, tmp_path):
    convert(llama_checkpoint, tmp_path / "sharded", max_shard_size=50_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    model, _ = load_model(tmp_path / "sharded")
    np.testing.assert_array_equal(np.array(model(INPUT_IDS)), np.array(load_model(llama_checkpoint)[0](INPUT_IDS)))


def test_unknown_model_type_lists_supported(llama_checkpoint, tmp_path):
    folder = copy_of(llama_checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'.*bert.*gpt2.*llama.*t5"):
        load_model(folder)
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'"):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _rewrite_weights(folder, edit):
    weights = mx.load(str(folder / "model.safetensors"))
    edit(weights)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)


def test_missing_unexpected_and_misshaped_tensors_are_named(llama_checkpoint, tmp_path):
    folder = copy_of(llama_checkpoint, tmp_path)
    _rewrite_weights(folder, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.feed_forward\.up_proj\.weight"):
        load_model(folder)

    folder = copy_of(llama_checkpoint, tmp_path / "b")
    _rewrite_weights(folder, lambda w: w.update({"model.layers.0.self_attn.q_norm.weight": mx.ones((16,))}))
    with pytest.raises(ValueError, match=r"unknown llama tensor 'model\.layers\.0\.self_attn\.q_norm\.weight'"):
        load_model(folder)

    folder = copy_of(llama_checkpoint, tmp_path / "c")
    _rewrite_weights(folder, lambda w: w.update({"model.norm.weight": mx.ones((63,))}))
    with pytest.raises(ValueError, match=r"model\.norm\.weight: expected \(64,\), found \(63,\)"):
        load_model(folder)


def test_truncated_safetensors_is_reported(llama_checkpoint, tmp_path):
    folder = copy_of(llama_checkpoint, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(folder)
    with pytest.raises(ValueError):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*out*"))


def test_missing_path_and_pickle_only_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_model(tmp_path / "does-not-exist")
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50,
                                                                  n_positions=16))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the legacy pickle format
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_model(folder)
    with pytest.raises(UnsafeCheckpointError):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_refused_without_overwrite(llama_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert(llama_checkpoint, out)
    assert (out / "keep.txt").read_text() == "mine"
    convert(llama_checkpoint, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_bad_conversion_options(llama_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="bits must be one of"):
        convert(llama_checkpoint, tmp_path / "o", quantize=True, bits=7)
    with pytest.raises(ValueError, match="unsupported dtype 'float8'"):
        load_model(llama_checkpoint, dtype="float8")


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    return path


def _as_format_1(folder, version=1):
    """Rewrite a converted GPT-2 folder as mlx_llm format 1 wrote it: this project's
    module names (formats 1 and 2), with q_proj, k_proj and v_proj apart."""
    from mlx_llm.models import gpt2

    args = gpt2.ModelArgs.from_config(json.loads((folder / "config.json").read_text()))

    def split(weights):
        own = gpt2.convert_hf_weights(dict(weights), args)  # format 3 holds mlx-lm's names
        weights.clear()
        weights.update(own)
        for name in [name for name in weights if ".qkv_proj." in name]:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), mx.split(weights.pop(name), 3, axis=0)):
                weights[name.replace("qkv_proj", part)] = piece

    _rewrite_weights(folder, split)
    config = json.loads((folder / "config.json").read_text())
    config["mlx_llm"]["format_version"] = version
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("quantize", [False, True])
def test_format_1_gpt2_with_separate_qkv_loads_as_fused(gpt2_checkpoint, tmp_path, quantize):
    convert(gpt2_checkpoint, tmp_path / "now", quantize=quantize, bits=8, group_size=32)
    expected = np.array(load_model(tmp_path / "now")[0](INPUT_IDS))
    old = copy_of(tmp_path / "now", tmp_path)
    _as_format_1(old)
    assert "model.layers.0.self_attn.q_proj.weight" in mx.load(str(old / "model.safetensors"))
    model, _ = load_model(old)
    assert "qkv_proj" in model.layers[0].self_attn
    np.testing.assert_array_equal(np.array(model(INPUT_IDS)), expected)


def test_newer_format_is_refused(gpt2_checkpoint, tmp_path):
    convert(gpt2_checkpoint, tmp_path / "now")
    config = json.loads((tmp_path / "now" / "config.json").read_text())
    config["mlx_llm"]["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "now" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"written by a newer mlx_llm \\(format {FORMAT_VERSION + 1}; .*upgrade mlx_llm"):
        load_model(tmp_path / "now")


def test_load_without_a_tokenizer_fails_before_reading_weights(llama_checkpoint, monkeypatch):
    from mlx_llm import loading

    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: pytest.fail("weights were loaded"))
    with pytest.raises(FileNotFoundError, match="no tokenizer files in"):
        loading.load(llama_checkpoint)
