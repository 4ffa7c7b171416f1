"""Shared info and event channels: how a PV guest is interrupted.

A PV guest has no interrupt flag the VMM can use (its kernel runs in ring 1, where CLI
faults) and no IDT the hardware reads. Instead, ``vcpu_info.evtchn_upcall_mask`` in the
shared-info page is the virtual IF (1 = events masked) and ``evtchn_upcall_pending`` says
an event waits; an event is a bit in ``evtchn_pending`` (one per port) with a mask bit in
``evtchn_mask``. When an event is pending and the upcall mask is clear, the VMM
"upcalls": it builds a bounce frame to the callback the guest set with
``set_callbacks`` and masks events, exactly as an interrupt gate clears IF.
"""
from __future__ import annotations

import struct

from . import abi


class SharedInfo:
    """The shared-info page, in VMM host memory at ``address`` (machine address)."""

    def __init__(self, engine, address: int):
        self.engine, self.address = engine, address
        self.virq_port: dict[int, int] = {}        # VIRQ -> port
        self.ports: dict[int, str] = {}            # port -> "virq" | "unbound"
        engine.write_phys(address + abi.VI_UPCALL_MASK, b"\x01")  # events masked at boot

    def _byte(self, offset: int) -> int:
        return self.engine.read_phys(self.address + offset, 1)[0]

    def _set_byte(self, offset: int, value: int) -> None:
        self.engine.write_phys(self.address + offset, bytes((value,)))

    @property
    def masked(self) -> bool:
        return bool(self._byte(abi.VI_UPCALL_MASK))

    def set_mask(self, masked: bool) -> None:
        self._set_byte(abi.VI_UPCALL_MASK, int(masked))

    @property
    def upcall_pending(self) -> bool:
        return bool(self._byte(abi.VI_UPCALL_PENDING))

    def set_cr2(self, cr2: int) -> None:
        self.engine.write_phys(self.address + abi.VI_CR2, struct.pack("<I", cr2 & 0xFFFFFFFF))

    def _word(self, base: int, port: int) -> tuple[int, int]:
        at = self.address + base + 4 * (port >> 5)
        return at, struct.unpack("<I", self.engine.read_phys(at, 4))[0]

    def raise_port(self, port: int) -> None:
        """Xen's evtchn_set_pending: pending bit, then the selector and upcall flags."""
        at, word = self._word(abi.SH_EVTCHN_PENDING, port)
        self.engine.write_phys(at, struct.pack("<I", word | 1 << (port & 31)))
        self._notify(port)

    def _notify(self, port: int) -> None:
        _, mask = self._word(abi.SH_EVTCHN_MASK, port)
        _, pending = self._word(abi.SH_EVTCHN_PENDING, port)
        if mask >> (port & 31) & 1 or not pending >> (port & 31) & 1:
            return
        sel_at = self.address + abi.VI_PENDING_SEL
        sel = struct.unpack("<I", self.engine.read_phys(sel_at, 4))[0]
        self.engine.write_phys(sel_at, struct.pack("<I", sel | 1 << (port >> 5)))
        self._set_byte(abi.VI_UPCALL_PENDING, 1)

    def unmask(self, port: int) -> None:
        at, word = self._word(abi.SH_EVTCHN_MASK, port)
        self.engine.write_phys(at, struct.pack("<I", word & ~(1 << (port & 31))))
        self._notify(port)

    def alloc_port(self, kind: str) -> int | None:
        for port in range(1, abi.NR_EVENT_CHANNELS):  # port 0 is never used (Xen reserves it)
            if port not in self.ports:
                self.ports[port] = kind
                return port
        return None

    def close(self, port: int) -> None:
        kind = self.ports.pop(port)
        if kind.startswith("virq"):
            self.virq_port = {v: p for v, p in self.virq_port.items() if p != port}
