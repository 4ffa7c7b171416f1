"""The six ways to run a guest (DESIGN §1). Each mode is an exit table plus an MMU policy."""
from __future__ import annotations

MODES = ("native", "trap", "bt", "pv", "vtx", "vtx-ept")


def get_mode(name: str):
    if name == "native":
        from .native import NativeMode
        return NativeMode
    if name == "vtx":
        from .vtx import VtxMode
        return VtxMode
    if name == "vtx-ept":
        from .vtx_ept import VtxEptMode
        return VtxEptMode
    if name in MODES:
        raise NotImplementedError(f"mode {name!r} is not available yet; available: "
                                  f"{', '.join(available_modes())}")
    raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(MODES)}")


def available_modes() -> tuple[str, ...]:
    return ("native", "vtx", "vtx-ept")
