"""Model cards: Hub metadata that parses, the teacher as base_model, benchmark figures equal to benchmark_results.json,
a body that says how the model was made, and a card written whole or not at all."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import ModelCard

from seq2seq_distill import model_cards, reports
from seq2seq_distill.model_cards import ModelRun, data_source, model_card, update_model_cards, write_model_card

VERDICT = "distilled keeps 91.5% of the teacher's ROUGE-L at 2.1x the speed and 41% of the size"


def distilled_run(**changes) -> ModelRun:
    values = dict(
        name="distilled",
        role="distilled",
        task="seq2seq",
        model_type="t5",
        teacher="/runs/pipeline/teacher",
        layer_map={"encoder": [0, 3], "decoder": [0, 3]},
        terms={"ce_loss": 0.5, "kd_loss": 0.5},
        temperature=2.0,
        divergence="forward_kl",
        steps=17,
        seed=42,
        learning_rate=1e-3,
        data="local data at `/data/mine.jsonl` (not a hub dataset)",
        training_rows=40,
        transfer_rows=12,
        transfer="1 augmented copy of each input",
    )
    return ModelRun(**{**values, **changes})


def benchmark_summary() -> dict:
    """The parts of ``run_benchmark``'s summary a card reads, with figures of the kinds it produces: numpy floats,
    a NaN (null in the JSON), per-class dictionaries."""

    def model(rouge, size):
        return {
            "name": "x",
            "path": "p",
            "quality": {
                "rougeL": np.float64(rouge),
                "rouge1": 1 / 3,
                "bleu": float("nan"),
                "generated_length": 7,
                "per_class": {"a": {"precision": 1.0}},
            },
            "cost": {"parameters": 123456, "size_on_disk_mb": size, "latency_p50_ms": 3.25},
            "versus_teacher": {"quality_retained": 91.5},
        }

    return {
        "verdict": VERDICT,
        "teacher": "teacher",
        "main_metric": "rougeL",
        "task": "seq2seq",
        "split": "test",
        "examples": 6,
        "environment": {"device": "cpu"},
        "models": {"teacher": model(20.123456789, 2.5), "distilled": model(18.412345678901234, 1.0)},
        "groups": {},
    }


def written(summary: dict, folder) -> dict:
    """The summary as ``benchmark_results.json`` holds it (strict JSON: a NaN is null)."""
    reports.write_json(str(folder / "benchmark_results.json"), summary)
    return json.loads((folder / "benchmark_results.json").read_text())


def index_figures(card: ModelCard) -> dict:
    return {result.metric_type: result.metric_value for result in card.data.eval_results or []}


def json_figures(quality: dict) -> dict:
    """The model-index must hold exactly these: the scalar figures of benchmark_results.json that are not null."""
    return {key: value for key, value in quality.items() if isinstance(value, (int, float)) and value is not None}


def test_a_card_names_its_teacher_and_holds_the_benchmark_figures_of_the_results_file(tmp_path):
    summary = benchmark_summary()
    results = written(summary, tmp_path)
    folder = tmp_path / "distilled"
    folder.mkdir()
    data = data_source(SimpleNamespace(dataset=None, dataset_local_path="/data/mine.jsonl", dataset_config=None))
    write_model_card(str(folder), model_card(distilled_run(), summary, data))

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == "/runs/pipeline/teacher"
    assert {"distillation", "seq2seq_distill"} <= set(card.data.tags)
    assert index_figures(card) == json_figures(results["models"]["distilled"]["quality"])
    assert index_figures(card)["rougeL"] == 18.412345678901234  # unrounded; the body shows 18.41
    assert "bleu" not in index_figures(card)  # NaN in the benchmark, null in its JSON: no figure to claim
    assert {result.dataset_split for result in card.data.eval_results} == {"test"}
    for words in ("Teacher: `/runs/pipeline/teacher`", "`kd_loss` × 0.5", "`ce_loss` × 0.5", "Temperature: 2", VERDICT):
        assert words in card.text, words
    assert "17 optimizer steps" in card.text and "encoder [0, 3]; decoder [0, 3]" in card.text
    assert "12 rows labelled by the teacher" in card.text and "| ROUGE-L | 18.41 |" in card.text


def test_a_local_dataset_is_named_in_the_body_and_a_hub_dataset_in_the_metadata(tmp_path):
    local = distilled_run()
    card = model_card(local)
    assert card.data.datasets is None and "`/data/mine.jsonl`" in card.text
    hub = data_source(SimpleNamespace(dataset="cnn_dailymail", dataset_config="3.0.0", dataset_local_path=None))
    card = model_card(distilled_run(data=hub.words, datasets=[hub.hub]))
    assert card.data.datasets == ["cnn_dailymail"] and "the hub dataset `cnn_dailymail` (config `3.0.0`)" in card.text


def test_a_teacher_from_scratch_has_no_base_model_and_says_so():
    card = model_card(ModelRun("teacher", "teacher", "seq2seq", "t5", terms={"ce_loss": 1.0}, steps=3))
    assert card.data.base_model is None and "trained from scratch" in card.text
    assert "Temperature" not in card.text  # no KD term, no temperature to state


def test_the_benchmark_updates_only_the_cards_this_toolkit_wrote(tmp_path):
    summary = benchmark_summary()
    ours, foreign, broken, bare = (tmp_path / name for name in ("ours", "foreign", "broken", "bare"))
    for folder in (ours, foreign, broken, bare):
        folder.mkdir()
    model_cards.save_model_card(str(ours), distilled_run())
    assert ModelCard.load(ours / "README.md").data.eval_results is None  # not benchmarked yet
    (foreign / "README.md").write_text("---\nlicense: mit\n---\n# someone else's model\n")
    (broken / "README.md").write_text("---\nlicense: [mit\n---\n")  # metadata that does not parse
    models = {"distilled": str(ours), "teacher": str(foreign), "x": str(broken), "y": str(bare), "hub": "t5-small"}
    hub_data = SimpleNamespace(dataset="cnn_dailymail", dataset_config=None, dataset_local_path=None)

    assert update_model_cards(models, summary, hub_data) == [str(ours)]
    card = ModelCard.load(ours / "README.md")
    assert index_figures(card) == json_figures(written(summary, tmp_path)["models"]["distilled"]["quality"])
    assert VERDICT in card.text and "`kd_loss` × 0.5" in card.text  # rebuilt from the stored run: nothing lost
    assert {result.dataset_type for result in card.data.eval_results} == {"cnn_dailymail"}  # the benchmark's data
    assert (foreign / "README.md").read_text() == "---\nlicense: mit\n---\n# someone else's model\n"
    assert (broken / "README.md").read_text() == "---\nlicense: [mit\n---\n"
    assert os.listdir(bare) == []


def test_a_write_that_fails_leaves_the_previous_card_whole(tmp_path, monkeypatch):
    write_model_card(str(tmp_path), model_card(distilled_run()))
    before = (tmp_path / "README.md").read_text()

    def fail(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(reports.os, "fsync", fail)  # the new text is written, then the write fails before replacing
    with pytest.raises(OSError, match="disk full"):
        write_model_card(str(tmp_path), model_card(distilled_run(steps=99)))
    assert (tmp_path / "README.md").read_text() == before and os.listdir(tmp_path) == ["README.md"]


def test_a_pushed_model_gets_its_card_pushed_to_the_same_repository(tmp_path, monkeypatch):
    """Offline stand-in for --push_to_hub: the card follows the Trainer's push to the repository it created."""
    pushed = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda card, repo_id, **kwargs: pushed.append((repo_id, card.data.base_model)))
    model_cards.save_model_card(str(tmp_path / "a"), distilled_run())
    assert pushed == []  # no push without a repository
    model_cards.save_model_card(str(tmp_path / "b"), distilled_run(hub_model_id="me/distilled"))
    update_model_cards({"distilled": str(tmp_path / "b")}, benchmark_summary(), None)
    assert pushed == [("me/distilled", "/runs/pipeline/teacher")] * 2  # after training, and with the results
