"""An honest A/B over seeds: each setting trained several times, mean and spread of every figure, and a verdict that
claims a win only by more than the spread (never from one seed)."""

import json
import re
import statistics

import pytest
from safetensors.torch import load_file

from seq2seq_distill.arguments import BenchmarkArguments
from seq2seq_distill.benchmark import (
    ModelResult,
    check_settings,
    compare_with_teacher,
    make_verdict,
    seed_comparison,
    seed_comparison_phrase,
    setting_result,
    setting_summary,
)
from seq2seq_distill.cli import COMMANDS, main, parse_command
from seq2seq_distill.errors import InputError

# ---- the rule, on synthetic figures -----------------------------------------------------------------------------

BASELINE = [80.0, 80.4, 79.6]  # sample standard deviation 0.4
BEATS = "distilled beats the CE-only student by "
NOT = "distilled does not beat the CE-only student: "
UNKNOWN = "distilled vs the CE-only student: "


@pytest.mark.parametrize(
    "baseline,distilled,beats,phrase",
    [
        (BASELINE, [82.3, 82.7, 81.9], True, BEATS + "+2.30 accuracy (3 seeds, spread 0.40)"),
        (BASELINE, [80.1, 80.5, 79.7], False, NOT + "+0.10 accuracy (3 seeds, spread 0.40)"),
        (BASELINE, [78.0, 78.4, 77.6], False, NOT + "-2.00 accuracy (3 seeds, spread 0.40)"),
        # exactly the spread is not more than the spread
        ([0.0, 2.0, 4.0], [2.0, 4.0, 6.0], False, NOT + "+2.00 accuracy (3 seeds, spread 2.00)"),
        # the spread is the larger of the two: a noisy distilled setting needs a larger margin
        ([80.0, 80.0, 80.0], [81.0, 83.0, 85.0], True, BEATS + "+3.00 accuracy (3 seeds, spread 2.00)"),
        ([80.0, 80.0, 80.0], [79.0, 82.0, 85.0], False, NOT + "+2.00 accuracy (3 seeds, spread 3.00)"),
        # one seed: no spread, so no win (nor loss) is claimed, however large the difference
        ([80.0], [85.0], None, UNKNOWN + "+5.00 accuracy (1 seed: no spread, rerun with --seeds 3)"),
        (BASELINE, [90.0], None, UNKNOWN + "+10.00 accuracy (1 vs 3 seeds: no spread, rerun with --seeds 3)"),
    ],
)
def test_distillation_beats_the_baseline_only_by_more_than_the_spread(baseline, distilled, beats, phrase):
    comparison = seed_comparison(baseline, distilled)
    assert comparison["beats"] is beats
    assert comparison["difference"] == pytest.approx(statistics.mean(distilled) - statistics.mean(baseline))
    assert comparison["mean"] == pytest.approx(statistics.mean(distilled))
    assert comparison["baseline_mean"] == pytest.approx(statistics.mean(baseline))
    if len(baseline) > 1 and len(distilled) > 1:
        assert comparison["spread"] == pytest.approx(max(statistics.stdev(baseline), statistics.stdev(distilled)))
    else:
        assert comparison["spread"] is None
    assert seed_comparison_phrase("distilled", comparison, "accuracy") == phrase


def test_where_lower_is_better_a_win_is_a_lower_mean():
    baseline = [20.0, 21.0, 22.0]  # perplexity, spread 1
    lower = seed_comparison(baseline, [17.0, 18.0, 19.0], lower_is_better=True)
    assert lower["beats"] is True and lower["difference"] == pytest.approx(-3.0)
    assert seed_comparison_phrase("distilled", lower, "perplexity") == (
        "distilled beats the CE-only student by -3.00 perplexity (lower is better; 3 seeds, spread 1.00)"
    )
    higher = seed_comparison(baseline, [23.0, 24.0, 25.0], lower_is_better=True)
    assert higher["beats"] is False
    assert seed_comparison(baseline, [23.0, 24.0, 25.0])["beats"] is True  # the same figures, higher is better
    overflowed = seed_comparison(baseline, [float("inf")] * 3, lower_is_better=True)  # undefined: no claim either way
    assert overflowed["beats"] is None
    assert seed_comparison_phrase("distilled", overflowed, "perplexity").startswith(UNKNOWN + "n/a perplexity")


def cost(p50: float, timings: int = 40, parameters: int = 1_000_000) -> dict:
    return {
        "parameters": parameters,
        "size_on_disk_mb": parameters / 2**18,
        "latency_p50_ms": p50,
        "latency_p95_ms": p50 * 1.05,
        "latency_timings": timings,
        "examples_per_second": 1000 / p50,
    }


def classification_runs() -> dict[str, ModelResult]:
    """A teacher and three seeds each of a baseline and a distilled student, 4x smaller and about 2x faster."""
    teacher_quality = {"accuracy": 84.0, "macro_f1": 83.0}
    runs = {"teacher": ModelResult("teacher", "t", quality=teacher_quality, cost=cost(20.0, parameters=4_000_000))}
    for index, (accuracy, p50) in enumerate(zip(BASELINE, (10.0, 11.0, 9.0), strict=True)):
        quality = {"accuracy": accuracy, "macro_f1": accuracy - 1}
        runs[f"baseline-seed{42 + index}"] = ModelResult("b", "b", quality=quality, cost=cost(p50))
    for index, (accuracy, p50) in enumerate(zip((82.3, 82.7, 81.9), (10.5, 9.5, 10.0), strict=True)):
        quality = {"accuracy": accuracy, "macro_f1": accuracy - 2, "per_class": {}}
        runs[f"distilled-seed{42 + index}"] = ModelResult("d", "d", quality=quality, cost=cost(p50, timings=30 + index))
    for result in runs.values():
        result.versus_teacher = compare_with_teacher(result, runs["teacher"], "accuracy")
    return runs


SETTINGS = {
    "teacher": ["teacher"],
    "baseline": ["baseline-seed42", "baseline-seed43", "baseline-seed44"],
    "distilled": ["distilled-seed42", "distilled-seed43", "distilled-seed44"],
}


def test_a_setting_is_the_mean_of_its_runs_quality_and_the_median_of_their_cost():
    runs = classification_runs()
    distilled = setting_result("distilled", [runs[name] for name in SETTINGS["distilled"]], runs["teacher"], "accuracy")
    accuracies = [runs[name].quality["accuracy"] for name in SETTINGS["distilled"]]
    assert distilled.quality["accuracy"] == pytest.approx(statistics.mean(accuracies))
    assert "per_class" not in distilled.quality  # not a number: no mean of it
    assert distilled.cost["latency_p50_ms"] == statistics.median([10.5, 9.5, 10.0])
    assert distilled.cost["latency_timings"] == 30  # the fewest of any run: the speed-up reliability rule stays honest
    assert distilled.versus_teacher["speedup_latency"] == pytest.approx(20.0 / 10.0)
    assert distilled.versus_teacher["quality_retained"] == pytest.approx(100 * statistics.mean(accuracies) / 84.0)

    seeds = {name: 42 + index for index, name in enumerate(SETTINGS["distilled"])}
    summary = setting_summary(SETTINGS["distilled"], runs, distilled, seeds)
    assert summary["models"] == SETTINGS["distilled"] and summary["seeds"] == [42, 43, 44] and summary["runs"] == 3
    figures = summary["quality"]["macro_f1"]
    macro_f1 = [runs[name].quality["macro_f1"] for name in SETTINGS["distilled"]]
    assert figures["mean"] == pytest.approx(statistics.mean(macro_f1))
    assert figures["spread"] == pytest.approx(statistics.stdev(macro_f1))
    assert (figures["min"], figures["max"]) == (min(macro_f1), max(macro_f1))
    assert figures["by_model"] == dict(zip(SETTINGS["distilled"], macro_f1, strict=True))

    teacher = setting_result("teacher", [runs["teacher"]], runs["teacher"], "accuracy")  # one run: its own figures
    assert teacher.quality == runs["teacher"].quality and teacher.cost == runs["teacher"].cost
    assert setting_summary(["teacher"], runs, teacher, {})["quality"]["accuracy"]["spread"] is None


def test_the_verdict_over_seeds_says_by_how_much_and_keeps_the_teachers_share():
    runs = classification_runs()
    settings = {
        name: setting_result(name, [runs[member] for member in members], runs["teacher"], "accuracy")
        for name, members in SETTINGS.items()
    }
    baseline = [runs[name].quality["accuracy"] for name in SETTINGS["baseline"]]
    distilled = [runs[name].quality["accuracy"] for name in SETTINGS["distilled"]]
    verdict = make_verdict(settings, "teacher", "accuracy", {"distilled": seed_comparison(baseline, distilled)})
    kept = 100 * statistics.mean(distilled) / 84.0
    assert verdict.startswith(
        f"distilled beats the CE-only student by +2.30 accuracy (3 seeds, spread 0.40) and keeps {kept:.1f}% of the "
        "teacher's accuracy at 2.0x the speed and 25% of the size; baseline keeps "
    ), verdict
    # Within the spread: said plainly, and the share of the teacher still follows.
    within = seed_comparison(baseline, [80.1, 80.5, 79.7])
    verdict = make_verdict(settings, "teacher", "accuracy", {"distilled": within})
    assert verdict.startswith(NOT + "+0.10 accuracy (3 seeds, spread 0.40); distilled keeps "), verdict


def test_settings_must_place_every_model_once_and_the_teacher_alone():
    names = ["teacher", "a", "b"]
    assert check_settings(None, names, "teacher") == {"teacher": ["teacher"], "a": ["a"], "b": ["b"]}
    with pytest.raises(InputError, match="shares the setting 'x' with a"):
        check_settings({"x": ["teacher", "a"], "b": ["b"]}, names, "teacher")
    with pytest.raises(InputError, match="without one: b"):
        check_settings({"teacher": ["teacher"], "a": ["a"]}, names, "teacher")
    arguments = BenchmarkArguments(models=["t", "b1", "b2"], model_groups=["teacher", "baseline", "baseline"])
    assert arguments.settings_of_models() == {"teacher": ["t"], "baseline": ["b1", "b2"]}
    with pytest.raises(InputError, match="--model_groups has 2 names for 3 models"):
        BenchmarkArguments(models=["t", "b1", "b2"], model_groups=["teacher", "baseline"]).settings_of_models()


def test_seeds_must_be_at_least_one():
    with pytest.raises(InputError, match="seeds must be at least 1, got 0"):
        parse_command(COMMANDS["pipeline"], ["--seeds", "0"])


def test_run_i_trains_with_seed_plus_i_and_data_seed_plus_i():
    from seq2seq_distill.arguments import Seq2SeqDistillationTrainingArguments
    from seq2seq_distill.commands import _seed_runs

    parsed = parse_command(COMMANDS["pipeline"], ["--seed", "7", "--data_seed", "100", "--seeds", "3"])
    training = parsed[Seq2SeqDistillationTrainingArguments]
    runs = _seed_runs(training, 3)
    assert [seed for seed, _ in runs] == [7, 8, 9]
    assert [(args.seed, args.data_seed) for _, args in runs] == [(7, 100), (8, 101), (9, 102)]
    assert (training.seed, training.data_seed) == (7, 100)  # the teacher's (and the caller's) arguments are untouched
    assert [args.data_seed for _, args in _seed_runs(parse_command(COMMANDS["pipeline"], [])[type(training)], 2)] == [None, None]
    training.seed = 2**32 - 2
    with pytest.raises(InputError, match="runs past 2\\*\\*32 - 1"):
        _seed_runs(training, 3)


# ---- the pipeline with --seeds 2 on the embedded data ------------------------------------------------------------

FAST = ["--latency_min_time", "0", "--max_new_tokens", "4"]
SMALL_TEACHER = ["--scratch_hidden_size", "32", "--scratch_num_layers", "4", "--scratch_vocab_size", "400"]
STUDENT_RUNS = ["baseline-seed42", "baseline-seed43", "distilled-seed42", "distilled-seed43"]


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """A dry run of ``pipeline --seeds 2``: batches of 4, so that the seed (the data order) changes what is learnt."""
    root = tmp_path_factory.mktemp("seeds")
    argv = ["pipeline", "--dry-run", "--seeds", "2", "--output_dir", str(root / "run"), "--per_device_train_batch_size", "4"]
    assert main([*argv, *FAST, *SMALL_TEACHER]) == 0
    return root / "run-dry-run"


def test_each_student_is_trained_once_per_seed_and_the_teacher_once(seeds_run):
    folders = sorted(path.name for path in seeds_run.iterdir())
    assert folders == sorted(["benchmark", "teacher", *STUDENT_RUNS])  # no baseline/ or distilled/ beside them
    for name in STUDENT_RUNS:
        assert (seeds_run / name / "model.safetensors").exists(), name
        assert json.loads((seeds_run / name / "training_metrics.json").read_text())["name"] == name
    weights = {name: load_file(seeds_run / name / "model.safetensors") for name in STUDENT_RUNS}
    for setting in ("baseline", "distilled"):  # another seed, another data order: other weights
        first, second = weights[f"{setting}-seed42"], weights[f"{setting}-seed43"]
        assert any(not first[key].equal(second[key]) for key in first), setting


def test_the_results_hold_each_setting_with_mean_and_spread_over_its_seeds(seeds_run):
    results = json.loads((seeds_run / "benchmark" / "benchmark_results.json").read_text())
    assert list(results["models"]) == ["teacher", *STUDENT_RUNS]  # the per-seed figures
    groups = results["groups"]
    assert groups["teacher"]["models"] == ["teacher"] and groups["teacher"]["runs"] == 1
    main_metric = results["main_metric"]
    for setting in ("baseline", "distilled"):
        group = groups[setting]
        assert group["models"] == [f"{setting}-seed42", f"{setting}-seed43"] and group["seeds"] == [42, 43]
        for metric in ("rougeL", "bleu4", "kl_to_teacher", "top1_agreement"):
            values = [results["models"][name]["quality"][metric] for name in group["models"]]
            assert group["quality"][metric]["mean"] == pytest.approx(statistics.mean(values)), metric
            assert group["quality"][metric]["spread"] == pytest.approx(statistics.stdev(values)), metric
        p50s = [results["models"][name]["cost"]["latency_p50_ms"] for name in group["models"]]
        assert group["cost"]["latency_p50_ms"] == pytest.approx(statistics.median(p50s))
    comparison = results["versus_baseline"]["distilled"]
    baseline = [results["models"][name]["quality"][main_metric] for name in groups["baseline"]["models"]]
    distilled = [results["models"][name]["quality"][main_metric] for name in groups["distilled"]["models"]]
    spread = max(statistics.stdev(baseline), statistics.stdev(distilled))
    assert comparison["metric"] == main_metric == "rougeL"
    assert comparison["difference"] == pytest.approx(statistics.mean(distilled) - statistics.mean(baseline))
    assert comparison["spread"] == pytest.approx(spread)
    assert comparison["beats"] is (statistics.mean(distilled) - statistics.mean(baseline) > spread)


def test_the_verdict_line_says_whether_distillation_beat_the_spread(seeds_run):
    results = json.loads((seeds_run / "benchmark" / "benchmark_results.json").read_text())
    report = (seeds_run / "benchmark" / "benchmark_report.md").read_text()
    verdict = results["verdict"]
    assert report.splitlines()[0] == verdict
    pattern = (
        r"^distilled (beats the CE-only student by [+-]\d+\.\d\d ROUGE-L \(2 seeds, spread \d+\.\d\d\) and keeps "
        r"|does not beat the CE-only student: [+-]\d+\.\d\d ROUGE-L \(2 seeds, spread \d+\.\d\d\); distilled keeps )"
    )
    assert re.match(pattern, verdict), verdict
    assert ("distilled beats" in verdict) is results["versus_baseline"]["distilled"]["beats"]
    assert "; baseline keeps " in verdict
    assert "## Over seeds: mean ± spread" in report and "| distilled | 2 |" in report and " ± " in report
    assert f"- {results['versus_baseline']['distilled']['says']}" in report


def test_benchmark_groups_seed_runs_given_with_model_groups(seeds_run, tmp_path, capsys):
    models = [str(seeds_run / name) for name in ("teacher", *STUDENT_RUNS)]
    groups = ["teacher", "baseline", "baseline", "distilled", "distilled"]
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", *models, "--benchmark_output_dir", str(out), *FAST, "--test_size", "4"]
    argv += ["--latency_examples", "2", "--warmup_batches", "1", "--num_sample_predictions", "1"]
    assert main([*argv, "--model_groups", *groups[:3]]) == 2  # one name per model, checked before any model loads
    assert "--model_groups has 3 names for 5 models" in capsys.readouterr().err
    assert main([*argv, "--model_groups", *groups]) == 0
    results = json.loads((out / "benchmark_results.json").read_text())
    assert results["groups"]["distilled"]["models"] == ["distilled-seed42", "distilled-seed43"]
    assert "seeds" not in results["groups"]["distilled"]  # the benchmark command is not told the seeds
    assert "(2 seeds, spread " in results["verdict"] and results["verdict"].startswith("distilled ")
