"""The benchmark: every promised file, numbers in range, ratios consistent with the raw figures, clear bad input."""

import csv
import json
import math

import pytest
import torch

from seq2seq_distill.arguments import BenchmarkArguments, DataArguments
from seq2seq_distill.benchmark import peak_memory, run_benchmark
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
        per_token = teacher["cost"]["latency_per_token_ms"] / cost["latency_per_token_ms"]  # generation: per token
        assert versus["speedup_latency"] == pytest.approx(per_token)
        assert cost["latency_per_token_ms"] <= cost["latency_p95_ms"]
        assert versus["compression_ratio"] == pytest.approx(teacher["cost"]["parameters"] / cost["parameters"])
        assert versus["size_fraction"] == pytest.approx(cost["size_on_disk_mb"] / teacher["cost"]["size_on_disk_mb"])
        expected = 100 * quality[main_metric] / teacher["quality"][main_metric] if teacher["quality"][main_metric] else math.nan
        assert versus["quality_retained"] == pytest.approx(expected, nan_ok=True)
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
    t5, bart = tiny("t5", layers=2), tiny("bart", layers=2)
    t5.save_pretrained(tmp_path / "t5")
    tokenizer_for("t5").save_pretrained(tmp_path / "t5")
    t5.save_pretrained(tmp_path / "t5_other_tokenizer")
    from seq2seq_distill.tiny import train_tokenizer

    train_tokenizer(["another corpus, another vocabulary"] * 3, vocab_size=50).save_pretrained(tmp_path / "t5_other_tokenizer")
    del bart
    cases = [
        (["--models", str(tmp_path / "t5"), str(tmp_path / "t5_other_tokenizer")], "has a different tokenizer"),
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
