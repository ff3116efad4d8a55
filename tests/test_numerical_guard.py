"""The numerical guard: a NaN in one term at step k stops the run at step k, names the term, keeps a clean checkpoint."""

import copy
import json

import pytest
import torch
from helpers import TINY_RUN_FLAGS, distillation_trainer, seq2seq_dataset

from seq2seq_distill import create_student
from seq2seq_distill.cli import main
from seq2seq_distill.errors import NonFiniteLossError
from seq2seq_distill.losses import DIVERGENCES, forward_kl, register_divergence

NAN_AT_CALL = {"call": None, "calls": 0}
NAME = "forward_kl_nan_at_call_for_test"
if NAME not in DIVERGENCES:

    @register_divergence(NAME)
    def forward_kl_nan_at_call(student_log_probs, teacher_log_probs, beta=0.5):
        """Forward KL, except on the chosen call (= the chosen step with one batch per step and no evaluation)."""
        NAN_AT_CALL["calls"] += 1
        values = forward_kl(student_log_probs, teacher_log_probs)
        return values * float("nan") if NAN_AT_CALL["calls"] == NAN_AT_CALL["call"] else values


@pytest.fixture
def models(tiny):
    teacher = tiny("t5", layers=4, hidden=32)
    return teacher, create_student(teacher, num_encoder_layers=2, num_decoder_layers=2)


def run(models, tokenizer, tmp_path, nan_at_step, max_steps=5, **settings):
    NAN_AT_CALL.update(call=nan_at_step, calls=0)
    teacher, student = models
    student = copy.deepcopy(student)
    trainer = distillation_trainer(
        "seq2seq",
        tokenizer,
        student,
        teacher,
        tmp_path,
        seq2seq_dataset(tokenizer, size=20),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        divergence=NAME,
        hidden_weight=1.0,
        **settings,
    )
    return trainer, student


def test_nan_in_one_term_stops_at_that_step_with_the_term_named_and_a_clean_checkpoint(models, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    trainer, student = run(models, tokenizer, tmp_path / "nan", nan_at_step=3)
    with pytest.raises(NonFiniteLossError, match=r"kd_loss = nan at step 3 .*checkpoint-2 holds the state from before it"):
        trainer.train()
    assert trainer.state.global_step == 2
    checkpoint = tmp_path / "nan" / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    clean, clean_student = run(models, tokenizer, tmp_path / "clean", nan_at_step=None, max_steps=2)
    clean.train()
    for name, value in clean_student.state_dict().items():
        assert torch.isfinite(student.state_dict()[name]).all(), name
        torch.testing.assert_close(student.state_dict()[name], value, rtol=0, atol=0, msg=name)  # step 3 never applied


def test_skip_nonfinite_batches_goes_on_without_that_batch(models, tokenizer_for, tmp_path):
    trainer, student = run(models, tokenizer_for("t5"), tmp_path, nan_at_step=3, skip_nonfinite_batches=True)
    trainer.train()
    assert trainer.state.global_step == 5
    logged = trainer.state.log_history
    assert logged[2]["skipped_batches"] == 1.0 and "kd_loss" not in logged[2] and "hidden_loss" in logged[2]
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert all("skipped_batches" not in entry for entry in logged[:2] + logged[3:5])


def test_the_command_line_stops_with_exit_status_3(tmp_path, capsys):
    tiny = [*TINY_RUN_FLAGS, "--per_device_train_batch_size", "4"]
    assert main(["train_teacher", *tiny, "--max_steps", "2", "--output_dir", str(tmp_path / "teacher")]) == 0
    NAN_AT_CALL.update(call=2, calls=0)
    status = main(
        [
            "distill",
            "--teacher",
            str(tmp_path / "teacher"),
            "--num_encoder_layers",
            "1",
            "--num_decoder_layers",
            "1",
            "--divergence",
            NAME,
            "--max_steps",
            "4",
            *tiny,
            "--output_dir",
            str(tmp_path / "distilled"),
        ]
    )
    assert status == 3
    error = next(line for line in capsys.readouterr().err.splitlines() if "stopped:" in line)
    assert "stopped: kd_loss = nan at step 2" in error and "--resume_from_checkpoint latest" in error
    assert (tmp_path / "distilled" / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    assert not (tmp_path / "distilled" / "model.safetensors").exists()  # no final model that looks finished
