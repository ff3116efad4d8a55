"""Feature distillation: which student layer learns from which teacher layer, the projections between hidden sizes,
and the hidden-state, attention and normalization-statistics terms over those layer pairs.

The terms are means over the mapped layer pairs of per-position sums divided by the step-wide count of the
positions (decoder stacks sit on the label positions, every other stack on the input tokens), so gradient
accumulation stays exact like for the logit terms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import InputError
from .families import Stack, family_of, num_layers
from .layer_maps import resolve_layer_map
from .losses import attention_transfer_loss, hidden_state_loss, norm_statistics_loss
from .terms import StepPositions, TermPlan

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
        """Seq2seq decoders sit on the label positions; every other stack on the input tokens."""
        return self.student.cross_attentions_key is not None


def pair_layers(student: PreTrainedModel, teacher: PreTrainedModel, settings) -> tuple[StackPair, ...]:
    """The layer pairs of every stack: explicit maps, else the map ``create_student`` recorded, else spread evenly."""
    student_family, teacher_family = family_of(student.config), family_of(teacher.config)
    student_roles = [stack.role for stack in student_family.stacks]
    teacher_roles = [stack.role for stack in teacher_family.stacks]
    if student_roles != teacher_roles:
        raise InputError(
            f"feature distillation cannot map layers between a {student_family.name} student (stacks: "
            f"{', '.join(student_roles)}) and a {teacher_family.name} teacher (stacks: {', '.join(teacher_roles)}); "
            "set hidden_weight, attention_weight and norm_weight to 0"
        )
    recorded = getattr(student.config, "student_layer_map", None) or {}
    pairs = []
    for student_stack, teacher_stack in zip(student_family.stacks, teacher_family.stacks, strict=True):
        layer_map = resolve_layer_map(
            role=student_stack.role,
            count_argument=student_stack.count_argument,
            map_argument=student_stack.map_argument,
            teacher_layers=num_layers(teacher.config, teacher_stack),
            student_layers=num_layers(student.config, student_stack),
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
    were added.
    """
    student_hidden = getattr(student.config, family_of(student.config).hidden_size_attr)
    teacher_hidden = getattr(teacher.config, family_of(teacher.config).hidden_size_attr)
    if student_hidden == teacher_hidden:
        return False
    reference = next(student.parameters())
    projections = nn.ModuleDict({pair.student.role: nn.Linear(student_hidden, teacher_hidden) for pair in pairs}).to(
        device=reference.device, dtype=reference.dtype
    )
    student.add_module(PROJECTIONS_ATTR, projections)
    logger.info("hidden sizes differ (%d vs %d): training a projection per stack", student_hidden, teacher_hidden)
    return True


def feature_terms(
    plan: TermPlan, settings, pairs: tuple[StackPair, ...], student, student_outputs, teacher_outputs, positions: StepPositions
) -> dict[str, torch.Tensor]:
    """Hidden-state, attention and norm terms: mean over mapped layer pairs of per-position sums / counts."""
    projections = getattr(student, PROJECTIONS_ATTR, None)
    hidden, attention, norm = [], [], []
    for pair in pairs:
        if pair.on_target_side:
            mask, count = positions.target_mask, positions.target_count
        else:
            mask, count = positions.source_mask, positions.source_count
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
    terms = {}
    for name, values in (("hidden_loss", hidden), ("attention_loss", attention), ("norm_loss", norm)):
        if values:
            terms[name] = torch.stack(values).mean()
    return terms


__all__ = ["PROJECTIONS_ATTR", "StackPair", "attach_projections", "feature_terms", "pair_layers"]
