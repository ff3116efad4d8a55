"""The embedded default data set: real text from the installed Python standard library's docstrings.

Every machine with Python has it, nobody on this project wrote it, and it needs no network. For summarization a
docstring's body is the source and its first summary line the target; for classification the label is the
standard-library area the docstring comes from (text, files, network, concurrency, math), a split a person would
agree on. The build is deterministic for a given Python version: modules, then names, in sorted order.

Dump it to JSON lines with ``python -m seq2seq_distill.stdlib_corpus --task summarization --output docs.jsonl``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import random
import warnings

# Area -> modules. Each module belongs to exactly one area, so labels never overlap.
STDLIB_AREAS: dict[str, tuple[str, ...]] = {
    "text": (
        "string",
        "re",
        "textwrap",
        "difflib",
        "unicodedata",
        "stringprep",
        "codecs",
        "html",
        "html.parser",
        "xml.dom.minidom",
        "xml.etree.ElementTree",
        "csv",
        "json",
        "configparser",
        "gettext",
        "locale",
        "shlex",
    ),
    "files": (
        "os",
        "os.path",
        "pathlib",
        "shutil",
        "glob",
        "fnmatch",
        "tempfile",
        "io",
        "filecmp",
        "zipfile",
        "tarfile",
        "gzip",
        "bz2",
        "lzma",
        "stat",
        "fileinput",
        "linecache",
        "mmap",
    ),
    "network": (
        "socket",
        "ssl",
        "http.client",
        "http.server",
        "http.cookiejar",
        "http.cookies",
        "urllib.request",
        "urllib.parse",
        "urllib.error",
        "email.message",
        "email.utils",
        "email.parser",
        "smtplib",
        "imaplib",
        "poplib",
        "ftplib",
        "socketserver",
        "xmlrpc.client",
        "xmlrpc.server",
        "ipaddress",
        "mimetypes",
        "wsgiref.simple_server",
        "webbrowser",
    ),
    "concurrency": (
        "threading",
        "multiprocessing",
        "multiprocessing.pool",
        "concurrent.futures",
        "asyncio",
        "asyncio.tasks",
        "asyncio.queues",
        "asyncio.locks",
        "asyncio.events",
        "asyncio.streams",
        "queue",
        "subprocess",
        "sched",
        "selectors",
        "signal",
        "contextvars",
    ),
    "math": (
        "math",
        "cmath",
        "statistics",
        "decimal",
        "fractions",
        "random",
        "numbers",
        "operator",
        "itertools",
        "functools",
        "heapq",
        "bisect",
    ),
}
LABELS = tuple(STDLIB_AREAS)
MIN_BODY_WORDS = 12


def _documented_objects(module_name: str):
    """(qualified name, object) for public functions, classes and their own methods, in sorted order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a platform without this module simply contributes nothing
            return
    top = module_name.split(".")[0]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if (getattr(obj, "__module__", None) or "").split(".")[0] not in (top, "_" + top, "posix", "nt"):
            continue
        yield f"{module_name}.{name}", obj
        if inspect.isclass(obj):
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and inspect.isroutine(method):
                    yield f"{module_name}.{name}.{method_name}", method


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(body, summary line), or None when the docstring has no usable summary line or too short a body."""
    paragraphs = [paragraph.strip() for paragraph in doc.strip().split("\n\n") if paragraph.strip()]
    if len(paragraphs) < 2:
        return None
    summary_lines = paragraphs[0].splitlines()
    summary = summary_lines[0].strip()
    body = "\n\n".join(["\n".join(summary_lines[1:])] + paragraphs[1:]).strip()
    if not 3 <= len(summary.split()) <= 30 or len(body.split()) < MIN_BODY_WORDS:
        return None
    return body, summary


def build_docstring_records() -> list[dict]:
    """All usable docstrings once each: ``{"id", "area", "document", "summary"}`` (fresh dicts on every call)."""
    return [dict(record) for record in _docstring_records()]


@functools.lru_cache(maxsize=1)
def _docstring_records() -> tuple[dict, ...]:
    # Importing ~80 modules and walking their members takes seconds; once per process is enough.
    records, seen = [], set()
    for area, module_names in STDLIB_AREAS.items():
        for module_name in module_names:
            for qualified_name, obj in _documented_objects(module_name):
                doc = inspect.getdoc(obj)
                parts = split_docstring(doc) if doc else None
                if parts is None or doc in seen:
                    continue
                seen.add(doc)
                records.append({"id": qualified_name, "area": area, "document": parts[0], "summary": parts[1]})
    return tuple(records)


def build_summarization_corpus(max_examples: int | None = None, seed: int = 0) -> list[dict]:
    """``{"id", "document", "summary"}`` rows in a seeded shuffled order (so any prefix mixes all areas)."""
    records = build_docstring_records()
    random.Random(seed).shuffle(records)
    rows = [{"id": r["id"], "document": r["document"], "summary": r["summary"]} for r in records]
    return rows[:max_examples] if max_examples else rows


def build_classification_corpus(per_class: int | None = None, seed: int = 0) -> list[dict]:
    """``{"id", "text", "label"}`` rows, balanced: every area keeps as many docstrings as the smallest one has."""
    by_area: dict[str, list[dict]] = {area: [] for area in STDLIB_AREAS}
    for record in build_docstring_records():
        by_area[record["area"]].append(record)
    rng = random.Random(seed)
    size = min(len(rows) for rows in by_area.values())
    size = min(size, per_class) if per_class else size
    rows = []
    for area, records in by_area.items():
        for record in rng.sample(records, size):
            rows.append({"id": record["id"], "text": record["summary"] + "\n" + record["document"], "label": area})
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dump the standard-library docstring data set to JSON lines.")
    parser.add_argument("--task", choices=("summarization", "classification"), default="summarization")
    parser.add_argument("--output", required=True, help="path of the .jsonl file to write")
    parser.add_argument("--max_examples", type=int, default=None)
    args = parser.parse_args(argv)
    if args.task == "summarization":
        rows = build_summarization_corpus(args.max_examples)
    else:
        rows = build_classification_corpus(args.max_examples)
    with open(args.output, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.output}")


if __name__ == "__main__":
    main()
