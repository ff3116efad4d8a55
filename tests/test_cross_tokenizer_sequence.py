"""Sequence-level distillation and benchmarking across tokenizers and families, from the command line: a T5 teacher
with a WordPiece tokenizer writes pseudo-labels as text, a BART student with a byte-level BPE tokenizer trains on
them with CE alone, and the benchmark compares the two, each generating and decoding with its own tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import load_from_disk
from rouge_score import rouge_scorer
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from seq2seq_distill.cli import main
from seq2seq_distill.stdlib_corpus import build_summarization_corpus
from seq2seq_distill.tiny import tiny_model, train_byte_level_bpe, train_tokenizer

ROWS = build_summarization_corpus()[:16]
SOURCE_LENGTH, TARGET_LENGTH, STUDENT_TARGET_LENGTH = 64, 12, 24
LATENCY = ["--latency_examples", "1", "--latency_min_timings", "1", "--latency_min_time", "0", "--warmup_batches", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Teacher and student folders, each with its own tokenizer; the teacher's greedy pseudo-labels of the train
    split; the student trained on them with CE only; the benchmark of both on that split (where the student has
    learnt enough to score above 0). Every step through ``cli.main``."""
    folder = tmp_path_factory.mktemp("sequence_kd")
    texts = [row["document"] + "\n" + row["summary"] for row in ROWS]
    teacher_tokenizer = train_tokenizer(texts, vocab_size=300, model_type="t5")
    student_tokenizer = train_byte_level_bpe(texts, vocab_size=400, model_type="bart")
    torch.manual_seed(0)
    # A wider initialization than T5's: a random tiny T5 writes the same words for every input, this one does not.
    teacher = tiny_model("t5", len(teacher_tokenizer), hidden=16, layers=2, heads=2, initializer_factor=5.0)
    student = tiny_model("bart", len(student_tokenizer), hidden=16, layers=1, heads=2)
    for name, model, tokenizer in (("teacher", teacher, teacher_tokenizer), ("student", student, student_tokenizer)):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"document": row["document"], "summary": row["summary"]}) + "\n" for row in ROWS))
    teacher_flag, labels = ["--teacher", str(folder / "teacher")], ["--dataset_local_path", str(folder / "labels")]
    lengths = ["--max_source_length", str(SOURCE_LENGTH), "--max_target_length", str(TARGET_LENGTH)]
    labelling = [*teacher_flag, "--dataset_local_path", str(data), *lengths, "--num_beams", "1"]
    assert main(["pseudo_label", *labelling, "--output_dir", str(folder / "labels")]) == 0
    # Sequence-level KD: CE alone on the teacher's text, read by the student's own tokenizer.
    student_flags = ["--student", str(folder / "student"), "--kd_weight", "0", "--ce_weight", "1"]
    training = ["--max_steps", "30", "--learning_rate", "3e-2", "--per_device_train_batch_size", "16", "--logging_steps", "1"]
    quiet = ["--save_strategy", "no", "--eval_strategy", "no", "--use_cpu", "--output_dir", str(folder / "out")]
    student_lengths = ["--max_source_length", str(SOURCE_LENGTH), "--max_target_length", str(STUDENT_TARGET_LENGTH)]
    assert main(["distill", *teacher_flag, *student_flags, *labels, *training, *student_lengths, *quiet]) == 0
    models = ["--models", str(folder / "teacher"), str(folder / "out"), "--model_names", "teacher", "student"]
    measuring = ["--benchmark_split", "train", "--num_beams", "1", "--benchmark_output_dir", str(folder / "bench")]
    assert main(["benchmark", *models, *labels, *lengths, *measuring, *LATENCY]) == 0
    return folder, teacher_tokenizer, student_tokenizer


def greedy(model, tokenizer, documents: list[str]) -> list[str]:
    """Each document on its own (no padding), greedy, decoded with the model's tokenizer: the independent check."""
    outputs = []
    with torch.no_grad():
        for document in documents:
            inputs = tokenizer(document, max_length=SOURCE_LENGTH, truncation=True, return_tensors="pt")
            generated = model.eval().generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=TARGET_LENGTH)
            outputs.append(tokenizer.decode(generated[0], skip_special_tokens=True))
    return outputs


def test_pseudo_labels_are_the_teachers_greedy_generations(run):
    folder, teacher_tokenizer, _ = run
    labels = {split: dataset.to_dict() for split, dataset in load_from_disk(str(folder / "labels")).items()}
    teacher = AutoModelForSeq2SeqLM.from_pretrained(folder / "teacher")
    train = labels["train"]
    assert train["summary"] == greedy(teacher, teacher_tokenizer, train["document"])
    assert train["summary"] != train["original_summary"] and "original_summary" not in labels["test"]  # train only
    assert all(text.strip() for text in train["summary"]), "empty pseudo-labels would make the check vacuous"
    assert len(set(train["summary"])) > len(train["summary"]) // 2, "a teacher writing one text for all would too"


def test_student_trains_on_the_pseudo_labels_with_its_own_tokenizer(run):
    """The first logged loss is the untrained student's CE on the pseudo-labels in its own tokens (one batch holds
    every row), not on the original summaries; the loss then falls, and the saved tokenizer is the student's."""
    folder, teacher_tokenizer, student_tokenizer = run
    record = json.loads((folder / "out" / "training_metrics.json").read_text())
    assert record["name"] == "baseline"  # CE alone: the CLI names the run for what it computes
    losses = [entry["loss"] for entry in record["log_history"] if "loss" in entry]
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.1

    train = load_from_disk(str(folder / "labels"))["train"].to_dict()
    assert len(train["document"]) <= 16  # one batch per step: the first loss covers every row
    student = AutoModelForSeq2SeqLM.from_pretrained(folder / "student").eval()

    def ce(targets: list[str]) -> float:
        inputs = student_tokenizer(
            train["document"], max_length=SOURCE_LENGTH, truncation=True, padding=True, return_tensors="pt"
        )
        labels = student_tokenizer(
            text_target=targets, max_length=STUDENT_TARGET_LENGTH, truncation=True, padding=True, return_tensors="pt"
        )["input_ids"]
        labels[labels == student_tokenizer.pad_token_id] = -100
        with torch.no_grad():
            return student(**inputs, labels=labels).loss.item()

    assert losses[0] == pytest.approx(ce(train["summary"]), rel=1e-4)
    assert abs(losses[0] - ce(train["original_summary"])) > 1e-2

    saved = AutoTokenizer.from_pretrained(folder / "out")
    assert saved.get_vocab() == student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab()
    assert type(AutoModelForSeq2SeqLM.from_pretrained(folder / "out")).__name__ == "BartForConditionalGeneration"


def test_benchmark_compares_text_across_tokenizers_and_marks_token_figures_undefined(run):
    folder, teacher_tokenizer, student_tokenizer = run
    summary = json.loads((folder / "bench" / "benchmark_results.json").read_text())
    assert summary["teacher_tokenizer"] == {"teacher": True, "student": False} and summary["speedup_per_token"] is False
    teacher, student = summary["models"]["teacher"]["quality"], summary["models"]["student"]["quality"]
    assert student["kl_to_teacher"] is None and student["top1_agreement"] is None  # strict JSON: null, not NaN
    assert "kl_to_teacher" not in teacher

    train = load_from_disk(str(folder / "labels"))["train"].to_dict()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for name, tokenizer in (("teacher", teacher_tokenizer), ("student", student_tokenizer)):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder / ("out" if name == "student" else name))
        predictions = greedy(model, tokenizer, train["document"])
        expected = 100 * sum(
            scorer.score(reference, prediction)["rougeL"].fmeasure
            for reference, prediction in zip(train["summary"], predictions, strict=True)
        )
        assert summary["models"][name]["quality"]["rougeL"] == pytest.approx(expected / len(predictions), abs=1e-6), name
    assert teacher["rougeL"] == pytest.approx(100.0)  # the references are its own greedy outputs
    assert 0 < student["rougeL"] < 100, "a student scoring 0 would make the comparison with rouge_score vacuous"

    table = (folder / "bench" / "comparison_table.csv").read_text().splitlines()
    columns, student_row = table[0].split(","), next(row for row in table if row.startswith("student,")).split(",")
    assert student_row[columns.index("kl_to_teacher")] == "n/a" and student_row[columns.index("top1_agreement")] == "n/a"
    report = (folder / "bench" / "benchmark_report.md").read_text()
    assert "Tokenizers other than the teacher's: student." in report and "p50 per example" in report


def test_causal_lm_benchmark_defines_token_figures_only_within_the_teachers_vocabulary(tmp_path):
    """GPT-2s: one student shares the teacher's WordPiece, one has a byte-level BPE. Perplexity, KL and top-1
    agreement per token are figures of the first only; the main metric is ROUGE-L on the decoded completions."""
    from test_cross_tokenizer import byte_level_bpe

    rows = ROWS[:12]
    texts = [row["document"] + "\n" + row["summary"] for row in rows]
    teacher_tokenizer, other_tokenizer = train_tokenizer(texts, vocab_size=300, model_type="gpt2"), byte_level_bpe(texts)
    torch.manual_seed(0)
    for name, tokenizer in (("teacher", teacher_tokenizer), ("same", teacher_tokenizer), ("other", other_tokenizer)):
        tiny_model("gpt2", len(tokenizer), hidden=16, layers=1, heads=2).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"document": row["document"], "summary": row["summary"]}) + "\n" for row in rows))
    models = [str(tmp_path / name) for name in ("teacher", "same", "other")]
    flags = ["--dataset_local_path", str(data), "--test_fraction", "0.34", "--max_source_length", "48"]
    argv = ["benchmark", "--models", *models, *flags, "--max_target_length", "8", "--benchmark_output_dir", str(tmp_path / "b")]
    assert main([*argv, *LATENCY]) == 0
    summary = json.loads((tmp_path / "b" / "benchmark_results.json").read_text())
    quality = {name: model["quality"] for name, model in summary["models"].items()}
    assert summary["main_metric"] == "rougeL" and summary["speedup_per_token"] is False
    assert quality["teacher"]["perplexity"] > 1 and quality["same"]["perplexity"] > 1
    assert quality["same"]["kl_to_teacher"] > 0 and 0 <= quality["same"]["top1_agreement"] <= 100
    assert quality["other"]["perplexity"] is None and quality["other"]["kl_to_teacher"] is None
    assert quality["other"]["top1_agreement"] is None and quality["other"]["rougeL"] is not None
