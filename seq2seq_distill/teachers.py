"""Several teachers for one student: their names and weights, the one KD target they make together, routing of
rows to a teacher, where idle teachers wait, and the record each checkpoint keeps of the teachers.

**One target.** The KD target of several teachers is the mixture of their softened distributions,
``p_mix = sum_i w_i softmax(z_i / T)`` (weights normalized to sum 1; ``losses.teacher_mixture_log_probs``). It is
one distribution like a single teacher's, so every divergence applies to it unchanged, and the T² scaling and the
row counts stay those of single-teacher KD. It reaches the CE / KD row pass written as logits, ``T * log p_mix``
(whose softmax at T is ``p_mix``), so nothing after the teachers' forward knows there were several, a registered
term that reads ``teacher_outputs.logits`` included. Why not a sum of KLs to each teacher: with forward KL that sum
differs from KL to the mixture only by a constant (the same gradient, so nothing to offer), and with reverse KL it
is minimized by the teachers' normalized geometric mean, which keeps mass only where all of them agree; that
target is ``teacher_mixture="geometric"`` (``softmax(sum_i w_i z_i / T)``: averaged logits), and with
``divergence="reverse_kl"`` it has exactly that sum's gradient. Both are one target, so neither needs a second
row pass.

**Routing.** With ``teacher_column``, each row names its teacher; its KD target is that teacher alone (weight 1),
and a row with an empty name takes the mixture. A name that is no teacher of the run is one error before training
(:func:`route_indices`). Teachers that no row of a batch needs do not run on it.

**Features.** Hidden-state, attention, norm and relation terms compare layers of one teacher, ``feature_teacher``
(default: the first): the student's layer map, projections and relation heads are set up against it alone.

**Offloading.** With ``offload_idle_teachers`` every teacher waits on the CPU and moves to the training device only
for its own forward pass, so the device holds the student and one teacher at a time.

**Record.** Each checkpoint gets ``teachers.json``: every teacher's name, source, weight fingerprint
(``teacher_cache.teacher_fingerprint``: sha256 of the config and every weight), dtype and mixture weight. Resuming
with another teacher set is refused, naming what changed (:func:`check_resume_teachers`).

One teacher takes the trainer's plain path (its forward and raw logits, as before); only the record is added.

About 440 lines, one job: what several teachers add over one (names, weights, the mixture, routing, offloading,
the checkpoint record and its resume check); the single-teacher path does not touch it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from datasets import Dataset

from .errors import InputError
from .lora import SelfTeacher
from .losses import add_to_teacher_mixture, finish_teacher_mixture
from .modeling import output_rows
from .reports import write_json
from .teacher_cache import teacher_fingerprint

logger = logging.getLogger(__name__)

# The batch field of routed rows: the index of each row's teacher (MIXTURE_ROUTE: the mixture). Owned here.
ROUTE_COLUMN = "teacher_route"
MIXTURE_ROUTE = -1
TEACHERS_FILE = "teachers.json"
RECORD_FORMAT = 1


# ---- who the teachers are --------------------------------------------------------------------------------------


def teacher_names(teacher_model) -> tuple[list[str], list]:
    """Names and models (or sources) of ``teacher_model=``: a dict keeps its names; a list, or one teacher, is named
    by each model's folder name (``teacher_0``, ``teacher_1``, ... for all when one is missing or two repeat)."""
    if isinstance(teacher_model, dict):
        names, models = [str(name) for name in teacher_model], list(teacher_model.values())
    elif isinstance(teacher_model, (list, tuple)):
        models = list(teacher_model)
        names = [_folder_name(model) for model in models]
        if not all(names) or len(set(names)) != len(names):
            names = [f"teacher_{index}" for index in range(len(models))]
    else:
        models = [teacher_model]
        names = [_folder_name(teacher_model) or "teacher"]
    if not models:
        raise InputError("teacher_model is empty; give one teacher, a list of teachers or a dict {name: teacher}")
    if not all(name.strip() for name in names):
        raise InputError(f"teacher names must not be empty, got {names}")
    return names, models


def _folder_name(model) -> str:
    source = model if isinstance(model, str) else getattr(model, "name_or_path", None)
    return os.path.basename(os.path.normpath(source)) if source else ""


def normalized_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """The teachers' mixture weights summing to 1 (equal when unset); one per teacher, in their order."""
    if weights is None:
        return (1.0 / count,) * count
    if len(weights) != count:
        raise InputError(
            f"teacher_weights has {len(weights)} values for {count} teachers; give one per teacher, in --teachers order"
        )
    total = float(sum(weights))
    return tuple(float(weight) / total for weight in weights)


def several(teacher_model) -> bool:
    return isinstance(teacher_model, (list, tuple, dict))


def feature_teacher_of(teacher_model, settings):
    """The model among ``teacher_model=`` that the feature terms use (``teacher_model`` itself when it is one)."""
    if not several(teacher_model):
        return teacher_model
    names, models = teacher_names(teacher_model)
    return models[feature_index(names, getattr(settings, "feature_teacher", None))]


def describe_teachers(names: Sequence[str], weights: Sequence[float], mixture: str, sources: Sequence | None = None) -> str:
    """One line naming several teachers, their weights and where they came from (model cards, the cache's info)."""
    sources = sources or [None] * len(names)
    listed = ", ".join(
        f"{name} ({weight:.3g}{f', from {source}' if source else ''})"
        for name, weight, source in zip(names, weights, sources, strict=True)
    )
    return f"{mixture} mixture of {listed}"


def feature_index(names: Sequence[str], feature_teacher: str | None) -> int:
    """Which teacher the feature terms compare layers with: ``feature_teacher``, else the first."""
    if feature_teacher is None:
        return 0
    if feature_teacher not in names:
        raise InputError(f"feature_teacher {feature_teacher!r} is not one of the teachers ({', '.join(names)}); name one of them")
    return list(names).index(feature_teacher)


def check_teacher_set_plan(plan, teachers: TeacherSet, cross_tokenizer: bool) -> None:
    """What several (or offloaded) teachers do not do yet, refused before training."""
    if plan.policy_gradient and (len(teachers) > 1 or teachers.offload):
        raise InputError(
            "policy-gradient distillation samples with one teacher on the device and rewards with its log-probabilities; "
            "set policy_gradient_weight to 0 with several teachers or offload_idle_teachers, or distill from one teacher"
        )
    if len(teachers) > 1 and cross_tokenizer:
        raise InputError(
            "several teachers with a student of another tokenizer are not supported yet; give the student the "
            "teachers' tokenizer, or distill from one teacher"
        )


# ---- routing ---------------------------------------------------------------------------------------------------


def _mixture_row(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def route_indices(values: Sequence, names: Sequence[str], column: str, split: str) -> list[int]:
    """Each row's teacher index from its name in ``column`` (empty or None: :data:`MIXTURE_ROUTE`); rows naming no
    teacher of the run are one error listing the first of them."""
    index = {name: position for position, name in enumerate(names)}
    routes, unknown = [], {}
    for row, value in enumerate(values):
        if _mixture_row(value):
            routes.append(MIXTURE_ROUTE)
        elif str(value).strip() in index:
            routes.append(index[str(value).strip()])
        else:
            unknown.setdefault(str(value), row)
    if unknown:
        first = ", ".join(f"{name!r} (row {row})" for name, row in list(unknown.items())[:3])
        raise InputError(
            f"--teacher_column {column!r} of the {split} data names {len(unknown)} teacher(s) this run does not have: "
            f"{first}; the teachers are {', '.join(names)}: fix those rows (empty = the mixture) or add the teacher"
        )
    return routes


def route_rows(dataset, column: str, names: Sequence[str], split: str):
    """``dataset`` with :data:`ROUTE_COLUMN` (each row's teacher index) in place of the names in ``column``."""
    if not isinstance(dataset, Dataset):
        kind = type(dataset).__name__
        raise InputError(f"--teacher_column routes the rows of a datasets.Dataset; the {split} data is a {kind}")
    if ROUTE_COLUMN in dataset.column_names and column not in dataset.column_names:
        return dataset  # routed already
    if column not in dataset.column_names:
        raise InputError(
            f"--teacher_column {column!r} is not a column of the {split} data (columns: {', '.join(dataset.column_names)}); "
            "add it, each row naming its teacher, or drop --teacher_column"
        )
    routes = route_indices(dataset[column], names, column, split)
    return dataset.remove_columns(column).add_column(ROUTE_COLUMN, routes)


# ---- the set of teachers ---------------------------------------------------------------------------------------


class TeacherSet:
    """The run's frozen teachers with their names, normalized weights, feature teacher, and where they score.

    ``models`` are ready for inference (frozen, in their dtype; on the CPU when ``offload_idle_teachers`` is on, else
    on ``device``). ``settings`` carries ``teacher_weights``, ``teacher_mixture``, ``feature_teacher`` and
    ``offload_idle_teachers`` (``arguments.DistillationSettings``).
    """

    def __init__(self, names: Sequence[str], models: Sequence, settings, device):
        self.names = tuple(names)
        self.models = list(models)
        self.weights = normalized_weights(getattr(settings, "teacher_weights", None), len(self.models))
        self.mixture = getattr(settings, "teacher_mixture", "probability")
        self.feature = feature_index(self.names, getattr(settings, "feature_teacher", None))
        self.offload = bool(getattr(settings, "offload_idle_teachers", False))
        self.device = torch.device(device)
        self.input_names = [set(inspect.signature(model.forward).parameters) for model in self.models]
        self._fingerprints: list[str] | None = None

    def __len__(self) -> int:
        return len(self.models)

    @property
    def plain(self) -> bool:
        """One teacher that stays on the device: the trainer runs it as it always did."""
        return len(self.models) == 1 and not self.offload

    @property
    def feature_model(self):
        return self.models[self.feature]

    @contextmanager
    def scoring(self, index: int):
        """Teacher ``index`` on the training device for the block (back to the CPU after it when offloading)."""
        model = self.models[index]
        if not self.offload:
            yield model
            return
        model.to(self.device)
        try:
            yield model
        finally:
            model.to("cpu")

    def row_weights(self, route: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """``[B, K]`` float32 on the CPU: each row's teacher weights, one-hot for a routed row, else the mixture's."""
        weights = torch.tensor(self.weights, dtype=torch.float32).expand(batch_size, -1).clone()
        if route is not None:
            route = route.reshape(-1).cpu().long()  # one device sync per micro-batch
            routed = route != MIXTURE_ROUTE
            weights[routed] = torch.nn.functional.one_hot(route[routed], len(self.models)).float()
        return weights

    def score(
        self,
        source: dict,
        extra_outputs: dict,
        *,
        route: torch.Tensor | None,
        temperature: float,
        output_rows: int | None,
        target_needed: bool,
        features_needed: bool,
    ):
        """The teachers' outputs on one batch, under ``torch.no_grad()`` (the caller's).

        ``source``: the teacher inputs (each teacher takes those its forward accepts); ``extra_outputs``: what the
        feature teacher returns besides logits (hidden states, attentions), asked of it alone. Returns the feature
        teacher's outputs (``features_needed``) with ``logits`` replaced, when ``target_needed``, by the KD target
        as logits ``T * log p_mix`` over the first ``output_rows`` rows; without features, an output of the same
        type holding only that target. A teacher runs only when some row of the batch weighs it above 0 or it is the
        feature teacher and features are needed; its logits are folded into the mixture and freed at once.
        """
        batch_size = len(next(iter(source.values())))
        weights = self.row_weights(route, batch_size)
        mixture = kept = output_type = None
        logits_only = {name: value for name, value in extra_outputs.items() if name == "use_cache"}
        for index in range(len(self.models)):
            mixed = target_needed and bool(weights[:, index].any())
            features = features_needed and index == self.feature
            if not (mixed or features):
                continue
            inputs = {name: value for name, value in source.items() if name in self.input_names[index]}
            with self.scoring(index) as model:
                outputs = model(**inputs, **(extra_outputs if features else logits_only))
            output_type = type(outputs)
            if features:
                kept = outputs
            if mixed:
                logits = outputs.logits[..., :output_rows]
                weight = weights[:, index].to(logits.device)
                mixture = add_to_teacher_mixture(mixture, logits, weight, temperature=temperature, kind=self.mixture)
            del outputs
        if mixture is None:
            return kept
        target = finish_teacher_mixture(mixture).mul_(temperature)
        if kept is None:
            return output_type(logits=target)
        kept["logits"] = target
        return kept

    # ---- the record ------------------------------------------------------------------------------------------

    def fingerprints(self) -> list[str]:
        """Each teacher's weight fingerprint, computed once (the first checkpoint, or a resume, asks for it)."""
        if self._fingerprints is None:
            self._fingerprints = [
                model.fingerprint() if isinstance(model, SelfTeacher) else teacher_fingerprint(model) for model in self.models
            ]
        return self._fingerprints

    def record(self) -> dict:
        """What ``teachers.json`` holds: each teacher and how the target mixes them."""
        teachers = [
            {
                "name": name,
                "source": str(getattr(model, "name_or_path", "") or ""),
                "fingerprint": fingerprint,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                "weight": weight,
            }
            for name, model, fingerprint, weight in zip(self.names, self.models, self.fingerprints(), self.weights, strict=True)
        ]
        return {
            "format": RECORD_FORMAT,
            "teachers": teachers,
            "mixture": self.mixture,
            "feature_teacher": self.names[self.feature],
        }

    def describe(self) -> str:
        """One line naming the teachers and their weights (model cards, the cache's info)."""
        if len(self.models) == 1:
            return str(getattr(self.models[0], "name_or_path", "") or self.names[0])
        sources = [getattr(model, "name_or_path", None) for model in self.models]
        return describe_teachers(self.names, self.weights, self.mixture, sources)


def write_teacher_record(folder: str, teachers: TeacherSet) -> None:
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, TEACHERS_FILE), teachers.record())


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def record_difference(saved: dict, current: dict) -> str | None:
    """What differs between a checkpoint's teacher record and this run's, in words (None: nothing)."""
    before = {teacher["name"]: teacher for teacher in saved["teachers"]}
    now = {teacher["name"]: teacher for teacher in current["teachers"]}
    if list(before) != list(now):
        return f"it was trained with the teachers {', '.join(before)}, this run has {', '.join(now)}"
    for name, teacher in now.items():
        for key, what in (("dtype", "dtype"), ("fingerprint", "weights (fingerprint)"), ("weight", "mixture weight")):
            then, now = before[name][key], teacher[key]
            if then != now:
                then, now = (f"{value:.6g}" if isinstance(value, float) else value for value in (then, now))
                return f"teacher {name!r} changed its {what}: {then} then, {now} now"
    for key in ("mixture", "feature_teacher"):
        if saved.get(key) != current.get(key):
            setting = "teacher_mixture" if key == "mixture" else key
            return f"{setting} was {saved.get(key)}, this run has {current.get(key)}"
    return None


def check_resume_teachers(checkpoint: str, teachers: TeacherSet | None) -> None:
    """Refuse to resume ``checkpoint`` with other teachers than it was trained with, naming what changed."""
    if teachers is None or checkpoint is None:
        return
    path = os.path.join(checkpoint, TEACHERS_FILE)
    if not os.path.isfile(path):
        logger.warning("%s records no teachers (an older version, or a run without a live teacher): not checked", checkpoint)
        return
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle, parse_constant=_no_constants)
        saved["teachers"]
    except (ValueError, KeyError, TypeError, OSError):
        raise InputError(f"{path} is not a readable teacher record; resume from another checkpoint") from None
    difference = record_difference(saved, teachers.record())
    if difference:
        raise InputError(
            f"--resume_from_checkpoint {checkpoint}: {difference}; resume with the teachers it was trained with, or "
            "train into a new --output_dir"
        )


# ---- one cache of the mixture ----------------------------------------------------------------------------------


class MixtureTeacher(torch.nn.Module):
    """Several teachers as one model whose logits are their KD target at ``temperature`` (``T * log p_mix``).

    For ``cache_teacher``: the cache then holds the mixture's top-k log-probabilities, and ``distill --teacher_cache``
    reads them as it reads one teacher's. Config, output layer and decoder inputs are the first teacher's (the
    teachers share a tokenizer); the state dict, which the cache's fingerprint hashes, holds every teacher and the
    weights.
    """

    def __init__(self, teachers: TeacherSet, temperature: float):
        super().__init__()
        self.members = torch.nn.ModuleList(teachers.models)
        self.register_buffer("mixture_weights", torch.tensor(teachers.weights))
        self.teachers, self.temperature = teachers, temperature
        self.config = teachers.models[0].config
        self.name_or_path = teachers.describe()
        self.rows = min(output_rows(model) for model in teachers.models)

    @property
    def device(self) -> torch.device:
        """Where the batches go: the device the teachers score on (they may wait on the CPU)."""
        return self.teachers.device

    def get_output_embeddings(self):
        return min(self.members, key=output_rows).get_output_embeddings()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self.members[0].prepare_decoder_input_ids_from_labels(labels=labels)

    def forward(self, **inputs):
        return self.teachers.score(
            inputs,
            {},
            route=None,
            temperature=self.temperature,
            output_rows=self.rows,
            target_needed=True,
            features_needed=False,
        )


__all__ = [
    "MIXTURE_ROUTE",
    "ROUTE_COLUMN",
    "TEACHERS_FILE",
    "MixtureTeacher",
    "TeacherSet",
    "check_resume_teachers",
    "check_teacher_set_plan",
    "describe_teachers",
    "feature_teacher_of",
    "feature_index",
    "normalized_weights",
    "record_difference",
    "route_indices",
    "route_rows",
    "several",
    "teacher_names",
    "write_teacher_record",
]
