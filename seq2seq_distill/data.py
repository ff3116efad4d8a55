"""Data: any source -> raw train / validation / test splits -> tokenized splits and the collator of the task.

Sources, in order of precedence: ``--dataset_local_path`` (a ``save_to_disk`` folder, a data file, or a folder of
files named by split), ``--dataset`` (the hub), else the embedded standard-library docstrings. Missing validation /
test splits are carved out of train with ``--split_seed``, so every command of a config sees the same examples.
Tokenization goes through ``datasets.map`` and is cached by ``datasets`` for file-backed data.

Over 400 lines on purpose (about 880): it holds the per-format file diagnostics (the first bad jsonl / csv line,
the byte offset of non-UTF-8 text, a column missing from one file), which only make sense beside the readers they
explain, and the one tokenization of every split, a teacher's second tokenization of the same texts and the aligned
spans of the two included (across tokenizers), so that both read a row the same way. The next pieces to move out:
the file diagnostics, and the cross-tokenizer encoding (``_encode_*`` with offsets, ``_aligned_spans``, the teacher
columns' collator), each into a module of its own.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetsError
from pyarrow.lib import ArrowException
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PreTrainedTokenizerBase

from .arguments import DEFAULT_VALIDATION_FRACTION, DataArguments
from .cross_tokenizer import SPAN_COLUMNS, TEACHER_COLUMNS, span_ids
from .errors import InputError
from .stdlib_corpus import build_classification_corpus, build_summarization_corpus

logger = logging.getLogger(__name__)

# Unlabelled inputs the teacher labels: distilled, never in CE (``transfer.py``). Not a split of the source.
TRANSFER_SPLIT = "transfer"
SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
INPUT_COLUMN_GUESSES = ("document", "article", "text", "sentence", "source", "input", "prompt", "content", "question")
TARGET_COLUMN_GUESSES = {
    "seq2seq": ("summary", "highlights", "target", "abstract", "output", "answer"),
    "classification": ("label", "labels", "class", "category", "target"),
    "causal_lm": ("completion", "summary", "highlights", "target", "output", "answer"),
}
# ``TEACHER_COLUMNS`` (the teacher's own tokenization of the inputs, carried beside the student's when their
# tokenizers differ) and ``SPAN_COLUMNS`` (the aligned spans of the two tokenizations of a target) are imported
# from ``cross_tokenizer``, which defines them because its ``shared_token_divergence`` reads them too.


@dataclass
class PreparedData:
    """Raw and tokenized splits plus what the task needs to read them back."""

    raw: DatasetDict
    tokenized: DatasetDict
    task: str
    input_columns: list[str]
    target_column: str | None
    label_names: list[str] | None = None
    input_separator: str = "\n"
    data_args: DataArguments | None = None
    # The transfer rows, tokenized and labelled by the teacher (``transfer.training_rows``), made once per data.
    transfer_rows: Dataset | None = None
    # The teacher's tokenizer when it differs from the student's: the splits then carry ``TEACHER_COLUMNS``.
    teacher_tokenizer: PreTrainedTokenizerBase | None = None

    def source_texts(self, split: str) -> list[str]:
        """The inputs of a split as one text each (several input columns joined), for reports and tokenizers."""
        return joined_inputs(self.raw[split], self.input_columns, self.input_separator)


# ---- sources ---------------------------------------------------------------------------------------------------


def load_raw_splits(
    data_args: DataArguments, task: str, *, evaluates: bool = True, known_labels: dict[str, int] | None = None
) -> DatasetDict:
    """train / validation / test splits of the configured source, checked, subsets applied, none empty.

    Columns, their types and the labels are checked before any split is carved or any progress bar starts, so bad
    input shows only its error. ``evaluates``: whether the command reads the validation split; without it (and
    without an explicit --validation_fraction) no training rows are held out for one.
    """
    origins: dict[str, str] = {}
    if data_args.dataset_local_path:
        raw, origins = _load_local(data_args.dataset_local_path, data_args.dataset_column_names)
    elif data_args.dataset:
        raw = _load_hub(data_args.dataset, data_args.dataset_config)
    else:
        raw = DatasetDict({"train": embedded_dataset(task)})
    raw = _canonical_splits(raw)
    check_columns(raw, data_args, task, known_labels, origins)
    raw = _carve_missing_splits(raw, data_args, evaluates)
    for split, size in (("train", data_args.train_size), ("validation", data_args.val_size), ("test", data_args.test_size)):
        if split in raw and size is not None and size < len(raw[split]):
            raw[split] = raw[split].select(range(size))
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise InputError(f"the {split} split is empty; check the data source or lower --validation_fraction/--test_fraction")
    return raw


def embedded_dataset(task: str) -> Dataset:
    """The standard-library docstrings: ``document``/``summary`` rows, or ``text``/``label`` for classification."""
    if task == "classification":
        return Dataset.from_list(build_classification_corpus())
    return Dataset.from_list(build_summarization_corpus())


def _load_local(path: str, column_names: Sequence[str] | None) -> tuple[DatasetDict, dict[str, str]]:
    """The splits of a local source and, per split, the file it came from (for messages)."""
    if not os.path.exists(path):
        raise InputError(f"--dataset_local_path {path!r} does not exist; give a folder saved with save_to_disk or a data file")
    if os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, marker)) for marker in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        try:
            with quiet_datasets():
                loaded = load_from_disk(path)
        except (*LOADER_ERRORS, OSError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise InputError(
                f"{path!r} looks like a folder saved with save_to_disk but could not be read ({reason}); save it again "
                "with DatasetDict.save_to_disk, or pass the data file itself"
            ) from None
        loaded = loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return loaded, {split: path for split in loaded}
    files = _split_files(path)
    for split, file in files.items():
        if os.path.getsize(file) == 0 or not _has_content(file):
            raise InputError(f"the {split} split file {file!r} is empty; add examples or remove the file")
    extensions = {os.path.splitext(file)[1].lower() for file in files.values()}
    if len(extensions) != 1:
        raise InputError(f"data files under {path!r} mix formats ({', '.join(sorted(extensions))}); use one format")
    extension = extensions.pop()
    file_format = FILE_FORMATS[extension]
    options = {}
    if extension == ".tsv":
        options["delimiter"] = "\t"
    if column_names:
        if file_format != "csv":
            raise InputError("--dataset_column_names applies to headerless csv / tsv files only")
        options["column_names"] = list(column_names)
    if file_format != "parquet":  # pyarrow's json reader accepts bad bytes and fails later, on access
        for split, file in files.items():
            offset = _non_utf8_offset(file)
            if offset is not None:
                raise InputError(
                    f"the {split} file {file!r} is not UTF-8 text (invalid byte at offset {offset}); re-encode it as "
                    "UTF-8, e.g. iconv -f latin1 -t utf-8"
                )
    # One file at a time: each split keeps its own columns (loaded together, datasets fills a column that one file
    # lacks with empty values, or fails on the file order), and a failure names its file.
    loaded = {}
    for split, file in files.items():
        try:
            with quiet_datasets():
                loaded[split] = load_dataset(file_format, data_files={split: file}, split=split, **options)
        except LOADER_ERRORS as error:
            raise _unreadable(split, file, file_format, options, error) from None
    return DatasetDict(loaded), dict(files)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No ``datasets`` log lines or progress bars while a user's files are read: a bad file shows only our line.

    Reading local files is quick next to tokenizing them, whose progress bar (``tokenizing train``) stays on.
    """
    bars_on = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL + 1)  # its loaders log a failure at ERROR, then raise it
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_on:
            datasets.enable_progress_bars()


# What the csv / json / parquet loaders raise on a malformed file (UnicodeDecodeError, pandas' ParserError and
# ArrowInvalid are ValueErrors); caught only around load_dataset / load_from_disk of the user's own files.
LOADER_ERRORS = (DatasetsError, ArrowException, ValueError)
FORMAT_HINTS = {
    "json": "a .jsonl file holds one JSON object per line",
    "csv": "a .csv / .tsv file has a header and at most as many fields on each row; quote fields holding the delimiter",
    "parquet": "write it with pandas or pyarrow",
}


def _unreadable(split: str, file: str, file_format: str, options: dict, error: Exception) -> InputError:
    """One line naming the file that could not be read, the line (1-based, as an editor shows it) and why."""
    where = f"the {split} file {file!r}"
    problem = _first_bad_line(file, file_format, options, json_lines=file.lower().endswith(".jsonl"))
    if problem is None:
        cause = (error.__cause__ or error.__context__) if isinstance(error, DatasetsError) else error
        reason = (str(cause or error).strip().splitlines() or [type(error).__name__])[0]
        if "corresponds to no data" in reason:
            return InputError(f"{where} has no rows; add examples (a csv / tsv file needs a header line and at least one row)")
        problem = re.sub(r"\s+", " ", reason)
    return InputError(f"could not read {where}: {problem}; fix the file ({FORMAT_HINTS[file_format]})")


def _first_bad_line(file: str, file_format: str, options: dict, *, json_lines: bool = False) -> str | None:
    """Where and why a json / csv file is malformed, by our own reading (the loaders count rows from 0, or not at all).

    Only called after a loader failed, so reading the file once more costs nothing on good files.
    """
    if file_format == "json":
        return _first_bad_json_line(file, json_lines)
    if file_format == "csv":
        return _first_bad_csv_line(file, options.get("delimiter", ","), options.get("column_names"))
    return None


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _first_bad_json_line(file: str, json_lines: bool) -> str | None:
    with open(file, encoding="utf-8") as handle:
        text = handle.read()
    if not json_lines and text.lstrip().startswith("["):  # a .json file may be one document: an array of records
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            return f"line {error.lineno} is not valid JSON ({error.msg}: column {error.colno})"
        for index, record in enumerate(document if isinstance(document, list) else [], start=1):
            if not isinstance(record, dict):
                return f"element {index} of its top-level array is a JSON {_json_kind(record)}, not an object"
        return None
    first_seen: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number} is not valid JSON ({error.msg}: column {error.colno}; a record cut off?)"
        if not isinstance(record, dict):
            return f"line {number} is a JSON {_json_kind(record)}, not an object"
        for key, value in record.items():
            kind = _json_kind(value)
            if kind == "null":
                continue
            seen = first_seen.setdefault(key, (kind, number))
            if seen[0] != kind:
                return f"line {number}: field {key!r} is a {kind} there but a {seen[0]} on line {seen[1]}"
    return None


def _first_bad_csv_line(file: str, delimiter: str, column_names: Sequence[str] | None) -> str | None:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one field are fine
    with open(file, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        expected = len(column_names) if column_names else None
        start = 1
        try:
            for record in reader:
                if record:
                    if expected is None:
                        expected = len(record)
                    elif len(record) > expected:
                        source = "--dataset_column_names" if column_names else "the header"
                        return f"line {start} has {len(record)} fields but {source} has {expected}"
                start = reader.line_num + 1
        except csv.Error as error:
            if "unexpected end of data" in str(error):
                return f"the quote opened on line {start} is never closed"
            return f"line {start}: {error}"
    return None


def _non_utf8_offset(file: str) -> int | None:
    """Byte offset of the first byte that is not valid UTF-8, or None for a UTF-8 file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                return offset - pending + error.start
            if not chunk:
                return None
            offset += len(chunk)


def _has_content(file: str) -> bool:
    """False for a file of only whitespace (the loaders fail on it with a bare StopIteration)."""
    with open(file, "rb") as handle:
        return bool(handle.read(65536).strip()) or os.path.getsize(file) > 65536


def _split_files(path: str) -> dict[str, str]:
    """{split: file} for a data file or a folder of files named by split (train.csv, dev.csv, ...)."""
    supported = ", ".join(sorted(FILE_FORMATS))
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in FILE_FORMATS:
            raise InputError(f"{path!r} has an unsupported extension; use one of: {supported}")
        return {"train": path}
    files = {}
    for name in sorted(os.listdir(path)):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in FILE_FORMATS:
            continue
        for split, aliases in SPLIT_ALIASES.items():
            if stem.lower() in aliases:
                files[split] = os.path.join(path, name)
    if not files:
        raise InputError(
            f"no data files named train/validation/dev/test ({supported}) in {path!r}; name them by split or pass one file"
        )
    if "train" not in files:
        raise InputError(f"no train file in {path!r} (found: {', '.join(sorted(files))}); add train.<ext>")
    return files


def load_source(local_path: str | None, hub_name: str | None, hub_config: str | None, flag: str) -> DatasetDict:
    """The splits of a local path or a hub dataset (``flag`` names the path's flag in messages)."""
    if local_path:
        if not os.path.exists(local_path):
            raise InputError(f"{flag} {local_path!r} does not exist; give a folder saved with save_to_disk or a data file")
        return _load_local(local_path, None)[0]
    return _load_hub(hub_name, hub_config)


def _load_hub(name: str, config: str | None) -> DatasetDict:
    try:
        loaded = load_dataset(name, config)
    except (ConnectionError, OSError) as error:
        raise InputError(
            f"could not load dataset {name!r} from the Hugging Face Hub ({type(error).__name__}); this machine may be "
            "offline: download it where there is network, save_to_disk, and pass the folder with --dataset_local_path"
        ) from None
    except ValueError as error:
        if "config" in str(error).lower():
            raise InputError(f"dataset {name!r} needs a valid --dataset_config: {error}") from None
        raise
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def _canonical_splits(raw: DatasetDict) -> DatasetDict:
    splits = {}
    for split, aliases in SPLIT_ALIASES.items():
        for name in raw:
            if name.lower() in aliases:
                splits[split] = raw[name]
                break
    if "train" not in splits:
        raise InputError(f"the data has no train split (splits: {', '.join(raw)}); name one 'train'")
    return DatasetDict(splits)


def _carve_missing_splits(raw: DatasetDict, data_args: DataArguments, evaluates: bool) -> DatasetDict:
    """Test, then validation, split off train (seeded) when the source has none.

    Test is carved first and whatever the command, so every command of a config holds out the same test rows.
    A validation split is carved only when the command evaluates on it or ``--validation_fraction`` asks for one;
    a fraction of 0 carves nothing.
    """
    validation_fraction = data_args.validation_fraction
    if validation_fraction is None:
        validation_fraction = DEFAULT_VALIDATION_FRACTION if evaluates else 0.0
    for split, fraction in (("test", data_args.test_fraction), ("validation", validation_fraction)):
        if split in raw or fraction == 0:
            continue
        if len(raw["train"]) < 3 or math.ceil(fraction * len(raw["train"])) < 1:  # train_test_split rounds up
            raise InputError(
                f"the data has no {split} split and its {len(raw['train'])} train rows are too few to carve {fraction:.0%} "
                f"out of; add a {split} file or raise --{split}_fraction"
            )
        parts = raw["train"].train_test_split(test_size=fraction, seed=data_args.split_seed, shuffle=True)
        raw["train"], raw[split] = parts["train"], parts["test"]
        logger.info("carved a %s split of %d examples out of train (seed %d)", split, len(raw[split]), data_args.split_seed)
    if evaluates and "validation" not in raw:
        raise InputError(
            "this run evaluates on a validation split, but the data has none and --validation_fraction is 0: add a "
            "validation file, raise --validation_fraction, or set --eval_strategy no"
        )
    return DatasetDict({split: raw[split] for split in ("train", "validation", "test") if split in raw})


# ---- columns and labels ----------------------------------------------------------------------------------------


def resolve_columns(
    raw: DatasetDict, data_args: DataArguments, task: str, origins: dict[str, str] | None = None
) -> tuple[list[str], str | None]:
    """The input columns and the target column, checked against every split."""
    columns = raw["train"].column_names
    listing = ", ".join(columns)
    if data_args.dataset_input_column:
        input_columns = list(dict.fromkeys(data_args.dataset_input_column))
    else:
        guess = _first_present(INPUT_COLUMN_GUESSES, columns)
        if guess is None:
            raise InputError(f"no input column found; columns are: {listing}. Set --dataset_input_column")
        input_columns = [guess]
    target_column = data_args.dataset_target_column or _first_present(TARGET_COLUMN_GUESSES[task], columns)
    if target_column is None and task != "causal_lm":
        raise InputError(f"no target column found; columns are: {listing}. Set --dataset_target_column")
    flags = [("--dataset_input_column", column) for column in input_columns]
    for flag, column in [*flags, ("--dataset_target_column", target_column)]:
        if column is None:
            continue
        for split, dataset in raw.items():
            if column not in dataset.column_names:
                origin = (origins or {}).get(split)
                where = f"the {split} file {origin!r}" if origin and os.path.isfile(origin) else f"the {split} split"
                raise InputError(
                    f"column {column!r} is missing from {where}; its columns are: {', '.join(dataset.column_names)}. "
                    f"Add the column there or set {flag}"
                )
    if target_column in input_columns:
        raise InputError(f"input and target are the same column {target_column!r}; set --dataset_target_column")
    return input_columns, target_column


def check_columns(
    raw: DatasetDict,
    data_args: DataArguments,
    task: str,
    known_labels: dict[str, int] | None = None,
    origins: dict[str, str] | None = None,
) -> tuple[list[str], str | None, list[str] | None]:
    """Columns present in every split, of a usable type, inputs not all empty, labels valid: before any heavy work.

    Returns the input columns, the target column and, for classification, the label names in id order.
    """
    input_columns, target_column = resolve_columns(raw, data_args, task, origins)
    for split, dataset in raw.items():
        for column in input_columns:
            _check_type(dataset, column, split, "--dataset_input_column", text_only=True)
        if target_column is not None:
            _check_type(dataset, target_column, split, "--dataset_target_column", text_only=task != "classification")
        if all(_all_empty(dataset, column) for column in input_columns):
            named = ", ".join(repr(column) for column in input_columns)
            raise InputError(
                f"input column {named} is empty in every row of the {split} split; fill it in or choose another column "
                f"with --dataset_input_column (columns: {', '.join(dataset.column_names)})"
            )
    label_names = label_names_of(raw, target_column, known_labels) if task == "classification" else None
    return input_columns, target_column, label_names


def _check_type(dataset: Dataset, column: str, split: str, flag: str, *, text_only: bool) -> None:
    """Text columns hold strings; a label column strings or integers (a ClassLabel is integers with names)."""
    feature = dataset.features[column]
    if isinstance(feature, ClassLabel) and not text_only:
        return
    if isinstance(feature, Value):
        if feature.dtype in ("string", "large_string", "null"):
            return
        if not text_only and (feature.dtype.startswith(("int", "uint")) or feature.dtype == "bool"):
            return
        if not text_only and feature.dtype.startswith("float"):  # a column of integers with gaps reads as float
            return
        kind = f"{feature.dtype} values"
    elif isinstance(feature, dict):
        kind = "objects"
    else:
        kind = "lists" if "List" in type(feature).__name__ or "Sequence" in type(feature).__name__ else type(feature).__name__
    wanted = "text" if text_only else "labels (strings or integers)"
    raise InputError(f"column {column!r} of the {split} split holds {kind}, not {wanted}; choose another column with {flag}")


def _first_present(candidates: Sequence[str], columns: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in columns), None)


def _unlabelled(value) -> bool:
    """A row without a label: -1 (GLUE test splits; any negative integer, also as text), empty text, None or NaN.

    Such rows are not a class: they take no part in CE, and are still distilled (KD needs no label).
    """
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value < 0
    if isinstance(value, float):
        return math.isnan(value) or value < 0
    if isinstance(value, str):
        text = value.strip()
        return not text or bool(re.fullmatch(r"-\d+", text))
    return False


def _label_name(value) -> str:
    """Labels read as floats (an integer column with empty cells) are named like the integers they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


def label_names_of(raw: DatasetDict, target_column: str, known: dict[str, int] | None = None) -> list[str]:
    """Label names in id order: a ClassLabel's names, the teacher's labels, or the sorted distinct values."""
    feature = raw["train"].features[target_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    distinct = {}
    for split in raw.values():
        for value in split[target_column]:
            if not isinstance(value, (str, int, float, type(None))):
                raise InputError(
                    f"column {target_column!r} holds {type(value).__name__} values, not labels; labels must be strings "
                    "or integers: set --dataset_target_column"
                )
            if not _unlabelled(value):
                name = _label_name(value)
                distinct.setdefault(name, (str(type(value)), int(value) if isinstance(value, float) else value))
    names = sorted(distinct, key=lambda name: distinct[name])
    if known:
        unknown = [name for name in names if name not in known]
        if unknown:
            raise InputError(
                f"labels {', '.join(unknown[:5])} are not in the teacher's label set ({', '.join(known)}); "
                "relabel the data or fine-tune the teacher on it"
            )
        return [name for name, _ in sorted(known.items(), key=lambda item: item[1])]
    if not names:
        raise InputError(
            f"column {target_column!r} has no label in any row (all -1 or empty); a teacher with a trained head can "
            "distill unlabelled rows, but the label set must come from somewhere: label some rows or pass such a teacher"
        )
    return names


def has_trained_labels(config) -> dict[str, int] | None:
    """The model's label2id when it names real labels (not the LABEL_0 placeholders of an untrained head)."""
    label2id = getattr(config, "label2id", None) or {}
    if not label2id or all(name.startswith("LABEL_") for name in label2id):
        return None
    return {str(name): int(index) for name, index in label2id.items()}


# ---- tokenization ----------------------------------------------------------------------------------------------


def prepare_data(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    data_args: DataArguments,
    label2id: dict[str, int] | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreparedData:
    """Tokenize every split for ``task``; classification labels become ids (names kept in ``label_names``).

    ``teacher_tokenizer``: the teacher's, when it may differ from ``tokenizer`` (the student's). If their vocabularies
    differ, each split also carries the teacher's tokenization of the same inputs in ``TEACHER_COLUMNS``.
    """
    input_columns, target_column, label_names = check_columns(raw, data_args, task, label2id)
    if teacher_tokenizer is not None and same_tokenizer(tokenizer, teacher_tokenizer):
        teacher_tokenizer = None
    if teacher_tokenizer is not None:
        check_cross_tokenizer(task, raw, data_args, (tokenizer, teacher_tokenizer))
    tokenized = DatasetDict(
        {
            split: _tokenize_split(
                dataset, tokenizer, task, data_args, input_columns, target_column, label_names, split, teacher_tokenizer
            )
            for split, dataset in raw.items()
        }
    )
    return PreparedData(
        raw,
        tokenized,
        task,
        input_columns,
        target_column,
        label_names,
        data_args.input_column_separator,
        data_args,
        teacher_tokenizer=teacher_tokenizer,
    )


def same_tokenizer(first: PreTrainedTokenizerBase, second: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers share one vocabulary (then one tokenization serves both models)."""
    return first is second or first.get_vocab() == second.get_vocab()


def check_cross_tokenizer(
    task: str, raw: DatasetDict, data_args: DataArguments, tokenizers: Sequence[PreTrainedTokenizerBase] = ()
) -> None:
    """What a student with a tokenizer of its own can be distilled on: no transfer set, and for token-level tasks
    fast tokenizers (their character offsets align the two tokenizations)."""
    slow = [type(each).__name__ for each in tokenizers if not getattr(each, "is_fast", False)]
    if task != "classification" and slow:
        raise InputError(
            f"token-level distillation across tokenizers aligns the two tokenizations by character offsets, which "
            f"{', '.join(slow)} cannot give; load the fast tokenizer (AutoTokenizer with use_fast=True, a tokenizer.json)"
        )
    if TRANSFER_SPLIT in raw or data_args.augment_copies > 0:
        raise InputError(
            "a transfer set (or augmentation) is not supported yet when the student's tokenizer differs from the "
            "teacher's; drop the transfer / augmentation flags, or give the student the teacher's tokenizer"
        )


def tokenize_rows(data: PreparedData, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, split: str) -> Dataset:
    """Raw rows with the data's columns, tokenized as ``prepare_data`` tokenized its splits (e.g. new transfer rows)."""
    return _tokenize_split(
        dataset,
        tokenizer,
        data.task,
        data.data_args,
        data.input_columns,
        data.target_column,
        data.label_names,
        split,
        data.teacher_tokenizer,
    )


def _all_empty(dataset: Dataset, column: str) -> bool:
    """True when every value of ``column`` is None or blank text; stops at the first value with content."""
    for batch in dataset.select_columns([column]).iter(batch_size=1000):
        if any(value is not None and (not isinstance(value, str) or value.strip()) for value in batch[column]):
            return False
    return True


def joined_inputs(batch, columns: Sequence[str], separator: str) -> list[str]:
    """One text per row from several input columns (a dataset or a ``map`` batch), in the order given."""
    texts = [[_text(value, column) for value in batch[column]] for column in columns]
    return [separator.join(parts) for parts in zip(*texts, strict=True)]


def _tokenize_split(
    dataset, tokenizer, task, data_args, input_columns, target_column, label_names, split, teacher_tokenizer=None
) -> Dataset:
    prefix = data_args.source_prefix
    label_ids = {name: index for index, name in enumerate(label_names or [])}
    class_label = target_column is not None and isinstance(dataset.features[target_column], ClassLabel)
    # Two input columns of a classifier are a text pair, as run_glue.py reads sentence1 / sentence2.
    as_pair = task == "classification" and len(input_columns) == 2
    if task == "causal_lm" and tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no end-of-sequence token, which causal-LM completions need; add one")

    def label_id(value) -> int:
        if _unlabelled(value):
            return -100
        return int(value) if class_label else label_ids[_label_name(value)]

    def classified(texts: tuple[list[str], ...], batch) -> dict:
        # The same texts through each tokenizer: the student's columns, then the teacher's under TEACHER_COLUMNS.
        features = tokenizer(*texts, max_length=data_args.max_source_length, truncation=True)
        if teacher_tokenizer is not None:
            teacher = teacher_tokenizer(*texts, max_length=data_args.max_source_length, truncation=True)
            features.update({TEACHER_COLUMNS[name]: values for name, values in teacher.items() if name in TEACHER_COLUMNS})
        features["labels"] = [label_id(value) for value in batch[target_column]]
        return features

    def encode(batch):
        if as_pair:
            first, second = ([_text(value, column) for value in batch[column]] for column in input_columns)
            return classified(([prefix + text for text in first], second), batch)
        inputs = [prefix + text for text in joined_inputs(batch, input_columns, data_args.input_column_separator)]
        if task == "classification":
            return classified((inputs,), batch)
        aligned = teacher_tokenizer is not None
        if task == "seq2seq":
            targets = [_text(text, target_column) for text in batch[target_column]]
            features = _encode_seq2seq(inputs, targets, tokenizer, data_args, offsets=aligned)
            if not aligned:
                return features
            teacher = _encode_seq2seq(inputs, targets, teacher_tokenizer, data_args, offsets=True)
        else:
            features = _encode_causal(batch, inputs, tokenizer, data_args, target_column, offsets=aligned)
            if not aligned:
                return features
            teacher = _encode_causal(batch, inputs, teacher_tokenizer, data_args, target_column, offsets=True)
        spans = [
            _aligned_spans(task, text, features, teacher, row, (tokenizer.eos_token_id, teacher_tokenizer.eos_token_id))
            for row, text in enumerate(features.pop("target_text"))
        ]
        teacher.pop("target_text")
        features.pop("target_offsets"), teacher.pop("target_offsets")
        features.update({TEACHER_COLUMNS[name]: values for name, values in teacher.items() if name in TEACHER_COLUMNS})
        features[SPAN_COLUMNS["student"]] = [student for student, _ in spans]
        features[SPAN_COLUMNS["teacher"]] = [teacher for _, teacher in spans]
        return features

    encoded = dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"tokenizing {split}",
    )
    ignored = set(tokenizer.all_special_ids) | {-100}  # a target of only </s> is empty too
    if (
        task != "classification"
        and split != TRANSFER_SPLIT  # its targets are the teacher's, written later (transfer.py)
        and len(encoded)
        and all(all(token in ignored for token in labels) for labels in encoded["labels"])
    ):
        raise InputError(
            f"every target in the {split} split is empty after tokenization and truncation; check --dataset_target_column "
            "and raise --max_target_length (causal LM: lower --max_source_length to leave room for the completion)"
        )
    return encoded


def _encode_seq2seq(inputs: list[str], targets: list[str], tokenizer, data_args, offsets: bool = False) -> dict:
    """Source and target ids; with ``offsets``, also each target token's character span (``target_offsets``) and
    the target texts they index (``target_text``), for aligning two tokenizations (see ``_aligned_spans``)."""
    features = tokenizer(inputs, max_length=data_args.max_source_length, truncation=True)
    encoded = tokenizer(
        text_target=targets, max_length=data_args.max_target_length, truncation=True, return_offsets_mapping=offsets
    )
    features["labels"] = encoded["input_ids"]
    if offsets:
        features["target_offsets"], features["target_text"] = encoded["offset_mapping"], targets
    return features


def _encode_causal(batch, prompts, tokenizer, data_args, target_column, offsets: bool = False) -> dict:
    """Prompt + completion + EOS; labels are -100 on the prompt so only the completion is learned.

    With ``offsets``: each position's character span in the row's target text (the completion, or the whole text
    for plain language modelling), ``(0, 0)`` on the prompt and the EOS, as ``_encode_seq2seq`` gives them.
    """
    input_ids, labels, target_offsets, target_texts = [], [], [], []
    completions = batch[target_column] if target_column else [None] * len(prompts)
    for prompt, completion in zip(prompts, completions, strict=True):
        if completion is None:  # plain language modelling on the whole text
            encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=offsets)
            keep = data_args.max_source_length - 1
            ids = encoded["input_ids"][:keep] + [tokenizer.eos_token_id]
            input_ids.append(ids)
            labels.append(list(ids))
            if offsets:
                target_offsets.append([*encoded["offset_mapping"][:keep], (0, 0)])
                target_texts.append(prompt)
            continue
        prompt_ids = tokenizer(prompt + data_args.prompt_suffix, add_special_tokens=False)["input_ids"]
        prompt_ids = prompt_ids[: data_args.max_source_length]
        text = _text(completion, target_column)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
        keep = data_args.max_target_length - 1
        completion_ids = encoded["input_ids"][:keep] + [tokenizer.eos_token_id]
        input_ids.append(prompt_ids + completion_ids)
        labels.append([-100] * len(prompt_ids) + completion_ids)
        if offsets:
            target_offsets.append([(0, 0)] * len(prompt_ids) + [*encoded["offset_mapping"][:keep], (0, 0)])
            target_texts.append(text)
    features = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}
    if offsets:
        features["target_offsets"], features["target_text"] = target_offsets, target_texts
    return features


def _aligned_spans(task: str, text: str, student: dict, teacher: dict, row: int, eos_ids: tuple[int, int]):
    """Both sides' span ids of one row (``SPAN_COLUMNS``): positions the loss sees are label positions, and for a
    causal LM not the first one (no logit row predicts it, see ``modeling.logit_rows``); final EOS tokens pair up."""

    def usable(labels: list[int]) -> list[bool]:
        return [label != -100 and (task != "causal_lm" or position > 0) for position, label in enumerate(labels)]

    student_labels, teacher_labels = student["labels"][row], teacher["labels"][row]
    ends = None
    if student_labels and teacher_labels and (student_labels[-1], teacher_labels[-1]) == eos_ids:
        ends = (len(student_labels) - 1, len(teacher_labels) - 1)
    return span_ids(
        text,
        student["target_offsets"][row],
        teacher["target_offsets"][row],
        usable(student_labels),
        usable(teacher_labels),
        ends,
    )


def _text(value, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise InputError(f"column {column!r} holds {type(value).__name__} values, not text; choose a text column")


def collator_for(
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    model=None,
    pad_to_multiple_of: int | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
):
    """Dynamic padding: labels padded with -100, so padding is never a target. With ``teacher_tokenizer``, the
    teacher's columns (``TEACHER_COLUMNS``) are padded with the teacher's pad token, the rest with the student's."""
    if task == "classification":
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    else:
        collator = DataCollatorForSeq2Seq(
            tokenizer,
            model=model if task == "seq2seq" else None,
            label_pad_token_id=-100,
            pad_to_multiple_of=pad_to_multiple_of,
        )
    if teacher_tokenizer is None:
        return collator
    return TeacherColumnsCollator(collator, DataCollatorWithPadding(teacher_tokenizer, pad_to_multiple_of=pad_to_multiple_of))


class TeacherColumnsCollator:
    """Pads the student's columns with ``collator`` and the teacher's tokenization with ``teacher_padding``.

    The teacher's labels (-100) and both span columns (-1) are padded here, each on its own tokenizer's padding
    side and to the length of the columns they index: the student's span ids to the student's padded labels, the
    teacher's labels and span ids to the teacher's padded inputs (causal LM: one row per input position) or to
    their longest row (seq2seq targets).
    """

    def __init__(self, collator, teacher_padding: DataCollatorWithPadding):
        self.collator, self.teacher_padding = collator, teacher_padding

    def __call__(self, features: list[dict]) -> dict:
        names = {column: name for name, column in TEACHER_COLUMNS.items() if name != "labels"}
        by_hand = (TEACHER_COLUMNS["labels"], *SPAN_COLUMNS.values())
        teacher = [{names[key]: value for key, value in feature.items() if key in names} for feature in features]
        kept = [{key: value for key, value in feature.items() if key not in names and key not in by_hand} for feature in features]
        batch = self.collator(kept)
        for name, tensor in self.teacher_padding(teacher).items():
            batch[TEACHER_COLUMNS[name]] = tensor
        if SPAN_COLUMNS["student"] not in features[0]:
            return batch
        student_side = getattr(getattr(self.collator, "tokenizer", None), "padding_side", "right")
        teacher_side = self.teacher_padding.tokenizer.padding_side
        teacher_labels = [feature[TEACHER_COLUMNS["labels"]] for feature in features]
        teacher_inputs = batch[TEACHER_COLUMNS["input_ids"]]
        same_length = all(
            len(labels) == len(feature[TEACHER_COLUMNS["input_ids"]])
            for labels, feature in zip(teacher_labels, features, strict=True)
        )
        teacher_length = teacher_inputs.shape[1] if same_length else max(map(len, teacher_labels))
        columns = (
            (TEACHER_COLUMNS["labels"], -100, teacher_side, teacher_length),
            (SPAN_COLUMNS["teacher"], -1, teacher_side, teacher_length),
            (SPAN_COLUMNS["student"], -1, student_side, batch["labels"].shape[1]),
        )
        for column, pad, side, length in columns:
            batch[column] = padded([feature[column] for feature in features], pad, side, length)
        return batch


def padded(rows: Sequence[Sequence[int]], pad: int, side: str, length: int) -> torch.Tensor:
    """``[len(rows), length]`` long tensor of the rows, padded with ``pad`` on ``side`` (left or right)."""
    tensor = torch.full((len(rows), length), pad, dtype=torch.long)
    for index, row in enumerate(rows):
        if len(row):
            values = torch.as_tensor(list(row), dtype=torch.long)
            if side == "left":
                tensor[index, length - len(row) :] = values
            else:
                tensor[index, : len(row)] = values
    return tensor
