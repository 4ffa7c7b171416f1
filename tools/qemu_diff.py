#!/usr/bin/env python3
"""Differential run: one image under QEMU and under vmm modes, transcripts and exit statuses compared.

Each IMAGE_OR_GUEST is a Multiboot image file or the name of a built-in guest (built with
``vmm build``; under ``--mode pv`` its pv flavour, which QEMU cannot boot, so QEMU always
runs the native one). QEMU runs it on the reference board, the one the golden transcripts
were recorded on:

  qemu-system-i386 -kernel IMAGE -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x4
                   -display none -no-reboot -nodefaults

(qemu-system-x86_64 for a 64-bit ELF). Every chosen mode runs ``vmm run IMAGE --mode M``.
A row matches when the serial bytes and the exit status are both QEMU's; with
``--status-only`` only the status is compared. That is always so for the built-in guests
that print the CPU's own answers (``exits``: CPUID leaves differ by design). A triple
fault is the same outcome in both, though the statuses differ (QEMU exits 0 under
``-no-reboot``, vmm 1). The default modes are those that show the guest QEMU's machine;
``trap`` (the kernel runs at CPL 1) and ``pv`` (booted through the PV protocol) differ
visibly, by design.

The table has one row per target and mode: exit status, transcript length, whether it
matches, and for a difference the first line where the transcripts part.

Exit status: 0 when every row matches, 1 when one differs, 2 for bad arguments or a
target that cannot be built.

Examples:
  tools/qemu_diff.py hello
  tools/qemu_diff.py --all-guests --modes native,bt,vtx-ept
  tools/qemu_diff.py exits --status-only --modes all
  tools/qemu_diff.py build/kernel.elf --timeout 30
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.machines import (  # the shared QEMU/vmm command lines
    STATUS_ONLY_GUESTS,
    Run,
    build_guest_image,
    choose_arch,
    format_table,
    modes_or_usage_error,
    run_qemu,
    run_vmm,
)

#: The modes that show the guest the machine QEMU shows it. ``trap`` runs the kernel at CPL 1
#: and ``pv`` boots it through the PV protocol: both are visible to the guest by design.
DEFAULT_MODES = "native,bt,vtx,vtx-ept"
#: QEMU's exit status when the guest shuts down or resets without isa-debug-exit (``-no-reboot``).
QEMU_SHUTDOWN_STATUS = 0
#: How vmm names the same event on stderr.
VMM_TRIPLE_FAULT = "triple fault"
#: How much of a differing line the table shows.
SNIPPET = 48


@dataclass(frozen=True)
class Row:
    """One target under one machine, judged against QEMU's run of the same target."""

    target: str
    machine: str
    run: Run
    verdict: str        # "reference", "match", "DIFF"
    detail: str

    def cells(self) -> list[str]:
        status = "timeout" if self.run.timed_out else str(self.run.status)
        return [self.target, self.machine, status, f"{len(self.run.stdout)} B", self.verdict, self.detail]


def first_difference(expected: bytes, actual: bytes) -> str:
    """Where two transcripts part: ``line N: QEMU '...' vs vmm '...'`` (empty if equal)."""
    if expected == actual:
        return ""
    want, got = expected.split(b"\n"), actual.split(b"\n")
    for number, (a, b) in enumerate(zip(want, got, strict=False), start=1):
        if a != b:
            return f"line {number}: QEMU {_show(a)} vs vmm {_show(b)}"
    shorter = "vmm" if len(got) < len(want) else "QEMU"
    return f"{shorter}'s transcript ends after line {min(len(want), len(got))}"


def _show(line: bytes) -> str:
    text = line.decode("latin-1")
    return repr(text if len(text) <= SNIPPET else text[:SNIPPET] + "...")


def judge(target: str, mode: str, reference: Run, run: Run, *, status_only: bool) -> Row:
    """A vmm run against QEMU's: the status always, the transcript unless ``status_only``."""
    problems, notes = [], []
    stop = run.vmm_stop()
    if both_shut_down(reference, run):
        notes.append("both stopped by a triple fault")
    elif stop is not None:
        # vmm exits 1 when it stops a guest, the status of a guest that passed: never a match.
        problems.append(f"vmm stopped it: {stop}")
    elif run.status != reference.status:
        problems.append(f"status {run.status} vs QEMU {reference.status}")
    if not status_only:
        where = first_difference(reference.stdout, run.stdout)
        if where:
            problems.append(where)
    return Row(target, mode, run, "DIFF" if problems else "match", "; ".join(problems or notes))


def both_shut_down(reference: Run, run: Run) -> bool:
    """A triple fault in both: QEMU, under ``-no-reboot``, exits 0 instead of resetting;
    vmm stops the guest and exits 1, naming the triple fault."""
    stop = run.vmm_stop() or ""
    return reference.status == QEMU_SHUTDOWN_STATUS and stop.startswith(VMM_TRIPLE_FAULT)


def prepare(target: str, workdir: Path, *, need_pv: bool) -> tuple[Path, Path | None]:
    """(native image, pv image or None) for a file or a built-in guest name."""
    path = Path(target)
    if path.is_file():
        return path, None
    native = workdir / f"{target}.elf"
    build_guest_image(target, native)
    pv = None
    if need_pv:
        pv = workdir / f"{target}-pv.elf"
        build_guest_image(target, pv, flavour="pv")
    return native, pv


def diff_target(target: str, modes: list[str], workdir: Path, *, timeout: float,
                status_only: bool, arch: str = "auto") -> list[Row]:
    """QEMU's row and one row per mode for ``target``."""
    native, pv = prepare(target, workdir, need_pv="pv" in modes)
    builtin = not Path(target).is_file()
    status_only = status_only or (builtin and target in STATUS_ONLY_GUESTS)
    arch = choose_arch(native, arch)
    reference = run_qemu(str(native), arch=arch, timeout=timeout)
    note = "did not exit in time" if reference.timed_out else ""
    if status_only and target in STATUS_ONLY_GUESTS:
        note = f"status only: {STATUS_ONLY_GUESTS[target]}"
    rows = [Row(target, f"qemu-system-{arch}", reference, "reference", note)]
    for mode in modes:
        image = pv if mode == "pv" and pv is not None else native
        rows.append(judge(target, mode, reference, run_vmm(str(image), mode, timeout=timeout),
                          status_only=status_only))
    return rows


def builtin_guests() -> list[str]:
    """The catalog's names (imported from this checkout's vmm)."""
    from vmm.build.guests import list_guests
    return [g.name for g in list_guests()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qemu_diff.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="IMAGE_OR_GUEST",
                        help="image files or built-in guest names (see: vmm guests)")
    parser.add_argument("--all-guests", action="store_true", help="every built-in guest")
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help=f"comma-separated vmm modes, or 'all' (default: {DEFAULT_MODES})")
    parser.add_argument("--status-only", action="store_true",
                        help="compare exit statuses only, not transcripts")
    parser.add_argument("--arch", choices=("auto", "i386", "x86_64"), default="auto",
                        help="which qemu-system-* boots the image (default: auto, x86_64 for a 64-bit ELF)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="per-run wall-clock limit in seconds (default: 30)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = modes_or_usage_error("qemu_diff", args.modes)
    if modes is None:
        return 2
    targets = list(args.targets) + (builtin_guests() if args.all_guests else [])
    if not targets:
        print("qemu_diff: name an image or a built-in guest (or --all-guests); see --help", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qemu_diff-") as tmp:
        for target in targets:
            try:
                rows += diff_target(target, modes, Path(tmp), timeout=args.timeout,
                                    status_only=args.status_only, arch=args.arch)
            except ValueError as err:
                print(f"qemu_diff: {target}: {err}", file=sys.stderr)
                return 2
    print(format_table(["target", "machine", "status", "output", "verdict", "first difference"],
                       [r.cells() for r in rows]))
    differing = [f"{r.target}/{r.machine}" for r in rows if r.verdict == "DIFF"]
    if differing:
        print(f"qemu_diff: {len(differing)} run(s) differ from QEMU: {', '.join(differing)}", file=sys.stderr)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
