"""Command-line helpers that sit beside the ``vmm`` package, not inside it.

Each module here is also a script (``python3 tools/NAME.py --help``); ``machines`` is the
one they share: how QEMU and vmm are started, and how a run is timed and classified.
"""
