"""Classification across tokenizers and families: a BERT teacher with a WordPiece tokenizer distilled into a GPT-2
classifier with a byte-level BPE tokenizer of another size, both trained here; each reads its own tokenization."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from helpers import LABELS, TRAINING_DEFAULTS, assert_accumulation_is_exact
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from seq2seq_distill import DistillationTrainer, DistillationTrainingArguments
from seq2seq_distill.arguments import DataArguments
from seq2seq_distill.cli import main
from seq2seq_distill.data import TEACHER_COLUMNS, collator_for, prepare_data
from seq2seq_distill.errors import InputError
from seq2seq_distill.stdlib_corpus import build_classification_corpus
from seq2seq_distill.tiny import tiny_model, train_tokenizer

ROWS = build_classification_corpus()[:16]
TEXTS = [row["text"] for row in ROWS]
LABEL_NAMES = {"id2label": dict(enumerate(LABELS)), "label2id": {name: index for index, name in enumerate(LABELS)}}


def byte_level_bpe(texts: list[str], vocab_size: int = 330) -> PreTrainedTokenizerFast:
    """GPT-2's algorithm: byte-level BPE, no normalization, its own pad and end-of-text tokens (ids 0 and 1)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tokenizers():
    """(teacher's WordPiece, student's byte-level BPE): different algorithms and vocabulary sizes."""
    teacher_tokenizer = train_tokenizer(TEXTS, vocab_size=500, model_type="bert")
    student_tokenizer = byte_level_bpe(TEXTS)
    assert len(teacher_tokenizer) != len(student_tokenizer)
    assert teacher_tokenizer(TEXTS[0])["input_ids"] != student_tokenizer(TEXTS[0])["input_ids"]
    return teacher_tokenizer, student_tokenizer


def models_of(tokenizers, seed: int = 0):
    teacher_tokenizer, student_tokenizer = tokenizers
    torch.manual_seed(seed)
    teacher = tiny_model("bert", len(teacher_tokenizer), hidden=32, layers=2, heads=2, num_labels=len(LABELS))
    config = GPT2Config(
        vocab_size=len(student_tokenizer),
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=256,
        num_labels=len(LABELS),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        eos_token_id=student_tokenizer.eos_token_id,
        bos_token_id=student_tokenizer.eos_token_id,
    )
    config.pad_token_id = student_tokenizer.pad_token_id  # GPT-2 classifies at the last token before the padding
    student = GPT2ForSequenceClassification(config)
    for model in (teacher, student):
        for name, value in LABEL_NAMES.items():
            setattr(model.config, name, value)
    return teacher, student


def raw_splits(size: int = 16) -> DatasetDict:
    rows = ROWS[:size]
    return DatasetDict({"train": Dataset.from_list([{"text": row["text"], "label": row["label"]} for row in rows])})


def cross_data(tokenizers):
    teacher_tokenizer, student_tokenizer = tokenizers
    data_args = DataArguments(max_source_length=40)
    return prepare_data(raw_splits(), student_tokenizer, "classification", data_args, teacher_tokenizer=teacher_tokenizer)


def trainer_of(tokenizers, student, teacher, dataset, tmp_path, **settings):
    teacher_tokenizer, student_tokenizer = tokenizers
    arguments = DistillationTrainingArguments(output_dir=str(tmp_path), **{**TRAINING_DEFAULTS, **settings})
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=arguments,
        train_dataset=dataset,
        data_collator=collator_for("classification", student_tokenizer, teacher_tokenizer=teacher_tokenizer),
        processing_class=student_tokenizer,
    )


def test_data_carries_the_teacher_tokenization_of_the_same_text(tokenizers):
    teacher_tokenizer, student_tokenizer = tokenizers
    train = cross_data(tokenizers).tokenized["train"]
    assert train["input_ids"][0] == student_tokenizer(TEXTS[0], truncation=True, max_length=40)["input_ids"]
    assert train[TEACHER_COLUMNS["input_ids"]][0] == teacher_tokenizer(TEXTS[0], truncation=True, max_length=40)["input_ids"]
    same = prepare_data(raw_splits(), teacher_tokenizer, "classification", DataArguments(), teacher_tokenizer=teacher_tokenizer)
    assert TEACHER_COLUMNS["input_ids"] not in same.tokenized["train"].column_names  # one tokenizer: one tokenization


def test_collator_pads_each_tokenization_with_its_own_pad_token(tokenizers):
    teacher_tokenizer, student_tokenizer = tokenizers
    train = cross_data(tokenizers).tokenized["train"]
    collator = collator_for("classification", student_tokenizer, teacher_tokenizer=teacher_tokenizer)
    batch = collator([train[index] for index in range(4)])
    teacher_ids, teacher_mask = batch[TEACHER_COLUMNS["input_ids"]], batch[TEACHER_COLUMNS["attention_mask"]]
    assert teacher_ids.shape == teacher_mask.shape and batch["input_ids"].shape == batch["attention_mask"].shape
    assert teacher_ids.shape[1] == max(len(ids) for ids in train[TEACHER_COLUMNS["input_ids"]][:4])
    assert (teacher_ids[teacher_mask == 0] == teacher_tokenizer.pad_token_id).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == student_tokenizer.pad_token_id).all()


def test_kd_term_matches_each_model_on_its_own_unpadded_tokenization(tokenizers, tmp_path):
    """KD(T = 2) of a padded batch equals T^2 KL(teacher || student) from each model run on one row at a time."""
    teacher_tokenizer, student_tokenizer = tokenizers
    teacher, student = models_of(tokenizers)
    train = cross_data(tokenizers).tokenized["train"]
    trainer = trainer_of(tokenizers, student, teacher, train, tmp_path, ce_weight=0.0, kd_weight=1.0, temperature=2.0)
    rows = [train[index] for index in range(8)]
    assert len({len(row[TEACHER_COLUMNS["input_ids"]]) for row in rows}) > 1, "the batch must hold teacher padding"
    batch = trainer.data_collator(rows)
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
        expected = 0.0
        for row in rows:
            teacher_logits = teacher(input_ids=torch.tensor([row[TEACHER_COLUMNS["input_ids"]]])).logits[0]
            student_logits = student(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            teacher_probs = F.softmax(teacher_logits / 2.0, -1)
            expected += 4.0 * (teacher_probs * (teacher_probs.log() - F.log_softmax(student_logits / 2.0, -1))).sum()
    torch.testing.assert_close(loss, expected / len(rows), rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_equals_full_batch_with_two_tokenizations(tokenizers, tmp_path):
    teacher, student = models_of(tokenizers)
    train = cross_data(tokenizers).tokenized["train"].select(range(8))

    def trainer_for(batch_size, accumulation):
        return trainer_of(
            tokenizers,
            copy.deepcopy(student),
            teacher,
            train,
            tmp_path / str(batch_size),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )

    full_logs = assert_accumulation_is_exact(trainer_for, ("loss", "ce_loss", "kd_loss"))
    assert full_logs["kd_loss"] > 0


def test_feature_terms_across_tokenizers_are_one_error_naming_the_reason(tokenizers, tmp_path):
    teacher, student = models_of(tokenizers)
    train = cross_data(tokenizers).tokenized["train"]
    with pytest.raises(InputError, match=r"hidden_weight = 1.*different positions.*set it to 0"):
        trainer_of(tokenizers, student, teacher, train, tmp_path, hidden_weight=1.0)


def test_classifiers_naming_other_labels_are_an_error(tokenizers, tmp_path):
    teacher, student = models_of(tokenizers)
    student.config.id2label = dict(enumerate(reversed(LABELS)))
    student.config.label2id = {name: index for index, name in student.config.id2label.items()}
    with pytest.raises(InputError, match="labels .* are not the teacher's"):
        trainer_of(tokenizers, student, teacher, cross_data(tokenizers).tokenized["train"], tmp_path)


def test_augmentation_across_tokenizers_is_refused(tokenizers):
    teacher_tokenizer, student_tokenizer = tokenizers
    raw = DatasetDict({"train": Dataset.from_list([{"document": text, "summary": text[:20]} for text in TEXTS])})
    with pytest.raises(InputError, match="transfer set .or augmentation. is not supported yet when the student's tokenizer"):
        prepare_data(raw, student_tokenizer, "seq2seq", DataArguments(augment_copies=1), teacher_tokenizer=teacher_tokenizer)


@pytest.fixture
def saved_models(tokenizers, tmp_path):
    """A BERT teacher folder without its tokenizer (it is passed with --teacher_tokenizer), a GPT-2 student folder
    with its own, and jsonl data."""
    teacher_tokenizer, student_tokenizer = tokenizers
    teacher, student = models_of(tokenizers)
    teacher.save_pretrained(tmp_path / "teacher")
    teacher_tokenizer.save_pretrained(tmp_path / "teacher_tokenizer")
    student.save_pretrained(tmp_path / "student")
    student_tokenizer.save_pretrained(tmp_path / "student")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": row["text"], "label": row["label"]}) + "\n" for row in ROWS))
    return tmp_path


def common_flags(folder) -> list[str]:
    return [
        "--teacher",
        str(folder / "teacher"),
        "--teacher_tokenizer",
        str(folder / "teacher_tokenizer"),
        "--student",
        str(folder / "student"),
        "--dataset_local_path",
        str(folder / "data.jsonl"),
        "--max_source_length",
        "40",
        "--test_fraction",
        "0.25",
    ]


def test_cli_distills_and_benchmarks_across_families_and_tokenizers(saved_models, tokenizers):
    folder = saved_models
    training = [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
    ]
    assert main(["distill", *common_flags(folder), *training, "--use_cpu", "--output_dir", str(folder / "out")]) == 0
    history = json.loads((folder / "out" / "training_metrics.json").read_text())["log_history"]
    assert any(entry.get("kd_loss", 0) > 0 for entry in history)
    student = AutoModelForSequenceClassification.from_pretrained(folder / "out")
    tokenizer = AutoTokenizer.from_pretrained(folder / "out")
    assert type(student).__name__ == "GPT2ForSequenceClassification"
    assert tokenizer.get_vocab() == tokenizers[1].get_vocab()  # the student's own tokenizer, not the teacher's
    assert student(**tokenizer(TEXTS[0], return_tensors="pt")).logits.shape == (1, len(LABELS))
    tokenizers[0].save_pretrained(folder / "teacher")  # the benchmark reads each model's tokenizer from its folder
    benchmark = [
        "benchmark",
        "--models",
        str(folder / "teacher"),
        str(folder / "out"),
        "--model_names",
        "teacher",
        "distilled",
        "--dataset_local_path",
        str(folder / "data.jsonl"),
        "--test_fraction",
        "0.25",
        "--max_source_length",
        "40",
        "--benchmark_output_dir",
        str(folder / "bench"),
        "--latency_examples",
        "2",
        "--latency_min_timings",
        "2",
        "--latency_min_time",
        "0",
    ]
    assert main(benchmark) == 0
    summary = json.loads((folder / "bench" / "benchmark_results.json").read_text())
    quality = summary["models"]["distilled"]["quality"]
    assert quality["kl_to_teacher"] > 0 and "prediction_agreement" in quality


def test_bad_cross_tokenizer_input_is_one_line(saved_models, capsys):
    folder = saved_models
    (folder / "empty").mkdir()
    flags = common_flags(folder)
    cases = [
        (["--teacher_tokenizer", str(folder / "empty")], "--teacher_tokenizer", "has no readable tokenizer files"),
        (["--attention_weight", "0.5"], "attention_weight = 0.5", "set them to 0"),
    ]
    for extra, first, second in cases:
        argv = ["distill", *flags, *extra, "--max_steps", "1", "--use_cpu", "--output_dir", str(folder / "bad")]
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert first in lines[-1] and second in lines[-1], lines[-1]
