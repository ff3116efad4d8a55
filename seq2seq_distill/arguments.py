"""Distillation settings as dataclasses that ``HfArgumentParser`` reads from flags, JSON or YAML.

Weighting convention (one for every term, no hidden ``1 - alpha``)::

    loss = ce_weight * CE + kd_weight * KD + hidden_weight * HIDDEN + attention_weight * ATTENTION + norm_weight * NORM
           + relation_weight * RELATION + uld_weight * ULD + matched_kl_weight * MATCHED_KL

Each term is a sum over its positions divided by the count of those positions in the whole optimizer step, so
weights are comparable across batch sizes and gradient accumulation. A weight of 0 switches its term off and costs
nothing. The seeds' conventions map onto it as follows:

* ``alpha * KD + (1 - alpha) * CE``  ->  ``kd_weight=alpha, ce_weight=1 - alpha``
* ``alpha * KD + beta * CE``         ->  ``kd_weight=alpha, ce_weight=beta``
* ``alpha * CE + (1 - alpha) * KL``  ->  ``ce_weight=alpha, kd_weight=1 - alpha``

Why one module of several hundred lines: it is the one place a user reads for every setting (each field carries its
help string, which ``--help`` prints) and where each value check sits beside the dataclass it checks. The list of
weight settings comes from the terms table (``terms.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .errors import InputError
from .losses import DIVERGENCES, TEACHER_MIXTURES
from .schedules import check_schedules, named_numbers, weight_peaks
from .terms import PENALTY_WEIGHTS, PRIMARY_WEIGHTS, registered_terms

HIDDEN_LOSSES = ("mse", "cosine")
ATTENTION_LOSSES = ("kl", "mse")
RELATION_LAYERS = ("last", "all")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
CACHE_HIDDEN_DTYPES = ("float32", "float16")  # how cache_teacher stores hidden states (teacher_cache.py)
# The weights that switch a built-in term on (from the table in terms.py); registered terms add term_weights.
WEIGHT_NAMES = PRIMARY_WEIGHTS


def check_at_least(settings, names: tuple[str, ...], minimum: int) -> None:
    """Each named setting is unset (None) or a number >= ``minimum``; an InputError naming the first that is not."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum):
            raise InputError(f"{name} must be at least {minimum}, got {value!r}")


@dataclass
class DistillationSettings:
    """What to distill and how much each term weighs.

    Fields:
        temperature (`float`, defaults to 2.0): softmax temperature of the KD term (the loss is scaled by T²).
        ce_weight (`float`, defaults to 0.5): weight of the task cross-entropy against the labels.
        kd_weight (`float`, defaults to 0.5): weight of the logit divergence to the teacher.
        hidden_weight (`float`, defaults to 0.0): weight of hidden-state matching of mapped layers.
        attention_weight (`float`, defaults to 0.0): weight of attention-map transfer of mapped layers.
        norm_weight (`float`, defaults to 0.0): weight of matching per-token normalization statistics.
        relation_weight (`float`, defaults to 0.0): weight of self-attention relation transfer (MiniLMv2).
        relation_heads (`int`, optional): relation heads; unset: the student's attention head count, or its largest
            divisor that also divides the teacher's query / key / value width.
        relation_layers (`str`, defaults to "last"): last (each stack's last student layer) or all (every mapped pair).
        uld_weight (`float`, defaults to 0.0): weight of universal logit distillation across tokenizers (seq2seq,
            causal LM; a student with a tokenizer of its own): sorted-probability L1 of aligned spans.
        matched_kl_weight (`float`, defaults to 0.0): weight of exact KL over the shared tokens where the aligned
            tokens are the same (the hybrid: ULD then covers only the other spans).
        divergence (`str`, defaults to "forward_kl"): a name registered in `seq2seq_distill.losses.DIVERGENCES`.
        divergence_beta (`float`, defaults to 0.5): interpolation weight of generalized_jsd / skew divergences.
        hidden_loss (`str`, defaults to "mse"): mse or cosine.
        attention_loss (`str`, defaults to "kl"): kl or mse.
        encoder_layer_map / decoder_layer_map / layer_map (`list[int]`, optional): teacher layer per student layer.
        teacher_dtype (`str`, defaults to "auto"): the teacher's precision.
        teacher_weights (`list[float]`, optional): several teachers: each one's weight in the KD target (normalized).
        teacher_mixture (`str`, defaults to "probability"): how several teachers make one target (``teachers.py``).
        teacher_column (`str`, optional): a data column naming each row's teacher.
        feature_teacher (`str`, optional): the teacher the feature terms compare layers with (unset: the first).
        offload_idle_teachers (`bool`, defaults to False): teachers wait on the CPU, on the device only to score.
        schedules (`list[str]`, optional): the temperature or weights that follow a schedule over optimizer steps,
            as name=kind:start->end[,warmup=N] (``schedules.py``).
        balance_terms (`list[str]`, optional) / balance_momentum (`float`, defaults to 0.9): terms weighed so that
            their running magnitude is a set ratio of CE's, as term=ratio (``schedules.py``).
        diagnostics (`bool`, defaults to True) / diagnostics_window (`int`, defaults to 50): log the teacher KL,
            top-k mass, argmax agreement and term shares, and warn about terms that train nothing (``diagnostics.py``).
    """

    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature for the KD term; the term is multiplied by T^2."}
    )
    ce_weight: float = field(default=0.5, metadata={"help": "Weight of the task cross-entropy against the labels."})
    kd_weight: float = field(
        default=0.5, metadata={"help": "Weight of the logit divergence between student and teacher (0 = off)."}
    )
    hidden_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of hidden-state matching between mapped layers (0 = off, no hidden states requested)."},
    )
    attention_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of attention-map transfer between mapped layers (0 = off, no attentions requested)."},
    )
    norm_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of matching per-token mean and log-variance of mapped layers' hidden states (0 = off)."},
    )
    relation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of self-attention relation transfer (MiniLMv2): KL between the teacher's and the student's "
            "query-query, key-key and value-value softmax relations of mapped layers; no projection, so hidden sizes "
            "and head counts may differ (0 = off, nothing recorded)."
        },
    )
    relation_heads: int | None = field(
        default=None,
        metadata={
            "help": "Heads the queries, keys and values are split into for the relations; must divide both models' "
            "widths. Unset: the student's attention head count, or its largest divisor that divides the teacher's width."
        },
    )
    relation_layers: str = field(
        default="last",
        metadata={
            "help": "Relations of each stack's last student layer against its mapped teacher layer (last, as MiniLMv2), "
            "or of every mapped layer pair (all).",
            "choices": RELATION_LAYERS,
        },
    )
    uld_weight: float = field(
        default=0.0,
        metadata={
            "help": "Across tokenizers (seq2seq, causal LM, a --student with its own tokenizer): weight of universal "
            "logit distillation (Boizard et al. 2024), the L1 distance of the sorted probabilities of spans of the "
            "target text aligned by character offsets; needs no vocabulary mapping (0 = off)."
        },
    )
    matched_kl_weight: float = field(
        default=0.0,
        metadata={
            "help": "Across tokenizers: weight of the exact divergence (--divergence) over the tokens both vocabularies "
            "share, on aligned spans where both sides realized the same token; with it on, --uld_weight covers only "
            "the other spans (the hybrid). 0 = off."
        },
    )
    divergence: str = field(
        default="forward_kl",
        metadata={
            "help": "Logit divergence: forward_kl, reverse_kl, js, generalized_jsd, skew_kl, skew_reverse_kl, "
            "or any name added with seq2seq_distill.register_divergence."
        },
    )
    divergence_beta: float = field(
        default=0.5,
        metadata={"help": "Interpolation weight in [0, 1] of generalized_jsd, skew_kl and skew_reverse_kl."},
    )
    hidden_loss: str = field(default="mse", metadata={"help": "Hidden-state distance.", "choices": HIDDEN_LOSSES})
    attention_loss: str = field(default="kl", metadata={"help": "Attention-map distance.", "choices": ATTENTION_LOSSES})
    encoder_layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher encoder layer paired with each student encoder layer (e.g. 0 6 11). Default: the map "
            "recorded by create_student, else evenly spread keeping first and last."
        },
    )
    decoder_layer_map: list[int] | None = field(
        default=None, metadata={"help": "Teacher decoder layer paired with each student decoder layer."}
    )
    layer_map: list[int] | None = field(
        default=None, metadata={"help": "Teacher layer paired with each student layer, for GPT-2-style models."}
    )
    policy_gradient_weight: float = field(
        default=0.0,
        metadata={
            "help": "Causal LMs: weight of policy-gradient distillation (the student samples continuations, rewarded "
            "by the teacher's log-probability of each token; 0 = off)."
        },
    )
    pg_teacher_mix: float = field(
        default=0.2, metadata={"help": "Share of the teacher in the sampling mixture alpha*p_teacher + (1-alpha)*p_student."}
    )
    pg_sample_temperature: float = field(default=1.0, metadata={"help": "Temperature of policy-gradient sampling."})
    pg_max_new_tokens: int = field(default=32, metadata={"help": "Longest continuation sampled for policy-gradient steps."})
    pg_discount: float = field(default=0.95, metadata={"help": "Discount of future rewards in the returns (1 = none)."})
    pg_importance_clip: float = field(
        default=2.0, metadata={"help": "Upper clip of the importance weight p_student / p_mixture."}
    )
    token_frequency_penalty: float = field(
        default=0.0, metadata={"help": "Policy-gradient runs: weight of the penalty on tokens over-used within a sequence."}
    )
    diversity_penalty: float = field(
        default=0.0,
        metadata={"help": "Policy-gradient runs: weight of the penalty on sequences whose tokens are alike in embedding space."},
    )
    entropy_penalty: float = field(
        default=0.0, metadata={"help": "Policy-gradient runs: weight of the penalty on low-entropy predictions."}
    )
    on_policy_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Causal LMs (GKD's lambda): share of batches whose completions are replaced by the student's own "
            "samples, scored by the teacher with the KD divergence."
        },
    )
    on_policy_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of on-policy completions."})
    on_policy_max_new_tokens: int = field(default=32, metadata={"help": "Longest on-policy completion."})
    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={
            "help": "When a loss term is NaN or infinite, skip that batch (no gradient from it) instead of stopping "
            "the run with a checkpoint from before it."
        },
    )
    kd_chunk_elements: int = field(
        default=2**18,
        metadata={
            "help": "Logit entries per chunk of the CE / KD pass; the loss never holds more than a chunk's "
            "intermediates, so memory stays flat as the vocabulary grows."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "A folder written by cache_teacher: distill from the teacher's cached top-k log-probabilities "
            "without loading the teacher (cache_teacher writes to this path)."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Teacher precision. auto = the training precision (--bf16/--fp16) on GPUs, float32 on CPUs.",
            "choices": TEACHER_DTYPES,
        },
    )
    # Several teachers (teachers.py): teacher_model= a list or a dict {name: teacher}, or --teachers on the command line.
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Several teachers: each one's weight in the KD target, in --teachers order (Python: the order of "
            "teacher_model=, a list or dict); normalized to sum 1. Unset: equal weights."
        },
    )
    teacher_mixture: str = field(
        default="probability",
        metadata={
            "help": "How several teachers make one KD target: probability = sum_i w_i softmax(z_i/T), a distribution "
            "any --divergence applies to (with forward_kl: the gradient of the weighted sum of KLs to each teacher); "
            "geometric = softmax(sum_i w_i z_i/T), their normalized geometric mean, mass only where all agree (with "
            "reverse_kl: the gradient of the weighted sum of reverse KLs).",
            "choices": TEACHER_MIXTURES,
        },
    )
    teacher_column: str | None = field(
        default=None,
        metadata={
            "help": "A data column naming each row's teacher: that row's KD target is its teacher alone (an empty name: "
            "the mixture). A name that is not a teacher of the run is an error before training."
        },
    )
    feature_teacher: str | None = field(
        default=None,
        metadata={
            "help": "Several teachers: the one whose layers the feature terms (hidden, attention, norm, relation) "
            "compare and, from the command line, the student is copied from. Unset: the first."
        },
    )
    offload_idle_teachers: bool = field(
        default=False,
        metadata={
            "help": "Keep the teachers on the CPU and move each to the device only for its own forward pass, so the "
            "device holds the student and one teacher at a time (each step then copies the teachers' weights)."
        },
    )
    term_weights: list[str] | None = field(
        default=None,
        metadata={
            "help": "Weights of terms added with seq2seq_distill.register_term, as name=weight (e.g. "
            "pooled_cosine_loss=0.5); in Python also a dict. A registered term without a weight is off."
        },
    )
    term_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Python modules to import before the settings are checked (your own code: it runs), e.g. the "
            "module that calls register_term for the terms named in --term_weights."
        },
    )
    schedules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Settings that follow a schedule over optimizer steps instead of their fixed value, as "
            "name=kind:start->end[,warmup=N] (kind: constant (constant:V), linear, cosine; the value holds at start "
            "for N steps, then moves to end by the last step), e.g. kd_weight=linear:0.1->0.9,warmup=10 "
            "temperature=cosine:4->1 (or joined with ';'). Names: temperature, any term weight, a registered term. "
            "In a config file also a mapping {name: 'kind:start->end'}. Logged at each logging step."
        },
    )
    balance_terms: list[str] | None = field(
        default=None,
        metadata={
            "help": "Automatic balancing, as term=ratio (e.g. kd_loss=1.0): the term is weighed by "
            "ratio * EMA(|ce_loss|) / EMA(|term|) over past optimizer steps, so its running magnitude is ratio times "
            "CE's; its own weight weighs the first step. Off by default."
        },
    )
    balance_momentum: float = field(
        default=0.9, metadata={"help": "Momentum of the running magnitudes of --balance_terms, in [0, 1)."}
    )
    diagnostics: bool = field(
        default=True,
        metadata={
            "help": "Log, beside the terms, the forward KL(teacher || student) at the run's temperature whatever the "
            "divergence (teacher_kl; with a cache teacher_kl_topk and teacher_topk_mass), the student's argmax "
            "agreement with the teacher and each term's share of the loss (never weighed into the loss), warn about "
            "terms that train nothing, and write a summary into training_metrics.json."
        },
    )
    diagnostics_window: int = field(
        default=50,
        metadata={
            "help": "With --diagnostics: warn once when a distillation term has been 0 or constant for this "
            "many optimizer steps, or, weighted, averages under 0.01 times the weighted CE over them (0 = no warnings)."
        },
    )

    def __post_init__(self) -> None:
        # Checked before TrainingArguments does its heavier setup, so a bad flag fails at once.
        self.validate_distillation_settings()
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()

    @property
    def extra_term_weights(self) -> dict[str, float]:
        """The weights of registered terms, by term name (from ``term_weights``)."""
        return parse_term_weights(self.term_weights)

    @property
    def scheduled_weight_peaks(self) -> dict[str, float]:
        """{weight setting: the largest value of its schedule} (``schedules.py``): the plan turns terms on from it."""
        return weight_peaks(self.schedules)

    def validate_distillation_settings(self) -> None:
        import_term_modules(self.term_modules)
        extra = parse_term_weights(self.term_weights)
        self.term_weights = [f"{name}={value!r}" for name, value in extra.items()] or None  # one form: name=weight
        unknown = sorted(set(extra) - set(registered_terms()))
        if unknown:
            known = ", ".join(sorted(registered_terms())) or "none"
            raise InputError(
                f"term_weights names {', '.join(unknown)}, but no such term is registered (registered: {known}); "
                "call seq2seq_distill.register_term first, or import the module that does with --term_modules"
            )
        for name in WEIGHT_NAMES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        self.schedules, self.balance_terms = check_schedules(self)  # one written form each, like term_weights
        peaks = self.scheduled_weight_peaks  # a scheduled weight is on when its schedule rises above 0

        def peak(name: str) -> float:
            return peaks.get(name, getattr(self, name))

        if all(peak(name) == 0 for name in WEIGHT_NAMES) and not any({**extra, **peaks}.values()):
            raise InputError("every loss weight is 0, so nothing would be trained; set --ce_weight or --kd_weight > 0")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"temperature must be > 0, got {self.temperature!r}")
        if self.divergence not in DIVERGENCES:
            raise InputError(
                f"unknown divergence {self.divergence!r}; choose one of: {', '.join(sorted(DIVERGENCES))} (set --divergence)"
            )
        if not 0.0 <= self.divergence_beta <= 1.0:
            raise InputError(f"divergence_beta must be in [0, 1], got {self.divergence_beta!r}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise InputError(f"unknown hidden_loss {self.hidden_loss!r}; choose one of: {', '.join(HIDDEN_LOSSES)}")
        if self.attention_loss not in ATTENTION_LOSSES:
            raise InputError(f"unknown attention_loss {self.attention_loss!r}; choose one of: {', '.join(ATTENTION_LOSSES)}")
        check_at_least(self, ("relation_heads",), 1)
        if self.relation_layers not in RELATION_LAYERS:
            raise InputError(f"unknown relation_layers {self.relation_layers!r}; choose one of: {', '.join(RELATION_LAYERS)}")
        for name in PENALTY_WEIGHTS:
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("pg_teacher_mix", "on_policy_fraction", "pg_discount"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("pg_sample_temperature", "on_policy_temperature", "pg_importance_clip"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("pg_max_new_tokens", "on_policy_max_new_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        penalties = [name for name in PENALTY_WEIGHTS if peak(name)]
        if penalties and not peak("policy_gradient_weight"):
            raise InputError(
                f"{', '.join(penalties)} apply to policy-gradient samples; set --policy_gradient_weight > 0 or drop them"
            )
        window = self.diagnostics_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise InputError(f"diagnostics_window must be an integer >= 0, got {self.diagnostics_window!r}")
        if not isinstance(self.kd_chunk_elements, int) or self.kd_chunk_elements < 1:
            raise InputError(f"kd_chunk_elements must be a positive integer, got {self.kd_chunk_elements!r}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise InputError(f"unknown teacher_dtype {self.teacher_dtype!r}; choose one of: {', '.join(TEACHER_DTYPES)}")
        check_teacher_settings(self)

    @classmethod
    def from_arguments(cls, args) -> DistillationSettings:
        """The settings carried by ``args``, or the defaults when ``args`` is a plain ``TrainingArguments``."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def check_teacher_settings(settings) -> None:
    """The settings of several teachers: weights finite, >= 0 and not all 0; a known mixture; non-empty names."""
    weights = settings.teacher_weights
    if weights is not None:
        if isinstance(weights, (int, float)):
            weights = settings.teacher_weights = [weights]
        if not weights or any(
            isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0
            for weight in weights
        ):
            raise InputError(f"teacher_weights must be finite numbers >= 0, one per teacher, got {weights!r}")
        if sum(weights) <= 0:
            raise InputError("teacher_weights are all 0, so no teacher would count; give at least one a weight above 0")
    if settings.teacher_mixture not in TEACHER_MIXTURES:
        raise InputError(f"unknown teacher_mixture {settings.teacher_mixture!r}; choose one of: {', '.join(TEACHER_MIXTURES)}")
    for name in ("teacher_column", "feature_teacher"):
        value = getattr(settings, name)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise InputError(f"{name} must be a non-empty name, got {value!r}")


def parse_term_weights(values) -> dict[str, float]:
    """``["name=0.5", ...]`` (flags, config lists) or ``{"name": 0.5}`` (Python, config mappings) -> {name: weight}."""
    return named_numbers(values, "term_weights", "name=weight with a finite weight >= 0", lambda weight: weight >= 0)


def import_term_modules(modules) -> None:
    """Import the user's modules that register terms (named explicitly by the user: their code runs)."""
    import importlib

    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise InputError(
                f"--term_modules {module!r} cannot be imported ({error}); put it on PYTHONPATH or install it"
            ) from None


@dataclass
class DistillationTrainingArguments(DistillationSettings, TrainingArguments):
    """`TrainingArguments` plus the distillation settings of :class:`DistillationSettings`."""


@dataclass
class Seq2SeqDistillationTrainingArguments(DistillationSettings, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the distillation settings of :class:`DistillationSettings`."""


MODEL_TYPES = ("t5", "bart", "bert", "gpt2")
TASK_OF_MODEL_TYPE = {"t5": "seq2seq", "bart": "seq2seq", "bert": "classification", "gpt2": "causal_lm"}
TASK_NAMES = ("seq2seq", "classification", "causal_lm")
DEFAULT_VALIDATION_FRACTION = 0.1  # of train, carved as validation when the data has none and the run evaluates


@dataclass
class ModelArguments:
    """Which teacher, tokenizer and student; the layer flags of the seeds."""

    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Model family: t5 / bart (seq2seq), bert (classification), gpt2 (causal LM). Default: read "
            "from the teacher's config, else t5.",
            "choices": MODEL_TYPES,
        },
    )
    task: str | None = field(
        default=None,
        metadata={"help": "seq2seq, classification or causal_lm. Default: inferred from --model_type.", "choices": TASK_NAMES},
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher: a hub name (t5-large), a local folder, or package:<module>/<folder> for a model shipped "
            "inside an installed Python package. Without one, train_teacher / pipeline train a small teacher from scratch."
        },
    )
    teacher_local_path: str | None = field(
        default=None, metadata={"help": "Local folder of the teacher; takes precedence over --teacher."}
    )
    teachers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Several teachers distilled into one student (distill, cache_teacher), as NAME=PATH or PATH (named "
            "by its folder), sharing one tokenizer; instead of --teacher. --teacher_weights weighs them, "
            "--teacher_column routes rows to them, --feature_teacher names the one the student is copied from."
        },
    )
    custom_tokenizer_local_path: str | None = field(
        default=None, metadata={"help": "Local folder of the tokenizer; default: the teacher's."}
    )
    teacher_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "The teacher's tokenizer (folder or hub name), where it cannot be read from the teacher's folder. "
            "Default: --custom_tokenizer_local_path, else the teacher's folder."
        },
    )
    student: str | None = field(
        default=None,
        metadata={
            "help": "An existing student (hub name or folder) to distill into; default: built from the layer flags. "
            "A student folder with a tokenizer of its own reads the text with it (classification: the teacher reads "
            "its own tokenization of the same text, and KD compares the label distributions)."
        },
    )
    num_encoder_layers: int | None = field(
        default=None, metadata={"help": "Student encoder layers (T5, BART, BERT). Default: all of the teacher's."}
    )
    num_decoder_layers: int | None = field(default=None, metadata={"help": "Student decoder layers (T5, BART)."})
    num_layers: int | None = field(default=None, metadata={"help": "Student layers (GPT-2)."})
    hidden_dim: int | None = field(
        default=None,
        metadata={"help": "Student hidden size; a size other than the teacher's builds a freshly initialized student."},
    )
    vocab_size: int | None = field(default=None, metadata={"help": "Student vocabulary rows (e.g. trim T5's padded rows)."})
    scratch_hidden_size: int = field(
        default=128, metadata={"help": "Hidden size of a teacher trained from scratch (only when no --teacher is given)."}
    )
    scratch_num_layers: int = field(default=4, metadata={"help": "Layers per stack of a teacher trained from scratch."})
    scratch_vocab_size: int = field(
        default=2000, metadata={"help": "Vocabulary of the tokenizer trained on the data for a scratch teacher."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the hub to run. Off: only built-in architectures load."}
    )

    def __post_init__(self) -> None:
        check_at_least(self, ("num_encoder_layers", "num_decoder_layers", "num_layers", "hidden_dim", "vocab_size"), 1)
        check_at_least(self, ("scratch_hidden_size", "scratch_num_layers"), 1)
        check_at_least(self, ("scratch_vocab_size",), 16)  # room for the special tokens and some words
        if self.teachers is not None:
            if isinstance(self.teachers, str):
                self.teachers = [self.teachers]
            if self.teacher or self.teacher_local_path:
                raise InputError("pass --teacher (one teacher) or --teachers (several), not both")
            self.named_teachers  # noqa: B018 -- the entries are checked now, before anything loads

    @property
    def teacher_source(self) -> str | None:
        return self.teacher_local_path or self.teacher

    @property
    def named_teachers(self) -> dict[str, str]:
        """{name: path} of ``--teachers`` (empty without it)."""
        return parse_teacher_entries(self.teachers) if self.teachers else {}


def parse_teacher_entries(entries) -> dict[str, str]:
    """``--teachers`` entries, ``NAME=PATH`` or ``PATH`` (named by its folder), as {name: path}."""
    named: dict[str, str] = {}
    for entry in entries:
        name, path = entry.split("=", 1) if "=" in entry else (os.path.basename(os.path.normpath(entry)), entry)
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise InputError(f"--teachers entry {entry!r} is not NAME=PATH or PATH; e.g. --teachers big=models/a small=models/b")
        if name in named:
            raise InputError(f"--teachers names {name!r} twice; name each teacher apart, as NAME=PATH")
        named[name] = path
    if not named:
        raise InputError("--teachers is empty; give one or more teachers, as NAME=PATH or PATH")
    return named


@dataclass
class DataArguments:
    """Where the data comes from and how it is cut and tokenized."""

    dataset: str | None = field(default=None, metadata={"help": "A hub dataset name, e.g. cnn_dailymail or ag_news."})
    dataset_config: str | None = field(default=None, metadata={"help": "The hub dataset's config, e.g. 3.0.0."})
    dataset_local_path: str | None = field(
        default=None,
        metadata={
            "help": "A folder saved with save_to_disk, a data file (csv, tsv, json, jsonl, parquet), or a folder of "
            "such files named by split (train.tsv, dev.tsv, test.tsv). Without this and --dataset: the embedded "
            "standard-library docstring data."
        },
    )
    dataset_column_names: list[str] | None = field(
        default=None, metadata={"help": "Column names for a headerless csv / tsv file, in file order."}
    )
    dataset_input_column: list[str] | None = field(
        default=None,
        metadata={
            "help": "Input text column(s). Default: the first of document, article, text, sentence, ... Several columns "
            "(e.g. headline description) are joined into one text with --input_column_separator; for classification, "
            "exactly two are a text pair (as run_glue.py reads sentence1 sentence2)."
        },
    )
    input_column_separator: str = field(
        default="\n", metadata={"help": "Text placed between several input columns joined into one input."}
    )
    dataset_target_column: str | None = field(
        default=None,
        metadata={"help": "Target column: the summary (seq2seq), the label (classification), the completion (causal LM)."},
    )
    source_prefix: str = field(default="", metadata={"help": "Prefix added to every input, e.g. 'summarize: ' for T5."})
    prompt_suffix: str = field(
        default="\n",
        metadata={"help": "Causal LMs: text between the prompt and its completion, e.g. '\\nTL;DR: ' for summaries."},
    )
    max_source_length: int = field(default=512, metadata={"help": "Inputs are truncated to this many tokens."})
    max_target_length: int = field(default=128, metadata={"help": "Targets are truncated to this many tokens."})
    train_size: int | None = field(default=None, metadata={"help": "Use the first N training examples (none = all)."})
    val_size: int | None = field(default=None, metadata={"help": "Use the first N validation examples (none = all)."})
    test_size: int | None = field(default=None, metadata={"help": "Use the first N test examples (none = all)."})
    validation_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Share of train carved out (seeded) as validation when the data has none. Default: 0.1 when the "
            "run evaluates (--eval_strategy other than no), else 0: no training rows are held out for nothing."
        },
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Share of train carved out (seeded) as test when the data has none."}
    )
    split_seed: int = field(
        default=42, metadata={"help": "Seed of the carved validation / test splits (the same for every command)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize even when a cached result exists."})
    transfer_dataset: str | None = field(
        default=None,
        metadata={"help": "A hub dataset of unlabelled inputs the teacher labels (a transfer set): KD only, no CE."},
    )
    transfer_dataset_config: str | None = field(default=None, metadata={"help": "The transfer dataset's hub config."})
    transfer_dataset_local_path: str | None = field(
        default=None,
        metadata={
            "help": "A local transfer set: any data file or folder --dataset_local_path reads. Its train split (or its "
            "only file) is used; labels in it are ignored."
        },
    )
    transfer_input_column: list[str] | None = field(
        default=None,
        metadata={"help": "The transfer set's input column(s), in the order of --dataset_input_column (unset: the same names)."},
    )
    transfer_size: int | None = field(default=None, metadata={"help": "Use the first N rows of the transfer set (none = all)."})
    augment_copies: int = field(
        default=0,
        metadata={
            "help": "Augmented copies of each labelled training input added to the transfer set (Tang et al. 2019: "
            "masking, same-corpus word replacement, n-gram sampling); KD only. 0 = off. pipeline: 1 unless a "
            "transfer set or --augment_copies is given."
        },
    )
    augment_mask_prob: float = field(
        default=0.1, metadata={"help": "Augmentation: chance that a word becomes the tokenizer's mask token."}
    )
    augment_replace_prob: float = field(
        default=0.1,
        metadata={"help": "Augmentation: chance that a word is replaced by a random word of the training corpus."},
    )
    augment_ngram_prob: float = field(
        default=0.25,
        metadata={
            "help": "Augmentation: chance that a copy is cut to a random n-gram of its words (n of 1..--augment_ngram_max)."
        },
    )
    augment_ngram_max: int = field(default=5, metadata={"help": "Augmentation: longest n-gram sampled."})
    augment_seed: int = field(default=42, metadata={"help": "Seed of the augmentation (the same for every command)."})

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 0.5:
                raise InputError(f"{name} must be in [0, 0.5), got {value!r}")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("train_size", "val_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1 (or unset for all), got {value!r}")
        check_at_least(self, ("preprocessing_num_workers",), 1)
        check_at_least(self, ("transfer_size", "augment_ngram_max"), 1)
        check_at_least(self, ("augment_copies", "augment_seed"), 0)
        for name in ("augment_mask_prob", "augment_replace_prob", "augment_ngram_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value!r}")
        if self.augment_mask_prob + self.augment_replace_prob > 1.0:
            raise InputError(
                "augment_mask_prob + augment_replace_prob must be at most 1 (each word is masked, replaced or kept), "
                f"got {self.augment_mask_prob} + {self.augment_replace_prob}"
            )
        if self.transfer_dataset and self.transfer_dataset_local_path:
            raise InputError("pass one of --transfer_dataset and --transfer_dataset_local_path, not both")
        if isinstance(self.transfer_input_column, str):
            self.transfer_input_column = [self.transfer_input_column]
        if not 0 <= self.split_seed < 2**32:
            raise InputError(f"split_seed must be in [0, 2**32), got {self.split_seed!r}")
        if isinstance(self.dataset_input_column, str):  # DataArguments(dataset_input_column="text") from Python
            self.dataset_input_column = [self.dataset_input_column]
        columns = self.dataset_input_column
        if columns is not None and (len(set(columns)) != len(columns) or not all(column.strip() for column in columns)):
            raise InputError(f"dataset_input_column must be distinct, non-empty names, got {' '.join(map(repr, columns))}")
        names = self.dataset_column_names
        if names is not None and (len(set(names)) != len(names) or not all(name.strip() for name in names)):
            raise InputError(f"dataset_column_names must be distinct, non-empty names, got {' '.join(map(repr, names))}")


@dataclass
class LoraArguments:
    """A LoRA student (``distill``; needs the extra ``lora``: peft): a frozen base with a trained low-rank adapter.

    Fields:
        lora_r (`int`, defaults to 0): rank of the adapter; 0 = off (the whole student is trained).
        lora_alpha (`float`, defaults to 16.0): the adapter's scale is lora_alpha / lora_r.
        lora_target_modules (`list[str]`, optional): the layers that get an adapter; unset: peft's default for the
            family, ``all-linear``: every linear layer but the head.
        lora_dropout (`float`, defaults to 0.0): dropout on the adapter's input.
        self_distill (`bool`, defaults to False): the teacher is the base model itself with the adapter off.
    """

    lora_r: int = field(
        default=0,
        metadata={
            "help": "Rank of a LoRA adapter on the student (needs peft: pip install seq2seq_distill[lora]): only the "
            "adapter is trained and saved, beside the base it adapts (in base/ when the base is layer-copied). "
            "0 = off: the whole student is trained."
        },
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling numerator: the adapter is scaled by lora_alpha / lora_r."}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Layers that get an adapter, by name (e.g. q v for T5, query value for BERT, c_attn for GPT-2); "
            "all-linear: every linear layer but the head. Unset: peft's default for the model family."
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the adapter's input, in [0, 1); 0 keeps a resumed run identical to an uninterrupted one."},
    )
    self_distill: bool = field(
        default=False,
        metadata={
            "help": "Self-distillation (needs --lora_r): the teacher is the student's own base model with the adapter "
            "switched off, run on the same weights (no second copy), e.g. to keep a fine-tuned adapter close to its "
            "base's distribution. The base is --teacher itself, or what the layer flags copy out of it."
        },
    )

    def __post_init__(self) -> None:
        check_at_least(self, ("lora_r",), 0)
        if not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise InputError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.self_distill and not self.lora_r:
            raise InputError(
                "--self_distill distills from the student's base with its adapter off, so the student needs an adapter: "
                "set --lora_r (e.g. 8)"
            )
        if self.lora_r:
            from .lora import require_peft

            require_peft()  # before any data is read or weights are loaded

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0


@dataclass
class RunArguments:
    """How the command runs: config file, config template, dry run."""

    config: str | None = field(
        default=None, metadata={"help": "A JSON or YAML file of settings (the names of the flags); flags override it."}
    )
    create_config: str | None = field(
        default=None,
        metadata={"help": "Write a complete default config (with the other flags applied) to this path and exit."},
    )
    dry_run: bool = field(
        default=False, metadata={"help": "A few steps on a few examples, to check a setup end to end in a minute."}
    )


@dataclass
class PipelineArguments:
    """What the one-command pipeline trains besides the distilled student."""

    finetune_teacher: bool = field(
        default=False,
        metadata={"help": "Fine-tune the given --teacher on the task first (e.g. a pretrained encoder without a task head)."},
    )
    teacher_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of teacher training (unset: --num_train_epochs)."}
    )
    teacher_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of teacher training (unset: --learning_rate)."}
    )
    train_baseline: bool = field(
        default=True,
        metadata={"help": "Also train the same student without distillation (CE only), to see whether distillation helped."},
    )
    baseline_steps: str = field(
        default="epochs",
        metadata={
            "help": "How long the CE-only baseline trains. epochs: --num_train_epochs over its own rows (the labelled "
            "ones). matched: as many optimizer steps as the distilled run of its seed, which also trains on the "
            "transfer set; then a win cannot come from the longer run alone.",
            "choices": ["epochs", "matched"],
        },
    )
    seeds: int = field(
        default=1,
        metadata={
            "help": "Train the baseline and the distilled student this many times, run i with --seed + i (data order, "
            "dropout, anything initialized afresh; the teacher is trained once), into baseline-seedS / "
            "distilled-seedS, and report mean and spread over them. 3 or more for a verdict: distillation wins only "
            "when it beats the baseline by more than the spread. 1: the folders baseline / distilled, no spread."
        },
    )

    def __post_init__(self) -> None:
        check_at_least(self, ("seeds",), 1)
        if self.baseline_steps not in ("epochs", "matched"):
            raise InputError(f"--baseline_steps must be epochs or matched, got {self.baseline_steps!r}")


@dataclass
class PseudoLabelArguments:
    """Sequence-level distillation: the teacher writes the targets."""

    output_dir: str = field(
        default="outputs/pseudo_labels",
        metadata={"help": "Folder for the pseudo-labelled dataset (save_to_disk); distill reads it with --dataset_local_path."},
    )
    pseudo_label_output: str | None = field(
        default=None, metadata={"help": "Older name of --output_dir for this command; when given, it wins."}
    )
    pseudo_label_splits: list[str] = field(
        default_factory=lambda: ["train"],
        metadata={"help": "Splits to relabel; the others are copied with their original targets."},
    )
    pseudo_label_batch_size: int = field(default=16, metadata={"help": "Inputs per generation batch."})
    num_beams: int = field(default=4, metadata={"help": "Beam count for the teacher's generation."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest target to generate (unset: --max_target_length)."}
    )
    length_penalty: float | None = field(default=None, metadata={"help": "Beam length penalty (unset: the model's)."})

    @property
    def destination(self) -> str:
        """Where the relabelled dataset goes: --output_dir, or the older --pseudo_label_output when given."""
        return self.pseudo_label_output or self.output_dir


@dataclass
class BenchmarkArguments:
    """Which models to compare, on which split, with which generation settings."""

    models: list[str] | None = field(
        default=None,
        metadata={"help": "Models to compare (folders or hub names); the first is the teacher unless --teacher_name."},
    )
    model_names: list[str] | None = field(default=None, metadata={"help": "Display names, one per model (unset: folder names)."})
    model_groups: list[str] | None = field(
        default=None,
        metadata={
            "help": "A setting name per model, in --models order: models with the same name are seed runs of one "
            "setting, reported as mean and spread over them (speed and size: their median), e.g. --model_groups "
            "teacher baseline baseline baseline distilled distilled distilled. The setting named baseline is the "
            "CE-only student the verdict compares the others with. Unset: each model is a setting of its own "
            "(pipeline --seeds groups its runs itself)."
        },
    )
    teacher_name: str | None = field(
        default=None, metadata={"help": "Which model the ratios compare against (unset: the first)."}
    )
    benchmark_split: str = field(default="test", metadata={"help": "Split to evaluate: train, validation or test."})
    benchmark_output_dir: str = field(
        default="outputs/benchmark", metadata={"help": "Folder for the reports (benchmark command)."}
    )
    benchmark_batch_size: int = field(default=16, metadata={"help": "Batch size for quality evaluation and throughput."})
    num_beams: int | None = field(
        default=None, metadata={"help": "Beams for generation (unset: each model's generation config)."}
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest generation (unset: --max_target_length)."})
    length_penalty: float | None = field(default=None, metadata={"help": "Beam length penalty (unset: the generation config's)."})
    latency_examples: int = field(default=32, metadata={"help": "Examples timed one by one for p50 / p95 latency."})
    latency_min_timings: int = field(
        default=10,
        metadata={
            "help": "Fewest latency timings per model: the latency examples are timed again, round after round, until "
            "there are this many (and --latency_min_time is reached). Below 10 the verdict states no speed-up."
        },
    )
    latency_min_time: float = field(
        default=0.5,
        metadata={
            "help": "Fewest seconds of latency timings per model: rounds over the latency examples are repeated until "
            "their timings add up to this (and --latency_min_timings is reached), so a median of fast runs is stable."
        },
    )
    warmup_batches: int = field(default=2, metadata={"help": "Untimed warm-up runs before each timing."})
    num_sample_predictions: int = field(default=5, metadata={"help": "Examples shown side by side in the report."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (unset: cuda when available)."})

    def __post_init__(self) -> None:
        check_at_least(
            self, ("benchmark_batch_size", "latency_examples", "latency_min_timings", "num_beams", "max_new_tokens"), 1
        )
        check_at_least(self, ("warmup_batches", "num_sample_predictions", "latency_min_time"), 0)
        if not math.isfinite(self.latency_min_time):  # timing until infinity never ends
            raise InputError(f"latency_min_time must be a finite number of seconds, got {self.latency_min_time!r}")
        if self.benchmark_split not in ("train", "validation", "test"):
            raise InputError(f"benchmark_split must be train, validation or test, got {self.benchmark_split!r}")
        if self.device is not None:
            import torch

            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise InputError(f"device {self.device!r} is not a device name; use cpu, cuda or cuda:N") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise InputError(f"device {self.device!r} asked for, but no CUDA GPU is available here; use --device cpu")

    def named_models(self) -> dict[str, str]:
        """{display name: model} of ``--models``: names from ``--model_names``, else the folder names."""
        if not self.models:
            raise InputError("benchmark needs --models: the teacher first, then the students (folders or hub names)")
        names = self.model_names or [os.path.basename(os.path.normpath(path)) for path in self.models]
        if len(names) != len(self.models):
            raise InputError(f"--model_names has {len(names)} names for {len(self.models)} models; give one per model")
        if len(set(names)) != len(names):
            raise InputError(f"model names must be distinct, got {', '.join(names)}; set --model_names")
        return dict(zip(names, self.models, strict=True))

    def settings_of_models(self) -> dict[str, list[str]] | None:
        """{setting: its models' display names} from ``--model_groups``, or None when unset (a setting per model)."""
        if self.model_groups is None:
            return None
        names = list(self.named_models())
        if len(self.model_groups) != len(names):
            raise InputError(f"--model_groups has {len(self.model_groups)} names for {len(names)} models; give one per model")
        settings: dict[str, list[str]] = {}
        for setting, name in zip(self.model_groups, names, strict=True):
            settings.setdefault(setting, []).append(name)
        return settings


@dataclass
class CacheArguments:
    """What ``cache_teacher`` keeps of the teacher's outputs.

    Fields:
        cache_top_k (`int`, defaults to 64): most likely tokens kept per distilled position.
        cache_splits (`list[str]`, defaults to train validation): the splits the teacher runs on.
        cache_hidden_states (`bool`, defaults to False): also keep the hidden states of the teacher layers the
            student's layer pairing reads, so hidden_weight and norm_weight train from the cache.
        cache_hidden_dtype (`str`, defaults to "float32"): float32 (exact) or float16 (half the size).
    """

    cache_top_k: int = field(
        default=64, metadata={"help": "Most likely tokens kept per position (16-128 is typical; the rest is one tail bucket)."}
    )
    cache_splits: list[str] = field(
        default_factory=lambda: ["train", "validation"], metadata={"help": "Splits to run the teacher on."}
    )
    cache_hidden_states: bool = field(
        default=False,
        metadata={
            "help": "Also store the hidden states of the mapped teacher layers, so that distill --teacher_cache can "
            "train --hidden_weight and --norm_weight without the teacher. The layers are those --student pairs with "
            "(its recorded map, or --encoder_layer_map / --decoder_layer_map / --layer_map), else those a student "
            "built from the layer flags would; no student and no flags: every teacher layer. Size: rows x positions "
            "x hidden size x cached layers x 4 bytes (2 with --cache_hidden_dtype float16)."
        },
    )
    cache_hidden_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the cached hidden states: float32 (exactly the live teacher's on CPU) or float16 "
            "(half the disk, about 3 significant digits).",
            "choices": CACHE_HIDDEN_DTYPES,
        },
    )

    def __post_init__(self) -> None:
        if self.cache_top_k < 1:
            raise InputError(f"cache_top_k must be at least 1, got {self.cache_top_k}")
        if self.cache_hidden_dtype not in CACHE_HIDDEN_DTYPES:
            raise InputError(
                f"unknown cache_hidden_dtype {self.cache_hidden_dtype!r}; choose one of: {', '.join(CACHE_HIDDEN_DTYPES)}"
            )


# ---- checks across argument objects ----------------------------------------------------------------------------

# TrainingArguments values the Trainer would only trip over mid-run (a DataLoader error, a division by zero).
TRAINING_MINIMUMS = {
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0,
    "num_train_epochs": 0,
    "dataloader_num_workers": 0,
    "seed": 0,
}


def check_run_values(objects) -> None:
    """Ranges the dataclasses do not check themselves: no nan / inf anywhere, and sane Trainer settings.

    Run on every command's parsed objects (``TrainingArguments`` is the Transformers' class: its ranges are
    checked here rather than in a ``__post_init__`` of ours).
    """
    for obj in objects:
        for item in fields(obj):
            value = getattr(obj, item.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{item.name} must be a finite number, got {value!r}")
        if not isinstance(obj, TrainingArguments):
            continue
        for name, minimum in TRAINING_MINIMUMS.items():
            check_at_least(obj, (name,), minimum)
        if obj.seed >= 2**32:
            raise InputError(f"seed must be below 2**32, got {obj.seed}")
        if obj.save_strategy == "steps" and not obj.save_steps > 0:
            raise InputError(f"save_steps must be > 0 with --save_strategy steps, got {obj.save_steps!r}")
        if not 0 <= obj.label_smoothing_factor < 1:
            raise InputError(f"label_smoothing_factor must be in [0, 1), got {obj.label_smoothing_factor!r}")


# What one command needs of its settings together, checked when the command starts (not when it is parsed: every
# command parses with no flags, for --help and --create-config).


def check_pipeline_training(training_args) -> None:
    """``pipeline`` runs several trainings: one ``--resume_from_checkpoint`` cannot resume them all."""
    if training_args.resume_from_checkpoint:
        raise InputError(
            "pipeline runs several trainings; resume the one that stopped with train_teacher / distill and its output folder"
        )


def check_one_teacher(model_args: ModelArguments, command: str) -> None:
    """``--teachers`` (several teachers) is for ``distill`` and ``cache_teacher``; the other commands take one."""
    if model_args.teachers:
        hint = "benchmark them with --models" if command == "benchmark" else "give one --teacher"
        raise InputError(f"--teachers is for distill and cache_teacher; {command} takes one teacher: {hint}")


def check_cache_destination(training_args) -> None:
    """``cache_teacher`` writes to ``--teacher_cache``, so that path must be given."""
    if not training_args.teacher_cache:
        raise InputError("cache_teacher writes the cache to --teacher_cache PATH; give that path")


def check_cached_student(model_args: ModelArguments) -> None:
    """``distill --teacher_cache`` never loads the teacher, so the student cannot be built from it: it is given."""
    if not model_args.student:
        raise InputError(
            "--teacher_cache trains without loading the teacher, so give the student with --student PATH "
            "(make_student builds a layer-copied one)"
        )
