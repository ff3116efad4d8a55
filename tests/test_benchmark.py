"""The benchmark: every promised file, numbers in range, ratios consistent with the raw figures, clear bad input."""

import csv
import json
import time
from types import SimpleNamespace

import pytest
import torch

from seq2seq_distill.arguments import BenchmarkArguments, DataArguments
from seq2seq_distill.benchmark import (
    MIN_RELIABLE_TIMINGS,
    ModelResult,
    _latencies,
    compare_with_teacher,
    make_verdict,
    peak_memory,
    run_benchmark,
    speedup_reliability,
)
from seq2seq_distill.cli import main
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError

FILES = (
    "benchmark_results.json",
    "comparison_table.csv",
    "benchmark_report.md",
    "sample_predictions.md",
    "quality_vs_latency.png",
    "training_curves.png",
)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One command, a teacher and two students on the embedded default (the dry run: seconds, not minutes)."""
    root = tmp_path_factory.mktemp("pipeline")
    assert main(["pipeline", "--dry-run", "--output_dir", str(root / "run"), "--latency_examples", "4"]) == 0
    return root / "run-dry-run"


def test_one_command_writes_every_file(pipeline_run):
    folder = pipeline_run / "benchmark"
    for name in FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    assert not any(path.name.startswith(".staging") for path in folder.iterdir())
    results = json.loads((folder / "benchmark_results.json").read_text())
    assert set(results["models"]) == {"teacher", "baseline", "distilled"}
    report = (folder / "benchmark_report.md").read_text().splitlines()
    assert report[0] == results["verdict"] and "baseline keeps" in report[0] and "distilled keeps" in report[0]
    # One seed: the difference is shown, but no win is claimed from it.
    assert report[0].startswith("distilled vs the CE-only student: ") and "(1 seed: no spread, rerun with --seeds 3)" in report[0]
    assert results["versus_baseline"]["distilled"]["beats"] is None
    assert {name: group["models"] for name, group in results["groups"].items()} == {
        "teacher": ["teacher"],
        "baseline": ["baseline"],
        "distilled": ["distilled"],
    }
    with open(folder / "comparison_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == ["teacher", "baseline", "distilled"]
    assert float(rows[1]["parameters"]) == results["models"]["baseline"]["cost"]["parameters"]
    for key in ("torch", "transformers", "device", "python"):
        assert results["environment"][key]
    assert results["settings"]["generation"]["max_new_tokens"] >= 1
    samples = (folder / "sample_predictions.md").read_text()
    assert samples.count("**teacher:**") == results["settings"]["benchmark"]["num_sample_predictions"]


def test_numbers_are_in_range_and_ratios_match_the_raw_figures(pipeline_run):
    results = json.loads((pipeline_run / "benchmark" / "benchmark_results.json").read_text())
    teacher = results["models"]["teacher"]
    main_metric = results["main_metric"]
    for name, model in results["models"].items():
        quality, cost, versus = model["quality"], model["cost"], model["versus_teacher"]
        for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4"):
            assert 0.0 <= quality[metric] <= 100.0, (name, metric)
        assert quality["generated_length"] >= 0
        assert 0 < cost["parameters_without_embeddings"] < cost["parameters"]
        assert cost["size_on_disk_mb"] > 0 and cost["latency_p50_ms"] > 0
        assert cost["latency_p95_ms"] >= cost["latency_p50_ms"] and cost["examples_per_second"] > 0
        assert cost["generated_tokens_per_second"] >= 0
        per_token = teacher["cost"]["latency_per_token_p50_ms"] / cost["latency_per_token_p50_ms"]  # generation: median per token
        assert versus["speedup_latency"] == pytest.approx(per_token)
        assert cost["latency_per_token_ms"] <= cost["latency_p95_ms"]
        assert versus["compression_ratio"] == pytest.approx(teacher["cost"]["parameters"] / cost["parameters"])
        assert versus["size_fraction"] == pytest.approx(cost["size_on_disk_mb"] / teacher["cost"]["size_on_disk_mb"])
        if teacher["quality"][main_metric]:
            assert versus["quality_retained"] == pytest.approx(100 * quality[main_metric] / teacher["quality"][main_metric])
        else:  # undefined: null in the JSON
            assert versus["quality_retained"] is None
        if name != "teacher":
            assert quality["kl_to_teacher"] >= 0 and 0 <= quality["top1_agreement"] <= 100
            assert cost["parameters"] < teacher["cost"]["parameters"]


def test_classification_benchmark_and_teacher_agreement(tiny, tokenizer_for, tmp_path):
    """A teacher against itself agrees 100% with KL 0; a different student does not."""
    tokenizer = tokenizer_for("bert")
    teacher, other = tiny("bert", layers=2, seed=0), tiny("bert", layers=1, seed=3)
    other.classifier.weight.data *= 50  # random heads are near-uniform over classes; make this one opinionated
    labels = ["concurrency", "files", "math", "network", "text"]
    for model, name in ((teacher, "teacher"), (teacher, "copy"), (other, "other")):
        model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data_args = DataArguments(train_size=8, val_size=4, test_size=20, max_source_length=32)
    data = prepare_data(load_raw_splits(data_args, "classification"), tokenizer, "classification", data_args)
    args = BenchmarkArguments(latency_examples=3, warmup_batches=1, benchmark_batch_size=8)
    results = run_benchmark(
        {name: str(tmp_path / name) for name in ("teacher", "copy", "other")}, data, tokenizer, args, str(tmp_path / "bench")
    )
    copy, other_result = results["models"]["copy"]["quality"], results["models"]["other"]["quality"]
    assert copy["prediction_agreement"] == 100.0 and copy["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert copy["accuracy"] == results["models"]["teacher"]["quality"]["accuracy"]
    assert other_result["kl_to_teacher"] > 0.001 and 0 <= other_result["accuracy"] <= 100
    assert set(copy["per_class"]) == set(labels)


def test_bad_benchmark_input_is_one_line(tiny, tokenizer_for, tmp_path, capsys):
    # Models with different tokenizers are benchmarked, each with its own (test_cross_tokenizer_sequence.py).
    t5 = tiny("t5", layers=2)
    t5.save_pretrained(tmp_path / "t5")
    tokenizer_for("t5").save_pretrained(tmp_path / "t5")
    cases = [
        (["--models", str(tmp_path / "t5"), "/no/such/model"], "--models '/no/such/model' does not exist"),
    ]
    for flags, message in cases:
        assert main(["benchmark", *flags, "--train_size", "8", "--test_size", "4"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in error, error


def test_a_split_without_labels_is_refused(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    (tmp_path / "data").mkdir()
    for split in ("train", "dev", "test"):
        label = -1 if split == "test" else None
        rows = [f"a {'good' if i % 2 else 'bad'} film {i}\t{label if label is not None else i % 2}" for i in range(6)]
        (tmp_path / "data" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    model = tiny("bert", layers=1, num_labels=2)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data_args = DataArguments(dataset_local_path=str(tmp_path / "data"))
    data = prepare_data(load_raw_splits(data_args, "classification"), tokenizer, "classification", data_args)
    assert data.label_names == ["0", "1"]  # -1 marks a row without a label (GLUE's test sets), not a class
    assert set(data.tokenized["test"]["labels"]) == {-100}
    with pytest.raises(InputError, match="the test split has no labels"):
        run_benchmark({"model": str(tmp_path / "model")}, data, tokenizer, BenchmarkArguments(), str(tmp_path / "bench"))


def test_peak_memory_sees_an_allocation():
    with peak_memory(torch.device("cpu")) as small:
        torch.ones(10)
    with peak_memory(torch.device("cpu")) as large:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block += 1
        del block
    assert large["peak_mb"] > 50 and large["peak_mb"] > small["peak_mb"] + 40


# ---- strict JSON, columns per task -----------------------------------------------------------------------------


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity, as strict parsers do."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_of_a_run_is_strict_with_null_for_undefined_figures(pipeline_run):
    written = [pipeline_run / "benchmark" / "benchmark_results.json"]
    written += [pipeline_run / name / "training_metrics.json" for name in ("teacher", "baseline", "distilled")]
    for path in written:
        strict_loads(path.read_text())  # raises on a bare NaN or Infinity
    results = strict_loads(written[0].read_text())
    teacher = results["models"]["teacher"]["quality"]
    for name in ("baseline", "distilled"):
        quality = results["models"][name]["quality"]
        retained = results["models"][name]["versus_teacher"]["quality_retained_by_metric"]
        assert set(retained) >= {"rouge1", "rouge2", "rougeL", "bleu4"}
        for metric, value in retained.items():
            if teacher[metric] == 0:  # e.g. the dry run's ROUGE-2: undefined, not a number
                assert value is None, metric
            else:
                assert value == pytest.approx(100 * quality[metric] / teacher[metric]), metric


def markdown_header(folder) -> list[str]:
    line = next(line for line in (folder / "benchmark_report.md").read_text().splitlines() if line.startswith("| model"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_generation_report_keeps_per_token_latency(pipeline_run):
    folder = pipeline_run / "benchmark"
    header = markdown_header(folder)
    assert len(header) == len(set(header)) and header.count("ms / token") == 1
    with open(folder / "comparison_table.csv") as handle:
        columns = csv.DictReader(handle).fieldnames
    assert len(columns) == len(set(columns)) and "latency_per_token_ms" in columns
    results = json.loads((folder / "benchmark_results.json").read_text())
    for name in ("baseline", "distilled"):  # generation: top-1 agreement under teacher forcing is its own figure
        assert "top1_agreement" in results["models"][name]["quality"]
        cost = results["models"][name]["cost"]
        assert cost["latency_per_token_p50_ms"] <= cost["latency_per_token_p95_ms"]
        assert cost["latency_timings"] >= BenchmarkArguments().latency_min_timings


def test_classification_report_shows_each_figure_once_and_no_per_token_latency(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    labels = ["concurrency", "files", "math", "network", "text"]
    for seed, name in ((0, "teacher"), (3, "student")):
        model = tiny("bert", layers=2 if name == "teacher" else 1, seed=seed)
        model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data_args = DataArguments(train_size=8, val_size=4, test_size=12, max_source_length=32)
    data = prepare_data(load_raw_splits(data_args, "classification"), tokenizer, "classification", data_args)
    args = BenchmarkArguments(latency_examples=3, warmup_batches=1, benchmark_batch_size=8, latency_min_time=0.05)
    folder = tmp_path / "bench"
    results = run_benchmark({name: str(tmp_path / name) for name in ("teacher", "student")}, data, tokenizer, args, str(folder))

    student = results["models"]["student"]
    assert "prediction_agreement" in student["quality"] and "top1_agreement" not in student["quality"]
    assert not any("token" in key for model in results["models"].values() for key in model["cost"])
    teacher_cost = results["models"]["teacher"]["cost"]  # classification: the speed-up is per example, at p50
    assert student["versus_teacher"]["speedup_latency"] == pytest.approx(
        teacher_cost["latency_p50_ms"] / student["cost"]["latency_p50_ms"]
    )
    header = markdown_header(folder)
    assert len(header) == len(set(header)), header
    assert header.count("prediction_agreement") == 1 and "top1_agreement" not in header
    assert not any("token" in column for column in header), header
    with open(folder / "comparison_table.csv") as handle:
        columns = csv.DictReader(handle).fieldnames
    assert len(columns) == len(set(columns)) and "top1_agreement" not in columns
    assert not any("token" in column for column in columns), columns
    assert "Generation settings" not in (folder / "benchmark_report.md").read_text()


# ---- latency: enough timings, and a speed-up only where they support one ---------------------------------------


class SleepingRunner:
    """Stands in for a model: each run takes at least ``seconds`` and 'generates' 3 tokens."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def predict(self, features):
        self.calls.append(features[0]["index"])
        time.sleep(self.seconds)
        return ["text"], [3]


@pytest.mark.parametrize(
    "min_timings,min_time,expected_rounds",
    [(1, 0.0, 1), (7, 0.0, 3), (9, 0.0, 3), (10, 0.0, 4)],
)
def test_latency_examples_are_timed_in_whole_rounds_until_there_are_enough_timings(min_timings, min_time, expected_rounds):
    runner = SleepingRunner(0.0)
    evaluation = SimpleNamespace(features=[{"index": i} for i in range(5)])
    args = BenchmarkArguments(latency_examples=3, warmup_batches=1, latency_min_timings=min_timings, latency_min_time=min_time)
    timings, tokens = _latencies(runner, evaluation, args, torch.device("cpu"))
    assert len(timings) == 3 * expected_rounds and tokens == [3] * len(timings)
    assert runner.calls == [0] + [0, 1, 2] * expected_rounds  # one warm-up, then the first 3 examples round after round


def test_latency_examples_are_timed_until_the_minimum_time():
    runner = SleepingRunner(0.004)
    evaluation = SimpleNamespace(features=[{"index": i} for i in range(5)])
    args = BenchmarkArguments(latency_examples=2, warmup_batches=0, latency_min_timings=1, latency_min_time=0.05)
    timings, _ = _latencies(runner, evaluation, args, torch.device("cpu"))
    assert sum(timings) >= 0.05 and len(timings) % 2 == 0
    assert sum(timings[:-2]) < 0.05  # not a round more than needed
    assert all(seconds >= 0.004 for seconds in timings) and len(timings) <= 0.05 / 0.004 + 2


def latency_figures(p50: float, p95: float, timings: int = 40, generation: bool = True) -> dict:
    """Synthetic cost figures; for generation p50 / p95 are per generated token, per example ten times that."""
    figures = {
        "parameters": 1000,
        "size_on_disk_mb": 1.0,
        "examples_per_second": 1.0,
        "latency_p50_ms": 10 * p50,
        "latency_p95_ms": 10 * p95,
        "latency_timings": timings,
    }
    if generation:
        figures.update(
            latency_per_token_ms=p50,
            latency_per_token_p50_ms=p50,
            latency_per_token_p95_ms=p95,
            generated_tokens_per_second=1.0,
        )
    return figures


def verdict_of(teacher_cost: dict, student_cost: dict) -> tuple[str, dict]:
    results = {
        "teacher": ModelResult("teacher", "t", quality={"rougeL": 20.0}, cost=teacher_cost),
        "student": ModelResult("student", "s", quality={"rougeL": 10.0}, cost=student_cost),
    }
    for result in results.values():
        result.versus_teacher = compare_with_teacher(result, results["teacher"], "rougeL")
    return make_verdict(results, "teacher", "rougeL"), results["student"].versus_teacher


@pytest.mark.parametrize("generation", [True, False])
def test_a_speed_up_is_stated_only_when_the_timings_support_it(generation):
    figures = lambda p50, p95, timings=40: latency_figures(p50, p95, timings, generation)
    # Separated ranges (the faster p95 below the slower p50): the ratio is stated, faster or slower.
    for teacher, student in (
        (figures(10, 11), figures(4, 5)),
        (figures(4, 5), figures(10, 11)),
        (figures(10, 11), figures(5, 9.99)),
    ):
        assert speedup_reliability(student, teacher) is None
        verdict, versus = verdict_of(teacher, student)
        ratio = (
            (teacher["latency_per_token_p50_ms"] / student["latency_per_token_p50_ms"])
            if generation
            else (teacher["latency_p50_ms"] / student["latency_p50_ms"])
        )
        assert versus["speedup_note"] is None and versus["speedup_latency"] == pytest.approx(ratio)
        assert f"at {ratio:.1f}x the speed" in verdict and "not measured reliably" not in verdict
    # Overlapping ranges, touching ranges, too few timings of either model: no ratio, and the reason.
    unreliable = [
        (figures(10, 12), figures(9, 11), "the p50-p95 latency ranges overlap"),
        (figures(10, 11), figures(5, 10), "the p50-p95 latency ranges overlap"),  # faster p95 == slower p50
        (figures(10, 11), figures(10, 11), "the p50-p95 latency ranges overlap"),
        (figures(10, 11, timings=4), figures(4, 5), "only 4 timings of teacher"),
        (figures(10, 11), figures(4, 5, timings=MIN_RELIABLE_TIMINGS - 1), f"only {MIN_RELIABLE_TIMINGS - 1} timings of student"),
    ]
    for teacher, student, reason in unreliable:
        assert reason in speedup_reliability(student, teacher, "student", "teacher")
        verdict, versus = verdict_of(teacher, student)
        assert reason in versus["speedup_note"]
        assert "x the speed" not in verdict and f"speed-up not measured reliably: {reason}" in verdict, verdict
        assert "student keeps 50.0% of the teacher's ROUGE-L" in verdict and "100% of the size" in verdict
    assert speedup_reliability(figures(4, 5, timings=MIN_RELIABLE_TIMINGS), figures(10, 11, timings=MIN_RELIABLE_TIMINGS)) is None
    shown = speedup_reliability(figures(90, 110), figures(100, 120), "student", "teacher")  # the student's first
    if generation:  # the ranges of the figure the speed-up divides: per token, else per example (10x here)
        assert "(teacher 100.00-120.00 ms/token, student 90.00-110.00 ms/token)" in shown
    else:
        assert "(teacher 1000.00-1200.00 ms, student 900.00-1100.00 ms)" in shown


# ---- flags of other commands -----------------------------------------------------------------------------------


def test_benchmark_ignores_a_flag_of_another_command_with_a_note(tiny, tokenizer_for, tmp_path, capsys):
    tiny("t5", layers=1).save_pretrained(tmp_path / "t5")
    tokenizer_for("t5").save_pretrained(tmp_path / "t5")
    argv = ["benchmark", "--models", str(tmp_path / "t5"), "--benchmark_output_dir", str(tmp_path / "bench")]
    fast = ["--dry-run", "--max_new_tokens", "2", "--latency_min_time", "0"]
    assert main([*argv, "--per_device_train_batch_size", "4", "--gradient-accumulation-steps=2", *fast]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: benchmark ignores --per_device_train_batch_size, --gradient_accumulation_steps (used by other commands)"
    ]
    assert (tmp_path / "bench-dry-run" / "benchmark_results.json").is_file()
    # A flag no command knows is still an error, with a suggestion.
    assert main([*argv, "--latency_exampels", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: unknown argument '--latency_exampels' for benchmark; did you mean --latency_examples?", error
