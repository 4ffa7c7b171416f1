"""docs/ARCHITECTURE.md names real code: every ``vmm.…`` name it cites imports."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"
CITED = re.compile(r"`(vmm(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")


def resolve(name: str):
    """The object a dotted name stands for: the longest importable module prefix, then
    attributes (classes, functions, methods)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(name)


def test_the_doc_cites_names():
    assert len(set(CITED.findall(DOC.read_text()))) >= 40


def test_every_cited_name_exists():
    missing = []
    for name in sorted(set(CITED.findall(DOC.read_text()))):
        try:
            resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, "\n".join(missing)


def test_each_worked_trace_reads_in_three_files_at_most():
    text = DOC.read_text()
    traces = re.findall(r"^### .*\((.*)\)$", text, flags=re.M)
    assert len(traces) == 5
    for files in traces:
        paths = re.findall(r"`([\w/]+\.py)`", files)
        assert 1 <= len(paths) <= 3, files
        for path in paths:
            assert (DOC.parent.parent / path).is_file(), path
