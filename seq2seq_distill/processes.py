"""Which process this is and which device it runs on: the one rule for each that every entry point uses (who writes
files and prints results; where a model runs outside the Trainer)."""

from __future__ import annotations

import os

import torch

__all__ = ["default_device", "is_main_process"]


def is_main_process() -> bool:
    """True in a single-process run and on global rank 0 under torchrun / accelerate launch (the one that writes).

    Before a process group exists (argument parsing, data loading), the launcher's ``RANK`` says which one we are.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def default_device(requested: str | None = None, use_cpu: bool = False) -> torch.device:
    """The device a command runs a model on outside the Trainer (benchmark, teacher cache, pseudo-labels).

    ``requested`` (e.g. ``--device cuda:1``) wins; otherwise a CUDA GPU when one is available and ``use_cpu``
    (``TrainingArguments.use_cpu``) is not set, else the CPU.
    """
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")
