"""The six ways to run a guest. Each mode is a :class:`~vmm.modes.hypervisor.Hypervisor`
with the MMU strategy (and, for VT-x, the VMX processor) chosen for it:

========  ==================================  =====================================
mode      MMU strategy                        engine events decided by
========  ==================================  =====================================
native    guest paging (1-D walks)            the bare machine
trap      shadow paging                       #GP of the ring-1 kernel, emulated
bt        shadow paging                       callouts of translated kernel code
pv        PV direct paging                    hypercalls, bounce frames
vtx       shadow paging, #PF exits            the VMX processor (VM exits)
vtx-ept   EPT (2-D walks)                     the VMX processor (VM exits)
========  ==================================  =====================================
"""
from __future__ import annotations

import importlib
from functools import partial

MODES = ("native", "trap", "bt", "pv", "vtx", "vtx-ept")
# mode name -> (module in this package, class, options the class is made with)
_CLASSES: dict[str, tuple[str, str, dict]] = {
    "native": ("native", "NativeMode", {}),
    "trap": ("trap", "TrapMode", {}),
    "bt": ("bt", "BtMode", {}),
    "pv": ("pv", "PvMode", {}),
    "vtx": ("vtx", "VtxMode", {}),
    "vtx-ept": ("vtx", "VtxMode", {"ept": True}),
}


def get_mode(name: str):
    """The constructor of mode ``name``: called as ``constructor(vm, **mode_options)``."""
    if name not in _CLASSES:
        raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")
    module, cls, options = _CLASSES[name]
    mode = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return partial(mode, **options) if options else mode
