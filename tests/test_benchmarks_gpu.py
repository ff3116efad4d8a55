"""benchmarks/gpu.py in --tiny mode on a CPU: every section runs, its JSON is strict, its ratios are its own times'.

The script exists to spend scarce GPU minutes on a run that is known to work, so its tiny mode is run here in
process (imports shared with the rest of the suite) and every figure it writes is checked against a recomputation.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
OPTIONAL = {"trl": "trl not installed", "liger_fused_linear_jsd": "liger-kernel not installed"}


@pytest.fixture(scope="module")
def gpu_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_json(path: Path) -> dict:
    def reject(constant: str):
        raise AssertionError(f"{path} holds {constant}, which strict JSON has not")

    return json.loads(path.read_text(), parse_constant=reject)


def all_numbers(item) -> list[float]:
    if isinstance(item, bool):
        return []
    if isinstance(item, (int, float)):
        return [item]
    if isinstance(item, dict):
        return [number for value in item.values() for number in all_numbers(value)]
    if isinstance(item, list):
        return [number for value in item for number in all_numbers(value)]
    return []


def test_tiny_mode_measures_every_section_and_its_ratios_are_its_times(gpu_benchmark, tmp_path, capsys):
    output = tmp_path / "gpu.json"
    returned = gpu_benchmark.run(["--tiny", "--output", str(output)])
    results = strict_json(output)
    assert results == returned
    assert not list(tmp_path.glob("*.tmp")), "the temporary file was left beside the result"
    assert gpu_benchmark.errors(results) == []
    assert set(gpu_benchmark.SECTIONS) <= set(results)
    assert all(math.isfinite(number) for number in all_numbers(results))
    assert results["settings"]["mode"] == "tiny" and results["settings"]["precision"] == "torch.float32"

    step = results["step"]
    times = step["times_s"]
    assert all(seconds > 0 for seconds in times.values())
    floor = times["teacher_forward"] + times["student_ce_step"]
    assert step["overhead_ratio"] == pytest.approx(times["distill_step"] / floor, rel=1e-12)
    assert step["naive_overhead_ratio"] == pytest.approx(times["naive_distill_step"] / floor, rel=1e-12)
    assert step["distill_over_ce_step"] == pytest.approx(times["distill_step"] / times["student_ce_step"], rel=1e-12)
    assert step["cached_over_ce_step"] == pytest.approx(times["cached_step"] / times["student_ce_step"], rel=1e-12)
    assert step["teacher_dtype"] == "torch.float32"  # a CPU keeps the teacher in float32 unless told otherwise

    trl = results["trl"]
    if "skipped" in trl:
        assert trl["skipped"] == OPTIONAL["trl"]
    else:
        assert trl["ours_over_trl"] == pytest.approx(trl["ours_s"] / trl["trl_gkd_s"], rel=1e-12)

    logit_pass = results["logit_pass"]
    methods = logit_pass["methods"]
    for name, method in methods.items():
        if "skipped" in method:
            assert name == "liger_fused_linear_jsd" and method["skipped"].startswith("liger-kernel")
            continue
        assert method["time_s"] > 0
        assert method["peak_mib"] == pytest.approx(method["resident_mib"] + method["extra_peak_mib"])
        # Inputs: two hidden-state matrices, two LM heads (64 rows x 16 / 32, 512 x 16 / 32 floats) and the labels.
        assert method["resident_mib"] * MIB == 4 * (64 * 16 + 64 * 32 + 512 * 16 + 512 * 32) + 8 * 64
        assert method["extra_peak_mib"] * MIB >= 64 * 512 * 4  # at least the gradient of the student's logits
    # The same loss computed two ways: full log-softmax (naive) and the chunked closed form, at two chunk sizes.
    for name in ("ours_forward_kl", "ours_forward_kl_large_chunks"):
        assert methods[name]["loss"] == pytest.approx(methods["naive"]["loss"], rel=1e-5)
    assert methods["ours_js"]["loss"] == pytest.approx(methods["ours_js_large_chunks"]["loss"], rel=1e-5)
    assert logit_pass["reference"]["liger"] == {"time_ms": 60.71, "max_memory_allocated_mib": 11109.6}
    for pair in logit_pass["ratios"].values():
        top, bottom = methods[pair["numerator"]], methods[pair["denominator"]]
        if "skipped" in bottom:
            assert pair["time"] is None and pair["peak_memory"] is None
            continue
        assert pair["time"] == pytest.approx(top["time_s"] / bottom["time_s"], rel=1e-12)
        assert pair["peak_memory"] == pytest.approx(top["peak_mib"] / bottom["peak_mib"], rel=1e-12)

    precision = results["teacher_precision"]
    for family in ("t5", "bart"):
        measured = precision[family]
        bf16, fp32 = measured["bfloat16"], measured["float32"]
        assert bf16["teacher_parameter_dtype"] == "torch.bfloat16" and fp32["teacher_parameter_dtype"] == "torch.float32"
        assert measured["bf16_over_fp32"]["step_time"] == pytest.approx(bf16["step_s"] / fp32["step_s"], rel=1e-12)
        assert measured["bf16_over_fp32"]["peak_memory"] == pytest.approx(bf16["peak_mib"] / fp32["peak_mib"], rel=1e-12)
        # The bf16 teacher's weights take 2 bytes each instead of 4; nothing else resident differs.
        assert (fp32["resident_mib"] - bf16["resident_mib"]) * MIB == 2 * measured["teacher_floating_point_elements"]
        assert measured["teacher_floating_point_elements"] >= measured["teacher_parameters"] > measured["student_parameters"]

    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("step: ") for line in printed) == 4
    assert sum(line.startswith("logit pass: ") for line in printed) == len(logit_pass["ratios"])
    assert [line for line in printed if line.startswith("teacher precision")] == [
        f"teacher precision {family}: bf16 / fp32 teacher: step time {precision[family]['bf16_over_fp32']['step_time']:.3f}, "
        f"peak memory {precision[family]['bf16_over_fp32']['peak_memory']:.3f}"
        for family in ("t5", "bart")
    ]


def test_a_failing_part_is_recorded_and_the_others_still_run(gpu_benchmark, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu_benchmark, "step_section", out_of_memory)
    monkeypatch.setattr(gpu_benchmark.loss_memory, "naive_kd_loss", out_of_memory)
    output = tmp_path / "gpu.json"
    gpu_benchmark.run(["--tiny", "--sections", "step", "logit_pass", "--output", str(output)])
    results = strict_json(output)
    assert results["step"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    methods = results["logit_pass"]["methods"]
    assert methods["naive"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert methods["ours_forward_kl"]["time_s"] > 0  # the other methods were still measured
    assert results["logit_pass"]["ratios"]["ours_forward_kl/naive"]["time"] is None
    assert sorted(gpu_benchmark.errors(results)) == [
        "logit_pass.methods.naive: RuntimeError: CUDA out of memory (simulated)",
        "step: RuntimeError: CUDA out of memory (simulated)",
    ]
