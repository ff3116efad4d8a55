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

With ``hidden_layers`` (``cache_teacher --cache_hidden_states``) the cache also keeps, per stack, the hidden states
of the teacher layers the student's layer pairing reads, at the positions the feature terms compare
(:func:`~seq2seq_distill.features.stack_positions`: a decoder's label positions, else the non-padding input
tokens), ``[positions, cached layers, hidden]`` per example. In training, :meth:`TeacherCache.teacher_outputs`
scatters them back onto the batch's padded positions as a teacher's ``hidden_states`` tuple, so the hidden-state
and norm terms run unchanged; attention maps and self-attention relations are not cached.

About 460 lines, one job: the cache's whole life (build, fingerprints, checks, attach, collate, the cached hidden
states back onto the batch's positions); its format and its checks change together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Array3D, Dataset, Features, Sequence, Value, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm
from transformers import CONFIG_MAPPING

from .arguments import CACHE_HIDDEN_DTYPES
from .data import PreparedData, collator_for
from .errors import InputError
from .families import FAMILIES, family_of, num_layers
from .features import StackPair, on_target_side, stack_positions
from .inference import length_order
from .modeling import logit_rows
from .reports import write_json
from .terms import TERMS_BY_NAME, StepPositions, describe_weights

logger = logging.getLogger(__name__)

# The batch fields of a cached teacher, owned here: [N, k] top-k log-probabilities (at the distillation temperature)
# and token ids, one row per distilled position (modeling.logit_rows), in the order of the positions' flat index.
CACHE_LOG_PROBS = "teacher_topk_log_probs"
CACHE_INDICES = "teacher_topk_indices"
# Per stack role: [P, L, H] hidden states of the cached teacher layers (increasing order) at the P positions of
# the example that the stack's feature terms read, in the order of their flat index.
HIDDEN_COLUMNS = {role: f"teacher_hidden_{role}" for role in sorted({stack.role for each in FAMILIES for stack in each.stacks})}
CACHE_COLUMNS = (CACHE_LOG_PROBS, CACHE_INDICES, *HIDDEN_COLUMNS.values())
# The terms a cache serves: KD always, the hidden-state and norm terms when it holds hidden states.
SERVED_TERMS = ("kd_loss",)
SERVED_FEATURE_TERMS = ("hidden_loss", "norm_loss")

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


def cache_fingerprint(info: dict) -> str:
    """Everything a cache holds, as one digest: teacher, tokenizer, data, top-k, temperature and cached layers."""
    return _digest([json.dumps({key: value for key, value in info.items() if key != "fingerprint"}, sort_keys=True)])


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
    hidden_layers: dict[str, SequenceOf[int]] | None = None,
    hidden_dtype: str = "float32",
) -> str:
    """Run the teacher over ``splits`` once and write the cache folder (replacing an older one at ``path``).

    ``hidden_layers``: {stack role: teacher layers} whose hidden states are kept too (``None``: logits only), in
    ``hidden_dtype``; a stack costs rows x positions x hidden size x layers x 4 bytes in float32, 2 in float16.
    """
    if top_k < 1:
        raise InputError(f"--cache_top_k must be at least 1, got {top_k}")
    unknown = [split for split in splits if split not in data.tokenized]
    if unknown:
        raise InputError(f"--cache_splits {', '.join(unknown)} not in the data (splits: {', '.join(data.tokenized)})")
    hidden_layers = check_hidden_layers(teacher.config, hidden_layers, hidden_dtype)
    hidden_size = getattr(teacher.config, family_of(teacher.config).hidden_size_attr) if hidden_layers else None
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
                hidden_layers=hidden_layers,
                hidden_dtype=hidden_dtype,
            ),
            features=_cache_features(hidden_layers, hidden_size, hidden_dtype),
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
        "hidden_states": {"layers": hidden_layers, "dtype": hidden_dtype, "hidden_size": hidden_size} if hidden_layers else None,
        # Layer pairing and projections read the teacher's config; with it a distill run never loads the teacher.
        "teacher_config": json.loads(teacher.config.to_json_string(use_diff=False)),
    }
    info["fingerprint"] = cache_fingerprint(info)
    write_json(os.path.join(staging, INFO_FILE), info)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)  # the finished cache appears at once, info file included
    cached = f" and hidden states of {_describe_layers(hidden_layers)} ({hidden_dtype})" if hidden_layers else ""
    logger.info("teacher cache (top-%d, T=%s%s) for %s written to %s", k, temperature, cached, ", ".join(splits), path)
    return path


def check_hidden_layers(teacher_config, hidden_layers, hidden_dtype: str) -> dict[str, list[int]] | None:
    """``hidden_layers`` as {stack role: sorted distinct layers} of the teacher's stacks, checked before any forward."""
    if hidden_dtype not in CACHE_HIDDEN_DTYPES:
        raise InputError(f"unknown cache_hidden_dtype {hidden_dtype!r}; choose one of: {', '.join(CACHE_HIDDEN_DTYPES)}")
    if not hidden_layers:
        return None
    stacks = {stack.role: stack for stack in family_of(teacher_config).stacks}
    unknown = sorted(set(hidden_layers) - set(stacks))
    if unknown:
        raise InputError(f"the teacher has no {', '.join(unknown)} stack to cache (its stacks: {', '.join(stacks)})")
    checked = {}
    for role, layers in hidden_layers.items():
        count = num_layers(teacher_config, stacks[role])
        outside = [layer for layer in layers if not 0 <= int(layer) < count]
        if outside:
            raise InputError(
                f"{role} layer {outside[0]} cannot be cached: the teacher has {count} {role} layers (0..{count - 1})"
            )
        if layers:
            checked[role] = sorted({int(layer) for layer in layers})
    return checked or None


def _describe_layers(layers: dict[str, SequenceOf[int]]) -> str:
    return "; ".join(f"{role} layer{'s' if len(each) > 1 else ''} {', '.join(map(str, each))}" for role, each in layers.items())


def _cache_features(hidden_layers: dict[str, list[int]] | None, hidden_size: int | None, hidden_dtype: str) -> Features:
    """The Arrow schema: the top-k rows, and one ``[positions, layers, hidden]`` array per cached stack (only the
    first dimension varies, so a row reads back as one numpy block, not nested Python lists)."""
    columns = dict(CACHE_FEATURES)
    for role, layers in (hidden_layers or {}).items():
        columns[HIDDEN_COLUMNS[role]] = Array3D(shape=(None, len(layers), hidden_size), dtype=hidden_dtype)
    return Features(columns)


def _cache_rows(teacher, tokenizer, task, dataset, k, temperature, batch_size, split, hidden_layers=None, hidden_dtype="float32"):
    """Yield, per example in dataset order, its [positions, k] top-k log-probabilities at ``temperature`` and ids
    (and, with ``hidden_layers``, each cached stack's ``[positions, layers, hidden]`` states).

    Examples are read in windows, sorted by length inside a window (less padding) and yielded back in order, so
    memory stays bounded by one window whatever the data size.
    """
    device = teacher.device  # several teachers (teachers.MixtureTeacher) may wait on the CPU and score elsewhere
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
                cached_batch = _teacher_rows(
                    teacher,
                    collator,
                    task,
                    [examples[i] for i in batch_indices],
                    k,
                    temperature,
                    device,
                    hidden_layers=hidden_layers,
                    hidden_dtype=hidden_dtype,
                )
            for index, rows in zip(batch_indices, cached_batch, strict=True):
                cached[index] = rows
            progress.update(len(batch_indices))
        yield from cached
    progress.close()


def _teacher_rows(
    teacher, collator, task, examples, k, temperature, device, hidden_layers=None, hidden_dtype="float32"
) -> list[dict]:
    """The cache columns of each example: its top-k rows, and the hidden states of the cached layers."""
    batch = {name: tensor.to(device) for name, tensor in collator(examples).items()}
    labels = batch.pop("labels")
    if task == "seq2seq" and "decoder_input_ids" not in batch:
        batch["decoder_input_ids"] = teacher.prepare_decoder_input_ids_from_labels(labels=labels)
    outputs = teacher(**batch, **({"output_hidden_states": True} if hidden_layers else {}))
    logits = outputs.logits
    if task == "causal_lm":
        logits = logits[:, :-1]  # position t predicts token t + 1 (logit_rows)
    values, indices = F.log_softmax(logits.float() / temperature, dim=-1).topk(k, dim=-1)
    mask = logit_rows(task, labels, batch["attention_mask"]).distill  # the rows the trainer's KD term compares
    rows = [
        {
            CACHE_LOG_PROBS: values[row][mask[row]].cpu().tolist(),
            CACHE_INDICES: indices[row][mask[row]].to(torch.int32).cpu().tolist(),
        }
        for row in range(len(examples))
    ]
    for stack in family_of(teacher.config).stacks:
        layers = (hidden_layers or {}).get(stack.role)
        if not layers:
            continue
        # The positions the trainer's feature terms read (features.stack_positions): decoders on the label rows.
        stack_mask = mask if on_target_side(stack) else batch["attention_mask"].bool()
        states = torch.stack([outputs[stack.hidden_states_key][layer + 1] for layer in layers], dim=2)  # [B, T, L, H]
        for row, cached in enumerate(rows):
            cached[HIDDEN_COLUMNS[stack.role]] = states[row][stack_mask[row]].float().cpu().numpy().astype(hidden_dtype)
    return rows


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

    @property
    def hidden_layers(self) -> dict[str, list[int]]:
        """{stack role: the teacher layers whose hidden states are cached}; empty for a logits-only cache."""
        return (self.info.get("hidden_states") or {}).get("layers") or {}

    @cached_property
    def teacher_config(self):
        """The teacher's config (layer counts, hidden size) for layer pairing, or None when the cache lacks it."""
        config = self.info.get("teacher_config")
        return CONFIG_MAPPING[config["model_type"]].from_dict(config) if config else None

    def attach(self, split: str, dataset: Dataset) -> Dataset:
        """The tokenized split with the cached rows as extra columns (same row order, checked by fingerprint).

        Hidden-state columns are read as numpy arrays: one block per example instead of millions of Python floats.
        """
        attached = concatenate_datasets([dataset, self.splits[split]], axis=1)
        hidden = [column for column in HIDDEN_COLUMNS.values() if column in attached.column_names]
        return attached.with_format("numpy", columns=hidden, output_all_columns=True) if hidden else attached

    def collator(self, base):
        return CachedTeacherCollator(base)

    def check_terms(self, settings) -> None:
        """The run's teacher terms against what this cache holds: one line naming those it cannot serve."""
        feature_weights = {TERMS_BY_NAME[name].weight for name in SERVED_FEATURE_TERMS}
        served = {TERMS_BY_NAME[name].weight for name in SERVED_TERMS} | (feature_weights if self.hidden_layers else set())
        on = describe_weights(settings, "teacher")  # "name = value" of each weight that is on
        unserved = [entry for entry in on if entry.split(" = ")[0] not in served]
        if not unserved:
            return
        features = [entry for entry in unserved if entry.split(" = ")[0] in feature_weights]
        if features:
            raise InputError(
                f"{', '.join(features)}: this teacher cache holds no hidden states; rebuild it with cache_teacher "
                "--cache_hidden_states (and the student's --student or layer maps), or distill with the live teacher"
            )
        holds = "top-k log-probabilities and hidden states" if self.hidden_layers else "top-k log-probabilities only"
        raise InputError(
            f"a teacher cache holds {holds}, and {', '.join(unserved)} need the live teacher (attention maps, "
            "self-attention relations, the spans of another tokenization and registered terms' teacher outputs are "
            f"not cached): set "
            f"{'it' if len(unserved) == 1 else 'them'} to 0, or distill with the live teacher"
        )

    def check_layers(self, pairs: tuple[StackPair, ...]) -> None:
        """Every teacher layer the student's pairing reads is cached, else one line naming the missing ones."""
        missing = {}
        for pair in pairs:
            needed = set(pair.layer_map) - set(self.hidden_layers.get(pair.teacher.role, ()))
            if needed:
                missing[pair.teacher.role] = sorted(needed)
        if missing:
            held = _describe_layers(self.hidden_layers) or "no layers"
            raise InputError(
                f"the student's layer pairing reads teacher {_describe_layers(missing)}, which the teacher cache "
                f"{self.path!r} does not hold (it holds {held}); rebuild it with cache_teacher --cache_hidden_states "
                "--student <this student> (or the same --encoder_layer_map / --decoder_layer_map / --layer_map)"
            )

    def teacher_outputs(self, inputs: dict, pairs: tuple[StackPair, ...], positions: StepPositions) -> dict:
        """What the feature terms read of a live teacher's outputs, from the batch's cached hidden states.

        Per stack, ``{hidden_states_key: tuple}`` indexed as a model's (embeddings first): ``[B, T, H]`` at the
        cached layers (zero at the positions no term reads), None at the others, which no pair reads
        (:meth:`check_layers`).
        """
        outputs = {}
        for pair in pairs:
            column = HIDDEN_COLUMNS[pair.teacher.role]
            if inputs.get(column) is None:
                raise InputError(
                    f"this batch has no cached {pair.teacher.role} hidden states; attach the teacher cache to every "
                    "dataset the trainer sees"
                )
            rows = inputs[column]  # [N, L, H], the stack's positions in flat-index order
            mask, _ = stack_positions(pair, positions)
            compared = int(mask.sum())
            if rows.shape[0] != compared:
                raise InputError(
                    f"the batch has {rows.shape[0]} cached {pair.teacher.role} positions but {compared} to compare: "
                    "the cache was built for other data; rebuild it with cache_teacher"
                )
            padded = rows.new_zeros((*mask.shape, *rows.shape[1:]))
            padded[mask] = rows
            layers = self.hidden_layers[pair.teacher.role]
            states: list = [None] * (max(layers) + 2)
            for slot, layer in enumerate(layers):
                states[layer + 1] = padded[..., slot, :]
            outputs[pair.teacher.hidden_states_key] = tuple(states)
        return outputs


class CachedTeacherCollator:
    """Pads the usual fields with ``base`` and concatenates the examples' cached rows into ``[N, k]`` tensors (and
    each cached stack's hidden states into ``[N, L, H]``, N its positions in the batch, as float32)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict]) -> dict:
        stripped = [{key: value for key, value in feature.items() if key not in CACHE_COLUMNS} for feature in features]
        batch = self.base(stripped)
        log_probs = [row for feature in features for row in feature[CACHE_LOG_PROBS]]
        indices = [row for feature in features for row in feature[CACHE_INDICES]]
        batch[CACHE_LOG_PROBS] = torch.tensor(log_probs, dtype=torch.float32)
        batch[CACHE_INDICES] = torch.tensor(indices, dtype=torch.long)
        for column in HIDDEN_COLUMNS.values():
            if features and column in features[0]:
                blocks = [np.asarray(feature[column], dtype=np.float32) for feature in features]
                # An example without positions, read back as a plain list rather than numpy, has no [0, L, H] shape.
                batch[column] = torch.from_numpy(np.concatenate([block for block in blocks if block.size] or blocks[:1]))
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
