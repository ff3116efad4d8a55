"""The command line: parsing, config files, clear one-line errors, and the commands end to end on tiny runs."""

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import TINY_RUN_FLAGS
from huggingface_hub import ModelCard

from seq2seq_distill.arguments import (
    BenchmarkArguments,
    DataArguments,
    ModelArguments,
    RunArguments,
    Seq2SeqDistillationTrainingArguments,
)
from seq2seq_distill.cli import COMMANDS, main, parse_command
from seq2seq_distill.errors import InputError
from seq2seq_distill.presets import EMBEDDED_DEFAULTS, PIPELINE_DEFAULTS, embedded_defaults

ROOT = Path(__file__).resolve().parents[1]
TINY_TEACHER = [*TINY_RUN_FLAGS, "--max_steps", "3"]


def parse(command, *argv):
    return parse_command(COMMANDS[command], list(argv))


def card_with_results(folder: Path, results: dict, name: str) -> ModelCard:
    """The model card in ``folder``, checked against ``benchmark_results.json`` (``results``): its model-index holds
    exactly the scalar quality figures the benchmark wrote for ``name``, and its body the verdict line."""
    card = ModelCard.load(folder / "README.md")
    quality = results["models"][name]["quality"]
    expected = {key: value for key, value in quality.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == expected, name
    assert "distillation" in card.data.tags and card.data.library_name == "transformers", name
    assert f"Verdict: {results['verdict']}" in card.text, name
    return card


def test_both_flag_spellings_and_training_flags_work():
    a = parse("distill", "--num_encoder_layers", "3", "--learning_rate", "1e-4", "--kd_weight", "0.7")
    b = parse("distill", "--num-encoder-layers", "3", "--learning-rate", "1e-4", "--kd-weight", "0.7")
    assert a[ModelArguments].num_encoder_layers == b[ModelArguments].num_encoder_layers == 3
    assert a[Seq2SeqDistillationTrainingArguments].learning_rate == b[Seq2SeqDistillationTrainingArguments].learning_rate == 1e-4
    assert a[Seq2SeqDistillationTrainingArguments].kd_weight == 0.7


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_with_flags_overriding_it(tmp_path, suffix):
    values = {
        "num-encoder-layers": 4,
        "learning_rate": "1e-4",
        "dataset_config": "3.0.0",
        "encoder_layer_map": [0, 3, 7, 11],
        "latency_examples": 3,
        "dataset_local_path": "x.jsonl",
    }  # latency_examples belongs to benchmark: ignored
    path = tmp_path / f"config{suffix}"
    path.write_text(yaml.safe_dump(values) if suffix == ".yaml" else json.dumps(values))
    parsed = parse("distill", "--config", str(path), "--learning_rate", "2e-4")
    model, data, training = parsed[ModelArguments], parsed[DataArguments], parsed[Seq2SeqDistillationTrainingArguments]
    assert model.num_encoder_layers == 4 and data.dataset_config == "3.0.0"
    assert training.learning_rate == 2e-4 and training.encoder_layer_map == [0, 3, 7, 11]


@pytest.mark.parametrize(
    "content,message",
    [
        ({"lerning_rate": 1e-4}, "config key 'lerning_rate' is not a setting of any command; did you mean 'learning_rate'"),
        ({"num_encoder_layers": "three"}, "config key 'num_encoder_layers' must be a int, got 'three'"),
        ({"kd_weight": [1, 2]}, "config key 'kd_weight' takes a single value"),
        ({"model_type": "llama"}, "config key 'model_type' must be one of: t5, bart, bert, gpt2"),
        ({"temperature": -1}, "temperature must be > 0"),
    ],
)
def test_bad_config_values_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse("distill", "--config", str(path))


def test_create_config_writes_every_setting_and_reads_back(tmp_path):
    target = tmp_path / "distill.yaml"
    assert main(["distill", "--create-config", str(target), "--num_encoder_layers", "3", "--temperature", "4"]) == 0
    written = yaml.safe_load(target.read_text())
    for name in (
        "teacher",
        "dataset_local_path",
        "kd_weight",
        "hidden_weight",
        "encoder_layer_map",
        "max_source_length",
        "learning_rate",
        "output_dir",
        "source_prefix",
    ):
        assert name in written, name
    assert written["num_encoder_layers"] == 3 and written["temperature"] == 4.0
    again = parse("distill", "--config", str(target))
    first = parse("distill", "--num_encoder_layers", "3", "--temperature", "4")
    for kind in (ModelArguments, DataArguments):
        assert again[kind] == first[kind]
    assert again[Seq2SeqDistillationTrainingArguments].temperature == 4.0


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config):
    parsed = parse("pipeline", "--config", str(config))
    values = yaml.safe_load(config.read_text())
    for kind, obj in parsed.items():
        for key, value in values.items():
            if hasattr(obj, key) and kind is not Seq2SeqDistillationTrainingArguments:
                assert getattr(obj, key) == value, (config.name, key)
    assert parsed[Seq2SeqDistillationTrainingArguments].output_dir == values["output_dir"]


def test_embedded_defaults_apply_only_without_a_data_source(tmp_path):
    assert parse("pipeline")[DataArguments].max_source_length == EMBEDDED_DEFAULTS["max_source_length"]
    assert parse("pipeline", "--dataset", "cnn_dailymail")[DataArguments].max_source_length == 512
    # The preset lives in the package only; the config file the README points to is written from it.
    written = tmp_path / "pipeline_config.yaml"
    assert main(["pipeline", "--create-config", str(written)]) == 0
    config = yaml.safe_load(written.read_text())
    assert {key: config[key] for key in embedded_defaults("t5")} == embedded_defaults("t5")
    from_file, preset = parse("pipeline", "--config", str(written)), parse("pipeline")
    assert {kind: obj for kind, obj in from_file.items() if kind is not RunArguments} == {
        kind: obj for kind, obj in preset.items() if kind is not RunArguments
    }  # the written file runs the same pipeline as no flags at all
    assert parse("pipeline", "--model_type", "gpt2")[ModelArguments].num_layers == 2
    # The pipeline's recipe (an augmented transfer set) is the pipeline's only, and in its written config.
    assert parse("pipeline")[DataArguments].augment_copies == PIPELINE_DEFAULTS["augment_copies"] > 0
    assert config["augment_copies"] == PIPELINE_DEFAULTS["augment_copies"]
    assert parse("distill")[DataArguments].augment_copies == 0
    # On any data, the pipeline augments unless it is given a transfer set or a number of copies.
    local = ("--dataset_local_path", str(tmp_path))
    assert parse("pipeline", *local)[DataArguments].augment_copies == PIPELINE_DEFAULTS["augment_copies"] > 0
    assert parse("pipeline", *local, "--transfer_dataset_local_path", str(written))[DataArguments].augment_copies == 0
    assert parse("pipeline", *local, "--augment_copies", "3")[DataArguments].augment_copies == 3
    assert parse("pipeline", "--transfer_dataset_local_path", str(written))[DataArguments].augment_copies == 0  # embedded too
    assert parse("distill", *local)[DataArguments].augment_copies == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["distill", "--model_type", "llama"], "invalid choice: 'llama' (choose from 't5', 'bart', 'bert', 'gpt2')"),
        (["distill", "--teacher", "./no/such/teacher"], "--teacher './no/such/teacher' does not exist"),
        (["distill", "--teacher_local_path", "/no/such/dir", "--dataset_local_path", "x"], "does not exist"),
        (["pipeline", "--dataset_local_path", "/no/such.jsonl"], "--dataset_local_path '/no/such.jsonl' does not exist"),
        (["distill", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
        (
            ["distill", "--num_encoder_layres", "2"],
            "unknown argument '--num_encoder_layres' for distill; did you mean --num_encoder_layers?",
        ),
        (["distil"], "unknown command 'distil'; did you mean distill?"),
        (["benchmark"], "benchmark needs --models"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(argv, message, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error, error


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's own files with other column names: jsonl (story / abstract) and a headerless csv."""
    folder = tmp_path_factory.mktemp("user_data")
    from seq2seq_distill.stdlib_corpus import build_summarization_corpus

    rows = build_summarization_corpus(max_examples=40)
    with open(folder / "mine.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps({"story": row["document"], "abstract": row["summary"]}) + "\n")
    import csv

    with open(folder / "mine.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([[row["document"], row["summary"]] for row in rows])
    return folder


@pytest.fixture(scope="module")
def scratch_teacher(tmp_path_factory, user_data):
    output = tmp_path_factory.mktemp("teacher")
    argv = [
        "train_teacher",
        "--dataset_local_path",
        str(user_data / "mine.jsonl"),
        "--dataset_input_column",
        "story",
        "--dataset_target_column",
        "abstract",
        "--output_dir",
        str(output),
        *TINY_TEACHER,
    ]
    assert main(argv) == 0
    return output


def test_train_teacher_writes_the_promised_layout(scratch_teacher):
    assert (scratch_teacher / "model.safetensors").exists() and (scratch_teacher / "tokenizer.json").exists()
    metrics = json.loads((scratch_teacher / "training_metrics.json").read_text())
    assert metrics["log_history"] and metrics["final_metrics"]["train_loss"] > 0


def test_users_jsonl_and_headerless_csv_go_through_distill_and_benchmark(scratch_teacher, user_data, tmp_path, capsys):
    without_scratch_flags = TINY_TEACHER[6:]  # the first three pairs size a scratch teacher, which distill does not build
    common = ["--teacher", str(scratch_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1", *without_scratch_flags]
    jsonl = [
        "--dataset_local_path",
        str(user_data / "mine.jsonl"),
        "--dataset_input_column",
        "story",
        "--dataset_target_column",
        "abstract",
    ]
    csv_source = [
        "--dataset_local_path",
        str(user_data / "mine.csv"),
        "--dataset_column_names",
        "body",
        "headline",
        "--dataset_input_column",
        "body",
        "--dataset_target_column",
        "headline",
    ]
    assert main(["distill", *common, *jsonl, "--output_dir", str(tmp_path / "from_jsonl")]) == 0
    assert main(["distill", *common, *csv_source, "--output_dir", str(tmp_path / "from_csv")]) == 0
    for name in ("from_jsonl", "from_csv"):
        assert (tmp_path / name / "model.safetensors").exists() and (tmp_path / name / "training_metrics.json").exists()
        history = json.loads((tmp_path / name / "training_metrics.json").read_text())["log_history"]
        assert any("kd_loss" in entry for entry in history)
    out = tmp_path / "bench"
    assert (
        main(
            [
                "benchmark",
                "--models",
                str(scratch_teacher),
                str(tmp_path / "from_csv"),
                "--model_names",
                "teacher",
                "student",
                *csv_source,
                "--test_size",
                "6",
                "--latency_examples",
                "2",
                "--max_new_tokens",
                "6",
                "--benchmark_output_dir",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "benchmark_results.json").read_text())
    assert set(results["models"]) == {"teacher", "student"} and results["examples"] == 4  # 10% of 40 rows carved as test
    assert "report:" in capsys.readouterr().out
    # Every saved model has a card; the benchmark added its results to the cards of the two it measured.
    student = card_with_results(tmp_path / "from_csv", results, "student")
    assert student.data.base_model == str(scratch_teacher) and "`kd_loss` × 0.5" in student.text
    assert card_with_results(scratch_teacher, results, "teacher").data.base_model is None  # trained from scratch
    not_benchmarked = ModelCard.load(tmp_path / "from_jsonl" / "README.md")
    assert not_benchmarked.data.eval_results is None and not_benchmarked.data.base_model == str(scratch_teacher)
    assert "3 optimizer steps" in not_benchmarked.text and f"local data at `{user_data / 'mine.jsonl'}`" in not_benchmarked.text


def test_resume_from_a_checkpoint_that_does_not_exist(scratch_teacher, user_data, capsys, tmp_path):
    argv = [
        "distill",
        "--teacher",
        str(scratch_teacher),
        "--dataset_local_path",
        str(user_data / "mine.jsonl"),
        "--output_dir",
        str(tmp_path),
        "--resume_from_checkpoint",
        str(tmp_path / "checkpoints" / "checkpoint-9"),
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--resume_from_checkpoint" in error and "does not exist" in error, error


def test_make_student_and_pseudo_label(scratch_teacher, user_data, tmp_path):
    assert (
        main(
            [
                "make_student",
                "--teacher",
                str(scratch_teacher),
                "--num_encoder_layers",
                "1",
                "--num_decoder_layers",
                "1",
                "--output_dir",
                str(tmp_path / "student"),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["num_layers"] == 1 and config["student_layer_map"] == {"encoder": [0], "decoder": [0]}
    card = ModelCard.load(tmp_path / "student" / "README.md")
    assert card.data.base_model == str(scratch_teacher) and "encoder [0]; decoder [0]" in card.text
    labelled = tmp_path / "labelled"
    assert (
        main(
            [
                "pseudo_label",
                "--teacher",
                str(scratch_teacher),
                "--dataset_local_path",
                str(user_data / "mine.jsonl"),
                "--dataset_input_column",
                "story",
                "--dataset_target_column",
                "abstract",
                "--output_dir",
                str(labelled),
                "--num_beams",
                "2",
                "--max_new_tokens",
                "5",
                "--train_size",
                "6",
            ]
        )
        == 0
    )
    from datasets import load_from_disk

    relabelled = load_from_disk(str(labelled))
    assert relabelled["train"].column_names == ["story", "original_abstract", "abstract"]
    assert relabelled["train"]["abstract"] != relabelled["train"]["original_abstract"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The README's first command with --dry-run, run once for the tests that read its outputs."""
    output = tmp_path_factory.mktemp("pipeline") / "run"
    printed, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(printed):
        status = main(["pipeline", "--dry-run", "--output_dir", str(output)])
    elapsed = time.perf_counter() - start
    return SimpleNamespace(status=status, root=Path(f"{output}-dry-run"), out=printed.getvalue(), seconds=elapsed)


def test_pipeline_dry_run_on_the_embedded_default(dry_run):
    """The README's first command with --dry-run: every stage runs, every file appears."""
    assert dry_run.status == 0
    root = dry_run.root
    for name in ("teacher", "baseline", "distilled"):
        assert (root / name / "model.safetensors").exists() and (root / name / "training_metrics.json").exists()
        # students copied from the trained teacher too: the training value of use_cache leaks into none of them
        assert json.loads((root / name / "config.json").read_text())["use_cache"] is True, name
    report = root / "benchmark" / "benchmark_report.md"
    assert f"report: {report}" in dry_run.out
    assert dry_run.seconds < 60, f"dry run took {dry_run.seconds:.0f}s"


def test_every_model_of_the_pipeline_has_a_card_with_the_benchmarks_figures(dry_run):
    """Cards written at saving time, then given the results of the benchmark that ran after all three trainings."""
    assert dry_run.status == 0
    root = dry_run.root
    results = json.loads((root / "benchmark" / "benchmark_results.json").read_text())
    temperature = parse("pipeline")[Seq2SeqDistillationTrainingArguments].temperature
    for name in ("teacher", "baseline", "distilled"):
        card = card_with_results(root / name, results, name)
        steps = max(entry["step"] for entry in json.loads((root / name / "training_metrics.json").read_text())["log_history"])
        assert f"{steps} optimizer steps" in card.text and "embedded Python standard-library docstrings" in card.text, name
        if name == "teacher":
            assert card.data.base_model is None and "trained from scratch" in card.text
            continue
        assert card.data.base_model == str(root / "teacher") and f"Teacher: `{root / 'teacher'}`" in card.text, name
        assert "Layer map" in card.text, name
    baseline, distilled = (ModelCard.load(root / name / "README.md").text for name in ("baseline", "distilled"))
    assert "`ce_loss` × 1" in baseline and "kd_loss" not in baseline and "Temperature" not in baseline
    assert "`kd_loss` ×" in distilled and f"Temperature: {temperature:g}" in distilled and "Transfer set: " in distilled


@pytest.mark.parametrize(
    "launcher",
    [
        [sys.executable, "-m", "seq2seq_distill"],
        [str(Path(sys.executable).parent / "seq2seq-distill")],
        [sys.executable, str(ROOT / "scripts" / "distill.py")],
    ],
)
def test_every_entry_point_runs(launcher, tmp_path):
    argv = launcher if "distill.py" in launcher[-1] else [*launcher, "distill"]
    result = subprocess.run([*argv, "--create-config", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["kd_weight"] == 0.5
    help_text = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "--num_encoder_layers" in help_text and "--num-encoder-layers" in help_text


def test_benchmark_arguments_have_help_strings():
    import dataclasses

    for kind in (ModelArguments, DataArguments, BenchmarkArguments):
        assert all(field.metadata.get("help") for field in dataclasses.fields(kind)), kind


@pytest.mark.parametrize("rank,prints", [("0", True), ("1", False)])
def test_only_the_main_process_prints_what_it_did(monkeypatch, capsys, rank, prints):
    """Under torchrun only rank 0 writes models, caches and reports, so only it says so (every command)."""
    from seq2seq_distill import cli, commands, training

    finished = training.TrainedModel("distilled", "outputs/x", {})
    for name in ("train_teacher", "distill", "run_pipeline", "make_student", "cache_teacher", "pseudo_label"):
        result = {"verdict": "v"} if name == "run_pipeline" else finished if name in ("train_teacher", "distill") else "p"
        monkeypatch.setattr(commands, name, lambda *args, _result=result, **kwargs: _result)
    monkeypatch.setattr(commands, "benchmark_command", lambda *args, **kwargs: {"verdict": "v"})
    monkeypatch.setenv("RANK", rank)
    for command in cli.COMMANDS.values():
        command.run(parse_command(command, []))
        assert bool(capsys.readouterr().out) is prints, command.name


def test_pseudo_label_takes_output_dir_like_every_command(tmp_path):
    from seq2seq_distill.arguments import PseudoLabelArguments

    parsed = parse("pseudo_label", "--output_dir", str(tmp_path / "labels"))
    assert parsed[PseudoLabelArguments].destination == str(tmp_path / "labels")
    older = parse("pseudo_label", "--pseudo_label_output", str(tmp_path / "old"))
    assert older[PseudoLabelArguments].destination == str(tmp_path / "old")
    assert parse("pseudo_label")[PseudoLabelArguments].destination == "outputs/pseudo_labels"


def _help(command: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse(command, "--help")
    return " ".join(out.getvalue().split())


def test_help_shows_the_defaults_of_a_real_run():
    """Not the embedded preset's (lr 1e-3, 8 epochs, 96 source tokens, 2 layers); those are listed apart."""
    text = _help("distill")
    assert "--learning-rate LEARNING_RATE The initial learning rate for the optimizer. (default: 5e-05)" in text
    assert (
        "(default: 512)" in text
        and "Student encoder layers (T5, BART, BERT). Default: all of the teacher's. (default: None)" in text
    )
    assert "runs the embedded default" in text and "--learning_rate 0.001" in text and "--num_encoder_layers 2" in text
    pipeline_text = _help("pipeline")
    assert "(default: --num_train_epochs)" not in pipeline_text and "(default: 15)" not in pipeline_text
    assert "Epochs of teacher training (unset: --num_train_epochs). (default: None)" in pipeline_text


def test_a_ce_only_distill_run_is_named_a_baseline(scratch_teacher, user_data, tmp_path, capsys):
    flags = ["--teacher", str(scratch_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1", *TINY_TEACHER[6:]]
    data = ["--dataset_local_path", str(user_data / "mine.jsonl"), "--dataset_input_column", "story"]
    argv = ["distill", *flags, *data, "--dataset_target_column", "abstract", "--kd_weight", "0", "--ce_weight", "1"]
    assert main([*argv, "--output_dir", str(tmp_path / "ce")]) == 0
    record = json.loads((tmp_path / "ce" / "training_metrics.json").read_text())
    assert record["name"] == "baseline" and "distillation_diagnostics" not in record  # nothing distilled to diagnose
    assert f"baseline student (CE only: no distillation term is on) saved to {tmp_path / 'ce'}" in capsys.readouterr().out


def test_a_registered_term_trains_from_the_command_line(scratch_teacher, user_data, tmp_path):
    """--term_modules imports the user's module (which calls register_term); --term_weights switches the term on."""
    flags = ["--teacher", str(scratch_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1", *TINY_TEACHER[6:]]
    data = ["--dataset_local_path", str(user_data / "mine.jsonl"), "--dataset_input_column", "story"]
    terms = ["--term_modules", "term_plugins", "--term_weights", "hidden_cosine_loss=0.5"]
    argv = ["distill", *flags, *data, "--dataset_target_column", "abstract", *terms, "--output_dir", str(tmp_path / "t")]
    assert main(argv) == 0
    history = json.loads((tmp_path / "t" / "training_metrics.json").read_text())["log_history"]
    logged = [entry["hidden_cosine_loss"] for entry in history if "hidden_cosine_loss" in entry]
    assert len(logged) == 3 and all(value >= 0 for value in logged)  # every one of the 3 steps
    assert main(["distill", *flags, *data, "--term_weights", "nope=1", "--output_dir", str(tmp_path / "u")]) == 2


def test_a_distill_run_writes_the_means_of_its_diagnostics_into_training_metrics(scratch_teacher, user_data, tmp_path):
    """``distillation_diagnostics``: the means over the run of what each step logged, in strict JSON."""
    flags = ["--teacher", str(scratch_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1", *TINY_TEACHER[6:]]
    data = ["--dataset_local_path", str(user_data / "mine.jsonl"), "--dataset_input_column", "story"]
    argv = ["distill", *flags, *data, "--dataset_target_column", "abstract", "--output_dir", str(tmp_path / "d")]
    assert main(argv) == 0

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads((tmp_path / "d" / "training_metrics.json").read_text(), parse_constant=refuse)
    summary = record["distillation_diagnostics"]
    steps = [entry for entry in record["log_history"] if "loss" in entry]  # --logging_steps 1: one entry a step
    assert summary["optimizer_steps"] == len(steps) == 3 and summary["warnings"] == []
    for name in ("ce_loss", "kd_loss", "teacher_kl", "argmax_agreement"):
        expected = sum(entry[name] for entry in steps) / len(steps)
        assert summary["means"][name] == pytest.approx(expected, rel=1e-5, abs=2e-6), name
    kd, ce = 0.5 * summary["means"]["kd_loss"], 0.5 * summary["means"]["ce_loss"]  # the default weights
    assert summary["term_shares"] == pytest.approx({"ce_loss": ce / (ce + kd), "kd_loss": kd / (ce + kd)}, rel=1e-6)


def test_benchmark_takes_output_dir_like_every_command(tmp_path):
    parsed = parse("benchmark", "--output_dir", str(tmp_path / "reports"))
    assert parsed[BenchmarkArguments].benchmark_output_dir == str(tmp_path / "reports")
    assert parse("benchmark", f"--output-dir={tmp_path}")[BenchmarkArguments].benchmark_output_dir == str(tmp_path)
