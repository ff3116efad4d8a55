"""Each loss term against a value computed independently, in plain Python on small known distributions."""

import math

import pytest
import torch

from seq2seq_distill import losses
from seq2seq_distill.losses import (
    align_attention_heads,
    attention_transfer_loss,
    cross_entropy_sum,
    get_divergence,
    hidden_state_loss,
    logit_distillation_loss,
    norm_statistics_loss,
    register_divergence,
)


def softmax(row, temperature=1.0):
    exps = [math.exp(x / temperature) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0], [2.0, -2.0, 0.0, 0.5]]
TEACHER = [[2.0, 1.0, 0.0, -0.5], [1.0, -1.0, 2.0, 2.0], [0.0, 1.0, 1.0, 0.0]]


def expected(divergence, temperature, beta=0.5):
    total = 0.0
    for s_row, t_row in zip(STUDENT, TEACHER):
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        if divergence == "forward_kl":
            total += kl(p_t, p_s)
        elif divergence == "reverse_kl":
            total += kl(p_s, p_t)
        elif divergence == "js":
            m = [(a + b) / 2 for a, b in zip(p_s, p_t)]
            total += 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)
        elif divergence == "generalized_jsd":
            m = [beta * b + (1 - beta) * a for a, b in zip(p_s, p_t)]
            total += beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
        elif divergence == "skew_kl":
            total += kl(p_t, [beta * b + (1 - beta) * a for a, b in zip(p_s, p_t)])
        elif divergence == "skew_reverse_kl":
            total += kl(p_s, [beta * a + (1 - beta) * b for a, b in zip(p_s, p_t)])
    return total * temperature**2


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js", "generalized_jsd", "skew_kl", "skew_reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_divergence_matches_direct_computation(divergence, temperature):
    value = logit_distillation_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), divergence=divergence, temperature=temperature, beta=0.3
    )
    assert value.item() == pytest.approx(expected(divergence, temperature, beta=0.3), rel=1e-5)


def test_temperature_squared_scaling():
    """At T, the loss is T² times the divergence of the softened distributions (not the raw one)."""
    raw_softened = expected("forward_kl", 3.0) / 9.0
    value = logit_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=3.0)
    assert value.item() == pytest.approx(9.0 * raw_softened, rel=1e-5)
    assert value.item() != pytest.approx(raw_softened, rel=1e-2)


def test_zero_for_identical_inputs_and_positive_otherwise():
    logits = torch.randn(5, 11)
    for name in losses.DIVERGENCES:
        assert logit_distillation_loss(logits, logits.clone(), divergence=name).item() == pytest.approx(0.0, abs=1e-6)
        assert logit_distillation_loss(logits, torch.randn(5, 11), divergence=name).item() > 0


def test_js_is_symmetric_and_generalized_jsd_at_half_is_js():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert logit_distillation_loss(s, t, divergence="js").item() == pytest.approx(
        logit_distillation_loss(t, s, divergence="js").item(), rel=1e-6
    )
    assert logit_distillation_loss(s, t, divergence="generalized_jsd", beta=0.5).item() == pytest.approx(
        logit_distillation_loss(s, t, divergence="js").item(), rel=1e-6
    )


def test_gradient_of_forward_kl_is_softmax_difference():
    """d/dz KL(p_t || softmax(z)) = softmax(z) - p_t at T = 1: an independent check of the backward pass."""
    s = torch.tensor(STUDENT, requires_grad=True)
    logit_distillation_loss(s, torch.tensor(TEACHER)).backward()
    expected_grad = torch.tensor([[a - b for a, b in zip(softmax(sr), softmax(tr))] for sr, tr in zip(STUDENT, TEACHER)])
    torch.testing.assert_close(s.grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_unknown_divergence_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown divergence 'kl2'.*forward_kl"):
        get_divergence("kl2")


def test_registered_divergence_is_usable_by_name():
    name = "total_variation_for_test"
    if name not in losses.DIVERGENCES:

        @register_divergence(name)
        def total_variation(student_log_probs, teacher_log_probs, beta=0.5):
            return 0.5 * (student_log_probs.exp() - teacher_log_probs.exp()).abs().sum(-1)

    value = logit_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), divergence=name)
    direct = sum(0.5 * sum(abs(a - b) for a, b in zip(softmax(s), softmax(t))) for s, t in zip(STUDENT, TEACHER))
    assert value.item() == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        register_divergence(name)(lambda s, t, beta=0.5: s.sum(-1))


def test_cross_entropy_sum_ignores_masked_labels():
    logits = torch.tensor(STUDENT)
    labels = torch.tensor([1, -100, 0])
    direct = -math.log(softmax(STUDENT[0])[1]) - math.log(softmax(STUDENT[2])[0])
    assert cross_entropy_sum(logits, labels).item() == pytest.approx(direct, rel=1e-6)


def test_hidden_state_loss_mse_and_cosine():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
    mse = ((0 + 4 + 0) / 3) + ((0 + 1 + 0) / 3)
    assert hidden_state_loss(s, t, kind="mse").item() == pytest.approx(mse, rel=1e-6)
    cos_first = (1 * 1 + 3 * 3) / (math.sqrt(14) * math.sqrt(10))
    assert hidden_state_loss(s, t, kind="cosine").item() == pytest.approx((1 - cos_first) + 0.0, abs=1e-6)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(s, torch.zeros(2, 4))


def _row_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_attention_transfer_equal_heads_with_query_mask():
    torch.manual_seed(0)
    s = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    t = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    mask = torch.tensor([[True, False, True]])
    direct = 0.0
    for q in (0, 2):
        direct += sum(_row_kl(t[0, h, q].tolist(), s[0, h, q].tolist()) for h in range(2)) / 2
    assert attention_transfer_loss(s, t, mask, kind="kl").item() == pytest.approx(direct, rel=1e-5)
    direct_mse = sum(((s[0, h, q] - t[0, h, q]) ** 2).sum().item() for q in (0, 2) for h in range(2)) / 2
    assert attention_transfer_loss(s, t, mask, kind="mse").item() == pytest.approx(direct_mse, rel=1e-5)


def test_attention_heads_are_grouped_or_averaged():
    torch.manual_seed(1)
    s2 = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    t4 = torch.softmax(torch.randn(1, 4, 4, 4), -1)
    _, grouped = align_attention_heads(s2, t4)
    torch.testing.assert_close(grouped[0, 0], (t4[0, 0] + t4[0, 1]) / 2)
    torch.testing.assert_close(grouped[0, 1], (t4[0, 2] + t4[0, 3]) / 2)
    t3 = torch.softmax(torch.randn(1, 3, 4, 4), -1)
    s_avg, t_avg = align_attention_heads(s2, t3)
    assert s_avg.shape[1] == t_avg.shape[1] == 1
    torch.testing.assert_close(t_avg[0, 0], t3[0].mean(0))


def test_norm_statistics_loss_matches_direct_computation():
    s = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    t = torch.tensor([[0.0, 4.0, 8.0, 0.0, 3.0, 9.0]])  # different width: only per-token scalars are compared
    mean_s, mean_t = 3.0, 4.0
    var_s = sum((x - mean_s) ** 2 for x in [1, 2, 3, 6]) / 4
    var_t = sum((x - mean_t) ** 2 for x in [0, 4, 8, 0, 3, 9]) / 6
    direct = (mean_s - mean_t) ** 2 + (math.log(var_s + 1e-6) - math.log(var_t + 1e-6)) ** 2
    assert norm_statistics_loss(s, t).item() == pytest.approx(direct, rel=1e-5)
    assert norm_statistics_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-8)
