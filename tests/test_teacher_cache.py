"""Offline distillation from a teacher cache: same loss as online when k covers the vocabulary; stale caches refused."""

import copy
import json

import pytest
import torch
from helpers import TINY_RUN_FLAGS, distillation_trainer, parameters_copy
from huggingface_hub import ModelCard

from seq2seq_distill import create_student
from seq2seq_distill.arguments import DataArguments
from seq2seq_distill.cli import main
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError
from seq2seq_distill.losses import DIVERGENCES, logit_distillation_loss, topk_distillation_loss
from seq2seq_distill.teacher_cache import INFO_FILE, build_teacher_cache, load_teacher_cache

DATA = DataArguments(train_size=16, val_size=4, test_size=4, max_source_length=24, max_target_length=8)


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_topk_loss_with_the_whole_vocabulary_equals_the_full_loss(divergence):
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 11, requires_grad=True), torch.randn(6, 11)
    values, indices = torch.log_softmax(teacher / 2.0, -1).topk(11, -1)
    cached = topk_distillation_loss(student, values, indices, divergence=divergence, temperature=2.0, beta=0.3)
    full = logit_distillation_loss(student, teacher, divergence=divergence, temperature=2.0, beta=0.3)
    assert cached.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    (cached_grad,) = torch.autograd.grad(cached, student)
    (full_grad,) = torch.autograd.grad(full, student)
    torch.testing.assert_close(cached_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_topk_loss_counts_the_mass_outside_the_support():
    teacher = torch.tensor([[4.0, 3.0, 0.0, 0.0, 0.0, 0.0]])
    values, indices = torch.log_softmax(teacher, -1).topk(2, -1)
    on_support = torch.tensor([[4.0, 3.0, 0.0, 0.0, 0.0, 0.0]])
    off_support = torch.tensor([[4.0, 3.0, 0.0, 0.0, 0.0, 6.0]])  # same ratio inside the support, mass moved to the tail
    loss_on = topk_distillation_loss(on_support, values, indices)
    loss_off = topk_distillation_loss(off_support, values, indices)
    assert loss_on.item() == pytest.approx(0.0, abs=1e-6) and loss_off.item() > 0.5


@pytest.fixture
def setup(tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    data = prepare_data(load_raw_splits(DATA, "seq2seq"), tokenizer, "seq2seq", DATA)
    teacher = tiny("t5", layers=4, hidden=32)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2)
    return tokenizer, data, teacher, student


def train(student, teacher, data, tokenizer, output_dir, cache=None, divergence="forward_kl"):
    trainer = distillation_trainer(
        "seq2seq",
        tokenizer,
        student,
        None if cache else teacher,
        output_dir,
        data.tokenized["train"],
        teacher_cache=cache,
        per_device_train_batch_size=4,
        max_steps=3,
        divergence=divergence,
        temperature=2.0,
    )
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js"])
def test_cached_run_equals_online_run_when_k_covers_the_vocabulary(setup, tmp_path, divergence):
    tokenizer, data, teacher, student = setup
    path = build_teacher_cache(
        teacher, tokenizer, data, str(tmp_path / "cache"), top_k=len(tokenizer), temperature=2.0, batch_size=5
    )
    cache = load_teacher_cache(path, data, tokenizer, temperature=2.0, teacher=teacher)
    online_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    online = train(online_student, teacher, data, tokenizer, tmp_path / "online", divergence=divergence)
    cached = train(cached_student, teacher, data, tokenizer, tmp_path / "cached", cache=cache, divergence=divergence)
    for online_step, cached_step in zip(online, cached, strict=True):
        for name in ("loss", "ce_loss", "kd_loss"):
            assert cached_step[name] == pytest.approx(online_step[name], rel=1e-5, abs=1e-6), name
    expected = parameters_copy(online_student)
    for name, value in parameters_copy(cached_student).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_small_k_cache_trains_and_is_smaller(setup, tmp_path):
    tokenizer, data, teacher, student = setup
    path = build_teacher_cache(teacher, tokenizer, data, str(tmp_path / "cache"), top_k=8, temperature=2.0)
    info = json.loads((tmp_path / "cache" / INFO_FILE).read_text())
    assert info["top_k"] == 8 and set(info["splits"]) == {"train", "validation"}
    cache = load_teacher_cache(path, data, tokenizer, temperature=2.0)
    assert len(cache.splits["train"][0]["teacher_topk_indices"][0]) == 8
    steps = train(student, teacher, data, tokenizer, tmp_path / "run", cache=cache)
    assert all(torch.isfinite(torch.tensor(step["kd_loss"])) for step in steps)


def test_stale_or_mismatched_caches_are_refused(setup, tmp_path, tokenizer_for, tiny):
    tokenizer, data, teacher, student = setup
    path = build_teacher_cache(teacher, tokenizer, data, str(tmp_path / "cache"), top_k=4, temperature=2.0)
    with pytest.raises(InputError, match="at temperature 2.0 but --temperature is 1.0"):
        load_teacher_cache(path, data, tokenizer, temperature=1.0)
    other_data = prepare_data(load_raw_splits(DataArguments(train_size=15), "seq2seq"), tokenizer, "seq2seq", DATA)
    with pytest.raises(InputError, match="different train data"):
        load_teacher_cache(path, other_data, tokenizer, temperature=2.0)
    from seq2seq_distill.tiny import train_tokenizer

    other_tokenizer = train_tokenizer(["another corpus, another vocabulary"] * 3, vocab_size=50)
    with pytest.raises(InputError, match="different tokenizer"):
        load_teacher_cache(path, data, other_tokenizer, temperature=2.0)
    with pytest.raises(InputError, match="different teacher"):
        load_teacher_cache(path, data, tokenizer, temperature=2.0, teacher=tiny("t5", layers=4, hidden=32, seed=5))
    (tmp_path / "cache" / INFO_FILE).unlink()
    with pytest.raises(InputError, match="is not a finished teacher cache"):
        load_teacher_cache(path, data, tokenizer, temperature=2.0)


def test_cli_distills_from_a_cache_without_loading_the_teacher(tmp_path, monkeypatch):
    tiny = [*TINY_RUN_FLAGS, "--max_steps", "2"]
    assert main(["train_teacher", *tiny, "--output_dir", str(tmp_path / "teacher")]) == 0
    assert (
        main(
            [
                "make_student",
                "--teacher",
                str(tmp_path / "teacher"),
                "--num_encoder_layers",
                "1",
                "--num_decoder_layers",
                "1",
                "--output_dir",
                str(tmp_path / "student"),
            ]
        )
        == 0
    )
    assert main(["cache_teacher", "--teacher", str(tmp_path / "teacher"), "--teacher_cache", str(tmp_path / "cache"), *tiny]) == 0
    from seq2seq_distill import commands, training

    loaded = []
    original = training.load_model
    for module in (commands, training):  # every model the command loads goes through one of them
        monkeypatch.setattr(module, "load_model", lambda path, *a, **k: loaded.append(path) or original(path, *a, **k))
    assert (
        main(
            [
                "distill",
                "--teacher_cache",
                str(tmp_path / "cache"),
                "--student",
                str(tmp_path / "student"),
                *tiny,
                "--output_dir",
                str(tmp_path / "distilled"),
            ]
        )
        == 0
    )
    assert loaded == [str(tmp_path / "student")]
    history = json.loads((tmp_path / "distilled" / "training_metrics.json").read_text())["log_history"]
    assert any("kd_loss" in entry for entry in history)
    card = ModelCard.load(tmp_path / "distilled" / "README.md")  # the teacher is named from the cache's record of it
    assert card.data.base_model == str(tmp_path / "teacher") and f"teacher cache `{tmp_path / 'cache'}`" in card.text
    assert main(["distill", "--teacher_cache", str(tmp_path / "cache"), *tiny, "--output_dir", str(tmp_path / "x")]) == 2


def test_a_cached_run_resumed_from_a_checkpoint_ends_like_an_uninterrupted_one(setup, tmp_path):
    """The cached rows travel with their examples, so resuming restores the cache position with the data order."""
    tokenizer, data, teacher, student = setup
    path = build_teacher_cache(teacher, tokenizer, data, str(tmp_path / "cache"), top_k=8, temperature=2.0)
    cache = load_teacher_cache(path, data, tokenizer, temperature=2.0)
    settings = dict(
        per_device_train_batch_size=4,
        max_steps=6,
        temperature=2.0,
        save_strategy="steps",
        save_steps=3,
        lr_scheduler_type="linear",
    )  # 16 examples: the run crosses an epoch, and the schedule moves

    def run(output, resume=None, stop_after=None):
        model = copy.deepcopy(student)
        trainer = distillation_trainer(
            "seq2seq", tokenizer, model, None, output, data.tokenized["train"], teacher_cache=cache, **settings
        )
        if stop_after:  # an interrupted run: it stops once its checkpoint exists
            from transformers import TrainerCallback

            class Stop(TrainerCallback):
                def on_save(self, args, state, control, **kwargs):
                    control.should_training_stop = state.global_step >= stop_after

            trainer.add_callback(Stop())
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer.state.global_step

    uninterrupted, steps = run(tmp_path / "whole")
    _, stopped_at = run(tmp_path / "parts", stop_after=3)
    resumed, resumed_steps = run(tmp_path / "parts", resume=str(tmp_path / "parts" / "checkpoint-3"))
    assert (stopped_at, steps, resumed_steps) == (3, 6, 6)
    expected = parameters_copy(uninterrupted)
    for name, value in parameters_copy(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type", ["gpt2", "bert"])
def test_the_cache_and_the_trainer_take_their_rows_from_one_function(model_type, tiny, tokenizer_for, tmp_path):
    """The cache stores one row per position the trainer distills, in the same order: both ask modeling.logit_rows."""
    from helpers import causal_dataset, classification_dataset, collator_for, distillation_trainer

    import seq2seq_distill.modeling as modeling
    import seq2seq_distill.teacher_cache as cache_module
    import seq2seq_distill.trainer as trainer_module

    assert cache_module.logit_rows is modeling.logit_rows and trainer_module.logit_rows is modeling.logit_rows
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=2)
    task = "causal_lm" if model_type == "gpt2" else "classification"
    dataset = (causal_dataset if task == "causal_lm" else classification_dataset)(tokenizer, size=6)
    if task == "classification":  # an unlabelled row is distilled too
        dataset = dataset.remove_columns("labels").add_column("labels", [0, -100, 2, 1, -100, 4])
    examples = [dict(row) for row in dataset]
    cached = cache_module._teacher_rows(teacher, collator_for(task, tokenizer), task, examples, 3, 2.0, torch.device("cpu"))
    trainer = distillation_trainer(task, tokenizer, teacher, teacher, tmp_path, dataset)
    target_mask, _, _ = trainer._positions(collator_for(task, tokenizer)(examples))
    counts = [len(row[cache_module.CACHE_LOG_PROBS]) for row in cached]
    assert counts == target_mask.reshape(len(examples), -1).sum(1).tolist()
