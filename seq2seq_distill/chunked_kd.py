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

Why one module of about 520 lines: the autograd function, the closed-form chunk losses, the Liger path, the
step's CE / KD pass over live or cached teacher rows and the diagnostics that ride along in it (teacher KL,
top-k mass, argmax agreement: no second pass over the logits) are one mechanism, and they are tested together against the
plain reference functions of ``losses.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .losses import (
    DIVERGENCES,
    cross_entropy_sum,
    forward_kl,
    generalized_jsd,
    get_divergence,
    jensen_shannon,
    logit_distillation_loss,
    topk_log_buckets,
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


# chunk_loss(student_chunk [n, V], start, end) -> (differentiable scalar, detached per-term sums [K]) or, for a loss
# that knows its gradient in closed form, (loss, sums, gradient [n, V]); ``start:end`` locates the chunk in the row
# order, for whatever else the loss reads per row (labels, teacher rows).
RowChunkLoss = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def row_index(rows: torch.Tensor, rows_on_cpu: torch.Tensor, start: int, end: int) -> slice | torch.Tensor:
    """``rows[start:end]`` as a slice when those rows are consecutive (the usual case), else as the index tensor.

    ``rows`` are sorted and distinct (a mask's nonzero indices), so they are consecutive exactly when the last minus
    the first is the count minus one; ``rows_on_cpu`` answers that without a device synchronization per chunk.
    """
    first, last = int(rows_on_cpu[start]), int(rows_on_cpu[end - 1])
    return slice(first, last + 1) if last - first == end - start - 1 else rows[start:end]


def take_rows(tensor: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    """The rows of a :func:`row_index`: a view without a copy for a slice."""
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


def select_rows(tensor: torch.Tensor, rows: torch.Tensor, rows_on_cpu: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """``tensor[rows[start:end]]``, as a view when those rows are consecutive."""
    return take_rows(tensor, row_index(rows, rows_on_cpu, start, end))


class _ChunkedRowLosses(torch.autograd.Function):
    """Forward: loss and gradient chunk by chunk into one buffer. Backward: that buffer times ``grad_output``."""

    @staticmethod
    def forward(ctx, student_logits, rows, rows_on_cpu, chunk_loss, chunk_rows, num_terms, needs_grad):
        # With ``rows`` the buffer covers every row of the input, zero where no row was selected: the gradient
        # autograd would have built for ``logits[mask]`` too, without the gathered [N, V] copies.
        if not needs_grad:
            grad_buffer = None
        elif rows is None:
            grad_buffer = torch.empty_like(student_logits, memory_format=torch.contiguous_format)
        else:
            grad_buffer = torch.zeros_like(student_logits, memory_format=torch.contiguous_format)
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)  # no rows sums to 0
        term_sums = torch.zeros(num_terms, dtype=torch.float32, device=student_logits.device)
        row_count = student_logits.shape[0] if rows is None else rows.numel()
        for start in range(0, row_count, chunk_rows):
            end = min(start + chunk_rows, row_count)
            index = slice(start, end) if rows is None else row_index(rows, rows_on_cpu, start, end)
            chunk = take_rows(student_logits, index).detach()
            if grad_buffer is None:
                loss, parts, *_ = chunk_loss(chunk, start, end)
            else:
                chunk.requires_grad_(True)
                with torch.enable_grad():  # autograd is off inside Function.forward; the chunk's own graph needs it
                    loss, parts, *closed_form = chunk_loss(chunk, start, end)
                    # A chunk loss may return its gradient itself (closed form, no graph); else autograd takes it.
                    chunk_grad = closed_form[0] if closed_form else torch.autograd.grad(loss, chunk)[0]
                if isinstance(index, slice):
                    grad_buffer[index] = chunk_grad
                else:
                    grad_buffer.index_copy_(0, index, chunk_grad.to(grad_buffer.dtype))
            total += loss.detach().float()
            term_sums += parts.detach().float()
        # save_for_backward, not a ctx attribute: autograd frees the buffer as soon as the backward has run.
        ctx.save_for_backward(grad_buffer)
        ctx.mark_non_differentiable(term_sums)
        return total, term_sums

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, _grad_terms: torch.Tensor):
        (grad_buffer,) = ctx.saved_tensors
        if grad_buffer is None:  # only the (frozen) teacher asked for a gradient
            return None, None, None, None, None, None, None
        # A loss backpropagated as is (grad_output == 1) hands the buffer over without another [M, V] tensor; the
        # trainer folds its normalization into the chunk loss so that this is the usual case.
        grad_student = grad_buffer if torch.equal(grad_output, torch.ones_like(grad_output)) else grad_buffer * grad_output
        return grad_student, None, None, None, None, None, None


def chunked_row_losses(
    student_logits: torch.Tensor,
    chunk_loss: RowChunkLoss,
    *,
    rows: torch.Tensor | None = None,
    rows_on_cpu: torch.Tensor | None = None,
    num_terms: int = 1,
    chunk_elements: int = 2**18,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``chunk_loss`` over the selected rows of ``student_logits`` in chunks, with bounded memory.

    ``student_logits`` is ``[M, V]`` (e.g. a model's ``[B, T, V]`` logits viewed flat); ``rows`` ``[N]`` are the
    distinct rows that enter the loss (all rows when None), processed ``max(1, chunk_elements // V)`` at a time,
    each chunk gathered on the fly (pass ``rows_on_cpu = rows.cpu()`` if you have it, to save a device copy).
    Returns ``(loss, term_sums)``: the summed differentiable loss and the detached per-term sums ``[num_terms]``
    for logging. The gradient w.r.t. ``student_logits`` is computed in the forward into one buffer shaped like it;
    no other ``[M, V]`` or ``[N, V]`` tensor outlives the forward.
    """
    if student_logits.dim() != 2:
        raise ValueError(f"expected [rows, V] logits, got shape {tuple(student_logits.shape)}")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    chunk_rows = max(1, chunk_elements // max(1, student_logits.shape[1]))
    needs_grad = student_logits.requires_grad and torch.is_grad_enabled()
    if rows is not None and rows_on_cpu is None:
        rows_on_cpu = rows.cpu()
    return _ChunkedRowLosses.apply(student_logits, rows, rows_on_cpu, chunk_loss, chunk_rows, num_terms, needs_grad)


def fused_ce_forward_kl(
    student_chunk: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
    shared: int | None = None,
    teacher_chunk: torch.Tensor | None = None,
    teacher_top: tuple[torch.Tensor, torch.Tensor] | None = None,
    diagnostics: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CE and forward KL of one chunk with their gradient in closed form: the common Hinton KD setup, fast.

    Returns ``(weighted loss, [ce, kd] sums of the active terms, gradient [n, V] or None)``, the same values as
    ``cross_entropy_sum`` + ``logit_distillation_loss(divergence="forward_kl")`` (or ``topk_distillation_loss`` with a
    cached ``teacher_top = (log_probs [n, k], indices [n, k])``) and their autograd gradient, without building a
    graph: CE's gradient is ``softmax(z) - ((1 - eps) * onehot + eps / V)``, forward KL's is ``T * (q - target)``
    with q the student's softened distribution and target the teacher's (on a top-k cache: its probability on the
    cached tokens, and off them its tail mass spread like the student's own tail, ``q_j * p_tail / q_tail``).
    The gradient is computed only when ``student_chunk.requires_grad``. ``diagnostics`` (with KD on) appends the
    sums of :func:`row_diagnostics` to the parts; their KL is this forward KL over T², so it costs nothing here.
    """
    with torch.no_grad():
        logits = student_chunk.float()
        vocab = logits.shape[-1]
        shared = vocab if shared is None else shared
        wants_grad = student_chunk.requires_grad
        grad = torch.zeros_like(logits) if wants_grad else None
        parts, total = [], logits.new_zeros(())
        log_probs_1 = None
        if ce_weight:
            log_probs_1 = torch.log_softmax(logits, -1)
            labelled = (labels != -100)[:, None]  # rows without a label (-100) take no part in CE
            safe_labels = labels.clamp_min(0)[:, None]
            nll = -log_probs_1.gather(-1, safe_labels) * labelled
            smoothed = -log_probs_1.mean(-1, keepdim=True) * labelled
            ce = (1 - label_smoothing) * nll.sum() + label_smoothing * smoothed.sum()
            parts.append(ce)
            total = total + ce_weight * ce
            if wants_grad:
                row_weight = labelled.to(logits.dtype) * ce_weight
                grad.addcmul_(log_probs_1.exp(), row_weight)
                grad.scatter_add_(-1, safe_labels, -row_weight * (1 - label_smoothing))
                if label_smoothing:
                    grad.sub_(row_weight * (label_smoothing / vocab))
        if kd_weight:
            if temperature == 1 and shared == vocab and log_probs_1 is not None:
                student_log_probs = log_probs_1
            else:
                student_log_probs = torch.log_softmax(logits[:, :shared] / temperature, -1)
            student_probs = student_log_probs.exp()
            if teacher_top is None:
                teacher_log_probs = torch.log_softmax(teacher_chunk.float() / temperature, -1)
                target = teacher_log_probs.exp()  # once: the loss and the gradient both use it
                kd = (target * (teacher_log_probs - student_log_probs)).sum() * temperature**2
            else:
                kd, target = _topk_forward_kl(student_log_probs, student_probs, teacher_top, temperature)
            parts.append(kd)
            total = total + kd_weight * kd
            if diagnostics:  # the diagnostic KL at the run's temperature is this very KD, without T^2
                teacher = teacher_top if teacher_top is not None else teacher_chunk
                parts.extend(row_diagnostics(logits[:, :shared], teacher, temperature, kl=kd / temperature**2).unbind())
            if wants_grad:
                grad[:, :shared].add_(student_probs.sub_(target), alpha=kd_weight * temperature)
        return total, torch.stack(parts), grad


def _topk_forward_kl(student_log_probs, student_probs, teacher_top, temperature):
    """Forward KL over the k cached tokens plus one tail bucket, and the gradient target (see fused_ce_forward_kl)."""
    teacher_log_probs, indices = teacher_top[0].float(), teacher_top[1].long()
    student_top = student_log_probs.gather(-1, indices)
    teacher_probs = teacher_log_probs.exp()
    target = torch.zeros_like(student_probs).scatter_(-1, indices, teacher_probs)
    kd = (teacher_probs * (teacher_log_probs - student_top)).sum()
    if indices.shape[-1] < student_probs.shape[-1]:
        off_support = student_probs.clone().scatter_(-1, indices, 0.0)
        student_tail = off_support.sum(-1, keepdim=True).clamp_min(1e-30)
        teacher_tail = (1.0 - teacher_probs.sum(-1, keepdim=True)).clamp_min(1e-30)
        kd = kd + (teacher_tail * (teacher_tail.log() - student_tail.log())).sum()
        target.add_(off_support.mul_(teacher_tail / student_tail))
    return kd * temperature**2, target


# What row_diagnostics sums, by teacher: a live teacher's full rows, or a top-k cache (one tail bucket).
LIVE_DIAGNOSTICS = ("teacher_kl", "argmax_agreement")
CACHED_DIAGNOSTICS = ("teacher_kl_topk", "teacher_topk_mass", "argmax_agreement")


def row_diagnostics(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    temperature: float,
    *,
    kl: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sums over one chunk's rows of the teacher-student diagnostics (no gradient, never weighed into the loss).

    Why: the KD term's value depends on its divergence, so runs are compared on what these measure the same way
    whatever it is. ``student_logits`` ``[n, V]`` are the rows both models share; ``teacher`` is a live teacher's
    logits ``[n, V]`` or a cache's ``(log-probabilities [n, k] at the temperature, token ids [n, k])``. Returns
    ``[teacher_kl, argmax_agreement]`` (live) or ``[teacher_kl_topk, teacher_topk_mass, argmax_agreement]`` (cache):
    the forward KL(teacher || student) at ``temperature`` (the run's, which the cache is at; no T² factor), over
    the whole vocabulary or over the k cached tokens plus the tail bucket; the teacher's mass on its k tokens
    (1 - tail); the count of rows where the teacher's most likely token is also the student's (one of them, on a
    tie). ``kl``: the KL sum when the caller already has it (the forward-KL term divided by T²).

    Agreement on live rows without an argmax or a boolean ``[n, V]`` tensor (on CPUs each costs about as much as a
    log-softmax): ``(s - max s) + (t - max t)`` is 0 exactly where both are 0, i.e. at a token both rank first
    (each difference is <= 0 and is 0 only at its row's maximum; a sum of non-positive floats rounds to 0 only when
    both are 0), so its row maximum is 0 exactly when the rows agree.
    """
    with torch.no_grad():
        student = student_logits.detach().float()
        student_max = student.amax(-1, keepdim=True)
        if not isinstance(teacher, tuple):
            teacher = teacher.detach().float()
            if kl is None:
                student_log_probs = F.log_softmax(student / temperature, -1)
                kl = forward_kl(student_log_probs, F.log_softmax(teacher / temperature, -1)).sum()
            both_first = (student - student_max).add_(teacher - teacher.amax(-1, keepdim=True)).amax(-1)
            return torch.stack([kl.float(), (both_first == 0).sum().float()])
        log_probs, indices = teacher
        if kl is None:
            kl = forward_kl(*topk_log_buckets(student, log_probs, indices, temperature)).sum()
        teacher_top = indices.gather(-1, log_probs.argmax(-1, keepdim=True)).long()
        agreement = (student.gather(-1, teacher_top) == student_max).sum()
        return torch.stack([kl.float(), log_probs.float().exp().sum(), agreement.float()])


def uses_liger(divergence: str, temperature: float, beta: float, device: torch.device) -> bool:
    """Whether the KD term of this setting runs in Liger's fused GPU kernel."""
    return _liger_chunk_loss(divergence, temperature, beta, device) is not None


def kd_chunk_function(divergence: str, temperature: float, beta: float, device: torch.device) -> ChunkLoss:
    """``fn(student_rows, teacher_rows) -> summed KD``: Liger's fused kernel where it applies, else the reference."""
    get_divergence(divergence)  # unknown names fail here, also when there are no rows
    return _liger_chunk_loss(divergence, temperature, beta, device) or partial(
        logit_distillation_loss, divergence=divergence, temperature=temperature, beta=beta
    )


def chunked_logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_elements: int = 2**18,
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
    kd_sum = kd_chunk_function(divergence, temperature, beta, student_logits.device)

    def chunk_loss(student_chunk: torch.Tensor, start: int, end: int):
        loss = kd_sum(student_chunk, teacher_logits[start:end].detach())
        return loss, loss.detach().reshape(1)

    loss, _ = chunked_row_losses(student_logits, chunk_loss, chunk_elements=chunk_elements)
    return loss


# ---- the step's CE / KD pass ------------------------------------------------------------------------------------


class LiveTeacherRows:
    """Teacher rows from the live teacher's logits of this batch: the same flat rows as the student's."""

    cached = False

    def __init__(self, teacher_logits: torch.Tensor, shared_rows: int | None = None):
        self.flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        self.shared_rows = shared_rows
        self.rows = self.rows_on_cpu = None

    def bind(self, rows: torch.Tensor, rows_on_cpu: torch.Tensor) -> LiveTeacherRows:
        """The flat rows the pass walks over (the distilled rows of the student's logits)."""
        self.rows, self.rows_on_cpu = rows, rows_on_cpu
        return self

    def chunk(self, start: int, end: int) -> torch.Tensor:
        """``[n, shared_rows]`` teacher logits of distilled rows ``start:end`` (the output rows both models share)."""
        return select_rows(self.flat, self.rows, self.rows_on_cpu, start, end)[:, : self.shared_rows]


class CachedTeacherRows:
    """Teacher rows from a top-k cache (``teacher_cache.py``): one row per distilled position, in the same order."""

    cached = True

    def __init__(self, log_probs: torch.Tensor, indices: torch.Tensor):
        self.log_probs, self.indices = log_probs, indices

    def chunk(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n, k] log-probabilities at the distillation temperature, [n, k] token ids)`` of rows ``start:end``."""
        return self.log_probs[start:end], self.indices[start:end]


def ce_kd_row_pass(
    student_logits: torch.Tensor,
    row_mask: torch.Tensor,
    row_labels: torch.Tensor | None,
    teacher_rows: LiveTeacherRows | CachedTeacherRows | None,
    *,
    ce_weight: float,
    kd_weight: float,
    ce_scale: torch.Tensor,
    kd_scale: torch.Tensor,
    divergence: str,
    temperature: float,
    beta: float,
    label_smoothing: float,
    shared_rows: int | None,
    chunk_elements: int,
    diagnostics: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE and KD in one chunked pass over the distilled rows of the student's flat logits.

    ``row_mask`` marks, over the student's logits without their last dimension, the rows that enter the pass (see
    ``modeling.logit_rows``); ``row_labels`` holds their labels (-100 on rows without one: CE skips them, KD does
    not). A weight of 0 switches its term off. ``ce_scale`` / ``kd_scale`` are one over the step-wide count of each
    term's rows, so the micro-batches of a step add up to the full batch. Rows are selected by index, so no
    ``[N, V]`` copy of either model's logits is made; each chunk computes its loss and gradient at once, with the
    weights and the normalization folded in. Returns the weighted loss and the active terms (detached) by name.
    ``diagnostics`` (with KD on) adds the :func:`row_diagnostics` of the same rows, each divided like KD (so a
    step's micro-batches add up to its mean per distilled row), computed chunk by chunk from the chunk's own tensors.
    """
    names = [name for name, weight in (("ce_loss", ce_weight), ("kd_loss", kd_weight)) if weight > 0]
    if not names:
        return ce_scale.new_zeros(()), {}
    diagnostics = bool(diagnostics and kd_weight)
    if diagnostics:
        names += CACHED_DIAGNOSTICS if teacher_rows.cached else LIVE_DIAGNOSTICS
    rows = row_mask.reshape(-1).nonzero().squeeze(-1)
    rows_on_cpu = rows.cpu()
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
    if isinstance(teacher_rows, LiveTeacherRows):
        teacher_rows.bind(rows, rows_on_cpu)
    scales = [scale for scale, weight in ((ce_scale, ce_weight), (kd_scale, kd_weight)) if weight > 0]
    scales = torch.stack(scales + [kd_scale] * (len(names) - len(scales)))
    closed_form = not kd_weight or (
        DIVERGENCES.get(divergence) is forward_kl and not uses_liger(divergence, temperature, beta, rows.device)
    )
    if closed_form:
        # CE and forward KL know their gradients: no autograd graph per chunk (see fused_ce_forward_kl).
        ce_step, kd_step = torch.stack([ce_scale, kd_scale]).tolist()  # one device sync per micro-batch

        def chunk_loss(student_chunk: torch.Tensor, start: int, end: int):
            teacher_chunk = teacher_top = None
            if kd_weight and teacher_rows.cached:
                teacher_top = teacher_rows.chunk(start, end)
            elif kd_weight:
                teacher_chunk = teacher_rows.chunk(start, end)
            total, parts, grad = fused_ce_forward_kl(
                student_chunk,
                row_labels[start:end] if row_labels is not None else None,
                ce_weight=ce_weight * ce_step,
                kd_weight=kd_weight * kd_step,
                temperature=temperature,
                label_smoothing=label_smoothing,
                shared=shared_rows,
                teacher_chunk=teacher_chunk,
                teacher_top=teacher_top,
                diagnostics=diagnostics,
            )
            return total, parts * scales, grad

    else:
        divergence_fn = get_divergence(divergence)
        liger = _liger_chunk_loss(divergence, temperature, beta, rows.device)

        def chunk_loss(student_chunk: torch.Tensor, start: int, end: int):
            parts, loss = [], 0.0
            if ce_weight:
                ce = cross_entropy_sum(student_chunk, row_labels[start:end], label_smoothing)
                parts.append(ce)
                loss = loss + ce_weight * ce * ce_scale
            student_shared = student_chunk[:, :shared_rows]
            teacher = teacher_rows.chunk(start, end)
            kl = None
            if liger is not None and not teacher_rows.cached:
                kd = liger(student_shared, teacher)
            else:  # the reference: logit_distillation_loss / topk_distillation_loss, log-softmaxes shared with kl
                if teacher_rows.cached:
                    student_log_probs, teacher_log_probs = topk_log_buckets(student_shared, *teacher, temperature)
                else:
                    student_log_probs = F.log_softmax(student_shared.float() / temperature, dim=-1)
                    teacher_log_probs = F.log_softmax(teacher.float() / temperature, dim=-1)
                kd = divergence_fn(student_log_probs, teacher_log_probs, beta).sum() * temperature**2
                if diagnostics:
                    kl = forward_kl(student_log_probs.detach(), teacher_log_probs).sum()
            parts.append(kd)
            if diagnostics:
                parts.extend(row_diagnostics(student_shared, teacher, temperature, kl=kl).unbind())
            loss = loss + kd_weight * kd * kd_scale
            return loss, torch.stack(parts).detach() * scales

    loss, sums = chunked_row_losses(
        student_flat, chunk_loss, rows=rows, rows_on_cpu=rows_on_cpu, num_terms=len(names), chunk_elements=chunk_elements
    )
    return loss, dict(zip(names, sums.unbind(), strict=True))


__all__ = [
    "CACHED_DIAGNOSTICS",
    "LIVE_DIAGNOSTICS",
    "CachedTeacherRows",
    "LiveTeacherRows",
    "ce_kd_row_pass",
    "chunked_logit_distillation_loss",
    "chunked_row_losses",
    "fused_ce_forward_kl",
    "kd_chunk_function",
    "row_diagnostics",
    "uses_liger",
]
