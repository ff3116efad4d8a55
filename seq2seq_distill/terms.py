"""The one table of loss terms: what each is called, which setting weighs it, and what it needs to be computed.

Everything that lists terms is derived from this table: the term plan of a run (which terms are on; a term with
weight 0 costs nothing), the list of weight settings that the argument checks use, the settings of a CE-only run
(a teacher's training, a baseline), and the error messages that name the weights needing a teacher. The built-in
terms are computed in groups that share work (CE and KD in one chunked pass over the logits, the feature terms over
the same layer pairs, the policy-gradient loss and its penalties over the same samples); a term registered with
:func:`register_term` is one function of its own::

    def pooled_cosine(step: TermInputs) -> torch.Tensor:
        ...  # a sum over positions divided by the step-wide count of those positions

    register_term("pooled_cosine_loss", pooled_cosine, needs={"teacher", "hidden_states"})
    # weighted by --term_weights pooled_cosine_loss=0.5 (a flag, a config key, or term_weights= in Python)

This module imports nothing of the package (only torch): the arguments check weights against it, the trainer plans from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

NEEDS = frozenset({"teacher", "teacher_outputs", "hidden_states", "attentions", "qkv", "layer_pairs", "target_spans"})


@dataclass(frozen=True)
class Term:
    """One row of the table.

    ``weight`` names the setting that weighs it (a field of DistillationSettings; for registered terms an entry of
    ``term_weights``); ``group`` says which shared computation produces it (``logits``, ``features``, ``policy``)
    or is None for a registered term, whose ``compute`` function produces it alone; ``needs`` is what the step
    must provide (a live teacher, hidden states, attention maps, the queries, keys and values of mapped layers'
    self-attention, layer pairs, the aligned spans of two tokenizations); ``training_only`` terms are not computed in evaluation.
    """

    name: str
    weight: str
    group: str | None = None
    needs: frozenset[str] = frozenset()
    training_only: bool = False
    compute: Callable[[Any], Any] | None = field(default=None, compare=False)
    registered: bool = False


@dataclass
class StepPositions:
    """Boolean masks of the positions each side's terms sum over, and their step-wide counts.

    ``target_mask``: the logit rows distilled (see ``modeling.logit_rows``): ``[B, T]`` label positions (seq2seq;
    causal LM: shifted, ``[B, T - 1]``) or ``[B]`` examples (classification). ``label_mask``: those of them with a
    label (CE). ``source_mask``: ``[B, S]`` non-padding input tokens. Each count covers the whole optimizer step.
    """

    target_mask: torch.Tensor
    source_mask: torch.Tensor
    target_count: torch.Tensor
    source_count: torch.Tensor
    label_mask: torch.Tensor
    label_count: torch.Tensor


@dataclass
class TermInputs:
    """What a registered term's function gets: the models, their outputs for this micro-batch, and the positions."""

    student: Any
    teacher: Any
    student_outputs: Any
    teacher_outputs: Any
    inputs: dict
    positions: StepPositions
    settings: Any
    training: bool


BUILT_IN_TERMS: tuple[Term, ...] = (
    Term("ce_loss", "ce_weight", "logits"),
    # teacher_outputs: the teacher runs on the batch; pg_loss needs the teacher only to score its own samples.
    Term("kd_loss", "kd_weight", "logits", frozenset({"teacher", "teacher_outputs"})),
    Term("hidden_loss", "hidden_weight", "features", frozenset({"teacher", "teacher_outputs", "hidden_states", "layer_pairs"})),
    Term(
        "attention_loss", "attention_weight", "features", frozenset({"teacher", "teacher_outputs", "attentions", "layer_pairs"})
    ),
    Term("norm_loss", "norm_weight", "features", frozenset({"teacher", "teacher_outputs", "hidden_states", "layer_pairs"})),
    # qkv: forward hooks on the mapped layers' self-attention projections, registered only around this step's forwards.
    Term("relation_loss", "relation_weight", "features", frozenset({"teacher", "teacher_outputs", "qkv", "layer_pairs"})),
    # Across tokenizers (seq2seq, causal LM): the aligned spans of the two tokenizations of the target text.
    Term("uld_loss", "uld_weight", "cross_tokenizer", frozenset({"teacher", "teacher_outputs", "target_spans"})),
    Term("matched_kl_loss", "matched_kl_weight", "cross_tokenizer", frozenset({"teacher", "teacher_outputs", "target_spans"})),
    Term("pg_loss", "policy_gradient_weight", "policy", frozenset({"teacher"}), training_only=True),
    # The penalties act on the policy-gradient samples: on only together with pg_loss (see plan_terms).
    Term("token_frequency_penalty", "token_frequency_penalty", "policy", training_only=True),
    Term("diversity_penalty", "diversity_penalty", "policy", training_only=True),
    Term("entropy_penalty", "entropy_penalty", "policy", training_only=True),
)
TERMS_BY_NAME = {term.name: term for term in BUILT_IN_TERMS}
_REGISTERED: dict[str, Term] = {}

# The built-in weights that switch a term on by themselves (the penalties only modify the policy-gradient term).
PRIMARY_WEIGHTS = tuple(term.weight for term in BUILT_IN_TERMS if term.group != "policy" or term.name == "pg_loss")
PENALTY_WEIGHTS = tuple(term.weight for term in BUILT_IN_TERMS if term.group == "policy" and term.name != "pg_loss")


def register_term(
    name: str,
    compute: Callable[[Any], Any],
    *,
    needs: set[str] | frozenset[str] | tuple[str, ...] = (),
    training_only: bool = False,
) -> Term:
    """Add a distillation term without editing the package; it is weighed by ``term_weights[name]``.

    ``compute(step)`` gets a :class:`TermInputs` (the student and teacher, their outputs,
    the batch and the positions with their step-wide counts) and returns a scalar tensor. For exact gradient
    accumulation, return a sum over positions divided by the step-wide count of those positions
    (``step.positions.target_count`` or ``source_count``). ``needs`` may hold ``teacher`` (the live teacher runs
    and ``step.teacher_outputs`` is set), ``hidden_states`` and ``attentions`` (both models return them). At weight
    0 the term is never computed. Registering a name again replaces the earlier function.
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"term name {name!r} must be letters, digits and underscores")
    if any(term.name == name for term in BUILT_IN_TERMS):
        raise ValueError(f"{name!r} is a built-in term; choose another name")
    unknown = set(needs) - {"teacher", "hidden_states", "attentions"}
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; choose from: teacher, hidden_states, attentions")
    needs = set(needs) | ({"teacher_outputs"} if "teacher" in needs else set())  # it reads the teacher's outputs
    term = Term(name, name, None, frozenset(needs), training_only, compute, registered=True)
    _REGISTERED[name] = term
    return term


def unregister_term(name: str) -> None:
    _REGISTERED.pop(name, None)


def registered_terms() -> dict[str, Term]:
    return dict(_REGISTERED)


def all_terms() -> tuple[Term, ...]:
    return (*BUILT_IN_TERMS, *_REGISTERED.values())


def weight_of(term: Term, settings) -> float:
    """The weight a run gives ``term`` (0 when the setting is absent, e.g. plain TrainingArguments)."""
    if term.registered:
        return float((getattr(settings, "extra_term_weights", None) or {}).get(term.name, 0.0))
    return float(getattr(settings, term.weight, 0.0) or 0.0)


def peak_weight_of(term: Term, settings) -> float:
    """The largest weight ``term`` gets over the run: its schedule's peak when its weight follows one (the settings'
    ``scheduled_weight_peaks``), else its weight. Plans read it, so a weight that starts at 0 and rises is on."""
    peaks = getattr(settings, "scheduled_weight_peaks", None) or {}
    return float(peaks[term.weight]) if term.weight in peaks else weight_of(term, settings)


@dataclass(frozen=True)
class TermPlan:
    """The terms a run computes: those with a weight above 0 (penalties only with the policy-gradient term)."""

    terms: tuple[Term, ...]
    on_policy: bool = False

    @classmethod
    def from_settings(cls, settings) -> TermPlan:
        return plan_terms(settings)

    def has(self, name: str) -> bool:
        return any(term.name == name for term in self.terms)

    def needs(self, need: str, *, training: bool = True) -> bool:
        return any(need in term.needs for term in self.active(training))

    def active(self, training: bool = True) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if training or not term.training_only)

    def group(self, group: str) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if term.group == group)

    @property
    def registered(self) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if term.registered)

    # Names the step reads often.
    ce = property(lambda self: self.has("ce_loss"))
    kd = property(lambda self: self.has("kd_loss"))
    hidden = property(lambda self: self.has("hidden_loss"))
    attention = property(lambda self: self.has("attention_loss"))
    norm = property(lambda self: self.has("norm_loss"))
    relation = property(lambda self: self.has("relation_loss"))
    policy_gradient = property(lambda self: self.has("pg_loss"))
    needs_teacher = property(lambda self: self.needs("teacher"))
    needs_hidden_states = property(lambda self: self.needs("hidden_states"))
    needs_layer_pairs = property(lambda self: self.needs("layer_pairs"))
    needs_attentions = property(lambda self: self.needs("attentions"))

    @property
    def only_ce(self) -> bool:
        """CE alone: a run without distillation (a teacher's own training, or a baseline student)."""
        return [term.name for term in self.terms] == ["ce_loss"] and not self.on_policy

    @property
    def uses_unlabelled_rows(self) -> bool:
        """Whether any term learns from rows without a label (every term but CE does)."""
        return any(term.name != "ce_loss" for term in self.terms)


def plan_terms(settings) -> TermPlan:
    """The plan of a run's settings: every term of the table whose weight (or its schedule's peak) is above 0."""
    policy_gradient = peak_weight_of(TERMS_BY_NAME["pg_loss"], settings) > 0
    terms = tuple(
        term
        for term in all_terms()
        if peak_weight_of(term, settings) > 0 and (term.group != "policy" or term.name == "pg_loss" or policy_gradient)
    )
    return TermPlan(terms, on_policy=float(getattr(settings, "on_policy_fraction", 0.0) or 0.0) > 0)


def ce_only_settings() -> dict:
    """The setting values of a run without a teacher: CE at 1, every other term and on-policy sampling off."""
    values: dict = {term.weight: 0.0 for term in BUILT_IN_TERMS}
    values.update(ce_weight=1.0, on_policy_fraction=0.0, term_weights=None, schedules=None, balance_terms=None)
    return values


def describe_weights(settings, need: str) -> list[str]:
    """``name = value`` of each weight that is on and whose term needs ``need`` (for error messages)."""
    described = []
    for term in plan_terms(settings).terms:
        if need in term.needs:
            setting = f"term_weights[{term.name}]" if term.registered else term.weight
            described.append(f"{setting} = {peak_weight_of(term, settings):g}")
    return described


__all__ = [
    "StepPositions",
    "Term",
    "TermInputs",
    "TermPlan",
    "ce_only_settings",
    "peak_weight_of",
    "plan_terms",
    "register_term",
    "registered_terms",
    "unregister_term",
]
