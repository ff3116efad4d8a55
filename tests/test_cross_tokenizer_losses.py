"""Cross-tokenizer distillation pieces against hand computations: ULD, the chain-rule merge, the hybrid's KL, the
alignment by character offsets (hand-made and from two real tokenizers) and the vocabulary map."""

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from seq2seq_distill.cross_tokenizer import (
    AlignedGroup,
    VocabularyMap,
    align_by_offsets,
    canonical_token,
    hybrid_cross_tokenizer_loss,
    matched_groups,
    merge_span_log_probs,
    token_convention,
    vocabulary_map,
)
from seq2seq_distill.errors import InputError
from seq2seq_distill.losses import sorted_probability_l1, universal_logit_distillation_loss
from seq2seq_distill.tiny import train_tokenizer


def softmax(row, temperature=1.0):
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def uld_by_hand(p, q):
    """Sort both decreasing, pad the shorter with zeros, sum |difference|: the paper's closed form, step by step."""
    p, q = sorted(p, reverse=True), sorted(q, reverse=True)
    width = max(len(p), len(q))
    p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
    return sum(abs(a - b) for a, b in zip(p, q))


STUDENT_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, -2.0]]  # 3 tokens
TEACHER_LOGITS = [[0.5, 2.5, -1.0, 0.0, 1.0], [3.0, 0.0, 0.0, -2.0, 1.0], [0.0, 1.0, 2.0, 0.0, -1.0]]  # 5 tokens


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_matches_sorted_padded_l1_by_hand(temperature):
    value = universal_logit_distillation_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), temperature=temperature)
    expected = sum(uld_by_hand(softmax(s, temperature), softmax(t, temperature)) for s, t in zip(STUDENT_LOGITS, TEACHER_LOGITS))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_uld_pads_the_smaller_side_whichever_it_is():
    student = [[0.6, 0.1, 0.2, 0.05, 0.05]]  # the student's vocabulary is the larger one here
    teacher = [[0.3, 0.7]]
    value = sorted_probability_l1(torch.tensor(student), torch.tensor(teacher))
    # 0.6 vs 0.7, 0.2 vs 0.3, then the student's tail 0.1 + 0.05 + 0.05 against padding.
    assert value.tolist() == pytest.approx([0.1 + 0.1 + 0.2])
    assert value.tolist() == pytest.approx([uld_by_hand(student[0], teacher[0])])


def test_uld_is_zero_for_a_permutation_padded_with_zero_probability():
    value = sorted_probability_l1(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0]]))
    assert value.item() == pytest.approx(0.0, abs=1e-7)


def test_merge_is_the_chain_rule_on_the_realized_prefix():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]])
    token_ids = torch.tensor([0, 1, 2, 0])
    merged = merge_span_log_probs(probs.log(), token_ids, [(0, 1, 2), (3,)]).exp()
    # Span "t0=0, t1=1, then v": P(0) * P(1 | 0) * P(v | 0, 1), the distribution at the LAST position scaled.
    assert merged[0].tolist() == pytest.approx([0.5 * 0.6 * 0.2, 0.5 * 0.6 * 0.2, 0.5 * 0.6 * 0.6])
    assert merged[1].tolist() == pytest.approx([0.7, 0.2, 0.1])


def test_merge_then_uld_compares_span_probabilities():
    """A span one side splits in two: ULD between the teacher's one row and the student's merged row."""
    student = torch.tensor([[0.8, 0.2], [0.25, 0.75]])  # "ca" (id 0) then "fé" (id 1)
    teacher = torch.tensor([[0.1, 0.6, 0.3]])  # "café" in one token
    student_row = merge_span_log_probs(student.log(), torch.tensor([0, 1]), [(0, 1)]).exp()
    value = sorted_probability_l1(student_row, teacher)
    assert value.item() == pytest.approx(uld_by_hand([0.8 * 0.25, 0.8 * 0.75], [0.1, 0.6, 0.3]), rel=1e-6)


# --- the vocabulary map and the hybrid ---------------------------------------------------------------------------

STUDENT_VOCAB = {"a": 0, "Ġb": 1, "c": 2, "Ġd": 3}  # byte-level: "Ġ" is a leading space
TEACHER_VOCAB = {"[CLS]": 0, "##a": 1, "b": 2, "x": 3, "d": 4}  # WordPiece: "##" marks a continuation


def test_canonical_tokens_agree_across_conventions():
    assert canonical_token("Ġworld", "byte_level") == canonical_token("world", "wordpiece") == "▁world"
    assert canonical_token("ld", "byte_level") == canonical_token("##ld", "wordpiece") == "ld"
    assert canonical_token("▁world", "sentencepiece") == "▁world"
    assert canonical_token("Ġcaf\u00c3\u00a9", "byte_level") == "▁café"  # the UTF-8 bytes of "é", spelled byte-level
    assert canonical_token("\u00c3", "byte_level") is None  # half a character: shared with nothing


def test_vocabulary_map_pairs_tokens_by_text():
    mapping = VocabularyMap(STUDENT_VOCAB, TEACHER_VOCAB, "byte_level", "wordpiece", teacher_special=["[CLS]"])
    assert mapping.student_to_teacher == {0: 1, 1: 2, 3: 4}
    assert mapping.student_ids.tolist() == [0, 1, 3] and mapping.teacher_ids.tolist() == [1, 2, 4]


def test_hybrid_kl_part_matches_explicit_renormalized_kl_and_uld_part_matches_by_hand():
    mapping = VocabularyMap(STUDENT_VOCAB, TEACHER_VOCAB, "byte_level", "wordpiece", teacher_special=["[CLS]"])
    student = [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1]]
    teacher = [[0.1, 0.5, 0.2, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2], [0.3, 0.1, 0.1, 0.2, 0.3]]
    matched = torch.tensor([True, False, True])
    kl_sum, uld_sum = hybrid_cross_tokenizer_loss(torch.tensor(student).log(), torch.tensor(teacher).log(), matched, mapping)
    expected_kl = 0.0
    for row in (0, 2):
        s = [student[row][i] for i in (0, 1, 3)]
        t = [teacher[row][j] for j in (1, 2, 4)]
        s, t = [x / sum(s) for x in s], [x / sum(t) for x in t]
        expected_kl += sum(ti * math.log(ti / si) for si, ti in zip(s, t))
    assert kl_sum.item() == pytest.approx(expected_kl, rel=1e-5)
    assert uld_sum.item() == pytest.approx(uld_by_hand(student[1], teacher[1]), rel=1e-6)


def test_hybrid_kl_part_scales_by_temperature_squared():
    mapping = VocabularyMap(STUDENT_VOCAB, TEACHER_VOCAB, "byte_level", "wordpiece", teacher_special=["[CLS]"])
    student, teacher = torch.randn(2, 4).log_softmax(-1), torch.randn(2, 5).log_softmax(-1)
    matched = torch.tensor([True, True])
    at_one, _ = hybrid_cross_tokenizer_loss(student, teacher, matched, mapping)
    at_three, uld = hybrid_cross_tokenizer_loss(student, teacher, matched, mapping, temperature=3.0)
    assert at_three.item() == pytest.approx(9.0 * at_one.item(), rel=1e-5)
    assert uld.item() == 0.0


def test_matched_groups_needs_one_token_each_side_and_the_same_token():
    mapping = VocabularyMap(STUDENT_VOCAB, TEACHER_VOCAB, "byte_level", "wordpiece", teacher_special=["[CLS]"])
    groups = [AlignedGroup((0,), (1,)), AlignedGroup((1, 2), (2,)), AlignedGroup((3,), (3,))]
    student_ids, teacher_ids = [1, 2, 0, 3], [0, 2, 2, 4]
    assert matched_groups(groups, student_ids, teacher_ids, mapping).tolist() == [True, False, True]
    assert matched_groups(groups, [0, 2, 0, 3], teacher_ids, mapping).tolist() == [False, False, True]


def test_no_shared_token_raises_an_input_error_that_suggests_uld():
    with pytest.raises(InputError, match="share no token.*ULD") as caught:
        VocabularyMap({"Ġa": 0, "b": 1}, {"[CLS]": 0, "z": 1}, "byte_level", "wordpiece", teacher_special=["[CLS]"])
    assert "\n" not in str(caught.value)


# --- alignment on hand-made offsets ------------------------------------------------------------------------------


def groups_of(result):
    return [(list(group.student_positions), list(group.teacher_positions)) for group in result]


def test_alignment_agrees_on_leading_space_conventions_and_skips_special_tokens():
    text = "hello world"
    byte_level = [(0, 5), (5, 11)]  # "hello", "Ġworld": the space is inside the second token
    wordpiece = [(0, 0), (0, 5), (6, 11), (0, 0)]  # [CLS] hello world [SEP]
    assert groups_of(align_by_offsets(text, byte_level, wordpiece)) == [([0], [1]), ([1], [2])]


def test_alignment_agrees_when_one_side_keeps_a_trailing_space():
    text = "hello world"
    trailing = [(0, 6), (6, 11)]  # "hello ", "world"
    assert groups_of(align_by_offsets(text, trailing, [(0, 5), (6, 11)])) == [([0], [0]), ([1], [1])]


def test_alignment_merges_a_span_one_side_splits():
    text = "unbelievable"
    student = [(0, 2), (2, 6), (6, 12)]  # un | beli | evable
    teacher = [(0, 6), (6, 12)]  # unbeli | evable
    assert groups_of(align_by_offsets(text, student, teacher)) == [([0, 1], [0]), ([2], [1])]


def test_alignment_merges_overlapping_spans_until_a_common_end():
    text = "abcdefg"
    student = [(0, 3), (3, 7)]
    teacher = [(0, 2), (2, 5), (5, 7)]
    assert groups_of(align_by_offsets(text, student, teacher)) == [([0, 1], [0, 1, 2])]


def test_alignment_counts_unicode_characters_not_bytes():
    text = "naïve café 🙂"  # ï, é and the emoji are one character each: 12 characters in all
    assert len(text) == 12
    # Byte-level BPE: "na", "ïve", "Ġcafé", then the emoji's bytes over two tokens with overlapping character spans.
    student = [(0, 2), (2, 5), (5, 10), (10, 12), (11, 12)]
    # WordPiece: "naïve", "caf", "##é", "🙂".
    teacher = [(0, 5), (6, 9), (9, 10), (11, 12)]
    assert groups_of(align_by_offsets(text, student, teacher)) == [([0, 1], [0]), ([2], [1, 2]), ([3, 4], [3])]


def test_whitespace_only_tokens_join_the_next_group_or_else_the_last():
    student = [(0, 1), (1, 2), (2, 3)]  # "a", "Ċ", "b"
    teacher = [(0, 1), (2, 3)]  # WordPiece drops the newline
    assert groups_of(align_by_offsets("a\nb", student, teacher)) == [([0], [0]), ([1, 2], [1])]
    assert groups_of(align_by_offsets("a\n", [(0, 1), (1, 2)], [(0, 1)])) == [([0, 1], [0])]


def test_tokens_past_the_last_common_end_are_left_out():
    text = "one two"
    assert groups_of(align_by_offsets(text, [(0, 3), (3, 7)], [(0, 3)])) == [([0], [0])]


def test_offsets_that_go_backwards_are_refused():
    with pytest.raises(ValueError, match="backwards"):
        align_by_offsets("ab cd", [(0, 2), (3, 5), (0, 2)], [(0, 2)])


# --- alignment with two real tokenizers --------------------------------------------------------------------------

CORPUS = [
    "The naïve café served crème brûlée to everyone 🙂 today.",
    "Unbelievable things happen when tokenizers disagree about words.",
    "hello world, the quick brown fox jumps over the lazy dog\nand sleeps.",
] * 4


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<pad>", "</s>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>")


@pytest.fixture(scope="module")
def wordpiece_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=120)


def test_real_tokenizers_differ_and_have_their_conventions(byte_level_tokenizer, wordpiece_tokenizer):
    assert len(byte_level_tokenizer) != len(wordpiece_tokenizer)
    assert token_convention(byte_level_tokenizer) == "byte_level"
    assert token_convention(wordpiece_tokenizer) == "wordpiece"


@pytest.mark.parametrize("text", [*CORPUS[:3], "naïve 🙂🙂 unbelievably lazy\n\nfoxes"])
def test_real_alignment_groups_cover_the_same_text_on_both_sides(byte_level_tokenizer, wordpiece_tokenizer, text):
    student = byte_level_tokenizer(text, return_offsets_mapping=True)
    teacher = wordpiece_tokenizer(text, return_offsets_mapping=True)
    groups = align_by_offsets(text, student["offset_mapping"], teacher["offset_mapping"])
    assert groups

    def span(offsets, positions):
        return text[offsets[positions[0]][0] : offsets[positions[-1]][1]].strip()

    for group in groups:
        assert span(student["offset_mapping"], group.student_positions) == span(
            teacher["offset_mapping"], group.teacher_positions
        )
    # Every token that covers text is in exactly one group, on both sides, in order.
    for offsets, side in ((student["offset_mapping"], 0), (teacher["offset_mapping"], 1)):
        positions = [position for group in groups for position in group[side]]
        assert positions == [index for index, (start, end) in enumerate(offsets) if end > start]
    # The two tokenizers really do split each text differently somewhere, so the test exercises merging.
    assert any(len(group.student_positions) != len(group.teacher_positions) for group in groups)


def test_real_vocabulary_map_is_cached_and_pairs_word_starts(byte_level_tokenizer, wordpiece_tokenizer):
    mapping = vocabulary_map(byte_level_tokenizer, wordpiece_tokenizer)
    assert vocabulary_map(byte_level_tokenizer, wordpiece_tokenizer) is mapping
    student_vocab, teacher_vocab = byte_level_tokenizer.get_vocab(), wordpiece_tokenizer.get_vocab()
    assert mapping.student_to_teacher[student_vocab["Ġthe"]] == teacher_vocab["the"]
    for special in wordpiece_tokenizer.all_special_tokens:
        assert teacher_vocab[special] not in mapping.teacher_ids.tolist()
