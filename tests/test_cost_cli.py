"""`vmm bench` and the report builder on a small selection: table, JSON, CSV, PNG."""
from __future__ import annotations

import csv
import json

import pytest

from vmm.cost import report as rep


@pytest.mark.slow
def test_bench_writes_json_csv_png_and_prints_the_table(tmp_path, cli):
    out = tmp_path / "out"
    proc = cli("bench", "-w", "in,callret", "-m", "native", "-m", "vtx-ept", "-n", "4", "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    for word in ("cycles/iter", "overhead", "in", "callret", "native", "vtx-ept", "1.00x",
                 "port accesses (bus) 1", "handler: IO_INSTRUCTION 1"):
        assert word in text, word
    data = json.loads((out / "bench.json").read_text())
    assert data["profile"]["name"] == "haswell-2013"
    rows = {(r["workload"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {("in", "native"), ("in", "vtx-ept"), ("callret", "native"), ("callret", "vtx-ept")}
    assert rows[("in", "vtx-ept")]["measurement"]["per_iteration"]["exits"] == {"IO_INSTRUCTION": 1.0}
    assert rows[("callret", "native")]["overhead"] == 1.0
    with (out / "bench.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[0]["profile"] == "haswell-2013"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same counts, priced again on another profile, without running anything
    again = cli("bench", "--from-json", str(out / "bench.json"), "--profile", "p4-2005")
    assert again.returncode == 0 and "p4-2005" in again.stdout.decode()
    assert "15,834" in again.stdout.decode()  # in under VT-x on the P4: 3 instructions + exit + handler


def test_report_builder_reads_pytest_benchmark_json(tmp_path):
    from vmm.cost.workloads import measure

    m = measure("cpuid", "vtx", 4)
    bench_json = tmp_path / "out.json"
    bench_json.write_text(json.dumps({"benchmarks": [
        {"name": "test_overhead[cpuid-vtx]", "extra_info": {"workload": "cpuid", "mode": "vtx",
                                                           "profile": "nehalem-2008", "measurement": m.to_json()}},
        {"name": "test_guest_mips[native]", "extra_info": {"mips": 1000}}]}))
    report = rep.load_report(bench_json)
    assert report.profile.name == "nehalem-2008"
    (row,) = report.rows
    assert row.cycles == 5 + 952 + report.profile.cost("handler.default").cycles
    assert rep.main([str(bench_json), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "bench.png").is_file()


def test_bench_says_why_a_pair_did_not_run(monkeypatch):
    from click.testing import CliRunner

    import vmm.cost.report as report
    from vmm.cli import main
    from vmm.cost.workloads import WorkloadError

    real = report.measure

    def measure(w, mode, iterations=None):
        if mode == "bt":
            raise WorkloadError(f"{w} in bt: halted: guest halted with interrupts disabled")
        return real(w, mode, iterations)
    monkeypatch.setattr(report, "measure", measure)
    out = CliRunner().invoke(main, ["bench", "-w", "callret", "-m", "native,bt", "-n", "2"]).output
    assert "not run: note 1" in out and "callret in bt: halted" in out


def test_bench_rejects_unknown_names(cli):
    bad = cli("bench", "-w", "nosuch")
    assert bad.returncode == 2 and "no workload 'nosuch'" in bad.stderr.decode()
    listing = cli("bench", "--list")
    assert listing.returncode == 0 and "tlbmiss" in listing.stdout.decode() and "p4-2005" in listing.stdout.decode()
