"""The model contract (`mlx_llm.models` docstring): every family module and ``Model``
provide the interface; ``mx.eval`` on ``model(...)`` and ``model.forward(...)``
really computes; hidden states match transformers' ``output_hidden_states``."""

import inspect
import io

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers

from mlx_llm import models
from mlx_llm.blocks.feed_forward import ACTIVATIONS, HF_ACTIVATIONS, hf_activation
from mlx_llm.model_files.loading import load_model
from mlx_llm.blocks.model_output import DECODER, ENCODER, ENCODER_DECODER, KINDS, BertOutput, ModelOutput
from mlx_llm.models import bert, gpt2, llama, t5

from test_models_decoder import ATTENTION_MASK, INPUT_IDS, gpt2_config, llama_config, save_tiny


def evaluated(array: mx.array) -> bool:
    """Whether ``array`` holds computed data: the graph MLX exports for it is one bare node."""
    dot = io.StringIO()
    mx.export_to_dot(dot, array)
    return "shape=rectangle" not in dot.getvalue()  # rectangles are pending primitives


@pytest.mark.parametrize("model_type", sorted(models.FAMILIES))
def test_every_family_provides_the_interface(model_type):
    family = models.get_family(model_type)
    info = family.MODEL_TYPES[model_type]
    assert isinstance(info, models.ModelType) and info.display_name and info.hf_prefix
    assert models.model_type_info(model_type) is info
    for name in ("ModelArgs", "Model", "hf_architecture", "convert_hf_weights", "export_hf_weights"):
        assert hasattr(family, name), f"models/{models.FAMILIES[model_type]}.py lacks {name}"
    assert callable(family.ModelArgs.from_config)
    assert family.Model.kind in KINDS
    own = [vars(cls) for cls in family.Model.__mro__ if issubclass(cls, nn.Module) and cls is not nn.Module]
    for method in ("forward", "__call__", "make_cache", "layers"):
        assert any(method in names for names in own), f"{model_type} Model lacks {method}"
    assert "output_hidden_states" in inspect.signature(family.Model.forward).parameters


def test_tables_follow_the_families():
    from mlx_llm import distill, finetune

    assert finetune.ENCODERS == ("bert", "roberta", "distilbert")
    assert {"gpt2", "llama", "qwen3"} <= set(finetune.DECODERS) and "t5" not in finetune.DECODERS + finetune.ENCODERS
    assert distill.LAYER_KEYS["distilbert"] == "n_layers" and distill.WIDTH_KEYS["gpt2"] == "n_embd"
    assert distill.ENCODERS == finetune.ENCODERS
    assert [gpt2.hf_architecture("gpt2", task) for task in ("causal_lm", "token_classification")] == [
        "GPT2LMHeadModel", "GPT2ForTokenClassification"]
    assert llama.hf_architecture("qwen2", "sequence_classification") == "Qwen2ForSequenceClassification"
    assert models.get_family("olmo2").hf_architecture("olmo2", "causal_lm") == "Olmo2ForCausalLM"
    assert bert.hf_architecture("distilbert", "masked_lm") == "DistilBertForMaskedLM"
    assert t5.hf_architecture("t5", "seq2seq_lm") == "T5ForConditionalGeneration"
    with pytest.raises(ValueError, match="no 'masked_lm' task"):
        gpt2.hf_architecture("gpt2", "masked_lm")


def test_model_output_is_a_tree_with_attributes():
    logits, hidden = mx.ones((2, 3)) * 2, mx.ones((2, 3, 4)) + 1
    output = ModelOutput(logits=logits, hidden_states=[hidden])
    assert output.logits is output["logits"] and output.mlm_logits is None and output.pooler_output is None
    with pytest.raises(AttributeError, match="'logtis'"):
        output.logtis
    output.last_hidden_state = hidden
    assert set(output) == {"logits", "hidden_states", "last_hidden_state"} and BertOutput is ModelOutput
    assert not evaluated(logits) and not evaluated(hidden)
    mx.eval(output)
    assert evaluated(logits) and evaluated(hidden)


def test_model_output_of_leaves_out_what_a_pass_did_not_produce():
    logits = mx.zeros((1, 2))
    output = ModelOutput.of(logits=logits, hidden_states=None, pooler_output=None, last_hidden_state=logits)
    assert set(output) == {"logits", "last_hidden_state"} and output.hidden_states is None
    assert isinstance(output, ModelOutput) and output.logits is logits


_SIZES = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=32)
TINY_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 40, "n_positions": 32, "n_embd": 16, "n_layer": 2, "n_head": 2},
    "llama": {"model_type": "llama", **_SIZES},
    "qwen3": {"model_type": "qwen3", **_SIZES, "head_dim": 8},
    "smollm3": {"model_type": "smollm3", **_SIZES},
    "olmo2": {"model_type": "olmo2", **_SIZES},
    "bert-base": {"model_type": "bert", **_SIZES},
    "bert-pretraining": {"model_type": "bert", **_SIZES, "architectures": ["BertForPreTraining"]},
    "roberta-sequence": {"model_type": "roberta", **_SIZES, "architectures": ["RobertaForSequenceClassification"]},
    "t5": {"model_type": "t5", "vocab_size": 40, "d_model": 16, "d_kv": 8, "d_ff": 24, "num_layers": 2, "num_heads": 2,
           "dropout_rate": 0.0},
}


def tiny_model(name: str) -> nn.Module:
    """A small random model of ``TINY_CONFIGS[name]``, parameters evaluated, in eval mode."""
    config = TINY_CONFIGS[name]
    family = models.get_family(config["model_type"])
    model = family.Model(family.ModelArgs.from_config(config)).eval()
    mx.eval(model.parameters())
    return model


def run(model, forward: bool):
    ids, mask = mx.array(INPUT_IDS) % 40, mx.array(ATTENTION_MASK)
    call = model.forward if forward else model
    if model.kind == ENCODER_DECODER:
        return call(ids, ids[:, :4], mask)
    return call(ids, mask)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_mx_eval_computes_call_and_forward(name):
    model = tiny_model(name)
    logits = run(model, forward=False)
    assert isinstance(logits, mx.array) and not evaluated(logits)
    mx.eval(logits)
    assert evaluated(logits)

    output = run(model, forward=True)
    assert isinstance(output, ModelOutput)
    arrays = [output.logits, output.last_hidden_state] + [output[key] for key in ("pooler_output", "mlm_logits",
                                                                                   "nsp_logits") if key in output]
    assert not any(evaluated(array) for array in arrays)
    mx.eval(output)
    assert all(evaluated(array) for array in arrays)
    np.testing.assert_array_equal(np.array(output.logits), np.array(logits))  # __call__ is forward().logits

    if model.kind == ENCODER:
        with pytest.raises(ValueError, match="keeps no KV cache"):
            model.make_cache()
        expected = {"bert-base": "last_hidden_state", "bert-pretraining": "mlm_logits"}.get(name)
        if expected:
            assert output.logits is output[expected]
    else:
        assert len(model.make_cache()) == len(model.decoder.layers if model.kind == ENCODER_DECODER else model.layers)


@pytest.mark.parametrize("name, model_class, config", [
    ("gpt2", transformers.GPT2LMHeadModel, gpt2_config()),
    ("llama", transformers.LlamaForCausalLM, llama_config(num_key_value_heads=2)),
])
def test_decoder_hidden_states_match_transformers(tmp_path, name, model_class, config):
    reference = save_tiny(model_class, config, tmp_path)
    model, _ = load_model(tmp_path)
    assert model.kind == DECODER
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK),
                             output_hidden_states=True)
    output = model.forward(mx.array(INPUT_IDS), mx.array(ATTENTION_MASK), output_hidden_states=True)
    assert len(output.hidden_states) == len(expected.hidden_states) == config.num_hidden_layers + 1
    real = np.array(ATTENTION_MASK, dtype=bool)
    for index, (ours, theirs) in enumerate(zip(output.hidden_states, expected.hidden_states)):
        np.testing.assert_allclose(np.array(ours)[real], theirs.numpy()[real], atol=1e-4, rtol=0,
                                   err_msg=f"{name} hidden state {index}")
    assert output.hidden_states[-1] is output.last_hidden_state
    np.testing.assert_allclose(np.array(output.logits)[real], expected.logits.numpy()[real], atol=1e-4, rtol=0)
    assert model.forward(mx.array(INPUT_IDS)).hidden_states is None


def test_t5_hidden_states_match_transformers(tmp_path):
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_decoder_layers=3,
                                   num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   dropout_rate=0.0)
    reference = save_tiny(transformers.T5ForConditionalGeneration, config, tmp_path)
    model, _ = load_model(tmp_path)
    ids, mask = np.array(INPUT_IDS) % 40, np.array(ATTENTION_MASK)
    targets = ids[:, :4]
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(targets), output_hidden_states=True)
    output = model.forward(mx.array(ids), mx.array(targets), mx.array(mask), output_hidden_states=True)
    real = mask.astype(bool)
    assert len(output.encoder_hidden_states) == len(expected.encoder_hidden_states) == 3
    assert len(output.hidden_states) == len(expected.decoder_hidden_states) == 4
    for ours, theirs in zip(output.encoder_hidden_states, expected.encoder_hidden_states):
        np.testing.assert_allclose(np.array(ours)[real], theirs.numpy()[real], atol=1e-4, rtol=0)
    for ours, theirs in zip(output.hidden_states, expected.decoder_hidden_states):
        np.testing.assert_allclose(np.array(ours), theirs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(output.logits), expected.logits.numpy(), atol=1e-4, rtol=0)
    # The encoder's output, reused, gives the same logits without running the encoder again.
    again = model.forward(None, mx.array(targets), mx.array(mask), encoder_outputs=output.encoder_last_hidden_state)
    np.testing.assert_array_equal(np.array(again.logits), np.array(output.logits))


def test_config_readers_name_missing_keys_and_activations():
    with pytest.raises(ValueError, match=r"GPT-2 config.json lacks n_embd, n_head \(required"):
        gpt2.ModelArgs.from_config({"vocab_size": 10, "n_positions": 8, "n_layer": 1})
    with pytest.raises(ValueError, match=r"T5 config.json lacks d_kv \(required"):
        t5.ModelArgs.from_config({"vocab_size": 10, "d_model": 8, "d_ff": 8, "num_layers": 1, "num_heads": 1})
    with pytest.raises(ValueError, match="activation_function='quick_gelu' in config.json"):
        gpt2.ModelArgs.from_config({"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 1,
                                    "activation_function": "quick_gelu"})
    assert set(HF_ACTIVATIONS.values()) <= set(ACTIVATIONS)
    assert hf_activation("gelu_new", "hidden_act") == hf_activation("gelu_fast", "x") == "gelu_tanh"
    assert t5.parse_feed_forward_proj("gated-silu") == ("silu", True)
