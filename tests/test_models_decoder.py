"""GPT-2 and Llama-family checkpoints converted from tiny random `transformers`
models give the same hidden states and logits as PyTorch."""

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers

from mlx_llm.model_files.loading import load_model

INPUT_IDS = [[5, 17, 33, 2, 64, 9, 11], [40, 3, 21, 0, 0, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]


def save_tiny(model_class, config, path):
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def torch_outputs(model, input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                    output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


def assert_matches(mlx_model, reference_model):
    hidden_ref, logits_ref = torch_outputs(reference_model)
    input_ids, mask = mx.array(INPUT_IDS), mx.array(ATTENTION_MASK)
    hidden = np.array(mlx_model.model(input_ids, mask))
    logits = np.array(mlx_model(input_ids, mask))
    real = np.array(ATTENTION_MASK, dtype=bool)  # padded positions are not compared
    assert np.abs(hidden[real] - hidden_ref[real]).max() <= 1e-4
    assert np.abs(logits[real] - logits_ref[real]).max() <= 1e-4
    # The padded row equals the same input run alone.
    alone = np.array(mlx_model(mx.array([INPUT_IDS[1][:3]])))
    np.testing.assert_allclose(logits[1, :3], alone[0], atol=1e-4)


def gpt2_config(**overrides):
    options = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0)
    options.update(overrides)
    return transformers.GPT2Config(**options)


def llama_config(**overrides):
    options = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    options.update(overrides)
    return transformers.LlamaConfig(**options)


def test_gpt2_matches_transformers(tmp_path):
    reference = save_tiny(transformers.GPT2LMHeadModel, gpt2_config(), tmp_path)
    model, config = load_model(tmp_path)
    assert config["model_type"] == "gpt2" and model.args.tie_word_embeddings
    assert_matches(model, reference)


def test_gpt2_relu_and_n_inner(tmp_path):
    reference = save_tiny(transformers.GPT2LMHeadModel, gpt2_config(activation_function="relu", n_inner=40), tmp_path)
    model, _ = load_model(tmp_path)
    assert_matches(model, reference)


@pytest.mark.parametrize(
    "name, model_class, config",
    [
        ("llama-gqa", transformers.LlamaForCausalLM, llama_config(num_key_value_heads=2)),
        ("llama-mqa-tied", transformers.LlamaForCausalLM, llama_config(num_key_value_heads=1, tie_word_embeddings=True)),
        ("llama-linear-rope", transformers.LlamaForCausalLM,
         llama_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})),
        ("llama3-rope", transformers.LlamaForCausalLM,
         llama_config(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                       "rope_theta": 10000.0})),
        ("llama-biases-head-dim", transformers.LlamaForCausalLM,
         llama_config(attention_bias=True, mlp_bias=True, head_dim=16)),
        ("qwen2", transformers.Qwen2ForCausalLM,
         transformers.Qwen2Config(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                  tie_word_embeddings=True, max_position_embeddings=128)),
        ("mistral", transformers.MistralForCausalLM,
         transformers.MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                    max_position_embeddings=128)),
    ],
)
def test_llama_family_matches_transformers(tmp_path, name, model_class, config):
    reference = save_tiny(model_class, config, tmp_path)
    # Llama biases: give them values so that they are really compared.
    with torch.no_grad():
        for parameter_name, parameter in reference.named_parameters():
            if parameter_name.endswith("bias"):
                parameter.normal_()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load_model(tmp_path)
    assert_matches(model, reference)


def test_rope_scaling_in_transformers4_spelling(tmp_path):
    """Configs written by transformers 4.x carry rope_theta and rope_scaling."""
    reference = save_tiny(transformers.LlamaForCausalLM,
                          llama_config(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 300.0}),
                          tmp_path)
    config_path = tmp_path / "config.json"
    import json

    config = json.loads(config_path.read_text())
    config.pop("rope_parameters")
    config["rope_theta"] = 300.0
    config["rope_scaling"] = {"type": "linear", "factor": 4.0}
    config["torch_dtype"] = config.pop("dtype", "float32")
    config_path.write_text(json.dumps(config))
    model, _ = load_model(tmp_path)
    assert model.args.rope_theta == 300.0 and model.args.rope_scaling["factor"] == 4.0
    assert_matches(model, reference)


def test_incremental_decoding_equals_full_pass(tmp_path):
    save_tiny(transformers.LlamaForCausalLM, llama_config(num_key_value_heads=2), tmp_path)
    model, _ = load_model(tmp_path)
    tokens = mx.array([INPUT_IDS[0]])
    full = np.array(model(tokens))
    cache = model.make_cache()
    steps = [np.array(model(tokens[:, :3], cache=cache))]
    steps += [np.array(model(tokens[:, t : t + 1], cache=cache)) for t in range(3, tokens.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


# --- classification heads over decoders --------------------------------------------------

HEAD_CASES = {
    "gpt2-sequence": (transformers.GPT2ForSequenceClassification, gpt2_config),
    "gpt2-token": (transformers.GPT2ForTokenClassification, gpt2_config),
    "llama-sequence": (transformers.LlamaForSequenceClassification, llama_config),
    "llama-token": (transformers.LlamaForTokenClassification, llama_config),
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_decoder_classifiers_match_transformers(case, tmp_path):
    model_class, make_config = HEAD_CASES[case]
    # pad_token_id tells transformers where each row's last real token is (right padding).
    reference = save_tiny(model_class, make_config(num_labels=3, pad_token_id=0), tmp_path)
    model, _ = load_model(tmp_path)
    assert model.args.task == ("sequence_classification" if case.endswith("sequence") else "token_classification")
    input_ids, mask = mx.array(INPUT_IDS), mx.array(ATTENTION_MASK)
    logits = np.array(model(input_ids, mask))
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK)).logits
    if case.endswith("sequence"):
        assert logits.shape == (2, 3)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
        # Left padding picks the same last token.
        left_ids = mx.array([INPUT_IDS[0], [0, 0, 0, 0] + INPUT_IDS[1][:3]])
        left_mask = mx.array([ATTENTION_MASK[0], [0, 0, 0, 0, 1, 1, 1]])
        alone = np.array(model(mx.array([INPUT_IDS[1][:3]])))
        if case.startswith("llama"):  # rope positions are relative: left padding is harmless
            np.testing.assert_allclose(np.array(model(left_ids, left_mask))[1], alone[0], atol=1e-4)
        np.testing.assert_allclose(logits[1], alone[0], atol=1e-4)
    else:
        real = np.array(ATTENTION_MASK, dtype=bool)
        np.testing.assert_allclose(logits[real], expected.numpy()[real], atol=1e-4)


def test_causal_lm_checkpoint_loads_as_a_classifier(tmp_path):
    """An LM checkpoint becomes a classifier backbone: the LM head is dropped, the head is fresh."""
    from mlx_llm.models import llama

    save_tiny(transformers.LlamaForCausalLM, llama_config(), tmp_path)
    from mlx_llm.model_files.weight_files import find_weight_files, load_safetensors

    weights = load_safetensors(find_weight_files(tmp_path))
    config = {key: value for key, value in llama_config().to_dict().items() if key not in ("id2label", "label2id")}
    args = llama.ModelArgs.from_config({**config, "architectures": ["LlamaForSequenceClassification"], "num_labels": 4})
    converted = llama.convert_hf_weights(weights, args)
    assert "lm_head.weight" not in converted and not any(name.startswith("head.") for name in converted)
    model = llama.Model(args)
    model.load_weights(list(converted.items()), strict=False)
    assert model(mx.array(INPUT_IDS), mx.array(ATTENTION_MASK)).shape == (2, 4)
    with pytest.raises(ValueError, match="LlamaForQuestionAnswering"):
        llama.ModelArgs.from_config({**llama_config().to_dict(), "architectures": ["LlamaForQuestionAnswering"]})
