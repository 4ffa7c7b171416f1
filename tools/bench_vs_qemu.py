#!/usr/bin/env python3
"""Whole-process wall time of the same images under vmm and under QEMU, side by side.

Each IMAGE_OR_GUEST (an image file or a built-in guest, built once with ``vmm build``) boots N
times under QEMU on the reference board and N times under each chosen ``vmm run --mode``,
interleaved (QEMU, mode 1, mode 2, ..., then again) so that a machine busy with something
else slows every column alike. A time is the whole process, start to exit: for vmm that
includes starting Python and building the VM, as a user running it sees it, for QEMU its
start-up and its TCG translation.

The table gives each machine's median and minimum over the N runs, and the ratio of the
medians vmm/QEMU (below 1: vmm finished first). A run whose exit status differs from
QEMU's, or that vmm stopped (a triple fault, its own timeout), is flagged: its time is
not comparable.

This measures the tool against a reference emulator; ``vmm bench`` models what each
mode would cost on hardware, which is a different question.

Examples:
  tools/bench_vs_qemu.py hello -n 5
  tools/bench_vs_qemu.py nanobench macrobench --modes native,bt,vtx-ept -n 3 --json times.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.machines import (  # the shared QEMU/vmm command lines
    Run,
    build_guest_image,
    choose_arch,
    format_table,
    parse_modes,
    run_qemu,
    run_vmm,
)

QEMU_COLUMN = "qemu"


def measure(image: str, modes: list[str], *, repetitions: int, timeout: float,
            arch: str = "auto") -> dict[str, list[Run]]:
    """Every machine's runs of ``image``, interleaved round by round."""
    arch = choose_arch(image, arch)
    runs: dict[str, list[Run]] = {QEMU_COLUMN: [], **{m: [] for m in modes}}
    for _ in range(repetitions):
        runs[QEMU_COLUMN].append(run_qemu(image, arch=arch, timeout=timeout))
        for mode in modes:
            runs[mode].append(run_vmm(image, mode, timeout=timeout))
    return runs


def summarize(target: str, runs: dict[str, list[Run]]) -> list[dict]:
    """One record per machine: median, minimum, ratio to QEMU, status agreement."""
    reference = statistics.median(r.seconds for r in runs[QEMU_COLUMN])
    reference_status = runs[QEMU_COLUMN][0].status
    records = []
    for machine, machine_runs in runs.items():
        median = statistics.median(r.seconds for r in machine_runs)
        statuses = sorted({r.status for r in machine_runs}, key=str)
        stops = sorted({stop for r in machine_runs if machine != QEMU_COLUMN and (stop := r.vmm_stop())})
        records.append({"target": target, "machine": machine, "runs": len(machine_runs),
                        "median_seconds": round(median, 4),
                        "min_seconds": round(min(r.seconds for r in machine_runs), 4),
                        "ratio_to_qemu": round(median / reference, 3) if reference else None,
                        "statuses": statuses, "vmm_stops": stops,
                        "status_matches_qemu": statuses == [reference_status] and not stops})
    return records


def table_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        ratio = "" if r["machine"] == QEMU_COLUMN or r["ratio_to_qemu"] is None else f"{r['ratio_to_qemu']:.2f}x"
        status = ",".join("timeout" if s is None else str(s) for s in r["statuses"])
        if r["vmm_stops"]:
            status += f"  (vmm: {'; '.join(r['vmm_stops'])})"
        if not r["status_matches_qemu"]:
            status += "  (differs from QEMU)"
        rows.append([r["target"], r["machine"], str(r["runs"]), f"{r['median_seconds']:.3f}",
                     f"{r['min_seconds']:.3f}", ratio, status])
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_vs_qemu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="IMAGE_OR_GUEST",
                        help="image files or built-in guest names (see: vmm guests)")
    parser.add_argument("--modes", default="native",
                        help="comma-separated vmm modes, or 'all' (default: native)")
    parser.add_argument("-n", "--repetitions", type=int, default=5, metavar="N",
                        help="runs per machine (default: 5)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="per-run wall-clock limit in seconds (default: 60)")
    parser.add_argument("--arch", choices=("auto", "i386", "x86_64"), default="auto",
                        help="which qemu-system-* boots the images (default: auto, x86_64 for a 64-bit ELF)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the records as JSON")
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        modes = parse_modes(args.modes)
        if "pv" in modes:
            raise ValueError("pv boots a different image (the pv flavour) than QEMU can: not comparable")
    except ValueError as err:
        print(f"bench_vs_qemu: {err}", file=sys.stderr)
        return 2
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_qemu-") as tmp:
        for target in args.targets:
            image = Path(target)
            try:
                if not image.is_file():
                    image = Path(tmp, f"{target}.elf")
                    build_guest_image(target, image)
                runs = measure(str(image), modes, repetitions=args.repetitions, timeout=args.timeout,
                               arch=args.arch)
            except ValueError as err:
                print(f"bench_vs_qemu: {target}: {err}", file=sys.stderr)
                return 2
            records += summarize(target, runs)
    print(format_table(["target", "machine", "runs", "median s", "min s", "vmm/QEMU", "exit status"],
                       table_rows(records)))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
