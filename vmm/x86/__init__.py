"""The x86 vocabulary: architectural numbers by their SDM names, in one place.

Exception vectors (:mod:`.vectors`), control registers and their numbers, EFLAGS, EFER, XCR0 and debug
registers (:mod:`.registers`), paging-structure entries, #PF error codes and page sizes
(:mod:`.paging`), EPT (:mod:`.ept`), MSR numbers (:mod:`.msr`), CPUID leaves and feature
bits (:mod:`.cpuid`), instruction encoding (:mod:`.opcodes`), selectors, descriptors, gates
and the TSS (:mod:`.segments`).

Rules: this package imports nothing from Unicorn and nothing else from :mod:`vmm`, so
every layer may use it; no name means two things (EFLAGS.PF is the parity flag,
Vector.PF the page-fault vector). Flag classes use :func:`.bits.int_operators`: their
members combine into plain ``int`` values at C speed and ``~`` is the true bitwise NOT.
"""
from .bits import bits, int_operators
from .ept import (
    EPT_LEVEL_NAMES,
    EPT_LEVEL_SHIFTS,
    EPT_MEMTYPE_MASK,
    EPT_MEMTYPE_SHIFT,
    EPT_RWX,
    EPTE,
    EptViolationBits,
    EptViolationQualification,
    MemoryType,
)
from .msr import MSR, PAT_POWER_ON, SYSENTER_MSRS, ApicBase, FeatureControl
from .paging import MAXPHYADDR, PAGE_MASK, PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE, PTE, GiB, KiB, MiB, PFError
from .registers import CR0, CR4, DR6, DR7, EFER, EFLAGS, IOPL_SHIFT, XCR0, ControlRegister
from .segments import (
    CODE_RING0,
    CODE_RING3,
    DATA_RING0,
    DATA_RING3,
    Access,
    Descriptor,
    Gate,
    Granularity,
    SystemType,
    encode_descriptor,
    encode_gate,
    flat_descriptor,
)
from .vectors import CONTRIBUTORY, HAS_ERROR_CODE, Vector, vector_name

__all__ = [
    "CODE_RING0", "CODE_RING3", "CONTRIBUTORY", "CR0", "CR4", "DATA_RING0", "DATA_RING3", "DR6", "DR7", "EFER",
    "EFLAGS", "EPTE", "EPT_LEVEL_NAMES", "EPT_LEVEL_SHIFTS", "EPT_MEMTYPE_MASK", "EPT_MEMTYPE_SHIFT", "EPT_RWX",
    "HAS_ERROR_CODE", "IOPL_SHIFT", "MAXPHYADDR", "MSR", "PAGE_MASK", "PAGE_OFFSET_MASK", "PAGE_SHIFT",
    "PAGE_SIZE", "PAT_POWER_ON", "PTE", "SYSENTER_MSRS", "XCR0", "Access", "ApicBase", "Descriptor",
    "ControlRegister", "EptViolationBits", "EptViolationQualification", "FeatureControl", "Gate", "GiB",
    "Granularity", "KiB",
    "MemoryType", "MiB", "PFError", "SystemType", "Vector", "bits", "encode_descriptor", "encode_gate",
    "flat_descriptor", "int_operators", "vector_name",
]
