"""Weights and the temperature over the run: schedules over optimizer steps, and optional automatic balancing.

**Schedules.** ``--schedules NAME=KIND:START->END[,warmup=N]`` (several entries as separate words or joined with
``;``; in a config file also a mapping ``{NAME: "KIND:START->END,warmup=N"}``) makes a setting follow a schedule
instead of its fixed value. NAME is ``temperature``, a weight of the terms table (``kd_weight``, ``hidden_weight``,
...) or a registered term (its ``term_weights`` name). With ``s`` the optimizer step (``state.global_step``: 0 for
the first update), ``M`` the run's optimizer steps (``state.max_steps``) and ``W`` the warm-up steps, the progress
is ``p = clamp((s - W) / (M - W), 0, 1)`` (0 throughout when ``M <= W``) and the value::

    constant:V          V
    linear:A->B         A + (B - A) * p
    cosine:A->B         B + (A - B) * (1 + cos(pi * p)) / 2

so the value holds at A during the warm-up, then moves to B (reached at step M, like the Trainer's learning-rate
schedules). The value is a pure function of the step, so a resumed run reads exactly what the uninterrupted one did.

**Balancing** (off by default). ``--balance_terms kd_loss=1.0`` scales a term so that its running magnitude is a
set ratio of the CE term's. After each optimizer step ``t`` the running magnitudes are updated from the step's term
values ``x_t`` (detached, summed over the step's micro-batches, averaged over processes)::

    m_0 = |x_0|        m_t = momentum * m_{t-1} + (1 - momentum) * |x_t|      (momentum: --balance_momentum)

and the next steps weigh term ``i`` by ``ratio_i * m(ce_loss) / max(m(term_i), 1e-12)``. The first step, before any
magnitude exists, uses the term's own weight (which must therefore be above 0). The magnitudes are saved in the
checkpoint's ``trainer_state.json`` (a Trainer ``ExportableState``) and read back on resume.

The trainer reads every weight and the temperature through one object, :class:`SettingsAtStep` (see
:func:`attach_schedules`): nothing mutates the settings, and each logged training step carries the scheduled and
balanced values it trained with (``kd_weight``, ``temperature``; a registered term's as ``NAME_weight``).

About 400 lines, one job: every value that changes over a run (the formula, its parser, balancing and the one
object the trainer reads them through), so a resumed run and the logs agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .errors import InputError
from .terms import BUILT_IN_TERMS, TERMS_BY_NAME, registered_terms

SCHEDULE_KINDS = ("constant", "linear", "cosine")
SYNTAX = "name=kind:start->end[,warmup=N], e.g. kd_weight=linear:0.1->0.9,warmup=10 or temperature=cosine:4->1"
CACHE_TEMPERATURE_REFUSAL = (
    "a temperature schedule cannot be used with a teacher cache: the cache holds the teacher's log-probabilities at "
    "the one temperature it was built at; drop temperature from --schedules, or distill with the live teacher"
)
_SMALLEST_MAGNITUDE = 1e-12  # a term that is exactly 0 (a student equal to its teacher) gets a large, finite weight


@dataclass(frozen=True)
class Schedule:
    """A setting's value over the run (see the module docstring for the formula)."""

    kind: str
    start: float
    end: float
    warmup: int = 0

    @property
    def peak(self) -> float:
        """The largest value it takes: constant, linear and cosine are monotone from start to end."""
        return max(self.start, self.end)

    def text(self) -> str:
        """The one written form, which :func:`parse_schedule` reads back to the same schedule."""
        values = f"{self.start!r}" if self.kind == "constant" else f"{self.start!r}->{self.end!r}"
        return f"{self.kind}:{values}" + (f",warmup={self.warmup}" if self.warmup else "")


def value(schedule: Schedule, step: int, max_steps: int) -> float:
    """The schedule's value at optimizer step ``step`` of a run of ``max_steps`` steps."""
    span = max_steps - schedule.warmup
    progress = 0.0 if span <= 0 else min(max((step - schedule.warmup) / span, 0.0), 1.0)
    if schedule.kind == "linear":
        return schedule.start + (schedule.end - schedule.start) * progress
    if schedule.kind == "cosine":
        return schedule.end + (schedule.start - schedule.end) * (1 + math.cos(math.pi * progress)) / 2
    return schedule.start


# ---- reading -----------------------------------------------------------------------------------------------------


def schedulable_names() -> tuple[str, ...]:
    """The settings a schedule may drive: the temperature, every weight of the terms table, every registered term."""
    return ("temperature", *(term.weight for term in BUILT_IN_TERMS), *registered_terms())


def parse_schedule(name: str, text: str) -> Schedule:
    """``KIND:START->END[,warmup=N]`` (``constant:V`` for a constant) for setting ``name``, or one InputError line."""
    entry = f"{name}={text}"
    kind, colon, rest = str(text).strip().partition(":")
    kind = kind.strip()
    if not colon:
        raise InputError(f"schedule {entry!r} has no kind; write it as {SYNTAX}")
    if kind not in SCHEDULE_KINDS:
        raise InputError(f"schedule {entry!r}: unknown kind {kind!r}; choose one of: {', '.join(SCHEDULE_KINDS)}")
    values, *options = rest.split(",")
    warmup = 0
    for option in options:
        key, equals, amount = option.partition("=")
        if key.strip() != "warmup" or not equals:
            raise InputError(f"schedule {entry!r}: unknown option {option.strip()!r}; the only option is warmup=N")
        try:
            warmup = int(amount)
        except ValueError:
            warmup = -1
        if warmup < 0:
            raise InputError(f"schedule {entry!r}: warmup must be a whole number of steps >= 0, got {amount.strip()!r}")
    ends = values.split("->")
    if kind == "constant" and len(ends) != 1:
        raise InputError(f"schedule {entry!r}: a constant has one value, e.g. {name}=constant:0.5")
    if kind != "constant" and len(ends) != 2:
        raise InputError(f"schedule {entry!r}: a {kind} schedule goes from a start to an end value, e.g. {name}={kind}:0.1->0.9")
    try:
        numbers = [float(end) for end in ends]
    except ValueError:
        numbers = [math.nan]
    if not all(math.isfinite(number) for number in numbers):
        raise InputError(f"schedule {entry!r}: values must be finite numbers; write it as {SYNTAX}")
    if name == "temperature" and min(numbers) <= 0:
        raise InputError(f"schedule {entry!r}: a temperature must stay above 0")
    if min(numbers) < 0:
        raise InputError(f"schedule {entry!r}: a weight must stay >= 0")
    return Schedule(kind, numbers[0], numbers[-1], warmup)


def parse_schedules(values) -> dict[str, Schedule]:
    """``["kd_weight=linear:0.1->0.9,warmup=10", ...]`` (entries may also be joined with ``;``) or a mapping
    ``{"kd_weight": "linear:0.1->0.9,warmup=10"}`` -> {setting: Schedule}; each name once, each a schedulable one."""
    if not values:
        return {}
    if isinstance(values, dict):
        entries = [(str(name), str(text)) for name, text in values.items()]
    else:
        items = [values] if isinstance(values, str) else values
        pieces = [piece for item in items for piece in str(item).split(";") if piece.strip()]
        entries = []
        for piece in pieces:
            name, equals, text = piece.partition("=")
            if not equals:
                raise InputError(f"schedule {piece.strip()!r} names no setting; write it as {SYNTAX}")
            entries.append((name, text))
    allowed = schedulable_names()
    schedules: dict[str, Schedule] = {}
    for name, text in entries:
        name = name.strip()
        if name not in allowed:
            raise InputError(
                f"schedule for {name!r}: not the temperature, a weight or a registered term; schedulable: {', '.join(allowed)}"
            )
        if name in schedules:
            raise InputError(f"{name} has two schedules; give it one")
        schedules[name] = parse_schedule(name, text)
    return schedules


def named_numbers(values, setting: str, form: str, allowed: Callable[[float], bool]) -> dict[str, float]:
    """``["name=0.5", ...]`` (flags, config lists), ``"name=0.5"`` or ``{"name": 0.5}`` (Python, config mappings)
    -> {name: number}: the form of ``--term_weights`` and ``--balance_terms``; a bad entry is one InputError line
    ``{setting} entry name=value must be {form}``."""
    if not values:
        return {}
    values = [values] if isinstance(values, str) else values
    items = values.items() if isinstance(values, dict) else (str(item).partition("=")[::2] for item in values)
    numbers = {}
    for name, given in items:
        name = str(name).strip()
        try:
            number = float(given)
        except (TypeError, ValueError):
            number = math.nan
        if not name or not math.isfinite(number) or not allowed(number):
            raise InputError(f"{setting} entry {name}={given!r} must be {form}")
        numbers[name] = number
    return numbers


def parse_ratios(values) -> dict[str, float]:
    """``--balance_terms``: {term name: ratio > 0}."""
    return named_numbers(values, "balance_terms", "term=ratio with a finite ratio > 0, e.g. kd_loss=1.0", lambda r: r > 0)


def check_cache_temperature(settings) -> None:
    """A teacher cache is at one temperature: refuse a run that schedules it, before any data or model is loaded."""
    if "temperature" in parse_schedules(getattr(settings, "schedules", None)):
        raise InputError(CACHE_TEMPERATURE_REFUSAL)


def weight_setting(term_name: str) -> str:
    """The setting that weighs a term: its column of the terms table, or a registered term's own name."""
    return TERMS_BY_NAME[term_name].weight if term_name in TERMS_BY_NAME else term_name


def check_schedules(settings) -> tuple[list[str] | None, list[str] | None]:
    """Check ``settings.schedules`` and ``settings.balance_terms`` (DistillationSettings) and return both in their
    one written form (``name=...`` lists, or None). Raises one InputError line naming the problem and the fix."""
    schedules = parse_schedules(settings.schedules)
    ratios = parse_ratios(settings.balance_terms)
    if settings.teacher_cache:  # the path of the cache to read (distill) or to write (cache_teacher)
        check_cache_temperature(settings)
    if not 0.0 <= settings.balance_momentum < 1.0:
        raise InputError(f"balance_momentum must be in [0, 1), got {settings.balance_momentum!r}")
    terms = {*(term.name for term in BUILT_IN_TERMS), *registered_terms()}
    for name in ratios:
        setting = weight_setting(name)
        if name == "ce_loss" or name not in terms:
            balanced = ", ".join(sorted(terms - {"ce_loss"}))
            raise InputError(f"balance_terms names {name!r}; terms are balanced against ce_loss, choose from: {balanced}")
        if setting in schedules:
            raise InputError(f"{name} is balanced and {setting} has a schedule; drop one of them")
        own = settings.extra_term_weights.get(name, 0.0) if name in registered_terms() else getattr(settings, setting)
        if not own > 0:
            flag = f"--term_weights {name}=W" if name in registered_terms() else f"--{setting}"
            raise InputError(
                f"balance_terms {name}: its weight weighs the first step, before any magnitude exists; set {flag} > 0"
            )
    ce_on = schedules["ce_weight"].peak > 0 if "ce_weight" in schedules else settings.ce_weight > 0
    if ratios and not ce_on:
        raise InputError("balance_terms scales terms against the CE term, which is off; set --ce_weight > 0")
    written = [f"{name}={schedule.text()}" for name, schedule in schedules.items()] or None
    return written, [f"{name}={ratio!r}" for name, ratio in ratios.items()] or None


def weight_peaks(schedules) -> dict[str, float]:
    """{weight setting: the largest value its schedule takes} (the temperature left out): the plan reads it, so a
    weight that starts at 0 and rises later has its term computed, and its needs requested, from the start."""
    return {name: schedule.peak for name, schedule in parse_schedules(schedules).items() if name != "temperature"}


# ---- balancing ---------------------------------------------------------------------------------------------------


def running_magnitude(previous: float | None, magnitude: float, momentum: float) -> float:
    """One step of the exponential moving average: the first value itself, then ``momentum * m + (1 - momentum) * x``."""
    return magnitude if previous is None else momentum * previous + (1 - momentum) * magnitude


def balanced_weight(ratio: float, ce_magnitude: float, term_magnitude: float) -> float:
    """The weight that makes a term's running magnitude ``ratio`` times CE's."""
    return ratio * ce_magnitude / max(term_magnitude, _SMALLEST_MAGNITUDE)


class TermBalance(TrainerCallback, ExportableState):
    """The running magnitudes of CE and the balanced terms, updated at the end of each optimizer step.

    Saved through the Trainer's ``ExportableState`` (in each checkpoint's ``trainer_state.json``, strict JSON: the
    magnitudes are finite floats) and read back in ``on_train_begin`` from the loaded state: the Trainer itself
    restores callbacks only with ``restore_callback_states_from_checkpoint``, which rebuilds them; the trainer finds
    this callback by type, so either way the resumed run uses the saved magnitudes.
    """

    def __init__(self, ratios: dict[str, float] | None = None, momentum: float = 0.9):
        self.ratios = dict(ratios or {})
        self.momentum = momentum
        self.magnitudes: dict[str, float] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def observe(self, terms: dict[str, torch.Tensor]) -> None:
        """Add a micro-batch's term values (each a part of the step's value: terms divide by step-wide counts)."""
        for name in ("ce_loss", *self.ratios):
            if name in terms:
                self._pending[name] = self._pending.get(name, 0.0) + terms[name].detach().float()

    def on_step_end(self, args, state, control, **kwargs):
        names = sorted(self._pending)
        if not names:
            return
        step_values = torch.stack([torch.as_tensor(self._pending[name]) for name in names])
        self._pending = {}
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            torch.distributed.all_reduce(step_values)  # every process then holds the same magnitudes and weights
            step_values = step_values / args.world_size
        for name, magnitude in zip(names, step_values.abs().tolist(), strict=True):
            if math.isfinite(magnitude):
                self.magnitudes[name] = running_magnitude(self.magnitudes.get(name), magnitude, self.momentum)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__) if state.stateful_callbacks else None
        if isinstance(saved, dict):
            self.magnitudes = {name: float(value) for name, value in saved["attributes"]["magnitudes"].items()}
        self._pending = {}

    def weights(self) -> dict[str, float]:
        """{weight setting: balanced weight} of each balanced term whose magnitude and CE's are known."""
        ce = self.magnitudes.get("ce_loss")
        return {
            weight_setting(name): balanced_weight(ratio, ce, self.magnitudes[name])
            for name, ratio in self.ratios.items()
            if ce is not None and name in self.magnitudes
        }

    def state(self) -> dict:
        return {
            "args": {"ratios": dict(self.ratios), "momentum": self.momentum},
            "attributes": {"magnitudes": dict(self.magnitudes)},
        }


# ---- what the trainer reads ------------------------------------------------------------------------------------


class SettingsAtStep:
    """The run's settings as the current optimizer step sees them: each scheduled or balanced setting at its value
    now, every other setting as given.

    The one seam of schedules: the trainer reads every weight (``terms.weight_of``, ``settings.kd_weight``, the
    policy penalties) and the temperature through this object, so no code path mutates the settings. ``clock``
    returns ``(state.global_step, state.max_steps)``; ``balance`` returns the run's :class:`TermBalance` or None.
    """

    def __init__(self, settings, clock: Callable[[], tuple[int, int]], balance: Callable[[], TermBalance | None]):
        self._settings = settings
        self._schedules = parse_schedules(settings.schedules)
        self._clock = clock
        self._balance = balance
        self._registered = set(registered_terms())
        # A balanced term weighs its first step, before any magnitude exists, with its own weight.
        extra = settings.extra_term_weights
        self._first_weights = {
            weight_setting(name): extra[name] if name in self._registered else getattr(settings, weight_setting(name))
            for name in parse_ratios(settings.balance_terms)
        }
        self._driven = set(self._schedules) | set(self._first_weights)  # the settings read through now()
        self.trained_with: dict[str, float] = {}  # the values of the last training step, for its log

    def now(self) -> dict[str, float]:
        """{setting: value at the current step} of every scheduled or balanced setting (a balanced term without
        magnitudes yet, on the first step, at its own weight)."""
        step, max_steps = self._clock()
        values = {name: value(schedule, step, max_steps) for name, schedule in self._schedules.items()}
        balance = self._balance()
        return {**values, **self._first_weights, **(balance.weights() if balance is not None else {})}

    def __getattr__(self, name: str):
        if name.startswith("_"):  # never reached for this object's own attributes; guards copy and pickle
            raise AttributeError(name)
        if name in self._driven:
            return self.now()[name]
        return getattr(self._settings, name)

    @property
    def extra_term_weights(self) -> dict[str, float]:
        """Registered terms' weights (``term_weights``), with the scheduled and balanced ones at their value now."""
        now = {name: weight for name, weight in self.now().items() if name in self._registered}
        return {**self._settings.extra_term_weights, **now}

    def observe(self, terms: dict[str, torch.Tensor]) -> None:
        """A training micro-batch's terms: what balancing averages, and the values it trained with (for its log)."""
        self.trained_with = self.now()
        balance = self._balance()
        if balance is not None:
            balance.observe(terms)

    def logged(self) -> dict[str, float]:
        """The last training step's values by log name (a registered term's weight as ``NAME_weight``)."""
        return {f"{name}_weight" if name in self._registered else name: each for name, each in self.trained_with.items()}


def attach_schedules(trainer, settings):
    """``settings`` as the trainer should read them: a :class:`SettingsAtStep` tied to ``trainer.state`` (and a
    :class:`TermBalance` callback added) when the run has schedules or balanced terms, else ``settings`` itself."""
    ratios = parse_ratios(getattr(settings, "balance_terms", None))
    if not getattr(settings, "schedules", None) and not ratios:
        return settings
    if ratios:
        trainer.add_callback(TermBalance(ratios, settings.balance_momentum))

    def balance() -> TermBalance | None:
        return next((each for each in trainer.callback_handler.callbacks if isinstance(each, TermBalance)), None)

    return SettingsAtStep(settings, lambda: (trainer.state.global_step, trainer.state.max_steps), balance)


def observe_step(settings, terms: dict[str, torch.Tensor]) -> None:
    """Hand a training micro-batch's terms to the schedules (a no-op for a run without any)."""
    if isinstance(settings, SettingsAtStep):
        settings.observe(terms)


def scheduled_logs(settings) -> dict[str, float]:
    """The values a training log entry adds: each scheduled and balanced setting as its last step used it."""
    if not isinstance(settings, SettingsAtStep):
        return {}
    return {name: float(f"{each:.7g}") for name, each in settings.logged().items()}  # 7 digits, like a float32


__all__ = [
    "SCHEDULE_KINDS",
    "Schedule",
    "SettingsAtStep",
    "TermBalance",
    "attach_schedules",
    "balanced_weight",
    "check_cache_temperature",
    "check_schedules",
    "parse_schedule",
    "parse_schedules",
    "running_magnitude",
    "value",
    "weight_peaks",
]
