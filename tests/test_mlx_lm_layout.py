"""mlx-lm's layout both ways: folders made by ``mlx_lm.convert`` load here, and folders
made here (`convert`, `fuse`) load in ``mlx_lm.load``, with the same logits and the
same greedy tokens."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

mlx_lm = pytest.importorskip("mlx_lm")

from mlx_llm.generation.generate import generate_step  # noqa: E402
from mlx_llm.model_files.loading import convert, load_model  # noqa: E402
from mlx_llm.generation.sampling import SamplingConfig  # noqa: E402

from tokenizer_fixtures import build_byte_level_bpe  # noqa: E402

PROMPT = [5, 17, 33, 2, 64, 9, 11, 70, 120, 399, 3, 250]
# Float logits: the same weights through two implementations (float32 summation order).
FLOAT_TOLERANCE = 1e-5

CONFIGS = {
    # Tied embeddings: a quantized embedding is also the output layer (as_linear).
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.1)),
    # Untied, q/k/v biases.
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=400, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.1)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=400, n_embd=128, n_layer=2, n_head=4, n_positions=128, initializer_range=0.1,
        bos_token_id=0, eos_token_id=0)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random transformers checkpoints (safetensors) with a byte-level BPE tokenizer."""
    root = tmp_path_factory.mktemp("hf")
    tokenizer = build_byte_level_bpe(root / "tokenizer")
    paths = {}
    for name, build in CONFIGS.items():
        torch.manual_seed(0)
        path = root / name
        build().save_pretrained(path, safe_serialization=True)
        # The keys of Hub configs that transformers 5 no longer writes and mlx-lm reads
        # (its Qwen2 default rope_theta is 1e6; its GPT-2 requires n_ctx).
        config = json.loads((path / "config.json").read_text())
        config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta"))
        config.setdefault("n_ctx", config.get("n_positions"))
        (path / "config.json").write_text(json.dumps(config))
        if name == "gpt2":  # the Hub's GPT-2 stores its tensors without "transformer.", as mlx-lm expects
            tensors = mx.load(str(path / "model.safetensors"))
            mx.save_safetensors(str(path / "model.safetensors"), {
                key.removeprefix("transformer."): value for key, value in tensors.items() if key != "lm_head.weight"},
                metadata={"format": "pt"})
        for file in tokenizer.iterdir():
            shutil.copy(file, path)
        paths[name] = path
    return paths


def mlx_lm_convert(source, out, **options):
    mlx_lm.convert(str(source), str(out), **options)
    return out


def logits_and_tokens(model, generate) -> tuple[np.ndarray, list[int]]:
    logits = model(mx.array([PROMPT]))
    tokens = [int(token) for token, _ in generate(model, mx.array(PROMPT))]
    return np.array(logits.astype(mx.float32)), tokens


def ours(model, prompt):
    return generate_step(model, prompt, SamplingConfig(temperature=0.0), max_tokens=20)


def theirs(model, prompt):
    from mlx_lm.generate import generate_step as their_step

    return (pair for pair, _ in zip(their_step(prompt, model, max_tokens=20), range(20)))


def assert_same(folder, tolerance=FLOAT_TOLERANCE):
    """Our model and mlx-lm's, both loaded from ``folder``, give the same logits and greedy tokens."""
    mine, _ = load_model(folder)
    reference, _ = mlx_lm.load(str(folder))
    my_logits, my_tokens = logits_and_tokens(mine, ours)
    their_logits, their_tokens = logits_and_tokens(reference, theirs)
    error = np.abs(my_logits - their_logits).max()
    print(f"{folder.name}: max |logit difference| {error:.2e} (logit range {np.ptp(their_logits):.2f})")
    assert error <= tolerance
    assert len(my_tokens) == 20 and my_tokens == their_tokens
    return mine


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("bits, group_size", [(None, None), (4, 64), (8, 128), (2, 32)])
def test_mlx_lm_conversion_loads_here(checkpoints, tmp_path, family, bits, group_size):
    quantize = {} if bits is None else dict(quantize=True, q_bits=bits, q_group_size=group_size)
    folder = mlx_lm_convert(checkpoints[family], tmp_path / f"{family}-{bits}", **quantize)
    model = assert_same(folder)
    embedding = model.model.wte if family == "gpt2" else model.model.embed_tokens
    assert getattr(embedding, "bits", None) == bits  # quantized embeddings, read as stored


@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8"])
def test_floating_point_modes_load_here(checkpoints, tmp_path, mode):
    folder = mlx_lm_convert(checkpoints["llama"], tmp_path / mode, quantize=True, q_mode=mode)
    model = assert_same(folder)
    assert model.model.layers[0].self_attn.q_proj.mode == model.model.embed_tokens.mode == mode


@pytest.mark.parametrize("recipe", ["mixed_3_6", "mixed_2_6"])
def test_mixed_bit_recipes_load_here(checkpoints, tmp_path, recipe):
    folder = mlx_lm_convert(checkpoints["llama"], tmp_path / recipe, quantize=True, q_group_size=64,
                            quant_predicate=recipe)
    config = json.loads((folder / "config.json").read_text())
    overrides = {key: entry["bits"] for key, entry in config["quantization"].items() if isinstance(entry, dict)}
    assert len(set(overrides.values())) == 2  # low and high bits, per module
    model = assert_same(folder)
    assert model.model.layers[1].feed_forward.down_proj.bits == overrides["model.layers.1.mlp.down_proj"]
    from mlx.utils import tree_flatten

    from mlx_llm.model_files.loading import describe

    info = describe(folder)  # counted from the headers: each packed module with its own bits
    float_model, _ = load_model(checkpoints["llama"])
    assert info.num_parameters == sum(value.size for _, value in tree_flatten(float_model.parameters()))
    assert info.notes == (f"mixed quantization: {len(overrides)} modules with their own settings (bits "
                          f"{', '.join(map(str, sorted(set(overrides.values()))))}; 0 kept in float)",)


def test_per_module_overrides_and_float_modules_load_here(checkpoints, tmp_path):
    def predicate(path, module):
        if path.endswith("down_proj"):
            return {"group_size": 32, "bits": 5, "mode": "affine"}
        if path.endswith("v_proj"):
            return {"group_size": 128, "bits": 6, "mode": "affine"}
        return not path.endswith("o_proj")  # o_proj stays float

    folder = mlx_lm_convert(checkpoints["qwen2"], tmp_path / "custom", quantize=True, q_bits=3, q_group_size=64,
                            quant_predicate=predicate)
    model = assert_same(folder)
    layer = model.model.layers[0]
    assert (layer.feed_forward.down_proj.bits, layer.feed_forward.down_proj.group_size) == (5, 32)
    assert (layer.self_attn.v_proj.bits, layer.self_attn.v_proj.group_size) == (6, 128)
    assert layer.self_attn.q_proj.bits == 3 and not hasattr(layer.self_attn.o_proj, "scales")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("bits, group_size", [(None, None), (4, 64), (6, 32)])
def test_our_conversion_loads_in_mlx_lm(checkpoints, tmp_path, family, bits, group_size):
    quantize = {} if bits is None else dict(quantize=True, bits=bits, group_size=group_size)
    out = tmp_path / f"{family}-{bits}"
    convert(checkpoints[family], out, **quantize)
    config = json.loads((out / "config.json").read_text())
    names = list(mx.load(str(out / "model.safetensors")))
    assert not any("feed_forward" in name or "self_attn_norm" in name for name in names)  # Hugging Face names
    if bits is not None:
        assert config["quantization"] == config["quantization_config"] == {
            "group_size": group_size, "bits": bits, "mode": "affine"}
    assert_same(out)


def test_mlx_lm_mixed_folder_converted_here_keeps_its_overrides(checkpoints, tmp_path):
    """An mlx-lm mixed-bit folder converted here (e.g. to bfloat16 norms) is written back
    with the per-module entries under Hugging Face names."""
    source = mlx_lm_convert(checkpoints["llama"], tmp_path / "mixed", quantize=True, q_group_size=64,
                            quant_predicate="mixed_3_6")
    out = tmp_path / "again"
    convert(source, out)
    written = json.loads((out / "config.json").read_text())["quantization"]
    original = json.loads((source / "config.json").read_text())["quantization"]
    assert written["bits"] == 3 and written["model.layers.1.mlp.down_proj"]["bits"] == 6  # the default: most used
    model = assert_same(out)
    for name, entry in original.items():
        if isinstance(entry, dict):
            module = model.model.embed_tokens if name == "model.embed_tokens" else model.model.layers[
                int(name.split(".")[2])]
            if name != "model.embed_tokens":
                part, _, projection = name.split(".", 3)[3].partition(".")
                module = getattr(getattr(module, {"mlp": "feed_forward"}.get(part, part)), projection)
            assert module.bits == entry["bits"], name


def test_fused_lora_loads_in_mlx_lm(checkpoints, tmp_path):
    from finetune_fixtures import instruction_records, write_jsonl
    from mlx_llm.finetune import FinetuneConfig, finetune, fuse

    base = mlx_lm_convert(checkpoints["llama"], tmp_path / "q4", quantize=True, q_bits=4, q_group_size=64)
    train = write_jsonl(tmp_path / "train.jsonl", instruction_records(32, seed=0))
    finetune(FinetuneConfig(task="lm", model=str(base), train=str(train), out=str(tmp_path / "run"), lora=True,
                            rank=4, steps=2, batch_size=8, learning_rate=1e-2, log_every=1), progress=False)
    fused = fuse(tmp_path / "run", tmp_path / "fused")  # stays 4-bit: the fused weights are re-quantized
    assert json.loads((fused / "config.json").read_text())["quantization"]["bits"] == 4
    assert_same(fused)
    # Dequantized, the fused folder computes what the run with its adapters does.
    run, _ = load_model(tmp_path / "run")
    expected = np.array(run(mx.array([PROMPT])))
    plain = fuse(tmp_path / "run", tmp_path / "plain", dequantize=True)
    assert "quantization" not in json.loads((plain / "config.json").read_text())
    mine = assert_same(plain)
    assert np.abs(np.array(mine(mx.array([PROMPT]))) - expected).max() < 1e-4


def test_bad_quantization_records_are_named(checkpoints, tmp_path):
    folder = mlx_lm_convert(checkpoints["llama"], tmp_path / "q4", quantize=True, q_bits=4, q_group_size=64)
    config = json.loads((folder / "config.json").read_text())
    for record, message in [
        ({"group_size": 64, "bits": 7}, "asks for 7-bit affine quantization with group size 64, which MLX"),
        ({"group_size": 64, "bits": 4, "mode": "int4x"}, "asks for 4-bit int4x quantization"),
        ({"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"bits": 9}},
         "quantization of model.layers.0.mlp.down_proj asks for 9-bit affine"),
    ]:
        (folder / "config.json").write_text(json.dumps({**config, "quantization": record}))
        with pytest.raises(ValueError, match=message):
            load_model(folder)
    hf = {key: value for key, value in config.items() if key != "quantization"}
    (folder / "config.json").write_text(json.dumps({**hf, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    with pytest.raises(ValueError, match="quant_method 'gptq'.* is not an MLX quantization"):
        load_model(folder)


def test_cli_names_a_mode_this_mlx_cannot_run_and_exits_2(checkpoints, tmp_path):
    from click.testing import CliRunner
    from mlx_llm_cli.main import main

    folder = mlx_lm_convert(checkpoints["gpt2"], tmp_path / "q4", quantize=True, q_bits=4, q_group_size=64)
    config = json.loads((folder / "config.json").read_text())
    config["quantization"] = config["quantization_config"] = {"group_size": 64, "bits": 4, "mode": "int4x"}
    (folder / "config.json").write_text(json.dumps(config))
    for command in (["info", str(folder)], ["generate", "--model", str(folder), "--prompt", "hi"],
                    ["convert", str(folder), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            "Error: config.json's quantization asks for 4-bit int4x quantization with group size 64, which MLX "
            f"{mx.__version__} cannot run (Invalid quantization mode 'int4x'.)"]


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("quantize", [False, True])
def test_encoder_families_are_written_with_hugging_face_names(tmp_path, family, quantize):
    from mlx_llm.model_files.loading import quantization_predicate

    torch.manual_seed(0)
    if family == "bert":
        hf = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64))
    else:
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    convert(tmp_path / "hf", tmp_path / "out", quantize=quantize, bits=4, group_size=32)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mlx_llm"]["format_version"] == 3
    # Every tensor under a transformers name (a quantized layer's scales and biases beside its weight).
    written = {name[:-len(".scales")] + ".weight" if name.endswith((".scales", ".biases")) else name
               for name in mx.load(str(tmp_path / "out" / "model.safetensors"))}
    assert written <= set(mx.load(str(tmp_path / "hf" / "model.safetensors")))

    reference, _ = load_model(tmp_path / "hf")
    if quantize:
        import mlx.nn as nn

        nn.quantize(reference, group_size=32, bits=4, class_predicate=quantization_predicate(32))
    mine, _ = load_model(tmp_path / "out")
    ids = mx.array([PROMPT[:8]]) % 128
    inputs = (ids,) if family == "bert" else (ids, ids[:, :5])
    outputs = [model(*inputs) for model in (mine, reference)]  # a masked-LM BERT's logits are its MLM logits
    np.testing.assert_allclose(np.array(outputs[0]), np.array(outputs[1]), atol=1e-6, rtol=0)
