"""Where the frozen teacher lives when the student trains under DeepSpeed ZeRO-3 or FSDP2.

Under DDP (``torchrun``, ``accelerate launch``) nothing changes: only the student is wrapped, and the teacher is a
plain module on each process's device. Under ZeRO-3 the teacher is partitioned across processes by an
inference-only DeepSpeed engine (no optimizer), as TRL prepares reference and teacher models; ZeRO-1/2 shard
optimizer states and gradients, which a frozen teacher has none of, so it stays a replica there. Under FSDP2 it is
sharded in place with ``fully_shard`` per transformer layer (the run's wrap policy), without a mixed-precision
cast, so ``teacher_dtype`` holds. Either way the teacher stays the module itself, whose hooks gather its parameters
in forward, so its config and forward signature are unchanged.
"""

from __future__ import annotations

import copy
import logging

import torch
from transformers import PreTrainedModel, TrainerCallback

logger = logging.getLogger(__name__)


def shard_teacher(trainer, teacher: PreTrainedModel) -> tuple[PreTrainedModel, list[TrainerCallback]]:
    """The teacher prepared for the trainer's distributed engine (unchanged without ZeRO-3 or FSDP2), and the
    callbacks the trainer must add for it. Reads the trainer's settings; changes nothing on it."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        config = zero3_inference_config(trainer, teacher)
        # Partitioned when training starts: a partitioned weight reads as empty, and the trainer's setup still
        # reads the teacher's output rows.
        return teacher, ([PartitionTeacher(teacher, config)] if config is not None else [])
    if getattr(trainer, "is_fsdp_enabled", False):
        return fsdp2_shard(trainer, teacher), []
    return teacher, []


def zero3_inference_config(trainer, teacher: PreTrainedModel) -> dict | None:
    """The run's DeepSpeed config turned into an inference-only one for the teacher; None unless it is ZeRO-3."""
    config = copy.deepcopy(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.get("zero_optimization") or {}
    if zero.get("stage") != 3:
        return None
    for section in ("optimizer", "scheduler"):
        config.pop(section, None)
    hidden = getattr(teacher.config, "hidden_size", None) or getattr(teacher.config, "d_model", None)
    sizes = {}
    if hidden:  # the values HF's trainer_config_finalize gives the student's "auto" entries
        sizes = {
            "reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
        }
    for key in [key for key, value in zero.items() if value == "auto"]:
        if key in sizes:
            zero[key] = sizes[key]
        else:
            del zero[key]
    args = trainer.args
    batch = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
    }
    for key, value in batch.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config.pop("gradient_clipping", None)
    dtype = next(teacher.parameters()).dtype
    config["bf16"] = {"enabled": dtype == torch.bfloat16}
    config["fp16"] = {"enabled": dtype == torch.float16}
    return config


class PartitionTeacher(TrainerCallback):
    """Partitions the teacher with an inference-only DeepSpeed engine at train begin (once)."""

    def __init__(self, teacher: PreTrainedModel, config: dict):
        self.teacher, self.config = teacher, config
        self.engine = None  # kept here: it holds the partitioning state the teacher's hooks use

    def on_train_begin(self, args, state, control, **kwargs):
        if self.engine is None:
            import deepspeed

            self.engine, *_ = deepspeed.initialize(model=self.teacher, config=self.config)
            self.engine.eval()


def fsdp2_shard(trainer, teacher: PreTrainedModel) -> PreTrainedModel:
    """Shard the teacher in place with FSDP2 per transformer layer, computing in its own dtype."""
    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        logger.warning("FSDP1: the teacher stays whole on every process; set fsdp_config version 2 to shard it")
        return teacher
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.other import get_module_children_bottom_up
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = getattr(trainer.accelerator, "torch_device_mesh", None)
    options = {
        "reshard_after_forward": True,
        "offload_policy": plugin.cpu_offload,
        "mp_policy": MixedPrecisionPolicy(),  # compute in the teacher's own dtype
        "mesh": mesh[tuple(trainer.accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
    }
    policy = fsdp2_prepare_auto_wrap_policy(plugin, teacher)
    if policy is not None:
        for module in get_module_children_bottom_up(teacher)[:-1]:
            if policy(module) and not isinstance(module, FSDPModule):
                fully_shard(module, **options)
    fully_shard(teacher, **options)
    teacher.eval()
    return teacher
