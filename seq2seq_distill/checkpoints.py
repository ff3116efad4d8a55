"""Checkpoints to resume from: ``latest`` or a folder, and never a half-written one.

The Trainer writes a checkpoint in place, ``trainer_state.json`` last, so a run killed while saving leaves a
``checkpoint-N`` folder without it (or without weights); transformers' own ``get_last_checkpoint`` would pick it.
"""

from __future__ import annotations

import json
import logging
import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from .errors import InputError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_WEIGHTS = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def check_resume(training_args, output_dir: str | None = None) -> None:
    """Fail on a bad --resume_from_checkpoint before any data or model is loaded, and pin it to a folder."""
    folder = os.path.join(output_dir or training_args.output_dir, CHECKPOINTS_DIR)
    training_args.resume_from_checkpoint = resolve_resume(training_args.resume_from_checkpoint, folder)


def resolve_resume(resume: str | None, checkpoints_dir: str) -> str | None:
    """``--resume_from_checkpoint`` as a path: a checkpoint folder, or ``latest`` / ``true`` for the newest one.

    The Trainer writes a checkpoint in place, ``trainer_state.json`` last, so a run killed while saving leaves a
    ``checkpoint-N`` folder without it. ``latest`` skips such folders (with a warning) and takes the newest complete
    one; naming an incomplete one is an error.
    """
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("latest", "last", "true", "True"):
        last = latest_complete_checkpoint(checkpoints_dir) if os.path.isdir(checkpoints_dir) else None
        if last is None:
            raise InputError(f"--resume_from_checkpoint {resume}: no complete checkpoint under {checkpoints_dir!r} yet")
        return last
    if not os.path.isdir(resume):
        available = sorted(os.listdir(checkpoints_dir)) if os.path.isdir(checkpoints_dir) else []
        hint = f"checkpoints there: {', '.join(available)}" if available else "use 'latest' to pick the newest"
        raise InputError(f"--resume_from_checkpoint {resume!r} does not exist ({hint})")
    problem = checkpoint_problem(resume)
    if problem:
        raise InputError(
            f"--resume_from_checkpoint {resume!r} is incomplete ({problem}): the run stopped while saving it; "
            "resume from 'latest' or an earlier checkpoint"
        )
    return resume


def checkpoint_problem(folder: str) -> str | None:
    """Why a checkpoint folder cannot be resumed from (half-written), or None when it is complete."""
    state_file = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(state_file):
        return f"no {TRAINER_STATE_NAME}"
    try:
        with open(state_file, encoding="utf-8") as handle:
            json.load(handle)
    except (ValueError, OSError):
        return f"{TRAINER_STATE_NAME} is not readable JSON"
    names = os.listdir(folder)
    if not any(name in CHECKPOINT_WEIGHTS for name in names):
        return "no model weights"
    return None


def latest_complete_checkpoint(checkpoints_dir: str, *, warn: bool = True) -> str | None:
    """The highest-numbered ``checkpoint-N`` folder that is complete; incomplete newer ones are skipped."""
    numbered = []
    for name in os.listdir(checkpoints_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if match and os.path.isdir(os.path.join(checkpoints_dir, name)):
            numbered.append((int(match.group(1)), os.path.join(checkpoints_dir, name)))
    for _, folder in sorted(numbered, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if warn:
            logger.warning("skipping the incomplete checkpoint %s (%s): the run stopped while saving it", folder, problem)
    return None
