"""Schedules of weights and the temperature, and automatic balancing: formula, plan, logs, resume, refusals."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import term_plugins  # noqa: F401  (registers hidden_cosine_loss)
import torch
from helpers import classification_dataset, collator_for, distillation_trainer, parameters_copy
from transformers import TrainerCallback

from seq2seq_distill.arguments import DistillationSettings
from seq2seq_distill.errors import InputError
from seq2seq_distill.schedules import Schedule, SettingsAtStep, parse_schedules, value
from seq2seq_distill.terms import plan_terms, registered_terms, weight_of
from seq2seq_distill.trainer import check_plan


def test_schedule_values_follow_their_formula():
    linear, cosine = Schedule("linear", 0.1, 0.9, warmup=2), Schedule("cosine", 4.0, 1.0)
    # linear over 10 steps after 2 of warm-up: held at 0.1 through step 2, then 0.1 per step, 0.9 from step 10 on
    for step, expected in ((0, 0.1), (2, 0.1), (6, 0.5), (9, 0.8), (10, 0.9), (14, 0.9)):
        assert value(linear, step, 10) == pytest.approx(expected, abs=1e-12), step
    # cosine from 4 to 1 over 8 steps: 1 + 3 * (1 + cos(pi * s / 8)) / 2
    assert [value(cosine, s, 8) for s in (0, 4, 8)] == pytest.approx([4.0, 2.5, 1.0], abs=1e-12)
    assert value(cosine, 2, 8) == pytest.approx(1 + 1.5 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert value(Schedule("constant", 0.3, 0.3, warmup=5), 7, 10) == 0.3
    assert value(linear, 1, 2) == 0.1  # a run no longer than its warm-up stays at the start value
    assert parse_schedules("kd_weight=linear:0.1->0.9,warmup=2; temperature=cosine:4->1") == {
        "kd_weight": linear,
        "temperature": cosine,
    }


@pytest.mark.parametrize(
    "entry, message",
    [
        ("kd_weight", "names no setting; write it as name=kind:start->end"),
        ("kd=linear:0->1", "schedule for 'kd': not the temperature, a weight or a registered term; schedulable: temperature"),
        ("kd_weight=0.5", "has no kind; write it as name=kind:start->end"),
        ("kd_weight=step:0->1", "unknown kind 'step'; choose one of: constant, linear, cosine"),
        ("kd_weight=linear:0.5", "a linear schedule goes from a start to an end value, e.g. kd_weight=linear:0.1->0.9"),
        ("kd_weight=constant:0->1", "a constant has one value, e.g. kd_weight=constant:0.5"),
        ("kd_weight=linear:x->1", "values must be finite numbers"),
        ("kd_weight=linear:0->1,warm=3", "unknown option 'warm=3'; the only option is warmup=N"),
        ("kd_weight=linear:0->1,warmup=-1", "warmup must be a whole number of steps >= 0"),
        ("kd_weight=linear:-1->1", "a weight must stay >= 0"),
        ("temperature=linear:2->0", "a temperature must stay above 0"),
        ("kd_weight=linear:0->1;kd_weight=constant:1", "kd_weight has two schedules; give it one"),
    ],
)
def test_bad_schedule_text_is_one_line_naming_the_problem_and_the_fix(entry, message):
    with pytest.raises(InputError) as raised:
        DistillationSettings(schedules=[entry])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_balancing_is_one_clear_line():
    for settings, message in (
        (dict(balance_terms=["kd_loss=0"]), "must be term=ratio with a finite ratio > 0"),
        (dict(balance_terms=["ce_loss=1"]), "terms are balanced against ce_loss, choose from:"),
        (dict(balance_terms=["kd_loss=1"], kd_weight=0.0), "set --kd_weight > 0"),
        (dict(balance_terms=["kd_loss=1"], schedules=["kd_weight=linear:0->1"]), "drop one of them"),
        (dict(balance_terms=["kd_loss=1"], ce_weight=0.0), "against the CE term, which is off; set --ce_weight > 0"),
        (dict(balance_momentum=1.0), "balance_momentum must be in [0, 1)"),
    ):
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace(")", r"\)")):
            DistillationSettings(**settings)


def test_a_weight_rising_from_zero_puts_its_term_in_the_plan():
    rising = DistillationSettings(kd_weight=0.0, schedules=["hidden_weight=linear:0->1,warmup=5"])
    assert [term.name for term in plan_terms(rising).terms] == ["ce_loss", "hidden_loss"]
    assert plan_terms(rising).needs_hidden_states and plan_terms(rising).needs_teacher
    # Only a schedule that rises: nothing else is on, and that is a run with something to train.
    DistillationSettings(ce_weight=0.0, kd_weight=0.0, schedules=["kd_weight=linear:0->1"])
    # A schedule replaces the fixed value: kd_weight=0.5 under a schedule that stays at 0 is off.
    assert not plan_terms(DistillationSettings(kd_weight=0.5, schedules=["kd_weight=constant:0"])).kd


def test_a_registered_term_weight_follows_its_schedule():
    settings = DistillationSettings(schedules=["hidden_cosine_loss=linear:0->1"])
    assert plan_terms(settings).has("hidden_cosine_loss")  # on from the start, though its weight starts at 0
    at_step_5_of_10 = SettingsAtStep(settings, lambda: (5, 10), lambda: None)
    assert weight_of(registered_terms()["hidden_cosine_loss"], at_step_5_of_10) == 0.5
    assert at_step_5_of_10.kd_weight == 0.5 and at_step_5_of_10.temperature == 2.0  # the rest as given
    at_step_5_of_10.observe({})
    assert at_step_5_of_10.logged() == {"hidden_cosine_loss_weight": 0.5}  # not the term's own log name


def bert_pair(tiny):
    """A confident teacher (its head scaled up) and a student of its own initialization: KD far from 0, so the
    logged terms (6 decimals) carry enough digits for the checks below."""
    teacher = tiny("bert", layers=4, hidden=32)
    with torch.no_grad():
        teacher.classifier.weight.mul_(30.0)
    return teacher, tiny("bert", layers=2, hidden=32, seed=1)


class StudentBeforeEachStep(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.weights.append(copy.deepcopy(model.state_dict()))


def test_scheduled_values_are_logged_and_used_at_every_step(tiny, tokenizer_for, tmp_path):
    """Each step's logged kd_weight and temperature follow the formula, and its losses are computed with them: KD
    recomputed from the student as it was before that step, at the logged temperature, and loss = 0.5 CE + w KD."""
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    dataset = classification_dataset(tokenizer, size=8)  # one batch of all 8 rows per step
    trainer = distillation_trainer(
        "classification", tokenizer, student, teacher, tmp_path, dataset, max_steps=4,
        schedules=["kd_weight=linear:0->1", "temperature=cosine:4->1,warmup=1"],
    )  # fmt: skip
    before = StudentBeforeEachStep()
    trainer.add_callback(before)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    # step k trains with the values at optimizer step k - 1 of 4; cosine: p = (s - 1) / 3 after one warm-up step
    expected_temperatures = [4.0, 4.0, 1 + 1.5 * (1 + math.cos(math.pi / 3)), 1 + 1.5 * (1 + math.cos(2 * math.pi / 3))]
    assert [entry["kd_weight"] for entry in logs] == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=1e-6)
    assert [entry["temperature"] for entry in logs] == pytest.approx(expected_temperatures, abs=1e-6)
    assert "kd_loss" not in logs[0]  # weight 0 on the first step: the term costs nothing there

    batch = collator_for("classification", tokenizer)([dict(row) for row in dataset])
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        teacher_logits = teacher.eval()(**inputs).logits
    model = copy.deepcopy(student).eval()
    for entry, weights, temperature in zip(logs[1:], before.weights[1:], expected_temperatures[1:], strict=True):
        model.load_state_dict(weights)
        with torch.no_grad():
            logits = model(**inputs).logits
        soft_teacher = torch.softmax(teacher_logits / temperature, -1)
        kd = (soft_teacher * (soft_teacher.log() - torch.log_softmax(logits / temperature, -1))).sum(-1).mean()
        ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
        assert entry["kd_loss"] == pytest.approx(float(kd * temperature**2), rel=1e-4)
        assert entry["ce_loss"] == pytest.approx(float(ce), rel=1e-4)
        assert entry["loss"] == pytest.approx(0.5 * entry["ce_loss"] + entry["kd_weight"] * entry["kd_loss"], rel=1e-3)


def expected_balanced_weights(logs, first_weight, ratio, momentum):
    """The weight of each logged step from the logged term values alone (the formula of schedules.py)."""
    weights, ce_average, kd_average = [], None, None
    for entry in logs:
        weights.append(first_weight if ce_average is None else ratio * ce_average / kd_average)
        ce_average = entry["ce_loss"] if ce_average is None else momentum * ce_average + (1 - momentum) * entry["ce_loss"]
        kd_average = entry["kd_loss"] if kd_average is None else momentum * kd_average + (1 - momentum) * entry["kd_loss"]
    return weights


def test_balancing_follows_its_formula(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    trainer = distillation_trainer(
        "classification", tokenizer, student, teacher, tmp_path, classification_dataset(tokenizer, size=16),
        per_device_train_batch_size=4, max_steps=5, kd_weight=0.3, balance_terms=["kd_loss=2.0"], balance_momentum=0.5,
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    expected = expected_balanced_weights(logs, first_weight=0.3, ratio=2.0, momentum=0.5)
    assert len(logs) == 5 and len(set(expected)) == 5  # a weight that changes every step
    assert [entry["kd_weight"] for entry in logs] == pytest.approx(expected, rel=1e-4)
    for entry in logs:  # the weight logged is the weight the loss used
        assert entry["loss"] == pytest.approx(0.5 * entry["ce_loss"] + entry["kd_weight"] * entry["kd_loss"], rel=1e-3)


def test_a_resumed_run_has_the_same_scheduled_and_balanced_values_and_weights(tiny, tokenizer_for, tmp_path):
    """4 steps in one go vs. a 4-step run stopped after its checkpoint at step 2 and resumed from it: the same
    logged values at steps 3 and 4 and the same final weights (the schedules span max_steps, so the interrupted run
    must be the same 4-step run, not a 2-step one)."""
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    dataset = classification_dataset(tokenizer, size=16)
    settings = dict(
        schedules=["temperature=cosine:4->1", "ce_weight=linear:1->0.5"], balance_terms=["kd_loss=1.0"],
        per_device_train_batch_size=4, save_strategy="steps", save_steps=2,
    )  # fmt: skip

    def run(folder, resume=None, stop_at=None):
        model = copy.deepcopy(student)
        trainer = distillation_trainer(
            "classification", tokenizer, model, teacher, tmp_path / folder, dataset, max_steps=4, **settings
        )
        if stop_at:
            trainer.add_callback(StopAt(stop_at))
        trainer.train(resume_from_checkpoint=resume)
        logs = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
        return parameters_copy(model), logs

    uninterrupted, whole_logs = run("whole")
    run("parts", stop_at=2)
    saved = json.loads((tmp_path / "parts" / "checkpoint-2" / "trainer_state.json").read_text())
    assert set(saved["stateful_callbacks"]["TermBalance"]["attributes"]["magnitudes"]) == {"ce_loss", "kd_loss"}
    resumed, resumed_logs = run("parts", resume=str(tmp_path / "parts" / "checkpoint-2"))
    for step in (3, 4):
        for name in ("ce_weight", "temperature", "kd_weight", "kd_loss"):
            assert resumed_logs[step][name] == pytest.approx(whole_logs[step][name], rel=1e-6), (step, name)
    assert whole_logs[3]["kd_weight"] != whole_logs[1]["kd_weight"]  # balanced from the saved magnitudes, not reset
    for name, weights in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weights, rtol=0, atol=1e-6, msg=name)


class StopAt(TrainerCallback):
    """Ends training after step ``step`` (its checkpoint saved): an interruption of the same run."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_a_temperature_schedule_with_a_teacher_cache_is_refused(capsys, tmp_path):
    line = "a temperature schedule cannot be used with a teacher cache"
    with pytest.raises(InputError, match=line):
        DistillationSettings(teacher_cache=str(tmp_path), schedules=["temperature=cosine:4->1"])
    # From Python, a loaded cache handed to the trainer: refused by the plan check, before any step.
    settings = DistillationSettings(schedules=["temperature=cosine:2->1"])
    with pytest.raises(InputError, match=line):
        check_plan(plan_terms(settings), "classification", None, SimpleNamespace(temperature=2.0), settings, None)
    # From the command line: one line and exit code 2 at parse time, before data or models are loaded.
    from seq2seq_distill.cli import main

    argv = ["distill", "--teacher_cache", str(tmp_path), "--student", str(tmp_path), "--schedules", "temperature=cosine:4->1"]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and line in error, error


def test_schedules_and_balancing_from_a_config_file(tmp_path):
    import yaml

    from seq2seq_distill.arguments import Seq2SeqDistillationTrainingArguments
    from seq2seq_distill.cli import COMMANDS, parse_command

    example = parse_command(
        COMMANDS["pipeline"], ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "schedules_example.yaml")]
    )
    arguments = example[Seq2SeqDistillationTrainingArguments]
    assert arguments.schedules == ["kd_weight=linear:0.0->0.9,warmup=100", "temperature=cosine:4.0->1.0"]
    assert arguments.balance_terms == ["hidden_loss=0.25"] and plan_terms(arguments).kd and plan_terms(arguments).hidden
    as_list = tmp_path / "list.yaml"
    as_list.write_text(yaml.safe_dump({"schedules": ["kd_weight=linear:0->0.9,warmup=100;temperature=cosine:4->1"]}))
    parsed = parse_command(COMMANDS["distill"], ["--config", str(as_list)])[Seq2SeqDistillationTrainingArguments]
    assert parsed.schedules == arguments.schedules
    flags = [
        "--schedules",
        "kd_weight=linear:0->0.9,warmup=100",
        "temperature=cosine:4->1",
        "--balance_terms",
        "hidden_loss=0.25",
    ]
    parsed = parse_command(COMMANDS["distill"], [*flags, "--hidden_weight", "0.1"])[Seq2SeqDistillationTrainingArguments]
    assert parsed.schedules == arguments.schedules and parsed.balance_terms == arguments.balance_terms
