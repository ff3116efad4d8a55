import functools
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub; fail loudly if something tries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@functools.cache
def _tokenizer(model_type: str):
    from seq2seq_distill.stdlib_corpus import build_summarization_corpus
    from seq2seq_distill.tiny import train_tokenizer

    texts = [row["document"] + "\n" + row["summary"] for row in build_summarization_corpus()]
    return train_tokenizer(texts, vocab_size=600, model_type=model_type)


@pytest.fixture(scope="session")
def tokenizer_for():
    """tokenizer_for("t5") -> a WordPiece tokenizer trained on stdlib docstrings, framed for that family."""
    return _tokenizer


@pytest.fixture
def tiny():
    """tiny("t5", layers=4, hidden=32, seed=0) -> a seeded tiny model sized to its family's tokenizer."""
    from seq2seq_distill.tiny import tiny_model

    def build(model_type: str, seed: int = 0, vocab_size: int | None = None, **kwargs):
        torch.manual_seed(seed)
        if model_type == "bert":
            kwargs.setdefault("num_labels", 5)  # the five stdlib areas of helpers.classification_dataset
        return tiny_model(model_type, vocab_size or len(_tokenizer(model_type)), **kwargs)

    return build
