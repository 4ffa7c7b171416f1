"""The overhead report: workloads x modes, priced on a cycle profile.

One :class:`BenchReport` holds, per (workload, mode), the measured counts per iteration
(:mod:`vmm.cost.workloads`), their price (:mod:`vmm.cost.model`) and the overhead over
``native``; or the reason the pair did not run. It renders as a rich table, a JSON file
(counts included, so any profile can price them again), a CSV file and a PNG plot, and
it can be rebuilt from either its own JSON or a pytest-benchmark JSON file whose
benchmarks carry the counts in ``extra_info`` (``bench/``)::

    python -m vmm.cost.report out.json [--profile p4-2005] [--out DIR] [--compare-paper]
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .counters import Counts
from .model import Breakdown, model_cycles
from .profile import DEFAULT_PROFILE, Profile, load_profile
from .workloads import BY_NAME, Measurement, WorkloadError, cannot_run, get_workload, measure

TOP_EVENTS = 3
#: The profile whose cycle counts are those of Adams & Agesen's machine (a Pentium 4, 2005):
#: only on it does the model's column compare like with like against the paper's.
PAPER_PROFILE = "p4-2005"

LEGEND = (
    "overhead: the mode's modeled cycles per iteration over native's for the same workload; 1.00x costs "
    "what bare hardware does, below 1x the mode's model is cheaper than native's (an event native pays "
    "for, such as a fault taken through the guest's IDT, that the mode handles more cheaply or not at all).",
    "wall s: host seconds of both runs (N and 2N iterations) of the pair, boot included, with the counting "
    "hook on; the speed of this simulator, not of the modeled machine.",
    "counts per iteration are the difference of the 2N and N runs divided by N, so an event that does not "
    "happen every iteration (a timer tick, a TLB miss every other pass) shows as a fraction.",
)


@dataclass
class Row:
    workload: str
    mode: str
    measurement: Measurement | None = None
    breakdown: Breakdown | None = None
    error: str | None = None
    overhead: float | None = None

    @property
    def cycles(self) -> float | None:
        return self.breakdown.total if self.breakdown else None

    def top_events(self, k: int = TOP_EVENTS) -> list[tuple[str, float]]:
        """The events that cost the most per iteration, guest instructions aside: the
        "why" of the overhead (exits, walk references, shadow faults, hypercalls...)."""
        if not self.breakdown:
            return []
        lines = [line for line in self.breakdown.lines if line.category != "guest instructions" and line.cycles]
        lines.sort(key=lambda line: -line.cycles)
        return [(line.event, line.count) for line in lines[:k]]

    def to_json(self) -> dict:
        return {"workload": self.workload, "mode": self.mode, "error": self.error,
                "cycles_per_iteration": self.cycles, "overhead": self.overhead,
                "measurement": self.measurement.to_json() if self.measurement else None,
                "model": self.breakdown.to_json() if self.breakdown else None}


@dataclass
class BenchReport:
    profile: Profile
    workloads: list[str]
    modes: list[str]
    rows: list[Row] = field(default_factory=list)

    def row(self, workload: str, mode: str) -> Row | None:
        for r in self.rows:
            if r.workload == workload and r.mode == mode:
                return r
        return None

    def price(self) -> None:
        """(Re)price every measured row on :attr:`profile` and compute overheads."""
        for r in self.rows:
            if r.measurement is not None:
                r.breakdown = model_cycles(r.measurement.per_iteration, r.mode, self.profile)
        for r in self.rows:
            base = self.row(r.workload, "native")
            r.overhead = (r.cycles / base.cycles if r.cycles is not None and base and base.cycles
                          else None)

    def to_json(self) -> dict:
        return {"format": "vmm-bench/1", "profile": self.profile.to_json(), "workloads": self.workloads,
                "modes": self.modes, "rows": [r.to_json() for r in self.rows]}


# -- running ---------------------------------------------------------------------------------------
def run_bench(workloads, modes, profile: Profile, *, iterations: int | None = None, progress=None) -> BenchReport:
    """Measure every (workload, mode) pair; ``progress(workload, mode)`` after each."""
    report = BenchReport(profile, list(workloads), list(modes))
    for w in workloads:
        for mode in modes:
            reason = cannot_run(get_workload(w), mode)
            if reason:
                report.rows.append(Row(w, mode, error=f"cannot run: {reason}"))
            else:
                try:
                    report.rows.append(Row(w, mode, measure(w, mode, iterations)))
                except WorkloadError as err:
                    report.rows.append(Row(w, mode, error=str(err)))
            if progress:
                progress(w, mode)
    report.price()
    return report


# -- loading ---------------------------------------------------------------------------------------
def load_report(path, profile: str | None = None) -> BenchReport:
    """A report from ``vmm bench``'s JSON or from ``pytest --benchmark-json`` output."""
    data = json.loads(Path(path).read_text())
    rows: list[Row] = []
    if "benchmarks" in data:  # pytest-benchmark
        stored = None
        for b in data["benchmarks"]:
            info = b.get("extra_info") or {}
            if "measurement" not in info:
                continue  # a tool-speed benchmark: no counts to price
            rows.append(Row(info["workload"], info["mode"], _measurement(info["measurement"])))
            stored = stored or info.get("profile")
    elif data.get("format") == "vmm-bench/1":
        stored = data["profile"]["name"]
        for r in data["rows"]:
            m = r.get("measurement")
            rows.append(Row(r["workload"], r["mode"], _measurement(m) if m else None, error=r.get("error")))
    else:
        raise ValueError(f"{path}: neither a `vmm bench` JSON report nor pytest-benchmark output")
    workloads = list(dict.fromkeys(r.workload for r in rows))
    modes = list(dict.fromkeys(r.mode for r in rows))
    order: list[str] = [m for m in ("native", "trap", "bt", "pv", "vtx", "vtx-ept") if m in modes]
    report = BenchReport(load_profile(profile or stored or DEFAULT_PROFILE), workloads, order, rows)
    report.price()
    return report


def _measurement(m: dict) -> Measurement:
    return Measurement(m["workload"], m["mode"], m["iterations"], Counts.from_json(m["per_iteration"]),
                       m.get("wall_seconds", 0.0), m.get("runs", []))


# -- rendering ------------------------------------------------------------------------------------------
def _fmt_count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 0.005 or x >= 100 else f"{x:.2f}"


def _fmt_cycles(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def render_table(report: BenchReport, title: str | None = None):
    from rich.table import Table

    table = Table(title=title or f"modeled cycles per iteration, profile {report.profile.name}",
                  title_justify="left")
    for name, justify in (("workload", "left"), ("mode", "left"), ("cycles/iter", "right"),
                          ("overhead", "right"), ("top events per iteration (by modeled cycles)", "left"),
                          ("wall s", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]  # rich wants a Literal
    notes = error_notes(report)
    for w in report.workloads:
        first = True
        for mode in report.modes:
            r = report.row(w, mode)
            if r is None:
                continue
            if r.error:
                table.add_row(w if first else "", mode, "-", "-",
                              f"[yellow]not run: note {notes.index(r.error) + 1}[/]", "-")
            else:
                assert r.measurement is not None, "a row without an error was measured"
                top = "; ".join(f"{event} {_fmt_count(n)}" for event, n in r.top_events()) or "-"
                table.add_row(w if first else "", mode, _fmt_cycles(r.cycles),
                              f"{r.overhead:.2f}x" if r.overhead is not None else "-", top,
                              f"{r.measurement.wall_seconds:.2f}")
            first = False
        table.add_section()
    return table


def error_notes(report: BenchReport) -> list[str]:
    """Why pairs did not run, each reason once, in table order (the table cites them)."""
    return list(dict.fromkeys(r.error for w in report.workloads for m in report.modes
                              if (r := report.row(w, m)) is not None and r.error))


def unmodeled_notes(report: BenchReport) -> list[str]:
    notes = []
    for r in report.rows:
        if r.breakdown and r.breakdown.unmodeled:
            items = ", ".join(f"{k} x{_fmt_count(v)}" for k, v in r.breakdown.unmodeled.items())
            notes.append(f"{r.workload} in {r.mode}: counted but not priced by {report.profile.name}: {items}")
    return notes


def paper() -> dict:
    from .profile import tomllib
    return tomllib.loads((resources.files("vmm.cost") / "adams-agesen-2006.toml").read_text())


def paper_table(report: BenchReport):
    """The model (this profile) beside Adams & Agesen's published P4 cycles."""
    from rich.table import Table

    data = paper()
    table = Table(title=f"the model ({report.profile.name}) beside {data['source']['text']}",
                  title_justify="left")
    for name in ("workload", "paper native", "paper BT", "paper VT-x", "model native", "model bt", "model vtx"):
        table.add_column(name, justify="left" if name == "workload" else "right")
    for w, row in data["rows"].items():
        model = []
        for mode in ("native", "bt", "vtx"):
            r = report.row(w, mode)
            model.append(_fmt_cycles(r.cycles) if r and r.cycles is not None else
                         ("not run" if r is None else "n/a"))
        table.add_row(w, row["native"], row["bt"], row["vtx"], *model)
    return table


def orderings(report: BenchReport) -> list[tuple[str, str, bool | None]]:
    """Adams & Agesen's orderings checked on the report: (workload, claim, holds or None)."""
    data = paper()["orderings"]
    out = []
    for winner, loser, key in (("bt", "vtx", "bt_beats_vtx"), ("vtx", "bt", "vtx_beats_bt")):
        for w in data[key]:
            a, b = report.row(w, winner), report.row(w, loser)
            holds = None
            if a and b and a.cycles is not None and b.cycles is not None:
                holds = a.cycles < b.cycles
            out.append((w, f"{winner} < {loser}", holds))
    return out


# -- files -------------------------------------------------------------------------------------------
def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1))


CSV_FIELDS = ("workload", "mode", "profile", "iterations", "cycles_per_iteration", "overhead", "instructions",
              "exits", "walk_references", "events_delivered", "top_events", "wall_seconds", "error")


def write_csv(report: BenchReport, path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, CSV_FIELDS)
        out.writeheader()
        for r in report.rows:
            m = r.measurement
            c = m.per_iteration if m else None
            out.writerow({
                "workload": r.workload, "mode": r.mode, "profile": report.profile.name,
                "iterations": m.iterations if m else "",
                "cycles_per_iteration": f"{r.cycles:.1f}" if r.cycles is not None else "",
                "overhead": f"{r.overhead:.4f}" if r.overhead is not None else "",
                "instructions": f"{c.instructions:.2f}" if c else "",
                "exits": f"{c.total_exits:.2f}" if c else "",
                "walk_references": f"{sum(c.walk_references.values()):.2f}" if c else "",
                "events_delivered": f"{sum(c.injected.values()):.2f}" if c else "",
                "top_events": "; ".join(f"{e} {_fmt_count(n)}" for e, n in r.top_events()),
                "wall_seconds": f"{m.wall_seconds:.3f}" if m else "",
                "error": r.error or ""})


def plot(report: BenchReport, path: Path) -> None:
    """Grouped bars per workload, one bar per mode: overhead over native (log scale)
    above, modeled cycles per iteration (log scale) below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report.modes
    workloads = report.workloads
    width = 0.8 / max(len(modes), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(workloads) + 2), 8), sharex=True)
    any_overhead = False
    for i, mode in enumerate(modes):
        xs, cyc, oxs, over = [], [], [], []
        for j, w in enumerate(workloads):
            r = report.row(w, mode)
            x = j + (i - (len(modes) - 1) / 2) * width
            if r and r.cycles:
                xs.append(x)
                cyc.append(r.cycles)
            if r and r.overhead:
                oxs.append(x)
                over.append(r.overhead)
        any_overhead |= bool(over)
        axes[0].bar(oxs, over, width, label=mode)
        axes[1].bar(xs, cyc, width, label=mode)
    if any_overhead:  # (without native in the report there is nothing to divide by)
        axes[0].set_yscale("log")
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].set_ylabel("overhead vs native (x, log)")
    axes[0].set_title(f"modeled overhead, cycle profile {report.profile.name}")
    axes[0].legend(ncol=len(modes), fontsize="small")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("modeled cycles per iteration (log)")
    axes[1].set_xticks(range(len(workloads)))
    axes[1].set_xticklabels(workloads, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: BenchReport, out_dir: Path) -> list[Path]:
    """bench.json, bench.csv, bench.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.csv", out_dir / "bench.png"]
    write_json(report, paths[0])
    write_csv(report, paths[1])
    plot(report, paths[2])
    return paths


def select(report: BenchReport, workloads: list[str] | None, modes: list[str] | None) -> BenchReport:
    """The report restricted to ``workloads`` and ``modes`` (None: all of them), keeping the
    overheads priced against native even when native itself is left out of the view."""
    keep_w = [w for w in report.workloads if workloads is None or w in workloads]
    keep_m = [m for m in report.modes if modes is None or m in modes]
    missing = [w for w in workloads or () if w not in report.workloads]
    missing += [m for m in modes or () if m not in report.modes]
    if missing:
        raise ValueError(f"not in the report: {', '.join(missing)} (it has workloads "
                         f"{', '.join(report.workloads)}; modes {', '.join(report.modes)})")
    rows = [r for r in report.rows if r.workload in keep_w and r.mode in keep_m]
    return BenchReport(report.profile, keep_w, keep_m, rows)


def paper_warning(report: BenchReport) -> str | None:
    """Why the paper comparison may mislead: a profile other than the paper's machine."""
    if report.profile.name == PAPER_PROFILE:
        return None
    return (f"the cycles are priced on {report.profile.name}, not on {PAPER_PROFILE} (the paper's Pentium 4): "
            f"the model's columns are another machine's; use --profile {PAPER_PROFILE} to compare like with like")


def print_report(report: BenchReport, console, *, compare_paper: bool = False) -> None:
    console.print(render_table(report))
    for line in LEGEND:
        console.print(line, markup=False, highlight=False)
    for i, note in enumerate(error_notes(report), 1):
        console.print(f"[yellow]note {i}:[/] {note}")
    for note in unmodeled_notes(report):
        console.print(f"[yellow]note:[/] {note}")
    if compare_paper:
        warning = paper_warning(report)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(paper_table(report))
        for w, claim, holds in orderings(report):
            verdict = "holds" if holds else ("does not hold" if holds is not None else "not measured")
            console.print(f"  {w}: {claim}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from rich.console import Console

    from .profile import ProfileError

    ap = argparse.ArgumentParser(prog="python -m vmm.cost.report",
                                 description="The overhead table and plot from a `vmm bench` JSON "
                                             "report or a pytest-benchmark JSON file.")
    ap.add_argument("json", help="bench.json from `vmm bench`, or out.json from "
                                 "`python -m pytest bench/ --benchmark-json out.json`")
    ap.add_argument("--profile", help="price the counts on this cycle profile (default: the file's)")
    ap.add_argument("--out", help="also write bench.json, bench.csv and bench.png here")
    ap.add_argument("--compare-paper", action="store_true", help="Adams & Agesen's cycles beside the model")
    args = ap.parse_args(argv)
    try:
        report = load_report(args.json, args.profile)
    except (OSError, ValueError, KeyError, ProfileError) as err:
        print(f"vmm.cost.report: error: {err}")
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=160)  # as `vmm bench`
    print_report(report, console, compare_paper=args.compare_paper)
    if args.out:
        for p in write_outputs(report, Path(args.out)):
            console.print(f"wrote {p}")
    return 0


__all__ = ["BenchReport", "Row", "run_bench", "load_report", "render_table", "write_outputs", "plot",
           "paper_table", "orderings", "BY_NAME"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
