"""seq2seq_distill: knowledge distillation on top of the HuggingFace Trainer.

The public API: two trainers, their argument dataclasses, ``create_student`` and the loss functions.
"""

from .arguments import DistillationSettings, DistillationTrainingArguments, Seq2SeqDistillationTrainingArguments
from .layer_maps import spread_layers
from .losses import (
    DIVERGENCES,
    attention_transfer_loss,
    cross_entropy_sum,
    hidden_state_loss,
    logit_distillation_loss,
    norm_statistics_loss,
    register_divergence,
)
from .modeling import load_model
from .students import create_student
from .trainer import DistillationTrainer, Seq2SeqDistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "DistillationSettings",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "Seq2SeqDistillationTrainer",
    "Seq2SeqDistillationTrainingArguments",
    "attention_transfer_loss",
    "create_student",
    "cross_entropy_sum",
    "hidden_state_loss",
    "load_model",
    "logit_distillation_loss",
    "norm_statistics_loss",
    "register_divergence",
    "spread_layers",
]
