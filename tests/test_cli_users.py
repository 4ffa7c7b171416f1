"""What broke for people following the README: each test runs the real ``vmm`` command."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assemble, run_cli
from conftest import one_line_error as _one_line_error
from conftest import usage_error as _usage_error
from vmm.build.guests import build_guest

HELLO_BANNER = b"Hello from the vmm 'hello' guest!"


@pytest.fixture
def under_a_file(tmp_path):
    """A path whose parent is a plain file: nobody, root included, can write there."""
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    return blocker / "out"


# -- 4. unwritable outputs fail before the run --------------------------------------------

def test_stat_json_unwritable_fails_before_the_guest_runs(under_a_file):
    proc = run_cli("run", "hello", "--stat-json", str(under_a_file / "s.json"))
    _one_line_error(proc, "--stat-json")
    assert proc.stdout == b""              # the guest never ran


def test_trace_output_unwritable_fails_before_the_guest_runs(under_a_file):
    proc = run_cli("trace", "hello", "-o", str(under_a_file / "t.txt"))
    _one_line_error(proc, "-o")
    assert HELLO_BANNER not in proc.stderr


def test_bench_out_unwritable_fails_before_the_run(under_a_file):
    _one_line_error(run_cli("bench", "-w", "cpuid", "-m", "native", "-o", str(under_a_file)), "-o")


def test_fuzz_save_unwritable_fails_before_the_run(under_a_file):
    proc = run_cli("fuzz", "--harness", "instructions", "--mode", "native", "--cases", "1",
                   "--save", str(under_a_file / "findings"))
    _one_line_error(proc, "--save")
    assert b"vmm fuzz" not in proc.stdout


# -- 8. exit statuses ---------------------------------------------------------------------

def test_exit_status_qemu_convention_stays_the_default():
    assert run_cli("run", "hello").returncode == 1                      # (0 << 1) | 1
    assert run_cli("run", "hello", "--exit-status", "qemu").returncode == 1


def test_exit_status_guest_tells_success_from_a_vmm_stop(tmp_path):
    ok = run_cli("run", "hello", "--exit-status", "guest")
    assert ok.returncode == 0 and ok.stdout.startswith(HELLO_BANNER)
    spin = tmp_path / "spin.bin"
    spin.write_bytes(assemble("spin: jmp spin"))
    flat = ("--kind", "flat", "--load-address", "0x100000", "--exit-status", "guest")
    budget = run_cli("run", str(spin), *flat, "--max-instructions", "1000")
    assert budget.returncode == 124 and b"instruction budget" in budget.stderr
    timed_out = run_cli("run", str(spin), *flat, "--timeout", "0.5")
    assert timed_out.returncode == 124 and b"wall-clock" in timed_out.stderr
    halt = tmp_path / "halt.bin"
    halt.write_bytes(assemble("cli\nhlt"))
    halted = run_cli("run", str(halt), *flat)
    assert halted.returncode == 125 and b"halted" in halted.stderr
    # Under QEMU's convention all of these are 1, like the guest's success.
    assert run_cli("run", str(halt), "--kind", "flat", "--load-address", "0x100000").returncode == 1


def test_exit_status_guest_is_the_value_written(tmp_path):
    path = tmp_path / "three.bin"
    path.write_bytes(assemble("mov al, 3\nout 0xf4, al\nhlt"))
    flat = ("--kind", "flat", "--load-address", "0x100000")
    assert run_cli("run", str(path), *flat).returncode == 7          # (3 << 1) | 1
    assert run_cli("run", str(path), *flat, "--exit-status", "guest").returncode == 3


def test_run_help_explains_the_exit_statuses():
    text = " ".join(run_cli("run", "--help").stdout.decode().split())
    for fragment in ("--exit-status", "isa-debug-exit", "124", "125", "(value << 1) | 1", "--exit-status guest"):
        assert fragment in text, fragment


# -- 9. impossible values -------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (("run", "hello", "--max-instructions", "0"), "--max-instructions 0"),
    (("run", "hello", "--max-instructions", "-5"), "--max-instructions -5"),
    (("trace", "hello", "--max-instructions", "0"), "--max-instructions 0"),
    (("run", "hello", "--timeout", "-1"), "--timeout -1"),
    (("trace", "hello", "--timeout", "-1"), "--timeout -1"),
    (("walk", "hello", "--gva", "0", "--timeout", "-1"), "--timeout -1"),
    (("trace", "hello", "--count", "0"), "--count 0"),
    (("trace", "hello", "--from", "-1"), "--from -1"),
    (("trace", "hello", "--range", "5:1"), "--range 5:1"),
    (("trace", "hello", "--range", "0x1000:0x1000"), "--range 0x1000:0x1000"),
    (("walk", "hello", "--gva", "0x100000000"), "32-bit"),
    (("walk", "hello", "--gva", "0x100000000", "--mode", "native"), "32-bit"),
    (("walk", "hello", "--gva", "0", "--at", "0"), "--at 0"),
])
def test_impossible_values(args, fragment):
    _one_line_error(run_cli(*args), fragment)


@pytest.mark.parametrize("value", ["1", "0", "4096", "1M", "4G"])
def test_impossible_ram(value):
    _usage_error(run_cli("run", "hello", "--ram", value), "guest RAM must be 2 to 3072 MiB")
    _usage_error(run_cli("run", "hello", "-m", value), "guest RAM must be 2 to 3072 MiB")


def test_ram_help_and_check_agree():
    text = " ".join(run_cli("run", "--help").stdout.decode().split())
    assert "2 to 3072" in text
    assert run_cli("run", "hello", "--ram", "2").returncode == 1   # the minimum the help gives boots


# -- 11. trace and walk take run's image options --------------------------------------------

def test_trace_and_walk_take_the_image_options(tmp_path):
    module = tmp_path / "mod.bin"
    module.write_bytes(b"module bytes")
    common = ("--cmdline", "root=x", "--module", str(module), "--ram", "16")
    traced = run_cli("trace", "hello", *common, "--count", "2")
    assert traced.returncode == 1, traced.stderr
    walked = run_cli("walk", "hello", *common, "--gva", "0x100000", "--mode", "native")
    assert walked.returncode == 0, walked.stderr
    # Flat images need --kind and --load-address: the same spelling as run.
    flat = tmp_path / "three.bin"
    flat.write_bytes(assemble("mov al, 3\nout 0xf4, al\nhlt"))
    spec = ("--kind", "flat", "--load-address", "0x100000")
    assert run_cli("trace", str(flat), *spec).returncode == 7
    assert b"guest exit" in run_cli("walk", str(flat), *spec, "--gva", "0x100000", "--mode", "native").stdout


def test_trace_and_walk_take_vmcs_edits():
    traced = run_cli("trace", "hello", "--mode", "vtx", "--exits-only", "--vmcs", "NO_SUCH_FIELD=1")
    _one_line_error(traced, "NO_SUCH_FIELD")
    walked = run_cli("walk", "hello", "--mode", "vtx", "--gva", "0", "--control", "NO_SUCH_CONTROL")
    _one_line_error(walked, "NO_SUCH_CONTROL")
    assert run_cli("trace", "hello", "--mode", "vtx", "--exits-only", "--control", "HLT_EXITING=off").returncode == 1
    _one_line_error(run_cli("trace", "hello", "--vmcs", "EXCEPTION_BITMAP=0"), "VT-x mode")


def test_the_image_options_are_one_set():
    """run, trace and walk document the image options in the same words."""
    def options(command):
        text = run_cli(command, "--help").stdout.decode()
        return {name: " ".join(text.split(name, 1)[1].split()[:6]) for name in
                ("--cmdline", "--module", "--kind", "--load-address", "--control", "--vmcs")}
    assert options("trace") == options("walk")
    assert set(options("run")) == set(options("trace"))


# -- 12. vmm fuzz ---------------------------------------------------------------------------

def test_fuzz_harness_excluded_by_mode_says_so():
    proc = run_cli("fuzz", "--harness", "ept", "--harness", "instructions", "--mode", "native", "--cases", "2")
    assert proc.returncode == 0, proc.stderr
    assert b"ept: skipped, not selected by --mode (it runs in vtx-ept)" in proc.stdout


def test_fuzz_in_which_nothing_ran_fails():
    proc = run_cli("fuzz", "--harness", "ept", "--mode", "native", "--cases", "2")
    assert proc.returncode == 2
    assert b"nothing ran" in proc.stderr and b"Traceback" not in proc.stderr


# -- 14. QEMU's habits ----------------------------------------------------------------------

def test_qemu_spellings(tmp_path):
    elf = tmp_path / "hello.elf"
    elf.write_bytes(build_guest("hello").elf)
    module = tmp_path / "initrd.bin"
    module.write_bytes(b"initrd")
    proc = run_cli("run", "-kernel", str(elf), "-append", "console=ttyS0", "-initrd", str(module), "-m", "64M")
    assert proc.returncode == 1 and proc.stdout.startswith(HELLO_BANNER), proc.stderr
    assert run_cli("run", "-kernel", "hello", "-m", "1G").returncode == 1
    assert run_cli("run", "hello", "-m", "32").returncode == 1


def test_qemu_spellings_errors(tmp_path):
    _usage_error(run_cli("run"), "IMAGE_OR_GUEST")
    _one_line_error(run_cli("run", "hello", "-initrd", str(tmp_path / "none.bin")), "module file not found")
    _one_line_error(run_cli("run", "-kernel", str(tmp_path / "none.elf")), "image file not found")
    _one_line_error(run_cli("run", "hello", "-kernel", "hello"), "two images")
    _one_line_error(run_cli("run", "hello", "-S"), "--wait goes with --gdb")
    _one_line_error(run_cli("run", "hello", "-s", "--gdb", ":5555"), "-s means --gdb :1234")


# -- 5. an installed wheel boots the guests -------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages one by one (so that it can map vmm.guests onto
    guests/): a new subpackage of vmm must be named there too."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vmm").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"vmm.guests"}
    assert setuptools["package-dir"] == {"vmm.guests": "guests"}


@pytest.mark.slow
def test_installed_wheel_boots_a_guest(tmp_path):
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def check(*cmd, cwd=elsewhere, timeout=600):
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=timeout)
        assert proc.returncode == 0, (cmd, proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:])
        return proc

    check(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(wheels), cwd=REPO)
    wheel, = wheels.glob("vmm-*.whl")
    check(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    python = venv / "bin" / "python"
    check(str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel))
    where = check(str(python), "-c", "import vmm, sys; sys.stdout.write(vmm.__file__)").stdout.decode()
    assert where.startswith(str(venv)), where          # the installed copy, not the checkout
    booted = subprocess.run([str(venv / "bin" / "vmm"), "run", "hello", "--exit-status", "guest"], cwd=elsewhere,
                            env=env, capture_output=True, timeout=120)
    assert booted.returncode == 0, booted.stderr.decode()
    assert booted.stdout.startswith(HELLO_BANNER)
    assert list((tmp_path / "cache" / "vmm" / "guests").glob("hello-native-*.elf"))   # cached outside site-packages
    listed = check(str(venv / "bin" / "vmm"), "guests").stdout.decode()
    assert "macrobench" in listed


# -- 13. the overhead report --------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_cli("bench", "-w", "in,callret", "-m", "native,vtx", "-n", "4", "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    return out / "bench.json"


def _rows(text: str) -> set[tuple[str, str]]:
    """(workload, mode) of each table row (a blank workload cell continues the one above)."""
    rows, workload = set(), ""
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 6 and cells[1] in ("native", "vtx"):
            workload = cells[0] or workload
            rows.add((workload, cells[1]))
    return rows


def test_bench_prints_a_legend_under_the_table(bench_json):
    text = " ".join(run_cli("bench", "--from-json", str(bench_json)).stdout.decode().split())
    assert "below 1x" in text and "wall s: host seconds of both runs" in text and "shows as a fraction" in text


def test_from_json_honours_workload_and_mode(bench_json):
    every = run_cli("bench", "--from-json", str(bench_json))
    assert _rows(every.stdout.decode()) == {("in", "native"), ("in", "vtx"), ("callret", "native"),
                                            ("callret", "vtx")}
    some = run_cli("bench", "--from-json", str(bench_json), "-w", "in", "-m", "vtx")
    assert some.returncode == 0, some.stderr
    assert _rows(some.stdout.decode()) == {("in", "vtx")}
    row = next(line for line in some.stdout.decode().splitlines() if "│ vtx" in line)
    assert row.split("│")[4].strip().endswith("x")     # still priced against native, left out of the view
    _one_line_error(run_cli("bench", "--from-json", str(bench_json), "-w", "pgfault"), "not in the report")


def test_compare_paper_warns_off_the_paper_profile(bench_json):
    off = run_cli("bench", "--from-json", str(bench_json), "--compare-paper")
    assert b"warning:" in off.stdout and b"not on p4-2005" in off.stdout
    on = run_cli("bench", "--from-json", str(bench_json), "--compare-paper", "--profile", "p4-2005")
    assert on.returncode == 0 and b"warning:" not in on.stdout


# -- 14. gdb attaches to a running guest ---------------------------------------------------------

GDB = shutil.which("gdb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(GDB is None, reason="needs gdb")
@pytest.mark.parametrize("spelling", [("--gdb", ":{port}"), ("-s",)])
def test_gdb_attaches_to_a_running_guest(tmp_path, spelling):
    # The guest counts in EAX until EBX is cleared: only a debugger can let it out.
    path = tmp_path / "count.bin"
    path.write_bytes(assemble("mov ebx, 1\nxor eax, eax\nspin: inc eax\ncmp ebx, 0\njne spin\n"
                              "xor eax, eax\nout 0xf4, al\nhlt"))
    port = 1234 if spelling == ("-s",) else _free_port()
    if spelling == ("-s",):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip("port 1234 is taken")
    args = [a.format(port=port) for a in spelling]
    vmm = subprocess.Popen([sys.executable, "-m", "vmm.cli", "run", str(path), "--kind", "flat", "--load-address",
                            "0x100000", *args, "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = vmm.stderr.readline().decode()
        assert f"the guest runs; gdb can attach on 127.0.0.1:{port}" in line
        time.sleep(0.5)                                   # the guest runs without a debugger meanwhile
        out = subprocess.run([GDB, "-batch", "-nx", "-ex", "set architecture i386",
                              "-ex", f"target remote 127.0.0.1:{port}", "-ex", "printf \"eax=%u\\n\", $eax",
                              "-ex", "set var $ebx = 0", "-ex", "continue"],
                             capture_output=True, timeout=60).stdout.decode()
        eax = int(out.split("eax=", 1)[1].split()[0])
        assert eax > 1000, out                            # it had been counting before gdb came
        assert "exited with code 01" in out, out
        assert vmm.wait(timeout=30) == 1
    finally:
        if vmm.poll() is None:
            vmm.kill()
            vmm.communicate()


def test_gdb_without_wait_and_no_debugger_runs_to_the_end():
    proc = run_cli("run", "hello", "--gdb", f":{_free_port()}")
    assert proc.returncode == 1 and proc.stdout.startswith(HELLO_BANNER)
    assert b"gdb can attach" in proc.stderr
