"""The distillation trainers on tiny models: real steps, exact accumulation, masking, zero-cost terms, errors."""

import copy

import pytest
import torch
from helpers import (
    GradientRecorder,
    causal_dataset,
    classification_dataset,
    collator_for,
    distillation_trainer,
    parameters_copy,
    seq2seq_dataset,
)
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from seq2seq_distill import (
    DistillationTrainer,
    Seq2SeqDistillationTrainingArguments,
    create_student,
)
from seq2seq_distill.modeling import resolve_teacher_dtype
from seq2seq_distill.trainer import PROJECTIONS_ATTR

TASK = {"t5": "seq2seq", "bart": "seq2seq", "bert": "classification", "gpt2": "causal_lm"}
DATASET = {"seq2seq": seq2seq_dataset, "classification": classification_dataset, "causal_lm": causal_dataset}
STUDENT_LAYERS = {
    "t5": dict(num_encoder_layers=2, num_decoder_layers=2),
    "bart": dict(num_encoder_layers=2, num_decoder_layers=2),
    "bert": dict(num_encoder_layers=2),
    "gpt2": dict(num_layers=2),
}
ALL_TERMS = dict(ce_weight=0.5, kd_weight=0.5, hidden_weight=1.0, attention_weight=1.0, norm_weight=0.5)


def make_trainer(model_type, tokenizer, student, teacher, tmp_path, dataset=None, **settings):
    task = TASK[model_type]
    train = dataset if dataset is not None else DATASET[task](tokenizer, size=8)
    return distillation_trainer(
        task,
        tokenizer,
        student,
        teacher,
        tmp_path,
        train,
        max_grad_norm=0.0,
        eval_dataset=DATASET[task](tokenizer, size=8, offset=100),
        **settings,
    )


@pytest.mark.parametrize("model_type", ["t5", "bart", "bert", "gpt2"])
def test_training_steps_reduce_loss_keep_teacher_frozen_and_train_projections(model_type, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=32)
    student = create_student(teacher, hidden_dim=16, **STUDENT_LAYERS[model_type])  # projections needed: 16 -> 32
    teacher_before = parameters_copy(teacher)
    recorder = GradientRecorder()
    trainer = make_trainer(model_type, tokenizer, student, teacher, tmp_path, max_steps=12, learning_rate=3e-3, **ALL_TERMS)
    trainer.add_callback(recorder)
    projections_before = parameters_copy(getattr(student, PROJECTIONS_ATTR))
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and losses[-1] < 0.9 * losses[0], losses
    for name in ("ce_loss", "kd_loss", "hidden_loss", "attention_loss", "norm_loss"):
        assert name in trainer.state.log_history[0], trainer.state.log_history[0]
    for name, before in teacher_before.items():
        torch.testing.assert_close(dict(teacher.named_parameters())[name], before, rtol=0, atol=0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    projection_grads = [g for name, g in recorder.gradients[0].items() if name.startswith(PROJECTIONS_ATTR)]
    assert projection_grads and all(g.abs().sum() > 0 for g in projection_grads)
    moved = [not torch.equal(p, projections_before[n]) for n, p in getattr(student, PROJECTIONS_ATTR).named_parameters()]
    assert all(moved)


def full_and_accumulated_step(model_type, tokenizer, student, teacher, tmp_path, dataset, **settings):
    """(first logs, first gradients) of one step on batch 8, then of 4 accumulated micro-batches of 2."""
    results = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        recorder = GradientRecorder()
        trainer = make_trainer(
            model_type,
            tokenizer,
            copy.deepcopy(student),
            teacher,
            tmp_path / str(batch_size),
            dataset=dataset,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            **settings,
        )
        trainer.add_callback(recorder)
        trainer.train()
        results.append((trainer.state.log_history[0], recorder.gradients[0]))
    return results


@pytest.mark.parametrize("model_type", ["t5", "bert", "gpt2"])
def test_gradient_accumulation_equals_full_batch(model_type, tiny, tokenizer_for, tmp_path):
    """Batch 8 vs. 4 accumulated micro-batches of 2 (each padded to its own length): same loss and gradients."""
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=32)
    student = create_student(teacher, hidden_dim=16, **STUDENT_LAYERS[model_type])
    dataset = DATASET[TASK[model_type]](tokenizer, size=8)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    assert len(set(lengths)) > 1, "the micro-batches must differ in padding for this test to mean anything"
    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = full_and_accumulated_step(
        model_type, tokenizer, student, teacher, tmp_path, dataset, **ALL_TERMS
    )
    for name in ("loss", "ce_loss", "kd_loss", "hidden_loss", "attention_loss", "norm_loss"):
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    assert full_grads.keys() == accumulated_grads.keys()
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


class ForwardSpy:
    """Records the keyword arguments of every forward call of a module."""

    def __init__(self, module):
        self.calls = []
        module.register_forward_pre_hook(
            lambda mod, args, kwargs: self.calls.append(set(k for k, v in kwargs.items() if v is True)), with_kwargs=True
        )


@pytest.mark.parametrize(
    "weights,teacher_called,requested",
    [
        (dict(ce_weight=1.0, kd_weight=0.0), False, set()),
        (dict(ce_weight=0.5, kd_weight=0.5), True, set()),
        (dict(ce_weight=0.5, kd_weight=0.5, hidden_weight=1.0), True, {"output_hidden_states"}),
        (dict(ce_weight=0.0, kd_weight=0.0, norm_weight=1.0), True, {"output_hidden_states"}),
        (dict(ce_weight=0.5, kd_weight=0.0, attention_weight=1.0), True, {"output_attentions"}),
    ],
)
def test_zero_weight_terms_cost_nothing(weights, teacher_called, requested, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=4)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2)
    student_spy, teacher_spy = ForwardSpy(student), ForwardSpy(teacher)
    trainer = make_trainer("t5", tokenizer, student, teacher, tmp_path, **weights)
    trainer.train()
    assert student_spy.calls and all(call == requested for call in student_spy.calls)
    assert bool(teacher_spy.calls) is teacher_called
    assert all(call == requested for call in teacher_spy.calls)
    logged = {k for k in trainer.state.log_history[0] if k.endswith("_loss")}
    expected = {name.replace("_weight", "_loss") for name, value in weights.items() if value > 0}
    assert logged == expected


def test_padding_changes_nothing(tiny, tokenizer_for, tmp_path):
    """Extra padding columns (source and target) leave every term unchanged; a change at a real position does not."""
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=4, hidden=32)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2, hidden_dim=16)
    trainer = make_trainer("t5", tokenizer, student, teacher, tmp_path, **ALL_TERMS)
    batch = trainer.data_collator([seq2seq_dataset(tokenizer, size=3)[i] for i in range(3)])
    padded = dict(batch)
    padded["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, 5), value=tokenizer.pad_token_id)
    padded["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, 5), value=0)
    padded["labels"] = torch.nn.functional.pad(batch["labels"], (0, 4), value=-100)
    padded.pop("decoder_input_ids", None)
    batch.pop("decoder_input_ids", None)
    student.eval()

    def terms(inputs):
        trainer._term_sums["eval"].clear()
        with torch.no_grad():
            loss = trainer.compute_loss(student, inputs)
        return loss.item(), {k: float(v) for k, v in trainer._term_sums["eval"].items()}

    base_loss, base_terms = terms(batch)
    padded_loss, padded_terms = terms(padded)
    assert padded_loss == pytest.approx(base_loss, rel=1e-5)
    for name, value in base_terms.items():
        assert padded_terms[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    changed = dict(batch)
    changed["labels"] = batch["labels"].clone()
    changed["labels"][0, 0] = (changed["labels"][0, 0] + 1) % len(tokenizer)
    assert terms(changed)[0] != pytest.approx(base_loss, rel=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])  # closed-form and autograd paths
def test_masked_rows_never_reach_the_loss(divergence):
    """Logits at label -100 positions can be anything, even inf: the terms do not move (plain functions, no model)."""
    from seq2seq_distill.chunked_kd import LiveTeacherRows, ce_kd_row_pass
    from seq2seq_distill.modeling import logit_rows

    labels = torch.tensor([[5, 6, -100, -100], [7, 8, 9, -100]])
    rows = logit_rows("seq2seq", labels, torch.ones(2, 3, dtype=torch.long))
    mask = labels != -100
    assert torch.equal(rows.distill, mask) and torch.equal(rows.labelled, mask)
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(2, 4, 600), torch.randn(2, 4, 600)
    count = rows.distill.sum().float()

    def terms(s, t):
        _, values = ce_kd_row_pass(
            s, rows.distill, labels[rows.distill], LiveTeacherRows(t), ce_weight=0.5, kd_weight=0.5,
            ce_scale=1 / count, kd_scale=1 / count, divergence=divergence, temperature=2.0, beta=0.5,
            label_smoothing=0.0, shared_rows=None, chunk_elements=1000,
        )  # fmt: skip
        return {name: value.item() for name, value in values.items()}

    base = terms(student_logits, teacher_logits)
    garbage_s, garbage_t = student_logits.clone(), teacher_logits.clone()
    garbage_s[~mask], garbage_t[~mask] = float("inf"), -1e9
    assert terms(garbage_s, garbage_t) == pytest.approx(base)
    # and the values are the per-token means over the 5 supervised rows, computed here directly
    log_p_s = torch.log_softmax(student_logits[mask] / 2.0, -1)
    log_p_t = torch.log_softmax(teacher_logits[mask] / 2.0, -1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)) if divergence == "forward_kl" else (log_p_s.exp() * (log_p_s - log_p_t))
    direct_kd = kl.sum() * 4.0 / 5
    direct_ce = torch.nn.functional.cross_entropy(student_logits[mask], labels[mask])
    assert base["kd_loss"] == pytest.approx(direct_kd.item(), rel=1e-5)
    assert base["ce_loss"] == pytest.approx(direct_ce.item(), rel=1e-5)


def test_distillation_moves_student_toward_teacher(tiny, tokenizer_for, tmp_path):
    """After the same steps, KL(teacher || student) on held-out inputs is lower with KD than with CE alone."""
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=4, hidden=32, seed=1)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2, hidden_dim=16)  # fresh, not a copy
    train = seq2seq_dataset(tokenizer, size=64)
    held_out = seq2seq_dataset(tokenizer, size=32, offset=200)

    def held_out_kl(model):
        trainer = make_trainer("t5", tokenizer, model, teacher, tmp_path / "eval", ce_weight=0.0, kd_weight=1.0, temperature=1.0)
        return trainer.evaluate(held_out)["eval_kd_loss"]

    kls = {}
    for name, weights in (("ce_only", dict(ce_weight=1.0, kd_weight=0.0)), ("distilled", dict(ce_weight=0.5, kd_weight=0.5))):
        model = copy.deepcopy(student)
        make_trainer(
            "t5", tokenizer, model, teacher, tmp_path / name, dataset=train, max_steps=40, learning_rate=3e-3, **weights
        ).train()
        kls[name] = held_out_kl(model)
    assert kls["distilled"] < 0.85 * kls["ce_only"], kls


def test_evaluate_logs_each_term(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher = tiny("bert", layers=4)
    trainer = make_trainer("bert", tokenizer, create_student(teacher, num_encoder_layers=2), teacher, tmp_path, hidden_weight=1.0)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_hidden_loss"} <= set(metrics)
    expected = 0.5 * metrics["eval_ce_loss"] + 0.5 * metrics["eval_kd_loss"] + 1.0 * metrics["eval_hidden_loss"]
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_plain_training_arguments_work_from_a_notebook(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher = tiny("bert", layers=4)
    student = create_student(teacher, num_encoder_layers=2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=classification_dataset(tokenizer, 8),
        data_collator=collator_for("classification", tokenizer),
        processing_class=tokenizer,
    )
    assert isinstance(trainer, Trainer)
    assert (trainer.distillation.ce_weight, trainer.distillation.kd_weight, trainer.distillation.temperature) == (0.5, 0.5, 2.0)
    assert trainer.train().global_step == 2


def test_projections_are_saved_with_the_student(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=4, hidden=32)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2, hidden_dim=16)
    trainer = make_trainer("t5", tokenizer, student, teacher, tmp_path, hidden_weight=1.0)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    projection_keys = sorted(k for k in saved if k.startswith(PROJECTIONS_ATTR))
    assert projection_keys == [f"{PROJECTIONS_ATTR}.{role}.{p}" for role in ("decoder", "encoder") for p in ("bias", "weight")]
    torch.testing.assert_close(saved[f"{PROJECTIONS_ATTR}.encoder.weight"], getattr(student, PROJECTIONS_ATTR)["encoder"].weight)
    from transformers import AutoModelForSeq2SeqLM

    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final")  # for inference the projections are left out
    assert not hasattr(loaded, PROJECTIONS_ATTR)
    torch.testing.assert_close(loaded.lm_head.weight, student.lm_head.weight)


def test_padded_teacher_vocabulary_is_compared_on_shared_rows(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    rows = len(tokenizer)
    teacher = tiny("t5", layers=2, vocab_size=rows + 28)  # like T5: 32,100 tokens, 32,128 rows
    student = tiny("t5", layers=1)
    trainer = make_trainer("t5", tokenizer, student, teacher, tmp_path, max_steps=2)
    assert trainer.output_size == rows
    trainer.train()
    smaller_teacher = tiny("t5", layers=2, vocab_size=rows - 100)
    with pytest.raises(ValueError, match=rf"student has {rows} vocabulary rows but the teacher has {rows - 100}"):
        make_trainer("t5", tokenizer, tiny("t5", layers=1), smaller_teacher, tmp_path)


def test_bad_setups_fail_before_training(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teacher = tiny("t5", layers=4)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2)
    with pytest.raises(ValueError, match="encoder_layer_map index 9 is out of range: the teacher has 4 layers"):
        make_trainer("t5", tokenizer, student, teacher, tmp_path, hidden_weight=1.0, encoder_layer_map=[0, 9])
    with pytest.raises(ValueError, match="student has 6 encoder layers but the teacher only 4"):
        make_trainer("t5", tokenizer, tiny("t5", layers=6), teacher, tmp_path, attention_weight=1.0)
    with pytest.raises(ValueError, match="unknown divergence 'kld'"):
        Seq2SeqDistillationTrainingArguments(output_dir=str(tmp_path), divergence="kld")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Seq2SeqDistillationTrainingArguments(output_dir=str(tmp_path), temperature=0)
    with pytest.raises(ValueError, match="kd_weight must be a finite number >= 0"):
        Seq2SeqDistillationTrainingArguments(output_dir=str(tmp_path), kd_weight=-1)
    with pytest.raises(ValueError, match="teacher_model is required"):
        make_trainer("t5", tokenizer, student, None, tmp_path)
    gpt2_tokenizer = tokenizer_for("gpt2")
    with pytest.raises(ValueError, match="student is a causal_lm model but the teacher is a classification model"):
        make_trainer("gpt2", gpt2_tokenizer, tiny("gpt2", layers=2), tiny("bert", layers=2), tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(gpt2_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=0,
        )
    )
    with pytest.raises(ValueError, match="model type 'llama' is not supported for layer copying or layer mapping"):
        make_trainer("gpt2", gpt2_tokenizer, llama, tiny("gpt2", layers=4), tmp_path, hidden_weight=1.0)
    make_trainer("gpt2", gpt2_tokenizer, llama, tiny("gpt2", layers=4), tmp_path)  # logits alone need no layer map


def test_teacher_precision_defaults():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_teacher_dtype("auto", cpu, train_bf16=True, train_fp16=False) == torch.float32
    assert resolve_teacher_dtype("auto", gpu, train_bf16=True, train_fp16=False) == torch.bfloat16
    assert resolve_teacher_dtype("auto", gpu, train_bf16=False, train_fp16=True) == torch.float16
    assert resolve_teacher_dtype("auto", gpu, train_bf16=False, train_fp16=False) == torch.float32
    assert resolve_teacher_dtype("bfloat16", cpu, train_bf16=False, train_fp16=False) == torch.bfloat16


def sharpened(classifier_model, seed: int = 0):
    """A fresh classifier predicts almost uniformly (KD ~ 1e-7); a large random head gives distributions worth comparing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = classifier_model.classifier.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 3.0)
    return classifier_model


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])  # the closed-form path and the autograd path
def test_unlabelled_rows_are_distilled_but_not_learned_from(divergence, tiny, tokenizer_for, tmp_path):
    """-100 rows (unlabelled, e.g. -1 in the data) enter KD but not CE; each term is a mean over its own rows.

    Against an independent computation from the models' logits, and exact under gradient accumulation with padding.
    """
    tokenizer = tokenizer_for("bert")
    teacher = sharpened(tiny("bert", layers=4, hidden=32))
    student = sharpened(create_student(teacher, num_encoder_layers=2), seed=1)
    dataset = classification_dataset(tokenizer, size=8)
    unlabelled = [1, 4, 5, 6]
    labels = [-100 if index in unlabelled else label for index, label in enumerate(dataset["labels"])]
    dataset = dataset.remove_columns("labels").add_column("labels", labels)
    settings = dict(ce_weight=0.5, kd_weight=0.5, temperature=2.0, divergence=divergence)

    batch = collator_for("classification", tokenizer)([dict(row) for row in dataset])
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        student_logits, teacher_logits = student.eval()(**inputs).logits, teacher.eval()(**inputs).logits
    labelled = torch.tensor(labels) != -100
    expected_ce = torch.nn.functional.cross_entropy(student_logits[labelled], torch.tensor(labels)[labelled])
    log_s, log_t = torch.log_softmax(student_logits / 2.0, -1), torch.log_softmax(teacher_logits / 2.0, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1) if divergence == "forward_kl" else (log_s.exp() * (log_s - log_t)).sum(-1)
    expected_kd = kl.mean() * 4.0  # all 8 rows, labelled or not, times T^2

    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = full_and_accumulated_step(
        "bert", tokenizer, student, teacher, tmp_path, dataset, **settings
    )
    assert full_logs["ce_loss"] == pytest.approx(expected_ce.item(), rel=1e-4)
    assert full_logs["kd_loss"] == pytest.approx(expected_kd.item(), rel=1e-4)
    assert full_logs["loss"] == pytest.approx(0.5 * expected_ce.item() + 0.5 * expected_kd.item(), rel=1e-4)
    for name in ("loss", "ce_loss", "kd_loss"):
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


def test_a_run_with_no_row_to_train_on_stops_before_training(tiny, tokenizer_for, tmp_path):
    """Every row unlabelled and only CE on: one clear error, not a run that logs loss 0 and 'finishes'."""
    from seq2seq_distill.errors import InputError

    tokenizer = tokenizer_for("bert")
    teacher = sharpened(tiny("bert", layers=2))
    dataset = classification_dataset(tokenizer, size=8)
    dataset = dataset.remove_columns("labels").add_column("labels", [-100] * len(dataset))
    student = create_student(teacher, num_encoder_layers=1)
    with pytest.raises(InputError, match="every one of the 8 training rows is unlabelled .* set --kd_weight > 0"):
        make_trainer("bert", tokenizer, student, teacher, tmp_path, dataset=dataset, ce_weight=1.0, kd_weight=0.0)
    # with KD on, the same rows train the student: a non-zero loss and changed weights
    trainer = make_trainer("bert", tokenizer, student, teacher, tmp_path, dataset=dataset, ce_weight=0.0, kd_weight=1.0)
    before = parameters_copy(student)
    trainer.train()
    assert trainer.state.log_history[0]["kd_loss"] > 0 and trainer.state.log_history[0]["grad_norm"] > 0
    assert any(not torch.equal(before[name], value) for name, value in parameters_copy(student).items())


@pytest.mark.parametrize("model_type", ["t5", "gpt2"])
def test_saved_models_keep_their_inference_use_cache(model_type, tiny, tokenizer_for, tmp_path):
    """The Trainer turns use_cache off for training; the saved config must not carry that into inference."""
    import json

    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=2)
    student = create_student(teacher, **{key: 1 for key in STUDENT_LAYERS[model_type]})
    assert student.config.use_cache is True
    trainer = make_trainer(model_type, tokenizer, student, teacher, tmp_path, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for folder in (tmp_path / "final", tmp_path / "checkpoint-1"):
        assert json.loads((folder / "config.json").read_text())["use_cache"] is True, folder
    assert student.config.use_cache is True  # back after training, so a copy of this model starts right too
