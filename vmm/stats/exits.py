"""Exit statistics, in the manner of ``kvm_stat`` and ``perf kvm stat report``: per exit
reason the count, its share, and the wall time the VMM's handler took.

Only the VT-x modes have VM exits with SDM reason numbers. ``native`` has none: what it
dispatches is what a bare machine sees (port I/O, exceptions, interrupts); the software
VMMs (``trap``, ``bt``, ``pv``) enter the VMM for the same events. Those modes' tables and
traces name the event ("port I/O"), not an exit reason.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from ..vmx.exit_reasons import ExitReason

VMX_MODES = ("vtx", "vtx-ept")
"""The modes whose dispatches are VM exits (a VMCS, SDM basic exit reasons)."""

_EVENT_NAMES = {
    ExitReason.IO_INSTRUCTION: "port I/O",
    ExitReason.EXCEPTION_NMI: "exception or NMI",
    ExitReason.EXTERNAL_INTERRUPT: "external interrupt",
    ExitReason.TRIPLE_FAULT: "triple fault",
    ExitReason.EPT_MISCONFIG: "MMIO",
    ExitReason.EPT_VIOLATION: "unassigned memory",
}


def has_vm_exits(mode: str) -> bool:
    return mode in VMX_MODES


def event_name(reason: ExitReason) -> str:
    """What a dispatch is called in a mode without VM exits: the event itself ("port I/O",
    "HLT", "CPUID"), not the SDM exit reason it would be under VT-x."""
    return _EVENT_NAMES.get(reason) or reason.name.replace("_", " ").replace("INSTRUCTION", "").strip()


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


def render(rows: list[ExitStat], title: str, *, vm_exits: bool = True):
    """A rich Table: reason number and SDM name (``vm_exits``; else the event's name),
    count, share, handler time."""
    from rich.table import Table

    total = sum(s.count for s in rows)
    total_time = sum(s.handler_seconds for s in rows)
    table = Table(title=title, title_justify="left")
    head = (("#", "right"), ("exit reason", "left")) if vm_exits else (("event", "left"),)
    for name, justify in head + (("count", "right"), ("%", "right"), ("handler time", "right"),
                                 ("mean", "right")):
        table.add_column(name, justify="left" if justify == "left" else "right")
    for s in rows:
        label = (str(int(s.reason)), s.reason.name) if vm_exits else (event_name(s.reason),)
        table.add_row(*label, str(s.count), f"{100 * s.count / total:.1f}",
                      f"{s.handler_seconds * 1e3:.2f} ms", f"{s.mean_us:.1f} us")
    table.add_section()
    table.add_row(*("",) * (len(head) - 1), "total", str(total), "100.0" if total else "0.0",
                  f"{total_time * 1e3:.2f} ms", "")
    return table


def _is_port_access(event: str) -> bool:
    """A mode event that is a port access: a trapped or called-out IN/OUT/INS/OUTS, PV's
    emulated I/O."""
    return event.split()[0] in PORT_MNEMONICS or "I/O" in event


PORT_MNEMONICS = frozenset({"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"})


def stat_tables(rows: list[ExitStat], *, mode: str, guest: str, wall_seconds: float,
                events: dict | None = None, event_seconds: dict | None = None, memory: dict | None = None):
    """The tables of ``--stat`` (and gdb's ``monitor stat``), empty ones left out: the
    dispatches by reason, each category of the mode's own events, the memory counters."""
    from .events import render_events

    tables = []
    if rows:
        vm_exits = has_vm_exits(mode)
        total = sum(r.count for r in rows)
        label = ("VM exit" if vm_exits else "event") + ("" if total == 1 else "s")
        table = render(rows, f"{guest} in {mode}: {total} {label}, {wall_seconds:.3f} s wall", vm_exits=vm_exits)
        seen_again = [category for category, counts in (events or {}).items()
                      if any(n and _is_port_access(name) for name, n in counts.items())]
        if not vm_exits and seen_again and any(r.reason == ExitReason.IO_INSTRUCTION for r in rows):
            # A software VMM's port access is one event seen at two layers: here where it
            # reached the board, and in the mode's own table where it entered the VMM.
            table.caption = (f"port I/O as the board saw it; the same accesses entered the VMM as the "
                             f"{' and '.join(seen_again)} counted below")
            table.caption_justify = "left"
        tables.append(table)
    for category, counts in (events or {}).items():
        if sum(counts.values()):
            tables.append(render_events(category, counts, (event_seconds or {}).get(category, {}),
                                        f"{category} ({mode}): {sum(counts.values())}"))
    if memory and any(memory.values()):
        tables.append(render_memory({k: v for k, v in memory.items() if v}, f"memory virtualization ({mode})"))
    return tables
