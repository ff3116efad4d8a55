"""Is the student worth it? Teacher and students side by side: quality, agreement with the teacher, speed and size.

Every model is measured the same way on the same device, one after the other: the same split (evaluated in
length-sorted batches to waste less padding), the same tokenizer (or each its own, from the same texts) and the same
generation settings (taken once from the teacher's generation config unless flags set them). Timings exclude warm-up
runs. Outputs, in the output folder: ``benchmark_results.json``, ``comparison_table.csv``, ``benchmark_report.md``
(first line: the verdict), ``sample_predictions.md``, ``quality_vs_latency.png`` and, when training logs are at
hand, ``training_curves.png``.

Seed runs of one setting (``pipeline --seeds``, ``benchmark --model_groups``) are measured one by one as well, then
summed up per setting: the mean and spread of each quality figure, the median of the cost figures, and the A/B rule
(:func:`seed_comparison`) the verdict states: distillation wins only by more than the spread over seeds.

Running the models is ``inference.py``'s job and writing the files ``reports.py``'s; this module is the measuring
only (quality, agreement, speed, size, the verdict), kept together past 400 lines so that one procedure measures
every model and the verdict's rules (the speed-up's and the A/B's) sit beside the figures they judge.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .arguments import BenchmarkArguments
from .data import PreparedData, collator_for, same_tokenizer
from .errors import InputError
from .inference import EvaluationSet, TaskRunner, batches, evaluation_set, predict_in_batches
from .metrics import bleu_scores, classification_scores, generation_length, perplexity, prediction_agreement, rouge_scores
from .modeling import load_model, logit_rows, output_rows, resolve_model_path, shared_output_size
from .processes import default_device
from .reports import METRIC_LABELS, write_reports

logger = logging.getLogger(__name__)

MAIN_METRIC = {"seq2seq": "rougeL", "classification": "accuracy", "causal_lm": "perplexity"}
LOWER_IS_BETTER = {"perplexity", "kl_to_teacher"}
TOKEN_AGREEMENT = ("kl_to_teacher", "top1_agreement")  # per token under teacher forcing: one vocabulary only
MIN_RELIABLE_TIMINGS = 10  # fewer latency timings than this per model: the verdict states no speed-up ratio
BASELINE_SETTING = "baseline"  # the CE-only student: the setting the verdict compares every other student with


@dataclass
class ModelResult:
    name: str
    path: str
    quality: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    versus_teacher: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list, repr=False)


# ---- measuring -------------------------------------------------------------------------------------------------


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device):
    """Peak memory above the starting point while the block runs, in MB (``result["peak_mb"]``).

    CUDA: the allocator's own peak. CPU: resident memory sampled every 2 ms, after returning freed heap pages to
    the OS (``malloc_trim``) so that memory freed by the previous model does not hide this one's.
    """
    result = {"peak_mb": float("nan")}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    if not os.path.exists("/proc/self/statm"):
        yield result  # no cheap way to read resident memory here: report NaN rather than a wrong number
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    start = _resident_bytes()
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _resident_bytes())
        result["peak_mb"] = (peak[0] - start) / 2**20


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stopwatch:
    """Adds up the seconds of the blocks it times (``with stopwatch():``), the device synchronized around each."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    @contextmanager
    def __call__(self):
        _synchronize(self.device)
        start = time.perf_counter()
        yield
        _synchronize(self.device)
        self.seconds += time.perf_counter() - start


def parameter_counts(model: PreTrainedModel) -> dict:
    """Total parameters and parameters outside embedding tables (the part that sets the compute per token)."""
    parameters = {id(p): p for p in model.parameters()}
    embedding_ids = {id(p) for module in model.modules() if isinstance(module, torch.nn.Embedding) for p in module.parameters()}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        embedding_ids |= {id(p) for p in output.parameters()}
    total = sum(p.numel() for p in parameters.values())
    embeddings = sum(parameters[i].numel() for i in embedding_ids if i in parameters)
    return {"parameters": total, "parameters_without_embeddings": total - embeddings}


def size_on_disk_mb(model: PreTrainedModel) -> float:
    """Bytes of the model's safetensors weights, saved afresh so every model is measured the same way."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        weights = [name for name in os.listdir(folder) if name.endswith(".safetensors")]
        return sum(os.path.getsize(os.path.join(folder, name)) for name in weights) / 2**20


# ---- one model ------------------------------------------------------------------------------------------------


def evaluate_model(
    name: str,
    path: str,
    data: PreparedData,
    evaluation: EvaluationSet,
    tokenizer: PreTrainedTokenizerBase,
    generation: dict,
    args: BenchmarkArguments,
    device: torch.device,
    trust_remote_code: bool = False,
    teacher_tokens: bool = True,
) -> ModelResult:
    """Quality on the whole split, throughput at the batch size, latency at batch size 1, size and peak memory.

    ``teacher_tokens``: whether the model reads the teacher's tokenizer. A causal LM that does not gets no perplexity
    (NaN: JSON null, "n/a"): a figure per token of another vocabulary is not the teacher's figure.
    """
    result = ModelResult(name, path)
    with peak_memory(device) as memory:
        model = load_model(path, data.task, flag="--models", trust_remote_code=trust_remote_code).to(device).eval()
        runner = TaskRunner(model, tokenizer, data.task, generation, device)
        batch_order = list(batches(evaluation.order, args.benchmark_batch_size))
        for batch in batch_order[: args.warmup_batches]:
            runner.predict([evaluation.features[i] for i in batch])
        stopwatch = _Stopwatch(device)
        result.predictions, counts = predict_in_batches(
            runner, evaluation.features, batch_order, timer=stopwatch, desc=f"evaluating {name}", leave=False
        )
        generated_tokens, elapsed = sum(counts), stopwatch.seconds
        latencies, latency_tokens = _latencies(runner, evaluation, args, device)
    result.quality = _quality(data, evaluation, result.predictions, counts, model, tokenizer, device, args, teacher_tokens)
    result.cost = {
        **parameter_counts(model),
        "size_on_disk_mb": size_on_disk_mb(model),
        "peak_memory_mb": memory["peak_mb"],
        "latency_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "latency_p95_ms": float(np.percentile(latencies, 95) * 1000),
        "latency_timings": len(latencies),
        "examples_per_second": len(evaluation.features) / elapsed,
        "batch_size": args.benchmark_batch_size,
    }
    if data.task != "classification":  # per token means something only where tokens are generated
        per_token = [seconds * 1000 / count for seconds, count in zip(latencies, latency_tokens, strict=True)]
        # Per generated token at batch size 1: two models writing outputs of different lengths compare fairly.
        result.cost["latency_per_token_ms"] = float(sum(latencies) * 1000 / sum(latency_tokens))
        result.cost["latency_per_token_p50_ms"] = float(np.percentile(per_token, 50))
        result.cost["latency_per_token_p95_ms"] = float(np.percentile(per_token, 95))
        result.cost["generated_tokens_per_second"] = generated_tokens / elapsed
    del model, runner
    gc.collect()
    return result


def _latencies(runner: TaskRunner, evaluation: EvaluationSet, args: BenchmarkArguments, device) -> tuple[list[float], list[int]]:
    """Seconds per run at batch size 1 on the first ``--latency_examples`` examples of the split (after warm-up runs),
    and the tokens each run generated (1 for classification).

    The set is timed in whole rounds, repeated until there are at least ``--latency_min_timings`` timings and
    ``--latency_min_time`` seconds of them, so every model sees each example equally often and a fast model is not
    judged on a handful of millisecond timings.
    """
    examples = [evaluation.features[i] for i in range(min(args.latency_examples, len(evaluation.features)))]
    if not examples:
        raise InputError(f"the {args.benchmark_split} split has no examples to time")
    for feature in examples[: args.warmup_batches]:
        runner.predict([feature])
    timings: list[float] = []
    tokens: list[int] = []
    while not timings or len(timings) < args.latency_min_timings or sum(timings) < args.latency_min_time:
        for feature in examples:
            _synchronize(device)
            start = time.perf_counter()
            _, counts = runner.predict([feature])
            _synchronize(device)
            timings.append(time.perf_counter() - start)
            tokens.append(max(1, sum(counts)))
    return timings, tokens


def _quality(data, evaluation, predictions, counts, model, tokenizer, device, args, teacher_tokens: bool = True) -> dict:
    if data.task == "classification":  # scored on the labelled rows (-100 marks a row without a label)
        labelled = [
            (prediction, label) for prediction, label in zip(predictions, evaluation.references, strict=True) if label >= 0
        ]
        return classification_scores([p for p, _ in labelled], [label for _, label in labelled], data.label_names)
    quality = {}
    if data.task == "causal_lm":
        quality["perplexity"] = _perplexity(model, tokenizer, data, evaluation, device, args) if teacher_tokens else math.nan
    if all(reference is not None for reference in evaluation.references):
        texts = [prediction or "" for prediction in predictions]
        quality.update(rouge_scores(texts, evaluation.references))
        quality.update(bleu_scores(texts, evaluation.references))
    quality["generated_length"] = generation_length(counts)
    return quality


@torch.no_grad()
def _perplexity(model, tokenizer, data, evaluation, device, args) -> float:
    """Per-token perplexity of the targets under teacher forcing (the completion for prompt + completion data)."""
    collator = collator_for(data.task, tokenizer, None)
    total_nll, total_tokens = 0.0, 0
    for batch_indices in batches(evaluation.order, args.benchmark_batch_size):
        batch = collator([evaluation.features[i] for i in batch_indices])
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        labels = batch["labels"][:, 1:]
        total_nll += F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        total_tokens += int((labels != -100).sum())
    return perplexity(total_nll, total_tokens)


# ---- agreement with the teacher --------------------------------------------------------------------------------


@torch.no_grad()
def teacher_agreement(
    teacher_path: str,
    students: dict[str, str],
    data: PreparedData,
    evaluation: EvaluationSet,
    tokenizer,
    args,
    device,
    trust_remote_code: bool = False,
) -> dict[str, dict]:
    """Mean token-level KL(teacher || student) and, for generation, top-1 agreement under teacher forcing on the
    split's targets (for classification the top-1 class is the prediction: ``prediction_agreement`` says it once)."""
    teacher = load_model(teacher_path, data.task, flag="--models", trust_remote_code=trust_remote_code).to(device).eval()
    collator = collator_for(data.task, tokenizer, teacher)
    results = {}
    for name, path in students.items():
        student = load_model(path, data.task, flag="--models", trust_remote_code=trust_remote_code).to(device).eval()
        shared = shared_output_size(output_rows(student), output_rows(teacher), len(tokenizer), data.task)
        kl_sum, agree, positions = 0.0, 0, 0
        for batch_indices in batches(evaluation.order, args.benchmark_batch_size):
            batch = collator([evaluation.features[i] for i in batch_indices])
            batch = {key: tensor.to(device) for key, tensor in batch.items()}
            labels = batch.pop("labels")
            if data.task == "seq2seq" and "decoder_input_ids" not in batch:
                batch["decoder_input_ids"] = teacher.prepare_decoder_input_ids_from_labels(labels=labels)
            student_logits = student(**batch).logits
            teacher_logits = teacher(**batch).logits
            if data.task == "causal_lm":  # position t predicts token t + 1 (logit_rows)
                student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
            mask = logit_rows(data.task, labels, batch["attention_mask"]).distill  # the rows distillation compares
            student_log_probs = F.log_softmax(student_logits[mask][..., :shared].float(), -1)
            teacher_log_probs = F.log_softmax(teacher_logits[mask][..., :shared].float(), -1)
            kl_sum += F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum").item()
            agree += int((student_log_probs.argmax(-1) == teacher_log_probs.argmax(-1)).sum())
            positions += int(mask.sum())
        results[name] = {"kl_to_teacher": kl_sum / max(positions, 1)}
        if data.task != "classification":  # for classification top-1 is the prediction: run_benchmark adds that once
            results[name]["top1_agreement"] = 100.0 * agree / max(positions, 1)
        del student
    del teacher
    gc.collect()
    return results


@torch.no_grad()
def label_agreement(
    models: dict[str, str],
    teacher_name: str,
    task: str,
    evaluations: dict[str, EvaluationSet],
    tokenizers: dict,
    args,
    device,
    trust_remote_code: bool = False,
) -> dict[str, dict]:
    """Mean KL(teacher || student) over the label distributions of classifiers that read the rows with different
    tokenizers: each model's distribution of every row on its own tokenization, compared row by row."""
    if task != "classification":
        raise InputError("models with different tokenizers can be compared for classification only")

    def label_log_probs(name: str) -> torch.Tensor:  # [rows, labels], in the split's row order
        model = load_model(models[name], task, flag="--models", trust_remote_code=trust_remote_code).to(device).eval()
        evaluation, collator = evaluations[name], collator_for(task, tokenizers[name])
        rows: list[torch.Tensor | None] = [None] * len(evaluation.features)
        for batch_indices in batches(evaluation.order, args.benchmark_batch_size):
            features = [{k: v for k, v in evaluation.features[i].items() if k != "labels"} for i in batch_indices]
            batch = {key: tensor.to(device) for key, tensor in collator(features).items()}
            for index, row in zip(batch_indices, F.log_softmax(model(**batch).logits.float(), -1), strict=True):
                rows[index] = row.cpu()
        del model
        gc.collect()
        return torch.stack(rows)

    teacher_log_probs = label_log_probs(teacher_name)
    results = {}
    for name in models:
        if name != teacher_name:
            student_log_probs = label_log_probs(name)
            kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum").item()
            results[name] = {"kl_to_teacher": kl / max(len(teacher_log_probs), 1)}
    return results


# ---- the benchmark ---------------------------------------------------------------------------------------------


def resolve_generation(first_model_path: str, task: str, args: BenchmarkArguments, data_args_max_target: int) -> dict:
    """One set of generation settings for every model: flags, else the teacher's generation config."""
    if task == "classification":
        return {}
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(resolve_model_path(first_model_path, "--models"))
    except OSError:
        config = GenerationConfig()
    settings = {
        "num_beams": args.num_beams or config.num_beams or 1,
        "max_new_tokens": args.max_new_tokens or data_args_max_target,
        "do_sample": False,
    }
    length_penalty = args.length_penalty if args.length_penalty is not None else config.length_penalty
    if settings["num_beams"] > 1 and length_penalty is not None:
        settings["length_penalty"] = length_penalty
    return settings


def run_benchmark(
    models: dict[str, str],
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    args: BenchmarkArguments,
    output_dir: str,
    *,
    training_logs: dict[str, str] | None = None,
    teacher_name: str | None = None,
    max_target_length: int = 128,
    trust_remote_code: bool = False,
    settings: dict[str, list[str]] | None = None,
    seeds: dict[str, int] | None = None,
    readers: dict[str, tuple[PreTrainedTokenizerBase, PreparedData]] | None = None,
) -> dict:
    """Measure every model, compare the students with the teacher, and write the reports.

    ``readers``: {name: (tokenizer, data)} of models whose tokenizer is not ``tokenizer``; each reads the same rows
    with its own. Classifiers are compared with the teacher on the labels (:func:`label_agreement`); generation
    models on text (ROUGE, BLEU of each one's decoded outputs), while their token-level figures (perplexity, KL and
    top-1 agreement per token) are NaN (JSON null, "n/a") wherever a model's tokenizer is not the teacher's, and the
    speed-up divides the time per example, not per token of vocabularies that differ.

    ``settings``: {setting: names of its models}, the seed runs of one setting (unset: a setting per model); each
    setting is reported as the mean and spread of its runs' quality and the median of their speed and size, and the
    verdict compares the students' settings with the ``baseline`` one (:func:`seed_comparison`). ``seeds``: the seed
    of each model where known, recorded beside its setting.
    """
    if not models:
        raise InputError("benchmark needs at least one model: pass --models")
    teacher_name = teacher_name or args.teacher_name or next(iter(models))
    if teacher_name not in models:
        raise InputError(f"--teacher_name {teacher_name!r} is not one of the models ({', '.join(models)})")
    settings = check_settings(settings, list(models), teacher_name)
    device = default_device(args.device)
    evaluation = evaluation_set(data, args.benchmark_split)
    # Classifiers with tokenizers of their own: each reads the same texts with its own (labels are what they share).
    readers = readers or {}
    tokenizers = {name: readers[name][0] if name in readers else tokenizer for name in models}
    evaluations = {
        name: evaluation_set(readers[name][1], args.benchmark_split) if name in readers else evaluation for name in models
    }
    if data.task == "classification" and all(label < 0 for label in evaluation.references):
        raise InputError(
            f"the {args.benchmark_split} split has no labels (every row is unlabelled, e.g. -1); benchmark another split "
            "with --benchmark_split"
        )
    generation = resolve_generation(models[teacher_name], data.task, args, args.max_new_tokens or max_target_length)
    # Token-level figures (perplexity, KL and top-1 agreement per token) are defined between models of one vocabulary.
    teacher_tokens = {name: same_tokenizer(tokenizers[name], tokenizers[teacher_name]) for name in models}
    per_token = data.task != "classification" and all(teacher_tokens.values())
    results = {
        name: evaluate_model(
            name,
            path,
            data,
            evaluations[name],
            tokenizers[name],
            generation,
            args,
            device,
            trust_remote_code,
            teacher_tokens=teacher_tokens[name],
        )
        for name, path in models.items()
    }
    students = {name: path for name, path in models.items() if name != teacher_name}
    if students:
        if readers and data.task == "classification":
            agreement = label_agreement(models, teacher_name, data.task, evaluations, tokenizers, args, device, trust_remote_code)
        else:  # token-level figures: of the students that read the teacher's tokens, undefined (NaN) for the others
            same = {name: path for name, path in students.items() if teacher_tokens[name]}
            agreement = {name: dict.fromkeys(TOKEN_AGREEMENT, math.nan) for name in students if not teacher_tokens[name]}
            if same:
                agreement |= teacher_agreement(
                    models[teacher_name],
                    same,
                    data,
                    evaluations[teacher_name],
                    tokenizers[teacher_name],
                    args,
                    device,
                    trust_remote_code,
                )
        for name, values in agreement.items():
            results[name].quality.update(values)
            if data.task == "classification":
                results[name].quality["prediction_agreement"] = prediction_agreement(
                    results[name].predictions, results[teacher_name].predictions
                )
    main_metric = MAIN_METRIC[data.task]
    if data.task == "causal_lm" and not all(teacher_tokens.values()) and "rougeL" in results[teacher_name].quality:
        main_metric = "rougeL"  # tokenizer-free: the completions compared as text
    if main_metric not in results[teacher_name].quality:
        main_metric = "perplexity" if data.task == "causal_lm" else next(iter(results[teacher_name].quality))
    for result in results.values():
        result.versus_teacher = compare_with_teacher(result, results[teacher_name], main_metric, per_token=per_token)
    setting_results = {
        setting: setting_result(
            setting, [results[name] for name in names], results[teacher_name], main_metric, per_token=per_token
        )
        for setting, names in settings.items()
    }
    teacher_setting = next(setting for setting, names in settings.items() if teacher_name in names)
    versus_baseline = compare_settings(settings, results, teacher_setting, main_metric)
    verdict = make_verdict(setting_results, teacher_setting, main_metric, versus_baseline)
    summary = {
        "verdict": verdict,
        "teacher": teacher_name,
        "main_metric": main_metric,
        "task": data.task,
        "split": args.benchmark_split,
        "examples": len(evaluation.features),
        # Whether each model reads the teacher's tokenizer; a generation model that does not has null figures per token
        "teacher_tokenizer": teacher_tokens,
        "speedup_per_token": per_token,
        "settings": {"benchmark": asdict(args), "generation": generation},
        "environment": environment(device),
        "models": {name: {k: v for k, v in asdict(result).items() if k != "predictions"} for name, result in results.items()},
        "groups": {
            setting: setting_summary(names, results, setting_results[setting], seeds or {}) for setting, names in settings.items()
        },
        "versus_baseline": versus_baseline,
    }
    write_reports(summary, results, data, evaluation, output_dir, training_logs or {}, args)
    return summary


def compare_with_teacher(result: ModelResult, teacher: ModelResult, main_metric: str, per_token: bool | None = None) -> dict:
    """Speed-up, compression and quality retained; for lower-is-better metrics retained = teacher / student.

    ``per_token``: whether the speed-up divides the time per generated token (unset: wherever the models generate).
    Models with different tokenizers generate tokens of different sizes, so across them it divides per example.
    """
    cost, teacher_cost = result.cost, teacher.cost
    if per_token is None:
        per_token = "latency_per_token_p50_ms" in cost
    retained = {}
    for metric, value in result.quality.items():
        reference = teacher.quality.get(metric)
        if not isinstance(value, (int, float)) or not isinstance(reference, (int, float)) or metric in ("kl_to_teacher",):
            continue
        if metric in LOWER_IS_BETTER:
            retained[metric] = 100.0 * reference / value if value else float("nan")
        else:
            retained[metric] = 100.0 * value / reference if reference else float("nan")
    note = None if result is teacher else speedup_reliability(cost, teacher_cost, result.name, teacher.name, per_token)
    return {
        # Generation with one tokenizer: the same work is a token, so speed compares the median time per generated
        # token; classification, or tokenizers that differ: the median time per example. Both are the figures
        # speedup_reliability checks.
        "speedup_latency": (
            teacher_cost["latency_per_token_p50_ms"] / cost["latency_per_token_p50_ms"]
            if per_token
            else teacher_cost["latency_p50_ms"] / cost["latency_p50_ms"]
        ),
        "speedup_throughput": cost["examples_per_second"] / teacher_cost["examples_per_second"],
        "compression_ratio": teacher_cost["parameters"] / cost["parameters"],
        "size_fraction": cost["size_on_disk_mb"] / teacher_cost["size_on_disk_mb"],
        "quality_retained": retained.get(main_metric, float("nan")),
        "quality_retained_by_metric": retained,
        "speedup_note": note,  # None: the latency speed-up is a meaningful ratio; else why it is not
        "speedup_latency_reliable": note is None,  # the same, as a column of the CSV table
    }


def speedup_reliability(
    cost: dict, teacher_cost: dict, name: str = "model", teacher_name: str = "teacher", per_token: bool | None = None
) -> str | None:
    """Why the latency speed-up of ``cost`` over ``teacher_cost`` is not a meaningful ratio, or None when it is.

    The rule: each model has at least ``MIN_RELIABLE_TIMINGS`` timings, and the two p50..p95 latency ranges do not
    overlap (the faster model's p95 is below the slower model's p50), on the figure the speed-up divides: per
    generated token for generation with one tokenizer (``per_token``; unset: wherever the models generate), per
    example for classification and across tokenizers. Where they overlap, the difference between the
    models is within the spread of either one's timings and a ratio such as 1.1x or 0.9x says nothing.
    """
    for model_name, figures in ((teacher_name, teacher_cost), (name, cost)):
        if figures["latency_timings"] < MIN_RELIABLE_TIMINGS:
            return (
                f"only {figures['latency_timings']} timings of {model_name}; raise --latency_min_timings to "
                f"{MIN_RELIABLE_TIMINGS} or more"
            )
    if per_token is None:
        per_token = "generated_tokens_per_second" in cost
    prefix, unit = ("latency_per_token", "ms/token") if per_token else ("latency", "ms")
    ranges = {
        model_name: (figures[f"{prefix}_p50_ms"], figures[f"{prefix}_p95_ms"])
        for model_name, figures in ((teacher_name, teacher_cost), (name, cost))
    }
    (fast_p50, fast_p95), (slow_p50, _) = sorted(ranges.values())
    if fast_p95 < slow_p50:
        return None
    shown = ", ".join(f"{model_name} {p50:.2f}-{p95:.2f} {unit}" for model_name, (p50, p95) in ranges.items())
    return f"the p50-p95 latency ranges overlap ({shown}), so the difference is within the timings' spread"


def make_verdict(
    results: dict[str, ModelResult], teacher_name: str, main_metric: str, versus_baseline: dict[str, dict] | None = None
) -> str:
    """One line: what each student (or setting of seed runs) keeps of the teacher, at what speed and size; where
    ``versus_baseline`` holds a setting's :func:`seed_comparison`, that setting comes first with it."""
    label = METRIC_LABELS.get(main_metric, main_metric)
    versus_baseline = versus_baseline or {}
    parts = []
    for name in sorted(results, key=lambda name: name not in versus_baseline):  # the A/B first, then model order
        if name == teacher_name:
            continue
        keeps = _keeps(results[name].versus_teacher, label, results[name].quality.get(main_metric))
        comparison = versus_baseline.get(name)
        if comparison is None:
            parts.append(f"{name} {keeps}")
        elif comparison["beats"]:
            parts.append(f"{seed_comparison_phrase(name, comparison, label)} and {keeps}")
        else:
            parts.append(f"{seed_comparison_phrase(name, comparison, label)}; {name} {keeps}")
    return "; ".join(parts) if parts else f"{teacher_name}: {label} {results[teacher_name].quality[main_metric]:.2f}"


def _keeps(versus: dict, label: str, figure=None) -> str:
    """``figure``: the model's own main metric; not finite, it is what leaves the retained share undefined (e.g. a
    perplexity per token of another tokenizer's vocabulary), else the teacher's score of 0 is."""
    retained = versus["quality_retained"]
    undefined = "n/a (the teacher scores 0)"
    if isinstance(figure, float) and not math.isfinite(figure):
        undefined = f"n/a (its {label} is not defined)"
    kept = f"{retained:.1f}%" if retained == retained else undefined
    size = f"{100 * versus['size_fraction']:.0f}% of the size"
    if versus.get("speedup_note"):  # no ratio where the timings cannot support one
        return f"keeps {kept} of the teacher's {label} at {size} (speed-up not measured reliably: {versus['speedup_note']})"
    return f"keeps {kept} of the teacher's {label} at {versus['speedup_latency']:.1f}x the speed and {size}"


# ---- seed runs: one setting trained several times, and the A/B verdict ---------------------------------------


def seed_comparison(baseline: Sequence[float], candidate: Sequence[float], lower_is_better: bool = False) -> dict:
    """The A/B rule over seeds: does ``candidate`` beat ``baseline`` by more than the spread of either?

    ``difference = mean(candidate) - mean(baseline)`` in the metric's units; ``spread`` = the larger of the two
    settings' sample standard deviations over their seed runs (``statistics.stdev``, n - 1); ``beats`` is
    ``difference > spread``, or ``-difference > spread`` where lower is better (perplexity). With fewer than 2 runs
    in either setting the spread is unknown and ``beats`` is None: one seed cannot show a win (nor a loss). A figure
    that is not finite makes ``beats`` None as well.
    """
    if not baseline or not candidate:
        raise ValueError("seed_comparison needs at least one run of each setting")
    difference = statistics.fmean(candidate) - statistics.fmean(baseline)
    spread = None
    if len(baseline) >= 2 and len(candidate) >= 2:
        spreads = (_stdev(baseline), _stdev(candidate))
        spread = float("nan") if any(math.isnan(value) for value in spreads) else max(spreads)
    gain = -difference if lower_is_better else difference
    beats = None if spread is None or not (math.isfinite(gain) and math.isfinite(spread)) else gain > spread
    return {
        "runs": len(candidate),
        "baseline_runs": len(baseline),
        "mean": statistics.fmean(candidate),
        "baseline_mean": statistics.fmean(baseline),
        "difference": difference,
        "spread": spread,
        "lower_is_better": lower_is_better,
        "beats": beats,
    }


def seed_comparison_phrase(name: str, comparison: dict, label: str) -> str:
    """The verdict's words for a :func:`seed_comparison`, e.g. "distilled beats the CE-only student by +2.30
    accuracy (3 seeds, spread 0.40)" or "distilled does not beat the CE-only student: +0.10 accuracy (...)"."""
    runs, baseline_runs = comparison["runs"], comparison["baseline_runs"]
    seeds = f"{runs} seed{'s' if runs > 1 else ''}" if runs == baseline_runs else f"{runs} vs {baseline_runs} seeds"
    direction = "lower is better; " if comparison["lower_is_better"] else ""
    difference = comparison["difference"]
    shown = f"{difference:+.2f} {label}" if math.isfinite(difference) else f"n/a {label}"
    if comparison["spread"] is None:
        return f"{name} vs the CE-only student: {shown} ({direction}{seeds}: no spread, rerun with --seeds 3)"
    detail = f"({direction}{seeds}, spread {_figure(comparison['spread'])})"
    if comparison["beats"] is None:  # a figure that is not finite: nothing to claim either way
        return f"{name} vs the CE-only student: {shown} {detail}"
    if comparison["beats"]:
        return f"{name} beats the CE-only student by {shown} {detail}"
    return f"{name} does not beat the CE-only student: {shown} {detail}"


def _figure(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"


def _stdev(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1), NaN when a value is not finite (an overflowed perplexity)."""
    return statistics.stdev(values) if all(math.isfinite(value) for value in values) else float("nan")


def check_settings(settings: dict[str, list[str]] | None, names: list[str], teacher_name: str) -> dict[str, list[str]]:
    """{setting: its models}, every model in exactly one setting and the teacher in one of its own (unset: a
    setting per model)."""
    if settings is None:
        return {name: [name] for name in names}
    placed = [name for members in settings.values() for name in members]
    unknown = sorted(set(placed) - set(names))
    if unknown:
        raise InputError(f"settings name models that are not benchmarked: {', '.join(unknown)}")
    missing = [name for name in names if name not in placed]
    twice = sorted({name for name in placed if placed.count(name) > 1})
    if missing or twice:
        raise InputError(
            f"every model needs exactly one setting; without one: {', '.join(missing) or 'none'}; in several: "
            f"{', '.join(twice) or 'none'}"
        )
    for setting, members in settings.items():
        others = [name for name in members if name != teacher_name]
        if teacher_name in members and others:
            raise InputError(
                f"the teacher {teacher_name!r} shares the setting {setting!r} with {', '.join(others)}; give the teacher "
                "a --model_groups name of its own"
            )
    return settings


def setting_result(
    name: str, runs: list[ModelResult], teacher: ModelResult, main_metric: str, per_token: bool | None = None
) -> ModelResult:
    """One setting's figures from its seed runs: the mean of every quality metric, the median of every cost figure
    (the runs share an architecture: their speed differs by timing noise only), the fewest timings of any run (for
    the speed-up reliability rule), and its comparison with the teacher. One run: that run's own figures."""
    if len(runs) == 1:
        result = runs[0]
        return ModelResult(name, result.path, dict(result.quality), dict(result.cost), dict(result.versus_teacher))
    quality = {
        metric: statistics.fmean(run.quality[metric] for run in runs)
        for metric in runs[0].quality
        if all(_is_number(run.quality.get(metric)) for run in runs)
    }
    cost = {}
    for key in runs[0].cost:
        values = [run.cost.get(key) for run in runs]
        if not all(_is_number(value) for value in values):
            continue
        finite = [value for value in values if math.isfinite(value)]
        cost[key] = min(values) if key == "latency_timings" else statistics.median(finite) if finite else float("nan")
    result = ModelResult(name, runs[0].path, quality, cost)
    result.versus_teacher = compare_with_teacher(result, teacher, main_metric, per_token=per_token)
    return result


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seed_statistics(values: dict[str, float]) -> dict:
    """Mean, spread (sample standard deviation; None for one run), min and max of one figure over seed runs."""
    figures = list(values.values())
    return {
        "mean": statistics.fmean(figures),
        "spread": _stdev(figures) if len(figures) >= 2 else None,
        "min": min(figures),
        "max": max(figures),
        "by_model": dict(values),
    }


def setting_summary(names: list[str], results: dict[str, ModelResult], setting: ModelResult, seeds: dict[str, int]) -> dict:
    """A setting in ``benchmark_results.json``: its models (and seeds), the statistics of each quality metric over
    them, and its median cost and comparison with the teacher."""
    metrics = [m for m in results[names[0]].quality if all(_is_number(results[n].quality.get(m)) for n in names)]
    summary = {
        "models": list(names),
        "runs": len(names),
        "quality": {metric: seed_statistics({n: results[n].quality[metric] for n in names}) for metric in metrics},
        "cost": setting.cost,
        "versus_teacher": setting.versus_teacher,
    }
    if all(name in seeds for name in names):
        summary["seeds"] = [seeds[name] for name in names]
    return summary


def compare_settings(
    settings: dict[str, list[str]], results: dict[str, ModelResult], teacher_setting: str, main_metric: str
) -> dict[str, dict]:
    """{setting: :func:`seed_comparison` with the baseline on the main metric} for every student setting, when a
    setting named ``baseline`` is benchmarked (else empty)."""
    baseline = settings.get(BASELINE_SETTING)
    if baseline is None:
        return {}
    comparisons = {}
    for setting, names in settings.items():
        if setting in (BASELINE_SETTING, teacher_setting):
            continue
        values = [results[name].quality.get(main_metric) for name in names]
        reference = [results[name].quality.get(main_metric) for name in baseline]
        if not all(_is_number(value) for value in values + reference):
            continue
        comparison = seed_comparison(reference, values, lower_is_better=main_metric in LOWER_IS_BETTER)
        label = METRIC_LABELS.get(main_metric, main_metric)
        comparisons[setting] = {"metric": main_metric, **comparison, "says": seed_comparison_phrase(setting, comparison, label)}
    return comparisons


def environment(device: torch.device) -> dict:
    import datasets
    import transformers

    info = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
