"""The GPU measurements of issue 18 in one run of under 10 minutes: step overhead, the logit pass, teacher precision.

    python benchmarks/gpu.py --output benchmarks/results/gpu.json    # a CUDA machine: bf16, the full sizes
    python benchmarks/gpu.py --tiny --output /tmp/gpu.json           # anywhere (a CPU too): small sizes, seconds

Why one script: GPU time is scarce, so everything that needs a GPU runs in one command that is known to work
beforehand: ``--tiny`` runs the same code on small shapes (fp32 on a CPU) and a test runs it. Each section catches
its own failure and records ``{"error": ...}``, and the JSON file is rewritten after every section, so one failing
part (an out-of-memory error, an API change in TRL or Liger) loses nothing else. Sections:

``step``
    ``distill_step.py``'s step benchmark (its functions, imported) on GPT-2 shapes in the device's precision (bf16
    on a GPU: the student under autocast, the teacher stored in bf16): distillation step / (teacher forward + CE
    step), the same over the CE step alone, the naive loss's step, and the cached top-k step / CE step.
``trl``
    our generalized-JSD step / TRL GKDTrainer's at equal settings (``distill_step.trl_comparison``), or
    ``{"skipped": "trl not installed"}``.
``logit_pass``
    forward + backward of the LM heads and the loss at B*T = 8,192 rows and V = 128,256, as Liger-Kernel benchmarks
    its fused linear JSD (student hidden 2,048, teacher hidden 4,096, bf16, 0.5 CE + 0.5 distillation, T = 1): the
    naive loss (``loss_memory.naive_kd_loss``: full log-softmax forward KL), ours (``chunked_kd.ce_kd_row_pass``,
    what the trainer runs) with forward KL and with JSD, each at the trainer's default chunk (2 rows of 128k: sized
    for a CPU's cache, thousands of kernel launches on a GPU) and at chunks of 130 rows, and Liger's
    ``LigerFusedLinearJSDLoss`` where it installs. Time (median) and peak memory; Liger's published H100 figures are
    stored beside them as the reference.
``teacher_precision``
    a bf16 against an fp32 teacher (``teacher_dtype``), step time and peak memory, on a T5 and a BART teacher with a
    layer-copied student (``create_student``). On a CPU the bf16 teacher is set explicitly to exercise the path; its
    CPU timing says nothing about GPUs (and the CPU default stays float32).

Memory: on CUDA the allocator's counters (``torch.cuda.max_memory_allocated``); on a CPU, the allocations the
PyTorch profiler records. ``peak_mib`` = the tensors resident before the call (inputs, models, optimizer states)
+ the peak allocated above them during it, the same definition on both devices; CUDA adds the allocator's absolute
``max_memory_allocated_mib``, the figure Liger reports.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts, also when imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill_step  # noqa: E402
import loss_memory  # noqa: E402
import transformers  # noqa: E402

from seq2seq_distill import Seq2SeqDistillationTrainer, Seq2SeqDistillationTrainingArguments, create_student  # noqa: E402
from seq2seq_distill.chunked_kd import LiveTeacherRows, ce_kd_row_pass, uses_liger  # noqa: E402
from seq2seq_distill.tiny import tiny_model  # noqa: E402

MIB = 2**20
SECTIONS = ("step", "trl", "logit_pass", "teacher_precision")

# Full sizes: distilgpt2 <- gpt2-medium shapes for the step; Liger's benchmark for the logit pass; t5-base and
# bart-base shapes with half their layers copied for the teacher precision. Tiny sizes: the same code in seconds.
SIZES = {
    "full": {
        "timing": {"warmup": 2, "repeats": 9},
        "step": {
            "vocab": 50257,
            "batch": 8,
            "length": 512,
            "student": {"n_embd": 768, "n_layer": 6, "n_head": 12},
            "teacher": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
            "top_k": 32,
        },
        # Chunks: the trainer's default kd_chunk_elements (2 rows of 128k, sized for a CPU's cache) and chunks of
        # 130 rows, fewer kernel launches for a GPU.
        "logit_pass": {
            "rows": 8192,
            "vocab": 128256,
            "student_hidden": 2048,
            "teacher_hidden": 4096,
            "chunk_elements": {"default": 2**18, "large": 2**24},
            "timing": {"warmup": 1, "repeats": 5},  # a pass at the default chunk walks 4,096 chunks: seconds
        },
        "teacher_precision": {
            "batch": 16,
            "source_length": 512,
            "target_length": 128,
            "families": {
                "t5": {"vocab_size": 32128, "hidden": 768, "layers": 12, "heads": 12, "d_ff": 3072},
                "bart": {
                    "vocab_size": 50265,
                    "hidden": 768,
                    "layers": 6,
                    "heads": 12,
                    "encoder_ffn_dim": 3072,
                    "decoder_ffn_dim": 3072,
                },
            },
            "student_layers": {"t5": 6, "bart": 3},
        },
    },
    "tiny": {
        "timing": {"warmup": 1, "repeats": 3},
        "step": {
            "vocab": 512,
            "batch": 2,
            "length": 32,
            "student": {"n_embd": 32, "n_layer": 2, "n_head": 2},
            "teacher": {"n_embd": 48, "n_layer": 3, "n_head": 2},
            "top_k": 8,
        },
        # Chunks of 8 and 32 rows, so that the tiny pass walks over several chunks as the full one does.
        "logit_pass": {
            "rows": 64,
            "vocab": 512,
            "student_hidden": 16,
            "teacher_hidden": 32,
            "chunk_elements": {"default": 2**12, "large": 2**14},
            "timing": {"warmup": 1, "repeats": 3},
        },
        "teacher_precision": {
            "batch": 2,
            "source_length": 16,
            "target_length": 8,
            "families": {
                "t5": {"vocab_size": 256, "hidden": 16, "layers": 2, "heads": 2},
                "bart": {"vocab_size": 256, "hidden": 16, "layers": 2, "heads": 2},
            },
            "student_layers": {"t5": 1, "bart": 1},
        },
    },
}

# Liger-Kernel's own figures for LigerFusedLinearJSDLoss ("distill_jsd_loss"), forward + backward, in
# linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv (liger 0.4.2, 2024-12-03): the reference of the
# logit pass at the full sizes, not a measurement of this script.
LIGER_REFERENCE = {
    "what": "LigerFusedLinearJSDLoss forward + backward (Liger's distill_jsd_loss benchmark), median",
    "source": "linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv, liger-kernel 0.4.2, 2024-12-03",
    "device": "NVIDIA H100 80GB HBM3",
    "settings": {
        "rows": 8192,
        "vocab": 128256,
        "student_hidden": 2048,
        "teacher_hidden": 4096,
        "dtype": "bfloat16",
        "weight_hard_loss": 0.5,
        "weight_soft_loss": 0.5,
        "beta": 0.5,
        "temperature": 1.0,
    },
    "liger": {"time_ms": 60.71, "max_memory_allocated_mib": 11109.6},
    "torch_reference": {"time_ms": 213.16, "max_memory_allocated_mib": 68947.1},
}


# ---- measuring ---------------------------------------------------------------------------------------------------


def precision(device: torch.device) -> tuple[dict, torch.dtype]:
    """Trainer flags and the tensor dtype of this device: bf16 on a GPU that has it, float32 on a CPU (where bf16
    matmuls measured several times slower, so a CPU run checks that the code works, not how fast bf16 is)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return {"use_cpu": False, "bf16": True}, torch.bfloat16
    return {"use_cpu": device.type == "cpu", "bf16": False}, torch.float32


def tensor_bytes(objects: Iterable) -> int:
    """Bytes of the distinct storages of the tensors in ``objects`` (tensors, modules, optimizers, dicts of them)."""
    seen: dict[tuple, int] = {}

    def visit(item) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[(item.device, storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, torch.nn.Module):
            for tensor in [*item.parameters(), *item.buffers()]:
                visit(tensor)
        elif isinstance(item, torch.optim.Optimizer):
            for state in item.state.values():
                visit(state)
        elif isinstance(item, dict):
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(list(objects))
    return sum(seen.values())


def profiled_peak_bytes(run: Callable[[], object]) -> tuple[int, object]:
    """``(peak bytes, what run returned)``: the peak the CPU allocator held during ``run`` above what was live before
    it, from the profiler's allocation events. A CPU has no allocator counters like CUDA's, and the process's resident
    high-water mark never goes down, so it cannot measure one call after another in one process."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        value = run()
    try:  # the raw allocation events, in time order: exact, and ~20x faster than building the event tree
        allocations = [
            (event.start_ns(), event.nbytes())
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]"
        ]
    except AttributeError:  # another torch: the public events, each op's own allocations at its start (coarser)
        allocations = [(event.time_range.start, event.self_cpu_memory_usage) for event in profiler.events()]
    live = peak = 0
    for _, nbytes in sorted(allocations, key=lambda allocation: allocation[0]):
        live += nbytes
        peak = max(peak, live)
    return peak, value


def peak_memory(run: Callable[[], object], device: torch.device, resident: Iterable) -> tuple[dict, object]:
    """Peak memory of one call of ``run`` (``resident`` tensors + the peak allocated above them, in MiB) and what
    the call returned."""
    resident_bytes = tensor_bytes(resident)
    result = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        value = run()
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - before
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    else:
        extra, value = profiled_peak_bytes(run)
    memory = {"peak_mib": (resident_bytes + extra) / MIB, "extra_peak_mib": extra / MIB, "resident_mib": resident_bytes / MIB}
    return {**memory, **result}, value


def median_seconds(run: Callable[[], object], timing: dict) -> float:
    """Median seconds of ``run`` after warm-up (``distill_step.interleaved_medians``, which synchronizes a GPU)."""
    return distill_step.interleaved_medians({"run": run}, **timing)["run"]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None (JSON null) where either is missing or the quotient is not finite."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def failure(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {error}"[:2000]}


def free_memory() -> None:
    """On a GPU, between measurements: free the last one's models (trainers hold reference cycles) and return the
    cached blocks. A CPU's profiler counts only what a call allocates, so there a slow gc.collect() buys nothing."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# ---- (a) the step benchmark and TRL ------------------------------------------------------------------------------


def step_models(sizes: dict, device: torch.device):
    """distill_step's student, teacher (concentrated as a trained LM's) and batch at ``sizes``, the batch on ``device``."""
    shape = dict(vocab=sizes["vocab"], length=sizes["length"])
    student = distill_step.model(sizes["student"], seed=0, **shape)
    teacher = distill_step.model(sizes["teacher"], seed=1, tie_word_embeddings=False, **shape).to(device)
    teacher.eval().requires_grad_(False)
    inputs = distill_step.batch(0, sizes["vocab"], sizes["batch"], sizes["length"])
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    coverage = distill_step.concentrate(teacher, inputs, sizes["top_k"], 0.9)
    return student, teacher, inputs, coverage


def step_section(sizes: dict, timing: dict, device: torch.device, flags: dict) -> dict:
    student, teacher, inputs, coverage = step_models(sizes, device)
    results = distill_step.step_ratios(student, teacher, inputs, sizes["top_k"], timing, **flags)
    times = results["times_s"]
    results["distill_over_ce_step"] = times["distill_step"] / times["student_ce_step"]
    results["teacher_dtype"] = str(next(teacher.parameters()).dtype)
    results["teacher_top_k_coverage"] = coverage
    return results


def trl_section(sizes: dict, timing: dict, device: torch.device, flags: dict) -> dict:
    if importlib.util.find_spec("trl") is None:
        return {"skipped": "trl not installed"}
    student, teacher, inputs, _ = step_models(sizes, device)
    results = distill_step.trl_comparison(student, teacher, inputs, timing, **flags)
    if results["trl_gkd_s"] is None:
        raise RuntimeError("trl is installed but trl.experimental.gkd's GKDTrainer could not be imported")
    return results


# ---- (b) the logit pass ------------------------------------------------------------------------------------------


def logit_pass_inputs(sizes: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Hidden states and LM heads as Liger's benchmark draws them: inputs uniform in [0, 1), weights as
    ``nn.Linear`` initializes them (uniform in +-1/sqrt(hidden)), random labels; the student's require gradients."""
    generator = torch.Generator(device=device).manual_seed(0)
    rows, vocab = sizes["rows"], sizes["vocab"]

    def uniform(shape: tuple, low: float, high: float) -> torch.Tensor:
        return torch.empty(shape, device=device, dtype=dtype).uniform_(low, high, generator=generator)

    student_hidden, teacher_hidden = sizes["student_hidden"], sizes["teacher_hidden"]
    student_bound, teacher_bound = student_hidden**-0.5, teacher_hidden**-0.5
    return {
        "student_hidden": uniform((rows, student_hidden), 0.0, 1.0).requires_grad_(True),
        "student_weight": uniform((vocab, student_hidden), -student_bound, student_bound).requires_grad_(True),
        "teacher_hidden": uniform((rows, teacher_hidden), 0.0, 1.0),
        "teacher_weight": uniform((vocab, teacher_hidden), -teacher_bound, teacher_bound),
        "labels": torch.randint(0, vocab, (rows,), device=device, generator=generator),
    }


def logit_pass_methods(tensors: dict, device: torch.device, chunk_elements: dict) -> dict[str, Callable[[], torch.Tensor] | str]:
    """name -> a function computing 0.5 CE + 0.5 distillation (mean over rows) from the hidden states, or the
    reason it cannot run here."""
    student_hidden, student_weight = tensors["student_hidden"], tensors["student_weight"]
    teacher_hidden, teacher_weight, labels = tensors["teacher_hidden"], tensors["teacher_weight"], tensors["labels"]
    rows = labels.numel()

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        return student_hidden @ student_weight.T, teacher_logits

    def naive() -> torch.Tensor:
        student_logits, teacher_logits = logits()
        mask = torch.ones(1, rows, device=device)
        kd = loss_memory.naive_kd_loss(student_logits[None], teacher_logits[None], mask, temperature=1.0) / rows
        return 0.5 * F.cross_entropy(student_logits.float(), labels) + 0.5 * kd

    def ours(divergence: str, chunk: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            student_logits, teacher_logits = logits()
            scale = torch.tensor(1.0 / rows, device=device)
            loss, _ = ce_kd_row_pass(
                student_logits,
                torch.ones(rows, dtype=torch.bool, device=device),
                labels,
                LiveTeacherRows(teacher_logits),
                ce_weight=0.5,
                kd_weight=0.5,
                ce_scale=scale,
                kd_scale=scale,
                divergence=divergence,
                temperature=1.0,
                beta=0.5,
                label_smoothing=0.0,
                shared_rows=None,
                chunk_elements=chunk,
            )
            return loss

        return run

    methods: dict = {"naive": naive}
    for divergence in ("forward_kl", "js"):
        methods[f"ours_{divergence}"] = ours(divergence, chunk_elements["default"])
        methods[f"ours_{divergence}_large_chunks"] = ours(divergence, chunk_elements["large"])
    if importlib.util.find_spec("liger_kernel") is None:
        methods["liger_fused_linear_jsd"] = "liger-kernel not installed"
    elif device.type != "cuda":
        methods["liger_fused_linear_jsd"] = "liger-kernel needs a CUDA GPU"
    else:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, temperature=1.0)
        methods["liger_fused_linear_jsd"] = lambda: liger(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
    return methods


def logit_pass_section(sizes: dict, device: torch.device, dtype: torch.dtype) -> dict:
    timing = sizes["timing"]
    tensors = logit_pass_inputs(sizes, device, dtype)
    trained = (tensors["student_hidden"], tensors["student_weight"])
    results: dict = {"settings": {**sizes, "dtype": str(dtype), "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}}
    results["settings"]["ours_uses_liger"] = {
        divergence: uses_liger(divergence, 1.0, 0.5, device) for divergence in ("forward_kl", "js")
    }
    methods: dict = {}
    for name, method in logit_pass_methods(tensors, device, sizes["chunk_elements"]).items():
        if isinstance(method, str):
            methods[name] = {"skipped": method}
            continue

        def forward_backward(method=method) -> torch.Tensor:
            for tensor in trained:
                tensor.grad = None
            loss = method()
            loss.backward()
            return loss.detach()

        try:
            seconds = median_seconds(forward_backward, timing)
            for tensor in trained:
                tensor.grad = None
            memory, loss = peak_memory(forward_backward, device, tensors.values())
            methods[name] = {"time_s": seconds, "loss": float(loss), **memory}
        except Exception as error:  # an out-of-memory error of the naive loss must not lose the others
            methods[name] = failure(error)
        for tensor in trained:
            tensor.grad = None
        free_memory()
    results["methods"] = methods
    liger = "liger_fused_linear_jsd"
    pairs = [("ours_forward_kl", "naive"), ("ours_forward_kl_large_chunks", "naive"), ("ours_js", liger)]
    pairs += [("ours_js_large_chunks", liger), ("ours_forward_kl", liger), ("ours_forward_kl_large_chunks", liger)]
    results["ratios"] = {}
    for numerator, denominator in pairs:
        top, bottom = methods[numerator], methods[denominator]
        results["ratios"][f"{numerator}/{denominator}"] = {
            "numerator": numerator,
            "denominator": denominator,
            "time": ratio(top.get("time_s"), bottom.get("time_s")),
            "peak_memory": ratio(top.get("peak_mib"), bottom.get("peak_mib")),
        }
    results["reference"] = LIGER_REFERENCE
    return results


# ---- (c) teacher precision ---------------------------------------------------------------------------------------


def seq2seq_batch(vocab: int, batch: int, source_length: int, target_length: int, device: torch.device) -> dict:
    """Random source and target ids (ids 0-4 are the special tokens), a tenth of the label positions masked."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(5, vocab, (batch, target_length), generator=generator)
    labels[torch.rand(batch, target_length, generator=generator) < 0.1] = -100
    input_ids = torch.randint(5, vocab, (batch, source_length), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def teacher_precision_family(family: str, sizes: dict, timing: dict, device: torch.device, flags: dict) -> dict:
    spec = dict(sizes["families"][family])
    torch.manual_seed(0)
    teacher = tiny_model(family, spec.pop("vocab_size"), **spec)
    layers = sizes["student_layers"][family]
    student = create_student(teacher, num_encoder_layers=layers, num_decoder_layers=layers)
    vocab = teacher.config.vocab_size
    inputs = seq2seq_batch(vocab, sizes["batch"], sizes["source_length"], sizes["target_length"], device)
    results: dict = {
        "teacher_parameters": sum(parameter.numel() for parameter in teacher.parameters()),
        "student_parameters": sum(parameter.numel() for parameter in student.parameters()),
        # what teacher_dtype casts: floating-point parameters and buffers (BART's final_logits_bias)
        "teacher_floating_point_elements": sum(
            tensor.numel() for tensor in [*teacher.parameters(), *teacher.buffers()] if tensor.is_floating_point()
        ),
    }
    for teacher_dtype in ("bfloat16", "float32"):
        args = Seq2SeqDistillationTrainingArguments(
            output_dir=f"/tmp/gpu_bench_{family}",
            report_to=[],
            learning_rate=1e-4,
            max_grad_norm=0.0,
            teacher_dtype=teacher_dtype,
            **distill_step.KD_SETTINGS,
            **flags,
        )
        trainer = Seq2SeqDistillationTrainer(model=copy.deepcopy(student), teacher_model=copy.deepcopy(teacher), args=args)
        trainer = distill_step.ready_to_step(trainer)
        step = distill_step.training_step(trainer, inputs)
        seconds = median_seconds(step, timing)  # the warm-up also creates the optimizer states measured below
        memory, _ = peak_memory(step, device, [trainer.model, trainer.teacher, trainer.optimizer, inputs])
        teacher_parameter_dtype = str(next(trainer.teacher.parameters()).dtype)
        results[teacher_dtype] = {"step_s": seconds, "teacher_parameter_dtype": teacher_parameter_dtype, **memory}
        del trainer, step
        free_memory()
    results["bf16_over_fp32"] = {
        "step_time": ratio(results["bfloat16"]["step_s"], results["float32"]["step_s"]),
        "peak_memory": ratio(results["bfloat16"]["peak_mib"], results["float32"]["peak_mib"]),
    }
    return results


def teacher_precision_section(sizes: dict, timing: dict, device: torch.device, flags: dict) -> dict:
    results: dict = {"settings": dict(sizes)}
    for family in sizes["families"]:
        try:
            results[family] = teacher_precision_family(family, sizes, timing, device, flags)
        except Exception as error:
            results[family] = failure(error)
        free_memory()
    return results


# ---- the run -----------------------------------------------------------------------------------------------------


def write_json(results: dict, output: Path) -> None:
    """Strict JSON (no NaN / Infinity), written to a temporary file and moved into place: never half a file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    with temporary.open("w") as handle:
        json.dump(results, handle, indent=2, allow_nan=False)
    os.replace(temporary, output)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ratio_lines(results: dict) -> list[str]:
    """One printed line per ratio (or per section that failed or was skipped)."""
    lines = []
    step = results.get("step", {})
    if "error" in step:
        lines.append(f"step: error: {step['error']}")
    elif step:
        lines += [
            f"step: distill step / (teacher forward + CE step) {fmt(step['overhead_ratio'])}",
            f"step: distill step / CE step {fmt(step['distill_over_ce_step'])}",
            f"step: naive distill step / (teacher forward + CE step) {fmt(step['naive_overhead_ratio'])}",
            f"step: cached top-k step / CE step {fmt(step['cached_over_ce_step'])}",
        ]
    trl = results.get("trl", {})
    if trl:
        detail = trl.get("skipped") or (f"error: {trl['error']}" if "error" in trl else fmt(trl["ours_over_trl"]))
        lines.append(f"trl: our generalized-JSD step / TRL GKDTrainer's {detail}")
    logit = results.get("logit_pass", {})
    if "error" in logit:
        lines.append(f"logit pass: error: {logit['error']}")
    for name, pair in logit.get("ratios", {}).items():
        missing = [logit["methods"][key] for key in (pair["numerator"], pair["denominator"])]
        missing = [method.get("skipped") or method.get("error") for method in missing if "time_s" not in method]
        detail = missing[0] if missing else f"time {fmt(pair['time'])}, peak memory {fmt(pair['peak_memory'])}"
        lines.append(f"logit pass: {name}: {detail}")
    precision_results = results.get("teacher_precision", {})
    if "error" in precision_results:
        lines.append(f"teacher precision: error: {precision_results['error']}")
    for family in precision_results.get("settings", {}).get("families", {}):
        family_results = precision_results[family]
        if "error" in family_results:
            lines.append(f"teacher precision {family}: error: {family_results['error']}")
            continue
        pair = family_results["bf16_over_fp32"]
        lines.append(
            f"teacher precision {family}: bf16 / fp32 teacher: step time {fmt(pair['step_time'])}, "
            f"peak memory {fmt(pair['peak_memory'])}"
        )
    return lines


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, run the chosen sections, write the JSON file after each one, print the ratios; returns the
    results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json")
    parser.add_argument("--tiny", action="store_true", help="small sizes and few steps: seconds, on a CPU too")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("the full sizes need a CUDA GPU (the naive logit pass alone holds tens of GB); use --tiny here")
    sizes = SIZES["tiny" if args.tiny else "full"]
    flags, dtype = precision(device)
    timing = sizes["timing"]
    results: dict = {
        "settings": {
            "mode": "tiny" if args.tiny else "full",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "precision": str(dtype),
            "trainer_flags": flags,
            "timing": timing,
            "threads": torch.get_num_threads(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "transformers": transformers.__version__,
                "trl": package_version("trl"),
                "liger_kernel": package_version("liger-kernel", "liger_kernel"),
            },
        }
    }
    sections = {
        "step": lambda: step_section(sizes["step"], timing, device, flags),
        "trl": lambda: trl_section(sizes["step"], timing, device, flags),
        "logit_pass": lambda: logit_pass_section(sizes["logit_pass"], device, dtype),
        "teacher_precision": lambda: teacher_precision_section(sizes["teacher_precision"], timing, device, flags),
    }
    for name in args.sections:
        start = time.perf_counter()
        try:
            results[name] = sections[name]()
        except Exception as error:  # one failing section must not lose the others
            results[name] = failure(error)
        results[name]["elapsed_s"] = time.perf_counter() - start
        free_memory()
        write_json(results, args.output)
        print(f"{name}: done in {results[name]['elapsed_s']:.1f}s", file=sys.stderr, flush=True)
    for line in ratio_lines(results):
        print(line)
    print(f"wrote {args.output}")
    return results


def errors(results: dict) -> list[str]:
    """Every recorded error, by where it is (skipped optional parts are not errors)."""
    found = []

    def visit(item, where: str) -> None:
        if isinstance(item, dict):
            if "error" in item:
                found.append(f"{where}: {item['error']}")
            for key, value in item.items():
                visit(value, f"{where}.{key}" if where else key)

    visit(results, "")
    return found


def main() -> None:
    results = run()
    sys.exit(1 if errors(results) else 0)


if __name__ == "__main__":
    main()
