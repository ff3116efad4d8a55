"""Running a model over a split: length-sorted batches, predictions per task, generation.

One inference layer shared by the benchmark (quality and timings), pseudo-labelling (the teacher's outputs become
the targets) and validation by generation at the end of a causal-LM run, so that all three batch, pad, generate and
decode the same way. Measuring (timings, memory, scores against the teacher) stays in ``benchmark.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data import PreparedData, collator_for
from .errors import InputError

__all__ = [
    "EvaluationSet",
    "TaskRunner",
    "batches",
    "decode_generated",
    "evaluation_set",
    "generation_predictions",
    "length_order",
    "predict_in_batches",
    "teacher_outputs",
]


# ---- length-sorted batches -------------------------------------------------------------------------------------


def length_order(features: Sequence[dict]) -> list[int]:
    """Indices of ``features``, shortest ``input_ids`` first (ties keep their order): batches waste less padding."""
    return sorted(range(len(features)), key=lambda index: len(features[index]["input_ids"]))


def batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive slices of ``batch_size`` indices (the last one shorter)."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@dataclass
class EvaluationSet:
    """One split ready for inference: features in length-sorted batches, references and label ids."""

    features: list[dict]
    order: list[int]
    references: list
    sources: list[str]


def evaluation_set(data: PreparedData, split: str) -> EvaluationSet:
    if split not in data.tokenized:
        raise InputError(f"--benchmark_split {split!r} not in the data (splits: {', '.join(data.tokenized)})")
    tokenized = data.tokenized[split]
    raw = data.raw[split]
    if data.task == "classification":
        references = list(tokenized["labels"])
    elif data.target_column is not None:
        references = list(raw[data.target_column])
    else:
        references = [None] * len(raw)
    features = [dict(row) for row in tokenized]
    return EvaluationSet(features, length_order(features), references, data.source_texts(split))


# ---- predictions, per task -------------------------------------------------------------------------------------


def _prompt_only(feature: dict) -> dict:
    """The prompt part of a causal-LM example (the positions whose label is -100)."""
    prompt_length = next((i for i, label in enumerate(feature["labels"]) if label != -100), len(feature["labels"]))
    ids = feature["input_ids"][:prompt_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}


class TaskRunner:
    """Runs one model on batches of one task: predictions for quality, timed the same way for every model."""

    def __init__(self, model, tokenizer, task: str, generation: dict, device: torch.device):
        self.model, self.tokenizer, self.task, self.generation, self.device = model, tokenizer, task, generation, device
        self.input_collator = collator_for("classification", tokenizer)  # pads input_ids / attention_mask only

    @torch.no_grad()
    def predict(self, features: list[dict]) -> tuple[list, list[int]]:
        """(predictions, generated token counts) for a batch."""
        if self.task == "classification":
            batch = self._inputs(features)
            return self.model(**batch).logits.argmax(-1).tolist(), [1] * len(features)
        if self.task == "seq2seq":
            batch = self._inputs(features)
            generated = self.model.generate(**batch, **self.generation)
            new_tokens = generated[:, 1:]  # the decoder start token is not generated
        else:
            padding_side = self.tokenizer.padding_side
            self.tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
            try:
                batch = self._inputs([_prompt_only(feature) for feature in features])
            finally:
                self.tokenizer.padding_side = padding_side
            generated = self.model.generate(**batch, **self.generation, pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
        return decode_generated(new_tokens, self.tokenizer)

    def _inputs(self, features: list[dict]) -> dict:
        keep = [
            {k: v for k, v in feature.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for feature in features
        ]
        return {name: tensor.to(self.device) for name, tensor in self.input_collator(keep).items()}


def decode_generated(new_tokens: torch.Tensor, tokenizer) -> tuple[list[str], list[int]]:
    """(texts, generated-token counts) of generated ids ``[batch, tokens]`` without the decoder start or the prompt:
    the benchmark's and the Trainer's evaluation (``training.task_metrics``) decode and count the same way."""
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), _generated_counts(new_tokens, tokenizer)


def _generated_counts(new_tokens: torch.Tensor, tokenizer) -> list[int]:
    """Tokens up to and including the first EOS (padding after it is not generated work)."""
    counts = []
    for row in new_tokens.tolist():
        length = len(row)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
            length = row.index(tokenizer.eos_token_id) + 1
        while length and row[length - 1] == tokenizer.pad_token_id and row[length - 1] != tokenizer.eos_token_id:
            length -= 1
        counts.append(length)
    return counts


def predict_in_batches(
    runner: TaskRunner,
    features: list[dict],
    batch_order: list[list[int]],
    *,
    timer: Callable[[], AbstractContextManager] = nullcontext,
    desc: str | None = None,
    leave: bool = True,
) -> tuple[list, list[int]]:
    """Every example's prediction and generated-token count, in the order of ``features``.

    ``batch_order`` lists the batches (indices into ``features``, e.g. length-sorted); ``timer`` wraps each batch's
    prediction (the benchmark times them); ``desc`` shows a progress bar.
    """
    predictions: list = [None] * len(features)
    counts: list[int] = [0] * len(features)
    for batch in tqdm(batch_order, desc=desc, leave=leave) if desc else batch_order:
        with timer():
            outputs, batch_counts = runner.predict([features[i] for i in batch])
        for index, output, count in zip(batch, outputs, batch_counts, strict=True):
            predictions[index], counts[index] = output, count
    return predictions, counts


# ---- generation and pseudo-labels ------------------------------------------------------------------------------


def generation_predictions(
    model, tokenizer, data: PreparedData, split: str, *, max_new_tokens: int, sampled: bool, seed: int, batch_size: int = 16
) -> dict:
    """Greedy or sampled continuations of a split's inputs, scored with the benchmark's metrics (ROUGE, BLEU, length)."""
    from .metrics import bleu_scores, generation_length, rouge_scores  # nltk takes a second: only runs that generate pay

    device = next(model.parameters()).device
    evaluation = evaluation_set(data, split)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": sampled, "num_beams": 1}
    if sampled:
        settings.update(top_k=0, top_p=1.0, temperature=1.0)
        torch.manual_seed(seed)
    runner = TaskRunner(model, tokenizer, data.task, settings, device)
    was_training = model.training
    model.eval()
    predictions, counts = predict_in_batches(runner, evaluation.features, list(batches(evaluation.order, batch_size)))
    model.train(was_training)
    metrics = {"generated_length": generation_length(counts)}
    if all(reference is not None for reference in evaluation.references):
        metrics.update(rouge_scores([p or "" for p in predictions], evaluation.references))
        metrics.update(bleu_scores([p or "" for p in predictions], evaluation.references))
    rows = [
        {"input": source, "reference": reference, "prediction": prediction}
        for source, reference, prediction in zip(evaluation.sources, evaluation.references, predictions, strict=True)
    ]
    return {"split": split, "settings": settings, "metrics": metrics, "predictions": rows}


def teacher_outputs(
    teacher, tokenizer, data: PreparedData, split: str, generation: dict, batch_size: int, device: torch.device
) -> list:
    """Generated targets (seq2seq), completions of the prompts (causal LM) or predicted label names (classification)
    of a split, in the split's order."""
    features = [dict(row) for row in data.tokenized[split]]
    runner = TaskRunner(teacher, tokenizer, data.task, generation, device)
    order = list(batches(length_order(features), batch_size))
    outputs, _ = predict_in_batches(runner, features, order, desc=f"pseudo-labelling {split}")
    if data.task == "classification":
        return [teacher.config.id2label[prediction] for prediction in outputs]
    return outputs
