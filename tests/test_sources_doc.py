"""docs/sources.md lists every number of every cost profile, with its label and its source.

The profile files are read as plain TOML here (not through ``vmm.cost.profile``), so the
check is the document against the files themselves: a number changed, added or removed in a
profile without its entry in docs/sources.md fails, and so does an entry whose publication
the document does not cite in full, or a figure the source text quotes that the document
never states.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sources.md"
PROFILES = sorted((ROOT / "vmm" / "cost" / "profiles").glob("*.toml"))
PAPER = ROOT / "vmm" / "cost" / "adams-agesen-2006.toml"
COST_FIELDS = {"cycles", "label", "source"}
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _doc() -> str:
    return DOC.read_text()


def _rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and rule rows included)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.lstrip().startswith("|")]


def _section(doc: str, heading: str) -> str:
    """The text under the first heading that starts with ``heading``, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#+ |\Z)", doc, re.MULTILINE | re.DOTALL)
    assert match, f"docs/sources.md has no section {heading!r}"
    return match.group(1)


def _citation_keys(doc: str) -> set[str]:
    """Keys of the publication tables: rows ``| [KEY] | citation |``."""
    return {row[0][1:-1] for row in _rows(doc)
            if len(row) == 2 and re.fullmatch(r"\[[A-Z0-9]+\]", row[0]) and len(row[1]) > 20}


def _costs(data: dict) -> dict[str, dict]:
    """Every cost-shaped table of a profile, keyed as the model names them."""
    found: dict[str, dict] = {}

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            if not isinstance(value, dict):
                continue
            if set(value) == COST_FIELDS:
                found[f"{prefix}{key}"] = value
            else:
                walk(f"{prefix}{key}.", value)
    walk("", data)
    return found


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def test_the_profiles_exist():
    assert {p.stem for p in PROFILES} >= {"p4-2005", "nehalem-2008", "haswell-2013", "skylake-2015"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_profile_number_is_listed_with_its_label_and_source(path):
    doc = _doc()
    data = tomllib.loads(path.read_text())
    costs = _costs(data)
    assert len(costs) > 20, path
    table = {row[0].strip("`"): row for row in _rows(_section(doc, f"Profile `{path.stem}`"))
             if row[0].startswith("`")}
    known = _citation_keys(doc)
    for key, cost in costs.items():
        assert key in table, f"{path.name}: {key} is not listed in docs/sources.md"
        _entry, cycles, label, source, cited = table[key]
        assert float(cycles) == float(cost["cycles"]), f"{path.name}: {key}: {cycles} != {cost['cycles']}"
        assert label == cost["label"], f"{path.name}: {key}: label {label} != {cost['label']}"
        assert source == cost["source"].replace("|", "/"), f"{path.name}: {key}: source text differs"
        keys = re.findall(r"\[([A-Z0-9]+)\]", cited)
        assert keys, f"{path.name}: {key}: no publication cited"
        assert set(keys) <= known, f"{path.name}: {key}: cites {set(keys) - known}, not in the publication list"
    stale = set(table) - set(costs)
    assert not stale, f"docs/sources.md lists entries {path.name} does not have: {stale}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_figure_a_source_quotes_is_stated_in_the_document(path):
    # The figures a source text builds on (3898 cycles, a 701 round trip, 0.84 us of bus
    # time...) must appear in the document's own text, outside the per-entry tables.
    doc = _doc()
    prose = doc.split("## Every entry of every profile")[0]
    stated = _numbers(prose)
    for key, cost in _costs(tomllib.loads(path.read_text())).items():
        missing = _numbers(cost["source"]) - stated
        assert not missing, f"{path.name}: {key}: {sorted(missing)} quoted but not stated in docs/sources.md"


def test_the_paper_table_is_the_one_compare_paper_prints():
    data = tomllib.loads(PAPER.read_text())
    rows = {row[0]: row[1:] for row in _rows(_section(_doc(), "Adams & Agesen 2006"))}
    for test, values in data["rows"].items():
        assert test in rows, f"{test} missing from the Adams & Agesen table"
        assert rows[test] == [values["native"], values["bt"], values["vtx"]], test
    orderings = _section(_doc(), "Adams & Agesen 2006")
    for winner, tests in data["orderings"].items():
        for test in tests:
            assert test in orderings, (winner, test)
    assert "AA06" in _citation_keys(_doc())
