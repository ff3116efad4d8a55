"""The work behind each command, as Python functions: train a teacher, make a student, distill, pseudo-label,
and the pipeline that chains them and ends with a benchmark.

Every training run goes through the same trainer classes (a teacher or a baseline student is a run whose only
term is CE), writes its final model and tokenizer to its output folder, Trainer checkpoints to
``<output>/checkpoints`` and every logged value to ``<output>/training_metrics.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass

import torch
from datasets import DatasetDict
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import get_last_checkpoint

from .arguments import (
    TASK_OF_MODEL_TYPE,
    WEIGHT_NAMES,
    DataArguments,
    ModelArguments,
    PipelineArguments,
    PseudoLabelArguments,
)
from .data import PreparedData, collator_for, has_trained_labels, load_raw_splits, prepare_data
from .errors import InputError
from .families import family_of
from .modeling import load_model, load_tokenizer, resolve_model_path, task_of_model
from .students import create_student
from .tiny import tiny_model, train_tokenizer
from .trainer import DistillationTrainer, Seq2SeqDistillationTrainer

logger = logging.getLogger(__name__)

TRAINING_METRICS_FILE = "training_metrics.json"
CHECKPOINTS_DIR = "checkpoints"
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
    path = resolve_model_path(source, "--teacher_local_path" if model_args.teacher_local_path else "--teacher")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    except OSError as error:
        if os.path.isdir(path):
            raise InputError(f"teacher folder {path!r} has no config.json; is it a saved model?") from None
        raise InputError(
            f"could not load the teacher {source!r} from the Hugging Face Hub ({type(error).__name__}); this machine "
            "may be offline: download it where there is network and pass --teacher_local_path"
        ) from None


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


def load_data(model_args: ModelArguments, data_args: DataArguments) -> tuple[str, str, DatasetDict, object]:
    """Model type, task, raw splits and the teacher's config (validated before any weights are loaded)."""
    config = teacher_config(model_args)
    model_type, task = resolve_model_type_and_task(model_args, config)
    raw = load_raw_splits(data_args, task)
    return model_type, task, raw, config


def load_teacher_and_tokenizer(
    model_args: ModelArguments, task: str, config, raw: DatasetDict, data_args: DataArguments
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreparedData]:
    """Tokenizer, tokenized data, then the teacher with the data's label names (for an untrained head)."""
    source = model_args.teacher_source
    flag = "--teacher_local_path" if model_args.teacher_local_path else "--teacher"
    tokenizer_source = model_args.custom_tokenizer_local_path or source
    tokenizer_flag = "--custom_tokenizer_local_path" if model_args.custom_tokenizer_local_path else flag
    tokenizer = load_tokenizer(tokenizer_source, flag=tokenizer_flag, trust_remote_code=model_args.trust_remote_code)
    known_labels = has_trained_labels(config) if task == "classification" else None
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    overrides = {} if known_labels else label_overrides(task, data.label_names)
    teacher = load_model(source, task, trust_remote_code=model_args.trust_remote_code, flag=flag, config_overrides=overrides)
    return teacher, tokenizer, data


def build_student(teacher: PreTrainedModel, model_args: ModelArguments, training_args) -> PreTrainedModel:
    if model_args.student:
        student = load_model(model_args.student, task_of_model(teacher), flag="--student")
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


# ---- training --------------------------------------------------------------------------------------------------


def with_overrides(training_args, **overrides):
    """A copy of the training arguments with some fields changed (the original is shared by several runs)."""
    changed = copy.copy(training_args)
    for name, value in overrides.items():
        setattr(changed, name, value)
    return changed


def ce_only(training_args):
    """Settings for a run without a teacher: a teacher's own training, or the no-distillation baseline."""
    return with_overrides(training_args, **{name: 1.0 if name == "ce_weight" else 0.0 for name in WEIGHT_NAMES})


def resolve_resume(resume: str | None, checkpoints_dir: str) -> str | None:
    """``--resume_from_checkpoint`` as a path: a checkpoint folder, or ``latest`` / ``true`` for the newest one."""
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("latest", "last", "true", "True"):
        last = get_last_checkpoint(checkpoints_dir) if os.path.isdir(checkpoints_dir) else None
        if last is None:
            raise InputError(f"--resume_from_checkpoint {resume}: no checkpoint under {checkpoints_dir!r} yet")
        return last
    if not os.path.isdir(resume):
        available = sorted(os.listdir(checkpoints_dir)) if os.path.isdir(checkpoints_dir) else []
        hint = f"checkpoints there: {', '.join(available)}" if available else "use 'latest' to pick the newest"
        raise InputError(f"--resume_from_checkpoint {resume!r} does not exist ({hint})")
    return resume


def train_model(
    name: str,
    model: PreTrainedModel,
    teacher: PreTrainedModel | None,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
    output_dir: str,
) -> TrainedModel:
    """One training run with the shared trainer; saves the final model, tokenizer and every logged value."""
    checkpoints = os.path.join(output_dir, CHECKPOINTS_DIR)
    args = with_overrides(training_args, output_dir=checkpoints)
    trainer_class = Seq2SeqDistillationTrainer if data.task == "seq2seq" else DistillationTrainer
    evaluate = args.eval_strategy != "no"
    trainer = trainer_class(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=data.tokenized["train"],
        eval_dataset=data.tokenized["validation"] if evaluate else None,
        data_collator=collator_for(data.task, tokenizer, model),
        processing_class=tokenizer,
    )
    resume = resolve_resume(args.resume_from_checkpoint, checkpoints)
    logger.info("training %s -> %s", name, output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if evaluate:
        metrics.update(trainer.evaluate())
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        record = {"name": name, "final_metrics": metrics, "log_history": trainer.state.log_history}
        with open(os.path.join(output_dir, TRAINING_METRICS_FILE), "w") as handle:
            json.dump(record, handle, indent=2)
    return TrainedModel(name, output_dir, metrics)


def scratch_teacher(
    model_type: str, task: str, raw: DatasetDict, data_args: DataArguments, model_args: ModelArguments
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PreparedData]:
    """A small teacher from a config, with a tokenizer trained on the training texts (no download anywhere)."""
    from .data import resolve_columns

    input_column, target_column = resolve_columns(raw, data_args, task)
    texts = list(raw["train"][input_column])
    if task != "classification" and target_column:
        texts += list(raw["train"][target_column])
    tokenizer = train_tokenizer(texts, vocab_size=model_args.scratch_vocab_size, model_type=model_type)
    data = prepare_data(raw, tokenizer, task, data_args)
    hidden = model_args.scratch_hidden_size
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


def check_resume(training_args, output_dir: str | None = None) -> None:
    """Fail on a bad --resume_from_checkpoint before any data or model is loaded."""
    resolve_resume(training_args.resume_from_checkpoint, os.path.join(output_dir or training_args.output_dir, CHECKPOINTS_DIR))


def train_teacher(model_args, data_args, training_args, pipeline_args: PipelineArguments | None = None) -> TrainedModel:
    """Fine-tune the given teacher on the task, or train a small one from scratch when none is given."""
    check_resume(training_args)
    model_type, task, raw, config = load_data(model_args, data_args)
    if config is None:
        teacher, tokenizer, data = scratch_teacher(model_type, task, raw, data_args, model_args)
    else:
        teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args)
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
    student.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    logger.info("student with layer map %s saved to %s", student.config.student_layer_map, output_dir)
    return output_dir


def distill(model_args, data_args, training_args) -> TrainedModel:
    """Distill the teacher into a student built from the layer flags (or given with --student)."""
    check_resume(training_args)
    model_type, task, raw, config = load_data(model_args, data_args)
    if config is None:
        raise InputError("distill needs a teacher: pass --teacher or --teacher_local_path (pipeline trains one for you)")
    teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args)
    student = build_student(teacher, model_args, training_args)
    return train_model("distilled", student, teacher, data, tokenizer, training_args, training_args.output_dir)


# ---- pseudo-labels ---------------------------------------------------------------------------------------------


def pseudo_label(model_args, data_args, pl_args: PseudoLabelArguments) -> str:
    """The teacher's outputs replace the targets of the chosen splits; the result is a dataset ``distill`` reads."""
    if not pl_args.pseudo_label_output:
        raise InputError("pseudo_label needs --pseudo_label_output: the folder to save the relabelled dataset to")
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
    DatasetDict(relabelled).save_to_disk(pl_args.pseudo_label_output)
    logger.info("pseudo-labelled %s saved to %s", ", ".join(pl_args.pseudo_label_splits), pl_args.pseudo_label_output)
    return pl_args.pseudo_label_output


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
    model_type, task, raw, config = load_data(model_args, data_args)
    if config is None:
        teacher, tokenizer, data = scratch_teacher(model_type, task, raw, data_args, model_args)
        teacher_run = _train_teacher_model(teacher, tokenizer, data, training_args, pipeline_args, os.path.join(root, "teacher"))
    else:
        teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args)
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
    results = run_benchmark(
        models,
        data,
        tokenizer,
        benchmark_args,
        os.path.join(root, "benchmark"),
        training_logs=training_logs,
        teacher_name="teacher",
    )
    return results
