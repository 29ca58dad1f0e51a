"""Evaluation metrics: hand-computed golden values, then cross-checks against
seqeval, scikit-learn and SciPy where they are installed."""

import math
import warnings

import numpy as np
import pytest

from mlx_llm.training.metrics import (
    accuracy,
    classification_metrics,
    entity_scores,
    f1_scores,
    get_entities,
    macro_f1,
    multilabel_metrics,
    perplexity,
    regression_metrics,
)

# --- classification ----------------------------------------------------------

# Worked by hand, per class (tp, predicted, true):
#   0: tp 2, pred 4, true 3 -> P 1/2, R 2/3, F1 4/7
#   1: tp 1, pred 2, true 2 -> P 1/2, R 1/2, F1 1/2
#   2: tp 2, pred 3, true 4 -> P 2/3, R 1/2, F1 4/7
THREE_CLASS_LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2]
THREE_CLASS_PREDICTIONS = [0, 1, 0, 1, 2, 2, 2, 0, 0]


def test_accuracy_and_macro_f1_on_three_classes_match_hand_computation():
    assert accuracy(THREE_CLASS_PREDICTIONS, THREE_CLASS_LABELS) == pytest.approx(5 / 9)
    scores = f1_scores(np.array(THREE_CLASS_PREDICTIONS), np.array(THREE_CLASS_LABELS))
    assert scores["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 4 / 7) / 3)
    assert scores["per_class"][0] == pytest.approx({"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert scores["per_class"][1] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert scores["per_class"][2] == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "support": 4})
    assert all(type(label) is int for label in scores["per_class"])
    assert macro_f1(THREE_CLASS_PREDICTIONS, THREE_CLASS_LABELS) == pytest.approx(23 / 42)


def test_macro_f1_averages_over_classes_in_labels_or_predictions_only():
    # Class 3 is only predicted (F1 0, counted); class 4 never occurs (not counted).
    scores = f1_scores([0, 1, 3], [0, 1, 1], num_labels=5)
    assert sorted(scores["per_class"]) == [0, 1, 3]
    assert scores["per_class"][3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_classification_metrics_reports_f1_of_class_one_for_binary_tasks():
    # Class 1: tp 1, pred 2, true 2 -> F1 1/2; class 0: tp 1, pred 2, true 2 -> F1 1/2.
    binary = classification_metrics([1, 1, 0, 0], [1, 0, 1, 0])
    assert binary == pytest.approx({"accuracy": 0.5, "macro_f1": 0.5, "f1": 0.5})
    # Class 1 never occurs: its F1 is 0 by the zero-division rule.
    assert classification_metrics([0, 0], [0, 0])["f1"] == 0.0
    assert "f1" not in classification_metrics(THREE_CLASS_PREDICTIONS, THREE_CLASS_LABELS)
    assert "f1" not in classification_metrics([0, 1], [1, 0], num_labels=3)


def test_classification_errors_name_the_problem():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="1-D"):
        f1_scores([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 3\)"):
        f1_scores([0, 1], [0, 7], num_labels=3)


def test_f1_scores_match_scikit_learn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        size, num_classes = rng.integers(1, 30), rng.integers(2, 6)
        labels, predictions = rng.integers(0, num_classes, size), rng.integers(0, num_classes, size)
        classes = np.union1d(labels, predictions)
        precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
            labels, predictions, labels=classes, zero_division=0
        )
        scores = f1_scores(predictions, labels)
        assert scores["macro_f1"] == pytest.approx(
            sklearn_metrics.f1_score(labels, predictions, average="macro", labels=classes, zero_division=0)
        )
        for i, cls in enumerate(classes):
            expected = {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
            assert scores["per_class"][int(cls)] == pytest.approx(expected)


# --- regression --------------------------------------------------------------


def test_regression_metrics_match_hand_computation_with_ties():
    # Ranks of the predictions are [1, 2.5, 2.5, 4]; of the targets [1, 3, 2, 4].
    # Centered: [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5] -> 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    metrics = regression_metrics([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert metrics["mse"] == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert metrics["spearman"] == pytest.approx(math.sqrt(0.9))
    # Centered values [-1, 0, 0, 1] and [-1.5, .5, -.5, 1.5] -> 3 / sqrt(2 * 5).
    assert metrics["pearson"] == pytest.approx(3 / math.sqrt(10))


def test_spearman_sees_only_order_and_constant_input_gives_nan():
    values = np.array([0.5, 3.0, 1.0, 7.0, 2.0])
    metrics = regression_metrics(values, np.exp(values))
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["pearson"] < 0.99
    assert regression_metrics(values, -values)["spearman"] == pytest.approx(-1.0)
    constant = regression_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        regression_metrics([1.0, 2.0], [1.0, 2.0, 3.0])


def test_regression_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(20):
        # Rounding makes ties common, which is where rank averaging matters.
        predictions, targets = np.round(rng.normal(size=(2, 40)), 1)
        metrics = regression_metrics(predictions, targets)
        assert metrics["pearson"] == pytest.approx(stats.pearsonr(predictions, targets)[0])
        assert metrics["spearman"] == pytest.approx(stats.spearmanr(predictions, targets)[0])


# --- multi-label ---------------------------------------------------------------

MULTILABEL_TARGETS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
MULTILABEL_PROBABILITIES = np.array([[0.9, 0.2, 0.4, 0.1], [0.1, 0.7, 0.6, 0.0], [0.8, 0.6, 0.1, 0.3]])


def test_multilabel_metrics_match_hand_computation():
    # Predicted [[1,0,0,0],[0,1,1,0],[1,1,0,0]]: tp 4, fp 1, fn 1 -> micro 8/10.
    # Per label F1: 1, 1, 0; the last label is never positive and is left out.
    metrics = multilabel_metrics(MULTILABEL_PROBABILITIES, MULTILABEL_TARGETS)
    assert metrics == pytest.approx({"micro_f1": 0.8, "macro_f1": 2 / 3, "exact_match": 1 / 3})
    # A threshold of 0.65 drops (1,2) and (2,1): tp 3, fp 0, fn 2 -> micro 6/8;
    # per label F1 1, 2/3, 0; only row 1 is exactly right.
    metrics = multilabel_metrics(MULTILABEL_PROBABILITIES, MULTILABEL_TARGETS, threshold=0.65)
    assert metrics == pytest.approx({"micro_f1": 0.75, "macro_f1": (1 + 2 / 3 + 0) / 3, "exact_match": 1 / 3})


def test_multilabel_metrics_accepts_hard_predictions_and_checks_shapes():
    perfect = multilabel_metrics(MULTILABEL_TARGETS, MULTILABEL_TARGETS)
    assert perfect == {"micro_f1": 1.0, "macro_f1": 1.0, "exact_match": 1.0}
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 3\)"):
        multilabel_metrics(MULTILABEL_PROBABILITIES, MULTILABEL_TARGETS[:, :3])


def test_multilabel_metrics_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for _ in range(20):
        targets = (rng.random((12, 5)) < 0.3).astype(int)
        probabilities = rng.random((12, 5))
        predicted = (probabilities >= 0.5).astype(int)
        present = np.flatnonzero(targets.any(0) | predicted.any(0))
        metrics = multilabel_metrics(probabilities, targets)
        assert metrics["micro_f1"] == pytest.approx(
            sklearn_metrics.f1_score(targets, predicted, average="micro", zero_division=0)
        )
        assert metrics["macro_f1"] == pytest.approx(
            sklearn_metrics.f1_score(targets, predicted, average="macro", labels=present, zero_division=0)
        )
        assert metrics["exact_match"] == pytest.approx(sklearn_metrics.accuracy_score(targets, predicted))


# --- sequence labeling -------------------------------------------------------


def test_leading_i_tag_is_an_entity_in_default_mode_only():
    tags = ["I-PER", "I-PER", "O", "B-LOC"]
    assert get_entities(tags) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(tags, mode="strict") == [("LOC", 3, 3)]


def test_type_change_inside_a_run_splits_the_entity():
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    assert get_entities(["B-PER", "I-LOC"], mode="strict") == [("PER", 0, 0)]
    # B- of the same type always starts a new entity.
    assert get_entities(["B-PER", "I-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 2, 2)]


def test_iobes_single_and_end_tags():
    tags = ["S-PER", "B-LOC", "I-LOC", "E-LOC", "O", "E-ORG", "S-ORG"]
    # Default mode: a lone E- is a one-token entity; strict mode drops it.
    assert get_entities(tags, "IOBES") == [("PER", 0, 0), ("LOC", 1, 3), ("ORG", 5, 5), ("ORG", 6, 6)]
    assert get_entities(tags, "BIOES", mode="strict") == [("PER", 0, 0), ("LOC", 1, 3), ("ORG", 6, 6)]
    # E- closes its entity, so a second E- starts another.
    assert get_entities(["B-PER", "E-PER", "E-PER"], "IOBES") == [("PER", 0, 1), ("PER", 2, 2)]
    assert get_entities(["B-PER", "E-PER", "E-PER"], "IOBES", mode="strict") == [("PER", 0, 1)]
    # Strict IOBES needs the closing E-; a run cut off by O is no entity.
    assert get_entities(["B-PER", "I-PER", "O", "S-LOC"], "IOBES") == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["B-PER", "I-PER", "O", "S-LOC"], "IOBES", mode="strict") == [("LOC", 3, 3)]


def test_entity_scores_on_two_sentences_with_partial_matches():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "B-PER", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O", "O", "O"]]
    # True: PER(0,0-1) LOC(0,3) ORG(1,0) PER(1,2). Predicted: PER(0,0-1) LOC(0,3-4) ORG(1,0).
    # The LOC boundary is wrong: a false positive and a false negative. tp 2, pred 3, true 4.
    scores = entity_scores(predicted, true)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(2 * 2 / (3 + 4))
    assert list(scores["per_type"]) == ["LOC", "ORG", "PER"]
    assert scores["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["ORG"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["per_type"]["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})


def test_type_only_predicted_is_reported_with_zero_support_and_no_entities_score_zero():
    scores = entity_scores([["B-MISC", "O"]], [["O", "O"]])
    assert scores["per_type"] == {"MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}


def test_entities_never_span_sentences():
    # A PER at the end of sentence 0 and an I-PER at the start of sentence 1 are two entities;
    # run together they would be one PER at tokens 1-2 and both would be wrong.
    true = [["O", "B-PER"], ["B-PER", "O"]]
    predicted = [["O", "B-PER"], ["I-PER", "O"]]
    assert entity_scores(predicted, true)["f1"] == 1.0
    strict = entity_scores(predicted, true, mode="strict")
    assert (strict["precision"], strict["recall"]) == (1.0, 0.5)


def test_sequence_labeling_errors_name_the_problem():
    with pytest.raises(ValueError, match="2 predicted sentences for 1 true"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 1 has 3 predicted tags for 2 true tags"):
        entity_scores([["O"], ["O", "O", "O"]], [["O"], ["O", "O"]])
    with pytest.raises(ValueError, match=r"bad tag 'X-PER' at sentence 1, position 2"):
        entity_scores([["O"], ["O", "O", "X-PER"]], [["O"], ["O", "O", "O"]])
    with pytest.raises(ValueError, match="bad tag 'S-PER' at position 0.*IOB2"):
        get_entities(["S-PER"])
    with pytest.raises(ValueError, match="bad tag 'B' at position 1"):
        get_entities(["O", "B"])
    with pytest.raises(ValueError, match="one per sentence"):
        entity_scores(["B-PER", "O"], ["B-PER", "O"])
    with pytest.raises(ValueError, match="unknown tagging scheme 'BILOU'"):
        get_entities(["O"], scheme="BILOU")
    with pytest.raises(ValueError, match="unknown mode 'lenient'"):
        get_entities(["O"], mode="lenient")
    with pytest.raises(ValueError, match="strict mode is not supported for IOB1"):
        get_entities(["O"], scheme="IOB1", mode="strict")


def random_tag_sequences(rng, prefixes, num_sentences):
    types = ["PER", "LOC", "ORG"]
    choices = ["O"] * 3 + [f"{prefix}-{entity_type}" for prefix in prefixes for entity_type in types]
    true = [list(rng.choice(choices, size=rng.integers(0, 9))) for _ in range(num_sentences)]
    # Predictions copy the truth with some tags redrawn, so that some entities match.
    predicted = [[tag if rng.random() < 0.7 else str(rng.choice(choices)) for tag in tags] for tags in true]
    return [[str(tag) for tag in tags] for tags in true], predicted


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES"])
@pytest.mark.parametrize("mode", ["default", "strict"])
def test_entity_scores_match_seqeval_on_random_tags(scheme, mode):
    pytest.importorskip("seqeval")
    from seqeval.metrics import v1
    from seqeval.metrics import sequence_labeling
    from seqeval.scheme import IOB2, IOBES, Tokens

    seqeval_scheme = {"IOB2": IOB2, "IOBES": IOBES}[scheme]
    rng = np.random.default_rng(3)
    for _ in range(150):
        true, predicted = random_tag_sequences(rng, "BI" if scheme == "IOB2" else "BIES", rng.integers(1, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns on zero division
            if mode == "default":
                per_type = sequence_labeling.precision_recall_fscore_support(true, predicted)
                micro = sequence_labeling.precision_recall_fscore_support(true, predicted, average="micro")
                for tags in true + predicted:
                    assert get_entities(tags, scheme) == sequence_labeling.get_entities(tags)
            else:
                per_type = v1.precision_recall_fscore_support(true, predicted, scheme=seqeval_scheme)
                micro = v1.precision_recall_fscore_support(true, predicted, average="micro", scheme=seqeval_scheme)
                for tags in true + predicted:
                    expected = [(e.tag, e.start, e.end - 1) for e in Tokens(tags, seqeval_scheme).entities]
                    assert get_entities(tags, scheme, mode="strict") == expected
        scores = entity_scores(predicted, true, scheme=scheme, mode=mode)
        assert [scores["precision"], scores["recall"], scores["f1"]] == pytest.approx(list(micro[:3]))
        # seqeval gives (precision, recall, f1, support) arrays over the types sorted by name.
        actual = [[s["precision"], s["recall"], s["f1"], s["support"]] for s in scores["per_type"].values()]
        np.testing.assert_allclose(np.reshape(actual, (-1, 4)), np.reshape(np.transpose(per_type), (-1, 4)))


# --- perplexity ----------------------------------------------------------------


def test_perplexity_is_exp_of_loss_and_saturates_to_inf():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(700.0) == pytest.approx(math.exp(700.0))
    assert perplexity(800.0) == math.inf
    assert math.isnan(perplexity(math.nan))
