"""Logit distillation with bounded memory: the KD loss computed over row chunks, its gradient taken in the forward.

Why: :func:`~seq2seq_distill.losses.logit_distillation_loss` takes both log-softmaxes over all ``N x V`` entries at
once, and autograd keeps several ``[N, V]`` float32 intermediates (the log-probabilities, the divergence's terms)
alive until the backward. At 2,048 tokens that is gigabytes for a 32k vocabulary and an out-of-memory error for
150k-260k vocabularies. Here the loss walks over chunks of ``chunk_rows = max(1, chunk_elements // V)`` rows, so
the intermediates of one chunk hold about ``chunk_elements`` entries each whatever the vocabulary; for each chunk
it computes the loss *and* its gradient w.r.t. the student chunk right away and writes that gradient into one
preallocated buffer shaped like ``student_logits``. The only ``[N, V]`` tensor that outlives the forward is that
buffer, i.e. the gradient the student needs anyway; the backward just scales it by the incoming gradient.

Each chunk calls the reference :func:`~seq2seq_distill.losses.logit_distillation_loss`, so every divergence in
``DIVERGENCES`` works, registered ones included, and the plain PyTorch path is the reference: it equals the
unchunked loss and gradient up to float rounding (the chunk sums are added in a different order).

When the ``liger_kernel`` package is importable and the tensors are on CUDA, divergences Liger implements on
log-probabilities (forward KL, JS, generalized JSD with 0 < beta < 1) use its fused Triton kernels inside each
chunk instead of the PyTorch divergence. That path is kept in :func:`_liger_chunk_loss` and has not been run in
this project's CI, which has no GPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .losses import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    get_divergence,
    jensen_shannon,
    logit_distillation_loss,
)

# loss_fn(student_chunk [n, V], teacher_chunk [n, V]) -> summed loss of the chunk, times T**2 (a scalar).
ChunkLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _liger_chunk_loss(divergence: str, temperature: float, beta: float, device: torch.device) -> ChunkLoss | None:
    """The fused Liger kernel for this divergence as a chunk loss, or None where the PyTorch path must be used.

    NOT RUN IN THIS PROJECT'S CI (no GPU there): written against liger-kernel 0.8.5's ``LigerKLDIVLoss`` and
    ``LigerJSD``, which take log-probabilities (not logits), so the log-softmaxes stay in PyTorch. LigerJSD
    averages over rows, hence the multiplication by the row count to get a sum; its beta = 0 and beta = 1 mean
    forward / reverse KL, not the limits of our generalized JSD, so those betas stay on the PyTorch path.
    Divergences are matched by function identity, so a user who replaced an entry of ``DIVERGENCES`` gets theirs.
    """
    if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return None
    divergence_fn = DIVERGENCES.get(divergence)
    try:
        from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss
    except ImportError:  # e.g. triton missing: fall back rather than fail
        return None
    if divergence_fn is forward_kl:
        kl_sum = LigerKLDIVLoss(reduction="sum", log_target=True)  # KL(teacher || student), summed
        divergence_sum = lambda student_log_probs, teacher_log_probs: kl_sum(student_log_probs, teacher_log_probs)
    elif divergence_fn is jensen_shannon or (divergence_fn is generalized_jsd and 0.0 < beta < 1.0):
        jsd_mean = LigerJSD(beta=0.5 if divergence_fn is jensen_shannon else beta)  # (student, teacher) log-probs
        divergence_sum = lambda student_log_probs, teacher_log_probs: (
            jsd_mean(student_log_probs, teacher_log_probs) * student_log_probs.shape[0]
        )
    else:
        return None

    def chunk_loss(student_chunk: torch.Tensor, teacher_chunk: torch.Tensor) -> torch.Tensor:
        student_log_probs = F.log_softmax(student_chunk.float() / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(teacher_chunk.float() / temperature, dim=-1)
        return divergence_sum(student_log_probs, teacher_log_probs) * temperature**2

    return chunk_loss


class _ChunkedLogitDistillation(torch.autograd.Function):
    """Forward: loss and gradient chunk by chunk into one buffer. Backward: that buffer times ``grad_output``."""

    @staticmethod
    def forward(
        ctx,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        chunk_loss: ChunkLoss,
        chunk_rows: int,
        needs_grad: bool,
    ) -> torch.Tensor:
        # The gradient w.r.t. the student logits, in their dtype, as the reference's autograd would return it.
        grad_buffer = torch.empty_like(student_logits, memory_format=torch.contiguous_format) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)  # N == 0 sums no rows
        for start in range(0, student_logits.shape[0], chunk_rows):
            student_chunk = student_logits[start : start + chunk_rows].detach()
            teacher_chunk = teacher_logits[start : start + chunk_rows].detach()
            if grad_buffer is None:
                total += chunk_loss(student_chunk, teacher_chunk)
                continue
            student_chunk.requires_grad_(True)
            with torch.enable_grad():  # autograd is off inside Function.forward; the chunk's own graph needs it
                loss = chunk_loss(student_chunk, teacher_chunk)
                (chunk_grad,) = torch.autograd.grad(loss, student_chunk)
            grad_buffer[start : start + chunk_rows] = chunk_grad
            total += loss.detach()
        # save_for_backward, not a ctx attribute: autograd frees the buffer as soon as the backward has run.
        ctx.save_for_backward(grad_buffer)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_buffer,) = ctx.saved_tensors
        if grad_buffer is None:  # only the (frozen) teacher asked for a gradient
            return None, None, None, None, None
        # A loss backpropagated as is (grad_output == 1) hands the buffer over without another [N, V] tensor.
        grad_student = grad_buffer if torch.equal(grad_output, torch.ones_like(grad_output)) else grad_buffer * grad_output
        return grad_student, None, None, None, None


def chunked_logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_elements: int = 2**20,
) -> torch.Tensor:
    """:func:`~seq2seq_distill.losses.logit_distillation_loss` with memory bounded by ``chunk_elements``.

    ``student_logits`` and ``teacher_logits`` are ``[N, V]``, already restricted to supervised rows. Returns the
    same scalar (float32: summed divergence times T²) and, w.r.t. ``student_logits``, the same gradient. The
    teacher gets no gradient (it is frozen), even if ``teacher_logits.requires_grad`` is set. Rows are processed
    ``max(1, chunk_elements // V)`` at a time; the peak memory above the inputs is one ``[N, V]`` gradient buffer
    (in the student's dtype) plus a chunk's intermediates.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    if student_logits.dim() != 2:
        raise ValueError(f"expected [N, V] logits of supervised rows, got shape {tuple(student_logits.shape)}")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    get_divergence(divergence)  # unknown names fail here, also when there are no rows
    chunk_rows = max(1, chunk_elements // max(1, student_logits.shape[1]))
    chunk_loss = _liger_chunk_loss(divergence, temperature, beta, student_logits.device) or partial(
        logit_distillation_loss, divergence=divergence, temperature=temperature, beta=beta
    )
    needs_grad = student_logits.requires_grad and torch.is_grad_enabled()
    return _ChunkedLogitDistillation.apply(student_logits, teacher_logits, chunk_loss, chunk_rows, needs_grad)


__all__ = ["chunked_logit_distillation_loss"]
