"""Data sources -> splits -> tokenized examples, and the errors a user's own data can hit."""

import json

import pytest
from datasets import Dataset, DatasetDict

from seq2seq_distill.arguments import DataArguments
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError

ROWS = [
    {
        "story": f"Story number {i} tells of a {'cat' if i % 2 else 'dog'} that went to town.",
        "abstract": f"A tale {i}.",
        "topic": "Sci/Tech" if i % 3 == 0 else ("World" if i % 3 == 1 else "Sports"),
    }
    for i in range(40)
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_jsonl_with_other_columns_gets_deterministic_carved_splits(tmp_path):
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    args = DataArguments(dataset_local_path=str(source), dataset_input_column="story", dataset_target_column="abstract")
    first, second = load_raw_splits(args, "seq2seq"), load_raw_splits(args, "seq2seq")
    assert {split: len(d) for split, d in first.items()} == {"train": 32, "validation": 4, "test": 4}
    assert first["test"]["story"] == second["test"]["story"], "carving must be seeded"
    assert set(first["train"]["story"]).isdisjoint(first["test"]["story"])
    other_seed = load_raw_splits(
        DataArguments(dataset_local_path=str(source), dataset_input_column="story", split_seed=7), "seq2seq"
    )
    assert other_seed["test"]["story"] != first["test"]["story"]


def test_missing_column_lists_the_columns(tmp_path):
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    with pytest.raises(
        InputError, match="no input column found; columns are: story, abstract, topic. Set --dataset_input_column"
    ):
        load_raw_splits(DataArguments(dataset_local_path=str(source)), "seq2seq")
    args = DataArguments(dataset_local_path=str(source), dataset_input_column="article", dataset_target_column="abstract")
    with pytest.raises(
        InputError, match="column 'article' is missing from the train file .*; its columns are: story, abstract, topic"
    ):
        load_raw_splits(args, "seq2seq")
    raw = load_raw_splits(DataArguments(dataset_local_path=str(source), dataset_input_column="story"), "seq2seq")
    with pytest.raises(
        InputError, match="column 'article' is missing from the train split; its columns are: story, abstract, topic"
    ):
        prepare_data(raw, None, "seq2seq", args)  # data built in Python, checked again when tokenized


def test_headerless_csv_with_column_names(tmp_path, tokenizer_for):
    source = tmp_path / "data.csv"
    source.write_text("".join(f'"{row["story"]}",{row["topic"]}\n' for row in ROWS))
    args = DataArguments(
        dataset_local_path=str(source),
        dataset_column_names=["body", "category"],
        dataset_input_column="body",
        dataset_target_column="category",
    )
    raw = load_raw_splits(args, "classification")
    assert raw["train"].column_names == ["body", "category"] and sum(len(d) for d in raw.values()) == 40
    data = prepare_data(raw, tokenizer_for("bert"), "classification", args)
    assert data.label_names == ["Sci/Tech", "Sports", "World"]  # strings -> ids in sorted order
    first = raw["train"][0]
    assert data.tokenized["train"][0]["labels"] == data.label_names.index(first["category"])


def test_split_files_in_a_folder_like_sst2(tmp_path):
    for split, count in (("train", 12), ("dev", 4), ("test", 3)):
        lines = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} film number {i}\t{i % 2}" for i in range(count)]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    raw = load_raw_splits(DataArguments(dataset_local_path=str(tmp_path), train_size=10), "classification")
    assert {split: len(d) for split, d in raw.items()} == {"train": 10, "validation": 4, "test": 3}
    assert raw["train"].column_names == ["sentence", "label"]


def test_save_to_disk_folder_and_labels_against_a_teacher_label_set(tmp_path, tokenizer_for):
    DatasetDict({"train": Dataset.from_list(ROWS[:30]), "test": Dataset.from_list(ROWS[30:])}).save_to_disk(
        str(tmp_path / "saved")
    )
    args = DataArguments(dataset_local_path=str(tmp_path / "saved"), dataset_input_column="story", dataset_target_column="topic")
    raw = load_raw_splits(args, "classification")
    assert len(raw["test"]) == 10 and len(raw["validation"]) == 3
    teacher_labels = {"World": 0, "Sports": 1, "Sci/Tech": 2}
    data = prepare_data(raw, tokenizer_for("bert"), "classification", args, teacher_labels)
    assert data.label_names == ["World", "Sports", "Sci/Tech"]
    assert all(data.label_names[t["labels"]] == r["topic"] for t, r in zip(data.tokenized["test"], raw["test"]))
    with pytest.raises(InputError, match="labels Sports are not in the teacher's label set"):
        prepare_data(raw, tokenizer_for("bert"), "classification", args, {"World": 0, "Sci/Tech": 1})


def test_tokenization_per_task(tokenizer_for):
    args = DataArguments(max_source_length=16, max_target_length=6, source_prefix="summarize: ")
    raw = load_raw_splits(DataArguments(train_size=8, val_size=2, test_size=2), "seq2seq")
    seq2seq = prepare_data(raw, tokenizer_for("t5"), "seq2seq", args).tokenized["train"][0]
    assert len(seq2seq["input_ids"]) <= 16 and len(seq2seq["labels"]) <= 6
    assert tokenizer_for("t5").decode(seq2seq["input_ids"]).startswith("summarize :")
    causal = prepare_data(raw, tokenizer_for("gpt2"), "causal_lm", args).tokenized["train"][0]
    prompt_length = causal["labels"].index(next(label for label in causal["labels"] if label != -100))
    assert 0 < prompt_length <= 16 and causal["input_ids"][prompt_length:] == causal["labels"][prompt_length:]
    assert causal["labels"][-1] == tokenizer_for("gpt2").eos_token_id
    classification = load_raw_splits(DataArguments(train_size=8), "classification")
    assert set(classification["train"].column_names) == {"id", "text", "label"}


def test_bad_data_is_one_clear_error(tmp_path, tokenizer_for):
    with pytest.raises(InputError, match="--dataset_local_path '/no/such/file.jsonl' does not exist"):
        load_raw_splits(DataArguments(dataset_local_path="/no/such/file.jsonl"), "seq2seq")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (empty / "test.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    columns = dict(dataset_input_column="story", dataset_target_column="abstract")
    with pytest.raises(InputError, match="no validation split and its 1 train rows are too few to carve 10% out of"):
        load_raw_splits(DataArguments(dataset_local_path=str(empty), **columns), "seq2seq")
    (empty / "dev.jsonl").write_text("")
    with pytest.raises(InputError, match="the validation split file .*dev.jsonl. is empty"):
        load_raw_splits(DataArguments(dataset_local_path=str(empty), **columns), "seq2seq")
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"story": row["story"], "abstract": ""} for row in ROWS])
    args = DataArguments(dataset_local_path=str(blank), dataset_input_column="story", dataset_target_column="abstract")
    with pytest.raises(InputError, match="every target in the train split is empty"):
        prepare_data(load_raw_splits(args, "seq2seq"), tokenizer_for("t5"), "seq2seq", args)
    with pytest.raises(InputError, match="validation_fraction must be in"):
        DataArguments(validation_fraction=0.7)


def test_unlabelled_markers_are_the_same_everywhere(tmp_path, tokenizer_for):
    """-1 (integer or text), empty text and missing values are rows without a label, never a class of their own."""
    tokenizer = tokenizer_for("bert")
    markers = ["-1", "", None, " "]
    rows = [
        {"story": row["story"], "topic": markers[i // 5] if i % 5 == 0 and i < 20 else row["topic"]} for i, row in enumerate(ROWS)
    ]
    raw = DatasetDict({split: Dataset.from_list(rows) for split in ("train", "validation", "test")})
    args = DataArguments(dataset_input_column="story", dataset_target_column="topic")
    untrained = prepare_data(raw, tokenizer, "classification", args)
    assert untrained.label_names == ["Sci/Tech", "Sports", "World"]  # no '-1' or '' class
    labels = untrained.tokenized["train"]["labels"]
    assert [index for index, label in enumerate(labels) if label == -100] == [0, 5, 10, 15]
    trained = prepare_data(raw, tokenizer, "classification", args, {"Sci/Tech": 0, "Sports": 1, "World": 2})
    assert trained.tokenized["train"]["labels"] == labels  # a teacher's label set treats them the same way
    integers = DatasetDict(
        {split: Dataset.from_list([{"story": "a b", "topic": -1}, {"story": "c", "topic": 2}]) for split in raw}
    )
    assert prepare_data(integers, tokenizer, "classification", args).tokenized["train"]["labels"] == [-100, 0]


def test_a_column_missing_from_one_file_is_named(tmp_path):
    """Split files load one at a time, so a train file without the label column is named, not 'empty labels'."""
    folder = tmp_path / "news"
    folder.mkdir()
    (folder / "train.csv").write_text("text\n" + "".join(f"story {i}\n" for i in range(10)))
    for split in ("dev", "test"):
        (folder / f"{split}.csv").write_text("text,category\n" + "".join(f"story {i},World\n" for i in range(4)))
    args = DataArguments(dataset_local_path=str(folder), dataset_input_column="text", dataset_target_column="category")
    with pytest.raises(
        InputError, match=r"column 'category' is missing from the train file '.*train\.csv'; its columns are: text"
    ):
        load_raw_splits(args, "classification")


def test_several_input_columns(tmp_path, tokenizer_for):
    """Joined into one text for a single-input task; a text pair (as tokenizer(a, b) frames it) for a classifier."""
    rows = [{"headline": f"Headline {i}", "description": f"the body of story {i}", "topic": "ab"[i % 2]} for i in range(12)]
    raw = DatasetDict({split: Dataset.from_list(rows) for split in ("train", "validation", "test")})
    tokenizer = tokenizer_for("t5")
    args = DataArguments(dataset_input_column=["headline", "description"], dataset_target_column="topic")
    joined = prepare_data(raw, tokenizer, "seq2seq", args)
    expected = tokenizer(["Headline 0\nthe body of story 0"])["input_ids"][0]
    assert joined.tokenized["train"]["input_ids"][0] == expected
    assert joined.source_texts("train")[0] == "Headline 0\nthe body of story 0"
    bert = tokenizer_for("bert")
    paired = prepare_data(raw, bert, "classification", args)
    assert paired.tokenized["train"]["input_ids"][0] == bert("Headline 0", "the body of story 0")["input_ids"]
    assert paired.tokenized["train"]["input_ids"][0] != bert("Headline 0\nthe body of story 0")["input_ids"]
    from seq2seq_distill.cli import COMMANDS, parse_command

    parsed = parse_command(COMMANDS["distill"], ["--dataset_input_column", "headline", "description"])
    assert parsed[DataArguments].dataset_input_column == ["headline", "description"]


def test_validation_split_only_when_something_evaluates_on_it(tmp_path):
    """No rows are held out for a validation split that nothing reads; --validation_fraction 0 is allowed."""
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    columns = dict(dataset_local_path=str(source), dataset_input_column="story", dataset_target_column="abstract")
    evaluated = load_raw_splits(DataArguments(**columns), "seq2seq", evaluates=True)
    assert {split: len(d) for split, d in evaluated.items()} == {"train": 32, "validation": 4, "test": 4}
    not_evaluated = load_raw_splits(DataArguments(**columns), "seq2seq", evaluates=False)
    assert {split: len(d) for split, d in not_evaluated.items()} == {"train": 36, "test": 4}
    assert not_evaluated["test"]["story"] == evaluated["test"]["story"]  # the same test rows for every command
    asked = load_raw_splits(DataArguments(**columns, validation_fraction=0.25), "seq2seq", evaluates=False)
    assert len(asked["validation"]) == 9
    assert "validation" not in load_raw_splits(DataArguments(**columns, validation_fraction=0), "seq2seq", evaluates=False)
    with pytest.raises(InputError, match="evaluates on a validation split, but the data has none and --validation_fraction is 0"):
        load_raw_splits(DataArguments(**columns, validation_fraction=0), "seq2seq", evaluates=True)


def test_a_class_label_column_keeps_its_ids(tokenizer_for):
    """A ClassLabel column (save_to_disk of a hub dataset) holds ids already; -1 in it is still unlabelled."""
    from datasets import ClassLabel, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    split = Dataset.from_dict({"text": ["good film", "bad film", "no label"], "label": [1, 0, -1]}, features=features)
    raw = DatasetDict({"train": split, "validation": split, "test": split})
    data = prepare_data(raw, tokenizer_for("bert"), "classification", DataArguments())
    assert data.label_names == ["negative", "positive"] and data.tokenized["train"]["labels"] == [1, 0, -100]
