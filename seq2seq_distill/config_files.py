"""Config files in and out: read a JSON or YAML file of settings, convert its values to the types of a command's
flags, and write a command's every setting with its help as a YAML file to edit (``--create-config``).

Apart from argument parsing (``cli.py``), which applies what this returns as the parser's defaults: built-in
defaults < embedded preset < config file < flags. Files are parsed with ``json`` / ``yaml.safe_load``; nothing in
them is evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
from argparse import ArgumentParser, ArgumentTypeError

import yaml
from transformers import TrainingArguments

from .arguments import DistillationSettings, RunArguments
from .errors import InputError

__all__ = ["TRAINING_TEMPLATE_KEYS", "config_defaults", "read_config_file", "write_config"]

logger = logging.getLogger("seq2seq_distill")

# TrainingArguments fields written by --create-config beside every field of this project's own dataclasses.
TRAINING_TEMPLATE_KEYS = (
    "output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "max_grad_norm",
    "label_smoothing_factor",
    "seed",
    "bf16",
    "fp16",
    "eval_strategy",
    "save_strategy",
    "save_total_limit",
    "logging_steps",
    "resume_from_checkpoint",
    "report_to",
    "dataloader_num_workers",
    "gradient_checkpointing",
)


# List settings of name=value entries, which a config file may also give as a mapping {name: value}.
NAME_VALUE_LISTS = ("term_weights", "schedules", "balance_terms")


# ---- reading ---------------------------------------------------------------------------------------------------


def read_config_file(path: str) -> dict:
    """A flat mapping of setting names (dashes or underscores) to values, from JSON or YAML."""
    if not os.path.isfile(path):
        raise InputError(f"config file {path!r} does not exist")
    extension = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8") as handle:
            if extension == ".json":
                content = json.load(handle)
            elif extension in (".yaml", ".yml"):
                content = yaml.safe_load(handle)
            else:
                raise InputError(f"config file {path!r} must end in .json, .yaml or .yml")
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        first_line = str(error).splitlines()[0]
        raise InputError(f"config file {path!r} is not valid {extension[1:].upper()}: {first_line}") from None
    except UnicodeDecodeError:
        raise InputError(f"config file {path!r} is not UTF-8 text; re-encode it as UTF-8") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise InputError(f"config file {path!r} must hold a mapping of setting names to values, not a {type(content).__name__}")
    return {str(key).replace("-", "_"): value for key, value in content.items()}


def config_defaults(values: dict, parser: ArgumentParser, everything: set[str], command_name: str) -> dict:
    """Config values checked and converted to the types of this command's flags (``parser``'s).

    A name in no command's settings (``everything``) is an error with a "did you mean"; one that only other
    commands use is dropped.
    """
    own = {action.dest: action for action in parser._actions}
    converted = {}
    for key, value in values.items():
        if key not in everything:
            close = difflib.get_close_matches(key, sorted(everything), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see --create-config for every setting"
            raise InputError(f"config key {key!r} is not a setting of any command{hint}")
        if key not in own:
            logger.debug("config key %s is not used by %s", key, command_name)
            continue
        converted[key] = _convert(key, value, own[key])
    return converted


def _convert(key: str, value, action):
    """One config value in the form argparse would have produced from a flag."""
    if value is None:
        return None
    if action.nargs == "+":
        if key in NAME_VALUE_LISTS and isinstance(value, dict):  # term_weights: {name: weight} reads naturally in YAML
            value = [f"{name}={weight}" for name, weight in value.items()]
        items = value if isinstance(value, list) else [value]
        return [_convert_scalar(key, item, action) for item in items]
    if isinstance(value, (list, dict)):
        raise InputError(f"config key {key!r} takes a single value, got {type(value).__name__} {value!r}")
    return _convert_scalar(key, value, action)


def _convert_scalar(key: str, value, action):
    kind = action.type
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            converted = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            converted = float(value)
            if not math.isfinite(converted):  # nan / inf pass every range check and poison the run later
                raise ValueError
        elif kind is str:
            if isinstance(value, (list, dict)):
                raise ValueError
            converted = str(value)
        elif getattr(kind, "__name__", "") == "string_to_bool":
            if not isinstance(value, (bool, str)):  # 1 or 0.5 for a switch such as trust_remote_code is a mistake
                raise ValueError
            converted = kind(value)
        elif kind is not None and isinstance(value, str):
            converted = kind(value)
        else:
            converted = value
    except (ValueError, TypeError, KeyError, ArgumentTypeError):
        expected = getattr(kind, "__name__", "value").replace("string_to_bool", "boolean").replace("float", "finite float")
        raise InputError(f"config key {key!r} must be a {expected}, got {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise InputError(f"config key {key!r} must be one of: {', '.join(map(str, action.choices))}; got {value!r}")
    return converted


# ---- writing ---------------------------------------------------------------------------------------------------


def write_config(path: str, parsed: dict[type, object], parser: ArgumentParser, command_name: str) -> None:
    """Every setting of the command with its current value and help text, as YAML that --config reads back.

    ``parsed`` holds the command's argument objects by type, ``parser`` is the one that parsed them.
    """
    lines = [
        f"# seq2seq-distill {command_name}: every setting of this command, with its help. Edit, then run",
        f"#   seq2seq-distill {command_name} --config {os.path.basename(path)}",
        "# Flags given on the command line override these values. Any other TrainingArguments flag may be added.",
    ]
    list_flags = {action.dest for action in parser._actions if action.nargs == "+"}
    for argument_type, obj in parsed.items():
        if argument_type is RunArguments:
            continue
        values = obj.to_dict() if isinstance(obj, TrainingArguments) else dataclasses.asdict(obj)
        own_fields = {field.name for field in dataclasses.fields(DistillationSettings)}
        lines.append(f"\n# ---- {argument_type.__name__} ----")
        for field in dataclasses.fields(argument_type):
            if not field.init or field.name.startswith("_"):
                continue
            if isinstance(obj, TrainingArguments) and field.name not in TRAINING_TEMPLATE_KEYS and field.name not in own_fields:
                continue
            value = values.get(field.name)
            if isinstance(value, list) and field.name not in list_flags:  # e.g. report_to: [] after parsing "none"
                value = ",".join(map(str, value)) or "none"
            help_text = " ".join(str(field.metadata.get("help", "")).split())
            if help_text:
                lines.append(f"# {help_text}")
            lines.append(yaml.safe_dump({field.name: value}, default_flow_style=True, width=1000).strip()[1:-1])
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
