"""Exit statistics, in the manner of ``kvm_stat`` and ``perf kvm stat report``: per exit
reason the count, its share, and the wall time the VMM's handler took."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from ..vmx.exit_reasons import ExitReason


@dataclass
class ExitStat:
    reason: ExitReason
    count: int
    handler_seconds: float

    @property
    def mean_us(self) -> float:
        return self.handler_seconds / self.count * 1e6 if self.count else 0.0


def exit_stats(counts: Counter, seconds: Counter) -> list[ExitStat]:
    """Rows sorted by count (then SDM number), as kvm_stat sorts."""
    rows = [ExitStat(ExitReason(r), n, seconds.get(r, 0.0)) for r, n in counts.items() if n]
    return sorted(rows, key=lambda s: (-s.count, int(s.reason)))


def stats_json(rows: list[ExitStat], *, mode: str, guest: str, instructions: int | None,
               virtual_time: int, wall_seconds: float, memory: dict | None = None,
               events: dict | None = None) -> str:
    total = sum(s.count for s in rows)
    return json.dumps({
        "mode": mode, "guest": guest, "instructions": instructions, "virtual_time": virtual_time,
        "wall_seconds": wall_seconds,
        "total_exits": total,
        "exits": [{"reason": int(s.reason), "name": s.reason.name, "count": s.count,
                   "percent": round(100 * s.count / total, 2) if total else 0.0,
                   "handler_seconds": s.handler_seconds, "mean_handler_us": round(s.mean_us, 3)}
                  for s in rows],
        "memory": memory or {},
        "events": {category: dict(counts) for category, counts in (events or {}).items()},
    }, indent=2)


def render_memory(counters: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("memory event")
    table.add_column("count", justify="right")
    for name, value in counters.items():
        table.add_row(name, str(value))
    return table


def render(rows: list[ExitStat], title: str):
    """A rich Table: reason number and SDM name, count, share, handler time."""
    from rich.table import Table

    total = sum(s.count for s in rows)
    total_time = sum(s.handler_seconds for s in rows)
    table = Table(title=title, title_justify="left")
    for name, justify in (("#", "right"), ("exit reason", "left"), ("count", "right"), ("%", "right"),
                          ("handler time", "right"), ("mean", "right")):
        table.add_column(name, justify="left" if justify == "left" else "right")
    for s in rows:
        table.add_row(str(int(s.reason)), s.reason.name, str(s.count), f"{100 * s.count / total:.1f}",
                      f"{s.handler_seconds * 1e3:.2f} ms", f"{s.mean_us:.1f} us")
    table.add_section()
    table.add_row("", "total", str(total), "100.0" if total else "0.0", f"{total_time * 1e3:.2f} ms", "")
    return table
