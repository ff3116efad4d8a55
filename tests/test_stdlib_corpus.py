import collections
import inspect
import json

from seq2seq_distill import stdlib_corpus
from seq2seq_distill.stdlib_corpus import build_classification_corpus, build_summarization_corpus, split_docstring


def test_summarization_rows_are_real_docstrings_split_at_the_summary_line():
    rows = build_summarization_corpus()
    assert len(rows) >= 500
    assert rows == build_summarization_corpus(), "the build must be deterministic"
    by_id = {row["id"]: row for row in rows}
    import json as json_module

    row = by_id["json.dumps"]
    doc = inspect.getdoc(json_module.dumps)
    assert doc.startswith(row["summary"]) and row["document"].split()[-1] == doc.split()[-1]
    assert all(len(r["document"].split()) >= stdlib_corpus.MIN_BODY_WORDS for r in rows)


def test_split_docstring_rejects_docstrings_without_a_body():
    assert split_docstring("Only a summary line.") is None
    assert split_docstring("Short.\n\nA body with enough words to pass the minimum body length we require here.") is None
    body, summary = split_docstring(
        "Return the sum of two numbers.\n\nBoth arguments must be numbers; the result is their sum, as int or float."
    )
    assert summary == "Return the sum of two numbers." and body.startswith("Both arguments")


def test_classification_is_balanced_over_at_least_four_areas():
    rows = build_classification_corpus()
    counts = collections.Counter(row["label"] for row in rows)
    assert len(counts) >= 4 and len(set(counts.values())) == 1 and min(counts.values()) >= 50
    modules = {row["id"].rsplit(".", 1)[0] for row in rows if row["label"] == "network"}
    assert not modules & set(stdlib_corpus.STDLIB_AREAS["math"])


def test_dump_to_jsonl(tmp_path):
    target = tmp_path / "docs.jsonl"
    stdlib_corpus.main(["--task", "classification", "--output", str(target), "--max_examples", "10"])
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 10 * len(stdlib_corpus.LABELS) and set(rows[0]) == {"id", "text", "label"}
