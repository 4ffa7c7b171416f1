"""``vmm run``: boot an image or a built-in guest and print its serial output."""
from __future__ import annotations

import contextlib
import os
import stat
import sys

import click

from ..modes import MODES
from .common import (
    apply_tuning,
    budget_options,
    check_display,
    check_writable_file,
    console_writer,
    display_options,
    exit_status,
    exit_status_option,
    fail,
    image_options,
    load_target,
    report_stats,
    screen_output,
)

#: ``-s``: QEMU's shorthand for ``-gdb tcp::1234``.
QEMU_GDB_ADDRESS = ":1234"


@click.command()
@click.argument("image", metavar="IMAGE_OR_GUEST", required=False)
@click.option("-kernel", "kernel", default=None, metavar="FILE",
              help="QEMU's spelling of IMAGE_OR_GUEST (likewise -append, -initrd, -m, -s, -S).")
@click.option("--mode", type=click.Choice(MODES), default="native", show_default=True,
              help="How the guest is virtualized (see README: the six modes).")
@budget_options(timeout=10.0)
@image_options(qemu_aliases=True)
@click.option("--serial-input", type=click.File("rb"), default=None, metavar="FILE",
              help="Bytes the guest reads from the UART ('-' for stdin). A pipe or terminal is read as bytes "
              "arrive, under --timeout; without this option a terminal (standard input and output) is the guest's "
              "console (raw mode; Ctrl-A x quits, Ctrl-A h lists the keys).")
@click.option("--keyboard-input", type=click.File("rb"), default=None, metavar="FILE",
              help="Text typed on the PS/2 keyboard behind the i8042 (port 0x60, IRQ 1), as scancodes: each "
              "character is pressed and released ('-' for stdin).")
@click.option("--gdb", "gdb_address", default=None, metavar="[HOST]:PORT",
              help="Serve the GDB remote protocol (loopback by default), as QEMU's -gdb: the guest runs and gdb "
              "attaches whenever it connects (gdb -ex 'target remote :1234' guest.elf), stopping it where it is; "
              "with --wait (-S) the guest waits for gdb before its first instruction. In gdb, 'monitor stat' "
              "prints the exit statistics and 'monitor walk ADDR' explains a translation.")
@click.option("-s", "gdb_default", is_flag=True, help=f"QEMU's -s: --gdb {QEMU_GDB_ADDRESS}.")
@click.option("--wait", "-S", "wait", is_flag=True, help="With --gdb: wait for the debugger before the first "
              "instruction (QEMU's -S; -s -S is QEMU's usual pair).")
@click.option("--page-walk-cache", is_flag=True,
              help="vtx-ept: cache the EPT translation of guest page-table pages (fewer 2-D walk references).")
@click.option("--stat", is_flag=True, help="After the run, print exits by reason (count, share, "
              "handler time) on standard error, as kvm_stat does. Only vtx and vtx-ept have VM exits; the "
              "other modes show the events they dispatched (port I/O, exceptions...).")
@click.option("--stat-json", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the same statistics as JSON.")
@display_options
@exit_status_option
def run(image, kernel, mode, max_instructions, timeout, cmdline, modules, ram_mib, kind, load_address,
        serial_input, keyboard_input, controls, devices, vmcs_writes, gdb_address, gdb_default, wait,
        page_walk_cache, stat, stat_json, display, screendump, exit_convention):
    """Boot IMAGE_OR_GUEST and print its serial output.

    IMAGE_OR_GUEST is a Multiboot ELF, a 512-byte boot sector, a flat binary (with
    --kind flat --load-address), or the name of a built-in guest. QEMU's spellings work
    too: vmm run -kernel guest.elf -append 'args' -initrd mod.bin -m 64M -s -S.

    The exit status follows QEMU's isa-debug-exit convention by default: (value << 1) | 1,
    so a guest's success is 1, and a VMM stop (printed on stderr) is 1 too. With
    --exit-status guest it is the guest's own value (0 = success), 124 when a budget ran
    out and 125 for another VMM stop. Bad input is 2.
    """
    if image and kernel:
        fail(f"two images: {image} and -kernel {kernel}; give one")
    image = image or kernel
    if not image:
        raise click.UsageError("Missing argument 'IMAGE_OR_GUEST' (or -kernel FILE); `vmm guests` lists the "
                               "built-in guests")
    if gdb_default:
        if gdb_address and gdb_address != QEMU_GDB_ADDRESS:
            fail(f"-s means --gdb {QEMU_GDB_ADDRESS}; not with --gdb {gdb_address}")
        gdb_address = QEMU_GDB_ADDRESS
    if wait and not gdb_address:
        fail("--wait goes with --gdb [HOST]:PORT")
    if page_walk_cache and mode != "vtx-ept":
        fail("--page-walk-cache belongs to --mode vtx-ept")
    check_writable_file(stat_json, "--stat-json")
    check_display(display, screendump, devices)
    from ..vm import VM

    loaded = load_target(image, ram_mib=ram_mib, kind=kind, cmdline=cmdline, modules=modules,
                         load_address=load_address)
    with contextlib.ExitStack() as inputs:
        write = console_writer(sys.stdout.buffer)
        try:
            vm = VM(loaded, mode=mode, ram_size=ram_mib << 20, serial_output=write,
                    serial_input=serial_source(serial_input, inputs, write),
                    max_instructions=max_instructions, timeout=timeout or None,
                    mode_options={"page_walk_cache": True} if page_walk_cache else None, devices=devices,
                    keyboard_input=keyboard_input)
        except (NotImplementedError, ValueError) as err:
            fail(str(err))
        apply_tuning(vm, mode, controls, vmcs_writes)
        with screen_output(vm, display, screendump, sys.stdout.buffer):
            result = _run(vm, loaded, gdb_address, wait)
    if result.kind.name != "EXIT":
        click.echo(f"vmm: {result.kind.value}: {result.message}", err=True)
    if stat or stat_json:
        report_stats(result, mode=mode, guest=image, show=stat, json_path=stat_json)
    sys.exit(exit_status(result, exit_convention))


def serial_source(serial_input, inputs: contextlib.ExitStack, write):
    """What the guest's UART reads: a regular file's bytes (all there before boot, so a run
    reads them the same way every time), a pipe's or terminal's as they arrive, or, with no
    --serial-input and a terminal on standard input and output (a person, not a script or a
    test capturing the output), the terminal itself as the console."""
    from ..console import Console, InputStream
    from ..vm import interrupt_all

    if serial_input is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return None
        console = inputs.enter_context(Console(sys.stdin.fileno(), write, interrupt_all))
        return console.input
    fd = serial_input.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return serial_input.read()
    stream = InputStream(fd)
    inputs.callback(stream.close)
    return stream


def _run(vm, loaded, gdb_address, wait):
    if gdb_address:
        from ..trace.gdbstub import serve_gdb
        host, _, port_text = gdb_address.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            fail(f"--gdb {gdb_address}: expected [HOST]:PORT, e.g. :1234")
        if wait:
            vm.timeout = None  # the debugger decides how long the guest runs
        where = host or "127.0.0.1"
        listening = "waiting for gdb on" if wait else "the guest runs; gdb can attach on"
        try:
            result = serve_gdb(vm, where, port, symbols=loaded.symbols, wait=wait,
                               on_listen=lambda p: click.echo(f"vmm: {listening} {where}:{p}", err=True))
        except OSError as err:
            fail(f"--gdb {gdb_address}: {err.strerror or err}")
        return result
    return vm.run()
