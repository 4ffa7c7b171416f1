#!/usr/bin/env python3
"""Run an external test suite's built images under QEMU TCG and under vmm, side by side.

Give it a directory of already-built images (``*.flat`` by default: Multiboot kernels
that report through the serial port and leave through isa-debug-exit, the convention of
the common x86 unit-test suites). Each image runs once under QEMU on the test-device board
(pc-testdev, pci-testdev, isa-debug-exit) and once per chosen vmm mode on vmm's same board
(``--device pci-testdev``); each run becomes one verdict:

  PASS     exit status 1: the test wrote 0 to isa-debug-exit
  SKIP     exit status 77: the test wrote 38 (its "all skipped" code)
  TIMEOUT  still running after --timeout seconds
  FAIL     anything else: another exit status, or vmm stopped the guest (triple fault,
           HLT with nothing to wake it, an unsupported operation), which it names

next to the last ``SUMMARY:`` line the test printed, e.g. ``PASS (12 tests, 1 skipped)``.

The tool neither fetches nor builds anything. Each image runs on the plain board above,
with no per-test options from the suite's own configuration (extra -cpu flags, command
lines); tests that need those show up as FAIL or SKIP under QEMU too.

Exit status: 0 when every vmm verdict equals QEMU's for the same test (without QEMU:
when every run passed or skipped), 1 otherwise, 2 for bad arguments.

Examples:
  tools/suite_runner.py BUILD/x86 --modes native,bt --timeout 60
  tools/suite_runner.py BUILD/x86 --arch x86_64 --modes native,vtx-ept --jobs 2 \\
      --only 'msr*' --markdown results.md --json results.json
"""
from __future__ import annotations

import argparse
import enum
import fnmatch
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.machines import (  # the shared QEMU/vmm command lines
    Run,
    format_table,
    markdown_table,
    modes_or_usage_error,
    qemu_binary,
    run_qemu,
    run_vmm,
)

#: Process exit status after the guest writes ``value`` to isa-debug-exit: (value << 1) | 1.
STATUS_PASS = 1
STATUS_SKIP = 77
SUMMARY_PREFIX = "SUMMARY:"
#: A test's summary is among its last few lines (the suites print it just before exiting).
SUMMARY_TAIL_LINES = 5
QEMU_COLUMN = "qemu"
#: Characters of a failing run's last output line kept as its summary, and of a summary in the table.
LAST_LINE = 120
CELL_SUMMARY = 72


class Verdict(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    TIMEOUT = "TIMEOUT"


@dataclass(frozen=True)
class Result:
    """One test under one machine (QEMU or a vmm mode)."""

    verdict: Verdict
    summary: str        # the test's SUMMARY text, or why there is none
    status: int | None
    seconds: float

    def cell(self) -> str:
        """The table's text: the verdict and the summary, cut to :data:`CELL_SUMMARY` characters
        (the JSON keeps it whole)."""
        if not self.summary:
            return self.verdict.value
        summary = self.summary if len(self.summary) <= CELL_SUMMARY else self.summary[:CELL_SUMMARY - 3] + "..."
        return f"{self.verdict.value} ({summary})"

    def as_json(self) -> dict:
        return {"verdict": self.verdict.value, "summary": self.summary, "status": self.status,
                "seconds": round(self.seconds, 3)}


def find_summary(output: bytes) -> str | None:
    """The text after ``SUMMARY:`` in the last lines of ``output``, or None."""
    lines = output.decode(errors="replace").replace("\r", "").splitlines()
    for line in reversed(lines[-SUMMARY_TAIL_LINES:]):
        if line.startswith(SUMMARY_PREFIX):
            return line[len(SUMMARY_PREFIX):].strip()
    return None


def classify(run: Run, *, vmm: bool) -> Result:
    """A run's verdict from its exit status, its SUMMARY line and (for vmm) its stop reason."""
    summary = find_summary(run.stdout)
    stop = run.vmm_stop() if vmm else None
    timed_out = run.vmm_timed_out if vmm else run.timed_out
    if timed_out:
        return Result(Verdict.TIMEOUT, summary or "", run.status, run.seconds)
    if stop is not None:
        return Result(Verdict.FAIL, f"{summary}; {stop}" if summary else stop, run.status, run.seconds)
    if run.status == STATUS_PASS:
        verdict = Verdict.PASS
    elif run.status == STATUS_SKIP:
        verdict = Verdict.SKIP
    else:
        verdict = Verdict.FAIL
    if summary is None:
        summary = f"no SUMMARY, exit status {run.status}"
        if verdict is Verdict.FAIL:
            last = _last_line(run.stderr) or _last_line(run.stdout)
            summary += f": {last}" if last else ""
    return Result(verdict, summary, run.status, run.seconds)


def _last_line(data: bytes) -> str:
    """The last non-blank line, printable characters only (a crashing test may print garbage)."""
    text = "".join(c if c.isascii() and (c.isprintable() or c.isspace()) else "?"
                   for c in data.decode("ascii", errors="replace"))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:LAST_LINE] if lines else ""


def run_test(image: Path, columns: list[str], *, arch: str, timeout: float) -> dict[str, Result]:
    """Every column's result for one image, in column order."""
    results = {}
    for column in columns:
        if column == QEMU_COLUMN:
            run = run_qemu(str(image), arch=arch, timeout=timeout, testdev=True)
        else:
            run = run_vmm(str(image), column, timeout=timeout, testdev=True)
        results[column] = classify(run, vmm=column != QEMU_COLUMN)
    return results


def disagreements(table: dict[str, dict[str, Result]], modes: list[str]) -> list[str]:
    """``test/mode`` for every vmm verdict that differs from QEMU's (or, with no QEMU
    column, that is neither PASS nor SKIP)."""
    bad = []
    for test, results in table.items():
        for mode in modes:
            verdict = results[mode].verdict
            if QEMU_COLUMN in results:
                if verdict is not results[QEMU_COLUMN].verdict:
                    bad.append(f"{test}/{mode}")
            elif verdict not in (Verdict.PASS, Verdict.SKIP):
                bad.append(f"{test}/{mode}")
    return bad


def totals(table: dict[str, dict[str, Result]], columns: list[str]) -> list[str]:
    """The last row: ``3 PASS, 1 FAIL`` per column."""
    row = []
    for column in columns:
        counts = {v: sum(1 for r in table.values() if r[column].verdict is v) for v in Verdict}
        row.append(", ".join(f"{n} {v.value}" for v, n in counts.items() if n))
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="suite_runner.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="a directory of built test images")
    parser.add_argument("--modes", default="native",
                        help="comma-separated vmm modes, or 'all' (default: native)")
    parser.add_argument("--arch", choices=("i386", "x86_64"), default="i386",
                        help="which qemu-system-* runs the images (default: i386)")
    parser.add_argument("--no-qemu", action="store_true", help="run the vmm modes only")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="per-run wall-clock limit in seconds (default: 60)")
    parser.add_argument("--pattern", default="*.flat", help="which files are tests (default: *.flat)")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="run only tests whose name (without suffix) matches; repeatable")
    parser.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                        help="tests run at once (default: 1; each test's runs stay in sequence)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table as Markdown")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = modes_or_usage_error("suite_runner", args.modes)
    if modes is None:
        return 2
    if not args.directory.is_dir():
        print(f"suite_runner: {args.directory} is not a directory", file=sys.stderr)
        return 2
    images = sorted(p for p in args.directory.glob(args.pattern) if p.is_file()
                    and (not args.only or any(fnmatch.fnmatch(p.stem, g) for g in args.only)))
    if not images:
        print(f"suite_runner: no {args.pattern} files in {args.directory}", file=sys.stderr)
        return 2
    use_qemu = not args.no_qemu
    if use_qemu and qemu_binary(args.arch) is None:
        print(f"suite_runner: qemu-system-{args.arch} is not on PATH (or pass --no-qemu)", file=sys.stderr)
        return 2
    columns = ([QEMU_COLUMN] if use_qemu else []) + modes

    def one(image: Path) -> tuple[str, dict[str, Result]]:
        results = run_test(image, columns, arch=args.arch, timeout=args.timeout)
        print(f"{image.stem}: " + ", ".join(f"{c} {r.verdict.value}" for c, r in results.items()),
              file=sys.stderr, flush=True)
        return image.stem, results

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        table = dict(pool.map(one, images))

    header = ["test", *columns]
    rows = [[test, *(results[c].cell() for c in columns)] for test, results in table.items()]
    rows.append(["total", *totals(table, columns)])
    print(format_table(header, rows))
    if args.markdown:
        args.markdown.write_text(markdown_table(header, rows) + "\n")
    if args.json:
        args.json.write_text(json.dumps(
            {"directory": str(args.directory), "arch": args.arch, "timeout": args.timeout,
             "columns": columns,
             "tests": {t: {c: r.as_json() for c, r in res.items()} for t, res in table.items()}},
            indent=2) + "\n")
    bad = disagreements(table, modes)
    if bad:
        print(f"suite_runner: {len(bad)} run(s) differ: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
