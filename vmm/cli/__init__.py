"""The ``vmm`` command line: one module per command, gathered under :func:`main`.

The console script ``vmm`` and ``python -m vmm.cli`` both run :func:`main`. Each command
imports what it needs when it runs, so that ``vmm --help`` or ``vmm guests`` costs nothing
of the engine, and ``vmm fuzz`` alone pays for hypothesis.
"""
from __future__ import annotations

import click

from . import bench, fuzz, guests, run, trace, walk


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vmm")
def main():
    """vmm: an x86 virtualization lab.

    Boot tiny guests on a Unicorn CPU under a Python VMM, in one of six modes
    (native, trap, bt, pv, vtx, vtx-ept), and see what each costs.

    \b
    Start with:
      vmm guests            list the built-in guests
      vmm run hello         boot one and print its serial console
    """


main.add_command(run.run)
main.add_command(walk.walk)
main.add_command(trace.trace)
main.add_command(guests.guests)
main.add_command(guests.build)
main.add_command(fuzz.fuzz)
main.add_command(bench.bench)
