"""Editing a VMCS by name from the command line: ``--control NAME=on|off`` and
``--vmcs FIELD=VALUE``, so a user can try a VMM policy without writing Python."""
from __future__ import annotations

from .controls import EntryControls, ExitControls, PinBased, PrimaryProcBased, SecondaryProcBased
from .vmcs import Field, VmxInstructionError

CONTROL_FIELDS = (
    (PinBased, Field.PIN_BASED_VM_EXEC_CONTROL),
    (PrimaryProcBased, Field.CPU_BASED_VM_EXEC_CONTROL),
    (SecondaryProcBased, Field.SECONDARY_VM_EXEC_CONTROL),
    (ExitControls, Field.VM_EXIT_CONTROLS),
    (EntryControls, Field.VM_ENTRY_CONTROLS),
)


class VmcsEditError(ValueError):
    pass


def _split(item: str, default: str | None) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        if default is None:
            raise VmcsEditError(f"{item!r}: expected NAME=VALUE")
        value = default
    return name.strip().upper(), value.strip()


def apply_controls(vmcs, items) -> None:
    for item in items:
        name, value = _split(item, "on")
        if value.lower() not in ("on", "off", "1", "0"):
            raise VmcsEditError(f"--control {item}: the value must be on or off")
        for flags, field in CONTROL_FIELDS:
            if name in flags.__members__:
                bit = int(flags[name])
                current = vmcs.read(field)
                vmcs.write(field, current | bit if value.lower() in ("on", "1") else current & ~bit)
                break
        else:
            known = sorted(n for flags, _ in CONTROL_FIELDS for n in flags.__members__)
            raise VmcsEditError(f"--control {name}: no such control; known: {', '.join(known)}")


def apply_vmcs_writes(vmcs, items) -> None:
    for item in items:
        name, text = _split(item, None)
        if name not in Field.__members__:
            raise VmcsEditError(f"--vmcs {name}: no such VMCS field (SDM Appendix B names, e.g. GUEST_CR0)")
        try:
            value = int(text, 0)
        except ValueError:
            raise VmcsEditError(f"--vmcs {item}: {text!r} is not a number") from None
        try:
            vmcs.write(Field[name], value)
        except (VmxInstructionError, ValueError) as err:
            raise VmcsEditError(f"--vmcs {item}: {err}") from None
