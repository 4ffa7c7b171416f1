"""The six ways to run a guest (DESIGN §1). Each mode is an exit table plus an MMU policy."""
from __future__ import annotations

import importlib

MODES = ("native", "trap", "bt", "pv", "vtx", "vtx-ept")
# mode name -> (module in this package, class)
_CLASSES = {
    "native": ("native", "NativeMode"),
    "trap": ("trap", "TrapMode"),
    "bt": ("bt", "BtMode"),
    "pv": ("pv", "PvMode"),
    "vtx": ("vtx", "VtxMode"),
    "vtx-ept": ("vtx_ept", "VtxEptMode"),
}


def _load(name: str):
    module, cls = _CLASSES[name]
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{module}":
            raise
        return None


def get_mode(name: str):
    if name not in _CLASSES:
        raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")
    mode = _load(name)
    if mode is None:
        raise NotImplementedError(f"mode {name!r} is not available yet; available: "
                                  f"{', '.join(available_modes())}")
    return mode


def available_modes() -> tuple[str, ...]:
    """The modes whose implementation is present, in DESIGN order."""
    return tuple(name for name in MODES if _load(name) is not None)
