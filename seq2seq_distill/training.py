"""One training run and what it needs: the run's model type and task, its data, the teacher, the student.

The commands (``commands.py``) chain these helpers. Every training run goes through the same trainer classes (a
teacher or a baseline student is a run whose only term is CE), writes its final model and tokenizer to its output
folder, Trainer checkpoints to ``<output>/checkpoints``, every logged value to ``<output>/training_metrics.json``
(each evaluation with the task's metrics, :func:`task_metrics`) and its model card to ``<output>/README.md``
(``model_cards.py``); a causal-LM run with ``--predict_with_generate`` ends with validation by generation.

About 670 lines: the pieces every command shares for one run (teacher and tokenizer loading, the student's own
tokenizer, LoRA and several teachers' loading, ``train_model`` and its metrics, card and interruption handling);
split when one of them grows a second caller outside ``commands.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .arguments import TASK_OF_MODEL_TYPE, DataArguments, LoraArguments, ModelArguments
from .checkpoints import CHECKPOINTS_DIR, resolve_resume
from .data import (
    PreparedData,
    collator_for,
    has_trained_labels,
    joined_inputs,
    load_raw_splits,
    prepare_data,
    resolve_columns,
    same_tokenizer,
)
from .diagnostics import diagnostics_summary
from .errors import InputError
from .families import family_of
from .guards import GracefulStop, TrainingInterrupted
from .lora import SelfTeacher, check_self_distillation, is_lora_model, lora_student, save_lora_base
from .model_cards import describe_run, save_model_card
from .modeling import has_tokenizer, load_config, load_model, load_tokenizer, resolve_model_path, task_of_model
from .reports import write_json
from .students import LAYER_MAP_NAMES, MODEL_TYPE_OF_FAMILY, create_student, student_config
from .teachers import (
    describe_teachers,
    feature_index,
    feature_teacher_of,
    normalized_weights,
    route_indices,
    several,
    teacher_names,
)
from .terms import ce_only_settings, plan_terms
from .tiny import tiny_model, train_tokenizer
from .trainer import DistillationTrainer, Seq2SeqDistillationTrainer
from .transfer import add_transfer_split, training_rows

__all__ = [
    "TRAINING_METRICS_FILE",
    "TrainedModel",
    "build_lora_student",
    "build_student",
    "ce_only",
    "check_eval_metrics",
    "check_lora_run",
    "evaluates",
    "label_overrides",
    "check_teacher_column",
    "check_teacher_tokenizers",
    "load_data",
    "load_teachers",
    "lora_adapted",
    "own_student_tokenizer",
    "load_teacher_and_tokenizer",
    "resolve_model_type_and_task",
    "run_name",
    "run_teacher_names",
    "scratch_teacher",
    "feature_teacher_arguments",
    "student_tokenizer_and_data",
    "task_metrics",
    "teacher_config",
    "train_model",
    "validate_by_generation",
    "with_overrides",
    "with_teacher_column",
]

logger = logging.getLogger(__name__)

TRAINING_METRICS_FILE = "training_metrics.json"


@dataclass
class TrainedModel:
    """A finished run: where the model is, and its final metrics."""

    name: str
    path: str
    metrics: dict
    steps: int | None = None  # optimizer steps it trained (None: not trained here, e.g. a given teacher)


# ---- what the run is about -------------------------------------------------------------------------------------


def teacher_config(model_args: ModelArguments):
    """The teacher's config (cheap: no weights), or None when no teacher was given."""
    source = model_args.teacher_source
    if source is None:
        return None
    flag = "--teacher_local_path" if model_args.teacher_local_path else "--teacher"
    return load_config(source, flag=flag, trust_remote_code=model_args.trust_remote_code)


def resolve_model_type_and_task(model_args: ModelArguments, config=None) -> tuple[str, str]:
    """(model_type, task) from the flags, else from the teacher's config, else the embedded default (t5, seq2seq)."""
    model_type = model_args.model_type
    if model_type is None and config is not None:
        model_type = MODEL_TYPE_OF_FAMILY.get(family_of(config).name)
    model_type = model_type or "t5"
    task = model_args.task or TASK_OF_MODEL_TYPE[model_type]
    if config is not None and model_args.model_type is not None:
        family = MODEL_TYPE_OF_FAMILY.get(family_of(config).name)
        if family != model_args.model_type:
            raise InputError(
                f"--model_type {model_args.model_type} but the teacher is a {config.model_type!r} model; "
                f"set --model_type {family} or drop it"
            )
    return model_type, task


def label_overrides(task: str, label_names: list[str] | None) -> dict:
    if task != "classification" or not label_names:
        return {}
    return {
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }


def load_data(model_args: ModelArguments, data_args: DataArguments, training_args=None) -> tuple[str, str, DatasetDict, object]:
    """Model type, task, raw splits and the teacher's config (validated before any weights are loaded).

    ``training_args``: the run's, which say whether it reads a validation split (:func:`evaluates`); without them
    (pseudo-labelling) a validation split is carved as for a run that evaluates.
    """
    config = teacher_config(model_args)
    model_type, task = resolve_model_type_and_task(model_args, config)
    known_labels = has_trained_labels(config) if task == "classification" and config is not None else None
    if training_args is not None:
        check_eval_metrics(training_args, task)
    reads_validation = evaluates(training_args, task) if training_args is not None else True
    raw = load_raw_splits(data_args, task, evaluates=reads_validation, known_labels=known_labels)
    add_transfer_split(raw, data_args, task)
    return model_type, task, raw, config


def evaluates(training_args, task: str) -> bool:
    """Whether a training run reads the validation split: to evaluate, or (causal LMs) to validate by generation."""
    generates = task == "causal_lm" and bool(getattr(training_args, "predict_with_generate", False))
    return training_args.eval_strategy != "no" or generates


def check_eval_metrics(training_args, task: str) -> None:
    """``--metric_for_best_model`` names a task metric this run's evaluation logs, checked before any weights load
    (the Trainer would find it missing only at the first evaluation, after training has begun).

    Only the task metrics are checked (``metrics.EVAL_METRICS``): other names (loss, each loss term) are the
    Trainer's to check.
    """
    name = getattr(training_args, "metric_for_best_model", None)
    if not name:
        return
    from .metrics import EVAL_METRICS  # rouge-score, nltk and scikit-learn take a second: only runs that name one

    metric = name.removeprefix("eval_")
    if metric not in {known for names in EVAL_METRICS.values() for known in names}:
        return
    if task == "seq2seq" and metric in EVAL_METRICS[task] and not getattr(training_args, "predict_with_generate", False):
        raise InputError(
            f"--metric_for_best_model {name} is scored on generated summaries, and this run evaluates without "
            "generating: add --predict_with_generate (--generation_max_length and --generation_num_beams set how)"
        )
    if metric not in EVAL_METRICS[task]:
        logged = ", ".join(("loss", *EVAL_METRICS[task]))
        later = " (its generations are scored once, after training, with --predict_with_generate)" if task == "causal_lm" else ""
        raise InputError(
            f"--metric_for_best_model {name} is not logged by a {task} run, whose evaluation logs {logged} and each "
            f"loss term{later}; choose one of those"
        )


def task_metrics(task: str, tokenizer, label_names: list[str] | None = None, generates: bool = False) -> tuple:
    """``(compute_metrics, preprocess_logits_for_metrics)`` of a task's training run, from the benchmark's metrics
    (``metrics.EVAL_METRICS``): (None, None) where the Trainer's evaluation has nothing to score.

    Classification keeps only each row's predicted label (argmax) so the evaluation loop does not gather every
    logit. Seq2seq is scored on the Seq2SeqTrainer's generations (``generates``: --predict_with_generate; ROUGE of
    teacher-forced logits would say little), against the decoded labels, decoded and counted as the benchmark does.
    Causal LMs are scored by generation once, after training (:func:`validate_by_generation`).
    """
    if task == "classification":
        return _classification_metrics(label_names), _predicted_labels
    if task == "seq2seq" and generates:
        return _generation_metrics(tokenizer), None
    return None, None


def _predicted_labels(logits, labels):
    """preprocess_logits_for_metrics of classification: the predicted label of each row."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _classification_metrics(label_names: list[str] | None):
    from .metrics import classification_eval_metrics

    def compute_metrics(prediction) -> dict:
        predicted, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        return classification_eval_metrics(predicted.reshape(-1).tolist(), labels.reshape(-1).tolist(), label_names)

    return compute_metrics


def _generation_metrics(tokenizer):
    from .inference import decode_generated
    from .metrics import generation_eval_metrics

    def compute_metrics(prediction) -> dict:
        generated = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        # -100 pads the batches to one length (the evaluation loop) and marks the labels' padding.
        generated, labels = (torch.as_tensor(ids) for ids in (generated, prediction.label_ids))
        generated, labels = (ids.masked_fill(ids < 0, tokenizer.pad_token_id) for ids in (generated, labels))
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        texts, counts = decode_generated(generated[:, 1:], tokenizer)  # column 0 is the decoder start, not generated
        return generation_eval_metrics(texts, references, counts)

    return compute_metrics


def load_teacher_and_tokenizer(
    model_args: ModelArguments,
    task: str,
    config,
    raw: DatasetDict,
    data_args: DataArguments,
    seed: int = 42,
    check_tokenizer=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreparedData]:
    """Tokenizer, tokenized data, then the teacher with the data's label names (for an untrained head).

    ``check_tokenizer(tokenizer)``: checks that need the teacher's tokenizer, run before any text is tokenized.

    A head the checkpoint lacks (a sentence encoder used as a classifier) is initialized from ``seed``, not from
    whatever the process's random state happens to be, so two runs with the same flags start from the same teacher.
    """
    source = model_args.teacher_source
    flag = "--teacher_local_path" if model_args.teacher_local_path else "--teacher"
    tokenizer_source = model_args.teacher_tokenizer or model_args.custom_tokenizer_local_path or source
    tokenizer_flag = (
        "--teacher_tokenizer"
        if model_args.teacher_tokenizer
        else "--custom_tokenizer_local_path"
        if model_args.custom_tokenizer_local_path
        else flag
    )
    tokenizer = load_tokenizer(tokenizer_source, flag=tokenizer_flag, trust_remote_code=model_args.trust_remote_code)
    if check_tokenizer is not None:
        check_tokenizer(tokenizer)
    known_labels = has_trained_labels(config) if task == "classification" else None
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    overrides = {} if known_labels else label_overrides(task, data.label_names)
    set_seed(seed)
    teacher = load_model(source, task, trust_remote_code=model_args.trust_remote_code, flag=flag, config_overrides=overrides)
    return teacher, tokenizer, data


def own_student_tokenizer(model_args: ModelArguments, teacher_tokenizer: PreTrainedTokenizerBase):
    """The tokenizer of the ``--student`` folder when it is not the teacher's, else None."""
    path = resolve_model_path(model_args.student, "--student") if model_args.student else None
    if path is None or not has_tokenizer(path):
        return None
    tokenizer = load_tokenizer(path, flag="--student", trust_remote_code=model_args.trust_remote_code)
    return None if same_tokenizer(tokenizer, teacher_tokenizer) else tokenizer


def student_tokenizer_and_data(
    model_args: ModelArguments,
    teacher_tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    data_args: DataArguments,
    *,
    teacher_reads_inputs: bool = True,
) -> tuple[PreTrainedTokenizerBase, PreparedData]:
    """The student's tokenizer and data: the teacher's, unless the ``--student`` folder holds another tokenizer.

    Then the inputs are tokenized with both: the student's columns, and the teacher's own tokenization of the same
    texts (``data.TEACHER_COLUMNS``) that the teacher reads in the trainer, with the aligned spans of the two
    tokenizations of each target (``data.SPAN_COLUMNS``) for the token-level tasks. A run whose terms never run the
    teacher (``teacher_reads_inputs=False``: CE only, e.g. on the teacher's pseudo-labels) needs the student's
    tokenization alone: the teacher's text is all that crosses tokenizers.
    """
    tokenizer = own_student_tokenizer(model_args, teacher_tokenizer)
    if tokenizer is None:
        return teacher_tokenizer, data
    known = {name: index for index, name in enumerate(data.label_names)} if data.label_names else None
    logger.info("the student has a tokenizer of its own (%d tokens, the teacher's %d)", len(tokenizer), len(teacher_tokenizer))
    teacher_columns = teacher_tokenizer if teacher_reads_inputs else None
    return tokenizer, prepare_data(data.raw, tokenizer, data.task, data_args, known, teacher_tokenizer=teacher_columns)


def build_student(teacher: PreTrainedModel, model_args: ModelArguments, training_args) -> PreTrainedModel:
    # A student that is not copied (a --hidden_dim of its own, new heads) is initialized from --seed, not from
    # whatever the process's random state happens to be, so two runs with the same flags start from the same weights.
    set_seed(training_args.seed)
    if model_args.student:
        student = load_model(
            model_args.student, task_of_model(teacher), flag="--student", trust_remote_code=model_args.trust_remote_code
        )
    else:
        student = create_student(
            teacher,
            num_encoder_layers=model_args.num_encoder_layers,
            num_decoder_layers=model_args.num_decoder_layers,
            num_layers=model_args.num_layers,
            encoder_layer_map=getattr(training_args, "encoder_layer_map", None),
            decoder_layer_map=getattr(training_args, "decoder_layer_map", None),
            layer_map=getattr(training_args, "layer_map", None),
            hidden_dim=model_args.hidden_dim,
            vocab_size=model_args.vocab_size,
        )
    if task_of_model(student) == "classification":
        student.config.id2label, student.config.label2id = dict(teacher.config.id2label), dict(teacher.config.label2id)
    return student


# A flag of these makes the student something other than the teacher itself (a smaller or resized copy).
STUDENT_SHAPE_FLAGS = ("num_encoder_layers", "num_decoder_layers", "num_layers", "hidden_dim", "vocab_size")


def check_lora_run(lora_args: LoraArguments, model_args: ModelArguments, data_args: DataArguments, training_args, config):
    """A LoRA run's flags against each other and the teacher's config (``config``), before any data is read or
    weights are loaded (peft's presence is checked when the flags are parsed)."""
    if not lora_args.enabled:
        return
    if lora_args.self_distill:
        if model_args.student:
            raise InputError(
                "--self_distill trains an adapter on --teacher itself and distills from it with the adapter off (one "
                "copy of the weights); drop --student, or pass that model as --teacher"
            )
        other_teacher_uses = (data_args.transfer_dataset, data_args.transfer_dataset_local_path, data_args.augment_copies)
        if training_args.teacher_cache or any(other_teacher_uses):
            raise InputError(
                "--self_distill runs the teacher (the base with the adapter off) inside the loss only: drop "
                "--teacher_cache, the transfer set and --augment_copies, which need a teacher of their own"
            )
        check_self_distillation(plan_terms(training_args))
    if plan_terms(training_args).hidden and config is not None:
        # Projections between hidden sizes are trained but are no part of the adapter: a checkpoint would lose them.
        hidden = family_of(config).hidden_size_attr
        student = student_config(model_args) if model_args.student else None
        size = model_args.hidden_dim or (getattr(student, hidden, None) if student is not None else None)
        if size is not None and size != getattr(config, hidden):
            raise InputError(
                f"hidden_weight > 0 with a LoRA student of hidden size {size} (the teacher's: {getattr(config, hidden)}) "
                "trains projections that the adapter does not hold; use a student of the teacher's hidden size, or "
                "--hidden_weight 0"
            )


def build_lora_student(teacher: PreTrainedModel, model_args: ModelArguments, training_args, lora_args: LoraArguments, config):
    """(student, teacher) of a LoRA run: the base (``build_student``'s student; with --self_distill and no layer
    flags, the teacher itself) with an adapter, and the teacher the trainer reads: the given one, or for
    self-distillation the student's base with the adapter off (:class:`~seq2seq_distill.lora.SelfTeacher`).

    The base is named by where it loads from unchanged (--student, or --teacher for self-distillation unless its
    classification head was made here); else the output folder will carry it in ``base/`` (``lora.py``).
    """
    task = task_of_model(teacher)
    shaped = any(getattr(model_args, name) is not None for name in STUDENT_SHAPE_FLAGS) or any(
        getattr(training_args, name, None) is not None for name in LAYER_MAP_NAMES
    )
    if lora_args.self_distill and not shaped:
        base, source = teacher, model_args.teacher_source
        if task == "classification" and not has_trained_labels(config):
            source = None  # its head was initialized here: only the saved base holds it
    else:
        base, source = build_student(teacher, model_args, training_args), model_args.student
    student = lora_adapted(base, source, lora_args, training_args.seed)
    return student, SelfTeacher(student) if lora_args.self_distill else teacher


def lora_adapted(base: PreTrainedModel, source: str | None, lora_args: LoraArguments, seed: int):
    """``base`` with the adapter of ``lora_args``, initialized from ``seed``; ``source``: the hub name or folder
    the base loads from unchanged (None: the base is saved beside the adapter)."""
    reference = None
    if source is not None:
        path = resolve_model_path(source, "--student")
        reference = os.path.abspath(path) if os.path.isdir(path) else path
    set_seed(seed)  # the adapter's initialization: the same on every run with these flags
    return lora_student(
        base,
        task_of_model(base),
        r=lora_args.lora_r,
        alpha=lora_args.lora_alpha,
        dropout=lora_args.lora_dropout,
        target_modules=lora_args.lora_target_modules,
        base_reference=reference,
    )


# ---- training --------------------------------------------------------------------------------------------------


def with_overrides(training_args, **overrides):
    """A copy of the training arguments with some fields changed (the original is shared by several runs)."""
    changed = copy.copy(training_args)
    for name, value in overrides.items():
        setattr(changed, name, value)
    return changed


def ce_only(training_args):
    """Settings for a run without a teacher: a teacher's own training, or the no-distillation baseline."""
    return with_overrides(training_args, **ce_only_settings())


def run_name(training_args) -> str:
    """A run whose only term is CE is a baseline, whatever command started it; any other is distilled."""
    return "baseline" if plan_terms(training_args).only_ce else "distilled"


def train_model(
    name: str,
    model: PreTrainedModel,
    teacher: PreTrainedModel | None,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
    output_dir: str,
    teacher_cache=None,
    teacher_source: str | None = None,
) -> TrainedModel:
    """One training run with the shared trainer; saves the final model, tokenizer, every logged value and the model
    card (``model_cards``), which names the teacher by ``teacher_source`` (unset: where ``teacher`` was loaded from).

    ``teacher``: one model, or several as {name: model} (``teachers.py``); a transfer set's targets are then written
    by the feature teacher, and the card names every teacher with its weight."""
    checkpoints = os.path.join(output_dir, CHECKPOINTS_DIR)
    args = with_overrides(training_args, output_dir=checkpoints)
    trainer_class = Seq2SeqDistillationTrainer if data.task == "seq2seq" else DistillationTrainer
    evaluate = args.eval_strategy != "no"  # the Trainer's own evaluation (evaluates() also covers generation)
    primary = feature_teacher_of(teacher, training_args)
    if several(teacher) and len(teacher) > 1 and teacher_source is None:
        names, models = teacher_names(teacher)
        weights = normalized_weights(training_args.teacher_weights, len(names))
        sources = [getattr(model, "name_or_path", None) for model in models]
        teacher_source = describe_teachers(names, weights, training_args.teacher_mixture, sources)
    train_dataset = training_rows(data, data.tokenized["train"], primary, tokenizer, training_args)
    eval_dataset = data.tokenized["validation"] if evaluate else None
    collator = collator_for(data.task, tokenizer, model, teacher_tokenizer=data.teacher_tokenizer)
    compute_metrics, predicted = task_metrics(data.task, tokenizer, data.label_names, args.predict_with_generate)
    if teacher_cache is not None:  # the cached teacher rows travel as extra columns beside each example
        train_dataset = teacher_cache.attach("train", train_dataset)
        eval_dataset = teacher_cache.attach("validation", eval_dataset) if evaluate else None
        collator = teacher_cache.collator(collator)
    stop = GracefulStop()  # SIGTERM / Ctrl-C: checkpoint at the next step end, then TrainingInterrupted below
    trainer = trainer_class(
        model=model,
        teacher_model=teacher,
        teacher_cache=teacher_cache,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        teacher_tokenizer=data.teacher_tokenizer,
        callbacks=[stop],
        compute_metrics=compute_metrics if evaluate else None,
        preprocess_logits_for_metrics=predicted if evaluate else None,
    )
    resume = resolve_resume(args.resume_from_checkpoint, checkpoints)
    logger.info("training %s -> %s", name, output_dir)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stop.restore()
    if stop.received is not None and trainer.state.global_step < trainer.state.max_steps:
        # No final model: a stopped run must not look finished. The checkpoint is where resume starts.
        raise TrainingInterrupted(stop.received, trainer.state.global_step, checkpoint=stop.checkpoint)
    metrics = dict(result.metrics)
    if evaluate:
        metrics.update(trainer.evaluate())
    if args.predict_with_generate and data.task == "causal_lm" and trainer.is_world_process_zero():
        metrics.update(validate_by_generation(model, tokenizer, data, args, output_dir))
    if is_lora_model(model) and trainer.is_world_process_zero():
        save_lora_base(model, output_dir)  # a layer-copied base beside its adapter; named in adapter_config.json
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        record = {"name": name, "final_metrics": metrics, "log_history": trainer.state.log_history}
        diagnostics = diagnostics_summary(trainer)  # means over the run (--diagnostics), None for a CE-only run
        if diagnostics is not None:
            record["distillation_diagnostics"] = diagnostics
        write_json(os.path.join(output_dir, TRAINING_METRICS_FILE), record)
        run = describe_run(
            name,
            model,
            training_args,
            data,
            teacher=primary,
            teacher_source=teacher_source,
            teacher_cache=teacher_cache,
            steps=trainer.state.global_step,
            training_rows=len(train_dataset),
            hub_model_id=trainer.hub_model_id,
        )
        save_model_card(output_dir, run, token=args.hub_token, revision=args.hub_revision)
    if stop.received is not None:  # the signal came at the very last step: finished and saved, but stop here
        raise TrainingInterrupted(stop.received, trainer.state.global_step, finished_in=output_dir)
    return TrainedModel(name, output_dir, metrics, trainer.state.global_step)


# ---- several teachers (--teachers) -----------------------------------------------------------------------------


def run_teacher_names(model_args: ModelArguments) -> list[str]:
    """The names a run calls its teachers by: those of ``--teachers``, else the ``--teacher`` folder's name."""
    if model_args.named_teachers:
        return list(model_args.named_teachers)
    source = model_args.teacher_source
    return teacher_names(source)[0] if source else []


def feature_teacher_arguments(model_args: ModelArguments, data_args: DataArguments, training_args) -> ModelArguments:
    """The checks of the teacher settings that need no weights, and for ``--teachers`` a copy of the model arguments
    whose ``--teacher`` is the feature teacher: its config, tokenizer and layers make the run's data and student."""
    names = run_teacher_names(model_args)
    if not names:
        return model_args
    normalized_weights(training_args.teacher_weights, len(names))
    feature = names[feature_index(names, training_args.feature_teacher)]
    transfer = data_args.transfer_dataset or data_args.transfer_dataset_local_path or data_args.augment_copies
    if training_args.teacher_column and transfer:
        raise InputError(
            "--teacher_column routes rows named in the data, and transfer or augmented rows name no teacher: drop "
            "the transfer / augmentation flags or --teacher_column"
        )
    if not model_args.named_teachers:
        return model_args
    return dataclasses.replace(model_args, teacher=model_args.named_teachers[feature], teacher_local_path=None, teachers=None)


def check_teacher_column(raw: DatasetDict, training_args, names: list[str]) -> None:
    """``--teacher_column`` is in the training (and validation) data and names only the run's teachers: checked on the
    raw rows, before any weights are loaded."""
    column = training_args.teacher_column
    if not column:
        return
    for split in ("train", "validation"):
        if split not in raw:
            continue
        if column not in raw[split].column_names:
            raise InputError(
                f"--teacher_column {column!r} is not a column of the {split} data (columns: "
                f"{', '.join(raw[split].column_names)}); add it, each row naming its teacher, or drop --teacher_column"
            )
        route_indices(raw[split][column], names, column, split)


def with_teacher_column(data: PreparedData, column: str | None) -> PreparedData:
    """The tokenized training and validation rows with the raw ``--teacher_column`` beside them (tokenization maps
    each raw row to one row, in order); the trainer turns the names into teacher indices."""
    if column:
        for split in ("train", "validation"):
            if split in data.tokenized and column not in data.tokenized[split].column_names:
                data.tokenized[split] = data.tokenized[split].add_column(column, data.raw[split][column])
    return data


def check_teacher_tokenizers(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every teacher of ``--teachers`` reads the feature teacher's tokenizer: the target mixes rows of one vocabulary."""
    for name, path in model_args.named_teachers.items():
        folder = resolve_model_path(path, "--teachers")
        if not has_tokenizer(folder):
            continue
        own = load_tokenizer(folder, flag="--teachers", trust_remote_code=model_args.trust_remote_code)
        if not same_tokenizer(own, tokenizer):
            raise InputError(
                f"teacher {name!r} ({path}) has another tokenizer than the feature teacher; several teachers are mixed "
                "over one vocabulary: give them one tokenizer, or distill from them one at a time"
            )


def load_teachers(
    model_args: ModelArguments, training_args, feature_teacher: PreTrainedModel, task: str, data: PreparedData, seed: int = 42
) -> dict[str, PreTrainedModel]:
    """{name: teacher} of ``--teachers`` in their order, with ``feature_teacher`` (loaded already) in its place; a head
    a checkpoint lacks gets the data's labels and is initialized from ``seed``, as the feature teacher's was."""
    named = model_args.named_teachers
    feature = list(named)[feature_index(list(named), training_args.feature_teacher)]
    teachers = {}
    for name, path in named.items():
        if name == feature:
            teachers[name] = feature_teacher
            continue
        config = load_config(path, flag="--teachers", trust_remote_code=model_args.trust_remote_code)
        known = has_trained_labels(config) if task == "classification" else None
        set_seed(seed)
        teachers[name] = load_model(
            path,
            task,
            trust_remote_code=model_args.trust_remote_code,
            flag="--teachers",
            config_overrides={} if known else label_overrides(task, data.label_names),
        )
    return teachers


def validate_by_generation(model, tokenizer, data: PreparedData, args, output_dir: str) -> dict:
    """Greedy and sampled completions of the validation split, written to ``validation_predictions.json``."""
    from .inference import generation_predictions  # its metrics (nltk) take a second to import: only when used

    max_new_tokens = args.generation_max_length or 64
    results = {
        mode: generation_predictions(
            model,
            tokenizer,
            data,
            "validation",
            max_new_tokens=max_new_tokens,
            sampled=mode == "sampled",
            seed=args.seed,
            batch_size=args.per_device_eval_batch_size,
        )
        for mode in ("greedy", "sampled")
    }
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "validation_predictions.json"), results)
    return {f"validation_{mode}_{name}": value for mode, result in results.items() for name, value in result["metrics"].items()}


def scratch_teacher(
    model_type: str, task: str, raw: DatasetDict, data_args: DataArguments, model_args: ModelArguments, seed: int = 42
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreparedData]:
    """A small teacher from a config, with a tokenizer trained on the training texts (no download anywhere).

    The tokenizer is a function of the texts and the weights of ``seed``, so every run, and every process of a
    distributed run, builds the same teacher.
    """
    input_columns, target_column = resolve_columns(raw, data_args, task)
    texts = joined_inputs(raw["train"], input_columns, data_args.input_column_separator)
    if task != "classification" and target_column:
        texts += list(raw["train"][target_column])
    tokenizer = train_tokenizer(texts, vocab_size=model_args.scratch_vocab_size, model_type=model_type)
    data = prepare_data(raw, tokenizer, task, data_args)
    hidden = model_args.scratch_hidden_size
    set_seed(seed)
    teacher = tiny_model(
        model_type,
        len(tokenizer),
        hidden=hidden,
        layers=model_args.scratch_num_layers,
        heads=max(1, hidden // 32),
        num_labels=len(data.label_names or [0, 1]),
    )
    for name, value in label_overrides(task, data.label_names).items():
        setattr(teacher.config, name, value)
    if teacher.can_generate():
        teacher.generation_config.max_new_tokens = data_args.max_target_length
        teacher.generation_config.max_length = None
    logger.info("teacher built from scratch: %s, hidden %d, %d layers", model_type, hidden, model_args.scratch_num_layers)
    return teacher, tokenizer, data
