"""The gdb stub: real gdb in batch mode against it, and the protocol byte by byte."""
from __future__ import annotations

import queue
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
from capstone import CS_ARCH_X86, CS_GRP_CALL, CS_GRP_JUMP, CS_GRP_RET, CS_MODE_32, Cs

from conftest import FLAT_BASE, RAM, assemble
from vmm.build.guests import build_guest, get_guest
from vmm.loader.image import load_image
from vmm.trace.gdbstub import REGISTERS, checksum, serve_gdb
from vmm.vm import VM, StopKind

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not on PATH (apt-get install gdb; CI installs it)")

FUNCTION = "print_hex"      # called by hello's kmain; starts with `push ecx` (not a branch)
DATA = "mb_magic"           # written by _start: EAX at entry (0x2BADB002), then mb_info (EBX)
TABLE = "hex_digits"        # "0123456789abcdef", static


class Stub:
    """serve_gdb(vm) in a thread, on a free loopback port."""

    def __init__(self, vm):
        self.vm = vm
        self.result = None
        self.error = None
        ports: queue.Queue = queue.Queue()

        def serve():
            try:
                self.result = serve_gdb(vm, port=0, on_listen=ports.put)
            except BaseException as exc:  # the test asserts there was none
                self.error = exc
                ports.put(None)

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.port = ports.get(timeout=30)
        assert self.port, f"serve_gdb failed: {self.error!r}"

    def join(self, timeout: float = 30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve_gdb did not return"
        assert self.error is None, f"serve_gdb raised {self.error!r}"
        return self.result


def run_gdb(port: int, commands: list[str], program=None, timeout: float = 120) -> str:
    args = [GDB, "-batch", "-nx", "-ex", "set architecture i386", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    if program is not None:
        args.append(str(program))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def hello():
    return build_guest("hello")


def hello_vm(hello, tmp_path, mode):
    elf = tmp_path / "hello.elf"
    elf.write_bytes(hello.elf)
    image = load_image(str(elf), ram_size=128 << 20)
    out = bytearray()
    vm = VM(image, mode=mode, serial_output=out.extend, timeout=None)
    return vm, elf, out, image


def first_instruction(guest, address):
    code = guest.flat[address - guest.load_address:address - guest.load_address + 16]
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    return next(cs.disasm(code, address))


@needs_gdb
@pytest.mark.parametrize("mode", ["native", "trap", "bt", "vtx"])
def test_gdb_session(hello, tmp_path, mode):
    sym = hello.symbols
    function, data, table = sym[FUNCTION], sym[DATA], sym[TABLE]
    insn = first_instruction(hello, function)
    assert not {CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET} & set(insn.groups), "pick a function that starts straight"
    after_step = function + insn.size

    vm, elf, serial, image = hello_vm(hello, tmp_path, mode)
    stub = Stub(vm)
    out = run_gdb(stub.port, [
        f"break {FUNCTION}", "continue",
        "info registers eip",
        f"x/2wx &{DATA}", f"x/2wx &{TABLE}",
        "stepi", "info registers eip",
        "monitor stat",
        "delete", "continue",
    ], elf)
    result = stub.join()

    assert f"Breakpoint 1 at {function:#x}" in out, out
    assert f"Breakpoint 1, {function:#010x} in {FUNCTION} ()" in out, out
    assert re.search(rf"^eip\s+{function:#x}\s+{function:#x} <{FUNCTION}>$", out, re.M), out
    # _start stored EAX and EBX of the Multiboot entry state there before calling kmain
    assert re.search(rf"{data:#x} <{DATA}>:\s+0x2badb002\s+{image.registers['ebx']:#010x}", out), out
    words = [int.from_bytes(b"0123456789abcdef"[i:i + 4], "little") for i in (0, 4)]
    assert re.search(rf"{table:#x} <{TABLE}>:\s+{words[0]:#010x}\s+{words[1]:#010x}", out), out
    # stepi executed exactly the one instruction at the breakpoint
    assert re.search(rf"^eip\s+{after_step:#x}\s+{after_step:#x} <{FUNCTION}\+{insn.size}>$", out, re.M), out
    # monitor stat: the kvm_stat-style table with the serial port's I/O so far (VM exits
    # only where there are any: the VT-x modes)
    if mode == "vtx":
        assert "exit reason" in out, out
        assert re.search(r"│\s*30 │ IO_INSTRUCTION\s*│\s*\d+ │", out), out
    else:
        assert "exit reason" not in out and "IO_INSTRUCTION" not in out, out
        assert re.search(r"│ port I/O\s*│\s*\d+ │", out), out
    if mode == "vtx":
        assert re.search(r"│\s*46 │ GDTR_IDTR\s*│\s*2 │", out), out   # LGDT + LIDT in _start
    assert "[Inferior 1 (Remote target) exited with code 01]" in out, out

    assert result.kind is StopKind.EXIT and result.status == 1
    golden = get_guest("hello").expected_path
    if mode == "trap":  # the ring-1 kernel shows in the CPL line (guests/hello.trap.expected)
        golden = golden.with_suffix(".trap.expected")
    assert bytes(serial) == golden.read_bytes()


WATCH_SOURCE = """
mov ecx, 3
again: inc dword ptr [0x100800]
dec ecx
jnz again
mov eax, dword ptr [0x100804]
mov al, 2
out 0xf4, al
"""


@needs_gdb
@pytest.mark.parametrize("mode", ["native", "vtx"])
def test_gdb_watchpoints(mode):
    """Write and read watchpoints stop after the access (as x86 debug registers do), and
    the watched instruction runs once: `inc` from a memory hook must not count twice."""
    image = load_image(assemble(WATCH_SOURCE), ram_size=RAM, kind="flat", load_address=FLAT_BASE)
    vm = VM(image, mode=mode, ram_size=RAM, serial_output=lambda b: None, timeout=None)
    stub = Stub(vm)
    out = run_gdb(stub.port, ["watch *(int*)0x100800", "rwatch *(int*)0x100804",
                              "continue", "continue", "continue", "continue",
                              "x/1wx 0x100800", "delete", "continue"])
    result = stub.join()
    code = list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(assemble(WATCH_SOURCE), FLAT_BASE))
    after_inc, after_load = code[2].address, code[5].address   # dec ecx; mov al, 2
    for n in range(3):
        assert f"Old value = {n}\nNew value = {n + 1}\n{after_inc:#010x} in ?? ()" in out, out
    assert "Hardware read watchpoint 2: *(int*)0x100804\n\nValue = 0\n" in out, out
    assert f"{after_load:#010x} in ?? ()" in out, out
    assert "0x100800:\t0x00000003" in out, out
    assert "exited with code 05" in out, out
    assert result.kind is StopKind.EXIT and result.status == 5
    assert vm.read_linear(0x100800, 4) == (3).to_bytes(4, "little")


# -- the protocol, byte by byte --------------------------------------------------------------
class Client:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.acks = 0

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        self.raw(b"$" + payload + b"#%02x" % checksum(payload))

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stub closed the connection")
        self.buf += data

    def read_byte(self) -> bytes:
        while not self.buf:
            self._more()
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def packet(self) -> bytes:
        """The next packet's payload; counts and skips '+'; checks the checksum."""
        while True:
            while b"$" not in self.buf or b"#" not in self.buf[self.buf.index(b"$"):] or \
                    len(self.buf) < self.buf.index(b"#", self.buf.index(b"$")) + 3:
                self._more()
            start = self.buf.index(b"$")
            self.acks += self.buf[:start].count(b"+")
            end = self.buf.index(b"#", start)
            body, cs = self.buf[start + 1:end], self.buf[end + 1:end + 3]
            self.buf = self.buf[end + 3:]
            assert int(cs, 16) == checksum(body), (body, cs)
            return body

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.packet()

    def close(self):
        self.sock.close()


def unescape(data: bytes) -> bytes:
    return re.sub(rb"}(.)", lambda m: bytes((m.group(1)[0] ^ 0x20,)), data, flags=re.S)


def flat_vm(src: str, mode: str = "native"):
    image = load_image(assemble(src), ram_size=RAM, kind="flat", load_address=FLAT_BASE)
    return VM(image, mode=mode, ram_size=RAM, serial_output=lambda b: None, timeout=None)


SPIN_SOURCE = """
mov dword ptr [0x100800], 0x11223344
spin: jmp spin
"""


def test_protocol_framing_and_packets():
    vm = flat_vm(SPIN_SOURCE)
    stub = Stub(vm)
    c = Client(stub.port)

    # framing: '+' for a good packet, '-' for a bad checksum, escapes and noise survived
    c.send(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    features = c.packet()
    assert c.acks == 1
    for f in (b"PacketSize=", b"qXfer:features:read+", b"QStartNoAckMode+", b"vContSupported+", b"swbreak+"):
        assert f in features
    c.raw(b"$g#00")
    assert c.read_byte() == b"-"
    c.raw(b"junk\x00\xff#12")                       # noise between packets is skipped
    assert c.ask(b"?") == b"T05thread:1;"
    c.raw(b"$abc$qC#%02x" % checksum(b"qC"))       # a lost '#': resynchronised on the last '$'
    assert c.packet() == b"QC1"

    # registers: the target-description order and sizes (core 16 x 4 bytes, st0-7 x 10, 8 x 4)
    regs = c.ask(b"g")
    assert len(regs) == 2 * sum(bits // 8 for _, bits, _ in REGISTERS) == 2 * (16 * 4 + 8 * 10 + 8 * 4)
    eip = int.from_bytes(bytes.fromhex(regs[8 * 8:9 * 8].decode()), "little")   # register 8
    assert eip == FLAT_BASE
    assert c.ask(b"p8") == FLAT_BASE.to_bytes(4, "little").hex().encode()
    assert c.ask(b"P0=78563412") == b"OK"
    assert vm.engine.reg("eax") == 0x12345678
    assert c.ask(b"p0") == b"78563412"
    assert c.ask(b"p10") == b"0" * 20                # st0 (register 16): zeros, 80 bits
    assert c.ask(b"p18") == b"0" * 8                 # fctrl (24)
    assert c.ask(b"p99").startswith(b"E")

    # target description, read in small pieces (m = more, l = last)
    xml, offset = b"", 0
    while True:
        reply = c.ask(b"qXfer:features:read:target.xml:%x,80" % offset)
        assert reply[:1] in (b"m", b"l")
        xml += unescape(reply[1:])
        offset += len(unescape(reply[1:]))
        if reply[:1] == b"l":
            break
    assert b"<architecture>i386</architecture>" in xml and b'"org.gnu.gdb.i386.core"' in xml
    assert xml.count(b"<reg ") == len(REGISTERS) == 32
    assert c.ask(b"qXfer:features:read:other.xml:0,100").startswith(b"E")

    # memory: guest-linear reads, unmapped -> E14, writes with M and binary X (escaped)
    assert c.ask(b"m%x,4" % FLAT_BASE) == assemble(SPIN_SOURCE)[:4].hex().encode()
    assert c.ask(b"mdead0000,4") == b"E14"
    assert c.ask(b"M100900,4:deadbeef") == b"OK"
    assert c.ask(b"m100900,4") == b"deadbeef"
    blob = bytes([0x23, 0x24, 0x7D, 0x2A, 0x00, 0x03, 0xFF])
    escaped = b"".join(b"}" + bytes((b ^ 0x20,)) if b in b"#$}*" else bytes((b,)) for b in blob)
    assert c.ask(b"X100910,%x:" % len(blob) + escaped) == b"OK"
    assert c.ask(b"X100910,0:") == b"OK"
    assert vm.read_linear(0x100910, len(blob)) == blob
    assert unescape(c.ask(b"m100910,%x" % len(blob))) == blob.hex().encode()

    # the rest of the session protocol
    assert c.ask(b"qAttached") == b"1"
    assert c.ask(b"qfThreadInfo") == b"m1"
    assert c.ask(b"qsThreadInfo") == b"l"
    assert c.ask(b"Hg0") == b"OK"
    assert c.ask(b"vCont?") == b"vCont;c;C;s;S"       # gdb uses vCont only if all four are there
    assert c.ask(b"qSomethingNew") == b""            # unknown -> empty
    assert c.ask(b"vMustReplyEmpty") == b""
    assert c.ask(b"Z9,100000,1") == b""              # unsupported breakpoint type

    # malformed arguments answer an error and the stub goes on
    for bad in (b"mzz,1", b"m", b"Mxyz", b"Z0,nothex,1", b"Z0", b"P=", b"pzz", b"M100900,4:abc", b"G1"):
        assert c.ask(bad).startswith(b"E"), bad
    assert c.ask(b"qC") == b"QC1"

    # monitor commands through qRcmd: O console packets, then OK
    def monitor(command: str) -> str:
        c.send(b"qRcmd," + command.encode().hex().encode())
        text = b""
        while (reply := c.packet()) != b"OK":
            assert reply[:1] == b"O"
            text += bytes.fromhex(reply[1:].decode())
        return text.decode()

    assert "stat" in monitor("help") and "walk" in monitor("help")
    assert "cr0=0x11" in monitor("state")
    assert "paging off" in monitor("walk 0x100800 write")
    assert "neither a number nor a symbol" in monitor("walk nowhere")
    assert "unknown monitor command" in monitor("frobnicate")

    # breakpoint, step, continue, ^C
    assert c.ask(b"Z0,%x,1" % (FLAT_BASE + 10)) == b"OK"      # `jmp spin`
    assert c.ask(b"vCont;c") == b"T05swbreak:;thread:1;"
    assert vm.engine.reg("eip") == FLAT_BASE + 10
    assert vm.read_linear(0x100800, 4) == (0x11223344).to_bytes(4, "little")
    assert c.ask(b"vCont;s:1") == b"T05thread:1;"              # jmp to itself
    assert c.ask(b"z0,%x,1" % (FLAT_BASE + 10)) == b"OK"
    assert c.ask(b"QStartNoAckMode") == b"OK"
    acks = c.acks
    c.send(b"c")
    time.sleep(0.3)
    c.raw(b"\x03")
    assert c.packet() == b"T02thread:1;"
    assert c.ask(b"?") == b"T02thread:1;"
    assert c.acks == acks                                   # no-ack mode: no '+' any more
    c.raw(b"$g#00")                                         # ... and no '-' either
    assert len(c.ask(b"g")) == len(regs)
    c.send(b"k")
    result = stub.join()
    assert result.kind is StopKind.ERROR and "killed" in result.message
    c.close()


def test_protocol_guest_end():
    """W with the exit status at isa-debug-exit; O with the reason then X otherwise."""
    vm = flat_vm("mov al, 3\nout 0xf4, al")
    stub = Stub(vm)
    c = Client(stub.port)
    assert c.ask(b"c") == b"W07"                     # (3 << 1) | 1
    assert stub.join().status == 7
    c.close()

    vm = flat_vm("cli\nhlt", mode="vtx")
    stub = Stub(vm)
    c = Client(stub.port)
    c.send(b"c")
    message = c.packet()
    assert message[:1] == b"O" and b"halted" in bytes.fromhex(message[1:].decode())
    assert c.packet() == b"X0f"                      # SIGTERM
    assert stub.join().kind is StopKind.HALTED
    c.close()


def test_protocol_detach_runs_to_the_end():
    vm = flat_vm("mov ecx, 1000\nagain: dec ecx\njnz again\nmov al, 1\nout 0xf4, al")
    stub = Stub(vm)
    c = Client(stub.port)
    assert c.ask(b"Z0,%x,1" % (FLAT_BASE + 5)) == b"OK"
    assert c.ask(b"c") == b"T05swbreak:;thread:1;"
    assert c.ask(b"D") == b"OK"                      # gdb's breakpoints go with it
    result = stub.join()
    assert result.kind is StopKind.EXIT and result.status == 3
    assert vm.engine.reg("ecx") == 0


def test_protocol_dropped_connections():
    """Half a packet then a hang-up, or garbage then a hang-up: serve_gdb returns."""
    for junk in (b"$m100000,", b"\xff" * 5000 + b"$", b"+-+$qSupported#00"):
        vm = flat_vm(SPIN_SOURCE)
        stub = Stub(vm)
        c = Client(stub.port)
        c.raw(junk)
        c.close()
        result = stub.join()
        assert result.kind is StopKind.ERROR and "closed" in result.message

    vm = flat_vm(SPIN_SOURCE)
    stub = Stub(vm)
    c = Client(stub.port)
    c.send(b"c")                                     # gdb gone while the guest spins
    time.sleep(0.2)
    c.close()
    assert stub.join().kind is StopKind.ERROR


@needs_gdb
def test_cli_gdb_option_serves_real_gdb(tmp_path):
    """`vmm run hello --gdb :PORT --wait`, then gdb in batch mode, as a user would."""
    import sys
    elf = tmp_path / "hello.elf"
    elf.write_bytes(build_guest("hello").elf)
    with socket.socket() as probe:          # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vmm = subprocess.Popen([sys.executable, "-m", "vmm.cli", "run", "hello", "--gdb", f":{port}", "--wait"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = vmm.stderr.readline().decode()
        assert f"waiting for gdb on 127.0.0.1:{port}" in line
        out = subprocess.run([GDB, "-batch", "-nx", "-ex", "set architecture i386",
                              "-ex", f"target remote 127.0.0.1:{port}", "-ex", "break print_hex",
                              "-ex", "continue", "-ex", "info registers eip", "-ex", "delete",
                              "-ex", "continue", str(elf)], capture_output=True, timeout=60).stdout.decode()
        address = build_guest("hello").symbols["print_hex"]
        assert f"{address:#x}" in out and "print_hex" in out
        assert "exited with code 01" in out
        stdout, _ = vmm.communicate(timeout=30)
    finally:
        vmm.kill()
    assert stdout == get_guest("hello").expected_output()
    assert vmm.returncode == 1


def test_cli_wait_needs_gdb():
    from conftest import run_cli
    proc = run_cli("run", "hello", "--wait")
    assert proc.returncode == 2 and b"--wait goes with --gdb" in proc.stderr
