"""The tool's own speed, side by side in one run (pytest-benchmark groups):

* guest MIPS on the compute-bound loop of bench/compute.py: raw Unicorn (no VMM),
  ``native`` and ``vtx-ept``;
* CPUID VM exits per second in ``vtx`` (bench/bench_exits.py's loop);
* 2-D walks per second in ``vtx-ept`` beside 1-D walks in ``native``
  (bench/bench_walks.py's guest: every load a TLB miss).

Rates go to ``extra_info``; compare modes within one run, not against fixed seconds.
"""
from __future__ import annotations

import pytest

import bench_exits
import bench_walks
from compute import LOAD_ADDRESS, compute_loop, run_raw_unicorn

ITERATIONS = 10_000_000
CPUIDS = 20_000
PAGES, ROUNDS = 1024, 4


def make_vm(code: bytes, mode: str, ram: int = 16 << 20):
    from vmm.loader.image import load_image
    from vmm.vm import VM

    image = load_image(code, ram_size=ram, kind="flat", load_address=LOAD_ADDRESS)
    return VM(image, mode=mode, ram_size=ram, serial_output=lambda b: None, timeout=None)


def run_vm(vm):
    from vmm.vm import StopKind

    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return result


def timed_boot(benchmark, code: bytes, mode: str):
    """Time vm.run() only: building the VM is set-up, as Unicorn's mem_map is in the raw run."""
    return benchmark.pedantic(run_vm, setup=lambda: ((make_vm(code, mode),), {}), rounds=3, iterations=1)


@pytest.mark.benchmark(group="guest MIPS (compute loop)")
@pytest.mark.parametrize("engine", ["raw unicorn", "native", "vtx-ept"])
def test_guest_mips(benchmark, engine):
    code, instructions = compute_loop(ITERATIONS)
    if engine == "raw unicorn":
        benchmark.pedantic(lambda: run_raw_unicorn(code), rounds=3, iterations=1)
    else:
        timed_boot(benchmark, code, engine)
    benchmark.extra_info.update({"instructions": instructions,
                                 "mips": instructions / benchmark.stats.stats.min / 1e6})


@pytest.mark.benchmark(group="CPUID exits per second (vtx)")
@pytest.mark.parametrize("engine", ["raw unicorn hook", "vtx"])
def test_cpuid_exits(benchmark, engine):
    code = bench_exits.loop(CPUIDS, "cpuid")
    if engine == "vtx":
        result = timed_boot(benchmark, code, "vtx")
        assert sum(result.exits.values()) >= CPUIDS
    else:
        benchmark.pedantic(lambda: bench_exits.raw(code, hook_cpuid=True), rounds=3, iterations=1)
    benchmark.extra_info.update({"cpuid": CPUIDS, "per_second": CPUIDS / benchmark.stats.stats.min})


@pytest.mark.benchmark(group="page walks per second")
@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_walks(benchmark, mode):
    code = bench_walks.guest(PAGES, ROUNDS)
    box = {}

    def run():
        box["misses"], box["references"], _ = bench_walks.run_once(mode, code)
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update({"tlb_misses": box["misses"], "references": box["references"],
                                 "walks_per_second": box["misses"] / benchmark.stats.stats.min,
                                 "references_per_walk": box["references"] / box["misses"]})
