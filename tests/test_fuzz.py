"""Fuzz tests of the two loaders of user files: config files and data files.

Hypothesis writes malformed inputs (near-miss keys, wrong-typed and nested values, broken YAML / JSON, non-UTF-8
bytes; jsonl with broken lines, ragged csv, binary junk, empty files, missing or empty columns). Every input must
either load or fail with one ``InputError`` -- never another exception from deep inside a library -- and a failed
command must leave no output behind that could be taken for a finished one.
"""

import json
import os
import re
import string
import tempfile
from pathlib import Path

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seq2seq_distill.arguments import DataArguments
from seq2seq_distill.cli import COMMANDS, all_setting_names, main, parse_command
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError

# CI runs a fixed set of examples (derandomized); SEQ2SEQ_DISTILL_FUZZ_EXAMPLES=5000 explores new ones each run.
DEEP = int(os.environ.get("SEQ2SEQ_DISTILL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=not DEEP, database=None)
REAL_KEYS = sorted(all_setting_names())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder for every example, and a private datasets cache so the fuzzing leaves no cache behind."""
    root = tmp_path_factory.mktemp("fuzz")
    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = str(root / "datasets_cache")
    datasets.disable_progress_bars()
    yield root
    datasets.config.HF_DATASETS_CACHE = previous
    datasets.enable_progress_bars()


def _fresh_folder(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


# ---- config files ----------------------------------------------------------------------------------------------


def _near_miss(key: str, edit: int, position: int) -> str:
    """A one-character typo of a real key: dropped, doubled, swapped with its neighbour, or a dash for the underscore."""
    i = position % len(key)
    if edit == 0:
        return key[:i] + key[i + 1 :] or key + "x"
    if edit == 1:
        return key[:i] + key[i] + key[i:]
    if edit == 2 and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    return key.replace("_", "-") if "_" in key else key.upper()


real_keys = st.sampled_from(REAL_KEYS)
keys = st.one_of(
    real_keys,
    real_keys,
    real_keys,
    real_keys,
    st.builds(_near_miss, st.sampled_from(REAL_KEYS), st.integers(0, 3), st.integers(0, 40)),
    st.text(string.ascii_letters + "_-. ", min_size=1, max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["none", "epoch", "steps", "t5", "latest", "1e-4", "yes", "0,6,11", "-1", "nan", ""]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6
)
mappings = st.dictionaries(keys, st.one_of(scalars, scalars, scalars, values), max_size=4)


@st.composite
def config_files(draw):
    """(suffix, bytes): a YAML or JSON mapping, a non-mapping document, broken syntax, or raw bytes."""
    suffix = draw(st.sampled_from([".yaml", ".yaml", ".yml", ".json", ".json", ".txt"]))
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "document", "truncated", "bytes", "latin1"]))
    content = draw(mappings) if kind in ("mapping", "truncated", "latin1") else draw(values)
    if suffix == ".json":
        text = json.dumps(content)
    else:
        text = yaml.safe_dump(content, allow_unicode=True)
    if kind == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))] + draw(st.sampled_from(["", "{", "[", ": :", "'", "\t-"]))
    data = text.encode("utf-8")
    if kind == "bytes":
        data = draw(st.binary(max_size=64))
    if kind == "latin1":
        data = text.encode("utf-8") + b"\nkd_weight: caf\xe9\n"
    return suffix, data


@settings(FUZZ, max_examples=DEEP or 250)
@given(config=config_files(), command=st.sampled_from(["distill", "train_teacher", "pipeline", "benchmark"]))
def test_config_files_load_or_fail_with_one_input_error(workdir, config, command, capsys):
    suffix, data = config
    folder = _fresh_folder(workdir)
    os.chdir(folder)  # a create_config / output_dir value in the file may be any relative path
    (folder / f"config{suffix}").write_bytes(data)
    template = folder / "template" / "written.yaml"
    before = set(os.listdir(folder))
    try:
        status = main([command, "--config", f"config{suffix}", "--create-config", str(template)])
    finally:
        os.chdir(workdir)
    error = capsys.readouterr().err.strip()
    event(f"exit status {status}: " + error[:80])
    assert status in (0, 2)
    if status == 2:
        assert error.startswith("error: ") and "\n" not in error, error
        assert set(os.listdir(folder)) == before, "a failed command left files behind"
        return
    # Accepted: the template it wrote reads back as the same settings.
    again = parse_command(COMMANDS[command], ["--config", str(template)])
    first = parse_command(COMMANDS[command], ["--config", str(folder / f"config{suffix}")])
    for kind, obj in first.items():
        if kind.__name__ in ("ModelArguments", "DataArguments", "BenchmarkArguments"):
            assert again[kind] == obj, kind


def test_a_typo_in_a_config_key_is_named_with_the_fix(workdir, capsys):
    path = _fresh_folder(workdir) / "c.yaml"
    path.write_text("kd_wieght: 0.5\n")
    assert main(["distill", "--config", str(path)]) == 2
    assert "config key 'kd_wieght' is not a setting of any command; did you mean 'kd_weight'?" in capsys.readouterr().err


# ---- data files ------------------------------------------------------------------------------------------------

COLUMNS = ["document", "summary", "text", "label", "story", "x"]
texts = ["the cat sat on the mat", "World", "Sports", "dogs and cats", "a file of text", "Tech", "x y z", "ok"]
words = st.sampled_from(["", " ", *texts, *texts])
cells = st.one_of(
    words,
    words,
    words,
    st.text(max_size=30),
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=1),
)


@st.composite
def records(draw):
    """Rows of one file: mostly the same columns in every row, as real files have, sometimes one left out."""
    schemas = st.sampled_from([["document", "summary"], ["text", "label"], ["story", "label", "x"]])
    columns = draw(schemas | schemas | st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4, unique=True))
    count = draw(st.integers(0, 20))
    clean = draw(st.booleans())  # half the files hold only text: they get past loading into tokenization
    rows = []
    for _ in range(count):
        row = {name: draw(words if clean else cells) for name in columns}
        if row and draw(st.integers(0, 9)) == 0:
            row.pop(draw(st.sampled_from(sorted(row))))
        rows.append(row)
    return columns, rows


@st.composite
def data_files(draw):
    """(suffix, bytes) of a data file that is often broken in one of the ways users' files are."""
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet"]))
    kind = draw(st.sampled_from(["rows"] * 5 + ["broken_line", "ragged", "junk", "empty", "latin1"]))
    if kind == "junk":
        return suffix, draw(st.binary(max_size=200))
    if kind == "empty":
        return suffix, draw(st.sampled_from([b"", b"\n", b"   \n\n"]))
    columns, rows = draw(records())
    if suffix in (".csv", ".tsv"):
        separator = "," if suffix == ".csv" else "\t"
        lines = [separator.join(columns)]
        for row in rows:
            fields = ["" if row.get(name) is None else str(row[name]).replace("\n", " ") for name in columns]
            if kind == "ragged":
                fields = fields[: draw(st.integers(0, len(fields)))] + ["extra"] * draw(st.integers(0, 2))
            lines.append(separator.join(fields))
        text = "\n".join(lines) + "\n"
    elif suffix == ".json" and kind != "broken_line":
        text = json.dumps(rows)
    else:  # .jsonl, and .parquet files that are really jsonl (a wrong extension)
        lines = [json.dumps(row) for row in rows]
        if kind == "broken_line" and lines:
            index = draw(st.integers(0, len(lines) - 1))
            lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
        text = "\n".join(lines) + "\n"
    data = text.encode("utf-8")
    if kind == "latin1":
        data = data.replace(b"the", b"th\xe9") + b"caf\xe9\n"
    return suffix, data


@settings(FUZZ, max_examples=DEEP or 250)
@given(
    data=data_files(),
    task=st.sampled_from(["seq2seq", "classification", "causal_lm"]),
    columns=st.sampled_from([{}, {"dataset_input_column": "story", "dataset_target_column": "label"}]),
)
def test_data_files_load_or_fail_with_one_input_error(workdir, tokenizer_for, data, task, columns):
    suffix, content = data
    path = _fresh_folder(workdir) / f"data{suffix}"
    path.write_bytes(content)
    args = DataArguments(dataset_local_path=str(path), max_source_length=16, max_target_length=8, **columns)
    tokenizer = tokenizer_for({"seq2seq": "t5", "classification": "bert", "causal_lm": "gpt2"}[task])
    try:
        raw = load_raw_splits(args, task)
    except InputError as error:
        event("load: " + re.sub(r"'/[^']*'", "PATH", str(error))[:100])
        assert "\n" not in str(error).strip(), error
        return
    try:
        prepared = prepare_data(raw, tokenizer, task, args)
    except InputError as first:
        event("prepare: " + re.sub(r"'/[^']*'", "PATH", str(first))[:100])
        # A failed tokenization must not leave a cached result that the next run would take for a finished one.
        with pytest.raises(InputError) as second:
            prepare_data(load_raw_splits(args, task), tokenizer, task, args)
        assert str(second.value) == str(first)
        return
    event("loaded and tokenized")
    assert set(prepared.tokenized) == {"train", "validation", "test"}
    assert all(len(split) > 0 for split in prepared.tokenized.values())
