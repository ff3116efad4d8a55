"""Distillation diagnostics: each one against a computation written here, the warnings, the summary, resume."""

import copy
import logging

import pytest
import torch
from helpers import distillation_trainer, parameters_copy, seq2seq_dataset

from seq2seq_distill.arguments import DistillationSettings
from seq2seq_distill.chunked_kd import CachedTeacherRows, LiveTeacherRows, ce_kd_row_pass
from seq2seq_distill.diagnostics import TermWatch, diagnostics_summary, term_shares
from seq2seq_distill.errors import InputError
from seq2seq_distill.terms import register_term, unregister_term

ROWS, VOCAB, TOP_K = 12, 23, 5
LOGGER = "seq2seq_distill.diagnostics"


def batch_logits(seed: int = 0):
    """[1, 16, V] student and teacher logits, 12 of the 16 rows distilled; half of those rows share their argmax."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(1, 16, VOCAB, generator=generator) * 2
    teacher = torch.randn(1, 16, VOCAB, generator=generator) * 2
    teacher[0, ::2] = student[0, ::2] + 0.1 * torch.randn(8, VOCAB, generator=generator)  # close: same argmax mostly
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, torch.randperm(16, generator=generator)[:ROWS]] = True
    labels = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    return student, teacher, mask, labels


def row_pass(student, mask, labels, teacher_rows, *, divergence, temperature, diagnostics=True, chunk_elements=3 * VOCAB):
    """The trainer's CE / KD pass, in chunks of 3 rows (4 chunks), with the step's counts = this batch's rows."""
    student = student.clone().requires_grad_(True)
    loss, terms = ce_kd_row_pass(
        student,
        mask,
        labels,
        teacher_rows,
        ce_weight=0.5,
        kd_weight=0.5,
        ce_scale=torch.tensor(1.0 / ROWS),
        kd_scale=torch.tensor(1.0 / ROWS),
        divergence=divergence,
        temperature=temperature,
        beta=0.5,
        label_smoothing=0.0,
        shared_rows=None,
        chunk_elements=chunk_elements,
        diagnostics=diagnostics,
    )
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), terms, grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js"])  # closed form, then two autograd paths
def test_live_teacher_kl_and_agreement_match_a_direct_computation(divergence, temperature):
    student, teacher, mask, labels = batch_logits()
    _, terms, _ = row_pass(student, mask, labels, LiveTeacherRows(teacher), divergence=divergence, temperature=temperature)
    s, t = student[mask], teacher[mask]  # [12, V]
    p_teacher = torch.softmax(t / temperature, -1)
    kl = (p_teacher * (p_teacher.log() - torch.softmax(s / temperature, -1).log())).sum(-1).mean()
    agreement = (s.argmax(-1) == t.argmax(-1)).float().mean()
    assert 0 < agreement < 1  # neither trivial case: the comparison below can fail
    assert terms["teacher_kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms["argmax_agreement"].item() == pytest.approx(agreement.item(), abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "js"])
def test_cached_top_k_mass_kl_and_agreement_match_a_direct_computation(divergence):
    temperature = 2.0
    student, teacher, mask, labels = batch_logits(seed=1)
    s, t = student[mask], teacher[mask]
    top = torch.log_softmax(t / temperature, -1).topk(TOP_K, -1)
    _, terms, _ = row_pass(
        student, mask, labels, CachedTeacherRows(top.values, top.indices), divergence=divergence, temperature=temperature
    )
    p_teacher, p_student = torch.softmax(t / temperature, -1), torch.softmax(s / temperature, -1)
    teacher_top = p_teacher.gather(-1, top.indices)
    student_top = p_student.gather(-1, top.indices)
    # k + 1 outcomes: the k cached tokens and the rest of each distribution's mass
    teacher_buckets = torch.cat([teacher_top, 1 - teacher_top.sum(-1, keepdim=True)], -1)
    student_buckets = torch.cat([student_top, 1 - student_top.sum(-1, keepdim=True)], -1)
    kl = (teacher_buckets * (teacher_buckets.log() - student_buckets.log())).sum(-1).mean()
    mass = teacher_top.sum(-1).mean()
    agreement = (s.argmax(-1) == t.argmax(-1)).float().mean()
    assert 0.2 < mass < 0.95 and 0 < agreement < 1
    assert terms["teacher_topk_mass"].item() == pytest.approx(mass.item(), rel=1e-5)
    assert terms["teacher_kl_topk"].item() == pytest.approx(kl.item(), rel=1e-4)
    assert terms["argmax_agreement"].item() == pytest.approx(agreement.item(), abs=1e-6)
    assert "teacher_kl" not in terms


@pytest.mark.parametrize("cached", [False, True])
def test_diagnostics_change_neither_the_loss_nor_its_gradient(cached):
    student, teacher, mask, labels = batch_logits(seed=2)
    if cached:
        top = torch.log_softmax(teacher[mask] / 2.0, -1).topk(TOP_K, -1)
        rows = CachedTeacherRows(top.values, top.indices)
    else:
        rows = LiveTeacherRows(teacher)
    for divergence in ("forward_kl", "reverse_kl"):
        on = row_pass(student, mask, labels, rows, divergence=divergence, temperature=2.0)
        off = row_pass(student, mask, labels, rows, divergence=divergence, temperature=2.0, diagnostics=False)
        assert torch.equal(on[0], off[0]) and torch.equal(on[2], off[2]), divergence
        assert set(off[1]) == {"ce_loss", "kd_loss"} and set(on[1]) > set(off[1])
        assert all(torch.equal(on[1][name], off[1][name]) for name in off[1])


def test_term_shares_are_weighted_magnitudes_over_their_sum():
    shares = term_shares({"ce_loss": 0.5 * 4.0, "kd_loss": 0.25 * 2.0, "pg_loss": -0.5})
    assert shares == pytest.approx({"ce_loss": 2 / 3, "kd_loss": 1 / 6, "pg_loss": 1 / 6})
    assert term_shares({"ce_loss": 0.0}) == {}


# ---- the watch, without a Trainer -------------------------------------------------------------------------------

SETTINGS = {"kd_loss": "--kd_weight {}", "my_loss": "--term_weights my_loss={}"}
WEIGHTS = {"ce_loss": 0.5, "kd_loss": 0.5, "my_loss": 1.0}


def watch_steps(watch, steps):
    return [watch.add(values, WEIGHTS) for values in steps]


def test_a_zero_term_warns_once_when_the_window_is_full():
    watch = TermWatch(3, SETTINGS)
    steps = [{"ce_loss": 3.0 - 0.1 * i, "kd_loss": 0.4 + 0.01 * i, "my_loss": -3e-8 if i % 2 else 0.0} for i in range(6)]
    raised = watch_steps(watch, steps)
    assert raised[:2] == [[], []] and raised[3:] == [[], [], []]  # the 3rd step fills the window; once per run
    (message,) = raised[2]
    assert message.startswith("my_loss has been 0 (within 1e-06) for the last 3 optimizer steps")
    assert "is the teacher a copy of the student?" in message and "--term_weights my_loss=0" in message


def test_a_constant_term_warns_and_a_changing_one_does_not():
    watch = TermWatch(4, SETTINGS)
    steps = [{"ce_loss": 3.0 - 0.1 * i, "kd_loss": 0.4 + 0.01 * i, "my_loss": 0.25} for i in range(8)]
    raised = [message for messages in watch_steps(watch, steps) for message in messages]
    assert raised == [
        "my_loss has been 0.25 at each of the last 4 optimizer steps: a term that never changes gives the student no "
        "signal (does it read the student's outputs?); check the term and the teacher, or set --term_weights my_loss=0"
    ]


def test_a_negligible_term_names_its_weight_and_the_numbers():
    watch = TermWatch(2, SETTINGS)
    weights = {"ce_loss": 0.5, "kd_loss": 1e-4}
    assert watch.add({"ce_loss": 4.0, "kd_loss": 1.0}, weights) == []
    (message,) = watch.add({"ce_loss": 2.0, "kd_loss": 3.0}, weights)
    # weighted: kd 1e-4 * (1 + 3) / 2 = 2e-4, ce 0.5 * (4 + 2) / 2 = 1.5, 0.013%; 10% of CE takes 1e-4 * 0.15 / 2e-4
    assert message == (
        "kd_loss is negligible next to ce_loss: weighted, it averaged 0.0002 against ce_loss's 1.5 over the last 2 "
        "optimizer steps (0.013%, under 1%), so at weight 0.0001 it barely trains the student; raise it (--kd_weight "
        "0.075 would make it about 10% of ce_loss) or set --kd_weight 0"
    )
    exempt = TermWatch(2, SETTINGS, exempt=("kd_loss",))  # a scheduled weight: small by choice
    assert [exempt.add({"ce_loss": 4.0, "kd_loss": 1.0 + i}, weights) for i in range(3)] == [[], [], []]


def test_healthy_terms_and_a_zero_window_raise_nothing():
    steps = [{"ce_loss": 3.0 - 0.1 * i, "kd_loss": 0.4 + 0.01 * i, "my_loss": 0.2 * i} for i in range(10)]
    assert all(raised == [] for raised in watch_steps(TermWatch(3, SETTINGS), steps))
    zeros = [{"ce_loss": 1.0, "kd_loss": 0.0, "my_loss": 0.0}] * 5
    assert all(raised == [] for raised in watch_steps(TermWatch(0, SETTINGS), zeros))


def test_the_window_is_checked_like_every_setting():
    with pytest.raises(InputError, match="diagnostics_window must be an integer >= 0, got -1"):
        DistillationSettings(diagnostics_window=-1)


# ---- in the trainer ---------------------------------------------------------------------------------------------


@pytest.fixture
def models(tiny, tokenizer_for):
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=2, hidden=16, seed=0)
    student = tiny("t5", layers=2, hidden=16, seed=1)
    return tokenizer, teacher, student, seq2seq_dataset(tokenizer, size=16)


def train(models, output_dir, student=None, teacher=None, **settings):
    tokenizer, default_teacher, default_student, data = models
    trainer = distillation_trainer(
        "seq2seq",
        tokenizer,
        student if student is not None else copy.deepcopy(default_student),
        teacher if teacher is not None else default_teacher,
        output_dir,
        data,
        per_device_train_batch_size=4,
        **{"max_steps": 4, "diagnostics_window": 3, **settings},
    )
    trainer.train()
    return trainer


def test_logged_shares_and_the_summary_follow_the_logged_terms_and_leave_training_alone(models, tmp_path):
    on = train(models, tmp_path / "on")
    off = train(models, tmp_path / "off", diagnostics=False)
    steps = [entry for entry in on.state.log_history if "loss" in entry]
    assert len(steps) == 4
    for entry in steps:  # logging_steps=1: each entry holds one optimizer step
        weighted = 0.5 * entry["ce_loss"] + 0.5 * entry["kd_loss"]
        assert entry["kd_loss_share"] == pytest.approx(0.5 * entry["kd_loss"] / weighted, abs=1e-5)
        assert entry["ce_loss_share"] + entry["kd_loss_share"] == pytest.approx(1.0, abs=1e-5)
        assert 0 <= entry["argmax_agreement"] <= 1 and entry["teacher_kl"] > 0
    summary = diagnostics_summary(on)
    assert summary["optimizer_steps"] == 4 and summary["warnings"] == []
    for name in ("ce_loss", "kd_loss", "teacher_kl", "argmax_agreement"):
        assert summary["means"][name] == pytest.approx(sum(entry[name] for entry in steps) / 4, rel=1e-5, abs=2e-6), name
    # Not weighed into the loss: the same losses and weights as a run without diagnostics, and no extra keys there.
    off_steps = [entry for entry in off.state.log_history if "loss" in entry]
    assert [entry["loss"] for entry in off_steps] == [entry["loss"] for entry in steps]
    assert all(torch.equal(value, parameters_copy(off.model)[name]) for name, value in parameters_copy(on.model).items())
    assert not any("teacher_kl" in entry or "kd_loss_share" in entry for entry in off_steps)
    assert diagnostics_summary(off) is None
    evaluated = on.evaluate(eval_dataset=models[3])  # the row-pass diagnostics are logged in evaluation too
    assert evaluated["eval_teacher_kl"] > 0 and 0 <= evaluated["eval_argmax_agreement"] <= 1
    assert not any(name.endswith("_share") for name in evaluated)


def test_a_teacher_identical_to_the_student_warns_that_kd_is_zero_and_a_healthy_run_does_not(models, tmp_path, caplog):
    tokenizer, teacher, student, _ = models
    twin = copy.deepcopy(teacher)  # before the trainer freezes the teacher
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        train(models, tmp_path / "healthy")
    assert [record for record in caplog.records if record.name == LOGGER] == []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer = train(models, tmp_path / "twin", student=twin, teacher=teacher, learning_rate=0.0)  # stays a copy
    (record,) = [record for record in caplog.records if record.name == LOGGER]
    assert record.getMessage().startswith("kd_loss has been 0 (within 1e-06) for the last 3 optimizer steps")
    assert "is the teacher a copy of the student?" in record.getMessage() and "--kd_weight 0" in record.getMessage()
    assert diagnostics_summary(trainer)["warnings"] == [record.getMessage().split(" (--diagnostics_window")[0]]


@pytest.fixture
def zero_term():
    register_term("zero_loss", lambda step: torch.zeros(()))
    yield "zero_loss"
    unregister_term("zero_loss")


def test_a_registered_term_that_is_zero_and_a_negligible_kd_weight_warn(models, tmp_path, caplog, zero_term):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        train(models, tmp_path / "run", kd_weight=1e-4, term_weights={zero_term: 0.5})
    messages = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert len(messages) == 2, messages
    assert any(message.startswith("zero_loss has been 0") and "--term_weights zero_loss=0" in message for message in messages)
    (negligible,) = [message for message in messages if message.startswith("kd_loss is negligible next to ce_loss")]
    assert "at weight 0.0001 it barely trains the student" in negligible and "or set --kd_weight 0" in negligible


def test_a_resumed_run_sums_up_the_whole_run(models, tmp_path):
    whole = diagnostics_summary(train(models, tmp_path / "whole"))
    train(models, tmp_path / "parts", max_steps=2, save_strategy="steps", save_steps=2)
    tokenizer, teacher, student, data = models
    resumed = distillation_trainer(
        "seq2seq", tokenizer, copy.deepcopy(student), teacher, tmp_path / "parts", data, per_device_train_batch_size=4,
        max_steps=4, diagnostics_window=3, restore_callback_states_from_checkpoint=True,  # the callback rebuilt, too
    )  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "parts" / "checkpoint-2"))
    summary = diagnostics_summary(resumed)
    assert summary["optimizer_steps"] == 4
    assert summary["means"] == pytest.approx(whole["means"], rel=1e-5)
    assert summary["term_shares"] == pytest.approx(whole["term_shares"], rel=1e-5)
