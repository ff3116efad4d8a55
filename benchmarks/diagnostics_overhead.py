"""What ``--diagnostics`` costs a distillation step: the same step with it on and off, side by side in one run.

    python benchmarks/diagnostics_overhead.py [--repeats 7] [--output benchmarks/results/diagnostics_overhead.json]

``distill_step.py``'s models and batch (GPT-2 shapes, 32,000-token vocabulary, 4 x 256 tokens), its trainer and
its step (``training_step`` + optimizer step), for a live teacher with forward KL (the closed-form path, where the
diagnostic KL is the KD term itself) and reverse KL (the autograd path, where the KL costs one more pass), and for
a top-k cache. On a CPU each step is timed by the process's CPU time (``time.process_time``), which a machine
shared with other jobs disturbs less than the wall clock; on a GPU (bf16) by the wall clock after a synchronize.
Rounds alternate on and off, so drift hits both alike; the spread of the off steps is printed beside the overhead,
since an overhead below it is not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_step  # noqa: E402

CASES = {
    "live forward_kl T=2": dict(temperature=2.0),
    "live reverse_kl T=2": dict(temperature=2.0, divergence="reverse_kl"),
    "cached top-32 forward_kl T=2": dict(temperature=2.0, cached=True),
}


def measure(name: str, settings: dict, repeats: int, device: torch.device) -> dict:
    flags = {"use_cpu": False, "bf16": True} if device.type == "cuda" else {}
    cached = settings.pop("cached", False)
    teacher = distill_step.model(distill_step.TEACHER, seed=1).to(device)
    inputs = {key: value.to(device) for key, value in distill_step.batch(0).items()}
    if cached:
        inputs = distill_step.cached_inputs(teacher, inputs, 32, settings["temperature"])
    steps = {}
    for on in (False, True):
        student = distill_step.model(distill_step.STUDENT, seed=0)
        cache = distill_step.in_memory_cache(32, settings["temperature"]) if cached else None
        trainer = distill_step.trainer_for(student, None if cached else teacher, cache=cache, diagnostics=on, **flags, **settings)
        steps[on] = distill_step.training_step(trainer, inputs)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[bool, list[float]] = {False: [], True: []}
    for run in steps.values():
        run()  # warm-up
    for _ in range(repeats):
        for on, run in steps.items():
            distill_step.synchronize()
            start = clock()
            run()
            distill_step.synchronize()
            times[on].append(clock() - start)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    spread = (max(times[False]) - min(times[False])) / off
    print(f"{name}: off {off:.3f} s, on {on:.3f} s, overhead {on / off - 1:+.1%} (off steps spread {spread:.0%})")
    return {"off_s": off, "on_s": on, "overhead": on / off - 1, "off_spread": spread, "times_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {name: measure(name, dict(settings), args.repeats, device) for name, settings in CASES.items()}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"device": str(device), "torch": torch.__version__, "results": results}
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
