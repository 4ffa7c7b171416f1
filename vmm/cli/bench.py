"""``vmm bench``: the overhead report, workloads x modes, priced on a cycle profile.

With no arguments it is the lab's main job: boot the default workload set in every
available mode, count every modeled event per iteration, and print the overhead table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: -w in,pgfault -w tlbmiss."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _workloads(values: tuple[str, ...]) -> list[str]:
    from ..cost.workloads import BY_NAME, DEFAULT_SET, WORKLOADS

    names = _split(values)
    if not names:
        return list(DEFAULT_SET)
    out: list[str] = []
    groups = {w.group for w in WORKLOADS}
    for name in names:
        if name == "all":
            out += [w.name for w in WORKLOADS]
        elif name in groups:
            out += [w.name for w in WORKLOADS if w.group == name]
        elif name in BY_NAME:
            out.append(name)
        else:
            raise click.BadParameter(f"no workload {name!r}; have: {', '.join(BY_NAME)}, or a group "
                                     f"({', '.join(sorted(groups))}), or all", param_hint="--workload")
    return list(dict.fromkeys(out))


def _modes(values: tuple[str, ...]) -> list[str]:
    """The modes asked for, in the order of :data:`vmm.modes.MODES` (default: all of them)."""
    from ..modes import MODES

    names = _split(values) or list(MODES)
    for name in names:
        if name not in MODES:
            raise click.BadParameter(f"no mode {name!r}; choose from {', '.join(MODES)}", param_hint="--mode")
    return [m for m in MODES if m in names]


@click.command()
@click.option("-w", "--workload", "workloads", multiple=True, metavar="NAME[,NAME]",
              help="Workloads (repeatable, comma lists; a group name: adams-agesen, kvm-unit-tests, macro; "
                   "or all). Default: the default set.")
@click.option("-m", "--mode", "modes", multiple=True, metavar="MODE[,MODE]",
              help="Modes (repeatable, comma lists). Default: every mode.")
@click.option("-p", "--profile", default=None, metavar="NAME|FILE.toml",
              help="Cycle profile (vmm/cost/profiles/*.toml). Default: haswell-2013.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Write bench.json, bench.csv and bench.png into this directory.")
@click.option("-n", "--iterations", type=click.IntRange(1), default=None,
              help="N for every workload (runs with N and 2N iterations; default: per workload).")
@click.option("--compare-paper", is_flag=True, help="Print the model beside Adams & Agesen's published cycles.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Do not run: rebuild the report from a bench.json or a pytest-benchmark JSON file.")
@click.option("--list", "list_only", is_flag=True, help="List the workloads and cycle profiles, then exit.")
def bench(workloads, modes, profile, out, iterations, compare_paper, from_json, list_only):
    """Modeled overhead of each mode against native, per workload iteration.

    Every workload is a loop of the nanobench or macrobench guest, run with N and 2N
    iterations; the difference of the two runs' event counts (exits by reason, walk
    references, shadow faults, traps, callouts, hypercalls, guest instructions, events
    delivered) is one iteration. The cost model prices it on a cycle profile whose every
    number carries its source; overhead = the mode's cycles / native's.
    """
    from rich.console import Console

    from ..cost import report as rep
    from ..cost.profile import DEFAULT_PROFILE, ProfileError, list_profiles, load_profile

    # Piped or redirected output gets a table wide enough not to wrap (a terminal: its width).
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if list_only:
        from rich.table import Table

        from ..cost.workloads import DEFAULT_SET, WORKLOADS

        table = Table("workload", "group", "N", "default", "what one iteration does", box=None)
        for w in WORKLOADS:
            table.add_row(w.name, w.group, str(w.iterations), "yes" if w.name in DEFAULT_SET else "",
                          w.description + (f" [yellow](blocked: {w.blocked})[/]" if w.blocked else ""))
        console.print(table)
        console.print(f"cycle profiles: {', '.join(list_profiles())} (default {DEFAULT_PROFILE})")
        return
    from .common import check_writable_dir

    check_writable_dir(out, "-o")
    try:
        if from_json:
            report = rep.load_report(from_json, profile)
            if workloads or modes:
                report = rep.select(report, _split(workloads) and _workloads(workloads) or None,
                                    _split(modes) or None)
        else:
            prof = load_profile(profile or DEFAULT_PROFILE)
            names = _workloads(workloads)
            report = _run(console, names, _modes(modes), prof, iterations)
    except ProfileError as err:
        click.echo(f"vmm: error: {err}", err=True)
        sys.exit(2)
    except ValueError as err:
        click.echo(f"vmm: error: {err}", err=True)
        sys.exit(2)
    rep.print_report(report, console, compare_paper=compare_paper)
    if out:
        for path in rep.write_outputs(report, Path(out)):
            console.print(f"wrote {path}")


def _run(console, names, run_modes, prof, iterations):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..cost import report as rep

    # Overhead is relative to native: always measure it.
    measured = run_modes if "native" in run_modes else ["native"] + run_modes
    stderr = type(console)(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress:
        task = progress.add_task("booting workloads", total=len(names) * len(measured))

        def step(workload, mode):
            progress.update(task, advance=1, description=f"{workload} in {mode}")
        report = rep.run_bench(names, measured, prof, iterations=iterations, progress=step)
    report.modes = measured
    return report
