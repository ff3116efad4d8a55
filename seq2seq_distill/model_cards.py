"""Model cards: the ``README.md`` in the Hub's format that every model this toolkit saves carries beside its weights.

A card says how the model was made (teacher, layer map, loss terms and their weights, temperature, data, steps) and,
once a benchmark has measured the model, its results: in the body, with the benchmark's verdict line, and in the
metadata's ``model-index`` (the figures of ``benchmark_results.json``, unrounded). It is built with
``huggingface_hub``'s card classes, so the metadata is what the Hub reads (``library_name``, ``base_model``,
``tags``, ``datasets``, ``model-index``).

The facts of a run are a :class:`ModelRun`, also kept in the card's metadata (key ``seq2seq_distill``): the benchmark,
which runs after the models were saved, rebuilds each card from them and its results (:func:`update_model_cards`)
instead of editing text. :func:`model_card` is a pure function from (run, results) to a card; the callers write it
with :func:`save_model_card` after saving a model. The Trainer writes a card of its own only when it pushes, into its
``output_dir`` (``<output>/checkpoints`` here), never into the model's folder; with ``--push_to_hub`` ours is pushed
after the Trainer's push, so the Hub shows the complete one.

About 450 lines, one job: the card of a saved model, from the run's record to the Hub's metadata and the body's
wording, and its rebuild after a benchmark; most of it is the body's text.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data import PreparedData
from .lora import adapter_facts
from .modeling import AUTO_MODEL_CLASSES
from .reports import METRIC_LABELS, write_text
from .terms import plan_terms, weight_of

__all__ = [
    "CARD_FILE",
    "DataSource",
    "ModelRun",
    "data_source",
    "describe_run",
    "model_card",
    "save_model_card",
    "update_model_cards",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
METADATA_KEY = "seq2seq_distill"  # the ModelRun inside the card's metadata: how a card is known to be ours
TAGS = ("seq2seq_distill", "distillation")
PIPELINE_TAGS = {"seq2seq": "text2text-generation", "classification": "text-classification", "causal_lm": "text-generation"}
EMBEDDED_DATA = "stdlib-docstrings"  # the model-index dataset type of the embedded data (no hub dataset)
LOCAL_DATA = "local"  # ... and of the user's own files


@dataclass(frozen=True)
class DataSource:
    """Where data came from. ``hub``: the hub dataset name, the only kind that goes into a card's ``datasets``
    metadata (a local path names nothing on the Hub); ``words``: how the card's body names it, local paths included."""

    kind: str  # "hub", "local", "embedded" or "unknown"
    words: str
    hub: str | None = None
    config: str | None = None
    local_path: str | None = None

    @property
    def index_type(self) -> str:
        """The model-index ``dataset.type``: the hub name, else a fixed word for the local or embedded data."""
        return self.hub or (EMBEDDED_DATA if self.kind == "embedded" else LOCAL_DATA)

    @property
    def index_name(self) -> str:
        if self.hub:
            return f"{self.hub} ({self.config})" if self.config else self.hub
        if self.local_path:
            return os.path.basename(os.path.normpath(self.local_path))
        return "Python standard-library docstrings" if self.kind == "embedded" else "not recorded"


def data_source(data_args) -> DataSource:
    """The labelled data of ``DataArguments``: a hub dataset, the user's files, or the embedded docstrings (None:
    data prepared from Python without them, which the card cannot name)."""
    if data_args is None:
        return DataSource("unknown", "data prepared in Python (not recorded)")
    if not data_args.dataset and not data_args.dataset_local_path:
        return DataSource("embedded", "the embedded Python standard-library docstrings (`seq2seq_distill.stdlib_corpus`)")
    if data_args.dataset_local_path:
        path = data_args.dataset_local_path
        return DataSource("local", f"local data at `{path}` (not a hub dataset)", local_path=path)
    config = f" (config `{data_args.dataset_config}`)" if data_args.dataset_config else ""
    return DataSource(
        "hub", f"the hub dataset `{data_args.dataset}`{config}", hub=data_args.dataset, config=data_args.dataset_config
    )


@dataclass
class ModelRun:
    """How a saved model was made: everything its card states, in plain values (it is stored in the card's YAML).

    - ``name``: the run's name (``teacher``, ``baseline``, ``distilled``, ``distilled-seed43``, ``student``).
    - ``role``: ``teacher``; ``baseline`` (a student trained on CE alone); ``distilled``; ``student`` (layer-copied
      from the teacher, not trained yet).
    - ``teacher``: the teacher's hub name or folder; for a teacher, the model it was fine-tuned from (None: trained
      from scratch). It is the card's ``base_model``.
    - ``layer_map``: {stack: the teacher layer behind each student layer} (``config.student_layer_map``).
    - ``terms``: {loss term: its weight}, the terms that were on; ``temperature`` and ``divergence``: of the KD term.
    - ``data``, ``datasets``: the data in words, and the hub datasets among them (metadata ``datasets``).
    - ``training_rows``, ``transfer_rows``: rows trained on, of which transfer rows (labelled by the teacher, KD only).
    - ``hub_model_id``: the Hub repository the Trainer pushed to (``--push_to_hub``), where the card is pushed too.
    - ``lora``: a LoRA student's adapter (``lora.adapter_facts``): rank, alpha, dropout, target modules, its base
      (``base/`` when saved in the folder) and whether the teacher was that base with the adapter off; else None.
    """

    name: str
    role: str
    task: str
    model_type: str
    teacher: str | None = None
    layer_map: dict | None = None
    terms: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None
    divergence: str | None = None
    steps: int | None = None
    seed: int | None = None
    learning_rate: float | None = None
    data: str | None = None
    datasets: list[str] = field(default_factory=list)
    training_rows: int | None = None
    transfer_rows: int = 0
    transfer: str | None = None
    teacher_cache: str | None = None
    hub_model_id: str | None = None
    lora: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelRun:
        """From a card's metadata; keys this version does not know are left out (a card written by a later one)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def describe_run(
    name: str,
    model,
    training_args,
    data: PreparedData,
    *,
    teacher=None,
    teacher_source: str | None = None,
    teacher_cache=None,
    steps: int | None = None,
    training_rows: int | None = None,
    hub_model_id: str | None = None,
) -> ModelRun:
    """The :class:`ModelRun` of a finished training run (``training.train_model``).

    The teacher is named by ``teacher_source`` when given (the pipeline's trained teacher: its output folder), else
    by where the live teacher or the teacher cache was loaded from. A run named ``teacher`` is a teacher, whose
    ``teacher`` field is the model it was fine-tuned from (its ``name_or_path``; empty for one built from scratch).
    """
    plan = plan_terms(training_args)
    terms = {term.name: weight_of(term, training_args) for term in plan.terms}
    role = "teacher" if name == "teacher" else "baseline" if plan.only_ce else "distilled"
    if role == "teacher":
        source = model.name_or_path or None
    else:
        cached = teacher_cache.info.get("teacher") if teacher_cache is not None else None
        source = teacher_source or (teacher.name_or_path if teacher is not None else None) or cached or None
    labelled = data_source(data.data_args)
    transfer_rows = max(0, (training_rows or 0) - len(data.tokenized["train"])) if training_rows is not None else 0
    transfer, transfer_hub = _transfer_words(data.data_args) if transfer_rows else (None, None)
    kd = "kd_loss" in terms
    return ModelRun(
        name=name,
        role=role,
        task=data.task,
        model_type=model.config.model_type,
        teacher=str(source) if source else None,
        layer_map=_plain(getattr(model.config, "student_layer_map", None)),
        terms=terms,
        temperature=float(training_args.temperature) if kd else None,
        divergence=str(training_args.divergence) if kd else None,
        steps=steps,
        seed=training_args.seed,
        learning_rate=float(training_args.learning_rate),
        data=labelled.words,
        datasets=[hub for hub in (labelled.hub, transfer_hub) if hub],
        training_rows=training_rows,
        transfer_rows=transfer_rows,
        transfer=transfer,
        teacher_cache=str(training_args.teacher_cache) if teacher_cache is not None else None,
        hub_model_id=hub_model_id,
        lora=adapter_facts(model, teacher),
    )


def _transfer_words(data_args) -> tuple[str | None, str | None]:
    """(words, hub dataset) of the transfer set's sources (``transfer.add_transfer_split``, augmentation)."""
    if data_args is None:
        return None, None
    sources = []
    if data_args.transfer_dataset:
        sources.append(f"the hub dataset `{data_args.transfer_dataset}`")
    if data_args.transfer_dataset_local_path:
        sources.append(f"local data at `{data_args.transfer_dataset_local_path}`")
    if data_args.augment_copies:
        sources.append(f"{data_args.augment_copies} augmented cop{'y' if data_args.augment_copies == 1 else 'ies'} of each input")
    return ", ".join(sources) or "the training rows without a target", data_args.transfer_dataset


def _plain(value):
    """Config values as YAML-safe plain Python (tuples as lists)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ---- the card --------------------------------------------------------------------------------------------------


def model_card(
    run: ModelRun, summary: dict | None = None, benchmark_data: DataSource | None = None, benchmarked_as: str | None = None
) -> ModelCard:
    """The card of ``run``; with a benchmark ``summary`` (``benchmark_results.json``) that measured it under
    ``benchmarked_as`` (unset: ``run.name``), also its results (body and ``model-index``) on ``benchmark_data``.
    Pure: nothing is read or written.
    """
    benchmarked_as = benchmarked_as or run.name
    results = summary["models"].get(benchmarked_as) if summary else None
    eval_results = _eval_results(run, summary, results, benchmark_data) if results else None
    card_data = ModelCardData(
        library_name="peft" if run.lora else "transformers",  # the Hub's name for a folder that holds an adapter
        base_model=run.teacher,
        tags=[*TAGS, *(("lora",) if run.lora else ())],
        datasets=list(run.datasets) or None,
        pipeline_tag=PIPELINE_TAGS.get(run.task),
        model_name=run.name if eval_results else None,
        eval_results=eval_results,
        **{METADATA_KEY: run.to_dict()},
    )
    body = _body(run, summary, results, benchmark_data, benchmarked_as)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _number(value) -> float | int | None:
    """A finite plain number (numpy scalars included), or None: only these go into the model-index."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(value) else None


def _eval_results(run: ModelRun, summary: dict, results: dict, data: DataSource | None) -> list[EvalResult] | None:
    data = data or DataSource("unknown", "the benchmark's data")
    index = []
    for metric, value in results["quality"].items():
        number = _number(value)
        if number is None:
            continue
        index.append(
            EvalResult(
                task_type=PIPELINE_TAGS.get(run.task, run.task),
                dataset_type=data.index_type,
                dataset_name=data.index_name,
                dataset_config=data.config,
                dataset_split=summary["split"],
                metric_type=metric,
                metric_name=METRIC_LABELS.get(metric, metric),
                metric_value=number,
            )
        )
    return index or None


ROLE_SENTENCES = {
    "teacher": "The teacher of a distillation run made with seq2seq_distill, trained on the task with cross-entropy on "
    "the labels.",
    "baseline": "A CE-only baseline student made with seq2seq_distill: copied from its teacher's layers and trained on "
    "the labels alone, with no distillation term, to show what distillation adds.",
    "distilled": "A student distilled from its teacher with seq2seq_distill: copied from the teacher's layers and trained "
    "on the loss terms below.",
    "student": "A student made with seq2seq_distill by copying layers of its teacher; it has not been trained yet.",
    "self_distilled": "A LoRA adapter trained with seq2seq_distill on the loss terms below, distilled from its own base "
    "model (the adapter switched off) to keep close to the base's distribution.",
}


def _body(run: ModelRun, summary: dict | None, results: dict | None, data: DataSource | None, benchmarked_as: str) -> str:
    role = "self_distilled" if run.lora and run.lora["self_distill"] and run.role == "distilled" else run.role
    lines = [f"# {run.name}", "", ROLE_SENTENCES.get(role, ROLE_SENTENCES["distilled"]), "", "## How it was made", ""]
    if run.role == "teacher":
        lines.append(f"- Base model: `{run.teacher}` (fine-tuned)" if run.teacher else "- Base model: none, trained from scratch")
    elif run.lora and run.lora["self_distill"]:
        lines.append("- Teacher: the base model itself with the adapter switched off (self-distillation)")
    else:
        lines.append(f"- Teacher: `{run.teacher}`" if run.teacher else "- Teacher: not recorded")
    lines.append(f"- Architecture: {run.model_type}, task {run.task}")
    if run.lora:
        lora = run.lora
        modules = ", ".join(f"`{name}`" for name in lora["target_modules"])
        lines.append(
            f"- LoRA adapter: rank {lora['r']}, alpha {lora['alpha']:g}, dropout {lora['dropout']:g}, on {modules}; "
            "only the adapter was trained, and this folder holds it, not the whole model"
        )
        base = "`base/` in this folder" if lora["base_in_folder"] else f"`{lora['base']}`"
        lines.append(f"- Base model of the adapter: {base}")
    if run.layer_map:
        maps = "; ".join(f"{stack} {layers}" for stack, layers in run.layer_map.items())
        lines.append(f"- Layer map (the teacher layer behind each student layer): {maps}")
    if run.terms:
        weights = ", ".join(f"`{term}` × {weight:g}" for term, weight in run.terms.items())
        lines.append(f"- Loss terms and weights: {weights}")
    if run.temperature is not None:
        lines.append(f"- Temperature: {run.temperature:g} (divergence `{run.divergence}`)")
    if run.data:
        rows = f", {run.training_rows - run.transfer_rows} labelled training rows" if run.training_rows is not None else ""
        lines.append(f"- Data: {run.data}{rows}")
    if run.transfer_rows:
        lines.append(f"- Transfer set: {run.transfer_rows} rows labelled by the teacher (KD only): {run.transfer}")
    if run.teacher_cache:
        lines.append(f"- Teacher outputs read from the teacher cache `{run.teacher_cache}` (the teacher was not loaded)")
    if run.steps is not None:
        learning_rate = f", learning rate {run.learning_rate:g}" if run.learning_rate is not None else ""
        lines.append(f"- Training: {run.steps} optimizer steps, seed {run.seed}{learning_rate}")
    if results:
        lines += ["", *_benchmark_section(benchmarked_as, summary, results, data)]
    lines += ["", "## Use", "", *_use(run)]
    return "\n".join(lines) + "\n"


def _use(run: ModelRun) -> list[str]:
    """How to load the model: its Auto class; for a LoRA adapter, its base with the adapter merged in."""
    auto = AUTO_MODEL_CLASSES[run.task].__name__ if run.task in AUTO_MODEL_CLASSES else "AutoModel"
    where = run.hub_model_id or "path/to/this/folder"
    if not run.lora:
        loading = [f"from transformers import AutoTokenizer, {auto}", "", f'model = {auto}.from_pretrained("{where}")']
        return ["```python", *loading, f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```"]
    base = f"{where}/base" if run.lora["base_in_folder"] else run.lora["base"]
    return [
        "The adapter merged into its base (`seq2seq_distill.load_model(folder)` does the same):",
        "",
        "```python",
        "from peft import PeftModel",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        f'base = {auto}.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{where}").merge_and_unload()',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        "```",
    ]


def _benchmark_section(name: str, summary: dict, results: dict, data: DataSource | None) -> list[str]:
    """The verdict line, this model's quality figures, its cost and what it keeps of the teacher (and, for one of
    several seed runs, its setting's mean and spread)."""
    where = data.words if data else "the benchmark's data"
    lines = [
        "## Benchmark",
        "",
        f"Verdict: {summary['verdict']}",
        "",
        f"Measured by seq2seq_distill's benchmark on {summary['examples']} `{summary['split']}` examples of {where}, "
        f"on {summary['environment']['device']}, as `{name}` beside the teacher `{summary['teacher']}` (the exact "
        "figures are in the metadata's model-index and in `benchmark_results.json`):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for metric, value in results["quality"].items():
        number = _number(value)
        if number is not None:
            lines.append(f"| {METRIC_LABELS.get(metric, metric)} | {number:.2f} |")
    cost, versus = results["cost"], results["versus_teacher"]
    size = _number(cost.get("size_on_disk_mb"))
    latency = _number(cost.get("latency_p50_ms"))
    if size is not None and latency is not None:
        lines += ["", f"{cost['parameters']:,} parameters, {size:.1f} MB on disk, latency p50 {latency:.1f} ms at batch size 1."]
    if name != summary["teacher"] and _number(versus.get("quality_retained")) is not None:
        main = METRIC_LABELS.get(summary["main_metric"], summary["main_metric"])
        lines.append(f"Keeps {versus['quality_retained']:.1f}% of the teacher's {main}.")
    for setting, group in (summary.get("groups") or {}).items():
        statistics = group["quality"].get(summary["main_metric"])
        if name in group["models"] and group["runs"] > 1 and statistics and statistics["spread"] is not None:
            main = METRIC_LABELS.get(summary["main_metric"], summary["main_metric"])
            lines.append(
                f"One of {group['runs']} seed runs of the `{setting}` setting; over them {main} is "
                f"{statistics['mean']:.2f} ± {statistics['spread']:.2f}."
            )
    return lines


# ---- writing ---------------------------------------------------------------------------------------------------


def write_model_card(folder: str, card: ModelCard) -> str:
    """``<folder>/README.md``, written whole or not at all (a temporary file replaces it when complete)."""
    path = os.path.join(folder, CARD_FILE)
    write_text(path, str(card))
    return path


def save_model_card(folder: str, run: ModelRun, *, token: str | None = None, revision: str | None = None) -> ModelCard:
    """Write ``run``'s card beside the saved model; when the Trainer pushed the model (``run.hub_model_id``), push
    the card too, after the Trainer's push, so that the Hub shows this card and not the Trainer's draft."""
    card = model_card(run)
    write_model_card(folder, card)
    if run.hub_model_id:
        card.push_to_hub(run.hub_model_id, token=token, revision=revision, commit_message="seq2seq_distill model card")
    return card


def read_model_run(folder: str) -> ModelRun | None:
    """The :class:`ModelRun` of the card in ``folder``, or None when it has no card written by this toolkit."""
    path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        stored = ModelCard.load(path).data.to_dict().get(METADATA_KEY)
    except (ValueError, OSError, yaml.YAMLError) as error:  # another README whose metadata does not parse: kept
        logger.debug("%s is not a seq2seq_distill card (%s)", path, error)
        return None
    return ModelRun.from_dict(stored) if isinstance(stored, dict) else None


def update_model_cards(models: dict[str, str], summary: dict, data_args) -> list[str]:
    """After a benchmark: rebuild the card of each benchmarked model that has one of ours with its results, read
    from ``summary`` (what ``benchmark_results.json`` holds); ``data_args``: the benchmark's data. Cards of other
    origins, and models without a card (a hub teacher), are left alone. Returns the folders whose card changed.
    """
    benchmark_data = data_source(data_args)
    updated = []
    for name, folder in models.items():
        run = read_model_run(folder) if os.path.isdir(folder) else None
        if run is None or name not in summary["models"]:
            continue
        card = model_card(run, summary, benchmark_data, benchmarked_as=name)
        write_model_card(folder, card)
        if run.hub_model_id:
            try:  # the weights are pushed; a card that fails to follow them is not worth losing the results for
                card.push_to_hub(run.hub_model_id, commit_message="seq2seq_distill model card: benchmark results")
            except OSError as error:
                logger.warning("the card of %s was updated in %s but not pushed to %s: %s", name, folder, run.hub_model_id, error)
        updated.append(folder)
    if updated:
        logger.info("benchmark results added to the model cards of %s", ", ".join(updated))
    return updated
