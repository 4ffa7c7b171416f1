"""Shared helpers: assemble small flat guests, run images through the real VM and CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, Ks

from vmm.loader.image import load_image
from vmm.vm import VM

FLAT_BASE = 0x100000
RAM = 16 << 20


def assemble(src: str, base: int = FLAT_BASE, bits: int = 32) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_32 if bits == 32 else KS_MODE_16)
    return bytes(ks.asm(src, base)[0])


def run_flat(src: str, **vm_args):
    """Assemble ``src`` at FLAT_BASE, boot it in a VM, return (result, serial bytes)."""
    out = bytearray()
    image = load_image(assemble(src), ram_size=RAM, kind="flat", load_address=FLAT_BASE)
    vm_args.setdefault("timeout", 20)
    vm = VM(image, ram_size=RAM, serial_output=out.extend, **vm_args)
    return vm.run(), bytes(out)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
