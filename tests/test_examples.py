import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_example_distills_with_logit_hidden_and_attention_terms(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "distill_t5_notebook.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 4
    for name in ("ce_loss", "kd_loss", "hidden_loss", "attention_loss"):
        assert all(entry[name] > 0 for entry in steps), name
    assert steps[-1]["loss"] < steps[0]["loss"]
    student = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert student.config.num_layers == 2 and student.config.num_decoder_layers == 2
