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
    other_seed = load_raw_splits(DataArguments(dataset_local_path=str(source), split_seed=7), "seq2seq")
    assert other_seed["test"]["story"] != first["test"]["story"]


def test_missing_column_lists_the_columns(tmp_path):
    source = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    raw = load_raw_splits(DataArguments(dataset_local_path=str(source)), "seq2seq")
    with pytest.raises(
        InputError, match="no input column found; columns are: story, abstract, topic. Set --dataset_input_column"
    ):
        prepare_data(raw, None, "seq2seq", DataArguments(dataset_local_path=str(source)))
    args = DataArguments(dataset_local_path=str(source), dataset_input_column="article", dataset_target_column="abstract")
    with pytest.raises(InputError, match="column 'article' not in the train split; columns are: story, abstract, topic"):
        prepare_data(raw, None, "seq2seq", args)


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
    with pytest.raises(InputError, match="no validation split and too little train data"):
        load_raw_splits(DataArguments(dataset_local_path=str(empty)), "seq2seq")
    (empty / "dev.jsonl").write_text("")
    with pytest.raises(InputError, match="the validation split file .*dev.jsonl. is empty"):
        load_raw_splits(DataArguments(dataset_local_path=str(empty)), "seq2seq")
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"story": row["story"], "abstract": ""} for row in ROWS])
    args = DataArguments(dataset_local_path=str(blank), dataset_input_column="story", dataset_target_column="abstract")
    with pytest.raises(InputError, match="every target in the train split is empty"):
        prepare_data(load_raw_splits(args, "seq2seq"), tokenizer_for("t5"), "seq2seq", args)
    with pytest.raises(InputError, match="validation_fraction must be in"):
        DataArguments(validation_fraction=0.7)
