"""``vmm walk``: explain how the guest translates one address."""
from __future__ import annotations

import click

from .common import apply_tuning, fail, image_options, load_target, non_negative_seconds, parse_int

#: Every mode runs an i386 guest: a linear address has 32 bits.
LINEAR_ADDRESS_LIMIT = 1 << 32


@click.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--gva", required=True, callback=parse_int, metavar="ADDR",
              help="The guest-linear address to translate, e.g. 0x40001004.")
@click.option("--mode", type=click.Choice(("native", "trap", "bt", "vtx", "vtx-ept")), default="vtx-ept",
              show_default=True,
              help="native: the guest's own 1-D walk; vtx, trap, bt: plus the shadow tables the MMU really "
              "walks; vtx-ept: the 2-D walk, each guest entry's address translated through EPT.")
@click.option("--at", "when", default="end", show_default=True, metavar="WHEN",
              help="When to look: 'end' (after the guest stops), a number of guest instructions, "
              "or a symbol or address at which to stop (before that instruction runs).")
@click.option("--access", type=click.Choice(("read", "write", "fetch")), default="read", show_default=True)
@click.option("--user", is_flag=True, help="Translate as a user-mode (CPL 3) access.")
@click.option("--timeout", type=float, callback=non_negative_seconds, default=10.0, show_default=True, metavar="S")
@image_options()
def walk(image, gva, mode, when, access, user, timeout, cmdline, modules, ram_mib, kind, load_address, controls,
         devices, vmcs_writes):
    """Explain how the guest translates one address: every paging-structure entry, its
    address and bits, each EPT step (vtx-ept) or the shadow entries (vtx), and the result
    or the fault.

    \b
    Example:
      vmm walk paging --gva 0x40001004 --at pf_handler --mode vtx-ept
    """
    from ..trace.walk import explain
    from ..vm import VM

    if not 0 <= gva < LINEAR_ADDRESS_LIMIT:
        fail(f"--gva {gva:#x}: above the 32-bit linear address space of a {mode} guest")
    loaded = load_target(image, ram_mib=ram_mib, kind=kind, cmdline=cmdline, modules=modules,
                         load_address=load_address)
    budget = None
    if when != "end":
        try:
            budget = int(when, 0)
        except ValueError:
            budget = None
        if budget is not None and budget < 1:
            fail(f"--at {when}: a number of instructions is at least 1 (or 'end', or a symbol)")
    vm = VM(loaded, mode=mode, ram_size=ram_mib << 20, serial_output=lambda data: None, max_instructions=budget,
            timeout=timeout or None, devices=devices)
    apply_tuning(vm, mode, controls, vmcs_writes)
    if when != "end" and budget is None:
        address = loaded.symbols.get(when)
        if address is None:
            fail(f"--at {when}: not a number and not a symbol of the image "
                 f"({len(loaded.symbols)} symbols; built-in guests have their labels)")
        vm.break_at(address)
    result = vm.run()
    click.echo(f"{image} in {mode}: {result.kind.value} at EIP {result.eip:#010x}")
    for line in explain(vm, gva, access, user):
        click.echo(line)
