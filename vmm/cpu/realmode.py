"""Real-address mode on a board without firmware: what the engine does not do itself.

* **IP wraps at 0xFFFF.** In real mode IP is 16 bits: the instruction after one that ends
  at offset 0xFFFF is fetched from CS:0000 (SDM vol. 3 §20.1.1; QEMU TCG does so too,
  measured with a boot sector). Unicorn goes on at CS.base + 0x10000. The engine is
  redirected there: a code hook over linear 0x10000-0x10ffff (the only addresses a
  real-mode IP above 0xFFFF can reach; code below 64 KiB, a boot sector's, never pays for
  it) sets EIP to EIP & 0xFFFF. It is installed for an image entered in real mode and
  removed at the first instruction it sees in protected mode.
* **A jump to the reset vector F000:FFF0** is how a real-mode program reboots the PC. On
  QEMU the BIOS starts again; this board has no BIOS, so unless the image put code there
  the VM stops with :class:`NoFirmware` ("reset") instead of running zeros.
* **INT n through an empty vector.** The interrupt vector table starts zero-filled and no
  BIOS fills it: an interrupt whose vector is 0000:0000 would run the IVT itself as code.
  Delivery stops the VM with "no BIOS: INT 10h from 0000:7C12" (the INT's own CS:IP).
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE

from ..x86 import CR0, vector_name

RESET_VECTOR = 0xFFFF0                 # F000:FFF0, linear
RESET_CS, RESET_IP = 0xF000, 0xFFF0
IP_MASK = 0xFFFF
#: Linear addresses a real-mode CS:IP with IP > 0xFFFF can reach: 0x10000 + CS * 16 + small.
WRAP_RANGE = (0x10000, 0x10FFFF)
INT_IMM8 = 0xCD                        # INT imm8; INT3 (0xCC) and INTO (0xCE) are one byte


class NoFirmware(Exception):
    """The guest asked the missing BIOS for something; ``reset`` tells a reboot apart."""

    def __init__(self, message: str, reset: bool = False):
        super().__init__(message)
        self.reset = reset


def covers(chunks, address: int) -> bool:
    """Whether a loader's chunks write ``address``."""
    return any(a <= address < a + len(b) for a, b in chunks)


def install(engine, real_mode: bool, chunks) -> None:
    """Arm the real-mode checks for an image: the IP wrap when it starts in real mode,
    the reset stop unless the image brings code for the reset vector."""
    if real_mode:
        _install_wrap(engine)
    if not covers(chunks, RESET_VECTOR):
        engine.add_breakpoint(RESET_VECTOR, lambda _address: _reset(engine))


def _reset(engine) -> None:
    if engine.reg("cr0") & CR0.PE:
        return   # protected-mode code at linear 0xffff0: no reset
    raise NoFirmware(f"jump to the reset vector {RESET_CS:04X}:{RESET_IP:04X} from real mode, "
                     f"and no firmware on the board", reset=True)


def _install_wrap(engine) -> None:
    handle: list[int] = []

    def wrap(uc, address, size, data) -> None:
        try:
            if engine.reg("cr0") & CR0.PE:
                engine.remove_hook(handle[0])
                return
            eip = engine.reg("eip")
            if eip > IP_MASK:
                engine.set_reg("eip", eip & IP_MASK)
        except BaseException as exc:  # noqa: BLE001  (handed to the engine, re-raised from run)
            engine.fail(exc)

    handle.append(engine.uc.hook_add(UC_HOOK_CODE, wrap, None, *WRAP_RANGE))


def empty_vector(engine, vector: int, software: bool) -> NoFirmware:
    """The stop for an event whose IVT entry is 0000:0000 (nothing installed it)."""
    cs, ip = engine.reg("cs"), engine.reg("eip") & IP_MASK
    if software:
        at = ((cs << 4) + ip - 2) & 0xFFFFF
        ip = (ip - (2 if engine.read_phys(at, 1)[0] == INT_IMM8 else 1)) & IP_MASK
        return NoFirmware(f"no BIOS: INT {vector:02X}h from {cs:04X}:{ip:04X}")
    return NoFirmware(f"no BIOS: {vector_name(vector)} (vector {vector:02X}h) at {cs:04X}:{ip:04X} "
                      f"through an empty interrupt vector")
