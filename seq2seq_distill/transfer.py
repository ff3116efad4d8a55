"""Transfer sets: inputs without labels that the teacher labels, so the student sees more than the labelled rows.

A student copied from its teacher and trained on all the labels has little left to learn from soft labels; KD
wins when the student also sees inputs that only the teacher can label (Hinton et al. 2015; Tang et al. 2019;
Turc et al. 2019). Transfer rows come from a separate source (``--transfer_dataset_local_path`` /
``--transfer_dataset``), from labelled-task rows that have no target (seq2seq and causal LM; classification rows
without a label are already distilled where they are), and from augmented copies of the labelled inputs
(``augmentation.py``). Each transfer row carries :data:`~seq2seq_distill.modeling.KD_ONLY_COLUMN` = 1: KD and the
other teacher terms read it, CE never does, and each term is divided by its own step-wide count (``trainer.py``).

Labels of transfer rows: classification rows have none (-100); seq2seq rows and causal-LM prompts get the teacher's
greedy output as their target (sequence-level pseudo-labels, Kim & Rush 2016), so that token-level KD runs on the
teacher's own continuation; plain causal-LM text is its own target. Runs without a teacher term (the teacher's own
training, the CE-only baseline) train on the labelled rows only.
"""

from __future__ import annotations

import logging

from datasets import Dataset, Value, concatenate_datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .arguments import DataArguments
from .data import TRANSFER_SPLIT, PreparedData, load_source, resolve_columns, tokenize_rows
from .errors import InputError
from .modeling import KD_ONLY_COLUMN
from .processes import default_device
from .terms import plan_terms

logger = logging.getLogger(__name__)

__all__ = ["TRANSFER_SPLIT", "add_transfer_split", "training_rows"]


def add_transfer_split(raw, data_args: DataArguments, task: str) -> None:
    """Put the transfer rows of the configured source, and the train rows without a target, in ``raw["transfer"]``.

    Checked here, before any model is loaded: the source exists, has the input columns, and holds some text.
    The rows get the labelled data's input column names and an empty target.
    """
    input_columns, target_column = resolve_columns(raw, data_args, task)
    parts = []
    if data_args.transfer_dataset_local_path or data_args.transfer_dataset:
        parts.append(_source_rows(data_args, input_columns))
    if task != "classification" and target_column is not None:
        # A seq2seq / causal-LM row without a target is a transfer row: the teacher writes its target.
        train = raw["train"]
        empty = [index for index, value in enumerate(train[target_column]) if value is None or not str(value).strip()]
        if empty:
            if len(empty) == len(train):
                raise InputError(
                    f"every target in the train split ({target_column!r}) is empty; fill in the targets, or give the "
                    "inputs as a transfer set beside labelled rows (--transfer_dataset_local_path)"
                )
            parts.append(train.select(empty).select_columns(input_columns))
            keep = sorted(set(range(len(train))) - set(empty))
            raw["train"] = train.select(keep)
            logger.info("%d train rows without a target are distilled from the teacher's outputs", len(empty))
    if not parts:
        return
    rows = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    raw[TRANSFER_SPLIT] = _with_empty_target(rows, task, target_column)


def _source_rows(data_args: DataArguments, input_columns: list[str]) -> Dataset:
    flag = "--transfer_dataset_local_path" if data_args.transfer_dataset_local_path else "--transfer_dataset"
    splits = load_source(
        data_args.transfer_dataset_local_path, data_args.transfer_dataset, data_args.transfer_dataset_config, flag
    )
    if "train" in splits:
        rows = splits["train"]
    elif len(splits) == 1:
        rows = next(iter(splits.values()))
    else:
        raise InputError(f"the transfer set has no train split (splits: {', '.join(splits)}); name one 'train'")
    columns = list(data_args.transfer_input_column or input_columns)
    if len(columns) != len(input_columns):
        raise InputError(
            f"--transfer_input_column names {len(columns)} column(s) but the labelled data has {len(input_columns)} "
            f"input column(s) ({', '.join(input_columns)}); name one transfer column per input column"
        )
    missing = [column for column in columns if column not in rows.column_names]
    if missing:
        raise InputError(
            f"column {missing[0]!r} is missing from the transfer set; its columns are: {', '.join(rows.column_names)}. "
            "Set --transfer_input_column"
        )
    for column in columns:
        feature = rows.features[column]
        if not isinstance(feature, Value) or feature.dtype not in ("string", "large_string"):
            kind = f"{feature.dtype} values" if isinstance(feature, Value) else type(feature).__name__
            raise InputError(f"transfer column {column!r} holds {kind}, not text; set --transfer_input_column")
    if data_args.transfer_size is not None and data_args.transfer_size < len(rows):
        rows = rows.select(range(data_args.transfer_size))
    rows = rows.select_columns(columns)
    renames = {column: name for column, name in zip(columns, input_columns, strict=True) if column != name}
    if renames:
        rows = rows.rename_columns(renames)  # the labelled data's names
    if len(rows) == 0 or all(not text or not str(text).strip() for text in rows[input_columns[0]]):
        raise InputError(f"the transfer set ({flag}) holds no text in {columns[0]!r}; check the source or the column")
    return rows


def _with_empty_target(rows: Dataset, task: str, target_column: str | None) -> Dataset:
    if target_column is None:  # plain causal-LM text is its own target
        return rows
    empty = None if task == "classification" else ""
    return rows.add_column(target_column, [empty] * len(rows))


# ---- at training time ------------------------------------------------------------------------------------------


def training_rows(
    data: PreparedData,
    train_dataset: Dataset,
    teacher: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    training_args,
) -> Dataset:
    """The rows a run trains on: the labelled rows, plus the transfer rows when a term reads the teacher's outputs.

    The augmented copies and the teacher's pseudo-labels are made once per :class:`PreparedData` (a pipeline's
    seed runs share them) and the rows are marked with :data:`KD_ONLY_COLUMN`.
    """
    augments = data.data_args is not None and data.data_args.augment_copies > 0
    if TRANSFER_SPLIT not in data.raw and not augments:
        return train_dataset
    if teacher is None or not plan_terms(training_args).needs("teacher_outputs", training=True):
        logger.info("the transfer set is for distillation: this run trains on the %d labelled rows", len(train_dataset))
        return train_dataset
    transfer = _labelled_transfer_rows(data, teacher, tokenizer, training_args)
    marked = train_dataset.add_column(KD_ONLY_COLUMN, [0] * len(train_dataset))
    transfer = transfer.add_column(KD_ONLY_COLUMN, [1] * len(transfer)).cast(marked.features)
    logger.info("training on %d labelled rows and %d transfer rows (KD only)", len(train_dataset), len(transfer))
    return concatenate_datasets([marked, transfer])


def _labelled_transfer_rows(data: PreparedData, teacher, tokenizer, training_args) -> Dataset:
    """The transfer rows, tokenized, with the teacher's targets where the task needs them (made once per data)."""
    if data.transfer_rows is not None:
        return data.transfer_rows
    raw = data.raw.get(TRANSFER_SPLIT)
    if data.data_args.augment_copies > 0:
        from .augmentation import augment_dataset, mask_token_of

        augmented = augment_dataset(data.raw["train"], data.input_columns, data.data_args, mask_token_of(tokenizer))
        augmented = _with_empty_target(augmented, data.task, data.target_column)
        raw = concatenate_datasets([raw, augmented.cast(raw.features)]) if raw is not None else augmented
        logger.info("%d augmented copies of the labelled inputs added to the transfer set", len(augmented))
    data.raw[TRANSFER_SPLIT] = raw
    data.tokenized[TRANSFER_SPLIT] = tokenize_rows(data, raw, tokenizer, TRANSFER_SPLIT)
    if data.task != "classification" and data.target_column is not None:
        from .inference import teacher_outputs

        generation = {"num_beams": 1, "do_sample": False, "max_new_tokens": data.data_args.max_target_length}
        batch_size = getattr(training_args, "per_device_eval_batch_size", 16)
        device = default_device(use_cpu=getattr(training_args, "use_cpu", False))
        was_training, original_device = teacher.training, next(teacher.parameters()).device
        teacher.to(device).eval()
        targets = teacher_outputs(teacher, tokenizer, data, TRANSFER_SPLIT, generation, batch_size, device)
        teacher.to(original_device).train(was_training)
        raw = raw.remove_columns(data.target_column).add_column(data.target_column, targets)
        data.raw[TRANSFER_SPLIT] = raw
        data.tokenized[TRANSFER_SPLIT] = tokenize_rows(data, raw, tokenizer, TRANSFER_SPLIT)
    data.transfer_rows = data.tokenized[TRANSFER_SPLIT]
    return data.transfer_rows
