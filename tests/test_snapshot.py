"""Save/restore round trips: a VM saved to bytes and restored in a new process goes on
exactly as the VM that was saved does.

How a run is stopped at a point, honestly. Every run here has an instruction budget
(``BUDGET``, far above any guest's length), so virtual time is counted in slices the same
way in all of them. A point is a virtual time the uninterrupted run itself reaches
between two slices (recorded by :class:`ClockProbe`, a clocked device that only
watches); stopping there with ``max_instructions = point`` cuts no slice short, so the
stopped run has taken exactly the uninterrupted run's steps. The VM is then saved, the
snapshot restored in a fresh interpreter (``tests/snapshot_resume.py``) with the budget
set back to ``BUDGET``, and run to the end.

What is compared. With the VM that was saved, continued in this process: everything:
transcript, status, virtual time, exits by reason, the mode's memory counters and
events (wall-time fields excluded). With the uninterrupted run: transcript, status,
virtual time and exits by reason; its memory counters may differ by the TLB refills
after the save point, which flushes the TLB (``vmm.snapshot``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assemble
from snapshot_resume import outcome

from vmm.build.guests import build_guest, list_guests
from vmm.loader.image import load_image
from vmm.loader.xen import load_xen
from vmm.modes import MODES
from vmm.snapshot import (
    FORMAT_VERSION,
    MAGIC,
    SnapshotError,
    restore_vm,
    save_vm,
    snapshot_info,
)
from vmm.vm import VM, StopKind

BUDGET = 10 ** 8
RAM = 128 << 20
FRACTIONS = (0.25, 0.5, 0.75)
RESUME = Path(__file__).with_name("snapshot_resume.py")
GUESTS = [g.name for g in list_guests()]
MATRIX = [(g, m) for g in GUESTS for m in MODES]
QUICK = [("hello", "native"), ("paging", "bt"), ("timer", "vtx-ept"), ("user", "pv")]


class ClockProbe:
    """A clocked device that raises nothing and records every virtual time the board is
    advanced to: the points between slices where a run can stop without changing them."""

    def __init__(self) -> None:
        self.times: list[int] = []

    def next_event(self) -> None:
        return None

    def advance(self, now: int) -> None:
        self.times.append(now)


def guest_image(name: str, mode: str):
    """The image as the other tests run it: the pv flavour under the PV protocol in pv."""
    if mode == "pv":
        return load_xen(build_guest(name, "pv").elf, ram_size=RAM)
    return load_image(build_guest(name).elf, ram_size=RAM, image_name=name)


def make(name: str, mode: str, budget: int = BUDGET):
    out = bytearray()
    vm = VM(guest_image(name, mode), mode=mode, serial_output=out.extend, max_instructions=budget)
    return vm, out


def uninterrupted(name: str, mode: str):
    vm, out = make(name, mode)
    probe = ClockProbe()
    vm.board.clocked.append(probe)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return outcome(vm, result, bytes(out)), probe.times


def stop_points(times: list[int], total: int, fractions=FRACTIONS) -> list[int]:
    return [next(t for t in times if t >= f * total) for f in fractions]


def resume_in_new_process(snapshots: list[bytes], tmp_path: Path) -> list[dict]:
    paths = []
    for i, data in enumerate(snapshots):
        path = tmp_path / f"vm{i}.snap"
        path.write_bytes(data)
        paths.append(str(path))
    proc = subprocess.run([sys.executable, str(RESUME), str(BUDGET), *paths],
                          capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout)


def check_round_trips(name: str, mode: str, tmp_path: Path, fractions=FRACTIONS) -> None:
    reference, times = uninterrupted(name, mode)
    snapshots, continued, printed_before = [], [], []
    for point in stop_points(times, reference["instructions"], fractions):
        vm, out = make(name, mode, budget=point)
        stopped = vm.run()
        assert stopped.kind is StopKind.BUDGET, stopped.message
        data = save_vm(vm)
        assert save_vm(vm) == data, "saving the same VM twice gave different bytes"
        snapshots.append(data)
        printed_before.append(bytes(out))
        vm.max_instructions = BUDGET
        out.clear()
        continued.append(outcome(vm, vm.run(), bytes(out)))
    restored = resume_in_new_process(snapshots, tmp_path)
    for before, here, there in zip(printed_before, continued, restored):
        assert there == here, f"{name} in {mode}: the restored run differs from the saved VM's own"
        assert bytes.fromhex(there["transcript"]) == bytes.fromhex(reference["transcript"])
        assert before + bytes.fromhex(there["output"]) == bytes.fromhex(reference["output"])
        for key in ("kind", "status", "instructions", "exits"):
            assert there[key] == reference[key], f"{name} in {mode}: {key} differs from the uninterrupted run"


@pytest.mark.parametrize("name,mode", QUICK)
def test_round_trip_in_a_new_process(name, mode, tmp_path):
    check_round_trips(name, mode, tmp_path, fractions=(0.5,))


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", MATRIX)
def test_round_trip_every_guest_every_mode_three_points(name, mode, tmp_path):
    check_round_trips(name, mode, tmp_path)


# -- two VMs in one process share nothing ------------------------------------------------------
def run_in_steps(vms, steps: int) -> list[dict]:
    """Run the VMs round-robin, each stopping ``steps`` times on a budget, then to the end."""
    stops = {id(vm): [(i + 1) * total // (steps + 1) for i in range(steps)] for vm, _, total in vms}
    finished = {}
    while len(finished) < len(vms):
        for vm, out, _ in vms:
            if id(vm) in finished:
                continue
            pending = stops[id(vm)]
            vm.max_instructions = pending.pop(0) if pending else BUDGET
            result = vm.run()
            if result.kind is not StopKind.BUDGET:
                finished[id(vm)] = outcome(vm, result, bytes(out))
    return [finished[id(vm)] for vm, _, _ in vms]


def test_two_vms_interleaved_in_one_process_match_their_solo_runs():
    guests = [("timer", "vtx"), ("paging", "bt"), ("user", "pv")]
    totals = [uninterrupted(name, mode)[0]["instructions"] for name, mode in guests]
    solo = [run_in_steps([(*make(name, mode), total)], steps=5)[0]
            for (name, mode), total in zip(guests, totals)]
    together = run_in_steps([(*make(name, mode), total) for (name, mode), total in zip(guests, totals)], steps=5)
    assert together == solo


# -- the state itself -----------------------------------------------------------------------
HIDDEN_SEGMENT = """
    .byte 0x0f, 0x01, 0x15             # lgdt [gdtr]  (keystone would add a 0x66 prefix)
    .long gdtr
    mov ax, 0x10
    mov ds, ax
    mov ax, 0x18
    mov es, ax                        # ES.base = 0x200000 (cached)
    mov byte ptr [gdt + 0x18 + 4], 0   # the descriptor now says base 0: ES keeps its cache
    mov ecx, 20000
spin:
    dec ecx
    jnz spin
    mov al, byte ptr es:[0]            # 'C' through the cached base, 'D' through a reload
    mov dx, 0x3f8
    out dx, al
    mov al, 0
    out 0xf4, al
.align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf92200000ffff
gdtr:
    .word 31
    .long gdt
"""


def test_hidden_segment_state_survives_a_restore(tmp_path):
    data_image = assemble(HIDDEN_SEGMENT)
    image = load_image(data_image, ram_size=16 << 20, kind="flat", load_address=0x100000)
    out = bytearray()
    vm = VM(image, ram_size=16 << 20, serial_output=out.extend, max_instructions=30000)
    vm.engine.write_phys(0x200000, b"C")
    vm.engine.write_phys(0x000000, b"D")
    assert vm.run().kind is StopKind.BUDGET and not out
    restored = resume_in_new_process([save_vm(vm)], tmp_path)[0]
    assert bytes.fromhex(restored["output"]) == b"C"
    assert restored["status"] == 1


def test_a_restored_vm_carries_every_device_and_register():
    vm, _ = make("timer", "vtx", budget=60000)
    vm.run()
    data = save_vm(vm)
    twin = restore_vm(data, serial_output=lambda b: None, max_instructions=BUDGET)
    assert twin.board.save_state() == vm.board.save_state()
    assert twin.now == vm.now and twin.exits == vm.exits
    for reg in ("eax", "esp", "eip", "eflags", "cr0", "cr3", "cr4", "cs", "ss", "ds"):
        assert twin.engine.reg(reg) == vm.engine.reg(reg)
    assert save_vm(twin) == data   # and saving the restored VM gives the same bytes


def test_hello_snapshot_is_small_and_described():
    vm, _ = make("hello", "native", budget=4096)
    vm.run()
    data = save_vm(vm)
    info = snapshot_info(data)
    assert info["mode"] == "native" and info["ram_size"] == RAM and info["now"] == 4096
    assert len(data) < 64 * 1024    # zero pages of the 128 MiB are left out


# -- malformed input: one line, no traceback into the decoder ---------------------------------------
@pytest.fixture(scope="module")
def snapshot():
    vm, _ = make("hello", "native", budget=4096)
    vm.run()
    return save_vm(vm)


def one_line_error(data) -> str:
    with pytest.raises(SnapshotError) as err:
        restore_vm(data, serial_output=lambda b: None)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_truncated_snapshot(snapshot):
    assert "truncated" in one_line_error(snapshot[:-100])
    assert "header" in one_line_error(snapshot[:10])


def test_corrupted_snapshot(snapshot):
    corrupted = bytearray(snapshot)
    corrupted[len(corrupted) // 2] ^= 0xFF
    assert "checksum" in one_line_error(bytes(corrupted))


def test_wrong_version_and_not_a_snapshot(snapshot):
    newer = bytearray(snapshot)
    newer[len(MAGIC):len(MAGIC) + 2] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    assert "version" in one_line_error(bytes(newer))
    assert "magic" in one_line_error(b"\x7fELF" + bytes(100))
    assert "bytes" in one_line_error("not bytes")


def test_saving_while_running_is_refused():
    vm, _ = make("hello", "native", budget=4096)
    seen = []

    def save_inside_a_hook(_data):
        with pytest.raises(SnapshotError):
            save_vm(vm)
        seen.append(True)
    vm.board.uart.output = save_inside_a_hook
    vm.max_instructions = BUDGET
    vm.run()
    assert seen


# -- the declared device state ----------------------------------------------------------------
def test_device_state_round_trips_mid_sequence():
    """Devices saved in the middle of multi-byte sequences (a PIT count half written, a
    latched count half read, an 8259 between ICWs, bytes waiting in the UART) answer the
    rest of the sequence alike."""
    from vmm.devices import Board

    def program(board):
        bus = board.port_bus
        bus.write(0x43, 1, 0x34)          # channel 0, LSB then MSB, mode 2
        bus.write(0x40, 1, 0x9C)          # LSB written, MSB pending
        bus.write(0x43, 1, 0xB4)          # channel 2, mode 2
        bus.write(0x42, 1, 0x10)
        bus.write(0x42, 1, 0x00)
        bus.write(0x43, 1, 0x80)          # latch channel 2
        bus.read(0x42, 1)                 # latched LSB read, MSB pending
        bus.write(0x20, 1, 0x11)          # ICW1: the master now expects ICW2..ICW4
        bus.write(0x21, 1, 0x20)
        bus.write(0x3FC, 1, 0x10)         # UART loopback
        for byte in b"hi":
            bus.write(0x3F8, 1, byte)
        board.lapic.write_register(0x3E0, 0x3)
        board.lapic.write_register(0x320, 0x20040)
        board.lapic.write_register(0x380, 1000)
        board.cmos.io_write(0x70, 1, 0x8F)
        board.advance(777)

    def rest(board):
        bus = board.port_bus
        bus.write(0x40, 1, 0x2E)          # the pending MSB
        board.advance(5000)
        return ([bus.read(0x42, 1), bus.read(0x40, 1), bus.read(0x40, 1)]
                + [bus.write(0x21, 1, v) for v in (0x04, 0x01)] + [bus.read(0x21, 1)]
                + [bus.read(0x3F8, 1) for _ in range(3)] + [bus.read(0x3FD, 1)]
                + [board.lapic.read_register(0x390), board.pic.master.irr, board.cmos.io_read(0x71, 1),
                   board.next_event()])

    a = Board(ram_size=16 << 20, serial_output=lambda b: None)
    program(a)
    b = Board(ram_size=16 << 20, serial_output=lambda b: None)
    b.load_state(a.save_state())
    assert b.save_state() == a.save_state()
    assert rest(b) == rest(a)
    assert b.save_state() == a.save_state()


def test_a_board_state_is_plain_data():
    from dataclasses import fields, is_dataclass

    from vmm.devices import Board

    def plain(value):
        if is_dataclass(value):
            return all(plain(getattr(value, f.name)) for f in fields(value))
        if isinstance(value, (tuple, list)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, str, bytes))
    assert plain(Board(ram_size=16 << 20).save_state())


# -- what cannot be saved says where ------------------------------------------------------
def test_an_unsaveable_attribute_is_named():
    import threading

    vm, _ = make("hello", "native", budget=4096)
    vm.run()
    vm.mode.walker.lock = threading.Lock()
    with pytest.raises(SnapshotError, match=r"mode\.mmu\.walker\.lock"):
        save_vm(vm)


def test_wiring_a_fresh_vm_lacks_is_named_on_restore():
    vm, _ = make("hello", "native", budget=4096)
    vm.run()
    vm.mode.late_callback = lambda: None      # a closure set up after construction
    data = save_vm(vm)
    with pytest.raises(SnapshotError, match=r"mode\.late_callback.*wiring"):
        restore_vm(data, serial_output=lambda b: None)


REAL_MODE = """
    mov ax, 0x2000
    mov es, ax                        # ES.base = 0x20000 in real mode
    mov al, 0x41
    mov dx, 0x3f8
    out dx, al
    mov cx, 0x4000
spin:
    dec cx
    jnz spin
    mov al, byte ptr es:[0x10]
    out dx, al
    mov al, 0x21
    mov dx, 0xf4
    out dx, al
    hlt
"""


def test_a_real_mode_boot_sector_round_trips(tmp_path):
    code = assemble(REAL_MODE, 0x7C00, bits=16)
    sector = code + bytes(510 - len(code)) + b"\x55\xaa"
    image = load_image(sector, ram_size=16 << 20)
    out = bytearray()
    vm = VM(image, ram_size=16 << 20, serial_output=out.extend, max_instructions=20000)
    vm.engine.write_phys(0x20010, b"R")
    assert vm.run().kind is StopKind.BUDGET and out == b"A"
    restored = resume_in_new_process([save_vm(vm)], tmp_path)[0]
    assert bytes.fromhex(restored["transcript"]) == b"AR"
    assert restored["status"] == (0x21 << 1) | 1


# -- what the capture declares, and the wiring it leaves to a fresh VM ---------------------------
def test_every_declared_exception_names_a_real_attribute():
    """HOOK_TABLES and NOT_STATE name (class, attribute) pairs the modes really have: a
    renamed class or attribute would otherwise leave its declaration silently unused."""
    from vmm.snapshot import ATTACHED, HOOK_TABLES, NOT_STATE, _class_path, _Encoder, _resolve, _roots

    met = set()
    for mode in MODES:
        vm, _ = make("paging", mode, budget=20000)
        vm.run()
        encoder = _Encoder(_roots(vm))
        encoder.encode(vm.mode, "mode")
        met |= {(_class_path(type(obj)), name) for obj in encoder.keep for name in vars(obj)}
    assert HOOK_TABLES | NOT_STATE <= met
    assert all(isinstance(_resolve(path), type) for path in ATTACHED)


@pytest.mark.parametrize("name,mode", [("paging", "bt"), ("timer", "vtx")])
def test_a_restore_installs_code_hooks_without_the_mode_seeing_fills(name, mode):
    """Installing a code hook makes Unicorn fill a TLB entry; while the restore installs
    them, VM.on_tlb_fill is shadowed so those fills reach neither the mode nor the bus,
    and afterwards the VM's own method (the mode's MMU, then the bus) is back."""
    vm, _ = make(name, mode, budget=40000)
    vm.run()
    data = save_vm(vm)
    fills = []
    twin = restore_vm(data, serial_output=lambda b: None, max_instructions=BUDGET)
    assert twin.mode.memory_counters() == vm.mode.memory_counters()
    assert "on_tlb_fill" not in vars(twin)
    twin.bus.subscribe("fill", lambda vaddr, access, answer: fills.append(vaddr))
    twin.run()
    assert fills, "fills after the restore reach the bus again"


def test_outside_observers_are_not_saved_and_the_bus_is_fresh():
    """A tracer (a code watcher and bus subscriber) and a test's callback watch the VM from
    outside: saved without them, restored with none, the run goes on alike."""
    import io

    from vmm.trace.tracer import Tracer

    reference, _ = uninterrupted("hello", "native")
    vm, out = make("hello", "native", budget=4096)
    Tracer(vm, io.StringIO())
    vm.bus.subscribe("exit", lambda exit: None)
    vm.run()
    data = save_vm(vm)
    twin_out = bytearray()
    twin = restore_vm(data, serial_output=twin_out.extend, max_instructions=BUDGET)
    assert not twin.mode.code_watchers
    assert not any(getattr(twin.bus, topic) for topic in ("fill", "exit", "handled", "inject", "event", "stop"))
    assert twin.mode.events._published is twin.bus.event     # the counters publish on the fresh bus
    result = twin.run()
    assert result.status == reference["status"]
    assert bytes(out) + bytes(twin_out) == bytes.fromhex(reference["output"])


def test_a_mode_subscription_made_after_construction_is_named_on_restore():
    """A mode object's bus subscription is wiring its construction makes; one made later
    is not, and the restore says so rather than leave it out."""
    vm, _ = make("hello", "native", budget=4096)
    vm.run()
    vm.bus.subscribe("stop", vm.mode.devices.replayed_store)
    data = save_vm(vm)
    with pytest.raises(SnapshotError, match=r"subscription.*\['stop'"):
        restore_vm(data, serial_output=lambda b: None)


def test_the_documented_example_runs_as_documented(capsys):
    """docs/snapshots.md's example runs as it stands and prints what the page says it
    prints (the lines it shows), and the whole transcript an uninterrupted run prints."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "snapshots.md").read_text()
    code, shown = re.search(r"## The Python API\n\n```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", page,
                            re.DOTALL).groups()
    exec(compile(code, "docs/snapshots.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    lines = shown.splitlines()
    cut = lines.index("...")
    before, after = lines[:cut], lines[cut + 1:]
    assert printed[:cut] == before and printed[len(printed) - len(after):] == after
    reference, _ = uninterrupted("timer", "vtx-ept")
    assert "\n".join(printed[2:]) + "\n" == bytes.fromhex(reference["transcript"]).decode()


def _objects(root, skip) -> dict[int, str]:
    """The project's objects reachable from ``root`` (through attributes, containers and
    bound methods' owners), by id, with the first path that reaches each."""
    from vmm.snapshot import _is_ours

    found: dict[int, str] = {}
    stack = [(root, "mode")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif hasattr(value, "__self__") and _is_ours(value.__self__):
            stack.append((value.__self__, f"{path}.__self__"))
        elif _is_ours(value) and id(value) not in found and not any(value is s for s in skip):
            found[id(value)] = path
            stack.extend((v, f"{path}.{k}") for k, v in vars(value).items())
    return found


@pytest.mark.parametrize("mode", MODES)
def test_a_restore_fills_the_fresh_vms_objects_in_place(mode):
    """Every object a fresh VM's mode is built from is still its after the restore, the
    state put into it: wiring that points at one (``vm.processor``, closures, the engine's
    callbacks) then reaches the restored state, not an object the restore left behind."""
    from vmm.snapshot import _Decoder, _roots, _unpack

    vm, _ = make("timer", mode, budget=40000)
    vm.run()
    data = save_vm(vm)
    twin = restore_vm(data, serial_output=lambda b: None, max_instructions=BUDGET)
    fresh = VM(vm.image, mode=mode, ram_size=RAM, serial_output=lambda b: None, max_instructions=BUDGET)
    skip = (fresh, fresh.engine, fresh.board, fresh.bus)
    before = _objects(fresh.mode, skip)
    _Decoder(_roots(fresh), fresh.engine).decode(_unpack(data)["mode"], fresh.mode, "mode")
    after = _objects(fresh.mode, skip)
    assert [path for i, path in before.items() if i not in after] == []
    assert twin.processor is twin.mode.processor
