"""Offline distillation: run the teacher once, keep its top-k log-probabilities, train without it.

``cache_teacher`` stores, for every supervised position of every example, the teacher's k most likely tokens and
their log-probabilities at the distillation temperature, as Arrow shards (``datasets.save_to_disk``, one folder
per split). Row j of an example's cache belongs to its j-th supervised position, so a batch's cached rows,
concatenated in example order, line up with the flat indices of the positions the trainer selects.

The KD term on cached rows is :func:`~seq2seq_distill.losses.topk_distillation_loss`: the k tokens plus one tail
outcome holding the rest of the mass, exact when k covers the vocabulary. A cache records fingerprints of the
teacher, the tokenizer, the tokenized data of each split and the settings; :func:`load_teacher_cache` refuses
one that does not match, naming what changed. ``teacher_cache.json`` is written last, so an interrupted build is
never taken for a finished cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Sequence, Value, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from .data import PreparedData, collator_for
from .errors import InputError
from .inference import length_order
from .modeling import logit_rows
from .reports import write_json

logger = logging.getLogger(__name__)

# The batch fields of a cached teacher, owned here: [N, k] top-k log-probabilities (at the distillation temperature)
# and token ids, one row per distilled position (modeling.logit_rows), in the order of the positions' flat index.
CACHE_LOG_PROBS = "teacher_topk_log_probs"
CACHE_INDICES = "teacher_topk_indices"
CACHE_COLUMNS = (CACHE_LOG_PROBS, CACHE_INDICES)

INFO_FILE = "teacher_cache.json"
FORMAT_VERSION = 1
CACHE_FEATURES = Features(
    {CACHE_LOG_PROBS: Sequence(Sequence(Value("float32"))), CACHE_INDICES: Sequence(Sequence(Value("int32")))}
)


# ---- fingerprints ----------------------------------------------------------------------------------------------


def _digest(chunks) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk if isinstance(chunk, bytes) else str(chunk).encode())
    return hasher.hexdigest()[:16]


def teacher_fingerprint(teacher) -> str:
    """Config and every weight, so a teacher trained further or swapped for another one is noticed."""
    state = teacher.state_dict()
    return _digest(
        [teacher.config.to_json_string(use_diff=False)]
        + [name.encode() + state[name].detach().float().cpu().contiguous().numpy().tobytes() for name in sorted(state)]
    )


def tokenizer_fingerprint(tokenizer) -> str:
    return _digest([json.dumps(sorted(tokenizer.get_vocab().items())), json.dumps(tokenizer.all_special_tokens)])


def split_fingerprint(dataset: Dataset) -> str:
    """The tokenized inputs and labels of a split, in order (a different subset, order or truncation differs)."""
    columns = [name for name in ("input_ids", "labels") if name in dataset.column_names]
    return _digest(json.dumps(batch[name]) for batch in dataset.select_columns(columns).iter(batch_size=1024) for name in columns)


# ---- building --------------------------------------------------------------------------------------------------


@torch.no_grad()
def build_teacher_cache(
    teacher,
    tokenizer,
    data: PreparedData,
    path: str,
    *,
    top_k: int,
    temperature: float,
    splits: tuple[str, ...] = ("train", "validation"),
    batch_size: int = 16,
) -> str:
    """Run the teacher over ``splits`` once and write the cache folder (replacing an older one at ``path``)."""
    if top_k < 1:
        raise InputError(f"--cache_top_k must be at least 1, got {top_k}")
    unknown = [split for split in splits if split not in data.tokenized]
    if unknown:
        raise InputError(f"--cache_splits {', '.join(unknown)} not in the data (splits: {', '.join(data.tokenized)})")
    teacher.eval()
    staging = path.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    vocab = teacher.get_output_embeddings().weight.shape[0] if data.task != "classification" else teacher.config.num_labels
    k = min(top_k, vocab)
    fingerprints = {}
    for split in splits:
        dataset = data.tokenized[split]
        rows = Dataset.from_generator(
            _cache_rows,
            gen_kwargs=dict(
                teacher=teacher,
                tokenizer=tokenizer,
                task=data.task,
                dataset=dataset,
                k=k,
                temperature=temperature,
                batch_size=batch_size,
                split=split,
            ),
            features=CACHE_FEATURES,
            cache_dir=os.path.join(staging, ".build"),
            fingerprint=uuid.uuid4().hex,  # never reuse an old build, and do not hash the teacher to name this one
        )
        rows.save_to_disk(os.path.join(staging, split), max_shard_size="256MB")
        fingerprints[split] = split_fingerprint(dataset)
    shutil.rmtree(os.path.join(staging, ".build"), ignore_errors=True)
    info = {
        "format": FORMAT_VERSION,
        "task": data.task,
        "top_k": k,
        "temperature": temperature,
        "teacher": teacher.name_or_path,
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "splits": fingerprints,
        "vocab_size": vocab,
    }
    write_json(os.path.join(staging, INFO_FILE), info)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)  # the finished cache appears at once, info file included
    logger.info("teacher cache (top-%d, T=%s) for %s written to %s", k, temperature, ", ".join(splits), path)
    return path


def _cache_rows(teacher, tokenizer, task, dataset, k, temperature, batch_size, split):
    """Yield, per example in dataset order, its [positions, k] top-k log-probabilities at ``temperature`` and ids.

    Examples are read in windows, sorted by length inside a window (less padding) and yielded back in order, so
    memory stays bounded by one window whatever the data size.
    """
    device = next(teacher.parameters()).device
    collator = collator_for(task, tokenizer, teacher)
    window = batch_size * 64
    progress = tqdm(total=len(dataset), desc=f"caching teacher on {split}")
    for window_start in range(0, len(dataset), window):
        examples = [dict(row) for row in dataset.select(range(window_start, min(window_start + window, len(dataset))))]
        order = length_order(examples)
        cached: list = [None] * len(examples)
        for start in range(0, len(order), batch_size):
            batch_indices = order[start : start + batch_size]
            with torch.no_grad():
                cached_batch = _teacher_top_k(
                    teacher, collator, task, [examples[i] for i in batch_indices], k, temperature, device
                )
            for index, rows in zip(batch_indices, cached_batch, strict=True):
                cached[index] = rows
            progress.update(len(batch_indices))
        for log_probs, indices in cached:
            yield {CACHE_LOG_PROBS: log_probs, CACHE_INDICES: indices}
    progress.close()


def _teacher_top_k(teacher, collator, task, examples, k, temperature, device) -> list[tuple[list, list]]:
    batch = {name: tensor.to(device) for name, tensor in collator(examples).items()}
    labels = batch.pop("labels")
    if task == "seq2seq" and "decoder_input_ids" not in batch:
        batch["decoder_input_ids"] = teacher.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = teacher(**batch).logits
    if task == "causal_lm":
        logits = logits[:, :-1]  # position t predicts token t + 1 (logit_rows)
    values, indices = F.log_softmax(logits.float() / temperature, dim=-1).topk(k, dim=-1)
    mask = logit_rows(task, labels, batch["attention_mask"]).distill  # the rows the trainer's KD term compares
    return [
        (values[row][mask[row]].cpu().tolist(), indices[row][mask[row]].to(torch.int32).cpu().tolist())
        for row in range(len(examples))
    ]


# ---- using -----------------------------------------------------------------------------------------------------


@dataclass
class TeacherCache:
    """A checked cache: its settings and, per split, the cached rows to put beside the tokenized examples."""

    path: str
    info: dict
    splits: dict[str, Dataset]

    @property
    def top_k(self) -> int:
        return self.info["top_k"]

    @property
    def temperature(self) -> float:
        return self.info["temperature"]

    def attach(self, split: str, dataset: Dataset) -> Dataset:
        """The tokenized split with the cached rows as extra columns (same row order, checked by fingerprint)."""
        return concatenate_datasets([dataset, self.splits[split]], axis=1)

    def collator(self, base):
        return CachedTeacherCollator(base)


class CachedTeacherCollator:
    """Pads the usual fields with ``base`` and concatenates the examples' cached rows into ``[N, k]`` tensors."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict]) -> dict:
        stripped = [
            {key: value for key, value in feature.items() if key not in (CACHE_LOG_PROBS, CACHE_INDICES)} for feature in features
        ]
        batch = self.base(stripped)
        log_probs = [row for feature in features for row in feature[CACHE_LOG_PROBS]]
        indices = [row for feature in features for row in feature[CACHE_INDICES]]
        batch[CACHE_LOG_PROBS] = torch.tensor(log_probs, dtype=torch.float32)
        batch[CACHE_INDICES] = torch.tensor(indices, dtype=torch.long)
        return batch


def load_teacher_cache(
    path: str, data: PreparedData, tokenizer, *, temperature: float, splits=("train",), teacher=None
) -> TeacherCache:
    """Open a cache and check it against this run; a stale or mismatched cache is refused with the reason."""
    info_path = os.path.join(path, INFO_FILE)
    if not os.path.isfile(info_path):
        hint = " (an interrupted build left only a .partial folder)" if os.path.isdir(path.rstrip("/") + ".partial") else ""
        raise InputError(f"--teacher_cache {path!r} is not a finished teacher cache{hint}; build it with cache_teacher")
    with open(info_path) as handle:
        info = json.load(handle)
    rebuild = "rebuild it with cache_teacher"
    if info.get("format") != FORMAT_VERSION:
        raise InputError(
            f"teacher cache {path!r} has format {info.get('format')}, this version reads {FORMAT_VERSION}; {rebuild}"
        )
    if info["task"] != data.task:
        raise InputError(f"teacher cache {path!r} is for a {info['task']} task, this run is {data.task}; {rebuild}")
    if info["temperature"] != temperature:
        raise InputError(
            f"teacher cache {path!r} holds log-probabilities at temperature {info['temperature']} but --temperature is "
            f"{temperature}; use that temperature or {rebuild}"
        )
    if info["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise InputError(f"teacher cache {path!r} was built with a different tokenizer; {rebuild}")
    if teacher is not None and info["teacher_fingerprint"] != teacher_fingerprint(teacher):
        raise InputError(f"teacher cache {path!r} was built from a different teacher than {teacher.name_or_path!r}; {rebuild}")
    loaded = {}
    for split in splits:
        if split not in info["splits"]:
            raise InputError(f"teacher cache {path!r} has no {split} split (it has {', '.join(info['splits'])}); {rebuild}")
        if info["splits"][split] != split_fingerprint(data.tokenized[split]):
            raise InputError(
                f"teacher cache {path!r} was built for different {split} data (other examples, order, subset or "
                "tokenization settings; a run that does not evaluate keeps the rows it would carve as validation in "
                f"train, so give both commands the same --eval_strategy and --validation_fraction); {rebuild}"
            )
        loaded[split] = load_from_disk(os.path.join(path, split))
    return TeacherCache(path, info, loaded)
