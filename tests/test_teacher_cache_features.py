"""Feature distillation offline: a cache holding the mapped teacher layers' hidden states trains the hidden-state
and norm terms exactly as the live teacher does; a layer it lacks, or a term it cannot serve, is one clear error."""

import copy
import dataclasses
import json

import pytest
import torch
from helpers import TINY_RUN_FLAGS, GradientRecorder, distillation_trainer

from seq2seq_distill import create_student
from seq2seq_distill.arguments import DataArguments, DistillationSettings, ModelArguments
from seq2seq_distill.cli import main
from seq2seq_distill.commands import _cached_hidden_layers
from seq2seq_distill.data import load_raw_splits, prepare_data
from seq2seq_distill.errors import InputError
from seq2seq_distill.teacher_cache import HIDDEN_COLUMNS, INFO_FILE, build_teacher_cache, cache_fingerprint, load_teacher_cache

DATA = DataArguments(train_size=12, val_size=4, test_size=4, max_source_length=24, max_target_length=8)
FEATURE_TERMS = dict(ce_weight=0.5, kd_weight=0.0, hidden_weight=1.0, norm_weight=0.5, temperature=2.0)


def prepared(tokenizer, task: str):
    return prepare_data(load_raw_splits(DATA, task), tokenizer, task, DATA)


def mapped_layers(student) -> dict[str, list[int]]:
    """The teacher layers a student copied from, read from its config (what its layer pairing will read)."""
    return {role: sorted(set(layers)) for role, layers in student.config.student_layer_map.items()}


def train(task, student, teacher, data, tokenizer, output_dir, cache=None):
    """Two steps with the live ``teacher`` or (teacher None) from ``cache``: the logged steps and the gradients."""
    settings = dict(teacher_cache=cache, per_device_train_batch_size=4, max_steps=2, **FEATURE_TERMS)
    trainer = distillation_trainer(task, tokenizer, student, teacher, output_dir, data.tokenized["train"], **settings)
    recorder = GradientRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry], recorder.gradients


@pytest.mark.parametrize(
    "model_type, task, student_layers",
    [
        ("t5", "seq2seq", dict(num_encoder_layers=2, num_decoder_layers=2, decoder_layer_map=[1, 2])),
        # A narrower student: the hidden-state term trains a projection, whose start must not depend on the cache.
        ("bert", "classification", dict(num_encoder_layers=2, encoder_layer_map=[1, 3], hidden_dim=16)),
    ],
)
def test_a_hidden_state_cache_trains_like_the_live_teacher(tiny, tokenizer_for, tmp_path, model_type, task, student_layers):
    tokenizer = tokenizer_for(model_type)
    data = prepared(tokenizer, task)
    teacher = tiny(model_type, layers=4, hidden=32)
    with torch.no_grad():  # a fresh LayerNorm gives every token mean 0, variance 1: norm_loss would be 0 for BERT
        for module in teacher.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0.0, 0.2)
    student = create_student(teacher, **student_layers)
    path = build_teacher_cache(
        teacher,
        tokenizer,
        data,
        str(tmp_path / "cache"),
        top_k=4,
        temperature=2.0,
        batch_size=5,
        hidden_layers=mapped_layers(student),
    )  # batches of 5 sorted by length: other padding than the training batches of 4
    cache = load_teacher_cache(path, data, tokenizer, temperature=2.0, teacher=teacher)
    online_student, cached_student = copy.deepcopy(student), copy.deepcopy(student)
    online_logs, online_gradients = train(task, online_student, teacher, data, tokenizer, tmp_path / "online")
    cached_logs, cached_gradients = train(task, cached_student, None, data, tokenizer, tmp_path / "cached", cache=cache)
    assert len(cached_logs) == len(online_logs) == 2
    for online_step, cached_step in zip(online_logs, cached_logs, strict=True):
        assert online_step["hidden_loss"] > 1e-3 and online_step["norm_loss"] > 1e-3  # terms with something to learn
        for name in ("loss", "hidden_loss", "norm_loss"):
            assert cached_step[name] == pytest.approx(online_step[name], rel=1e-6, abs=2e-6), name  # logs: 6 decimals
    assert len(cached_gradients) == len(online_gradients) == 2
    if "hidden_dim" in student_layers:
        assert any(name.startswith("distillation_projections") for name in cached_gradients[0])
    for online_step, cached_step in zip(online_gradients, cached_gradients, strict=True):
        assert online_step.keys() == cached_step.keys()
        for name, gradient in cached_step.items():
            torch.testing.assert_close(gradient, online_step[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def t5_cache(tiny, tokenizer_for, tmp_path):
    """A T5 teacher of 4 + 4 layers and a cache of its encoder layers 0, 3 and decoder layer 3 (float32)."""
    tokenizer = tokenizer_for("t5")
    data = prepared(tokenizer, "seq2seq")
    teacher = tiny("t5", layers=4, hidden=32)
    layers = {"encoder": [3, 0], "decoder": [3]}  # any order in, sorted in the cache
    path = build_teacher_cache(teacher, tokenizer, data, str(tmp_path / "cache"), top_k=4, temperature=2.0, hidden_layers=layers)
    return tokenizer, data, teacher, load_teacher_cache(path, data, tokenizer, temperature=2.0)


def test_a_layer_or_a_term_the_cache_cannot_serve_is_one_clear_error(t5_cache, tmp_path):
    tokenizer, data, teacher, cache = t5_cache

    def trainer(student, cache=cache, **settings):
        terms = {**FEATURE_TERMS, **settings}
        return distillation_trainer(
            "seq2seq", tokenizer, student, None, tmp_path, data.tokenized["train"], teacher_cache=cache, **terms
        )

    served = create_student(teacher, num_encoder_layers=2, num_decoder_layers=1, decoder_layer_map=[3])
    assert trainer(served).stack_pairs  # the cached layers are all it reads
    needs_more = create_student(teacher, num_encoder_layers=2, num_decoder_layers=2, decoder_layer_map=[1, 3])
    with pytest.raises(InputError) as error:
        trainer(needs_more)
    message = str(error.value)
    assert "reads teacher decoder layer 1, which the teacher cache" in message and "encoder" not in message.split("holds")[0]
    assert "holds encoder layers 0, 3; decoder layer 3" in message and "--cache_hidden_states" in message
    with pytest.raises(InputError, match=r"attention_weight = 0.1 need the live teacher \(attention maps, self-attention"):
        trainer(served, attention_weight=0.1)
    with pytest.raises(InputError, match="relation_weight = 1 need the live teacher"):
        trainer(served, relation_weight=1.0)
    logits_only = dataclasses.replace(cache, info={**cache.info, "hidden_states": None})
    with pytest.raises(InputError, match="hidden_weight = 1, norm_weight = 0.5: this teacher cache holds no hidden states"):
        trainer(served, cache=logits_only)


def test_the_cache_holds_each_example_s_states_and_its_fingerprint_covers_the_layers(t5_cache, tmp_path):
    tokenizer, data, teacher, cache = t5_cache
    info = json.loads((tmp_path / "cache" / INFO_FILE).read_text())
    assert info["hidden_states"] == {"layers": {"encoder": [0, 3], "decoder": [3]}, "dtype": "float32", "hidden_size": 32}
    assert info["fingerprint"] == cache_fingerprint(info)  # a function of the contents, not of the build
    # Independently: one example alone through the teacher, no padding; its cached rows are its real positions.
    example = data.tokenized["train"][2]
    labels = torch.tensor([example["labels"]])
    with torch.no_grad():
        outputs = teacher(
            input_ids=torch.tensor([example["input_ids"]]),
            decoder_input_ids=teacher.prepare_decoder_input_ids_from_labels(labels=labels),
            output_hidden_states=True,
        )
    row = cache.attach("train", data.tokenized["train"])[2]
    encoder, decoder = row[HIDDEN_COLUMNS["encoder"]], row[HIDDEN_COLUMNS["decoder"]]
    assert encoder.shape == (len(example["input_ids"]), 2, 32) and decoder.shape == (len(example["labels"]), 1, 32)
    for slot, layer in enumerate((0, 3)):
        expected = outputs.encoder_hidden_states[layer + 1][0]
        torch.testing.assert_close(torch.from_numpy(encoder[:, slot]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(decoder[:, 0]), outputs.decoder_hidden_states[4][0], rtol=1e-5, atol=1e-6)
    # Another layer map (and precision): another fingerprint; float16 halves the bytes and keeps ~3 digits.
    other = build_teacher_cache(
        teacher,
        tokenizer,
        data,
        str(tmp_path / "other"),
        top_k=4,
        temperature=2.0,
        splits=("train",),
        hidden_layers={"encoder": [1, 3], "decoder": [3]},
        hidden_dtype="float16",
    )
    other_info = json.loads((tmp_path / "other" / INFO_FILE).read_text())
    assert other_info["fingerprint"] != info["fingerprint"]
    moved = {**info, "hidden_states": {**info["hidden_states"], "layers": {"encoder": [1, 3], "decoder": [3]}}}
    assert cache_fingerprint(moved) != info["fingerprint"]  # the layer map alone changes it
    half = load_teacher_cache(other, data, tokenizer, temperature=2.0).splits["train"]
    assert half.features[HIDDEN_COLUMNS["encoder"]].dtype == "float16"
    half_encoder = torch.tensor(half.with_format("numpy")[2][HIDDEN_COLUMNS["encoder"]], dtype=torch.float32)
    torch.testing.assert_close(half_encoder[:, 1], torch.from_numpy(encoder[:, 1]), rtol=2e-3, atol=2e-3)


def test_the_cached_layers_are_those_distill_will_pair(tiny, tmp_path):
    teacher = tiny("t5", layers=6, hidden=32)
    student = create_student(teacher, num_encoder_layers=2, num_decoder_layers=3)  # spread: 0, 5 and 0, 3, 5
    student.config.save_pretrained(tmp_path / "student")
    maps = DistillationSettings(decoder_layer_map=[1, 1, 4])
    given = ModelArguments(student=str(tmp_path / "student"))
    assert _cached_hidden_layers(given, DistillationSettings(), teacher.config) == {"encoder": [0, 5], "decoder": [0, 3, 5]}
    assert _cached_hidden_layers(given, maps, teacher.config) == {"encoder": [0, 5], "decoder": [1, 4]}
    counts = ModelArguments(num_encoder_layers=3, num_decoder_layers=3)
    assert _cached_hidden_layers(counts, maps, teacher.config) == {"encoder": [0, 3, 5], "decoder": [1, 4]}
    every = list(range(6))
    assert _cached_hidden_layers(ModelArguments(), DistillationSettings(), teacher.config) == {"encoder": every, "decoder": every}
    with pytest.raises(InputError, match="decoder_layer_map index 9 is out of range"):
        _cached_hidden_layers(counts, DistillationSettings(decoder_layer_map=[0, 1, 9]), teacher.config)


def test_cli_trains_feature_terms_from_a_cache_after_the_teacher_is_gone(tmp_path):
    assert main(["train_teacher", *TINY_RUN_FLAGS, "--max_steps", "2", "--output_dir", str(tmp_path / "teacher")]) == 0
    tiny = [*TINY_RUN_FLAGS, "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2"]  # validation cached too
    student = ["--student", str(tmp_path / "student")]
    layers = ["--num_encoder_layers", "1", "--num_decoder_layers", "1"]
    assert main(["make_student", "--teacher", str(tmp_path / "teacher"), *layers, "--output_dir", str(tmp_path / "student")]) == 0
    cache = ["--teacher_cache", str(tmp_path / "cache")]
    assert main(["cache_teacher", "--teacher", str(tmp_path / "teacher"), *cache, "--cache_hidden_states", *student, *tiny]) == 0
    (tmp_path / "teacher").rename(tmp_path / "gone")  # nothing of the teacher is left to load
    terms = ["--hidden_weight", "1", "--norm_weight", "0.5", "--kd_weight", "0.5"]
    assert main(["distill", *cache, *student, *terms, *tiny, "--output_dir", str(tmp_path / "distilled")]) == 0
    history = json.loads((tmp_path / "distilled" / "training_metrics.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 2 and all(step["hidden_loss"] > 0 and step["norm_loss"] > 0 and "kd_loss" in step for step in steps)
    assert any(entry.get("eval_hidden_loss", 0) > 0 for entry in history)
    assert main(["distill", *cache, *student, "--attention_weight", "1", *tiny, "--output_dir", str(tmp_path / "x")]) == 2
