"""Guest MIPS: raw Unicorn (no VMM) against the ``native`` mode, side by side in one run.

    python bench/bench_mips.py [--iterations N] [--repeat R]

Both run the same compute-bound loop (bench/compute.py). Raw Unicorn maps memory and
calls emu_start with no hook at all; ``native`` is the full VM (board, TLB-fill MMU,
exception hooks, I/O hooks). The target (issue: foundation) is native >= 50% of raw.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from compute import LOAD_ADDRESS, compute_loop, run_raw_unicorn  # noqa: E402


def native(code: bytes) -> float:
    from vmm.loader.image import load_image
    from vmm.vm import VM, StopKind

    image = load_image(code, ram_size=16 << 20, kind="flat", load_address=LOAD_ADDRESS)
    vm = VM(image, mode="native", ram_size=16 << 20, serial_output=lambda b: None, timeout=None)
    start = time.perf_counter()
    result = vm.run()
    elapsed = time.perf_counter() - start
    assert result.kind is StopKind.EXIT, result.message
    return elapsed


def measure(iterations: int, repeat: int) -> dict[str, float]:
    code, instructions = compute_loop(iterations)
    best = {"raw unicorn": min(run_raw_unicorn(code) for _ in range(repeat)),
            "native": min(native(code) for _ in range(repeat))}
    return {name: instructions / seconds / 1e6 for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=25_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mips = measure(args.iterations, args.repeat)
    for name, value in mips.items():
        print(f"{name:12s} {value:8.0f} guest MIPS")
    ratio = mips["native"] / mips["raw unicorn"]
    print(f"native / raw  {ratio:6.1%}  (target >= 50%)")


if __name__ == "__main__":
    main()
