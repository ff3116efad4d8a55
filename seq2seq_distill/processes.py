"""Which process this is: the one rule every entry point uses to decide who writes files and prints results."""

from __future__ import annotations

import os

import torch


def is_main_process() -> bool:
    """True in a single-process run and on global rank 0 under torchrun / accelerate launch (the one that writes).

    Before a process group exists (argument parsing, data loading), the launcher's ``RANK`` says which one we are.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
