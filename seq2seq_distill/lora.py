"""LoRA students (the optional extra ``lora``: ``peft``): the student is a frozen base with a trained adapter.

The base is a layer-copied student, a given ``--student``, or (self-distillation) the teacher itself. Only the
adapter's weights are trained, checkpointed and saved: the output folder is the adapter folder of peft's
``save_pretrained`` (``adapter_config.json``, ``adapter_model.safetensors``) whose ``base_model_name_or_path`` names
the base; a base that no hub name or folder holds (a layer-copied or freshly built one) is saved beside it in
``base/`` (:func:`save_lora_base`). :func:`load_merged` reads such a folder back as one plain model with the adapter
merged in, which is what ``load_model``, and so the benchmark, do with an adapter folder.

Self-distillation: :class:`SelfTeacher` is the teacher of a LoRA student made of the student's own weights, run
with the adapter switched off, so the adapter learns the task while staying close to its base model's distribution
and no second copy of the weights is held.

peft is imported only when a LoRA student is asked for (:func:`require_peft`), so the rest of the package runs
without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence

import torch

from .errors import InputError

__all__ = [
    "ADAPTER_CONFIG",
    "BASE_FOLDER",
    "SelfTeacher",
    "adapter_base",
    "adapter_facts",
    "is_adapter_folder",
    "is_lora_model",
    "load_merged",
    "lora_student",
    "require_peft",
    "save_lora_base",
]

ADAPTER_CONFIG = "adapter_config.json"
BASE_FOLDER = "base"  # the base model of an adapter whose base is not a hub name or a folder of its own
INSTALL_HINT = "pip install seq2seq_distill[lora]"
# peft's task types by this package's tasks: they keep generate() and the head class of the base model.
PEFT_TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "causal_lm": "CAUSAL_LM", "classification": "SEQ_CLS"}


def require_peft():
    """The ``peft`` module, or one InputError line naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise InputError(f"LoRA students (--lora_r > 0, --self_distill) need peft: {INSTALL_HINT}") from None
    return peft


def is_lora_model(model) -> bool:
    """A peft model (what :func:`lora_student` returns), told without importing peft."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_student(
    base: torch.nn.Module,
    task: str,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    base_reference: str | None = None,
):
    """``base`` with a LoRA adapter of rank ``r`` (scaling ``alpha / r``) on ``target_modules`` (unset: peft's
    default for the family: T5 q, v; BART q_proj, v_proj; BERT query, value; GPT-2 c_attn; ``all-linear``: every
    linear layer but the head). Every base weight is frozen; for classification peft also trains the classifier
    head (its ``SEQ_CLS`` task keeps the head in ``modules_to_save``), which a new task needs.

    ``base_reference``: the hub name or folder the base loads from unchanged; None (a layer-copied or freshly built
    base) makes the saved output carry the base in ``base/``. The model is changed in place: its layers are wrapped.
    """
    peft = require_peft()
    modules = list(target_modules) if target_modules else None
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear" if modules == ["all-linear"] else modules,
        task_type=PEFT_TASK_TYPES[task],
    )
    try:
        student = peft.get_peft_model(base, config)
    except ValueError as error:  # target modules that match no layer of the base
        reason = " ".join(str(error).split()).split(". ")[0]
        raise InputError(f"--lora_target_modules: {reason}; name linear layers of the student (e.g. q v for T5)") from None
    # peft records the model's name_or_path as the base when it saves (checkpoints too), and a layer-copied
    # student's is still its teacher's: never a base to load the adapter on.
    if base_reference is None:
        base.name_or_path = ""
    student.peft_config["default"].base_model_name_or_path = base_reference
    return student


# ---- self-distillation -----------------------------------------------------------------------------------------


class SelfTeacher:
    """The teacher of self-distillation: the LoRA student's own base model with its adapter switched off.

    A thin wrapper, not a model: calling it runs the student's weights under ``disable_adapter()`` and
    ``torch.no_grad()``, in eval mode (the student's modes are restored afterwards), so the teacher's outputs are
    the base model's and nothing of them reaches the gradient; every attribute (``config``, ``forward``,
    ``parameters``, the layers the feature terms pair) is the base model's, whose tensors are the student's: no
    second copy is ever made. The trainer takes it as it is: it is neither frozen, nor cast, nor sharded (that
    would freeze or move the student).
    """

    def __init__(self, student):
        if not is_lora_model(student):
            raise InputError("self-distillation needs a LoRA (peft) student: its base model with the adapter off is the teacher")
        object.__setattr__(self, "_student", student)

    @property
    def student(self):
        return self._student

    def get_base_model(self) -> torch.nn.Module:
        return self._student.get_base_model()

    def state_dict(self, *args, **kwargs) -> dict:
        """The teacher's weights: the base model's without the adapter's and without the trained copies of saved
        modules (both switched off in the teacher)."""
        state = self._student.get_base_model().state_dict(*args, **kwargs)
        return {name: value for name, value in state.items() if "lora_" not in name and "modules_to_save" not in name}

    def fingerprint(self) -> str:
        """What ``teachers.json`` records of this teacher: its weights only. The config is the training student's,
        which the Trainer changes when training starts (it copies the tokenizer's special-token ids into it), so a
        resumed run would not be recognized as the same teacher; the adapter trains, the weights here do not."""
        state = self.state_dict()
        digest = hashlib.sha256()
        for name in sorted(state):
            digest.update(name.encode() + state[name].detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_student":  # copy / pickle probes, and the slot itself during copying
            raise AttributeError(name)
        return getattr(self._student.get_base_model(), name)

    def __call__(self, *args, **kwargs):
        student = self._student
        modes = [(module, module.training) for module in student.modules()]
        student.eval()  # the teacher's forward never drops out, whatever the student's training mode
        try:
            with torch.no_grad(), student.disable_adapter():
                return student(*args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training


# Teacher uses outside the one forward the wrapper runs (generation, incremental sampling with caches): these would
# run the student with its adapter on, so self-distillation refuses them.
_OTHER_TEACHER_USES = ("policy_gradient", "on_policy")


def check_self_distillation(plan) -> None:
    """A self-distillation run reads the teacher only through its forward (KD and the feature terms)."""
    on = [name for name in _OTHER_TEACHER_USES if getattr(plan, name)]
    if on:
        raise InputError(
            f"self-distillation runs the teacher (the base with the adapter off) in the loss forward only, and "
            f"{' and '.join(on)} sample from it: set policy_gradient_weight and on_policy_fraction to 0"
        )


def adapter_facts(student, teacher=None) -> dict | None:
    """What a model card says of a LoRA student, in plain values (None for any other model): rank, alpha, dropout,
    target modules, the recorded base (and whether it is the ``base/`` beside the saved adapter), self-distillation."""
    if not is_lora_model(student):
        return None
    config = student.peft_config[student.active_adapter]
    base = config.base_model_name_or_path
    in_folder = bool(base) and os.path.basename(base) == BASE_FOLDER and is_adapter_folder(os.path.dirname(base))
    modules = config.target_modules
    return {
        "r": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        "target_modules": [modules] if isinstance(modules, str) else sorted(modules or ()),
        "base": base,
        "base_in_folder": in_folder,
        "self_distill": isinstance(teacher, SelfTeacher),
    }


# ---- saving and loading ----------------------------------------------------------------------------------------


def save_lora_base(student, output_dir: str) -> str | None:
    """Before the adapter is saved: the base of an adapter that no hub name or folder holds, saved to
    ``<output_dir>/base`` without its LoRA layers, and its absolute path recorded as the adapter's base (so peft's
    ``AutoPeftModel*.from_pretrained(output_dir)`` finds it). Returns that path, or None when the base is a
    reference already (nothing is written).
    """
    config = student.peft_config[student.active_adapter]
    if config.base_model_name_or_path is not None:
        return None
    folder = os.path.join(output_dir, BASE_FOLDER)
    base = student.get_base_model()
    with torch.device("meta"):  # the structure of the base without adapters; its tensors are the student's own
        clean = type(base)(copy.deepcopy(base.config))
    clean.load_state_dict(_base_state_dict(base), assign=True, strict=True)
    clean.tie_weights()
    if getattr(base, "generation_config", None) is not None and clean.can_generate():
        clean.generation_config = copy.deepcopy(base.generation_config)
    clean.save_pretrained(folder)
    config.base_model_name_or_path = os.path.abspath(folder)
    return folder


def _base_state_dict(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own tensors under their original names: LoRA layers dropped, ``base_layer`` unwrapped, and
    for a head peft trains (``modules_to_save``) its original weights."""
    state = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(part.startswith("lora_") for part in parts) or "modules_to_save" in parts:
            continue
        state[".".join(part for part in parts if part not in ("base_layer", "original_module"))] = value
    return state


def is_adapter_folder(path: str) -> bool:
    """A folder peft's ``save_pretrained`` wrote an adapter into (and no whole model)."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def adapter_base(path: str) -> str:
    """Where the base of the adapter folder ``path`` loads from: its ``base/`` folder when it has one (so a moved or
    copied output folder still loads), else the hub name or folder its ``adapter_config.json`` records."""
    own = os.path.join(path, BASE_FOLDER)
    if os.path.isdir(own):
        return own
    with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as handle:
        recorded = json.load(handle).get("base_model_name_or_path")
    if not recorded:
        raise InputError(
            f"the adapter in {path!r} names no base model and has no {BASE_FOLDER}/ folder; it is a checkpoint's: use "
            "the run's output folder, or load it with PeftModel.from_pretrained(base, path)"
        )
    return recorded


def load_merged(path: str, task: str | None, *, flag: str, trust_remote_code: bool = False, **kwargs) -> torch.nn.Module:
    """The adapter folder ``path`` as one plain model: its base (:func:`adapter_base`) with the adapter merged into
    the weights (``merge_and_unload``), so it runs, is timed and is sized like any other model."""
    from .modeling import load_model

    peft = require_peft()
    base = load_model(adapter_base(path), task, flag=flag, trust_remote_code=trust_remote_code, **kwargs)
    return peft.PeftModel.from_pretrained(base, path).merge_and_unload()
