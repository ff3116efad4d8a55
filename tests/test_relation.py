"""Self-attention relation distillation (MiniLMv2): the loss against explicit loops, every family, exact accumulation."""

import copy
import math

import pytest
import torch
from helpers import GradientRecorder, classification_dataset, collator_for, distillation_trainer
from test_trainer import DATASET, STUDENT_LAYERS, TASK

from seq2seq_distill import create_student
from seq2seq_distill.arguments import DistillationSettings
from seq2seq_distill.errors import InputError
from seq2seq_distill.losses import attention_relation_loss
from seq2seq_distill.terms import ce_only_settings, plan_terms

# Written out here rather than read from families.py, so a wrong path there fails these tests.
SELF_ATTENTION = {
    "bert": {"encoder": ("bert.encoder.layer.{}.attention.self.", ("query", "key", "value"))},
    "t5": {
        "encoder": ("encoder.block.{}.layer.0.SelfAttention.", ("q", "k", "v")),
        "decoder": ("decoder.block.{}.layer.0.SelfAttention.", ("q", "k", "v")),
    },
    "bart": {
        "encoder": ("model.encoder.layers.{}.self_attn.", ("q_proj", "k_proj", "v_proj")),
        "decoder": ("model.decoder.layers.{}.self_attn.", ("q_proj", "k_proj", "v_proj")),
    },
    "gpt2": {"layers": ("transformer.h.{}.attn.", ("c_attn",))},
}
MAP_SETTING = {"encoder": "encoder_layer_map", "decoder": "decoder_layer_map", "layers": "layer_map"}


def explicit_relation_loss(student_states, teacher_states, mask, heads, causal):
    """The relation term in float64 with explicit loops over examples, query positions and heads."""
    total = torch.zeros((), dtype=torch.float64)
    batch, length, _ = student_states.shape
    for b in range(batch):
        for query in range(length):
            if not mask[b, query]:
                continue
            keys = [key for key in range(length) if mask[b, key] and (not causal or key <= query)]
            per_head = torch.zeros((), dtype=torch.float64)
            for head in range(heads):
                relations = []
                for states in (teacher_states, student_states):
                    width = states.shape[-1] // heads
                    x = states[b, :, head * width : (head + 1) * width].double()
                    relations.append(torch.softmax(x[keys] @ x[query] / math.sqrt(width), dim=0))
                teacher_relation, student_relation = relations
                per_head += (teacher_relation * (teacher_relation.log() - student_relation.log())).sum()
            total += per_head / heads
    return total


def hand_made(seed=0, student_width=6, teacher_width=8):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 5, student_width, generator=generator) * 2
    teacher = torch.randn(2, 5, teacher_width, generator=generator) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return student, teacher, mask


@pytest.mark.parametrize("causal", [False, True])
def test_relation_loss_matches_explicit_float64_loops_and_ignores_padding(causal):
    student, teacher, mask = hand_made()  # widths 6 and 8: 2 relation heads of 3 and of 4
    value = attention_relation_loss(student, teacher, mask, relation_heads=2, causal=causal)
    expected = explicit_relation_loss(student, teacher, mask, heads=2, causal=causal)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert value.item() > 1e-3
    # Padded positions may hold anything: neither as keys nor as queries do they change the value.
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[~mask], garbage_teacher[~mask] = 1e3, -1e3
    assert attention_relation_loss(garbage_student, garbage_teacher, mask, 2, causal).item() == pytest.approx(value.item())
    # while a change at a real position does
    changed = student.clone()
    changed[1, 0] += 1.0
    assert attention_relation_loss(changed, teacher, mask, 2, causal).item() != pytest.approx(value.item())
    # bfloat16 inputs are computed in float32
    assert attention_relation_loss(student.bfloat16(), teacher.bfloat16(), mask, 2, causal).dtype == torch.float32


def test_causal_relations_see_no_later_position():
    student, teacher, mask = hand_made()
    full = attention_relation_loss(student, teacher, mask, 2, causal=False)
    causal = attention_relation_loss(student, teacher, mask, 2, causal=True)
    assert causal.item() != pytest.approx(full.item())
    later = student.clone()
    later[0, 4] += 3.0  # the last position is a key only of itself under causal masking
    first_rows = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert attention_relation_loss(later, teacher, first_rows, 2, causal=True).item() == pytest.approx(
        attention_relation_loss(student, teacher, first_rows, 2, causal=True).item()
    )


def test_relation_loss_is_zero_for_identical_states_and_checks_its_heads():
    student, _, mask = hand_made()
    assert attention_relation_loss(student, student.clone(), mask, 3).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_relation_loss(student, student * 1.5, mask, 3).item() > 1e-3
    with pytest.raises(InputError, match=r"relation_heads = 4 does not divide the width 6 .* set --relation_heads"):
        attention_relation_loss(student, student, mask, relation_heads=4)
    with pytest.raises(ValueError, match="relation inputs differ in batch or length"):
        attention_relation_loss(student, student[:, :4], mask, relation_heads=2)


def test_relation_settings_come_from_the_table_and_are_checked(tiny, tokenizer_for, tmp_path):
    plan = plan_terms(DistillationSettings(ce_weight=0.5, kd_weight=0.0, relation_weight=1.0))
    assert [term.name for term in plan.terms] == ["ce_loss", "relation_loss"]
    assert plan.needs("qkv") and plan.needs_teacher and plan.needs_layer_pairs
    assert not plan.needs_hidden_states and not plan.needs_attentions  # recorded by hooks, not asked of the models
    assert ce_only_settings()["relation_weight"] == 0.0
    settings = DistillationSettings()
    assert (settings.relation_weight, settings.relation_heads, settings.relation_layers) == (0.0, None, "last")
    with pytest.raises(InputError, match="relation_weight must be a finite number >= 0"):
        DistillationSettings(relation_weight=-1.0)
    with pytest.raises(InputError, match="relation_heads must be at least 1"):
        DistillationSettings(relation_heads=0)
    with pytest.raises(InputError, match="unknown relation_layers 'first'; choose one of: last, all"):
        DistillationSettings(relation_layers="first")

    tokenizer = tokenizer_for("bert")
    teacher = tiny("bert", layers=4, hidden=64, heads=4)
    dataset = classification_dataset(tokenizer, size=4)

    def trainer(student, model=teacher, **settings):
        return distillation_trainer("classification", tokenizer, student, model, tmp_path, dataset, **settings)

    with pytest.raises(InputError, match="teacher_model is required: kd_weight = 0.5 and relation_weight = 1 need the teacher"):
        trainer(create_student(teacher, num_encoder_layers=2), model=None, relation_weight=1.0)
    # The default: the student's head count (2 of width 16), or its largest divisor that divides the teacher's width.
    two_heads = create_student(teacher, num_encoder_layers=2, hidden_dim=32)
    assert [pair.heads for pair in trainer(two_heads, relation_weight=1.0).relation_pairs] == [2]
    three_heads = create_student(teacher, num_encoder_layers=2, hidden_dim=48)  # 3 heads of 16 against width 64
    assert three_heads.config.num_attention_heads == 3
    assert [pair.heads for pair in trainer(three_heads, relation_weight=1.0).relation_pairs] == [1]
    with pytest.raises(
        InputError,
        match=r"relation_heads = 3 must divide .* student \(32\) and the teacher \(64\); choose one of 1, 2, 4, 8, 16, 32",
    ):
        trainer(two_heads, relation_weight=1.0, relation_heads=3)
    pairs = trainer(two_heads, relation_weight=1.0, relation_heads=8, relation_layers="all", layer_map=None).relation_pairs
    assert [(pair.student_layer, pair.teacher_layer, pair.heads) for pair in pairs] == [(0, 0, 8), (1, 3, 8)]


class QKVRecorder:
    """The queries, keys and values of named layers, recorded by this test's own hooks (independent of the package)."""

    def __init__(self, model, model_type, layers):
        self.values, self.handles = {}, []
        modules = dict(model.named_modules())
        for role, layer in layers:
            prefix, names = SELF_ATTENTION[model_type][role]
            for slot, name in enumerate(names):
                module = modules[prefix.format(layer) + name]
                self.handles.append(module.register_forward_hook(self._keep((role, layer), slot, len(names))))

    def _keep(self, key, slot, count):
        def hook(module, args, output):
            if count == 1:
                width = output.shape[-1] // 3
                self.values[key] = [output[..., i * width : (i + 1) * width] for i in range(3)]
            else:
                self.values.setdefault(key, [None] * 3)[slot] = output

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def make_trainer(model_type, tokenizer, student, teacher, tmp_path, dataset, **settings):
    return distillation_trainer(TASK[model_type], tokenizer, student, teacher, tmp_path, dataset, max_grad_norm=0.0, **settings)


@pytest.mark.parametrize("model_type", ["bert", "t5", "gpt2"])
def test_relation_term_matches_an_independent_computation_across_sizes_and_head_counts(model_type, tiny, tokenizer_for, tmp_path):
    """Teacher 64 wide with 4 heads, student 32 wide with 2: every mapped pair, against explicit float64 loops."""
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=64, heads=4, seed=1)
    student = create_student(teacher, hidden_dim=32, **STUDENT_LAYERS[model_type])
    layer_map = [1, 3]
    roles = list(SELF_ATTENTION[model_type])
    maps = {MAP_SETTING[role]: layer_map for role in roles}
    dataset = DATASET[TASK[model_type]](tokenizer, size=4)
    trainer = make_trainer(
        model_type, tokenizer, student, teacher, tmp_path, dataset, ce_weight=0.0, kd_weight=0.0, relation_weight=1.0,
        relation_heads=2, relation_layers="all", **maps,
    )  # fmt: skip
    logged = trainer.evaluate(dataset)["eval_relation_loss"]

    batch = collator_for(TASK[model_type], tokenizer, student)([dict(row) for row in dataset])
    inputs = {key: value for key, value in batch.items() if key != "decoder_input_ids"}
    if TASK[model_type] != "seq2seq":
        inputs.pop("labels")
    layers = [(role, layer) for role in roles for layer in range(2)]
    student_qkv = QKVRecorder(student, model_type, layers)
    teacher_qkv = QKVRecorder(teacher, model_type, [(role, layer_map[layer]) for role, layer in layers])
    with torch.no_grad():
        student.eval()(**inputs)
        teacher.eval()(**inputs)
    student_qkv.remove()
    teacher_qkv.remove()
    values = []
    for role, layer in layers:
        if role == "decoder":
            mask, causal = batch["labels"] != -100, True
        else:
            mask, causal = batch["attention_mask"].bool(), model_type == "gpt2"
        for student_states, teacher_states in zip(
            student_qkv.values[(role, layer)], teacher_qkv.values[(role, layer_map[layer])]
        ):
            assert student_states.shape[-1] == 32 and teacher_states.shape[-1] == 64
            values.append(explicit_relation_loss(student_states, teacher_states, mask, 2, causal) / mask.sum())
    expected = torch.stack(values).mean().item()
    assert len(values) == 3 * len(layers) and expected > 1e-4
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_relation_term_is_zero_when_the_student_is_the_teacher(model_type, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=2)
    dataset = DATASET[TASK[model_type]](tokenizer, size=4)

    def relation(student):
        trainer = make_trainer(
            model_type, tokenizer, student, teacher, tmp_path, dataset, relation_weight=1.0, relation_layers="all"
        )
        return trainer.evaluate(dataset)["eval_relation_loss"]

    same = copy.deepcopy(teacher)
    assert relation(same) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # the measurement is live: a student whose queries differ is not at 0
        prefix, names = SELF_ATTENTION[model_type]["encoder"]
        same.get_submodule(prefix.format(0) + names[0]).weight.mul_(4.0)
    assert relation(same) > 1e-4


def qkv_gradients(model_type, gradients, layer):
    """The gradients of the student's q, k and v projection weights in ``layer`` of every stack."""
    found = []
    for prefix, names in SELF_ATTENTION[model_type].values():
        if len(names) == 1:  # GPT-2's Conv1D weight is [in, 3 * out]: queries, keys, values side by side
            fused = gradients[prefix.format(layer) + names[0] + ".weight"]
            found += list(fused.chunk(3, dim=1))
        else:
            found += [gradients[prefix.format(layer) + name + ".weight"] for name in names]
    return found


@pytest.mark.parametrize("model_type", ["bert", "t5", "bart", "gpt2"])
def test_one_step_per_family_logs_a_finite_relation_loss_that_trains_query_key_and_value(
    model_type, tiny, tokenizer_for, tmp_path
):
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=64, heads=4)
    student = create_student(teacher, hidden_dim=32, **STUDENT_LAYERS[model_type])
    recorder = GradientRecorder()
    dataset = DATASET[TASK[model_type]](tokenizer, size=8)
    trainer = make_trainer(
        model_type, tokenizer, student, teacher, tmp_path, dataset, ce_weight=0.0, kd_weight=0.0, relation_weight=1.0
    )
    trainer.add_callback(recorder)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert math.isfinite(logs["relation_loss"]) and logs["relation_loss"] > 0
    assert logs["loss"] == pytest.approx(logs["relation_loss"], rel=1e-4, abs=1e-6)  # the only term (logged to 6 places)
    gradients = qkv_gradients(model_type, recorder.gradients[0], layer=1)  # the student's last layer of each stack
    assert len(gradients) == 3 * len(SELF_ATTENTION[model_type]) and all(g.abs().sum() > 0 for g in gradients)
    for model in (student, teacher):  # the hooks lived for the step only
        assert not any(module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("model_type", ["bert", "t5", "gpt2"])
def test_gradient_accumulation_equals_the_full_batch(model_type, tiny, tokenizer_for, tmp_path):
    """One batch of 4 vs. 2 accumulated micro-batches of 2, each padded to its own length: same loss and gradients."""
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4, hidden=64, heads=4)
    student = create_student(teacher, hidden_dim=32, **STUDENT_LAYERS[model_type])
    dataset = DATASET[TASK[model_type]](tokenizer, size=4, offset=0 if model_type == "bert" else 102)
    assert len({len(ids) for ids in dataset["input_ids"]}) > 1, "the micro-batches must differ in padding"
    settings = dict(ce_weight=0.5, kd_weight=0.0, relation_weight=1.0, relation_layers="all")
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        recorder = GradientRecorder()
        trainer = make_trainer(
            model_type, tokenizer, copy.deepcopy(student), teacher, tmp_path / str(batch_size), dataset,
            per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **settings,
        )  # fmt: skip
        trainer.add_callback(recorder)
        trainer.train()
        results.append((trainer.state.log_history[0], recorder.gradients[0]))
    (full_logs, full_grads), (accumulated_logs, accumulated_grads) = results
    assert full_logs["relation_loss"] > 1e-4
    for name in ("loss", "ce_loss", "relation_loss"):
        assert accumulated_logs[name] == pytest.approx(full_logs[name], abs=1e-5, rel=1e-5), name
    assert full_grads.keys() == accumulated_grads.keys()
    for name, gradient in full_grads.items():
        torch.testing.assert_close(accumulated_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("relation_weight", [0.0, 1.0])
def test_hooks_exist_only_while_the_term_is_on_and_nothing_else_is_requested(relation_weight, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for("bert")
    teacher = tiny("bert", layers=4)
    student = create_student(teacher, num_encoder_layers=2)  # layers 0 and 3 of the teacher
    attention_kind = student.config._attn_implementation
    hooked, requested = set(), []
    for side, model in (("student", student), ("teacher", teacher)):
        model.register_forward_pre_hook(
            lambda m, a, k: requested.append({n for n, v in k.items() if v is True}), with_kwargs=True
        )
        for name, module in model.named_modules():
            if name.endswith("attention.self.query") or name.endswith("attention.self.value"):
                module.register_forward_pre_hook(lambda m, a, n=f"{side}:{name}": hooked.add(n) if m._forward_hooks else None)
    dataset = classification_dataset(tokenizer, size=4)
    trainer = make_trainer("bert", tokenizer, student, teacher, tmp_path, dataset, relation_weight=relation_weight)
    trainer.train()
    if relation_weight == 0:
        assert trainer.relation_pairs == () and hooked == set()
        assert all("relation_loss" not in entry for entry in trainer.state.log_history)
    else:  # the student's last layer and the teacher layer mapped to it, nothing else
        assert hooked == {
            f"{side}:bert.encoder.layer.{layer}.attention.self.{kind}"
            for side, layer in (("student", 1), ("teacher", 3))
            for kind in ("query", "value")
        }
        assert "relation_loss" in trainer.state.log_history[0]
    assert requested and all(call == set() for call in requested)  # no hidden states, no attention maps
    assert student.config._attn_implementation == attention_kind  # and no switch to eager attention
    assert not any(module._forward_hooks for model in (student, teacher) for module in model.modules())
