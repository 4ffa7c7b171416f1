"""A mode's own events, beyond the VM-exit reasons: trap-and-emulate traps, binary
translation callouts, paravirtual hypercalls, translation-cache work.

Each event has a category ("callouts", "hypercalls", ...) and a name within it
("mov cr3", "mmu_update", ...). Counts feed the cost model and ``vmm run --stat``; the
handler wall time (when the mode measures it) is shown beside them, as for exits.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict

_clock = time.perf_counter


class EventCounters:
    """Counts and handler time of named events, grouped by category."""

    def __init__(self, published: list | None = None) -> None:
        """``published``: the event bus's ``event`` topic (its subscribers see each event
        as it is counted), or None."""
        self.counts: defaultdict[str, Counter] = defaultdict(Counter)
        self.seconds: defaultdict[str, Counter] = defaultdict(Counter)
        self._published = published if published is not None else []

    def add(self, category: str, name: str, n: int = 1, seconds: float = 0.0) -> None:
        self.counts[category][name] += n
        if seconds:
            self.seconds[category][name] += seconds  # type: ignore[assignment]  # typeshed: Counter holds ints; these are float seconds
        for observe in self._published:
            observe(category, name, n)

    def timed(self, category: str, name: str, started: float) -> None:
        """Count one event whose handler began at ``started`` (``time.perf_counter``)."""
        self.add(category, name, 1, _clock() - started)

    def total(self, category: str) -> int:
        return sum(self.counts.get(category, Counter()).values())

    def snapshot(self) -> tuple[dict[str, Counter], dict[str, Counter]]:
        """Copies of (counts, seconds) with empty categories left out."""
        counts = {c: Counter(v) for c, v in self.counts.items() if sum(v.values())}
        seconds = {c: Counter(self.seconds.get(c, Counter())) for c in counts}
        return counts, seconds


def render_events(category: str, counts: Counter, seconds: Counter, title: str):
    """A rich Table in the style of the exit statistics: name, count, share, handler time."""
    from rich.table import Table

    total = sum(counts.values())
    total_time = sum(seconds.values())
    table = Table(title=title, title_justify="left")
    for name, justify in ((category[:-1] if category.endswith("s") else category, "left"),
                          ("count", "right"), ("%", "right"), ("handler time", "right"), ("mean", "right")):
        table.add_column(name, justify="left" if justify == "left" else "right")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        t = seconds.get(name, 0.0)
        table.add_row(name, str(n), f"{100 * n / total:.1f}" if total else "0.0",
                      f"{t * 1e3:.2f} ms" if t else "-", f"{t / n * 1e6:.1f} us" if t and n else "-")
    table.add_section()
    table.add_row("total", str(total), "100.0" if total else "0.0",
                  f"{total_time * 1e3:.2f} ms" if total_time else "-", "")
    return table
