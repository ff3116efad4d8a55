"""Several teachers for one student: the mixture target, routing, offloading, the checkpoint record, the CLI."""

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_RUN_FLAGS, distillation_trainer, seq2seq_dataset
from helpers import collator_for as helper_collator

from seq2seq_distill import create_student
from seq2seq_distill.cli import main
from seq2seq_distill.errors import InputError
from seq2seq_distill.losses import logit_distillation_loss, teacher_mixture_log_probs
from seq2seq_distill.teachers import ROUTE_COLUMN, TEACHERS_FILE, MixtureTeacher, TeacherSet, route_indices

T = 2.0


# ---- the target, on tensors ------------------------------------------------------------------------------------


def test_the_mixture_is_the_weighted_average_of_the_softened_distributions():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, 4, 11, generator=generator) * 3 for _ in range(3)]
    for weights in (torch.tensor([2.0, 1.0, 1.0]), torch.rand(3, 3, generator=generator) + 0.1):
        mixed = teacher_mixture_log_probs(logits, weights, temperature=T).exp().double()
        per_row = weights.double() if weights.dim() == 2 else weights.double().expand(3, -1)
        per_row = per_row / per_row.sum(-1, keepdim=True)
        expected = sum(per_row[:, index, None, None] * torch.softmax(z.double() / T, -1) for index, z in enumerate(logits))
        torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-7)
        geometric = teacher_mixture_log_probs(logits, weights, temperature=T, kind="geometric").exp().double()
        product = 1.0
        for index, z in enumerate(logits):
            product = product * torch.softmax(z.double() / T, -1) ** per_row[:, index, None, None]
        torch.testing.assert_close(geometric, product / product.sum(-1, keepdim=True), rtol=1e-5, atol=1e-7)


def test_a_routed_row_is_its_teacher_alone():
    generator = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, 5, 7, generator=generator) for _ in range(2)]
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for kind in ("probability", "geometric"):
        mixed = teacher_mixture_log_probs(logits, one_hot, temperature=T, kind=kind)
        torch.testing.assert_close(mixed[0], torch.log_softmax(logits[0][0] / T, -1))
        torch.testing.assert_close(mixed[1], torch.log_softmax(logits[1][1] / T, -1))


@pytest.mark.parametrize(("divergence", "kind"), [("forward_kl", "probability"), ("reverse_kl", "geometric")])
def test_one_target_has_the_gradient_of_the_weighted_sum_of_kls(divergence, kind):
    """Forward KL to the arithmetic mixture, reverse KL to the geometric one: the gradient of sum_i w_i KL(., p_i)."""
    generator = torch.Generator().manual_seed(2)
    teachers = [torch.randn(6, 9, generator=generator) * 2 for _ in range(2)]
    weights = torch.tensor([0.7, 0.3])
    student = torch.randn(6, 9, generator=generator, requires_grad=True)
    target_logits = T * teacher_mixture_log_probs(teachers, weights, temperature=T, kind=kind)
    (one_target,) = torch.autograd.grad(
        logit_distillation_loss(student, target_logits, divergence=divergence, temperature=T), student
    )
    summed = sum(
        weight * logit_distillation_loss(student, z, divergence=divergence, temperature=T)
        for weight, z in zip(weights, teachers, strict=True)
    )
    (sum_of_kls,) = torch.autograd.grad(summed, student)
    torch.testing.assert_close(one_target, sum_of_kls, rtol=1e-4, atol=1e-6)
    other = "geometric" if kind == "probability" else "probability"  # the other target is not that sum
    target_logits = T * teacher_mixture_log_probs(teachers, weights, temperature=T, kind=other)
    (wrong,) = torch.autograd.grad(logit_distillation_loss(student, target_logits, divergence=divergence, temperature=T), student)
    assert not torch.allclose(wrong, sum_of_kls, rtol=1e-3, atol=1e-4)


def test_rows_naming_an_unknown_teacher_are_one_error():
    assert route_indices(["a", "", None, "b"], ["a", "b"], "teacher", "train") == [0, -1, -1, 1]
    with pytest.raises(InputError, match=r"'c' \(row 1\).*the teachers are a, b"):
        route_indices(["a", "c", "b", "c"], ["a", "b"], "teacher", "train")


# ---- the trainer -----------------------------------------------------------------------------------------------


@pytest.fixture
def models(tiny):
    """Two tiny T5 teachers that disagree (sharpened heads) and a student copied from the first."""
    teachers = {}
    for name, seed in (("a", 0), ("b", 1)):
        teacher = tiny("t5", layers=2, hidden=32, seed=seed)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed + 10)
            teacher.lm_head.weight.copy_(torch.randn(teacher.lm_head.weight.shape, generator=generator))
        teachers[name] = teacher
    student = create_student(teachers["a"], num_encoder_layers=1, num_decoder_layers=1)
    return teachers, student


def trainer_of(tokenizer, student, teacher, folder, dataset=None, **settings):
    dataset = dataset if dataset is not None else seq2seq_dataset(tokenizer, size=8)
    return distillation_trainer("seq2seq", tokenizer, student, teacher, folder, dataset, temperature=T, **settings)


def kd_of(trainer, student, rows) -> tuple[float, float]:
    """(kd_loss, number of distilled positions) of one evaluation-mode batch of ``rows``."""
    batch = trainer.data_collator([dict(row) for row in rows])
    trainer._term_sums["eval"].clear()
    student.eval()
    with torch.no_grad():
        trainer.compute_loss(student, batch)
    return float(trainer._term_sums["eval"]["kd_loss"]), int((batch["labels"] != -100).sum())


def test_two_teachers_distill_their_weighted_mixture(models, tokenizer_for, tmp_path):
    """The kd_loss of two teachers against KL to 0.75 p_a + 0.25 p_b computed from the three models' logits."""
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    trainer = trainer_of(tokenizer, student, teachers, tmp_path, teacher_weights=[3.0, 1.0])
    rows = seq2seq_dataset(tokenizer, size=6)
    kd, _ = kd_of(trainer, student, rows)
    batch = trainer.data_collator([dict(row) for row in rows])
    labels = batch.pop("labels")
    batch["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=labels)
    with torch.no_grad():
        logits = {name: model.eval()(**batch).logits.double() for name, model in {"s": student, **teachers}.items()}
    mask = labels != -100
    mixture = 0.75 * torch.softmax(logits["a"] / T, -1) + 0.25 * torch.softmax(logits["b"] / T, -1)
    student_log_probs = torch.log_softmax(logits["s"] / T, -1)
    expected = (mixture * (mixture.log() - student_log_probs)).sum(-1)[mask].mean() * T**2
    assert kd == pytest.approx(expected.item(), rel=1e-4)
    single, _ = kd_of(trainer_of(tokenizer, student, teachers["a"], tmp_path / "one"), student, rows)
    assert abs(kd - single) > 1e-3 * single  # the second teacher changed the target


def test_one_teacher_in_a_list_is_the_single_teacher_path(models, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    rows = seq2seq_dataset(tokenizer, size=4)
    alone = kd_of(trainer_of(tokenizer, student, teachers["a"], tmp_path / "alone"), student, rows)
    listed = trainer_of(tokenizer, student, [teachers["a"]], tmp_path / "listed")
    assert listed.teachers.plain and kd_of(listed, student, rows) == alone


def test_a_teacher_of_weight_0_costs_nothing(models, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    rows = seq2seq_dataset(tokenizer, size=4)
    alone, _ = kd_of(trainer_of(tokenizer, student, teachers["a"], tmp_path / "alone"), student, rows)
    weighted = trainer_of(tokenizer, student, teachers, tmp_path / "weighted", teacher_weights=[1.0, 0.0])
    calls = []
    original = teachers["b"].forward
    teachers["b"].forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        kd, _ = kd_of(weighted, student, rows)
    finally:
        del teachers["b"].forward
    assert calls == [] and kd == pytest.approx(alone, rel=1e-5)


def test_routing_sends_each_row_to_its_teacher(models, tokenizer_for, tmp_path):
    """Each row's target is its named teacher: the routed kd_loss is single-teacher KD of each row's teacher, summed
    over the rows and divided by all of them; a teacher no row of a batch names does not run on it."""
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    rows = seq2seq_dataset(tokenizer, size=6)
    names = ["a", "b", "b", "a", "b", "a"]
    routed = trainer_of(
        tokenizer, student, teachers, tmp_path / "routed", rows.add_column("teacher", names), teacher_column="teacher"
    )
    assert routed.train_dataset[ROUTE_COLUMN] == [0, 1, 1, 0, 1, 0] and "teacher" not in routed.train_dataset.column_names
    assert ROUTE_COLUMN in next(iter(routed.get_train_dataloader()))  # kept through remove_unused_columns
    kd, count = kd_of(routed, student, routed.train_dataset)
    expected = 0.0
    for name in ("a", "b"):
        own = rows.select([index for index, each in enumerate(names) if each == name])
        single, own_count = kd_of(trainer_of(tokenizer, student, teachers[name], tmp_path / name), student, own)
        expected += single * own_count
    assert kd == pytest.approx(expected / count, rel=1e-5)

    calls = []
    original = teachers["b"].forward
    teachers["b"].forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        kd_of(routed, student, routed.train_dataset.select([0, 3]))  # both rows name a
    finally:
        del teachers["b"].forward
    assert calls == []

    with pytest.raises(InputError, match="'c' \\(row 2\\)"):
        trainer_of(
            tokenizer,
            student,
            teachers,
            tmp_path / "bad",
            rows.add_column("teacher", [*names[:2], "c", *names[3:]]),
            teacher_column="teacher",
        )


def test_offloaded_teachers_give_the_same_loss(models, tokenizer_for, tmp_path):
    """With offload_idle_teachers every teacher waits on the CPU and moves to the training device only for its own
    forward. This machine has no GPU, so the training device is the CPU too: the test checks the same loss and
    that each teacher is moved there before its forward and back after it, not the memory saved."""
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    rows = seq2seq_dataset(tokenizer, size=4)
    on_device = kd_of(trainer_of(tokenizer, student, teachers, tmp_path / "device", hidden_weight=1.0), student, rows)
    offloaded = trainer_of(tokenizer, student, teachers, tmp_path / "offload", hidden_weight=1.0, offload_idle_teachers=True)
    moves = []
    for name, teacher in teachers.items():
        forward, to = teacher.forward, teacher.to
        teacher.forward = lambda *a, _f=forward, _n=name, **k: moves.append((_n, "forward")) or _f(*a, **k)
        teacher.to = lambda *a, _t=to, _n=name, **k: moves.append((_n, str(a[0] if a else k.get("device")))) or _t(*a, **k)
    try:
        assert kd_of(offloaded, student, rows) == on_device
    finally:
        for teacher in teachers.values():
            del teacher.forward, teacher.to
    device = str(offloaded.args.device)
    assert moves == [(name, step) for name in ("a", "b") for step in (device, "forward", "cpu")]


def test_resume_is_refused_with_other_teachers(models, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("t5")
    teachers, student = models
    saving = dict(max_steps=2, save_strategy="steps", save_steps=2)
    trainer_of(tokenizer, student, teachers, tmp_path, teacher_weights=[0.7, 0.3], **saving).train()
    checkpoint = tmp_path / "checkpoint-2"
    record = json.loads((checkpoint / TEACHERS_FILE).read_text())
    assert [teacher["name"] for teacher in record["teachers"]] == ["a", "b"]
    assert [teacher["weight"] for teacher in record["teachers"]] == pytest.approx([0.7, 0.3])
    assert {teacher["dtype"] for teacher in record["teachers"]} == {"float32"} and record["feature_teacher"] == "a"

    more = dict(max_steps=3, save_strategy="no")
    same = trainer_of(tokenizer, student, teachers, tmp_path, teacher_weights=[0.7, 0.3], **more)
    same.train(resume_from_checkpoint=str(checkpoint))
    assert same.state.global_step == 3
    changed_b = create_student(teachers["b"], num_encoder_layers=2, num_decoder_layers=2)  # same shape, other weights
    with torch.no_grad():
        changed_b.lm_head.weight.mul_(1.01)
    refusals = {
        "the teachers a, b, this run has a, c": ({"a": teachers["a"], "c": teachers["b"]}, {}),
        "teacher 'b' changed its weights": ({"a": teachers["a"], "b": changed_b}, {}),
        "teacher 'a' changed its mixture weight: 0.7 then, 0.5 now": (teachers, {}),
        "feature_teacher was a, this run has b": (teachers, {"feature_teacher": "b"}),
    }
    for message, (teacher_set, settings) in refusals.items():
        settings = {"teacher_weights": [0.7, 0.3], **settings} if "mixture weight" not in message else settings
        trainer = trainer_of(tokenizer, student, teacher_set, tmp_path, **more, **settings)
        with pytest.raises(InputError, match=message) as refused:
            trainer.train(resume_from_checkpoint=str(checkpoint))
        assert "\n" not in str(refused.value)


def test_the_cached_mixture_is_the_mixture(models, tokenizer_for):
    """cache_teacher keeps log_softmax(logits / T) of its teacher: for MixtureTeacher that is the mixture itself."""
    tokenizer = tokenizer_for("t5")
    teachers, _ = models
    settings = SimpleNamespace(teacher_weights=[1.0, 3.0])
    mixture = MixtureTeacher(TeacherSet(list(teachers), list(teachers.values()), settings, "cpu"), temperature=T)
    batch = helper_collator("seq2seq", tokenizer, teachers["a"])([dict(row) for row in seq2seq_dataset(tokenizer, size=3)])
    labels = batch.pop("labels")
    batch["decoder_input_ids"] = mixture.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        cached = torch.log_softmax(mixture.eval()(**batch).logits / T, -1)
        expected = teacher_mixture_log_probs([m.eval()(**batch).logits for m in teachers.values()], [1.0, 3.0], temperature=T)
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)
    assert mixture.name_or_path.startswith("probability mixture of a (0.25") and mixture.device == torch.device("cpu")


# ---- the command line ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_scratch_teachers(tmp_path_factory):
    """Two teachers of the embedded default data (different seeds, one tokenizer: the same texts train it)."""
    root = tmp_path_factory.mktemp("teachers")
    for name, seed in (("first", "1"), ("second", "2")):
        assert main(["train_teacher", *TINY_RUN_FLAGS, "--max_steps", "2", "--seed", seed, "--output_dir", str(root / name)]) == 0
    return root


FLAGS = TINY_RUN_FLAGS[6:]  # not the scratch-teacher sizes
QUICK_BENCHMARK = ["--test_size", "6", "--latency_examples", "2", "--latency_min_timings", "1", "--latency_min_time", "0"]


def test_two_teachers_distill_one_student_and_benchmark_from_the_cli(two_scratch_teachers, tmp_path, capsys):
    root = two_scratch_teachers
    teachers = ["--teachers", f"first={root / 'first'}", f"second={root / 'second'}"]
    student = tmp_path / "student"
    layers = ["--num_encoder_layers", "1", "--num_decoder_layers", "1"]
    weighted = ["--teacher_weights", "3", "1", "--max_steps", "2"]
    assert main(["distill", *teachers, *weighted, *layers, *FLAGS, "--output_dir", str(student)]) == 0
    history = json.loads((student / "training_metrics.json").read_text())["log_history"]
    assert any(entry.get("kd_loss", 0) > 0 for entry in history)
    assert f"probability mixture of first (0.75, from {root / 'first'}), second (0.25" in (student / "README.md").read_text()
    bench = tmp_path / "bench"
    models = ["--models", str(root / "first"), str(root / "second"), str(student), "--max_new_tokens", "4"]
    assert main(["benchmark", *models, *QUICK_BENCHMARK, "--benchmark_output_dir", str(bench)]) == 0
    results = json.loads((bench / "benchmark_results.json").read_text())
    assert set(results["models"]) == {"first", "second", "student"}

    capsys.readouterr()
    assert main(["distill", *teachers, "--teacher_weights", "1", *FLAGS, "--output_dir", str(tmp_path / "bad")]) == 2
    assert "teacher_weights has 1 values for 2 teachers" in capsys.readouterr().err
    assert main(["pipeline", *teachers, "--output_dir", str(tmp_path / "bad")]) == 2
    assert "--teachers is for distill and cache_teacher" in capsys.readouterr().err


def test_rows_routed_from_the_cli_and_one_cache_of_the_mixture(two_scratch_teachers, tmp_path, capsys):
    """--teacher_column from a data file (an unknown name: one line before any teacher loads); cache_teacher
    --teachers caches the mixture, which distill --teacher_cache then trains on without a teacher."""
    from seq2seq_distill.stdlib_corpus import build_summarization_corpus

    root = two_scratch_teachers
    teachers = ["--teachers", f"first={root / 'first'}", f"second={root / 'second'}"]
    rows = build_summarization_corpus(max_examples=30)
    data = tmp_path / "routed.jsonl"
    names = ["first", "second", ""]  # empty: the mixture
    data.write_text("".join(json.dumps({**row, "teacher": names[index % 3]}) + "\n" for index, row in enumerate(rows)))
    routed = [*teachers, "--dataset_local_path", str(data), "--teacher_column", "teacher", *FLAGS]
    layers = ["--num_encoder_layers", "1", "--num_decoder_layers", "1"]
    assert main(["distill", *routed, *layers, "--max_steps", "1", "--output_dir", str(tmp_path / "routed")]) == 0
    assert (tmp_path / "routed" / "model.safetensors").exists()
    capsys.readouterr()
    data.write_text(data.read_text().replace('"teacher": "second"', '"teacher": "third"'))
    assert main(["distill", *routed, "--output_dir", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err.strip()
    assert "names 1 teacher(s) this run does not have: 'third' (row" in error and "\n" not in error

    cache, student = tmp_path / "cache", tmp_path / "student"
    assert main(["make_student", "--teacher", str(root / "first"), *layers, "--output_dir", str(student)]) == 0
    assert main(["cache_teacher", *teachers, "--teacher_cache", str(cache), "--cache_top_k", "8", *FLAGS]) == 0
    info = json.loads((cache / "teacher_cache.json").read_text())
    assert info["teacher"].startswith("probability mixture of first (0.5")
    distilled = tmp_path / "from_cache"
    from_cache = ["--teacher_cache", str(cache), "--student", str(student), "--max_steps", "1"]
    assert main(["distill", *from_cache, *FLAGS, "--output_dir", str(distilled)]) == 0
    history = json.loads((distilled / "training_metrics.json").read_text())["log_history"]
    assert any(entry.get("kd_loss", 0) > 0 for entry in history)
