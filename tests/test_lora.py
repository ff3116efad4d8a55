"""LoRA students (seq2seq_distill/lora.py): only the adapter trains and is saved, resume is exact, the benchmark
measures the merged student, and self-distillation reads the student's own base with the adapter off (one copy)."""

import copy
import json
import os

import pytest
import torch
from helpers import assert_resumes_exactly, collator_for, distillation_trainer, parameters_copy, seq2seq_dataset
from huggingface_hub import ModelCard
from safetensors import safe_open
from test_cli import TINY_TEACHER, scratch_teacher, user_data  # noqa: F401  (the CLI tests' tiny teacher and data)

from seq2seq_distill.cli import main
from seq2seq_distill.modeling import load_model

RANK = 4


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


@pytest.fixture
def teacher_and_base(tiny):
    """A tiny T5 teacher and a 1+1-layer student copied out of it (the LoRA student's base)."""
    from seq2seq_distill import create_student

    teacher = tiny("t5", layers=2, hidden=16, heads=2)
    return teacher, create_student(teacher, num_encoder_layers=1, num_decoder_layers=1)


def lora(base, randomize: bool = False):
    from seq2seq_distill.lora import lora_student

    student = lora_student(base, "seq2seq", r=RANK, alpha=8.0)
    if randomize:  # peft starts lora_B at 0 (adapted == base): a nonzero adapter makes the two models differ
        generator = torch.Generator().manual_seed(1)
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return student


def test_only_the_adapter_trains_and_is_saved_with_its_base(peft, teacher_and_base, tokenizer_for, tmp_path):
    from seq2seq_distill.lora import save_lora_base

    teacher, base = teacher_and_base
    original_base = copy.deepcopy(base).state_dict()
    student = lora(base)
    tokenizer = tokenizer_for("t5")
    trainable = {name for name, parameter in student.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    before = parameters_copy(student)
    trainer = distillation_trainer(
        "seq2seq", tokenizer, student, teacher, tmp_path / "run", seq2seq_dataset(tokenizer, 16), max_steps=2
    )
    trainer.train()
    after = parameters_copy(student)
    for name, value in before.items():
        if name in trainable:
            assert not torch.equal(after[name], value), f"{name} did not train"
        else:
            assert torch.equal(after[name], value), f"{name} changed"

    out = tmp_path / "out"
    assert save_lora_base(student, str(out)) == str(out / "base")
    trainer.save_model(str(out))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(out))
    assert not (out / "model.safetensors").exists()  # the whole student is not saved, only its adapter and its base
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        assert weights.keys() and all("lora_" in key for key in weights.keys())
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str((out / "base").resolve())
    saved_base = load_model(str(out / "base"), "seq2seq").state_dict()  # the base as it was before LoRA wrapped it
    assert saved_base.keys() == original_base.keys()
    for key, value in original_base.items():
        assert torch.equal(saved_base[key], value), key
    merged = load_model(str(out), "seq2seq").eval()  # an adapter folder loads as its base with the adapter merged
    assert type(merged).__name__ == "T5ForConditionalGeneration"
    batch = collator_for("seq2seq", tokenizer, merged)([seq2seq_dataset(tokenizer, 2)[i] for i in range(2)])
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, student(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("teacher_kind", ["teacher", "self"])
def test_a_lora_student_resumes_exactly(peft, teacher_and_base, tokenizer_for, tmp_path, teacher_kind):
    from seq2seq_distill.lora import SelfTeacher

    teacher, base = teacher_and_base
    tokenizer = tokenizer_for("t5")
    data = seq2seq_dataset(tokenizer, 16)

    def trainer_for(model, output_dir, max_steps):
        kind = SelfTeacher(model) if teacher_kind == "self" else teacher
        settings = dict(max_steps=max_steps, per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
        return distillation_trainer("seq2seq", tokenizer, model, kind, output_dir, data, **settings)

    assert_resumes_exactly(lora(base, randomize=True), trainer_for, tmp_path)
    with safe_open(tmp_path / "parts" / "checkpoint-2" / "adapter_model.safetensors", "pt") as weights:
        assert all("lora_" in key for key in weights.keys())  # checkpoints hold the adapter only


def _unique_numel(tensors) -> int:
    return sum(tensor.numel() for tensor in {tensor.data_ptr(): tensor for tensor in tensors}.values())


def test_self_distillation_holds_one_copy_and_its_first_kd_is_base_against_adapted(peft, tiny, tokenizer_for, tmp_path):
    from seq2seq_distill.lora import SelfTeacher

    tokenizer = tokenizer_for("t5")
    base = tiny("t5", layers=1, hidden=16, heads=2)
    independent_base = copy.deepcopy(base).eval()  # the base model, apart from the student
    student = lora(base, randomize=True)
    data = seq2seq_dataset(tokenizer, 8)
    batch = collator_for("seq2seq", tokenizer, student)([data[i] for i in range(len(data))])
    with torch.no_grad():  # KD at T = 2 between the base (teacher) and the adapted model, as the step sees them
        adapted_log_probs = torch.log_softmax(copy.deepcopy(student).merge_and_unload().eval()(**batch).logits / 2, -1)
        base_log_probs = torch.log_softmax(independent_base(**batch).logits / 2, -1)
    rows = batch["labels"] != -100
    expected = 4 * (base_log_probs.exp() * (base_log_probs - adapted_log_probs)).sum(-1)[rows].sum() / rows.sum()
    assert expected > 1e-2  # the adapter moves the distribution: a wrong teacher could not match by accident

    settings = dict(ce_weight=0.0, kd_weight=1.0, temperature=2.0, per_device_train_batch_size=len(data))
    trainer = distillation_trainer("seq2seq", tokenizer, student, SelfTeacher(student), tmp_path, data, **settings)
    student_numel = _unique_numel(student.parameters())
    assert _unique_numel([*student.parameters(), *trainer.teacher.parameters()]) == student_numel
    assert any(parameter.requires_grad for parameter in trainer.teacher.parameters())  # not frozen: they are the student's
    trainer.train()
    assert trainer.state.log_history[0]["kd_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert student.training  # the teacher's eval-mode forward gave the student its training mode back


@pytest.mark.parametrize(
    "argv,message",
    [
        (["distill", "--self_distill"], "--self_distill distills from the student's base with its adapter off"),
        (["distill", "--lora_r", "4", "--lora_dropout", "1"], "lora_dropout must be in [0, 1)"),
    ],
)
def test_bad_lora_flags_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error, error


def test_without_peft_a_lora_run_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # import peft now raises ImportError
    assert main(["distill", "--lora_r", "4"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install seq2seq_distill[lora]" in error, error


def test_a_lora_student_distills_and_benchmarks_from_the_command_line(peft, scratch_teacher, user_data, tmp_path):  # noqa: F811
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    data = ["--dataset_local_path", str(user_data / "mine.jsonl"), "--dataset_input_column", "story"]
    data += ["--dataset_target_column", "abstract"]
    flags = ["--teacher", str(scratch_teacher), *data, *TINY_TEACHER[6:], "--lora_r", str(RANK)]
    copied, own = tmp_path / "copied", tmp_path / "self"
    assert main(["distill", *flags, "--num_encoder_layers", "1", "--num_decoder_layers", "1", "--output_dir", str(copied)]) == 0
    assert main(["distill", *flags, "--self_distill", "--output_dir", str(own)]) == 0
    assert main(["distill", *flags, "--self_distill", "--student", str(copied), "--output_dir", str(tmp_path / "x")]) == 2

    # A layer-copied base is saved beside the adapter; the self-distilled adapter's base is the teacher's folder.
    assert (copied / "base" / "model.safetensors").exists() and not (copied / "model.safetensors").exists()
    assert not (own / "base").exists() and not (own / "model.safetensors").exists()
    recorded = json.loads((own / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(scratch_teacher.resolve())
    history = json.loads((own / "training_metrics.json").read_text())["log_history"]
    assert history[0]["kd_loss"] == pytest.approx(0.0, abs=1e-6)  # step 0: the adapter starts at zero, adapted == base
    assert history[-2]["kd_loss"] > 0  # then the adapter moves away from its base
    card = ModelCard.load(copied / "README.md")
    assert (
        card.data.library_name == "peft" and f"LoRA adapter: rank {RANK}" in card.text and "`base/` in this folder" in card.text
    )
    assert "self-distillation" in ModelCard.load(own / "README.md").text

    # The merged student made with peft alone, saved as a plain model: the benchmark must score the adapter folder alike.
    merged = tmp_path / "merged"
    base = AutoModelForSeq2SeqLM.from_pretrained(copied / "base")
    peft.PeftModel.from_pretrained(base, str(copied)).merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(copied).save_pretrained(merged)
    reports = tmp_path / "bench"
    models = ["--models", str(scratch_teacher), str(copied), str(merged)]
    speed = ["--latency_examples", "1", "--latency_min_timings", "1", "--latency_min_time", "0", "--warmup_batches", "0"]
    assert main(["benchmark", *models, *data, "--max_new_tokens", "6", *speed, "--benchmark_output_dir", str(reports)]) == 0
    results = json.loads((reports / "benchmark_results.json").read_text())["models"]
    assert results["copied"]["quality"] == pytest.approx(results["merged"]["quality"], abs=1e-9)
    assert results["copied"]["quality"]["kl_to_teacher"] > 0
    assert results["copied"]["cost"]["parameters"] == results["merged"]["cost"]["parameters"]
