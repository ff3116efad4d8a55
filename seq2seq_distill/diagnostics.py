"""Distillation diagnostics: what a run logs beside its terms to say whether distillation is doing anything.

A loss curve alone does not say whether the KD term trains the student: a KD of 0 may mean a perfect student or a
teacher that is a copy of it, and a term weighed at 1e-4 is there in name only. So, with ``--diagnostics`` (on by
default: its measured cost is within the step-time noise, see the README), each logged training step also carries:

* ``teacher_kl``: forward KL(teacher || student) per distilled row at the run's temperature (no T² factor),
  whatever the KD divergence, so runs with ``reverse_kl``, ``js`` or ``forward_kl`` compare on one scale. The run's
  temperature, not 1: it is the one a teacher cache holds, and on the default forward-KL path the value is the KD
  term itself divided by T², so it costs nothing; runs at different temperatures compare on ``argmax_agreement``.
  With a teacher cache it is ``teacher_kl_topk`` (over the k cached tokens plus the tail bucket, the KD term's own
  outcomes), beside ``teacher_topk_mass``, the teacher's mass on its k tokens (1 - tail) per distilled row;
* ``argmax_agreement``: the fraction of distilled rows where the teacher's most likely token is the student's;
* ``<term>_share``: each planned term's share of the loss, ``|w_i x_i| / sum_j |w_j x_j|`` over the logging
  window's optimizer steps (each at the weight it trained with, schedules and balancing included).

The first three are computed in the CE / KD row pass (``chunked_kd.row_diagnostics``), chunk by chunk and without
gradient, so no extra ``[N, V]`` tensor is made; they are never weighed into the loss (the trainer weighs only
planned terms) and, like every term, are logged in evaluation too (``eval_teacher_kl``). The shares come from the
step's scalars. :class:`TermWatch` warns once per term and run when a distillation term has been 0 or constant for
``--diagnostics_window`` optimizer steps, or weighs under 1% of the weighted CE over that window;
:class:`DistillationDiagnostics` is the Trainer callback that feeds it, keeps the run's means (restored on resume
from the checkpoint's ``trainer_state.json``) and gives the summary that ``training.train_model`` writes into
``training_metrics.json`` as ``distillation_diagnostics``.
"""

from __future__ import annotations

import logging
from collections import deque

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .chunked_kd import CACHED_DIAGNOSTICS, LIVE_DIAGNOSTICS
from .schedules import parse_ratios, parse_schedules, weight_setting
from .terms import PENALTY_WEIGHTS, TermPlan, weight_of

logger = logging.getLogger(__name__)

NEGLIGIBLE_SHARE = 0.01  # a weighted term under 1% of the weighted CE barely moves the student
# "0" up to float32 rounding: KD between a tiny T5 and an exact copy of it measured -6e-8 (the two forwards round
# differently), while a real KD, even of a well-trained student, is orders of magnitude above this.
ZERO_TOLERANCE = 1e-6
REFERENCE_TERM = "ce_loss"
# What else a step may report for the summary's means (the policy-gradient step's own diagnostic).
OTHER_DIAGNOSTICS = ("teacher_log_likelihood",)


def term_shares(weighted: dict[str, float]) -> dict[str, float]:
    """``{term: |w x| / sum |w x|}`` of weighted term values; empty when they are all 0 (no share is defined)."""
    total = sum(abs(value) for value in weighted.values())
    return {name: abs(value) / total for name, value in weighted.items()} if total > 0 else {}


class TermWatch:
    """Warnings about distillation terms that train nothing, from each optimizer step's values (no Trainer needed).

    ``settings`` maps each watched term to the flag that weighs it, as a template for a value (``"--kd_weight {}"``,
    ``"--term_weights my_loss={}"``). Over the last ``window`` steps a term is flagged when it was 0 (within
    ``ZERO_TOLERANCE``) at every one, the same nonzero value at every one, or, unless its weight is in ``exempt``
    (scheduled or balanced: a small weight is then the schedule's choice), when its mean weighted magnitude was under
    ``negligible`` times CE's. Each term warns at most once per run; ``window`` 0 turns the watch off.
    """

    def __init__(self, window: int, settings: dict[str, str], exempt: tuple[str, ...] = (), negligible: float = NEGLIGIBLE_SHARE):
        self.window = window
        self.settings = dict(settings)
        self.exempt = set(exempt)
        self.negligible = negligible
        self.recent: dict[str, deque] = {name: deque(maxlen=max(window, 1)) for name in (*settings, REFERENCE_TERM)}
        self.warned: list[str] = []

    def add(self, values: dict[str, float], weights: dict[str, float]) -> list[str]:
        """One optimizer step's term values and weights; returns the warnings it raises (new ones only)."""
        if self.window < 1:
            return []
        for name, recent in self.recent.items():
            if name in values:
                recent.append((values[name], weights.get(name, 0.0) * values[name], weights.get(name, 0.0)))
        messages = []
        for name in self.settings:
            message = None if name in self.warned else self._check(name)
            if message is not None:
                self.warned.append(name)
                messages.append(message)
        return messages

    def _check(self, name: str) -> str | None:
        recent, setting = self.recent[name], self.settings[name]
        if len(recent) < self.window:
            return None
        steps = f"the last {self.window} optimizer steps"
        values = [value for value, _, _ in recent]
        if all(abs(value) <= ZERO_TOLERANCE for value in values):
            return (
                f"{name} has been 0 (within {ZERO_TOLERANCE:g}) for {steps}, so it trains nothing: the student already "
                "matches the teacher on everything the term compares (is the teacher a copy of the student?), or the term "
                f"finds nothing to compare; check the teacher and the data, or set {setting.format(0)} to stop computing it"
            )
        if all(value == values[0] for value in values):
            return (
                f"{name} has been {values[0]:.6g} at each of {steps}: a term that never changes gives the student no "
                f"signal (does it read the student's outputs?); check the term and the teacher, or set {setting.format(0)}"
            )
        reference = self.recent[REFERENCE_TERM]
        if name in self.exempt or len(reference) < self.window:
            return None
        term = sum(abs(weighted) for _, weighted, _ in recent) / self.window
        ce = sum(abs(weighted) for _, weighted, _ in reference) / self.window
        weight = recent[-1][2]
        if ce > 0 and term < self.negligible * ce and weight > 0:  # term > 0 here: it was not 0 throughout
            tenth = weight * 0.1 * ce / term
            return (
                f"{name} is negligible next to {REFERENCE_TERM}: weighted, it averaged {term:.3g} against "
                f"{REFERENCE_TERM}'s {ce:.3g} over {steps} ({100 * term / ce:.2g}%, under {100 * self.negligible:g}%), so at "
                f"weight {weight:g} it barely trains the student; raise it ({setting.format(f'{tenth:.3g}')} would "
                f"make it about 10% of {REFERENCE_TERM}) or set {setting.format(0)}"
            )
        return None

    def state(self) -> dict:
        return {"recent": {name: [list(each) for each in recent] for name, recent in self.recent.items()}, "warned": self.warned}

    def load(self, state: dict) -> None:
        for name, entries in state.get("recent", {}).items():
            if name in self.recent:
                self.recent[name].clear()
                self.recent[name].extend(tuple(each) for each in entries)
        self.warned = list(state.get("warned", []))


class DistillationDiagnostics(TrainerCallback, ExportableState):
    """Each optimizer step's terms and diagnostics: the shares of each log, the watch's warnings, the run's means.

    The trainer hands it each training micro-batch's terms (:func:`observe_diagnostics`; the parts of a step add up
    to the step's value, since every term divides by step-wide counts); at the end of the step their sums are
    averaged over processes in one all-reduce, as ``TermBalance`` does, so every process holds the same numbers. Its
    constructor takes JSON values only and its running sums are its ``state()``, so a checkpoint restores it (found
    by type, as the Trainer may rebuild it) and a resumed run's summary covers the whole run.
    """

    def __init__(self, names: list[str], settings: dict[str, str], window: int = 50, exempt: list[str] | None = None):
        self.names = list(names)  # what may be tracked: one fixed order, the same in every process
        self.watch = TermWatch(window, settings, tuple(exempt or ()))
        self.steps = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.weighted_sums: dict[str, float] = {}
        self.warnings: list[str] = []
        self._log_weighted: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}

    def observe(self, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> None:
        """A training micro-batch's terms (detached) and the weights of the planned terms at this step."""
        for name in self.names:
            if name in terms:
                self._pending[name] = self._pending.get(name, 0.0) + terms[name].detach().float()
        self._weights = weights

    def on_step_end(self, args, state, control, **kwargs):
        if not self._pending:
            return
        device = next(iter(self._pending.values())).device
        present = torch.tensor([float(name in self._pending) for name in self.names], device=device)
        values = torch.stack([torch.as_tensor(self._pending.get(name, 0.0), device=device) for name in self.names])
        self._pending = {}
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            both = torch.stack([values, present])
            torch.distributed.all_reduce(both)  # a term a process skipped (non-finite) is averaged over the others
            values, present = both[0], both[1]
        step = {
            name: value / count for name, value, count in zip(self.names, values.tolist(), present.tolist(), strict=True) if count
        }
        self.steps += 1
        for name, value in step.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
            if name in self._weights:
                weighted = self._weights[name] * value
                self.weighted_sums[name] = self.weighted_sums.get(name, 0.0) + weighted
                self._log_weighted[name] = self._log_weighted.get(name, 0.0) + weighted
        for message in self.watch.add(step, self._weights):
            self.warnings.append(message)
            if state.is_world_process_zero:
                logger.warning("%s (--diagnostics_window 0 turns these warnings off)", message)

    def log_entries(self) -> dict[str, float]:
        """``{term_share: value}`` over the optimizer steps since the last call (each training log)."""
        shares = term_shares(self._log_weighted)
        self._log_weighted = {}
        return {f"{name}_share": round(share, 6) for name, share in sorted(shares.items())}

    def summary(self) -> dict:
        """Means over the run's optimizer steps of every term and diagnostic, the terms' shares, and the warnings."""
        means = {name: self.sums[name] / self.counts[name] for name in sorted(self.sums)}
        return {
            "optimizer_steps": self.steps,
            "means": means,
            "term_shares": dict(sorted(term_shares(self.weighted_sums).items())),
            "warnings": list(self.warnings),
        }

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__) if state.stateful_callbacks else None
        if isinstance(saved, dict):
            attributes = saved["attributes"]
            self.steps = int(attributes["steps"])
            self.sums, self.counts = dict(attributes["sums"]), dict(attributes["counts"])
            self.weighted_sums, self.warnings = dict(attributes["weighted_sums"]), list(attributes["warnings"])
            self.watch.load(attributes["watch_state"])
        self._pending, self._log_weighted = {}, {}

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.steps:
            means = self.summary()["means"]
            shown = (*LIVE_DIAGNOSTICS, *CACHED_DIAGNOSTICS[:2])
            described = ", ".join(f"{name} {means[name]:.4g}" for name in shown if name in means)
            logger.info("distillation diagnostics over %d optimizer steps: %s", self.steps, described or "no teacher rows")

    def state(self) -> dict:
        return {
            "args": {
                "names": self.names,
                "settings": self.watch.settings,
                "window": self.watch.window,
                "exempt": sorted(self.watch.exempt),
            },
            "attributes": {
                "steps": self.steps,
                "sums": self.sums,
                "counts": self.counts,
                "weighted_sums": self.weighted_sums,
                "warnings": self.warnings,
                "watch_state": self.watch.state(),  # not "watch": a rebuilt callback gets its attributes set
            },
        }


# ---- what the trainer calls --------------------------------------------------------------------------------------


def attach_diagnostics(trainer, plan: TermPlan, settings) -> None:
    """Add a :class:`DistillationDiagnostics` callback for a run that distills (``settings.diagnostics`` on)."""
    if not getattr(settings, "diagnostics", False) or plan.only_ce:
        return
    watched = {
        term.name: f"--term_weights {term.name}={{}}" if term.registered else f"--{term.weight} {{}}"
        for term in plan.terms
        if term.name != REFERENCE_TERM and term.weight not in PENALTY_WEIGHTS
    }
    # A scheduled or balanced weight is small when its schedule says so: not a mistake to warn about.
    driven = set(parse_schedules(settings.schedules)) | {weight_setting(name) for name in parse_ratios(settings.balance_terms)}
    exempt = [term.name for term in plan.terms if term.weight in driven]
    names = [*(term.name for term in plan.terms), *LIVE_DIAGNOSTICS, *CACHED_DIAGNOSTICS[:2], *OTHER_DIAGNOSTICS]
    trainer.add_callback(DistillationDiagnostics(names, watched, settings.diagnostics_window, exempt))


def diagnostics_of(trainer) -> DistillationDiagnostics | None:
    """The run's callback, found by type (the Trainer rebuilds callbacks it restores from a checkpoint)."""
    return next((each for each in trainer.callback_handler.callbacks if isinstance(each, DistillationDiagnostics)), None)


def observe_diagnostics(trainer, terms: dict[str, torch.Tensor]) -> None:
    """Hand a training micro-batch's terms, with the weights they train with now, to the run's diagnostics."""
    diagnostics = diagnostics_of(trainer)
    if diagnostics is not None:
        diagnostics.observe(terms, {term.name: weight_of(term, trainer.distillation) for term in trainer.plan.terms})


def diagnostics_logs(trainer) -> dict[str, float]:
    """The term shares a training log entry adds (none without diagnostics)."""
    diagnostics = diagnostics_of(trainer)
    return diagnostics.log_entries() if diagnostics is not None else {}


def diagnostics_summary(trainer) -> dict | None:
    """The run's ``distillation_diagnostics`` (see :meth:`DistillationDiagnostics.summary`), or None without them."""
    diagnostics = diagnostics_of(trainer)
    return diagnostics.summary() if diagnostics is not None and diagnostics.steps else None


__all__ = [
    "NEGLIGIBLE_SHARE",
    "ZERO_TOLERANCE",
    "DistillationDiagnostics",
    "TermWatch",
    "attach_diagnostics",
    "diagnostics_logs",
    "diagnostics_of",
    "diagnostics_summary",
    "observe_diagnostics",
    "term_shares",
]
