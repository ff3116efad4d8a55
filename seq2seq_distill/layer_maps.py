"""Which teacher layer each student layer copies from or is matched against.

A layer map is a list with one teacher layer index per student layer: ``map[i]`` is the teacher layer behind
student layer ``i``. The same map drives layer copying (:func:`~seq2seq_distill.students.create_student`) and the
hidden-state / attention / norm terms of the trainer, and is recorded in the student's config
(``student_layer_map``) so a reader can see where each layer came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import InputError


def spread_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Evenly spread teacher layers, always keeping the first and the last (the distilbart recipe).

    Positions are ``i * (L - 1) / (n - 1)`` rounded half up: 12 -> 6 gives 0, 2, 4, 7, 9, 11; 12 -> 3 gives
    0, 6, 11; any -> 1 gives 0.
    """
    if num_student_layers < 1:
        raise InputError(f"a student needs at least 1 layer, got {num_student_layers}")
    if num_student_layers > num_teacher_layers:
        raise InputError(
            f"the student cannot have more layers ({num_student_layers}) than the teacher ({num_teacher_layers}); "
            "choose at most the teacher's layer count"
        )
    if num_student_layers == 1:
        return [0]
    step = (num_teacher_layers - 1) / (num_student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(num_student_layers)]


def check_layer_map(layer_map: Sequence[int], num_teacher_layers: int, num_student_layers: int, name: str) -> list[int]:
    """Validate a user-given map; ``name`` is the argument it came from, for the error message."""
    layer_map = [int(index) for index in layer_map]
    if len(layer_map) != num_student_layers:
        raise InputError(
            f"{name} has {len(layer_map)} entries but the student has {num_student_layers} layers; "
            "give one teacher layer index per student layer"
        )
    out_of_range = [index for index in layer_map if not 0 <= index < num_teacher_layers]
    if out_of_range:
        raise InputError(
            f"{name} index {out_of_range[0]} is out of range: the teacher has {num_teacher_layers} layers "
            f"(valid indices 0..{num_teacher_layers - 1})"
        )
    return layer_map


def resolve_layer_map(
    *,
    role: str,
    count_argument: str,
    map_argument: str,
    teacher_layers: int,
    student_layers: int | None,
    explicit: Sequence[int] | None = None,
    recorded: Sequence[int] | None = None,
    allow_deeper: bool = False,
) -> list[int]:
    """The teacher layer behind each student layer: the one rule for building a student and for pairing layers.

    An explicit map (``--encoder_layer_map``) is checked and wins; else a map recorded in the student's config by
    ``create_student`` when it still fits; else layers spread evenly (:func:`spread_layers`). ``student_layers``
    None means "as many as the explicit map, else as the teacher" (a student being built). A student deeper than the
    teacher can only be paired through an explicit map, and only where ``allow_deeper`` (an existing deep-and-thin
    student; a copied student is never deeper than its teacher).
    """
    if allow_deeper and explicit is None and student_layers is not None and student_layers > teacher_layers:
        # an existing (deep-and-thin) student: no count flag was given, only a map can pair its layers
        raise InputError(
            f"the student has {student_layers} {role} layers but the teacher only {teacher_layers}; give "
            f"--{map_argument} to pair them"
        )
    if student_layers is not None and student_layers > teacher_layers and not allow_deeper:
        raise InputError(
            f"--{count_argument} {student_layers} is more than the teacher's {teacher_layers} {role} layers; a student "
            f"must be smaller: choose at most {teacher_layers}, or give --{map_argument} to pair deeper layers"
        )
    if explicit is not None:
        return check_layer_map(
            explicit, teacher_layers, len(explicit) if student_layers is None else student_layers, map_argument
        )
    count = teacher_layers if student_layers is None else student_layers
    if recorded is not None and len(recorded) == count and max(recorded) < teacher_layers:
        return [int(index) for index in recorded]
    return spread_layers(teacher_layers, count)
