"""Overhead benchmarks: every workload in every available mode (pytest-benchmark).

The timed function boots the workload once with its default N; ``extra_info`` carries
what the report needs: the counts of one iteration (a counted N / 2N pair, measured
once outside the timing), and their modeled cycles on the chosen profile. A pair that
cannot run is skipped with the reason (the report lists it).
"""
from __future__ import annotations

import pytest

from vmm.cost.model import model_cycles
from vmm.cost.workloads import WORKLOADS, WorkloadError, boot, cannot_run, check, measure
from vmm.modes import available_modes

PAIRS = [(w, m) for w in WORKLOADS for m in available_modes()]


@pytest.mark.parametrize("workload,mode", PAIRS, ids=[f"{w.name}-{m}" for w, m in PAIRS])
def test_overhead(benchmark, cycle_profile, workload, mode):
    reason = cannot_run(workload, mode)
    if reason:
        pytest.skip(f"{workload.name} cannot run in {mode}: {reason}")
    try:
        m = measure(workload, mode)
    except WorkloadError as err:
        pytest.fail(str(err))
    model = model_cycles(m.per_iteration, mode, cycle_profile)
    benchmark.extra_info.update({
        "workload": workload.name, "mode": mode, "profile": cycle_profile.name,
        "iterations": m.iterations, "cycles_per_iteration": model.total,
        "by_category": model.by_category(), "measurement": m.to_json(),
    })

    def one_boot():
        result, _ = boot(workload, mode, m.iterations, observe=False)
        check(result, workload, mode)
        return result
    benchmark.pedantic(one_boot, rounds=3, iterations=1)
