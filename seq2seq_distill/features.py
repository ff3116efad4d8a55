"""Feature distillation: which student layer learns from which teacher layer, the projections between hidden sizes,
and the hidden-state, attention, normalization-statistics and self-attention relation terms over those layer pairs.

The terms are means over the mapped layer pairs of per-position sums divided by the step-wide count of the
positions (decoder stacks sit on the label positions, every other stack on the input tokens), so gradient
accumulation stays exact like for the logit terms.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import InputError
from .families import Stack, family_of, num_layers, self_attention_projections
from .layer_maps import resolve_layer_map
from .losses import attention_relation_loss, attention_transfer_loss, hidden_state_loss, norm_statistics_loss
from .terms import BUILT_IN_TERMS, StepPositions, TermPlan

logger = logging.getLogger(__name__)

# The student's submodule holding the learned projections: saved with it, resumed with it, ignored for inference.
PROJECTIONS_ATTR = "distillation_projections"


@dataclass(frozen=True)
class StackPair:
    """A student stack, its teacher counterpart, and the teacher layer behind each student layer."""

    student: Stack
    teacher: Stack
    layer_map: tuple[int, ...]

    @property
    def on_target_side(self) -> bool:
        return on_target_side(self.student)


def on_target_side(stack: Stack) -> bool:
    """Seq2seq decoders sit on the label positions; every other stack on the input tokens."""
    return stack.cross_attentions_key is not None


def _config_of(model_or_config):
    """A model's config, or a config given as it is (a teacher cache keeps the teacher's config, not the teacher)."""
    return getattr(model_or_config, "config", model_or_config)


def pair_layers(student: PreTrainedModel, teacher: PreTrainedModel, settings) -> tuple[StackPair, ...]:
    """The layer pairs of every stack: explicit maps, else the map ``create_student`` recorded, else spread evenly.

    ``student`` and ``teacher`` may be models or their configs: only the configs are read, so a teacher cache
    (which keeps the teacher's config) and ``cache_teacher`` (which knows the student by its config) pair alike.
    """
    student_config, teacher_config = _config_of(student), _config_of(teacher)
    student_family, teacher_family = family_of(student_config), family_of(teacher_config)
    student_roles = [stack.role for stack in student_family.stacks]
    teacher_roles = [stack.role for stack in teacher_family.stacks]
    if student_roles != teacher_roles:
        weights = [term.weight for term in BUILT_IN_TERMS if "layer_pairs" in term.needs]
        raise InputError(
            f"feature distillation cannot map layers between a {student_family.name} student (stacks: "
            f"{', '.join(student_roles)}) and a {teacher_family.name} teacher (stacks: {', '.join(teacher_roles)}); "
            f"set {', '.join(weights[:-1])} and {weights[-1]} to 0"
        )
    recorded = getattr(student_config, "student_layer_map", None) or {}
    pairs = []
    for student_stack, teacher_stack in zip(student_family.stacks, teacher_family.stacks, strict=True):
        layer_map = resolve_layer_map(
            role=student_stack.role,
            count_argument=student_stack.count_argument,
            map_argument=student_stack.map_argument,
            teacher_layers=num_layers(teacher_config, teacher_stack),
            student_layers=num_layers(student_config, student_stack),
            explicit=getattr(settings, student_stack.map_argument, None),
            recorded=recorded.get(student_stack.role),
            allow_deeper=True,
        )
        pairs.append(StackPair(student_stack, teacher_stack, tuple(layer_map)))
    return tuple(pairs)


def attach_projections(student: PreTrainedModel, teacher: PreTrainedModel, pairs: tuple[StackPair, ...]) -> bool:
    """Add learned student->teacher projections for hidden-state matching when the hidden sizes differ.

    They are registered as a submodule of the student, so the Trainer's optimizer, DDP wrapper, checkpoints and
    resume all treat them as part of the student, and ``save_pretrained`` stores them with it. Returns whether any
    were added. ``teacher``: the model or its config (only its hidden size is read).
    """
    student_hidden = getattr(student.config, family_of(student.config).hidden_size_attr)
    teacher_config = _config_of(teacher)
    teacher_hidden = getattr(teacher_config, family_of(teacher_config).hidden_size_attr)
    if student_hidden == teacher_hidden:
        return False
    reference = next(student.parameters())
    projections = nn.ModuleDict({pair.student.role: nn.Linear(student_hidden, teacher_hidden) for pair in pairs}).to(
        device=reference.device, dtype=reference.dtype
    )
    student.add_module(PROJECTIONS_ATTR, projections)
    logger.info("hidden sizes differ (%d vs %d): training a projection per stack", student_hidden, teacher_hidden)
    return True


@dataclass(frozen=True)
class RelationPair:
    """One student layer whose self-attention relations learn from one teacher layer's, split into ``heads``."""

    stacks: StackPair
    student_layer: int
    teacher_layer: int
    heads: int


def _projection_width(modules: tuple[nn.Module, ...]) -> int:
    """The width of the queries (as of the keys and values): a Linear's outputs, or a third of a fused projection's."""
    if len(modules) == 1:  # GPT-2's Conv1D keeps its output count in ``nf``, a Linear in ``out_features``
        return int(getattr(modules[0], "nf", None) or modules[0].out_features) // 3
    return int(modules[0].out_features)  # attributes, not weight shapes: a ZeRO-3 shard has empty weights


def relation_pairs(student, teacher, pairs: tuple[StackPair, ...], settings) -> tuple[RelationPair, ...]:
    """The layers of the self-attention relation term and each one's relation head count.

    ``relation_layers="last"``: each stack's last student layer and the teacher layer mapped to it (MiniLMv2);
    ``"all"``: every mapped pair. ``relation_heads`` when set, else the student stack's attention head count when it
    divides the teacher's width, else its largest divisor that does (their greatest common divisor); it must divide
    both models' query / key / value widths.
    """
    chosen = []
    for pair in pairs:
        layers = range(len(pair.layer_map)) if settings.relation_layers == "all" else (len(pair.layer_map) - 1,)
        for student_layer in layers:
            teacher_layer = pair.layer_map[student_layer]
            student_width = _projection_width(self_attention_projections(student, pair.student, student_layer))
            teacher_width = _projection_width(self_attention_projections(teacher, pair.teacher, teacher_layer))
            student_heads = int(getattr(student.config, pair.student.head_count_attr))
            heads = settings.relation_heads or math.gcd(student_heads, teacher_width)
            common = math.gcd(student_width, teacher_width)
            if common % heads:
                divisors = [n for n in range(1, common + 1) if not common % n]
                raise InputError(
                    f"relation_heads = {heads} must divide the {pair.student.role} query / key / value widths of the "
                    f"student ({student_width}) and the teacher ({teacher_width}); choose one of "
                    f"{', '.join(map(str, divisors))}, or leave relation_heads unset"
                )
            chosen.append(RelationPair(pair, student_layer, teacher_layer, heads))
    return tuple(chosen)


def _keep_projection(captured: dict, key: tuple[str, int], slot: int | None, module, args, output) -> None:
    if slot is None:  # a fused projection: queries, keys and values side by side
        captured[key] = list(output.chunk(3, dim=-1))
    else:
        captured.setdefault(key, [None, None, None])[slot] = output


@contextmanager
def capture_self_attention(model, layers: Iterable[tuple[Stack, int]]) -> Iterator[dict[tuple[str, int], list[torch.Tensor]]]:
    """Record the queries, keys and values ``[B, T, D]`` of the named layers' self-attention in the forwards inside.

    Yields ``{(stack role, layer): [queries, keys, values]}``, filled by forward hooks on the projections that are
    removed on exit: nothing is registered for an empty ``layers``, and nothing outlives the block (generation and
    prediction outside it record nothing).
    """
    captured: dict[tuple[str, int], list[torch.Tensor]] = {}
    handles = []
    try:
        for stack, layer in dict.fromkeys(layers):  # a teacher layer behind several student layers: hooked once
            modules = self_attention_projections(model, stack, layer)
            for slot, module in enumerate(modules):
                hook = partial(_keep_projection, captured, (stack.role, layer), slot if len(modules) == 3 else None)
                handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stack_positions(pair: StackPair, positions: StepPositions) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, step-wide count) of the positions a stack's terms sum over (a teacher cache keeps these rows)."""
    if pair.on_target_side:
        return positions.target_mask, positions.target_count
    return positions.source_mask, positions.source_count


def feature_terms(
    plan: TermPlan,
    settings,
    pairs: tuple[StackPair, ...],
    student,
    student_outputs,
    teacher_outputs,
    positions: StepPositions,
    relations: tuple[RelationPair, ...] = (),
    qkv: tuple[dict, dict] | None = None,
) -> dict[str, torch.Tensor]:
    """Hidden-state, attention, norm and relation terms: mean over mapped layer pairs of per-position sums / counts.

    The relation term is the mean over ``relations`` and over the queries, keys and values (Q-Q, K-K, V-V) of
    :func:`~seq2seq_distill.losses.attention_relation_loss`; ``qkv`` holds what :func:`capture_self_attention`
    recorded of the student and of the teacher.
    """
    projections = getattr(student, PROJECTIONS_ATTR, None)
    hidden, attention, norm, relation = [], [], [], []
    for pair in pairs:
        mask, count = stack_positions(pair, positions)
        if plan.hidden or plan.norm:
            student_states = student_outputs[pair.student.hidden_states_key]
            teacher_states = teacher_outputs[pair.teacher.hidden_states_key]
            for student_layer, teacher_layer in enumerate(pair.layer_map):
                # Index 0 holds the embeddings, so layer i's output is entry i + 1.
                student_states_of_layer = student_states[student_layer + 1][mask]
                teacher_states_of_layer = teacher_states[teacher_layer + 1][mask]
                if plan.hidden:
                    projection = projections[pair.student.role] if projections is not None else None
                    projected = projection(student_states_of_layer) if projection is not None else student_states_of_layer
                    hidden.append(hidden_state_loss(projected, teacher_states_of_layer, kind=settings.hidden_loss) / count)
                if plan.norm:
                    norm.append(norm_statistics_loss(student_states_of_layer, teacher_states_of_layer) / count)
        if plan.attention:
            keys = [pair.student.attentions_key] + ([pair.student.cross_attentions_key] if pair.on_target_side else [])
            for key in keys:
                student_maps, teacher_maps = student_outputs[key], teacher_outputs[key]
                for student_layer, teacher_layer in enumerate(pair.layer_map):
                    attention.append(
                        attention_transfer_loss(
                            student_maps[student_layer], teacher_maps[teacher_layer], mask, kind=settings.attention_loss
                        )
                        / count
                    )
    if plan.relation:
        student_qkv, teacher_qkv = qkv or ({}, {})
        for each in relations:
            mask, count = stack_positions(each.stacks, positions)
            student_kinds = student_qkv[(each.stacks.student.role, each.student_layer)]
            teacher_kinds = teacher_qkv[(each.stacks.teacher.role, each.teacher_layer)]
            causal = each.stacks.student.causal
            for student_states, teacher_states in zip(student_kinds, teacher_kinds, strict=True):
                relation.append(attention_relation_loss(student_states, teacher_states, mask, each.heads, causal=causal) / count)
    terms = {}
    named = (("hidden_loss", hidden), ("attention_loss", attention), ("norm_loss", norm), ("relation_loss", relation))
    for name, values in named:
        if values:
            terms[name] = torch.stack(values).mean()
    return terms


__all__ = [
    "PROJECTIONS_ATTR",
    "RelationPair",
    "StackPair",
    "attach_projections",
    "capture_self_attention",
    "feature_terms",
    "on_target_side",
    "pair_layers",
    "relation_pairs",
    "stack_positions",
]
