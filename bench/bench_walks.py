"""TLB-miss cost: a 1-D walk in ``native`` against a 2-D walk in ``vtx-ept``, one run.

    python bench/bench_walks.py [--pages N] [--rounds R]

The guest maps 16 MiB with 32-bit paging, then R times reads one dword from each of N
pages and reloads CR3 (which empties the TLB), so every read is a TLB miss: the MMU
hook walks the guest's tables (native: 2 references) or the guest's tables through EPT
(vtx-ept: 14 references, 2 guest entries + 3 x 4 EPT entries). The first round also
pays for populating EPT (violations, backing), so the guest runs twice, with R and 2R
rounds, and the difference gives the steady-state cost of one miss: wall time and
references per miss for each mode, side by side. Target: under 30 us per 2-D walk.
"""
from __future__ import annotations

import argparse
import time

from keystone import KS_ARCH_X86, KS_MODE_32, Ks

BASE, RAM = 0x100000, 32 << 20


def guest(pages: int, rounds: int) -> bytes:
    src = f"""
        mov edi, 0x201000
        mov eax, 3
        mov ecx, 4096
    fill_pt:
        mov [edi], eax
        add eax, 0x1000
        add edi, 4
        loop fill_pt
        mov edi, 0x200000
        mov eax, 0x201003
        mov ecx, 4
    fill_pd:
        mov [edi], eax
        add eax, 0x1000
        add edi, 4
        loop fill_pd
        mov eax, 0x200000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov ebx, {rounds}
    round:
        mov esi, 0x400000
        mov ecx, {pages}
    touch:
        mov eax, [esi]
        add esi, 0x1000
        loop touch
        mov eax, cr3
        mov cr3, eax
        dec ebx
        jnz round
        mov al, 0
        out 0xf4, al
        hlt
    """
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, BASE)[0])


def run_once(mode: str, code: bytes) -> tuple[int, int, float]:
    from vmm.loader.image import load_image
    from vmm.vm import VM, StopKind

    image = load_image(code, ram_size=RAM, kind="flat", load_address=BASE)
    vm = VM(image, mode=mode, ram_size=RAM, serial_output=lambda b: None, timeout=None)
    start = time.perf_counter()
    result = vm.run()
    elapsed = time.perf_counter() - start
    assert result.kind is StopKind.EXIT, result.message
    refs = result.memory["walk references"] if mode == "vtx-ept" else vm.mode.walker.references
    return vm.mode.tlb_fills, refs, elapsed


def measure(mode: str, pages: int, rounds: int, repeat: int) -> dict:
    """Steady state: (run with 2R rounds) - (run with R rounds), best of ``repeat``."""
    short = min((run_once(mode, guest(pages, rounds)) for _ in range(repeat)), key=lambda r: r[2])
    long = min((run_once(mode, guest(pages, 2 * rounds)) for _ in range(repeat)), key=lambda r: r[2])
    misses = long[0] - short[0]
    return {"misses": misses, "us_per_miss": (long[2] - short[2]) / misses * 1e6,
            "refs_per_miss": (long[1] - short[1]) / misses, "seconds": long[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = {mode: measure(mode, args.pages, args.rounds, args.repeat) for mode in ("native", "vtx-ept")}
    print(f"{'mode':8s} {'misses':>10s} {'us/miss':>8s} {'refs/miss':>9s} {'seconds':>8s}  (steady state)")
    for mode, r in rows.items():
        print(f"{mode:8s} {r['misses']:10d} {r['us_per_miss']:8.2f} {r['refs_per_miss']:9.2f} {r['seconds']:8.2f}")
    ept = rows["vtx-ept"]["us_per_miss"]
    print(f"2-D walk: {ept:.1f} us per miss, {ept / rows['native']['us_per_miss']:.1f}x the 1-D walk; "
          f"target < 30 us: {'met' if ept < 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
