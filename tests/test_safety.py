"""Loading nothing unsafe: weights through safetensors or ``torch.load(weights_only=True)``, no remote code unless
``--trust_remote_code`` is given, no eval / exec / pickle of anything a user hands us.

The source scan guards the policy for code written later; the behavioural tests show what a malicious model folder
actually does (nothing) when it goes through this package's loaders.
"""

import ast
import functools
import json
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import T5ForConditionalGeneration

from seq2seq_distill import students, training
from seq2seq_distill.arguments import ModelArguments
from seq2seq_distill.cli import COMMANDS, parse_command
from seq2seq_distill.errors import InputError
from seq2seq_distill.modeling import load_model
from seq2seq_distill.tiny import tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "seq2seq_distill"
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _constant(keywords: dict, name: str):
    """The literal value of a keyword argument (None when absent or not a literal)."""
    return getattr(keywords.get(name), "value", None)


def unsafe_calls(source: str) -> list[str]:
    """Each call in ``source`` that could run code from a file or a string, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "cloudpickle", "marshal"):
            found += [f"{node.lineno}: from {node.module} import {alias.name}" for alias in node.names]
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{node.lineno}: from torch import load")
        if not isinstance(node, ast.Call):
            continue
        function = ast.unparse(node.func)
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        constant = functools.partial(_constant, keywords)
        if function in ("eval", "exec", "compile", "builtins.eval", "builtins.exec"):
            found.append(f"{node.lineno}: {function}()")
        elif function.endswith("torch.load") and constant("weights_only") is not True:
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif function.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") and "load" in function:
            found.append(f"{node.lineno}: {function}()")
        elif function in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            found.append(f"{node.lineno}: {function}()")
        elif function == "yaml.load":
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or ast.unparse(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                found.append(f"{node.lineno}: yaml.load without a safe Loader")
        elif function.endswith(("read_pickle", "np.load", "numpy.load")) and constant("allow_pickle") is not False:
            if function.endswith("read_pickle") or constant("allow_pickle") is True:
                found.append(f"{node.lineno}: {function}() with pickles")
        elif "trust_remote_code" in keywords and constant("trust_remote_code") is True:
            found.append(f"{node.lineno}: trust_remote_code=True")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "from torch import load",
        "pickle.load(handle)",
        "pickle.loads(data)",
        "from pickle import loads",
        "eval(text)",
        "exec(code)",
        "yaml.load(handle)",
        "yaml.load(handle, Loader=yaml.Loader)",
        "yaml.unsafe_load(handle)",
        "pandas.read_pickle(path)",
        "np.load(path, allow_pickle=True)",
        "AutoModel.from_pretrained(name, trust_remote_code=True)",
    ],
)
def test_the_scan_catches_each_unsafe_pattern(snippet):
    assert unsafe_calls(snippet), snippet


def test_the_scan_lets_the_safe_forms_through():
    safe = """
    torch.load(path, map_location="cpu", weights_only=True)
    yaml.safe_load(handle)
    yaml.load(handle, Loader=yaml.SafeLoader)
    np.load(path)
    model.eval()
    AutoModel.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
    """
    assert unsafe_calls(textwrap.dedent(safe)) == []


def test_the_package_loads_nothing_unsafe():
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{problem}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for problem in unsafe_calls(path.read_text(encoding="utf-8"))
    ]
    assert problems == []


def test_trust_remote_code_is_off_unless_the_flag_is_given():
    assert ModelArguments().trust_remote_code is False
    for name, command in COMMANDS.items():
        parsed = parse_command(command, [])
        if ModelArguments in parsed:
            assert parsed[ModelArguments].trust_remote_code is False, name
    assert parse_command(COMMANDS["distill"], ["--trust_remote_code"])[ModelArguments].trust_remote_code is True


def test_the_flag_reaches_every_loader_of_distill(monkeypatch, tmp_path):
    from seq2seq_distill import modeling

    seen = []
    (tmp_path / "config.json").write_text("{}")  # a model folder as far as the path checks go; loading is faked
    monkeypatch.setattr(modeling.AutoConfig, "from_pretrained", lambda *a, **k: seen.append(("config", k)))
    monkeypatch.setattr(training, "load_model", lambda *a, **k: seen.append(("model", k)) or object())
    monkeypatch.setattr(training, "load_tokenizer", lambda *a, **k: seen.append(("tokenizer", k)))
    monkeypatch.setattr(training, "task_of_model", lambda model: "seq2seq")
    for trusted in (False, True):
        seen.clear()
        model_args = ModelArguments(teacher=str(tmp_path), student=str(tmp_path), trust_remote_code=trusted)
        training.teacher_config(model_args)  # the teacher's config
        students.student_config(model_args)  # the --student checks
        training.build_student(object(), model_args, SimpleNamespace(seed=0))  # the --student weights
        assert [kind for kind, _ in seen] == ["config", "config", "model"]
        assert all(kwargs["trust_remote_code"] is trusted for _, kwargs in seen), seen


# ---- behaviour on malicious model folders ----------------------------------------------------------------------


class Payload:
    """Unpickling this object would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def model_folder(folder: Path, weights: bool = True) -> Path:
    """A tiny T5 saved to ``folder`` (safetensors), or only its config.json."""
    model = T5ForConditionalGeneration(tiny_config("t5", 64, hidden=8, layers=1, heads=2))
    if weights:
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
    return folder


def test_a_pickled_payload_in_pytorch_model_bin_is_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    folder = model_folder(tmp_path / "evil", weights=False)
    torch.save({"shared.weight": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="holds Python objects besides tensors, so it was not loaded"):
        load_model(str(folder), "seq2seq")
    assert not marker.exists(), "the pickle payload ran"


def test_a_plain_tensor_pytorch_model_bin_still_loads(tmp_path):
    model = load_model(str(model_folder(tmp_path / "plain")), "seq2seq")
    model.config.save_pretrained(tmp_path / "bin_only")
    torch.save(model.state_dict(), tmp_path / "bin_only" / "pytorch_model.bin")  # an older checkpoint: tensors only
    loaded = load_model(str(tmp_path / "bin_only"), "seq2seq")
    assert torch.equal(loaded.shared.weight, model.shared.weight)


def test_model_code_shipped_in_a_folder_is_not_imported_without_the_flag(tmp_path):
    marker = tmp_path / "module_imported"
    folder = model_folder(tmp_path / "remote")
    (folder / "evil_modeling.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import T5Config as EvilConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_modeling.EvilConfig", "AutoModelForSeq2SeqLM": "evil_modeling.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(str(folder), "seq2seq")
    assert type(model).__name__ == "T5ForConditionalGeneration" and not marker.exists()
