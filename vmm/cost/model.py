"""The cost model: event counts x a cycle profile = modeled cycles, per category.

Wall time in an emulator says little about hardware (an emulated instruction costs
hundreds of host cycles, an emulated VM exit far fewer than a real one), so each run is also
priced on a real machine's published costs. The rules, one per kind of event:

* every mode pays what the bare machine pays for the same guest work: guest
  instructions at a base CPI, events delivered through the guest's IDT, paging-
  structure reads of the hardware walker (1-D in ``native`` and ``pv``, the shadow
  tables under shadow paging, 2-D under EPT), and device-page accesses that reach the
  board without leaving the guest;
* ``native``: a port access is a bus access (``native.port_io``); its exceptions and
  interrupts are counted once, as deliveries; HLT is idle time, not work;
* VT-x modes (``vtx``, ``vtx-ept``): each VM exit is a round trip (``vmm.vmx_round_trip``)
  plus the hypervisor's handler for its reason (``handler.<REASON>``); #PF exits of
  shadow paging are split by what they were (hidden fault: ``shadow.fill``; guest
  fault reflected: ``shadow.true_fault``; write to a guest page table:
  ``shadow.pte_write`` on top of its fill); without VPID each entry flushes the TLB;
* software VMMs (``trap``, ``bt``, ``pv``): each fault or interrupt dispatched through
  the exit table, and each hidden shadow fault (handled inside the MMU, with no
  dispatch), is a trap into the VMM (``vmm.software_trap``), with the same shadow-
  paging handler costs; each of the mode's own events (traps, callouts, hypercalls,
  translated blocks, PV emulation and bounce frames) costs
  ``events.<category>.<name>``. Port I/O is priced by the mode's own trap or callout
  event (the IO_INSTRUCTION dispatch behind it is the same event), a hypercall by
  its hypercall event (a hypercall is counted once, as that event), HLT is idle.

Anything counted that the rules do not price is listed in :attr:`Breakdown.unmodeled`
and shown by the reports: nothing is dropped silently.

The overhead of a mode is its modeled cycles over ``native``'s for the same workload.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .counters import ENTRY_FLUSHES, HIDDEN_FAULTS, PTE_WRITES, TRUE_FAULTS, Counts
from .profile import Cost, Profile

FAMILY = {"native": "native", "trap": "software", "bt": "software", "pv": "software",
          "vtx": "vmx", "vtx-ept": "vmx"}
CATEGORIES = ("guest instructions", "event delivery", "device access", "page walks", "VM exits",
              "VMM traps", "shadow paging", "callouts", "traps", "hypercalls", "translation")
# Exit-table reasons that on the bare machine are counted elsewhere (or are idle time).
_NATIVE_FREE = {"EXCEPTION_NMI": "counted as an event delivery", "EXTERNAL_INTERRUPT": "counted as an event delivery",
                "HLT": "idle: waiting is not work"}


@dataclass
class Line:
    """One priced event: ``count`` x ``cost.cycles``."""

    category: str
    event: str
    count: float
    cost: Cost

    @property
    def cycles(self) -> float:
        return self.count * self.cost.cycles

    def to_json(self) -> dict:
        return {"category": self.category, "event": self.event, "count": self.count,
                "cycles_each": self.cost.cycles, "cycles": self.cycles, "cost_key": self.cost.key,
                "label": self.cost.label, "source": self.cost.source}


@dataclass
class Breakdown:
    mode: str
    profile: str
    lines: list[Line] = field(default_factory=list)
    unmodeled: dict[str, float] = field(default_factory=dict)   # "what" -> count

    @property
    def total(self) -> float:
        return sum(line.cycles for line in self.lines)

    def by_category(self) -> dict[str, float]:
        out = {c: 0.0 for c in CATEGORIES}
        for line in self.lines:
            out[line.category] = out.get(line.category, 0.0) + line.cycles
        return {c: v for c, v in out.items() if v}

    def to_json(self) -> dict:
        return {"mode": self.mode, "profile": self.profile, "cycles": self.total,
                "by_category": self.by_category(), "lines": [line.to_json() for line in self.lines],
                "unmodeled": dict(self.unmodeled)}


def model_cycles(counts: Counts, mode: str, profile: Profile) -> Breakdown:
    """Price ``counts`` (one run or one iteration) of ``mode`` on ``profile``."""
    family = FAMILY.get(mode)
    if family is None:
        raise ValueError(f"unknown mode {mode!r}")
    out = Breakdown(mode, profile.name)
    cost = profile.cost

    def add(category: str, event: str, count: float, c: Cost) -> None:
        if count:
            out.lines.append(Line(category, event, count, c))

    # -- what the bare machine pays too -------------------------------------------------------
    add("guest instructions", "guest instructions", counts.instructions, cost("native.guest_instruction"))
    for kind, n in sorted(counts.injected.items()):
        add("event delivery", f"{kind} delivered through the IDT", n, cost("native.event_delivery"))
    for kind, n in sorted(counts.walk_references.items()):
        add("page walks", f"{kind} walk references", n, cost("native.walk_reference"))
    exits = counts.exits
    mmio_direct = counts.device.get("mmio", 0) - exits.get("EPT_MISCONFIG", 0)
    add("device access", "device-page accesses (no exit)", max(mmio_direct, 0), cost("native.mmio"))

    # -- exits: what entering the VMM costs, by family ---------------------------------------------
    if family == "native":
        for reason, n in sorted(exits.items()):
            if reason == "IO_INSTRUCTION":
                add("device access", "port accesses (bus)", n, cost("native.port_io"))
            elif reason not in _NATIVE_FREE:
                out.unmodeled[f"native event {reason}"] = n
    else:
        vmx = family == "vmx"
        hidden = counts.memory.get(HIDDEN_FAULTS, 0)
        true = sum(counts.memory.get(name, 0) for name in TRUE_FAULTS)
        if vmx:
            # Every exit is a round trip; hidden and true #PF exits are among them.
            add("VM exits", "VM exit round trips", sum(exits.values()), cost("vmm.vmx_round_trip"))
        else:
            # A software VMM handles hidden faults inside the MMU, without a dispatch:
            # each still entered the VMM. Port I/O is priced by the mode's own trap or
            # callout event, HLT is idle; every other dispatch is a fault or interrupt
            # that reached the VMM first.
            # (A hypercall is no exit: it is counted once, as a hypercall event, and priced
            # as the hypercall round trip below.)
            entries = hidden + sum(n for reason, n in exits.items() if reason not in ("IO_INSTRUCTION", "HLT"))
            add("VMM traps", "traps into the VMM", entries, cost("vmm.software_trap"))
        add("shadow paging", "hidden page faults (shadow fills)", hidden, cost("shadow.fill"))
        add("shadow paging", "guest page faults reflected", true, cost("shadow.true_fault"))
        add("shadow paging", "guest page-table writes", counts.memory.get(PTE_WRITES, 0), cost("shadow.pte_write"))
        if vmx:
            for reason, n in sorted(exits.items()):
                if reason == "EXCEPTION_NMI":
                    n = max(n - hidden - true, 0)
                    add("VM exits", "handler: EXCEPTION_NMI (reflected)", n, profile.handler(reason))
                else:
                    add("VM exits", f"handler: {reason}", n, profile.handler(reason))
            add("VM exits", "TLB flushes on VM entry", counts.memory.get(ENTRY_FLUSHES, 0),
                cost("vmm.tlb_flush_on_entry"))

    # -- the mode's own events ------------------------------------------------------------------------
    for category, names in sorted(counts.events.items()):
        if category == "mmio":
            continue  # the same accesses as the device-page line above
        for name, n in sorted(names.items()):
            c = profile.event(category, name)
            if c is None:
                out.unmodeled[f"{category}: {name}"] = n
            else:
                add(category, f"{category}: {name}", n, c)
    return out


def overhead(mode_cycles: float, native_cycles: float) -> float | None:
    """A mode's modeled cycles over native's for the same workload (None without native)."""
    if not native_cycles:
        return None
    return mode_cycles / native_cycles
