"""Quality metrics for comparing a teacher with its distilled students, computed offline.

Every score comes from the reference library (rouge-score, nltk, scikit-learn) so numbers line up with published
ones; this module only adapts inputs, averages, and scales to percentages. Nothing here downloads data: nltk's punkt
and ``evaluate.load`` both need the network, so sentence splitting and BLEU tokenization use small regexes instead.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

from nltk.translate.bleu_score import corpus_bleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

__all__ = [
    "EVAL_METRICS",
    "bleu_scores",
    "classification_eval_metrics",
    "classification_scores",
    "generation_eval_metrics",
    "generation_length",
    "perplexity",
    "prediction_agreement",
    "rouge_scores",
    "split_sentences",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# What a training run's evaluation adds to eval_loss (as eval_<name>), per task: the benchmark's own scores, so a
# checkpoint picked by --metric_for_best_model is picked by the number the benchmark reports. Causal LMs have none
# here: their generations are scored once, after training (``training.validate_by_generation``).
EVAL_METRICS = {"seq2seq": (*ROUGE_TYPES, "gen_len"), "classification": ("accuracy", "f1"), "causal_lm": ()}
BLEU_WEIGHTS = {
    "bleu1": (1.0,),
    "bleu2": (1 / 2,) * 2,
    "bleu3": (1 / 3,) * 3,
    "bleu4": (1 / 4,) * 4,
}

# Lower-cased tokens ending in a period that almost never end a sentence.
_ABBREVIATIONS = frozenset(
    "e.g. i.e. etc. mr. mrs. ms. dr. prof. sr. jr. st. vs. cf. al. fig. no. inc. ltd. co. corp. approx. dept.".split()
)
# Dotted acronyms such as "U.S." or "a.m." behave like abbreviations too.
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.){2,}")
# A boundary is whitespace after terminal punctuation (optionally closed by a quote or bracket) that is followed by
# something that can open a sentence. Two fixed-width look-behinds because Python's look-behind cannot vary in width.
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_WORD = re.compile(r"\w+")


def _ends_with_abbreviation(text: str) -> bool:
    """True for "... Dr." so the period is not taken as a sentence end and the next piece is glued on."""
    last_token = text.rsplit(None, 1)[-1] if text.strip() else ""
    return last_token.lower() in _ABBREVIATIONS or _DOTTED_ACRONYM.fullmatch(last_token) is not None


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` without punkt, which would need a download; newlines already mark sentence ends."""
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        pending = ""
        for piece in _BOUNDARY.split(line):
            pending = f"{pending} {piece}" if pending else piece
            if not _ends_with_abbreviation(pending):
                sentences.append(pending)
                pending = ""
        if pending:
            sentences.append(pending)
    return sentences


def _check_pairs(first: Sequence, second: Sequence, first_name: str, second_name: str) -> None:
    if len(first) == 0 or len(second) == 0:
        raise ValueError(f"{first_name} and {second_name} must not be empty; pass at least one example")
    if len(first) != len(second):
        raise ValueError(
            f"got {len(first)} {first_name} but {len(second)} {second_name}; pass exactly one {second_name[:-1]} "
            f"per {first_name[:-1]}"
        )


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F1 x100; rougeLsum sees sentences as lines because that is the only split rouge-score honours
    without punkt."""
    _check_pairs(predictions, references, "predictions", "references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for rouge_type in ("rouge1", "rouge2", "rougeL"):
            totals[rouge_type] += scores[rouge_type].fmeasure
        # Lsum reads sentence boundaries from newlines, so re-join each text's sentences one per line.
        lsum = scorer.score("\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction)))
        totals["rougeLsum"] += lsum["rougeLsum"].fmeasure
    return {rouge_type: 100.0 * total / len(predictions) for rouge_type, total in totals.items()}


def _bleu_tokens(text: str) -> list[str]:
    """Lower-cased runs of word characters: no punkt download, and punctuation dropped as rouge-score drops it."""
    return _WORD.findall(text.lower())


def bleu_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 x100 without smoothing, so identical text scores 100 and disjoint text exactly 0.

    An order with no matching n-gram at all gives ~1e-150 rather than 0: nltk substitutes ``sys.float_info.min``.
    """
    _check_pairs(predictions, references, "predictions", "references")
    hypotheses = [_bleu_tokens(prediction) for prediction in predictions]
    list_of_references = [[_bleu_tokens(reference)] for reference in references]
    with warnings.catch_warnings():
        # nltk warns on every zero n-gram count; a zero score already says that.
        warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning)
        values = corpus_bleu(list_of_references, hypotheses, weights=list(BLEU_WEIGHTS.values()))
    return {name: 100.0 * float(value) for name, value in zip(BLEU_WEIGHTS, values, strict=True)}


def generation_length(token_counts: list[int]) -> float:
    """Mean generated length, so a student that scores well only by writing less is visible."""
    if len(token_counts) == 0:
        raise ValueError("token_counts must not be empty; pass one count per generated sequence")
    return sum(token_counts) / len(token_counts)


def classification_scores(
    predictions: list[int], labels: list[int], label_names: list[str] | None = None
) -> dict[str, float | dict[str, dict[str, float | int]]]:
    """Accuracy, macro-F1 and per-class precision/recall x100; classes that are never predicted score 0, not NaN."""
    _check_pairs(predictions, labels, "predictions", "labels")
    if label_names is None:
        label_names = [str(i) for i in range(max(max(predictions), max(labels)) + 1)]
    out_of_range = sorted({value for value in (*predictions, *labels) if not 0 <= value < len(label_names)})
    if out_of_range:
        raise ValueError(f"class ids {out_of_range} are outside 0..{len(label_names) - 1}; pass one label name per class id")
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(label_names))), zero_division=0
    )
    per_class = {
        name: {"precision": 100.0 * float(precision[i]), "recall": 100.0 * float(recall[i]), "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": 100.0 * float(accuracy_score(labels, predictions)),
        "macro_f1": 100.0 * float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "per_class": per_class,
    }


def classification_eval_metrics(predictions: list[int], labels: list[int], label_names: list[str] | None = None) -> dict:
    """``EVAL_METRICS["classification"]`` of :func:`classification_scores` (f1 is its macro-F1), on the labelled rows
    only: a row labelled -100 (unlabelled) has no right answer to score, and a split of such rows gives {} (its
    evaluation still has its losses, KD needing no label)."""
    labelled = [(prediction, label) for prediction, label in zip(predictions, labels, strict=True) if label >= 0]
    if not labelled:
        return {}
    scores = classification_scores([p for p, _ in labelled], [label for _, label in labelled], label_names)
    return {"accuracy": scores["accuracy"], "f1": scores["macro_f1"]}


def generation_eval_metrics(predictions: list[str], references: list[str], token_counts: list[int]) -> dict[str, float]:
    """``EVAL_METRICS["seq2seq"]``: :func:`rouge_scores` and the mean generated length, under the Trainer's names."""
    return {**rouge_scores(predictions, references), "gen_len": generation_length(token_counts)}


def perplexity(total_negative_log_likelihood: float, total_tokens: int) -> float:
    """exp of the per-token NLL; take sums over the whole set so batches of different sizes weigh correctly."""
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be positive, got {total_tokens}; count the non-padding target tokens")
    return math.exp(total_negative_log_likelihood / total_tokens)


def prediction_agreement(student_predictions: list, teacher_predictions: list) -> float:
    """Percent of positions where the student matches the teacher: fidelity to the teacher, not to the labels."""
    _check_pairs(student_predictions, teacher_predictions, "student_predictions", "teacher_predictions")
    matches = sum(student == teacher for student, teacher in zip(student_predictions, teacher_predictions, strict=True))
    return 100.0 * matches / len(student_predictions)
