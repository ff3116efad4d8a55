"""The settings a command starts from, before any config file or flag: Trainer defaults that suit every command,
and the embedded preset.

The embedded preset is what ``seq2seq-distill pipeline`` runs with no data source, teacher or config file: stdlib
docstring summarization with a small T5 teacher trained from scratch, sized to finish the whole pipeline in minutes
on 2 CPU cores. It is defined here only; ``seq2seq-distill pipeline --create-config`` writes it out as a config
file to edit.
"""

from __future__ import annotations

__all__ = [
    "DATA_SOURCE_KEYS",
    "EMBEDDED_DEFAULTS",
    "EMBEDDED_STUDENT_LAYERS",
    "PIPELINE_DEFAULTS",
    "TRAINING_DEFAULTS",
    "TRANSFER_SOURCE_KEYS",
    "embedded_defaults",
]

# Trainer settings that suit every command here; any TrainingArguments flag overrides them.
TRAINING_DEFAULTS = {
    "report_to": "none",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 10,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
}

# The embedded preset's settings for every model type; its student's layers follow the model type (below).
EMBEDDED_DEFAULTS = {
    "max_source_length": 96,
    "max_target_length": 24,
    "scratch_hidden_size": 128,
    "scratch_num_layers": 6,
    "scratch_vocab_size": 2000,
    "learning_rate": 1e-3,
    "num_train_epochs": 8,
    "teacher_num_train_epochs": 15,
    "temperature": 2.0,
    "ce_weight": 0.5,
    "kd_weight": 0.5,
    "save_strategy": "no",
    "max_new_tokens": 24,
}
# The pipeline's recipe when it is given no transfer set (for any data, the embedded preset's included): one
# augmented copy of each labelled input, KD only, labelled by the teacher (its summary for seq2seq). Measured with
# --seeds 3 (README, "When does distillation help?"): on the embedded docstrings +2.61 ROUGE-L over CE-only where
# plain KD added nothing; on SST-2 with all 6,000 labels it lifts the distilled student from 81.00 to 81.35. Two
# copies did better on one seed but push the embedded run past 10 minutes. Only the pipeline: distill from a teacher
# cache cannot label new rows. A transfer set given (or --augment_copies) replaces it.
PIPELINE_DEFAULTS = {"augment_copies": 1}
TRANSFER_SOURCE_KEYS = ("transfer_dataset", "transfer_dataset_local_path", "augment_copies")

EMBEDDED_STUDENT_LAYERS = {
    "t5": {"num_encoder_layers": 2, "num_decoder_layers": 2},
    "bart": {"num_encoder_layers": 2, "num_decoder_layers": 2},
    "bert": {"num_encoder_layers": 2},
    "gpt2": {"num_layers": 2},
}


def embedded_defaults(model_type: str | None) -> dict:
    """The embedded preset for a model type (t5 when none is given): shared settings and its student's layers (the
    pipeline's recipe, ``PIPELINE_DEFAULTS``, applies on top as on any data)."""
    model_type = model_type or "t5"
    return {"model_type": model_type, **EMBEDDED_DEFAULTS, **EMBEDDED_STUDENT_LAYERS.get(model_type, {})}


# The embedded preset applies only when none of these is given (as a flag or config key) and no --config is. A
# teacher cache counts: it was built by cache_teacher with a --teacher, so distilling from it must tokenize the data
# with the same (non-embedded) lengths, or the cache's data fingerprint would not match.
DATA_SOURCE_KEYS = ("dataset", "dataset_local_path", "teacher", "teacher_local_path", "teachers", "teacher_cache")
