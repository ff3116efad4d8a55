"""Each metric against a value computed independently: the library called directly on hand-split text, or by hand."""

import math

import pytest
from nltk.translate.bleu_score import corpus_bleu
from rouge_score.rouge_scorer import RougeScorer

from seq2seq_distill.metrics import (
    bleu_scores,
    classification_scores,
    generation_length,
    perplexity,
    prediction_agreement,
    rouge_scores,
    split_sentences,
)

# (prediction sentences, reference sentences); the sentences are split by hand so the direct rougeLsum below does not
# depend on split_sentences.
PAIRS = [
    (["The cats were running across the garden."], ["A cat ran across the garden."]),
    (["Dr. Smith visited the hospital on Monday.", "He left early."], ["Dr. Smith went to the hospital on Monday."]),
    (["Prices rose sharply in March.", "Markets fell."], ["Markets fell in March.", "Prices rose sharply."]),
    (["The committee approved the new budget today."], ["Today the new budget was approved by the committee."]),
    (["It rained all day.", "Then the sun came out.", "Everyone went outside."], ["The sun came out after the rain."]),
]
PREDICTIONS = [" ".join(prediction) for prediction, _ in PAIRS]
REFERENCES = [" ".join(reference) for _, reference in PAIRS]
ROUGE_KEYS = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
BLEU_KEYS = ["bleu1", "bleu2", "bleu3", "bleu4"]


def test_split_sentences_splits_on_terminal_punctuation_before_a_capital():
    assert split_sentences("It rained. Then it stopped.") == ["It rained.", "Then it stopped."]
    assert split_sentences("Really? Yes! 3 more came.") == ["Really?", "Yes!", "3 more came."]
    assert split_sentences('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]


def test_split_sentences_keeps_abbreviations_and_lowercase_continuations_together():
    assert split_sentences("Use a fruit, e.g. this one.") == ["Use a fruit, e.g. this one."]
    assert split_sentences("Fruit, e.g. Apples, i.e. Red ones. Done.") == ["Fruit, e.g. Apples, i.e. Red ones.", "Done."]
    assert split_sentences("Dr. Smith met Mr. Jones, etc. Later they left.") == ["Dr. Smith met Mr. Jones, etc. Later they left."]
    assert split_sentences("The U.S. Army arrived. It was late.") == ["The U.S. Army arrived.", "It was late."]
    assert split_sentences("version 2.5 is out") == ["version 2.5 is out"]


def test_split_sentences_treats_newlines_as_boundaries_and_drops_blank_lines():
    assert split_sentences("first line\n\n  second line  \nthird") == ["first line", "second line", "third"]
    assert split_sentences("") == []


@pytest.mark.filterwarnings("error")  # nltk's zero-count warnings must be silenced, not leaked
def test_identical_text_scores_100_everywhere():
    rouge = rouge_scores(REFERENCES, REFERENCES)
    bleu = bleu_scores(REFERENCES, REFERENCES)
    assert sorted(rouge) == sorted(ROUGE_KEYS) and sorted(bleu) == sorted(BLEU_KEYS)
    for value in [*rouge.values(), *bleu.values()]:
        assert value == pytest.approx(100.0)


@pytest.mark.filterwarnings("error")
def test_disjoint_text_scores_exactly_0_everywhere():
    predictions = ["alpha beta gamma delta epsilon.", "Zeta eta theta. Iota kappa."]
    references = ["one two three four five.", "Six seven eight. Nine ten."]
    for value in [*rouge_scores(predictions, references).values(), *bleu_scores(predictions, references).values()]:
        assert value == 0.0


def test_rouge_matches_rouge_score_called_directly():
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = dict.fromkeys(ROUGE_KEYS, 0.0)
    for prediction_sentences, reference_sentences in PAIRS:
        flat = scorer.score(" ".join(reference_sentences), " ".join(prediction_sentences))
        by_line = scorer.score("\n".join(reference_sentences), "\n".join(prediction_sentences))
        for key in ["rouge1", "rouge2", "rougeL"]:
            expected[key] += flat[key].fmeasure * 100 / len(PAIRS)
        expected["rougeLsum"] += by_line["rougeLsum"].fmeasure * 100 / len(PAIRS)

    got = rouge_scores(PREDICTIONS, REFERENCES)
    for key in ROUGE_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert 0 < got["rouge2"] < got["rouge1"] < 100  # the fixed set really is a partial match


def test_rouge_uses_the_stemmer():
    # "cats running" only matches "cat run" after Porter stemming.
    assert rouge_scores(["cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_sees_sentences_so_reordering_them_costs_nothing():
    reference = "The cat sat down. The dog ran off."
    prediction = "The dog ran off. The cat sat down."
    scores = rouge_scores([prediction], [reference])
    # One LCS over the whole text can follow only one of the two sentences: 4 of 8 tokens each way.
    assert scores["rougeL"] == pytest.approx(50.0)
    # Union-LCS over sentences recovers both, which only happens if each sentence went onto its own line.
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_bleu_matches_corpus_bleu_called_directly():
    def tokens(sentences):
        return " ".join(sentences).lower().replace(".", " ").replace(",", " ").split()

    hypotheses = [tokens(prediction) for prediction, _ in PAIRS]
    list_of_references = [[tokens(reference)] for _, reference in PAIRS]
    weights = {"bleu1": (1.0,), "bleu2": (0.5, 0.5), "bleu3": (1 / 3, 1 / 3, 1 / 3), "bleu4": (0.25, 0.25, 0.25, 0.25)}

    got = bleu_scores(PREDICTIONS, REFERENCES)
    for key, weight in weights.items():
        expected = 100 * corpus_bleu(list_of_references, hypotheses, weights=weight)
        assert got[key] == pytest.approx(expected, rel=1e-12), key
    assert 0 < got["bleu4"] < got["bleu1"] < 100


@pytest.mark.filterwarnings("error")  # no bigram matches here, so nltk would warn if not silenced
def test_bleu1_matches_a_hand_computation():
    # Hypothesis: the the the dog cat (c = 5). Reference: the cat sat on the mat today (r = 7).
    # Clipped unigram matches: "the" min(3, 2) = 2, "cat" 1, "dog" 0 -> precision 3/5.
    # c < r, so the brevity penalty is exp(1 - r/c) = exp(1 - 7/5).
    expected = 100 * (3 / 5) * math.exp(1 - 7 / 5)
    assert bleu_scores(["The the THE dog, cat."], ["the cat sat on the mat today"])["bleu1"] == pytest.approx(expected)


def test_bleu1_has_no_brevity_penalty_when_the_hypothesis_is_long_enough():
    # Hypothesis: the cat the mat sat dog (c = 6). Reference: the cat sat on the mat (r = 6).
    # Clipped matches: "the" 2, "cat" 1, "mat" 1, "sat" 1, "dog" 0 -> 5/6; c = r, so the penalty is 1.
    assert bleu_scores(["the cat the mat sat dog"], ["the cat sat on the mat"])["bleu1"] == pytest.approx(100 * 5 / 6)


@pytest.mark.filterwarnings("error")
def test_bleu_without_higher_order_matches_is_0_for_those_orders_and_warns_nothing():
    # Unigrams overlap but no bigram does: without smoothing nltk puts sys.float_info.min in for the empty
    # precision, so BLEU-2..4 come out as ~1e-153 rather than exactly 0.
    scores = bleu_scores(["cat the dog mat"], ["the cat sat on the mat"])
    assert scores["bleu1"] > 0
    for key in ["bleu2", "bleu3", "bleu4"]:
        assert scores[key] == pytest.approx(0.0, abs=1e-100), key


@pytest.mark.filterwarnings("error")  # zero_division=0 must keep sklearn's UndefinedMetricWarning away
def test_classification_scores_match_a_hand_computation():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 0, 2]
    # class 0: predicted at 0 and 4, correct at 0 -> P 1/2, R 1/2, F1 1/2
    # class 1: predicted at 1, 2, 3, correct at 2, 3 -> P 2/3, R 2/2, F1 2 * (2/3) / (5/3) = 4/5
    # class 2: predicted at 5, correct at 5 -> P 1, R 1/2, F1 2 * (1/2) / (3/2) = 2/3
    scores = classification_scores(predictions, labels, label_names=["neg", "neu", "pos"])
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)
    assert scores["macro_f1"] == pytest.approx(100 * (1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert scores["per_class"] == {
        "neg": {"precision": pytest.approx(50.0), "recall": pytest.approx(50.0), "support": 2},
        "neu": {"precision": pytest.approx(100 * 2 / 3), "recall": pytest.approx(100.0), "support": 2},
        "pos": {"precision": pytest.approx(100.0), "recall": pytest.approx(50.0), "support": 2},
    }


@pytest.mark.filterwarnings("error")
def test_classification_scores_give_0_for_classes_never_predicted_or_never_seen():
    # Class 2 is in the labels but never predicted; class 1 is neither. Macro-F1 averages the classes present
    # (sklearn's default): class 0 P 2/3 R 1 F1 4/5, class 2 F1 0 -> 40.
    scores = classification_scores([0, 0, 0], [0, 0, 2])
    assert scores["accuracy"] == pytest.approx(100 * 2 / 3)
    assert scores["macro_f1"] == pytest.approx(40.0)
    assert scores["per_class"] == {
        "0": {"precision": pytest.approx(100 * 2 / 3), "recall": pytest.approx(100.0), "support": 2},
        "1": {"precision": 0.0, "recall": 0.0, "support": 0},
        "2": {"precision": 0.0, "recall": 0.0, "support": 1},
    }


def test_classification_scores_reject_class_ids_without_a_name():
    with pytest.raises(ValueError, match=r"class ids \[2\] are outside 0\.\.1; pass one label name per class id"):
        classification_scores([0, 2], [0, 1], label_names=["neg", "pos"])


def test_perplexity_is_exp_of_the_mean_token_nll():
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    assert perplexity(0.0, 5) == 1.0
    with pytest.raises(ValueError, match="total_tokens must be positive, got 0"):
        perplexity(1.0, 0)


def test_generation_length_is_the_mean():
    assert generation_length([3, 4, 8]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="token_counts must not be empty"):
        generation_length([])


def test_prediction_agreement_is_the_percent_of_equal_positions():
    assert prediction_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(75.0)
    assert prediction_agreement(["a", "b"], ["a", "b"]) == pytest.approx(100.0)
    assert prediction_agreement([0, 0], [1, 1]) == 0.0


@pytest.mark.parametrize("metric", [rouge_scores, bleu_scores, prediction_agreement, classification_scores])
def test_empty_inputs_are_rejected(metric):
    with pytest.raises(ValueError, match="must not be empty; pass at least one example"):
        metric([], [])


@pytest.mark.parametrize(
    ("metric", "first", "second", "message"),
    [
        (rouge_scores, ["a", "b"], ["a"], "got 2 predictions but 1 references; pass exactly one reference per prediction"),
        (bleu_scores, ["a"], ["a", "b"], "got 1 predictions but 2 references; pass exactly one reference per prediction"),
        (classification_scores, [0, 1], [0], "got 2 predictions but 1 labels; pass exactly one label per prediction"),
        (prediction_agreement, [0, 1], [0], "got 2 student_predictions but 1 teacher_predictions"),
    ],
    ids=["rouge", "bleu", "classification", "agreement"],
)
def test_mismatched_lengths_name_both_lengths(metric, first, second, message):
    with pytest.raises(ValueError, match=message):
        metric(first, second)
