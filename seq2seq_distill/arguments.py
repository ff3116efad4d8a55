"""Distillation settings as dataclasses that ``HfArgumentParser`` reads from flags, JSON or YAML.

Weighting convention (one for every term, no hidden ``1 - alpha``)::

    loss = ce_weight * CE + kd_weight * KD + hidden_weight * HIDDEN + attention_weight * ATTENTION + norm_weight * NORM

Each term is a sum over its positions divided by the count of those positions in the whole optimizer step, so
weights are comparable across batch sizes and gradient accumulation. A weight of 0 switches its term off and costs
nothing. The seeds' conventions map onto it as follows:

* ``alpha * KD + (1 - alpha) * CE``  ->  ``kd_weight=alpha, ce_weight=1 - alpha``
* ``alpha * KD + beta * CE``         ->  ``kd_weight=alpha, ce_weight=beta``
* ``alpha * CE + (1 - alpha) * KL``  ->  ``ce_weight=alpha, kd_weight=1 - alpha``
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .losses import DIVERGENCES

HIDDEN_LOSSES = ("mse", "cosine")
ATTENTION_LOSSES = ("kl", "mse")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHT_NAMES = ("ce_weight", "kd_weight", "hidden_weight", "attention_weight", "norm_weight")


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
        divergence (`str`, defaults to "forward_kl"): a name registered in `seq2seq_distill.losses.DIVERGENCES`.
        divergence_beta (`float`, defaults to 0.5): interpolation weight of generalized_jsd / skew divergences.
        hidden_loss (`str`, defaults to "mse"): mse or cosine.
        attention_loss (`str`, defaults to "kl"): kl or mse.
        encoder_layer_map / decoder_layer_map / layer_map (`list[int]`, optional): teacher layer per student layer.
        teacher_dtype (`str`, defaults to "auto"): the teacher's precision.
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
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Teacher precision. auto = the training precision (--bf16/--fp16) on GPUs, float32 on CPUs.",
            "choices": TEACHER_DTYPES,
        },
    )

    def __post_init__(self) -> None:
        # Checked before TrainingArguments does its heavier setup, so a bad flag fails at once.
        self.validate_distillation_settings()
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()

    def validate_distillation_settings(self) -> None:
        for name in WEIGHT_NAMES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if all(getattr(self, name) == 0 for name in WEIGHT_NAMES):
            raise ValueError("every loss weight is 0, so nothing would be trained; set --ce_weight or --kd_weight > 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"unknown divergence {self.divergence!r}; choose one of: {', '.join(sorted(DIVERGENCES))} (set --divergence)"
            )
        if not 0.0 <= self.divergence_beta <= 1.0:
            raise ValueError(f"divergence_beta must be in [0, 1], got {self.divergence_beta!r}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"unknown hidden_loss {self.hidden_loss!r}; choose one of: {', '.join(HIDDEN_LOSSES)}")
        if self.attention_loss not in ATTENTION_LOSSES:
            raise ValueError(f"unknown attention_loss {self.attention_loss!r}; choose one of: {', '.join(ATTENTION_LOSSES)}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"unknown teacher_dtype {self.teacher_dtype!r}; choose one of: {', '.join(TEACHER_DTYPES)}")

    @classmethod
    def from_arguments(cls, args) -> DistillationSettings:
        """The settings carried by ``args``, or the defaults when ``args`` is a plain ``TrainingArguments``."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass
class DistillationTrainingArguments(DistillationSettings, TrainingArguments):
    """`TrainingArguments` plus the distillation settings of :class:`DistillationSettings`."""


@dataclass
class Seq2SeqDistillationTrainingArguments(DistillationSettings, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the distillation settings of :class:`DistillationSettings`."""
