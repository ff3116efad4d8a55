"""Stopping a run cleanly: SIGTERM (a preemptible machine being reclaimed) or Ctrl-C saves a checkpoint and stops.

:class:`GracefulStop` is a ``TrainerCallback``. Between ``on_train_begin`` and ``on_train_end`` it replaces the
SIGTERM and SIGINT handlers with one that only records the signal; at the next optimizer step's end it asks the
Trainer to save a checkpoint and stop, so ``trainer.train()`` returns normally with the checkpoint on disk. The
caller then sees ``stop.received`` and decides what to do; :func:`seq2seq_distill.training.train_model` raises
:class:`TrainingInterrupted` instead of writing a final model, so a stopped run never looks finished.

A second signal while the first is being handled restores the previous handlers and re-delivers the signal (press
Ctrl-C twice to stop at once, without the checkpoint). A signal the process was started ignoring (SIGINT under
``nohup`` or in a script's background job) stays ignored, as the shell convention and Python's own startup have it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """A run stopped by a signal; the command line prints the message and exits with ``128 + signal``."""

    def __init__(self, signum: int, step: int, checkpoint: str | None = None, finished_in: str | None = None):
        self.signum, self.step, self.checkpoint, self.finished_in = signum, step, checkpoint, finished_in
        name = signal.Signals(signum).name
        if finished_in is not None:
            message = f"{name} received at the last step {step}: the run finished and is saved in {finished_in}; stopping"
        else:
            where = f"a checkpoint is in {checkpoint}" if checkpoint else "no checkpoint was saved"
            message = (
                f"{name} received: training stopped at step {step} and {where}; run the same command with "
                "--resume_from_checkpoint latest to continue"
            )
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """The shell's convention for "ended by this signal": 143 for SIGTERM, 130 for Ctrl-C."""
        return 128 + self.signum


class GracefulStop(TrainerCallback):
    """Save a checkpoint and stop training at the next step end after SIGTERM or SIGINT."""

    def __init__(self, signals=HANDLED_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self.checkpoint: str | None = None
        self._previous: dict[int, object] = {}

    # ---- signal handlers ---------------------------------------------------------------------------------------

    def install(self) -> None:
        if self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: SIGTERM / Ctrl-C keep their default behaviour")
            return
        for signum in self.signals:
            if signal.getsignal(signum) == signal.SIG_IGN:
                # Started ignoring it (`nohup`, a background job of a script): the launcher asked that this signal
                # not stop the run, and Python itself leaves an ignored SIGINT alone. Keep it that way.
                logger.debug("%s is ignored by this process: left ignored", signal.Signals(signum).name)
                continue
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the handlers back; safe to call more than once (the pipeline calls it in a ``finally``)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # second signal: stop now, the old way
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        logger.warning("%s received: saving a checkpoint at the end of this step, then stopping", signal.Signals(signum).name)

    # ---- TrainerCallback ---------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.checkpoint = None, None
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_requested(args):
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # save first and fast: a preempted machine has seconds left

    def on_save(self, args, state, control, **kwargs):
        if self.received is not None:
            self.checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.received is not None and self.checkpoint is not None:
            # Saved already at the step end; no end-of-epoch evaluation or second save of the same step.
            control.should_save = False
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def _stop_requested(self, args) -> bool:
        """Whether any process got a signal; every process must stop at the same step to save together."""
        if args.world_size <= 1 or not torch.distributed.is_initialized():
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else int(self.received)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = int(flag.item())
        return bool(flag.item())


def any_nonfinite(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[1]`` float flag on the loss's device: 1 when the loss or a term is NaN or infinite (no device sync)."""
    values = torch.stack([loss.detach().float().reshape(()), *[value.detach().float().reshape(()) for value in terms.values()]])
    return (~torch.isfinite(values).all()).float().reshape(1)


def nonfinite_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> list[str]:
    """The names of the terms that are NaN or infinite (``loss`` itself when only the total is); for the message."""
    values = torch.stack([loss.detach().float().reshape(()), *[value.detach().float().reshape(()) for value in terms.values()]])
    finite = torch.isfinite(values).tolist()
    if all(finite):
        return []
    return [name for name, ok in zip(terms, finite[1:], strict=True) if not ok] or ["loss"]
