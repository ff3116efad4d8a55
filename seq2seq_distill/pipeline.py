"""The work behind each command, as Python functions: train a teacher, make a student, distill, pseudo-label,
and the pipeline that chains them and ends with a benchmark.

Every training run goes through the same trainer classes (a teacher or a baseline student is a run whose only
term is CE), writes its final model and tokenizer to its output folder, Trainer checkpoints to
``<output>/checkpoints`` and every logged value to ``<output>/training_metrics.json``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from dataclasses import dataclass

import torch
from datasets import DatasetDict
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .arguments import (
    TASK_OF_MODEL_TYPE,
    WEIGHT_NAMES,
    CacheArguments,
    DataArguments,
    ModelArguments,
    PipelineArguments,
    PseudoLabelArguments,
)
from .checkpoints import CHECKPOINTS_DIR, check_resume, resolve_resume
from .data import (
    PreparedData,
    collator_for,
    has_trained_labels,
    joined_inputs,
    load_raw_splits,
    prepare_data,
    resolve_columns,
)
from .errors import InputError
from .families import family_of, num_layers, supported_model_types
from .guards import GracefulStop, TrainingInterrupted
from .layer_maps import check_layer_map
from .modeling import load_config, load_model, load_tokenizer, parameter_count, resolve_model_path, task_of_model
from .processes import is_main_process
from .reports import write_json
from .students import create_student
from .teacher_cache import build_teacher_cache, load_teacher_cache
from .tiny import tiny_model, train_tokenizer
from .trainer import DistillationTrainer, Seq2SeqDistillationTrainer, TermPlan

logger = logging.getLogger(__name__)

TRAINING_METRICS_FILE = "training_metrics.json"
MODEL_TYPE_OF_FAMILY = {"t5": "t5", "bart": "bart", "bert": "bert", "distilbert": "bert", "gpt2": "gpt2"}


@dataclass
class TrainedModel:
    """A finished run: where the model is, and its final metrics."""

    name: str
    path: str
    metrics: dict


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


def load_data(
    model_args: ModelArguments, data_args: DataArguments, *, evaluates: bool = True
) -> tuple[str, str, DatasetDict, object]:
    """Model type, task, raw splits and the teacher's config (validated before any weights are loaded).

    ``evaluates``: whether the command reads a validation split (a training run with an eval strategy).
    """
    config = teacher_config(model_args)
    model_type, task = resolve_model_type_and_task(model_args, config)
    known_labels = has_trained_labels(config) if task == "classification" and config is not None else None
    raw = load_raw_splits(data_args, task, evaluates=evaluates, known_labels=known_labels)
    return model_type, task, raw, config


def evaluates(training_args) -> bool:
    """Whether a training run reads the validation split."""
    return training_args.eval_strategy != "no"


def load_teacher_and_tokenizer(
    model_args: ModelArguments, task: str, config, raw: DatasetDict, data_args: DataArguments, seed: int = 42
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreparedData]:
    """Tokenizer, tokenized data, then the teacher with the data's label names (for an untrained head).

    A head the checkpoint lacks (a sentence encoder used as a classifier) is initialized from ``seed``, not from
    whatever the process's random state happens to be, so two runs with the same flags start from the same teacher.
    """
    source = model_args.teacher_source
    flag = "--teacher_local_path" if model_args.teacher_local_path else "--teacher"
    tokenizer_source = model_args.custom_tokenizer_local_path or source
    tokenizer_flag = "--custom_tokenizer_local_path" if model_args.custom_tokenizer_local_path else flag
    tokenizer = load_tokenizer(tokenizer_source, flag=tokenizer_flag, trust_remote_code=model_args.trust_remote_code)
    known_labels = has_trained_labels(config) if task == "classification" else None
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    overrides = {} if known_labels else label_overrides(task, data.label_names)
    set_seed(seed)
    teacher = load_model(source, task, trust_remote_code=model_args.trust_remote_code, flag=flag, config_overrides=overrides)
    return teacher, tokenizer, data


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


LAYER_MAP_NAMES = ("encoder_layer_map", "decoder_layer_map", "layer_map")
LAYER_COUNT_NAMES = ("num_encoder_layers", "num_decoder_layers", "num_layers")


def check_student_plan(model_args: ModelArguments, training_args, teacher_config, task: str) -> None:
    """The student flags checked against the teacher's config, before any data is read or weights are loaded.

    With ``--student``: the teacher's model family, not more parameters than the teacher (an error: a student
    that big is usually --teacher and --student swapped), more layers only with a warning (a deep-and-thin student
    is a real design), and layer maps that fit both. Otherwise: layer counts and maps that fit the teacher.
    """
    family = family_of(teacher_config)
    if model_args.student:
        _check_student_against_teacher(_student_config(model_args), teacher_config, task, training_args)
        return
    allowed = {stack.count_argument for stack in family.stacks} | {stack.map_argument for stack in family.stacks}
    given = {name for name in LAYER_COUNT_NAMES if getattr(model_args, name) is not None}
    given |= {name for name in LAYER_MAP_NAMES if getattr(training_args, name, None) is not None}
    if given - allowed:
        flags = ", ".join(f"--{name}" for name in sorted(given - allowed))
        raise InputError(f"a {teacher_config.model_type!r} teacher takes --{', --'.join(sorted(allowed))}, not {flags}")
    for stack in family.stacks:
        teacher_layers = num_layers(teacher_config, stack)
        count = getattr(model_args, stack.count_argument)
        if count is not None and count > teacher_layers:
            raise InputError(
                f"--{stack.count_argument} {count} is more than the teacher's {teacher_layers} {stack.role} layers; "
                f"a student must be smaller: choose at most {teacher_layers}"
            )
        explicit = getattr(training_args, stack.map_argument, None)
        if explicit is not None:
            check_layer_map(explicit, teacher_layers, len(explicit) if count is None else count, stack.map_argument)


def _student_config(model_args: ModelArguments):
    return load_config(model_args.student, flag="--student", trust_remote_code=model_args.trust_remote_code)


def _family_key(config) -> str:
    """Families whose checkpoints distill into each other (BERT and DistilBERT share a tokenizer) share a key."""
    return MODEL_TYPE_OF_FAMILY.get(family_of(config).name, family_of(config).name)


def _check_student_against_teacher(student_config, teacher_config, task: str, training_args) -> None:
    student_type, teacher_type = student_config.model_type, teacher_config.model_type
    if student_type not in supported_model_types() or _family_key(student_config) != _family_key(teacher_config):
        raise InputError(
            f"--student is a {student_type!r} model but the teacher is a {teacher_type!r} model; distill into a "
            "student of the teacher's family (drop --student to build one from the layer flags, or use make_student)"
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


# ---- training --------------------------------------------------------------------------------------------------


def with_overrides(training_args, **overrides):
    """A copy of the training arguments with some fields changed (the original is shared by several runs)."""
    changed = copy.copy(training_args)
    for name, value in overrides.items():
        setattr(changed, name, value)
    return changed


def ce_only(training_args):
    """Settings for a run without a teacher: a teacher's own training, or the no-distillation baseline."""
    switched_off = (*WEIGHT_NAMES, "token_frequency_penalty", "diversity_penalty", "entropy_penalty", "on_policy_fraction")
    return with_overrides(training_args, **{name: 1.0 if name == "ce_weight" else 0.0 for name in switched_off})


def train_model(
    name: str,
    model: PreTrainedModel,
    teacher: PreTrainedModel | None,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
    output_dir: str,
    teacher_cache=None,
) -> TrainedModel:
    """One training run with the shared trainer; saves the final model, tokenizer and every logged value."""
    checkpoints = os.path.join(output_dir, CHECKPOINTS_DIR)
    args = with_overrides(training_args, output_dir=checkpoints)
    trainer_class = Seq2SeqDistillationTrainer if data.task == "seq2seq" else DistillationTrainer
    evaluate = args.eval_strategy != "no"
    train_dataset = data.tokenized["train"]
    eval_dataset = data.tokenized["validation"] if evaluate else None
    collator = collator_for(data.task, tokenizer, model)
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
        callbacks=[stop],
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
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        record = {"name": name, "final_metrics": metrics, "log_history": trainer.state.log_history}
        write_json(os.path.join(output_dir, TRAINING_METRICS_FILE), record)
    if stop.received is not None:  # the signal came at the very last step: finished and saved, but stop here
        raise TrainingInterrupted(stop.received, trainer.state.global_step, finished_in=output_dir)
    return TrainedModel(name, output_dir, metrics)


def validate_by_generation(model, tokenizer, data: PreparedData, args, output_dir: str) -> dict:
    """Greedy and sampled completions of the validation split, written to ``validation_predictions.json``."""
    from .benchmark import generation_predictions

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


def train_teacher(model_args, data_args, training_args, pipeline_args: PipelineArguments | None = None) -> TrainedModel:
    """Fine-tune the given teacher on the task, or train a small one from scratch when none is given."""
    check_resume(training_args)
    model_type, task, raw, config = load_data(model_args, data_args, evaluates=evaluates(training_args))
    if config is None:
        teacher, tokenizer, data = scratch_teacher(model_type, task, raw, data_args, model_args, training_args.seed)
    else:
        teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args, training_args.seed)
    return _train_teacher_model(teacher, tokenizer, data, training_args, pipeline_args, training_args.output_dir)


def _train_teacher_model(teacher, tokenizer, data, training_args, pipeline_args, output_dir) -> TrainedModel:
    overrides = {}
    if pipeline_args is not None and pipeline_args.teacher_num_train_epochs is not None:
        overrides["num_train_epochs"] = pipeline_args.teacher_num_train_epochs
    if pipeline_args is not None and pipeline_args.teacher_learning_rate is not None:
        overrides["learning_rate"] = pipeline_args.teacher_learning_rate
    args = with_overrides(ce_only(training_args), **overrides)
    return train_model("teacher", teacher, None, data, tokenizer, args, output_dir)


def make_student(model_args: ModelArguments, training_args, output_dir: str) -> str:
    """Build a layer-copied student of the teacher and save it with the teacher's tokenizer (no training)."""
    config = teacher_config(model_args)
    if config is None:
        raise InputError("make_student needs a teacher: pass --teacher (a hub name or folder) or --teacher_local_path")
    _, task = resolve_model_type_and_task(model_args, config)
    source = model_args.teacher_source
    tokenizer = load_tokenizer(model_args.custom_tokenizer_local_path or source, trust_remote_code=model_args.trust_remote_code)
    teacher = load_model(source, task, trust_remote_code=model_args.trust_remote_code)
    student = build_student(teacher, model_args, training_args)
    if is_main_process():
        student.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    logger.info("student with layer map %s saved to %s", student.config.student_layer_map, output_dir)
    return output_dir


def distill(model_args, data_args, training_args) -> TrainedModel:
    """Distill the teacher into a student built from the layer flags (or given with --student)."""
    check_resume(training_args)
    if training_args.teacher_cache:
        return distill_from_cache(model_args, data_args, training_args)
    model_type, task, raw, config = load_data(model_args, data_args, evaluates=evaluates(training_args))
    if config is None:
        raise InputError("distill needs a teacher: pass --teacher or --teacher_local_path (pipeline trains one for you)")
    check_student_plan(model_args, training_args, config, task)
    teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args, training_args.seed)
    student = build_student(teacher, model_args, training_args)
    return train_model(run_name(training_args), student, teacher, data, tokenizer, training_args, training_args.output_dir)


def run_name(training_args) -> str:
    """A run whose only term is CE is a baseline, whatever command started it; any other is distilled."""
    return "baseline" if TermPlan.from_settings(training_args).only_ce else "distilled"


def distill_from_cache(model_args, data_args, training_args) -> TrainedModel:
    """Distill from a teacher cache (``cache_teacher``): the teacher is never loaded, so the student is given."""
    if not model_args.student:
        raise InputError(
            "--teacher_cache trains without loading the teacher, so give the student with --student PATH "
            "(make_student builds a layer-copied one)"
        )
    student_path = resolve_model_path(model_args.student, "--student")
    config = _student_config(model_args)
    _, task = resolve_model_type_and_task(model_args, config)
    known_labels = has_trained_labels(config) if task == "classification" else None
    raw = load_raw_splits(data_args, task, evaluates=evaluates(training_args), known_labels=known_labels)
    tokenizer_source = model_args.custom_tokenizer_local_path or student_path
    tokenizer = load_tokenizer(tokenizer_source, flag="--student", trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    splits = ("train", "validation") if evaluates(training_args) else ("train",)
    cache = load_teacher_cache(training_args.teacher_cache, data, tokenizer, temperature=training_args.temperature, splits=splits)
    student = load_model(student_path, task, flag="--student", trust_remote_code=model_args.trust_remote_code)
    name = run_name(training_args)
    return train_model(name, student, None, data, tokenizer, training_args, training_args.output_dir, teacher_cache=cache)


def cache_teacher(model_args, data_args, training_args, cache_args: CacheArguments) -> str:
    """Run the teacher once over the data and store its top-k log-probabilities for ``distill --teacher_cache``."""
    path = training_args.teacher_cache
    if not path:
        raise InputError("cache_teacher writes the cache to --teacher_cache PATH; give that path")
    # The same splits as the distill run it serves: that run reads the validation split only if it evaluates.
    _, task, raw, config = load_data(model_args, data_args, evaluates=evaluates(training_args))
    if config is None:
        raise InputError("cache_teacher needs a teacher: pass --teacher or --teacher_local_path")
    teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args, training_args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu")
    teacher.to(device)
    return build_teacher_cache(
        teacher,
        tokenizer,
        data,
        path,
        top_k=cache_args.cache_top_k,
        temperature=training_args.temperature,
        splits=tuple(split for split in cache_args.cache_splits if split in data.tokenized or split != "validation"),
        batch_size=training_args.per_device_eval_batch_size,
    )


# ---- pseudo-labels ---------------------------------------------------------------------------------------------


def pseudo_label(model_args, data_args, pl_args: PseudoLabelArguments) -> str:
    """The teacher's outputs replace the targets of the chosen splits; the result is a dataset ``distill`` reads."""
    destination = pl_args.destination
    if (
        os.path.isdir(destination)
        and os.listdir(destination)
        and not os.path.isfile(os.path.join(destination, "dataset_dict.json"))
    ):  # replaced at the end: only ever an earlier pseudo-labelled dataset, never a folder of something else
        raise InputError(
            f"--output_dir {destination!r} already holds files that are not a saved dataset; give a new or empty folder"
        )
    if not is_main_process():  # under torchrun the main process labels and writes; the others have nothing to do
        return destination
    model_type, task, raw, config = load_data(model_args, data_args)
    if config is None:
        raise InputError("pseudo_label needs a teacher: pass --teacher or --teacher_local_path")
    unknown = [split for split in pl_args.pseudo_label_splits if split not in raw]
    if unknown:
        raise InputError(f"--pseudo_label_splits {', '.join(unknown)} not in the data (splits: {', '.join(raw)})")
    teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device).eval()
    relabelled = {}
    for split, dataset in raw.items():
        if split not in pl_args.pseudo_label_splits:
            relabelled[split] = dataset
            continue
        outputs = _teacher_outputs(teacher, tokenizer, data, split, pl_args, data_args, device)
        original = f"original_{data.target_column}"
        relabelled[split] = dataset.rename_column(data.target_column, original).add_column(data.target_column, outputs)
    # Saved beside the destination and moved into place when complete: an interrupted run leaves no half dataset there.
    staging = destination.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    DatasetDict(relabelled).save_to_disk(staging)
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(staging, destination)
    logger.info("pseudo-labelled %s saved to %s", ", ".join(pl_args.pseudo_label_splits), destination)
    return destination


@torch.no_grad()
def _teacher_outputs(teacher, tokenizer, data, split, pl_args, data_args, device) -> list:
    """Generated targets (seq2seq) or predicted label names (classification), in the split's order."""
    features = data.tokenized[split].remove_columns("labels")
    order = sorted(range(len(features)), key=lambda index: len(features[index]["input_ids"]))  # less padding
    collator = collator_for("classification", tokenizer)  # pads inputs only
    results: list = [None] * len(features)
    batch_size = pl_args.pseudo_label_batch_size
    for start in tqdm(range(0, len(order), batch_size), desc=f"pseudo-labelling {split}"):
        indices = order[start : start + batch_size]
        batch = collator([features[index] for index in indices]).to(device)
        if data.task == "classification":
            predictions = teacher(**batch).logits.argmax(-1).tolist()
            outputs = [teacher.config.id2label[prediction] for prediction in predictions]
        elif data.task == "seq2seq":
            generated = teacher.generate(
                **batch,
                num_beams=pl_args.num_beams,
                max_new_tokens=pl_args.max_new_tokens or data_args.max_target_length,
                **({"length_penalty": pl_args.length_penalty} if pl_args.length_penalty is not None else {}),
            )
            outputs = tokenizer.batch_decode(generated, skip_special_tokens=True)
        else:
            raise InputError("pseudo_label supports seq2seq and classification tasks")
        for index, output in zip(indices, outputs, strict=True):
            results[index] = output
    return results


# ---- the pipeline ----------------------------------------------------------------------------------------------


def run_pipeline(model_args, data_args, training_args, pipeline_args, benchmark_args) -> dict:
    """Teacher (given, fine-tuned or trained) -> layer-copied student -> distilled and baseline students -> benchmark."""
    from .benchmark import run_benchmark

    root = training_args.output_dir
    if training_args.resume_from_checkpoint:
        raise InputError(
            "pipeline runs several trainings; resume the one that stopped with train_teacher / distill and its output folder"
        )
    model_type, task, raw, config = load_data(model_args, data_args, evaluates=evaluates(training_args))
    if config is None:
        teacher, tokenizer, data = scratch_teacher(model_type, task, raw, data_args, model_args, training_args.seed)
        check_student_plan(model_args, training_args, teacher.config, task)
        teacher_run = _train_teacher_model(teacher, tokenizer, data, training_args, pipeline_args, os.path.join(root, "teacher"))
    else:
        check_student_plan(model_args, training_args, config, task)
        teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args, training_args.seed)
        if pipeline_args.finetune_teacher:
            teacher_run = _train_teacher_model(
                teacher, tokenizer, data, training_args, pipeline_args, os.path.join(root, "teacher")
            )
        else:
            teacher_run = TrainedModel("teacher", resolve_model_path(model_args.teacher_source), {})
    student = build_student(teacher, model_args, training_args)
    runs = [teacher_run]
    if pipeline_args.train_baseline:
        baseline = copy.deepcopy(student)
        runs.append(
            train_model("baseline", baseline, None, data, tokenizer, ce_only(training_args), os.path.join(root, "baseline"))
        )
    runs.append(train_model("distilled", student, teacher, data, tokenizer, training_args, os.path.join(root, "distilled")))
    models = {run.name: run.path for run in runs}
    training_logs = {run.name: os.path.join(run.path, TRAINING_METRICS_FILE) for run in runs}
    if not is_main_process():  # whole models are measured once, by the main process; the others are done
        return {"verdict": f"process {training_args.process_index}: the benchmark runs on the main process", "skipped": True}
    return run_benchmark(
        models,
        data,
        tokenizer,
        benchmark_args,
        os.path.join(root, "benchmark"),
        training_logs=training_logs,
        teacher_name="teacher",
    )
