"""Device pages (the local APIC) from real guest code, in every mode: each store reaches
the device exactly once, including one that reprograms the APIC timer and so ends the
run for the VMM to replan (Unicorn re-executes a store interrupted inside its MMIO
callback; the VMM absorbs that replay)."""
from __future__ import annotations

import pytest

from conftest import make_vm
from vmm.modes import MODES
from vmm.vm import StopKind

SRC = """
    mov esp, 0x180000
    mov esi, 10
l:  mov dword ptr [0xfee00080], esi
    dec esi
    jnz l
    mov dword ptr [0xfee003e0], 0xb       # timer divide by 1
    mov dword ptr [0xfee00320], 0x10030   # LVT timer: masked, vector 0x30
    mov dword ptr [0xfee00380], 1000      # initial count: the timer starts
    mov eax, dword ptr [0xfee00080]
    mov edi, eax
    mov al, 0
    out 0xf4, al
"""


@pytest.mark.parametrize("mode", [m for m in MODES if m != "pv"])
def test_apic_stores_reach_the_device_once_each(mode):
    vm, _ = make_vm(SRC, mode=mode, timeout=10)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    lapic = vm.board.lapic
    assert vm.engine.reg("edi") == 1
    assert vm.board.mmio_bus.accesses["lapic"] == 10 + 3 + 1
    assert lapic.read_register(0x380) == 1000
