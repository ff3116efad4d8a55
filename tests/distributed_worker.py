#!/usr/bin/env python
"""What tests/test_distributed.py launches under torchrun (or as one plain process).

``distributed_worker.py <command> [flags]`` runs ``seq2seq-distill <command>`` exactly as ``scripts/distill.py``
does, with a probe on the trainer classes the pipeline builds. With ``DISTILL_PROBE_DIR`` set, every process writes
``rank<R>-<n>.json`` there when its n-th training run ends:

* ``teacher``: the teacher as the trainer holds it, checked at the first optimizer step and again at the end
  (wrapper class, train/eval mode, parameters that require or hold a gradient, parameters in the optimizer, device,
  dtype, a checksum of its weights), beside the student's wrapper class;
* ``steps``: for each optimizer step, a short hash of every example this process trained on (padding removed);
* ``losses``: the loss of each logged step; ``tokenizer``: a hash of the tokenizer's vocabulary.

``DISTILL_PROBE_PAUSE_AFTER_SAVE=<seconds>``: every process writes its process id to ``pid-rank<R>`` when training
starts and, after its first checkpoint is written, ``saved-rank<R>``, then sleeps, so that a test can kill the job
mid-run at a known point.

``distributed_worker.py shard_teacher <fsdp2|zero3> <out.json>`` instead checks ``DistillationMixin._shard_teacher``
on its own: a tiny T5 teacher is sharded across the processes of the group and must give the logits it gave whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

PROBE_DIR = os.environ.get("DISTILL_PROBE_DIR")
PAUSE_AFTER_SAVE = float(os.environ.get("DISTILL_PROBE_PAUSE_AFTER_SAVE", "0"))
_runs = 0


def _short_hash(values) -> str:
    return hashlib.sha1(json.dumps(values).encode()).hexdigest()[:12]


def _is_wrapper(module) -> bool:
    """DDP, FSDP1 or a DeepSpeed engine around a model (FSDP2 shards in place and is reported apart)."""
    from torch.nn.parallel import DistributedDataParallel

    names = {cls.__name__ for cls in type(module).__mro__}
    return isinstance(module, DistributedDataParallel) or bool(names & {"FullyShardedDataParallel", "DeepSpeedEngine"})


def teacher_report(trainer) -> dict | None:
    teacher = trainer.teacher
    if teacher is None:
        return None
    parameters = list(teacher.parameters())
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]] if trainer.optimizer else []
    optimized_ids = {id(p) for p in optimized}
    optimized_storage = {p.data_ptr() for p in optimized if p.numel()}
    first = parameters[0]
    from torch.distributed.fsdp import FSDPModule

    return {
        "class": type(teacher).__name__,
        "wrapped": _is_wrapper(teacher),
        "fsdp2_sharded": isinstance(teacher, FSDPModule),
        "training": teacher.training,
        "modules_in_training_mode": sum(module.training for module in teacher.modules()),
        "parameters": len(parameters),
        "requiring_grad": sum(p.requires_grad for p in parameters),
        "holding_grad": sum(p.grad is not None for p in parameters),
        "in_optimizer": sum(id(p) in optimized_ids for p in parameters),
        "sharing_storage_with_optimizer": sum(p.numel() > 0 and p.data_ptr() in optimized_storage for p in parameters),
        "in_accelerator_models": any(model is teacher for model in trainer.accelerator._models),
        "optimizer_parameters": len(optimized),
        "device": str(first.device),
        "expected_device": str(trainer.args.device),
        "dtype": str(first.dtype),
        "checksum": float(sum(p.detach().double().abs().sum() for p in parameters)),
        "student_wrapper": type(trainer.model_wrapped).__name__,
    }


class Probe(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.record = {"steps": {}, "losses": {}, "teacher_at_first_step": None, "teacher_at_end": None}
        self.saved = False

    def on_train_begin(self, args, state, control, **kwargs):
        if PAUSE_AFTER_SAVE and PROBE_DIR:  # torchrun starts each worker in its own session: tell the test who to kill
            Path(PROBE_DIR, f"pid-rank{args.process_index}").write_text(str(os.getpid()))

    def on_step_end(self, args, state, control, **kwargs):
        if self.record["teacher_at_first_step"] is None:
            self.record["teacher_at_first_step"] = teacher_report(self.trainer) or {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.record["losses"][str(state.global_step)] = logs["loss"]

    def on_save(self, args, state, control, **kwargs):
        if PAUSE_AFTER_SAVE and not self.saved and PROBE_DIR:
            self.saved = True
            Path(PROBE_DIR, f"saved-rank{args.process_index}").write_text(str(state.global_step))
            time.sleep(PAUSE_AFTER_SAVE)

    def on_train_end(self, args, state, control, **kwargs):
        global _runs
        trainer = self.trainer
        tokenizer = trainer.processing_class
        self.record.update(
            rank=args.process_index,
            world_size=args.world_size,
            global_step=state.global_step,
            output_dir=args.output_dir,
            teacher_at_end=teacher_report(trainer),
            tokenizer=_short_hash(sorted(tokenizer.get_vocab().items())) if tokenizer is not None else None,
        )
        if PROBE_DIR:
            _runs += 1
            Path(PROBE_DIR, f"rank{args.process_index}-{_runs}.json").write_text(json.dumps(self.record, indent=1))


def probed(base):
    class Probed(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.probe = Probe(self)
            self.add_callback(self.probe)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
                examples = [_short_hash([i for i, m in zip(row, keep) if m]) for row, keep in zip(ids, mask)]
                self.probe.record["steps"].setdefault(str(self.state.global_step), []).extend(examples)
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    Probed.__name__ = Probed.__qualname__ = base.__name__
    return Probed


def run_command(argv: list[str]) -> int:
    from seq2seq_distill import training
    from seq2seq_distill.cli import main

    training.DistillationTrainer = probed(training.DistillationTrainer)
    training.Seq2SeqDistillationTrainer = probed(training.Seq2SeqDistillationTrainer)
    return main(argv)


# ---- DistillationMixin._shard_teacher on its own ---------------------------------------------------------------


class _FakeTrainer:
    """The attributes ``_shard_teacher`` reads, as a Trainer set up for FSDP2 or ZeRO-3 has them."""

    def __init__(self, engine: str, world_size: int):
        from types import SimpleNamespace

        self.is_fsdp_enabled = engine == "fsdp2"
        self.is_deepspeed_enabled = engine == "zero3"
        state = SimpleNamespace(fsdp_plugin=None, deepspeed_plugin=None)
        if engine == "fsdp2":
            from accelerate.utils import FullyShardedDataParallelPlugin

            state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
        else:
            config = json.loads((ROOT / "configs" / "deepspeed_zero3.json").read_text())
            state.deepspeed_plugin = SimpleNamespace(deepspeed_config=config)
        self.accelerator = SimpleNamespace(state=state, torch_device_mesh=None)
        self.args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=world_size)
        self.callbacks = []

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def train_begins(self) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(self.args, None, None)


def shard_teacher(engine: str, out: str) -> int:
    import torch.distributed as dist

    if engine == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    from seq2seq_distill.modeling import freeze_teacher, output_rows
    from seq2seq_distill.tiny import tiny_model
    from seq2seq_distill.trainer import DistillationMixin

    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    teacher = freeze_teacher(tiny_model("t5", 300, hidden=32, layers=2), torch.device("cpu"), torch.float32)
    full_numel = sum(p.numel() for p in teacher.parameters())
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(5, 300, (2, 12), generator=generator),
        "decoder_input_ids": torch.randint(5, 300, (2, 5), generator=generator),
    }
    with torch.no_grad():
        reference = teacher(**inputs).logits
    trainer = _FakeTrainer(engine, world_size)
    sharded = DistillationMixin._shard_teacher(trainer, teacher)
    rows_before_training = output_rows(sharded)  # what the trainer's setup reads right after (vocabulary check)
    trainer.train_begins()
    with torch.no_grad():
        logits = sharded(**inputs).logits

    def local_numel(p):
        if engine == "zero3":
            return p.ds_tensor.numel()
        return p.to_local().numel() if hasattr(p, "to_local") else p.numel()

    from torch.distributed.fsdp import FSDPModule

    report = {
        "rank": rank,
        "world_size": world_size,
        "same_object": sharded is teacher,
        "wrapped": _is_wrapper(sharded),
        "fsdp2_sharded": isinstance(sharded, FSDPModule),
        "training": sharded.training,
        "requiring_grad": sum(p.requires_grad for p in sharded.parameters()),
        "full_numel": full_numel,
        "local_numel": sum(local_numel(p) for p in sharded.parameters()),
        "max_logit_difference": float((logits - reference).abs().max()),
        "config_vocab_size": sharded.config.vocab_size,
        "output_rows_at_setup": rows_before_training,
    }
    Path(f"{out}.rank{rank}").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()  # a gloo group left alive can abort the process at exit
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments and arguments[0] == "shard_teacher":
        sys.exit(shard_teacher(arguments[1], arguments[2]))
    sys.exit(run_command(arguments))
