"""``vmm fuzz``: run the fuzz harnesses of :mod:`vmm.fuzz` and summarise what held.

Its imports (hypothesis) happen when it runs, so that they cost nothing to the other commands.
"""
from __future__ import annotations

import contextlib
import os
import sys

import click

from ..modes import MODES
from .common import check_writable_dir, fail

HARNESS_NAMES = ("instructions", "paging", "ept", "vmcs", "hypercalls")


def _outcomes(report) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in report.outcomes.most_common() if kind not in ("CRASH", "HANG", "OOB"))


def summary_table(reports):
    """The summary as a rich Table: cases and runs, failures, time (outcomes follow it)."""
    from rich.table import Table

    table = Table(title="vmm fuzz")
    for name, justify in (("harness", "left"), ("modes", "left"), ("cases", "right"), ("runs", "right"),
                          ("CRASH", "right"), ("HANG", "right"), ("OOB", "right"), ("time", "right")):
        table.add_column(name, justify=justify)
    for r in reports:
        if r.skipped:
            table.add_row(r.harness, f"skipped: {r.skipped}", "0", "0", "-", "-", "-", "-")
            continue
        table.add_row(r.harness, " ".join(r.modes), str(r.cases), str(r.runs), _red(r.crashes), _red(r.hangs),
                      _red(r.oob), f"{r.seconds:.1f} s")
    return table


def outcome_lines(reports) -> list[str]:
    """Outcomes by kind, one line per harness, then the side events a harness counted."""
    lines = []
    for r in reports:
        if r.skipped:
            lines.append(f"{r.harness}: skipped, {r.skipped}")
            continue
        lines.append(f"{r.harness}: {_outcomes(r) or '-'}")
        lines += [f"  {note}: {n}" for note, n in sorted(r.notes.items())]
    return lines


def _red(n: int) -> str:
    return f"[bold red]{n}[/]" if n else "0"


@contextlib.contextmanager
def _removed_when_interrupted(inflight: str | None):
    """Ctrl-C is no crash: the in-flight reproducer is removed, as after a finished run."""
    try:
        yield
    except KeyboardInterrupt:
        if inflight is not None and os.path.exists(inflight):
            os.unlink(inflight)
        raise


@click.command()
@click.option("--harness", "harnesses", multiple=True, type=click.Choice(HARNESS_NAMES), metavar="NAME",
              help=f"Run only this harness (repeatable): {', '.join(HARNESS_NAMES)}. Default: all.")
@click.option("--cases", type=click.IntRange(1, 10_000_000), default=200, show_default=True, metavar="N",
              help="Cases per harness; each case runs in every mode the harness covers.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, metavar="S",
              help="Seed of the case generator: the same seed gives the same cases.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), metavar="M",
              help=f"Fuzz only in this mode (repeatable): {', '.join(MODES)}. Default: every available mode.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write a JSON reproducer for every crash, hang and escape kept (replay: "
              "vmm.fuzz.replay(json.load(open(FILE)))); DIR/inflight.json holds the run in progress, "
              "and stays if the process dies.")
def fuzz(harnesses, cases, seed, modes, save_dir):
    """Fuzz the VMM with hostile guests: random instruction streams, page tables, EPT
    structures, VMCS writes and hypercalls, run through the real engine in every
    available mode under instruction and wall-clock budgets.

    Each run must end in a clean stop with a reason. Exit status 0 when no run crashed
    (a Python exception escaped the VMM), hung (overran its wall-clock budget) or let
    the guest reach memory outside its VM (OOB); 1 otherwise; 2 for bad arguments.

    \b
    Examples:
      vmm fuzz --cases 200                    # every harness, every mode (CI runs this size)
      vmm fuzz --cases 10000                  # the long run
      vmm fuzz --harness vmcs --mode vtx --seed 7 --save findings/
    """
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..fuzz import HARNESSES, save_findings
        from ..fuzz.core import fuzzable_modes
    except ImportError as err:
        fail(f"vmm fuzz needs hypothesis ({err}); install the development extras: pip install -e '.[dev]'")

    available, broken = fuzzable_modes()
    for name, why in broken.items():
        click.echo(f"vmm: warning: mode {name} is present but does not load ({why}); not fuzzed", err=True)
    unavailable = [m for m in modes if m not in available]
    if unavailable:
        fail(f"--mode {', '.join(unavailable)}: not available; available: {', '.join(available)}")
    check_writable_dir(save_dir, "--save")
    chosen = [HARNESSES[name] for name in (harnesses or HARNESS_NAMES)]
    import faulthandler
    faulthandler.enable()        # a crash inside the engine still prints where it happened
    inflight = None
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        inflight = os.path.join(save_dir, "inflight.json")   # removed unless the process dies
    console = Console(stderr=True)
    reports = []
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False,
                  disable=not console.is_terminal,   # a bar for people, not for logs
                  ) as progress, _removed_when_interrupted(inflight):
        for harness in chosen:
            task = progress.add_task(harness.name, total=cases)
            report = harness.run(cases, seed=seed, modes=tuple(modes) or None,
                                 progress=lambda n, t=task: progress.advance(t, n), inflight=inflight)
            progress.update(task, completed=cases)
            if report.skipped and modes and harness.modes(tuple(available)):
                # The harness could run, in modes the command line left out.
                report.skipped = f"not selected by --mode (it runs in {', '.join(harness.modes(tuple(available)))})"
            reports.append(report)
    if inflight is not None and os.path.exists(inflight):
        os.unlink(inflight)
    out = Console()
    out.print(summary_table(reports))
    out.print("outcomes (clean stops, by kind):")
    for line in outcome_lines(reports):
        out.print(f"  {line}", markup=False, highlight=False)
    if not any(r.runs for r in reports):
        fail("nothing ran: every harness chosen was skipped (see the table); choose another --harness or --mode")
    failures = sum(sum(r.failures.values()) for r in reports)
    if failures:
        out.print(f"[bold red]{failures} failure(s)[/] (seed {seed}); the first of each harness:")
        for r in reports:
            for f in r.findings[:5]:
                out.print(f"  {r.harness} {f.kind} in {f.mode} (case {f.reproducer['index']}): {f.detail[:300]}",
                          markup=False, highlight=False)
        if save_dir is not None:
            try:
                written = save_findings(reports, save_dir)
            except OSError as err:
                fail(f"--save {save_dir}: {err.strerror or err}")
            out.print(f"reproducers: {len(written)} file(s) in {save_dir}")
        sys.exit(1)
    out.print(f"no crash, hang or escape in {sum(r.runs for r in reports)} runs (seed {seed})")
