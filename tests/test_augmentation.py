"""Augmented transfer sets (Tang et al. 2019): each property of a copy, determinism, and the datasets integration."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from seq2seq_distill import augmentation
from seq2seq_distill.arguments import DataArguments
from seq2seq_distill.augmentation import (
    AugmentationSettings,
    CorpusVocabulary,
    augment_dataset,
    augment_texts,
    augment_words,
    build_vocabulary,
    mask_token_of,
)
from seq2seq_distill.errors import InputError

MASK = "[MASK]"
WORDS = "the film is a quietly moving and often funny look at grief , but its second half drags badly".split()


def sentences(count: int, seed: int = 0) -> list[str]:
    """SST-2-like phrases of 1 to 18 words from a fixed word list, the same for a seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 19)))) for _ in range(count)]


def settings(**overrides) -> AugmentationSettings:
    values = dict(copies=4, mask_prob=0.1, replace_prob=0.1, ngram_prob=0.25, ngram_max=5, seed=42, mask_token=MASK)
    return AugmentationSettings(**{**values, **overrides})


def word_settings(**overrides) -> dict:
    """The keyword arguments of augment_words, with every operation off unless overridden."""
    values = dict(mask_prob=0.0, replace_prob=0.0, ngram_prob=0.0, ngram_max=5, mask_token=MASK)
    return {**values, **overrides}


def is_contiguous_part(part: list[str], whole: list[str]) -> bool:
    return any(whole[start : start + len(part)] == part for start in range(len(whole) - len(part) + 1))


def binomial_tolerance(trials: int, probability: float) -> float:
    return 4.5 * math.sqrt(trials * probability * (1 - probability))  # a false alarm about once in 150,000 runs


@pytest.fixture
def texts():
    return sentences(40)


@pytest.fixture
def vocabulary(texts):
    return build_vocabulary(texts)


# ---- one copy ----------------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_copies_and_another_seed_other_copies(texts, vocabulary):
    first = augment_texts(texts, vocabulary, settings())
    assert augment_texts(texts, vocabulary, settings()) == first
    assert augment_texts(texts, vocabulary, settings(seed=43)) != first
    assert all(len(copies) == 4 for copies in first)


def test_copies_of_a_row_do_not_depend_on_the_other_rows(texts, vocabulary):
    all_rows = augment_texts(texts[:10], vocabulary, settings())
    assert augment_texts(texts[:5], vocabulary, settings()) == all_rows[:5]
    # a shuffled subset keeps each row's copies when it keeps the rows' indices
    assert augment_texts([texts[7], texts[3]], vocabulary, settings(), rows=[7, 3]) == [all_rows[7], all_rows[3]]


def test_zero_probabilities_give_exact_copies(texts, vocabulary):
    unchanged = settings(mask_prob=0.0, replace_prob=0.0, ngram_prob=0.0)
    copies = augment_texts(texts, vocabulary, unchanged)
    assert copies == [[" ".join(text.split())] * 4 for text in texts]


def test_mask_prob_one_masks_every_word_and_keeps_the_word_count(texts, vocabulary):
    copies = augment_texts(texts, vocabulary, settings(mask_prob=1.0, replace_prob=0.0, ngram_prob=0.0))
    for text, text_copies in zip(texts, copies):
        assert text_copies == [" ".join([MASK] * len(text.split()))] * 4


def test_replacement_words_come_from_the_corpus_vocabulary():
    corpus = build_vocabulary(["red green blue", "green cyan"])
    rng = np.random.default_rng(0)
    source = [f"word{index}" for index in range(200)]
    replaced = augment_words(source, rng, corpus, **word_settings(replace_prob=1.0))
    assert len(replaced) == len(source)
    assert set(replaced) <= set(corpus.words)
    assert set(replaced) == {"red", "green", "blue", "cyan"}  # 200 draws reach every word of the corpus


def test_replacement_words_follow_the_corpus_unigram_frequencies():
    corpus = build_vocabulary(["common common common rare"])
    assert corpus.words == ("common", "rare") and corpus.counts == (3, 1)
    draws = corpus.sample(np.random.default_rng(0), 20_000)
    assert abs(draws.count("common") - 15_000) < binomial_tolerance(20_000, 0.75)


def test_vocabulary_order_does_not_depend_on_the_order_of_the_texts(texts):
    assert build_vocabulary(texts) == build_vocabulary(list(reversed(texts)))
    assert build_vocabulary(["b a", "b", None]).words == ("b", "a")


def test_ngrams_are_contiguous_parts_of_the_source_at_most_max_long(vocabulary):
    source = [f"w{index}" for index in range(12)]
    lengths = set()
    for seed in range(300):
        cut = augment_words(source, np.random.default_rng(seed), vocabulary, **word_settings(ngram_prob=1.0, ngram_max=4))
        assert 1 <= len(cut) <= 4
        assert is_contiguous_part(cut, source)
        lengths.add(len(cut))
    assert lengths == {1, 2, 3, 4}
    for seed in range(20):  # a copy of at most n words is kept whole
        whole = augment_words(["only", "two"], np.random.default_rng(seed), vocabulary, **word_settings(ngram_prob=1.0))
        assert whole in (["only", "two"], ["only"], ["two"])
        assert augment_words(["one"], np.random.default_rng(seed), vocabulary, **word_settings(ngram_prob=1.0)) == ["one"]


def test_measured_mask_and_replace_rates_match_the_settings():
    corpus = build_vocabulary(["corpusword"])  # no source word is in the corpus: every replacement is visible
    source = [f"w{index}" for index in range(50)]
    masked = replaced = 0
    trials = 0
    for seed in range(400):
        copy = augment_words(source, np.random.default_rng(seed), corpus, **word_settings(mask_prob=0.1, replace_prob=0.15))
        masked += copy.count(MASK)
        replaced += copy.count("corpusword")
        trials += len(source)
    assert abs(masked - 0.1 * trials) < binomial_tolerance(trials, 0.1)
    assert abs(replaced - 0.15 * trials) < binomial_tolerance(trials, 0.15)


def test_measured_ngram_rate_matches_the_setting(vocabulary):
    source = [f"w{index}" for index in range(20)]  # longer than ngram_max: every cut is visible
    copies = 4_000
    cut = sum(
        len(augment_words(source, np.random.default_rng(seed), vocabulary, **word_settings(ngram_prob=0.25))) < 20
        for seed in range(copies)
    )
    assert abs(cut - 0.25 * copies) < binomial_tolerance(copies, 0.25)


def test_an_empty_vocabulary_cannot_replace_words():
    with pytest.raises(InputError, match="vocabulary is empty"):
        augment_words(["a"], np.random.default_rng(0), CorpusVocabulary((), ()), **word_settings(replace_prob=1.0))


def test_negative_seed_is_an_input_error():
    with pytest.raises(InputError, match="augment_seed"):
        settings(seed=-1)


# ---- the datasets integration ------------------------------------------------------------------------------------


def data_args(**overrides) -> DataArguments:
    return DataArguments(augment_copies=4, **overrides)


def labelled(texts) -> Dataset:
    return Dataset.from_dict({"sentence": texts, "label": [index % 2 for index in range(len(texts))]})


def expected_rows(columns: dict[str, list[str]], copies_settings: AugmentationSettings) -> dict[str, list[str]]:
    """What augment_dataset should give, rebuilt from augment_texts and the documented duplicate rule."""
    names = list(columns)
    corpus = build_vocabulary([text for name in names for text in columns[name]])
    per_column = [augment_texts(columns[name], corpus, copies_settings, column=position) for position, name in enumerate(names)]
    rows: dict[str, list[str]] = {name: [] for name in names}
    for row in range(len(columns[names[0]])):
        seen = {tuple(" ".join(columns[name][row].split()) for name in names)}
        for copy in range(copies_settings.copies):
            candidate = tuple(column_copies[row][copy] for column_copies in per_column)
            if candidate not in seen:
                seen.add(candidate)
                for name, text in zip(names, candidate):
                    rows[name].append(text)
    return rows


def test_dataset_holds_the_deduplicated_copies_of_its_input_column(texts):
    augmented = augment_dataset(labelled(texts), ["sentence"], data_args(), MASK)
    assert augmented.column_names == ["sentence"]
    assert augmented.to_dict() == expected_rows({"sentence": texts}, settings())
    assert 0 < len(augmented) < 4 * len(texts)  # some short phrases come out unchanged and are dropped


def test_copies_equal_to_their_source_are_dropped(texts):
    unchanged = data_args(augment_mask_prob=0.0, augment_replace_prob=0.0, augment_ngram_prob=0.0)
    assert len(augment_dataset(labelled(texts), ["sentence"], unchanged, MASK)) == 0
    masked = data_args(augment_mask_prob=1.0, augment_replace_prob=0.0, augment_ngram_prob=0.0)
    assert len(augment_dataset(labelled(texts), ["sentence"], masked, MASK)) == len(texts)  # 4 equal copies: one kept


def test_labelled_dataset_is_not_modified(texts):
    dataset = labelled(texts)
    rows, fingerprint, columns = dataset.to_dict(), dataset._fingerprint, dataset.column_names
    augmented = augment_dataset(dataset, ["sentence"], data_args(), MASK)
    assert len(augmented) > 0
    assert dataset.to_dict() == rows
    assert dataset._fingerprint == fingerprint
    assert dataset.column_names == columns
    assert augmented._fingerprint != fingerprint


def test_dataset_copies_do_not_depend_on_the_number_of_processes(texts):
    single = augment_dataset(labelled(texts), ["sentence"], data_args(), MASK)
    sharded = augment_dataset(labelled(texts), ["sentence"], data_args(preprocessing_num_workers=2), MASK)
    assert sharded.to_dict() == single.to_dict()
    assert sharded._fingerprint == single._fingerprint


CHANGED_SETTINGS = {
    "augment_copies": 3,
    "augment_mask_prob": 0.2,
    "augment_replace_prob": 0.05,
    "augment_ngram_prob": 0.5,
    "augment_ngram_max": 3,
    "augment_seed": 7,
}


@pytest.mark.parametrize("name", sorted(CHANGED_SETTINGS))
def test_fingerprint_changes_with_each_setting(texts, name):
    dataset = labelled(texts)
    base = augment_dataset(dataset, ["sentence"], data_args(), MASK)._fingerprint
    changed = augment_dataset(dataset, ["sentence"], dataclasses.replace(data_args(), **{name: CHANGED_SETTINGS[name]}), MASK)
    assert changed._fingerprint != base


def test_fingerprint_is_stable_and_changes_with_seed_mask_token_and_data(texts):
    dataset = labelled(texts)
    base = augment_dataset(dataset, ["sentence"], data_args(), MASK)._fingerprint
    assert augment_dataset(dataset, ["sentence"], data_args(), MASK)._fingerprint == base
    assert augment_dataset(dataset, ["sentence"], data_args(max_source_length=64), MASK)._fingerprint == base
    assert augment_dataset(dataset, ["sentence"], data_args(), MASK, seed=42)._fingerprint == base  # the flag's value
    assert augment_dataset(dataset, ["sentence"], data_args(), MASK, seed=43)._fingerprint != base
    assert augment_dataset(dataset, ["sentence"], data_args(), "<unk>")._fingerprint != base
    assert augment_dataset(labelled(texts[:-1]), ["sentence"], data_args(), MASK)._fingerprint != base


def test_second_run_loads_the_cached_copies(texts, tmp_path, monkeypatch):
    labelled(texts).save_to_disk(str(tmp_path / "train"))
    dataset = load_from_disk(str(tmp_path / "train"))  # file-backed, as every real source is
    first = augment_dataset(dataset, ["sentence"], data_args(), MASK)
    assert first.cache_files and first._fingerprint in first.cache_files[0]["filename"]

    def not_again(*args, **kwargs):
        raise AssertionError("the copies were built again instead of loaded from the cache")

    monkeypatch.setattr(augmentation, "augment_texts", not_again)
    second = augment_dataset(load_from_disk(str(tmp_path / "train")), ["sentence"], data_args(), MASK)
    assert second.to_dict() == first.to_dict()
    assert second.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    with pytest.raises(AssertionError, match="built again"):  # --overwrite_cache rebuilds
        augment_dataset(dataset, ["sentence"], data_args(overwrite_cache=True), MASK)
    with pytest.raises(AssertionError, match="built again"):  # other settings: another cache entry
        augment_dataset(dataset, ["sentence"], data_args(), MASK, seed=1)


def test_text_pairs_are_augmented_column_by_column(texts):
    pairs = Dataset.from_dict({"sentence1": texts, "sentence2": texts, "label": [0] * len(texts)})
    augmented = augment_dataset(pairs, ["sentence1", "sentence2"], data_args(), MASK)
    assert augmented.column_names == ["sentence1", "sentence2"]
    assert augmented.to_dict() == expected_rows({"sentence1": texts, "sentence2": texts}, settings())
    # the same text in both columns gets different copies: each column has its own generators
    assert augmented["sentence1"] != augmented["sentence2"]


def test_no_copies_or_no_rows_give_an_empty_dataset_of_the_input_columns(texts):
    assert augment_dataset(labelled(texts), ["sentence"], DataArguments(augment_copies=0), MASK).column_names == ["sentence"]
    assert len(augment_dataset(labelled(texts), ["sentence"], DataArguments(augment_copies=0), MASK)) == 0
    assert len(augment_dataset(labelled([]), ["sentence"], data_args(), MASK)) == 0


def test_missing_or_non_text_columns_are_input_errors(texts):
    with pytest.raises(InputError, match="column 'text' not in dataset; columns are: sentence, label"):
        augment_dataset(labelled(texts), ["text"], data_args(), MASK)
    with pytest.raises(InputError, match="'label' holds"):
        augment_dataset(labelled(texts), ["label"], data_args(), MASK)


# ---- the mask token ----------------------------------------------------------------------------------------------


def fake_tokenizer(vocabulary=(), **tokens):
    return SimpleNamespace(get_vocab=lambda: dict.fromkeys(vocabulary, 0), **tokens)


def test_mask_token_of_prefers_the_mask_then_the_unk_token():
    assert mask_token_of(fake_tokenizer(mask_token="[MASK]", unk_token="[UNK]")) == "[MASK]"  # BERT
    assert mask_token_of(fake_tokenizer(mask_token=None, unk_token="<unk>", eos_token="</s>")) == "<unk>"  # T5


def test_mask_token_of_skips_sequence_boundaries_and_falls_back_to_a_plain_marker():
    gpt2 = dict(mask_token=None, unk_token="<|endoftext|>", eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    assert mask_token_of(fake_tokenizer(**gpt2)) == "<unk>"
    assert mask_token_of(fake_tokenizer(vocabulary=["[UNK]", "a"], **gpt2)) == "[UNK]"
