"""Token-level distillation between a student and a teacher whose tokenizers differ: the pure pieces.

Three steps, each a plain function on strings or tensors, so the trainer (or a user) can wire them:

1. :func:`align_by_offsets` pairs runs of tokens on both sides that cover the same characters of one text, from
   each tokenizer's ``return_offsets_mapping``.
2. :func:`merge_span_log_probs` turns a run of several tokens into one row by the chain rule, so the two sides'
   rows describe the same span of text.
3. :func:`hybrid_cross_tokenizer_loss` compares the rows: exact KL over the tokens both vocabularies share where
   the realized tokens are the same, ULD (:func:`~seq2seq_distill.losses.sorted_probability_l1`) elsewhere;
   ``losses.universal_logit_distillation_loss`` is the ULD-only variant on rows aligned one to one.

:class:`VocabularyMap` is the token-string correspondence between the two vocabularies, built once per pair of
tokenizers. Losses are sums over the rows given, in float32, like everything in ``losses``.

About 540 lines, one job: everything token-level distillation across tokenizers needs, from strings (offsets,
canonical token text, the vocabulary map) to tensors (span merge, ULD and the hybrid, the held-out measure); the
string half would be the first to move out.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .errors import InputError
from .losses import get_divergence, sorted_probability_l1

WORD_START = "\u2581"  # "▁": the canonical mark of a token that begins a word (SentencePiece's own spelling)

# The columns of a tokenized split that crosses tokenizers, defined here (not in ``data``, which imports this module)
# so that :func:`shared_token_divergence` reads the rows the data module writes. ``TEACHER_COLUMNS[name]`` holds what
# the teacher reads as ``name`` (``labels``: its tokenization of the target, seq2seq and causal LM). Classification
# shares the label space; the token-level tasks share the target *text*, and ``SPAN_COLUMNS`` say which positions of
# the two tokenizations cover the same part of it (:func:`span_ids`): per position, the id of its aligned span, or -1.
TEACHER_COLUMNS = {name: f"teacher_{name}" for name in ("input_ids", "attention_mask", "token_type_ids", "labels")}
SPAN_COLUMNS = {"student": "target_span", "teacher": "teacher_target_span"}


class AlignedGroup(NamedTuple):
    """One aligned span: the token positions on each side (consecutive, in order) that cover the same characters."""

    student_positions: tuple[int, ...]
    teacher_positions: tuple[int, ...]


def _end_keys(text: str, offsets: Sequence[Sequence[int]], side: str) -> list[tuple[int, int, bool]]:
    """``(position, end key, whitespace only)`` for each real token; the end key counts non-space characters."""
    non_space_before = [0]
    for character in text:
        non_space_before.append(non_space_before[-1] + (not character.isspace()))
    tokens, previous = [], 0
    for position, (start, end) in enumerate(offsets):
        start, end = int(start), int(end)
        if end <= start:  # special tokens have (0, 0); a zero-width EOS has (n, n): neither covers text
            continue
        if end > len(text):
            raise ValueError(f"{side} token {position} ends at character {end}, past the text's {len(text)} characters")
        key = non_space_before[end]
        if key < previous:
            raise ValueError(
                f"{side} offsets go backwards at token {position}; pass the offsets of one text (not a pair of texts)"
            )
        previous = key
        tokens.append((position, key, text[start:end].isspace()))
    return tokens


def align_by_offsets(
    text: str, student_offsets: Sequence[Sequence[int]], teacher_offsets: Sequence[Sequence[int]]
) -> list[AlignedGroup]:
    """Group consecutive tokens of two tokenizations of ``text`` into spans that end at the same place on both sides.

    ``student_offsets`` and ``teacher_offsets`` are ``[(start, end), ...]`` character spans into ``text`` (what a
    fast tokenizer returns with ``return_offsets_mapping=True``, in characters of the Python string, so accents
    and emoji count as the characters they are). Tokens that cover no text (special tokens at ``(0, 0)``) are left
    out; the positions returned index the original sequences, so they can index logits directly.

    "Ends at the same place" is measured in *non-space* characters: byte-level BPE puts a word's leading space in
    its token (``"Ġworld"`` spans `` world``) while WordPiece leaves it out (``"world"``), and some tokenizers keep a
    trailing space; counting only non-space characters makes both agree. A token of whitespace only (``"Ċ"`` for a
    newline) has no counterpart on the other side; it joins the group that follows it, as byte-level BPE attaches
    a space to the next word (at the very end of the text, the last group). A span one side splits and the other
    does not (``"café"`` as ``ca`` + ``fé`` against ``café``) becomes one group of two tokens against one; spans
    that overlap without a common end merge until they reach one. Tokens after the last common end (one side
    truncated) are left out: nothing on the other side covers the same text.
    """
    student_tokens = _end_keys(text, student_offsets, "student")
    teacher_tokens = _end_keys(text, teacher_offsets, "teacher")
    student_ends = {key for _, key, blank in student_tokens if not blank}
    teacher_ends = {key for _, key, blank in teacher_tokens if not blank}
    boundaries = sorted(student_ends & teacher_ends)
    if not boundaries:
        return []

    def assign(tokens: list[tuple[int, int, bool]]) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in boundaries]
        for position, key, blank in tokens:
            if blank:
                # The first boundary strictly after: the group of the word this whitespace precedes.
                index = bisect.bisect_right(boundaries, key)
                if index == len(boundaries) and key == boundaries[-1]:
                    index -= 1  # trailing whitespace: nothing follows, so it closes the last group
            else:
                index = bisect.bisect_left(boundaries, key)  # the first boundary at or after this token's end
            if index < len(boundaries):
                groups[index].append(position)
        return groups

    return [
        AlignedGroup(tuple(student), tuple(teacher))
        for student, teacher in zip(assign(student_tokens), assign(teacher_tokens), strict=True)
    ]


def merge_span_log_probs(log_probs: torch.Tensor, token_ids: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """One row ``[G, V]`` per group of positions: the chain-rule log-probability of the group's span.

    ``log_probs`` ``[N, V]``: row ``p`` is the model's log-distribution *of the token at position p* (for a
    seq2seq decoder, the logits row that predicts ``labels[p]``; for a causal LM, the row before it);
    ``token_ids`` ``[N]`` are the realized tokens. For a group ``p_1 < ... < p_k``,

        merged[v] = sum_{i<k} log_probs[p_i, token_ids[p_i]] + log_probs[p_k, v],

    the log-probability of the span "realized prefix, then v" (TRL GOLD's ``"bayesian"`` merge, done in log space
    so a small prefix probability needs no clamp). The distribution at the *last* position is the one that has
    seen the realized prefix, which is why it is the one kept. The row is unnormalized: its mass is the prefix's
    probability, and :func:`~seq2seq_distill.losses.sorted_probability_l1` on ``exp`` of it compares that mass
    too. A one-token group is its row unchanged. GOLD's default ``"observed"`` merge (the first position's
    distribution times the later tokens' probabilities) is exact only for the realized first token, since the
    later factors are conditioned on it and not on the alternative ``v``; we do not offer it.
    """
    spans = torch.full((log_probs.shape[0],), -1, dtype=torch.long)
    for index, group in enumerate(groups):
        spans[list(group)] = index
    return merge_spans(log_probs[None], token_ids.view(1, -1), spans[None].to(log_probs.device)).log_probs


class MergedSpans(NamedTuple):
    """The merged rows of a batch, one per span in (row, span id) order, and what the hybrid loss asks of each."""

    log_probs: torch.Tensor  # [G, V] float32, chain-rule rows (see merge_span_log_probs)
    sizes: torch.Tensor  # [G] how many tokens the span has on this side
    last_tokens: torch.Tensor  # [G] the realized token at the span's last position


def merge_spans(log_probs: torch.Tensor, token_ids: torch.Tensor, spans: torch.Tensor) -> MergedSpans:
    """:func:`merge_span_log_probs` over a batch: ``log_probs`` ``[B, T, V]``, ``token_ids`` and ``spans`` ``[B, T]``.

    ``spans[b, t]`` is the id (0, 1, ...) of the aligned span position ``t`` belongs to in row ``b``, or -1
    (the data module's ``SPAN_COLUMNS``, written by :func:`span_ids`); both sides of a pair number their spans
    alike, so their merged rows come out in the same order and row ``g`` of one side faces row ``g`` of the other.
    Positions of a span are consecutive and in order, whatever the padding side.
    """
    log_probs = log_probs.float()
    rows, positions = (spans >= 0).nonzero(as_tuple=True)  # row-major: each span's positions in order
    span_counts = (spans.max(dim=1).values + 1).clamp_min(0)
    first_span = span_counts.cumsum(0) - span_counts
    owner = first_span[rows] + spans[rows, positions]
    total = int(span_counts.sum())
    tokens = token_ids[rows, positions].long()
    realized = log_probs[rows, positions, tokens]
    order = torch.arange(rows.numel(), device=spans.device)
    last = torch.zeros(total, dtype=torch.long, device=spans.device).scatter_reduce(
        0, owner, order, reduce="amax", include_self=False
    )
    prefix = torch.zeros(total, dtype=log_probs.dtype, device=log_probs.device).index_add(0, owner, realized) - realized[last]
    merged = log_probs[rows[last], positions[last]] + prefix[:, None]
    sizes = torch.bincount(owner, minlength=total)
    return MergedSpans(merged, sizes, tokens[last])


def span_ids(
    text: str,
    student_offsets: Sequence[Sequence[int]],
    teacher_offsets: Sequence[Sequence[int]],
    student_usable: Sequence[bool],
    teacher_usable: Sequence[bool],
    ends: tuple[int, int] | None = None,
) -> tuple[list[int], list[int]]:
    """Per position of each tokenization of ``text``, the id of its aligned span (0, 1, ...), or -1.

    The spans are :func:`align_by_offsets`' groups, kept only where every position of the group on both sides
    is ``usable`` (a target the loss sees: not a prompt token, not a causal LM's first token, which no row
    predicts), and numbered in order. ``ends``: the positions of the two end-of-sequence tokens, paired as a last
    span of their own (they cover no text, but both models predict them). Computed once per row by the data
    module, so the trainer only merges rows.
    """
    student_span, teacher_span = [-1] * len(student_offsets), [-1] * len(teacher_offsets)
    groups = [
        (group.student_positions, group.teacher_positions)
        for group in align_by_offsets(text, student_offsets, teacher_offsets)
        if all(student_usable[p] for p in group.student_positions) and all(teacher_usable[p] for p in group.teacher_positions)
    ]
    if ends is not None and student_usable[ends[0]] and teacher_usable[ends[1]]:
        groups.append(((ends[0],), (ends[1],)))
    for index, (student_positions, teacher_positions) in enumerate(groups):
        for position in student_positions:
            student_span[position] = index
        for position in teacher_positions:
            teacher_span[position] = index
    return student_span, teacher_span


# GPT-2's byte-to-printable-character table, inverted: byte-level BPE spells byte b as chr(table[b]).
def _byte_decoder() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    characters, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(character): byte for byte, character in zip(printable, characters, strict=True)}


_BYTE_DECODER = _byte_decoder()
CONVENTIONS = ("byte_level", "wordpiece", "sentencepiece", "plain")


def canonical_token(token: str, convention: str) -> str | None:
    """The surface text of a vocabulary entry, ``"▁"``-prefixed when it begins a word; None if it has no text.

    Conventions differ in how they mark word starts: byte-level BPE spells the leading space (``"Ġworld"``),
    WordPiece marks the *continuations* (``"##ld"``) and leaves word starts bare, SentencePiece writes ``"▁world"``.
    Keeping the word-start mark (rather than stripping every mark) keeps the map one to one: byte-level BPE has
    both ``"Ġworld"`` and ``"world"``, which mean different things. A byte-level token that is not whole UTF-8
    (half of an accented character) has no text and is shared with nothing. WordPiece treats punctuation as its
    own word, so its ``","`` reads as a word start and will not match byte-level's ``","``: those positions fall
    back to ULD.
    """
    if convention == "byte_level":
        try:
            text = bytes(_BYTE_DECODER[character] for character in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
        return WORD_START + text[1:] if text.startswith(" ") and len(text) > 1 else text
    if convention == "wordpiece":
        return token[2:] if token.startswith("##") and len(token) > 2 else WORD_START + token
    if convention in ("sentencepiece", "plain"):
        return token
    raise ValueError(f"unknown token convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")


def _decoder_types(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        if "type" in node:
            yield node["type"]
            if node["type"] == "Replace" and WORD_START in json.dumps(node.get("pattern", ""), ensure_ascii=False):
                yield "Metaspace"
        for value in node.values():
            yield from _decoder_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _decoder_types(value)


def token_convention(tokenizer: Any) -> str:
    """Which word-start convention a fast tokenizer's vocabulary uses, read from its decoder."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder")
    types = set(_decoder_types(decoder))
    for decoder_type, convention in (("ByteLevel", "byte_level"), ("WordPiece", "wordpiece"), ("Metaspace", "sentencepiece")):
        if decoder_type in types:
            return convention
    return "plain"


class VocabularyMap:
    """The tokens two vocabularies share, by canonical surface text (:func:`canonical_token`).

    ``student_ids`` and ``teacher_ids`` are ``[S]`` long tensors, pair ``i`` being the same token on both sides;
    ``student_to_teacher`` maps one id to the other. Special tokens are left out: their meaning is a role, not a
    string. When several ids on one side have the same text, the lowest id is kept so the map stays one to one.
    """

    def __init__(
        self,
        student_vocab: Mapping[str, int],
        teacher_vocab: Mapping[str, int],
        student_convention: str,
        teacher_convention: str,
        student_special: Iterable[str] = (),
        teacher_special: Iterable[str] = (),
    ) -> None:
        def by_text(vocab: Mapping[str, int], convention: str, special: Iterable[str]) -> dict[str, int]:
            skip, texts = set(special), {}
            for token, index in sorted(vocab.items(), key=lambda item: item[1]):
                text = None if token in skip else canonical_token(token, convention)
                if text is not None and text not in texts:
                    texts[text] = index
            return texts

        student_texts = by_text(student_vocab, student_convention, student_special)
        teacher_texts = by_text(teacher_vocab, teacher_convention, teacher_special)
        shared = sorted(set(student_texts) & set(teacher_texts), key=lambda text: student_texts[text])
        if not shared:
            raise InputError(
                "the student's and the teacher's vocabularies share no token, so the hybrid loss has nothing to "
                "compare exactly; use ULD (universal logit distillation) alone: --matched_kl_weight 0 --uld_weight 0.5"
            )
        self.student_to_teacher = {student_texts[text]: teacher_texts[text] for text in shared}
        self.student_ids = torch.tensor([student_texts[text] for text in shared], dtype=torch.long)
        self.teacher_ids = torch.tensor([teacher_texts[text] for text in shared], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.student_to_teacher)

    def matched(self, student_token_id: int, teacher_token_id: int) -> bool:
        """Whether the two realized tokens are the same token."""
        return self.student_to_teacher.get(int(student_token_id)) == int(teacher_token_id)


def _vocabulary_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([token_convention(tokenizer), vocab, sorted(tokenizer.all_special_tokens)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_MAPS: dict[tuple[str, str], VocabularyMap] = {}


def vocabulary_map(student_tokenizer: Any, teacher_tokenizer: Any) -> VocabularyMap:
    """The :class:`VocabularyMap` of two fast tokenizers, built once per pair of vocabularies.

    Keyed by a fingerprint of each vocabulary (its entries, convention and special tokens) rather than by the
    tokenizer objects, so a reloaded tokenizer, or one in another trainer, reuses the map.
    """
    key = (_vocabulary_fingerprint(student_tokenizer), _vocabulary_fingerprint(teacher_tokenizer))
    if key not in _MAPS:
        _MAPS[key] = VocabularyMap(
            student_tokenizer.get_vocab(),
            teacher_tokenizer.get_vocab(),
            token_convention(student_tokenizer),
            token_convention(teacher_tokenizer),
            student_tokenizer.all_special_tokens,
            teacher_tokenizer.all_special_tokens,
        )
    return _MAPS[key]


def matched_groups(
    groups: Sequence[AlignedGroup],
    student_token_ids: Sequence[int] | torch.Tensor,
    teacher_token_ids: Sequence[int] | torch.Tensor,
    mapping: VocabularyMap,
) -> torch.Tensor:
    """``[G]`` bool: True where a group is one token on each side and the two realized tokens are the same token.

    Only there is an exact KL meaningful: a merged group's row is a distribution over spans with different
    prefixes on the two sides, and two different realized tokens mean the rows are conditioned differently.
    """
    sizes = [
        torch.tensor([len(getattr(group, side)) for group in groups], dtype=torch.long)
        for side in ("student_positions", "teacher_positions")
    ]
    last = [
        torch.tensor([int(ids[getattr(group, side)[-1]]) for group in groups], dtype=torch.long)
        for ids, side in ((student_token_ids, "student_positions"), (teacher_token_ids, "teacher_positions"))
    ]
    rows = int(max([*mapping.student_ids.tolist(), *last[0].tolist()], default=0)) + 1
    return same_single_token(sizes[0], last[0], sizes[1], last[1], shared_token_table(mapping, rows))


def same_single_token(
    student_sizes: torch.Tensor,
    student_tokens: torch.Tensor,
    teacher_sizes: torch.Tensor,
    teacher_tokens: torch.Tensor,
    shared_table: torch.Tensor,
) -> torch.Tensor:
    """The hybrid's rule, vectorized: a span is matched where it is one token on each side and the student's
    realized token maps (``shared_table``, from :func:`shared_token_table`) to the teacher's."""
    table = shared_table.to(student_tokens.device)
    same_token = table[student_tokens.clamp_max(table.numel() - 1)] == teacher_tokens.to(table.device)
    return (student_sizes == 1) & (teacher_sizes.to(table.device) == 1) & same_token


def hybrid_cross_tokenizer_loss(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    matched: torch.Tensor,
    mapping: VocabularyMap,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kl_sum, uld_sum)`` over aligned rows, kept apart so each part has its own weight.

    ``student_log_probs`` ``[G, Vs]`` and ``teacher_log_probs`` ``[G, Vt]`` are aligned rows (from
    :func:`merge_span_log_probs`, of log-softmaxes taken at ``temperature``); ``matched`` ``[G]`` bool marks the
    rows where both sides realized the same token (:func:`matched_groups`).

    On matched rows: the registered ``divergence`` (forward KL by default) between the two distributions
    restricted to the shared tokens (``mapping``'s pairs) and *renormalized over them*, times T² as in
    ``losses.logit_distillation_loss``. Renormalizing compares the two models' conditional distributions given
    that the next token is one both could have produced; the mass each puts outside the shared set has no
    counterpart, and a tail bucket would equate two different sets of tokens. On the other rows: ULD, the sorted
    L1 distance of ``exp`` of the rows (no T², see ``losses.universal_logit_distillation_loss``). Both sums are
    float32 and zero (with a gradient path) when no row falls in their part.
    """
    if student_log_probs.shape[0] != teacher_log_probs.shape[0] or matched.shape[0] != student_log_probs.shape[0]:
        raise ValueError(
            f"aligned rows differ: student {tuple(student_log_probs.shape)}, teacher {tuple(teacher_log_probs.shape)}, "
            f"matched {tuple(matched.shape)}"
        )
    student_log_probs, teacher_log_probs = student_log_probs.float(), teacher_log_probs.float()
    matched = matched.to(student_log_probs.device).bool()
    student_shared = student_log_probs[matched][:, mapping.student_ids.to(student_log_probs.device)]
    teacher_shared = teacher_log_probs[matched][:, mapping.teacher_ids.to(teacher_log_probs.device)]
    student_shared = student_shared - student_shared.logsumexp(-1, keepdim=True)
    teacher_shared = teacher_shared - teacher_shared.logsumexp(-1, keepdim=True)
    kl_sum = get_divergence(divergence)(student_shared, teacher_shared, beta).sum() * temperature**2
    uld_sum = sorted_probability_l1(student_log_probs[~matched].exp(), teacher_log_probs[~matched].exp()).sum()
    return kl_sum, uld_sum


def _span_rows(model: Any, row: Mapping[str, Any], side: str, task: str, token_ids: torch.Tensor) -> dict:
    """``{span id: (size, realized last token, log-distribution over token_ids)}`` of one unpadded row on one side."""
    prefix = "teacher_" if side == "teacher" else ""
    device = next(model.parameters()).device
    input_ids = torch.tensor([row[f"{prefix}input_ids"]], device=device)
    labels = torch.tensor(row[f"{prefix}labels"], device=device)
    if task == "seq2seq":  # the decoder's row p predicts labels[p]
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels[None])
        logits, shift = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits[0], 0
    else:  # a causal LM's row p - 1 predicts the token at p; no span holds position 0 (span_ids leaves it out)
        logits, shift = model(input_ids=input_ids).logits[0], 1
    spans = row[SPAN_COLUMNS[side]]
    positions: dict[int, list[int]] = {}
    for position, span in enumerate(spans):
        if span >= 0:
            positions.setdefault(span, []).append(position)
    ids = token_ids.to(device)
    return {
        span: (len(held), int(labels[held[-1]]), logits[held[-1] - shift, ids].float().log_softmax(-1))
        for span, held in positions.items()
    }


@torch.no_grad()
def shared_token_divergence(
    student: Any,
    teacher: Any,
    rows: Iterable[Mapping[str, Any]],
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    task: str = "seq2seq",
) -> tuple[float, int]:
    """``(mean KL, count)``: how far a student of another tokenizer is from its teacher, teacher-forced on ``rows``.

    Over the aligned spans that are one token on each side with the same realized token (where the hybrid's matched
    KL applies), the mean KL(teacher || student) at T = 1 of the two next-token distributions, each restricted to
    the tokens both vocabularies share (:func:`vocabulary_map`) and renormalized over them; ``count`` is the number
    of such spans. Only there do the two models answer the same question (the same prefix of text, the same token
    next) over the same outcomes, so the figure compares like with like and needs no sorting (ULD) or merging; it
    is the measure of "closer to the teacher" of the tests and of ``benchmarks/cross_tokenizer.py``, and it can be
    computed for a student trained with CE alone, whose loss never looked at it.

    ``rows``: a tokenized split of ``data.prepare_data`` with the teacher's tokenizer (its ``TEACHER_COLUMNS`` and
    ``SPAN_COLUMNS``); ``task``: ``"seq2seq"`` or ``"causal_lm"``. Each row runs on its own, unpadded, so padding
    cannot move the figure. Both models are put in eval mode for the measure and returned to their modes after.
    Raises ValueError when no span qualifies: the mean would be undefined.
    """
    if task not in ("seq2seq", "causal_lm"):
        raise ValueError(f"shared_token_divergence compares token-level tasks (seq2seq, causal_lm), not {task!r}")
    mapping = vocabulary_map(student_tokenizer, teacher_tokenizer)
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    try:
        for row in rows:
            student_spans = _span_rows(student, row, "student", task, mapping.student_ids)
            teacher_spans = _span_rows(teacher, row, "teacher", task, mapping.teacher_ids)
            for span, (size, token, student_log_probs) in student_spans.items():
                teacher_size, teacher_token, teacher_log_probs = teacher_spans[span]
                if size == teacher_size == 1 and mapping.matched(token, teacher_token):
                    teacher_log_probs = teacher_log_probs.to(student_log_probs.device)
                    total += float((teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum())
                    count += 1
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    if count == 0:
        raise ValueError(
            "no aligned span is one token on each side with the same realized token: the divergence over shared "
            "tokens is undefined for these rows (do the two vocabularies share words?)"
        )
    return total / count, count


def shared_token_table(mapping: VocabularyMap, student_rows: int) -> torch.Tensor:
    """``[student_rows]`` long: the teacher id of each student token both vocabularies share, -1 elsewhere."""
    table = torch.full((student_rows,), -1, dtype=torch.long)
    keep = mapping.student_ids < student_rows
    table[mapping.student_ids[keep]] = mapping.teacher_ids[keep]
    return table


def cross_tokenizer_sums(
    student: MergedSpans,
    teacher: MergedSpans,
    *,
    mapping: VocabularyMap | None = None,
    shared_table: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(matched_kl_sum, uld_sum)`` of a batch's aligned spans (:func:`merge_spans` of each side).

    Without ``mapping`` (ULD alone) every span is compared by ULD and the first sum is 0. With it (the hybrid), a
    span is *matched* where it is one token on each side and the two realized tokens are the same token (the
    :func:`same_single_token`, via ``shared_table`` of :func:`shared_token_table`): exact KL over the shared
    tokens there, ULD on the rest (:func:`hybrid_cross_tokenizer_loss`). The rows were merged from log-softmaxes at
    ``temperature``.
    """
    if student.log_probs.shape[0] != teacher.log_probs.shape[0]:
        raise ValueError(
            f"the student has {student.log_probs.shape[0]} aligned spans and the teacher {teacher.log_probs.shape[0]}; "
            "both sides' span ids must come from one span_ids call per row"
        )
    if mapping is None:
        uld_sum = sorted_probability_l1(student.log_probs.exp(), teacher.log_probs.exp()).sum()
        return student.log_probs.new_zeros(()), uld_sum
    table = shared_table if shared_table is not None else shared_token_table(mapping, student.log_probs.shape[1])
    matched = same_single_token(student.sizes, student.last_tokens, teacher.sizes, teacher.last_tokens, table)
    return hybrid_cross_tokenizer_loss(
        student.log_probs, teacher.log_probs, matched, mapping, divergence=divergence, beta=beta, temperature=temperature
    )


__all__ = [
    "SPAN_COLUMNS",
    "TEACHER_COLUMNS",
    "AlignedGroup",
    "MergedSpans",
    "VocabularyMap",
    "align_by_offsets",
    "canonical_token",
    "cross_tokenizer_sums",
    "hybrid_cross_tokenizer_loss",
    "matched_groups",
    "merge_span_log_probs",
    "merge_spans",
    "same_single_token",
    "shared_token_divergence",
    "shared_token_table",
    "span_ids",
    "token_convention",
    "vocabulary_map",
]
