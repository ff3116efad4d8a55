"""Data and training helpers shared by the tests (tiny models, real stdlib text, no network)."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, TrainerCallback

from seq2seq_distill.stdlib_corpus import build_classification_corpus, build_summarization_corpus

LABELS = ("text", "files", "network", "concurrency", "math")


def seq2seq_dataset(tokenizer, size: int = 32, offset: int = 0, source_len: int = 48, target_len: int = 12) -> Dataset:
    rows = build_summarization_corpus()[offset : offset + size]
    encoded = tokenizer([r["document"] for r in rows], truncation=True, max_length=source_len)
    targets = tokenizer([r["summary"] for r in rows], truncation=True, max_length=target_len)
    return Dataset.from_dict({**encoded, "labels": targets["input_ids"]})


def classification_dataset(tokenizer, size: int = 32, offset: int = 0, max_len: int = 48) -> Dataset:
    rows = build_classification_corpus()[offset : offset + size]
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_len)
    return Dataset.from_dict({**encoded, "labels": [LABELS.index(r["label"]) for r in rows]})


def causal_dataset(tokenizer, size: int = 32, offset: int = 0, max_len: int = 24) -> Dataset:
    """Prompt = first words of a docstring body, completion = its summary; labels -100 on the prompt."""
    rows = build_summarization_corpus()[offset : offset + size]
    input_ids, labels = [], []
    for row in rows:
        prompt = tokenizer(" ".join(row["document"].split()[:8]))["input_ids"]
        completion = tokenizer(row["summary"])["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + completion)[:max_len]
        input_ids.append(ids)
        labels.append(([-100] * len(prompt) + completion)[:max_len])
    return Dataset.from_dict({"input_ids": input_ids, "attention_mask": [[1] * len(i) for i in input_ids], "labels": labels})


def collator_for(task: str, tokenizer, model=None):
    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorForSeq2Seq(tokenizer, model=model if task == "seq2seq" else None, label_pad_token_id=-100)


class GradientRecorder(TrainerCallback):
    """Copies every gradient just before each optimizer step (after accumulation, before clipping is applied)."""

    def __init__(self):
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients.append({name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None})


def parameters_copy(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_accumulation_is_exact(trainer_for, names, grad_rtol: float = 1e-5, grad_atol: float = 1e-5) -> dict:
    """One optimizer step of a batch of 8 against 4 micro-batches of 2: the same logged ``names`` and gradients.

    ``trainer_for(batch_size, accumulation)`` builds a trainer around a fresh copy of the student; returns the full
    batch's first log entry (for further checks).
    """
    results = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        recorder = GradientRecorder()
        trainer = trainer_for(batch_size, accumulation)
        trainer.add_callback(recorder)
        trainer.train()
        results.append((trainer.state.log_history[0], recorder.gradients[0]))
    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = results
    for name in names:
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=grad_rtol, atol=grad_atol, msg=name)
    return full_logs


def assert_resumes_exactly(student, trainer_for, tmp_path) -> None:
    """4 steps in one go vs. 2 steps, a checkpoint, and 2 more from it: the same weights.

    ``trainer_for(model, output_dir, max_steps)`` builds the trainer (saving every 2 steps) around a copy of ``student``.
    """

    def run(folder, max_steps, resume=None):
        model = copy.deepcopy(student)
        trainer_for(model, tmp_path / folder, max_steps).train(resume_from_checkpoint=resume)
        return parameters_copy(model)

    uninterrupted = run("whole", 4)
    run("parts", 2)
    resumed = run("parts", 4, resume=str(tmp_path / "parts" / "checkpoint-2"))
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


# Small, fast, deterministic training runs: one step unless a test says otherwise.
TRAINING_DEFAULTS = dict(
    per_device_train_batch_size=8,
    max_steps=1,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    seed=0,
    lr_scheduler_type="constant",
)


def distillation_trainer(
    task: str, tokenizer, student, teacher, output_dir, train_dataset, *, eval_dataset=None, teacher_cache=None, **settings
):
    """The trainer and arguments of ``task`` with TRAINING_DEFAULTS, the usual collator and an optional teacher cache."""
    from seq2seq_distill import (
        DistillationTrainer,
        DistillationTrainingArguments,
        Seq2SeqDistillationTrainer,
        Seq2SeqDistillationTrainingArguments,
    )

    seq2seq = task == "seq2seq"
    arguments = (Seq2SeqDistillationTrainingArguments if seq2seq else DistillationTrainingArguments)(
        output_dir=str(output_dir), **{**TRAINING_DEFAULTS, **settings}
    )
    collator = collator_for(task, tokenizer, student)
    if teacher_cache is not None:
        train_dataset = teacher_cache.attach("train", train_dataset)
        collator = teacher_cache.collator(collator)
    return (Seq2SeqDistillationTrainer if seq2seq else DistillationTrainer)(
        model=student,
        teacher_model=teacher,
        teacher_cache=teacher_cache,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )


# A teacher trained from scratch by the CLI in seconds: tiny model, tiny data, no checkpoints or evaluation.
TINY_RUN_FLAGS = [
    "--scratch_hidden_size",
    "32",
    "--scratch_num_layers",
    "2",
    "--scratch_vocab_size",
    "400",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--train_size",
    "24",
    "--val_size",
    "4",
    "--test_size",
    "6",
    "--max_source_length",
    "32",
    "--max_target_length",
    "8",
    "--learning_rate",
    "1e-3",
    "--logging_steps",
    "1",
]
