"""Knowledge-distillation losses against NumPy float64 and hand-computed values."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.training.losses import (
    attention_score_mse_loss,
    cosine_embedding_loss,
    forward_kl,
    hidden_mse_loss,
    jensen_shannon,
    pkd_loss,
    reverse_kl,
    soft_target_loss,
)

# --- NumPy float64 references, written from the papers' formulas -------------


def np_log_softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    shift = z.max(-1, keepdims=True)
    return z - shift - np.log(np.exp(z - shift).sum(-1, keepdims=True))


def np_softmax(logits, temperature=1.0):
    return np.exp(np_log_softmax(logits, temperature))


def np_kl(log_p, log_q):
    """sum_c p (log p - log q) with 0 log 0 = 0, from log-probabilities."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(-1)


def np_forward_kl(student, teacher, temperature=1.0):
    return np_kl(np_log_softmax(teacher, temperature), np_log_softmax(student, temperature))


def np_reverse_kl(student, teacher, temperature=1.0):
    return np_kl(np_log_softmax(student, temperature), np_log_softmax(teacher, temperature))


def np_jsd(student, teacher, beta, temperature=1.0):
    p, q = np_softmax(teacher, temperature), np_softmax(student, temperature)
    m = beta * p + (1 - beta) * q
    with np.errstate(divide="ignore"):
        log_p, log_q, log_m = np.log(p), np.log(q), np.log(m)
    return beta * np_kl(log_p, log_m) + (1 - beta) * np_kl(log_q, log_m)


def masked_mean(per_position, mask):
    return per_position[mask].sum() / mask.sum()


def random_logits(shape, scale=3.0):
    return (np.random.randn(*shape) * scale).astype(np.float32)


# --- KL and soft targets ------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 7.0])
def test_divergences_are_zero_for_identical_logits(temperature):
    logits = mx.array(random_logits((3, 5, 11), scale=10.0))
    assert abs(float(forward_kl(logits, logits, temperature=temperature))) <= 1e-7
    assert abs(float(reverse_kl(logits, logits, temperature=temperature))) <= 1e-7
    assert abs(float(soft_target_loss(logits, logits, temperature=temperature))) <= 1e-7
    assert abs(float(jensen_shannon(logits, logits, beta=0.3, temperature=temperature))) <= 1e-7
    assert np.abs(np.array(forward_kl(logits, logits, temperature=temperature, reduction="none"))).max() <= 1e-7


def test_two_class_golden_values():
    # Teacher logits (2 ln 3, 0) at T = 2 give p_t = (3/4, 1/4); student (0, 0) gives p_s = (1/2, 1/2).
    student = mx.array([[0.0, 0.0]])
    teacher = mx.array([[2 * math.log(3.0), 0.0]])
    # KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287
    forward = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert forward == pytest.approx(0.1308120, abs=1e-7)
    assert float(forward_kl(student, teacher, temperature=2.0)) == pytest.approx(0.1308120, abs=1e-6)
    assert float(soft_target_loss(student, teacher, temperature=2.0)) == pytest.approx(4 * 0.1308120, abs=1e-6)
    # KL(p_s || p_t) = 1/2 ln(2/3) + 1/2 ln 2
    assert float(reverse_kl(student, teacher, temperature=2.0)) == pytest.approx(0.1438410, abs=1e-6)
    # beta = 1/2: m = (5/8, 3/8); KL(p_t||m) = 0.0353749, KL(p_s||m) = 0.0322693
    assert float(jensen_shannon(student, teacher, beta=0.5, temperature=2.0)) == pytest.approx(0.0338221, abs=1e-6)


def test_forward_kl_and_soft_target_match_numpy_with_mask():
    student, teacher = random_logits((3, 5, 13)), random_logits((3, 5, 13))
    mask = np.random.rand(3, 5) > 0.4
    mask[0, 0] = True
    temperature = 2.5
    per_position = np_forward_kl(student, teacher, temperature)
    args = (mx.array(student), mx.array(teacher))

    none = np.array(forward_kl(*args, mask=mx.array(mask), temperature=temperature, reduction="none"))
    np.testing.assert_allclose(none, per_position * mask, atol=1e-6)
    assert np.all(none[~mask] == 0)
    np.testing.assert_allclose(
        float(forward_kl(*args, mask=mx.array(mask), temperature=temperature)), masked_mean(per_position, mask),
        rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(
        float(forward_kl(*args, mask=mx.array(mask), temperature=temperature, reduction="sum")),
        per_position[mask].sum(), rtol=1e-5, atol=1e-5,
    )
    # The T^2 scaling, for every reduction; a 0/1 float mask works like a boolean one.
    float_mask = mx.array(mask.astype(np.float32))
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_allclose(
            np.array(soft_target_loss(*args, temperature=temperature, mask=float_mask, reduction=reduction)),
            temperature**2 * np.array(forward_kl(*args, mask=mx.array(mask), temperature=temperature,
                                                 reduction=reduction)),
            rtol=1e-6, atol=1e-7,
        )
    np.testing.assert_allclose(
        float(soft_target_loss(*args, temperature=temperature, mask=mx.array(mask))),
        temperature**2 * masked_mean(per_position, mask), rtol=1e-5,
    )


def test_masked_positions_contribute_nothing_and_mean_counts_kept_positions():
    student, teacher = random_logits((2, 4, 6)), random_logits((2, 4, 6))
    mask = np.array([[True, True, False, False], [True, False, False, False]])
    base = float(soft_target_loss(mx.array(student), mx.array(teacher), mask=mx.array(mask)))
    # Garbage (even inf/NaN-producing) logits at masked-out positions change nothing.
    student_changed, teacher_changed = student.copy(), teacher.copy()
    student_changed[~mask] = random_logits((int((~mask).sum()), 6), scale=100.0)
    teacher_changed[~mask] = 1e4
    student_changed[1, 3, 0] = -np.inf
    changed = float(soft_target_loss(mx.array(student_changed), mx.array(teacher_changed), mask=mx.array(mask)))
    assert changed == pytest.approx(base, abs=1e-7)
    # The mean divides by the 3 kept positions, not by 8.
    kept = 4 * np_forward_kl(student, teacher, 2.0)[mask]
    assert base == pytest.approx(kept.sum() / 3, rel=1e-5)
    # (B, C) logits without a mask: the batch mean.
    flat_student, flat_teacher = random_logits((6, 9)), random_logits((6, 9))
    assert float(soft_target_loss(mx.array(flat_student), mx.array(flat_teacher), temperature=3.0)) == pytest.approx(
        9 * np_forward_kl(flat_student, flat_teacher, 3.0).mean(), rel=1e-5
    )
    # Everything masked out: the mean is 0, not NaN.
    assert float(forward_kl(mx.array(student), mx.array(teacher), mask=mx.zeros((2, 4), dtype=mx.bool_))) == 0.0


def test_soft_target_gradients_analytic_and_finite_difference():
    student, teacher = random_logits((2, 3, 5)), random_logits((2, 3, 5))
    mask = np.array([[True, True, False], [True, False, True]])
    temperature = 3.0
    count = mask.sum()

    def loss_of_student(s):
        return soft_target_loss(s, mx.array(teacher), temperature=temperature, mask=mx.array(mask))

    def loss_of_teacher(t):
        return soft_target_loss(mx.array(student), t, temperature=temperature, mask=mx.array(mask))

    teacher_grad = np.array(mx.grad(loss_of_teacher)(mx.array(teacher)))
    assert np.all(teacher_grad == 0.0)

    student_grad = np.array(mx.grad(loss_of_student)(mx.array(student)))
    # d/dz_s [T^2 KL(p_t || p_s)] = T (p_s - p_t), divided by the counted positions.
    analytic = temperature * (np_softmax(student, temperature) - np_softmax(teacher, temperature))
    analytic = analytic * mask[..., None] / count
    np.testing.assert_allclose(student_grad, analytic, atol=1e-6)

    # Central differences of the float64 reference agree with both.
    def reference(s):
        return temperature**2 * np_forward_kl(s, teacher, temperature)[mask].sum() / count

    eps = 1e-5
    s64 = student.astype(np.float64)
    for index in [(0, 0, 0), (0, 1, 4), (1, 2, 2), (0, 2, 1)]:
        plus, minus = s64.copy(), s64.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (reference(plus) - reference(minus)) / (2 * eps)
        assert student_grad[index] == pytest.approx(numeric, abs=1e-6)
        assert analytic[index] == pytest.approx(numeric, abs=1e-8)


def test_reverse_kl_matches_numpy():
    student, teacher = random_logits((4, 3, 10)), random_logits((4, 3, 10))
    mask = np.random.rand(4, 3) > 0.3
    mask[0, 0] = True
    per_position = np_reverse_kl(student, teacher, 1.5)
    ours = reverse_kl(mx.array(student), mx.array(teacher), mask=mx.array(mask), temperature=1.5)
    assert float(ours) == pytest.approx(masked_mean(per_position, mask), rel=1e-5)
    np.testing.assert_allclose(
        np.array(reverse_kl(mx.array(student), mx.array(teacher), reduction="none")),
        np_reverse_kl(student, teacher), atol=1e-5,
    )
    # Reverse and forward KL differ in general; swapping the arguments swaps them.
    np.testing.assert_allclose(
        np.array(reverse_kl(mx.array(student), mx.array(teacher), reduction="none")),
        np.array(forward_kl(mx.array(teacher), mx.array(student), reduction="none")), atol=1e-6,
    )
    assert np.abs(per_position - np_forward_kl(student, teacher, 1.5)).max() > 1e-2
    teacher_grad = mx.grad(lambda t: reverse_kl(mx.array(student), t))(mx.array(teacher))
    assert np.all(np.array(teacher_grad) == 0.0)


# --- Generalized JSD ------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jensen_shannon_matches_numpy(beta):
    student, teacher = random_logits((3, 4, 8)), random_logits((3, 4, 8))
    mask = np.random.rand(3, 4) > 0.3
    mask[0, 0] = True
    per_position = np_jsd(student, teacher, beta, temperature=2.0)
    args = (mx.array(student), mx.array(teacher))
    np.testing.assert_allclose(
        np.array(jensen_shannon(*args, beta=beta, temperature=2.0, mask=mx.array(mask), reduction="none")),
        per_position * mask, atol=1e-6,
    )
    assert float(jensen_shannon(*args, beta=beta, temperature=2.0, mask=mx.array(mask))) == pytest.approx(
        masked_mean(per_position, mask), rel=1e-5
    )
    # Swapping student and teacher is the same as beta -> 1 - beta.
    np.testing.assert_allclose(
        np.array(jensen_shannon(*args, beta=beta, reduction="none")),
        np.array(jensen_shannon(args[1], args[0], beta=1 - beta, reduction="none")), atol=1e-6,
    )


def test_jensen_shannon_symmetric_and_bounded_at_one_half():
    student, teacher = mx.array(random_logits((5, 12), 5.0)), mx.array(random_logits((5, 12), 5.0))
    forward = np.array(jensen_shannon(student, teacher, beta=0.5, reduction="none"))
    swapped = np.array(jensen_shannon(teacher, student, beta=0.5, reduction="none"))
    np.testing.assert_allclose(forward, swapped, atol=1e-7)
    assert np.all(forward >= 0) and np.all(forward <= math.log(2))
    # Disjoint distributions reach the bound log 2.
    disjoint = float(jensen_shannon(mx.array([[1e4, 0.0]]), mx.array([[0.0, 1e4]]), beta=0.5))
    assert disjoint == pytest.approx(math.log(2), abs=1e-6)
    assert disjoint <= math.log(2) + 1e-7


def test_jensen_shannon_interpolates_forward_and_reverse_kl():
    # GKD: JSD(beta) / beta -> KL(P || Q) as beta -> 0, JSD(beta) / (1 - beta) -> KL(Q || P) as beta -> 1.
    student, teacher = mx.array(random_logits((4, 6), 1.0)), mx.array(random_logits((4, 6), 1.0))
    small = 1e-3
    np.testing.assert_allclose(
        np.array(jensen_shannon(student, teacher, beta=small, reduction="none")) / small,
        np.array(forward_kl(student, teacher, reduction="none")), rtol=2e-2,
    )
    np.testing.assert_allclose(
        np.array(jensen_shannon(student, teacher, beta=1 - small, reduction="none")) / small,
        np.array(reverse_kl(student, teacher, reduction="none")), rtol=2e-2,
    )


def test_extreme_logits_give_finite_values_where_the_math_is_finite():
    student = np.array([[1e4, -1e4, 0.0, 3.0], [0.0, 1.0, -np.inf, 2.0]], dtype=np.float32)
    teacher = np.array([[-np.inf, 0.0, 1e4, -1e4], [2.0, -np.inf, -np.inf, 0.0]], dtype=np.float32)
    args = (mx.array(student), mx.array(teacher))

    # Forward KL: the teacher's -inf classes have p_t = 0 and drop out.
    ours = np.array(forward_kl(*args, reduction="none"))
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, np_forward_kl(student, teacher), rtol=1e-6)
    # JSD is finite for any logits, -inf included, and so is its gradient.
    for beta in (0.2, 0.5):
        ours = np.array(jensen_shannon(*args, beta=beta, reduction="none"))
        assert np.all(np.isfinite(ours))
        np.testing.assert_allclose(ours, np_jsd(student, teacher, beta), rtol=1e-6, atol=1e-6)
        grad = np.array(mx.grad(lambda s: jensen_shannon(s, args[1], beta=beta))(args[0]))
        assert np.all(np.isfinite(grad))
    grad = np.array(mx.grad(lambda s: soft_target_loss(s, args[1]))(args[0]))
    assert np.all(np.isfinite(grad))
    # Reverse KL where the student has mass on a class the teacher rules out is +inf, not NaN.
    reverse = np.array(reverse_kl(*args, reduction="none"))
    assert np.isinf(reverse[1]) and reverse[1] > 0
    assert not np.any(np.isnan(reverse))
    # Huge but finite logits: exact as float64.
    big_student = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    big_teacher = np.array([[-1e4, 1e4, 5.0]], dtype=np.float32)
    for loss, reference in ((forward_kl, np_forward_kl), (reverse_kl, np_reverse_kl)):
        value = float(loss(mx.array(big_student), mx.array(big_teacher)))
        assert value == pytest.approx(float(reference(big_student, big_teacher)[0]), rel=1e-6)


def test_float16_inputs_give_float32_losses():
    student = mx.array(random_logits((2, 3, 7))).astype(mx.float16)
    teacher = mx.array(random_logits((2, 3, 7))).astype(mx.float16)
    for loss in (forward_kl, reverse_kl, soft_target_loss, jensen_shannon):
        assert loss(student, teacher).dtype == mx.float32
    assert cosine_embedding_loss(student, teacher).dtype == mx.float32
    assert hidden_mse_loss(student, teacher).dtype == mx.float32


# --- Hidden-state, attention and PKD losses --------------------------------------


def np_cosine_loss(student, teacher):
    student, teacher = student.astype(np.float64), teacher.astype(np.float64)
    cosine = (student * teacher).sum(-1) / (np.linalg.norm(student, axis=-1) * np.linalg.norm(teacher, axis=-1))
    return 1 - cosine


def test_cosine_embedding_loss_matches_numpy_and_golden():
    # (1, 0) vs (1, 1): 1 - 1 / sqrt(2); parallel vectors: 0; opposite: 2.
    student = mx.array([[1.0, 0.0], [2.0, 2.0], [1.0, -1.0]])
    teacher = mx.array([[1.0, 1.0], [3.0, 3.0], [-1.0, 1.0]])
    np.testing.assert_allclose(
        np.array(cosine_embedding_loss(student, teacher, reduction="none")), [1 - 1 / math.sqrt(2), 0.0, 2.0],
        atol=1e-6,
    )
    # A zero vector gives 1 (cosine 0), not NaN.
    assert float(cosine_embedding_loss(mx.zeros((1, 4)), mx.ones((1, 4)))) == pytest.approx(1.0)

    student, teacher = np.random.randn(2, 6, 16), np.random.randn(2, 6, 16)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    per_position = np_cosine_loss(student, teacher)
    ours = cosine_embedding_loss(mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32),
                                 mask=mx.array(mask))
    assert float(ours) == pytest.approx(masked_mean(per_position, mask), rel=1e-5)
    none = cosine_embedding_loss(mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32),
                                 mask=mx.array(mask), reduction="none")
    np.testing.assert_allclose(np.array(none), per_position * mask, atol=1e-6)
    teacher_grad = mx.grad(lambda t: cosine_embedding_loss(mx.array(student, dtype=mx.float32), t))(
        mx.array(teacher, dtype=mx.float32))
    assert np.all(np.array(teacher_grad) == 0.0)


def test_hidden_mse_loss_matches_numpy_and_golden():
    # Position 0 counts: ((1 - 0)^2 + (2 - 0)^2) / 2 = 2.5; position 1 is masked out.
    student = mx.array([[1.0, 2.0], [3.0, 4.0]])
    assert float(hidden_mse_loss(student, mx.zeros((2, 2)), mask=mx.array([True, False]))) == pytest.approx(2.5)
    assert float(hidden_mse_loss(student, mx.zeros((2, 2)))) == pytest.approx(7.5)

    student, teacher = np.random.randn(3, 5, 8), np.random.randn(3, 5, 8)
    mask = np.random.rand(3, 5) > 0.4
    mask[0, 0] = True
    squared = (student - teacher) ** 2
    args = (mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32))
    # torch MSELoss over the selected elements: mean over counted positions and the 8 features.
    assert float(hidden_mse_loss(*args, mask=mx.array(mask))) == pytest.approx(squared[mask].mean(), rel=1e-5)
    assert float(hidden_mse_loss(*args, mask=mx.array(mask), reduction="sum")) == pytest.approx(
        squared[mask].sum(), rel=1e-5)
    assert float(hidden_mse_loss(*args)) == pytest.approx(squared.mean(), rel=1e-5)
    none = np.array(hidden_mse_loss(*args, mask=mx.array(mask), reduction="none"))
    np.testing.assert_allclose(none, squared * mask[..., None], atol=1e-5)


def np_tinybert_attention_loss(student, teacher, attention_mask=None):
    student = np.where(student <= -1e2, 0.0, student.astype(np.float64))
    teacher = np.where(teacher <= -1e2, 0.0, teacher.astype(np.float64))
    if attention_mask is not None:
        real = attention_mask.astype(bool)
        pairs = real[:, None, :, None] & real[:, None, None, :]
        student, teacher = student * pairs, teacher * pairs
    return ((student - teacher) ** 2).mean()


def test_attention_score_mse_loss_golden_and_padding():
    # One 2x2 head: the -1e4 entry is zeroed on both sides; the rest is (1^2 + 2^2 + 3^2) / 4.
    student = mx.array([[[[1.0, -1e4], [2.0, 3.0]]]])
    teacher = mx.array([[[[0.0, -1e4], [0.0, 0.0]]]])
    assert float(attention_score_mse_loss(student, teacher)) == pytest.approx(3.5)
    # Masked on one side only: that side becomes 0 and the other still counts, as in TinyBERT.
    one_sided = mx.array([[[[1.0, -1e4], [2.0, 3.0]]]])
    assert float(attention_score_mse_loss(one_sided, mx.array([[[[0.0, 5.0], [0.0, 0.0]]]]))) == pytest.approx(
        (1 + 25 + 4 + 9) / 4)

    batch, heads, length = 2, 3, 5
    attention_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    additive = np.where(attention_mask[:, None, None, :] == 1, 0.0, -10000.0)  # BERT's key mask
    student = (np.random.randn(batch, heads, length, length) * 3 + additive).astype(np.float32)
    teacher = (np.random.randn(batch, heads, length, length) * 3 + additive).astype(np.float32)
    ours = float(attention_score_mse_loss(mx.array(student), mx.array(teacher)))
    assert ours == pytest.approx(np_tinybert_attention_loss(student, teacher), rel=1e-5)
    with_mask = float(attention_score_mse_loss(mx.array(student), mx.array(teacher), mx.array(attention_mask)))
    assert with_mask == pytest.approx(np_tinybert_attention_loss(student, teacher, attention_mask), rel=1e-5)
    assert with_mask < ours  # padding query rows no longer count
    # Scores without the additive mask: attention_mask alone zeroes the padding.
    raw_student, raw_teacher = student - additive, teacher - additive
    assert float(
        attention_score_mse_loss(mx.array(raw_student), mx.array(raw_teacher), mx.array(attention_mask))
    ) == pytest.approx(with_mask, rel=1e-5)


def np_pkd(student, teacher):
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    student = student / np.linalg.norm(student, axis=-1, keepdims=True)
    teacher = teacher / np.linalg.norm(teacher, axis=-1, keepdims=True)
    return sum(((student[k] - teacher[k]) ** 2).sum(-1).mean() for k in range(student.shape[0]))


def test_pkd_loss_matches_numpy_and_golden():
    # Orthogonal unit directions are sqrt(2) apart: squared distance 2, whatever the lengths.
    assert float(pkd_loss([mx.array([[1.0, 0.0]])], [mx.array([[0.0, 2.0]])])) == pytest.approx(2.0)
    assert float(pkd_loss([mx.array([[3.0, 4.0]])], [mx.array([[6.0, 8.0]])])) == pytest.approx(0.0, abs=1e-7)

    student, teacher = np.random.randn(3, 4, 6), np.random.randn(3, 4, 6)
    as_lists = pkd_loss([mx.array(layer, dtype=mx.float32) for layer in student],
                        [mx.array(layer, dtype=mx.float32) for layer in teacher])
    stacked = pkd_loss(mx.array(student, dtype=mx.float32), mx.array(teacher, dtype=mx.float32))
    assert float(as_lists) == pytest.approx(np_pkd(student, teacher), rel=1e-5)
    assert float(stacked) == pytest.approx(float(as_lists), rel=1e-6)
    teacher_grad = mx.grad(lambda t: pkd_loss(mx.array(student, dtype=mx.float32), t))(
        mx.array(teacher, dtype=mx.float32))
    assert np.all(np.array(teacher_grad) == 0.0)


# --- Errors -------------------------------------------------------------------------


def test_logit_loss_errors_name_the_shapes_and_values():
    student, teacher = mx.zeros((2, 3, 30522)), mx.zeros((2, 3, 50265))
    for loss in (soft_target_loss, forward_kl, reverse_kl, jensen_shannon):
        with pytest.raises(ValueError, match="student has 30522 classes, teacher 50265: logit losses need the same"):
            loss(student, teacher)
    with pytest.raises(ValueError, match=r"student logits \(2, 3, 5\) and teacher logits \(2, 4, 5\) differ"):
        forward_kl(mx.zeros((2, 3, 5)), mx.zeros((2, 4, 5)))
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"temperature must be > 0, got {temperature}"):
            soft_target_loss(mx.zeros((2, 5)), mx.zeros((2, 5)), temperature=temperature)
    for beta in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"beta must be strictly between 0 and 1, got {beta}"):
            jensen_shannon(mx.zeros((2, 5)), mx.zeros((2, 5)), beta=beta)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) must have the positions shape \(2, 3\)"):
        forward_kl(mx.zeros((2, 3, 5)), mx.zeros((2, 3, 5)), mask=mx.ones((2, 4)))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        reverse_kl(mx.zeros((2, 5)), mx.zeros((2, 5)), reduction="avg")


def test_hidden_attention_and_pkd_errors():
    for loss in (cosine_embedding_loss, hidden_mse_loss):
        with pytest.raises(ValueError, match=r"\(2, 5, 312\) are 312 wide, teacher \(2, 5, 768\) 768: project the st"):
            loss(mx.zeros((2, 5, 312)), mx.zeros((2, 5, 768)))
    with pytest.raises(ValueError, match=r"have 12 heads, teacher \(2, 4, 5, 5\) 4: TinyBERT's attention loss needs"):
        attention_score_mse_loss(mx.zeros((2, 12, 5, 5)), mx.zeros((2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 4\) must be \(B, L\) = \(2, 5\)"):
        attention_score_mse_loss(mx.zeros((2, 4, 5, 5)), mx.zeros((2, 4, 5, 5)), mx.ones((2, 4)))
    with pytest.raises(ValueError, match="student has 2 matched layers, teacher 3"):
        pkd_loss([mx.zeros((2, 8))] * 2, [mx.zeros((2, 8))] * 3)
    with pytest.raises(ValueError, match=r"are 8 wide, teacher \(2, 2, 16\) 16: project the student first"):
        pkd_loss([mx.zeros((2, 8))] * 2, mx.zeros((2, 2, 16)))
