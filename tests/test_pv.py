"""pv mode: each hypercall with good and bad arguments, direct paging and its validation,
bounce frames, events, shutdown — small PV kernels assembled here, run on the engine.

Each test kernel starts at FLAT_BASE in ring 1 (the PV boot protocol), stores results in
the data pages at PV_DATA (R(i) = PV_DATA + 4 i) and powers off with sched_op.
"""
from __future__ import annotations

import struct

import pytest

from conftest import PV_DATA, PV_HYPERCALL_PAGE, RAM, pv_vm
from vmm.modes.pv import MACHINE_BASE
from vmm.pv import abi
from vmm.vm import StopKind

H = abi.Hypercall
EFAULT, EPERM, EINVAL, ENOSYS, ESRCH, EEXIST = (abi.neg(e) for e in (
    abi.Errno.EFAULT, abi.Errno.EPERM, abi.Errno.EINVAL, abi.Errno.ENOSYS, abi.Errno.ESRCH, abi.Errno.EEXIST))
SI = PV_DATA + 0x3FF0          # start_info pointer (ESI at entry)
ARG = PV_DATA + 0x1000         # argument structures
UNMAPPED = 0x0F000000          # a guest-virtual address no table maps (beyond 16 MiB of RAM)
GDT_HOST = 0xE0000000          # the VMM's first host page: the CPU's GDT (not the domain's)


def R(i: int) -> int:
    return PV_DATA + 4 * i


def ti(vector: int, flags: int = 0) -> int:
    """The first dword of a trap_info: vector, flags (DPL, TI_CLEAR_EVENTS), ring-1 CS."""
    return vector | flags << 8 | abi.FLAT_KERNEL_CS << 16


def hc(nr: int) -> str:
    return f"call {PV_HYPERCALL_PAGE + int(nr) * 32}"


# memory_op(XENMEM_decrease_reservation) of the frame behind pseudo-physical 0x800000
# (ESI = start_info); EAX = the result
GIVE_BACK_0x800000 = f"""
    mov eax, [esi + {abi.SI_MFN_LIST}]
    mov eax, [eax + 4 * 0x800]
    mov [{ARG + 0x40}], eax
    mov dword ptr [{ARG + 0x20}], {ARG + 0x40}
    mov dword ptr [{ARG + 0x24}], 1
    mov dword ptr [{ARG + 0x28}], 0
    mov dword ptr [{ARG + 0x2c}], 0
    mov word ptr [{ARG + 0x30}], {abi.DOMID_SELF}
    mov ebx, {abi.XENMEM_decrease_reservation}
    mov ecx, {ARG + 0x20}
    {hc(H.memory_op)}"""

# stack_switch to the kernel stack, then Xen's iret hypercall into ring 3 at label `user`
TO_RING3 = f"""
    mov ebx, {abi.FLAT_KERNEL_DS}
    mov ecx, {PV_DATA + 0x3000}
    {hc(H.stack_switch)}
    push {abi.FLAT_RING3_DS}
    push {PV_DATA + 0x2800}
    push 0x202
    push {abi.FLAT_RING3_CS}
    mov eax, user
    push eax
    jmp {PV_HYPERCALL_PAGE + 23 * 32}"""


POWEROFF = f"""
    mov dword ptr [{ARG + 0xff0}], 0
    mov ebx, {abi.SCHEDOP_shutdown}
    mov ecx, {ARG + 0xff0}
    {hc(H.sched_op)}
    hlt
"""


def run(body: str, **kw):
    vm = pv_vm(f"mov [{SI}], esi\n" + body + POWEROFF, **kw)
    result = vm.run()
    return vm, result


def results(vm, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", vm.read_linear(PV_DATA, 4 * n)))


def errors(result) -> dict:
    return dict(result.events.get("hypercall errors", {}))


# -- boot ---------------------------------------------------------------------------------
def test_boot_state_ring1_paging_start_info_and_p2m():
    vm, result = run(f"""
    mov eax, cs
    mov [{R(0)}], eax
    mov eax, ss
    mov [{R(1)}], eax
    mov [{R(2)}], esp
    """)
    assert result.kind is StopKind.EXIT and result.status == 1, result.message
    cs, ss, esp = results(vm, 3)
    assert (cs, ss) == (abi.FLAT_KERNEL_CS, abi.FLAT_KERNEL_DS)
    si = vm.read_linear(vm.mode.boot_state.start_info, 4096)
    assert si[:14] == abi.START_INFO_MAGIC
    nr_pages, shared, flags = struct.unpack_from("<III", si, abi.SI_NR_PAGES)
    assert nr_pages == RAM >> 12 and shared == vm.mode.shared_host
    pt_base, nr_pt, mfn_list = struct.unpack_from("<III", si, abi.SI_PT_BASE)
    assert nr_pt == 1 + RAM // (4 << 20) and pt_base == RAM - 4096 - nr_pt * 4096 + 4096
    p2m = struct.unpack("<4I", vm.read_linear(mfn_list, 16))
    assert p2m == tuple(range(MACHINE_BASE >> 12, (MACHINE_BASE >> 12) + 4))  # not the identity
    assert vm.engine.reg("cr3") == p2m[0] * 4096 + pt_base  # CR3 holds a machine address
    assert esp <= vm.mode.boot_state.stack_top
    stub = vm.read_linear(PV_HYPERCALL_PAGE + 18 * 32, 8)
    assert stub == b"\xb8\x12\x00\x00\x00\xcd\x82\xc3"   # mov eax, 18; int 0x82; ret
    iret = vm.read_linear(PV_HYPERCALL_PAGE + 23 * 32, 8)
    assert iret == b"\x50\xb8\x17\x00\x00\x00\xcd\x82"   # push eax; mov eax, 23; int 0x82


# -- console_io, xen_version, unknown numbers, bad pointers ------------------------------------------
def test_console_write_and_bad_pointer_and_unknown_hypercall():
    vm, result = run(f"""
    mov ebx, {abi.CONSOLEIO_write}
    mov ecx, 3
    mov edx, msg
    {hc(H.console_io)}
    mov [{R(0)}], eax
    mov ebx, {abi.CONSOLEIO_write}
    mov ecx, 4
    mov edx, {UNMAPPED}
    {hc(H.console_io)}
    mov [{R(1)}], eax
    mov ebx, {abi.CONSOLEIO_write}
    mov ecx, 4
    mov edx, {abi.HYPERVISOR_VIRT_START}
    {hc(H.console_io)}
    mov [{R(2)}], eax
    mov eax, 99
    int 0x82
    mov [{R(3)}], eax
    mov ebx, 7
    {hc(H.console_io)}
    mov [{R(4)}], eax
    jmp done
msg: .ascii "pv!"
done:
    """)
    assert bytes(vm.serial) == b"pv!"
    assert results(vm, 5) == [0, EFAULT, EFAULT, ENOSYS, ENOSYS]
    assert errors(result) == {"console_io: -EFAULT": 2, "unknown (99): -ENOSYS": 1, "console_io: -ENOSYS": 1}
    assert result.events["hypercalls"]["console_io"] == 4


def test_xen_version_strings_and_errors():
    vm, result = run(f"""
    mov ebx, {abi.XENVER_version}
    {hc(H.xen_version)}
    mov [{R(0)}], eax
    mov ebx, {abi.XENVER_extraversion}
    mov ecx, {ARG}
    {hc(H.xen_version)}
    mov [{R(1)}], eax
    mov ebx, {abi.XENVER_capabilities}
    mov ecx, {ARG + 0x100}
    {hc(H.xen_version)}
    mov ebx, {abi.XENVER_capabilities}
    mov ecx, {UNMAPPED}
    {hc(H.xen_version)}
    mov [{R(2)}], eax
    mov ebx, 99
    {hc(H.xen_version)}
    mov [{R(3)}], eax
    """)
    assert results(vm, 4) == [0x40011, 0, EFAULT, ENOSYS]
    assert vm.read_linear(ARG, 16).rstrip(b"\0") == abi.XEN_EXTRAVERSION
    assert vm.read_linear(ARG + 0x100, 32).rstrip(b"\0") == abi.XEN_CAPABILITIES


def test_hypercall_from_ring3_is_a_gp_not_a_hypercall():
    """int 0x82 has DPL 1: user code gets #GP, bounced to the kernel's handler."""
    vm, result = run(f"""
    mov dword ptr [{ARG}], {ti(13)}   # vector 13, flags 0, cs
    mov dword ptr [{ARG + 4}], gp
    mov dword ptr [{ARG + 8}], 0
    mov dword ptr [{ARG + 12}], 0
    mov ebx, {ARG}
    {hc(H.set_trap_table)}
    {TO_RING3}
user:
    mov eax, {int(H.console_io)}
    int 0x82
    jmp user
gp:
    mov eax, [esp]
    mov [{R(0)}], eax
    mov eax, [esp + 8]
    mov [{R(1)}], eax
    mov eax, cs
    mov [{R(2)}], eax
    """)
    error, cs, kcs = results(vm, 3)
    assert error == abi.HYPERCALL_VECTOR * 8 + 2 and cs & 0xFFFF == abi.FLAT_RING3_CS
    assert kcs == abi.FLAT_KERNEL_CS and result.events["bounce frames"]["#GP"] == 1
    assert "console_io" not in result.events.get("hypercalls", {})


# -- mmu_update: direct paging, validated -----------------------------------------------------------
L1_ENTRY = f"""
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
    mov ebx, [eax + 4]              # PDE 1: the machine address of the table for 4-8 MiB
    and ebx, 0xfffff000             # ... its entry 0 maps virtual 0x400000
    mov [{R(9)}], ebx
    mov ecx, [eax + 0x2000]         # the same entry read through its (read-only) mapping
    mov [{R(8)}], ecx
"""


def mmu_update(val: str, count: int = 1, done: int = 0, domid: int = abi.DOMID_SELF, reqs: int = ARG) -> str:
    return f"""
    mov eax, [{R(9)}]
    mov [{ARG}], eax
    mov dword ptr [{ARG + 4}], {val}
    mov ebx, {reqs}
    mov ecx, {count}
    mov edx, {done}
    mov esi, {domid}
    {hc(H.mmu_update)}
"""


def test_mmu_update_refuses_a_frame_the_domain_does_not_own():
    vm, result = run(L1_ENTRY + mmu_update(f"{GDT_HOST} | 7") + f"""
    mov [{R(0)}], eax
    mov eax, [{R(9)}]
    """ + mmu_update(f"{MACHINE_BASE + RAM} | 7") + f"""
    mov [{R(1)}], eax
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
    mov ecx, [eax + 0x2000]
    mov [{R(2)}], ecx
    mov dword ptr [0x400000], 0x12345678    # still the domain's own frame
    """)
    assert result.kind is StopKind.EXIT, result.message
    r = results(vm, 10)
    assert r[0] == EPERM and r[1] == EPERM
    assert r[2] == r[8] == (MACHINE_BASE + 0x400000) | 7          # the entry is untouched
    assert vm.engine.read_phys(MACHINE_BASE + 0x400000, 4) == struct.pack("<I", 0x12345678)
    gdt = vm.engine.read_phys(GDT_HOST, 16)
    assert gdt[8:] == bytes(8)                                    # the VMM's page untouched
    assert errors(result) == {"mmu_update: -EPERM": 2}


def test_mmu_update_maps_an_own_frame_and_the_guest_sees_it():
    vm, result = run(L1_ENTRY + """
    mov dword ptr [0x500000], 0xfeedf00d
    """ + mmu_update(f"{MACHINE_BASE + 0x500000} | 3", done=R(3)) + f"""
    mov [{R(0)}], eax
    mov eax, [0x400000]             # 0x400000 now shows the frame of 0x500000
    mov [{R(1)}], eax
    """)
    r = results(vm, 4)
    assert r[0] == 0 and r[1] == 0xFEEDF00D and r[3] == 1
    assert result.events["pv"]["mmu_update entries"] == 1


def test_mmu_update_bad_arguments():
    vm, result = run(L1_ENTRY + mmu_update(f"{MACHINE_BASE + 0x500000} | 3", reqs=UNMAPPED) + f"""
    mov [{R(0)}], eax
    """ + mmu_update(f"{MACHINE_BASE + 0x500000} | 3", domid=5) + f"""
    mov [{R(1)}], eax
    """ + mmu_update(f"{MACHINE_BASE + 0x500000} | 3", done=UNMAPPED) + f"""
    mov [{R(2)}], eax
    mov dword ptr [{ARG}], 0x10000002   # command 2: not a command
    mov ebx, {ARG}
    mov ecx, 1
    xor edx, edx
    mov esi, {abi.DOMID_SELF}
    {hc(H.mmu_update)}
    mov [{R(3)}], eax
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
    mov eax, [eax + 0x2000]
    mov [{R(4)}], eax
    """)
    r = results(vm, 10)
    assert r[:4] == [EFAULT, ESRCH, EFAULT, ENOSYS]
    assert r[4] == r[8]  # nothing was written by any of them


def test_a_page_table_frame_is_never_writable():
    """Mapping a page-table frame writable is refused; writing one directly faults (#PF
    bounced to the guest) and leaves it unchanged."""
    vm, result = run(f"""
    mov dword ptr [{ARG + 0x100}], {ti(14)}
    mov dword ptr [{ARG + 0x104}], pf
    mov dword ptr [{ARG + 0x108}], 0
    mov dword ptr [{ARG + 0x10c}], 0
    mov ebx, {ARG + 0x100}
    {hc(H.set_trap_table)}
    """ + L1_ENTRY + f"""
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
    mov eax, [eax]                  # PDE 0: the machine address of the first page table
    and eax, 0xfffff000
    or eax, 3                       # ... mapped writable: refused
    mov [{R(7)}], eax
    """ + mmu_update(f"[{R(7)}]").replace(f"mov dword ptr [{ARG + 4}], [{R(7)}]",
                                           f"mov ecx, [{R(7)}]\n    mov [{ARG + 4}], ecx") + f"""
    mov [{R(0)}], eax
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
write_site:
    mov dword ptr [eax + 0x2000], 0x41414141   # a direct write to a page table
    mov [{R(1)}], eax
    mov ecx, [eax + 0x2000]
    mov [{R(2)}], ecx
    jmp done
pf:
    push eax
    mov eax, [esp + 4]              # error code
    mov [{R(3)}], eax
    mov eax, [{abi.SHARED_INFO_VIRT + abi.VI_CR2}]
    mov [{R(4)}], eax
    mov eax, [esp + 8]
    mov [{R(5)}], eax
    add dword ptr [esp + 8], 10     # skip the 10-byte store
    pop eax
    add esp, 4
    jmp {PV_HYPERCALL_PAGE + 23 * 32}
done:
    """)
    assert result.kind is StopKind.EXIT, result.message
    r = results(vm, 10)
    assert r[0] == EINVAL
    pt_base = vm.mode.boot_state.pt_base
    assert r[3] == 0x3 and r[4] == pt_base + 0x2000       # #PF: present, write; CR2 in shared info
    assert r[2] == r[8] != 0x41414141                      # the page table is unchanged
    assert result.events["bounce frames"]["#PF"] == 1
    assert errors(result) == {"mmu_update: -EINVAL": 1}


def test_a_frame_that_becomes_a_page_table_loses_its_writable_mapping():
    """A frame mapped writable, then made a page table: the MMU refuses writes to it
    whatever the older entry says (the documented departure from Xen's type counts)."""
    vm, result = run(L1_ENTRY + f"""
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_MFN_LIST}]
    mov edx, [eax + 4 * 0x900]              # machine frame F of the (zeroed) page 0x900000
    shl edx, 12
    mov [{R(6)}], edx
    """ + mmu_update(f"[{R(6)}]").replace(f"mov dword ptr [{ARG + 4}], [{R(6)}]",
                                           f"mov ecx, [{R(6)}]\n    or ecx, 3\n    mov [{ARG + 4}], ecx") + f"""
    mov [{R(0)}], eax
    mov dword ptr [0x400000], 0             # F is writable through 0x400000 ...
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_PT_BASE}]
    shr eax, 12
    mov ecx, [esi + {abi.SI_MFN_LIST}]
    mov eax, [ecx + eax * 4]                # the page directory's machine frame (= CR3)
    shl eax, 12
    add eax, 0x100 * 4                      # ... until PDE 0x100 makes F a page table
    mov [{R(9)}], eax
    """ + mmu_update(f"[{R(6)}]").replace(f"mov dword ptr [{ARG + 4}], [{R(6)}]",
                                           f"mov ecx, [{R(6)}]\n    or ecx, 7\n    mov [{ARG + 4}], ecx") + f"""
    mov [{R(1)}], eax
    mov dword ptr [0x400000], 0x41414141    # now a write to a page table: refused
    mov dword ptr [{R(2)}], 1
    """)
    r = results(vm, 3)
    assert r[0] == 0 and r[1] == 0 and r[2] == 0
    assert result.kind is StopKind.ERROR and "#PF" in result.message   # no handler: crash
    assert result.events["pv"]["writes to page-table frames refused"] == 1
    assert vm.engine.read_phys(vm.engine.reg("cr3") + 0x400, 4) != bytes(4)
    assert vm.engine.read_phys(MACHINE_BASE + 0x900000, 4) == bytes(4)


def test_update_va_mapping_good_and_bad():
    vm, result = run(f"""
    mov dword ptr [0x600000], 0xabcdef01
    mov ebx, 0x400000
    mov ecx, {MACHINE_BASE + 0x600000} | 3
    mov edx, {abi.UVMF_INVLPG}
    {hc(H.update_va_mapping)}
    mov [{R(0)}], eax
    mov eax, [0x400000]
    mov [{R(1)}], eax
    mov ebx, 0x401000
    mov ecx, {GDT_HOST} | 3
    xor edx, edx
    {hc(H.update_va_mapping)}
    mov [{R(2)}], eax
    mov ebx, {abi.HYPERVISOR_VIRT_START}
    mov ecx, {MACHINE_BASE} | 1
    {hc(H.update_va_mapping)}
    mov [{R(3)}], eax
    """)
    assert results(vm, 4) == [0, 0xABCDEF01, EPERM, EINVAL]


def test_new_baseptr_validates_the_whole_table():
    """A page directory whose table maps a frame the domain does not own is refused."""
    vm, result = run(f"""
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_MFN_LIST}]
    mov ebx, [eax + 4 * 0x700]              # machine frame of the page at 0x700000
    mov ecx, [eax + 4 * 0x701]              # and of 0x701000
    mov dword ptr [0x701000], {GDT_HOST} | 3   # a bad entry in a future page table
    shl ecx, 12
    or ecx, 3
    mov [0x700000], ecx                     # a page directory pointing at it
    mov dword ptr [{ARG}], {int(abi.MmuExt.PIN_L2_TABLE)}
    mov [{ARG + 4}], ebx
    mov ebx, {ARG}
    mov ecx, 1
    mov edx, {R(1)}
    mov esi, {abi.DOMID_SELF}
    {hc(H.mmuext_op)}
    mov [{R(0)}], eax
    mov dword ptr [{ARG}], 99
    mov ebx, {ARG}
    {hc(H.mmuext_op)}
    mov [{R(2)}], eax
    """)
    assert results(vm, 3) == [EINVAL, 0, ENOSYS]


# -- trap table, bounce frames, fast system calls ------------------------------------------------------
def test_exception_bounced_through_the_trap_table_and_iret():
    vm, result = run(f"""
    mov dword ptr [{ARG}], {ti(0)}   # vector 0, flags 0
    mov dword ptr [{ARG + 4}], de
    mov dword ptr [{ARG + 8}], 0
    mov dword ptr [{ARG + 12}], 0
    mov ebx, {ARG}
    {hc(H.set_trap_table)}
    mov [{R(0)}], eax
    mov ebx, {UNMAPPED}
    {hc(H.set_trap_table)}
    mov [{R(1)}], eax
    mov eax, 100
    xor edx, edx
    xor ecx, ecx
div_site:
    div ecx
    mov [{R(2)}], eax
    jmp done
de:
    mov eax, [esp]
    mov [{R(3)}], eax
    mov ecx, 5
    mov eax, 100
    jmp {PV_HYPERCALL_PAGE + 23 * 32}
done:
    """)
    r = results(vm, 4)
    assert r[0] == 0 and r[1] == EFAULT and r[2] == 20
    assert vm.read_linear(r[3], 2) == b"\xf7\xf1"  # the saved EIP is the div itself (a fault)
    assert result.events["bounce frames"]["#DE"] == 1 and result.events["hypercalls"]["iret"] == 1


def test_int80_from_ring3_goes_straight_to_the_guest_and_dpl_is_checked():
    vm, result = run(f"""
    mov dword ptr [{ARG}], {ti(0x80, 3)}   # 0x80, DPL 3
    mov dword ptr [{ARG + 4}], sys
    mov dword ptr [{ARG + 8}], {ti(0x41, 0)} # 0x41, DPL 0
    mov dword ptr [{ARG + 12}], sys
    mov dword ptr [{ARG + 16}], {ti(13)} # #GP
    mov dword ptr [{ARG + 20}], gp
    mov dword ptr [{ARG + 24}], 0
    mov dword ptr [{ARG + 28}], 0
    mov ebx, {ARG}
    {hc(H.set_trap_table)}
    {TO_RING3}
user:
    mov eax, 41
    int 0x80
    int 0x80
    int 0x41
    jmp user
sys:
    inc dword ptr [{R(0)}]
    mov eax, [esp + 12]             # the user ESP in the frame
    mov [{R(1)}], eax
    mov [{R(2)}], esp
    add dword ptr [esp + 4], 0      # keep the frame
    jmp {PV_HYPERCALL_PAGE + 23 * 32}
gp:
    mov eax, [esp]
    mov [{R(3)}], eax
    """)
    count, user_esp, kernel_esp, gp_error = results(vm, 4)
    assert count == 2 and user_esp == PV_DATA + 0x2800 and kernel_esp == PV_DATA + 0x3000 - 20
    assert gp_error == 0x41 * 8 + 2
    assert result.events["pv"]["int 0x80 direct to the guest"] == 2
    from vmm.vmx.exit_reasons import ExitReason
    exits = result.exits[ExitReason.EXCEPTION_NMI]
    hypercalls = sum(result.events["hypercalls"].values())
    # the #GP from int 0x41 is the one exception exit; the two int 0x80 were no exits, and
    # the hypercalls are counted once, as hypercalls
    assert exits == 1 and hypercalls >= 1


def test_no_handler_crashes_the_domain_not_the_vmm():
    vm, result = run("xor ecx, ecx\n    div ecx")
    assert result.kind is StopKind.ERROR and "domain crashed" in result.message and "#DE" in result.message


def test_bounce_frame_on_an_unmapped_stack_crashes_the_domain():
    vm, result = run(f"""
    mov dword ptr [{ARG}], {ti(6)}
    mov dword ptr [{ARG + 4}], {FLAT_BASE_PLUS}
    mov dword ptr [{ARG + 8}], 0
    mov dword ptr [{ARG + 12}], 0
    mov ebx, {ARG}
    {hc(H.set_trap_table)}
    mov esp, {UNMAPPED}
    ud2
    """)
    assert result.kind is StopKind.ERROR and "bounce frame" in result.message


FLAT_BASE_PLUS = 0x100000


# -- set_gdt, stack_switch, callbacks --------------------------------------------------------------
def test_set_gdt_validates_descriptors():
    vm, result = run(f"""
    mov esi, [{SI}]
    mov eax, [esi + {abi.SI_MFN_LIST}]
    mov eax, [eax + 4 * 0x700]
    mov [{ARG}], eax                         # frame list: the page at 0x700000
    mov dword ptr [0x700008], 0x0000ffff
    mov dword ptr [0x70000c], 0x00cf9a00     # DPL 0 code: raised to DPL 1
    mov ebx, {ARG}
    mov ecx, 2
    {hc(H.set_gdt)}
    mov [{R(0)}], eax
    mov eax, 0x09
    mov [{R(1)}], eax
    mov dword ptr [0x700010], 0x00000067
    mov dword ptr [0x700014], 0x00008900     # a TSS: refused
    mov ebx, {ARG}
    mov ecx, 3
    {hc(H.set_gdt)}
    mov [{R(2)}], eax
    mov dword ptr [{ARG}], {GDT_HOST >> 12}
    mov ebx, {ARG}
    mov ecx, 2
    {hc(H.set_gdt)}
    mov [{R(3)}], eax
    mov ebx, {ARG}
    mov ecx, {abi.FIRST_RESERVED_GDT_ENTRY + 1}
    {hc(H.set_gdt)}
    mov [{R(4)}], eax
    mov ebx, 0x10                            # ring 0 stack selector: fixed to RPL 1
    mov ecx, 0x1000
    {hc(H.stack_switch)}
    mov [{R(5)}], eax
    mov ebx, 0x13
    {hc(H.stack_switch)}
    mov [{R(6)}], eax
    """)
    r = results(vm, 7)
    assert r[0] == 0 and r[2] == EINVAL and r[3] == EPERM and r[4] == EINVAL and r[5] == 0 and r[6] == EINVAL
    desc = vm.engine.read_phys(vm.mode.gdt_host + 8, 8)
    assert (desc[5] >> 5) & 3 == 1  # DPL raised to 1
    assert result.events["pv"]["GDT DPL 0 raised to 1"] == 1


# -- events: channels, upcalls, block ------------------------------------------------------------
def test_event_channel_send_upcalls_the_callback_when_unmasked():
    vm, result = run(f"""
    mov ebx, {abi.FLAT_KERNEL_CS}
    mov ecx, callback
    mov edx, {abi.FLAT_KERNEL_CS}
    mov esi, callback
    {hc(H.set_callbacks)}
    mov dword ptr [{ARG}], {abi.DOMID_SELF} | {abi.DOMID_SELF} << 16
    mov ebx, {abi.EVTCHNOP_alloc_unbound}
    mov ecx, {ARG}
    {hc(H.event_channel_op)}
    mov [{R(0)}], eax
    mov eax, [{ARG + 4}]
    mov [{R(1)}], eax                        # the port
    mov [{ARG + 8}], eax
    mov ebx, {abi.EVTCHNOP_send}
    mov ecx, {ARG + 8}
    {hc(H.event_channel_op)}                 # events still masked (boot): nothing yet
    mov eax, [{R(2)}]
    mov [{R(3)}], eax
    mov byte ptr [{abi.SHARED_INFO_VIRT + abi.VI_UPCALL_MASK}], 0
    mov ecx, 1000
spin:
    dec ecx
    jnz spin
    mov dword ptr [{ARG + 8}], 77
    mov ebx, {abi.EVTCHNOP_send}
    mov ecx, {ARG + 8}
    {hc(H.event_channel_op)}
    mov [{R(5)}], eax
    mov ebx, {abi.EVTCHNOP_bind_virq}
    mov dword ptr [{ARG + 16}], 0
    mov dword ptr [{ARG + 20}], 0
    mov ecx, {ARG + 16}
    {hc(H.event_channel_op)}
    mov [{R(6)}], eax
    mov ebx, {abi.EVTCHNOP_bind_virq}
    mov ecx, {ARG + 16}
    {hc(H.event_channel_op)}
    mov [{R(7)}], eax
    jmp done
callback:
    inc dword ptr [{R(2)}]
    mov eax, [{abi.SHARED_INFO_VIRT + abi.VI_UPCALL_MASK}]
    mov [{R(4)}], eax
    mov byte ptr [{abi.SHARED_INFO_VIRT + abi.VI_UPCALL_PENDING}], 0
    mov dword ptr [{abi.SHARED_INFO_VIRT + abi.SH_EVTCHN_PENDING}], 0
    or dword ptr [esp + 8], 0x200            # return with events enabled
    jmp {PV_HYPERCALL_PAGE + 23 * 32}
done:
    """)
    r = results(vm, 8)
    assert r[0] == 0 and r[1] >= 1
    assert r[3] == 0 and r[2] == 1                   # delivered once, after the unmask
    assert r[4] & 0xFF == 1                          # events masked inside the callback
    assert r[5] == EINVAL and r[6] == 0 and r[7] == EEXIST
    assert result.events["bounce frames"]["event upcall"] == 1


def test_block_with_nothing_to_wait_for_stops_the_vm():
    vm, result = run(f"""
    mov ebx, {abi.SCHEDOP_block}
    {hc(H.sched_op)}
    mov dword ptr [{R(0)}], 1
    """)
    assert result.kind is StopKind.HALTED and results(vm, 1) == [0]


# -- sched_op shutdown and memory_op -------------------------------------------------------------
@pytest.mark.parametrize("reason, status", [(abi.Shutdown.poweroff, 1), (abi.Shutdown.crash, 255),
                                            (abi.Shutdown.reboot, 3)])
def test_shutdown_reasons_map_to_exit_statuses(reason, status):
    vm, result = run(f"""
    mov dword ptr [{ARG}], {int(reason)}
    mov ebx, {abi.SCHEDOP_shutdown}
    mov ecx, {ARG}
    {hc(H.sched_op)}
    mov dword ptr [{R(0)}], 1
    """)
    assert result.kind is StopKind.EXIT and result.status == status
    assert result.events["pv"][f"shutdown ({reason.name})"] == 1


def test_shutdown_bad_reason_and_bad_pointer_and_yield():
    vm, result = run(f"""
    mov dword ptr [{ARG}], 9
    mov ebx, {abi.SCHEDOP_shutdown}
    mov ecx, {ARG}
    {hc(H.sched_op)}
    mov [{R(0)}], eax
    mov ebx, {abi.SCHEDOP_shutdown}
    mov ecx, {UNMAPPED}
    {hc(H.sched_op)}
    mov [{R(1)}], eax
    mov ebx, {abi.SCHEDOP_yield}
    {hc(H.sched_op)}
    mov [{R(2)}], eax
    mov ebx, 42
    {hc(H.sched_op)}
    mov [{R(3)}], eax
    """)
    assert results(vm, 4) == [EINVAL, EFAULT, 0, ENOSYS] and result.status == 1


def test_memory_op_reservations():
    vm, result = run(f"""
    mov word ptr [{ARG}], {abi.DOMID_SELF}
    mov ebx, {abi.XENMEM_current_reservation}
    mov ecx, {ARG}
    {hc(H.memory_op)}
    mov [{R(0)}], eax
    mov ebx, {abi.XENMEM_maximum_reservation}
    {hc(H.memory_op)}
    mov [{R(1)}], eax
    mov esi, [{SI}]
    {GIVE_BACK_0x800000}
    mov [{R(2)}], eax
    mov ebx, {abi.XENMEM_current_reservation}
    mov ecx, {ARG}
    {hc(H.memory_op)}
    mov [{R(3)}], eax
    mov dword ptr [{ARG + 0x40}], 0
    mov ebx, {abi.XENMEM_increase_reservation}
    mov ecx, {ARG + 0x20}
    {hc(H.memory_op)}
    mov [{R(4)}], eax
    mov eax, [{ARG + 0x40}]
    mov [{R(5)}], eax
    mov word ptr [{ARG}], 3
    mov ebx, {abi.XENMEM_current_reservation}
    mov ecx, {ARG}
    {hc(H.memory_op)}
    mov [{R(6)}], eax
    mov ebx, 77
    {hc(H.memory_op)}
    mov [{R(7)}], eax
    """)
    pages = RAM >> 12
    r = results(vm, 8)
    assert r[:5] == [pages, pages, 1, pages - 1, 1]
    assert r[5] == (MACHINE_BASE + 0x800000) >> 12 and r[6] == ESRCH and r[7] == ENOSYS


def test_released_frame_is_unreachable():
    """After decrease_reservation the old mapping of the frame faults (no handler: crash)."""
    vm, result = run(f"""
    mov esi, [{SI}]
    {GIVE_BACK_0x800000}
    mov dword ptr [0x800000], 1
    """)
    assert result.kind is StopKind.ERROR and "#PF" in result.message


def test_debug_registers_are_virtual_and_checked():
    vm, result = run(f"""
    mov ebx, 0
    mov ecx, 0x100000
    {hc(H.set_debugreg)}
    mov [{R(0)}], eax
    mov ebx, 0
    {hc(H.get_debugreg)}
    mov [{R(1)}], eax
    mov ebx, 0
    mov ecx, {abi.HYPERVISOR_VIRT_START}
    {hc(H.set_debugreg)}
    mov [{R(2)}], eax
    mov ebx, 5
    {hc(H.get_debugreg)}
    mov [{R(3)}], eax
    """)
    assert results(vm, 4) == [0, 0x100000, EPERM, EINVAL]


def test_the_vmm_area_is_out_of_reach():
    """Writing the CPU's GDT from ring 1 faults (no handler: the domain crashes)."""
    vm, result = run(f"mov dword ptr [{abi.GDT_VIRT + 8}], 0")
    assert result.kind is StopKind.ERROR and "#PF" in result.message
    assert vm.engine.read_phys(vm.mode.gdt_host + 8, 4) == bytes(4)
