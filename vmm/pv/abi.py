"""The Xen x86_32 paravirtual ABI: hypercall numbers, sub-commands, errno values, and the
layouts of the structures a PV guest shares with the hypervisor.

Names and numbers are Xen's (``xen/include/public/xen.h``, ``arch-x86/xen-x86_32.h``,
``sched.h``, ``memory.h``, ``event_channel.h``, ``version.h``, ``elfnote.h``), so a guest
written against Xen's headers runs here, and a trace reads like Xen's. The structure
offsets are those of the 32-bit ABI: ``unsigned long`` and ``xen_pfn_t`` are 4 bytes.
"""
from __future__ import annotations

import enum


class Hypercall(enum.IntEnum):
    """``__HYPERVISOR_*``: EAX at ``int 0x82``; stub at ``hypercall_page + nr * 32``."""

    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    set_debugreg = 8
    get_debugreg = 9
    memory_op = 12
    update_va_mapping = 14
    xen_version = 17
    console_io = 18
    iret = 23
    mmuext_op = 26
    sched_op = 29
    event_channel_op = 32


HYPERCALL_VECTOR = 0x82          # int 0x82: the x86_32 PV hypercall trap (DPL 1)
HYPERCALL_STUB_SIZE = 32
NR_HYPERCALLS = 64               # stubs in the 4 KiB page (Xen fills 128; 64 suffice)


class Errno(enum.IntEnum):
    """Hypercalls return ``-errno`` in EAX (``xen/include/public/errno.h``)."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EINVAL = 22
    ENOSPC = 28
    ENOSYS = 38


def neg(errno: Errno) -> int:
    """The 32-bit two's-complement EAX value of ``-errno``."""
    return (-int(errno)) & 0xFFFFFFFF


# -- mmu_update / update_va_mapping / mmuext_op --------------------------------------
MMU_NORMAL_PT_UPDATE = 0         # ptr = machine address of a page-table entry
MMU_MACHPHYS_UPDATE = 1          # ptr = machine address of a frame; val = its pfn
MMU_UPDATE_SIZE = 8              # struct mmu_update { uint64_t ptr, val } on x86_32: 2 x u32 used

UVMF_NONE, UVMF_TLB_FLUSH, UVMF_INVLPG = 0, 1, 2
UVMF_FLUSHTYPE_MASK = 3

DOMID_SELF = 0x7FF0


class MmuExt(enum.IntEnum):
    """``struct mmuext_op`` commands (12 bytes on x86_32: cmd, arg1, arg2)."""

    PIN_L1_TABLE = 0
    PIN_L2_TABLE = 1
    UNPIN_TABLE = 4
    NEW_BASEPTR = 5
    TLB_FLUSH_LOCAL = 6
    INVLPG_LOCAL = 7
    TLB_FLUSH_ALL = 10
    INVLPG_ALL = 11


MMUEXT_OP_SIZE = 12

# -- sched_op ----------------------------------------------------------------------------
SCHEDOP_yield, SCHEDOP_block, SCHEDOP_shutdown = 0, 1, 2


class Shutdown(enum.IntEnum):
    """``SHUTDOWN_*`` reasons of ``struct sched_shutdown``."""

    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4


# -- console_io, xen_version, memory_op -----------------------------------------------------
CONSOLEIO_write, CONSOLEIO_read = 0, 1
CONSOLE_IO_MAX = 4096            # bytes per call, as Xen's guest_console_write chunks

XENVER_version, XENVER_extraversion, XENVER_capabilities = 0, 1, 3
XENVER_platform_parameters, XENVER_get_features, XENVER_pagesize = 5, 6, 7
XEN_VERSION = (4, 17)            # what XENVER_version reports: major << 16 | minor
XEN_EXTRAVERSION = b".0-vmm"     # xen_extraversion_t: 16 bytes
XEN_CAPABILITIES = b"xen-3.0-x86_32"  # xen_capabilities_info_t: 1024 bytes
XEN_EXTRAVERSION_LEN, XEN_CAPABILITIES_LEN = 16, 1024

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
# struct xen_memory_reservation (x86_32): extent_start (handle), nr_extents,
# extent_order, mem_flags, domid (u16)
RESERVATION_FORMAT = "<IIIIH"
RESERVATION_SIZE = 18

# -- event channels ----------------------------------------------------------------------------
EVTCHNOP_bind_virq, EVTCHNOP_close, EVTCHNOP_send = 1, 3, 4
EVTCHNOP_alloc_unbound, EVTCHNOP_unmask = 6, 9
VIRQ_TIMER = 0
NR_EVENT_CHANNELS = 1024         # 32 x 32 bits of evtchn_pending on x86_32

# -- trap table (set_trap_table) --------------------------------------------------------
# struct trap_info { uint8_t vector; uint8_t flags; uint16_t cs; unsigned long address; }
TRAP_INFO_FORMAT = "<BBHI"
TRAP_INFO_SIZE = 8
TI_DPL_MASK = 3                  # flags bits 0-1: the DPL INT n needs
TI_CLEAR_EVENTS = 4              # flags bit 2: mask events on entry (an interrupt gate)
SYSCALL_VECTOR = 0x80            # delivered from ring 3 straight to the guest (fast path)

# -- selectors of the VMM's reserved GDT entries (xen-x86_32.h) -----------------------------
FIRST_RESERVED_GDT_BYTE = 0xE000  # the guest's own set_gdt entries stay below this
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8
GDT_SIZE = 0x10000               # 16 pages: 14 for the guest, 2 reserved
HYPERVISOR_CS, HYPERVISOR_DS = 0xE008, 0xE010
FLAT_RING1_CS, FLAT_RING1_DS = 0xE019, 0xE021
FLAT_RING3_CS, FLAT_RING3_DS = 0xE02B, 0xE033
FLAT_KERNEL_CS, FLAT_KERNEL_DS = FLAT_RING1_CS, FLAT_RING1_DS
GUEST_KERNEL_RPL = 1

# -- the VMM's linear area (x86_32 non-PAE: HYPERVISOR_VIRT_START 0xFC000000; ours is the
# top 4 MiB, where the engine keeps its trampolines: see Engine.iret_to) -------------------------
HYPERVISOR_VIRT_START = 0xFFC00000
GDT_VIRT = HYPERVISOR_VIRT_START            # the CPU's GDT, read-only to the guest
SHARED_INFO_VIRT = GDT_VIRT + GDT_SIZE      # 0xFFC10000: shared info, in every address space

# -- start_info (struct start_info, x86_32) -----------------------------------------------------
START_INFO_MAGIC = b"xen-3.0-x86_32"
SI_MAGIC, SI_NR_PAGES, SI_SHARED_INFO, SI_FLAGS = 0, 32, 36, 40
SI_STORE_MFN, SI_STORE_EVTCHN, SI_CONSOLE_MFN, SI_CONSOLE_EVTCHN = 44, 48, 52, 56
SI_PT_BASE, SI_NR_PT_FRAMES, SI_MFN_LIST = 60, 64, 68
SI_MOD_START, SI_MOD_LEN, SI_CMD_LINE = 72, 76, 80
MAX_GUEST_CMDLINE = 1024
SI_FIRST_P2M_PFN, SI_NR_P2M_FRAMES = 1104, 1108
SIF_PRIVILEGED, SIF_INITDOMAIN = 1, 2

# -- shared_info / vcpu_info (x86_32) ------------------------------------------------------------
VCPU_INFO_SIZE = 64
VI_UPCALL_PENDING = 0            # uint8_t evtchn_upcall_pending
VI_UPCALL_MASK = 1               # uint8_t evtchn_upcall_mask: the virtual (inverted) IF
VI_PENDING_SEL = 4               # unsigned long evtchn_pending_sel
VI_CR2 = 8                       # arch_vcpu_info.cr2: the #PF address
XEN_LEGACY_MAX_VCPUS = 32
SH_EVTCHN_PENDING = XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE   # 2048: 32 x u32
SH_EVTCHN_MASK = SH_EVTCHN_PENDING + 32 * 4                 # 2176: 32 x u32
SH_WC_VERSION = SH_EVTCHN_MASK + 32 * 4                     # 2304: wall clock (left 0)

# -- ELF notes (xen/include/public/elfnote.h) ---------------------------------------------------
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_PAE_MODE = 9
XEN_ELFNOTE_FEATURES = 10

HYPERCALL_NAMES = {int(h): h.name for h in Hypercall}
