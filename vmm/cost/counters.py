"""Event counts of one run, in the shape the cost model reads.

Most counts come straight from the :class:`~vmm.vm.VmResult`: exits by reason, the
mode's memory counters (shadow faults, 2-D walk references, TLB flushes, EPT
violations) and its own events (traps, callouts, translated blocks, hypercalls). Three
things a result does not carry are observed on the VM's event bus while it runs
(:class:`RunObserver`):

* guest instructions, exactly: a counting code hook. ``VmResult.instructions`` is exact
  only for counted runs, and even then a slice cut short by an event is charged in
  full; the model multiplies instructions by a CPI, so it needs the true count. (A
  faulting instruction that is restarted is counted at each attempt, as it is fetched.)
* events delivered into the guest through its IDT (exceptions, software interrupts,
  external interrupts), by kind: the bus's ``inject`` topic, where every mode delivers one;
* device accesses that reach the board without an exit (MMIO under native or shadow
  paging), and, in modes that walk the guest's own tables in hardware without
  reporting it (``native``), the page-walk references made inside TLB fills.

:class:`Counts` supports subtraction and scaling, so a benchmark can run a workload
with N and 2N iterations and keep exactly what one iteration costs (setup, boot and
warm-up cancel out).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..cpu.engine import TRAMPOLINE_LINEAR

# Memory-counter names of the modes (vmm/modes/*.py memory_counters()).
WALK_REFERENCES = "walk references"                      # vtx-ept: every 2-D walk read
SHADOW_REFERENCES = "shadow-table references"            # shadow paging: the hardware walks the shadow
HIDDEN_FAULTS = "hidden page faults (shadow filled)"
TRUE_FAULTS = ("true page faults (injected)", "true page faults (delivered)")  # vtx; trap and bt
PTE_WRITES = "guest page-table writes intercepted"
ENTRY_FLUSHES = "TLB flushes on VM entry"
TLB_FILLS = ("TLB fills (guest walks)", "TLB misses (2-D walks)")


@dataclass
class Counts:
    """Every modeled event of one run (or of one iteration, after :meth:`per_iteration`)."""

    instructions: float = 0
    exits: Counter = field(default_factory=Counter)        # exit reason name -> n
    events: dict = field(default_factory=dict)             # category -> Counter(name -> n)
    memory: Counter = field(default_factory=Counter)       # the mode's memory counters
    injected: Counter = field(default_factory=Counter)     # "exception" / "software" / "external" -> n
    device: Counter = field(default_factory=Counter)       # "port" / "mmio" -> n (accesses the guest made)
    walk_references: Counter = field(default_factory=Counter)  # "guest" / "shadow" / "2-D" -> n

    # -- arithmetic: (2N run) - (N run), then / N --------------------------------------------
    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.instructions - other.instructions,
            _sub(self.exits, other.exits),
            {c: _sub(self.events.get(c, Counter()), other.events.get(c, Counter()))
             for c in set(self.events) | set(other.events)},
            _sub(self.memory, other.memory),
            _sub(self.injected, other.injected),
            _sub(self.device, other.device),
            _sub(self.walk_references, other.walk_references))

    def scaled(self, factor: float) -> Counts:
        def s(c: Counter) -> Counter:
            return Counter({k: v * factor for k, v in c.items()})
        return Counts(self.instructions * factor, s(self.exits),
                      {c: s(v) for c, v in self.events.items()}, s(self.memory),
                      s(self.injected), s(self.device), s(self.walk_references))

    def per_iteration(self, iterations: int) -> Counts:
        return self.scaled(1.0 / iterations)

    # -- derived totals the report shows --------------------------------------------------------
    @property
    def total_exits(self) -> float:
        return sum(self.exits.values())

    @property
    def tlb_fills(self) -> float:
        return sum(self.memory.get(name, 0) for name in TLB_FILLS)

    def to_json(self) -> dict:
        return {
            "instructions": self.instructions,
            "exits": dict(self.exits),
            "events": {c: dict(v) for c, v in self.events.items() if v},
            "memory": dict(self.memory),
            "injected": dict(self.injected),
            "device": dict(self.device),
            "walk_references": dict(self.walk_references),
        }

    @classmethod
    def from_json(cls, data: dict) -> Counts:
        return cls(data.get("instructions", 0), Counter(data.get("exits", {})),
                   {c: Counter(v) for c, v in data.get("events", {}).items()},
                   Counter(data.get("memory", {})), Counter(data.get("injected", {})),
                   Counter(data.get("device", {})), Counter(data.get("walk_references", {})))


def _sub(a: Counter, b: Counter) -> Counter:
    """a - b keeping zeros and negatives out (a 2N run never counts less than an N run;
    a negative difference would be noise and is dropped, not hidden in a total)."""
    out: Counter[str] = Counter()
    for key in set(a) | set(b):
        value = a.get(key, 0) - b.get(key, 0)
        if value > 0:
            out[key] = value
    return out


class RunObserver:
    """Counts, on a live VM, what a :class:`~vmm.vm.VmResult` does not carry, as a
    subscriber of the VM's event bus (:mod:`vmm.bus`).

    Attach before ``vm.run()``. Counting instructions costs one call per guest
    instruction (the engine's counting hook): runs are a few times slower, which is why
    benchmarks keep N small.
    """

    def __init__(self, vm, *, count_instructions: bool = True):
        self.vm = vm
        self.instructions = 0
        self.injected: Counter = Counter()
        self.device: Counter = Counter()
        self.native_walk_references = 0
        if count_instructions:
            self._hook_instructions()
        bus = vm.bus
        bus.subscribe("inject", self._injected)
        bus.subscribe("mmio", self._mmio)
        # Modes that walk the guest's own tables on a TLB miss and report no walk
        # references (native, pv) publish each hardware walk: the walker's reads inside
        # fills, not the VMM's own lookups (event delivery, decoding).
        bus.subscribe("walk", self._walked)

    def _hook_instructions(self) -> None:
        trampoline = TRAMPOLINE_LINEAR
        box = [0]

        def thunk(handle, address, size, data):
            # The VMM's own IRET trampoline (entering rings 1-3) is not guest code.
            if address & ~0xFFF != trampoline:
                box[0] += 1
        self._box = box
        self.vm.bus.on_instruction(raw=thunk)

    def _injected(self, event) -> None:
        self.injected[event.kind] += 1

    def _mmio(self, address: int, size: int, value) -> None:
        self.device["mmio"] += 1

    def _walked(self, vaddr: int, references: int) -> None:
        self.native_walk_references += references

    @property
    def instruction_count(self) -> int:
        return self._box[0] if hasattr(self, "_box") else 0

    def counts(self, result) -> Counts:
        """The run's :class:`Counts`: the result's counters plus what was observed."""
        exits = Counter({reason.name: n for reason, n in result.exits.items() if n})
        memory = Counter({name.strip(): value for name, value in result.memory.items()
                          if isinstance(value, (int, float))})
        events = {c: Counter(v) for c, v in result.events.items()}
        device = Counter(self.device)
        device["port"] = _port_accesses(self.vm)
        refs: Counter[str] = Counter()
        if WALK_REFERENCES in memory:
            refs["2-D"] = memory[WALK_REFERENCES]
        elif SHADOW_REFERENCES in memory:
            refs["shadow"] = memory[SHADOW_REFERENCES]
        else:
            refs["guest"] = self.native_walk_references
        return Counts(self.instruction_count, exits, events, memory, Counter(self.injected), device, refs)


def _port_accesses(vm) -> int:
    """Port accesses that reached the board (handled by a device or undecoded)."""
    bus = vm.board.port_bus
    return sum(bus.accesses.values()) + sum(bus.unknown.values())
