"""pytest-benchmark suites: the overhead runs of `vmm bench` and the tool's own speed.

    python -m pytest bench/ --benchmark-json out.json
    python -m vmm.cost.report out.json            # the overhead table and plot from it
    pytest-benchmark compare                       # wall time across saved runs

Not part of the test suite (pyproject's testpaths is tests/). Each overhead benchmark
times one boot of a workload (N iterations, no counting hook) and stores in
``benchmark.extra_info`` the counts per iteration (from a counted N / 2N pair) and the
modeled cycles on the profile named by ``--cycle-profile`` (default haswell-2013).
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # bench/compute.py and friends


def pytest_addoption(parser):
    parser.addoption("--cycle-profile", default=None,
                     help="cycle profile for the modeled cycles in extra_info (default haswell-2013)")


@pytest.fixture(scope="session")
def cycle_profile(request):
    from vmm.cost.profile import DEFAULT_PROFILE, load_profile
    return load_profile(request.config.getoption("--cycle-profile") or DEFAULT_PROFILE)
