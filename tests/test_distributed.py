"""Multi-process distillation on CPU: torchrun with 2 processes on the gloo backend, through the real command line.

What is compared, and why the tolerances are what they are:

* 2 processes x 4 examples against 1 process x 8 (same seed, dropout off, constant learning rate, 6 AdamW steps):
  the global batches are the same examples, so the final student weights may differ only by float summation order
  (the gradient all-reduce adds two partial sums, and each process pads its 4 examples to its own longest one).
  That measured ~1e-6 here; ``WEIGHT_ATOL = 1e-5`` leaves room for other CPUs. A run that did not synchronize the
  gradients, or trained on other examples, lands ~1e-3 away (each AdamW step moves a weight by up to the learning
  rate, 1e-3), and every test checks that the weights did move by more than 100 x the tolerance.
* A run killed after its first checkpoint and resumed under torchrun repeats the uninterrupted run operation for
  operation (same processes, same order), so its losses must agree to 1e-6 relative and its weights to 1e-6.
* The teacher is inspected inside every process by ``tests/distributed_worker.py`` (a probe on the trainer classes;
  the command line is otherwise the same as ``scripts/distill.py``).

DeepSpeed and FSDP cannot train through the Trainer on a CPU: accelerate turns FSDP on only for GPU-like devices
(on CPU the run silently falls back to DDP) and gives a DeepSpeed run on CPU a 1-process state. So their config
files are validated, and the teacher sharding (``DistillationMixin._shard_teacher``) is run on its own across 2
gloo processes: FSDP2 always, DeepSpeed ZeRO-3 when ``deepspeed`` is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from distributed_worker import _short_hash
from safetensors.torch import load_file

from seq2seq_distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
LAUNCHER = ROOT / "scripts" / "distill.py"
CONFIGS = ROOT / "configs"

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed with gloo"
)

GLOBAL_BATCH = 8  # every layout trains on 8 examples per optimizer step
MAX_STEPS = 6  # 32 training examples: 4 steps per epoch, so the run crosses an epoch boundary
SAVE_STEPS = 2  # the killed run stops after checkpoint-2, in the middle of the first epoch
WEIGHT_ATOL = 1e-5
RESUME_ATOL = 1e-6
RUN_TIMEOUT = 300

TEACHER_FLAGS = {
    "t5": ["--model_type", "t5"],
    "bert": ["--model_type", "bert"],
}
STUDENT_FLAGS = {
    "t5": ["--num_encoder_layers", "1", "--num_decoder_layers", "1"],
    "bert": ["--num_encoder_layers", "1"],
}
SIZES = ["--train_size", "32", "--val_size", "4", "--test_size", "4", "--max_source_length", "32", "--max_target_length", "8"]


# ---- running things --------------------------------------------------------------------------------------------


def child_env(**extra) -> dict:
    """One thread per process (2 processes on 2 cores), offline, the repository importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def torchrun(script: Path, *argv: str, nproc: int = 2) -> list[str]:
    # --standalone picks a free rendezvous port, so parallel test runs on one machine do not collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *argv]


def plain(script: Path, *argv: str) -> list[str]:
    return [sys.executable, str(script), *argv]


def run(command: list[str], **env) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=child_env(**env), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def distill_flags(
    family: str, teacher: Path, output: Path, *, per_device: int, accumulation: int = 1, processes: int = 2, save: bool = True
):
    assert per_device * accumulation * processes == GLOBAL_BATCH
    # --ddp_backend only with several processes: accelerate fails on it in a plain single-process run.
    backend = ["--ddp_backend", "gloo"] if processes > 1 else []
    return [
        "--teacher",
        str(teacher),
        *STUDENT_FLAGS[family],
        *SIZES,
        "--per_device_train_batch_size",
        str(per_device),
        "--gradient_accumulation_steps",
        str(accumulation),
        "--max_steps",
        str(MAX_STEPS),
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "constant",
        "--seed",
        "11",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps" if save else "no",
        "--save_steps",
        str(SAVE_STEPS),
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
        "--use_cpu",
        *backend,
        "--output_dir",
        str(output),
    ]


@dataclass
class Run:
    output: Path
    probes: list[dict]  # one per process, rank order

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(self.output / "model.safetensors")

    @property
    def history(self) -> list[dict]:
        return json.loads((self.output / "training_metrics.json").read_text())["log_history"]

    @property
    def losses(self) -> dict[int, float]:
        return {entry["step"]: entry["loss"] for entry in self.history if "loss" in entry}


def read_probes(folder: Path) -> list[dict]:
    probes = [json.loads(path.read_text()) for path in sorted(folder.glob("rank*-1.json"))]
    return sorted(probes, key=lambda probe: probe["rank"])


def probed_run(workdir: Path, name: str, command_for, **env) -> Run:
    output, probe_dir = workdir / name, workdir / f"{name}-probes"
    probe_dir.mkdir()
    run(command_for(output), DISTILL_PROBE_DIR=probe_dir, **env)
    return Run(output, read_probes(probe_dir))


# ---- the runs every test shares (each made once per module) ----------------------------------------------------

_CACHE: dict = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


def cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def teacher_for(family: str, workdir: Path) -> Path:
    """A tiny teacher trained from scratch for 3 steps, in this process (as tests/test_cli.py does)."""

    def make():
        output = workdir / f"teacher-{family}"
        argv = ["train_teacher", *TEACHER_FLAGS[family], "--output_dir", str(output), *SIZES]
        argv += ["--scratch_hidden_size", "32", "--scratch_num_layers", "2", "--scratch_vocab_size", "400"]
        argv += ["--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "no", "--learning_rate", "1e-3"]
        assert main(argv) == 0
        return output

    return cached(("teacher", family), make)


def two_processes(family: str, workdir: Path) -> Run:
    """2 processes x 4 examples, checkpoints every 2 steps: the reference run of the resume tests too."""
    teacher = teacher_for(family, workdir)
    return cached(
        ("two", family),
        lambda: probed_run(
            workdir, f"two-{family}", lambda out: torchrun(WORKER, "distill", *distill_flags(family, teacher, out, per_device=4))
        ),
    )


def one_process(family: str, workdir: Path) -> Run:
    teacher = teacher_for(family, workdir)
    return cached(
        ("one", family),
        lambda: probed_run(
            workdir,
            f"one-{family}",
            lambda out: plain(WORKER, "distill", *distill_flags(family, teacher, out, per_device=8, processes=1, save=False)),
        ),
    )


def moved(final: dict[str, torch.Tensor], teacher: Path) -> float:
    """How far training moved the student's weights from the teacher layers they were copied from."""
    start = load_file(teacher / "model.safetensors")
    common = [name for name in final if name in start and start[name].shape == final[name].shape]
    assert common, "the student shares no weight names with the teacher"
    return max(float((final[name] - start[name]).abs().max()) for name in common)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


# ---- same result as one process --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(family, workdir):
    """torchrun --nproc_per_node=2 (4 per process) ends where one process (8 per step) ends, within 1e-5."""
    two, one = two_processes(family, workdir), one_process(family, workdir)
    assert [probe["world_size"] for probe in two.probes] == [2, 2] and one.probes[0]["world_size"] == 1
    assert all(probe["global_step"] == MAX_STEPS for probe in two.probes + one.probes)
    assert moved(one.weights, teacher_for(family, workdir)) > 100 * WEIGHT_ATOL  # the comparison below can fail
    assert max_difference(two.weights, one.weights) <= WEIGHT_ATOL
    assert two.losses.keys() == one.losses.keys() == set(range(1, MAX_STEPS + 1))
    for step, loss in one.losses.items():
        assert two.losses[step] == pytest.approx(loss, rel=1e-5), step


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_every_process_trains_on_its_own_share_of_the_same_global_batches(family, workdir):
    """Same data order whatever the process count: each step's 8 examples are split 4 + 4 between the processes."""
    two, one = two_processes(family, workdir), one_process(family, workdir)
    rank0, rank1 = (probe["steps"] for probe in two.probes)
    single = one.probes[0]["steps"]
    assert rank0.keys() == rank1.keys() == single.keys() == {str(step) for step in range(MAX_STEPS)}
    for step in single:
        assert len(rank0[step]) == len(rank1[step]) == GLOBAL_BATCH // 2, step
        assert sorted(rank0[step] + rank1[step]) == sorted(single[step]), f"step {step}: not the global batch"
    assert rank0 != rank1


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_teacher_is_unwrapped_frozen_in_eval_mode_and_never_optimized_in_every_process(family, workdir):
    two = two_processes(family, workdir)
    assert len(two.probes) == 2
    for probe in two.probes:
        for when in ("teacher_at_first_step", "teacher_at_end"):
            teacher = probe[when]
            assert teacher["student_wrapper"] == "DistributedDataParallel", (probe["rank"], when)  # the student is
            assert not teacher["wrapped"] and teacher["class"].endswith(("ForConditionalGeneration", "Classification"))
            assert not teacher["fsdp2_sharded"]
            assert teacher["training"] is False and teacher["modules_in_training_mode"] == 0
            assert teacher["requiring_grad"] == 0 and teacher["holding_grad"] == 0
            assert teacher["in_optimizer"] == 0 and teacher["sharing_storage_with_optimizer"] == 0
            assert teacher["optimizer_parameters"] > 0 and not teacher["in_accelerator_models"]
            assert teacher["device"] == "cpu" and teacher["expected_device"].split(":")[0] == "cpu"  # args.device: cpu:<rank>
            assert teacher["dtype"] == "torch.float32"
        assert probe["teacher_at_first_step"]["checksum"] == probe["teacher_at_end"]["checksum"]  # never updated
    assert two.probes[0]["teacher_at_end"]["checksum"] == two.probes[1]["teacher_at_end"]["checksum"]


def test_only_the_main_process_writes_the_final_model_and_metrics(workdir):
    two = two_processes("t5", workdir)
    metrics = json.loads((two.output / "training_metrics.json").read_text())  # whole JSON: one writer
    assert metrics["name"] == "distilled" and metrics["log_history"][-1]["step"] == MAX_STEPS
    assert (two.output / "model.safetensors").exists() and (two.output / "tokenizer.json").exists()
    checkpoint = two.output / "checkpoints" / f"checkpoint-{MAX_STEPS}"
    assert {path.name for path in checkpoint.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}


# ---- kill and resume -------------------------------------------------------------------------------------------


def killed_run(workdir: Path) -> Path:
    """The 2-process T5 run, killed (SIGKILL, every process) once checkpoint-2 is on disk; a pristine copy."""

    def make():
        teacher = teacher_for("t5", workdir)
        output, probes = workdir / "killed", workdir / "killed-probes"
        probes.mkdir()
        command = torchrun(WORKER, "distill", *distill_flags("t5", teacher, output, per_device=4))
        env = child_env(DISTILL_PROBE_DIR=probes, DISTILL_PROBE_PAUSE_AFTER_SAVE=RUN_TIMEOUT)
        log = (workdir / "killed.log").open("w")
        job = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        markers = [probes / "saved-rank0", probes / "saved-rank1"]
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while not all(marker.exists() for marker in markers):
                assert job.poll() is None, (workdir / "killed.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint within the time limit"
                time.sleep(0.2)
        finally:
            # torchrun starts each worker in a session of its own: kill the workers, then torchrun's group.
            for pid_file in probes.glob("pid-rank*"):
                _kill(int(pid_file.read_text()))
            _kill_group(job.pid)
            job.wait(timeout=60)
            log.close()
        assert all(marker.read_text() == str(SAVE_STEPS) for marker in markers)
        pristine = workdir / "killed-copy"
        shutil.copytree(output, pristine)
        return pristine

    return cached("killed", make)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def resumed(workdir: Path, name: str, command_for) -> Run:
    output = workdir / name
    shutil.copytree(killed_run(workdir), output)
    run(command_for(output))
    return Run(output, [])


def test_killed_run_stopped_mid_way(workdir):
    pristine = killed_run(workdir)
    assert sorted(path.name for path in (pristine / "checkpoints").iterdir()) == [f"checkpoint-{SAVE_STEPS}"]
    assert not (pristine / "model.safetensors").exists() and not (pristine / "training_metrics.json").exists()


def test_run_killed_after_a_checkpoint_resumes_under_torchrun_to_the_uninterrupted_result(workdir):
    """Resumed with the plain launcher (scripts/distill.py) under torchrun: same steps, same losses, same weights."""
    reference = two_processes("t5", workdir)
    teacher = teacher_for("t5", workdir)
    again = resumed(
        workdir,
        "resumed-2",
        lambda out: torchrun(LAUNCHER, *distill_flags("t5", teacher, out, per_device=4), "--resume_from_checkpoint", "latest"),
    )
    assert again.history[-1]["step"] == MAX_STEPS and max(again.losses) == MAX_STEPS
    assert again.losses.keys() == reference.losses.keys()
    for step, loss in reference.losses.items():
        assert again.losses[step] == pytest.approx(loss, rel=1e-6, abs=0), step
    assert max_difference(again.weights, reference.weights) <= RESUME_ATOL


def test_checkpoint_of_two_processes_resumes_on_one_process(workdir):
    """2 processes x 4 checkpointed, 1 process x 4 x 2 accumulated resumed: the same global batch, same end."""
    reference = two_processes("t5", workdir)
    teacher = teacher_for("t5", workdir)
    again = resumed(
        workdir,
        "resumed-1",
        lambda out: plain(
            LAUNCHER,
            *distill_flags("t5", teacher, out, per_device=4, accumulation=2, processes=1),
            "--resume_from_checkpoint",
            "latest",
        ),
    )
    assert again.history[-1]["step"] == MAX_STEPS and max(again.losses) == MAX_STEPS
    assert again.losses[MAX_STEPS] == pytest.approx(reference.losses[MAX_STEPS], rel=1e-5)
    assert max_difference(again.weights, reference.weights) <= WEIGHT_ATOL


# ---- other entry points under torchrun -------------------------------------------------------------------------


def test_train_teacher_from_scratch_under_torchrun_uses_one_tokenizer_everywhere(workdir):
    """Tokenizer training is not deterministic across processes: every rank must use (and save) the main one's."""
    output, probes = workdir / "scratch-teacher", workdir / "scratch-teacher-probes"
    probes.mkdir()
    argv = ["train_teacher", "--model_type", "t5", "--output_dir", str(output), *SIZES, "--max_steps", "2"]
    argv += ["--scratch_hidden_size", "32", "--scratch_num_layers", "1", "--scratch_vocab_size", "400"]
    argv += ["--per_device_train_batch_size", "4", "--save_strategy", "no", "--eval_strategy", "no", "--use_cpu"]
    argv += ["--ddp_backend", "gloo", "--dataloader_num_workers", "0", "--report_to", "none"]
    run(torchrun(WORKER, *argv), DISTILL_PROBE_DIR=probes)
    rank0, rank1 = read_probes(probes)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(output)
    assert rank0["tokenizer"] == rank1["tokenizer"] == _short_hash(sorted(saved.get_vocab().items()))
    assert rank0["steps"]["0"] and set(rank0["steps"]["0"]).isdisjoint(rank1["steps"]["0"])
    assert rank0["teacher_at_end"] is None and json.loads((output / "training_metrics.json").read_text())["name"] == "teacher"


# ---- teacher sharding under FSDP2 / DeepSpeed ZeRO-3 -----------------------------------------------------------


def shard_reports(workdir: Path, engine: str, **env) -> list[dict]:
    out = workdir / f"shard-{engine}.json"
    run(torchrun(WORKER, "shard_teacher", engine, str(out)), **env)
    return [json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)]


def check_sharded(reports: list[dict]) -> None:
    for report in reports:
        assert report["world_size"] == 2 and report["same_object"] and not report["wrapped"]
        assert report["training"] is False and report["requiring_grad"] == 0
        assert report["local_numel"] <= 0.6 * report["full_numel"], report  # about half of it on each process
        assert report["max_logit_difference"] <= 1e-5, report  # the same logits as the whole teacher
        assert report["config_vocab_size"] == report["output_rows_at_setup"] == 300


def test_fsdp2_shards_the_teacher_in_place_for_inference(workdir):
    reports = shard_reports(workdir, "fsdp2")
    check_sharded(reports)
    assert all(report["fsdp2_sharded"] for report in reports)


@pytest.mark.slow
def test_deepspeed_zero3_partitions_the_teacher_for_inference(workdir):
    pytest.importorskip("deepspeed")
    check_sharded(shard_reports(workdir, "zero3"))


# ---- config files ----------------------------------------------------------------------------------------------

# The entries HF's Trainer fills in itself (trainer_config_process / trainer_config_finalize) from the flags and the
# model: a config may leave exactly these on "auto", so --per_device_train_batch_size, --bf16 ... keep their meaning.
HF_FILLED_AUTO = {
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def _auto_entries(config: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in config.items():
        if isinstance(value, dict):
            found |= _auto_entries(value, f"{prefix}{key}.")
        elif value == "auto":
            found.add(prefix + key)
    return found


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2.json", 2), ("deepspeed_zero3.json", 3)])
def test_deepspeed_configs_are_valid(name, stage):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    config = json.loads((CONFIGS / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert HfDeepSpeedConfig(config).is_zero3() == (stage == 3)
    assert not HfDeepSpeedConfig(config).is_offload()
    # No optimizer or scheduler section: the Trainer's own (--optim, --learning_rate, --lr_scheduler_type) apply.
    assert "optimizer" not in config and "scheduler" not in config
    assert _auto_entries(config) <= HF_FILLED_AUTO, _auto_entries(config) - HF_FILLED_AUTO
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # save_model works


@pytest.mark.parametrize("name", ["deepspeed_zero2.json", "deepspeed_zero3.json"])
def test_deepspeed_configs_pass_hf_and_deepspeed_validation(name, tmp_path):
    """With deepspeed installed: HF fills every "auto" from the flags and a model, and DeepSpeed's schema accepts it."""
    pytest.importorskip("deepspeed")
    script = f"""
import json
from transformers import TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
from deepspeed.runtime.config import DeepSpeedConfig
from seq2seq_distill.tiny import tiny_model
args = TrainingArguments({str(tmp_path)!r}, per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to="none")
hf = HfTrainerDeepSpeedConfig({str(CONFIGS / name)!r})
hf.trainer_config_process(args)
hf.trainer_config_finalize(args, tiny_model("t5", 300, hidden=32, layers=2), 100)
config = DeepSpeedConfig(hf.config)
print(json.dumps({{"micro": config.train_micro_batch_size_per_gpu, "accumulation": config.gradient_accumulation_steps,
                  "stage": config.zero_optimization_stage}}))
"""
    result = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values == {"micro": 4, "accumulation": 2, "stage": 3 if "zero3" in name else 2}


def test_fsdp_config_is_accepted_by_the_command_line_and_accelerate(monkeypatch, tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin

    from seq2seq_distill.arguments import Seq2SeqDistillationTrainingArguments
    from seq2seq_distill.cli import COMMANDS, parse_command

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it: restore it after
    argv = ["--fsdp", "full_shard", "--fsdp_config", str(CONFIGS / "fsdp.json"), "--output_dir", str(tmp_path)]
    args = parse_command(COMMANDS["distill"], argv)[Seq2SeqDistillationTrainingArguments]
    assert args.fsdp and args.fsdp_plugin_args["fsdp_version"] == 2
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # the final model is saved whole, loadable as usual
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"  # one shard unit per T5 / BART layer


def test_accelerate_config_is_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "accelerate_multi_gpu.json"))
    assert config.distributed_type.name == "MULTI_GPU" and config.num_processes == 8 and config.num_machines == 1
    assert config.mixed_precision == "no"  # precision comes from --bf16 / --fp16, as with torchrun


# ---- slow: other launchers, FSDP flags on CPU, the whole pipeline ----------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_with_the_shipped_config_gives_the_one_process_weights(workdir):
    teacher = teacher_for("t5", workdir)
    output = workdir / "accelerate"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate_multi_gpu.json")]
    command += ["--num_processes", "2", "--main_process_port", str(_free_port()), str(LAUNCHER)]
    command += distill_flags("t5", teacher, output, per_device=4, save=False)
    run(command)
    assert max_difference(load_file(output / "model.safetensors"), one_process("t5", workdir).weights) <= WEIGHT_ATOL


@pytest.mark.slow
def test_fsdp_flags_run_to_the_end_on_cpu(workdir):
    """--fsdp full_shard --fsdp_config configs/fsdp.json parses and runs on CPU, where accelerate falls back to DDP.

    If a later accelerate shards on CPU, the probe sees an FSDP2 student and this test says so: then the teacher
    must be sharded too (FSDPModule), and still outside the optimizer.
    """
    teacher = teacher_for("t5", workdir)
    flags = ["--fsdp", "full_shard", "--fsdp_config", str(CONFIGS / "fsdp.json")]
    fsdp = probed_run(
        workdir,
        "fsdp",
        lambda out: torchrun(WORKER, "distill", *distill_flags("t5", teacher, out, per_device=4, save=False), *flags),
    )
    for probe in fsdp.probes:
        teacher_state = probe["teacher_at_end"]
        assert teacher_state["student_wrapper"] == "DistributedDataParallel", "FSDP ran on CPU: check the teacher below"
        assert teacher_state["in_optimizer"] == 0 and teacher_state["requiring_grad"] == 0
    assert max_difference(fsdp.weights, one_process("t5", workdir).weights) <= WEIGHT_ATOL


@pytest.mark.slow
def test_pipeline_under_torchrun_benchmarks_once_on_the_main_process(workdir):
    output = workdir / "pipeline"
    argv = ["--dry-run", "--output_dir", str(output), "--use_cpu", "--ddp_backend", "gloo", "--dataloader_num_workers", "0"]
    argv += ["--scratch_hidden_size", "32", "--scratch_num_layers", "2", "--scratch_vocab_size", "400"]
    result = run(torchrun(ROOT / "scripts" / "pipeline.py", *argv))
    root = workdir / "pipeline-dry-run"
    for name in ("teacher", "baseline", "distilled"):
        assert (root / name / "model.safetensors").exists() and (root / name / "training_metrics.json").exists()
    assert (root / "benchmark" / "benchmark_report.md").exists()
    assert not list((root / "benchmark").glob(".staging-*"))
    # Only the main process says what it did (issue 13): one verdict and one report line, none from process 1.
    assert result.stdout.count("report: ") == 1 and "main process" not in result.stdout
    # The benchmark command on its own under torchrun: measured and written once, by rank 0.
    bench = workdir / "bench"
    argv = ["--models", str(root / "teacher"), str(root / "distilled"), "--model_names", "teacher", "student"]
    argv += ["--test_size", "4", "--latency_examples", "2", "--warmup_batches", "1", "--max_new_tokens", "4"]
    result = run(torchrun(ROOT / "scripts" / "benchmark.py", *argv, "--benchmark_output_dir", str(bench)))
    assert json.loads((bench / "benchmark_results.json").read_text())["models"].keys() == {"teacher", "student"}
    assert result.stdout.count("report: ") == 1 and "main process" not in result.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
