"""`export_to_hf`: converted checkpoints of every exportable family and task load in
`transformers` with the matching class and give the MLX model's outputs."""

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mlx_llm.model_files.export import dequantize_model, export_to_hf, hf_architecture  # noqa: E402
from mlx_llm.model_files.loading import convert, load_model  # noqa: E402

INPUT_IDS = [[5, 17, 33, 2, 64, 9, 11], [40, 3, 21, 0, 0, 0, 0]]
ATTENTION_MASK = [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
DISTIL = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
GPT2 = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
LLAMA = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)

CASES = {
    "bert-sequence": ("BertForSequenceClassification", "BertConfig", dict(TINY, num_labels=3)),
    "bert-token": ("BertForTokenClassification", "BertConfig", dict(TINY, num_labels=5)),
    "bert-pretraining": ("BertForPreTraining", "BertConfig", TINY),
    "roberta-sequence": ("RobertaForSequenceClassification", "RobertaConfig", dict(TINY, type_vocab_size=1, num_labels=3)),
    "distilbert-sequence": ("DistilBertForSequenceClassification", "DistilBertConfig", dict(DISTIL, num_labels=3)),
    "distilbert-mlm": ("DistilBertForMaskedLM", "DistilBertConfig", DISTIL),
    "gpt2-lm": ("GPT2LMHeadModel", "GPT2Config", GPT2),
    "gpt2-sequence": ("GPT2ForSequenceClassification", "GPT2Config", dict(GPT2, num_labels=3, pad_token_id=0)),
    "llama-sequence": ("LlamaForSequenceClassification", "LlamaConfig", dict(LLAMA, num_labels=3, pad_token_id=0)),
    "llama-lm": ("LlamaForCausalLM", "LlamaConfig", LLAMA),
}


def mlx_logits(model, input_ids, attention_mask):
    return np.array(model(mx.array(input_ids), mx.array(attention_mask)))  # the head's logits, every family


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip(case, tmp_path):
    class_name, config_name, options = CASES[case]
    torch.manual_seed(0)
    getattr(transformers, class_name)(getattr(transformers, config_name)(**options)).save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "mlx")
    model, config = load_model(tmp_path / "mlx")
    assert hf_architecture(config["model_type"], model.args.task) == class_name
    export_to_hf(tmp_path / "mlx", tmp_path / "export")
    exported = getattr(transformers, class_name).from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        output = exported(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK))
    expected = mlx_logits(model, INPUT_IDS, ATTENTION_MASK)
    got = (output.logits if hasattr(output, "logits") else output.prediction_logits).numpy()
    if got.ndim == 3:  # per-token outputs: padded positions are not compared
        real = np.array(ATTENTION_MASK, dtype=bool)
        got, expected = got[real], expected[real]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(FileExistsError):
        export_to_hf(tmp_path / "mlx", tmp_path / "export")


def test_quantized_model_exports_dequantized(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(LLAMA, hidden_size=64, intermediate_size=64))
                                  ).save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "q4", quantize=True, bits=4, group_size=32)
    quantized, _ = load_model(tmp_path / "q4")
    expected = mlx_logits(quantized, INPUT_IDS, ATTENTION_MASK)
    assert dequantize_model(quantized) > 0
    np.testing.assert_allclose(mlx_logits(quantized, INPUT_IDS, ATTENTION_MASK), expected, atol=1e-4)
    export_to_hf(tmp_path / "q4", tmp_path / "export")
    exported = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        got = exported(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK)).logits.numpy()
    real = np.array(ATTENTION_MASK, dtype=bool)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4)
