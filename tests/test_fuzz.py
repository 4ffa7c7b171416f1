"""The fuzz harnesses at CI size: every harness, every mode it covers, a fixed seed, and no
crash, hang or escape allowed. The long run is ``vmm fuzz --cases 10000`` (docs/fuzz.md)."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from vmm.fuzz import HARNESSES, guest, replay, save_findings
from vmm.fuzz.core import Containment, HarnessReport, Run, canary_pattern, run_vm
from vmm.modes import MODES
from vmm.vm import VM

SEED = 20240607
# Cases per harness: each runs in every mode the harness covers, so the runs are a few
# hundred per harness (ept's cases are mostly walks, microseconds each).
CI_CASES = {"instructions": 60, "paging": 60, "ept": 300, "vmcs": 150, "hypercalls": 300}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_finds_no_crash_hang_or_escape(name, tmp_path):
    # In a child process (`vmm fuzz`): a crash inside the engine (a segmentation fault)
    # then fails this test with its reproducer instead of ending the whole test run.
    assert HARNESSES[name].unavailable(MODES) is None
    saved = tmp_path / "findings"
    proc = run_cli("fuzz", "--harness", name, "--cases", str(CI_CASES[name]), "--seed", str(SEED),
                   "--save", str(saved), timeout=600)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    inflight = saved / "inflight.json"
    detail = out[-3000:] + (f"\nprocess died (status {proc.returncode}) in the run of {inflight.read_text()}"
                            f"\n{err[-2000:]}" if inflight.exists() else "")
    assert proc.returncode == 0, detail
    runs = int(out.split("no crash, hang or escape in ")[1].split()[0])
    assert runs >= 150


def test_the_same_seed_gives_the_same_outcomes():
    first = HARNESSES["vmcs"].run(8, seed=5, modes=("vtx",))
    second = HARNESSES["vmcs"].run(8, seed=5, modes=("vtx",))
    assert first.by_mode == second.by_mode and first.notes == second.notes


def _write_canary_vm():
    image = guest.load(guest.kernel_image([]))
    return VM(image, mode="native", ram_size=guest.RAM_SIZE, serial_output=lambda data: None, timeout=2.0)


def test_containment_sees_a_changed_canary_page():
    # The detector itself: a VMM bug that writes VMM-private memory must not go unseen.
    vm = _write_canary_vm()
    guard = Containment(vm)
    assert guard.breaches() == []
    victim = guard.canaries[0]
    assert vm.engine.read_phys(victim, 16) == canary_pattern(victim)[:16]
    vm.engine.write_phys(victim + 100, b"\x00")
    assert any("canary page" in b for b in guard.breaches())


def test_run_vm_turns_an_escaping_exception_into_a_crash_with_a_reproducer(tmp_path):
    report = HarnessReport("instructions", ("native",), seed=1)
    run = Run(report, "native", {"harness": "instructions", "mode": "native", "seed": 1, "index": 0,
                                 "case": {"kind": "slots", "instructions": []}})

    def broken(vm):
        raise KeyError("a VMM bug")
    run_vm(run, _write_canary_vm, prepare=broken)
    assert report.crashes == 1 and "KeyError" in report.findings[0].detail
    assert "Traceback" in report.findings[0].traceback
    (path,) = save_findings([report], str(tmp_path))
    saved = json.loads(open(path).read())
    assert saved["reproducer"]["case"] == {"kind": "slots", "instructions": []}
    # Replaying the recorded case runs it for real (the guest just exits).
    again = replay(saved)
    assert again.ok and again.outcomes["EXIT"] == 1


@pytest.mark.slow
def test_fuzz_command_prints_a_summary_and_exits_0_when_all_held():
    proc = run_cli("fuzz", "--harness", "vmcs", "--mode", "vtx", "--cases", "5", "--seed", "3", timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "vmcs" in out and "no crash, hang or escape in 5 runs" in out


@pytest.mark.parametrize("args, fragment", [
    (("--cases", "0"), "--cases"),
    (("--harness", "nosuch"), "--harness"),
    (("--mode", "nosuch"), "--mode"),
])
def test_fuzz_command_rejects_bad_arguments(args, fragment):
    proc = run_cli("fuzz", *args)
    assert proc.returncode == 2 and fragment in proc.stderr.decode()
