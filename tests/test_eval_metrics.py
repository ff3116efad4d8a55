"""Task metrics during training: ROUGE and generated length (seq2seq), accuracy and macro-F1 (classification) at
every evaluation, the best checkpoint by one of them kept, a user's own compute_metrics and a local evaluate
metric used as the Trainer uses them, and a metric the run cannot log refused before any weights load."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score

from seq2seq_distill.cli import main
from seq2seq_distill.stdlib_corpus import build_classification_corpus

ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Four kinds of sentence, each with its own summary: a two-layer T5 learns them in a few dozen steps, so ROUGE-2
# moves between evaluations instead of sitting at 0 as it does for an untrained model.
TOPICS = (
    ("open the file and read its lines", "read lines from a file"),
    ("add the numbers in the list together", "sum a list of numbers"),
    ("connect the socket to the remote host", "connect a socket to a host"),
    ("sort the items by their key in place", "sort items by key"),
)
SEQ2SEQ_FLAGS = ["--max_source_length", "24", "--max_target_length", "8", "--per_device_train_batch_size", "8"]


def every(steps: int) -> list[str]:
    """Evaluate and save a checkpoint every ``steps`` steps (--load_best_model_at_end needs both on one schedule)."""
    return ["--eval_strategy", "steps", "--eval_steps", str(steps), "--save_strategy", "steps", "--save_steps", str(steps)]


def _write_splits(folder: Path, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _evaluations(history: list[dict]) -> list[dict]:
    return [entry for entry in history if "eval_loss" in entry]


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    rng = random.Random(0)
    filler = "quickly then also with care every time for the user".split()
    rows = [{"document": f"{TOPICS[i % 4][0]} {' '.join(rng.sample(filler, 3))}", "summary": TOPICS[i % 4][1]} for i in range(32)]
    return _write_splits(tmp_path_factory.mktemp("summaries"), {"train": rows, "validation": rows[:8], "test": rows[:4]})


@pytest.fixture(scope="module")
def summary_teacher(tmp_path_factory, summaries):
    """A T5 teacher trained from scratch by train_teacher, evaluated with generation every 20 steps."""
    output = tmp_path_factory.mktemp("teacher")
    scratch = ["--model_type", "t5", "--scratch_hidden_size", "32", "--scratch_num_layers", "2", "--scratch_vocab_size", "200"]
    schedule = ["--max_steps", "40", "--learning_rate", "3e-3", "--eval_strategy", "steps", "--eval_steps", "20"]
    argv = ["train_teacher", *scratch, "--dataset_local_path", str(summaries), *SEQ2SEQ_FLAGS, *schedule]
    assert main([*argv, "--save_strategy", "no", "--predict_with_generate", "--output_dir", str(output)]) == 0
    return output


DISTILL_STEPS = 32


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, summaries, summary_teacher):
    """distill, evaluated with generation every 4 steps, keeping the checkpoint of the best ROUGE-2: the student
    reaches its best well before the last step and stays there, so the kept checkpoint (the first best) is not the
    last (with 20 steps it was still rising at the end under transformers 5.25)."""
    output = tmp_path_factory.mktemp("distilled")
    student = ["--teacher", str(summary_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1"]
    best = ["--predict_with_generate", "--load_best_model_at_end", "--metric_for_best_model", "rouge2"]
    data = ["--dataset_local_path", str(summaries), *SEQ2SEQ_FLAGS]
    argv = ["distill", *student, *data, "--max_steps", str(DISTILL_STEPS), "--learning_rate", "1e-2", *every(4), *best]
    assert main([*argv, "--output_dir", str(output)]) == 0
    return output


def test_train_teacher_and_distill_log_rouge_and_generated_length_at_every_evaluation(summary_teacher, distilled):
    teacher_evaluations = _evaluations(json.loads((summary_teacher / "training_metrics.json").read_text())["log_history"])
    assert [entry["step"] for entry in teacher_evaluations[:2]] == [20, 40]
    assert teacher_evaluations[-1]["eval_rouge2"] > 50  # it learned the four summaries: the student has a good teacher
    evaluations = _evaluations(json.loads((distilled / "training_metrics.json").read_text())["log_history"])
    every_four = list(range(4, DISTILL_STEPS + 1, 4))
    assert [entry["step"] for entry in evaluations] == [*every_four, DISTILL_STEPS]  # every 4 steps, then the final one
    for entry in evaluations:
        for name in (*ROUGE_NAMES, "gen_len"):
            assert 0 <= entry[f"eval_{name}"] <= (8 if name == "gen_len" else 100), (name, entry)
        # The eval loss is the run's distillation loss with its terms, as without generation, not the student's CE.
        assert entry["eval_loss"] == pytest.approx(0.5 * entry["eval_ce_loss"] + 0.5 * entry["eval_kd_loss"], rel=1e-4)
    assert len({entry["eval_rouge2"] for entry in evaluations}) > 1


def test_rouge_and_length_match_an_independent_computation_on_the_saved_student(distilled, summaries):
    """The final evaluation (of the saved, best student) against rouge-score on the student's own generations."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    final = _evaluations(json.loads((distilled / "training_metrics.json").read_text())["log_history"])[-1]
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(distilled).eval(), AutoTokenizer.from_pretrained(distilled)
    rows = [json.loads(line) for line in (summaries / "validation.jsonl").read_text().splitlines()]
    batch = tokenizer([row["document"] for row in rows], max_length=24, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        new_tokens = model.generate(**batch)[:, 1:]  # the decoder start token is not generated
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_NAMES), use_stemmer=True)
    scores = [scorer.score(row["summary"], text) for row, text in zip(rows, texts, strict=True)]
    for name in ROUGE_NAMES:
        assert final[f"eval_{name}"] == pytest.approx(100 * np.mean([score[name].fmeasure for score in scores]), abs=1e-6)
    assert final["eval_gen_len"] == pytest.approx((new_tokens != tokenizer.pad_token_id).sum(-1).float().mean().item())


def test_load_best_model_at_end_keeps_the_checkpoint_of_the_best_rouge2(distilled):
    checkpoints = distilled / "checkpoints"
    state = json.loads((checkpoints / f"checkpoint-{DISTILL_STEPS}" / "trainer_state.json").read_text())
    evaluations = _evaluations(state["log_history"])
    best = max(evaluations, key=lambda entry: entry["eval_rouge2"])  # the first of equal ones, as the Trainer keeps
    assert state["best_model_checkpoint"] == str(checkpoints / f"checkpoint-{best['step']}")
    assert state["best_metric"] == best["eval_rouge2"] and state["best_global_step"] == best["step"]
    final = load_file(distilled / "model.safetensors")
    kept = load_file(checkpoints / f"checkpoint-{best['step']}" / "model.safetensors")
    last = load_file(checkpoints / f"checkpoint-{DISTILL_STEPS}" / "model.safetensors")
    assert best["step"] != DISTILL_STEPS and any(not torch.equal(kept[name], last[name]) for name in kept)  # else nothing to pick
    assert final.keys() == kept.keys() and all(torch.equal(final[name], kept[name]) for name in kept)


def test_a_cached_teacher_run_generates_from_the_model_inputs_only(summary_teacher, summaries, tmp_path):
    """The cached teacher rows travel beside each validation example; generate must not be handed them."""
    data = ["--dataset_local_path", str(summaries), *SEQ2SEQ_FLAGS]
    student = ["--teacher", str(summary_teacher), "--num_encoder_layers", "1", "--num_decoder_layers", "1"]
    assert main(["make_student", *student, "--output_dir", str(tmp_path / "student")]) == 0
    cache = ["--teacher_cache", str(tmp_path / "cache"), "--eval_strategy", "steps"]  # caches the validation split too
    assert main(["cache_teacher", "--teacher", str(summary_teacher), *data, *cache, "--output_dir", str(tmp_path)]) == 0
    run = ["distill", "--student", str(tmp_path / "student"), *data, *cache, "--eval_steps", "2", "--max_steps", "2"]
    assert main([*run, "--predict_with_generate", "--save_strategy", "no", "--output_dir", str(tmp_path / "run")]) == 0
    (evaluation, *_) = _evaluations(json.loads((tmp_path / "run" / "training_metrics.json").read_text())["log_history"])
    assert {"eval_rouge2", "eval_gen_len", "eval_kd_loss"} <= set(evaluation)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rows = build_classification_corpus()
    return _write_splits(
        tmp_path_factory.mktemp("labelled"), {"train": rows[:48], "validation": rows[48:64], "test": rows[64:70]}
    )


def _saved_classifier(folder: Path, tiny, tokenizer_for) -> Path:
    tiny("bert", hidden=32, layers=2, heads=2).save_pretrained(folder)
    tokenizer_for("bert").save_pretrained(folder)
    return folder


def test_classification_logs_accuracy_and_macro_f1_and_keeps_the_best_accuracy(labelled, tiny, tokenizer_for, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = _saved_classifier(tmp_path / "teacher", tiny, tokenizer_for)
    output = tmp_path / "student"
    run = ["distill", "--teacher", str(teacher), "--num_encoder_layers", "1", "--dataset_local_path", str(labelled)]
    schedule = ["--max_steps", "6", "--learning_rate", "3e-3", "--max_source_length", "32", *every(3)]
    best = ["--load_best_model_at_end", "--metric_for_best_model", "accuracy"]
    assert main([*run, *schedule, *best, "--output_dir", str(output)]) == 0
    evaluations = _evaluations(json.loads((output / "training_metrics.json").read_text())["log_history"])
    assert [entry["step"] for entry in evaluations] == [3, 6, 6]
    assert all("eval_accuracy" in entry and "eval_f1" in entry for entry in evaluations)
    state = json.loads((output / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    best = max(evaluations[:2], key=lambda entry: entry["eval_accuracy"])
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}") and state["best_metric"] == best["eval_accuracy"]

    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(output).eval(), AutoTokenizer.from_pretrained(output)
    rows = [json.loads(line) for line in (labelled / "validation.jsonl").read_text().splitlines()]
    batch = tokenizer([row["text"] for row in rows], max_length=32, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    truth = [model.config.label2id[row["label"]] for row in rows]
    assert evaluations[-1]["eval_accuracy"] == pytest.approx(100 * accuracy_score(truth, predicted))
    assert evaluations[-1]["eval_f1"] == pytest.approx(100 * f1_score(truth, predicted, average="macro"))


def test_classification_is_scored_on_the_labelled_rows_only():
    from seq2seq_distill.metrics import classification_eval_metrics

    predictions, labels = [0, 1, 2, 2, 1, 0], [0, -100, 2, 1, 1, -100]
    scores = classification_eval_metrics(predictions, labels)
    kept = [index for index, label in enumerate(labels) if label >= 0]
    truth, predicted = [labels[i] for i in kept], [predictions[i] for i in kept]
    assert scores == pytest.approx(
        {"accuracy": 100 * accuracy_score(truth, predicted), "f1": 100 * f1_score(truth, predicted, average="macro")}
    )
    assert scores["accuracy"] != scores["f1"]  # macro, not micro (which equals accuracy)
    assert classification_eval_metrics([1, 0], [-100, -100]) == {}  # no right answer to score: losses only


def _python_trainer(task, tiny, tokenizer_for, tmp_path, **trainer_kwargs):
    """A trainer built in Python, with the user's own metric arguments, on eight validation rows."""
    from helpers import TRAINING_DEFAULTS, classification_dataset, collator_for, seq2seq_dataset

    from seq2seq_distill import (
        DistillationTrainer,
        Seq2SeqDistillationTrainer,
        Seq2SeqDistillationTrainingArguments,
    )

    model_type = "bert" if task == "classification" else "t5"
    tokenizer, dataset = tokenizer_for(model_type), classification_dataset if task == "classification" else seq2seq_dataset
    student, teacher = tiny(model_type, seed=0, hidden=32), tiny(model_type, seed=1, hidden=32)
    # hidden_weight: the students' hidden states are computed at evaluation too; they must not reach the metrics.
    generation = {"predict_with_generate": True, "generation_max_length": 8} if task == "seq2seq" else {}
    arguments = Seq2SeqDistillationTrainingArguments(
        output_dir=str(tmp_path), hidden_weight=1.0, **generation, **TRAINING_DEFAULTS
    )
    trainer_class = DistillationTrainer if task == "classification" else Seq2SeqDistillationTrainer
    return trainer_class(
        model=student,
        teacher_model=teacher,
        args=arguments,
        train_dataset=dataset(tokenizer, size=8),
        eval_dataset=dataset(tokenizer, size=8, offset=40),
        data_collator=collator_for(task, tokenizer, student),
        processing_class=tokenizer,
        **trainer_kwargs,
    )


@pytest.mark.parametrize("task", ["classification", "seq2seq"])
def test_a_users_compute_metrics_gets_what_the_trainer_gives_it(task, tiny, tokenizer_for, tmp_path):
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction)
        return {"rows": float(len(prediction.label_ids))}

    trainer = _python_trainer(task, tiny, tokenizer_for, tmp_path, compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert metrics["eval_rows"] == 8.0 and "eval_hidden_loss" in metrics
    (prediction,) = seen
    # Logits alone (no hidden states in a tuple), or the generated ids of the Seq2SeqTrainer.
    assert isinstance(prediction.predictions, np.ndarray) and prediction.predictions.shape[0] == 8
    if task == "classification":
        assert prediction.predictions.shape == (8, 5) and prediction.predictions.dtype == np.float32
    else:
        assert prediction.predictions.ndim == 2 and np.issubdtype(prediction.predictions.dtype, np.integer)


EXACT_METRIC = '''
import datasets
import evaluate


class Exact(evaluate.Metric):
    """Fraction of predictions equal to their reference."""

    def _info(self):
        features = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
        return evaluate.MetricInfo(description="exact match", citation="", inputs_description="", features=features)

    def _compute(self, predictions, references):
        return {"exact": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}
'''


def test_an_evaluate_metric_from_a_local_folder_plugs_in(tiny, tokenizer_for, tmp_path, monkeypatch):
    """``evaluate.load`` of a local folder, offline: the Hub is switched off and any connection attempt fails the test."""
    import socket

    evaluate = pytest.importorskip("evaluate", reason="evaluate is optional (pip install -e .[dev])")
    folder = tmp_path / "exact"
    folder.mkdir()
    (folder / "exact.py").write_text(EXACT_METRIC)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"evaluate.load reached for the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(str(folder))
    monkeypatch.undo()  # the trainer below needs no network either, but leave sockets as they were

    def compute_metrics(prediction):
        return metric.compute(predictions=prediction.predictions, references=prediction.label_ids)

    trainer = _python_trainer(
        "classification",
        tiny,
        tokenizer_for,
        tmp_path / "run",
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    exact = trainer.evaluate()["eval_exact"]
    features = trainer.data_collator(list(trainer.eval_dataset))
    with torch.no_grad():
        labels = features.pop("labels")
        predicted = trainer.model(**features).logits.argmax(-1)
    assert exact == pytest.approx(accuracy_score(labels.tolist(), predicted.tolist()))


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["train_teacher", "--model_type", "bert", "--metric_for_best_model", "rouge2"],
            "--metric_for_best_model rouge2 is not logged by a classification run, whose evaluation logs loss, accuracy, "
            "f1 and each loss term; choose one of those",
        ),
        (
            ["pipeline", "--model_type", "t5", "--metric_for_best_model", "eval_rougeL", "--eval_strategy", "steps"],
            "--metric_for_best_model eval_rougeL is scored on generated summaries, and this run evaluates without "
            "generating: add --predict_with_generate",
        ),
        (
            ["distill", "--model_type", "t5", "--metric_for_best_model", "accuracy", "--predict_with_generate"],
            "--metric_for_best_model accuracy is not logged by a seq2seq run, whose evaluation logs loss, rouge1, rouge2, "
            "rougeL, rougeLsum, gen_len",
        ),
        (
            ["train_teacher", "--model_type", "gpt2", "--metric_for_best_model", "rouge1", "--predict_with_generate"],
            "its generations are scored once, after training, with --predict_with_generate",
        ),
    ],
)
def test_a_metric_the_run_does_not_log_is_one_line_before_any_work(argv, message, tmp_path, capsys):
    assert main([*argv, "--output_dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error, error
    assert not (tmp_path / "run").exists()
