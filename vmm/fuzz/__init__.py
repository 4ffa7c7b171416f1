"""Fuzz harnesses: hostile input for the VMM, run through the real engine in every mode.

Each harness draws cases with hypothesis (fixed seed, no database, no shrinking), runs
each case in every mode it covers, and returns a :class:`~vmm.fuzz.core.HarnessReport`:
outcome counts by stop kind, and the failures — ``CRASH`` (a Python exception escaped),
``HANG`` (a run overran its wall-clock budget), ``OOB`` (the guest reached memory outside
its VM) — with reproducers::

    from vmm.fuzz import HARNESSES
    report = HARNESSES["paging"].run(cases=200, seed=1)
    assert report.ok, report.findings

``vmm fuzz`` runs them from the command line (README, "Robustness").
"""
from __future__ import annotations

from .core import FAILURES, Finding, Harness, HarnessReport, replay, save_findings
from .ept import EptHarness
from .hypercalls import HypercallHarness
from .instructions import InstructionHarness
from .paging import PagingHarness
from .vmcs import VmcsHarness

HARNESSES: dict[str, Harness] = {h.name: h for h in (InstructionHarness(), PagingHarness(), EptHarness(),
                                                       VmcsHarness(), HypercallHarness())}

__all__ = ["FAILURES", "Finding", "HARNESSES", "Harness", "HarnessReport", "replay", "save_findings"]
