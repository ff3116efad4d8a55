"""The benchmark's files: results JSON, comparison CSV, Markdown report with the verdict first, samples and plots.

Everything is written to a staging folder inside the output folder and moved in at the end, so an interrupted
benchmark never leaves a report that looks finished.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

METRIC_LABELS = {"rougeL": "ROUGE-L", "rouge2": "ROUGE-2", "accuracy": "accuracy", "perplexity": "perplexity"}


# ---- reports ---------------------------------------------------------------------------------------------------


def _flat_row(name: str, result: dict) -> dict:
    row = {"model": name}
    for section in ("quality", "cost", "versus_teacher"):
        for key, value in result[section].items():
            if isinstance(value, (int, float)):
                row[f"{key}"] = value
    return row


def write_reports(summary, results, data, evaluation, output_dir, training_logs, args) -> None:
    """All files are written to a temporary folder first and moved in at the end: no half-written report."""
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=output_dir)
    with open(os.path.join(staging, "benchmark_results.json"), "w") as handle:
        json.dump(summary, handle, indent=2, default=float)
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
    lines = [
        summary["verdict"],
        "",
        f"# Benchmark: {summary['task']}, {summary['examples']} {summary['split']} examples "
        f"on {summary['environment']['device']}",
        "",
        f"Teacher: **{summary['teacher']}**. Main metric: {METRIC_LABELS.get(main, main)}. Latency at batch size 1 "
        f"(p50 / p95 per example, and per generated token), throughput at batch size "
        f"{summary['settings']['benchmark']['benchmark_batch_size']}, warm-up excluded. Speed-up: the teacher's latency "
        "over the model's, per generated token for generation, per example for classification.",
        "",
    ]
    quality_keys = [key for key in _quality_columns(summary) if key != main]
    header = [
        "model",
        main,
        *quality_keys,
        "params (M)",
        "params w/o emb. (M)",
        "size (MB)",
        "peak mem (MB)",
        "p50 (ms)",
        "p95 (ms)",
        "ms / token",
        "examples/s",
        "speed-up",
        "size %",
        "retained %",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, model in summary["models"].items():
        quality, cost, versus = model["quality"], model["cost"], model["versus_teacher"]
        cells = [
            name,
            _format(quality.get(main)),
            *[_format(quality.get(key)) for key in quality_keys],
            f"{cost['parameters'] / 1e6:.2f}",
            f"{cost['parameters_without_embeddings'] / 1e6:.2f}",
            f"{cost['size_on_disk_mb']:.1f}",
            _format(cost["peak_memory_mb"]),
            f"{cost['latency_p50_ms']:.1f}",
            f"{cost['latency_p95_ms']:.1f}",
            f"{cost['latency_per_token_ms']:.2f}",
            f"{cost['examples_per_second']:.1f}",
            f"{versus['speedup_latency']:.2f}x",
            f"{100 * versus['size_fraction']:.0f}",
            _format(versus["quality_retained"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Generation settings (the same for every model): " + json.dumps(summary["settings"]["generation"]), ""]
    lines += ["Sample predictions side by side: [sample_predictions.md](sample_predictions.md)", ""]
    lines += [f"![{os.path.splitext(plot)[0]}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def _quality_columns(summary: dict) -> list[str]:
    keys = []
    for model in summary["models"].values():
        for key, value in model["quality"].items():
            if isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return keys


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.2f}"
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
    plt = _pyplot()
    main = summary["main_metric"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, model in summary["models"].items():
        x, y = model["cost"]["latency_p50_ms"], model["quality"].get(main, float("nan"))
        axes.scatter([x], [y], s=40)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("latency per example, p50 (ms, batch size 1)")
    axes.set_ylabel(METRIC_LABELS.get(main, main))
    axes.set_title("quality vs. latency")
    axes.grid(alpha=0.3)
    return _save(figure, folder, "quality_vs_latency.png", dpi=120)


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
            points = [(entry["step"], entry[term]) for entry in entries if term in entry]
            if points:
                axis.plot(*zip(*points, strict=True), label=name)
        axis.set_title(term)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, folder, "training_curves.png", dpi=110)
