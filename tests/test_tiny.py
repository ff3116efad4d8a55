"""The offline tokenizers and tiny configs behind the embedded default and the tests."""

import subprocess
import sys

import pytest

from seq2seq_distill.tiny import BOS_ID, EOS_ID, PAD_ID, tiny_model, train_tokenizer

TEXTS = ["Return the sum of two numbers.", "Open a file and return a stream.", "Return a new sorted list."] * 3
SCRIPT = (
    "import hashlib, json; from seq2seq_distill.tiny import train_tokenizer; "
    f"t = train_tokenizer({TEXTS!r}, vocab_size=60); "
    "print(hashlib.sha256(json.dumps(sorted(t.get_vocab().items())).encode()).hexdigest())"
)


def test_the_same_texts_give_the_same_tokenizer_in_every_process():
    """The tokenizers library's trainers break ties in a per-process hash order; ours must not."""
    digests = {
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout for _ in range(3)
    }
    assert len(digests) == 1


def test_frequent_words_are_whole_tokens_and_rare_ones_are_spelled():
    tokenizer = train_tokenizer(TEXTS, vocab_size=60)
    vocabulary = tokenizer.get_vocab()
    assert "return" in vocabulary and "##x" not in vocabulary  # no 'x' in the texts
    assert tokenizer.tokenize("return") == ["return"]
    assert tokenizer.tokenize("unreturned")[0] != "unreturned"  # not a vocabulary word: spelled from pieces
    assert tokenizer.decode(tokenizer("Return unreturned")["input_ids"], skip_special_tokens=True) == "return unreturned"
    assert tokenizer.tokenize("zebra") == ["<unk>"]  # no 'z' in the texts: unknown, as WordPiece does
    assert tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<s>"]) == [PAD_ID, EOS_ID, BOS_ID]


@pytest.mark.parametrize("model_type,first,last", [("t5", None, EOS_ID), ("bart", BOS_ID, EOS_ID), ("bert", BOS_ID, EOS_ID)])
def test_each_family_frames_sequences_its_own_way(model_type, first, last):
    ids = train_tokenizer(TEXTS, vocab_size=60, model_type=model_type)("return a list")["input_ids"]
    assert ids[-1] == last and (first is None or ids[0] == first)
    assert train_tokenizer(TEXTS, vocab_size=60, model_type="gpt2")("return a list")["input_ids"][-1] != EOS_ID


def test_tiny_t5_starts_near_a_uniform_prediction():
    import math

    import torch

    model = tiny_model("t5", 500, hidden=64, layers=2)
    inputs = torch.randint(5, 500, (4, 12))
    loss = model(input_ids=inputs, labels=torch.randint(5, 500, (4, 6))).loss.item()
    assert abs(loss - math.log(500)) < 1.5  # T5 scales its decoder output; without that the start is ~40
