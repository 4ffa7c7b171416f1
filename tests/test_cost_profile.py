"""Cycle profiles: every shipped number has a source and a label; broken files say
exactly which file and key is wrong, in one line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmm.cost.profile import (DEFAULT_PROFILE, LABELS, REQUIRED, ProfileError, list_profiles, load_profile,
                              profile_dir)

SHIPPED = ["haswell-2013", "nehalem-2008", "p4-2005", "skylake-2015"]


def test_the_four_profiles_ship_and_haswell_is_the_default():
    assert set(SHIPPED) <= set(list_profiles())
    assert DEFAULT_PROFILE == "haswell-2013"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_number_carries_its_source_and_label(name):
    p = load_profile(name)
    for section, keys in REQUIRED.items():
        for key in keys:
            assert f"{section}.{key}" in p.costs
    for key, cost in [("machine.clock_ghz", p.clock_ghz), *p.costs.items()]:
        assert cost.label in LABELS, key
        assert len(cost.source) > 10, key
        assert cost.cycles >= 0, key
    for category in ("callouts", "traps", "hypercalls", "translation"):
        assert p.event(category, "anything") is not None


def test_round_trips_are_the_published_figures():
    expected = {"p4-2005": (2409, "S"), "nehalem-2008": (952, "D"), "haswell-2013": (482, "D"),
                "skylake-2015": (604, "D")}
    for name, (cycles, label) in expected.items():
        rt = load_profile(name).cost("vmm.vmx_round_trip")
        assert (rt.cycles, rt.label) == (cycles, label)
    # Adams & Agesen's native port read, read in the paper (C)
    assert load_profile("p4-2005").cost("native.port_io").cycles == 3209
    assert load_profile("p4-2005").cost("native.port_io").label == "C"


def test_handler_falls_back_to_default():
    p = load_profile()
    assert p.handler("CPUID") is p.cost("handler.default")
    assert p.handler("IO_INSTRUCTION").key == "handler.IO_INSTRUCTION"


def _broken(tmp_path, edit) -> Path:
    text = (profile_dir() / "haswell-2013.toml").read_text()
    path = tmp_path / "broken.toml"
    path.write_text(edit(text))
    return path


def _one_line_error(path) -> str:
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_key_names_file_and_key(tmp_path):
    path = _broken(tmp_path, lambda t: re.sub(r"^port_io = .*\n", "", t, flags=re.M))
    assert "native.port_io: missing" in _one_line_error(path)


def test_missing_source(tmp_path):
    path = _broken(tmp_path, lambda t: re.sub(r'(walk_reference = \{ cycles = 7, label = "D"), source = "[^"]*"',
                                              r"\1", t))
    assert "native.walk_reference: missing 'source'" in _one_line_error(path)


def test_bad_label_and_bad_number(tmp_path):
    path = _broken(tmp_path, lambda t: t.replace('vmx_round_trip = { cycles = 482, label = "D"',
                                                 'vmx_round_trip = { cycles = 482, label = "X"'))
    assert "vmm.vmx_round_trip.label" in _one_line_error(path)
    path = _broken(tmp_path, lambda t: t.replace("vmx_round_trip = { cycles = 482,",
                                                 'vmx_round_trip = { cycles = "fast",'))
    assert "vmm.vmx_round_trip.cycles" in _one_line_error(path)


def test_missing_section_unknown_reason_and_bad_toml(tmp_path):
    path = _broken(tmp_path, lambda t: t.replace("[shadow]", "[shadowy]"))
    message = _one_line_error(path)
    assert "shadow" in message
    path = _broken(tmp_path, lambda t: t.replace("EPT_MISCONFIG =", "EPT_MISCONFUSED ="))
    assert "handler.EPT_MISCONFUSED: not an exit reason" in _one_line_error(path)
    path = _broken(tmp_path, lambda t: t + "\n[native\n")
    assert "not valid TOML" in _one_line_error(path)


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ProfileError) as err:
        load_profile("pentium-pro-1995")
    assert "haswell-2013" in str(err.value)


def test_cli_reports_a_broken_profile_in_one_line(tmp_path, cli):
    path = _broken(tmp_path, lambda t: re.sub(r"^mmio = .*\n", "", t, flags=re.M))
    proc = cli("bench", "-w", "callret", "-m", "native", "-n", "2", "--profile", str(path))
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert err.count("\n") == 0 and str(path) in err and "native.mmio: missing" in err
