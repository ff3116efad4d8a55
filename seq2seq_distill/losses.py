"""Distillation loss terms as plain functions on tensors.

Every function here returns a *sum* over the rows (tokens or examples) it is given, never a mean: the trainer
divides by the number of supervised positions in the whole optimizer step, which is what makes gradient
accumulation exact. Callers select the supervised rows *before* calling (mask first, softmax second), so padding
never enters a softmax.

Divergences live in a small registry so that a setting such as ``divergence="reverse_kl"`` maps to a function and
users can add their own with :func:`register_divergence` without touching the trainer. This module imports only
torch (and the package's exception type).

About 430 lines of independent functions, one per distance (with the registry of divergences): each is tested
alone on tensors, so they stay together where a reader looks for "which loss is this".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from .errors import InputError


class Divergence(Protocol):
    def __call__(self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
        """Per-row divergence ``[N]`` between two ``[N, V]`` tensors of log-probabilities."""


DIVERGENCES: dict[str, Divergence] = {}


def register_divergence(name: str) -> Callable[[Divergence], Divergence]:
    """Register ``fn(student_log_probs [N, V], teacher_log_probs [N, V], beta) -> [N]`` under ``name``."""

    def decorator(fn: Divergence) -> Divergence:
        if name in DIVERGENCES:
            raise ValueError(f"divergence {name!r} is already registered")
        DIVERGENCES[name] = fn
        return fn

    return decorator


def get_divergence(name: str) -> Divergence:
    if name not in DIVERGENCES:
        known = ", ".join(sorted(DIVERGENCES))
        raise ValueError(f"unknown divergence {name!r}; choose one of: {known} (set --divergence)")
    return DIVERGENCES[name]


def _kl_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row; rows where p is exactly zero contribute nothing (0 log 0 = 0)."""
    return F.kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1)


def _log_mixture(a_log: torch.Tensor, b_log: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space without leaving it."""
    if weight_a <= 0.0:
        return b_log
    if weight_a >= 1.0:
        return a_log
    return torch.logaddexp(a_log + math.log(weight_a), b_log + math.log1p(-weight_a))


@register_divergence("forward_kl")
def forward_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(teacher || student): mean-seeking, the classic Hinton KD term."""
    return _kl_from_log_probs(teacher_log_probs, student_log_probs)


@register_divergence("reverse_kl")
def reverse_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(student || teacher): mode-seeking, favoured for generative students (MiniLLM)."""
    return _kl_from_log_probs(student_log_probs, teacher_log_probs)


@register_divergence("generalized_jsd")
def generalized_jsd(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """beta * KL(t || m) + (1 - beta) * KL(s || m) with m = beta * t + (1 - beta) * s (GKD's form).

    beta = 0.5 is the Jensen-Shannon divergence; beta -> 0 and beta -> 1 approach scaled forward / reverse KL.
    """
    mixture_log = _log_mixture(teacher_log_probs, student_log_probs, beta)
    return beta * _kl_from_log_probs(teacher_log_probs, mixture_log) + (1.0 - beta) * _kl_from_log_probs(
        student_log_probs, mixture_log
    )


@register_divergence("js")
def jensen_shannon(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Symmetric Jensen-Shannon divergence (ignores beta; use ``generalized_jsd`` to weight it)."""
    return generalized_jsd(student_log_probs, teacher_log_probs, 0.5)


@register_divergence("skew_kl")
def skew_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """KL(t || beta * t + (1 - beta) * s) (DistiLLM's skew KL): forward KL kept finite where the student is ~0."""
    return _kl_from_log_probs(teacher_log_probs, _log_mixture(teacher_log_probs, student_log_probs, beta))


@register_divergence("skew_reverse_kl")
def skew_reverse_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """KL(s || beta * s + (1 - beta) * t) (DistiLLM's skew reverse KL)."""
    return _kl_from_log_probs(student_log_probs, _log_mixture(student_log_probs, teacher_log_probs, beta))


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Task loss: summed cross-entropy of ``logits [N, C]`` against ``labels [N]`` (-100 rows ignored)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum", label_smoothing=label_smoothing)


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Summed divergence between temperature-softened distributions, times T².

    ``student_logits`` and ``teacher_logits`` are ``[N, V]``, already restricted to supervised rows. The T² factor
    keeps the gradient scale independent of the temperature (Hinton et al., 2015), so the KD weight means the same
    thing at every T. Both log-softmaxes are taken once, in float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    divergence_fn = get_divergence(divergence)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return divergence_fn(student_log_probs, teacher_log_probs, beta).sum() * temperature**2


# ---- several teachers: one target ------------------------------------------------------------------------------

# probability: log sum_i w_i softmax(z_i / T), the arithmetic mixture; geometric: log_softmax(sum_i w_i log_softmax(z_i / T)).
TEACHER_MIXTURES = ("probability", "geometric")


def add_to_teacher_mixture(
    mixture: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    weight: float | torch.Tensor,
    *,
    temperature: float,
    kind: str = "probability",
) -> torch.Tensor:
    """Fold one teacher into a running mixture (``None`` before the first); :func:`finish_teacher_mixture` ends it.

    ``teacher_logits`` ``[B, ..., V]``; ``weight`` a number or ``[B]`` (one per example, broadcast over the other
    dimensions: routing gives each row its own teacher). The running value is float32 ``[B, ..., V]``: for
    ``probability`` ``log sum_i w_i p_i`` of the teachers so far, for ``geometric`` ``sum_i w_i log p_i``, with
    ``p_i = softmax(z_i / T)``. One teacher at a time, so a trainer holds one teacher's logits beside the running
    value, never all of them.
    """
    log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    weight = torch.as_tensor(weight, dtype=torch.float32, device=log_probs.device)
    weight = weight.reshape(weight.shape + (1,) * (log_probs.dim() - weight.dim()))
    if kind == "probability":
        term = log_probs + weight.log()  # log 0 = -inf: a row that does not use this teacher gets nothing from it
        return term if mixture is None else torch.logaddexp(mixture, term)
    if kind == "geometric":
        term = torch.where(weight > 0, log_probs * weight, 0.0)  # 0 * -inf would be nan
        return term if mixture is None else mixture + term
    raise ValueError(f"unknown teacher mixture {kind!r}; choose one of: {', '.join(TEACHER_MIXTURES)}")


def finish_teacher_mixture(mixture: torch.Tensor) -> torch.Tensor:
    """The mixture's log-probabilities: normalized over the last dimension (the geometric mean needs it; for the
    arithmetic one, whose weights sum to 1, it only removes float rounding)."""
    return F.log_softmax(mixture, dim=-1)


def teacher_mixture_log_probs(
    teacher_logits: list[torch.Tensor] | tuple[torch.Tensor, ...],
    weights: torch.Tensor | list[float],
    *,
    temperature: float,
    kind: str = "probability",
) -> torch.Tensor:
    """The KD target of several teachers as log-probabilities, float32 ``[B, ..., V]``.

    ``teacher_logits``: K tensors ``[B, ..., V]``; ``weights``: ``[K]`` or ``[B, K]`` (per example), normalized to
    sum 1 here. ``probability`` (the default) is ``log sum_i w_i softmax(z_i / T)``: one target distribution, so
    every divergence applies to it unchanged and T² and the row counts stay those of single-teacher KD; with forward
    KL its gradient is exactly that of the weighted sum of KLs to each teacher (the two differ by a constant). A sum
    of reverse KLs to each teacher is minimized instead by their normalized geometric mean, ``geometric`` here
    (``softmax(sum_i w_i z_i / T)``: averaged logits), which puts mass only where all teachers agree; with reverse KL
    it has that sum's gradient.
    """
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.shape[-1] != len(teacher_logits):
        raise ValueError(f"{weights.shape[-1]} weights for {len(teacher_logits)} teachers")
    weights = weights / weights.sum(-1, keepdim=True)
    mixture = None
    for index, logits in enumerate(teacher_logits):
        mixture = add_to_teacher_mixture(mixture, logits, weights[..., index], temperature=temperature, kind=kind)
    return finish_teacher_mixture(mixture)


def _log_tail(top_log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(top))) per row: the log-mass outside the top-k, floored so an empty tail stays finite."""
    covered = torch.logsumexp(top_log_probs, dim=-1, keepdim=True).exp()
    return torch.log((1.0 - covered).clamp_min(1e-30))


def topk_log_buckets(
    student_logits: torch.Tensor, teacher_topk_log_probs: torch.Tensor, teacher_topk_indices: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outcomes a top-k cached teacher and the student are compared on, as ``([N, k (+1)], [N, k (+1)])`` log-probs.

    The k cached tokens plus one "tail" outcome holding all remaining mass (the teacher's is 1 - sum of its top-k;
    the student's, one minus its own softened mass on those tokens); no tail when k covers the whole vocabulary.
    Split out of :func:`topk_distillation_loss` so that the KD term and a diagnostic KL can share one log-softmax.
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    student_top = student_log_probs.gather(-1, teacher_topk_indices.long())
    teacher_top = teacher_topk_log_probs.float()
    if teacher_top.shape[-1] < student_logits.shape[-1]:
        # With the whole vocabulary cached there is no tail; a tail of float rounding noise would only add error.
        student_top = torch.cat([student_top, _log_tail(student_top)], dim=-1)
        teacher_top = torch.cat([teacher_top, _log_tail(teacher_top)], dim=-1)
    return student_top, teacher_top


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_topk_log_probs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """KD against a cached teacher that kept only its top-k tokens per position, summed over rows, times T².

    ``student_logits`` is ``[N, V]``; ``teacher_topk_log_probs`` ``[N, k]`` are the teacher's log-probabilities at
    ``temperature`` (already softened) of the tokens in ``teacher_topk_indices`` ``[N, k]``. Both distributions are
    compared on k + 1 outcomes (:func:`topk_log_buckets`): the k cached tokens and one "tail" outcome holding all
    remaining mass. The tail keeps the student from being rewarded for mass it puts outside the support, and when k
    covers the whole vocabulary the tail is empty and the value equals :func:`logit_distillation_loss`.
    """
    divergence_fn = get_divergence(divergence)
    student_top, teacher_top = topk_log_buckets(student_logits, teacher_topk_log_probs, teacher_topk_indices, temperature)
    return divergence_fn(student_top, teacher_top, beta).sum() * temperature**2


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, *, kind: str = "mse") -> torch.Tensor:
    """Summed per-token distance between ``[N, D]`` hidden states (project the student first if sizes differ).

    ``mse`` is the squared error averaged over the hidden dimension; ``cosine`` is ``1 - cos`` (DistilBERT's
    cosine embedding loss), which ignores the scale of the hidden states.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: student {tuple(student_hidden.shape)}, teacher "
            f"{tuple(teacher_hidden.shape)}; a projection must map the student's size to the teacher's"
        )
    student_hidden, teacher_hidden = student_hidden.float(), teacher_hidden.float()
    if kind == "mse":
        return (student_hidden - teacher_hidden).pow(2).mean(-1).sum()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)).sum()
    raise ValueError(f"unknown hidden loss {kind!r}; choose mse or cosine (set --hidden_loss)")


def align_attention_heads(student_attention: torch.Tensor, teacher_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring ``[B, H, Q, K]`` attention maps to the same head count.

    Equal counts pair heads one to one; when the teacher's count is a multiple of the student's, each student head
    is compared with the mean of its group of teacher heads; otherwise both sides are averaged over all heads.
    """
    student_heads, teacher_heads = student_attention.shape[1], teacher_attention.shape[1]
    if student_heads == teacher_heads:
        return student_attention, teacher_attention
    if teacher_heads % student_heads == 0:
        batch, _, queries, keys = teacher_attention.shape
        grouped = teacher_attention.reshape(batch, student_heads, teacher_heads // student_heads, queries, keys)
        return student_attention, grouped.mean(2)
    return student_attention.mean(1, keepdim=True), teacher_attention.mean(1, keepdim=True)


def attention_transfer_loss(
    student_attention: torch.Tensor,
    teacher_attention: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    kind: str = "kl",
) -> torch.Tensor:
    """Summed over the masked query positions: the per-row distance between attention maps, averaged over heads.

    ``student_attention`` is ``[B, Hs, Q, K]``, ``teacher_attention`` ``[B, Ht, Q, K]`` (probabilities, rows sum
    to 1), ``query_mask`` ``[B, Q]`` (True = keep). ``kl`` is KL(teacher row || student row) as in MiniLM; ``mse``
    is the squared error summed over keys.
    """
    student_attention, teacher_attention = align_attention_heads(student_attention, teacher_attention)
    query_mask = query_mask.bool()
    # [B, H, Q, K] -> [N, H, K] on kept query rows only, so padding rows cost nothing below.
    student_rows = student_attention.float().transpose(1, 2)[query_mask]
    teacher_rows = teacher_attention.float().transpose(1, 2)[query_mask]
    if kind == "kl":
        per_row = (torch.xlogy(teacher_rows, teacher_rows) - teacher_rows * torch.log(student_rows.clamp_min(1e-12))).sum(-1)
    elif kind == "mse":
        per_row = (student_rows - teacher_rows).pow(2).sum(-1)
    else:
        raise ValueError(f"unknown attention loss {kind!r}; choose kl or mse (set --attention_loss)")
    return per_row.mean(-1).sum()


def _relation_log_probs(states: torch.Tensor, allowed: torch.Tensor, query_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Log self-attention relations ``[N, H, T]`` of the kept query rows: log softmax(X_h X_h^T / sqrt(d_h)) over keys."""
    batch, length, width = states.shape
    if heads < 1 or width % heads:
        raise InputError(
            f"relation_heads = {heads} does not divide the width {width} of the queries, keys and values; set "
            "--relation_heads to a common divisor of the student's and the teacher's widths"
        )
    states = states.float().reshape(batch, length, heads, width // heads).transpose(1, 2)  # [B, H, T, d_h]
    scores = states @ states.transpose(-1, -2) / math.sqrt(width // heads)  # [B, H, T, T]
    # A finite fill rather than -inf: a masked key gets probability 0 and no NaN reaches the gradient.
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    return torch.log_softmax(scores.transpose(1, 2)[query_mask], dim=-1)  # kept query rows only


def attention_relation_loss(
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    mask: torch.Tensor,
    relation_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """Summed over the masked query positions: KL(teacher relation row || student relation row), averaged over heads.

    The self-attention relations of MiniLM / MiniLMv2 (Wang et al. 2020, 2021). ``student_states`` ``[B, T, Ds]``
    and ``teacher_states`` ``[B, T, Dt]`` are the same kind of activation (queries, keys or values) of one layer
    each. Each is split into ``relation_heads`` heads of width ``D / relation_heads`` (it must divide both widths),
    and a head's relation is ``softmax(X_h X_h^T / sqrt(d_h))`` over the key positions: ``[B, H, T, T]`` on either
    side, so hidden sizes and attention head counts may differ without a projection. ``mask`` ``[B, T]`` (True = a
    real position) takes padded keys out of every softmax and padded queries out of the sum; ``causal`` also takes
    out future keys (decoders, GPT-2). Computed in float32. Divide by the step-wide count of the positions.
    """
    if student_states.shape[:2] != teacher_states.shape[:2] or tuple(mask.shape) != tuple(student_states.shape[:2]):
        raise ValueError(
            f"relation inputs differ in batch or length: student {tuple(student_states.shape)}, teacher "
            f"{tuple(teacher_states.shape)}, mask {tuple(mask.shape)}"
        )
    query_mask = mask.bool()
    length = query_mask.shape[1]
    allowed = query_mask[:, None, :].expand(-1, length, -1)  # [B, query, key]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    student_log = _relation_log_probs(student_states, allowed, query_mask, relation_heads)
    teacher_log = _relation_log_probs(teacher_states, allowed, query_mask, relation_heads)
    kept_keys = allowed[query_mask][:, None]  # [N, 1, T]
    per_key = torch.where(kept_keys, teacher_log.exp() * (teacher_log - student_log), 0.0)
    return per_key.sum(-1).mean(-1).sum()


def norm_statistics_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Summed over tokens: squared gaps in the per-token mean and log-variance over the hidden dimension.

    These are the statistics a LayerNorm computes for each token; matching them keeps the student's activations
    on the teacher's scale. Log-variance makes the term scale-free, and since only per-token scalars are
    compared, it needs no projection when hidden sizes differ. Inputs are ``[N, Ds]`` and ``[N, Dt]``.
    """
    student_hidden, teacher_hidden = student_hidden.float(), teacher_hidden.float()
    mean_gap = student_hidden.mean(-1) - teacher_hidden.mean(-1)
    log_var_gap = torch.log(student_hidden.var(-1, unbiased=False) + eps) - torch.log(
        teacher_hidden.var(-1, unbiased=False) + eps
    )
    return (mean_gap.pow(2) + log_var_gap.pow(2)).sum()


def sorted_probability_l1(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per row ``[N]``: the L1 distance between the two rows sorted in decreasing order, the shorter zero-padded.

    The closed form of ULD (Boizard et al. 2024: their Wasserstein-1 distance under a uniform transport cost,
    which needs no correspondence between the two vocabularies). ``student_probs`` ``[N, Vs]`` and ``teacher_probs``
    ``[N, Vt]`` may differ in width. Rows need not sum to 1: merged spans (see ``cross_tokenizer``) are
    unnormalized, and the missing mass is then part of the distance. The zero padding is not materialized: past
    the shorter width only the longer side's sorted tail remains, so its sum is added instead.
    """
    if student_probs.shape[:-1] != teacher_probs.shape[:-1]:
        raise ValueError(f"student rows {tuple(student_probs.shape)} and teacher rows {tuple(teacher_probs.shape)} differ")
    student_sorted = student_probs.float().sort(dim=-1, descending=True).values
    teacher_sorted = teacher_probs.float().sort(dim=-1, descending=True).values
    shared = min(student_sorted.shape[-1], teacher_sorted.shape[-1])
    distance = (student_sorted[..., :shared] - teacher_sorted[..., :shared]).abs().sum(-1)
    # Probabilities are non-negative, so |p - 0| over the padded part is the plain sum of the longer tail.
    return distance + student_sorted[..., shared:].sum(-1) + teacher_sorted[..., shared:].sum(-1)


def universal_logit_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """ULD summed over rows: :func:`sorted_probability_l1` of the two softmaxes at ``temperature``.

    For a student and a teacher with different vocabularies: ``student_logits`` ``[N, Vs]`` and ``teacher_logits``
    ``[N, Vt]`` are rows already aligned one to one (see ``cross_tokenizer.align_by_offsets``). Both sides are
    softened by the same ``temperature`` (TRL's GOLD trainer allows one per side, both 1 by default), and there
    is no T² factor: the distance is between probabilities and bounded by 2 per row, not a KL whose gradient
    shrinks as 1/T². Computed in float32.
    """
    student_probs = F.softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return sorted_probability_l1(student_probs, teacher_probs).sum()


__all__ = [
    "DIVERGENCES",
    "TEACHER_MIXTURES",
    "add_to_teacher_mixture",
    "align_attention_heads",
    "attention_relation_loss",
    "attention_transfer_loss",
    "cross_entropy_sum",
    "finish_teacher_mixture",
    "forward_kl",
    "generalized_jsd",
    "get_divergence",
    "hidden_state_loss",
    "jensen_shannon",
    "logit_distillation_loss",
    "norm_statistics_loss",
    "register_divergence",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "sorted_probability_l1",
    "teacher_mixture_log_probs",
    "topk_distillation_loss",
    "topk_log_buckets",
    "universal_logit_distillation_loss",
]
