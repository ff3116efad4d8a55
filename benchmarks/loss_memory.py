"""Extra peak memory and time of a KD loss's forward + backward: naive full-vocabulary loss vs the chunked loss.

Run from the repository root (CPU, float32)::

    python benchmarks/loss_memory.py                       # vocabularies 32k, 128k, 256k at 2,048 tokens
    python benchmarks/loss_memory.py --vocab 32000 --tokens 1024 --repeats 5

What is compared, on the same seeded logits ``[B, T, V]`` with a fraction of padding positions (``--padding``):

* ``naive``: the way naive code does it: log-softmax of both full ``[B, T, V]`` tensors, per-position
  KL(teacher || student), *then* multiply by the padding mask and sum. Inputs: the ``[B, T, V]`` student logits
  (``requires_grad``) and teacher logits.
* ``chunked``: :func:`seq2seq_distill.chunked_kd.chunked_logit_distillation_loss` on the supervised rows. Inputs:
  the ``[N, V]`` student rows (``requires_grad``) and teacher rows, gathered before the baseline is taken, as the
  trainer has them (it gathers ``student_logits[mask]`` once for all its terms).
* ``chunked+gather``: the same loss called as ``loss(student[mask], teacher[mask])`` on the ``[B, T, V]`` inputs,
  so the two ``[N, V]`` copies made by the gather count as extra memory too (an end-to-end upper bound).

"Extra peak memory" is the peak resident memory of the process during one forward + backward minus its resident
memory right after the inputs were allocated: ``ru_maxrss`` (the process's high-water mark, KiB on Linux) minus
``VmRSS`` after allocation. It therefore *includes* the gradient w.r.t. the student logits (``[B, T, V]`` for
naive, ``[N, V]`` for chunked), which any approach must produce, and everything the loss allocates on top. The
``beyond grad`` column subtracts that gradient's size, leaving the loss's own working memory. Each measurement
runs in a fresh Python process (this script re-invoked with ``--worker``), because the high-water mark never goes
down. Time is the median of ``--repeats`` forward + backward passes after ``--warmup`` untimed ones, in that same
process, after the memory pass (which is itself a warm-up); the CPU time of the process (all threads) is reported
beside the wall time because it is less disturbed by other programs sharing the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

METHODS = ("naive", "chunked", "chunked+gather")
MIB = 2**20


def resident_kib() -> int:
    """Current resident set size (VmRSS) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def padding_mask(batch: int, length: int, padding: float):
    """``[B, T]`` bool mask, True = supervised; sequences padded at the end, on average ``padding`` of positions."""
    import torch

    padded = torch.linspace(0, 2 * padding * length, batch).round().long().clamp(max=length - 1)
    return torch.arange(length)[None, :] < (length - padded)[:, None]


def seeded_logits(positions: list[int], vocab: int, seed: int):
    """``[len(positions), V]`` logits, row i drawn from its own generator seeded by ``positions[i]``.

    Filled in place row by row, so no temporary raises the memory high-water mark, and the supervised rows alone
    are the same numbers as those rows of the full ``[B * T, V]`` tensor (every method sees the same logits).
    """
    import torch

    logits = torch.empty(len(positions), vocab)
    generator = torch.Generator()
    for row, position in zip(logits, positions, strict=True):
        generator.manual_seed(seed * 1_000_003 + position)
        row.normal_(generator=generator)
    return logits.mul_(3.0)


def naive_kd_loss(student_logits, teacher_logits, mask, temperature: float):
    """Full-vocabulary forward KL over ``[B, T, V]``, masked after the fact (what the chunked loss replaces)."""
    import torch.nn.functional as F

    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    return (per_position * mask).sum() * temperature**2


def run_worker(
    method: str,
    vocab: int,
    tokens: int,
    padding: float,
    temperature: float,
    warmup: int,
    repeats: int,
    chunk_elements: int | None = None,
) -> dict:
    """One fresh process: allocate inputs, measure one forward + backward's peak, then time repeats."""
    import torch

    from seq2seq_distill.chunked_kd import chunked_logit_distillation_loss

    if chunk_elements is not None:
        chunked_logit_distillation_loss = partial(chunked_logit_distillation_loss, chunk_elements=chunk_elements)

    length = 256 if tokens % 256 == 0 else tokens
    batch = tokens // length
    mask = padding_mask(batch, length, padding)
    # Load kernels and start the thread pool on a tiny input, so the big pass measures the loss alone.
    tiny_student, tiny_teacher = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    naive_kd_loss(tiny_student[None], tiny_teacher[None], torch.ones(1, 4), temperature).backward()
    chunked_logit_distillation_loss(tiny_student, tiny_teacher, temperature=temperature).backward()

    if method == "chunked":  # the loss's inputs are the supervised rows; the full tensors are not part of it
        positions = mask.flatten().nonzero().squeeze(1).tolist()
        shape = (len(positions), vocab)
    else:
        positions = list(range(tokens))
        shape = (batch, length, vocab)
    student_logits = seeded_logits(positions, vocab, seed=1).view(shape).requires_grad_(True)
    teacher_logits = seeded_logits(positions, vocab, seed=2).view(shape)

    def forward_backward():
        if method == "naive":
            loss = naive_kd_loss(student_logits, teacher_logits, mask, temperature)
        elif method == "chunked":
            loss = chunked_logit_distillation_loss(student_logits, teacher_logits, temperature=temperature)
        else:
            loss = chunked_logit_distillation_loss(student_logits[mask], teacher_logits[mask], temperature=temperature)
        loss.backward()
        return loss.item()

    baseline_kib = resident_kib()
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > baseline_kib + 64 * 1024:
        raise RuntimeError("the high-water mark is already above the inputs; the peak would be masked")
    loss_value = forward_backward()
    extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib
    grad_bytes = student_logits.grad.numel() * student_logits.grad.element_size()

    times, cpu_times = [], []
    for index in range(warmup + repeats):
        student_logits.grad = None  # no accumulation into an existing gradient
        start, cpu_start = time.perf_counter(), time.process_time()
        forward_backward()
        if index >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "method": method,
        "vocab": vocab,
        "tokens": tokens,
        "supervised_rows": int(mask.sum()),
        "loss": loss_value,
        "extra_peak_mib": extra_kib * 1024 / MIB,
        "grad_mib": grad_bytes / MIB,
        "extra_beyond_grad_mib": extra_kib * 1024 / MIB - grad_bytes / MIB,
        "input_rss_mib": baseline_kib * 1024 / MIB,
        "time_s": statistics.median(times),
        "times_s": times,
        "cpu_time_s": statistics.median(cpu_times),
        "threads": torch.get_num_threads(),
    }


def measure(method: str, vocab: int, args: argparse.Namespace) -> dict:
    """Run one worker in a fresh interpreter and return its result."""
    command = [sys.executable, __file__, "--worker", method, "--vocab", str(vocab), "--tokens", str(args.tokens)]
    command += ["--padding", str(args.padding), "--temperature", str(args.temperature)]
    command += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if args.chunk_elements is not None:
        command += ["--chunk-elements", str(args.chunk_elements)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{method} at V={vocab} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    by_key = {(r["vocab"], r["method"]): r for r in results}
    header = (
        f"{'vocab':>7} {'method':>15} {'extra MiB':>10} {'beyond grad':>12} {'x naive mem':>12} "
        f"{'time s':>8} {'x naive time':>13} {'cpu s':>8} {'x naive cpu':>12} {'loss':>12}"
    )
    lines = [header, "-" * len(header)]
    for vocab in sorted({r["vocab"] for r in results}):
        naive = by_key.get((vocab, "naive"))
        for method in METHODS:
            row = by_key.get((vocab, method))
            if row is None:
                continue
            memory_ratio = f"{row['extra_peak_mib'] / naive['extra_peak_mib']:.3f}" if naive else "-"
            time_ratio = f"{row['time_s'] / naive['time_s']:.3f}" if naive else "-"
            cpu_ratio = f"{row['cpu_time_s'] / naive['cpu_time_s']:.3f}" if naive else "-"
            lines.append(
                f"{vocab:>7} {method:>15} {row['extra_peak_mib']:>10.0f} {row['extra_beyond_grad_mib']:>12.0f} "
                f"{memory_ratio:>12} {row['time_s']:>8.3f} {time_ratio:>13} {row['cpu_time_s']:>8.3f} {cpu_ratio:>12} "
                f"{row['loss']:>12.2f}"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000, 256_000])
    parser.add_argument("--tokens", type=int, default=2048, help="B*T positions (batches of 256-token sequences)")
    parser.add_argument("--padding", type=float, default=0.1, help="average fraction of padded positions")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--warmup", type=int, default=0, help="untimed passes after the memory pass (itself a warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-elements", type=int, help="chunk_elements of the chunked loss (default: its own)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/loss_memory.json"))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        settings = (args.vocab[0], args.tokens, args.padding, args.temperature, args.warmup, args.repeats, args.chunk_elements)
        result = run_worker(args.worker, *settings)
        print(json.dumps(result))
        return
    results = []
    for vocab in args.vocab:
        for method in args.methods:
            results.append(measure(method, vocab, args))
            print(f"measured {method} at V={vocab}", file=sys.stderr, flush=True)
    print(table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        key: getattr(args, key) for key in ("vocab", "tokens", "padding", "temperature", "warmup", "repeats", "chunk_elements")
    }
    args.output.write_text(json.dumps({"settings": settings, "dtype": "float32", "device": "cpu", "results": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
