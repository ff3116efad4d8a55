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
