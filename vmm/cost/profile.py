"""Cycle profiles: what each modeled event costs on one machine, with its source.

A profile is a TOML file in ``vmm/cost/profiles/`` (shipped as package data). Every cost
is a table ``{ cycles = N, label = "C|D|S|R", source = "..." }``; the labels (listed in
``docs/sources.md``, with every publication the figures come from): C read in the
source, D derived from published data (the derivation is in the source text), S cited
by a third party, R recalled and unconfirmed. A number without its source is refused: a model is only as honest as the
provenance of its constants.

Sections and required keys (:data:`REQUIRED`)::

    [machine]   name, description (strings), clock_ghz (a cost-shaped table)
    [native]    guest_instruction, event_delivery, port_io, mmio, walk_reference
    [vmm]       vmx_round_trip, software_trap, tlb_flush_on_entry
    [handler]   default, and optionally one key per exit reason (SDM name)
    [shadow]    fill, true_fault, pte_write
    [events.<category>]  default, and optionally one key per event name
                         (categories: callouts, traps, hypercalls, translation)

A missing or malformed entry raises :class:`ProfileError` with one line naming the file
and the key.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from ..vmx.exit_reasons import ExitReason

LABELS = {"C": "read in the source", "D": "derived from published data", "S": "cited by a third party",
          "R": "recalled, unconfirmed"}
DEFAULT_PROFILE = "haswell-2013"
EVENT_CATEGORIES = ("callouts", "traps", "hypercalls", "translation")
REQUIRED = {
    "native": ("guest_instruction", "event_delivery", "port_io", "mmio", "walk_reference"),
    "vmm": ("vmx_round_trip", "software_trap", "tlb_flush_on_entry"),
    "handler": ("default",),
    "shadow": ("fill", "true_fault", "pte_write"),
}


class ProfileError(ValueError):
    """A profile file that cannot be used; the message is one line: file, key, problem."""


@dataclass(frozen=True)
class Cost:
    """One number of a profile: cycles, provenance label, source text."""

    cycles: float
    label: str
    source: str
    key: str

    def cite(self) -> str:
        return f"{self.label}: {self.source}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    clock_ghz: Cost
    costs: dict            # "section.key" -> Cost  (events as "events.<category>.<name>")
    path: Path

    def cost(self, key: str) -> Cost:
        return self.costs[key]

    def handler(self, reason: str) -> Cost:
        """The hypervisor's handler work for one exit reason (else ``handler.default``)."""
        return self.costs.get(f"handler.{reason}") or self.costs["handler.default"]

    def event(self, category: str, name: str) -> Cost | None:
        """Cost of a mode's own event, or None for a category the profile does not model."""
        return self.costs.get(f"events.{category}.{name}") or self.costs.get(f"events.{category}.default")

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description,
                "clock_ghz": _cost_json(self.clock_ghz),
                "costs": {k: _cost_json(c) for k, c in sorted(self.costs.items())}}


def _cost_json(c: Cost) -> dict:
    return {"cycles": c.cycles, "label": c.label, "source": c.source}


def profile_dir() -> Path:
    return Path(str(resources.files("vmm.cost") / "profiles"))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """A profile by name (``vmm/cost/profiles/NAME.toml``) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = profile_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ProfileError(f"no cycle profile named {str(name_or_path)!r} "
                               f"(have: {', '.join(list_profiles())})")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ProfileError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: not valid TOML: {err}") from None
    return parse_profile(data, path)


def parse_profile(data: dict, path: Path) -> Profile:
    def fail(key: str, problem: str) -> NoReturn:
        raise ProfileError(f"{path}: {key}: {problem}")

    def cost(key: str, value) -> Cost:
        if not isinstance(value, dict):
            fail(key, "must be a table { cycles = N, label = \"C|D|S|R\", source = \"...\" }")
        for part in ("cycles", "label", "source"):
            if part not in value:
                fail(key, f"missing '{part}'")
        cycles = value["cycles"]
        if isinstance(cycles, bool) or not isinstance(cycles, (int, float)) or cycles < 0:
            fail(f"{key}.cycles", f"must be a number >= 0, not {cycles!r}")
        if value["label"] not in LABELS:
            fail(f"{key}.label", f"must be one of {', '.join(LABELS)}, not {value['label']!r}")
        if not isinstance(value["source"], str) or not value["source"].strip():
            fail(f"{key}.source", "must name where the number comes from")
        extra = set(value) - {"cycles", "label", "source"}
        if extra:
            fail(key, f"unknown field(s) {', '.join(sorted(extra))}")
        return Cost(float(cycles), value["label"], value["source"].strip(), key)

    machine = data.get("machine")
    if not isinstance(machine, dict):
        fail("machine", "missing section")
    for key in ("name", "description"):
        if not isinstance(machine.get(key), str) or not machine[key].strip():
            fail(f"machine.{key}", "missing (a non-empty string)")
    if "clock_ghz" not in machine:
        fail("machine.clock_ghz", "missing")
    clock = cost("machine.clock_ghz", machine["clock_ghz"])

    costs: dict[str, Cost] = {}
    for section, keys in REQUIRED.items():
        table = data.get(section)
        if not isinstance(table, dict):
            fail(section, "missing section")
        for key in keys:
            if key not in table:
                fail(f"{section}.{key}", "missing")
        for key, value in table.items():
            if section == "handler" and key != "default" and key not in ExitReason.__members__:
                fail(f"handler.{key}", "not an exit reason name (SDM names, e.g. IO_INSTRUCTION)")
            costs[f"{section}.{key}"] = cost(f"{section}.{key}", value)
    events = data.get("events")
    if not isinstance(events, dict):
        fail("events", "missing section")
    for category in EVENT_CATEGORIES:
        table = events.get(category)
        if not isinstance(table, dict):
            fail(f"events.{category}", "missing section")
        if "default" not in table:
            fail(f"events.{category}.default", "missing")
    for category, table in events.items():
        if not isinstance(table, dict):
            fail(f"events.{category}", "must be a table of costs")
        for key, value in table.items():
            costs[f"events.{category}.{key}"] = cost(f"events.{category}.{key}", value)
    unknown = set(data) - {"machine", "events", *REQUIRED}
    if unknown:
        fail(sorted(unknown)[0], "unknown section")
    return Profile(machine["name"], machine["description"], clock, costs, path)
