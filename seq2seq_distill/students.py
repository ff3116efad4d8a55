"""Build a smaller student of the teacher's family by copying layers (the distilbart / DistilBERT recipe), and check
the student flags against the teacher's config before any weight is read (:func:`check_student_plan`). Both go
through :func:`plan_layers`, whose per-stack rule (``layer_maps.resolve_layer_map``) the trainer's layer pairing uses
too."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedModel

from .errors import InputError
from .families import Family, family_of, layer_list_prefix, num_layers, supported_model_types
from .layer_maps import check_layer_map, resolve_layer_map
from .modeling import load_config, load_model, parameter_count, task_of_config
from .terms import describe_weights

if TYPE_CHECKING:
    from .arguments import ModelArguments

logger = logging.getLogger(__name__)


def create_student(
    teacher: PreTrainedModel | str,
    *,
    num_encoder_layers: int | None = None,
    num_decoder_layers: int | None = None,
    num_layers: int | None = None,
    encoder_layer_map: Sequence[int] | None = None,
    decoder_layer_map: Sequence[int] | None = None,
    layer_map: Sequence[int] | None = None,
    hidden_dim: int | None = None,
    vocab_size: int | None = None,
) -> PreTrainedModel:
    """A student with fewer layers, each a copy of a teacher layer.

    T5 / BART take ``num_encoder_layers`` and ``num_decoder_layers``, BERT-style encoders ``num_encoder_layers``,
    GPT-2 ``num_layers``; a stack left unspecified keeps all its layers. Layers are spread evenly keeping the first
    and last (12 -> 6 copies 0, 2, 4, 7, 9, 11) unless an explicit ``*_layer_map`` lists them. Embeddings, norms,
    the LM head and classifier head are copied too. With a ``hidden_dim`` different from the teacher's nothing can
    be copied: the student is a freshly initialized smaller config. The map is recorded in
    ``config.student_layer_map`` either way (the trainer uses it to pair layers for feature distillation).
    """
    if isinstance(teacher, str):
        teacher = load_model(teacher)
    if any(hasattr(parameter, "ds_id") for parameter in teacher.parameters()):
        raise InputError(
            "the teacher is partitioned by DeepSpeed ZeRO-3, so its layers cannot be copied here: build the student "
            "first in one process (seq2seq-distill make_student) and pass it with --student"
        )
    family = family_of(teacher.config)
    requested = {
        "num_encoder_layers": num_encoder_layers,
        "num_decoder_layers": num_decoder_layers,
        "num_layers": num_layers,
        "encoder_layer_map": encoder_layer_map,
        "decoder_layer_map": decoder_layer_map,
        "layer_map": layer_map,
    }
    layer_maps = plan_layers(teacher.config, requested)

    config = copy.deepcopy(teacher.config)
    for stack in family.stacks:
        setattr(config, stack.num_layers_attr, len(layer_maps[stack.role]))
    teacher_hidden = getattr(config, family.hidden_size_attr)
    fresh = hidden_dim is not None and hidden_dim != teacher_hidden
    if fresh:
        _shrink_hidden_size(config, family, teacher_hidden, hidden_dim)
        if vocab_size is not None:
            config.vocab_size = vocab_size
        logger.warning(
            "hidden size %d differs from the teacher's %d: layers cannot be copied, the student is freshly initialized",
            hidden_dim,
            teacher_hidden,
        )
    config.student_layer_map = layer_maps
    config.student_init = "fresh" if fresh else "copied"
    config.distilled_from = teacher.name_or_path or type(teacher).__name__
    config.architectures = [type(teacher).__name__]

    student = type(teacher)(config)
    if not fresh:
        _copy_teacher_weights(teacher, student, family, layer_maps)
        if vocab_size is not None and vocab_size != student.get_input_embeddings().weight.shape[0]:
            student.resize_token_embeddings(vocab_size)
    if teacher.can_generate():
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def plan_layers(teacher_config, requested: dict) -> dict[str, list[int]]:
    """The student's layer plan, {stack role: teacher layer per student layer}: the one rule for building a student
    and for checking its flags before any weight is read (``requested``: the layer counts and maps given, by flag name).
    """
    family = family_of(teacher_config)
    allowed = {arg for stack in family.stacks for arg in (stack.count_argument, stack.map_argument)}
    misplaced = sorted(name for name, value in requested.items() if value is not None and name not in allowed)
    if misplaced:
        raise InputError(
            f"a {teacher_config.model_type!r} teacher takes --{', --'.join(sorted(allowed))}, not "
            f"{', '.join(f'--{name}' for name in misplaced)}"
        )
    return {
        stack.role: resolve_layer_map(
            role=stack.role,
            count_argument=stack.count_argument,
            map_argument=stack.map_argument,
            teacher_layers=num_layers(teacher_config, stack),
            student_layers=requested.get(stack.count_argument),
            explicit=requested.get(stack.map_argument),
        )
        for stack in family.stacks
    }


def _shrink_hidden_size(config, family: Family, teacher_hidden: int, hidden_dim: int) -> None:
    """Scale widths with the hidden size and keep the teacher's attention head size."""
    if hidden_dim < 1:
        raise InputError(f"hidden_dim must be positive, got {hidden_dim}")
    ratio = hidden_dim / teacher_hidden
    setattr(config, family.hidden_size_attr, hidden_dim)
    for attr in family.ffn_size_attrs:
        width = getattr(config, attr, None)
        if width is not None:
            setattr(config, attr, max(1, round(width * ratio)))
    for attr in family.head_count_attrs:
        heads = getattr(config, attr)
        if family.head_size_attr is not None:  # T5: d_kv is independent of d_model, keep it, scale the head count
            setattr(config, attr, max(1, round(heads * ratio)))
            continue
        head_size = teacher_hidden // heads
        if hidden_dim % head_size:
            raise InputError(
                f"hidden_dim={hidden_dim} is not a multiple of the teacher's attention head size {head_size}; "
                f"choose a multiple of {head_size}"
            )
        setattr(config, attr, hidden_dim // head_size)


def _copy_teacher_weights(
    teacher: PreTrainedModel, student: PreTrainedModel, family: Family, layer_maps: dict[str, list[int]]
) -> None:
    """Load every student tensor from the teacher: layer ``i`` of a stack from teacher layer ``map[i]``."""
    teacher_state = teacher.state_dict()
    prefixes = [
        (layer_list_prefix(student, stack) + ".", layer_list_prefix(teacher, stack), layer_maps[stack.role])
        for stack in family.stacks
    ]
    student_state = {}
    for key in student.state_dict():
        source_key = key
        for student_prefix, teacher_prefix, layer_map in prefixes:
            if key.startswith(student_prefix):
                index, rest = key[len(student_prefix) :].split(".", 1)
                mapped = f"{teacher_prefix}.{layer_map[int(index)]}.{rest}"
                # T5 keeps its relative position bias in block 0 only: a student block 0 copied from a deeper
                # teacher block still takes the bias from teacher block 0.
                source_key = mapped if mapped in teacher_state else key
                break
        student_state[key] = teacher_state[source_key]
    student.load_state_dict(student_state, strict=True)


# ---- the student flags checked against the teacher's config, before any weights are loaded ---------------------


# A family's --model_type (BERT and DistilBERT checkpoints distill into each other: both are "bert").
MODEL_TYPE_OF_FAMILY = {"t5": "t5", "bart": "bart", "bert": "bert", "distilbert": "bert", "gpt2": "gpt2"}
LAYER_MAP_NAMES = ("encoder_layer_map", "decoder_layer_map", "layer_map")
LAYER_COUNT_NAMES = ("num_encoder_layers", "num_decoder_layers", "num_layers")


def check_student_plan(model_args: ModelArguments, training_args, teacher_config, task: str) -> None:
    """The student flags checked against the teacher's config, before any data is read or weights are loaded.

    With ``--student``: the teacher's model family, not more parameters than the teacher (an error: a student
    that big is usually --teacher and --student swapped), more layers only with a warning (a deep-and-thin student
    is a real design), and layer maps that fit both. A run that no term reads the teacher in (CE only, on the
    teacher's pseudo-labels) takes a student of any supported family of the run's task. Otherwise: layer counts and
    maps that fit the teacher.
    """
    if model_args.student:
        _check_student_against_teacher(student_config(model_args), teacher_config, task, training_args)
        return
    plan_layers(teacher_config, requested_layers(model_args, training_args))


def requested_layers(model_args: ModelArguments, training_args) -> dict:
    """The layer counts and maps given for a student to be built, by flag name (what :func:`plan_layers` reads)."""
    requested = {name: getattr(model_args, name) for name in LAYER_COUNT_NAMES}
    return requested | {name: getattr(training_args, name, None) for name in LAYER_MAP_NAMES}


def student_config(model_args: ModelArguments):
    """The config of ``--student`` (no weights read)."""
    return load_config(model_args.student, flag="--student", trust_remote_code=model_args.trust_remote_code)


def _family_key(config) -> str:
    """Families whose checkpoints distill into each other (BERT and DistilBERT share a tokenizer) share a key."""
    return MODEL_TYPE_OF_FAMILY.get(family_of(config).name, family_of(config).name)


def _task_or_none(config) -> str | None:
    try:
        return task_of_config(config)
    except InputError:
        return None


def _check_student_against_teacher(student_config, teacher_config, task: str, training_args) -> None:
    student_type, teacher_type = student_config.model_type, teacher_config.model_type
    other_family = _family_key(student_config) != _family_key(teacher_config)
    if student_type in supported_model_types() and other_family and _task_or_none(student_config) == task:
        # Two families of the run's task share the labels (classification) or the target text (seq2seq, causal LM:
        # the span terms, logit KD where the student was given the teacher's tokenizer, or CE on the teacher's
        # pseudo-labels, sequence-level KD); feature terms have no layers to pair.
        on = [entry for need in ("hidden_states", "attentions", "qkv") for entry in describe_weights(training_args, need)]
        if on:
            raise InputError(
                f"{', '.join(dict.fromkeys(on))}: feature terms pair the layers of one model family, and --student is a "
                f"{student_type!r} model, the teacher a {teacher_type!r} one; set them to 0 (across families: logit KD "
                "for classification, --uld_weight / --matched_kl_weight for seq2seq and causal LMs)"
            )
        return
    if student_type not in supported_model_types() or other_family:
        raise InputError(
            f"--student is a {student_type!r} model but the teacher is a {teacher_type!r} model; distill into a "
            "student of the teacher's family (drop --student to build one from the layer flags, or use make_student), "
            "or train it with CE only (--kd_weight 0) on the teacher's pseudo-labels (pseudo_label)"
        )
    student_size, teacher_size = parameter_count(student_config, task), parameter_count(teacher_config, task)
    if student_size > teacher_size:
        raise InputError(
            f"--student has {student_size:,} parameters, more than the teacher's {teacher_size:,}; a student must be "
            "smaller: check that --teacher and --student are not swapped"
        )
    stacks = zip(family_of(student_config).stacks, family_of(teacher_config).stacks, strict=True)
    for student_stack, stack in stacks:
        student_layers, teacher_layers = num_layers(student_config, student_stack), num_layers(teacher_config, stack)
        if student_layers > teacher_layers:
            logger.warning(
                "the student has more %s layers (%d) than the teacher (%d) but fewer parameters; the feature terms "
                "need --%s to pair them",
                stack.role,
                student_layers,
                teacher_layers,
                stack.map_argument,
            )
        explicit = getattr(training_args, stack.map_argument, None)
        if explicit is not None:
            check_layer_map(explicit, teacher_layers, student_layers, stack.map_argument)
