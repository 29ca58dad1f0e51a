"""One fine-tuning step of sequence and token classification on a tiny random BERT:
the loss and every gradient equal those of `transformers` with the same weights and batch."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mlx_llm.model_files.loading import load_model  # noqa: E402
from mlx_llm.models import bert  # noqa: E402
from mlx_llm.training.objectives import SequenceClassificationObjective, TokenClassificationObjective  # noqa: E402

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
INPUT_IDS = [[2, 17, 33, 12, 64, 9, 3], [2, 40, 21, 3, 0, 0, 0], [2, 5, 6, 7, 8, 3, 0]]
ATTENTION_MASK = [[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]]


def step_of(model, objective, batch):
    def loss_fn(model):
        sums, counts = objective.sums(model, batch), objective.counts(batch)
        return sum(sums[name] / counts[name] for name in sums)

    return nn.value_and_grad(model, loss_fn)(model)


def torch_gradients(reference, arguments):
    reference.train()
    output = reference(**arguments)
    output.loss.backward()
    return float(output.loss.detach()), {name: p.grad.numpy() for name, p in reference.named_parameters() if p.grad is not None}


CASES = {
    "sequence-single": ("BertForSequenceClassification", dict(num_labels=3), "single_label"),
    "sequence-multi": ("BertForSequenceClassification", dict(num_labels=4, problem_type="multi_label_classification"),
                       "multi_label"),
    "sequence-regression": ("BertForSequenceClassification", dict(num_labels=1), "regression"),
    "token": ("BertForTokenClassification", dict(num_labels=5), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_matches_transformers(case, tmp_path):
    class_name, options, problem = CASES[case]
    torch.manual_seed(0)
    reference = getattr(transformers, class_name)(transformers.BertConfig(**TINY, **options))
    reference.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    model.train()  # dropout is 0: training mode changes nothing but must run
    rng = np.random.default_rng(0)
    if problem == "single_label":
        labels = np.array([2, 0, 1])
    elif problem == "multi_label":
        labels = rng.integers(0, 2, (3, 4)).astype(np.float32)
    elif problem == "regression":
        labels = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    else:  # word-start labels, -100 on specials, continuations and padding
        labels = np.array([[-100, 1, 4, -100, 0, 2, -100], [-100, 3, 3, -100, -100, -100, -100],
                           [-100, 0, -100, 1, 2, -100, -100]])
    torch_labels = torch.tensor(labels)
    loss_ref, grads_ref = torch_gradients(reference, dict(input_ids=torch.tensor(INPUT_IDS),
                                                          attention_mask=torch.tensor(ATTENTION_MASK),
                                                          labels=torch_labels))
    objective = SequenceClassificationObjective(problem) if problem else TokenClassificationObjective()
    batch = {"input_ids": mx.array(INPUT_IDS), "attention_mask": mx.array(ATTENTION_MASK), "labels": mx.array(labels)}
    loss, grads = step_of(model, objective, batch)
    assert float(loss) == pytest.approx(loss_ref, abs=1e-5)
    # Map transformers' gradient names through the same converter as the weights.
    converted = bert.convert_hf_weights({name: mx.array(value) for name, value in grads_ref.items()}, model.args)
    from mlx.utils import tree_flatten

    ours = dict(tree_flatten(grads))
    assert set(converted) <= set(ours)
    for name, expected in converted.items():
        np.testing.assert_allclose(np.array(ours[name]), np.array(expected), atol=1e-4, err_msg=name)
