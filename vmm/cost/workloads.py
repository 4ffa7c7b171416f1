"""The benchmark workloads and how one is measured in one mode.

A workload is one loop of a built-in guest (``nanobench`` or ``macrobench``), picked by
the Multiboot command line (``"<test> <iterations>"``). It is measured the way
kvm-unit-tests measures a row, minus the clock: the guest runs twice, with N and with
2N iterations, and the difference of the two runs' :class:`~vmm.cost.counters.Counts`
divided by N is what exactly one iteration costs: boot, setup, first-touch faults, EPT
population and translation-cache warm-up appear in both runs and cancel.

A workload that cannot run in a mode says why (:attr:`Workload.blocked` for all modes,
:func:`cannot_run`); a run that does not end with the guest's own successful exit is an
error with the VM's stop message. Nothing is skipped silently.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .counters import Counts, RunObserver

RAM = 128 << 20
RUN_TIMEOUT = 60.0  # seconds of wall time per guest run; a stuck loop becomes an error


@dataclass(frozen=True)
class Workload:
    name: str
    guest: str
    group: str              # "adams-agesen", "kvm-unit-tests", "macro"
    iterations: int         # N of the N / 2N runs (kept small: runs count every instruction)
    description: str
    blocked: str | None = None   # why it cannot run anywhere today

    @property
    def test(self) -> str:
        return self.name


AA, KUT, MACRO = "adams-agesen", "kvm-unit-tests", "macro"
WORKLOADS: tuple[Workload, ...] = (
    Workload("syscall", "nanobench", AA, 200, "int 0x80 from ring 3 to the kernel and IRET back"),
    Workload("in", "nanobench", AA, 200, "IN from an emulated port (the UART's line status)"),
    Workload("cr8wr", "nanobench", AA, 200, "a task-priority write (local APIC TPR; 32-bit x86 has no CR8)"),
    Workload("callret", "nanobench", AA, 200, "a near CALL and RET"),
    Workload("pgfault", "nanobench", AA, 200, "a not-present page faulted in by the kernel, then unmapped"),
    Workload("divzero", "nanobench", AA, 200, "#DE from DIV by zero, handled and skipped"),
    Workload("ptemod", "nanobench", AA, 200, "a present PTE remapped, INVLPG, a load through it"),
    Workload("cpuid", "nanobench", KUT, 200, "CPUID leaf 0"),
    Workload("vmcall", "nanobench", KUT, 200, "VMCALL (#UD where no hypervisor takes it)"),
    Workload("inl", "nanobench", KUT, 200, "32-bit IN from COM1's registers"),
    Workload("outl", "nanobench", KUT, 200, "32-bit OUT to the POST port 0x80"),
    Workload("rdmsr", "nanobench", KUT, 200, "RDMSR IA32_PAT"),
    Workload("wrmsr", "nanobench", KUT, 200, "WRMSR IA32_PAT"),
    Workload("mov_dr", "nanobench", KUT, 200, "MOV to DR7"),
    Workload("toggle_cr0_wp", "nanobench", KUT, 200, "CR0.WP flipped and restored"),
    Workload("toggle_cr4_pge", "nanobench", KUT, 200, "CR4.PGE flipped and restored"),
    Workload("forkwait", "macrobench", MACRO, 10, "process creation and exit: new tables, CR3 switches, 16 COW faults"),
    Workload("compute", "macrobench", MACRO, 4, "a checksum over 4 KiB: no privileged operation"),
    Workload("iobound", "macrobench", MACRO, 20, "ten CMOS registers read (20 port accesses)"),
    Workload("tlbmiss", "macrobench", MACRO, 2, "2048 pages loaded once each, then a CR3 reload"),
)
BY_NAME = {w.name: w for w in WORKLOADS}
#: What `vmm bench` runs with no --workload: the papers' rows that run today and the
#: macro workloads, chosen to finish in well under a minute in every mode.
DEFAULT_SET = ("syscall", "in", "cr8wr", "callret", "pgfault", "divzero", "ptemod", "cpuid", "vmcall",
               "forkwait", "compute", "iobound", "tlbmiss")


class WorkloadError(RuntimeError):
    """A workload run that did not end with the guest's own successful exit."""


def get_workload(name: str) -> Workload:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no workload {name!r} (have: {', '.join(BY_NAME)})") from None


def cannot_run(workload: Workload, mode: str) -> str | None:
    """Why ``workload`` cannot run in ``mode`` (None: it can)."""
    from ..build.guests import FLAVOURS

    if workload.blocked:
        return workload.blocked
    if mode == "pv" and "pv" not in FLAVOURS:  # pragma: no cover - until the flavour lands
        return "the guests' pv flavour (guests/include/pvops.inc) is not written yet"
    return None


@dataclass
class Measurement:
    """One workload in one mode: counts per iteration and what the runs cost in wall time."""

    workload: str
    mode: str
    iterations: int
    per_iteration: Counts
    wall_seconds: float                  # both runs, with the counting hook
    runs: list[dict] = field(default_factory=list)   # per run: iterations, wall, instructions, exits

    def to_json(self) -> dict:
        return {"workload": self.workload, "mode": self.mode, "iterations": self.iterations,
                "per_iteration": self.per_iteration.to_json(), "wall_seconds": self.wall_seconds,
                "runs": self.runs}


def boot(workload: Workload, mode: str, iterations: int, *, observe: bool = True,
         timeout: float = RUN_TIMEOUT):
    """Build and boot the workload's guest for ``iterations``; returns (result, observer).

    The VM's serial output is kept (a failing run quotes it)."""
    from ..build.asm import AsmError
    from ..build.guests import build_guest
    from ..loader.image import LoadedImage, load_image
    from ..vm import VM

    flavour = "pv" if mode == "pv" else "native"
    try:
        built = build_guest(workload.guest, flavour)
    except AsmError as err:
        raise WorkloadError(f"{workload.name}: cannot build guest {workload.guest} ({flavour}): {err}") from None
    # The N and 2N runs must differ only in the loop: the count is written in ten digits
    # (the guest parses as many either way) and "quiet" leaves out the "name: N iterations"
    # line, whose length would add serial I/O to one of them.
    cmdline = f"{workload.test} {iterations:010d} quiet"
    if mode == "pv":  # a Xen PV kernel: ELF notes, start_info (vmm.loader.xen)
        from ..loader.xen import load_xen
        image: LoadedImage = load_xen(built.elf, ram_size=RAM, cmdline=cmdline)
    else:
        image = load_image(built.elf, ram_size=RAM, cmdline=cmdline, image_name=workload.guest)
    serial = bytearray()
    vm = VM(image, mode=mode, ram_size=RAM, serial_output=serial.extend, timeout=timeout)
    observer = RunObserver(vm) if observe else None
    result = vm.run()
    result.serial = bytes(serial)
    return result, observer


def check(result, workload: Workload, mode: str) -> None:
    from ..vm import StopKind

    if result.kind is not StopKind.EXIT or result.exit_status != 1:
        tail = result.serial.decode("latin-1").strip().splitlines()[-1:] if getattr(result, "serial", b"") else []
        raise WorkloadError(f"{workload.name} in {mode}: {result.kind.value}: "
                            f"{result.message.splitlines()[0]}"
                            + (f" (status {result.exit_status})" if result.exit_status is not None else "")
                            + (f"; guest said: {tail[0]}" if tail else ""))


def measure(workload: Workload | str, mode: str, iterations: int | None = None) -> Measurement:
    """Counts per iteration of ``workload`` in ``mode``: runs with N and 2N iterations."""
    if isinstance(workload, str):
        workload = get_workload(workload)
    reason = cannot_run(workload, mode)
    if reason:
        raise WorkloadError(f"{workload.name} cannot run in {mode}: {reason}")
    n = iterations or workload.iterations
    counts, runs = [], []
    started = time.perf_counter()
    for k in (n, 2 * n):
        result, observer = boot(workload, mode, k)
        check(result, workload, mode)
        c = observer.counts(result)
        counts.append(c)
        runs.append({"iterations": k, "wall_seconds": result.wall_seconds, "instructions": c.instructions,
                     "exits": c.total_exits})
    wall = time.perf_counter() - started
    return Measurement(workload.name, mode, n, (counts[1] - counts[0]).per_iteration(n), wall, runs)
