"""Basic VM-exit reasons, numbered as in the Intel SDM vol. 3, Appendix C.

The exit-reason field (VMCS encoding 0x4402) holds the basic reason in bits 15:0 and
flags above it; bit 31 marks a VM-entry failure (e.g. reason 33 with bit 31 set:
"VM-entry failure due to invalid guest state").
"""
from __future__ import annotations

import enum


class ExitReason(enum.IntEnum):
    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_GUEST_STATE = 33
    MSR_LOAD_FAIL = 34
    MWAIT_INSTRUCTION = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR_INSTRUCTION = 39
    PAUSE_INSTRUCTION = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    SPP_EVENT = 66
    UMWAIT = 67
    TPAUSE = 68
    LOADIWKEY = 69
    ENCLV = 70
    ENQCMD_PASID_FAIL = 72
    ENQCMDS_PASID_FAIL = 73
    BUS_LOCK = 74
    NOTIFY = 75
    SEAMCALL = 76
    TDCALL = 77
    RDMSRLIST = 78
    WRMSRLIST = 79

    @property
    def title(self) -> str:
        """Name as traces and statistics print it, e.g. ``IO_INSTRUCTION``."""
        return self.name


VM_ENTRY_FAILURE = 1 << 31


def exit_reason_word(reason: ExitReason, entry_failure: bool = False) -> int:
    """The 32-bit exit-reason field: basic reason plus the VM-entry-failure bit."""
    return int(reason) | (VM_ENTRY_FAILURE if entry_failure else 0)
