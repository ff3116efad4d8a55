"""The benchmark's files: results JSON, comparison CSV, Markdown report with the verdict first, samples and plots.

Everything is written to a staging folder inside the output folder and moved in at the end, so an interrupted
benchmark never leaves a report that looks finished.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import tempfile
import uuid

logger = logging.getLogger(__name__)

METRIC_LABELS = {"rougeL": "ROUGE-L", "rouge2": "ROUGE-2", "accuracy": "accuracy", "perplexity": "perplexity"}
UNDEFINED = "n/a"  # how the CSV and Markdown show a figure that is not defined (JSON: null)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# ---- strict JSON -----------------------------------------------------------------------------------------------


def _strict(value):
    """``value`` with every NaN / infinity replaced by None (JSON null), tuples as lists, numpy scalars as Python."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _number(value):
    """Anything else that is a single number (a 0-d tensor or array) as a float, or null when not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{type(value).__name__} is not JSON serializable") from None
    return number if math.isfinite(number) else None


def write_json(path: str, obj) -> None:
    """Write ``obj`` as strict JSON (no bare NaN / Infinity: undefined figures become null) that appears at once."""
    write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False, default=_number) + "\n")


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` at once: it goes to a temporary file beside ``path`` that replaces it only when
    complete, so a reader never takes a half-written file for a finished one."""
    temporary = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ---- reports ---------------------------------------------------------------------------------------------------


def _flat_row(name: str, result: dict) -> dict:
    row = {"model": name}
    for section in ("quality", "cost", "versus_teacher"):
        for key, value in result[section].items():
            if isinstance(value, (int, float)):
                row[f"{key}"] = value if math.isfinite(value) else UNDEFINED
    return row


def write_reports(summary, results, data, evaluation, output_dir, training_logs, args) -> None:
    """All files are written to a temporary folder first and moved in at the end: no half-written report."""
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=output_dir)
    write_json(os.path.join(staging, "benchmark_results.json"), summary)
    rows = [_flat_row(name, model) for name, model in summary["models"].items()]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(staging, "comparison_table.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    samples = _sample_predictions(results, data, evaluation, args.num_sample_predictions)
    with open(os.path.join(staging, "sample_predictions.md"), "w") as handle:
        handle.write(samples)
    plots = [_plot_quality_vs_latency(summary, staging)]
    curves = _plot_training_curves(training_logs, staging)
    if curves:
        plots.append(curves)
    with open(os.path.join(staging, "benchmark_report.md"), "w") as handle:
        handle.write(_markdown_report(summary, plots))
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    os.rmdir(staging)
    logger.info("benchmark report written to %s", os.path.join(output_dir, "benchmark_report.md"))


def _markdown_report(summary: dict, plots: list[str]) -> str:
    main = summary["main_metric"]
    per_token = any("latency_per_token_ms" in model["cost"] for model in summary["models"].values())
    speedup_per_token = summary.get("speedup_per_token", per_token)
    own = [name for name, shared in (summary.get("teacher_tokenizer") or {}).items() if not shared]
    lines = [
        summary["verdict"],
        "",
        f"# Benchmark: {summary['task']}, {summary['examples']} {summary['split']} examples "
        f"on {summary['environment']['device']}",
        "",
        f"Teacher: **{summary['teacher']}**. Main metric: {METRIC_LABELS.get(main, main)}. Latency at batch size 1 "
        f"(p50 / p95 per example{', and mean per generated token' if per_token else ''}), throughput at batch size "
        f"{summary['settings']['benchmark']['benchmark_batch_size']}, warm-up excluded. Speed-up: the teacher's latency "
        f"over the model's, {'per generated token' if speedup_per_token else 'p50 per example'}.",
        "",
    ]
    # Each decodes with its own tokenizer: the texts compare, figures per token of another vocabulary do not.
    if own and summary["task"] != "classification":
        lines += [
            f"Tokenizers other than the teacher's: {', '.join(own)}. Each model reads and decodes with its own; ROUGE and "
            f"BLEU compare the texts, and the token-level figures of these models (perplexity, KL and top-1 agreement "
            f"per token) are {UNDEFINED}.",
            "",
        ]
    quality_keys = [key for key in _quality_columns(summary) if key != main]
    # (header, cost key, format): per-token latency only where tokens are generated (not for classification)
    cost_columns = [
        ("params (M)", "parameters", lambda value: f"{value / 1e6:.2f}"),
        ("params w/o emb. (M)", "parameters_without_embeddings", lambda value: f"{value / 1e6:.2f}"),
        ("size (MB)", "size_on_disk_mb", lambda value: f"{value:.1f}"),
        ("peak mem (MB)", "peak_memory_mb", _format),
        ("p50 (ms)", "latency_p50_ms", lambda value: f"{value:.1f}"),
        ("p95 (ms)", "latency_p95_ms", lambda value: f"{value:.1f}"),
        *([("ms / token", "latency_per_token_ms", lambda value: f"{value:.2f}")] if per_token else []),
        ("examples/s", "examples_per_second", lambda value: f"{value:.1f}"),
    ]
    header = ["model", main, *quality_keys, *[title for title, _, _ in cost_columns], "speed-up", "size %", "retained %"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    notes = []
    for name, model in summary["models"].items():
        quality, cost, versus = model["quality"], model["cost"], model["versus_teacher"]
        speedup = f"{versus['speedup_latency']:.2f}x" if _defined(versus["speedup_latency"]) else UNDEFINED
        if versus.get("speedup_note"):  # shown, but marked: the verdict states no ratio for this model
            speedup = f"({speedup})*"
            notes.append(f"\\* {name}: speed-up not measured reliably: {versus['speedup_note']}")
        cells = [
            name,
            _format(quality.get(main)),
            *[_format(quality.get(key)) for key in quality_keys],
            *[fmt(cost[key]) if _defined(cost.get(key)) else UNDEFINED for _, key, fmt in cost_columns],
            speedup,
            f"{100 * versus['size_fraction']:.0f}" if _defined(versus["size_fraction"]) else UNDEFINED,
            _format(versus["quality_retained"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *notes] if notes else []
    lines += _seed_settings_section(summary)
    if summary["settings"]["generation"]:
        lines += ["", "Generation settings (the same for every model): " + json.dumps(summary["settings"]["generation"])]
    lines += [""]
    lines += ["Sample predictions side by side: [sample_predictions.md](sample_predictions.md)", ""]
    lines += [f"![{os.path.splitext(plot)[0]}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def _seed_settings_section(summary: dict) -> list[str]:
    """Settings trained over several seeds (``pipeline --seeds``, ``benchmark --model_groups``): each quality metric
    as mean ± spread over the runs, the runs' median speed-up and size, and the comparison with the baseline. Nothing
    when every setting is one run (the table above is then the whole story)."""
    groups = summary.get("groups") or {}
    if not any(group["runs"] > 1 for group in groups.values()):
        return []
    main = summary["main_metric"]
    metrics = list(dict.fromkeys([main, *(metric for group in groups.values() for metric in group["quality"])]))
    header = ["setting", "runs", *metrics, "speed-up", "size %", "retained %"]
    lines = [
        "",
        "## Over seeds: mean ± spread",
        "",
        "Each setting's runs (the same student trained with other seeds): spread is the sample standard deviation over "
        "them; speed-up and size come from their median figures. A setting beats the CE-only baseline when its mean "
        f"{METRIC_LABELS.get(main, main)} differs from the baseline's by more than the larger of the two spreads, in the "
        "metric's better direction.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setting, group in groups.items():
        versus = group["versus_teacher"]
        speedup = f"{versus['speedup_latency']:.2f}x" if _defined(versus.get("speedup_latency")) else UNDEFINED
        cells = [
            setting,
            str(group["runs"]),
            *[_mean_and_spread(group["quality"].get(metric)) for metric in metrics],
            f"({speedup})*" if versus.get("speedup_note") else speedup,
            f"{100 * versus['size_fraction']:.0f}" if _defined(versus.get("size_fraction")) else UNDEFINED,
            _format(versus.get("quality_retained")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    comparisons = summary.get("versus_baseline") or {}
    if comparisons:
        lines += ["", *[f"- {comparison['says']}" for comparison in comparisons.values()]]
    return lines


def _mean_and_spread(statistics: dict | None) -> str:
    if statistics is None:
        return "-"
    if statistics["spread"] is None:
        return _format(statistics["mean"])
    return f"{_format(statistics['mean'])} ± {_format(statistics['spread'])}"


def _quality_columns(summary: dict) -> list[str]:
    keys = []
    for model in summary["models"].values():
        for key, value in model["quality"].items():
            if isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return keys


def _defined(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _format(value) -> str:
    """A figure with two decimals; "-" where the model has none (the teacher's agreement with itself), "n/a" where
    it is not defined (NaN, e.g. quality retained when the teacher scores 0)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else UNDEFINED
    return str(value)


def _sample_predictions(results, data, evaluation, count: int) -> str:
    lines = ["# Sample predictions", ""]
    for index in range(min(count, len(evaluation.features))):
        source = " ".join(str(evaluation.sources[index]).split())
        lines.append(f"## Example {index + 1}")
        lines.append(f"**Input:** {source[:600]}{'...' if len(source) > 600 else ''}")
        reference = evaluation.references[index]
        if data.task == "classification":
            reference = data.label_names[reference]
        lines.append(f"**Reference:** {reference}")
        for name, result in results.items():
            prediction = result.predictions[index]
            if data.task == "classification":
                prediction = data.label_names[prediction]
            lines.append(f"- **{name}:** {prediction}")
        lines.append("")
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, folder: str, name: str, dpi: int) -> str:
    figure.tight_layout()
    figure.savefig(os.path.join(folder, name), dpi=dpi)
    _pyplot().close(figure)
    return name


def _plot_quality_vs_latency(summary: dict, folder: str) -> str:
    return _save(_quality_vs_latency_figure(summary), folder, "quality_vs_latency.png", dpi=120)


def _quality_vs_latency_figure(summary: dict):
    """One point per model, told apart by marker and colour and named in a legend beside the axes: names never sit
    on the points or on each other, however close the models are (in a dry run they all but coincide)."""
    plt = _pyplot()
    main = summary["main_metric"]
    figure, axes = plt.subplots(figsize=(7.5, 4))
    colours = plt.get_cmap("tab10").colors
    handles, names = [], []
    for index, (name, model) in enumerate(summary["models"].items()):
        x, y = model["cost"]["latency_p50_ms"], model["quality"].get(main)
        y = y if _defined(y) else float("nan")
        handle = axes.scatter(
            [x], [y], s=60, marker=MARKERS[index % len(MARKERS)], color=colours[index % len(colours)], alpha=0.8, zorder=3
        )
        handles.append(handle)
        names.append(str(name))
    # Explicit handles and labels: matplotlib would drop a label that starts with "_" from an automatic legend.
    axes.legend(handles, names, title="model", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    axes.set_xlabel("latency per example, p50 (ms, batch size 1)")
    axes.set_ylabel(METRIC_LABELS.get(main, main))
    axes.set_title("quality vs. latency")
    axes.grid(alpha=0.3)
    return figure


def _plot_training_curves(training_logs: dict[str, str], folder: str) -> str | None:
    """One panel per loss term (loss, ce_loss, kd_loss, ...), one line per trained model."""
    histories = {}
    for name, path in training_logs.items():
        if path and os.path.isfile(path):
            with open(path) as handle:
                histories[name] = [entry for entry in json.load(handle).get("log_history", []) if "loss" in entry]
    terms = sorted({key for entries in histories.values() for entry in entries for key in entry if key.endswith("loss")})
    if not terms:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    for axis, term in zip(axes[0], terms, strict=True):
        for name, entries in histories.items():
            points = [(entry["step"], entry[term]) for entry in entries if entry.get(term) is not None]  # null: NaN
            if points:
                axis.plot(*zip(*points, strict=True), label=name)
        axis.set_title(term)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, folder, "training_curves.png", dpi=110)
