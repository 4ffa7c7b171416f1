"""What every fuzz harness shares: driving hypothesis, running one case in a VM under
budgets, and deciding whether the VMM held.

A case is plain data (a JSON-able dict drawn by a hypothesis strategy), so that a
finding can be written down and replayed. Each harness runs a case in every mode it
covers; each run ends in exactly one *outcome*:

* a :class:`~vmm.vm.StopKind` name (``EXIT``, ``TRIPLE_FAULT``, ``HALTED``, ``BUDGET``,
  ``TIMEOUT``, ``ERROR``, ``ENTRY_FAILED``, ...): the VMM stopped the guest cleanly and
  said why. That is success, whatever the guest did;
* a harness-specific clean outcome (``VMX_ERROR``, ``EPT_VIOLATION``, ...);
* a failure: ``CRASH`` (a Python exception escaped VM construction or ``VM.run``, or
  the VM stopped without a reason), ``HANG`` (the run overran its wall-clock budget by
  a margin, or the watchdog had to interrupt it), ``OOB`` (the guest reached memory
  outside its VM: see :class:`Containment`).

Failures become :class:`Finding` records holding the exception, the traceback and a
reproducer (harness, mode, seed, case index and the case itself).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ..cpu.engine import PAGE, PROT_WRITE, Fill
from ..modes.memory import is_unassigned_host
from ..vm import HOST_MEMORY_BASE, VM

FAILURES = ("CRASH", "HANG", "OOB")
CANARY_PAGES = 2
HANG_MARGIN = 3.0          # seconds a run may overrun its own timeout before it counts as a hang
WATCHDOG_GRACE = 10.0      # seconds past the budget after which the watchdog interrupts the run
MAX_KEPT_FINDINGS = 25     # per harness: every failure is counted, the first ones are kept in full


def canary_pattern(address: int) -> bytes:
    """A page of bytes no VMM would write by accident: the page's own address, repeated
    with a marker, so a copy of one canary into another would still show."""
    word = (address ^ 0xC0DEC0DE).to_bytes(4, "little") + b"CANA"
    return word * (PAGE // len(word))


class Containment:
    """Checks, around one run, that the guest stayed inside its VM.

    * Canary pages: ``CANARY_PAGES`` pages of VMM-private host memory (``vm.host_alloc``,
      the allocator the modes use for VMX bitmaps, shadow tables and EPT) and the page
      just past guest RAM, filled with a pattern before the run and compared after it.
      The page past RAM is mapped on purpose: without it an access there stops the run
      only because nothing happens to be mapped, which hides a VMM that would hand out
      that page; with it, such a VMM is caught writing it.
    * Every TLB fill the mode answers: a guest-linear page mapped *writable* onto a host
      page that is neither guest RAM nor a device page, and is backed by host memory, is
      an escape; so is any mapping of a canary page. A read-only mapping of other
      VMM-private memory is not: ``trap`` and ``pv`` put the VMM's descriptor tables in
      the top of every address space, read-only, as Xen does.
    * Mode state with a known copy: the VMX I/O and MSR bitmaps in host memory must still
      equal the VMM's own copies.
    """

    def __init__(self, vm: VM, guest_ranges: list[tuple[int, int]] | None = None):
        self.vm = vm
        eng = vm.engine
        self.guest_ranges = guest_ranges or [(0, vm.ram_size)]
        self.guest_ranges += [(base, base + length) for base, length, _ in vm.board.mmio_bus.regions()]
        self.canaries: list[int] = [vm.host_alloc(PAGE) for _ in range(CANARY_PAGES)]
        past_ram = (vm.ram_size + PAGE - 1) & ~(PAGE - 1)
        if not eng.read_raw(past_ram, 1):
            eng.map_ram(past_ram, PAGE)
            self.canaries.append(past_ram)
        for address in self.canaries:
            eng.write_phys(address, canary_pattern(address))
        self.escapes: list[str] = []
        self.bitmaps = self._bitmaps()
        self.shared_read_only: set[int] = set()
        vm.bus.subscribe("fill", self._observe)

    def _is_guest(self, page: int) -> bool:
        return any(lo <= page < hi for lo, hi in self.guest_ranges)

    def _observe(self, vaddr: int, access: str, answer) -> None:
        if not isinstance(answer, Fill) or self._is_guest(answer.host_page) or is_unassigned_host(answer.host_page):
            return      # (the unassigned device's pages hold nothing: reads 0, writes dropped)
        page = answer.host_page & ~(PAGE - 1)
        if not self.vm.engine.read_raw(page, 1):
            return      # nothing there: the engine stops the access (an ERROR stop, not an escape)
        if answer.perms & PROT_WRITE or page in self.canaries:
            if len(self.escapes) < 8:
                self.escapes.append(f"{access} of linear {vaddr:#010x} mapped onto host page {page:#010x}"
                                    f"{' writable' if answer.perms & PROT_WRITE else ''}, outside guest RAM and "
                                    f"devices{' (VMM-private memory)' if page >= HOST_MEMORY_BASE else ''}")
        else:
            # Read-only VMM pages in the guest's linear space are a design choice (trap and pv
            # map the VMM's area read-only, as Xen does): counted, not a failure.
            self.shared_read_only.add(page)

    def breaches(self) -> list[str]:
        out = list(self.escapes)
        eng = self.vm.engine
        for address in self.canaries:
            now = eng.read_raw(address, 1) and eng.read_phys(address, PAGE)
            expected = canary_pattern(address)
            if now != expected:
                first = next((i for i in range(PAGE) if now[i:i + 1] != expected[i:i + 1]), 0)
                where = "past guest RAM" if address < HOST_MEMORY_BASE else "VMM-private"
                out.append(f"{where} canary page {address:#010x} changed at {address + first:#010x}")
        for name, address, copy in self.bitmaps:
            if eng.read_phys(address, PAGE) != bytes(copy):
                out.append(f"{name} in host memory at {address:#010x} no longer matches the VMM's copy")
        return out

    def _bitmaps(self) -> list[tuple[str, int, bytearray]]:
        """The VMX bitmaps where the VMM put them (recorded before a case may VMWRITE other
        addresses into the VMCS), with the VMM's own copies."""
        mode = self.vm.mode
        vmcs = getattr(mode, "vmcs", None)
        if vmcs is None or not hasattr(mode, "cpu"):
            return []
        from ..vmx.vmcs import Field
        found = []
        bitmaps = mode.cpu.bitmaps
        for name, fld, copy in (("I/O bitmap A", Field.IO_BITMAP_A, bitmaps.io[0]),
                                ("I/O bitmap B", Field.IO_BITMAP_B, bitmaps.io[1]),
                                ("MSR bitmap", Field.MSR_BITMAP, bitmaps.msr)):
            address = vmcs.peek(fld)
            if address >= HOST_MEMORY_BASE and self.vm.engine.read_raw(address, 1):
                found.append((name, address, copy))
        return found

    def close(self) -> None:
        self.vm.bus.unsubscribe("fill", self._observe)


@dataclass
class Finding:
    """One failure, with what it takes to reproduce it."""

    harness: str
    kind: str          # CRASH, HANG or OOB
    mode: str
    detail: str        # exception type and message, or what changed
    reproducer: dict   # harness, mode, seed, index and the case
    traceback: str = ""


@dataclass
class HarnessReport:
    """Outcome counts of one harness: ``outcomes[kind]`` over every run, ``by_mode[(mode,
    kind)]``; ``cases`` generated inputs, ``runs`` executions (a case runs in every mode)."""

    harness: str
    modes: tuple[str, ...]
    seed: int
    cases: int = 0
    runs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    by_mode: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)   # side events a harness counts (e.g. VMWRITE errors)
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None   # why the harness did not run (e.g. its mode is not there yet)

    def record(self, mode: str, kind: str) -> None:
        self.outcomes[kind] += 1
        self.by_mode[(mode, kind)] += 1

    @property
    def crashes(self) -> int:
        return self.failures["CRASH"]

    @property
    def hangs(self) -> int:
        return self.failures["HANG"]

    @property
    def oob(self) -> int:
        return self.failures["OOB"]

    @property
    def ok(self) -> bool:
        return not sum(self.failures.values())


class Run:
    """The context a harness's ``execute`` gets for one (case, mode): it records the
    outcome, and turns failures into findings with the reproducer filled in."""

    def __init__(self, report: HarnessReport, mode: str, reproducer: dict):
        self.report = report
        self.mode = mode
        self.reproducer = reproducer
        self.kind: str | None = None

    def outcome(self, kind: str) -> None:
        """A clean outcome (a stop kind or a harness-specific one)."""
        if self.kind is None:
            self.kind = kind
            self.report.record(self.mode, kind)

    def fail(self, kind: str, detail: str, tb: str = "") -> None:
        report = self.report
        report.failures[kind] += 1
        if len(report.findings) < MAX_KEPT_FINDINGS:
            report.findings.append(Finding(report.harness, kind, self.mode, detail, dict(self.reproducer), tb))
        if self.kind is None:
            self.kind = kind
            report.record(self.mode, kind)

    def crash(self, exc: BaseException, where: str) -> None:
        self.fail("CRASH", f"{where}: {type(exc).__name__}: {exc}",
                  "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class WatchdogExpired(BaseException):
    """Raised into a run that overran its budget by far (a BaseException, so no handler
    in the VMM mistakes it for a guest problem; the engine re-raises it from ``run``)."""


@contextlib.contextmanager
def watchdog(seconds: float):
    """Interrupt the block after ``seconds`` of wall-clock time (main thread only: elsewhere
    the HANG check after the run still applies)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise WatchdogExpired(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_vm(run: Run, build: Callable[[], VM], *, prepare: Callable[[VM], None] | None = None,
           guest_ranges: Callable[[VM], list[tuple[int, int]]] | None = None,
           after: Callable[[VM, object], list[str]] | None = None):
    """Build a VM, arm the containment checks, run it once, classify what happened.

    ``prepare(vm)`` runs before launch (VMCS writes, EPT edits); exceptions it raises
    are the harness's to expect, so it should catch the ones that are clean outcomes.
    ``after(vm, result)`` may return more breaches (e.g. guest RAM the case must not
    change) or record failures itself. Returns the VM result, or None when the run failed.
    """
    try:
        vm = build()
    except Exception as exc:
        run.crash(exc, "VM construction")
        return None
    guard = Containment(vm, guest_ranges(vm) if guest_ranges else None)
    budget = vm.timeout or 5.0
    here = sys._getframe()
    result = None
    started = time.perf_counter()
    try:
        with watchdog(budget + WATCHDOG_GRACE):
            if prepare is not None:
                prepare(vm)
            if run.kind is None:           # else prepare already ended the case (its own run stopped)
                result = vm.run()
    except WatchdogExpired as exc:
        run.fail("HANG", f"watchdog: {exc} (budget {budget:g} s)")
    except Exception as exc:
        run.crash(exc, "VM.run")
    elapsed = time.perf_counter() - started
    if sys._getframe() is not here:
        # A longjmp inside the engine skipped Python frames (an exception QEMU raised under
        # a call the VMM made from a hook): the interpreter is damaged and would crash later.
        os.write(2, (f"vmm fuzz: CRASH: the interpreter's frame stack was corrupted by the run of "
                     f"{json.dumps(run.reproducer)}\n").encode())
        os._exit(70)
    if result is not None and elapsed > budget + HANG_MARGIN:
        run.fail("HANG", f"run took {elapsed:.1f} s with a {budget:g} s budget ({result.kind.name})")
    breaches = guard.breaches()
    if after is not None and result is not None:
        breaches += after(vm, result)
    guard.close()
    if breaches:
        run.fail("OOB", "; ".join(breaches))
    if result is not None:
        if not result.message:
            run.fail("CRASH", f"VM stopped ({result.kind.name}) without a reason")
        run.outcome(result.kind.name)
    return result


# -- driving hypothesis --------------------------------------------------------------------------

def fuzz_settings(cases: int) -> settings:
    """Reproducible and quiet: a fixed seed (given by the caller), no example database, no
    deadline, no shrinking (a harness records its failures instead of raising them)."""
    return settings(max_examples=cases, database=None, deadline=None, derandomize=False,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                    report_multiple_bugs=False)


def drive(strategy: st.SearchStrategy, cases: int, seed: int, each: Callable[[int, dict], None]) -> int:
    """Draw ``cases`` cases from ``strategy`` with ``seed`` and call ``each(index, case)``.
    Returns how many cases ran (hypothesis may stop early on a small search space)."""
    count = 0

    @fuzz_settings(cases)
    @hypothesis_seed(seed)
    @given(strategy)
    def one(case):
        nonlocal count
        each(count, case)
        count += 1

    one()
    return count


def fuzzable_modes() -> tuple[tuple[str, ...], dict[str, str]]:
    """The modes to fuzz, and those that cannot be (name -> why): every mode, none left out."""
    from ..modes import MODES

    return MODES, {}


class Harness:
    """A fuzz harness: ``strategy()`` draws cases, ``execute(run, case)`` runs one case in
    ``run.mode`` and records its outcome. ``modes`` filters the modes it applies to."""

    name = ""
    description = ""

    def modes(self, available: tuple[str, ...]) -> tuple[str, ...]:
        return available

    def unavailable(self, available: tuple[str, ...]) -> str | None:
        """Why the harness cannot run now (None when it can)."""
        return None if self.modes(available) else "none of its modes is available"

    def strategy(self) -> st.SearchStrategy:
        raise NotImplementedError

    def execute(self, run: Run, case: dict) -> None:
        raise NotImplementedError

    def run(self, cases: int, seed: int = 0, modes: tuple[str, ...] | None = None,
            progress: Callable[[int], None] | None = None, inflight: str | None = None) -> HarnessReport:
        """Run ``cases`` cases in every mode (of ``modes``, default: every available one).

        ``inflight``: a file that holds the reproducer of the run in progress, so that a
        crash no Python code survives (a segmentation fault in the engine) still leaves it.
        """
        available, _broken = fuzzable_modes()
        chosen = tuple(m for m in (modes or available) if m in available)
        report = HarnessReport(self.name, self.modes(chosen), seed)
        report.skipped = self.unavailable(chosen)
        if report.skipped:
            return report
        started = time.perf_counter()

        def each(index: int, case: dict) -> None:
            for mode in report.modes:
                run = Run(report, mode, {"harness": self.name, "mode": mode, "seed": seed, "index": index,
                                         "case": case})
                if inflight is not None:
                    with open(inflight, "w") as f:
                        json.dump({"harness": self.name, "kind": "in flight", "reproducer": run.reproducer}, f)
                try:
                    self.execute(run, case)
                except Exception as exc:   # the harness itself must not hide a failure
                    run.crash(exc, "harness")
                if run.kind is None:
                    run.fail("CRASH", "the harness recorded no outcome")
                report.runs += 1
            if progress is not None:
                progress(1)

        report.cases = drive(self.strategy(), cases, seed, each)
        report.seconds = time.perf_counter() - started
        return report


def save_findings(reports: list[HarnessReport], directory: str) -> list[str]:
    """Write every kept finding as ``HARNESS-KIND-N.json`` (replay with :func:`replay`)."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for report in reports:
        for n, finding in enumerate(report.findings):
            path = os.path.join(directory, f"{report.harness}-{finding.kind.lower()}-{n}.json")
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(asdict(finding), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
            written.append(path)
    return written


def replay(reproducer: dict) -> HarnessReport:
    """Run one recorded case again in its mode (a reproducer, or a saved finding's dict)."""
    from . import HARNESSES

    reproducer = reproducer.get("reproducer", reproducer)
    harness = HARNESSES[reproducer["harness"]]
    report = HarnessReport(harness.name, (reproducer["mode"],), reproducer.get("seed", 0))
    run = Run(report, reproducer["mode"], reproducer)
    try:
        harness.execute(run, reproducer["case"])
    except Exception as exc:
        run.crash(exc, "harness")
    report.cases = report.runs = 1
    return report
