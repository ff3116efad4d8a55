"""Transfer sets: rows marked KD-only are distilled and never enter CE; each term is divided by its own count."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import causal_dataset, collator_for, seq2seq_dataset
from test_trainer import full_and_accumulated_step

from seq2seq_distill import create_student
from seq2seq_distill.modeling import KD_ONLY_COLUMN

TRANSFER_ROWS = [1, 4, 5, 6]


def _marked(dataset):
    return dataset.add_column(KD_ONLY_COLUMN, [int(index in TRANSFER_ROWS) for index in range(len(dataset))])


def _expected_terms(model_type, student, teacher, tokenizer, dataset, temperature):
    """CE over the labelled rows' positions, KD over every row's, from the models' logits (float64)."""
    batch = collator_for("seq2seq" if model_type == "t5" else "causal_lm", tokenizer, student)([dict(row) for row in dataset])
    labels, kd_only = batch.pop("labels"), batch.pop(KD_ONLY_COLUMN)
    if model_type == "t5":
        batch["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=labels)
    with torch.no_grad():
        student_logits = student.eval()(**batch).logits.double()
        teacher_logits = teacher.eval()(**batch).logits.double()
    if model_type == "gpt2":  # position t predicts token t + 1
        student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    positions = labels != -100
    labelled = positions & (kd_only == 0).view(-1, 1)
    assert 0 < labelled.sum() < positions.sum()
    ce = torch.nn.functional.cross_entropy(student_logits[labelled], labels[labelled])
    log_s = torch.log_softmax(student_logits[positions] / temperature, -1)
    log_t = torch.log_softmax(teacher_logits[positions] / temperature, -1)
    kd = (log_t.exp() * (log_t - log_s)).sum(-1).mean() * temperature**2
    return ce.item(), kd.item()


@pytest.mark.parametrize("model_type", ["t5", "gpt2"])
def test_kd_only_rows_are_distilled_not_learned_from_and_accumulation_stays_exact(model_type, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=32)
    layers = dict(num_encoder_layers=2, num_decoder_layers=2) if model_type == "t5" else dict(num_layers=2)
    student = create_student(teacher, **layers)
    torch.manual_seed(1)
    with torch.no_grad():  # a student that differs from its teacher, so KD is far from 0
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    dataset = (seq2seq_dataset if model_type == "t5" else causal_dataset)(tokenizer, size=8)
    dataset = _marked(dataset)
    lengths = [len(ids) for ids in dataset["labels"]]
    assert len(set(lengths)) > 1, "rows of different lengths: padding must not count"
    expected_ce, expected_kd = _expected_terms(model_type, student, teacher, tokenizer, dataset, 2.0)
    settings = dict(ce_weight=0.5, kd_weight=0.5, temperature=2.0)
    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = full_and_accumulated_step(
        model_type, tokenizer, student, teacher, tmp_path, dataset, **settings
    )
    assert full_logs["ce_loss"] == pytest.approx(expected_ce, rel=1e-4)
    assert full_logs["kd_loss"] == pytest.approx(expected_kd, rel=1e-4)
    for name in ("loss", "ce_loss", "kd_loss"):
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_transfer_file_adds_kd_only_rows_that_the_teacher_labels(tmp_path):
    """Classification: transfer rows are -100 / KD-only; seq2seq: their targets are the teacher's greedy outputs."""
    from seq2seq_distill.arguments import DataArguments, ModelArguments, Seq2SeqDistillationTrainingArguments
    from seq2seq_distill.data import TRANSFER_SPLIT, prepare_data
    from seq2seq_distill.inference import teacher_outputs
    from seq2seq_distill.modeling import load_tokenizer
    from seq2seq_distill.stdlib_corpus import build_summarization_corpus
    from seq2seq_distill.tiny import tiny_model, train_tokenizer
    from seq2seq_distill.training import load_data
    from seq2seq_distill.transfer import training_rows

    corpus = build_summarization_corpus()
    labelled = _write_jsonl(tmp_path / "train.jsonl", corpus[:24])
    transfer = _write_jsonl(tmp_path / "unlabelled.jsonl", [{"body": row["document"]} for row in corpus[100:110]])
    data_args = DataArguments(
        dataset_local_path=labelled,
        transfer_dataset_local_path=transfer,
        transfer_input_column=["body"],
        transfer_size=6,
        max_source_length=32,
        max_target_length=8,
        test_fraction=0.25,
    )
    args = Seq2SeqDistillationTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], eval_strategy="no")
    _, task, raw, _ = load_data(ModelArguments(), data_args, args)
    assert len(raw[TRANSFER_SPLIT]) == 6 and raw[TRANSFER_SPLIT].column_names == ["document", "summary"]
    tokenizer = train_tokenizer([row["document"] for row in corpus[:24]], vocab_size=300, model_type="t5")
    tokenizer.save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    data = prepare_data(raw, tokenizer, task, data_args)
    teacher = tiny_model("t5", len(tokenizer), hidden=32, layers=2, heads=2)
    rows = training_rows(data, data.tokenized["train"], teacher, tokenizer, args)
    assert len(rows) == len(data.tokenized["train"]) + 6
    assert rows[KD_ONLY_COLUMN] == [0] * len(data.tokenized["train"]) + [1] * 6
    generated = teacher_outputs(teacher, tokenizer, data, TRANSFER_SPLIT, {"max_new_tokens": 8}, 4, torch.device("cpu"))
    assert data.raw[TRANSFER_SPLIT]["summary"] == generated  # the teacher's own targets
    expected = tokenizer(text_target=generated, max_length=8, truncation=True)["input_ids"]
    assert rows["labels"][-6:] == expected
    # A run without a teacher term (the baseline) trains on the labelled rows only.
    baseline = Seq2SeqDistillationTrainingArguments(output_dir=str(tmp_path / "b"), use_cpu=True, kd_weight=0.0)
    assert len(training_rows(data, data.tokenized["train"], teacher, tokenizer, baseline)) == len(data.tokenized["train"])


def test_classification_transfer_rows_have_no_label(tmp_path):
    from seq2seq_distill.arguments import DataArguments, ModelArguments
    from seq2seq_distill.data import TRANSFER_SPLIT
    from seq2seq_distill.training import load_data

    rows = [{"text": f"words {index} here", "label": ["a", "b"][index % 2]} for index in range(12)]
    labelled = _write_jsonl(tmp_path / "train.jsonl", rows)
    transfer = _write_jsonl(tmp_path / "more.jsonl", [{"text": f"more words {index}", "label": "z"} for index in range(5)])
    data_args = DataArguments(dataset_local_path=labelled, transfer_dataset_local_path=transfer, test_fraction=0.25)
    _, _, raw, _ = load_data(ModelArguments(model_type="bert", task="classification"), data_args)
    assert raw[TRANSFER_SPLIT]["label"] == [None] * 5  # its own labels are ignored


def test_bad_transfer_sources_are_one_line(tmp_path, capsys):
    from seq2seq_distill.cli import main

    rows = [{"text": f"words {index} here", "label": ["a", "b"][index % 2]} for index in range(12)]
    labelled = _write_jsonl(tmp_path / "train.jsonl", rows)
    transfer = _write_jsonl(tmp_path / "more.jsonl", [{"body": "text"}])
    numbers = _write_jsonl(tmp_path / "numbers.jsonl", [{"text": 5}])
    common = ["pipeline", "--model_type", "bert", "--task", "classification", "--dataset_local_path", labelled]
    cases = [
        (["--transfer_dataset_local_path", str(tmp_path / "nope.csv")], "--transfer_dataset_local_path"),
        (["--transfer_dataset_local_path", transfer], "column 'text' is missing from the transfer set"),
        (["--transfer_dataset_local_path", transfer, "--transfer_input_column", "body", "other"], "names 2 column(s)"),
        (["--transfer_dataset_local_path", numbers], "transfer column 'text' holds int64 values, not text"),
    ]
    for flags, expected in cases:
        assert main([*common, *flags, "--output_dir", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and expected in error, error
    cached = ["distill", "--teacher_cache", str(tmp_path), "--dataset_local_path", labelled, "--augment_copies", "2"]
    assert main([*cached, "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "teacher cache" in error, error


def test_augmented_copies_join_the_transfer_rows_and_leave_the_labelled_rows_alone(tmp_path):
    from seq2seq_distill.arguments import DataArguments, DistillationTrainingArguments, ModelArguments
    from seq2seq_distill.augmentation import augment_dataset
    from seq2seq_distill.data import TRANSFER_SPLIT, prepare_data
    from seq2seq_distill.tiny import tiny_model, train_tokenizer
    from seq2seq_distill.training import load_data
    from seq2seq_distill.transfer import training_rows

    words = "the cat sat on a mat while dogs ran far away into green fields".split()
    rows = [{"text": " ".join(words[index % 7 : index % 7 + 6]), "label": ["a", "b"][index % 2]} for index in range(16)]
    labelled = _write_jsonl(tmp_path / "train.jsonl", rows)
    data_args = DataArguments(dataset_local_path=labelled, test_fraction=0.25, augment_copies=3, augment_seed=7)
    _, task, raw, _ = load_data(ModelArguments(model_type="bert", task="classification"), data_args)
    assert TRANSFER_SPLIT not in raw
    tokenizer = train_tokenizer(words, vocab_size=100, model_type="bert")
    data = prepare_data(raw, tokenizer, task, data_args)
    labelled_rows = data.tokenized["train"]
    before = [dict(row) for row in labelled_rows]
    teacher = tiny_model("bert", len(tokenizer), hidden=32, layers=2, heads=2, num_labels=2)
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    trained_on = training_rows(data, labelled_rows, teacher, tokenizer, args)
    expected = augment_dataset(raw["train"], ["text"], data_args, tokenizer.mask_token)
    assert 0 < len(expected) <= 3 * len(labelled_rows)
    assert len(trained_on) == len(labelled_rows) + len(expected)
    assert [dict(row) for row in labelled_rows] == before  # the labelled rows are untouched
    head = trained_on.select(range(len(labelled_rows)))
    assert head["labels"] == [row["labels"] for row in before] and set(head[KD_ONLY_COLUMN]) == {0}
    tail = trained_on.select(range(len(labelled_rows), len(trained_on)))
    assert set(tail["labels"]) == {-100} and set(tail[KD_ONLY_COLUMN]) == {1}
    assert data.raw[TRANSFER_SPLIT]["text"] == expected["text"]


def _steps(folder) -> int:
    """Optimizer steps a saved run trained, from its own log (the Trainer's last log entry holds the final step)."""
    return json.loads((folder / "training_metrics.json").read_text())["log_history"][-1]["step"]


def test_matched_baseline_steps_train_the_baseline_as_long_as_the_distilled_run(tmp_path):
    from seq2seq_distill.cli import main

    words = "the cat sat on a mat while dogs ran far away into green fields".split()
    rows = [{"text": " ".join(words[i % 7 : i % 7 + 6]), "label": ["a", "b"][i % 2]} for i in range(32)]
    labelled = _write_jsonl(tmp_path / "train.jsonl", rows)
    transfer = _write_jsonl(tmp_path / "more.jsonl", [{"text": " ".join(words[i % 9 : i % 9 + 5])} for i in range(40)])
    argv = ["pipeline", "--model_type", "bert", "--task", "classification", "--dataset_local_path", labelled]
    argv += ["--transfer_dataset_local_path", transfer, "--test_fraction", "0.25", "--num_train_epochs", "1"]
    argv += ["--per_device_train_batch_size", "8", "--scratch_hidden_size", "32", "--scratch_num_layers", "2"]
    argv += ["--scratch_vocab_size", "100", "--num_encoder_layers", "1", "--latency_min_time", "0", "--save_strategy", "no"]
    steps = {}
    for mode in ("epochs", "matched"):
        assert main([*argv, "--baseline_steps", mode, "--output_dir", str(tmp_path / mode)]) == 0
        steps[mode] = {name: _steps(tmp_path / mode / name) for name in ("baseline", "distilled")}
    assert steps["epochs"]["baseline"] < steps["epochs"]["distilled"]  # 1 epoch of its labelled rows only
    assert steps["matched"]["baseline"] == steps["matched"]["distilled"] == steps["epochs"]["distilled"]
    assert main([*argv, "--baseline_steps", "longest", "--output_dir", str(tmp_path / "bad")]) == 2
