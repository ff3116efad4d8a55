"""Bad input of every kind gives one InputError line that names the problem and the fix, before any heavy work.

Config values (types, ranges, nan, Trainer combinations), data files (encodings, broken rows, empty columns,
labels) and models (layer counts and maps, a --student of another family or bigger than the teacher) are checked
with config-only model folders wherever possible: an error raised there proves no weights were needed.
"""

import json
import logging

import pytest
import yaml
from datasets import Dataset, DatasetDict
from transformers import DistilBertConfig

from seq2seq_distill import students
from seq2seq_distill.arguments import (
    BenchmarkArguments,
    DataArguments,
    ModelArguments,
    Seq2SeqDistillationTrainingArguments,
)
from seq2seq_distill.cli import COMMANDS, main, parse_command
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError
from seq2seq_distill.modeling import shared_output_size
from seq2seq_distill.tiny import tiny_config

ROWS = [
    {"story": f"story {i} about a {'cat' if i % 2 else 'dog'}", "abstract": f"tale {i}", "topic": "ab"[i % 2]} for i in range(20)
]


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars of the data loading
    assert error.startswith("error: "), error
    return error


# ---- configs and flags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,message",
    [
        ({"kd_wieght": 0.5}, "config key 'kd_wieght' is not a setting of any command; did you mean 'kd_weight'?"),
        ({"num_encoder_layers": "three"}, "config key 'num_encoder_layers' must be a int, got 'three'"),
        ({"trust_remote_code": 1}, "config key 'trust_remote_code' must be a boolean, got 1"),
        ({"trust_remote_code": "maybe"}, "config key 'trust_remote_code' must be a boolean, got 'maybe'"),
        ({"kd_weight": float("nan")}, "config key 'kd_weight' must be a finite float, got nan"),
        ({"kd_weight": -0.5}, "kd_weight must be a finite number >= 0, got -0.5"),
        ({"temperature": 0}, "temperature must be > 0, got 0.0"),
        ({"divergence": "kl"}, "unknown divergence 'kl'; choose one of:"),
        ({"encoder_layer_map": "0,6"}, "config key 'encoder_layer_map' must be a int, got '0,6'"),
        ({"per_device_train_batch_size": -8}, "per_device_train_batch_size must be at least 1, got -8"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1, got 0"),
        ({"seed": -1}, "seed must be at least 0, got -1"),
        ({"save_strategy": "steps", "save_steps": 0}, "save_steps must be > 0 with --save_strategy steps"),
        ({"load_best_model_at_end": True, "save_strategy": "no"}, "invalid distill settings: --load_best_model_at_end"),
        ({"max_source_length": 0}, "max_source_length must be at least 1, got 0"),
        ({"preprocessing_num_workers": 0}, "preprocessing_num_workers must be at least 1, got 0"),
        ({"split_seed": -3}, "split_seed must be in [0, 2**32), got -3"),
        ({"dataset_column_names": ["text", "text"]}, "dataset_column_names must be distinct, non-empty names"),
        ({"num_encoder_layers": 0}, "num_encoder_layers must be at least 1, got 0"),
        ({"hidden_dim": -16}, "hidden_dim must be at least 1, got -16"),
        ({"scratch_vocab_size": 4}, "scratch_vocab_size must be at least 16, got 4"),
    ],
)
def test_bad_config_values(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    assert message in one_line_error(["distill", "--config", str(path)], capsys)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["distill", "--kd_weight", "nan"], "kd_weight must be a finite number >= 0, got nan"),
        (["distill", "--learning_rate=-1e-3"], "learning_rate must be at least 0, got -0.001"),
        (["distill", "--label_smoothing_factor", "1.5"], "label_smoothing_factor must be in [0, 1), got 1.5"),
        (["benchmark", "--benchmark_batch_size", "-4"], "benchmark_batch_size must be at least 1, got -4"),
        (["benchmark", "--latency_examples", "0"], "latency_examples must be at least 1, got 0"),
        (["benchmark", "--warmup_batches", "-1"], "warmup_batches must be at least 0, got -1"),
        (["benchmark", "--num_beams", "0"], "num_beams must be at least 1, got 0"),
        (["benchmark", "--benchmark_split", "dev"], "benchmark_split must be train, validation or test, got 'dev'"),
        (["benchmark", "--device", "gpu0"], "device 'gpu0' is not a device name; use cpu, cuda or cuda:N"),
    ],
)
def test_bad_flag_values(capsys, argv, message):
    assert message in one_line_error(argv, capsys)


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"source_prefix: r\xe9sum\xe9\n")
    assert "is not UTF-8 text; re-encode it as UTF-8" in one_line_error(["distill", "--config", str(path)], capsys)


def test_good_values_still_parse():
    parsed = parse_command(COMMANDS["benchmark"], ["--device", "cpu", "--warmup_batches", "0", "--num_sample_predictions", "0"])
    assert parsed[BenchmarkArguments].device == "cpu"
    assert parse_command(COMMANDS["distill"], ["--trust_remote_code"])[ModelArguments].trust_remote_code is True


# ---- data files ------------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "name,content,message",
    [
        (
            "data.csv",
            b"story,abstract\n" + "caf\xe9,ok\n".encode("latin-1") * 8,
            r"is not UTF-8 text \(invalid byte at offset 18\)",
        ),
        (
            "data.jsonl",
            '{"story": "caf\xe9", "abstract": "x"}\n'.encode("latin-1") * 8,
            r"is not UTF-8 text \(invalid byte at offset 14\)",
        ),
        ("data.json", "story\nabc".encode("utf-16"), r"is not UTF-8 text \(invalid byte at offset 0\)"),
        (
            "data.jsonl",
            b'{"story": "a", "abstract": "b"}\n{"story": "a", \n',
            "could not read the train file .*: line 2 is not valid JSON",  # 1-based, as an editor shows it
        ),
        (
            "data.csv",
            b"story,abstract\na,b\nc,d,e,f\n",
            "could not read the train file .*: line 3 has 4 fields but the header has 2",
        ),
        ("data.csv", b"story,abstract\n", "the train file .* has no rows; add examples"),
        ("data.parquet", b"PAR1 not really parquet", "could not read the train file .*Parquet"),
        ("data.jsonl", b"\n\n  \n", "the train split file .* is empty"),
    ],
)
def test_unreadable_data_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        load_raw_splits(DataArguments(dataset_local_path=str(path)), "seq2seq")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_the_file_at_fault_is_named_in_a_folder_of_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "validation.jsonl", ROWS[:4])
    (tmp_path / "test.jsonl").write_text('{"story": "a", "abstract": "b"}\nnot json\n')
    with pytest.raises(InputError, match=r"could not read the test file '.*test.jsonl'"):
        load_raw_splits(DataArguments(dataset_local_path=str(tmp_path)), "seq2seq")


def test_a_broken_save_to_disk_folder(tmp_path):
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    next((tmp_path / "saved" / "train").glob("*.arrow")).write_bytes(b"junk")
    with pytest.raises(InputError, match="looks like a folder saved with save_to_disk but could not be read"):
        load_raw_splits(DataArguments(dataset_local_path=str(tmp_path / "saved")), "seq2seq")


def test_an_input_column_with_nothing_in_it(tmp_path, tokenizer_for):
    source = write_jsonl(tmp_path / "d.jsonl", [{**row, "story": None if i % 2 else "  "} for i, row in enumerate(ROWS)])
    args = DataArguments(dataset_local_path=str(source), dataset_input_column="story", dataset_target_column="abstract")
    with pytest.raises(InputError, match="input column 'story' is empty in every row of the train split; fill it in or choose"):
        prepare_data(load_raw_splits(args, "seq2seq"), tokenizer_for("t5"), "seq2seq", args)


def test_targets_truncated_to_nothing(tmp_path, tokenizer_for):
    source = write_jsonl(tmp_path / "d.jsonl", ROWS)
    args = DataArguments(
        dataset_local_path=str(source), dataset_input_column="story", dataset_target_column="abstract", max_target_length=1
    )
    with pytest.raises(
        InputError, match="every target in the .* split is empty after tokenization and truncation.*raise --max_target_length"
    ):
        prepare_data(load_raw_splits(args, "seq2seq"), tokenizer_for("t5"), "seq2seq", args)


@pytest.mark.parametrize(
    "topics,known,message",
    [
        (["x", "y"], {"a": 0, "b": 1}, "labels x, y are not in the teacher's label set (a, b); relabel the data"),
        ([["a"], ["b"]], None, "column 'topic' of the train split holds lists, not labels (strings or integers)"),
        ([None, ""], None, "column 'topic' has no label in any row (all -1 or empty)"),
        ([-1, -1], None, "column 'topic' has no label in any row (all -1 or empty)"),
    ],
)
def test_bad_labels(tmp_path, tokenizer_for, topics, known, message):
    rows = [{**row, "topic": topics[i % 2]} for i, row in enumerate(ROWS)]
    raw = DatasetDict({split: Dataset.from_list(rows) for split in ("train", "validation", "test")})
    args = DataArguments(dataset_input_column="story", dataset_target_column="topic")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_data(raw, tokenizer_for("bert"), "classification", args, known)


# ---- models ----------------------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    """Config-only model folders: an error raised with them proves that no weights were loaded."""

    def save(name, config):
        config.architectures = [
            {"t5": "T5ForConditionalGeneration", "bert": "BertForSequenceClassification"}.get(config.model_type, None)
        ]
        config.save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    return save


def check(model_args: ModelArguments, training_args: dict | None = None, teacher="t5"):
    """The student checks of distill against a 4-layer teacher config, with training flags given as {flag: value}."""
    config = tiny_config(teacher, 600, hidden=32, layers=4)
    argv = [part for name, value in (training_args or {}).items() for part in (f"--{name}", *value.split())]
    parsed = parse_command(COMMANDS["distill"], argv)
    task = "classification" if teacher == "bert" else "seq2seq"
    students.check_student_plan(model_args, parsed[Seq2SeqDistillationTrainingArguments], config, task)


@pytest.mark.parametrize(
    "model_args,training_args,message",
    [
        (ModelArguments(num_encoder_layers=6), None, "--num_encoder_layers 6 is more than the teacher's 4 encoder layers"),
        (
            ModelArguments(num_layers=2),
            None,
            "a 't5' teacher takes --decoder_layer_map, --encoder_layer_map, --num_decoder_layers",
        ),
        (ModelArguments(num_encoder_layers=2), {"encoder_layer_map": "0 9"}, "encoder_layer_map index 9 is out of range"),
        (
            ModelArguments(num_encoder_layers=2),
            {"encoder_layer_map": "0 1 2"},
            "encoder_layer_map has 3 entries but the student has 2",
        ),
    ],
)
def test_layer_flags_are_checked_against_the_teacher_config(model_args, training_args, message):
    with pytest.raises(InputError, match=message):
        check(model_args, training_args)


def test_a_student_of_another_family(folders):
    student = folders("bert", tiny_config("bert", 600, hidden=16, layers=1))
    with pytest.raises(InputError, match="--student is a 'bert' model but the teacher is a 't5' model; distill into a student"):
        check(ModelArguments(student=student))


def test_a_student_of_another_family_of_the_task_is_taken(folders):
    """Families of one task share the target text (CE on the teacher's pseudo-labels, or the span terms across
    tokenizers), so families need not match, but feature terms have no layers to pair; the student must still be a
    model of the run's task."""
    bart = folders("bart", tiny_config("bart", 900, hidden=64, layers=6))  # bigger too: sizes of two families differ
    check(ModelArguments(student=bart), {"kd_weight": "0"})
    check(ModelArguments(student=bart), {"kd_weight": "0", "uld_weight": "0.5"})
    with pytest.raises(InputError, match=r"hidden_weight = 1: feature terms pair the layers of one model family.*--uld_weight"):
        check(ModelArguments(student=bart), {"hidden_weight": "1"})
    bert = folders("bert", tiny_config("bert", 600, hidden=16, layers=1))
    with pytest.raises(InputError, match="--student is a 'bert' model but the teacher is a 't5' model"):
        check(ModelArguments(student=bert), {"kd_weight": "0"})


def test_a_student_bigger_than_the_teacher(folders, caplog):
    bigger = folders("big", tiny_config("t5", 600, hidden=64, layers=2))
    with pytest.raises(InputError, match=r"--student has [\d,]+ parameters, more than the teacher's [\d,]+.*swapped"):
        check(ModelArguments(student=bigger))
    deeper_but_smaller = folders("deep", tiny_config("t5", 600, hidden=8, layers=6, heads=2))
    with caplog.at_level(logging.WARNING, logger="seq2seq_distill"):
        check(ModelArguments(student=deeper_but_smaller))  # a warning, not an error: deep-and-thin students exist
    assert "the student has more encoder layers (6) than the teacher (4) but fewer parameters" in caplog.text
    with pytest.raises(InputError, match="encoder_layer_map has 2 entries but the student has 6 layers"):
        check(ModelArguments(student=deeper_but_smaller), {"encoder_layer_map": "0 1"})


def test_distilbert_students_of_bert_teachers_are_allowed(folders):
    distilbert = DistilBertConfig(vocab_size=600, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    check(ModelArguments(student=folders("distilbert", distilbert)), teacher="bert")


def test_distill_refuses_a_bad_student_before_loading_any_weights(folders, tmp_path, capsys):
    teacher = folders("teacher", tiny_config("t5", 600, hidden=32, layers=2))  # config.json only: no weights at all
    student = folders("student", tiny_config("bert", 600, hidden=16, layers=1))
    data = write_jsonl(tmp_path / "d.jsonl", [{"document": r["story"], "summary": r["abstract"]} for r in ROWS])
    argv = ["distill", "--teacher", teacher, "--student", student, "--dataset_local_path", str(data)]
    assert "--student is a 'bert' model but the teacher is a 't5' model" in one_line_error(argv, capsys)
    argv = ["distill", "--teacher", teacher, "--num_decoder_layers", "3", "--dataset_local_path", str(data)]
    assert "--num_decoder_layers 3 is more than the teacher's 2 decoder layers" in one_line_error(argv, capsys)


def test_vocabulary_mismatch():
    assert shared_output_size(32128, 32100, 32100, "seq2seq") == 32100  # T5's padded rows are fine
    with pytest.raises(InputError, match="vocabulary mismatch: the student has 500 vocabulary rows but the teacher has 600"):
        shared_output_size(500, 600, 600, "seq2seq")


# ---- what a terminal shows for bad data ------------------------------------------------------------------------

_DRIVER = """
import json, sys
from seq2seq_distill.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    sys.stdout.flush(); sys.stderr.flush()
    sys.stderr.write(f"=== exit {code}\\n"); sys.stderr.flush()
"""


def _terminal_output(argvs: list[list[str]], cwd) -> list[tuple[int, list[str]]]:
    """Run each argv through the CLI in one process on a pseudo-terminal; per run: (exit code, lines it printed)."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("SEQ2SEQ_DISTILL_DEBUG", None)
    process = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, json.dumps(argvs)], stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    runs, lines = [], []
    for line in text.split("\n"):
        if line.startswith("=== exit "):
            runs.append((int(line.split()[-1]), lines))
            lines = []
        elif line.strip():
            lines.append(line)
    return runs


def test_bad_data_files_show_one_line_on_a_terminal(tmp_path):
    """Malformed files and bad columns: exactly one line, ours, with 1-based line numbers; no library log or bar."""
    rows = [json.dumps({"story": f"story {i} about a cat", "abstract": f"tale {i}"}) for i in range(10)]
    files = {
        "cut.jsonl": "\n".join(rows[:6]) + "\n" + rows[6][:15] + "\n" + "\n".join(rows[7:]) + "\n",
        "array.jsonl": "\n".join(rows[:6]) + "\n[1, 2]\n" + "\n".join(rows[7:]) + "\n",
        "quote.csv": "story,abstract\n" + "".join(f"s{i},t{i}\n" for i in range(6)) + '"never closed,t\ns8,t8\n',
        "extra.csv": "story,abstract\n" + "".join(f"s{i},t{i}\n" for i in range(6)) + "a,b,c\ns8,t8\n",
        "objects.jsonl": "".join(json.dumps({"story": f"s{i}", "abstract": {"text": "t"}}) + "\n" for i in range(10)),
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    expected = {
        "cut.jsonl": "could not read the train file 'cut.jsonl': line 7 is not valid JSON",
        "array.jsonl": "could not read the train file 'array.jsonl': line 7 is a JSON array, not an object",
        "quote.csv": "could not read the train file 'quote.csv': the quote opened on line 8 is never closed",
        "extra.csv": "could not read the train file 'extra.csv': line 8 has 3 fields but the header has 2",
        "objects.jsonl": "column 'abstract' of the train split holds objects, not text",
    }
    argvs = [
        ["train_teacher", "--dataset_local_path", name, "--dataset_input_column", "story", "--dataset_target_column",
         "abstract", "--output_dir", str(tmp_path / "out")]
        for name in files
    ]  # fmt: skip
    runs = _terminal_output(argvs, tmp_path)
    assert len(runs) == len(files)
    for name, (code, lines) in zip(files, runs, strict=True):
        assert code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected[name] in lines[0], (name, lines)


def test_a_folder_that_holds_no_model_is_one_line_naming_what_it_holds(tmp_path, folders, capsys):
    """The output folder of a run that stopped (only checkpoints/) and other non-model folders, wherever a model is read."""
    teacher = folders("teacher", tiny_config("t5", 600, hidden=32, layers=2))
    stopped = tmp_path / "stopped"
    complete, cut_off = stopped / "checkpoints" / "checkpoint-2", stopped / "checkpoints" / "checkpoint-3"
    for checkpoint in (complete, cut_off):
        checkpoint.mkdir(parents=True)
        tiny_config("t5", 600, hidden=32, layers=1).save_pretrained(checkpoint)
    (complete / "model.safetensors").write_bytes(b"")
    (complete / "trainer_state.json").write_text("{}")  # checkpoint-3 has no trainer_state.json: cut off while saving
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    data_flags = ["--dataset_local_path", str(data), "--dataset_input_column", "story", "--dataset_target_column", "abstract"]
    stopped_message = (
        f"holds no model, only checkpoints/ (a run that did not finish); pass {complete}, or finish the run with "
        "--resume_from_checkpoint latest"
    )
    cases = [
        (["benchmark", "--models", teacher, str(stopped)], f"--models {str(stopped)!r} {stopped_message}"),
        (
            ["distill", "--teacher_local_path", str(stopped), *data_flags],
            f"--teacher_local_path {str(stopped)!r} {stopped_message}",
        ),
        (
            ["distill", "--teacher", teacher, "--student", str(stopped), *data_flags],
            f"--student {str(stopped)!r} {stopped_message}",
        ),
        (["make_student", "--teacher", str(stopped)], f"--teacher {str(stopped)!r} {stopped_message}"),
        (["distill", "--teacher", str(tmp_path / "empty"), *data_flags], "is an empty folder, not a saved model"),
        (["benchmark", "--models", str(other)], "holds no model (no config.json; it has: readme.txt)"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        printed = capsys.readouterr().err.strip().splitlines()  # one line: not even a warning about checkpoint-3
        assert len(printed) == 1 and printed[0].startswith("error: ") and message in printed[0], (argv, printed)


def test_review_cases_of_bad_input(tmp_path, capsys):
    """A .jsonl whose first line is an array, tiny splits carved like datasets rounds, an unreadable tokenizer folder."""
    from seq2seq_distill.arguments import Seq2SeqDistillationTrainingArguments as Args
    from seq2seq_distill.training import evaluates

    lines = tmp_path / "first.jsonl"
    lines.write_text('[1, 2]\n{"story": "a", "abstract": "b"}\n')
    args = DataArguments(dataset_local_path=str(lines), dataset_input_column="story", dataset_target_column="abstract")
    with pytest.raises(InputError, match="first.jsonl': line 1 is a JSON array, not an object"):
        load_raw_splits(args, "seq2seq")
    five = write_jsonl(tmp_path / "five.jsonl", ROWS[:5])
    carved = load_raw_splits(DataArguments(dataset_local_path=str(five), dataset_input_column="story"), "seq2seq")
    assert {split: len(rows) for split, rows in carved.items()} == {"train": 3, "validation": 1, "test": 1}
    broken = tmp_path / "tokenizer"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{}")
    (broken / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    from seq2seq_distill.modeling import load_tokenizer

    with pytest.raises(InputError, match="--custom_tokenizer_local_path .* has no readable tokenizer files"):
        load_tokenizer(str(broken), flag="--custom_tokenizer_local_path")
    # a causal-LM run that validates by generation reads the validation split even without an eval strategy
    assert evaluates(Args(output_dir=str(tmp_path), eval_strategy="no", predict_with_generate=True), "causal_lm")
    assert not evaluates(Args(output_dir=str(tmp_path), eval_strategy="no", predict_with_generate=True), "seq2seq")
    assert not evaluates(Args(output_dir=str(tmp_path), eval_strategy="no"), "causal_lm")
