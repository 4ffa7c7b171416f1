"""The page-walk explainer behind ``vmm walk``: one translation, step by step.

For the stopped VM it replays the walk the MMU would do for one guest-linear address,
without side effects (no A/D updates, nothing counted): every guest paging-structure
entry with its guest-physical address and decoded bits; in ``vtx-ept`` every EPT step
that translated that address first; in ``vtx`` the shadow entries the hardware really
walks; then the result, or the fault and its error code / EPT qualification.
"""
from __future__ import annotations

from ..mmu.ept import EptMisconfiguration, EptViolation, EptWalker
from ..mmu.nested import NestedWalker
from ..mmu.paging import CR0_PG, GuestWalker, PageFault, paging_format
from ..modes.memory import ShadowMmu
from ..vmx.vmcs import Field

PTE_BITS = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"), (7, "PS"), (8, "G"),
            (63, "XD"))
EPT_BITS = ((0, "R"), (1, "W"), (2, "X"), (6, "IPAT"), (7, "PS"), (8, "A"), (9, "D"))
EPT_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}


def pte_flags(value: int) -> str:
    return " ".join(name for bit, name in PTE_BITS if value >> bit & 1) or "not present"


def ept_flags(value: int, leaf: bool) -> str:
    names = [name for bit, name in EPT_BITS if value >> bit & 1]
    if leaf and value & 7:
        names.append(EPT_TYPES.get(value >> 3 & 7, f"type {value >> 3 & 7}"))
    return " ".join(names) or "not present"


def _read(engine, pa: int, size: int) -> int:
    return int.from_bytes(engine.read_phys(pa, size), "little")


def explain(vm, linear: int, access: str = "read", user: bool = False) -> list[str]:
    """Lines describing how ``linear`` translates in ``vm`` right now."""
    eng, mode = vm.engine, vm.mode
    cr0, cr3, cr4 = eng.reg("cr0"), eng.reg("cr3"), eng.reg("cr4")
    write, fetch = access == "write", access == "fetch"
    who = "user" if user else "supervisor"
    fmt = paging_format(cr0, cr4, 0)
    lines = [f"guest-linear {linear:#010x}, {access}, {who}; mode {mode.name}; "
             f"CR0 {cr0:#010x} CR3 {cr3:#010x} CR4 {cr4:#010x} ({fmt.name if fmt else 'paging off'})"]
    log: list[tuple] = []
    guest = GuestWalker(lambda pa, size: _log_guest(log, eng, pa, size), lambda pa, size, value: None)
    if mode.name == "vtx-ept":
        eptp = mode.vmcs.read(Field.EPT_POINTER)
        lines.append(f"EPTP {eptp:#x}: EPT PML4 at host-physical {eptp & ~0xFFF:#x}")
        ept = EptWalker(lambda hpa: _log_ept(log, eng, hpa), lambda hpa, value: None,
                        refs=lambda tag, level, hpa: log.append(("ept-step", tag, level, hpa)))
        result: tuple[int, int, bool, bool] | str
        try:
            if cr0 & CR0_PG:
                t = NestedWalker(guest, ept).walk(cr0, cr3, cr4, linear, eptp=eptp, write=write, user=user,
                                                  fetch=fetch, set_ad=False)
                entries, result = t.guest.entries, (t.guest_physical, t.host_physical, t.writable, t.user)
            else:
                e = ept.translate(eptp, linear, access, linear=linear)
                entries, result = [], (linear, e.host_physical, e.writable, True)
        except PageFault as pf:
            entries, result = None, f"guest #PF, error code {pf.error_code:#x} ({_pf_text(pf.error_code)})"
        except EptViolation as v:
            entries, result = None, (f"EPT violation at guest-physical {v.gpa:#010x}: qualification "
                                     f"{v.exit_qualification:#x} ({v.qualification.describe()})")
        except EptMisconfiguration as m:
            entries, result = None, f"EPT misconfiguration at guest-physical {m.gpa:#010x} (a device page)"
        lines += _format_nested(log, entries)
    else:
        if not cr0 & CR0_PG:
            lines.append("  paging off: guest-physical = linear")
            result = (linear, linear, True, True)
        else:
            try:
                g = guest.walk(cr0, cr3, cr4, linear, write=write, user=user, fetch=fetch, set_ad=False)
                result = (g.physical, g.physical, g.writable, g.user)
            except PageFault as pf:
                result = f"guest #PF, error code {pf.error_code:#x} ({_pf_text(pf.error_code)})"
            for _kind, pa, size, value, *_ in log:
                lines.append(f"  guest entry at guest-physical {pa:#010x} = {value:#0{2 + 2 * size}x}  "
                             f"{pte_flags(value)}")
        if isinstance(mode.mmu, ShadowMmu):  # vtx, trap, bt: the tables the MMU really walks
            lines += _shadow_lines(mode, linear)
    if isinstance(result, str):
        lines.append(f"result: {result}")
    else:
        gpa, hpa, writable, user_ok = result
        lines.append(f"result: guest-physical {gpa:#010x} -> host-physical {hpa:#010x} "
                     f"({'writable' if writable else 'read-only'}, {'user' if user_ok else 'supervisor'}); "
                     f"{sum(1 for e in log if e[0] in ('guest', 'ept'))} paging-structure reads")
    return lines


def _log_guest(log, eng, pa: int, size: int) -> int:
    value = _read(eng, pa, size)
    log.append(("guest", pa, size, value))
    return value


def _log_ept(log, eng, hpa: int) -> int:
    value = _read(eng, hpa, 8)
    log.append(("ept", hpa, 8, value))
    return value


def _format_nested(log, entries) -> list[str]:
    lines, tag, level = [], None, None
    known = iter(entries or [])
    for item in log:
        if item[0] == "ept-step":
            _, step_tag, level, hpa = item
            if step_tag != tag:
                title = "the data page" if step_tag == "data" else f"the guest {step_tag}'s address"
                lines.append(f"  EPT walk for {title}:")
                tag = step_tag
            lines.append(f"    {level:10s} at host-physical {hpa:#012x}")
        elif item[0] == "ept":
            _, hpa, size, value = item
            leaf = level == "EPT PTE" or bool(value & 0x80)
            lines[-1] += f" = {value:#018x}  {ept_flags(value, leaf)}"
        else:
            _, pa, size, value = item
            name, gpa, _ = next(known, (tag or "entry", None, value))
            where = f"guest-physical {gpa:#010x} (host {pa:#010x})" if gpa is not None else f"host {pa:#010x}"
            lines.append(f"  guest {name} at {where} = {value:#0{2 + 2 * size}x}  {pte_flags(value)}")
            tag = None
    return lines


def _shadow_lines(mode, linear: int) -> list[str]:
    shadow, eng = mode.mmu.shadow, mode.vm.engine
    if shadow.root is None:
        return ["  shadow: no shadow root (guest paging off)"]
    lines = [f"  shadow page directory (host-physical {shadow.root:#010x}), what the MMU really walks:"]
    pde_addr = shadow.root + (linear >> 22) * 4
    pde = _read(eng, pde_addr, 4)
    lines.append(f"    shadow PDE at host-physical {pde_addr:#010x} = {pde:#010x}  {pte_flags(pde)}")
    if pde & 1:
        pte_addr = (pde & ~0xFFF) + ((linear >> 12) & 0x3FF) * 4
        pte = _read(eng, pte_addr, 4)
        lines.append(f"    shadow PTE at host-physical {pte_addr:#010x} = {pte:#010x}  {pte_flags(pte)}"
                     + ("" if pte & 1 else "  (not filled yet: the next access is a hidden #PF)"))
    return lines


def _pf_text(code: int) -> str:
    return ", ".join(["protection" if code & 1 else "not present", "write" if code & 2 else "read",
                      "user" if code & 4 else "supervisor"] + (["reserved bit"] if code & 8 else [])
                     + (["instruction fetch"] if code & 16 else []))
