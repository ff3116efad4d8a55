"""Command line: ``seq2seq-distill <command> [--config FILE] [flags]``, also ``python -m seq2seq_distill`` and the
thin launchers in ``scripts/`` (which run under ``torchrun``).

Every command is parsed by ``HfArgumentParser``, so every ``TrainingArguments`` flag works and both
``--num_encoder_layers`` and ``--num-encoder-layers`` are accepted. A JSON or YAML config file holds the same names
as the flags; the flags override it. Keys and flags no command knows are errors; those another command uses are
ignored (a flag with a note), so one config file or one copied command line can serve ``train_teacher``,
``distill``, ``benchmark`` and ``pipeline``.

This module is the shell only: the table of commands, parsing (built-in defaults < embedded preset < config file <
flags), help, the dry run and the exit statuses. The work of each command is a function in ``commands.py``, config
files are read and written by ``config_files.py``, the starting values are in ``presets.py`` and the value checks
beside the argument classes in ``arguments.py``.

About 410 lines: the table of the seven commands and the parsing rules users meet (presets, config files, flags
of other commands, help, dry run) read best together.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import HfArgumentParser

from .arguments import (
    BenchmarkArguments,
    CacheArguments,
    DataArguments,
    LoraArguments,
    ModelArguments,
    PipelineArguments,
    PseudoLabelArguments,
    RunArguments,
    Seq2SeqDistillationTrainingArguments,
    check_run_values,
)
from .config_files import config_defaults, read_config_file, write_config
from .errors import InputError, NonFiniteLossError
from .guards import TrainingInterrupted
from .presets import DATA_SOURCE_KEYS, PIPELINE_DEFAULTS, TRAINING_DEFAULTS, TRANSFER_SOURCE_KEYS, embedded_defaults
from .processes import is_main_process

__all__ = ["COMMANDS", "Command", "all_setting_names", "build_parser", "console_main", "main", "parse_command", "run"]

logger = logging.getLogger("seq2seq_distill")

# --dry-run: a few steps on a few examples, outputs in a separate folder.
DRY_RUN = {
    "train_size": 16,
    "val_size": 8,
    "test_size": 8,
    "max_steps": 2,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 1,
    "latency_examples": 2,
    "warmup_batches": 1,
    "num_sample_predictions": 2,
    "pseudo_label_batch_size": 4,
}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    argument_types: tuple[type, ...]
    run: Callable[[dict[type, object]], object]
    output_dir_default: str


def _say(message: str) -> None:
    """A result line: printed by the main process only (under torchrun the others did not write what it names)."""
    if is_main_process():
        print(message)


def _run_train_teacher(parsed):
    from .commands import train_teacher

    run = train_teacher(parsed[ModelArguments], parsed[DataArguments], parsed[_TRAINING], parsed[PipelineArguments])
    _say(f"teacher saved to {run.path}")


def _run_make_student(parsed):
    from .commands import make_student

    path = make_student(parsed[ModelArguments], parsed[_TRAINING], parsed[_TRAINING].output_dir)
    _say(f"student saved to {path}")


def _run_distill(parsed):
    from .commands import distill

    run = distill(parsed[ModelArguments], parsed[DataArguments], parsed[_TRAINING], parsed[LoraArguments])
    what = "distilled student" if run.name == "distilled" else "baseline student (CE only: no distillation term is on)"
    _say(f"{what} saved to {run.path}")


def _run_cache_teacher(parsed):
    from .commands import cache_teacher

    path = cache_teacher(parsed[ModelArguments], parsed[DataArguments], parsed[_TRAINING], parsed[CacheArguments])
    _say(f"teacher cache written to {path}; distill from it with --teacher_cache {path} --student PATH")


def _run_pseudo_label(parsed):
    from .commands import pseudo_label

    path = pseudo_label(parsed[ModelArguments], parsed[DataArguments], parsed[PseudoLabelArguments])
    _say(f"pseudo-labelled dataset saved to {path}; distill it with --dataset_local_path {path}")


def _run_benchmark(parsed):
    from .commands import benchmark_command

    results = benchmark_command(parsed[ModelArguments], parsed[DataArguments], parsed[BenchmarkArguments])
    _say(results["verdict"])
    _say(f"report: {os.path.join(parsed[BenchmarkArguments].benchmark_output_dir, 'benchmark_report.md')}")


def _run_pipeline(parsed):
    from .commands import run_pipeline

    training_args = parsed[_TRAINING]
    results = run_pipeline(
        parsed[ModelArguments], parsed[DataArguments], training_args, parsed[PipelineArguments], parsed[BenchmarkArguments]
    )
    _say(results["verdict"])
    _say(f"report: {os.path.join(training_args.output_dir, 'benchmark', 'benchmark_report.md')}")


_TRAINING = Seq2SeqDistillationTrainingArguments
COMMANDS = {
    command.name: command
    for command in (
        Command(
            "train_teacher",
            "fine-tune a teacher on the task (or train a small one from scratch when no --teacher is given)",
            (ModelArguments, DataArguments, _TRAINING, PipelineArguments, RunArguments),
            _run_train_teacher,
            "outputs/teacher",
        ),
        Command(
            "make_student",
            "build a layer-copied student from a teacher and save it (no training)",
            (ModelArguments, _TRAINING, RunArguments),
            _run_make_student,
            "outputs/student",
        ),
        Command(
            "distill",
            "distill a teacher into a student built from the layer flags (or given with --student)",
            (ModelArguments, DataArguments, _TRAINING, LoraArguments, RunArguments),
            _run_distill,
            "outputs/distilled",
        ),
        Command(
            "benchmark",
            "compare models side by side: quality, speed and size",
            (ModelArguments, DataArguments, BenchmarkArguments, RunArguments),
            _run_benchmark,
            "outputs/benchmark",
        ),
        Command(
            "pipeline",
            "teacher -> student -> distill (and a baseline) -> benchmark, in one command",
            (ModelArguments, DataArguments, _TRAINING, PipelineArguments, BenchmarkArguments, RunArguments),
            _run_pipeline,
            "outputs/pipeline",
        ),
        Command(
            "cache_teacher",
            "run the teacher once and store its top-k log-probabilities (and, with --cache_hidden_states, the mapped "
            "layers' hidden states); distill --teacher_cache then trains without it",
            (ModelArguments, DataArguments, _TRAINING, CacheArguments, RunArguments),
            _run_cache_teacher,
            "outputs/teacher_cache",
        ),
        Command(
            "pseudo_label",
            "let the teacher write the targets of a dataset (sequence-level distillation); distill reads the result",
            (ModelArguments, DataArguments, PseudoLabelArguments, RunArguments),
            _run_pseudo_label,
            "outputs/pseudo_labels",
        ),
    )
}


class _Parser(HfArgumentParser):
    """argparse's errors as one InputError line instead of a usage dump and exit."""

    def error(self, message):
        raise InputError(message)


def build_parser(command: Command) -> _Parser:
    parser = _Parser(command.argument_types, prog=f"seq2seq-distill {command.name}", description=command.help)
    known = _destinations(parser)
    parser.set_defaults(**{key: value for key, value in TRAINING_DEFAULTS.items() if key in known})
    if "output_dir" in known:
        parser.set_defaults(output_dir=command.output_dir_default)
    if "benchmark_output_dir" in known and command.name == "benchmark":
        parser.set_defaults(benchmark_output_dir=command.output_dir_default)
    return parser


def _destinations(parser) -> set[str]:
    return {action.dest for action in parser._actions if action.dest != "help"}


def all_setting_names() -> set[str]:
    names: set[str] = set()
    for command in COMMANDS.values():
        names |= _destinations(HfArgumentParser(command.argument_types))
    return names


# ---- parsing ---------------------------------------------------------------------------------------------------


def parse_command(command: Command, argv: Sequence[str]) -> dict[type, object]:
    """Dataclass instances of a command: built-in defaults < embedded preset < config file < flags."""
    argv = _default_create_config_path(list(argv), command)
    if command.name == "benchmark":  # --output_dir is where every command writes its results; here it is the reports'
        argv = [_renamed_flag(arg, "output_dir", "benchmark_output_dir") for arg in argv]
    parser = build_parser(command)
    config_path = _flag_value(argv, "config")
    file_values = read_config_file(config_path) if config_path else {}
    given = set(file_values) | {_flag_name(arg) for arg in argv if arg.startswith("--")}
    known = _destinations(parser)
    embedded = embedded_defaults(_flag_value(argv, "model_type"))
    preset = {key: value for key, value in embedded.items() if key in known}
    if any(arg in ("-h", "--help") for arg in argv):
        # Help shows the defaults of a real run; what the embedded default changes is listed apart.
        changes = ", ".join(f"--{key} {value}" for key, value in preset.items())
        parser.epilog = (
            "Without --dataset, --dataset_local_path, --teacher, --teacher_local_path or --config, the command runs the "
            f"embedded default (stdlib docstrings, a small teacher from scratch), which changes: {changes}."
        )
    else:
        if not config_path and not given & set(DATA_SOURCE_KEYS):
            parser.set_defaults(**preset)
        if command.name == "pipeline" and not given & set(TRANSFER_SOURCE_KEYS):
            parser.set_defaults(**PIPELINE_DEFAULTS)  # its recipe on any data: augment when no transfer set is given
    if file_values:
        parser.set_defaults(**config_defaults(file_values, parser, all_setting_names(), command.name))
    try:
        *objects, remaining = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
    except InputError:
        raise
    except (ValueError, TypeError, OSError) as error:  # TrainingArguments.__post_init__ rejecting a combination
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"invalid {command.name} settings: {reason}; fix that flag or config key") from None
    if remaining:
        remaining = _ignore_other_commands_flags(remaining, parser, command)
    if remaining:
        flag = next((item for item in remaining if item.startswith("-")), remaining[0])
        close = difflib.get_close_matches(_flag_name(flag), sorted(_destinations(parser)), n=1)
        hint = f"; did you mean --{close[0]}?" if close else f"; see seq2seq-distill {command.name} --help"
        raise InputError(f"unknown argument {flag!r} for {command.name}{hint}")
    check_run_values(objects)
    return {type(obj): obj for obj in objects}


def _ignore_other_commands_flags(remaining: list[str], parser: _Parser, command: Command) -> list[str]:
    """Flags that another command knows (``--per_device_train_batch_size`` copied from a training command into
    ``benchmark``) are dropped with their values and one note on stderr, as config keys are; the rest is returned."""
    own, everything = _destinations(parser), all_setting_names()
    kept, ignored, index = [], [], 0
    while index < len(remaining):
        item = remaining[index]
        index += 1
        name = _flag_name(item)
        if not (item.startswith("--") and name in everything and name not in own):
            kept.append(item)
            continue
        ignored.append(f"--{name}")
        while "=" not in item and index < len(remaining) and not remaining[index].startswith("--"):
            index += 1  # its values
    if ignored and is_main_process():
        print(f"note: {command.name} ignores {', '.join(ignored)} (used by other commands)", file=sys.stderr)
    return kept


def _renamed_flag(arg: str, old: str, new: str) -> str:
    if arg.startswith("--") and _flag_name(arg) == old:
        return "--" + new + (arg[arg.index("=") :] if "=" in arg else "")
    return arg


def _flag_name(arg: str) -> str:
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_")


def _flag_value(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if _flag_name(arg) == name and arg.startswith("--"):
            if "=" in arg:
                return arg.split("=", 1)[1]
            if index + 1 < len(argv):
                return argv[index + 1]
    return None


def _default_create_config_path(argv: list[str], command: Command) -> list[str]:
    """``--create-config`` without a path writes ``<command>_config.yaml`` in the current folder."""
    for index, arg in enumerate(argv):
        if _flag_name(arg) == "create_config" and "=" not in arg:
            if index + 1 == len(argv) or argv[index + 1].startswith("--"):
                argv.insert(index + 1, f"{command.name}_config.yaml")
    return argv


def apply_dry_run(parsed: dict[type, object]) -> None:
    """Shrink the run to a few steps on a few examples, writing to ``<output_dir>-dry-run``."""
    for obj in parsed.values():
        for key, value in DRY_RUN.items():
            if hasattr(obj, key):
                setattr(obj, key, value)
    for obj in parsed.values():  # the training arguments', or pseudo_label's own
        if isinstance(getattr(obj, "output_dir", None), str):
            obj.output_dir = obj.output_dir.rstrip("/") + "-dry-run"
    benchmark = parsed.get(BenchmarkArguments)
    if benchmark is not None:
        benchmark.benchmark_output_dir = benchmark.benchmark_output_dir.rstrip("/") + "-dry-run"


# ---- entry points ----------------------------------------------------------------------------------------------


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  {name.ljust(width)}  {command.help}" for name, command in COMMANDS.items())
    return (
        "usage: seq2seq-distill <command> [--config FILE] [--create-config [PATH]] [--dry-run] [flags]\n\n"
        f"commands:\n{rows}\n\n'seq2seq-distill <command> --help' lists every flag of a command."
    )


def run(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; commands: {', '.join(COMMANDS)}"
        raise InputError(f"unknown command {argv[0]!r}{hint}")
    command = COMMANDS[name]
    parsed = parse_command(command, argv[1:])
    run_args = parsed[RunArguments]
    if run_args.dry_run:
        apply_dry_run(parsed)
    if run_args.create_config:
        write_config(run_args.create_config, parsed, build_parser(command), command.name)
        print(f"wrote {run_args.create_config}; run: seq2seq-distill {command.name} --config {run_args.create_config}")
        return 0
    _configure_logging()
    command.run(parsed)
    return 0


def _configure_logging() -> None:
    import datasets
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    # Under torchrun the other processes do the same work: their INFO lines would repeat the main process's.
    logging.getLogger("seq2seq_distill").setLevel(logging.INFO if is_main_process() else logging.WARNING)
    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_warning()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad input prints one line and returns 2 (set SEQ2SEQ_DISTILL_DEBUG=1 for the traceback).

    A loss term that turns NaN or infinite stops the run with a checkpoint from before that step and returns 3.

    A run stopped by SIGTERM or Ctrl-C saves a checkpoint, prints how to resume and returns 128 + the signal number
    (143, 130), so schedulers and ``cmd && next`` see that it did not finish.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    group_was_ours = not process_group_initialized()  # a caller's own group stays theirs
    try:
        return run(argv)
    except InputError as error:
        if os.environ.get("SEQ2SEQ_DISTILL_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # SIGTERM / Ctrl-C: a checkpoint was saved, no traceback
        print(f"stopped: {stop}", file=sys.stderr)
        return stop.exit_code
    except NonFiniteLossError as error:  # the numerical guard: a checkpoint from before the bad step was saved
        if os.environ.get("SEQ2SEQ_DISTILL_DEBUG"):
            raise
        print(f"stopped: {error}", file=sys.stderr)
        return 3
    finally:
        if group_was_ours and process_group_initialized():
            # Under torchrun a process that exits with its gloo/NCCL group alive can abort in the group's
            # destructor ("terminate called without an active exception"): a failed run after a finished one.
            torch.distributed.destroy_process_group()


def process_group_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def console_main() -> None:
    sys.exit(main())
