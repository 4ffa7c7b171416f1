"""The cost model on real guest runs: exact per-iteration counts from N / 2N runs, and
cycles that are those counts times the profile's numbers, nothing else."""
from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest

from vmm.cost.counters import Counts
from vmm.cost.model import model_cycles, overhead
from vmm.cost.profile import load_profile
from vmm.cost.workloads import WorkloadError, measure

SMALL = {"tlbmiss": 1, "forkwait": 2}


@lru_cache(maxsize=None)
def per_iteration(workload: str, mode: str) -> Counts:
    return measure(workload, mode, SMALL.get(workload, 16)).per_iteration


def test_one_iteration_of_cpuid_is_one_exit_and_five_instructions():
    c = per_iteration("cpuid", "vtx")
    assert c.exits == Counter({"CPUID": 1})
    assert c.instructions == 5          # xor eax; xor ecx; cpuid; dec esi; jnz
    native = per_iteration("cpuid", "native")
    assert native.instructions == 5 and not native.exits


def test_model_arithmetic_on_a_port_read():
    p = load_profile("haswell-2013")
    c = per_iteration("in", "vtx")
    assert c.exits == Counter({"IO_INSTRUCTION": 1}) and c.instructions == 3
    b = model_cycles(c, "vtx", p)
    expected = (3 * p.cost("native.guest_instruction").cycles + p.cost("vmm.vmx_round_trip").cycles
                + p.cost("handler.IO_INSTRUCTION").cycles)
    assert b.total == pytest.approx(expected)
    assert sum(b.by_category().values()) == pytest.approx(b.total)
    assert all(line.cost.source and line.cost.label in "CDSR" for line in b.lines)
    n = model_cycles(per_iteration("in", "native"), "native", p)
    assert n.total == pytest.approx(3 * p.cost("native.guest_instruction").cycles + p.cost("native.port_io").cycles)
    assert overhead(b.total, n.total) == pytest.approx(b.total / n.total)


def test_a_guest_fault_is_a_delivery_natively_and_shadow_work_under_vtx():
    p = load_profile()
    native = per_iteration("pgfault", "native")
    assert native.injected == Counter({"exception": 1})
    assert native.walk_references["guest"] > 0
    vtx = per_iteration("pgfault", "vtx")
    assert vtx.memory["true page faults (injected)"] == 1
    assert vtx.exits["INVLPG"] == 1 and vtx.exits["EXCEPTION_NMI"] >= 2
    lines = {line.event: line for line in model_cycles(vtx, "vtx", p).lines}
    assert lines["guest page faults reflected"].count == 1
    assert lines["VM exit round trips"].count == vtx.total_exits


@pytest.mark.slow
def test_tlbmiss_walks_two_dimensionally_under_ept():
    ept = per_iteration("tlbmiss", "vtx-ept")
    vtx = per_iteration("tlbmiss", "vtx")
    # 2048 loads, each a TLB miss after the CR3 reload: 14 references per 2-D walk
    # (2-level guest paging under 4-level EPT) against 2 through the shadow tables.
    assert ept.walk_references["2-D"] >= 14 * 2048
    assert 2 * 2048 <= vtx.walk_references["shadow"] < 3 * 2048
    assert vtx.exits == Counter({"CR_ACCESS": 2})   # MOV from and to CR3
    assert not ept.exits


def test_unpriced_events_are_reported_not_dropped():
    c = Counts(instructions=10, events={"novel": Counter({"thing": 3})})
    b = model_cycles(c, "bt", load_profile())
    assert b.unmodeled == {"novel: thing": 3}


def test_software_modes_price_a_hypercall_once():
    p = load_profile()
    c = Counts(events={"hypercalls": Counter({"mmu_update": 2})})   # as pv counts them: once, not as exits
    b = model_cycles(c, "pv", p)
    assert {line.event: line.count for line in b.lines} == {"hypercalls: mmu_update": 2}
    assert b.total == pytest.approx(2 * p.event("hypercalls", "mmu_update").cycles)


def test_a_blocked_workload_says_why():
    from dataclasses import replace

    from vmm.cost.workloads import get_workload

    blocked = replace(get_workload("cr8wr"), blocked="the APIC model is out for repair")
    with pytest.raises(WorkloadError, match="cannot run in native: the APIC model is out for repair"):
        measure(blocked, "native")