"""gdb's watchpoints (``Z2``/``Z3``/``Z4``: write, read, access) as memory hooks bounded to
the watched bytes: no per-instruction hook, whatever is watched."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

from ..modes.memory import is_unassigned_host

log = logging.getLogger("vmm.gdb")

WATCH_REASON = "gdb watchpoint"
WATCH_KINDS = {2: "write", 3: "read", 4: "access"}        # Z packet type -> kind
STOP_KEY = {"write": "watch", "read": "rwatch", "access": "awatch"}   # the T packet's key
PAGE_SIZE = 0x1000
PAGE_OFFSET_MASK = PAGE_SIZE - 1
LINEAR_MASK = 0xFFFFFFFF
MAX_ACCESS = 16             # the widest access a guest instruction makes (a 16-byte SSE move)


@dataclass
class Watch:
    kind: str                          # "write" | "read" | "access" (Z2 | Z3 | Z4)
    linear: int
    length: int
    pieces: list[tuple[int, int]]      # (host-physical, length), one per page
    hooks: list[int] = field(default_factory=list)


class Watches:
    """Watchpoints as memory hooks bounded to the watched bytes.

    Unicorn calls a memory hook with the *host-physical* address of the access (the page
    our TLB-fill hook answered), so a watchpoint is placed on the host-physical bytes the
    linear address translates to when gdb inserts it (an alias mapping of the same page
    triggers it too; a later remapping of the linear address does not move it). A linear
    address that does not translate yet is accepted, as debug registers accept any linear
    address: the watch waits for the TLB fill that first maps it (the bus's ``fill``),
    and is placed then, before the access that missed goes on. Only
    accesses by guest instructions are seen, not the VMM's own (event delivery, emulated
    instructions, page walks).

    Stopping the engine from a memory hook ends the run with the instruction *aborted
    after its memory access*: the store is done, registers and EIP are as before the
    instruction (measured here on unicorn 2.1.4; an ``inc [x]`` would run twice). So the
    hook saves the bytes each watched store overwrites; after the stop the stub puts
    them back and single-steps that instruction with the hooks disarmed, and reports the
    watchpoint after it, as x86 debug registers do (a trap after the access).
    """

    def __init__(self, vm):
        self.vm = vm
        self.active: dict[tuple[str, int, int], Watch] = {}
        self.armed = True
        self.hit: tuple[Watch, int] | None = None     # the watch, EIP of the access
        self.undo: list[tuple[int, bytes]] = []       # (host-physical, old bytes) per watched store
        self.pending: dict[tuple[str, int, int], Watch] = {}   # not mapped yet: placed at a fill
        self._listening = False

    def insert(self, kind: str, linear: int, length: int) -> bool:
        key = (kind, linear, length)
        if key in self.active or key in self.pending:
            return True
        if length <= 0 or length > PAGE_SIZE:
            return False
        pieces = self._pieces(linear, length)
        if pieces is None:
            self.pending[key] = Watch(kind, linear, length, [])
            if not self._listening:
                self.vm.bus.subscribe("fill", self._filled)
                self._listening = True
            return True
        self._place(Watch(kind, linear, length, pieces))
        return True

    def _filled(self, vaddr: int, access: str, answer) -> None:
        """A TLB fill: place the pending watches on the page it mapped."""
        if getattr(answer, "host_page", None) is None:
            return
        page = vaddr & ~PAGE_OFFSET_MASK & LINEAR_MASK
        for key, w in list(self.pending.items()):
            first, last = w.linear & ~PAGE_OFFSET_MASK, (w.linear + w.length - 1) & ~PAGE_OFFSET_MASK
            if not first <= page <= last:
                continue
            pieces = self._pieces(w.linear, w.length)
            if pieces is not None:
                del self.pending[key]
                w.pieces = pieces
                self._place(w)

    def _place(self, w: Watch) -> None:
        for phys, chunk in w.pieces:
            # An access is reported by its first byte: begin early enough for a wide
            # access that starts before the watched bytes and overlaps them.
            w.hooks += self.vm.engine.add_memory_watch(
                max(0, phys - (MAX_ACCESS - 1)), phys + chunk - 1, reads=w.kind in ("read", "access"),
                writes=w.kind in ("write", "access"), callback=partial(self._on_access, w, phys, chunk))
        self.active[(w.kind, w.linear, w.length)] = w

    def _pieces(self, linear: int, length: int) -> list[tuple[int, int]] | None:
        """The host-physical bytes ``length`` bytes at ``linear`` translate to now, one piece
        per page; None when some page is not mapped (gdb falls back or reports it)."""
        pieces = []
        address, left = linear, length
        while left:
            chunk = min(left, PAGE_SIZE - (address & PAGE_OFFSET_MASK))
            try:
                phys = self.vm.mode.translate(address & LINEAR_MASK, write=False, user=False, set_ad=False)
            except Exception:
                return None
            if is_unassigned_host(phys):
                return None   # nothing there to watch: the guest's accesses reach the device
            pieces.append((phys, chunk))
            address += chunk
            left -= chunk
        return pieces

    def remove(self, kind: str, linear: int, length: int) -> bool:
        if self.pending.pop((kind, linear, length), None) is not None:
            return True
        w = self.active.pop((kind, linear, length), None)
        if w is None:
            return False
        for h in w.hooks:
            try:
                self.vm.engine.remove_hook(h)
            except Exception:
                log.exception("gdb: removing a watchpoint hook")
        return True

    def clear(self) -> None:
        self.pending.clear()
        for key in list(self.active):
            self.remove(*key)

    def _on_access(self, w: Watch, phys: int, chunk: int, is_write: bool, address: int, size: int) -> None:
        try:
            if not self.armed or not (address < phys + chunk and address + size > phys):
                return
            engine = self.vm.engine
            if is_write:
                self.undo.append((address, engine.read_phys(address, size)))
            if self.hit is None:
                self.hit = (w, engine.reg("eip"))
                engine.request_stop(WATCH_REASON)
        except Exception:  # never raise into Unicorn
            log.exception("gdb: watchpoint hook")

    def take_hit(self) -> tuple[tuple[Watch, int] | None, list[tuple[int, bytes]]]:
        hit, undo = self.hit, self.undo
        self.hit, self.undo = None, []
        return hit, undo
