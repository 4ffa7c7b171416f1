"""The instruction tracer: every executed instruction, with the VM exits, injected events
and page walks it caused, as text or JSON lines.

This is the only place with a per-instruction Python hook, and it exists only while a
trace runs: the tracer subscribes to the VM's event bus (:mod:`vmm.bus`) for exits,
deliveries, fills and the mode's own events, and asks it for the per-instruction hook
unless only exits are traced.

Event objects (JSON lines, one per line; field names are stable):

``{"type": "insn", "n": 12, "eip": 1048588, "bytes": "b8 00 00 00 00", "asm": "mov eax, 0",
  "ring": 0, "changed": {"eax": 0}}``
    instruction number ``n`` (0-based, counted from the start of the run), its address,
    bytes, disassembly, CPL, and the registers it changed (the value after it).
``{"type": "exit", "n": 12, "reason": 30, "name": "IO_INSTRUCTION", "qualification": 66060288,
  "decoded": "OUT dx, 1 byte, port 0x3f8", "length": 1, "info": {...}, "result": null}``
    a VM exit (in ``native`` the same record stands for the event a bare machine sees):
    SDM reason, qualification and its decoding, instruction length, the handler's result.
``{"type": "inject", "n": 40, "vector": 14, "kind": "exception", "error_code": 2, "cr2": ...}``
    an event delivered through the guest IDT.
``{"type": "walk", "n": 3, "linear": ..., "access": "read", "host_page": ..., "perms": "rwx"}``
    a TLB miss and what the MMU answered (``"fault": vector`` instead when it faulted); only
    with ``walks=True``.
``{"type": "window", "first": 0, "last": 39, "instructions": 1234}``
    the ``--from``/``--count`` window ended before the guest did (``instructions``: how
    many the guest ran in all).
``{"type": "stop", "n": ..., "kind": "guest exit", "message": "..."}``
    the end of the run.

Only the VT-x modes have VM exits; in the others an ``exit`` record is the event the mode
dispatched (port I/O, an exception...), shown by that name in text ("port I/O: OUT dx, 1
byte, port 0x3f8"), and the mode's own count of the same event (trap mode's ``traps: out``)
is folded into it as ``"mode_event"`` instead of a second record. With ``ring`` or
``address_range`` the events of the instructions left out are left out too.
"""
from __future__ import annotations

import ctypes
import json
from functools import lru_cache

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs

from ..stats.exits import event_name, has_vm_exits
from ..vmx.exit_reasons import ExitReason
from ..vmx.qualification import CrAccess, EptViolation, InterruptionInfo, IoInstruction, MovDr, TaskSwitch

TRACED_REGS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eflags")
"""Registers the trace shows changes of; the batch read adds CS and CR0 after them (for the
ring and the operand size), which the zips over names, values and last values leave out."""
_PERMS = "rwx"
MAX_INSN_LENGTH = 15
"""The architectural limit on an instruction's length (SDM Vol. 2, 2.3.11): any size the
engine reports above it (Unicorn gives 0xf1f1f1f1 for an instruction that raises #UD as it
is translated) means "unknown"."""


@lru_cache(maxsize=2)
def _decoder(bits: int) -> Cs:
    return Cs(CS_ARCH_X86, CS_MODE_32 if bits == 32 else CS_MODE_16)


_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))


def io_from_code(exit, code: bytes) -> IoInstruction:
    """A port access where no VMCS holds its qualification: the same fields (string, REP,
    immediate port) read from the instruction's bytes, so that every mode words port I/O
    the way the SDM's exit qualification does."""
    i = 0
    while i < min(len(code), MAX_INSN_LENGTH) and code[i] in _PREFIXES:
        i += 1
    op = code[i] if i < len(code) else None
    return IoInstruction(port=exit.port, size=exit.size, direction_in=exit.direction.upper() == "IN",
                         string=op is not None and 0x6C <= op <= 0x6F, rep=0xF3 in code[:i],
                         immediate=op is not None and 0xE4 <= op <= 0xE7)


def describe_exit(exit, vmcs, code: bytes = b"") -> str:
    """The exit's qualification decoded the SDM way, for people (``code``: the bytes of
    the instruction that caused it, for a mode without a VMCS)."""
    r, q = exit.reason, exit.qualification
    try:
        if r is ExitReason.CR_ACCESS:
            return CrAccess.decode(q).describe()
        if r is ExitReason.IO_INSTRUCTION:
            if vmcs is None:
                return io_from_code(exit, code).describe()
            return IoInstruction.decode(q).describe()
        if r is ExitReason.DR_ACCESS:
            return MovDr.decode(q).describe()
        if r in (ExitReason.EPT_VIOLATION,):
            return EptViolation.decode(q).describe() + f", guest-physical {exit.gpa:#x}"
        if r is ExitReason.EPT_MISCONFIG:
            return f"guest-physical {exit.gpa:#x} (MMIO)"
        if r is ExitReason.INVLPG:
            return f"INVLPG {q:#x}"
        if r in (ExitReason.EXCEPTION_NMI, ExitReason.EXTERNAL_INTERRUPT):
            if vmcs is not None:
                from ..vmx.vmcs import Field
                raw = vmcs.read(Field.VM_EXIT_INTR_INFO)
                if raw >> 31:
                    return InterruptionInfo.decode(raw).describe()
            vector = getattr(exit, "vector", None)
            return f"vector {vector:#x}" if vector is not None else ""
        if r in (ExitReason.MSR_READ, ExitReason.MSR_WRITE):
            return f"MSR {exit.msr:#x}"
        if r in (ExitReason.GDTR_IDTR, ExitReason.LDTR_TR):
            return f"{exit.mnemonic.upper()}, displacement {q:#x}"
        if r is ExitReason.TASK_SWITCH:
            return TaskSwitch.decode(q).describe()
    except (ValueError, AttributeError):
        pass
    return ""


def _plain(value):
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value)


class Tracer:
    """Writes a trace of ``vm`` to ``out`` (a text file object).

    Filters: ``start``/``count`` select instructions by number, ``address_range`` by EIP,
    ``ring`` ("user" or "kernel") by CPL; ``exits_only`` leaves instructions out (and then
    installs no per-instruction hook at all). Events that happen during a selected
    instruction are printed after it; those of an instruction left out are left out.
    """

    def __init__(self, vm, out, fmt: str = "text", *, start: int = 0, count: int | None = None,
                 address_range: tuple[int, int] | None = None, ring: str | None = None,
                 exits_only: bool = False, walks: bool = False, color: bool = False):
        if fmt not in ("text", "jsonl"):
            raise ValueError(f"trace format {fmt!r}: choose text or jsonl")
        self.vm, self.out, self.fmt = vm, out, fmt
        self.start, self.end = start, None if count is None else start + count
        self.address_range, self.ring = address_range, ring
        self.exits_only, self.walks, self.color = exits_only, walks, color
        self.n = -1                  # number of the instruction being executed
        self.vm_exits = has_vm_exits(vm.mode.name)
        # the instruction being executed passed the filters (before the first: no filter)
        self._selected = not (start or address_range or ring)
        self._last_event: dict | None = None         # the last event recorded, and where
        self._last_event_at: tuple[int, int] | None = None
        self.instructions = 0
        self.events = 0
        # (n, eip, (asm, hex bytes), ring) of the instruction in flight
        self._prev: tuple[int, int, tuple[str, str], int] | None = None
        self._pending: list[dict] = []
        self._pages: dict[int, int] = {}            # linear code page -> host page
        self._decoded: dict[int, tuple[str, str]] = {}  # EIP -> (asm, hex bytes)
        self._decoded_pages: dict[int, set[int]] = {}   # host page -> EIPs decoded from it
        eng = vm.engine
        # the traced registers, then CS and CR0 (for the CPL), in one batch read
        read = TRACED_REGS + ("cs", "cr0")
        self._ids = (ctypes.c_int * len(read))(*(eng_reg_id(r) for r in read))
        self._vals = (ctypes.c_uint64 * len(read))()
        self._ntraced = len(TRACED_REGS)
        self._last: list[int] | None = None
        self._read_batch = eng.read_regs_thunk(self._ids, self._vals)
        bus = vm.bus
        if not exits_only:
            vm.mode.code_watchers.append(self)   # decode each instruction once, until its page is written
            unfiltered = not (start or count is not None or address_range or ring)
            if unfiltered:
                bus.on_instruction(raw=self._fast_hook())
            else:
                bus.on_instruction(self._instruction)
        bus.subscribe("fill", self._filled)
        bus.subscribe("handled", self.exit)
        bus.subscribe("inject", self.inject)
        bus.subscribe("event", self.mode_event)   # traps, callouts, hypercalls... as they happen
        bus.subscribe("stop", self.stop)

    # -- code watcher: the decode cache lives until the code page is written ----------------------
    def fetch(self, linear_page: int, page: int) -> None:
        self._pages[linear_page] = page

    def written(self, page: int) -> None:
        for eip in self._decoded_pages.pop(page, ()):
            self._decoded.pop(eip, None)

    # -- per instruction ----------------------------------------------------------------------
    def _filled(self, vaddr: int, access: str, answer) -> None:
        host = getattr(answer, "host_page", None)
        if self.walks and self._selected_n():
            event = {"type": "walk", "n": self._number(), "linear": vaddr, "access": access}
            if host is not None:
                event["host_page"] = host
                event["perms"] = "".join(c if answer.perms >> i & 1 else "-" for i, c in enumerate(_PERMS))
            else:
                event["fault"] = getattr(answer, "vector", None)
            self._event(event)

    def _number(self):
        return None if self.exits_only else max(self.n, 0)

    def _selected_n(self) -> bool:
        """Whether events now belong to the trace: those of a selected instruction (with
        no per-instruction hook, those at the CPL ``ring`` asks for)."""
        if not self.exits_only:
            return self._selected
        if self.ring is None:
            return True
        eng = self.vm.engine
        cpl = eng.reg("cs") & 3 if eng.reg("cr0") & 1 else 0
        return (cpl == 3) == (self.ring == "user")

    def _where(self) -> tuple[int, int]:
        return self.n, self.vm.engine.reg("eip")

    def _code_here(self) -> bytes:
        """The bytes of the instruction being executed (EIP has not moved past it while
        its event is handled)."""
        if self._prev is not None:
            return bytes.fromhex(self._prev[2][1])
        eip = self.vm.engine.reg("eip")
        for n in (MAX_INSN_LENGTH, 0x1000 - (eip & 0xFFF)):
            try:
                return self.vm.read_linear(eip, min(n, MAX_INSN_LENGTH), debug=True)
            except Exception:
                continue
        return b""

    def _instruction(self, address: int, size: int) -> None:
        """Before each instruction: finish the previous one (its changed registers), then
        note this one. The hot path of tracing; kept flat on purpose."""
        self._read_batch()
        regs = self._vals[:]
        if self._prev is not None:
            self._emit_instruction(regs)
        self.n = n = self.n + 1
        self.instructions += 1
        self._last = regs
        self._selected = False
        if n < self.start or (self.end is not None and n >= self.end) or (
                self.address_range and not self.address_range[0] <= address < self.address_range[1]):
            self._prev = None
            return
        cpl = regs[-2] & 3 if regs[-1] & 1 else 0
        if self.ring and (self.ring == "user") != (cpl == 3):
            self._prev = None
            return
        self._selected = True
        decoded = self._decoded.get(address)
        if decoded is None:
            decoded = self._decode(address, size, 32 if regs[-1] & 1 else 16)
        self._prev = (n, address, decoded, cpl)

    def _fast_hook(self):
        """The per-instruction hook for an unfiltered trace, as a closure over locals: the
        same work as :meth:`_instruction`, with the attribute lookups done once."""
        batch, handle, a_ids, a_ptrs, nregs = self._read_batch.parts
        vals, decoded_cache, decode = self._vals, self._decoded, self._decode
        write, names, jsonl, color = self.out.write, TRACED_REGS, self.fmt == "jsonl", self.color
        flush_pending, fail = self._flush_pending, self.vm.engine.fail

        def hook(_handle, address: int, size: int, _data) -> None:
            try:
                batch(handle, a_ids, a_ptrs, nregs)
                regs = vals[:]
                prev = self._prev
                if prev is not None:
                    n0, eip, (asm, hexbytes), cpl0 = prev
                    last = self._last
                    assert last is not None, "an instruction in flight follows a register read"
                    if jsonl:
                        changed = ", ".join([f'"{k}": {v}'
                                             for k, v, o in zip(names, regs, last, strict=False) if v != o])
                        write(f'{{"type": "insn", "n": {n0}, "eip": {eip}, "bytes": "{hexbytes}", '
                              f'"asm": "{asm}", "ring": {cpl0}, "changed": {{{changed}}}}}\n')
                    else:
                        changed = " ".join([f"{k}={v:#x}"
                                            for k, v, o in zip(names, regs, last, strict=False) if v != o])
                        if color:
                            line = f"\x1b[2m{n0:>8}\x1b[0m {eip:08x}  {hexbytes:<24} \x1b[1m{asm:<32}\x1b[0m {changed}"
                        else:
                            line = f"{n0:>8} {eip:08x}  {hexbytes:<24} {asm:<32} {changed}"
                        write(line.rstrip() + "\n")
                    if self._pending:
                        flush_pending()
                self.n = n = self.n + 1
                self.instructions = n + 1
                self._last = regs
                d = decoded_cache.get(address)
                if d is None:
                    d = decode(address, size, 32 if regs[-1] & 1 else 16)
                self._prev = (n, address, d, regs[-2] & 3 if regs[-1] & 1 else 0)
            except BaseException as exc:
                fail(exc)

        return hook

    def _decode(self, address: int, size: int, bits: int) -> tuple[str, str]:
        eng = self.vm.engine
        if not 0 < size <= MAX_INSN_LENGTH:
            size = MAX_INSN_LENGTH   # unknown: decode what the 15 bytes hold, below
        host = self._pages.get(address & ~0xFFF)
        code = eng.read_raw(host | (address & 0xFFF), size) if host is not None else b""
        if len(code) != size:  # crosses a page, or a page fetched before tracing began
            try:
                code = self.vm.read_linear(address, size, debug=True)
            except Exception:
                code = b""
        insn = next(_decoder(bits).disasm(code, address, 1), None)
        if insn is None or insn.size != size:
            # Unicorn reports no usable size for an instruction that faults as it is
            # translated (a privileged one at CPL > 0, trap mode's #GP): decode up to 15.
            longer = code
            for n in (MAX_INSN_LENGTH, 0x1000 - (address & 0xFFF)):  # the next page may be unmapped
                try:
                    longer = self.vm.read_linear(address, min(n, MAX_INSN_LENGTH), debug=True)
                    break
                except Exception:
                    continue
            insn = next(_decoder(bits).disasm(longer, address, 1), None) or insn
            code = longer[:insn.size] if insn is not None else code
        decoded = (f"{insn.mnemonic} {insn.op_str}".strip() if insn else "(undecodable)", code.hex(" "))
        if host is not None and (address & 0xFFF) + size <= 0x1000:  # cacheable: we see writes to it
            self._decoded[address] = decoded
            self._decoded_pages.setdefault(host, set()).add(address)
        return decoded

    def _emit_instruction(self, regs) -> None:
        prev, last = self._prev, self._last
        assert prev is not None and last is not None, "called only with an instruction in flight"
        n, eip, (asm, hexbytes), cpl = prev
        self._prev = None
        names = TRACED_REGS
        if self.fmt == "jsonl":
            changed = ", ".join([f'"{names[i]}": {regs[i]}' for i in range(self._ntraced) if regs[i] != last[i]])
            self.out.write(f'{{"type": "insn", "n": {n}, "eip": {eip}, "bytes": "{hexbytes}", '
                           f'"asm": "{asm}", "ring": {cpl}, "changed": {{{changed}}}}}\n')
        else:
            changed = " ".join([f"{names[i]}={regs[i]:#x}" for i in range(self._ntraced) if regs[i] != last[i]])
            if self.color:
                line = f"\x1b[2m{n:>8}\x1b[0m {eip:08x}  {hexbytes:<24} \x1b[1m{asm:<32}\x1b[0m {changed}"
            else:
                line = f"{n:>8} {eip:08x}  {hexbytes:<24} {asm:<32} {changed}"
            self.out.write(line.rstrip() + "\n")
        if self._pending:
            self._flush_pending()

    def _flush_pending(self) -> None:
        for event in self._pending:
            self._write_event(event)
        self._pending.clear()

    # -- events from the VM -----------------------------------------------------------------------
    def _event(self, event: dict) -> None:
        self.events += 1
        where = self._where()
        if self._prev is not None:
            self._pending.append(event)
        elif self.exits_only:
            # no instruction to print them after: held while they are at one place, so that
            # the two accounts of one port access can still be folded into one record
            if self._pending and self._last_event_at != where:
                self._flush_pending()
            self._pending.append(event)
        else:
            self._write_event(event)
        self._last_event, self._last_event_at = event, where

    def _write_event(self, event: dict) -> None:
        if self.fmt == "jsonl":
            self.out.write(json.dumps(_plain(event)) + "\n")
            return
        kind = event["type"]
        if kind == "exit":
            name = (f"VM exit {event['reason']} {event['name']}" if self.vm_exits
                    else event_name(ExitReason(event["reason"])))
            text = (f"  -> {name}"
                    + (f": {event['decoded']}" if event["decoded"] else "")
                    + (f" (length {event['length']})" if event["length"] else "")
                    + (f" = {event['result']:#x}" if isinstance(event.get("result"), int) else "")
                    + (f" ({event['mode_event']})" if event.get("mode_event") else ""))
        elif kind == "inject":
            text = (f"  -> deliver vector {event['vector']:#x} ({event['kind']})"
                    + (f" error code {event['error_code']:#x}" if event.get("error_code") is not None else "")
                    + (f" CR2 {event['cr2']:#x}" if event.get("cr2") is not None else ""))
        elif kind == "walk":
            if "fault" in event:
                text = f"  -> TLB miss {event['linear']:#010x} {event['access']}: fault {event['fault']}"
            else:
                text = (f"  -> TLB miss {event['linear']:#010x} {event['access']}: host page "
                        f"{event['host_page']:#010x} {event['perms']}")
        elif kind == "window":
            text = (f"  -> trace window ends after instruction {event['last']} (from {event['first']}); "
                    f"the guest ran {event['instructions']} instructions")
        elif kind == "event":
            text = f"  -> {event['category']}: {event['name']}" + (f" x{event['count']}" if event["count"] != 1 else "")
        else:
            text = f"  -> {kind}: {event.get('message', '')}"
        if self.color:
            text = f"\x1b[33m{text}\x1b[0m"
        self.out.write(text + "\n")

    def exit(self, exit, result, vmcs) -> None:
        if not self._selected_n():
            return
        io = exit.reason is ExitReason.IO_INSTRUCTION and not self.vm_exits
        event = {"type": "exit", "n": self._number(), "reason": int(exit.reason), "name": exit.reason.name,
                 "qualification": exit.qualification,
                 "decoded": describe_exit(exit, vmcs, self._code_here() if io else b""),
                 "length": exit.length, "info": exit.payload(),
                 "result": result if isinstance(result, int) and not isinstance(result, bool) else None}
        last = self._pending[-1] if self._pending else None
        if io and last is not None and last["type"] == "event" and self._last_event_at == self._where():
            # the binary translator's callout for this port access, counted before it: the same event
            self._pending.pop()
            self.events -= 1
            event["mode_event"] = f"{last['category']}: {last['name']}" + (
                f" x{last['count']}" if last["count"] != 1 else "")
        self._event(event)

    def mode_event(self, category: str, name: str, n: int) -> None:
        """One of the mode's own events (a trap emulated, a callout, a hypercall, a block
        translated): shown where it happened, like an exit."""
        if not self._selected_n():
            return
        last = self._last_event
        if (last is not None and last["type"] == "exit" and not self.vm_exits and "mode_event" not in last
                and last["reason"] == ExitReason.IO_INSTRUCTION and self._last_event_at == self._where()):
            # a software VMM's trap or callout for the port access just shown: the same event
            last["mode_event"] = f"{category}: {name}" + (f" x{n}" if n != 1 else "")
            return
        self._event({"type": "event", "n": self._number(), "category": category, "name": name, "count": n})

    def inject(self, event) -> None:
        if not self._selected_n():
            return
        self._event({"type": "inject", "n": self._number(), "vector": event.vector, "kind": event.kind,
                     "error_code": event.error_code, "cr2": event.cr2})

    def stop(self, result) -> None:
        # The hook of the instruction after the one that stopped the VM may have fired
        # without the instruction running: EIP still points at it then, and it is dropped.
        if self._prev is not None and self.vm.engine.reg("eip") != self._prev[1]:
            self._read_batch()
            self._emit_instruction(self._vals[:])
        self._prev = None
        self._flush_pending()
        if self.end is not None and self.instructions > self.end:
            self._write_event({"type": "window", "first": self.start, "last": self.end - 1,
                               "instructions": self.instructions})
        self._write_event({"type": "stop", "n": self._number(), "kind": result.kind.value,
                           "message": result.message.splitlines()[0] if result.message else ""})
        self.out.flush()


def eng_reg_id(name: str) -> int:
    from ..cpu.regs import UC_REG
    return UC_REG[name]
