"""Data: any source -> raw train / validation / test splits -> tokenized splits and the collator of the task.

Sources, in order of precedence: ``--dataset_local_path`` (a ``save_to_disk`` folder, a data file, or a folder of
files named by split), ``--dataset`` (the hub), else the embedded standard-library docstrings. Missing validation /
test splits are carved out of train with ``--split_seed``, so every command of a config sees the same examples.
Tokenization goes through ``datasets.map`` and is cached by ``datasets`` for file-backed data.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetsError
from pyarrow.lib import ArrowException
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PreTrainedTokenizerBase

from .arguments import DataArguments
from .errors import InputError
from .stdlib_corpus import build_classification_corpus, build_summarization_corpus

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
INPUT_COLUMN_GUESSES = ("document", "article", "text", "sentence", "source", "input", "prompt", "content", "question")
TARGET_COLUMN_GUESSES = {
    "seq2seq": ("summary", "highlights", "target", "abstract", "output", "answer"),
    "classification": ("label", "labels", "class", "category", "target"),
    "causal_lm": ("completion", "summary", "highlights", "target", "output", "answer"),
}


@dataclass
class PreparedData:
    """Raw and tokenized splits plus what the task needs to read them back."""

    raw: DatasetDict
    tokenized: DatasetDict
    task: str
    input_column: str
    target_column: str | None
    label_names: list[str] | None = None


# ---- sources ---------------------------------------------------------------------------------------------------


def load_raw_splits(data_args: DataArguments, task: str) -> DatasetDict:
    """train / validation / test splits of the configured source, subsets applied, none empty."""
    if data_args.dataset_local_path:
        raw = _load_local(data_args.dataset_local_path, data_args.dataset_column_names)
    elif data_args.dataset:
        raw = _load_hub(data_args.dataset, data_args.dataset_config)
    else:
        raw = DatasetDict({"train": embedded_dataset(task)})
    raw = _canonical_splits(raw)
    raw = _carve_missing_splits(raw, data_args, data_args.split_seed)
    for split, size in (("train", data_args.train_size), ("validation", data_args.val_size), ("test", data_args.test_size)):
        if size is not None and size < len(raw[split]):
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


def _load_local(path: str, column_names: Sequence[str] | None) -> DatasetDict:
    if not os.path.exists(path):
        raise InputError(f"--dataset_local_path {path!r} does not exist; give a folder saved with save_to_disk or a data file")
    if os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, marker)) for marker in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        try:
            loaded = load_from_disk(path)
        except (*LOADER_ERRORS, OSError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise InputError(
                f"{path!r} looks like a folder saved with save_to_disk but could not be read ({reason}); save it again "
                "with DatasetDict.save_to_disk, or pass the data file itself"
            ) from None
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    files = _split_files(path)
    for split, file in files.items():
        if os.path.getsize(file) == 0 or not _has_content(file):
            raise InputError(f"the {split} split file {file!r} is empty; add examples or remove the file")
    extensions = {os.path.splitext(file)[1].lower() for file in files.values()}
    if len(extensions) != 1:
        raise InputError(f"data files under {path!r} mix formats ({', '.join(sorted(extensions))}); use one format")
    extension = extensions.pop()
    options = {}
    if extension == ".tsv":
        options["delimiter"] = "\t"
    if column_names:
        if FILE_FORMATS[extension] != "csv":
            raise InputError("--dataset_column_names applies to headerless csv / tsv files only")
        options["column_names"] = list(column_names)
    if FILE_FORMATS[extension] != "parquet":  # pyarrow's json reader accepts bad bytes and fails later, on access
        for split, file in files.items():
            offset = _non_utf8_offset(file)
            if offset is not None:
                raise InputError(
                    f"the {split} file {file!r} is not UTF-8 text (invalid byte at offset {offset}); re-encode it as "
                    "UTF-8, e.g. iconv -f latin1 -t utf-8"
                )
    try:
        return load_dataset(FILE_FORMATS[extension], data_files=files, **options)
    except LOADER_ERRORS as error:
        raise _unreadable(path, files, options, error) from None


# What the csv / json / parquet loaders raise on a malformed file (UnicodeDecodeError, pandas' ParserError and
# ArrowInvalid are ValueErrors); caught only around load_dataset / load_from_disk of the user's own files.
LOADER_ERRORS = (DatasetsError, ArrowException, ValueError)


def _unreadable(path: str, files: dict[str, str], options: dict, error: Exception) -> InputError:
    """One line naming the file that could not be read and why, instead of the loaders' deep traceback."""
    culprit = next(iter(files.items())) if len(files) == 1 else _failing_file(files, options)
    where = f"the {culprit[0]} file {culprit[1]!r}" if culprit else f"the data files under {path!r}"
    cause = (error.__cause__ or error.__context__) if isinstance(error, DatasetsError) else error
    reason = (str(cause or error).strip().splitlines() or [type(error).__name__])[0]
    if "corresponds to no data" in reason:
        return InputError(f"{where} has no rows; add examples (a csv / tsv file needs a header line and at least one row)")
    return InputError(
        f"could not read {where}: {reason}; fix the file (.jsonl: one JSON object per line; .csv / .tsv: a header and "
        "the same number of fields on every row; .parquet: written by pandas or pyarrow)"
    )


def _failing_file(files: dict[str, str], options: dict) -> tuple[str, str] | None:
    """The first (split, file) that fails on its own, to name it; only called after a failed load."""
    for split, file in files.items():
        try:
            load_dataset(FILE_FORMATS[os.path.splitext(file)[1].lower()], data_files={split: file}, **options)
        except LOADER_ERRORS:
            return split, file
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


def _carve_missing_splits(raw: DatasetDict, data_args: DataArguments, seed: int) -> DatasetDict:
    """Validation and test split off train, seeded, when the source has none."""
    for split, fraction in (("test", data_args.test_fraction), ("validation", data_args.validation_fraction)):
        if split in raw:
            continue
        if fraction <= 0 or len(raw["train"]) < 3:
            raise InputError(f"the data has no {split} split and too little train data to carve one; add a {split} file")
        parts = raw["train"].train_test_split(test_size=fraction, seed=seed, shuffle=True)
        raw["train"], raw[split] = parts["train"], parts["test"]
        logger.info("carved a %s split of %d examples out of train (seed %d)", split, len(raw[split]), seed)
    return DatasetDict({split: raw[split] for split in ("train", "validation", "test")})


# ---- columns and labels ----------------------------------------------------------------------------------------


def resolve_columns(raw: DatasetDict, data_args: DataArguments, task: str) -> tuple[str, str | None]:
    """The input and target column names, checked against every split."""
    columns = raw["train"].column_names
    listing = ", ".join(columns)
    input_column = data_args.dataset_input_column or _first_present(INPUT_COLUMN_GUESSES, columns)
    if input_column is None:
        raise InputError(f"no input column found; columns are: {listing}. Set --dataset_input_column")
    target_column = data_args.dataset_target_column or _first_present(TARGET_COLUMN_GUESSES[task], columns)
    if target_column is None and task != "causal_lm":
        raise InputError(f"no target column found; columns are: {listing}. Set --dataset_target_column")
    for flag, column in (("--dataset_input_column", input_column), ("--dataset_target_column", target_column)):
        if column is None:
            continue
        for split, dataset in raw.items():
            if column not in dataset.column_names:
                raise InputError(
                    f"column {column!r} not in the {split} split; columns are: {', '.join(dataset.column_names)}. Set {flag}"
                )
    if input_column == target_column:
        raise InputError(f"input and target are the same column {input_column!r}; set --dataset_target_column")
    return input_column, target_column


def _first_present(candidates: Sequence[str], columns: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in columns), None)


def _unlabelled(value) -> bool:
    """GLUE-style test splits mark rows without a label with -1 (any negative integer): not a class."""
    return isinstance(value, int) and not isinstance(value, bool) and value < 0


def label_names_of(raw: DatasetDict, target_column: str, known: dict[str, int] | None = None) -> list[str]:
    """Label names in id order: a ClassLabel's names, the teacher's labels, or the sorted distinct values."""
    feature = raw["train"].features[target_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    distinct = {}
    for split in raw.values():
        for value in split[target_column]:
            if value is not None and not isinstance(value, (str, int, float)):
                raise InputError(
                    f"column {target_column!r} holds {type(value).__name__} values, not labels; labels must be strings "
                    "or integers: set --dataset_target_column"
                )
            if not _unlabelled(value):
                distinct.setdefault(value, value)
    values = sorted(distinct.values(), key=lambda v: (str(type(v)), v))
    if any(value is None or value == "" or (isinstance(value, float) and math.isnan(value)) for value in values):
        raise InputError(f"column {target_column!r} has empty labels; drop those rows or fill them in")
    names = [str(value) for value in values]
    if known:
        unknown = [name for name in names if name not in known]
        if unknown:
            raise InputError(
                f"labels {', '.join(unknown[:5])} are not in the teacher's label set ({', '.join(known)}); "
                "relabel the data or fine-tune the teacher on it"
            )
        return [name for name, _ in sorted(known.items(), key=lambda item: item[1])]
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
) -> PreparedData:
    """Tokenize every split for ``task``; classification labels become ids (names kept in ``label_names``)."""
    input_column, target_column = resolve_columns(raw, data_args, task)
    for split, dataset in raw.items():  # empty targets are caught after tokenization (truncation can empty them too)
        if _all_empty(dataset, input_column):
            raise InputError(
                f"input column {input_column!r} is empty in every row of the {split} split; fill it in or choose "
                f"another column with --dataset_input_column (columns: {', '.join(dataset.column_names)})"
            )
    label_names = None
    if task == "classification":
        label_names = label_names_of(raw, target_column, label2id)
    tokenized = DatasetDict(
        {
            split: _tokenize_split(dataset, tokenizer, task, data_args, input_column, target_column, label_names, split)
            for split, dataset in raw.items()
        }
    )
    return PreparedData(raw, tokenized, task, input_column, target_column, label_names)


def _all_empty(dataset: Dataset, column: str) -> bool:
    """True when every value of ``column`` is None or blank text; stops at the first value with content."""
    for batch in dataset.select_columns([column]).iter(batch_size=1000):
        if any(value is not None and (not isinstance(value, str) or value.strip()) for value in batch[column]):
            return False
    return True


def _tokenize_split(dataset, tokenizer, task, data_args, input_column, target_column, label_names, split) -> Dataset:
    prefix = data_args.source_prefix
    label_ids = {name: index for index, name in enumerate(label_names or [])}
    if task == "causal_lm" and tokenizer.eos_token_id is None:
        raise InputError("the tokenizer has no end-of-sequence token, which causal-LM completions need; add one")

    def encode(batch):
        inputs = [prefix + _text(text, input_column) for text in batch[input_column]]
        if task == "seq2seq":
            features = tokenizer(inputs, max_length=data_args.max_source_length, truncation=True)
            targets = [_text(text, target_column) for text in batch[target_column]]
            features["labels"] = tokenizer(text_target=targets, max_length=data_args.max_target_length, truncation=True)[
                "input_ids"
            ]
            return features
        if task == "classification":
            features = tokenizer(inputs, max_length=data_args.max_source_length, truncation=True)
            features["labels"] = [-100 if _unlabelled(value) else label_ids[str(value)] for value in batch[target_column]]
            return features
        return _encode_causal(batch, inputs, tokenizer, data_args, target_column)

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
        and len(encoded)
        and all(all(token in ignored for token in labels) for labels in encoded["labels"])
    ):
        raise InputError(
            f"every target in the {split} split is empty after tokenization and truncation; check --dataset_target_column "
            "and raise --max_target_length (causal LM: lower --max_source_length to leave room for the completion)"
        )
    return encoded


def _encode_causal(batch, prompts, tokenizer, data_args, target_column) -> dict:
    """Prompt + completion + EOS; labels are -100 on the prompt so only the completion is learned."""
    input_ids, labels = [], []
    completions = batch[target_column] if target_column else [None] * len(prompts)
    for prompt, completion in zip(prompts, completions, strict=True):
        if completion is None:  # plain language modelling on the whole text
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: data_args.max_source_length - 1]
            ids = ids + [tokenizer.eos_token_id]
            input_ids.append(ids)
            labels.append(list(ids))
            continue
        prompt_ids = tokenizer(prompt + data_args.prompt_suffix, add_special_tokens=False)["input_ids"]
        prompt_ids = prompt_ids[: data_args.max_source_length]
        completion_ids = tokenizer(_text(completion, target_column), add_special_tokens=False)["input_ids"]
        completion_ids = completion_ids[: data_args.max_target_length - 1] + [tokenizer.eos_token_id]
        input_ids.append(prompt_ids + completion_ids)
        labels.append([-100] * len(prompt_ids) + completion_ids)
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels}


def _text(value, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise InputError(f"column {column!r} holds {type(value).__name__} values, not text; choose a text column")


def collator_for(task: str, tokenizer: PreTrainedTokenizerBase, model=None, pad_to_multiple_of: int | None = None):
    """Dynamic padding: labels padded with -100, so padding is never a target."""
    if task == "classification":
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    return DataCollatorForSeq2Seq(
        tokenizer,
        model=model if task == "seq2seq" else None,
        label_pad_token_id=-100,
        pad_to_multiple_of=pad_to_multiple_of,
    )
