"""The guest as gdb reads and writes it: registers in gdb's i386 order, memory by
guest-linear address (as the guest sees it at CPL0), and the translated code Unicorn must
drop once either changed under it."""
from __future__ import annotations

import logging

from ..modes.memory import is_unassigned_host
from .gdb_packets import BadPacket
from .gdb_target import ENGINE_REGISTERS, REGISTERS

log = logging.getLogger("vmm.gdb")

LINEAR_MASK = 0xFFFFFFFF
PAGE_SIZE = 0x1000
PAGE_OFFSET_MASK = PAGE_SIZE - 1
REGISTER_BYTES = 4          # every register of the vCPU gdb sees is 32 bits wide


class GuestAccess:
    """Registers and memory of one VM, with gdb's answers (``OK``, ``E00``, ``E01``, ``E14``)."""

    def __init__(self, vm):
        self.vm = vm

    # -- registers ---------------------------------------------------------------------------
    def register_bytes(self, number: int) -> bytes:
        name, bits, _ = REGISTERS[number]
        if number < ENGINE_REGISTERS:
            return self.vm.engine.reg(name).to_bytes(REGISTER_BYTES, "little")
        return bytes(bits // 8)

    def read_all_registers(self) -> bytes:
        return b"".join(self.register_bytes(n) for n in range(len(REGISTERS))).hex().encode()

    def read_register(self, number: int) -> bytes:
        if not 0 <= number < len(REGISTERS):
            return b"E00"
        return self.register_bytes(number).hex().encode()

    def _set_register(self, number: int, value: bytes) -> None:
        name, bits, _ = REGISTERS[number]
        if len(value) != bits // 8:
            raise BadPacket(b"register size")
        if number >= ENGINE_REGISTERS:
            return                                  # x87 state is not modelled: ignored
        v = int.from_bytes(value, "little")
        if self.vm.engine.reg(name) != v:
            self.vm.engine.set_reg(name, v)

    def write_register(self, number: int, value: bytes) -> bytes:
        if not 0 <= number < len(REGISTERS):
            return b"E00"
        try:
            self._set_register(number, value)
        except BadPacket:
            raise
        except Exception as err:  # e.g. a selector the CPU refuses
            log.warning("gdb: writing %s: %s", REGISTERS[number][0], err)
            return b"E01"
        return b"OK"

    def write_all_registers(self, data: bytes) -> bytes:
        offset, failed = 0, False
        for number, (_, bits, _) in enumerate(REGISTERS):
            size = bits // 8
            if offset + size > len(data):
                break
            try:
                self._set_register(number, data[offset:offset + size])
            except Exception as err:
                log.warning("gdb: writing %s: %s", REGISTERS[number][0], err)
                failed = True
            offset += size
        return b"E01" if failed else b"OK"

    # -- memory ---------------------------------------------------------------------------
    def read_memory(self, address: int, length: int) -> bytes:
        out = b""
        while len(out) < length:
            at = (address + len(out)) & LINEAR_MASK
            chunk = min(length - len(out), PAGE_SIZE - (at & PAGE_OFFSET_MASK))
            try:
                out += self.vm.read_linear(at, chunk, debug=True)
            except Exception:
                break                   # unmapped: a short read, or E14 if nothing
        if not out and length:
            return b"E14"
        return out.hex().encode()

    def write_memory(self, address: int, data: bytes) -> bytes:
        done = 0
        try:
            while done < len(data):
                at = (address + done) & LINEAR_MASK
                chunk = min(len(data) - done, PAGE_SIZE - (at & PAGE_OFFSET_MASK))
                self._write_piece(at, data[done:done + chunk])
                done += chunk
        except Exception:
            return b"E14"
        finally:
            if done:
                self.flush_translations()
        return b"OK"

    def _write_piece(self, at: int, piece: bytes) -> None:
        try:
            self.vm.write_linear(at, piece, debug=True)
        except Exception:
            # A read-only page (code, CR0.WP): a debugger writes anyway, as QEMU's
            # gdbstub does, through the read translation.
            phys = self.vm.mode.translate(at, write=False, user=False, set_ad=False)
            if is_unassigned_host(phys):
                raise
            self.vm.engine.write_phys(phys, piece)

    def flush_translations(self) -> None:
        """Drop Unicorn's translated blocks: code written, a breakpoint placed, or a step
        ahead (a block translated without the instruction counter runs past a step)."""
        try:
            self.vm.engine.flush_translations()
        except Exception:
            log.exception("gdb: flushing translated blocks")
