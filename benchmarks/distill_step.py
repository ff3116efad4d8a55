"""What a distillation step costs beyond its necessary parts, measured side by side in one run.

    python benchmarks/distill_step.py [--output benchmarks/results/distill_step.json] [--skip-memory] [--skip-trl]

On the same tiny causal models (GPT-2 shapes, 32,000-token vocabulary, 4 x 256 tokens a step, ~10% of the label
positions masked) and the same batch, every step is timed the same way: the trainer's ``training_step`` plus the
optimizer step, median of several steps after warm-up. It prints and writes:

1. overhead ratio = distillation step / (teacher inference forward + student CE step), for our step and for a naive
   one (full log-softmax of both models over every position, mask applied afterwards);
2. extra peak memory of the loss at 32k / 128k / 256k vocabularies, ours vs naive (``benchmarks/loss_memory.py``,
   fresh subprocesses);
3. cached step (top-k teacher cache, no teacher forward) / student CE step, and the KL gap after the same number of
   steps between a student distilled from top-k and one distilled from the full vocabulary;
4. our step vs TRL's GKDTrainer at equal settings (generalized JSD, beta 0.5, T = 1, no CE, no on-policy
   sampling), when TRL is installed.

Numbers are noisy on small machines: compare within one run, and run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seq2seq_distill import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from seq2seq_distill.teacher_cache import CACHE_INDICES, CACHE_LOG_PROBS, TeacherCache  # noqa: E402

VOCAB = 32_000
BATCH, LENGTH = 4, 256
STUDENT = dict(n_embd=256, n_layer=4, n_head=4)
TEACHER = dict(n_embd=384, n_layer=6, n_head=6)
RESULTS = Path(__file__).resolve().parent / "results"
# The trainer settings of the steps compared: Hinton KD + CE, and TRL GKD's loss (generalized JSD, no CE).
KD_SETTINGS = dict(ce_weight=0.5, kd_weight=0.5, temperature=2.0)
GKD_SETTINGS = dict(ce_weight=0.0, kd_weight=1.0, divergence="generalized_jsd", divergence_beta=0.5, temperature=1.0)
# Trainer arguments of both our trainers and TRL's: the same optimizer, no clipping; settings= override them.
TRAINER_DEFAULTS = dict(report_to=[], use_cpu=True, learning_rate=1e-3, max_grad_norm=0.0)


def model(shape: dict, seed: int, vocab: int = VOCAB, length: int = LENGTH, **config) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=length,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=2,
        eos_token_id=2,
        **shape,
        **config,
    )
    return GPT2LMHeadModel(config)


def concentrate(teacher: GPT2LMHeadModel, inputs: dict, top_k: int, coverage: float) -> float:
    """Scale the teacher's (untied) LM head until its top-k tokens hold ``coverage`` of the mass, as a trained LM's do.

    A randomly initialized 32k-vocabulary model is nearly uniform (its top 32 tokens hold ~0.1%), which no real
    teacher is; top-k distillation is only meaningful against a concentrated distribution. Returns the coverage.
    """
    with torch.no_grad():
        logits = teacher(input_ids=inputs["input_ids"]).logits.float()

        def mass(scale: float) -> float:
            return torch.softmax(logits * scale, -1).topk(top_k, -1).values.sum(-1).mean().item()

        low, high = 1.0, 1.0
        while mass(high) < coverage:
            high *= 2
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if mass(middle) < coverage else (low, middle)
        teacher.lm_head.weight.mul_(high)
        return mass(high)


def batch(seed: int, vocab: int = VOCAB, batch_size: int = BATCH, length: int = LENGTH) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch_size, length), generator=generator)
    labels = input_ids.clone()
    labels[torch.rand(batch_size, length, generator=generator) < 0.1] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t1", eos_token="t2"
    )


def trainer_for(student, teacher, *, cache=None, trainer_class=DistillationTrainer, **settings) -> DistillationTrainer:
    """A trainer ready to step; ``settings`` override the defaults (on a GPU: ``use_cpu=False, bf16=True``)."""
    args = DistillationTrainingArguments(**{"output_dir": "/tmp/distill_step_bench", **TRAINER_DEFAULTS, **settings})
    trainer = trainer_class(
        model=student,
        teacher_model=teacher,
        teacher_cache=cache,
        args=args,
        processing_class=tokenizer(student.config.vocab_size),
    )
    return ready_to_step(trainer)


def ready_to_step(trainer):
    """What Trainer.train() sets up before its first training_step, for calling training_step directly."""
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    if trainer.args.bf16 or trainer.args.fp16:
        # train() gets autocast from accelerator.prepare(model), which patches model.forward in place; without it a
        # "bf16" step would run the student in float32.
        trainer.accelerator.prepare_model(trainer.model, device_placement=False)
    return trainer


def training_step(trainer, inputs: dict):
    """One optimizer step as the Trainer takes it: training_step, optimizer step, zero_grad."""

    def run():
        trainer.training_step(trainer.model, dict(inputs))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return run


def teacher_forward(teacher, inputs: dict):
    def run():
        with torch.no_grad():
            teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)

    return run


def synchronize() -> None:
    """Wait for the GPU's queued work, so that a clock read after a step measures the step and not its launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_medians(steps: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each step, timed in round-robin rounds so that machine drift hits all of them alike."""
    for run in steps.values():
        for _ in range(warmup):
            run()
    synchronize()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class NaiveDistillationTrainer(DistillationTrainer):
    """The naive logit terms: full log-softmax of both [B, T, V] tensors, per-position KL, the mask applied after."""

    def _logit_terms(self, student_outputs, teacher_outputs, inputs, positions):
        settings = self.distillation
        temperature = settings.temperature
        student_logits, teacher_logits = student_outputs.logits[:, :-1], teacher_outputs.logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        mask = (labels != -100).float()
        student_log_probs = F.log_softmax(student_logits.float() / temperature, -1)
        teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, -1)
        kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
        kd = (kl * mask).sum() * temperature**2 / positions.target_count
        ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        ce = ce / positions.target_count
        loss = settings.ce_weight * ce + settings.kd_weight * kd
        return loss, {"ce_loss": ce.detach(), "kd_loss": kd.detach()}


def cached_inputs(teacher, inputs: dict, top_k: int, temperature: float) -> dict:
    """The batch plus the teacher's top-k rows, as the teacher-cache collator delivers them."""
    with torch.no_grad():
        logits = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
    values, indices = F.log_softmax(logits.float() / temperature, -1).topk(top_k, -1)
    mask = inputs["labels"][:, 1:] != -100
    return {**inputs, CACHE_LOG_PROBS: values[mask], CACHE_INDICES: indices[mask]}


def in_memory_cache(top_k: int, temperature: float, vocab: int = VOCAB) -> TeacherCache:
    return TeacherCache("(in memory)", {"top_k": top_k, "temperature": temperature, "vocab_size": vocab}, {})


@torch.no_grad()
def held_out_kl(student, teacher, inputs: dict) -> float:
    """Mean per-token KL(teacher || student) at T = 1 on the supervised positions."""
    student_logits = student(input_ids=inputs["input_ids"]).logits[:, :-1]
    teacher_logits = teacher(input_ids=inputs["input_ids"]).logits[:, :-1]
    mask = inputs["labels"][:, 1:] != -100
    student_log_probs = F.log_softmax(student_logits[mask].float(), -1)
    teacher_log_probs = F.log_softmax(teacher_logits[mask].float(), -1)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean").item()


def kl_gap(student, teacher, steps: int, top_k: int, temperature: float) -> dict:
    """Same init, same batches, same steps: distilled from the full vocabulary vs from a top-k cache."""
    train_batches = [batch(seed) for seed in range(100, 104)]
    results = {}
    for name in ("full", "top_k"):
        trained = copy.deepcopy(student)
        settings = dict(ce_weight=0.0, kd_weight=1.0, temperature=temperature)
        if name == "full":
            trainer = trainer_for(trained, teacher, **settings)
        else:
            trainer = trainer_for(trained, None, cache=in_memory_cache(top_k, temperature), **settings)
        for index in range(steps):
            inputs = train_batches[index % len(train_batches)]
            if name == "top_k":
                inputs = cached_inputs(teacher, inputs, top_k, temperature)
            trainer.training_step(trainer.model, dict(inputs))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        results[name] = held_out_kl(trained, teacher, batch(999))
    results["initial"] = held_out_kl(student, teacher, batch(999))
    results["gap"] = results["top_k"] - results["full"]
    results["gap_relative_to_full"] = results["gap"] / results["full"]
    return results


def trl_gkd_trainer(student, teacher, **settings):
    """TRL's GKDTrainer on the same models with equal settings (no on-policy sampling), or None without TRL.

    ``settings`` override the Trainer defaults as in :func:`trainer_for`.
    """
    try:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        return None
    config = GKDConfig(
        **{"output_dir": "/tmp/distill_step_bench_trl", **TRAINER_DEFAULTS, **settings},
        lmbda=0.0,
        beta=0.5,
        seq_kd=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    dummy = Dataset.from_dict({"messages": [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]})
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dummy,
        processing_class=tokenizer(student.config.vocab_size),
    )
    return ready_to_step(trainer)


def step_ratios(student, teacher, inputs: dict, top_k: int, timing: dict, **settings) -> dict:
    """Times of the student's CE step, the teacher's forward, our distillation step, the naive one and the cached
    top-k step on one batch, and the ratios between them; ``settings`` as in :func:`trainer_for`."""
    vocab = student.config.vocab_size
    temperature = KD_SETTINGS["temperature"]
    kd = {**KD_SETTINGS, **settings}
    times = interleaved_medians(
        {
            "student_ce_step": training_step(
                trainer_for(copy.deepcopy(student), None, **{**settings, "ce_weight": 1.0, "kd_weight": 0.0}), inputs
            ),
            "teacher_forward": teacher_forward(teacher, inputs),
            "distill_step": training_step(trainer_for(copy.deepcopy(student), teacher, **kd), inputs),
            "naive_distill_step": training_step(
                trainer_for(copy.deepcopy(student), teacher, trainer_class=NaiveDistillationTrainer, **kd), inputs
            ),
            "cached_step": training_step(
                trainer_for(copy.deepcopy(student), None, cache=in_memory_cache(top_k, temperature, vocab), **kd),
                cached_inputs(teacher, inputs, top_k, temperature),
            ),
        },
        **timing,
    )
    floor = times["teacher_forward"] + times["student_ce_step"]
    return {
        "times_s": times,
        "overhead_ratio": times["distill_step"] / floor,
        "naive_overhead_ratio": times["naive_distill_step"] / floor,
        "cached_over_ce_step": times["cached_step"] / times["student_ce_step"],
    }


def trl_comparison(student, teacher, inputs: dict, timing: dict, **settings) -> dict:
    """Our generalized-JSD step against TRL's GKDTrainer's at equal settings; ``trl_gkd_s`` is None without TRL."""
    gkd = trl_gkd_trainer(copy.deepcopy(student), teacher, **settings)
    steps = {"ours": training_step(trainer_for(copy.deepcopy(student), teacher, **{**GKD_SETTINGS, **settings}), inputs)}
    if gkd is not None:
        steps["trl"] = training_step(gkd, inputs)
    measured = interleaved_medians(steps, **timing)
    ours, trl = measured["ours"], measured.get("trl")
    return {"ours_s": ours, "trl_gkd_s": trl, "ours_over_trl": ours / trl if trl else None}


def memory_section(output: Path) -> dict:
    """Runs benchmarks/loss_memory.py (each measurement in a fresh process) and returns its ratios."""
    target = output.with_name("loss_memory.json")
    subprocess.run([sys.executable, str(Path(__file__).with_name("loss_memory.py")), "--output", str(target)], check=True)
    return json.loads(target.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(RESULTS / "distill_step.json"))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--kl-steps", type=int, default=30)
    parser.add_argument("--coverage", type=float, default=0.9, help="teacher's top-k mass, as a trained LM's")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)

    student, teacher = model(STUDENT, seed=0), model(TEACHER, seed=1, tie_word_embeddings=False)
    teacher.eval().requires_grad_(False)
    inputs = batch(0)
    coverage = concentrate(teacher, inputs, args.top_k, args.coverage)
    supervised = int((inputs["labels"][:, 1:] != -100).sum())
    print(
        f"models: student {STUDENT}, teacher {TEACHER}, vocab {VOCAB}; {BATCH}x{LENGTH} tokens, {supervised} supervised; "
        f"teacher's top-{args.top_k} tokens hold {100 * coverage:.0f}% of its mass"
    )
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    results: dict = {
        "settings": {
            "vocab": VOCAB,
            "batch": BATCH,
            "length": LENGTH,
            "supervised_tokens": supervised,
            "student": STUDENT,
            "teacher": TEACHER,
            "threads": torch.get_num_threads(),
            "teacher_top_k_coverage": coverage,
            **vars(args),
        }
    }

    results.update(step_ratios(student, teacher, inputs, args.top_k, timing))
    times = results["times_s"]
    print(
        f"student CE step {times['student_ce_step']:.3f}s  teacher forward {times['teacher_forward']:.3f}s  "
        f"distill step {times['distill_step']:.3f}s  naive {times['naive_distill_step']:.3f}s  cached {times['cached_step']:.3f}s"
    )
    print(f"overhead ratio: ours {results['overhead_ratio']:.3f}  naive {results['naive_overhead_ratio']:.3f}   (target <= 1.15)")
    print(f"cached top-{args.top_k} step / CE step: {results['cached_over_ce_step']:.3f}   (target <= 1.15)")

    results["kl_gap"] = kl_gap(student, teacher, args.kl_steps, args.top_k, temperature=1.0)
    gap = results["kl_gap"]
    print(
        f"held-out KL(teacher||student) after {args.kl_steps} steps: full-vocabulary KD {gap['full']:.4f}, top-{args.top_k} "
        f"{gap['top_k']:.4f} (initial {gap['initial']:.4f}); gap {gap['gap']:+.4f} ({100 * gap['gap_relative_to_full']:+.1f}%)"
    )

    if not args.skip_trl:
        results["trl"] = trl_comparison(student, teacher, inputs, timing)
        ours, trl = results["trl"]["ours_s"], results["trl"]["trl_gkd_s"]
        if trl is None:
            print("TRL is not installed: skipped the GKDTrainer comparison (pip install trl)")
        else:
            print(f"generalized JSD step: ours {ours:.3f}s, TRL GKDTrainer {trl:.3f}s, ours / TRL {ours / trl:.3f}")

    if not args.skip_memory:
        memory = memory_section(output)
        results["loss_memory"] = memory
    output.write_text(json.dumps(results, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
