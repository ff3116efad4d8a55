"""Every command of ``seq2seq-distill`` as a Python function: train a teacher, make a student, distill (live or from
a teacher cache), cache the teacher, pseudo-label, benchmark, and the pipeline that chains them.

Each function takes the command's parsed argument objects and returns what it made (a :class:`TrainedModel`, a
path, or the benchmark's summary); ``cli.py`` parses and prints, nothing here reads ``sys.argv``. The helpers of one
training run are in ``training.py``, inference in ``inference.py``, measuring in ``benchmark.py``.

About 490 lines: one function per command, each the order of its steps and the checks that must come before the
first weight is read (which is why they sit beside the steps they guard); the pieces they call live elsewhere.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil

from datasets import DatasetDict

from .arguments import (
    BenchmarkArguments,
    CacheArguments,
    DataArguments,
    LoraArguments,
    ModelArguments,
    PipelineArguments,
    PseudoLabelArguments,
    check_cache_destination,
    check_cached_student,
    check_one_teacher,
    check_pipeline_training,
)
from .checkpoints import check_resume
from .cross_tokenizer import vocabulary_map
from .data import has_trained_labels, load_raw_splits, prepare_data, resolve_columns, same_tokenizer
from .errors import InputError
from .features import pair_layers
from .inference import teacher_outputs
from .model_cards import ModelRun, save_model_card, update_model_cards
from .modeling import (
    freeze_teacher,
    has_tokenizer,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model_path,
    task_of_config,
)
from .processes import default_device, is_main_process
from .students import check_student_plan, plan_layers, requested_layers, student_config
from .teacher_cache import build_teacher_cache, load_teacher_cache
from .teachers import MixtureTeacher, TeacherSet
from .terms import plan_terms
from .trainer import check_cross_tokenizer_plan
from .training import (
    TRAINING_METRICS_FILE,
    TrainedModel,
    build_lora_student,
    build_student,
    ce_only,
    check_eval_metrics,
    check_lora_run,
    check_teacher_column,
    check_teacher_tokenizers,
    evaluates,
    feature_teacher_arguments,
    load_data,
    load_teacher_and_tokenizer,
    load_teachers,
    lora_adapted,
    own_student_tokenizer,
    resolve_model_type_and_task,
    run_name,
    run_teacher_names,
    scratch_teacher,
    student_tokenizer_and_data,
    teacher_config,
    train_model,
    with_overrides,
    with_teacher_column,
)

__all__ = [
    "benchmark_command",
    "cache_teacher",
    "distill",
    "distill_from_cache",
    "make_student",
    "pseudo_label",
    "run_pipeline",
    "train_teacher",
]

logger = logging.getLogger(__name__)


# ---- training commands -----------------------------------------------------------------------------------------


def train_teacher(model_args, data_args, training_args, pipeline_args: PipelineArguments | None = None) -> TrainedModel:
    """Fine-tune the given teacher on the task, or train a small one from scratch when none is given."""
    check_one_teacher(model_args, "train_teacher")
    check_resume(training_args)
    model_type, task, raw, config = load_data(model_args, data_args, training_args)
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
    check_one_teacher(model_args, "make_student")
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
        card = ModelRun("student", "student", task, student.config.model_type, source, student.config.student_layer_map)
        save_model_card(output_dir, card)
    logger.info("student with layer map %s saved to %s", student.config.student_layer_map, output_dir)
    return output_dir


def distill(model_args, data_args, training_args, lora_args: LoraArguments | None = None) -> TrainedModel:
    """Distill the teacher (or several, ``--teachers``) into a student built from the layer flags (or given with
    --student). With several, the feature teacher's config, tokenizer and layers make the data and the student; with
    ``lora_args`` (--lora_r) the student is that model with a LoRA adapter, the only part trained
    (``training.build_lora_student``)."""
    check_resume(training_args)
    lora_args = lora_args or LoraArguments()
    if training_args.teacher_cache:
        return distill_from_cache(model_args, data_args, training_args, lora_args)
    names, as_given = run_teacher_names(model_args), model_args
    model_args = feature_teacher_arguments(model_args, data_args, training_args)
    config = teacher_config(model_args)
    check_lora_run(lora_args, model_args, data_args, training_args, config)
    model_type, task, raw, config = load_data(model_args, data_args, training_args)
    if config is None:
        raise InputError(
            "distill needs a teacher: pass --teacher, --teacher_local_path or --teachers (pipeline trains one for you)"
        )
    check_student_plan(model_args, training_args, config, task)
    check_teacher_column(raw, training_args, names)
    reads_teacher = plan_terms(training_args).needs_teacher

    def check_student_tokenizer(teacher_tokenizer):
        # A student with a tokenizer of its own changes which terms can run: known before any text is tokenized.
        student_tokenizer = own_student_tokenizer(model_args, teacher_tokenizer) if reads_teacher else None
        check_cross_tokenizer_plan(task, training_args, student_tokenizer is not None)
        if student_tokenizer is not None and plan_terms(training_args).has("matched_kl_loss"):
            vocabulary_map(student_tokenizer, teacher_tokenizer)  # no shared token: an error now (the trainer reuses it)
        check_teacher_tokenizers(as_given, teacher_tokenizer)

    teacher, teacher_tokenizer, data = load_teacher_and_tokenizer(
        model_args, task, config, raw, data_args, training_args.seed, check_tokenizer=check_student_tokenizer
    )
    tokenizer, data = student_tokenizer_and_data(
        model_args, teacher_tokenizer, data, data_args, teacher_reads_inputs=reads_teacher
    )
    if lora_args.enabled:
        student, teacher = build_lora_student(teacher, model_args, training_args, lora_args, config)
    else:
        student = build_student(teacher, model_args, training_args)
    # No term runs the teacher (CE only, e.g. on its pseudo-labels): the trainer gets none, as a baseline's does, so
    # a student of another family or tokenizer is not checked against a teacher it never meets.
    live_teacher = teacher if reads_teacher else None
    if reads_teacher and as_given.named_teachers:
        live_teacher = load_teachers(as_given, training_args, teacher, task, data, training_args.seed)
    elif reads_teacher and training_args.teacher_column:
        live_teacher = {names[0]: teacher}  # the name the data's rows were checked against
    if reads_teacher:
        data = with_teacher_column(data, training_args.teacher_column)
    del teacher  # one the trainer does not get (CE only, or the source of a self-distilled copy) is freed now
    return train_model(run_name(training_args), student, live_teacher, data, tokenizer, training_args, training_args.output_dir)


def distill_from_cache(model_args, data_args, training_args, lora_args: LoraArguments | None = None) -> TrainedModel:
    """Distill from a teacher cache (``cache_teacher``): the teacher is never loaded, so the student is given (with
    ``lora_args``: a LoRA adapter on it, which alone is trained)."""
    if model_args.teachers:
        raise InputError(
            "--teacher_cache replaces the live teachers (cache_teacher --teachers caches their mixture): drop --teachers"
        )
    lora_args = lora_args or LoraArguments()
    check_lora_run(lora_args, model_args, data_args, training_args, None)
    if data_args.transfer_dataset_local_path or data_args.transfer_dataset or data_args.augment_copies:
        raise InputError(
            "a transfer set (or augmentation) is labelled by the live teacher, and a teacher cache holds the rows of "
            "its own splits only: distill with --teacher instead of --teacher_cache, or drop the transfer flags"
        )
    check_cached_student(model_args)
    student_path = resolve_model_path(model_args.student, "--student")
    config = student_config(model_args)
    _, task = resolve_model_type_and_task(model_args, config)
    check_eval_metrics(training_args, task)
    known_labels = has_trained_labels(config) if task == "classification" else None
    raw = load_raw_splits(data_args, task, evaluates=evaluates(training_args, task), known_labels=known_labels)
    tokenizer_source = model_args.custom_tokenizer_local_path or student_path
    tokenizer = load_tokenizer(tokenizer_source, flag="--student", trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    splits = ("train", "validation") if evaluates(training_args, task) else ("train",)
    cache = load_teacher_cache(training_args.teacher_cache, data, tokenizer, temperature=training_args.temperature, splits=splits)
    student = load_model(student_path, task, flag="--student", trust_remote_code=model_args.trust_remote_code)
    if lora_args.enabled:
        student = lora_adapted(student, model_args.student, lora_args, training_args.seed)
    name = run_name(training_args)
    return train_model(name, student, None, data, tokenizer, training_args, training_args.output_dir, teacher_cache=cache)


def cache_teacher(model_args, data_args, training_args, cache_args: CacheArguments) -> str:
    """Run the teacher once over the data and store its top-k log-probabilities for ``distill --teacher_cache``
    (with ``--cache_hidden_states``, the hidden states of the layers the student's feature terms read too).

    With ``--teachers``, one cache of their mixture (``teachers.MixtureTeacher``): ``distill --teacher_cache`` then
    distills the mixture as it would one teacher."""
    check_cache_destination(training_args)
    path = training_args.teacher_cache
    if training_args.teacher_column:
        raise InputError(
            "a teacher cache holds one target per row, the mixture of --teachers; --teacher_column routing needs the "
            "live teachers (distill --teachers), or drop --teacher_column"
        )
    as_given = model_args
    model_args = feature_teacher_arguments(model_args, data_args, training_args)
    # The same splits as the distill run it serves: that run reads the validation split only if it evaluates.
    _, task, raw, config = load_data(model_args, data_args, training_args)
    if config is None:
        raise InputError("cache_teacher needs a teacher: pass --teacher, --teacher_local_path or --teachers")
    hidden_layers = _cached_hidden_layers(model_args, training_args, config) if cache_args.cache_hidden_states else None
    teacher, tokenizer, data = load_teacher_and_tokenizer(
        model_args,
        task,
        config,
        raw,
        data_args,
        training_args.seed,
        check_tokenizer=lambda teacher_tokenizer: check_teacher_tokenizers(as_given, teacher_tokenizer),
    )
    device = default_device(use_cpu=training_args.use_cpu)
    if as_given.named_teachers:
        teachers = load_teachers(as_given, training_args, teacher, task, data, training_args.seed)
        home = "cpu" if training_args.offload_idle_teachers else device  # offloaded: on the device only to score
        frozen = [freeze_teacher(each, home, next(each.parameters()).dtype) for each in teachers.values()]
        teacher = MixtureTeacher(TeacherSet(list(teachers), frozen, training_args, device), training_args.temperature)
    else:
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
        hidden_layers=hidden_layers,
        hidden_dtype=cache_args.cache_hidden_dtype,
    )


def _cached_hidden_layers(model_args, training_args, teacher_config) -> dict[str, list[int]]:
    """{stack role: the teacher layers whose hidden states the distill run's feature terms will read}, from the
    teacher's config before any weight is loaded: the pairing of ``--student`` (explicit layer maps, else its
    recorded map), else the map a student built from the layer flags would record (no flags: every teacher layer,
    which serves any student of this teacher)."""
    if model_args.student:
        pairs = pair_layers(student_config(model_args), teacher_config, training_args)
        return {pair.teacher.role: sorted(set(pair.layer_map)) for pair in pairs}
    planned = plan_layers(teacher_config, requested_layers(model_args, training_args))
    return {role: sorted(set(layer_map)) for role, layer_map in planned.items()}


# ---- commands that run a trained model -------------------------------------------------------------------------


def pseudo_label(model_args, data_args, pl_args: PseudoLabelArguments) -> str:
    """The teacher's outputs replace the targets of the chosen splits; the result is a dataset ``distill`` reads."""
    check_one_teacher(model_args, "pseudo_label")
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
    if task == "causal_lm" and resolve_columns(raw, data_args, task)[1] is None:
        raise InputError("pseudo_label writes completions into a target column; this causal-LM data has none (plain text)")
    teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args)
    device = default_device()
    teacher.to(device).eval()
    generation = {
        "num_beams": pl_args.num_beams,
        "max_new_tokens": pl_args.max_new_tokens or data_args.max_target_length,
        **({"length_penalty": pl_args.length_penalty} if pl_args.length_penalty is not None else {}),
    }
    relabelled = {}
    for split, dataset in raw.items():
        if split not in pl_args.pseudo_label_splits:
            relabelled[split] = dataset
            continue
        outputs = teacher_outputs(teacher, tokenizer, data, split, generation, pl_args.pseudo_label_batch_size, device)
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


def benchmark_command(model_args: ModelArguments, data_args: DataArguments, args: BenchmarkArguments) -> dict:
    """``seq2seq-distill benchmark --models A B C``: same data and generation settings for all; a model whose
    folder holds a tokenizer of its own reads and decodes with it, the others with the first model's (or
    --custom_tokenizer_local_path)."""
    from .benchmark import run_benchmark  # its metrics (nltk) take a second to import: only the commands that measure

    check_one_teacher(model_args, "benchmark")
    named = args.named_models()
    settings = args.settings_of_models()  # --model_groups: checked before any model is loaded
    if not is_main_process():  # under torchrun: one process measures and writes, the others would only compete with it
        return {"verdict": "this process skipped the benchmark: it runs on the main process", "skipped": True}
    names = list(named)
    paths = [resolve_model_path(path, "--models") for path in named.values()]
    configs = [load_config(path, flag="--models", trust_remote_code=model_args.trust_remote_code) for path in paths]
    task = model_args.task or task_of_config(configs[0])
    tokenizer = load_tokenizer(
        model_args.custom_tokenizer_local_path or paths[0], flag="--models", trust_remote_code=model_args.trust_remote_code
    )
    own = _own_tokenizers(tokenizer, paths, names, model_args.trust_remote_code)
    known_labels = has_trained_labels(configs[0]) if task == "classification" else None
    raw = load_raw_splits(data_args, task, evaluates=args.benchmark_split == "validation", known_labels=known_labels)
    data = prepare_data(raw, tokenizer, task, data_args, known_labels)
    labels = {name: index for index, name in enumerate(data.label_names)} if data.label_names else None
    readers = {
        name: (own_tokenizer, prepare_data(raw, own_tokenizer, task, data_args, labels)) for name, own_tokenizer in own.items()
    }
    training_logs = {name: os.path.join(path, TRAINING_METRICS_FILE) for name, path in zip(names, paths, strict=True)}
    summary = run_benchmark(
        dict(zip(names, paths, strict=True)),
        data,
        tokenizer,
        args,
        args.benchmark_output_dir,
        training_logs=training_logs,
        max_target_length=data_args.max_target_length,
        settings=settings,
        readers=readers,
    )
    update_model_cards(dict(zip(names, paths, strict=True)), summary, data_args)  # the results go into our models' cards
    return summary


def _own_tokenizers(tokenizer, paths: list[str], names: list[str], trust_remote_code: bool = False) -> dict:
    """{name: tokenizer} of the models whose folder holds a tokenizer other than ``tokenizer``: each model reads the
    same texts with its own and decodes its outputs with it (the benchmark then marks the token-level figures of
    a model whose vocabulary is not the teacher's as undefined)."""
    own = {}
    for name, path in zip(names, paths, strict=True):
        if not has_tokenizer(path):
            continue
        other = load_tokenizer(path, flag="--models", trust_remote_code=trust_remote_code)
        if not same_tokenizer(other, tokenizer):
            own[name] = other
    return own


# ---- the pipeline ----------------------------------------------------------------------------------------------


def run_pipeline(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args,
    pipeline_args: PipelineArguments,
    benchmark_args: BenchmarkArguments,
) -> dict:
    """Teacher (given, fine-tuned or trained) -> layer-copied student -> distilled and baseline students -> benchmark.

    With ``--seeds N`` above 1 the teacher is trained once and each student N times (:func:`_seed_runs`), into
    ``baseline-seedS`` / ``distilled-seedS``; the benchmark reports each setting's mean and spread over its runs.
    With ``--baseline_steps matched`` the baseline trains as many optimizer steps as the distilled run of its seed
    (which also sees the transfer set), so that a win cannot come from the longer run alone.
    """
    from .benchmark import run_benchmark

    root = training_args.output_dir
    check_one_teacher(model_args, "pipeline")
    check_pipeline_training(training_args)
    seed_runs = _seed_runs(training_args, pipeline_args.seeds)
    model_type, task, raw, config = load_data(model_args, data_args, training_args)
    if config is None:
        teacher, tokenizer, data = scratch_teacher(model_type, task, raw, data_args, model_args, training_args.seed)
        check_student_plan(model_args, training_args, teacher.config, task)
        teacher_run = _train_teacher_model(teacher, tokenizer, data, training_args, pipeline_args, os.path.join(root, "teacher"))
    else:
        check_student_plan(model_args, training_args, config, task)
        teacher, tokenizer, data = load_teacher_and_tokenizer(model_args, task, config, raw, data_args, training_args.seed)
        if own_student_tokenizer(model_args, tokenizer) is not None:
            raise InputError(
                "--student has a tokenizer of its own, and the pipeline reads every model with the teacher's; run "
                "distill --student, then benchmark (which reads each classifier with its own tokenizer)"
            )
        if pipeline_args.finetune_teacher:
            teacher_run = _train_teacher_model(
                teacher, tokenizer, data, training_args, pipeline_args, os.path.join(root, "teacher")
            )
        else:
            teacher_run = TrainedModel("teacher", resolve_model_path(model_args.teacher_source), {})
    settings = {"baseline": [], "distilled": []} if pipeline_args.train_baseline else {"distilled": []}
    runs, seeds = {"teacher": teacher_run}, {}
    source = teacher_run.path  # what the students' model cards name as their teacher
    # matched: the baseline's step count is the distilled run's, so the distilled student of each seed trains first
    training_order = ["distilled", "baseline"] if pipeline_args.baseline_steps == "matched" else ["baseline", "distilled"]
    for seed, seeded_args in seed_runs:
        student = build_student(teacher, model_args, seeded_args)
        baseline_start = copy.deepcopy(student) if "baseline" in settings else None  # both runs start from these weights
        trained = {}
        for setting in (setting for setting in training_order if setting in settings):
            name = setting if pipeline_args.seeds == 1 else f"{setting}-seed{seed}"
            folder = os.path.join(root, name)
            if setting == "baseline":
                baseline_args = ce_only(seeded_args)
                if "distilled" in trained:
                    baseline_args = with_overrides(baseline_args, max_steps=trained["distilled"].steps)
                run = train_model(name, baseline_start, None, data, tokenizer, baseline_args, folder, teacher_source=source)
            else:
                run = train_model(name, student, teacher, data, tokenizer, seeded_args, folder, teacher_source=source)
            runs[name], seeds[name], trained[setting] = run, seed, run
            settings[setting].append(name)
    order = ["teacher", *(name for names in settings.values() for name in names)]  # each setting's seeds together
    models = {name: runs[name].path for name in order}
    training_logs = {name: os.path.join(runs[name].path, TRAINING_METRICS_FILE) for name in order}
    if not is_main_process():  # whole models are measured once, by the main process; the others are done
        return {"verdict": f"process {training_args.process_index}: the benchmark runs on the main process", "skipped": True}
    summary = run_benchmark(
        models,
        data,
        tokenizer,
        benchmark_args,
        os.path.join(root, "benchmark"),
        training_logs=training_logs,
        teacher_name="teacher",
        settings={"teacher": ["teacher"], **settings},
        seeds=seeds,
    )
    update_model_cards(models, summary, data_args)  # saved before the benchmark: their cards get its results now
    return summary


def _seed_runs(training_args, count: int) -> list[tuple[int, object]]:
    """(seed, training arguments) of each student run: run i trains with ``--seed + i`` (and ``--data_seed + i``
    when one is set), so data order, dropout and whatever is initialized afresh differ between runs; run 0 is the
    run of the given seed."""
    last = max(training_args.seed, training_args.data_seed or 0) + count - 1
    if last >= 2**32:
        raise InputError(f"--seeds {count} from --seed {training_args.seed} runs past 2**32 - 1; lower --seed")
    runs = []
    for index in range(count):
        seed, data_seed = training_args.seed + index, None if training_args.data_seed is None else training_args.data_seed + index
        runs.append((seed, with_overrides(training_args, seed=seed, data_seed=data_seed)))
    return runs
