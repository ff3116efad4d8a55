"""seq2seq_distill: knowledge distillation on top of the HuggingFace Trainer.

The public API: two trainers, their argument dataclasses, ``create_student``, the loss functions, ``register_term``
(a distillation term of your own, weighed by ``term_weights``), the teacher cache for offline distillation, LoRA
students (``lora_student``, ``SelfTeacher``; the extra ``lora``), and the mixture target of several teachers
(``teacher_model=`` a list or dict).
"""

from .arguments import DistillationSettings, DistillationTrainingArguments, Seq2SeqDistillationTrainingArguments
from .layer_maps import spread_layers
from .lora import SelfTeacher, lora_student
from .losses import (
    DIVERGENCES,
    attention_relation_loss,
    attention_transfer_loss,
    cross_entropy_sum,
    hidden_state_loss,
    logit_distillation_loss,
    norm_statistics_loss,
    register_divergence,
    teacher_mixture_log_probs,
    topk_distillation_loss,
)
from .modeling import load_model
from .students import create_student
from .teacher_cache import TeacherCache, build_teacher_cache, load_teacher_cache
from .terms import StepPositions, TermInputs, register_term, unregister_term
from .trainer import DistillationTrainer, Seq2SeqDistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "DistillationSettings",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "Seq2SeqDistillationTrainer",
    "Seq2SeqDistillationTrainingArguments",
    "SelfTeacher",
    "StepPositions",
    "TeacherCache",
    "TermInputs",
    "attention_relation_loss",
    "attention_transfer_loss",
    "build_teacher_cache",
    "create_student",
    "cross_entropy_sum",
    "hidden_state_loss",
    "load_model",
    "load_teacher_cache",
    "logit_distillation_loss",
    "lora_student",
    "norm_statistics_loss",
    "register_divergence",
    "register_term",
    "spread_layers",
    "teacher_mixture_log_probs",
    "topk_distillation_loss",
    "unregister_term",
]
