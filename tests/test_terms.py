"""The one table of terms: what is derived from it, and a term of one's own added through register_term alone."""

import pytest
import term_plugins
import torch
from helpers import assert_resumes_exactly, classification_dataset, distillation_trainer, parameters_copy

from seq2seq_distill import create_student
from seq2seq_distill.arguments import WEIGHT_NAMES, DistillationSettings
from seq2seq_distill.errors import InputError
from seq2seq_distill.terms import BUILT_IN_TERMS, ce_only_settings, plan_terms


def test_weights_plans_and_ce_only_settings_come_from_the_table():
    assert WEIGHT_NAMES == tuple(t.weight for t in BUILT_IN_TERMS if t.group != "policy" or t.name == "pg_loss")
    off = ce_only_settings()
    assert off["ce_weight"] == 1.0 and off["term_weights"] is None and off["on_policy_fraction"] == 0.0
    assert {name for name, value in off.items() if value == 0.0} >= {t.weight for t in BUILT_IN_TERMS} - {"ce_weight"}
    plan = plan_terms(DistillationSettings(kd_weight=0.5, hidden_weight=1.0, term_weights=["hidden_cosine_loss=0.25"]))
    assert [t.name for t in plan.terms] == ["ce_loss", "kd_loss", "hidden_loss", "hidden_cosine_loss"]
    assert plan.needs_teacher and plan.needs_hidden_states and not plan.needs_attentions and not plan.only_ce
    assert plan_terms(DistillationSettings(**{**ce_only_settings(), "term_weights": None})).only_ce


def test_term_weights_name_only_registered_terms():
    with pytest.raises(InputError, match="term_weights names nope, but no such term is registered .*hidden_cosine_loss"):
        DistillationSettings(term_weights=["nope=1"])
    with pytest.raises(InputError, match="term_weights entry hidden_cosine_loss='x' must be name=weight"):
        DistillationSettings(term_weights=["hidden_cosine_loss=x"])
    assert DistillationSettings(term_weights={"hidden_cosine_loss": 2}).extra_term_weights == {"hidden_cosine_loss": 2.0}
    with pytest.raises(InputError, match="--term_modules 'no_such_module_here' cannot be imported"):
        DistillationSettings(term_modules=["no_such_module_here"])


def bert_pair(tiny):
    teacher = tiny("bert", layers=4, hidden=32)
    return teacher, create_student(teacher, num_encoder_layers=2)


def test_a_registered_term_trains_is_logged_and_matches_an_independent_computation(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    dataset = classification_dataset(tokenizer, size=8)
    batch = {k: v for k, v in __import__("helpers").collator_for("classification", tokenizer)([dict(r) for r in dataset]).items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student.eval()(**inputs, output_hidden_states=True).hidden_states[-1]
        t = teacher.eval()(**inputs, output_hidden_states=True).hidden_states[-1]
    mask = inputs["attention_mask"].bool()
    expected = (1 - torch.nn.functional.cosine_similarity(s[mask], t[mask], dim=-1)).mean().item()
    before = parameters_copy(student)
    trainer = distillation_trainer(
        "classification", tokenizer, student, teacher, tmp_path, dataset, ce_weight=0.0, kd_weight=0.0,
        term_weights=["hidden_cosine_loss=1.0"], max_steps=2,
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "hidden_cosine_loss" in entry]
    assert len(logs) == 2 and logs[0]["hidden_cosine_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert logs[0]["loss"] == pytest.approx(logs[0]["hidden_cosine_loss"], rel=1e-4, abs=1e-6)  # the only term: loss = 1 x term
    assert any(not torch.equal(before[name], value) for name, value in parameters_copy(student).items())


def test_a_registered_term_at_weight_0_is_never_computed(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    term_plugins.CALLS.clear()
    requested = []
    student.register_forward_pre_hook(lambda m, a, k: requested.append(k.get("output_hidden_states")), with_kwargs=True)
    trainer = distillation_trainer(
        "classification", tokenizer, student, teacher, tmp_path, classification_dataset(tokenizer, size=8),
        term_weights=["hidden_cosine_loss=0"],
    )  # fmt: skip
    trainer.train()
    assert term_plugins.CALLS == [] and requested and not any(requested)  # no call, no hidden states asked for
    assert all("hidden_cosine_loss" not in entry for entry in trainer.state.log_history)


def test_a_run_with_a_registered_term_resumes_exactly(tiny, tokenizer_for, tmp_path):
    """4 steps in one go vs. 2 steps, a checkpoint, and 2 more from it: the same weights."""
    tokenizer = tokenizer_for("bert")
    teacher, student = bert_pair(tiny)
    dataset = classification_dataset(tokenizer, size=16)
    settings = dict(term_weights=["hidden_cosine_loss=0.5"], per_device_train_batch_size=4, save_strategy="steps", save_steps=2)

    def trainer_for(model, output_dir, max_steps):
        return distillation_trainer(
            "classification", tokenizer, model, teacher, output_dir, dataset, max_steps=max_steps, **settings
        )

    assert_resumes_exactly(student, trainer_for, tmp_path)


def test_term_weights_from_a_config_mapping_or_list(tmp_path):
    import yaml

    from seq2seq_distill.arguments import Seq2SeqDistillationTrainingArguments
    from seq2seq_distill.cli import COMMANDS, parse_command

    for value in ({"hidden_cosine_loss": 0.5}, ["hidden_cosine_loss=0.5"]):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"term_weights": value}))
        parsed = parse_command(COMMANDS["distill"], ["--config", str(path)])
        assert parsed[Seq2SeqDistillationTrainingArguments].extra_term_weights == {"hidden_cosine_loss": 0.5}


def test_only_terms_that_read_the_batch_run_the_teacher_on_it():
    """Policy-gradient distillation scores its own samples with the teacher: no teacher forward on the batch."""
    pg_only = plan_terms(DistillationSettings(ce_weight=0.5, kd_weight=0.0, policy_gradient_weight=1.0))
    assert pg_only.needs_teacher and not pg_only.needs("teacher_outputs")
    with_kd = plan_terms(DistillationSettings(kd_weight=0.5))
    assert with_kd.needs("teacher_outputs")
    registered = plan_terms(DistillationSettings(kd_weight=0.0, term_weights=["hidden_cosine_loss=1"]))
    assert registered.needs("teacher_outputs") and registered.needs_hidden_states
