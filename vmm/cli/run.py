"""``vmm run``: boot an image or a built-in guest and print its serial output."""
from __future__ import annotations

import sys

import click

from ..modes import MODES
from .common import fail, parse_int, report_stats, resolve_image


@click.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--mode", type=click.Choice(MODES), default="native", show_default=True,
              help="How the guest is virtualized (see README: the six modes).")
@click.option("--max-instructions", type=int, default=None, metavar="N",
              help="Stop after N guest instructions (counted exactly; the run is about 10x slower).")
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="S",
              help="Stop after S seconds of wall-clock time; 0 disables the limit.")
@click.option("--cmdline", default=None, help="Multiboot command line after the image name.")
@click.option("--module", "modules", multiple=True, type=click.Path(), metavar="FILE",
              help="Multiboot module (repeatable), loaded page-aligned after the image.")
@click.option("--ram", "ram_mib", type=click.IntRange(1, 3072), default=128, show_default=True,
              metavar="MIB", help="Guest RAM in MiB.")
@click.option("--kind", type=click.Choice(["auto", "multiboot", "flat", "bootsector"]), default="auto",
              show_default=True, help="Image format; auto recognises Multiboot ELF and boot sectors.")
@click.option("--load-address", callback=parse_int, default=None, metavar="ADDR",
              help="Load (and entry) address of a flat binary, e.g. 0x100000.")
@click.option("--serial-input", type=click.File("rb"), default=None, metavar="FILE",
              help="Bytes the guest reads from the UART ('-' for stdin).")
@click.option("--control", "controls", multiple=True, metavar="NAME[=on|off]",
              help="vtx: set or clear a VM-execution, VM-exit or VM-entry control by its SDM name, "
              "e.g. --control HLT_EXITING=off --control RDTSC_EXITING (repeatable).")
@click.option("--vmcs", "vmcs_writes", multiple=True, metavar="FIELD=VALUE",
              help="vtx: VMWRITE a field before launch, e.g. --vmcs EXCEPTION_BITMAP=0 "
              "or --vmcs GUEST_CR0=0x80000000 (repeatable).")
@click.option("--gdb", "gdb_address", default=None, metavar="[HOST]:PORT",
              help="Serve the GDB remote protocol (loopback by default) and wait for gdb before the first "
              "instruction: gdb -ex 'target remote :1234' guest.elf. In gdb, 'monitor stat' prints the exit "
              "statistics and 'monitor walk ADDR' explains a translation.")
@click.option("--wait", is_flag=True, help="With --gdb: wait for the debugger before running (what --gdb "
              "always does; accepted for QEMU-style command lines).")
@click.option("--page-walk-cache", is_flag=True,
              help="vtx-ept: cache the EPT translation of guest page-table pages (fewer 2-D walk references).")
@click.option("--stat", is_flag=True, help="After the run, print exits by reason (count, share, "
              "handler time), as kvm_stat does. In native mode these are the events a bare machine sees.")
@click.option("--stat-json", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the same statistics as JSON.")
def run(image, mode, max_instructions, timeout, cmdline, modules, ram_mib, kind, load_address, serial_input,
        controls, vmcs_writes, gdb_address, wait, page_walk_cache, stat, stat_json):
    """Boot IMAGE_OR_GUEST and print its serial output.

    IMAGE_OR_GUEST is a Multiboot ELF, a 512-byte boot sector, a flat binary (with
    --kind flat --load-address), or the name of a built-in guest. The exit status is the
    guest's own (isa-debug-exit: (value << 1) | 1, as QEMU); 1 when the VM was stopped
    for another reason, which is printed; 2 for bad input.
    """
    from ..vm import VM

    ram_size = ram_mib << 20
    loaded = resolve_image(image, ram_size=ram_size, kind=kind, cmdline=cmdline, modules=modules,
                           load_address=load_address)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        if page_walk_cache and mode != "vtx-ept":
            fail("--page-walk-cache belongs to --mode vtx-ept")
        vm = VM(loaded, mode=mode, ram_size=ram_size, serial_output=write,
                serial_input=serial_input.read() if serial_input else None,
                max_instructions=max_instructions, timeout=timeout or None,
                mode_options={"page_walk_cache": True} if page_walk_cache else None)
    except (NotImplementedError, ValueError) as err:
        fail(str(err))
    if controls or vmcs_writes:
        if not hasattr(vm.mode, "vmcs"):
            fail(f"--control and --vmcs need a VT-x mode (vtx, vtx-ept), not {mode!r}")
        from ..vmx.tuning import VmcsEditError, apply_controls, apply_vmcs_writes
        try:
            apply_vmcs_writes(vm.mode.vmcs, vmcs_writes)
            apply_controls(vm.mode.vmcs, controls)
        except VmcsEditError as err:
            fail(str(err))
    if wait and not gdb_address:
        fail("--wait goes with --gdb [HOST]:PORT")
    if gdb_address:
        from ..trace.gdbstub import serve_gdb
        host, _, port_text = gdb_address.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            fail(f"--gdb {gdb_address}: expected [HOST]:PORT, e.g. :1234")
        vm.timeout = None  # the debugger decides how long the guest runs
        try:
            result = serve_gdb(vm, host or "127.0.0.1", port, symbols=loaded.symbols,
                               on_listen=lambda p: click.echo(f"vmm: waiting for gdb on {host or '127.0.0.1'}:{p}",
                                                              err=True))
        except OSError as err:
            fail(f"--gdb {gdb_address}: {err.strerror or err}")
    else:
        result = vm.run()
    if result.kind.name != "EXIT":
        click.echo(f"vmm: {result.kind.value}: {result.message}", err=True)
    if stat or stat_json:
        report_stats(result, mode=mode, guest=image, show=stat, json_path=stat_json)
    sys.exit(result.status)
