"""The benchmark's files: strict JSON (null, never a bare NaN), "n/a" in the tables, and a readable plot."""

import csv
import dataclasses
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from seq2seq_distill import reports
from seq2seq_distill.benchmark import ModelResult, compare_with_teacher, make_verdict


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity, as strict parsers (JavaScript, jq, most other languages) do."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_strict_loads_refuses_what_python_json_writes_by_default():
    with pytest.raises(ValueError, match="not strict JSON: NaN"):
        strict_loads(json.dumps({"a": float("nan")}))


def test_write_json_writes_null_for_nan_and_infinity_at_any_depth(tmp_path):
    nan, inf = float("nan"), float("inf")
    value = {
        "a": nan,
        "b": [1.5, inf, {"c": -inf, "d": (nan, 2)}],
        "e": {"f": {"g": [[nan]]}},
        "numpy": [np.float32("nan"), np.float64(0.25), np.int64(3), np.float64("-inf")],
        "kept": ["text", None, True, False, 0, -1.0],
    }
    path = tmp_path / "out.json"
    path.write_text("an older file")
    reports.write_json(str(path), value)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert strict_loads(text) == {
        "a": None,
        "b": [1.5, None, {"c": None, "d": [None, 2]}],
        "e": {"f": {"g": [[None]]}},
        "numpy": [None, 0.25, 3, None],
        "kept": ["text", None, True, False, 0, -1.0],
    }
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left beside it


def test_write_json_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    reports.write_json(str(path), {"finished": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        reports.write_json(str(path), {"finished": 2, "broken": [object()]})  # fails halfway through the text
    assert strict_loads(path.read_text()) == {"finished": 1}
    assert os.listdir(tmp_path) == ["out.json"]


# ---- a report from synthetic figures ---------------------------------------------------------------------------


def cost(p50: float, p95: float, timings: int = 40, per_token: bool = True, parameters: int = 1_000_000) -> dict:
    figures = {
        "parameters": parameters,
        "parameters_without_embeddings": parameters // 2,
        "size_on_disk_mb": parameters * 4 / 2**20,
        "peak_memory_mb": float("nan"),  # not measurable on this machine: undefined, not zero
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_timings": timings,
        "examples_per_second": 1000 / p50,
        "batch_size": 8,
    }
    if per_token:
        figures.update(
            latency_per_token_ms=p50 / 10,
            latency_per_token_p50_ms=p50 / 10,
            latency_per_token_p95_ms=p95 / 10,
            generated_tokens_per_second=10_000 / p50,
        )
    return figures


def synthetic_summary(results: dict, main_metric: str, task: str = "seq2seq") -> dict:
    teacher = next(iter(results))
    for result in results.values():
        result.versus_teacher = compare_with_teacher(result, results[teacher], main_metric)
    return {
        "verdict": make_verdict(results, teacher, main_metric),
        "teacher": teacher,
        "main_metric": main_metric,
        "task": task,
        "split": "test",
        "examples": 1,
        "settings": {
            "benchmark": {"benchmark_batch_size": 8},
            "generation": {"num_beams": 1} if task != "classification" else {},
        },
        "environment": {"device": "cpu"},
        "models": {
            name: {key: value for key, value in dataclasses.asdict(result).items() if key != "predictions"}
            for name, result in results.items()
        },
    }


def write_synthetic_reports(summary: dict, results: dict, folder) -> None:
    data = SimpleNamespace(task=summary["task"], label_names=None)
    evaluation = SimpleNamespace(features=[{}], sources=["a source text"], references=["a reference"])
    reports.write_reports(summary, results, data, evaluation, str(folder), {}, SimpleNamespace(num_sample_predictions=1))


def test_a_teacher_that_scores_zero_gives_strict_json_with_null_and_n_a_in_the_tables(tmp_path):
    """The dry run's case: the teacher's ROUGE-2 (here also its ROUGE-L, the main metric) is 0, so quality retained
    is undefined. It was written as a bare NaN, which strict parsers reject."""
    results = {
        "teacher": ModelResult("teacher", "t", quality={"rougeL": 0.0, "rouge2": 0.0, "rouge1": 20.0}, cost=cost(30, 33)),
        "student": ModelResult("student", "s", quality={"rougeL": 5.0, "rouge2": 0.0, "rouge1": 10.0}, cost=cost(10, 11)),
    }
    for result in results.values():
        result.predictions = ["a prediction"]
    summary = synthetic_summary(results, "rougeL")
    write_synthetic_reports(summary, results, tmp_path)

    text = (tmp_path / "benchmark_results.json").read_text()
    assert "NaN" not in text
    saved = strict_loads(text)
    versus = saved["models"]["student"]["versus_teacher"]
    assert versus["quality_retained"] is None
    assert versus["quality_retained_by_metric"]["rouge2"] is None
    assert versus["quality_retained_by_metric"]["rouge1"] == pytest.approx(100 * 10.0 / 20.0)
    assert saved["models"]["student"]["cost"]["peak_memory_mb"] is None
    assert versus["speedup_latency"] == pytest.approx((30 / 10) / (10 / 10))

    with open(tmp_path / "comparison_table.csv") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert rows["student"]["quality_retained"] == "n/a" and rows["student"]["peak_memory_mb"] == "n/a"
    assert float(rows["student"]["rouge1"]) == 10.0
    assert "nan" not in (tmp_path / "comparison_table.csv").read_text().lower()

    report = (tmp_path / "benchmark_report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| model"))
    student_row = next(line for line in report.splitlines() if line.startswith("| student"))
    cells = dict(zip([cell.strip() for cell in header.split("|")], [cell.strip() for cell in student_row.split("|")]))
    assert cells["retained %"] == "n/a" and cells["peak mem (MB)"] == "n/a" and cells["rouge1"] == "10.00"
    assert "nan" not in report.lower()
    assert report.splitlines()[0] == summary["verdict"] and "n/a (the teacher scores 0)" in summary["verdict"]


# ---- the quality-vs-latency plot -------------------------------------------------------------------------------


def crowded_summary(count: int) -> dict:
    """As in a dry run: a slow teacher, and students within a hair of each other (about the same latency, all
    scoring about 0), with names of different lengths."""
    names = ["teacher-t5-6-layers", "_private", "baseline", "distilled", "distilled-3-layers-long-name", "s", "student six"]
    models = {names[0]: {"quality": {"rougeL": 3.1}, "cost": {"latency_p50_ms": 339.0}}}
    for index, name in enumerate(names[1:count], start=1):
        models[name] = {"quality": {"rougeL": 0.001 * index}, "cost": {"latency_p50_ms": 12.0 + 0.01 * index}}
    if count == 2:  # two models only spread over the whole axes, unless they coincide: a teacher and its copy
        models["_private"] = dict(models[names[0]])
    if count == 8:
        models["x7"] = {"quality": {"rougeL": 0.0}, "cost": {"latency_p50_ms": 12.0}}
    assert len(models) == count
    return {"main_metric": "rougeL", "models": models}


@pytest.mark.parametrize("count", range(2, 9))
def test_plot_names_never_overlap_each_other_or_a_point(count, tmp_path, monkeypatch):
    """Whatever holds the names (annotations on the axes, a legend), every model is named exactly once, no two
    names overlap, no name or legend box covers a point, and all of it lies inside the saved figure."""
    import matplotlib
    from matplotlib.text import Annotation

    figures = []

    def keep(figure, folder, name, dpi):  # what _save does, without closing the figure
        figure.tight_layout()
        figure.canvas.draw()
        figures.append(figure)
        return name

    monkeypatch.setattr(reports, "_save", keep)
    summary = crowded_summary(count)
    reports._plot_quality_vs_latency(summary, str(tmp_path))
    assert matplotlib.get_backend().lower() == "agg"
    (figure,) = figures
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend()
    labels = [text for text in axes.texts if isinstance(text, Annotation) or text.get_text() in summary["models"]]
    labels += list(legend.get_texts()) if legend is not None else []
    assert sorted(text.get_text() for text in labels) == sorted(summary["models"])  # each model named exactly once

    boxes = [text.get_window_extent(renderer) for text in labels]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), f"{labels[i].get_text()!r} overlaps {labels[j].get_text()!r}"
    points = np.concatenate([collection.get_offsets() for collection in axes.collections])
    assert len(points) == count
    pixels = axes.transData.transform(points)
    marker_radius = 6  # pixels: half a marker of s=60 at 100 dpi, rounded up
    covers = [box.padded(marker_radius) for box in boxes]
    if legend is not None:
        covers.append(legend.get_window_extent(renderer))
    for box in covers:
        for x, y in pixels:
            assert not box.contains(x, y), "a name or the legend sits on a point"
    whole = figure.bbox
    for box in covers:
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1, "cut off"
    if legend is not None:  # the points themselves are told apart by marker and colour, not only by position
        styles = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes()) for c in axes.collections}
        assert len(styles) == count
    matplotlib.pyplot.close(figure)


def test_plot_is_written_with_eight_models(tmp_path):
    name = reports._plot_quality_vs_latency(crowded_summary(8), str(tmp_path))
    assert (tmp_path / name).stat().st_size > 1000


def test_plot_with_an_undefined_quality_still_names_the_model(tmp_path, monkeypatch):
    summary = crowded_summary(3)
    summary["models"]["baseline"]["quality"]["rougeL"] = math.nan
    figures = []
    monkeypatch.setattr(reports, "_save", lambda figure, folder, name, dpi: figures.append(figure) or name)
    reports._plot_quality_vs_latency(summary, str(tmp_path))
    legend = figures[0].axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == list(summary["models"])
    import matplotlib.pyplot

    matplotlib.pyplot.close(figures[0])
