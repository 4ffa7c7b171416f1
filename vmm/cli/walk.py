"""``vmm walk``: explain how the guest translates one address."""
from __future__ import annotations

import click

from .common import fail, parse_int, resolve_image


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
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="S")
def walk(image, gva, mode, when, access, user, timeout):
    """Explain how the guest translates one address: every paging-structure entry, its
    address and bits, each EPT step (vtx-ept) or the shadow entries (vtx), and the result
    or the fault.

    \b
    Example:
      vmm walk paging --gva 0x40001004 --at pf_handler --mode vtx-ept
    """
    from ..trace.walk import explain
    from ..vm import VM

    loaded = resolve_image(image, ram_size=128 << 20, kind="auto", cmdline=None, modules=(), load_address=None)
    budget = None
    if when != "end":
        try:
            budget = int(when, 0)
        except ValueError:
            budget = None
    vm = VM(loaded, mode=mode, serial_output=lambda data: None, max_instructions=budget, timeout=timeout or None)
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
