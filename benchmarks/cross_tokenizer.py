"""Across tokenizers on the embedded data: is a student distilled through the span terms closer to its teacher than
the same student trained with CE alone?

    OMP_NUM_THREADS=1 python benchmarks/cross_tokenizer.py [--seeds 3] [--quick] [--output outputs/cross_tokenizer]

On the embedded default data (the standard-library docstring summaries, its seeded test split held out), driving
the CLI as a user would:

1. a T5 teacher trained from scratch (``train_teacher`` with no ``--teacher``: WordPiece tokenizer, embedded preset),
   trained once into ``<output>/teacher`` and reused while its flags and the corpus are unchanged (a stamp records
   both);
2. a BART-family student folder per seed: a byte-level BPE tokenizer of its own, trained on the same training texts
   (built once and saved: the ``tokenizers`` BPE trainer may break ties differently in another process), and a
   small BART initialized from that seed;
3. per seed and setting, ``distill --teacher T --student S --kd_weight 0`` for the same number of steps:
   ``ce_only`` (``--ce_weight 1``: the teacher is never run), ``hybrid`` (CE + ULD + matched KL, 0.5 each: the
   README's recipe) and ``uld`` (CE + ULD on every span, 0.5 each).

Measured on the test split: the primary figure is ``cross_tokenizer.shared_token_divergence`` (the mean
KL(teacher || student) at T = 1 over the spans where both tokenizations realized the same token, restricted to the
shared tokens; lower is closer to the teacher), the measure the tests use. Secondary: ROUGE-L of the student's greedy
summaries against the teacher's (does it *say* what the teacher says?) and against the references. Each setting is
compared with ``ce_only`` by the benchmark's seed rule (``benchmark.seed_comparison``: the difference of the means
must exceed the larger sample standard deviation). The table is printed and written to
``<results>/cross_tokenizer.txt``, everything as strict JSON to ``<results>/cross_tokenizer.json``
(``benchmarks/results`` by default; ``--quick`` writes under ``<output>/results`` instead, two seeds of a few steps
each to check the script, not to measure). With other processes on the machine, ``OMP_NUM_THREADS=1`` is several
times faster than torch's default threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from seq2seq_distill.arguments import DataArguments  # noqa: E402
from seq2seq_distill.benchmark import seed_comparison, seed_comparison_phrase  # noqa: E402
from seq2seq_distill.cli import main as cli  # noqa: E402
from seq2seq_distill.cross_tokenizer import shared_token_divergence  # noqa: E402
from seq2seq_distill.data import load_raw_splits, prepare_data  # noqa: E402
from seq2seq_distill.inference import teacher_outputs  # noqa: E402
from seq2seq_distill.metrics import rouge_scores  # noqa: E402
from seq2seq_distill.modeling import load_model, load_tokenizer  # noqa: E402
from seq2seq_distill.presets import EMBEDDED_DEFAULTS  # noqa: E402
from seq2seq_distill.tiny import tiny_model, train_byte_level_bpe  # noqa: E402

# The teacher: the embedded preset's T5 from scratch, 3 layers per stack (the preset's 6 take too long on 2 cores).
TEACHER_FLAGS = "--scratch_num_layers 3 --teacher_num_train_epochs 8"
TEACHER_QUICK_FLAGS = "--scratch_num_layers 3 --max_steps 30"
# The student: its own byte-level BPE vocabulary (the teacher's WordPiece has EMBEDDED_DEFAULTS' 2000 entries).
STUDENT_VOCABULARY = 1500
STUDENT_SHAPE = {"hidden": 64, "layers": 2, "heads": 2}
# A fresh student learns at a higher rate than the preset's 1e-3 (meant for a student copied from its teacher): at
# 1e-3 it still generated nothing but "<s>" after 5 epochs; 1e-2 trained worse than 5e-3.
STUDENT_LEARNING_RATE = 5e-3
# What every student run shares; the embedded preset does not apply once --teacher is given, so its data and
# temperature settings are passed on here (presets.EMBEDDED_DEFAULTS, one source of truth).
COMMON = (
    f"--max_source_length {EMBEDDED_DEFAULTS['max_source_length']} --max_target_length {EMBEDDED_DEFAULTS['max_target_length']} "
    f"--temperature {EMBEDDED_DEFAULTS['temperature']} --learning_rate {STUDENT_LEARNING_RATE} "
    "--kd_weight 0 --per_device_train_batch_size 16 --eval_strategy no --save_strategy no --logging_steps 50 --report_to none"
)
SETTINGS = {
    "ce_only": "--ce_weight 1",
    "hybrid": "--ce_weight 0.5 --uld_weight 0.5 --matched_kl_weight 0.5",
    "uld": "--ce_weight 0.5 --uld_weight 0.5",
}
BASELINE = "ce_only"
METRICS = {  # name: (label in the table, lower is better)
    "divergence": ("KL to teacher", True),
    "rougeL_vs_teacher": ("ROUGE-L vs teacher", False),
    "rougeL_vs_reference": ("ROUGE-L vs reference", False),
}


def _run(command: str) -> float:
    """One CLI command in this process; its wall time in seconds. A failing command ends the script with its status."""
    argv = shlex.split(command)
    print("\n$ seq2seq-distill " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    status = cli(argv)
    if status:
        sys.exit(status)
    return time.perf_counter() - start


def _corpus_digest(raw) -> str:
    """What the embedded data is on this Python (its stdlib docstrings): the teacher and tokenizer stamps hold it."""
    rows = {split: [dict(row) for row in raw[split]] for split in raw}
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()


def _teacher(folder: Path, flags: str, digest: str) -> tuple[str, float | None]:
    """The teacher, trained once per (flags, corpus): ``(folder, training seconds or None when reused)``."""
    stamp_text = f"train_teacher {flags}\ncorpus sha256 {digest}\n"
    stamp = folder / "benchmark_stamp.txt"
    if stamp.exists() and stamp.read_text() == stamp_text and (folder / "model.safetensors").exists():
        print(f"\nreusing the teacher in {folder}")
        return str(folder), None
    seconds = _run(f"train_teacher {flags} --eval_strategy no --save_strategy no --output_dir {shlex.quote(str(folder))}")
    stamp.write_text(stamp_text)
    return str(folder), seconds


def _student_tokenizer(folder: Path, texts: list[str], digest: str) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the training texts, framed as BART frames a sequence (``<s> $A </s>``), with the
    special-token ids of ``tiny`` so a ``tiny_config("bart", ...)`` needs no id overrides. Built once and reused by a
    stamp: the BPE trainer's ties may fall another way in another process, and every seed must share one tokenizer."""
    stamp_text = f"byte-level BPE, {STUDENT_VOCABULARY} tokens, <s> $A </s>\ncorpus sha256 {digest}\n"
    stamp = folder / "benchmark_stamp.txt"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return load_tokenizer(str(folder), flag="--student")
    fast = train_byte_level_bpe(texts, vocab_size=STUDENT_VOCABULARY, model_type="bart")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    stamp.write_text(stamp_text)
    return load_tokenizer(str(folder), flag="--student")


def _student(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int) -> str:
    """A BART student folder (config, weights of ``seed``, its tokenizer): the start of every setting of that seed,
    so the settings of one seed differ only by their loss, and seeds by their initialization and data order."""
    torch.manual_seed(seed)
    model = tiny_model("bart", len(tokenizer), **STUDENT_SHAPE)
    model.generation_config.max_new_tokens = EMBEDDED_DEFAULTS["max_new_tokens"]
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def _generations(model, tokenizer, data, rows: int) -> list[str]:
    """Greedy summaries of the first ``rows`` test inputs, as the benchmark generates them."""
    generation = {"max_new_tokens": EMBEDDED_DEFAULTS["max_new_tokens"], "do_sample": False, "num_beams": 1}
    head = dataclasses.replace(data, tokenized=DatasetDict({"test": data.tokenized["test"].select(range(rows))}))
    return teacher_outputs(model, tokenizer, head, "test", generation, batch_size=32, device=torch.device("cpu"))


def _summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (None with one seed: strict JSON has no NaN) and the per-seed figures."""
    stdev = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "stdev": stdev, "per_seed": values}


def _table(runs: list[dict], settings: dict, seeds: list[int], verdicts: dict) -> list[str]:
    lines = [f"{'setting':<8} {'metric':<21} {'mean':>7} {'stdev':>6}  per seed ({' '.join(str(seed) for seed in seeds)})"]
    for setting in settings:
        mine = [run for run in runs if run["setting"] == setting]
        for metric, (label, _) in METRICS.items():
            summary = _summary([run[metric] for run in mine])
            stdev = f"{summary['stdev']:.3f}" if summary["stdev"] is not None else "n/a"
            per_seed = " ".join(f"{value:.3f}" for value in summary["per_seed"])
            lines.append(f"{setting:<8} {label:<21} {summary['mean']:>7.3f} {stdev:>6}  {per_seed}")
        seconds = " ".join(f"{run['train_seconds']:.0f}" for run in mine)
        spans = " ".join(str(run["spans"]) for run in mine)
        lines.append(f"{setting:<8} {'train s / spans':<21} {'':>7} {'':>6}  {seconds} / {spans}")
    for by_metric in verdicts.values():
        for metric, verdict in by_metric.items():
            lines.append(f"  {metric}: {verdict['phrase']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/cross_tokenizer", help="teacher, students and runs")
    parser.add_argument("--results", default=None, help="where the table and JSON go (default: benchmarks/results)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--student_epochs", type=float, default=5.0, help="epochs of every student run")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="two seeds of a few steps each: checks the script")
    args = parser.parse_args()
    if BASELINE not in args.settings:
        parser.error(f"--settings must include {BASELINE}, the setting the others are compared with")
    settings = {name: flags for name, flags in SETTINGS.items() if name in args.settings}
    seeds = list(range(2 if args.quick else args.seeds))
    output = Path(args.output) / ("quick" if args.quick else "full")
    results = Path(args.results or (output / "results" if args.quick else Path(__file__).parent / "results"))
    length = "--max_steps 12" if args.quick else f"--num_train_epochs {args.student_epochs}"
    test_rows = 16 if args.quick else None
    start = time.perf_counter()

    data_args = DataArguments(
        max_source_length=EMBEDDED_DEFAULTS["max_source_length"], max_target_length=EMBEDDED_DEFAULTS["max_target_length"]
    )
    raw = load_raw_splits(data_args, "seq2seq", evaluates=False)  # the CLI's carving: the same test rows
    digest = _corpus_digest(raw)
    teacher_path, teacher_seconds = _teacher(output / "teacher", TEACHER_QUICK_FLAGS if args.quick else TEACHER_FLAGS, digest)
    train_texts = list(raw["train"]["document"]) + list(raw["train"]["summary"])
    student_tokenizer = _student_tokenizer(output / "student_tokenizer", train_texts, digest)

    teacher = load_model(teacher_path, "seq2seq")
    teacher_tokenizer = load_tokenizer(teacher_path)
    test_rows = test_rows or len(raw["test"])
    references = list(raw["test"]["summary"])[:test_rows]
    teacher_texts = _generations(
        teacher, teacher_tokenizer, prepare_data(raw, teacher_tokenizer, "seq2seq", data_args), test_rows
    )
    measured = prepare_data(raw, student_tokenizer, "seq2seq", data_args, teacher_tokenizer=teacher_tokenizer)
    test = measured.tokenized["test"].select(range(test_rows))

    runs = []
    for seed in seeds:
        student_path = _student(output / "students" / f"seed{seed}", student_tokenizer, seed)
        for setting, flags in settings.items():
            folder = output / "runs" / f"{setting}-seed{seed}"
            seconds = _run(
                f"distill --teacher {shlex.quote(teacher_path)} --student {shlex.quote(student_path)} {COMMON} {flags} "
                f"{length} --seed {seed} --output_dir {shlex.quote(str(folder))}"
            )
            student = load_model(str(folder), "seq2seq")
            divergence, spans = shared_token_divergence(student, teacher, test, student_tokenizer, teacher_tokenizer)
            texts = _generations(student, student_tokenizer, measured, test_rows)
            run = {
                "setting": setting,
                "seed": seed,
                "divergence": divergence,
                "spans": spans,
                "rougeL_vs_teacher": rouge_scores(texts, teacher_texts)["rougeL"],
                "rougeL_vs_reference": rouge_scores(texts, references)["rougeL"],
                "train_seconds": seconds,
            }
            print(f"\n{setting} seed {seed}: " + json.dumps(run), flush=True)
            runs.append(run)

    verdicts = {}
    for setting in settings:
        if setting == BASELINE:
            continue
        verdicts[setting] = {}
        for metric, (label, lower_is_better) in METRICS.items():
            baseline = [run[metric] for run in runs if run["setting"] == BASELINE]
            candidate = [run[metric] for run in runs if run["setting"] == setting]
            comparison = seed_comparison(baseline, candidate, lower_is_better=lower_is_better)
            verdicts[setting][metric] = {**comparison, "phrase": seed_comparison_phrase(setting, comparison, label)}
    seconds = time.perf_counter() - start
    lines = _table(runs, settings, seeds, verdicts)
    lines.append(
        f"teacher ROUGE-L vs reference {rouge_scores(teacher_texts, references)['rougeL']:.3f}; {len(references)} test rows; "
        f"teacher trained in {'(reused)' if teacher_seconds is None else f'{teacher_seconds:.0f} s'}; {seconds:.0f} s in all"
    )
    command = "OMP_NUM_THREADS=1 python benchmarks/cross_tokenizer.py " + shlex.join(sys.argv[1:])
    report = {
        "command": command.strip(),
        "data": {"source": "embedded stdlib docstring summarization", "train_rows": len(raw["train"]), "test_rows": test_rows},
        "teacher": {
            "flags": TEACHER_QUICK_FLAGS if args.quick else TEACHER_FLAGS,
            "vocabulary": len(teacher_tokenizer),
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "rougeL_vs_reference": rouge_scores(teacher_texts, references)["rougeL"],
            "train_seconds": teacher_seconds,
        },
        "student": {"family": "bart", "vocabulary": len(student_tokenizer), **STUDENT_SHAPE},
        "common_flags": f"{COMMON} {length}",
        "settings": settings,
        "seeds": seeds,
        "runs": runs,
        "summary": {
            setting: {metric: _summary([run[metric] for run in runs if run["setting"] == setting]) for metric in METRICS}
            for setting in settings
        },
        "verdicts": verdicts,
        "seconds": seconds,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "cross_tokenizer.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (results / "cross_tokenizer.txt").write_text("$ " + command.strip() + "\n" + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
