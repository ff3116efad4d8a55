"""Runs that survive faults: SIGTERM / Ctrl-C save a checkpoint and stop cleanly, a half-written checkpoint is never
resumed from, and a run killed with SIGKILL resumes to exactly the weights of a run that was never stopped.

The fault-injection tests start the real command line in a subprocess through a small harness (written below) that
adds one test-only ``TrainerCallback``: it slows steps down so a signal can arrive mid-run, or SIGKILLs the process
at a chosen step or in the middle of writing a checkpoint. ``pytest -m faults`` runs them alone.
"""

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import collator_for, seq2seq_dataset
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from seq2seq_distill import create_student, training
from seq2seq_distill.checkpoints import checkpoint_problem, resolve_resume
from seq2seq_distill.cli import main
from seq2seq_distill.errors import InputError
from seq2seq_distill.guards import GracefulStop

HARNESS = textwrap.dedent(
    """
    import os, signal, sys, time
    import transformers

    kill_at_step = int(os.environ.get("KILL_AT_STEP", "0"))      # SIGKILL after this optimizer step
    kill_in_save = int(os.environ.get("KILL_IN_SAVE", "0"))      # SIGKILL while checkpoint-N is being written
    step_delay = float(os.environ.get("STEP_DELAY", "0"))        # seconds of sleep per step, to leave time for a signal

    class Fault(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(step_delay)
            if state.global_step == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

    original_init, original_save_rng = transformers.Trainer.__init__, transformers.Trainer._save_rng_state

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Fault())

    def save_rng(self, output_dir):  # called after the weights, optimizer and scheduler, before trainer_state.json
        if self.state.global_step == kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_save_rng(self, output_dir)

    transformers.Trainer.__init__, transformers.Trainer._save_rng_state = init, save_rng
    from seq2seq_distill.cli import console_main
    console_main()
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A jsonl data file, a tiny T5 teacher trained from scratch on it, and the fault harness."""
    from seq2seq_distill.stdlib_corpus import build_summarization_corpus

    root = tmp_path_factory.mktemp("reliability")
    with open(root / "data.jsonl", "w") as handle:
        for row in build_summarization_corpus(max_examples=40):
            handle.write(json.dumps({"document": row["document"], "summary": row["summary"]}) + "\n")
    (root / "harness.py").write_text(HARNESS)
    data = ["--dataset_local_path", str(root / "data.jsonl"), "--train_size", "24", "--val_size", "4", "--test_size", "4"]
    data += ["--max_source_length", "32", "--max_target_length", "8"]
    teacher = [
        "train_teacher",
        *data,
        *("--scratch_hidden_size", "32", "--scratch_num_layers", "2", "--scratch_vocab_size", "400"),
        *("--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "no", "--output_dir", str(root / "teacher")),
    ]
    assert main(teacher) == 0
    return root, data


def distill_argv(setup, output_dir, *extra):
    """A distillation with a projection layer (student hidden 16, teacher 32), 12 steps over two epochs."""
    root, data = setup
    return [
        "distill",
        *("--teacher", str(root / "teacher"), *data, "--output_dir", str(output_dir)),
        *("--num_encoder_layers", "1", "--num_decoder_layers", "1", "--hidden_dim", "16", "--hidden_weight", "1"),
        *("--max_steps", "12", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--seed", "3"),
        *("--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "100", "--eval_strategy", "no"),
        *("--dataloader_num_workers", "0", "--logging_steps", "1", "--report_to", "none", *extra),
    ]


def run_harness(setup, argv, timeout=300, **env):
    """The command line in a subprocess with the same torch thread count as this process (same float sums)."""
    root, _ = setup
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **{k: str(v) for k, v in env.items()}}
    return subprocess.run(
        [sys.executable, str(root / "harness.py"), *argv], env=environment, capture_output=True, text=True, timeout=timeout
    )


def final_state(output_dir):
    weights = load_file(str(output_dir / "model.safetensors"))
    state = json.loads((output_dir / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    return weights, state["global_step"]


# ---- half-written checkpoints ----------------------------------------------------------------------------------


def _checkpoint(folder, step, *, state=True, weights=True, state_text=None):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"weights")
    if state:
        (path / "trainer_state.json").write_text(state_text or json.dumps({"global_step": step}))
    return path


def test_latest_skips_half_written_checkpoints_that_transformers_would_pick(tmp_path):
    complete = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, state=False)  # killed after the weights, before trainer_state.json
    _checkpoint(tmp_path, 6, state_text='{"global_st')  # killed while writing trainer_state.json
    _checkpoint(tmp_path, 8, weights=False, state=False)  # killed before anything was written
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-8"), "transformers alone picks the newest folder"
    assert resolve_resume("latest", str(tmp_path)) == str(complete)
    assert checkpoint_problem(str(tmp_path / "checkpoint-6")) == "trainer_state.json is not readable JSON"
    with pytest.raises(InputError, match=r"checkpoint-4' is incomplete \(no trainer_state.json\).*resume from 'latest'"):
        resolve_resume(str(tmp_path / "checkpoint-4"), str(tmp_path))
    (complete / "trainer_state.json").unlink()
    with pytest.raises(InputError, match="no complete checkpoint under"):
        resolve_resume("latest", str(tmp_path))


# ---- SIGTERM / Ctrl-C ------------------------------------------------------------------------------------------


class SendSignal(TrainerCallback):
    """Sends signals to this very process at the end of one step (as a scheduler or Ctrl-C would).

    With ``times=2`` the second signal goes only after ``handled()`` says the first one reached its Python handler:
    two signals sent back to back can reach the process as one (a pending signal is a flag, not a queue), and a
    person pressing Ctrl-C twice is never that fast.
    """

    def __init__(self, step, signum, times=1, handled=lambda: True):
        self.step, self.signum, self.times, self.handled = step, signum, times, handled

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
                deadline = time.monotonic() + 10
                while not self.handled() and time.monotonic() < deadline:
                    time.sleep(0.001)


def tiny_trainer(tmp_path, tokenizer_for, tiny, *callbacks):
    tokenizer = tokenizer_for("t5")
    model = tiny("t5", layers=1, hidden=16)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "checkpoints"), max_steps=20, per_device_train_batch_size=4, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    dataset = seq2seq_dataset(tokenizer, size=16)
    return Seq2SeqTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator_for("seq2seq", tokenizer, model),
        callbacks=list(callbacks),
    )  # fmt: skip


@pytest.fixture
def ctrl_c_raises():
    """SIGINT as an interactive Python process has it, whatever this test process inherited.

    A test run started in the background by a script (`./.ci/run &`, nohup) inherits SIGINT ignored, and then the
    tests below would test the ignored case instead.
    """
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_saves_a_checkpoint_at_the_step_end_and_stops(tmp_path, tokenizer_for, tiny):
    previous = signal.getsignal(signal.SIGINT)
    stop = GracefulStop()
    trainer = tiny_trainer(tmp_path, tokenizer_for, tiny, SendSignal(3, signal.SIGINT), stop)
    trainer.train()  # returns normally: no KeyboardInterrupt
    assert stop.received == signal.SIGINT and trainer.state.global_step == 3
    assert stop.checkpoint == str(tmp_path / "checkpoints" / "checkpoint-3")  # saved although save_strategy="no"
    assert checkpoint_problem(stop.checkpoint) is None
    assert signal.getsignal(signal.SIGINT) is previous, "the old handler is back after training"


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_second_ctrl_c_stops_at_once(tmp_path, tokenizer_for, tiny):
    previous = signal.getsignal(signal.SIGINT)
    stop = GracefulStop()
    first_handled = SendSignal(2, signal.SIGINT, times=2, handled=lambda: stop.received is not None)
    trainer = tiny_trainer(tmp_path, tokenizer_for, tiny, first_handled, stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    stop.restore()
    assert signal.getsignal(signal.SIGINT) is previous
    assert not list(tmp_path.glob("checkpoints/checkpoint-*")), "no checkpoint after the second Ctrl-C"


def test_a_signal_the_process_started_ignoring_stays_ignored():
    """`nohup cmd &` or a script's background job starts with SIGINT ignored: a Ctrl-C meant for the shell's
    foreground job must not stop the run (Python itself keeps an inherited SIG_IGN); SIGTERM is still handled."""
    inherited = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = GracefulStop()
    try:
        stop.install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.received is None
        stop.restore()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == inherited[signal.SIGTERM]
    finally:
        for signum, handler in inherited.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("step,finished", [(2, False), (12, True)])
def test_a_signal_stops_the_command_with_exit_143(setup, tmp_path, monkeypatch, capsys, step, finished):
    """In process: SIGTERM at step 2 leaves only the checkpoint; at the last step the finished model is saved too."""

    class SignalAt(GracefulStop):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(training, "GracefulStop", SignalAt)
    output = tmp_path / "run"
    assert main(distill_argv(setup, output, "--save_strategy", "no")) == 128 + signal.SIGTERM
    error = capsys.readouterr().err
    assert (output / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").exists()
    assert (output / "model.safetensors").exists() == finished
    if finished:
        assert f"stopped: SIGTERM received at the last step {step}: the run finished and is saved in" in error
    else:
        assert f"stopped: SIGTERM received: training stopped at step {step} and a checkpoint is in" in error
        assert "run the same command with --resume_from_checkpoint latest to continue" in error


@pytest.mark.faults
def test_sigterm_leaves_a_loadable_checkpoint_and_latest_finishes_the_run(setup, tmp_path):
    root, _ = setup
    output = tmp_path / "run"
    argv = distill_argv(setup, output, "--save_strategy", "no", "--max_steps", "30")
    environment = {**os.environ, "STEP_DELAY": "0.3"}
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen([sys.executable, str(root / "harness.py"), *argv], env=environment, stdout=log, stderr=log)
        deadline = time.monotonic() + 180
        while "'loss'" not in (tmp_path / "log").read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # wait until it is training: the first step's log line
        assert process.poll() is None, (tmp_path / "log").read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=120)
    log_text = (tmp_path / "log").read_text()
    assert status == 128 + signal.SIGTERM, log_text[-3000:]
    assert "stopped: SIGTERM received: training stopped at step" in log_text and "Traceback" not in log_text
    checkpoint = get_last_checkpoint(str(output / "checkpoints"))
    assert checkpoint is not None and checkpoint_problem(checkpoint) is None
    assert f"a checkpoint is in {checkpoint}" in log_text
    step = int(checkpoint.rsplit("-", 1)[1])
    assert 1 <= step < 30
    AutoModelForSeq2SeqLM.from_pretrained(checkpoint)  # loadable as a model
    assert not (output / "model.safetensors").exists(), "an interrupted run must not look finished"

    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert (output / "model.safetensors").exists()
    history = json.loads((output / "training_metrics.json").read_text())["log_history"]
    assert max(entry.get("step", 0) for entry in history) == 30


# ---- SIGKILL ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(distill_argv(setup, output)) == 0
    return final_state(output)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["between_checkpoints", "while_saving"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(setup, uninterrupted, tmp_path, fault):
    """SIGKILL at step 5 (checkpoint-4 is the last), or halfway through writing checkpoint-6; resume from 'latest'.

    Tolerance: the resumed run restores weights, projections, optimizer, scheduler, RNG states and the data
    position, and runs the same float operations on the same thread count, so it is bit-identical here (0.0); atol
    1e-6 leaves room only for reduction-order noise on other hardware. One lost or repeated step moves weights by
    about the learning rate (1e-3), a thousand times more.
    """
    output = tmp_path / "run"
    env = {"KILL_AT_STEP": 5} if fault == "between_checkpoints" else {"KILL_IN_SAVE": 6}
    killed = run_harness(setup, distill_argv(setup, output), **env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = output / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == (
        ["checkpoint-2", "checkpoint-4"] if fault == "between_checkpoints" else ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    )
    if fault == "while_saving":
        assert checkpoint_problem(str(checkpoints / "checkpoint-6")) == "no trainer_state.json"
    resumed_from = checkpoints / "checkpoint-4" / "trainer_state.json"
    written = resumed_from.stat().st_mtime_ns

    assert main([*distill_argv(setup, output), "--resume_from_checkpoint", "latest"]) == 0
    assert resumed_from.stat().st_mtime_ns == written, "resumed from checkpoint-4, not restarted"
    weights, steps = final_state(output)
    expected, expected_steps = uninterrupted
    assert steps == expected_steps == 12
    assert weights.keys() == expected.keys()
    assert any(name.startswith("distillation_projections.") for name in weights), "the projection layer resumes too"
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=name)


# A policy-gradient distillation of tiny GPT-2s saved under `models`: 6 steps of 2 accumulated micro-batches of 2 over
# 12 examples (3 steps an epoch), a checkpoint every 2 steps. Run as a script it SIGKILLs itself after step KILL_AT.
POLICY_GRADIENT_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from seq2seq_distill.checkpoints import resolve_resume

    class KillAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    def run(models, output_dir, resume=None, kill_at_step=0):
        from helpers import causal_dataset, distillation_trainer

        models = Path(models)
        tokenizer = AutoTokenizer.from_pretrained(models / "tokenizer")
        trainer = distillation_trainer(
            "causal_lm",
            tokenizer,
            AutoModelForCausalLM.from_pretrained(models / "student"),
            AutoModelForCausalLM.from_pretrained(models / "teacher"),
            output_dir,
            causal_dataset(tokenizer, size=12),
            per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, learning_rate=1e-2,
            save_strategy="steps", save_steps=2, seed=3, disable_tqdm=True, dataloader_num_workers=0,
            ce_weight=0.0, kd_weight=0.0, policy_gradient_weight=1.0, pg_max_new_tokens=6,
        )
        if kill_at_step:
            trainer.add_callback(KillAt(kill_at_step))
        trainer.train(resume_from_checkpoint=resolve_resume(resume, str(output_dir)) if resume else None)
        return trainer

    if __name__ == "__main__":
        sys.path.insert(0, sys.argv[1])  # the tests folder, for helpers
        run(sys.argv[2], sys.argv[3], kill_at_step=int(os.environ["KILL_AT"]))
    """
)


@pytest.mark.faults
def test_kill_9_then_resume_of_a_policy_gradient_run_equals_an_uninterrupted_run(tmp_path, tiny, tokenizer_for):
    """Policy-gradient samples are seeded by the run's seed, the step and the micro-batch (not by a count of calls
    that restarts with the process): a run SIGKILLed at step 3, resumed mid-epoch from checkpoint-2 with 'latest',
    draws the samples the uninterrupted run drew and ends with its weights and step count.

    Tolerance as in the test above: bit-identical here, atol 1e-6 for reduction-order noise elsewhere. Other samples
    at steps 3 to 6 move the weights by about the learning rate (1e-2).
    """
    teacher = tiny("gpt2", layers=2, hidden=32, tie_word_embeddings=False)
    teacher.lm_head.weight.data *= 50  # strong preferences, so the rewards and the gradients are far from zero
    models = tmp_path / "models"
    tokenizer_for("gpt2").save_pretrained(models / "tokenizer")
    teacher.save_pretrained(models / "teacher")
    create_student(teacher, num_layers=1, hidden_dim=16).save_pretrained(models / "student")
    script = tmp_path / "policy_gradient_run.py"
    script.write_text(POLICY_GRADIENT_RUN)
    run = runpy.run_path(str(script))["run"]
    expected = run(models, tmp_path / "uninterrupted")

    output = tmp_path / "run"
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "KILL_AT": "3"}
    tests = os.path.dirname(os.path.abspath(__file__))
    killed = subprocess.run(
        [sys.executable, str(script), tests, str(models), str(output)], env=environment, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed_from = output / "checkpoint-2" / "trainer_state.json"
    written = resumed_from.stat().st_mtime_ns

    resumed = run(models, output, resume="latest")
    assert resumed_from.stat().st_mtime_ns == written, "resumed from checkpoint-2, not restarted"
    assert resumed.state.global_step == expected.state.global_step == 6
    weights, expected_weights = resumed.model.state_dict(), expected.model.state_dict()
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=name)
