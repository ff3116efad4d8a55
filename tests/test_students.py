"""create_student: layer maps, parameter-for-parameter copies, save / load, and clear errors."""

import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MarianConfig,
    MarianMTModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from seq2seq_distill import create_student, spread_layers
from seq2seq_distill.families import family_of, find_layer_list
from seq2seq_distill.layer_maps import check_layer_map

AUTO = {
    "t5": AutoModelForSeq2SeqLM,
    "bart": AutoModelForSeq2SeqLM,
    "bert": AutoModelForSequenceClassification,
    "gpt2": AutoModelForCausalLM,
}
STUDENT_ARGS = {
    "t5": dict(num_encoder_layers=2, num_decoder_layers=3),
    "bart": dict(num_encoder_layers=3, num_decoder_layers=1),
    "bert": dict(num_encoder_layers=2),
    "gpt2": dict(num_layers=2),
}


def test_distilbart_layer_choices():
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread_layers(12, 3) == [0, 6, 11]
    assert spread_layers(12, 1) == [0]
    assert spread_layers(12, 12) == list(range(12))
    for teacher in range(1, 25):
        for student in range(2, teacher + 1):
            chosen = spread_layers(teacher, student)
            assert chosen[0] == 0 and chosen[-1] == teacher - 1 and chosen == sorted(set(chosen))


def test_layer_map_errors_name_the_problem():
    with pytest.raises(ValueError, match="more layers"):
        spread_layers(4, 6)
    with pytest.raises(ValueError, match="index 12 is out of range.*12 layers"):
        check_layer_map([0, 12], 12, 2, "encoder_layer_map")
    with pytest.raises(ValueError, match="3 entries but the student has 2"):
        check_layer_map([0, 1, 2], 12, 2, "encoder_layer_map")


def assert_layers_copied(teacher, student):
    family = family_of(teacher.config)
    for stack in family.stacks:
        teacher_layers, student_layers = find_layer_list(teacher, stack), find_layer_list(student, stack)
        layer_map = student.config.student_layer_map[stack.role]
        assert len(student_layers) == len(layer_map)
        for i, j in enumerate(layer_map):
            teacher_state = teacher_layers[j].state_dict()
            for name, tensor in student_layers[i].state_dict().items():
                source = teacher_state.get(name, None)
                if source is None:  # T5's relative bias exists in block 0 only
                    source = teacher_layers[0].state_dict()[name]
                torch.testing.assert_close(tensor, source, rtol=0, atol=0, msg=f"{stack.role} layer {i} <- {j}: {name}")
    student_keys = set(student.state_dict())
    layer_prefixes = tuple(
        name + "."
        for name, module in student.named_modules()
        if any(module is find_layer_list(student, s) for s in family.stacks)
    )
    for name, tensor in student.state_dict().items():
        if not name.startswith(layer_prefixes):  # embeddings, final norms, heads
            torch.testing.assert_close(tensor, teacher.state_dict()[name], rtol=0, atol=0, msg=name)
    assert student_keys


@pytest.mark.parametrize("model_type", ["t5", "bart", "bert", "gpt2"])
def test_student_layers_equal_mapped_teacher_layers(model_type, tiny):
    teacher = tiny(model_type, layers=4)
    student = create_student(teacher, **STUDENT_ARGS[model_type])
    assert student.config.student_init == "copied"
    assert_layers_copied(teacher, student)


@pytest.mark.parametrize(
    "model_type,args,expected",
    [
        ("bart", dict(num_encoder_layers=6, num_decoder_layers=3), {"encoder": [0, 2, 4, 7, 9, 11], "decoder": [0, 6, 11]}),
        ("t5", dict(num_encoder_layers=3, num_decoder_layers=1), {"encoder": [0, 6, 11], "decoder": [0]}),
        ("bert", dict(num_encoder_layers=6), {"encoder": [0, 2, 4, 7, 9, 11]}),
        ("gpt2", dict(num_layers=3), {"layers": [0, 6, 11]}),
    ],
)
def test_twelve_layer_teachers_use_distilbart_maps(model_type, args, expected, tiny):
    teacher = tiny(model_type, layers=12, hidden=16, heads=2)
    student = create_student(teacher, **args)
    assert student.config.student_layer_map == expected
    assert_layers_copied(teacher, student)


def test_explicit_layer_list_and_t5_relative_bias(tiny):
    teacher = tiny("t5", layers=6, hidden=16, heads=2)
    student = create_student(teacher, encoder_layer_map=[5, 1], decoder_layer_map=[2])
    assert student.config.student_layer_map == {"encoder": [5, 1], "decoder": [2]}
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    torch.testing.assert_close(student.encoder.block[0].state_dict()[bias], teacher.encoder.block[0].state_dict()[bias])
    assert_layers_copied(teacher, student)


@pytest.mark.parametrize("model_type", ["t5", "bart", "bert", "gpt2"])
def test_student_saves_and_loads_back_with_auto_class_and_teacher_tokenizer(model_type, tiny, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for(model_type)
    teacher = tiny(model_type, layers=4)
    student = create_student(teacher, **STUDENT_ARGS[model_type]).eval()
    student.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AUTO[model_type].from_pretrained(tmp_path).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "Return the number of items in a sequence."
    assert reloaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    batch = tokenizer([text], return_tensors="pt")
    if model_type in ("t5", "bart"):
        batch["decoder_input_ids"] = torch.tensor([[teacher.config.decoder_start_token_id, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, student(**batch).logits)
    assert loaded.config.student_layer_map == student.config.student_layer_map
    assert loaded.config.distilled_from


def test_other_encoder_families_copy_layers():
    torch.manual_seed(0)
    cases = [
        (
            DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=4, n_heads=2, hidden_dim=32)),
            dict(num_encoder_layers=2),
        ),
        (
            RobertaForSequenceClassification(
                RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
            ),
            dict(num_encoder_layers=3),
        ),
        (
            MarianMTModel(
                MarianConfig(
                    vocab_size=50,
                    d_model=16,
                    encoder_layers=4,
                    decoder_layers=4,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    decoder_start_token_id=0,
                    pad_token_id=0,
                )
            ),
            dict(num_encoder_layers=2, num_decoder_layers=2),
        ),
    ]
    for teacher, args in cases:
        student = create_student(teacher, **args)
        assert type(student) is type(teacher)
        assert_layers_copied(teacher, student)


def test_different_hidden_size_builds_a_fresh_smaller_config(tiny, caplog):
    teacher = tiny("bert", layers=4, hidden=32, heads=4)
    with caplog.at_level(logging.WARNING, logger="seq2seq_distill.students"):
        student = create_student(teacher, num_encoder_layers=2, hidden_dim=16)
    assert "freshly initialized" in caplog.text
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2  # head size 8 kept
    assert student.config.intermediate_size == 32 and student.config.student_init == "fresh"
    assert student.config.student_layer_map == {"encoder": [0, 3]}
    with torch.no_grad():
        assert student(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, teacher.config.num_labels)
    t5_student = create_student(
        tiny("t5", layers=4, hidden=32, heads=4), num_encoder_layers=2, num_decoder_layers=2, hidden_dim=16
    )
    assert (t5_student.config.d_model, t5_student.config.num_heads, t5_student.config.d_ff) == (16, 2, 32)
    with pytest.raises(ValueError, match="multiple of the teacher's attention head size 8"):
        create_student(teacher, hidden_dim=20)


def test_vocab_size_shrinks_padded_rows_and_keeps_the_rest(tiny):
    teacher = tiny("t5", layers=2, hidden=16, heads=2)
    rows = teacher.config.vocab_size
    padded = create_student(teacher, num_encoder_layers=1, vocab_size=rows - 8)
    assert padded.get_input_embeddings().weight.shape[0] == rows - 8
    torch.testing.assert_close(padded.get_input_embeddings().weight, teacher.get_input_embeddings().weight[: rows - 8])


def test_bad_student_requests_are_clear_errors(tiny):
    teacher = tiny("t5", layers=4, hidden=16, heads=2)
    with pytest.raises(ValueError, match="--num_encoder_layers 6 is more than the teacher's 4 encoder layers"):
        create_student(teacher, num_encoder_layers=6)
    with pytest.raises(ValueError, match="encoder_layer_map index 4 is out of range"):
        create_student(teacher, encoder_layer_map=[0, 4])
    with pytest.raises(ValueError, match="a 't5' teacher takes .*num_encoder_layers.*not --num_layers"):
        create_student(teacher, num_layers=2)
    with pytest.raises(ValueError, match="not supported.*supported: .*bart"):
        from transformers import LlamaConfig, LlamaForCausalLM

        create_student(
            LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=32,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    num_key_value_heads=2,
                )
            ),
            num_layers=1,
        )
