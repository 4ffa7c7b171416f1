"""Wall cost of one CPUID VM-exit round trip in ``vtx``, beside a raw Unicorn hook.

    python bench/bench_exits.py [--iterations N] [--repeat R]

Both run the same loop of N CPUID instructions. "raw hook" is plain Unicorn with one
Python UC_HOOK_INSN CPUID callback that answers and returns (the floor any Python VMM
pays); "vtx exit" is the full path: exit-information fields, the exit table, the
handler's CPUID leaf, statistics, VM entry. The loop's own cost (the same loop with
NOPs instead of CPUID, raw) is subtracted from both. Target: under 5 us per exit.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from keystone import KS_ARCH_X86, KS_MODE_32, Ks  # noqa: E402
from compute import run_raw_unicorn  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

BASE = 0x100000


def loop(iterations: int, body: str) -> bytes:
    src = f"mov esi, {iterations}; spin: xor eax, eax; {body}; dec esi; jnz spin; mov al, 0; out 0xf4, al; hlt"
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, BASE)[0])


def raw(code: bytes, hook_cpuid: bool) -> float:
    def cpuid(uc, data):
        uc.reg_write(X.UC_X86_REG_EAX, 0)
        return 1
    return run_raw_unicorn(code, BASE, [(X.UC_X86_INS_CPUID, cpuid)] if hook_cpuid else [])


def vtx(code: bytes) -> float:
    from vmm.loader.image import load_image
    from vmm.vm import VM, StopKind

    image = load_image(code, ram_size=16 << 20, kind="flat", load_address=BASE)
    vm = VM(image, mode="vtx", ram_size=16 << 20, serial_output=lambda b: None, timeout=None)
    start = time.perf_counter()
    result = vm.run()
    elapsed = time.perf_counter() - start
    assert result.kind is StopKind.EXIT, result.message
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.iterations
    with_cpuid, with_nop = loop(n, "cpuid"), loop(n, "nop; nop")
    base = min(raw(with_nop, False) for _ in range(args.repeat))
    hook = min(raw(with_cpuid, True) for _ in range(args.repeat))
    exit_ = min(vtx(with_cpuid) for _ in range(args.repeat))
    hook_us, exit_us = (hook - base) / n * 1e6, (exit_ - base) / n * 1e6
    print(f"raw Unicorn CPUID hook   {hook_us:6.2f} us per CPUID")
    print(f"vtx CPUID exit round trip {exit_us:6.2f} us per exit  ({n / exit_:,.0f} exits/s)")
    print(f"ratio {exit_us / hook_us:.1f}x the bare hook; target < 5 us per exit: "
          f"{'met' if exit_us < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
