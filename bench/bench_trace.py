"""Traced instructions per second writing JSON lines, beside untraced speed, in one run.

    python bench/bench_trace.py [--iterations N]

The compute loop of bench/compute.py runs in ``native`` twice: once plain, once under
the tracer writing JSON lines to a file (every instruction: address, bytes, disassembly,
changed registers). Target: 300,000 traced instructions per second or more.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from compute import LOAD_ADDRESS, compute_loop  # noqa: E402


def run(code: bytes, trace_to: str | None) -> tuple[float, int]:
    from vmm.loader.image import load_image
    from vmm.trace.tracer import Tracer
    from vmm.vm import VM, StopKind

    image = load_image(code, ram_size=16 << 20, kind="flat", load_address=LOAD_ADDRESS)
    vm = VM(image, ram_size=16 << 20, serial_output=lambda b: None, timeout=None)
    out = open(trace_to, "w", buffering=1 << 20) if trace_to else None
    tracer = Tracer(vm, out, "jsonl") if out else None
    start = time.perf_counter()
    result = vm.run()
    elapsed = time.perf_counter() - start
    if out:
        out.close()
    assert result.kind is StopKind.EXIT, result.message
    return elapsed, tracer.instructions if tracer else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=250_000)
    args = parser.parse_args()
    code, instructions = compute_loop(args.iterations)
    plain = min(run(code, None)[0] for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.jsonl")
        traced, counted = min(run(code, path) for _ in range(3))
        size = os.path.getsize(path)
    print(f"untraced: {instructions / plain / 1e6:10.1f} M instructions/s")
    print(f"traced:   {counted / traced:10,.0f} instructions/s writing JSON lines "
          f"({size / counted:.0f} bytes per instruction)")
    print(f"target >= 300,000 traced instructions/s: {'met' if counted / traced >= 300_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
