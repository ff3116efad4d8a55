#!/usr/bin/env python
"""Launcher for `seq2seq-distill train_teacher`; runs as is under torchrun:

torchrun --nproc_per_node=N scripts/train_teacher.py [--config FILE] [flags]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone works without pip install too

from seq2seq_distill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train_teacher", *sys.argv[1:]]))
