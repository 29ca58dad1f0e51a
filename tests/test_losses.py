"""Loss functions against NumPy."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.training.losses import bert_pretraining_loss, causal_lm_loss, cross_entropy, masked_lm_loss, next_sentence_loss


def numpy_cross_entropy(logits, targets):
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_cross_entropy_matches_numpy_and_ignores_index():
    logits = mx.random.normal((2, 4, 7)) * 3
    targets = np.array([[1, 2, -100, 6], [0, -100, -100, 3]])
    per_token = numpy_cross_entropy(np.array(logits), np.maximum(targets, 0))
    keep = targets != -100
    np.testing.assert_allclose(
        np.array(cross_entropy(logits, mx.array(targets), reduction="none")), per_token * keep, atol=1e-5
    )
    np.testing.assert_allclose(float(cross_entropy(logits, mx.array(targets))), per_token[keep].mean(), atol=1e-5)
    np.testing.assert_allclose(
        float(cross_entropy(logits, mx.array(targets), reduction="sum")), per_token[keep].sum(), atol=1e-4
    )


def test_cross_entropy_golden_value_and_edge_cases():
    # Uniform logits over 4 classes: loss = log 4 exactly.
    assert float(cross_entropy(mx.zeros((3, 4)), mx.array([0, 1, 3]))) == pytest.approx(np.log(4), abs=1e-6)
    # Everything ignored: mean is 0, not NaN.
    assert float(cross_entropy(mx.zeros((2, 4)), mx.array([-100, -100]))) == 0.0
    # A -inf logit on a wrong class is harmless.
    logits = mx.array([[0.0, -mx.inf, 0.0]])
    assert float(cross_entropy(logits, mx.array([0]))) == pytest.approx(np.log(2), abs=1e-6)
    with pytest.raises(ValueError, match=r"need targets of shape \(2,\), got \(3,\)"):
        cross_entropy(mx.zeros((2, 4)), mx.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        cross_entropy(mx.zeros((2, 4)), mx.array([0, 1]), reduction="avg")


def test_causal_lm_loss_shifts_like_transformers():
    import torch

    logits = mx.random.normal((2, 5, 11))
    labels = np.array([[1, 2, 3, 4, 5], [6, 7, -100, -100, -100]])
    ours = float(causal_lm_loss(logits, mx.array(labels)))
    reference = torch.nn.functional.cross_entropy(
        torch.tensor(np.array(logits))[:, :-1].reshape(-1, 11), torch.tensor(labels)[:, 1:].reshape(-1),
        ignore_index=-100)
    assert ours == pytest.approx(float(reference), abs=1e-5)
    with pytest.raises(ValueError, match=r"logits \(B, L, V\) and labels \(B, L\)"):
        causal_lm_loss(logits, mx.array(labels[:, :4]))


def test_bert_pretraining_loss_equals_transformers(tmp_path):
    import torch
    import transformers

    from mlx_llm.model_files.loading import load_model

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    reference = transformers.BertForPreTraining(config).eval()
    input_ids = torch.tensor([[2, 5, 6, 3, 7, 8, 3], [2, 9, 3, 10, 3, 0, 0]])
    attention_mask = (input_ids != 0).long()
    token_type_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[0, 1], mlm_labels[0, 5], mlm_labels[1, 3] = 11, 12, 13
    nsp_labels = torch.tensor([0, 1])
    with torch.no_grad():
        out = reference(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        labels=mlm_labels, next_sentence_label=nsp_labels)
    # The same weights in MLX, the same batch: our model's heads and our losses.
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load_model(tmp_path)
    output = model.forward(mx.array(input_ids.numpy()), mx.array(attention_mask.numpy()),
                           mx.array(token_type_ids.numpy()))
    ours = bert_pretraining_loss(output.mlm_logits, mx.array(mlm_labels.numpy()), output.nsp_logits,
                                 mx.array(nsp_labels.numpy()))
    assert float(ours) == pytest.approx(float(out.loss), abs=1e-5)
    nsp = float(next_sentence_loss(mx.array(out.seq_relationship_logits.numpy()), mx.array(nsp_labels.numpy())))
    mlm = float(masked_lm_loss(mx.array(out.prediction_logits.numpy()), mx.array(mlm_labels.numpy())))
    assert mlm + nsp == pytest.approx(float(ours), abs=1e-6)
    with pytest.raises(ValueError, match=r"\(batch, 2\) logits"):
        next_sentence_loss(mx.zeros((2, 3)), mx.array([0, 1]))


def test_binary_cross_entropy_and_mse_match_numpy():
    from mlx_llm.training.losses import binary_cross_entropy_with_logits, mean_squared_error

    logits = np.array([[2.0, -1.0, 0.0], [-30.0, 40.0, 0.5]], dtype=np.float32)
    targets = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    z = logits.astype(np.float64)
    expected = np.logaddexp(0.0, z) - targets * z  # -log sigmoid(z) for y=1, -log(1 - sigmoid(z)) for y=0
    got = binary_cross_entropy_with_logits(mx.array(logits), mx.array(targets), reduction="none")
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)
    assert float(binary_cross_entropy_with_logits(mx.array(logits), mx.array(targets))) == pytest.approx(expected.mean(), rel=1e-5)
    predictions, values = mx.array([[1.0], [2.5], [-1.0]]), mx.array([0.5, 2.0, 1.0])
    assert float(mean_squared_error(predictions, values)) == pytest.approx((0.25 + 0.25 + 4.0) / 3)
    assert float(mean_squared_error(predictions, values, reduction="sum")) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_squared_error(mx.array([1.0, 2.0]), mx.array([1.0]))
