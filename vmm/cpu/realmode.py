"""Real-address mode: what the engine does not do itself, and the reboot nothing answers.

* **IP wraps at 0xFFFF.** In real mode IP is 16 bits: the instruction after one that ends
  at offset 0xFFFF is fetched from CS:0000 (SDM vol. 3 §20.1.1; QEMU TCG does so too,
  measured with a boot sector). Unicorn goes on at CS.base + 0x10000. The engine is
  redirected there: a code hook over linear 0x10000-0x10ffff (the only addresses a
  real-mode IP above 0xFFFF can reach; code below 64 KiB, a boot sector's, never pays for
  it) sets EIP to EIP & 0xFFFF. It is installed for an image entered in real mode and
  removed at the first instruction it sees in protected mode.
* **A jump to the reset vector F000:FFF0** is how a real-mode program reboots the PC. On
  QEMU SeaBIOS starts again; this board has SeaBIOS's tables (:mod:`vmm.firmware`) but
  no BIOS code to rerun POST, so unless the image put code there the VM stops with
  :class:`NoFirmware` ("reset") before the jump the firmware left there runs.
* **Interrupts** go through the IVT the firmware filled (:mod:`vmm.firmware.ivt`): every
  vector has a handler, as under SeaBIOS, and a BIOS service the board does not have
  returns after a one-line notice. A vector the guest itself set to 0000:0000 (or one
  SeaBIOS leaves so, 60h-66h and 79h) is delivered there, as the CPU does.
"""
from __future__ import annotations

from unicorn import UC_HOOK_CODE

from ..x86 import CR0

RESET_VECTOR = 0xFFFF0                 # F000:FFF0, linear
RESET_CS, RESET_IP = 0xF000, 0xFFF0
IP_MASK = 0xFFFF
#: Linear addresses a real-mode CS:IP with IP > 0xFFFF can reach: 0x10000 + CS * 16 + small.
WRAP_RANGE = (0x10000, 0x10FFFF)


class NoFirmware(Exception):
    """The guest asked for what only BIOS code could do (``reset``: rerun POST)."""

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
                     f"and no firmware on the board to run POST again", reset=True)


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
