"""The chunked KD loss against the reference ``logit_distillation_loss``, value and gradient, computed here."""

import pytest
import torch

from seq2seq_distill import losses
from seq2seq_distill.chunked_kd import chunked_logit_distillation_loss
from seq2seq_distill.losses import logit_distillation_loss, register_divergence

ROWS, VOCAB = 10, 17
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
# chunk_elements -> rows per chunk at VOCAB = 17: 1 row, 3 rows (does not divide 10), 5 rows (divides 10),
# more rows than there are (one chunk).
CHUNK_ELEMENTS = {"1-row": 1, "3-rows": 3 * VOCAB, "5-rows": 5 * VOCAB + 4, "all-rows": 10_000}


def logits(seed: int, rows: int = ROWS, vocab: int = VOCAB, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(rows, vocab, generator=generator) * scale).requires_grad_(True)
    teacher = torch.randn(rows, vocab, generator=generator) * scale
    return student, teacher


def value_and_grad(loss_fn, student, teacher, grad_scale: float = 1.0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    loss = loss_fn(student, teacher, **kwargs)
    (grad,) = torch.autograd.grad(loss * grad_scale, student)
    return loss.detach(), grad


@pytest.mark.parametrize("chunk", CHUNK_ELEMENTS.values(), ids=CHUNK_ELEMENTS.keys())
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", sorted(losses.DIVERGENCES))
def test_chunked_matches_reference_value_and_gradient(divergence, temperature, chunk):
    student, teacher = logits(seed=len(divergence))
    settings = {"divergence": divergence, "temperature": temperature, "beta": 0.3}
    expected_loss, expected_grad = value_and_grad(logit_distillation_loss, student, teacher, **settings)
    loss, grad = value_and_grad(chunked_logit_distillation_loss, student, teacher, chunk_elements=chunk, **settings)
    assert loss.dtype == expected_loss.dtype == torch.float32
    assert expected_loss.item() > 0.1  # a real, non-trivial loss is being compared
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
def test_gradient_is_scaled_by_the_incoming_gradient(grad_scale):
    # grad_output == 1 hands the buffer over as is; any other value multiplies it: both must match the reference.
    student, teacher = logits(seed=1)
    _, expected_grad = value_and_grad(logit_distillation_loss, student, teacher, grad_scale, divergence="js")
    _, grad = value_and_grad(chunked_logit_distillation_loss, student, teacher, grad_scale, divergence="js", chunk_elements=40)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_chunked_loss_inside_a_larger_graph_backpropagates_like_the_reference():
    # Rows gathered from [B, T, V] by a mask and the loss scaled, the way the trainer calls it.
    generator = torch.Generator().manual_seed(3)
    student_full = torch.randn(2, 6, VOCAB, generator=generator, requires_grad=True)
    teacher_full = torch.randn(2, 6, VOCAB, generator=generator)
    mask = torch.rand(2, 6, generator=generator) > 0.3
    grads = []
    for loss_fn in (logit_distillation_loss, chunked_logit_distillation_loss):
        loss = loss_fn(student_full[mask], teacher_full[mask], divergence="reverse_kl", temperature=2.0) / mask.sum()
        loss.backward()
        grads.append(student_full.grad.clone())
        student_full.grad = None
    torch.testing.assert_close(grads[1], grads[0], **TOLERANCE)
    assert grads[0][~mask].abs().max() == 0


def test_column_slice_of_the_logits_works_like_the_reference():
    # The trainer passes student_rows[..., :shared], a non-contiguous view, when the vocabularies differ.
    student, teacher = logits(seed=11, vocab=VOCAB + 5)
    student_view, teacher_view = student[:, :VOCAB], teacher[:, :VOCAB]
    expected_loss, expected_grad = value_and_grad(logit_distillation_loss, student_view, teacher_view, divergence="js")
    loss, grad = value_and_grad(chunked_logit_distillation_loss, student_view, teacher_view, divergence="js", chunk_elements=50)
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_backward_twice_through_a_retained_graph_accumulates_like_the_reference():
    student, teacher = logits(seed=12)
    grads = []
    for loss_fn in (logit_distillation_loss, chunked_logit_distillation_loss):
        loss = loss_fn(student, teacher, divergence="skew_reverse_kl")
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append(student.grad.clone())
        student.grad = None
    torch.testing.assert_close(grads[1], grads[0], **TOLERANCE)


def test_no_rows_gives_zero_loss_and_zero_gradient():
    student, teacher = logits(seed=2, rows=0)
    loss, grad = value_and_grad(chunked_logit_distillation_loss, student, teacher, divergence="generalized_jsd")
    expected_loss, expected_grad = value_and_grad(logit_distillation_loss, student, teacher, divergence="generalized_jsd")
    assert loss.item() == expected_loss.item() == 0.0
    assert grad.shape == expected_grad.shape == (0, VOCAB)


def test_student_without_grad_gives_the_loss_and_builds_no_graph():
    student, teacher = logits(seed=4)
    student = student.detach()
    loss = chunked_logit_distillation_loss(student, teacher, divergence="skew_kl", temperature=2.0, chunk_elements=20)
    torch.testing.assert_close(loss, logit_distillation_loss(student, teacher, divergence="skew_kl", temperature=2.0))
    assert not loss.requires_grad


def test_under_no_grad_the_loss_matches_and_needs_no_backward():
    student, teacher = logits(seed=5)
    with torch.no_grad():
        loss = chunked_logit_distillation_loss(student, teacher, chunk_elements=20)
    torch.testing.assert_close(loss, logit_distillation_loss(student, teacher).detach(), **TOLERANCE)
    assert not loss.requires_grad


def test_teacher_gets_no_gradient():
    student, teacher = logits(seed=6)
    teacher.requires_grad_(True)
    chunked_logit_distillation_loss(student, teacher, chunk_elements=20).backward()
    assert student.grad is not None and teacher.grad is None


def test_custom_registered_divergence_works_chunked():
    name = "test_chunked_squared_prob_gap"
    if name not in losses.DIVERGENCES:

        @register_divergence(name)
        def squared_prob_gap(student_log_probs, teacher_log_probs, beta=0.5):
            return beta * (student_log_probs.exp() - teacher_log_probs.exp()).pow(2).sum(-1)

    student, teacher = logits(seed=7, scale=1.0)
    settings = {"divergence": name, "temperature": 2.0, "beta": 0.7}
    expected_loss, expected_grad = value_and_grad(logit_distillation_loss, student, teacher, **settings)
    loss, grad = value_and_grad(chunked_logit_distillation_loss, student, teacher, chunk_elements=2 * VOCAB, **settings)
    assert expected_grad.abs().max() > 1e-4  # the custom term does reach the student
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_bfloat16_student_gets_a_bfloat16_gradient_like_the_reference():
    student, teacher = logits(seed=8)
    student = student.detach().bfloat16().requires_grad_(True)
    expected_loss, expected_grad = value_and_grad(logit_distillation_loss, student, teacher.bfloat16())
    loss, grad = value_and_grad(chunked_logit_distillation_loss, student, teacher.bfloat16(), chunk_elements=3 * VOCAB)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad)


def test_rows_per_chunk_shrink_as_the_vocabulary_grows(monkeypatch):
    # The chunking rule: max(1, chunk_elements // V) rows per chunk, so a chunk's size does not grow with V.
    seen_rows = []
    original = losses.logit_distillation_loss

    def spy(student_chunk, teacher_chunk, **kwargs):
        seen_rows.append(student_chunk.shape[0])
        return original(student_chunk, teacher_chunk, **kwargs)

    monkeypatch.setattr("seq2seq_distill.chunked_kd.logit_distillation_loss", spy)
    # (vocab, chunk_elements, rows of each chunk for 20 rows); a vocabulary above chunk_elements gives 1 row.
    for vocab, chunk_elements, expected in [(10, 70, [7, 7, 6]), (50, 100, [2] * 10), (200, 100, [1] * 20)]:
        seen_rows.clear()
        student, teacher = logits(seed=9, rows=20, vocab=vocab)
        chunked_logit_distillation_loss(student, teacher, chunk_elements=chunk_elements)
        assert seen_rows == expected, vocab


def test_bad_inputs_fail_with_a_clear_message():
    student, teacher = logits(seed=10)
    with pytest.raises(ValueError, match="differ"):
        chunked_logit_distillation_loss(student, teacher[:, :-1])
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        chunked_logit_distillation_loss(student[None], teacher[None])
    with pytest.raises(ValueError, match="unknown divergence"):
        chunked_logit_distillation_loss(student[:0], teacher[:0], divergence="nope")


# ---- closed-form gradients (CE + forward KL) against autograd on the reference functions -------------------------


def reference_terms(student, labels, ce_weight, kd_weight, temperature, smoothing, shared, teacher=None, top=None):
    from seq2seq_distill.losses import cross_entropy_sum, topk_distillation_loss

    student = student.detach().requires_grad_(True)
    ce = cross_entropy_sum(student, labels, smoothing)
    if top is None:
        kd = logit_distillation_loss(student[:, :shared], teacher, temperature=temperature)
    else:
        kd = topk_distillation_loss(student[:, :shared], *top, temperature=temperature)
    total = ce_weight * ce + kd_weight * kd
    (grad,) = torch.autograd.grad(total, student)
    return total, torch.stack([ce, kd]), grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shared", [VOCAB, VOCAB - 3])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.7, 0.3)])
def test_closed_form_ce_and_forward_kl_equal_autograd(temperature, smoothing, shared, weights):
    from seq2seq_distill.chunked_kd import fused_ce_forward_kl

    student, teacher = logits(seed=11)
    teacher = teacher[:, :shared]
    labels = torch.randint(0, VOCAB, (student.shape[0],), generator=torch.Generator().manual_seed(3))
    expected_total, expected_parts, expected_grad = reference_terms(
        student, labels, *weights, temperature, smoothing, shared, teacher
    )
    total, parts, grad = fused_ce_forward_kl(
        student.detach().requires_grad_(True),
        labels,
        ce_weight=weights[0],
        kd_weight=weights[1],
        temperature=temperature,
        label_smoothing=smoothing,
        shared=shared,
        teacher_chunk=teacher,
    )
    torch.testing.assert_close(total, expected_total.detach(), **TOLERANCE)
    torch.testing.assert_close(parts, expected_parts.detach(), **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


@pytest.mark.parametrize("top_k", [1, 4, VOCAB])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_on_a_top_k_cache_equals_autograd(top_k, temperature):
    from seq2seq_distill.chunked_kd import fused_ce_forward_kl

    student, teacher = logits(seed=12)
    values, indices = torch.log_softmax(teacher / temperature, -1).topk(top_k, -1)
    labels = torch.randint(0, VOCAB, (student.shape[0],), generator=torch.Generator().manual_seed(4))
    expected_total, expected_parts, expected_grad = reference_terms(
        student, labels, 0.5, 0.5, temperature, 0.0, VOCAB, top=(values, indices)
    )
    total, parts, grad = fused_ce_forward_kl(
        student.detach().requires_grad_(True),
        labels,
        ce_weight=0.5,
        kd_weight=0.5,
        temperature=temperature,
        teacher_top=(values, indices),
    )
    torch.testing.assert_close(total, expected_total.detach(), **TOLERANCE)
    torch.testing.assert_close(parts, expected_parts.detach(), **TOLERANCE)
    torch.testing.assert_close(grad, expected_grad, **TOLERANCE)


def test_closed_form_skips_the_gradient_when_none_is_wanted():
    from seq2seq_distill.chunked_kd import fused_ce_forward_kl

    student, teacher = logits(seed=13)
    _, _, grad = fused_ce_forward_kl(student.detach(), None, ce_weight=0.0, kd_weight=1.0, temperature=2.0, teacher_chunk=teacher)
    assert grad is None
