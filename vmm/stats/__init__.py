"""Run-time statistics: what a run did, counted as it runs and shown after it.

:mod:`.events` counts a mode's own events (traps, callouts, hypercalls, translation-cache
work) with their handler time; :mod:`.exits` makes per-reason exit statistics in the
manner of ``kvm_stat``. The modes record into them and the CLI and the gdb stub show them;
the cost model (:mod:`vmm.cost`) reads the same counts but is not needed to keep them, so
this package sits below both and imports neither.
"""
