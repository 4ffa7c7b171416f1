"""Restore vmm snapshots in this (new) process and run each to the end.

    python tests/snapshot_resume.py BUDGET SNAPSHOT...

Prints one JSON line: a list with, per snapshot, what ``tests/test_snapshot.py`` compares
(see :func:`outcome`). Run by the round-trip tests in a fresh interpreter, so nothing of
the process that saved the snapshot (its Unicorn instance, its caches) can leak into the
restored run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def outcome(vm, result, output: bytes) -> dict:
    """The run's observable end: what the guest printed, how it stopped, and every count
    except the wall-time ones."""
    return {
        "output": output.hex(),
        "transcript": bytes(vm.board.uart.transcript).hex(),
        "kind": result.kind.name,
        "status": result.status,
        "instructions": result.instructions,
        "exits": {str(reason): n for reason, n in result.exits.items()},
        "memory": dict(result.memory),
        "events": {category: dict(counts) for category, counts in result.events.items()},
    }


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vmm.snapshot import restore_vm

    budget, paths = int(argv[0]), argv[1:]
    results = []
    for path in paths:
        out = bytearray()
        vm = restore_vm(Path(path).read_bytes(), serial_output=out.extend, max_instructions=budget)
        results.append(outcome(vm, vm.run(), bytes(out)))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
