"""Tokenizers trained offline and tiny model configs: the embedded default's teacher and the tests' models.

Nothing here touches the network: tokenizers are trained with the ``tokenizers`` library on text given to them,
and models are built from configs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

# One special-token layout for every family, ids 0..4, so configs below can name them directly.
PAD, EOS, UNK, BOS, MASK = "<pad>", "</s>", "<unk>", "<s>", "<mask>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS, MASK)
PAD_ID, EOS_ID, UNK_ID, BOS_ID, MASK_ID = range(5)

# How each family frames a sequence: T5 appends </s>, BART and BERT wrap in <s> ... </s>, GPT-2 adds nothing.
_TEMPLATES = {"t5": "$A </s>", "bart": "<s> $A </s>", "bert": "<s> $A </s>", "gpt2": "$A"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, model_type: str = "t5") -> PreTrainedTokenizerFast:
    """A lower-cased WordPiece tokenizer for ``texts``, framed the way ``model_type`` expects; the same texts always
    give the same tokenizer.

    The vocabulary is built here rather than by the ``tokenizers`` trainers, whose tie-breaking follows a hash order
    that changes from process to process (two runs, or two torchrun workers, would get different tokenizers): the
    special tokens, every character seen (alone and as a ``##`` continuation, so any word can be spelled), then whole
    words by frequency, ties broken alphabetically. WordPiece's greedy longest match splits the other words.
    """
    if model_type not in _TEMPLATES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(_TEMPLATES)}")
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in counts for character in word})
    vocabulary = list(dict.fromkeys([*SPECIAL_TOKENS, *characters, *(f"##{character}" for character in characters)]))
    words = sorted((word for word in counts if len(word) > 1), key=lambda word: (-counts[word], word))
    vocabulary += words[: max(0, vocab_size - len(vocabulary))]
    tokenizer = Tokenizer(models.WordPiece({token: index for index, token in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    return _framed(tokenizer, model_type)


def _framed(tokenizer: Tokenizer, model_type: str) -> PreTrainedTokenizerFast:
    """``tokenizer`` framing each sequence as ``model_type`` does, wrapped with this module's special tokens."""
    template = _TEMPLATES[model_type]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template,
        pair=f"{template} $B:1 </s>:1" if template != "$A" else "$A $B:1",
        special_tokens=[(EOS, EOS_ID), (BOS, BOS_ID)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=BOS,
        mask_token=MASK,
        cls_token=BOS,
        sep_token=EOS,
    )


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = 1000, model_type: str = "bart") -> PreTrainedTokenizerFast:
    """BART's and GPT-2's algorithm for ``texts``: byte-level BPE, no normalization, framed the way ``model_type``
    expects, with the special-token ids of :func:`tiny_config`. Another algorithm and vocabulary than
    :func:`train_tokenizer`'s WordPiece: the tokenizer of a student distilled across tokenizers.

    It is trained by the ``tokenizers`` BPE trainer, whose ties between equally frequent pairs may fall another way in
    another process: where several processes must share one tokenizer, build it once and save it.
    """
    if model_type not in _TEMPLATES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(_TEMPLATES)}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return _framed(tokenizer, model_type)


def tiny_config(
    model_type: str, vocab_size: int, *, hidden: int = 32, layers: int = 4, heads: int = 4, num_labels: int = 2, **overrides
):
    """A small config of ``model_type`` with the special-token ids of :func:`train_tokenizer`."""
    ffn = 2 * hidden
    if model_type == "t5":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=ffn,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=PAD_ID,
            dropout_rate=0.0,
        )
    elif model_type == "bart":
        config = BartConfig(
            vocab_size=vocab_size,
            d_model=hidden,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ffn,
            decoder_ffn_dim=ffn,
            max_position_embeddings=512,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            decoder_start_token_id=EOS_ID,
            forced_eos_token_id=EOS_ID,
            dropout=0.0,
            attention_dropout=0.0,
        )
    elif model_type == "bert":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=512,
            pad_token_id=PAD_ID,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    elif model_type == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=512,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        raise ValueError(f"unknown model type {model_type!r}; choose t5, bart, bert or gpt2")
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


_MODEL_CLASSES = {
    "t5": T5ForConditionalGeneration,
    "bart": BartForConditionalGeneration,
    "bert": BertForSequenceClassification,
    "gpt2": GPT2LMHeadModel,
}


def tiny_model(model_type: str, vocab_size: int, **config_kwargs) -> PreTrainedModel:
    """A randomly initialized model of :func:`tiny_config` with the family's usual head."""
    return _MODEL_CLASSES[model_type](tiny_config(model_type, vocab_size, **config_kwargs))
