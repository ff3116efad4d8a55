"""Augmented copies of the labelled inputs: a larger transfer set for the teacher to label (Tang et al. 2019, 3.3).

Why: soft labels teach most on inputs the student has no hard label for. With only the labelled rows, a student
trained on KD learns little more than one trained on CE; given a transfer set it pulls ahead. Tang et al. 2019
("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks") report a BiLSTM on SST-2 going from
86.7 (CE on the labels) to 90.7 (KD from BERT on the augmented transfer set), and TinyBERT's ablation (Jiao et al.
2020) loses the most when its augmented data is removed. The augmented rows are KD-only: the teacher labels them,
CE never sees them (``transfer.py``).

What one augmented copy of a text is, with words split on whitespace (so a copy's words are joined by single
spaces: newlines and runs of spaces of the source are not kept):

- each word independently becomes the mask token with ``--augment_mask_prob``, else a word drawn from the corpus
  with ``--augment_replace_prob``, else stays as it is. Tang et al. replace a word by a random word of the same
  part of speech; no tagger is available offline, so the replacement is drawn from the unigram distribution of the
  training corpus (a word twice as frequent is drawn twice as often; it may be the word it replaces);
- then, with ``--augment_ngram_prob``, the whole copy is cut to a random n-gram of its words: n uniform in
  1..``--augment_ngram_max``, a uniform start; a copy with n words or fewer is kept whole.

Determinism: the copy ``c`` of row ``r``, column ``k``, draws from ``numpy.random.default_rng([seed, r, c, k])``,
so a copy depends only on its own text, the corpus vocabulary and the settings: not on the batch size, the number
of processes or the other rows. The vocabulary is counted once from every input column of the rows given, and
ordered by falling count, then by word, so the order of the rows does not change it.

Duplicates are dropped: a copy equal to its source (after whitespace normalization) or to an earlier copy of the
same row would only make the teacher label the same input twice. SST-2's short phrases often come out unchanged
(a one-word phrase survives 80% of the time with the defaults), so a dataset of N rows gives at most
``copies * N`` rows. The comparison is within a row only, which keeps every row independent of the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Value

from .arguments import DataArguments
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentationSettings",
    "CorpusVocabulary",
    "augment_dataset",
    "augment_texts",
    "augment_words",
    "augmentation_fingerprint",
    "build_vocabulary",
    "mask_token_of",
]

# The source of this module is part of every augmentation fingerprint: a change of the algorithm must not reuse a
# transfer set that datasets cached with the old one.
try:
    _ALGORITHM_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
except OSError:  # pragma: no cover - a frozen install without source files
    _ALGORITHM_HASH = "no-source"

_TEXT_DTYPES = ("string", "large_string", "null")  # null: a column of only None (empty texts)


@dataclass(frozen=True)
class CorpusVocabulary:
    """The words of the training corpus with their counts, the distribution replacement words are drawn from.

    Fields: ``words`` (tuple of str) and ``counts`` (tuple of int, one per word, all > 0), in the order
    :func:`build_vocabulary` gives (falling count, then the word).
    """

    words: tuple[str, ...]
    counts: tuple[int, ...]
    _cumulative: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.words) != len(self.counts):
            raise ValueError(f"{len(self.words)} words but {len(self.counts)} counts")
        object.__setattr__(self, "_cumulative", np.cumsum(np.asarray(self.counts, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.words)

    def sample(self, rng: np.random.Generator, size: int) -> list[str]:
        """``size`` words drawn independently, each with probability count / total (the corpus unigram)."""
        if size == 0:
            return []
        if not self.words:
            raise InputError("the corpus vocabulary is empty (no training input has a word); set --augment_replace_prob 0")
        draws = rng.integers(0, int(self._cumulative[-1]), size=size)
        return [self.words[index] for index in np.searchsorted(self._cumulative, draws, side="right")]


def build_vocabulary(texts: Iterable[str | None]) -> CorpusVocabulary:
    """Count the whitespace-separated words of ``texts`` (None is skipped) into a vocabulary.

    The order (falling count, then word) does not depend on the order of the texts, so shuffled or re-sharded
    training rows give the same vocabulary and thus the same replacements.
    """
    counter: Counter[str] = Counter()
    for text in texts:
        if text is not None:
            counter.update(text.split())
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return CorpusVocabulary(tuple(word for word, _ in ordered), tuple(count for _, count in ordered))


@dataclass(frozen=True)
class AugmentationSettings:
    """Everything an augmented copy depends on besides its text and the vocabulary (``DataArguments.augment_*``).

    Fields: ``copies`` (augmented copies per input, before duplicates are dropped), ``mask_prob``,
    ``replace_prob`` (per word; their sum is at most 1), ``ngram_prob`` (per copy), ``ngram_max`` (>= 1),
    ``seed`` (>= 0, a numpy seed) and ``mask_token`` (the text a masked word becomes, see :func:`mask_token_of`).
    The value ranges are checked where the flags are, in ``DataArguments``; the seed here, since numpy rejects a
    negative one with a less helpful message.
    """

    copies: int
    mask_prob: float
    replace_prob: float
    ngram_prob: float
    ngram_max: int
    seed: int
    mask_token: str

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise InputError(f"augment_seed must be at least 0 (a numpy seed), got {self.seed!r}")

    @classmethod
    def from_data_args(cls, data_args: DataArguments, mask_token: str, seed: int | None = None) -> AugmentationSettings:
        """The settings of ``data_args``; ``seed`` (when given) replaces ``--augment_seed``."""
        return cls(
            copies=data_args.augment_copies,
            mask_prob=data_args.augment_mask_prob,
            replace_prob=data_args.augment_replace_prob,
            ngram_prob=data_args.augment_ngram_prob,
            ngram_max=data_args.augment_ngram_max,
            seed=data_args.augment_seed if seed is None else seed,
            mask_token=mask_token,
        )


def augment_words(
    words: Sequence[str],
    rng: np.random.Generator,
    vocabulary: CorpusVocabulary,
    *,
    mask_prob: float,
    replace_prob: float,
    ngram_prob: float,
    ngram_max: int,
    mask_token: str,
) -> list[str]:
    """One augmented copy of ``words`` (a new list; ``words`` is not changed).

    Each word: masked with ``mask_prob``, replaced by a corpus word with ``replace_prob``, else kept (one uniform
    draw per word decides). Then, with ``ngram_prob``, the copy is cut to words[start : start + n], n uniform in
    1..``ngram_max``. The draws come from ``rng`` in a fixed order (the words, the n-gram coin, n, the start), so
    the same generator state gives the same copy.
    """
    augmented = list(words)
    if augmented:
        draws = rng.random(len(augmented))
        replaced = np.flatnonzero((draws >= mask_prob) & (draws < mask_prob + replace_prob))
        for position, word in zip(replaced, vocabulary.sample(rng, len(replaced)), strict=True):
            augmented[position] = word
        for position in np.flatnonzero(draws < mask_prob):
            augmented[position] = mask_token
    if rng.random() < ngram_prob:
        length = int(rng.integers(1, ngram_max + 1))
        if length < len(augmented):
            start = int(rng.integers(0, len(augmented) - length + 1))
            augmented = augmented[start : start + length]
    return augmented


def augment_texts(
    texts: Sequence[str | None],
    vocabulary: CorpusVocabulary,
    settings: AugmentationSettings,
    *,
    rows: Sequence[int] | None = None,
    column: int = 0,
) -> list[list[str]]:
    """``settings.copies`` augmented copies of each text: ``result[i][c]`` is copy c of ``texts[i]``.

    ``rows[i]`` is the index of ``texts[i]`` in the whole dataset (default 0, 1, ...) and ``column`` the position of
    the input column: with the seed they name the generator of each copy, so a text gets the same copies whatever
    else is in the list. None is an empty text. Nothing is dropped here; :func:`augment_dataset` drops duplicates.
    """
    rows = range(len(texts)) if rows is None else rows
    if len(rows) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(rows)} row indices")
    augmented = []
    for row, text in zip(rows, texts, strict=True):
        words = (text or "").split()
        copies = []
        for copy in range(settings.copies):
            rng = np.random.default_rng([settings.seed, int(row), copy, column])
            copy_words = augment_words(
                words,
                rng,
                vocabulary,
                mask_prob=settings.mask_prob,
                replace_prob=settings.replace_prob,
                ngram_prob=settings.ngram_prob,
                ngram_max=settings.ngram_max,
                mask_token=settings.mask_token,
            )
            copies.append(" ".join(copy_words))
        augmented.append(copies)
    return augmented


def augmentation_fingerprint(dataset_fingerprint: str, input_columns: Sequence[str], settings: AugmentationSettings) -> str:
    """The ``datasets`` fingerprint of the augmented dataset: the labelled data, the columns, the settings, the code.

    Set explicitly (``Dataset.map(new_fingerprint=...)``) rather than by hashing the map function, whose closure holds
    the vocabulary: hashing it would cost as much as building it. The batch size and the number of processes are
    left out on purpose: they do not change the result.
    """
    key = {
        "dataset": dataset_fingerprint,
        "input_columns": list(input_columns),
        "settings": [
            settings.copies,
            settings.mask_prob,
            settings.replace_prob,
            settings.ngram_prob,
            settings.ngram_max,
            settings.seed,
            settings.mask_token,
        ],
        "algorithm": _ALGORITHM_HASH,
    }
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def augment_dataset(
    dataset: Dataset,
    input_columns: Sequence[str],
    data_args: DataArguments,
    mask_token: str,
    seed: int | None = None,
) -> Dataset:
    """A new dataset of augmented copies of ``dataset``'s inputs, holding only ``input_columns`` (as strings).

    Up to ``--augment_copies`` rows per input row, in row order (the copies of row 0, then of row 1, ...): copies
    equal to their source or to an earlier copy of the same row are dropped. Several input columns (a text pair,
    or columns joined later into one input) are augmented independently; a copy is a duplicate only when all its
    columns are. ``seed`` (when given) replaces ``--augment_seed``. ``dataset`` is not modified.

    Built with ``Dataset.map`` under :func:`augmentation_fingerprint`, with ``--preprocessing_num_workers``
    processes: for file-backed data a second run with the same data and settings loads datasets' cache file
    (``--overwrite_cache`` rebuilds it), and the vocabulary is only counted when the copies are actually built.
    """
    input_columns = list(input_columns)
    settings = AugmentationSettings.from_data_args(data_args, mask_token, seed)
    for name in input_columns:
        if name not in dataset.column_names:
            raise InputError(
                f"column {name!r} not in dataset; columns are: {', '.join(dataset.column_names)}. Set --dataset_input_column."
            )
        feature = dataset.features[name]
        if not (isinstance(feature, Value) and feature.dtype in _TEXT_DTYPES):
            raise InputError(
                f"input column {name!r} holds {feature}, not text; augmentation copies text columns only. "
                "Set --dataset_input_column to the text column(s)."
            )
    features = Features({name: Value("string") for name in input_columns})
    if settings.copies == 0 or len(dataset) == 0:
        return Dataset.from_dict({name: [] for name in input_columns}, features=features)

    inputs = dataset.select_columns(input_columns)
    vocabulary_of_process: list[CorpusVocabulary] = []  # counted on first use, once per process

    def vocabulary() -> CorpusVocabulary:
        if not vocabulary_of_process:
            vocabulary_of_process.append(build_vocabulary(_column_texts(inputs, input_columns)))
        return vocabulary_of_process[0]

    def augment_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list[str]]:
        # Needed only when words are replaced; skipping it keeps mask / n-gram only runs cheap.
        corpus = vocabulary() if settings.replace_prob > 0 else CorpusVocabulary((), ())
        copies_by_column = [
            augment_texts(batch[name], corpus, settings, rows=indices, column=position)
            for position, name in enumerate(input_columns)
        ]
        kept: dict[str, list[str]] = {name: [] for name in input_columns}
        for position in range(len(indices)):
            seen = {tuple(" ".join((batch[name][position] or "").split()) for name in input_columns)}
            for copy in range(settings.copies):
                candidate = tuple(column_copies[position][copy] for column_copies in copies_by_column)
                if candidate in seen:
                    continue
                seen.add(candidate)
                for name, text in zip(input_columns, candidate, strict=True):
                    kept[name].append(text)
        return kept

    augmented = inputs.map(
        augment_batch,
        batched=True,
        with_indices=True,
        remove_columns=input_columns,
        features=features,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        new_fingerprint=augmentation_fingerprint(dataset._fingerprint, input_columns, settings),
        desc="augmenting the transfer set",
    )
    logger.info(
        "%d augmented copies of %d inputs (%d duplicates of a source or an earlier copy dropped)",
        len(augmented),
        len(dataset),
        settings.copies * len(dataset) - len(augmented),
    )
    return augmented


def _column_texts(inputs: Dataset, input_columns: Sequence[str]) -> Iterable[str | None]:
    """Every text of every input column, batch by batch (a large corpus is never held as one list)."""
    for batch in inputs.iter(batch_size=1000):
        for name in input_columns:
            yield from batch[name]


def mask_token_of(tokenizer) -> str:
    """The text a masked word becomes: the tokenizer's mask token, else its unk token, else a plain marker.

    A token that also marks a sequence boundary is skipped (GPT-2's unk token is ``<|endoftext|>``: it would end
    the text mid-sentence). Without a usable one: ``[UNK]`` when the vocabulary has that entry (BERT-style
    vocabularies), else ``<unk>``, which the tokenizer then reads as ordinary text, still one visible gap marker.
    """
    boundaries = {getattr(tokenizer, name, None) for name in ("eos_token", "bos_token", "pad_token", "sep_token", "cls_token")}
    for name in ("mask_token", "unk_token"):
        token = getattr(tokenizer, name, None)
        if token and token not in boundaries:
            return str(token)
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return "[UNK]" if "[UNK]" in vocabulary else "<unk>"
